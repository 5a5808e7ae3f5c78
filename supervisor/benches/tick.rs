//! Tick benchmarks (no Criterion): `scripts/bench-tick.sh`, or
//! `cargo build --release -p lockstep-worker && cargo bench -p
//! lockstep-supervisor --bench tick`.  Results and analysis:
//! docs/bench-tick.md.
//!
//! Measured in the same run, interleaved round by round so that every
//! contender sees the same machine:
//!
//! 1. **lockstep** — tick latency (p50/p99 of the wall time around
//!    `Run::tick()`) of the real supervisor (`lockstep_supervisor::run::Run`)
//!    driving real `lockstep-worker` processes over their rings, for 10, 100,
//!    1,000 and 10,000 no-op agents (a minimal WAT agent whose step
//!    increments a global) over 1 and 2 workers.  Board (see the knobs),
//!    metrics and control socket off, `checkpoint_every = 0`; warm-up
//!    ticks, then N timed ticks.
//! 2. **in-process bound** — 2 threads, each owning half of the agents as
//!    separate wasmtime `Store`s on `lockstep_worker::engine::
//!    deterministic_engine()` (same module instrumentation), fuel set per
//!    call; a tick = every agent steps once, then a `std::sync::Barrier`.
//!    The tick time is the period between barrier exits on thread 0.
//! 3. **Node.js peer** — `/work/shared/peers/node-seed-tick` (the
//!    specification's architecture: main thread + 2 worker_threads, Atomics
//!    or postMessage), copied to a temporary directory, `npm install`ed once,
//!    and run once per round; its `RESULT` lines are parsed.  Skipped, with
//!    the reason printed, when `node`/`npm` or the peer are missing.
//! 4. **messages** — 1,000 agents each sending K direct messages per step
//!    (to the K agents that follow it, so each receives K per tick) through
//!    the real `Run`: messages delivered per second of wall time and per
//!    second of supervisor routing time (`SimState::begin_tick` + the split
//!    by worker + `SimState::finish_tick`, from `Run::last_timing`).
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (rounds, default 5; 1 with
//! `LOCKSTEP_BENCH_QUICK=1`), `LOCKSTEP_BENCH_QUICK=1` (fewer ticks; < 60 s),
//! `LOCKSTEP_BENCH_ONLY=run,inproc,node,msg` (sections),
//! `LOCKSTEP_BENCH_AGENTS=10,100,1000,10000`, `LOCKSTEP_BENCH_WORKERS=1,2`,
//! `LOCKSTEP_BENCH_MSGS=10,50` (messages per agent per step),
//! `LOCKSTEP_BENCH_BOARD=1` (runs of sections 1 and 4 publish the state
//! board, as `lockstep run` does by default: its cost, and that of the
//! per-agent samples it consumes every 64th tick, is then in the ticks),
//! `LOCKSTEP_NODE_PEER` (the peer's directory).  Every figure is the median
//! over rounds, with the min–max across rounds.

use lockstep_bench_support::bare::{Bare, bare_agent};
use lockstep_bench_support::knobs::{env_list, env_or, quick};
use lockstep_bench_support::machine::loadavg;
use lockstep_bench_support::node_peer::NodePeer;
use lockstep_bench_support::paths::Scratch;
use lockstep_bench_support::stat::{Samples, p50_p99};
use lockstep_bench_support::{NOOP_WAT, preamble, thousands};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::run::{Run, RunConfig, TickTiming};
use lockstep_supervisor::sim::SimState;
use lockstep_worker::agent::Runtime;
use lockstep_worker::engine::{self, AgentModule};
use shm_protocol::worker::{AgentLimits, AgentResult, Output};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// An agent that sends `k` direct messages (8-byte payload) per step, to the
/// `k` agents after it (ids wrap around `n`); `agent_receive` counts.
fn sender_wat(n: u64, k: u32) -> String {
    format!(
        r#"(module
  (import "lockstep" "send" (func $send (param i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i64) (i64.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param $ctx i32) (result i32)
    (local $i i64) (local $me i64) (local $rc i32)
    (local.set $me (i64.load offset=16 (local.get $ctx)))
    (i64.store (i32.const 0) (global.get $n))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (i64.const {k})))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (local.set $rc (call $send
          (i64.add (i64.rem_u (i64.add (local.get $me) (i64.sub (local.get $i) (i64.const 1)))
                              (i64.const {n}))
                   (i64.const 1))
          (i32.const 0) (i32.const 8)))
        (if (local.get $rc) (then (return (i32.const 7))))
        (br $next)))
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32)
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#
    )
}

