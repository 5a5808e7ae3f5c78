//! Helpers for Lockstep's cross-process integration tests.
//!
//! * [`Watchdog`] — aborts the test process (after killing its children) if a
//!   test runs past its deadline, so a hang is a loud failure, never a stuck
//!   CI job.
//! * [`ChildGuard`] — kills and reaps a spawned process on drop.
//! * [`bin`] — finds the workspace's binaries in the target directory.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// Aborts the process if not dropped within its timeout.
#[derive(Debug)]
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `label`.
    pub fn new(label: &str, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let label = label.to_owned();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                eprintln!(
                    "WATCHDOG: test `{label}` exceeded {timeout:?}; killing children and aborting"
                );
                // Kill the whole process group's children we may have left.
                let _ = std::process::Command::new("pkill")
                    .args(["-KILL", "-P", &std::process::id().to_string()])
                    .status();
                std::process::abort();
            }
        });
        Self {
            done: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills and reaps a child process when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Takes the child out (it will no longer be killed on drop).
    pub fn take(mut self) -> Child {
        self.0.take().expect("child already taken")
    }

    /// Mutable access.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Path of a workspace binary, next to the test executable's target
/// directory (`target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let p = profile_dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A fresh temporary directory for one test (removed on drop), readable by
/// every user as a run directory is (the sandbox tests' children run as an
/// unprivileged user).
#[derive(Debug)]
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// Creates `$TMPDIR/lockstep-test-<label>-<random>`.
    pub fn new(label: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        Self(
            tempfile::Builder::new()
                .prefix(&format!("lockstep-test-{label}-"))
                .permissions(std::fs::Permissions::from_mode(0o755))
                .tempdir()
                .expect("create temp dir"),
        )
    }

    /// The path.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

pub mod nats;

/// The frame format of the cross-process stream tests: `seq: u64`,
/// `checksum: u64` (first 8 bytes of BLAKE3 over the rest), then the body.
pub mod stream {
    /// Deterministic body length for frame `seq` of stream `seed`.
    pub fn body_len(seed: u64, seq: u64, max: usize) -> usize {
        let x = splitmix(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Mostly small frames, sometimes large ones, to exercise wrap-around.
        if x.is_multiple_of(64) {
            (x >> 8) as usize % max
        } else {
            (x >> 8) as usize % 256
        }
    }

    /// SplitMix64.
    pub fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with frame `seq` (header + body of `len` bytes).
    pub fn fill(out: &mut [u8], seed: u64, seq: u64) {
        let body = &mut out[16..];
        let mut x = splitmix(seed ^ seq);
        for chunk in body.chunks_mut(8) {
            x = splitmix(x);
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let sum = checksum(&out[16..]);
        out[..8].copy_from_slice(&seq.to_le_bytes());
        out[8..16].copy_from_slice(&sum.to_le_bytes());
    }

    /// Checksum of a body.
    pub fn checksum(body: &[u8]) -> u64 {
        let h = blake3::hash(body);
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// Verifies a received frame; returns its sequence number.
    pub fn verify(frame: &[u8]) -> Result<u64, String> {
        if frame.len() < 16 {
            return Err(format!(
                "frame of {} bytes is shorter than its header",
                frame.len()
            ));
        }
        let seq = u64::from_le_bytes(frame[..8].try_into().expect("8"));
        let sum = u64::from_le_bytes(frame[8..16].try_into().expect("8"));
        if checksum(&frame[16..]) != sum {
            return Err(format!(
                "frame {seq}: checksum mismatch (torn or corrupted)"
            ));
        }
        Ok(seq)
    }
}

/// The first difference between two journals, described (`None` if equal).
pub fn journal_diff(a: &std::path::Path, b: &std::path::Path) -> Option<String> {
    use lockstep_supervisor::journal::read_journal;
    let ra = read_journal(a).map_err(|e| e.to_string());
    let rb = read_journal(b).map_err(|e| e.to_string());
    match (ra, rb) {
        (Ok(x), Ok(y)) => {
            for (i, (p, q)) in x.entries.iter().zip(&y.entries).enumerate() {
                if p != q {
                    return Some(format!("entry {i} differs:\n  {p:?}\n  {q:?}"));
                }
            }
            if x.entries.len() != y.entries.len() {
                return Some(format!(
                    "{} vs {} entries",
                    x.entries.len(),
                    y.entries.len()
                ));
            }
            if std::fs::read(a).ok() != std::fs::read(b).ok() {
                return Some("same entries, different bytes".into());
            }
            None
        }
        (x, y) => Some(format!("{:?} / {:?}", x.err(), y.err())),
    }
}

/// Manifests and runs shared by the supervisor-level tests.
mod runs {
    use super::bin;
    use lockstep_supervisor::manifest::Manifest;
    use lockstep_supervisor::run::{Run, RunConfig};
    use std::path::{Path, PathBuf};

    /// The repository root.
    pub fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    pub fn agent(name: &str) -> String {
        let p = root().join("target/agents").join(format!("{name}.wasm"));
        assert!(
            p.is_file(),
            "{} missing: run scripts/build-agents.sh",
            p.display()
        );
        p.display().to_string()
    }

    /// A model generated by `scripts/gen-models.sh` (`.deps/models/<name>`).
    pub fn model(name: &str) -> String {
        let p = root().join(".deps/models").join(name);
        assert!(
            p.is_file(),
            "{} missing: run scripts/gen-models.sh",
            p.display()
        );
        p.display().to_string()
    }

    /// A society of ≥ 100 agents: sensors and aggregators (pub/sub), coordinator + task
    /// workers, counters, and ping → tally pairs that check that no direct
    /// message is lost or duplicated.
    pub fn society(dir: &Path, pairs: usize, checkpoint_every: u64) -> PathBuf {
        let mut m = format!(
            "[run]\nseed = 99\nticks = 100\nworkers = 2\ncheckpoint_every = {checkpoint_every}\n\n\
             [[agents]]\nname = \"coordinator\"\nmodule = \"{}\"\n\n\
             [[agents]]\nname = \"task-worker\"\nmodule = \"{}\"\ncount = 3\n\n\
             [[agents]]\nname = \"sensor\"\nmodule = \"{}\"\ncount = 60\nmemory = \"1MiB\"\n\n\
             [[agents]]\nname = \"aggregator\"\nmodule = \"{}\"\ncount = 6\n\n\
             [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 20\n\n",
            agent("coordinator"),
            agent("counter"),
            agent("sensor"),
            agent("aggregator"),
            agent("counter")
        );
        for i in 0..pairs {
            m.push_str(&format!(
                "[[agents]]\nname = \"ping-{i}\"\nmodule = \"{}\"\n\n[[agents]]\nname = \"tally-{i}\"\nmodule = \"{}\"\n\n",
                agent("ping"),
                agent("tally")
            ));
        }
        let p = dir.join("society.toml");
        std::fs::write(&p, m).unwrap();
        p
    }

    pub fn config(manifest: &Path, run_dir: PathBuf, workers: usize) -> RunConfig {
        let text = std::fs::read_to_string(manifest).unwrap();
        let m = Manifest::load(manifest).unwrap();
        let mut cfg = RunConfig::new(m, text, run_dir).unwrap();
        cfg.worker_bin = bin("lockstep-worker");
        cfg.inference.host_bin = Some(bin("lockstep-inference-host"));
        cfg.workers = workers;
        cfg.board = false;
        cfg.control_socket = false;
        cfg.metrics = false;
        cfg.module_cache = None;
        cfg.manifest_dir = manifest.parent().unwrap().to_path_buf();
        cfg
    }

    pub fn run_to(cfg: RunConfig, ticks: u64) -> (String, Vec<u8>) {
        let dir = cfg.run_dir.clone();
        let mut run = Run::start(cfg).unwrap();
        while run.state().tick < ticks {
            run.tick().unwrap();
        }
        let sum = run.finish().unwrap();
        (sum.hash, std::fs::read(dir.join("journal.lsj")).unwrap())
    }
}
pub use runs::{agent, config, model, root, run_to, society};

/// Writes an idle agent (`idle.wat`, [`idle_wat`]) and a manifest running
/// `count` of them on `workers` workers with `seed` into `dir`; returns the
/// manifest's path.
pub fn idle_manifest(dir: &Path, seed: u64, count: usize, workers: usize) -> PathBuf {
    std::fs::write(dir.join("idle.wat"), idle_wat(1, 0x10000)).unwrap();
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[run]\nseed = {seed}\nworkers = {workers}\n\n\
             [[agents]]\nname = \"idle\"\nmodule = \"idle.wat\"\ncount = {count}\n"
        ),
    )
    .unwrap();
    manifest
}

/// Waits until the run in `dir` opens its control socket (once every
/// worker is up), at most `timeout`.
pub fn wait_for_control_socket(dir: &Path, timeout: Duration) {
    let t0 = std::time::Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(
            t0.elapsed() < timeout,
            "{}: no control socket after {timeout:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The children of process `pid` (every thread's), from `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(c) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// An agent that does nothing, as WAT: every export of the ABI, a memory of
/// `pages` 64 KiB pages, and `abi` as its `agent_abi_version`
/// (`0x10000` is ABI 1.0).
pub fn idle_wat(pages: u32, abi: u32) -> String {
    format!(
        r#"(module (memory (export "memory") {pages})
  (func (export "agent_abi_version") (result i32) (i32.const {abi:#x}))
  (func (export "agent_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_init") (result i32) (i32.const 0))
  (func (export "agent_step") (param i32) (result i32) (i32.const 0))
  (func (export "agent_receive") (param i32) (result i32) (i32.const 0))
  (func (export "agent_shutdown") (result i32) (i32.const 0)))"#
    )
}

/// The in-process reference for the inference tests: this process's single
/// ONNX Runtime environment (ORT allows one per process, ever) and a CPU
/// [`ModelRegistry`](lockstep_inference_host::ModelRegistry) with the host's
/// deterministic options, in which `models` — `(id, version, path)` — are
/// loaded (hash-checked) on first use.  Every caller in one test binary must
/// pass the same models.
pub fn reference_registry(
    models: &[(&str, &str, PathBuf)],
) -> std::sync::MutexGuard<'static, lockstep_inference_host::ModelRegistry> {
    use lockstep_inference_host::{DevicePref, HostOptions, ModelRegistry, init_runtime};
    use std::sync::{Mutex, OnceLock};
    static REG: OnceLock<Mutex<ModelRegistry>> = OnceLock::new();
    let reg = REG.get_or_init(|| {
        let lib = lockstep_inference_host::locate_ort_library(None).unwrap_or_else(|e| {
            panic!("{e}\nrun scripts/fetch-onnxruntime.sh (or set ORT_DYLIB_PATH)")
        });
        let env = init_runtime(&lib).unwrap();
        let mut reg = ModelRegistry::new(
            &env,
            HostOptions {
                device: DevicePref::Cpu,
                intra_threads: 1,
            },
        );
        for (id, version, p) in models {
            let hex = blake3::hash(&std::fs::read(p).unwrap())
                .to_hex()
                .to_string();
            reg.load_model(id, version, p, &hex).unwrap();
        }
        Mutex::new(reg)
    });
    reg.lock().unwrap_or_else(|p| p.into_inner())
}
