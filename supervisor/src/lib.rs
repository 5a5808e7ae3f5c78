//! The Lockstep supervisor: the process at the centre of a run.
//!
//! It starts and watches the child processes (workers hosting WebAssembly
//! agents, the inference host), talks to each over its own shared-memory ring
//! pair, and — in the supervisor issue — schedules agents in deterministic
//! ticks and mediates all their messages.  The `lockstep` binary is a thin
//! command line over this library.
//!
//! ```no_run
//! use lockstep_supervisor::cluster::{Cluster, ClusterConfig};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ClusterConfig::new(2)?;            // 2 workers + inference host
//! let mut cluster = Cluster::start(&cfg)?;      // spawn + handshake
//! for r in cluster.ping_all(100)? {
//!     println!("{} p50 {:?}", r.name, r.quantile(0.5));
//! }
//! for exit in cluster.shutdown(Duration::from_secs(5))? {
//!     assert!(exit.kind.is_clean());
//! }
//! # Ok(()) }
//! ```
//!
//! # Core concepts
//!
//! * [`child::Child`] — one child process: memfd segment, pidfd, handshake.
//! * [`reaper::Reaper`] — a thread that learns of every child's death through
//!   its pidfd and reports how it died ([`reaper::ExitKind`]).
//! * [`cluster::Cluster`] — the set of children of a run.

pub mod child;
pub mod cluster;
pub mod ctl;
pub mod inference;
pub mod journal;
pub mod manifest;
pub mod reaper;
pub mod replay;
pub mod runner;
pub mod sim;
pub mod snapshot;
pub mod telemetry;
