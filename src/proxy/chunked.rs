//! The chunked transfer coding (RFC 9112 §7.1), strictly: the one parser of it, for request
//! bodies (decoded, then sent upstream with a `Content-Length`) and for backend responses
//! (relayed byte for byte; only the end of the message is needed).
//!
//! Accepted: `1*HEXDIG [BWS] *( ";" ext ) CRLF`, data, `CRLF`; the last chunk `0`, trailer
//! fields `name: value`, and the empty line. Bare LF line ends are tolerated, as nginx does.
//! Everything else is malformed: an empty or non-hex size line, a size of more than 15 hex
//! digits, anything but a line end after the data, a trailer line without a name and a colon,
//! control characters, trailers larger than [`MAX_TRAILER_BYTES`].

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension, up to the line end.
    Extension {
        size: u64,
    },
    /// Saw CR after the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// More hex digits than any real chunk size needs (16 would overflow u64 arithmetic checks).
const MAX_SIZE_DIGITS: u8 = 15;
/// Trailer section limit (nginx has none of its own; its header buffers bound it).
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// Chunk extensions on one size line: nobody needs them long, and they are not body bytes,
/// so no body limit would stop an endless one (Node's CVE-2024-22019).
pub const MAX_EXTENSION_BYTES: usize = 4 * 1024;

/// Feed the body as it arrives.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    trailer_bytes: usize,
    /// Extension bytes on the current size line.
    extension_bytes: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
            trailer_bytes: 0,
            extension_bytes: 0,
        }
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

