//! The process as ops meet it: `-t`, configuration errors, graceful shutdown, zero-downtime upgrade.

mod common;

use common::*;
use std::process::Command;
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

/// Under constant keep-alive load: start B with `-u`, SIGQUIT A; no request may fail, A must
/// exit, and the access log (both processes append to one file) has one whole line for every
/// request answered: A writes out its buffered lines as it drains, B as it stops on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_upgrade_under_load_loses_no_request() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = temp_dir("upgrade");
    let pid = state.join("wxedge.pid");
    let sock = state.join("upgrade.sock");
    let access_log = state.join("access.log");
    let env: Vec<(String, String)> = vec![
        ("WXEDGE_LISTEN".into(), listen.clone()),
        ("WXEDGE_BACKEND".into(), url),
        ("WXEDGE_PID_FILE".into(), pid.to_str().unwrap().into()),
        ("WXEDGE_UPGRADE_SOCK".into(), sock.to_str().unwrap().into()),
        (
            "WXEDGE_ACCESS_LOG_PATH".into(),
            access_log.to_str().unwrap().into(),
        ),
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
    r.bytes().await.unwrap();
    let mut b = b;
    let b_exit = tokio::task::spawn_blocking(move || {
        let _ = Command::new("kill")
            .args(["-TERM", &b.0.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if b.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await
    .unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("graceful upgrade: {ok} ok, {failed} failed, old process exited after {a_exit:?}");
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "requests failed during the upgrade");
    let a_exit = a_exit.expect("the old process did not exit within 30 s of SIGQUIT");
    assert!(
        a_exit < Duration::from_secs(20),
        "old process lingered {a_exit:?}"
    );
    assert!(
        b_exit,
        "the new process did not exit within 30 s of SIGTERM"
    );

    // Every request answered (the load's and the last one) is one whole line; health probes
    // are not logged.
    let log = std::fs::read_to_string(&access_log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("/_wxedge/")).collect();
    assert!(
        lines.iter().all(|l| l.starts_with("127.0.0.1 - - [")
            && l.ends_with('"')
            && (l.contains("\"GET /index.html HTTP/1.1\" 200 ")
                || l.contains("\"GET /api/ping HTTP/1.1\" 200 "))),
        "a torn, interleaved or unexpected line in:\n{}",
        lines
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        lines.len(),
        ok + 1,
        "one access-log line per request answered across the upgrade"
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

/// `wxedge supervise` in a temporary directory: its config, dist, pid file and log.
struct Supervised {
    child: Reaped,
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    addr: std::net::SocketAddr,
}

impl Supervised {
    fn conf(&self) -> std::path::PathBuf {
        self.dir.join("wxedge.yaml")
    }
    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.join("wxedge.pid")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default()
    }
    /// The config file: `max_age` shows in `/static/app.txt`'s Cache-Control.
    fn write_conf(dir: &std::path::Path, port: u16, max_age: u32, extra: &str) {
        let conf = format!(
            "pid_file: {d}/wxedge.pid\nupgrade_sock: {d}/upgrade.sock\ngrace_period_seconds: 10\n\
             wxedge:\n  listen: [\"127.0.0.1:{port}\"]\n  dist: {d}/dist\n  static_files:\n    \
             cache_control: [{{prefix: \"/static/\", value: \"public, max-age={max_age}\"}}]\n{extra}",
            d = dir.display()
        );
        std::fs::write(dir.join("wxedge.yaml"), conf).unwrap();
    }
    fn start(args: &[&str], backend: &str) -> Supervised {
        Self::start_in(&[], args, backend)
    }
    /// `wrapper` runs the edge (e.g. `unshare … `), with the harness's environment.
    fn start_in(wrapper: &[&str], args: &[&str], backend: &str) -> Supervised {
        let dir = temp_dir("supervise");
        std::fs::create_dir_all(dir.join("dist/static")).unwrap();
        std::fs::write(dir.join("dist/index.html"), "<p>v1</p>").unwrap();
        std::fs::write(dir.join("dist/static/app.txt"), "app").unwrap();
        let port = free_port();
        Self::write_conf(&dir, port, 1111, "");
        // The harness's own variables would override the file: point them at the same places.
        let env: Vec<(String, String)> = [
            ("WXEDGE_PID_FILE", dir.join("wxedge.pid")),
            ("WXEDGE_UPGRADE_SOCK", dir.join("upgrade.sock")),
            ("WXEDGE_DIST", dir.join("dist")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .chain([
            ("WXEDGE_BACKEND".to_string(), backend.to_string()),
            ("WXEDGE_WECHAT_LOGIN".to_string(), "false".to_string()),
            ("WXEDGE_ACCESS_LOG".to_string(), "off".to_string()),
        ])
        .collect();
        let conf = dir.join("wxedge.yaml");
        let mut all = args.to_vec();
        all.extend(["-c", conf.to_str().unwrap()]);
        let log = std::fs::File::create(dir.join("supervisor.log")).unwrap();
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (edge, _) = command(&e, &all);
        let mut cmd = match wrapper.split_first() {
            None => edge,
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args)
                    .arg(edge.get_program())
                    .args(edge.get_args())
                    .env_clear();
                for (k, v) in edge.get_envs() {
                    if let Some(v) = v {
                        cmd.env(k, v);
                    }
                }
                cmd
            }
        };
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let s = Supervised {
            child: Reaped(cmd.spawn().unwrap()),
            dir,
            env,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        let t = Instant::now();
        while get(s.addr, "/_wxedge/healthz").map(|r| r.status).ok() != Some(200) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the supervised edge did not start:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
    /// Runs `wxedge <args> -c conf` with the same environment: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let e: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let conf = self.conf();
        let mut all = args.to_vec();
        all.extend(["-c", conf.to_str().unwrap()]);
        run_to_end(&e, &all)
    }
    fn supervisor_pid(&self) -> u32 {
        let p = std::fs::read_to_string(self.pid_file()).unwrap_or_default();
        p.trim().parse().unwrap_or(0)
    }
}

impl Drop for Supervised {
    /// A daemonized supervisor is not the test's child: end it (its servers follow) by its pid
    /// (1 is a PID namespace's view, not a process here).
    fn drop(&mut self) {
        let pid = self.supervisor_pid();
        if pid > 1 && pid != self.child.0.id() && alive(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Steady load while it lives: keep-alive clients (on the test's runtime) and threads that
/// open a new connection per request.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(8)),
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()
            .unwrap();
        for i in 0..8 {
            let path = ["/", "/static/app.txt", "/api/ping", "/index.html"][i % 4];
            let (stop, ok, failed, running) = (
                load.stop.clone(),
                load.ok.clone(),
                load.failed.clone(),
                load.running.clone(),
            );
            let count = move |answer: Result<u16, String>| {
                match answer {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("reload load: {path}: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            };
            if i < 4 {
                let (client, url) = (client.clone(), format!("http://{addr}{path}"));
                tokio::runtime::Handle::current().spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match client.get(&url).send().await {
                            Ok(r) => {
                                let s = r.status().as_u16();
                                r.bytes().await.map(|_| s)
                            }
                            Err(e) => Err(e),
                        };
                        count(answer.map_err(|e| format!("{e:?}")));
                    }
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            } else {
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        count(get(addr, path).map(|r| r.status).map_err(|e| e.to_string()));
                    }
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
        load
    }
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        while self.running.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `wxedge supervise` under steady load: reloads of the dist and the config, refused broken
/// configs (by `wxedge reload` and by SIGHUP), a reload after those; no request fails, the
/// supervisor stays the same process, and SIGTERM drains and ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_reloads_under_load_without_failing_a_request() {
    let backend = Backend::start("slow").await;
    let url = backend.url();
    tokio::task::spawn_blocking(move || reloads_under_load(&url))
        .await
        .unwrap();
}

fn reloads_under_load(backend: &str) {
    let mut s = Supervised::start(&["supervise"], backend);
    let supervisor = s.child.0.id();
    assert_eq!(
        s.supervisor_pid(),
        supervisor,
        "pid_file names the supervisor"
    );
    let cache_control = |s: &Supervised| {
        let r = get(s.addr, "/static/app.txt").unwrap();
        r.header("cache-control").unwrap_or_default().to_string()
    };
    assert_eq!(cache_control(&s), "public, max-age=1111");
    let load = Load::start(s.addr);
    std::thread::sleep(Duration::from_millis(500));

    // (a) a new dist
    std::fs::write(s.dir.join("dist/index.html"), "<p>v2</p>").unwrap();
    let (code, out, err) = s.run(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log());
    assert!(out.contains("took over"), "{out}");
    assert_eq!(get(s.addr, "/").unwrap().body, b"<p>v2</p>");

    // (b) a new config
    Supervised::write_conf(&s.dir, s.addr.port(), 2222, "");
    let (code, out, err) = s.run(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log());
    assert_eq!(cache_control(&s), "public, max-age=2222");

    // (c) broken configs: one that does not load, one that loads but cannot start
    std::fs::write(s.conf(), "wxedge:\n  bogus: 1\n").unwrap();
    let (code, _, err) = s.run(&["reload"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown field `bogus`") && err.contains("not touched"),
        "{err}"
    );
    let needs_login = "  wechat:\n    scope: snsapi_base\n    compat_listen: 127.0.0.1:9\n";
    Supervised::write_conf(&s.dir, s.addr.port(), 3333, needs_login);
    let (code, _, err) = s.run(&["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("config check failed") && err.contains("compat_listen needs the login"),
        "{err}"
    );
    // ... and by SIGHUP: the reason goes to the supervisor's log
    std::fs::write(s.dir.join("dist/index.html"), "<p>v3</p>").unwrap();
    std::fs::rename(s.dir.join("dist"), s.dir.join("dist.away")).unwrap();
    Supervised::write_conf(&s.dir, s.addr.port(), 3333, "");
    let failures = s.log().matches("reload failed").count();
    assert!(Command::new("kill")
        .args(["-HUP", &supervisor.to_string()])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    while s.log().matches("reload failed").count() == failures {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log();
    let why = log.lines().rfind(|l| l.contains("reload failed")).unwrap();
    assert!(why.contains("is not a directory"), "{why}");
    assert_eq!(
        get(s.addr, "/").unwrap().body,
        b"<p>v2</p>",
        "the old server serves"
    );
    assert_eq!(cache_control(&s), "public, max-age=2222");

    // (d) fixed: the next reload goes through
    std::fs::rename(s.dir.join("dist.away"), s.dir.join("dist")).unwrap();
    let (code, out, err) = s.run(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log());
    assert_eq!(get(s.addr, "/").unwrap().body, b"<p>v3</p>");
    assert_eq!(cache_control(&s), "public, max-age=3333");

    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = load.finish();
    eprintln!("supervised reloads: {ok} ok, {failed} failed");
    assert!(ok > 300, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "requests failed across the reloads");
    assert_eq!(s.supervisor_pid(), supervisor, "the supervisor stays");
    assert!(s.child.0.try_wait().unwrap().is_none());

    // SIGTERM: a request in flight completes, then everything exits, status 0.
    let addr = s.addr;
    let inflight = std::thread::spawn(move || get(addr, "/api/slow?ms=1500"));
    std::thread::sleep(Duration::from_millis(400));
    assert!(Command::new("kill")
        .args(["-TERM", &supervisor.to_string()])
        .status()
        .unwrap()
        .success());
    let r = inflight
        .join()
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(r.status, 200);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.0.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(get(s.addr, "/").is_err(), "nothing listens any more");
    assert!(!s.pid_file().exists() && !s.dir.join("wxedge.ctl").exists());
    // Every server the supervisor started has exited (it waits for them).
    let log = s.log();
    let started = log.matches("] supervisor: server pid").count()
        + log.matches("] supervisor: new server pid").count();
    assert!(started >= 4, "{log}");
    assert!(!log.contains("exited on its own"), "{log}");
}

/// Outside a container: `wxedge supervise -d` returns at once and leaves the supervisor in the
/// background under the pid file; `wxedge reload` and SIGTERM through the pid file work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonized_supervisor_reloads_and_stops() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    tokio::task::spawn_blocking(move || {
        let mut s = Supervised::start(&["supervise", "-d"], &url);
        let status = s.child.0.wait().unwrap();
        assert!(status.success(), "{}", s.log());
        let daemon = s.supervisor_pid();
        assert!(daemon > 0 && daemon != s.child.0.id() && alive(daemon));
        std::fs::write(s.dir.join("dist/index.html"), "<p>v2</p>").unwrap();
        let (code, out, err) = s.run(&["reload"]);
        assert_eq!(code, 0, "{out}{err}\n{}", s.log());
        assert_eq!(get(s.addr, "/").unwrap().body, b"<p>v2</p>");
        assert_eq!(s.supervisor_pid(), daemon);
        assert!(Command::new("kill")
            .args(["-TERM", &daemon.to_string()])
            .status()
            .unwrap()
            .success());
        let t = Instant::now();
        while alive(daemon) {
            assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(get(s.addr, "/").is_err());
        assert!(!s.pid_file().exists());
    })
    .await
    .unwrap();
}

/// A server daemonized with `-d` still drains and exits at once on SIGTERM: the drain watcher
/// runs in the daemon, not in the parent that exits after the fork.
#[test]
fn daemonized_server_exits_as_soon_as_drained() {
    let dir = temp_dir("daemon");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let pid_file = dir.join("wxedge.pid");
    let (mut cmd, _) = command(
        &[
            ("WXEDGE_LISTEN", &listen),
            ("WXEDGE_PID_FILE", pid_file.to_str().unwrap()),
            ("WXEDGE_ACCESS_LOG", "off"),
        ],
        &["-d"],
    );
    // The daemon keeps stdout and stderr: pipes would stay open after the command returns.
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    assert!(cmd.status().unwrap().success());
    let addr = listen.parse().unwrap();
    let t = Instant::now();
    while get(addr, "/_wxedge/healthz").is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    while alive(pid) {
        // grace_period_seconds is 30: only the drain watcher ends it this soon.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon waited out the grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// As a container's PID 1, plain `wxedge -c conf` supervises itself: `wxedge reload` from
/// outside its PID namespace works (through the control socket), and SIGTERM ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_pid_1_the_edge_supervises_itself() {
    let pid_ns = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !pid_ns.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no PID namespace here (unshare needs root)");
        return;
    }
    let backend = Backend::start("b").await;
    let url = backend.url();
    tokio::task::spawn_blocking(move || {
        let unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];
        let mut s = Supervised::start_in(&unshare, &[], &url);
        assert_eq!(s.supervisor_pid(), 1, "{}", s.log());
        std::fs::write(s.dir.join("dist/index.html"), "<p>v2</p>").unwrap();
        let (code, out, err) = s.run(&["reload"]);
        assert_eq!(code, 0, "{out}{err}\n{}", s.log());
        assert_eq!(get(s.addr, "/").unwrap().body, b"<p>v2</p>");
        // PID 1 as the host sees it: unshare's child.
        let unshare_pid = s.child.0.id();
        let children = format!("/proc/{unshare_pid}/task/{unshare_pid}/children");
        let init = std::fs::read_to_string(children).unwrap();
        let init = init.split_whitespace().next().unwrap().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &init])
            .status()
            .unwrap()
            .success());
        let t = Instant::now();
        let status = loop {
            if let Some(st) = s.child.0.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "{}", s.log());
        assert!(s
            .log()
            .contains("supervisor: exiting with the server's status 0"));
    })
    .await
    .unwrap();
}

/// A renewed certificate (certbot replaced the files) is served after `wxedge reload`, over
/// HTTP/1.1 and HTTP/2 clients that keep coming meanwhile (none fails); a key that does not
/// belong to its certificate is refused with the file named, and the old one goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_renewed_certificate() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    tokio::task::spawn_blocking(move || renewed_certificate(&url))
        .await
        .unwrap();
}

/// Write a self-signed certificate for `a.test` whose subject names `generation`.
fn write_certificate(dir: &std::path::Path, generation: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, generation);
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

/// The organisation named in the certificate `https://a.test:<port>` presents (HTTP/2).
fn served_generation(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sSk",
            "-v",
            "--http2",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
        ])
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/_wxedge/healthz"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find(|l| l.contains("subject:"))
        .and_then(|l| l.split("O=").nth(1))
        .map(|o| o.split([',', ';']).next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| format!("no certificate: {err}"))
}

fn renewed_certificate(backend: &str) {
    let mut s = Supervised::start(&["supervise"], backend);
    let tls_port = free_port();
    write_certificate(&s.dir, "generation-1");
    let tls = format!(
        "  tls:\n    listen: [\"127.0.0.1:{tls_port}\"]\n    certificates: [{{cert: {d}/tls.pem, key: {d}/tls.key}}]\n",
        d = s.dir.display()
    );
    Supervised::write_conf(&s.dir, s.addr.port(), 1111, &tls);
    let (code, out, err) = s.run(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log());
    assert_eq!(served_generation(tls_port), "generation-1");

    // HTTPS clients throughout: HTTP/2 and HTTP/1.1, each request a new curl.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = ["--http2", "--http1.1"]
        .into_iter()
        .map(|proto| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = Command::new("curl")
                        .args(["-sSkf", proto, "-o", "/dev/null", "--max-time", "5"])
                        .args(["--resolve", &format!("a.test:{tls_port}:127.0.0.1")])
                        .arg(format!("https://a.test:{tls_port}/"))
                        .status()
                        .is_ok_and(|s| s.success());
                    let counter = if ok { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // certbot renews: new files at the same paths, then the reload.
    write_certificate(&s.dir, "generation-2");
    let (code, out, err) = s.run(&["reload"]);
    assert_eq!(code, 0, "{out}{err}\n{}", s.log());
    assert_eq!(served_generation(tls_port), "generation-2");

    // A key from another pair: refused, naming the files; generation 2 goes on.
    let other = temp_dir("other-key");
    write_certificate(&other, "stray");
    std::fs::copy(other.join("tls.key"), s.dir.join("tls.key")).unwrap();
    let (code, _, err) = s.run(&["reload"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("tls.pem") && err.contains("tls.key"), "{err}");
    assert_eq!(served_generation(tls_port), "generation-2");

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(done > 20, "{done} HTTPS requests made");
    assert_eq!(
        failed,
        0,
        "{failed} of {} HTTPS requests failed\n{}",
        done + failed,
        s.log()
    );
    s.child.0.kill().ok();
}
