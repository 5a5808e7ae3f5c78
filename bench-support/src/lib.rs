//! What Lockstep's benchmarks share, so that every bench describes its
//! machine, summarises its rounds and prints its tables the same way.
//!
//! ```no_run
//! use lockstep_bench_support::{Stat, Table, preamble, thousands};
//!
//! println!("# My bench");
//! let _machine = preamble(); // the machine, then the quiet-machine check
//! let rounds = [412.0, 398.5, 430.1]; // one figure, once per round
//! let mut t = Table::new(["agents", "tick p50 µs"]);
//! t.row([thousands(10_000), Stat::of(&rounds).show(0)]);
//! print!("{t}"); // | 10,000 | 412 (399–430) |
//! ```
//!
//! Core concepts:
//!
//! * **Rounds.**  A bench measures every contender once per round,
//!   interleaved, so that all see the same machine; a figure is then the
//!   [`Stat`] over the rounds: median, with the min–max range.  Within a
//!   round, samples are summarised by [`stat::percentile`] (rank
//!   `round((n − 1) · q)`, as the Node.js peer computes it).
//! * **The machine.**  Every bench starts with [`preamble`]: the
//!   [`Machine`] line (CPU model, CPUs, memory, kernel, load, rustc) and
//!   the [`quiet::quiet_check`], which samples /proc/stat for 200 ms and
//!   warns when other processes (or the hypervisor's steal) take CPU.  A
//!   busy machine is reported, never refused.
//! * **Pinning.**  Cross-process measurements put each side on its own CPU
//!   ([`pin`], `sched_setaffinity` through `nix`).
//! * **Tables.**  Results are markdown [`Table`]s with [`thousands`]
//!   separators, ready to paste — or, for the scale bench, written between
//!   markers of docs/benchmarks.md by [`docs::write_between`] when
//!   `LOCKSTEP_BENCH_WRITE_DOCS=1`.
//! * **Shared workloads.**  The no-op agent ([`NOOP_WAT`]), the Node.js
//!   peer ([`node_peer::NodePeer`]) and, with feature `bare`, agents on the
//!   worker's runtime without its command path (`bare`, the in-process
//!   bound).
//! * **Plumbing.**  Knobs from the environment ([`knobs`]), the workspace
//!   and the binaries built beside the bench ([`paths`]), a scratch
//!   directory removed on drop ([`paths::Scratch`]), memory and CPU time
//!   of processes from /proc ([`process`]).

#![forbid(unsafe_code)]

#[cfg(feature = "bare")]
pub mod bare;
pub mod docs;
pub mod knobs;
pub mod machine;
pub mod node_peer;
pub mod noop;
pub mod paths;
pub mod pin;
pub mod process;
pub mod quiet;
pub mod stat;
pub mod table;

pub use machine::Machine;
pub use noop::NOOP_WAT;
pub use stat::Stat;
pub use table::{Table, thousands};

/// Prints what every bench prints first: `machine: …` (the [`Machine`]
/// line) and the quiet-machine check ([`quiet::quiet_check`], 200 ms);
/// returns the machine for the bench's own report.
pub fn preamble() -> Machine {
    let m = Machine::describe();
    println!("machine: {m}");
    println!("{}", quiet::quiet_check());
    m
}
