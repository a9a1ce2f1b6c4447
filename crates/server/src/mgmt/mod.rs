//! The management HTTP API under `/api` on the admin listener, shaped like
//! RabbitMQ's management API (field names, status codes, `{"error": …,
//! "reason": …}` bodies, `%2F` for the default vhost) so the tools people
//! point at RabbitMQ work against Junction: docs/management.md.
//!
//! Every route here needs HTTP Basic credentials, checked against the same
//! users and back-ends as the protocols, and RabbitMQ's user tags decide
//! what a user may see and do: `administrator` everything, `monitoring`
//! every object read-only, `management` (and `policymaker`) the objects of
//! the vhosts the user has permissions on. A user without one of those
//! tags gets 401, as in RabbitMQ. Declares, deletes, publishes and gets are
//! also checked against the user's permissions, as the protocols are.

mod connections;
pub mod definitions;
mod objects;
pub mod policies;
mod query;
pub mod rates;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use junction_core::{Access, Authenticator, Broker, Login, Principal};

use crate::auth::FileAuth;

/// What the management routes share.
pub struct MgmtState {
    pub broker: Arc<Broker>,
    pub auth: Arc<dyn Authenticator>,
    /// The users file, when `[auth] backends` has it (tags, users and
    /// permissions endpoints).
    pub users: Option<Arc<FileAuth>>,
    /// When the broker started (uptime).
    pub started: std::time::Instant,
    /// Reads the TLS files again (`POST /api/tls/reload`); None without TLS.
    pub tls_reload: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
    /// The MQTT adapter, once its listener is up (its clients' sessions).
    pub mqtt: std::sync::OnceLock<Arc<junction_mqtt::MqttContext>>,
    /// Per-queue message rates, sampled by [`rates::run`].
    pub rates: Arc<rates::Rates>,
    /// Queue policies (also the broker's policy source).
    pub policies: Arc<policies::Policies>,
    /// `/metrics` behind credentials (`[admin] metrics_need_credentials`):
    /// renders the exposition; None leaves `/metrics` to the open routes.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// This node's name where RabbitMQ shows `rabbit@host`
    /// ([`node_name`], or `junction@<[cluster] node_name>`).
    pub node: String,
    /// This node's cluster, when `[cluster]` is enabled.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The node name shown where RabbitMQ shows `rabbit@host`, when the node
/// is not in a cluster.
pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("junction@{host}")
}

