//! The dist tree, read once at start-up: every file's type, cache policy, validators and
//! encoded variants are computed here so the request path only looks things up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

use super::compress::{self, Cache, Cached, Digest, Manifest, TwinCheck};
use super::model::{Body, Encoded, Encoding, SendFile, StaticFile, Variant};
use super::respond;
use crate::config::{CacheRule, StaticSettings};

/// Built at load time: the header lines are prebuilt here (with [`respond::prebuild`]), so the
/// model needs nothing from answering.
impl StaticFile {
    /// A file served with these variants (identity first), headers prebuilt.
    pub fn new(
        content_type: HeaderValue,
        cache_control: HeaderValue,
        modified: SystemTime,
        mut variants: Vec<Variant>,
        vary: bool,
    ) -> StaticFile {
        variants[1..].sort_by_key(|v| v.len);
        let mut file = StaticFile {
            content_type,
            cache_control,
            modified,
            last_modified: http_date(modified),
            vary: vary || variants.len() > 1,
            loaded: Encoded::default(),
            compressed: OnceLock::new(),
        };
        let prebuilt = respond::prebuild(&file, &variants);
        file.loaded = Encoded { variants, prebuilt };
        file
    }

    /// Add variants made after loading; the first call wins.
    fn add_compressed(&self, made: Vec<Variant>) {
        let mut variants = self.loaded.variants.clone();
        variants.extend(made);
        variants[1..].sort_by_key(|v| v.len);
        let prebuilt = respond::prebuild(self, &variants);
        let _ = self.compressed.set(Encoded { variants, prebuilt });
    }
}

/// All servable files by clean path (`/assets/a.js`), plus the set of directories.
#[derive(Debug, Default)]
pub struct Tree {
    pub files: HashMap<String, StaticFile>,
    pub dirs: HashSet<String>,
    /// Bytes of bodies in memory (identity, shipped twins, and what compression adds).
    pub memory_bytes: AtomicU64,
    /// The memory budget compression may still take from.
    pub memory_max_bytes: u64,
    pub disk_files: usize,
    /// MP_verify paths and where each comes from, for `-t` and the start-up log.
    pub mp_verify: Vec<(String, &'static str)>,
    /// Text files to compress after start-up (see [`Tree::compress_pending`]).
    pending: Vec<Pending>,
    /// How many of `pending` are done.
    pub compressed_files: AtomicUsize,
    /// The compression cache (`compress_cache`), and the entries this dist uses in it.
    pub cache: Option<Cache>,
    cache_used: HashSet<String>,
    /// Twins written by `wxedge compress` for a file that changed since: never served.
    pub stale_twins: Vec<String>,
    /// How long [`load`] took (the start-up log reports it: the listener waits for it).
    pub load_time: std::time::Duration,
}

/// A file whose gzip and br variants are still to be made.
#[derive(Debug)]
struct Pending {
    clean: String,
    data: Bytes,
    digest: Digest,
    gzip: bool,
    brotli: bool,
}

impl Tree {
    /// Files waiting for their compressed variants, and how many there are in all.
    pub fn compression_progress(&self) -> (usize, usize) {
        (
            self.compressed_files.load(Ordering::Relaxed),
            self.pending.len(),
        )
    }

    /// Give every large body in memory its copy for `sendfile(2)` (see
    /// [`SendFile`]): the first background work after the listener opens.
    pub fn make_sendfile_copies(&self) {
        for file in self.files.values() {
            file.variants().iter().for_each(SendFile::make);
        }
    }

