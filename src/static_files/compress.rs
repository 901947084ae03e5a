//! Compressed variants made once and kept: the one encoder (gzip level 9, brotli quality 10) that
//! both the background compressor and `wxedge compress` use, the manifest that makes the twins
//! `wxedge compress` writes verifiable, and the compression cache reused across restarts and
//! upgrades (`static_files.compress_cache`).
//!
//! Contents are named by a [`Digest`]: xxh3-128 of the bytes and their length. The threat is an
//! accidental mismatch (a file replaced after its twin was made), not an adversary (whoever can
//! write the dist or the cache can serve anything anyway), and xxh3 hashes at memory speed, so
//! checking a 100 MB dist costs milliseconds at start-up where SHA-256 would cost a large part of
//! the half second the edge has to open its listener.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::model::Encoding;

/// The encoder and its settings: part of every cache entry's name, so a change of either (bump
/// it) never reuses results made the old way.
pub const ENCODER: &str = "gz9-br10w20-v2";

/// The manifest `wxedge compress` leaves in the dist's root (a dotfile: never served).
pub const MANIFEST: &str = ".wxedge-compressed";

/// Cache entries not used by the dist being served are removed once they are this old, so a
/// rollback or a replica of the previous version still finds its own for a day.
pub const CACHE_KEEP_UNUSED: Duration = Duration::from_secs(24 * 3600);

/// The encodings made, with the extension their twins and cache entries carry.
pub const ENCODINGS: [(Encoding, &str); 2] = [(Encoding::Brotli, "br"), (Encoding::Gzip, "gz")];

/// Compress with the edge's settings; `None` when the result saves less than a tenth (not worth
/// a variant: the file is served as it is).
pub fn encode(enc: Encoding, data: &[u8]) -> Option<Vec<u8>> {
    let c = match enc {
        Encoding::Gzip => gzip(data),
        Encoding::Brotli => brotli(data),
        Encoding::Identity => return None,
    };
    (c.len() * 10 < data.len() * 9).then_some(c)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3),
        flate2::Compression::best(),
    );
    enc.write_all(data).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// Brotli's window, as a power of two: 1 MiB.
const MAX_BROTLI_LGWIN: u32 = 20;

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 3);
    // A window no larger than the file (the same output for small files, far less memory) and
    // at most 1 MiB: the encoder's memory grows with its window (its match finder keeps two
    // links per window byte): at most ~24 MiB here with its block buffers (the test
    // `compressing_one_file_stays_inside_the_stated_bound`), where a 4 MiB window took ~48 MiB
    // (measured on a 6 MB bundle, which came out 0.3 % larger). ngx_brotli's default window
    // is 512 KiB.
    let lgwin =
        (usize::BITS - data.len().max(1).leading_zeros()).clamp(16, MAX_BROTLI_LGWIN) as i32;
    let params = brotli::enc::BrotliEncoderParams {
        quality: 10,
        lgwin,
        size_hint: data.len(),
        ..Default::default()
    };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("writing to memory");
    out
}

/// Whether `twin` decodes to exactly `source` (a bomb stops one byte past the source's length).
pub fn decodes_to(enc: Encoding, twin: &[u8], source: &[u8]) -> bool {
    let limit = source.len() as u64 + 1;
    let mut out = Vec::with_capacity(source.len());
    let read = match enc {
        Encoding::Gzip => flate2::read::MultiGzDecoder::new(twin)
            .take(limit)
            .read_to_end(&mut out),
        Encoding::Brotli => brotli::Decompressor::new(twin, 4096)
            .take(limit)
            .read_to_end(&mut out),
        Encoding::Identity => return twin == source,
    };
    read.is_ok() && out == source
}

