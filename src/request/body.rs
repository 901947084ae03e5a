//! A request body, decoded from its [`Framing`] as the bytes arrive and kept until it is sent
//! on (nginx's `proxy_request_buffering on`: an answer must never leave a body behind to be
//! taken for the next request, and a retry can send it again). What goes on is always one
//! `Content-Length` body, whatever framing the client used.
//!
//! Kept like nginx keeps it: in memory when it fits in `buffer_bytes` (`client_body_buffer_size`),
//! else in an unnamed temporary file (`client_body_temp_path`), so an upload that stalls
//! holds no more memory than its connection's read buffer, however large it is. The bytes in temporary files, all uploads
//! together, are bounded too (`max_temp_bytes`): past it a new upload is refused with 503
//! rather than filling the disk.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Framing;
use crate::proxy::chunked::Chunked;

/// Where and how request bodies are kept (the `proxy.body_*` settings).
#[derive(Debug, Clone)]
pub struct SpoolPolicy {
    /// The most of one body kept in memory; the rest goes to a temporary file.
    pub buffer_bytes: usize,
    /// The directory of the temporary files (they are unnamed: nothing is left behind).
    pub temp_dir: PathBuf,
    /// The most bytes all bodies may hold in temporary files at once.
    pub max_temp_bytes: u64,
}

impl Default for SpoolPolicy {
    fn default() -> Self {
        SpoolPolicy {
            buffer_bytes: 16 * 1024,
            temp_dir: std::env::temp_dir(),
            max_temp_bytes: 1 << 30,
        }
    }
}

/// Bytes of request bodies in temporary files now, all requests together.
static TEMP_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes of request bodies in temporary files now (`wxedge_request_body_temp_bytes`).
pub fn temp_bytes() -> u64 {
    TEMP_BYTES.load(Ordering::Relaxed)
}

/// The most read from a temporary file at once when a body is sent on.
const FILE_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Broken chunked framing: 400, and the connection closes.
    Malformed(&'static str),
    /// Larger than the limit: 413.
    TooLarge,
    /// The temporary file could not be created or written: 500 (logged once, with the cause).
    Storage,
    /// The temporary files of all uploads together are at `max_temp_bytes`: 503.
    Busy,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::Malformed(_) => 400,
            BodyError::TooLarge => 413,
            BodyError::Storage => 500,
            BodyError::Busy => 503,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            BodyError::Malformed(why) => why,
            BodyError::TooLarge => "request body is too large",
            BodyError::Storage => "the request body could not be stored",
            BodyError::Busy => "too many uploads are being received; retry shortly",
        }
    }
}

/// The part of a body past the memory buffer, in an unnamed temporary file; its bytes count
/// in [`temp_bytes`] until it is dropped (the file goes with it).
#[derive(Debug)]
pub struct TempBody {
    file: std::fs::File,
    len: u64,
}

impl Drop for TempBody {
    fn drop(&mut self) {
        TEMP_BYTES.fetch_sub(self.len, Ordering::Relaxed);
    }
}

impl TempBody {
    fn create(policy: &SpoolPolicy) -> Result<TempBody, BodyError> {
        match tempfile::tempfile_in(&policy.temp_dir) {
            Ok(file) => Ok(TempBody { file, len: 0 }),
            Err(e) => {
                log::error!(
                    "request body: cannot create a temporary file in {}: {e}",
                    policy.temp_dir.display()
                );
                Err(BodyError::Storage)
            }
        }
    }

    fn append(&mut self, data: &[u8], policy: &SpoolPolicy) -> Result<(), BodyError> {
        let n = data.len() as u64;
        if TEMP_BYTES.fetch_add(n, Ordering::Relaxed) + n > policy.max_temp_bytes {
            TEMP_BYTES.fetch_sub(n, Ordering::Relaxed);
            return Err(BodyError::Busy);
        }
        self.len += n;
        // A plain write, as nginx writes its temporary files: it lands in the page cache.
        self.file.write_all(data).map_err(|e| {
            log::error!("request body: cannot write a temporary file: {e}");
            BodyError::Storage
        })
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Bytes from `at` into `buf` (positioned reads: the body can be read again for a retry).
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let want = buf.len().min((self.len - at.min(self.len)) as usize);
        if want == 0 {
            return Ok(0);
        }
        match self.file.read_at(&mut buf[..want], at)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a request body's temporary file shrank",
            )),
            n => Ok(n),
        }
    }

    /// The file as a reader from its start.
    pub fn reader(self) -> TempReader {
        TempReader { body: self, at: 0 }
    }
}

