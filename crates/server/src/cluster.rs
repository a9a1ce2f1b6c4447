//! The cluster in the server: this node's member of the metadata group,
//! started from `[cluster]`, and what the management API shows of it
//! (docs/cluster.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use junction_cluster::{
    Change, Command, MemberChange, MetaNode, NodeId, Timing, WriteError, node_id,
};
use junction_core::{
    AppliedFuture, Broker, CallFuture, CoreError, Forgotten, ForwardAnswer, ForwardFuture,
    Forwarded, Forwarder, MetaFuture, MetaIndexFuture, MetaLog, MetaOp, PeerCall, PeerReply,
    QuorumLog,
};
use junction_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::config::ClusterConfig;
use crate::quorum::Quorums;
use crate::run::ServerError;

/// Shortest shared secret accepted.
const MIN_SECRET_BYTES: usize = 16;
/// Longest wait for another node to take forwarded messages.
const FORWARD_WITHIN: Duration = Duration::from_secs(30);

/// A broker's request to another node's broker over the peer link.
#[derive(Serialize, Deserialize)]
enum PeerRequest {
    /// Messages for queues of the receiving node, in order: each its
    /// vhost, its queues there, and the message in the store's encoding.
    Forward(Vec<(String, Vec<String>, Vec<u8>)>),
    /// A call about the receiving node's queues (consumers across nodes).
    Call(PeerCall),
    /// Whether the receiving node has a link to this node now (a leave
    /// asks every member before it forgets a node).
    Linked(NodeId),
}

/// The answer to a [`PeerRequest`].
#[derive(Serialize, Deserialize)]
enum PeerAnswer {
    /// Per forwarded message, in order.
    Forwarded(Vec<ForwardAnswer>),
    Called(PeerReply),
    /// To [`PeerRequest::Linked`].
    Linked(bool),
}

/// The server's own records in the metadata group, beside the core's
/// topology (whose keys start with a lower-case tag byte): whole
/// documents, each put in force on every node as it is committed.
pub const USERS_KEY: &[u8] = b"\xF5users";
pub const POLICIES_KEY: &[u8] = b"\xF5policies";
/// The first byte of a server document's key.
const DOCUMENT_TAG: u8 = 0xF5;
/// A member's record: this, then its name; the value is its peer
/// address. Each node puts its own when it starts, and `junction cluster
/// join` the joining node's, so that every node knows every name.
const NODE_PREFIX: &[u8] = b"\xF5node\x00";

/// A node that left (`junction cluster leave`): this, then its name;
/// every node refuses its links while the record stands.
const GONE_PREFIX: &[u8] = b"\xF5gone\x00";

/// The key of node `name`'s member record.
fn node_key(name: &str) -> Vec<u8> {
    [NODE_PREFIX, name.as_bytes()].concat()
}

/// The key of node `name`'s record of having left.
fn gone_key(name: &str) -> Vec<u8> {
    [GONE_PREFIX, name.as_bytes()].concat()
}

/// Every member's name by id, as this node knows them: the configured
/// ones and those joined since. Shared by the cluster and its queues.
pub type Names = Arc<parking_lot::RwLock<BTreeMap<NodeId, String>>>;

/// Longest wait of a join for the new node to catch up and become a
/// voter, and of a leave.
const JOIN_WITHIN: Duration = Duration::from_secs(60);
const LEAVE_WITHIN: Duration = Duration::from_secs(30);
/// Longest wait for a member's answer to whether it is linked to a node.
const LINKED_WITHIN: Duration = Duration::from_secs(2);

/// Commits a new version of one server document to the metadata group;
/// resolves once this node applied it.
pub type Share = Arc<dyn Fn(Vec<u8>) -> ShareFuture + Send + Sync>;
/// What [`Share`] returns.
pub type ShareFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CoreError>> + Send>>;

/// Puts a committed server document (its key, its value) in force here.
pub type DocumentSink = Arc<dyn Fn(&[u8], &[u8]) + Send + Sync>;

/// Server documents committed before the server could take them, and
/// where they go once it can.
#[derive(Default)]
struct Documents {
    sink: Option<DocumentSink>,
    waiting: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Longest wait for the member to stop at shutdown.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);

