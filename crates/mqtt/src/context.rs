//! The adapter's settings, shared context and accept loop (feature
//! `adapter`, on by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use junction_core::{Authenticator, Broker, CoreError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use junction_core::io::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::{self, Registry};
use crate::{connection, sys};

/// The `[mqtt]` table of the configuration file: the listener and the
/// adapter's limits. `conf/junction.toml` documents each key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// TCP port on the broker's bind address; 0 asks the OS for any port.
    pub port: u16,
    /// Whether to open the listener at all.
    pub enabled: bool,
    /// Accept connections without a user name as `anonymous_user`.
    pub allow_anonymous: bool,
    pub anonymous_user: String,
    /// The vhost MQTT topics live in.
    pub vhost: String,
    /// Largest keepalive granted, seconds (0: no cap).
    pub max_keepalive: u16,
    /// Largest packet accepted, bytes (announced to MQTT 5 clients).
    pub max_packet_size: u32,
    /// Incoming QoS 1/2 messages a client may have unacknowledged
    /// (MQTT 5 Receive Maximum announced by the broker).
    pub receive_maximum: u16,
    /// Most outgoing QoS 1/2 messages in flight to one client (the client's
    /// own Receive Maximum lowers it).
    pub max_inflight: u16,
    /// Topic aliases a client may use (MQTT 5 Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Expiry of MQTT 3 persistent sessions, seconds.
    pub persistent_session_expiry: u32,
    /// Most messages a session's queue holds (0: no limit); the oldest are
    /// dropped beyond it.
    pub max_queued_messages: u64,
    /// Most body bytes a session's queue holds (0: no limit).
    pub max_queued_bytes: u64,
    /// Seconds between `$SYS` updates (0: no `$SYS` tree).
    pub sys_interval: u64,
    /// Seconds from accept to CONNECT.
    pub connect_timeout: u64,
    /// Largest MQTT 5 Session Expiry Interval granted, seconds; a client
    /// asking more gets this one (told in CONNACK). 0: no cap.
    pub max_session_expiry: u32,
    /// Most subscriptions one session may hold; past it SUBACK says 0x97
    /// Quota exceeded (MQTT 3.1.1: 0x80).
    pub max_subscriptions_per_session: usize,
    /// In a cluster, persistent sessions' queues and shared subscriptions'
    /// queues are quorum queues (replicated on every node): queued
    /// messages survive the loss of the node that held the session.
    pub replicated_sessions: bool,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            port: 1883,
            enabled: true,
            allow_anonymous: true,
            anonymous_user: "guest".into(),
            vhost: "/".into(),
            max_keepalive: 0,
            max_packet_size: 16 * 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            topic_alias_maximum: 16,
            persistent_session_expiry: 86_400,
            max_queued_messages: 1_000_000,
            max_queued_bytes: 256 * 1024 * 1024,
            sys_interval: 10,
            connect_timeout: 10,
            max_session_expiry: 7 * 86_400,
            max_subscriptions_per_session: 10_000,
            replicated_sessions: false,
        }
    }
}

impl MqttSettings {
    /// The session expiry granted for `asked` seconds (0xFFFFFFFF: never).
    pub fn cap_session_expiry(&self, asked: u32) -> u32 {
        match self.max_session_expiry {
            0 => asked,
            max => asked.min(max),
        }
    }

    /// Checks the values a broker cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_packet_size < 64 {
            return Err("[mqtt] max_packet_size must be at least 64".to_owned());
        }
        if self.persistent_session_expiry == 0 {
            return Err("[mqtt] persistent_session_expiry must be at least 1".to_owned());
        }
        if self.receive_maximum == 0 || self.max_inflight == 0 {
            return Err("[mqtt] receive_maximum and max_inflight must be at least 1".to_owned());
        }
        if self.connect_timeout == 0 {
            return Err("[mqtt] connect_timeout must be at least 1".to_owned());
        }
        if self.vhost.is_empty() {
            return Err("[mqtt] vhost must not be empty".to_owned());
        }
        Ok(())
    }

    pub(crate) fn sys_interval(&self) -> Duration {
        Duration::from_secs(self.sys_interval)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }
}

/// Counters for `$SYS` (MQTT traffic only).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connected: AtomicI64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub subscriptions: AtomicI64,
    /// Messages a subscription matched that MQTT cannot carry: a routing
    /// key that is no valid topic name (`+`, `#`, U+0000, empty), from
    /// AMQP or STOMP. Acknowledged and skipped (docs/interop.md).
    pub messages_undeliverable: AtomicU64,
}

/// What every MQTT connection shares.
pub struct MqttContext {
    pub broker: Arc<Broker>,
    pub auth: Arc<dyn Authenticator>,
    pub settings: MqttSettings,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
    pub(crate) sys: sys::SysTree,
}

