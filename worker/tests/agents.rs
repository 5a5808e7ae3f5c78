//! The worker's agent host on real wasmtime: ABI, fault containment, fuel
//! determinism, state capture/restore, module validation and the cache.

use lockstep_worker::engine;
use lockstep_worker::error::LoadError;
use lockstep_worker::service::Worker;
use shm_protocol::worker::{
    AgentLimits, Delivery, Fault, Output, Sample, SpawnOrder, StepOrder, TaskRef, TickDone,
    TickWork, WireMessage, WorkerCommand, WorkerReply,
};

/// A WAT agent whose `agent_step` runs `step` (with `$ctx` the context
/// pointer) and which keeps a step counter in an *unexported* mutable global
/// and in memory at address 0.
fn agent(step: &str, extra: &str) -> String {
    format!(
        r#"(module
  (import "lockstep" "send" (func $send (param i64 i32 i32) (result i32)))
  (import "lockstep" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "subscribe" (func $subscribe (param i32 i32) (result i32)))
  (import "lockstep" "schedule_task" (func $task (param i64 i32 i32 i32 i32 i32) (result i64)))
  (import "lockstep" "random" (func $random (result i64)))
  (import "lockstep" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $steps (mut i32) (i32.const 0))
  (global $recv (mut i64) (i64.const 0))
  (data (i32.const 64) "news")
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 4096))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param $ctx i32) (result i32)
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    {step}
    (i32.const 0))
  (func (export "agent_receive") (param $msg i32) (result i32)
    ;; remember the sender of the last message and count messages
    (global.set $recv (i64.add (global.get $recv) (i64.load offset=8 (local.get $msg))))
    (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0))
  {extra})"#
    )
}

fn good() -> String {
    agent("(drop (call $random))", "")
}

fn worker_with(modules: &[(u32, &str)]) -> Worker {
    let mut w = Worker::new().unwrap();
    for (id, wat) in modules {
        let m = engine::load_module(
            &w.runtime().engine,
            &format!("m{id}"),
            wat.as_bytes(),
            None,
            1 << 24,
        )
        .unwrap_or_else(|e| panic!("module {id}: {e}"));
        w.insert_module(*id, m);
    }
    w
}

fn spawn(agents: &[(u64, u32)], limits: AgentLimits) -> TickWork {
    TickWork {
        tick: 0,
        spawns: agents
            .iter()
            .map(|&(agent_id, module_id)| SpawnOrder {
                agent_id,
                module_id,
                tenant: 0,
                limits,
            })
            .collect(),
        ..TickWork::default()
    }
}

fn step_all(tick: u64) -> TickWork {
    TickWork {
        tick,
        step_all: true,
        ..TickWork::default()
    }
}

fn limits() -> AgentLimits {
    AgentLimits {
        fuel_per_call: 200_000,
        memory_bytes: 4 << 20,
        ..AgentLimits::default()
    }
}

fn fault_of(done: &TickDone, id: u64) -> Option<Fault> {
    done.results
        .iter()
        .find(|r| r.agent_id == id)
        .and_then(|r| r.fault.clone())
}

#[test]
fn step_counts_and_outputs() {
    let m = agent(
        r#"(drop (call $send (i64.const 7) (i32.const 64) (i32.const 4)))
           (drop (call $publish (i32.const 64) (i32.const 4) (i32.const 64) (i32.const 2)))
           (drop (call $task (i64.const 3) (i32.const 5) (i32.const 64) (i32.const 1) (i32.const 0) (i32.const 0)))"#,
        "",
    );
    let mut w = worker_with(&[(1, &m)]);
    let d = w.tick(&spawn(&[(1, 1)], limits()));
    assert!(fault_of(&d, 1).is_none());
    let d = w.tick(&step_all(1));
    let r = &d.results[0];
    assert_eq!(r.calls, 1);
    assert_eq!(
        r.outputs.to_vec(),
        vec![
            Output::Send {
                to: 7,
                seq: 1,
                payload: b"news".to_vec().into()
            },
            Output::Publish {
                topic: "news".into(),
                seq: 2,
                payload: b"ne".to_vec().into()
            },
            Output::ScheduleTask {
                task_id: (1 << 32) | 1,
                target: 3,
                priority: 5,
                payload: b"n".to_vec(),
                deps: vec![]
            },
        ]
    );
    // Sequence numbers continue across ticks.
    let d = w.tick(&step_all(2));
    assert!(matches!(
        d.results[0].outputs.to_vec()[0],
        Output::Send { seq: 3, .. }
    ));
}

