//! Overview, nodes, vhosts, queues, exchanges and bindings: RabbitMQ's
//! JSON for each, and the writes on them (declare, delete, purge, get,
//! publish, bind).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use junction_core::interop::{json_table, table_json};
use junction_core::{
    Binding, Destination, ExchangeDef, ExchangeKind, Message, Origin, Permission, Properties,
    Protocol, QueueDef, QueueSummary, Resource, Settle, VhostInfo,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::query::{ListQuery, apply};
use super::users::tags_of;
use super::{ApiError, Caller, Level, MgmtState, body, done};

type St = State<Arc<MgmtState>>;
type Answer = Result<Response, ApiError>;

/// A list answer after the list parameters.
fn listed(items: Vec<Value>, q: &ListQuery) -> Answer {
    Ok(super::json(apply(items, q)?))
}

/// The vhosts the caller sees, or `only` if it names one it sees (404 for
/// one that does not exist, 401 for one it may not see).
async fn visible_vhosts(
    state: &MgmtState,
    caller: &Caller,
    only: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let all = state.broker.vhost_names();
    if let Some(v) = only {
        if !all.iter().any(|x| x == v) {
            return Err(ApiError::not_found());
        }
        if !caller.sees(state, v).await {
            return Err(ApiError::access_refused(format!(
                "access to vhost '{v}' refused for user '{}'",
                caller.user
            )));
        }
        return Ok(vec![v.to_owned()]);
    }
    let mut seen = Vec::new();
    for v in all {
        if caller.sees(state, &v).await {
            seen.push(v);
        }
    }
    Ok(seen)
}

/// RFC 3339 UTC time of `at` before now.
fn time_before(ago: std::time::Duration) -> String {
    let at = std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::UNIX_EPOCH);
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_time(secs)
}

/// `YYYY-MM-DD HH:MM:SS` for Unix seconds (RabbitMQ 3.x's `idle_since`).
fn civil_time(secs: u64) -> String {
    // Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What any node can say of a queue: its declaration, type, node and
/// policy.
fn declared_queue_json(
    state: &MgmtState,
    vhost: &str,
    def: &junction_core::QueueDef,
    node: &str,
) -> serde_json::Map<String, Value> {
    let kind = def
        .arguments
        .get("x-queue-type")
        .map(junction_core::interop::value_text)
        .unwrap_or_else(|| "classic".to_owned());
    let policy = state.policies.matching(vhost, &def.name);
    let Value::Object(fields) = json!({
        "name": def.name,
        "vhost": vhost,
        "durable": def.durable,
        "auto_delete": def.auto_delete,
        "exclusive": def.exclusive_owner.is_some(),
        "arguments": table_json(&def.arguments),
        "type": kind,
        "node": node,
        "policy": policy.as_ref().map(|p| p.name.clone()),
        "effective_policy_definition": policy.map_or_else(|| json!({}), |p| Value::Object(p.definition)),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    let mut fields = fields;
    if let Some(cluster) = state.cluster.as_ref().filter(|_| kind == "quorum") {
        // RabbitMQ's fields of a quorum queue: its leader and its group's
        // members.
        fields.insert("leader".to_owned(), json!(node));
        fields.insert(
            "members".to_owned(),
            json!(cluster.queue_members(vhost, &def.name)),
        );
    }
    fields
}

fn queue_json(state: &MgmtState, vhost: &str, q: &QueueSummary, node: &str) -> Value {
    let mut fields = declared_queue_json(state, vhost, &q.def, node);
    let Value::Object(counts) = json!({
        "messages": q.ready + q.unacked,
        "messages_ready": q.ready,
        "messages_unacknowledged": q.unacked,
        "message_bytes_ready": q.ready_bytes,
        "memory": q.memory,
        "consumers": q.consumers,
        "state": "running",
        "idle_since": time_before(q.idle_for),
        "message_stats": state
            .rates
            .message_stats(vhost, &q.def.name, q.published, q.delivered),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    fields.extend(counts);
    Value::Object(fields)
}

/// A queue of another node of the cluster: its declaration and its node;
/// its counts are that node's to report, so they are left out (as
/// RabbitMQ leaves out statistics it has not received).
fn remote_queue_json(state: &MgmtState, vhost: &str, q: &junction_core::RemoteQueue) -> Value {
    let node = crate::cluster::display_name(&q.node);
    Value::Object(declared_queue_json(state, vhost, &q.def, &node))
}

fn exchange_json(vhost: &str, x: &ExchangeDef) -> Value {
    json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_json(&x.arguments),
        "user_who_performed_action": "",
    })
}

/// RabbitMQ's `properties_key`: the routing key when there are no
/// arguments (`~` for an empty key), else the key, `~` and a digest of the
/// arguments.
fn properties_key(b: &Binding) -> String {
    if b.arguments.is_empty() {
        if b.routing_key.is_empty() {
            return "~".to_owned();
        }
        return b.routing_key.clone();
    }
    use blake2::Digest;
    let digest = blake2::Blake2s256::digest(table_json(&b.arguments).to_string().as_bytes());
    let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..9]);
    format!("{}~{short}", b.routing_key)
}

fn binding_json(vhost: &str, b: &Binding) -> Value {
    let (dest, dtype) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), "queue"),
        Destination::Exchange(x) => (x.as_str(), "exchange"),
    };
    json!({
        "source": b.source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": dtype,
        "routing_key": b.routing_key,
        "arguments": table_json(&b.arguments),
        "properties_key": properties_key(b),
    })
}

