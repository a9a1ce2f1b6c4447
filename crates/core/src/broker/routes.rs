//! Routes to other nodes' node-local queues (docs/cluster.md "Transient
//! queues across nodes"). A transient or exclusive queue (an AMQP reply
//! queue, an MQTT clean session's queue) lives on its node with its
//! bindings, which the cluster does not share. So that a publish on any
//! node reaches it, its node publishes a *route* in the metadata group for
//! each distinct binding from a shared exchange to such a queue: the
//! exchange, the binding key and arguments, and the node. Every other node
//! binds that exchange, in its own topology only, to a stand-in
//! destination naming the node ([`ROUTE_PREFIX`]); a publish that matches
//! it forwards the message to that node once, which routes it again
//! through its own topology to its node-local queues only (the shared
//! queues had it from the publishing node directly).
//!
//! A route is committed before the binding that needs it is confirmed to
//! the client (a SUBACK, a `queue.bind-ok`), and removed by its node in
//! the background once no binding needs it (a second at most), or at its
//! next start for routes a crash left. A node that is down makes the
//! messages routed to it go nowhere, as its node-local queues went with
//! it: the publisher is not refused for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::records::{self, TAG_ROUTE};
use super::{Broker, MetaOp, VHost};
use crate::error::CoreError;
use crate::exchange::{Binding, Destination};

/// How the stand-in destination of another node's routes is named: this,
/// then the node's name. Clients cannot declare queues under `amq.`.
pub const ROUTE_PREFIX: &str = crate::topology::NODE_ROUTE_PREFIX;

/// How often the keeper looks at what routes this node needs; and how
/// often it looks even when nothing changed here (routes a crash left,
/// applied late).
const KEEP_EVERY: Duration = Duration::from_secs(1);
const FULL_EVERY: u32 = 30;
/// Bytes of route records one commit carries at most.
const COMMIT_BYTES: usize = 256 * 1024;
/// Longest wait of a bind for its route's commit.
const ROUTE_WITHIN: Duration = Duration::from_secs(2);

/// The node a stand-in destination names.
pub(crate) fn route_node(name: &str) -> Option<&str> {
    name.strip_prefix(ROUTE_PREFIX)
}

impl Broker {
    /// Whether `queue` of `vh` is known to this node only (its bindings
    /// are not the cluster's): transient, exclusive, or named node-local.
    fn node_local_queue(&self, vh: &VHost, queue: &str) -> bool {
        vh.queue(queue)
            .is_some_and(|q| self.is_node_local_queue(&q))
    }

    fn is_node_local_queue(&self, q: &super::Queue) -> bool {
        !(q.def.durable && q.def.exclusive_owner.is_none()) || self.is_node_local(q.name())
    }

    /// The route another node knows this node's binding `b` by, when `b`
    /// needs one: from a shared exchange to a queue of this node only.
    fn route_of(&self, vh: &VHost, b: &Binding) -> Option<Binding> {
        let me = self.node_name()?;
        let Destination::Queue(q) = &b.destination else {
            return None;
        };
        let shared_source = !b.source.is_empty()
            && !self.is_node_local(&b.source)
            && vh
                .topology
                .read()
                .exchange(&b.source)
                .is_some_and(|x| x.durable);
        (shared_source && self.node_local_queue(vh, q)).then(|| Binding {
            source: b.source.clone(),
            destination: Destination::Queue(format!("{ROUTE_PREFIX}{me}")),
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
        })
    }

    /// The route by which other nodes reach exclusive queue `q` of this
    /// node by name, through the default exchange (a reply queue).
    fn queue_route_of(&self, q: &super::Queue) -> Option<Binding> {
        let me = self.node_name()?;
        q.def.exclusive_owner.is_some().then(|| Binding {
            source: String::new(),
            destination: Destination::Queue(format!("{ROUTE_PREFIX}{me}")),
            routing_key: q.name().to_owned(),
            arguments: Default::default(),
        })
    }

    /// Commits the route a new binding `b` needs, unless the group has it;
    /// returns once it is applied here. A failure is logged and left to
    /// the keeper: the binding stands here either way.
    pub(crate) async fn publish_route(&self, vh: &VHost, b: &Binding) {
        if let Some(route) = self.route_of(vh, b) {
            self.commit_route(vh, route).await;
        }
    }

