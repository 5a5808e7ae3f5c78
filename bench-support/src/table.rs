//! Markdown tables ([`Table`]) and the numbers in them ([`thousands`],
//! [`thousands_f64`]).

use std::fmt;

/// `n` with thousands separators (`100000` → `100,000`).
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `x` with `prec` decimals and thousands separators (`18753.24`, 1 →
/// `18,753.2`).
pub fn thousands_f64(x: f64, prec: usize) -> String {
    let s = format!("{x:.prec$}");
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    match int.parse::<u64>() {
        Ok(i) if frac.is_empty() => format!("{sign}{}", thousands(i)),
        Ok(i) => format!("{sign}{}.{frac}", thousands(i)),
        // NaN, infinities.
        Err(_) => s.clone(),
    }
}

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// `|---|`: names, labels.
    Left,
    /// `|---:|`: figures (the default).
    Right,
    /// `|:-:|`: yes/no cells.
    Center,
}

/// A markdown table: a header row, an alignment row, then the rows, each
/// written `| a | b |` (its [`Display`](fmt::Display) ends with a newline).
///
/// ```
/// use lockstep_bench_support::table::{Align, Table};
///
/// let mut t = Table::new(["agents", "p50 µs"]).align(0, Align::Left);
/// t.row(["10", "4"]);
/// assert_eq!(t.to_string(), "| agents | p50 µs |\n|---|---:|\n| 10 | 4 |\n");
/// ```
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names, every column right-aligned.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        let header: Vec<String> = header.into_iter().map(Into::into).collect();
        let align = vec![Align::Right; header.len()];
        Self {
            header,
            align,
            rows: Vec::new(),
        }
    }

    /// Aligns column `col` (from 0) as `a`.
    pub fn align(mut self, col: usize, a: Align) -> Self {
        if let Some(x) = self.align.get_mut(col) {
            *x = a;
        }
        self
    }

    /// Adds a row (missing cells are left empty, extra ones dropped).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells.into_iter().map(Into::into).collect();
        r.resize(self.header.len(), String::new());
        self.rows.push(r);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no row yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            write!(f, "|")?;
            for c in cells {
                write!(f, " {c} |")?;
            }
            writeln!(f)
        };
        line(f, &self.header)?;
        write!(f, "|")?;
        for a in &self.align {
            f.write_str(match a {
                Align::Left => "---|",
                Align::Right => "---:|",
                Align::Center => ":-:|",
            })?;
        }
        writeln!(f)?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands_f64(18_753.24, 0), "18,753");
        assert_eq!(thousands_f64(2_614.06, 1), "2,614.1");
        assert_eq!(thousands_f64(-1_044.0, 0), "-1,044");
        assert_eq!(thousands_f64(0.8, 2), "0.80");
        assert_eq!(thousands_f64(f64::NAN, 1), "NaN");
    }

    #[test]
    fn markdown() {
        let mut t = Table::new(["a", "b", "c"]).align(2, Align::Center);
        t.row(["1"]);
        t.row(["1", "2", "3", "4"]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.to_string(),
            "| a | b | c |\n|---:|---:|:-:|\n| 1 |  |  |\n| 1 | 2 | 3 |\n"
        );
    }
}
