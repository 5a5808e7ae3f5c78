//! A run: the deterministic [`SimState`] driven tick by tick over the
//! worker pool, with the journal, the inference service, checkpoints and
//! the observers around it.
//!
//! One tick ([`Run::tick`]) is, in order (ARCHITECTURE.md, "Tick
//! semantics"):
//!
//! 1. **inputs** — recorded ones ([`Timeline`]) or those accepted since the
//!    previous tick ([`crate::api`]); modules they bring are loaded;
//! 2. **plan** — [`SimState::begin_tick`];
//! 3. **execute** — [`WorkerPool::run_tick`] (which recovers any worker
//!    that fails, and reports the decisions it took);
//! 4. **barrier** — [`SimState::finish_tick`];
//! 5. **inference** — the tick's requests answered for the next tick;
//! 6. **record** — decisions, events, inference answers and the tick record
//!    journaled (live) or checked (recorded);
//! 7. **observe and checkpoint** — telemetry, the board, and a checkpoint
//!    every `checkpoint_every` ticks or once the messages and task payloads
//!    sent since the last one reach the manifest's `checkpoint_work`.

use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::ctl::CtlServer;
use crate::inference::tolerance::{self, AnswerChecks, AnswerDivergence, Comparison};
use crate::inference::{InferenceService, InferenceStartError};
use crate::inject::{Inject, Phase};
use crate::journal::{Answer, AnswerSource, BUILTIN_DEVICE, Entry, JournalError, JournalWriter};
use crate::modules::{ModuleError, ModuleStore};
use crate::observe::{Children, Observers};
use crate::pool::{ModuleImage, PoolConfig, PoolError, TickCtx, WorkerPool};
use crate::rundir::{self, RunDirError};
use crate::sim::{
    Decision, InferAnswer, InferRequest, Input, SimState, TickSummary, UNANSWERABLE, WorkReport,
};
use crate::snapshot::{ModelState, SnapshotBody, SnapshotError};
use crate::telemetry::{AgentTelemetry, CheckpointTelemetry, TelemetryHook, TickTelemetry};
use crate::timeline::Timeline;
use lockstep_common::live::LiveState;
use shm_protocol::worker::Sample;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::config::{RunConfig, default_address_space_limit};
pub use crate::jail::SandboxSettings;
pub use crate::timeline::Script;

/// Every called agent reports its fuel, wall time and memory size once
/// every this many ticks (per-agent telemetry is sampled to keep ticks
/// cheap) when something consumes the samples (metrics, the board or a
/// hook): in each tick the agents whose id is the tick modulo this, so that
/// every tick carries an equal share.  The samples never reach the tick
/// hash, so a replay without observers agrees.
pub const SAMPLE_EVERY: u64 = 64;

/// Bytes of messages and task payloads a tick's plan sends to the workers:
/// what the work log keeps of it (for recovery, until the next
/// checkpoint).  A function of the plan alone, so every worker count
/// checkpoints at the same ticks.
fn work_bytes(plan: &crate::sim::TickPlan) -> u64 {
    let messages: usize = plan
        .deliveries
        .iter()
        .map(|d| d.messages.as_bytes().len())
        .sum();
    let tasks: usize = plan
        .steps
        .iter()
        .filter_map(|s| s.task.as_ref())
        .map(|t| t.payload.len())
        .sum();
    (messages + tasks) as u64
}

/// Failures of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run directory is unusable.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The state could not be built from the manifest.
    #[error("{0}")]
    Setup(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The workers failed beyond recovery.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A module the run needs cannot be used.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The inference service could not start.
    #[error(transparent)]
    Inference(#[from] InferenceStartError),
    /// A re-executed tick did not reproduce its recorded hash.
    #[error("tick {tick} diverged: recorded hash {expected}, replayed {actual}")]
    Diverged {
        /// The tick.
        tick: u64,
        /// Recorded hash.
        expected: String,
        /// Replayed hash.
        actual: String,
    },
    /// A re-executed tick could not confirm an inference answer recorded
    /// on another device (not equal within its model's tolerance).
    #[error("{0}")]
    AnswerDiverged(Box<crate::inference::tolerance::AnswerDivergence>),
    /// A snapshot or the page store failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A re-executed checkpoint's state differs from the recorded one.
    #[error("{0}")]
    StateDiverged(Box<crate::diff::Divergence>),
    /// The run stopped: a worker kept failing with no agent to blame (the
    /// decision is journaled).
    #[error("the run gave up at tick {tick}: {reason}")]
    GaveUp {
        /// The tick.
        tick: u64,
        /// Why.
        reason: String,
    },
}

impl From<CheckpointError> for RunError {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Snapshot(s) => RunError::Snapshot(s),
            CheckpointError::Journal(j) => RunError::Journal(j),
            CheckpointError::Pool(p) => RunError::Pool(p),
            CheckpointError::Diverged(d) => RunError::StateDiverged(d),
        }
    }
}

