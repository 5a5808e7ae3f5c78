//! What the children's sandbox costs (no Criterion): `cargo build --release
//! --workspace --bins && cargo bench -p lockstep-supervisor --bench
//! sandbox`.  Results: docs/benchmarks.md.
//!
//! Measured in the same run, every configuration interleaved round by
//! round so that each sees the same machine:
//!
//! 1. **spawn to ready** — from `fork`/`exec` of a worker and of the
//!    inference host to its `Ready` (handshake done, every layer in force;
//!    for the host also ONNX Runtime loaded and self-tested), with every
//!    layer on (its own cgroup included) and with `--sandbox off`;
//! 2. **tick latency** — p50 and p99 of `Run::tick()` for 10, 1,000 and
//!    10,000 no-op agents on 2 workers: every layer on (the default: no
//!    CPU limit, so workers stay in the supervisor's CPU group), every
//!    layer on with a CPU weight per worker (each worker its own CPU
//!    group), and `--sandbox off`.
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 5), `LOCKSTEP_BENCH_QUICK=1`
//! (1 round, fewer ticks), `LOCKSTEP_BENCH_AGENTS=10,1000,10000`,
//! `LOCKSTEP_BENCH_SPAWNS` (spawns per round and configuration, default 10).
//! Every figure is the median over rounds, with the min–max across rounds.

use lockstep_bench_support::knobs::{env_list, env_or, quick};
use lockstep_bench_support::paths::{Scratch, target_bin};
use lockstep_bench_support::stat::{Samples, quantile};
use lockstep_bench_support::table::Align;
use lockstep_bench_support::{NOOP_WAT, Table, preamble};
use lockstep_common::SandboxMode;
use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::jail::{ChildClass, Jails, SandboxSettings};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::reaper::Reaper;
use lockstep_supervisor::run::{Run, RunConfig};
use shm_protocol::WaitPolicy;
use shm_protocol::control::Role;
use shm_protocol::segment::SegmentConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

fn settings(on: bool) -> SandboxSettings {
    let mut s = SandboxSettings::default();
    if !on {
        s.mode = SandboxMode::Off;
    }
    s
}

/// Milliseconds from spawn to `Ready` of one child of `class`.
fn spawn_to_ready(jails: &mut Jails, reaper: &Reaper, class: ChildClass, n: u64) -> f64 {
    let (role, program, name, extra): (Role, PathBuf, String, Vec<String>) = match class {
        ChildClass::Worker => (
            Role::Worker,
            target_bin("lockstep-worker"),
            format!("worker-{n}"),
            Vec::new(),
        ),
        ChildClass::Inference => (
            Role::InferenceHost,
            target_bin("lockstep-inference-host"),
            "inference-host".into(),
            vec!["--device".into(), "cpu".into()],
        ),
    };
    let prepared = jails.prepare(class, &name, None).expect("prepare");
    let mut args: Vec<std::ffi::OsString> = extra.iter().map(Into::into).collect();
    args.extend(prepared.args);
    let spec = ChildSpec {
        role,
        name,
        program,
        args,
        rings: SegmentConfig::default(),
        policy: WaitPolicy::ADAPTIVE,
        env: prepared.env,
        cgroup: prepared.cgroup,
        hang_timeout: None,
    };
    let t = Instant::now();
    let mut child = Child::spawn(&spec, reaper).expect("spawn");
    child.handshake(Duration::from_secs(60)).expect("ready");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    child.shutdown(Duration::from_secs(10)).expect("shutdown");
    ms
}

/// The tick section's configurations.
const TICK_MODES: [&str; 3] = ["on", "on+cpu", "off"];

