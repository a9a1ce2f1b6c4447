//! Policies, RabbitMQ's: a pattern over queue names, a priority, and a
//! definition of queue arguments (`max-length`, `message-ttl`,
//! `dead-letter-exchange`, ...) that matching queues take without being
//! declared again. A queue's own `x-` arguments win over its policy's.
//!
//! Kept in `<data_dir>/policies.json` (written atomically), so they
//! survive a restart; in memory only for an in-memory broker.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use junction_core::interop::json_field;
use junction_core::{Broker, FieldTable, QueueArgs};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::query::{ListQuery, apply};
use super::{ApiError, Caller, Level, MgmtState, done};

type St = State<Arc<MgmtState>>;
type Answer = Result<Response, ApiError>;

/// The definition keys a policy may set, and the queue argument each
/// stands for. (`max-priority` and the queue type cannot change on a
/// queue that exists, so no policy sets them, as in RabbitMQ.)
const KEYS: [(&str, &str); 8] = [
    ("message-ttl", "x-message-ttl"),
    ("expires", "x-expires"),
    ("max-length", "x-max-length"),
    ("max-length-bytes", "x-max-length-bytes"),
    ("overflow", "x-overflow"),
    ("dead-letter-exchange", "x-dead-letter-exchange"),
    ("dead-letter-routing-key", "x-dead-letter-routing-key"),
    ("delivery-limit", "x-delivery-limit"),
];

/// One policy, as RabbitMQ's API and definitions files write it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i64,
    pub definition: serde_json::Map<String, Value>,
}

fn all() -> String {
    "all".to_owned()
}

impl Policy {
    /// The queue arguments it adds.
    fn arguments(&self) -> FieldTable {
        let mut t = FieldTable::new();
        for (key, arg) in KEYS {
            if let Some(v) = self.definition.get(key) {
                t.insert(arg, json_field(v));
            }
        }
        t
    }

    /// Refuses what could not work: a bad pattern, an unknown key, a
    /// value the queue would refuse.
    fn check(&self) -> Result<fancy_regex::Regex, ApiError> {
        if !matches!(self.apply_to.as_str(), "all" | "queues" | "exchanges") {
            return Err(ApiError::bad_request(format!(
                "apply-to must be all, queues or exchanges, not {:?}",
                self.apply_to
            )));
        }
        for key in self.definition.keys() {
            if !KEYS.iter().any(|(k, _)| k == key) {
                return Err(ApiError::bad_request(format!(
                    "policy key {key:?} is not supported (supported: {})",
                    KEYS.map(|(k, _)| k).join(", ")
                )));
            }
        }
        QueueArgs::parse(&self.arguments()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        crate::users::permissions::compile(&self.pattern).map_err(ApiError::bad_request)
    }
}

/// The policies in force, and where they are kept.
pub struct Policies {
    file: Option<PathBuf>,
    all: parking_lot::RwLock<Vec<(Policy, fancy_regex::Regex)>>,
    /// One change at a time (read, change, put in force).
    editing: tokio::sync::Mutex<()>,
    /// In a cluster: commits the whole list to the metadata group, whose
    /// observer puts it in force on every node
    /// ([`Policies::install_shared`]).
    share: std::sync::OnceLock<crate::cluster::Share>,
}

impl Policies {
    /// The policies kept in `file` (None: in memory only); a missing file
    /// is none.
    pub fn load(file: Option<PathBuf>) -> Result<Policies, String> {
        let mut all = Vec::new();
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let list: Vec<Policy> = serde_json::from_str(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    for p in list {
                        let re = p.check().map_err(|e| format!("{}: {e}", path.display()))?;
                        all.push((p, re));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(Policies {
            file,
            all: parking_lot::RwLock::new(all),
            editing: tokio::sync::Mutex::new(()),
            share: std::sync::OnceLock::new(),
        })
    }

    /// From now on, changes go to the cluster through `share`.
    pub fn share_through(&self, share: crate::cluster::Share) {
        let _ = self.share.set(share);
    }

    /// Puts the cluster's list of policies (`text`, JSON) in force here:
    /// kept in this node's file and applied to every queue.
    pub fn install_shared(&self, text: &[u8], broker: &Broker) -> Result<(), String> {
        let list: Vec<Policy> = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let mut all = Vec::with_capacity(list.len());
        for p in list {
            let re = p.check().map_err(|e| e.to_string())?;
            all.push((p, re));
        }
        // In force first: a file that cannot be written here must not
        // leave this node's queues on the old policies.
        *self.all.write() = all;
        broker.reapply_policies();
        self.save()
            .map_err(|e| format!("in force, but not saved here: {e}"))
    }

    /// Puts `change` of the policies in force (here, or through the
    /// cluster on every node); what it returns.
    async fn change<T>(
        &self,
        broker: &Broker,
        change: impl FnOnce(&mut Vec<(Policy, fancy_regex::Regex)>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _one_at_a_time = self.editing.lock().await;
        let mut next = self.all.read().clone();
        let out = change(&mut next)?;
        if let Some(share) = self.share.get() {
            let list: Vec<&Policy> = next.iter().map(|(p, _)| p).collect();
            let text =
                serde_json::to_vec(&list).map_err(|e| ApiError::bad_request(e.to_string()))?;
            share(text).await.map_err(ApiError::core)?;
            return Ok(out);
        }
        *self.all.write() = next;
        self.save()?;
        broker.reapply_policies();
        Ok(out)
    }

    /// The highest-priority policy matching `queue`.
    pub fn matching(&self, vhost: &str, queue: &str) -> Option<Policy> {
        let all = self.all.read();
        all.iter()
            .filter(|(p, re)| {
                p.vhost == vhost && p.apply_to != "exchanges" && re.is_match(queue).unwrap_or(false)
            })
            .max_by_key(|(p, _)| p.priority)
            .map(|(p, _)| p.clone())
    }

    /// The arguments the policy matching `queue` adds.
    pub fn for_queue(&self, vhost: &str, queue: &str) -> Option<FieldTable> {
        self.matching(vhost, queue).map(|p| p.arguments())
    }

    /// Every policy, by vhost and name.
    pub fn list(&self) -> Vec<Policy> {
        let mut all: Vec<Policy> = self.all.read().iter().map(|(p, _)| p.clone()).collect();
        all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        all
    }

    fn save(&self) -> Result<(), ApiError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&self.list())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, text.as_bytes())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| ApiError::bad_request(format!("cannot save policies: {e}")))
    }

