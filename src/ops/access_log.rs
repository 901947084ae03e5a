//! The access log: nginx's `combined` format by default, JSON lines on request. It never
//! holds cookies, OAuth codes, relay tickets, tokens or secrets: the query's `code` is redacted.
//!
//! Lines cost almost nothing on the request path, like nginx's `access_log ... buffer=64k
//! flush=1s`: each thread formats its lines into its own buffer (no allocation per line),
//! whole buffers go to one writer thread at 64 KiB or at least every second, and that thread
//! alone writes them, whole and in order, so lines are never torn or interleaved. The writer
//! is woken when [`WAKE_AT_BLOCKS`] blocks wait, by the once-a-second flush, or by [`flush`],
//! and writes what waits with one `writev` (a wake-up and a `write` per 64 KiB block cost
//! ~0.05 µs a line more). A log
//! that cannot keep up (a slow pipe, a full disk) never blocks a request: past
//! [`QUEUED_BLOCKS`] blocks waiting, new blocks are dropped and counted
//! (`wxedge_access_log_dropped_lines_total`). [`flush`] writes everything out before the
//! process exits (drain after SIGTERM, graceful upgrade).

use std::fs::OpenOptions;
use std::io::{IoSlice, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crossbeam_utils::CachePadded;
use once_cell::sync::OnceCell;

use super::metrics::METRICS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
    Off,
}

impl Format {
    pub fn parse(s: &str) -> Format {
        match s {
            "json" => Format::Json,
            "off" => Format::Off,
            _ => Format::Combined,
        }
    }
}

/// One request's line. The head's fields are its bytes as received (httparse or h2 checked
/// them): the combined format copies them as they are, escaped; JSON shows them as text.
pub struct Entry<'a> {
    pub client: &'a str,
    pub method: &'a [u8],
    /// Path and query as received; redacted here.
    pub target: &'a [u8],
    pub version: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub referer: &'a [u8],
    pub user_agent: &'a [u8],
    pub duration_ms: f64,
    pub upstream: &'a str,
    pub request_id: &'a str,
    pub class: &'a str,
}

/// A thread's buffer goes to the writer once it holds this much.
const BLOCK_BYTES: usize = 64 * 1024;
/// Blocks waiting for the writer before new ones are dropped (4 MiB).
pub const QUEUED_BLOCKS: usize = 64;
/// Blocks waiting that wake the writer (256 KiB); fewer wait for the next second's flush.
const WAKE_AT_BLOCKS: usize = 4;
/// Blocks written by one `writev` at most (1 MiB).
const MAX_BATCH_BLOCKS: usize = 16;
/// Emptied block buffers kept for reuse (512 KiB at most).
const SPARE_BLOCKS: usize = 8;
/// Lines never wait longer than this in a thread's buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Lines formatted by one thread, not yet handed to the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

/// A thread's pending lines on cache lines of their own: allocated next to the writer's
/// channel (both are made by the first line), they shared a line with what the writer thread
/// updates for every block, and each line's first touch of its buffer waited for that line.
type ThreadBuffer = CachePadded<Mutex<Pending>>;

enum Job {
    Block(Pending),
    /// Everything sent before this is written: say so.
    Sync(SyncSender<()>),
}

struct Log {
    jobs: SyncSender<Job>,
    /// Blocks sent and not yet taken by the writer.
    waiting: Arc<AtomicUsize>,
    writer: std::thread::Thread,
    /// Written blocks' buffers, emptied, for threads to fill again: a block's 64 KiB are
    /// allocated once, not once per block (an allocation that size is fresh pages to fault
    /// in, and memory freed on another thread than the one that allocated it).
    spare: Mutex<Vec<Vec<u8>>>,
    /// Every thread's pending lines, so the flusher and [`flush`] can reach them.
    threads: Mutex<Vec<Arc<ThreadBuffer>>>,
}

static LOG: OnceCell<Log> = OnceCell::new();