#[test]
fn messages_and_tasks_reach_the_agent() {
    let mut w = worker_with(&[(1, &good())]);
    w.tick(&spawn(&[(5, 1)], limits()));
    let msg = |sender| WireMessage {
        kind: 0,
        sender,
        sent_tick: 0,
        seq: 1,
        topic: String::new(),
        payload: vec![1, 2].into(),
    };
    let work = TickWork {
        tick: 1,
        deliveries: vec![Delivery {
            agent_id: 5,
            messages: vec![msg(3), msg(4)].into(),
        }],
        steps: vec![StepOrder {
            agent_id: 5,
            task: Some(TaskRef {
                task_id: 9,
                priority: 2,
                payload: vec![0; 10],
            }),
        }],
        ..TickWork::default()
    };
    let d = w.tick(&work);
    assert_eq!(
        d.results.len(),
        0,
        "no outputs, no faults: folded into the digest"
    );
    assert_eq!(d.calls, 3);
    let state = w.agent_mut(5).unwrap().capture();
    // The unexported global $recv summed the senders: captured thanks to the
    // instrumentation.
    assert!(
        state
            .globals
            .contains(&shm_protocol::worker::GlobalValue::I64(7)),
        "{:?}",
        state.globals
    );
}

/// Every fault class is contained to its agent; the others keep stepping and
/// their state is exactly what it would have been without the faulty ones.
#[test]
fn faults_are_contained() {
    type Check = fn(&Fault) -> bool;
    let faulty: Vec<(u32, String, Check)> = vec![
        (
            2,
            agent("(unreachable)", ""),
            |f| matches!(f, Fault::Trap(t) if t == "UnreachableCodeReached"),
        ),
        (3, agent("(loop $l (br $l))", ""), |f| {
            *f == Fault::OutOfFuel
        }),
        (
            4,
            agent(
                "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))",
                "",
            ),
            |f| *f == Fault::MemoryLimit,
        ),
        (
            5,
            agent("(call $rec)", "(func $rec (call $rec))"),
            |f| matches!(f, Fault::Trap(t) if t == "StackOverflow"),
        ),
        (
            6,
            agent(
                "(drop (call $send (i64.const 1) (i32.const 0xFFFFFFF0) (i32.const 1000)))",
                "",
            ),
            |f| {
                matches!(f, Fault::BadHostCall(m)
                    if m.starts_with("send payload: range 4294967280+1000 is outside the memory of"))
            },
        ),
        (
            7,
            agent(
                "(drop (call $publish (i32.const 0) (i32.const -5) (i32.const 0) (i32.const 1)))",
                "",
            ),
            |f| matches!(f, Fault::BadHostCall(m) if m == "publish topic: negative length -5"),
        ),
        (
            8,
            agent(
                "(drop (i32.div_u (i32.const 1) (i32.load (i32.const 100))))",
                "",
            ),
            |f| matches!(f, Fault::Trap(t) if t == "IntegerDivisionByZero"),
        ),
        (
            9,
            agent("(drop (i32.load (i32.const 70000)))", ""),
            |f| matches!(f, Fault::Trap(t) if t == "MemoryOutOfBounds"),
        ),
        (10, agent("(return (i32.const 42))", ""), |f| {
            *f == Fault::AgentError(42)
        }),
    ];
    let good = good();
    let mut mods: Vec<(u32, &str)> = vec![(1, &good)];
    mods.extend(faulty.iter().map(|(id, m, _)| (*id, m.as_str())));
    let mut w = worker_with(&mods);
    let mut clean = worker_with(&[(1, &good)]);
    let mut agents = vec![(1, 1), (100, 1)];
    agents.extend(faulty.iter().map(|(id, _, _)| (u64::from(*id), *id)));
    let lim = AgentLimits {
        memory_bytes: 1 << 20,
        fuel_per_call: 100_000,
        ..AgentLimits::default()
    };
    w.tick(&spawn(&agents, lim));
    clean.tick(&spawn(&[(1, 1), (100, 1)], lim));
    for tick in 1..=5 {
        let d = w.tick(&step_all(tick));
        clean.tick(&step_all(tick));
        for (id, _, check) in &faulty {
            if tick == 1 {
                let f = fault_of(&d, u64::from(*id))
                    .unwrap_or_else(|| panic!("agent {id} did not fault"));
                assert!(check(&f), "agent {id}: unexpected fault {f:?}");
            } else {
                assert!(
                    fault_of(&d, u64::from(*id)).is_none(),
                    "faulted agents are not stepped again"
                );
            }
        }
        assert!(fault_of(&d, 1).is_none() && fault_of(&d, 100).is_none());
    }
    for id in [1, 100] {
        assert_eq!(
            w.state_hash_hex(id),
            clean.state_hash_hex(id),
            "agent {id} disturbed by faulty neighbours"
        );
    }
}

