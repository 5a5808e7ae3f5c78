//! The supervisor's deterministic state and the tick state machine.
//!
//! Everything here is a pure function of the manifest, the seed, the
//! journaled external inputs and the workers' (deterministic) results: no
//! clocks, no hash-map iteration order, no arrival order.  [`SimState`] is
//! what a snapshot stores besides the agents' own states.
//!
//! A tick `t` goes: [`SimState::apply_inputs`] (the inputs journaled for
//! `t`, in [`inputs`]) → [`SimState::begin_tick`] (pick spawns, restarts,
//! deliveries, steps and stops, in [`plan`]) → the workers execute the plan
//! → [`SimState::finish_tick`] (the barrier's named phases: faults, routing
//! of every output in canonical order, task completion, membership changes,
//! stops, quotas, the tick hash, in [`barrier`]).

mod barrier;
mod inference;
pub use inference::UNANSWERABLE;
mod inputs;
mod plan;
#[cfg(test)]
mod tests;

pub use barrier::{Seal, WorkReport};

use crate::ctl::{ErrorCode, Refusal};
use crate::manifest::{Manifest, Mode, Overflow, RestartPolicy, Tenant};
use serde::{Deserialize, Serialize};
use shm_protocol::outputs::Offset;
use shm_protocol::worker::{
    AgentLimits, AgentResult, Delivery, Fault, MessageRef, Messages, SpawnOrder, StepOrder,
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

impl ModuleRec {
    /// The module's hash as pinned (manifest, accepted spawn or upgrade) or,
    /// failing that, as loaded (hex).
    pub fn pinned_hash(&self) -> Option<&str> {
        self.expected_blake3.as_deref()
    }
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

/// An external input, applied at a tick boundary and journaled: one of the
/// [`Command`](crate::command::Command)s for which
/// [`is_input`](crate::command::Command::is_input) holds (the others are
/// refused if they reach the state machine).  The one command type, under
/// the name the state machine and the journal use for it.
pub use crate::command::Command as Input;

/// A model version loaded while the run ran (`load-model`): what a replay,
/// a resumed or a forked run needs to load the same bytes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedModel {
    /// The file it was read from (absolute).
    pub path: String,
    /// BLAKE3 of its bytes (hex), pinned when the load was accepted.
    pub blake3: String,
    /// Largest batch of one model run.
    pub max_batch: u32,
    /// Ticks between a request and its answer.
    pub latency_ticks: u32,
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
    /// Agents to restart (fresh instances of their current module).
    pub restarts: Vec<SpawnOrder>,
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
    /// Model (`id` or `id@version`), as the agent named it.
    pub model: String,
    /// The model version that answers it, fixed when it was asked
    /// (`id@version` for a declared model; else `model` as named).
    pub pinned: String,
    /// The tick it was asked in.
    pub asked: u64,
    /// The tick after whose barrier its answer is delivered (the agent
    /// receives it at `due + 1` = `asked + latency_ticks`).
    pub due: u64,
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

/// A decision the run took that its inputs alone do not determine (it
/// depends on wall-clock time or on which process failed), journaled with
/// its tick so that replays take it again instead of diverging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The wall-clock watchdog stopped `agent`'s call: its tick is
    /// normalised (no outputs, no fuel) and it faults with
    /// [`Fault::Watchdog`]; replays preempt it at the same tick.
    Watchdog {
        /// The agent.
        agent: u64,
    },
    /// `agent` crashed its worker process at this tick in every retry, and
    /// alone in a scratch worker: it is removed without being called and
    /// faults with [`Fault::CrashedWorker`] (stopped).
    Quarantine {
        /// The agent.
        agent: u64,
    },
    /// A worker kept failing at this tick with no single agent to blame:
    /// the run stops here with `reason`.
    GiveUp {
        /// Why, naming the limit.
        reason: String,
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
    /// Messages waiting for delivery in the next tick, encoded as the
    /// workers receive them (serialized as the messages themselves).
    #[serde(with = "mailbox_serde")]
    pub mailboxes: BTreeMap<u64, Messages>,
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
    /// Round-robin rotation over the agents chosen for a tick when the
    /// per-tick budget is smaller than their number.
    pub budget_rotation: u64,
    /// Agents to spawn in the next tick.
    pub pending_spawns: BTreeSet<u64>,
    /// Agents to stop in the next tick.
    pub pending_stops: BTreeSet<u64>,
    /// Agents to move to another module in the next tick.
    pub pending_upgrades: BTreeMap<u64, u32>,
    /// Inference requests collected at the current barrier (moved to
    /// [`SimState::infer_pending`] right after it).
    pub infer_queue: Vec<InferRequest>,
    /// Inference requests asked and not answered yet, by the tick after
    /// whose barrier their answers are delivered; in the order they were
    /// asked.
    pub infer_pending: BTreeMap<u64, Vec<InferRequest>>,
    /// `id@version` → its `latency_ticks` (1 when not listed).
    pub model_latency: BTreeMap<String, u32>,
    /// Counters.
    pub counters: Counters,
    // --- inference ---
    /// Model id → its current version (the first declared one until an
    /// [`Input::SwapModel`]).
    pub model_versions: BTreeMap<String, String>,
    /// Model id → every version loaded now (declared by the manifest or
    /// loaded by [`Input::LoadModel`], less those unloaded).
    pub model_catalog: BTreeMap<String, BTreeSet<String>>,
    /// `id@version` → where a version loaded by [`Input::LoadModel`] came
    /// from (manifest models are described by the manifest).
    pub loaded_models: BTreeMap<String, LoadedModel>,
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
    /// The barrier's routing scratch, empty between ticks: kept so that
    /// each tick writes its messages into memory the last one used (a
    /// new one per tick was written into cold memory — a quarter of the
    /// barrier's own time at 10,000 messages).
    outbox: Outbox,
}

/// Derived data never makes two states differ.
impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

/// Messages routed at a tick barrier, in canonical order, not yet in the
/// mailboxes (see [`SimState::deliver`]).  A direct message stays in the
/// result that sent it until it is delivered (its key says where): only
/// messages the barrier makes (topic and channel copies, notices) are
/// kept here, so each direct message is written once, into its mailbox.
#[derive(Debug, Clone, Default)]
struct Outbox {
    /// Messages made while routing.
    msgs: Vec<WireMessage>,
    /// (recipient, source), in canonical order.
    keys: Vec<(u64, Source)>,
}

/// Where a routed message is: the index of a message in
/// [`Outbox::msgs`] with [`Source::MADE`] set, or else `result << 32 |
/// offset`, a direct message of the tick's results (where it starts in
/// the result's outputs block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source(u64);

impl Source {
    const MADE: u64 = 1 << 63;
}

impl Outbox {
    fn push(&mut self, to: u64, msg: WireMessage) {
        self.keys
            .push((to, Source(Source::MADE | self.msgs.len() as u64)));
        self.msgs.push(msg);
    }

    /// Groups the messages by recipient.  Keys were pushed in canonical
    /// order: a stable sort by recipient keeps every recipient's messages
    /// in that order.  A radix sort (two byte-wide passes for ids below
    /// 65,536; digits every key shares are skipped) instead of a comparison
    /// sort, which was a seventh of the supervisor's time in a tick
    /// routing 10,000 messages.
    fn sort(&mut self) {
        radsort::sort_by_key(&mut self.keys, |k| k.0);
    }

    /// The output at `at` of result `result`, a direct message to `to`.
    fn push_send(&mut self, to: u64, result: usize, at: Offset) {
        self.keys
            .push((to, Source(((result as u64) << 32) | u64::from(at))));
    }

    /// The message `src` names, in the outbox or in `results` (`None` if
    /// it is not there or is not a direct message).
    fn view<'a>(
        &'a self,
        src: Source,
        results: &'a [AgentResult],
        tick: u64,
    ) -> Option<MessageRef<'a>> {
        if src.0 & Source::MADE != 0 {
            return self
                .msgs
                .get((src.0 & !Source::MADE) as usize)
                .map(WireMessage::view);
        }
        let r = results.get((src.0 >> 32) as usize)?;
        let (_, seq, payload) = r.outputs.send_at(src.0 as Offset)?;
        Some(MessageRef {
            kind: kind::DIRECT,
            sender: r.agent_id,
            sent_tick: tick,
            seq,
            topic: "",
            payload,
        })
    }
}

