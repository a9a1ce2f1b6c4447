//! Connections of every protocol, closing one, and the MQTT clients and
//! their sessions (connected or parked).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use junction_core::{ConnectionSnapshot, Protocol};
use serde_json::{Value, json};

use super::query::{ListQuery, apply};
use super::{ApiError, Caller, Level, MgmtState, done};

type St = State<Arc<MgmtState>>;
type Answer = Result<Response, ApiError>;

/// A connection's name in the API: its peer and its id, unique and stable
/// for the connection's life.
fn name_of(c: &ConnectionSnapshot) -> String {
    let peer = c
        .details
        .peer
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    format!("{peer} -> {}#{}", c.protocol.as_str(), c.id.0)
}

/// RabbitMQ's `protocol` field: `MQTT 3.1.1`, `Web MQTT 5`, `STOMP 1.2`...
fn protocol_text(c: &ConnectionSnapshot) -> String {
    let version = c.details.version.unwrap_or("");
    let web = if c.details.websocket { "Web " } else { "" };
    match c.protocol {
        Protocol::Amqp => format!("AMQP {version}"),
        Protocol::Mqtt => format!("{web}MQTT {version}"),
        Protocol::Stomp => format!("{web}STOMP {version}"),
        Protocol::Internal => "internal".to_owned(),
    }
    .trim_end()
    .to_owned()
}

fn connection_json(state: &MgmtState, c: &ConnectionSnapshot) -> Value {
    let (recv_rate, send_rate) = state.rates.connection_rates(c.id.0);
    let d = &c.details;
    let mut props = serde_json::Map::new();
    if let Some(p) = &d.client {
        props.insert("product".into(), json!(p));
    }
    if let Some(id) = &d.client_id {
        props.insert("client_id".into(), json!(id));
    }
    json!({
        "name": name_of(c),
        "node": state.node.clone(),
        "protocol": protocol_text(c),
        // Strings even before login: RabbitMQ's clients expect them.
        "user": d.user.as_deref().unwrap_or(""),
        "vhost": d.vhost.as_deref().unwrap_or(""),
        "peer_host": d.peer.map(|p| p.ip().to_string()),
        "peer_port": d.peer.map(|p| p.port()),
        "ssl": d.tls,
        "channels": if c.protocol == Protocol::Amqp { c.channels } else { u64::from(d.user.is_some()) },
        "connected_at": c.connected_at,
        "state": if d.user.is_some() { "running" } else { "starting" },
        "type": "network",
        "client_id": d.client_id,
        "client_properties": Value::Object(props),
        "recv_oct": c.recv_oct,
        "send_oct": c.send_oct,
        "recv_oct_details": {"rate": (recv_rate * 10.0).round() / 10.0},
        "send_oct_details": {"rate": (send_rate * 10.0).round() / 10.0},
    })
}

/// The connections the caller may see: all for monitoring and
/// administrators, its own for the others.
fn visible(state: &MgmtState, caller: &Caller) -> Vec<ConnectionSnapshot> {
    state
        .broker
        .connections()
        .into_iter()
        .filter(|c| {
            caller.level >= Level::Monitoring || c.details.user.as_deref() == Some(&caller.user)
        })
        .collect()
}

pub async fn connections(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let items = visible(&state, &caller)
        .iter()
        .map(|c| connection_json(&state, c))
        .collect();
    Ok(super::json(apply(items, &q)?))
}

