//! The process as ops meet it: `-t`, configuration errors, graceful shutdown, zero-downtime upgrade.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn run_to_end(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let (mut cmd, _dir) = command(env, args);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_flag_reports_what_will_be_served() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/wxedge.yaml");
    let secret = temp_dir("secret").join("wx_secret");
    std::fs::write(&secret, "the-app-secret-value\n").unwrap();
    let (code, out, err) = run_to_end(
        &[
            ("WX_MP_VERIFY", "Tok123"),
            ("WXEDGE_BACKEND", "http://127.0.0.1:9"),
            ("WXEDGE_LISTEN", "127.0.0.1:1"),
            ("WX_APPID", "wxabc"),
            ("WX_SECRET_FILE", secret.to_str().unwrap()),
        ],
        &["-c", conf.to_str().unwrap(), "-t"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("mp_verify: /MP_verify_Tok123.txt (from config)"),
        "{out}"
    );
    assert!(out.contains("proxy: /api/ -> 127.0.0.1:9"), "{out}");
    assert!(out.contains("index.html present"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        out.contains("wechat: appid wxabc via https://api.weixin.qq.com"),
        "{out}"
    );
    assert!(
        !out.contains("the-app-secret-value") && !err.contains("the-app-secret-value"),
        "the secret is never printed"
    );
    // The shipped config keeps the sandbox off: without WeChat credentials it refuses to start.
    let (code, _, err) = run_to_end(&[], &["-c", conf.to_str().unwrap(), "-t"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("WX_APPID") && err.contains("WXEDGE_SANDBOX=true"),
        "{err}"
    );
}

#[test]
fn bad_configuration_is_one_clear_line_and_nonzero() {
    let dir = temp_dir("badconf");
    let unknown = dir.join("unknown.yaml");
    std::fs::write(&unknown, "wxedge:\n  proxy:\n    backendz: []\n").unwrap();
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, "wxedge: [unclosed\n").unwrap();
    // (environment, arguments, what the one error line must name)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("WXEDGE_DIST", "/no/such/dist")],
            vec!["-t"],
            "not a directory",
        ),
        (
            vec![("WXEDGE_BACKEND", "http://exa mple:80")],
            vec!["-t"],
            "backend",
        ),
        (
            vec![("WXEDGE_BACKEND", "127.0.0.1:80")],
            vec!["-t"],
            "only http://",
        ),
        (
            vec![],
            vec!["-c", unknown.to_str().unwrap(), "-t"],
            "unknown field `backendz`",
        ),
        (
            vec![],
            vec!["-c", garbage.to_str().unwrap(), "-t"],
            "garbage.yaml",
        ),
        (
            vec![],
            vec!["-c", "/no/such.yaml", "-t"],
            "cannot read config file",
        ),
        (
            vec![("WXEDGE_THREADS", "many")],
            vec!["-t"],
            "WXEDGE_THREADS",
        ),
        (
            vec![("WX_SECRET_FILE", "/no/such/secret")],
            vec!["-t"],
            "WX_SECRET_FILE",
        ),
    ];
    for (env, args, needle) in cases {
        let (code, _out, err) = run_to_end(&env, &args);
        assert_ne!(code, 0, "{env:?} {args:?}");
        assert!(err.contains(needle), "{env:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn healthcheck_subcommand() {
    let edge = start_edge(&[]);
    let listen = format!("127.0.0.1:{}", edge.port);
    let (code, _, _) = run_to_end(&[("WXEDGE_LISTEN", &listen)], &["healthcheck"]);
    assert_eq!(code, 0);
    let closed = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run_to_end(&[("WXEDGE_LISTEN", &closed)], &["healthcheck"]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish() {
    let backend = Backend::start("slow").await;
    let url = backend.url();
    let edge = tokio::task::spawn_blocking(move || start_edge(&[("WXEDGE_BACKEND", &url)]))
        .await
        .unwrap();
    let addr = edge.addr();
    let inflight = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"GET /api/slow?ms=1500 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    edge.signal("TERM");
    let r = inflight
        .await
        .unwrap()
        .expect("in-flight request must complete");
    assert_eq!(r.status, 200);
    let mut edge = edge;
    let status = tokio::task::spawn_blocking(move || {
        let s = edge.wait_exit(Duration::from_secs(15));
        (s, edge)
    })
    .await
    .unwrap();
    assert!(status.0.is_some(), "the edge did not exit after SIGTERM");
}

/// Under constant keep-alive load: start B with `-u`, SIGQUIT A; no request may fail, and A must exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_under_load_loses_no_request() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = temp_dir("upgrade");
    let pid = state.join("wxedge.pid");
    let sock = state.join("upgrade.sock");
    let env: Vec<(String, String)> = vec![
        ("WXEDGE_LISTEN".into(), listen.clone()),
        ("WXEDGE_BACKEND".into(), url),
        ("WXEDGE_PID_FILE".into(), pid.to_str().unwrap().into()),
        ("WXEDGE_UPGRADE_SOCK".into(), sock.to_str().unwrap().into()),
        ("WXEDGE_ACCESS_LOG".into(), "off".into()),
    ];
    let spawn = move |env: Vec<(String, String)>, upgrade: bool| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (mut cmd, _) = command(&e, if upgrade { &["-u"] } else { &[] });
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Reaped(cmd.spawn().unwrap())
    };
    let mut a = spawn(env.clone(), false);
    let base = format!("http://{listen}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let t = Instant::now();
    while client
        .get(format!("{base}/_wxedge/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "A did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (client, base, stop, ok, failed) = (
            client.clone(),
            base.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/index.html"
            } else {
                "/api/ping"
            };
            while !stop.load(Ordering::Relaxed) {
                let answer = match client.get(format!("{base}{path}")).send().await {
                    Ok(r) => {
                        let status = r.status();
                        r.bytes().await.map(|_| status)
                    }
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(s) if s == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(s) => {
                        eprintln!("upgrade: status {s}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("upgrade: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = spawn(env.clone(), true);
    // B is ready to take the sockets once it listens on the upgrade socket (a fresh path here).
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "B never opened the upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_pid = a.0.id();
    assert!(std::process::Command::new("kill")
        .args(["-QUIT", &a_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let quit_at = Instant::now();
    let a_exit = tokio::task::spawn_blocking(move || {
        while quit_at.elapsed() < Duration::from_secs(30) {
            if a.0.try_wait().unwrap().is_some() {
                return Some(quit_at.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // B serves alone now.
    let r = client
        .get(format!("{base}/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(b);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("graceful upgrade: {ok} ok, {failed} failed, old process exited after {a_exit:?}");
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "requests failed during the upgrade");
    let a_exit = a_exit.expect("the old process did not exit within 30 s of SIGQUIT");
    assert!(
        a_exit < Duration::from_secs(20),
        "old process lingered {a_exit:?}"
    );
}

/// A wxedge process that is killed and reaped when the test ends, whether it passed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
