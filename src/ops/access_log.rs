//! The access log: nginx's `combined` format by default, JSON lines on request. It never
//! holds cookies, OAuth codes, tokens or secrets: the query's `code` is redacted.

use std::io::Write;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
    Off,
}

impl Format {
    pub fn parse(s: &str) -> Format {
        match s {
            "json" => Format::Json,
            "off" => Format::Off,
            _ => Format::Combined,
        }
    }
}

pub struct Entry<'a> {
    pub client: &'a str,
    pub method: &'a str,
    /// Path and query as received; redacted here.
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub duration_ms: f64,
    pub upstream: &'a str,
    pub request_id: &'a str,
    pub class: &'a str,
}

/// Query parameters whose values must never reach a log.
const SECRET_PARAMS: &[&str] = &["code", "access_token", "refresh_token", "secret", "token"];

/// `/p?code=abc&state=x` → `/p?code=REDACTED&state=x`.
pub fn redact(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            if SECRET_PARAMS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                format!("{key}=REDACTED")
            } else {
                kv.to_string()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// `[25/Nov/2026:02:00:00 +0000]` (UTC: containers run in UTC, and UTC needs no tz database).
fn clf_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // RFC 7231 gives "Wed, 25 Nov 2026 02:00:00 GMT"; rearrange it rather than redo calendars.
    let http =
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let f: Vec<&str> = http.split(' ').collect();
    match f.as_slice() {
        [_, day, mon, year, time, _] => format!("{day}/{mon}/{year}:{time} +0000"),
        _ => http,
    }
}

fn escape_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub fn format_line(format: Format, e: &Entry, now: SystemTime) -> Option<String> {
    let target = redact(e.target);
    let referer = if e.referer.is_empty() {
        "-".to_string()
    } else {
        redact(e.referer)
    };
    match format {
        Format::Off => None,
        Format::Combined => Some(format!(
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
            e.client,
            clf_time(now),
            e.method,
            escape_quoted(&target),
            e.version,
            e.status,
            e.bytes,
            escape_quoted(&referer),
            escape_quoted(if e.user_agent.is_empty() {
                "-"
            } else {
                e.user_agent
            }),
        )),
        Format::Json => Some(
            serde_json::json!({
                "time": httpdate::fmt_http_date(now),
                "client": e.client,
                "method": e.method,
                "path": target,
                "status": e.status,
                "bytes": e.bytes,
                "duration_ms": (e.duration_ms * 1000.0).round() / 1000.0,
                "upstream": e.upstream,
                "request_id": e.request_id,
                "route": e.class,
                "user_agent": e.user_agent,
            })
            .to_string(),
        ),
    }
}

pub fn write(format: Format, e: &Entry) {
    if let Some(line) = format_line(format, e, SystemTime::now()) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str) -> Entry<'_> {
        Entry {
            client: "192.0.2.1",
            method: "GET",
            target,
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            referer: "",
            user_agent: "curl/8 \"x\"",
            duration_ms: 1.5,
            upstream: "-",
            request_id: "rid",
            class: "static",
        }
    }

    #[test]
    fn combined_format_and_redaction() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let line = format_line(
            Format::Combined,
            &entry("/p?code=SECRETCODE&state=STATE"),
            t,
        )
        .unwrap();
        assert!(!line.contains("SECRETCODE"), "{line}");
        assert!(line.starts_with("192.0.2.1 - - ["), "{line}");
        assert!(
            line.contains(
                "\"GET /p?code=REDACTED&state=STATE HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\""
            ),
            "{line}"
        );
        assert!(line.contains(" +0000]"), "{line}");
        let json = format_line(Format::Json, &entry("/x?access_token=T"), t).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["path"], "/x?access_token=REDACTED");
        assert_eq!(v["request_id"], "rid");
        assert!(format_line(Format::Off, &entry("/"), t).is_none());
    }
}
