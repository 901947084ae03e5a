//! The edge's own error answers share one JSON shape, whichever path writes them.

use bytes::Bytes;

/// `{"error": code, "message": ...}`.
pub fn json_error(code: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": code, "message": message }).to_string())
}

/// The `error` code of a refusal with `status`.
pub fn refusal_kind(status: u16) -> &'static str {
    match status {
        413 => "payload_too_large",
        414 => "uri_too_long",
        431 => "header_too_large",
        501 => "not_implemented",
        505 => "version_not_supported",
        _ => "bad_request",
    }
}
