//! Replicated (quorum) queues in a cluster (docs/cluster.md "Replicated
//! (quorum) queues"). A durable queue declared with `x-queue-type:
//! quorum` keeps its messages in a consensus group of its own, one member
//! on every node, instead of in one node's store.
//!
//! - **Enqueue.** A publish on any node routed to the queue hands the
//!   message to that node's member of the queue's group
//!   ([`QuorumLog::enqueue`]); the publisher's confirm waits until the
//!   group has committed it, that is until a majority has it on disk.
//! - **Delivery.** The group's leader holds the queue here as an ordinary
//!   [`Queue`] (consumers, credit, acks, TTL). It is built from the
//!   group's records when this node becomes leader
//!   ([`Broker::quorum_lead`]) and fed each message the group commits
//!   afterwards ([`Broker::quorum_put`]). Every other node knows the queue
//!   as a [`RemoteQueue`] on the leader's node, so consumers there attach
//!   to the leader as to any other node's queue.
//! - **Settle.** A message that leaves the leader's queue for good (acked,
//!   expired, dropped, dead-lettered, purged) is removed from the group
//!   ([`QuorumLog::settle`]); what was delivered and not yet settled when
//!   leadership moves is delivered again by the next leader, flagged
//!   redelivered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::forward::ForwardAnswer;
use super::{Broker, Queue, RemoteQueue, VHost};
use crate::ids::{MessageId, QueueId};
use crate::message::Message;
use crate::queue::args::{QueueArgs, QueueDef, QueueType};
use crate::queue::{Effects, Entry};

/// A quorum queue as the cluster's metadata names it: what a node needs to
/// start its member of the queue's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumQueue {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// The id its declaring node gave it (with the node, it tells one
    /// declaration of a name from a later one).
    pub id: QueueId,
    /// The node that declared it.
    pub owner: String,
}

/// What [`QuorumLog::enqueue`] returns: once the message is handed to the
/// group's writer, the receiver of its answer (taken by the queue: 1, 0;
/// or why not).
pub type EnqueueFuture<'a> =
    Pin<Box<dyn Future<Output = oneshot::Receiver<ForwardAnswer>> + Send + 'a>>;

/// The quorum queues' groups on this node (the server wires it to its
/// cluster member). Queues are named by vhost and name: a node holds at
/// most one group per queue name at a time.
pub trait QuorumLog: Send + Sync {
    /// Start (or keep) this node's member of `queue`'s group. Called as
    /// the metadata group applies the queue's record: must not wait.
    fn open(&self, queue: QuorumQueue);
    /// Stop this node's member of the queue's group and remove its log
    /// and records (the queue was deleted).
    fn close(&self, vhost: &str, name: &str);
    /// Commit a message (`key`: its record key in the group; `value`: the
    /// message in the store's encoding). Waits while the writer is full.
    fn enqueue(&self, vhost: &str, name: &str, key: Vec<u8>, value: Vec<u8>) -> EnqueueFuture<'_>;
    /// Remove messages from the group, in its time (nothing waits).
    fn settle(&self, vhost: &str, name: &str, keys: Vec<Vec<u8>>);
    /// This node leads the queue's group but no longer holds its queue
    /// (a delete here that the cluster did not take, undone): build it
    /// again if this node still leads.
    fn relead(&self, vhost: &str, name: &str);
}

/// What the leader's queue keeps of its group: each message's record key
/// by the id it has in the queue here, and the keys it holds.
#[derive(Debug, Default)]
pub(crate) struct QuorumLink {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    keys: crate::FastMap<MessageId, Vec<u8>>,
    /// The same keys, to know a record applied again (a write the group
    /// took twice after a lost answer) from a new one.
    present: std::collections::HashSet<Vec<u8>>,
}

impl Held {
    /// Holds `key` as message `id`; false if it is held already.
    fn take(&mut self, id: MessageId, key: Vec<u8>) -> bool {
        if !self.present.insert(key.clone()) {
            return false;
        }
        self.keys.insert(id, key);
        true
    }

    fn release(&mut self, id: MessageId) -> Option<Vec<u8>> {
        let key = self.keys.remove(&id)?;
        self.present.remove(&key);
        Some(key)
    }
}

/// Whether `def` declares a quorum queue: its own `x-queue-type` says so
/// (a policy's or the vhost's default is written there at declaration,
/// see [`Broker::fix_quorum_type`]). A lookup, not a parse: routing asks
/// it per publish.
pub fn is_quorum(def: &QueueDef) -> bool {
    def.arguments
        .get("x-queue-type")
        .and_then(crate::value::FieldValue::as_str)
        == Some("quorum")
}

