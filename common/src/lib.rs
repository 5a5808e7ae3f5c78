//! Pieces shared by the Lockstep binaries.
//!
//! * [`init_logging`] — `tracing` to stderr, filtered by `LOCKSTEP_LOG`
//!   (same syntax as `RUST_LOG`; default `warn`).
//! * [`ChildArgs`] — the command line the supervisor gives every child, to be
//!   `#[command(flatten)]`ed into the child's own arguments.
//! * [`parse_or_exit`] / [`connect_or_exit`] — argument parsing and bring-up
//!   that end the process with the documented [`ExitCode`] on failure.
//! * [`start_heartbeat`] — a child's heartbeat, independent of its work.
//! * [`cpu`] — CPU affinity: the CPUs allowed, pinning a thread.
//! * [`text_model`] — the blob that carries a text model and its tokenizer
//!   to the inference host.

#![forbid(unsafe_code)]

pub mod cpu;
pub mod live;
pub mod text_model;

use clap::{Args, Parser};
use shm_protocol::bootstrap::{self, SegmentSource};
use shm_protocol::control::{ExitCode, Role};
use shm_protocol::{Endpoint, WaitPolicy};
use std::path::PathBuf;

/// Whether `s` names an inference device: `cpu`, `auto`, `cuda` or
/// `cuda:N` (the inference host's `--device`).
pub fn is_device(s: &str) -> bool {
    matches!(s, "cpu" | "auto" | "cuda")
        || s.strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Installs the stderr `tracing` subscriber (idempotent).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// How a child finds its supervisor.
#[derive(Debug, Clone, Args)]
pub struct ChildArgs {
    /// Inherited file descriptor of the shared-memory segment.
    #[arg(
        long,
        conflicts_with = "shm_path",
        required_unless_present = "shm_path"
    )]
    pub shm_fd: Option<i32>,
    /// Path of the shared-memory segment (alternative to --shm-fd).
    #[arg(long)]
    pub shm_path: Option<PathBuf>,
    /// Name given by the supervisor (e.g. worker-0).
    #[arg(long)]
    pub name: Option<String>,
    /// How many times to poll an empty ring before parking on its futex
    /// (default: `WaitPolicy::ADAPTIVE`'s).
    #[arg(long, value_name = "N")]
    pub wait_spin: Option<u32>,
    /// Poll by yielding the CPU (`sched_yield`) rather than spinning on it.
    /// The supervisor asks for this when the machine has no core to spare
    /// for its processes: a child spinning after its reply would hold the
    /// CPU the supervisor needs to take that reply.
    #[arg(long)]
    pub wait_yield: bool,
    /// Run on this CPU only.  The supervisor gives each worker a CPU of its
    /// own when its processes take every CPU of the machine: a worker that
    /// stays on one CPU keeps its caches, and two workers never queue on
    /// the same CPU while another idles.
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<usize>,
}

impl ChildArgs {
    /// Pins the process to `--cpu`, if given: call it before the process
    /// starts a thread (threads inherit the mask).  A CPU that cannot be
    /// had (outside the process's cpuset) is a warning: where a process
    /// runs changes how fast it runs, never what it computes.
    pub fn pin_to_cpu(&self) {
        if let Some(cpu) = self.cpu
            && let Err(e) = cpu::pin_current_thread(cpu)
        {
            tracing::warn!(error = %e, "running on every allowed CPU instead");
        }
    }

    /// The segment source named on the command line, a path opened now
    /// (call it before the sandbox takes the file system away); a path that
    /// cannot be opened exits with [`ExitCode::Attach`].
    pub fn open_source(&self) -> SegmentSource {
        self.source().open_now().unwrap_or_else(|e| {
            eprintln!("cannot open the segment: {e}");
            e.exit_code().exit()
        })
    }

    /// The segment source named on the command line.
    pub fn source(&self) -> SegmentSource {
        match (&self.shm_fd, &self.shm_path) {
            (Some(fd), _) => SegmentSource::Fd(*fd),
            (None, Some(p)) => SegmentSource::Path(p.clone()),
            // clap enforces one of the two.
            (None, None) => ExitCode::Usage.exit(),
        }
    }
}

/// Parses the command line; a usage error exits with [`ExitCode::Usage`]
/// (`--help`/`--version` with [`ExitCode::Ok`]).
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::Usage.exit()
            } else {
                ExitCode::Ok.exit()
            }
        }
    }
}

