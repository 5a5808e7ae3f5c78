//! The supervisor's deterministic state and the tick state machine.
//!
//! Everything here is a pure function of the manifest, the seed, the
//! journaled external inputs and the workers' (deterministic) results: no
//! clocks, no hash-map iteration order, no arrival order.  [`SimState`] is
//! what a snapshot stores besides the agents' own states.
//!
//! A tick `t` goes: [`SimState::begin_tick`] (apply the inputs journaled for
//! `t`, pick spawns, restarts, deliveries, steps and stops) → the workers
//! execute the plan → [`SimState::finish_tick`] (faults, task completion,
//! routing of every output in canonical order, membership changes, quotas,
//! the tick hash).

use crate::manifest::{Manifest, Mode, Overflow, RestartPolicy, Tenant};
use serde::{Deserialize, Serialize};
use shm_protocol::worker::{
    AgentLimits, AgentResult, Delivery, Fault, Output, SpawnOrder, StepOrder, TaskRef,
    UpgradeOrder, WireMessage,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Sender id of messages from the runtime (and external inputs).
pub const RUNTIME_SENDER: u64 = u64::MAX;
/// Issuer of tasks created by the manifest, `ctl` or the runtime.
pub const RUNTIME_ISSUER: u64 = 0xFFFF_FFFF;
/// Largest agent id (ids must fit in 32 bits for task ids).
pub const MAX_AGENT_ID: u64 = 0xFFFF_FFFE;
/// The tick hash is fed in pieces of about this many bytes.
const HASH_PIECE: usize = 64 << 10;

/// Message kinds (docs/abi.md).
pub mod kind {
    /// Direct message.
    pub const DIRECT: u32 = 0;
    /// Topic publication.
    pub const TOPIC: u32 = 1;
    /// Channel message.
    pub const CHANNEL: u32 = 2;
    /// Inference result.
    pub const INFER_OK: u32 = 3;
    /// Inference error.
    pub const INFER_ERR: u32 = 4;
    /// Runtime notice.
    pub const NOTICE: u32 = 5;
}

/// Lifecycle of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    /// Spawned in a later tick's plan (not yet started).
    Pending,
    /// Running.
    Live,
    /// Faulted; `restart_at` is the tick of its scheduled restart, if any.
    Faulted {
        /// The fault.
        fault: Fault,
        /// When.
        tick: u64,
        /// Scheduled restart.
        restart_at: Option<u64>,
    },
    /// Stopped (by request, or after too many restarts).
    Stopped {
        /// When.
        tick: u64,
        /// Why.
        reason: String,
    },
}

/// A module known to the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRec {
    /// Name (for messages).
    pub name: String,
    /// Path of the file.
    pub path: String,
    /// Pinned hash, if any.
    pub expected_blake3: Option<String>,
    /// BLAKE3 once loaded (the module version hash).
    pub blake3: Option<[u8; 32]>,
    /// Largest memory its agents may have.
    pub memory_limit: u64,
    /// `agent_abi_version` once loaded.
    pub abi_version: Option<u32>,
    /// Types of its mutable globals once loaded.
    pub globals: Option<Vec<String>>,
    /// Whether it exports `agent_migrate` (once loaded).
    pub migrates: bool,
}

/// An agent known to the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRec {
    /// Instance name.
    pub name: String,
    /// Module id.
    pub module: u32,
    /// Tenant index.
    pub tenant: u32,
    /// Scheduling priority.
    pub priority: i32,
    /// Limits.
    pub limits: AgentLimits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Status.
    pub status: AgentStatus,
    /// Ticks of recent restarts (for the restart intensity).
    pub restarts: VecDeque<u64>,
}

/// A task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id (`(issuer << 32) | n`).
    pub id: u64,
    /// Agent that runs it.
    pub agent: u64,
    /// Priority (higher first).
    pub priority: i32,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Tasks it waits for.
    pub deps: Vec<u64>,
    /// Submission sequence (ties).
    pub seq: u64,
    /// Tick it was submitted in.
    pub submitted: u64,
}

/// All tasks of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTable {
    /// Not yet run: id → task.
    pub open: BTreeMap<u64, Task>,
    /// Completed task ids.
    pub completed: BTreeSet<u64>,
    /// Failed or cancelled task ids.
    pub failed: BTreeSet<u64>,
    /// Next submission sequence.
    pub next_seq: u64,
}

/// Usage counters of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// Agents not stopped.
    pub agents: u64,
    /// Sum of their memory limits.
    pub memory: u64,
    /// Fuel above the per-tick quota still to be paid back.
    pub fuel_debt: u64,
    /// Rotation offset for step quotas (round-robin).
    pub rotation: u64,
}

/// Run-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Steps run.
    pub steps: u64,
    /// Calls made into agents.
    pub calls: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Messages delivered into mailboxes.
    pub messages: u64,
    /// Messages dropped by mailbox overflow.
    pub dropped: u64,
    /// Messages to unknown or dead recipients.
    pub undeliverable: u64,
    /// Agent faults.
    pub faults: u64,
    /// Agent restarts.
    pub restarts: u64,
    /// Tasks completed.
    pub tasks_completed: u64,
    /// Tasks failed or cancelled.
    pub tasks_failed: u64,
    /// Inference requests.
    pub inferences: u64,
}

/// An external input, applied at a tick boundary and journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// Start a new agent.
    Spawn {
        /// Instance name.
        name: String,
        /// Module path.
        module: String,
        /// Tenant name.
        tenant: String,
        /// Priority.
        priority: i32,
        /// Memory limit (bytes).
        memory: u64,
        /// Fuel per call.
        fuel: u64,
    },
    /// Schedule a task.
    Task {
        /// Agent name or `#id`.
        agent: String,
        /// Priority.
        priority: i32,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Dependencies.
        deps: Vec<u64>,
    },
    /// Publish on a topic (sender: the runtime).
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Send to an agent (sender: the runtime).
    Send {
        /// Agent name or `#id`.
        agent: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Stop an agent.
    Stop {
        /// Agent name or `#id`.
        agent: String,
    },
    // --- inference (issue 5): versioned model swap ---
    /// Make `version` the current version of model `id` (what `infer("id")`
    /// without `@version` uses) from this tick's requests on.
    SwapModel {
        /// Model id.
        id: String,
        /// A version the manifest declares for it.
        version: String,
    },
    /// Make an agent a member of a channel (the orchestrator's
    /// `joinChannel`); effective for messages sent from this tick on.
    JoinChannel {
        /// Agent name or `#id`.
        agent: String,
        /// Channel.
        channel: String,
    },
    /// Hot-swap an agent to another module.  The runner resolves the module
    /// (hash, ABI version, state layout) before journaling, so that replays
    /// decide compatibility exactly as the original run did.
    Upgrade {
        /// Agent name or `#id`.
        agent: String,
        /// Module path.
        module: String,
        /// BLAKE3 of the module (hex), pinned for replays.
        blake3: String,
        /// Its `agent_abi_version`.
        abi_version: u32,
        /// Types of its mutable globals.
        globals: Vec<String>,
        /// Whether it exports `agent_migrate`.
        migrates: bool,
    },
}

/// What applying an input did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputOutcome {
    /// Applied.
    Applied(String),
    /// Refused (nothing changed).
    Refused(String),
}

/// The work of one tick, for all workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickPlan {
    /// The tick.
    pub tick: u64,
    /// Agents to start.
    pub spawns: Vec<SpawnOrder>,
    /// Agents to restart.
    pub restarts: Vec<u64>,
    /// Messages to deliver (ascending agent id).
    pub deliveries: Vec<Delivery>,
    /// Step every live agent (round-robin fast path).
    pub step_all: bool,
    /// Explicit steps.
    pub steps: Vec<StepOrder>,
    /// Agents to stop.
    pub stops: Vec<u64>,
    /// Agents to move to another module.
    pub upgrades: Vec<UpgradeOrder>,
    /// Live agents once the spawns and restarts are applied (counted by
    /// [`SimState::begin_tick`] during the scan it makes anyway, so that
    /// [`SimState::finish_tick`] need not scan every agent again).
    live: u64,
}

/// An inference request collected at a barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Requesting agent.
    pub agent: u64,
    /// Its request id.
    pub request_id: u64,
    /// Model (`id` or `id@version`).
    pub model: String,
    /// Input tensor (ABI layout).
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
}

/// An inference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferAnswer {
    /// Requesting agent.
    pub agent: u64,
    /// Its request id.
    pub request_id: u64,
    /// Output tensor (ABI layout) or error text.
    pub result: Result<Vec<u8>, String>,
}

