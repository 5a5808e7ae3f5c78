//! Child processes: spawning, bring-up, pings, shutdown, and death reports.
//!
//! Bring-up of one child, in order (ARCHITECTURE.md repeats this list):
//!
//! 1. create a memfd segment with one ring per direction;
//! 2. spawn the child binary with the memfd as fd 3 (`--shm-fd 3 --name N`)
//!    and its sandbox arguments, stdin closed, stdout/stderr inherited, an
//!    empty environment but for what [`ChildSpec::env`] lists (the child
//!    then jails itself: `lockstep_sandbox`);
//! 3. open a pidfd on the child (for the ring waits) and register a second
//!    one with the [`Reaper`] (for death reports);
//! 4. wait for the child's [`Up::Hello`], check protocol version, role and
//!    pid, answer [`Down::Welcome`] (or [`Down::Reject`]);
//! 5. wait for [`Up::Ready`]: the child's sandbox is complete (its report
//!    says which layers are in force); a child whose sandbox step failed
//!    says why ([`Up::Error`]) and exits with that step's code;
//! 6. the child is ready: pings and role commands flow over the rings.

use crate::reaper::Reaper;
use shm_protocol::control::{Down, Hello, PROTOCOL_VERSION, Role, SandboxReport, Up};
use shm_protocol::segment::{Backing, Segment, SegmentConfig};
use shm_protocol::{ChannelError, Endpoint, PidFd, SegmentError, WaitPolicy};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Role of the child.
    pub role: Role,
    /// Unique name (e.g. `worker-0`).
    pub name: String,
    /// The binary.
    pub program: PathBuf,
    /// Extra arguments after the bring-up ones.
    pub args: Vec<OsString>,
    /// Ring sizes.
    pub rings: SegmentConfig,
    /// How the supervisor's side of the rings waits.
    pub policy: WaitPolicy,
    /// The child's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// The cgroup the child joins (named in its arguments); kept to read
    /// its OOM kills and removed once the child is gone.
    pub cgroup: Option<lockstep_sandbox::cgroup::Group>,
    /// Once the handshake is done, how long the child's heartbeat may
    /// stall while the supervisor waits for it before it counts as hung
    /// (`None`: only its death ends a wait).
    pub hang_timeout: Option<Duration>,
}

/// Failures to start or talk to a child.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The shared-memory segment could not be created.
    #[error("could not create the segment for {name}")]
    Segment {
        /// The child.
        name: String,
        /// Cause.
        #[source]
        source: SegmentError,
    },
    /// The process could not be started.
    #[error("could not start {name} ({program})")]
    Spawn {
        /// The child.
        name: String,
        /// The binary.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ring conversation failed.
    #[error("{name}: {what}")]
    Channel {
        /// The child.
        name: String,
        /// What we were doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: ChannelError,
    },
    /// The child broke the protocol.
    #[error("{name}: protocol violation: {detail}")]
    Protocol {
        /// The child.
        name: String,
        /// What it did.
        detail: String,
    },
    /// The child did not exit after shutdown and was killed.
    #[error("{name} did not exit within {waited:?} after shutdown and was killed")]
    ShutdownTimeout {
        /// The child.
        name: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// A running child.
#[derive(Debug)]
pub struct Child {
    name: String,
    role: Role,
    pid: u32,
    /// Our own pidfd on the child: signals through it can never reach
    /// another process that reused the pid after the reaper reaped it.
    pidfd: PidFd,
    ep: Endpoint,
    hang_timeout: Option<Duration>,
    hello: Option<Hello>,
    sandbox: Option<SandboxReport>,
    cgroup: Option<lockstep_sandbox::cgroup::Group>,
    ping_seq: u64,
    started: Instant,
}

impl Drop for Child {
    fn drop(&mut self) {
        // A process that exited has left its cgroup (even unreaped).
        if let Some(g) = &self.cgroup
            && self.pidfd.has_exited()
        {
            g.remove();
        }
    }
}

/// Finds a sibling binary of the running executable (`lockstep-worker` next
/// to `lockstep`), or the path in `env_override` if that variable is set.
pub fn locate_binary(name: &str, env_override: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(p));
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot locate the running binary: {e}"))?;
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        // Test executables live in target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_path_buf());
        }
    }
    for d in &dirs {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "cannot find `{name}` next to {} (build it with `cargo build --workspace`, or set {env_override})",
        exe.display()
    ))
}

