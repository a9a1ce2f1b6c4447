//! The broker: vhosts holding a topology and queues, the publish path, the
//! consume/settle path, recovery from the store, and shutdown.
//!
//! Submodules: `declare` (exchanges, queues, bindings), `publish` (routing,
//! persistence, enqueue, dead-lettering), `consume` (consumers, get, settle),
//! `recovery` (rebuilding state from the store), `records` (store encoding).

mod clients;
mod connections;
mod consume;
mod declare;
mod forward;
mod publish;
mod quorum;
pub(crate) mod records;
mod recovery;
mod remote;
mod replica;
mod routes;
mod vhosts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use junction_store::{Store, StoreStats};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::CoreError;
use crate::ids::{ConnectionId, ConsumerId, MessageId, QueueId};
use crate::message::{Message, Protocol};
use crate::queue::args::{QueueArgs, QueueDef};
use crate::queue::{Effects, Paging, QueueState, ReadyKey};
use crate::retained::Retained;
use crate::topology::Topology;
use crate::value::FieldTable;

pub use clients::{ClientClaim, ClientSessions, HandOverFuture, TakenSession};
pub use connections::{ConnectionDetails, ConnectionEntry, ConnectionSnapshot};
pub use consume::{ConsumerHandle, GetOk};
pub use declare::{ConsumerSummary, QueueInfo, QueueSummary};
pub use forward::{CallFuture, ForwardAnswer, ForwardFuture, Forwarded, Forwarder};
pub use publish::Published;
pub use quorum::{EnqueueFuture, QuorumLog, QuorumQueue, is_quorum, quorum_key};
pub use remote::{ControlOp, PeerCall, PeerReply, Shipped};
pub use replica::{
    AppliedFuture, Forgotten, MetaFuture, MetaIndexFuture, MetaLog, MetaOp, Records, RemoteQueue,
};
pub use vhosts::VhostInfo;

/// Broker-wide settings the core needs.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Vhosts that exist from the start (more may be recovered from the store).
    pub vhosts: Vec<String>,
    /// Memory held by queued messages ([`crate::Message::footprint`])
    /// above which the memory alarm fires and publishers are stopped (0:
    /// 40% of physical memory).
    pub memory_high_watermark: u64,
    /// Free bytes on the store's file system below which the disk alarm
    /// stops publishers, as the memory alarm does (RabbitMQ's
    /// `disk_free_limit`). 0: no disk alarm.
    pub disk_free_limit: u64,
    /// Counts a client controls, each refused past its limit.
    pub limits: Limits,
    /// Persistent messages a queue keeps in memory at its head; later
    /// arrivals stay in the store until they near the head.
    pub queue_head_messages: usize,
    /// The same bound in body bytes.
    pub queue_head_bytes: u64,
    /// This node's name in its cluster (`[cluster] node_name`); None
    /// outside a cluster. Queue records name the node a queue lives on.
    pub node: Option<String>,
    /// Queues and exchanges whose names start with one of these stay on
    /// their node in a cluster, with their bindings: the `$SYS` exchange
    /// of each node's own statistics.
    pub node_local_names: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let paging = Paging::default();
        BrokerConfig {
            vhosts: vec!["/".to_string()],
            memory_high_watermark: 0,
            disk_free_limit: 50_000_000,
            limits: Limits::default(),
            queue_head_messages: paging.head_messages,
            queue_head_bytes: paging.head_bytes,
            node: None,
            node_local_names: Vec::new(),
        }
    }
}

/// Limits on what clients may make the broker hold, per vhost. Each is
/// checked where the thing is created, for every protocol alike; past it
/// the request fails with [`CoreError::LimitReached`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Words (`.`-separated; MQTT topic levels) in a routing key or
    /// binding key. Topic matching costs grow with it.
    pub max_topic_levels: usize,
    /// Queues in one vhost (each MQTT session and subscriber owns one).
    pub max_queues: usize,
    /// Exchanges in one vhost, the four built-ins included.
    pub max_exchanges: usize,
    /// Bindings in one vhost (each MQTT subscription is one).
    pub max_bindings: usize,
    /// Logins (broker-wide) that may wait for a slow password check at
    /// once; more are refused at once (see [`crate::LoginGate`]).
    pub max_pending_logins: usize,
    /// Largest first packet a client may send before it has logged in
    /// (MQTT CONNECT, AMQP frames before `connection.tune-ok`, STOMP
    /// CONNECT), in bytes: an anonymous peer gets little buffer.
    pub max_handshake_size: usize,
    /// How long a write to a client may make no progress before the
    /// connection is closed as a slow consumer (see [`crate::io`]).
    pub write_timeout: std::time::Duration,
    /// Connections one user may have open at once, every protocol together
    /// (0: no cap); see [`ConnectionGuard::login`].
    pub max_connections_per_user: usize,
    /// Vhosts in the broker (the configured ones and those made at run
    /// time through the management API).
    pub max_vhosts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topic_levels: 128,
            max_queues: 1_000_000,
            max_exchanges: 10_000,
            max_bindings: 5_000_000,
            max_pending_logins: 64,
            max_handshake_size: 65_536,
            write_timeout: std::time::Duration::from_secs(15),
            max_connections_per_user: 0,
            max_vhosts: 10_000,
        }
    }
}

