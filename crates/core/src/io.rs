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

/// Writes all of `buf`, advancing it as bytes go out, then flushes; fails with
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
    flush_within(wr, stall).await
}

/// Flushes `wr`: a no-op on TCP (and what TLS has written already), while a
/// WebSocket sends what was written as one message. Tried once first, so
/// the common case that is done at once reads no clock and arms no timer;
/// only a flush that has to wait gets the `stall` deadline.
async fn flush_within<W: AsyncWrite + Unpin>(wr: &mut W, stall: Duration) -> std::io::Result<()> {
    let mut flush = std::pin::pin!(wr.flush());
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(flush.as_mut(), cx))
    })
    .await;
    match first {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => within(stall, flush).await,
    }
}

/// Writes `chunks` in order with vectored writes (up to 64 slices a
/// call), so message bodies go out as the `Bytes` they are, uncopied, then
/// flushes;
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
    flush_within(wr, stall).await
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
        // On the heap, and only while lingering: an array here would sit in
        // every connection task's future (memory per idle connection).
        let mut scratch = vec![0u8; 4096];
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

/// Any byte stream a listener hands an adapter besides plain TCP (TLS,
/// WebSocket). Adapters flush after each batch of frames they write (see
/// [`write_all_buf_within`]): a WebSocket sends a batch as one message.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The user name a verified client certificate stands for, when the
    /// stream carries one (TLS with a client certificate): adapters log
    /// such a client in without a password.
    fn client_name(&self) -> Option<&str> {
        None
    }
    /// Whether the bytes travel encrypted (the management API's `ssl`).
    fn is_tls(&self) -> bool {
        false
    }
    /// Whether the bytes travel in WebSocket messages (the management
    /// API's "Web MQTT" / "Web STOMP").
    fn is_websocket(&self) -> bool {
        false
    }
}

/// In-memory pipes (tests) carry no certificate.
impl ByteStream for tokio::io::DuplexStream {}

/// A stream and the user name its client certificate stands for (what a
/// TLS listener hands on).
pub struct Identified<S> {
    pub io: S,
    pub client_name: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for Identified<S> {
    fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }
    /// The server wraps its TLS streams, and only those.
    fn is_tls(&self) -> bool {
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Identified<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Identified<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An accepted connection: TCP as it is, or another stream wrapping it.
/// Adapters take this, split it, and read and write the halves; TCP keeps
/// its own lock-free halves, the others share one stream behind tokio's
/// split.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Other(Box<dyn ByteStream>),
}

impl Stream {
    /// Turns Nagle off for TCP (a TLS stream's socket was set up before
    /// its handshake).
    pub fn set_nodelay(&self) {
        if let Stream::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    /// See [`ByteStream::is_tls`].
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Other(s) => s.is_tls(),
        }
    }

    /// See [`ByteStream::is_websocket`].
    pub fn is_websocket(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Other(s) => s.is_websocket(),
        }
    }

    /// See [`ByteStream::client_name`]; read it before [`Stream::split`].
    pub fn client_name(&self) -> Option<String> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Other(s) => s.client_name().map(str::to_string),
        }
    }

    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Other(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Other(r), WriteHalf::Other(w))
            }
        }
    }
}

impl From<tokio::net::TcpStream> for Stream {
    fn from(s: tokio::net::TcpStream) -> Stream {
        Stream::Tcp(s)
    }
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Other(tokio::io::ReadHalf<Box<dyn ByteStream>>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Other(tokio::io::WriteHalf<Box<dyn ByteStream>>),
}

impl ReadHalf {
    /// Reads what is there now without waiting: `Ok(0)` at end of stream,
    /// `WouldBlock` when nothing is ready (as TCP's `try_read_buf`).
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<usize> {
        match self {
            ReadHalf::Tcp(r) => r.try_read_buf(buf),
            ReadHalf::Other(r) => {
                use std::future::Future;
                let mut read = std::pin::pin!(r.read_buf(buf));
                let waker = std::task::Waker::noop();
                match read
                    .as_mut()
                    .poll(&mut std::task::Context::from_waker(waker))
                {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

/// `AsyncRead` for an enum whose every variant holds a reader.
macro_rules! delegate_read {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

/// `AsyncWrite` for an enum whose every variant holds a writer (vectored
/// writes kept: the adapters write frames as slices).
macro_rules! delegate_write {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => std::pin::Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(ReadHalf: Tcp, Other);
delegate_write!(WriteHalf: Tcp, Other);
delegate_read!(Stream: Tcp, Other);
delegate_write!(Stream: Tcp, Other);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn other_streams_split_and_read_without_waiting() {
        let (a, mut b) = tokio::io::duplex(1024);
        let (mut rd, mut wr) = Stream::Other(Box::new(a)).split();
        let mut buf = bytes::BytesMut::with_capacity(64);
        let err = rd.try_read_buf(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        b.write_all(b"ping").await.unwrap();
        assert_eq!(rd.try_read_buf(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..], b"ping");
        wr.write_all(b"pong").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(b);
        assert_eq!(rd.try_read_buf(&mut buf).unwrap(), 0);
    }

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
