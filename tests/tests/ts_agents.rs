//! TypeScript (AssemblyScript) agents in real runs, driven only through the
//! command line (`lockstep run`, `verify`, `fork`, `resume`, `ctl`, `log`,
//! `inspect`):
//!
//! * `examples/mixed.toml` (Rust, C and TypeScript agents together) gives
//!   byte-identical journals with 1, 2 and 4 workers, and `verify` says
//!   identical;
//! * the TypeScript counter's state survives a fork (snapshot) and resume
//!   (restore): the final hash and its log lines equal an uninterrupted run's;
//! * a hot-swap of a `--forever` run's TypeScript counter to version 2 keeps
//!   its count;
//! * the TypeScript twins behave like the Rust examples: the same society
//!   built from either logs the same lines.
//!
//! Needs the modules of scripts/build-agents.sh and the `mlp` model
//! (scripts/test.sh prepares both).  The TypeScript modules are (re)built
//! with scripts/build-ts-agents.sh when Node.js 20+ and npm are installed;
//! without them and without built modules the tests say why and skip.

use lockstep_tests::{ChildGuard, TempDir, Watchdog, agent, bin, root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The TypeScript example modules (target/agents/ts_<name>.wasm).
const TS_MODULES: [&str; 8] = [
    "aggregator",
    "coordinator",
    "counter",
    "counter_v2",
    "inferrer",
    "ping",
    "pong",
    "sensor",
];

fn ts_module(name: &str) -> PathBuf {
    root().join("target/agents").join(format!("ts_{name}.wasm"))
}

fn node_and_npm() -> Result<(), String> {
    let node = Command::new("node")
        .args([
            "-e",
            "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)",
        ])
        .status();
    match node {
        Ok(s) if s.success() => {}
        Ok(_) => return Err("Node.js is older than 20".into()),
        Err(e) => return Err(format!("Node.js is not installed (`node`: {e})")),
    }
    match Command::new("npm").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`npm --version` failed: {}", o.status)),
        Err(e) => Err(format!("npm is not installed (`npm`: {e})")),
    }
}

/// Builds the TypeScript modules when Node.js and npm are there (a build
/// failure fails the test); `Err(why)` if they cannot be had.
fn ts_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            match node_and_npm() {
                Ok(()) => {
                    let out = Command::new(root().join("scripts/build-ts-agents.sh"))
                        .output()
                        .expect("run scripts/build-ts-agents.sh");
                    assert!(
                        out.status.success(),
                        "scripts/build-ts-agents.sh failed ({}):\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Err(why) => {
                    let missing: Vec<_> = TS_MODULES
                        .iter()
                        .map(|n| ts_module(n))
                        .filter(|p| !p.is_file())
                        .collect();
                    if !missing.is_empty() {
                        return Err(format!(
                            "{why}, so the TypeScript agents cannot be built ({} missing); \
                             install Node.js 20+ and npm, then run scripts/build-agents.sh",
                            missing[0].display()
                        ));
                    }
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "note: {why}; using the TypeScript modules already built"
                    );
                }
            }
            Ok(())
        })
        .clone()
}

/// Whether the test can run; prints why it is skipped otherwise.  (Written
/// to stderr directly: the test harness hides an `eprintln!` of a passing
/// test.)
fn ready(test: &str) -> bool {
    match ts_ready() {
        Ok(()) => true,
        Err(why) => {
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
            false
        }
    }
}

/// `lockstep <args>` with the sibling binaries (and the repository's ONNX
/// Runtime library when the target directory is elsewhere).
fn lockstep() -> Command {
    let mut c = Command::new(bin("lockstep"));
    c.env("LOCKSTEP_WORKER_BIN", bin("lockstep-worker"))
        .env(
            "LOCKSTEP_INFERENCE_HOST_BIN",
            bin("lockstep-inference-host"),
        )
        .env("LOCKSTEP_LOG", "warn,lockstep_supervisor=info");
    let ort = root().join(".deps/onnxruntime/libonnxruntime.so.1.32.0");
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|v| v.is_empty()) && ort.is_file() {
        c.env("ORT_DYLIB_PATH", ort);
    }
    c
}

