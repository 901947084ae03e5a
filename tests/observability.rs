//! The alert rules (`deploy/prometheus/wxedge-alerts.yml`) and the Grafana dashboard
//! (`deploy/grafana/wxedge-dashboard.json`) against a real Prometheus (Debian's `prometheus`)
//! scraping a running edge under a little traffic (static files, API calls with one backend dead,
//! a sandbox login, a JS-SDK signature, HTTPS with a certificate): every dashboard query returns
//! series, every alert expression is valid and every metric it names has series, and Prometheus
//! evaluates every rule without error. Neither file can silently refer to a metric that does not
//! exist. Skipped with a line when `prometheus` is not installed, except under CI.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> Option<PathBuf> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn start_prometheus(bin: &Path, target: SocketAddr, dir: &Path) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: wxedge\n    static_configs:\n      - targets: [\"{target}\"]\n",
            repo("deploy/prometheus/wxedge-alerts.yml").display()
        ),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus");
    Prometheus { child, addr }
}

/// `GET path` on Prometheus's API; the JSON answer.
fn api(p: &Prometheus, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
    match raw(p.addr, req.as_bytes()) {
        Ok(r) => serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

fn query(p: &Prometheus, expr: &str) -> serde_json::Value {
    let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
    api(p, &format!("/api/v1/query?query={q}"))
}

fn get(addr: SocketAddr, target: &str, extra: &str) -> RawResponse {
    let req = format!("GET {target} HTTP/1.1\r\nHost: h5.test\r\n{extra}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).unwrap()
}

#[test]
fn every_alert_and_dashboard_query_finds_its_series_in_a_real_prometheus() {
    let Some(bin) = prometheus_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("prometheus is not installed: .ci/run installs it (apt-get install prometheus)");
        }
        eprintln!("prometheus is not installed: this test is skipped (apt-get install prometheus; CI installs it)");
        return;
    };
    let dir = temp_dir("observability");
    let (cert, key, _) = self_signed_certificate(&dir, "h5.test");
    let backend = tokio::runtime::Runtime::new().unwrap();
    let live = backend.block_on(Backend::start("b"));
    let dead = format!("http://127.0.0.1:{}", free_port());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let backends = format!("{},{dead}", live.url());
    let edge = start_edge(&[
        ("WXEDGE_BACKEND", &backends),
        ("WXEDGE_METRICS_LISTEN", &metrics.to_string()),
        ("WXEDGE_TLS_LISTEN", &tls.to_string()),
        ("WXEDGE_TLS_CERT", &cert),
        ("WXEDGE_TLS_KEY", &key),
    ]);
    let addr = edge.addr();
    // A little of everything the dashboard shows.
    let traffic = || {
        assert_eq!(get(addr, "/index.html", "").status, 200);
        assert_eq!(
            get(addr, "/missing.js", "Accept: application/json\r\n").status,
            404
        );
        for _ in 0..4 {
            let _ = get(addr, "/api/ping", "");
        }
        let login = get(
            addr,
            &format!("/pages/index/index?code=auto-alice-{}&state=S", free_port()),
            "Accept: text/html\r\n",
        );
        assert_eq!(login.status, 200, "{}", login.text());
        let sign = get(
            addr,
            "/_wxedge/jssdk/config?url=http%3A%2F%2Fh5.test%2F",
            "",
        );
        assert_eq!(sign.status, 200, "{}", sign.text());
    };
    traffic();
    let prom = start_prometheus(&bin, metrics, &dir);
    let started = Instant::now();
    loop {
        let up = query(&prom, "up{job=\"wxedge\"}");
        let scraped = up["data"]["result"][0]["value"][1] == "1";
        if scraped {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus never scraped the edge: {up}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Enough scrapes for rate() and increase(), with traffic between them.
    for _ in 0..3 {
        traffic();
        std::thread::sleep(Duration::from_millis(1100));
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/wxedge-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let v = query(&prom, expr);
            assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(series > 0, "{}: `{expr}` returns no series", panel["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 14, "{checked} dashboard queries");

    let rules = std::fs::read_to_string(repo("deploy/prometheus/wxedge-alerts.yml")).unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("wxedge_"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        let v = query(&prom, &format!("count({name})"));
        let count = v["data"]["result"][0]["value"][1].as_str().unwrap_or("0");
        assert!(
            count != "0",
            "alert rules name {name}, which the edge does not export: {v}"
        );
    }
    // Prometheus loaded and evaluated every rule without error.
    let v = api(&prom, "/api/v1/rules");
    let groups = v["data"]["groups"].as_array().expect("rule groups");
    let rules: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .collect();
    assert!(rules.len() >= 10, "{v}");
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
        let expr = r["query"].as_str().unwrap();
        assert_eq!(query(&prom, expr)["status"], "success", "{expr}");
    }
    drop(edge);
}
