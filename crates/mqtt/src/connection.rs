//! The connection task: the only code that touches the socket. CONNECT is
//! read under a timeout in the connection's own task; then one `select!`
//! over the socket, the session's deliveries, publish receipts, the
//! keepalive deadline, takeover and shutdown. Everything produced in a
//! turn goes out in one write.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use junction_core::io::Stream;
use junction_core::io::{CLOSE_DRAIN_BYTES, CLOSE_GRACE};
use junction_core::io::{ReadHalf, WriteHalf};
use junction_core::{ConnectionGuard, ConnectionId, ConsumerEvent, Protocol, TakenSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::MqttContext;
use crate::codec::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, LastWill, Packet,
    ProtocolVersion, Publish, ReasonCode,
};
use crate::registry::{self, Claim, Parked, PendingWill};
use crate::session::{Session, SessionRecord};

/// A publish receipt: resolves to the ack to send (PUBACK or PUBREC).
pub(crate) type ConfirmFuture = Pin<Box<dyn std::future::Future<Output = Packet> + Send + Sync>>;

/// Publish receipts, resolved in the order of the publishes. The queue is
/// made by the first receipt that has to wait (an idle connection, or one
/// that only subscribes, never makes one).
#[derive(Default)]
pub(crate) struct Confirms(Option<Box<FuturesOrdered<ConfirmFuture>>>);

impl Confirms {
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn push_back(&mut self, receipt: ConfirmFuture) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(receipt);
    }
}

impl futures_util::Stream for Confirms {
    type Item = Packet;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Packet>> {
        match &mut self.0 {
            Some(q) => q.poll_next_unpin(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The parts of a connection's state that most connections never use.
#[derive(Default)]
pub(crate) struct Rare {
    /// Topic aliases we assigned (the client announced a maximum).
    pub out_aliases: HashMap<String, u16>,
    /// Topic aliases the client set.
    pub in_aliases: HashMap<u16, String>,
    /// Retained messages waiting for room in the client's window.
    pub retained_backlog: VecDeque<Publish>,
    /// Deliveries waiting for their store record before they go out
    /// (persistent QoS 2), and whatever follows them, in order.
    pub outbox: FuturesOrdered<OutgoingFuture>,
    /// Incoming QoS 2 ids of this connection awaiting PUBREL (the Receive
    /// Maximum counts these, not those left by earlier connections).
    pub qos2_here: std::collections::BTreeSet<u16>,
    /// A consumer of the session ended while its queue stays (in a
    /// cluster: the queue's leader moved, or its node was unreachable):
    /// the serving loop makes it again once this time comes.
    pub reattach_due: Option<Instant>,
    /// When the consumers were last made again (at most once a second).
    pub reattached_at: Option<Instant>,
    /// Failed tries to make them again since the last success.
    pub reattach_failures: u8,
}

/// A delivery on its way out: the PUBLISH, and whether it is in flight
/// (QoS 1/2, settled when the client acknowledges it).
pub(crate) struct Outgoing {
    pub publish: Publish,
    pub inflight: bool,
}

/// A delivery that goes out when its store record is written.
pub(crate) type OutgoingFuture = Pin<Box<dyn std::future::Future<Output = Outgoing> + Send + Sync>>;

/// Why the serving loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT from the client: no will (unless it asked, 0x04).
    Normal,
    /// The socket closed, the keepalive ran out, or the broker closed the
    /// connection for a protocol violation: the will goes out.
    Abnormal,
}

/// One connected client after CONNACK.
pub(crate) struct Conn {
    pub ctx: Arc<MqttContext>,
    pub guard: ConnectionGuard,
    pub version: ProtocolVersion,
    pub session: Session,
    /// Boxed: most clients have none, and it is large.
    pub will: Option<Box<LastWill>>,
    pub out: BytesMut,
    pub confirms: Confirms,
    /// QoS 1 publishes whose PUBACK is not sent yet.
    pub qos1_pending: usize,
    /// Largest packet the client accepts (MQTT 5 Maximum Packet Size).
    pub client_max_packet: usize,
    /// Topic aliases the client accepts from us (MQTT 5).
    pub client_alias_max: u16,
    /// What most connections never need, made on first use (memory per
    /// idle connection).
    pub rare: Option<Box<Rare>>,
    pub end: Option<End>,
    /// The broker ended the connection with a reason (a protocol error, a
    /// keepalive timeout, shutdown): read on for a short grace after the
    /// last write so the client sees the reason, not a reset.
    pub linger: bool,
    /// This connection has published: the memory alarm stops reading it.
    pub has_published: bool,
    /// QoS 1/2 publishes read in this turn that reached a subscriber or
    /// queue (see [`Conn::serve`]: a lone one's deliveries go out before
    /// its ack).
    pub routed: u8,
    /// What the user may publish and subscribe to.
    pub access: junction_core::Access,
}

/// A connection past CONNACK with everything its serving loop uses, in
/// one allocation: while the connection waits, its task holds little more
/// than a pointer to this (memory per idle connection).
struct Live {
    conn: Conn,
    rd: ReadHalf,
    wr: WriteHalf,
    buf: BytesMut,
    /// The keepalive timeout in milliseconds (0: none).
    keepalive_ms: u32,
    /// The broker's shutdown token.
    shutdown: CancellationToken,
    kick: registry::Kick,
}

impl Live {
    /// The keepalive timeout, if the client asked for one.
    fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_ms > 0).then(|| Duration::from_millis(self.keepalive_ms.into()))
    }
}

/// Serves one MQTT connection. Not an `async fn`: its arguments would be
/// kept twice, once by the function and once by the instrumented block
/// (memory per connection).
pub(crate) fn run(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<MqttContext>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    // A debug span: at the default info level it costs nothing, and an
    // idle connection should cost little (log events name the peer).
    let span = tracing::debug_span!("mqtt", %peer, client_id = tracing::field::Empty);
    async move {
        // Each step is boxed, so the task keeps only the state of the step
        // it is in: the CONNECT and the handshake's locals are gone by
        // the time the connection settles down to wait.
        let Some(mut live) = Box::pin(open(stream, peer, &ctx, &shutdown)).await else {
            return;
        };
        ctx.stats.connected.fetch_add(1, Ordering::Relaxed);
        // Serve until the connection has been quiet a while, then park in
        // a small wait until it has something to do (memory per idle
        // connection: the serving loop's state is gone while parked).
        let mut last_recv = Instant::now();
        let result = loop {
            let keepalive = live.keepalive();
            let Live {
                conn,
                rd,
                wr,
                buf,
                shutdown,
                kick,
                ..
            } = &mut *live;
            let served = conn.serve(rd, wr, buf, keepalive, last_recv, shutdown, kick);
            last_recv = match Box::pin(served).await {
                Ok(Some(at)) => at,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            last_recv = match Box::pin(park(&mut live, last_recv)).await {
                Ok(at) => at,
                Err(e) => break Err(e),
            };
        };
        Box::pin(close(live, result)).await;
    }
    .instrument(span)
}

/// Reads the CONNECT (under the connect timeout), logs the client in and
/// sends CONNACK. None: refused or gone (answered as the spec says).
async fn open(
    stream: Stream,
    peer: SocketAddr,
    ctx: &Arc<MqttContext>,
    shutdown: &CancellationToken,
) -> Option<Box<Live>> {
    stream.set_nodelay();
    let client_name = stream.client_name();
    let tls = stream.is_tls();
    let websocket = stream.is_websocket();
    let (mut rd, mut wr) = stream.split();
    let mut buf = BytesMut::with_capacity(READ_START);
    let max = ctx.settings.max_packet_size as usize;
    // Before login a peer gets a small first packet only.
    let connect_max = max.min(ctx.broker.limits().max_handshake_size);
    let connect = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout(ctx.settings.connect_timeout(), read_connect(&mut rd, &mut buf, connect_max)) => r,
    };
    let connect = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(ConnectError::Eof)) => return None,
        Ok(Err(ConnectError::Decode(e, level))) => {
            tracing::info!(%peer, error = %e, "mqtt CONNECT refused");
            refuse_undecodable(&mut wr, &e, level).await;
            junction_core::io::linger(&mut rd, CLOSE_GRACE, CLOSE_DRAIN_BYTES).await;
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "mqtt CONNECT timed out");
            return None;
        }
    };
    let kick: registry::Kick = Arc::default();
    let version = connect.version;
    let Some((conn, keepalive)) = Box::pin(accept(
        ctx,
        connect,
        peer,
        client_name.as_deref(),
        &mut wr,
        Arc::clone(&kick),
    ))
    .await
    else {
        let _ = wr.shutdown().await;
        junction_core::io::linger(&mut rd, CLOSE_GRACE, CLOSE_DRAIN_BYTES).await;
        return None;
    };
    tracing::Span::current().record("client_id", conn.session.client_id.as_str());
    conn.guard.describe(|d| {
        d.peer = Some(peer);
        d.tls = tls;
        d.websocket = websocket;
        d.vhost = Some(ctx.settings.vhost.clone());
        d.client_id = Some(conn.session.client_id.clone());
        d.version = Some(version_text(version));
    });
    // An operator's close wakes this connection as a takeover does, with
    // its own reason code (see `serve`): no stop token of its own.
    conn.guard.close_with_notify(&kick);
    let shutdown = shutdown.clone();
    Some(Box::new(Live {
        conn,
        rd,
        wr,
        buf,
        keepalive_ms: keepalive.map_or(0, |k| u32::try_from(k.as_millis()).unwrap_or(u32::MAX)),
        shutdown,
        kick,
    }))
}