// ---------------------------------------------------------------- knobs ---

#[derive(Debug, Clone)]
struct Cfg {
    runs: usize,
    quick: bool,
    sections: Vec<String>,
    sizes: Vec<u64>,
    workers: Vec<usize>,
    msgs: Vec<u32>,
}

impl Cfg {
    fn from_env() -> Self {
        let quick = quick();
        let runs = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 5 }).max(1);
        Self {
            runs,
            quick,
            sections: env_list(
                "LOCKSTEP_BENCH_ONLY",
                vec![
                    "run".into(),
                    "inproc".into(),
                    "node".into(),
                    "msg".into(),
                    "route".into(),
                ],
            ),
            sizes: env_list("LOCKSTEP_BENCH_AGENTS", vec![10, 100, 1_000, 10_000]),
            workers: env_list("LOCKSTEP_BENCH_WORKERS", vec![1, 2]),
            msgs: env_list("LOCKSTEP_BENCH_MSGS", vec![10, 50]),
        }
    }

    fn on(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }

    /// (warm-up, timed) ticks for `n` agents (as the Node peer, which times
    /// at least 200 ticks everywhere).
    fn ticks(&self, n: u64) -> (usize, usize) {
        match (self.quick, n) {
            (false, 0..=100) => (200, 2000),
            (false, 101..=1000) => (50, 500),
            (false, _) => (20, 200),
            (true, 0..=100) => (50, 500),
            (true, 101..=1000) => (20, 200),
            (true, _) => (10, 100),
        }
    }
}

// ---------------------------------------------------------------- stats ---

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

// ------------------------------------------------------------ lockstep ---

/// Starts a run of `count` instances of `module` (a file in `dir`) over
/// `workers` workers, with metrics and control socket off (the board too
/// unless `LOCKSTEP_BENCH_BOARD=1`).
fn start_run(dir: &Path, tag: &str, module: &str, count: u64, workers: usize) -> Run {
    let text = format!(
        "[run]\nseed = 42\nworkers = {workers}\ncheckpoint_every = 0\n\n\
         [scheduler]\nmode = \"round-robin\"\nmailbox_capacity = 1024\n\n\
         [[agents]]\nname = \"a\"\nmodule = \"{module}\"\ncount = {count}\nmemory = \"1MiB\"\n"
    );
    let manifest = Manifest::parse(&text, "bench.toml", dir).expect("manifest");
    let run_dir = dir.join(format!("run-{tag}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut cfg = RunConfig::new(manifest, text, run_dir).unwrap_or_else(|e| {
        panic!(
            "{e}\n(build the worker first: cargo build --release -p lockstep-worker, \
             or set LOCKSTEP_WORKER_BIN)"
        )
    });
    cfg.workers = workers;
    cfg.board = std::env::var("LOCKSTEP_BENCH_BOARD").is_ok_and(|v| v == "1");
    cfg.metrics = false;
    cfg.control_socket = false;
    cfg.module_cache = None;
    cfg.checkpoint_every = 0;
    Run::start(cfg).expect("start run")
}

fn end_run(run: Run) {
    let dir = run.run_dir().to_path_buf();
    run.finish_without_end().expect("finish");
    let _ = std::fs::remove_dir_all(dir);
}

/// One round of section 1: (p50, p99) µs for `n` no-op agents on `workers`
/// workers, plus the medians of the supervisor's own phases.
struct RunTick {
    p50: f64,
    p99: f64,
    plan_us: f64,
    workers_us: f64,
    finish_us: f64,
}

fn lockstep_tick(cfg: &Cfg, dir: &Path, n: u64, workers: usize) -> RunTick {
    let (warm, timed) = cfg.ticks(n);
    let mut run = start_run(dir, &format!("noop-{n}-{workers}"), "noop.wat", n, workers);
    for _ in 0..warm {
        run.tick().expect("warm-up tick");
    }
    let mut lat = Vec::with_capacity(timed);
    let mut phases: Vec<TickTiming> = Vec::with_capacity(timed);
    for _ in 0..timed {
        let t = Instant::now();
        let s = run.tick().expect("tick");
        lat.push(us(t.elapsed()));
        phases.push(run.last_timing());
        assert_eq!(s.steps, n, "every agent steps once per tick");
        assert_eq!(s.faults, 0, "no faults");
    }
    end_run(run);
    let med = |f: fn(&TickTiming) -> Duration| {
        let mut v: Vec<f64> = phases.iter().map(|p| us(f(p))).collect();
        p50_p99(&mut v).0
    };
    let (p50, p99) = p50_p99(&mut lat);
    RunTick {
        p50,
        p99,
        plan_us: med(|p| p.plan),
        workers_us: med(|p| p.workers),
        finish_us: med(|p| p.finish),
    }
}

