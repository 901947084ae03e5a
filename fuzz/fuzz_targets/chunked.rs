//! `wxedge::proxy::chunked::Chunked`: the one chunked-coding decoder (request bodies in,
//! backend responses out). Input: two bytes choosing a split point, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxedge::proxy::chunked::{Chunked, Malformed};

type Outcome = (Result<Option<usize>, Malformed>, Vec<u8>);

fn whole(data: &[u8]) -> Outcome {
    let mut out = Vec::new();
    let r = Chunked::default().feed(data, Some(&mut out));
    (r, out)
}

/// Feed `data` in the pieces `cuts` make; the end offset is relative to the whole of `data`.
fn pieces(data: &[u8], cuts: &[usize]) -> Outcome {
    let mut c = Chunked::default();
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(at, data.len());
        match c.feed(&data[at..cut], Some(&mut out)) {
            Ok(None) => {}
            Ok(Some(n)) => {
                assert!(n <= cut - at, "end {n} past the piece {}", cut - at);
                return (Ok(Some(at + n)), out);
            }
            Err(e) => return (Err(e), out),
        }
        at = cut;
    }
    (Ok(None), out)
}

fn encode_one_chunk(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 32);
    if !data.is_empty() {
        v.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        v.extend_from_slice(data);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let split = u16::from_le_bytes([input[0], input[1]]) as usize;
    let data = &input[2..];
    let split = if data.is_empty() {
        0
    } else {
        split % (data.len() + 1)
    };

    let (r, out) = whole(data);
    // Without an output buffer: the same verdict (the relay path only looks for the end).
    assert_eq!(
        Chunked::default().feed(data, None),
        r,
        "verdict depends on out"
    );
    let consumed = match r {
        Ok(Some(n)) => {
            assert!(n >= 3 && n <= data.len(), "end {n} of {}", data.len());
            n
        }
        _ => data.len(),
    };
    assert!(
        out.len() <= consumed,
        "decoded {} from {consumed} bytes",
        out.len()
    );

    // Split once anywhere, and byte by byte: the same end and the same bytes.
    assert_eq!(pieces(data, &[split]), (r, out.clone()), "split at {split}");
    if data.len() <= 4096 {
        let every: Vec<usize> = (1..data.len()).collect();
        assert_eq!(pieces(data, &every), (r, out.clone()), "byte by byte");
    }

    // Whatever follows the end is not read.
    if let Ok(Some(n)) = r {
        assert_eq!(
            whole(&data[..n]),
            (Ok(Some(n)), out.clone()),
            "the message alone"
        );
        // Differential: the decoded bytes as one chunk decode to the same bytes.
        let again = encode_one_chunk(&out);
        assert_eq!(whole(&again), (Ok(Some(again.len())), out), "re-encoded");
    }
});