// --------------------------------------------------------------------------
// overview, nodes, vhosts, health
// --------------------------------------------------------------------------

pub async fn overview(State(state): St, caller: Caller) -> Answer {
    let s = state.broker.stats();
    let vhosts = visible_vhosts(&state, &caller, None).await?;
    let (mut queues, mut exchanges, mut ready, mut unacked, mut consumers) = (0, 0, 0, 0, 0);
    for v in &vhosts {
        for q in state.broker.queues(v).map_err(ApiError::core)? {
            queues += 1;
            ready += q.ready;
            unacked += q.unacked;
            consumers += q.consumers;
        }
        exchanges += state.broker.exchanges(v).map_err(ApiError::core)?.len();
    }
    let connections: u64 = s.connections.iter().map(|(_, n)| n).sum();
    Ok(super::json(json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Junction",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": "3.13.0",
        "cluster_name": state.node.clone(),
        "node": state.node.clone(),
        "object_totals": {
            "connections": connections,
            "channels": 0,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": state.rates.overall_stats(s.messages_in, s.messages_out),
        "listeners": [],
    })))
}

fn node_json(state: &MgmtState) -> Value {
    let s = state.broker.stats();
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let fd_total = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096);
    json!({
        "name": state.node.clone(),
        "type": "disc",
        "running": true,
        "mem_used": rss,
        "disk_free": state.broker.store().free_disk_bytes(),
        "mem_alarm": s.memory_alarm,
        "disk_free_alarm": s.disk_alarm,
        "fd_used": fds,
        "fd_total": fd_total,
        "uptime": state.started.elapsed().as_millis() as u64,
        "held_message_bytes": s.held_bytes,
    })
}

