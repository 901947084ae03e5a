//! Range requests through the public static-file API: `StaticSite::answer` with an arbitrary
//! `Range` (and `If-Range`) over a small dist tree made at start-up.
//!
//! Input: byte 0 picks the file, byte 1 the flags (HEAD, Accept-Encoding, If-Range), the rest
//! is the `Range` value (and, after a `\n`, a fuzzed `If-Range` when the flags say so).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wxedge::config::StaticSettings;
use wxedge::static_files::model::{Body, Encoding};
use wxedge::static_files::{Answer, Conditions, Piece, StaticSite};

/// (URL path, size). `text.txt` gets gzip and br variants; `disk.bin` is served from disk.
const FILES: [(&str, usize); 6] = [
    ("/empty.bin", 0),
    ("/one.bin", 1),
    ("/small.bin", 100),
    ("/text.txt", 3000),
    ("/disk.bin", 5000),
    ("/two.bin", 2),
];

fn content(name: &str, len: usize) -> Vec<u8> {
    if name.ends_with(".txt") {
        b"the quick brown fox jumps over the lazy dog. "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    } else {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }
}

fn site() -> &'static StaticSite {
    static SITE: OnceLock<StaticSite> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("wxedge-fuzz-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (path, len) in FILES {
            std::fs::write(dir.join(&path[1..]), content(path, len)).unwrap();
        }
        let opts = StaticSettings {
            memory_max_file_bytes: 4096,
            compress_min_bytes: 1024,
            ..StaticSettings::default()
        };
        let site = StaticSite::load(&dir, &opts, &[]).expect("load the fuzz dist");
        // The edge makes compressed variants in the background; here, before fuzzing.
        site.tree.compress_pending();
        for (path, _) in FILES {
            assert!(site.tree.files.contains_key(path), "{path} not loaded");
        }
        site
    })
}

fn header<'p>(plan: &'p wxedge::static_files::Plan, name: &str) -> Option<&'p str> {
    plan.headers
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_str().expect("ASCII header"))
}

/// `bytes S-E/T` → (S, E, T).
fn content_range(v: &str) -> (u64, u64, u64) {
    let rest = v
        .strip_prefix("bytes ")
        .unwrap_or_else(|| panic!("Content-Range {v:?}"));
    let (range, total) = rest.split_once('/').expect("Content-Range total");
    let (s, e) = range.split_once('-').expect("Content-Range range");
    (
        s.parse().unwrap(),
        e.parse().unwrap(),
        total.parse().unwrap(),
    )
}

fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().unwrap())
}

/// The one satisfiable range RFC 9110 §14.1.2 gives for a plain single spec, if it is one.
fn expected_single(range: &str, total: u64) -> Option<(u64, u64)> {
    let spec = range.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n = digits(b)?;
        (n > 0 && total > 0).then(|| (total - n.min(total), total - 1))
    } else {
        let first = digits(a)?;
        let last = if b.is_empty() { u64::MAX } else { digits(b)? };
        (first <= last && first < total).then(|| (first, last.min(total - 1)))
    }
}

fn check_piece(piece: &Piece, body: &Body, data: &[u8], start: u64, len: u64) {
    assert_eq!(piece.len(), len);
    match (piece, body) {
        (Piece::Memory(b), Body::Memory(_)) => {
            if !data.is_empty() {
                assert_eq!(&b[..], &data[start as usize..(start + len) as usize]);
            }
        }
        (
            Piece::File {
                start: s, len: l, ..
            },
            Body::Disk(_),
        ) => {
            assert_eq!((*s, *l), (start, len));
        }
        (p, _) => panic!("piece {p:?} does not match the variant's body"),
    }
}

