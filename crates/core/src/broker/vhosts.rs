//! Vhosts made and deleted at run time (the management API's
//! `PUT`/`DELETE /api/vhosts/{name}`), beside those the configuration names.
//!
//! A vhost made at run time is a `meta` record (name, description, tags), so
//! it comes back after a restart. The configured vhosts are made at every
//! start; they may carry a record too (a description set through the API)
//! but cannot be deleted, since the next start would make them again.

use std::sync::Arc;

use junction_store::{Batch, Cf};

use super::records::{self, TAG_BINDING, TAG_EXCHANGE, TAG_QUEUE};
use super::{Broker, VHost};
use crate::error::CoreError;

/// What the management API tells of a vhost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VhostInfo {
    pub description: String,
    pub tags: Vec<String>,
    /// RabbitMQ's `default_queue_type`, kept and reported (every queue
    /// here is of one type).
    pub default_queue_type: Option<String>,
    /// Named in the configuration (`[broker] vhosts`): not deletable.
    pub configured: bool,
}

/// Keys one entry of a replicated vhost deletion carries at most.
const VHOST_DELETE_BYTES: usize = 256 * 1024;

/// Longest vhost name accepted (RabbitMQ caps names at 255 bytes too).
pub const MAX_VHOST_NAME: usize = 255;

impl Broker {
    /// What the management API tells of `name`, if it exists.
    pub fn vhost_info(&self, name: &str) -> Option<VhostInfo> {
        self.vhosts.read().get(name).map(|v| v.info.read().clone())
    }

    /// Makes `name` with `info`'s description and tags, or updates them if
    /// it exists; durable once this returns. True when it was made.
    pub async fn put_vhost(&self, name: &str, info: VhostInfo) -> Result<bool, CoreError> {
        if name.is_empty() || name.len() > MAX_VHOST_NAME {
            return Err(CoreError::PreconditionFailed(format!(
                "a vhost name must be 1 to {MAX_VHOST_NAME} bytes long"
            )));
        }
        let (vh, created) = {
            let mut all = self.vhosts.write();
            match all.get(name) {
                Some(v) => (Arc::clone(v), false),
                None => {
                    if all.len() >= self.limits.max_vhosts {
                        return Err(CoreError::LimitReached(format!(
                            "cannot create vhost '{name}': the vhost limit ({}) is reached",
                            self.limits.max_vhosts
                        )));
                    }
                    let v = Arc::new(VHost::new(name));
                    all.insert(name.to_owned(), Arc::clone(&v));
                    (v, true)
                }
            }
        };
        let record = {
            let mut current = vh.info.write();
            current.description = info.description;
            current.tags = info.tags;
            current.default_queue_type = info.default_queue_type;
            records::encode_vhost(name, &current)
        };
        let mut batch = Batch::new();
        batch.put(Cf::Meta, records::vhost_key(name), record);
        self.commit_durably(batch).await?;
        if created {
            tracing::info!(vhost = name, "vhost created");
        }
        Ok(created)
    }

