//! Control messages shared by the supervisor and its children, and the
//! children's exit codes.
//!
//! Every child speaks the same bring-up protocol over its ring pair:
//!
//! 1. child → supervisor: [`Up::Hello`] (protocol version, role, pid, build);
//! 2. supervisor → child: [`Down::Welcome`] or [`Down::Reject`];
//! 3. child → supervisor: [`Up::Ready`] once its sandbox is complete (what
//!    is in force, layer by layer), or [`Up::Error`] and an exit with the
//!    failed step's code;
//! 4. then any number of [`Down::Ping`] / [`Up::Pong`] round trips and the
//!    role's own commands;
//! 5. supervisor → child: [`Down::Shutdown`]; child → supervisor:
//!    [`Up::ShutdownAck`]; the child closes its rings and exits with
//!    [`ExitCode::Ok`].

use serde::{Deserialize, Serialize};

/// Version of the control protocol and of the worker messages
/// (`worker.rs`); both sides must agree exactly.  5: images carry their
/// chunk lists sparsely.
pub const PROTOCOL_VERSION: u32 = 5;

/// What a child process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Hosts WebAssembly agents (`lockstep-worker`).
    Worker,
    /// Runs ONNX models (`lockstep-inference-host`).
    InferenceHost,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Worker => "worker",
            Role::InferenceHost => "inference-host",
        })
    }
}

/// A child's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the child's build.
    pub protocol: u32,
    /// The child's role.
    pub role: Role,
    /// The child's pid.
    pub pid: u32,
    /// The name the supervisor gave it (e.g. `worker-2`).
    pub name: String,
    /// Crate version of the child binary.
    pub build: String,
}

/// Supervisor → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Down {
    /// Handshake accepted.
    Welcome {
        /// The supervisor's protocol version.
        protocol: u32,
        /// The supervisor's pid.
        supervisor_pid: u32,
    },
    /// Handshake refused; the child exits with [`ExitCode::Handshake`].
    Reject {
        /// Why.
        reason: String,
    },
    /// Liveness / latency probe; answered with [`Up::Pong`].
    Ping {
        /// Echoed back.
        seq: u64,
    },
    /// Finish and exit cleanly.
    Shutdown,
    /// A command for the inference host (answered with [`Up::Inference`]).
    Inference(crate::inference::InferenceCommand),
    /// A command for a worker (answered with [`Up::Worker`]).
    Worker(crate::worker::WorkerCommand),
}

/// Child → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Up {
    /// First message of every child.
    Hello(Hello),
    /// The child's sandbox is complete: it serves commands from now on.
    Ready {
        /// What is in force.
        sandbox: SandboxReport,
    },
    /// Answer to [`Down::Ping`].
    Pong {
        /// The ping's sequence number.
        seq: u64,
    },
    /// Answer to [`Down::Shutdown`], sent just before exiting.
    ShutdownAck,
    /// The child could not process a command (it keeps running).
    Error {
        /// What went wrong.
        message: String,
    },
    /// The inference host's answer to a [`Down::Inference`] command.
    Inference(crate::inference::InferenceReply),
    /// A worker's answer to a [`Down::Worker`] command.
    Worker(crate::worker::WorkerReply),
}

/// A child's account of its sandbox, layer by layer (`lockstep_sandbox`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// The child class (`worker`, `inference-cpu`, `inference-cuda`).
    pub class: String,
    /// The mode (`strict`, `best-effort`, `log`, `off`).
    pub mode: String,
    /// (layer, state) in bring-up order; a state is `on`, `partial (why)`
    /// or `off (why)`.
    pub layers: Vec<(String, String)>,
}

impl SandboxReport {
    /// The layers not fully in force, as `layer=state`.
    pub fn gaps(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|(_, s)| s != "on")
            .map(|(l, s)| format!("{l}={s}"))
            .collect()
    }
}

