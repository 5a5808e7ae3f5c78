//! The worker pool: every worker process of a run, and everything that can
//! go wrong with one.
//!
//! The pool owns spawning (bring-up, configuration, module loading),
//! partitioning a tick's plan by worker (agent `a` lives on worker
//! `(a − 1) mod K`), the exchange of work and results, imaging agents for
//! checkpoints and restoring them, and — whatever a worker does wrong —
//! recovery ([`recovery`]): the failed worker is replaced, its agents are
//! restored from the last checkpoint, the work logged since then is
//! re-executed ([`worklog`]), and the tick is run again.  The rest of the
//! run never notices; only decisions that the inputs alone do not determine
//! (a quarantine, a watchdog trip, a give-up) come back, to be journaled.

mod recovery;
pub mod worklog;

use crate::child::{Child, ChildSpec};
use crate::failure::{Cause, ChildFailure, chain};
use crate::reaper::{ChildExit, Reaper};
use crate::sim::{Decision, TickPlan};
use crate::snapshot::SnapshotBody;
use serde_bytes::ByteBuf;
use shm_protocol::control::{Down, Role, Up};
use shm_protocol::segment::SegmentConfig;
use shm_protocol::worker::{
    AgentImage, AgentResult, CHUNK, ChunkData, Fault, ModuleFacts, RestoreOrder, Sample, TickDone,
    TickWork, WorkerCommand, WorkerReply, digest_add,
};
use shm_protocol::{ChannelError, WaitPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use worklog::{LoggedTick, WorkLog};

/// How many times a worker may fail within one tick before the run gives
/// up.
pub const MAX_FAILURES_PER_TICK: u32 = 4;
/// After this many failures at the same tick, the agent that causes them
/// is searched for.
pub const POISON_AFTER: u32 = 2;
/// Ring capacity per direction between the supervisor and a worker.
pub const WORKER_RING: usize = crate::config::WORKER_RING;

/// How the pool starts its workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker binary.
    pub bin: PathBuf,
    /// Number of shared workers.
    pub workers: usize,
    /// Tenants whose agents run in workers of their own (after the shared
    /// ones), in their own cgroup.
    pub isolated: Vec<IsolatedTenant>,
    /// Run seed.
    pub seed: u64,
    /// Wall-clock watchdog per agent call.
    pub watchdog: Duration,
    /// Longest wait for one tick's results.
    pub tick_timeout: Duration,
    /// Longest heartbeat silence while a worker owes an answer.
    pub hang_timeout: Duration,
    /// Extra arguments.
    pub args: Vec<OsString>,
    /// The run's jails: each worker's sandbox arguments and cgroup.
    pub jails: Arc<std::sync::Mutex<crate::jail::Jails>>,
    /// Environment of every worker.
    pub env: Vec<(String, String)>,
    /// Environment of the workers started with the pool only.
    pub first_env: Vec<(String, String)>,
    /// Scratch file of the work log (in the run directory).
    pub log_path: PathBuf,
    /// The workers' address-space limit (0: none), named when memory runs
    /// out.
    pub address_space: u64,
    /// Shared worker slots placed on other machines (`None`: all here).
    pub remote: Option<crate::remote::RemoteWorkers>,
    /// Give each worker a CPU of its own when the workers and the
    /// supervisor take every CPU ([`worker_cpus`]).
    pub pin_workers: bool,
}

/// A tenant with process isolation.
#[derive(Debug, Clone)]
pub struct IsolatedTenant {
    /// Its index in the manifest.
    pub index: u32,
    /// Its name (names its cgroup).
    pub name: String,
    /// Its worker processes.
    pub workers: usize,
    /// The cgroup limits of those workers together.
    pub limits: crate::manifest::ProcessLimits,
}

/// Which worker hosts which agent.  Shared workers `0..shared` host the
/// agents of every tenant without process isolation, agent `a` on worker
/// `(a − 1) mod shared`; each tenant with process isolation has workers of
/// its own after them, hosting its agents the same way among themselves.
/// Placement never changes results, only which process computes them.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    shared: usize,
    /// Tenant → (first worker, workers).
    isolated: BTreeMap<u32, (usize, usize)>,
    /// The tenant of every agent of an isolated tenant.
    tenant: BTreeMap<u64, u32>,
}

impl Placement {
    /// `shared` shared workers, then `(tenant, workers)` for each isolated
    /// tenant.
    pub fn new(shared: usize, isolated: &[(u32, usize)]) -> Self {
        let mut next = shared.max(1);
        let mut map = BTreeMap::new();
        for &(t, n) in isolated {
            map.insert(t, (next, n.max(1)));
            next += n.max(1);
        }
        Self {
            shared: shared.max(1),
            isolated: map,
            tenant: BTreeMap::new(),
        }
    }

    /// Workers in all.
    pub fn workers(&self) -> usize {
        self.shared + self.isolated.values().map(|(_, n)| n).sum::<usize>()
    }

    /// Records that `agent` belongs to `tenant`.
    pub fn note(&mut self, agent: u64, tenant: u32) {
        if self.isolated.contains_key(&tenant) {
            self.tenant.insert(agent, tenant);
        }
    }

    /// The worker hosting `agent`.
    pub fn worker_of(&self, agent: u64) -> usize {
        match self.tenant.get(&agent).and_then(|t| self.isolated.get(t)) {
            Some(&(first, n)) => first + worker_of(agent, n),
            None => worker_of(agent, self.shared),
        }
    }

    /// The tenant whose agents worker `wi` hosts alone, if any.
    pub fn tenant_of_worker(&self, wi: usize) -> Option<u32> {
        self.isolated
            .iter()
            .find(|(_, (first, n))| (*first..first + n).contains(&wi))
            .map(|(t, _)| *t)
    }
}

/// A module as loaded into workers: its bytes and compiled form.
#[derive(Debug, Clone)]
pub struct ModuleImage {
    /// Name for messages.
    pub name: String,
    /// The module's bytes.
    pub wasm: Arc<Vec<u8>>,
    /// Its compiled form (from the compile step).
    pub compiled: Option<Arc<Vec<u8>>>,
    /// Largest memory of its agents.
    pub memory_limit: u64,
}