/// Attaches to `source` and completes the handshake, or exits with the
/// failure's code.
pub fn connect_or_exit(args: &ChildArgs, source: &SegmentSource, role: Role) -> (Endpoint, String) {
    let name = args.name.clone().unwrap_or_else(|| role.to_string());
    let policy = WaitPolicy {
        spin: args.wait_spin.unwrap_or(WaitPolicy::ADAPTIVE.spin),
        yielding: args.wait_yield,
        ..WaitPolicy::ADAPTIVE
    };
    match bootstrap::connect(source, role, &name, policy) {
        Ok(ep) => (ep, name),
        Err(e) => {
            tracing::error!(%name, error = %e, "bring-up failed");
            e.exit_code().exit();
        }
    }
}

/// Tells the supervisor why the child cannot go on (`message`), then exits
/// with `code`: a sandbox step that failed after the handshake.
pub fn refuse_and_exit(ep: &mut Endpoint, name: &str, message: &str, code: ExitCode) -> ! {
    tracing::error!(%name, error = %message, "cannot complete the sandbox");
    let _ = ep.send_msg(
        &shm_protocol::control::Up::Error {
            message: format!("{name}: {message}"),
        },
        Some(std::time::Instant::now() + std::time::Duration::from_secs(1)),
    );
    code.exit()
}

/// Says the child is ready, with its sandbox report (bring-up's last
/// message), or exits if the supervisor is gone.
pub fn ready_or_exit(ep: &mut Endpoint, sandbox: shm_protocol::control::SandboxReport) {
    let deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(30));
    if ep
        .send_msg(&shm_protocol::control::Up::Ready { sandbox }, deadline)
        .is_err()
    {
        ExitCode::SupervisorGone.exit();
    }
}

/// What a child's main thread is doing, as its heartbeat sees it: it makes
/// progress (a command handled), or it is busy in work that is bounded
/// elsewhere (agent calls, a model run, a compile).  The heartbeat beats
/// only then, so a main thread stuck anywhere else stops the heartbeat just
/// as a stopped process does, and the supervisor declares the child hung.
/// (A main thread waiting for a command beats by itself while it waits.)
#[derive(Debug, Default)]
// In-process counters between two threads, not the cross-process protocol
// whose atomics go through shm-protocol's loom facade.
#[allow(clippy::disallowed_types)]
pub struct Activity {
    progress: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicU32,
}

/// Marks a stretch of bounded work (see [`Activity::busy`]).
#[derive(Debug)]
pub struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.busy.fetch_sub(1, Relaxed);
        self.0.progress.fetch_add(1, Relaxed);
    }
}

impl Activity {
    /// The main thread made progress.
    pub fn step(&self) {
        self.progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The main thread enters work bounded elsewhere, until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self)
    }

    /// Whether the heartbeat should beat now (`last` is the progress seen
    /// at the previous call).
    pub fn alive(&self, last: &mut u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.progress.load(Relaxed);
        let moved = now != *last;
        *last = now;
        moved || self.busy.load(Relaxed) > 0
    }
}

/// Beats this process's heartbeat in `ep`'s segment every `period` from a
/// thread of its own while `activity` says the main thread is alive (see
/// [`Activity`]): the supervisor tells a busy child (a long model run) from
/// a stopped or stuck one by it.
pub fn start_heartbeat(
    ep: &Endpoint,
    period: std::time::Duration,
    activity: std::sync::Arc<Activity>,
) {
    let status = ep.segment().status();
    let _ = std::thread::Builder::new()
        .name("lockstep-heartbeat".into())
        .spawn(move || {
            let mut last = 0;
            loop {
                if activity.alive(&mut last) {
                    status.beat();
                }
                std::thread::sleep(period);
            }
        });
}

/// How much of the worker sandbox to apply (`lockstep-worker --sandbox`;
/// see ARCHITECTURE.md, "Worker sandbox").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Every layer (rlimits, no_new_privs, Landlock, seccomp), or the worker
    /// exits with code 69 (`Sandbox`).
    #[default]
    Strict,
    /// Every layer the kernel supports; a missing one (Landlock, seccomp) is
    /// a warning.  Any other failure is still fatal.
    BestEffort,
    /// As strict, but a system call outside the seccomp allowlist is logged
    /// by the kernel (`SECCOMP_RET_LOG`, `dmesg`) instead of killing the
    /// worker: for deriving and auditing the allowlist only.
    Log,
    /// No sandbox.
    Off,
}

impl SandboxMode {
    /// The command-line spelling (`strict`, `best-effort`, `log`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Strict => "strict",
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Log => "log",
            SandboxMode::Off => "off",
        }
    }

    /// Parses the command-line spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Strict, Self::BestEffort, Self::Log, Self::Off]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
