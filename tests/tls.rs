//! HTTPS and HTTP/2 at the edge, with real clients: curl (HTTP/1.1 and HTTP/2, verifying
//! against a CA made here), and a raw TLS + HTTP/2 client for a PROXY protocol header.
//!
//! One edge serves two certificates (`a.test` with `*.w.test`, and `b.test`) on an HTTPS
//! listener, redirects plain HTTP from a redirect listener, and proxies `/api/` to a backend
//! that records what it receives.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA and two server certificates signed by it, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wxedge test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (file, names) in [("a", vec!["a.test", "*.w.test"]), ("b", vec!["b.test"])] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if file == "b" {
            // b.test ends in 10 days (and some hours): inside the 14-day warning window.
            let (y, m, d) = civil_date_in_days(11);
            p.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }
    Pki {
        ca: dir.join("ca.pem"),
    }
}

/// The UTC calendar date `days` from today (Howard Hinnant's civil-from-days).
fn civil_date_in_days(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let z = now.div_euclid(86_400) + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

struct Site {
    edge: EdgeProc,
    tls_port: u16,
    redirect_port: u16,
    pki: Pki,
    webroot: PathBuf,
    backend: Backend,
}

async fn site(extra: &[(&str, &str)]) -> Site {
    let dir = temp_dir("tls");
    let pki = make_pki(&dir);
    let webroot = dir.join("webroot");
    std::fs::create_dir_all(webroot.join(".well-known/acme-challenge")).unwrap();
    let backend = Backend::start("b").await;
    let (tls_port, redirect_port) = (free_port(), free_port());
    let owned: Vec<(String, String)> = [
        ("WXEDGE_TLS_LISTEN", format!("127.0.0.1:{tls_port}")),
        (
            "WXEDGE_TLS_REDIRECT_LISTEN",
            format!("127.0.0.1:{redirect_port}"),
        ),
        (
            "WXEDGE_TLS_CERT",
            format!(
                "{},{}",
                dir.join("a.pem").display(),
                dir.join("b.pem").display()
            ),
        ),
        (
            "WXEDGE_TLS_KEY",
            format!(
                "{},{}",
                dir.join("a.key").display(),
                dir.join("b.key").display()
            ),
        ),
        ("WXEDGE_TLS_HSTS", "max-age=31536000".into()),
        ("WXEDGE_TLS_ACME_WEBROOT", webroot.display().to_string()),
        ("WXEDGE_BACKEND", backend.url()),
        ("WX_MP_VERIFY", "abc123".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    .collect();
    let edge = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        start_edge(&env)
    })
    .await
    .unwrap();
    Site {
        edge,
        tls_port,
        redirect_port,
        pki,
        webroot,
        backend,
    }
}

/// What curl reported: its exit code, the response head(s) and body, and `-w` output.
struct Curl {
    code: i32,
    head: String,
    body: String,
    /// `%{http_version} %{response_code}`.
    info: String,
    stderr: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<String> {
        // The last response's head (after redirects or interim answers).
        let last = self
            .head
            .rsplit("\r\n\r\n")
            .find(|h| !h.trim().is_empty())?;
        last.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
}

impl Site {
    /// curl to `https://<host>:<tls port><target>`, resolving every test name to loopback.
    fn curl(&self, host: &str, target: &str, args: &[&str]) -> Curl {
        self.curl_with(host, target, args, None)
    }

    fn curl_with(
        &self,
        host: &str,
        target: &str,
        args: &[&str],
        stdin: Option<std::fs::File>,
    ) -> Curl {
        let dir = temp_dir("curl");
        let (head, body) = (dir.join("head"), dir.join("body"));
        let url = format!("https://{host}:{}{target}", self.tls_port);
        let out = Command::new("curl")
            .args(["-sS", "--path-as-is", "--max-time", "10", "--cacert"])
            .arg(&self.pki.ca)
            .args(["--resolve", &format!("{host}:{}:127.0.0.1", self.tls_port)])
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_version} %{response_code}"])
            .args(args)
            .arg(&url)
            .stdin(stdin.map_or_else(std::process::Stdio::null, Into::into))
            .output()
            .expect("curl");
        let c = Curl {
            code: out.status.code().unwrap_or(-1),
            head: std::fs::read_to_string(&head).unwrap_or_default(),
            body: std::fs::read_to_string(&body).unwrap_or_default(),
            info: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        std::fs::remove_dir_all(dir).ok();
        c
    }
}

impl Site {
    /// [`Site::curl`] with `stdin` as curl's standard input.
    fn curl_stdin(&self, host: &str, target: &str, stdin: &[u8], args: &[&str]) -> Curl {
        let dir = temp_dir("stdin");
        std::fs::write(dir.join("in"), stdin).unwrap();
        let file = std::fs::File::open(dir.join("in")).unwrap();
        let r = self.curl_with(host, target, args, Some(file));
        std::fs::remove_dir_all(dir).ok();
        r
    }
}

/// A backend that keeps every byte it received and answers `reply` once per whole request,
/// as `complete` finds them (it removes them from what is pending and says how many).
async fn logging_backend(
    reply: &'static [u8],
    complete: fn(&mut Vec<u8>) -> usize,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = wire.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 65536];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    w.lock().unwrap().extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                    for _ in 0..complete(&mut pending) {
                        let _ = sock.write_all(reply).await;
                    }
                }
            });
        }
    });
    (addr, wire)
}

