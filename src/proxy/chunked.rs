//! Where a chunked body ends (RFC 9112 §7.1). The forwarder relays chunked responses byte for
//! byte; it only needs to know when the last chunk and the trailers are through, so the
//! backend connection can be kept and the client's response is complete.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions up to the line end.
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
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Feed the body as it arrives; `feed` says where the message ends.
#[derive(Debug, Clone)]
pub struct ChunkedEnd {
    state: State,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

/// More hex digits than any real chunk size needs (16 = u64::MAX).
const MAX_SIZE_DIGITS: u8 = 15;

impl ChunkedEnd {
    /// `Ok(Some(n))`: the body ends after the first `n` bytes of `data`; `Ok(None)`: not yet.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < data.len() {
            if let State::Data { left } = self.state {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data { left: left - take }
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                State::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                        size: size * 16 + u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(Malformed),
                    None if digits == 0 => return Err(Malformed),
                    None => match b {
                        b';' | b' ' | b'\t' => State::Extension { size },
                        b'\r' => State::SizeLf { size },
                        b'\n' => Self::after_size_line(size),
                        _ => return Err(Malformed),
                    },
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => Self::after_size_line(size),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } if b == b'\n' => Self::after_size_line(size),
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataCr | State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => State::TrailerStart,
                    _ => State::TrailerLine,
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => State::Done,
                _ => return Err(Malformed),
            };
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn after_size_line(size: u64) -> State {
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
        ChunkedEnd::default().feed(body)
    }

    #[test]
    fn finds_the_end_whole_and_split_anywhere() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(end_of(body), Ok(Some(body.len())));
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(end_of(&with_next), Ok(Some(body.len())));
        for split in 0..body.len() {
            let mut c = ChunkedEnd::default();
            let first = c.feed(&body[..split]).unwrap();
            assert_eq!(first, None, "ended early at split {split}");
            assert_eq!(
                c.feed(&body[split..]),
                Ok(Some(body.len() - split)),
                "split {split}"
            );
        }
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
        assert_eq!(end_of(b"zz\r\n"), Err(Malformed));
        assert_eq!(end_of(b"\r\n"), Err(Malformed));
        assert_eq!(end_of(b"3\r\nabcX"), Err(Malformed));
        assert_eq!(end_of(b"ffffffffffffffffff\r\n"), Err(Malformed));
    }
}