/// Waits, parked, until a quiet connection has something to do: bytes
/// from the client (read into `buf`), a delivery (handled, its PUBLISH
/// queued in `out`), a takeover, an operator's close or a shutdown (left
/// for the serving loop to see), or the keepalive running out (the
/// serving loop's timer then fires at once). Returns when the client
/// last sent something. Holds little: the serving loop's state is freed
/// while a connection is parked, and so are both buffers.
///
/// A shutdown wakes it through the kick, not a wait on the shutdown token
/// of its own: [`crate::start`] kicks every connection when the token is
/// cancelled (memory per idle connection).
async fn park(live: &mut Live, last_recv: Instant) -> std::io::Result<Instant> {
    // A burst's buffers are not kept while parked (both are empty here:
    // the loop parks only then; `capacity` would not tell a large
    // allocation from a small one, so both are dropped).
    live.buf = BytesMut::new();
    live.conn.out = BytesMut::new();
    if live.shutdown.is_cancelled() {
        return Ok(last_recv);
    }
    let mut events = live.conn.session.events_rx.take();
    let keepalive = live.keepalive();
    let due = keepalive.map_or(last_recv, |k| last_recv + k);
    let woke = tokio::select! {
        _ = live.kick.notified() => {
            // Stored again for the serving loop, which tells a takeover
            // from an operator's close; a shutdown it sees for itself.
            if !live.shutdown.is_cancelled() {
                live.kick.notify_one();
            }
            Ok(last_recv)
        }
        // Read through a buffer on the stack of each poll, not one kept
        // while waiting. At most READ_START bytes: a memory alarm that
        // starts meanwhile lets no more than that in before the serving
        // loop, which watches the alarm, stops reading a publisher.
        r = std::future::poll_fn(|cx| {
            let mut bytes = [0u8; READ_START];
            let mut room = tokio::io::ReadBuf::new(&mut bytes);
            match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut live.rd), cx, &mut room) {
                std::task::Poll::Ready(Ok(())) => {
                    live.buf.extend_from_slice(room.filled());
                    std::task::Poll::Ready(Ok(room.filled().len()))
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }) => match r {
            Ok(0) => {
                live.conn.end.get_or_insert(End::Abnormal);
                Ok(last_recv)
            }
            Ok(n) => {
                live.conn.guard.count_received(n);
                Ok(Instant::now())
            }
            Err(e) => Err(e),
        },
        ev = std::future::poll_fn(|cx| match events.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Pending,
        }) => {
            if let Some(ev) = ev {
                live.conn.on_event(ev);
            }
            Ok(last_recv)
        }
        _ = tokio::time::sleep_until(due), if keepalive.is_some() => Ok(last_recv),
    };
    if events.is_some() {
        live.conn.session.events_rx = events;
    }
    woke
}

