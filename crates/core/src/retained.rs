//! Retained messages: the last message published per routing key, handed to
//! new subscribers whose pattern matches. Only MQTT uses it; it lives in the
//! core so it is durable and shared by every MQTT connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use junction_store::{Batch, Cf};
use parking_lot::RwLock;

use crate::broker::Broker;
use crate::broker::records;
use crate::error::CoreError;
use crate::message::Message;
use crate::topic;

/// Retained messages per vhost, by routing key (AMQP form: `.` separated).
#[derive(Default)]
pub struct Retained {
    by_vhost: RwLock<HashMap<String, BTreeMap<String, Arc<Message>>>>,
    /// Sum of the retained messages' footprints: the memory alarm counts it.
    held: std::sync::atomic::AtomicU64,
}

impl Retained {
    pub(crate) fn restore(&self, vhost: &str, m: Arc<Message>) {
        use std::sync::atomic::Ordering;
        let added = m.footprint();
        let old = self
            .by_vhost
            .write()
            .entry(vhost.to_string())
            .or_default()
            .insert(m.routing_key.clone(), m);
        self.held.fetch_add(added, Ordering::Relaxed);
        if let Some(old) = old {
            self.held.fetch_sub(old.footprint(), Ordering::Relaxed);
        }
    }

    fn remove(&self, vhost: &str, key: &str) {
        let old = self
            .by_vhost
            .write()
            .get_mut(vhost)
            .and_then(|map| map.remove(key));
        if let Some(old) = old {
            self.held
                .fetch_sub(old.footprint(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Drops every retained message of `vhost` (in memory only); returns
    /// how many there were.
    pub(crate) fn remove_vhost(&self, vhost: &str) -> usize {
        let Some(map) = self.by_vhost.write().remove(vhost) else {
            return 0;
        };
        let bytes: u64 = map.values().map(|m| m.footprint()).sum();
        self.held
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
        map.len()
    }

    /// Memory the retained messages hold (their footprints).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Broker {
    /// Sets (or with an empty body, clears) the retained message for the
    /// message's routing key. Durable once this returns.
    pub async fn set_retained(&self, vhost: &str, mut msg: Message) -> Result<(), CoreError> {
        self.vhost(vhost)?;
        let key = records::retained_key(vhost, &msg.routing_key);
        let mut batch = Batch::new();
        if msg.body.is_empty() {
            self.retained_service().remove(vhost, &msg.routing_key);
            batch.delete(Cf::Retained, key);
        } else {
            msg.id = self.new_message_id();
            batch.put(Cf::Retained, key, crate::codec::encode_message(&msg));
            self.retained_service().restore(vhost, Arc::new(msg));
        }
        self.write_durably(batch).await
    }

    /// Retained messages whose routing key matches the topic `pattern`
    /// (`*` one word, `#` any), in key order.
    pub fn retained_matching(&self, vhost: &str, pattern: &str) -> Vec<Arc<Message>> {
        let map = self.retained_service().by_vhost.read();
        map.get(vhost)
            .map(|m| {
                m.values()
                    .filter(|msg| topic::matches(pattern, &msg.routing_key))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many retained messages there are in all vhosts.
    pub fn retained_count(&self) -> u64 {
        self.retained_service()
            .by_vhost
            .read()
            .values()
            .map(|m| m.len() as u64)
            .sum()
    }
}
