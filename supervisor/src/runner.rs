//! A live run: the deterministic [`SimState`] driven tick by tick across
//! worker processes, with the journal, telemetry, the state board and the
//! control socket around it.

use crate::child::{Child, ChildError, ChildSpec, locate_binary};
use crate::ctl::{CtlRequest, CtlServer};
use crate::inference::{InferenceConfig, InferenceService}; // inference (issue 5)
use crate::journal::{Entry, JournalError, JournalWriter};
use crate::manifest::Manifest;
use crate::reaper::{ChildExit, Reaper};
use crate::sim::{
    AgentStatus, InferAnswer, InferRequest, Input, InputOutcome, SimState, TickPlan, TickSummary,
};
use crate::snapshot::{self, ModelState, PageStore, SnapshotBody, SnapshotError};
use crate::telemetry::{AgentTelemetry, Aggregates, JsonlSink, TelemetryHook, TickTelemetry};
use lockstep_common::live::{
    AgentRow, ChildStatus, LIVE_STATE_VERSION, LiveState, MAX_AGENT_ROWS, MAX_EXTRA_ROWS, RunStats,
};
use shm_protocol::board::BoardWriter;
use shm_protocol::control::{Down, Role, Up};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::{AgentResult, Delivery, TickDone, TickWork, WorkerCommand, WorkerReply};
use shm_protocol::{ChannelError, WaitPolicy};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every this many ticks, every called agent reports its fuel and wall time
/// (per-agent telemetry is sampled to keep ticks cheap).
pub const SAMPLE_EVERY: u64 = 64;
/// Ring capacity per direction for workers.
pub const WORKER_RING: usize = 16 << 20;
/// Shortest interval between two state-board publications while running.
pub const BOARD_INTERVAL: Duration = Duration::from_millis(20);

/// Failures of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run directory is unusable.
    #[error("run directory {dir}: {reason}")]
    RunDir {
        /// The directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// The state could not be built from the manifest.
    #[error("{0}")]
    Setup(String),
    /// A child process failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A worker broke the protocol.
    #[error("{worker}: protocol violation: {detail}")]
    Protocol {
        /// The worker.
        worker: String,
        /// What it did.
        detail: String,
    },
    /// A module was refused by the workers.
    #[error("{0}")]
    Module(String),
    /// A child died during the run.
    #[error("{0}")]
    Died(String),
    /// A replayed tick did not reproduce its recorded hash.
    #[error("tick {tick} diverged: recorded hash {expected}, replayed {actual}")]
    Diverged {
        /// The tick.
        tick: u64,
        /// Recorded hash.
        expected: String,
        /// Replayed hash.
        actual: String,
    },
    /// A snapshot or the page store failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A replayed checkpoint's state differs from the recorded one.
    #[error("{0}")]
    StateDiverged(Box<crate::replay::Divergence>),
    /// Talking to a worker failed.
    #[error("{worker}: {what}")]
    Channel {
        /// The worker.
        worker: String,
        /// What we were doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: ChannelError,
    },
}

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
    /// Longest wait for one tick's results from a worker.
    pub tick_timeout: Duration,
    /// Publish the live state on the state board.
    pub board: bool,
    /// Listen for `lockstep ctl` on `<run-dir>/control.sock`.
    pub control_socket: bool,
    /// Write `metrics.jsonl`.
    pub metrics: bool,
    /// Directory of the compiled-module cache (`None`: no cache).
    pub module_cache: Option<PathBuf>,
    /// The inference host (issue 5): binary, device, timeouts.
    pub inference: InferenceConfig,
    /// Checkpoint every this many ticks (0: only at the end).
    pub checkpoint_every: u64,
    /// The run directory a restored snapshot came from (its page store is
    /// read for agent memories), if not `run_dir`.
    pub origin: Option<PathBuf>,
    /// Directory relative manifest paths were resolved against (recorded in
    /// `meta.json` so `resume` and `replay` can re-read the manifest).
    pub manifest_dir: PathBuf,
    /// Ticks the run was asked for (recorded in `meta.json` for `resume`).
    pub target_ticks: u64,
    /// Extra environment for worker processes (e.g. `LOCKSTEP_INJECT` in
    /// fault-injection tests).
    pub worker_env: Vec<(String, String)>,
    /// The workers' process sandbox.
    pub worker_sandbox: WorkerSandbox,
}

/// The workers' process sandbox (ARCHITECTURE.md, "Worker sandbox"): what
/// [`Run`] passes as `lockstep-worker --sandbox … --address-space-limit …
/// --allow-read … --allow-write …`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSandbox {
    /// How much of it (default: strict, or `LOCKSTEP_WORKER_SANDBOX`).
    pub mode: lockstep_common::SandboxMode,
    /// `RLIMIT_AS` of every worker in bytes; `None`: computed from the
    /// manifest ([`default_address_space_limit`]); `Some(0)`: no limit.
    pub address_space_limit: Option<u64>,
    /// Extra directories workers may read, besides those [`Run`] computes
    /// when it boots: the manifest's directory, `[run] module_dirs`, and
    /// the directory of every module the run knows.  Modules spawned or
    /// upgraded later must lie beneath one of them (others are refused).
    pub allow_read: Vec<PathBuf>,
}

/// Floor of the computed `RLIMIT_AS` of a worker.
pub const MIN_ADDRESS_SPACE: u64 = 8 << 30;

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

impl WorkerSandbox {
    /// Strict unless `LOCKSTEP_WORKER_SANDBOX` names another mode
    /// (`best-effort`, `log`, `off`).
    pub fn from_env() -> Self {
        let mode = std::env::var("LOCKSTEP_WORKER_SANDBOX")
            .ok()
            .and_then(|v| lockstep_common::SandboxMode::parse(v.trim()))
            .unwrap_or_default();
        Self {
            mode,
            ..Self::default()
        }
    }

    /// The worker's sandbox arguments.
    fn args(&self, module_cache: Option<&Path>) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--sandbox".into(), self.mode.as_str().into()];
        if self.mode == lockstep_common::SandboxMode::Off {
            return a;
        }
        if let Some(limit) = self.address_space_limit {
            a.push("--address-space-limit".into());
            a.push(limit.to_string().into());
        }
        for d in &self.allow_read {
            a.push("--allow-read".into());
            a.push(d.into());
        }
        if let Some(c) = module_cache
            && c.is_dir()
        {
            a.push("--allow-write".into());
            a.push(c.into());
        }
        a
    }

    /// Fills in what [`Run`] computes when it boots: the readable
    /// directories (see [`WorkerSandbox::allow_read`]) and the address-space
    /// limit.
    fn resolve(&mut self, cfg_manifest: &Manifest, manifest_dir: &Path, sim: &SimState) {
        if self.address_space_limit.is_none() {
            self.address_space_limit = Some(default_address_space_limit(cfg_manifest));
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut add = |d: &Path| match std::fs::canonicalize(d) {
            Ok(c) if c.is_dir() && c.parent().is_some() => dirs.push(c),
            Ok(c) if c.is_dir() => {
                tracing::warn!(dir = %c.display(), "not letting workers read the whole file system");
            }
            _ => tracing::debug!(dir = %d.display(), "module directory does not exist"),
        };
        for d in &self.allow_read {
            add(d);
        }
        add(manifest_dir);
        for d in &cfg_manifest.module_dirs {
            add(d);
        }
        for m in sim.modules.values() {
            if let Some(parent) = Path::new(&m.path).parent() {
                add(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                });
            }
        }
        dirs.sort();
        dirs.dedup();
        // Drop directories beneath another one (the rule covers them).
        let all = dirs.clone();
        dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
        self.allow_read = dirs;
    }

    /// Why a module at `path` cannot be used by the workers, if it cannot.
    fn refuses(&self, path: &str) -> Option<String> {
        if self.mode == lockstep_common::SandboxMode::Off {
            return None;
        }
        let p = std::fs::canonicalize(path).ok()?;
        if self.allow_read.iter().any(|d| p.starts_with(d)) {
            return None;
        }
        let dirs: Vec<String> = self
            .allow_read
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Some(format!(
            "module {} is outside the directories the worker sandbox lets workers read ({}); \
             move it under one of them or add its directory to `[run] module_dirs` in the manifest",
            p.display(),
            dirs.join(", ")
        ))
    }
}

impl RunConfig {
    /// Defaults for a manifest: workers and seed from it, binaries next to
    /// the running executable.
    pub fn new(
        manifest: Manifest,
        manifest_text: String,
        run_dir: PathBuf,
    ) -> Result<Self, String> {
        let workers = manifest.workers as usize;
        let seed = manifest.seed;
        let checkpoint_every = manifest.checkpoint_every;
        let cache = std::env::var_os("LOCKSTEP_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lockstep/modules"))
            });
        Ok(Self {
            manifest,
            manifest_text,
            run_dir,
            workers,
            seed,
            worker_bin: locate_binary("lockstep-worker", "LOCKSTEP_WORKER_BIN")?,
            watchdog: Duration::from_secs(5),
            tick_timeout: Duration::from_secs(600),
            board: true,
            control_socket: true,
            metrics: true,
            module_cache: cache,
            inference: InferenceConfig::default(), // inference (issue 5)
            checkpoint_every,
            origin: None,
            manifest_dir: PathBuf::from("."),
            target_ticks: 0,
            worker_env: Vec::new(),
            worker_sandbox: WorkerSandbox::from_env(),
        })
    }
}

