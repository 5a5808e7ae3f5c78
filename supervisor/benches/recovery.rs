//! Checkpoint and recovery benchmarks: checkpoint time and size for 1,000 agents × 1 MiB of
//! memory (full and incremental), restore time, and recovery time from a
//! worker SIGKILL to the next completed tick.
//!
//! `cargo bench -p lockstep-supervisor --bench recovery` (release build;
//! `LOCKSTEP_BENCH_QUICK=1` for a smaller smoke run, `LOCKSTEP_BENCH_RUNS`
//! for the number of repetitions, default 3).

use lockstep_bench_support::knobs::{env_or, quick};
use lockstep_bench_support::paths::target_bin;
use lockstep_bench_support::{Stat, preamble};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::replay;
use lockstep_supervisor::run::{Run, RunConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An agent with 1 MiB of data (plus a 64 KiB page for the host's buffer)
/// that fills it with agent-specific data at init (every chunk distinct) and
/// dirties one 4 KiB chunk per step.
const AGENT: &str = r#"(module
  (import "lockstep" "agent_id" (func $id (result i64)))
  (memory (export "memory") 17 17)
  (global $n (mut i32) (i32.const 0))
  (func (export "agent_abi_version") (result i32) (i32.const 0x10000))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1048576))
  (func (export "agent_init") (result i32) (local $i i32) (local $v i64)
    (local.set $v (i64.mul (call $id) (i64.const 0x9E3779B97F4A7C15)))
    (loop $l
      (i64.store (local.get $i) (i64.add (local.get $v) (i64.extend_i32_u (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 8)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1048576))))
    (i32.const 0))
  (func (export "agent_step") (param i32) (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.store (i32.and (i32.mul (global.get $n) (i32.const 4096)) (i32.const 1048575)) (global.get $n))
    (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#;

fn bin(name: &str) -> PathBuf {
    let p = target_bin(name);
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --release --workspace --bins`",
        p.display()
    );
    p
}

fn config(dir: &Path, agents: u64, workers: usize) -> RunConfig {
    std::fs::create_dir_all(dir).expect("dir");
    let wat = dir.join("agent.wat");
    std::fs::write(&wat, AGENT).expect("write agent");
    let text = format!(
        "[run]\nseed = 1\n\n[[agents]]\nname = \"a\"\nmodule = \"{}\"\ncount = {agents}\nmemory = \"2MiB\"\nfuel = 50000000\n",
        wat.display()
    );
    let mpath = dir.join("m.toml");
    std::fs::write(&mpath, &text).expect("write manifest");
    let m = Manifest::load(&mpath).expect("manifest");
    let mut cfg = RunConfig::new(m, text, dir.join("run")).expect("config");
    cfg.worker_bin = bin("lockstep-worker");
    cfg.workers = workers;
    cfg.board = false;
    cfg.metrics = false;
    cfg.control_socket = false;
    cfg.checkpoint_every = 0;
    cfg.manifest_dir = dir.to_path_buf();
    cfg
}

fn main() {
    let quick = quick();
    let runs: usize = env_or("LOCKSTEP_BENCH_RUNS", if quick { 1 } else { 3 });
    println!("# Checkpoint and recovery benchmark");
    preamble();
    let agents: u64 = if quick { 100 } else { 1000 };
    let workers = 2;
    let (
        mut full_ms,
        mut full_mb,
        mut inc_ms,
        mut inc_mb,
        mut restore_ms,
        mut recover_ms,
        mut tick_ms,
    ) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for r in 0..runs {
        let dir = std::env::temp_dir().join(format!(
            "lockstep-bench-recovery-{}-{r}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = config(&dir, agents, workers);
        let run_dir = cfg.run_dir.clone();
        let mut run = Run::start(cfg).expect("start");
        run.tick().expect("tick 1");
        let pack = |d: &Path| std::fs::metadata(d.join("pages.pack")).map_or(0, |m| m.len());
        let before = pack(&run_dir);
        let t = Instant::now();
        let (file, _) = run.checkpoint().expect("checkpoint");
        full_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let snap = std::fs::metadata(run_dir.join(&file)).map_or(0, |m| m.len());
        full_mb.push((pack(&run_dir) - before + snap) as f64 / 1e6);
        // Ten ticks dirty ten chunks per agent, then an incremental checkpoint.
        let mut ticks = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            run.tick().expect("tick");
            ticks.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let c = &run.state().counters;
        assert!(
            c.faults == 0 && c.steps == 11 * agents,
            "the agents must step without faults: {} steps, {} faults ({:?})",
            c.steps,
            c.faults,
            run.state().agents.values().next().map(|a| &a.status)
        );
        tick_ms.push(Stat::of(&ticks).med);
        let before = pack(&run_dir);
        let t = Instant::now();
        let (file, _) = run.checkpoint().expect("checkpoint");
        inc_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let snap = std::fs::metadata(run_dir.join(&file)).map_or(0, |m| m.len());
        inc_mb.push((pack(&run_dir) - before + snap) as f64 / 1e6);
        // Recovery: SIGKILL worker 0, then time the next tick (spawn, restore
        // from the checkpoint, re-execution of the logged ticks, the tick).
        run.tick().expect("tick");
        let pid = run.worker_pids()[0];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        run.tick().expect("recovering tick");
        recover_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let tick = run.state().tick;
        run.finish().expect("finish");
        // Restore: boot from the last checkpoint (no ticks).
        let t = Instant::now();
        let rep = replay::replay(
            &run_dir,
            Some(replay::From::Tick(tick)),
            Some(tick),
            Some(workers),
        )
        .expect("restore");
        restore_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rep.until, tick);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mem = agents as f64 * 1.048576;
    println!(
        "recovery benchmark: {agents} agents × 1 MiB ({mem:.0} MB of linear memory), {workers} workers, {runs} run(s); medians (min–max)"
    );
    println!("{:<44} {:>12} {:>22}", "measure", "median", "range");
    let row = |name: &str, v: Vec<f64>, unit: &str| {
        let s = Stat::of(&v);
        println!(
            "{name:<44} {:>9.1} {unit:<3} {:>9.1}–{:<9.1}",
            s.med, s.min, s.max
        );
    };
    row("full checkpoint: time", full_ms, "ms");
    row("full checkpoint: bytes written", full_mb, "MB");
    row("incremental checkpoint (10 ticks): time", inc_ms, "ms");
    row("incremental checkpoint: bytes written", inc_mb, "MB");
    row("restore (boot workers + load + restore)", restore_ms, "ms");
    row("normal tick", tick_ms.clone(), "ms");
    row("tick with worker recovery after SIGKILL", recover_ms, "ms");
}
