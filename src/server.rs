//! Process start-up: command line, configuration, the dist, then Pingora's server with the
//! public listener(s) and the metrics listener.

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;
use pingora::server::Server;

use crate::auth::Auth;
use crate::config::{self, Config, ProcessEnv};
use crate::ops::metrics_listener::MetricsEndpoint;
use crate::site::Site;
use crate::static_files::{StaticSite, Tree};

/// Pingora's own flags (`-c`, `-t`, `-d`, `-u`) plus wxedge's subcommands.
#[derive(Parser, Debug)]
#[command(
    name = "wxedge",
    version,
    about = "The edge for WeChat H5 sites: static dist, WeChat OAuth, API proxy"
)]
pub struct Cli {
    #[command(flatten)]
    pub opt: Opt,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Exit 0 when the running edge answers /_wxedge/healthz (for container HEALTHCHECKs).
    Healthcheck,
    /// Run the edge under a parent that stays (PID 1 in a container) and reloads it on SIGHUP.
    Supervise {
        #[command(flatten)]
        target: Target,
        /// Run in the background (pid_file, error_log as for Pingora's -d).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Make the running supervisor pick up the config, certificates, dist and binary anew.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Write gzip and br twins beside the dist's text files ahead of time (at image build time),
    /// with a manifest the edge checks them against; run again, it redoes only what changed.
    Compress {
        /// The dist folder (default: the configured dist)
        dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

/// `-c` after the subcommand, as ops type it (`wxedge reload -c conf`).
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The YAML config file (the same as the running edge's)
    #[arg(short, long)]
    pub conf: Option<String>,
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}

/// One-line summary of what will be served: for `-t` and the start-up log.
fn describe(config: &Config, site: &StaticSite, auth: &Auth) -> Vec<String> {
    let mut lines = vec![
        format!("config: {}", config.source),
        format!(
            "listen: {}",
            config
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        describe_dist(config, site),
    ];
    describe_https(config, &mut lines);
    describe_static_work(&site.tree, &mut lines);
    describe_proxy(config, &mut lines);
    lines.extend(auth.describe());
    if let Some(m) = config.metrics_listen {
        lines.push(format!("metrics: http://{m}/metrics"));
    }
    if let Some(c) = config.compat_listen {
        lines.push(format!(
            "wechat-compatible code exchange for backends: http://{c}/sns/oauth2/access_token"
        ));
    }
    lines
}

/// The dist as loaded: files, memory, disk, load time, and whether index.html is there.
fn describe_dist(config: &Config, site: &StaticSite) -> String {
    let t = &site.tree;
    format!(
        "dist: {} ({} files, {} KiB in memory, {} on disk, read in {} ms, index.html {})",
        config.settings.dist.display(),
        t.files.len(),
        t.memory_bytes.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        t.disk_files,
        t.load_time.as_millis(),
        if site.has_index() {
            "present"
        } else {
            "MISSING"
        }
    )
}

/// The HTTPS listeners and their certificates, and the redirect-to-HTTPS listeners.
fn describe_https(config: &Config, lines: &mut Vec<String>) {
    if let Some(h) = &config.https {
        let addrs: Vec<String> = h
            .listen
            .iter()
            .map(|a| a.to_string())
            .chain(
                h.listen_proxy_protocol
                    .iter()
                    .map(|a| format!("{a} (PROXY protocol)")),
            )
            .collect();
        lines.push(format!(
            "https: {} (TLS 1.2/1.3, ALPN {}{})",
            addrs.join(", "),
            if h.tls.http2 {
                "h2, http/1.1"
            } else {
                "http/1.1"
            },
            if config.settings.tls.hsts.is_empty() {
                String::new()
            } else {
                format!(", HSTS `{}`", config.settings.tls.hsts)
            }
        ));
        let now = crate::ops::clock::unix_secs() as i64;
        for (i, c) in h.tls.certificates.iter().enumerate() {
            let days = c.days_left(now);
            lines.push(format!(
                "certificate: {} for {}{} (expires {}, {})",
                c.files.cert,
                c.names.join(", "),
                if i == 0 { ", and any other name" } else { "" },
                c.not_after,
                match days {
                    d if d < 0 => "EXPIRED".to_string(),
                    1 => "1 day left".to_string(),
                    d => format!("{d} days left"),
                }
            ));
        }
    }
    if !config.redirect_listen.is_empty() {
        let addrs: Vec<String> = config
            .redirect_listen
            .iter()
            .map(|a| a.to_string())
            .collect();
        lines.push(format!(
            "redirect to https: {} (except /MP_verify_*.txt and /.well-known/acme-challenge/)",
            addrs.join(", ")
        ));
    }
}

/// What the dist still gets in the background (compression), and the verify files served.
fn describe_static_work(t: &Tree, lines: &mut Vec<String>) {
    let (_, to_compress) = t.compression_progress();
    if to_compress > 0 {
        lines.push(format!(
            "dist: {to_compress} text files get gzip and br variants in the background (served as they are meanwhile)"
        ));
    }
    if let Some(cache) = &t.cache {
        use std::sync::atomic::Ordering::Relaxed;
        lines.push(format!(
            "compress_cache: {} ({} variants found, {} to make)",
            cache.dir.display(),
            cache.hits.load(Relaxed),
            cache.misses.load(Relaxed)
        ));
    }
    if t.mp_verify.is_empty() {
        lines.push(
            "mp_verify: none (set WX_MP_VERIFY=token to serve /MP_verify_<token>.txt)".into(),
        );
    }
    for (path, from) in &t.mp_verify {
        lines.push(format!("mp_verify: {path} (from {from})"));
    }
}

/// The proxied prefixes, their backends and the backends' health checks.
fn describe_proxy(config: &Config, lines: &mut Vec<String>) {
    let backends: Vec<&str> = config
        .backends
        .iter()
        .map(|b| b.authority.as_str())
        .collect();
    lines.push(format!(
        "proxy: {} -> {}",
        config.settings.proxy.prefixes.join(", "),
        if backends.is_empty() {
            "no backend (502)".to_string()
        } else {
            backends.join(", ")
        }
    ));
    let hc = &config.settings.proxy.health_check;
    if !backends.is_empty() && hc.interval_ms > 0 {
        lines.push(format!(
            "proxy: health checks every {} ms ({}), out after {} failed, back after {} passed",
            hc.interval_ms,
            if hc.path.is_empty() {
                "TCP connect".to_string()
            } else {
                format!("GET {}", hc.path)
            },
            hc.fails,
            hc.passes
        ));
    }
}

fn healthcheck(config: &Config) -> i32 {
    use std::io::{Read, Write};
    let addr = config.loopback_addr();
    let timeout = std::time::Duration::from_secs(3);
    let result = (|| -> std::io::Result<bool> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(
            b"GET /_wxedge/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    })();
    match result {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("wxedge healthcheck: {addr} answered, but not 200");
            1
        }
        Err(e) => {
            eprintln!("wxedge healthcheck: {addr}: {e}");
            1
        }
    }
}

/// glibc keeps one malloc arena per thread and holds on to freed pages: cap the arenas (the
/// request path allocates little and briefly) and give back what loading and compressing the
/// dist used (bench/RESULTS.md: the arena cap alone took peak RSS from 23 to 19 MiB, same req/s).
/// A fixed mmap threshold: glibc's own rises to 32 MiB after the first large free, and from
/// then on the compressor's buffers (8 MiB and more per file) came from the heap, where they
/// stayed and fragmented it (bench/startup.py: the RSS peak grew past the encoder's own).
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain libc calls with constant arguments, made before any worker thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::malloc_trim(0);
    }
}

/// The dist's work left for after the listener opens, at the lowest CPU priority: the copies
/// of large bodies for `sendfile(2)`, then the compressed variants (a Pingora background
/// service: it runs in the serving process, after any `-d` fork).
struct Compressor(Site);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Compressor {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let edge = self.0.clone();
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            // SAFETY: setpriority on this thread (tid) only, with constant arguments.
            #[cfg(target_os = "linux")]
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            }
            let tree = &edge.dist.tree;
            tree.make_sendfile_copies();
            tree.compress_pending();
            let files = tree.compression_progress().1;
            if files > 0 {
                log::info!(
                    "dist: compressed variants of {files} files ready after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            let removed = tree.prune_cache();
            if let Some(cache) = &tree.cache {
                if files > 0 || removed > 0 {
                    log::info!(
                        "compress_cache: {} variants kept in {} for the next start, {removed} entries unused for a day removed",
                        cache.writes.load(std::sync::atomic::Ordering::Relaxed),
                        cache.dir.display()
                    );
                }
            }
        });
        let _ = work.await;
    }
}

/// The process environment, with `WXEDGE_DIST` replaced when `compress DIR` names the dist.
struct DistOverride {
    dist: Option<String>,
}

impl config::EnvSource for DistOverride {
    fn var(&self, name: &str) -> Option<String> {
        match (&self.dist, name) {
            (Some(d), "WXEDGE_DIST") => Some(d.clone()),
            _ => config::EnvSource::var(&ProcessEnv, name),
        }
    }
}

/// `wxedge compress`: exit 0 when every twin is written or current, 1 when some failed.
fn compress(config: &Config) -> i32 {
    let started = std::time::Instant::now();
    match crate::static_files::precompress::run(
        &config.settings.dist,
        &config.settings.static_files,
    ) {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            println!("compress: {:.1} s", started.elapsed().as_secs_f64());
            i32::from(!report.failed.is_empty())
        }
        Err(e) => {
            eprintln!("wxedge compress: {e}");
            1
        }
    }
}

/// Returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    init_logging();
    let mut opt = cli.opt;
    if let Some(
        Command::Supervise { target, .. }
        | Command::Reload { target }
        | Command::Compress { target, .. },
    ) = &cli.command
    {
        opt.conf = target.conf.clone().or(opt.conf);
    }
    let config = match load_config(&opt, cli.command.as_ref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(code) = run_command(cli.command.as_ref(), &opt, &config) {
        return code;
    }
    let (site, auth, compat) = match load_parts(&config) {
        Ok(parts) => parts,
        Err(code) => return code,
    };
    release_startup_memory();
    let (soft, hard) = crate::ops::limits::raise_open_files();
    let max_connections =
        crate::ops::limits::set_max_connections(config.settings.ops.max_connections, soft);
    let mut summary = describe(&config, &site, &auth);
    summary.push(format!(
        "connections: at most {max_connections} (open files: soft limit {soft}, hard limit {hard})"
    ));
    // Everything that can refuse a start happens above: `-t` (and so a reload's check) too.
    if opt.test {
        for line in &summary {
            println!("{line}");
        }
        println!("configuration OK");
        return 0;
    }
    for line in &summary {
        log::info!("{line}");
    }
    // The file was read here already; Pingora must not read it again as its own.
    opt.conf = None;
    let mut server = Server::new_with_opt_and_conf(opt, config.server.build());
    server.bootstrap();
    server.add_service(crate::ops::lifecycle::service(&server));
    add_private_listeners(&mut server, &config, compat, &auth);
    let edge = Site::new(&config, site, auth);
    add_edge(&mut server, &config, edge);
    server.run_forever();
}