impl MqttContext {
    /// The adapter's shared state (empty until [`start`] restores the
    /// persistent sessions of earlier runs).
    pub fn new(
        broker: Arc<Broker>,
        auth: Arc<dyn Authenticator>,
        settings: MqttSettings,
    ) -> Arc<MqttContext> {
        Arc::new(MqttContext {
            registry: Registry::default(),
            stats: Stats::default(),
            sys: sys::SysTree::default(),
            broker,
            auth,
            settings,
        })
    }
}

/// One MQTT client as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    /// The connection serving it; None while its session is parked.
    pub connection: Option<junction_core::ConnectionId>,
    /// Its filters (`$share/…` included).
    pub subscriptions: Vec<String>,
    /// A parked session's time left; None online, or never.
    pub expires_in: Option<std::time::Duration>,
    /// A parked session's delayed will has not gone out yet.
    pub will_pending: bool,
    /// Messages waiting in its session queue.
    pub queued: u64,
}

impl MqttContext {
    /// Every client with a session, connected or parked. A connected
    /// client's subscriptions are read back from its session queue's
    /// bindings (its shared subscriptions are not among them).
    pub fn clients(&self) -> Vec<ClientInfo> {
        let vhost = &self.settings.vhost;
        let mut all = self.registry.view();
        // One pass over the bindings, not one per client.
        let mut filters: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for b in self.broker.bindings(vhost).unwrap_or_default() {
            if let junction_core::Destination::Queue(q) = b.destination {
                filters
                    .entry(q)
                    .or_default()
                    .push(junction_core::interop::pattern_to_filter(&b.routing_key));
            }
        }
        for c in &mut all {
            let queue = crate::session::session_queue_name(&c.client_id);
            if let Ok(q) = self.broker.queue_for(vhost, &queue, None) {
                c.queued = q.message_count();
            }
            if c.connection.is_some() {
                c.subscriptions = filters.remove(&queue).unwrap_or_default();
                c.subscriptions.sort();
            }
        }
        all
    }
}

/// Prepares the adapter before the first connection: the persistent
/// sessions stored by earlier runs (one read of the stored state), the `$SYS`
/// exchange, the removal of what ended sessions left, and the background tasks (the
/// session sweeper: expiry and delayed wills; the `$SYS` publisher) on
/// `tasks` until `shutdown`.
pub async fn start(
    ctx: &Arc<MqttContext>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), CoreError> {
    ctx.broker
        .serve_client_sessions(Arc::new(ClusterSessions(Arc::downgrade(ctx))));
    let orphans = registry::restore(ctx)?;
    let sys = junction_core::ExchangeDef::new(
        crate::convert::SYS_EXCHANGE,
        junction_core::ExchangeKind::Topic,
    );
    if let Err(e) = ctx
        .broker
        .declare_exchange(&ctx.settings.vhost, sys, false)
        .await
    {
        tracing::warn!(error = %e, "mqtt $SYS exchange not declared");
    }
    registry::remove_orphans(ctx, orphans, shutdown, tasks).await;
    tasks.spawn(registry::sweep(Arc::clone(ctx), shutdown.clone()));
    // Parked connections wait on their kick alone: this is how they learn
    // of a shutdown (`shutdown` is the token every connection is given).
    let (c, token) = (Arc::clone(ctx), shutdown.clone());
    tasks.spawn(async move {
        token.cancelled().await;
        c.registry.kick_all();
    });
    tasks.spawn(sys::publish_loop(Arc::clone(ctx), shutdown.clone()));
    Ok(())
}

/// This adapter's side of the cluster's client-id registry
/// (docs/cluster.md "MQTT sessions across nodes").
struct ClusterSessions(std::sync::Weak<MqttContext>);

impl junction_core::ClientSessions for ClusterSessions {
    fn claimed_elsewhere(&self, vhost: &str, client_id: &str) {
        if let Some(ctx) = self.0.upgrade()
            && ctx.settings.vhost == vhost
        {
            ctx.registry.depart(client_id);
        }
    }

    fn hand_over<'a>(
        &'a self,
        vhost: &'a str,
        client_id: &'a str,
        deadline: tokio::time::Instant,
    ) -> junction_core::HandOverFuture<'a> {
        Box::pin(async move {
            let ctx = self.0.upgrade()?;
            if ctx.settings.vhost != vhost {
                return None;
            }
            registry::hand_over(&ctx, client_id, deadline).await
        })
    }
}

/// Serves one accepted MQTT connection until it closes; at `shutdown` an
/// MQTT 5 client gets DISCONNECT 0x8B. `shutdown` must be the token given
/// to [`start`], which wakes parked connections when it is cancelled. The
/// server's accept loop calls it.
/// (A plain function returning the connection's future: no wrapper state
/// in every connection's task.)
pub fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<MqttContext>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    connection::run(stream, peer, ctx, shutdown)
}