/// A content's name: xxh3-128 of its bytes and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    pub hash: u128,
    pub len: u64,
}

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest {
            hash: xxhash_rust::xxh3::xxh3_128(data),
            len: data.len() as u64,
        }
    }

    /// The digest of a file, read in blocks (for files served from disk).
    pub fn of_file(path: &Path) -> std::io::Result<Digest> {
        let mut f = std::fs::File::open(path)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Digest {
            hash: h.digest128(),
            len,
        })
    }

    fn parse(s: &str) -> Option<Digest> {
        let (hash, len) = s.split_once(':')?;
        (hash.len() == 32).then_some(())?;
        Some(Digest {
            hash: u128::from_str_radix(hash, 16).ok()?,
            len: len.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}:{}", self.hash, self.len)
    }
}

/// What `wxedge compress` made of one twin name (`/assets/a.js.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The file the twin was made from (`/assets/a.js`).
    pub source: Digest,
    /// The twin as written (or checked); `None`: compressing did not save a tenth, no twin.
    pub twin: Option<Digest>,
}

/// `.wxedge-compressed`: one line per twin name, `SOURCE TWIN PATH` (digests as `hash:len`, `-`
/// for no twin, the clean path last so it may hold spaces). A twin listed here is served only
/// while both its own digest and its source's still match; a twin whose digest differs was put
/// there by someone else (a later build) and is trusted by name like any shipped twin.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Manifest {
    pub entries: HashMap<String, Entry>,
}

/// What the edge makes of a twin found beside a file.
#[derive(Debug, PartialEq, Eq)]
pub enum TwinCheck {
    /// Listed, and made from the file as it is now: serve it.
    Current,
    /// Listed, but the file changed since: never serve it.
    Stale,
    /// Not listed (or replaced since): a twin shipped by the build, trusted by name.
    Shipped,
}

impl Manifest {
    pub fn parse(text: &str) -> (Manifest, usize) {
        let mut m = Manifest::default();
        let mut bad = 0;
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ' ');
            let source = parts.next().and_then(Digest::parse);
            let twin = parts.next().map(|t| (t, Digest::parse(t)));
            let path = parts.next().filter(|p| p.starts_with('/'));
            match (source, twin, path) {
                (Some(source), Some(("-", _)), Some(path)) => {
                    m.entries.insert(path.into(), Entry { source, twin: None });
                }
                (Some(source), Some((_, Some(twin))), Some(path)) => {
                    m.entries.insert(
                        path.into(),
                        Entry {
                            source,
                            twin: Some(twin),
                        },
                    );
                }
                _ => bad += 1,
            }
        }
        (m, bad)
    }

    /// The dist's manifest, or an empty one (none there, or unreadable: logged).
    pub fn read(root: &Path) -> Manifest {
        let path = root.join(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (m, bad) = Manifest::parse(&text);
                if bad > 0 {
                    log::warn!("dist: {}: {bad} unreadable lines skipped", path.display());
                }
                m
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => {
                log::warn!(
                    "dist: {}: {e} (its twins are trusted by name)",
                    path.display()
                );
                Manifest::default()
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "# written by `wxedge compress` ({ENCODER}): SOURCE TWIN PATH, digests as xxh3-128:length.\n\
             # The edge serves a twin listed here only while the file it was made from is unchanged.\n"
        );
        let mut paths: Vec<&String> = self.entries.keys().collect();
        paths.sort();
        for p in paths {
            let e = &self.entries[p];
            let twin = e.twin.map_or("-".to_string(), |t| t.to_string());
            out.push_str(&format!("{} {twin} {p}\n", e.source));
        }
        out
    }

    /// The verdict on a twin (`/a.js.gz`) found beside its file, given both digests.
    pub fn check(&self, twin_path: &str, twin: Digest, source: Digest) -> TwinCheck {
        match self.entries.get(twin_path) {
            Some(e) if e.twin == Some(twin) && e.source == source => TwinCheck::Current,
            Some(e) if e.twin == Some(twin) => TwinCheck::Stale,
            _ => TwinCheck::Shipped,
        }
    }

    /// Whether the manifest settles that no twin is worth making for this file as it is now.
    pub fn not_worth(&self, twin_path: &str, source: Digest) -> bool {
        self.entries
            .get(twin_path)
            .is_some_and(|e| e.twin.is_none() && e.source == source)
    }
}

