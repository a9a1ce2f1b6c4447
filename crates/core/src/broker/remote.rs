//! Consumers of queues another node holds (docs/cluster.md "Consumers
//! across nodes"). A client consuming on node A from a queue of node B
//! gets a consumer on B, made on A's behalf: B's queue delivers to it as
//! to any consumer (credit, priorities, exclusivity and redelivery are
//! B's), and A fetches what it was given over the peer link, a batch at a
//! time, while A's transport window for the consumer has room. Settles,
//! cancels and releases go back to B in the order the client made them,
//! through one control outbox per node. A's own side of such a consumer
//! is a stand-in queue ([`Queue::node`] set) that the adapters hold as
//! they hold a local queue, so they need not know where the queue is.
//!
//! B drops what A holds when A says it no longer lives: A names its live
//! holders every [`ALIVE_EVERY`], and B releases (back to the queue,
//! flagged redelivered) everything of a holder not named for [`LEASE`],
//! or of an earlier life of A (a restart) as soon as the new one speaks.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Broker, ConsumerHandle, GetOk, Queue, RemoteQueue};
use crate::consumer::{ConsumerEvent, ConsumerSpec, Credit, Delivery, Window};
use crate::error::CoreError;
use crate::ids::{ConnectionId, ConsumerId, DeliveryTag, QueueId};
use crate::queue::Settle;

/// How often a node names its live holders to each node it holds from.
pub const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long a holder not named stays: past it, what it holds goes back
/// to its queue.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long no link to a node may be up before what its holders hold
/// here goes back to the queues (the reaper looks every [`ALIVE_EVERY`]).
const UNLINKED_FOR: Duration = Duration::from_secs(4);
/// Tries of a fetch before its consumer is ended, and the pause between.
const FETCH_TRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a control call is tried again before this node's holders of
/// the other node's queues are dropped (shorter than [`LEASE`]).
const GIVE_UP: Duration = Duration::from_secs(20);
/// Encoded messages larger than this do not fit one peer frame with
/// room to spare: they stay on their node (see `serve_fetch`).
const SHIP_MAX: usize = 48 << 20;
/// Holders a node was told to forget before it knew them, kept per node
/// (a late attach for one is refused).
const FORGOTTEN_MAX: usize = 65_536;
/// Longest wait for another node to answer a call a client waits for.
const CLIENT_WAITS: Duration = Duration::from_secs(5);
/// Longest wait for another node to tell a queue's counts.
const COUNTS_WITHIN: Duration = Duration::from_secs(2);
/// Fetches one node has open on another at once: a quarter of what a
/// peer link answers at once, so that Raft and publishes keep theirs.
const FETCHES_PER_NODE: usize = 64;
/// A fetch's wait for a first delivery while few of those are free, so
/// that they go round.
const CROWDED_WAIT: Duration = Duration::from_millis(100);
/// Longest wait of one fetch for a first delivery.
const FETCH_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a node's answer beyond what it may wait itself.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// Deliveries, and body bytes, one fetch answer carries at most.
const FETCH_DELIVERIES: usize = 512;
const FETCH_BYTES: u64 = 4 << 20;
/// Control operations one request carries at most.
const CONTROL_OPS: usize = 4096;
/// Deliveries a served consumer's queue may have given it that its
/// holder has not yet fetched.
const SERVED_WINDOW: usize = 1024;

/// A broker's call to another node's broker about that node's queues.
/// `life` is the caller's incarnation ([`Broker::life`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerCall {
    /// Start a consumer for the caller's `holder` on a queue here.
    Attach {
        life: u64,
        holder: u64,
        vhost: String,
        queue: String,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        priority: i32,
        /// Unacknowledged deliveries the consumer may hold (0: no limit).
        prefetch: u32,
    },
    /// The deliveries `holder`'s consumer was given, at most `max`,
    /// waiting up to `wait_ms` for a first one.
    Fetch {
        life: u64,
        holder: u64,
        max: u32,
        wait_ms: u32,
    },
    /// `basic.get` for `holder`.
    Get {
        life: u64,
        holder: u64,
        vhost: String,
        queue: String,
        no_ack: bool,
    },
    /// Settles, cancels, releases and liveness, in the order made.
    Control { life: u64, ops: Vec<ControlOp> },
    /// A queue's ready messages and consumers (a passive declare).
    Counts {
        life: u64,
        vhost: String,
        queue: String,
    },
    /// The caller claimed `client_id` (docs/cluster.md "MQTT sessions
    /// across nodes"): give up its session here and answer its record.
    TakeSession {
        life: u64,
        vhost: String,
        client_id: String,
        /// The caller's connection that claimed it: the session is given
        /// to that claim only, once it is applied here.
        connection: u64,
        /// The claim's entry in the metadata group's log.
        index: u64,
    },
}

impl PeerCall {
    /// The caller's incarnation, which every call carries.
    pub fn life(&self) -> u64 {
        match self {
            PeerCall::Attach { life, .. }
            | PeerCall::Fetch { life, .. }
            | PeerCall::Get { life, .. }
            | PeerCall::Control { life, .. }
            | PeerCall::Counts { life, .. }
            | PeerCall::TakeSession { life, .. } => *life,
        }
    }
}

/// One step of a holder's life on another node, in [`PeerCall::Control`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ControlOp {
    Settle {
        holder: u64,
        queue: String,
        tag: u64,
        how: Settle,
    },
    /// End `holder`'s consumer; with `requeue` false what it holds stays
    /// settleable (AMQP `basic.cancel`).
    Cancel { holder: u64, requeue: bool },
    /// Return to `queue` what `holder` holds of it (its channel closed).
    Release { holder: u64, queue: String },
    /// These holders of the caller live.
    Alive { holders: Vec<u64> },
    /// The budget of `holder`'s consumer changed (a channel-wide
    /// `basic.qos` after `basic.consume`); 0: no limit.
    Prefetch { holder: u64, prefetch: u32 },
    /// `holder` neither consumes nor holds anything any more: end what is
    /// left of it there (and refuse a late attach for it).
    Forget { holder: u64 },
}

/// A delivery on its way to the node that fetched it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shipped {
    pub tag: u64,
    pub redelivered: bool,
    pub delivery_count: u32,
    /// The message in the store's encoding.
    pub message: Vec<u8>,
}