/// The routes, with their state.
pub fn router(state: Arc<MgmtState>) -> Router {
    let mut routes = Router::new();
    if state.metrics.is_some() {
        routes = routes.route("/metrics", get(objects::metrics));
    }
    routes
        .route("/api/overview", get(objects::overview))
        .route("/api/whoami", get(users::whoami))
        .route("/api/vhosts", get(objects::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(objects::vhost)
                .put(objects::put_vhost)
                .delete(objects::delete_vhost),
        )
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(users::vhost_permissions),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(users::vhost_topic_permissions),
        )
        .route("/api/rebalance/queues", post(objects::rebalance_queues))
        .route("/api/nodes", get(objects::nodes).post(objects::join_node))
        .route(
            "/api/nodes/{name}",
            get(objects::node).delete(objects::leave_node),
        )
        .route("/api/health/checks/alarms", get(objects::alarms))
        .route("/api/health/checks/local-alarms", get(objects::alarms))
        .route("/api/queues", get(objects::queues))
        .route("/api/queues/{vhost}", get(objects::queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(objects::queue)
                .put(objects::put_queue)
                .delete(objects::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(objects::purge_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/get",
            post(objects::get_messages),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(objects::queue_bindings),
        )
        .route("/api/exchanges", get(objects::exchanges))
        .route("/api/exchanges/{vhost}", get(objects::exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(objects::exchange)
                .put(objects::put_exchange)
                .delete(objects::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(objects::publish),
        )
        .route("/api/bindings", get(objects::bindings))
        .route("/api/bindings/{vhost}", get(objects::bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(objects::bindings_between).post(objects::post_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(objects::binding).delete(objects::delete_binding),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/{side}",
            get(objects::exchange_bindings),
        )
        .route("/api/connections", get(connections::connections))
        .route(
            "/api/connections/{name}",
            get(connections::connection).delete(connections::close_connection),
        )
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::vhost_connections),
        )
        .route("/api/mqtt/clients", get(connections::mqtt_clients))
        .route("/api/channels", get(connections::channels))
        .route("/api/consumers", get(connections::consumers))
        .route("/api/policies", get(policies::policies))
        .route("/api/policies/{vhost}", get(policies::policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route("/api/users", get(users::users))
        .route(
            "/api/users/{name}",
            get(users::user)
                .put(users::put_user)
                .delete(users::delete_user),
        )
        .route("/api/permissions", get(users::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(users::permission)
                .put(users::put_permission)
                .delete(users::delete_permission),
        )
        .route("/api/topic-permissions", get(users::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(users::topic_permission)
                .put(users::put_topic_permission)
                .delete(users::delete_topic_permission),
        )
        .route(
            "/api/users/{name}/permissions",
            get(users::user_permissions),
        )
        .route(
            "/api/users/{name}/topic-permissions",
            get(users::user_topic_permissions),
        )
        .route(
            "/api/definitions",
            get(definitions::get_definitions).post(definitions::post_definitions),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::get_vhost_definitions).post(definitions::post_vhost_definitions),
        )
        .route("/api/tls/reload", post(users::tls_reload))
        .with_state(state)
}

/// An API error: RabbitMQ's `{"error": …, "reason": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
    /// Ask for credentials (`WWW-Authenticate`): only when none came, so a
    /// browser page whose own login failed gets no native prompt.
    challenge: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            challenge: false,
        }
    }

    /// 404, RabbitMQ's words.
    pub(crate) fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 401 `not_authorised`: bad credentials, or a tag missing.
    pub(crate) fn unauthorised(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// 401 with `WWW-Authenticate`: no credentials came.
    pub(crate) fn credentials_needed() -> Self {
        ApiError {
            challenge: true,
            ..ApiError::unauthorised("Not_Authorized")
        }
    }

    /// A permission refused (the protocols' 403 ACCESS_REFUSED).
    pub(crate) fn access_refused(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// A core error as the API's: not found is 404, a refusal 400 with
    /// the core's words (RabbitMQ answers precondition failures 400), a
    /// change the cluster did not commit 503.
    pub(crate) fn core(e: junction_core::CoreError) -> Self {
        use junction_core::CoreError;
        match e {
            CoreError::NotFound(_) => ApiError::not_found(),
            CoreError::AccessRefused(why) => ApiError::access_refused(why),
            // The cluster did not commit the change: try again later.
            CoreError::Unavailable(why) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
            }
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason, self.error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "reason": self.reason}).to_string();
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Junction Management\""),
            );
        }
        r
    }
}

impl MgmtState {
    /// Whether vhost `v` exists (one map lookup, no list of names).
    pub(crate) fn has_vhost(&self, v: &str) -> bool {
        self.broker.vhost_info(v).is_some()
    }
}

/// Parses a JSON request body (an empty one is `T::default()`); 400 otherwise.
pub(crate) fn body<T: for<'de> serde::Deserialize<'de> + Default>(
    raw: &bytes::Bytes,
) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// The string field `k` of a JSON body; 400 naming it when absent.
pub(crate) fn required_str(b: &serde_json::Value, k: &str) -> Result<String, ApiError> {
    b.get(k)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
}

/// A JSON answer with 200.
pub(crate) fn json(v: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// 201 Created or 204 No Content, empty (RabbitMQ's answers to PUT).
pub(crate) fn done(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// How much a user's tags let it see and do, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `management` or `policymaker`: its own vhosts' objects.
    Management,
    /// `monitoring`: every object, read-only.
    Monitoring,
    /// `administrator`: everything.
    Administrator,
}

/// The logged-in caller of a route.
pub struct Caller {
    pub user: String,
    pub tags: Vec<String>,
    pub level: Level,
    login: Login,
    peer: std::net::IpAddr,
}

impl Caller {
    /// 401 unless the caller's level is at least `level`.
    pub(crate) fn need(&self, level: Level) -> Result<(), ApiError> {
        if self.level >= level {
            return Ok(());
        }
        Err(ApiError::unauthorised(match level {
            Level::Administrator => "Not administrator user",
            Level::Monitoring => "Not monitor user",
            Level::Management => "Not management user",
        }))
    }

    /// The caller's permission checks on `vhost`; 401 when it may not use
    /// the vhost.
    pub(crate) async fn access(&self, state: &MgmtState, vhost: &str) -> Result<Access, ApiError> {
        let who = Principal {
            user: self.user.clone(),
            vhost: vhost.to_owned(),
            client_id: String::new(),
            peer: self.peer,
            backend: self.login.backend,
        };
        Access::open(Arc::clone(&state.auth), who)
            .await
            .ok_or_else(|| {
                ApiError::access_refused(format!(
                    "access to vhost '{vhost}' refused for user '{}'",
                    self.user
                ))
            })
    }

    /// Asks the caller's permissions on `vhost` for each of `checks`, as
    /// the protocols would for the same operation; 401 with the
    /// permission's text at the first refusal.
    pub(crate) async fn allow(
        &self,
        state: &MgmtState,
        vhost: &str,
        checks: &[(junction_core::Permission, junction_core::Resource<'_>)],
    ) -> Result<(), ApiError> {
        let mut access = self.access(state, vhost).await?;
        for (perm, what) in checks {
            access
                .check(*perm, *what)
                .await
                .map_err(|d| ApiError::access_refused(d.0))?;
        }
        Ok(())
    }

    /// Whether the caller sees `vhost`'s objects: monitoring and
    /// administrators see all, others the vhosts they have permissions on.
    pub(crate) async fn sees(&self, state: &MgmtState, vhost: &str) -> bool {
        if self.level >= Level::Monitoring {
            return true;
        }
        let who = Principal {
            user: self.user.clone(),
            vhost: vhost.to_owned(),
            client_id: String::new(),
            peer: self.peer,
            backend: self.login.backend,
        };
        state.auth.vhost_access(&who).await
    }
}

/// The level RabbitMQ's tags give; None: no management access.
fn level_of(tags: &[String]) -> Option<Level> {
    let has = |t: &str| tags.iter().any(|x| x == t);
    if has("administrator") {
        Some(Level::Administrator)
    } else if has("monitoring") {
        Some(Level::Monitoring)
    } else if has("management") || has("policymaker") {
        Some(Level::Management)
    } else {
        None
    }
}

impl FromRequestParts<Arc<MgmtState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<MgmtState>,
    ) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let (user, password) = basic_credentials(parts).ok_or_else(ApiError::credentials_needed)?;
        let login = state
            .broker
            .logins()
            .check(&state.auth, &user, password, peer)
            .await
            .map_err(|e| {
                tracing::info!(user, reason = %e, "management login refused");
                ApiError::unauthorised("Login failed")
            })?;
        let tags = state
            .users
            .as_ref()
            .and_then(|u| u.db().get(&user).map(|u| u.tags.clone()))
            .unwrap_or_default();
        let level = level_of(&tags).ok_or_else(|| ApiError::unauthorised("Not management user"))?;
        Ok(Caller {
            user,
            tags,
            level,
            login,
            peer,
        })
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_give_rabbitmq_levels() {
        let t = |v: &[&str]| level_of(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["administrator"]), Some(Level::Administrator));
        assert_eq!(t(&["monitoring", "management"]), Some(Level::Monitoring));
        assert_eq!(t(&["policymaker"]), Some(Level::Management));
        assert_eq!(t(&["ops"]), None);
        assert_eq!(t(&[]), None);
    }
}
