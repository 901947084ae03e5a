//! The edge's own error answers share one JSON shape, whichever path writes them.

use bytes::Bytes;

/// `{"error": code, "message": ...}`.
pub fn json_error(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string())
}