/// This node's place in its cluster.
pub struct Cluster {
    /// The metadata group's member on this node.
    node: Arc<MetaNode>,
    /// The quorum queues' groups on this node.
    quorums: Arc<Quorums>,
    /// This node's id.
    me: NodeId,
    /// Every member's name, by id.
    names: Names,
    /// This node's peer listener.
    addr: SocketAddr,
    /// The one shutdown every caller waits for.
    stopped: OnceCell<()>,
    /// Users and policies as the group has them.
    documents: parking_lot::Mutex<Documents>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.names.read().get(&self.me))
            .field("addr", &self.addr)
            .finish()
    }
}

/// The name a member has in the management API.
pub fn display_name(name: &str) -> String {
    format!("junction@{name}")
}

impl Cluster {
    /// Moves quorum queues' leaders until every reachable node leads
    /// about as many ([`Quorums::rebalance`]): (queues, moves planned,
    /// moves made).
    pub async fn rebalance_queues(&self) -> (usize, usize, usize) {
        self.quorums.rebalance().await
    }

    /// Start this node's member of the metadata group: read the secret,
    /// bind the peer listener at this node's address, open the group in
    /// `store`.
    /// With `tls`, every peer link is TLS with certificates both ways.
    pub async fn start(
        config: &ClusterConfig,
        tls: Option<junction_cluster::PeerTls>,
        store: Store,
    ) -> Result<Arc<Cluster>, ServerError> {
        let fail = |reason: String| ServerError::Cluster(reason);
        let members = config.members().map_err(fail)?;
        let secret = read_secret(config).map_err(fail)?;
        let me = node_id(&config.node_name);
        let addr = members
            .iter()
            .find(|m| m.name == config.node_name)
            .map(|m| m.addr)
            .ok_or_else(|| fail(format!("{} is not in [cluster] nodes", config.node_name)))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "cluster peers",
                addr,
                source,
            })?;
        let ids: BTreeMap<NodeId, SocketAddr> =
            members.iter().map(|m| (node_id(&m.name), m.addr)).collect();
        let names: Names = Arc::new(parking_lot::RwLock::new(
            members
                .iter()
                .map(|m| (node_id(&m.name), m.name.clone()))
                .collect(),
        ));
        let timing = Timing {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            election_min: Duration::from_millis(config.election_timeout_min_ms),
            election_max: Duration::from_millis(config.election_timeout_max_ms),
            ..Timing::default()
        };
        let node = MetaNode::start(
            me,
            listener,
            &ids,
            secret.into(),
            tls,
            store,
            &timing,
            config.join,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let node = Arc::new(node);
        let quorums = Quorums::new(Arc::downgrade(&node), ids, Arc::clone(&names));
        tracing::info!(
            node = %config.node_name,
            %addr,
            members = members.len(),
            "cluster member started"
        );
        Ok(Arc::new(Cluster {
            node,
            quorums,
            me,
            names,
            addr,
            stopped: OnceCell::new(),
            documents: parking_lot::Mutex::default(),
        }))
    }

    /// Make `broker` this node of the cluster: its durable topology
    /// changes are committed to the metadata group, and every committed
    /// record (those already applied first, as one reset) is applied to
    /// it.
    pub fn attach(self: &Arc<Self>, broker: &Arc<Broker>) {
        self.register_name();
        broker.attach_meta_log(Arc::clone(self) as Arc<dyn MetaLog>);
        broker.attach_forwarder(Arc::clone(self) as Arc<dyn Forwarder>);
        self.quorums.serve(broker);
        broker.attach_quorum(Arc::clone(&self.quorums) as Arc<dyn QuorumLog>);
        let server = Arc::downgrade(broker);
        let names = Arc::clone(&self.names);
        let cluster = Arc::downgrade(self);
        self.node.peers().serve(Arc::new(move |from, request| {
            let broker = server.upgrade();
            let cluster = cluster.clone();
            let name = names.read().get(&from).cloned();
            Box::pin(async move {
                let Some(broker) = broker else {
                    return Err("the broker is stopping".to_owned());
                };
                let name = name.unwrap_or_else(|| format!("{from:016x}"));
                let linked = |id| {
                    cluster
                        .upgrade()
                        .is_some_and(|c| c.node.peers().is_linked(id))
                };
                answer_peer(&broker, from, &name, &request, &linked).await
            })
        }));
        let broker = Arc::downgrade(broker);
        let me = Arc::downgrade(self);
        self.node.state().observe(Arc::new(move |change: &Change| {
            let (Some(broker), Some(me)) = (broker.upgrade(), me.upgrade()) else {
                return;
            };
            let document = |key: &[u8]| key.first() == Some(&DOCUMENT_TAG);
            match change {
                Change::Put { key, .. } if key.starts_with(NODE_PREFIX) => me.learn_name(key),
                // A node's name is kept after it leaves (its id is not
                // reused by another name).
                Change::Delete { key } if key.starts_with(NODE_PREFIX) => {}
                Change::Put { key, .. } if key.starts_with(GONE_PREFIX) => me.gone(key, true),
                Change::Delete { key } if key.starts_with(GONE_PREFIX) => me.gone(key, false),
                Change::Put { key, value } if document(key) => me.document(key, value),
                // Documents are replaced, never removed.
                Change::Delete { key } if document(key) => {}
                Change::Put { key, value } => broker.apply_replicated(key, Some(value)),
                Change::Delete { key } => broker.apply_replicated(key, None),
                Change::Reset(all) => {
                    // A document the group lacks (never edited in the
                    // cluster) leaves this node's own in force.
                    let (documents, topology): (Vec<_>, Vec<_>) =
                        all.iter().cloned().partition(|(k, _)| document(k));
                    let mut gone = std::collections::HashSet::new();
                    for (key, value) in &documents {
                        if key.starts_with(NODE_PREFIX) {
                            me.learn_name(key);
                        } else if let Some(name) = key.strip_prefix(GONE_PREFIX) {
                            gone.insert(node_id(&String::from_utf8_lossy(name)));
                        } else {
                            me.document(key, value);
                        }
                    }
                    // Exactly those (a node that left and joined again
                    // since is allowed).
                    me.node.peers().set_forbidden(&gone);
                    broker.reset_replicated(&topology);
                }
            }
        }));
    }

    /// Makes sure the group has this node's name record (every node
    /// learns every member's name from them, a joined node included):
    /// tried until it is committed, in the background.
    fn register_name(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let Some(cluster) = me.upgrade() else { return };
                if cluster.stopped.initialized() {
                    return;
                }
                let Some(name) = cluster.names.read().get(&cluster.me).cloned() else {
                    return;
                };
                let key = node_key(&name);
                let value = cluster.addr.to_string().into_bytes();
                if cluster.node.state().get(&key).as_ref() == Some(&value) {
                    return;
                }
                match cluster.commit(vec![MetaOp::Put { key, value }]).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "this node's name not in the cluster yet")
                    }
                }
                drop(cluster);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// A left node's record (`left`), or its removal: its links are
    /// refused while it stands.
    fn gone(&self, key: &[u8], left: bool) {
        let Some(name) = key
            .strip_prefix(GONE_PREFIX)
            .and_then(|n| std::str::from_utf8(n).ok())
        else {
            return;
        };
        let peers = self.node.peers();
        if left {
            peers.forbid(node_id(name));
        } else {
            peers.allow(node_id(name));
        }
    }

    /// A joined node's record: its name, by its id.
    fn learn_name(&self, key: &[u8]) {
        if let Some(name) = key
            .strip_prefix(NODE_PREFIX)
            .and_then(|n| std::str::from_utf8(n).ok())
        {
            self.names.write().insert(node_id(name), name.to_owned());
        }
    }

    /// Adds node `name`, whose peer listener is `addr`, to the cluster
    /// (`junction cluster join`): its name is committed, then it is added
    /// to the metadata group as a learner and, once it has every entry,
    /// as a voter; every quorum queue's leader then adds it to its group.
    /// The node must be running with `[cluster] join`. Adding a voter
    /// again at the same address changes nothing.
    pub async fn join(&self, name: &str, addr: SocketAddr) -> Result<(), String> {
        if !crate::config::valid_node_name(name) {
            return Err(format!(
                "{name:?} is not a node name (letters, digits, '-', '_' and '.')"
            ));
        }
        let id = node_id(name);
        if let Some(other) = self.names.read().get(&id).filter(|n| *n != name) {
            return Err(format!("{name:?} has the same id as member {other:?}"));
        }
        let members = self.node.members().borrow().clone();
        if let Some(now) = members.voters.get(&id).or(members.learners.get(&id))
            && *now != addr
        {
            return Err(format!(
                "{name} is a member at {now}; to move it, stop it, leave, and join again"
            ));
        }
        self.commit(vec![
            // Taken back if it left before (with a cleared data directory).
            MetaOp::Delete {
                key: gone_key(name),
            },
            MetaOp::Put {
                key: node_key(name),
                value: addr.to_string().into_bytes(),
            },
        ])
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(node = name, %addr, "adding a node to the cluster");
        self.node
            .change_members(MemberChange::Add { id, addr }, JOIN_WITHIN)
            .await
    }

    /// Removes node `name` from the cluster for good (`junction cluster
    /// leave`, as RabbitMQ's `forget_cluster_node`): it must be stopped
    /// (not linked to this node). It leaves the metadata group, every
    /// quorum queue's leader takes it out of its group, and what lived
    /// on it only is removed ([`Broker::forget_node`]).
    pub async fn leave(&self, broker: &Broker, name: &str) -> Result<Forgotten, String> {
        let id = node_id(name);
        if id == self.me {
            return Err(format!(
                "{name} is this node: ask another member to remove it once it is stopped"
            ));
        }
        let members = self.node.members().borrow().clone();
        let member = members.voters.contains_key(&id) || members.learners.contains_key(&id);
        // A leave whose clean-up did not finish is run again: the node is
        // out of the group, its member record still stands.
        if !member && self.node.state().get(&node_key(name)).is_none() {
            return Err(format!("{name} is not a member of the cluster"));
        }
        if let Some(why) = self.linked_anywhere(id, &members).await {
            return Err(format!("{name} may be running ({why}): stop it first"));
        }
        tracing::info!(node = name, "removing a node from the cluster");
        // Refused by every node first, so that it cannot link back in
        // between.
        self.commit(vec![MetaOp::Put {
            key: gone_key(name),
            value: Vec::new(),
        }])
        .await
        .map_err(|e| e.to_string())?;
        if member {
            self.node
                .change_members(MemberChange::Remove { id }, LEAVE_WITHIN)
                .await
                .map_err(|e| {
                    format!(
                        "{name} is refused by every node but still a member ({e}): run leave again"
                    )
                })?;
        }
        let unfinished = |e: String| {
            format!("{name} left, but its clean-up did not finish ({e}): run leave again")
        };
        let forgotten = broker
            .forget_node(name)
            .await
            .map_err(|e| unfinished(e.to_string()))?;
        self.commit(vec![MetaOp::Delete {
            key: node_key(name),
        }])
        .await
        .map_err(|e| unfinished(e.to_string()))?;
        Ok(forgotten)
    }

    /// Why node `id` may still be running: a member linked to it now
    /// (this node, or another asked within [`LINKED_WITHIN`]), or one
    /// this node is linked to that did not answer clearly. None when every
    /// member this node reaches says it is not linked to it (a member
    /// this node has no link to is not asked).
    async fn linked_anywhere(
        &self,
        id: NodeId,
        members: &junction_cluster::Members,
    ) -> Option<String> {
        let peers = self.node.peers();
        if peers.is_linked(id) {
            return Some(format!("linked to {}", self.name_of(self.me)));
        }
        let others: Vec<NodeId> = members
            .voters
            .keys()
            .chain(members.learners.keys())
            .copied()
            .filter(|m| *m != self.me && *m != id && peers.is_linked(*m))
            .collect();
        let asks = others.into_iter().map(|m| async move {
            let name = self.name_of(m);
            match self
                .ask_peer(m, &name, &PeerRequest::Linked(id), LINKED_WITHIN)
                .await
            {
                Ok(PeerAnswer::Linked(false)) => None,
                Ok(PeerAnswer::Linked(true)) => Some(format!("linked to {name}")),
                Ok(_) | Err(_) => Some(format!("{name} did not say whether it is linked to it")),
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
    }

    /// A committed server document: to its sink, or kept until there is
    /// one (the latest version of each).
    fn document(&self, key: &[u8], value: &[u8]) {
        let mut documents = self.documents.lock();
        match &documents.sink {
            Some(sink) => sink(key, value),
            None => {
                documents.waiting.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    /// Puts committed server documents in force through `sink`, those
    /// committed so far first.
    pub fn serve_documents(&self, sink: DocumentSink) {
        let mut documents = self.documents.lock();
        for (key, value) in std::mem::take(&mut documents.waiting) {
            sink(&key, &value);
        }
        documents.sink = Some(sink);
    }

    /// Commits new versions of the document `key` (a whole document each).
    pub fn share(self: &Arc<Self>, key: &'static [u8]) -> Share {
        let me = Arc::downgrade(self);
        Arc::new(move |value: Vec<u8>| {
            let me = me.upgrade();
            Box::pin(async move {
                let Some(me) = me else {
                    return Err(CoreError::ShuttingDown);
                };
                me.commit(vec![MetaOp::Put {
                    key: key.to_vec(),
                    value,
                }])
                .await
            })
        })
    }

    /// Sends `request` to the broker of node `target` (named `node`) and
    /// reads its answer, within `within`.
    async fn ask_peer(
        &self,
        target: NodeId,
        node: &str,
        request: &PeerRequest,
        within: Duration,
    ) -> Result<PeerAnswer, String> {
        let request = postcard::to_stdvec(request).map_err(|e| e.to_string())?;
        let answer = self
            .node
            .peers()
            .ask(target, request, within)
            .await
            .map_err(|e| e.to_string())?;
        postcard::from_bytes::<PeerAnswer>(&answer)
            .map_err(|e| format!("an answer from node {node} could not be read: {e}"))
    }

    /// This node's name in the management API.
    pub fn node_name(&self) -> String {
        display_name(self.names.read().get(&self.me).map_or("", String::as_str))
    }

    /// The name of member `id` in the management API (its id in hex when
    /// this node does not know its name).
    fn name_of(&self, id: NodeId) -> String {
        match self.names.read().get(&id) {
            Some(name) => display_name(name),
            None => format!("{id:016x}"),
        }
    }

    /// The members of quorum queue `name`'s group, in the management API's
    /// names (the cluster's voters until this node's member of the group
    /// has heard from its leader).
    pub fn queue_members(&self, vhost: &str, name: &str) -> Vec<String> {
        let mut ids: Vec<NodeId> = self
            .quorums
            .group(vhost, name)
            .map(|g| g.voters().into_iter().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            ids = self
                .node
                .members()
                .borrow()
                .voters
                .keys()
                .copied()
                .collect();
        }
        ids.into_iter().map(|id| self.name_of(id)).collect()
    }

    /// This node's peer listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metadata group's member on this node.
    pub fn node(&self) -> &MetaNode {
        &self.node
    }

    /// The quorum queues' groups on this node.
    pub fn quorums(&self) -> &Arc<Quorums> {
        &self.quorums
    }

    /// `/api/nodes`: `local` (this node's own entry) and every other
    /// member, each with its view of the metadata group.
    pub fn nodes_json(&self, mut local: Value) -> Vec<Value> {
        let status = self.node.status();
        let linked = self.node.peers().connected();
        let leader = status.leader.map(|id| self.name_of(id));
        let members = self.node.members().borrow().clone();
        let ids: Vec<NodeId> = if members.voters.is_empty() {
            // Not a member yet (joining): the nodes it was told of.
            self.names.read().keys().copied().collect()
        } else {
            let mut ids: Vec<NodeId> = members
                .voters
                .keys()
                .chain(members.learners.keys())
                .copied()
                .collect();
            if !ids.contains(&self.me) {
                ids.push(self.me);
            }
            ids.sort_unstable();
            ids
        };
        let mut out = Vec::new();
        for id in &ids {
            let name = self.name_of(*id);
            let member = status.members.iter().find(|m| m.id == *id);
            let raft = json!({
                "id": format!("{id:016x}"),
                "voter": member.is_some(),
                "learner": members.learners.contains_key(id),
                "leader": status.leader == Some(*id),
                // Entries behind the leader's log: known on the leader only.
                "lag": member.and_then(|m| m.lag),
            });
            if *id == self.me {
                local["name"] = json!(name);
                local["cluster"] = json!({
                    "peer_address": self.addr.to_string(),
                    "role": status.role,
                    "leader": leader,
                    "term": status.term,
                    "last_log_index": status.last_log_index,
                    "applied_index": status.applied_index,
                });
                local["raft"] = raft;
                out.push(local.clone());
            } else {
                out.push(json!({
                    "name": name,
                    "type": "disc",
                    // Linked to this node now (a member this node cannot
                    // reach shows false, whatever its state; links notice a
                    // silent peer within seconds).
                    "running": linked.contains(id),
                    "raft": raft,
                }));
            }
        }
        out
    }

    /// Stop the member and its links. Idempotent: a second caller waits
    /// for the first's shutdown to end.
    pub async fn shutdown(&self) {
        self.stopped
            .get_or_init(|| async {
                let stop = async {
                    self.quorums.shutdown().await;
                    self.node.shutdown().await;
                };
                if tokio::time::timeout(SHUTDOWN_WITHIN, stop).await.is_err() {
                    tracing::warn!("the cluster member did not stop within {SHUTDOWN_WITHIN:?}");
                }
            })
            .await;
    }
}

impl MetaLog for Cluster {
    fn commit(&self, ops: Vec<MetaOp>) -> MetaFuture<'_> {
        Box::pin(async move { self.commit_at(ops).await.map(|_| ()) })
    }

    fn commit_at(&self, ops: Vec<MetaOp>) -> MetaIndexFuture<'_> {
        Box::pin(async move {
            let command = Command::Batch(
                ops.into_iter()
                    .map(|op| match op {
                        MetaOp::Put { key, value } => Command::Put { key, value },
                        MetaOp::PutIfAbsent { key, value } => Command::PutIfAbsent { key, value },
                        MetaOp::Delete { key } => Command::Delete { key },
                        MetaOp::DeleteIf { key, value } => Command::DeleteIf { key, value },
                    })
                    .collect(),
            );
            match self.node.write(command).await {
                Ok(answer) => Ok(answer.index),
                Err(WriteError::Unavailable(within)) => Err(CoreError::Unavailable(format!(
                    "the cluster did not commit the change within {within:?} (no majority of its nodes is reachable from this one)"
                ))),
                Err(WriteError::TooLarge(bytes)) => Err(CoreError::PreconditionFailed(format!(
                    "a topology change of {bytes} bytes is over the cluster's limit"
                ))),
                Err(WriteError::Raft(e)) => Err(CoreError::Unavailable(format!("cluster: {e}"))),
            }
        })
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.node.state().get(key)
    }

    fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.node.state().scan(prefix)
    }

    fn quietly(&self, f: &mut dyn FnMut()) {
        self.node.state().while_quiet(f);
    }

    fn wait_applied(&self, index: u64, within: Duration) -> AppliedFuture<'_> {
        Box::pin(self.node.state().wait_applied(index, within))
    }
}

impl Forwarder for Cluster {
    fn forward(&self, node: &str, batch: Vec<Forwarded>) -> ForwardFuture<'_> {
        let target = node_id(node);
        let node = node.to_owned();
        Box::pin(async move {
            let items = batch
                .into_iter()
                .map(|f| {
                    let message = junction_core::codec::encode_message(&f.message).to_vec();
                    (f.vhost, f.queues, message)
                })
                .collect();
            match self
                .ask_peer(target, &node, &PeerRequest::Forward(items), FORWARD_WITHIN)
                .await?
            {
                PeerAnswer::Forwarded(answers) => Ok(answers),
                PeerAnswer::Called(_) | PeerAnswer::Linked(_) => {
                    Err(format!("node {node} answered out of turn"))
                }
            }
        })
    }

    fn call(&self, node: &str, call: PeerCall, within: Duration) -> CallFuture<'_> {
        let target = node_id(node);
        let node = node.to_owned();
        Box::pin(async move {
            match self
                .ask_peer(target, &node, &PeerRequest::Call(call), within)
                .await?
            {
                PeerAnswer::Called(reply) => Ok(reply),
                PeerAnswer::Forwarded(_) | PeerAnswer::Linked(_) => {
                    Err(format!("node {node} answered out of turn"))
                }
            }
        })
    }

    fn linked(&self, node: &str) -> bool {
        self.node.peers().is_linked(node_id(node))
    }
}