fn curl_plain(port: u16, host: &str, target: &str) -> Curl {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_version} %{response_code}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://127.0.0.1:{port}{target}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, info) = text.rsplit_once("\r\n\r\n").unwrap_or((&text, ""));
    Curl {
        code: out.status.code().unwrap_or(-1),
        head: format!("{head}\r\n\r\n"),
        body: String::new(),
        info: info.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_answer_alike_over_http1_and_http2() {
    let s = site(&[]).await;
    let plain = get(&s.edge, "/", &[]);
    assert_eq!(plain.status, 200);
    assert!(
        plain.header("strict-transport-security").is_none(),
        "HSTS only over TLS"
    );

    let h1 = s.curl("a.test", "/", &["--http1.1"]);
    let h2 = s.curl("a.test", "/", &["--http2"]);
    assert_eq!(h1.code, 0, "{}", h1.stderr);
    assert_eq!(h1.info, "1.1 200");
    assert_eq!(h2.info, "2 200", "{}", h2.stderr);
    for c in [&h1, &h2] {
        assert_eq!(c.body.as_bytes(), &plain.body[..]);
        for name in [
            "etag",
            "last-modified",
            "cache-control",
            "content-type",
            "content-length",
        ] {
            assert_eq!(c.header(name).as_deref(), plain.header(name), "{name}");
        }
        assert_eq!(
            c.header("strict-transport-security").unwrap(),
            "max-age=31536000"
        );
        assert!(c.header("x-request-id").is_some());
    }
    // Revalidation and a compressed variant over HTTP/2.
    let etag = h2.header("etag").unwrap();
    let r = s.curl(
        "a.test",
        "/",
        &["--http2", "-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(r.info, "2 304");
    let js = common::fixture_dist().join("assets");
    let asset = std::fs::read_dir(&js)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".js"))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("a JS asset in the fixture");
    let r = s.curl(
        "a.test",
        &format!("/assets/{asset}"),
        &["--http2", "-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(r.info, "2 200");
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"));
    // A range over HTTP/2 (a reply with its own fields, not a prebuilt answer).
    let r = s.curl("a.test", "/", &["--http2", "-r", "0-9"]);
    assert_eq!(r.info, "2 206");
    assert_eq!(r.body.as_bytes(), &plain.body[..10]);
    // The access log names the protocol.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        s.edge.stdout().contains("\"GET / HTTP/2.0\" 200"),
        "{}",
        s.edge.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_with_the_first_as_default() {
    let s = site(&[]).await;
    for host in ["a.test", "x.w.test", "b.test"] {
        // curl verifies the certificate's names against the host: a wrong choice fails.
        let r = s.curl(host, "/_wxedge/healthz", &[]);
        assert_eq!(
            (r.code, r.info.as_str()),
            (0, "2 200"),
            "{host}: {}",
            r.stderr
        );
    }
    // A name no certificate has gets the first one (and so fails verification as a.test).
    let r = s.curl("other.test", "/_wxedge/healthz", &["-v"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("CN=a.test"), "{}", r.stderr);
    // Two names deep is not what `*.w.test` covers.
    let r = s.curl("x.y.w.test", "/_wxedge/healthz", &[]);
    assert_ne!(r.code, 0);
    // TLS 1.2 and 1.3 both; nothing older.
    let r = s.curl(
        "a.test",
        "/_wxedge/healthz",
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!((r.code, r.info.as_str()), (0, "2 200"), "{}", r.stderr);
    let r = s.curl(
        "a.test",
        "/_wxedge/healthz",
        &["--tlsv1.1", "--tls-max", "1.1"],
    );
    assert_ne!(r.code, 0);
    // HTTP/1.1 only when the client offers no h2.
    let r = s.curl("b.test", "/_wxedge/healthz", &["--http1.1"]);
    assert_eq!(r.info, "1.1 200");
    // A client that never finishes its handshake is dropped, not served.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", s.tls_port))
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"HTTP/1.1 200"),
        "plain HTTP is no handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_http2_is_checked_and_forwarded_like_http1() {
    let s = site(&[("WXEDGE_MAX_BODY_BYTES", "200000")]).await;
    // Identity headers are stripped, the path normalised, HTTPS announced, framing rebuilt.
    let r = s.curl(
        "a.test",
        "/api/x/../ping?q=1",
        &[
            "--http2",
            "-H",
            "X-WX-OpenID: forged",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: http",
            "-d",
            "hello",
        ],
    );
    assert_eq!(r.info, "2 200", "{}", r.stderr);
    assert_eq!(
        r.header("strict-transport-security").as_deref(),
        Some("max-age=31536000")
    );
    let seen = s.backend.seen().pop().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/api/ping?q=1");
    assert_eq!(seen.body, b"hello");
    assert_eq!(seen.header("content-length"), Some("5"));
    assert_eq!(seen.header("x-wx-openid"), None);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // 127.0.0.1 is not a trusted proxy here: what it says of others is not believed.
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert!(!seen
        .header("x-forwarded-for")
        .unwrap_or("")
        .contains("6.6.6.6"));
    assert_eq!(
        seen.header("host"),
        Some("a.test:".to_string() + &s.tls_port.to_string()).as_deref()
    );

    // A body of unknown length (no Content-Length on HTTP/2) is read to the end of its stream
    // and goes on with one length, as an HTTP/1 chunked body does: a backend that logs its
    // bytes sees the whole request and nothing after it.
    let (wire_addr, wire) = request_logging_backend().await;
    let wired = site(&[("WXEDGE_BACKEND", &format!("http://{wire_addr}"))]).await;
    let r = wired.curl_stdin(
        "a.test",
        "/api/stream",
        b"streamed body",
        &["--http2", "-T", "-", "-X", "POST"],
    );
    assert_eq!(r.info, "2 200", "{}", r.stderr);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let bytes = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-length: 13\r\n") || head.ends_with("\r\ncontent-length: 13"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(body, "streamed body");

    // The same refusals as HTTP/1, before any backend sees them.
    let before = s.backend.seen().len();
    for (target, status) in [
        ("/api/%2e%2e/%2e%2e/etc/passwd", "400"),
        ("/api%2fx", "400"),
        ("/api/x/..;/y", "400"),
        ("/a/../../etc/passwd", "400"),
    ] {
        let r = s.curl("a.test", target, &["--http2"]);
        assert_eq!(r.info, format!("2 {status}"), "{target}");
        assert!(r.body.contains("bad_request"), "{target}: {}", r.body);
    }
    let big = "x".repeat(300_000);
    let dir = temp_dir("big");
    std::fs::write(dir.join("big"), &big).unwrap();
    let r = s.curl(
        "a.test",
        "/api/upload",
        &[
            "--http2",
            "--data-binary",
            &format!("@{}", dir.join("big").display()),
        ],
    );
    assert_eq!(r.info, "2 413", "{}", r.stderr);
    assert_eq!(
        s.backend.seen().len(),
        before,
        "no refused request reached the backend"
    );
    // Without a declared length the limit holds as the body streams.
    let r = s.curl(
        "a.test",
        "/api/upload",
        &[
            "--http2",
            "-X",
            "POST",
            "-H",
            "content-length:",
            "-T",
            &dir.join("big").display().to_string(),
        ],
    );
    assert_eq!(r.info, "2 413", "{}", r.stderr);
    // The connection and the edge are fine afterwards.
    assert_eq!(s.curl("a.test", "/api/after", &["--http2"]).info, "2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wechat_login_works_over_http2_with_secure_cookies() {
    let s = site(&[]).await;
    let jar = temp_dir("jar").join("jar");
    let jar = jar.to_str().unwrap();
    let start = s.curl(
        "a.test",
        "/_wxedge/login?return=/pages/index/index",
        &["--http2", "-c", jar],
    );
    assert_eq!(start.info, "2 302");
    let location = start.header("location").unwrap();
    // The callback WeChat is told to use is this HTTPS origin.
    let callback = format!("https%3A%2F%2Fa.test%3A{}%2F_wxedge%2Fcallback", s.tls_port);
    assert!(location.contains(&callback), "{location}");
    assert!(start.header("set-cookie").unwrap().contains("; Secure"));
    // The sandbox's authorize answers with the callback at once for `auto=alice`.
    let authorize = location.replace("#wechat_redirect", "&auto=alice");
    let r = s.curl(
        "a.test",
        &authorize,
        &["--http2", "-b", jar, "-c", jar, "-L"],
    );
    assert_eq!(r.info, "2 200", "{}\n{}", r.head, r.stderr);
    let cookies = std::fs::read_to_string(jar).unwrap();
    assert!(cookies.contains("wxedge_session"), "{cookies}");
    // The session reaches the backend as the verified identity, over HTTP/2.
    let r = s.curl("a.test", "/api/me", &["--http2", "-b", jar]);
    assert_eq!(r.info, "2 200");
    let seen = s.backend.seen().pop().unwrap();
    assert!(
        seen.header("x-wx-openid").is_some_and(|o| !o.is_empty()),
        "{seen:?}"
    );
    assert!(seen
        .header("cookie")
        .is_none_or(|c| !c.contains("wxedge_session")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_except_wechat_verification_and_acme() {
    let s = site(&[]).await;
    let r = curl_plain(s.redirect_port, "a.test:80", "/pages/index/index?x=1&y=%2F");
    assert_eq!(r.info, "1.1 301");
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://a.test:{}/pages/index/index?x=1&y=%2F", s.tls_port)
    );
    // /api/ too: nothing but the two exceptions is served over plain HTTP there.
    let before = s.backend.seen().len();
    assert_eq!(
        curl_plain(s.redirect_port, "a.test", "/api/ping").info,
        "1.1 301"
    );
    assert_eq!(s.backend.seen().len(), before);

    let r = curl_plain(s.redirect_port, "a.test", "/MP_verify_abc123.txt");
    assert_eq!(r.info, "1.1 200");
    std::fs::write(
        s.webroot.join(".well-known/acme-challenge/tok-EN_1"),
        "tok-EN_1.thumbprint",
    )
    .unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-H", "Host: a.test"])
        .arg(format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/tok-EN_1",
            s.redirect_port
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tok-EN_1.thumbprint");
    let r = curl_plain(
        s.redirect_port,
        "a.test",
        "/.well-known/acme-challenge/missing",
    );
    assert_eq!(r.info, "1.1 404");
    let r = curl_plain(s.redirect_port, "a.test", "/.well-known/acme-challenge/a.b");
    assert_eq!(r.info, "1.1 404", "only token characters");
    // The strict parser still runs first on the redirect listener.
    let r = raw(
        format!("127.0.0.1:{}", s.redirect_port).parse().unwrap(),
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    // HSTS is not sent over plain HTTP.
    assert!(r.header("strict-transport-security").is_none());
}

/// A TLS client config trusting the test CA, offering `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An HTTP/2 client over TLS to the site's HTTPS listener, trusting its CA, ready to send.
async fn h2_client(s: &Site) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.tls_port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&s.pki.ca, &[b"h2"]));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

async fn tls_after_proxy_header(
    addr: SocketAddr,
    ca: &Path,
    proxy_header: &[u8],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(proxy_header).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, alpn));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("a.test").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_before_tls_names_the_client_on_both_protocols() {
    let proxy_port = free_port();
    let listen = format!("127.0.0.1:{proxy_port}");
    let s = site(&[
        ("WXEDGE_TLS_LISTEN_PROXY_PROTOCOL", listen.as_str()),
        ("WXEDGE_REAL_IP_TRUSTED", "127.0.0.1"),
        ("WXEDGE_KEEPALIVE_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let addr: SocketAddr = listen.parse().unwrap();

    // HTTP/1.1 over TLS, after a v1 header.
    let mut tls = tls_after_proxy_header(
        addr,
        &s.pki.ca,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n",
        &[b"http/1.1"],
    )
    .await;
    tls.write_all(b"GET /api/one HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.ok();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let seen = s.backend.seen().pop().unwrap();
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    // HTTP/2 over TLS, after a v2 header: Pingora's HTTP/2 server sees the same client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]); // v2 PROXY, TCP over IPv4, 12 bytes
    v2.extend_from_slice(&[198, 51, 100, 7, 127, 0, 0, 1]);
    v2.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
    let tls = tls_after_proxy_header(addr, &s.pki.ca, &v2, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("https://a.test/api/two")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.backend.seen().pop().unwrap();
    assert_eq!(seen.target, "/api/two");
    assert_eq!(seen.header("x-real-ip"), Some("198.51.100.7"));

    // An idle HTTP/2 connection is closed after the keep-alive timeout (1 s here).
    let tls = tls_after_proxy_header(addr, &s.pki.ca, &v2, &[b"h2"]).await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get("https://a.test/_wxedge/healthz")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), driver).await;
    assert!(
        closed.is_ok(),
        "the idle HTTP/2 connection is still open after 5 s"
    );

    // A PROXY listener refuses connections without the header.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}

#[test]
fn a_broken_certificate_is_a_configuration_error() {
    let dir = temp_dir("badtls");
    make_pki(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let check = |cert: &Path, key: &Path| {
        let (mut cmd, _) = command(
            &[
                ("WXEDGE_LISTEN", "127.0.0.1:1"),
                ("WXEDGE_TLS_LISTEN", &listen),
                ("WXEDGE_TLS_CERT", cert.to_str().unwrap()),
                ("WXEDGE_TLS_KEY", key.to_str().unwrap()),
            ],
            &["-t"],
        );
        cmd.output().unwrap()
    };
    let ok = check(&dir.join("a.pem"), &dir.join("a.key"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("certificate:") && out.contains("a.test, *.w.test"),
        "{out}"
    );

    let bad = check(&dir.join("a.pem"), &dir.join("b.key"));
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("a.pem") && err.contains("b.key"), "{err}");
    let missing = check(&dir.join("none.pem"), &dir.join("a.key"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("none.pem"));
}

/// The header lines of curl's last response, names lowercased, sorted; without `date` (it
/// changes) and `connection` (HTTP/1 only).
fn header_set(c: &Curl) -> Vec<(String, String)> {
    let last = c
        .head
        .rsplit("\r\n\r\n")
        .find(|h| !h.trim().is_empty())
        .unwrap_or("");
    let mut set: Vec<(String, String)> = last
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| k != "date" && k != "connection")
        .collect();
    set.sort();
    set
}

/// Every kind of static answer (prebuilt ones and replies built per request), over
/// HTTP/2 and HTTP/1.1: the same status, body and header lines, the request id included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_static_answers_are_http1s_header_for_header() {
    let s = site(&[]).await;
    let edge = &s.edge;
    tokio::task::block_in_place(|| wait_compressed(edge));
    let js = common::fixture_dist().join("assets");
    let asset = std::fs::read_dir(&js)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".js"))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .map(|e| format!("/assets/{}", e.file_name().to_string_lossy()))
        .unwrap();
    let etag = s.curl("a.test", "/", &["--http2"]).header("etag").unwrap();
    let inm = format!("If-None-Match: {etag}");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("/", vec![], "200"),
        (
            "/index.html",
            vec!["-H", "Accept-Encoding: gzip, br"],
            "200",
        ),
        // The identity asset is larger than what goes out inline.
        (&asset, vec![], "200"),
        (&asset, vec!["-H", "Accept-Encoding: gzip"], "200"),
        (&asset, vec!["-H", "Accept-Encoding: br"], "200"),
        ("/", vec!["-H", &inm], "304"),
        ("/", vec!["-I"], "200"),
        ("/pages/index/index", vec!["-H", "Accept: text/html"], "200"),
        ("/MP_verify_abc123.txt", vec![], "200"),
        ("/x/../index.html?v=1", vec![], "200"),
        // Replies built per request: a miss, a range, a directory redirect, a method the dist
        // refuses.
        ("/missing.js", vec![], "404"),
        ("/", vec!["-r", "0-9"], "206"),
        ("/assets", vec![], "301"),
        ("/", vec!["-X", "DELETE"], "405"),
    ];
    for (i, (target, args, status)) in cases.iter().enumerate() {
        let id = format!("X-Request-ID: case-{i}");
        let mut a1 = vec!["--http1.1", "-H", &id];
        a1.extend(args.iter().copied());
        let mut a2 = vec!["--http2", "-H", &id];
        a2.extend(args.iter().copied());
        let h1 = s.curl("a.test", target, &a1);
        let h2 = s.curl("a.test", target, &a2);
        assert_eq!(
            h1.info,
            format!("1.1 {status}"),
            "{target} {args:?}: {}",
            h1.stderr
        );
        assert_eq!(
            h2.info,
            format!("2 {status}"),
            "{target} {args:?}: {}",
            h2.stderr
        );
        if !args.contains(&"-I") {
            // (curl -I writes the head as the body.)
            assert_eq!(h1.body, h2.body, "{target} {args:?}");
        }
        assert_eq!(header_set(&h1), header_set(&h2), "{target} {args:?}");
        assert_eq!(h2.header("x-request-id").as_deref(), Some(&id[14..]));
    }
    // The access log line of an HTTP/2 request: the target as sent, the protocol, the body
    // bytes, the referer and the user agent.
    let r = s.curl(
        "a.test",
        "/x/../index.html?v=2",
        &["--http2", "-e", "https://ref.test/p", "-A", "h2-agent/1"],
    );
    assert_eq!(r.info, "2 200");
    let line = format!(
        "\"GET /x/../index.html?v=2 HTTP/2.0\" 200 {} \"https://ref.test/p\" \"h2-agent/1\"",
        r.body.len()
    );
    let t = std::time::Instant::now();
    while !s.edge.stdout().contains(&line) && t.elapsed().as_secs() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        s.edge.stdout().contains(&line),
        "{line}\n{}",
        s.edge.stdout()
    );
}

/// A backend that answers each whole request (`Content-Length` bodies) `200 ok`, with
/// hop-by-hop headers and a request id of its own, and keeps every byte it received.
async fn request_logging_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    logging_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: backend\r\nconnection: x-hop\r\nx-hop: 1\r\n\r\nok",
        |pending| {
            let mut done = 0;
            loop {
                let mut hs = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut hs);
                let Ok(httparse::Status::Complete(len)) = req.parse(pending) else {
                    return done;
                };
                let body: usize = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                if pending.len() < len + body {
                    return done;
                }
                pending.drain(..len + body);
                done += 1;
            }
        },
    )
    .await
}

/// An API call over HTTP/2 with a session: the backend gets exactly one request, byte for
/// byte the one the edge builds (whichever path sends it, up to the case of header names): the normalised target, the client's
/// end-to-end headers, `Host` from `:authority`, the forwarding headers, the verified identity
/// and the edge's request id, one `Content-Length` and the body. The answer loses the
/// backend's hop-by-hop headers and request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_api_calls_reach_the_backend_byte_for_byte() {
    let (wire_addr, wire) = request_logging_backend().await;
    let s = site(&[("WXEDGE_BACKEND", &format!("http://{wire_addr}"))]).await;
    let jar = temp_dir("jar").join("jar");
    let jar = jar.to_str().unwrap();
    let start = s.curl("a.test", "/_wxedge/login?return=/", &["--http2", "-c", jar]);
    let authorize = start
        .header("location")
        .unwrap()
        .replace("#wechat_redirect", "&auto=alice");
    let r = s.curl(
        "a.test",
        &authorize,
        &["--http2", "-b", jar, "-c", jar, "-L"],
    );
    assert_eq!(r.info, "2 200", "{}", r.stderr);
    let session = std::fs::read_to_string(jar)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7 && f[5] == "wxedge_session").then(|| f[6].to_string())
        })
        .expect("a session cookie");
    wire.lock().unwrap().clear();
    let r = s.curl(
        "a.test",
        "/api/x/../echo?q=1",
        &[
            "--http2",
            "-H",
            "X-Request-ID: h2-bytes-1",
            "-H",
            "X-WX-OpenID: forged",
            "-H",
            "X-Custom: kept",
            "-H",
            &format!("Cookie: wxedge_session={session}; theme=dark"),
            "--data-binary",
            "hello",
        ],
    );
    assert_eq!(r.info, "2 200", "{}", r.stderr);
    assert_eq!(r.body, "ok");
    assert_eq!(r.header("x-request-id").as_deref(), Some("h2-bytes-1"));
    assert_eq!(r.header("x-hop"), None);
    assert_eq!(
        r.header("strict-transport-security").as_deref(),
        Some("max-age=31536000")
    );
    let t = std::time::Instant::now();
    while !wire.lock().unwrap().ends_with(b"hello") && t.elapsed().as_secs() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    let openid = got
        .lines()
        .find_map(|l| l.strip_prefix("x-wx-openid: "))
        .unwrap_or_else(|| panic!("no identity header in:\n{got}"))
        .to_string();
    assert_ne!(openid, "forged");
    let curl_version = String::from_utf8_lossy(
        &Command::new("curl")
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_string();
    let expected = format!(
        "POST /api/echo?q=1 HTTP/1.1\r\n\
user-agent: curl/{curl_version}\r\n\
accept: */*\r\n\
x-custom: kept\r\n\
content-type: application/x-www-form-urlencoded\r\n\
host: a.test:{port}\r\n\
x-forwarded-for: 127.0.0.1\r\n\
x-real-ip: 127.0.0.1\r\n\
x-forwarded-proto: https\r\n\
x-forwarded-host: a.test:{port}\r\n\
x-wx-openid: {openid}\r\n\
x-wx-scope: snsapi_base\r\n\
cookie: theme=dark\r\n\
x-request-id: h2-bytes-1\r\n\
content-length: 5\r\n\r\nhello",
        port = s.tls_port
    );
    assert_eq!(got, expected);
}

/// On one HTTP/2 connection, refused streams (a path that climbs out, a forbidden byte) get
/// their answer or reset while the streams beside them are answered, and the connection
/// serves more afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_refusals_leave_sibling_streams_alone() {
    let s = site(&[]).await;
    let mut client = h2_client(&s).await;
    let mut pending = Vec::new();
    for (path, status) in [
        ("/", 200),
        ("/a/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/api/ping", 200),
        ("/api%2fx", 400),
        ("/index.html", 200),
        ("/x/..;/y", 400),
        ("/_wxedge/healthz", 200),
    ] {
        let req = http::Request::get(format!("https://a.test{path}"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        pending.push((path, status, resp));
        client = client.ready().await.unwrap();
    }
    for (path, status, resp) in pending {
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        if status == 400 {
            assert!(
                String::from_utf8_lossy(&bytes).contains("bad_request"),
                "{path}"
            );
        }
    }
    let req = http::Request::get("https://a.test/index.html")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}

/// HTTP/2 browsers send each cookie as a field of its own; the HTTP/1.1 backend gets one
/// `Cookie` line (RFC 9113 §8.2.3), or it may read only the first cookie: when the login
/// strips the edge's cookies from them, and when the cookies pass as they are (login off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_http2_cookies_reach_the_backend_as_one_line() {
    for login in ["true", "false"] {
        let s = site(&[("WXEDGE_WECHAT_LOGIN", login)]).await;
        let mut client = h2_client(&s).await;
        let req = http::Request::get("https://a.test/api/crumbs")
            .header("cookie", "theme=dark")
            .header("accept", "*/*")
            .header("cookie", "lang=zh")
            .header("cookie", "cart=3")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200, "login {login}");
        let seen = s.backend.seen().pop().unwrap();
        assert_eq!(seen.target, "/api/crumbs");
        let cookies: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["theme=dark; lang=zh; cart=3"], "login {login}");
    }
}

