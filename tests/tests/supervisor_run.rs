//! The supervisor end to end with real worker processes: determinism across
//! runs and worker counts, external inputs through `lockstep ctl`, faulty
//! agents, and hot-swap.

use lockstep_supervisor::journal::{self, Entry};
use lockstep_supervisor::replay;
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::{Event, InputOutcome};
use lockstep_tests::{
    ChildGuard, TempDir, Watchdog, agent, bin, children, config, idle_manifest, idle_wat,
    journal_diff, run_to, society, wait_for_control_socket,
};
use shm_protocol::worker::Fault;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tick_hashes(dir: &Path) -> Vec<(u64, [u8; 32])> {
    journal::read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .filter_map(|e| {
            if let Entry::Tick { tick, hash, .. } = e {
                Some((*tick, *hash))
            } else {
                None
            }
        })
        .collect()
}

/// Same manifest and seed: byte-identical journals and final hashes, with
/// 1, 2 and 4 worker processes; another seed gives other hashes.
#[test]
fn runs_are_identical_across_repeats_and_worker_counts() {
    let _w = Watchdog::new("determinism", Duration::from_secs(600));
    let tmp = TempDir::new("determinism");
    let manifest = society(tmp.path(), 4, 100);
    let mut hashes = Vec::new();
    for (name, workers) in [("w1", 1), ("w2", 2), ("w2b", 2), ("w4", 4)] {
        let (h, _) = run_to(config(&manifest, tmp.path().join(name), workers), 300);
        hashes.push(h);
        if name != "w1" {
            assert_eq!(
                journal_diff(
                    &tmp.path().join("w1/journal.lsj"),
                    &tmp.path().join(name).join("journal.lsj")
                ),
                None,
                "{name}"
            );
        }
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    assert_eq!(tick_hashes(&tmp.path().join("w1")).len(), 300);
    let mut other = config(&manifest, tmp.path().join("seed"), 2);
    other.seed = 12345;
    let (h, _) = run_to(other, 300);
    assert_ne!(h, hashes[0]);
    let a = tick_hashes(&tmp.path().join("w1"));
    let b = tick_hashes(&tmp.path().join("seed"));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.1 != y.1),
        "every tick hash depends on the seed"
    );
}

fn ctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("lockstep"))
        .arg("ctl")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `lockstep run <manifest> --forever --run-dir <dir>` (until stopped).