/// Ends a served connection: the last write, the socket's close, and the
/// session's parking or end (with the will, when due).
async fn close(mut live: Box<Live>, result: std::io::Result<()>) {
    let Live { conn, rd, wr, .. } = &mut *live;
    if let Err(e) = result {
        tracing::debug!(error = %e, "mqtt connection ended");
        conn.end.get_or_insert(End::Abnormal);
    }
    let _ = flush(&conn.ctx.broker, wr, &mut conn.out, FINAL_FLUSH).await;
    let _ = wr.shutdown().await;
    if conn.linger {
        junction_core::io::linger(rd, CLOSE_GRACE, CLOSE_DRAIN_BYTES).await;
    }
    conn.ctx.stats.connected.fetch_sub(1, Ordering::Relaxed);
    // The socket closes after the session is parked or ended, as it did
    // when this was one function.
    let Live { conn, rd, wr, .. } = *live;
    Box::pin(conn.finish()).await;
    drop((rd, wr));
}

enum ConnectError {
    Eof,
    /// The CONNECT did not decode; the protocol level, if it could be read.
    Decode(DecodeError, Option<u8>),
}

/// The protocol level byte of a CONNECT at the front of `buf`, if there.
fn peek_level(buf: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]));
    buf.get(i + 3 + name_len).copied()
}

async fn read_connect(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Connect, ConnectError> {
    loop {
        let level = peek_level(buf);
        match codec::decode(buf, None, max) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                let e = DecodeError::ProtocolError(format!(
                    "{} before CONNECT",
                    other.packet_type().name()
                ));
                return Err(ConnectError::Decode(e, level));
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectError::Decode(e, level)),
        }
        make_room(buf, READ_START);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Eof),
            Ok(_) => {}
        }
    }
}

/// Answers a CONNECT that did not decode: MQTT 5 gets a CONNACK with the
/// reason code, 3.1.1 one with a return code where the spec has one.
async fn refuse_undecodable(wr: &mut WriteHalf, e: &DecodeError, level: Option<u8>) {
    let mut out = BytesMut::new();
    if level == Some(5) {
        let ack = ConnAck {
            session_present: false,
            reason: e.reason_code(),
            properties: ConnAckProperties::default(),
        };
        let _ = codec::encode(&Packet::ConnAck(ack), ProtocolVersion::V5, &mut out);
    } else if let Some(rc) = e.connack_return_code() {
        out.extend_from_slice(&[0x20, 0x02, 0x00, rc]);
    }
    if !out.is_empty() {
        let _ = wr.write_all(&out).await;
    }
    let _ = wr.shutdown().await;
}

/// The protocol version as the management API shows it.
fn version_text(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V5 => "5",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V3_1 => "3.1",
    }
}

/// Writes one CONNACK refusing the connection.
async fn refuse(wr: &mut WriteHalf, version: ProtocolVersion, reason: ReasonCode) {
    let ack = ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    };
    let mut out = BytesMut::new();
    if codec::encode(&Packet::ConnAck(ack), version, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
    }
}

