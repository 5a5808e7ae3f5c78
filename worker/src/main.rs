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
use lockstep_worker::sandbox;
use lockstep_worker::service::{Worker, split_tick_done};
use lockstep_worker::snapshot::Imager;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Down, ExitCode, Role, Up};
use shm_protocol::worker::{WorkerCommand, WorkerReply};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// A directory whose files may be read (modules); repeatable.
    #[arg(long = "allow-read", value_name = "DIR")]
    allow_read: Vec<PathBuf>,
    /// A directory that may be read and written (the compiled-module
    /// cache; created if missing); repeatable.
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
    if let Err(e) = sandbox::apply(&cfg, || worker.start_epoch_ticker()) {
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
    let max_frame = ep.tx.producer().max_payload();
    let mut imager = Imager::default();
    tracing::debug!(%name, "worker ready");
    let code = bootstrap::serve(&mut ep, |cmd| match cmd {
        Down::Worker(WorkerCommand::Tick(work)) => {
            let done = worker.tick(&work);
            if done.more {
                Reply::None
            } else {
                Reply::Many(
                    split_tick_done(done, max_frame / 2)
                        .into_iter()
                        .map(|d| Up::Worker(WorkerReply::TickDone(d)))
                        .collect(),
                )
            }
        }
        Down::Worker(WorkerCommand::Checkpoint { agents, full }) => Reply::Many(
            imager
                .checkpoint(&mut worker, &agents, full, max_frame / 2)
                .into_iter()
                .map(Up::Worker)
                .collect(),
        ),
        Down::Worker(WorkerCommand::RestoreBegin {
            agent_id,
            module_id,
            tenant,
            limits,
            image,
        }) => match imager.begin(agent_id, module_id, tenant, limits, image) {
            None => Reply::None,
            Some(e) => Reply::Send(Up::Worker(WorkerReply::Restored {
                agent_id,
                error: Some(e),
            })),
        },
        Down::Worker(WorkerCommand::RestoreChunks { agent_id, chunks }) => {
            match imager.chunks(agent_id, chunks) {
                None => Reply::None,
                Some(e) => Reply::Send(Up::Worker(WorkerReply::Restored {
                    agent_id,
                    error: Some(e),
                })),
            }
        }
        Down::Worker(WorkerCommand::RestoreEnd { agent_id }) => {
            Reply::Send(Up::Worker(imager.end(&mut worker, agent_id)))
        }
        Down::Worker(c) => Reply::Send(Up::Worker(worker.handle(c))),
        other => Reply::Send(Up::Error {
            message: format!("a worker does not handle {other:?}"),
        }),
    });
    code.exit();
}