/// HTTP/2 uploads are kept like HTTP/1's (a small buffer in memory, the rest in a temporary
/// file): they reach the backend byte-exact with a declared length and without one, and
/// streams that stall hold no memory for what they sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_uploads_arrive_whole_and_stalled_ones_hold_a_buffer_each() {
    const SIZE: usize = 10 << 20;
    const SHORT: usize = 64 << 10;
    const BUFFER: usize = 16 << 10;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = metrics.to_string();
    let s = site(&[
        ("WXEDGE_METRICS_LISTEN", m.as_str()),
        ("WXEDGE_CLIENT_BODY_TIMEOUT_MS", "600000"),
    ])
    .await;
    let body_of = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
            .collect()
    };
    let mut client = h2_client(&s).await;
    for (i, len) in [0, 1, BUFFER - 1, BUFFER, BUFFER + 1, 3 << 20]
        .into_iter()
        .enumerate()
    {
        for declared in [true, false] {
            let body = body_of(len, i as u8 + declared as u8 * 100);
            let mut req = http::Request::post(format!("https://a.test/api/upload/{len}"));
            if declared {
                req = req.header("content-length", len);
            }
            let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
            send.send_data(bytes::Bytes::from(body.clone()), true)
                .unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200, "{len} bytes, declared {declared}");
            let got = s.backend.seen().pop().unwrap();
            assert!(
                got.body == body,
                "{len} bytes, declared {declared}: {} arrived",
                got.body.len()
            );
        }
    }
    let temp = "wxedge_request_body_temp_bytes";
    wait_for_metric(metrics, temp, 0.0, std::time::Duration::from_secs(10)).await;

    // 100 streams on 10 connections send all but the last 64 KiB of 10 MiB, then stall.
    let before = rss_kib(&s.edge);
    let piece = bytes::Bytes::from(body_of(SIZE - SHORT, 9));
    let (mut stalled, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut client = h2_client(&s).await;
        for _ in 0..10 {
            client = client.ready().await.unwrap();
            let req = http::Request::post("https://a.test/api/upload/stalled")
                .header("content-length", SIZE)
                .body(())
                .unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            send.send_data(piece.clone(), false).unwrap();
            stalled.push((resp, send));
        }
        clients.push(client); // its connection stays open while the test runs
    }
    // Everything sent has been read and kept, in temporary files.
    let in_files = 100 * (SIZE - SHORT);
    let limit = std::time::Duration::from_secs(120);
    wait_for_metric(metrics, temp, in_files as f64, limit).await;
    let during = rss_kib(&s.edge);
    let growth_mib = during.saturating_sub(before) as f64 / 1024.0;
    println!(
        "100 stalled HTTP/2 uploads of 10 MiB: RSS {before} -> {during} KiB (+{growth_mib:.1} MiB)"
    );
    assert!(
        growth_mib < 32.0,
        "stalled HTTP/2 uploads grew the edge by {growth_mib:.1} MiB"
    );
    // One finishes and arrives whole; the others are reset and their files go.
    let (resp, mut send) = stalled.pop().unwrap();
    send.send_data(bytes::Bytes::from(vec![7u8; SHORT]), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let got = s.backend.seen().pop().unwrap().body;
    assert_eq!(got.len(), SIZE);
    assert!(got[..SIZE - SHORT] == piece[..] && got[SIZE - SHORT..].iter().all(|&b| b == 7));
    for (_, mut send) in stalled {
        send.send_reset(h2::Reason::CANCEL);
    }
    wait_for_metric(metrics, temp, 0.0, std::time::Duration::from_secs(30)).await;
    drop(clients);
}

