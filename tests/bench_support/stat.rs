//! Median and range of a figure over a benchmark's rounds, shared by the
//! bench binaries (`#[path]`-included: benches of different crates).

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

    /// `med (min–max)` with `prec` decimals (`–` without samples).
    pub fn show(&self, prec: usize) -> String {
        if self.med.is_nan() {
            "–".into()
        } else if self.min == self.max {
            format!("{:.prec$}", self.med)
        } else {
            format!(
                "{:.prec$} ({:.prec$}–{:.prec$})",
                self.med, self.min, self.max
            )
        }
    }
}
