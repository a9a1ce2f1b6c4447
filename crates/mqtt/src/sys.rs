//! The `$SYS/broker/...` topics (Mosquitto's names): refreshed every
//! `sys_interval`, published to subscribers as they change and handed to
//! new subscribers like retained messages. Kept in memory only: stale
//! values are never stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use junction_core::{FieldValue, Message};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MqttContext;
use crate::convert::{H_PUBLISH_QOS, H_RETAIN, SYS_EXCHANGE, swap_separators};

/// The current `$SYS` values, topic → payload.
#[derive(Default)]
pub(crate) struct SysTree {
    values: Mutex<Vec<(String, Bytes)>>,
}

impl SysTree {
    pub fn values(&self) -> Vec<(String, Bytes)> {
        self.values.lock().clone()
    }
}

fn snapshot(ctx: &MqttContext, started: Instant) -> Vec<(String, Bytes)> {
    let s = &ctx.stats;
    let n = |v: i64| Bytes::from(v.max(0).to_string());
    let u = |v: u64| Bytes::from(v.to_string());
    vec![
        (
            "$SYS/broker/version".into(),
            Bytes::from(format!("junction {}", env!("CARGO_PKG_VERSION"))),
        ),
        ("$SYS/broker/uptime".into(), u(started.elapsed().as_secs())),
        (
            "$SYS/broker/clients/connected".into(),
            n(s.connected.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/messages/received".into(),
            u(s.messages_received.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/messages/sent".into(),
            u(s.messages_sent.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/messages/undeliverable".into(),
            u(s.messages_undeliverable.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/bytes/received".into(),
            u(s.bytes_received.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/bytes/sent".into(),
            u(s.bytes_sent.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/subscriptions/count".into(),
            n(s.subscriptions.load(Ordering::Relaxed)),
        ),
        (
            "$SYS/broker/retained messages/count".into(),
            u(ctx.broker.retained_count()),
        ),
    ]
}

/// Refreshes the values and publishes them every `sys_interval`.
pub(crate) async fn publish_loop(ctx: Arc<MqttContext>, shutdown: CancellationToken) {
    let started = Instant::now();
    let every = ctx.settings.sys_interval();
    if every.is_zero() {
        // No $SYS tree at all (not a frozen start-up snapshot).
        return;
    }
    *ctx.sys.values.lock() = snapshot(&ctx, started);
    // The first refresh one interval from now (the snapshot above is
    // current): an immediate tick would publish the start-up values twice.
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let values = snapshot(&ctx, started);
        *ctx.sys.values.lock() = values.clone();
        for (topic, payload) in values {
            let mut m = Message::new(SYS_EXCHANGE, swap_separators(&topic), payload);
            m.properties
                .headers
                .insert(H_PUBLISH_QOS, FieldValue::I8(0));
            m.properties
                .headers
                .insert(H_RETAIN, FieldValue::Bool(true));
            if let Err(e) = ctx.broker.publish(&ctx.settings.vhost, m).await {
                tracing::debug!(error = %e, "$SYS not published");
            }
        }
    }
}
