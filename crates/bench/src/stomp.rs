//! A small STOMP 1.2 client of our own on tokio: publisher, consumer and
//! idle connection. The frame codec is in [`codec`]; this module owns the
//! socket I/O.
//!
//! - CONNECT with `accept-version:1.2` and `heart-beat:0,0` ("Connecting",
//!   "Heart-beating": none, so an idle connection costs the broker nothing
//!   but its state); CONNECTED or ERROR is awaited under a timeout.
//! - SEND carries `content-length` (binary bodies) and, with `--receipts`, a
//!   `receipt` header; outstanding receipts are bounded by the in-flight
//!   window, returned by RECEIPT frames read in a separate task.
//! - SUBSCRIBE asks for a receipt so publishing starts only once the
//!   subscription is in place; with client acks every MESSAGE is answered by
//!   ACK carrying its `ack` header ("ACK").
//! - DISCONNECT with a receipt, awaited briefly ("Connection Lingering").

pub mod codec;

use crate::cli::Proto::Stomp as STOMP;
use crate::cli::StompAck;
use crate::collector::Collector;
use crate::error::BenchError;
use crate::load::{CLOSE_TIMEOUT, CONNECT_TIMEOUT, Endpoint, Pacer, PubPlan};
use crate::tracker::ConsumerIx;
use bytes::BytesMut;
use codec::{CodecError, Frame};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};
use tokio_util::sync::CancellationToken;

/// Receipt id of the DISCONNECT frame.
const BYE: &str = "bye";

/// Receipt id of the SUBSCRIBE frame.
const SUBSCRIBED: &str = "sub-0";

/// How to talk STOMP for this run.
#[derive(Debug, Clone)]
pub struct StompSettings {
    /// Broker address, credentials and `host` header.
    pub endpoint: Endpoint,
    /// SUBSCRIBE ack mode.
    pub ack: StompAck,
    /// RECEIPT per SEND.
    pub receipts: bool,
    /// `persistent:true` on SEND (RabbitMQ, ActiveMQ).
    pub persistent: bool,
    /// Unacknowledged MESSAGEs the broker may push with client acks
    /// (`prefetch-count` for RabbitMQ, `activemq.prefetchSize` for ActiveMQ).
    pub prefetch: u16,
    /// Outstanding receipts per publisher.
    pub inflight: u16,
    /// Largest frame accepted.
    pub max_frame: usize,
}

/// Reads whole frames from the socket. `next` is cancel-safe: bytes read
/// stay in `buf` until a whole frame is there.
struct FrameReader {
    /// The socket's read half.
    half: OwnedReadHalf,
    /// Bytes read but not yet decoded.
    buf: BytesMut,
    /// Frame size cap ("Size Limits").
    max_frame: usize,
}

impl FrameReader {
    /// The next frame, or `None` at a clean end of stream.
    async fn next(&mut self) -> Result<Option<Frame>, BenchError> {
        loop {
            match codec::decode(&mut self.buf, self.max_frame) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(codec_error(e)),
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(BenchError::protocol(STOMP, "connection closed mid-frame"))
                };
            }
        }
    }
}

fn codec_error(e: CodecError) -> BenchError {
    BenchError::protocol(STOMP, e)
}

/// Writes frames, one write per frame.
struct FrameWriter {
    /// The socket's write half.
    half: OwnedWriteHalf,
    /// Encoding scratch space, reused.
    buf: BytesMut,
}

impl FrameWriter {
    async fn send(&mut self, frame: &Frame) -> Result<(), BenchError> {
        self.buf.clear();
        codec::encode(frame, &mut self.buf);
        self.half.write_all(&self.buf).await?;
        Ok(())
    }
}

/// The broker's ERROR frame as an error: its `message` header and body.
fn error_frame(frame: &Frame) -> BenchError {
    let message = frame.get("message").unwrap_or("");
    let body = String::from_utf8_lossy(&frame.body);
    BenchError::protocol(STOMP, format!("ERROR {message} {}", body.trim()))
}