impl Child {
    /// Steps 1–3 of the bring-up: segment, process, pidfds.
    pub fn spawn(spec: &ChildSpec, reaper: &Reaper) -> Result<Self, ChildError> {
        use command_fds::{CommandFdExt, FdMapping};
        let seg_err = |source| ChildError::Segment {
            name: spec.name.clone(),
            source,
        };
        let segment = Segment::create(
            spec.rings,
            Backing::Memfd {
                name: format!("lockstep-{}", spec.name),
            },
        )
        .map_err(seg_err)?;
        let spawn_err = |source| ChildError::Spawn {
            name: spec.name.clone(),
            program: spec.program.display().to_string(),
            source,
        };
        let fd = segment.fd().try_clone_to_owned().map_err(spawn_err)?;
        let mut cmd = std::process::Command::new(&spec.program);
        cmd.arg("--shm-fd")
            .arg("3")
            .arg("--name")
            .arg(&spec.name)
            .args(&spec.args);
        cmd.stdin(std::process::Stdio::null());
        cmd.env_clear();
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .map_err(|_| spawn_err(std::io::Error::other("fd mapping collision")))?;
        let proc = cmd.spawn().map_err(spawn_err)?;
        let pid = proc.id();
        // The child cannot be reaped before we open pidfds (only we wait for
        // it), so its pid cannot have been reused yet.
        drop(proc);
        let pidfd = PidFd::open(pid).map_err(spawn_err)?;
        let own = PidFd::open(pid).map_err(spawn_err)?;
        reaper
            .watch(&spec.name, spec.role, pid)
            .map_err(spawn_err)?;
        let ep = Endpoint::new(segment, Some(pidfd), None, spec.policy);
        tracing::debug!(name = %spec.name, pid, "spawned");
        Ok(Self {
            name: spec.name.clone(),
            role: spec.role,
            pid,
            pidfd: own,
            ep,
            hang_timeout: spec.hang_timeout,
            hello: None,
            sandbox: None,
            cgroup: spec.cgroup.clone(),
            ping_seq: 0,
            started: Instant::now(),
        })
    }

    /// Steps 4–5: wait for the hello, answer it, wait until the child is
    /// ready.
    pub fn handshake(&mut self, timeout: Duration) -> Result<&Hello, ChildError> {
        let deadline = Some(Instant::now() + timeout);
        let up: Up = self
            .ep
            .recv_msg(deadline)
            .map_err(|e| ChildError::Channel {
                name: self.name.clone(),
                what: "waiting for hello",
                source: e,
            })?;
        let hello = match up {
            Up::Hello(h) => h,
            other => {
                return Err(ChildError::Protocol {
                    name: self.name.clone(),
                    detail: format!("expected Hello, got {other:?}"),
                });
            }
        };
        let problem = if hello.protocol != PROTOCOL_VERSION {
            Some(format!(
                "protocol {} (supervisor speaks {PROTOCOL_VERSION})",
                hello.protocol
            ))
        } else if hello.role != self.role {
            Some(format!("role {} (expected {})", hello.role, self.role))
        } else if hello.pid != self.pid {
            Some(format!("pid {} (spawned {})", hello.pid, self.pid))
        } else {
            None
        };
        if let Some(detail) = problem {
            let _ = self.ep.send_msg(
                &Down::Reject {
                    reason: detail.clone(),
                },
                deadline,
            );
            return Err(ChildError::Protocol {
                name: self.name.clone(),
                detail,
            });
        }
        let welcome = Down::Welcome {
            protocol: PROTOCOL_VERSION,
            supervisor_pid: std::process::id(),
        };
        let name = self.name.clone();
        self.ep
            .send_msg(&welcome, deadline)
            .map_err(|source| ChildError::Channel {
                name,
                what: "sending welcome",
                source,
            })?;
        let ready: Up = self
            .ep
            .recv_msg(deadline)
            .map_err(|e| ChildError::Channel {
                name: self.name.clone(),
                what: "waiting for the child to be ready (its sandbox)",
                source: e,
            })?;
        match ready {
            Up::Ready { sandbox } => self.sandbox = Some(sandbox),
            Up::Error { message } => {
                return Err(ChildError::Protocol {
                    name: self.name.clone(),
                    detail: message,
                });
            }
            other => {
                return Err(ChildError::Protocol {
                    name: self.name.clone(),
                    detail: format!("expected Ready, got {other:?}"),
                });
            }
        }
        // From now on the child beats while it works: a stalled heartbeat
        // is a hang.
        self.ep.rx.monitor().set_hung_after(self.hang_timeout);
        Ok(self.hello.insert(hello))
    }