/// The record key of a message in its queue's group: its id, then the
/// publishing node's, so that keys from two nodes never meet and a scan
/// of the records gives each publisher's messages in its order.
pub fn quorum_key(message: MessageId, node: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&message.0.to_be_bytes());
    // FNV-1a of the node's name: stable across versions and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    key.extend_from_slice(&hash.to_be_bytes());
    key
}

impl Broker {
    /// Keep quorum queues' messages in `log`'s groups (once, before
    /// clients connect; in a cluster only).
    pub fn attach_quorum(&self, log: Arc<dyn QuorumLog>) {
        if self.quorum.set(log).is_err() {
            tracing::warn!("a quorum log was attached twice; kept the first");
        }
    }

    /// The quorum queues' groups, in a cluster.
    pub(crate) fn quorum_log(&self) -> Option<&Arc<dyn QuorumLog>> {
        self.quorum.get()
    }

    /// Whether queue `def` is replicated here (a quorum queue in a cluster).
    pub(crate) fn replicates(&self, def: &QueueDef) -> bool {
        self.quorum.get().is_some() && is_quorum(def)
    }

    /// The node leading the group of quorum queue `name` of `vhost`, as
    /// this node last heard (None: no leader known yet).
    pub fn quorum_leader(&self, vhost: &str, name: &str) -> Option<String> {
        self.quorum_leaders
            .lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned()
            .flatten()
    }