/// The same calls consume the same fuel in independent workers (engines).
#[test]
fn telemetry_covers_exactly_the_sampled_agents_and_changes_no_digest() {
    // Quiet agents (no outputs) report a result only when sampled.
    let quiet = agent("", "");
    let agents: Vec<(u64, u32)> = (1..=8).map(|id| (id, 1)).collect();
    let run = |sample: fn(u64) -> Sample| {
        let mut w = worker_with(&[(1, &quiet)]);
        w.tick(&spawn(&agents, limits()));
        (1..=8)
            .map(|t| {
                w.tick(&TickWork {
                    sample: sample(t),
                    ..step_all(t)
                })
            })
            .collect::<Vec<_>>()
    };
    let sliced = run(|t| Sample::slice(4, t));
    let unsampled = run(|_| Sample::None);
    for (t, (s, u)) in (1u64..).zip(sliced.iter().zip(&unsampled)) {
        let ids: Vec<u64> = s.results.iter().map(|r| r.agent_id).collect();
        let want: Vec<u64> = (1..=8).filter(|id| id % 4 == t % 4).collect();
        assert_eq!(ids, want, "tick {t}");
        for r in &s.results {
            assert!(
                r.wall_ns > 0,
                "tick {t}: agent {} has no wall time",
                r.agent_id
            );
            assert_eq!(r.memory_bytes, 65536, "tick {t}: agent {}", r.agent_id);
            assert!(r.outputs.is_empty() && r.fault.is_none());
        }
        assert!(
            u.results.is_empty(),
            "tick {t}: unsampled results {:?}",
            u.results
        );
        assert_eq!(
            (s.digest, s.agents_called, s.calls, &s.tenant_fuel),
            (u.digest, u.agents_called, u.calls, &u.tenant_fuel),
            "tick {t}"
        );
    }
}

