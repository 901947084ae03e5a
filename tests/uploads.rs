//! Request bodies through the real binary: byte-exact in every framing a client may use, and
//! uploads that stall hold a small buffer each, not their size (the rest waits in a temporary
//! file), so a client opening many of them cannot grow the edge's memory.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

/// Deterministic, not repeating within a body: a misplaced or dropped piece shows.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn edge_with(env: Vec<(String, String)>) -> (EdgeProc, SocketAddr) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let edge = blocking(move || {
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let m = metrics.to_string();
        env.push(("WXEDGE_METRICS_LISTEN", &m));
        start_edge(&env)
    })
    .await
    .unwrap();
    (edge, metrics)
}

/// The ways a client may frame one body on HTTP/1.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    /// Chunks of this many bytes (the last one shorter), with an extension and a trailer.
    Chunked(usize),
    /// `Expect: 100-continue`: the body goes only after the edge's 100.
    Continue,
    /// HTTP/1.0 with a length.
    Http10,
}

fn upload_request(framing: Framing, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (version, mut fields) = match framing {
        Framing::Http10 => ("1.0", String::new()),
        _ => ("1.1", "Connection: close\r\n".to_string()),
    };
    let mut rest = Vec::new();
    match framing {
        Framing::Chunked(size) => {
            fields.push_str("Transfer-Encoding: chunked\r\n");
            for piece in body.chunks(size) {
                rest.extend_from_slice(format!("{:x};part=1\r\n", piece.len()).as_bytes());
                rest.extend_from_slice(piece);
                rest.extend_from_slice(b"\r\n");
            }
            rest.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
        }
        Framing::Continue => {
            fields.push_str(&format!(
                "Content-Length: {}\r\nExpect: 100-continue\r\n",
                body.len()
            ));
            rest.extend_from_slice(body);
        }
        Framing::Length | Framing::Http10 => {
            fields.push_str(&format!("Content-Length: {}\r\n", body.len()));
            rest.extend_from_slice(body);
        }
    }
    let head = format!("POST /api/upload HTTP/{version}\r\nHost: h\r\n{fields}\r\n");
    (head.into_bytes(), rest)
}

