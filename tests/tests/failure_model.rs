//! The failure model, fault class by fault class, on the real binaries:
//! every way a child can fail ends as a recovered failure of that child (or,
//! where the run's inputs make it fail, as a journaled decision), and the
//! run's journal stays byte-identical to an undisturbed run's.  Faults are
//! injected at chosen ticks (between ticks through the library API, or by
//! tick-numbered directives inside the processes), never by timing.

use lockstep_supervisor::ctl::{self, CtlCommand};
use lockstep_supervisor::journal::{self, Entry};
use lockstep_supervisor::replay::{self, Verdict};
use lockstep_supervisor::run::{Run, RunError};
use lockstep_supervisor::sim::{Decision, InputOutcome};
use lockstep_tests::{
    ChildGuard, TempDir, Watchdog, agent, bin, config, idle_wat, journal_diff, root, run_to,
    society,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shm_protocol::rogue::{self, Attack, Ring};
use shm_protocol::segment::Segment;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap();
}

fn decisions(dir: &Path) -> Vec<(u64, Decision)> {
    journal::read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .into_iter()
        .filter_map(|e| match e {
            Entry::Decision { tick, decision } => Some((tick, decision)),
            _ => None,
        })
        .collect()
}

/// A small society with agents that ask the MLP every few ticks (so the
/// inference host has work).
fn with_inference(dir: &Path, checkpoint_every: u64) -> PathBuf {
    let manifest = society(dir, 2, checkpoint_every);
    let mlp = root().join(".deps/models/mlp.onnx");
    assert!(
        mlp.is_file(),
        "{} missing: run scripts/gen-models.sh",
        mlp.display()
    );
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!(
        "[[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 2\n\n\
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        agent("inferrer"),
        mlp.display()
    ));
    std::fs::write(&manifest, text).unwrap();
    manifest
}

