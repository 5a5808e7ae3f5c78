//! The Lockstep supervisor: the process at the centre of a run.
//!
//! It starts and watches the child processes (workers hosting WebAssembly
//! agents, the inference host), talks to each over its own shared-memory ring
//! pair, schedules agents in deterministic ticks and mediates all their
//! messages, journals every input, checkpoints the state, and recovers from
//! every failure of a child without changing a bit of the run.  The
//! `lockstep` binary is a thin command line over this library.
//!
//! ```no_run
//! use lockstep_supervisor::manifest::Manifest;
//! use lockstep_supervisor::run::{Run, RunConfig};
//! use shm_protocol::inference::Tensor;
//! use std::path::{Path, PathBuf};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("examples/demo.toml")?;
//! let manifest = Manifest::load("examples/demo.toml".as_ref())?;
//! let mut cfg = RunConfig::new(manifest, text, PathBuf::from("run/example"))?;
//! cfg.manifest_dir = PathBuf::from("examples");
//! let mut run = Run::start(cfg)?;               // workers, modules, genesis checkpoint
//!
//! // The TypeScript client's names, in Rust case; each input is checked,
//! // journaled and applied at the next tick.
//! let id = run.spawn_agent("helper", Path::new("target/agents/counter.wasm"), "default")?;
//! run.publish("sensors", b"hello".to_vec())?;
//! run.load_model("mlp", "v2", Path::new(".deps/models/mlp_v2.onnx"))?;
//! for _ in 0..100 {
//!     run.tick()?;
//! }
//! // Asked from outside: answered now, never journaled.
//! let answer = run.infer("mlp", Tensor::from_slice(vec![1, 16], &[0.5f32; 16])?)?;
//! println!("agent {id}; mlp answers {:?}", answer.shape());
//! match run.unload_model("nothing", None) {
//!     Err(e) => println!("{}: {e}", e.code()),   // unknown-model
//!     Ok(_) => unreachable!(),
//! }
//! let (file, _hash) = run.snapshot_state()?;
//! println!("snapshot {file}");
//! let summary = run.finish()?;                  // final checkpoint, journal end
//! println!("tick {} hash {}", summary.tick, summary.hash);
//! # Ok(()) }
//! ```
//!
//! The same commands, as one type, drive `lockstep ctl` and the control
//! socket ([`command::Command`], [`Run::command`](run::Run::command));
//! docs/embedding.md is the guide.
//!
//! # Core concepts
//!
//! * [`sim::SimState`] — the deterministic state and the tick state
//!   machine (inputs, plan, barrier phases); a pure function of the
//!   manifest, the seed and the journaled inputs.
//! * [`run::Run`] — one tick after another: the state machine over the
//!   [`pool::WorkerPool`], with the [`journal`], the
//!   [`inference::InferenceService`], [`checkpoint`]s and the
//!   [`observe::Observers`]; [`api`] is what may be asked of it between
//!   ticks.
//! * [`timeline::Timeline`] — live ticks, or recorded ones re-executed
//!   (replay, verify, fork, resume: [`replay`]).
//! * [`failure`] — every way a child can fail, classified once; the pool
//!   and the inference service recover from all of them the same way.
//! * [`modules::ModuleStore`] — agent modules read, checked, compiled once
//!   by a fresh process, cached under a MAC, kept with the run.

#![forbid(unsafe_code)]

pub mod api;
pub mod checkpoint;
pub mod child;
pub mod cluster;
pub mod command;
pub mod config;
pub mod ctl;
pub mod diff;
pub mod doctor;
pub mod failure;
pub mod flow;
pub mod inference;
pub mod inject;
pub mod jail;
pub mod journal;
pub mod manifest;
pub mod modules;
pub mod observe;
pub mod openmetrics;
pub mod pages;
pub mod pool;
pub mod progress;
pub mod reaper;
pub mod remote;
pub mod replay;
pub mod run;
pub mod rundir;
pub mod scaffold;
pub mod sim;
pub mod snapshot;
pub mod telemetry;
pub mod timeline;
