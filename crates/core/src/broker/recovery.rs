//! Start-up recovery: read every durable record (off the async workers),
//! then rebuild vhosts, exchanges, queues, bindings, queue contents and
//! message reference counts. Records that point at nothing are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use junction_store::{Batch, Cf, Store};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::records::{self, TAG_BINDING, TAG_EXCHANGE, TAG_QUEUE};
use super::{Broker, Queue};
use crate::codec::decode_message;
use crate::error::CoreError;
use crate::exchange::{Binding, ExchangeDef};
use crate::ids::{MessageId, QueueId};
use crate::message::Message;
use crate::queue::args::{QueueArgs, QueueDef};
use crate::queue::{Entry, QueueState};

/// Everything read from the store, not yet applied.
pub(super) struct Recovered {
    exchanges: Vec<(String, ExchangeDef)>,
    queues: Vec<(String, QueueId, QueueDef)>,
    bindings: Vec<(String, Binding)>,
    messages: HashMap<MessageId, Message>,
    /// (queue, seq, message, expiry in Unix ms or 0), in key order.
    entries: Vec<(QueueId, u64, MessageId, u64)>,
    retained: Vec<(String, Message)>,
}

fn log_corrupt(cf: Cf, key: &[u8], e: &CoreError) {
    tracing::error!(cf = cf.name(), key = ?key, error = %e, "skipping unreadable record");
}

/// Reads all durable state. Blocking: run it off the async workers.
pub(super) fn read(store: &Store) -> Result<Recovered, CoreError> {
    let mut r = Recovered {
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
        messages: HashMap::new(),
        entries: Vec::new(),
        retained: Vec::new(),
    };
    store.scan(Cf::Meta, &[], &mut |k, v| {
        let res = match k.first() {
            Some(&TAG_EXCHANGE) => records::decode_exchange(v).map(|x| r.exchanges.push(x)),
            Some(&TAG_QUEUE) => records::decode_queue(v).map(|q| r.queues.push(q)),
            Some(&TAG_BINDING) => records::decode_binding(v).map(|b| r.bindings.push(b)),
            _ => Ok(()),
        };
        if let Err(e) = res {
            log_corrupt(Cf::Meta, k, &e);
        }
        true
    })?;
    store.scan(Cf::Messages, &[], &mut |k, v| {
        match decode_message(v) {
            Ok(m) => {
                r.messages.insert(m.id, m);
            }
            Err(e) => log_corrupt(Cf::Messages, k, &e),
        }
        true
    })?;
    store.scan(Cf::QueueEntries, &[], &mut |k, v| {
        match records::split_entry_key(k).and_then(|(q, s)| {
            let (m, exp) = records::decode_entry(v)?;
            Ok((q, s, m, exp))
        }) {
            Ok(e) => r.entries.push(e),
            Err(e) => log_corrupt(Cf::QueueEntries, k, &e),
        }
        true
    })?;
    store.scan(Cf::Retained, &[], &mut |k, v| {
        match records::decode_retained_key(k).and_then(|vh| Ok((vh, decode_message(v)?))) {
            Ok(x) => r.retained.push(x),
            Err(e) => log_corrupt(Cf::Retained, k, &e),
        }
        true
    })?;
    Ok(r)
}

/// Rebuilds the broker from what [`read`] found.
pub(super) fn apply(broker: &Arc<Broker>, r: Recovered) -> Result<(), CoreError> {
    let mut cleanup = Batch::new();
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
    for (vhost, id, def) in r.queues {
        max_queue = max_queue.max(id.0);
        let args = match QueueArgs::parse(&def.arguments) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(queue = def.name, error = %e, "stored queue has invalid arguments; using none");
                QueueArgs::default()
            }
        };
        let q = Arc::new(Queue {
            id,
            vhost: vhost.clone(),
            def: def.clone(),
            state: Mutex::new(QueueState::new(args, now)),
            wake: Arc::new(Notify::new()),
            deleted: Default::default(),
        });
        broker
            .add_vhost(&vhost)
            .queues
            .write()
            .insert(def.name.clone(), Arc::clone(&q));
        by_id.insert(id, q);
    }
    broker.next_queue.store(max_queue + 1, Ordering::Relaxed);
    for (vhost, b) in r.bindings {
        let vh = broker.add_vhost(&vhost);
        let dest_ok = match &b.destination {
            crate::exchange::Destination::Queue(q) => vh.queue(q).is_some(),
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
    let max_message = r.messages.keys().map(|m| m.0).max().unwrap_or(0);
    let mut shared: HashMap<MessageId, Arc<Message>> = r
        .messages
        .into_iter()
        .map(|(id, m)| (id, Arc::new(m)))
        .collect();
    let mut refs: HashMap<MessageId, u32> = HashMap::new();
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for (qid, seq, mid, exp) in r.entries {
        let (Some(q), Some(m)) = (by_id.get(&qid), shared.get(&mid)) else {
            cleanup.delete(Cf::QueueEntries, records::entry_key(qid, seq));
            continue;
        };
        *refs.entry(mid).or_default() += 1;
        let expires_at =
            (exp != 0).then(|| now + Duration::from_millis(exp.saturating_sub(now_unix)));
        q.state.lock().restore(Entry {
            seq,
            message: Arc::clone(m),
            delivery_count: 0,
            // It may have been delivered before the restart.
            redelivered: true,
            expires_at,
            persisted: true,
        });
    }
    shared.retain(|id, _| {
        let referenced = refs.contains_key(id);
        if !referenced {
            cleanup.delete(Cf::Messages, records::message_key(*id).to_vec());
        }
        referenced
    });
    let mut max_retained = 0;
    for (vhost, m) in r.retained {
        max_retained = max_retained.max(m.id.0);
        broker.retained_service().restore(&vhost, Arc::new(m));
    }
    broker
        .next_message
        .store(max_message.max(max_retained) + 1, Ordering::Relaxed);
    *broker.refs.lock() = refs;
    if !cleanup.is_empty() {
        broker.store.submit_now(cleanup, false)?;
    }
    for q in by_id.into_values() {
        broker.spawn_service(Arc::clone(&q));
        q.wake.notify_one();
    }
    Ok(())
}