/// One round of section 4.
struct MsgRound {
    per_tick: f64,
    tick_us: f64,
    wall_rate: f64,
    route_rate: f64,
    route_us: f64,
    finish_us: f64,
    plan_us: f64,
}

fn messages(cfg: &Cfg, dir: &Path, n: u64, k: u32, workers: usize) -> MsgRound {
    let file = format!("send{k}.wat");
    std::fs::write(dir.join(&file), sender_wat(n, k)).expect("write sender");
    let (warm, timed) = if cfg.quick { (5, 30) } else { (10, 100) };
    let mut run = start_run(dir, &format!("msg-{n}-{k}-{workers}"), &file, n, workers);
    for _ in 0..warm {
        run.tick().expect("warm-up tick");
    }
    let mut delivered = 0u64;
    let mut wall = Duration::ZERO;
    let mut route = Duration::ZERO;
    let mut finish = Duration::ZERO;
    let mut plan = Duration::ZERO;
    let mut lat = Vec::with_capacity(timed);
    for _ in 0..timed {
        let t = Instant::now();
        let s = run.tick().expect("tick");
        let e = t.elapsed();
        wall += e;
        lat.push(us(e));
        let p = run.last_timing();
        route += p.plan + p.finish;
        finish += p.finish;
        plan += p.plan;
        assert_eq!(s.faults, 0, "no faults");
        assert_eq!(s.messages, n * u64::from(k), "every message delivered");
        assert_eq!(s.dropped, 0, "no drops");
        delivered += s.messages;
    }
    end_run(run);
    let t = timed as f64;
    MsgRound {
        per_tick: delivered as f64 / t,
        tick_us: p50_p99(&mut lat).0,
        wall_rate: delivered as f64 / wall.as_secs_f64(),
        route_rate: delivered as f64 / route.as_secs_f64(),
        route_us: us(route) / t,
        finish_us: us(finish) / t,
        plan_us: us(plan) / t,
    }
}

/// One round of section 5: the deterministic state machine alone (no
/// workers): `begin_tick` (delivery planning) and `finish_tick` (routing,
/// the tick hash) for `n` agents each sending `k` messages per tick, fed
/// the results the sender agent produces.  Returns (µs per tick of
/// begin_tick, µs per tick of finish_tick).
fn route_only(cfg: &Cfg, dir: &Path, n: u64, k: u32) -> (f64, f64) {
    let text = format!(
        "[scheduler]\nmode = \"round-robin\"\nmailbox_capacity = 1024\n\n\
         [[agents]]\nname = \"a\"\nmodule = \"noop.wat\"\ncount = {n}\nmemory = \"1MiB\"\n"
    );
    let manifest = Manifest::parse(&text, "route.toml", dir).expect("manifest");
    let mut sim = SimState::new(&manifest, 42).expect("state");
    let (warm, timed) = if cfg.quick { (5, 50) } else { (10, 200) };
    let mut seq = vec![0u64; n as usize + 1];
    let (mut plan_t, mut finish_t) = (Duration::ZERO, Duration::ZERO);
    for i in 0..warm + timed {
        let t0 = Instant::now();
        let plan = sim.begin_tick();
        let t1 = Instant::now();
        let mut results: Vec<AgentResult> = (1..=n)
            .map(|id| AgentResult {
                agent_id: id,
                fuel: 1000,
                calls: 1 + k,
                outputs: (0..u64::from(k))
                    .map(|j| {
                        seq[id as usize] += 1;
                        Output::Send {
                            to: (id + j) % n + 1,
                            seq: seq[id as usize],
                            payload: seq[id as usize].to_le_bytes().to_vec().into(),
                        }
                    })
                    .collect(),
                fault: None,
                wall_ns: 0,
                logs_suppressed: 0,
                memory_bytes: 0,
            })
            .collect();
        let t2 = Instant::now();
        let fuel = BTreeMap::new();
        let sum = sim.finish_tick(
            &plan,
            &[],
            &[],
            lockstep_supervisor::sim::WorkReport {
                results: &mut results,
                digest: [0; 4],
                tenant_fuel: &fuel,
                calls: 0,
            },
        );
        let t3 = Instant::now();
        black_box(sum.hash);
        drop(black_box(plan));
        if i >= warm {
            plan_t += t1 - t0;
            finish_t += t3 - t2;
        }
    }
    (us(plan_t) / timed as f64, us(finish_t) / timed as f64)
}