/// A deterministic event worth journaling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// An agent faulted.
    Fault {
        /// Agent.
        agent: u64,
        /// Fault.
        fault: Fault,
        /// What the restart policy decided.
        action: String,
    },
    /// An agent was restarted.
    Restarted {
        /// Agent.
        agent: u64,
    },
    /// A task submitted by an agent was refused.
    TaskRefused {
        /// Issuer.
        agent: u64,
        /// Task id.
        task: u64,
        /// Why.
        reason: String,
    },
    /// An inference request was refused by quota.
    InferRefused {
        /// Agent.
        agent: u64,
        /// Request id.
        request: u64,
    },
}

/// What one tick did (deterministic fields only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickSummary {
    /// The tick.
    pub tick: u64,
    /// The tick hash (chained).
    pub hash: [u8; 32],
    /// Calls made.
    pub calls: u64,
    /// Steps run.
    pub steps: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Messages delivered into mailboxes.
    pub messages: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// Faults.
    pub faults: u64,
    /// Events to journal.
    pub events: Vec<Event>,
    /// Live agents at the end of the tick.
    #[serde(default)]
    pub live: u64,
}

/// The supervisor's deterministic state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimState {
    /// Last completed tick.
    pub tick: u64,
    /// Hash of the last completed tick (chain head).
    pub hash: [u8; 32],
    /// Run seed.
    pub seed: u64,
    /// Scheduler mode.
    pub mode: Mode,
    /// Steps (tasks) per tick.
    pub budget: u64,
    /// Mailbox capacity.
    pub mailbox_capacity: u64,
    /// Overflow policy.
    pub overflow: Overflow,
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Tenant usage.
    pub usage: Vec<TenantUsage>,
    /// Modules.
    pub modules: BTreeMap<u32, ModuleRec>,
    /// Agents.
    pub agents: BTreeMap<u64, AgentRec>,
    /// Instance name → id.
    pub names: BTreeMap<String, u64>,
    /// Messages waiting for delivery in the next tick.
    pub mailboxes: BTreeMap<u64, VecDeque<WireMessage>>,
    /// Topic → subscribers.
    pub topics: BTreeMap<String, BTreeSet<u64>>,
    /// Channel → members.
    pub channels: BTreeMap<String, BTreeSet<u64>>,
    /// Tasks.
    pub tasks: TaskTable,
    /// Next agent id.
    pub next_agent_id: u64,
    /// Tasks issued by the runtime (manifest, ctl).
    pub runtime_tasks: u64,
    /// Runtime notice sequence.
    pub notice_seq: u64,
    /// Agents to spawn in the next tick.
    pub pending_spawns: BTreeSet<u64>,
    /// Agents to stop in the next tick.
    pub pending_stops: BTreeSet<u64>,
    /// Agents to move to another module in the next tick.
    pub pending_upgrades: BTreeMap<u64, u32>,
    /// Inference requests of the last tick (answered before the next).
    pub infer_queue: Vec<InferRequest>,
    /// Counters.
    pub counters: Counters,
    // --- inference (issue 5) ---
    /// Model id → its current version (the first declared one until an
    /// [`Input::SwapModel`]).
    pub model_versions: BTreeMap<String, String>,
    /// Model id → every version the manifest declares.
    pub model_catalog: BTreeMap<String, BTreeSet<String>>,
    /// Indexes derived from `agents` (not state: never serialized or
    /// compared; rebuilt by the first [`SimState::begin_tick`] after a load).
    #[serde(skip)]
    derived: Derived,
}

/// What [`SimState::begin_tick`] would otherwise find by scanning every
/// agent record each tick (≈ 0.2 ms at 10,000 agents): the number of live
/// agents and the scheduled restarts.  Statuses change only inside
/// `begin_tick` and `finish_tick`, which keep it up to date; in debug builds
/// `finish_tick` checks the live count against a full scan.
#[derive(Debug, Clone, Default)]
struct Derived {
    /// Whether the fields below describe `agents`.
    ready: bool,
    /// Live agents (as of the end of the last tick, then of `begin_tick`).
    live: u64,
    /// (restart tick, agent) of faulted agents with a scheduled restart;
    /// an entry whose agent no longer waits for that restart is stale and
    /// skipped.
    restart_due: BTreeSet<(u64, u64)>,
}

/// Derived data never makes two states differ.
impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

/// Messages routed at a tick barrier, in canonical order, not yet in the
/// mailboxes (see [`SimState::deliver`]).
#[derive(Debug, Default)]
struct Outbox {
    msgs: Vec<Option<WireMessage>>,
    /// (recipient, index into `msgs`).
    keys: Vec<(u64, u32)>,
}

impl Outbox {
    fn push(&mut self, to: u64, msg: WireMessage) {
        self.keys.push((to, self.msgs.len() as u32));
        self.msgs.push(Some(msg));
    }
}

fn notice(seq: u64, tick: u64, text: String) -> WireMessage {
    WireMessage {
        kind: kind::NOTICE,
        sender: RUNTIME_SENDER,
        sent_tick: tick,
        seq,
        topic: String::new(),
        payload: text.into_bytes(),
    }
}

impl SimState {
    /// The initial state of a run of `manifest` with `seed`: every manifest
    /// agent pending spawn in tick 1, its subscriptions and channels set,
    /// the manifest's tasks submitted.
    pub fn new(manifest: &Manifest, seed: u64) -> Result<Self, String> {
        let mut s = Self {
            tick: 0,
            hash: *blake3::hash(b"lockstep-genesis").as_bytes(),
            seed,
            mode: manifest.mode,
            budget: manifest.budget,
            mailbox_capacity: manifest.mailbox_capacity,
            overflow: manifest.overflow,
            tenants: manifest.tenants.clone(),
            usage: vec![TenantUsage::default(); manifest.tenants.len()],
            modules: BTreeMap::new(),
            agents: BTreeMap::new(),
            names: BTreeMap::new(),
            mailboxes: BTreeMap::new(),
            topics: BTreeMap::new(),
            channels: BTreeMap::new(),
            tasks: TaskTable::default(),
            next_agent_id: 1,
            runtime_tasks: 0,
            notice_seq: 0,
            pending_spawns: BTreeSet::new(),
            pending_stops: BTreeSet::new(),
            pending_upgrades: BTreeMap::new(),
            infer_queue: Vec::new(),
            counters: Counters::default(),
            model_versions: BTreeMap::new(),
            model_catalog: BTreeMap::new(),
            derived: Derived::default(),
        };
        // --- inference (issue 5): the first declared version is current ---
        for m in &manifest.models {
            s.model_versions
                .entry(m.id.clone())
                .or_insert_with(|| m.version.clone());
            s.model_catalog
                .entry(m.id.clone())
                .or_default()
                .insert(m.version.clone());
        }
        let mut g = blake3::Hasher::new();
        g.update(b"lockstep-genesis-v1");
        g.update(&seed.to_le_bytes());
        s.hash = *g.finalize().as_bytes();
        for (i, def) in manifest.agents.iter().enumerate() {
            let module = i as u32;
            s.modules.insert(
                module,
                ModuleRec {
                    name: def.name.clone(),
                    path: def.module.display().to_string(),
                    expected_blake3: def.blake3.clone(),
                    blake3: None,
                    memory_limit: def.memory,
                    abi_version: None,
                    globals: None,
                    migrates: false,
                },
            );
            for name in Manifest::instance_names(def) {
                let limits = AgentLimits {
                    memory_bytes: def.memory,
                    fuel_per_call: def.fuel,
                    ..AgentLimits::default()
                };
                let id = s
                    .admit_agent(name, module, def.tenant, def.priority, limits, def.restart)
                    .map_err(|e| format!("agent {}: {e}", def.name))?;
                for t in &def.subscriptions {
                    s.topics.entry(t.clone()).or_default().insert(id);
                }
                for c in &def.channels {
                    s.channels.entry(c.clone()).or_default().insert(id);
                }
            }
        }
        let mut ids = Vec::new();
        for t in &manifest.tasks {
            let agent = s
                .names
                .get(&t.agent)
                .copied()
                .ok_or_else(|| format!("task for unknown agent {}", t.agent))?;
            let deps = t
                .after
                .iter()
                .filter_map(|&k| ids.get(k).copied())
                .collect();
            let id = s.runtime_task_id();
            s.add_task(Task {
                id,
                agent,
                priority: t.priority,
                payload: t.payload.clone(),
                deps,
                seq: 0,
                submitted: 0,
            })?;
            ids.push(id);
        }
        Ok(s)
    }

