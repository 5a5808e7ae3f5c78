//! A live run: the deterministic [`SimState`] driven tick by tick across
//! worker processes, with the journal, telemetry, the state board and the
//! control socket around it.

use crate::child::{Child, ChildError, ChildSpec, locate_binary};
use crate::ctl::{CtlRequest, CtlServer};
use crate::journal::{Entry, JournalError, JournalWriter};
use crate::manifest::Manifest;
use crate::reaper::{ChildExit, Reaper};
use crate::sim::{
    AgentStatus, InferAnswer, InferRequest, Input, InputOutcome, SimState, TickPlan, TickSummary,
};
use crate::telemetry::{
    AgentTelemetry, Aggregates, InferenceTelemetry, JsonlSink, TelemetryHook, TickTelemetry,
};
use lockstep_common::live::{ChildStatus, LIVE_STATE_VERSION, LiveState};
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
        })
    }
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
        let deadline = Some(Instant::now() + timeout);
        let name = self.name();
        self.child
            .endpoint()
            .send_msg(&Down::Worker(cmd), deadline)
            .map_err(|source| RunError::Channel {
                worker: name,
                what: "sending a command",
                source,
            })
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
    journal: JournalWriter,
    hooks: Vec<Box<dyn TelemetryHook>>,
    metrics: Option<JsonlSink>,
    board: Option<BoardWriter>,
    ctl: Option<CtlServer>,
    loaded: BTreeSet<u32>,
    /// Inputs applied for the coming tick (journaled).
    pending: Vec<Input>,
    agg: Aggregates,
    logs: VecDeque<String>,
    stop_requested: bool,
    started: Instant,
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
        let dir = &cfg.run_dir;
        let dir_err = |reason: String| RunError::RunDir {
            dir: dir.display().to_string(),
            reason,
        };
        if dir.exists() {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| dir_err(e.to_string()))?
                .next()
                .is_none();
            if !empty {
                return Err(dir_err(
                    "already exists and is not empty (choose another --run-dir)".into(),
                ));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| dir_err(format!("cannot create: {e}")))?;
        std::fs::write(dir.join("manifest.toml"), &cfg.manifest_text)
            .map_err(|e| dir_err(e.to_string()))?;
        let meta = serde_json::json!({
            "lockstep": env!("CARGO_PKG_VERSION"),
            "workers": cfg.workers,
            "seed": cfg.seed,
            "pid": std::process::id(),
            "started_unix_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        });
        std::fs::write(dir.join("meta.json"), format!("{meta:#}\n"))
            .map_err(|e| dir_err(e.to_string()))?;
        let sim = SimState::new(&cfg.manifest, cfg.seed).map_err(RunError::Setup)?;
        let mut journal = JournalWriter::create(&dir.join("journal.lsj"))?;
        journal.write(&Entry::Header {
            manifest_hash: *blake3::hash(cfg.manifest_text.as_bytes()).as_bytes(),
            seed: cfg.seed,
            manifest: cfg.manifest_text.clone(),
        })?;
        journal.sync()?;
        let (reaper, deaths) = Reaper::start()
            .map_err(|e| RunError::Setup(format!("cannot start the reaper: {e}")))?;
        let mut workers = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let spec = ChildSpec {
                role: Role::Worker,
                name: format!("worker-{i}"),
                program: cfg.worker_bin.clone(),
                args: Vec::new(),
                rings: SegmentConfig {
                    to_attacher: WORKER_RING,
                    to_creator: WORKER_RING,
                },
                policy: WaitPolicy {
                    spin: 2_000,
                    park_slice: Duration::from_millis(10),
                },
            };
            workers.push(WorkerLink {
                child: Child::spawn(&spec, &reaper)?,
            });
        }
        for w in &mut workers {
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
                    .map_err(|e| dir_err(format!("control socket: {e}")))?,
            )
        } else {
            None
        };
        let mut run = Self {
            cfg,
            sim,
            workers,
            _reaper: reaper,
            deaths,
            journal,
            hooks: Vec::new(),
            metrics,
            board,
            ctl,
            loaded: BTreeSet::new(),
            pending: Vec::new(),
            agg: Aggregates::default(),
            logs: VecDeque::new(),
            stop_requested: false,
            started: Instant::now(),
        };
        run.load_modules()?;
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
            let Some(m) = self.sim.modules.get(&id).cloned() else {
                continue;
            };
            let mut hash = None;
            for w in &mut self.workers {
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
                    WorkerReply::ModuleLoaded { blake3, .. } => hash = Some(blake3),
                    WorkerReply::ModuleRefused { error, .. } => {
                        return Err(RunError::Module(error));
                    }
                    other => {
                        return Err(RunError::Protocol {
                            worker: w.name(),
                            detail: format!("LoadModule answered {other:?}"),
                        });
                    }
                }
            }
            if let Some(rec) = self.sim.modules.get_mut(&id) {
                rec.blake3 = hash;
            }
            self.loaded.insert(id);
        }
        Ok(())
    }

    /// Applies an external input now (it takes effect in the next tick and
    /// is journaled with it).  This is the library's `spawn_agent`,
    /// `schedule_task`, `publish`, `send` path.
    pub fn input(&mut self, input: Input) -> Result<InputOutcome, RunError> {
        let outcome = self
            .sim
            .apply_inputs(std::slice::from_ref(&input))
            .remove(0);
        self.journal.write(&Entry::Input {
            tick: self.sim.tick + 1,
            input: input.clone(),
            outcome: outcome.clone(),
        })?;
        self.journal.sync()?;
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

    /// `send` from outside (sender: the runtime).
    pub fn send(&mut self, agent: &str, payload: Vec<u8>) -> Result<InputOutcome, RunError> {
        self.input(Input::Send {
            agent: agent.to_owned(),
            payload,
        })
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

    /// Runs one tick.
    pub fn tick(&mut self) -> Result<TickSummary, RunError> {
        let t0 = Instant::now();
        self.drain_ctl()?;
        self.load_modules()?;
        let inputs = std::mem::take(&mut self.pending);
        let plan = self.sim.begin_tick();
        let measure = plan.tick.is_multiple_of(SAMPLE_EVERY);
        let mut mailbox: BTreeMap<u64, u64> = BTreeMap::new();
        for d in &plan.deliveries {
            mailbox.insert(d.agent_id, d.messages.len() as u64);
        }
        let works = self.partition(&plan, measure);
        let tw = Instant::now();
        let mut worker_us = Vec::with_capacity(self.workers.len());
        let limit = 4 << 20;
        let timeout = self.cfg.tick_timeout;
        for (w, work) in self.workers.iter_mut().zip(works) {
            for part in split_work(work, limit) {
                w.send(WorkerCommand::Tick(part), timeout)?;
            }
        }
        let mut results: Vec<AgentResult> = Vec::new();
        let mut digest = [0u64; 4];
        let mut tenant_fuel: BTreeMap<u32, u64> = BTreeMap::new();
        let mut calls = 0u64;
        for wi in 0..self.workers.len() {
            let done = self.recv_tick(wi, plan.tick)?;
            worker_us.push(done.wall_ns / 1000);
            for r in &done.results {
                if self.worker_of(r.agent_id) != wi {
                    return Err(RunError::Protocol {
                        worker: self.workers[wi].name(),
                        detail: format!("reported agent {} which it does not host", r.agent_id),
                    });
                }
            }
            results.extend(done.results);
            shm_protocol::worker::digest_add(&mut digest, done.digest);
            for (t, f) in done.tenant_fuel {
                *tenant_fuel.entry(t).or_default() += f;
            }
            calls += done.calls;
        }
        let workers_us = tw.elapsed().as_micros() as u64;
        // Canonical order: by agent id (stable: a worker's own order is kept).
        results.sort_by_key(|r| r.agent_id);
        let summary = self
            .sim
            .finish_tick(&plan, &inputs, &results, digest, &tenant_fuel, calls);
        for e in &summary.events {
            self.journal.write(&Entry::Event {
                tick: plan.tick,
                event: e.clone(),
            })?;
        }
        self.journal.write(&Entry::Tick {
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
            self.journal.write(&Entry::Inference {
                tick: plan.tick,
                answers: entry,
            })?;
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
            agents: self.sim.live_agents().count() as u64,
            tasks_open: self.sim.tasks.open.len() as u64,
            queued: self.sim.mailboxes.values().map(|m| m.len() as u64).sum(),
            worker_us,
        };
        self.emit(&tel, &results, &mailbox, measure);
        self.publish_board("running");
        Ok(summary)
    }

    /// Splits the plan by worker.
    fn partition(&self, plan: &TickPlan, measure: bool) -> Vec<TickWork> {
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
        for d in &plan.deliveries {
            works[self.worker_of(d.agent_id)].deliveries.push(d.clone());
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

    /// Answers inference requests.  The built-in `echo` model returns its
    /// input (a stand-in for tests); other models go to the inference host.
    fn infer(&mut self, tick: u64, queue: &[InferRequest]) -> Vec<InferAnswer> {
        let t0 = Instant::now();
        let answers: Vec<InferAnswer> = queue
            .iter()
            .map(|q| InferAnswer {
                agent: q.agent,
                request_id: q.request_id,
                result: if q.model == "echo" || q.model.starts_with("echo@") {
                    Ok(q.input.clone())
                } else {
                    Err(format!("unknown model `{}`", q.model))
                },
            })
            .collect();
        let t = InferenceTelemetry {
            tick,
            model: "echo".into(),
            requests: queue.len() as u64,
            batches: 1,
            max_batch: queue.len() as u64,
            latency_us: t0.elapsed().as_micros() as u64,
            run_us: t0.elapsed().as_micros() as u64,
            device: "builtin".into(),
        };
        for h in &mut self.hooks {
            h.on_inference(&t);
        }
        if let Some(m) = &mut self.metrics {
            m.on_inference(&t);
        }
        answers
    }

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
        let c = &self.sim.counters;
        children.truncate(64);
        let mut log: Vec<String> = vec![format!(
            "agents {} live / {} total · steps {} · messages {} (dropped {}) · faults {} · tasks open {} · tick p50 {} µs p99 {} µs",
            self.sim.live_agents().count(),
            self.sim.agents.len(),
            c.steps,
            c.messages,
            c.dropped,
            c.faults,
            self.sim.tasks.open.len(),
            self.agg.quantile(0.5),
            self.agg.quantile(0.99),
        )];
        for (id, a) in self.sim.agents.iter().take(256) {
            let status = match &a.status {
                AgentStatus::Pending => "pending".to_owned(),
                AgentStatus::Live => "live".to_owned(),
                AgentStatus::Faulted { fault, .. } => format!("faulted: {fault}"),
                AgentStatus::Stopped { reason, .. } => format!("stopped: {reason}"),
            };
            let q = self.sim.mailboxes.get(id).map_or(0, VecDeque::len);
            log.push(format!(
                "agent {id:>6} {:<24} {status} (queued {q})",
                a.name
            ));
        }
        log.extend(self.logs.iter().cloned());
        LiveState {
            version: LIVE_STATE_VERSION,
            phase: phase.into(),
            tick: self.sim.tick,
            children,
            log,
        }
    }

    fn publish_board(&mut self, phase: &str) {
        if self.board.is_none() {
            return;
        }
        let state = self.live_state(phase);
        if let (Some(b), Ok(bytes)) = (&mut self.board, shm_protocol::codec::encode(&state)) {
            let _ = b.publish(&bytes);
        }
    }

    /// Ends the run: journal `End`, summary file, children shut down.
    pub fn finish(mut self) -> Result<RunSummary, RunError> {
        self.journal.write(&Entry::End {
            tick: self.sim.tick,
            hash: self.sim.hash,
        })?;
        self.journal.sync()?;
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
        if let Some(ctl) = self.ctl.take() {
            ctl.stop();
        }
        Ok(summary)
    }

    /// Wall time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Recent tick latency quantile (µs).
    pub fn tick_quantile(&self, q: f64) -> u64 {
        self.agg.quantile(q)
    }
}