/// 40% of physical memory (RabbitMQ's default watermark), or no limit if
/// it cannot be read.
fn default_watermark() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
    });
    total_kb.map_or(u64::MAX, |kb| kb * 1024 / 10 * 4)
}

/// How often the memory alarm re-counts what the queues hold.
const ALARM_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Queues of other nodes a message goes to, as (node, queue) pairs.
pub(crate) type RemoteTargets = Vec<(String, String)>;

/// One virtual host: an isolated set of exchanges, bindings and queues.
pub struct VHost {
    pub name: String,
    /// Exchanges and bindings; read-locked by every publish for routing.
    pub(crate) topology: RwLock<Topology>,
    pub(crate) queues: RwLock<crate::FastMap<String, Arc<Queue>>>,
    /// What the management API says of it.
    pub(crate) info: RwLock<VhostInfo>,
    /// Durable queues that live on other nodes of the cluster, by name.
    pub(crate) remote: RwLock<crate::FastMap<String, RemoteQueue>>,
    /// Exclusive queues of other nodes (reached through the default
    /// exchange), by name: their node (`routes.rs`).
    pub(crate) elsewhere: RwLock<crate::FastMap<String, String>>,
}

impl VHost {
    fn new(name: &str) -> VHost {
        VHost {
            name: name.to_string(),
            topology: RwLock::new(Topology::with_builtins()),
            queues: RwLock::new(crate::FastMap::default()),
            info: RwLock::new(VhostInfo::default()),
            remote: RwLock::new(crate::FastMap::default()),
            elsewhere: RwLock::new(crate::FastMap::default()),
        }
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// The durable queue `name` of another node of the cluster.
    pub fn remote_queue(&self, name: &str) -> Option<RemoteQueue> {
        self.remote.read().get(name).cloned()
    }

    /// The queues a message published to `exchange` goes to (routing, then
    /// one lookup of every name under one read of the queue map).
    pub(crate) fn route_queues(
        &self,
        exchange: &str,
        msg: &Message,
    ) -> Result<Vec<Arc<Queue>>, CoreError> {
        self.route(exchange, msg, false).map(|(local, _)| local)
    }

    /// [`Self::route_queues`], and, when `remote`, the queues of other
    /// nodes it goes to as (node, queue) pairs.
    pub(crate) fn route(
        &self,
        exchange: &str,
        msg: &Message,
        remote: bool,
    ) -> Result<(Vec<Arc<Queue>>, RemoteTargets), CoreError> {
        let topology = self.topology.read();
        let names = topology.route(exchange, msg)?;
        if names.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // Taken inside the topology read: nothing takes the two the other
        // way round (writers hold one at a time).
        let queues = self.queues.read();
        let local: Vec<Arc<Queue>> = names
            .iter()
            .filter_map(|n| queues.get(*n).cloned())
            .collect();
        let mut elsewhere = Vec::new();
        if remote && local.len() < names.len() {
            let others = self.remote.read();
            for n in names.iter().filter(|n| !queues.contains_key(**n)) {
                if let Some(r) = others.get(*n) {
                    elsewhere.push((r.node.clone(), (*n).to_owned()));
                } else if exchange.is_empty() {
                    // An exclusive queue of another node, by name.
                    if let Some(node) = self.elsewhere.read().get(*n) {
                        elsewhere.push((node.clone(), (*n).to_owned()));
                    }
                } else if let Some(node) = routes::route_node(n) {
                    // Another node's node-local queues: it routes again.
                    elsewhere.push((node.to_owned(), (*n).to_owned()));
                }
            }
        }
        Ok((local, elsewhere))
    }
}

/// A queue: its declaration and its state machine behind a short-held lock
/// (never held across an await).
pub struct Queue {
    id: QueueId,
    vhost: String,
    def: QueueDef,
    pub(crate) state: Mutex<QueueState>,
    /// Wakes the queue's service task: a deadline moved, or a consumer's
    /// transport window has room again.
    pub(crate) wake: Arc<Notify>,
    deleted: AtomicBool,
    /// Its broker, for reading paged messages in `peek_bodies` (weak: a
    /// queue's service task must not keep the store open).
    broker: Weak<Broker>,
    /// The `order` of the next dead letter whose copy may be made: the
    /// copies of two operations' dead letters (an expiry after a page-in,
    /// on two threads) reach the dead-letter exchange in the order the
    /// queue gave them up, not in the order the threads got there.
    dead_letter_turn: Mutex<u64>,
    dead_letter_turn_moved: parking_lot::Condvar,
    /// Set on the stand-in for a queue another node holds: that node's
    /// name (see `remote.rs`).
    node: Option<String>,
    /// Set on the queue of a quorum queue's leader: each message's key in
    /// the queue's group (see `quorum.rs`).
    quorum: Option<quorum::QuorumLink>,
}

/// Longest wait for an earlier batch of a queue's dead letters to be
/// copied (by another thread, a matter of microseconds). Past it the copies
/// go anyway: a batch that never comes (its operation's effects dropped)
/// must not hold the queue's dead-lettering up for good.
const DEAD_LETTER_TURN_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("id", &self.id)
            .field("vhost", &self.vhost)
            .field("name", &self.def.name)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub fn id(&self) -> QueueId {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.def.name
    }
    pub fn vhost(&self) -> &str {
        &self.vhost
    }
    pub fn def(&self) -> &QueueDef {
        &self.def
    }
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
    /// The node holding the queue when this is a stand-in for another
    /// node's queue (its consumers' deliveries come from there).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Waits, at most `patience` ([`DEAD_LETTER_TURN_PATIENCE`]), until
    /// the dead letters before `order` have been copied.
    pub(crate) fn await_dead_letter_turn(&self, order: u64, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        let mut turn = self.dead_letter_turn.lock();
        while *turn < order {
            if self
                .dead_letter_turn_moved
                .wait_until(&mut turn, deadline)
                .timed_out()
            {
                tracing::debug!(
                    queue = self.name(),
                    order,
                    turn = *turn,
                    "dead letters copied out of turn"
                );
                break;
            }
        }
    }

