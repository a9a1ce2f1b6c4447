//! Users, permissions and topic permissions through the management API
//! (administrators only, except `whoami`), written to the users file and
//! in force at once; and `POST /api/tls/reload`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::query::{ListQuery, apply};
use super::{ApiError, Caller, Level, MgmtState, body, done, required_str};
use crate::auth::FileAuth;
use crate::users::{RABBIT_SHA256, UserDb, UsersError};

type St = State<Arc<MgmtState>>;
type Answer = Result<Response, ApiError>;

pub async fn whoami(caller: Caller) -> Answer {
    Ok(super::json(
        json!({"name": caller.user, "tags": caller.tags}),
    ))
}

/// The users file, or 400 when `[auth] backends` does not have it.
fn file(state: &MgmtState) -> Result<&Arc<FileAuth>, ApiError> {
    state
        .users
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("the users file is not an authentication back-end"))
}

/// A users-file error as the API's.
pub(crate) fn users_error(e: UsersError) -> ApiError {
    match e {
        UsersError::NoSuchUser(_) => ApiError::not_found(),
        UsersError::Cluster(e) => ApiError::core(e),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// Runs an edit of the users file off the runtime (it may hash).
pub(crate) async fn edit<T: Send + 'static>(
    state: &MgmtState,
    f: impl FnOnce(&mut UserDb) -> Result<T, UsersError> + Send + 'static,
) -> Result<T, ApiError> {
    let users = Arc::clone(file(state)?);
    tokio::task::spawn_blocking(move || users.edit(f))
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .map_err(users_error)
}

pub(crate) fn user_json(db: &UserDb, name: &str) -> Option<Value> {
    let u = db.get(name)?;
    let stored = db.password_hash(name).unwrap_or("");
    let (hash, algorithm) = match stored.strip_prefix(RABBIT_SHA256) {
        Some(b64) => (b64, "rabbit_password_hashing_sha256"),
        None => (stored, "argon2id"),
    };
    Some(json!({
        "name": u.name,
        "password_hash": hash,
        "hashing_algorithm": algorithm,
        "tags": u.tags,
        "limits": {},
    }))
}

/// A user's hash as the users file keeps it: argon2id PHC strings as they
/// are, RabbitMQ's SHA-256 ones behind [`RABBIT_SHA256`].
pub(crate) fn stored_hash(hash: &str, algorithm: Option<&str>) -> Result<String, ApiError> {
    match algorithm {
        Some("rabbit_password_hashing_sha256") => Ok(format!("{RABBIT_SHA256}{hash}")),
        // No algorithm: a PHC string is ours; anything else is RabbitMQ's
        // default, SHA-256 (what its clients compute).
        None if !hash.starts_with('$') => Ok(format!("{RABBIT_SHA256}{hash}")),
        None | Some("argon2id") => Ok(hash.to_owned()),
        Some(other) => Err(ApiError::bad_request(format!(
            "hashing_algorithm {other} is not supported (argon2id, rabbit_password_hashing_sha256)"
        ))),
    }
}

pub async fn users(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    let items = db.list().filter_map(|u| user_json(&db, &u.name)).collect();
    Ok(super::json(apply(items, &q)?))
}

pub async fn user(State(state): St, caller: Caller, Path(name): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    user_json(&db, &name)
        .map(super::json)
        .ok_or_else(ApiError::not_found)
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string.
/// Tags from a JSON list or RabbitMQ's comma-separated string.
pub(crate) fn tags_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

pub async fn put_user(
    State(state): St,
    caller: Caller,
    Path(name): Path<String>,
    raw: Bytes,
) -> Answer {
    caller.need(Level::Administrator)?;
    let b: Value = body(&raw)?;
    let password = b.get("password").and_then(Value::as_str).map(str::to_owned);
    let hash = match b
        .get("password_hash")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
    {
        Some(h) => Some(stored_hash(
            h,
            b.get("hashing_algorithm").and_then(Value::as_str),
        )?),
        None => None,
    };
    let tags = tags_of(b.get("tags"));
    let created = edit(&state, move |db| {
        db.put(&name, password.as_deref(), hash.as_deref(), tags)
    })
    .await?;
    Ok(done(created))
}

pub async fn delete_user(State(state): St, caller: Caller, Path(name): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    edit(&state, move |db| db.delete(&name)).await?;
    Ok(done(false))
}

pub(crate) fn permission_rows(db: &UserDb) -> Vec<Value> {
    db.list()
        .flat_map(|u| {
            u.permissions.iter().map(move |(v, p)| {
                json!({
                    "user": u.name,
                    "vhost": v,
                    "configure": p.configure.as_str(),
                    "write": p.write.as_str(),
                    "read": p.read.as_str(),
                })
            })
        })
        .collect()
}

pub async fn permissions(State(state): St, caller: Caller, Query(q): Query<ListQuery>) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    Ok(super::json(apply(permission_rows(&db), &q)?))
}

pub async fn permission(
    State(state): St,
    caller: Caller,
    Path((v, user)): Path<(String, String)>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    permission_rows(&db)
        .into_iter()
        .find(|r| r["user"] == user.as_str() && r["vhost"] == v.as_str())
        .map(super::json)
        .ok_or_else(ApiError::not_found)
}

pub async fn put_permission(
    State(state): St,
    caller: Caller,
    Path((v, user)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    caller.need(Level::Administrator)?;
    if !state.has_vhost(&v) {
        return Err(ApiError::bad_request(format!("no vhost '{v}'")));
    }
    let b: Value = body(&raw)?;
    let field = |k: &str| required_str(&b, k);
    let (configure, write, read) = (field("configure")?, field("write")?, field("read")?);
    let created = edit(&state, move |db| {
        let had = db.get(&user).is_some_and(|u| u.may_access(&v));
        db.set_permissions(&user, &v, &configure, &write, &read)?;
        Ok(!had)
    })
    .await?;
    Ok(done(created))
}

pub async fn delete_permission(
    State(state): St,
    caller: Caller,
    Path((v, user)): Path<(String, String)>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let had = edit(&state, move |db| db.clear_permissions(&user, &v)).await?;
    if had {
        Ok(done(false))
    } else {
        Err(ApiError::not_found())
    }
}

pub(crate) fn topic_rows(db: &UserDb) -> Vec<Value> {
    db.list()
        .flat_map(|u| {
            u.topic_permissions.iter().map(move |((v, x), t)| {
                json!({
                    "user": u.name,
                    "vhost": v,
                    "exchange": x,
                    "write": t.write.as_str(),
                    "read": t.read.as_str(),
                })
            })
        })
        .collect()
}

pub async fn topic_permissions(
    State(state): St,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    Ok(super::json(apply(topic_rows(&db), &q)?))
}

/// The rows of `rows` whose `field` is `value`.
fn only(rows: Vec<Value>, field: &str, value: &str) -> Vec<Value> {
    rows.into_iter().filter(|r| r[field] == value).collect()
}

/// `GET /api/vhosts/{vhost}/permissions`.
pub async fn vhost_permissions(State(state): St, caller: Caller, Path(v): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    Ok(super::json(Value::Array(only(
        permission_rows(&db),
        "vhost",
        &v,
    ))))
}

/// `GET /api/users/{user}/permissions`.
pub async fn user_permissions(State(state): St, caller: Caller, Path(u): Path<String>) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    db.get(&u).ok_or_else(ApiError::not_found)?;
    Ok(super::json(Value::Array(only(
        permission_rows(&db),
        "user",
        &u,
    ))))
}

/// `GET /api/vhosts/{vhost}/topic-permissions`.
pub async fn vhost_topic_permissions(
    State(state): St,
    caller: Caller,
    Path(v): Path<String>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    Ok(super::json(Value::Array(only(
        topic_rows(&db),
        "vhost",
        &v,
    ))))
}

/// `GET /api/users/{user}/topic-permissions`.
pub async fn user_topic_permissions(
    State(state): St,
    caller: Caller,
    Path(u): Path<String>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    db.get(&u).ok_or_else(ApiError::not_found)?;
    Ok(super::json(Value::Array(only(topic_rows(&db), "user", &u))))
}

/// `GET /api/topic-permissions/{vhost}/{user}`: that user's topic
/// permissions on the vhost, one row per exchange.
pub async fn topic_permission(
    State(state): St,
    caller: Caller,
    Path((v, u)): Path<(String, String)>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let db = file(&state)?.db();
    let rows = only(only(topic_rows(&db), "vhost", &v), "user", &u);
    if rows.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(super::json(Value::Array(rows)))
}

/// `PUT /api/topic-permissions/{vhost}/{user}`: `{"exchange", "write",
/// "read"}`.
pub async fn put_topic_permission(
    State(state): St,
    caller: Caller,
    Path((v, user)): Path<(String, String)>,
    raw: Bytes,
) -> Answer {
    caller.need(Level::Administrator)?;
    if !state.has_vhost(&v) {
        return Err(ApiError::bad_request(format!("no vhost '{v}'")));
    }
    let b: Value = body(&raw)?;
    let field = |k: &str| required_str(&b, k);
    let (exchange, write, read) = (field("exchange")?, field("write")?, field("read")?);
    let created = edit(&state, move |db| {
        let had = db.get(&user).is_some_and(|u| {
            u.topic_permissions
                .contains_key(&(v.clone(), exchange.clone()))
        });
        db.set_topic_permissions(&user, &v, &exchange, &write, &read)?;
        Ok(!had)
    })
    .await?;
    Ok(done(created))
}

/// `DELETE /api/topic-permissions/{vhost}/{user}` (every exchange's, or
/// `?exchange=X`'s only).
pub async fn delete_topic_permission(
    State(state): St,
    caller: Caller,
    Path((v, user)): Path<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Answer {
    caller.need(Level::Administrator)?;
    let exchange = q.get("exchange").cloned();
    let n = edit(&state, move |db| {
        db.clear_topic_permissions(&user, &v, exchange.as_deref())
    })
    .await?;
    if n == 0 {
        return Err(ApiError::not_found());
    }
    Ok(done(false))
}

/// `POST /api/tls/reload` (administrators): 200 `{"status":"reloaded"}`;
/// 500 with the reason when a file is bad (the files in use stay); 404
/// without TLS.
pub async fn tls_reload(State(state): St, caller: Caller) -> Answer {
    caller.need(Level::Administrator)?;
    let (status, body) = match &state.tls_reload {
        None => (
            StatusCode::NOT_FOUND,
            json!({"status": "TLS is not configured"}),
        ),
        Some(reload) => match reload() {
            Ok(()) => (StatusCode::OK, json!({"status": "reloaded"})),
            Err(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"status": "not reloaded", "reason": why}),
            ),
        },
    };
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}
