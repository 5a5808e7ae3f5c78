//! Statistics of a benchmark: the median and range of a figure over the
//! rounds ([`Stat`], collected by key in [`Samples`]), percentiles of one
//! round's samples ([`percentile`], [`quantile`]) and their spread
//! ([`coefficient_of_variation`]).

use std::borrow::Borrow;
use std::collections::BTreeMap;

/// Median and range of one figure over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// Median (NaN when there is no sample).
    pub med: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Stat {
    /// Of the samples in `v` that are numbers.
    pub fn of(v: &[f64]) -> Self {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self {
                med: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            med,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// Whether there was no sample.
    pub fn is_empty(&self) -> bool {
        self.med.is_nan()
    }

    /// The same figure in other units: `f` applied to the median and both
    /// ends of the range (`f` must not reverse the order).
    pub fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            med: f(self.med),
            min: f(self.min),
            max: f(self.max),
        }
    }

    /// `med (min–max)` with `prec` decimals (`–` without samples).
    pub fn show(&self, prec: usize) -> String {
        self.show_with(|x| format!("{x:.prec$}"))
    }

    /// `med (min–max)`, each number written by `f`; the range only where
    /// it is not a single value; `–` without samples.
    pub fn show_with(&self, f: impl Fn(f64) -> String) -> String {
        if self.is_empty() {
            "–".into()
        } else if self.min == self.max {
            f(self.med)
        } else {
            format!("{} ({}–{})", f(self.med), f(self.min), f(self.max))
        }
    }
}

/// Every figure's samples over the rounds, by key (a name, or a tuple such
/// as `(agents, "p50")`).
#[derive(Debug, Clone)]
pub struct Samples<K>(BTreeMap<K, Vec<f64>>);

impl<K> Default for Samples<K> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<K: Ord> Samples<K> {
    /// Adds one round's `v` to the figure `key`.
    pub fn push(&mut self, key: K, v: f64) {
        self.0.entry(key).or_default().push(v);
    }

    /// The samples of `key` (`None` where none was pushed).
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&[f64]>
    where
        K: Borrow<Q>,
    {
        self.0.get(key).map(Vec::as_slice)
    }

    /// The [`Stat`] of `key` (empty where none was pushed).
    pub fn stat<Q: Ord + ?Sized>(&self, key: &Q) -> Stat
    where
        K: Borrow<Q>,
    {
        Stat::of(self.get(key).unwrap_or_default())
    }
}

/// The `q` quantile (0 ≤ `q` ≤ 1) of `sorted` samples: the sample at rank
/// `round((n − 1) · q)`, as the Node.js peer computes it (so the 0.5
/// quantile of an even count is the upper of the two middle samples).
/// `None` without samples.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// The `q` quantile of `v` (sorted in place first), as [`percentile`];
/// NaN without samples.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, q).unwrap_or(f64::NAN)
}

/// (p50, p99) of `v` (sorted in place first), as [`percentile`]; NaN
/// without samples.
pub fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        percentile(v, 0.5).unwrap_or(f64::NAN),
        percentile(v, 0.99).unwrap_or(f64::NAN),
    )
}

/// Standard deviation over mean of `v`, in % (NaN without samples): how
/// much the samples of one cell spread.
pub fn coefficient_of_variation(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    100.0 * var.sqrt() / mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range_ignore_nan() {
        let s = Stat::of(&[3.0, f64::NAN, 1.0, 2.0, 10.0]);
        assert_eq!((s.med, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(s.show(1), "2.5 (1.0–10.0)");
        assert_eq!(Stat::of(&[4.0]).show(0), "4");
        assert!(Stat::of(&[]).is_empty());
        assert_eq!(Stat::of(&[f64::NAN]).show(2), "–");
        assert_eq!(Stat::of(&[1.0, 3.0]).map(|x| x * 2.0).show(0), "4 (2–6)");
    }

    #[test]
    fn samples_by_key() {
        let mut s: Samples<(u64, &str)> = Samples::default();
        s.push((10, "p50"), 2.0);
        s.push((10, "p50"), 4.0);
        assert_eq!(s.get(&(10, "p50")), Some(&[2.0, 4.0][..]));
        assert_eq!(s.stat(&(10, "p50")).med, 3.0);
        assert!(s.stat(&(10, "p99")).is_empty());
        let mut t: Samples<String> = Samples::default();
        t.push("a".into(), 1.0);
        assert_eq!(t.stat("a").med, 1.0);
    }

    #[test]
    fn percentiles_by_rounded_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
        let mut w = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&mut w, 0.5), 3.0);
        assert_eq!(p50_p99(&mut w), (3.0, 5.0));
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn spread() {
        assert_eq!(coefficient_of_variation(&[2.0, 2.0, 2.0]), 0.0);
        let cv = coefficient_of_variation(&[1.0, 3.0]);
        assert!((cv - 50.0).abs() < 1e-9, "{cv}");
    }
}
