//! `lockstep-node`: runs Lockstep workers on another machine for a
//! supervisor, over NATS.
//!
//! A run whose swarm outgrows one machine places some of its worker slots
//! on nodes (`lockstep run … --nats nats://host:4222 --nodes a,b,local`).
//! Each machine runs a node; the supervisor starts, for each slot placed on
//! a node, a local bridge process that stands in for the worker.  Where the
//! workers run cannot change a bit of the run: the supervisor's tick state
//! machine is the same, and it already gives identical results for any
//! number of workers.
//!
//! ```text
//! nats-server -js -a 127.0.0.1 -p 4222 &
//! lockstep-node serve --nats nats://127.0.0.1:4222 --name a &     # on machine A
//! lockstep-node serve --nats nats://127.0.0.1:4222 --name b &     # on machine B
//! lockstep run examples/demo.toml --workers 3 \
//!     --nats nats://127.0.0.1:4222 --nodes a,b,local
//! ```
//!
//! # Core concepts
//!
//! * **Node** (`serve`, [`serve`]): subscribes to `lockstep.node.<name>.open`
//!   and hosts sandboxed `lockstep-worker` processes over the usual
//!   shared-memory rings, each bridged to one link.
//! * **Bridge** (started by the supervisor as `lockstep-node --shm-fd 3
//!   --name worker-N …`, [`bridge`]): the supervisor's child for a remote
//!   slot; asks a node for a worker and relays the worker protocol.
//! * **Link** ([`wire`], [`link`]): two NATS subjects per worker
//!   (`lockstep.link.<id>.down` / `.up`) carrying numbered packets; a gap
//!   is a broken link, recovered as a worker failure.
//!
//! Exit codes: those of every Lockstep child (`shm_protocol::control::ExitCode`),
//! 82 when a bridge lost its node; `serve` exits 1 on a runtime error and 64
//! on a bad command line.

#![forbid(unsafe_code)]

mod archive;
mod bridge;
mod fetch;
mod link;
mod serve;
mod store;
mod wire;

use clap::{Parser, Subcommand};
use shm_protocol::control::ExitCode;

/// Failures of a node or a bridge.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A bad setting.
    #[error("{0}")]
    Usage(String),
    /// The NATS server could not be reached.
    #[error("cannot reach the NATS server at {url}: {reason}")]
    Connect {
        /// Its address.
        url: String,
        /// Why.
        reason: String,
    },
    /// A NATS operation failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// A message did not encode.
    #[error("cannot encode a message: {0}")]
    Encode(String),
    /// A lock was poisoned by a panic.
    #[error("a lock was poisoned")]
    Poisoned,
    /// The async runtime could not start.
    #[error("cannot start the NATS client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The reaper could not start.
    #[error("cannot start the reaper")]
    Reaper(#[source] std::io::Error),
    /// The sandbox could not be prepared.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "lockstep-node",
    version,
    about = "Hosts Lockstep workers for supervisors on other machines, over NATS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Host workers: take open requests on `lockstep.node.<name>.open`.
    Serve(serve::ServeArgs),
    /// Stand in for one remote worker (started by the supervisor; its
    /// arguments begin with `--shm-fd`, which selects this mode).
    #[command(hide = true)]
    Bridge(bridge::BridgeArgs),
    /// Mirror a live run directory into JetStream (`lockstep run
    /// --archive` starts it).
    Archive(archive::ArchiveArgs),
    /// Rebuild a run directory from its JetStream archive.
    Fetch(fetch::FetchArgs),
}

fn main() {
    // The supervisor starts every child as `<binary> --shm-fd 3 --name N
    // <args>`: those arguments select the bridge.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv
        .get(1)
        .is_some_and(|a| a == "--shm-fd" || a == "--shm-path")
    {
        argv.insert(1, "bridge".into());
    }
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::Usage.exit()
            }
            ExitCode::Ok.exit()
        }
    };
    match cli.cmd {
        Cmd::Bridge(args) => {
            shm_protocol::bootstrap::install_panic_exit("lockstep-node bridge");
            lockstep_common::init_logging("warn");
            bridge::run(args)
        }
        cmd => {
            lockstep_common::init_logging(if matches!(cmd, Cmd::Serve(_)) {
                "info"
            } else {
                "warn"
            });
            let r = match cmd {
                Cmd::Serve(a) => serve::run(a),
                Cmd::Archive(a) => archive::run(a),
                Cmd::Fetch(a) => fetch::run(a),
                Cmd::Bridge(_) => unreachable!("handled above"),
            };
            if let Err(e) = r {
                eprintln!("lockstep-node: {e}");
                let code = if matches!(e, NodeError::Usage(_)) {
                    ExitCode::Usage as i32
                } else {
                    1
                };
                std::process::exit(code);
            }
        }
    }
}