    /// The dead letters before `next` have been copied.
    pub(crate) fn end_dead_letter_turn(&self, next: u64) {
        let mut turn = self.dead_letter_turn.lock();
        if *turn < next {
            *turn = next;
        }
        self.dead_letter_turn_moved.notify_all();
    }
    /// Ready messages.
    pub fn message_count(&self) -> u64 {
        self.state.lock().ready_count()
    }
    /// Ready messages whose body is in the store only (paged).
    pub fn paged_count(&self) -> u64 {
        self.state.lock().paged_count()
    }
    pub fn unacked_count(&self) -> u64 {
        self.state.lock().unacked_count()
    }
    pub fn consumer_count(&self) -> u64 {
        self.state.lock().consumer_count()
    }
    /// The first `n` ready messages in delivery order, left where they are
    /// and not marked redelivered (the management API's peek). Paged ones
    /// are read from the store here, blocking: call it off the runtime.
    pub fn peek(&self, n: usize) -> Vec<Message> {
        let found: Vec<Result<Arc<Message>, MessageId>> = self
            .state
            .lock()
            .ready_messages()
            .take(n)
            .map(|e| e.message().cloned().ok_or_else(|| e.message_id()))
            .collect();
        let broker = self.broker.upgrade();
        found
            .into_iter()
            .filter_map(|m| match m {
                Ok(m) => Some(Message::clone(&m)),
                Err(id) => broker
                    .as_ref()
                    .and_then(|b| read_message(&b.store, id).ok().flatten()),
            })
            .collect()
    }

    /// Ready messages' bodies in delivery order (inspection and tests;
    /// paged ones are read from the store here, blocking).
    pub fn peek_bodies(&self) -> Vec<bytes::Bytes> {
        let bodies: Vec<Result<bytes::Bytes, MessageId>> = self
            .state
            .lock()
            .ready_messages()
            .map(|e| match e.message() {
                Some(m) => Ok(m.body.clone()),
                None => Err(e.message_id()),
            })
            .collect();
        bodies
            .into_iter()
            .map(|b| {
                b.unwrap_or_else(|id| {
                    let stored = self.broker.upgrade().map(|b| read_message(&b.store, id));
                    match stored {
                        Some(Ok(Some(m))) => m.body,
                        _ => bytes::Bytes::new(),
                    }
                })
            })
            .collect()
    }
}

/// Reads one stored message (blocking).
fn read_message(store: &Store, id: MessageId) -> Result<Option<Message>, CoreError> {
    match store.get(junction_store::Cf::Messages, &records::message_key(id))? {
        Some(v) => crate::codec::decode_message(&v).map(Some),
        None => Ok(None),
    }
}

/// Messages read back for paged entries, and the entries whose message
/// could not be read.
type PagedRead = (Vec<(ReadyKey, Arc<Message>)>, Vec<(ReadyKey, MessageId)>);

/// Reads paged entries' messages back (blocking: off the async workers).
/// A message not found may still be on its way to the store (an entry
/// enters its queue as soon as its batch is queued): after one barrier
/// through the committer, which applies batches in order, a second look
/// is final.
fn read_paged(store: &Store, wanted: &[(ReadyKey, MessageId)]) -> PagedRead {
    let mut loaded = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    let mut lost = Vec::new();
    for &(key, id) in wanted {
        match read_message(store, id) {
            Ok(Some(m)) => loaded.push((key, Arc::new(m))),
            Ok(None) => missing.push((key, id)),
            Err(e) => {
                tracing::error!(message_id = id.0, error = %e, "paged message unreadable");
                lost.push((key, id));
            }
        }
    }
    if missing.is_empty() {
        return (loaded, lost);
    }
    if let Err(e) = store
        .submit_now(junction_store::Batch::new(), false)
        .and_then(|r| r.wait_blocking())
    {
        tracing::error!(error = %e, "store barrier failed while reading paged messages");
    }
    for (key, id) in missing {
        match read_message(store, id) {
            Ok(Some(m)) => loaded.push((key, Arc::new(m))),
            other => {
                tracing::error!(message_id = id.0, outcome = ?other.err(), "paged message missing from the store");
                lost.push((key, id));
            }
        }
    }
    (loaded, lost)
}