/// This node's broker answering a peer's request.
async fn answer_peer(
    broker: &Arc<Broker>,
    from: NodeId,
    name: &str,
    request: &[u8],
    linked: &(dyn Fn(NodeId) -> bool + Sync),
) -> Result<Vec<u8>, String> {
    let request: PeerRequest = postcard::from_bytes(request)
        .map_err(|e| format!("a request from node {from:016x} could not be read: {e}"))?;
    let answer = match request {
        PeerRequest::Forward(items) => {
            // Messages that cannot be read are answered as such, in place.
            let mut answers: Vec<Option<ForwardAnswer>> = Vec::with_capacity(items.len());
            let mut readable = Vec::with_capacity(items.len());
            for (vhost, queues, bytes) in items {
                match junction_core::codec::decode_message(&bytes) {
                    Ok(message) => {
                        answers.push(None);
                        readable.push((vhost, queues, message));
                    }
                    Err(e) => answers.push(Some(Err(format!("unreadable message: {e}")))),
                }
            }
            let mut taken = broker.accept_forwarded(readable).await.into_iter();
            let answers = answers
                .into_iter()
                .map(|a| {
                    a.or_else(|| taken.next())
                        .unwrap_or_else(|| Err("no answer".to_owned()))
                })
                .collect();
            PeerAnswer::Forwarded(answers)
        }
        PeerRequest::Call(call) => PeerAnswer::Called(broker.answer_call(name, call).await),
        PeerRequest::Linked(id) => PeerAnswer::Linked(linked(id)),
    };
    postcard::to_stdvec(&answer).map_err(|e| e.to_string())
}

