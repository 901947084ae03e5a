//! HTTPS at the edge: certificates chosen by SNI, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//!
//! rustls (with ring, the provider Pingora's `rustls` feature builds) instead of OpenSSL: no
//! system library to build against or ship in the image, memory-safe parsing of what every
//! client sends first, and the same TLS stack the edge already uses to call WeChat. The front
//! door does the handshake itself (after a PROXY protocol header, when the listener takes one)
//! with an acceptor made here from the certificate files; loading them is part of loading the
//! configuration, so `wxedge -t` and a reload refuse an unreadable or mismatched certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One certificate chain and its key, as PEM files (certbot's `fullchain.pem`, `privkey.pem`).
#[derive(Debug, Clone, serde::Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: String,
    pub key: String,
}

/// A loaded certificate: the names it is chosen for, and when it expires.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub files: CertificateFiles,
    /// DNS names from its subjectAltName (or its CN when it has none); `*.` for wildcards.
    pub names: Vec<String>,
    pub not_after: String,
    /// `not_after` in Unix seconds.
    pub expires: i64,
}

impl LoadedCertificate {
    /// The name it is known by in metrics and logs: its first DNS name.
    pub fn name(&self) -> &str {
        self.names
            .first()
            .map_or(self.files.cert.as_str(), String::as_str)
    }

    /// Whole days until it expires (negative once it has).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.expires - now).div_euclid(86_400)
    }
}

/// Days before expiry at which the log warns (once each), as ops calendars do.
const WARN_AT_DAYS: [i64; 3] = [30, 14, 7];
/// Under this many days left, readiness names the certificate.
pub const READY_DETAIL_DAYS: i64 = 14;