#[test]
fn fuel_is_deterministic() {
    let m = agent(
        "(local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.wrap_i64 (i64.rem_u (call $random) (i64.const 1000))))))",
        "",
    );
    // `local` must be declared at the top: build a variant with a local.
    let m = m
        .replace(
            "(func (export \"agent_step\") (param $ctx i32) (result i32)",
            "(func (export \"agent_step\") (param $ctx i32) (result i32) (local $i i32)",
        )
        .replace("(local $i i32) (loop", "(loop");
    let run = || {
        let mut w = worker_with(&[(1, &m)]);
        let mut fuel = Vec::new();
        w.tick(&spawn(&[(1, 1), (2, 1)], limits()));
        for t in 1..=20 {
            let d = w.tick(&TickWork {
                tick: t,
                sample: Sample::All,
                step_all: true,
                ..TickWork::default()
            });
            fuel.push(
                d.results
                    .iter()
                    .map(|r| (r.agent_id, r.fuel))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(d.results.len(), 2);
        }
        fuel
    };
    let a = run();
    let b = run();
    assert_eq!(a, b);
    // Different agents draw different random streams, so fuel differs.
    assert!(a.iter().any(|t| t[0].1 != t[1].1));
}

/// Capture → restore into a fresh worker → continue behaves bit-identically
/// to never having stopped, including unexported globals.
#[test]
fn capture_restore_round_trip() {
    let m = good();
    let mut a = worker_with(&[(1, &m)]);
    let mut b = worker_with(&[(1, &m)]);
    a.tick(&spawn(&[(1, 1)], limits()));
    for t in 1..=5 {
        a.tick(&step_all(t));
    }
    let state = match a.handle(WorkerCommand::Capture { agents: vec![1] }) {
        WorkerReply::Captured(mut v) => v.remove(0).1,
        other => panic!("{other:?}"),
    };
    let reply = b.handle(WorkerCommand::RestoreState {
        agent_id: 1,
        module_id: 1,
        tenant: 0,
        limits: limits(),
        state,
    });
    assert_eq!(reply, WorkerReply::StateRestored { error: None });
    assert_eq!(a.state_hash_hex(1), b.state_hash_hex(1));
    for t in 6..=10 {
        let da = a.tick(&step_all(t));
        let db = b.tick(&step_all(t));
        assert_eq!(da.digest, db.digest, "tick {t}");
    }
    assert_eq!(a.state_hash_hex(1), b.state_hash_hex(1));
    let st = b.agent_mut(1).unwrap().capture();
    assert_eq!(st.globals[0], shm_protocol::worker::GlobalValue::I32(10));
    assert_eq!(&st.memory[..4], &10u32.to_le_bytes());
}

#[test]
fn restore_rejects_a_foreign_state() {
    let mut a = worker_with(&[(1, &good()), (2, &agent("(nop)", ""))]);
    a.tick(&spawn(&[(1, 1)], limits()));
    let WorkerReply::Captured(mut v) = a.handle(WorkerCommand::Capture { agents: vec![1] }) else {
        panic!()
    };
    let state = v.remove(0).1;
    let reply = a.handle(WorkerCommand::RestoreState {
        agent_id: 9,
        module_id: 2,
        tenant: 0,
        limits: limits(),
        state: state.clone(),
    });
    assert!(
        matches!(reply, WorkerReply::StateRestored { error: Some(ref e) } if e.contains("captured from module")),
        "{reply:?}"
    );
    let mut bad = state;
    bad.memory.truncate(100);
    let reply = a.handle(WorkerCommand::RestoreState {
        agent_id: 9,
        module_id: 1,
        tenant: 0,
        limits: limits(),
        state: bad,
    });
    assert!(
        matches!(reply, WorkerReply::StateRestored { error: Some(_) }),
        "{reply:?}"
    );
}

fn load_err(wat_or_bytes: &[u8]) -> LoadError {
    let w = Worker::new().unwrap();
    engine::load_module(&w.runtime().engine, "bad", wat_or_bytes, None, 1 << 20).unwrap_err()
}

#[test]
fn malformed_modules_are_refused_with_clear_errors() {
    let bin = wat::parse_str(good()).unwrap();
    let e = load_err(&bin[..bin.len() / 2]);
    assert!(matches!(e, LoadError::Invalid { .. }), "{e}");
    let e = load_err(good().replace("(export \"agent_step\")", "").as_bytes());
    assert_eq!(
        e,
        LoadError::MissingExport {
            module: "bad".into(),
            export: "agent_step".into()
        }
    );
    let e = load_err(
        good()
            .replace(
                "(func (export \"agent_init\") (result i32) (i32.const 0))",
                "(func (export \"agent_init\") (result i64) (i64.const 0))",
            )
            .as_bytes(),
    );
    assert!(
        matches!(e, LoadError::ExportSignature { ref export, .. } if export == "agent_init"),
        "{e}"
    );
    let e = load_err(
        good()
            .replace(
                "(memory (export \"memory\") 1)",
                "(memory (export \"memory\") 100)",
            )
            .as_bytes(),
    );
    assert!(
        matches!(
            e,
            LoadError::MemoryTooLarge {
                declared: 6553600,
                ..
            }
        ),
        "{e}"
    );
    let e = load_err(
        good()
            .replace(
                "(import \"lockstep\" \"log\"",
                "(import \"wasi_snapshot_preview1\" \"fd_write\"",
            )
            .as_bytes(),
    );
    assert!(
        e.to_string().contains("wasi_snapshot_preview1::fd_write"),
        "{e}"
    );
    let e = load_err(
        good()
            .replace(
                "(import \"lockstep\" \"random\" (func $random (result i64)))",
                "(import \"lockstep\" \"random\" (func $random (result i32)))",
            )
            .as_bytes(),
    );
    assert!(matches!(e, LoadError::ImportSignature { .. }), "{e}");
    let e = load_err(
        agent(
            "(nop)",
            "(table 1 funcref) (func $g (table.set (i32.const 0) (ref.null func)))",
        )
        .as_bytes(),
    );
    assert!(matches!(e, LoadError::Forbidden { .. }), "{e}");
    let e = load_err(
        good()
            .replace(
                "(memory (export \"memory\") 1)",
                "(memory (export \"memory\") 1 1 shared)",
            )
            .as_bytes(),
    );
    assert!(matches!(e, LoadError::Invalid { .. }), "{e}");
}

#[test]
fn wrong_abi_version_is_refused() {
    let mut w = Worker::new().unwrap();
    let v2 = good().replace("(i32.const 0x10000))", "(i32.const 0x20000))");
    let e = w
        .load_module(1, "v2", v2.as_bytes(), None, 1 << 20)
        .unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::AbiVersion {
                major: 2,
                minor: 0,
                ..
            }
        ),
        "{e}"
    );
}