/// Authenticates, applies the client id rules, claims the session and
/// sends CONNACK. None: refused (CONNACK sent when the spec has one).
async fn accept(
    ctx: &Arc<MqttContext>,
    c: Connect,
    peer: SocketAddr,
    client_name: Option<&str>,
    wr: &mut WriteHalf,
    kick: registry::Kick,
) -> Option<(Conn, Option<Duration>)> {
    let v = c.version;
    let settings = &ctx.settings;
    if c.properties.authentication_method.is_some() {
        // No enhanced authentication (AUTH) here [MQTT-4.12.0-1].
        refuse(wr, v, ReasonCode::BAD_AUTHENTICATION_METHOD).await;
        return None;
    }
    // Who is this? A verified client certificate logs in a client that
    // gives no password, as the certificate's user (Mosquitto's
    // use_identity_as_username: a user name in CONNECT is not used).
    let (user, login) = match (&c.username, &c.password) {
        (_, None) if client_name.is_some() => {
            let name = client_name.unwrap_or_default();
            match ctx.auth.certificate_login(name, peer.ip()) {
                Ok(login) => (name.to_string(), login),
                Err(why) => {
                    tracing::info!(user = %name, reason = %why, "mqtt certificate login refused");
                    refuse(wr, v, ReasonCode::NOT_AUTHORIZED).await;
                    return None;
                }
            }
        }
        (None, _) if settings.allow_anonymous => {
            if !ctx
                .auth
                .may_connect_from(&settings.anonymous_user, peer.ip())
            {
                tracing::info!(user = %settings.anonymous_user, "mqtt anonymous login refused from this peer");
                refuse(wr, v, ReasonCode::NOT_AUTHORIZED).await;
                return None;
            }
            (
                settings.anonymous_user.clone(),
                junction_core::Login::default(),
            )
        }
        (None, _) => {
            refuse(wr, v, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
        (Some(u), p) => {
            let password = p
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            let verdict = ctx.broker.logins().check(&ctx.auth, u, password, peer.ip());
            match verdict.await {
                Ok(login) => (u.clone(), login),
                Err(why) => {
                    tracing::info!(user = %u, reason = %why, "mqtt login refused");
                    let reason = match why {
                        junction_core::LoginError::Busy => ReasonCode::SERVER_BUSY,
                        junction_core::LoginError::Refused(_) => {
                            ReasonCode::BAD_USER_NAME_OR_PASSWORD
                        }
                    };
                    refuse(wr, v, reason).await;
                    return None;
                }
            }
        }
    };
    // Client id rules [MQTT-3.1.3-6], [MQTT-3.1.3-8].
    let mut assigned = None;
    let client_id = if c.client_id.is_empty() {
        if !c.clean_start && !v.is_v5() {
            refuse(wr, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).await;
            return None;
        }
        // Connection ids never repeat, across restarts too.
        let id = format!("junction-{}", ctx.broker.new_connection_id().0);
        assigned = Some(id.clone());
        id
    } else if c.client_id.len() > 200 {
        refuse(wr, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID).await;
        return None;
    } else {
        c.client_id.clone()
    };
    let who = junction_core::Principal {
        user,
        vhost: settings.vhost.clone(),
        client_id: client_id.clone(),
        peer: peer.ip(),
        backend: login.backend,
    };
    let Some(mut access) = junction_core::Access::open(Arc::clone(&ctx.auth), who).await else {
        refuse(wr, v, ReasonCode::NOT_AUTHORIZED).await;
        return None;
    };
    if let Some(w) = &c.will {
        // A will the user could not publish is refused now, not dropped
        // at the disconnect (MQTT 5: 0x87 in CONNACK).
        if let Err(denied) = may_publish(&mut access, w.topic.as_str()).await {
            tracing::info!(reason = %denied, "mqtt will refused");
            refuse(wr, v, ReasonCode::NOT_AUTHORIZED).await;
            return None;
        }
    }
    let user = access.principal().user.clone();
    let asked = c.properties.session_expiry_interval.unwrap_or(0);
    let expiry = if v.is_v5() {
        settings.cap_session_expiry(asked)
    } else if c.clean_start {
        0
    } else {
        settings.persistent_session_expiry.max(1)
    };
    let mut guard = ctx.broker.open_connection(Protocol::Mqtt);
    if let Err(why) = guard.login(&user) {
        tracing::info!(user = %user, reason = %why, "mqtt connection refused");
        refuse(wr, v, ReasonCode::QUOTA_EXCEEDED).await;
        return None;
    }
    // In a cluster the client id is claimed first: every other node drops
    // its connection for it, and the node that held its session hands it
    // over (docs/cluster.md "MQTT sessions across nodes").
    let (handed, superseded) = match claim_in_cluster(ctx, &client_id, guard.id()).await {
        Ok(Handed::Session(rec)) => (Some(rec), false),
        Ok(Handed::Nothing) => (None, false),
        Ok(Handed::Superseded) => (None, true),
        Err(e) => {
            tracing::info!(%client_id, error = %e, "mqtt connection refused: its client id could not be claimed in the cluster");
            refuse(wr, v, ReasonCode::SERVER_UNAVAILABLE).await;
            return None;
        }
    };
    let conn_id = guard.id();
    let fresh = |handed: Option<SessionRecord>| match handed {
        Some(rec) => {
            let mut s = Session::new(client_id.clone(), expiry, conn_id);
            ctx.stats
                .subscriptions
                .fetch_add(rec.subscriptions.len() as i64, Ordering::Relaxed);
            s.subs = rec.subscriptions;
            s
        }
        None => Session::new(client_id.clone(), expiry, conn_id),
    };
    let claim = ctx.registry.claim(&client_id, guard.id(), kick).await;
    let claim = match claim {
        // A session here older than the one handed over is not this
        // client's any more. (A departed one nobody took is resumed.)
        Claim::Parked(p) if handed.is_some() => {
            registry::discard_departed(ctx, p.session).await;
            Claim::Fresh
        }
        claim => claim,
    };
    let (session, present) = match claim {
        Claim::Busy => {
            refuse(wr, v, ReasonCode::SERVER_BUSY).await;
            ctx.broker
                .release_client(&settings.vhost, &client_id, guard.id());
            return None;
        }
        Claim::Fresh if c.clean_start => {
            if let Some(rec) = handed {
                // The session handed over ends here, with its queues.
                registry::end_session(ctx, fresh(Some(rec))).await;
            } else if !superseded {
                // One its node could not hand over ends too: its queue,
                // wherever it lives, is not this clean session's (unless
                // a newer claim of the client uses it).
                registry::drop_stale_queue(ctx, &client_id, conn_id).await;
            }
            (Session::new(client_id.clone(), expiry, guard.id()), false)
        }
        Claim::Fresh => {
            let present = handed.is_some();
            (fresh(handed), present)
        }
        Claim::Parked(p) => {
            let Parked { session, will, .. } = *p;
            if c.clean_start {
                // The old session ends here, and its delayed will with it.
                registry::end_session(ctx, session).await;
                if let Some(w) = will {
                    registry::publish_will(ctx, w).await;
                }
                (Session::new(client_id.clone(), expiry, guard.id()), false)
            } else {
                (session, true)
            }
        }
    };
    // A claim another node made while this one was being accepted found
    // no connection here to close: this one goes now (inserted first,
    // then asked, as in `finish`). A later claim of this node is another
    // local connection's, which the local registry orders.
    if let Some(me) = ctx.broker.node_name()
        && ctx
            .broker
            .client_claim(&settings.vhost, &client_id)
            .is_none_or(|c| c.node != me)
    {
        ctx.registry.depart(&client_id);
    }
    let mut session = session;
    session.connection = guard.id();
    let was_persistent = session.is_persistent();
    session.expiry = expiry;
    let client_recv_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    session
        .credit
        .set_limit(u32::from(client_recv_max.min(settings.max_inflight.max(1))));
    // Keepalive, capped by the broker's maximum.
    let mut keepalive = c.keep_alive;
    let mut server_keep_alive = None;
    if settings.max_keepalive > 0 && (keepalive == 0 || keepalive > settings.max_keepalive) {
        keepalive = settings.max_keepalive;
        server_keep_alive = Some(keepalive);
    }
    let mut props = ConnAckProperties::default();
    if v.is_v5() {
        props.assigned_client_identifier = assigned;
        props.server_keep_alive = server_keep_alive;
        // A granted expiry other than the one asked for is announced
        // in CONNACK (MQTT 5 3.2.2.3.2).
        if expiry != asked {
            props.session_expiry_interval = Some(expiry);
        }
        props.receive_maximum = Some(settings.receive_maximum);
        props.maximum_packet_size = Some(settings.max_packet_size);
        props.topic_alias_maximum = Some(settings.topic_alias_maximum);
    }
    let ack = ConnAck {
        session_present: present,
        reason: ReasonCode::SUCCESS,
        properties: props,
    };
    let mut conn = Conn {
        ctx: Arc::clone(ctx),
        guard,
        version: v,
        session,
        will: c.will.map(Box::new),
        out: BytesMut::new(),
        confirms: Confirms::default(),
        qos1_pending: 0,
        client_max_packet: c
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        client_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        rare: None,
        end: None,
        linger: false,
        has_published: false,
        routed: 0,
        access,
    };
    if conn.session.is_persistent() || was_persistent {
        // The record holds the expiry in force; a session made persistent
        // now gets its first record, one made transient loses it.
        conn.save_session().await;
    }
    if let Err(e) = conn.attach().await {
        tracing::warn!(error = %e, "mqtt session not attached");
        refuse(wr, v, ReasonCode::UNSPECIFIED_ERROR).await;
        conn.end = Some(End::Normal);
        Box::pin(conn.finish()).await;
        return None;
    }
    conn.send(Packet::ConnAck(ack));
    conn.session.credit.set_paused(false);
    conn.pump();
    conn.resend_inflight();
    let keepalive = (keepalive > 0).then(|| Duration::from_millis(u64::from(keepalive) * 1500));
    Some((conn, keepalive))
}

/// What claiming a client id in the cluster found.
enum Handed {
    /// Nothing to take: not in a cluster, no other node held the id, or
    /// its node had no session or could not be reached (the client then
    /// starts afresh; the queue, where it lives, keeps its messages).
    Nothing,
    /// The session's record, handed over by the node that held it.
    Session(SessionRecord),
    /// The node that held it claimed the id again after this connection
    /// did: the session stays there, and this connection is not the
    /// client's latest (it is closed as taken over once accepted).
    Superseded,
}

/// Claims `client_id` for connection `conn` in the cluster (nothing
/// outside one) and, when another node held it, takes its session from
/// that node. An error: the claim was not committed.
async fn claim_in_cluster(
    ctx: &MqttContext,
    client_id: &str,
    conn: ConnectionId,
) -> Result<Handed, junction_core::CoreError> {
    let broker = &ctx.broker;
    let vhost = &ctx.settings.vhost;
    let Some((previous, index)) = broker.claim_client(vhost, client_id, conn).await? else {
        return Ok(Handed::Nothing);
    };
    if Some(previous.node.as_str()) == broker.node_name() {
        return Ok(Handed::Nothing);
    }
    match broker
        .take_client_session(&previous.node, vhost, client_id, conn, index)
        .await
    {
        Ok(TakenSession::Record(bytes)) => match SessionRecord::decode(&bytes) {
            Ok(rec) => Ok(Handed::Session(rec)),
            Err(e) => {
                tracing::warn!(%client_id, error = %e, "a session handed over could not be read");
                Ok(Handed::Nothing)
            }
        },
        Ok(TakenSession::Nothing) => Ok(Handed::Nothing),
        Ok(TakenSession::Kept) => Ok(Handed::Superseded),
        Err(e) => {
            tracing::warn!(%client_id, node = %previous.node, error = %e, "mqtt session not taken over from its node; starting afresh");
            Ok(Handed::Nothing)
        }
    }
}

/// Whether `access` allows publishing on `topic`: write on its exchange,
/// and topic write on its routing key when that is `amq.topic`.
pub(crate) async fn may_publish(
    access: &mut junction_core::Access,
    topic: &str,
) -> Result<(), junction_core::Denied> {
    let (exchange, key) = crate::convert::address(topic);
    may_route(access, exchange, &key).await
}

/// [`may_publish`] for a message already addressed.
pub(crate) async fn may_route(
    access: &mut junction_core::Access,
    exchange: &str,
    key: &str,
) -> Result<(), junction_core::Denied> {
    use junction_core::{Permission, Resource};
    access
        .check(Permission::Write, Resource::Exchange(exchange))
        .await?;
    if exchange == crate::convert::TOPIC_EXCHANGE {
        access.check_topic(Permission::Write, exchange, key).await?;
    }
    Ok(())
}

/// Writes everything queued. Cancel-safe: what was written is consumed
/// from `out` as it goes, so an interrupted flush never sends bytes twice.
/// The memory alarm counts the buffer while it is being written (a client
/// that reads slowly holds it until the write deadline).
pub(crate) async fn flush(
    broker: &junction_core::Broker,
    wr: &mut WriteHalf,
    out: &mut BytesMut,
    stall: Duration,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let _held = broker.charge_memory(out.len() as u64);
    junction_core::io::write_all_buf_within(wr, out, stall).await?;
    if out.capacity() > 64 * 1024 {
        // Do not keep a burst's buffer for the life of the connection.
        *out = BytesMut::new();
    }
    Ok(())
}

/// How long the last write (a DISCONNECT, say) may take once the
/// connection is ending: a client that does not read cannot hold up its
/// session's parking, a takeover or a shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// First read buffer: enough for a CONNECT and the pings of an idle client.
const READ_START: usize = 128;
/// Largest read per call, reached by doubling while reads fill the buffer.
const READ_MAX: usize = 64 * 1024;

/// Makes room to read at least a little: `want` more bytes when fewer than
/// a quarter of it are free (an empty buffer reuses its allocation).
fn make_room(buf: &mut BytesMut, want: usize) {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
}

/// What a turn of the serving loop does after its select.
enum Then {
    Nothing,
    /// Decode and handle what was read.
    Decode,
    /// Another connection took the session over (or an operator closed
    /// this one).
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// Quiet for a while: leave the loop and park.
    Park,
}

/// How long a connection with nothing to do keeps its serving loop before
/// it parks (see [`park`]); a parked connection costs less memory, and
/// waking it costs an allocation.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// When the serving loop's timer fires next: the keepalive's end, or
/// sooner to see whether the connection can park.
fn next_check(keepalive: Option<Duration>, last_recv: Instant, now: Instant) -> Instant {
    let park = now + PARK_AFTER;
    keepalive.map_or(park, |k| (last_recv + k).min(park))
}

/// How many deliveries one loop turn takes before writing.
const DELIVERY_BATCH: usize = 256;

impl Conn {
    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        rd: &mut ReadHalf,
        wr: &mut WriteHalf,
        buf: &mut BytesMut,
        keepalive: Option<Duration>,
        mut last_recv: Instant,
        shutdown: &CancellationToken,
        kick: &registry::Kick,
    ) -> std::io::Result<Option<Instant>> {
        let max = self.ctx.settings.max_packet_size as usize;
        let stall = self.ctx.broker.limits().write_timeout;
        let mut alarm = self.ctx.broker.memory_alarm();
        let mut events = self.session.events_rx.take();
        // One timer, moved on only when it fires: at the keepalive's end,
        // or every PARK_AFTER to see whether the connection went quiet. A
        // busy client costs no timer updates per read.
        let timer = tokio::time::sleep_until(next_check(keepalive, last_recv, Instant::now()));
        tokio::pin!(timer);
        let mut read_size = READ_START;
        // Packets already buffered (behind the CONNECT, or read while
        // parked).
        Box::pin(self.read_packets(buf, max)).await;
        // Activity since the timer last fired.
        let mut active = false;
        let result = loop {
            // A client that stops reading must not hold off a takeover
            // or a shutdown.
            let sent = self.out.len();
            let flushed = tokio::select! {
                // The flush first: with nothing to write it is done at once
                // and leaves a stored takeover or operator-close wake-up to
                // the select below, which tells the two apart (0x98 for an
                // operator's close).
                biased;
                r = flush(&self.ctx.broker, wr, &mut self.out, stall) => r,
                _ = shutdown.cancelled() => Err(std::io::ErrorKind::Interrupted.into()),
                _ = kick.notified() => Err(std::io::ErrorKind::Interrupted.into()),
            };
            if flushed.is_ok() {
                self.guard.count_sent(sent);
            }
            if let Err(e) = flushed {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    // Held by its window until now; a client that stops
                    // reading altogether is cut off (keepalive cannot run
                    // while we wait on its socket).
                    tracing::info!(client_id = %self.session.client_id, "mqtt client stopped reading; closing as a slow consumer");
                    self.ctx.broker.note_slow_consumer();
                }
                break Err(e);
            }
            if self.has_retained_backlog() && self.end.is_none() {
                // Retained messages go out a chunk per write.
                self.drain_retained_backlog();
                if !self.out.is_empty() {
                    continue;
                }
            }
            if self.end.is_some() {
                break Ok(None);
            }
            if let Some(due) = self.rare.as_ref().and_then(|r| r.reattach_due) {
                // One try per turn when due; between tries the loop serves
                // the client (and kicks, and shutdown) as usual, its timer
                // waking it for the next.
                if due <= Instant::now() {
                    // A try waits as long as the attach does (a leader
                    // being elected: seconds); a shutdown does not wait
                    // for it (the connection ends: what the try left half
                    // made goes with it).
                    let stopped = tokio::select! {
                        () = Box::pin(self.reattach()) => false,
                        () = shutdown.cancelled() => true,
                    };
                    if stopped || self.end.is_some() {
                        continue;
                    }
                }
                if let Some(due) = self.rare.as_ref().and_then(|r| r.reattach_due)
                    && due < timer.deadline()
                {
                    timer.as_mut().reset(due);
                }
            }
            let alarmed = *alarm.borrow() && self.has_published;
            let read_ok =
                !alarmed && self.confirms.len() < usize::from(self.ctx.settings.receive_maximum);
            make_room(buf, read_size);
            let room = buf.capacity() - buf.len();
            if events.is_none() {
                // The first subscription made the session's channel.
                events = self.session.events_rx.take();
            }
            // What a branch leaves to do after the select: no branch
            // awaits, so the select's output is not kept in this future
            // while a step runs (memory per connection).
            let mut then = Then::Nothing;
            tokio::select! {
                _ = shutdown.cancelled() => then = Then::Shutdown,
                // At shutdown every connection is kicked too (see `park`).
                _ = kick.notified() => {
                    then = if shutdown.is_cancelled() {
                        Then::Shutdown
                    } else {
                        Then::TakenOver
                    };
                }
                r = rd.read_buf(&mut *buf), if read_ok => {
                    match r {
                        Ok(0) => {
                            self.end.get_or_insert(End::Abnormal);
                        }
                        Ok(n) => {
                            self.guard.count_received(n);
                            if n == room {
                                // A busy publisher: read more per call.
                                read_size = (read_size * 2).min(READ_MAX);
                            }
                            last_recv = Instant::now();
                            active = true;
                            then = Then::Decode;
                        }
                        Err(e) => break Err(e),
                    }
                }
                Some(ack) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.on_confirm(ack);
                    active = true;
                    // Every ack already due goes in the same write (one
                    // store commit resolves many at once).
                    while let Some(Some(ack)) = self.confirms.next().now_or_never() {
                        self.on_confirm(ack);
                    }
                }
                Some(out) = next_outgoing(&mut self.rare), if !self.outbox_is_empty() => {
                    self.send_outgoing(out);
                    active = true;
                }
                ev = recv_some(&mut events) => {
                    if let Some(ev) = ev {
                        self.on_event(ev);
                        active = true;
                        let mut n = 1;
                        while n < DELIVERY_BATCH && self.end.is_none() {
                            match events.as_mut().map(|e| e.try_recv()) {
                                Some(Ok(ev)) => self.on_event(ev),
                                _ => break,
                            }
                            n += 1;
                        }
                    }
                }
                // Not while we hold the client back ourselves, unless a
                // consumer is to be made again (the loop's top does it).
                _ = &mut timer, if read_ok || self.rare.as_ref().is_some_and(|r| r.reattach_due.is_some()) => {
                    let now = Instant::now();
                    if !read_ok {
                        timer.as_mut().reset(now + PARK_AFTER);
                        continue;
                    }
                    if keepalive.is_none_or(|k| now < last_recv + k) {
                        // Not in the middle of a packet: parked reads are
                        // small (see `park`).
                        if !active && buf.is_empty() && self.quiet() {
                            then = Then::Park;
                        } else {
                            active = false;
                            timer.as_mut().reset(next_check(keepalive, last_recv, now));
                            continue;
                        }
                    } else {
                        // Bytes the client sent while we were busy writing to it
                        // count: only a silent socket times out.
                        match rd.try_read_buf(&mut *buf) {
                            Ok(n) if n > 0 => {
                                last_recv = Instant::now();
                                timer.as_mut().reset(next_check(keepalive, last_recv, last_recv));
                                then = Then::Decode;
                            }
                            _ => {
                                tracing::info!(client_id = %self.session.client_id, "mqtt keepalive timed out");
                                self.disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT);
                                self.linger = true;
                                self.end = Some(End::Abnormal);
                            }
                        }
                    }
                }
                _ = alarm.changed() => {}
            }
            match then {
                Then::Nothing => {}
                Then::Shutdown => {
                    self.linger = true;
                    self.disconnect(ReasonCode::SERVER_SHUTTING_DOWN);
                    self.end = Some(End::Normal);
                    // A broker shutdown is not the client's failure: no will.
                    self.will = None;
                }
                Then::Decode => {
                    self.routed = 0;
                    Box::pin(self.read_packets(buf, max)).await;
                    if self.routed == 1 && !self.out.is_empty() {
                        // A lone publish (a light load): the subscribers
                        // it woke are next on this worker; let them write
                        // their deliveries before its PUBACK, as Mosquitto
                        // does, rather than after a write of ours and the
                        // client's wake-up. A batch (a busy publisher)
                        // does not wait: its acks pace the client.
                        tokio::task::yield_now().await;
                    }
                }
                Then::Park => break Ok(Some(last_recv)),
                Then::TakenOver if self.guard.close_reason().is_some() => {
                    self.closed_by_operator();
                }
                Then::TakenOver => {
                    // What the client sent before the new connection came
                    // (its last acks, typically) still counts.
                    let mut budget: usize = 64 * 1024;
                    while budget > 0 && self.end.is_none() {
                        make_room(buf, read_size);
                        match rd.try_read_buf(&mut *buf) {
                            Ok(n) if n > 0 => {
                                budget = budget.saturating_sub(n);
                                Box::pin(self.read_packets(buf, max)).await;
                            }
                            _ => break,
                        }
                    }
                    self.disconnect(ReasonCode::SESSION_TAKEN_OVER);
                    self.end = Some(End::Abnormal);
                }
            }
        };
        // Not over a channel the last turn made (a first SUBSCRIBE in the
        // same read as DISCONNECT): the parked session would lose it and,
        // with it, every delivery.
        if events.is_some() {
            self.session.events_rx = events;
        }
        result
    }

    /// Nothing to write, wait for or finish: the loop may park.
    fn quiet(&self) -> bool {
        self.end.is_none()
            && self.rare.as_ref().is_none_or(|r| r.reattach_due.is_none())
            && self.out.is_empty()
            && self.confirms.is_empty()
            && self.outbox_is_empty()
            && !self.has_retained_backlog()
    }

    /// An operator closed the connection: 0x98, and the will goes out as
    /// for any close the client did not ask for.
    fn closed_by_operator(&mut self) {
        let why = self.guard.close_reason().unwrap_or_default();
        tracing::info!(client_id = %self.session.client_id, reason = %why, "mqtt connection closed by an operator");
        self.linger = true;
        self.disconnect(ReasonCode::ADMINISTRATIVE_ACTION);
        self.end = Some(End::Abnormal);
    }

    /// Decodes and handles every whole packet in `buf`.
    async fn read_packets(&mut self, buf: &mut BytesMut, max: usize) {
        while self.end.is_none() {
            match codec::decode(buf, Some(self.version), max) {
                Ok(Some(p)) => self.on_packet(p).await,
                Ok(None) => break,
                Err(e) => self.fail(e.reason_code(), &e.to_string()),
            }
        }
    }

    /// The rarely used state, made now if it was not.
    pub(crate) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    pub(crate) fn has_retained_backlog(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| !r.retained_backlog.is_empty())
    }

    pub(crate) fn outbox_is_empty(&self) -> bool {
        self.rare.as_ref().is_none_or(|r| r.outbox.is_empty())
    }

    /// Queues `packet` for the next write.
    pub(crate) fn send(&mut self, packet: Packet) {
        if let Err(e) = codec::encode(&packet, self.version, &mut self.out) {
            tracing::error!(error = %e, "mqtt packet not encoded");
        }
    }

    /// Queues a DISCONNECT with `reason` (MQTT 5 only; earlier versions
    /// just close).
    pub(crate) fn disconnect(&mut self, reason: ReasonCode) {
        if self.version.is_v5() {
            self.send(Packet::Disconnect(Disconnect::new(reason)));
        }
    }

    /// Closes the connection for a protocol violation. MQTT 5 clients get
    /// `why` as the DISCONNECT's Reason String (allowed whatever Request
    /// Problem Information says), unless it would make the packet larger
    /// than the client accepts.
    pub(crate) fn fail(&mut self, reason: ReasonCode, why: &str) {
        tracing::info!(client_id = %self.session.client_id, %reason, why, "mqtt protocol violation");
        if self.version.is_v5() {
            let mut d = Disconnect::new(reason);
            if why.len() + 16 <= self.client_max_packet {
                d.properties.reason_string = Some(why.to_string());
            }
            self.send(Packet::Disconnect(d));
        }
        self.linger = true;
        self.end = Some(End::Abnormal);
    }

    /// After the loop: will, session parked or ended, registry released.
    async fn finish(mut self) {
        let will = match self.end {
            Some(End::Normal) => None,
            _ => self.will.take(),
        };
        // A will on the broker's own `$SYS` tree is dropped, like a PUBLISH.
        let will = will
            .filter(|w| !w.topic.as_str().starts_with("$SYS"))
            .map(|w| self.will_message(*w));
        let ctx = Arc::clone(&self.ctx);
        let conn_id = self.guard.id();
        let client_id = self.session.client_id.clone();
        if self.session.is_persistent() {
            // Every consumer stays registered, paused: messages in flight
            // keep their packet ids and stay with this client (a shared
            // subscription's QoS 2 message must be completed by the member
            // that got it [MQTT-4.8.2-4]); new messages wait in the queues,
            // under their limits, or go to the other members of a group.
            self.session.credit.set_paused(true);
            if self.session.own_no_ack {
                // An ack-free consumer has no window to pause: it goes, and
                // new messages wait in the queue under its limits (what it
                // already handed over is delivered on resume).
                if let Some(c) = self.session.consumer.take() {
                    self.session.rare_mut().retired_own = Some(c.id());
                    c.cancel(true);
                }
            }
            let now = Instant::now();
            let expires_at = registry::expiry_deadline(self.session.expiry, now);
            // A delayed will waits with the parked session; one without
            // delay goes out now.
            let (pending, now_will) = match will {
                Some((w, 0)) => (None, Some(w)),
                Some((w, delay)) => {
                    let at = now + Duration::from_secs(u64::from(delay));
                    let at = expires_at.map_or(at, |e| e.min(at));
                    (Some(PendingWill { at, ..w }), None)
                }
                None => (None, None),
            };
            self.save_session_at(crate::convert::unix_secs()).await;
            let session =
                std::mem::replace(&mut self.session, Session::new(String::new(), 0, conn_id));
            ctx.registry.release(
                &client_id,
                conn_id,
                Some(Box::new(Parked {
                    session,
                    expires_at,
                    will: pending,
                    departed: false,
                })),
            );
            // Parked first, then asked: a claim applied meanwhile either
            // found the parked session or is seen here.
            if ctx.broker.client_elsewhere(&ctx.settings.vhost, &client_id) {
                ctx.registry.depart(&client_id);
            }
            if let Some(w) = now_will {
                registry::publish_will(&ctx, w).await;
            }
        } else {
            // The will goes out when the session ends, which is now.
            let session =
                std::mem::replace(&mut self.session, Session::new(String::new(), 0, conn_id));
            registry::end_session(&ctx, session).await;
            ctx.registry.release(&client_id, conn_id, None);
            ctx.broker
                .release_client(&ctx.settings.vhost, &client_id, conn_id);
            if let Some((w, _)) = will {
                registry::publish_will(&ctx, w).await;
            }
        }
    }

    /// Stores the session record (persistent sessions), durably.
    pub(crate) async fn save_session(&mut self) {
        self.save_session_at(0).await;
    }

    async fn save_session_at(&mut self, disconnected_at: u64) {
        let mut w = junction_core::StateWrites::new();
        if self.session.is_persistent() {
            self.session.save(&mut w, disconnected_at);
        } else if self.session.stored {
            self.session.forget(&mut w);
        } else {
            return;
        }
        if let Err(e) = self.ctx.broker.write_state(w).await {
            tracing::warn!(error = %e, "mqtt session record not written");
        }
    }

    /// The will as a pending message, and its delay in seconds.
    fn will_message(&self, w: LastWill) -> (PendingWill, u32) {
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let p = Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic.clone(),
            packet_id: None,
            properties: codec::PublishProperties {
                payload_format: w.properties.payload_format,
                message_expiry_interval: w.properties.message_expiry_interval,
                content_type: w.properties.content_type.clone(),
                response_topic: w.properties.response_topic.clone(),
                correlation_data: w.properties.correlation_data.clone(),
                user_properties: w.properties.user_properties.clone(),
                ..codec::PublishProperties::default()
            },
            payload: w.payload.clone(),
        };
        let message = crate::convert::to_core(&p, w.topic.as_str(), self.origin());
        (
            PendingWill {
                at: Instant::now(),
                message,
                retain: w.retain,
            },
            delay,
        )
    }

    pub(crate) fn origin(&self) -> junction_core::Origin {
        junction_core::Origin {
            protocol: Protocol::Mqtt,
            connection: self.guard.id(),
        }
    }
}

