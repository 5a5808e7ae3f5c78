//! The agents of one worker process, and the execution of the supervisor's
//! commands (one [`TickWork`] per tick).

use crate::agent::{Agent, CallOutcome, Runtime, hex, state_hash};
use crate::engine::{self, AgentModule, EpochTicker};
use crate::error::LoadError;
use shm_protocol::worker::{
    AgentLimits, AgentResult, Fault, ModuleFacts, Sample, SpawnOrder, TickDone, TickWork,
    WorkerCommand, WorkerReply, digest_add, digest_term,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one agent did in the current tick (reset every tick).
#[derive(Debug, Default)]
struct Acc {
    called: bool,
    report: bool,
    fuel: u64,
    calls: u32,
    fault: Option<Fault>,
    wall_ns: u64,
    mailbox: u32,
    /// A call left outputs or suppressed logs in the host data.
    host_pending: bool,
    /// The watchdog stopped one of its calls this tick, or a journaled trip
    /// preempts it: no further calls, and its tick is normalised.
    tripped: bool,
    /// Not reset with the rest: the agent's last digest term.
    memo: DigestMemo,
}

impl Acc {
    /// This tick's accumulator, leaving a fresh one (with the memo).
    fn take(&mut self) -> Acc {
        let memo = self.memo;
        std::mem::replace(
            self,
            Acc {
                memo,
                ..Acc::default()
            },
        )
    }
}

/// The last [`digest_term`] computed for an agent.  The term is a pure
/// function of (agent id, fuel, calls), and most agents repeat the same fuel
/// and call count tick after tick, so its BLAKE3 (50–100 ns, the largest
/// per-agent cost of a tick's bookkeeping) is recomputed only when one of
/// them changes.
#[derive(Debug, Default, Clone, Copy)]
struct DigestMemo(Option<(u64, u64, u32, [u64; 4])>);

impl DigestMemo {
    fn term(&mut self, id: u64, fuel: u64, calls: u32) -> [u64; 4] {
        match self.0 {
            Some((i, f, c, t)) if (i, f, c) == (id, fuel, calls) => t,
            _ => {
                let t = digest_term(id, fuel, calls);
                self.0 = Some((id, fuel, calls, t));
                t
            }
        }
    }
}

/// A tick's results as they are gathered, slot by slot in agent order.
struct Collect {
    done: TickDone,
    tenant_fuel: BTreeMap<u32, u64>,
    /// The tenant of the slots just collected and their fuel so far.
    tenant_run: Option<(u32, u64)>,
}

impl Collect {
    fn new(tick: u64) -> Self {
        Self {
            done: TickDone {
                tick,
                ..TickDone::default()
            },
            tenant_fuel: BTreeMap::new(),
            tenant_run: None,
        }
    }

    /// Collects a slot's accumulator (not a tripped one's) and resets it.
    fn slot(&mut self, slot: &mut Slot, sample: Sample) {
        let acc = slot.acc.take();
        if !acc.called && !acc.report {
            return;
        }
        let done = &mut self.done;
        done.agents_called += 1;
        done.calls += u64::from(acc.calls);
        // Consecutive slots mostly share a tenant: sum runs, then add.
        match &mut self.tenant_run {
            Some((t, f)) if *t == slot.tenant => *f += acc.fuel,
            run => {
                if let Some((t, f)) = run.replace((slot.tenant, acc.fuel)) {
                    *self.tenant_fuel.entry(t).or_default() += f;
                }
            }
        }
        let term = slot.acc.memo.term(slot.id, acc.fuel, acc.calls);
        digest_add(&mut done.digest, term);
        // Every call goes through `run`, which sets `host_pending` when,
        // after a call, the agent had outputs or suppressed logs; without
        // it neither can have changed since, so the host data (a cache
        // miss with thousands of agents) need not be read.
        let timed = sample.covers(slot.id);
        if !(acc.report || acc.host_pending || timed) {
            return;
        }
        let host = slot.agent.host();
        let suppressed = host.logs_suppressed();
        let has_outputs = !host.outputs.is_empty();
        if acc.report || has_outputs || timed || suppressed > 0 {
            let outputs = std::mem::take(&mut host.outputs);
            done.results.push(AgentResult {
                agent_id: slot.id,
                fuel: acc.fuel,
                calls: acc.calls,
                outputs,
                fault: acc.fault,
                wall_ns: acc.wall_ns,
                logs_suppressed: suppressed,
                memory_bytes: if timed {
                    slot.agent.memory_size() as u64
                } else {
                    0
                },
            });
        }
    }

    /// Adds a result that did not come from a slot's accumulator (a failed
    /// spawn, a stop, a tripped agent).
    fn other(&mut self, r: AgentResult) {
        let done = &mut self.done;
        done.agents_called += 1;
        done.calls += u64::from(r.calls);
        digest_add(&mut done.digest, digest_term(r.agent_id, r.fuel, r.calls));
        done.results.push(r);
    }

    fn finish(mut self) -> TickDone {
        if let Some((t, f)) = self.tenant_run {
            *self.tenant_fuel.entry(t).or_default() += f;
        }
        self.done.tenant_fuel = self.tenant_fuel.into_iter().collect();
        self.done
    }
}

#[derive(Debug)]
struct Slot {
    id: u64,
    tenant: u32,
    module_id: u32,
    limits: AgentLimits,
    agent: Agent,
    acc: Acc,
}

/// The worker prefetches what the agents' calls touch first in batches of
/// this many, one batch ahead of the agents stepping: with thousands of
/// agents each of those lines is also a TLB miss, and the page walks of
/// prefetches issued back to back overlap, where one prefetch per agent
/// waits for its own walk.
const PREFETCH_BATCH: usize = 8;

/// What to prefetch on reaching slot `i` of a pass in order: at the start
/// of each batch, the next batch.
fn batch_ahead(slots: &[Slot], i: usize) -> &[Slot] {
    if !i.is_multiple_of(PREFETCH_BATCH) {
        return &[];
    }
    let next = (i + PREFETCH_BATCH).min(slots.len());
    let end = (i + 2 * PREFETCH_BATCH).min(slots.len());
    &slots[next..end]
}

/// A worker's agents and modules.
#[derive(Debug)]
pub struct Worker {
    rt: Runtime,
    /// The epoch thread (`None` until [`Worker::start_epoch_ticker`]).
    ticker: Option<EpochTicker>,
    modules: BTreeMap<u32, Arc<AgentModule>>,
    /// Sorted by agent id.
    slots: Vec<Slot>,
    /// Results of agents that no longer have a slot (failed spawns, stops).
    gone: Vec<(u32, AgentResult)>,
    /// Wall time of the current tick's parts so far.
    tick_wall_ns: u64,
    /// Test-only fault injection (`LOCKSTEP_INJECT`).
    #[cfg(feature = "fault-injection")]
    inject: Option<crate::inject::Inject>,
    /// What the heartbeat sees of this worker's main thread.
    activity: Arc<lockstep_common::Activity>,
}

impl Worker {
    /// A worker with default settings (seed 0, 1 s watchdog) until
    /// [`WorkerCommand::Configure`].
    pub fn new() -> Result<Self, LoadError> {
        let mut w = Self::without_ticker()?;
        w.start_epoch_ticker(|| {});
        Ok(w)
    }

    /// Like [`Worker::new`] but without the epoch thread, so that the
    /// process stays single-threaded until the sandbox's Landlock layer is
    /// in force (`lockstep-worker`); the watchdog fires only once
    /// [`Worker::start_epoch_ticker`] has been called.
    pub fn without_ticker() -> Result<Self, LoadError> {
        let engine = engine::deterministic_engine()?;
        let rt = Runtime::new(engine, 0, Duration::from_secs(1))
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Self {
            rt,
            ticker: None,
            modules: BTreeMap::new(),
            slots: Vec::new(),
            gone: Vec::new(),
            tick_wall_ns: 0,
            #[cfg(feature = "fault-injection")]
            inject: crate::inject::Inject::from_env(),
            activity: Arc::default(),
        })
    }

    /// Starts the epoch thread (the watchdog clock, which also calls
    /// `beat`: the worker's heartbeat) if it is not running.
    pub fn start_epoch_ticker(&mut self, beat: impl FnMut() + Send + 'static) {
        if self.ticker.is_none() {
            self.ticker = Some(engine::start_epoch_ticker(&self.rt.engine, beat));
        }
    }

    /// What the heartbeat sees of the main thread: busy while it runs agents
    /// or compiles, loads or images modules (work bounded by the watchdog,
    /// fuel or size), making progress between commands.
    pub fn activity(&self) -> Arc<lockstep_common::Activity> {
        self.activity.clone()
    }

    /// Ids of the agents hosted, ascending.
    pub fn agent_ids(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.id).collect()
    }

    /// Number of agents hosted.
    pub fn agent_count(&self) -> usize {
        self.slots.len()
    }

    /// Direct access to an agent (tests, benchmarks).
    pub fn agent_mut(&mut self, id: u64) -> Option<&mut Agent> {
        let i = self.find(id).ok()?;
        Some(&mut self.slots[i].agent)
    }

    fn find(&self, id: u64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&id, |s| s.id)
    }

    /// Executes one command.
    pub fn handle(&mut self, cmd: WorkerCommand) -> WorkerReply {
        let activity = self.activity.clone();
        let _busy = activity.busy();
        match cmd {
            WorkerCommand::Configure { seed, watchdog_ms } => {
                self.rt.seed = seed;
                self.rt
                    .set_watchdog_period(Duration::from_millis(u64::from(watchdog_ms.max(1))));
                WorkerReply::Configured {
                    engine: engine::engine_key(&self.rt.engine),
                }
            }
            WorkerCommand::Compile { name, wasm } => match self.compile(&name, &wasm) {
                Ok((facts, compiled)) => WorkerReply::Compiled {
                    facts,
                    compiled,
                    engine: engine::engine_key(&self.rt.engine),
                },
                Err(e) => WorkerReply::ModuleRefused {
                    error: e.to_string(),
                },
            },
            WorkerCommand::LoadModule {
                module_id,
                name,
                wasm,
                compiled,
                memory_limit,
            } => match self.load_module(
                module_id,
                &name,
                &wasm,
                compiled.as_deref().map(|c| &c[..]),
                memory_limit,
            ) {
                Ok(facts) => WorkerReply::ModuleLoaded { module_id, facts },
                Err(e) => WorkerReply::ModuleRefused {
                    error: e.to_string(),
                },
            },
            WorkerCommand::Tick(work) => WorkerReply::TickDone(self.tick(&work)),
            WorkerCommand::Capture { agents } => {
                let mut out = Vec::with_capacity(agents.len());
                for id in agents {
                    match self.find(id) {
                        Ok(i) => out.push((id, self.slots[i].agent.capture())),
                        Err(_) => {
                            return WorkerReply::Error(format!(
                                "capture: no agent {id} in this worker"
                            ));
                        }
                    }
                }
                WorkerReply::Captured(out)
            }
            WorkerCommand::HashState { agents } => {
                let mut out = Vec::with_capacity(agents.len());
                for id in agents {
                    match self.find(id) {
                        Ok(i) => out.push((id, self.slots[i].agent.state_hash())),
                        Err(_) => {
                            return WorkerReply::Error(format!(
                                "hash: no agent {id} in this worker"
                            ));
                        }
                    }
                }
                WorkerReply::Hashes(out)
            }
            WorkerCommand::Checkpoint { .. }
            | WorkerCommand::Restore(_)
            | WorkerCommand::RestoreDone => {
                WorkerReply::Error("checkpoint commands are handled by the worker's Imager".into())
            }
            WorkerCommand::RestoreState {
                agent_id,
                module_id,
                tenant,
                limits,
                state,
            } => WorkerReply::StateRestored {
                error: self
                    .restore(agent_id, module_id, tenant, limits, &state)
                    .err(),
            },
        }
    }

    /// Loads a module from its bytes (and its compiled form, when the
    /// supervisor has one), checking its ABI; returns what it declares.
    pub fn load_module(
        &mut self,
        module_id: u32,
        name: &str,
        wasm: &[u8],
        compiled: Option<&[u8]>,
        memory_limit: u64,
    ) -> Result<ModuleFacts, LoadError> {
        let mut module = engine::load_module(&self.rt.engine, name, wasm, compiled, memory_limit)?;
        module.abi_version = Agent::check_abi(&self.rt, &module, memory_limit)?;
        let facts = module.facts();
        self.modules.insert(module_id, Arc::new(module));
        Ok(facts)
    }

    /// The compile step: validates and compiles a module and checks its
    /// ABI; returns what it declares and its compiled form.
    pub fn compile(
        &mut self,
        name: &str,
        wasm: &[u8],
    ) -> Result<(ModuleFacts, Vec<u8>), LoadError> {
        let (mut module, compiled) = engine::compile(&self.rt.engine, name, wasm)?;
        module.abi_version = Agent::check_abi(&self.rt, &module, module.min_memory.max(1 << 16))?;
        Ok((module.facts(), compiled))
    }

    /// Adds an already-loaded module (tests, benchmarks).
    pub fn insert_module(&mut self, module_id: u32, module: AgentModule) {
        self.modules.insert(module_id, Arc::new(module));
    }

    /// The runtime (engine, seed).
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Re-creates (or replaces) agent `id` from a captured state.
    pub fn restore(
        &mut self,
        id: u64,
        module_id: u32,
        tenant: u32,
        limits: AgentLimits,
        state: &shm_protocol::worker::AgentState,
    ) -> Result<(), String> {
        let parts = crate::agent::ImageParts::of(state);
        self.restore_with(id, module_id, tenant, limits, parts, |m| {
            m.copy_from_slice(&state.memory);
            Ok(())
        })
    }

    /// [`Worker::restore`] from an image's parts, its memory written in
    /// place by `fill` (see [`Agent::restore_with`]).
    pub fn restore_with(
        &mut self,
        id: u64,
        module_id: u32,
        tenant: u32,
        limits: AgentLimits,
        parts: crate::agent::ImageParts<'_>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let module = self
            .modules
            .get(&module_id)
            .cloned()
            .ok_or_else(|| format!("no module {module_id}"))?;
        let agent = Agent::restore_with(&self.rt, module, id, limits, parts, fill)
            .map_err(|f| f.to_string())?;
        let slot = Slot {
            id,
            tenant,
            module_id,
            limits,
            agent,
            acc: Acc::default(),
        };
        match self.find(id) {
            Ok(i) => self.slots[i] = slot,
            Err(i) => self.slots.insert(i, slot),
        }
        Ok(())
    }

    fn record(slot: &mut Slot, out: CallOutcome, started: Option<Instant>) {
        let acc = &mut slot.acc;
        acc.called = true;
        acc.fuel += out.fuel;
        acc.calls += 1;
        if let Some(t) = started {
            acc.wall_ns += t.elapsed().as_nanos() as u64;
        }
        if out.fault == Some(Fault::Watchdog) {
            acc.tripped = true;
        }
        if out.fault.is_some() {
            acc.fault = out.fault;
            acc.report = true;
        }
    }

    /// Runs `f` on the slot as one call; discards the outputs of a call that
    /// faults (a call's effects apply only if it completes).  An agent the
    /// watchdog stopped (or a journaled trip preempts) is not called again.
    fn run(slot: &mut Slot, timed: bool, f: impl FnOnce(&mut Agent) -> CallOutcome) {
        if slot.acc.tripped {
            return;
        }
        let before = slot.agent.host().outputs.mark();
        let t = timed.then(Instant::now);
        let out = f(&mut slot.agent);
        if out.fault.is_some() {
            slot.agent.host().outputs.truncate(before);
        }
        Self::record(slot, out, t);
        // Remember whether `collect` must look at the host data (outputs or
        // suppressed logs), while its cache lines are still hot.
        let host = slot.agent.host();
        slot.acc.host_pending |= !host.outputs.is_empty() || host.logs_suppressed() > 0;
    }

    fn fresh(&self, id: u64, module_id: u32, limits: AgentLimits) -> Result<Agent, Fault> {
        let module = self
            .modules
            .get(&module_id)
            .cloned()
            .ok_or_else(|| Fault::Unknown(format!("module {module_id} is not loaded")))?;
        Agent::instantiate(&self.rt, module, id, limits)
    }

    /// Applies test-only fault injection at the start of `tick`.
    #[cfg(feature = "fault-injection")]
    fn inject(&mut self, tick: u64) {
        let Some(inj) = self.inject.clone() else {
            return;
        };
        for (agent, at) in inj.flip {
            if at == tick
                && let Ok(i) = self.find(agent)
            {
                self.slots[i].agent.flip_byte(0x100);
            }
        }
        let hosted = |w: &Self, agent: u64| agent == 0 || w.find(agent).is_ok();
        for (agent, at) in inj.crash {
            if at == tick && self.find(agent).is_ok() {
                tracing::error!(agent, tick, "injected crash");
                std::process::abort();
            }
        }
        for (agent, at, attempt) in inj.escape {
            if at == tick && hosted(self, agent) {
                lockstep_sandbox::escape::attempt(attempt);
            }
        }
        for (agent, at) in inj.kill {
            if at == tick && hosted(self, agent) {
                crate::inject::signal_self(libc::SIGKILL);
            }
        }
        for (agent, at) in inj.stop {
            if at == tick && hosted(self, agent) {
                crate::inject::signal_self(libc::SIGSTOP);
            }
        }
        for (agent, at) in inj.oom {
            if at == tick && hosted(self, agent) {
                crate::inject::exhaust_memory();
            }
        }
    }

    /// The ring attack fault injection asks for at the end of `tick`, if
    /// any (see [`crate::inject`]).
    #[cfg(feature = "fault-injection")]
    pub fn corruption_at(&self, tick: u64) -> Option<shm_protocol::rogue::Attack> {
        let inj = self.inject.as_ref()?;
        inj.corrupt
            .iter()
            .find(|(a, t, _)| *t == tick && (*a == 0 || self.find(*a).is_ok()))
            .and_then(|(_, _, how)| shm_protocol::rogue::Attack::parse(how))
    }

    /// Removes agents without calling them (quarantine after they crashed
    /// their worker).
    pub fn evict(&mut self, agents: &[u64]) {
        self.slots.retain(|s| !agents.contains(&s.id));
    }

    /// Creates (or replaces) agent `sp.agent_id` and calls `agent_init`
    /// unless it is preempted; a failed instantiation is reported as the
    /// agent's fault and leaves no instance.
    fn start_agent(&mut self, sp: &SpawnOrder, tick: u64, timed: bool, preempted: bool) {
        match self.fresh(sp.agent_id, sp.module_id, sp.limits) {
            Ok(agent) => {
                let mut slot = Slot {
                    id: sp.agent_id,
                    tenant: sp.tenant,
                    module_id: sp.module_id,
                    limits: sp.limits,
                    agent,
                    acc: Acc {
                        report: true,
                        tripped: preempted,
                        ..Acc::default()
                    },
                };
                Self::run(&mut slot, timed, |a| a.init(tick));
                match self.find(sp.agent_id) {
                    Ok(i) => {
                        slot.acc.memo = self.slots[i].acc.memo;
                        self.slots[i] = slot;
                    }
                    Err(i) => self.slots.insert(i, slot),
                }
            }
            Err(f) => {
                if let Ok(i) = self.find(sp.agent_id) {
                    self.slots.remove(i);
                }
                if preempted {
                    self.gone.push((sp.tenant, watchdog_result(sp.agent_id)));
                } else {
                    self.gone_fault(sp.tenant, sp.agent_id, f);
                }
            }
        }
    }

    /// Executes one tick of work (see [`TickWork`] for the order).
    pub fn tick(&mut self, work: &TickWork) -> TickDone {
        let activity = self.activity.clone();
        let _busy = activity.busy();
        let t0 = Instant::now();
        let tick = work.tick;
        self.rt.set_watchdog(work.watchdog);
        if !work.evict.is_empty() {
            self.evict(&work.evict);
        }
        #[cfg(feature = "fault-injection")]
        if self.inject.is_some() {
            self.inject(tick);
        }
        let preempted = |id: u64| !work.preempt.is_empty() && work.preempt.contains(&id);
        for &id in &work.preempt {
            if let Ok(i) = self.find(id) {
                self.slots[i].acc.tripped = true;
                self.slots[i].acc.report = true;
            }
        }
        let sample = work.sample;
        for sp in &work.spawns {
            if self.find(sp.agent_id).is_ok() {
                self.gone_fault(
                    sp.tenant,
                    sp.agent_id,
                    Fault::Unknown(format!("agent {} already exists", sp.agent_id)),
                );
                continue;
            }
            self.start_agent(sp, tick, sample.covers(sp.agent_id), preempted(sp.agent_id));
        }
        for sp in &work.restarts {
            // A restart is a fresh instance; an agent whose spawn could not
            // be instantiated gets its instance now.
            self.start_agent(sp, tick, sample.covers(sp.agent_id), preempted(sp.agent_id));
        }
        for up in &work.upgrades {
            let Ok(i) = self.find(up.agent_id) else {
                // No instance (its spawn could not be instantiated): there is
                // no state to move; a restart instantiates the new module.
                continue;
            };
            let Some(module) = self.modules.get(&up.module_id).cloned() else {
                self.gone_fault(
                    0,
                    up.agent_id,
                    Fault::Unknown(format!("upgrade: module {} is not loaded", up.module_id)),
                );
                continue;
            };
            // Swap the instance out, upgrade it, put the result back.
            let placeholder = match self.fresh(up.agent_id, up.module_id, self.slots[i].limits) {
                Ok(a) => a,
                Err(f) => {
                    let slot = &mut self.slots[i];
                    slot.acc.called = true;
                    slot.acc.report = true;
                    slot.acc.fault = Some(f);
                    continue;
                }
            };
            let old = std::mem::replace(&mut self.slots[i].agent, placeholder);
            let slot = &mut self.slots[i];
            slot.acc.report = true;
            match old.upgrade(&self.rt, module, tick, slot.acc.tripped) {
                Ok((agent, migrated)) => {
                    slot.agent = agent;
                    slot.module_id = up.module_id;
                    if let Some(out) = migrated {
                        Self::record(slot, out, None);
                    }
                }
                Err(f) => {
                    // The agent now belongs to the new module: a restart
                    // starts a fresh instance of it.
                    slot.module_id = up.module_id;
                    slot.acc.called = true;
                    slot.acc.fault = Some(f);
                }
            }
        }
        for d in &work.deliveries {
            let Ok(i) = self.find(d.agent_id) else {
                self.gone_fault(
                    0,
                    d.agent_id,
                    Fault::Unknown(format!("delivery: no agent {}", d.agent_id)),
                );
                continue;
            };
            let slot = &mut self.slots[i];
            let timed = sample.covers(slot.id);
            for m in d.messages.iter() {
                if !slot.agent.is_live() || slot.acc.tripped {
                    break;
                }
                slot.acc.mailbox += 1;
                Self::run(slot, timed, |a| a.receive(tick, m));
            }
        }
        // When the step of every agent is its last call this tick (no
        // task steps or stops follow, no result without a slot waits), each
        // agent's result is collected right after its step, while its slot
        // is in the cache, instead of in a second pass over every slot.
        let mut inline: Option<(Collect, bool)> = None;
        if work.step_all {
            let fold = work.steps.is_empty() && work.stops.is_empty() && self.gone.is_empty();
            let mut collect = fold.then(|| Collect::new(tick));
            // Whether a slot was left for the second pass (a tripped one).
            let mut left = false;
            for i in 0..self.slots.len() {
                for ahead in batch_ahead(&self.slots, i) {
                    ahead.agent.prefetch();
                }
                let slot = &mut self.slots[i];
                if slot.agent.is_live() {
                    let mailbox = slot.acc.mailbox;
                    Self::run(slot, sample.covers(slot.id), |a| {
                        a.step(tick, None, mailbox)
                    });
                }
                if let Some(c) = &mut collect {
                    if slot.acc.tripped {
                        left = true;
                    } else {
                        c.slot(slot, sample);
                    }
                }
            }
            inline = collect.map(|c| (c, left));
        }
        for s in &work.steps {
            let Ok(i) = self.find(s.agent_id) else {
                self.gone_fault(
                    0,
                    s.agent_id,
                    Fault::Unknown(format!("step: no agent {}", s.agent_id)),
                );
                continue;
            };
            let slot = &mut self.slots[i];
            if slot.agent.is_live() {
                let mailbox = slot.acc.mailbox;
                Self::run(slot, sample.covers(slot.id), |a| {
                    a.step(tick, s.task.as_ref(), mailbox)
                });
            }
        }
        let mut stopped = Vec::new();
        for &id in &work.stops {
            let Ok(i) = self.find(id) else {
                // Nothing to shut down (never instantiated, or preempted
                // and gone): the stop is done.
                continue;
            };
            let slot = &mut self.slots[i];
            slot.acc.report = true;
            if slot.agent.is_live() {
                Self::run(slot, sample.covers(slot.id), |a| a.shutdown(tick));
            }
            stopped.push(id);
        }
        self.tick_wall_ns += t0.elapsed().as_nanos() as u64;
        let mut done = match inline {
            Some((c, false)) => c.finish(),
            Some((c, true)) => {
                let mut done = self.collect(c, sample);
                // Slots collected inline came first.
                done.results.sort_by_key(|r| r.agent_id);
                done
            }
            None => self.collect(Collect::new(tick), sample),
        };
        for id in stopped {
            if let Ok(i) = self.find(id) {
                self.slots.remove(i);
            }
        }
        done.wall_ns = std::mem::take(&mut self.tick_wall_ns);
        done
    }

    fn gone_fault(&mut self, tenant: u32, id: u64, fault: Fault) {
        self.gone.push((
            tenant,
            AgentResult {
                agent_id: id,
                fuel: 0,
                calls: 0,
                outputs: Default::default(),
                fault: Some(fault),
                wall_ns: 0,
                logs_suppressed: 0,
                memory_bytes: 0,
            },
        ));
    }

    /// Normalises the tick of an agent the watchdog stopped (or a journaled
    /// trip preempted): a fresh, uninitialised instance replaces whatever
    /// state the interrupted call left, so that what it did before the trip
    /// — which depends on when the watchdog fired — leaves no trace.
    fn reset_tripped(&mut self, i: usize) -> Result<(), Fault> {
        let slot = &self.slots[i];
        let agent = self.fresh(slot.id, slot.module_id, slot.limits)?;
        self.slots[i].agent = agent;
        Ok(())
    }

    /// Gathers this tick's results (into `c`, which may hold slots already
    /// collected) and resets the accumulators.
    fn collect(&mut self, mut c: Collect, sample: Sample) -> TickDone {
        // Tripped agents first get their fresh instance (or lose theirs).
        let tripped: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].acc.tripped)
            .collect();
        let mut lost = Vec::new();
        for &i in tripped.iter().rev() {
            if self.reset_tripped(i).is_err() {
                lost.push(self.slots.remove(i));
            }
        }
        for slot in lost {
            self.gone.push((slot.tenant, watchdog_result(slot.id)));
        }
        let mut gone = std::mem::take(&mut self.gone);
        gone.sort_by_key(|(_, r)| r.agent_id);
        let mut gone = gone.into_iter().peekable();
        for i in 0..self.slots.len() {
            // The slots are read in order, but each spans several lines and
            // a run of them a page: prefetched in batches as in `tick`.
            for ahead in batch_ahead(&self.slots, i) {
                shm_protocol::prefetch::prefetch(std::ptr::from_ref(&ahead.acc) as usize);
            }
            let slot = &mut self.slots[i];
            while let Some((_, r)) = gone.next_if(|(_, r)| r.agent_id < slot.id) {
                c.other(r);
            }
            if slot.acc.tripped {
                slot.acc.take();
                c.other(watchdog_result(slot.id));
                continue;
            }
            c.slot(slot, sample);
        }
        for (_, r) in gone {
            c.other(r);
        }
        c.finish()
    }

    /// Hex BLAKE3 of an agent's captured state (tests).
    pub fn state_hash_hex(&mut self, id: u64) -> Option<String> {
        let i = self.find(id).ok()?;
        let s = self.slots[i].agent.capture();
        Some(hex(&state_hash(&s)))
    }
}

/// The result of an agent whose call the watchdog stopped (or a journaled
/// trip preempted): the same whatever the agent did before the trip.
pub fn watchdog_result(agent_id: u64) -> AgentResult {
    AgentResult {
        agent_id,
        fuel: 0,
        calls: 0,
        outputs: Default::default(),
        fault: Some(Fault::Watchdog),
        wall_ns: 0,
        logs_suppressed: 0,
        memory_bytes: 0,
    }
}
