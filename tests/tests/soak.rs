//! Soak: a `--forever` run of 1,000 agents with the default settings stays
//! within a bounded memory and disk footprint, however long it runs
//! (ARCHITECTURE.md, "Resource bounds of a long run").  The test runs for
//! `LOCKSTEP_SOAK_SECS` seconds (default 60); `scripts/soak.sh` runs it for
//! longer.

use lockstep_tests::{ChildGuard, TempDir, Watchdog, bin, children, idle_wat};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// Memory (MiB) a run of 1,000 agents may use, whatever its length: the
/// supervisor's own heap, plus the shared rings of its children (resident
/// in both processes once used).
const SUPERVISOR_MIB: u64 = 96;
/// A worker of 500 idle agents: its heap and the agents' memories, plus its
/// rings.
const WORKER_MIB: u64 = 96;
/// The run directory: the retained checkpoints with their pages and
/// journal, and at most two metrics files of 64 MiB.
const RUN_DIR_MIB: u64 = 320;

#[test]
fn a_forever_run_stays_within_its_bounds() {
    let secs: u64 = std::env::var("LOCKSTEP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let _w = Watchdog::new("soak", Duration::from_secs(secs + 300));
    let tmp = TempDir::new("soak");
    std::fs::write(tmp.path().join("noop.wat"), idle_wat(1, 0x10000)).unwrap();
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        "[run]\nseed = 1\nworkers = 2\n\n[[agents]]\nname = \"noop\"\nmodule = \"noop.wat\"\ncount = 1000\nmemory = \"64KiB\"\n",
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let mut sup = ChildGuard::new(
        Command::new(bin("lockstep"))
            .args(["run", manifest.to_str().unwrap(), "--forever", "--run-dir"])
            .arg(&dir)
            .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = sup.id();
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut peak = (0u64, 0u64, 0u64);
    let mut anon_after_warmup: Option<u64> = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            sup.child().try_wait().unwrap().is_none(),
            "the run ended early"
        );
        let rss = status_kib(pid, "VmRSS") / 1024;
        let anon = status_kib(pid, "RssAnon");
        let kids: Vec<u64> = children(pid)
            .iter()
            .map(|c| status_kib(*c, "VmRSS") / 1024)
            .collect();
        let disk = dir_size(&dir) >> 20;
        let worst_kid = kids.iter().copied().max().unwrap_or(0);
        peak = (peak.0.max(rss), peak.1.max(worst_kid), peak.2.max(disk));
        if t0.elapsed() >= Duration::from_secs(20) {
            anon_after_warmup.get_or_insert(anon);
        }
        samples.push(format!(
            "{:>4}s supervisor {rss} MiB (heap {} MiB), children {kids:?} MiB, run dir {disk} MiB",
            t0.elapsed().as_secs(),
            anon / 1024
        ));
    }
    let anon_end = status_kib(pid, "RssAnon");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = sup.child().wait().unwrap();
    eprintln!("{}", samples.join("\n"));
    assert!(status.success(), "{status:?}");
    assert!(
        peak.0 <= SUPERVISOR_MIB,
        "supervisor peaked at {} MiB",
        peak.0
    );
    assert!(peak.1 <= WORKER_MIB, "a child peaked at {} MiB", peak.1);
    assert!(
        peak.2 <= RUN_DIR_MIB,
        "the run directory peaked at {} MiB",
        peak.2
    );
    // The supervisor's own heap does not grow once the run is warm.
    if let Some(warm) = anon_after_warmup {
        assert!(
            anon_end <= warm + 8 * 1024,
            "supervisor heap grew from {warm} KiB to {anon_end} KiB"
        );
    }
}
