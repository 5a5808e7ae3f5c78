//! The agents of one worker process, and the execution of the supervisor's
//! commands (one [`TickWork`] per tick).

use crate::agent::{Agent, CallOutcome, Runtime, hex, state_hash};
use crate::engine::{self, AgentModule, EpochTicker, ModuleCache};
use crate::error::LoadError;
use shm_protocol::worker::{
    AgentLimits, AgentResult, Fault, Output, TickDone, TickWork, WorkerCommand, WorkerReply,
    digest_add, digest_term,
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
    /// Not reset with the rest: the agent's last digest term.
    memo: DigestMemo,
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

#[derive(Debug)]
struct Slot {
    id: u64,
    tenant: u32,
    module_id: u32,
    limits: AgentLimits,
    agent: Agent,
    acc: Acc,
}

/// A worker's agents and modules.
#[derive(Debug)]
pub struct Worker {
    rt: Runtime,
    /// The epoch thread (`None` until [`Worker::start_epoch_ticker`]).
    ticker: Option<EpochTicker>,
    cache: ModuleCache,
    modules: BTreeMap<u32, Arc<AgentModule>>,
    /// Sorted by agent id.
    slots: Vec<Slot>,
    /// Results of agents that no longer have a slot (failed spawns, stops).
    gone: Vec<(u32, AgentResult)>,
    /// Agents stopped in earlier parts of the current tick.
    stopped: Vec<u64>,
    /// Wall time of the current tick's parts so far.
    tick_wall_ns: u64,
    /// Test-only fault injection (`LOCKSTEP_INJECT`).
    inject: Option<crate::inject::Inject>,
}

impl Worker {
    /// A worker with default settings (seed 0, 1 s watchdog, no cache) until
    /// [`WorkerCommand::Configure`].
    pub fn new() -> Result<Self, LoadError> {
        let mut w = Self::without_ticker()?;
        w.start_epoch_ticker();
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
            cache: ModuleCache::new(None),
            modules: BTreeMap::new(),
            slots: Vec::new(),
            gone: Vec::new(),
            stopped: Vec::new(),
            tick_wall_ns: 0,
            inject: crate::inject::Inject::from_env(),
        })
    }

    /// Starts the epoch thread (the watchdog clock) if it is not running.
    pub fn start_epoch_ticker(&mut self) {
        if self.ticker.is_none() {
            self.ticker = Some(engine::start_epoch_ticker(&self.rt.engine));
        }
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
        match cmd {
            WorkerCommand::Configure {
                seed,
                watchdog_ms,
                cache_dir,
            } => {
                self.rt.seed = seed;
                self.rt.watchdog = Duration::from_millis(u64::from(watchdog_ms.max(1)));
                self.cache = ModuleCache::new(cache_dir.map(Into::into));
                WorkerReply::Configured
            }
            WorkerCommand::LoadModule {
                module_id,
                name,
                path,
                expected_blake3,
                memory_limit,
            } => {
                match self.load_module(
                    module_id,
                    &name,
                    &path,
                    expected_blake3.as_deref(),
                    memory_limit,
                ) {
                    Ok(reply) => reply,
                    Err(e) => WorkerReply::ModuleRefused {
                        module_id,
                        error: e.to_string(),
                    },
                }
            }
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
            | WorkerCommand::RestoreBegin { .. }
            | WorkerCommand::RestoreChunks { .. }
            | WorkerCommand::RestoreEnd { .. } => {
                WorkerReply::Error("checkpoint commands are handled by the worker's Imager".into())
            }
            WorkerCommand::Restore {
                agent_id,
                module_id,
                tenant,
                limits,
                state,
            } => {
                let error = self
                    .restore(agent_id, module_id, tenant, limits, &state)
                    .err();
                WorkerReply::Restored { agent_id, error }
            }
        }
    }

    /// Loads a module from a file, checking its pinned hash and its ABI.
    pub fn load_module(
        &mut self,
        module_id: u32,
        name: &str,
        path: &str,
        expected_blake3: Option<&str>,
        memory_limit: u64,
    ) -> Result<WorkerReply, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
            module: name.to_owned(),
            path: path.to_owned(),
            reason: if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    "{e} (the worker sandbox lets workers read only the manifest's \
                     directory, its modules' directories and `[run] module_dirs`)"
                )
            } else {
                e.to_string()
            },
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if let Some(want) = expected_blake3
            && !want.eq_ignore_ascii_case(&actual)
        {
            return Err(LoadError::HashMismatch {
                module: name.to_owned(),
                expected: want.to_owned(),
                actual,
            });
        }
        let mut module =
            engine::load_module(&self.rt.engine, &self.cache, name, &bytes, memory_limit)?;
        let abi_version = Agent::check_abi(&self.rt, &module, memory_limit)?;
        module.abi_version = abi_version;
        let globals = module.globals.iter().map(|g| g.ty.clone()).collect();
        let migrates = module.has_migrate;
        let reply = WorkerReply::ModuleLoaded {
            globals,
            migrates,
            module_id,
            blake3: module.hash,
            abi_version,
            cached: module.cached,
        };
        self.modules.insert(module_id, Arc::new(module));
        Ok(reply)
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
        let module = self
            .modules
            .get(&module_id)
            .cloned()
            .ok_or_else(|| format!("no module {module_id}"))?;
        let agent =
            Agent::restore(&self.rt, module, id, limits, state).map_err(|f| f.to_string())?;
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
        if out.fault.is_some() {
            acc.fault = out.fault;
            acc.report = true;
        }
    }

    /// Runs `f` on the slot as one call; discards the outputs of a call that
    /// faults (a call's effects apply only if it completes).
    fn run(slot: &mut Slot, timed: bool, f: impl FnOnce(&mut Agent) -> CallOutcome) {
        let before = slot.agent.host().outputs.len();
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
        for (agent, at) in inj.crash {
            if at == tick && self.find(agent).is_ok() {
                tracing::error!(agent, tick, "injected crash");
                std::process::abort();
            }
        }
        for (agent, at) in inj.syscall {
            if at == tick && (agent == 0 || self.find(agent).is_ok()) {
                crate::inject::forbidden_syscall();
            }
        }
        for (agent, at) in inj.read {
            if at == tick && (agent == 0 || self.find(agent).is_ok()) {
                crate::inject::read_outside();
            }
        }
    }

    /// Removes agents without calling them (quarantine after they crashed
    /// their worker).
    pub fn evict(&mut self, agents: &[u64]) {
        self.slots.retain(|s| !agents.contains(&s.id));
    }

    /// Executes one tick of work (see [`TickWork`] for the order).
    pub fn tick(&mut self, work: &TickWork) -> TickDone {
        let t0 = Instant::now();
        let tick = work.tick;
        if !work.evict.is_empty() {
            self.evict(&work.evict);
        }
        if self.inject.is_some() {
            self.inject(tick);
        }
        let timed = work.measure_time;
        for sp in &work.spawns {
            if self.find(sp.agent_id).is_ok() {
                self.gone_fault(
                    sp.tenant,
                    sp.agent_id,
                    Fault::Unknown(format!("agent {} already exists", sp.agent_id)),
                );
                continue;
            }
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
                            ..Acc::default()
                        },
                    };
                    Self::run(&mut slot, timed, |a| a.init(tick));
                    match self.find(sp.agent_id) {
                        Ok(i) => self.slots[i] = slot,
                        Err(i) => self.slots.insert(i, slot),
                    }
                }
                Err(f) => self.gone_fault(sp.tenant, sp.agent_id, f),
            }
        }
        for &id in &work.restarts {
            let Ok(i) = self.find(id) else {
                self.gone_fault(0, id, Fault::Unknown(format!("restart: no agent {id}")));
                continue;
            };
            let (module_id, limits) = (self.slots[i].module_id, self.slots[i].limits);
            match self.fresh(id, module_id, limits) {
                Ok(agent) => {
                    let slot = &mut self.slots[i];
                    slot.agent = agent;
                    slot.acc.report = true;
                    Self::run(slot, timed, |a| a.init(tick));
                }
                Err(f) => {
                    let slot = &mut self.slots[i];
                    slot.acc.called = true;
                    slot.acc.report = true;
                    slot.acc.fault = Some(f);
                }
            }
        }
        for up in &work.upgrades {
            let Ok(i) = self.find(up.agent_id) else {
                self.gone_fault(
                    0,
                    up.agent_id,
                    Fault::Unknown(format!("upgrade: no agent {}", up.agent_id)),
                );
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
            match old.upgrade(&self.rt, module, tick) {
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
            for m in &d.messages {
                if !slot.agent.is_live() {
                    break;
                }
                slot.acc.mailbox += 1;
                Self::run(slot, timed, |a| a.receive(tick, m));
            }
        }
        if work.step_all {
            for slot in &mut self.slots {
                if slot.agent.is_live() {
                    let mailbox = slot.acc.mailbox;
                    Self::run(slot, timed, |a| a.step(tick, None, mailbox));
                }
            }
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
                Self::run(slot, timed, |a| a.step(tick, s.task.as_ref(), mailbox));
            }
        }
        let mut stopped = Vec::new();
        for &id in &work.stops {
            let Ok(i) = self.find(id) else {
                self.gone_fault(0, id, Fault::Unknown(format!("stop: no agent {id}")));
                continue;
            };
            let slot = &mut self.slots[i];
            slot.acc.report = true;
            if slot.agent.is_live() {
                Self::run(slot, timed, |a| a.shutdown(tick));
            }
            stopped.push(id);
        }
        self.tick_wall_ns += t0.elapsed().as_nanos() as u64;
        if work.more {
            // Accumulate until the last part of the tick's work.
            self.stopped.extend(stopped);
            return TickDone {
                tick,
                more: true,
                ..TickDone::default()
            };
        }
        let mut done = self.collect(tick, timed);
        stopped.extend(std::mem::take(&mut self.stopped));
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
                outputs: Vec::new(),
                fault: Some(fault),
                wall_ns: 0,
                logs_suppressed: 0,
            },
        ));
    }

    /// Gathers this tick's results and resets the accumulators.
    fn collect(&mut self, tick: u64, timed: bool) -> TickDone {
        let mut done = TickDone {
            tick,
            ..TickDone::default()
        };
        let mut tenant_fuel: BTreeMap<u32, u64> = BTreeMap::new();
        let mut tenant_run: Option<(u32, u64)> = None;
        let mut gone = std::mem::take(&mut self.gone);
        gone.sort_by_key(|(_, r)| r.agent_id);
        let mut gone = gone.into_iter().peekable();
        for slot in &mut self.slots {
            while let Some((_, r)) = gone.next_if(|(_, r)| r.agent_id < slot.id) {
                done.results.push(r);
            }
            let memo = slot.acc.memo;
            let acc = std::mem::replace(
                &mut slot.acc,
                Acc {
                    memo,
                    ..Acc::default()
                },
            );
            if !acc.called && !acc.report {
                continue;
            }
            done.agents_called += 1;
            done.calls += u64::from(acc.calls);
            // Consecutive slots mostly share a tenant: sum runs, then add.
            match &mut tenant_run {
                Some((t, f)) if *t == slot.tenant => *f += acc.fuel,
                run => {
                    if let Some((t, f)) = run.replace((slot.tenant, acc.fuel)) {
                        *tenant_fuel.entry(t).or_default() += f;
                    }
                }
            }
            let term = slot.acc.memo.term(slot.id, acc.fuel, acc.calls);
            digest_add(&mut done.digest, term);
            // Every call goes through `run`, which sets `host_pending` when,
            // after a call, the agent had outputs or suppressed logs; without
            // it neither can have changed since, so the host data (a cache
            // miss with thousands of agents) need not be read.
            if !(acc.report || acc.host_pending || timed) {
                continue;
            }
            let host = slot.agent.host();
            let suppressed = host.logs_suppressed();
            let has_outputs = !host.outputs.is_empty();
            if acc.report || has_outputs || timed || suppressed > 0 {
                let outputs: Vec<Output> = std::mem::take(&mut host.outputs);
                done.results.push(AgentResult {
                    agent_id: slot.id,
                    fuel: acc.fuel,
                    calls: acc.calls,
                    outputs,
                    fault: acc.fault,
                    wall_ns: acc.wall_ns,
                    logs_suppressed: suppressed,
                });
            }
        }
        for (_, r) in gone {
            done.results.push(r);
        }
        if let Some((t, f)) = tenant_run {
            *tenant_fuel.entry(t).or_default() += f;
        }
        done.tenant_fuel = tenant_fuel.into_iter().collect();
        done
    }

    /// Hex BLAKE3 of an agent's captured state (tests).
    pub fn state_hash_hex(&mut self, id: u64) -> Option<String> {
        let i = self.find(id).ok()?;
        let s = self.slots[i].agent.capture();
        Some(hex(&state_hash(&s)))
    }
}