/// `GET /metrics` behind credentials (monitoring or administrator).
pub async fn metrics(State(state): St, caller: Caller) -> Answer {
    caller.need(Level::Monitoring)?;
    let text = state
        .metrics
        .as_ref()
        .map(|render| render())
        .unwrap_or_default();
    Ok((
        [(header::CONTENT_TYPE, crate::admin::METRICS_CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// `POST /api/rebalance/queues` (administrator): quorum queues' leaders
/// spread over the reachable nodes, as RabbitMQ's endpoint does; answers
/// once the moves are done, with how many were planned and made.
pub async fn rebalance_queues(State(state): St, caller: Caller) -> Answer {
    caller.need(Level::Administrator)?;
    let (queues, planned, moved) = match &state.cluster {
        Some(cluster) => cluster.rebalance_queues().await,
        None => (0, 0, 0),
    };
    Ok(super::json(
        json!({"queues": queues, "planned": planned, "moved": moved}),
    ))
}

/// The body of `POST /api/nodes`.
#[derive(Deserialize, Default)]
struct JoinBody {
    /// `name@ip:port` of the node's peer listener.
    node: String,
}

/// `POST /api/nodes` (administrator) with `{"node": "name@ip:port"}`:
/// adds that node, started with `[cluster] join`, to this node's cluster
/// (`junction cluster join`); answers once it is a voter.
pub async fn join_node(State(state): St, caller: Caller, raw: Bytes) -> Answer {
    caller.need(Level::Administrator)?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::bad_request("this node is not in a cluster"));
    };
    let b: JoinBody = body(&raw)?;
    let (name, addr) = b
        .node
        .split_once('@')
        .and_then(|(n, a)| Some((n, a.parse::<std::net::SocketAddr>().ok()?)))
        .ok_or_else(|| ApiError::bad_request(format!("{:?} is not name@ip:port", b.node)))?;
    cluster
        .join(name, addr)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "join_failed", e))?;
    Ok(super::json(
        json!({"joined": crate::cluster::display_name(name)}),
    ))
}

/// `DELETE /api/nodes/{name}` (administrator): removes a stopped member
/// from the cluster for good (`junction cluster leave`, RabbitMQ's
/// `forget_cluster_node`); answers what was removed with it.
pub async fn leave_node(State(state): St, caller: Caller, Path(name): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::bad_request("this node is not in a cluster"));
    };
    let name = name.strip_prefix("junction@").unwrap_or(&name);
    let forgotten = cluster
        .leave(&state.broker, name)
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "leave_failed", e))?;
    Ok(super::json(json!({
        "left": crate::cluster::display_name(name),
        "client_ids": forgotten.claims,
        "routes": forgotten.routes,
        "queues": forgotten.queues,
    })))
}

/// `/api/nodes`: this node alone, or every member of its cluster (the
/// others as far as this node knows them: linked or not, and their lag
/// when this node leads).
pub async fn nodes(State(state): St, caller: Caller) -> Answer {
    caller.need(Level::Monitoring)?;
    Ok(super::json(Value::Array(nodes_json(&state))))
}

pub async fn node(State(state): St, caller: Caller, Path(name): Path<String>) -> Answer {
    caller.need(Level::Monitoring)?;
    nodes_json(&state)
        .into_iter()
        .find(|n| n["name"] == name.as_str())
        .map(super::json)
        .ok_or_else(ApiError::not_found)
}

fn nodes_json(state: &MgmtState) -> Vec<Value> {
    match &state.cluster {
        None => vec![node_json(state)],
        Some(cluster) => cluster.nodes_json(node_json(state)),
    }
}

/// `/api/health/checks/alarms` and `local-alarms` (one node: the same).
pub async fn alarms(State(state): St, _caller: Caller) -> Answer {
    let (memory, disk) = state.broker.alarms();
    if !memory && !disk {
        return Ok(super::json(json!({"status": "ok"})));
    }
    let mut alarms = Vec::new();
    if memory {
        alarms.push(json!({"node": state.node.clone(), "resource": "memory"}));
    }
    if disk {
        alarms.push(json!({"node": state.node.clone(), "resource": "disk"}));
    }
    let body = json!({
        "status": "failed",
        "reason": "resource alarm(s) in effect in the cluster",
        "alarms": alarms,
    });
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

pub async fn vhosts(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let mut items = Vec::new();
    for v in visible_vhosts(&state, &caller, None).await? {
        items.push(vhost_json(&state, &v)?);
    }
    listed(items, &q)
}

fn vhost_json(state: &MgmtState, v: &str) -> Result<Value, ApiError> {
    let info = state.broker.vhost_info(v).ok_or_else(ApiError::not_found)?;
    let queues = state.broker.queues(v).map_err(ApiError::core)?;
    let ready: u64 = queues.iter().map(|q| q.ready).sum();
    let unacked: u64 = queues.iter().map(|q| q.unacked).sum();
    Ok(json!({
        "name": v,
        "description": info.description,
        "tags": info.tags,
        "default_queue_type": info.default_queue_type.as_deref().unwrap_or("classic"),
        "metadata": {
            "description": info.description,
            "tags": info.tags,
            "default_queue_type": info.default_queue_type.as_deref().unwrap_or("classic"),
        },
        "tracing": false,
        "configured": info.configured,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    }))
}

/// The body of `PUT /api/vhosts/{vhost}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VhostBody {
    description: Option<String>,
    /// A list, or RabbitMQ's comma-separated string.
    tags: Option<Value>,
    default_queue_type: Option<String>,
    #[allow(dead_code)]
    #[serde(deserialize_with = "flex_bool")]
    tracing: Option<bool>,
}

