//! The failure model: every way a child can fail, classified once.
//!
//! Whatever goes wrong with a child process — it dies (any signal, any exit
//! code), its ring is corrupt or it breaks the protocol, it stops answering
//! (its heartbeat stalls while it owes an answer, or a deadline passes), it
//! runs out of memory, its sandbox kills it — the supervisor sees one thing:
//! a [`ChildFailure`] at a tick, with its [`Cause`].  The child is killed if
//! it is not dead yet, and recovered the same way whatever the cause
//! (ARCHITECTURE.md, "Failure model").  Nothing here decides what happens
//! to the run; the worker pool and the inference service do.

use crate::reaper::{ChildExit, ExitKind};
use shm_protocol::control::ExitCode;
use shm_protocol::{ChannelError, PeerGone};
use std::time::Duration;

/// Why a child failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// It exited with a code that is not a clean exit.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A signal killed it (other than the ones classified below).
    Killed {
        /// The signal.
        signal: i32,
    },
    /// It ran out of memory: its exit code said so (71), or its cgroup
    /// recorded an OOM kill.
    OutOfMemory {
        /// How it was detected.
        how: String,
    },
    /// Its sandbox killed it (seccomp: SIGSYS) or one of its steps failed
    /// (exit codes 73–81).
    Sandbox {
        /// What happened.
        how: String,
    },
    /// Its heartbeat stalled while it owed an answer.
    Hung {
        /// For how long.
        silent: Duration,
    },
    /// It did not answer before the deadline, alive as it looked.
    Timeout {
        /// The deadline that passed.
        waited: Duration,
    },
    /// Its ring is corrupt, or it sent bytes that are not a message.
    Corrupt(String),
    /// It sent a well-formed message that breaks the protocol.
    Protocol(String),
    /// It could not be started or brought up.
    Start(String),
}

impl Cause {
    /// The class of the cause, one word (for logs and telemetry).
    pub fn class(&self) -> &'static str {
        match self {
            Cause::Exited { .. } => "exit",
            Cause::Killed { .. } => "signal",
            Cause::OutOfMemory { .. } => "oom",
            Cause::Sandbox { .. } => "sandbox",
            Cause::Hung { .. } => "hang",
            Cause::Timeout { .. } => "timeout",
            Cause::Corrupt(_) => "corrupt",
            Cause::Protocol(_) => "protocol",
            Cause::Start(_) => "start",
        }
    }

    /// The cause of a death the reaper reported, for a child whose cgroup
    /// counted `oom_kills` OOM kills: a SIGKILL with kills counted is an
    /// out-of-memory kill (the cgroup's own events say so; the signal
    /// alone does not).
    pub fn from_death(exit: &ChildExit, oom_kills: u64) -> Self {
        match exit.kind {
            ExitKind::Signaled { signal: 9, .. } if oom_kills > 0 => Cause::OutOfMemory {
                how: format!(
                    "killed by the OOM killer of its cgroup at its memory limit ({oom_kills} kill{} counted)",
                    if oom_kills == 1 { "" } else { "s" }
                ),
            },
            _ => Self::from_exit(exit),
        }
    }

    /// The cause of a death the reaper reported.
    pub fn from_exit(exit: &ChildExit) -> Self {
        match exit.kind {
            ExitKind::Exited(c) if c == ExitCode::OutOfMemory as i32 => Cause::OutOfMemory {
                how: format!("exit code {c} ({})", ExitCode::OutOfMemory.describe()),
            },
            ExitKind::Exited(c)
                if ExitCode::from_code(c).is_some_and(ExitCode::is_sandbox_step) =>
            {
                Cause::Sandbox {
                    how: format!(
                        "exit code {c} ({})",
                        ExitCode::from_code(c).map_or("", ExitCode::describe)
                    ),
                }
            }
            ExitKind::Exited(code) => Cause::Exited { code },
            ExitKind::Signaled { signal: 31, .. } => Cause::Sandbox {
                how: "killed by SIGSYS (a system call outside its seccomp allowlist)".into(),
            },
            ExitKind::Signaled { signal, .. } => Cause::Killed { signal },
        }
    }

    /// The cause behind a failed ring operation (`None`: the peer is gone,
    /// and how it died is for the reaper to say).
    pub fn from_channel(e: &ChannelError, waited: Duration) -> Option<Self> {
        match e {
            ChannelError::PeerGone(PeerGone::Hung { silent, .. }) => {
                Some(Cause::Hung { silent: *silent })
            }
            ChannelError::PeerGone(PeerGone::Closed) => Some(Cause::Protocol(
                "closed its ring without being asked to".into(),
            )),
            ChannelError::PeerGone(PeerGone::Exited { .. }) => None,
            ChannelError::Timeout => Some(Cause::Timeout { waited }),
            other => Some(Cause::Corrupt(chain(other))),
        }
    }

    /// Whether the failure is the child's memory (what an aggregate
    /// limit, not an agent, causes).
    pub fn is_memory(&self) -> bool {
        matches!(self, Cause::OutOfMemory { .. })
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Exited { code } => match ExitCode::from_code(*code) {
                Some(c) => write!(f, "exited with code {code} ({})", c.describe()),
                None => write!(f, "exited with code {code}"),
            },
            Cause::Killed { signal } => {
                let why = match *signal {
                    9 => " (an operator, the OOM killer or a hard limit)",
                    6 => " (aborted)",
                    11 | 7 => " (memory fault)",
                    _ => "",
                };
                write!(
                    f,
                    "was killed by {}{why}",
                    crate::reaper::signal_name(*signal)
                )
            }
            Cause::OutOfMemory { how } => write!(f, "ran out of memory ({how})"),
            Cause::Sandbox { how } => write!(f, "was stopped by its sandbox: {how}"),
            Cause::Hung { silent } => write!(f, "hung (no heartbeat for {silent:.1?})"),
            Cause::Timeout { waited } => write!(f, "did not answer within {waited:.1?}"),
            Cause::Corrupt(d) => write!(f, "corrupted its ring: {d}"),
            Cause::Protocol(d) => write!(f, "broke the protocol: {d}"),
            Cause::Start(d) => write!(f, "could not be started: {d}"),
        }
    }
}

