//! The run's shared measurements: what the publishers stamped and wrote,
//! what the consumers received, and when. Publishers and consumers of every
//! protocol report here; the progress line and the RESULT line read
//! [`Snapshot`]s.
//!
//! A std mutex guards the tracker and the histogram: it is held for a few
//! hundred nanoseconds per message and never across an `.await`, so an async
//! mutex would only add cost.

use crate::payload::{self, Header};
use crate::stats::{Latency, Percentiles};
use crate::tracker::{ConsumerIx, Counts, PublisherIx, Tracker};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Receive-side state behind the mutex.
#[derive(Debug)]
struct Inner {
    /// Loss / duplicate / reorder accounting.
    tracker: Tracker,
    /// End-to-end latencies.
    latency: Latency,
    /// When the latest accepted message arrived (end of the throughput window).
    last_receive: Option<Instant>,
    /// Time-based runs: arrivals inside the measuring window, and the
    /// last of them.
    in_window: u64,
    last_in_window: Option<Instant>,
    /// Messages that were not ours (another run's leftovers, a foreign
    /// publisher, a short body); ignored, counted for the log.
    strays: u64,
    /// Queue sets: this run's messages that came from a queue other than
    /// the one they were sent to; not recorded (so also lost, unless
    /// they come from their own queue too).
    misrouted: u64,
}

/// Shared by every publisher and consumer of one run.
#[derive(Debug)]
pub struct Collector {
    /// Publisher ids of this run are `base_id + index` (wrapping), so
    /// messages left over from an earlier run on a durable queue or session
    /// are recognised as strays instead of being counted as duplicates.
    base_id: u32,
    /// Publisher count, to map ids back to indices.
    publishers: u32,
    /// Messages written to the wire, all publishers together.
    sent: AtomicU64,
    /// MQTT deliveries that arrived at a lower QoS than subscribed.
    below_qos: AtomicU64,
    /// Start of the throughput window: the first message stamped.
    first_publish: OnceLock<Instant>,
    /// Time-based runs: (warm-up, measuring time) from the first publish.
    /// Only arrivals in that window count towards the rate and latency.
    window: Option<(Duration, Duration)>,
    /// Messages sent and not yet delivered (to every consumer, on
    /// average) may not pass this many (0: no bound): publishers wait for
    /// consumers, so a run measures the rate a broker sustains rather
    /// than how long its queues grow.
    max_lag: u64,
    /// What a loss-free broker delivers per message sent (consumers for
    /// broadcast, 1 for competing consumers).
    fan: u64,
    /// First arrivals, all consumers together (read by the lag gate).
    unique: AtomicU64,
    /// A publisher is waiting at the lag gate.
    gate_waiting: AtomicBool,
    gate: Notify,
    /// How long one wait at the gate lasts at most ([`GATE_PATIENCE`]).
    gate_patience: Duration,
    /// Queue sets (`--queues N`): N, and consumer index = queue index, so
    /// each arrival is checked against [`crate::address::queue_for`].
    /// 0: no check.
    queues: u32,
    /// Receive-side state.
    inner: Mutex<Inner>,
}

/// How long a publisher waits at the lag gate before it sends anyway (a
/// broker that dropped messages would otherwise hold it forever).
const GATE_PATIENCE: Duration = Duration::from_millis(50);

/// A consistent view of the run so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Messages written to the wire.
    pub sent: u64,
    /// What a loss-free broker delivers for `sent`.
    pub expected: u64,
    /// Arrival totals.
    pub counts: Counts,
    /// `expected − unique`.
    pub lost: u64,
    /// Arrivals that were not this run's.
    pub strays: u64,
    /// Queue sets: arrivals of this run's messages from the wrong queue.
    pub misrouted: u64,
    /// MQTT deliveries that arrived at a lower QoS than subscribed.
    pub below_qos: u64,
    /// Latency percentiles, `None` before the first arrival.
    pub latency: Option<Percentiles>,
    /// Seconds from the first publish to the last receive, `None` before
    /// both; in a time-based run, the measuring window.
    pub window_s: Option<f64>,
    /// Arrivals in the throughput window: every one, or in a time-based
    /// run those of the measuring window.
    pub measured: u64,
}

