//! Fault stall (`--latency`): the time from a fault's entry to the kernel's
//! accounting of it, from the kernel's log2 histograms. Pure functions and
//! report types, tested on synthetic buckets.
//!
//! Honest labels: this is not "time blocked on I/O". On Linux 6.18 a
//! "minor" fault can wait milliseconds on readahead another fault started,
//! and a "major" one may never sleep; the time includes retries
//! (`VM_FAULT_RETRY`) and whatever ran on the CPU meanwhile.
use mmtrace_common::{LATENCY_BUCKETS, LatencyHist, ProcStall};
use serde::Serialize;

/// Faults of one class (the kernel's minor or major) and their stall.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StallClass {
    /// Faults whose latency was measured (paired entry and accounting).
    pub faults: u64,
    /// Their summed latency, ns.
    pub total_ns: u64,
    /// Median latency, µs: the upper bound of its log2 bucket (at most 2x
    /// high), never above `max_us`. Null: no fault, or no histogram (per
    /// process only totals are kept).
    pub p50_us: Option<f64>,
    /// 99th percentile, µs, as `p50_us`.
    pub p99_us: Option<f64>,
    /// Longest single fault, µs (null: no fault).
    pub max_us: Option<f64>,
}

/// The stall of a file's (or a process's) faults, split minor/major.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FaultStall {
    /// `minor.total_ns + major.total_ns`.
    pub total_ns: u64,
    pub minor: StallClass,
    pub major: StallClass,
}

impl FaultStall {
    pub fn new(minor: StallClass, major: StallClass) -> Self {
        Self {
            total_ns: minor.total_ns + major.total_ns,
            minor,
            major,
        }
    }

    /// From a process's totals (no percentiles).
    pub fn from_totals(p: &ProcStall) -> Self {
        Self::new(
            class_from_totals(p.minor_count, p.minor_sum_ns, p.minor_max_ns),
            class_from_totals(p.major_count, p.major_sum_ns, p.major_max_ns),
        )
    }

    /// Adds another row's totals (an exited row, a sum of processes): the
    /// percentiles cannot be added and are dropped.
    pub fn add_totals(&mut self, o: &FaultStall) {
        for (a, b) in [(&mut self.minor, &o.minor), (&mut self.major, &o.major)] {
            a.faults += b.faults;
            a.total_ns += b.total_ns;
            a.max_us = match (a.max_us, b.max_us) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            a.p50_us = None;
            a.p99_us = None;
        }
        self.total_ns = self.minor.total_ns + self.major.total_ns;
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Upper bound (ns) of log2 bucket `i`: 0 for bucket 0, `2^i - 1` above.
pub fn bucket_upper_ns(i: usize) -> u64 {
    if i == 0 { 0 } else { (1u64 << i.min(63)) - 1 }
}

/// The `q` quantile (0 < q <= 1) of a log2 histogram, ns: the upper bound
/// of the bucket holding the rank-`ceil(q * count)` fault, clamped to
/// `max_ns` (and the last, open bucket is `max_ns`). `None`: empty.
pub fn percentile_ns(h: &LatencyHist, q: f64) -> Option<u64> {
    let total: u64 = h.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            if i == LATENCY_BUCKETS - 1 {
                return Some(h.max_ns);
            }
            return Some(bucket_upper_ns(i).min(h.max_ns));
        }
    }
    Some(h.max_ns)
}

/// One class's figures from its histogram.
pub fn class_from_hist(h: &LatencyHist) -> StallClass {
    StallClass {
        faults: h.count,
        total_ns: h.sum_ns,
        p50_us: percentile_ns(h, 0.50).map(us),
        p99_us: percentile_ns(h, 0.99).map(us),
        max_us: (h.count > 0).then(|| us(h.max_ns)),
    }
}

/// One class's figures from totals only.
pub fn class_from_totals(count: u64, sum_ns: u64, max_ns: u64) -> StallClass {
    StallClass {
        faults: count,
        total_ns: sum_ns,
        p50_us: None,
        p99_us: None,
        max_us: (count > 0).then(|| us(max_ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(b: &[(usize, u64)], max_ns: u64) -> LatencyHist {
        let mut h = LatencyHist::default();
        for &(i, n) in b {
            h.buckets[i] += n;
            h.count += n;
        }
        h.max_ns = max_ns;
        h
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        let h = LatencyHist::default();
        assert_eq!(percentile_ns(&h, 0.5), None);
        let c = class_from_hist(&h);
        assert_eq!(
            (c.faults, c.p50_us, c.p99_us, c.max_us),
            (0, None, None, None)
        );
    }

    #[test]
    fn one_bucket_gives_its_upper_bound_clamped_to_max() {
        // 10 faults of 1.0..2.0 µs: bucket 11 = [1024, 2048) ns.
        let h = hist(&[(11, 10)], 1900);
        assert_eq!(percentile_ns(&h, 0.5), Some(1900));
        assert_eq!(percentile_ns(&h, 0.99), Some(1900));
        let h = hist(&[(11, 10)], 5000);
        assert_eq!(percentile_ns(&h, 0.5), Some(2047));
    }

    #[test]
    fn p50_p99_and_max_from_spread_buckets() {
        // 98 fast (bucket 10: 512..1023 ns), 1 at ~1 ms (bucket 20), 1 at ~2 s.
        let h = hist(&[(10, 98), (20, 1), (31, 1)], 2_000_000_000);
        assert_eq!(percentile_ns(&h, 0.5), Some(1023));
        // rank 99 is the 1 ms one.
        assert_eq!(percentile_ns(&h, 0.99), Some((1 << 20) - 1));
        assert_eq!(percentile_ns(&h, 1.0), Some(2_000_000_000));
        let c = class_from_hist(&h);
        assert_eq!(c.max_us, Some(2_000_000.0));
        assert_eq!(c.p50_us, Some(1.023));
    }

    #[test]
    fn the_open_last_bucket_is_the_max() {
        let h = hist(&[(LATENCY_BUCKETS - 1, 2)], 900_000_000_000);
        assert_eq!(percentile_ns(&h, 0.5), Some(900_000_000_000));
    }

    #[test]
    fn zero_bucket_is_zero() {
        let h = hist(&[(0, 3)], 0);
        assert_eq!(percentile_ns(&h, 0.99), Some(0));
    }

    #[test]
    fn totals_add_and_drop_percentiles() {
        let mut a = FaultStall::new(
            class_from_hist(&hist(&[(10, 4)], 1000)),
            StallClass::default(),
        );
        a.minor.total_ns = 3000;
        a.total_ns = 3000;
        let b = FaultStall::from_totals(&ProcStall {
            minor_count: 1,
            minor_sum_ns: 500,
            minor_max_ns: 500,
            major_count: 2,
            major_sum_ns: 9000,
            major_max_ns: 6000,
        });
        a.add_totals(&b);
        assert_eq!(a.total_ns, 12_500);
        assert_eq!((a.minor.faults, a.major.faults), (5, 2));
        assert_eq!(a.minor.max_us, Some(1.0));
        assert_eq!(a.major.max_us, Some(6.0));
        assert_eq!(a.minor.p50_us, None);
    }
}