/// What the inference pipeline did after one tick.
#[derive(Debug, Default)]
struct InferStep {
    /// Answers delivered.
    answered: usize,
    /// Time waiting for them.
    waited: Duration,
    /// Batches still on the host.
    in_flight: usize,
    /// The host's model time of the batches answered.
    busy_us: u64,
}

/// Where the supervisor's wall time went in one tick (observation only:
/// nothing here feeds back into the run).
#[derive(Debug, Clone, Copy, Default)]
pub struct TickTiming {
    /// Planning: `SimState::begin_tick`.
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
    pub run_dir: std::path::PathBuf,
}

/// A running supervisor.
pub struct Run {
    pub(crate) cfg: RunConfig,
    pub(crate) sim: SimState,
    pub(crate) pool: WorkerPool,
    pub(crate) inference: InferenceService,
    pub(crate) modules: ModuleStore,
    /// Module ids loaded into the workers.
    loaded: BTreeSet<u32>,
    pub(crate) journal: Option<JournalWriter>,
    checkpointer: Checkpointer,
    /// Bytes of messages and task payloads sent to the workers since the
    /// last checkpoint (the manifest's `checkpoint_work` bounds it).
    work_since_checkpoint: u64,
    pub(crate) observers: Observers,
    pub(crate) ctl: Option<CtlServer>,
    timeline: Timeline,
    /// Inputs applied for the coming tick (journaled).
    pub(crate) pending: Vec<Input>,
    pub(crate) stop_requested: bool,
    started: Instant,
    timing: TickTiming,
    manifest_hash: [u8; 32],
    /// The tick being run, while in [`Run::tick`].
    in_tick: Option<u64>,
    /// Test-only kill points (`fault-injection` feature).
    inject: Inject,
    /// The children's jails (settings, cgroups).
    pub(crate) jails: Arc<std::sync::Mutex<crate::jail::Jails>>,
    /// Recorded answers of other devices compared on recorded ticks.
    answer_checks: AnswerChecks,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("tick", &self.sim.tick)
            .field("workers", &self.pool.len())
            .finish_non_exhaustive()
    }
}