    /// Make the gzip and br variants that load left for later, one file at a time (so the
    /// extra memory is one file's compression: at most 24 MiB plus twice the file,
    /// docs/static-files.md "Encodings"), each taken from the memory budget and kept
    /// in the compression cache when there is one. Until a file's variants are ready it is
    /// served as it is (identity, or a shipped twin).
    pub fn compress_pending(&self) {
        for p in &self.pending {
            let made: Vec<Variant> = [(p.brotli, Encoding::Brotli), (p.gzip, Encoding::Gzip)]
                .into_iter()
                .filter(|(want, _)| *want)
                .filter_map(|(_, enc)| {
                    let c = compress::encode(enc, &p.data);
                    if let Some(cache) = &self.cache {
                        cache.put(p.digest, enc, c.as_deref());
                    }
                    let c = c?;
                    let len = c.len() as u64;
                    let taken = self.memory_bytes.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |used| (used + len <= self.memory_max_bytes).then_some(used + len),
                    );
                    taken.is_ok().then(|| memory_variant(enc, Bytes::from(c)))
                })
                .collect();
            if let Some(file) = self.files.get(&p.clean) {
                if !made.is_empty() {
                    file.add_compressed(made);
                    file.variants().iter().for_each(SendFile::make);
                }
            }
            self.compressed_files.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After the background work: the cache's entries this dist uses get a fresh date, and
    /// those no version has used for [`compress::CACHE_KEEP_UNUSED`] are removed.
    pub fn prune_cache(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| {
            c.prune(
                &self.cache_used,
                SystemTime::now(),
                compress::CACHE_KEEP_UNUSED,
            )
        })
    }
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

/// Read the dist tree. Symlinks are followed only when they stay inside the root.
///
/// The life of a load: walk the dist, smallest files first take the memory budget, the bodies it
/// admits are read (on a few threads), each file is classified with its variants (shipped twins
/// checked against `wxedge compress`'s manifest, then the compression cache), then the
/// MP_verify files are listed and completed. Nothing is written or compressed here: the
/// listener waits for this.
pub fn load(
    root: &Path,
    opts: &StaticSettings,
    mp_verify_tokens: &[String],
) -> Result<Tree, LoadError> {
    let started = std::time::Instant::now();
    let root = root
        .canonicalize()
        .map_err(|e| LoadError(format!("dist {}: {e}", root.display())))?;
    let (dirs, mut found) = walk(&root);
    // Small files first, so a memory budget that runs out leaves only the big ones on disk.
    found.sort_by_key(|f| f.meta.len());
    // Precompressed twins shipped by the build (`a.js.br`, `a.js.gz`) are found by name.
    let by_name: HashMap<&str, &DistFile> = found.iter().map(|f| (f.clean.as_str(), f)).collect();
    let mut budget = Budget::new(opts);
    let admitted: Vec<bool> = found
        .iter()
        .map(|f| {
            let fits = budget.admits(f.meta.len());
            if fits {
                budget.take(f.meta.len());
            }
            fits
        })
        .collect();
    let bodies = read_bodies(&found, &admitted)?;
    let mut ctx = LoadContext {
        by_name,
        bodies,
        manifest: Manifest::read(&root),
        cache: (!opts.compress_cache.is_empty())
            .then(|| Cache::new(Path::new(&opts.compress_cache))),
        budget,
        opts,
        cache_used: HashSet::new(),
        stale_twins: Vec::new(),
    };
    let mut tree = Tree {
        dirs,
        ..Tree::default()
    };
    for f in &found {
        let (file, pending) = load_file(f, &mut ctx)?;
        if matches!(file.identity().body, Body::Disk(_)) {
            tree.disk_files += 1;
        }
        tree.files.insert(f.clean.clone(), file);
        tree.pending.extend(pending);
    }
    tree.memory_bytes = AtomicU64::new(ctx.budget.used());
    tree.memory_max_bytes = opts.memory_max_bytes;
    ctx.stale_twins.sort();
    if !ctx.stale_twins.is_empty() {
        let shown: Vec<&str> = ctx.stale_twins.iter().take(5).map(|s| s.as_str()).collect();
        log::warn!(
            "dist: {} twins written by `wxedge compress` were made from an older version of their file and are not served (compressed in the background instead; run `wxedge compress` again after changing the dist): {}{}",
            ctx.stale_twins.len(),
            shown.join(", "),
            if ctx.stale_twins.len() > shown.len() { ", …" } else { "" }
        );
    }
    tree.stale_twins = ctx.stale_twins;
    tree.cache = ctx.cache;
    tree.cache_used = ctx.cache_used;
    add_mp_verify(&mut tree, mp_verify_tokens);
    tree.load_time = started.elapsed();
    Ok(tree)
}

/// What loading one file looks at besides the file: the other files (its twins), the manifest
/// of `wxedge compress`, the compression cache and the memory budget.
struct LoadContext<'a> {
    by_name: HashMap<&'a str, &'a DistFile>,
    /// The bodies read into memory, by clean path (the budget admitted them).
    bodies: HashMap<&'a str, Bytes>,
    manifest: Manifest,
    cache: Option<Cache>,
    budget: Budget,
    opts: &'a StaticSettings,
    cache_used: HashSet<String>,
    stale_twins: Vec<String>,
}

/// A regular file of the dist, found by the walk and not read yet.
pub(super) struct DistFile {
    /// Clean URL path, `/assets/a.js`.
    pub clean: String,
    /// Canonical path, inside the root.
    pub real: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Walks the dist, following symlinks, into its directories (`/` included) and its regular
/// files. Unreadable entries are skipped with a warning instead of failing the start-up.
pub(super) fn walk(root: &Path) -> (HashSet<String>, Vec<DistFile>) {
    let mut dirs = HashSet::from(["/".to_string()]);
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true).min_depth(1) {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                log::warn!("dist: skipping unreadable entry: {e}");
                continue;
            }
        };
        let Some((clean, real)) = servable_path(root, &entry) else {
            continue;
        };
        if entry.file_type().is_dir() {
            dirs.insert(clean);
        } else if let Ok(meta) = std::fs::metadata(&real) {
            if meta.is_file() {
                files.push(DistFile { clean, real, meta });
            }
        }
    }
    (dirs, files)
}

