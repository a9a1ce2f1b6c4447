//! End-to-end latency statistics: an HdrHistogram of microseconds with three
//! significant digits (every value up to 2,047 µs is exact; above that the
//! error is under 0.1 %). Pure: callers pass the timestamps in.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram distinguishes: one hour. Longer ones are
/// recorded as one hour (they only happen when something is badly wrong,
/// and the run is capped well below that anyway).
const MAX_US: u64 = 3_600_000_000;

/// Significant decimal digits kept by the histogram.
const SIGFIGS: u8 = 3;

/// The histogram could not be created (bad bounds; a bug, not an input).
#[derive(Debug, thiserror::Error)]
#[error("latency histogram: {0}")]
pub struct StatsError(String);

/// The percentiles the RESULT line reports, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest latency seen (HDR-rounded up to its bucket's top).
    pub max: u64,
}

/// Latency samples of one run.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Microseconds from send (payload timestamp) to receipt.
    hist: Histogram<u64>,
}

impl Latency {
    /// An empty histogram covering 1 µs .. 1 h at three significant digits.
    pub fn new() -> Result<Self, StatsError> {
        let hist = Histogram::new_with_bounds(1, MAX_US, SIGFIGS)
            .map_err(|e| StatsError(format!("{e:?}")))?;
        Ok(Latency { hist })
    }

    /// Records one latency in microseconds (clamped to one hour).
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us);
    }

    /// Records the latency of a message stamped `sent_ns` and received at
    /// `received_ns` (both ns since the Unix epoch). A receive time before
    /// the send time (clock stepped back) counts as 0 µs.
    pub fn record_between(&mut self, sent_ns: u64, received_ns: u64) {
        self.record_us(received_ns.saturating_sub(sent_ns) / 1_000);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// No samples yet.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Value at `quantile` (0.0 ..= 1.0), or `None` with no samples.
    pub fn quantile(&self, quantile: f64) -> Option<u64> {
        (!self.is_empty()).then(|| self.hist.value_at_quantile(quantile))
    }

    /// p50/p90/p99/p99.9/max, or `None` with no samples.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.is_empty() {
            return None;
        }
        let q = |quantile| self.hist.value_at_quantile(quantile);
        Some(Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_a_thousand_micros_gives_exact_percentiles() {
        let mut l = Latency::new().unwrap();
        for us in 1..=1000 {
            l.record_us(us);
        }
        assert_eq!(l.len(), 1000);
        assert_eq!(
            l.percentiles(),
            Some(Percentiles {
                p50: 500,
                p90: 900,
                p99: 990,
                p999: 999,
                max: 1000,
            })
        );
    }

    #[test]
    fn values_above_the_exact_range_round_to_their_bucket_top() {
        // 100,000 µs falls in the 2^16..2^17 range, where buckets are 64 µs
        // wide: [99,968, 100,031]. HDR reports a bucket's highest value.
        let mut l = Latency::new().unwrap();
        l.record_us(100_000);
        let p = l.percentiles().unwrap();
        assert_eq!((p.p50, p.max), (100_031, 100_031));
    }

    #[test]
    fn skewed_distribution_puts_the_tail_in_p99_and_p999() {
        // 990 fast (100 µs) and 10 slow (5,000 µs) samples: the 99th
        // percentile is the last fast one, the 99.9th a slow one. 5,000 is in
        // the 4,096..8,191 range, 4 µs buckets: [5,000, 5,003].
        let mut l = Latency::new().unwrap();
        for _ in 0..990 {
            l.record_us(100);
        }
        for _ in 0..10 {
            l.record_us(5_000);
        }
        let p = l.percentiles().unwrap();
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (100, 100, 100, 5_003, 5_003)
        );
    }

    #[test]
    fn latency_is_receive_minus_send_in_whole_micros() {
        let mut l = Latency::new().unwrap();
        l.record_between(1_000_000_000, 1_000_250_999);
        assert_eq!(l.quantile(1.0), Some(250));
    }

    #[test]
    fn receive_before_send_counts_as_zero() {
        let mut l = Latency::new().unwrap();
        l.record_between(2_000, 1_000);
        assert_eq!(l.quantile(0.5), Some(0));
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let l = Latency::new().unwrap();
        assert_eq!(l.percentiles(), None);
        assert_eq!(l.quantile(0.99), None);
    }
}