/// One child failing at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFailure {
    /// The child (`worker-1`, `inference-host`).
    pub child: String,
    /// Its pid (0 if it never started).
    pub pid: u32,
    /// The tick being run (or the last completed one, between ticks).
    pub tick: u64,
    /// Why.
    pub cause: Cause,
}

impl std::fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) {} at tick {}",
            self.child, self.pid, self.cause, self.tick
        )
    }
}

/// `e` and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_protocol::control::Role;

    fn exit(kind: ExitKind) -> ChildExit {
        ChildExit {
            name: "worker-0".into(),
            role: Role::Worker,
            pid: 7,
            kind,
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn deaths_are_classified_by_code_and_signal() {
        let oom = Cause::from_exit(&exit(ExitKind::Exited(71)));
        assert!(oom.is_memory(), "{oom}");
        for code in 73..=81 {
            assert_eq!(
                Cause::from_exit(&exit(ExitKind::Exited(code))).class(),
                "sandbox",
                "{code}"
            );
        }
        let killed = exit(ExitKind::Signaled {
            signal: 9,
            core: false,
        });
        assert!(Cause::from_death(&killed, 1).is_memory());
        assert_eq!(Cause::from_death(&killed, 0), Cause::Killed { signal: 9 });
        let sys = Cause::from_exit(&exit(ExitKind::Signaled {
            signal: 31,
            core: false,
        }));
        assert_eq!(sys.class(), "sandbox");
        assert_eq!(
            Cause::from_exit(&exit(ExitKind::Signaled {
                signal: 9,
                core: false
            })),
            Cause::Killed { signal: 9 }
        );
        assert_eq!(
            Cause::from_exit(&exit(ExitKind::Exited(70))),
            Cause::Exited { code: 70 }
        );
    }

    #[test]
    fn channel_errors_are_hangs_timeouts_or_corruption() {
        let hung = ChannelError::PeerGone(PeerGone::Hung {
            pid: 1,
            silent: Duration::from_secs(2),
        });
        assert_eq!(
            Cause::from_channel(&hung, Duration::ZERO).map(|c| c.class()),
            Some("hang")
        );
        assert_eq!(
            Cause::from_channel(&ChannelError::UnexpectedKind(9), Duration::ZERO)
                .map(|c| c.class()),
            Some("corrupt")
        );
        assert_eq!(
            Cause::from_channel(
                &ChannelError::PeerGone(PeerGone::Exited { pid: 1 }),
                Duration::ZERO
            ),
            None
        );
    }
}
