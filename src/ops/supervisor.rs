//! `wxedge supervise`: a small parent that stays (PID 1 in a container, like nginx's master)
//! while the server process under it is replaced by Pingora's graceful upgrade.
//!
//! Reload (`wxedge reload`, or SIGHUP): run `wxedge -t` on the config; start a new server with
//! `-u`; once it listens on `upgrade_sock`, SIGQUIT the old one, which hands its listening
//! sockets over and drains. Any failure before that SIGQUIT leaves the old server serving.
//! Pingora 0.9.1 waits only about 6 s for the sockets on either side (it ignores
//! `upgrade_sock_connect_accept_max_retries`), so the SIGQUIT is sent the moment the new server
//! listens, which is read from the kernel's socket table: connecting to probe it would take the
//! one connection it accepts.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pingora::server::configuration::ServerConf;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{self, ProcessEnv};

/// How long `wxedge -t` may take (it loads the whole dist).
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new server may take to load and listen on `upgrade_sock`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// From SIGQUIT to the sockets taken: Pingora's own retries give up after about 6 s.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// Pingora's old server keeps accepting this long after sending its sockets (its fixed
/// CLOSE_TIMEOUT, 5 s): a reload is complete, every new connection meeting the new server,
/// once that is over.
const OLD_STOPS_ACCEPTING: Duration = Duration::from_millis(5500);
/// How long `wxedge reload` waits for the supervisor's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(180);

/// The supervisor's control socket, beside the pid file: `wxedge reload` talks to it.
fn control_path(server: &ServerConf) -> PathBuf {
    Path::new(&server.pid_file).with_extension("ctl")
}

/// `wxedge reload`: ask the running supervisor to reload and print its answer.
pub fn reload(server: &ServerConf) -> i32 {
    let path = control_path(server);
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&path)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        s.write_all(b"reload\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    match answer {
        Ok(a) => match a.trim().split_once(' ') {
            Some(("ok", msg)) => {
                println!("wxedge reload: {msg}");
                0
            }
            Some(("failed", msg)) => {
                eprintln!("wxedge reload: failed: {msg}");
                1
            }
            _ => {
                eprintln!("wxedge reload: no answer from the supervisor (see its log)");
                1
            }
        },
        Err(e) => {
            eprintln!(
                "wxedge reload: no supervisor at {} ({e}); is the edge running under `wxedge supervise` with this config?",
                path.display()
            );
            1
        }
    }
}

/// `wxedge supervise`: returns the exit code (the server's, when it ends).
pub fn run(conf: Option<&str>, server: &ServerConf, daemon: bool) -> i32 {
    match Supervisor::new(conf, server) {
        Ok(sup) => {
            if daemon {
                if let Err(e) = daemonize(server) {
                    eprintln!("wxedge supervise: cannot daemonize: {e}");
                    return 1;
                }
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(sup.run(!daemon)),
                Err(e) => {
                    eprintln!("wxedge supervise: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("wxedge supervise: {e}");
            2
        }
    }
}

/// Background like Pingora's `-d`: the pid file (locked), `error_log` for stderr, same directory.
fn daemonize(server: &ServerConf) -> Result<(), String> {
    let dir = match &server.working_directory {
        Some(d) => PathBuf::from(d),
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    let mut d = daemonix::Daemonize::new()
        .pid_file(&server.pid_file)
        .working_directory(dir)
        .umask(0o007);
    if let Some(log) = &server.error_log {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("error_log {log}: {e}"))?;
        d = d.stderr(f);
    } else {
        d = d
            .stdout(daemonix::Stdio::keep())
            .stderr(daemonix::Stdio::keep());
    }
    match d.execute() {
        // The daemon writes on; this exit only says whether the fork and setsid worked.
        daemonix::Outcome::Parent(Ok(p)) => {
            std::process::exit((p.first_child_exit_code != 0).into())
        }
        daemonix::Outcome::Parent(Err(e)) | daemonix::Outcome::Child(Err(e)) => Err(e.to_string()),
        daemonix::Outcome::Child(Ok(_)) => Ok(()),
    }
}

type Pid = libc::pid_t;

struct Signals {
    hup: Signal,
    chld: Signal,
    stop: StopSignals,
}

struct StopSignals {
    term: Signal,
    int: Signal,
    quit: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            chld: signal(SignalKind::child())?,
            stop: StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                quit: signal(SignalKind::quit())?,
            },
        })
    }
}