impl Chunked {
    /// Read `data`, appending the decoded body to `out` when given. `Ok(Some(n))`: the message
    /// ends after the first `n` bytes of `data`; `Ok(None)`: all of it was taken, more is needed.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < data.len() {
            if let State::Data { left } = self.state {
                i += self.take_data(left, &data[i..], out.as_deref_mut());
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = self.framing_byte(b)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Takes what `data` holds of the current chunk's `left` data bytes; returns how many.
    fn take_data(&mut self, left: u64, data: &[u8], out: Option<&mut Vec<u8>>) -> usize {
        let take = left.min(data.len() as u64) as usize;
        if let Some(out) = out {
            out.extend_from_slice(&data[..take]);
        }
        self.state = if take as u64 == left {
            State::DataCr
        } else {
            State::Data {
                left: left - take as u64,
            }
        };
        take
    }

    /// The state after byte `b` of the framing (anything but chunk data).
    fn framing_byte(&mut self, b: u8) -> Result<State, Malformed> {
        if matches!(
            self.state,
            State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return Err(Malformed("chunked trailers too large"));
            }
        }
        Ok(match self.state {
            State::Size { size, digits } => self.size_byte(size, digits, b)?,
            State::SizeSpace { size } => self.size_space_byte(size, b)?,
            State::Extension { size } => self.extension_byte(size, b)?,
            State::SizeLf { size } if b == b'\n' => self.after_size_line(size),
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr | State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => State::Done,
                b if is_token(b) => State::TrailerName,
                _ => return Err(Malformed("malformed trailer field")),
            },
            State::TrailerName => match b {
                b':' => State::TrailerValue,
                b if is_token(b) => State::TrailerName,
                _ => return Err(Malformed("malformed trailer field name")),
            },
            State::TrailerValue => match b {
                b'\r' => State::TrailerLf,
                b'\n' => State::TrailerStart,
                b if is_field_byte(b) => State::TrailerValue,
                _ => return Err(Malformed("control character in a trailer field")),
            },
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::EndLf if b == b'\n' => State::Done,
            State::SizeLf { .. } | State::TrailerLf | State::EndLf => {
                return Err(Malformed("CR without LF in chunked framing"))
            }
            _ => return Err(Malformed("chunk data not followed by a line end")),
        })
    }

    /// A byte of the hex size (`digits` read so far), or the first one after it.
    fn size_byte(&mut self, size: u64, digits: u8, b: u8) -> Result<State, Malformed> {
        Ok(match (b as char).to_digit(16) {
            Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                size: size * 16 + u64::from(d),
                digits: digits + 1,
            },
            Some(_) => return Err(Malformed("chunk size too large")),
            None if digits == 0 => return Err(Malformed("chunk size missing")),
            None => match b {
                b' ' | b'\t' => State::SizeSpace { size },
                b';' => State::Extension { size },
                b'\r' => State::SizeLf { size },
                b'\n' => self.after_size_line(size),
                _ => return Err(Malformed("chunk size is not hexadecimal")),
            },
        })
    }

    /// A byte in the whitespace after the size.
    fn size_space_byte(&mut self, size: u64, b: u8) -> Result<State, Malformed> {
        Ok(match b {
            b' ' | b'\t' => State::SizeSpace { size },
            b';' => State::Extension { size },
            b'\r' => State::SizeLf { size },
            b'\n' => self.after_size_line(size),
            _ => return Err(Malformed("garbage after the chunk size")),
        })
    }

    /// A byte of a chunk extension (counted against [`MAX_EXTENSION_BYTES`]).
    fn extension_byte(&mut self, size: u64, b: u8) -> Result<State, Malformed> {
        Ok(match b {
            b'\r' => State::SizeLf { size },
            b'\n' => self.after_size_line(size),
            b if is_field_byte(b) => {
                self.extension_bytes += 1;
                if self.extension_bytes > MAX_EXTENSION_BYTES {
                    return Err(Malformed("chunk extension too long"));
                }
                State::Extension { size }
            }
            _ => return Err(Malformed("control character in a chunk extension")),
        })
    }

    fn after_size_line(&mut self, size: u64) -> State {
        self.extension_bytes = 0;
        Self::next_after_size_line(size)
    }

    fn next_after_size_line(size: u64) -> State {
        if size == 0 {
            State::TrailerStart
        } else {
            State::Data { left: size }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, Malformed> {
        Chunked::default().feed(body, None)
    }

    fn decode(body: &[u8]) -> Result<(Vec<u8>, Option<usize>), Malformed> {
        let mut out = Vec::new();
        let end = Chunked::default().feed(body, Some(&mut out))?;
        Ok((out, end))
    }

    #[test]
    fn finds_the_end_whole_and_split_anywhere() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(end_of(&with_next), Ok(Some(body.len())));
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let first = c.feed(&body[..split], Some(&mut out)).unwrap();
            assert_eq!(first, None, "ended early at split {split}");
            assert_eq!(
                c.feed(&body[split..], Some(&mut out)),
                Ok(Some(body.len() - split)),
                "split {split}"
            );
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        }
    }

    #[test]
    fn decodes_data_only() {
        assert_eq!(
            decode(b"3\r\nabc\r\n2 ; x=\"y\"\r\nde\r\n0\r\n\r\nNEXT"),
            Ok((b"abcde".to_vec(), Some(28)))
        );
    }

    #[test]
    fn last_chunk_without_trailers_and_bare_lf() {
        assert_eq!(end_of(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(end_of(b"3\nabc\n0\n\n"), Ok(Some(9)));
        assert_eq!(end_of(b"3\r\nabc\r\n"), Ok(None));
        assert_eq!(end_of(b"0\r\n"), Ok(None));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"ffffffffffffffffff\r\n",
            // The case: data `hello\r\n0`, then an empty size line.
            b"8\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello",
            b"5\rhello",
            b"5;a\x00\r\n",
            b"0\r\n: no-name\r\n\r\n",
            b"0\r\nbad name: x\r\n\r\n",
            b"0\r\nX: a\x01\r\n\r\n",
            b"0\r\nX: a\r\r\n",
        ] {
            assert!(end_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES + 1));
        assert_eq!(end_of(&long), Err(Malformed("chunk extension too long")));
        let mut fine = b"1;".to_vec();
        fine.extend(std::iter::repeat_n(b'a', 100));
        fine.extend_from_slice(b"\r\nx\r\n2;");
        fine.extend(std::iter::repeat_n(b'b', MAX_EXTENSION_BYTES - 10));
        fine.extend_from_slice(b"\r\nyz\r\n0\r\n\r\n");
        assert_eq!(end_of(&fine), Ok(Some(fine.len())), "the limit is per line");
        let mut big = b"0\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES));
        assert!(end_of(&big).is_err());
    }
}
