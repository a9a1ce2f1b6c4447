//! Message rates per queue for the API and the console: every
//! [`INTERVAL`] one pass reads each queue's running totals (kept by the
//! queue as messages flow) and keeps the rate since the pass before.
//! Requests only read these samples, so polling the API does not scan
//! queues' messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use junction_core::Broker;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How often rates are sampled (RabbitMQ's default statistics interval).
pub const INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Option<Instant>,
    published: u64,
    delivered: u64,
    publish_rate: f64,
    deliver_rate: f64,
}

/// One connection's bytes at a pass: (time, received, sent, received
/// per second, sent per second).
type ConnSample = (Instant, u64, u64, f64, f64);

/// The latest rates by (vhost, queue).
#[derive(Debug, Default)]
pub struct Rates {
    by_queue: parking_lot::Mutex<HashMap<(String, String), Sample>>,
    /// Messages into and out of the broker as a whole.
    overall: parking_lot::Mutex<Sample>,
    /// When the last pass ran: a queue made since counts from 0 then.
    last_pass: parking_lot::Mutex<Option<Instant>>,
    /// Bytes in and out per connection id.
    by_connection: parking_lot::Mutex<HashMap<u64, ConnSample>>,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    // A queue deleted and made again restarts its totals.
    (now.saturating_sub(before)) as f64 / secs
}

impl Rates {
    /// One pass over every queue.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let mut next = HashMap::new();
        let old = self.by_queue.lock().clone();
        let last_pass = self.last_pass.lock().replace(now);
        for v in broker.vhost_names() {
            for q in broker.queues(&v).unwrap_or_default() {
                let key = (v.clone(), q.def.name.clone());
                let mut s = Sample {
                    at: Some(now),
                    published: q.published,
                    delivered: q.delivered,
                    ..Sample::default()
                };
                // A queue new since the last pass started from 0 then.
                let prev = old.get(&key).copied().or(last_pass.map(|at| Sample {
                    at: Some(at),
                    ..Sample::default()
                }));
                if let Some(prev) = prev
                    && let Some(then) = prev.at
                {
                    let secs = now.duration_since(then).as_secs_f64();
                    s.publish_rate = rate(q.published, prev.published, secs);
                    s.deliver_rate = rate(q.delivered, prev.delivered, secs);
                }
                next.insert(key, s);
            }
        }
        *self.by_queue.lock() = next;
        let mut conns = HashMap::new();
        {
            let old = self.by_connection.lock();
            for c in broker.connections() {
                let (mut r_rate, mut s_rate) = (0.0, 0.0);
                let since = old
                    .get(&c.id.0)
                    .map(|(t, r, s, _, _)| (*t, *r, *s))
                    .or(last_pass.map(|t| (t, 0, 0)));
                if let Some((then, r, s)) = since {
                    let secs = now.duration_since(then).as_secs_f64();
                    r_rate = rate(c.recv_oct, r, secs);
                    s_rate = rate(c.send_oct, s, secs);
                }
                conns.insert(c.id.0, (now, c.recv_oct, c.send_oct, r_rate, s_rate));
            }
        }
        *self.by_connection.lock() = conns;
        let stats = broker.stats();
        let mut overall = self.overall.lock();
        let mut s = Sample {
            at: Some(now),
            published: stats.messages_in,
            delivered: stats.messages_out,
            ..Sample::default()
        };
        if let Some(then) = overall.at {
            let secs = now.duration_since(then).as_secs_f64();
            s.publish_rate = rate(s.published, overall.published, secs);
            s.deliver_rate = rate(s.delivered, overall.delivered, secs);
        }
        *overall = s;
    }

    /// A connection's bytes-per-second in and out at the last sample.
    pub fn connection_rates(&self, id: u64) -> (f64, f64) {
        self.by_connection
            .lock()
            .get(&id)
            .map_or((0.0, 0.0), |(_, _, _, r, s)| (*r, *s))
    }

    /// The overview's `message_stats`: the broker's totals now and the
    /// rates of the last sample.
    pub fn overall_stats(&self, published: u64, delivered: u64) -> Value {
        stats_json(*self.overall.lock(), published, delivered)
    }

    /// RabbitMQ's `message_stats` of a queue: the totals now and the rates
    /// of the last sample.
    pub fn message_stats(&self, vhost: &str, queue: &str, published: u64, delivered: u64) -> Value {
        let s = self
            .by_queue
            .lock()
            .get(&(vhost.to_owned(), queue.to_owned()))
            .copied()
            .unwrap_or_default();
        stats_json(s, published, delivered)
    }
}

fn stats_json(s: Sample, published: u64, delivered: u64) -> Value {
    let round = |r: f64| (r * 10.0).round() / 10.0;
    json!({
        "publish": published,
        "publish_details": {"rate": round(s.publish_rate)},
        "deliver_get": delivered,
        "deliver_get_details": {"rate": round(s.deliver_rate)},
    })
}

/// Samples every [`INTERVAL`] until `stop`.
pub async fn run(rates: Arc<Rates>, broker: Arc<Broker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => rates.sample(&broker),
        }
    }
}
