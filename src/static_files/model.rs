//! What a loaded static file is: its variants (one per content encoding), where their bytes
//! live and the header lines prebuilt for them. Loading (`tree`), compressing (`compress`) and
//! answering (`respond`) all work on these types; this module imports none of them, so none of
//! them needs another just for the data.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

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
    /// Large memory bodies' copy for `sendfile(2)`, made in the background.
    pub sendfile: SendFile,
}

/// A servable file. `StaticFile::new` is in `tree`, which builds files at load time.
#[derive(Debug)]
pub struct StaticFile {
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    /// Truncated to whole seconds, as HTTP dates are.
    pub modified: SystemTime,
    pub last_modified: HeaderValue,
    /// Whether the file has (or will have, once compressed) encoded variants: answers carry
    /// `Vary: Accept-Encoding` from the start, so they do not change when the variants arrive.
    pub vary: bool,
    /// What the file is served with from the start: identity first, then the twins the build
    /// shipped, smallest first; and their serialized header lines, same order.
    pub(super) loaded: Encoded,
    /// The same plus the variants compressed in the background, once they are made.
    pub(super) compressed: OnceLock<Encoded>,
}

/// A file's variants with their prebuilt header lines.
#[derive(Debug, Default)]
pub(super) struct Encoded {
    pub(super) variants: Vec<Variant>,
    pub(super) prebuilt: Vec<Prebuilt>,
}

impl StaticFile {
    /// Identity first; then encoded variants, smallest first.
    pub fn variants(&self) -> &[Variant] {
        &self.current().variants
    }
    /// Serialized header lines per variant (same order as [`Self::variants`]).
    pub fn prebuilt(&self) -> &[Prebuilt] {
        &self.current().prebuilt
    }
    fn current(&self) -> &Encoded {
        self.compressed.get().unwrap_or(&self.loaded)
    }
    pub fn identity(&self) -> &Variant {
        &self.variants()[0]
    }
    pub fn has_encodings(&self) -> bool {
        self.vary
    }
}

/// Header lines of the two answers every variant gets most (built by `respond::prebuild`).
#[derive(Debug, Clone, Default)]
pub struct Prebuilt {
    pub(super) ok: Bytes,
    pub(super) not_modified: Bytes,
    pub(super) ok_map: HeaderMap,
    pub(super) not_modified_map: HeaderMap,
}

/// Bodies at least this large are also kept in a memory file, so the front door can hand them
/// to the kernel with `sendfile(2)` like nginx does, instead of copying them through a write.
pub const SENDFILE_MIN_BYTES: u64 = 16 * 1024;

/// A copy of a memory body in an unnamed file, for `sendfile(2)` (bodies of
/// [`SENDFILE_MIN_BYTES`] and more). Made by the background work after the listener opens, not
/// at load: writing a 100 MB dist's copies took longer than reading it. Until it exists the
/// body is written from memory. Clones share it, so a file's identity keeps its one copy when
/// compressed variants are added.
#[derive(Debug, Clone, Default)]
pub struct SendFile(std::sync::Arc<std::sync::OnceLock<std::fs::File>>);

impl SendFile {
    pub fn get(&self) -> Option<&std::fs::File> {
        self.0.get()
    }

    /// Makes the copy of `variant`'s body when it is large, in memory and has none yet.
    pub fn make(variant: &Variant) {
        match &variant.body {
            Body::Memory(b)
                if variant.len >= SENDFILE_MIN_BYTES && variant.sendfile.get().is_none() =>
            {
                if let Some(file) = memory_file(b) {
                    let _ = variant.sendfile.0.set(file);
                }
            }
            _ => {}
        }
    }
}

/// An unnamed file holding `data`: `O_TMPFILE` in the temporary directory (its page cache uses
/// large folios where the file system has them, which made `sendfile` of a 60 KB asset ~15 %
/// cheaper than from shmem), else a `memfd`.
#[cfg(target_os = "linux")]
fn memory_file(data: &[u8]) -> Option<std::fs::File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(std::env::temp_dir().as_os_str().as_bytes()).ok()?;
    // SAFETY: NUL-terminated path and name; a valid fd is owned by the File from here on.
    let mut fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        fd = unsafe { libc::memfd_create(c"wxedge-static".as_ptr(), libc::MFD_CLOEXEC) };
    }
    if fd < 0 {
        return None;
    }
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(data).ok()?;
    Some(file)
}

#[cfg(not(target_os = "linux"))]
fn memory_file(_data: &[u8]) -> Option<std::fs::File> {
    None
}
