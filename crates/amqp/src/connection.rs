//! The connection task: the only code that touches the socket. One
//! `select!` over the socket, the consumers' delivery channel, publisher
//! confirms, the heartbeat timer and shutdown; every frame already buffered
//! is decoded per read, and everything produced in a turn goes out in one
//! vectored write.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use junction_core::io::Stream;
use junction_core::io::WriteHalf;
use junction_core::{ConnectionGuard, ConsumerEvent, ConsumerId, CoreError, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AmqpContext;
use crate::channel::{Channel, ChannelState, PendingPublish};
use crate::codec::{self, Output};
use crate::error::{AmqpError, code};
use crate::handshake::{self, HandshakeError};

/// A publisher confirm that resolves when its message is safe.
type ConfirmFuture = Pin<Box<dyn std::future::Future<Output = Confirm> + Send>>;

/// A resolved publisher confirm: channel, channel epoch, sequence number,
/// and whether every queue took the message.
pub(crate) type Confirm = (u16, u64, u64, bool);

/// How long we wait for the client's `close-ok` after our `close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A consumer's place on this connection. Kept after a client's
/// `basic.cancel` until the core's end-of-deliveries marker arrives, so
/// deliveries already on their way are still sent (as RabbitMQ does).
pub(crate) struct ConsumerRef {
    pub channel: u16,
    pub tag: String,
    pub no_ack: bool,
    pub queue: Arc<junction_core::Queue>,
    /// The client cancelled it; the next `Cancelled` event for it is our
    /// own marker, not a queue deletion.
    pub cancelling: bool,
}

/// One open AMQP connection after the handshake.
pub(crate) struct Conn {
    pub ctx: Arc<AmqpContext>,
    /// Registers the connection with the core; its drop deletes the
    /// connection's exclusive queues.
    pub guard: ConnectionGuard,
    pub user: String,
    pub vhost: String,
    /// What the user may do on `vhost`.
    pub access: junction_core::Access,
    pub frame_max: usize,
    pub channel_max: u16,
    pub channels: HashMap<u16, Channel>,
    /// Which channel and tag each of our consumers belongs to.
    pub consumers: HashMap<ConsumerId, ConsumerRef>,
    /// Every consumer of this connection delivers here.
    pub events_tx: mpsc::UnboundedSender<ConsumerEvent>,
    pub confirms: FuturesOrdered<ConfirmFuture>,
    pub out: Output,
    /// Set once we sent `connection.close`: only `close-ok` matters now.
    pub closing: Option<Instant>,
    /// The client closed (or we are done): leave the loop after writing.
    pub finished: bool,
    /// The client understands `connection.blocked` / `unblocked`.
    pub wants_blocked: bool,
    /// This connection has published: the memory alarm stops reading it.
    pub has_published: bool,
    /// Numbers channel openings (see `Channel::epoch`).
    pub channel_openings: u64,
}

pub(crate) async fn run(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<AmqpContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("amqp", %peer, user = tracing::field::Empty, vhost = tracing::field::Empty);
    async move {
        stream.set_nodelay();
        let client_name = stream.client_name();
        let tls = stream.is_tls();
        let (mut rd, mut wr) = stream.split();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        // Registered before the handshake: `connection.open` logs it in
        // (the per-user cap).
        let mut guard = ctx.broker.open_connection(Protocol::Amqp);
        guard.describe(|d| {
            d.peer = Some(peer);
            d.tls = tls;
            d.version = Some("0-9-1");
        });
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(
                ctx.settings.handshake_timeout,
                handshake::handshake(&mut rd, &mut wr, &mut buf, &ctx, peer, client_name.as_deref(), &mut guard),
            ) => r,
        };
        let opened = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(HandshakeError::Eof)) => return,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "amqp handshake failed");
                // The refusal (connection.close, or our protocol header)
                // is written: let the client read it, not a reset.
                let _ = wr.shutdown().await;
                junction_core::io::linger(
                    &mut rd,
                    junction_core::io::CLOSE_GRACE,
                    junction_core::io::CLOSE_DRAIN_BYTES,
                )
                .await;
                return;
            }
            Err(_) => {
                tracing::info!("amqp handshake timed out");
                return;
            }
        };
        guard.describe(|d| {
            d.vhost = Some(opened.vhost.clone());
            d.client.clone_from(&opened.client);
        });
        // An operator's close stops this connection as a shutdown does,
        // with its own words (see `serve`).
        let shutdown = shutdown.child_token();
        guard.close_with(&shutdown);
        let span = tracing::Span::current();
        span.record("user", opened.user.as_str());
        span.record("vhost", opened.vhost.as_str());
        tracing::debug!(
            frame_max = opened.frame_max,
            heartbeat = opened.heartbeat,
            "amqp connection open"
        );
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut conn = Conn {
            guard,
            ctx: Arc::clone(&ctx),
            user: opened.user,
            vhost: opened.vhost,
            access: opened.access,
            frame_max: opened.frame_max,
            channel_max: opened.channel_max,
            channels: HashMap::new(),
            consumers: HashMap::new(),
            events_tx,
            confirms: FuturesOrdered::new(),
            out: Output::default(),
            closing: None,
            finished: false,
            wants_blocked: opened.wants_blocked,
            has_published: false,
            channel_openings: 0,
        };
        let heartbeat =
            (opened.heartbeat > 0).then(|| Duration::from_secs(u64::from(opened.heartbeat)));
        if let Err(e) = conn
            .serve(rd, &mut wr, buf, events_rx, heartbeat, shutdown)
            .await
        {
            tracing::debug!(error = %e, "amqp connection ended");
        }
        conn.release_all();
        let _ = wr.shutdown().await;
    }
    .instrument(span)
    .await
}