/// The clean URL path and the canonical path of an entry, or None when it must not be served:
/// it resolves outside the root (a symlink escaping it), its name is not UTF-8, or it is hidden
/// (hidden names are never served, so no memory is spent on them).
fn servable_path(root: &Path, entry: &walkdir::DirEntry) -> Option<(String, PathBuf)> {
    let real = match entry.path().canonicalize() {
        Ok(p) if p.starts_with(root) => p,
        _ => {
            log::warn!(
                "dist: skipping {} (points outside the dist root)",
                entry.path().display()
            );
            return None;
        }
    };
    let rel = match entry
        .path()
        .strip_prefix(root)
        .ok()
        .and_then(|r| r.to_str())
    {
        Some(r) => r.replace(std::path::MAIN_SEPARATOR, "/"),
        None => {
            log::warn!(
                "dist: skipping {} (name is not UTF-8)",
                entry.path().display()
            );
            return None;
        }
    };
    if rel
        .split('/')
        .any(|s| s.starts_with('.') && s != ".well-known")
    {
        return None;
    }
    Some((format!("/{rel}"), real))
}

/// The memory budget for bodies (`memory_max_bytes`, files up to `memory_max_file_bytes`): what
/// does not fit is served from disk, so a large dist cannot exhaust memory at start-up.
struct Budget {
    max: u64,
    max_file: u64,
    left: u64,
}

impl Budget {
    fn new(opts: &StaticSettings) -> Self {
        Budget {
            max: opts.memory_max_bytes,
            max_file: opts.memory_max_file_bytes,
            left: opts.memory_max_bytes,
        }
    }

    /// Whether a file of `len` bytes on disk may be read into memory.
    fn admits(&self, len: u64) -> bool {
        len <= self.max_file && len <= self.left
    }

    /// Accounts bytes read after [`Budget::admits`] said yes.
    fn take(&mut self, len: u64) {
        self.left -= len;
    }

    /// Takes `len` bytes if they are left; a variant that does not fit is simply not offered.
    fn try_take(&mut self, len: u64) -> bool {
        let fits = len <= self.left;
        if fits {
            self.left -= len;
        }
        fits
    }

