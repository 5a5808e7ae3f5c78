//! Writing a bench's results into the documentation: the text between two
//! marker lines of a file is replaced ([`replace_between`],
//! [`write_between`]), nothing else.  Benches do it only when asked
//! ([`WRITE_DOCS_VAR`]), so that a run never rewrites docs by surprise.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Set to `1`, a bench that keeps a table in the documentation writes it
/// there (once every size it measures has run); otherwise it only prints.
pub const WRITE_DOCS_VAR: &str = "LOCKSTEP_BENCH_WRITE_DOCS";

/// Whether [`WRITE_DOCS_VAR`] asks for the docs to be written.
pub fn write_docs_requested() -> bool {
    std::env::var(WRITE_DOCS_VAR).is_ok_and(|v| v == "1")
}

/// Why the text between two markers could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerError {
    /// The begin marker is not in the text.
    MissingBegin(String),
    /// No end marker follows the begin marker.
    MissingEnd(String),
    /// A marker stands more than once: which pair is meant is unclear.
    Repeated(String),
}

impl fmt::Display for MarkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingBegin(m) => write!(f, "marker `{m}` not found"),
            Self::MissingEnd(m) => write!(f, "marker `{m}` not found after the begin marker"),
            Self::Repeated(m) => write!(f, "marker `{m}` stands more than once"),
        }
    }
}

impl std::error::Error for MarkerError {}

/// `text` with what stands between the line of `begin` and the line of
/// `end` replaced by `content` (one newline after `begin` and before
/// `end`, whatever `content` starts or ends with); the markers and
/// everything outside them are kept as they are.
pub fn replace_between(
    text: &str,
    begin: &str,
    end: &str,
    content: &str,
) -> Result<String, MarkerError> {
    for m in [begin, end] {
        if text.matches(m).count() > 1 {
            return Err(MarkerError::Repeated(m.to_owned()));
        }
    }
    let b = text
        .find(begin)
        .ok_or_else(|| MarkerError::MissingBegin(begin.to_owned()))?
        + begin.len();
    let e = text[b..]
        .find(end)
        .ok_or_else(|| MarkerError::MissingEnd(end.to_owned()))?
        + b;
    let body = content.trim_matches('\n');
    let mut out = String::with_capacity(text.len() + content.len());
    out.push_str(&text[..b]);
    out.push('\n');
    if !body.is_empty() {
        out.push_str(body);
        out.push('\n');
    }
    out.push_str(&text[e..]);
    Ok(out)
}

/// [`replace_between`] on the file at `path`, written back only when the
/// markers are there.
pub fn write_between(path: &Path, begin: &str, end: &str, content: &str) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let new = replace_between(&text, begin, end, content)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(path, new).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `t` as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_minute(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// (year, month, day) of the day `z` days after 1970-01-01 (proleptic
/// Gregorian calendar; Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const B: &str = "<!-- t:begin -->";
    const E: &str = "<!-- t:end -->";

    #[test]
    fn replaces_only_between_the_markers() {
        let text = format!("# Title\n\nintro\n{B}\nold table\nold line\n{E}\n\nafter\n");
        let out = replace_between(&text, B, E, "new table\n").expect("markers");
        assert_eq!(
            out,
            format!("# Title\n\nintro\n{B}\nnew table\n{E}\n\nafter\n")
        );
        // Idempotent, and an empty body leaves the markers adjacent.
        assert_eq!(
            replace_between(&out, B, E, "\nnew table").expect("again"),
            out
        );
        assert_eq!(
            replace_between(&text, B, E, "").expect("empty"),
            format!("# Title\n\nintro\n{B}\n{E}\n\nafter\n")
        );
    }

    #[test]
    fn missing_or_repeated_markers_are_clear_errors() {
        let e = replace_between("no markers\n", B, E, "x").expect_err("no begin");
        assert_eq!(e, MarkerError::MissingBegin(B.into()));
        assert_eq!(e.to_string(), format!("marker `{B}` not found"));
        let e = replace_between(&format!("{E}\n{B}\n"), B, E, "x").expect_err("end first");
        assert_eq!(e, MarkerError::MissingEnd(E.into()));
        assert!(e.to_string().contains("after the begin marker"));
        let e = replace_between(&format!("{B}\n{E}\n{B}\n"), B, E, "x").expect_err("twice");
        assert_eq!(e, MarkerError::Repeated(B.into()));
    }

    #[test]
    fn writes_a_file_or_leaves_it_alone() {
        let dir = crate::paths::Scratch::new("docs-test");
        let p = dir.path().join("doc.md");
        std::fs::write(&p, format!("a\n{B}\nx\n{E}\nb\n")).expect("write");
        write_between(&p, B, E, "y").expect("markers");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("a\n{B}\ny\n{E}\nb\n")
        );
        std::fs::write(&p, "no markers\n").expect("write");
        let e = write_between(&p, B, E, "y").expect_err("no markers");
        assert!(e.contains("doc.md") && e.contains("not found"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "no markers\n");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_minute(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        // 2000-02-29 12:34:56 UTC (a leap day).
        let t = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(utc_minute(t), "2000-02-29 12:34 UTC");
        // 2026-12-06 20:26 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_588_760);
        assert_eq!(utc_minute(t), "2026-12-06 20:26 UTC");
    }
}
