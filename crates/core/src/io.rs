//! Socket rules every adapter shares, over any byte stream (TCP, TLS,
//! WebSocket): the write deadline (a peer that stops reading is cut off,
//! not waited for) and the linger after a closing frame (the peer reads
//! the reason instead of a reset).

use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Runs one write step, failing with [`std::io::ErrorKind::TimedOut`] if
/// it makes no progress within `stall`. Cancel-safe when the step is.
pub async fn within<T>(
    stall: Duration,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(stall, step)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading"))?
}

/// Writes all of `buf`, advancing it as bytes go out; fails with
/// `TimedOut` when one write makes no progress for `stall`, so a large
/// write on a slow link goes on while a peer that stopped reading is cut
/// off. Cancel-safe: what was written is gone from `buf`, the rest stays.
pub async fn write_all_buf_within<W, B>(
    wr: &mut W,
    buf: &mut B,
    stall: Duration,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    B: Buf,
{
    while buf.has_remaining() {
        if within(stall, wr.write_buf(buf)).await? == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Writes `chunks` in order with vectored writes (up to 64 slices a
/// call), so message bodies go out as the `Bytes` they are, uncopied;
/// fails with `TimedOut` when one write makes no progress for `stall`.
pub async fn write_chunks_within<W>(
    wr: &mut W,
    chunks: &[bytes::Bytes],
    stall: Duration,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut idx = 0;
    let mut offset = 0;
    while idx < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&chunks[idx][offset..])
            .chain(chunks[idx + 1..].iter().map(|c| &c[..]))
            .take(64)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = within(stall, wr.write_vectored(&slices)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < chunks.len() {
            let left = chunks[idx].len() - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        // Skip empty chunks, so the loop ends when only they are left.
        while idx < chunks.len() && chunks[idx].len() == offset {
            idx += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// How long a closing connection keeps reading (and discarding) after its
/// closing frame and the shutdown of its write side.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most bytes read and discarded during [`CLOSE_GRACE`].
pub const CLOSE_DRAIN_BYTES: usize = 1 << 20;

/// After the protocol's closing frame (MQTT DISCONNECT, AMQP
/// connection.close, STOMP ERROR) and the shutdown of the write side:
/// reads and discards what the peer still sends, until it closes, `grace`
/// passes or `max_bytes` were read. Closing a socket with unread input
/// makes the kernel send a reset, which can destroy the reason before the
/// peer reads it; a peer still writing would see a broken pipe instead.
pub async fn linger<R: AsyncRead + Unpin>(rd: &mut R, grace: Duration, max_bytes: usize) {
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut read = 0;
        while read < max_bytes {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(grace, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_times_out() {
        // A duplex pipe whose reader never reads: 64 bytes of room.
        let (mut a, _b) = tokio::io::duplex(64);
        let mut data = bytes::Bytes::from(vec![7u8; 1000]);
        let err = write_all_buf_within(&mut a, &mut data, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(
            data.len(),
            1000 - 64,
            "what went out is gone from the buffer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 16];
            while got < 1000 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                got += b.read(&mut chunk).await.unwrap();
            }
            got
        });
        let mut data = bytes::Bytes::from(vec![7u8; 1000]);
        write_all_buf_within(&mut a, &mut data, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reader.await.unwrap(), 1000);
    }

    #[tokio::test]
    async fn chunks_are_written_in_order_across_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let chunks: Vec<bytes::Bytes> = ["abc", "", "defgh", "i", "", "jklmnopqrstu"]
            .iter()
            .map(|s| bytes::Bytes::from_static(s.as_bytes()))
            .collect();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        write_chunks_within(&mut a, &chunks, Duration::from_secs(5))
            .await
            .unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), b"abcdefghijklmnopqrstu");
    }

    #[tokio::test(start_paused = true)]
    async fn linger_ends_at_eof_or_after_the_grace() {
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        linger(&mut a, Duration::from_secs(60), 1 << 20).await;
        let (mut c, _d) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        linger(&mut c, Duration::from_secs(2), 1 << 20).await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
