//! The connection task: the only code that touches the socket. CONNECT
//! under the connect timeout, then one `select!` over the socket, the
//! consumers' deliveries, the ordered receipts, the heart-beat timer and
//! shutdown; everything produced in a turn goes out in one write, under
//! the write deadline. Runs over any byte stream.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use junction_core::io::{ReadHalf, Stream, WriteHalf};
use junction_core::{
    Binding, ConnectionGuard, ConsumerEvent, ConsumerHandle, ConsumerId, ConsumerSpec, CoreError,
    DeliveryTag, LoginError, MemoryCharge, Message, Origin, Permission, Protocol, QueueDef,
    Resource, Settle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{
    Command, Decoded, Decoder, Frame, Headers, Limits, Version, encode, encode_head,
    encode_heartbeat,
};
use crate::context::StompContext;
use crate::convert::{self, Destination, TOPIC_EXCHANGE};
use crate::session::{AckMode, Acks, HeartBeat, Transactions, negotiate_version};

/// A frame's outcome, in frame order: its receipt (if it asked for one),
/// or why it failed (with that receipt, for the ERROR's `receipt-id`).
type Outcome = Result<Option<String>, (String, Option<String>)>;

/// An [`Outcome`] that resolves when the frame's work is done.
type ReceiptFuture = Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// Receipts (SENDs awaiting their store write) outstanding before the
/// connection stops reading: publishers wait for the disk, not the broker's
/// memory.
const MAX_PENDING_RECEIPTS: usize = 4096;

/// /queue/ names this connection knows exist, before the cache is reset.
const MAX_KNOWN_QUEUES: usize = 10_000;

/// How long a closing connection may take to write its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Bodies shorter than this are copied next to their frame's headers;
/// longer ones go out as the `Bytes` they are (a vectored write).
const COPY_BODY_BELOW: usize = 4096;

/// What one loop turn writes: frames encoded into `scratch`, large message
/// bodies kept as their own chunks, never copied.
#[derive(Default)]
struct Outbox {
    chunks: Vec<Bytes>,
    scratch: BytesMut,
}

impl Outbox {
    fn frame(&mut self, f: &Frame, version: Version) {
        encode(f, version, &mut self.scratch);
    }

    /// A frame whose body is `body` (its `content-length` already set).
    fn with_body(&mut self, head: &Frame, body: &Bytes, version: Version) {
        if body.len() < COPY_BODY_BELOW {
            encode_head(head, version, &mut self.scratch, body.len() + 1);
            self.scratch.put_slice(body);
        } else {
            encode_head(head, version, &mut self.scratch, 1);
            self.seal();
            self.chunks.push(body.clone());
        }
        self.scratch.put_u8(0);
    }

    fn heartbeat(&mut self) {
        encode_heartbeat(&mut self.scratch);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.scratch.is_empty()
    }

    fn seal(&mut self) {
        if !self.scratch.is_empty() {
            self.chunks.push(self.scratch.split().freeze());
        }
    }

    /// Everything queued, in order.
    fn take(&mut self) -> Vec<Bytes> {
        self.seal();
        std::mem::take(&mut self.chunks)
    }
}

/// A refusal sent as an ERROR frame; the connection closes after it.
#[derive(Debug)]
struct StompError {
    message: String,
    detail: String,
}

impl StompError {
    fn new(message: impl Into<String>) -> StompError {
        StompError {
            message: message.into(),
            detail: String::new(),
        }
    }

    fn detail(mut self, d: impl Into<String>) -> StompError {
        self.detail = d.into();
        self
    }

    fn core(e: CoreError) -> StompError {
        let message = match &e {
            CoreError::NotFound(_) => "not_found",
            CoreError::AccessRefused(_) | CoreError::NotAllowed(_) => "access_refused",
            CoreError::ResourceLocked(_) => "resource_locked",
            CoreError::PreconditionFailed(_) | CoreError::LimitReached(_) => "precondition_failed",
            CoreError::ShuttingDown => "broker shutting down",
            CoreError::Unavailable(_) => "cluster_unavailable",
            _ => "internal_error",
        };
        StompError::new(message).detail(e.to_string())
    }
}

fn missing(header: &str, command: Command) -> StompError {
    StompError::new(format!("missing '{header}' header"))
        .detail(format!("{command} frames need a '{header}' header"))
}

/// What a transaction does at COMMIT.
enum TxOp {
    Send(Box<(Destination, Message)>),
    Settle { id: u64, nack: Option<bool> },
}

/// A delivery awaiting ACK/NACK.
struct Pending {
    queue: Arc<junction_core::Queue>,
    holder: ConsumerId,
    tag: DeliveryTag,
}

struct Sub {
    key: u64,
    id: String,
    mode: AckMode,
    handle: ConsumerHandle,
    /// The `destination` its MESSAGE frames show, when fixed (temp queues).
    destination: Option<String>,
}

struct Opened {
    user: String,
    vhost: String,
    access: junction_core::Access,
    version: Version,
    heartbeat: HeartBeat,
    client_id: Option<String>,
}

enum ConnectError {
    /// The peer left, or the socket failed.
    Gone,
    /// An ERROR frame was written.
    Refused,
}

pub(crate) async fn run(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("stomp", %peer, user = tracing::field::Empty, vhost = tracing::field::Empty);
    async move {
        stream.set_nodelay();
        let client_name = stream.client_name();
        let tls = stream.is_tls();
        let websocket = stream.is_websocket();
        let (mut rd, mut wr) = stream.split();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        // Before login a peer gets little buffer: the handshake limit.
        let handshake = ctx.broker.limits().max_handshake_size;
        let full = ctx.settings.limits();
        let mut decoder = Decoder::new(
            Version::V1_0,
            Limits {
                max_frame: handshake.min(full.max_frame),
                max_body: handshake.min(full.max_body),
                ..full
            },
        );
        // Registered before CONNECT: the login counts it against the
        // user's connections (the per-user cap).
        let mut guard = ctx.broker.open_connection(Protocol::Stomp);
        guard.describe(|d| {
            d.peer = Some(peer);
            d.tls = tls;
            d.websocket = websocket;
        });
        let connect = connect(
            &mut rd,
            &mut wr,
            &mut buf,
            &mut decoder,
            &ctx,
            Caller {
                peer,
                client_name: client_name.as_deref(),
                guard: &mut guard,
            },
        );
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(ctx.settings.connect_timeout(), connect) => r,
        };
        let opened = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(ConnectError::Gone)) => return,
            Ok(Err(ConnectError::Refused)) => {
                close_after_error(&mut rd, &mut wr).await;
                return;
            }
            Err(_) => {
                tracing::info!("no CONNECT frame within the connect timeout");
                let mut out = BytesMut::new();
                encode(
                    &Frame::error("connect timeout")
                        .with_body("no CONNECT frame within the connect timeout"),
                    Version::V1_0,
                    &mut out,
                );
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.write_all(&out)).await;
                close_after_error(&mut rd, &mut wr).await;
                return;
            }
        };
        guard.describe(|d| {
            d.vhost = Some(opened.vhost.clone());
            d.client_id.clone_from(&opened.client_id);
            d.version = Some(opened.version.as_str());
        });
        // An operator's close stops this connection as a shutdown does,
        // with its own ERROR (see `serve`).
        let shutdown = shutdown.child_token();
        guard.close_with(&shutdown);
        let span = tracing::Span::current();
        span.record("user", opened.user.as_str());
        span.record("vhost", opened.vhost.as_str());
        // Frames after CONNECT: the agreed version's escaping, full limits.
        let decoder = Decoder::new(opened.version, full);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let settings = &ctx.settings;
        let mut conn = Conn {
            guard,
            ctx: Arc::clone(&ctx),
            user: opened.user,
            vhost: opened.vhost,
            access: opened.access,
            version: opened.version,
            heartbeat: opened.heartbeat,
            client_id: opened.client_id,
            out: Outbox::default(),
            subs: HashMap::new(),
            by_consumer: HashMap::new(),
            next_sub: 1,
            acks: Acks::default(),
            txs: Transactions::new(
                settings.max_transactions,
                settings.max_transaction_frames,
                settings.max_transaction_bytes,
            ),
            tx_charges: HashMap::new(),
            receipts: FuturesOrdered::new(),
            events_tx,
            temp_queues: HashMap::new(),
            known_queues: HashSet::new(),
            has_sent: false,
            disconnect_receipt: None,
            finished: false,
            error_sent: false,
        };
        let served = conn
            .serve(&mut rd, &mut wr, buf, decoder, events_rx, shutdown)
            .await;
        if let Err(e) = &served {
            tracing::debug!(error = %e, "stomp connection ended");
        }
        let error_sent = conn.error_sent;
        // Subscriptions end here: unacknowledged messages go back to their
        // queues; open transactions are dropped.
        drop(conn);
        if error_sent && served.is_ok() {
            close_after_error(&mut rd, &mut wr).await;
        } else {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
        }
    }
    .instrument(span)
    .await
}