    fn runtime_task_id(&mut self) -> u64 {
        self.runtime_tasks += 1;
        (RUNTIME_ISSUER << 32) | (self.runtime_tasks & 0xFFFF_FFFF)
    }

    /// Creates a pending agent after checking the tenant's quotas.
    fn admit_agent(
        &mut self,
        name: String,
        module: u32,
        tenant: u32,
        priority: i32,
        limits: AgentLimits,
        restart: RestartPolicy,
    ) -> Result<u64, String> {
        if self.names.contains_key(&name) {
            return Err(format!("an agent named `{name}` already exists"));
        }
        let t = self
            .tenants
            .get(tenant as usize)
            .ok_or_else(|| format!("unknown tenant {tenant}"))?;
        let u = &self.usage[tenant as usize];
        if t.max_agents.is_some_and(|m| u.agents + 1 > m) {
            return Err(format!(
                "tenant `{}` is at its limit of {} agents",
                t.name,
                t.max_agents.unwrap_or(0)
            ));
        }
        if t.max_memory
            .is_some_and(|m| u.memory + limits.memory_bytes > m)
        {
            return Err(format!(
                "tenant `{}` would exceed its memory quota of {} bytes",
                t.name,
                t.max_memory.unwrap_or(0)
            ));
        }
        if self.next_agent_id > MAX_AGENT_ID {
            return Err("agent ids exhausted".into());
        }
        let id = self.next_agent_id;
        self.next_agent_id += 1;
        let u = &mut self.usage[tenant as usize];
        u.agents += 1;
        u.memory += limits.memory_bytes;
        self.names.insert(name.clone(), id);
        self.agents.insert(
            id,
            AgentRec {
                name,
                module,
                tenant,
                priority,
                limits,
                restart,
                status: AgentStatus::Pending,
                restarts: VecDeque::new(),
            },
        );
        self.pending_spawns.insert(id);
        Ok(id)
    }

    /// Resolves `name` or `#id` to a known agent id.
    pub fn resolve(&self, agent: &str) -> Option<u64> {
        match agent.strip_prefix('#') {
            Some(n) => n.parse().ok().filter(|id| self.agents.contains_key(id)),
            None => self.names.get(agent).copied(),
        }
    }

    /// Submits a task, checking its target and dependencies.
    fn add_task(&mut self, mut task: Task) -> Result<(), String> {
        if !self.agents.contains_key(&task.agent) {
            return Err(format!("task {:#x}: no agent {}", task.id, task.agent));
        }
        if self.tasks.open.contains_key(&task.id)
            || self.tasks.completed.contains(&task.id)
            || self.tasks.failed.contains(&task.id)
        {
            return Err(format!("task {:#x} already exists", task.id));
        }
        for d in &task.deps {
            if *d == task.id {
                return Err(format!("task {:#x} depends on itself (cycle)", task.id));
            }
            if self.tasks.failed.contains(d) {
                return Err(format!("task {:#x} depends on failed task {d:#x}", task.id));
            }
            if !self.tasks.open.contains_key(d) && !self.tasks.completed.contains(d) {
                return Err(format!(
                    "task {:#x} depends on unknown task {d:#x} (missing dependency)",
                    task.id
                ));
            }
        }
        // Dependencies must already exist, so no cycle can form.
        task.seq = self.tasks.next_seq;
        self.tasks.next_seq += 1;
        self.tasks.open.insert(task.id, task);
        Ok(())
    }

    fn push_message(&mut self, to: u64, msg: WireMessage, drops: &mut u64) {
        let live = matches!(
            self.agents.get(&to).map(|a| &a.status),
            Some(AgentStatus::Live | AgentStatus::Pending)
        );
        if !live {
            self.counters.undeliverable += 1;
            return;
        }
        let cap = self.mailbox_capacity as usize;
        let mb = self.mailboxes.entry(to).or_default();
        if mb.len() >= cap {
            *drops += 1;
            self.counters.dropped += 1;
            match self.overflow {
                Overflow::DropOldest => {
                    mb.pop_front();
                }
                Overflow::DropNewest => return,
            }
        }
        mb.push_back(msg);
        self.counters.messages += 1;
    }

    /// Puts the messages of `out` into the mailboxes: exactly what
    /// [`SimState::push_message`] on each message in `out`'s order does, as
    /// long as no agent's status changes meanwhile, with one look-up per
    /// recipient instead of two per message.
    fn deliver(&mut self, mut out: Outbox, drops: &mut u64) {
        // (recipient, position) keys are unique: an unstable sort keeps
        // every recipient's messages in their original order.
        out.keys.sort_unstable();
        let cap = self.mailbox_capacity as usize;
        for group in out.keys.chunk_by(|a, b| a.0 == b.0) {
            let to = group[0].0;
            let live = matches!(
                self.agents.get(&to).map(|a| &a.status),
                Some(AgentStatus::Live | AgentStatus::Pending)
            );
            if !live {
                self.counters.undeliverable += group.len() as u64;
                continue;
            }
            let mb = self.mailboxes.entry(to).or_default();
            mb.reserve(group.len().min(cap.saturating_sub(mb.len())));
            for &(_, i) in group {
                let Some(msg) = out.msgs[i as usize].take() else {
                    continue;
                };
                if mb.len() >= cap {
                    *drops += 1;
                    self.counters.dropped += 1;
                    match self.overflow {
                        Overflow::DropOldest => {
                            mb.pop_front();
                        }
                        Overflow::DropNewest => continue,
                    }
                }
                mb.push_back(msg);
                self.counters.messages += 1;
            }
        }
    }

    /// Applies external inputs for the coming tick (`self.tick + 1`), in
    /// order; their effects are visible to that tick's plan.
    pub fn apply_inputs(&mut self, inputs: &[Input]) -> Vec<InputOutcome> {
        inputs.iter().map(|i| self.apply_input(i)).collect()
    }

    /// Applies one external input.
    fn apply_input(&mut self, input: &Input) -> InputOutcome {
        let tick = self.tick + 1;
        match input {
            Input::Spawn {
                name,
                module,
                tenant,
                priority,
                memory,
                fuel,
            } => {
                let Some(t) = self.tenants.iter().position(|x| &x.name == tenant) else {
                    return InputOutcome::Refused(format!("unknown tenant `{tenant}`"));
                };
                if name.is_empty() || name.len() > 128 || name.starts_with('#') {
                    return InputOutcome::Refused(format!("invalid agent name `{name}`"));
                }
                let module_id = match self
                    .modules
                    .iter()
                    .find(|(_, m)| &m.path == module && m.memory_limit >= *memory)
                {
                    Some((id, _)) => *id,
                    None => {
                        let id = self.modules.keys().next_back().map_or(0, |k| k + 1);
                        let rec = ModuleRec {
                            name: name.clone(),
                            path: module.clone(),
                            expected_blake3: None,
                            blake3: None,
                            memory_limit: *memory,
                            abi_version: None,
                            globals: None,
                            migrates: false,
                        };
                        self.modules.insert(id, rec);
                        id
                    }
                };
                let limits = AgentLimits {
                    memory_bytes: *memory,
                    fuel_per_call: *fuel,
                    ..AgentLimits::default()
                };
                match self.admit_agent(
                    name.clone(),
                    module_id,
                    t as u32,
                    *priority,
                    limits,
                    RestartPolicy {
                        max: 3,
                        within: 100,
                    },
                ) {
                    Ok(id) => InputOutcome::Applied(format!("spawned {name} as agent {id}")),
                    Err(e) => InputOutcome::Refused(e),
                }
            }
            Input::Task {
                agent,
                priority,
                payload,
                deps,
            } => {
                let Some(id) = self.resolve(agent) else {
                    return InputOutcome::Refused(format!("no agent `{agent}`"));
                };
                let task_id = self.runtime_task_id();
                match self.add_task(Task {
                    id: task_id,
                    agent: id,
                    priority: *priority,
                    payload: payload.clone(),
                    deps: deps.clone(),
                    seq: 0,
                    submitted: tick,
                }) {
                    Ok(()) => InputOutcome::Applied(format!("task {task_id:#x} for agent {id}")),
                    Err(e) => InputOutcome::Refused(e),
                }
            }
            Input::Publish { topic, payload } => {
                let subs: Vec<u64> = self
                    .topics
                    .get(topic)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                let mut drops = 0;
                self.notice_seq += 1;
                let seq = self.notice_seq;
                for s in &subs {
                    let msg = WireMessage {
                        kind: kind::TOPIC,
                        sender: RUNTIME_SENDER,
                        sent_tick: tick,
                        seq,
                        topic: topic.clone(),
                        payload: payload.clone(),
                    };
                    self.push_message(*s, msg, &mut drops);
                }
                InputOutcome::Applied(format!(
                    "published on `{topic}` to {} subscribers",
                    subs.len()
                ))
            }
            Input::Send { agent, payload } => {
                let Some(id) = self.resolve(agent) else {
                    return InputOutcome::Refused(format!("no agent `{agent}`"));
                };
                self.notice_seq += 1;
                let msg = WireMessage {
                    kind: kind::DIRECT,
                    sender: RUNTIME_SENDER,
                    sent_tick: tick,
                    seq: self.notice_seq,
                    topic: String::new(),
                    payload: payload.clone(),
                };
                let mut drops = 0;
                self.push_message(id, msg, &mut drops);
                InputOutcome::Applied(format!("sent to agent {id}"))
            }
            Input::Stop { agent } => {
                let Some(id) = self.resolve(agent) else {
                    return InputOutcome::Refused(format!("no agent `{agent}`"));
                };
                if matches!(
                    self.agents.get(&id).map(|a| &a.status),
                    Some(AgentStatus::Stopped { .. })
                ) {
                    return InputOutcome::Refused(format!("agent {id} is already stopped"));
                }
                self.pending_stops.insert(id);
                InputOutcome::Applied(format!("stopping agent {id}"))
            }
            Input::JoinChannel { agent, channel } => {
                let Some(id) = self.resolve(agent) else {
                    return InputOutcome::Refused(format!("no agent `{agent}`"));
                };
                if channel.is_empty() || channel.len() > 256 {
                    return InputOutcome::Refused("channel names are 1 to 256 bytes".into());
                }
                self.channels.entry(channel.clone()).or_default().insert(id);
                InputOutcome::Applied(format!("agent {id} joined `{channel}`"))
            }
            Input::Upgrade {
                agent,
                module,
                blake3,
                abi_version,
                globals,
                migrates,
            } => self.upgrade(agent, module, blake3, *abi_version, globals, *migrates),
            // --- inference (issue 5) ---
            Input::SwapModel { id, version } => self.swap_model(id, version),
        }
    }

