//! A log-linear latency histogram (HDR-like): values in microseconds, 64 sub-buckets per
//! power of two, so any reported percentile is within 1/64 (≈1.6 %) of the true value.
//! Values below 64 µs are exact. Memory is allocated on the first sample, so idle clients
//! cost nothing.

/// Sub-buckets per octave, as a power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest tracked value: 2^40 µs (≈12.7 days); anything larger is clamped (the exact max is
/// still kept).
const MAX_BITS: u32 = 40;
const BUCKETS: usize = ((MAX_BITS - SUB_BITS + 1) as usize) * SUB as usize;

#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    sum: u128,
}

fn index(v: u64) -> usize {
    let v = v.min((1u64 << MAX_BITS) - 1);
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift; // in [SUB, 2*SUB)
    ((shift + 1) as usize) * SUB as usize + (mantissa - SUB) as usize
}

/// The range `[low, high]` of values that land in bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mantissa = i % SUB + SUB;
    let low = mantissa << shift;
    (low, low + (1u64 << shift) - 1)
}

impl Histogram {
    pub(crate) fn record(&mut self, v: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.n += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        if other.n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub(crate) fn count(&self) -> u64 {
        self.n
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    /// [`Histogram::quantile`] in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile(q) as f64 / 1000.0
    }

    /// The value at quantile `q` (0..=1), nearest rank; the bucket midpoint, never above the
    /// exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bounds(i);
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }
}

impl FromIterator<u64> for Histogram {
    fn from_iter<I: IntoIterator<Item = u64>>(values: I) -> Self {
        let mut h = Histogram::default();
        for v in values {
            h.record(v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, high) = bounds(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert!(high >= low);
            // Relative width at most 1/64.
            assert!((high - low) as f64 <= low as f64 / 64.0 + 1.0);
            assert_eq!(index(low), i);
            assert_eq!(index(high), i);
            expected_low = high + 1;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.95, 95_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.quantile(1.0), 100_000);
        let mut other = Histogram::default();
        other.record(7);
        h.merge(&other);
        assert_eq!(h.count(), 100_001);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
