//! The adapter's settings, shared context and accept loop (feature
//! `adapter`, on by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use junction_core::{Authenticator, Broker, CoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::{self, Registry};
use crate::{connection, sys};

/// The adapter's settings (the `[mqtt]` table).
#[derive(Clone, Debug)]
pub struct MqttSettings {
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
    /// How often the `$SYS` topics are published (zero: never).
    pub sys_interval: Duration,
    /// Time from accept to CONNECT.
    pub connect_timeout: Duration,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
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
            sys_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
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
    /// The adapter's shared state; loads the persistent sessions stored
    /// by earlier runs.
    pub fn new(
        broker: Arc<Broker>,
        auth: Arc<dyn Authenticator>,
        settings: MqttSettings,
    ) -> Result<Arc<MqttContext>, CoreError> {
        let ctx = Arc::new(MqttContext {
            registry: Registry::default(),
            stats: Stats::default(),
            sys: sys::SysTree::default(),
            broker,
            auth,
            settings,
        });
        registry::restore(&ctx)?;
        Ok(ctx)
    }
}

/// Accepts MQTT connections on `listener` until `shutdown`; each runs in
/// its own task on `tasks`. Also runs the session sweeper (expiry, delayed
/// wills) and the `$SYS` publisher.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<MqttContext>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
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
    registry::remove_orphans(&ctx).await;
    tasks.spawn(registry::sweep(Arc::clone(&ctx), shutdown.child_token()));
    tasks.spawn(sys::publish_loop(Arc::clone(&ctx), shutdown.child_token()));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = Arc::clone(&ctx);
                // A clone, not a child token: same cancellation, no
                // allocation per connection.
                let token = shutdown.clone();
                tasks.spawn(connection::run(stream, peer, ctx, token));
            }
            Err(e) => {
                tracing::warn!(error = %e, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
