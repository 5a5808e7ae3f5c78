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
//! It jails itself as it comes up (`lockstep_sandbox`, ARCHITECTURE.md
//! "Bring-up"): inherited descriptors closed, its cgroup joined, new
//! namespaces, an empty read-only root, capabilities and root dropped —
//! before the engine is built; then, after the handshake, rlimits,
//! Landlock, the epoch thread, and the seccomp-bpf allowlist.  Only then
//! does it say it is ready.

#![forbid(unsafe_code)]

use clap::Parser;
use lockstep_common::ChildArgs;
use lockstep_sandbox::{Class, Jail, JailArgs};
use lockstep_worker::service::Worker;
use lockstep_worker::snapshot::Imager;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Down, ExitCode, Role, Up};
use shm_protocol::worker::{WorkerCommand, WorkerReply};
#[cfg(feature = "fault-injection")]
use std::time::Duration;

/// Running out of heap memory exits with the out-of-memory code.
#[global_allocator]
static ALLOC: shm_protocol::oom::OomExit = shm_protocol::oom::OomExit;

/// Command line of a worker (normally written by the supervisor).
#[derive(Debug, Parser)]
#[command(name = "lockstep-worker", version, about = "Lockstep worker process")]
struct Args {
    #[command(flatten)]
    child: ChildArgs,
    #[command(flatten)]
    jail: JailArgs,
}

fn main() {
    bootstrap::install_panic_exit("lockstep-worker");
    let args: Args = lockstep_common::parse_or_exit();
    lockstep_common::init_logging("warn");
    // Before any thread starts: every thread of the worker inherits it.
    args.child.pin_to_cpu();
    let keep: Vec<i32> = args.child.shm_fd.into_iter().collect();
    let mut jail = Jail::enter(Class::Worker, args.jail.config(&keep)).unwrap_or_else(|e| e.exit());
    // The epoch thread starts inside the sandbox (see `Jail::lock`).
    let mut worker = match Worker::without_ticker() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the WebAssembly engine");
            ExitCode::Runtime.exit();
        }
    };
    let source = args.child.open_source();
    jail.confine().unwrap_or_else(|e| e.exit());
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, &source, Role::Worker);
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
    let report = jail
        .lock(|| worker.start_epoch_ticker(beat))
        .unwrap_or_else(|e| {
            lockstep_common::refuse_and_exit(&mut ep, &name, &e.to_string(), e.layer.exit_code())
        });
    lockstep_common::ready_or_exit(&mut ep, report.to_wire());
    let mut imager = Imager::default();
    #[cfg(feature = "fault-injection")]
    let own = shm_protocol::rogue::Target::of(ep.segment());
    tracing::debug!(%name, "worker ready");
    let code = bootstrap::serve_emitting(&mut ep, |cmd, emit| match cmd {
        Down::Worker(WorkerCommand::Tick(work)) => {
            let done = worker.tick(&work);
            #[cfg(feature = "fault-injection")]
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
            // Images go out as they are made (a checkpoint of many agents
            // never sits in memory); a failed send ends the loop.
            let _ = imager.checkpoint(&mut worker, &agents, full, |r| emit(&Up::Worker(r)));
            Reply::None
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