/// `PUT /api/vhosts/{vhost}`: makes the vhost (kept in the store) or
/// updates its description and tags.
pub async fn put_vhost(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    raw: Bytes,
) -> Answer {
    caller.need(Level::Administrator)?;
    let b: VhostBody = body(&raw)?;
    let current = state.broker.vhost_info(&v).unwrap_or_default();
    let info = VhostInfo {
        description: b.description.unwrap_or(current.description),
        tags: match b.tags {
            Some(t) => tags_of(Some(&t)),
            None => current.tags,
        },
        default_queue_type: b.default_queue_type.or(current.default_queue_type),
        configured: current.configured,
    };
    let created = state
        .broker
        .put_vhost(&v, info)
        .await
        .map_err(ApiError::core)?;
    Ok(done(created))
}

/// `DELETE /api/vhosts/{vhost}`: deletes a vhost made at run time with
/// everything in it, its policies and every user's permissions there.
pub async fn delete_vhost(State(state): St, caller: Caller, Path(v): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    state
        .broker
        .delete_vhost(&v)
        .await
        .map_err(ApiError::core)?;
    state.policies.forget_vhost(&v, &state.broker).await?;
    if state.users.is_some() {
        let vhost = v.clone();
        super::users::edit(&state, move |db| Ok(db.forget_vhost(&vhost))).await?;
    }
    Ok(done(false))
}

pub async fn vhost(State(state): St, caller: Caller, Path(v): Path<String>) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    Ok(super::json(vhost_json(&state, &v)?))
}

// --------------------------------------------------------------------------
// queues
// --------------------------------------------------------------------------

async fn queues_of(state: &MgmtState, vhosts: &[String]) -> Result<Vec<Value>, ApiError> {
    let node = state.node.clone();
    let mut items = Vec::new();
    for v in vhosts {
        for q in state.broker.queues(v).map_err(ApiError::core)? {
            items.push(queue_json(state, v, &q, &node));
        }
        for q in state.broker.remote_queues(v).map_err(ApiError::core)? {
            items.push(remote_queue_json(state, v, &q));
        }
    }
    items.sort_by(|a, b| {
        (a["vhost"].as_str(), a["name"].as_str()).cmp(&(b["vhost"].as_str(), b["name"].as_str()))
    });
    Ok(items)
}

pub async fn queues(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, None).await?;
    listed(queues_of(&state, &vhosts).await?, &q)
}

pub async fn queues_in(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, Some(&v)).await?;
    listed(queues_of(&state, &vhosts).await?, &q)
}

pub async fn queue(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    let local = state
        .broker
        .queues(&v)
        .map_err(ApiError::core)?
        .into_iter()
        .find(|q| q.def.name == name);
    let mut body = match local {
        Some(q) => queue_json(&state, &v, &q, &state.node),
        None => state
            .broker
            .remote_queues(&v)
            .map_err(ApiError::core)?
            .iter()
            .find(|q| q.def.name == name)
            .map(|q| remote_queue_json(&state, &v, q))
            .ok_or_else(ApiError::not_found)?,
    };
    let bindings: Vec<Value> = state
        .broker
        .bindings(&v)
        .map_err(ApiError::core)?
        .iter()
        .filter(|b| b.destination == Destination::Queue(name.clone()))
        .map(|b| binding_json(&v, b))
        .collect();
    body["bindings_count"] = json!(bindings.len() + 1);
    Ok(super::json(body))
}

/// A boolean as RabbitMQ's API takes it: `true` or `"true"` (rabbitmqadmin
/// sends strings).
fn flex_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(other) => Err(D::Error::custom(format!("{other} is not a boolean"))),
    }
}

/// A count as RabbitMQ's API takes it: `5` or `"5"`.
fn flex_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| D::Error::custom(format!("{n} is not a count"))),
        Some(Value::String(s)) => s
            .parse::<usize>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{s:?} is not a count"))),
        Some(other) => Err(D::Error::custom(format!("{other} is not a count"))),
    }
}