    // --- inference (issue 5) ---
    /// Applies [`Input::Upgrade`]: checks ABI compatibility and the state
    /// layout against the agent's current module, then schedules the swap
    /// for the coming tick.
    fn upgrade(
        &mut self,
        agent: &str,
        module: &str,
        blake3: &str,
        abi: u32,
        globals: &[String],
        migrates: bool,
    ) -> InputOutcome {
        let Some(id) = self.resolve(agent) else {
            return InputOutcome::Refused(format!("no agent `{agent}`"));
        };
        let Some(rec) = self.agents.get(&id) else {
            return InputOutcome::Refused(format!("no agent `{agent}`"));
        };
        if matches!(
            rec.status,
            AgentStatus::Stopped { .. } | AgentStatus::Pending
        ) {
            return InputOutcome::Refused(format!("agent {id} is not running"));
        }
        let (limit, old) = (
            rec.limits.memory_bytes,
            self.modules.get(&rec.module).cloned(),
        );
        let Some(old) = old else {
            return InputOutcome::Refused(format!("agent {id} has no module"));
        };
        let old_abi = old.abi_version.unwrap_or(0x1_0000);
        if abi >> 16 != old_abi >> 16 {
            return InputOutcome::Refused(format!(
                "incompatible upgrade: {module} speaks ABI {}.{}, agent {id} runs ABI {}.{}",
                abi >> 16,
                abi & 0xFFFF,
                old_abi >> 16,
                old_abi & 0xFFFF
            ));
        }
        if old.globals.as_deref().is_some_and(|g| g != globals) && !migrates {
            return InputOutcome::Refused(format!(
                "incompatible upgrade: {module} declares mutable globals {globals:?} instead of {:?} and exports no agent_migrate",
                old.globals.unwrap_or_default()
            ));
        }
        let module_id = match self.modules.iter().find(|(_, m)| {
            m.path == module
                && m.expected_blake3.as_deref() == Some(blake3)
                && m.memory_limit >= limit
        }) {
            Some((mid, _)) => *mid,
            None => {
                let mid = self.modules.keys().next_back().map_or(0, |k| k + 1);
                self.modules.insert(
                    mid,
                    ModuleRec {
                        name: format!("{} (upgrade)", old.name),
                        path: module.to_owned(),
                        expected_blake3: Some(blake3.to_owned()),
                        blake3: None,
                        memory_limit: limit,
                        abi_version: Some(abi),
                        globals: Some(globals.to_vec()),
                        migrates,
                    },
                );
                mid
            }
        };
        if let Some(a) = self.agents.get_mut(&id) {
            a.module = module_id;
        }
        self.pending_upgrades.insert(id, module_id);
        InputOutcome::Applied(format!(
            "agent {id} upgrades to {module} at tick {}",
            self.tick + 1
        ))
    }

    /// Applies [`Input::SwapModel`]: refused unless the manifest declares
    /// `id` at `version`.
    fn swap_model(&mut self, id: &str, version: &str) -> InputOutcome {
        let Some(versions) = self.model_catalog.get(id) else {
            let known: Vec<&str> = self.model_catalog.keys().map(String::as_str).collect();
            return InputOutcome::Refused(if known.is_empty() {
                format!("no model `{id}`: the manifest declares no models")
            } else {
                format!(
                    "no model `{id}` (the manifest declares {})",
                    known.join(", ")
                )
            });
        };
        if !versions.contains(version) {
            let known: Vec<&str> = versions.iter().map(String::as_str).collect();
            return InputOutcome::Refused(format!(
                "model `{id}` has no version `{version}` (declared: {})",
                known.join(", ")
            ));
        }
        let tick = self.tick + 1;
        match self
            .model_versions
            .insert(id.to_owned(), version.to_owned())
        {
            Some(old) if old == version => {
                InputOutcome::Applied(format!("model `{id}` is already at version `{version}`"))
            }
            Some(old) => InputOutcome::Applied(format!(
                "model `{id}` swapped from version `{old}` to `{version}` at tick {tick}"
            )),
            None => InputOutcome::Applied(format!(
                "model `{id}` set to version `{version}` at tick {tick}"
            )),
        }
    }

    /// Plans tick `self.tick + 1` (after [`SimState::apply_inputs`]).
    pub fn begin_tick(&mut self) -> TickPlan {
        let tick = self.tick + 1;
        let mut plan = TickPlan {
            tick,
            ..TickPlan::default()
        };
        if !self.derived.ready {
            // First tick of this process (genesis, snapshot, fork): index.
            let mut d = Derived {
                ready: true,
                ..Derived::default()
            };
            for (id, a) in &self.agents {
                match a.status {
                    AgentStatus::Live => d.live += 1,
                    AgentStatus::Faulted {
                        restart_at: Some(at),
                        ..
                    } => {
                        d.restart_due.insert((at, *id));
                    }
                    _ => {}
                }
            }
            self.derived = d;
        }
        // Spawns.
        for id in std::mem::take(&mut self.pending_spawns) {
            if let Some(a) = self.agents.get_mut(&id) {
                self.derived.live += u64::from(!matches!(a.status, AgentStatus::Live));
                a.status = AgentStatus::Live;
                plan.spawns.push(SpawnOrder {
                    agent_id: id,
                    module_id: a.module,
                    tenant: a.tenant,
                    limits: a.limits,
                });
            }
        }
        // Restarts due this tick, in agent order.
        while let Some(&(at, id)) = self.derived.restart_due.first() {
            if at > tick {
                break;
            }
            self.derived.restart_due.pop_first();
            if let Some(a) = self.agents.get_mut(&id)
                && let AgentStatus::Faulted {
                    restart_at: Some(due),
                    ..
                } = a.status
                && due == at
            {
                a.status = AgentStatus::Live;
                a.restarts.push_back(tick);
                plan.restarts.push(id);
                self.derived.live += 1;
            }
        }
        plan.restarts.sort_unstable();
        plan.live = self.derived.live;
        self.counters.restarts += plan.restarts.len() as u64;
        // Deliveries: everything queued, to agents that are live.
        for (id, mb) in std::mem::take(&mut self.mailboxes) {
            if mb.is_empty() {
                continue;
            }
            if matches!(
                self.agents.get(&id).map(|a| &a.status),
                Some(AgentStatus::Live)
            ) {
                plan.deliveries.push(Delivery {
                    agent_id: id,
                    messages: mb.into(),
                });
            } else {
                self.counters.undeliverable += mb.len() as u64;
            }
        }
        self.plan_steps(&mut plan);
        plan.upgrades = std::mem::take(&mut self.pending_upgrades)
            .into_iter()
            .filter(|(id, _)| {
                matches!(
                    self.agents.get(id).map(|a| &a.status),
                    Some(AgentStatus::Live | AgentStatus::Faulted { .. })
                )
            })
            .map(|(agent_id, module_id)| UpgradeOrder {
                agent_id,
                module_id,
            })
            .collect();
        plan.stops = std::mem::take(&mut self.pending_stops)
            .into_iter()
            .collect();
        plan
    }

