//! Definitions: the broker's setup as RabbitMQ's definitions file (users,
//! vhosts, permissions, topic permissions, exchanges, queues, bindings),
//! exported by `GET /api/definitions` and imported by `POST
//! /api/definitions` or `junction --definitions FILE` at start. A file
//! exported from RabbitMQ imports here, its users' SHA-256 password hashes
//! included.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use junction_core::interop::{json_table, table_json};
use junction_core::{Binding, Broker, Destination, ExchangeDef, ExchangeKind, QueueDef, VhostInfo};
use serde_json::{Value, json};

use super::users::{permission_rows, stored_hash, tags_of, topic_rows, user_json};
use super::{ApiError, Caller, Level, MgmtState, done};
use crate::auth::FileAuth;
use crate::users::UsersError;

type St = State<Arc<MgmtState>>;
type Answer = Result<Response, ApiError>;

/// Exchanges every vhost has from the start: not exported.
fn builtin(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.") || name == "junction.mqtt.sys"
}

/// The definitions of `broker` (and of the users file, when there is one).
pub fn export(
    broker: &Broker,
    users: Option<&FileAuth>,
    policies: &super::policies::Policies,
) -> Result<Value, ApiError> {
    let mut vhosts = Vec::new();
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for v in broker.vhost_names() {
        let info = broker.vhost_info(&v).unwrap_or_default();
        vhosts.push(json!({
            "name": v,
            "description": info.description,
            "tags": info.tags,
            "metadata": {
                "description": info.description,
                "tags": info.tags,
                "default_queue_type": info.default_queue_type.as_deref().unwrap_or("classic"),
            },
        }));
        let mut exclusive = std::collections::HashSet::new();
        for q in broker.queues(&v).map_err(ApiError::core)? {
            if q.def.exclusive_owner.is_some() {
                exclusive.insert(q.def.name.clone());
                continue;
            }
            queues.push(json!({
                "name": q.def.name,
                "vhost": v,
                "durable": q.def.durable,
                "auto_delete": q.def.auto_delete,
                "arguments": table_json(&q.def.arguments),
            }));
        }
        for x in broker.exchanges(&v).map_err(ApiError::core)? {
            if builtin(&x.name) {
                continue;
            }
            exchanges.push(json!({
                "name": x.name,
                "vhost": v,
                "type": x.kind.as_str(),
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table_json(&x.arguments),
            }));
        }
        for b in broker.bindings(&v).map_err(ApiError::core)? {
            let (dest, dtype) = match &b.destination {
                Destination::Queue(q) if exclusive.contains(q) => continue,
                Destination::Queue(q) => (q.clone(), "queue"),
                Destination::Exchange(x) => (x.clone(), "exchange"),
            };
            if b.source == "junction.mqtt.sys" {
                continue;
            }
            bindings.push(json!({
                "source": b.source,
                "vhost": v,
                "destination": dest,
                "destination_type": dtype,
                "routing_key": b.routing_key,
                "arguments": table_json(&b.arguments),
            }));
        }
    }
    let (mut users_out, mut permissions, mut topic_permissions) =
        (Vec::new(), Vec::new(), Vec::new());
    if let Some(users) = users {
        let db = users.db();
        users_out = db.list().filter_map(|u| user_json(&db, &u.name)).collect();
        permissions = permission_rows(&db);
        topic_permissions = topic_rows(&db);
    }
    Ok(json!({
        "rabbit_version": "3.13.0",
        "rabbitmq_version": "3.13.0",
        "product_name": "Junction",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users_out,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "global_parameters": [],
        "policies": policies.list(),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }))
}

fn text<'a>(v: &'a Value, k: &str) -> Result<&'a str, ApiError> {
    v.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("{k} is missing in {v}")))
}

fn list<'a>(defs: &'a Value, k: &str) -> &'a [Value] {
    defs.get(k)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn flag(v: &Value, k: &str, default: bool) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(default)
}