thread_local! {
    static MINE: Arc<ThreadBuffer> = {
        let mine = Arc::new(CachePadded::new(Mutex::new(Pending::default())));
        if let Some(log) = LOG.get() {
            log.threads.lock().unwrap_or_else(|e| e.into_inner()).push(mine.clone());
        }
        mine
    };
    /// `[25/Nov/2026:02:00:00 +0000]`'s inside, formatted once per second per thread.
    static CLF_TIME: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Where the lines go, set once at start-up; the writer starts with the first line, in the
/// process that serves (Pingora's `-d` forks after start-up, and threads do not survive it).
static DESTINATION: OnceCell<Option<std::path::PathBuf>> = OnceCell::new();

/// Send lines to stdout (`None`) or append them to `path`, checking now that it can be opened.
/// Without this, [`write`] writes each line straight to stdout (tests, `-t`).
pub fn init(path: Option<&Path>) -> std::io::Result<()> {
    if let Some(p) = path {
        OpenOptions::new().create(true).append(true).open(p)?;
    }
    let _ = DESTINATION.set(path.map(Path::to_path_buf));
    Ok(())
}

/// The writer and the flusher, started by the first line.
fn running() -> Option<&'static Log> {
    let destination = DESTINATION.get()?;
    LOG.get_or_try_init(|| start(destination.as_deref()))
        .map_err(|e| log::error!("access log: {e}; lines go straight to stdout"))
        .ok()
}

fn start(path: Option<&Path>) -> std::io::Result<Log> {
    let out: Box<dyn Write + Send> = match path {
        Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        None => Box::new(std::io::stdout()),
    };
    let (jobs, queue) = sync_channel(QUEUED_BLOCKS);
    let waiting = Arc::new(AtomicUsize::new(0));
    let taken = waiting.clone();
    let writer = std::thread::Builder::new()
        .name("wxedge-access-log".into())
        .spawn(move || write_blocks(out, queue, &taken))?
        .thread()
        .clone();
    std::thread::Builder::new()
        .name("wxedge-log-flush".into())
        .spawn(|| loop {
            std::thread::sleep(FLUSH_EVERY);
            hand_over_all();
        })?;
    Ok(Log {
        jobs,
        waiting,
        writer,
        spare: Mutex::new(Vec::new()),
        threads: Mutex::new(Vec::new()),
    })
}

fn write_blocks(mut out: Box<dyn Write + Send>, queue: Receiver<Job>, waiting: &AtomicUsize) {
    // Blocks taken from the queue, written together in one `writev`.
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        match queue.try_recv() {
            Ok(Job::Block(p)) => {
                waiting.fetch_sub(1, Ordering::Relaxed);
                batch.push(p);
                if batch.len() < MAX_BATCH_BLOCKS {
                    continue;
                }
            }
            Ok(Job::Sync(done)) => {
                write_batch(&mut *out, &mut batch);
                let _ = done.send(());
                continue;
            }
            Err(TryRecvError::Empty) if batch.is_empty() => {
                // Until a sender, the flusher or `flush` wakes it (or the second is over).
                std::thread::park_timeout(FLUSH_EVERY);
                continue;
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return write_batch(&mut *out, &mut batch),
        }
        write_batch(&mut *out, &mut batch);
    }
}

