//! The live state the supervisor publishes on the state board for read-only
//! viewers (`lockstep-ui`).  Encoded with postcard; versioned by
//! [`LIVE_STATE_VERSION`] so a viewer can refuse a board it cannot read.

use serde::{Deserialize, Serialize};

/// Version of [`LiveState`]'s encoding.
pub const LIVE_STATE_VERSION: u32 = 4;

/// Status of one child process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// Name (e.g. `worker-0`).
    pub name: String,
    /// Role (`worker`, `inference-host`).
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// `starting`, `ready`, `exited: …`.
    pub state: String,
    /// Last ping round trip in nanoseconds (0 if none).
    pub last_rtt_ns: u64,
}

/// Everything a viewer shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// [`LIVE_STATE_VERSION`].
    pub version: u32,
    /// What the supervisor is doing (`starting`, `running`, `stopped`).
    pub phase: String,
    /// Current tick (0 before the first).
    pub tick: u64,
    /// Child processes.
    pub children: Vec<ChildStatus>,
    /// Recent log lines (newest last).
    pub log: Vec<String>,
    /// Run-wide counters (all zero outside a run, e.g. `lockstep ping`).
    pub stats: RunStats,
    /// Agent rows, ascending by id: at most [`MAX_AGENT_ROWS`] of them,
    /// followed by up to [`MAX_EXTRA_ROWS`] agents beyond those that are not
    /// live (so that a fault is always visible).
    pub agents: Vec<AgentRow>,
    /// The message flow over the last ticks.
    pub flow: Flow,
}

/// Ticks the message flow counts over: the current tick and the
/// `FLOW_WINDOW_TICKS - 1` before it.
pub const FLOW_WINDOW_TICKS: u64 = 64;
/// Most message edges on the board (the heaviest in the window).
pub const MAX_FLOW_EDGES: usize = 64;

/// Who sent to whom over the last [`FLOW_WINDOW_TICKS`] ticks: the
/// heaviest edges, counted as the barrier routes the agents' outputs (a
/// publication or a channel message counts once, whatever the number of
/// recipients; messages from the runtime — `ctl send`, notices, inference
/// answers — are not edges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The ticks counted (0: the supervisor counts no flow, e.g. `lockstep
    /// ping`).
    pub window_ticks: u64,
    /// Distinct edges in the window (of which at most
    /// [`MAX_FLOW_EDGES`] are listed).
    pub distinct: u64,
    /// Messages sent in the window, over every edge.
    pub messages: u64,
    /// The heaviest edges: by count, descending, then by edge.
    pub edges: Vec<FlowEdge>,
}

/// One sender → receiver edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowEdge {
    /// Sending agent.
    pub from: u64,
    /// Where it sent.
    pub to: FlowTarget,
    /// Messages on this edge in the window.
    pub count: u64,
}

/// The receiving end of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowTarget {
    /// A direct message to an agent.
    Agent(u64),
    /// A publication on a topic.
    Topic(String),
    /// A message to a channel's members.
    Channel(String),
}

impl FlowTarget {
    /// `direct`, `topic` or `channel`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Agent(_) => "direct",
            Self::Topic(_) => "topic",
            Self::Channel(_) => "channel",
        }
    }
}

impl std::fmt::Display for FlowTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agent(id) => write!(f, "agent {id}"),
            Self::Topic(t) => write!(f, "topic {t}"),
            Self::Channel(c) => write!(f, "channel {c}"),
        }
    }
}

/// Most agent rows in order of id.
pub const MAX_AGENT_ROWS: usize = 512;
/// Most further rows for agents that are not live.
pub const MAX_EXTRA_ROWS: usize = 128;

/// Run-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// Agents that are live.
    pub live: u64,
    /// Agents that exist (any status).
    pub total: u64,
    /// Steps so far.
    pub steps: u64,
    /// Messages delivered so far.
    pub messages: u64,
    /// Messages dropped by mailbox overflow so far.
    pub dropped: u64,
    /// Agent faults so far.
    pub faults: u64,
    /// Agent restarts so far.
    pub restarts: u64,
    /// Fuel consumed so far.
    pub fuel: u64,
    /// Tasks not yet run.
    pub tasks_open: u64,
    /// Messages waiting in mailboxes.
    pub queued: u64,
    /// Tick wall time quantiles so far, µs.
    pub tick_p50_us: u64,
    /// See `tick_p50_us`.
    pub tick_p99_us: u64,
    /// Worker processes recovered after a crash so far.
    pub recoveries: u64,
    /// Inference requests asked and not answered yet (in flight).
    pub infer_pending: u64,
    /// Of the recent ticks (up to 1,024), how many waited for inference
    /// answers due at them…
    pub infer_waited_ticks: u64,
    /// … and how long in all, µs (0: the pipeline hid the models' latency).
    pub infer_wait_us: u64,
    /// The inference host's utilisation over the recent ticks, in
    /// thousandths (its model time over their wall time).
    pub infer_busy_permille: u64,
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRow {
    /// Agent id.
    pub id: u64,
    /// Instance name.
    pub name: String,
    /// Tenant index.
    pub tenant: u32,
    /// `pending`, `live`, `faulted: …` or `stopped: …`.
    pub status: String,
    /// Messages waiting in its mailbox.
    pub queued: u64,
}