/// The configuration, or the exit code after saying why it does not load.
fn load_config(opt: &Opt, command: Option<&Command>) -> Result<Config, i32> {
    // `compress DIR` works on DIR whatever the configured dist (which may not exist at build time).
    let env = DistOverride {
        dist: match command {
            Some(Command::Compress { dir: Some(d), .. }) => Some(d.display().to_string()),
            _ => None,
        },
    };
    match config::load(opt.conf.as_deref(), &env) {
        Ok(c) => Ok(c),
        // As `nginx -s reload`: a config that does not load is not sent to the running edge.
        Err(e) if matches!(command, Some(Command::Reload { .. })) => {
            eprintln!("wxedge reload: configuration error: {e} (the running edge was not touched)");
            Err(2)
        }
        Err(e) => {
            eprintln!("wxedge: configuration error: {e}");
            Err(2)
        }
    }
}

/// Carries out a subcommand (or supervision as PID 1) and returns its exit code; `None`: serve.
fn run_command(command: Option<&Command>, opt: &Opt, config: &Config) -> Option<i32> {
    use crate::ops::supervisor;
    match command {
        Some(Command::Healthcheck) => Some(healthcheck(config)),
        Some(Command::Compress { .. }) => Some(compress(config)),
        Some(Command::Reload { .. }) => Some(supervisor::reload(&config.server.build())),
        Some(Command::Supervise { daemon, .. }) => {
            let conf = opt.conf.as_deref();
            Some(supervisor::run(
                conf,
                &config.server.build(),
                *daemon || opt.daemon,
            ))
        }
        // As PID 1 (a container's command) the edge supervises itself, or it could not reload.
        None if std::process::id() == 1 && !(opt.test || opt.upgrade || opt.daemon) => Some(
            supervisor::run(opt.conf.as_deref(), &config.server.build(), false),
        ),
        None => None,
    }
}