    /// Wait, at most `within`, until the group of quorum queue `name` has
    /// a leader this node knows.
    pub(crate) async fn await_quorum_leader(
        &self,
        vhost: &str,
        name: &str,
        within: std::time::Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.quorum_leader(vhost, name).is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The metadata group applied the record of quorum queue `def`,
    /// declared by `owner` with `id`: known here as a queue of its
    /// group's leader (the owner until a leader is heard of), and this
    /// node's member of its group started.
    pub(crate) fn apply_quorum_queue(
        &self,
        vh: &VHost,
        id: QueueId,
        def: QueueDef,
        owner: Option<String>,
    ) {
        let Some(log) = self.quorum.get() else {
            return;
        };
        let owner = owner.unwrap_or_default();
        let mut relead = false;
        if vh.queue(&def.name).is_none() {
            let leader = self.quorum_leader(&vh.name, &def.name);
            relead = leader.is_some() && leader.as_deref() == self.node.as_deref();
            let node = leader.unwrap_or_else(|| owner.clone());
            vh.remote.write().insert(
                def.name.clone(),
                RemoteQueue {
                    def: def.clone(),
                    node,
                },
            );
        }
        let name = def.name.clone();
        log.open(QuorumQueue {
            vhost: vh.name.clone(),
            name: def.name,
            id,
            owner,
        });
        if relead {
            log.relead(&vh.name, &name);
        }
    }

    /// Quorum queue `name` of `vhost` is gone (its record removed): stop
    /// this node's member of its group.
    pub(crate) fn forget_quorum_queue(&self, vhost: &str, name: &str) {
        if let Some(log) = self.quorum.get() {
            self.quorum_leaders
                .lock()
                .remove(&(vhost.to_owned(), name.to_owned()));
            log.close(vhost, name);
        }
    }

    /// This node now leads the group of quorum queue `name`: its queue is
    /// built here from `records` (every message the group holds, in key
    /// order). Call it while the group applies nothing, so that each
    /// message is either in `records` or handed to [`Broker::quorum_put`]
    /// after.
    pub fn quorum_lead(&self, vhost: &str, name: &str, records: Vec<(Vec<u8>, Vec<u8>)>) {
        let Some(node) = self.node.clone() else {
            return;
        };
        self.quorum_leaders
            .lock()
            .insert((vhost.to_owned(), name.to_owned()), Some(node));
        let Ok(vh) = self.vhost(vhost) else {
            return;
        };
        let Some(remote) = vh.remote_queue(name) else {
            // Not a queue this node knows (its record not yet applied, or
            // deleted): nothing to build.
            return;
        };
        if vh.queue(name).is_some() {
            return;
        }
        let q = self.new_quorum_queue(vhost, remote.def.clone());
        let now = Instant::now();
        let mut fx = Effects::default();
        let mut kept = 0usize;
        {
            let link = q.quorum.as_ref().expect("a quorum queue has its link");
            let mut held = link.held.lock();
            let mut st = q.state.lock();
            for (key, value) in records {
                let Some(msg) = self.quorum_message(name, &value) else {
                    continue;
                };
                if !held.take(msg.id, key) {
                    continue;
                }
                let seq = st.reserve_seq();
                let expires = st.expiry_for(&msg, now);
                st.restore(Entry {
                    // It may have been delivered by an earlier leader.
                    redelivered: true,
                    persisted: true,
                    ..Entry::loaded(seq, msg, expires)
                });
                kept += 1;
            }
            st.service(now, &mut fx);
        }
        {
            let mut queues = vh.queues.write();
            if queues.contains_key(name) {
                return;
            }
            queues.insert(name.to_owned(), Arc::clone(&q));
            vh.remote.write().remove(name);
        }
        tracing::info!(
            vhost,
            queue = name,
            messages = kept,
            "this node leads the quorum queue"
        );
        if let Some(me) = self.me.upgrade() {
            me.spawn_service(Arc::clone(&q));
        }
        self.apply_effects(&q, fx);
        q.wake.notify_one();
    }

    /// Another node leads the group of quorum queue `name` (`leader`;
    /// None: no leader known now). If this node led it, its queue here
    /// goes: its consumers are cancelled (AMQP `basic.cancel`), and what
    /// it held stays in the group for the next leader.
    pub fn quorum_follow(&self, vhost: &str, name: &str, leader: Option<String>) {
        self.quorum_leaders
            .lock()
            .insert((vhost.to_owned(), name.to_owned()), leader.clone());
        let Ok(vh) = self.vhost(vhost) else {
            return;
        };
        // The leader's queue here (if any) becomes the leader's there in
        // one step: a publish routed meanwhile finds one or the other.
        let local = {
            let mut queues = vh.queues.write();
            let mut remote = vh.remote.write();
            let local = queues.get(name).filter(|q| q.quorum.is_some()).cloned();
            let def = match (&local, remote.get(name)) {
                (Some(q), _) => q.def.clone(),
                (None, Some(r)) => r.def.clone(),
                (None, None) => return,
            };
            let node = match leader.clone() {
                Some(node) => node,
                None => remote.get(name).map(|r| r.node.clone()).unwrap_or_default(),
            };
            remote.insert(name.to_owned(), RemoteQueue { def, node });
            if local.is_some() {
                queues.remove(name);
            }
            local
        };
        if let Some(q) = local {
            // Marked deleted first: what the drain removes stays in the
            // group (see `collect_removed`).
            q.deleted.store(true, std::sync::atomic::Ordering::Release);
            let mut fx = Effects::default();
            let dropped = q.state.lock().drain_all(&mut fx);
            q.wake.notify_one();
            tracing::info!(vhost, queue = name, leader = ?leader, messages = dropped, "this node no longer leads the quorum queue");
        }
    }

    /// The group of quorum queue `name` committed the message `value`
    /// under `key`: into the queue here when this node leads it.
    pub fn quorum_put(&self, vhost: &str, name: &str, key: Vec<u8>, value: &[u8]) {
        let Some(q) = self.vhost(vhost).ok().and_then(|vh| vh.queue(name)) else {
            return;
        };
        let Some(link) = &q.quorum else {
            return;
        };
        let Some(msg) = self.quorum_message(name, value) else {
            return;
        };
        let now = Instant::now();
        let mut fx = Effects::default();
        let accepted = {
            if !link.held.lock().take(msg.id, key) {
                // Applied again: it is here already.
                return;
            }
            let mut st = q.state.lock();
            let seq = st.reserve_seq();
            let expires = st.expiry_for(&msg, now);
            let entry = Entry {
                persisted: true,
                ..Entry::loaded(seq, msg, expires)
            };
            st.publish(entry, now, &mut fx)
        };
        if accepted == crate::queue::Accepted::Rejected {
            // Past `x-max-length` with reject-publish: the publisher was
            // confirmed already (the group took it); it goes now.
            tracing::debug!(
                queue = name,
                "a quorum queue over its limit dropped a message"
            );
        }
        q.wake.notify_one();
        self.apply_effects(&q, fx);
    }

    /// A message of a quorum queue's group, with an id of this node's.
    fn quorum_message(&self, queue: &str, value: &[u8]) -> Option<Arc<Message>> {
        match crate::codec::decode_message(value) {
            Ok(mut msg) => {
                msg.id = self.new_message_id();
                Some(Arc::new(msg))
            }
            Err(e) => {
                tracing::error!(queue, error = %e, "a quorum queue's message could not be read; skipped");
                None
            }
        }
    }

    /// The leader's queue for quorum queue `def` (no paging: the group
    /// holds every message).
    fn new_quorum_queue(&self, vhost: &str, def: QueueDef) -> Arc<Queue> {
        let args = QueueArgs::parse(&self.effective_arguments(vhost, &def))
            .or_else(|_| QueueArgs::parse(&def.arguments))
            .unwrap_or_default();
        let id = QueueId(
            self.next_queue
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let mut q = self.new_queue(id, vhost, def, args, Instant::now());
        let inner = Arc::get_mut(&mut q).expect("a new queue is not shared");
        inner.state.get_mut().set_paging(crate::queue::Paging {
            enabled: false,
            ..self.paging.clone()
        });
        inner.quorum = Some(QuorumLink::default());
        q
    }

    /// Removes entries that left the leader's queue `q` for good from its
    /// group. Nothing when the queue is no longer this node's to settle
    /// (it stepped down, or was deleted: the group keeps or drops them).
    pub(crate) fn settle_quorum(&self, q: &Queue, removed: &[crate::queue::Removed]) {
        let (Some(link), Some(log)) = (&q.quorum, self.quorum.get()) else {
            return;
        };
        let keys: Vec<Vec<u8>> = {
            let mut held = link.held.lock();
            removed
                .iter()
                .filter_map(|r| held.release(r.message))
                .collect()
        };
        if keys.is_empty() || q.is_deleted() {
            return;
        }
        log.settle(q.vhost(), q.name(), keys);
    }

    /// Hands `msg` to the groups of the quorum queues `names` of `vhost`
    /// and returns what its confirm waits for.
    pub(crate) async fn enqueue_quorum(
        &self,
        vhost: &str,
        msg: &Arc<Message>,
        names: Vec<String>,
    ) -> super::forward::Awaited {
        let Some(log) = self.quorum.get() else {
            return Vec::new();
        };
        let node = self.node.as_deref().unwrap_or_default();
        let key = quorum_key(msg.id, node);
        let value = crate::codec::encode_message(msg).to_vec();
        let mut awaited = Vec::with_capacity(names.len());
        for name in names {
            let answer = log.enqueue(vhost, &name, key.clone(), value.clone()).await;
            awaited.push((1, answer));
        }
        awaited
    }

    /// Takes the quorum queues this node leads out of `queues` (their
    /// messages go through their groups) and returns their names.
    pub(crate) fn take_quorum(&self, queues: &mut Vec<Arc<Queue>>) -> Vec<String> {
        if self.quorum.get().is_none() {
            return Vec::new();
        }
        let mut names = Vec::new();
        queues.retain(|q| {
            if q.quorum.is_some() {
                names.push(q.name().to_owned());
                false
            } else {
                true
            }
        });
        names
    }

    /// [`Broker::enqueue_quorum`] where nothing waits for the answers
    /// (dead letters; a failure is logged).
    pub(crate) fn enqueue_quorum_soon(&self, vhost: &str, msg: &Arc<Message>, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let (Some(me), Ok(handle)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (vhost, msg) = (vhost.to_owned(), Arc::clone(msg));
        handle.spawn(async move {
            for (_, answer) in me.enqueue_quorum(&vhost, &msg, names).await {
                if let Ok(Err(e)) = answer.await {
                    tracing::warn!(vhost, error = %e, "a message for a quorum queue was not taken");
                }
            }
        });
    }

    /// [`Broker::fix_quorum_type`] for a redeclaration, so that one
    /// without `x-queue-type` of a queue a policy or the vhost's default
    /// made quorum is equivalent, as it was when first declared.
    pub(crate) fn fix_redeclared_type(&self, vhost: &str, def: &mut QueueDef) {
        if self.quorum.get().is_none() {
            return;
        }
        if let Ok(args) = QueueArgs::parse(&self.effective_arguments(vhost, def)) {
            self.fix_quorum_type(vhost, def, &args);
        }
    }

    /// Records the type in the queue's own arguments when a policy or the
    /// vhost's default made it quorum, so that every node reads it from
    /// the record alone (the declaration's rules are checked before).
    pub(crate) fn fix_quorum_type(&self, vhost: &str, def: &mut QueueDef, args: &QueueArgs) {
        if self.quorum.get().is_none() || def.arguments.get("x-queue-type").is_some() {
            return;
        }
        let by_default = || {
            self.vhost(vhost)
                .is_ok_and(|vh| vh.info.read().default_queue_type.as_deref() == Some("quorum"))
        };
        let eligible = def.durable && def.exclusive_owner.is_none() && !def.auto_delete;
        if eligible && (args.queue_type == QueueType::Quorum || by_default()) {
            def.arguments
                .insert("x-queue-type", crate::value::FieldValue::string("quorum"));
        }
    }
}
