//! The step entry instrumentation adds (a plain step's context written
//! inside wasm, left in the buffer until the host next needs it zero) is
//! invisible: agents see the same contexts and messages, use and report
//! the same fuel, fault at the same points, and every capture, image and
//! result is the same as when the host writes and clears each context.

use lockstep_worker::engine;
use lockstep_worker::instrument::STEP_ENTRY_EXPORT;
use lockstep_worker::service::Worker;
use shm_protocol::worker::{
    AgentLimits, Delivery, SpawnOrder, StepOrder, TaskRef, TickDone, TickWork, WireMessage,
};

/// An agent that keeps a copy of every context and message it is given
/// (at 8192 and 12288: part of its state), sums the context's words into a
/// global, and burns fuel in proportion to the tick (`agent_step` runs out
/// of fuel on every tick divisible by 7 when the limit is small), sending a
/// message on even ticks.
const RECORDER: &str = r#"(module
  (import "lockstep" "send" (func $send (param i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $sum (mut i64) (i64.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 4096))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param $ctx i32) (result i32) (local $i i32) (local $n i32)
    (memory.copy (i32.const 8192) (local.get $ctx) (i32.const 96))
    (global.set $sum (i64.add (global.get $sum)
      (i64.add (i64.load offset=8 (local.get $ctx)) (i64.load offset=40 (local.get $ctx)))))
    (local.set $n (i32.wrap_i64 (i64.load offset=8 (local.get $ctx))))
    (if (i32.eqz (i32.rem_u (local.get $n) (i32.const 7)))
      (then (local.set $n (i32.const 100000))))
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.mul (local.get $n) (i32.const 10)))))
    (if (i32.eqz (i32.and (local.get $n) (i32.const 1)))
      (then (drop (call $send (i64.const 2) (i32.const 8192) (i32.const 16)))))
    (i32.const 0))
  (func (export "agent_receive") (param $msg i32) (result i32)
    (memory.copy (i32.const 12288) (local.get $msg) (i32.const 96))
    (global.set $sum (i64.add (global.get $sum) (i64.load offset=8 (local.get $msg))))
    (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#;

/// Fuel enough for every step (the longest loop is 1,000,000 iterations).
const AMPLE: u64 = 100_000_000;

fn worker(step_entry: bool) -> Worker {
    let mut w = Worker::new().unwrap();
    let mut m = engine::load_module(
        &w.runtime().engine,
        "recorder",
        RECORDER.as_bytes(),
        None,
        1 << 24,
    )
    .unwrap();
    assert!(m.step_entry, "instrumentation adds the step entry");
    m.step_entry = step_entry;
    w.insert_module(1, m);
    w
}

/// Tick 0's work: agent `agent_id` of module 1 spawns, default limits.
fn spawn_one(agent_id: u64) -> TickWork {
    TickWork {
        spawns: vec![SpawnOrder {
            agent_id,
            module_id: 1,
            tenant: 0,
            limits: AgentLimits::default(),
        }],
        ..TickWork::default()
    }
}

/// Tick `t`'s work: every agent steps; some ticks also deliver messages
/// (before the steps) or run a task (after them).
fn work(t: u64) -> TickWork {
    let msg = |sender: u64, len: usize| WireMessage {
        kind: 0,
        sender,
        sent_tick: t,
        seq: t,
        topic: if len > 3 {
            "news".into()
        } else {
            String::new()
        },
        payload: vec![t as u8; len].into(),
    };
    let mut w = TickWork {
        tick: t,
        step_all: true,
        ..TickWork::default()
    };
    if t.is_multiple_of(3) {
        w.deliveries.push(Delivery {
            agent_id: 1,
            // The longer first: the shorter one after it must find the
            // buffer zero beyond itself.
            messages: vec![msg(3, 40), msg(2, 1)].into(),
        });
    }
    if t.is_multiple_of(5) {
        w.steps.push(StepOrder {
            agent_id: 2,
            task: Some(TaskRef {
                task_id: t,
                priority: 1,
                payload: vec![7; 5],
            }),
        });
    }
    w
}

/// Per tick: its result, and (every 4th tick) each agent's state hash and
/// captured memory.
type Trace = Vec<(TickDone, Vec<([u8; 32], Vec<u8>)>)>;

fn run(step_entry: bool, fuel_per_call: u64) -> Trace {
    let mut w = worker(step_entry);
    let limits = AgentLimits {
        fuel_per_call,
        memory_bytes: 1 << 20,
        ..AgentLimits::default()
    };
    let spawn = TickWork {
        tick: 0,
        spawns: (1..=3)
            .map(|agent_id| SpawnOrder {
                agent_id,
                module_id: 1,
                tenant: 0,
                limits,
            })
            .collect(),
        ..TickWork::default()
    };
    // Wall time aside (what a tick took), everything is compared.
    let untimed = |mut d: TickDone| {
        d.wall_ns = 0;
        d
    };
    let mut out = vec![(untimed(w.tick(&spawn)), Vec::new())];
    for t in 1..=40 {
        let done = untimed(w.tick(&work(t)));
        // Every few ticks the agents' states are read, as a checkpoint
        // does; in between they are not (the context stays in place).
        let mut states = Vec::new();
        if t % 4 == 0 {
            for id in 1..=3 {
                if let Some(a) = w.agent_mut(id) {
                    states.push((a.state_hash(), a.capture().memory));
                }
            }
        }
        out.push((done, states));
    }
    out
}

#[test]
fn the_step_entry_is_invisible() {
    let direct = run(false, AMPLE);
    let entry = run(true, AMPLE);
    assert_eq!(direct.len(), entry.len());
    for (t, (d, e)) in direct.iter().zip(&entry).enumerate() {
        assert_eq!(d.0, e.0, "tick {t}: results differ");
        assert_eq!(d.1, e.1, "tick {t}: states differ");
    }
    let faults = entry
        .iter()
        .flat_map(|(d, _)| &d.results)
        .filter(|r| r.fault.is_some());
    assert_eq!(faults.count(), 0);
    // The agents did step, send and get messages.
    assert!(
        direct
            .iter()
            .any(|(d, _)| d.results.iter().any(|r| !r.outputs.is_empty()))
    );
    let memory = &entry.last().unwrap().1[0].1;
    assert!(
        memory[8192..8200].iter().any(|&b| b != 0),
        "a context was recorded"
    );
    assert!(
        memory[4096..4096 + 256].iter().all(|&b| b == 0),
        "the buffer reads as zero"
    );
}

/// What agents see is what docs/abi.md says, whichever way it is written:
/// the last context or message, followed by zeros.
#[test]
fn agents_see_exactly_the_current_context_or_message() {
    use lockstep_worker::agent::{encode_context, encode_message};
    for step_entry in [true, false] {
        let trace = run(step_entry, AMPLE);
        // Tick 36: messages (36 % 3 == 0) before the step; agent 1's state
        // is read after it (36 % 4 == 0).
        let memory = &trace[36].1[0].1;
        let mut ctx = encode_context(36, 1, None, 2, false);
        ctx.resize(96, 0);
        assert_eq!(&memory[8192..8288], &ctx[..], "entry {step_entry}: context");
        let w = work(36);
        let last = w.deliveries[0].messages.iter().nth(1).unwrap();
        let mut msg = encode_message(last);
        assert!(msg.len() < 60, "the last message is the shorter one");
        msg.resize(96, 0);
        assert_eq!(
            &memory[12288..12384],
            &msg[..],
            "entry {step_entry}: message"
        );
    }
}

#[test]
fn the_step_entry_runs_out_of_fuel_where_a_direct_call_does() {
    // Enough for a plain tick's loop, not for a tick divisible by 7; the
    // agents fault and restart with the same fuel either way.
    let direct = run(false, 60_000);
    let entry = run(true, 60_000);
    let faults = |r: &Trace| {
        r.iter()
            .flat_map(|(d, _)| d.results.iter().filter(|r| r.fault.is_some()))
            .count()
    };
    assert!(faults(&direct) > 0, "some steps ran out of fuel");
    for (t, (d, e)) in direct.iter().zip(&entry).enumerate() {
        assert_eq!(d.0, e.0, "tick {t}: results differ");
        assert_eq!(d.1, e.1, "tick {t}: states differ");
    }
}

#[test]
fn modules_that_claim_the_entry_name_run_without_it() {
    let claimed = RECORDER.replace(
        "(func (export \"agent_shutdown\")",
        &format!("(func (export \"{STEP_ENTRY_EXPORT}\") (param i32 i64 i64 i64) (result i32) (i32.const 5))\n  (func (export \"agent_shutdown\")"),
    );
    let w = Worker::new().unwrap();
    let m = engine::load_module(
        &w.runtime().engine,
        "claimed",
        claimed.as_bytes(),
        None,
        1 << 24,
    )
    .unwrap();
    assert!(
        !m.step_entry,
        "a module's own export is never taken for the entry"
    );
    let mut w = w;
    w.insert_module(1, m);
    w.tick(&spawn_one(1));
    for t in 1..=3 {
        let d = w.tick(&TickWork {
            tick: t,
            step_all: true,
            ..TickWork::default()
        });
        assert!(d.results.iter().all(|r| r.fault.is_none()), "{d:?}");
    }
    // Its own function's 5 was never a step's result (which would fault).
    let memory = w.agent_mut(1).unwrap().capture().memory;
    assert_eq!(
        u64::from_le_bytes(memory[8200..8208].try_into().unwrap()),
        3
    );
}

#[test]
fn a_restored_buffer_outside_the_memory_is_refused() {
    use lockstep_worker::agent::Agent;
    use std::sync::Arc;
    let mut w = worker(true);
    let module = Arc::new(
        engine::load_module(
            &w.runtime().engine,
            "recorder",
            RECORDER.as_bytes(),
            None,
            1 << 24,
        )
        .unwrap(),
    );
    w.insert_module(1, (*module).clone());
    w.tick(&spawn_one(1));
    w.tick(&work(1));
    let state = w.agent_mut(1).unwrap().capture();
    assert_eq!(state.host.buffer, (4096, 256));
    let rt = w.runtime().clone();
    let restore = |buffer| {
        let mut s = state.clone();
        s.host.buffer = buffer;
        Agent::restore(&rt, module.clone(), 1, AgentLimits::default(), &s).map(|_| ())
    };
    assert!(restore((4096, 256)).is_ok());
    for bad in [
        (65_536 - 32, 256),
        (4100, 256),
        (0, 256),
        (u32::MAX - 7, 64),
    ] {
        let err = restore(bad).expect_err("a buffer it could not have given");
        assert!(
            format!("{err:?}").contains("captured host buffer"),
            "{bad:?}: {err:?}"
        );
    }
}

/// Steps one agent of `wat` for `ticks` ticks with or without the step
/// entry: every tick's result and every captured memory.
fn trace_of(wat: &str, step_entry: bool, ticks: u64) -> Vec<(TickDone, Vec<u8>)> {
    let mut w = Worker::new().unwrap();
    let mut m = engine::load_module(&w.runtime().engine, "m", wat.as_bytes(), None, 1 << 24)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(m.step_entry, "instrumentation adds the step entry");
    m.step_entry = step_entry;
    w.insert_module(1, m);
    w.tick(&spawn_one(9));
    (1..=ticks)
        .map(|t| {
            let mut d = w.tick(&TickWork {
                tick: t,
                step_all: true,
                ..TickWork::default()
            });
            d.wall_ns = 0;
            (d, w.agent_mut(9).unwrap().capture().memory)
        })
        .collect()
}

/// Instrumentation keeps every other section as it was: imports shift the
/// function index space, a start function, a table with an element segment
/// holding `agent_step`, passive data with a data count section, several
/// types shared by several functions, `agent_step` exported twice.
#[test]
fn instrumentation_keeps_every_section() {
    let wat = r#"(module
  (type $v (func (result i32)))
  (type $ii (func (param i32) (result i32)))
  (import "lockstep" "random" (func $random (result i64)))
  (import "lockstep" "tick" (func $tick (result i64)))
  (import "lockstep" "agent_id" (func $id (result i64)))
  (memory (export "memory") 1)
  (table 2 funcref)
  (elem (i32.const 0) $step $zero)
  (global $started (mut i32) (i32.const 0))
  (data $greeting "hello")
  (func $start (global.set $started (i32.const 1)))
  (start $start)
  (func $zero (type $v) (i32.const 0))
  (func (export "agent_abi_version") (type $v) (i32.const 0x10000))
  (func (export "agent_buffer") (type $ii) (i32.const 2048))
  (func (export "agent_init") (type $v)
    (memory.init $greeting (i32.const 100) (i32.const 0) (i32.const 5))
    (call_indirect (type $v) (i32.const 1)))
  (func $step (export "agent_step") (export "step_too") (type $ii)
    (i64.store (i32.const 200) (i64.add (i64.load (i32.const 200)) (i64.load offset=8 (local.get 0))))
    (i64.store (i32.const 208) (call $id))
    (i32.store (i32.const 216) (global.get $started))
    (i32.const 0))
  (func (export "agent_receive") (type $ii) (i32.const 0))
  (func (export "agent_shutdown") (type $v) (i32.const 0)))"#;
    let direct = trace_of(wat, false, 5);
    let entry = trace_of(wat, true, 5);
    assert_eq!(direct, entry);
    let memory = &entry.last().unwrap().1;
    assert_eq!(&memory[100..105], b"hello");
    assert_eq!(u64::from_le_bytes(memory[200..208].try_into().unwrap()), 15); // 1 + … + 5
    assert_eq!(u64::from_le_bytes(memory[208..216].try_into().unwrap()), 9);
    assert_eq!(memory[216], 1, "the start function ran");
}

/// The fuzz target's function on mutations of a valid module (most fail
/// validation; the rest exercise instrumentation on varied modules).
mod mutated_modules {
    use proptest::prelude::*;

    fn base() -> Vec<u8> {
        wat::parse_str(super::RECORDER).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn loading_never_panics(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
        ) {
            let mut b = base();
            for (at, byte, kind) in edits {
                let at = at % (b.len() + 1);
                match kind {
                    0 if at < b.len() => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ => b.truncate(at.max(8)),
                }
            }
            lockstep_worker::instrument::fuzz_load(&b);
        }
    }
}

/// A compiled form made without the step entry (by a version that did not
/// add it, e.g. from an old compiled-module cache) is refused at load, not
/// left to fault every agent at instantiation.
#[test]
fn a_compiled_form_without_the_entry_is_refused() {
    let w = Worker::new().unwrap();
    let engine = &w.runtime().engine;
    let bare = wasmtime::Module::new(engine, RECORDER.as_bytes())
        .unwrap()
        .serialize()
        .unwrap();
    let e = engine::load_module(engine, "old", RECORDER.as_bytes(), Some(&bare), 1 << 24)
        .expect_err("a compiled form without the step entry");
    assert!(e.to_string().contains("step entry"), "{e}");
}
