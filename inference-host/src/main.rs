//! `lockstep-inference-host`: the child process of the Lockstep supervisor
//! that owns all model execution (ONNX Runtime through `ort`).
//!
//! Started by the supervisor with an inherited shared-memory segment
//! (`--shm-fd`), it attaches, says hello and serves the supervisor's commands
//! over its ring pair.  Keeping inference in its own process isolates the
//! runtime from native-library crashes (an abort inside ONNX Runtime takes
//! down this process only; the supervisor restarts it).
//!
//! The model registry and execution are the inference-host issue's scope;
//! this binary currently speaks the bring-up protocol (hello, ping, shutdown).

use clap::Parser;
use lockstep_common::ChildArgs;
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Role, Up};

/// Command line of the inference host (normally written by the supervisor).
#[derive(Debug, Parser)]
#[command(name = "lockstep-inference-host", version, about = "Lockstep inference host process")]
struct Args {
    #[command(flatten)]
    child: ChildArgs,
}

fn main() {
    bootstrap::install_panic_exit("lockstep-inference-host");
    let args: Args = lockstep_common::parse_or_exit();
    lockstep_common::init_logging("warn");
    let (mut ep, name) = lockstep_common::connect_or_exit(&args.child, Role::InferenceHost);
    tracing::debug!(%name, "inference host ready");
    let code = bootstrap::serve(&mut ep, |cmd| {
        Reply::Send(Up::Error { message: format!("inference host does not handle {cmd:?}") })
    });
    code.exit();
}