/// The mailboxes in snapshots: each as the sequence of its messages.
mod mailbox_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use shm_protocol::worker::{Messages, WireMessage};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(m: &BTreeMap<u64, Messages>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(id, mb)| (id, mb.as_seq())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, Messages>, D::Error> {
        let m = BTreeMap::<u64, Vec<WireMessage>>::deserialize(d)?;
        m.into_iter()
            .map(|(id, v)| match u32::try_from(v.len()) {
                Ok(_) => Ok((id, Messages::from(v))),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "the mailbox of agent {id} holds more than {} messages",
                    u32::MAX
                ))),
            })
            .collect()
    }
}

fn notice(seq: u64, tick: u64, text: String) -> WireMessage {
    WireMessage {
        kind: kind::NOTICE,
        sender: RUNTIME_SENDER,
        sent_tick: tick,
        seq,
        topic: String::new(),
        payload: text.into(),
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
            budget_rotation: 0,
            pending_spawns: BTreeSet::new(),
            pending_stops: BTreeSet::new(),
            pending_upgrades: BTreeMap::new(),
            infer_queue: Vec::new(),
            infer_pending: BTreeMap::new(),
            model_latency: BTreeMap::new(),
            counters: Counters::default(),
            model_versions: BTreeMap::new(),
            model_catalog: BTreeMap::new(),
            loaded_models: BTreeMap::new(),
            derived: Derived::default(),
        };
        // --- inference: the first declared version is current ---
        for m in &manifest.models {
            s.model_versions
                .entry(m.id.clone())
                .or_insert_with(|| m.version.clone());
            s.model_catalog
                .entry(m.id.clone())
                .or_default()
                .insert(m.version.clone());
            s.model_latency
                .insert(format!("{}@{}", m.id, m.version), m.latency_ticks.max(1));
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
            })
            .map_err(|e| e.message)?;
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
    ) -> Result<u64, Refusal> {
        if self.names.contains_key(&name) {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("an agent named `{name}` already exists"),
            ));
        }
        let t = self.tenants.get(tenant as usize).ok_or_else(|| {
            Refusal::new(ErrorCode::UnknownTenant, format!("unknown tenant {tenant}"))
        })?;
        let u = &self.usage[tenant as usize];
        if t.max_agents.is_some_and(|m| u.agents + 1 > m) {
            return Err(Refusal::new(
                ErrorCode::Limit,
                format!(
                    "tenant `{}` is at its limit of {} agents",
                    t.name,
                    t.max_agents.unwrap_or(0)
                ),
            ));
        }
        if t.max_memory
            .is_some_and(|m| u.memory + limits.memory_bytes > m)
        {
            return Err(Refusal::new(
                ErrorCode::Limit,
                format!(
                    "tenant `{}` would exceed its memory quota of {} bytes",
                    t.name,
                    t.max_memory.unwrap_or(0)
                ),
            ));
        }
        if self.next_agent_id > MAX_AGENT_ID {
            return Err(Refusal::new(ErrorCode::Limit, "agent ids exhausted"));
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
    fn add_task(&mut self, mut task: Task) -> Result<(), Refusal> {
        let dep = |m: String| Refusal::new(ErrorCode::BadDependency, m);
        if !self.agents.contains_key(&task.agent) {
            return Err(Refusal::new(
                ErrorCode::UnknownAgent,
                format!("task {:#x}: no agent {}", task.id, task.agent),
            ));
        }
        if self.tasks.open.contains_key(&task.id)
            || self.tasks.completed.contains(&task.id)
            || self.tasks.failed.contains(&task.id)
        {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("task {:#x} already exists", task.id),
            ));
        }
        for d in &task.deps {
            if *d == task.id {
                return Err(dep(format!(
                    "task {:#x} depends on itself (cycle)",
                    task.id
                )));
            }
            if self.tasks.failed.contains(d) {
                return Err(dep(format!(
                    "task {:#x} depends on failed task {d:#x}",
                    task.id
                )));
            }
            if !self.tasks.open.contains_key(d) && !self.tasks.completed.contains(d) {
                return Err(dep(format!(
                    "task {:#x} depends on unknown task {d:#x} (missing dependency)",
                    task.id
                )));
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
        let cap = self.mailbox_cap();
        let mb = self.mailboxes.entry(to).or_default();
        if mb.len() >= cap {
            *drops += 1;
            self.counters.dropped += 1;
            match self.overflow {
                Overflow::DropOldest => mb.drop_front(1),
                Overflow::DropNewest => return,
            }
        }
        mb.push(msg.view());
        self.counters.messages += 1;
    }

    /// Puts the messages of `out` (sorted by [`Outbox::sort`]) into the
    /// mailboxes: exactly what [`SimState::push_message`] on each message
    /// in `out`'s order does, as long as no agent's status changes
    /// meanwhile, with one look-up per recipient instead of two per
    /// message, and each message encoded straight into its mailbox.
    ///
    /// One recipient's messages in a row: of its `m` queued and `n` new
    /// ones, `grow = min(n, capacity − m)` fit.  Dropping the oldest, each
    /// of the other `n − grow` pushes drops the mailbox's first message —
    /// so the first `n − grow` of the queued-then-new sequence go; dropping
    /// the newest, the last `n − grow` new ones are refused.
    fn deliver(&mut self, mut out: Outbox, results: &[AgentResult], tick: u64, drops: &mut u64) {
        let cap = self.mailbox_cap();
        let keys = std::mem::take(&mut out.keys);
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            let to = group[0].0;
            let live = matches!(
                self.agents.get(&to).map(|a| &a.status),
                Some(AgentStatus::Live | AgentStatus::Pending)
            );
            if !live {
                self.counters.undeliverable += group.len() as u64;
                continue;
            }
            let new = group
                .iter()
                .filter_map(|&(_, src)| out.view(src, results, tick));
            let mb = self.mailboxes.entry(to).or_default();
            if mb.len() + group.len() <= cap {
                // Everything fits (the usual case): one pass, no count first.
                mb.reserve(group.len());
                let before = mb.len();
                for m in new {
                    mb.push(m);
                }
                self.counters.messages += (mb.len() - before) as u64;
                continue;
            }
            let n = new.clone().count();
            let grow = n.min(cap.saturating_sub(mb.len()));
            let dropped = n - grow;
            *drops += dropped as u64;
            self.counters.dropped += dropped as u64;
            mb.reserve(grow);
            match self.overflow {
                Overflow::DropOldest => {
                    let from_queue = dropped.min(mb.len());
                    mb.drop_front(from_queue);
                    for m in new.skip(dropped - from_queue) {
                        mb.push(m);
                    }
                    self.counters.messages += n as u64;
                }
                Overflow::DropNewest => {
                    for m in new.take(grow) {
                        mb.push(m);
                    }
                    self.counters.messages += grow as u64;
                }
            }
        }
        out.msgs.clear();
        out.keys = keys;
        out.keys.clear();
        self.derived.outbox = out;
    }

    /// The mailbox capacity, in messages: the manifest's, at most
    /// `u32::MAX` (what a [`Messages`] block counts; a manifest asking for
    /// more is refused, a snapshot saying more is held to it).
    fn mailbox_cap(&self) -> usize {
        self.mailbox_capacity.min(u64::from(u32::MAX)) as usize
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

    /// BLAKE3 of the whole supervisor state (for snapshots and `verify`).
    pub fn state_hash(&self) -> [u8; 32] {
        let bytes = shm_protocol::codec::encode(self).unwrap_or_default();
        *blake3::hash(&bytes).as_bytes()
    }
}
