//! A body in pieces (memory and ranges of files on disk) read as chunks, for the writers that
//! send it chunk by chunk: a range of a large file is never read into memory whole.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Piece;

/// The most read from a file at once.
const CHUNK: u64 = 64 * 1024;

pub struct PieceReader {
    pieces: std::vec::IntoIter<Piece>,
    /// The file being read, and how much of its range is left.
    file: Option<(tokio::fs::File, u64)>,
}

impl PieceReader {
    pub fn new(pieces: Vec<Piece>) -> PieceReader {
        PieceReader {
            pieces: pieces.into_iter(),
            file: None,
        }
    }

    /// The next chunk; `None` at the end of the body.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some((file, left)) = &mut self.file {
                if *left > 0 {
                    let mut buf = vec![0u8; (*left).min(CHUNK) as usize];
                    let got = file.read(&mut buf).await?;
                    if got == 0 {
                        let shrank = "a static file shrank while it was served";
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, shrank));
                    }
                    buf.truncate(got);
                    *left -= got as u64;
                    return Ok(Some(Bytes::from(buf)));
                }
                self.file = None;
            }
            match self.pieces.next() {
                None => return Ok(None),
                Some(Piece::Memory(b)) if b.is_empty() => {}
                Some(Piece::Memory(b)) => return Ok(Some(b)),
                Some(Piece::File { path, start, len }) => {
                    let mut file = tokio::fs::File::open(&path).await?;
                    file.seek(io::SeekFrom::Start(start)).await?;
                    self.file = Some((file, len));
                }
            }
        }
    }

    /// Nothing is left to read (the chunk just read was the last).
    pub fn is_done(&self) -> bool {
        self.file.as_ref().is_none_or(|(_, left)| *left == 0)
            && self.pieces.as_slice().iter().all(Piece::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_file_ranges_in_chunks() {
        let dir = std::env::temp_dir().join(format!("wxedge-pieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut r = PieceReader::new(vec![
            Piece::Memory(Bytes::from_static(b"--a\r\n")),
            Piece::File {
                path: path.clone(),
                start: 10,
                len: 150_000,
            },
            Piece::Memory(Bytes::new()),
        ]);
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(c) = r.next().await.unwrap() {
            assert!(c.len() as u64 <= CHUNK);
            got.extend_from_slice(&c);
            chunks += 1;
        }
        assert!(r.is_done());
        assert_eq!(&got[..5], b"--a\r\n");
        assert_eq!(&got[5..], &data[10..150_010]);
        assert_eq!(chunks, 1 + 3);
        // A file shorter than its range is an error, never a short body.
        let mut short = PieceReader::new(vec![Piece::File {
            path: path.clone(),
            start: 199_990,
            len: 100,
        }]);
        assert!(short.next().await.unwrap().is_some());
        assert!(short.next().await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
