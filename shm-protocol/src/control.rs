//! Control messages shared by the supervisor and its children, and the
//! children's exit codes.
//!
//! Every child speaks the same bring-up protocol over its ring pair:
//!
//! 1. child → supervisor: [`Up::Hello`] (protocol version, role, pid, build);
//! 2. supervisor → child: [`Down::Welcome`] or [`Down::Reject`];
//! 3. then any number of [`Down::Ping`] / [`Up::Pong`] round trips and the
//!    role's own commands;
//! 4. supervisor → child: [`Down::Shutdown`]; child → supervisor:
//!    [`Up::ShutdownAck`]; the child closes its rings and exits with
//!    [`ExitCode::Ok`].

use serde::{Deserialize, Serialize};

/// Version of the control protocol; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 2;

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
    /// The sandbox (seccomp, landlock, rlimits) could not be set up.
    Sandbox = 69,
    /// A bug: the child panicked.
    Internal = 70,
    /// The child ran out of memory.
    OutOfMemory = 71,
    /// The execution engine (wasmtime, ONNX Runtime) failed to start.
    Runtime = 72,
}

impl ExitCode {
    /// All codes.
    pub const ALL: [ExitCode; 10] = [
        ExitCode::Ok,
        ExitCode::Usage,
        ExitCode::Attach,
        ExitCode::Handshake,
        ExitCode::SupervisorGone,
        ExitCode::Protocol,
        ExitCode::Sandbox,
        ExitCode::Internal,
        ExitCode::OutOfMemory,
        ExitCode::Runtime,
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
            ExitCode::Sandbox => "sandbox setup failed",
            ExitCode::Internal => "internal error (panic)",
            ExitCode::OutOfMemory => "out of memory",
            ExitCode::Runtime => "execution engine failed to start",
        }
    }

    /// Exits the process with this code.
    pub fn exit(self) -> ! {
        std::process::exit(self as i32)
    }
}
