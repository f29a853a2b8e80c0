//! The bench's statistics, pure: ABBA order, per-pair differences, their
//! median with spread, and the mapping of an outside storm's timestamped
//! chunks to the windows a tracer was on or off.

use crate::util::median;

/// Whether chunk `j` (0 or 1) of pair `i` has the hooks attached: ABBA
/// order (off-on, on-off, off-on, …), so a slow drift over the run adds to
/// the "on" chunk of one pair as much as it takes from the next. The same
/// rule as `mmtrace bench-chunks` (its own test checks the sequence).
pub fn abba_on(i: u32, j: u32) -> bool {
    i.is_multiple_of(2) == (j == 1)
}

/// Whether `on_first` (per pair: the on chunk came first) is the ABBA
/// schedule of [`abba_on`].
pub fn is_abba(on_first: &[bool]) -> bool {
    on_first
        .iter()
        .enumerate()
        .all(|(i, &f)| f == abba_on(i as u32, 0))
}

/// `on[i] - off[i]` per pair (pairs beyond the shorter side are dropped).
pub fn pair_differences(off: &[f64], on: &[f64]) -> Vec<f64> {
    off.iter().zip(on).map(|(a, b)| b - a).collect()
}

/// The `q` quantile (0..=1) by linear interpolation between order
/// statistics; NaN for no values.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Median with its spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
    /// A distribution-free ~95% confidence interval of the median (order
    /// statistics n/2 ± 0.98·√n, the normal approximation of the binomial).
    pub ci_lo: f64,
    pub ci_hi: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                n,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                q1: f64::NAN,
                q3: f64::NAN,
                ci_lo: f64::NAN,
                ci_hi: f64::NAN,
            };
        }
        let half = 0.98 * (n as f64).sqrt();
        let lo = ((n as f64 / 2.0 - half).floor().max(0.0)) as usize;
        let hi = ((n as f64 / 2.0 + half).ceil() as usize).min(n - 1);
        Self {
            n,
            median: median(&v),
            min: v[0],
            max: v[n - 1],
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            ci_lo: v[lo],
            ci_hi: v[hi],
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n, "median": self.median, "min": self.min, "max": self.max,
            "q1": self.q1, "q3": self.q3, "ci95_lo": self.ci_lo, "ci95_hi": self.ci_hi,
        })
    }
}

/// One chunk of the outside storm: wall-clock start and end (ns since the
/// epoch) and its ns per fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chunk {
    pub t0: u64,
    pub t1: u64,
    pub ns_per_fault: f64,
}

/// The ns per fault of the chunks wholly inside `[start, end]`.
pub fn in_window(chunks: &[Chunk], start: u64, end: u64) -> Vec<f64> {
    chunks
        .iter()
        .filter(|c| c.t0 >= start && c.t1 <= end)
        .map(|c| c.ns_per_fault)
        .collect()
}

/// Per traced window `i` (between untraced windows `i` and `i + 1`): its
/// median minus the mean of its two neighbours' medians; NaN where a window
/// has no chunks or a neighbour is missing.
pub fn window_differences(untraced: &[Vec<f64>], traced: &[Vec<f64>]) -> Vec<f64> {
    traced
        .iter()
        .enumerate()
        .map(|(i, t)| match (untraced.get(i), untraced.get(i + 1)) {
            (Some(a), Some(b)) => median(t) - (median(a) + median(b)) / 2.0,
            _ => f64::NAN,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abba_sequence() {
        let seq: Vec<bool> = (0..4)
            .flat_map(|i| (0..2).map(move |j| abba_on(i, j)))
            .collect();
        assert_eq!(
            seq,
            [false, true, true, false, false, true, true, false],
            "ABBA: off-on, on-off, ..."
        );
        assert!(is_abba(&[false, true, false, true]));
        assert!(!is_abba(&[false, false]));
        assert!(!is_abba(&[true]));
        // Each pair has exactly one on chunk.
        for i in 0..10 {
            assert_ne!(abba_on(i, 0), abba_on(i, 1));
        }
    }

    #[test]
    fn differences_are_on_minus_off_per_pair() {
        let d = pair_differences(&[100.0, 200.0, 150.0], &[110.0, 190.0, 175.0, 999.0]);
        assert_eq!(d, [10.0, -10.0, 25.0]);
        assert_eq!(median(&d), 10.0);
    }

    #[test]
    fn median_of_differences_resists_outliers() {
        // A drifting, noisy baseline with a constant +12 ns per pair and two
        // pairs hit by a neighbour's burst.
        let off: Vec<f64> = (0..120)
            .map(|i| 1500.0 + (i as f64 * 7.0) % 300.0)
            .collect();
        let mut on: Vec<f64> = off.iter().map(|v| v + 12.0).collect();
        on[5] += 5000.0;
        on[77] -= 4000.0;
        let s = Summary::of(&pair_differences(&off, &on));
        assert_eq!(s.median, 12.0);
        assert_eq!((s.min, s.max), (-3988.0, 5012.0));
        assert_eq!((s.q1, s.q3), (12.0, 12.0));
        assert!(s.ci_lo <= 12.0 && s.ci_hi >= 12.0);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn summary_of_nothing_is_nan_and_of_one_is_that_value() {
        assert!(Summary::of(&[]).median.is_nan());
        let s = Summary::of(&[7.0]);
        assert_eq!(
            (s.median, s.min, s.max, s.ci_lo, s.ci_hi),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn windows_take_whole_chunks_and_neighbours() {
        let c = |t0, t1, v| Chunk {
            t0,
            t1,
            ns_per_fault: v,
        };
        let chunks = [
            c(0, 10, 100.0),
            c(10, 20, 102.0),
            c(20, 30, 150.0),
            c(30, 40, 152.0),
            c(40, 50, 104.0),
            c(50, 60, 106.0),
        ];
        assert_eq!(in_window(&chunks, 0, 20), [100.0, 102.0]);
        // A chunk straddling an edge belongs to neither window.
        assert_eq!(in_window(&chunks, 5, 30), [102.0, 150.0]);
        let u = vec![in_window(&chunks, 0, 20), in_window(&chunks, 40, 60)];
        let t = vec![in_window(&chunks, 20, 40)];
        // 151 - (101 + 105) / 2
        assert_eq!(window_differences(&u, &t), [48.0]);
        // An empty traced window, or one without a following neighbour, is NaN.
        assert!(window_differences(&u, &[vec![]])[0].is_nan());
        assert!(window_differences(&u, &[vec![1.0], vec![2.0]])[1].is_nan());
    }
}