/// Writes every queued chunk, vectored; a write that makes no progress
/// for `stall` fails with `TimedOut` (the client stopped reading). The
/// memory alarm counts the chunks while they are being written.
async fn flush(
    broker: &junction_core::Broker,
    guard: &ConnectionGuard,
    wr: &mut WriteHalf,
    out: &mut Output,
    stall: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let chunks = out.take();
    let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let _held = broker.charge_memory(bytes);
    junction_core::io::write_chunks_within(wr, &chunks, stall).await?;
    guard.count_sent(bytes as usize);
    Ok(())
}

impl Conn {
    async fn serve(
        &mut self,
        mut rd: junction_core::io::ReadHalf,
        wr: &mut WriteHalf,
        mut buf: BytesMut,
        mut events: mpsc::UnboundedReceiver<ConsumerEvent>,
        heartbeat: Option<Duration>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let tick = heartbeat.map_or(Duration::from_secs(3600), |h| {
            (h / 2).max(Duration::from_millis(500))
        });
        let mut ticker = tokio::time::interval(tick);
        let mut shut_down = false;
        let mut alarm = self.ctx.broker.memory_alarm();
        let mut blocked_sent = false;
        // Frames left in the buffer by the handshake come first.
        self.on_bytes(&mut buf).await;
        let stall = self.ctx.broker.limits().write_timeout;
        loop {
            if !self.out.is_empty() {
                // A client that stops reading is cut off after the write
                // timeout; once the broker shuts down it gets only a short
                // grace to read what is queued (and then the close).
                let stall = if shut_down { CLOSE_TIMEOUT } else { stall };
                let flushing = flush(&self.ctx.broker, &self.guard, wr, &mut self.out, stall);
                tokio::pin!(flushing);
                let flushed = tokio::select! {
                    r = &mut flushing => r,
                    _ = shutdown.cancelled(), if !shut_down => {
                        match tokio::time::timeout(CLOSE_TIMEOUT, &mut flushing).await {
                            Ok(r) => r,
                            Err(_) => return Ok(()),
                        }
                    }
                };
                if let Err(e) = flushed {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        tracing::info!("amqp client stopped reading; closing as a slow consumer");
                        self.ctx.broker.note_slow_consumer();
                    }
                    return Err(e);
                }
                last_send = Instant::now();
            }
            if self.finished {
                return Ok(());
            }
            let close_deadline = self.closing.map(|t| t + CLOSE_TIMEOUT);
            tokio::select! {
                _ = shutdown.cancelled(), if !shut_down => {
                    shut_down = true;
                    let text = match self.guard.close_reason() {
                        Some(why) => why,
                        None => "broker forced connection closure with reason 'shutdown'".into(),
                    };
                    self.close_connection(AmqpError::connection(code::CONNECTION_FORCED, text));
                }
                changed = alarm.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let on = *alarm.borrow_and_update();
                    if self.wants_blocked && on != blocked_sent {
                        let m = if on {
                            connection::AMQPMethod::Blocked(connection::Blocked {
                                reason: match self.ctx.broker.alarms() {
                                    (_, true) => "low on disk",
                                    _ => "low on memory",
                                }
                                .into(),
                            })
                        } else {
                            connection::AMQPMethod::Unblocked(connection::Unblocked {})
                        };
                        self.out.method(0, AMQPClass::Connection(m));
                        blocked_sent = on;
                    }
                }
                // A publishing connection is not read while the memory
                // alarm is on: TCP pushes back on the client.
                r = rd.read_buf(&mut buf), if !(self.has_published && *alarm.borrow()) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.guard.count_received(n);
                    last_recv = Instant::now();
                    self.on_bytes(&mut buf).await;
                }
                Some(ev) = events.recv() => {
                    // What else is ready goes out in the same write.
                    junction_core::consumer::drain(&mut events, ev, |ev| self.on_event(ev));
                }
                Some(c) = self.confirms.next(), if !self.confirms.is_empty() => {
                    // Others already resolved go out in the same write,
                    // coalesced where they can be.
                    let mut done = vec![c];
                    while let Some(Some(c)) = self.confirms.next().now_or_never() {
                        done.push(c);
                    }
                    self.confirm_all(&done);
                }
                _ = ticker.tick() => {
                    if let Some(hb) = heartbeat {
                        if self.has_published && *alarm.borrow() {
                            // We are not reading this client (memory alarm):
                            // its silence is ours (RabbitMQ pauses the
                            // heartbeat monitor of a blocked connection too).
                            last_recv = Instant::now();
                        }
                        if last_recv.elapsed() > hb * 2 {
                            tracing::info!(timeout_secs = hb.as_secs(), "missed heartbeats from client, closing");
                            return Ok(());
                        }
                        if last_send.elapsed() >= hb / 2 {
                            self.out.heartbeat();
                        }
                    }
                }
                _ = sleep_until_opt(close_deadline) => {
                    return Ok(());
                }
            }
        }
    }

    /// Decodes and handles every complete frame in `buf`.
    async fn on_bytes(&mut self, buf: &mut BytesMut) {
        while !self.finished {
            match codec::decode(buf, self.frame_max) {
                Ok(Some(frame)) => {
                    if let Err(e) = self.on_frame(frame).await {
                        self.close_connection(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.close_connection(AmqpError::connection(e.reply_code(), e.to_string()));
                    // Nothing after a framing error can be trusted.
                    buf.clear();
                    break;
                }
            }
        }
    }

    /// Sends `connection.close` and waits for `close-ok`.
    pub(crate) fn close_connection(&mut self, e: AmqpError) {
        if self.closing.is_some() {
            return;
        }
        tracing::info!(code = e.code, text = e.text, "closing amqp connection");
        self.out.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: e.reply_text().into(),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.closing = Some(Instant::now());
        self.release_all();
    }

    /// Sends `channel.close` for a channel error; the channel ignores
    /// everything but close/close-ok until the client answers.
    pub(crate) fn close_channel(&mut self, id: u16, e: AmqpError) {
        tracing::debug!(
            channel = id,
            code = e.code,
            text = e.text,
            "closing amqp channel"
        );
        self.release_channel(id);
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.state = ChannelState::Closing;
        }
        self.out.method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: e.reply_text().into(),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// A fresh consumer tag, as RabbitMQ makes them.
    pub(crate) fn consumer_tag(&self) -> String {
        format!(
            "amq.ctag-{}-{}",
            self.guard.id(),
            self.ctx.broker.new_consumer_id()
        )
    }

    pub(crate) fn core_error(e: CoreError) -> AmqpError {
        AmqpError::from(e)
    }

    /// Queues a method reply on a channel.
    pub(crate) fn reply(&mut self, id: u16, m: AMQPClass) {
        self.out.method(id, m);
    }

    /// Queues a content-carrying method (return, get-ok) with its content.
    pub(crate) fn reply_content(
        &mut self,
        id: u16,
        m: AMQPClass,
        properties: amq_protocol::protocol::basic::AMQPProperties,
        body: &Bytes,
    ) {
        self.out.method(id, m);
        self.out.content(id, properties, body, self.frame_max);
    }

    pub(crate) fn start_pending(
        &mut self,
        id: u16,
        method: basic::Publish,
    ) -> Result<(), AmqpError> {
        self.has_published = true;
        let charge = self.ctx.broker.charge_memory(0);
        let ch = self.open_channel(id)?;
        ch.pending = Some(PendingPublish {
            method,
            header: None,
            parts: Vec::new(),
            received: 0,
            charge,
        });
        Ok(())
    }
}

pub(crate) fn method_name(m: &AMQPClass) -> String {
    format!("{}.{}", m.get_amqp_class_id(), m.get_amqp_method_id())
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