/// How many times a worker may be recovered within one tick.
pub const MAX_RECOVERIES_PER_TICK: u32 = 4;
/// After this many crashes at the same tick, the culprit agent is searched
/// for and quarantined.
pub const POISON_AFTER: u32 = 2;

/// `w` restricted to the agents for which `keep` holds.
fn filter_work(w: &TickWork, keep: impl Fn(u64) -> bool) -> TickWork {
    TickWork {
        tick: w.tick,
        spawns: w
            .spawns
            .iter()
            .filter(|s| keep(s.agent_id))
            .cloned()
            .collect(),
        restarts: w.restarts.iter().copied().filter(|a| keep(*a)).collect(),
        upgrades: w
            .upgrades
            .iter()
            .filter(|u| keep(u.agent_id))
            .cloned()
            .collect(),
        deliveries: w
            .deliveries
            .iter()
            .filter(|d| keep(d.agent_id))
            .cloned()
            .collect(),
        step_all: w.step_all,
        steps: w
            .steps
            .iter()
            .filter(|s| keep(s.agent_id))
            .cloned()
            .collect(),
        stops: w.stops.iter().copied().filter(|a| keep(*a)).collect(),
        measure_time: w.measure_time,
        more: w.more,
        evict: w.evict.clone(),
    }
}

/// `w` restricted to the agents in `keep`.
fn only(w: &TickWork, keep: &[u64]) -> TickWork {
    filter_work(w, |a| keep.contains(&a))
}

/// `w` without the agents in `drop`.
fn without(w: &TickWork, drop: &[u64]) -> TickWork {
    filter_work(w, |a| !drop.contains(&a))
}

/// Recorded inputs and tick hashes to replay.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Inputs by the tick they apply at, in journal order.
    pub inputs: BTreeMap<u64, Vec<Input>>,
    /// Recorded tick hashes to check.
    pub hashes: BTreeMap<u64, [u8; 32]>,
    /// Replay ticks up to and including this one.
    pub until: u64,
}

/// The work of one tick as sent to each worker, and each worker's digest.
#[derive(Debug, Clone)]
struct LoggedTick {
    tick: u64,
    parts: Vec<Vec<TickWork>>,
    digests: Vec<[u64; 4]>,
}

fn dir_error(dir: &Path, reason: String) -> RunError {
    RunError::RunDir {
        dir: dir.display().to_string(),
        reason,
    }
}

/// Makes sure `dir` does not exist or is empty.
fn prepare_dir(dir: &Path) -> Result<(), RunError> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| dir_error(dir, e.to_string()))?
            .next()
            .is_none();
        if !empty {
            return Err(dir_error(
                dir,
                "already exists and is not empty (choose another --run-dir)".into(),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| dir_error(dir, format!("cannot create: {e}")))
}

/// Writes `meta.json` (non-deterministic facts: versions, pid, wall time).
fn write_meta(cfg: &RunConfig) -> Result<(), RunError> {
    let meta = serde_json::json!({
        "lockstep": env!("CARGO_PKG_VERSION"),
        "workers": cfg.workers,
        "seed": cfg.seed,
        "manifest_dir": std::fs::canonicalize(&cfg.manifest_dir).unwrap_or_else(|_| cfg.manifest_dir.clone()).display().to_string(),
        "target_ticks": cfg.target_ticks,
        "checkpoint_every": cfg.checkpoint_every,
        "pid": std::process::id(),
        "started_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
    });
    std::fs::write(cfg.run_dir.join("meta.json"), format!("{meta:#}\n"))
        .map_err(|e| dir_error(&cfg.run_dir, e.to_string()))
}

fn is_peer_gone(e: &RunError) -> bool {
    matches!(
        e,
        RunError::Channel {
            source: ChannelError::PeerGone(_),
            ..
        }
    )
}

/// The supervisor's side of the workers' rings.  With a core to spare
/// beyond the workers and itself it spins briefly, then parks.  Without one
/// (e.g. 2 workers on 2 vCPUs) it polls by yielding the CPU: a parked
/// supervisor costs a futex wake-up per tick, and a spinning one would take
/// the CPU a worker needs; a yielding one runs only when a core is free.
/// The workers poll the same way in that case ([`worker_wait_args`]): a
/// worker spinning after its reply held the CPU the woken supervisor
/// needed for up to a scheduler slice, which put the p99 tick of 2 workers
/// on 2 vCPUs at ≈ 0.65 ms instead of ≈ 20 µs (docs/benchmarks.md).
fn supervisor_policy(workers: usize) -> WaitPolicy {
    let spare = spare_core(workers);
    WaitPolicy {
        spin: if spare { 2_000 } else { 20_000 },
        park_slice: Duration::from_millis(10),
        yielding: !spare,
    }
}

/// Whether the machine has a core for the supervisor and every worker plus
/// one to spare.
fn spare_core(workers: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores >= workers + 2
}

/// The workers' own wait arguments: without a spare core a worker polls by
/// yielding the CPU (see [`supervisor_policy`]).
fn worker_wait_args(workers: usize) -> Vec<std::ffi::OsString> {
    if spare_core(workers) {
        Vec::new()
    } else {
        vec!["--wait-yield".into()]
    }
}

/// Spawns worker `i`, completes its handshake and configures it.
fn spawn_worker(cfg: &RunConfig, i: usize, reaper: &Reaper) -> Result<WorkerLink, RunError> {
    let spec = ChildSpec {
        role: Role::Worker,
        name: format!("worker-{i}"),
        program: cfg.worker_bin.clone(),
        args: {
            let mut a = cfg.worker_sandbox.args(cfg.module_cache.as_deref());
            a.extend(worker_wait_args(cfg.workers.max(1)));
            a
        },
        rings: SegmentConfig {
            to_attacher: WORKER_RING,
            to_creator: WORKER_RING,
        },
        policy: supervisor_policy(cfg.workers.max(1)),
        env: cfg.worker_env.clone(),
    };
    let mut w = WorkerLink {
        child: Child::spawn(&spec, reaper)?,
    };
    w.child.handshake(Duration::from_secs(30))?;
    let reply = w.request(
        WorkerCommand::Configure {
            seed: cfg.seed,
            watchdog_ms: cfg.watchdog.as_millis().min(u128::from(u32::MAX)) as u32,
            cache_dir: cfg.module_cache.as_ref().map(|p| p.display().to_string()),
        },
        Duration::from_secs(30),
    )?;
    if reply != WorkerReply::Configured {
        return Err(RunError::Protocol {
            worker: w.name(),
            detail: format!("Configure answered {reply:?}"),
        });
    }
    Ok(w)
}

/// A worker process and the agents assigned to it.
#[derive(Debug)]
struct WorkerLink {
    child: Child,
}

impl WorkerLink {
    fn name(&self) -> String {
        self.child.name().to_owned()
    }

    fn send(&mut self, cmd: WorkerCommand, timeout: Duration) -> Result<(), RunError> {
        self.send_down(&Down::Worker(cmd), timeout)
    }

    fn send_down(&mut self, msg: &Down, timeout: Duration) -> Result<(), RunError> {
        let deadline = Some(Instant::now() + timeout);
        self.child
            .endpoint()
            .send_msg(msg, deadline)
            .map_err(|source| RunError::Channel {
                worker: self.name(),
                what: "sending a command",
                source,
            })
    }

    /// Sends one part of a tick's work without copying it (it is moved into
    /// the command for encoding and back).
    fn send_tick(&mut self, part: &mut TickWork, timeout: Duration) -> Result<(), RunError> {
        let msg = Down::Worker(WorkerCommand::Tick(std::mem::take(part)));
        let sent = self.send_down(&msg, timeout);
        if let Down::Worker(WorkerCommand::Tick(w)) = msg {
            *part = w;
        }
        sent
    }

    fn recv(&mut self, timeout: Duration) -> Result<WorkerReply, RunError> {
        let deadline = Some(Instant::now() + timeout);
        let name = self.name();
        match self.child.endpoint().recv_msg::<Up>(deadline) {
            Ok(Up::Worker(r)) => Ok(r),
            Ok(other) => Err(RunError::Protocol {
                worker: name,
                detail: format!("unexpected message {other:?}"),
            }),
            Err(source) => Err(RunError::Channel {
                worker: name,
                what: "waiting for a reply",
                source,
            }),
        }
    }

    fn request(&mut self, cmd: WorkerCommand, timeout: Duration) -> Result<WorkerReply, RunError> {
        self.send(cmd, timeout)?;
        self.recv(timeout)
    }
}

/// Rough encoded size of a delivery.
fn delivery_size(d: &Delivery) -> usize {
    16 + d
        .messages
        .iter()
        .map(|m| 48 + m.topic.len() + m.payload.len())
        .sum::<usize>()
}

/// Splits one worker's work into parts of at most about `limit` bytes:
/// spawns and restarts first, deliveries in order, steps and stops last.
fn split_work(mut w: TickWork, limit: usize) -> Vec<TickWork> {
    let total: usize = w.deliveries.iter().map(delivery_size).sum::<usize>()
        + w.steps
            .iter()
            .map(|s| 32 + s.task.as_ref().map_or(0, |t| t.payload.len()))
            .sum::<usize>();
    if total <= limit {
        return vec![w];
    }
    let mut parts = Vec::new();
    let mut current = TickWork {
        tick: w.tick,
        more: true,
        measure_time: w.measure_time,
        ..TickWork::default()
    };
    current.spawns = std::mem::take(&mut w.spawns);
    current.restarts = std::mem::take(&mut w.restarts);
    current.upgrades = std::mem::take(&mut w.upgrades);
    let mut size = 0;
    for d in std::mem::take(&mut w.deliveries) {
        let s = delivery_size(&d);
        if size + s > limit && (!current.deliveries.is_empty() || !current.spawns.is_empty()) {
            parts.push(std::mem::replace(
                &mut current,
                TickWork {
                    tick: w.tick,
                    more: true,
                    measure_time: w.measure_time,
                    ..TickWork::default()
                },
            ));
            size = 0;
        }
        size += s;
        current.deliveries.push(d);
    }
    parts.push(current);
    // Steps may be large too (task payloads): give them parts of their own.
    let mut steps = std::mem::take(&mut w.steps);
    while !steps.is_empty() {
        let mut size = 0;
        let mut n = 0;
        for s in &steps {
            size += 32 + s.task.as_ref().map_or(0, |t| t.payload.len());
            if size > limit && n > 0 {
                break;
            }
            n += 1;
        }
        let rest = steps.split_off(n);
        parts.push(TickWork {
            tick: w.tick,
            more: true,
            measure_time: w.measure_time,
            steps,
            ..TickWork::default()
        });
        steps = rest;
    }
    let last = parts
        .last_mut()
        .filter(|p| p.steps.is_empty() && p.deliveries.is_empty());
    match last {
        Some(p) => {
            p.step_all = w.step_all;
            p.stops = std::mem::take(&mut w.stops);
        }
        None => parts.push(TickWork {
            tick: w.tick,
            measure_time: w.measure_time,
            step_all: w.step_all,
            stops: std::mem::take(&mut w.stops),
            ..TickWork::default()
        }),
    }
    if let Some(p) = parts.last_mut() {
        p.more = false;
    }
    parts
}

/// Where the supervisor's wall time went in one tick (observation only:
/// nothing here feeds back into the run).
#[derive(Debug, Clone, Copy, Default)]
pub struct TickTiming {
    /// Planning: `SimState::begin_tick` (deliveries, steps) and the split
    /// of the plan by worker.
    pub plan: Duration,
    /// Sending the work, the workers' execution and receiving the results.
    pub workers: Duration,
    /// `SimState::finish_tick`: routing every output, quotas, the tick hash.
    pub finish: Duration,
    /// The whole tick.
    pub total: Duration,
}

/// Counts after a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Last tick.
    pub tick: u64,
    /// Final tick hash (hex).
    pub hash: String,
    /// Steps run.
    pub steps: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Faults.
    pub faults: u64,
    /// Agents live at the end.
    pub agents: u64,
    /// Wall time.
    pub wall: Duration,
    /// Run directory.
    pub run_dir: PathBuf,
}

