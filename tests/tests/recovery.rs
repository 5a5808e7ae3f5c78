//! Snapshots, replay, verify, fork, resume and crash recovery, with real
//! processes.

use lockstep_supervisor::journal::{self, Entry};

use lockstep_supervisor::replay::{self, Verdict};
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::Event;
use lockstep_tests::{TempDir, Watchdog, agent, config, journal_diff, root, run_to, society};
use shm_protocol::worker::Fault;
use std::path::Path;
use std::time::{Duration, Instant};

fn faults(dir: &Path) -> Vec<(u64, Event)> {
    journal::read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Event { tick, event } => Some((tick, event)),
            _ => None,
        })
        .collect()
}

/// Chaos: every fault class, mixed, over 2,000 ticks of ≥ 100 agents (the
/// society, agents asking the MLP, a memory bomb that keeps hitting its
/// limit): SIGKILLs of workers and of the inference host, stopped (hung)
/// children, a SIGSTOP/SIGCONT pause, a rogue worker corrupting its ring, a
/// corrupted supervisor → worker ring, a worker running out of memory,
/// watchdog trips of agents spawned at run time, and control commands that
/// are refused.  Faults are placed by tick.  The journal (every tick hash
/// and inference answer's hash included) is byte-identical to the
/// undisturbed run's, and so is the final hash.
#[test]
fn chaos_of_every_fault_class_is_invisible() {
    use lockstep_supervisor::sim::{Input, InputOutcome};
    use nix::sys::signal::Signal::{SIGCONT, SIGKILL, SIGSTOP};
    let _w = Watchdog::new("chaos", Duration::from_secs(1200));
    let tmp = TempDir::new("chaos");
    let manifest = society(tmp.path(), 8, 250);
    let mlp = root().join(".deps/models/mlp.onnx");
    assert!(
        mlp.is_file(),
        "{} missing: run scripts/gen-models.sh",
        mlp.display()
    );
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!(
        "[[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 4\n\n\
         [[agents]]\nname = \"bomb\"\nmodule = \"{}\"\nmemory = \"4MiB\"\nrestart = {{ max = 1000, within = 10 }}\n\n\
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        agent("inferrer"),
        agent("membomb"),
        mlp.display()
    ));
    std::fs::write(&manifest, text).unwrap();
    const TICKS: u64 = 2000;
    let spin = agent("spin");
    // Valid inputs, the same in both runs: spinning agents (huge fuel, no
    // restart) that the wall-clock watchdog stops.
    let inputs = |run: &mut Run, next: u64| {
        if next == 250 || next == 1250 {
            let out = run
                .input(Input::Spawn {
                    name: format!("spin-{next}"),
                    module: spin.clone(),
                    tenant: "default".into(),
                    priority: 0,
                    memory: 1 << 20,
                    fuel: 1 << 40,
                    blake3: None,
                })
                .unwrap();
            assert!(matches!(out, InputOutcome::Applied(_)), "{out:?}");
        }
    };
    let cfg = |name: &str| {
        let mut c = config(&manifest, tmp.path().join(name), 2);
        c.watchdog = Duration::from_millis(200);
        c
    };
    let clean_dir = tmp.path().join("clean");
    let mut run = Run::start(cfg("clean")).unwrap();
    while run.state().tick < TICKS {
        let next = run.state().tick + 1;
        inputs(&mut run, next);
        run.tick().unwrap();
    }
    let clean_hash = run.finish().unwrap().hash;
    let clean_journal = std::fs::read(clean_dir.join("journal.lsj")).unwrap();
    let trips = journal::read_journal(&clean_dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Decision { .. }))
        .count();
    assert!(trips >= 2, "{trips} watchdog trips");

    let chaos_dir = tmp.path().join("chaos");
    let mut c = cfg("chaos");
    // The first workers carry one-shot faults of their own: worker-0 turns
    // rogue at tick 80 (agent 1 lives there), worker-1 runs out of memory
    // at tick 700 (agent 2 lives there).
    c.first_worker_env.push((
        "LOCKSTEP_INJECT".into(),
        "corrupt=1@80:random-data,oom=2@700".into(),
    ));
    let mut run = Run::start(c).unwrap();
    assert!(run.state().agents.len() >= 100);
    let sig = |pid: u32, s: nix::sys::signal::Signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s).unwrap();
    };
    while run.state().tick < TICKS {
        let next = run.state().tick + 1;
        inputs(&mut run, next);
        match next {
            // SIGKILLs between ticks, on and off checkpoint ticks.
            100 | 250 | 1501 => sig(run.worker_pids()[(next % 2) as usize], SIGKILL),
            500 | 1600 => sig(run.inference_host_pid().unwrap(), SIGKILL),
            // Hung children: stopped and never continued.
            900 => sig(run.worker_pids()[1], SIGSTOP),
            1800 => sig(run.inference_host_pid().unwrap(), SIGSTOP),
            // A pause the run must ride out.
            1100 => {
                let pids = run.worker_pids();
                pids.iter().for_each(|p| sig(*p, SIGSTOP));
                std::thread::sleep(Duration::from_millis(200));
                pids.iter().for_each(|p| sig(*p, SIGCONT));
            }
            // Garbage on the supervisor's ring to worker-0.
            1300 => {
                let pid = run.worker_pids()[0];
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/{pid}/fd/3"))
                    .unwrap();
                let seg = shm_protocol::segment::Segment::attach(f, "worker-0").unwrap();
                let target = shm_protocol::rogue::Target::of(&seg);
                shm_protocol::rogue::attack(
                    &target,
                    shm_protocol::rogue::Ring::Down,
                    shm_protocol::rogue::Attack::HugeFrameLength,
                );
                let t0 = Instant::now();
                while Path::new(&format!("/proc/{pid}/fd/3")).exists() {
                    assert!(t0.elapsed() < Duration::from_secs(30));
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Control commands that cannot succeed: refused, never journaled.
            600 | 1400 => {
                for bad in [
                    Input::Spawn {
                        name: "zero".into(),
                        module: spin.clone(),
                        tenant: "default".into(),
                        priority: 0,
                        memory: 0,
                        fuel: 1,
                        blake3: None,
                    },
                    Input::Publish {
                        topic: String::new(),
                        payload: Vec::new().into(),
                    },
                ] {
                    let out = run.input(bad).unwrap();
                    assert!(matches!(out, InputOutcome::Refused(_)), "{out:?}");
                }
            }
            _ => {}
        }
        run.tick().unwrap();
    }
    let recoveries = run.recoveries();
    let host_restarts = run.inference_restarts();
    let sum = run.finish().unwrap();
    eprintln!("chaos: {recoveries} worker recoveries, {host_restarts} inference host restarts");
    assert!(recoveries >= 7, "{recoveries} worker recoveries");
    assert!(host_restarts >= 3, "{host_restarts} host restarts");
    let answers = journal::read_journal(&chaos_dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .map(|e| match e {
            Entry::Inference { answers, .. } => answers.len(),
            _ => 0,
        })
        .sum::<usize>();
    assert!(answers > 1000, "only {answers} inference answers journaled");
    assert_eq!(
        journal_diff(
            &clean_dir.join("journal.lsj"),
            &chaos_dir.join("journal.lsj")
        ),
        None
    );
    assert!(
        std::fs::read(chaos_dir.join("journal.lsj")).unwrap() == clean_journal,
        "journal bytes differ"
    );
    assert_eq!(sum.hash, clean_hash);
}

/// Replaying from every checkpoint reproduces every recorded hash; `verify`
/// says identical; `verify` with a deliberately injected divergence points
/// at the right tick and agent.
#[test]
fn replay_every_checkpoint_and_verify_finds_divergence() {
    let _w = Watchdog::new("verify", Duration::from_secs(900));
    let tmp = TempDir::new("verify");
    // An agent whose output is the byte at 0x100 of its memory: flipping it
    // shows in the very next step.
    let wat = tmp.path().join("echo-mem.wat");
    std::fs::write(
        &wat,
        r#"(module
  (import "lockstep" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 4096))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 0x100) (i32.const 1))) (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let m = format!(
        "[run]\nseed = 5\nworkers = 2\ncheckpoint_every = 50\n\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 10\n\n[[agents]]\nname = \"probe\"\nmodule = \"{}\"\ncount = 3\n",
        agent("counter"),
        wat.display()
    );
    let manifest = tmp.path().join("m.toml");
    std::fs::write(&manifest, m).unwrap();
    let dir = tmp.path().join("run");
    let (hash, _) = run_to(config(&manifest, dir.clone(), 2), 230);
    let rec = replay::Recorded::open(&dir).unwrap();
    assert_eq!(
        rec.checkpoints.keys().copied().collect::<Vec<_>>(),
        vec![0, 50, 100, 150, 200, 230]
    );
    for &c in rec.checkpoints.keys() {
        let r = replay::replay(
            &dir,
            Some(replay::From::Tick(c)),
            None,
            Some(1 + (c as usize / 50) % 3),
        )
        .unwrap();
        assert_eq!(
            (r.from, r.until, r.hash.clone()),
            (c, 230, hash.clone()),
            "replay from checkpoint {c}"
        );
    }
    match replay::verify(&dir, None).unwrap() {
        Verdict::Identical {
            ticks, checkpoints, ..
        } => assert_eq!((ticks, checkpoints), (230, 6)),
        Verdict::Diverged(d) => panic!("unexpected divergence: {d}"),
    }
    // Agent 12 ("probe-1") gets one byte of memory flipped at tick 137 in
    // the re-execution only.
    let verdict = replay::verify_with_env(
        &dir,
        None,
        &[("LOCKSTEP_INJECT".into(), "flip=12@137".into())],
    )
    .unwrap();
    let Verdict::Diverged(d) = verdict else {
        panic!("the injected divergence was not found")
    };
    eprintln!("{d}");
    assert_eq!(d.first_tick, Some(137));
    assert_eq!(d.compared_at, 150);
    assert_eq!(
        d.agents.iter().map(|a| a.agent).collect::<Vec<_>>(),
        vec![12]
    );
    assert_eq!(d.agents[0].memory, vec![(0, 4096)]);
}