/// Send an upload, the head first (and after a 100 the body), and read the whole answer
/// while the body is still being sent (an answer may come before the body is all sent).
async fn upload(addr: SocketAddr, framing: Framing, body: &[u8]) -> Vec<u8> {
    let (head, rest) = upload_request(framing, body);
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    writer.write_all(&head).await.unwrap();
    if let (Framing::Continue, false) = (framing, body.is_empty()) {
        let mut interim = [0u8; 25];
        reader.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&rest).await; // fails if the edge refuses midway
        writer
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    drop(sending.await);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_reach_the_backend_byte_exact_in_every_framing() {
    let backend = Backend::start("b").await;
    // A small memory buffer, so most bodies here take the temporary file.
    let (edge, metrics) = edge_with(vec![
        ("WXEDGE_BACKEND".into(), backend.url()),
        ("WXEDGE_BODY_BUFFER_BYTES".into(), "1024".into()),
    ])
    .await;
    let framings = [
        Framing::Length,
        Framing::Chunked(1000),
        Framing::Chunked(70_000),
        Framing::Continue,
        Framing::Http10,
    ];
    let sizes = [0, 1, 1023, 1024, 1025, 70_001, 3 << 20];
    let mut sent = Vec::new();
    for (i, framing) in framings.iter().enumerate() {
        for (j, &size) in sizes.iter().enumerate() {
            let body = pattern(size, (i * 100 + j) as u64);
            let answer = upload(edge.addr(), *framing, &body).await;
            assert!(
                answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"),
                "{framing:?} {size}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
            sent.push((format!("{framing:?} {size}"), body));
        }
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), sent.len());
    for ((what, body), got) in sent.iter().zip(&seen) {
        assert!(
            got.body == *body,
            "{what}: the backend got {} bytes, not the body sent",
            got.body.len()
        );
        // The backend gets the edge's own framing: the length, never the client's.
        assert_eq!(
            got.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
        assert_eq!(got.header("transfer-encoding"), None, "{what}");
        assert_eq!(got.header("expect"), None, "{what}");
    }
    // Every temporary file went with its request.
    let temp = blocking(move || scrape(metrics, "wxedge_request_body_temp_bytes"));
    assert_eq!(temp.await.unwrap(), 0.0);
}

/// Start an upload of `total` bytes and send all but `short` of them; the connection stays open.
async fn stalled_upload(addr: SocketAddr, total: usize, short: usize, piece: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: {total}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut left = total - short;
    while left > 0 {
        let n = left.min(piece.len());
        s.write_all(&piece[..n]).await.unwrap();
        left -= n;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_uploads_hold_a_small_buffer_each_not_their_size() {
    const UPLOADS: usize = 200;
    const SIZE: usize = 10 << 20;
    const SHORT: usize = 64 << 10;
    let backend = Backend::start("b").await;
    let (edge, metrics) = edge_with(vec![
        ("WXEDGE_BACKEND".into(), backend.url()),
        // Sending 2 GB may take a while on a slow machine: no upload may time out meanwhile.
        ("WXEDGE_CLIENT_BODY_TIMEOUT_MS".into(), "600000".into()),
        // ~2 GB wait on disk, past the default bound of 1 GiB.
        (
            "WXEDGE_BODY_TEMP_MAX_BYTES".into(),
            (4u64 << 30).to_string(),
        ),
    ])
    .await;
    let addr = edge.addr();
    // Warm up: a few uploads through every part, so the baseline has the edge's steady state.
    for i in 0..4 {
        let answer = upload(addr, Framing::Length, &pattern(1 << 20, i)).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    let before = rss_kib(&edge);
    let piece = std::sync::Arc::new(pattern(256 << 10, 7));
    let tasks: Vec<_> = (0..UPLOADS)
        .map(|_| {
            let piece = piece.clone();
            tokio::spawn(async move { stalled_upload(addr, SIZE, SHORT, &piece).await })
        })
        .collect();
    let mut stalled = Vec::new();
    for t in tasks {
        stalled.push(t.await.unwrap());
    }
    // Everything sent has been read and kept, in temporary files (each body is past the
    // memory buffer).
    let in_files = (UPLOADS * (SIZE - SHORT)) as u64;
    wait_for_metric(
        metrics,
        "wxedge_request_body_temp_bytes",
        in_files as f64,
        Duration::from_secs(120),
    )
    .await;
    let during = rss_kib(&edge);
    let growth_mib = during.saturating_sub(before) as f64 / 1024.0;
    println!(
        "{UPLOADS} stalled uploads of {} MiB: RSS {before} -> {during} KiB (+{growth_mib:.1} MiB)",
        SIZE >> 20
    );
    assert!(
        growth_mib < 32.0,
        "{UPLOADS} stalled uploads grew the edge by {growth_mib:.1} MiB"
    );
    // One of them finishes: the backend gets it whole.
    let mut first = stalled.pop().unwrap();
    let rest = &piece[..SHORT];
    first.write_all(rest).await.unwrap();
    let mut answer = vec![0u8; 12];
    first.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let got = backend.seen().pop().unwrap().body;
    let mut whole = Vec::with_capacity(SIZE);
    while whole.len() < SIZE - SHORT {
        let n = (SIZE - SHORT - whole.len()).min(piece.len());
        whole.extend_from_slice(&piece[..n]);
    }
    whole.extend_from_slice(rest);
    assert!(
        got == whole,
        "the finished upload arrived changed ({} bytes)",
        got.len()
    );
    // The others give up: their files go with them.
    drop(stalled);
    drop(first);
    wait_for_metric(
        metrics,
        "wxedge_request_body_temp_bytes",
        0.0,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_past_the_temporary_file_bound_get_503_and_the_rest_go_on() {
    let backend = Backend::start("b").await;
    let (edge, metrics) = edge_with(vec![
        ("WXEDGE_BACKEND".into(), backend.url()),
        ("WXEDGE_BODY_BUFFER_BYTES".into(), "0".into()),
        (
            "WXEDGE_BODY_TEMP_MAX_BYTES".into(),
            (3u64 << 20).to_string(),
        ),
    ])
    .await;
    let addr = edge.addr();
    let piece = pattern(64 << 10, 3);
    // Two uploads stall holding 2 MiB of files; a third that needs 2 MiB more is refused.
    let a = stalled_upload(addr, (1 << 20) + 1, 1, &piece).await;
    let b = stalled_upload(addr, (1 << 20) + 1, 1, &piece).await;
    wait_for_metric(
        metrics,
        "wxedge_request_body_temp_bytes",
        (2 << 20) as f64,
        Duration::from_secs(30),
    )
    .await;
    let answer = upload(addr, Framing::Length, &pattern(2 << 20, 4)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503")
            && String::from_utf8_lossy(&answer).contains("\"service_unavailable\""),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(300)])
    );
    // A small body still fits, and when the stalled ones go, a large one does too.
    let answer = upload(addr, Framing::Length, &pattern(100 << 10, 5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop((a, b));
    wait_for_metric(
        metrics,
        "wxedge_request_body_temp_bytes",
        0.0,
        Duration::from_secs(30),
    )
    .await;
    let answer = upload(addr, Framing::Length, &pattern(2 << 20, 6)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn a_temporary_directory_that_takes_no_files_is_a_configuration_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxedge"))
        .arg("-t")
        .env("WXEDGE_BODY_TEMP_DIR", "/nonexistent/wxedge-bodies")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.body_temp_dir"), "{err}");
}
