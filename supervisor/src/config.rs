//! How a run is configured: [`RunConfig`] (validated from the command line
//! or built by a program) and the defaults that depend on the manifest.

use crate::child::locate_binary;
use crate::inference::InferenceConfig;
use crate::jail::SandboxSettings;
use crate::manifest::Manifest;
use std::path::PathBuf;
use std::time::Duration;

/// Ring capacity per direction for workers (a message larger than half of
/// it is carried in several frames; a ring's pages become resident in both
/// processes as the ring is used, so this bounds their shared memory).
pub const WORKER_RING: usize = 4 << 20;
/// Floor of the computed `RLIMIT_AS` of a worker.
pub const MIN_ADDRESS_SPACE: u64 = 8 << 30;
/// Default longest silence of a child's heartbeat while it owes an answer
/// before it counts as hung (ARCHITECTURE.md, "Failure model").
pub const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(1);
/// Checkpoints kept by a `--forever` run whose manifest sets no
/// `retain_checkpoints`.
pub const FOREVER_RETAIN_CHECKPOINTS: u64 = 8;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The validated manifest.
    pub manifest: Manifest,
    /// The manifest's text (journaled).
    pub manifest_text: String,
    /// The run directory (created; must not exist or be empty).
    pub run_dir: PathBuf,
    /// Worker processes.
    pub workers: usize,
    /// Run seed.
    pub seed: u64,
    /// The worker binary.
    pub worker_bin: PathBuf,
    /// Wall-clock watchdog per agent call.
    pub watchdog: Duration,
    /// Longest wait for one tick's results from a worker, however alive it
    /// looks.
    pub tick_timeout: Duration,
    /// Longest silence of a child's heartbeat while it owes an answer.
    pub hang_timeout: Duration,
    /// Publish the live state on the state board.
    pub board: bool,
    /// Listen for `lockstep ctl` on `<run-dir>/control.sock`.
    pub control_socket: bool,
    /// Write `metrics.jsonl`.
    pub metrics: bool,
    /// Directory of the compiled-module cache (`None`: compiled modules are
    /// kept for this run only).
    pub module_cache: Option<PathBuf>,
    /// The inference host: binary, device, timeouts.
    pub inference: InferenceConfig,
    /// Checkpoint every this many ticks (0: only at the start and the end).
    pub checkpoint_every: u64,
    /// Keep this many of the most recent checkpoints, and the journal from
    /// the oldest of them (`None`: all).
    pub retain_checkpoints: Option<u64>,
    /// The run directory a restored snapshot came from (its page store is
    /// read for agent memories), if not `run_dir`.
    pub origin: Option<PathBuf>,
    /// Directory relative manifest paths were resolved against (recorded in
    /// `meta.json` so `resume` and `replay` can re-read the manifest).
    pub manifest_dir: PathBuf,
    /// Ticks the run was asked for (recorded in `meta.json` for `resume`).
    pub target_ticks: u64,
    /// Extra environment for every worker process (fault injection in
    /// tests: `LOCKSTEP_INJECT`).
    pub worker_env: Vec<(String, String)>,
    /// Extra environment for the workers started with the run only, not for
    /// those started by recovery (one-shot fault injection in tests).
    pub first_worker_env: Vec<(String, String)>,
    /// The children's sandbox: layers, identity, cgroup limits (from the
    /// manifest's `[sandbox]`, overridden on the command line).
    pub sandbox: SandboxSettings,
    /// Shared worker slots placed on other machines (`--nats`, `--nodes`).
    pub remote: Option<crate::remote::RemoteWorkers>,
    /// Give each worker a CPU of its own when the workers and the
    /// supervisor take every CPU (`--no-pin-workers` turns it off).
    pub pin_workers: bool,
}

impl RunConfig {
    /// Defaults for a manifest: workers, seed and checkpoint policy from
    /// it, binaries next to the running executable.
    pub fn new(
        manifest: Manifest,
        manifest_text: String,
        run_dir: PathBuf,
    ) -> Result<Self, String> {
        let workers = manifest.workers as usize;
        let seed = manifest.seed;
        let checkpoint_every = manifest.checkpoint_every;
        let retain_checkpoints = manifest.retain_checkpoints;
        let cache = std::env::var_os("LOCKSTEP_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lockstep/modules"))
            });
        Ok(Self {
            manifest_text,
            run_dir,
            workers,
            seed,
            worker_bin: locate_binary("lockstep-worker", "LOCKSTEP_WORKER_BIN")?,
            watchdog: Duration::from_secs(5),
            tick_timeout: Duration::from_secs(600),
            hang_timeout: DEFAULT_HANG_TIMEOUT,
            board: true,
            control_socket: true,
            metrics: true,
            module_cache: cache,
            inference: InferenceConfig::default(),
            checkpoint_every,
            retain_checkpoints,
            origin: None,
            manifest_dir: PathBuf::from("."),
            target_ticks: 0,
            worker_env: Vec::new(),
            first_worker_env: Vec::new(),
            sandbox: SandboxSettings::from_manifest(&manifest),
            remote: None,
            pin_workers: true,
            manifest,
        })
    }
}

/// The default `RLIMIT_AS` of a worker: 4 GiB for the process itself (code,
/// compiled modules, rings, allocator arenas) plus twice the memory limits
/// of all the manifest's agents — an upper bound for any worker whatever
/// the number of workers, with room for copies while a memory grows —
/// and at least [`MIN_ADDRESS_SPACE`] (agents spawned at run time).
pub fn default_address_space_limit(manifest: &Manifest) -> u64 {
    let agents = manifest.agents.iter().fold(0u64, |acc, a| {
        acc.saturating_add(a.memory.saturating_mul(a.count))
    });
    (4u64 << 30)
        .saturating_add(agents.saturating_mul(2))
        .max(MIN_ADDRESS_SPACE)
}
