//! [`LatencyHistogram`]: capture-to-receive latency samples of one track (or merged over
//! many), in microseconds.

use std::time::Duration;

/// A latency distribution in microseconds (1 µs to 60 s, two significant digits).
#[derive(Clone, PartialEq)]
pub struct LatencyHistogram(hdrhistogram::Histogram<u64>);

// Histogram equality compares counts: a proper equivalence.
impl Eq for LatencyHistogram {}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.len())
            .field("p50", &self.quantile(0.5))
            .field("max", &self.quantile(1.0))
            .finish()
    }
}

impl LatencyHistogram {
    /// Largest value recorded; larger values are clamped.
    pub const MAX: Duration = Duration::from_secs(60);

    /// An empty histogram.
    pub fn new() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, Self::MAX.as_micros() as u64, 2)
                .expect("constant bounds satisfy hdrhistogram's preconditions"),
        )
    }

    /// Records one sample (clamped to 1 µs ..= [`Self::MAX`]).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, Self::MAX.as_micros() as u64);
        self.0.saturating_record(us);
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at quantile `q` (0.0 ..= 1.0); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.is_empty()).then(|| Duration::from_micros(self.0.value_at_quantile(q)))
    }

    /// Mean; `None` when empty.
    pub fn mean(&self) -> Option<Duration> {
        (!self.is_empty()).then(|| Duration::from_micros(self.0.mean() as u64))
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail; clamp defensively otherwise.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The underlying histogram (microseconds).
    pub fn histogram(&self) -> &hdrhistogram::Histogram<u64> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_merge() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(100));
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert!(a
            .quantile(1.0)
            .is_some_and(|d| d <= Duration::from_secs(61)));
        assert!(LatencyHistogram::new().quantile(0.5).is_none());
    }
}