impl Collector {
    /// A collector for `publishers` publishers whose ids start at `base_id`.
    pub fn new(base_id: u32, publishers: u32, tracker: Tracker, latency: Latency) -> Self {
        Collector {
            base_id,
            publishers,
            sent: AtomicU64::new(0),
            below_qos: AtomicU64::new(0),
            first_publish: OnceLock::new(),
            window: None,
            max_lag: 0,
            fan: tracker.expected(1),
            unique: AtomicU64::new(0),
            gate_waiting: AtomicBool::new(false),
            gate: Notify::new(),
            gate_patience: GATE_PATIENCE,
            queues: 0,
            inner: Mutex::new(Inner {
                tracker,
                latency,
                last_receive: None,
                in_window: 0,
                last_in_window: None,
                strays: 0,
                misrouted: 0,
            }),
        }
    }

    /// Makes the run time-based: arrivals in the `warmup` after the first
    /// publish are tracked (loss, duplicates) but not measured; the rate
    /// and latency are those of the `measure` seconds after it.
    pub fn with_window(mut self, warmup: Duration, measure: Duration) -> Self {
        self.window = Some((warmup, measure));
        self
    }

    /// A queue set of `queues` queues: consumer index `i` is queue `i`,
    /// and an arrival from any queue but the one its message was sent to
    /// is counted as misrouted instead of recorded.
    pub fn with_queues(mut self, queues: u32) -> Self {
        self.queues = queues;
        self
    }

    /// Bounds the deliveries owed for what was sent (see `max_lag`).
    pub fn with_max_lag(mut self, max_lag: u64) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// Messages sent that the consumers have not all had yet, on average:
    /// deliveries owed ÷ deliveries per message.
    fn lag(&self) -> u64 {
        let owed = self.sent.load(Ordering::Relaxed).saturating_mul(self.fan);
        owed.saturating_sub(self.unique.load(Ordering::Relaxed)) / self.fan.max(1)
    }

