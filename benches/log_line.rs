//! The access log line's CPU, timed alone (issue 11: at most 0.5 µs per line).
//!
//! A request's record is started and dropped in a loop, exactly as the request path does it
//! (metrics, the line formatted into the thread's buffer, blocks handed to the writer thread,
//! which appends them to a file): once with the log on, once off, alternating, and the
//! difference in the process's CPU time (every thread, system time included) per request is
//! what a line costs. Caches are warmer here than between real requests, so this is the low
//! estimate; `bench/log_instructions.py` gives the high one (the line's instructions at the
//! request path's own rate). Checks that the file holds every line written.
//!
//!     cargo bench --bench log_line [-- ROUNDS LINES_PER_ROUND]
//!
//! Prints one line per request shape: `log line, timed alone: <µs> us of CPU per line (<shape>; ...)`.
//! `cargo test` runs it too, as a smoke (one small round, debug build): its numbers mean
//! nothing there, but a lost line fails it.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wxedge::access_log_bench::{
    blocks_waiting, flush, init, Format, LogFields, RequestRecord, RouteClass,
};
use wxedge::request::client::ClientAddr;

const WECHAT_UA: &str =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800322e) NetType/WIFI Language/zh_CN";

/// Blocks waiting for the writer at which the loop waits for it (the log drops at 64).
const PACE_AT_BLOCKS: usize = 8;

/// CPU time of the whole process (all threads: the writer's too), in nanoseconds.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time of the log's writer thread so far, in nanoseconds (its `schedstat`), 0 before it starts.
fn writer_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "wxedge-access-l" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            return stat
                .split(' ')
                .next()
                .and_then(|ns| ns.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// CPU nanoseconds per request for `n` requests answered with `format`: the whole process's,
/// and the writer thread's share of it.
fn per_request_ns(format: Format, fields: &LogFields, client: &ClientAddr, n: u64) -> (f64, f64) {
    let writer_start = writer_cpu_ns();
    let start = process_cpu_ns();
    for i in 0..n {
        // This loop makes lines ~20x faster than two cores can answer requests: a few ms of the
        // writer thread not being scheduled would fill the queue, and the log's guard would drop
        // (and count) blocks, so fewer lines would be written and timed. Let it catch up; the
        // check and the sleeps cost the same in the rounds with the log off.
        if i % 64 == 0 {
            while blocks_waiting() >= PACE_AT_BLOCKS {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let mut record = RequestRecord::start(
            format,
            String::from("0123456789abcdef"),
            client.clone(),
            || fields.clone(),
        );
        record.answered(RouteClass::Static, 200, 1234);
        drop(record);
    }
    // The writer's share belongs to these lines: wait for it.
    flush(Duration::from_secs(30));
    let total = process_cpu_ns() - start;
    let writer = writer_cpu_ns().saturating_sub(writer_start);
    (total as f64 / n as f64, writer as f64 / n as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`, `cargo test` nothing; the numbers are ours.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (rounds, lines) = if benchmarking {
        (5, 200_000)
    } else {
        (1, 2_000)
    };
    let rounds = numbers.first().copied().unwrap_or(rounds).max(1);
    let lines = numbers.get(1).copied().unwrap_or(lines).max(10);

    let path = std::env::temp_dir().join(format!("wxedge-log-line-{}.log", std::process::id()));
    init(Some(&path)).expect("open the log file");
    let client = ClientAddr {
        client: Arc::from("203.0.113.9"),
        hop: Arc::from("203.0.113.9"),
        hop_trusted: false,
    };
    let field = |s: &'static str| Bytes::from_static(s.as_bytes());
    let shapes = [
        (
            "a WeChat browser's request: 180-byte User-Agent, a Referer with a query",
            LogFields {
                method: field("GET"),
                target: field("/index.html"),
                version: "HTTP/1.1",
                referer: field("https://bench.local/pages/index/index?from=share"),
                user_agent: field(WECHAT_UA),
            },
        ),
        (
            "wrk's bare request: no User-Agent, no Referer",
            LogFields {
                method: field("GET"),
                target: field("/index.html"),
                version: "HTTP/1.1",
                referer: Bytes::new(),
                user_agent: Bytes::new(),
            },
        ),
    ];

    let mut written = 0;
    for (shape, fields) in &shapes {
        // Warm both paths (the writer thread starts with the first line).
        per_request_ns(Format::Combined, fields, &client, lines / 10);
        per_request_ns(Format::Off, fields, &client, lines / 10);
        written += lines / 10;
        let (mut diffs, mut on, mut off, mut writer) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (a, a_writer) = per_request_ns(Format::Combined, fields, &client, lines);
            let (b, _) = per_request_ns(Format::Off, fields, &client, lines);
            written += lines;
            diffs.push(a - b);
            on.push(a);
            off.push(b);
            writer.push(a_writer);
        }
        let per_round: Vec<String> = diffs.iter().map(|d| format!("{:.3}", d / 1000.0)).collect();
        let line_us = median(diffs) / 1000.0;
        println!(
            "log line, timed alone: {line_us:.3} us of CPU per line ({shape}; of which the writer thread's \
             writes {:.3} us; per request with the log on {:.3} us, off {:.3} us; median of {rounds} rounds \
             of {lines} lines: {}); target at most 0.5 us: {}",
            median(writer) / 1000.0,
            median(on) / 1000.0,
            median(off) / 1000.0,
            per_round.join(", "),
            match (benchmarking, line_us <= 0.5) {
                (false, _) => "not judged (cargo test's debug build)",
                (true, true) => "met",
                (true, false) => "missed",
            }
        );
    }

    let file = std::fs::File::open(&path).expect("read the log file back");
    let found = std::io::BufReader::new(file).lines().count() as u64;
    let _ = std::fs::remove_file(&path);
    if found != written {
        eprintln!("log_line: {written} lines written, {found} in the file: lines were lost");
        std::process::exit(1);
    }
}