/// Opens a connection: TCP, CONNECT, CONNECTED.
async fn connect(s: &StompSettings) -> Result<(FrameReader, FrameWriter), BenchError> {
    let e = &s.endpoint;
    let addr = e.addr();
    let handshake = async {
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|err| BenchError::connect(STOMP, &addr, err))?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut reader = FrameReader {
            half: read,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame: s.max_frame,
        };
        let mut writer = FrameWriter {
            half: write,
            buf: BytesMut::with_capacity(8 * 1024),
        };
        let connect = Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", e.vhost.clone())
            .header("login", e.user.clone())
            .header("passcode", e.password.clone())
            .header("heart-beat", "0,0");
        writer.send(&connect).await?;
        match reader.next().await? {
            Some(f) if f.command == "CONNECTED" => Ok((reader, writer)),
            Some(f) if f.command == "ERROR" => {
                Err(BenchError::connect(STOMP, &addr, error_frame(&f)))
            }
            Some(f) => Err(BenchError::connect(
                STOMP,
                &addr,
                format!("expected CONNECTED, got {}", f.command),
            )),
            None => Err(BenchError::connect(STOMP, &addr, "closed before CONNECTED")),
        }
    };
    timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| BenchError::connect(STOMP, &addr, "no CONNECTED in time"))?
}

/// Sends DISCONNECT and waits briefly for its RECEIPT, dropping anything
/// else that arrives meanwhile.
async fn disconnect(reader: &mut FrameReader, writer: &mut FrameWriter) {
    let bye = async {
        writer
            .send(&Frame::new("DISCONNECT").header("receipt", BYE))
            .await?;
        while let Some(f) = reader.next().await? {
            if f.command == "RECEIPT" && f.get("receipt-id") == Some(BYE) {
                break;
            }
        }
        Ok::<(), BenchError>(())
    };
    let _ = timeout(CLOSE_TIMEOUT, bye).await;
}

/// Publishes `plan.count` messages to `destination` until done or
/// `plan.stop_at`; with receipts at most `plan.inflight` unanswered.
pub async fn publish(
    s: &StompSettings,
    destination: &str,
    plan: &PubPlan,
    collector: Arc<Collector>,
) -> Result<(), BenchError> {
    let (mut reader, mut writer) = connect(s).await?;
    let window = Arc::new(Semaphore::new(usize::from(plan.inflight)));
    // Reads RECEIPTs (and any ERROR) while the publisher writes.
    let receipts = tokio::spawn({
        let window = Arc::clone(&window);
        async move {
            let result = loop {
                match reader.next().await {
                    Ok(Some(f)) if f.command == "RECEIPT" => {
                        if f.get("receipt-id") == Some(BYE) {
                            break Ok(());
                        }
                        window.add_permits(1);
                    }
                    Ok(Some(f)) if f.command == "ERROR" => break Err(error_frame(&f)),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        break Err(BenchError::protocol(STOMP, "broker closed the connection"));
                    }
                    Err(e) => break Err(e),
                }
            };
            window.close();
            result
        }
    });

    let pacer = Pacer::new(plan.rate, Instant::now());
    let stop_at = tokio::time::Instant::from_std(plan.stop_at);
    let mut intact = true;
    for seq in 0..plan.count {
        // A closed window means the reader saw an ERROR or the end of
        // the stream: the broker will take nothing more.
        if window.is_closed()
            || !pacer.wait(seq, plan.stop_at).await
            || !collector.wait_for_room(plan.stop_at).await
        {
            break;
        }
        if s.receipts {
            match timeout_at(stop_at, window.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let mut frame = Frame::new("SEND")
            .header("destination", destination)
            .header("content-type", "application/octet-stream");
        if s.persistent {
            frame = frame.header("persistent", "true");
        }
        if s.receipts {
            frame = frame.header("receipt", seq.to_string());
        }
        let frame = frame.body(collector.message(plan.index, seq, plan.size));
        match timeout_at(stop_at, writer.send(&frame)).await {
            Ok(Ok(())) => collector.on_sent(1),
            Ok(Err(_)) | Err(_) => {
                // A half-written frame: the stream can carry nothing more.
                intact = false;
                break;
            }
        }
    }
    if s.receipts {
        let _ = timeout(plan.drain, window.acquire_many(u32::from(plan.inflight))).await;
    }
    if intact && !window.is_closed() {
        let _ = timeout(
            CLOSE_TIMEOUT,
            writer.send(&Frame::new("DISCONNECT").header("receipt", BYE)),
        )
        .await;
    }
    match timeout(CLOSE_TIMEOUT, receipts).await {
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(join)) => Err(BenchError::Internal(join.to_string())),
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
    }
}