/// Imports `defs`: vhosts (made if new, kept in the store), users
/// with their hashes and tags, permissions, topic permissions, exchanges,
/// queues and bindings, in that order; what exists already is kept or
/// updated as a declare would, then policies. Parameters are refused
/// until Junction has them, rather than dropped (the node's own
/// `cluster_name` and `internal_cluster_id` aside).
pub async fn import(
    broker: &Arc<Broker>,
    users: Option<&Arc<FileAuth>>,
    policies: &super::policies::Policies,
    defs: &Value,
) -> Result<(), ApiError> {
    for k in ["parameters", "global_parameters"] {
        let n = list(defs, k)
            .iter()
            .filter(|p| {
                // A node's own identity, meaningless elsewhere.
                let name = p.get("name").and_then(Value::as_str);
                !(k == "global_parameters"
                    && matches!(name, Some("cluster_name" | "internal_cluster_id")))
            })
            .count();
        if n > 0 {
            return Err(ApiError::bad_request(format!(
                "the definitions hold {n} {k}; Junction does not support them yet"
            )));
        }
    }
    for v in list(defs, "vhosts") {
        let name = text(v, "name")?;
        // RabbitMQ 3.x writes the description and tags at the top and
        // again under `metadata`; either will do.
        let field = |k: &str| {
            v.get(k)
                .filter(|x| !x.is_null())
                .or_else(|| v.get("metadata").and_then(|m| m.get(k)))
        };
        let current = broker.vhost_info(name).unwrap_or_default();
        let info = VhostInfo {
            description: field("description")
                .and_then(Value::as_str)
                .map_or(current.description, str::to_owned),
            tags: match field("tags") {
                Some(t) => tags_of(Some(t)),
                None => current.tags,
            },
            default_queue_type: field("default_queue_type")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(current.default_queue_type),
            configured: current.configured,
        };
        broker.put_vhost(name, info).await.map_err(ApiError::core)?;
    }
    let wanted_users = !list(defs, "users").is_empty()
        || !list(defs, "permissions").is_empty()
        || !list(defs, "topic_permissions").is_empty();
    if wanted_users {
        let users = users.ok_or_else(|| {
            ApiError::bad_request("the definitions hold users but the users file is not a back-end")
        })?;
        let mut changes = Vec::new();
        for u in list(defs, "users") {
            let name = text(u, "name")?.to_owned();
            let hash = stored_hash(
                text(u, "password_hash")?,
                u.get("hashing_algorithm").and_then(Value::as_str),
            )?;
            let tags = tags_of(u.get("tags"));
            changes.push((name, hash, tags));
        }
        let mut perms = Vec::new();
        for p in list(defs, "permissions") {
            perms.push([
                text(p, "user")?.to_owned(),
                text(p, "vhost")?.to_owned(),
                text(p, "configure")?.to_owned(),
                text(p, "write")?.to_owned(),
                text(p, "read")?.to_owned(),
            ]);
        }
        let mut topics = Vec::new();
        for p in list(defs, "topic_permissions") {
            topics.push([
                text(p, "user")?.to_owned(),
                text(p, "vhost")?.to_owned(),
                text(p, "exchange")?.to_owned(),
                text(p, "write")?.to_owned(),
                text(p, "read")?.to_owned(),
            ]);
        }
        let users = Arc::clone(users);
        tokio::task::spawn_blocking(move || {
            users.edit(|db| {
                for (name, hash, tags) in changes {
                    db.put(&name, None, Some(&hash), tags)?;
                }
                for [u, v, c, w, r] in perms {
                    db.set_permissions(&u, &v, &c, &w, &r)?;
                }
                for [u, v, x, w, r] in topics {
                    db.set_topic_permissions(&u, &v, &x, &w, &r)?;
                }
                Ok::<(), UsersError>(())
            })
        })
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .map_err(|e| match e {
            // Not committed by the cluster: 503 (or 400), as other edits.
            UsersError::Cluster(_) => super::users::users_error(e),
            other => ApiError::bad_request(other.to_string()),
        })?;
    }
    // Policies are checked before anything changes below them.
    let mut wanted_policies = Vec::new();
    for p in list(defs, "policies") {
        let p: super::policies::Policy = serde_json::from_value(p.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid policy {p}: {e}")))?;
        wanted_policies.push(p);
    }
    for p in wanted_policies {
        policies.put(p, broker).await?;
    }
    for x in list(defs, "exchanges") {
        let def = ExchangeDef {
            name: text(x, "name")?.to_owned(),
            kind: text(x, "type")?
                .parse::<ExchangeKind>()
                .map_err(ApiError::core)?,
            durable: flag(x, "durable", true),
            auto_delete: flag(x, "auto_delete", false),
            internal: flag(x, "internal", false),
            arguments: x.get("arguments").map(json_table).unwrap_or_default(),
        };
        broker
            .declare_exchange(text(x, "vhost")?, def, false)
            .await
            .map_err(ApiError::core)?;
    }
    for q in list(defs, "queues") {
        let def = QueueDef {
            name: text(q, "name")?.to_owned(),
            durable: flag(q, "durable", true),
            exclusive_owner: None,
            auto_delete: flag(q, "auto_delete", false),
            arguments: q.get("arguments").map(json_table).unwrap_or_default(),
        };
        broker
            .declare_queue(text(q, "vhost")?, def, false)
            .await
            .map_err(ApiError::core)?;
    }
    for b in list(defs, "bindings") {
        let dest = text(b, "destination")?.to_owned();
        let binding = Binding {
            source: text(b, "source")?.to_owned(),
            destination: match text(b, "destination_type")? {
                "queue" => Destination::Queue(dest),
                "exchange" => Destination::Exchange(dest),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "destination_type {other:?} is neither queue nor exchange"
                    )));
                }
            },
            routing_key: b
                .get("routing_key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            arguments: b.get("arguments").map(json_table).unwrap_or_default(),
        };
        broker
            .bind(text(b, "vhost")?, binding, None)
            .await
            .map_err(ApiError::core)?;
    }
    Ok(())
}