    /// Bytes held in memory, for the start-up log.
    fn used(&self) -> u64 {
        self.max - self.left
    }
}

/// One dist file made servable: its type and cache policy, its validators, its identity body (in
/// memory or on disk) and its compressed variants as far as they exist already (shipped twins
/// that check out, compression cache entries), headers prebuilt; and, for text worth
/// compressing, what is left for [`Tree::compress_pending`] (nothing is compressed here, so the
/// listener opens at once whatever the dist's size).
fn load_file(
    f: &DistFile,
    ctx: &mut LoadContext,
) -> Result<(StaticFile, Option<Pending>), LoadError> {
    let (essence, content_type) = content_type_for(&f.clean);
    let modified = truncate_to_seconds(f.meta.modified().unwrap_or(UNIX_EPOCH));
    let (identity, data) = match ctx.bodies.get(f.clean.as_str()) {
        Some(data) => (
            memory_variant(Encoding::Identity, data.clone()),
            Some(data.clone()),
        ),
        None => (disk_identity(f, modified), None),
    };
    let mut variants = vec![identity];
    // The file's digest, made once and only when a twin or the cache needs it.
    let mut source: Option<Option<Digest>> = None;
    let mut digest = |f: &DistFile| -> Option<Digest> {
        *source.get_or_insert_with(|| match &data {
            Some(d) => Some(Digest::of(d)),
            None => Digest::of_file(&f.real).ok(),
        })
    };
    let worth = data
        .as_ref()
        .filter(|d| is_compressible(&essence) && d.len() as u64 >= ctx.opts.compress_min_bytes);
    let missing = existing_variants(f, ctx, &mut digest, worth, &mut variants);
    let pending = match worth {
        Some(d) if !missing.is_empty() => Some(Pending {
            clean: f.clean.clone(),
            data: d.clone(),
            digest: digest(f).expect("in memory"),
            gzip: missing.contains(&Encoding::Gzip),
            brotli: missing.contains(&Encoding::Brotli),
        }),
        _ => None,
    };
    let file = StaticFile::new(
        content_type,
        cache_control_for(&f.clean, &essence, &ctx.opts.cache_control),
        modified,
        variants,
        pending.is_some(),
    );
    Ok((file, pending))
}

/// Adds to `variants` the encoded variants that exist already: twins shipped with the dist (or
/// written by `wxedge compress`) that check out, then compression cache entries. Returns the
/// encodings still to make.
fn existing_variants(
    f: &DistFile,
    ctx: &mut LoadContext,
    digest: &mut impl FnMut(&DistFile) -> Option<Digest>,
    worth: Option<&Bytes>,
    variants: &mut Vec<Variant>,
) -> Vec<Encoding> {
    let mut missing = Vec::new();
    for (enc, ext) in compress::ENCODINGS {
        let twin_path = format!("{}.{ext}", f.clean);
        // Twins shipped by the build, or written by `wxedge compress` and still current, win.
        if let Some(twin) = ctx.by_name.get(twin_path.as_str()).copied() {
            match shipped_variant(enc, twin, &twin_path, ctx, digest, f) {
                Twin::Served(v) => {
                    variants.push(v);
                    continue;
                }
                // Its digest could not be taken (unreadable on disk): served without it.
                Twin::Unused => continue,
                // Made from another version of the file: compressed anew.
                Twin::Stale => ctx.stale_twins.push(twin_path.clone()),
            }
        } else if ctx.manifest.entries.contains_key(&twin_path)
            && digest(f).is_some_and(|d| ctx.manifest.not_worth(&twin_path, d))
        {
            // `wxedge compress` found it not worth a twin.
            continue;
        }
        // Then what an earlier run (or another version) left in the compression cache.
        if let (Some(cache), Some(_)) = (&ctx.cache, worth) {
            let d = digest(f).expect("in memory");
            ctx.cache_used.insert(Cache::name(d, enc));
            match cache.get(d, enc) {
                Some(Cached::Variant(b)) => {
                    if ctx.budget.try_take(b.len() as u64) {
                        variants.push(memory_variant(enc, b));
                    }
                    continue;
                }
                Some(Cached::NotWorth) => continue,
                None => {}
            }
        }
        missing.push(enc);
    }
    missing
}

