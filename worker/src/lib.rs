//! The Lockstep worker: hosts WebAssembly agents under wasmtime and serves
//! the supervisor over its shared-memory ring pair.
//!
//! ```
//! use lockstep_worker::{agent::{Agent, Runtime}, engine};
//! use shm_protocol::worker::AgentLimits;
//! use std::{sync::Arc, time::Duration};
//!
//! let eng = engine::deterministic_engine().unwrap();
//! let rt = Runtime::new(eng.clone(), 42, Duration::from_secs(1)).unwrap();
//! let wat = r#"(module
//!   (memory (export "memory") 1)
//!   (global $n (mut i32) (i32.const 0))
//!   (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
//!   (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
//!   (func (export "agent_init") (result i32) (i32.const 0))
//!   (func (export "agent_step") (param i32) (result i32)
//!     (global.set $n (i32.add (global.get $n) (i32.const 1))) (i32.const 0))
//!   (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
//!   (func (export "agent_shutdown") (result i32) (i32.const 0)))"#;
//! let module = Arc::new(engine::load_module(&eng, "counter", wat.as_bytes(), None, 1 << 20).unwrap());
//! let mut agent = Agent::instantiate(&rt, module, 1, AgentLimits::default()).unwrap();
//! assert!(agent.init(0).fault.is_none());
//! let step = agent.step(1, None, 0);
//! assert!(step.fault.is_none() && step.fuel > 0);
//! ```
//!
//! # Core concepts
//!
//! * [`engine`] — the deterministic engine configuration, the module
//!   interface checks, and loading the supervisor's compiled form.
//! * [`instrument`] — validation of module bytes and the entry points added
//!   for the host (every mutable global exported so it can be captured; the
//!   step entry that writes a plain step's context inside wasm).
//! * [`host`] — the `lockstep` imports every agent may call, with pointer
//!   validation and fuel charging.
//! * [`agent::Agent`] — one agent: its own `Store` and memory, calls with
//!   per-call fuel, fault classification, capture/restore of its state.
//! * [`service::Worker`] — the agents of one worker process and the
//!   execution of the supervisor's per-tick work.
//! * [`oom`] — running out of memory ends the process with its own exit
//!   code, never as an agent's fault.
//! * `inject` — test-only fault injection (cargo feature
//!   `fault-injection`; absent from release builds).
//!
//! The worker process's own sandbox (defence in depth behind wasmtime) is
//! `lockstep_sandbox`'s, applied by `lockstep-worker`'s `main`.

// The one `unsafe` of the runtime outside the transport crate is
// wasmtime's `Module::deserialize` (`engine.rs`), on bytes only the
// supervisor's compile step produced.
#![deny(unsafe_code)]

pub mod agent;
pub mod engine;
pub mod error;
pub mod host;
#[cfg(feature = "fault-injection")]
pub mod inject;
pub mod instrument;
pub mod oom;
pub mod service;
pub mod snapshot;