/// The body of `PUT /api/queues/{vhost}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueBody {
    #[serde(deserialize_with = "flex_bool")]
    durable: Option<bool>,
    #[serde(deserialize_with = "flex_bool")]
    auto_delete: Option<bool>,
    arguments: Option<Value>,
}

pub async fn put_queue(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    let b: QueueBody = body(&raw)?;
    caller
        .allow(
            &state,
            &v,
            &[(Permission::Configure, Resource::Queue(&name))],
        )
        .await?;
    let def = QueueDef {
        name: name.clone(),
        durable: b.durable.unwrap_or(true),
        exclusive_owner: None,
        auto_delete: b.auto_delete.unwrap_or(false),
        arguments: b.arguments.as_ref().map(json_table).unwrap_or_default(),
    };
    let info = state
        .broker
        .declare_queue(&v, def, false)
        .await
        .map_err(ApiError::core)?;
    Ok(done(info.created))
}

pub async fn delete_queue(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Answer {
    caller
        .allow(
            &state,
            &v,
            &[(Permission::Configure, Resource::Queue(&name))],
        )
        .await?;
    let if_unused = q.get("if-unused").is_some_and(|x| x == "true");
    let if_empty = q.get("if-empty").is_some_and(|x| x == "true");
    state
        .broker
        .delete_queue(&v, &name, if_unused, if_empty, None)
        .await
        .map_err(ApiError::core)?;
    Ok(done(false))
}

pub async fn purge_queue(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    caller
        .allow(&state, &v, &[(Permission::Read, Resource::Queue(&name))])
        .await?;
    state
        .broker
        .purge_queue(&v, &name, None)
        .await
        .map_err(ApiError::core)?;
    Ok(done(false))
}

pub async fn queue_bindings(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    state
        .broker
        .queue_for(&v, &name, None)
        .map_err(ApiError::core)?;
    // RabbitMQ lists the default exchange's implicit binding first.
    let mut items = vec![json!({
        "source": "",
        "vhost": v,
        "destination": name,
        "destination_type": "queue",
        "routing_key": name,
        "arguments": {},
        "properties_key": name,
    })];
    items.extend(
        state
            .broker
            .bindings(&v)
            .map_err(ApiError::core)?
            .iter()
            .filter(|b| b.destination == Destination::Queue(name.clone()))
            .map(|b| binding_json(&v, b)),
    );
    Ok(super::json(Value::Array(items)))
}

/// The body of `POST /api/queues/{vhost}/{name}/get`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GetBody {
    #[serde(deserialize_with = "flex_count")]
    count: Option<usize>,
    ackmode: Option<String>,
    encoding: Option<String>,
    #[serde(deserialize_with = "flex_count")]
    truncate: Option<usize>,
}

/// Most messages one get returns.
const MAX_GET: usize = 1000;

fn properties_json(p: &Properties) -> Value {
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_owned(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::from),
    );
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put("priority", p.priority.map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.kind.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    if !p.headers.is_empty() {
        put("headers", Some(table_json(&p.headers)));
    }
    Value::Object(o)
}