/// The compat endpoint's address, and the endpoint.
type CompatParts = (std::net::SocketAddr, crate::auth::compat::CompatEndpoint);

/// What serving needs beyond the configuration: the dist, the login, the compat endpoint's
/// parts, and the access log opened; or the exit code after saying what failed.
fn load_parts(config: &Config) -> Result<(StaticSite, Auth, Option<CompatParts>), i32> {
    let site = match StaticSite::load(
        &config.settings.dist,
        &config.settings.static_files,
        &config.settings.mp_verify,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wxedge: {e}");
            return Err(2);
        }
    };
    let auth = match Auth::from_config(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wxedge: configuration error: {e}");
            return Err(2);
        }
    };
    let compat = match config.compat_listen {
        Some(addr) => match auth.compat_endpoint() {
            Some(parts) => Some((addr, parts)),
            None => {
                eprintln!("wxedge: configuration error: wechat.compat_listen needs the login at the edge (WXEDGE_WECHAT_LOGIN)");
                return Err(2);
            }
        },
        None => None,
    };
    // The writer thread itself starts with the first line, in the process that serves.
    if config.settings.ops.access_log != "off" {
        let path = &config.settings.ops.access_log_path;
        let path = (!path.is_empty()).then(|| std::path::Path::new(path));
        if let Err(e) = crate::ops::access_log::init(path) {
            eprintln!("wxedge: ops.access_log_path: {e}");
            return Err(2);
        }
    }
    Ok((site, auth, compat))
}

/// The WeChat-compatible code exchange and the metrics listener, when configured.
fn add_private_listeners(
    server: &mut Server,
    config: &Config,
    compat: Option<CompatParts>,
    auth: &Auth,
) {
    if let Some((addr, compat)) = compat {
        let mut svc = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            compat,
            "wxedge-wechat-compat",
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    if let Some(addr) = config.metrics_listen {
        let mut metrics = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            MetricsEndpoint {
                public_ports: config.public_listeners().map(|a| a.port()).collect(),
                revocations: auth.revocations(),
            },
            "wxedge-metrics",
        );
        metrics.add_tcp(&addr.to_string());
        server.add_service(metrics);
    }
}

/// The site's background work (health checks, compression) and the public listeners.
fn add_edge(server: &mut Server, config: &Config, edge: Site) {
    if let Some(checks) = edge.upstreams.health_check_service() {
        server.add_service(checks);
    }
    server.add_service(pingora::services::background::background_service(
        "compress",
        Compressor(edge.clone()),
    ));
    // The front door answers the common requests itself and hands the rest to Pingora's proxy.
    let front = crate::front::Front::new(edge, &server.configuration);
    let mut public = pingora::services::listening::Service::new("wxedge".to_string(), front);
    // Plain, PROXY-protocol, HTTPS and redirect listeners alike: the front door tells them
    // apart by the address a connection arrived at.
    for addr in config.public_listeners() {
        // No buffers under the front door, which reads into its own buffer and writes whole
        // answers: one copy less per request, and no 64 KiB + 1.4 KiB per idle connection.
        use pingora::listeners::{L4BufferSettings, ListenerConfig};
        let buffers = L4BufferSettings::unbuffered();
        public.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    server.add_service(public);
}