/// HTTP/2 requests as strict as HTTP/1's: what RFC 9113 calls malformed is refused before any
/// backend sees it, and a body that could still contradict its declared length is not
/// forwarded before its stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_fields_are_refused_before_the_backend() {
    let s = site(&[]).await;
    let mut client = h2_client(&s).await;
    // (why it is malformed, the request): each is answered 400 and never forwarded.
    let cases: Vec<(&str, http::Request<()>)> = vec![
        (
            "8.2.1: a field value that starts with a space",
            http::Request::get("https://a.test/api/ping")
                .header("x-a", " v")
                .body(())
                .unwrap(),
        ),
        (
            "8.2.1: a field value that ends with a tab",
            http::Request::get("https://a.test/api/ping")
                .header("x-a", "v\t")
                .body(())
                .unwrap(),
        ),
        (
            "8.3.1: an :authority whose port is above 65535",
            http::Request::get("https://a.test:99999/api/ping")
                .body(())
                .unwrap(),
        ),
    ];
    for (why, req) in cases {
        client = client.ready().await.unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 400, "{why}");
    }
    assert!(
        s.backend.seen().is_empty(),
        "a malformed request reached the backend"
    );

    // 8.1.1: `content-length: 0` on a HEADERS frame that does not end the stream. A DATA frame
    // then contradicts it: the stream fails, and the backend never had the request.
    let post = || {
        http::Request::post("https://a.test/api/ping")
            .header("content-length", "0")
            .body(())
            .unwrap()
    };
    client = client.ready().await.unwrap();
    let (resp, mut send) = client.send_request(post(), false).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        s.backend.seen().is_empty(),
        "forwarded before the stream ended"
    );
    let _ = send.send_data(bytes::Bytes::from_static(b"x"), true);
    assert!(
        resp.await.is_err(),
        "a body contradicting content-length: 0 was answered"
    );
    // The same request whose stream then ends empty goes on, after the end.
    let mut client = h2_client(&s).await;
    let (resp, mut send) = client.send_request(post(), false).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        s.backend.seen().is_empty(),
        "forwarded before the stream ended"
    );
    send.send_data(bytes::Bytes::new(), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(s.backend.seen().len(), 1);
}