/// The answer to a [`PeerCall`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Attached,
    /// `ended`: the consumer is gone (its queue was deleted, or it was
    /// cancelled or released); nothing more will come.
    Fetched {
        deliveries: Vec<Shipped>,
        ended: bool,
    },
    /// A `basic.get` answer: the delivery and the ready count left.
    Got(Option<(Shipped, u64)>),
    Counts {
        messages: u64,
        consumers: u64,
    },
    Done,
    /// A session handed over: the adapter's record of it (None: the node
    /// had none).
    Session(Option<Vec<u8>>),
    /// Refused with the AMQP reply code and text of the error.
    Refused {
        code: u16,
        text: String,
    },
    /// A session asked for stays where it is: the client id was claimed
    /// again after the asker did (the client came back, there or
    /// elsewhere).
    SessionKept,
}

/// A [`CoreError`] as it crosses to another node and back.
fn refusal(e: &CoreError) -> PeerReply {
    let text = match e {
        CoreError::NotFound(t)
        | CoreError::PreconditionFailed(t)
        | CoreError::AccessRefused(t)
        | CoreError::ResourceLocked(t)
        | CoreError::CommandInvalid(t)
        | CoreError::NotAllowed(t)
        | CoreError::LimitReached(t)
        | CoreError::Unavailable(t) => t.clone(),
        other => other.to_string(),
    };
    PeerReply::Refused {
        code: e.amqp_code(),
        text,
    }
}

fn refused(code: u16, text: String) -> CoreError {
    match code {
        404 => CoreError::NotFound(text),
        406 => CoreError::PreconditionFailed(text),
        403 => CoreError::AccessRefused(text),
        405 => CoreError::ResourceLocked(text),
        503 => CoreError::CommandInvalid(text),
        530 => CoreError::NotAllowed(text),
        _ => CoreError::Unavailable(text),
    }
}

/// Longest wait for a quorum queue's leader to serve it before a
/// consumer's attach or get fails.
const QUORUM_SERVING_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Calls node `node`'s broker through `forwarder` (owned, so that a long
/// fetch does not keep the broker alive).
async fn ask(
    forwarder: Arc<dyn super::Forwarder>,
    node: &str,
    call: PeerCall,
) -> Result<PeerReply, CoreError> {
    forwarder
        .call(node, call, FETCH_WAIT + ANSWER_WITHIN)
        .await
        .map_err(|why| unreachable_node(node, why))
}

/// A `basic.get` answer as it crosses to the asking node.
fn ship_got(g: &GetOk) -> (Shipped, u64) {
    (
        Shipped {
            tag: g.delivery.tag.0,
            redelivered: g.delivery.redelivered,
            delivery_count: g.delivery.delivery_count,
            message: crate::codec::encode_message(&g.delivery.message).to_vec(),
        },
        g.remaining,
    )
}

fn unexpected(node: &str, reply: &PeerReply) -> CoreError {
    CoreError::Unavailable(format!("node {node} answered {reply:?}"))
}

fn unreachable_node(node: &str, why: String) -> CoreError {
    CoreError::Unavailable(format!(
        "node {node} holding the queue cannot be reached: {why}"
    ))
}

/// This node's side of a holder on another node: a consumer's, or a
/// channel's that took messages with `basic.get`.
pub(crate) struct Hold {
    /// Its id on the other node: a consumer's own id; for a `get`
    /// holder, a fresh one each time it starts holding, so that a late
    /// forget of its earlier round cannot end a later one.
    remote: u64,
    /// Budgets a consumer's deliveries count against here too (a
    /// channel's prefetch shared with local queues).
    credits: Vec<Arc<Credit>>,
    /// Deliveries not yet settled: (queue, tag).
    held: Mutex<crate::FastSet<(String, u64)>>,
    /// Stops the consumer's fetching.
    stop: CancellationToken,
    /// A consumer (false: a `get` holder, or a consumer cancelled while
    /// its deliveries stay settleable).
    consuming: std::sync::atomic::AtomicBool,
    /// Dropped because its node could not be told of its settles: the
    /// consumer is ended (the client is told).
    lost: std::sync::atomic::AtomicBool,
    /// The prefetch its node enforces, as last told.
    prefetch: std::sync::atomic::AtomicU32,
}

