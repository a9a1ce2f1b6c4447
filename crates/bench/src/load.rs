//! What every protocol's publisher and consumer share: where to connect,
//! the publish plan (count, size, rate, window, deadlines) and pacing.

use crate::tracker::PublisherIx;
use std::time::{Duration, Instant};

/// Time allowed for one connection's handshake (TCP + protocol login +
/// subscription), so a broker that accepts but never answers cannot hang a
/// run.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a polite close (DISCONNECT, connection.close) before the
/// socket is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and as whom to connect for one protocol.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Broker host: the only address the generator connects to.
    pub host: String,
    /// This protocol's port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// AMQP virtual host / STOMP `host` header.
    pub vhost: String,
}

impl Endpoint {
    /// `host:port`, bracketing IPv6 literals, for sockets and messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One publisher's job.
#[derive(Debug, Clone)]
pub struct PubPlan {
    /// Which publisher this is.
    pub index: PublisherIx,
    /// Messages to publish.
    pub count: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Messages per second, 0 = as fast as the window allows.
    pub rate: f64,
    /// Outstanding (unacknowledged or unwritten) publishes allowed.
    pub inflight: u16,
    /// Publishing stops here even if `count` was not reached (the run's cap).
    pub stop_at: Instant,
    /// After the last publish, how long to wait for outstanding acks.
    pub drain: Duration,
}

/// Rate limiting by schedule: message `seq` is due at `start + seq / rate`.
/// A publisher that falls behind catches up in a burst instead of drifting,
/// so the offered load stays the one asked for.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// When message 0 is due.
    start: Instant,
    /// Seconds between messages; `None` = unlimited.
    interval_s: Option<f64>,
}

impl Pacer {
    /// A pacer for `rate` messages per second (0 = unlimited) from `start`.
    pub fn new(rate: f64, start: Instant) -> Self {
        let interval_s = (rate > 0.0 && rate.is_finite()).then(|| 1.0 / rate);
        Pacer { start, interval_s }
    }

    /// When message `seq` is due, or `None` when there is no limit.
    pub fn due(&self, seq: u64) -> Option<Instant> {
        let interval = self.interval_s?;
        let offset = Duration::try_from_secs_f64(seq as f64 * interval).unwrap_or(Duration::MAX);
        Some(self.start.checked_add(offset).unwrap_or(self.start))
    }

    /// Sleeps until message `seq` is due; `false` if that is at or after
    /// `stop_at` (the caller stops publishing).
    pub async fn wait(&self, seq: u64, stop_at: Instant) -> bool {
        match self.due(seq) {
            None => Instant::now() < stop_at,
            Some(due) if due >= stop_at => false,
            Some(due) => {
                tokio::time::sleep_until(due.into()).await;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_rate_has_no_schedule() {
        let p = Pacer::new(0.0, Instant::now());
        assert_eq!(p.due(5), None);
    }

    #[test]
    fn message_n_is_due_n_intervals_after_start() {
        let start = Instant::now();
        let p = Pacer::new(1000.0, start);
        assert_eq!(p.due(0), Some(start));
        assert_eq!(p.due(250), Some(start + Duration::from_millis(250)));
    }

    #[tokio::test]
    async fn wait_refuses_slots_past_the_stop_time() {
        let start = Instant::now();
        let p = Pacer::new(1000.0, start);
        let stop = start + Duration::from_micros(3_500);
        assert!(p.wait(3, stop).await);
        assert!(!p.wait(4, stop).await);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let e = Endpoint {
            host: "::1".into(),
            port: 1883,
            user: String::new(),
            password: String::new(),
            vhost: "/".into(),
        };
        assert_eq!(e.addr(), "[::1]:1883");
    }
}