/// Counters for `/metrics`.
#[derive(Default)]
struct Counters {
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    connections: [AtomicU64; 4],
}

fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Amqp => 0,
        Protocol::Mqtt => 1,
        Protocol::Stomp => 2,
        Protocol::Internal => 3,
    }
}

/// Per-queue figures for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStats {
    pub vhost: String,
    pub name: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// A snapshot of the broker's counters.
#[derive(Clone, Debug)]
pub struct BrokerStats {
    pub queues: Vec<QueueStats>,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub connections: Vec<(Protocol, u64)>,
    pub store: StoreStats,
    /// Message body bytes held in queues, and whether the alarm is on.
    pub held_bytes: u64,
    pub memory_alarm: bool,
    /// Free disk space is below `disk_free_limit`.
    pub disk_alarm: bool,
    /// Records recovery kept aside in the store's quarantine.
    pub quarantined_records: u64,
    /// Connections closed because writes to them made no progress.
    pub slow_consumer_disconnects: u64,
}

/// The broker core. Shared as `Arc<Broker>` by every connection.
pub struct Broker {
    /// This broker, for tasks it starts from `&self` (reading paged
    /// messages back).
    me: Weak<Broker>,
    store: Store,
    vhosts: RwLock<crate::FastMap<String, Arc<VHost>>>,
    next_message: AtomicU64,
    next_queue: AtomicU64,
    next_connection: AtomicU64,
    next_consumer: AtomicU64,
    /// Stored queue entries per persisted message: the message record is
    /// deleted when its last entry goes.
    refs: Mutex<crate::FastMap<MessageId, u32>>,
    /// The exclusive queues each connection declared (vhost, name), so a
    /// closing connection finds its own without scanning every queue.
    exclusive: Mutex<HashMap<ConnectionId, Vec<(String, String)>>>,
    counters: Counters,
    /// Open connections by logged-in user (for the per-user cap).
    users_online: parking_lot::Mutex<HashMap<String, usize>>,
    /// Every open connection (the management API).
    connections: connections::Connections,
    /// Where queue policies come from (the server's; see
    /// [`Broker::set_policy_source`]).
    policy: RwLock<Option<PolicySource>>,
    retained: Retained,
    /// Cancels every queue service task at shutdown.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
    /// True while queued message bytes exceed the watermark; adapters stop
    /// reading from publishing connections (AMQP also sends
    /// `connection.blocked`).
    alarm: tokio::sync::watch::Sender<bool>,
    memory_high_watermark: u64,
    disk_free_limit: u64,
    /// Whether each alarm is on; the `alarm` channel says "either".
    memory_alarm_on: AtomicBool,
    disk_alarm_on: AtomicBool,
    limits: Limits,
    logins: crate::LoginGate,
    /// Body bytes held in queues at the last count.
    held_bytes: AtomicU64,
    /// Records in the store's quarantine (see `recovery`).
    quarantined: AtomicU64,
    /// Connections closed because a write to them made no progress.
    slow_consumers: AtomicU64,
    /// Memory adapters hold for clients outside queues (see
    /// [`MemoryCharge`]): the memory alarm counts it.
    charged: Arc<AtomicU64>,
    /// Memory every queue's messages hold, kept by the queues as messages
    /// come and go (`QueueState::count_into`).
    queued: Arc<AtomicU64>,
    /// How queues page; its pressure flag is shared by every queue.
    paging: Paging,
    /// This node's name in its cluster.
    node: Option<String>,
    /// See [`BrokerConfig::node_local_names`].
    node_local_names: Vec<String>,
    /// The cluster's metadata group, once attached.
    meta: std::sync::OnceLock<Arc<dyn MetaLog>>,
    /// The cluster's commit pipeline, once attached.
    commits: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<replica::Pending>>,
    /// The way to other nodes' queues, once attached.
    forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
    /// The protocol adapter whose client ids the cluster's registry
    /// holds (MQTT), told when another node claims one.
    client_sessions: std::sync::OnceLock<Arc<dyn ClientSessions>>,
    /// This node's bindings changed since its routes were last brought
    /// up to date (`routes.rs`).
    routes_dirty: AtomicBool,
    /// A reset is applying the group's records: exchanges it makes do
    /// not bind routes each (the reset binds them all once after).
    routes_reset: AtomicBool,
    routes_keeper: std::sync::OnceLock<()>,
    /// Other nodes' routes bound in this node's topologies, by key.
    routes_applied: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Held by route commits of binds (shared) and by the keeper
    /// (alone): the keeper's view is never older than a commit it undoes.
    routes_gate: tokio::sync::RwLock<()>,
    /// An outbox per node messages were forwarded to.
    outboxes: Mutex<HashMap<String, tokio::sync::mpsc::Sender<forward::Outgoing>>>,
    /// Consumers across nodes, both ways.
    remotes: remote::Remotes,
    /// The quorum queues' groups, once attached.
    quorum: std::sync::OnceLock<Arc<dyn QuorumLog>>,
    /// The leader of each quorum queue's group as last heard, by (vhost,
    /// queue).
    quorum_leaders: Mutex<HashMap<(String, String), Option<String>>>,
    /// This incarnation, told to other nodes so that they can tell a
    /// restart (what an earlier life held goes back to its queues).
    life: u64,
}

