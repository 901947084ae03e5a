//! The dist tree, read once at start-up: every file's type, cache policy, validators and
//! encoded variants are computed here so the request path only looks things up.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{CacheRule, StaticSettings};

/// Where a variant's bytes live.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(Bytes),
    /// Too large for the memory budget: read per request (path checked to be inside the root).
    Disk(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }
}

/// One representation of a file.
#[derive(Debug, Clone)]
pub struct Variant {
    pub encoding: Encoding,
    pub body: Body,
    pub len: u64,
    /// Quoted strong ETag, distinct per encoding.
    pub etag: HeaderValue,
}

#[derive(Debug, Clone)]
pub struct StaticFile {
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    /// Truncated to whole seconds, as HTTP dates are.
    pub modified: SystemTime,
    pub last_modified: HeaderValue,
    /// Identity first; then compressed variants, smallest first.
    pub variants: Vec<Variant>,
    /// Serialized header lines per variant (same order), made by [`StaticFile::finish`].
    pub prebuilt: Vec<super::respond::Prebuilt>,
}

impl StaticFile {
    /// Serialize the common answers' headers once, now that the file is complete.
    pub fn finish(mut self) -> Self {
        self.prebuilt = super::respond::prebuild(&self);
        self
    }
    pub fn identity(&self) -> &Variant {
        &self.variants[0]
    }
    pub fn has_encodings(&self) -> bool {
        self.variants.len() > 1
    }
}

/// All servable files by clean path (`/assets/a.js`), plus the set of directories.
#[derive(Debug, Default)]
pub struct Tree {
    pub files: HashMap<String, StaticFile>,
    pub dirs: HashSet<String>,
    pub memory_bytes: u64,
    pub disk_files: usize,
    /// MP_verify paths and where each comes from, for `-t` and the start-up log.
    pub mp_verify: Vec<(String, &'static str)>,
}

#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Types worth compressing; images, fonts in woff2 and archives already are.
pub fn is_compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
        )
}

fn needs_charset(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "image/svg+xml"
        )
}

pub fn content_type_for(path: &str) -> (String, HeaderValue) {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str().to_string();
    // Some mime_guess versions still say text/javascript; both are valid, keep one spelling.
    let essence = if essence == "text/javascript" {
        "application/javascript".to_string()
    } else {
        essence
    };
    let value = if needs_charset(&essence) {
        format!("{essence}; charset=utf-8")
    } else {
        essence.clone()
    };
    (
        essence,
        HeaderValue::from_str(&value)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    )
}

/// A Vite/uni-app content hash in the file name: `name.D555nH7r.js`, `index-bydhfUo3.js`,
/// `uni.424060a0.css`. A hash is 8+ base64url characters with at least one digit or two cases,
/// so `pages-login-login.js` or `jquery-settings.js` do not count.
pub fn has_content_hash(file_name: &str) -> bool {
    let stem = match file_name.rsplit_once('.') {
        Some((stem, _ext)) => stem,
        None => return false,
    };
    stem.rsplit(['.', '-']).next().is_some_and(|tail| {
        tail != stem
            && tail.len() >= 8
            && tail.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && (tail.chars().any(|c| c.is_ascii_digit())
                || (tail.chars().any(|c| c.is_ascii_uppercase())
                    && tail.chars().any(|c| c.is_ascii_lowercase())))
    })
}

pub fn cache_control_for(path: &str, essence: &str, rules: &[CacheRule]) -> HeaderValue {
    if let Some(rule) = rules
        .iter()
        .filter(|r| path.starts_with(&r.prefix))
        .max_by_key(|r| r.prefix.len())
    {
        if let Ok(v) = HeaderValue::from_str(&rule.value) {
            return v;
        }
    }
    let name = path.rsplit('/').next().unwrap_or("");
    if essence != "text/html" && has_content_hash(name) {
        HeaderValue::from_static("public, max-age=31536000, immutable")
    } else {
        // HTML and unhashed files may change with any deploy: always revalidate (cheap 304).
        HeaderValue::from_static("no-cache")
    }
}

fn etag(hash: u64, suffix: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash:016x}{suffix}\"")).expect("hex is a valid header")
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3),
        flate2::Compression::best(),
    );
    enc.write_all(data).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 3);
    // A window no larger than the file: the same output for small files, far less memory at start-up.
    let lgwin = (usize::BITS - data.len().max(1).leading_zeros()).clamp(16, 22) as i32;
    let params = brotli::enc::BrotliEncoderParams {
        quality: 10,
        lgwin,
        size_hint: data.len(),
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("writing to memory");
    out
}