/// After an ERROR: shut the write side and read what the client still
/// sends for a short grace, so it reads the ERROR instead of a reset.
async fn close_after_error(rd: &mut ReadHalf, wr: &mut WriteHalf) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
    junction_core::io::linger(
        rd,
        junction_core::io::CLOSE_GRACE,
        junction_core::io::CLOSE_DRAIN_BYTES,
    )
    .await;
}

/// Who is connecting: the peer, the user its TLS client certificate
/// stands for, and the connection's registration (logged in by CONNECT).
struct Caller<'a> {
    peer: SocketAddr,
    client_name: Option<&'a str>,
    guard: &'a mut junction_core::ConnectionGuard,
}

/// Reads the CONNECT (or STOMP) frame, logs the client in and answers
/// CONNECTED; refusals are written as ERROR frames.
async fn connect(
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    ctx: &StompContext,
    caller: Caller<'_>,
) -> Result<Opened, ConnectError> {
    let Caller {
        peer,
        client_name,
        guard,
    } = caller;
    let frame = loop {
        match decoder.decode(buf) {
            Ok(Decoded::Frame(f)) => break f,
            Ok(Decoded::HeartBeat) => continue,
            Ok(Decoded::Incomplete) => {}
            Err(e) => {
                tracing::info!(error = %e, "bad frame before CONNECT");
                return Err(refuse(wr, e.to_frame(), Version::V1_0).await);
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Gone),
            Ok(_) => {}
        }
    };
    let refuse_with = |message: &str, detail: String| {
        let mut f = Frame::error(message).with_body(detail.into_bytes());
        if let Some(r) = frame.get("receipt") {
            f.headers.push("receipt-id", r);
        }
        f
    };
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        let f = refuse_with(
            "expected CONNECT",
            format!(
                "the first frame must be CONNECT or STOMP, not {}",
                frame.command
            ),
        );
        return Err(refuse(wr, f, Version::V1_0).await);
    }
    let Some(version) = negotiate_version(frame.get("accept-version")) else {
        let f = refuse_with(
            "unsupported protocol version",
            "Supported protocol versions are 1.0,1.1,1.2".into(),
        )
        .header("version", "1.0,1.1,1.2");
        return Err(refuse(wr, f, Version::V1_0).await);
    };
    let floor = Duration::from_millis(ctx.settings.heartbeat_min_ms);
    let heartbeat = match HeartBeat::negotiate(frame.get("heart-beat"), floor) {
        Ok(h) => h,
        Err(e) => return Err(refuse(wr, refuse_with("invalid heart-beat", e), version).await),
    };
    let vhost = frame.get("host").unwrap_or("/").to_string();
    if ctx.broker.vhost(&vhost).is_err() {
        let f = refuse_with(
            "access_refused",
            format!("virtual host '{vhost}' does not exist"),
        );
        return Err(refuse(wr, f, version).await);
    }
    // A verified client certificate logs in a client that gives no
    // passcode, as the certificate's user (a login header is not used).
    let certified = match (client_name, frame.get("passcode")) {
        (Some(name), None) => Some(name),
        _ => None,
    };
    let (user, login) = match frame.get("login") {
        _ if certified.is_some() => {
            let name = certified.unwrap_or_default();
            match ctx.auth.certificate_login(name, peer.ip()) {
                Ok(login) => (name.to_string(), login),
                Err(why) => {
                    tracing::info!(user = name, reason = why, "stomp certificate login refused");
                    let f = refuse_with(
                        "access_refused",
                        format!("access refused for the certificate's user '{name}'"),
                    );
                    return Err(refuse(wr, f, version).await);
                }
            }
        }
        Some(login) => {
            let passcode = frame.get("passcode").unwrap_or("").to_string();
            match ctx
                .broker
                .logins()
                .check(&ctx.auth, login, passcode, peer.ip())
                .await
            {
                Ok(ok) => (login.to_string(), ok),
                Err(LoginError::Busy) => {
                    let f = refuse_with(
                        "server busy",
                        "too many logins are waiting; try again".into(),
                    );
                    return Err(refuse(wr, f, version).await);
                }
                Err(LoginError::Refused(why)) => {
                    tracing::info!(user = login, reason = why, "stomp login refused");
                    let f = refuse_with(
                        "access_refused",
                        format!("access refused for user '{login}'"),
                    );
                    return Err(refuse(wr, f, version).await);
                }
            }
        }
        None if ctx.settings.allow_anonymous
            && ctx
                .auth
                .may_connect_from(&ctx.settings.anonymous_user, peer.ip()) =>
        {
            (
                ctx.settings.anonymous_user.clone(),
                junction_core::Login::default(),
            )
        }
        None => {
            let f = refuse_with("access_refused", "a login is required".into());
            return Err(refuse(wr, f, version).await);
        }
    };
    let who = junction_core::Principal {
        user: user.clone(),
        vhost: vhost.clone(),
        client_id: String::new(),
        peer: peer.ip(),
        backend: login.backend,
    };
    let Some(access) = junction_core::Access::open(Arc::clone(&ctx.auth), who).await else {
        let f = refuse_with(
            "access_refused",
            format!("user '{user}' may not use virtual host '{vhost}'"),
        );
        return Err(refuse(wr, f, version).await);
    };
    if let Err(why) = guard.login(&user) {
        tracing::info!(user, reason = why, "stomp connection refused");
        return Err(refuse(wr, refuse_with("not_allowed", why), version).await);
    }
    let connected = Frame::new(Command::Connected)
        .header("version", version.as_str())
        .header("server", concat!("Junction/", env!("CARGO_PKG_VERSION")))
        .header(
            "session",
            format!("session-{}", ctx.broker.new_consumer_id()),
        )
        .header("heart-beat", heartbeat.header());
    let mut out = BytesMut::new();
    encode(&connected, version, &mut out);
    let stall = ctx.broker.limits().write_timeout;
    if junction_core::io::write_all_buf_within(wr, &mut out, stall)
        .await
        .is_err()
    {
        return Err(ConnectError::Gone);
    }
    tracing::debug!(
        version = version.as_str(),
        heartbeat = heartbeat.header(),
        "stomp connection open"
    );
    Ok(Opened {
        user,
        vhost,
        access,
        version,
        heartbeat,
        client_id: frame.get("client-id").map(str::to_string),
    })
}