/// The shared secret: the file's bytes without a trailing newline.
fn read_secret(config: &ClusterConfig) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = &config.secret_file;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the cluster secret file can be read by other users (chmod 600 it)"
        );
    }
    let mut secret = std::fs::read(path)
        .map_err(|e| format!("cannot read [cluster] secret_file {}: {e}", path.display()))?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "[cluster] secret_file {} holds {} bytes; at least {MIN_SECRET_BYTES} are needed",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret)
}

/// Stops a started cluster member if the server's start fails after it
/// (nothing else would: its links' tasks keep it alive).
pub struct StartGuard(Option<Arc<Cluster>>);

impl StartGuard {
    /// Guard `cluster` until [`StartGuard::disarm`].
    pub fn new(cluster: Option<Arc<Cluster>>) -> Self {
        Self(cluster)
    }

    /// The start succeeded: the server stops the cluster from now on.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(cluster) = self.0.take() {
            tokio::spawn(async move { cluster.shutdown().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use junction_core::{BrokerConfig, Message, QueueDef};
    use junction_store::Store;

    use super::*;

    #[tokio::test]
    async fn a_peer_request_that_cannot_be_read_is_answered_so_and_the_rest_are_taken() {
        let broker = Broker::open(Store::in_memory(), BrokerConfig::default())
            .await
            .unwrap();
        broker
            .declare_queue("/", QueueDef::new("q"), false)
            .await
            .unwrap();

        // Not a request at all.
        let refused = answer_peer(&broker, 7, "n7", b"\xff\xff not postcard", &|_| false).await;
        assert!(refused.unwrap_err().contains("could not be read"));

        // Three messages: one for q, one that is not a message, one for a
        // queue this node does not have.
        let good = Message::new("", "q", bytes::Bytes::from_static(b"hello")).persistent();
        let good = junction_core::codec::encode_message(&good).to_vec();
        let request = PeerRequest::Forward(vec![
            ("/".to_owned(), vec!["q".to_owned()], good.clone()),
            ("/".to_owned(), vec!["q".to_owned()], b"garbage".to_vec()),
            ("/".to_owned(), vec!["gone".to_owned()], good),
        ]);
        let answer = answer_peer(
            &broker,
            7,
            "n7",
            &postcard::to_stdvec(&request).unwrap(),
            &|_| false,
        )
        .await
        .unwrap();
        let Ok(PeerAnswer::Forwarded(answers)) = postcard::from_bytes(&answer) else {
            panic!("not a forward answer");
        };
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0], Ok((1, 0)));
        assert!(
            answers[1]
                .as_ref()
                .unwrap_err()
                .contains("unreadable message")
        );
        assert_eq!(answers[2], Ok((0, 1)));
        let q = broker.queue_for("/", "q", None).unwrap();
        assert_eq!(q.peek_bodies(), vec![bytes::Bytes::from_static(b"hello")]);
    }
}