fn message_json(m: &Message, redelivered: bool, remaining: u64, g: &GetBody) -> Value {
    let body = &m.body;
    let shown = &body[..g.truncate.unwrap_or(usize::MAX).min(body.len())];
    let as_text = g.encoding.as_deref() != Some("base64");
    let (payload, encoding) = match std::str::from_utf8(shown) {
        Ok(s) if as_text => (s.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    json!({
        "payload_bytes": body.len(),
        "redelivered": redelivered,
        "exchange": m.exchange,
        "routing_key": m.routing_key,
        "message_count": remaining,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

pub async fn get_messages(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    let g: GetBody = body(&raw)?;
    caller
        .allow(&state, &v, &[(Permission::Read, Resource::Queue(&name))])
        .await?;
    let count = g.count.unwrap_or(1).min(MAX_GET);
    let broker = &state.broker;
    let queue = broker.queue_for(&v, &name, None).map_err(ApiError::core)?;
    let mode = g.ackmode.as_deref().unwrap_or("ack_requeue_true");
    if mode == "peek" {
        // Junction's own mode: a look that changes nothing.
        let q = Arc::clone(&queue);
        let found = tokio::task::spawn_blocking(move || q.peek(count))
            .await
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let total = queue.message_count();
        let items: Vec<Value> = found
            .iter()
            .enumerate()
            .map(|(i, m)| message_json(m, false, total.saturating_sub(i as u64 + 1), &g))
            .collect();
        return Ok(super::json(Value::Array(items)));
    }
    let (no_ack, after) = match mode {
        "ack_requeue_false" => (true, None),
        "ack_requeue_true" => (false, Some(Settle::Requeue)),
        "reject_requeue_true" => (false, Some(Settle::Requeue)),
        "reject_requeue_false" => (false, Some(Settle::Reject)),
        other => {
            return Err(ApiError::bad_request(format!(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true, reject_requeue_false or peek, not {other:?}"
            )));
        }
    };
    let holder = broker.new_consumer_id();
    let mut items = Vec::new();
    let mut held = Vec::new();
    for _ in 0..count {
        let Some(ok) = broker
            .get(&v, &name, holder, no_ack, None)
            .await
            .map_err(ApiError::core)?
        else {
            break;
        };
        items.push(message_json(
            &ok.delivery.message,
            ok.delivery.redelivered,
            ok.remaining,
            &g,
        ));
        held.push((ok.queue, ok.delivery.tag));
    }
    if let Some(how) = after {
        for (q, tag) in held {
            let _ = broker.settle(&q, holder, tag, how);
        }
    }
    Ok(super::json(Value::Array(items)))
}

// --------------------------------------------------------------------------
// exchanges
// --------------------------------------------------------------------------

fn exchanges_of(state: &MgmtState, vhosts: &[String]) -> Result<Vec<Value>, ApiError> {
    let mut items = Vec::new();
    for v in vhosts {
        for x in state.broker.exchanges(v).map_err(ApiError::core)? {
            items.push(exchange_json(v, &x));
        }
    }
    Ok(items)
}

pub async fn exchanges(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, None).await?;
    listed(exchanges_of(&state, &vhosts)?, &q)
}

pub async fn exchanges_in(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, Some(&v)).await?;
    listed(exchanges_of(&state, &vhosts)?, &q)
}

/// `amq.default` in a path is the default exchange (RabbitMQ).
fn exchange_name(name: &str) -> &str {
    if name == junction_core::access::DEFAULT_EXCHANGE {
        ""
    } else {
        name
    }
}

pub async fn exchange(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    let x = state
        .broker
        .exchange(&v, exchange_name(&name))
        .map_err(ApiError::core)?;
    Ok(super::json(exchange_json(&v, &x)))
}

/// The body of `PUT /api/exchanges/{vhost}/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(deserialize_with = "flex_bool")]
    durable: Option<bool>,
    #[serde(deserialize_with = "flex_bool")]
    auto_delete: Option<bool>,
    #[serde(deserialize_with = "flex_bool")]
    internal: Option<bool>,
    arguments: Option<Value>,
}

pub async fn put_exchange(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    let b: ExchangeBody = body(&raw)?;
    caller
        .allow(
            &state,
            &v,
            &[(Permission::Configure, Resource::Exchange(&name))],
        )
        .await?;
    let kind = b
        .kind
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("type is required"))?
        .parse::<ExchangeKind>()
        .map_err(ApiError::core)?;
    let existed = state.broker.exchange(&v, &name).is_ok();
    let def = ExchangeDef {
        name: name.clone(),
        kind,
        durable: b.durable.unwrap_or(true),
        auto_delete: b.auto_delete.unwrap_or(false),
        internal: b.internal.unwrap_or(false),
        arguments: b.arguments.as_ref().map(json_table).unwrap_or_default(),
    };
    state
        .broker
        .declare_exchange(&v, def, false)
        .await
        .map_err(ApiError::core)?;
    Ok(done(!existed))
}

pub async fn delete_exchange(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Answer {
    caller
        .allow(
            &state,
            &v,
            &[(Permission::Configure, Resource::Exchange(&name))],
        )
        .await?;
    let if_unused = q.get("if-unused").is_some_and(|x| x == "true");
    state
        .broker
        .delete_exchange(&v, &name, if_unused)
        .await
        .map_err(ApiError::core)?;
    Ok(done(false))
}

/// The body of `POST /api/exchanges/{vhost}/{name}/publish`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishBody {
    routing_key: String,
    payload: String,
    payload_encoding: Option<String>,
    properties: Option<Value>,
}

/// RabbitMQ's publish `properties` as the core's.
fn properties_from_json(v: Option<&Value>) -> Result<Properties, ApiError> {
    let mut p = Properties::default();
    let Some(Value::Object(o)) = v else {
        return Ok(p);
    };
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let small = |k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u8::try_from(n).ok())
    };
    p.content_type = text("content_type");
    p.content_encoding = text("content_encoding");
    p.delivery_mode = small("delivery_mode");
    p.priority = small("priority");
    p.correlation_id = text("correlation_id");
    p.reply_to = text("reply_to");
    p.expiration = text("expiration");
    p.message_id = text("message_id");
    p.timestamp = o.get("timestamp").and_then(Value::as_u64);
    p.kind = text("type");
    p.user_id = text("user_id");
    p.app_id = text("app_id");
    if let Some(h) = o.get("headers") {
        p.headers = json_table(h);
    }
    Ok(p)
}

