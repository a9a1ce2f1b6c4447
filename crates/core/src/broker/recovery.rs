//! Start-up recovery: read every durable record (off the async workers),
//! then rebuild vhosts, exchanges, queues, bindings, queue contents and
//! message reference counts. Only the head of each queue is read with its
//! messages; the rest comes back paged (index only: id, size, priority
//! from the entry record), so a backlog larger than memory restarts. Nothing recovery cannot use is deleted: an
//! undecodable record, or a queue entry whose queue is unknown, moves to
//! the `quarantine` column family (logged and counted in `/metrics`). Only
//! what is provably garbage goes: a binding to a missing queue, an entry
//! whose message is gone, a message no entry refers to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use junction_store::{Batch, Cf, Store};
use tokio::time::Instant;

use super::records::{self, TAG_BINDING, TAG_EXCHANGE, TAG_QUEUE, TAG_VHOST};
use super::{Broker, Queue};
use crate::codec::decode_message;
use crate::error::CoreError;
use crate::exchange::{Binding, ExchangeDef};
use crate::ids::{MessageId, QueueId};
use crate::message::Message;
use crate::queue::args::QueueArgs;
use crate::queue::{Body, Entry, Paged};

/// Everything read from the store, not yet applied.
pub(super) struct Recovered {
    vhosts: Vec<(String, super::VhostInfo)>,
    exchanges: Vec<(String, ExchangeDef)>,
    queues: Vec<records::QueueRecord>,
    bindings: Vec<(String, Binding)>,
    /// Messages read whole: those at the head of a queue, and those whose
    /// entries carry no index.
    messages: HashMap<MessageId, Message>,
    /// Every message id in the store that an entry refers to.
    present: HashSet<MessageId>,
    /// Messages no entry refers to (deleted).
    unreferenced: Vec<MessageId>,
    /// The largest message id in the store.
    max_message: u64,
    /// (queue, seq, record), in key order.
    entries: Vec<(QueueId, u64, records::EntryRecord)>,
    retained: Vec<(String, Message)>,
    /// Records that could not be decoded: (family, key, value).
    unreadable: Vec<(Cf, Vec<u8>, Vec<u8>)>,
    /// Records already in quarantine from earlier starts.
    quarantined_before: u64,
}

/// Moves a record to the quarantine family (same batch: put there, delete
/// here), keyed by its family's index and its key.
fn quarantine(batch: &mut Batch, cf: Cf, key: &[u8], value: &[u8]) {
    let mut qkey = Vec::with_capacity(key.len() + 1);
    qkey.push(cf.index() as u8);
    qkey.extend_from_slice(key);
    batch.put(Cf::Quarantine, qkey, bytes::Bytes::copy_from_slice(value));
    batch.delete(cf, key.to_vec());
}

/// How much of each queue recovery reads whole (the rest comes back paged).
#[derive(Clone, Copy, Debug)]
pub(super) struct Heads {
    /// Entries per queue.
    pub messages: usize,
    /// Body bytes per queue.
    pub bytes: u64,
    /// Body bytes over all queues (half the memory watermark: past it new
    /// arrivals page too).
    pub total_bytes: u64,
}

impl Heads {
    /// Every message whole (the in-memory store: nothing to page from).
    pub const ALL: Heads = Heads {
        messages: usize::MAX,
        bytes: u64::MAX,
        total_bytes: u64::MAX,
    };
}