    /// [`Broker::publish_route`] for a new exclusive queue.
    pub(crate) async fn publish_queue_route(&self, vh: &VHost, q: &super::Queue) {
        if let Some(route) = self.queue_route_of(q) {
            self.commit_route(vh, route).await;
        }
    }

    async fn commit_route(&self, vh: &VHost, route: Binding) {
        let (Some(log), Some(me)) = (self.meta_log(), self.node_name()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + ROUTE_WITHIN;
        // Shared with other binds; the keeper waits for it, and it for
        // the keeper, so the keeper never removes what this relies on.
        // The wait for it counts in the bind's time too.
        let Ok(_gate) = tokio::time::timeout_at(deadline, self.routes_gate.read()).await else {
            self.routes_dirty.store(true, Ordering::Relaxed);
            return;
        };
        let key = records::route_key(&vh.name, me, &route);
        if log.get(&key).is_some() {
            return;
        }
        let value = records::encode_binding(&vh.name, &route);
        let commit = log.commit(vec![MetaOp::Put { key, value }]);
        match tokio::time::timeout_at(deadline, commit).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, exchange = %route.source, "a route to a queue of this node was not committed; tried again later");
                self.routes_dirty.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                // No majority soon (a minority side): the client is not
                // held; the keeper tries again.
                self.routes_dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Makes the group's routes naming this node exactly those its
    /// bindings need now.
    async fn sync_routes(&self) -> Result<(), CoreError> {
        let (Some(log), Some(me)) = (self.meta_log(), self.node_name()) else {
            return Ok(());
        };
        // Alone: no bind's route commit between the look below and the
        // commits that follow it.
        let _gate = self.routes_gate.write().await;
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        let mut ops = Vec::new();
        for vh in &vhosts {
            let local: Vec<Arc<super::Queue>> = vh
                .queues
                .read()
                .values()
                .filter(|q| self.is_node_local_queue(q))
                .cloned()
                .collect();
            let mut needed: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for route in local.iter().filter_map(|q| self.queue_route_of(q)) {
                needed.insert(
                    records::route_key(&vh.name, me, &route),
                    records::encode_binding(&vh.name, &route),
                );
            }
            let queues = local.iter().map(|q| q.name().to_owned());
            for q in queues {
                let bindings = vh
                    .topology
                    .read()
                    .bindings_to(&Destination::Queue(q.clone()));
                for b in bindings {
                    if let Some(route) = self.route_of(vh, &b) {
                        needed.insert(
                            records::route_key(&vh.name, me, &route),
                            records::encode_binding(&vh.name, &route),
                        );
                    }
                }
            }
            let have: HashSet<Vec<u8>> = log
                .scan(&records::route_prefix(&vh.name, me))
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            for key in have.iter().filter(|k| !needed.contains_key(*k)) {
                ops.push(MetaOp::Delete { key: key.clone() });
            }
            for (key, value) in needed {
                if !have.contains(&key) {
                    ops.push(MetaOp::Put { key, value });
                }
            }
        }
        let mut chunk = Vec::new();
        let mut size = 0;
        for op in ops {
            size += match &op {
                MetaOp::Put { key, value } => key.len() + value.len(),
                other => other.key().len(),
            };
            chunk.push(op);
            if size >= COMMIT_BYTES {
                log.commit(std::mem::take(&mut chunk)).await?;
                size = 0;
            }
        }
        if !chunk.is_empty() {
            log.commit(chunk).await?;
        }
        Ok(())
    }

    /// Starts the task that keeps this node's routes (once, in a
    /// cluster).
    pub(crate) fn start_route_keeper(&self) {
        if self.node_name().is_none() || self.routes_keeper.set(()).is_err() {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_EVERY);
            let mut turn = 0u32;
            loop {
                tick.tick().await;
                let Some(broker) = me.upgrade() else { return };
                if broker.is_shut_down() {
                    return;
                }
                turn = turn.wrapping_add(1);
                let due =
                    broker.routes_dirty.swap(false, Ordering::Relaxed) || turn % FULL_EVERY == 1;
                if due && let Err(e) = broker.sync_routes().await {
                    tracing::debug!(error = %e, "routes not brought up to date; tried again");
                    broker.routes_dirty.store(true, Ordering::Relaxed);
                }
            }
        });
    }

    /// A committed route (or its removal), applied here: another node's
    /// is bound to its stand-in in this node's topology.
    pub(crate) fn apply_route(&self, key: &[u8], value: Option<&[u8]>) {
        let (vhost, node, binding) = match records::decode_route_key(key) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable route: ignored");
                return;
            }
        };
        if Some(node.as_str()) == self.node_name() {
            return;
        }
        let mut applied = self.routes_applied.lock();
        let Ok(vh) = self.vhost(&vhost) else {
            applied.remove(key);
            return;
        };
        if binding.source.is_empty() {
            // An exclusive queue of that node, by name.
            let mut elsewhere = vh.elsewhere.write();
            match value {
                Some(_) => {
                    elsewhere.insert(binding.routing_key, node);
                    applied.insert(key.to_vec());
                }
                None => {
                    // Only this node's: another node's exclusive queue of
                    // the same name, published since, stays reachable.
                    if elsewhere.get(&binding.routing_key) == Some(&node) {
                        elsewhere.remove(&binding.routing_key);
                    }
                    applied.remove(key);
                }
            }
            return;
        }
        drop(applied);
        let mut topo = vh.topology.write();
        let mut applied = self.routes_applied.lock();
        match value {
            Some(_) => {
                if let Err(e) = topo.bind(binding) {
                    tracing::debug!(error = %e, node, "a route of another node not bound here");
                    return;
                }
                applied.insert(key.to_vec());
            }
            None => {
                topo.unbind_route(&binding);
                applied.remove(key);
            }
        }
    }

    /// After a reset: the routes of `all` and no others.
    pub(crate) fn reset_routes(&self, all: &[(&Vec<u8>, &Vec<u8>)]) {
        let wanted: HashSet<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        let stale: Vec<Vec<u8>> = self
            .routes_applied
            .lock()
            .iter()
            .filter(|k| !wanted.contains(k.as_slice()))
            .cloned()
            .collect();
        for key in stale {
            self.apply_route(&key, None);
        }
        for (key, value) in all {
            self.apply_route(key, Some(value));
        }
        // This node's own, as the group has them, may be stale.
        self.routes_dirty.store(true, Ordering::Relaxed);
    }

    /// A message another node routed here through a route: its matches
    /// among this node's node-local queues join `queues` (the shared ones
    /// had it from that node).
    /// Routing fails quietly (the exchange it was published to is not
    /// here: a transient exchange of the publishing node).
    pub(crate) fn route_here(
        &self,
        vh: &VHost,
        msg: &crate::message::Message,
        queues: &mut Vec<Arc<super::Queue>>,
    ) {
        let local = match vh.route(&msg.exchange, msg, false) {
            Ok((local, _)) => local,
            Err(e) => {
                tracing::debug!(error = %e, exchange = %msg.exchange, "a message routed here by another node matches nothing here");
                return;
            }
        };
        for q in local {
            if self.is_node_local_queue(&q) && !queues.iter().any(|x| Arc::ptr_eq(x, &q)) {
                queues.push(q);
            }
        }
    }

    /// Binds other nodes' routes from exchange `exchange` of `vh` again,
    /// from the group's records (the exchange was made, or made again,
    /// here: its stand-in bindings went with the one before).
    pub(crate) fn rebind_routes(&self, vh: &VHost, exchange: &str) {
        let Some(log) = self.meta_log() else {
            return;
        };
        for (key, value) in log.scan(&records::vhost_prefix(TAG_ROUTE, &vh.name)) {
            if let Ok((_, _, b)) = records::decode_route_key(&key)
                && b.source == exchange
            {
                self.apply_route(&key, Some(&value));
            }
        }
    }

    /// Whether `key` is a route's.
    pub(crate) fn is_route_key(key: &[u8]) -> bool {
        key.first() == Some(&TAG_ROUTE)
    }
}