/// The bodies of the files the budget admitted, read on a few threads at once (reading a
/// 100 MB dist was most of the start-up). A file that cannot be read fails the load.
fn read_bodies<'a>(
    found: &'a [DistFile],
    admitted: &[bool],
) -> Result<HashMap<&'a str, Bytes>, LoadError> {
    let wanted: Vec<&DistFile> = found
        .iter()
        .zip(admitted)
        .filter_map(|(f, &a)| a.then_some(f))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(wanted.len().max(1));
    let read = |f: &'a DistFile| {
        std::fs::read(&f.real)
            .map(|b| (f.clean.as_str(), Bytes::from(b)))
            .map_err(|e| LoadError(format!("dist: cannot read {}: {e}", f.real.display())))
    };
    std::thread::scope(|scope| {
        // Round-robin over files sorted by size, so each thread gets a like share of bytes.
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<&DistFile> =
                    wanted.iter().skip(t).step_by(threads).copied().collect();
                scope.spawn(move || mine.into_iter().map(read).collect::<Result<Vec<_>, _>>())
            })
            .collect();
        let mut bodies = HashMap::with_capacity(wanted.len());
        for w in workers {
            bodies.extend(w.join().expect("reading the dist does not panic")?);
        }
        Ok(bodies)
    })
}

/// A body held in memory gets a strong ETag from a hash of its bytes, so it changes exactly when
/// the content does; the suffix keeps each encoding's ETag distinct.
fn memory_variant(encoding: Encoding, body: Bytes) -> Variant {
    let suffix = match encoding {
        Encoding::Identity => String::new(),
        enc => format!("-{}", enc.token()),
    };
    Variant {
        encoding,
        len: body.len() as u64,
        etag: etag(xxhash_rust::xxh3::xxh3_64(&body), &suffix),
        body: Body::Memory(body),
        sendfile: Default::default(),
    }
}

/// A file too large for the memory budget is not read at start-up: its ETag comes from its
/// modification time and size instead of its bytes.
fn disk_identity(f: &DistFile, modified: SystemTime) -> Variant {
    let mtime = modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Variant {
        encoding: Encoding::Identity,
        len: f.meta.len(),
        body: Body::Disk(f.real.clone()),
        etag: etag(mtime.rotate_left(32) ^ f.meta.len(), "-d"),
        sendfile: Default::default(),
    }
}

/// A precompressed twin beside its file (`a.js.br`): in memory when the budget admitted it as
/// a file of its own, else served from disk. A twin `wxedge compress` listed in its manifest is
/// checked first: made from another version of the file, it is never served.
fn shipped_variant(
    enc: Encoding,
    twin: &DistFile,
    twin_path: &str,
    ctx: &mut LoadContext,
    source: &mut impl FnMut(&DistFile) -> Option<Digest>,
    file: &DistFile,
) -> Twin {
    // The twin is a dist file too (`/a.js.br` is served as such): its body, when in memory, is
    // the same bytes, shared and counted once.
    let bytes = ctx.bodies.get(twin.clean.as_str()).cloned();
    if ctx.manifest.entries.contains_key(twin_path) {
        let twin_digest = match &bytes {
            Some(b) => Some(Digest::of(b)),
            None => Digest::of_file(&twin.real).ok(),
        };
        let (Some(twin_digest), Some(source)) = (twin_digest, source(file)) else {
            return Twin::Unused;
        };
        if ctx.manifest.check(twin_path, twin_digest, source) == TwinCheck::Stale {
            return Twin::Stale;
        }
    }
    let Some(bytes) = bytes else {
        return Twin::Served(Variant {
            encoding: enc,
            len: twin.meta.len(),
            body: Body::Disk(twin.real.clone()),
            etag: etag(twin.meta.len() ^ 0x5eed, &format!("-{}d", enc.token())),
            sendfile: Default::default(),
        });
    };
    Twin::Served(memory_variant(enc, bytes))
}

