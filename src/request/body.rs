//! A request body, decoded from its [`Framing`] as the bytes arrive. The edge reads request
//! bodies whole before it answers (nginx's `proxy_request_buffering on`), so what goes on is
//! always one `Content-Length` body, whatever framing the client used.

use super::Framing;
use crate::proxy::chunked::Chunked;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Broken chunked framing: 400, and the connection closes.
    Malformed(&'static str),
    /// Larger than the limit: 413.
    TooLarge,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::Malformed(_) => 400,
            BodyError::TooLarge => 413,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            BodyError::Malformed(why) => why,
            BodyError::TooLarge => "request body is too large",
        }
    }
}

enum Decoder {
    Length { left: u64 },
    Chunked(Chunked),
}

pub struct Body {
    decoder: Decoder,
    limit: u64,
    data: Vec<u8>,
    done: bool,
}

impl Body {
    /// A body of this framing, refused up front when its declared length is over `limit`.
    pub fn new(framing: Framing, limit: u64) -> Result<Body, BodyError> {
        let (decoder, done) = match framing {
            Framing::Empty => (Decoder::Length { left: 0 }, true),
            Framing::Length(n) if n > limit => return Err(BodyError::TooLarge),
            Framing::Length(n) => (Decoder::Length { left: n }, false),
            Framing::Chunked => (Decoder::Chunked(Chunked::default()), false),
        };
        let capacity = match decoder {
            Decoder::Length { left } => left.min(64 * 1024) as usize,
            Decoder::Chunked(_) => 0,
        };
        Ok(Body {
            decoder,
            limit,
            data: Vec::with_capacity(capacity),
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
                self.data.extend_from_slice(&input[..n]);
                *left -= n as u64;
                self.done = *left == 0;
                n
            }
            Decoder::Chunked(c) => {
                let end = c
                    .feed(input, Some(&mut self.data))
                    .map_err(|m| BodyError::Malformed(m.0))?;
                self.done = end.is_some();
                end.unwrap_or(input.len())
            }
        };
        if self.data.len() as u64 > self.limit {
            return Err(BodyError::TooLarge);
        }
        Ok(used)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bodies_stop_at_their_end() {
        let mut b = Body::new(Framing::Length(5), 10).unwrap();
        assert_eq!(b.take(b"hel").unwrap(), 3);
        assert!(!b.is_done());
        assert_eq!(b.take(b"loGET /").unwrap(), 2);
        assert!(b.is_done());
        assert_eq!(b.into_bytes(), b"hello");
        assert_eq!(
            Body::new(Framing::Length(11), 10).err(),
            Some(BodyError::TooLarge)
        );
    }

    #[test]
    fn chunked_bodies_are_decoded_and_bounded() {
        let mut b = Body::new(Framing::Chunked, 10).unwrap();
        assert_eq!(b.take(b"5\r\nhello\r\n0\r\n\r\nNEXT").unwrap(), 15);
        assert!(b.is_done());
        assert_eq!(b.into_bytes(), b"hello");
        let mut b = Body::new(Framing::Chunked, 4).unwrap();
        assert_eq!(b.take(b"5\r\nhello\r\n"), Err(BodyError::TooLarge));
        let mut b = Body::new(Framing::Chunked, 100).unwrap();
        assert!(matches!(
            b.take(b"8\r\nhello\r\n0\r\n\r\n"),
            Err(BodyError::Malformed(_))
        ));
    }
}