// ---------------------------------------------------- in-process bound ---

fn bare_agents(rt: &Runtime, module: &AgentModule, ids: impl Iterator<Item = u64>) -> Vec<Bare> {
    let lim = AgentLimits {
        memory_bytes: 1 << 20,
        ..AgentLimits::default()
    };
    ids.map(|id| bare_agent(rt, module, id, lim)).collect()
}

/// One round of section 2: (p50, p99) µs.
fn in_process(cfg: &Cfg, rt: &Runtime, module: &Arc<AgentModule>, n: u64) -> (f64, f64) {
    let (warm, timed) = cfg.ticks(n);
    let barrier = Barrier::new(2);
    let limit = AgentLimits::default().fuel_per_call;
    let mut lat = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..2u64 {
            let (barrier, module) = (&barrier, module.clone());
            handles.push(s.spawn(move || {
                // Each thread owns its half (built on the thread itself).
                let mut agents = bare_agents(rt, &module, (1..=n).filter(|id| id % 2 == t));
                barrier.wait();
                let mut lat = Vec::with_capacity(timed);
                let mut last = Instant::now();
                for i in 0..warm + timed {
                    for (store, step, ptr) in &mut agents {
                        store.set_fuel(limit).expect("set_fuel");
                        let r = step.call(&mut *store, *ptr).expect("step");
                        black_box(r);
                        black_box(store.get_fuel().expect("get_fuel"));
                    }
                    barrier.wait();
                    let now = Instant::now();
                    if i >= warm {
                        lat.push(us(now - last));
                    }
                    last = now;
                }
                lat
            }));
        }
        let mut out = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            let l = h.join().expect("bound thread");
            if i == 0 {
                out = l;
            }
        }
        out
    });
    p50_p99(&mut lat)
}

