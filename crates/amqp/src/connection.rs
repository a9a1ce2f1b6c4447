//! The connection task: the only code that touches the socket. One
//! `select!` over the socket, the consumers' delivery channel, publisher
//! confirms, the heartbeat timer and shutdown; every frame already buffered
//! is decoded per read, and everything produced in a turn goes out in one
//! vectored write.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use junction_core::{ConnectionGuard, ConsumerEvent, ConsumerId, CoreError, Protocol, Settle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::AmqpContext;
use crate::channel::{Channel, ChannelState, Outstanding, PendingPublish};
use crate::codec::{self, Frame, Output};
use crate::convert;
use crate::error::{AmqpError, code};
use crate::handshake::{self, HandshakeError};

/// A publisher confirm that resolves when its message is safe.
type ConfirmFuture = Pin<Box<dyn std::future::Future<Output = (u16, u64, bool)> + Send>>;

/// How long we wait for the client's `close-ok` after our `close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A consumer's place on this connection.
pub(crate) struct ConsumerRef {
    pub channel: u16,
    pub tag: String,
}

/// One open AMQP connection after the handshake.
pub(crate) struct Conn {
    pub ctx: Arc<AmqpContext>,
    /// Registers the connection with the core; its drop deletes the
    /// connection's exclusive queues.
    pub guard: ConnectionGuard,
    pub user: String,
    pub vhost: String,
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
}

pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<AmqpContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("amqp", %peer, user = tracing::field::Empty, vhost = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(
                ctx.settings.handshake_timeout,
                handshake::handshake(&mut rd, &mut wr, &mut buf, &ctx, peer),
            ) => r,
        };
        let opened = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(HandshakeError::Eof)) => return,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "amqp handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!("amqp handshake timed out");
                return;
            }
        };
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
            guard: ctx.broker.open_connection(Protocol::Amqp),
            ctx: Arc::clone(&ctx),
            user: opened.user,
            vhost: opened.vhost,
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

/// Writes every queued chunk, vectored.
async fn flush(wr: &mut OwnedWriteHalf, out: &mut Output) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let chunks = out.take();
    let mut idx = 0;
    let mut offset = 0;
    while idx < chunks.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&chunks[idx][offset..])
            .chain(chunks[idx + 1..].iter().map(|c| &c[..]))
            .take(64)
            .map(IoSlice::new)
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
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
    }
    Ok(())
}