/// Where a restore finds the bytes of memory chunks.
pub trait ChunkSource: Sync {
    /// Reads the chunk with this hash into `buf` ([`CHUNK`] bytes).
    fn chunk_into(&self, hash: &[u8; 32], buf: &mut [u8]) -> Result<(), String>;
}

/// Reads into `chunks` (reusing its buffers) every distinct non-zero chunk
/// of `img`, in the order they first appear in the image.
fn read_chunks(
    img: &AgentImage,
    pages: &dyn ChunkSource,
    chunks: &mut Vec<ChunkData>,
) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    let mut used = 0;
    for (_, h) in img.chunks.nonzero() {
        if !seen.insert(*h) {
            continue;
        }
        if used == chunks.len() {
            chunks.push(ChunkData {
                hash: [0; 32],
                bytes: vec![0; CHUNK],
            });
        }
        let c = &mut chunks[used];
        c.hash = *h;
        pages.chunk_into(h, &mut c.bytes)?;
        used += 1;
    }
    chunks.truncate(used);
    Ok(())
}

/// What to do with a tick besides the plan.
#[derive(Debug, Clone, Default)]
pub struct TickCtx {
    /// The agents that report telemetry (wall time, memory size).
    pub sample: Sample,
    /// Whether the wall-clock watchdog may stop calls (off when recorded
    /// ticks are re-executed).
    pub watchdog: bool,
    /// Agents preempted by journaled watchdog trips.
    pub preempt: Vec<u64>,
    /// Agents quarantined by journaled decisions.
    pub quarantine: Vec<u64>,
}

/// The merged result of a tick.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Results, ascending agent id.
    pub results: Vec<AgentResult>,
    /// Sum of the workers' digests.
    pub digest: [u64; 4],
    /// Fuel per tenant.
    pub tenant_fuel: BTreeMap<u32, u64>,
    /// Calls made.
    pub calls: u64,
    /// Each worker's wall time for its share, µs.
    pub worker_us: Vec<u64>,
    /// Decisions the tick took (quarantines, then watchdog trips, each by
    /// agent id).
    pub decisions: Vec<Decision>,
}

/// What the pool cannot recover from.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A worker keeps failing and no single agent causes it.
    #[error("{reason}")]
    GiveUp {
        /// The tick.
        tick: u64,
        /// Why (names the limit).
        reason: String,
    },
    /// Workers could not be started at all.
    #[error("cannot start workers: {0}")]
    Start(String),
    /// A module that was validated is refused by a worker.
    #[error("{0}")]
    Module(String),
    /// A checkpoint's chunks could not be read for a restore.
    #[error("cannot restore agents: {0}")]
    Restore(String),
}

/// Recovery statistics (telemetry, the live view).
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Workers replaced.
    pub recoveries: u64,
    /// Duration of the last recovery (failure to the re-run tick's results).
    pub last_recovery: Option<Duration>,
    /// Agents quarantined for crashing their worker.
    pub quarantined: Vec<u64>,
    /// Failures by cause class.
    pub by_cause: BTreeMap<&'static str, u64>,
}

/// One worker process.
#[derive(Debug)]
struct Proc {
    child: Child,
}

/// The pool (see the module docs).
#[derive(Debug)]
pub struct WorkerPool {
    cfg: PoolConfig,
    workers: Vec<Proc>,
    reaper: Reaper,
    deaths: mpsc::Receiver<ChildExit>,
    /// Death reports not yet consumed, by pid.
    exits: BTreeMap<u32, ChildExit>,
    /// Modules every worker has loaded, by id.
    modules: BTreeMap<u32, ModuleImage>,
    /// Key of the workers' engine configuration.
    engine: String,
    /// The last checkpoint: what recovery restores.
    base: Option<Arc<SnapshotBody>>,
    /// Work since `base`.
    log: WorkLog,
    /// Failures per tick (since `base`).
    failures: BTreeMap<u64, u32>,
    /// (tick, worker) already searched for a poison agent.
    bisected: BTreeSet<(u64, usize)>,
    /// The last completed tick.
    tick: u64,
    stats: PoolStats,
    /// Lines for the live view's log (taken by the run).
    notes: Vec<String>,
    /// Workers started so far (names compile steps and probes apart).
    spawned: u64,
    /// Which worker hosts which agent.
    placement: Placement,
    /// How the supervisor waits for its workers.
    wait: WaitPolicy,
    /// The CPU of each worker slot, if the workers are pinned.
    cpus: Vec<usize>,
}

impl WorkerPool {
    /// Starts `cfg.workers` workers and configures them.
    pub fn start(cfg: PoolConfig) -> Result<Self, PoolError> {
        let (reaper, deaths) = Reaper::start()
            .map_err(|e| PoolError::Start(format!("cannot start the reaper: {e}")))?;
        let log = WorkLog::new(&cfg.log_path);
        let isolated: Vec<(u32, usize)> =
            cfg.isolated.iter().map(|t| (t.index, t.workers)).collect();
        let placement = Placement::new(cfg.workers.max(1), &isolated);
        let mut pool = Self {
            workers: Vec::new(),
            reaper,
            deaths,
            exits: BTreeMap::new(),
            modules: BTreeMap::new(),
            engine: String::new(),
            base: None,
            log,
            failures: BTreeMap::new(),
            bisected: BTreeSet::new(),
            tick: 0,
            stats: PoolStats::default(),
            notes: Vec::new(),
            spawned: 0,
            wait: supervisor_policy(spare_core(placement.workers())),
            cpus: if cfg.pin_workers {
                worker_cpus(
                    placement.workers(),
                    &lockstep_common::cpu::allowed_cpus(),
                    spare_core(placement.workers()),
                )
            } else {
                Vec::new()
            },
            placement,
            cfg,
        };
        for i in 0..pool.placement.workers() {
            let p = pool
                .spawn(&format!("worker-{i}"), true, Some(i))
                .map_err(|f| PoolError::Start(f.to_string()))?;
            pool.workers.push(p);
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether the pool has no worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker hosting `agent`.
    pub fn worker_of(&self, agent: u64) -> usize {
        self.placement.worker_of(agent)
    }

    /// The isolated tenant worker `wi` serves, if any.
    fn isolated_tenant(&self, wi: usize) -> Option<&IsolatedTenant> {
        let t = self.placement.tenant_of_worker(wi)?;
        self.cfg.isolated.iter().find(|x| x.index == t)
    }

    /// Pid of each worker.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.child.pid()).collect()
    }

    /// Each worker, for `lockstep doctor`.
    pub fn children(&self) -> Vec<crate::doctor::ChildInfo> {
        self.workers
            .iter()
            .map(|w| crate::doctor::ChildInfo {
                name: w.child.name().to_owned(),
                pid: w.child.pid(),
                sandbox: w.child.sandbox().cloned(),
            })
            .collect()
    }

    /// Name of each worker.
    pub fn names(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|w| w.child.name().to_owned())
            .collect()
    }