/// Watch the certificates' expiry in the serving process: the gauge
/// `wxedge_tls_certificate_expiry_seconds{name}` set on every scrape, and a warning in the log
/// when one comes within 30, 14 and 7 days of its end (checked hourly; an expired one is an
/// error line every day). Started once, with the first connection (after any daemonizing fork).
pub fn watch_expiry(certificates: &[LoadedCertificate]) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let certs: Vec<LoadedCertificate> = certificates.to_vec();
    ONCE.call_once(move || {
        let for_metrics = certs.clone();
        crate::ops::metrics::refresh_on_scrape(move || {
            let now = crate::ops::clock::unix_secs() as i64;
            for c in &for_metrics {
                crate::ops::metrics::METRICS
                    .tls_certificate_expiry
                    .with_label_values(&[c.name()])
                    .set(c.expires - now);
            }
            true
        });
        let _ = std::thread::Builder::new()
            .name("wxedge-cert-expiry".into())
            .spawn(move || {
                let mut warned: Vec<Option<i64>> = vec![None; certs.len()];
                loop {
                    let now = crate::ops::clock::unix_secs() as i64;
                    for (c, last) in certs.iter().zip(warned.iter_mut()) {
                        if let Some(line) = expiry_warning(c, now, last) {
                            log::warn!("{line}");
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            });
    });
}

/// The warning due for `c` now, if any; `last` remembers the threshold last warned for.
fn expiry_warning(c: &LoadedCertificate, now: i64, last: &mut Option<i64>) -> Option<String> {
    let days = c.days_left(now);
    let what = format!("tls: certificate {} ({})", c.files.cert, c.names.join(", "));
    if days < 0 {
        // Every day, not every check.
        let day = now.div_euclid(86_400);
        if *last == Some(-day) {
            return None;
        }
        *last = Some(-day);
        return Some(format!(
            "{what} EXPIRED on {}: browsers refuse this site; replace it and run wxedge reload",
            c.not_after
        ));
    }
    let threshold = WARN_AT_DAYS.iter().copied().filter(|&t| days < t).min()?;
    if last.is_some_and(|l| l <= threshold) {
        return None;
    }
    *last = Some(threshold);
    Some(format!(
        "{what} expires in {days} days ({}): renew it and run wxedge reload",
        c.not_after
    ))
}

/// The certificates by the names clients ask for (SNI); the first one for clients that name
/// none or a name no certificate has (nginx's default server).
#[derive(Debug)]
struct ByName {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` as `example.com`: one label deep, as browsers match wildcards.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        };
        Some(
            self.exact
                .get(&name)
                .or_else(wildcard)
                .unwrap_or(&self.default)
                .clone(),
        )
    }
}

/// The HTTPS side of the edge, ready to accept.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: Arc<Acceptor>,
    pub certificates: Vec<LoadedCertificate>,
    pub http2: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.certificates)
            .field("http2", &self.http2)
            .finish()
    }
}

impl Tls {
    /// Read every certificate and key and check each pair belongs together.
    pub fn load(files: &[CertificateFiles], http2: bool) -> Result<Tls, String> {
        if files.is_empty() {
            return Err("tls.certificates: HTTPS listeners need at least one certificate".into());
        }
        let provider = Arc::new(provider::default_provider());
        let mut certificates = Vec::new();
        let mut keys = Vec::new();
        for f in files {
            let (key, loaded) = load_pair(f, &provider)?;
            keys.push(key);
            certificates.push(loaded);
        }
        let mut by_name = ByName {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: keys[0].clone(),
        };
        // The first certificate listed wins a name two of them carry.
        for (loaded, key) in certificates.iter().zip(&keys) {
            for name in &loaded.names {
                match name.strip_prefix("*.") {
                    Some(parent) => by_name.wildcard.entry(parent.to_string()),
                    None => by_name.exact.entry(name.clone()),
                }
                .or_insert_with(|| key.clone());
            }
        }
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(by_name));
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        // Resumption without a full handshake: tickets (keys rotated by rustls every 6 hours)
        // and the default in-memory session cache, as nginx's defaults resume.
        config.ticketer = provider::Ticketer::new().map_err(|e| format!("tls: tickets: {e}"))?;
        Ok(Tls {
            acceptor: Arc::new(Acceptor::from_server_config(Arc::new(config))),
            certificates,
            http2,
        })
    }
}

fn load_pair(
    f: &CertificateFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, LoadedCertificate), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
        .map_err(|e| format!("tls: certificate {}: {e}", f.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls: certificate {}: {e}", f.cert))?;
    if chain.is_empty() {
        return Err(format!(
            "tls: certificate {}: no PEM certificate in it",
            f.cert
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&f.key).map_err(|e| format!("tls: key {}: {e}", f.key))?;
    let (names, not_after, expires) =
        names_of(&chain[0]).map_err(|e| format!("tls: {}: {e}", f.cert))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("tls: {} with {}: {e}", f.cert, f.key))?;
    Ok((
        Arc::new(certified),
        LoadedCertificate {
            files: f.clone(),
            names,
            not_after,
            expires,
        },
    ))
}

/// The DNS names a certificate is valid for, lower case, and its expiry (as text, and in Unix
/// seconds).
fn names_of(cert: &CertificateDer<'_>) -> Result<(Vec<String>, String, i64), String> {
    use x509_parser::prelude::*;
    let (_, x509) =
        X509Certificate::from_der(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let not_after = x509
        .validity()
        .not_after
        .to_rfc2822()
        .unwrap_or_else(|_| x509.validity().not_after.to_string());
    Ok((names, not_after, x509.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str, names: &[&str]) -> CertificateFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{name}.pem")).display().to_string(),
            key: dir.join(format!("{name}.key")).display().to_string(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wxedge-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn expiry_warns_once_per_threshold_then_daily_once_expired() {
        let day = 86_400;
        let now = 1_800_000_000;
        let cert = |days: i64| LoadedCertificate {
            files: CertificateFiles {
                cert: "/etc/wxedge/fullchain.pem".into(),
                key: "k".into(),
            },
            names: vec!["h5.example.com".into()],
            not_after: "later".into(),
            expires: now + days * day + 3600,
        };
        let mut last = None;
        assert_eq!(expiry_warning(&cert(45), now, &mut last), None);
        let w = expiry_warning(&cert(29), now, &mut last).unwrap();
        assert!(
            w.contains("expires in 29 days") && w.contains("h5.example.com"),
            "{w}"
        );
        // Not again for the same threshold, whatever the hour.
        assert_eq!(expiry_warning(&cert(20), now, &mut last), None);
        assert!(expiry_warning(&cert(13), now, &mut last).is_some());
        assert!(expiry_warning(&cert(6), now, &mut last).is_some());
        assert_eq!(expiry_warning(&cert(1), now, &mut last), None);
        // A start-up inside the window warns at once (the lowest threshold crossed).
        let mut fresh = None;
        assert!(expiry_warning(&cert(10), now, &mut fresh)
            .unwrap()
            .contains("10 days"));
        assert_eq!(fresh, Some(14));
        // Expired: an error line once a day.
        let mut gone = None;
        let w = expiry_warning(&cert(-2), now, &mut gone).unwrap();
        assert!(w.contains("EXPIRED"), "{w}");
        assert_eq!(expiry_warning(&cert(-2), now + 60, &mut gone), None);
        assert!(expiry_warning(&cert(-2), now + day, &mut gone).is_some());
        assert_eq!(cert(10).days_left(now), 10);
        assert_eq!(cert(-2).days_left(now), -2);
    }

    #[test]
    fn loads_names_and_refuses_mismatched_or_missing_files() {
        let d = tmp("load");
        let a = write_pair(&d, "a", &["a.example", "*.a.example"]);
        let b = write_pair(&d, "b", &["b.example"]);
        let tls = Tls::load(&[a.clone(), b.clone()], true).unwrap();
        assert_eq!(tls.certificates[0].names, ["a.example", "*.a.example"]);
        assert_eq!(tls.certificates[1].names, ["b.example"]);

        // a's certificate with b's key: refused, naming both files.
        let mixed = CertificateFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = Tls::load(&[mixed], true).unwrap_err();
        assert!(e.contains("a.pem") && e.contains("b.key"), "{e}");

        let missing = CertificateFiles {
            cert: d.join("nope.pem").display().to_string(),
            key: a.key.clone(),
        };
        assert!(Tls::load(&[missing], true)
            .unwrap_err()
            .contains("nope.pem"));
        // A key file given as the certificate: no certificate in it.
        let swapped = CertificateFiles {
            cert: a.key.clone(),
            key: a.key.clone(),
        };
        assert!(Tls::load(&[swapped], true).is_err());
        assert!(Tls::load(&[], true).is_err());
        std::fs::remove_dir_all(d).ok();
    }
}
