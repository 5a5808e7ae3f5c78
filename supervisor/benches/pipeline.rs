//! Inference pipelined across ticks (no Criterion): `cargo build --release
//! --workspace --bins && cargo bench -p lockstep-supervisor --bench
//! pipeline`.  Results: docs/benchmarks.md.
//!
//! The real supervisor, workers and inference host, with Google's Magika
//! model (about 10 ms per request on a CPU, `max_batch = 1`), in the same
//! run, configurations interleaved round by round:
//!
//! * **demo** — `examples/demo.toml` as shipped (Magika answers 64 ticks
//!   after the question) and with `latency_ticks = 1` (the next tick);
//! * **synthetic** — 1,000 counters and a classifier asking Magika every
//!   256 ticks, with `latency_ticks` 1, 4 and 128 (about 10 ms of ticks),
//!   and the same manifest with a counter instead of the classifier (no
//!   inference at all) as the baseline.
//!
//! Per configuration: tick p50, p99 and max, ticks per second, ticks above
//! 10 ms, and the time ticks spent waiting for answers.  Needs
//! `target/agents` and `.deps/models` (scripts/test.sh or scripts/demo.sh
//! make them).  Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 3),
//! `LOCKSTEP_BENCH_TICKS` (default 2,000).

use lockstep_bench_support::knobs::env_or;
use lockstep_bench_support::paths::{Scratch, workspace_root};
use lockstep_bench_support::stat::{Samples, percentile};
use lockstep_bench_support::table::Align;
use lockstep_bench_support::{Table, preamble};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::run::{Run, RunConfig};
use lockstep_supervisor::telemetry::{TelemetryHook, TickTelemetry};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Collects each tick's wait for inference answers.
#[derive(Clone, Default)]
struct Waits(Arc<Mutex<Vec<u64>>>);

impl TelemetryHook for Waits {
    fn on_tick(&mut self, t: &TickTelemetry) {
        if let Ok(mut v) = self.0.lock() {
            v.push(t.infer_wait_us);
        }
    }
}

struct Round {
    p50: f64,
    p99: f64,
    max: f64,
    per_s: f64,
    over_10ms: f64,
    wait_ms: f64,
}

fn synthetic(latency: Option<u32>) -> String {
    let agents = workspace_root().join("target/agents");
    let magika = workspace_root().join(".deps/models/magika.onnx");
    let mut s = format!(
        "[run]\nseed = 11\nworkers = 2\ncheckpoint_every = 0\n\n\
         [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 1000\nmemory = \"1MiB\"\n\n",
        agents.join("counter.wasm").display()
    );
    match latency {
        Some(d) => s.push_str(&format!(
            "[[agents]]\nname = \"classifier\"\nmodule = \"{}\"\nmemory = \"1MiB\"\nfuel = 1000000\n\n\
             [[models]]\nid = \"magika\"\nversion = \"standard_v3_3\"\npath = \"{}\"\nmax_batch = 1\nlatency_ticks = {d}\n",
            agents.join("classifier.wasm").display(),
            magika.display()
        )),
        None => s.push_str(&format!(
            "[[agents]]\nname = \"classifier\"\nmodule = \"{}\"\nmemory = \"1MiB\"\n",
            agents.join("counter.wasm").display()
        )),
    }
    s
}

fn demo(latency: u32) -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("examples/demo.toml")).expect("demo.toml");
    text.replace("latency_ticks = 64", &format!("latency_ticks = {latency}"))
}