/// Reads a [`TempBody`] from its start, then reports the end.
#[derive(Debug)]
pub struct TempReader {
    body: TempBody,
    at: u64,
}

impl AsyncRead for TempReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The bytes are in the page cache (written moments ago): read them here, as
        // nginx does, rather than on a blocking thread.
        let at = self.at;
        let n = self.body.read_at(buf.initialize_unfilled(), at)?;
        buf.advance(n);
        self.at += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A whole body: in memory, or (past the buffer) in a temporary file.
#[derive(Debug, Default)]
pub struct Spooled {
    memory: Vec<u8>,
    file: Option<TempBody>,
}

impl Spooled {
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.file.as_ref().map_or(0, TempBody::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add `data` at the end: in memory while the whole body fits in the buffer; past it, the
    /// body moves to a file (what memory held too: a stalled upload then holds no body bytes
    /// in memory at all, only its connection's read buffer).
    pub fn push(&mut self, data: &[u8], policy: &SpoolPolicy) -> Result<(), BodyError> {
        if let Some(file) = &mut self.file {
            return file.append(data, policy);
        }
        let need = self.memory.len() + data.len();
        if need <= policy.buffer_bytes {
            if need > self.memory.capacity() {
                // Grow as a Vec does, but never past the buffer (doubling would reach twice it).
                let want = need.max(2 * self.memory.len()).min(policy.buffer_bytes);
                self.memory.reserve_exact(want - self.memory.len());
            }
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let mut file = TempBody::create(policy)?;
        file.append(&std::mem::take(&mut self.memory), policy)?;
        file.append(data, policy)?;
        self.file = Some(file);
        Ok(())
    }

    /// The bytes kept in memory: the whole body, or nothing when it is in a file.
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }

    /// The memory part and the file part (one of them empty), for a reader that takes them
    /// apart.
    pub fn into_parts(self) -> (Vec<u8>, Option<TempBody>) {
        (self.memory, self.file)
    }

    /// Write `head`, then the whole body, to `w` (again from the start on every call).
    pub async fn write_after<W: AsyncWrite + Unpin>(
        &self,
        head: &[u8],
        w: &mut W,
    ) -> io::Result<()> {
        if self.memory.is_empty() {
            w.write_all(head).await?;
        } else {
            // One write for the head and the usual small body.
            let mut first = Vec::with_capacity(head.len() + self.memory.len());
            first.extend_from_slice(head);
            first.extend_from_slice(&self.memory);
            w.write_all(&first).await?;
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut chunk = vec![0u8; FILE_CHUNK.min(file.len as usize)];
        let mut at = 0;
        while at < file.len {
            let n = file.read_at(&mut chunk, at)?;
            w.write_all(&chunk[..n]).await?;
            at += n as u64;
        }
        Ok(())
    }
}

enum Decoder {
    Length { left: u64 },
    Chunked(Chunked),
}

/// A body being read: decoded from its framing, bounded by the limit, kept in a [`Spooled`].
pub struct Body<'p> {
    decoder: Decoder,
    limit: u64,
    policy: &'p SpoolPolicy,
    spooled: Spooled,
    /// Decoded chunked data on its way to `spooled` (at most one read's worth).
    scratch: Vec<u8>,
    done: bool,
}

impl<'p> Body<'p> {
    /// A body of this framing, refused up front when its declared length is over `limit`.
    pub fn new(
        framing: Framing,
        limit: u64,
        policy: &'p SpoolPolicy,
    ) -> Result<Body<'p>, BodyError> {
        let (decoder, done) = match framing {
            Framing::Empty => (Decoder::Length { left: 0 }, true),
            Framing::Length(n) if n > limit => return Err(BodyError::TooLarge),
            Framing::Length(n) => (Decoder::Length { left: n }, false),
            Framing::Chunked => (Decoder::Chunked(Chunked::default()), false),
        };
        Ok(Body {
            decoder,
            limit,
            policy,
            spooled: Spooled::default(),
            scratch: Vec::new(),
            done,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Take body bytes from the start of `input`; how many were the body's. Bytes after the
    /// body's end (a pipelined request) are left alone.
    pub fn take(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        if self.done {
            return Ok(0);
        }
        let used = match &mut self.decoder {
            Decoder::Length { left } => {
                let n = (*left).min(input.len() as u64) as usize;
                self.spooled.push(&input[..n], self.policy)?;
                *left -= n as u64;
                self.done = *left == 0;
                n
            }
            Decoder::Chunked(c) => {
                self.scratch.clear();
                let end = c
                    .feed(input, Some(&mut self.scratch))
                    .map_err(|m| BodyError::Malformed(m.0))?;
                if self.spooled.len() + self.scratch.len() as u64 > self.limit {
                    return Err(BodyError::TooLarge);
                }
                self.spooled.push(&self.scratch, self.policy)?;
                self.done = end.is_some();
                end.unwrap_or(input.len())
            }
        };
        Ok(used)
    }

    pub fn into_spooled(self) -> Spooled {
        self.spooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_buffer() -> SpoolPolicy {
        SpoolPolicy {
            buffer_bytes: 4,
            ..SpoolPolicy::default()
        }
    }

    async fn sent(body: &Spooled) -> Vec<u8> {
        let mut out = Vec::new();
        body.write_after(b"HEAD|", &mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn length_bodies_stop_at_their_end() {
        let policy = SpoolPolicy::default();
        let mut b = Body::new(Framing::Length(5), 10, &policy).unwrap();
        assert_eq!(b.take(b"hel").unwrap(), 3);
        assert!(!b.is_done());
        assert_eq!(b.take(b"loGET /").unwrap(), 2);
        assert!(b.is_done());
        assert_eq!(sent(&b.into_spooled()).await, b"HEAD|hello");
        assert_eq!(
            Body::new(Framing::Length(11), 10, &policy).err(),
            Some(BodyError::TooLarge)
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_bounded() {
        let policy = SpoolPolicy::default();
        let mut b = Body::new(Framing::Chunked, 10, &policy).unwrap();
        assert_eq!(b.take(b"5\r\nhello\r\n0\r\n\r\nNEXT").unwrap(), 15);
        assert!(b.is_done());
        assert_eq!(sent(&b.into_spooled()).await, b"HEAD|hello");
        let mut b = Body::new(Framing::Chunked, 4, &policy).unwrap();
        assert_eq!(b.take(b"5\r\nhello\r\n"), Err(BodyError::TooLarge));
        let mut b = Body::new(Framing::Chunked, 100, &policy).unwrap();
        assert!(matches!(
            b.take(b"8\r\nhello\r\n0\r\n\r\n"),
            Err(BodyError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn past_the_buffer_a_body_goes_to_a_file_and_comes_back_whole_every_time() {
        let policy = small_buffer();
        let before = temp_bytes();
        let mut b = Body::new(Framing::Chunked, 1000, &policy).unwrap();
        b.take(b"3\r\nabc\r\n").unwrap();
        b.take(b"6\r\ndefghi\r\n0\r\n\r\n").unwrap();
        let body = b.into_spooled();
        assert_eq!(body.memory(), b"");
        assert_eq!(body.len(), 9);
        assert!(temp_bytes() >= before + 9);
        // A retry sends the same bytes again.
        assert_eq!(sent(&body).await, b"HEAD|abcdefghi");
        assert_eq!(sent(&body).await, b"HEAD|abcdefghi");
        let (memory, file) = body.into_parts();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut file.unwrap().reader(), &mut rest)
            .await
            .unwrap();
        assert_eq!([memory, rest].concat(), b"abcdefghi");
    }

    #[test]
    fn the_temporary_files_of_all_bodies_together_are_bounded() {
        let policy = SpoolPolicy {
            buffer_bytes: 0,
            max_temp_bytes: temp_bytes() + 100,
            ..SpoolPolicy::default()
        };
        let mut a = Spooled::default();
        a.push(&[1; 60], &policy).unwrap();
        let mut b = Spooled::default();
        assert_eq!(b.push(&[2; 60], &policy), Err(BodyError::Busy));
        drop(a);
        b.push(&[2; 60], &policy).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_hold_files_is_a_storage_error() {
        let policy = SpoolPolicy {
            buffer_bytes: 0,
            temp_dir: "/nonexistent/wxedge".into(),
            ..SpoolPolicy::default()
        };
        let mut b = Spooled::default();
        assert_eq!(b.push(b"x", &policy), Err(BodyError::Storage));
    }
}