async fn refuse(wr: &mut WriteHalf, frame: Frame, version: Version) -> ConnectError {
    tracing::info!(
        message = frame.get("message").unwrap_or(""),
        "stomp connection refused"
    );
    let mut out = BytesMut::new();
    encode(&frame, version, &mut out);
    match tokio::time::timeout(CLOSE_TIMEOUT, wr.write_all(&out)).await {
        Ok(Ok(())) => ConnectError::Refused,
        _ => ConnectError::Gone,
    }
}

struct Conn {
    ctx: Arc<StompContext>,
    guard: ConnectionGuard,
    user: String,
    vhost: String,
    /// What the user may do on `vhost`.
    access: junction_core::Access,
    version: Version,
    heartbeat: HeartBeat,
    client_id: Option<String>,
    out: Outbox,
    subs: HashMap<String, Sub>,
    by_consumer: HashMap<ConsumerId, String>,
    next_sub: u64,
    acks: Acks<Pending>,
    txs: Transactions<TxOp>,
    /// Memory the open transactions hold, counted by the memory alarm.
    tx_charges: HashMap<String, MemoryCharge>,
    receipts: FuturesOrdered<ReceiptFuture>,
    events_tx: mpsc::UnboundedSender<ConsumerEvent>,
    /// `/temp-queue/` names → the private queues they became.
    temp_queues: HashMap<String, String>,
    /// `/queue/` names known to exist (not declared again).
    known_queues: HashSet<String>,
    /// This connection has sent: the memory alarm stops reading it.
    has_sent: bool,
    /// DISCONNECT's receipt: the connection ends once it is written.
    disconnect_receipt: Option<String>,
    /// Leave the loop after the next write.
    finished: bool,
    /// An ERROR frame was queued; nothing more is read.
    error_sent: bool,
}