    /// Adds or replaces `p` (checked), keeps it, and puts it in force on
    /// every queue; whether it was new.
    pub async fn put(&self, p: Policy, broker: &Broker) -> Result<bool, ApiError> {
        let re = p.check()?;
        self.change(broker, move |all| {
            let before = all.len();
            all.retain(|(q, _)| !(q.vhost == p.vhost && q.name == p.name));
            let created = all.len() == before;
            all.push((p, re));
            Ok(created)
        })
        .await
    }

    /// Removes every policy of a deleted vhost.
    pub async fn forget_vhost(&self, vhost: &str, broker: &Broker) -> Result<(), ApiError> {
        if !self.all.read().iter().any(|(p, _)| p.vhost == vhost) {
            return Ok(());
        }
        self.change(broker, |all| {
            all.retain(|(p, _)| p.vhost != vhost);
            Ok(())
        })
        .await
    }

    /// Removes a policy; its queues go back to their own arguments.
    pub async fn delete(&self, vhost: &str, name: &str, broker: &Broker) -> Result<(), ApiError> {
        self.change(broker, |all| {
            let before = all.len();
            all.retain(|(p, _)| !(p.vhost == vhost && p.name == name));
            if all.len() == before {
                return Err(ApiError::not_found());
            }
            Ok(())
        })
        .await
    }
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "priority": p.priority,
        "definition": p.definition,
    })
}

pub async fn policies(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    caller.need(Level::Monitoring)?;
    let items = state.policies.list().iter().map(policy_json).collect();
    Ok(super::json(apply(items, &q)?))
}

pub async fn policies_in(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    caller.need(Level::Monitoring)?;
    let items = state
        .policies
        .list()
        .iter()
        .filter(|p| p.vhost == v)
        .map(policy_json)
        .collect();
    Ok(super::json(apply(items, &q)?))
}

pub async fn policy(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    caller.need(Level::Monitoring)?;
    state
        .policies
        .list()
        .iter()
        .find(|p| p.vhost == v && p.name == name)
        .map(|p| super::json(policy_json(p)))
        .ok_or_else(ApiError::not_found)
}

/// The body of `PUT /api/policies/{vhost}/{name}`.
#[derive(Debug, Deserialize)]
struct PolicyBody {
    pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    apply_to: String,
    #[serde(default)]
    priority: i64,
    definition: serde_json::Map<String, Value>,
}

/// `PUT /api/policies/{vhost}/{name}` (administrators and RabbitMQ's
/// `policymaker`).
pub async fn put_policy(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    if !caller.tags.iter().any(|t| t == "policymaker") {
        caller.need(Level::Administrator)?;
    }
    if !state.has_vhost(&v) {
        return Err(ApiError::not_found());
    }
    let b: PolicyBody = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("invalid policy: {e}")))?;
    let created = state
        .policies
        .put(
            Policy {
                vhost: v,
                name,
                pattern: b.pattern,
                apply_to: b.apply_to,
                priority: b.priority,
                definition: b.definition,
            },
            &state.broker,
        )
        .await?;
    Ok(done(created))
}

pub async fn delete_policy(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    if !caller.tags.iter().any(|t| t == "policymaker") {
        caller.need(Level::Administrator)?;
    }
    state.policies.delete(&v, &name, &state.broker).await?;
    Ok(done(false))
}