/// Memory an adapter holds for a client outside any queue (an open AMQP
/// transaction, a publish whose body is still arriving), counted by the
/// memory alarm for as long as the charge lives; dropping it uncounts it.
#[derive(Debug)]
pub struct MemoryCharge {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl MemoryCharge {
    /// A charge of `bytes` on `counter` (one of the counters the memory
    /// alarm sums).
    pub(crate) fn on(counter: Arc<AtomicU64>, bytes: u64) -> MemoryCharge {
        counter.fetch_add(bytes, Ordering::Relaxed);
        MemoryCharge { counter, bytes }
    }

    /// Counts `more` bytes on this charge.
    pub fn grow(&mut self, more: u64) {
        self.counter.fetch_add(more, Ordering::Relaxed);
        self.bytes += more;
    }

    /// Bytes this charge counts.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Broker {
    /// Opens the broker on `store`, rebuilding vhosts, topology, queues,
    /// messages and reference counts from it. Must run inside a tokio runtime.
    pub async fn open(store: Store, config: BrokerConfig) -> Result<Arc<Broker>, CoreError> {
        let watermark = match config.memory_high_watermark {
            0 => default_watermark(),
            n => n,
        };
        let recovered = {
            let store = store.clone();
            let head = if store.is_persistent() {
                recovery::Heads {
                    messages: config.queue_head_messages,
                    bytes: config.queue_head_bytes,
                    total_bytes: watermark / 2,
                }
            } else {
                recovery::Heads::ALL
            };
            tokio::task::spawn_blocking(move || recovery::read(&store, head))
                .await
                .map_err(|e| CoreError::Corrupt(format!("recovery task failed: {e}")))??
        };
        let paging = Paging {
            enabled: store.is_persistent(),
            head_messages: config.queue_head_messages,
            head_bytes: config.queue_head_bytes,
            pressure: Arc::default(),
        };
        let broker = Arc::new_cyclic(|me| Broker {
            me: me.clone(),
            paging,
            store,
            vhosts: RwLock::new(crate::FastMap::default()),
            next_message: AtomicU64::new(1),
            next_queue: AtomicU64::new(1),
            // Start past every id an earlier run handed out: stored messages
            // keep their origin connection (MQTT No Local compares it).
            next_connection: AtomicU64::new(first_connection_id()),
            next_consumer: AtomicU64::new(1),
            refs: Mutex::new(crate::FastMap::default()),
            exclusive: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            users_online: parking_lot::Mutex::new(HashMap::new()),
            connections: connections::Connections::default(),
            policy: RwLock::new(None),
            retained: Retained::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
            alarm: tokio::sync::watch::Sender::new(false),
            memory_high_watermark: watermark,
            disk_free_limit: config.disk_free_limit,
            memory_alarm_on: AtomicBool::new(false),
            disk_alarm_on: AtomicBool::new(false),
            limits: config.limits.clone(),
            logins: crate::LoginGate::new(config.limits.max_pending_logins),
            held_bytes: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            charged: Arc::new(AtomicU64::new(0)),
            queued: Arc::new(AtomicU64::new(0)),
            node: config.node.clone(),
            node_local_names: config.node_local_names.clone(),
            meta: std::sync::OnceLock::new(),
            commits: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            client_sessions: std::sync::OnceLock::new(),
            routes_dirty: AtomicBool::new(false),
            routes_reset: AtomicBool::new(false),
            routes_keeper: std::sync::OnceLock::new(),
            routes_applied: Mutex::new(std::collections::HashSet::new()),
            routes_gate: tokio::sync::RwLock::new(()),
            outboxes: Mutex::new(HashMap::new()),
            remotes: remote::Remotes::default(),
            quorum: std::sync::OnceLock::new(),
            quorum_leaders: Mutex::new(HashMap::new()),
            life: new_life(),
        });
        for v in &config.vhosts {
            broker.add_vhost(v).info.write().configured = true;
        }
        recovery::apply(&broker, recovered)?;
        broker.spawn_alarm();
        Ok(broker)
    }

    /// The resource alarm (memory or disk): true while publishers must
    /// wait.
    pub fn memory_alarm(&self) -> tokio::sync::watch::Receiver<bool> {
        self.alarm.subscribe()
    }

