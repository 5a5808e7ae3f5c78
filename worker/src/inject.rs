//! Fault injection for tests (never enabled unless asked for).
//!
//! `LOCKSTEP_INJECT` holds comma-separated directives:
//!
//! * `crash=AGENT@TICK` — the worker hosting `AGENT` aborts at the start of
//!   tick `TICK` (a "poison" agent that takes its process down);
//! * `flip=AGENT@TICK` — one byte of `AGENT`'s memory is flipped at the
//!   start of tick `TICK` (a deliberately injected divergence).
//!
//! Chromium-style death and divergence tests use these to exercise the
//! supervisor's crash recovery, poison isolation and `verify`.

/// Parsed directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inject {
    /// Agents that crash their worker, and when.
    pub crash: Vec<(u64, u64)>,
    /// Agents whose memory is flipped, and when.
    pub flip: Vec<(u64, u64)>,
}

impl Inject {
    /// Reads `LOCKSTEP_INJECT`; `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("LOCKSTEP_INJECT").ok()?;
        let i = Self::parse(&v);
        if i.crash.is_empty() && i.flip.is_empty() {
            return None;
        }
        tracing::warn!(directives = %v, "fault injection is enabled");
        Some(i)
    }

    /// Parses directives; malformed ones are ignored.
    pub fn parse(s: &str) -> Self {
        let mut out = Self::default();
        for d in s.split(',') {
            let Some((kind, spec)) = d.trim().split_once('=') else {
                continue;
            };
            let Some((a, t)) = spec.split_once('@') else {
                continue;
            };
            let (Ok(a), Ok(t)) = (a.parse(), t.parse()) else {
                continue;
            };
            match kind {
                "crash" => out.crash.push((a, t)),
                "flip" => out.flip.push((a, t)),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let i = Inject::parse("crash=5@100, flip=7@3,bogus=1@2,crash=x@1");
        assert_eq!(i.crash, vec![(5, 100)]);
        assert_eq!(i.flip, vec![(7, 3)]);
    }
}
