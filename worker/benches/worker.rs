//! Worker benchmarks (no Criterion: `cargo bench -p lockstep-worker
//! --bench worker`).  Results and analysis: docs/bench-worker.md.
//!
//! 1. Per-step overhead, amortized ns per step with every agent stepped once
//!    per tick, at 1, 100, 1,000 and 10,000 agents per worker, for a minimal
//!    WAT no-op agent and the real counter agent in Rust (`counter.wasm`), C
//!    (`c_counter.wasm`) and TypeScript (`ts_counter.wasm`), through
//!    * a direct `TypedFunc` loop (baseline: same engine, fuel set per call),
//!    * `Worker::tick` in process (`TickWork { step_all: true, .. }`),
//!    * the real `lockstep-worker` process over its ring pair
//!      (`Down::Worker(Tick)` → `Up::Worker(TickDone)`).
//! 2. Instantiate (and `agent_init`) time per agent with a cached module, and
//!    resident memory per idle agent beyond its resident linear memory, for
//!    a population of 10,000 agents, each run in a fresh process (this binary
//!    re-executed as a probe).
//! 3. Capture / restore / in-place state hash throughput for 1 MiB and
//!    16 MiB memories.
//! 4. 10,000 agents in a real worker process under `RLIMIT_AS` (8 GiB):
//!    address space and resident memory per agent.
//!
//! Knobs: `LOCKSTEP_BENCH_RUNS` (default 5; 1 with `LOCKSTEP_BENCH_QUICK=1`),
//! `LOCKSTEP_BENCH_QUICK=1` (smaller batches; finishes in < 30 s),
//! `LOCKSTEP_AGENTS_DIR` (default `<workspace>/target/agents`).  Every figure
//! is the median over runs, with the min–max across runs.

use lockstep_bench_support::bare::bare_agent;
use lockstep_bench_support::knobs::{env_list, env_or, quick};
use lockstep_bench_support::machine::loadavg;
use lockstep_bench_support::paths::workspace_root;
use lockstep_bench_support::process::{VmStatus, page_size, statm_self, vm_status};
use lockstep_bench_support::{NOOP_WAT, Stat, preamble};
use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::reaper::Reaper;
use lockstep_worker::agent::{Agent, Runtime};
use lockstep_worker::engine::{self, AgentModule};
use lockstep_worker::host::AgentHost;
use lockstep_worker::service::Worker;
use shm_protocol::WaitPolicy;
use shm_protocol::control::{Down, Role, Up};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::{
    AgentLimits, SpawnOrder, TickDone, TickWork, WorkerCommand, WorkerReply,
};
use std::ffi::OsString;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, TypedFunc};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_lockstep-worker");
/// Set in the environment of a re-executed probe (section 2).
const PROBE_ENV: &str = "LOCKSTEP_BENCH_PROBE";
/// Ring size of a worker (as `supervisor/src/runner.rs`).
const WORKER_RING: usize = lockstep_supervisor::config::WORKER_RING;
/// Address-space limit of section 4.
const AS_LIMIT: u64 = 8 << 30;
const POPULATIONS: [usize; 4] = [1, 100, 1_000, 10_000];
const SEED: u64 = 42;

/// An agent with `pages` pages of memory, all filled with 0xA5 by
/// `agent_init` (section 3).
fn filled_wat(pages: u32) -> String {
    format!(
        r#"(module
  (memory (export "memory") {pages})
  (global $n (mut i64) (i64.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32)
    (memory.fill (i32.const 0) (i32.const 0xA5) (i32.const {bytes}))
    (i32.const 0))
  (func (export "agent_step") (param i32) (result i32)
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#,
        bytes = pages * 65536
    )
}

// ---------------------------------------------------------------- knobs ---

#[derive(Debug, Clone)]
struct Cfg {
    runs: usize,
    quick: bool,
    /// Steps per timed run of section 1 (ticks = steps / agents).
    steps: usize,
    /// Population of sections 2 and 4.
    big: usize,
    /// Sections to run (`LOCKSTEP_BENCH_ONLY=1,3`; default all).
    sections: Vec<usize>,
    /// The bench's (supervisor's) side of the rings
    /// (`LOCKSTEP_BENCH_POLICY=runner|adaptive|spin`; default `runner`, the
    /// policy of `supervisor/src/runner.rs`).
    policy: (String, WaitPolicy),
    /// Extra arguments of the worker processes (sandbox directories, when
    /// the worker has a sandbox).
    worker_args: Vec<OsString>,
    /// Populations of section 1 (`LOCKSTEP_BENCH_AGENTS=1000,10000`).
    populations: Vec<usize>,
    /// Paths of section 1 to run (`LOCKSTEP_BENCH_PATHS=direct,tick,ring`).
    paths: Vec<String>,
}

impl Cfg {
    fn from_env() -> Self {
        let quick = quick();
        let runs = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 5 }).max(1);
        Self {
            runs,
            quick,
            steps: if quick { 20_000 } else { 200_000 },
            big: 10_000,
            sections: env_list("LOCKSTEP_BENCH_ONLY", vec![1, 2, 3, 4]),
            policy: match std::env::var("LOCKSTEP_BENCH_POLICY").as_deref() {
                Ok("adaptive") => ("adaptive".into(), WaitPolicy::ADAPTIVE),
                Ok("spin") => ("spin".into(), WaitPolicy::SPIN),
                _ => (
                    "runner (spin 2,000, then park)".into(),
                    WaitPolicy {
                        spin: 2_000,
                        park_slice: Duration::from_millis(10),
                        yielding: false,
                    },
                ),
            },
            worker_args: Vec::new(),
            populations: env_list("LOCKSTEP_BENCH_AGENTS", POPULATIONS.to_vec()),
            paths: env_list(
                "LOCKSTEP_BENCH_PATHS",
                vec!["direct".into(), "tick".into(), "ring".into()],
            ),
        }
    }
}