/// The next delivery whose store record is written (pending if none).
async fn next_outgoing(rare: &mut Option<Box<Rare>>) -> Option<Outgoing> {
    match rare {
        Some(r) if !r.outbox.is_empty() => r.outbox.next().await,
        _ => std::future::pending().await,
    }
}

async fn recv_some(
    events: &mut Option<tokio::sync::mpsc::UnboundedReceiver<ConsumerEvent>>,
) -> Option<ConsumerEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod footprint {
    /// Size of the future `f` returns, without calling it.
    fn future_size<F, R>(_: F) -> usize
    where
        F: FnOnce(
            junction_core::io::Stream,
            std::net::SocketAddr,
            std::sync::Arc<crate::MqttContext>,
            tokio_util::sync::CancellationToken,
        ) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Size of the future [`super::Conn::serve`] returns, without calling it.
    #[allow(clippy::type_complexity)]
    fn serve_size<'a, F, R>(_: F) -> usize
    where
        F: FnOnce(
            &'a mut super::Conn,
            &'a mut junction_core::io::ReadHalf,
            &'a mut junction_core::io::WriteHalf,
            &'a mut bytes::BytesMut,
            Option<std::time::Duration>,
            tokio::time::Instant,
            &'a tokio_util::sync::CancellationToken,
            &'a super::registry::Kick,
        ) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Size of the future [`super::park`] returns, without calling it.
    fn park_size<'a, F, R>(_: F) -> usize
    where
        F: FnOnce(&'a mut super::Live, tokio::time::Instant) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Every idle connection keeps its task's future, the parked wait's
    /// future (the serving loop's while it is busy) and its
    /// [`super::Live`]: a large local or an unboxed step
    /// costs that much per connection. A 4 KiB read array in `linger` once
    /// tripled it; the CONNECT and the handshake's locals kept in the task
    /// for the connection's life cost 2 KB until they moved into a step
    /// of their own. Not a timing: sizes the compiler decides.
    #[test]
    fn the_connection_future_stays_small() {
        let task = future_size(super::run);
        let serve = serve_size(super::Conn::serve);
        let park = park_size(super::park);
        let live = std::mem::size_of::<super::Live>();
        eprintln!("task future {task} B, serving loop {serve} B, parked {park} B, Live {live} B");
        eprintln!(
            "Conn {} B: Session {} B, Subscriptions {} B, Access {} B, guard {} B; halves {} + {} B",
            std::mem::size_of::<super::Conn>(),
            std::mem::size_of::<crate::session::Session>(),
            std::mem::size_of::<crate::session::Subscriptions>(),
            std::mem::size_of::<junction_core::Access>(),
            std::mem::size_of::<junction_core::ConnectionGuard>(),
            std::mem::size_of::<junction_core::io::ReadHalf>(),
            std::mem::size_of::<junction_core::io::WriteHalf>(),
        );
        assert!(task <= 256, "the MQTT connection future is {task} bytes");
        assert!(serve <= 1_024, "the serving loop's future is {serve} bytes");
        // jemalloc size classes: 320 and 512 bytes.
        assert!(park <= 320, "the parked wait's future is {park} bytes");
        assert!(live <= 512, "Live is {live} bytes");
    }
}