/// (p50, p99) µs of `Run::tick()` for `n` no-op agents on 2 workers, in
/// configuration `mode` (one of [`TICK_MODES`]).
fn tick_latency(dir: &Path, n: u64, mode: &str, quick: bool) -> (f64, f64) {
    let on = mode != "off";
    let text = format!(
        "[run]\nseed = 42\nworkers = 2\ncheckpoint_every = 0\n\n\
         [[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {n}\nmemory = \"1MiB\"\n"
    );
    let manifest = Manifest::parse(&text, "bench.toml", dir).expect("manifest");
    let run_dir = dir.join(format!("run-{n}-{mode}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut cfg = RunConfig::new(manifest, text, run_dir.clone()).expect("config");
    cfg.board = false;
    cfg.metrics = false;
    cfg.control_socket = false;
    cfg.module_cache = None;
    cfg.sandbox = SandboxSettings {
        worker_address_space: cfg.sandbox.worker_address_space,
        ..settings(on)
    };
    if mode == "on+cpu" {
        cfg.sandbox.worker.cpu_weight = Some(100);
    }
    let mut run = Run::start(cfg).expect("start");
    let (warm, timed) = match (n, quick) {
        (_, true) => (20, 100),
        (n, _) if n >= 10_000 => (20, 200),
        _ => (100, 2_000),
    };
    for _ in 0..warm {
        run.tick().expect("tick");
    }
    let mut lat = Vec::with_capacity(timed);
    for _ in 0..timed {
        let t = Instant::now();
        run.tick().expect("tick");
        lat.push(us(t.elapsed()));
    }
    run.finish_without_end().expect("finish");
    let _ = std::fs::remove_dir_all(run_dir);
    (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99))
}

fn main() {
    let quick = quick();
    let rounds: usize = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 5 });
    let spawns: u64 = env_or("LOCKSTEP_BENCH_SPAWNS", if quick { 3 } else { 10 });
    let sizes: Vec<u64> = env_list("LOCKSTEP_BENCH_AGENTS", vec![10, 1_000, 10_000]);
    println!("# Sandbox cost benchmark");
    preamble();
    let scratch = Scratch::new("sandbox");
    let dir = scratch.path();
    std::fs::write(dir.join("noop.wat"), NOOP_WAT).expect("noop.wat");
    let (reaper, _deaths) = Reaper::start().expect("reaper");
    let mut on = Jails::new(settings(true)).expect("jails (cgroups)");
    let mut off = Jails::new(settings(false)).expect("jails");
    println!("rounds {rounds}, {spawns} spawns per configuration and round, sizes {sizes:?}");
    let mut samples: Samples<String> = Samples::default();
    let mut push = |k: String, v: f64| samples.push(k, v);
    let t0 = Instant::now();
    for r in 0..rounds {
        for class in [ChildClass::Worker, ChildClass::Inference] {
            for (label, jails) in [("on", &mut on), ("off", &mut off)] {
                let mut v: Vec<f64> = (0..spawns)
                    .map(|i| spawn_to_ready(jails, &reaper, class, i))
                    .collect();
                let med = quantile(&mut v, 0.5);
                println!("round {r} spawn {class:?} sandbox {label}: {med:.1} ms");
                push(format!("spawn {class:?} {label}"), med);
            }
        }
        for &n in &sizes {
            for mode in TICK_MODES {
                let (p50, p99) = tick_latency(dir, n, mode, quick);
                println!("round {r} tick N={n} sandbox {mode}: p50 {p50:.1} µs p99 {p99:.1} µs");
                push(format!("tick {n} {mode} p50"), p50);
                push(format!("tick {n} {mode} p99"), p99);
            }
        }
    }
    let s = |k: &str| samples.stat(k);
    println!("\n## Spawn to ready (ms; median over rounds (min–max))");
    let mut t =
        Table::new(["child", "every layer on", "sandbox off", "cost"]).align(0, Align::Left);
    for class in [ChildClass::Worker, ChildClass::Inference] {
        let (a, b) = (
            s(&format!("spawn {class:?} on")),
            s(&format!("spawn {class:?} off")),
        );
        t.row([
            format!("{class:?}"),
            a.show(1),
            b.show(1),
            format!("{:+.1} ms", a.med - b.med),
        ]);
    }
    print!("{t}");
    println!("\n## Tick latency, no-op agents, 2 workers (µs; median over rounds (min–max))");
    let mut t = Table::new([
        "agents",
        "p50 on",
        "p50 on + CPU group",
        "p50 off",
        "cost on",
        "cost on + CPU group",
        "p99 on",
        "p99 on + CPU group",
        "p99 off",
    ]);
    for &n in &sizes {
        let p = |mode: &str, q: &str| s(&format!("tick {n} {mode} {q}"));
        let (a, c, b) = (p("on", "p50"), p("on+cpu", "p50"), p("off", "p50"));
        t.row([
            n.to_string(),
            a.show(1),
            c.show(1),
            b.show(1),
            format!("{:+.1} %", (a.med / b.med - 1.0) * 100.0),
            format!("{:+.1} %", (c.med / b.med - 1.0) * 100.0),
            p("on", "p99").show(1),
            p("on+cpu", "p99").show(1),
            p("off", "p99").show(1),
        ]);
    }
    print!("{t}");
    println!("\ntotal bench time: {:.1} s", t0.elapsed().as_secs_f64());
}
