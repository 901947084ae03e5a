//! nginx (Debian's `/usr/sbin/nginx`) as a reference server: the uni-app H5 site of
//! bench/nginx-site.conf.in (the fixture dist with `try_files`, `/api/` proxied), run by a test
//! from a temporary directory in the foreground, single process, and stopped when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{fixture_dist, free_port, temp_dir};

/// A running nginx; killed when dropped.
pub struct Nginx {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// The nginx binary, if one is installed.
    pub fn binary() -> Option<PathBuf> {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        if sbin.is_file() {
            return Some(sbin);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nginx"))
                .find(|p| p.is_file())
        })
    }

    /// Start nginx serving the fixture dist and proxying `/api/` to `127.0.0.1:backend_port`.
    ///
    /// Besides the bench site, `proxy_set_header X-WX-OpenID ""` clears the identity header a
    /// client may send, as a careful nginx in front of a backend trusting it would.
    pub fn start(backend_port: u16) -> Result<Nginx, String> {
        let bin = Nginx::binary().ok_or("nginx is not installed")?;
        let dir = temp_dir("nginx");
        let port = free_port();
        let tmp = dir.display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    server_tokens off;

    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen 127.0.0.1:{port};
        server_name _;
        root {root};
        index index.html;
        client_max_body_size 10m;

        location / {{
            try_files $uri $uri/ /index.html;
        }}
        location /api/ {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-WX-OpenID "";
        }}
    }}
}}
"#,
            root = fixture_dist().display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run nginx: {e}"))?;
        let mut nginx = Nginx { port, dir, child };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("nginx exited ({status}): {}", nginx.error_log()));
            }
            if TcpStream::connect_timeout(&nginx.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("nginx did not listen: {}", nginx.error_log()))
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