/// Certificate expiry, visible before it bites: the start-up summary (the same lines `wxedge -t`
/// prints) gives each certificate's days left, `wxedge_tls_certificate_expiry_seconds{name}` the
/// seconds, readiness names the one within 14 days (still ready), and the log warns once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_shows_in_the_summary_metrics_readiness_and_log() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = site(&[("WXEDGE_METRICS_LISTEN", &metrics.to_string())]).await;
    let r = s.curl("a.test", "/_wxedge/readyz", &[]);
    assert!(
        r.info.ends_with(" 200"),
        "still ready: {} {}",
        r.info,
        r.body
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let expiring = v["certificates_expiring"].as_array().unwrap();
    assert_eq!(expiring.len(), 1, "{v}");
    assert_eq!(expiring[0]["name"], "b.test");
    assert_eq!(expiring[0]["days_left"], 10);
    let text = tokio::task::spawn_blocking(move || metrics_text(metrics))
        .await
        .unwrap();
    let seconds = |name: &str| -> f64 {
        let prefix = format!("wxedge_tls_certificate_expiry_seconds{{name=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no expiry for {name}:\n{text}"))
            .parse()
            .unwrap()
    };
    let b = seconds("b.test") / 86_400.0;
    assert!((10.0..11.0).contains(&b), "b.test: {b} days");
    assert!(seconds("a.test") / 86_400.0 > 30.0);
    let start = std::time::Instant::now();
    let log = loop {
        let log = format!("{}{}", s.edge.stdout(), s.edge.stderr());
        if log.contains("expires in 10 days") || start.elapsed().as_secs() > 5 {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(log.contains("10 days left"), "summary:\n{log}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("expires in")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("b.test") && warnings[0].contains("10 days"),
        "{}",
        warnings[0]
    );
}