/// Write whole blocks, in order, with as few system calls as the destination takes; the
/// lines of blocks not wholly written are counted as dropped. The buffers go back for reuse.
fn write_batch<W: Write + ?Sized>(out: &mut W, batch: &mut Vec<Pending>) {
    let mut slices: Vec<IoSlice> = batch.iter().map(|p| IoSlice::new(&p.bytes)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => break,
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Blocks before the one `rest` starts in were written whole; a failed flush loses them all.
    let whole = if out.flush().is_err() {
        0
    } else {
        batch.len() - rest.len()
    };
    drop(slices);
    for (i, mut p) in batch.drain(..).enumerate() {
        if i >= whole {
            METRICS.access_log_dropped.inc_by(p.lines);
        }
        p.bytes.clear();
        give_back(p.bytes);
    }
}

/// Keep an emptied block buffer for reuse; a few are enough (one per thread filling, one
/// being written), the rest are freed.
fn give_back(buffer: Vec<u8>) {
    let Some(log) = LOG.get() else { return };
    let mut spare = log.spare.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < SPARE_BLOCKS && buffer.capacity() >= BLOCK_BYTES {
        spare.push(buffer);
    }
}

/// An empty buffer for a block: a spare one, or a new one.
fn fresh_block(log: &Log) -> Vec<u8> {
    let spare = log.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
    spare.unwrap_or_else(|| Vec::with_capacity(BLOCK_BYTES + 1024))
}

/// Give a block to the writer, or count its lines as dropped when the writer is behind.
fn send(log: &Log, block: Pending) {
    let lines = block.lines;
    // Counted before it is sent, so the writer never takes it off the count first.
    let waiting = log.waiting.fetch_add(1, Ordering::Relaxed) + 1;
    match log.jobs.try_send(Job::Block(block)) {
        Ok(()) => {
            if waiting >= WAKE_AT_BLOCKS {
                log.writer.unpark();
            }
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            log.waiting.fetch_sub(1, Ordering::Relaxed);
            METRICS.access_log_dropped.inc_by(lines)
        }
    }
}

fn hand_over_all() {
    let Some(log) = LOG.get() else { return };
    let threads: Vec<_> = log
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for t in threads {
        let block = std::mem::take(&mut *t.lock().unwrap_or_else(|e| e.into_inner()));
        if block.lines > 0 {
            send(log, block);
        }
    }
    log.writer.unpark();
}

/// Blocks handed to the writer and not yet taken: how far behind it is.
pub fn blocks_waiting() -> usize {
    LOG.get()
        .map_or(0, |log| log.waiting.load(Ordering::Relaxed))
}

/// Write out every line logged so far, waiting up to `limit` for the writer.
pub fn flush(limit: Duration) {
    let Some(log) = LOG.get() else { return };
    hand_over_all();
    let (done, wait) = sync_channel(1);
    if log.jobs.send(Job::Sync(done)).is_ok() {
        log.writer.unpark();
        let _ = wait.recv_timeout(limit);
    }
}

/// Log one request.
pub fn write(format: Format, e: &Entry) {
    if format == Format::Off {
        return;
    }
    // Both formats show whole seconds: the coarse clock is enough.
    let now = super::clock::unix_secs();
    let Some(log) = running() else {
        let mut line = Vec::with_capacity(256);
        format_into(&mut line, format, e, now);
        let _ = std::io::stdout().lock().write_all(&line);
        return;
    };
    MINE.with(|mine| {
        let mut p = mine.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes.capacity() == 0 {
            p.bytes = fresh_block(log);
        }
        format_into(&mut p.bytes, format, e, now);
        p.lines += 1;
        if p.bytes.len() >= BLOCK_BYTES {
            let block = std::mem::take(&mut *p);
            drop(p);
            send(log, block);
        }
    });
}

/// Query parameters whose values must never reach a log.
const SECRET_PARAMS: &[&str] = &[
    "code",
    "access_token",
    "refresh_token",
    "secret",
    "token",
    "ticket",
];

/// Whether a query key names a secret (`eq_ignore_ascii_case` compares lengths first).
fn is_secret_param(key: &[u8]) -> bool {
    SECRET_PARAMS
        .iter()
        .any(|s| key.eq_ignore_ascii_case(s.as_bytes()))
}

/// The first `needle` in `hay`: memchr's vector search costs ~70 instructions to start, more
/// than a byte loop over a short field (a path, a query's pair).
fn find(needle: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < 32 {
        hay.iter().position(|&b| b == needle)
    } else {
        memchr::memchr(needle, hay)
    }
}

/// `/p?code=abc&state=x` → `/p?code=REDACTED&state=x`, appended to `out` through `push`,
/// which is called once for each run without a secret (once for nearly every target): a
/// line's cost is mostly per call, not per byte.
fn push_redacted(out: &mut Vec<u8>, target: &[u8], push: fn(&mut Vec<u8>, &[u8])) {
    let Some(query) = find(b'?', target) else {
        return push(out, target);
    };
    // `target[plain_from..]` is pushed as it is, up to the next secret value.
    let mut plain_from = 0;
    let mut piece = query + 1;
    while piece <= target.len() {
        let end = find(b'&', &target[piece..]).map_or(target.len(), |i| piece + i);
        let key_end = find(b'=', &target[piece..end]).map_or(end, |i| piece + i);
        if is_secret_param(&target[piece..key_end]) {
            push(out, &target[plain_from..key_end]);
            out.extend_from_slice(b"=REDACTED");
            plain_from = end;
        }
        piece = end + 1;
    }
    push(out, &target[plain_from..]);
}

/// A head field as text for JSON (obs-text that is not UTF-8 shows as U+FFFD).
fn text(field: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(field)
}

/// A redacted copy (for tests and callers that need a `String`).
pub fn redact(target: &str) -> String {
    let mut out = Vec::with_capacity(target.len());
    push_redacted(&mut out, target.as_bytes(), |o, s| o.extend_from_slice(s));
    String::from_utf8(out).unwrap_or_default()
}

/// An ASCII byte nginx escapes inside the combined format's quotes.
fn escaped(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f)
}

