//! Debian's `redis-server`, run by a test on a free loopback port from a temporary directory
//! (no persistence), killable and restartable on the same port; stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, temp_dir};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// The `redis-server` binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        })
    }

    /// A fresh server; `None` (the test is skipped, with a line saying so) when redis-server is
    /// not installed, except under CI (`CI` set), where that is a failure: `.ci/run` installs it.
    pub fn start() -> Option<RedisServer> {
        if RedisServer::binary().is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed: .ci/run installs it (apt-get install redis-server)");
            }
            eprintln!("redis-server is not installed: this test is skipped (apt-get install redis-server; CI installs it)");
            return None;
        }
        let mut r = RedisServer {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start it (again, on the same port) and wait until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let child = Command::new(RedisServer::binary().unwrap())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.cmd(&["PING"]).is_ok_and(|a| a == "+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer on port {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command in RESP; the answer as text (RESP framing kept).
    pub fn cmd(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while resp_len(&out).is_none() {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&out).trim_end().to_string())
    }

    /// The keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let text = self.cmd(&["KEYS", pattern]).unwrap();
        // *N, then $len / key pairs.
        text.lines()
            .skip(1)
            .filter(|l| !l.starts_with('$'))
            .map(str::to_string)
            .collect()
    }
}

/// Length of the complete RESP value at the start of `b`, if it is all there.
fn resp_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&b[1..line_end]).ok()?;
    let after = line_end + 2;
    match b.first()? {
        b'+' | b'-' | b':' => Some(after),
        b'$' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' => {
            let n: i64 = head.parse().ok()?;
            let mut at = after;
            for _ in 0..n.max(0) {
                at += resp_len(&b[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