impl Conn {
    async fn serve(
        &mut self,
        rd: &mut ReadHalf,
        wr: &mut WriteHalf,
        mut buf: BytesMut,
        mut decoder: Decoder,
        mut events: mpsc::UnboundedReceiver<ConsumerEvent>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let hb = self.heartbeat;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let tick = [hb.send, hb.receive]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .map_or(Duration::from_secs(3600), |d| {
                (d / 4).max(Duration::from_millis(50))
            });
        let mut ticker = tokio::time::interval(tick);
        let mut alarm = self.ctx.broker.memory_alarm();
        let mut shut_down = false;
        let stall = self.ctx.broker.limits().write_timeout;
        // Frames that arrived with CONNECT come first.
        self.on_bytes(&mut buf, &mut decoder).await;
        loop {
            if !self.out.is_empty() {
                let stall = if shut_down || self.error_sent {
                    CLOSE_TIMEOUT
                } else {
                    stall
                };
                let chunks = self.out.take();
                // The memory alarm counts what is being written.
                let _held = self
                    .ctx
                    .broker
                    .charge_memory(chunks.iter().map(|c| c.len() as u64).sum());
                let sent: usize = chunks.iter().map(|c| c.len()).sum();
                let written = {
                    let writing = junction_core::io::write_chunks_within(wr, &chunks, stall);
                    tokio::pin!(writing);
                    // A client that stopped reading must not hold a
                    // shutdown for the whole write timeout: a short grace.
                    tokio::select! {
                        r = &mut writing => r,
                        _ = shutdown.cancelled(), if !shut_down => {
                            match tokio::time::timeout(CLOSE_TIMEOUT, &mut writing).await {
                                Ok(r) => r,
                                Err(_) => return Ok(()),
                            }
                        }
                    }
                };
                if let Err(e) = written {
                    if e.kind() == std::io::ErrorKind::TimedOut && !self.error_sent {
                        tracing::info!("stomp client stopped reading; closing as a slow consumer");
                        self.ctx.broker.note_slow_consumer();
                    }
                    return Err(e);
                }
                let _ = wr.flush().await;
                self.guard.count_sent(sent);
                last_send = Instant::now();
            }
            if self.finished || self.error_sent {
                return Ok(());
            }
            let reading = self.disconnect_receipt.is_none()
                && !(self.has_sent && *alarm.borrow())
                && self.receipts.len() < MAX_PENDING_RECEIPTS;
            tokio::select! {
                _ = shutdown.cancelled(), if !shut_down => {
                    shut_down = true;
                    let e = match self.guard.close_reason() {
                        Some(why) => StompError::new("connection closed by an operator").detail(why),
                        None => StompError::new("broker shutting down").detail("the broker is shutting down; reconnect later"),
                    };
                    self.error(e, None);
                }
                changed = alarm.changed() => {
                    if changed.is_err() {
                        // The broker is gone; the shutdown branch follows.
                        alarm = self.ctx.broker.memory_alarm();
                    }
                }
                r = rd.read_buf(&mut buf), if reading => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.guard.count_received(n);
                    last_recv = Instant::now();
                    self.on_bytes(&mut buf, &mut decoder).await;
                }
                Some(ev) = events.recv() => {
                    // What else is ready goes out in the same write.
                    junction_core::consumer::drain(&mut events, ev, |ev| self.on_event(ev));
                }
                Some(r) = self.receipts.next(), if !self.receipts.is_empty() => {
                    self.on_receipt(r);
                    while let Some(Some(r)) = self.receipts.next().now_or_never() {
                        self.on_receipt(r);
                    }
                }
                _ = ticker.tick() => {
                    if !reading {
                        // Our silence toward the client (alarm, backpressure)
                        // is not its fault.
                        last_recv = Instant::now();
                    }
                    if let Some(deadline) = hb.receive_deadline()
                        && last_recv.elapsed() > deadline
                    {
                        tracing::info!(heartbeat_ms = hb.receive.as_millis() as u64, "stomp client missed its heart-beats; closing");
                        return Ok(());
                    }
                    if !hb.send.is_zero() && last_send.elapsed() + tick >= hb.send {
                        self.out.heartbeat();
                    }
                }
            }
        }
    }

    /// Decodes and handles every complete frame in `buf`.
    async fn on_bytes(&mut self, buf: &mut BytesMut, decoder: &mut Decoder) {
        while !self.error_sent && self.disconnect_receipt.is_none() && !self.finished {
            match decoder.decode(buf) {
                Ok(Decoded::Frame(frame)) => {
                    let receipt = frame.get("receipt").map(str::to_string);
                    if let Err(e) = self.on_frame(frame).await {
                        self.error(e, receipt);
                    }
                }
                Ok(Decoded::HeartBeat) => {}
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    tracing::info!(error = %e, "bad stomp frame");
                    self.out.frame(&e.to_frame(), self.version);
                    self.error_sent = true;
                    buf.clear();
                }
            }
        }
    }

    /// Queues an ERROR frame; the connection closes once it is written.
    fn error(&mut self, e: StompError, receipt: Option<String>) {
        if self.error_sent {
            return;
        }
        tracing::info!(
            message = e.message,
            detail = e.detail,
            "stomp error; closing"
        );
        let mut f = Frame::error(e.message).with_body(e.detail.into_bytes());
        f.headers.push("content-type", "text/plain");
        if let Some(r) = receipt {
            f.headers.push("receipt-id", r);
        }
        self.out.frame(&f, self.version);
        self.error_sent = true;
    }

    fn on_receipt(&mut self, r: Outcome) {
        match r {
            Ok(Some(id)) => {
                self.out.frame(
                    &Frame::new(Command::Receipt).header("receipt-id", id.as_str()),
                    self.version,
                );
                if self.disconnect_receipt.as_deref() == Some(id.as_str()) {
                    self.finished = true;
                }
            }
            Ok(None) => {}
            Err((why, receipt)) => {
                self.error(StompError::new("message not stored").detail(why), receipt)
            }
        }
    }

    /// A receipt that resolves after everything before it.
    fn push_receipt(&mut self, receipt: Option<String>) {
        if receipt.is_some() {
            self.receipts
                .push_back(std::future::ready(Ok(receipt)).boxed());
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), StompError> {
        let receipt = frame.get("receipt").map(str::to_string);
        match frame.command {
            Command::Send => return self.on_send(frame, receipt).await,
            Command::Subscribe => self.subscribe(&frame).await?,
            Command::Unsubscribe => self.unsubscribe(&frame).await?,
            Command::Ack | Command::Nack => self.on_ack(&frame)?,
            Command::Begin => {
                let tx = frame
                    .get("transaction")
                    .ok_or_else(|| missing("transaction", frame.command))?;
                self.txs.begin(tx).map_err(StompError::new)?;
                self.tx_charges
                    .insert(tx.to_string(), self.ctx.broker.charge_memory(0));
            }
            Command::Commit => {
                let tx = frame
                    .get("transaction")
                    .ok_or_else(|| missing("transaction", frame.command))?;
                let ops = self.txs.end(tx).map_err(StompError::new)?;
                self.tx_charges.remove(tx);
                for op in ops {
                    match op {
                        TxOp::Send(b) => {
                            let (dest, msg) = *b;
                            self.publish(dest, msg, None).await?;
                        }
                        TxOp::Settle { id, nack } => self.settle(id, nack, true),
                    }
                }
            }
            Command::Abort => {
                let tx = frame
                    .get("transaction")
                    .ok_or_else(|| missing("transaction", frame.command))?;
                self.txs.end(tx).map_err(StompError::new)?;
                self.tx_charges.remove(tx);
            }
            Command::Disconnect => {
                match receipt {
                    Some(r) => {
                        self.disconnect_receipt = Some(r.clone());
                        self.push_receipt(Some(r));
                    }
                    None => self.finished = true,
                }
                return Ok(());
            }
            Command::Connect | Command::Stomp => {
                return Err(StompError::new("already connected")
                    .detail("a second CONNECT on one connection"));
            }
            other => {
                return Err(StompError::new(format!("unexpected frame {other}"))
                    .detail("clients may not send server frames"));
            }
        }
        self.push_receipt(receipt);
        Ok(())
    }

    async fn on_send(&mut self, frame: Frame, receipt: Option<String>) -> Result<(), StompError> {
        let dest = frame
            .get("destination")
            .ok_or_else(|| missing("destination", frame.command))?;
        let dest = Destination::parse(dest)
            .map_err(|e| StompError::new("invalid destination").detail(e))?;
        if let Some(u) = frame.get("user-id")
            && u != self.user
        {
            return Err(StompError::new("access_refused").detail(format!(
                "user-id '{u}' is not the logged-in user '{}'",
                self.user
            )));
        }
        self.has_sent = true;
        let origin = Origin {
            protocol: Protocol::Stomp,
            connection: self.guard.id(),
        };
        let tx = frame.get("transaction").map(str::to_string);
        let msg = convert::to_core(&frame.headers, frame.body, origin, unix_millis())
            .map_err(|e| StompError::new("invalid header").detail(e))?;
        if let Some(tx) = tx {
            let bytes = msg.body_len();
            self.txs
                .push(&tx, TxOp::Send(Box::new((dest, msg))), bytes)
                .map_err(StompError::new)?;
            if let Some(c) = self.tx_charges.get_mut(&tx) {
                c.grow(bytes);
            }
            self.push_receipt(receipt);
            return Ok(());
        }
        self.publish(dest, msg, receipt).await
    }

    /// Publishes to `dest`; its receipt (if any) joins the ordered pipeline
    /// and resolves when the message is safe.
    async fn publish(
        &mut self,
        dest: Destination,
        mut msg: Message,
        receipt: Option<String>,
    ) -> Result<(), StompError> {
        let (exchange, key) = self.route(&dest).await?;
        self.allow(Permission::Write, Resource::Exchange(&exchange))
            .await?;
        self.allow_topic(Permission::Write, &exchange, &key).await?;
        msg.exchange = exchange;
        msg.routing_key = key;
        if let Some(r) = msg.properties.reply_to.take() {
            msg.properties.reply_to = Some(match r.strip_prefix("/temp-queue/") {
                Some(t) => self.temp_queue(t).await?,
                None => convert::reply_to_core(&r),
            });
        }
        let published = self
            .ctx
            .broker
            .publish(&self.vhost, msg)
            .await
            .map_err(StompError::core)?;
        self.receipts.push_back(
            async move {
                match published.confirmed().await {
                    Ok(true) => Ok(receipt),
                    Ok(false) => Err((
                        "a queue did not take the message (x-overflow reject-publish, or its node or cluster could not confirm it)".to_string(),
                        receipt,
                    )),
                    Err(e) => Err((e.to_string(), receipt)),
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// The exchange and routing key a SEND to `dest` publishes with.
    async fn route(&mut self, dest: &Destination) -> Result<(String, String), StompError> {
        Ok(match dest {
            Destination::Queue(q) => {
                self.ensure_queue(q, junction_core::FieldTable::new())
                    .await?;
                (String::new(), q.clone())
            }
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => (String::new(), q.clone()),
            Destination::Topic(k) => (TOPIC_EXCHANGE.to_string(), k.clone()),
            Destination::Exchange { exchange, key } => (exchange.clone(), key.clone()),
            Destination::TempQueue(t) => (String::new(), self.temp_queue(t).await?),
        })
    }

    /// Declares durable queue `q` unless it exists (RabbitMQ's `/queue/`).
    /// With arguments it is declared anyway, so a queue that exists with
    /// other arguments is an error, as in AMQP.
    async fn ensure_queue(
        &mut self,
        q: &str,
        arguments: junction_core::FieldTable,
    ) -> Result<(), StompError> {
        if arguments.is_empty()
            && (self.known_queues.contains(q)
                || self
                    .ctx
                    .broker
                    .queue_for(&self.vhost, q, Some(self.guard.id()))
                    .is_ok())
        {
            self.remember_queue(q);
            return Ok(());
        }
        self.allow(Permission::Configure, Resource::Queue(q))
            .await?;
        let def = QueueDef {
            arguments,
            ..QueueDef::new(q)
        };
        self.ctx
            .broker
            .declare_queue_as(&self.vhost, def, false, Some(self.guard.id()))
            .await
            .map_err(StompError::core)?;
        self.remember_queue(q);
        Ok(())
    }

    fn remember_queue(&mut self, q: &str) {
        if self.known_queues.len() >= MAX_KNOWN_QUEUES {
            self.known_queues.clear();
        }
        self.known_queues.insert(q.to_string());
    }

    /// The private queue behind `/temp-queue/name`, made (and subscribed,
    /// with subscription id `/temp-queue/name`) on first use.
    async fn temp_queue(&mut self, name: &str) -> Result<String, StompError> {
        if let Some(q) = self.temp_queues.get(name) {
            return Ok(q.clone());
        }
        let def = QueueDef {
            exclusive_owner: Some(self.guard.id()),
            ..QueueDef::new("").transient()
        };
        let info = self
            .ctx
            .broker
            .declare_queue_as(&self.vhost, def, false, Some(self.guard.id()))
            .await
            .map_err(StompError::core)?;
        let id = format!("/temp-queue/{name}");
        self.start_consumer(id.clone(), &info.name, AckMode::Auto, 0, Some(id))
            .await?;
        self.temp_queues.insert(name.to_string(), info.name.clone());
        Ok(info.name)
    }

    async fn start_consumer(
        &mut self,
        id: String,
        queue: &str,
        mode: AckMode,
        prefetch: u32,
        destination: Option<String>,
    ) -> Result<(), StompError> {
        if self.subs.len() >= self.ctx.settings.max_subscriptions {
            return Err(StompError::new("too many subscriptions").detail(format!(
                "a connection may hold {} subscriptions",
                self.ctx.settings.max_subscriptions
            )));
        }
        let mut spec = ConsumerSpec::new(id.clone(), self.guard.id());
        spec = match mode {
            AckMode::Auto => spec.no_ack(),
            _ => spec.prefetch(prefetch),
        };
        let handle = self
            .ctx
            .broker
            .attach_consumer(&self.vhost, queue, spec, self.events_tx.clone())
            .await
            .map_err(StompError::core)?;
        let key = self.next_sub;
        self.next_sub += 1;
        self.by_consumer.insert(handle.id(), id.clone());
        self.subs.insert(
            id.clone(),
            Sub {
                key,
                id,
                mode,
                handle,
                destination,
            },
        );
        Ok(())
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let h = &frame.headers;
        let dest_text = h
            .get("destination")
            .ok_or_else(|| missing("destination", frame.command))?;
        let dest = Destination::parse(dest_text)
            .map_err(|e| StompError::new("invalid destination").detail(e))?;
        // 1.0 makes the id optional: the destination stands in for it.
        let id = match (h.get("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => dest_text.to_string(),
            (None, _) => return Err(missing("id", frame.command)),
        };
        if self.subs.contains_key(&id) {
            return Err(StompError::new("duplicate subscription id")
                .detail(format!("subscription '{id}' exists")));
        }
        let mode = AckMode::parse(h.get("ack")).map_err(StompError::new)?;
        let prefetch = match h
            .get("prefetch-count")
            .or_else(|| h.get("activemq.prefetchSize"))
        {
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                StompError::new("invalid header").detail(format!("prefetch-count '{v}'"))
            })?,
            None => self.ctx.settings.prefetch,
        };
        let arguments =
            convert::queue_arguments(h).map_err(|e| StompError::new("invalid header").detail(e))?;
        let queue = match &dest {
            Destination::Queue(q) => {
                self.ensure_queue(q, arguments).await?;
                self.allow(Permission::Read, Resource::Queue(q)).await?;
                q.clone()
            }
            Destination::AmqQueue(q) | Destination::ReplyQueue(q) => {
                self.allow(Permission::Read, Resource::Queue(q)).await?;
                q.clone()
            }
            Destination::TempQueue(_) => {
                return Err(StompError::new("invalid destination").detail(
                    "/temp-queue/ destinations are subscribed implicitly: name one in reply-to",
                ));
            }
            Destination::Topic(k) => {
                self.subscription_queue(h, TOPIC_EXCHANGE, k, &id, arguments)
                    .await?
            }
            Destination::Exchange { exchange, key } => {
                self.subscription_queue(h, exchange, key, &id, arguments)
                    .await?
            }
        };
        self.start_consumer(id, &queue, mode, prefetch, None).await
    }

    /// `perm` on `what`, or the ERROR `access_refused` that closes the
    /// connection (RabbitMQ's STOMP words).
    async fn allow(&mut self, perm: Permission, what: Resource<'_>) -> Result<(), StompError> {
        self.access
            .check(perm, what)
            .await
            .map_err(|d| StompError::new("access_refused").detail(d.0))
    }

    /// Topic `perm` on `key` when `exchange` is a topic exchange the user
    /// has topic permissions on.
    async fn allow_topic(
        &mut self,
        perm: Permission,
        exchange: &str,
        key: &str,
    ) -> Result<(), StompError> {
        if !self.access.has_topic_rules(exchange) {
            return Ok(());
        }
        let topic = exchange == TOPIC_EXCHANGE
            || self
                .ctx
                .broker
                .exchange(&self.vhost, exchange)
                .is_ok_and(|d| d.kind == junction_core::ExchangeKind::Topic);
        if !topic {
            return Ok(());
        }
        self.access
            .check_topic(perm, exchange, key)
            .await
            .map_err(|d| StompError::new("access_refused").detail(d.0))
    }

    /// The queue of a topic or exchange subscription, declared and bound:
    /// durable and named after the client and subscription when asked
    /// (`durable:true` / `persistent:true`, or ActiveMQ's
    /// `activemq.subscriptionName`), else private to this connection.
    async fn subscription_queue(
        &mut self,
        h: &Headers,
        exchange: &str,
        key: &str,
        id: &str,
        arguments: junction_core::FieldTable,
    ) -> Result<String, StompError> {
        let truthy = |name: &str| h.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let activemq_name = h.get("activemq.subscriptionName");
        let durable = truthy("durable") || truthy("persistent") || activemq_name.is_some();
        let name = match h.get("x-queue-name") {
            Some(n) => n.to_string(),
            None if durable => {
                let client = self.client_id.as_deref().unwrap_or(&self.user);
                format!(
                    "stomp-subscription-{client}-{}",
                    activemq_name.unwrap_or(id)
                )
            }
            None => format!("stomp-subscription-{}-{}", self.guard.id(), self.next_sub),
        };
        if name.len() > 255 {
            return Err(StompError::new("invalid header")
                .detail("subscription queue name longer than 255 bytes"));
        }
        self.allow(Permission::Read, Resource::Exchange(exchange))
            .await?;
        self.allow_topic(Permission::Read, exchange, key).await?;
        if durable || h.get("x-queue-name").is_some() {
            // A queue the client names may be anyone's: declaring, binding
            // and reading it need what AMQP would. The connection's own
            // private queue needs nothing more.
            self.allow(Permission::Configure, Resource::Queue(&name))
                .await?;
            self.allow(Permission::Write, Resource::Queue(&name))
                .await?;
            self.allow(Permission::Read, Resource::Queue(&name)).await?;
        }
        let exclusive = h
            .get("exclusive")
            .map_or(!durable, |v| v.eq_ignore_ascii_case("true"));
        let auto_delete = h
            .get("auto-delete")
            .map_or(!durable, |v| v.eq_ignore_ascii_case("true"));
        let def = QueueDef {
            name: name.clone(),
            durable,
            exclusive_owner: exclusive.then(|| self.guard.id()),
            auto_delete,
            arguments,
        };
        let broker = &self.ctx.broker;
        broker
            .declare_queue_as(&self.vhost, def, false, Some(self.guard.id()))
            .await
            .map_err(StompError::core)?;
        broker
            .bind(
                &self.vhost,
                Binding {
                    source: exchange.to_string(),
                    destination: junction_core::Destination::Queue(name.clone()),
                    routing_key: key.to_string(),
                    arguments: junction_core::FieldTable::new(),
                },
                Some(self.guard.id()),
            )
            .await
            .map_err(StompError::core)?;
        Ok(name)
    }

    async fn unsubscribe(&mut self, frame: &Frame) -> Result<(), StompError> {
        let h = &frame.headers;
        let id = match (h.get("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => h
                .get("destination")
                .ok_or_else(|| missing("id", frame.command))?,
            (None, _) => return Err(missing("id", frame.command)),
        };
        let Some(sub) = self.subs.remove(id) else {
            return Err(
                StompError::new("unknown subscription").detail(format!("no subscription '{id}'"))
            );
        };
        self.by_consumer.remove(&sub.handle.id());
        self.acks.forget(sub.key);
        let queue = Arc::clone(sub.handle.queue());
        // Unacknowledged messages go back to the queue.
        sub.handle.cancel(true);
        // RabbitMQ: UNSUBSCRIBE with durable:true ends a durable subscription.
        let truthy = |name: &str| h.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if (truthy("durable") || truthy("persistent")) && queue.def().durable {
            self.ctx
                .broker
                .delete_queue(
                    &self.vhost,
                    queue.name(),
                    false,
                    false,
                    Some(self.guard.id()),
                )
                .await
                .map_err(StompError::core)?;
        }
        Ok(())
    }

    fn on_ack(&mut self, frame: &Frame) -> Result<(), StompError> {
        let header = if self.version >= Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let text = frame
            .get(header)
            .ok_or_else(|| missing(header, frame.command))?;
        let id = text
            .parse::<u64>()
            .ok()
            .filter(|id| self.acks.subscription_of(*id).is_some())
            .ok_or_else(|| {
                StompError::new("unknown message id").detail(format!(
                    "{} of '{text}', which is not awaiting an acknowledgement",
                    frame.command
                ))
            })?;
        let nack = (frame.command == Command::Nack).then(|| frame.get("requeue") != Some("false"));
        match frame.get("transaction") {
            Some(tx) => self
                .txs
                .push(tx, TxOp::Settle { id, nack }, 0)
                .map_err(StompError::new),
            None => {
                self.settle(id, nack, false);
                Ok(())
            }
        }
    }

    /// ACK (`nack` None) or NACK (`Some(requeue)`) of ack id `id`: every
    /// earlier delivery of the subscription too in `client` mode. A NACK
    /// dead-letters where the queue has a dead-letter exchange (or with
    /// `requeue:false`), else requeues.
    fn settle(&mut self, id: u64, nack: Option<bool>, late: bool) {
        let settled = self.acks.take(id);
        if settled.is_empty() && late {
            tracing::debug!(
                id,
                "acknowledgement in a transaction found nothing left to settle"
            );
        }
        for p in settled {
            let how = match nack {
                None => Settle::Ack,
                Some(requeue) => {
                    if !requeue
                        || p.queue
                            .def()
                            .arguments
                            .get("x-dead-letter-exchange")
                            .is_some()
                    {
                        Settle::Reject
                    } else {
                        Settle::Requeue
                    }
                }
            };
            if let Err(e) = self.ctx.broker.settle(&p.queue, p.holder, p.tag, how) {
                tracing::debug!(error = %e, "settling a stomp delivery");
            }
        }
    }

    fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(d) => {
                let Some(sub) = self
                    .by_consumer
                    .get(&d.consumer)
                    .and_then(|id| self.subs.get(id))
                else {
                    // Its subscription ended; the message went back already.
                    return;
                };
                let id = match sub.mode {
                    AckMode::Auto => self.acks.next_id(),
                    _ => self.acks.track(
                        sub.key,
                        sub.mode == AckMode::Client,
                        Pending {
                            queue: Arc::clone(sub.handle.queue()),
                            holder: d.consumer,
                            tag: d.tag,
                        },
                    ),
                };
                let m = &d.message;
                let mut f = Frame::new(Command::Message);
                f.headers.push("subscription", sub.id.as_str());
                f.headers.push("message-id", id.to_string());
                f.headers.push(
                    "destination",
                    sub.destination
                        .clone()
                        .unwrap_or_else(|| convert::destination_of(m)),
                );
                if self.version >= Version::V1_2 && sub.mode != AckMode::Auto {
                    f.headers.push("ack", id.to_string());
                }
                f.headers
                    .push("redelivered", if d.redelivered { "true" } else { "false" });
                convert::from_core(m, &mut f.headers);
                f.headers.push("content-length", m.body.len().to_string());
                self.out.with_body(&f, &m.body, self.version);
            }
            ConsumerEvent::Cancelled(consumer) => {
                // The queue was deleted under the subscription (or, for
                // another node's queue, that node cannot be reached).
                if let Some(id) = self.by_consumer.remove(&consumer)
                    && let Some(sub) = self.subs.remove(&id)
                {
                    self.acks.forget(sub.key);
                    self.error(
                        StompError::new("subscription ended")
                            .detail(format!(
                                "the queue of subscription '{id}' is gone (deleted, or its node cannot be reached)"
                            )),
                        None,
                    );
                }
            }
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
