//! Snapshots, replay, verify, fork, resume and crash recovery, with real
//! processes.

use lockstep_supervisor::journal::{self, Entry};

use lockstep_supervisor::replay::{self, Verdict};
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::Event;
use lockstep_tests::{
    ChildGuard, TempDir, Watchdog, agent, bin, config, journal_diff, root, run_to, society,
};
use shm_protocol::worker::Fault;
use std::path::Path;
use std::process::Command;
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

/// Chaos: a seeded schedule of SIGKILLs to the workers and to the inference
/// host during a 2,000-tick run of ≥ 100 agents (the society plus agents
/// that ask the MLP for an inference every few ticks): the journal (every
/// tick hash and every inference answer's hash included) and the final hash
/// equal the crash-free run's, and the tally agents saw every message
/// exactly once (a gap or duplicate would be an agent fault in the journal).
#[test]
fn chaos_worker_and_host_kills_are_invisible() {
    let _w = Watchdog::new("chaos", Duration::from_secs(900));
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
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        agent("inferrer"),
        mlp.display()
    ));
    std::fs::write(&manifest, text).unwrap();
    const TICKS: u64 = 2000;
    let (clean_hash, clean_journal) = run_to(config(&manifest, tmp.path().join("clean"), 2), TICKS);
    assert!(faults(&tmp.path().join("clean")).is_empty());

    let chaos_dir = tmp.path().join("chaos");
    let mut run = Run::start(config(&manifest, chaos_dir.clone(), 2)).unwrap();
    assert!(run.state().agents.len() >= 100);
    // Seeded schedule: kill a worker at these ticks (between checkpoints,
    // on checkpoint ticks, twice in a row...).
    let mut x = 0x5eed_u64;
    let mut schedule: Vec<(u64, usize)> = (0..8)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (1 + (x >> 33) % (TICKS - 1), ((x >> 20) % 2) as usize)
        })
        .collect();
    schedule.extend([(250, 0), (251, 1), (252, 1)]);
    schedule.sort_unstable();
    // The inference host (`usize::MAX` below): seeded too, plus one on a
    // checkpoint tick and one in the same tick as a worker.
    let mut host_kills: Vec<u64> = (0..4)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1 + (x >> 33) % (TICKS - 1)
        })
        .collect();
    host_kills.extend([500, schedule[3].0]);
    schedule.extend(host_kills.iter().map(|&t| (t, usize::MAX)));
    schedule.sort_unstable();
    let mut host_killed = 0;
    let mut kills = 0;
    let mut recovery_ms = Vec::new();
    while run.state().tick < TICKS {
        let next = run.state().tick + 1;
        for (_, w) in schedule.iter().filter(|(t, _)| *t == next) {
            let pid = if *w == usize::MAX {
                host_killed += 1;
                run.inference_host_pid().expect("the inference host runs")
            } else {
                run.worker_pids()[*w]
            };
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            kills += 1;
        }
        run.tick().unwrap();
        if schedule.iter().any(|(t, _)| *t == next) {
            recovery_ms.push(run.last_recovery().map_or(0, |d| d.as_millis()));
        }
    }
    let sum = run.finish().unwrap();
    eprintln!(
        "chaos: {kills} SIGKILLs ({host_killed} of the inference host); recoveries took {recovery_ms:?} ms"
    );
    assert!(
        kills >= 16 && host_killed >= 6,
        "{kills} kills, {host_killed} of the host"
    );
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
    let _ = clean_journal;
    assert_eq!(
        journal_diff(
            &tmp.path().join("clean/journal.lsj"),
            &chaos_dir.join("journal.lsj")
        ),
        None
    );
    assert_eq!(sum.hash, clean_hash);
}

/// SIGKILL the supervisor at random ticks, `lockstep resume` each time: the
/// final hash and the journal equal an uninterrupted run's.
#[test]
fn supervisor_kill_and_resume() {
    let _w = Watchdog::new("resume", Duration::from_secs(900));
    let tmp = TempDir::new("resume");
    let manifest = society(tmp.path(), 4, 100);
    const TICKS: u64 = 600;
    let (clean_hash, clean_journal) = run_to(config(&manifest, tmp.path().join("clean"), 2), TICKS);
    let dir = tmp.path().join("killed");
    let lockstep = bin("lockstep");
    let mut child = ChildGuard::new(
        Command::new(&lockstep)
            .args([
                "run",
                manifest.to_str().unwrap(),
                "--ticks",
                &TICKS.to_string(),
                "--no-board",
                "--no-metrics",
                "--run-dir",
            ])
            .arg(&dir)
            .env("LOCKSTEP_WORKER_BIN", bin("lockstep-worker"))
            .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut x = 77u64;
    let mut kills = 0;
    // Kill whenever the journal shows the run got past a random tick, then
    // resume (as a new process) and repeat.
    loop {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let target = 20 + (x >> 33) % (TICKS - 40);
        let t0 = Instant::now();
        let mut done = false;
        loop {
            if let Ok(Some(status)) = child.child().try_wait() {
                assert!(status.success(), "run failed: {status:?}");
                done = true;
                break;
            }
            let reached = journal::read_journal(&dir.join("journal.lsj"))
                .map(|j| {
                    j.entries
                        .iter()
                        .filter_map(|e| {
                            if let Entry::Tick { tick, .. } = e {
                                Some(*tick)
                            } else {
                                None
                            }
                        })
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            if reached >= target {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "run stalled at tick {reached}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if done || kills >= 3 {
            break;
        }
        child.child().kill().unwrap();
        child.child().wait().unwrap();
        kills += 1;
        eprintln!("killed the supervisor past tick {target}");
        child = ChildGuard::new(
            Command::new(&lockstep)
                .args(["resume"])
                .arg(&dir)
                .env("LOCKSTEP_WORKER_BIN", bin("lockstep-worker"))
                .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let status = child.child().wait().unwrap();
    assert!(status.success());
    assert!(kills >= 1);
    let rec = replay::Recorded::open(&dir).unwrap();
    assert!(rec.ended);
    assert_eq!(rec.last_tick, TICKS);
    let end_hash = journal::read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .find_map(|e| {
            if let Entry::End { hash, .. } = e {
                Some(hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
            } else {
                None
            }
        })
        .unwrap();
    let _ = clean_journal;
    assert_eq!(
        journal_diff(
            &tmp.path().join("clean/journal.lsj"),
            &dir.join("journal.lsj")
        ),
        None
    );
    assert_eq!(end_hash, clean_hash);
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
        Verdict::Identical { ticks, checkpoints } => assert_eq!((ticks, checkpoints), (230, 6)),
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