fn run_one(scratch: &Path, name: &str, text: &str, base: &Path, ticks: u64) -> Round {
    let manifest = Manifest::parse(text, "bench.toml", base).expect("manifest");
    let dir = scratch.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = RunConfig::new(manifest, text.to_owned(), dir.clone()).expect("config");
    cfg.board = false;
    cfg.metrics = false;
    cfg.control_socket = false;
    cfg.module_cache = None;
    cfg.checkpoint_every = 0;
    cfg.inference.device = "cpu".into();
    let mut run = Run::start(cfg).expect("start");
    let waits = Waits::default();
    run.register_telemetry_hook(Box::new(waits.clone()));
    // Warm-up: the first questions and the host's first runs.
    for _ in 0..64 {
        run.tick().expect("tick");
    }
    let mut lat = Vec::with_capacity(ticks as usize);
    let t0 = Instant::now();
    for _ in 0..ticks {
        let t = Instant::now();
        run.tick().expect("tick");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let wall = t0.elapsed().as_secs_f64();
    run.finish_without_end().expect("finish");
    let _ = std::fs::remove_dir_all(&dir);
    let wait_us: u64 = waits.0.lock().map(|v| v.iter().skip(64).sum()).unwrap_or(0);
    let over = lat.iter().filter(|&&l| l > 10_000.0).count() as f64;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| percentile(&sorted, p).unwrap_or(f64::NAN);
    Round {
        p50: q(0.5),
        p99: q(0.99),
        max: q(1.0),
        per_s: ticks as f64 / wall,
        over_10ms: over,
        wait_ms: wait_us as f64 / 1e3,
    }
}

fn main() {
    let rounds: usize = env_or("LOCKSTEP_BENCH_RUNS", 3);
    let ticks: u64 = env_or("LOCKSTEP_BENCH_TICKS", 2_000);
    println!("# Inference pipeline benchmark");
    preamble();
    for need in ["target/agents/classifier.wasm", ".deps/models/magika.onnx"] {
        if !workspace_root().join(need).is_file() {
            eprintln!("SKIPPED pipeline bench: {need} is missing (run scripts/demo.sh first)");
            return;
        }
    }
    let dir = Scratch::new("pipeline");
    let scratch = dir.path().to_path_buf();
    let examples = workspace_root().join("examples");
    let configs: Vec<(String, String, PathBuf)> = vec![
        ("demo, latency_ticks = 1".into(), demo(1), examples.clone()),
        (
            "demo, latency_ticks = 64 (as shipped)".into(),
            demo(32),
            examples,
        ),
        (
            "synthetic, no inference".into(),
            synthetic(None),
            scratch.clone(),
        ),
        (
            "synthetic, latency_ticks = 1".into(),
            synthetic(Some(1)),
            scratch.clone(),
        ),
        (
            "synthetic, latency_ticks = 4".into(),
            synthetic(Some(4)),
            scratch.clone(),
        ),
        (
            "synthetic, latency_ticks = 128".into(),
            synthetic(Some(128)),
            scratch.clone(),
        ),
    ];
    println!("{ticks} ticks per run after 64 warm-up ticks · {rounds} rounds");
    let mut samples: Samples<(usize, &str)> = Samples::default();
    let t0 = Instant::now();
    for r in 0..rounds {
        for (i, (name, text, base)) in configs.iter().enumerate() {
            let x = run_one(&scratch, &format!("c{i}"), text, base, ticks);
            println!(
                "round {r} {name}: p50 {:.0} µs p99 {:.0} µs max {:.0} µs, {:.0} ticks/s, {} ticks > 10 ms, waited {:.1} ms",
                x.p50, x.p99, x.max, x.per_s, x.over_10ms, x.wait_ms
            );
            for (k, v) in [
                ("p50", x.p50),
                ("p99", x.p99),
                ("max", x.max),
                ("per_s", x.per_s),
                ("over", x.over_10ms),
                ("wait", x.wait_ms),
            ] {
                samples.push((i, k), v);
            }
        }
    }
    let s = |i: usize, k: &str| samples.stat(&(i, k));
    let mut table = Table::new([
        "configuration",
        "tick p50 µs",
        "tick p99 µs",
        "max µs",
        "ticks/s",
        "ticks > 10 ms",
        "waited for answers, ms",
    ])
    .align(0, Align::Left);
    for (i, (name, _, _)) in configs.iter().enumerate() {
        table.row([
            name.clone(),
            s(i, "p50").show(0),
            s(i, "p99").show(0),
            s(i, "max").show(0),
            s(i, "per_s").show(0),
            s(i, "over").show(0),
            s(i, "wait").show(1),
        ]);
    }
    print!("\n{table}");
    println!("\ntotal bench time: {:.1} s", t0.elapsed().as_secs_f64());
}