/// The hash an answer is journaled and chained with.
fn answer_hash(a: &InferAnswer) -> [u8; 32] {
    *blake3::hash(&shm_protocol::codec::encode(a).unwrap_or_default()).as_bytes()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Run {
    /// Creates the run directory, starts the workers, loads the modules,
    /// writes the journal header and the genesis checkpoint.  No tick has
    /// run yet.
    pub fn start(cfg: RunConfig) -> Result<Self, RunError> {
        let dir = cfg.run_dir.clone();
        rundir::prepare(&dir)?;
        rundir::write_private(&dir.join("manifest.toml"), cfg.manifest_text.as_bytes())?;
        rundir::write_meta(
            &dir,
            &rundir::Meta {
                workers: cfg.workers,
                seed: cfg.seed,
                manifest_dir: &cfg.manifest_dir,
                target_ticks: cfg.target_ticks,
                checkpoint_every: cfg.checkpoint_every,
                retain_checkpoints: cfg.retain_checkpoints,
                forever: false,
                sandbox_off: cfg.sandbox.mode == lockstep_common::SandboxMode::Off,
                forked: None,
                nodes: cfg
                    .remote
                    .as_ref()
                    .map(|r| (r.nats.as_str(), r.placement(cfg.workers.max(1)))),
            },
        )?;
        let sim = SimState::new(&cfg.manifest, cfg.seed).map_err(RunError::Setup)?;
        let mut journal = JournalWriter::create(&dir.join("journal.lsj"))?;
        journal.write(&Entry::Header {
            manifest_hash: *blake3::hash(cfg.manifest_text.as_bytes()).as_bytes(),
            seed: cfg.seed,
            manifest: cfg.manifest_text.clone(),
            sandbox_off: cfg.sandbox.layers_off(),
            device: cfg.inference.device.clone(),
        })?;
        journal.sync()?;
        let mut run = Self::boot(cfg, sim, Some(journal), None, Timeline::Live)?;
        // The genesis snapshot: every replay and `verify` can start here.
        run.checkpoint()?;
        Ok(run)
    }

    /// Starts workers around a state: the genesis state of a new run, or a
    /// snapshot's (whose agents are restored into the new workers), on a
    /// timeline (live, or re-executing a script first).
    pub fn boot(
        cfg: RunConfig,
        sim: SimState,
        journal: Option<JournalWriter>,
        snapshot: Option<SnapshotBody>,
        timeline: Timeline,
    ) -> Result<Self, RunError> {
        let dir = cfg.run_dir.clone();
        rundir::create(&dir)?;
        let kept = match &journal {
            Some(j) => crate::checkpoint::journaled_checkpoints(j.path())?,
            None => Vec::new(),
        };
        let checkpointer =
            Checkpointer::open(&dir, cfg.origin.as_deref(), cfg.retain_checkpoints, kept)?;
        let jails = Arc::new(std::sync::Mutex::new(
            crate::jail::Jails::new(cfg.sandbox.clone()).map_err(RunError::Setup)?,
        ));
        let address_space = if cfg.sandbox.mode == lockstep_common::SandboxMode::Off
            || cfg
                .sandbox
                .disabled
                .iter()
                .any(|(l, _)| *l == lockstep_sandbox::Layer::Rlimits)
        {
            0
        } else {
            cfg.sandbox.worker_address_space
        };
        let isolated = cfg
            .manifest
            .tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.isolation == crate::manifest::Isolation::Process)
            .map(|(i, t)| crate::pool::IsolatedTenant {
                index: i as u32,
                name: t.name.clone(),
                workers: t.workers.max(1) as usize,
                limits: t.process,
            })
            .collect();
        let pool = WorkerPool::start(PoolConfig {
            isolated,
            bin: cfg.worker_bin.clone(),
            workers: cfg.workers.max(1),
            seed: cfg.seed,
            watchdog: cfg.watchdog,
            tick_timeout: cfg.tick_timeout,
            hang_timeout: cfg.hang_timeout,
            args: Vec::new(),
            jails: jails.clone(),
            env: cfg.worker_env.clone(),
            first_env: cfg.first_worker_env.clone(),
            log_path: dir.join("recovery.log"),
            address_space,
            remote: cfg.remote.clone(),
            pin_workers: cfg.pin_workers,
        })?;
        let modules = ModuleStore::new(
            Some(&dir),
            cfg.origin.as_deref(),
            cfg.module_cache.as_deref(),
        );
        let observers = Observers::new(&dir, cfg.metrics, cfg.board);
        let ctl = if cfg.control_socket {
            Some(
                CtlServer::start(&dir.join("control.sock")).map_err(|e| RunDirError {
                    dir: dir.display().to_string(),
                    reason: format!("control socket: {e}"),
                })?,
            )
        } else {
            None
        };
        let mut inference_cfg = cfg.inference.clone();
        inference_cfg.jails = Some(jails.clone());
        let inference = InferenceService::start(&cfg.manifest.models, inference_cfg)?;
        let manifest_hash = *blake3::hash(cfg.manifest_text.as_bytes()).as_bytes();
        let mut run = Self {
            cfg,
            sim,
            pool,
            inference,
            modules,
            loaded: BTreeSet::new(),
            journal,
            checkpointer,
            work_since_checkpoint: 0,
            observers,
            ctl,
            timeline,
            pending: Vec::new(),
            stop_requested: false,
            started: Instant::now(),
            timing: TickTiming::default(),
            manifest_hash,
            in_tick: None,
            inject: Inject::from_env(),
            jails,
            answer_checks: AnswerChecks::default(),
        };
        run.load_modules()?;
        run.sync_models()?;
        run.resubmit_inference();
        if let Some(body) = snapshot {
            let body = Arc::new(body);
            run.pool.restore(body.clone(), run.checkpointer.pages())?;
            run.checkpointer.restored(body);
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
        self.observers.add_hook(hook);
    }

    /// Whether `lockstep ctl stop` asked the run to end.
    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// Whether the coming tick (or, inside a tick, this one) is a recorded
    /// one.
    pub(crate) fn replaying(&self) -> bool {
        self.timeline
            .recorded(self.in_tick.unwrap_or(self.sim.tick + 1))
    }

    /// Writes a journal entry (live ticks only).
    pub(crate) fn record(&mut self, e: &Entry) -> Result<(), RunError> {
        if !self.replaying()
            && let Some(j) = &mut self.journal
        {
            j.write(e)?;
        }
        Ok(())
    }

    /// Loads every module the state knows but the workers do not.
    pub(crate) fn load_modules(&mut self) -> Result<(), RunError> {
        let todo: Vec<u32> = self
            .sim
            .modules
            .keys()
            .filter(|k| !self.loaded.contains(k))
            .copied()
            .collect();
        for id in todo {
            let Some(rec) = self.sim.modules.get(&id).cloned() else {
                continue;
            };
            let pinned = rec
                .expected_blake3
                .clone()
                .or_else(|| rec.blake3.map(|h| hex(&h)));
            let prepared =
                self.modules
                    .prepare(&rec.name, &rec.path, pinned.as_deref(), &mut self.pool)?;
            let facts = self.pool.load_module(
                id,
                ModuleImage {
                    name: rec.name.clone(),
                    wasm: prepared.wasm.clone(),
                    compiled: Some(prepared.compiled.clone()),
                    memory_limit: rec.memory_limit,
                },
                self.checkpointer.pages(),
            )?;
            if let Some(m) = self.sim.modules.get_mut(&id) {
                m.abi_version = Some(facts.abi_version);
                m.globals = Some(facts.globals);
                m.migrates = facts.migrates;
                m.blake3 = Some(facts.blake3);
            }
            self.loaded.insert(id);
        }
        Ok(())
    }

    /// Runs one tick (see the module docs).
    pub fn tick(&mut self) -> Result<TickSummary, RunError> {
        self.in_tick = Some(self.sim.tick + 1);
        let r = self.tick_inner();
        self.in_tick = None;
        r
    }

    fn tick_inner(&mut self) -> Result<TickSummary, RunError> {
        let t0 = Instant::now();
        let next = self.sim.tick + 1;
        let replaying = self.timeline.recorded(next);
        // Every delivery of the tick counts in its record: those of inputs
        // and inference answers as well as the routed ones, so that the
        // records add up to the run's message counter.
        let messages_before = self.sim.counters.messages;
        // 1. Inputs.
        let (recorded, decisions) = self.timeline.take(next);
        self.sim.apply_inputs(&recorded);
        self.pending.extend(recorded);
        if !replaying {
            self.drain_ctl()?;
        }
        self.load_modules()?;
        self.sync_models()?;
        let inputs = std::mem::take(&mut self.pending);
        self.inject.at(next, Phase::Inputs);
        if let Some(Decision::GiveUp { reason }) = decisions
            .iter()
            .find(|d| matches!(d, Decision::GiveUp { .. }))
        {
            return Err(RunError::GaveUp {
                tick: next,
                reason: reason.clone(),
            });
        }
        // 2. Plan.
        let tp = Instant::now();
        let mut plan = self.sim.begin_tick();
        self.work_since_checkpoint += work_bytes(&plan);
        let sample = self.observers.sample_at(plan.tick);
        let mailbox: BTreeMap<u64, u64> = if sample == Sample::None {
            BTreeMap::new()
        } else {
            plan.deliveries
                .iter()
                .filter(|d| sample.covers(d.agent_id))
                .map(|d| (d.agent_id, d.messages.len() as u64))
                .collect()
        };
        let ctx = TickCtx {
            sample,
            watchdog: !replaying,
            preempt: decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Watchdog { agent } => Some(*agent),
                    _ => None,
                })
                .collect(),
            quarantine: decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Quarantine { agent } => Some(*agent),
                    _ => None,
                })
                .collect(),
        };
        let tw = Instant::now();
        self.timing.plan = tw - tp;
        // 3. Execute.
        let sim = &self.sim;
        let outcome = self
            .pool
            .run_tick(&mut plan, &ctx, self.checkpointer.pages(), &|a| {
                sim.agents.contains_key(&a)
            });
        for line in self.pool.take_notes() {
            self.observers.failure(plan.tick, line);
        }
        let mut outcome = match outcome {
            Ok(o) => o,
            Err(PoolError::GiveUp { tick, reason }) => {
                let d = Decision::GiveUp {
                    reason: reason.clone(),
                };
                self.record(&Entry::Decision { tick, decision: d })?;
                if let Some(j) = &mut self.journal {
                    j.sync()?;
                }
                tracing::error!(tick, "{reason}");
                return Err(RunError::GaveUp { tick, reason });
            }
            Err(e) => return Err(e.into()),
        };
        self.timing.workers = tw.elapsed();
        let workers_us = self.timing.workers.as_micros() as u64;
        self.inject.at(next, Phase::Workers);
        // 4. Barrier.
        let tf = Instant::now();
        let mut summary = self.sim.finish_tick(
            &plan,
            &inputs,
            &outcome.decisions,
            WorkReport {
                results: &mut outcome.results,
                digest: outcome.digest,
                tenant_fuel: &outcome.tenant_fuel,
                calls: outcome.calls,
            },
        );
        self.timing.finish = tf.elapsed();
        self.inject.at(next, Phase::Barrier);
        // 5–6. Record (decisions first), inference, the tick record last:
        // a tick is complete in the journal once its `Tick` entry is there.
        for d in &outcome.decisions {
            self.record(&Entry::Decision {
                tick: plan.tick,
                decision: d.clone(),
            })?;
        }
        for e in &summary.events {
            self.record(&Entry::Event {
                tick: plan.tick,
                event: e.clone(),
            })?;
        }
        self.inject.at(next, Phase::Record);
        let infer = self.pipeline_inference(plan.tick)?;
        if infer.answered > 0 {
            self.inject.at(next, Phase::Inference);
        }
        summary.messages = self.sim.counters.messages - messages_before;
        self.record(&Entry::Tick {
            tick: summary.tick,
            hash: summary.hash,
            steps: summary.steps,
            calls: summary.calls,
            fuel: summary.fuel,
            messages: summary.messages,
            dropped: summary.dropped,
            faults: summary.faults,
        })?;
        if let Some(d) = self.answer_checks.take_divergence() {
            return Err(RunError::AnswerDiverged(Box::new(d)));
        }
        if let Err(m) = self.timeline.check(plan.tick, &summary.hash) {
            return Err(RunError::Diverged {
                tick: m.tick,
                expected: hex(&m.expected),
                actual: hex(&m.actual),
            });
        }
        self.inject.at(next, Phase::Tick);
        // 7. Observe and checkpoint.
        self.observers.agent_logs(&self.sim, &outcome.results);
        self.observers.flow(summary.tick, &outcome.results);
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
            queued: if self.observers.wants_agent_samples() {
                self.sim.mailboxes.values().map(|m| m.len() as u64).sum()
            } else {
                0
            },
            worker_us: outcome.worker_us.clone(),
            infer_wait_us: infer.waited.as_micros() as u64,
            infer_pending: self.sim.inference_in_flight() as u64,
            infer_batches_in_flight: infer.in_flight as u64,
            infer_busy_us: infer.busy_us,
        };
        let agents: Vec<AgentTelemetry> = if sample == Sample::None {
            Vec::new()
        } else {
            outcome
                .results
                .iter()
                .filter(|r| sample.covers(r.agent_id))
                .map(|r| AgentTelemetry {
                    tick: summary.tick,
                    agent: r.agent_id,
                    calls: r.calls,
                    fuel: r.fuel,
                    wall_ns: r.wall_ns,
                    mailbox: mailbox.get(&r.agent_id).copied().unwrap_or(0),
                    faulted: r.fault.is_some(),
                    memory_bytes: r.memory_bytes,
                })
                .collect()
        };
        self.observers.tick(&tel, &agents);
        let every = self.cfg.checkpoint_every;
        if (every > 0 && summary.tick.is_multiple_of(every))
            || self.work_since_checkpoint >= self.cfg.manifest.checkpoint_work
        {
            self.checkpoint()?;
        }
        self.publish_board("running");
        self.timing.total = t0.elapsed();
        Ok(summary)
    }

    /// The inference pipeline after `tick`'s barrier: the requests the tick
    /// asked go to the host at once; those due at this tick (asked
    /// `latency_ticks − 1` ticks ago) are waited for, delivered for the
    /// next tick and journaled.
    fn pipeline_inference(&mut self, tick: u64) -> Result<InferStep, RunError> {
        let fresh = self.sim.take_new_inference();
        if !fresh.is_empty() {
            self.inference.submit(tick, &fresh);
        }
        let due = self.sim.take_due_inference(tick);
        let mut step = InferStep {
            in_flight: self.inference.in_flight(),
            ..InferStep::default()
        };
        if due.is_empty() {
            return Ok(step);
        }
        let c = self.inference.collect(tick, &due);
        for t in &c.telemetry {
            step.busy_us += t.run_us;
            self.observers.inference(t);
        }
        for line in self.inference.take_notes() {
            self.observers.failure(tick, line);
        }
        step.waited = c.waited;
        step.in_flight = c.in_flight;
        step.answered = c.answers.len();
        let (mut answers, mut devices) = (c.answers, c.devices);
        // An error the state decides is the supervisor's whatever answered.
        for (q, d) in due.iter().zip(devices.iter_mut()) {
            if q.pinned.starts_with(UNANSWERABLE) {
                BUILTIN_DEVICE.clone_into(d);
            }
        }
        let replaying = self.replaying();
        if replaying {
            let recorded = self.timeline.take_answers(tick);
            self.check_answers(tick, &due, &recorded, &mut answers, &devices);
        }
        let hashes = self.sim.deliver_answers(&due, &answers);
        if !replaying {
            let entry = due
                .iter()
                .zip(&answers)
                .zip(&devices)
                .zip(hashes)
                .map(|(((q, a), d), hash)| Answer {
                    agent: q.agent,
                    request_id: q.request_id,
                    model: q.model.clone(),
                    hash,
                    source: AnswerSource::of(d, &a.result),
                })
                .collect();
            for e in crate::journal::inference_entries(tick, entry) {
                self.record(&e)?;
            }
        }
        Ok(step)
    }

    /// On a recorded tick: every answer the journal records from another
    /// device than the one that recomputed it here is compared with the
    /// recomputation — within its model's tolerance when the journal keeps
    /// the answer, by its hash otherwise — and the recorded answer is
    /// delivered in place of the recomputed one, so that the run goes on
    /// exactly as recorded.  Answers of the same device are left to the
    /// tick hash (bitwise, as always).  What is found goes to
    /// [`Run::take_answer_checks`]; an answer not confirmed ends the tick
    /// with [`RunError::AnswerDiverged`].
    fn check_answers(
        &mut self,
        tick: u64,
        due: &[InferRequest],
        recorded: &[Answer],
        answers: &mut [InferAnswer],
        devices: &[String],
    ) {
        for (i, (q, a)) in due.iter().zip(answers.iter_mut()).enumerate() {
            // Another sequence of answers than recorded: the tick hash says so.
            let Some(rec) = recorded
                .get(i)
                .filter(|r| r.agent == q.agent && r.request_id == q.request_id)
            else {
                continue;
            };
            let (there, here) = (rec.source.device(), devices[i].as_str());
            if there == here {
                continue;
            }
            let tol = self.inference.tolerance(&q.pinned);
            let model = if q.pinned.is_empty() || q.pinned.starts_with(UNANSWERABLE) {
                q.model.clone()
            } else {
                q.pinned.clone()
            };
            let diverged = |max_abs_diff, reason| AnswerDivergence {
                tick,
                agent: q.agent,
                agent_name: self
                    .sim
                    .agents
                    .get(&q.agent)
                    .map_or_else(String::new, |r| r.name.clone()),
                request_id: q.request_id,
                model: model.clone(),
                recorded_on: there.to_owned(),
                recomputed_on: here.to_owned(),
                max_abs_diff,
                atol: tol.atol,
                rtol: tol.rtol,
                reason,
            };
            let Some(kept) = rec.source.answer() else {
                // Only the hash was journaled (a CPU or built-in answer).
                if answer_hash(a) != rec.hash {
                    let why = if there == BUILTIN_DEVICE {
                        format!("the supervisor answered it itself, and {here} answers otherwise")
                    } else {
                        format!(
                            "the journal keeps only the hash of answers computed on {there}, \
                             and the answer recomputed on {here} differs (verify with --device {there})"
                        )
                    };
                    self.answer_checks.diverged(diverged(None, why));
                }
                continue;
            };
            let delivered = InferAnswer {
                agent: a.agent,
                request_id: a.request_id,
                result: kept,
            };
            if answer_hash(&delivered) != rec.hash {
                let d = diverged(
                    None,
                    "the journal's bytes of this answer do not match its recorded hash \
                     (a damaged or altered journal)"
                        .into(),
                );
                self.answer_checks.diverged(d);
            }
            match tolerance::compare(&delivered.result, &a.result, tol) {
                Comparison::Identical => self.answer_checks.within(there, here, &model, tol, None),
                Comparison::Within(c) => {
                    self.answer_checks.within(there, here, &model, tol, Some(c));
                }
                Comparison::Outside(m) => {
                    let d = diverged(m.max_abs_diff, m.reason);
                    self.answer_checks.diverged(d);
                }
            }
            *a = delivered;
        }
    }

    /// Sends the requests a restored state has outstanding to the inference
    /// host again (in the order they were asked).
    fn resubmit_inference(&mut self) {
        let pending = self.sim.pending_inference();
        let mut start = 0;
        while start < pending.len() {
            let asked = pending[start].asked;
            let end = pending[start..]
                .iter()
                .position(|r| r.asked != asked)
                .map_or(pending.len(), |n| start + n);
            self.inference.submit(asked, &pending[start..end]);
            start = end;
        }
    }

    /// Models loaded at this point of the run (for snapshots): the
    /// state's catalog, with the pinned hash of each version (a manifest
    /// model's pin, if it has one; a loaded one's always).
    fn model_states(&self) -> Vec<ModelState> {
        self.sim
            .model_catalog
            .iter()
            .flat_map(|(id, versions)| versions.iter().map(move |v| (id, v)))
            .map(|(id, v)| {
                let blake3 = match self.sim.loaded_models.get(&format!("{id}@{v}")) {
                    Some(m) => Some(m.blake3.clone()),
                    None => self
                        .cfg
                        .manifest
                        .models
                        .iter()
                        .find(|m| &m.id == id && &m.version == v)
                        .and_then(|m| m.blake3.clone()),
                };
                ModelState {
                    id: id.clone(),
                    version: v.clone(),
                    blake3,
                    current: self.sim.model_versions.get(id) == Some(v),
                }
            })
            .collect()
    }

    /// Images every agent and the scheduler at the current tick boundary
    /// (new chunks go to the page store) without writing a snapshot file.
    pub fn capture_state(&mut self) -> Result<SnapshotBody, RunError> {
        let models = self.model_states();
        Ok(self
            .checkpointer
            .capture(&self.sim, &mut self.pool, self.manifest_hash, models)?)
    }

    /// Takes a checkpoint at the current tick boundary: images every agent,
    /// stores new chunks, writes the snapshot and journals it (or, while
    /// re-executing recorded ticks, checks it against the recorded one).
    /// Returns the snapshot's file name (relative to the run directory).
    pub fn checkpoint(&mut self) -> Result<(String, Arc<SnapshotBody>), RunError> {
        let t0 = Instant::now();
        self.work_since_checkpoint = 0;
        let body = self.capture_state()?;
        // A recorded tick's checkpoint is reproduced if the journal has it,
        // taken (and journaled) if a crash cut the run before it.
        let replaying = self.replaying() && self.timeline.checkpoint_recorded(self.sim.tick);
        let (file, body) =
            self.checkpointer
                .commit(body, self.journal.as_mut(), replaying, &self.inject)?;
        self.pool.rebase(body.clone());
        self.observers.checkpoint(&CheckpointTelemetry {
            tick: body.tick,
            file: file.clone(),
            state_hash: hex(&body.state_hash),
            agents: body.agents.len() as u64,
            wall_us: t0.elapsed().as_micros() as u64,
            pages_bytes: self.checkpointer.pages().own().len(),
        });
        Ok((file, body))
    }

    /// Replaces the timeline (verify goes on unchecked after a divergence).
    pub fn set_timeline(&mut self, timeline: Timeline) {
        self.timeline = timeline;
    }

    /// Goes on re-executing recorded ticks without checking their hashes.
    pub fn continue_unchecked(&mut self) {
        self.timeline.unchecked();
    }

    /// The recorded answers of other devices this re-execution compared so
    /// far (within their tolerance, per device and model), taken.
    pub fn take_answer_checks(&mut self) -> AnswerChecks {
        std::mem::take(&mut self.answer_checks)
    }

    /// Agents quarantined because they made their worker fail.
    pub fn quarantined(&self) -> &[u64] {
        &self.pool.stats().quarantined
    }

    /// Pid of each worker process (for tests and operators).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.pids()
    }

    /// How long the last worker recovery took (failure to the re-run
    /// tick's results).
    pub fn last_recovery(&self) -> Option<Duration> {
        self.pool.stats().last_recovery
    }

    /// Worker recoveries so far.
    pub fn recoveries(&self) -> u64 {
        self.pool.stats().recoveries
    }

    /// The worker pool's recovery statistics (failures by class, …).
    pub fn pool_stats(&self) -> &crate::pool::PoolStats {
        self.pool.stats()
    }

    /// Pid of the inference host, while one runs.
    pub fn inference_host_pid(&self) -> Option<u32> {
        self.inference.host_pid()
    }

    /// Inference host restarts so far (crashes, hangs).
    pub fn inference_restarts(&self) -> u64 {
        self.inference.restarts()
    }

    /// The run's child processes, as viewers see them.
    pub fn children(&self) -> Children {
        let mut rows: Vec<(String, String, u32, String)> = self
            .pool
            .names()
            .into_iter()
            .zip(self.pool.pids())
            .map(|(n, p)| (n, "worker".into(), p, "ready".into()))
            .collect();
        if let Some(pid) = self.inference.host_pid() {
            rows.push((
                "inference-host".into(),
                "inference-host".into(),
                pid,
                format!("ready ({} restarts)", self.inference.restarts()),
            ));
        }
        Children {
            rows,
            recoveries: self.pool.stats().recoveries,
        }
    }

    /// The live state for viewers.
    pub fn live_state(&self, phase: &str) -> LiveState {
        self.observers
            .live_state(phase, &self.sim, &self.children())
    }

    fn publish_board(&mut self, phase: &str) {
        let children = self.children();
        self.observers.publish(phase, &self.sim, || children);
    }

    /// Ends the run: a final checkpoint, journal `End`, summary file,
    /// children shut down.
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
            .checkpointer
            .last()
            .is_some_and(|c| c.tick == self.sim.tick);
        if end && self.journal.is_some() && !self.replaying() && !checkpointed {
            self.checkpoint()?;
        }
        if end {
            self.record(&Entry::End {
                tick: self.sim.tick,
                hash: self.sim.hash,
            })?;
        }
        if let Some(j) = &mut self.journal {
            j.sync()?;
        }
        self.observers.flush();
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
            "recoveries": self.pool.stats().recoveries,
            "inference_restarts": self.inference.restarts(),
        });
        let _ = rundir::write_private(
            &self.cfg.run_dir.join("summary.json"),
            format!("{json:#}\n").as_bytes(),
        );
        self.pool.shutdown();
        self.inference.shutdown();
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
        self.observers.quantile(q)
    }

    /// Counts tick latency ([`Run::tick_quantile`]) from the next tick on:
    /// for leaving warm-up ticks out of a measurement.  Observation only.
    pub fn restart_latency(&mut self) {
        self.observers.restart_latency();
    }

    /// The run's configuration.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }
}
