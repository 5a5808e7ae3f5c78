//! Scale through the CLI a user runs (no Criterion): `cargo build --release
//! --workspace --bins && cargo bench -p lockstep-supervisor --bench scale`.
//! Results: docs/benchmarks.md, "Scale through the CLI".
//!
//! For each population (10 … 100,000 no-op agents of 64 KiB, 2 workers) it
//! runs `lockstep run MANIFEST --no-board --no-metrics --json --warmup W`
//! — the journal on, as a user runs it — and records the run's tick p50
//! and p99 after the peer's warm-up ticks (W: 200 up to 100 agents, 50 up
//! to 1,000, 20 above; then 2,000, 500 and 200 measured ticks, as the peer),
//! the start-up time (process start to the first tick: spawning the
//! workers and instantiating every agent), and the peak resident memory of
//! the supervisor and its children together, per agent.  The Node.js peer
//! of the specification's architecture (`../shared/peers/node-seed-tick`,
//! Atomics variant) runs the same sizes in the same round; where it cannot
//! run a size the table says so.
//!
//! The table is printed; with `LOCKSTEP_BENCH_WRITE_DOCS=1`, and only when
//! every default size ran, it also replaces the table between the
//! `scale-table` markers of docs/benchmarks.md (with the date, the rounds
//! and the machine line).
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 3), `LOCKSTEP_SCALE_SIZES`
//! (default `10,100,1000,10000,100000`), `LOCKSTEP_NODE_PEER`,
//! `LOCKSTEP_BENCH_WRITE_DOCS`.

use lockstep_bench_support::docs::{self, utc_minute, write_docs_requested};
use lockstep_bench_support::knobs::{env_list, env_or};
use lockstep_bench_support::node_peer::NodePeer;
use lockstep_bench_support::paths::{Scratch, target_bin, workspace_root};
use lockstep_bench_support::process::tree_rss_kib;
use lockstep_bench_support::table::thousands_f64;
use lockstep_bench_support::{Machine, NOOP_WAT, Stat, Table, preamble, thousands};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The sizes a full run measures (and the docs' table shows).
const SIZES: [u64; 5] = [10, 100, 1_000, 10_000, 100_000];
/// The markers of the table in docs/benchmarks.md.
const BEGIN: &str = "<!-- scale-table:begin -->";
const END: &str = "<!-- scale-table:end -->";

/// (Warm-up, measured) ticks for `n` agents: the Node.js peer's.  The
/// CLI runs both and leaves the warm-up out of its p50 and p99
/// (`--warmup`), as the peer does.
fn ticks_for(n: u64) -> (u64, u64) {
    match n {
        0..=100 => (200, 2000),
        101..=1000 => (50, 500),
        _ => (20, 200),
    }
}

/// One CLI run's measurements.
struct CliRun {
    p50: f64,
    p99: f64,
    startup_ms: f64,
    rss_per_agent_kib: f64,
}

fn run_cli(scratch: &Path, n: u64) -> Result<CliRun, String> {
    let manifest = scratch.join(format!("scale-{n}.toml"));
    let (warmup, measured) = ticks_for(n);
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 1\nticks = {}\nworkers = 2\n\n[[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {n}\nmemory = \"64KiB\"\n",
            warmup + measured
        ),
    )
    .map_err(|e| e.to_string())?;
    let dir = scratch.join(format!("run-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let mut child = Command::new(target_bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--no-board", "--no-metrics", "--json", "--warmup"])
        .arg(warmup.to_string())
        .arg("--run-dir")
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

/// The table of a run, as it stands in the docs.
fn table(
    sizes: &[u64],
    samples: &BTreeMap<(u64, &str), Vec<f64>>,
    failures: &BTreeMap<(u64, &str), String>,
) -> Table {
    let mut t = Table::new([
        "agents",
        "lockstep p50 µs",
        "p99 µs",
        "start-up ms",
        "peak RSS KiB/agent",
        "Node.js p50 µs",
        "p99 µs",
        "Node.js / lockstep (p50)",
    ]);
    for &n in sizes {
        let get = |k: &str| samples.get(&(n, k)).map(|v| Stat::of(v));
        let cell = |k: &str, who: &str, prec: usize| match get(k) {
            Some(s) => s.show_with(|x| thousands_f64(x, prec)),
            None => failures
                .get(&(n, who))
                .map_or_else(|| "–".into(), |e| format!("fails ({e})")),
        };
        let ratio = match (get("node50"), get("p50")) {
            (Some(a), Some(b)) => format!("{:.2}", a.med / b.med),
            _ => "–".into(),
        };
        t.row([
            thousands(n),
            cell("p50", "lockstep", 0),
            cell("p99", "lockstep", 0),
            cell("start", "lockstep", 0),
            cell("rss", "lockstep", 1),
            cell("node50", "node", 0),
            cell("node99", "node", 0),
            ratio,
        ]);
    }
    t
}

/// Writes the table into docs/benchmarks.md (between [`BEGIN`] and [`END`]).
fn write_docs(machine: &Machine, rounds: usize, started: SystemTime, table: &Table) {
    let doc = workspace_root().join("docs/benchmarks.md");
    let content = format!(
        "`cargo bench -p lockstep-supervisor --bench scale`, {}, {rounds} rounds.\n\
         Machine: {machine}.\n\n{table}",
        utc_minute(started)
    );
    match docs::write_between(&doc, BEGIN, END, &content) {
        Ok(()) => println!("\nwrote the table into {}", doc.display()),
        Err(e) => eprintln!("\nthe table was not written into the docs: {e}"),
    }
}

fn main() {
    let rounds: usize = env_or("LOCKSTEP_BENCH_RUNS", 3);
    let sizes: Vec<u64> = env_list("LOCKSTEP_SCALE_SIZES", SIZES.to_vec());
    println!("# Scale through the CLI");
    let machine = preamble();
    let lockstep = target_bin("lockstep");
    if !lockstep.is_file() {
        eprintln!(
            "SKIPPED scale bench: {} is missing (cargo build --release --workspace --bins)",
            lockstep.display()
        );
        return;
    }
    let started = SystemTime::now();
    let dir = Scratch::new("scale");
    let scratch = dir.path();
    std::fs::write(scratch.join("noop.wat"), NOOP_WAT).expect("noop.wat");
    let peer = match NodePeer::prepare(scratch) {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIPPED the Node.js peer: {why}");
            None
        }
    };
    println!(
        "{rounds} rounds · lockstep run --no-board --no-metrics (journal on), 2 workers, no-op agents of 64 KiB"
    );
    // (size, what) → samples; failures by (size, who).
    let mut samples: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    let mut failures: BTreeMap<(u64, &str), String> = BTreeMap::new();
    for r in 0..rounds {
        for &n in &sizes {
            match run_cli(scratch, n) {
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
    let table = table(&sizes, &samples, &failures);
    println!();
    print!("{table}");
    if write_docs_requested() {
        // Every size of a full run, each run by Lockstep in every round.
        let complete = SIZES.iter().all(|n| {
            sizes.contains(n) && samples.get(&(*n, "p50")).is_some_and(|v| v.len() == rounds)
        });
        if complete && rounds > 0 {
            write_docs(&machine, rounds, started, &table);
        } else {
            eprintln!(
                "\nthe table was not written into the docs: not every size of {SIZES:?} ran in every round"
            );
        }
    }
}
