//! Loss, duplicate and reorder accounting. Pure: no I/O, no clock, no locks.
//!
//! The tracker is told every arrival as (consumer index, publisher index,
//! sequence number) and keeps:
//! - a bitset per publisher, `count` bits long, of the sequence numbers seen
//!   (per consumer *and* publisher when every consumer should get every
//!   message), which tells a first arrival from a duplicate;
//! - per (consumer, publisher), the highest sequence number seen so far: a
//!   first arrival below it is one reorder. Duplicates are not also counted
//!   as reorders, so one redelivery is one anomaly, not two.
//!
//! `expected` is what a loss-free broker would deliver: `sent × consumers`
//! when each consumer gets every message, `sent` when consumers compete.
//! `lost = expected − unique arrivals`.

/// A consumer connection of this run, `0..consumers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsumerIx(pub u32);

/// A publisher connection of this run, `0..publishers` (its index, not the
/// id on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublisherIx(pub u32);

impl std::fmt::Display for ConsumerIx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for PublisherIx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How the broker is meant to hand messages to the consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every consumer gets every message (topic subscriptions: fan-in, fan-out).
    Broadcast,
    /// Each message goes to exactly one consumer (a shared queue).
    Competing,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time this message reached (this consumer, for broadcast).
    /// `reordered` when an earlier-sent message of the same publisher had
    /// already reached the same consumer after a later one.
    First {
        /// The arrival was below the highest sequence number this consumer
        /// had seen from this publisher.
        reordered: bool,
    },
    /// Seen before.
    Duplicate,
}

/// An arrival the tracker cannot place; it is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Consumer index outside `0..consumers`.
    #[error("unknown consumer {0}")]
    UnknownConsumer(ConsumerIx),
    /// Publisher index outside `0..publishers`.
    #[error("unknown publisher {0}")]
    UnknownPublisher(PublisherIx),
    /// Sequence number at or above the per-publisher count.
    #[error("sequence number {0} beyond the per-publisher count")]
    SeqOutOfRange(u64),
}

/// Running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every accepted arrival, duplicates included.
    pub received: u64,
    /// First arrivals (per consumer for broadcast).
    pub unique: u64,
    /// Arrivals of a message already seen.
    pub duplicated: u64,
    /// First arrivals below the highest sequence number already seen by the
    /// same consumer from the same publisher.
    pub reordered: u64,
}

/// A fixed-size bitset of sequence numbers.
#[derive(Debug, Clone)]
struct Seen {
    /// One bit per sequence number in `0..count`.
    words: Vec<u64>,
}

impl Seen {
    fn new(count: u64) -> Self {
        let words = usize::try_from(count.div_ceil(64)).unwrap_or(usize::MAX);
        Seen {
            words: vec![0; words],
        }
    }

    /// Sets bit `seq`; returns whether it was already set. `seq` must be
    /// below the count (the caller checks).
    fn test_and_set(&mut self, seq: u64) -> bool {
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        let bit = 1u64 << (seq % 64);
        match self.words.get_mut(word) {
            Some(w) => {
                let was = *w & bit != 0;
                *w |= bit;
                was
            }
            None => false,
        }
    }
}

/// Arrival bookkeeping for one run.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Decides whether uniqueness is per consumer or global, and `expected`.
    delivery: Delivery,
    /// Number of publishers; publisher indices are `0..publishers`.
    publishers: usize,
    /// Number of consumers; consumer indices are `0..consumers`.
    consumers: usize,
    /// Messages per publisher; bounds the sequence numbers and the bitsets.
    count: u64,
    /// Seen sets: index `consumer * publishers + publisher` for broadcast,
    /// `publisher` for competing consumers.
    seen: Vec<Seen>,
    /// Highest sequence seen, index `consumer * publishers + publisher`.
    max_seq: Vec<Option<u64>>,
    /// Totals so far.
    counts: Counts,
}