    /// Memory held by queued messages (ready and unacked) at the last count.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Reads the held-memory counters and the free disk space now, and
    /// updates the alarm.
    pub fn check_memory(&self) {
        // Queued messages, retained messages, and what adapters hold for
        // clients outside queues: counters kept as messages flow, no scan.
        let total = self.queued.load(Ordering::Relaxed)
            + self.retained.held_bytes()
            + self.charged.load(Ordering::Relaxed);
        self.held_bytes.store(total, Ordering::Relaxed);
        // Past half the watermark, queues keep new persistent arrivals in
        // the store only.
        self.paging
            .pressure
            .store(total > self.memory_high_watermark / 2, Ordering::Relaxed);
        let memory = total > self.memory_high_watermark;
        if self.memory_alarm_on.swap(memory, Ordering::Relaxed) != memory {
            if memory {
                tracing::warn!(
                    held_bytes = total,
                    watermark = self.memory_high_watermark,
                    "memory alarm: blocking publishers"
                );
            } else {
                tracing::info!(held_bytes = total, "memory alarm cleared");
            }
        }
        let free = self.store.free_disk_bytes();
        let disk = self.disk_free_limit > 0 && free.is_some_and(|f| f < self.disk_free_limit);
        if self.disk_alarm_on.swap(disk, Ordering::Relaxed) != disk {
            if disk {
                tracing::warn!(
                    free_bytes = free,
                    limit = self.disk_free_limit,
                    "disk alarm: free disk space below disk_free_limit; blocking publishers"
                );
            } else {
                tracing::info!(free_bytes = free, "disk alarm cleared");
            }
        }
        let on = memory || disk;
        self.alarm.send_if_modified(|state| {
            if *state == on {
                return false;
            }
            *state = on;
            true
        });
    }

    /// Which alarms are on: (memory, disk).
    pub fn alarms(&self) -> (bool, bool) {
        (
            self.memory_alarm_on.load(Ordering::Relaxed),
            self.disk_alarm_on.load(Ordering::Relaxed),
        )
    }

