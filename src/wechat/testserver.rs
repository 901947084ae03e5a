//! A tiny HTTP/1.1 server on 127.0.0.1 for tests: one request per connection, answers from a
//! closure that sees the call number (1-based) and the request target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) enum Reply {
    Full {
        status: u16,
        content_type: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Never answer (keeps the connection open).
    Hang,
    /// Answer after a pause.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    pub(crate) fn text(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            content_type: "text/plain".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    pub(crate) fn html(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            content_type: "text/html".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }
}

pub(crate) type Handler = Arc<dyn Fn(u64, String) -> Reply + Send + Sync>;

pub(crate) struct TestServer {
    addr: std::net::SocketAddr,
    calls: Arc<AtomicU64>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub(crate) async fn start(handler: Handler) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (c, p) = (calls.clone(), paths.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (c, p, h) = (c.clone(), p.clone(), handler.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let target = head
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("")
                        .to_string();
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    p.lock().unwrap().push(target.clone());
                    let mut reply = h(n, target);
                    loop {
                        match reply {
                            Reply::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Reply::Delayed(d, r) => {
                                tokio::time::sleep(d).await;
                                reply = *r;
                            }
                            Reply::Full {
                                status,
                                content_type,
                                headers,
                                body,
                            } => {
                                let mut out = format!(
                                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
                                    body.len()
                                );
                                for (k, v) in headers {
                                    out.push_str(&format!("{k}: {v}\r\n"));
                                }
                                out.push_str("\r\n");
                                let mut bytes = out.into_bytes();
                                bytes.extend_from_slice(&body);
                                let _ = sock.write_all(&bytes).await;
                                let _ = sock.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            calls,
            paths,
            task,
        }
    }

    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