    /// Key of the workers' engine configuration (compiled modules are
    /// valid for it only).
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Recovery statistics.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Lines for the live view since the last call.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The process for worker slot `slot` (`None`: a compile step), named
    /// `name`: a worker of an isolated tenant goes in the tenant's cgroup.
    fn spec(&self, name: &str, first: bool, slot: Option<usize>) -> Result<ChildSpec, String> {
        let spare = spare_core(self.placement.workers());
        if let Some(spec) = self.remote_spec(name, slot, spare) {
            return Ok(spec);
        }
        let tenant = slot
            .and_then(|wi| self.isolated_tenant(wi))
            .map(|t| (t.name.as_str(), &t.limits));
        let prepared = self
            .cfg
            .jails
            .lock()
            .map_err(|_| "the jails' lock is poisoned".to_owned())?
            .prepare(crate::jail::ChildClass::Worker, name, tenant)?;
        let mut args = self.cfg.args.clone();
        args.extend(prepared.args);
        if !spare {
            args.push("--wait-yield".into());
        }
        if let Some(cpu) = slot.and_then(|wi| self.cpus.get(wi)) {
            args.push("--cpu".into());
            args.push(cpu.to_string().into());
        }
        let mut env = prepared.env;
        env.extend(self.cfg.env.iter().cloned());
        if first {
            env.extend(self.cfg.first_env.iter().cloned());
        }
        Ok(ChildSpec {
            role: Role::Worker,
            name: name.to_owned(),
            program: self.cfg.bin.clone(),
            args,
            rings: SegmentConfig {
                to_attacher: WORKER_RING,
                to_creator: WORKER_RING,
            },
            policy: supervisor_policy(spare),
            env,
            cgroup: prepared.cgroup,
            hang_timeout: Some(self.cfg.hang_timeout),
        })
    }

    /// For a shared slot placed on a node, the bridge that stands in for
    /// its worker (`crate::remote`): our own code, unjailed, because it
    /// talks to the network; the worker it asks for is jailed on the node.
    fn remote_spec(&self, name: &str, slot: Option<usize>, spare: bool) -> Option<ChildSpec> {
        let remote = self.cfg.remote.as_ref()?;
        let wi = slot.filter(|&wi| self.isolated_tenant(wi).is_none())?;
        remote.node_of(wi)?;
        let mut args = remote.bridge_args(wi, self.cfg.hang_timeout);
        if !spare {
            args.push("--wait-yield".into());
        }
        let mut env = crate::jail::passed_env();
        env.extend(self.cfg.env.iter().cloned());
        Some(ChildSpec {
            role: Role::Worker,
            name: name.to_owned(),
            program: remote.node_bin.clone(),
            args,
            rings: SegmentConfig {
                to_attacher: WORKER_RING,
                to_creator: WORKER_RING,
            },
            policy: supervisor_policy(spare),
            env,
            cgroup: None,
            // The bridge beats while its node says the worker is healthy.
            hang_timeout: Some(self.cfg.hang_timeout),
        })
    }

    /// Starts and configures one worker process (for worker slot `slot`).
    fn spawn(
        &mut self,
        name: &str,
        first: bool,
        slot: Option<usize>,
    ) -> Result<Proc, ChildFailure> {
        self.spawned += 1;
        let tick = self.tick;
        let fail = |cause: Cause, pid: u32| ChildFailure {
            child: name.to_owned(),
            pid,
            tick,
            cause,
        };
        let spec = self
            .spec(name, first, slot)
            .map_err(|e| fail(Cause::Start(e), 0))?;
        let mut child =
            Child::spawn(&spec, &self.reaper).map_err(|e| fail(Cause::Start(chain(&e)), 0))?;
        let pid = child.pid();
        if let Err(e) = child.handshake(Duration::from_secs(30)) {
            child.kill_and_wait(Duration::from_secs(5));
            let oom = child.oom_kills();
            let cause = match (self.death_of(pid, Duration::from_millis(500)), &e) {
                // A bridge that found no node says which nodes and why.
                (Some(d), crate::child::ChildError::Protocol { detail, .. })
                    if d.kind.code() == Some(shm_protocol::control::ExitCode::NodeLost) =>
                {
                    Cause::Start(detail.clone())
                }
                (Some(d), _) => Cause::from_death(&d, oom),
                (None, _) => Cause::Start(chain(&e)),
            };
            return Err(fail(cause, pid));
        }
        let mut p = Proc { child };
        let reply = p.request(
            WorkerCommand::Configure {
                seed: self.cfg.seed,
                watchdog_ms: self.cfg.watchdog.as_millis().min(u128::from(u32::MAX)) as u32,
            },
            Duration::from_secs(30),
        );
        match reply {
            Ok(WorkerReply::Configured { engine }) => {
                self.engine = engine;
                Ok(p)
            }
            Ok(WorkerReply::Error(e)) => {
                // A worker whose sandbox cannot be set up says why, then
                // exits (code 69).
                p.child.kill_and_wait(Duration::from_secs(5));
                let oom = p.child.oom_kills();
                let cause = self
                    .death_of(pid, Duration::from_millis(500))
                    .map_or_else(|| Cause::Start(e.clone()), |d| Cause::from_death(&d, oom));
                Err(fail(cause, pid))
            }
            Ok(other) => {
                p.child.kill_and_wait(Duration::from_secs(5));
                Err(fail(
                    Cause::Protocol(format!("answered Configure with {}", describe(&other))),
                    pid,
                ))
            }
            Err(e) => {
                let cause = self.cause_of(&p, &e, Duration::from_secs(30));
                Err(fail(cause, pid))
            }
        }
    }