// ----------------------------------------------------------------- main ---

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let cfg = Cfg::from_env();
    let scratch = Scratch::new("tick");
    let dir = scratch.path();
    std::fs::write(dir.join("noop.wat"), NOOP_WAT).expect("write noop.wat");
    let started = Instant::now();
    println!("# Lockstep tick benchmark");
    println!();
    preamble();
    println!(
        "rounds: {}{} · sizes {:?} · workers {:?} · sections {:?}",
        cfg.runs,
        if cfg.quick { " (quick)" } else { "" },
        cfg.sizes,
        cfg.workers,
        cfg.sections
    );

    let node = if cfg.on("node") {
        match NodePeer::prepare(dir) {
            Ok(p) => Some(p),
            Err(e) => {
                println!("Node.js peer skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let rt = {
        let eng = engine::deterministic_engine().expect("engine");
        Runtime::new(eng, 42, Duration::from_secs(5)).expect("runtime")
    };
    let module = Arc::new(
        engine::load_module(&rt.engine, "noop", NOOP_WAT.as_bytes(), None, 1 << 20)
            .expect("noop module"),
    );

    let mut s: Samples<String> = Samples::default();
    let mut loads = Vec::new();
    let mut node_variants: Vec<String> = Vec::new();
    for round in 0..cfg.runs {
        loads.push(loadavg());
        eprintln!("round {}/{} (load {})", round + 1, cfg.runs, loadavg());
        if cfg.on("run") {
            for &n in &cfg.sizes {
                for &w in &cfg.workers {
                    let r = lockstep_tick(&cfg, dir, n, w);
                    eprintln!(
                        "  lockstep N={n} workers={w}: p50 {:.1} µs p99 {:.1} µs",
                        r.p50, r.p99
                    );
                    s.push(format!("run/{n}/{w}/p50"), r.p50);
                    s.push(format!("run/{n}/{w}/p99"), r.p99);
                    s.push(format!("run/{n}/{w}/plan"), r.plan_us);
                    s.push(format!("run/{n}/{w}/workers"), r.workers_us);
                    s.push(format!("run/{n}/{w}/finish"), r.finish_us);
                }
            }
        }
        if cfg.on("inproc") {
            for &n in &cfg.sizes {
                let (p50, p99) = in_process(&cfg, &rt, &module, n);
                eprintln!("  in-process N={n}: p50 {p50:.1} µs p99 {p99:.1} µs");
                s.push(format!("inproc/{n}/p50"), p50);
                s.push(format!("inproc/{n}/p99"), p99);
            }
        }
        if let Some(peer) = &node {
            match peer.run(&cfg.sizes) {
                Ok(res) => {
                    for ((variant, n), (p50, p99)) in res {
                        eprintln!("  node {variant} N={n}: p50 {p50:.1} µs p99 {p99:.1} µs");
                        if !node_variants.contains(&variant) {
                            node_variants.push(variant.clone());
                        }
                        s.push(format!("node-{variant}/{n}/p50"), p50);
                        s.push(format!("node-{variant}/{n}/p99"), p99);
                    }
                }
                Err(e) => println!("Node.js peer failed in round {}: {e}", round + 1),
            }
        }
        if cfg.on("msg") {
            for &k in &cfg.msgs {
                let w = 2;
                let r = messages(&cfg, dir, 1_000, k, w);
                eprintln!(
                    "  messages K={k}: {:.0}/tick, {:.2} M/s wall, {:.2} M/s routing",
                    r.per_tick,
                    r.wall_rate / 1e6,
                    r.route_rate / 1e6
                );
                let key = format!("msg/{k}/{w}");
                s.push(format!("{key}/per_tick"), r.per_tick);
                s.push(format!("{key}/tick_us"), r.tick_us);
                s.push(format!("{key}/wall"), r.wall_rate / 1e6);
                s.push(format!("{key}/route"), r.route_rate / 1e6);
                s.push(format!("{key}/route_us"), r.route_us);
                s.push(format!("{key}/finish_us"), r.finish_us);
                s.push(format!("{key}/plan_us"), r.plan_us);
            }
        }
        if cfg.on("route") {
            for &k in &cfg.msgs {
                let (plan, finish) = route_only(&cfg, dir, 1_000, k);
                let msgs = 1_000.0 * f64::from(k);
                eprintln!(
                    "  routing only K={k}: begin_tick {plan:.0} µs, finish_tick {finish:.0} µs, {:.2} M msg/s",
                    msgs / (plan + finish)
                );
                s.push(format!("route/{k}/plan"), plan);
                s.push(format!("route/{k}/finish"), finish);
                s.push(format!("route/{k}/rate"), msgs / (plan + finish));
            }
        }
    }
    loads.push(loadavg());

    // ------------------------------------------------------------ report ---
    println!(
        "load per round (1/5/15 min), then at the end: {}",
        loads.join(" · ")
    );
    println!();
    println!("## Tick latency, no-op agents (µs, p50 / p99; median over rounds (min–max))");
    println!();
    let mut cols: Vec<(String, String)> = Vec::new();
    if cfg.on("run") {
        for &w in &cfg.workers {
            cols.push((
                format!("lockstep {w} worker{}", if w == 1 { "" } else { "s" }),
                format!("run/{{n}}/{w}"),
            ));
        }
    }
    if cfg.on("inproc") {
        cols.push(("in-process bound (2 threads)".into(), "inproc/{n}".into()));
    }
    for v in &node_variants {
        cols.push((
            format!("Node.js 2 workers ({v})"),
            format!("node-{v}/{{n}}"),
        ));
    }
    for q in ["p50", "p99"] {
        print!("| agents ({q}) |");
        for (name, _) in &cols {
            print!(" {name} |");
        }
        println!();
        print!("|---:|");
        for _ in &cols {
            print!("---:|");
        }
        println!();
        for &n in &cfg.sizes {
            print!("| {} |", thousands(n));
            for (_, key) in &cols {
                let k = format!("{}/{q}", key.replace("{n}", &n.to_string()));
                print!(" {} |", s.stat(&k).show(1));
            }
            println!();
        }
        println!();
    }
    if cfg.on("run") {
        println!("## Where the supervisor's tick goes (median per tick, µs; `Run::last_timing`)");
        println!();
        println!(
            "| agents | workers | plan (begin_tick + split) | send + workers + receive | finish_tick | tick p50 |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for &n in &cfg.sizes {
            for &w in &cfg.workers {
                let k = |f: &str| s.stat(&format!("run/{n}/{w}/{f}")).show(1);
                println!(
                    "| {} | {w} | {} | {} | {} | {} |",
                    thousands(n),
                    k("plan"),
                    k("workers"),
                    k("finish"),
                    k("p50")
                );
            }
        }
        println!();
    }
    if cfg.on("msg") {
        println!("## Message routing, 1,000 agents, 2 workers (median over rounds (min–max))");
        println!();
        println!(
            "| msgs/agent/tick | delivered/tick | tick p50 (µs) | M msg/s (wall) | M msg/s (routing) | routing µs/tick (plan + finish) | plan µs | finish µs |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &k in &cfg.msgs {
            let key = |f: &str| s.stat(&format!("msg/{k}/2/{f}"));
            println!(
                "| {k} | {} | {} | {} | {} | {} | {} | {} |",
                key("per_tick").show(0),
                key("tick_us").show(0),
                key("wall").show(2),
                key("route").show(2),
                key("route_us").show(0),
                key("plan_us").show(0),
                key("finish_us").show(0),
            );
        }
        println!();
    }

    if cfg.on("route") {
        println!(
            "## Routing alone: `SimState` without workers, 1,000 agents (µs per tick; median over rounds (min–max))"
        );
        println!();
        println!(
            "| msgs/agent/tick | begin_tick (delivery planning) | finish_tick (routing + hash) | M msg/s |"
        );
        println!("|---:|---:|---:|---:|");
        for &k in &cfg.msgs {
            let key = |f: &str| s.stat(&format!("route/{k}/{f}"));
            println!(
                "| {k} | {} | {} | {} |",
                key("plan").show(0),
                key("finish").show(0),
                key("rate").show(2)
            );
        }
        println!();
    }

    // ----------------------------------------------------------- targets ---
    println!("## Targets (medians)");
    println!();
    if cfg.on("run") && !node_variants.is_empty() {
        for &n in &cfg.sizes {
            for &w in &cfg.workers {
                for q in ["p50", "p99"] {
                    let ours = s.stat(&format!("run/{n}/{w}/{q}")).med;
                    let best = node_variants
                        .iter()
                        .map(|v| s.stat(&format!("node-{v}/{n}/{q}")).med)
                        .fold(f64::NAN, f64::min);
                    println!(
                        "* beat Node.js, N={}, {w} worker(s), {q}: {:.1} vs {:.1} µs (best Node variant) → {}",
                        thousands(n),
                        ours,
                        best,
                        if ours < best { "met" } else { "MISSED" }
                    );
                }
            }
        }
    }
    if cfg.on("run") && cfg.on("inproc") {
        for &n in cfg.sizes.iter().filter(|n| **n >= 1000) {
            for &w in &cfg.workers {
                // The target: within 1.5× at p50, 3× at p99.
                for (q, limit) in [("p50", 1.5), ("p99", 3.0)] {
                    let ours = s.stat(&format!("run/{n}/{w}/{q}")).med;
                    let bound = s.stat(&format!("inproc/{n}/{q}")).med;
                    println!(
                        "* within {limit}× of the in-process bound, N={}, {w} worker(s), {q}: {:.2}× → {}",
                        thousands(n),
                        ours / bound,
                        if ours <= limit * bound {
                            "met"
                        } else {
                            "MISSED"
                        }
                    );
                }
            }
        }
    }
    if cfg.on("msg") {
        for &k in &cfg.msgs {
            let r = s.stat(&format!("msg/{k}/2/route")).med;
            let w = s.stat(&format!("msg/{k}/2/wall")).med;
            println!(
                "* ≥ 5 M msg/s routed, K={k}: {r:.2} M/s of routing time ({w:.2} M/s of wall time) → {}",
                if r >= 5.0 { "met" } else { "MISSED" }
            );
        }
    }
    if cfg.on("route") {
        for &k in &cfg.msgs {
            let r = s.stat(&format!("route/{k}/rate")).med;
            println!(
                "* ≥ 5 M msg/s routed by the state machine alone, K={k}: {r:.2} M/s → {}",
                if r >= 5.0 { "met" } else { "MISSED" }
            );
        }
    }
    println!();
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