/// Writes `bytes` to `path` through a hidden temporary file beside it and a rename, so a reader
/// never sees half a file and a crash leaves at most a dotfile (never served, pruned).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What the cache holds for a content and an encoding.
#[derive(Debug, PartialEq)]
pub enum Cached {
    Variant(Bytes),
    /// Compressing it was tried and saved less than a tenth.
    NotWorth,
}

/// The compression cache (`static_files.compress_cache`): one file per content and encoding,
/// `ENCODER-HASH-LEN.gz|br`, an empty file for "not worth it". Written atomically by the
/// background compressor, read at start-up; any failure to write is logged once and the edge goes
/// on without it (read-only filesystems are common in containers).
#[derive(Debug)]
pub struct Cache {
    pub dir: PathBuf,
    write_failed: AtomicBool,
    pub hits: AtomicUsize,
    pub misses: AtomicUsize,
    pub writes: AtomicUsize,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
            write_failed: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        }
    }

    /// An entry's file name.
    pub fn name(d: Digest, enc: Encoding) -> String {
        let ext = if enc == Encoding::Gzip { "gz" } else { "br" };
        format!("{ENCODER}-{:032x}-{:x}.{ext}", d.hash, d.len)
    }

    /// The cached result for this content, counted as a hit or a miss.
    pub fn get(&self, d: Digest, enc: Encoding) -> Option<Cached> {
        let found = match std::fs::read(self.dir.join(Cache::name(d, enc))) {
            Ok(b) if b.is_empty() => Some(Cached::NotWorth),
            Ok(b) if plausible(enc, &b, d.len) => Some(Cached::Variant(Bytes::from(b))),
            Ok(_) => {
                log::warn!(
                    "compress_cache: {} is damaged, ignored",
                    self.dir.join(Cache::name(d, enc)).display()
                );
                None
            }
            Err(_) => None,
        };
        let (counter, label) = if found.is_some() {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::ops::metrics::record_compress_cache(label);
        found
    }

    /// Keeps a result (`None`: not worth a variant). Failures are logged once per process.
    pub fn put(&self, d: Digest, enc: Encoding, body: Option<&[u8]>) {
        if self.write_failed.load(Ordering::Relaxed) {
            return;
        }
        let written = std::fs::create_dir_all(&self.dir).and_then(|_| {
            write_atomically(&self.dir.join(Cache::name(d, enc)), body.unwrap_or(&[]))
        });
        match written {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                crate::ops::metrics::record_compress_cache("written");
            }
            Err(e) => {
                crate::ops::metrics::record_compress_cache("write_error");
                if !self.write_failed.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "compress_cache: cannot write to {}: {e}; variants are made again at the next start",
                        self.dir.display()
                    );
                }
            }
        }
    }

    /// Refreshes the entries the dist uses and removes the others (and leftover temporary files)
    /// once older than `keep_unused`. Returns how many files were removed.
    pub fn prune(&self, used: &HashSet<String>, now: SystemTime, keep_unused: Duration) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let ours = is_cache_name(&name)
                || (name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file());
            if !ours {
                continue;
            }
            if used.contains(&name) {
                // Best effort: a read-only cache simply keeps its dates.
                if let Ok(f) = std::fs::File::open(entry.path()) {
                    let _ = f.set_modified(now);
                }
                continue;
            }
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age > keep_unused && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// A name this cache (of any encoder version) writes: `TAG-HASH-LEN.gz|br`.
fn is_cache_name(name: &str) -> bool {
    let Some(stem) = name
        .strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".br"))
    else {
        return false;
    };
    let mut parts = stem.rsplitn(3, '-');
    let len = parts.next().unwrap_or("");
    let hash = parts.next().unwrap_or("");
    let tag = parts.next().unwrap_or("");
    !tag.is_empty()
        && !tag.starts_with('.')
        && hash.len() == 32
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cheap check of an entry read back: a gzip member starts with its magic and ends with the
/// source's length (mod 2^32); a brotli stream has no such fields.
fn plausible(enc: Encoding, body: &[u8], source_len: u64) -> bool {
    match enc {
        Encoding::Gzip => {
            body.len() >= 18
                && body[..2] == [0x1f, 0x8b]
                && body[body.len() - 4..] == (source_len as u32).to_le_bytes()
        }
        _ => !body.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Vec<u8> {
        "function hello(){return 'wxedge';}\n"
            .repeat(200)
            .into_bytes()
    }

    #[test]
    fn encodes_and_checks_round_trips() {
        let src = text();
        for enc in [Encoding::Gzip, Encoding::Brotli] {
            let c = encode(enc, &src).expect("text compresses");
            assert!(c.len() < src.len() / 5);
            assert!(decodes_to(enc, &c, &src));
            let mut other = src.clone();
            other[10] ^= 1;
            assert!(!decodes_to(enc, &c, &other));
            assert!(!decodes_to(enc, b"garbage", &src));
        }
        // Random bytes do not compress: no variant.
        let mut seed = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert_eq!(encode(Encoding::Gzip, &noise), None);
        assert_eq!(encode(Encoding::Brotli, &noise), None);
    }

    #[test]
    fn manifest_round_trips_and_checks_twins() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let t = Digest::of(b"twin");
        let mut m = Manifest::default();
        m.entries.insert(
            "/x y/a.js.gz".into(),
            Entry {
                source: a,
                twin: Some(t),
            },
        );
        m.entries.insert(
            "/a.png.br".into(),
            Entry {
                source: b,
                twin: None,
            },
        );
        let (back, bad) = Manifest::parse(&m.render());
        assert_eq!((back, bad), (m.clone(), 0));
        assert_eq!(m.check("/x y/a.js.gz", t, a), TwinCheck::Current);
        assert_eq!(m.check("/x y/a.js.gz", t, b), TwinCheck::Stale);
        assert_eq!(m.check("/x y/a.js.gz", b, b), TwinCheck::Shipped);
        assert_eq!(m.check("/other.js.gz", t, a), TwinCheck::Shipped);
        assert!(m.not_worth("/a.png.br", b));
        assert!(!m.not_worth("/a.png.br", a));
        let (_, bad) = Manifest::parse("nonsense\nabc - /x\n# comment\n\n");
        assert_eq!(bad, 2);
    }

    #[test]
    fn digests_of_memory_and_files_agree() {
        let dir = std::env::temp_dir().join(format!("wxedge-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("f"), &big).unwrap();
        assert_eq!(Digest::of_file(&dir.join("f")).unwrap(), Digest::of(&big));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_keeps_results_and_prunes_what_is_unused_and_old() {
        let dir = std::env::temp_dir().join(format!("wxedge-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::new(&dir.join("sub"));
        let src = text();
        let d = Digest::of(&src);
        assert_eq!(cache.get(d, Encoding::Gzip), None);
        let gz = encode(Encoding::Gzip, &src).unwrap();
        cache.put(d, Encoding::Gzip, Some(&gz));
        cache.put(d, Encoding::Brotli, None);
        assert_eq!(
            cache.get(d, Encoding::Gzip),
            Some(Cached::Variant(Bytes::from(gz.clone())))
        );
        assert_eq!(cache.get(d, Encoding::Brotli), Some(Cached::NotWorth));
        assert_eq!(cache.hits.load(Ordering::Relaxed), 2);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 1);
        // A damaged gzip entry (truncated) is not used.
        let other = Digest::of(b"other");
        std::fs::write(
            cache.dir.join(Cache::name(other, Encoding::Gzip)),
            &gz[..gz.len() - 1],
        )
        .unwrap();
        assert_eq!(cache.get(other, Encoding::Gzip), None);
        std::fs::write(cache.dir.join("unrelated.txt"), "x").unwrap();
        std::fs::write(cache.dir.join(".leftover.1-2.tmp"), "x").unwrap();

        let used: HashSet<String> = [Cache::name(d, Encoding::Gzip)].into();
        let now = SystemTime::now();
        assert_eq!(cache.prune(&used, now, CACHE_KEEP_UNUSED), 0, "all young");
        let later = now + CACHE_KEEP_UNUSED + Duration::from_secs(60);
        // The unused br entry, the damaged one and the temporary file go; the used entry (its
        // date refreshed) and files that are not the cache's stay.
        assert_eq!(cache.prune(&used, later, CACHE_KEEP_UNUSED), 3);
        let mut left: Vec<String> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [Cache::name(d, Encoding::Gzip), "unrelated.txt".into()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_cache_is_reported_once_and_ignored() {
        let file = std::env::temp_dir().join(format!("wxedge-cache-file-{}", std::process::id()));
        std::fs::write(&file, "not a directory").unwrap();
        let cache = Cache::new(&file.join("cache"));
        let d = Digest::of(b"x");
        cache.put(d, Encoding::Gzip, None);
        cache.put(d, Encoding::Brotli, None);
        assert_eq!(cache.writes.load(Ordering::Relaxed), 0);
        assert_eq!(cache.get(d, Encoding::Gzip), None);
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn cache_names() {
        let d = Digest::of(b"x");
        assert!(is_cache_name(&Cache::name(d, Encoding::Gzip)));
        assert!(is_cache_name(&Cache::name(d, Encoding::Brotli)));
        assert!(!is_cache_name("a.js.gz"));
        assert!(!is_cache_name("x-0123-1.gz"));
    }
}

/// The encoder's memory, counted by a test allocator: what docs/static-files.md ("Encodings")
/// states as the extra memory of compressing one file, checked on the thread that compresses.
#[cfg(test)]
mod memory {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static LIVE: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
    }

    fn add(n: usize) {
        let _ = LIVE.try_with(|l| {
            l.set(l.get() + n);
            let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
        });
    }

    fn sub(n: usize) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
    }

    // SAFETY: every call goes to the system allocator unchanged; only the counters are extra.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            sub(layout.size());
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size);
            sub(layout.size());
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Peak bytes allocated on this thread while `f` runs, above what was live before.
    fn peak_of(f: impl FnOnce()) -> usize {
        let base = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(base));
        f();
        PEAK.with(|p| p.get()) - base
    }

    /// JS-like text that is not one repeated line: compresses like a bundle does.
    fn bundle(len: usize) -> Vec<u8> {
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let line = format!(
                "function f{}(a,b){{return a.v{}+b*{}||\"k{}\";}}\n",
                seed % 4099,
                seed % 97,
                seed % 1000,
                seed % 313
            );
            out.extend_from_slice(line.as_bytes());
        }
        out.truncate(len);
        out
    }

    /// docs/static-files.md, "Encodings": compressing one file takes at most 24 MiB plus twice
    /// the file above what is live already (brotli 10's match finder over its 1 MiB window and
    /// its block buffers; gzip far less), whatever the file's size up to the in-memory limit.
    #[test]
    fn compressing_one_file_stays_inside_the_stated_bound() {
        for kib in [64usize, 1024] {
            let data = bundle(kib * 1024);
            let bound = 24 * 1024 * 1024 + 2 * data.len();
            for enc in [super::Encoding::Gzip, super::Encoding::Brotli] {
                let mut made = None;
                let peak = peak_of(|| made = super::encode(enc, &data));
                assert!(
                    made.is_some(),
                    "{kib} KiB of JS-like text compresses ({enc:?})"
                );
                assert!(
                    peak <= bound,
                    "{enc:?} of {kib} KiB took {peak} bytes at its peak, above the stated {bound}"
                );
                // Not a vacuous bound: brotli's window state is most of it.
                if enc == super::Encoding::Brotli && kib >= 1024 {
                    assert!(peak > 12 * 1024 * 1024, "{kib} KiB: {peak}");
                }
            }
        }
    }
}