    /// How a process that failed a ring operation failed (it is killed if
    /// it is still there).
    fn cause_of(&mut self, p: &Proc, e: &ChannelError, waited: Duration) -> Cause {
        let pid = p.child.pid();
        let cause = Cause::from_channel(e, waited);
        p.child.kill_and_wait(Duration::from_secs(5));
        self.settle(pid, cause, p.child.oom_kills())
    }

    /// The cause, or — for a process that is simply gone — how the reaper
    /// saw it die.
    fn settle(&mut self, pid: u32, cause: Option<Cause>, oom_kills: u64) -> Cause {
        match cause {
            Some(c) => c,
            None => self.death_of(pid, Duration::from_secs(1)).map_or_else(
                || Cause::Exited { code: -1 },
                |d| Cause::from_death(&d, oom_kills),
            ),
        }
    }

    /// The reaper's report of `pid`'s death, waiting up to `wait`.
    fn death_of(&mut self, pid: u32, wait: Duration) -> Option<ChildExit> {
        if let Some(d) = self.exits.remove(&pid) {
            return Some(d);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.deaths.recv_timeout(left) {
                Ok(d) if d.pid == pid => return Some(d),
                Ok(d) => {
                    self.exits.insert(d.pid, d);
                }
                Err(_) => return None,
            }
        }
    }