/// The compile step's output loads into another worker, which then runs
/// the module exactly like one that compiled it itself; bytes that are not
/// a compiled module are refused, not run.
#[test]
fn compiled_modules_load_in_other_workers() {
    let mut compiler = Worker::new().unwrap();
    let (facts, compiled) = compiler.compile("g", good().as_bytes()).unwrap();
    assert_eq!(facts.abi_version, 0x10000);
    assert_eq!(facts.blake3, *blake3::hash(good().as_bytes()).as_bytes());
    let mut a = Worker::new().unwrap();
    let mut b = Worker::new().unwrap();
    a.load_module(1, "g", good().as_bytes(), Some(&compiled), 1 << 20)
        .unwrap();
    b.load_module(1, "g", good().as_bytes(), None, 1 << 20)
        .unwrap();
    a.tick(&spawn(&[(1, 1)], limits()));
    b.tick(&spawn(&[(1, 1)], limits()));
    for t in 1..=5 {
        assert_eq!(a.tick(&step_all(t)).digest, b.tick(&step_all(t)).digest);
    }
    assert_eq!(a.state_hash_hex(1), b.state_hash_hex(1));
    let e = a
        .load_module(
            2,
            "g",
            good().as_bytes(),
            Some(b"not a compiled module"),
            1 << 20,
        )
        .unwrap_err();
    assert!(matches!(e, LoadError::Invalid { .. }), "{e}");
}

#[test]
fn random_stream_depends_on_seed_agent_and_tick_only() {
    let m = agent("(i64.store (i32.const 8) (call $random))", "");
    let value = |seed: u64, id: u64, ticks: u64| {
        let mut w = worker_with(&[(1, &m)]);
        w.handle(WorkerCommand::Configure {
            seed,
            watchdog_ms: 1000,
        });
        w.tick(&spawn(&[(id, 1)], limits()));
        for t in 1..=ticks {
            w.tick(&step_all(t));
        }
        let s = w.agent_mut(id).unwrap().capture();
        u64::from_le_bytes(s.memory[8..16].try_into().unwrap())
    };
    assert_eq!(value(1, 1, 3), value(1, 1, 3));
    assert_ne!(value(1, 1, 3), value(2, 1, 3));
    assert_ne!(value(1, 1, 3), value(1, 2, 3));
    assert_ne!(value(1, 1, 3), value(1, 1, 4));
}