/// Read the dist tree. Symlinks are followed only when they stay inside the root.
pub fn load(
    root: &Path,
    opts: &StaticSettings,
    mp_verify_tokens: &[String],
) -> Result<Tree, LoadError> {
    let root = root
        .canonicalize()
        .map_err(|e| LoadError(format!("dist {}: {e}", root.display())))?;
    let mut tree = Tree::default();
    tree.dirs.insert("/".into());
    let mut raw: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
    for entry in walkdir::WalkDir::new(&root).follow_links(true).min_depth(1) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                log::warn!("dist: skipping unreadable entry: {e}");
                continue;
            }
        };
        let real = match entry.path().canonicalize() {
            Ok(p) if p.starts_with(&root) => p,
            _ => {
                log::warn!(
                    "dist: skipping {} (points outside the dist root)",
                    entry.path().display()
                );
                continue;
            }
        };
        let rel = match entry
            .path()
            .strip_prefix(&root)
            .ok()
            .and_then(|r| r.to_str())
        {
            Some(r) => r.replace(std::path::MAIN_SEPARATOR, "/"),
            None => {
                log::warn!(
                    "dist: skipping {} (name is not UTF-8)",
                    entry.path().display()
                );
                continue;
            }
        };
        // Hidden names are never served; do not spend memory on them.
        if rel
            .split('/')
            .any(|s| s.starts_with('.') && s != ".well-known")
        {
            continue;
        }
        let clean = format!("/{rel}");
        if entry.file_type().is_dir() {
            tree.dirs.insert(clean);
        } else if let Ok(meta) = std::fs::metadata(&real) {
            if meta.is_file() {
                raw.push((clean, real, meta));
            }
        }
    }
    // Small files first, so a memory budget that runs out leaves only the big ones on disk.
    raw.sort_by_key(|(_, _, m)| m.len());
    let names: HashSet<String> = raw.iter().map(|(c, _, _)| c.clone()).collect();
    let mut twins: HashMap<String, (Encoding, PathBuf, std::fs::Metadata)> = HashMap::new();
    for (clean, real, meta) in &raw {
        for (ext, enc) in [(".gz", Encoding::Gzip), (".br", Encoding::Brotli)] {
            if let Some(base) = clean.strip_suffix(ext) {
                if names.contains(base) {
                    twins.insert(format!("{base}{ext}"), (enc, real.clone(), meta.clone()));
                }
            }
        }
    }
    let mut budget = opts.memory_max_bytes;
    for (clean, real, meta) in &raw {
        let (essence, content_type) = content_type_for(clean);
        let modified = truncate_to_seconds(meta.modified().unwrap_or(UNIX_EPOCH));
        let in_memory = meta.len() <= opts.memory_max_file_bytes && meta.len() <= budget;
        let mut variants = Vec::new();
        let data = if in_memory {
            let data =
                Bytes::from(std::fs::read(real).map_err(|e| {
                    LoadError(format!("dist: cannot read {}: {e}", real.display()))
                })?);
            budget -= data.len() as u64;
            let hash = xxhash_rust::xxh3::xxh3_64(&data);
            variants.push(Variant {
                encoding: Encoding::Identity,
                len: data.len() as u64,
                body: Body::Memory(data.clone()),
                etag: etag(hash, ""),
            });
            Some(data)
        } else {
            let mtime = modified
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            tree.disk_files += 1;
            variants.push(Variant {
                encoding: Encoding::Identity,
                len: meta.len(),
                body: Body::Disk(real.clone()),
                etag: etag(mtime.rotate_left(32) ^ meta.len(), "-d"),
            });
            None
        };
        // Precompressed twins shipped by the build win; otherwise compress text once, here.
        for (ext, enc) in [(".br", Encoding::Brotli), (".gz", Encoding::Gzip)] {
            let twin = twins.get(&format!("{clean}{ext}"));
            let bytes = match (twin, &data) {
                (Some((_, path, m)), _)
                    if m.len() <= opts.memory_max_file_bytes && m.len() <= budget =>
                {
                    std::fs::read(path).ok().map(Bytes::from)
                }
                (Some((_, path, m)), _) => {
                    variants.push(Variant {
                        encoding: enc,
                        len: m.len(),
                        body: Body::Disk(path.clone()),
                        etag: etag(m.len() ^ 0x5eed, &format!("-{}d", enc.token())),
                    });
                    continue;
                }
                (None, Some(d))
                    if is_compressible(&essence) && d.len() as u64 >= opts.compress_min_bytes =>
                {
                    let c = if enc == Encoding::Gzip {
                        gzip(d)
                    } else {
                        brotli(d)
                    };
                    // Not worth a variant when it saves less than a tenth.
                    (c.len() * 10 < d.len() * 9).then(|| Bytes::from(c))
                }
                _ => None,
            };
            if let Some(b) = bytes {
                if b.len() as u64 <= budget {
                    budget -= b.len() as u64;
                    let hash = xxhash_rust::xxh3::xxh3_64(&b);
                    variants.push(Variant {
                        encoding: enc,
                        len: b.len() as u64,
                        etag: etag(hash, &format!("-{}", enc.token())),
                        body: Body::Memory(b),
                    });
                }
            }
        }
        variants[1..].sort_by_key(|v| v.len);
        let cache_control = cache_control_for(clean, &essence, &opts.cache_control);
        let last_modified =
            HeaderValue::from_str(&httpdate::fmt_http_date(modified)).expect("dates are ASCII");
        tree.files.insert(
            clean.clone(),
            StaticFile {
                content_type,
                cache_control,
                modified,
                last_modified,
                variants,
                prebuilt: vec![],
            }
            .finish(),
        );
    }
    tree.memory_bytes = opts.memory_max_bytes - budget;
    for (path, _) in tree.files.iter().filter(|(p, _)| is_mp_verify_path(p)) {
        tree.mp_verify.push((path.clone(), "dist"));
    }
    // Tokens from the configuration: present whatever the build dropped.
    for token in mp_verify_tokens {
        let path = format!("/MP_verify_{token}.txt");
        if tree.files.contains_key(&path) {
            continue;
        }
        let body = Bytes::from(token.clone());
        let hash = xxhash_rust::xxh3::xxh3_64(&body);
        let started = truncate_to_seconds(SystemTime::now());
        tree.files.insert(
            path.clone(),
            StaticFile {
                content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
                cache_control: HeaderValue::from_static("no-cache"),
                modified: started,
                last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(started))
                    .expect("ASCII"),
                variants: vec![Variant {
                    encoding: Encoding::Identity,
                    len: body.len() as u64,
                    body: Body::Memory(body),
                    etag: etag(hash, ""),
                }],
                prebuilt: vec![],
            }
            .finish(),
        );
        tree.mp_verify.push((path, "config"));
    }
    tree.mp_verify.sort();
    Ok(tree)
}

