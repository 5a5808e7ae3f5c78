//! Fault injection for tests (never enabled unless asked for).
//!
//! `LOCKSTEP_INJECT` holds comma-separated directives:
//!
//! * `crash=AGENT@TICK` — the worker hosting `AGENT` aborts at the start of
//!   tick `TICK` (a "poison" agent that takes its process down);
//! * `flip=AGENT@TICK` — one byte of `AGENT`'s memory is flipped at the
//!   start of tick `TICK` (a deliberately injected divergence);
//! * `syscall=AGENT@TICK` — the worker hosting `AGENT` makes a system call
//!   its sandbox forbids (`socket(2)`) at the start of tick `TICK`: under the
//!   sandbox it is killed with `SIGSYS`; if it survives it aborts;
//! * `read=AGENT@TICK` — the worker hosting `AGENT` tries to read the file
//!   named by `LOCKSTEP_INJECT_READ` (default `/etc/hostname`) at the start
//!   of tick `TICK` and exits with [`READ_DENIED`], [`READ_ALLOWED`] or
//!   [`READ_FAILED`] (the sandbox's Landlock layer must deny it).
//!
//! * `kill=AGENT@TICK` — the worker hosting `AGENT` sends itself `SIGKILL`
//!   at the start of tick `TICK`;
//! * `stop=AGENT@TICK` — the worker hosting `AGENT` sends itself `SIGSTOP`
//!   at the start of tick `TICK` (a hung worker: nothing resumes it);
//! * `oom=AGENT@TICK` — the worker hosting `AGENT` allocates until its
//!   address-space limit refuses, at the start of tick `TICK`, and exits
//!   with the out-of-memory code as it would on a real exhaustion.
//!
//! * `corrupt=AGENT@TICK:ATTACK` — the worker hosting `AGENT` answers tick
//!   `TICK` by corrupting its own ring to the supervisor with `ATTACK` (a
//!   [`shm_protocol::rogue::Attack`] name, e.g. `huge-frame`) instead of
//!   sending its result, then waits to be killed: a rogue worker.
//!
//! For `syscall`, `read`, `kill`, `stop`, `oom` and `corrupt`, `AGENT` 0
//! means any worker (no agent needed).
//!
//! Chromium-style death and divergence tests use these to exercise the
//! supervisor's crash recovery, poison isolation, `verify` and the worker
//! sandbox.

/// Exit code after a `read` injection the kernel refused (`EACCES`/`EPERM`).
pub const READ_DENIED: i32 = 91;
/// Exit code after a `read` injection that succeeded.
pub const READ_ALLOWED: i32 = 92;
/// Exit code after a `read` injection that failed otherwise.
pub const READ_FAILED: i32 = 93;

/// Parsed directives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inject {
    /// Agents that crash their worker, and when.
    pub crash: Vec<(u64, u64)>,
    /// Agents whose memory is flipped, and when.
    pub flip: Vec<(u64, u64)>,
    /// Agents whose worker makes a forbidden system call, and when.
    pub syscall: Vec<(u64, u64)>,
    /// Agents whose worker tries to read a file outside its sandbox, and when.
    pub read: Vec<(u64, u64)>,
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
                "syscall" => out.syscall.push((a, t)),
                "read" => out.read.push((a, t)),
                "kill" => out.kill.push((a, t)),
                "stop" => out.stop.push((a, t)),
                "oom" => out.oom.push((a, t)),
                _ => {}
            }
        }
        out
    }
}

/// Makes a system call the worker sandbox forbids (`socket(AF_UNIX,
/// SOCK_STREAM)`); under the sandbox the kernel kills the process with
/// `SIGSYS` before it returns.  If it returns, the process aborts.
pub fn forbidden_syscall() -> ! {
    tracing::error!("injected forbidden system call: socket(2)");
    // SAFETY: socket(2) takes three integers and touches no memory of ours;
    // the descriptor it may return is leaked on purpose (we abort next).
    let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    tracing::error!(
        fd,
        "the forbidden system call returned: no seccomp filter in force"
    );
    std::process::abort();
}

/// Tries to read `LOCKSTEP_INJECT_READ` (default `/etc/hostname`) and exits
/// with [`READ_DENIED`], [`READ_ALLOWED`] or [`READ_FAILED`].
pub fn read_outside() -> ! {
    let path = std::env::var("LOCKSTEP_INJECT_READ").unwrap_or_else(|_| "/etc/hostname".to_owned());
    let outcome = std::fs::read(&path);
    let code = match &outcome {
        Ok(_) => READ_ALLOWED,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => READ_DENIED,
        Err(_) => READ_FAILED,
    };
    let outcome = outcome.map(|b| b.len()).map_err(|e| e.to_string());
    tracing::error!(%path, ?outcome, code, "injected read outside the sandbox");
    std::process::exit(code);
}

/// Sends `signal` to this process.
pub fn signal_self(signal: i32) {
    tracing::error!(signal, "injected signal to self");
    // SAFETY: raise(3) takes a signal number and touches no memory of ours.
    unsafe { libc::raise(signal) };
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
        let i = Inject::parse("crash=5@100, flip=7@3,bogus=1@2,crash=x@1,syscall=0@4,read=2@9");
        assert_eq!(i.crash, vec![(5, 100)]);
        assert_eq!(i.flip, vec![(7, 3)]);
        assert_eq!(i.syscall, vec![(0, 4)]);
        assert_eq!(i.read, vec![(2, 9)]);
    }
}