impl StopSignals {
    /// SIGTERM and SIGQUIT stop gracefully (a QUIT passed on would make the server wait for a
    /// successor that never comes), SIGINT stops at once: what the servers are sent.
    async fn recv(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.quit.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
        }
    }
}

struct Supervisor {
    /// The binary as it was started: a reload runs whatever is at this path now.
    exe: PathBuf,
    conf: Option<PathBuf>,
    pid_file: PathBuf,
    control: PathBuf,
    upgrade_sock: String,
    /// The server that serves (or will, once started).
    active: Pid,
    /// Every child not yet reaped: the active server, draining ones, a check or a new server.
    children: HashMap<Pid, &'static str>,
    /// Exit codes of reaped children that someone is waiting for.
    exited: HashMap<Pid, i32>,
    /// The signal sent to the servers, once stopping.
    stopping: Option<libc::c_int>,
}

impl Supervisor {
    fn new(conf: Option<&str>, server: &ServerConf) -> Result<Self, String> {
        if server.daemon {
            return Err("`daemon: true` in the config: the servers must stay under the supervisor; use `wxedge supervise -d` instead".into());
        }
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let conf = conf
            .map(|c| std::path::absolute(c).map_err(|e| format!("{c}: {e}")))
            .transpose()?;
        Ok(Supervisor {
            exe,
            conf,
            pid_file: PathBuf::from(&server.pid_file),
            control: control_path(server),
            upgrade_sock: server.upgrade_sock.clone(),
            active: 0,
            children: HashMap::new(),
            exited: HashMap::new(),
            stopping: None,
        })
    }

    async fn run(mut self, write_pid: bool) -> i32 {
        let (mut signals, listener) = match self.open(write_pid) {
            Ok(x) => x,
            Err(e) => {
                log::error!("supervisor: {e}");
                return 1;
            }
        };
        log::info!(
            "supervisor: pid {}; `wxedge reload` or SIGHUP reloads, SIGTERM stops",
            std::process::id()
        );
        let code = match self.spawn("server", &[]) {
            Ok(pid) => {
                self.active = pid;
                self.serve(&mut signals, &listener).await
            }
            Err(e) => {
                log::error!("supervisor: cannot start the server: {e}");
                1
            }
        };
        self.close();
        code
    }

    fn open(&self, write_pid: bool) -> Result<(Signals, UnixListener), String> {
        let signals = Signals::new().map_err(|e| format!("signal handlers: {e}"))?;
        if std::os::unix::net::UnixStream::connect(&self.control).is_ok() {
            return Err(format!(
                "another supervisor answers on {}",
                self.control.display()
            ));
        }
        let _ = std::fs::remove_file(&self.control);
        let listener = UnixListener::bind(&self.control)
            .map_err(|e| format!("control socket {}: {e}", self.control.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.control, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("control socket {}: {e}", self.control.display()))?;
        if write_pid {
            std::fs::write(&self.pid_file, format!("{}\n", std::process::id()))
                .map_err(|e| format!("pid_file {}: {e}", self.pid_file.display()))?;
        }
        Ok((signals, listener))
    }

    fn close(&self) {
        let _ = std::fs::remove_file(&self.control);
        let ours = std::fs::read_to_string(&self.pid_file)
            .is_ok_and(|p| p.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }

    /// Until the active server has exited and every other child is gone.
    async fn serve(&mut self, signals: &mut Signals, listener: &UnixListener) -> i32 {
        let mut code = None;
        loop {
            self.reap();
            if code.is_none() {
                if let Some(c) = self.exited.remove(&self.active) {
                    if self.stopping.is_none() {
                        log::error!("supervisor: the server exited on its own (status {c})");
                    }
                    code = Some(c);
                }
            }
            // Outside a reload nobody waits for the others' statuses (draining servers).
            self.exited.clear();
            if let Some(c) = code {
                if self.children.is_empty() {
                    log::info!("supervisor: exiting with the server's status {c}");
                    return c;
                }
            }
            tokio::select! {
                _ = signals.chld.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                sig = signals.stop.recv() => self.stop(sig),
                _ = signals.hup.recv() => {
                    log::info!("supervisor: SIGHUP, reloading");
                    let _ = self.reload(signals).await;
                }
                conn = listener.accept() => {
                    if let Ok((conn, _)) = conn {
                        self.answer(conn, signals).await;
                    }
                }
            }
        }
    }

    /// One request on the control socket: a line `reload`, answered `ok …` or `failed …`.
    async fn answer(&mut self, conn: UnixStream, signals: &mut Signals) {
        let mut conn = BufReader::new(conn);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_line(&mut line)).await;
        let answer = match (read, line.trim()) {
            (Ok(Ok(_)), "reload") => match self.reload(signals).await {
                Ok(msg) => format!("ok {msg}\n"),
                Err(e) => format!("failed {e}\n"),
            },
            _ => "failed unknown request (only `reload`)\n".to_string(),
        };
        let _ = conn.get_mut().write_all(answer.as_bytes()).await;
    }

    fn stop(&mut self, sig: libc::c_int) {
        log::info!(
            "supervisor: stopping: {} to the server processes",
            if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            }
        );
        self.stopping = Some(sig);
        for &pid in self.children.keys() {
            send(pid, sig);
        }
    }