fn is_mp_verify_path(p: &str) -> bool {
    p.strip_prefix("/MP_verify_")
        .and_then(|r| r.strip_suffix(".txt"))
        .is_some_and(|t| !t.is_empty() && !t.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hashes() {
        for name in [
            "pages-login-login.D555nH7r.js",
            "uni.424060a0.css",
            "index-uwCG8sRc.css",
            "index-bydhfUo3.js",
        ] {
            assert!(has_content_hash(name), "{name}");
        }
        for name in [
            "index.html",
            "logo.png",
            "pages-login-login.js",
            "jquery-settings.js",
            "favicon.ico",
            "abcdefgh",
        ] {
            assert!(!has_content_hash(name), "{name}");
        }
    }

    #[test]
    fn cache_policy() {
        assert_eq!(
            cache_control_for("/assets/index-bydhfUo3.js", "application/javascript", &[]),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_control_for("/index.html", "text/html", &[]),
            "no-cache"
        );
        assert_eq!(
            cache_control_for("/static/logo.png", "image/png", &[]),
            "no-cache"
        );
        let rules = vec![
            CacheRule {
                prefix: "/static/".into(),
                value: "public, max-age=60".into(),
            },
            CacheRule {
                prefix: "/static/img/".into(),
                value: "public, max-age=120".into(),
            },
        ];
        assert_eq!(
            cache_control_for("/static/logo.png", "image/png", &rules),
            "public, max-age=60"
        );
        assert_eq!(
            cache_control_for("/static/img/a.png", "image/png", &rules),
            "public, max-age=120"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_for("/a.js").1,
            "application/javascript; charset=utf-8"
        );
        assert_eq!(content_type_for("/a.css").1, "text/css; charset=utf-8");
        assert_eq!(content_type_for("/a.html").1, "text/html; charset=utf-8");
        assert_eq!(content_type_for("/a.png").1, "image/png");
        assert_eq!(content_type_for("/a.svg").1, "image/svg+xml; charset=utf-8");
        assert_eq!(content_type_for("/a.woff2").1, "font/woff2");
        assert_eq!(content_type_for("/a.wasm").1, "application/wasm");
        assert_eq!(
            content_type_for("/a.json").1,
            "application/json; charset=utf-8"
        );
        assert_eq!(
            content_type_for("/MP_verify_x.txt").1,
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type_for("/noext").1, "application/octet-stream");
    }
}