    fn spawn_alarm(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let token = self.shutdown.child_token();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(ALARM_INTERVAL);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(b) = weak.upgrade() else { break };
                b.check_memory();
            }
        });
    }

    /// Adds a vhost (idempotent).
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        Arc::clone(
            self.vhosts
                .write()
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(VHost::new(name))),
        )
    }

    pub fn vhost(&self, name: &str) -> Result<Arc<VHost>, CoreError> {
        self.vhosts
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::NotAllowed(format!("no access to this vhost '{name}'")))
    }

    /// The count limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A charge of `bytes` on the memory the alarm counts (see
    /// [`MemoryCharge`]).
    pub fn charge_memory(&self, bytes: u64) -> MemoryCharge {
        let mut c = MemoryCharge {
            counter: Arc::clone(&self.charged),
            bytes: 0,
        };
        c.grow(bytes);
        c
    }

    /// A new queue: its state counted by the memory alarm, paging as
    /// configured.
    pub(crate) fn new_queue(
        &self,
        id: QueueId,
        vhost: &str,
        def: QueueDef,
        args: QueueArgs,
        now: Instant,
    ) -> Arc<Queue> {
        let mut st = QueueState::new(args, now);
        st.count_into(Arc::clone(&self.queued));
        st.set_paging(self.paging.clone());
        Arc::new(Queue {
            id,
            vhost: vhost.to_string(),
            def,
            state: Mutex::new(st),
            wake: Arc::new(Notify::new()),
            deleted: AtomicBool::new(false),
            broker: self.me.clone(),
            dead_letter_turn: Mutex::new(0),
            dead_letter_turn_moved: parking_lot::Condvar::new(),
            node: None,
            quorum: None,
        })
    }

    /// Reads paged entries back off the async workers, then hands them to
    /// the queue (see [`crate::queue::PageIn`]).
    pub(crate) fn start_page_in(&self, q: &Arc<Queue>, wanted: Vec<(ReadyKey, MessageId)>) {
        let Some(broker) = self.me.upgrade() else {
            return;
        };
        let q = Arc::clone(q);
        let job = move || {
            let (loaded, lost) = read_paged(&broker.store, &wanted);
            broker.finish_page_in(&q, loaded, &lost, true);
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn_blocking(job);
        } else {
            job();
        }
    }

    fn finish_page_in(
        &self,
        q: &Arc<Queue>,
        loaded: Vec<(ReadyKey, Arc<Message>)>,
        lost: &[(ReadyKey, MessageId)],
        background: bool,
    ) {
        if !lost.is_empty() {
            tracing::error!(
                queue = q.name(),
                vhost = q.vhost(),
                entries = lost.len(),
                "paged messages could not be read back: they leave the queue's memory, their records stay for recovery"
            );
        }
        let mut fx = Effects::default();
        {
            let mut st = q.state.lock();
            st.page_in(loaded, lost, background, Instant::now(), &mut fx);
        }
        self.apply_effects(q, fx);
    }

    /// Counts a connection closed because it stopped reading (its write
    /// passed [`Limits::write_timeout`] without progress).
    pub fn note_slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    /// Where adapters check logins (bounded waiting for slow checks).
    pub fn logins(&self) -> &crate::LoginGate {
        &self.logins
    }

    /// Refuses a routing or binding key with more words than allowed.
    pub fn check_topic_levels(&self, key: &str) -> Result<(), CoreError> {
        let n = crate::topic::word_count(key);
        if n > self.limits.max_topic_levels {
            return Err(CoreError::LimitReached(format!(
                "routing key has {n} words; the limit is {}",
                self.limits.max_topic_levels
            )));
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn retained_service(&self) -> &Retained {
        &self.retained
    }

    pub fn new_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh id for a consumer, or for a `get` holder (a channel).
    pub fn new_consumer_id(&self) -> ConsumerId {
        ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn new_message_id(&self) -> MessageId {
        MessageId(self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a client connection; dropping the guard unregisters it and
    /// deletes the exclusive queues it owned.
    pub fn open_connection(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        self.counters.connections[protocol_index(protocol)].fetch_add(1, Ordering::Relaxed);
        let id = self.new_connection_id();
        ConnectionGuard {
            broker: Arc::clone(self),
            id,
            protocol,
            user: None,
            entry: self.connections.register(id, protocol),
        }
    }

    pub fn stats(&self) -> BrokerStats {
        let mut queues = Vec::new();
        for vh in self.vhosts.read().values() {
            for q in vh.queues.read().values() {
                let st = q.state.lock();
                queues.push(QueueStats {
                    vhost: vh.name.clone(),
                    name: q.name().to_string(),
                    ready: st.ready_count(),
                    unacked: st.unacked_count(),
                    consumers: st.consumer_count(),
                });
            }
        }
        queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        let c = &self.counters;
        BrokerStats {
            queues,
            messages_in: c.messages_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            connections: [Protocol::Amqp, Protocol::Mqtt, Protocol::Stomp]
                .into_iter()
                .map(|p| (p, c.connections[protocol_index(p)].load(Ordering::Relaxed)))
                .collect(),
            store: self.store.stats(),
            held_bytes: self.held_bytes(),
            memory_alarm: self.memory_alarm_on.load(Ordering::Relaxed),
            disk_alarm: self.disk_alarm_on.load(Ordering::Relaxed),
            quarantined_records: self.quarantined.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// Stops queue tasks and closes the store after flushing everything
    /// queued for it. Idempotent. Connections should be closed first.
    pub async fn shutdown(&self) -> Result<(), CoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await?;
        Ok(())
    }

    pub fn is_shut_down(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Starts the task that expires messages and the queue itself on time
    /// and resumes deliveries when a consumer's window frees up.
    fn spawn_service(self: &Arc<Self>, q: Arc<Queue>) {
        let weak = Arc::downgrade(self);
        let token = self.shutdown.child_token();
        self.tasks.spawn(async move {
            loop {
                let deadline = {
                    let st = q.state.lock();
                    match (st.next_expiry(), st.expires_at()) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                };
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = q.wake.notified() => {}
                    _ = sleep_until_opt(deadline) => {}
                }
                if q.is_deleted() {
                    break;
                }
                let Some(broker) = weak.upgrade() else { break };
                broker.service_queue(&q);
            }
        });
    }

    fn service_queue(self: &Arc<Self>, q: &Arc<Queue>) {
        let now = Instant::now();
        let mut fx = crate::queue::Effects::default();
        let expired = {
            let mut st = q.state.lock();
            st.service(now, &mut fx);
            st.expires_at().is_some_and(|t| t <= now)
        };
        self.apply_effects(q, fx);
        if expired {
            tracing::debug!(
                queue = q.name(),
                vhost = q.vhost(),
                "queue expired (x-expires)"
            );
            self.remove_queue(q);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Gives, for a vhost and queue name, the arguments its policy adds
/// (`x-max-length` and so on), if one applies.
pub type PolicySource = Arc<dyn Fn(&str, &str) -> Option<FieldTable> + Send + Sync>;

impl Broker {
    /// Sets where queue policies come from and applies them to every
    /// queue now; call it again (or [`Broker::reapply_policies`]) when
    /// they change.
    pub fn set_policy_source(&self, source: PolicySource) {
        *self.policy.write() = Some(source);
        self.reapply_policies();
    }

    /// A queue's arguments in force: its own, then what its policy adds
    /// for the keys it does not set (a queue's own arguments win, as
    /// RabbitMQ's do for most keys).
    pub(crate) fn effective_arguments(&self, vhost: &str, def: &QueueDef) -> FieldTable {
        let mut args = def.arguments.clone();
        let source = self.policy.read().clone();
        if let Some(extra) = source.and_then(|f| f(vhost, &def.name)) {
            for (k, v) in extra.iter() {
                if args.get(k).is_none() {
                    args.insert(k, v.clone());
                }
            }
        }
        args
    }

    /// Puts every queue's arguments (its own and its policy's) in force.
    pub fn reapply_policies(&self) {
        let queues: Vec<Arc<Queue>> = self
            .vhosts
            .read()
            .values()
            .flat_map(|vh| vh.queues.read().values().cloned().collect::<Vec<_>>())
            .collect();
        for q in queues {
            let args = match QueueArgs::parse(&self.effective_arguments(&q.vhost, &q.def)) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(queue = q.name(), vhost = q.vhost(), error = %e, "policy not applied");
                    continue;
                }
            };
            let mut fx = Effects::default();
            q.state.lock().set_args(args, Instant::now(), &mut fx);
            self.apply_effects(&q, fx);
            q.wake.notify_one();
        }
    }
}

/// A registered client connection (see [`Broker::open_connection`]).
pub struct ConnectionGuard {
    broker: Arc<Broker>,
    id: ConnectionId,
    protocol: Protocol,
    /// The user this connection logged in as, once it has (counted in
    /// the broker's per-user totals until the guard drops).
    user: Option<String>,
    /// Its place in the registry of open connections.
    entry: Arc<connections::ConnectionEntry>,
}

impl ConnectionGuard {
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Counts this connection against `user`'s connections; refused past
    /// `Limits::max_connections_per_user` (the adapter answers with its
    /// protocol's refusal). A guard logs in once.
    pub fn login(&mut self, user: &str) -> Result<(), String> {
        debug_assert!(self.user.is_none(), "a connection logs in once");
        let cap = self.broker.limits.max_connections_per_user;
        let mut online = self.broker.users_online.lock();
        let n = online.get(user).copied().unwrap_or(0);
        if cap > 0 && n >= cap {
            return Err(format!(
                "user '{user}' has {n} connections open, the most allowed"
            ));
        }
        online.insert(user.to_string(), n + 1);
        self.user = Some(user.to_string());
        self.describe(|d| d.user = Some(user.to_string()));
        Ok(())
    }

    /// Deletes the connection's exclusive queues now, before the guard is
    /// dropped: a protocol that confirms a close to its client does this
    /// first, so the client never sees its exclusive queues outlive it.
    pub fn delete_exclusive_queues(&self) {
        self.broker.connection_closed(self.id);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.broker.counters.connections[protocol_index(self.protocol)]
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = self.user.take() {
            let mut online = self.broker.users_online.lock();
            if let Some(n) = online.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    online.remove(&user);
                }
            }
        }
        self.broker.connection_closed(self.id);
        self.broker.connections.remove(self.id);
    }
}

/// The first connection id of this run: the start time in microseconds,
/// so ids never repeat across restarts (one id per microsecond of uptime
/// would be needed to catch up with the next run's start).
fn first_connection_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1)
}

/// The first message and queue id of this run: sixteen per microsecond
/// since the Unix epoch, so ids never repeat across restarts, a crash
/// included, without a store write per id: an earlier run would have had
/// to hand out sixteen ids per microsecond over its whole uptime to reach
/// this run's first one (u64 lasts 36,000 years at that rate). Recovery
/// also starts past every id still stored. A clock set back by more than
/// the earlier run's uptime defeats it; the stored ids then still do not
/// repeat.
pub(crate) fn first_id_of_run() -> u64 {
    first_connection_id().saturating_mul(16)
}

/// This run's incarnation: its start in microseconds mixed with the
/// process id, so that two runs (even started in one microsecond by two
/// processes sharing nothing) tell apart.
fn new_life() -> u64 {
    first_connection_id() ^ (u64::from(std::process::id()) << 44)
}

#[cfg(test)]
mod dead_letter_turn_tests {
    use super::*;

    /// Two batches of one queue's dead letters on two threads: the later
    /// batch (orders 2 and 3) waits for the earlier (0 and 1), whichever
    /// thread gets there first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_later_batch_of_dead_letters_waits_for_the_earlier() {
        let b = Broker::open(junction_store::Store::in_memory(), BrokerConfig::default())
            .await
            .expect("broker");
        b.declare_queue("/", QueueDef::new("work"), false)
            .await
            .expect("declare");
        let q = b.queue_for("/", "work", None).expect("queue");
        let copied = Arc::new(Mutex::new(Vec::new()));
        let (ready, waiting) = std::sync::mpsc::channel();
        let later = {
            let (q, copied) = (Arc::clone(&q), Arc::clone(&copied));
            std::thread::spawn(move || {
                ready.send(()).expect("signal");
                q.await_dead_letter_turn(2, std::time::Duration::from_secs(30));
                copied.lock().extend([2, 3]);
                q.end_dead_letter_turn(4);
            })
        };
        // The later batch is about to wait; give it time to copy out of
        // turn if the turn did not hold it.
        waiting.recv().expect("later batch started");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(copied.lock().is_empty(), "the later batch did not wait");
        q.await_dead_letter_turn(0, std::time::Duration::from_secs(30));
        copied.lock().extend([0, 1]);
        q.end_dead_letter_turn(2);
        later.join().expect("later batch");
        assert_eq!(*copied.lock(), vec![0, 1, 2, 3]);
        // A batch whose predecessor never comes goes after the patience.
        let started = std::time::Instant::now();
        q.await_dead_letter_turn(9, std::time::Duration::from_millis(30));
        assert!(started.elapsed() >= std::time::Duration::from_millis(30));
        q.end_dead_letter_turn(10);
        assert_eq!(*q.dead_letter_turn.lock(), 10);
    }
}