impl Tracker {
    /// A tracker for `publishers` publishers of `count` messages each and
    /// `consumers` consumers.
    pub fn new(delivery: Delivery, publishers: usize, consumers: usize, count: u64) -> Self {
        let sets = match delivery {
            Delivery::Broadcast => publishers.saturating_mul(consumers),
            Delivery::Competing => publishers,
        };
        Tracker {
            delivery,
            publishers,
            consumers,
            count,
            seen: vec![Seen::new(count); sets],
            max_seq: vec![None; publishers.saturating_mul(consumers)],
            counts: Counts::default(),
        }
    }

    /// Records that `consumer` received message `seq` of `publisher`.
    pub fn record(
        &mut self,
        consumer: ConsumerIx,
        publisher: PublisherIx,
        seq: u64,
    ) -> Result<Arrival, Rejected> {
        let (c, p) = (consumer.0 as usize, publisher.0 as usize);
        if c >= self.consumers {
            return Err(Rejected::UnknownConsumer(consumer));
        }
        if p >= self.publishers {
            return Err(Rejected::UnknownPublisher(publisher));
        }
        if seq >= self.count {
            return Err(Rejected::SeqOutOfRange(seq));
        }
        let (consumer, publisher) = (c, p);
        let pair = consumer * self.publishers + publisher;
        let set = match self.delivery {
            Delivery::Broadcast => pair,
            Delivery::Competing => publisher,
        };
        self.counts.received += 1;
        let duplicate = self.seen.get_mut(set).is_some_and(|s| s.test_and_set(seq));
        if duplicate {
            self.counts.duplicated += 1;
            return Ok(Arrival::Duplicate);
        }
        self.counts.unique += 1;
        let reordered = match self.max_seq.get_mut(pair) {
            Some(max @ None) => {
                *max = Some(seq);
                false
            }
            Some(Some(max)) if seq < *max => true,
            Some(Some(max)) => {
                *max = seq;
                false
            }
            None => false,
        };
        if reordered {
            self.counts.reordered += 1;
        }
        Ok(Arrival::First { reordered })
    }

    /// Totals so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// What a loss-free broker delivers once `sent` messages were sent in
    /// all: `sent × consumers` for broadcast, `sent` for competing consumers.
    pub fn expected(&self, sent: u64) -> u64 {
        match self.delivery {
            Delivery::Broadcast => sent.saturating_mul(self.consumers as u64),
            Delivery::Competing => sent,
        }
    }

    /// `expected(sent) − unique arrivals`, never below zero.
    pub fn lost(&self, sent: u64) -> u64 {
        self.expected(sent).saturating_sub(self.counts.unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(tracker: &mut Tracker, arrivals: &[(u32, u32, u64)]) {
        for &(c, p, s) in arrivals {
            let _ = tracker.record(ConsumerIx(c), PublisherIx(p), s);
        }
    }

    /// `tracker.record` with bare numbers: consumer, publisher, seq.
    fn at(tracker: &mut Tracker, c: u32, p: u32, seq: u64) -> Result<Arrival, Rejected> {
        tracker.record(ConsumerIx(c), PublisherIx(p), seq)
    }

    #[test]
    fn lossy_input_counts_each_missing_message_as_lost() {
        let mut t = Tracker::new(Delivery::Broadcast, 2, 1, 10);
        // Publisher 0 loses 3 and 7; publisher 1 loses 0, 1 and 9.
        for seq in (0..10).filter(|s| *s != 3 && *s != 7) {
            at(&mut t, 0, 0, seq).unwrap();
        }
        for seq in 2..9 {
            at(&mut t, 0, 1, seq).unwrap();
        }
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (15, 15, 0, 0)
        );
        assert_eq!(t.expected(20), 20);
        assert_eq!(t.lost(20), 5);
    }

    #[test]
    fn duplicating_input_counts_duplicates_not_loss() {
        let mut t = Tracker::new(Delivery::Broadcast, 1, 1, 5);
        feed(
            &mut t,
            &[(0, 0, 0), (0, 0, 1), (0, 0, 1), (0, 0, 2), (0, 0, 2)],
        );
        feed(&mut t, &[(0, 0, 2), (0, 0, 3), (0, 0, 4)]);
        assert_eq!(at(&mut t, 0, 0, 4), Ok(Arrival::Duplicate));
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (9, 5, 4, 0)
        );
        assert_eq!(t.lost(5), 0);
    }