    /// Waits while the consumers are more than `max_lag` messages behind
    /// (never past `stop_at`, and at most a short while each time);
    /// false once `stop_at` has come.
    pub async fn wait_for_room(&self, stop_at: Instant) -> bool {
        if self.max_lag == 0 || self.lag() <= self.max_lag {
            return self.may_publish(stop_at);
        }
        let deadline = (Instant::now() + self.gate_patience).min(stop_at);
        while self.lag() > self.max_lag {
            let woken = self.gate.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.gate_waiting.store(true, Ordering::SeqCst);
            if self.lag() <= self.max_lag {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), woken)
                .await
                .is_err()
            {
                break;
            }
        }
        self.may_publish(stop_at)
    }

    /// Before `stop_at` and, in a time-based run, before the measuring
    /// window ends.
    fn may_publish(&self, stop_at: Instant) -> bool {
        let now = Instant::now();
        let window_open = match (self.window, self.first_publish.get()) {
            (Some((warmup, measure)), Some(first)) => now < *first + warmup + measure,
            _ => true,
        };
        window_open && now < stop_at
    }

    /// A base id that differs between runs: the clock's low bits mixed with
    /// the process id.
    pub fn fresh_base_id() -> u32 {
        let ns = payload::now_ns();
        ((ns ^ (ns >> 32)) as u32) ^ std::process::id().rotate_left(16)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters behind; they
        // are still the best numbers we have.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wire id of publisher `index`.
    pub fn publisher_id(&self, index: PublisherIx) -> u32 {
        self.base_id.wrapping_add(index.0)
    }

    /// Stamps message `seq` of publisher `index`, `size` bytes long, with
    /// the current time. The first call starts the throughput window.
    pub fn message(&self, index: PublisherIx, seq: u64, size: usize) -> Bytes {
        self.first_publish.get_or_init(Instant::now);
        let header = Header {
            publisher: self.publisher_id(index),
            seq,
            sent_ns: payload::now_ns(),
        };
        payload::encode(header, size)
    }

    /// `n` more messages were written to the wire.
    pub fn on_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Consumer `consumer` received `body`.
    pub fn on_message(&self, consumer: ConsumerIx, body: &[u8]) {
        let now_ns = payload::now_ns();
        let now = Instant::now();
        let mut inner = self.lock();
        let Ok(header) = payload::decode(body) else {
            inner.strays += 1;
            return;
        };
        let index = header.publisher.wrapping_sub(self.base_id);
        if index >= self.publishers {
            inner.strays += 1;
            return;
        }
        if self.queues > 0
            && crate::address::queue_for(index, header.seq, self.queues) != consumer.0
        {
            inner.misrouted += 1;
            return;
        }
        match inner
            .tracker
            .record(consumer, PublisherIx(index), header.seq)
        {
            Ok(arrival) => {
                if matches!(arrival, crate::tracker::Arrival::First { .. }) {
                    self.unique.fetch_add(1, Ordering::Relaxed);
                }
                let measured = match (self.window, self.first_publish.get()) {
                    (Some((warmup, measure)), Some(first)) => {
                        let since = now.saturating_duration_since(*first);
                        since >= warmup && since < warmup + measure
                    }
                    _ => true,
                };
                if measured {
                    inner.latency.record_between(header.sent_ns, now_ns);
                    inner.in_window += 1;
                    inner.last_in_window = Some(now);
                }
                inner.last_receive = Some(now);
            }
            Err(_) => inner.strays += 1,
        }
        drop(inner);
        // Half the bound free again: waiting publishers go on.
        if self.max_lag > 0
            && self.gate_waiting.load(Ordering::Relaxed)
            && self.lag() <= self.max_lag / 2
        {
            self.gate_waiting.store(false, Ordering::SeqCst);
            self.gate.notify_waiters();
        }
    }

    /// MQTT consumer `consumer` received `body` at QoS `qos`, having
    /// subscribed at `subscribed`.
    pub fn on_mqtt_message(&self, consumer: ConsumerIx, body: &[u8], qos: u8, subscribed: u8) {
        if qos < subscribed {
            self.below_qos.fetch_add(1, Ordering::Relaxed);
        }
        self.on_message(consumer, body);
    }

    /// The run so far.
    pub fn snapshot(&self) -> Snapshot {
        let sent = self.sent.load(Ordering::Relaxed);
        let inner = self.lock();
        let window_s = match (self.window, self.first_publish.get(), inner.last_receive) {
            // Time-based: the measuring window, or the part of it that had
            // arrivals (a run that ended early).
            (Some((warmup, measure)), Some(first), _) => inner.last_in_window.map(|last| {
                let start = *first + warmup;
                let seen = last.saturating_duration_since(start);
                if last >= start + measure.mul_f64(0.99) {
                    measure.as_secs_f64()
                } else {
                    seen.as_secs_f64()
                }
            }),
            (None, Some(first), Some(last)) => {
                Some(last.saturating_duration_since(*first).as_secs_f64())
            }
            _ => None,
        };
        Snapshot {
            sent,
            expected: inner.tracker.expected(sent),
            counts: inner.tracker.counts(),
            lost: inner.tracker.lost(sent),
            strays: inner.strays,
            misrouted: inner.misrouted,
            below_qos: self.below_qos.load(Ordering::Relaxed),
            latency: inner.latency.percentiles(),
            window_s,
            measured: inner.in_window,
        }
    }

    /// Every message sent so far has arrived (once per consumer for
    /// broadcast).
    pub fn complete(&self) -> bool {
        let sent = self.sent.load(Ordering::Relaxed);
        let inner = self.lock();
        inner.tracker.counts().unique >= inner.tracker.expected(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Delivery;
    use std::sync::Arc;

    fn collector(base: u32, publishers: u32, consumers: usize) -> Collector {
        Collector::new(
            base,
            publishers,
            Tracker::new(Delivery::Broadcast, publishers as usize, consumers, 10),
            Latency::new().unwrap(),
        )
    }

    #[test]
    fn messages_of_this_run_are_tracked_and_others_are_strays() {
        let c = collector(u32::MAX, 2, 1);
        // Base id u32::MAX: publisher 1's id wraps to 0.
        assert_eq!(c.publisher_id(PublisherIx(1)), 0);
        let own = c.message(PublisherIx(1), 3, 32);
        c.on_sent(1);
        c.on_message(ConsumerIx(0), &own);
        let foreign = payload::encode(
            Header {
                publisher: 5,
                seq: 0,
                sent_ns: 0,
            },
            32,
        );
        c.on_message(ConsumerIx(0), &foreign);
        c.on_message(ConsumerIx(0), b"short");
        let s = c.snapshot();
        assert_eq!(
            (s.sent, s.expected, s.counts.received, s.lost, s.strays),
            (1, 1, 1, 0, 2)
        );
        assert!(s.latency.is_some());
        assert!(c.complete());
    }

    #[test]
    fn mqtt_deliveries_below_the_subscribed_qos_are_counted() {
        let c = collector(7, 1, 1);
        for (seq, qos) in [(0, 1), (1, 0), (2, 2)] {
            let body = c.message(PublisherIx(0), seq, 20);
            c.on_sent(1);
            c.on_mqtt_message(ConsumerIx(0), &body, qos, 1);
        }
        let s = c.snapshot();
        assert_eq!((s.counts.received, s.lost, s.below_qos), (3, 0, 1));
    }

    #[test]
    fn nothing_received_means_everything_sent_is_lost() {
        let c = collector(100, 1, 2);
        let _ = c.message(PublisherIx(0), 0, 20);
        c.on_sent(3);
        let s = c.snapshot();
        assert_eq!((s.expected, s.lost, s.window_s), (6, 6, None));
        assert!(!c.complete());
    }

    #[test]
    fn a_time_based_run_measures_only_its_window() {
        let c = collector(1, 1, 1).with_window(Duration::from_millis(40), Duration::from_secs(60));
        // The first publish opens the warm-up; what arrives in it is
        // tracked (not lost) but not measured.
        let early = c.message(PublisherIx(0), 0, 20);
        c.on_sent(1);
        c.on_message(ConsumerIx(0), &early);
        std::thread::sleep(Duration::from_millis(50));
        for seq in 1..4 {
            let body = c.message(PublisherIx(0), seq, 20);
            c.on_sent(1);
            c.on_message(ConsumerIx(0), &body);
        }
        let s = c.snapshot();
        assert_eq!((s.counts.received, s.lost, s.measured), (4, 0, 3));
        // Arrivals stopped well inside the window: the rate is over the
        // part that had arrivals, not the minute asked for.
        assert!(s.window_s.is_some_and(|w| w < 1.0), "{:?}", s.window_s);
        assert!(c.may_publish(Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn a_queue_set_places_each_message_in_its_own_queue() {
        // 2 publishers, 3 queues (the tracker's consumers).
        let c = Collector::new(
            40,
            2,
            Tracker::new(Delivery::Competing, 2, 3, 10),
            Latency::new().unwrap(),
        )
        .with_queues(3);
        // Publisher 1's message 4 goes to queue (1 + 4) mod 3 = 2.
        let body = c.message(PublisherIx(1), 4, 20);
        c.on_sent(1);
        c.on_message(ConsumerIx(0), &body);
        c.on_message(ConsumerIx(1), &body);
        let s = c.snapshot();
        assert_eq!((s.counts.received, s.misrouted, s.lost), (0, 2, 1));
        c.on_message(ConsumerIx(2), &body);
        let s = c.snapshot();
        assert_eq!((s.counts.received, s.misrouted, s.lost), (1, 2, 0));
        // Publisher 0's 0, 1, 2 in queues 0, 1, 2: none misrouted, and
        // one queue's order is its own (no reorder across queues).
        for seq in [2, 1, 0] {
            let body = c.message(PublisherIx(0), seq, 20);
            c.on_sent(1);
            c.on_message(ConsumerIx(seq as u32), &body);
        }
        let s = c.snapshot();
        assert_eq!(
            (s.counts.received, s.counts.reordered, s.misrouted, s.lost),
            (4, 0, 2, 0)
        );
        assert!(c.complete());
    }

    #[tokio::test]
    async fn publishers_wait_at_the_lag_bound_until_consumers_catch_up() {
        let mut c = collector(3, 1, 1).with_max_lag(2);
        // Patient enough that only the consumers' catching up can end the
        // wait in time (not the give-up that guards against lost messages).
        c.gate_patience = Duration::from_secs(20);
        let c = Arc::new(c);
        let stop = Instant::now() + Duration::from_secs(30);
        let bodies: Vec<Bytes> = (0..3)
            .map(|seq| c.message(PublisherIx(0), seq, 20))
            .collect();
        c.on_sent(3);
        let waiter = tokio::spawn({
            let c = Arc::clone(&c);
            async move {
                let t = Instant::now();
                assert!(c.wait_for_room(stop).await);
                t.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "3 owed is past the bound of 2");
        for b in &bodies {
            c.on_message(ConsumerIx(0), b);
        }
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(10), "{waited:?}");
        assert!(
            waited < Duration::from_secs(10),
            "woken by the arrivals: {waited:?}"
        );
        // Nothing owed: no wait at all.
        assert!(c.wait_for_room(stop).await);
    }
}