impl Hold {
    fn new(remote: u64, credits: Vec<Arc<Credit>>, consuming: bool) -> Arc<Hold> {
        Arc::new(Hold {
            remote,
            credits,
            held: Mutex::new(crate::FastSet::default()),
            stop: CancellationToken::new(),
            consuming: std::sync::atomic::AtomicBool::new(consuming),
            lost: std::sync::atomic::AtomicBool::new(false),
            prefetch: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The tightest of its budgets (0: none limits it).
    fn tightest(&self) -> u32 {
        self.credits
            .iter()
            .map(|c| c.limit())
            .filter(|&l| l > 0)
            .min()
            .unwrap_or(0)
    }

    fn give_back(&self, n: usize) {
        for _ in 0..n {
            for c in &self.credits {
                c.give_back();
            }
        }
    }
}

/// What this node keeps of another node's holder.
pub(crate) struct Served {
    /// This node's id for the holder: its consumer's, or a `get` holder's.
    holder: ConsumerId,
    /// The consumer's budget (its holder's prefetch), when it acks.
    credit: Option<Arc<Credit>>,
    consumer: Option<ConsumerHandle>,
    feed: Option<Arc<tokio::sync::Mutex<Feed>>>,
    /// Queues it holds deliveries of.
    queues: Vec<Arc<Queue>>,
    seen: Instant,
}

/// What a served consumer was given and its holder has not fetched.
struct Feed {
    rx: mpsc::UnboundedReceiver<ConsumerEvent>,
    /// Taken from `rx` but over one answer's size.
    leftover: Option<Delivery>,
}

/// The holders of one other node this node serves, and that node's life.
#[derive(Default)]
pub(crate) struct ServedFrom {
    life: u64,
    holders: crate::FastMap<u64, Served>,
    /// Holders forgotten before they were known here (an attach still on
    /// its way), and when.
    forgotten: crate::FastMap<u64, Instant>,
    /// Since when no link to the node is up (seen by the reaper).
    unlinked_since: Option<Instant>,
}

/// This node's bookkeeping for consumers across nodes, both ways.
#[derive(Default)]
pub(crate) struct Remotes {
    /// Holders here, of queues of other nodes, by (node, holder).
    holds: Mutex<crate::FastMap<(String, ConsumerId), Arc<Hold>>>,
    /// A control outbox per node.
    controls: Mutex<crate::FastMap<String, mpsc::UnboundedSender<ControlOp>>>,
    /// Fetches open per node ([`FETCHES_PER_NODE`]).
    fetch_slots: Mutex<crate::FastMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Stand-ins for other nodes' queues, by (vhost, name).
    stubs: Mutex<crate::FastMap<(String, String), Arc<Queue>>>,
    /// Holders of other nodes served here, by node.
    served: Mutex<crate::FastMap<String, ServedFrom>>,
    /// The connection served consumers are listed under.
    conn: std::sync::OnceLock<ConnectionId>,
    /// Whether the task releasing lapsed holders runs.
    reaping: std::sync::OnceLock<()>,
}

impl ServedFrom {
    /// Notes `holder` as forgotten (a late attach for it is refused).
    fn forget(&mut self, holder: u64, now: Instant) {
        if self.forgotten.len() < FORGOTTEN_MAX {
            self.forgotten.insert(holder, now);
        }
    }
}

impl Served {
    /// Cancels its consumer and releases what it holds (outside any lock).
    fn end(self, broker: &Broker) {
        drop(self.consumer);
        for q in &self.queues {
            broker.release(q, self.holder);
        }
    }
}

/// What a consumer fetching from another node needs.
struct Fetcher {
    broker: Weak<Broker>,
    node: String,
    queue: String,
    holder: ConsumerId,
    no_ack: bool,
    hold: Arc<Hold>,
    window: Arc<Window>,
    room: Arc<Notify>,
    sink: mpsc::UnboundedSender<ConsumerEvent>,
}

impl Fetcher {
    async fn run(self) {
        let mut failures = 0;
        let end = loop {
            let room = self.window.room();
            if room == 0 {
                tokio::select! {
                    _ = self.room.notified() => continue,
                    _ = self.hold.stop.cancelled() => break "stopped",
                }
            }
            if self.hold.stop.is_cancelled() {
                break "stopped";
            }
            let Some(broker) = self.broker.upgrade() else {
                return;
            };
            let slots = broker.fetch_slots(&self.node);
            let Some(forwarder) = broker.forwarder.get().cloned() else {
                return;
            };
            let life = broker.life;
            drop(broker);
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                _ = self.hold.stop.cancelled() => break "stopped",
            };
            let Ok(_slot) = slot else {
                return;
            };
            let wait = if slots.available_permits() < FETCHES_PER_NODE / 4 {
                CROWDED_WAIT
            } else {
                FETCH_WAIT
            };
            let call = PeerCall::Fetch {
                life,
                holder: self.holder.0,
                max: room.min(FETCH_DELIVERIES) as u32,
                wait_ms: wait.as_millis() as u32,
            };
            // Not abandoned on a cancel: what it brings goes back.
            match ask(forwarder, &self.node, call).await {
                Ok(PeerReply::Fetched { deliveries, ended }) => {
                    failures = 0;
                    if !self.take(deliveries) {
                        break "stopped";
                    }
                    if ended {
                        break "its queue's node ended it";
                    }
                }
                Ok(other) => {
                    tracing::warn!(node = %self.node, queue = %self.queue, answer = ?other, "a consumer of another node's queue ended");
                    break "unexpected answer";
                }
                Err(e) if failures + 1 < FETCH_TRIES => {
                    failures += 1;
                    tracing::debug!(node = %self.node, queue = %self.queue, error = %e, "a fetch failed; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node, queue = %self.queue, error = %e, "a consumer of another node's queue ended");
                    break "no answer";
                }
            }
        };
        tracing::debug!(node = %self.node, queue = %self.queue, why = end, "remote consumer ended");
        let lost = self.hold.lost.load(std::sync::atomic::Ordering::Acquire);
        if end == "stopped" && !lost {
            // Cancelled here, or its connection went.
            return;
        }
        self.hold
            .consuming
            .store(false, std::sync::atomic::Ordering::Release);
        let _ = self.sink.send(ConsumerEvent::Cancelled(self.holder));
        if let Some(broker) = self.broker.upgrade() {
            broker.forget_if_idle(&self.node, self.holder);
        }
    }

    /// Hands fetched deliveries to the consumer's connection. False once
    /// the consumer is gone: what came too late goes back to the queue.
    fn take(&self, deliveries: Vec<Shipped>) -> bool {
        let mut requeue = Vec::new();
        let mut gone = false;
        for s in deliveries {
            let message = match crate::codec::decode_message(&s.message) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    tracing::warn!(node = %self.node, queue = %self.queue, error = %e, "an unreadable delivery from another node was returned");
                    requeue.push(s.tag);
                    continue;
                }
            };
            {
                // A cancel stops the consumer under this lock: a delivery
                // is either counted and sent, or goes back.
                let mut held = self.hold.held.lock();
                if gone || self.hold.stop.is_cancelled() {
                    gone = true;
                    requeue.push(s.tag);
                    continue;
                }
                if !self.no_ack {
                    held.insert((self.queue.clone(), s.tag));
                    for c in &self.hold.credits {
                        c.take();
                    }
                }
            }
            let d = Delivery {
                consumer: self.holder,
                tag: DeliveryTag(s.tag),
                message,
                redelivered: s.redelivered,
                delivery_count: s.delivery_count,
                _permit: Some(self.window.permit()),
                _held: None,
            };
            if self.sink.send(ConsumerEvent::Deliver(d)).is_err() {
                // The connection is gone; its handle's drop cancels.
                gone = true;
            }
        }
        if !requeue.is_empty()
            && !self.no_ack
            && let Some(broker) = self.broker.upgrade()
        {
            for tag in requeue {
                broker.control(
                    &self.node,
                    ControlOp::Settle {
                        holder: self.holder.0,
                        queue: self.queue.clone(),
                        tag,
                        how: Settle::Requeue,
                    },
                );
            }
        }
        !gone
    }
}

/// Removes a holder registered before its node answered, unless the
/// attach completed.
struct AttachGuard<'a> {
    broker: &'a Broker,
    node: String,
    holder: ConsumerId,
    armed: bool,
}

impl Drop for AttachGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.broker
                .remotes
                .holds
                .lock()
                .remove(&(self.node.clone(), self.holder));
            // It may have been made there, or be made after this (the
            // node refuses an attach for a holder it was told to forget).
            self.broker.control(
                &self.node,
                ControlOp::Forget {
                    holder: self.holder.0,
                },
            );
        }
    }
}

