//! Scale through the CLI a user runs (no Criterion): `cargo build --release
//! --workspace --bins && cargo bench -p lockstep-supervisor --bench scale`.
//! Results: docs/benchmarks.md.
//!
//! For each population (10 … 100,000 no-op agents of 64 KiB, 2 workers) it
//! runs `lockstep run MANIFEST --no-board --no-metrics --json` — the
//! journal on, as a user runs it — and records the run's tick p50 and p99,
//! the start-up time (process start to the first tick: spawning the
//! workers and instantiating every agent), and the peak resident memory of
//! the supervisor and its children together, per agent.  The Node.js peer
//! of the specification's architecture (`../shared/peers/node-seed-tick`,
//! Atomics variant) runs the same sizes in the same round; where it cannot
//! run a size the table says so.
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 3), `LOCKSTEP_SCALE_SIZES`
//! (default `10,100,1000,10000,100000`), `LOCKSTEP_NODE_PEER`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/bench_support/noop.rs"]
mod noop;
use noop::NOOP_WAT;

#[path = "../../tests/bench_support/stat.rs"]
mod stat;
use stat::Stat;

#[path = "../../tests/bench_support/table.rs"]
mod table;
use table::thousands;

#[path = "../../tests/bench_support/node_peer.rs"]
mod node_peer;
use node_peer::NodePeer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Ticks per run for `n` agents (the Node.js peer measures as many).
fn ticks_for(n: u64) -> u64 {
    match n {
        0..=100 => 2000,
        101..=1000 => 500,
        _ => 200,
    }
}

/// One CLI run's measurements.
struct CliRun {
    p50: f64,
    p99: f64,
    startup_ms: f64,
    rss_per_agent_kib: f64,
}

/// Resident set size (KiB) of `pid` and every descendant.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                stack.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    total
}

fn run_cli(scratch: &Path, n: u64) -> Result<CliRun, String> {
    let manifest = scratch.join(format!("scale-{n}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 1\nticks = {}\nworkers = 2\n\n[[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {n}\nmemory = \"64KiB\"\n",
            ticks_for(n)
        ),
    )
    .map_err(|e| e.to_string())?;
    let dir = scratch.join(format!("run-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let mut child = Command::new(repo().join("target/release/lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--no-board", "--no-metrics", "--json", "--run-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("lockstep: {e}"))?;
    let pid = child.id();
    let mut peak = 0;
    let deadline = t0 + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("no result in 10 minutes".into());
        }
        peak = peak.max(tree_rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    };
    let total = t0.elapsed();
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("exit {status}: {last}"));
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| e.to_string())?;
    let f = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    Ok(CliRun {
        p50: f("tick_p50_us"),
        p99: f("tick_p99_us"),
        startup_ms: total.as_secs_f64() * 1e3 - f("wall_ms"),
        rss_per_agent_kib: peak as f64 / n as f64,
    })
}

fn main() {
    let rounds: usize = std::env::var("LOCKSTEP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sizes: Vec<u64> = std::env::var("LOCKSTEP_SCALE_SIZES")
        .unwrap_or_else(|_| "10,100,1000,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if !repo().join("target/release/lockstep").is_file() {
        eprintln!(
            "SKIPPED scale bench: target/release/lockstep is missing (cargo build --release --workspace --bins)"
        );
        return;
    }
    let scratch = std::env::temp_dir().join(format!("lockstep-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    std::fs::write(scratch.join("noop.wat"), NOOP_WAT).expect("noop.wat");
    let peer = match NodePeer::prepare(&scratch) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIPPED the Node.js peer: {why}");
            None
        }
    };
    println!("# Scale through the CLI");
    println!(
        "machine: nproc {} · {rounds} rounds · lockstep run --no-board --no-metrics (journal on), 2 workers, no-op agents of 64 KiB",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // (size, what) → samples; failures by (size, who).
    let mut samples: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    let mut failures: BTreeMap<(u64, &str), String> = BTreeMap::new();
    for r in 0..rounds {
        for &n in &sizes {
            match run_cli(&scratch, n) {
                Ok(x) => {
                    println!(
                        "round {r} lockstep N={n}: p50 {:.0} µs p99 {:.0} µs, start-up {:.0} ms, peak RSS {:.1} KiB/agent",
                        x.p50, x.p99, x.startup_ms, x.rss_per_agent_kib
                    );
                    for (k, v) in [
                        ("p50", x.p50),
                        ("p99", x.p99),
                        ("start", x.startup_ms),
                        ("rss", x.rss_per_agent_kib),
                    ] {
                        samples.entry((n, k)).or_default().push(v);
                    }
                }
                Err(e) => {
                    println!("round {r} lockstep N={n}: fails: {e}");
                    failures.insert((n, "lockstep"), e);
                }
            }
            if let Some(p) = &peer {
                match p.run(&[n]) {
                    Ok(res) => {
                        if let Some((p50, p99)) = res.get(&("atomics".to_owned(), n)) {
                            println!("round {r} node N={n}: p50 {p50:.0} µs p99 {p99:.0} µs");
                            samples.entry((n, "node50")).or_default().push(*p50);
                            samples.entry((n, "node99")).or_default().push(*p99);
                        }
                    }
                    Err(e) => {
                        let short: String = e
                            .lines()
                            .rev()
                            .find(|l| l.contains("Error"))
                            .unwrap_or(&e)
                            .chars()
                            .take(120)
                            .collect();
                        println!("round {r} node N={n}: fails: {short}");
                        failures.insert((n, "node"), short);
                    }
                }
            }
        }
    }
    println!();
    println!(
        "| agents | lockstep p50 µs | p99 µs | start-up ms | peak RSS KiB/agent | Node.js p50 µs | p99 µs | p50 ratio (node / lockstep) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let get = |k: &str| samples.get(&(n, k)).map(|v| Stat::of(v));
        let cell = |k: &str, who: &str, prec: usize| match get(k) {
            Some(s) => s.show(prec),
            None => failures
                .get(&(n, who))
                .map_or_else(|| "–".into(), |e| format!("fails ({e})")),
        };
        let ratio = match (get("node50"), get("p50")) {
            (Some(a), Some(b)) => format!("{:.2}", a.med / b.med),
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {ratio} |",
            thousands(n),
            cell("p50", "lockstep", 0),
            cell("p99", "lockstep", 0),
            cell("start", "lockstep", 0),
            cell("rss", "lockstep", 1),
            cell("node50", "node", 0),
            cell("node99", "node", 0),
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