/// A running supervisor.
pub struct Run {
    cfg: RunConfig,
    sim: SimState,
    workers: Vec<WorkerLink>,
    _reaper: Reaper,
    deaths: mpsc::Receiver<ChildExit>,
    /// The journal (`None` when replaying into a scratch directory).
    journal: Option<JournalWriter>,
    /// The content-addressed page store of checkpoints.
    pages: PageStore,
    /// The last checkpoint (agent images for crash recovery).
    last_checkpoint: Option<SnapshotBody>,
    /// The work sent to each worker since the last checkpoint, and the
    /// digest each answered with (re-executed after a worker crash).
    work_log: Vec<LoggedTick>,
    /// Crash recoveries per tick (to detect a worker that keeps crashing).
    recoveries: BTreeMap<u64, u32>,
    /// Recorded inputs and hashes to replay (replay, verify, resume).
    script: Option<Script>,
    /// Page store of the run a snapshot came from (replay, verify, fork).
    origin_pages: Option<PageStore>,
    /// Reapers of workers started by crash recovery.
    extra_reapers: Vec<(Reaper, mpsc::Receiver<ChildExit>)>,
    /// Duration of the last worker recovery.
    last_recovery: Option<Duration>,
    /// Agents quarantined for crashing their worker.
    quarantined: Vec<u64>,
    /// The tick being run, while in `tick`.
    in_tick: Option<u64>,
    /// Work that replaced a tick's parts for a worker during recovery (the
    /// work log must record what was really executed).
    replaced_parts: Vec<(usize, Vec<TickWork>)>,
    hooks: Vec<Box<dyn TelemetryHook>>,
    metrics: Option<JsonlSink>,
    board: Option<BoardWriter>,
    /// When the board was last published.
    last_board: Option<Instant>,
    ctl: Option<CtlServer>,
    loaded: BTreeSet<u32>,
    /// Inputs applied for the coming tick (journaled).
    pending: Vec<Input>,
    agg: Aggregates,
    logs: VecDeque<String>,
    stop_requested: bool,
    started: Instant,
    /// Inference host and model resolution (issue 5).
    inference: InferenceService,
    /// Phases of the last tick.
    timing: TickTiming,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("tick", &self.sim.tick)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Run {
    /// Creates the run directory, starts the workers, loads the modules and
    /// writes the journal header.  No tick has run yet.
    pub fn start(cfg: RunConfig) -> Result<Self, RunError> {
        let dir = cfg.run_dir.clone();
        prepare_dir(&dir)?;
        std::fs::write(dir.join("manifest.toml"), &cfg.manifest_text)
            .map_err(|e| dir_error(&dir, e.to_string()))?;
        write_meta(&cfg)?;
        let sim = SimState::new(&cfg.manifest, cfg.seed).map_err(RunError::Setup)?;
        let mut journal = JournalWriter::create(&dir.join("journal.lsj"))?;
        journal.write(&Entry::Header {
            manifest_hash: *blake3::hash(cfg.manifest_text.as_bytes()).as_bytes(),
            seed: cfg.seed,
            manifest: cfg.manifest_text.clone(),
        })?;
        journal.sync()?;
        let mut run = Self::boot(cfg, sim, Some(journal), None)?;
        // The genesis snapshot: every replay and `verify` can start here.
        run.checkpoint()?;
        Ok(run)
    }

    /// Starts workers around a state: the genesis state of a new run, or a
    /// snapshot's (whose agents are restored into the new workers).
    pub fn boot(
        mut cfg: RunConfig,
        sim: SimState,
        journal: Option<JournalWriter>,
        snapshot: Option<SnapshotBody>,
    ) -> Result<Self, RunError> {
        // The worker sandbox: readable directories and address-space limit
        // are fixed now, for every worker of the run (recovered ones too).
        let mut sandbox = std::mem::take(&mut cfg.worker_sandbox);
        sandbox.resolve(&cfg.manifest, &cfg.manifest_dir, &sim);
        cfg.worker_sandbox = sandbox;
        if let Some(cache) = &cfg.module_cache
            && let Err(e) = std::fs::create_dir_all(cache)
        {
            tracing::warn!(dir = %cache.display(), error = %e, "cannot create the compiled-module cache");
        }
        let dir = cfg.run_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| dir_error(&dir, format!("cannot create: {e}")))?;
        let pages = PageStore::open(&dir)?;
        let (reaper, deaths) = Reaper::start()
            .map_err(|e| RunError::Setup(format!("cannot start the reaper: {e}")))?;
        let mut workers = Vec::new();
        for i in 0..cfg.workers.max(1) {
            workers.push(spawn_worker(&cfg, i, &reaper)?);
        }
        let board = if cfg.board {
            BoardWriter::create(&dir.join("state.board"), 1 << 20).ok()
        } else {
            None
        };
        let metrics = if cfg.metrics {
            JsonlSink::create(&dir.join("metrics.jsonl")).ok()
        } else {
            None
        };
        let ctl = if cfg.control_socket {
            Some(
                CtlServer::start(&dir.join("control.sock"))
                    .map_err(|e| dir_error(&dir, format!("control socket: {e}")))?,
            )
        } else {
            None
        };
        // --- inference (issue 5): host started only when models are declared ---
        let inference = InferenceService::start(&cfg.manifest.models, cfg.inference.clone())?;
        let mut run = Self {
            inference,
            cfg,
            sim,
            workers,
            _reaper: reaper,
            deaths,
            journal,
            pages,
            last_checkpoint: None,
            work_log: Vec::new(),
            recoveries: BTreeMap::new(),
            script: None,
            origin_pages: None,
            extra_reapers: Vec::new(),
            last_recovery: None,
            quarantined: Vec::new(),
            in_tick: None,
            replaced_parts: Vec::new(),
            hooks: Vec::new(),
            metrics,
            board,
            last_board: None,
            ctl,
            loaded: BTreeSet::new(),
            pending: Vec::new(),
            agg: Aggregates::default(),
            logs: VecDeque::new(),
            stop_requested: false,
            started: Instant::now(),
            timing: TickTiming::default(),
        };
        run.load_modules()?;
        if let Some(body) = snapshot {
            if let Some(origin) = &run.cfg.origin
                && origin != &run.cfg.run_dir
            {
                run.origin_pages = Some(PageStore::open(origin)?);
            }
            for wi in 0..run.workers.len() {
                run.restore_worker(wi, &body)?;
            }
            run.last_checkpoint = Some(body);
        }
        run.publish_board("running");
        Ok(run)
    }