/// An agent that kills its worker at the same tick every time is found by
/// bisection and quarantined; the run goes on, deterministically.
#[test]
fn poison_agent_is_isolated_and_quarantined() {
    let _w = Watchdog::new("poison", Duration::from_secs(900));
    let tmp = TempDir::new("poison");
    let manifest = society(tmp.path(), 2, 40);
    let culprit = 37u64;
    let run_with_poison = |name: &str| {
        let dir = tmp.path().join(name);
        let mut cfg = config(&manifest, dir.clone(), 2);
        cfg.worker_env
            .push(("LOCKSTEP_INJECT".into(), format!("crash={culprit}@73")));
        let (hash, journal) = run_to(cfg, 120);
        (dir, hash, journal)
    };
    let (dir, hash, journal) = run_with_poison("a");
    let events = faults(&dir);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0], (73, Event::Fault { agent, fault: Fault::CrashedWorker, .. }) if *agent == culprit),
        "{events:?}"
    );
    let (_, hash2, journal2) = run_with_poison("b");
    assert_eq!(hash, hash2);
    assert!(
        journal == journal2,
        "quarantine must be deterministic: {:?}",
        journal_diff(
            &tmp.path().join("a/journal.lsj"),
            &tmp.path().join("b/journal.lsj")
        )
    );
}

