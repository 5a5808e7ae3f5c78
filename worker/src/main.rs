//! `lockstep-worker`: a child process of the Lockstep supervisor that hosts
//! agents.
//!
//! The supervisor starts it with an inherited shared-memory segment
//! (`--shm-fd`); the worker attaches, says hello, and then serves the
//! supervisor's commands over its ring pair until told to shut down.  It exits
//! with one of [`shm_protocol::control::ExitCode`]'s codes so the supervisor
//! can tell a setup failure from a crash.
//!
//! Running WebAssembly agents under wasmtime is the worker issue's scope; this
//! binary currently speaks the bring-up protocol (hello, ping, shutdown).

use clap::Parser;
use lockstep_common::ChildArgs;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Role, Up};

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
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, Role::Worker);
    tracing::debug!(%name, "worker ready");
    let code = bootstrap::serve(&mut ep, |cmd| {
        Reply::Send(Up::Error { message: format!("worker does not handle {cmd:?}") })
    });
    code.exit();
}