/// Reads all durable state; messages only for the head of each queue
/// (see [`Heads`]). Blocking: run it off the async workers.
pub(super) fn read(store: &Store, head: Heads) -> Result<Recovered, CoreError> {
    let mut r = Recovered {
        vhosts: Vec::new(),
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
        messages: HashMap::new(),
        present: HashSet::new(),
        unreferenced: Vec::new(),
        max_message: 0,
        entries: Vec::new(),
        retained: Vec::new(),
        unreadable: Vec::new(),
        quarantined_before: 0,
    };
    store.scan(Cf::Quarantine, &[], &mut |_, _| {
        r.quarantined_before += 1;
        true
    })?;
    let bad = |cf: Cf, k: &[u8], v: &[u8], e: &CoreError| {
        tracing::error!(cf = cf.name(), key = ?k, error = %e, "unreadable record: moved to quarantine");
        (cf, k.to_vec(), v.to_vec())
    };
    let mut unreadable = Vec::new();
    store.scan(Cf::Meta, &[], &mut |k, v| {
        let res = match k.first() {
            Some(&TAG_EXCHANGE) => records::decode_exchange(v).map(|x| r.exchanges.push(x)),
            Some(&TAG_QUEUE) => records::decode_queue(v).map(|q| r.queues.push(q)),
            Some(&TAG_BINDING) => records::decode_binding(v).map(|b| r.bindings.push(b)),
            Some(&TAG_VHOST) => records::decode_vhost(v).map(|x| r.vhosts.push(x)),
            _ => Ok(()),
        };
        if let Err(e) = res {
            unreadable.push(bad(Cf::Meta, k, v, &e));
        }
        true
    })?;
    // Entries first: they say which messages are wanted whole.
    let mut referenced = HashSet::new();
    let mut wanted = HashSet::new();
    // This queue's head so far: (queue, entries, body bytes, cut off).
    let mut run: (Option<QueueId>, usize, u64, bool) = (None, 0, 0, false);
    let mut total = 0u64;
    store.scan(Cf::QueueEntries, &[], &mut |k, v| {
        match records::split_entry_key(k).and_then(|(q, s)| Ok((q, s, records::decode_entry(v)?))) {
            Ok((q, s, e)) => {
                if run.0 != Some(q) {
                    run = (Some(q), 0, 0, false);
                }
                referenced.insert(e.message);
                let len = e.index.map_or(0, |(len, _)| len);
                run.3 |= run.1 >= head.messages
                    || run.2.saturating_add(len) > head.bytes
                    || total.saturating_add(len) > head.total_bytes;
                if !run.3 || e.index.is_none() {
                    run.1 += 1;
                    run.2 += len;
                    total += len;
                    wanted.insert(e.message);
                }
                r.entries.push((q, s, e));
            }
            Err(e) => unreadable.push(bad(Cf::QueueEntries, k, v, &e)),
        }
        true
    })?;
    store.scan(Cf::Messages, &[], &mut |k, v| {
        let Ok(key) = <[u8; 8]>::try_from(k) else {
            let e = CoreError::Corrupt("message key is not 8 bytes".into());
            unreadable.push(bad(Cf::Messages, k, v, &e));
            return true;
        };
        let id = MessageId(u64::from_be_bytes(key));
        r.max_message = r.max_message.max(id.0);
        if !referenced.contains(&id) {
            // Garbage if it is a message; kept aside if it cannot be read.
            match decode_message(v) {
                Ok(_) => r.unreferenced.push(id),
                Err(e) => unreadable.push(bad(Cf::Messages, k, v, &e)),
            }
        } else if wanted.contains(&id) {
            match decode_message(v) {
                Ok(m) => {
                    r.present.insert(id);
                    r.messages.insert(m.id, m);
                }
                Err(e) => unreadable.push(bad(Cf::Messages, k, v, &e)),
            }
        } else {
            r.present.insert(id);
        }
        true
    })?;
    store.scan(Cf::Retained, &[], &mut |k, v| {
        match records::decode_retained_key(k).and_then(|vh| Ok((vh, decode_message(v)?))) {
            Ok(x) => r.retained.push(x),
            Err(e) => unreadable.push(bad(Cf::Retained, k, v, &e)),
        }
        true
    })?;
    r.unreadable = unreadable;
    Ok(r)
}