impl Conn {
    async fn serve(
        &mut self,
        mut rd: tokio::net::tcp::OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
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
        loop {
            if !self.out.is_empty() {
                flush(wr, &mut self.out).await?;
                last_send = Instant::now();
            }
            if self.finished {
                return Ok(());
            }
            let close_deadline = self.closing.map(|t| t + CLOSE_TIMEOUT);
            tokio::select! {
                _ = shutdown.cancelled(), if !shut_down => {
                    shut_down = true;
                    self.close_connection(AmqpError::connection(
                        code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                changed = alarm.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let on = *alarm.borrow_and_update();
                    if self.wants_blocked && on != blocked_sent {
                        let m = if on {
                            connection::AMQPMethod::Blocked(connection::Blocked { reason: "low on memory".into() })
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
                    if r? == 0 {
                        return Ok(());
                    }
                    last_recv = Instant::now();
                    self.on_bytes(&mut buf).await;
                }
                Some(ev) = events.recv() => {
                    self.on_event(ev);
                    // Drain what else is ready, so it goes out in one write.
                    for _ in 0..256 {
                        match events.try_recv() {
                            Ok(ev) => self.on_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                Some((ch, seq, ok)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.confirm(ch, seq, ok);
                }
                _ = ticker.tick() => {
                    if let Some(hb) = heartbeat {
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

    async fn on_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        if self.closing.is_some() {
            // Only the client's close-ok (or its own close) matters now.
            if let Frame::Method(0, m) = &frame {
                match m.as_ref() {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        self.finished = true
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.out.method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.finished = true;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        let id = frame.channel();
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(_) => Err(AmqpError::connection(
                code::FRAME_ERROR,
                "heartbeat on a non-zero channel",
            )),
            Frame::Method(0, m) => self.on_connection_method(*m),
            Frame::Method(id, m) => {
                let result = self.on_channel_method(id, *m).await;
                self.channel_result(id, result)
            }
            Frame::Header(_, h) => {
                let result = self.on_header(id, *h).await;
                self.channel_result(id, result)
            }
            Frame::Body(_, b) => {
                let result = self.on_body(id, b).await;
                self.channel_result(id, result)
            }
        }
    }

    /// A channel error closes its channel; a connection error propagates.
    fn channel_result(&mut self, id: u16, r: Result<(), AmqpError>) -> Result<(), AmqpError> {
        match r {
            Err(e) if !e.hard => {
                self.close_channel(id, e);
                Ok(())
            }
            other => other,
        }
    }

    fn on_connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                tracing::debug!(
                    code = c.reply_code,
                    text = c.reply_text.as_str(),
                    "client closed the connection"
                );
                self.release_all();
                self.guard.delete_exclusive_queues();
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.finished = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Connection(
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            other => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!("unexpected method on channel 0: {}", method_name(&other)),
            )
            .during(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    async fn on_channel_method(&mut self, id: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = m {
            if self.channels.contains_key(&id) {
                return Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    format!("channel {id} already open"),
                )
                .during(class_id, method_id));
            }
            if id > self.channel_max {
                return Err(AmqpError::connection(
                    code::NOT_ALLOWED,
                    format!(
                        "channel {id} exceeds the negotiated channel_max {}",
                        self.channel_max
                    ),
                )
                .during(class_id, method_id));
            }
            let getter = self.ctx.broker.new_consumer_id();
            self.channels.insert(id, Channel::new(id, getter));
            self.out.method(
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("channel {id} is not open"),
            )
            .during(class_id, method_id));
        };
        if ch.state == ChannelState::Closing {
            match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&id);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.out.method(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.channels.remove(&id);
                }
                _ => {}
            }
            return Ok(());
        }
        if ch.pending.is_some() {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("expected content for basic.publish on channel {id}, got a method"),
            )
            .during(class_id, method_id));
        }
        self.dispatch(id, m).await.map_err(|e| {
            if e.class_id == 0 {
                e.during(class_id, method_id)
            } else {
                e
            }
        })
    }

    async fn on_header(
        &mut self,
        id: u16,
        h: amq_protocol::frame::AMQPContentHeader,
    ) -> Result<(), AmqpError> {
        let max = self.ctx.settings.max_message_size;
        let ch = self.open_channel(id)?;
        let Some(p) = ch.pending.as_mut().filter(|p| p.header.is_none()) else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content header on channel {id} without a basic.publish"),
            ));
        };
        if h.body_size > max {
            ch.pending = None;
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    h.body_size
                ),
            )
            .during(60, 40));
        }
        let done = h.body_size == 0;
        p.header = Some(h);
        if done {
            return self.complete_publish(id).await;
        }
        Ok(())
    }

    async fn on_body(&mut self, id: u16, body: Bytes) -> Result<(), AmqpError> {
        let ch = self.open_channel(id)?;
        let Some(p) = ch.pending.as_mut().filter(|p| p.header.is_some()) else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content body on channel {id} without a content header"),
            ));
        };
        p.received += body.len() as u64;
        p.parts.push(body);
        let expected = p.header.as_ref().map_or(0, |h| h.body_size);
        if p.received > expected {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("content body exceeds the {expected} bytes announced"),
            ));
        }
        if p.received == expected {
            return self.complete_publish(id).await;
        }
        Ok(())
    }

    /// The channel `id`, which must be open (frames on a closing channel
    /// are dropped before getting here).
    pub(crate) fn open_channel(&mut self, id: u16) -> Result<&mut Channel, AmqpError> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpError::connection(code::CHANNEL_ERROR, format!("channel {id} is not open"))
        })
    }

    async fn complete_publish(&mut self, id: u16) -> Result<(), AmqpError> {
        let ch = self.open_channel(id)?;
        let Some(mut p) = ch.pending.take() else {
            return Ok(());
        };
        let body = p.body();
        let properties = p.header.map(|h| h.properties).unwrap_or_default();
        self.publish(id, p.method, properties, body).await
    }

    /// A core event for one of our consumers.
    fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(d) => {
                let Some(cref) = self.consumers.get(&d.consumer) else {
                    return;
                };
                let (channel_id, tag) = (cref.channel, cref.tag.clone());
                let Some(ch) = self.channels.get_mut(&channel_id) else {
                    return;
                };
                if ch.state != ChannelState::Open {
                    return;
                }
                if !ch.flow_active {
                    ch.held.push_back(d);
                    return;
                }
                self.deliver(channel_id, &tag, d);
            }
            ConsumerEvent::Cancelled(id) => {
                // The queue went: tell the client (consumer_cancel_notify).
                let Some(cref) = self.consumers.remove(&id) else {
                    return;
                };
                if let Some(ch) = self.channels.get_mut(&cref.channel) {
                    if let Some(c) = ch.consumers.remove(&cref.tag) {
                        c.handle.cancel(false);
                    }
                    self.out.method(
                        cref.channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: cref.tag.as_str().into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
    }

    /// Writes one `basic.deliver` with its content.
    pub(crate) fn deliver(
        &mut self,
        channel_id: u16,
        consumer_tag: &str,
        d: junction_core::Delivery,
    ) {
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let Some(c) = ch.consumers.get(consumer_tag) else {
            return;
        };
        let outstanding = (!c.no_ack).then(|| Outstanding {
            queue: Arc::clone(c.handle.queue()),
            holder: d.consumer,
            tag: d.tag,
        });
        let tag = ch.track(outstanding);
        let m = &d.message;
        self.out.method(
            channel_id,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: consumer_tag.into(),
                delivery_tag: tag,
                redelivered: d.redelivered,
                exchange: convert::short(&m.exchange),
                routing_key: convert::short(&m.routing_key),
            })),
        );
        self.out.content(
            channel_id,
            convert::properties_from_core(&m.properties),
            &m.body,
            self.frame_max,
        );
    }

    fn confirm(&mut self, channel_id: u16, seq: u64, ok: bool) {
        if !self.channels.contains_key(&channel_id) {
            return;
        }
        let m = if ok {
            basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: seq,
                multiple: false,
            })
        } else {
            basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            })
        };
        self.out.method(channel_id, AMQPClass::Basic(m));
    }

    /// Returns everything a channel holds to the core: unsettled deliveries
    /// are requeued (flagged redelivered), consumers cancelled.
    pub(crate) fn release_channel(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.pending = None;
        ch.held.clear();
        let outstanding = std::mem::take(&mut ch.unacked);
        for (_, o) in outstanding {
            let _ = self
                .ctx
                .broker
                .settle(&o.queue, o.holder, o.tag, Settle::Requeue);
        }
        for (_, c) in ch.consumers.drain() {
            self.consumers.remove(&c.handle.id());
            c.handle.cancel(true);
        }
    }

    pub(crate) fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.release_channel(id);
        }
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
        let ch = self.open_channel(id)?;
        ch.pending = Some(PendingPublish {
            method,
            header: None,
            parts: Vec::new(),
            received: 0,
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
