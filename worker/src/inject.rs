//! Fault injection for tests, compiled only with the `fault-injection`
//! cargo feature (the test suite's builds); release builds have none.
//!
//! `LOCKSTEP_INJECT` holds comma-separated directives:
//!
//! * `crash=AGENT@TICK` — the worker hosting `AGENT` aborts at the start of
//!   tick `TICK` (a "poison" agent that takes its process down);
//! * `flip=AGENT@TICK` — one byte of `AGENT`'s memory is flipped at the
//!   start of tick `TICK` (a deliberately injected divergence);
//! * `escape=AGENT@TICK:ATTEMPT` — the worker hosting `AGENT` tries to
//!   break out of its sandbox at the start of tick `TICK`
//!   ([`lockstep_sandbox::escape`]: `open`, `connect`, `execve`, `ptrace`,
//!   `setuid`, `capset`, `cgroup-write`, `threads`, `memory`): it is killed
//!   or exits with the escape's refused/succeeded code;
//! * `kill=AGENT@TICK` — the worker hosting `AGENT` sends itself `SIGKILL`
//!   at the start of tick `TICK`;
//! * `stop=AGENT@TICK` — the worker hosting `AGENT` sends itself `SIGSTOP`
//!   at the start of tick `TICK` (a hung worker: nothing resumes it);
//! * `oom=AGENT@TICK` — the worker hosting `AGENT` allocates until its
//!   address-space limit refuses, at the start of tick `TICK`, and exits
//!   with the out-of-memory code as it would on a real exhaustion;
//! * `corrupt=AGENT@TICK:ATTACK` — the worker hosting `AGENT` answers tick
//!   `TICK` by corrupting its own ring to the supervisor with `ATTACK` (a
//!   [`shm_protocol::rogue::Attack`] name, e.g. `huge-frame`) instead of
//!   sending its result, then waits to be killed: a rogue worker.
//!
//! For `escape`, `kill`, `stop`, `oom` and `corrupt`, `AGENT` 0 means any
//! worker (no agent needed).
//!
//! Chromium-style death and divergence tests use these to exercise the
//! supervisor's crash recovery, poison isolation, `verify` and the worker
//! sandbox.

use lockstep_sandbox::escape::Attempt;

/// Parsed directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inject {
    /// Agents that crash their worker, and when.
    pub crash: Vec<(u64, u64)>,
    /// Agents whose memory is flipped, and when.
    pub flip: Vec<(u64, u64)>,
    /// Agents whose worker tries to escape its sandbox, when, and how.
    pub escape: Vec<(u64, u64, Attempt)>,
    /// Agents whose worker SIGKILLs itself, and when.
    pub kill: Vec<(u64, u64)>,
    /// Agents whose worker SIGSTOPs itself, and when.
    pub stop: Vec<(u64, u64)>,
    /// Agents whose worker exhausts its memory, and when.
    pub oom: Vec<(u64, u64)>,
    /// Agents whose worker corrupts its ring, when, and how.
    pub corrupt: Vec<(u64, u64, String)>,
}

impl Inject {
    /// Reads `LOCKSTEP_INJECT`; `None` when unset or empty.
    pub fn from_env() -> Option<Self> {
        let v = std::env::var("LOCKSTEP_INJECT").ok()?;
        let i = Self::parse(&v);
        if i == Self::default() {
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
            if kind == "escape" {
                if let (Ok(a), Some((t, how))) = (a.parse(), t.split_once(':'))
                    && let (Ok(t), Some(how)) = (t.parse(), Attempt::parse(how))
                {
                    out.escape.push((a, t, how));
                }
                continue;
            }
            if kind == "corrupt" {
                if let (Ok(a), Some((t, how))) = (a.parse(), t.split_once(':'))
                    && let Ok(t) = t.parse()
                {
                    out.corrupt.push((a, t, how.to_owned()));
                }
                continue;
            }
            let (Ok(a), Ok(t)) = (a.parse(), t.parse()) else {
                continue;
            };
            match kind {
                "crash" => out.crash.push((a, t)),
                "flip" => out.flip.push((a, t)),
                "kill" => out.kill.push((a, t)),
                "stop" => out.stop.push((a, t)),
                "oom" => out.oom.push((a, t)),
                _ => {}
            }
        }
        out
    }
}

/// Sends `signal` to this process.
pub fn signal_self(signal: i32) {
    tracing::error!(signal, "injected signal to self");
    if let Ok(s) = nix::sys::signal::Signal::try_from(signal) {
        let _ = nix::sys::signal::raise(s);
    }
}

/// Allocates (and touches) memory until the allocator fails, then exits
/// with [`shm_protocol::control::ExitCode::OutOfMemory`], as the worker
/// does when a real exhaustion is detected.
pub fn exhaust_memory() -> ! {
    tracing::error!("injected memory exhaustion");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // The worker's allocator exits with the out-of-memory code when
        // this fails (RLIMIT_AS); without a limit, stop at 64 GiB.
        hoard.push(vec![1u8; 64 << 20]);
        if hoard.len() >= 1024 {
            crate::oom::exit_out_of_memory("injected exhaustion");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let i = Inject::parse(
            "crash=5@100, flip=7@3,bogus=1@2,crash=x@1,escape=0@4:connect,escape=2@9:nope",
        );
        assert_eq!(i.crash, vec![(5, 100)]);
        assert_eq!(i.flip, vec![(7, 3)]);
        assert_eq!(i.escape, vec![(0, 4, Attempt::Connect)]);
    }
}