fuzz_target!(|input: &[u8]| {
    let site = site();
    let [which, flags, rest @ ..] = input else {
        return;
    };
    let (path, size) = FILES[*which as usize % FILES.len()];
    let head = flags & 1 == 1;
    let accept_encoding =
        [None, Some("gzip"), Some("br"), Some("gzip, br")][(flags >> 1) as usize & 3];
    let text = String::from_utf8_lossy(rest);
    let (range, fuzzed_if_range) = match text.split_once('\n') {
        Some((r, i)) => (r, Some(i)),
        None => (&*text, None),
    };
    let file = &site.tree.files[path];
    let date = file.last_modified.to_str().unwrap().to_string();
    let wrong_date = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
    let if_range_choice = (flags >> 3) & 7;
    let c0 = Conditions {
        accept_encoding,
        ..Default::default()
    };
    // The variant chosen does not depend on Range: find its validator for If-Range.
    let etag_of = |enc: Encoding| {
        file.variants()
            .iter()
            .find(|v| v.encoding == enc)
            .unwrap()
            .etag
            .to_str()
            .unwrap()
            .to_string()
    };
    let chosen = match site.answer(path, None, &c0, true) {
        Answer::File(p) => p.encoding,
        other => panic!("{path}: {other:?}"),
    };
    let etag = etag_of(chosen);
    let weak = format!("W/{etag}");
    let (if_range, if_range_holds): (Option<&str>, Option<bool>) = match if_range_choice {
        0 => (None, Some(true)),
        1 => (Some(&etag), Some(true)),
        2 => (Some("\"other\""), Some(false)),
        3 => (Some(&date), Some(true)),
        4 => (Some(&wrong_date), Some(false)),
        5 => (Some(&weak), Some(false)), // a weak validator never matches for If-Range
        _ => (fuzzed_if_range, None),
    };
    let c = Conditions {
        accept_encoding,
        range: Some(range),
        if_range,
        ..Default::default()
    };
    let plan = match site.answer(path, None, &c, head) {
        Answer::File(p) => p,
        other => panic!("{path}: {other:?}"),
    };
    assert_eq!(plan.encoding, chosen, "Range changed the encoding");
    let variant = file
        .variants()
        .iter()
        .find(|v| v.encoding == plan.encoding)
        .unwrap();
    let total = variant.len;
    let data: Vec<u8> = match &variant.body {
        Body::Memory(b) => b.to_vec(),
        Body::Disk(_) => vec![],
    };
    if plan.encoding == Encoding::Identity {
        assert_eq!(total, size as u64);
    }
    let is_bytes = range.trim_start().starts_with("bytes=");
    if !is_bytes || if_range_holds == Some(false) {
        assert_eq!(plan.status, 200, "{range:?} if-range {if_range:?}");
    }
    if head || plan.status == 416 {
        assert!(plan.body.is_empty());
    }
    match plan.status {
        200 => {
            assert_eq!(plan.content_length, Some(total));
            assert_eq!(header(&plan, "content-range"), None);
            if !head {
                assert_eq!(plan.body.len(), 1);
                check_piece(&plan.body[0], &variant.body, &data, 0, total);
            }
        }
        416 => {
            assert_eq!(
                header(&plan, "content-range"),
                Some(&*format!("bytes */{total}")),
                "{range:?}"
            );
        }
        206 => {
            assert!(is_bytes);
            if let Some(cr) = header(&plan, "content-range") {
                let (s, e, t) = content_range(cr);
                assert_eq!(t, total, "{cr}");
                assert!(s <= e && e < total, "{cr} for {range:?}");
                assert_eq!(plan.content_length, Some(e - s + 1));
                if !head {
                    assert_eq!(plan.body.len(), 1);
                    check_piece(&plan.body[0], &variant.body, &data, s, e - s + 1);
                }
                if if_range_holds == Some(true) {
                    if let Some(want) = expected_single(range.trim(), total) {
                        assert_eq!((s, e), want, "{range:?} of {total}");
                    }
                }
            } else {
                let ct = header(&plan, "content-type").unwrap();
                let boundary = ct
                    .strip_prefix("multipart/byteranges; boundary=")
                    .unwrap_or_else(|| panic!("206 without Content-Range: {ct}"));
                if head {
                    return;
                }
                let n = plan.body.len();
                assert!(n >= 5 && n % 2 == 1, "{n} pieces");
                let mut sum_parts = 0;
                for pair in plan.body[..n - 1].chunks(2) {
                    let Piece::Memory(h) = &pair[0] else {
                        panic!("part head is not in memory")
                    };
                    let h = std::str::from_utf8(h).unwrap();
                    assert!(h.starts_with(&format!("\r\n--{boundary}\r\n")), "{h:?}");
                    let cr = h
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Range: "))
                        .expect("part Content-Range");
                    let (s, e, t) = content_range(cr);
                    assert_eq!(t, total);
                    assert!(s <= e && e < total, "{cr} for {range:?}");
                    check_piece(&pair[1], &variant.body, &data, s, e - s + 1);
                    sum_parts += e - s + 1;
                }
                assert!(sum_parts <= total, "parts add up past the file");
                let Piece::Memory(end) = &plan.body[n - 1] else {
                    panic!()
                };
                assert_eq!(&end[..], format!("\r\n--{boundary}--\r\n").as_bytes());
                let len: u64 = plan.body.iter().map(Piece::len).sum();
                assert_eq!(plan.content_length, Some(len));
            }
        }
        s => panic!("status {s} for a plain Range request"),
    }
});