fn ok(args: &[&str], what: &Path) -> Output {
    let out = lockstep().args(args).arg(what).output().unwrap();
    assert!(
        out.status.success(),
        "lockstep {args:?} {} failed ({}):\n{}{}",
        what.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The mixed manifest, after checking the modules and the model it names.
fn mixed() -> PathBuf {
    for name in [
        "counter",
        "c_counter",
        "sensor",
        "aggregator",
        "ping",
        "pong",
        "inferrer",
    ] {
        agent(name);
    }
    let model = root().join(".deps/models/mlp.onnx");
    assert!(
        model.is_file(),
        "{} missing: run scripts/gen-models.sh",
        model.display()
    );
    root().join("examples/mixed.toml")
}

/// `lockstep run <manifest> --ticks N --workers W --run-dir <dir>`; the
/// output (stdout: summary, stderr: agent log lines).
fn run(manifest: &Path, ticks: u64, workers: usize, dir: &Path) -> Output {
    let out = lockstep()
        .arg("run")
        .arg(manifest)
        .args(["--ticks", &ticks.to_string()])
        .args(["--workers", &workers.to_string()])
        .arg("--no-metrics")
        .arg("--run-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lockstep run {} failed ({}):\n{}",
        manifest.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value after `key` in `text` (up to the next whitespace).
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"));
    text[at + key.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
}

/// The agents' log lines in a supervisor's stderr (tracing's format, with
/// or without colours): `(agent id, line)`.
fn agent_lines(stderr: &[u8]) -> Vec<(u64, String)> {
    let text = String::from_utf8_lossy(stderr);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an ANSI escape sequence up to its final letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    // `<time> <LEVEL> <target>: <line> agent=<id>`
    plain
        .lines()
        .filter_map(|l| {
            let (_, rest) = ["INFO ", "WARN ", "ERROR ", "DEBUG ", "TRACE "]
                .iter()
                .find_map(|level| l.split_once(level))?;
            let (_target, message) = rest.split_once(": ")?;
            let (line, id) = message.rsplit_once(" agent=")?;
            Some((id.trim().parse().ok()?, line.to_owned()))
        })
        .collect()
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i} of {} / {}", a.len(), b.len()),
        None => format!("lengths {} / {}", a.len(), b.len()),
    }
}

/// Rust, C and TypeScript agents in one run: byte-identical journals with 1,
/// 2 and 4 worker processes, every agent live and stepping every tick, no
/// fault, and `verify` re-executes it identically.
#[test]
fn mixed_manifest_is_identical_across_worker_counts() {
    if !ready("mixed_manifest_is_identical_across_worker_counts") {
        return;
    }
    let _w = Watchdog::new("ts-mixed", Duration::from_secs(600));
    let tmp = TempDir::new("ts-mixed");
    let manifest = mixed();
    let mut journals = Vec::new();
    for workers in [1, 2, 4] {
        let dir = tmp.path().join(format!("w{workers}"));
        let out = stdout(&run(&manifest, 300, workers, &dir));
        assert!(
            out.contains("agents live 40  steps 12000 "),
            "every agent steps every tick:\n{out}"
        );
        assert!(out.contains("faults 0"), "{out}");
        let hash = field(&out, "final state hash ").to_owned();
        journals.push((
            workers,
            hash,
            std::fs::read(dir.join("journal.lsj")).unwrap(),
        ));
    }
    let (_, hash1, journal1) = &journals[0];
    for (workers, hash, journal) in &journals[1..] {
        assert_eq!(hash, hash1, "final hash with {workers} workers");
        assert!(
            journal == journal1,
            "journal with {workers} workers differs from 1 worker's: {}",
            first_difference(journal1, journal)
        );
    }
    let verify = stdout(&ok(&["verify"], &tmp.path().join("w2")));
    assert!(verify.starts_with("identical"), "{verify}");
    let inspect = stdout(&ok(&["inspect"], &tmp.path().join("w4")));
    assert!(inspect.contains("(0 faults)"), "{inspect}");
    assert!(
        inspect.contains("ended cleanly after tick 300"),
        "{inspect}"
    );
    let ticks = stdout(&ok(&["log", "--kind", "tick"], &tmp.path().join("w1")));
    assert_eq!(ticks.lines().count(), 300, "{ticks}");
}

/// Fork at a tick between checkpoints (restore the snapshot before it,
/// re-execute, snapshot), resume to the end (restore that snapshot): the
/// final hash equals an uninterrupted run's, and so do the counters' log
/// lines at the last tick, the TypeScript counters' included.
#[test]
fn ts_counter_state_survives_fork_and_resume() {
    if !ready("ts_counter_state_survives_fork_and_resume") {
        return;
    }
    let _w = Watchdog::new("ts-fork", Duration::from_secs(600));
    let tmp = TempDir::new("ts-fork");
    let manifest = mixed();
    let whole = tmp.path().join("whole");
    let out = run(&manifest, 300, 2, &whole);
    let hash = field(&stdout(&out), "final state hash ").to_owned();
    let at_300 = |stderr: &[u8]| -> Vec<(u64, String)> {
        let mut v: Vec<_> = agent_lines(stderr)
            .into_iter()
            .filter(|(_, l)| l.contains("counter: tick 300 "))
            .collect();
        v.sort();
        v
    };
    let expected = at_300(&out.stderr);
    // Agents 4 and 31..=33 run ts_counter.wasm (manifest order).
    for id in [4, 31, 32, 33] {
        assert!(
            expected
                .iter()
                .any(|(a, l)| *a == id && l.starts_with("counter: tick 300 steps 300 ")),
            "TypeScript counter {id} at tick 300: {expected:?}"
        );
    }

    let forked = tmp.path().join("forked");
    let fork = lockstep()
        .arg("fork")
        .arg(&whole)
        .args(["--at", "150", "--into"])
        .arg(&forked)
        .output()
        .unwrap();
    assert!(
        fork.status.success(),
        "fork: {}",
        String::from_utf8_lossy(&fork.stderr)
    );
    let resumed = lockstep()
        .arg("resume")
        .arg(&forked)
        .args(["--until", "300"])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let text = stdout(&resumed);
    assert!(
        text.contains("resumed") && text.contains("at tick 150"),
        "{text}"
    );
    assert_eq!(field(&text, "final state hash "), hash, "{text}");
    assert_eq!(at_300(&resumed.stderr), expected);
    let verify = stdout(&ok(&["verify"], &forked));
    assert!(verify.starts_with("identical"), "{verify}");
}

fn ctl(dir: &Path, args: &[&str]) -> String {
    let out = lockstep().arg("ctl").arg(dir).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The tick of a running supervisor (`ctl status`: `tick N hash …`).
fn current_tick(dir: &Path) -> u64 {
    let status = ctl(dir, &["status"]);
    field(&status, "tick ").parse().unwrap_or(0)
}

fn wait_for_tick(dir: &Path, tick: u64, sup: &mut ChildGuard) {
    let t0 = Instant::now();
    while current_tick(dir) < tick {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run did not reach tick {tick}"
        );
        if let Ok(Some(status)) = sup.child().try_wait() {
            panic!("the run ended early: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(tick, steps)` of the `<prefix>tick T steps S …` lines of agent `id`.
fn counts(lines: &[(u64, String)], id: u64, prefix: &str) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter(|(a, _)| *a == id)
        .filter_map(|(_, l)| {
            let rest = l.strip_prefix(prefix)?.strip_prefix("tick ")?;
            let mut w = rest.split_whitespace();
            let tick = w.next()?.parse().ok()?;
            let steps = w.nth(1)?.parse().ok()?;
            Some((tick, steps))
        })
        .collect()
}

/// `lockstep ctl <dir> upgrade` of a `--forever` run's TypeScript counter to
/// version 2: applied at a tick boundary, `agent_migrate` runs, and the
/// count goes on from where version 1 left it (the untouched twin counts
/// alike); the journaled upgrade replays.
#[test]
fn ts_counter_hot_swap_keeps_its_count() {
    if !ready("ts_counter_hot_swap_keeps_its_count") {
        return;
    }
    let _w = Watchdog::new("ts-upgrade", Duration::from_secs(600));
    let tmp = TempDir::new("ts-upgrade");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 8\ncheckpoint_every = 100\nretain_checkpoints = 100000\n\n[[agents]]\nname = \"counter\"\n\
             module = \"{}\"\ncount = 2\n",
            ts_module("counter").display()
        ),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let log = tmp.path().join("stderr.log");
    let mut sup = ChildGuard::new(
        lockstep()
            .arg("run")
            .arg(&manifest)
            .args(["--forever", "--no-metrics", "--run-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_tick(&dir, 150, &mut sup);
    let v2 = ts_module("counter_v2");
    let answer = ctl(&dir, &["upgrade", "counter-0", v2.to_str().unwrap()]);
    assert!(
        answer.starts_with("applied at tick") && answer.contains("upgrades to"),
        "{answer}"
    );
    let upgraded_at: u64 = field(&answer, "applied at tick ")
        .trim_end_matches(':')
        .parse()
        .unwrap();
    wait_for_tick(&dir, upgraded_at + 250, &mut sup);
    assert!(ctl(&dir, &["stop"]).starts_with("stopping"));
    let status = sup.child().wait().unwrap();
    assert!(status.success(), "{status:?}");

    let lines = agent_lines(&std::fs::read(&log).unwrap());
    let (v0, v1) = (1, 2); // counter-0 (upgraded) and counter-1
    assert!(
        lines
            .iter()
            .any(|(a, l)| *a == v0 && l == "counter v2: migrated from ABI 0x00010000"),
        "{lines:?}"
    );
    let before = counts(&lines, v0, "counter: ");
    let after = counts(&lines, v0, "counter v2: ");
    let twin = counts(&lines, v1, "counter: ");
    assert!(
        !before.is_empty() && after.len() >= 2,
        "{before:?} {after:?}"
    );
    assert!(before.iter().all(|(t, _)| *t < upgraded_at));
    assert!(after.iter().all(|(t, _)| *t >= upgraded_at));
    // Steps run on from version 1's count: the same as the twin's at the
    // same ticks, which a fresh instance would not have.
    let (t1, s1) = before[0];
    for (t, s) in before.iter().chain(&after) {
        assert_eq!(
            *s,
            s1 + (t - t1),
            "counter-0 at tick {t}: {before:?} {after:?}"
        );
        assert!(twin.contains(&(*t, *s)), "counter-1 at tick {t}: {twin:?}");
    }

    let inputs = stdout(&ok(&["log", "--kind", "input"], &dir));
    assert!(inputs.contains(" input upgrade "), "{inputs}");
    let inspect = stdout(&ok(&["inspect"], &dir));
    assert!(inspect.contains("(0 faults)"), "{inspect}");
    let verify = stdout(&ok(&["verify"], &dir));
    assert!(verify.starts_with("identical"), "{verify}");
}

/// The same society built from the Rust examples and from their TypeScript
/// twins: every agent logs the same lines (the same readings, summaries,
/// echoes, tasks and inference answers), and the runs deliver the same
/// messages tick by tick.
#[test]
fn ts_twins_behave_like_the_rust_examples() {
    if !ready("ts_twins_behave_like_the_rust_examples") {
        return;
    }
    let _w = Watchdog::new("ts-twins", Duration::from_secs(600));
    let tmp = TempDir::new("ts-twins");
    mixed();
    let society = |prefix: &str| -> String {
        let m = |name: &str| root().join(format!("target/agents/{prefix}{name}.wasm"));
        format!(
            "[run]\nseed = 5\n\n\
             [[agents]]\nname = \"coordinator\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"worker\"\nmodule = \"{}\"\ncount = 3\n\n\
             [[agents]]\nname = \"sensor\"\nmodule = \"{}\"\ncount = 4\n\n\
             [[agents]]\nname = \"aggregator\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"ping\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"pong\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 2\n\n\
             [[models]]\nid = \"mlp\"\nversion = \"1\"\npath = \"{}\"\n",
            m("coordinator").display(),
            m("counter").display(),
            m("sensor").display(),
            m("aggregator").display(),
            m("ping").display(),
            m("pong").display(),
            m("inferrer").display(),
            root().join(".deps/models/mlp.onnx").display(),
        )
    };
    let mut results = Vec::new();
    for (lang, prefix) in [("rust", ""), ("ts", "ts_")] {
        let manifest = tmp.path().join(format!("{lang}.toml"));
        std::fs::write(&manifest, society(prefix)).unwrap();
        let dir = tmp.path().join(lang);
        let out = run(&manifest, 300, 2, &dir);
        let lines = agent_lines(&out.stderr);
        let ticks = stdout(&ok(&["log", "--kind", "tick"], &dir));
        // Steps, calls and messages per tick (hashes and fuel differ).
        let traffic: Vec<String> = ticks
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter(|w| {
                        ["steps=", "calls=", "messages=", "dropped=", "faults="]
                            .iter()
                            .any(|k| w.starts_with(k))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        results.push((lines, traffic));
    }
    let (rust, ts) = (&results[0], &results[1]);
    assert!(rust.0.len() > 100, "{:?}", rust.0);
    for topic in [
        "coordinator: round 60 scheduled 3 tasks",
        "aggregator: tick 300 window 40 readings",
        "ping: 100 echoes",
        "inferrer: request 50 argmax",
    ] {
        assert!(
            ts.0.iter().any(|(_, l)| l.starts_with(topic)),
            "no `{topic}…` line: {:?}",
            ts.0
        );
    }
    if let Some(i) = (0..rust.0.len().max(ts.0.len())).find(|&i| rust.0.get(i) != ts.0.get(i)) {
        panic!(
            "log line {i} differs: Rust {:?}, TypeScript {:?}",
            rust.0.get(i),
            ts.0.get(i)
        );
    }
    assert_eq!(rust.1, ts.1, "per-tick traffic");
}