    #[test]
    fn reordering_input_counts_each_arrival_below_the_max() {
        let mut t = Tracker::new(Delivery::Broadcast, 1, 1, 8);
        // 0 1 4 2 3 7 5 6: 2, 3, 5 and 6 each arrive below the max seen.
        let order = [0, 1, 4, 2, 3, 7, 5, 6];
        let arrivals: Vec<Arrival> = order
            .iter()
            .map(|&s| at(&mut t, 0, 0, s).unwrap())
            .collect();
        assert_eq!(arrivals[3], Arrival::First { reordered: true });
        assert_eq!(arrivals[2], Arrival::First { reordered: false });
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (8, 8, 0, 4)
        );
        assert_eq!(t.lost(8), 0);
    }

    #[test]
    fn lossy_duplicating_reordering_input_counts_all_three() {
        let mut t = Tracker::new(Delivery::Broadcast, 1, 1, 6);
        // 5 is lost; 1 duplicated late (a duplicate, not also a reorder);
        // 2 arrives after 3.
        feed(
            &mut t,
            &[
                (0, 0, 0),
                (0, 0, 1),
                (0, 0, 3),
                (0, 0, 2),
                (0, 0, 4),
                (0, 0, 1),
            ],
        );
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (6, 5, 1, 1)
        );
        assert_eq!(t.lost(6), 1);
    }

    #[test]
    fn fan_out_expects_every_message_at_every_consumer() {
        let mut t = Tracker::new(Delivery::Broadcast, 1, 3, 4);
        // Consumer 0 gets all 4; consumer 1 misses seq 2; consumer 2 gets
        // 0, 1 and a duplicate of 1. The same seq at two consumers is no
        // duplicate.
        feed(&mut t, &[(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)]);
        feed(&mut t, &[(1, 0, 0), (1, 0, 1), (1, 0, 3)]);
        feed(&mut t, &[(2, 0, 0), (2, 0, 1), (2, 0, 1)]);
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (10, 9, 1, 0)
        );
        assert_eq!(t.expected(4), 12);
        assert_eq!(t.lost(4), 3);
    }

    #[test]
    fn competing_consumers_share_one_seen_set_per_publisher() {
        let mut t = Tracker::new(Delivery::Competing, 2, 2, 3);
        // Publisher 0's messages split between consumers; seq 1 reaches both
        // (a duplicate). Publisher 1 loses seq 2. Consumer 1 sees p0 seq 2
        // then nothing lower: no reorder across consumers.
        feed(&mut t, &[(0, 0, 0), (0, 0, 1), (1, 0, 2), (1, 0, 1)]);
        feed(&mut t, &[(1, 1, 1), (0, 1, 0)]);
        let c = t.counts();
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.reordered),
            (6, 5, 1, 0)
        );
        assert_eq!(t.expected(6), 6);
        assert_eq!(t.lost(6), 1);
    }

    #[test]
    fn arrivals_outside_the_run_are_rejected_and_not_counted() {
        let mut t = Tracker::new(Delivery::Broadcast, 1, 1, 10);
        assert_eq!(
            at(&mut t, 1, 0, 0),
            Err(Rejected::UnknownConsumer(ConsumerIx(1)))
        );
        assert_eq!(
            at(&mut t, 0, 1, 0),
            Err(Rejected::UnknownPublisher(PublisherIx(1)))
        );
        assert_eq!(at(&mut t, 0, 0, 10), Err(Rejected::SeqOutOfRange(10)));
        assert_eq!(t.counts(), Counts::default());
    }

    #[test]
    fn more_unique_than_expected_never_reports_negative_loss() {
        let mut t = Tracker::new(Delivery::Competing, 1, 1, 4);
        feed(&mut t, &[(0, 0, 0), (0, 0, 1), (0, 0, 2)]);
        assert_eq!(t.lost(2), 0);
    }
}