/// Rebuilds the broker from what [`read`] found.
pub(super) fn apply(broker: &Arc<Broker>, r: Recovered) -> Result<(), CoreError> {
    let mut cleanup = Batch::new();
    for (vhost, info) in r.vhosts {
        let vh = broker.add_vhost(&vhost);
        let mut current = vh.info.write();
        let configured = current.configured;
        *current = super::VhostInfo { configured, ..info };
    }
    for (vhost, def) in r.exchanges {
        broker
            .add_vhost(&vhost)
            .topology
            .write()
            .restore_exchange(def);
    }
    let now = Instant::now();
    let mut by_id: HashMap<QueueId, Arc<Queue>> = HashMap::new();
    let mut max_queue = 0;
    for (vhost, id, def, node) in r.queues {
        // A quorum queue's messages are its group's: every node knows it
        // as another's until its group elects this one. (One stored before
        // the node was in a cluster names no node: it stays a classic
        // queue here, with its messages.)
        let replicated = broker.node.is_some() && node.is_some() && super::is_quorum(&def);
        if !broker.owns(node.as_deref()) || replicated {
            // A queue of another node of the cluster.
            let node = node.unwrap_or_default();
            broker
                .add_vhost(&vhost)
                .remote
                .write()
                .insert(def.name.clone(), super::RemoteQueue { def, node });
            continue;
        }
        max_queue = max_queue.max(id.0);
        let args = match QueueArgs::parse(&def.arguments) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(queue = def.name, error = %e, "stored queue has invalid arguments; using none");
                QueueArgs::default()
            }
        };
        let q = broker.new_queue(id, &vhost, def.clone(), args, now);
        broker
            .add_vhost(&vhost)
            .queues
            .write()
            .insert(def.name.clone(), Arc::clone(&q));
        by_id.insert(id, q);
    }
    broker.next_queue.store(
        super::first_id_of_run().max(max_queue + 1),
        Ordering::Relaxed,
    );
    for (vhost, b) in r.bindings {
        let vh = broker.add_vhost(&vhost);
        let dest_ok = match &b.destination {
            crate::exchange::Destination::Queue(q) => {
                vh.queue(q).is_some() || vh.remote.read().contains_key(q)
            }
            crate::exchange::Destination::Exchange(_) => true,
        };
        let res = if dest_ok {
            vh.topology.write().bind(b.clone()).map(|_| ())
        } else {
            Err(CoreError::NotFound("destination".into()))
        };
        if let Err(e) = res {
            tracing::warn!(binding = ?b, error = %e, "dropping stored binding");
            cleanup.delete(Cf::Meta, records::binding_key(&vhost, &b));
        }
    }
    let max_message = r.max_message;
    let shared: HashMap<MessageId, Arc<Message>> = r
        .messages
        .into_iter()
        .map(|(id, m)| (id, Arc::new(m)))
        .collect();
    for id in &r.unreferenced {
        cleanup.delete(Cf::Messages, records::message_key(*id).to_vec());
    }
    let mut refs: crate::FastMap<MessageId, u32> = crate::FastMap::default();
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for (cf, k, v) in &r.unreadable {
        quarantine(&mut cleanup, *cf, k, v);
    }
    let mut quarantined = r.unreadable.len();
    for (qid, seq, rec) in r.entries {
        let (mid, exp) = (rec.message, rec.expires_unix_ms);
        let Some(q) = by_id.get(&qid) else {
            // A queue recovery does not know: keep the entry aside (it may
            // be a confirmed message), never delete it.
            let key = records::entry_key(qid, seq);
            tracing::error!(
                queue_id = qid.0,
                seq,
                "queue entry of an unknown queue: moved to quarantine"
            );
            quarantine(
                &mut cleanup,
                Cf::QueueEntries,
                &key,
                &records::encode_entry(&rec),
            );
            quarantined += 1;
            continue;
        };
        let body = match (shared.get(&mid), rec.index) {
            (Some(m), _) => Body::Loaded(Arc::clone(m)),
            (None, Some((body_len, priority))) if r.present.contains(&mid) => Body::Paged(Paged {
                id: mid,
                body_len,
                priority,
            }),
            _ => {
                cleanup.delete(Cf::QueueEntries, records::entry_key(qid, seq));
                continue;
            }
        };
        *refs.entry(mid).or_default() += 1;
        let expires_at =
            (exp != 0).then(|| now + Duration::from_millis(exp.saturating_sub(now_unix)));
        q.state.lock().restore(Entry {
            seq,
            body,
            delivery_count: 0,
            // It may have been delivered before the restart.
            redelivered: true,
            expires_at,
            persisted: true,
        });
    }
    let mut max_retained = 0;
    for (vhost, m) in r.retained {
        max_retained = max_retained.max(m.id.0);
        broker.retained_service().restore(&vhost, Arc::new(m));
    }
    broker.next_message.store(
        super::first_id_of_run().max(max_message.max(max_retained) + 1),
        Ordering::Relaxed,
    );
    *broker.refs.lock() = refs;
    let quarantined = r.quarantined_before + quarantined as u64;
    if quarantined > 0 {
        tracing::warn!(
            records = quarantined,
            "the store's quarantine holds records recovery could not use; they are kept, not deleted"
        );
    }
    broker.quarantined.store(quarantined, Ordering::Relaxed);
    if !cleanup.is_empty() {
        broker.store.submit_now(cleanup, false)?;
    }
    for q in by_id.into_values() {
        broker.spawn_service(Arc::clone(&q));
        q.wake.notify_one();
    }
    Ok(())
}