/// Exit codes of child processes, one per failure class, so the supervisor
/// can tell a configuration problem from a crash (signals are reported
/// separately: SIGSYS is a seccomp kill, SIGKILL an OOM kill or an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Clean shutdown.
    Ok = 0,
    /// Bad command line.
    Usage = 64,
    /// The shared-memory segment could not be attached.
    Attach = 65,
    /// The handshake failed or was rejected.
    Handshake = 66,
    /// The supervisor died or hung.
    SupervisorGone = 67,
    /// The supervisor's ring or messages were malformed.
    Protocol = 68,
    /// A bug: the child panicked.
    Internal = 70,
    /// The child ran out of memory.
    OutOfMemory = 71,
    /// The execution engine (wasmtime, ONNX Runtime) failed to start.
    Runtime = 72,
    /// Sandbox step 1: inherited descriptors could not be closed.
    JailFds = 73,
    /// Sandbox step 2: the child's cgroups could not be joined.
    JailCgroup = 74,
    /// Sandbox step 3: new namespaces could not be created.
    JailNamespaces = 75,
    /// Sandbox step 4: the empty root file system could not be set up.
    JailFilesystem = 76,
    /// Sandbox step 6: the unprivileged uid/gid could not be taken.
    JailIdentity = 77,
    /// Sandbox steps 5 and 7: capabilities could not be dropped.
    JailCapabilities = 78,
    /// Sandbox step 8: resource limits could not be set.
    JailRlimits = 79,
    /// Sandbox step 9: the Landlock ruleset could not be applied.
    JailLandlock = 80,
    /// Sandbox step 10: the seccomp filter could not be installed.
    JailSeccomp = 81,
    /// A remote worker's bridge lost its node (the NATS link went silent,
    /// broke its sequence, or no node would host the worker).
    NodeLost = 82,
}

impl ExitCode {
    /// All codes.
    pub const ALL: [ExitCode; 19] = [
        ExitCode::Ok,
        ExitCode::Usage,
        ExitCode::Attach,
        ExitCode::Handshake,
        ExitCode::SupervisorGone,
        ExitCode::Protocol,
        ExitCode::Internal,
        ExitCode::OutOfMemory,
        ExitCode::Runtime,
        ExitCode::JailFds,
        ExitCode::JailCgroup,
        ExitCode::JailNamespaces,
        ExitCode::JailFilesystem,
        ExitCode::JailIdentity,
        ExitCode::JailCapabilities,
        ExitCode::JailRlimits,
        ExitCode::JailLandlock,
        ExitCode::JailSeccomp,
        ExitCode::NodeLost,
    ];

    /// The code for a raw exit status, if it is one of ours.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as i32 == code)
    }

    /// A short description.
    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Ok => "clean exit",
            ExitCode::Usage => "bad command line",
            ExitCode::Attach => "could not attach its shared-memory segment",
            ExitCode::Handshake => "handshake failed",
            ExitCode::SupervisorGone => "lost the supervisor",
            ExitCode::Protocol => "received malformed commands",
            ExitCode::Internal => "internal error (panic)",
            ExitCode::OutOfMemory => "out of memory",
            ExitCode::Runtime => "execution engine failed to start",
            ExitCode::JailFds => "sandbox step `fds` failed (closing inherited descriptors)",
            ExitCode::JailCgroup => "sandbox step `cgroup` failed (joining its cgroups)",
            ExitCode::JailNamespaces => "sandbox step `namespaces` failed",
            ExitCode::JailFilesystem => "sandbox step `filesystem` failed (empty root)",
            ExitCode::JailIdentity => "sandbox step `identity` failed (dropping to its uid/gid)",
            ExitCode::JailCapabilities => "sandbox step `capabilities` failed",
            ExitCode::JailRlimits => "sandbox step `rlimits` failed",
            ExitCode::JailLandlock => "sandbox step `landlock` failed",
            ExitCode::JailSeccomp => "sandbox step `seccomp` failed",
            ExitCode::NodeLost => "lost the link to its remote node",
        }
    }

    /// Whether the code reports a failed sandbox step.
    pub fn is_sandbox_step(self) -> bool {
        (ExitCode::JailFds as u8..=ExitCode::JailSeccomp as u8).contains(&(self as u8))
    }

    /// Exits the process with this code at once: standard output is
    /// flushed, then `_exit` ends every thread without running exit
    /// handlers.  A child never returns through `exit(3)`: the static
    /// destructors of a native library (ONNX Runtime's) would run while
    /// another thread of the child still computes with it, and could make
    /// that thread send a corrupt answer before the process is gone.
    pub fn exit(self) -> ! {
        exit_with(self as i32)
    }
}

/// Exits the process with status `code` the way [`ExitCode::exit`] does
/// (standard output flushed, no exit handlers): for a process that repeats
/// another's status, such as a remote worker's bridge.
pub fn exit_with(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` takes no pointers and never returns; skipping the
    // exit handlers is the point (see `ExitCode::exit`).
    unsafe { libc::_exit(code) }
}