fn run_forever(manifest: &Path, dir: &Path) -> ChildGuard {
    ChildGuard::new(
        Command::new(bin("lockstep"))
            .args([
                "run",
                manifest.to_str().unwrap(),
                "--forever",
                "--no-metrics",
                "--run-dir",
            ])
            .arg(dir)
            .env("LOCKSTEP_WORKER_BIN", bin("lockstep-worker"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// External inputs through `lockstep ctl` over the Unix socket are applied
/// at the next tick boundary, journaled with their tick, and reproduced by
/// `replay`.
#[test]
fn ctl_inputs_are_journaled_and_replayed() {
    let _w = Watchdog::new("ctl", Duration::from_secs(600));
    let tmp = TempDir::new("ctl");
    let manifest = society(tmp.path(), 1, 50);
    let dir = tmp.path().join("run");
    let mut sup = run_forever(&manifest, &dir);
    wait_for_control_socket(&dir, Duration::from_secs(60));
    let answers = [
        ctl(&dir, &["status"]),
        ctl(&dir, &["spawn", "late-counter", &agent("counter")]),
        ctl(&dir, &["task", "late-counter", "work", "--priority", "4"]),
        ctl(&dir, &["publish", "sensors", "hello"]),
        ctl(&dir, &["send", "counter-3", "direct"]),
        ctl(&dir, &["send", "nobody", "x"]),
        ctl(&dir, &["stop-agent", "counter-5"]),
        ctl(&dir, &["snapshot"]),
        ctl(&dir, &["stop"]),
    ];
    let status = sup.child().wait().unwrap();
    assert!(status.success());
    eprintln!("{answers:#?}");
    assert!(answers[0].starts_with("tick "), "{}", answers[0]);
    assert!(
        answers[1].starts_with("applied at tick") && answers[1].contains("spawned late-counter"),
        "{}",
        answers[1]
    );
    assert!(answers[2].contains("task 0xffffffff"), "{}", answers[2]);
    assert!(answers[3].contains("to 6 subscribers"), "{}", answers[3]);
    assert!(answers[4].starts_with("applied"), "{}", answers[4]);
    assert!(
        answers[5].starts_with("refused: no agent `nobody`"),
        "{}",
        answers[5]
    );
    assert!(answers[6].contains("stopping agent"), "{}", answers[6]);
    assert!(
        answers[7].starts_with("snapshot after tick"),
        "{}",
        answers[7]
    );
    let j = journal::read_journal(&dir.join("journal.lsj")).unwrap();
    let inputs: Vec<(u64, &InputOutcome)> = j
        .entries
        .iter()
        .filter_map(|e| {
            if let Entry::Input { tick, outcome, .. } = e {
                Some((*tick, outcome))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(inputs.len(), 6, "{inputs:?}");
    assert!(inputs.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(matches!(inputs[4].1, InputOutcome::Refused(_)));
    // The run, inputs included, replays hash for hash.
    let r = replay::replay(&dir, None, None, Some(1)).unwrap();
    assert!(r.checked > 0);
    match replay::verify(&dir, Some(2)).unwrap() {
        replay::Verdict::Identical { .. } => {}
        replay::Verdict::Diverged(d) => panic!("{d}"),
    }
}

/// Faulty agents (trap, infinite loop, memory bomb, deep recursion, bad
/// pointers) are reported in the journal; the other agents' states are
/// exactly what they are in a run without them.
#[test]
fn faulty_agents_are_reported_and_contained() {
    let _w = Watchdog::new("faulty", Duration::from_secs(600));
    let tmp = TempDir::new("faulty");
    let good = format!(
        "[run]\nseed = 3\n\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 8\n",
        agent("counter")
    );
    let mut bad = good.clone();
    for m in ["trap", "spin", "membomb", "recurse", "badptr"] {
        bad.push_str(&format!(
            "\n[[agents]]\nname = \"{m}\"\nmodule = \"{}\"\nfuel = 200000\nmemory = \"2MiB\"\nrestart = {{ max = 1, within = 10 }}\n",
            agent(m)
        ));
    }
    let (gm, bm) = (tmp.path().join("good.toml"), tmp.path().join("bad.toml"));
    std::fs::write(&gm, good).unwrap();
    std::fs::write(&bm, bad).unwrap();
    let mut states = Vec::new();
    for (m, name) in [(&gm, "good"), (&bm, "bad")] {
        let mut run = Run::start(config(m, tmp.path().join(name), 2)).unwrap();
        while run.state().tick < 60 {
            run.tick().unwrap();
        }
        let body = run.capture_state().unwrap();
        states.push(
            body.agents
                .iter()
                .filter(|(id, _)| *id <= 8)
                .map(|(id, img)| (*id, img.state_hash()))
                .collect::<Vec<_>>(),
        );
        run.finish().unwrap();
    }
    assert_eq!(states[0].len(), 8);
    assert_eq!(
        states[0], states[1],
        "faulty neighbours changed the counters"
    );
    let faults: Vec<(u64, Fault, String)> =
        journal::read_journal(&tmp.path().join("bad/journal.lsj"))
            .unwrap()
            .entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Event {
                    event:
                        Event::Fault {
                            agent,
                            fault,
                            action,
                        },
                    ..
                } => Some((agent, fault, action)),
                _ => None,
            })
            .collect();
    eprintln!("{faults:#?}");
    let of = |id: u64| {
        faults
            .iter()
            .filter(|f| f.0 == id)
            .map(|f| f.1.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        of(9)
            .iter()
            .all(|f| matches!(f, Fault::Trap(t) if t == "UnreachableCodeReached"))
            && !of(9).is_empty()
    );
    assert!(of(10).iter().all(|f| *f == Fault::OutOfFuel) && !of(10).is_empty());
    assert!(!of(11).is_empty(), "membomb");
    assert!(
        of(12).iter().all(|f| matches!(f, Fault::Trap(_))) && !of(12).is_empty(),
        "recurse"
    );
    assert!(
        of(13).iter().all(|f| matches!(f, Fault::BadHostCall(_))) && !of(13).is_empty(),
        "badptr"
    );
    // Restart intensity: 1 restart within 10 ticks, then stopped.
    assert!(
        faults
            .iter()
            .any(|f| f.0 == 9 && f.2.starts_with("stopped")),
        "{faults:?}"
    );
}

/// Hot-swap at a tick boundary: journaled, reproduced by replay; an
/// incompatible module is refused with a clear reason.
#[test]
fn hot_swap_upgrade() {
    let _w = Watchdog::new("upgrade", Duration::from_secs(600));
    let tmp = TempDir::new("upgrade");
    let m = format!(
        "[run]\nseed = 8\ncheckpoint_every = 25\n\n[[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 4\n",
        agent("counter")
    );
    let manifest = tmp.path().join("m.toml");
    std::fs::write(&manifest, m).unwrap();
    let dir = tmp.path().join("run");
    let mut run = Run::start(config(&manifest, dir.clone(), 2)).unwrap();
    while run.state().tick < 40 {
        run.tick().unwrap();
    }
    let out = run
        .upgrade("counter-1", Path::new(&agent("upgrade_v2")))
        .unwrap();
    assert!(
        matches!(&out, InputOutcome::Applied(s) if s.contains("upgrades to")),
        "{out:?}"
    );
    // A module with another ABI major is refused.
    let v2 = tmp.path().join("abi2.wat");
    std::fs::write(&v2, idle_wat(1, 0x20000)).unwrap();
    let out = run.upgrade("counter-2", &v2).unwrap();
    assert!(
        matches!(&out, InputOutcome::Refused(s) if s.contains("ABI version 2.0")),
        "{out:?}"
    );
    // A module with another state layout and no agent_migrate is refused.
    let layout = tmp.path().join("layout.wat");
    std::fs::write(
        &layout,
        r#"(module (memory (export "memory") 1)
  (global $a (mut i32) (i32.const 0)) (global $b (mut i64) (i64.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32) (global.set $a (i32.const 1)) (global.set $b (i64.const 1)) (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let out = run.upgrade("counter-3", &layout).unwrap();
    assert!(
        matches!(&out, InputOutcome::Refused(s) if s.contains("incompatible upgrade")),
        "{out:?}"
    );
    while run.state().tick < 80 {
        run.tick().unwrap();
    }
    let id = run.state().resolve("counter-1").unwrap();
    let module = run.state().agents[&id].module;
    assert!(
        run.state().modules[&module]
            .path
            .ends_with("upgrade_v2.wasm")
    );
    assert!(matches!(
        run.state().agents[&id].status,
        lockstep_supervisor::sim::AgentStatus::Live
    ));
    let final_hash = run.state().hash;
    run.finish().unwrap();
    let j = journal::read_journal(&dir.join("journal.lsj")).unwrap();
    assert!(
        j.entries
            .iter()
            .any(|e| matches!(e, Entry::Input { tick: 41, .. }))
    );
    assert!(!j.entries.iter().any(|e| matches!(
        e,
        Entry::Event {
            event: Event::Fault { .. },
            ..
        }
    )));
    // The upgrade replays (from genesis and from a checkpoint after it).
    for from in [0, 50] {
        let r = replay::replay(&dir, Some(replay::From::Tick(from)), None, None).unwrap();
        assert_eq!(
            r.hash,
            final_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
}

/// Ctrl-C (SIGINT) stops the run at a tick boundary and leaves a consistent
/// run directory: ended journal, final checkpoint, `verify` says identical.
#[test]
fn sigint_stops_at_a_tick_boundary() {
    let _w = Watchdog::new("sigint", Duration::from_secs(600));
    let tmp = TempDir::new("sigint");
    let manifest = society(tmp.path(), 2, 40);
    let dir = tmp.path().join("run");
    let mut sup = run_forever(&manifest, &dir);
    let t0 = Instant::now();
    while tick_hashes_or_empty(&dir).len() < 50 {
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not start");
        if let Ok(Some(status)) = sup.child().try_wait() {
            panic!("the run ended early: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = sup.child().wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rec = replay::Recorded::open(&dir).unwrap();
    assert!(rec.ended, "journal not ended");
    assert!(
        rec.checkpoints.contains_key(&rec.last_tick),
        "no final checkpoint"
    );
    match replay::verify(&dir, None).unwrap() {
        replay::Verdict::Identical { ticks, .. } => assert_eq!(ticks, rec.last_tick),
        replay::Verdict::Diverged(d) => panic!("{d}"),
    }
}

fn tick_hashes_or_empty(dir: &Path) -> Vec<(u64, [u8; 32])> {
    if dir.join("journal.lsj").exists() {
        tick_hashes(dir)
    } else {
        Vec::new()
    }
}

/// One worker holds more agents than the kernel would allow if each agent's
/// linear memory took two memory mappings (vm.max_map_count is 65,530 by
/// default): 40,000 agents in one worker run, and every one of them steps.
#[test]
fn a_worker_holds_tens_of_thousands_of_agents() {
    let _w = Watchdog::new("many_agents", Duration::from_secs(300));
    const N: u64 = 40_000;
    let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if maps.is_some_and(|m| m > 4 * N) {
        eprintln!(
            "SKIPPED a_worker_holds_tens_of_thousands_of_agents: vm.max_map_count is {maps:?}, high enough that the test proves nothing"
        );
        return;
    }
    let tmp = TempDir::new("many");
    let manifest = tmp.path().join("many.toml");
    std::fs::write(tmp.path().join("noop.wat"), idle_wat(1, 0x10000)).unwrap();
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nworkers = 1\ncheckpoint_every = 0\n\n[[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {N}\nmemory = \"64KiB\"\n"
        ),
    )
    .unwrap();
    let mut run = Run::start(config(&manifest, tmp.path().join("run"), 1)).unwrap();
    for _ in 0..3 {
        run.tick().unwrap();
    }
    assert_eq!(run.state().live_agents().count() as u64, N);
    let sum = run.finish().unwrap();
    assert_eq!(sum.steps, 3 * N, "every agent stepped every tick");
    assert_eq!(sum.faults, 0);
}

/// `lockstep log --kind` takes only the journal's entry kinds: anything
/// else is a usage error naming them (exit code 2), not an empty listing.
#[test]
fn log_refuses_an_unknown_entry_kind() {
    let out = Command::new(bin("lockstep"))
        .args(["log", "/nonexistent-run-dir", "--kind", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus") && err.contains("checkpoint") && err.contains("decision"),
        "{err}"
    );
}

#[test]
fn log_takes_agent_names_as_well_as_ids() {
    let _w = Watchdog::new("log_agent_names", Duration::from_secs(120));
    let tmp = TempDir::new("log-agent-names");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nticks = 20\nworkers = 1\n\n\
             [[agents]]\nname = \"calm\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"boom\"\nmodule = \"{}\"\n",
            agent("counter"),
            agent("trap")
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let out = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--no-board", "--no-metrics", "--run-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = |who: &str| {
        Command::new(bin("lockstep"))
            .arg("log")
            .arg(&dir)
            .args(["--agent", who])
            .output()
            .unwrap()
    };
    // Agent ids count from 1 in manifest order: calm is 1, boom 2.
    let (by_name, by_id) = (log("boom"), log("2"));
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    assert!(
        !by_name.stdout.is_empty(),
        "the trapping agent has journal entries"
    );
    assert_eq!(by_name.stdout, by_id.stdout);
    assert_ne!(by_name.stdout, log("calm").stdout);
    let nobody = log("nobody");
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        !nobody.status.success() && err.contains("\"nobody\""),
        "{err}"
    );
    let bad = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("`tpu`: expected cpu, auto, cuda or cuda:N")
    );
}

/// `lockstep run --agent-logs [LEVEL]` prints the agents' log lines with
/// their tick, the same lines on every run; lines above LEVEL stay out.
/// `inspect`, `log`, `fork` and `resume` answer in JSON on request.
#[test]
fn agent_logs_are_printed_on_request() {
    let _w = Watchdog::new("agent_logs", Duration::from_secs(120));
    let tmp = TempDir::new("agent-logs");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nticks = 250\nworkers = 1\n\n\
             [[agents]]\nname = \"calm\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"quiet\"\nmodule = \"{}\"\n",
            agent("counter"),
            agent("counter"),
        ),
    )
    .unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = Command::new(bin("lockstep"))
            .arg("run")
            .arg(&manifest)
            .args(["--no-board", "--no-metrics", "--run-dir"])
            .arg(tmp.path().join(name))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err.lines()
            .filter(|l| l.starts_with("tick "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let a = run("a", &["--agent-logs"]);
    assert!(
        a.iter().any(|l| l.starts_with("tick 100 [INFO] calm: ")),
        "{a:?}"
    );
    assert_eq!(
        a,
        run("b", &["--agent-logs", "info"]),
        "the same lines again"
    );
    assert!(
        a.iter().any(|l| l.starts_with("tick 100 [INFO] quiet: ")),
        "{a:?}"
    );
    // One agent's lines only.
    let calm = run("e", &["--agent-logs", "--agent-logs-for", "calm"]);
    assert!(
        !calm.is_empty() && calm.iter().all(|l| l.contains("] calm: ")),
        "{calm:?}"
    );
    assert!(run("c", &["--agent-logs", "warn"]).is_empty());
    assert!(run("d", &[]).is_empty());
    // `inspect --json` for machines.
    let out = Command::new(bin("lockstep"))
        .arg("inspect")
        .arg(tmp.path().join("a"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ticks"], 250, "{v}");
    assert_eq!(v["ended_after_tick"], 250, "{v}");
    assert_eq!(v["messages"], v["summary"]["messages"], "{v}");
    // `log --json`: one object per entry.
    let json_out = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(bin("lockstep")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let a = tmp.path().join("a");
    let ticks = json_out(&[
        "log".as_ref(),
        a.as_os_str(),
        "--kind".as_ref(),
        "tick".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(ticks.len(), 250);
    assert!(
        ticks
            .iter()
            .all(|t| t["kind"] == "tick" && t["entry"]["Tick"]["tick"] == t["tick"])
    );
    // `fork --json` and `resume --json`: the fork, run to the end, ends
    // where the original did.
    let f = tmp.path().join("f");
    let fork = json_out(&[
        "fork".as_ref(),
        a.as_os_str(),
        "--at".as_ref(),
        "100".as_ref(),
        "--into".as_ref(),
        f.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(fork[0]["tick"], 100, "{fork:?}");
    let resumed = json_out(&[
        "resume".as_ref(),
        f.as_os_str(),
        "--until".as_ref(),
        "250".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(resumed[0]["ticks"], 250, "{resumed:?}");
    assert_eq!(resumed[0]["hash"], v["summary"]["hash"], "{resumed:?}");
}

/// On a terminal `lockstep run` and `verify` draw a progress bar with the
/// rate and ETA; without one (scripts, CI) they print none.
#[test]
fn progress_bars_only_on_a_terminal() {
    let _w = Watchdog::new("progress", Duration::from_secs(120));
    let tmp = TempDir::new("progress");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 3\nticks = 400\nworkers = 1\n\n\
             [[agents]]\nname = \"calm\"\nmodule = \"{}\"\n",
            agent("counter"),
        ),
    )
    .unwrap();
    let plain = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .arg("--run-dir")
        .arg(tmp.path().join("plain"))
        .output()
        .unwrap();
    assert!(plain.status.success());
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(!err.contains("ticks/s") && !err.contains('\x1b'), "{err}");
    // `script` (util-linux) gives the command a terminal.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped the terminal half: no `script` command here");
        return;
    }
    let cmd = format!(
        "{} run {} --run-dir {}",
        bin("lockstep").display(),
        manifest.display(),
        tmp.path().join("tty").display()
    );
    let tty = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(tty.status.success());
    let out = String::from_utf8_lossy(&tty.stdout);
    assert!(
        out.contains("run [") && out.contains("ticks/s") && out.contains("/400"),
        "{out}"
    );
}

/// `--warmup N` leaves the first N ticks out of the latency the run
/// reports: an agent that computes for its first 12 of 23 steps (≈ 0.1 s
/// or more each) and returns at once afterwards is the median of a run
/// that counts every tick and absent from one that leaves 12 out (medians:
/// a stray slow tick of a loaded machine moves neither; on 2 CPUs shared
/// with 3 busy loops a plain tick took up to 8 ms); a warm-up that leaves
/// nothing to measure is refused, naming the flag.
#[test]
fn warmup_ticks_are_left_out_of_the_reported_latency() {
    let _w = Watchdog::new("warmup", Duration::from_secs(120));
    let tmp = TempDir::new("warmup");
    let wat = tmp.path().join("slow-start.wat");
    std::fs::write(
        &wat,
        r#"(module (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32) (local $i i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (if (i32.le_u (global.get $n) (i32.const 12))
      (then (loop $l
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 300000000))))))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[run]\nseed = 1\nticks = 23\nworkers = 1\n\n\
         [[agents]]\nname = \"slow-start\"\nmodule = \"slow-start.wat\"\nfuel = 10000000000\n",
    )
    .unwrap();
    let run = |name: &str, extra: &[&str]| {
        Command::new(bin("lockstep"))
            .arg("run")
            .arg(&manifest)
            .args(["--no-board", "--no-metrics", "--json", "--run-dir"])
            .arg(tmp.path().join(name))
            .args(extra)
            .output()
            .unwrap()
    };
    let p50 = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ticks"], 23, "every tick ran: {v}");
        v["tick_p50_us"].as_u64().unwrap()
    };
    let all = p50(&run("all", &[]));
    let warm = p50(&run("warm", &["--warmup", "12"]));
    eprintln!("p50 counting every tick {all} µs, after 12 warm-up ticks {warm} µs");
    assert!(
        all >= 50_000,
        "the slow steps take a tenth of a second: {all} µs"
    );
    assert!(warm * 4 < all, "{warm} µs vs {all} µs");
    // Both runs journaled the same ticks.
    assert_eq!(
        journal_diff(
            &tmp.path().join("all/journal.lsj"),
            &tmp.path().join("warm/journal.lsj")
        ),
        None
    );
    let refused = run("none-left", &["--warmup", "23"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--warmup 23") && err.contains("--ticks"),
        "{err}"
    );
}

/// With metrics on, each agent reports one sample (wall time, memory) every
/// 64 ticks, and every tick carries an equal share of the samples — the
/// agents whose id is the tick modulo 64 — instead of every agent's at once
/// every 64th tick.  Sampling changes no hash.
#[test]
fn agent_samples_are_spread_evenly_over_the_ticks() {
    let _w = Watchdog::new("samples", Duration::from_secs(120));
    let tmp = TempDir::new("samples");
    let manifest = idle_manifest(tmp.path(), 5, 200, 2);
    let run = |name: &str, extra: &[&str]| {
        let out = Command::new(bin("lockstep"))
            .arg("run")
            .arg(&manifest)
            .args(["--ticks", "130", "--no-board", "--json", "--run-dir"])
            .arg(tmp.path().join(name))
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["hash"].as_str().unwrap().to_owned()
    };
    let sampled = run("metrics", &[]);
    let unsampled = run("quiet", &["--no-metrics"]);
    assert_eq!(sampled, unsampled, "sampling changed the run");
    let text = std::fs::read_to_string(tmp.path().join("metrics/metrics.jsonl")).unwrap();
    let mut per_tick = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for line in text.lines().filter(|l| l.starts_with(r#"{"type":"agent""#)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (tick, agent) = (v["tick"].as_u64().unwrap(), v["agent"].as_u64().unwrap());
        assert!(v["wall_ns"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(v["memory_bytes"], 65536, "{line}");
        per_tick.entry(tick).or_default().push(agent);
    }
    for tick in 1..=130u64 {
        let want: Vec<u64> = (1..=200).filter(|a| a % 64 == tick % 64).collect();
        assert_eq!(
            per_tick.get(&tick),
            Some(&want),
            "the agents sampled in tick {tick}"
        );
    }
    assert_eq!(per_tick.len(), 130, "{:?}", per_tick.keys());
}

/// The CPUs of a `Cpus_allowed_list` (`0-1`, `0,3`, `2-3,6`).
fn cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

/// The CPUs each thread of process `pid` may run on.
fn thread_cpus(pid: u32) -> Vec<Vec<usize>> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            cpu_list(line)
        })
        .collect()
}

/// When the workers and the supervisor take every CPU (here: a supervisor
/// allowed two CPUs, with two workers), each worker runs on a CPU of its
/// own — every thread of it — and the supervisor on both; with
/// `--no-pin-workers` the workers may use both.
#[test]
fn workers_get_a_cpu_each_when_they_fill_the_machine() {
    let _w = Watchdog::new("pinning", Duration::from_secs(180));
    let cpus = lockstep_common::cpu::allowed_cpus();
    if cpus.len() < 2 {
        eprintln!(
            "skipped: this process may use {} CPU, the test needs 2",
            cpus.len()
        );
        return;
    }
    let two = vec![cpus[0], cpus[1]];
    let tmp = TempDir::new("pinning");
    let manifest = idle_manifest(tmp.path(), 3, 20, 2);
    for (name, extra) in [("pinned", None), ("free", Some("--no-pin-workers"))] {
        let dir = tmp.path().join(name);
        let (m, d, allowed) = (manifest.clone(), dir.clone(), two.clone());
        // The supervisor inherits the mask of the thread that starts it.
        let child = std::thread::spawn(move || {
            let mut set = nix::sched::CpuSet::new();
            for c in &allowed {
                set.set(*c).unwrap();
            }
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
            Command::new(bin("lockstep"))
                .args([
                    "run",
                    m.to_str().unwrap(),
                    "--forever",
                    "--no-board",
                    "--no-metrics",
                ])
                .args(extra)
                .arg("--run-dir")
                .arg(&d)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        let mut sup = ChildGuard::new(child);
        wait_for_control_socket(&dir, Duration::from_secs(60));
        let workers: Vec<u32> = children(sup.id())
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "lockstep-worker")
            })
            .collect();
        assert_eq!(workers.len(), 2, "{name}: workers {workers:?}");
        let masks: Vec<Vec<Vec<usize>>> = workers.iter().map(|&w| thread_cpus(w)).collect();
        let supervisor = thread_cpus(sup.id());
        assert!(!ctl(&dir, &["stop"]).is_empty());
        assert!(sup.child().wait().unwrap().success(), "{name}");
        assert!(
            supervisor.iter().all(|m| *m == two),
            "{name}: supervisor {supervisor:?}"
        );
        if extra.is_none() {
            let mut own: Vec<usize> = masks
                .iter()
                .map(|threads| {
                    assert!(
                        threads.iter().all(|m| m.len() == 1 && *m == threads[0]),
                        "{name}: a worker's threads {threads:?}"
                    );
                    threads[0][0]
                })
                .collect();
            own.sort_unstable();
            assert_eq!(own, two, "{name}: one CPU each");
        } else {
            assert!(
                masks.iter().flatten().all(|m| *m == two),
                "{name}: workers {masks:?}"
            );
        }
    }
}

/// With checkpoints only at the start and the end (`checkpoint_every = 0`),
/// a checkpoint is still taken once the messages sent to the workers since
/// the last one reach `checkpoint_work` — at the same ticks whatever the
/// number of workers (the journals are byte-identical), so the work a
/// recovery re-executes and the recovery log stay bounded.
#[test]
fn checkpoints_follow_the_work_sent_when_the_period_is_off() {
    let _w = Watchdog::new("checkpoint-work", Duration::from_secs(600));
    let tmp = TempDir::new("checkpoint-work");
    let manifest = society(tmp.path(), 4, 0);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replacen(
            "checkpoint_every = 0\n",
            "checkpoint_every = 0\ncheckpoint_work = \"64KiB\"\n",
            1,
        ),
    )
    .unwrap();
    let checkpoints = |name: &str| -> Vec<u64> {
        journal::read_journal(&tmp.path().join(name).join("journal.lsj"))
            .unwrap()
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Checkpoint { tick, .. } => Some(*tick),
                _ => None,
            })
            .collect()
    };
    let (h1, _) = run_to(config(&manifest, tmp.path().join("w1"), 1), 150);
    let (h2, _) = run_to(config(&manifest, tmp.path().join("w2"), 2), 150);
    assert_eq!(h1, h2);
    assert_eq!(
        journal_diff(
            &tmp.path().join("w1/journal.lsj"),
            &tmp.path().join("w2/journal.lsj")
        ),
        None
    );
    let ticks = checkpoints("w1");
    eprintln!("checkpoints at {ticks:?}");
    // The start, the end, and some in between — not every tick.
    assert!(ticks.len() > 3 && ticks.len() < 100, "{ticks:?}");
    assert_eq!(ticks.first(), Some(&0));
    assert_eq!(ticks.last(), Some(&150));
    // With the default bound (256 MiB): only the start and the end.
    std::fs::create_dir(tmp.path().join("plain-m")).unwrap();
    let plain = society(&tmp.path().join("plain-m"), 4, 0);
    run_to(config(&plain, tmp.path().join("plain"), 2), 150);
    assert_eq!(checkpoints("plain"), vec![0, 150]);
}
