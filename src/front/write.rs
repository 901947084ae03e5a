//! Writing HTTP/1 answers: large bodies with `sendfile(2)`, file pieces.

use std::io::IoSlice;

use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

/// The head, then the body by `sendfile(2)` from its memory file, as nginx does: the kernel
/// takes the pages instead of a copy of the bytes. What the socket cannot take at once (and any
/// stream that is not plain TCP) goes out through the stream from memory.
pub async fn send_file(
    stream: &mut Stream,
    head: &[u8],
    body: &[u8],
    file: &std::fs::File,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Some(fd) = super::socket::tcp_fd(stream) else {
        return write_all_vectored(stream, &mut [IoSlice::new(head), IoSlice::new(body)]).await;
    };
    // The stream's own write buffer is empty here: every earlier answer was flushed.
    let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
    // SAFETY: `fd` is this connection's open socket for the whole call; `head` is valid memory.
    let sent = unsafe {
        libc::send(
            fd,
            head.as_ptr().cast(),
            head.len(),
            libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    let sent_head = if sent < 0 {
        let e = std::io::Error::last_os_error();
        if !would_block(&e) {
            return Err(e);
        }
        0
    } else {
        sent as usize
    };
    if sent_head < head.len() {
        return write_all_vectored(
            stream,
            &mut [IoSlice::new(&head[sent_head..]), IoSlice::new(body)],
        )
        .await;
    }
    let mut offset: libc::off_t = 0;
    while (offset as usize) < body.len() {
        // SAFETY: both descriptors are open; `offset` is ours (the file position is untouched,
        // so threads share the file safely).
        let n = unsafe {
            libc::sendfile(
                fd,
                file.as_raw_fd(),
                &mut offset,
                body.len() - offset as usize,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if !would_block(&e) {
                return Err(e);
            }
            // The socket is full: send the next few KiB through the stream, which waits
            // until the socket takes them, then carry on with sendfile.
            let at = offset as usize;
            let piece = &body[at..(at + 4096).min(body.len())];
            stream.write_all(piece).await?;
            stream.flush().await?;
            offset += piece.len() as libc::off_t;
        } else if n == 0 {
            // Cannot happen with a memory file of the right size; never spin on it.
            let at = offset as usize;
            stream.write_all(&body[at..]).await?;
            break;
        }
    }
    Ok(())
}

pub async fn write_all_vectored(
    stream: &mut Stream,
    parts: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let mut parts = parts;
    while !parts.is_empty() {
        let n = stream.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The head, then a body in pieces chunk by chunk, each write within `limit` (nginx's
/// `send_timeout` is between two writes, not for the whole answer).
pub async fn send_pieces(
    stream: &mut Stream,
    head: &[u8],
    pieces: Vec<crate::static_files::Piece>,
    limit: std::time::Duration,
) -> std::io::Result<()> {
    use crate::proxy::forward::within_send_timeout;
    within_send_timeout(limit, stream.write_all(head)).await?;
    let mut body = crate::static_files::pieces::PieceReader::new(pieces);
    while let Some(chunk) = body.next().await? {
        within_send_timeout(limit, stream.write_all(&chunk)).await?;
    }
    within_send_timeout(limit, stream.flush()).await
}