/// Whether `bytes` must go the slow way: a byte to escape, or any non-ASCII (which is checked
/// for UTF-8). Nearly no field does, so this is the whole cost of quoting a User-Agent: 16
/// bytes a step with SSE2 (part of every x86_64), where a byte loop costs ~2.5 instructions
/// a byte; a field shorter than 16 bytes is checked as one padded block.
#[cfg(target_arch = "x86_64")]
fn needs_care(bytes: &[u8]) -> bool {
    if bytes.len() < 16 {
        let mut block = [b'a'; 16];
        block[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `block` is 16 bytes.
        return unsafe { block_needs_care(block.as_ptr()) };
    }
    let last = bytes.len() - 16;
    let mut at = 0;
    // SAFETY: every block read starts at most at `len - 16` (the last one overlaps the one
    // before it), so it is inside `bytes`.
    unsafe {
        while at < last {
            if block_needs_care(bytes.as_ptr().add(at)) {
                return true;
            }
            at += 16;
        }
        block_needs_care(bytes.as_ptr().add(last))
    }
}

/// [`needs_care`] for the 16 bytes at `p`.
///
/// # Safety
/// `p` must point to 16 readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_needs_care(p: *const u8) -> bool {
    use std::arch::x86_64::*;
    // SSE2 is baseline on x86_64; the caller vouches for the 16 bytes.
    let v = _mm_loadu_si128(p.cast());
    let control_max = _mm_set1_epi8(0x1f);
    // An unsigned byte is a control character when max(b, 0x1f) is 0x1f.
    let control = _mm_cmpeq_epi8(_mm_max_epu8(v, control_max), control_max);
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
    let any = _mm_or_si128(_mm_or_si128(control, del), _mm_or_si128(quote, backslash));
    // movemask(v) is the top bits: the non-ASCII bytes.
    (_mm_movemask_epi8(any) | _mm_movemask_epi8(v)) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn needs_care(bytes: &[u8]) -> bool {
    // No early exit: the compiler turns this into wide compares.
    bytes
        .iter()
        .fold(false, |any, &b| any | escaped(b) | !b.is_ascii())
}

/// nginx's escaping inside the combined format's quotes (`"` and `\` escaped, control
/// characters as `\xHH`), except that UTF-8 stays readable: only bytes that are not UTF-8
/// become `\xHH`, so a line is always UTF-8 and loses nothing of what was sent.
fn push_quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    if !needs_care(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut plain_from = 0;
        for (i, &b) in valid.iter().enumerate() {
            if !escaped(b) {
                continue;
            }
            out.extend_from_slice(&valid[plain_from..i]);
            plain_from = i + 1;
            if b == b'"' || b == b'\\' {
                out.extend_from_slice(&[b'\\', b]);
            } else {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
        out.extend_from_slice(&valid[plain_from..]);
        for &b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// `25/Nov/2026:02:00:00 +0000` (UTC: containers run in UTC, and UTC needs no tz database).
fn push_clf_time(out: &mut Vec<u8>, secs: u64) {
    CLF_TIME.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            // RFC 9110 gives "Wed, 25 Nov 2026 02:00:00 GMT"; rearrange it rather than redo calendars.
            let http = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            let f: Vec<&str> = http.split(' ').collect();
            c.1 = match f.as_slice() {
                [_, day, mon, year, time, _] => format!("{day}/{mon}/{year}:{time} +0000"),
                _ => http.clone(),
            };
            c.0 = secs;
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// Append one line (with its newline) in `format`.
/// `now` is the time in seconds since the Unix epoch.
pub fn format_into(out: &mut Vec<u8>, format: Format, e: &Entry, now: u64) {
    match format {
        Format::Off => {}
        Format::Combined => {
            out.extend_from_slice(e.client.as_bytes());
            out.extend_from_slice(b" - - [");
            push_clf_time(out, now);
            out.extend_from_slice(b"] \"");
            out.extend_from_slice(e.method);
            out.push(b' ');
            push_redacted(out, e.target, push_quoted);
            out.push(b' ');
            out.extend_from_slice(e.version.as_bytes());
            out.extend_from_slice(b"\" ");
            out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
            out.push(b' ');
            out.extend_from_slice(itoa::Buffer::new().format(e.bytes).as_bytes());
            out.extend_from_slice(b" \"");
            if e.referer.is_empty() {
                out.push(b'-');
            } else {
                push_redacted(out, e.referer, push_quoted);
            }
            out.extend_from_slice(b"\" \"");
            push_quoted(
                out,
                if e.user_agent.is_empty() {
                    b"-"
                } else {
                    e.user_agent
                },
            );
            out.extend_from_slice(b"\"\n");
        }
        Format::Json => {
            let line = serde_json::json!({
                "time": httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(now)),
                "client": e.client,
                "method": text(e.method),
                "path": redact(&text(e.target)),
                "status": e.status,
                "bytes": e.bytes,
                "duration_ms": (e.duration_ms * 1000.0).round() / 1000.0,
                "upstream": e.upstream,
                "request_id": e.request_id,
                "route": e.class,
                "user_agent": text(e.user_agent),
            });
            let _ = serde_json::to_writer(&mut *out, &line);
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str) -> Entry<'_> {
        Entry {
            client: "192.0.2.1",
            method: b"GET",
            target: target.as_bytes(),
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            referer: b"",
            user_agent: b"curl/8 \"x\"",
            duration_ms: 1.5,
            upstream: "-",
            request_id: "rid",
            class: "static",
        }
    }

    fn line(format: Format, e: &Entry, t: u64) -> String {
        let mut out = Vec::new();
        format_into(&mut out, format, e, t);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn combined_format_and_redaction() {
        let t = 1_795_000_000;
        let l = line(
            Format::Combined,
            &entry("/p?code=SECRETCODE&state=STATE"),
            t,
        );
        assert!(!l.contains("SECRETCODE"), "{l}");
        assert!(l.starts_with("192.0.2.1 - - ["), "{l}");
        assert!(
            l.ends_with(
                "\"GET /p?code=REDACTED&state=STATE HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"x\\\"\"\n"
            ),
            "{l}"
        );
        assert!(l.contains(" +0000]"), "{l}");
        assert_eq!(l.matches('\n').count(), 1);
        let l = line(Format::Combined, &entry("/a\"b\x01"), t);
        assert!(l.contains("/a\\\"b\\x01 HTTP/1.1"), "{l}");
        let mut quoted = Vec::new();
        push_quoted(&mut quoted, "\\a\x7fb\"\"é".as_bytes());
        assert_eq!(String::from_utf8(quoted).unwrap(), "\\\\a\\x7Fb\\\"\\\"é");
        let json = line(Format::Json, &entry("/x?access_token=T"), t);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["path"], "/x?access_token=REDACTED");
        assert_eq!(v["request_id"], "rid");
        assert!(line(Format::Off, &entry("/"), t).is_empty());
    }

    #[test]
    fn the_wide_check_agrees_with_the_byte_check_everywhere() {
        for len in 0..48 {
            let plain = vec![b'a'; len];
            assert!(!needs_care(&plain), "{len}");
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = plain.clone();
                    v[at] = b;
                    let care = escaped(b) || !b.is_ascii();
                    assert_eq!(needs_care(&v), care, "len {len} at {at} byte {b:#x}");
                }
            }
        }
    }

    #[test]
    fn quoting_keeps_utf8_and_escapes_what_is_not() {
        let quoted = |b: &[u8]| {
            let mut out = Vec::new();
            push_quoted(&mut out, b);
            String::from_utf8(out).expect("a quoted field is UTF-8")
        };
        assert_eq!(quoted("微信 \"x\"".as_bytes()), "微信 \\\"x\\\"");
        assert_eq!(quoted(b"a\xffb\xe5\x8c"), "a\\xFFb\\xE5\\x8C");
        assert_eq!(quoted(b"\xe5\x8c\x97\t"), "北\\x09");
        assert_eq!(quoted(b"plain"), "plain");
    }

    /// A destination taking at most `per_call` bytes a call, and failing once `capacity` is used.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
        capacity: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = self.capacity - self.got.len();
            if room == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.per_call).min(room);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn blocks(texts: &[&str]) -> Vec<Pending> {
        texts
            .iter()
            .map(|t| Pending {
                bytes: t.as_bytes().to_vec(),
                lines: t.matches('\n').count() as u64,
            })
            .collect()
    }

    #[test]
    fn a_batch_is_written_whole_and_in_order_or_its_unwritten_lines_are_counted() {
        let texts = ["a 1\nb 2\n", "c 3\n", "d 4\ne 5\nf 6\n"];
        let dropped = METRICS.access_log_dropped.get();
        // A pipe taking 3 bytes a call: everything arrives, in order.
        let mut slow = Trickle {
            got: Vec::new(),
            per_call: 3,
            capacity: usize::MAX,
        };
        let mut batch = blocks(&texts);
        write_batch(&mut slow, &mut batch);
        assert!(batch.is_empty());
        assert_eq!(String::from_utf8(slow.got).unwrap(), texts.concat());
        assert_eq!(METRICS.access_log_dropped.get(), dropped);

        // A disk full after 10 bytes: the first block (8 bytes) is whole, the other two are not.
        let mut full = Trickle {
            got: Vec::new(),
            per_call: 3,
            capacity: 10,
        };
        let mut batch = blocks(&texts);
        write_batch(&mut full, &mut batch);
        assert!(batch.is_empty());
        assert_eq!(
            METRICS.access_log_dropped.get(),
            dropped + 4,
            "c, d, e and f"
        );
    }

    #[test]
    fn redaction_keeps_everything_else() {
        assert_eq!(redact("/p"), "/p");
        assert_eq!(redact("/p?a=1&Code=x&b"), "/p?a=1&Code=REDACTED&b");
        assert_eq!(redact("/p?token=&x=1"), "/p?token=REDACTED&x=1");
        assert_eq!(
            redact("/_wxedge/relay/ticket?ticket=AbC%2B&state=wxe1f"),
            "/_wxedge/relay/ticket?ticket=REDACTED&state=wxe1f"
        );
    }

    /// The obvious version (split on `?`, `&`, `=`), which the byte search must agree with.
    fn redact_by_splitting(target: &str) -> String {
        let Some((path, query)) = target.split_once('?') else {
            return target.to_string();
        };
        let pieces: Vec<String> = query
            .split('&')
            .map(|kv| {
                let key = kv.split('=').next().unwrap_or("");
                if SECRET_PARAMS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                    format!("{key}=REDACTED")
                } else {
                    kv.to_string()
                }
            })
            .collect();
        format!("{path}?{}", pieces.join("&"))
    }

    #[test]
    fn redaction_agrees_with_splitting_on_every_shape() {
        let parts = [
            "",
            "?",
            "&",
            "=",
            "code",
            "CODE=",
            "code=x",
            "tokens=1",
            "ticket",
            "a=b=c",
            "?x",
            "secret=s",
            "access_token=t",
            "é=ü",
            "%63ode=1",
        ];
        let mut n = 0;
        for a in parts {
            for b in parts {
                for c in parts {
                    for sep in ["&", "?", "=", ""] {
                        let t = format!("/p?{a}{sep}{b}&{c}");
                        assert_eq!(redact(&t), redact_by_splitting(&t), "{t}");
                        let t = format!("/{a}{sep}{b}{c}");
                        assert_eq!(redact(&t), redact_by_splitting(&t), "{t}");
                        n += 2;
                    }
                }
            }
        }
        assert!(n > 20_000);
        assert!(!redact("/cb?state=1&Code=SECRET&code=TWICE").contains("SECRET"));
        assert!(!redact("/cb?state=1&Code=SECRET&code=TWICE").contains("TWICE"));
    }
}
