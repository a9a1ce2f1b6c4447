//! Durable adapter state: a small namespaced key → bytes map in the store's
//! `sessions` column family, for protocol state that is not a message or a
//! queue (MQTT sessions: subscriptions, QoS 2 packet ids). Adapters go
//! through it so they never touch the store crate.
//!
//! Keys are `namespace ‖ 0x00 ‖ key`; values start with a version byte the
//! core adds and strips.

use bytes::{BufMut, Bytes, BytesMut};
use junction_store::{Batch, Cf};

use crate::broker::{Broker, Published};
use crate::error::CoreError;
use crate::message::Message;

const VERSION: u8 = 1;

/// Writes to adapter state, applied together (and, with
/// [`Broker::publish_with_state`], together with a message).
#[derive(Debug, Default)]
pub struct StateWrites {
    batch: Batch,
}

fn state_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl StateWrites {
    pub fn new() -> StateWrites {
        StateWrites::default()
    }

    /// Sets `namespace`/`key` to `value`.
    pub fn put(&mut self, namespace: &str, key: &str, value: &[u8]) {
        let mut v = BytesMut::with_capacity(1 + value.len());
        v.put_u8(VERSION);
        v.put_slice(value);
        self.batch
            .put(Cf::Sessions, state_key(namespace, key), v.freeze());
    }

    /// Removes `namespace`/`key` (no error if absent).
    pub fn delete(&mut self, namespace: &str, key: &str) {
        self.batch.delete(Cf::Sessions, state_key(namespace, key));
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// How many writes (puts and deletes) this holds.
    pub fn len(&self) -> usize {
        self.batch.len()
    }
}

impl Broker {
    /// Applies `writes`; durable when this returns.
    pub async fn write_state(&self, writes: StateWrites) -> Result<(), CoreError> {
        self.write_durably(writes.batch).await
    }

    /// Applies `writes` without waiting for the disk (ordered with every
    /// later write), for paths that cannot await.
    pub fn write_state_soon(&self, writes: StateWrites) {
        self.write_soon(writes.batch);
    }

    /// Queues `writes` now (ordered with every later write) and returns a
    /// future that resolves once they are synced to disk: for writes a
    /// packet promises to the client, such as the release of an MQTT QoS 2
    /// packet id before PUBCOMP (power-cut safe, not only kill -9 safe).
    pub fn write_state_synced(
        &self,
        writes: StateWrites,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + Sync + 'static {
        self.queue_state(writes, true)
    }

    /// Queues `writes` and returns a future that resolves once they are in
    /// the store engine: RocksDB's WAL written but not synced, so a crash
    /// of the process keeps them (a power cut may not). Cheaper than
    /// [`Broker::write_state`]; for records that must precede a packet to
    /// a client (MQTT QoS 2 packet ids) but need no sync of their own.
    pub fn write_state_applied(
        &self,
        writes: StateWrites,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + Sync + 'static {
        self.queue_state(writes, false)
    }

    /// Queues `writes` now, in order with every later write; the future
    /// resolves once they are applied (and synced, if `durable`).
    fn queue_state(
        &self,
        writes: StateWrites,
        durable: bool,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + Sync + 'static {
        let receipt = (!writes.is_empty()).then(|| self.store().submit_now(writes.batch, durable));
        async move {
            if let Some(r) = receipt {
                r?.await?;
            }
            Ok(())
        }
    }

    /// Every key and value stored under `namespace`, in key order.
    pub fn read_state(&self, namespace: &str) -> Result<Vec<(String, Bytes)>, CoreError> {
        let prefix = state_key(namespace, "");
        let mut out = Vec::new();
        let mut bad = None;
        self.store().scan(Cf::Sessions, &prefix, &mut |k, v| {
            let key = String::from_utf8(k[prefix.len()..].to_vec());
            match (key, v.split_first()) {
                (Ok(key), Some((&VERSION, rest))) => {
                    out.push((key, Bytes::copy_from_slice(rest)));
                    true
                }
                _ => {
                    bad = Some(format!("bad adapter state record under '{namespace}'"));
                    false
                }
            }
        })?;
        match bad {
            Some(e) => Err(CoreError::Corrupt(e)),
            None => Ok(out),
        }
    }

    /// Publishes `msg` and applies `writes` in the same store batch: after
    /// a crash either both happened or neither (MQTT QoS 2 records the
    /// packet id with the message it acknowledges).
    pub async fn publish_with_state(
        &self,
        vhost: &str,
        msg: Message,
        writes: StateWrites,
    ) -> Result<Published, CoreError> {
        self.publish_batch(vhost, msg, writes.batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerConfig;
    use junction_store::Store;

    #[tokio::test]
    async fn state_round_trips_and_is_namespaced() {
        let broker = Broker::open(Store::in_memory(), BrokerConfig::default())
            .await
            .unwrap();
        let mut w = StateWrites::new();
        w.put("mqtt", "b", b"two");
        w.put("mqtt", "a", b"one");
        w.put("mqtt2", "a", b"other");
        broker.write_state(w).await.unwrap();
        let got = broker.read_state("mqtt").unwrap();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), Bytes::from_static(b"one")),
                ("b".to_string(), Bytes::from_static(b"two"))
            ]
        );
        let mut w = StateWrites::new();
        w.delete("mqtt", "a");
        broker.write_state(w).await.unwrap();
        assert_eq!(broker.read_state("mqtt").unwrap().len(), 1);
        assert_eq!(broker.read_state("mqtt2").unwrap().len(), 1);
    }
}