    /// The compile step: a fresh worker process that never ran an agent
    /// validates and compiles `wasm`; returns what the module declares,
    /// its compiled form and the engine key it is valid for.
    pub fn compile(
        &mut self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(ModuleFacts, Vec<u8>, String), String> {
        let compiler = format!("compiler-{}", self.spawned);
        let mut p = self
            .spawn(&compiler, false, None)
            .map_err(|f| f.to_string())?;
        let reply = p.request(
            WorkerCommand::Compile {
                name: name.to_owned(),
                wasm: wasm.to_vec(),
            },
            Duration::from_secs(600),
        );
        let out = match reply {
            Ok(WorkerReply::Compiled {
                facts,
                compiled,
                engine,
            }) => Ok((facts, compiled, engine)),
            Ok(WorkerReply::ModuleRefused { error }) => Err(error),
            Ok(other) => Err(format!("the compile step answered {}", describe(&other))),
            Err(e) => {
                let cause = self.cause_of(&p, &e, Duration::from_secs(600));
                Err(format!("the compile step {cause}"))
            }
        };
        let _ = p.child.shutdown(Duration::from_secs(5));
        out
    }

    /// Loads module `id` into every worker (and every worker started later).
    pub fn load_module(
        &mut self,
        id: u32,
        m: ModuleImage,
        pages: &dyn ChunkSource,
    ) -> Result<ModuleFacts, PoolError> {
        self.modules.insert(id, m.clone());
        let mut facts = None;
        for wi in 0..self.workers.len() {
            match self.workers[wi].load(id, &m) {
                Ok(f) => facts = Some(f),
                Err(LoadFailure::Refused(e)) => return Err(PoolError::Module(e)),
                Err(LoadFailure::Channel(e)) => {
                    let cause = self.cause_of_worker(wi, &e, Duration::from_secs(600));
                    // The replacement loads every module, this one included.
                    self.recover_between_ticks(wi, cause, pages)?;
                }
            }
        }
        facts.ok_or_else(|| PoolError::Module(format!("module {} loaded nowhere", m.name)))
    }

    fn cause_of_worker(&mut self, wi: usize, e: &ChannelError, waited: Duration) -> Cause {
        let pid = self.workers[wi].child.pid();
        let cause = Cause::from_channel(e, waited);
        self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
        let oom = self.workers[wi].child.oom_kills();
        self.settle(pid, cause, oom)
    }

    /// From now on recovery restores `base` (a checkpoint just taken or
    /// restored) and re-executes the work logged after it.
    pub fn rebase(&mut self, base: Arc<SnapshotBody>) {
        self.tick = base.tick;
        self.base = Some(base);
        self.log.clear();
        self.failures.clear();
        self.bisected.clear();
        self.exits.clear();
    }

    /// Restores every agent of `base` into the workers hosting them, and
    /// makes it the recovery base.
    pub fn restore(
        &mut self,
        base: Arc<SnapshotBody>,
        pages: &dyn ChunkSource,
    ) -> Result<(), PoolError> {
        self.rebase(base.clone());
        // Every worker gets its orders before any is waited for, so that
        // the workers restore while the next one's chunks are read.
        let sent: Vec<Result<(), RestoreFailure>> = (0..self.workers.len())
            .map(|wi| self.send_restore(wi, &base, pages, None))
            .collect();
        for (wi, sent) in sent.into_iter().enumerate() {
            if let Err(f) = sent.and_then(|()| self.finish_restore(wi)) {
                match f {
                    RestoreFailure::Chunks(e) => return Err(PoolError::Restore(e)),
                    RestoreFailure::Worker(cause) => {
                        self.recover_between_ticks(wi, cause, pages)?
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores into worker `wi` the agents of `body` it hosts (only those
    /// in `subset`, if given).
    fn restore_worker(
        &mut self,
        wi: usize,
        body: &SnapshotBody,
        pages: &dyn ChunkSource,
        subset: Option<&[u64]>,
    ) -> Result<(), RestoreFailure> {
        self.send_restore(wi, body, pages, subset)?;
        self.finish_restore(wi)
    }

    /// Sends worker `wi` the restore orders of the agents of `body` it
    /// hosts (only those in `subset`, if given), their chunks read from
    /// `pages` (which verifies each).
    ///
    /// A reader thread reads and verifies the next agents' chunks while
    /// this thread encodes and sends the current agent's order: reading,
    /// hashing and sending a gigabyte each take about as long, and the
    /// worker restoring the orders waits for them otherwise.
    fn send_restore(
        &mut self,
        wi: usize,
        body: &SnapshotBody,
        pages: &dyn ChunkSource,
        subset: Option<&[u64]>,
    ) -> Result<(), RestoreFailure> {
        let timeout = Duration::from_secs(600);
        for (id, rec) in &body.scheduler.agents {
            self.placement.note(*id, rec.tenant);
        }
        let todo: Vec<(u64, &AgentImage, &crate::sim::AgentRec)> = body
            .agents
            .iter()
            .filter(|(id, _)| {
                self.placement.worker_of(*id) == wi && subset.is_none_or(|s| s.contains(id))
            })
            .filter_map(|(id, img)| Some((*id, img, body.scheduler.agents.get(id)?)))
            .collect();
        let endpoint = self.workers[wi].child.endpoint();
        let sent = std::thread::scope(|s| {
            // Two orders ahead at most; their buffers come back for reuse.
            let (full_tx, full_rx) = mpsc::sync_channel::<Result<Vec<ChunkData>, String>>(2);
            let (empty_tx, empty_rx) = mpsc::channel::<Vec<ChunkData>>();
            let queue = &todo;
            s.spawn(move || {
                for (_, img, _) in queue {
                    let mut chunks = empty_rx.try_recv().unwrap_or_default();
                    let read = read_chunks(img, pages, &mut chunks).map(|()| chunks);
                    let failed = read.is_err();
                    if full_tx.send(read).is_err() || failed {
                        return;
                    }
                }
            });
            for (id, img, rec) in &todo {
                let chunks = match full_rx.recv() {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(Err(RestoreFailure::Chunks(e))),
                    Err(_) => {
                        return Err(Err(RestoreFailure::Chunks(
                            "the chunk reader stopped".to_owned(),
                        )));
                    }
                };
                let order = RestoreOrder {
                    agent_id: *id,
                    module_id: rec.module,
                    tenant: rec.tenant,
                    limits: rec.limits,
                    image: (*img).clone(),
                    chunks,
                };
                let msg = Down::Worker(WorkerCommand::Restore(order));
                let sent = endpoint.send_msg_direct(&msg, Some(Instant::now() + timeout));
                if let Down::Worker(WorkerCommand::Restore(order)) = msg {
                    let _ = empty_tx.send(order.chunks);
                }
                sent.map_err(Ok)?;
            }
            Ok(())
        });
        match sent {
            Ok(()) => Ok(()),
            Err(Ok(e)) => Err(RestoreFailure::Worker(
                self.cause_of_worker(wi, &e, timeout),
            )),
            Err(Err(f)) => Err(f),
        }
    }

    /// Waits for worker `wi` to finish the restores it was sent.
    fn finish_restore(&mut self, wi: usize) -> Result<(), RestoreFailure> {
        let timeout = Duration::from_secs(600);
        match self.workers[wi].request(WorkerCommand::RestoreDone, timeout) {
            Ok(WorkerReply::Restored { errors }) if errors.is_empty() => Ok(()),
            Ok(WorkerReply::Restored { errors }) => {
                let (id, e) = &errors[0];
                Err(RestoreFailure::Chunks(format!(
                    "agent {id}: {e} ({} agents failed)",
                    errors.len()
                )))
            }
            Ok(other) => {
                let name = self.workers[wi].child.name().to_owned();
                self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                Err(RestoreFailure::Worker(Cause::Protocol(format!(
                    "{name} answered RestoreDone with {}",
                    describe(&other)
                ))))
            }
            Err(e) => Err(RestoreFailure::Worker(
                self.cause_of_worker(wi, &e, timeout),
            )),
        }
    }

    /// Runs one tick: partitions the plan, exchanges work and results with
    /// every worker, recovers any worker that fails, and logs the work for
    /// later recoveries.  `known` says whether an agent id exists (a
    /// worker reporting any other is broken).
    pub fn run_tick(
        &mut self,
        plan: &mut TickPlan,
        ctx: &TickCtx,
        pages: &dyn ChunkSource,
        known: &dyn Fn(u64) -> bool,
    ) -> Result<TickOutcome, PoolError> {
        let tick = plan.tick;
        let k = self.workers.len();
        for s in plan.spawns.iter().chain(&plan.restarts) {
            self.placement.note(s.agent_id, s.tenant);
        }
        let mut works = partition(plan, ctx, &self.placement, k);
        let timeout = self.cfg.tick_timeout;
        let mut failed: Vec<Option<Cause>> = vec![None; k];
        // Each worker's work as sent, for the log (`None` once the work
        // changed after sending: it is encoded again).
        let mut sent: Vec<Option<Vec<u8>>> = vec![None; k];
        for (wi, w) in works.iter_mut().enumerate() {
            match self.workers[wi].send_tick(w, timeout) {
                Ok(bytes) => sent[wi] = Some(bytes),
                Err(e) => failed[wi] = Some(self.cause_of_worker(wi, &e, timeout)),
            }
        }
        let mut out = TickOutcome {
            decisions: ctx
                .quarantine
                .iter()
                .map(|&agent| Decision::Quarantine { agent })
                .collect(),
            ..TickOutcome::default()
        };
        let mut ready = self.replies_as_they_come(tick, known, &mut failed);
        let mut digests = Vec::with_capacity(k);
        for wi in 0..k {
            let got = match (ready[wi].take(), failed[wi].take()) {
                (Some(done), _) => Ok(done),
                (None, Some(c)) => Err(c),
                (None, None) => self.recv_tick(wi, tick, known),
            };
            let done = match got {
                Ok(d) => d,
                Err(cause) => {
                    sent[wi] = None;
                    self.recover(
                        wi,
                        tick,
                        &mut works[wi],
                        cause,
                        pages,
                        known,
                        &mut out.decisions,
                    )?
                }
            };
            out.worker_us.push(done.wall_ns / 1000);
            digest_add(&mut out.digest, done.digest);
            digests.push(done.digest);
            for (t, f) in &done.tenant_fuel {
                *out.tenant_fuel.entry(*t).or_default() += f;
            }
            out.calls += done.calls;
            out.results.extend(done.results);
        }
        // Agents quarantined now or by a journaled decision: removed
        // without a call, reported as having crashed their worker.
        for d in &out.decisions {
            if let Decision::Quarantine { agent } = d {
                out.results.push(AgentResult {
                    agent_id: *agent,
                    fuel: 0,
                    calls: 0,
                    outputs: Default::default(),
                    fault: Some(Fault::CrashedWorker),
                    wall_ns: 0,
                    logs_suppressed: 0,
                    memory_bytes: 0,
                });
            }
        }
        out.results.sort_by_key(|r| r.agent_id);
        // Watchdog trips become decisions; the logged work preempts them so
        // that a re-execution reproduces this tick exactly.
        for r in &out.results {
            if r.fault == Some(Fault::Watchdog) {
                out.decisions.push(Decision::Watchdog { agent: r.agent_id });
                let wi = self.placement.worker_of(r.agent_id);
                let w = &mut works[wi];
                if !w.preempt.contains(&r.agent_id) {
                    w.preempt.push(r.agent_id);
                    sent[wi] = None;
                }
            }
        }
        out.decisions.sort_by_key(decision_order);
        out.decisions.dedup();
        let logged = works
            .iter_mut()
            .zip(sent)
            .map(|(w, bytes)| match bytes {
                Some(b) => Ok(ByteBuf::from(b)),
                None => worklog::encode_work(w).map(ByteBuf::from),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PoolError::Restore(format!("cannot log the work of tick {tick}: {e}")))?;
        self.log
            .push(LoggedTick {
                tick,
                works: logged,
                digests,
            })
            .map_err(|e| PoolError::Restore(format!("cannot log the work of tick {tick}: {e}")))?;
        self.tick = tick;
        Ok(out)
    }

    /// Receives the workers' replies to a tick in the order they arrive,
    /// while more than one is awaited and for as long as the supervisor
    /// would poll before parking: a reply is decoded while the other
    /// workers still step, not after the slowest.  Returns the replies
    /// received, by worker; a worker whose reply failed gets its cause in
    /// `failed`.  What is left is received in worker order afterwards (as
    /// is every failure handled), so the order of arrival changes nothing
    /// but when the decoding happens.
    fn replies_as_they_come(
        &mut self,
        tick: u64,
        known: &dyn Fn(u64) -> bool,
        failed: &mut [Option<Cause>],
    ) -> Vec<Option<TickDone>> {
        let k = self.workers.len();
        let mut ready: Vec<Option<TickDone>> = (0..k).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..k).filter(|&wi| failed[wi].is_none()).collect();
        let policy = self.wait;
        let mut spins = 0;
        while pending.len() > 1 && spins < policy.spin {
            let Some(at) = pending
                .iter()
                .position(|&wi| self.workers[wi].child.endpoint().rx.has_data())
            else {
                spins += 1;
                policy.pause();
                continue;
            };
            let wi = pending.remove(at);
            match self.recv_tick(wi, tick, known) {
                Ok(done) => ready[wi] = Some(done),
                Err(c) => failed[wi] = Some(c),
            }
        }
        ready
    }

    /// Receives worker `wi`'s result of `tick` and checks it.
    fn recv_tick(
        &mut self,
        wi: usize,
        tick: u64,
        known: &dyn Fn(u64) -> bool,
    ) -> Result<TickDone, Cause> {
        let timeout = self.cfg.tick_timeout;
        let reply = match self.workers[wi].recv(timeout) {
            Ok(r) => r,
            Err(e) => return Err(self.cause_of_worker(wi, &e, timeout)),
        };
        let violation = match reply {
            WorkerReply::TickDone(done) if done.tick != tick => {
                format!("answered tick {} during tick {tick}", done.tick)
            }
            WorkerReply::TickDone(done) => {
                match done
                    .results
                    .iter()
                    .find(|r| !known(r.agent_id) || self.placement.worker_of(r.agent_id) != wi)
                {
                    Some(r) => format!("reported agent {} which it does not host", r.agent_id),
                    None => match done
                        .results
                        .iter()
                        .find(|r| matches!(r.fault, Some(Fault::Unknown(_))))
                    {
                        // The worker's state is not the supervisor's.
                        Some(r) => format!(
                            "lost track of agent {}: {}",
                            r.agent_id,
                            r.fault
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                        None => return Ok(done),
                    },
                }
            }
            other => format!("answered {} instead of TickDone", describe(&other)),
        };
        self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
        Err(Cause::Protocol(violation))
    }

    /// Images `agents` (ascending) for a checkpoint: each worker images the
    /// agents it hosts; new chunks go to `put`.  A worker that fails is
    /// recovered and asked again.  Agents a worker has no instance of
    /// (their spawn could not be instantiated) have no image.
    pub fn capture(
        &mut self,
        agents: &[u64],
        pages: &dyn ChunkSource,
        put: &mut dyn FnMut(&ChunkData) -> Result<(), String>,
    ) -> Result<Vec<(u64, AgentImage)>, PoolError> {
        let k = self.workers.len();
        let mut by_worker: Vec<Vec<u64>> = vec![Vec::new(); k];
        for &id in agents {
            by_worker[self.placement.worker_of(id)].push(id);
        }
        let mut images = Vec::with_capacity(agents.len());
        // Every worker is asked first, so that they image in parallel (each
        // streams its images, waiting on its ring while another's are read).
        let mut asked: Vec<Option<CaptureFailure>> = (0..k)
            .map(|wi| self.ask_images(wi, &by_worker[wi]).err())
            .collect();
        for (wi, ids) in by_worker.iter().enumerate() {
            let mut attempts = 0;
            let mut failed = asked[wi].take();
            loop {
                let mark = images.len();
                let result = match failed.take() {
                    Some(f) => Err(f),
                    None => self.collect_images(wi, ids, put, &mut images),
                };
                if result.is_err() {
                    images.truncate(mark);
                }
                match result {
                    Ok(()) => break,
                    Err(CaptureFailure::Store(e)) => return Err(PoolError::Restore(e)),
                    Err(CaptureFailure::Worker(cause)) => {
                        attempts += 1;
                        if attempts > MAX_FAILURES_PER_TICK {
                            return Err(PoolError::GiveUp {
                                tick: self.tick,
                                reason: format!(
                                    "worker-{wi} failed {attempts} times while imaging its agents after tick {} (last: {cause})",
                                    self.tick
                                ),
                            });
                        }
                        self.recover_between_ticks(wi, cause, pages)?;
                        failed = self.ask_images(wi, ids).err();
                    }
                }
            }
        }
        images.sort_by_key(|(id, _)| *id);
        Ok(images)
    }

    /// Asks worker `wi` to image `ids` (answered by [`Self::collect_images`]).
    fn ask_images(&mut self, wi: usize, ids: &[u64]) -> Result<(), CaptureFailure> {
        let timeout = Duration::from_secs(600);
        self.workers[wi]
            .send(
                WorkerCommand::Checkpoint {
                    agents: ids.to_vec(),
                    full: false,
                },
                timeout,
            )
            .map_err(|e| CaptureFailure::Worker(self.cause_of_worker(wi, &e, timeout)))
    }

    /// Reads worker `wi`'s images of `ids` into `images` (appended: one
    /// vector for all workers), putting their new chunks (each checked
    /// against its hash) into the page store.
    fn collect_images(
        &mut self,
        wi: usize,
        ids: &[u64],
        put: &mut dyn FnMut(&ChunkData) -> Result<(), String>,
        images: &mut Vec<(u64, AgentImage)>,
    ) -> Result<(), CaptureFailure> {
        let timeout = Duration::from_secs(600);
        let first = images.len();
        loop {
            let reply = match self.workers[wi].recv(timeout) {
                Ok(r) => r,
                Err(e) => {
                    return Err(CaptureFailure::Worker(
                        self.cause_of_worker(wi, &e, timeout),
                    ));
                }
            };
            match reply {
                WorkerReply::Imaged {
                    agent_id,
                    image,
                    chunks,
                } if ids.binary_search(&agent_id).is_ok() => {
                    for c in &chunks {
                        if c.bytes.len() != shm_protocol::worker::CHUNK
                            || *blake3::hash(&c.bytes).as_bytes() != c.hash
                        {
                            self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                            return Err(CaptureFailure::Worker(Cause::Protocol(format!(
                                "sent a chunk of agent {agent_id} that does not match its hash"
                            ))));
                        }
                        put(c).map_err(CaptureFailure::Store)?;
                    }
                    images.push((agent_id, image));
                }
                WorkerReply::Checkpointed { missing } => {
                    let imaged = images.len() - first;
                    if imaged + missing.len() != ids.len() {
                        self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                        return Err(CaptureFailure::Worker(Cause::Protocol(format!(
                            "imaged {imaged} and missed {} of {} agents",
                            missing.len(),
                            ids.len()
                        ))));
                    }
                    return Ok(());
                }
                other => {
                    self.workers[wi].child.kill_and_wait(Duration::from_secs(5));
                    return Err(CaptureFailure::Worker(Cause::Protocol(format!(
                        "answered {} while imaging",
                        describe(&other)
                    ))));
                }
            }
        }
    }

    /// Shuts every worker down (each is killed if it does not exit).
    pub fn shutdown(&mut self) {
        for w in std::mem::take(&mut self.workers) {
            let _ = w.child.shutdown(Duration::from_secs(5));
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum RestoreFailure {
    Chunks(String),
    Worker(Cause),
}

enum CaptureFailure {
    Store(String),
    Worker(Cause),
}

enum LoadFailure {
    Refused(String),
    Channel(ChannelError),
}

impl Proc {
    fn send(&mut self, cmd: WorkerCommand, timeout: Duration) -> Result<(), ChannelError> {
        self.child
            .endpoint()
            .send_msg(&Down::Worker(cmd), Some(Instant::now() + timeout))
    }

    /// Sends a tick's work; returns the message as sent (for the work log).
    fn send_tick(
        &mut self,
        work: &mut TickWork,
        timeout: Duration,
    ) -> Result<Vec<u8>, ChannelError> {
        let bytes = worklog::encode_work(work)?;
        self.child
            .endpoint()
            .send_encoded(&bytes, Some(Instant::now() + timeout))?;
        Ok(bytes)
    }

    fn recv(&mut self, timeout: Duration) -> Result<WorkerReply, ChannelError> {
        match self
            .child
            .endpoint()
            .recv_msg::<Up>(Some(Instant::now() + timeout))?
        {
            Up::Worker(r) => Ok(r),
            // A message of another role is a violation, reported as such.
            _ => Err(ChannelError::UnexpectedKind(
                shm_protocol::codec::KIND_MESSAGE,
            )),
        }
    }

    fn request(
        &mut self,
        cmd: WorkerCommand,
        timeout: Duration,
    ) -> Result<WorkerReply, ChannelError> {
        self.send(cmd, timeout)?;
        self.recv(timeout)
    }

    fn load(&mut self, id: u32, m: &ModuleImage) -> Result<ModuleFacts, LoadFailure> {
        let cmd = WorkerCommand::LoadModule {
            module_id: id,
            name: m.name.clone(),
            wasm: m.wasm.to_vec(),
            compiled: m
                .compiled
                .as_ref()
                .map(|c| serde_bytes::ByteBuf::from(c.to_vec())),
            memory_limit: m.memory_limit,
        };
        match self.request(cmd, Duration::from_secs(600)) {
            Ok(WorkerReply::ModuleLoaded { facts, .. }) => Ok(facts),
            Ok(WorkerReply::ModuleRefused { error }) => Err(LoadFailure::Refused(error)),
            Ok(_) => Err(LoadFailure::Channel(ChannelError::UnexpectedKind(
                shm_protocol::codec::KIND_MESSAGE,
            ))),
            Err(e) => Err(LoadFailure::Channel(e)),
        }
    }
}

/// The worker hosting `agent` among `k`.
pub fn worker_of(agent: u64, k: usize) -> usize {
    ((agent.saturating_sub(1)) % k.max(1) as u64) as usize
}

/// Canonical order of a tick's decisions.
fn decision_order(d: &Decision) -> (u8, u64) {
    match d {
        Decision::Quarantine { agent } => (0, *agent),
        Decision::Watchdog { agent } => (1, *agent),
        Decision::GiveUp { .. } => (2, 0),
    }
}

/// Splits a tick's plan by worker (deliveries are moved, not copied);
/// quarantined agents are left out and evicted, preempted ones marked.
fn partition(plan: &mut TickPlan, ctx: &TickCtx, at: &Placement, k: usize) -> Vec<TickWork> {
    let worker_of = |a: u64, _k: usize| at.worker_of(a);
    let mut works: Vec<TickWork> = (0..k)
        .map(|_| TickWork {
            tick: plan.tick,
            step_all: plan.step_all,
            sample: ctx.sample,
            watchdog: ctx.watchdog,
            ..TickWork::default()
        })
        .collect();
    let out = |a: u64| !ctx.quarantine.is_empty() && ctx.quarantine.contains(&a);
    for &a in &ctx.quarantine {
        works[worker_of(a, k)].evict.push(a);
    }
    for &a in &ctx.preempt {
        works[worker_of(a, k)].preempt.push(a);
    }
    for s in plan.spawns.iter().filter(|s| !out(s.agent_id)) {
        works[worker_of(s.agent_id, k)].spawns.push(s.clone());
    }
    for r in plan.restarts.iter().filter(|s| !out(s.agent_id)) {
        works[worker_of(r.agent_id, k)].restarts.push(r.clone());
    }
    for u in plan.upgrades.iter().filter(|u| !out(u.agent_id)) {
        works[worker_of(u.agent_id, k)].upgrades.push(u.clone());
    }
    for d in std::mem::take(&mut plan.deliveries) {
        if !out(d.agent_id) {
            works[worker_of(d.agent_id, k)].deliveries.push(d);
        }
    }
    for s in plan.steps.iter().filter(|s| !out(s.agent_id)) {
        works[worker_of(s.agent_id, k)].steps.push(s.clone());
    }
    for &s in plan.stops.iter().filter(|&&s| !out(s)) {
        works[worker_of(s, k)].stops.push(s);
    }
    works
}

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
        restarts: w
            .restarts
            .iter()
            .filter(|s| keep(s.agent_id))
            .cloned()
            .collect(),
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
        sample: w.sample,
        evict: w.evict.clone(),
        preempt: w.preempt.iter().copied().filter(|a| keep(*a)).collect(),
        watchdog: w.watchdog,
    }
}

/// The supervisor's side of the workers' rings.  With a core to spare
/// beyond the workers and itself it spins briefly, then parks.  Without one
/// (e.g. 2 workers on 2 vCPUs) it polls by yielding the CPU: a parked
/// supervisor costs a futex wake-up per tick, and a spinning one would take
/// the CPU a worker needs; a yielding one runs only when a core is free.
/// The workers poll the same way in that case (`--wait-yield`): a worker
/// spinning after its reply held the CPU the woken supervisor needed for up
/// to a scheduler slice (docs/benchmarks.md).
fn supervisor_policy(spare: bool) -> WaitPolicy {
    WaitPolicy {
        spin: if spare { 2_000 } else { 20_000 },
        park_slice: Duration::from_millis(10),
        yielding: !spare,
    }
}

/// The CPU of each of `workers` worker slots (`allowed`: the CPUs the
/// supervisor may use, ascending), or none.  Without a core to spare the
/// workers and the supervisor share every CPU: then each worker gets a CPU
/// of its own — the last ones allowed — and the supervisor, which works
/// while the workers wait, runs wherever one is free.  A worker that stays
/// on one CPU keeps its caches, and two never queue on one CPU while the
/// other idles.  With a core to spare, or more workers than CPUs, nothing
/// is pinned: the scheduler has the room, and runs sharing a larger
/// machine do not pile onto the same CPUs.
pub fn worker_cpus(workers: usize, allowed: &[usize], spare: bool) -> Vec<usize> {
    if spare || workers == 0 || workers > allowed.len() {
        return Vec::new();
    }
    allowed[allowed.len() - workers..].to_vec()
}

/// Whether the machine has a core for the supervisor and every worker plus
/// one to spare.
fn spare_core(workers: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores >= workers + 2
}

/// A short description of a reply (never its whole payload).
fn describe(r: &WorkerReply) -> &'static str {
    match r {
        WorkerReply::Configured { .. } => "Configured",
        WorkerReply::Compiled { .. } => "Compiled",
        WorkerReply::ModuleLoaded { .. } => "ModuleLoaded",
        WorkerReply::ModuleRefused { .. } => "ModuleRefused",
        WorkerReply::TickDone(_) => "TickDone",
        WorkerReply::Captured(_) => "Captured",
        WorkerReply::Hashes(_) => "Hashes",
        WorkerReply::Imaged { .. } => "Imaged",
        WorkerReply::Checkpointed { .. } => "Checkpointed",
        WorkerReply::Restored { .. } => "Restored",
        WorkerReply::StateRestored { .. } => "StateRestored",
        WorkerReply::Error(_) => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::worker_cpus;

    #[test]
    fn workers_are_pinned_only_when_they_and_the_supervisor_fill_the_machine() {
        // 2 workers on 2 CPUs: one each.
        assert_eq!(worker_cpus(2, &[0, 1], false), vec![0, 1]);
        // The last CPUs allowed (a cpuset of 2, 5, 7).
        assert_eq!(worker_cpus(2, &[2, 5, 7], false), vec![5, 7]);
        assert_eq!(worker_cpus(1, &[0], false), vec![0]);
        // A core to spare, more workers than CPUs, nothing known: none.
        assert!(worker_cpus(2, &[0, 1, 2, 3], true).is_empty());
        assert!(worker_cpus(3, &[0, 1], false).is_empty());
        assert!(worker_cpus(2, &[], false).is_empty());
        assert!(worker_cpus(0, &[0, 1], false).is_empty());
    }
}