pub async fn publish(
    State(state): St,
    caller: Caller,
    Path((v, name)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    let b: PublishBody = body(&raw)?;
    let exchange = exchange_name(&name).to_owned();
    caller
        .allow(
            &state,
            &v,
            &[(Permission::Write, Resource::Exchange(&exchange))],
        )
        .await?;
    let payload = match b.payload_encoding.as_deref().unwrap_or("string") {
        "string" => Bytes::from(b.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.payload.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not {other:?}"
            )));
        }
    };
    let mut m = Message::new(exchange, b.routing_key, payload);
    m.properties = properties_from_json(b.properties.as_ref())?;
    if let Some(uid) = &m.properties.user_id
        && *uid != caller.user
    {
        return Err(ApiError::bad_request(format!(
            "user_id property set to '{uid}' but authenticated user was '{}'",
            caller.user
        )));
    }
    m.origin = Origin {
        protocol: Protocol::Amqp,
        connection: state.broker.new_connection_id(),
    };
    let published = state.broker.publish(&v, m).await.map_err(ApiError::core)?;
    let routed = published.routed > 0;
    published.confirmed().await.map_err(ApiError::core)?;
    Ok(super::json(json!({"routed": routed})))
}

// --------------------------------------------------------------------------
// bindings
// --------------------------------------------------------------------------

fn bindings_of(state: &MgmtState, vhosts: &[String]) -> Result<Vec<Value>, ApiError> {
    let mut items = Vec::new();
    for v in vhosts {
        for b in state.broker.bindings(v).map_err(ApiError::core)? {
            items.push(binding_json(v, &b));
        }
    }
    Ok(items)
}

pub async fn bindings(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, None).await?;
    listed(bindings_of(&state, &vhosts)?, &q)
}

pub async fn bindings_in(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    let vhosts = visible_vhosts(&state, &caller, Some(&v)).await?;
    listed(bindings_of(&state, &vhosts)?, &q)
}

/// The destination a path names: `q/{name}` a queue, `e/{name}` an
/// exchange (404 otherwise).
fn destination(kind: &str, name: &str) -> Result<Destination, ApiError> {
    match kind {
        "q" => Ok(Destination::Queue(name.to_owned())),
        "e" => Ok(Destination::Exchange(name.to_owned())),
        _ => Err(ApiError::not_found()),
    }
}

fn between(
    state: &MgmtState,
    v: &str,
    source: &str,
    dest: &Destination,
) -> Result<Vec<Binding>, ApiError> {
    Ok(state
        .broker
        .bindings(v)
        .map_err(ApiError::core)?
        .into_iter()
        .filter(|b| b.source == source && b.destination == *dest)
        .collect())
}

pub async fn bindings_between(
    State(state): St,
    caller: Caller,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    let dest = destination(&kind, &dest)?;
    let items = between(&state, &v, &source, &dest)?
        .iter()
        .map(|b| binding_json(&v, b))
        .collect();
    Ok(super::json(Value::Array(items)))
}