/// Connects consumer `index` and subscribes to `destination`, waiting for
/// the subscription's RECEIPT; then records every MESSAGE in a task that
/// runs until `cancel`.
pub async fn consume(
    s: &StompSettings,
    destination: &str,
    index: u32,
    collector: Arc<Collector>,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let (mut reader, mut writer) = connect(s).await?;
    let consumer = ConsumerIx(index);
    let mut subscribe = Frame::new("SUBSCRIBE")
        .header("id", "0")
        .header("destination", destination)
        .header("ack", s.ack.header_value())
        .header("receipt", SUBSCRIBED);
    if s.ack != StompAck::Auto {
        subscribe = subscribe
            .header("prefetch-count", s.prefetch.to_string())
            .header("activemq.prefetchSize", s.prefetch.to_string());
    }
    let ack = s.ack;
    let subscribed = async {
        writer.send(&subscribe).await?;
        loop {
            match reader.next().await? {
                Some(f) if f.command == "RECEIPT" && f.get("receipt-id") == Some(SUBSCRIBED) => {
                    return Ok(());
                }
                Some(f) if f.command == "MESSAGE" => {
                    on_message(&f, consumer, &collector, ack, &mut writer).await?;
                }
                Some(f) if f.command == "ERROR" => return Err(error_frame(&f)),
                Some(_) => {}
                None => {
                    return Err(BenchError::protocol(
                        STOMP,
                        "closed before the SUBSCRIBE receipt",
                    ));
                }
            }
        }
    };
    timeout(CONNECT_TIMEOUT, subscribed)
        .await
        .map_err(|_| BenchError::Timeout(format!("STOMP SUBSCRIBE receipt for {destination}")))??;
    Ok(tokio::spawn(async move {
        let result = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                frame = reader.next() => match frame {
                    Ok(Some(f)) if f.command == "MESSAGE" => {
                        if let Err(e) = on_message(&f, consumer, &collector, ack, &mut writer).await {
                            break Err(e);
                        }
                    }
                    Ok(Some(f)) if f.command == "ERROR" => break Err(error_frame(&f)),
                    Ok(Some(_)) => {}
                    Ok(None) => break Err(BenchError::protocol(STOMP, "broker closed the connection")),
                    Err(e) => break Err(e),
                },
            }
        };
        if result.is_ok() {
            disconnect(&mut reader, &mut writer).await;
        }
        result
    }))
}

/// Records one MESSAGE and ACKs it when the subscription asks for acks.
async fn on_message(
    frame: &Frame,
    consumer: ConsumerIx,
    collector: &Collector,
    ack: StompAck,
    writer: &mut FrameWriter,
) -> Result<(), BenchError> {
    collector.on_message(consumer, &frame.body);
    if ack == StompAck::Auto {
        return Ok(());
    }
    let Some(id) = frame.get("ack") else {
        return Err(BenchError::protocol(
            STOMP,
            "MESSAGE without an ack header under client acks",
        ));
    };
    writer.send(&Frame::new("ACK").header("id", id)).await
}

/// Opens one idle connection and holds it until `cancel`.
pub async fn idle(
    s: &StompSettings,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let (mut reader, mut writer) = connect(s).await?;
    Ok(tokio::spawn(async move {
        let result = tokio::select! {
            () = cancel.cancelled() => Ok(()),
            frame = reader.next() => match frame {
                Ok(Some(f)) if f.command == "ERROR" => Err(error_frame(&f)),
                Ok(Some(f)) => Err(BenchError::protocol(STOMP, format!("unexpected {} on an idle connection", f.command))),
                Ok(None) => Err(BenchError::protocol(STOMP, "broker closed an idle connection")),
                Err(e) => Err(e),
            },
        };
        if result.is_ok() {
            disconnect(&mut reader, &mut writer).await;
        }
        result
    }))
}
