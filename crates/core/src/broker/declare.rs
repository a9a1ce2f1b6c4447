//! Declaring and deleting exchanges, queues and bindings, with their store
//! records. Durable changes are on disk before these calls return.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use junction_store::{Batch, Cf};
use tokio::time::Instant;

use super::records;
use super::{Broker, Queue, VHost};
use crate::error::CoreError;
use crate::exchange::{Binding, Destination, ExchangeDef};
use crate::ids::{ConnectionId, QueueId};
use crate::interop;
use crate::queue::Effects;
use crate::queue::args::{QueueArgs, QueueDef, QueueType};
use crate::topology::Change;
use crate::value::{FieldTable, FieldValue};

/// Longest wait, after a quorum queue's record is committed, for its
/// group's leader to be known here.
const QUORUM_LEADER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What `queue.declare-ok` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    /// Ready messages.
    pub messages: u64,
    pub consumers: u64,
    /// False when the queue already existed.
    pub created: bool,
}

/// One consumer as the management API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSummary {
    pub queue: String,
    /// The protocol's name for it (AMQP consumer tag, STOMP subscription
    /// id, MQTT client id).
    pub tag: String,
    pub connection: ConnectionId,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    /// Its smallest prefetch limit; 0: none.
    pub prefetch: u32,
}

/// One queue as the management API lists it.
#[derive(Clone, Debug)]
pub struct QueueSummary {
    /// How it was declared.
    pub def: QueueDef,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Delivered, not yet settled.
    pub unacked: u64,
    pub consumers: u64,
    /// Body bytes of the ready messages.
    pub ready_bytes: u64,
    /// Since the queue was last used (declared, consumed from, got from).
    pub idle_for: std::time::Duration,
    /// Memory its messages hold, ready or unacked (what the memory alarm
    /// counts).
    pub memory: u64,
    /// Messages accepted since the queue was made.
    pub published: u64,
    /// Messages handed out (delivered or got) since the queue was made.
    pub delivered: u64,
}

/// A server-generated queue name, `amq.gen-` and 22 URL-safe characters (as RabbitMQ).
fn generated_queue_name(seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let state = std::collections::hash_map::RandomState::new();
    let a = state.hash_one((seed, 1u8));
    let b = state.hash_one((seed, 2u8));
    let mut bits = (u128::from(a) << 64) | u128::from(b);
    let mut out = String::from("amq.gen-");
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    out
}

/// The argument that differs between an existing queue and a
/// redeclaration and how, in RabbitMQ's words (`durable`, `received 'true'
/// but current is 'false'`), or None when they are equivalent.
fn inequivalence(
    current: &QueueDef,
    current_args: &QueueArgs,
    received: &QueueDef,
    received_args: &QueueArgs,
) -> Option<(String, String)> {
    for (name, r, c) in [
        ("durable", received.durable, current.durable),
        ("auto_delete", received.auto_delete, current.auto_delete),
    ] {
        if r != c {
            return Some((
                name.to_string(),
                format!("received '{r}' but current is '{c}'"),
            ));
        }
    }
    if received_args == current_args {
        return None;
    }
    // The first argument that differs, by name.
    let text = |v: Option<&FieldValue>| match v {
        Some(v) => format!("'{}'", crate::interop::value_text(v)),
        None => "none".to_string(),
    };
    let names = received
        .arguments
        .iter()
        .chain(current.arguments.iter())
        .map(|(k, _)| k);
    for name in names {
        let (r, c) = (received.arguments.get(name), current.arguments.get(name));
        let same = match (r, c) {
            (Some(a), Some(b)) => a.loosely_equals(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Some((
                name.to_string(),
                format!("received {} but current is {}", text(r), text(c)),
            ));
        }
    }
    Some(("arguments".to_string(), "they differ".to_string()))
}

fn queue_locked(name: &str) -> CoreError {
    CoreError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked queue '{name}'"
    ))
}

