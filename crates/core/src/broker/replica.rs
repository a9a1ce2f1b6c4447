//! The broker in a cluster (docs/cluster.md "Topology"). The durable
//! topology (vhosts made at run time, durable exchanges, durable queues
//! with the node each lives on, and the bindings between durable things)
//! is the record map of the cluster's metadata group, in the keys and
//! record encodings of the `meta` family ([`super::records`]).
//!
//! A change is checked and made here first, as on a single node; its
//! `meta` records are then committed to the group ([`MetaLog::commit`]).
//! Every node, this one included, applies each committed record to its
//! topology and its `meta` family ([`Broker::apply_replicated`]), in log
//! order. A commit that fails (no majority within the write timeout) is
//! undone here from the group's own records, and the client gets the
//! error. Transient exchanges and queues, exclusive queues and the
//! bindings that involve them stay on the node that made them.
//!
//! A queue lives on one node, the one that declared it (its record names
//! that node); every other node knows it as a [`RemoteQueue`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use junction_store::{Batch, Cf, Op};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::records::{self, TAG_BINDING, TAG_EXCHANGE, TAG_QUEUE, TAG_VHOST};
use super::{Broker, VHost};
use crate::error::CoreError;
use crate::queue::args::{QueueArgs, QueueDef};

/// Records as the group holds them: a key and its value (None: absent).
pub type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// One write to the cluster's record map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOp {
    /// Set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`.
    Delete { key: Vec<u8> },
    /// Set `key` to `value` unless it holds a value (a first
    /// declaration wins).
    PutIfAbsent { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key` if it holds exactly `value` (a claim let go by its
    /// holder only).
    DeleteIf { key: Vec<u8>, value: Vec<u8> },
}

impl MetaOp {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            MetaOp::Put { key, .. }
            | MetaOp::Delete { key }
            | MetaOp::PutIfAbsent { key, .. }
            | MetaOp::DeleteIf { key, .. } => key,
        }
    }
}

/// What [`MetaLog::commit`] returns.
pub type MetaFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CoreError>> + Send + 'a>>;
/// What [`MetaLog::commit_at`] returns: the entry's log index.
pub type MetaIndexFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, CoreError>> + Send + 'a>>;
/// What [`MetaLog::wait_applied`] returns.
pub type AppliedFuture<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// The cluster's metadata group, as the broker uses it (the server wires
/// it to its member of the group).
pub trait MetaLog: Send + Sync {
    /// Commit `ops` as one log entry, and return once it is applied on
    /// this node ([`Broker::apply_replicated`] has run for each op).
    /// [`CoreError::Unavailable`] when no majority took it in time: it may
    /// still be applied later.
    fn commit(&self, ops: Vec<MetaOp>) -> MetaFuture<'_>;
    /// The record `key` as of the last entry applied here.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Every record under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Run `f` while no committed change is being applied here, so that
    /// none lands between what `f` reads ([`MetaLog::get`]) and what it
    /// does with it. The default runs `f` as it is (a log applied only
    /// from its callers' tasks).
    fn quietly(&self, f: &mut dyn FnMut()) {
        f();
    }
    /// [`MetaLog::commit`], answering the entry's log index (which
    /// [`MetaLog::wait_applied`] on another node waits for). The default
    /// answers 0: a log applied on every node before a commit returns.
    fn commit_at(&self, ops: Vec<MetaOp>) -> MetaIndexFuture<'_> {
        Box::pin(async move { self.commit(ops).await.map(|()| 0) })
    }
    /// Whether this node has applied the entry at `index`, waiting for it
    /// up to `within`.
    fn wait_applied(&self, index: u64, within: std::time::Duration) -> AppliedFuture<'_> {
        let _ = (index, within);
        Box::pin(std::future::ready(true))
    }
}

/// One change waiting for the commit pipeline; `done` hears how it went
/// (none for changes made where nothing waits: auto-delete, expiry).
pub(crate) struct Pending {
    ops: Vec<MetaOp>,
    done: Option<oneshot::Sender<Result<(), CoreError>>>,
}

/// Bytes of keys and values the pipeline gathers into one entry at most
/// (a change larger than this goes alone; the group's limit is 1 MiB).
const GATHER_BYTES: usize = 256 * 1024;

/// An error of a commit, for each change it carried.
fn share(e: &CoreError) -> CoreError {
    match e {
        CoreError::PreconditionFailed(t) => CoreError::PreconditionFailed(t.clone()),
        CoreError::ShuttingDown => CoreError::ShuttingDown,
        CoreError::Unavailable(t) => CoreError::Unavailable(t.clone()),
        other => CoreError::Unavailable(other.to_string()),
    }
}

fn ops_bytes(ops: &[MetaOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            MetaOp::Put { key, value }
            | MetaOp::PutIfAbsent { key, value }
            | MetaOp::DeleteIf { key, value } => key.len() + value.len(),
            MetaOp::Delete { key } => key.len(),
        })
        .sum()
}

/// The node's commit pipeline: commits changes in the order they were
/// made here (an auto-delete before the redeclaration that follows it),
/// gathering those waiting into one entry; a commit that fails is undone
/// here for every change it carried.
async fn commit_pipeline(
    broker: Weak<Broker>,
    log: Arc<dyn MetaLog>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = pending.recv().await {
        let mut size = ops_bytes(&first.ops);
        let mut group = vec![first];
        while size < GATHER_BYTES {
            match pending.try_recv() {
                Ok(next) => {
                    size += ops_bytes(&next.ops);
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let ops: Vec<MetaOp> = group.iter().flat_map(|p| p.ops.iter().cloned()).collect();
        let keys: Vec<Vec<u8>> = ops.iter().map(|op| op.key().to_vec()).collect();
        let result = log.commit(ops).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, records = keys.len(), "a topology change was not committed to the cluster; undone here");
            if let Some(broker) = broker.upgrade() {
                broker.undo(&*log, keys);
            }
        }
        for p in group {
            if let Some(done) = p.done {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(share));
            }
        }
    }
}

/// A durable queue that lives on another node of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteQueue {
    /// How it was declared.
    pub def: QueueDef,
    /// The node it lives on (its `node_name`).
    pub node: String,
}

/// Applying order of record kinds: a vhost before what it holds, a queue
/// and an exchange before the bindings between them.
fn kind_rank(key: &[u8]) -> u8 {
    match key.first() {
        Some(&TAG_VHOST) => 0,
        Some(&TAG_EXCHANGE) => 1,
        Some(&TAG_QUEUE) => 2,
        Some(&TAG_BINDING) => 3,
        _ => 4,
    }
}

impl Broker {
    /// The `meta` writes of `batch` the cluster shares, as the group's ops.
    fn meta_ops(&self, batch: &Batch) -> Vec<MetaOp> {
        batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                Op::Put {
                    cf: Cf::Meta,
                    key,
                    value,
                } => Some(MetaOp::Put {
                    key: key.clone(),
                    value: value.to_vec(),
                }),
                Op::Delete { cf: Cf::Meta, key } => Some(MetaOp::Delete { key: key.clone() }),
                _ => None,
            })
            .filter(|op| self.is_shared_key(op.key()))
            .collect()
    }

    /// Whether queue or exchange `name` stays on its node
    /// ([`BrokerConfig::node_local_names`]).
    ///
    /// [`BrokerConfig::node_local_names`]: super::BrokerConfig::node_local_names
    pub(crate) fn is_node_local(&self, name: &str) -> bool {
        self.node_local_names
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    /// Whether the `meta` record `key` is the cluster's (not one of a
    /// node-local queue or its bindings).
    fn is_shared_key(&self, key: &[u8]) -> bool {
        if self.node_local_names.is_empty() {
            return true;
        }
        match key.first() {
            Some(&TAG_QUEUE | &TAG_EXCHANGE) => {
                records::decode_name_key(key).is_ok_and(|(_, name)| !self.is_node_local(&name))
            }
            Some(&TAG_BINDING) => records::binding_record_of_key(key)
                .and_then(|r| records::decode_binding(&r))
                .is_ok_and(|(_, b)| {
                    let (crate::exchange::Destination::Queue(to)
                    | crate::exchange::Destination::Exchange(to)) = &b.destination;
                    !self.is_node_local(&b.source) && !self.is_node_local(to)
                }),
            _ => true,
        }
    }

    /// Make this broker one node of a cluster whose metadata group is
    /// `log` (once, before clients connect).
    pub fn attach_meta_log(&self, log: Arc<dyn MetaLog>) {
        if self.meta.set(Arc::clone(&log)).is_err() {
            tracing::warn!("the cluster's metadata log was attached twice; kept the first");
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if self.commits.set(tx).is_ok() {
            tokio::spawn(commit_pipeline(self.me.clone(), log, rx));
        }
        self.start_route_keeper();
    }

    /// The cluster's metadata group, when this node is in a cluster.
    pub(crate) fn meta_log(&self) -> Option<&Arc<dyn MetaLog>> {
        self.meta.get()
    }

    /// This node's name in its cluster.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Whether a queue record naming `owner` is a queue of this node
    /// (records written before the node joined a cluster name none).
    pub(crate) fn owns(&self, owner: Option<&str>) -> bool {
        // Outside a cluster every stored queue is this broker's (a data
        // directory of a former cluster node keeps its queues' messages).
        owner.is_none() || self.node.is_none() || owner == self.node.as_deref()
    }

    /// Write `batch` durably here and, in a cluster, commit its `meta`
    /// records to the group; a failed commit is undone here.
    pub(crate) async fn commit_durably(&self, batch: Batch) -> Result<(), CoreError> {
        let ops = match self.meta_log() {
            Some(_) => self.meta_ops(&batch),
            None => Vec::new(),
        };
        self.write_durably(batch).await?;
        self.commit_meta(ops).await
    }

    /// Commit `ops` to the group (nothing outside a cluster), after every
    /// change made here before; a failed commit is undone here.
    pub(crate) async fn commit_meta(&self, ops: Vec<MetaOp>) -> Result<(), CoreError> {
        let (done, answer) = oneshot::channel();
        if !self.send_commit(ops, Some(done)) {
            return Ok(());
        }
        answer.await.unwrap_or(Err(CoreError::ShuttingDown))
    }

    /// Hand the shared ones of `ops` to the commit pipeline; false when
    /// there is nothing to commit (not in a cluster, or nothing shared).
    fn send_commit(
        &self,
        ops: Vec<MetaOp>,
        done: Option<oneshot::Sender<Result<(), CoreError>>>,
    ) -> bool {
        let Some(pipeline) = self.commits.get() else {
            return false;
        };
        let ops: Vec<MetaOp> = ops
            .into_iter()
            .filter(|op| self.is_shared_key(op.key()))
            .collect();
        if ops.is_empty() {
            return false;
        }
        if let Err(e) = pipeline.send(Pending { ops, done }) {
            // The pipeline is gone (the broker is stopping): tell the
            // waiter so.
            if let Some(done) = e.0.done {
                let _ = done.send(Err(CoreError::ShuttingDown));
            }
        }
        true
    }

    /// Make `keys` here what the group holds for them, as one step no
    /// committed change interleaves with. Never by dropping messages: a
    /// queue (or a vhost with a queue) that took some meanwhile stays, and
    /// is logged.
    fn undo(&self, log: &dyn MetaLog, keys: Vec<Vec<u8>>) {
        log.quietly(&mut || {
            let now = keys
                .iter()
                .map(|k| (k.clone(), log.get(k)))
                .filter(|(k, v)| v.is_some() || !self.holds_messages(k))
                .collect();
            self.apply_in_order(now);
        });
    }

    /// [`Self::commit_durably`] for paths that cannot wait (auto-delete,
    /// expiry): written here now, committed in its turn; a commit that
    /// fails is undone here as any other (the queue comes back, empty).
    pub(crate) fn commit_soon(&self, batch: Batch) {
        let ops = match self.meta_log() {
            Some(_) => self.meta_ops(&batch),
            None => Vec::new(),
        };
        self.write_soon(batch);
        self.send_commit(ops, None);
    }

    /// Apply records in dependency order: removals first (bindings, then
    /// queues, exchanges, vhosts), then the rest (vhosts first).
    fn apply_in_order(&self, mut records: Records) {
        records.sort_by_key(|(k, v)| match v {
            None => (0, 4 - kind_rank(k)),
            Some(_) => (1, kind_rank(k)),
        });
        for (k, v) in records {
            self.apply_replicated(&k, v.as_deref());
        }
    }

    /// The group's whole record map replaced what this node had (its
    /// start, or a snapshot installed): make the topology match it.
    /// Shared records here that `all` lacks are removed, unless `all` is
    /// empty (a group that never applied anything: a data directory from
    /// before the node joined keeps its topology, node-local), or the
    /// record is of a queue of this node that holds messages (kept, and
    /// logged: never dropped on a reset's word).
    pub fn reset_replicated(&self, all: &[(Vec<u8>, Vec<u8>)]) {
        let (clients, all): (Vec<_>, Vec<_>) =
            all.iter().partition(|(k, _)| Self::is_client_key(k));
        for (key, value) in clients {
            self.apply_client(key, Some(value));
        }
        let (routes, all): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(k, _)| Self::is_route_key(k));
        let routes: Vec<(&Vec<u8>, &Vec<u8>)> = routes.into_iter().map(|(k, v)| (k, v)).collect();
        let all: Vec<(Vec<u8>, Vec<u8>)> = all.into_iter().cloned().collect();
        let all = all.as_slice();
        let wanted: std::collections::HashSet<&[u8]> =
            all.iter().map(|(k, _)| k.as_slice()).collect();
        let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut local_only = 0;
        for key in self.shared_keys() {
            if wanted.contains(key.as_slice()) {
                continue;
            }
            if all.is_empty() {
                local_only += 1;
            } else if self.holds_messages(&key) {
                // Kept (and logged).
            } else {
                changes.push((key, None));
            }
        }
        if local_only > 0 {
            tracing::warn!(
                records = local_only,
                "this node's durable topology is not in the cluster's (it was made before the node joined): it stays on this node only"
            );
        }
        tracing::info!(
            records = all.len(),
            removed = changes.len(),
            "topology reset from the cluster"
        );
        changes.extend(all.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
        // Exchanges made here do not scan the routes each: they are all
        // bound once, below, once the topology has its exchanges.
        self.routes_reset.store(true, Ordering::Relaxed);
        self.apply_in_order(changes);
        self.routes_reset.store(false, Ordering::Relaxed);
        self.reset_routes(&routes);
    }

    /// The keys of every record of this node's topology the cluster
    /// shares, from memory (the `meta` family may still have writes on
    /// their way).
    fn shared_keys(&self) -> Vec<Vec<u8>> {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        let mut keys = Vec::new();
        for vh in &vhosts {
            if !vh.info.read().configured {
                keys.push(records::vhost_key(&vh.name));
            }
            let (exchanges, bindings) = {
                let topo = vh.topology.read();
                let exchanges: Vec<String> = topo
                    .exchanges()
                    .filter(|x| x.durable && !crate::topology::is_reserved_exchange(&x.name))
                    .map(|x| x.name.clone())
                    .collect();
                (exchanges, topo.bindings())
            };
            keys.extend(exchanges.iter().map(|x| records::exchange_key(&vh.name, x)));
            let queues: Vec<String> = vh
                .queues
                .read()
                .values()
                .filter(|q| q.def.durable && q.def.exclusive_owner.is_none())
                .map(|q| q.def.name.clone())
                .chain(vh.remote.read().keys().cloned())
                .collect();
            keys.extend(queues.iter().map(|q| records::queue_key(&vh.name, q)));
            keys.extend(
                bindings
                    .iter()
                    .filter(|b| self.binding_is_durable(vh, b))
                    .map(|b| records::binding_key(&vh.name, b)),
            );
        }
        keys.retain(|k| self.is_shared_key(k));
        keys
    }

    /// Whether `key` is the record of a queue of this node that holds
    /// messages (ready or unacknowledged), or of a vhost with such a
    /// queue: removing it would drop them. Logged when true.
    fn holds_messages(&self, key: &[u8]) -> bool {
        // A quorum queue's messages are its group's, not this node's.
        let holds =
            |q: &super::Queue| q.quorum.is_none() && q.message_count() + q.unacked_count() > 0;
        let found = match key.first() {
            Some(&TAG_QUEUE) => records::decode_name_key(key).is_ok_and(|(vhost, name)| {
                self.vhost(&vhost)
                    .ok()
                    .and_then(|vh| vh.queue(&name))
                    .is_some_and(|q| holds(&q))
            }),
            Some(&TAG_VHOST) => records::decode_vhost_key(key).is_ok_and(|vhost| {
                self.vhost(&vhost)
                    .is_ok_and(|vh| vh.queues.read().values().any(|q| holds(q)))
            }),
            _ => false,
        };
        if found {
            tracing::error!(
                key = ?key,
                "the cluster has no record of this, which holds messages here: kept, not removed"
            );
        }
        found
    }

    /// Apply one committed record of the group (`value` None: removed) to
    /// the topology and the `meta` family. Idempotent: the node that made
    /// the change has it already. Never blocks on the store; never
    /// commits anything.
    pub fn apply_replicated(&self, key: &[u8], value: Option<&[u8]>) {
        if Self::is_client_key(key) {
            // Client claims live in the group only.
            self.apply_client(key, value);
            return;
        }
        if Self::is_route_key(key) {
            // So do routes, bound in memory only.
            self.apply_route(key, value);
            return;
        }
        let res = match key.first() {
            Some(&TAG_VHOST) => self.apply_vhost(key, value),
            Some(&TAG_EXCHANGE) => self.apply_exchange(key, value),
            Some(&TAG_QUEUE) => self.apply_queue(key, value),
            Some(&TAG_BINDING) => self.apply_binding(key, value),
            _ => {
                tracing::warn!(key = ?key, "a replicated record of an unknown kind: ignored");
                return;
            }
        };
        if let Err(e) = res {
            tracing::error!(key = ?key, error = %e, "a replicated record could not be applied");
            return;
        }
        let mut batch = Batch::new();
        match value {
            Some(v) => batch.put(Cf::Meta, key.to_vec(), bytes::Bytes::copy_from_slice(v)),
            None => batch.delete(Cf::Meta, key.to_vec()),
        }
        self.write_soon(batch);
    }

    /// The vhost a replicated record belongs to. Its own record comes
    /// first in the log (and first in a reset); a vhost this node lacks is
    /// one deleted since, or one configured on other nodes only: nothing
    /// of it is made here.
    fn replica_vhost(&self, vhost: &str) -> Result<Arc<VHost>, CoreError> {
        self.vhost(vhost)
            .map_err(|_| CoreError::NotFound(format!("no vhost '{vhost}' on this node")))
    }

    fn apply_vhost(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), CoreError> {
        match value {
            Some(v) => {
                let (name, info) = records::decode_vhost(v)?;
                let vh = self.add_vhost(&name);
                let mut current = vh.info.write();
                current.description = info.description;
                current.tags = info.tags;
                current.default_queue_type = info.default_queue_type;
            }
            None => {
                let name = records::decode_vhost_key(key)?;
                if let Some(batch) = self.take_vhost_down(&name) {
                    self.delete_vhost_records_now(&name, batch);
                }
            }
        }
        Ok(())
    }

    fn apply_exchange(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), CoreError> {
        match value {
            Some(v) => {
                let (vhost, def) = records::decode_exchange(v)?;
                let vh = self.replica_vhost(&vhost)?;
                let name = def.name.clone();
                let mut topo = vh.topology.write();
                let made = match topo.exchange(&def.name) {
                    Some(current) if *current != def => {
                        // Another declaration of the name won in the log:
                        // take it, keeping the bindings from and to it.
                        let name = def.name.clone();
                        let kept: Vec<crate::exchange::Binding> = topo
                            .bindings()
                            .into_iter()
                            .filter(|b| {
                                b.source == name
                                    || b.destination
                                        == crate::exchange::Destination::Exchange(name.clone())
                            })
                            .collect();
                        topo.delete_exchange(&name, false)?;
                        topo.restore_exchange(def);
                        for b in kept {
                            if let Err(e) = topo.bind(b) {
                                tracing::warn!(exchange = name, error = %e, "a binding of a replaced exchange was not kept");
                            }
                        }
                        true
                    }
                    Some(_) => false,
                    None => {
                        topo.restore_exchange(def);
                        true
                    }
                };
                drop(topo);
                if made && !self.routes_reset.load(Ordering::Relaxed) {
                    // Other nodes' routes from it (`routes.rs`).
                    self.rebind_routes(&vh, &name);
                }
            }
            None => {
                let (vhost, name) = records::decode_name_key(key)?;
                if let Ok(vh) = self.vhost(&vhost) {
                    let changes = match vh.topology.write().delete_exchange(&name, false) {
                        Ok(changes) => changes,
                        Err(CoreError::NotFound(_)) => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    let mut batch = Batch::new();
                    self.persist_changes(&vh, &changes, &mut batch);
                    self.write_soon(batch);
                }
            }
        }
        Ok(())
    }

    fn apply_queue(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), CoreError> {
        match value {
            Some(v) => {
                let (vhost, id, def, owner) = records::decode_queue(v)?;
                let vh = self.replica_vhost(&vhost)?;
                if self.replicates(&def) {
                    self.apply_quorum_queue(&vh, id, def, owner);
                } else if self.owns(owner.as_deref()) {
                    vh.remote.write().remove(&def.name);
                    if vh.queue(&def.name).is_none() {
                        self.restore_queue(&vh, id, def);
                    }
                } else if vh.queue(&def.name).is_some() {
                    // Its record here stays this node's (recovery keeps
                    // the queue and its messages).
                    return Err(CoreError::PreconditionFailed(format!(
                        "the cluster places queue '{}' in vhost '{vhost}' on node {} but one of that name lives here: this one is kept",
                        def.name,
                        owner.as_deref().unwrap_or("")
                    )));
                } else {
                    let node = owner.unwrap_or_default();
                    vh.remote
                        .write()
                        .insert(def.name.clone(), RemoteQueue { def, node });
                }
            }
            None => {
                let (vhost, name) = records::decode_name_key(key)?;
                if let Ok(vh) = self.vhost(&vhost) {
                    if vh.remote.write().remove(&name).is_some() {
                        let changes = vh.topology.write().queue_deleted(&name);
                        let mut batch = Batch::new();
                        self.persist_changes(&vh, &changes, &mut batch);
                        self.write_soon(batch);
                    }
                    if let Some(q) = vh.queue(&name)
                        && q.def.durable
                        && q.def.exclusive_owner.is_none()
                    {
                        let (batch, _) = self.detach_queue_in(&vh, &q);
                        self.write_soon(batch);
                    }
                }
                self.forget_quorum_queue(&vhost, &name);
            }
        }
        Ok(())
    }

    /// A queue of this node the group knows and this node lacks.
    fn restore_queue(&self, vh: &VHost, id: crate::ids::QueueId, def: QueueDef) {
        let args = QueueArgs::parse(&self.effective_arguments(&vh.name, &def))
            .or_else(|_| QueueArgs::parse(&def.arguments))
            .unwrap_or_default();
        let q = self.new_queue(id, &vh.name, def.clone(), args, Instant::now());
        {
            let mut queues = vh.queues.write();
            if queues.contains_key(&def.name) {
                return;
            }
            queues.insert(def.name.clone(), Arc::clone(&q));
        }
        if let Some(me) = self.me.upgrade() {
            me.spawn_service(q);
        }
    }

    fn apply_binding(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), CoreError> {
        // A binding's key holds its whole record after the tag and vhost.
        let (vhost, b) = match value {
            Some(v) => records::decode_binding(v)?,
            None => records::decode_binding(&records::binding_record_of_key(key)?)?,
        };
        let changes = match value {
            Some(_) => {
                let vh = self.replica_vhost(&vhost)?;
                let change = {
                    let mut topo = vh.topology.write();
                    if topo.has_binding(&b) {
                        None
                    } else {
                        topo.bind(b)?
                    }
                };
                (vh, change.into_iter().collect())
            }
            None => {
                let Ok(vh) = self.vhost(&vhost) else {
                    return Ok(());
                };
                let changes = {
                    let mut topo = vh.topology.write();
                    if topo.has_binding(&b) {
                        topo.unbind(&b)?
                    } else {
                        Vec::new()
                    }
                };
                (vh, changes)
            }
        };
        // An auto-delete exchange may go with its last binding.
        let (vh, changes) = changes;
        let mut batch = Batch::new();
        self.persist_changes(&vh, &changes, &mut batch);
        self.write_soon(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use junction_store::Store;

    use super::*;
    use crate::broker::BrokerConfig;

    /// A log whose commits take a while, recording what each carried.
    #[derive(Default)]
    struct Slow {
        commits: parking_lot::Mutex<Vec<Vec<MetaOp>>>,
    }

    impl MetaLog for Slow {
        fn commit(&self, ops: Vec<MetaOp>) -> MetaFuture<'_> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.commits.lock().push(ops);
                Ok(())
            })
        }

        fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
            None
        }

        fn scan(&self, _prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn changes_commit_in_the_order_made_gathered_while_one_is_in_flight() {
        let config = BrokerConfig {
            node: Some("a".to_owned()),
            ..BrokerConfig::default()
        };
        let broker = Broker::open(Store::in_memory(), config).await.unwrap();
        let log = Arc::new(Slow::default());
        broker.attach_meta_log(Arc::clone(&log) as Arc<dyn MetaLog>);
        let put = |name: &str| MetaOp::Put {
            key: records::queue_key("/", name),
            value: b"record".to_vec(),
        };
        let first = {
            let broker = Arc::clone(&broker);
            let op = put("a");
            tokio::spawn(async move { broker.commit_meta(vec![op]).await })
        };
        // "a" is in flight; an auto-delete made here, then a declare, wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut deleted = Batch::new();
        deleted.delete(Cf::Meta, records::queue_key("/", "b"));
        broker.commit_soon(deleted);
        broker.commit_meta(vec![put("b")]).await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(
            *log.commits.lock(),
            vec![
                vec![put("a")],
                vec![
                    MetaOp::Delete {
                        key: records::queue_key("/", "b")
                    },
                    put("b")
                ],
            ]
        );
    }
}

/// What [`Broker::forget_node`] removed from the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// MQTT client-id claims the node held.
    pub claims: usize,
    /// Routes to its transient and exclusive queues.
    pub routes: usize,
    /// Its classic queues (their messages were on it), with their
    /// bindings.
    pub queues: usize,
}

/// Records one commit of [`Broker::forget_node`] carries at most.
const FORGET_PER_COMMIT: usize = 1000;

impl Broker {
    /// Removes from the cluster what lived on node `node` only, once it
    /// has left for good: its MQTT client-id claims (their sessions can be
    /// taken anywhere), its routes, and its classic queues with their
    /// bindings (their messages went with it). Quorum queues it declared
    /// stay: their groups hold them.
    pub async fn forget_node(&self, node: &str) -> Result<Forgotten, CoreError> {
        let Some(log) = self.meta_log().cloned() else {
            return Ok(Forgotten::default());
        };
        let mut done = Forgotten::default();
        let mut ops = Vec::new();
        for (key, value) in log.scan(&[records::TAG_CLIENT]) {
            if super::clients::ClientClaim::decode(&value).is_ok_and(|c| c.node == node) {
                ops.push(MetaOp::DeleteIf { key, value });
                done.claims += 1;
            }
        }
        for (key, _) in log.scan(&[records::TAG_ROUTE]) {
            if records::decode_route_key(&key).is_ok_and(|(_, n, _)| n == node) {
                ops.push(MetaOp::Delete { key });
                done.routes += 1;
            }
        }
        let mut gone: std::collections::HashSet<(String, String)> = Default::default();
        for (key, value) in log.scan(&[TAG_QUEUE]) {
            let Ok((vhost, _, def, owner)) = records::decode_queue(&value) else {
                continue;
            };
            if owner.as_deref() == Some(node) && !super::quorum::is_quorum(&def) {
                gone.insert((vhost, def.name));
                ops.push(MetaOp::DeleteIf { key, value });
                done.queues += 1;
            }
        }
        if !gone.is_empty() {
            for (key, _) in log.scan(&[TAG_BINDING]) {
                let Ok((vhost, b)) =
                    records::binding_record_of_key(&key).and_then(|r| records::decode_binding(&r))
                else {
                    continue;
                };
                if let crate::exchange::Destination::Queue(q) = &b.destination
                    && gone.contains(&(vhost, q.clone()))
                {
                    ops.push(MetaOp::Delete { key });
                }
            }
        }
        for chunk in ops.chunks(FORGET_PER_COMMIT) {
            log.commit(chunk.to_vec()).await?;
        }
        Ok(done)
    }
}