    /// The deterministic state.
    pub fn state(&self) -> &SimState {
        &self.sim
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.cfg.run_dir
    }

    /// Registers a telemetry hook.
    pub fn register_telemetry_hook(&mut self, hook: Box<dyn TelemetryHook>) {
        self.hooks.push(hook);
    }

    /// Whether `lockstep ctl stop` asked the run to end.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    fn worker_of(&self, agent: u64) -> usize {
        ((agent.saturating_sub(1)) % self.workers.len() as u64) as usize
    }

    /// Loads every module the state knows but the workers do not.
    fn load_modules(&mut self) -> Result<(), RunError> {
        let todo: Vec<u32> = self
            .sim
            .modules
            .keys()
            .filter(|k| !self.loaded.contains(k))
            .copied()
            .collect();
        for id in todo {
            for wi in 0..self.workers.len() {
                self.load_module_on(wi, id)?;
            }
            self.loaded.insert(id);
        }
        Ok(())
    }

    /// Loads module `id` on worker `wi`, recording its hash.
    fn load_module_on(&mut self, wi: usize, id: u32) -> Result<(), RunError> {
        let Some(m) = self.sim.modules.get(&id).cloned() else {
            return Ok(());
        };
        let w = &mut self.workers[wi];
        let reply = w.request(
            WorkerCommand::LoadModule {
                module_id: id,
                name: m.name.clone(),
                path: m.path.clone(),
                expected_blake3: m.expected_blake3.clone(),
                memory_limit: m.memory_limit,
            },
            Duration::from_secs(300),
        )?;
        match reply {
            WorkerReply::ModuleLoaded {
                blake3,
                abi_version,
                globals,
                migrates,
                ..
            } => {
                if let Some(rec) = self.sim.modules.get_mut(&id) {
                    rec.abi_version = Some(abi_version);
                    rec.globals = Some(globals);
                    rec.migrates = migrates;
                    match rec.blake3 {
                        Some(h) if h != blake3 => {
                            return Err(RunError::Module(format!(
                                "module {} ({}) changed on disk: BLAKE3 {} differs from {} recorded by the run",
                                m.name,
                                m.path,
                                hex(&blake3),
                                hex(&h)
                            )));
                        }
                        _ => rec.blake3 = Some(blake3),
                    }
                }
                Ok(())
            }
            WorkerReply::ModuleRefused { error, .. } => Err(RunError::Module(error)),
            other => Err(RunError::Protocol {
                worker: w.name(),
                detail: format!("LoadModule answered {other:?}"),
            }),
        }
    }

    /// Applies an external input now (it takes effect in the next tick and
    /// is journaled with it).  This is the library's `spawn_agent`,
    /// `schedule_task`, `publish`, `send` path.
    pub fn input(&mut self, input: Input) -> Result<InputOutcome, RunError> {
        // A module the workers' sandbox cannot read is refused before it is
        // journaled (the input never happened).
        if let Input::Spawn { module, .. } = &input
            && let Some(why) = self.cfg.worker_sandbox.refuses(module)
        {
            return Ok(InputOutcome::Refused(why));
        }
        let outcome = self
            .sim
            .apply_inputs(std::slice::from_ref(&input))
            .remove(0);
        self.jwrite(&Entry::Input {
            tick: self.sim.tick + 1,
            input: input.clone(),
            outcome: outcome.clone(),
        })?;
        if let Some(j) = &mut self.journal {
            j.sync()?;
        }
        self.pending.push(input);
        Ok(outcome)
    }

    /// `spawn_agent`: starts an agent of `module` in the next tick; returns
    /// its id.
    pub fn spawn_agent(&mut self, name: &str, module: &Path, tenant: &str) -> Result<u64, String> {
        let input = Input::Spawn {
            name: name.to_owned(),
            module: module.display().to_string(),
            tenant: tenant.to_owned(),
            priority: 0,
            memory: 16 << 20,
            fuel: 10_000_000,
        };
        match self.input(input).map_err(|e| e.to_string())? {
            InputOutcome::Applied(_) => self
                .sim
                .resolve(name)
                .ok_or_else(|| "spawned agent not found".into()),
            InputOutcome::Refused(e) => Err(e),
        }
    }

    /// `schedule_task` from outside (issuer: the runtime).
    pub fn schedule_task(
        &mut self,
        agent: &str,
        priority: i32,
        payload: Vec<u8>,
        deps: Vec<u64>,
    ) -> Result<InputOutcome, RunError> {
        self.input(Input::Task {
            agent: agent.to_owned(),
            priority,
            payload,
            deps,
        })
    }

    /// `publish` from outside (sender: the runtime).
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Publish {
            topic: topic.to_owned(),
            payload,
        })
    }

    /// `join_channel`: makes `agent` a member of `channel` from the next
    /// tick on.
    pub fn join_channel(&mut self, agent: &str, channel: &str) -> Result<InputOutcome, RunError> {
        self.input(Input::JoinChannel {
            agent: agent.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// `send` from outside (sender: the runtime).
    pub fn send(&mut self, agent: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Send {
            agent: agent.to_owned(),
            payload,
        })
    }

    /// Hot-swaps `agent` to the module at `module` at the next tick
    /// boundary.  The module is loaded (and validated) on a worker first, so
    /// that its hash, ABI version and state layout are journaled with the
    /// input; an incompatible upgrade is refused with a clear reason.
    pub fn upgrade(&mut self, agent: &str, module: &Path) -> Result<InputOutcome, RunError> {
        let path = std::fs::canonicalize(module)
            .map_err(|e| RunError::Module(format!("module {}: {e}", module.display())))?;
        let bytes = std::fs::read(&path)
            .map_err(|e| RunError::Module(format!("module {}: {e}", path.display())))?;
        if let Some(why) = self.cfg.worker_sandbox.refuses(&path.display().to_string()) {
            return Ok(InputOutcome::Refused(format!("upgrade refused: {why}")));
        }
        let blake3 = hex(blake3::hash(&bytes).as_bytes());
        let Some(id) = self.sim.resolve(agent) else {
            return Ok(InputOutcome::Refused(format!("no agent `{agent}`")));
        };
        let limit = self
            .sim
            .agents
            .get(&id)
            .map_or(16 << 20, |a| a.limits.memory_bytes);
        // Probe-load on worker 0 under a scratch module id.
        let reply = self.workers[0].request(
            WorkerCommand::LoadModule {
                module_id: u32::MAX,
                name: format!("upgrade of {agent}"),
                path: path.display().to_string(),
                expected_blake3: Some(blake3.clone()),
                memory_limit: limit,
            },
            Duration::from_secs(300),
        )?;
        let (abi_version, globals, migrates) = match reply {
            WorkerReply::ModuleLoaded {
                abi_version,
                globals,
                migrates,
                ..
            } => (abi_version, globals, migrates),
            WorkerReply::ModuleRefused { error, .. } => {
                return Ok(InputOutcome::Refused(format!("upgrade refused: {error}")));
            }
            other => {
                return Err(RunError::Protocol {
                    worker: self.workers[0].name(),
                    detail: format!("LoadModule answered {other:?}"),
                });
            }
        };
        self.input(Input::Upgrade {
            agent: agent.to_owned(),
            module: path.display().to_string(),
            blake3,
            abi_version,
            globals,
            migrates,
        })
    }

    /// `snapshot_state`: a checkpoint now (between ticks); returns the
    /// snapshot file (relative to the run directory) and its state hash.
    pub fn snapshot_state(&mut self) -> Result<(String, [u8; 32]), RunError> {
        let (file, body) = self.checkpoint()?;
        Ok((file, body.state_hash))
    }

    /// Takes `ctl` requests that arrived since the last tick.
    fn drain_ctl(&mut self) -> Result<(), RunError> {
        let Some(ctl) = &self.ctl else { return Ok(()) };
        let reqs: Vec<CtlRequest> = ctl.drain();
        for r in reqs {
            match r {
                CtlRequest::Input(input, reply) => {
                    let outcome = self.input(input)?;
                    let text = match &outcome {
                        InputOutcome::Applied(s) => {
                            format!("applied at tick {}: {s}", self.sim.tick + 1)
                        }
                        InputOutcome::Refused(s) => format!("refused: {s}"),
                    };
                    let _ = reply.send(text);
                }
                CtlRequest::Upgrade(agent, module, reply) => {
                    let text = match self.upgrade(&agent, Path::new(&module))? {
                        InputOutcome::Applied(s) => {
                            format!("applied at tick {}: {s}", self.sim.tick + 1)
                        }
                        InputOutcome::Refused(s) => format!("refused: {s}"),
                    };
                    let _ = reply.send(text);
                }
                CtlRequest::Snapshot(reply) => {
                    let text = match self.snapshot_state() {
                        Ok((file, h)) => format!(
                            "snapshot after tick {}: {file} (state {})",
                            self.sim.tick,
                            hex(&h)
                        ),
                        Err(e) => format!("error: {e}"),
                    };
                    let _ = reply.send(text);
                }
                CtlRequest::Stop(reply) => {
                    self.stop_requested = true;
                    let _ = reply.send(format!("stopping after tick {}", self.sim.tick + 1));
                }
                CtlRequest::Status(reply) => {
                    let c = &self.sim.counters;
                    let _ = reply.send(format!(
                        "tick {} hash {} agents {} steps {} messages {} faults {}",
                        self.sim.tick,
                        hex(&self.sim.hash),
                        self.sim.live_agents().count(),
                        c.steps,
                        c.messages,
                        c.faults
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the tick being run (or, between ticks, the coming one)
    /// replays recorded ticks (no journaling).
    fn scripted(&self) -> bool {
        match self.in_tick {
            Some(t) => self.script.as_ref().is_some_and(|s| t <= s.until),
            None => self
                .script
                .as_ref()
                .is_some_and(|s| self.sim.tick < s.until),
        }
    }

    /// Writes a journal entry unless the tick is a replay of recorded ones.
    fn jwrite(&mut self, e: &Entry) -> Result<(), RunError> {
        let scripted = self.scripted();
        if let (Some(j), false) = (&mut self.journal, scripted) {
            j.write(e)?;
        }
        Ok(())
    }

    /// Replays recorded inputs and checks recorded tick hashes up to
    /// `script.until`; afterwards the run continues live.
    pub fn set_script(&mut self, script: Script) {
        self.script = Some(script);
    }

    /// Runs one tick.
    pub fn tick(&mut self) -> Result<TickSummary, RunError> {
        self.in_tick = Some(self.sim.tick + 1);
        let r = self.tick_inner();
        self.in_tick = None;
        r
    }

    fn tick_inner(&mut self) -> Result<TickSummary, RunError> {
        let t0 = Instant::now();
        let scripted = self.scripted();
        // Recorded inputs of this tick (replay, verify, resume) are applied
        // again but not journaled again.
        let next = self.sim.tick + 1;
        let recorded = self
            .script
            .as_mut()
            .and_then(|s| s.inputs.remove(&next))
            .unwrap_or_default();
        self.sim.apply_inputs(&recorded);
        self.pending.extend(recorded);
        if !scripted {
            self.drain_ctl()?;
        }
        self.load_modules()?;
        let inputs = std::mem::take(&mut self.pending);
        let tp = Instant::now();
        let mut plan = self.sim.begin_tick();
        let measure = plan.tick.is_multiple_of(SAMPLE_EVERY);
        // Mailbox sizes are only reported for sampled ticks.
        let mut mailbox: BTreeMap<u64, u64> = BTreeMap::new();
        if measure {
            for d in &plan.deliveries {
                mailbox.insert(d.agent_id, d.messages.len() as u64);
            }
        }
        let works = self.partition(&mut plan, measure);
        let tw = Instant::now();
        self.timing.plan = tw - tp;
        let limit = 4 << 20;
        let timeout = self.cfg.tick_timeout;
        let mut parts: Vec<Vec<TickWork>> =
            works.into_iter().map(|w| split_work(w, limit)).collect();
        let mut sent = vec![true; self.workers.len()];
        for (wi, ps) in parts.iter_mut().enumerate() {
            for part in ps {
                if let Err(e) = self.workers[wi].send_tick(part, timeout) {
                    if !is_peer_gone(&e) {
                        return Err(e);
                    }
                    sent[wi] = false;
                    break;
                }
            }
        }
        let mut worker_us = Vec::with_capacity(self.workers.len());
        let mut results: Vec<AgentResult> = Vec::new();
        let mut digest = [0u64; 4];
        let mut digests = Vec::with_capacity(self.workers.len());
        let mut tenant_fuel: BTreeMap<u32, u64> = BTreeMap::new();
        let mut calls = 0u64;
        for wi in 0..self.workers.len() {
            let received = if sent[wi] {
                self.recv_tick(wi, plan.tick)
            } else {
                Err(self.died(wi))
            };
            let done = match received {
                Ok(d) => d,
                Err(RunError::Died(how)) => self.recover_worker(wi, plan.tick, &parts[wi], &how)?,
                Err(e) => return Err(e),
            };
            worker_us.push(done.wall_ns / 1000);
            for r in &done.results {
                if !self.sim.agents.contains_key(&r.agent_id) {
                    return Err(RunError::Protocol {
                        worker: self.workers[wi].name(),
                        detail: format!("reported agent {} which does not exist", r.agent_id),
                    });
                }
                if self.worker_of(r.agent_id) != wi {
                    return Err(RunError::Protocol {
                        worker: self.workers[wi].name(),
                        detail: format!("reported agent {} which it does not host", r.agent_id),
                    });
                }
            }
            results.extend(done.results);
            shm_protocol::worker::digest_add(&mut digest, done.digest);
            digests.push(done.digest);
            for (t, f) in done.tenant_fuel {
                *tenant_fuel.entry(t).or_default() += f;
            }
            calls += done.calls;
        }
        for (wi, replaced) in std::mem::take(&mut self.replaced_parts) {
            parts[wi] = replaced;
        }
        self.work_log.push(LoggedTick {
            tick: plan.tick,
            parts,
            digests,
        });
        self.timing.workers = tw.elapsed();
        let workers_us = self.timing.workers.as_micros() as u64;
        // Canonical order: by agent id (stable: a worker's own order is kept).
        results.sort_by_key(|r| r.agent_id);
        let tf = Instant::now();
        let summary =
            self.sim
                .finish_tick_taking(&plan, &inputs, &mut results, digest, &tenant_fuel, calls);
        self.timing.finish = tf.elapsed();
        for e in &summary.events {
            self.jwrite(&Entry::Event {
                tick: plan.tick,
                event: e.clone(),
            })?;
        }
        self.jwrite(&Entry::Tick {
            tick: summary.tick,
            hash: summary.hash,
            steps: summary.steps,
            calls: summary.calls,
            fuel: summary.fuel,
            messages: summary.messages,
            dropped: summary.dropped,
            faults: summary.faults,
        })?;
        if !self.sim.infer_queue.is_empty() {
            let queue = self.sim.infer_queue.clone();
            let answers = self.infer(plan.tick, &queue);
            let hashes = self.sim.deliver_answers(&answers);
            let entry = queue
                .iter()
                .zip(hashes)
                .map(|(q, h)| (q.agent, q.request_id, q.model.clone(), h))
                .collect();
            self.jwrite(&Entry::Inference {
                tick: plan.tick,
                answers: entry,
            })?;
        }
        // The journaled tick hash is `summary.hash` (before the inference
        // answers are folded in; they enter the next tick's hash), so that
        // is what a replay must compare (inference, issue 5).
        if let Some(s) = &self.script
            && let Some(want) = s.hashes.get(&plan.tick)
            && *want != summary.hash
        {
            return Err(RunError::Diverged {
                tick: plan.tick,
                expected: hex(want),
                actual: hex(&summary.hash),
            });
        }
        self.collect_logs(&results);
        let tel = TickTelemetry {
            tick: summary.tick,
            wall_us: t0.elapsed().as_micros() as u64,
            workers_us,
            steps: summary.steps,
            calls: summary.calls,
            messages: summary.messages,
            dropped: summary.dropped,
            fuel: summary.fuel,
            faults: summary.faults,
            agents: summary.live,
            tasks_open: self.sim.tasks.open.len() as u64,
            queued: self.sim.mailboxes.values().map(|m| m.len() as u64).sum(),
            worker_us,
        };
        self.emit(&tel, &results, &mailbox, measure);
        if self.cfg.checkpoint_every > 0 && summary.tick.is_multiple_of(self.cfg.checkpoint_every) {
            self.checkpoint()?;
        }
        self.publish_board("running");
        self.timing.total = t0.elapsed();
        Ok(summary)
    }

    /// Agents that have an instance in a worker (and so an image).
    fn imaged_agents(&self) -> Vec<u64> {
        self.sim
            .agents
            .iter()
            .filter(|(_, a)| matches!(a.status, AgentStatus::Live | AgentStatus::Faulted { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Models at this point of the run (for snapshots).
    fn model_states(&self) -> Vec<ModelState> {
        self.cfg
            .manifest
            .models
            .iter()
            .map(|m| ModelState {
                id: m.id.clone(),
                version: m.version.clone(),
                blake3: m.blake3.clone(),
                // The deterministic current-version table (inference, issue 5).
                current: self.sim.model_versions.get(&m.id) == Some(&m.version),
            })
            .collect()
    }

    /// Images every agent and the scheduler at the current tick boundary
    /// (new chunks go to the page store) without writing a snapshot file.
    pub fn capture_state(&mut self) -> Result<SnapshotBody, RunError> {
        let agents = self.imaged_agents();
        let k = self.workers.len();
        let mut by_worker: Vec<Vec<u64>> = vec![Vec::new(); k];
        for id in &agents {
            by_worker[self.worker_of(*id)].push(*id);
        }
        let timeout = Duration::from_secs(600);
        for (wi, ids) in by_worker.iter().enumerate() {
            self.workers[wi].send(
                WorkerCommand::Checkpoint {
                    agents: ids.clone(),
                    full: false,
                },
                timeout,
            )?;
        }
        let mut images = Vec::with_capacity(agents.len());
        for wi in 0..k {
            loop {
                match self.workers[wi].recv(timeout)? {
                    WorkerReply::Checkpointed {
                        images: im,
                        chunks,
                        more,
                    } => {
                        for c in chunks {
                            self.pages.put(&c.hash, &c.bytes)?;
                        }
                        images.extend(im);
                        if !more {
                            break;
                        }
                    }
                    WorkerReply::Error(e) => {
                        return Err(RunError::Protocol {
                            worker: self.workers[wi].name(),
                            detail: e,
                        });
                    }
                    other => {
                        return Err(RunError::Protocol {
                            worker: self.workers[wi].name(),
                            detail: format!("expected Checkpointed, got {other:?}"),
                        });
                    }
                }
            }
        }
        images.sort_by_key(|(id, _)| *id);
        for (id, img) in &images {
            for h in &img.chunks {
                if self.pages.contains(h) {
                    continue;
                }
                // Chunks restored from another run directory's snapshot live
                // in that run's page store: copy them into ours.
                match self.origin_pages.as_ref().map(|o| o.get(h)) {
                    Some(Ok(bytes)) => {
                        self.pages.put(h, &bytes)?;
                    }
                    _ => {
                        return Err(RunError::Protocol {
                            worker: format!("worker-{}", self.worker_of(*id)),
                            detail: format!(
                                "agent {id}'s image refers to chunk {} that was never sent",
                                hex(&h[..8])
                            ),
                        });
                    }
                }
            }
        }
        self.pages.sync()?;
        let models = self.model_states();
        let state_hash = snapshot::global_hash(&self.sim, &images, &models);
        Ok(SnapshotBody {
            tick: self.sim.tick,
            timestamp: self.sim.tick,
            seed: self.sim.seed,
            manifest_hash: *blake3::hash(self.cfg.manifest_text.as_bytes()).as_bytes(),
            scheduler: self.sim.clone(),
            agents: images,
            onnx_model_states: models,
            state_hash,
        })
    }

    /// Takes a checkpoint at the current tick boundary: images every agent,
    /// stores new chunks, writes the snapshot and journals it.  Returns the
    /// snapshot's file name (relative to the run directory).
    pub fn checkpoint(&mut self) -> Result<(String, SnapshotBody), RunError> {
        let body = self.capture_state()?;
        let state_hash = body.state_hash;
        if self.scripted() {
            // Replaying recorded ticks: an existing snapshot of this tick must
            // be reproduced exactly, and is never overwritten.
            let rel = snapshot::file_name(body.tick);
            let base = self
                .cfg
                .origin
                .clone()
                .unwrap_or_else(|| self.cfg.run_dir.clone());
            let existing = base.join(&rel);
            let recorded = if existing.exists() {
                Some(snapshot::read(&existing))
            } else {
                None
            };
            if let Some(Err(e)) = &recorded
                && self.cfg.origin.is_none()
            {
                // Our own damaged snapshot: the re-execution that reached
                // this tick was checked hash by hash, so repair it.
                tracing::warn!(file = %existing.display(), error = %e, "replacing a damaged snapshot");
            } else if let Some(recorded) = recorded {
                let recorded = recorded?;
                if recorded.state_hash != body.state_hash {
                    return Err(RunError::StateDiverged(Box::new(crate::replay::diff(
                        &recorded, &body,
                    ))));
                }
                self.work_log.clear();
                self.last_checkpoint = Some(body.clone());
                return Ok((rel, body));
            }
        }
        let file = snapshot::write(&self.cfg.run_dir, &body)?;
        self.jwrite(&Entry::Checkpoint {
            tick: body.tick,
            file: file.clone(),
            state_hash,
        })?;
        let scripted = self.scripted();
        if let (Some(j), false) = (&mut self.journal, scripted) {
            j.sync()?;
        }
        self.work_log.clear();
        self.last_checkpoint = Some(body.clone());
        Ok((file, body))
    }

    /// Reads a chunk from this run's page store, or from the origin run's
    /// (replay, verify and fork read the snapshots of another directory).
    fn chunk(&self, hash: &[u8; 32]) -> Result<Vec<u8>, RunError> {
        match self.pages.get(hash) {
            Ok(b) => Ok(b),
            Err(e) => match &self.origin_pages {
                Some(o) => Ok(o.get(hash)?),
                None => Err(e.into()),
            },
        }
    }

    /// Restores into worker `wi` every agent of `body` assigned to it.
    fn restore_worker(&mut self, wi: usize, body: &SnapshotBody) -> Result<(), RunError> {
        let zero = shm_protocol::worker::zero_chunk_hash();
        let timeout = Duration::from_secs(600);
        for (id, img) in &body.agents {
            if self.worker_of(*id) != wi {
                continue;
            }
            let Some(rec) = body.scheduler.agents.get(id) else {
                continue;
            };
            self.workers[wi].send(
                WorkerCommand::RestoreBegin {
                    agent_id: *id,
                    module_id: rec.module,
                    tenant: rec.tenant,
                    limits: rec.limits,
                    image: img.clone(),
                },
                timeout,
            )?;
            let mut seen: BTreeSet<[u8; 32]> = BTreeSet::new();
            let mut batch = Vec::new();
            for h in &img.chunks {
                if *h == zero || !seen.insert(*h) {
                    continue;
                }
                batch.push(shm_protocol::worker::ChunkData {
                    hash: *h,
                    bytes: self.chunk(h)?,
                });
                if batch.len() == 256 {
                    let chunks = std::mem::take(&mut batch);
                    self.workers[wi].send(
                        WorkerCommand::RestoreChunks {
                            agent_id: *id,
                            chunks,
                        },
                        timeout,
                    )?;
                }
            }
            if !batch.is_empty() {
                self.workers[wi].send(
                    WorkerCommand::RestoreChunks {
                        agent_id: *id,
                        chunks: batch,
                    },
                    timeout,
                )?;
            }
            match self.workers[wi].request(WorkerCommand::RestoreEnd { agent_id: *id }, timeout)? {
                WorkerReply::Restored { error: None, .. } => {}
                WorkerReply::Restored { error: Some(e), .. } => {
                    return Err(RunError::Setup(format!("restoring agent {id}: {e}")));
                }
                other => {
                    return Err(RunError::Protocol {
                        worker: self.workers[wi].name(),
                        detail: format!("expected Restored, got {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// A worker died during `tick`: start a fresh one, restore its agents
    /// from the last checkpoint, re-execute its work since then (checking
    /// that it reproduces the recorded digests), then re-run this tick's
    /// work.  The rest of the run never notices: results are deterministic.
    fn recover_worker(
        &mut self,
        wi: usize,
        tick: u64,
        parts: &[TickWork],
        how: &str,
    ) -> Result<TickDone, RunError> {
        let n = self.recoveries.entry(tick).or_default();
        *n += 1;
        if *n > MAX_RECOVERIES_PER_TICK {
            return Err(RunError::Died(format!(
                "{how}; it crashed {} times at tick {tick}, giving up",
                MAX_RECOVERIES_PER_TICK
            )));
        }
        if *n == POISON_AFTER {
            // The same tick keeps killing this worker: find the agent that
            // does it, quarantine it, and re-run the tick without it.
            let culprit = self.isolate_poison(wi, tick, parts)?;
            tracing::error!(
                agent = culprit,
                tick,
                "agent crashes its worker: quarantined"
            );
            self.logs.push_back(format!(
                "[QUARANTINE] agent {culprit} crashed its worker at tick {tick}"
            ));
            self.quarantined.push(culprit);
            let mut filtered: Vec<TickWork> =
                parts.iter().map(|p| without(p, &[culprit])).collect();
            if let Some(first) = filtered.first_mut() {
                first.evict.push(culprit);
            }
            self.replaced_parts.push((wi, filtered.clone()));
            let mut done = self.recover_worker(wi, tick, &filtered, how)?;
            done.results.push(AgentResult {
                agent_id: culprit,
                fuel: 0,
                calls: 0,
                outputs: Vec::new(),
                fault: Some(shm_protocol::worker::Fault::CrashedWorker),
                wall_ns: 0,
                logs_suppressed: 0,
            });
            done.results.sort_by_key(|r| r.agent_id);
            return Ok(done);
        }
        let t0 = Instant::now();
        tracing::warn!(worker = wi, tick, "{how}; recovering");
        self.logs.push_back(format!(
            "[RECOVERY] {how}; restarting worker-{wi} at tick {tick}"
        ));
        let (reaper, deaths) =
            Reaper::start().map_err(|e| RunError::Setup(format!("reaper: {e}")))?;
        let fresh = spawn_worker(&self.cfg, wi, &reaper)?;
        let old = std::mem::replace(&mut self.workers[wi], fresh);
        drop(old);
        // Keep the new reaper alive for the rest of the run.
        self.extra_reapers.push((reaper, deaths));
        let loaded: Vec<u32> = self.loaded.iter().copied().collect();
        for id in loaded {
            self.load_module_on(wi, id)?;
        }
        if let Some(body) = self.last_checkpoint.clone() {
            self.restore_worker(wi, &body)?;
        }
        let timeout = self.cfg.tick_timeout;
        let log: Vec<(u64, Vec<TickWork>, [u64; 4])> = self
            .work_log
            .iter()
            .map(|l| (l.tick, l.parts[wi].clone(), l.digests[wi]))
            .collect();
        for (t, ps, want) in log {
            for p in ps {
                self.workers[wi].send(WorkerCommand::Tick(p), timeout)?;
            }
            let done = match self.recv_tick(wi, t) {
                Ok(d) => d,
                Err(RunError::Died(h)) => return self.recover_worker(wi, tick, parts, &h),
                Err(e) => return Err(e),
            };
            if done.digest != want {
                return Err(RunError::Protocol {
                    worker: self.workers[wi].name(),
                    detail: format!(
                        "re-execution of tick {t} after a crash did not reproduce the recorded results"
                    ),
                });
            }
        }
        for p in parts {
            if let Err(e) = self.workers[wi].send(WorkerCommand::Tick(p.clone()), timeout) {
                if is_peer_gone(&e) {
                    let how = self.died(wi).to_string();
                    return self.recover_worker(wi, tick, parts, &how);
                }
                return Err(e);
            }
        }
        match self.recv_tick(wi, tick) {
            Ok(d) => {
                tracing::info!(
                    worker = wi,
                    tick,
                    ms = t0.elapsed().as_millis() as u64,
                    "worker recovered"
                );
                self.last_recovery = Some(t0.elapsed());
                Ok(d)
            }
            Err(RunError::Died(h)) => self.recover_worker(wi, tick, parts, &h),
            Err(e) => Err(e),
        }
    }

    /// Runs tick `tick` for subsets of worker `wi`'s agents in scratch
    /// workers (restored from the last checkpoint and re-executed from the
    /// work log) until a single agent is left that crashes its process.
    fn isolate_poison(
        &mut self,
        wi: usize,
        tick: u64,
        parts: &[TickWork],
    ) -> Result<u64, RunError> {
        let mut suspects: Vec<u64> = self
            .sim
            .agents
            .iter()
            .filter(|(id, a)| {
                self.worker_of(**id) == wi
                    && !matches!(a.status, AgentStatus::Stopped { .. } | AgentStatus::Pending)
            })
            .map(|(id, _)| *id)
            .collect();
        // Agents spawned during the logged ticks are suspects too.
        for l in &self.work_log {
            for p in &l.parts[wi] {
                suspects.extend(p.spawns.iter().map(|s| s.agent_id));
            }
        }
        for p in parts {
            suspects.extend(p.spawns.iter().map(|s| s.agent_id));
        }
        suspects.sort_unstable();
        suspects.dedup();
        while suspects.len() > 1 {
            let half: Vec<u64> = suspects[..suspects.len() / 2].to_vec();
            if self.probe_crashes(wi, tick, parts, &half)? {
                suspects = half;
            } else {
                suspects = suspects[suspects.len() / 2..].to_vec();
            }
        }
        suspects.first().copied().ok_or_else(|| {
            RunError::Died(format!(
                "worker-{wi} crashes at tick {tick} with no agent left to blame"
            ))
        })
    }

    /// Whether running `tick` for `subset` alone crashes a scratch worker.
    fn probe_crashes(
        &mut self,
        wi: usize,
        tick: u64,
        parts: &[TickWork],
        subset: &[u64],
    ) -> Result<bool, RunError> {
        let (reaper, _deaths) =
            Reaper::start().map_err(|e| RunError::Setup(format!("reaper: {e}")))?;
        let mut probe = spawn_worker(&self.cfg, wi, &reaper)?;
        let timeout = self.cfg.tick_timeout;
        let ids: Vec<u32> = self.loaded.iter().copied().collect();
        std::mem::swap(&mut self.workers[wi], &mut probe);
        let result = (|| {
            for id in ids {
                self.load_module_on(wi, id)?;
            }
            if let Some(mut body) = self.last_checkpoint.clone() {
                body.agents.retain(|(id, _)| subset.contains(id));
                self.restore_worker(wi, &body)?;
            }
            let keep = |w: &TickWork| only(w, subset);
            let log: Vec<(u64, Vec<TickWork>)> = self
                .work_log
                .iter()
                .map(|l| (l.tick, l.parts[wi].iter().map(keep).collect()))
                .collect();
            for (t, ps) in log {
                for p in ps {
                    if self.workers[wi]
                        .send(WorkerCommand::Tick(p), timeout)
                        .is_err()
                    {
                        return Ok(true);
                    }
                }
                if self.recv_tick(wi, t).is_err() {
                    return Ok(true);
                }
            }
            for p in parts {
                if self.workers[wi]
                    .send(WorkerCommand::Tick(keep(p)), timeout)
                    .is_err()
                {
                    return Ok(true);
                }
            }
            Ok(self.recv_tick(wi, tick).is_err())
        })();
        std::mem::swap(&mut self.workers[wi], &mut probe);
        let _ = probe.child.kill();
        result
    }

    /// Agents quarantined because they crashed their worker.
    pub fn quarantined(&self) -> &[u64] {
        &self.quarantined
    }

    /// Pid of each worker process (for tests and operators).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.child.pid()).collect()
    }

    /// How long the last worker recovery took (spawn to the re-run tick's
    /// results).
    pub fn last_recovery(&self) -> Option<Duration> {
        self.last_recovery
    }

    /// Splits the plan by worker (its deliveries are moved, not copied).
    fn partition(&self, plan: &mut TickPlan, measure: bool) -> Vec<TickWork> {
        let k = self.workers.len();
        let mut works: Vec<TickWork> = (0..k)
            .map(|_| TickWork {
                tick: plan.tick,
                step_all: plan.step_all,
                measure_time: measure,
                ..TickWork::default()
            })
            .collect();
        for s in &plan.spawns {
            works[self.worker_of(s.agent_id)].spawns.push(s.clone());
        }
        for &r in &plan.restarts {
            works[self.worker_of(r)].restarts.push(r);
        }
        for u in &plan.upgrades {
            works[self.worker_of(u.agent_id)].upgrades.push(u.clone());
        }
        for d in std::mem::take(&mut plan.deliveries) {
            works[self.worker_of(d.agent_id)].deliveries.push(d);
        }
        for s in &plan.steps {
            works[self.worker_of(s.agent_id)].steps.push(s.clone());
        }
        for &s in &plan.stops {
            works[self.worker_of(s)].stops.push(s);
        }
        works
    }

    fn died(&mut self, wi: usize) -> RunError {
        let name = self.workers[wi].name();
        let pid = self.workers[wi].child.pid();
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.deaths.recv_timeout(left) {
                Ok(d) if d.pid == pid => return RunError::Died(d.to_string()),
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        RunError::Died(format!("worker {name} (pid {pid}) is gone"))
    }

    fn recv_tick(&mut self, wi: usize, tick: u64) -> Result<TickDone, RunError> {
        let timeout = self.cfg.tick_timeout;
        let mut merged: Option<TickDone> = None;
        loop {
            let reply = match self.workers[wi].recv(timeout) {
                Ok(r) => r,
                Err(RunError::Channel {
                    source: ChannelError::PeerGone(_),
                    ..
                }) => return Err(self.died(wi)),
                Err(e) => return Err(e),
            };
            let WorkerReply::TickDone(part) = reply else {
                return Err(RunError::Protocol {
                    worker: self.workers[wi].name(),
                    detail: format!("expected TickDone, got {reply:?}"),
                });
            };
            if part.tick != tick {
                return Err(RunError::Protocol {
                    worker: self.workers[wi].name(),
                    detail: format!("TickDone for tick {} during tick {tick}", part.tick),
                });
            }
            let more = part.more;
            match &mut merged {
                None => merged = Some(part),
                Some(m) => {
                    m.results.extend(part.results);
                    if !more {
                        m.agents_called = part.agents_called;
                        m.calls = part.calls;
                        m.tenant_fuel = part.tenant_fuel;
                        m.digest = part.digest;
                        m.wall_ns = part.wall_ns;
                    }
                }
            }
            if !more {
                return Ok(merged.unwrap_or_default());
            }
        }
    }

    // --- inference (issue 5) ---
    /// Answers inference requests through the [`InferenceService`] (the
    /// built-in `echo` model returns its input; declared models go to the
    /// inference host, at the state's current versions).
    fn infer(&mut self, tick: u64, queue: &[InferRequest]) -> Vec<InferAnswer> {
        let (answers, telemetry) = self.inference.infer(tick, queue, &self.sim.model_versions);
        for t in &telemetry {
            for h in &mut self.hooks {
                h.on_inference(t);
            }
            if let Some(m) = &mut self.metrics {
                m.on_inference(t);
            }
        }
        answers
    }

    /// Pid of the inference host, while one runs.
    pub fn inference_host_pid(&self) -> Option<u32> {
        self.inference.host_pid()
    }

    /// Inference host restarts so far (crashes, hangs).
    pub fn inference_restarts(&self) -> u64 {
        self.inference.restarts()
    }
    // --- end inference (issue 5) ---

    fn collect_logs(&mut self, results: &[AgentResult]) {
        for r in results {
            for o in &r.outputs {
                if let shm_protocol::worker::Output::Log { level, line } = o {
                    let name = self
                        .sim
                        .agents
                        .get(&r.agent_id)
                        .map_or("?", |a| a.name.as_str());
                    let text = format!(
                        "[{}] {name}: {line}",
                        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"][usize::from(*level).min(4)]
                    );
                    match level {
                        0 => tracing::error!(agent = r.agent_id, "{line}"),
                        1 => tracing::warn!(agent = r.agent_id, "{line}"),
                        2 => tracing::info!(agent = r.agent_id, "{line}"),
                        3 => tracing::debug!(agent = r.agent_id, "{line}"),
                        _ => tracing::trace!(agent = r.agent_id, "{line}"),
                    }
                    if self.logs.len() == 32 {
                        self.logs.pop_front();
                    }
                    self.logs.push_back(text);
                }
            }
            if let Some(f) = &r.fault {
                if self.logs.len() == 32 {
                    self.logs.pop_front();
                }
                self.logs
                    .push_back(format!("[FAULT] agent {}: {f}", r.agent_id));
            }
        }
    }

    fn emit(
        &mut self,
        tel: &TickTelemetry,
        results: &[AgentResult],
        mailbox: &BTreeMap<u64, u64>,
        measure: bool,
    ) {
        self.agg.record(tel);
        let _span = tracing::trace_span!(
            "tick",
            tick = tel.tick,
            wall_us = tel.wall_us,
            steps = tel.steps
        )
        .entered();
        let agents: Vec<AgentTelemetry> = if measure {
            results
                .iter()
                .map(|r| AgentTelemetry {
                    tick: tel.tick,
                    agent: r.agent_id,
                    calls: r.calls,
                    fuel: r.fuel,
                    wall_ns: r.wall_ns,
                    mailbox: mailbox.get(&r.agent_id).copied().unwrap_or(0),
                    faulted: r.fault.is_some(),
                })
                .collect()
        } else {
            Vec::new()
        };
        for h in &mut self.hooks {
            h.on_tick(tel);
            for a in &agents {
                h.on_agent(a);
            }
        }
        if let Some(m) = &mut self.metrics {
            m.on_tick(tel);
            for a in &agents {
                m.on_agent(a);
            }
        }
    }

    /// The live state for viewers.
    pub fn live_state(&self, phase: &str) -> LiveState {
        let mut children: Vec<ChildStatus> = self
            .workers
            .iter()
            .map(|w| ChildStatus {
                name: w.name(),
                role: "worker".into(),
                pid: w.child.pid(),
                state: "ready".into(),
                last_rtt_ns: 0,
            })
            .collect();
        if let Some(pid) = self.inference.host_pid() {
            children.push(ChildStatus {
                name: "inference-host".into(),
                role: "inference-host".into(),
                pid,
                state: format!("ready ({} restarts)", self.inference.restarts()),
                last_rtt_ns: 0,
            });
        }
        children.truncate(64);
        let row = |id: u64, a: &crate::sim::AgentRec| AgentRow {
            id,
            name: a.name.clone(),
            tenant: a.tenant,
            status: match &a.status {
                AgentStatus::Pending => "pending".to_owned(),
                AgentStatus::Live => "live".to_owned(),
                AgentStatus::Faulted { fault, .. } => format!("faulted: {fault}"),
                AgentStatus::Stopped { reason, .. } => format!("stopped: {reason}"),
            },
            queued: self.sim.mailboxes.get(&id).map_or(0, |m| m.len() as u64),
        };
        let mut agents: Vec<AgentRow> = self
            .sim
            .agents
            .iter()
            .take(MAX_AGENT_ROWS)
            .map(|(id, a)| row(*id, a))
            .collect();
        let mut live = 0u64;
        let mut extra = 0;
        for (i, (id, a)) in self.sim.agents.iter().enumerate() {
            let is_live = matches!(a.status, AgentStatus::Live);
            live += u64::from(is_live);
            if i >= MAX_AGENT_ROWS && !is_live && extra < MAX_EXTRA_ROWS {
                agents.push(row(*id, a));
                extra += 1;
            }
        }
        let c = &self.sim.counters;
        LiveState {
            version: LIVE_STATE_VERSION,
            phase: phase.into(),
            tick: self.sim.tick,
            children,
            log: self.logs.iter().cloned().collect(),
            stats: RunStats {
                live,
                total: self.sim.agents.len() as u64,
                steps: c.steps,
                messages: c.messages,
                dropped: c.dropped,
                faults: c.faults,
                restarts: c.restarts,
                fuel: c.fuel,
                tasks_open: self.sim.tasks.open.len() as u64,
                queued: self.sim.mailboxes.values().map(|m| m.len() as u64).sum(),
                tick_p50_us: self.agg.quantile(0.5),
                tick_p99_us: self.agg.quantile(0.99),
                recoveries: self.recoveries.values().map(|&n| u64::from(n)).sum(),
            },
            agents,
        }
    }

    /// Publishes the live state on the board, at most every
    /// [`BOARD_INTERVAL`] while running (viewers refresh slower than that;
    /// building the state costs a scan of every agent).  The board is out
    /// of band: when it is published never affects the run.
    fn publish_board(&mut self, phase: &str) {
        if self.board.is_none() {
            return;
        }
        let now = Instant::now();
        if phase == "running"
            && self
                .last_board
                .is_some_and(|t| now.duration_since(t) < BOARD_INTERVAL)
        {
            return;
        }
        self.last_board = Some(now);
        let state = self.live_state(phase);
        if let (Some(b), Ok(bytes)) = (&mut self.board, shm_protocol::codec::encode(&state)) {
            let _ = b.publish(&bytes);
        }
    }

    /// Ends the run: journal `End`, summary file, children shut down.
    pub fn finish(self) -> Result<RunSummary, RunError> {
        self.finish_inner(true)
    }

    /// Stops the children and syncs the journal without ending the run (a
    /// fork, or a run to be resumed later).
    pub fn finish_without_end(self) -> Result<RunSummary, RunError> {
        self.finish_inner(false)
    }

    fn finish_inner(mut self, end: bool) -> Result<RunSummary, RunError> {
        // A final checkpoint, so that `verify` and `fork` can reach the end.
        let checkpointed = self
            .last_checkpoint
            .as_ref()
            .is_some_and(|c| c.tick == self.sim.tick);
        if end && self.journal.is_some() && !self.scripted() && !checkpointed {
            self.checkpoint()?;
        }
        if end {
            self.jwrite(&Entry::End {
                tick: self.sim.tick,
                hash: self.sim.hash,
            })?;
        }
        if let Some(j) = &mut self.journal {
            j.sync()?;
        }
        if let Some(m) = &mut self.metrics {
            m.flush();
        }
        self.publish_board("stopped");
        let c = &self.sim.counters;
        let summary = RunSummary {
            tick: self.sim.tick,
            hash: hex(&self.sim.hash),
            steps: c.steps,
            messages: c.messages,
            dropped: c.dropped,
            faults: c.faults,
            agents: self.sim.live_agents().count() as u64,
            wall: self.started.elapsed(),
            run_dir: self.cfg.run_dir.clone(),
        };
        let json = serde_json::json!({
            "tick": summary.tick, "hash": summary.hash, "steps": summary.steps,
            "messages": summary.messages, "dropped": summary.dropped, "faults": summary.faults,
            "agents": summary.agents, "wall_ms": summary.wall.as_millis() as u64,
        });
        let _ = std::fs::write(self.cfg.run_dir.join("summary.json"), format!("{json:#}\n"));
        for w in std::mem::take(&mut self.workers) {
            let _ = w.child.shutdown(Duration::from_secs(5));
        }
        self.inference.shutdown(); // inference (issue 5)
        if let Some(ctl) = self.ctl.take() {
            ctl.stop();
        }
        Ok(summary)
    }

    /// Wall time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where the supervisor's time went in the last tick.
    pub fn last_timing(&self) -> TickTiming {
        self.timing
    }

    /// Recent tick latency quantile (µs).
    pub fn tick_quantile(&self, q: f64) -> u64 {
        self.agg.quantile(q)
    }
}