    /// Per-tenant step allowance this tick (`u64::MAX` = unlimited).
    fn allowances(&self) -> Vec<u64> {
        self.tenants
            .iter()
            .zip(&self.usage)
            .map(|(t, u)| {
                if u.fuel_debt > 0 {
                    0
                } else {
                    t.max_steps_per_tick.unwrap_or(u64::MAX)
                }
            })
            .collect()
    }

    fn plan_steps(&mut self, plan: &mut TickPlan) {
        let mut allow = self.allowances();
        let live = |a: &AgentRec| matches!(a.status, AgentStatus::Live);
        match self.mode {
            Mode::RoundRobin => {
                // The highest-priority open task of each agent rides on its step.
                let mut task_of: BTreeMap<u64, &Task> = BTreeMap::new();
                for t in self.tasks.open.values() {
                    let better = task_of.get(&t.agent).is_none_or(|b| {
                        (t.priority, std::cmp::Reverse(t.seq))
                            > (b.priority, std::cmp::Reverse(b.seq))
                    });
                    if better {
                        task_of.insert(t.agent, t);
                    }
                }
                let restricted = allow.iter().any(|a| *a != u64::MAX) || self.budget != u64::MAX;
                if task_of.is_empty() && !restricted {
                    plan.step_all = true;
                    return;
                }
                // Rotation: each tenant starts where it stopped last tick.
                let mut per_tenant: Vec<Vec<u64>> = vec![Vec::new(); self.tenants.len()];
                for (id, a) in &self.agents {
                    if live(a) {
                        per_tenant[a.tenant as usize].push(*id);
                    }
                }
                let mut chosen: BTreeSet<u64> = BTreeSet::new();
                for (t, ids) in per_tenant.iter().enumerate() {
                    if ids.is_empty() {
                        continue;
                    }
                    let n = (allow[t].min(ids.len() as u64)) as usize;
                    let start = (self.usage[t].rotation % ids.len() as u64) as usize;
                    for k in 0..n {
                        chosen.insert(ids[(start + k) % ids.len()]);
                    }
                    self.usage[t].rotation = self.usage[t].rotation.wrapping_add(n as u64);
                    allow[t] -= n as u64;
                }
                let mut budget = self.budget;
                for id in chosen {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    let task = task_of.get(&id).map(|t| TaskRef {
                        task_id: t.id,
                        priority: t.priority,
                        payload: t.payload.clone(),
                    });
                    plan.steps.push(StepOrder { agent_id: id, task });
                }
            }
            Mode::Priority | Mode::Dag => {
                let mut ready: Vec<&Task> = self
                    .tasks
                    .open
                    .values()
                    .filter(|t| {
                        self.mode == Mode::Priority
                            || t.deps.iter().all(|d| self.tasks.completed.contains(d))
                    })
                    .filter(|t| self.agents.get(&t.agent).is_some_and(live))
                    .collect();
                ready.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.seq));
                let mut budget = self.budget;
                for t in ready {
                    if budget == 0 {
                        break;
                    }
                    let tenant = self.agents.get(&t.agent).map_or(0, |a| a.tenant as usize);
                    if allow[tenant] == 0 {
                        continue;
                    }
                    allow[tenant] -= 1;
                    budget -= 1;
                    plan.steps.push(StepOrder {
                        agent_id: t.agent,
                        task: Some(TaskRef {
                            task_id: t.id,
                            priority: t.priority,
                            payload: t.payload.clone(),
                        }),
                    });
                }
            }
        }
    }

    /// How many of `ids` are live.
    fn count_live(&self, ids: &BTreeSet<u64>) -> u64 {
        ids.iter()
            .filter(|id| {
                matches!(
                    self.agents.get(id).map(|a| &a.status),
                    Some(AgentStatus::Live)
                )
            })
            .count() as u64
    }

    /// Ids of live agents (those a `step_all` steps).
    pub fn live_agents(&self) -> impl Iterator<Item = u64> + '_ {
        self.agents
            .iter()
            .filter(|(_, a)| matches!(a.status, AgentStatus::Live))
            .map(|(id, _)| *id)
    }

    /// Completes the tick: `results` merged from all workers in ascending
    /// agent id, `digest` the sum of the workers' digests, `tenant_fuel` the
    /// summed per-tenant fuel.  Returns the summary (with the new hash).
    pub fn finish_tick(
        &mut self,
        plan: &TickPlan,
        inputs: &[Input],
        results: &[AgentResult],
        digest: [u64; 4],
        tenant_fuel: &BTreeMap<u32, u64>,
        calls: u64,
    ) -> TickSummary {
        let mut results = results.to_vec();
        self.finish_tick_taking(plan, inputs, &mut results, digest, tenant_fuel, calls)
    }

    /// [`SimState::finish_tick`] without copying message payloads: the
    /// payloads of direct messages are moved out of `results` into the
    /// mailboxes (every other field of `results` is left as it was).
    pub fn finish_tick_taking(
        &mut self,
        plan: &TickPlan,
        inputs: &[Input],
        results: &mut [AgentResult],
        digest: [u64; 4],
        tenant_fuel: &BTreeMap<u32, u64>,
        calls: u64,
    ) -> TickSummary {
        let tick = plan.tick;
        let mut sum = TickSummary {
            tick,
            calls,
            ..TickSummary::default()
        };
        // The tick hash chains the previous hash with everything that
        // determined this tick's state transition.  The inputs, the digest
        // and the results are hashed first (routing moves payloads out of
        // `results`), in bounded pieces: the same bytes as one buffer.
        let mut h = blake3::Hasher::new();
        h.update(b"lockstep-tick-v1");
        h.update(&self.hash);
        h.update(&tick.to_le_bytes());
        let mut buf = Vec::with_capacity(HASH_PIECE + 4096);
        let _ = shm_protocol::codec::encode_into(&inputs, &mut buf);
        for d in digest {
            buf.extend_from_slice(&d.to_le_bytes());
        }
        for r in results.iter() {
            let _ = shm_protocol::codec::encode_into(
                &(
                    r.agent_id,
                    r.fuel,
                    r.calls,
                    &r.outputs,
                    &r.fault,
                    r.logs_suppressed,
                ),
                &mut buf,
            );
            if buf.len() >= HASH_PIECE {
                h.update(&buf);
                buf.clear();
            }
        }
        let mut drops = 0u64;
        let messages_before = self.counters.messages;
        // Faults first: an agent that faulted this tick receives nothing more.
        let faulted: BTreeSet<u64> = results
            .iter()
            .filter(|r| r.fault.is_some())
            .map(|r| r.agent_id)
            .collect();
        // Only faults and stops change whether an agent is live from here
        // on: the live agents at the end are the plan's count corrected by
        // those agents (no scan of every agent).
        let touched: BTreeSet<u64> = faulted.iter().chain(&plan.stops).copied().collect();
        let live_before = self.count_live(&touched);
        for r in results.iter() {
            if let Some(f) = &r.fault {
                sum.faults += 1;
                self.counters.faults += 1;
                let action = self.on_fault(r.agent_id, f, tick);
                sum.events.push(Event::Fault {
                    agent: r.agent_id,
                    fault: f.clone(),
                    action,
                });
            }
        }
        // Tasks that ran: completed unless their agent faulted.
        let mut ran_tasks: Vec<(u64, bool)> = Vec::new();
        for s in &plan.steps {
            if let Some(t) = &s.task {
                ran_tasks.push((t.task_id, !faulted.contains(&s.agent_id)));
            }
        }
        // Route outputs in canonical order: by agent id, then output order.
        // No agent's status changes while routing, so the messages are
        // collected and then put into the mailboxes recipient by recipient
        // (each recipient's in that same order).
        let mut outbox = Outbox::default();
        let mut membership: Vec<(u64, Output)> = Vec::new();
        let mut infer_count: BTreeMap<u32, u64> = BTreeMap::new();
        for r in results.iter_mut() {
            let from = r.agent_id;
            let tenant = self.agents.get(&from).map_or(0, |a| a.tenant);
            for o in &mut r.outputs {
                match o {
                    Output::Send { to, seq, payload } => {
                        let msg = WireMessage {
                            kind: kind::DIRECT,
                            sender: from,
                            sent_tick: tick,
                            seq: *seq,
                            topic: String::new(),
                            payload: std::mem::take(payload),
                        };
                        outbox.push(*to, msg);
                    }
                    Output::Publish {
                        topic,
                        seq,
                        payload,
                    } => {
                        let subs: Vec<u64> = self
                            .topics
                            .get(topic)
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default();
                        for s in subs {
                            let msg = WireMessage {
                                kind: kind::TOPIC,
                                sender: from,
                                sent_tick: tick,
                                seq: *seq,
                                topic: topic.clone(),
                                payload: payload.clone(),
                            };
                            outbox.push(s, msg);
                        }
                    }
                    Output::ChannelSend {
                        channel,
                        seq,
                        payload,
                    } => {
                        let members: Vec<u64> = self
                            .channels
                            .get(channel)
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default();
                        for m in members {
                            let msg = WireMessage {
                                kind: kind::CHANNEL,
                                sender: from,
                                sent_tick: tick,
                                seq: *seq,
                                topic: channel.clone(),
                                payload: payload.clone(),
                            };
                            outbox.push(m, msg);
                        }
                    }
                    Output::Subscribe(_)
                    | Output::Unsubscribe(_)
                    | Output::Join(_)
                    | Output::Leave(_) => {
                        membership.push((from, o.clone()));
                    }
                    Output::ScheduleTask {
                        task_id,
                        target,
                        priority,
                        payload,
                        deps,
                    } => {
                        let task = Task {
                            id: *task_id,
                            agent: *target,
                            priority: *priority,
                            payload: payload.clone(),
                            deps: deps.clone(),
                            seq: 0,
                            submitted: tick,
                        };
                        if (*task_id >> 32) != from {
                            sum.events.push(Event::TaskRefused {
                                agent: from,
                                task: *task_id,
                                reason: "task id not issued by this agent".into(),
                            });
                        } else if let Err(reason) = self.add_task(task) {
                            self.notice_seq += 1;
                            let n = notice(
                                self.notice_seq,
                                tick,
                                format!("task {task_id:#x} refused: {reason}"),
                            );
                            outbox.push(from, n);
                            sum.events.push(Event::TaskRefused {
                                agent: from,
                                task: *task_id,
                                reason,
                            });
                        }
                    }
                    Output::Infer {
                        request_id,
                        model,
                        input,
                    } => {
                        let n = infer_count.entry(tenant).or_default();
                        let quota = self
                            .tenants
                            .get(tenant as usize)
                            .and_then(|t| t.max_inference_per_tick);
                        if quota.is_some_and(|q| *n >= q) {
                            let msg = WireMessage {
                                kind: kind::INFER_ERR,
                                sender: RUNTIME_SENDER,
                                sent_tick: tick,
                                seq: *request_id,
                                topic: model.clone(),
                                payload: b"inference quota exceeded".to_vec(),
                            };
                            outbox.push(from, msg);
                            sum.events.push(Event::InferRefused {
                                agent: from,
                                request: *request_id,
                            });
                        } else {
                            *n += 1;
                            self.counters.inferences += 1;
                            self.infer_queue.push(InferRequest {
                                agent: from,
                                request_id: *request_id,
                                model: model.clone(),
                                input: input.clone(),
                            });
                        }
                    }
                    Output::Log { .. } => {}
                }
            }
        }
        self.deliver(outbox, &mut drops);
        // Task completion (dependents become ready from the next tick on).
        for (task_id, ok) in ran_tasks {
            if self.tasks.open.remove(&task_id).is_some() {
                if ok {
                    self.tasks.completed.insert(task_id);
                    self.counters.tasks_completed += 1;
                } else {
                    self.fail_task(task_id, tick, &mut drops);
                }
            }
        }
        // Tasks of stopped agents can never run.
        let dead: Vec<u64> = self
            .tasks
            .open
            .values()
            .filter(|t| {
                matches!(
                    self.agents.get(&t.agent).map(|a| &a.status),
                    Some(AgentStatus::Stopped { .. }) | None
                )
            })
            .map(|t| t.id)
            .collect();
        for t in dead {
            if self.tasks.open.remove(&t).is_some() {
                self.fail_task(t, tick, &mut drops);
            }
        }
        // Membership changes take effect for the next tick's routing.
        for (agent, o) in membership {
            match o {
                Output::Subscribe(t) => {
                    self.topics.entry(t).or_default().insert(agent);
                }
                Output::Unsubscribe(t) => {
                    if let Some(s) = self.topics.get_mut(&t) {
                        s.remove(&agent);
                    }
                }
                Output::Join(c) => {
                    self.channels.entry(c).or_default().insert(agent);
                }
                Output::Leave(c) => {
                    if let Some(s) = self.channels.get_mut(&c) {
                        s.remove(&agent);
                    }
                }
                _ => {}
            }
        }
        // Stops.
        for &id in &plan.stops {
            self.stop_agent(id, tick, "stopped by request");
        }
        // Fuel quotas: debt carried into the next ticks.
        for (t, fuel) in tenant_fuel {
            sum.fuel += fuel;
            if let (Some(tenant), Some(u)) = (
                self.tenants.get(*t as usize),
                self.usage.get_mut(*t as usize),
            ) {
                match tenant.max_fuel_per_tick {
                    Some(q) => u.fuel_debt = (u.fuel_debt + fuel).saturating_sub(q),
                    None => u.fuel_debt = 0,
                }
            }
        }
        for (t, u) in self.usage.iter_mut().enumerate() {
            if !tenant_fuel.contains_key(&(t as u32))
                && let Some(q) = self.tenants.get(t).and_then(|x| x.max_fuel_per_tick)
            {
                u.fuel_debt = u.fuel_debt.saturating_sub(q);
            }
        }
        let live = (plan.live + self.count_live(&touched)).saturating_sub(live_before);
        debug_assert_eq!(live, self.live_agents().count() as u64, "live agents");
        self.derived.live = live;
        let steps = plan.steps.len() as u64 + if plan.step_all { live } else { 0 };
        sum.steps = steps;
        sum.live = live;
        sum.messages = self.counters.messages - messages_before;
        sum.dropped = drops;
        self.counters.steps += steps;
        self.counters.calls += calls;
        self.counters.fuel += sum.fuel;
        let _ = shm_protocol::codec::encode_into(
            &(&sum.events, steps, sum.messages, drops, calls),
            &mut buf,
        );
        h.update(&buf);
        self.hash = *h.finalize().as_bytes();
        self.tick = tick;
        sum.hash = self.hash;
        sum
    }

    fn fail_task(&mut self, task: u64, tick: u64, drops: &mut u64) {
        self.tasks.failed.insert(task);
        self.counters.tasks_failed += 1;
        // Cancel dependents, transitively, in id order.
        let mut frontier = vec![task];
        while let Some(f) = frontier.pop() {
            let deps: Vec<u64> = self
                .tasks
                .open
                .values()
                .filter(|t| t.deps.contains(&f))
                .map(|t| t.id)
                .collect();
            for d in deps {
                if let Some(t) = self.tasks.open.remove(&d) {
                    self.tasks.failed.insert(d);
                    self.counters.tasks_failed += 1;
                    let issuer = d >> 32;
                    if issuer != RUNTIME_ISSUER {
                        self.notice_seq += 1;
                        let n = notice(
                            self.notice_seq,
                            tick,
                            format!("task {d:#x} cancelled: dependency {f:#x} failed"),
                        );
                        self.push_message(issuer, n, drops);
                    }
                    let _ = t;
                    frontier.push(d);
                }
            }
        }
    }

    fn stop_agent(&mut self, id: u64, tick: u64, reason: &str) {
        if let Some(a) = self.agents.get_mut(&id) {
            if matches!(a.status, AgentStatus::Stopped { .. }) {
                return;
            }
            a.status = AgentStatus::Stopped {
                tick,
                reason: reason.to_owned(),
            };
            if let Some(u) = self.usage.get_mut(a.tenant as usize) {
                u.agents = u.agents.saturating_sub(1);
                u.memory = u.memory.saturating_sub(a.limits.memory_bytes);
            }
            for s in self.topics.values_mut() {
                s.remove(&id);
            }
            for s in self.channels.values_mut() {
                s.remove(&id);
            }
            self.mailboxes.remove(&id);
        }
    }

    /// Applies the restart policy to a fault; returns the decision.
    fn on_fault(&mut self, id: u64, fault: &Fault, tick: u64) -> String {
        let Some(a) = self.agents.get_mut(&id) else {
            return "unknown agent".into();
        };
        if matches!(a.status, AgentStatus::Stopped { .. }) {
            return "already stopped".into();
        }
        if !fault.is_deterministic() {
            a.status = AgentStatus::Faulted {
                fault: fault.clone(),
                tick,
                restart_at: None,
            };
            return "quarantined (non-deterministic fault)".into();
        }
        if *fault == Fault::CrashedWorker {
            let why = "quarantined: it crashed its worker process";
            self.stop_agent(id, tick, why);
            return why.into();
        }
        while a
            .restarts
            .front()
            .is_some_and(|t| t + a.restart.within <= tick)
        {
            a.restarts.pop_front();
        }
        if (a.restarts.len() as u32) < a.restart.max {
            a.status = AgentStatus::Faulted {
                fault: fault.clone(),
                tick,
                restart_at: Some(tick + 1),
            };
            self.derived.restart_due.insert((tick + 1, id));
            format!(
                "restart at tick {} ({} of {} within {} ticks)",
                tick + 1,
                a.restarts.len() + 1,
                a.restart.max,
                a.restart.within
            )
        } else {
            let why = format!(
                "stopped: more than {} restarts within {} ticks",
                a.restart.max, a.restart.within
            );
            self.stop_agent(id, tick, &why);
            why
        }
    }

    /// Delivers inference answers (in request order) for the next tick and
    /// folds their hashes into the chain; returns each answer's hash.
    pub fn deliver_answers(&mut self, answers: &[InferAnswer]) -> Vec<[u8; 32]> {
        let tick = self.tick;
        let mut drops = 0;
        let mut hashes = Vec::with_capacity(answers.len());
        let mut h = blake3::Hasher::new();
        h.update(b"lockstep-answers-v1");
        h.update(&self.hash);
        for a in answers {
            let ah = *blake3::hash(&shm_protocol::codec::encode(a).unwrap_or_default()).as_bytes();
            h.update(&ah);
            hashes.push(ah);
            let (k, payload) = match &a.result {
                Ok(t) => (kind::INFER_OK, t.clone()),
                Err(e) => (kind::INFER_ERR, e.clone().into_bytes()),
            };
            let model = self
                .infer_queue
                .iter()
                .find(|r| r.agent == a.agent && r.request_id == a.request_id)
                .map(|r| r.model.clone())
                .unwrap_or_default();
            let msg = WireMessage {
                kind: k,
                sender: RUNTIME_SENDER,
                sent_tick: tick,
                seq: a.request_id,
                topic: model,
                payload,
            };
            self.push_message(a.agent, msg, &mut drops);
        }
        self.infer_queue.clear();
        if !answers.is_empty() {
            self.hash = *h.finalize().as_bytes();
        }
        hashes
    }

    /// BLAKE3 of the whole supervisor state (for snapshots and `verify`).
    pub fn state_hash(&self) -> [u8; 32] {
        let bytes = shm_protocol::codec::encode(self).unwrap_or_default();
        *blake3::hash(&bytes).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str, agents: &str) -> Manifest {
        let dir = std::env::temp_dir().join(format!("lockstep-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.wasm"), b"\0asm").unwrap();
        Manifest::parse(&format!("{extra}\n{agents}"), "m.toml", &dir).unwrap()
    }

    fn agents(n: u64) -> String {
        format!("[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ncount = {n}\n")
    }

    /// Runs the state machine for one tick with synthetic worker results.
    fn tick(s: &mut SimState, results: Vec<AgentResult>) -> (TickPlan, TickSummary) {
        let plan = s.begin_tick();
        let sum = s.finish_tick(&plan, &[], &results, [0; 4], &BTreeMap::new(), 0);
        (plan, sum)
    }

    fn out(agent: u64, outputs: Vec<Output>) -> AgentResult {
        AgentResult {
            agent_id: agent,
            fuel: 10,
            calls: 1,
            outputs,
            fault: None,
            wall_ns: 0,
            logs_suppressed: 0,
        }
    }

    fn send(to: u64, seq: u64) -> Output {
        Output::Send {
            to,
            seq,
            payload: vec![seq as u8],
        }
    }

    #[test]
    fn round_robin_steps_every_live_agent_once() {
        let mut s = SimState::new(&manifest("", &agents(5)), 1).unwrap();
        let (plan, sum) = tick(&mut s, vec![]);
        assert_eq!(plan.spawns.len(), 5);
        assert!(plan.step_all);
        assert_eq!(sum.steps, 5);
        let (plan, _) = tick(&mut s, vec![]);
        assert!(plan.spawns.is_empty() && plan.step_all);
    }

    #[test]
    fn messages_are_delivered_next_tick_in_canonical_order() {
        let mut s = SimState::new(&manifest("", &agents(4)), 1).unwrap();
        tick(&mut s, vec![]);
        // Agents 3 and 2 both send to 1; results arrive sorted by agent id.
        tick(
            &mut s,
            vec![
                out(2, vec![send(1, 1), send(1, 2)]),
                out(3, vec![send(1, 1)]),
            ],
        );
        let (plan, _) = tick(&mut s, vec![]);
        let d = &plan.deliveries[0];
        assert_eq!(d.agent_id, 1);
        let order: Vec<(u64, u64)> = d.messages.iter().map(|m| (m.sender, m.seq)).collect();
        assert_eq!(order, vec![(2, 1), (2, 2), (3, 1)]);
        assert!(d.messages.iter().all(|m| m.sent_tick == 2));
    }

    #[test]
    fn publish_fans_out_and_subscriptions_apply_from_the_next_tick() {
        let m = manifest(
            "",
            "[[agents]]\nname = \"s\"\nmodule = \"a.wasm\"\ncount = 3\nsubscriptions = [\"t\"]\n[[agents]]\nname = \"p\"\nmodule = \"a.wasm\"\n",
        );
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let publish = || Output::Publish {
            topic: "t".into(),
            seq: 1,
            payload: vec![7],
        };
        // Agent 4 subscribes and publishes in the same tick: it does not get
        // its own publication yet (membership changes apply after routing).
        tick(
            &mut s,
            vec![out(4, vec![Output::Subscribe("t".into()), publish()])],
        );
        let (plan, _) = tick(&mut s, vec![out(4, vec![publish()])]);
        assert_eq!(
            plan.deliveries
                .iter()
                .map(|d| d.agent_id)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let (plan, _) = tick(&mut s, vec![out(2, vec![Output::Unsubscribe("t".into())])]);
        assert_eq!(
            plan.deliveries
                .iter()
                .map(|d| d.agent_id)
                .collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        tick(&mut s, vec![out(4, vec![publish()])]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(
            plan.deliveries
                .iter()
                .map(|d| d.agent_id)
                .collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
    }

    #[test]
    fn channels_reach_current_members_only() {
        let mut s = SimState::new(&manifest("", &agents(3)), 1).unwrap();
        tick(
            &mut s,
            vec![
                out(1, vec![Output::Join("c".into())]),
                out(2, vec![Output::Join("c".into())]),
            ],
        );
        let cs = || Output::ChannelSend {
            channel: "c".into(),
            seq: 1,
            payload: vec![],
        };
        tick(
            &mut s,
            vec![out(3, vec![cs()]), out(2, vec![Output::Leave("c".into())])],
        );
        let (plan, _) = tick(&mut s, vec![out(3, vec![cs()])]);
        // Sent while 2 was still a member: both get it.
        assert_eq!(
            plan.deliveries
                .iter()
                .map(|d| d.agent_id)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(
            plan.deliveries
                .iter()
                .map(|d| d.agent_id)
                .collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(plan.deliveries[0].messages[0].kind, kind::CHANNEL);
    }

    #[test]
    fn mailbox_overflow_policies_drop_and_count() {
        for (policy, want) in [
            ("drop-oldest", vec![3u64, 4, 5]),
            ("drop-newest", vec![1, 2, 3]),
        ] {
            let m = manifest(
                &format!("[scheduler]\nmailbox_capacity = 3\nmailbox_overflow = \"{policy}\"\n"),
                &agents(2),
            );
            let mut s = SimState::new(&m, 1).unwrap();
            tick(&mut s, vec![]);
            let (_, sum) = tick(&mut s, vec![out(2, (1..=5).map(|i| send(1, i)).collect())]);
            assert_eq!(sum.dropped, 2);
            assert_eq!(s.counters.dropped, 2);
            let (plan, _) = tick(&mut s, vec![]);
            assert_eq!(
                plan.deliveries[0]
                    .messages
                    .iter()
                    .map(|m| m.seq)
                    .collect::<Vec<_>>(),
                want,
                "{policy}"
            );
        }
    }

    fn task_output(issuer: u64, n: u64, target: u64, priority: i32, deps: Vec<u64>) -> Output {
        Output::ScheduleTask {
            task_id: (issuer << 32) | n,
            target,
            priority,
            payload: vec![n as u8],
            deps,
        }
    }

    fn task_ids(plan: &TickPlan) -> Vec<u64> {
        plan.steps
            .iter()
            .filter_map(|s| s.task.as_ref().map(|t| t.task_id & 0xFFFF_FFFF))
            .collect()
    }

    #[test]
    fn priority_mode_orders_by_priority_then_sequence_within_budget() {
        let m = manifest("[scheduler]\nmode = \"priority\"\nbudget = 3\n", &agents(2));
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let tasks = vec![
            task_output(1, 1, 2, 1, vec![]),
            task_output(1, 2, 2, 5, vec![]),
            task_output(1, 3, 2, 5, vec![]),
            task_output(1, 4, 2, 9, vec![]),
            task_output(1, 5, 2, 0, vec![]),
        ];
        tick(&mut s, vec![out(1, tasks)]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(task_ids(&plan), vec![4, 2, 3]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(task_ids(&plan), vec![1, 5]);
        assert_eq!(s.counters.tasks_completed, 5);
    }

    #[test]
    fn dag_mode_runs_tasks_after_their_dependencies() {
        let m = manifest("[scheduler]\nmode = \"dag\"\n", &agents(2));
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let id = |n: u64| (1u64 << 32) | n;
        // 3 depends on 1 and 2; 4 depends on 3; 2 has the highest priority.
        let tasks = vec![
            task_output(1, 1, 2, 1, vec![]),
            task_output(1, 2, 2, 7, vec![]),
            task_output(1, 3, 2, 100, vec![id(1), id(2)]),
            task_output(1, 4, 2, 100, vec![id(3)]),
        ];
        tick(&mut s, vec![out(1, tasks)]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(task_ids(&plan), vec![2, 1]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(task_ids(&plan), vec![3]);
        let (plan, _) = tick(&mut s, vec![]);
        assert_eq!(task_ids(&plan), vec![4]);
    }

    #[test]
    fn missing_dependencies_are_refused_and_failures_cascade() {
        let m = manifest("[scheduler]\nmode = \"dag\"\n", &agents(2));
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let id = |n: u64| (1u64 << 32) | n;
        let (_, sum) = tick(
            &mut s,
            vec![out(1, vec![task_output(1, 1, 2, 0, vec![id(99)])])],
        );
        assert!(
            matches!(&sum.events[0], Event::TaskRefused { reason, .. } if reason.contains("missing dependency"))
        );
        // A task whose agent faults fails, and its dependents are cancelled.
        tick(
            &mut s,
            vec![out(
                1,
                vec![
                    task_output(1, 2, 2, 0, vec![]),
                    task_output(1, 3, 1, 0, vec![id(2)]),
                ],
            )],
        );
        let mut faulted = out(2, vec![]);
        faulted.fault = Some(Fault::Trap("UnreachableCodeReached".into()));
        let (plan, _) = tick(&mut s, vec![faulted]);
        assert_eq!(task_ids(&plan), vec![2]);
        assert!(s.tasks.failed.contains(&id(2)) && s.tasks.failed.contains(&id(3)));
        assert!(s.tasks.open.is_empty());
    }

    #[test]
    fn tenant_step_quota_rotates_deterministically() {
        let m = manifest(
            "[[tenants]]\nname = \"default\"\nmax_steps_per_tick = 2\n",
            &agents(5),
        );
        let mut s = SimState::new(&m, 1).unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (plan, _) = tick(&mut s, vec![]);
            assert!(!plan.step_all);
            seen.push(plan.steps.iter().map(|x| x.agent_id).collect::<Vec<_>>());
        }
        assert_eq!(
            seen,
            vec![vec![1, 2], vec![3, 4], vec![1, 5], vec![2, 3], vec![4, 5]]
        );
    }

    #[test]
    fn tenant_fuel_quota_throttles_the_next_ticks() {
        let m = manifest(
            "[[tenants]]\nname = \"default\"\nmax_fuel_per_tick = 100\n",
            &agents(2),
        );
        let mut s = SimState::new(&m, 1).unwrap();
        let plan = s.begin_tick();
        let fuel = BTreeMap::from([(0u32, 250u64)]);
        s.finish_tick(&plan, &[], &[], [0; 4], &fuel, 2);
        // 150 over quota: throttled for two ticks (paying 100 per tick).
        let (p1, _) = tick(&mut s, vec![]);
        assert!(p1.steps.is_empty() && !p1.step_all);
        let (p2, _) = tick(&mut s, vec![]);
        assert!(p2.steps.is_empty() && !p2.step_all, "{:?}", s.usage);
        let (p3, sum) = tick(&mut s, vec![]);
        assert!(p3.step_all);
        assert_eq!(sum.steps, 2);
    }

    #[test]
    fn tenant_agent_and_inference_quotas() {
        let m = manifest(
            "[[tenants]]\nname = \"default\"\nmax_agents = 2\nmax_inference_per_tick = 1\n",
            &agents(2),
        );
        let mut s = SimState::new(&m, 1).unwrap();
        let outcome = s.apply_inputs(&[Input::Spawn {
            name: "x".into(),
            module: "a.wasm".into(),
            tenant: "default".into(),
            priority: 0,
            memory: 1 << 20,
            fuel: 1000,
        }]);
        assert!(matches!(&outcome[0], InputOutcome::Refused(r) if r.contains("limit of 2 agents")));
        tick(&mut s, vec![]);
        let infer = |r| Output::Infer {
            request_id: r,
            model: "echo".into(),
            input: vec![],
        };
        let (_, sum) = tick(&mut s, vec![out(1, vec![infer(1)]), out(2, vec![infer(1)])]);
        assert_eq!(s.infer_queue.len(), 1);
        assert_eq!(
            sum.events,
            vec![Event::InferRefused {
                agent: 2,
                request: 1
            }]
        );
    }

    #[test]
    fn restart_intensity_then_stop() {
        let m = manifest(
            "",
            "[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\nrestart = { max = 2, within = 10 }\n",
        );
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let fault = || {
            let mut r = out(1, vec![]);
            r.fault = Some(Fault::OutOfFuel);
            r
        };
        let mut restarts = 0;
        for _ in 0..4 {
            let (plan, sum) = tick(&mut s, vec![fault()]);
            restarts += plan.restarts.len();
            if let Event::Fault { action, .. } = &sum.events[0]
                && action.starts_with("stopped")
            {
                break;
            }
        }
        assert_eq!(restarts, 2);
        assert!(matches!(s.agents[&1].status, AgentStatus::Stopped { .. }));
    }

    /// The restart schedule and live count that `begin_tick` keeps instead
    /// of scanning every agent survive a save and load (they are rebuilt):
    /// a faulted agent restarts at the same tick, in agent order, and the
    /// state hashes stay equal.
    #[test]
    fn restarts_and_live_count_survive_a_save_and_load() {
        let m = manifest("", &agents(5));
        let mut s = SimState::new(&m, 1).unwrap();
        tick(&mut s, vec![]);
        let fault = |id| {
            let mut r = out(id, vec![]);
            r.fault = Some(Fault::Trap("unreachable".into()));
            r
        };
        let (_, sum) = tick(&mut s, vec![fault(4), fault(2)]);
        assert_eq!(sum.live, 3);
        let bytes = shm_protocol::codec::encode(&s).unwrap();
        let mut loaded: SimState = shm_protocol::codec::decode(&bytes).unwrap();
        assert_eq!(loaded, s);
        let (pa, sa) = tick(&mut s, vec![]);
        let (pb, sb) = tick(&mut loaded, vec![]);
        assert_eq!(pa.restarts, vec![2, 4]);
        assert_eq!(pb.restarts, vec![2, 4]);
        assert_eq!((sa.live, sa.steps, sa.hash), (sb.live, sb.steps, sb.hash));
        assert_eq!(sa.live, 5);
    }

    #[test]
    fn same_inputs_same_hash_different_seed_different_hash() {
        let run = |seed| {
            let mut s = SimState::new(&manifest("", &agents(3)), seed).unwrap();
            for _ in 0..3 {
                tick(&mut s, vec![out(1, vec![send(2, 1)])]);
            }
            s.hash
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