/// Rough upper bound of an [`AgentResult`]'s encoded size.
fn result_size(r: &AgentResult) -> usize {
    64 + r
        .outputs
        .iter()
        .map(|o| {
            64 + match o {
                Output::Send { payload, .. } => payload.len(),
                Output::Publish { topic, payload, .. } => topic.len() + payload.len(),
                Output::ChannelSend {
                    channel, payload, ..
                } => channel.len() + payload.len(),
                Output::Subscribe(n)
                | Output::Unsubscribe(n)
                | Output::Join(n)
                | Output::Leave(n) => n.len(),
                Output::ScheduleTask { payload, deps, .. } => payload.len() + 10 * deps.len(),
                Output::Infer { model, input, .. } => model.len() + input.len(),
                Output::Log { line, .. } => line.len(),
            }
        })
        .sum::<usize>()
        + r.fault.as_ref().map_or(0, |f| f.to_string().len())
}

/// Splits a tick's result into parts of at most about `limit` encoded bytes
/// each; every part but the last has `more` set and empty aggregates.
pub fn split_tick_done(mut done: TickDone, limit: usize) -> Vec<TickDone> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for r in std::mem::take(&mut done.results) {
        let s = result_size(&r);
        if size + s > limit && !current.is_empty() {
            parts.push(TickDone {
                tick: done.tick,
                results: std::mem::take(&mut current),
                more: true,
                ..TickDone::default()
            });
            size = 0;
        }
        size += s;
        current.push(r);
    }
    done.results = current;
    done.more = false;
    parts.push(done);
    parts
}