#[test]
fn logs_are_rate_limited() {
    let m = agent(
        "(local $i i32) (loop $l (drop (call $log (i32.const 2) (i32.const 64) (i32.const 4))) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 50))))",
        "",
    )
    .replace("(func (export \"agent_step\") (param $ctx i32) (result i32)", "(func (export \"agent_step\") (param $ctx i32) (result i32) (local $i i32)")
    .replace("(local $i i32) (loop", "(loop");
    let mut w = worker_with(&[(1, &m)]);
    w.tick(&spawn(&[(1, 1)], limits()));
    let d = w.tick(&step_all(1));
    let logs = d.results[0]
        .outputs
        .iter()
        .filter(|o| matches!(o, shm_protocol::worker::OutputRef::Log { .. }))
        .count();
    assert_eq!(logs, 16);
    assert_eq!(d.results[0].logs_suppressed, 34);
}

fn real_module(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/agents")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-agents.sh)", p.display()))
}

/// Capture → restore → continue is bit-identical for agents built with the
/// Rust SDK and with the C header (heap, statics and the unexported stack
/// pointer included), messages and outputs included.
#[test]
fn real_agents_capture_restore_round_trip() {
    for name in [
        "counter",
        "c_counter",
        "sensor",
        "aggregator",
        "tally",
        "coordinator",
    ] {
        let bytes = real_module(name);
        let load = |w: &mut Worker| {
            let m = engine::load_module(&w.runtime().engine, name, &bytes, None, 1 << 24).unwrap();
            assert!(
                !m.globals.is_empty(),
                "{name}: the stack pointer global must be captured"
            );
            w.insert_module(1, m);
        };
        let (mut a, mut b) = (Worker::new().unwrap(), Worker::new().unwrap());
        load(&mut a);
        load(&mut b);
        a.tick(&spawn(&[(1, 1)], limits()));
        let msg = |t: u64| WireMessage {
            kind: 1,
            sender: 9,
            sent_tick: t,
            seq: t,
            topic: "sensors".into(),
            payload: [t.to_le_bytes(), (t * 7 % 1000).to_le_bytes()]
                .concat()
                .into(),
        };
        let work = |t: u64| TickWork {
            tick: t,
            step_all: true,
            deliveries: vec![Delivery {
                agent_id: 1,
                messages: vec![msg(t)].into(),
            }],
            ..TickWork::default()
        };
        for t in 1..=12 {
            let d = a.tick(&work(t));
            assert!(
                d.results.iter().all(|r| r.fault.is_none()),
                "{name} tick {t}: {:?}",
                d.results
            );
        }
        let WorkerReply::Captured(mut v) = a.handle(WorkerCommand::Capture { agents: vec![1] })
        else {
            panic!()
        };
        let state = v.remove(0).1;
        let r = b.handle(WorkerCommand::RestoreState {
            agent_id: 1,
            module_id: 1,
            tenant: 0,
            limits: limits(),
            state,
        });
        assert_eq!(r, WorkerReply::StateRestored { error: None }, "{name}");
        for t in 13..=40 {
            let (da, db) = (a.tick(&work(t)), b.tick(&work(t)));
            assert_eq!(da.digest, db.digest, "{name} tick {t}");
            let untimed = |d: &TickDone| {
                d.results
                    .iter()
                    .map(|r| shm_protocol::worker::AgentResult {
                        wall_ns: 0,
                        ..r.clone()
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(untimed(&da), untimed(&db), "{name} tick {t}");
        }
        assert_eq!(a.state_hash_hex(1), b.state_hash_hex(1), "{name}");
    }
}

/// Images every agent of `w` with `imager`, returning the images (by
/// agent) and the hashes of the chunks shipped.
fn image_all(
    imager: &mut lockstep_worker::snapshot::Imager,
    w: &mut Worker,
    ids: &[u64],
    full: bool,
) -> (
    Vec<(u64, shm_protocol::worker::AgentImage)>,
    Vec<[u8; 32]>,
    lockstep_worker::snapshot::ImageStats,
) {
    let mut images = Vec::new();
    let mut shipped = Vec::new();
    let stats = imager
        .checkpoint(w, ids, full, |r| {
            match r {
                WorkerReply::Imaged {
                    agent_id,
                    image,
                    chunks,
                } => {
                    for c in &chunks {
                        assert_eq!(blake3::hash(&c.bytes).as_bytes(), &c.hash);
                    }
                    shipped.extend(chunks.iter().map(|c| c.hash));
                    images.push((agent_id, image));
                }
                WorkerReply::Checkpointed { missing } => assert!(missing.is_empty()),
                other => panic!("{other:?}"),
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    (images, shipped, stats)
}

#[test]
fn incremental_images_equal_full_images_and_hash_only_changed_chunks() {
    use lockstep_worker::snapshot::Imager;
    // Four pages; each step writes the tick into one page chosen by the
    // agent and the tick, and agent 3 grows its memory at tick 3.
    let m = agent(
        "(i32.store (i32.add (i32.const 16) (i32.mul (i32.rem_u (i32.add (i32.wrap_i64 (i64.load (local.get $ctx))) (i32.wrap_i64 (i64.load offset=8 (local.get $ctx)))) (i32.const 4)) (i32.const 65536)))
                    (i32.wrap_i64 (i64.load (local.get $ctx))))
         (if (i32.and (i32.eq (i32.wrap_i64 (i64.load offset=8 (local.get $ctx))) (i32.const 3))
                      (i32.eq (i32.wrap_i64 (i64.load (local.get $ctx))) (i32.const 3)))
           (then (drop (memory.grow (i32.const 1)))))",
        "",
    )
    .replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 4)");
    let mut w = worker_with(&[(1, &m)]);
    let ids = [1, 2, 3];
    let d = w.tick(&spawn(&[(1, 1), (2, 1), (3, 1)], limits()));
    assert!(d.results.iter().all(|r| r.fault.is_none()), "{d:?}");
    let mut inc = Imager::default();
    let mut have: std::collections::BTreeSet<[u8; 32]> = Default::default();
    let zero = shm_protocol::worker::zero_chunk_hash();
    for t in 1..=8 {
        let d = w.tick(&step_all(t));
        assert!(
            d.results.iter().all(|r| r.fault.is_none()),
            "tick {t}: {d:?}"
        );
        let (images, shipped, stats) = image_all(&mut inc, &mut w, &ids, false);
        let (full, _, full_stats) = image_all(&mut Imager::default(), &mut w, &ids, true);
        assert_eq!(images, full, "tick {t}: incremental and full images differ");
        have.extend(shipped);
        for (id, img) in &images {
            for h in img.chunks.iter().filter(|h| *h != zero) {
                let h = &h;
                assert!(
                    have.contains(h),
                    "tick {t}: agent {id}'s chunk was never shipped"
                );
            }
        }
        // 64-page memories: every chunk is read; after the first checkpoint
        // only the chunks the steps wrote (at most two per agent: the
        // counter's and the page the step chose) are hashed again.
        assert_eq!(stats.chunks, full_stats.chunks);
        if t > 1 {
            assert!(stats.hashed <= 6, "tick {t}: {stats:?}");
        }
    }
}

#[test]
fn the_host_buffer_is_clean_between_calls() {
    // An agent that writes nothing keeps the same memory from tick to tick,
    // although the host places a context in its buffer every step.
    let quiet = agent("", "").replace(
        "(i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))",
        "",
    );
    let mut w = worker_with(&[(1, &quiet)]);
    w.tick(&spawn(&[(1, 1)], limits()));
    w.tick(&step_all(1));
    let before = w.agent_mut(1).unwrap().capture().memory;
    for t in 2..=4 {
        w.tick(&step_all(t));
    }
    let after = w.agent_mut(1).unwrap().capture().memory;
    assert!(before == after, "the memory changed between ticks");
    assert!(after[4096..4096 + 64].iter().all(|&b| b == 0));
    let mut imager = lockstep_worker::snapshot::Imager::default();
    let (_, first, _) = image_all(&mut imager, &mut w, &[1], false);
    w.tick(&step_all(5));
    let (_, second, stats) = image_all(&mut imager, &mut w, &[1], false);
    assert!(
        !first.is_empty(),
        "the data segment's chunk is shipped once"
    );
    assert!(
        second.is_empty(),
        "an unchanged agent ships nothing: {stats:?}"
    );
    assert_eq!(stats.hashed, 0);
}