    /// Reaps every exited child, adopted orphans included (as PID 1).
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a pointer to a local; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            if let Some(role) = self.children.remove(&pid) {
                log::info!("supervisor: {role} pid {pid} exited with status {code}");
                self.exited.insert(pid, code);
            }
        }
    }

    /// Starts this binary with the same config and these extra flags.
    fn spawn(&mut self, role: &'static str, flags: &[&str]) -> std::io::Result<Pid> {
        self.command(flags).spawn().map(|c| self.track(c, role))
    }

    fn command(&self, flags: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(c) = &self.conf {
            cmd.arg("-c").arg(c);
        }
        // Its own process group: a Ctrl-C or hangup on the terminal reaches only the supervisor.
        cmd.args(flags).stdin(Stdio::null()).process_group(0);
        // A supervisor killed outright takes its servers down gracefully, instead of leaving
        // them holding the ports against the next start.
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd
    }

    fn track(&mut self, child: std::process::Child, role: &'static str) -> Pid {
        // std's Child is only a handle: reap() collects the status.
        let pid = child.id() as Pid;
        self.children.insert(pid, role);
        log::info!("supervisor: {role} pid {pid} started");
        pid
    }

    /// Sleeps a little, reaps, and gives up if the supervisor was told to stop meanwhile.
    async fn pause(&mut self, signals: &mut Signals) -> Result<(), String> {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = signals.chld.recv() => {}
            sig = signals.stop.recv() => self.stop(sig),
        }
        self.reap();
        match self.stopping {
            Some(_) => Err("the supervisor is stopping".into()),
            None => Ok(()),
        }
    }

    async fn reload(&mut self, signals: &mut Signals) -> Result<String, String> {
        let result = self.replace(signals).await;
        match &result {
            Ok(msg) => log::info!("supervisor: reloaded: {msg}"),
            Err(e) => {
                log::error!("supervisor: reload failed, the running server keeps serving: {e}")
            }
        }
        result
    }

    async fn replace(&mut self, signals: &mut Signals) -> Result<String, String> {
        if self.stopping.is_some() || !self.children.contains_key(&self.active) {
            return Err("the supervisor is stopping".into());
        }
        self.check(signals).await?;
        self.same_upgrade_sock()?;
        // A fresh path: the new server's socket is the only one that can appear there.
        match std::fs::remove_file(&self.upgrade_sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("upgrade_sock {}: {e}", self.upgrade_sock)),
        }
        let new = self
            .spawn("new server", &["-u"])
            .map_err(|e| format!("cannot start a new server: {e}"))?;
        let started = Instant::now();
        while !listening(&self.upgrade_sock) {
            let waited = self.pause(signals).await;
            if let Some(code) = self.exited.remove(&new) {
                return Err(format!("the new server exited with status {code} before taking over (its log says why)"));
            }
            waited?;
            if started.elapsed() > START_TIMEOUT {
                send(new, libc::SIGKILL);
                return Err(format!(
                    "the new server did not listen on {} within {START_TIMEOUT:?}",
                    self.upgrade_sock
                ));
            }
        }
        let old = self.active;
        send(old, libc::SIGQUIT);
        // The new server closes the upgrade socket once it holds the listening sockets.
        let quit = Instant::now();
        while listening(&self.upgrade_sock) && quit.elapsed() < HANDOVER_TIMEOUT {
            let _ = self.pause(signals).await;
            if self.exited.contains_key(&new) {
                break;
            }
        }
        if let Some(code) = self.exited.remove(&new) {
            return Err(format!("the new server exited with status {code} while taking the sockets over from pid {old}, which now shuts down: the server must be restarted"));
        }
        if listening(&self.upgrade_sock) {
            return Err(format!(
                "pid {old} did not hand its sockets over within {HANDOVER_TIMEOUT:?} of SIGQUIT"
            ));
        }
        let took = started.elapsed();
        self.active = new;
        self.children.insert(new, "server");
        while quit.elapsed() < OLD_STOPS_ACCEPTING && self.children.contains_key(&old) {
            // Stopping now is fine: the new server serves and gets the signal too.
            let _ = self.pause(signals).await;
        }
        Ok(format!(
            "server pid {new} took over in {:.1} s; pid {old} no longer accepts, drains and exits",
            took.as_secs_f64()
        ))
    }

    /// `wxedge -t` on the config: loads everything a start loads.
    async fn check(&mut self, signals: &mut Signals) -> Result<(), String> {
        let mut child = self
            .command(&["-t"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the config check: {e}"))?;
        let stderr = child.stderr.take().map(drain);
        let stdout = child.stdout.take().map(drain);
        let pid = self.track(child, "config check");
        let started = Instant::now();
        let code = loop {
            let waited = self.pause(signals).await;
            if let Some(code) = self.exited.remove(&pid) {
                break code;
            }
            if waited.is_err() || started.elapsed() > CHECK_TIMEOUT {
                send(pid, libc::SIGKILL);
                return Err(waited
                    .err()
                    .unwrap_or_else(|| format!("the config check took over {CHECK_TIMEOUT:?}")));
            }
        };
        let text = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        let (err, out) = (text(stderr), text(stdout));
        if code == 0 {
            return Ok(());
        }
        let why = [err.trim(), out.trim()]
            .into_iter()
            .find(|t| !t.is_empty())
            .map(|t| t.lines().last().unwrap_or(t).to_string())
            .unwrap_or_else(|| format!("exit status {code}"));
        Err(format!("config check failed: {why}"))
    }

    /// The new server takes the sockets over at the running server's `upgrade_sock`.
    fn same_upgrade_sock(&self) -> Result<(), String> {
        let conf = self.conf.as_ref().map(|c| c.to_string_lossy().into_owned());
        let new = config::load(conf.as_deref(), &ProcessEnv)
            .map_err(|e| format!("config: {e}"))?
            .server
            .build();
        if new.daemon {
            return Err(
                "`daemon: true` in the config: the servers must stay under the supervisor".into(),
            );
        }
        if new.upgrade_sock != self.upgrade_sock {
            return Err(format!(
                "upgrade_sock changed from {} to {}: a reload hands the sockets over on the running server's; restart to change it",
                self.upgrade_sock, new.upgrade_sock
            ));
        }
        Ok(())
    }
}

/// Reads a child's pipe to the end on a thread of its own (a full pipe would block the child).
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn send(pid: Pid, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of our own child; errors (already gone) are harmless.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a socket listens at `path`, from the kernel's table of unix sockets.
fn listening(path: &str) -> bool {
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|table| listening_in(&table, path))
}

fn listening_in(table: &str, path: &str) -> bool {
    const ACCEPTING: u32 = 0x10000; // __SO_ACCEPTCON: listen() was called
    table.lines().skip(1).any(|line| {
        let flags = line.split_whitespace().nth(3);
        let flags = flags.and_then(|f| u32::from_str_radix(f, 16).ok());
        flags.is_some_and(|f| f & ACCEPTING != 0)
            && line
                .strip_suffix(path)
                .is_some_and(|rest| rest.ends_with(' '))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_is_read_from_the_socket_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01  4242 /tmp/a/upgrade.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 01  4243 /tmp/b/upgrade.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03  4244\n";
        assert!(listening_in(table, "/tmp/a/upgrade.sock"));
        // bound but not listening yet
        assert!(!listening_in(table, "/tmp/b/upgrade.sock"));
        assert!(!listening_in(table, "a/upgrade.sock"));
        assert!(!listening_in(table, "/tmp/c/upgrade.sock"));
    }

    #[test]
    fn control_socket_sits_beside_the_pid_file() {
        let conf = ServerConf {
            pid_file: "/run/wxedge/wxedge.pid".into(),
            ..Default::default()
        };
        assert_eq!(control_path(&conf), Path::new("/run/wxedge/wxedge.ctl"));
    }
}
