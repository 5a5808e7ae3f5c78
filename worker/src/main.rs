//! `lockstep-worker`: a child process of the Lockstep supervisor that hosts
//! WebAssembly agents under wasmtime.
//!
//! The supervisor starts it with an inherited shared-memory segment
//! (`--shm-fd`); the worker attaches, says hello, and then executes the
//! supervisor's [`WorkerCommand`]s — module loads, one batch of work per
//! tick, state capture and restore — until told to shut down.  It exits with
//! one of [`shm_protocol::control::ExitCode`]'s codes so the supervisor can
//! tell a setup failure from a crash.
//!
//! Between the handshake and the first command it sandboxes itself
//! ([`lockstep_worker::sandbox`]): rlimits, `no_new_privs`, Landlock (only
//! the `--allow-read`/`--allow-write` directories), then the epoch thread is
//! started and a seccomp-bpf allowlist installed on every thread.

use clap::Parser;
use lockstep_common::{ChildArgs, SandboxMode};
use lockstep_worker::oom::OomExit;
use lockstep_worker::sandbox;
use lockstep_worker::service::Worker;
use lockstep_worker::snapshot::Imager;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Down, ExitCode, Role, Up};
use shm_protocol::worker::{WorkerCommand, WorkerReply};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Running out of heap memory exits with the out-of-memory code.
#[global_allocator]
static ALLOC: OomExit = OomExit;

/// Command line of a worker (normally written by the supervisor).
#[derive(Debug, Parser)]
#[command(name = "lockstep-worker", version, about = "Lockstep worker process")]
struct Args {
    #[command(flatten)]
    child: ChildArgs,
    /// Process sandbox: strict (every layer or exit 69), best-effort (skip
    /// layers the kernel lacks, with a warning), log (seccomp violations are
    /// logged, not fatal: for auditing the allowlist) or off.
    #[arg(long, value_enum, default_value_t = SandboxMode::Strict)]
    sandbox: SandboxMode,
    /// Same as `--sandbox off`.
    #[arg(long, conflicts_with = "sandbox")]
    no_sandbox: bool,
    /// RLIMIT_AS in bytes (0: no limit).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    address_space_limit: u64,
    /// A directory whose files may be read; repeatable.  Workers receive
    /// modules over their ring and need none.
    #[arg(long = "allow-read", value_name = "DIR")]
    allow_read: Vec<PathBuf>,
    /// A directory that may be read and written (created if missing);
    /// repeatable.
    #[arg(long = "allow-write", value_name = "DIR")]
    allow_write: Vec<PathBuf>,
}

fn main() {
    bootstrap::install_panic_exit("lockstep-worker");
    let args: Args = lockstep_common::parse_or_exit();
    lockstep_common::init_logging("warn");
    // The epoch thread starts inside the sandbox (see `sandbox::apply`).
    let mut worker = match Worker::without_ticker() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the WebAssembly engine");
            ExitCode::Runtime.exit();
        }
    };
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, Role::Worker);
    let cfg = sandbox::Config {
        mode: if args.no_sandbox {
            SandboxMode::Off
        } else {
            args.sandbox
        },
        address_space_limit: args.address_space_limit,
        allow_read: args.allow_read,
        allow_write: args.allow_write,
    };
    // The epoch thread is also the heartbeat: it beats while agents run, so
    // the supervisor tells a busy worker from a stopped or hung one.
    let status = ep.segment().status();
    let activity = worker.activity();
    let mut seen = 0;
    let beat = move || {
        if activity.alive(&mut seen) {
            status.beat();
        }
    };
    if let Err(e) = sandbox::apply(&cfg, || worker.start_epoch_ticker(beat)) {
        tracing::error!(%name, error = %e, "cannot set up the worker sandbox");
        // Tell the supervisor why before going (it is waiting to configure us).
        let _ = ep.send_msg(
            &Up::Error {
                message: format!("{name}: worker sandbox setup failed: {e}"),
            },
            Some(Instant::now() + Duration::from_secs(1)),
        );
        ExitCode::Sandbox.exit();
    }
    let mut imager = Imager::default();
    let own = shm_protocol::rogue::Target::of(ep.segment());
    tracing::debug!(%name, "worker ready");
    let code = bootstrap::serve(&mut ep, |cmd| match cmd {
        Down::Worker(WorkerCommand::Tick(work)) => {
            let done = worker.tick(&work);
            if let Some(attack) = worker.corruption_at(work.tick) {
                // Test-only fault injection: a rogue worker.
                tracing::error!(tick = work.tick, ?attack, "injected ring corruption");
                shm_protocol::rogue::attack(&own, shm_protocol::rogue::Ring::Up, attack);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Reply::Send(Up::Worker(WorkerReply::TickDone(done)))
        }
        Down::Worker(WorkerCommand::Checkpoint { agents, full }) => {
            let activity = worker.activity();
            let _busy = activity.busy();
            Reply::Many(
                imager
                    .checkpoint(&mut worker, &agents, full)
                    .into_iter()
                    .map(Up::Worker)
                    .collect(),
            )
        }
        Down::Worker(WorkerCommand::Restore(order)) => {
            let activity = worker.activity();
            let _busy = activity.busy();
            imager.restore(&mut worker, order);
            Reply::None
        }
        Down::Worker(WorkerCommand::RestoreDone) => Reply::Send(Up::Worker(imager.done())),
        Down::Worker(c) => Reply::Send(Up::Worker(worker.handle(c))),
        other => Reply::Send(Up::Error {
            message: format!("a worker does not handle {other:?}"),
        }),
    });
    code.exit();
}