/// Sends a node's control operations in order, gathering what waits. A
/// call that fails is made again (the operations are idempotent there)
/// until [`GIVE_UP`]; then this node's holders there are dropped, so that
/// their lease there lapses and what they held goes back.
async fn control_outbox(
    node: String,
    broker: Weak<Broker>,
    mut rx: mpsc::UnboundedReceiver<ControlOp>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < CONTROL_OPS {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        loop {
            let Some(b) = broker.upgrade() else { return };
            let call = PeerCall::Control {
                life: b.life,
                ops: ops.clone(),
            };
            let Some(forwarder) = b.forwarder.get().cloned() else {
                return;
            };
            drop(b);
            match ask(forwarder, &node, call).await {
                Ok(PeerReply::Done) => break,
                Ok(other) => {
                    tracing::warn!(node, answer = ?other, "control operations answered unexpectedly");
                    break;
                }
                Err(e) if started.elapsed() < GIVE_UP => {
                    tracing::debug!(node, error = %e, "control operations not delivered; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, ops = ops.len(), "settles for another node's queues not delivered: its consumers here end, and what they held goes back there");
                    if let Some(b) = broker.upgrade() {
                        b.abandon(&node);
                    }
                    break;
                }
            }
        }
    }
}

/// Names this node's live holders to `node` every [`ALIVE_EVERY`], apart
/// from the control outbox so that a slow call there cannot hold it up.
async fn keep_alive(node: String, broker: Weak<Broker>) {
    let mut tick = tokio::time::interval(ALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        if b.is_shut_down() {
            return;
        }
        let holders = b.holders_on(&node);
        if holders.is_empty() {
            continue;
        }
        let call = PeerCall::Control {
            life: b.life,
            ops: vec![ControlOp::Alive { holders }],
        };
        let Some(forwarder) = b.forwarder.get().cloned() else {
            return;
        };
        drop(b);
        if let Err(e) = forwarder.call(&node, call, ALIVE_EVERY).await {
            tracing::debug!(node, error = %e, "holders' liveness not told");
        }
    }
}

impl Broker {
    /// Calls another node's broker for a client that waits (an attach, a
    /// `basic.get`): within [`CLIENT_WAITS`], as its connection reads
    /// nothing else meanwhile.
    async fn call(&self, node: &str, call: PeerCall) -> Result<PeerReply, CoreError> {
        let Some(forwarder) = self.forwarder.get() else {
            return Err(CoreError::Unavailable("not in a cluster".into()));
        };
        forwarder
            .call(node, call, CLIENT_WAITS)
            .await
            .map_err(|why| unreachable_node(node, why))
    }

    /// Queues `op` for node `node`, in order after those before.
    fn control(&self, node: &str, op: ControlOp) {
        if self.link(node).send(op).is_err() {
            tracing::warn!(node, "no control outbox for another node's queues");
        }
    }

    /// The control outbox for `node`, started (with its liveness task)
    /// the first time this node holds anything there.
    fn link(&self, node: &str) -> mpsc::UnboundedSender<ControlOp> {
        let mut controls = self.remotes.controls.lock();
        controls
            .entry(node.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(control_outbox(node.to_owned(), self.me.clone(), rx));
                tokio::spawn(keep_alive(node.to_owned(), self.me.clone()));
                tx
            })
            .clone()
    }

    /// Registers a holder of `node`'s queues (its liveness is told there
    /// from now on).
    /// Returns the holder's id there.
    fn hold(&self, node: &str, holder: ConsumerId, make: impl FnOnce() -> Arc<Hold>) -> u64 {
        self.link(node);
        self.remotes
            .holds
            .lock()
            .entry((node.to_owned(), holder))
            .or_insert_with(make)
            .remote
    }

    /// Tells `node` a consumer's new prefetch when its budgets changed (a
    /// channel-wide `basic.qos`; see [`ConsumerHandle::pump`]).
    pub(crate) fn retune_remote(&self, node: &str, holder: ConsumerId) {
        let Some(hold) = self.held_by(node, holder) else {
            return;
        };
        if !hold.consuming.load(std::sync::atomic::Ordering::Acquire) || hold.credits.is_empty() {
            return;
        }
        let prefetch = hold.tightest();
        if hold
            .prefetch
            .swap(prefetch, std::sync::atomic::Ordering::AcqRel)
            != prefetch
        {
            self.control(
                node,
                ControlOp::Prefetch {
                    holder: hold.remote,
                    prefetch,
                },
            );
        }
    }

    /// This node's holder `holder` of `node`'s queues.
    fn held_by(&self, node: &str, holder: ConsumerId) -> Option<Arc<Hold>> {
        self.remotes
            .holds
            .lock()
            .get(&(node.to_owned(), holder))
            .cloned()
    }

    /// Drops the holder when it neither consumes nor holds anything, and
    /// tells `node` to forget it.
    fn forget_if_idle(&self, node: &str, holder: ConsumerId) {
        let key = (node.to_owned(), holder);
        let idle = {
            let mut holds = self.remotes.holds.lock();
            let idle = holds.get(&key).is_some_and(|h| {
                !h.consuming.load(std::sync::atomic::Ordering::Acquire) && h.held.lock().is_empty()
            });
            if idle { holds.remove(&key) } else { None }
        };
        if let Some(h) = idle {
            h.stop.cancel();
            self.control(node, ControlOp::Forget { holder: h.remote });
        }
    }

    /// Drops every holder of `node`'s queues: that node could not be told
    /// of their settles, so their lease there must lapse.
    fn abandon(&self, node: &str) {
        let dropped: Vec<Arc<Hold>> = {
            let mut holds = self.remotes.holds.lock();
            let keys: Vec<(String, ConsumerId)> =
                holds.keys().filter(|(n, _)| n == node).cloned().collect();
            keys.iter().filter_map(|k| holds.remove(k)).collect()
        };
        for h in dropped {
            h.lost.store(true, std::sync::atomic::Ordering::Release);
            h.consuming
                .store(false, std::sync::atomic::Ordering::Release);
            h.stop.cancel();
            let n = std::mem::take(&mut *h.held.lock()).len();
            h.give_back(n);
        }
    }

    /// The fetches this node may have open on `node`.
    fn fetch_slots(&self, node: &str) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(
            self.remotes
                .fetch_slots
                .lock()
                .entry(node.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(FETCHES_PER_NODE))),
        )
    }

    /// This node's holders of queues of `node`.
    fn holders_on(&self, node: &str) -> Vec<u64> {
        self.remotes
            .holds
            .lock()
            .iter()
            .filter(|((n, _), _)| n == node)
            .map(|(_, h)| h.remote)
            .collect()
    }

    /// The stand-in for another node's queue.
    fn stub(&self, vhost: &str, remote: &RemoteQueue) -> Arc<Queue> {
        let key = (vhost.to_owned(), remote.def.name.clone());
        let mut stubs = self.remotes.stubs.lock();
        if let Some(q) = stubs.get(&key)
            && q.node.as_deref() == Some(remote.node.as_str())
        {
            return Arc::clone(q);
        }
        let id = QueueId(
            self.next_queue
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let mut q = self.new_queue(
            id,
            vhost,
            remote.def.clone(),
            Default::default(),
            Instant::now(),
        );
        Arc::get_mut(&mut q)
            .expect("a new queue is not shared")
            .node = Some(remote.node.clone());
        stubs.insert(key, Arc::clone(&q));
        q
    }

    /// The queue `name` of vhost `vhost` when another node holds it.
    pub(crate) fn remote_of(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<Option<RemoteQueue>, CoreError> {
        let vh = self.vhost(vhost)?;
        if vh.queue(name).is_some() || !self.forwards() {
            return Ok(None);
        }
        Ok(vh.remote_queue(name))
    }

    /// Whether queue `name` of `vhost` exists, here or on another node.
    pub fn knows_queue(&self, vhost: &str, name: &str) -> bool {
        self.vhost(vhost)
            .is_ok_and(|vh| vh.queue(name).is_some() || vh.remote_queue(name).is_some())
    }

    /// [`Broker::remote_of`], waiting (at most [`QUORUM_SERVING_WITHIN`])
    /// while a quorum queue's group has no leader known here, or names
    /// this node before it serves the queue: a consumer attaches where
    /// the queue is served.
    pub(crate) async fn serving_of(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<Option<RemoteQueue>, CoreError> {
        let deadline = Instant::now() + QUORUM_SERVING_WITHIN;
        loop {
            let remote = self.remote_of(vhost, name)?;
            let waiting = remote.as_ref().is_some_and(|r| {
                super::is_quorum(&r.def)
                    && self.quorum_log().is_some()
                    && (r.node.is_empty() || Some(r.node.as_str()) == self.node_name())
            });
            if !waiting || Instant::now() >= deadline {
                return Ok(remote);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Starts a consumer on `queue`, here or on the node that holds it
    /// (see the module's text); otherwise as [`Broker::consume`].
    pub async fn attach_consumer(
        self: &Arc<Self>,
        vhost: &str,
        queue: &str,
        spec: ConsumerSpec,
        sink: mpsc::UnboundedSender<ConsumerEvent>,
    ) -> Result<ConsumerHandle, CoreError> {
        let deadline = Instant::now() + QUORUM_SERVING_WITHIN;
        loop {
            let remote = self.serving_of(vhost, queue).await?;
            let Some(remote) = remote else {
                return self.consume(vhost, queue, spec, sink);
            };
            let quorum = super::is_quorum(&remote.def);
            match self
                .consume_remote(vhost, remote, spec.clone(), sink.clone())
                .await
            {
                // A quorum queue's new leader builds its queue once a
                // majority confirms it: until then it answers 404.
                Err(CoreError::NotFound(_)) if quorum && Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn consume_remote(
        self: &Arc<Self>,
        vhost: &str,
        remote: RemoteQueue,
        spec: ConsumerSpec,
        sink: mpsc::UnboundedSender<ConsumerEvent>,
    ) -> Result<ConsumerHandle, CoreError> {
        let node = remote.node.clone();
        let holder = self.new_consumer_id();
        // The tightest budget is the consumer's there; here every budget
        // counts its deliveries too.
        let credits = if spec.no_ack {
            Vec::new()
        } else {
            spec.credits.clone()
        };
        let hold = Hold::new(holder.0, credits, true);
        let prefetch = hold.tightest();
        hold.prefetch
            .store(prefetch, std::sync::atomic::Ordering::Relaxed);
        self.hold(&node, holder, || Arc::clone(&hold));
        let mut guard = AttachGuard {
            broker: self,
            node: node.clone(),
            holder,
            armed: true,
        };
        let call = PeerCall::Attach {
            life: self.life,
            holder: holder.0,
            vhost: vhost.to_owned(),
            queue: remote.def.name.clone(),
            tag: spec.tag.clone(),
            no_ack: spec.no_ack,
            exclusive: spec.exclusive,
            priority: spec.priority,
            prefetch,
        };
        match self.call(&node, call).await? {
            PeerReply::Attached => {}
            PeerReply::Refused { code, text } => {
                self.remotes.holds.lock().remove(&(node.clone(), holder));
                guard.armed = false;
                return Err(refused(code, text));
            }
            other => return Err(unexpected(&node, &other)),
        }
        guard.armed = false;
        let stub = self.stub(vhost, &remote);
        let room = Arc::new(Notify::new());
        let fetcher = Fetcher {
            broker: self.me.clone(),
            node,
            queue: remote.def.name.clone(),
            holder,
            no_ack: spec.no_ack,
            hold,
            window: Window::new(spec.window, Arc::clone(&room)),
            room,
            sink,
        };
        tokio::spawn(fetcher.run());
        Ok(ConsumerHandle {
            broker: Arc::clone(self),
            queue: stub,
            id: holder,
            active: true,
        })
    }

    /// The ready messages and consumers of a queue another node holds, as
    /// that node says within [`COUNTS_WITHIN`]; None when it cannot say.
    pub(crate) async fn remote_counts(
        &self,
        vhost: &str,
        remote: &RemoteQueue,
    ) -> Option<(u64, u64)> {
        let forwarder = self.forwarder.get()?;
        let call = PeerCall::Counts {
            life: self.life,
            vhost: vhost.to_owned(),
            queue: remote.def.name.clone(),
        };
        match forwarder.call(&remote.node, call, COUNTS_WITHIN).await {
            Ok(PeerReply::Counts {
                messages,
                consumers,
            }) => Some((messages, consumers)),
            other => {
                tracing::debug!(node = %remote.node, queue = %remote.def.name, answer = ?other, "a queue's counts not known");
                None
            }
        }
    }

    /// `basic.get` from a queue another node holds.
    pub(crate) async fn get_remote(
        &self,
        vhost: &str,
        remote: RemoteQueue,
        holder: ConsumerId,
        no_ack: bool,
    ) -> Result<Option<GetOk>, CoreError> {
        let node = remote.node.clone();
        // A no-ack get holds nothing: it goes under an id of its own.
        let id = if no_ack {
            self.new_consumer_id().0
        } else {
            self.hold(&node, holder, || {
                Hold::new(self.new_consumer_id().0, Vec::new(), false)
            })
        };
        let call = PeerCall::Get {
            life: self.life,
            holder: id,
            vhost: vhost.to_owned(),
            queue: remote.def.name.clone(),
            no_ack,
        };
        let answer = self.call(&node, call).await;
        let (shipped, remaining) = match answer {
            Ok(PeerReply::Got(Some(got))) => got,
            other => {
                if !no_ack {
                    self.forget_if_idle(&node, holder);
                }
                return match other {
                    Ok(PeerReply::Got(None)) => Ok(None),
                    Ok(PeerReply::Refused { code, text }) => Err(refused(code, text)),
                    Ok(other) => Err(unexpected(&node, &other)),
                    Err(e) => Err(e),
                };
            }
        };
        let message = Arc::new(crate::codec::decode_message(&shipped.message)?);
        if !no_ack && let Some(hold) = self.remotes.holds.lock().get(&(node, holder)) {
            hold.held
                .lock()
                .insert((remote.def.name.clone(), shipped.tag));
        }
        Ok(Some(GetOk {
            delivery: Delivery {
                consumer: holder,
                tag: DeliveryTag(shipped.tag),
                message,
                redelivered: shipped.redelivered,
                delivery_count: shipped.delivery_count,
                _permit: None,
                _held: None,
            },
            remaining,
            queue: self.stub(vhost, &remote),
        }))
    }

    /// [`Broker::settle`] of a delivery from another node's queue.
    pub(crate) fn settle_remote(
        &self,
        stub: &Queue,
        node: &str,
        holder: ConsumerId,
        tag: DeliveryTag,
        how: Settle,
    ) -> Result<(), CoreError> {
        let Some(hold) = self.held_by(node, holder) else {
            // The holder was dropped: its node could not be reached (its
            // deliveries went back there when its lease lapsed). The
            // adapters check their clients' tags themselves; a settle of
            // one of those is a no-op, as for a queue that went.
            return Ok(());
        };
        let taken = hold.held.lock().remove(&(stub.name().to_owned(), tag.0));
        if !taken {
            return Err(CoreError::PreconditionFailed(format!(
                "unknown delivery tag {tag}"
            )));
        }
        hold.give_back(1);
        let id = hold.remote;
        self.control(
            node,
            ControlOp::Settle {
                holder: id,
                queue: stub.name().to_owned(),
                tag: tag.0,
                how,
            },
        );
        self.forget_if_idle(node, holder);
        Ok(())
    }

    /// [`Broker::release`] for another node's queue.
    pub(crate) fn release_remote(&self, stub: &Queue, node: &str, holder: ConsumerId) {
        let hold = self.held_by(node, holder);
        // Without a hold here nothing is held there (a forgotten holder
        // was ended there).
        let Some(h) = hold else { return };
        {
            let mut held = h.held.lock();
            let before = held.len();
            held.retain(|(q, _)| q != stub.name());
            h.give_back(before - held.len());
        }
        self.control(
            node,
            ControlOp::Release {
                holder: h.remote,
                queue: stub.name().to_owned(),
            },
        );
        self.forget_if_idle(node, holder);
    }

    /// Ends a consumer of another node's queue.
    pub(crate) fn cancel_remote(&self, node: &str, holder: ConsumerId, requeue: bool) {
        let hold = self.held_by(node, holder);
        let Some(h) = hold else { return };
        {
            // Under `held`: a fetch under way either counted a delivery
            // already or sends it back (see `Fetcher::take`).
            let mut held = h.held.lock();
            h.stop.cancel();
            h.consuming
                .store(false, std::sync::atomic::Ordering::Release);
            if requeue {
                let n = std::mem::take(&mut *held).len();
                h.give_back(n);
            }
        }
        self.control(
            node,
            ControlOp::Cancel {
                holder: h.remote,
                requeue,
            },
        );
        self.forget_if_idle(node, holder);
    }

    /// This broker's incarnation, as other nodes know it.
    pub fn life(&self) -> u64 {
        self.life
    }

    /// Answers another node's [`PeerCall`]; `from` is its name.
    pub async fn answer_call(self: &Arc<Self>, from: &str, call: PeerCall) -> PeerReply {
        self.meet(from, call.life());
        let result = match call {
            PeerCall::Attach {
                holder,
                vhost,
                queue,
                tag,
                no_ack,
                exclusive,
                priority,
                prefetch,
                ..
            } => {
                let mut spec = ConsumerSpec::new(tag, self.served_conn());
                spec.no_ack = no_ack;
                spec.exclusive = exclusive;
                spec.priority = priority;
                spec.window = SERVED_WINDOW;
                if !no_ack {
                    // Kept (0: no limit) so that a later `Prefetch` can
                    // change it.
                    spec.credits.push(Credit::new(prefetch));
                }
                self.serve_consumer(from, holder, &vhost, &queue, spec)
                    .map(|()| PeerReply::Attached)
            }
            PeerCall::Fetch {
                holder,
                max,
                wait_ms,
                ..
            } => Ok(self.serve_fetch(from, holder, max, wait_ms).await),
            PeerCall::Get {
                holder,
                vhost,
                queue,
                no_ack,
                ..
            } => self.serve_get(from, holder, &vhost, &queue, no_ack).await,
            PeerCall::Control { ops, .. } => {
                for op in ops {
                    self.serve_control(from, op);
                }
                Ok(PeerReply::Done)
            }
            PeerCall::Counts { vhost, queue, .. } => {
                self.queue_for(&vhost, &queue, None)
                    .map(|q| PeerReply::Counts {
                        messages: q.message_count(),
                        consumers: q.consumer_count(),
                    })
            }
            PeerCall::TakeSession {
                vhost,
                client_id,
                connection,
                index,
                ..
            } => Ok(self
                .hand_over_client(from, &vhost, &client_id, connection, index)
                .await),
        };
        result.unwrap_or_else(|e| refusal(&e))
    }

    /// Notes `from`'s life: what an earlier life of it held goes back.
    fn meet(self: &Arc<Self>, from: &str, life: u64) {
        let ended = {
            let mut served = self.remotes.served.lock();
            let entry = served.entry(from.to_owned()).or_default();
            if entry.life == life {
                return;
            }
            entry.life = life;
            std::mem::take(&mut entry.holders)
        };
        if !ended.is_empty() {
            tracing::info!(
                node = from,
                holders = ended.len(),
                "a node restarted: what it held goes back to its queues"
            );
        }
        for (_, s) in ended {
            s.end(self);
        }
    }

    fn served_conn(&self) -> ConnectionId {
        *self.remotes.conn.get_or_init(|| self.new_connection_id())
    }

    /// Puts `served` under (`from`, `holder`), ending any it replaces.
    fn serve(self: &Arc<Self>, from: &str, holder: u64, served: Served) {
        self.start_reaping();
        let old = self
            .remotes
            .served
            .lock()
            .entry(from.to_owned())
            .or_default()
            .holders
            .insert(holder, served);
        if let Some(old) = old {
            old.end(self);
        }
    }

    fn serve_consumer(
        self: &Arc<Self>,
        from: &str,
        holder: u64,
        vhost: &str,
        queue: &str,
        spec: ConsumerSpec,
    ) -> Result<(), CoreError> {
        let q = self.queue_for(vhost, queue, None)?;
        let forgotten = self
            .remotes
            .served
            .lock()
            .get(from)
            .is_some_and(|f| f.forgotten.contains_key(&holder));
        if forgotten {
            return Err(CoreError::NotFound(format!(
                "consumer {holder} of node {from} was cancelled"
            )));
        }
        let credit = spec.credits.first().cloned();
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = self.consume(vhost, queue, spec, tx)?;
        let served = Served {
            holder: handle.id(),
            credit,
            consumer: Some(handle),
            feed: Some(Arc::new(tokio::sync::Mutex::new(Feed {
                rx,
                leftover: None,
            }))),
            queues: vec![q],
            seen: Instant::now(),
        };
        self.serve(from, holder, served);
        Ok(())
    }

    /// `f` of `from`'s holder `holder`, which is seen now; None when it
    /// is not served here.
    fn with_served<T>(
        &self,
        from: &str,
        holder: u64,
        f: impl FnOnce(&mut Served) -> T,
    ) -> Option<T> {
        let mut served = self.remotes.served.lock();
        let s = served.get_mut(from)?.holders.get_mut(&holder)?;
        s.seen = Instant::now();
        Some(f(s))
    }

    async fn serve_fetch(&self, from: &str, holder: u64, max: u32, wait_ms: u32) -> PeerReply {
        let feed = self
            .with_served(from, holder, |s| {
                s.feed
                    .clone()
                    .map(|f| (f, s.holder, s.queues.first().cloned()))
            })
            .flatten();
        let Some((feed, mine, Some(queue))) = feed else {
            return PeerReply::Fetched {
                deliveries: Vec::new(),
                ended: true,
            };
        };
        let mut feed = feed.lock().await;
        let max = (max as usize).clamp(1, FETCH_DELIVERIES);
        let mut deliveries = Vec::new();
        let mut bytes = 0u64;
        let mut ended = false;
        let wait = Duration::from_millis(u64::from(wait_ms)).min(FETCH_WAIT);
        let first = match feed.leftover.take() {
            Some(d) => Some(ConsumerEvent::Deliver(d)),
            None => match tokio::time::timeout(wait, feed.rx.recv()).await {
                Ok(Some(ev)) => Some(ev),
                Ok(None) => {
                    ended = true;
                    None
                }
                Err(_) => None,
            },
        };
        let mut next = first;
        while let Some(ev) = next.take() {
            match ev {
                ConsumerEvent::Deliver(d) => {
                    let size = d.message.body_len();
                    if !deliveries.is_empty() && bytes + size > FETCH_BYTES {
                        feed.leftover = Some(d);
                        break;
                    }
                    let message = crate::codec::encode_message(&d.message).to_vec();
                    if message.len() > SHIP_MAX {
                        // It cannot cross the peer link: it stays here
                        // for consumers on this node, and this consumer
                        // ends rather than be offered it again.
                        tracing::warn!(
                            node = from,
                            queue = queue.name(),
                            bytes = message.len(),
                            "a message too large for a consumer on another node stays in its queue; that consumer is ended"
                        );
                        if let Err(e) = self.settle(&queue, mine, d.tag, Settle::Requeue) {
                            tracing::debug!(error = %e, "an unshippable delivery not returned");
                        }
                        ended = true;
                        break;
                    }
                    bytes += size;
                    deliveries.push(Shipped {
                        tag: d.tag.0,
                        redelivered: d.redelivered,
                        delivery_count: d.delivery_count,
                        message,
                    });
                }
                ConsumerEvent::Cancelled(_) => {
                    ended = true;
                    break;
                }
            }
            if deliveries.len() >= max {
                break;
            }
            next = feed.rx.try_recv().ok();
        }
        PeerReply::Fetched { deliveries, ended }
    }

    async fn serve_get(
        self: &Arc<Self>,
        from: &str,
        holder: u64,
        vhost: &str,
        queue: &str,
        no_ack: bool,
    ) -> Result<PeerReply, CoreError> {
        let q = self.queue_for(vhost, queue, None)?;
        if no_ack {
            // Nothing stays held: no holder to keep.
            return self
                .get_to_ship(vhost, queue, self.new_consumer_id(), true)
                .await;
        }
        let mine = self.with_served(from, holder, |s| {
            if !s.queues.iter().any(|x| Arc::ptr_eq(x, &q)) {
                s.queues.push(Arc::clone(&q));
            }
            s.holder
        });
        let mine = match mine {
            Some(h) => h,
            None => {
                let h = self.new_consumer_id();
                self.serve(
                    from,
                    holder,
                    Served {
                        holder: h,
                        credit: None,
                        consumer: None,
                        feed: None,
                        queues: vec![Arc::clone(&q)],
                        seen: Instant::now(),
                    },
                );
                h
            }
        };
        self.get_to_ship(vhost, queue, mine, false).await
    }

    /// Takes the head of `queue` for `mine` and makes it ready to cross
    /// the peer link; `no_ack`: settled once it is. A message too large
    /// to cross stays.
    async fn get_to_ship(
        &self,
        vhost: &str,
        queue: &str,
        mine: ConsumerId,
        no_ack: bool,
    ) -> Result<PeerReply, CoreError> {
        let Some(g) = self.get_here(vhost, queue, mine, false, None).await? else {
            return Ok(PeerReply::Got(None));
        };
        let shipped = ship_got(&g);
        if shipped.0.message.len() > SHIP_MAX {
            if self
                .settle(&g.queue, mine, g.delivery.tag, Settle::Requeue)
                .is_err()
            {
                self.release(&g.queue, mine);
            }
            return Err(CoreError::PreconditionFailed(format!(
                "the message at the head of '{queue}' ({} bytes) is too large to cross to another node: get it on its own node",
                shipped.0.message.len()
            )));
        }
        if no_ack && let Err(e) = self.settle(&g.queue, mine, g.delivery.tag, Settle::Ack) {
            // Not taken after all: back to the queue, not lost.
            self.release(&g.queue, mine);
            return Err(e);
        }
        Ok(PeerReply::Got(Some(shipped)))
    }

    fn serve_control(self: &Arc<Self>, from: &str, op: ControlOp) {
        let now = Instant::now();
        match op {
            ControlOp::Alive { holders } => {
                let mut served = self.remotes.served.lock();
                if let Some(f) = served.get_mut(from) {
                    for h in holders {
                        if let Some(s) = f.holders.get_mut(&h) {
                            s.seen = now;
                        }
                    }
                }
            }
            ControlOp::Settle {
                holder,
                queue,
                tag,
                how,
            } => {
                let found = {
                    let served = self.remotes.served.lock();
                    served
                        .get(from)
                        .and_then(|f| f.holders.get(&holder))
                        .and_then(|s| {
                            let q = s.queues.iter().find(|q| q.name() == queue)?;
                            Some((Arc::clone(q), s.holder))
                        })
                };
                let Some((q, mine)) = found else {
                    tracing::debug!(
                        node = from,
                        holder,
                        queue,
                        "a settle for a holder no longer served"
                    );
                    return;
                };
                if let Err(e) = self.settle(&q, mine, DeliveryTag(tag), how) {
                    tracing::debug!(node = from, holder, queue, error = %e, "a settle from another node not taken");
                }
            }
            ControlOp::Cancel { holder, requeue } => {
                let taken = {
                    let mut served = self.remotes.served.lock();
                    let f = served.entry(from.to_owned()).or_default();
                    match f.holders.get_mut(&holder) {
                        Some(s) => Some((
                            s.consumer.take(),
                            s.feed.take(),
                            s.holder,
                            s.queues.first().cloned(),
                        )),
                        None => {
                            f.forget(holder, now);
                            None
                        }
                    }
                };
                let Some((consumer, feed, mine, queue)) = taken else {
                    return;
                };
                if let Some(c) = consumer {
                    c.cancel(requeue);
                }
                if let (Some(feed), Some(q)) = (feed, queue) {
                    self.requeue_unfetched(feed, q, mine);
                }
            }
            ControlOp::Prefetch { holder, prefetch } => {
                let retuned = self
                    .with_served(from, holder, |s| {
                        let credit = s.credit.as_ref()?;
                        credit.set_limit(prefetch);
                        Some(s.consumer.as_ref()?.queue().clone())
                    })
                    .flatten();
                if let Some(q) = retuned {
                    // More room may let the queue deliver now.
                    q.wake.notify_one();
                }
            }
            ControlOp::Forget { holder } => {
                let gone = {
                    let mut served = self.remotes.served.lock();
                    let f = served.entry(from.to_owned()).or_default();
                    // Holder ids are never used twice: an attach for one
                    // still on its way must not make a consumer.
                    f.forget(holder, now);
                    f.holders.remove(&holder)
                };
                if let Some(s) = gone {
                    s.end(self);
                }
            }
            ControlOp::Release { holder, queue } => {
                let found = {
                    let mut served = self.remotes.served.lock();
                    let Some(f) = served.get_mut(from) else {
                        return;
                    };
                    let Some(s) = f.holders.get_mut(&holder) else {
                        return;
                    };
                    let q = s
                        .queues
                        .iter()
                        .position(|q| q.name() == queue)
                        .map(|i| s.queues.remove(i));
                    let mine = s.holder;
                    let gone = (s.queues.is_empty() && s.consumer.is_none())
                        .then(|| f.holders.remove(&holder))
                        .flatten();
                    (q, mine, gone)
                };
                let (q, mine, gone) = found;
                if let Some(q) = q {
                    self.release(&q, mine);
                }
                if let Some(s) = gone {
                    s.end(self);
                }
            }
        }
    }

    /// Returns to `queue` what a cancelled consumer was given and its
    /// holder never fetched (once a fetch under way is done with it).
    fn requeue_unfetched(
        &self,
        feed: Arc<tokio::sync::Mutex<Feed>>,
        queue: Arc<Queue>,
        mine: ConsumerId,
    ) {
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut feed = feed.lock().await;
            let mut tags: Vec<DeliveryTag> =
                feed.leftover.take().map(|d| d.tag).into_iter().collect();
            while let Ok(ev) = feed.rx.try_recv() {
                if let ConsumerEvent::Deliver(d) = ev {
                    tags.push(d.tag);
                }
            }
            let Some(broker) = me.upgrade() else { return };
            for tag in tags {
                // Already back if the cancel requeued.
                let _ = broker.settle(&queue, mine, tag, Settle::Requeue);
            }
        });
    }

    /// Starts the task that releases what lapsed holders hold (once).
    fn start_reaping(&self) {
        if self.remotes.reaping.set(()).is_err() {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ALIVE_EVERY);
            loop {
                tick.tick().await;
                let Some(broker) = me.upgrade() else { return };
                if broker.is_shut_down() {
                    return;
                }
                broker.reap(Instant::now());
            }
        });
    }

    /// Ends every served holder not heard of for [`LEASE`], and every
    /// holder of a node no link has reached for [`UNLINKED_FOR`] (a node
    /// that died: what it held is delivered again at once, as RabbitMQ
    /// does when a node goes down, rather than after the lease).
    fn reap(&self, now: Instant) {
        let forwarder = self.forwarder.get();
        let lapsed: Vec<(String, Served)> = {
            let mut served = self.remotes.served.lock();
            let mut lapsed = Vec::new();
            for (node, f) in served.iter_mut() {
                f.forgotten.retain(|_, at| now.duration_since(*at) <= LEASE);
                let unlinked = if forwarder.is_none_or(|fw| fw.linked(node)) {
                    f.unlinked_since = None;
                    false
                } else {
                    now.duration_since(*f.unlinked_since.get_or_insert(now)) >= UNLINKED_FOR
                };
                let old: Vec<u64> = f
                    .holders
                    .iter()
                    .filter(|(_, s)| unlinked || now.duration_since(s.seen) > LEASE)
                    .map(|(h, _)| *h)
                    .collect();
                for h in old {
                    if let Some(s) = f.holders.remove(&h) {
                        lapsed.push((node.clone(), s));
                    }
                }
            }
            lapsed
        };
        for (node, s) in lapsed {
            tracing::info!(
                node,
                "a holder of another node lapsed: what it held goes back to its queue"
            );
            s.end(self);
        }
    }
}
