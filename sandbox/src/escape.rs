//! Test-only escape attempts (feature `fault-injection`): what a process
//! that an agent or a model took over would try, made from inside a jailed
//! child so that the death tests see each layer refuse it or kill the
//! process.  Release builds do not contain this module.
//!
//! Every attempt either never returns (the kernel killed the process: a
//! seccomp `SIGSYS`, an OOM kill) or exits with [`REFUSED`] after printing
//! `escape ATTEMPT refused: ERROR` on stderr, or with [`SUCCEEDED`] —
//! which a test treats as a hole in the sandbox.

use std::path::PathBuf;

/// Exit code after an attempt the sandbox refused with an error.
pub const REFUSED: i32 = 91;
/// Exit code after an attempt that succeeded.
pub const SUCCEEDED: i32 = 92;

/// What to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Read `/etc/passwd`.
    Open,
    /// Open a TCP connection to 127.0.0.1:9.
    Connect,
    /// Execute `/bin/sh`.
    Execve,
    /// Attach to the supervisor with `ptrace`.
    Ptrace,
    /// `setuid(0)`.
    Setuid,
    /// Raise `CAP_SYS_ADMIN` in the effective set.
    Capset,
    /// Raise its own cgroup's `pids.max`.
    CgroupWrite,
    /// Start threads until refused.
    Threads,
    /// Allocate and touch memory until stopped.
    Memory,
}

impl Attempt {
    /// Every attempt.
    pub const ALL: [Attempt; 9] = [
        Attempt::Open,
        Attempt::Connect,
        Attempt::Execve,
        Attempt::Ptrace,
        Attempt::Setuid,
        Attempt::Capset,
        Attempt::CgroupWrite,
        Attempt::Threads,
        Attempt::Memory,
    ];

    /// The spelling in `LOCKSTEP_INJECT` (`open`, `connect`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Open => "open",
            Attempt::Connect => "connect",
            Attempt::Execve => "execve",
            Attempt::Ptrace => "ptrace",
            Attempt::Setuid => "setuid",
            Attempt::Capset => "capset",
            Attempt::CgroupWrite => "cgroup-write",
            Attempt::Threads => "threads",
            Attempt::Memory => "memory",
        }
    }

    /// Parses the spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

fn refused(what: Attempt, err: impl std::fmt::Display) -> ! {
    eprintln!("escape {} refused: {err}", what.as_str());
    std::process::exit(REFUSED)
}

fn succeeded(what: Attempt, detail: impl std::fmt::Display) -> ! {
    eprintln!("escape {} SUCCEEDED: {detail}", what.as_str());
    std::process::exit(SUCCEEDED)
}

/// Makes the attempt ([`Attempt::CgroupWrite`] targets the cgroups the
/// child joined).
pub fn attempt(what: Attempt) -> ! {
    let cgroups: Vec<PathBuf> = crate::own_cgroups();
    eprintln!("escape {}: trying", what.as_str());
    match what {
        Attempt::Open => match std::fs::read_to_string("/etc/passwd") {
            Ok(t) => succeeded(what, format!("read {} bytes", t.len())),
            Err(e) => refused(what, e),
        },
        Attempt::Connect => match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => succeeded(what, "connected"),
            // Connection refused means the network was reachable.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                succeeded(what, "reached the loopback network (connection refused)")
            }
            Err(e) => refused(what, e),
        },
        Attempt::Execve => {
            let sh = c"/bin/sh";
            match nix::unistd::execv(sh, &[sh]) {
                Ok(_) => succeeded(what, "executed"),
                Err(e) => refused(what, e),
            }
        }
        Attempt::Ptrace => match nix::sys::ptrace::attach(nix::unistd::getppid()) {
            Ok(()) => succeeded(what, "attached to the supervisor"),
            Err(e) => refused(what, e),
        },
        Attempt::Setuid => match nix::unistd::setuid(nix::unistd::Uid::from_raw(0)) {
            Ok(()) => succeeded(what, "uid 0"),
            Err(e) => refused(what, e),
        },
        Attempt::Capset => {
            match caps::raise(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            ) {
                Ok(()) => succeeded(what, "CAP_SYS_ADMIN raised"),
                Err(e) => refused(what, e),
            }
        }
        Attempt::CgroupWrite => {
            let Some(dir) = cgroups.first() else {
                refused(what, "no cgroup to write to");
            };
            let mut last = String::new();
            for f in ["pids.max", "memory.limit_in_bytes", "memory.max"] {
                match std::fs::write(dir.join(f), "max") {
                    Ok(()) => succeeded(what, format!("wrote {}", dir.join(f).display())),
                    Err(e) => last = format!("{}: {e}", dir.join(f).display()),
                }
            }
            refused(what, last)
        }
        Attempt::Threads => {
            let mut n = 0u64;
            loop {
                match std::thread::Builder::new().spawn(std::thread::park) {
                    Ok(_) => n += 1,
                    Err(e) => refused(what, format!("thread {} not started: {e}", n + 1)),
                }
                if n >= 100_000 {
                    succeeded(what, format!("{n} threads started"));
                }
            }
        }
        Attempt::Memory => {
            let mut hold: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 16 << 20];
                for b in chunk.iter_mut().step_by(4096) {
                    *b = 1;
                }
                hold.push(chunk);
                if hold.len() >= 4096 {
                    succeeded(what, "64 GiB allocated");
                }
            }
        }
    }
}
