//! Workers on other machines, through the CLI a user runs (no Criterion):
//! `cargo build --release --workspace --bins && cargo bench -p
//! lockstep-supervisor --bench scale_out`.  Results: docs/benchmarks.md.
//!
//! A real `nats-server` (scripts/fetch-nats-server.sh) and two
//! `lockstep-node` processes on this machine stand in for two more
//! machines: what is measured is the cost of the NATS hop itself (bridge →
//! NATS → node → worker and back, every tick), not a network.  For each
//! population of no-op agents (64 KiB each) it runs `lockstep run --json`
//! with 2 workers placed as
//!
//! * `local`     — both here (shared-memory rings only: the baseline);
//! * `a,b`       — both on nodes;
//! * `a,local`   — one of each;
//! * `local+archive` — both here, the run mirrored live into JetStream;
//!
//! alternating the placements within each round, and prints the median
//! (range) of the tick p50, p99 and the wall time over the rounds.
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 3), `LOCKSTEP_SCALE_SIZES`
//! (default `1000,10000`).

use lockstep_bench_support::knobs::{env_list, env_or};
use lockstep_bench_support::paths::{Scratch, target_bin, workspace_root};
use lockstep_bench_support::stat::Samples;
use lockstep_bench_support::table::Align;
use lockstep_bench_support::{NOOP_WAT, Table, preamble, thousands};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the process on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats(scratch: &Path) -> Result<(Guard, String), String> {
    let bin = workspace_root().join(".deps/nats/nats-server");
    if !bin.is_file() {
        return Err(format!(
            "{} missing (scripts/fetch-nats-server.sh)",
            bin.display()
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(scratch.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let g = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nats-server did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((g, format!("nats://127.0.0.1:{port}")))
}

fn start_node(url: &str, name: &str) -> Result<Guard, String> {
    let mut child = Command::new(target_bin("lockstep-node"))
        .args(["serve", "--nats", url, "--name", name])
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("lockstep-node: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let g = Guard(child);
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    if !line.contains("ready") {
        return Err(format!("node {name} did not come up: {line:?}"));
    }
    Ok(g)
}

/// One run: (tick p50 µs, tick p99 µs, wall ms).
fn run(scratch: &Path, n: u64, ticks: u64, extra: &[&str]) -> Result<(f64, f64, f64), String> {
    let manifest = scratch.join(format!("noop-{n}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = 1\nticks = {ticks}\nworkers = 2\n\n[[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {n}\nmemory = \"64KiB\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let dir = scratch.join(format!("run-{n}-{}", extra.len()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(target_bin("lockstep"))
        .arg("run")
        .arg(&manifest)
        .args(["--no-board", "--no-metrics", "--json", "--run-dir"])
        .arg(&dir)
        .args(extra)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "exit {}: {}",
            out.status,
            err.lines().last().unwrap_or("")
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let f = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    Ok((f("tick_p50_us"), f("tick_p99_us"), f("wall_ms")))
}

fn main() {
    let rounds: usize = env_or("LOCKSTEP_BENCH_RUNS", 3);
    let sizes: Vec<u64> = env_list("LOCKSTEP_SCALE_SIZES", vec![1_000, 10_000]);
    println!("# Workers on other machines (NATS on loopback)");
    preamble();
    for b in ["lockstep", "lockstep-node", "lockstep-worker"] {
        let p = target_bin(b);
        if !p.is_file() {
            eprintln!(
                "SKIPPED scale-out bench: {} is missing (cargo build --release --workspace --bins)",
                p.display()
            );
            return;
        }
    }
    let dir = Scratch::new("scale-out");
    let scratch = dir.path();
    std::fs::write(scratch.join("noop.wat"), NOOP_WAT).expect("noop.wat");
    let (_nats, url) = match start_nats(scratch) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIPPED scale-out bench: {why}");
            return;
        }
    };
    let nodes = ["a", "b"].map(|n| start_node(&url, n));
    if let Some(Err(e)) = nodes.iter().find(|n| n.is_err()) {
        eprintln!("SKIPPED scale-out bench: {e}");
        return;
    }
    let placements: [(&str, Vec<&str>); 4] = [
        ("local", vec![]),
        ("a,b", vec!["--nats", &url, "--nodes", "a,b"]),
        ("a,local", vec!["--nats", &url, "--nodes", "a,local"]),
        ("local+archive", vec!["--nats", &url, "--archive", "bench"]),
    ];
    println!(
        "{rounds} rounds · lockstep run --no-board --no-metrics, 2 workers, no-op agents of 64 KiB"
    );
    let mut samples: Samples<(u64, &str, &str)> = Samples::default();
    for r in 0..rounds {
        for &n in &sizes {
            let ticks = if n <= 1000 { 500 } else { 200 };
            for (label, extra) in &placements {
                match run(scratch, n, ticks, extra) {
                    Ok((p50, p99, wall)) => {
                        println!(
                            "round {r} N={n} {label}: p50 {p50:.0} µs p99 {p99:.0} µs wall {wall:.0} ms"
                        );
                        for (k, v) in [("p50", p50), ("p99", p99), ("wall", wall)] {
                            samples.push((n, label, k), v);
                        }
                    }
                    Err(e) => println!("round {r} N={n} {label}: FAILED {e}"),
                }
            }
        }
    }
    let mut t = Table::new([
        "agents",
        "workers on",
        "tick p50 µs",
        "tick p99 µs",
        "wall ms",
        "p50 vs local",
    ])
    .align(1, Align::Left);
    for &n in &sizes {
        let local = samples.stat(&(n, "local", "p50"));
        for (label, _) in &placements {
            let s = |k: &str| samples.stat(&(n, *label, k));
            let p50 = s("p50");
            t.row([
                thousands(n),
                (*label).to_owned(),
                p50.show(0),
                s("p99").show(0),
                s("wall").show(0),
                format!("{:.2}×", p50.med / local.med),
            ]);
        }
    }
    print!("\n{t}");
}