/// What became of a twin found beside its file.
enum Twin {
    Served(Variant),
    Unused,
    Stale,
}

/// MP_verify files prove domain ownership to WeChat: the dist's are listed, and each configured
/// token is served even when the build dropped its file (the dist's own file wins).
fn add_mp_verify(tree: &mut Tree, tokens: &[String]) {
    for (path, _) in tree.files.iter().filter(|(p, _)| is_mp_verify_path(p)) {
        tree.mp_verify.push((path.clone(), "dist"));
    }
    for token in tokens {
        let path = format!("/MP_verify_{token}.txt");
        if tree.files.contains_key(&path) {
            continue;
        }
        tree.files.insert(path.clone(), mp_verify_file(token));
        tree.mp_verify.push((path, "config"));
    }
    tree.mp_verify.sort();
}

/// The file for a configured MP_verify token: the token as plain text, dated from start-up.
fn mp_verify_file(token: &str) -> StaticFile {
    StaticFile::new(
        HeaderValue::from_static("text/plain; charset=utf-8"),
        HeaderValue::from_static("no-cache"),
        truncate_to_seconds(SystemTime::now()),
        vec![memory_variant(
            Encoding::Identity,
            Bytes::from(token.to_string()),
        )],
        false,
    )
}

/// `Last-Modified` value, formatted once here instead of per request.
fn http_date(t: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("dates are ASCII")
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

    fn memory_body(v: &Variant) -> &Bytes {
        match &v.body {
            Body::Memory(b) => b,
            Body::Disk(p) => panic!("{} is on disk", p.display()),
        }
    }

    /// The budget admits the smallest bodies first; they are read whole (on several threads),
    /// a shipped twin is the bytes of its own file, shared and counted once, and what does not
    /// fit stays on disk.
    #[test]
    fn load_reads_what_the_budget_admits_and_shares_twins() {
        let root = std::env::temp_dir().join(format!("wxedge-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("assets")).unwrap();
        let js = "function a(){return 1;}\n".repeat(2000).into_bytes();
        let gz = compress::encode(Encoding::Gzip, &js).unwrap();
        std::fs::write(root.join("assets/a.js"), &js).unwrap();
        std::fs::write(root.join("assets/a.js.gz"), &gz).unwrap();
        for i in 0..9u8 {
            std::fs::write(
                root.join(format!("assets/s{i}.css")),
                vec![b'a' + i; 100 + i as usize],
            )
            .unwrap();
        }
        let big = vec![7u8; 200_000];
        std::fs::write(root.join("assets/big.png"), &big).unwrap();
        let small: u64 = (0..9).map(|i| 100 + i).sum();
        let opts = StaticSettings {
            memory_max_bytes: small + gz.len() as u64 + js.len() as u64,
            ..StaticSettings::default()
        };
        let tree = load(&root, &opts, &[]).unwrap();
        assert_eq!(
            tree.memory_bytes.load(Ordering::Relaxed),
            opts.memory_max_bytes
        );
        assert_eq!(tree.disk_files, 1, "only big.png is beyond the budget");
        assert!(matches!(
            tree.files["/assets/big.png"].identity().body,
            Body::Disk(_)
        ));
        for i in 0..9u8 {
            let f = &tree.files[&format!("/assets/s{i}.css")];
            assert_eq!(
                memory_body(f.identity()).as_ref(),
                vec![b'a' + i; 100 + i as usize]
            );
        }
        let a = &tree.files["/assets/a.js"];
        assert_eq!(memory_body(a.identity()).as_ref(), &js[..]);
        let twin = a
            .variants()
            .iter()
            .find(|v| v.encoding == Encoding::Gzip)
            .expect("the shipped twin is served");
        let own = tree.files["/assets/a.js.gz"].identity();
        assert_eq!(
            memory_body(twin).as_ptr(),
            memory_body(own).as_ptr(),
            "one copy"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