/// A posted definitions file: the JSON itself, or (rabbitmqadmin) an
/// object whose `file` field holds it as a string.
fn parse_file(raw: &Bytes) -> Result<Value, ApiError> {
    let defs: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    Ok(match defs.get("file") {
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON in file: {e}")))?,
        _ => defs,
    })
}

pub async fn get_definitions(State(state): St, caller: Caller) -> Answer {
    caller.need(Level::Administrator)?;
    Ok(super::json(export(
        &state.broker,
        state.users.as_deref(),
        &state.policies,
    )?))
}

pub async fn post_definitions(State(state): St, caller: Caller, raw: Bytes) -> Answer {
    caller.need(Level::Administrator)?;
    let defs = parse_file(&raw)?;
    import(&state.broker, state.users.as_ref(), &state.policies, &defs).await?;
    tracing::info!(by = %caller.user, "definitions imported");
    Ok(done(false))
}

/// The lists a vhost's definitions hold (RabbitMQ's
/// `/api/definitions/{vhost}`): its items, without their `vhost` field.
const VHOST_LISTS: [&str; 5] = ["parameters", "policies", "queues", "exchanges", "bindings"];

/// `GET /api/definitions/{vhost}`: that vhost's queues, exchanges,
/// bindings and policies, each without its `vhost` field (users, vhosts
/// and permissions are the broker's, not the vhost's).
pub async fn get_vhost_definitions(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
) -> Answer {
    caller.need(Level::Administrator)?;
    if !state.has_vhost(&v) {
        return Err(ApiError::not_found());
    }
    let all = export(&state.broker, None, &state.policies)?;
    let mut out = serde_json::Map::new();
    for k in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ] {
        if let Some(x) = all.get(k) {
            out.insert(k.to_owned(), x.clone());
        }
    }
    for k in VHOST_LISTS {
        let items: Vec<Value> = list(&all, k)
            .iter()
            .filter(|x| x.get("vhost").and_then(Value::as_str) == Some(v.as_str()))
            .map(|x| {
                let mut x = x.clone();
                if let Some(o) = x.as_object_mut() {
                    o.remove("vhost");
                }
                x
            })
            .collect();
        out.insert(k.to_owned(), Value::Array(items));
    }
    Ok(super::json(Value::Object(out)))
}

/// `POST /api/definitions/{vhost}`: imports a file's queues, exchanges,
/// bindings and policies into that vhost, whatever vhost they name;
/// users, vhosts and permissions in it are left alone.
pub async fn post_vhost_definitions(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    raw: Bytes,
) -> Answer {
    caller.need(Level::Administrator)?;
    if !state.has_vhost(&v) {
        return Err(ApiError::not_found());
    }
    let defs = parse_file(&raw)?;
    let mut scoped = serde_json::Map::new();
    for k in VHOST_LISTS {
        let items: Vec<Value> = list(&defs, k)
            .iter()
            .map(|x| {
                let mut x = x.clone();
                if let Some(o) = x.as_object_mut() {
                    o.insert("vhost".to_owned(), Value::String(v.clone()));
                }
                x
            })
            .collect();
        scoped.insert(k.to_owned(), Value::Array(items));
    }
    import(
        &state.broker,
        state.users.as_ref(),
        &state.policies,
        &Value::Object(scoped),
    )
    .await?;
    tracing::info!(by = %caller.user, vhost = %v, "vhost definitions imported");
    Ok(done(false))
}