impl Broker {
    /// Waits until `batch` is on disk (no-op when empty).
    pub(crate) async fn write_durably(&self, batch: Batch) -> Result<(), CoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.store.submit(batch, true).await?.await?;
        Ok(())
    }

    /// Queues `batch` for the committer without waiting (ordered with every
    /// other write). For paths that cannot await: they only ever delete
    /// records, or write records nothing else refers to yet.
    pub(crate) fn write_soon(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.submit_now(batch, false) {
            tracing::error!(error = %e, "store write failed");
        }
    }

    /// Turns topology changes into store writes for the durable parts.
    pub(crate) fn persist_changes(&self, vh: &VHost, changes: &[Change], batch: &mut Batch) {
        for c in changes {
            match c {
                Change::ExchangeAdded(d) if d.durable => batch.put(
                    Cf::Meta,
                    records::exchange_key(&vh.name, &d.name),
                    records::encode_exchange(&vh.name, d),
                ),
                Change::ExchangeAdded(_) => {}
                Change::ExchangeRemoved(d) => {
                    batch.delete(Cf::Meta, records::exchange_key(&vh.name, &d.name))
                }
                Change::BindingAdded(b) => {
                    // Routes to this node's queues follow (`routes.rs`).
                    self.routes_dirty.store(true, Ordering::Relaxed);
                    if self.binding_is_durable(vh, b) {
                        batch.put(
                            Cf::Meta,
                            records::binding_key(&vh.name, b),
                            records::encode_binding(&vh.name, b),
                        );
                    }
                }
                Change::BindingRemoved(b) => {
                    self.routes_dirty.store(true, Ordering::Relaxed);
                    batch.delete(Cf::Meta, records::binding_key(&vh.name, b))
                }
            }
        }
    }

    /// A binding survives a restart when its source and destination do.
    pub(crate) fn binding_is_durable(&self, vh: &VHost, b: &Binding) -> bool {
        let topo = vh.topology.read();
        let source = topo.exchange(&b.source).is_some_and(|x| x.durable);
        let dest = match &b.destination {
            Destination::Exchange(x) => topo.exchange(x).is_some_and(|x| x.durable),
            Destination::Queue(q) => {
                vh.queue(q)
                    .is_some_and(|q| q.def.durable && q.def.exclusive_owner.is_none())
                    || vh.remote.read().contains_key(q)
            }
        };
        source && dest
    }

    /// `exchange.declare`.
    pub async fn declare_exchange(
        &self,
        vhost: &str,
        def: ExchangeDef,
        passive: bool,
    ) -> Result<(), CoreError> {
        let vh = self.vhost(vhost)?;
        let name = def.name.clone();
        let change = {
            let mut topo = vh.topology.write();
            if !passive
                && topo.exchange(&def.name).is_none()
                && topo.exchange_count() >= self.limits.max_exchanges
            {
                return Err(CoreError::LimitReached(format!(
                    "cannot declare exchange '{}': exchange limit in vhost '{vhost}' ({}) is reached",
                    def.name, self.limits.max_exchanges
                )));
            }
            topo.declare_exchange(def, passive)?
        };
        let mut batch = Batch::new();
        let added = change.is_some();
        if let Some(c) = change {
            self.persist_changes(&vh, &[c], &mut batch);
        }
        self.commit_durably(batch).await?;
        if added {
            // Other nodes' routes from an exchange of that name.
            self.rebind_routes(&vh, &name);
        }
        Ok(())
    }

    /// `exchange.delete`.
    pub async fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), CoreError> {
        let vh = self.vhost(vhost)?;
        let changes = vh.topology.write().delete_exchange(name, if_unused)?;
        let mut batch = Batch::new();
        self.persist_changes(&vh, &changes, &mut batch);
        self.commit_durably(batch).await
    }

    /// The queue `name`, checking that `conn` may use it (exclusive queues
    /// belong to one connection: others get 405 RESOURCE_LOCKED).
    pub fn queue_for(
        &self,
        vhost: &str,
        name: &str,
        conn: Option<ConnectionId>,
    ) -> Result<Arc<Queue>, CoreError> {
        let vh = self.vhost(vhost)?;
        let q = vh
            .queue(name)
            .ok_or_else(|| CoreError::NotFound(format!("no queue '{name}' in vhost '{vhost}'")))?;
        if let Some(owner) = q.def.exclusive_owner
            && Some(owner) != conn
        {
            return Err(queue_locked(name));
        }
        Ok(q)
    }

    /// `queue.declare`. An empty name asks for a server-named queue. The
    /// caller is taken to be the connection named in `def.exclusive_owner`
    /// (none for a non-exclusive declare); see [`Broker::declare_queue_as`].
    pub async fn declare_queue(
        self: &Arc<Self>,
        vhost: &str,
        def: QueueDef,
        passive: bool,
    ) -> Result<QueueInfo, CoreError> {
        let conn = def.exclusive_owner;
        self.declare_queue_as(vhost, def, passive, conn).await
    }

    /// `queue.declare` from connection `conn`, which may use (passively or
    /// not) an exclusive queue it owns even without asking for exclusivity.
    /// A passive declare of `amq.rabbitmq.reply-to` answers ok with no
    /// messages and no consumers, as RabbitMQ does.
    pub async fn declare_queue_as(
        self: &Arc<Self>,
        vhost: &str,
        def: QueueDef,
        passive: bool,
        conn: Option<ConnectionId>,
    ) -> Result<QueueInfo, CoreError> {
        if passive && def.name == interop::DIRECT_REPLY_TO {
            self.vhost(vhost)?;
            return Ok(QueueInfo {
                name: def.name,
                messages: 0,
                consumers: 0,
                created: false,
            });
        }
        self.declare_queue_inner(vhost, def, passive, conn, false)
            .await
    }

    /// A name for a server-named queue (`amq.gen-…`), for an adapter that
    /// checks permissions on the name before it declares the queue with
    /// [`Broker::declare_server_named`].
    pub fn new_queue_name(&self) -> String {
        generated_queue_name(self.next_queue.load(Ordering::Relaxed))
    }

    /// `queue.declare` (not passive) of a queue named by
    /// [`Broker::new_queue_name`].
    pub async fn declare_server_named(
        self: &Arc<Self>,
        vhost: &str,
        def: QueueDef,
        conn: Option<ConnectionId>,
    ) -> Result<QueueInfo, CoreError> {
        self.declare_queue_inner(vhost, def, false, conn, true)
            .await
    }

    /// Direct reply-to (`amq.rabbitmq.reply-to`): a fresh transient queue
    /// `amq.rabbitmq.reply-to.<22 characters>`, exclusive to `owner` and
    /// deleted with its last consumer. Its name is what a requester's
    /// `reply_to` becomes, so any protocol's responder reaches it through
    /// the default exchange.
    pub async fn declare_reply_queue(
        self: &Arc<Self>,
        vhost: &str,
        owner: ConnectionId,
    ) -> Result<String, CoreError> {
        let generated = generated_queue_name(self.next_queue.load(Ordering::Relaxed));
        let def = QueueDef {
            name: format!(
                "{}.{}",
                interop::DIRECT_REPLY_TO,
                &generated["amq.gen-".len()..]
            ),
            durable: false,
            exclusive_owner: Some(owner),
            auto_delete: true,
            arguments: FieldTable::new(),
        };
        let info = self
            .declare_queue_inner(vhost, def, false, Some(owner), true)
            .await?;
        Ok(info.name)
    }

    /// `reserved_ok`: the broker itself names the queue `amq.…`.
    async fn declare_queue_inner(
        self: &Arc<Self>,
        vhost: &str,
        mut def: QueueDef,
        passive: bool,
        conn: Option<ConnectionId>,
        reserved_ok: bool,
    ) -> Result<QueueInfo, CoreError> {
        let vh = self.vhost(vhost)?;
        if def.name.is_empty() && !passive {
            def.name = generated_queue_name(self.next_queue.load(Ordering::Relaxed));
        } else if let Some(q) = vh.queue(&def.name) {
            if let Some(owner) = q.def.exclusive_owner
                && Some(owner) != conn
            {
                return Err(queue_locked(&def.name));
            }
            // Exclusivity cannot change: asking for it on a shared queue, or
            // not asking for it on one's own exclusive queue, is 405
            // (RabbitMQ).
            if !passive && q.def.exclusive_owner.is_some() != def.exclusive_owner.is_some() {
                return Err(queue_locked(&def.name));
            }
            self.fix_redeclared_type(vhost, &mut def);
            let mut st = q.state.lock();
            if !passive {
                let args = QueueArgs::parse(&def.arguments)?;
                if let Some((arg, why)) = inequivalence(&q.def, &st.args, &def, &args) {
                    return Err(CoreError::PreconditionFailed(format!(
                        "inequivalent arg '{arg}' for queue '{}' in vhost '{vhost}': {why}",
                        def.name
                    )));
                }
            }
            st.last_used = Instant::now();
            let info = QueueInfo {
                name: def.name.clone(),
                messages: st.ready_count(),
                consumers: st.consumer_count(),
                created: false,
            };
            drop(st);
            q.wake.notify_one();
            return Ok(info);
        } else if let Some(remote) = vh.remote_queue(&def.name) {
            // A queue of another node: same checks; its counts are its
            // node's (0 and 0 when that node cannot say within 2 s).
            if !passive {
                if def.exclusive_owner.is_some() {
                    return Err(queue_locked(&def.name));
                }
                self.fix_redeclared_type(vhost, &mut def);
                let args = QueueArgs::parse(&def.arguments)?;
                let current = QueueArgs::parse(&remote.def.arguments).unwrap_or_default();
                if let Some((arg, why)) = inequivalence(&remote.def, &current, &def, &args) {
                    return Err(CoreError::PreconditionFailed(format!(
                        "inequivalent arg '{arg}' for queue '{}' in vhost '{vhost}': {why}",
                        def.name
                    )));
                }
            }
            let (messages, consumers) = self.remote_counts(vhost, &remote).await.unwrap_or((0, 0));
            return Ok(QueueInfo {
                name: def.name,
                messages,
                consumers,
                created: false,
            });
        } else if passive {
            return Err(CoreError::NotFound(format!(
                "no queue '{}' in vhost '{vhost}'",
                def.name
            )));
        } else if def.name.starts_with("amq.") && !reserved_ok {
            return Err(CoreError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.'",
                def.name
            )));
        }
        // The queue's own arguments must be valid; a policy's are checked
        // when it is set, and skipped here if they no longer fit.
        let own = QueueArgs::parse(&def.arguments)?;
        let args = QueueArgs::parse(&self.effective_arguments(vhost, &def)).unwrap_or(own);
        if args.queue_type != QueueType::Classic {
            // RabbitMQ's rules for quorum queues and streams.
            let refused = if !def.durable {
                Some("non-durable")
            } else if def.exclusive_owner.is_some() {
                Some("exclusive-owner")
            } else if def.auto_delete {
                Some("auto-delete")
            } else {
                None
            };
            if let Some(property) = refused {
                return Err(CoreError::PreconditionFailed(format!(
                    "invalid property '{property}' for queue '{}' in vhost '{vhost}'",
                    def.name
                )));
            }
        }
        self.fix_quorum_type(vhost, &mut def, &args);
        if self.replicates(&def) {
            return self.declare_quorum(vhost, &vh, def).await;
        }
        let id = QueueId(self.next_queue.fetch_add(1, Ordering::Relaxed));
        // Exclusive queues die with their connection, so they are never stored.
        let stored = def.durable && def.exclusive_owner.is_none();
        let q = self.new_queue(id, vhost, def.clone(), args, Instant::now());
        let mut receipt = None;
        let mut replicated = None;
        {
            let mut queues = vh.queues.write();
            if let Some(existing) = queues.get(&def.name) {
                // Lost a race with another declare of the same name.
                return Ok(QueueInfo {
                    name: def.name.clone(),
                    messages: existing.message_count(),
                    consumers: existing.consumer_count(),
                    created: false,
                });
            }
            if queues.len() >= self.limits.max_queues {
                return Err(CoreError::LimitReached(format!(
                    "cannot declare queue '{}': queue limit in vhost '{vhost}' ({}) is reached",
                    def.name, self.limits.max_queues
                )));
            }
            // The queue's record joins the committer's queue before the
            // queue becomes routable: every publish into it is submitted
            // later, so it commits in the same or a later batch, and no
            // confirmed message can sit in a queue that recovery does not
            // know (which would delete its entries).
            if stored {
                let mut batch = Batch::new();
                let record = records::encode_queue(vhost, id, &def, self.node_name());
                batch.put(
                    Cf::Meta,
                    records::queue_key(vhost, &def.name),
                    record.clone(),
                );
                replicated = Some(record);
                receipt = Some(self.store.submit_now(batch, true)?);
            }
            queues.insert(def.name.clone(), Arc::clone(&q));
        }
        if let Some(owner) = def.exclusive_owner {
            self.exclusive
                .lock()
                .entry(owner)
                .or_default()
                .push((vhost.to_string(), def.name.clone()));
            // In a cluster, reached by name from every node (a reply
            // queue) once declare-ok is sent.
            self.publish_queue_route(&vh, &q).await;
        }
        self.spawn_service(Arc::clone(&q));
        if let Some(r) = receipt {
            r.await?;
        }
        if let Some(record) = replicated {
            self.commit_meta(vec![super::MetaOp::Put {
                key: records::queue_key(vhost, &def.name),
                value: record.to_vec(),
            }])
            .await?;
        }
        Ok(QueueInfo {
            name: def.name,
            messages: 0,
            consumers: 0,
            created: true,
        })
    }

    /// Declares quorum queue `def` in a cluster: its record is committed
    /// to the metadata group, whose apply starts every node's member of
    /// the queue's group; answers once a leader is known here (or after
    /// [`QUORUM_LEADER_WITHIN`]), so that a consume that follows finds it.
    async fn declare_quorum(
        &self,
        vhost: &str,
        vh: &VHost,
        def: QueueDef,
    ) -> Result<QueueInfo, CoreError> {
        if vh.queues.read().len() + vh.remote.read().len() >= self.limits.max_queues {
            return Err(CoreError::LimitReached(format!(
                "cannot declare queue '{}': queue limit in vhost '{vhost}' ({}) is reached",
                def.name, self.limits.max_queues
            )));
        }
        let id = QueueId(self.next_queue.fetch_add(1, Ordering::Relaxed));
        let record = records::encode_queue(vhost, id, &def, self.node_name());
        let key = records::queue_key(vhost, &def.name);
        // A first declaration wins: a node that has not applied the
        // queue's record yet must not replace its group with a new one.
        self.commit_meta(vec![super::MetaOp::PutIfAbsent {
            key: key.clone(),
            value: record.to_vec(),
        }])
        .await?;
        let winner = self
            .meta_log()
            .and_then(|log| log.get(&key))
            .and_then(|v| records::decode_queue(&v).ok());
        if let Some((_, won, current, owner)) = winner
            && (won != id || owner.as_deref() != self.node_name())
        {
            // Declared before (by this node or another): this is a
            // redeclaration, held to the same rules.
            if !super::is_quorum(&current) {
                return Err(CoreError::PreconditionFailed(format!(
                    "inequivalent arg 'x-queue-type' for queue '{}' in vhost '{vhost}': received 'quorum' but current is 'classic'",
                    def.name
                )));
            }
            return Ok(QueueInfo {
                name: def.name,
                messages: 0,
                consumers: 0,
                created: false,
            });
        }
        if !self
            .await_quorum_leader(vhost, &def.name, QUORUM_LEADER_WITHIN)
            .await
        {
            tracing::warn!(
                vhost,
                queue = def.name,
                "a new quorum queue has no leader yet"
            );
        }
        Ok(QueueInfo {
            name: def.name,
            messages: 0,
            consumers: 0,
            created: true,
        })
    }

    /// Takes a queue out of its vhost: bindings, messages and record go.
    /// Consumers are told (AMQP sends `basic.cancel`). Returns the store
    /// writes and how many messages it held.
    pub(crate) fn detach_queue(&self, q: &Arc<Queue>) -> (Batch, u64) {
        match self.vhost(&q.vhost) {
            Ok(vh) => self.detach_queue_in(&vh, q),
            Err(_) => (Batch::new(), 0),
        }
    }

    /// [`Self::detach_queue`] for a queue of `vh` (which may already be out
    /// of the broker's map: a vhost being deleted).
    pub(crate) fn detach_queue_in(&self, vh: &VHost, q: &Arc<Queue>) -> (Batch, u64) {
        let mut batch = Batch::new();
        if q.deleted.swap(true, Ordering::AcqRel) {
            return (batch, 0);
        }
        {
            let mut queues = vh.queues.write();
            if queues.get(q.name()).is_some_and(|x| Arc::ptr_eq(x, q)) {
                queues.remove(q.name());
            }
        }
        let changes = vh.topology.write().queue_deleted(q.name());
        self.persist_changes(vh, &changes, &mut batch);
        let mut fx = Effects::default();
        let n = q.state.lock().drain_all(&mut fx);
        self.collect_removed(q, &fx.removed, &mut batch);
        if q.def.durable && q.def.exclusive_owner.is_none() {
            batch.delete(Cf::Meta, records::queue_key(&q.vhost, q.name()));
        }
        if let Some(owner) = q.def.exclusive_owner {
            // Its route by name goes too (`routes.rs`).
            self.routes_dirty.store(true, Ordering::Relaxed);
            let mut exclusive = self.exclusive.lock();
            if let Some(owned) = exclusive.get_mut(&owner) {
                owned.retain(|(vh, name)| !(vh == &q.vhost && name == q.name()));
                if owned.is_empty() {
                    exclusive.remove(&owner);
                }
            }
        }
        q.wake.notify_one();
        (batch, n)
    }

    /// Deletes a queue from a context that cannot wait (auto-delete,
    /// expiry, exclusive owner gone).
    pub(crate) fn remove_queue(&self, q: &Arc<Queue>) {
        let (batch, _) = self.detach_queue(q);
        self.commit_soon(batch);
    }

    /// `queue.delete`; returns the number of messages deleted.
    pub async fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: Option<ConnectionId>,
    ) -> Result<u64, CoreError> {
        if let Some(remote) = self.vhost(vhost)?.remote_queue(name) {
            return self
                .delete_remote_queue(vhost, remote, if_unused || if_empty)
                .await;
        }
        let q = self.queue_for(vhost, name, conn)?;
        {
            let st = q.state.lock();
            if if_unused && st.consumer_count() > 0 {
                return Err(CoreError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{vhost}' in use"
                )));
            }
            if if_empty && st.ready_count() + st.unacked_count() > 0 {
                return Err(CoreError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{vhost}' is not empty"
                )));
            }
        }
        let (batch, n) = self.detach_queue(&q);
        self.commit_durably(batch).await?;
        Ok(n)
    }

    /// `queue.delete` of a queue on another node: its record and its
    /// bindings' go from the cluster, and its node drops it and its
    /// messages as it applies that. How many messages it held is not
    /// known here (0 is answered); a conditional delete must be asked of
    /// the queue's node, which knows its consumers and messages.
    async fn delete_remote_queue(
        &self,
        vhost: &str,
        remote: super::RemoteQueue,
        conditional: bool,
    ) -> Result<u64, CoreError> {
        let name = &remote.def.name;
        if conditional {
            return Err(CoreError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' lives on node {}: delete it there if unused or empty",
                remote.node
            )));
        }
        let bindings: Vec<super::MetaOp> = {
            let vh = self.vhost(vhost)?;
            let topo = vh.topology.read();
            topo.bindings()
                .into_iter()
                .filter(|b| matches!(&b.destination, Destination::Queue(q) if q == name))
                .map(|b| super::MetaOp::Delete {
                    key: records::binding_key(vhost, &b),
                })
                .collect()
        };
        let mut ops = bindings;
        ops.push(super::MetaOp::Delete {
            key: records::queue_key(vhost, name),
        });
        self.commit_meta(ops).await?;
        Ok(0)
    }

    /// `queue.purge`: drops the ready messages; returns how many.
    pub async fn purge_queue(
        &self,
        vhost: &str,
        name: &str,
        conn: Option<ConnectionId>,
    ) -> Result<u64, CoreError> {
        let q = self.queue_for(vhost, name, conn)?;
        let mut fx = Effects::default();
        let n = q.state.lock().purge(&mut fx);
        let mut batch = Batch::new();
        self.collect_removed(&q, &fx.removed, &mut batch);
        self.write_durably(batch).await?;
        Ok(n)
    }

    /// `queue.bind` / `exchange.bind`. Binding twice is a no-op.
    pub async fn bind(
        &self,
        vhost: &str,
        binding: Binding,
        conn: Option<ConnectionId>,
    ) -> Result<(), CoreError> {
        let vh = self.vhost(vhost)?;
        if let Destination::Queue(q) = &binding.destination
            && vh.remote_queue(q).is_none()
        {
            self.queue_for(vhost, q, conn)?;
        }
        let change = {
            let mut topo = vh.topology.write();
            if topo
                .exchange(&binding.source)
                .is_some_and(|x| x.kind == crate::exchange::ExchangeKind::Topic)
            {
                self.check_topic_levels(&binding.routing_key)?;
            }
            // Binding again is a no-op, even at the limit (clients that
            // re-subscribe on every reconnect).
            if topo.binding_count() >= self.limits.max_bindings && !topo.has_binding(&binding) {
                return Err(CoreError::LimitReached(format!(
                    "binding limit in vhost '{vhost}' ({}) is reached",
                    self.limits.max_bindings
                )));
            }
            topo.bind(binding.clone())?
        };
        let mut batch = Batch::new();
        if let Some(c) = change {
            self.persist_changes(&vh, &[c], &mut batch);
        }
        self.commit_durably(batch).await?;
        // In a cluster, a binding to a queue of this node only is reached
        // from the others once its route is the group's.
        self.publish_route(&vh, &binding).await;
        Ok(())
    }

    /// `queue.unbind` / `exchange.unbind`.
    pub async fn unbind(
        &self,
        vhost: &str,
        binding: &Binding,
        conn: Option<ConnectionId>,
    ) -> Result<(), CoreError> {
        let vh = self.vhost(vhost)?;
        if let Destination::Queue(q) = &binding.destination
            && vh.remote_queue(q).is_none()
        {
            self.queue_for(vhost, q, conn)?;
        }
        let changes = vh.topology.write().unbind(binding)?;
        let mut batch = Batch::new();
        self.persist_changes(&vh, &changes, &mut batch);
        self.commit_durably(batch).await
    }

    /// Exchange definition lookup (for adapters' passive checks and listings).
    pub fn exchange(&self, vhost: &str, name: &str) -> Result<ExchangeDef, CoreError> {
        let vh = self.vhost(vhost)?;
        let topo = vh.topology.read();
        topo.exchange(name)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("no exchange '{name}' in vhost '{vhost}'")))
    }

    /// The vhosts' names, sorted (the management API).
    pub fn vhost_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.vhosts.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The exchanges of a vhost, sorted by name (the management API).
    pub fn exchanges(&self, vhost: &str) -> Result<Vec<ExchangeDef>, CoreError> {
        let vh = self.vhost(vhost)?;
        let mut all: Vec<ExchangeDef> = vh.topology.read().exchanges().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The consumers of a vhost's queues (the management API), by queue.
    pub fn consumers(&self, vhost: &str) -> Result<Vec<ConsumerSummary>, CoreError> {
        let vh = self.vhost(vhost)?;
        let queues: Vec<Arc<Queue>> = vh.queues.read().values().cloned().collect();
        let mut all = Vec::new();
        for q in &queues {
            for (tag, connection, no_ack, exclusive, priority, prefetch) in
                q.state.lock().consumer_list()
            {
                all.push(ConsumerSummary {
                    queue: q.def.name.clone(),
                    tag,
                    connection,
                    no_ack,
                    exclusive,
                    priority,
                    prefetch,
                });
            }
        }
        all.sort_by(|a, b| (&a.queue, &a.tag).cmp(&(&b.queue, &b.tag)));
        Ok(all)
    }

    /// The queues of a vhost with their counts now, sorted by name (the
    /// management API).
    pub fn queues(&self, vhost: &str) -> Result<Vec<QueueSummary>, CoreError> {
        let vh = self.vhost(vhost)?;
        let queues: Vec<Arc<Queue>> = vh.queues.read().values().cloned().collect();
        let mut all: Vec<QueueSummary> = queues
            .iter()
            .map(|q| {
                let st = q.state.lock();
                let (published, delivered) = st.totals();
                QueueSummary {
                    def: q.def.clone(),
                    ready: st.ready_count(),
                    unacked: st.unacked_count(),
                    consumers: st.consumer_count(),
                    ready_bytes: st.ready_bytes(),
                    idle_for: st.last_used.elapsed(),
                    memory: st.held_bytes(),
                    published,
                    delivered,
                }
            })
            .collect();
        all.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        Ok(all)
    }

    /// The durable queues of a vhost that live on other nodes of the
    /// cluster, sorted by name (the management API).
    pub fn remote_queues(&self, vhost: &str) -> Result<Vec<super::RemoteQueue>, CoreError> {
        let vh = self.vhost(vhost)?;
        let mut all: Vec<super::RemoteQueue> = vh.remote.read().values().cloned().collect();
        all.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        Ok(all)
    }

    /// The bindings of a vhost (listings and tests).
    pub fn bindings(&self, vhost: &str) -> Result<Vec<Binding>, CoreError> {
        let vh = self.vhost(vhost)?;
        let topo = vh.topology.read();
        Ok(topo.bindings())
    }

    /// Deletes the exclusive queues `conn` owned: O(its own queues), so a
    /// disconnect storm costs nothing per queue of other connections.
    pub(crate) fn connection_closed(&self, conn: ConnectionId) {
        let Some(owned) = self.exclusive.lock().remove(&conn) else {
            return;
        };
        for (vhost, name) in owned {
            let Ok(vh) = self.vhost(&vhost) else {
                continue;
            };
            if let Some(q) = vh.queue(&name)
                && q.def.exclusive_owner == Some(conn)
            {
                self.remove_queue(&q);
            }
        }
    }
}