// ---------------------------------------------------------------- stats ---

fn ns_per(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

// ------------------------------------------------------------------ mm ---

/// Copies `src` into a fresh private anonymous mapping (the machine's
/// first-touch rate: page faults plus zeroing, the floor under any restore
/// into new memory); returns the time of the copy alone.
fn first_touch_copy(src: &[u8]) -> Duration {
    let n = src.len();
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap failed");
    // SAFETY: `p` is a fresh writable mapping of `n` bytes that nothing else
    // references; it is unmapped only below, after the slice's last use.
    let dst = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), n) };
    let t0 = Instant::now();
    dst.copy_from_slice(src);
    let d = t0.elapsed();
    black_box(&dst[n / 2]);
    // SAFETY: unmaps exactly the mapping created above; `dst` is not used
    // after this point.
    unsafe { libc::munmap(p, n) };
    d
}

/// Resident bytes of `data` (mincore over its pages).
fn resident_bytes(data: &[u8]) -> u64 {
    if data.is_empty() {
        return 0;
    }
    let page = page_size();
    let start = data.as_ptr() as usize & !(page - 1);
    let end = data.as_ptr() as usize + data.len();
    let pages = (end - start).div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `[start, end)` covers the pages of `data`, a live mapping owned
    // by the agent's store (borrowed for this call); mincore only reads the
    // page tables and writes one byte per page into `vec`, which has
    // exactly `pages` bytes.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64
}

// -------------------------------------------------------------- modules ---

#[derive(Debug, Clone)]
struct ModuleSrc {
    name: &'static str,
    /// The module (WAT text or wasm).
    bytes: Vec<u8>,
}

fn agents_dir() -> PathBuf {
    std::env::var_os("LOCKSTEP_AGENTS_DIR")
        .map_or_else(|| workspace_root().join("target/agents"), PathBuf::from)
}

fn modules(_tmp: &Path) -> Vec<ModuleSrc> {
    let mut out = vec![ModuleSrc {
        name: "noop (WAT)",
        bytes: NOOP_WAT.as_bytes().to_vec(),
    }];
    // The same counter in Rust, C and TypeScript (AssemblyScript): what an
    // agent's language costs per step.
    for name in ["counter.wasm", "c_counter.wasm", "ts_counter.wasm"] {
        let path = agents_dir().join(name);
        match std::fs::read(&path) {
            Ok(bytes) => out.push(ModuleSrc { name, bytes }),
            Err(e) => println!(
                "NOTE: {} not readable ({e}); run scripts/build-agents.sh — its rows skipped",
                path.display()
            ),
        }
    }
    out
}