/// Runs `cfg` to `ticks`, calling `at(run, next)` before each tick.
fn run_with(
    cfg: lockstep_supervisor::run::RunConfig,
    ticks: u64,
    mut at: impl FnMut(&mut Run, u64),
) -> (Run, String) {
    let mut run = Run::start(cfg).unwrap();
    while run.state().tick < ticks {
        let next = run.state().tick + 1;
        at(&mut run, next);
        run.tick().unwrap();
    }
    let hash = hex(&run.state().hash);
    (run, hash)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The segment of a running child, attached as a third party.
fn segment_of(pid: u32) -> Segment {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/3"))
        .unwrap_or_else(|e| panic!("open /proc/{pid}/fd/3: {e}"));
    Segment::attach(f, format!("child {pid}")).unwrap()
}

/// Every attack on every ring of a worker and of the inference host, one
/// run each, chosen by tick: on a child's ring to the supervisor the child
/// itself is the rogue (fault injection makes it corrupt its own ring
/// instead of answering), on the supervisor's ring to a child a third party
/// writes while the supervisor waits between two ticks.  The corrupt ring
/// ends that child (the supervisor reads garbage from it, or it reads
/// garbage and exits with its protocol code), the child is replaced, and
/// the journal equals the undisturbed run's, byte for byte.
#[test]
fn corrupt_rings_of_every_child_are_recovered() {
    let _w = Watchdog::new("corrupt_rings", Duration::from_secs(900));
    let tmp = TempDir::new("rogue");
    let manifest = with_inference(tmp.path(), 10);
    const TICKS: u64 = 40;
    const AT: u64 = 16;
    let (clean_hash, _) = run_to(config(&manifest, tmp.path().join("clean"), 2), TICKS);
    let clean = tmp.path().join("clean/journal.lsj");
    // A batch the inference host answers after tick AT (batch ids count
    // from 1, one per model per tick with requests).
    let batch_after = journal::read_journal(&clean)
        .unwrap()
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Inference { tick, .. } if *tick <= AT))
        .count()
        + 1;
    let mut n = 0;
    for host in [false, true] {
        for ring in [Ring::Up, Ring::Down] {
            for attack in Attack::ALL {
                n += 1;
                let dir = tmp.path().join(format!("attack-{n}"));
                let mut cfg = config(&manifest, dir.clone(), 2);
                let directive = match (host, ring) {
                    // Agent 2 lives on worker-1.
                    (false, Ring::Up) => Some(format!("corrupt=2@{AT}:{}", attack.name())),
                    (true, Ring::Up) => Some(format!("corrupt={batch_after}:{}", attack.name())),
                    _ => None,
                };
                if let Some(d) = directive {
                    if host {
                        cfg.inference.env.push(("LOCKSTEP_INJECT".into(), d));
                    } else {
                        cfg.first_worker_env.push(("LOCKSTEP_INJECT".into(), d));
                    }
                }
                let (run, hash) = run_with(cfg, TICKS, |run, next| {
                    if ring == Ring::Down && next == AT {
                        let pid = if host {
                            run.inference_host_pid().expect("the inference host runs")
                        } else {
                            run.worker_pids()[1]
                        };
                        let target = rogue::Target::of(&segment_of(pid));
                        rogue::attack(&target, ring, attack);
                        if attack.must_be_noticed() {
                            // The child reads its ring while it waits for a
                            // command: wait until it has read the garbage
                            // (and answered it, or exited) before the
                            // supervisor writes again.
                            let t0 = Instant::now();
                            let gone = || !Path::new(&format!("/proc/{pid}/fd/3")).exists();
                            while !(gone() || rogue::drained(&target, ring)) {
                                assert!(
                                    t0.elapsed() < Duration::from_secs(30),
                                    "child {pid} never read {attack:?}"
                                );
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                });
                let recovered = run.recoveries() + run.inference_restarts();
                run.finish().unwrap();
                let what = format!(
                    "{} {ring:?} ring, {attack:?}",
                    if host { "inference host" } else { "worker-1" }
                );
                eprintln!("{what}: {recovered} recoveries");
                assert_eq!(
                    journal_diff(&clean, &dir.join("journal.lsj")),
                    None,
                    "{what}"
                );
                assert_eq!(
                    std::fs::read(&clean).unwrap(),
                    std::fs::read(dir.join("journal.lsj")).unwrap(),
                    "{what}: journal bytes"
                );
                assert_eq!(hash, clean_hash, "{what}");
                if attack.must_be_noticed() {
                    assert!(recovered > 0, "{what}: the corruption went unnoticed");
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// Control commands that cannot succeed are refused with the reason, before
/// being journaled; the run goes on, and `resume` after a crash replays
/// what was accepted without failing.
#[test]
fn invalid_control_commands_are_refused_before_the_journal() {
    let _w = Watchdog::new("invalid_ctl", Duration::from_secs(300));
    let tmp = TempDir::new("badctl");
    let manifest = society(tmp.path(), 1, 20);
    // Keep every checkpoint: `--forever` retention would otherwise compact
    // the accepted input out of the journal before a slow machine reads it.
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "[run]\n",
        "[run]\nretain_checkpoints = 1000000\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let not_wasm = tmp.path().join("garbage.wasm");
    std::fs::write(&not_wasm, b"this is not WebAssembly").unwrap();
    let big_memory = tmp.path().join("big.wat");
    std::fs::write(&big_memory, idle_wat(64, 0x10000)).unwrap();
    let dir = tmp.path().join("run");
    let mut child = ChildGuard::new(
        Command::new(bin("lockstep"))
            .args(["run", manifest.to_str().unwrap(), "--forever", "--no-board"])
            .arg("--run-dir")
            .arg(&dir)
            .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let spawn = |name: &str, module: &Path, memory: u64, fuel: u64, tenant: &str| {
        ctl::request(
            &dir,
            &CtlCommand::Spawn {
                name: name.into(),
                module: module.display().to_string(),
                tenant: tenant.into(),
                priority: 0,
                memory,
                fuel,
                blake3: None,
            },
        )
        .unwrap()
    };
    let counter = PathBuf::from(agent("counter"));
    let cases = [
        (spawn("m0", &counter, 0, 1000, "default"), "memory"),
        (spawn("f0", &counter, 1 << 20, 0, "default"), "fuel"),
        (spawn("bad", &not_wasm, 1 << 20, 1000, "default"), "invalid"),
        (
            spawn(
                "gone",
                &tmp.path().join("nope.wasm"),
                1 << 20,
                1000,
                "default",
            ),
            "nope.wasm",
        ),
        (
            spawn("big", &big_memory, 1 << 20, 1000, "default"),
            "memory starts at",
        ),
        (
            spawn("t", &counter, 1 << 20, 1000, "nobody"),
            "unknown tenant",
        ),
        (spawn("#3", &counter, 1 << 20, 1000, "default"), "name"),
        (
            ctl::request(
                &dir,
                &CtlCommand::Publish {
                    topic: String::new(),
                    payload: "x".into(),
                },
            )
            .unwrap(),
            "topic",
        ),
    ];
    for (answer, why) in &cases {
        assert!(
            answer.starts_with("refused:") && answer.contains(why),
            "expected a refusal naming `{why}`: {answer}"
        );
    }
    let ok = spawn("late", &counter, 1 << 20, 1_000_000, "default");
    assert!(ok.starts_with("applied"), "{ok}");
    // Nothing refused reached the journal; the accepted spawn does once
    // its tick is written (the run keeps ticking).
    let journaled = || -> Vec<String> {
        journal::read_journal(&dir.join("journal.lsj"))
            .unwrap()
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Input { input, .. } => Some(format!("{input:?}")),
                _ => None,
            })
            .collect()
    };
    let t0 = Instant::now();
    let mut inputs = journaled();
    while inputs.is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
        inputs = journaled();
    }
    assert_eq!(inputs.len(), 1, "{inputs:#?}");
    assert!(inputs[0].contains("late"));
    // A crash, then resume: the accepted spawn replays, the run goes on.
    child.child().kill().unwrap();
    child.child().wait().unwrap();
    let out = Command::new(bin("lockstep"))
        .args(["resume"])
        .arg(&dir)
        .args(["--ticks", "30"])
        .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = replay::verify(&dir, None).unwrap();
    assert!(matches!(v, Verdict::Identical { .. }), "{v:?}");
}

/// A manifest in `dir`: a spinning agent with a huge fuel budget (which
/// only the watchdog stops; restarted at most twice) and 3 counters, on 2
/// workers.
fn spin_manifest(dir: &Path, checkpoint_every: u64) -> PathBuf {
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nworkers = 2\ncheckpoint_every = {checkpoint_every}\n\n\
             [[agents]]\nname = \"spin\"\nmodule = \"{}\"\nfuel = 1000000000000\nrestart = {{ max = 2, within = 100 }}\n\n\
             [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 3\n",
            agent("spin"),
            agent("counter")
        ),
    )
    .unwrap();
    manifest
}

/// A run of [`spin_manifest`] in `dir` with a 200 ms watchdog.
fn spin_config(manifest: &Path, dir: &Path) -> lockstep_supervisor::config::RunConfig {
    let mut cfg = config(manifest, dir.to_path_buf(), 2);
    cfg.watchdog = Duration::from_millis(200);
    cfg
}

/// A spinning agent with a huge fuel budget is stopped by the wall-clock
/// watchdog: the trips are journaled decisions, two runs journal the same
/// bytes, and `verify` (which preempts the journaled trips instead of
/// waiting for the watchdog) says identical.
#[test]
fn watchdog_trips_are_journaled_and_verify() {
    let _w = Watchdog::new("watchdog", Duration::from_secs(300));
    let tmp = TempDir::new("watchdog");
    let manifest = spin_manifest(tmp.path(), 5);
    let run = |name: &str| run_to(spin_config(&manifest, &tmp.path().join(name)), 12);
    let (a, ja) = run("a");
    let (b, jb) = run("b");
    let trips: Vec<(u64, Decision)> = decisions(&tmp.path().join("a"));
    assert_eq!(
        trips,
        vec![
            (1, Decision::Watchdog { agent: 1 }),
            (2, Decision::Watchdog { agent: 1 }),
            (3, Decision::Watchdog { agent: 1 })
        ]
    );
    assert_eq!((a, ja.len()), (b.clone(), jb.len()));
    assert_eq!(ja, jb, "journals differ");
    let t0 = Instant::now();
    let v = replay::verify(&tmp.path().join("a"), Some(1)).unwrap();
    assert!(matches!(v, Verdict::Identical { .. }), "{v:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "verify waited for watchdogs"
    );
}

/// Workers killed after watchdog trips are recovered by re-executing the
/// work logged since the checkpoint, which preempts the tripped agent (a
/// re-execution runs without the watchdog: without the preemption in the
/// log the spinning agent would run until the tick times out); the journal
/// equals the undisturbed run's.
#[test]
fn recovery_after_watchdog_trips_preempts_them() {
    let _w = Watchdog::new("watchdog-recovery", Duration::from_secs(300));
    let tmp = TempDir::new("watchdog-recovery");
    let manifest = spin_manifest(tmp.path(), 10);
    let cfg = |name: &str| spin_config(&manifest, &tmp.path().join(name));
    let (clean_hash, _) = run_to(cfg("clean"), 8);
    let mut run = Run::start(cfg("killed")).unwrap();
    let mut recovery = Duration::ZERO;
    while run.state().tick < 8 {
        let next = run.state().tick + 1;
        if next == 5 {
            // After the trips of ticks 1–3, before the checkpoint at 10.
            for pid in run.worker_pids() {
                signal(pid, Signal::SIGKILL);
            }
        }
        let t0 = Instant::now();
        run.tick().unwrap();
        if next == 5 {
            recovery = t0.elapsed();
        }
    }
    let hash = hex(&run.state().hash);
    let recoveries = run.recoveries();
    run.finish().unwrap();
    assert_eq!(recoveries, 2, "both workers were replaced");
    assert_eq!(
        journal_diff(
            &tmp.path().join("clean/journal.lsj"),
            &tmp.path().join("killed/journal.lsj")
        ),
        None
    );
    assert_eq!(hash, clean_hash);
    eprintln!("recovery after 3 watchdog trips: {recovery:?}");
}

/// A stopped worker or inference host (SIGSTOP) is detected by its stalled
/// heartbeat within about a second, killed and replaced; the journal equals
/// the undisturbed run's.
#[test]
fn stopped_children_are_detected_and_replaced() {
    let _w = Watchdog::new("hang", Duration::from_secs(300));
    let tmp = TempDir::new("hang");
    let manifest = with_inference(tmp.path(), 10);
    const TICKS: u64 = 30;
    let (clean_hash, _) = run_to(config(&manifest, tmp.path().join("clean"), 2), TICKS);
    for host in [false, true] {
        let dir = tmp.path().join(if host { "host" } else { "worker" });
        let mut stalled = Duration::ZERO;
        let mut run = Run::start(config(&manifest, dir.clone(), 2)).unwrap();
        while run.state().tick < TICKS {
            let next = run.state().tick + 1;
            if next == 12 {
                let pid = if host {
                    run.inference_host_pid().unwrap()
                } else {
                    run.worker_pids()[0]
                };
                signal(pid, Signal::SIGSTOP);
            }
            let t0 = Instant::now();
            run.tick().unwrap();
            stalled = stalled.max(t0.elapsed());
        }
        let logs = run.live_state("running").log;
        assert!(
            logs.iter().any(|l| l.contains("hung (no heartbeat")),
            "{logs:#?}"
        );
        let hash = hex(&run.state().hash);
        run.finish().unwrap();
        assert_eq!(
            journal_diff(
                &tmp.path().join("clean/journal.lsj"),
                &dir.join("journal.lsj")
            ),
            None
        );
        assert_eq!(hash, clean_hash);
        // Detected within the hang timeout (1 s) plus recovery, far from
        // the 120 s batch or 600 s tick deadlines.
        assert!(stalled < Duration::from_secs(20), "{stalled:?}");
        eprintln!(
            "{}: longest tick {stalled:?}",
            if host { "host" } else { "worker" }
        );
    }
}

/// SIGSTOP then SIGCONT of a worker (a debugger, a paused VM) does not kill
/// it: its interrupted sleeps resume through `restart_syscall`, which its
/// seccomp allowlist permits.
#[test]
fn sigstop_then_sigcont_is_survived() {
    let _w = Watchdog::new("sigcont", Duration::from_secs(300));
    let tmp = TempDir::new("sigcont");
    let manifest = society(tmp.path(), 1, 10);
    let (clean_hash, _) = run_to(config(&manifest, tmp.path().join("clean"), 2), 30);
    let dir = tmp.path().join("run");
    let mut pids = Vec::new();
    let (run, hash) = run_with(config(&manifest, dir.clone(), 2), 30, |run, next| {
        if next == 10 {
            pids = run.worker_pids();
            for p in &pids {
                signal(*p, Signal::SIGSTOP);
            }
            std::thread::sleep(Duration::from_millis(300));
            for p in &pids {
                signal(*p, Signal::SIGCONT);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(run.worker_pids(), pids, "a worker was replaced");
    assert_eq!(run.recoveries(), 0);
    run.finish().unwrap();
    assert_eq!(hash, clean_hash);
}

/// A worker that runs out of memory because of all its agents together is
/// not blamed on any one of them: the run stops with an error naming the
/// limit, the same in every run (journaled), even with RUST_BACKTRACE set.
#[test]
fn aggregate_memory_exhaustion_names_the_limit() {
    let _w = Watchdog::new("oom", Duration::from_secs(600));
    let tmp = TempDir::new("oom");
    let big = tmp.path().join("big.wat");
    std::fs::write(&big, idle_wat(512, 0x10000)).unwrap();
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 1\nworkers = 1\n\n[[agents]]\nname = \"big\"\nmodule = \"{}\"\ncount = 48\nmemory = \"32MiB\"\n",
            big.display()
        ),
    )
    .unwrap();
    let attempt = |name: &str| {
        let mut cfg = config(&manifest, tmp.path().join(name), 1);
        cfg.sandbox.worker_address_space = 1 << 30;
        cfg.worker_env.push(("RUST_BACKTRACE".into(), "1".into()));
        let mut run = Run::start(cfg).unwrap();
        let err = loop {
            match run.tick() {
                Ok(_) => assert!(run.state().tick < 5, "the run should not fit"),
                Err(e) => break e,
            }
        };
        let RunError::GaveUp { tick, reason } = &err else {
            panic!("{err}");
        };
        assert_eq!(*tick, 1);
        assert!(reason.contains("out of memory"), "{reason}");
        assert!(reason.contains("address-space limit of 1 GiB"), "{reason}");
        assert!(reason.contains("no single agent"), "{reason}");
        assert!(run.quarantined().is_empty());
        drop(run);
        (reason.clone(), decisions(&tmp.path().join(name)))
    };
    let a = attempt("a");
    let b = attempt("b");
    assert_eq!(a, b);
    assert!(
        matches!(a.1.as_slice(), [(1, Decision::GiveUp { .. })]),
        "{:?}",
        a.1
    );
}

/// The supervisor SIGKILLed at every phase of chosen ticks (a checkpoint
/// tick, a tick with inference, an ordinary one), then `lockstep resume`:
/// the journal is byte-identical to an uninterrupted run's.
#[test]
fn supervisor_killed_at_every_phase_resumes_byte_identical() {
    let _w = Watchdog::new("kill_resume", Duration::from_secs(1200));
    let tmp = TempDir::new("killres");
    let manifest = with_inference(tmp.path(), 25);
    const TICKS: u64 = 80;
    let lockstep = bin("lockstep");
    let run_cli = |dir: &Path, inject: Option<&str>| {
        let mut c = Command::new(&lockstep);
        c.args([
            "run",
            manifest.to_str().unwrap(),
            "--ticks",
            &TICKS.to_string(),
            "--no-board",
            "--no-metrics",
        ])
        .arg("--run-dir")
        .arg(dir)
        .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        if let Some(i) = inject {
            c.env("LOCKSTEP_SUPERVISOR_INJECT", i);
        }
        c.status().unwrap()
    };
    let clean = tmp.path().join("clean");
    assert!(run_cli(&clean, None).success());
    let clean_journal = std::fs::read(clean.join("journal.lsj")).unwrap();
    // Ticks with inference answers in the clean run.
    let infer_tick = journal::read_journal(&clean.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .find_map(|e| match e {
            Entry::Inference { tick, .. } if *tick > 30 => Some(*tick),
            _ => None,
        })
        .expect("inference happens");
    let mut points = Vec::new();
    for tick in [25, infer_tick, 41] {
        for phase in [
            "inputs",
            "workers",
            "barrier",
            "record",
            "inference",
            "tick",
        ] {
            points.push(format!("kill@{tick}:{phase}"));
        }
    }
    points.push("kill@50:checkpoint".into());
    let mut killed = 0;
    for (i, p) in points.iter().enumerate() {
        let dir = tmp.path().join(format!("k{i}"));
        let status = run_cli(&dir, Some(p));
        use std::os::unix::process::ExitStatusExt;
        if status.success() {
            // The phase does not exist at that tick (no inference there).
            assert!(p.contains("inference"), "{p}: no kill happened");
            continue;
        }
        assert_eq!(status.signal(), Some(9), "{p}: {status:?}");
        killed += 1;
        let out = Command::new(&lockstep)
            .arg("resume")
            .arg(&dir)
            .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(dir.join("journal.lsj")).unwrap();
        if got != clean_journal {
            panic!(
                "{p}: the resumed journal differs: {:?}",
                journal_diff(&clean.join("journal.lsj"), &dir.join("journal.lsj"))
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(killed >= 16, "{killed} kill points");
}

/// The documented hot-swap keeps the agent's state and the new module's
/// static data: `upgrade_v2` logs its migration line (from its own static
/// strings), and keeps counting from where `counter` stopped.
#[test]
fn hot_swap_keeps_state_and_static_data() {
    let _w = Watchdog::new("hotswap", Duration::from_secs(300));
    let tmp = TempDir::new("hotswap");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 8\ncheckpoint_every = 50\n\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 2\n",
            agent("counter")
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let mut cfg = config(&manifest, dir.clone(), 2);
    cfg.board = true;
    let mut run = Run::start(cfg).unwrap();
    while run.state().tick < 40 {
        run.tick().unwrap();
    }
    let out = run
        .upgrade("counter-1", Path::new(&agent("upgrade_v2")))
        .unwrap();
    assert!(matches!(out, InputOutcome::Applied(_)), "{out:?}");
    run.tick().unwrap();
    let logs = run.live_state("running").log;
    assert!(
        logs.iter()
            .any(|l| l.contains("counter v2: migrated from ABI 0x00010000")),
        "{logs:#?}"
    );
    while run.state().tick < 210 {
        run.tick().unwrap();
        if run.state().tick == 100 || run.state().tick == 200 {
            let logs = run.live_state("running").log;
            let want = format!(
                "counter-1: counter v2: tick {t} steps {t}",
                t = run.state().tick
            );
            assert!(logs.iter().any(|l| l.contains(&want)), "{want}: {logs:#?}");
        }
    }
    assert_eq!(run.state().counters.faults, 0);
    run.finish().unwrap();
    let v = replay::verify(&dir, None).unwrap();
    assert!(matches!(v, Verdict::Identical { .. }), "{v:?}");
}

/// After a divergence, `verify` goes on with the segment's recorded inputs:
/// its report names what differs and nothing else.  Here only a recorded
/// tick hash is wrong (the journal was edited), so the state compared at the
/// segment's end is exactly the recorded one: the report names the first
/// divergent tick and no agent or table.
#[test]
fn verify_report_names_only_what_diverged() {
    let _w = Watchdog::new("verify_report", Duration::from_secs(300));
    let tmp = TempDir::new("vreport");
    let manifest = society(tmp.path(), 2, 50);
    let dir = tmp.path().join("run");
    let (run, _) = run_with(config(&manifest, dir.clone(), 2), 100, |run, next| {
        // Inputs after the divergence, inside the same segment.
        if next % 7 == 0 {
            run.publish("sensors", format!("tick {next}").into_bytes())
                .unwrap();
            run.send("counter-3", b"hi".to_vec()).unwrap();
        }
    });
    run.finish().unwrap();
    let path = dir.join("journal.lsj");
    let entries = journal::read_journal(&path).unwrap().entries;
    std::fs::remove_file(&path).unwrap();
    let mut w = journal::JournalWriter::create(&path).unwrap();
    for mut e in entries {
        if let Entry::Tick { tick: 60, hash, .. } = &mut e {
            hash[0] ^= 1;
        }
        w.write(&e).unwrap();
    }
    w.sync().unwrap();
    let v = replay::verify(&dir, None).unwrap();
    let Verdict::Diverged(d) = v else {
        panic!("expected a divergence")
    };
    assert_eq!((d.first_tick, d.compared_at), (Some(60), 100), "{d}");
    assert!(d.agents.is_empty() && d.scheduler.is_empty(), "{d}");
    // The same verdict for machines: `lockstep verify --json`, exit code 3.
    let out = Command::new(bin("lockstep"))
        .arg("verify")
        .arg(&dir)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "diverged", "{v}");
    assert_eq!(
        (v["first_tick"].as_u64(), v["compared_at"].as_u64()),
        (Some(60), Some(100)),
        "{v}"
    );
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(0), "{v}");
}

/// Recovered workers are watched like the first ones: a replacement killed
/// again is reported with its real cause, and recoveries leak no thread.
#[test]
fn recovered_workers_are_watched_and_leak_nothing() {
    let _w = Watchdog::new("watched", Duration::from_secs(300));
    let tmp = TempDir::new("watched");
    let manifest = society(tmp.path(), 1, 0);
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let mut run = Run::start(config(&manifest, tmp.path().join("run"), 2)).unwrap();
    run.tick().unwrap();
    let before = threads();
    for t in 0..6 {
        signal(run.worker_pids()[t % 2], Signal::SIGKILL);
        run.tick().unwrap();
    }
    let logs = run.live_state("running").log;
    let killed = logs
        .iter()
        .filter(|l| l.contains("was killed by SIGKILL"))
        .count();
    assert!(killed >= 6, "{logs:#?}");
    assert!(threads() <= before + 1, "{before} -> {} threads", threads());
    run.finish().unwrap();
}

/// An inference host found dead before a batch is restarted with a log line
/// naming how it died.
#[test]
fn dead_inference_host_restarts_are_logged() {
    let _w = Watchdog::new("host_log", Duration::from_secs(300));
    let tmp = TempDir::new("hostlog");
    let manifest = with_inference(tmp.path(), 10);
    let mut run = Run::start(config(&manifest, tmp.path().join("run"), 2)).unwrap();
    while run.state().tick < 5 {
        run.tick().unwrap();
    }
    signal(run.inference_host_pid().unwrap(), Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    while run.inference_restarts() == 0 {
        run.tick().unwrap();
        assert!(run.state().tick < 100, "the host was never restarted");
    }
    let logs = run.live_state("running").log;
    assert!(
        logs.iter()
            .any(|l| l.contains("inference host was killed by SIGKILL") && l.contains("found dead")),
        "{logs:#?}"
    );
    run.finish().unwrap();
}
