//! `lockstep-worker`: a child process of the Lockstep supervisor that hosts
//! WebAssembly agents under wasmtime.
//!
//! The supervisor starts it with an inherited shared-memory segment
//! (`--shm-fd`); the worker attaches, says hello, and then executes the
//! supervisor's [`WorkerCommand`]s — module loads, one batch of work per
//! tick, state capture and restore — until told to shut down.  It exits with
//! one of [`shm_protocol::control::ExitCode`]'s codes so the supervisor can
//! tell a setup failure from a crash.

use clap::Parser;
use lockstep_common::ChildArgs;
use lockstep_worker::service::{Worker, split_tick_done};
use lockstep_worker::snapshot::Imager;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Down, ExitCode, Role, Up};
use shm_protocol::worker::{WorkerCommand, WorkerReply};

/// Command line of a worker (normally written by the supervisor).
#[derive(Debug, Parser)]
#[command(name = "lockstep-worker", version, about = "Lockstep worker process")]
struct Args {
    #[command(flatten)]
    child: ChildArgs,
}

fn main() {
    bootstrap::install_panic_exit("lockstep-worker");
    let args: Args = lockstep_common::parse_or_exit();
    lockstep_common::init_logging("warn");
    let mut worker = match Worker::new() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the WebAssembly engine");
            ExitCode::Runtime.exit();
        }
    };
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, Role::Worker);
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