/// The body of `POST /api/bindings/{vhost}/e/{source}/{q|e}/{dest}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BindingBody {
    routing_key: String,
    arguments: Option<Value>,
}

/// RabbitMQ's checks for binding and unbinding: write on the
/// destination, read on the source.
async fn may_bind(
    state: &MgmtState,
    caller: &Caller,
    v: &str,
    source: &str,
    dest: &Destination,
) -> Result<(), ApiError> {
    let target = match dest {
        Destination::Queue(q) => Resource::Queue(q),
        Destination::Exchange(x) => Resource::Exchange(x),
    };
    caller
        .allow(
            state,
            v,
            &[
                (Permission::Write, target),
                (Permission::Read, Resource::Exchange(source)),
            ],
        )
        .await
}

pub async fn post_binding(
    State(state): St,
    caller: Caller,
    Path((v, source, kind, dest)): Path<(String, String, String, String)>,
    raw: Bytes,
) -> Answer {
    let b: BindingBody = body(&raw)?;
    let destination = destination(&kind, &dest)?;
    may_bind(&state, &caller, &v, &source, &destination).await?;
    let binding = Binding {
        source: source.clone(),
        destination,
        routing_key: b.routing_key,
        arguments: b.arguments.as_ref().map(json_table).unwrap_or_default(),
    };
    let key = properties_key(&binding);
    state
        .broker
        .bind(&v, binding, None)
        .await
        .map_err(ApiError::core)?;
    let location = format!(
        "/api/bindings/{}/e/{}/{kind}/{}/{}",
        pct(&v),
        pct(&source),
        pct(&dest),
        pct(&key)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// A path segment, percent-encoded.
fn pct(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn find_binding(
    state: &MgmtState,
    v: &str,
    source: &str,
    dest: &Destination,
    props: &str,
) -> Result<Binding, ApiError> {
    between(state, v, source, dest)?
        .into_iter()
        .find(|b| properties_key(b) == props)
        .ok_or_else(ApiError::not_found)
}

pub async fn binding(
    State(state): St,
    caller: Caller,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    let b = find_binding(&state, &v, &source, &destination(&kind, &dest)?, &props)?;
    Ok(super::json(binding_json(&v, &b)))
}

pub async fn delete_binding(
    State(state): St,
    caller: Caller,
    Path((v, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Answer {
    let dest = destination(&kind, &dest)?;
    may_bind(&state, &caller, &v, &source, &dest).await?;
    let b = find_binding(&state, &v, &source, &dest, &props)?;
    state
        .broker
        .unbind(&v, &b, None)
        .await
        .map_err(ApiError::core)?;
    Ok(done(false))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source` (bindings from it)
/// and `.../destination` (bindings to it).
pub async fn exchange_bindings(
    State(state): St,
    caller: Caller,
    Path((v, name, side)): Path<(String, String, String)>,
) -> Answer {
    visible_vhosts(&state, &caller, Some(&v)).await?;
    let name = exchange_name(&name).to_owned();
    state.broker.exchange(&v, &name).map_err(ApiError::core)?;
    let all = state.broker.bindings(&v).map_err(ApiError::core)?;
    let items = match side.as_str() {
        "source" => all
            .iter()
            .filter(|b| b.source == name)
            .map(|b| binding_json(&v, b))
            .collect(),
        "destination" => all
            .iter()
            .filter(|b| b.destination == Destination::Exchange(name.clone()))
            .map(|b| binding_json(&v, b))
            .collect(),
        _ => return Err(ApiError::not_found()),
    };
    Ok(super::json(Value::Array(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_times() {
        assert_eq!(civil_time(0), "1970-01-01 00:00:00");
        assert_eq!(civil_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(civil_time(1_796_571_296), "2026-12-06 15:34:56");
    }

    #[test]
    fn properties_keys_as_rabbitmq() {
        let mut b = Binding {
            source: "amq.topic".into(),
            destination: Destination::Queue("q".into()),
            routing_key: "a.b".into(),
            arguments: Default::default(),
        };
        assert_eq!(properties_key(&b), "a.b");
        b.routing_key.clear();
        assert_eq!(properties_key(&b), "~");
        b.arguments
            .insert("x-match", junction_core::FieldValue::string("all"));
        assert!(properties_key(&b).starts_with('~'));
    }
}