    /// Deletes vhost `name` made at run time, with everything in it: its
    /// connections are closed, its queues and their messages, exchanges,
    /// bindings and retained messages go. Durable once this returns.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), CoreError> {
        {
            let all = self.vhosts.read();
            let Some(vh) = all.get(name) else {
                return Err(CoreError::NotFound(format!("no vhost '{name}'")));
            };
            if vh.info.read().configured {
                return Err(CoreError::PreconditionFailed(format!(
                    "vhost '{name}' is one of [broker] vhosts; remove it from the configuration instead"
                )));
            }
        }
        if let Some(log) = self.meta_log() {
            // Every node (this one too) takes the vhost down as it applies
            // the removal of its record; the records of what it held go
            // from the cluster in the same entry.
            let mut ops = vec![super::MetaOp::Delete {
                key: records::vhost_key(name),
            }];
            for tag in [TAG_BINDING, TAG_QUEUE, TAG_EXCHANGE] {
                for (key, _) in log.scan(&records::vhost_prefix(tag, name)) {
                    ops.push(super::MetaOp::Delete { key });
                }
            }
            // In entries of at most VHOST_DELETE_BYTES of keys, the vhost's
            // own record first: a large vhost stays under the group's
            // command limit, and once its record is gone no node applies
            // a record of it again.
            let mut rest = ops.into_iter().peekable();
            while rest.peek().is_some() {
                let mut chunk = Vec::new();
                let mut bytes = 0;
                while let Some(op) = rest.next_if(|_| bytes < VHOST_DELETE_BYTES) {
                    if let super::MetaOp::Delete { key } = &op {
                        bytes += key.len();
                    }
                    chunk.push(op);
                }
                self.commit_meta(chunk).await?;
            }
            return Ok(());
        }
        let Some(batch) = self.take_vhost_down(name) else {
            return Err(CoreError::NotFound(format!("no vhost '{name}'")));
        };
        self.delete_vhost_records(name, batch).await
    }

    /// Takes vhost `name` out of the broker (unless it is configured): its
    /// connections are closed, its queues dropped with their messages, its
    /// retained messages dropped. Returns the store writes so far; None
    /// when there is no such vhost (or it is configured).
    pub(crate) fn take_vhost_down(&self, name: &str) -> Option<Batch> {
        let vh = {
            let mut all = self.vhosts.write();
            let vh = all.get(name)?;
            if vh.info.read().configured {
                return None;
            }
            let vh = Arc::clone(vh);
            all.remove(name);
            vh
        };
        // From here no new operation finds the vhost; close the connections
        // that are in it.
        let reason = format!("vhost '{name}' is deleted");
        for c in self.connections() {
            if c.details.vhost.as_deref() == Some(name) {
                self.close_connection(c.id, &reason);
            }
        }
        let queues: Vec<Arc<super::Queue>> = vh.queues.read().values().cloned().collect();
        let mut batch = Batch::new();
        for q in &queues {
            let (b, _) = self.detach_queue_in(&vh, q);
            batch.append(b);
        }
        let dropped = self.retained_service().remove_vhost(name);
        tracing::info!(
            vhost = name,
            queues = queues.len(),
            retained = dropped,
            "vhost deleted"
        );
        Some(batch)
    }

    /// Deletes what the store holds of vhost `name` (taken down by
    /// [`Self::take_vhost_down`], whose writes `batch` holds): exchange,
    /// binding and leftover queue records, retained messages, its own
    /// record. Durable once this returns.
    pub(crate) async fn delete_vhost_records(
        &self,
        name: &str,
        mut batch: Batch,
    ) -> Result<(), CoreError> {
        let store = self.store.clone();
        let vhost = name.to_owned();
        let keys = tokio::task::spawn_blocking(move || vhost_record_keys(&store, &vhost))
            .await
            .map_err(|e| CoreError::Corrupt(format!("vhost delete task failed: {e}")))??;
        add_deletes(&mut batch, name, keys);
        self.write_durably(batch).await
    }

    /// [`Self::delete_vhost_records`] from a context that cannot wait (a
    /// replicated deletion being applied): the store is read here and the
    /// deletes queued, ordered with every later write (a vhost of the same
    /// name made again is written after them).
    pub(crate) fn delete_vhost_records_now(&self, name: &str, mut batch: Batch) {
        match vhost_record_keys(&self.store, name) {
            Ok(keys) => {
                add_deletes(&mut batch, name, keys);
                self.write_soon(batch);
            }
            Err(e) => tracing::error!(vhost = name, error = %e, "vhost records not deleted"),
        }
    }
}

/// The keys of what the store holds of vhost `vhost`: exchange, binding
/// and queue records, retained messages.
fn vhost_record_keys(
    store: &junction_store::Store,
    vhost: &str,
) -> Result<Vec<(Cf, Vec<u8>)>, CoreError> {
    let mut keys: Vec<(Cf, Vec<u8>)> = Vec::new();
    let prefixes = [
        (Cf::Meta, records::vhost_prefix(TAG_EXCHANGE, vhost)),
        (Cf::Meta, records::vhost_prefix(TAG_QUEUE, vhost)),
        (Cf::Meta, records::vhost_prefix(TAG_BINDING, vhost)),
        (Cf::Retained, records::retained_prefix(vhost)),
    ];
    for (cf, prefix) in prefixes {
        store.scan(cf, &prefix, &mut |k, _| {
            keys.push((cf, k.to_vec()));
            true
        })?;
    }
    Ok(keys)
}

/// Adds the deletes of `keys` and of vhost `name`'s own record to `batch`.
fn add_deletes(batch: &mut Batch, name: &str, keys: Vec<(Cf, Vec<u8>)>) {
    for (cf, k) in keys {
        batch.delete(cf, k);
    }
    batch.delete(Cf::Meta, records::vhost_key(name));
}
