//! Is the machine quiet?  CPU time that other processes used, and that the
//! hypervisor stole, over a window ([`CpuSnapshot`], [`OtherLoad`]), and
//! the short check every bench makes before it measures
//! ([`quiet_check`]).  A busy machine is reported, never refused.

use crate::machine::online_cpus;
use nix::sys::resource::{Usage, UsageWho, getrusage};
use std::fmt;
use std::time::{Duration, Instant};

/// Share of all online CPUs that other processes used (or steal took)
/// above which the machine counts as busy.
pub const BUSY_SHARE: f64 = 0.10;
/// Share of all online CPUs stolen by the hypervisor above which the
/// machine counts as busy.
pub const STEAL_SHARE: f64 = 0.05;

/// CPU seconds spent so far by the whole machine (busy, steal) and by this
/// process (itself plus its waited-for children).
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    busy: f64,
    steal: f64,
    own: f64,
}

impl CpuSnapshot {
    /// Now (`None` where /proc/stat or `getrusage` cannot be read).
    pub fn now() -> Option<Self> {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        if tick <= 0.0 {
            return None;
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = [0, 1, 2, 5, 6]
            .iter()
            .filter_map(|&i| v.get(i))
            .sum::<u64>();
        let steal = v.get(7).copied().unwrap_or(0);
        let secs = |u: Usage| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        };
        let own = secs(getrusage(UsageWho::RUSAGE_SELF).ok()?)
            + secs(getrusage(UsageWho::RUSAGE_CHILDREN).ok()?);
        Some(Self {
            at: Instant::now(),
            busy: busy as f64 / tick,
            steal: steal as f64 / tick,
            own,
        })
    }

    /// Other processes' CPU use and steal since `self`.
    pub fn other_load_since(&self) -> Option<OtherLoad> {
        let now = Self::now()?;
        let cpus = online_cpus();
        let window = now.at.duration_since(self.at);
        let wall = window.as_secs_f64() * cpus as f64;
        if wall <= 0.0 {
            return None;
        }
        let other = (now.busy - self.busy) - (now.own - self.own);
        Some(OtherLoad {
            others: (other / wall).clamp(0.0, 1.0),
            steal: ((now.steal - self.steal) / wall).clamp(0.0, 1.0),
            cpus,
            window,
        })
    }
}

/// CPU that this process did not use, over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtherLoad {
    /// Share (0–1) of all online CPUs that other processes used.
    pub others: f64,
    /// Share (0–1) of all online CPUs that the hypervisor stole.
    pub steal: f64,
    /// CPUs online.
    pub cpus: usize,
    /// The window.
    pub window: Duration,
}

impl OtherLoad {
    /// Whether other processes or steal took enough CPU to disturb a
    /// measurement ([`BUSY_SHARE`], [`STEAL_SHARE`]).
    pub fn is_busy(&self) -> bool {
        self.others > BUSY_SHARE || self.steal > STEAL_SHARE
    }
}

impl fmt::Display for OtherLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "other processes used {:.1} % of the {} CPUs over {:.1} s (steal {:.1} %)",
            self.others * 100.0,
            self.cpus,
            self.window.as_secs_f64(),
            self.steal * 100.0
        )
    }
}

/// Samples /proc/stat over `window` (this thread sleeps meanwhile) and
/// returns what other processes used; `None` where it cannot be read.
pub fn sample_other_load(window: Duration) -> Option<OtherLoad> {
    let before = CpuSnapshot::now()?;
    std::thread::sleep(window);
    before.other_load_since()
}

/// The check every bench makes at start: 200 ms of /proc/stat, and the
/// line that says what it found — with a warning when the machine is busy
/// (the bench goes on: its figures are then to be read with care).
pub fn quiet_check() -> String {
    match sample_other_load(Duration::from_millis(200)) {
        Some(l) if l.is_busy() => {
            format!("WARNING: the machine is busy: {l}; figures of this run may be noisy")
        }
        Some(l) => format!("quiet check: {l}"),
        None => "quiet check: unavailable (/proc/stat or getrusage unreadable)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_thresholds() {
        let l = |others, steal| OtherLoad {
            others,
            steal,
            cpus: 2,
            window: Duration::from_millis(200),
        };
        assert!(!l(0.0, 0.0).is_busy());
        assert!(l(0.5, 0.0).is_busy());
        assert!(l(0.0, 0.2).is_busy());
        assert_eq!(
            l(0.012, 0.001).to_string(),
            "other processes used 1.2 % of the 2 CPUs over 0.2 s (steal 0.1 %)"
        );
    }

    #[test]
    fn samples_this_machine() {
        let l = sample_other_load(Duration::from_millis(20)).expect("/proc/stat");
        assert!((0.0..=1.0).contains(&l.others) && (0.0..=1.0).contains(&l.steal));
        assert!(l.window >= Duration::from_millis(20));
        let line = quiet_check();
        assert!(line.starts_with("quiet check") || line.starts_with("WARNING"));
    }
}