    /// One ping round trip; returns its duration.
    pub fn ping(&mut self, timeout: Duration) -> Result<Duration, ChildError> {
        self.ping_seq += 1;
        let seq = self.ping_seq;
        let deadline = Some(Instant::now() + timeout);
        let t0 = Instant::now();
        let name = self.name.clone();
        self.ep
            .send_msg(&Down::Ping { seq }, deadline)
            .map_err(|source| ChildError::Channel {
                name: name.clone(),
                what: "sending ping",
                source,
            })?;
        match self.ep.recv_msg::<Up>(deadline) {
            Ok(Up::Pong { seq: s }) if s == seq => Ok(t0.elapsed()),
            Ok(other) => Err(ChildError::Protocol {
                name,
                detail: format!("expected Pong {seq}, got {other:?}"),
            }),
            Err(source) => Err(ChildError::Channel {
                name,
                what: "waiting for pong",
                source,
            }),
        }
    }

    /// Asks the child to exit and waits (up to `timeout`) for it to do so;
    /// a child that does not is killed.  The exit itself is reported by the
    /// [`Reaper`].
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), ChildError> {
        let deadline = Some(Instant::now() + timeout);
        let sent = self.ep.send_msg(&Down::Shutdown, deadline);
        if sent.is_ok() {
            // Drain until the ack (or the channel ends).
            loop {
                match self.ep.recv_msg::<Up>(deadline) {
                    Ok(Up::ShutdownAck) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        }
        self.ep.close();
        if !self.pidfd.wait_exit(Some(timeout)) {
            let _ = self.pidfd.kill(rustix::process::Signal::KILL);
            return Err(ChildError::ShutdownTimeout {
                name: self.name.clone(),
                waited: timeout,
            });
        }
        Ok(())
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's hello, once the handshake is done.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// The child's account of its sandbox, once it is ready.
    pub fn sandbox(&self) -> Option<&SandboxReport> {
        self.sandbox.as_ref()
    }

    /// How many of the child's processes its cgroup's OOM killer killed
    /// (0 without a cgroup): a death by SIGKILL with a count above zero is
    /// an out-of-memory kill, not a guess from the signal.
    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |g| g.oom_kills())
    }

    /// The child's cgroup.
    pub fn cgroup(&self) -> Option<&lockstep_sandbox::cgroup::Group> {
        self.cgroup.as_ref()
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The supervisor's end of the rings.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.ep
    }

    /// Sends SIGKILL (for tests and forced stops).
    pub fn kill(&self) -> std::io::Result<()> {
        self.pidfd.kill(rustix::process::Signal::KILL)
    }

    /// Kills the child and waits (up to `timeout`) until it is gone: what
    /// is done to a child that failed in any way (a dead one is left as it
    /// is).
    pub fn kill_and_wait(&self, timeout: Duration) {
        let _ = self.pidfd.kill(rustix::process::Signal::KILL);
        let _ = self.pidfd.wait_exit(Some(timeout));
    }

    /// Whether the child process has exited.
    pub fn has_exited(&self) -> bool {
        self.pidfd.has_exited()
    }
}
