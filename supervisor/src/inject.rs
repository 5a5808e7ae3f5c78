//! Fault injection into the supervisor itself, for the death and resume
//! tests: it does anything only with the `fault-injection` feature (the
//! tests enable it); in a plain build the directives are not even read.
//!
//! `LOCKSTEP_SUPERVISOR_INJECT` holds comma-separated `kill@TICK:PHASE`
//! directives: the supervisor sends itself `SIGKILL` at that point of that
//! tick, so that kill points are chosen by tick and phase, not by timing.
//!
//! `LOCKSTEP_INFERENCE_INJECT` is passed on to every inference host the
//! supervisor starts ([`inference_host_env`]): the host's test-only device
//! stand-in (`device=cuda:0,ulps=K`: answers reported as that device's and
//! perturbed by `K` ulps, as a GPU's differ from the CPU's), for the tests
//! of tolerance-aware `verify` on machines without a GPU.

/// The variable of the inference host's test-only device stand-in.
pub const INFERENCE_INJECT: &str = "LOCKSTEP_INFERENCE_INJECT";

/// Extra environment of the inference host: `LOCKSTEP_INFERENCE_INJECT`,
/// when set, with the `fault-injection` feature (nothing otherwise).
pub fn inference_host_env() -> Vec<(String, String)> {
    #[cfg(feature = "fault-injection")]
    if let Ok(v) = std::env::var(INFERENCE_INJECT) {
        tracing::warn!(directives = %v, "inference host fault injection is enabled");
        return vec![(INFERENCE_INJECT.to_owned(), v)];
    }
    Vec::new()
}

/// A point of a tick where the supervisor can be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Inputs applied, nothing planned.
    Inputs,
    /// The workers answered, the barrier has not run.
    Workers,
    /// The barrier ran, nothing of the tick is journaled.
    Barrier,
    /// Decisions and events journaled, inference not yet answered.
    Record,
    /// Inference answered and journaled, the tick record not yet.
    Inference,
    /// The tick record journaled, before the checkpoint (if any).
    Tick,
    /// In a checkpoint: the snapshot written, not yet journaled.
    Checkpoint,
}

impl Phase {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "inputs" => Phase::Inputs,
            "workers" => Phase::Workers,
            "barrier" => Phase::Barrier,
            "record" => Phase::Record,
            "inference" => Phase::Inference,
            "tick" => Phase::Tick,
            "checkpoint" => Phase::Checkpoint,
            _ => return None,
        })
    }
}

/// Parsed directives.
#[derive(Debug, Clone, Default)]
pub struct Inject {
    kills: Vec<(u64, Phase)>,
}

impl Inject {
    /// Reads `LOCKSTEP_SUPERVISOR_INJECT` (with the `fault-injection`
    /// feature; otherwise there is nothing to inject).
    #[cfg(not(feature = "fault-injection"))]
    pub fn from_env() -> Self {
        Self::default()
    }

    /// Reads `LOCKSTEP_SUPERVISOR_INJECT`.
    #[cfg(feature = "fault-injection")]
    pub fn from_env() -> Self {
        let mut out = Self::default();
        let Ok(v) = std::env::var("LOCKSTEP_SUPERVISOR_INJECT") else {
            return out;
        };
        for d in v.split(',') {
            let Some(spec) = d.trim().strip_prefix("kill@") else {
                continue;
            };
            if let Some((t, p)) = spec.split_once(':')
                && let (Ok(t), Some(p)) = (t.parse(), Phase::parse(p))
            {
                out.kills.push((t, p));
            }
        }
        if !out.kills.is_empty() {
            tracing::warn!(directives = %v, "supervisor fault injection is enabled");
        }
        out
    }

    /// Kills the supervisor if a directive names this point.
    pub fn at(&self, tick: u64, phase: Phase) {
        #[cfg(feature = "fault-injection")]
        if self.kills.contains(&(tick, phase)) {
            tracing::error!(tick, ?phase, "injected supervisor kill");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = (tick, phase, &self.kills);
    }
}