/// A corrupted latest snapshot is skipped by `resume` (which falls back to
/// the previous checkpoint) and refused by `replay --from` with a clear
/// error.
#[test]
fn corrupted_snapshots_are_refused_or_skipped() {
    let _w = Watchdog::new("corrupt", Duration::from_secs(600));
    let tmp = TempDir::new("corrupt");
    let manifest = society(tmp.path(), 1, 30);
    let dir = tmp.path().join("run");
    let mut run = Run::start(config(&manifest, dir.clone(), 2)).unwrap();
    while run.state().tick < 75 {
        run.tick().unwrap();
    }
    let want = run.state().hash;
    run.finish_without_end().unwrap();
    let snap = dir.join("snapshots/tick-000000000060.lss");
    let mut b = std::fs::read(&snap).unwrap();
    let n = b.len() / 2;
    b[n] ^= 0x40;
    std::fs::write(&snap, &b).unwrap();
    let err =
        replay::replay(&dir, Some(replay::From::Snapshot(snap.clone())), None, None).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    std::fs::write(&snap, &b[..100]).unwrap();
    let err = replay::replay(&dir, Some(replay::From::Snapshot(snap)), None, None).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // Resume skips the damaged checkpoint, restores tick 30 and re-executes.
    let (mut run, _) = replay::resume(&dir, Some(1)).unwrap();
    assert_eq!(run.state().tick, 75);
    assert_eq!(run.state().hash, want);
    run.tick().unwrap();
    run.finish().unwrap();
}