pub async fn vhost_connections(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer {
    if !state.has_vhost(&v) {
        return Err(ApiError::not_found());
    }
    let items = visible(&state, &caller)
        .iter()
        .filter(|c| c.details.vhost.as_deref() == Some(&v))
        .map(|c| connection_json(&state, c))
        .collect();
    Ok(super::json(apply(items, &q)?))
}

fn find(state: &MgmtState, caller: &Caller, name: &str) -> Result<ConnectionSnapshot, ApiError> {
    visible(state, caller)
        .into_iter()
        .find(|c| name_of(c) == name)
        .ok_or_else(ApiError::not_found)
}

pub async fn connection(State(state): St, caller: Caller, Path(name): Path<String>) -> Answer {
    Ok(super::json(connection_json(
        &state,
        &find(&state, &caller, &name)?,
    )))
}

/// `DELETE /api/connections/{name}`: closes it with the `X-Reason`
/// header's words (RabbitMQ's), each protocol in its own way. Others'
/// connections need an administrator.
pub async fn close_connection(
    State(state): St,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let c = find(&state, &caller, &name)?;
    if c.details.user.as_deref() != Some(&caller.user) {
        caller.need(Level::Administrator)?;
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    tracing::info!(by = %caller.user, connection = %name, reason, "connection closed by an operator");
    if !state.broker.close_connection(c.id, reason) {
        return Err(ApiError::not_found());
    }
    Ok(done(false))
}

/// `GET /api/mqtt/clients`: Junction's own view of MQTT clients and their
/// sessions (Mosquitto users' first question), connected or parked.
pub async fn mqtt_clients(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    caller.need(Level::Monitoring)?;
    let Some(mqtt) = state.mqtt.get() else {
        return Ok(super::json(apply(Vec::new(), &q)?));
    };
    let connections = state.broker.connections();
    let items = mqtt
        .clients()
        .into_iter()
        .map(|c| {
            let conn = c
                .connection
                .and_then(|id| connections.iter().find(|s| s.id == id));
            json!({
                "name": c.client_id,
                "client_id": c.client_id,
                "connected": c.connection.is_some(),
                "connection": conn.map(name_of),
                "user": conn.and_then(|s| s.details.user.clone()),
                "peer_host": conn.and_then(|s| s.details.peer.map(|p| p.ip().to_string())),
                "protocol": conn.map(protocol_text),
                "subscriptions": c.subscriptions,
                "queued_messages": c.queued,
                "session_expires_in": c.expires_in.map(|d| d.as_secs()),
                "will_pending": c.will_pending,
            })
        })
        .collect();
    Ok(super::json(apply(items, &q)?))
}

/// `GET /api/channels`: the open AMQP channels of the connections the
/// caller sees, by their real numbers.
pub async fn channels(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let mut items = Vec::new();
    for c in visible(&state, &caller) {
        let conn = name_of(&c);
        for n in &c.channel_numbers {
            items.push(json!({
                "name": format!("{conn} ({n})"),
                "number": n,
                "node": state.node.clone(),
                "user": c.details.user.as_deref().unwrap_or(""),
                "vhost": c.details.vhost.as_deref().unwrap_or(""),
                "connection_details": {
                    "name": conn,
                    "peer_host": c.details.peer.map(|p| p.ip().to_string()),
                    "peer_port": c.details.peer.map(|p| p.port()),
                },
                "state": "running",
            }));
        }
    }
    Ok(super::json(apply(items, &q)?))
}

/// `GET /api/consumers`: every queue's consumers in the vhosts the caller
/// sees, with the connection each belongs to.
pub async fn consumers(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    let connections = state.broker.connections();
    let mut items = Vec::new();
    for v in state.broker.vhost_names() {
        if !caller.sees(&state, &v).await {
            continue;
        }
        for c in state.broker.consumers(&v).map_err(ApiError::core)? {
            let conn = connections.iter().find(|s| s.id == c.connection);
            if caller.level < Level::Monitoring
                && conn.and_then(|s| s.details.user.as_deref()) != Some(&caller.user)
            {
                continue;
            }
            items.push(json!({
                "consumer_tag": c.tag,
                "queue": {"name": c.queue, "vhost": v},
                "channel_details": {
                    "connection_name": conn.map(name_of),
                    "peer_host": conn.and_then(|s| s.details.peer.map(|p| p.ip().to_string())),
                    "user": conn.and_then(|s| s.details.user.clone()),
                },
                "ack_required": !c.no_ack,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch,
                "arguments": if c.priority != 0 { json!({"x-priority": c.priority}) } else { json!({}) },
                "active": true,
            }));
        }
    }
    Ok(super::json(apply(items, &q)?))
}