/// The compiled form of `m` kept in `cache` (what the supervisor's compile
/// step hands workers), made on first use.
fn compiled(worker: &Worker, cache: &Path, m: &ModuleSrc) -> Vec<u8> {
    let file = cache.join(format!("{}.cwasm", m.name));
    if let Ok(b) = std::fs::read(&file) {
        return b;
    }
    let (_, bytes) = engine::compile(&worker.runtime().engine, m.name, &m.bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", m.name));
    std::fs::write(&file, &bytes).expect("write the compiled module");
    bytes
}

/// Loads `m` from its compiled form in `cache`.
fn load(worker: &Worker, cache: &Path, m: &ModuleSrc) -> AgentModule {
    let c = compiled(worker, cache, m);
    engine::load_module(
        &worker.runtime().engine,
        m.name,
        &m.bytes,
        Some(&c),
        1 << 30,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", m.name))
}

fn limits() -> AgentLimits {
    AgentLimits {
        memory_bytes: 32 << 20,
        fuel_per_call: 100_000_000,
        ..AgentLimits::default()
    }
}

fn spawn_work(tick: u64, ids: std::ops::RangeInclusive<u64>) -> TickWork {
    TickWork {
        tick,
        spawns: ids
            .map(|agent_id| SpawnOrder {
                agent_id,
                module_id: 1,
                tenant: 0,
                limits: limits(),
            })
            .collect(),
        ..TickWork::default()
    }
}

fn step_work(tick: u64) -> TickWork {
    TickWork {
        tick,
        step_all: true,
        ..TickWork::default()
    }
}

/// Tick numbers, skipping multiples of 100 (`counter` logs on those).
#[derive(Debug)]
struct Ticks(u64);

impl Ticks {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        if self.0.is_multiple_of(100) {
            self.0 += 1;
        }
        self.0
    }
}

fn check_done(done: &TickDone, n: usize, what: &str) {
    assert_eq!(done.agents_called as usize, n, "{what}: agents called");
    if let Some(r) = done.results.iter().find(|r| r.fault.is_some()) {
        panic!("{what}: agent {} faulted: {:?}", r.agent_id, r.fault);
    }
}

// --------------------------------------------------------- direct loop ---

/// The baseline: a bare store per agent and a `TypedFunc` call per step.
struct Direct {
    agents: Vec<(Store<AgentHost>, TypedFunc<i32, i32>, i32)>,
    fuel_per_call: u64,
}

impl Direct {
    fn new(rt: &Runtime, module: &AgentModule, n: usize) -> Self {
        let lim = limits();
        let mut agents = Vec::with_capacity(n);
        for id in 1..=n as u64 {
            agents.push(bare_agent(rt, module, id, lim));
        }
        Self {
            agents,
            fuel_per_call: lim.fuel_per_call,
        }
    }

    /// Steps every agent `ticks` times; returns the fuel used.
    fn run(&mut self, ticks: usize) -> u64 {
        let limit = self.fuel_per_call;
        let mut fuel = 0;
        for _ in 0..ticks {
            for (store, step, ptr) in &mut self.agents {
                store.set_fuel(limit).expect("set_fuel");
                let r = step.call(&mut *store, *ptr).expect("step");
                debug_assert_eq!(r, 0);
                black_box(r);
                fuel += limit - store.get_fuel().expect("get_fuel");
            }
        }
        fuel
    }
}

// ----------------------------------------------------------------- ring ---

/// A worker with a process sandbox (`--allow-read`/`--allow-write`) may read
/// only the directories it is given: the bench's temporary directory (the
/// WAT module), the agents directory, and the module cache (read-write).
/// Workers without one get no extra arguments.
fn sandbox_args(tmp: &Path) -> Vec<OsString> {
    let help = std::process::Command::new(WORKER_BIN)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !help.contains("--allow-read") {
        return Vec::new();
    }
    let mut args: Vec<OsString> = Vec::new();
    for dir in [tmp.to_path_buf(), agents_dir()] {
        args.push("--allow-read".into());
        args.push(dir.into());
    }
    args
}

struct RingWorker {
    child: Child,
}

impl RingWorker {
    fn spawn(
        reaper: &Reaper,
        name: &str,
        program: &Path,
        policy: WaitPolicy,
        args: &[OsString],
    ) -> Self {
        let spec = ChildSpec {
            role: Role::Worker,
            name: name.to_owned(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            rings: SegmentConfig {
                to_attacher: WORKER_RING,
                to_creator: WORKER_RING,
            },
            policy,
            env: lockstep_supervisor::jail::passed_env(),
            cgroup: None,
            hang_timeout: None,
        };
        let mut child = Child::spawn(&spec, reaper).expect("spawn lockstep-worker");
        child
            .handshake(Duration::from_secs(30))
            .expect("worker handshake");
        Self { child }
    }

    fn request(&mut self, cmd: WorkerCommand) -> WorkerReply {
        let deadline = || Some(Instant::now() + Duration::from_secs(120));
        let ep = self.child.endpoint();
        ep.send_msg(&Down::Worker(cmd), deadline()).expect("send");
        match ep.recv_msg::<Up>(deadline()).expect("recv") {
            Up::Worker(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn setup(&mut self, cache: &Path, m: &ModuleSrc) {
        let r = self.request(WorkerCommand::Configure {
            seed: SEED,
            watchdog_ms: 1000,
        });
        assert!(matches!(r, WorkerReply::Configured { .. }), "{r:?}");
        let compiled = std::fs::read(cache.join(format!("{}.cwasm", m.name))).ok();
        match self.request(WorkerCommand::LoadModule {
            module_id: 1,
            name: m.name.to_owned(),
            wasm: m.bytes.clone(),
            compiled: compiled.map(serde_bytes::ByteBuf::from),
            memory_limit: 1 << 30,
        }) {
            WorkerReply::ModuleLoaded { .. } => {}
            other => panic!("LoadModule: {other:?}"),
        }
    }

    /// One tick round trip.
    fn tick(&mut self, work: TickWork) -> TickDone {
        let deadline = || Some(Instant::now() + Duration::from_secs(120));
        let ep = self.child.endpoint();
        ep.send_msg(&Down::Worker(WorkerCommand::Tick(work)), deadline())
            .expect("send tick");
        match ep.recv_msg::<Up>(deadline()).expect("recv tick") {
            Up::Worker(WorkerReply::TickDone(d)) => d,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn shutdown(self) {
        let _ = self.child.shutdown(Duration::from_secs(30));
    }
}

// ------------------------------------------------------------ section 1 ---

#[derive(Debug)]
struct StepRow {
    module: &'static str,
    agents: usize,
    ticks: usize,
    direct: Stat,
    worker: Stat,
    ring: Stat,
    /// The worker's own `TickDone::wall_ns` per step, ring path.
    ring_inner: Stat,
    fuel_direct: f64,
    fuel_worker: f64,
    spawn_inproc_us: f64,
    spawn_ring_us: f64,
}

fn section1(cfg: &Cfg, mods: &[ModuleSrc], cache: &Path, reaper: &Reaper) -> Vec<StepRow> {
    let on = |p: &str| cfg.paths.iter().any(|x| x == p);
    let mut rows = Vec::new();
    for m in mods {
        for &n in &cfg.populations {
            let ticks = (cfg.steps / n).max(3);
            let steps = ticks * n;
            // Direct baseline and in-process worker share one engine.
            let mut w = Worker::new().expect("worker");
            w.handle(WorkerCommand::Configure {
                seed: SEED,
                watchdog_ms: 1000,
            });
            let module = load(&w, cache, m);
            let rt = w.runtime().clone();
            let mut direct = on("direct").then(|| Direct::new(&rt, &module, n));
            w.insert_module(1, module);
            let mut t = Ticks(0);
            let mut spawn_inproc_us = f64::NAN;
            if on("tick") {
                let t0 = Instant::now();
                let done = w.tick(&spawn_work(t.next(), 1..=n as u64));
                spawn_inproc_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
                check_done(&done, n, "in-process spawn");
                check_done(&w.tick(&step_work(t.next())), n, "in-process warm-up");
            }
            let mut rt_ticks = Ticks(0);
            let mut spawn_ring_us = f64::NAN;
            let mut ring = on("ring").then(|| {
                let mut ring = RingWorker::spawn(
                    reaper,
                    &format!("bench-{n}"),
                    Path::new(WORKER_BIN),
                    cfg.policy.1,
                    &cfg.worker_args,
                );
                ring.setup(cache, m);
                let t0 = Instant::now();
                let done = ring.tick(spawn_work(rt_ticks.next(), 1..=n as u64));
                spawn_ring_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
                check_done(&done, n, "ring spawn");
                check_done(&ring.tick(step_work(rt_ticks.next())), n, "ring warm-up");
                ring
            });
            if let Some(d) = &mut direct {
                d.run(1);
            }
            let (mut vd, mut vw, mut vr, mut vi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut fuel_d, mut fuel_w) = (0u64, 0u64);
            for _ in 0..cfg.runs {
                if let Some(d) = &mut direct {
                    let t0 = Instant::now();
                    fuel_d = d.run(ticks);
                    vd.push(ns_per(t0.elapsed(), steps));
                }
                if on("tick") {
                    let t0 = Instant::now();
                    let mut fuel = 0;
                    for _ in 0..ticks {
                        let done = w.tick(&step_work(t.next()));
                        debug_assert_eq!(done.agents_called as usize, n);
                        fuel += done.tenant_fuel.iter().map(|x| x.1).sum::<u64>();
                        black_box(&done);
                    }
                    vw.push(ns_per(t0.elapsed(), steps));
                    fuel_w = fuel;
                }
                if let Some(ring) = &mut ring {
                    let mut inner = 0u64;
                    let t0 = Instant::now();
                    for _ in 0..ticks {
                        let done = ring.tick(step_work(rt_ticks.next()));
                        debug_assert_eq!(done.agents_called as usize, n);
                        inner += done.wall_ns;
                        black_box(&done);
                    }
                    vr.push(ns_per(t0.elapsed(), steps));
                    vi.push(inner as f64 / steps as f64);
                }
            }
            if on("tick") {
                check_done(&w.tick(&step_work(t.next())), n, "in-process final");
            }
            if let Some(mut ring) = ring {
                // Every agent still live at the end.
                check_done(&ring.tick(step_work(rt_ticks.next())), n, "ring final");
                ring.shutdown();
            }
            let row = StepRow {
                module: m.name,
                agents: n,
                ticks,
                direct: Stat::of(&vd),
                worker: Stat::of(&vw),
                ring: Stat::of(&vr),
                ring_inner: Stat::of(&vi),
                fuel_direct: fuel_d as f64 / steps as f64,
                fuel_worker: fuel_w as f64 / steps as f64,
                spawn_inproc_us,
                spawn_ring_us,
            };
            eprintln!(
                "  [1] {:<13} {:>6} agents: direct {} | worker.tick {} | ring {} ns/step",
                row.module,
                n,
                row.direct.show(1),
                row.worker.show(1),
                row.ring.show(1)
            );
            rows.push(row);
        }
    }
    rows
}

// ------------------------------------------------------------ section 2 ---

/// One probe's measurements (section 2), printed as `key=value` pairs.
#[derive(Debug, Default, Clone, Copy)]
struct Probe {
    load_cached_us: f64,
    inst_us: f64,
    init_us: f64,
    warm_us: f64,
    rss_delta: f64,
    vm_delta: f64,
    lin_size: f64,
    lin_resident: f64,
}

/// Runs in a re-executed copy of this binary: a fresh heap, so the RSS
/// delta is the population's.
fn probe(module_name: &str) {
    let n: usize = std::env::var("LOCKSTEP_BENCH_PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let cache = PathBuf::from(std::env::var_os("LOCKSTEP_BENCH_PROBE_CACHE").expect("cache dir"));
    let tmp = cache.parent().expect("tmp").to_path_buf();
    let m = modules(&tmp)
        .into_iter()
        .find(|m| m.name == module_name)
        .expect("module");
    let mut w = Worker::new().expect("worker");
    w.handle(WorkerCommand::Configure {
        seed: SEED,
        watchdog_ms: 1000,
    });
    let compiled = std::fs::read(cache.join(format!("{}.cwasm", m.name)))
        .expect("the probe's module is compiled in the cache");
    let t0 = Instant::now();
    let module = engine::load_module(
        &w.runtime().engine,
        m.name,
        &m.bytes,
        Some(&compiled),
        1 << 30,
    )
    .expect("load the compiled module");
    let load_cached_us = t0.elapsed().as_secs_f64() * 1e6;
    let module = Arc::new(module);
    let rt = w.runtime().clone();
    // First instantiation (lazy per-module set-up) outside the measurement.
    drop(Agent::instantiate(&rt, module.clone(), 0, limits()).expect("warm-up"));
    let (vm0, rss0) = statm_self();
    let t0 = Instant::now();
    let mut agents: Vec<Agent> = (1..=n as u64)
        .map(|id| Agent::instantiate(&rt, module.clone(), id, limits()).expect("instantiate"))
        .collect();
    let inst = t0.elapsed();
    let t0 = Instant::now();
    for a in &mut agents {
        assert!(a.init(0).fault.is_none());
    }
    let init = t0.elapsed();
    // One step each: the idle agent has run once (its host buffer exists).
    for a in &mut agents {
        assert!(a.step(1, None, 0).fault.is_none());
    }
    let (vm1, rss1) = statm_self();
    let mut lin_size = 0u64;
    let mut lin_resident = 0u64;
    for a in &mut agents {
        let (mem, _, _) = a.parts();
        lin_size += mem.len() as u64;
        lin_resident += resident_bytes(mem);
    }
    // Steady state: instantiate + init + drop with a warm heap.
    let k = 2_000;
    let t0 = Instant::now();
    for id in 0..k {
        let mut a = Agent::instantiate(&rt, module.clone(), n as u64 + 1 + id, limits())
            .expect("instantiate");
        assert!(a.init(0).fault.is_none());
        drop(black_box(a));
    }
    let warm_us = t0.elapsed().as_secs_f64() * 1e6 / k as f64;
    let p = Probe {
        load_cached_us,
        inst_us: inst.as_secs_f64() * 1e6 / n as f64,
        init_us: init.as_secs_f64() * 1e6 / n as f64,
        warm_us,
        rss_delta: (rss1 as f64 - rss0 as f64) / n as f64,
        vm_delta: (vm1 as f64 - vm0 as f64) / n as f64,
        lin_size: lin_size as f64 / n as f64,
        lin_resident: lin_resident as f64 / n as f64,
    };
    println!(
        "PROBE {} {} {} {} {} {} {} {}",
        p.load_cached_us,
        p.inst_us,
        p.init_us,
        p.warm_us,
        p.rss_delta,
        p.vm_delta,
        p.lin_size,
        p.lin_resident
    );
    black_box(agents);
}

fn run_probe(module: &str, n: usize, cache: &Path) -> Probe {
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(exe)
        .env(PROBE_ENV, module)
        .env("LOCKSTEP_BENCH_PROBE_N", n.to_string())
        .env("LOCKSTEP_BENCH_PROBE_CACHE", cache)
        .output()
        .expect("run probe");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("PROBE "))
        .unwrap_or_else(|| {
            panic!(
                "probe failed: {}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Vec<f64> = line[6..]
        .split_whitespace()
        .map(|x| x.parse().expect("probe number"))
        .collect();
    Probe {
        load_cached_us: v[0],
        inst_us: v[1],
        init_us: v[2],
        warm_us: v[3],
        rss_delta: v[4],
        vm_delta: v[5],
        lin_size: v[6],
        lin_resident: v[7],
    }
}

#[derive(Debug)]
struct MemRow {
    module: &'static str,
    load_cached_us: Stat,
    inst_us: Stat,
    init_us: Stat,
    warm_us: Stat,
    rss: Stat,
    vm: Stat,
    lin_size: f64,
    lin_resident: Stat,
    overhead: Stat,
}

fn section2(cfg: &Cfg, mods: &[ModuleSrc], cache: &Path) -> Vec<MemRow> {
    let mut rows = Vec::new();
    for m in mods {
        let probes: Vec<Probe> = (0..cfg.runs)
            .map(|_| run_probe(m.name, cfg.big, cache))
            .collect();
        let s = |f: fn(&Probe) -> f64| Stat::of(&probes.iter().map(f).collect::<Vec<_>>());
        let row = MemRow {
            module: m.name,
            load_cached_us: s(|p| p.load_cached_us),
            inst_us: s(|p| p.inst_us),
            init_us: s(|p| p.init_us),
            warm_us: s(|p| p.warm_us),
            rss: s(|p| p.rss_delta / 1024.0),
            vm: s(|p| p.vm_delta / 1024.0),
            lin_size: probes[0].lin_size / 1024.0,
            lin_resident: s(|p| p.lin_resident / 1024.0),
            overhead: s(|p| (p.rss_delta - p.lin_resident) / 1024.0),
        };
        eprintln!(
            "  [2] {:<13} instantiate {} µs, overhead {} KiB/agent",
            row.module,
            row.inst_us.show(2),
            row.overhead.show(1)
        );
        rows.push(row);
    }
    rows
}

// ------------------------------------------------------------ section 3 ---

#[derive(Debug)]
struct CapRow {
    mib: usize,
    capture: Stat,
    capture_reuse: Stat,
    restore: Stat,
    /// The instantiation part of a restore, µs.
    inst_us: Stat,
    hash: Stat,
    /// Copy into fresh anonymous memory (reference).
    first_touch: Stat,
}

fn section3(cfg: &Cfg) -> Vec<CapRow> {
    let mut rows = Vec::new();
    let w = Worker::new().expect("worker");
    let rt = w.runtime().clone();
    for (pages, iters) in [
        (16u32, if cfg.quick { 5 } else { 40 }),
        (256, if cfg.quick { 2 } else { 8 }),
    ] {
        let bytes = pages as usize * 65536;
        let wat = filled_wat(pages);
        let module = Arc::new(
            engine::load_module(&rt.engine, "filled", wat.as_bytes(), None, 1 << 30)
                .expect("filled module"),
        );
        let mut agent = Agent::instantiate(&rt, module.clone(), 1, limits()).expect("instantiate");
        assert!(agent.init(0).fault.is_none());
        let want = agent.state_hash();
        let (mut vc, mut vw, mut vr, mut vh, mut vi, mut vf) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let gbps = |d: Duration| (bytes * iters) as f64 / d.as_secs_f64() / 1e9;
        for _ in 0..cfg.runs {
            // Captures into fresh buffers (kept, freed after the timing).
            let t0 = Instant::now();
            let states: Vec<_> = (0..iters).map(|_| agent.capture()).collect();
            vc.push(gbps(t0.elapsed()));
            drop(states);
            // Captures whose buffer is freed (and reused by the allocator).
            let t0 = Instant::now();
            let mut state = None;
            for _ in 0..iters {
                state = Some(black_box(agent.capture()));
            }
            vw.push(gbps(t0.elapsed()));
            let state = state.expect("captured");
            assert_eq!(state.memory.len(), bytes);
            // Restores into fresh agents (kept, dropped after the timing).
            let t0 = Instant::now();
            let restored: Vec<Agent> = (0..iters)
                .map(|_| Agent::restore(&rt, module.clone(), 1, limits(), &state).expect("restore"))
                .collect();
            vr.push(gbps(t0.elapsed()));
            for mut r in restored {
                assert_eq!(r.state_hash(), want, "restore changed the state");
            }
            let t0 = Instant::now();
            for _ in 0..iters {
                black_box(agent.state_hash());
            }
            vh.push(gbps(t0.elapsed()));
            let t0 = Instant::now();
            let fresh: Vec<Agent> = (0..iters)
                .map(|_| Agent::instantiate(&rt, module.clone(), 2, limits()).expect("instantiate"))
                .collect();
            vi.push(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
            drop(fresh);
            let d: Duration = (0..iters).map(|_| first_touch_copy(&state.memory)).sum();
            vf.push(gbps(d));
        }
        let row = CapRow {
            mib: bytes >> 20,
            capture: Stat::of(&vc),
            capture_reuse: Stat::of(&vw),
            restore: Stat::of(&vr),
            inst_us: Stat::of(&vi),
            hash: Stat::of(&vh),
            first_touch: Stat::of(&vf),
        };
        eprintln!(
            "  [3] {:>2} MiB: capture {} GB/s, restore {} GB/s",
            row.mib,
            row.capture.show(2),
            row.restore.show(2)
        );
        rows.push(row);
    }
    rows
}

// ------------------------------------------------------------ section 4 ---

#[derive(Debug)]
struct AsRow {
    module: &'static str,
    limit: String,
    base: VmStatus,
    loaded: VmStatus,
    after: VmStatus,
    spawn_us: f64,
    step_ns: f64,
    ok: bool,
}

/// A wrapper that sets `RLIMIT_AS` and execs the worker (same pid, so the
/// worker's parent check still holds).
fn limited_worker(tmp: &Path) -> PathBuf {
    let p = tmp.join("worker-rlimit-as.sh");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nulimit -v {} || exit 64\nexec '{}' \"$@\"\n",
            AS_LIMIT / 1024,
            WORKER_BIN
        ),
    )
    .expect("write wrapper");
    let _ = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&p)
        .status();
    p
}

fn section4(
    cfg: &Cfg,
    mods: &[ModuleSrc],
    cache: &Path,
    reaper: &Reaper,
    tmp: &Path,
) -> Vec<AsRow> {
    let wrapper = limited_worker(tmp);
    let mut rows = Vec::new();
    for m in mods {
        let n = cfg.big;
        let mut ring =
            RingWorker::spawn(reaper, "bench-as", &wrapper, cfg.policy.1, &cfg.worker_args);
        let pid = ring.pid();
        let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
            .unwrap_or_else(|| "?".into());
        let base = vm_status(pid);
        ring.setup(cache, m);
        let loaded = vm_status(pid);
        let mut t = Ticks(0);
        let t0 = Instant::now();
        let done = ring.tick(spawn_work(t.next(), 1..=n as u64));
        let spawn_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        let mut ok =
            done.agents_called as usize == n && done.results.iter().all(|r| r.fault.is_none());
        let ticks = if cfg.quick { 3 } else { 20 };
        let t0 = Instant::now();
        for _ in 0..ticks {
            let d = ring.tick(step_work(t.next()));
            ok &= d.agents_called as usize == n && d.results.iter().all(|r| r.fault.is_none());
        }
        let step_ns = ns_per(t0.elapsed(), n * ticks);
        let after = vm_status(pid);
        ring.shutdown();
        eprintln!(
            "  [4] {:<13} {} agents under RLIMIT_AS {}: ok={ok}, VmPeak {:.2} GiB",
            m.name,
            n,
            limit,
            after.peak as f64 / (1u64 << 30) as f64
        );
        rows.push(AsRow {
            module: m.name,
            limit,
            base,
            loaded,
            after,
            spawn_us,
            step_ns,
            ok,
        });
    }
    rows
}

// ----------------------------------------------------------------- main ---

fn main() {
    if let Ok(module) = std::env::var(PROBE_ENV) {
        probe(&module);
        return;
    }
    let mut cfg = Cfg::from_env();
    let started = Instant::now();
    let tmp = std::env::temp_dir().join(format!("lockstep-wbench-{}", std::process::id()));
    let cache = tmp.join("cache");
    std::fs::create_dir_all(&cache).expect("tmp dir");
    let mods = modules(&tmp);
    cfg.worker_args = sandbox_args(&tmp);
    // Compile every module once ("precompiled module"), as the supervisor's
    // compile step does.
    {
        let w = Worker::new().expect("worker");
        for m in &mods {
            load(&w, &cache, m);
        }
    }
    let (reaper, _deaths) = Reaper::start().expect("reaper");
    println!("# lockstep-worker benchmarks");
    println!();
    preamble();
    println!(
        "runs: {} (median, min–max over runs){}; {} steps per run in section 1; {} agents in sections 2 and 4; ring wait policy of the bench side: {}",
        cfg.runs,
        if cfg.quick { ", QUICK" } else { "" },
        cfg.steps,
        cfg.big,
        cfg.policy.0
    );
    println!(
        "worker processes: {}",
        if cfg.worker_args.is_empty() {
            "no process sandbox (the binary has none)".to_owned()
        } else {
            format!(
                "sandboxed, extra arguments {:?}",
                cfg.worker_args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            )
        }
    );

    let on = |s: usize| cfg.sections.contains(&s);
    let s1 = if on(1) {
        section1(&cfg, &mods, &cache, &reaper)
    } else {
        Vec::new()
    };
    let s2 = if on(2) {
        section2(&cfg, &mods, &cache)
    } else {
        Vec::new()
    };
    let s3 = if on(3) { section3(&cfg) } else { Vec::new() };
    let s4 = if on(4) {
        section4(&cfg, &mods, &cache, &reaper, &tmp)
    } else {
        Vec::new()
    };

    if on(1) {
        println!();
        println!("## 1. Per-step overhead (ns per step, every agent stepped once per tick)");
        println!();
        println!(
            "| module | agents | ticks/run | direct TypedFunc | Worker::tick | ring (process) | worker-side wall of ring path | tick − direct | ring − direct | fuel/step direct / worker |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &s1 {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} / {:.1} |",
                r.module,
                r.agents,
                r.ticks,
                r.direct.show(1),
                r.worker.show(1),
                r.ring.show(1),
                r.ring_inner.show(1),
                r.worker.med - r.direct.med,
                r.ring.med - r.direct.med,
                r.fuel_direct,
                r.fuel_worker
            );
        }
        println!();
        println!(
            "Spawn through a tick (instantiate + agent_init + report), µs per agent (one sample, at set-up):"
        );
        println!();
        println!("| module | agents | Worker::tick in process | ring (process) |");
        println!("|---|--:|--:|--:|");
        for r in s1.iter().filter(|r| r.agents >= 1_000) {
            println!(
                "| {} | {} | {:.2} | {:.2} |",
                r.module, r.agents, r.spawn_inproc_us, r.spawn_ring_us
            );
        }
    }

    if on(2) {
        println!();
        println!(
            "## 2. Instantiation and memory per idle agent ({} agents, fresh process per run)",
            cfg.big
        );
        println!();
        println!(
            "| module | cached module load (µs, once) | Agent::instantiate, growing a population (µs/agent) | agent_init (µs/agent) | instantiate + init + drop, warm heap (µs) | RSS Δ (KiB/agent) | linear memory size (KiB/agent) | resident linear memory (KiB/agent) | **RSS beyond resident linear memory (KiB/agent)** | address space Δ (KiB/agent) |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &s2 {
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} | **{}** | {} |",
                r.module,
                r.load_cached_us.show(0),
                r.inst_us.show(2),
                r.init_us.show(2),
                r.warm_us.show(2),
                r.rss.show(1),
                r.lin_size,
                r.lin_resident.show(1),
                r.overhead.show(1),
                r.vm.show(1)
            );
        }
    }

    if on(3) {
        println!();
        println!("## 3. Capture / restore throughput (GB/s of linear memory, in process)");
        println!();
        println!(
            "| memory | Agent::capture, fresh buffers | Agent::capture, buffer freed and reused | Agent::restore into a fresh agent (instantiate + copy + globals) | of which instantiate (µs) | Agent::state_hash (in place, chunked BLAKE3) | reference: memcpy into fresh anonymous memory |"
        );
        println!("|--:|--:|--:|--:|--:|--:|--:|");
        for r in &s3 {
            println!(
                "| {} MiB | {} | {} | {} | {} | {} | {} |",
                r.mib,
                r.capture.show(2),
                r.capture_reuse.show(2),
                r.restore.show(2),
                r.inst_us.show(1),
                r.hash.show(2),
                r.first_touch.show(2)
            );
        }
    }

    if on(4) {
        println!();
        println!(
            "## 4. {} agents in a real worker process under RLIMIT_AS",
            cfg.big
        );
        println!();
        println!(
            "| module | RLIMIT_AS | all agents ok | VmSize idle → loaded → with agents (MiB) | VmPeak (MiB) | VmRSS / VmHWM with agents (MiB) | address space per agent (KiB) | RSS per agent (KiB) | spawn (µs/agent) | step via ring (ns) |"
        );
        println!("|---|--:|:-:|--:|--:|--:|--:|--:|--:|--:|");
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        for r in &s4 {
            let n = cfg.big as f64;
            println!(
                "| {} | {} | {} | {:.0} → {:.0} → {:.0} | {:.0} | {:.0} / {:.0} | {:.1} | {:.1} | {:.2} | {:.1} |",
                r.module,
                r.limit,
                if r.ok { "yes" } else { "NO" },
                mib(r.base.size),
                mib(r.loaded.size),
                mib(r.after.size),
                mib(r.after.peak),
                mib(r.after.rss),
                mib(r.after.hwm),
                (r.after.size as f64 - r.loaded.size as f64) / n / 1024.0,
                (r.after.rss as f64 - r.loaded.rss as f64) / n / 1024.0,
                r.spawn_us,
                r.step_ns
            );
        }
    }
    println!();
    println!(
        "load at end: {}; total bench time {:.1} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
