//! Wire types between the supervisor and a worker (`Down::Worker` /
//! `Up::Worker`), postcard-encoded.
//!
//! The per-tick exchange is one [`TickWork`] down and one [`TickDone`] up per
//! worker.  Everything a worker reports is data the supervisor validates: an
//! agent id it does not host, a result for an agent that was not asked to
//! run, or an output that breaks a limit is a protocol error of that worker.

pub use crate::messages::{MessageRef, Messages};
pub use crate::outputs::{OutputRef, Outputs};
pub use crate::payload::Payload;
use serde::{Deserialize, Serialize};

/// Per-agent resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLimits {
    /// Largest linear memory in bytes.
    pub memory_bytes: u64,
    /// Fuel per call into the agent.
    pub fuel_per_call: u64,
    /// Largest table size (elements).
    pub table_elements: u32,
    /// Largest payload of one output (bytes).
    pub max_payload: u32,
    /// Most outputs per call.
    pub max_outputs_per_call: u32,
    /// Most output bytes (payloads) per tick, over all of the agent's calls.
    pub max_output_bytes_per_tick: u32,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            fuel_per_call: 10_000_000,
            table_elements: 10_000,
            max_payload: 64 << 10,
            max_outputs_per_call: 1024,
            max_output_bytes_per_tick: 1 << 20,
        }
    }
}

/// A message as delivered to an agent (see docs/abi.md, "Message").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Kind: 0 direct, 1 topic, 2 channel, 3 inference result, 4 inference
    /// error, 5 runtime notice.
    pub kind: u32,
    /// Sender agent id (`u64::MAX` for the runtime).
    pub sender: u64,
    /// Tick in which it was produced.
    pub sent_tick: u64,
    /// Sender sequence number (request id for inference answers).
    pub seq: u64,
    /// Topic or channel name (empty for direct messages).
    pub topic: String,
    /// Payload.
    pub payload: Payload,
}

/// A task handed to an agent's step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    /// Task id (`(issuer << 32) | n`).
    pub task_id: u64,
    /// Priority.
    pub priority: i32,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// One agent to start (instantiate + `agent_init`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnOrder {
    /// The new agent's id (below 2³²).
    pub agent_id: u64,
    /// Module previously loaded with [`WorkerCommand::LoadModule`].
    pub module_id: u32,
    /// Its tenant (for per-tenant fuel sums).
    pub tenant: u32,
    /// Its limits.
    pub limits: AgentLimits,
}

/// One step to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOrder {
    /// The agent.
    pub agent_id: u64,
    /// The task, if the scheduler runs one.
    pub task: Option<TaskRef>,
}

/// Hot-swap of an agent to another module at the start of a tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeOrder {
    /// The agent.
    pub agent_id: u64,
    /// The new module (already loaded).
    pub module_id: u32,
}

/// Messages for one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The recipient.
    pub agent_id: u64,
    /// Messages, in canonical order.
    pub messages: Messages,
}

/// The work of one tick for one worker.  The worker performs, in order:
/// evictions, spawns (ascending agent id), restarts, upgrades, deliveries
/// (each agent's messages in the given order), steps, stops.
///
/// Agents in `preempt` are not called at all this tick: their instance is
/// created, restarted or upgraded as ordered, then reset to a fresh,
/// uninitialised instance, and they are reported exactly as an agent whose
/// call the wall-clock watchdog stopped ([`Fault::Watchdog`], no fuel, no
/// calls, no outputs).  That is how a journaled watchdog trip is replayed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickWork {
    /// The tick.
    pub tick: u64,
    /// Agents to start.
    pub spawns: Vec<SpawnOrder>,
    /// Agents to re-create from scratch and re-`init` (restart policy); an
    /// agent the worker has no instance of (its spawn could not be
    /// instantiated) is created.
    pub restarts: Vec<SpawnOrder>,
    /// Agents to move to a new module version (state carried over, then
    /// `agent_migrate` if the new module exports it).
    pub upgrades: Vec<UpgradeOrder>,
    /// Messages to deliver.
    pub deliveries: Vec<Delivery>,
    /// Step every live agent this worker hosts (ascending id), in addition
    /// to `steps` (round-robin mode).
    pub step_all: bool,
    /// Individual steps (tasks, or a subset of agents).
    pub steps: Vec<StepOrder>,
    /// Agents to shut down (`agent_shutdown`) and drop.
    pub stops: Vec<u64>,
    /// Which agents report telemetry (wall time, memory size) this tick.
    pub sample: Sample,
    /// Agents to remove without calling them, before anything else
    /// (quarantine of an agent that crashed its worker).
    pub evict: Vec<u64>,
    /// Agents stopped by a journaled watchdog trip: not called (see above).
    pub preempt: Vec<u64>,
    /// Whether the wall-clock watchdog may stop calls this tick.  Off when
    /// recorded ticks are re-executed (replay, recovery): fuel bounds every
    /// call anyway, and a trip there could not be reproduced.
    pub watchdog: bool,
}

/// Which agents report telemetry with their results in a tick: their
/// calls' wall time and their memory size.  Telemetry never reaches a hash
/// or the journal, so which agents are sampled does not change a run.
///
/// ```
/// use shm_protocol::worker::Sample;
/// // Each agent once every 4 ticks, a quarter of them in each tick.
/// let s = Sample::slice(4, 6);
/// assert!(s.covers(2) && s.covers(10) && !s.covers(3));
/// assert!(Sample::All.covers(3) && !Sample::None.covers(3));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sample {
    /// No agent.
    #[default]
    None,
    /// Every agent called.
    All,
    /// The agents whose id has `phase` in the bits of `mask`
    /// (`id & mask == phase`).
    Slice {
        /// The low bits compared.
        mask: u64,
        /// Their value in the agents sampled.
        phase: u64,
    },
}

impl Sample {
    /// The slice of agents sampled at `tick` when each agent is sampled
    /// once every `every` ticks (a power of two; another number is rounded
    /// up to the next power of two): the agents whose id is `tick` modulo `every`, so that
    /// every tick carries an equal share of the samples.
    pub fn slice(every: u64, tick: u64) -> Self {
        let mask = every
            .max(1)
            .checked_next_power_of_two()
            .map_or(u64::MAX, |e| e - 1);
        Sample::Slice {
            mask,
            phase: tick & mask,
        }
    }

    /// Whether the agent `agent_id` is sampled.
    #[inline]
    pub fn covers(self, agent_id: u64) -> bool {
        match self {
            Sample::None => false,
            Sample::All => true,
            Sample::Slice { mask, phase } => agent_id & mask == phase,
        }
    }
}

/// Why an agent call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// A wasm trap (the wasmtime trap message, e.g. "wasm `unreachable`
    /// instruction executed").
    Trap(String),
    /// The call used more than its fuel.
    OutOfFuel,
    /// `memory.grow` beyond the agent's limit.
    MemoryLimit,
    /// A table grew beyond its limit.
    TableLimit,
    /// An import was called with an invalid argument.
    BadHostCall(String),
    /// An export returned a non-zero code.
    AgentError(i32),
    /// The call ran past the wall-clock watchdog.  When it happens is not
    /// deterministic, so the worker normalises the agent's whole tick (no
    /// outputs, no fuel, no calls, a fresh uninitialised instance) and the
    /// supervisor journals the trip, which replays reproduce
    /// ([`TickWork::preempt`]).
    Watchdog,
    /// The agent could not be instantiated.
    Instantiate(String),
    /// The supervisor referred to an agent or module the worker does not
    /// have.
    Unknown(String),
    /// The agent crashed its worker process, repeatedly, at the same tick;
    /// the supervisor quarantined it (deterministic: every run crashes the
    /// same way).
    CrashedWorker,
}

impl Fault {
    /// Whether the run may treat this fault as a result (restart policy):
    /// every fault but `Unknown`, which means the worker's state diverged
    /// from the supervisor's (a failure of the worker, recovered as such).
    /// A watchdog trip is not a function of the agent's inputs, but it is
    /// journaled as a decision and replayed, so it is a result too.
    pub fn is_deterministic(&self) -> bool {
        !matches!(self, Fault::Unknown(_))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Trap(m) => write!(f, "trap: {m}"),
            Fault::OutOfFuel => f.write_str("out of fuel"),
            Fault::MemoryLimit => f.write_str("memory limit exceeded"),
            Fault::TableLimit => f.write_str("table limit exceeded"),
            Fault::BadHostCall(m) => write!(f, "bad host call: {m}"),
            Fault::AgentError(c) => write!(f, "agent error {c}"),
            Fault::Watchdog => f.write_str("wall-clock watchdog expired"),
            Fault::Instantiate(m) => write!(f, "instantiation failed: {m}"),
            Fault::Unknown(m) => write!(f, "unknown: {m}"),
            Fault::CrashedWorker => f.write_str("crashed its worker process (quarantined)"),
        }
    }
}

/// Something an agent asked for during a call, applied by the supervisor at
/// the tick barrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Direct message.
    Send {
        /// Recipient.
        to: u64,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: Payload,
    },
    /// Topic publication.
    Publish {
        /// Topic.
        topic: String,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: Payload,
    },
    /// Channel message.
    ChannelSend {
        /// Channel.
        channel: String,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: Payload,
    },
    /// Subscribe to a topic.
    Subscribe(String),
    /// Unsubscribe from a topic.
    Unsubscribe(String),
    /// Join a channel.
    Join(String),
    /// Leave a channel.
    Leave(String),
    /// Schedule a task.
    ScheduleTask {
        /// Its id (`(issuer << 32) | n`).
        task_id: u64,
        /// The agent that runs it.
        target: u64,
        /// Priority.
        priority: i32,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Tasks it depends on.
        deps: Vec<u64>,
    },
    /// Inference request.
    Infer {
        /// Request id (per agent, from 1).
        request_id: u64,
        /// Model (`id` or `id@version`).
        model: String,
        /// Input tensor (docs/abi.md layout).
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
    /// Log line.
    Log {
        /// 0 error … 4 trace.
        level: u8,
        /// Text.
        line: String,
    },
}

/// What one agent did in one tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResult {
    /// The agent.
    pub agent_id: u64,
    /// Fuel consumed by all its calls this tick.
    pub fuel: u64,
    /// Calls made into it (init, receives, step, shutdown).
    pub calls: u32,
    /// Its outputs, in the order it produced them.
    pub outputs: Outputs,
    /// The fault that ended its last call, if any (the agent is then
    /// `faulted` until restarted).
    pub fault: Option<Fault>,
    /// Wall time of its calls (only when [`TickWork::sample`] covers it), ns.
    pub wall_ns: u64,
    /// Agent-level log lines suppressed by rate limiting this tick.
    pub logs_suppressed: u32,
    /// Size of its linear memory after its calls (pages × 64 KiB), bytes;
    /// only when [`TickWork::sample`] covers it, else 0.  Telemetry, like `wall_ns`: never
    /// part of a hash or of the journal.
    pub memory_bytes: u64,
}

impl AgentResult {
    /// Appends postcard's encoding of `(agent_id, fuel, calls, &outputs,
    /// &fault, logs_suppressed)` — what the tick hash covers of a result
    /// (not its telemetry) — to `out`.  The outputs are copied as they are:
    /// a block's count and bytes are the encoding of the vector of its
    /// outputs.
    pub fn encode_hashed(&self, out: &mut Vec<u8>) {
        use crate::codec::{append_array, encode_into, put_varint};
        let mut b = [0u8; 40];
        let mut n = put_varint(&mut b, 0, self.agent_id);
        n = put_varint(&mut b, n, self.fuel);
        n = put_varint(&mut b, n, u64::from(self.calls));
        n = put_varint(&mut b, n, self.outputs.len() as u64);
        append_array(out, &b, n);
        out.extend_from_slice(self.outputs.as_bytes());
        // Encoding into a vector cannot fail.
        let _ = encode_into(&(&self.fault, self.logs_suppressed), out);
    }
}

/// Result of [`TickWork`].
///
/// To keep the per-tick message small with thousands of agents, only agents
/// that produced outputs, faulted, were spawned/stopped, or were timed get an
/// [`AgentResult`]; every called agent is folded into `digest`, a multiset
/// hash (lane-wise wrapping sum of BLAKE3(agent id, fuel, calls)) that does
/// not depend on which worker hosted which agent, and into the per-tenant
/// fuel sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickDone {
    /// The tick.
    pub tick: u64,
    /// Agents with something to report, ascending agent id.
    pub results: Vec<AgentResult>,
    /// Number of agents called.
    pub agents_called: u32,
    /// Number of calls made (inits, receives, steps, shutdowns).
    pub calls: u64,
    /// Fuel consumed, per tenant (ascending tenant id).
    pub tenant_fuel: Vec<(u32, u64)>,
    /// Multiset digest of (agent id, fuel, calls) of every called agent.
    pub digest: [u64; 4],
    /// Wall time of the whole tick in the worker, ns.
    pub wall_ns: u64,
}

/// The multiset-digest term of one agent's tick (see [`TickDone::digest`]).
pub fn digest_term(agent_id: u64, fuel: u64, calls: u32) -> [u64; 4] {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&agent_id.to_le_bytes());
    b[8..16].copy_from_slice(&fuel.to_le_bytes());
    b[16..].copy_from_slice(&calls.to_le_bytes());
    let h = blake3::hash(&b);
    let h = h.as_bytes();
    let lane = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&h[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    [lane(0), lane(1), lane(2), lane(3)]
}

/// Adds a digest term (lane-wise wrapping addition: order-independent).
pub fn digest_add(acc: &mut [u64; 4], term: [u64; 4]) {
    for (a, t) in acc.iter_mut().zip(term) {
        *a = a.wrapping_add(t);
    }
}

/// A mutable global's captured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    /// i32.
    I32(i32),
    /// i64.
    I64(i64),
    /// f32 bits.
    F32(u32),
    /// f64 bits.
    F64(u64),
    /// v128 bits.
    V128(u128),
}

/// Everything mutable about an agent between calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The module's BLAKE3 (its version hash).
    pub module_hash: [u8; 32],
    /// Linear memory contents.
    #[serde(with = "serde_bytes")]
    pub memory: Vec<u8>,
    /// Every mutable global, in definition order.
    pub globals: Vec<GlobalValue>,
    /// Host-side counters (output sequence, task and request counters, host
    /// buffer) that are part of the agent's deterministic state.
    pub host: HostCounters,
}

/// Host-side per-agent state that must survive capture/restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCounters {
    /// Next output sequence number.
    pub out_seq: u64,
    /// Tasks issued.
    pub tasks: u64,
    /// Inference requests issued.
    pub requests: u64,
    /// The buffer returned by `agent_buffer` (pointer, capacity).
    pub buffer: (u32, u32),
    /// Whether the agent was initialised and has not faulted.
    pub live: bool,
}

/// Granularity of memory images: checkpoints hash and store linear memory
/// in chunks of this many bytes (content-addressed, deduplicated).
pub const CHUNK: usize = 4096;

/// BLAKE3 of an all-zero chunk (never stored or sent); computed once (it
/// is compared with every chunk of every image).
pub fn zero_chunk_hash() -> [u8; 32] {
    static ZERO: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| *blake3::hash(&[0u8; CHUNK]).as_bytes())
}

/// An agent's state as a list of chunk hashes (the chunks themselves live in
/// the run's page store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentImage {
    /// The module's BLAKE3 (its version hash).
    pub module_hash: [u8; 32],
    /// Linear memory length in bytes (a multiple of [`CHUNK`]).
    pub memory_len: u64,
    /// BLAKE3 of each chunk of memory.
    pub chunks: ChunkList,
    /// Every mutable global, in definition order.
    pub globals: Vec<GlobalValue>,
    /// Host-side counters.
    pub host: HostCounters,
}

/// The BLAKE3 of every chunk of an agent's memory, kept (in memory, on the
/// wire and in snapshots) as the list's length and the `(index, hash)` of
/// each chunk that is not all zero, in increasing index order.  Most chunks
/// of most agents' memories are zero (a 64 KiB memory of an agent that uses
/// 4 KiB has 15 of 16), so 32 bytes per zero chunk become none.  Decoding
/// refuses a list longer than [`ChunkList::MAX`], an index out of range or
/// out of order, or an entry holding the zero chunk's hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChunkList {
    len: u32,
    nonzero: Vec<(u32, [u8; 32])>,
}

impl ChunkList {
    /// Longest list accepted: a 4 GiB memory (wasm32's limit).
    pub const MAX: u32 = 1 << 20;

    /// The list of `hashes` (one per chunk, zero chunks included).
    ///
    /// # Panics
    /// If there are more than [`ChunkList::MAX`] hashes (a memory larger
    /// than wasm32 allows).
    pub fn from_hashes(hashes: &[[u8; 32]]) -> Self {
        let zero = zero_chunk_hash();
        assert!(hashes.len() <= Self::MAX as usize, "chunk list too long");
        Self {
            len: hashes.len() as u32,
            nonzero: hashes
                .iter()
                .enumerate()
                .filter(|(_, h)| **h != zero)
                .map(|(i, h)| (i as u32, *h))
                .collect(),
        }
    }

    /// A list of `len` chunks with these non-zero ones, checked.
    pub fn from_nonzero(len: u32, nonzero: Vec<(u32, [u8; 32])>) -> Result<Self, String> {
        if len > Self::MAX {
            return Err(format!(
                "chunk list of {len} chunks (at most {})",
                Self::MAX
            ));
        }
        let zero = zero_chunk_hash();
        let mut next = 0u32;
        for &(i, h) in &nonzero {
            if i < next || i >= len || h == zero {
                return Err(format!(
                    "chunk list entry {i} is out of order, out of range or zero"
                ));
            }
            next = i + 1;
        }
        Ok(Self { len, nonzero })
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the memory has no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks that are not all zero, `(index, hash)` in index order.
    pub fn nonzero(&self) -> &[(u32, [u8; 32])] {
        &self.nonzero
    }

    /// Every chunk's hash, in order (zero chunks' included).
    pub fn iter(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        let zero = zero_chunk_hash();
        let mut rest = self.nonzero.iter().peekable();
        (0..self.len).map(move |i| match rest.next_if(|(j, _)| *j == i) {
            Some((_, h)) => *h,
            None => zero,
        })
    }

    /// The hash of chunk `i` (`None` past the end).
    pub fn get(&self, i: usize) -> Option<[u8; 32]> {
        if i >= self.len() {
            return None;
        }
        Some(
            match self.nonzero.binary_search_by_key(&(i as u32), |(j, _)| *j) {
                Ok(k) => self.nonzero[k].1,
                Err(_) => zero_chunk_hash(),
            },
        )
    }
}

impl<'de> Deserialize<'de> for ChunkList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            len: u32,
            nonzero: Vec<(u32, [u8; 32])>,
        }
        let raw = Raw::deserialize(d)?;
        Self::from_nonzero(raw.len, raw.nonzero).map_err(serde::de::Error::custom)
    }
}

impl AgentImage {
    /// The agent's stable state hash.
    pub fn state_hash(&self) -> [u8; 32] {
        image_hash(
            &self.module_hash,
            self.memory_len,
            self.chunks.iter(),
            &self.globals,
            &self.host,
        )
    }
}

/// The stable state hash of an agent: BLAKE3 over its module hash, memory
/// length, chunk hashes, globals and host counters.  Workers and the
/// supervisor compute it identically from a live agent or an image.
pub fn image_hash(
    module: &[u8; 32],
    memory_len: u64,
    chunks: impl IntoIterator<Item = [u8; 32]>,
    globals: &[GlobalValue],
    c: &HostCounters,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"lockstep-agent-state-v1");
    h.update(module);
    h.update(&memory_len.to_le_bytes());
    for ch in chunks {
        h.update(&ch);
    }
    h.update(&(globals.len() as u64).to_le_bytes());
    for g in globals {
        let (tag, bits): (u8, u128) = match *g {
            GlobalValue::I32(x) => (1, u128::from(x as u32)),
            GlobalValue::I64(x) => (2, u128::from(x as u64)),
            GlobalValue::F32(x) => (3, u128::from(x)),
            GlobalValue::F64(x) => (4, u128::from(x)),
            GlobalValue::V128(x) => (5, x),
        };
        h.update(&[tag]);
        h.update(&bits.to_le_bytes());
    }
    for v in [
        c.out_seq,
        c.tasks,
        c.requests,
        u64::from(c.buffer.0),
        u64::from(c.buffer.1),
        u64::from(c.live),
    ] {
        h.update(&v.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// One chunk's bytes, identified by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkData {
    /// BLAKE3 of `bytes`.
    pub hash: [u8; 32],
    /// The chunk ([`CHUNK`] bytes).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// What a module declares, found by validating and instantiating it once
/// (the facts a spawn or an upgrade is checked against before it is
/// journaled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFacts {
    /// BLAKE3 of the module's bytes (its version hash).
    pub blake3: [u8; 32],
    /// Its `agent_abi_version`.
    pub abi_version: u32,
    /// Types of its mutable globals, in order (`i32`, `i64`, …): the state
    /// layout an upgrade must match unless it migrates.
    pub globals: Vec<String>,
    /// Whether it exports `agent_migrate`.
    pub migrates: bool,
    /// The initial size of its memory, bytes (an agent's memory limit must
    /// be at least this).
    pub min_memory: u64,
}

/// One agent to re-create from an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOrder {
    /// The agent.
    pub agent_id: u64,
    /// Its module (loaded).
    pub module_id: u32,
    /// Its tenant.
    pub tenant: u32,
    /// Its limits.
    pub limits: AgentLimits,
    /// The image.
    pub image: AgentImage,
    /// The bytes of every distinct non-zero chunk of the image.
    pub chunks: Vec<ChunkData>,
}

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerCommand {
    /// Run parameters (first command after the handshake).
    Configure {
        /// The run seed (for the agents' random streams).
        seed: u64,
        /// Wall-clock watchdog per call, ms.
        watchdog_ms: u32,
    },
    /// Validate, instrument and compile a module; answered with
    /// [`WorkerReply::Compiled`].  Sent only to a fresh process that never
    /// ran an agent (the supervisor's compile step): its output is what the
    /// other workers load.
    Compile {
        /// Name for messages.
        name: String,
        /// The module (`.wasm`, or `.wat` text).
        #[serde(with = "serde_bytes")]
        wasm: Vec<u8>,
    },
    /// Load a module: from the supervisor's compiled bytes when given
    /// (produced by a compile step), otherwise by compiling it.  Workers
    /// never read module files or a cache themselves.
    LoadModule {
        /// Id used by later orders.
        module_id: u32,
        /// Name for messages.
        name: String,
        /// The module bytes.
        #[serde(with = "serde_bytes")]
        wasm: Vec<u8>,
        /// Its compiled form, from [`WorkerReply::Compiled`].
        compiled: Option<serde_bytes::ByteBuf>,
        /// Largest memory an agent of this module may have.
        memory_limit: u64,
    },
    /// One tick of work.
    Tick(TickWork),
    /// Capture these agents' states.
    Capture {
        /// The agents (ascending).
        agents: Vec<u64>,
    },
    /// Re-create an agent from a captured state.
    RestoreState {
        /// The agent.
        agent_id: u64,
        /// Its module.
        module_id: u32,
        /// Its tenant.
        tenant: u32,
        /// Its limits.
        limits: AgentLimits,
        /// The state.
        state: AgentState,
    },
    /// Hash the full state of these agents.
    HashState {
        /// The agents (ascending).
        agents: Vec<u64>,
    },
    /// Image these agents (between ticks) for a checkpoint.  Answered with
    /// one [`WorkerReply::Imaged`] per agent the worker hosts, in order,
    /// then [`WorkerReply::Checkpointed`].
    Checkpoint {
        /// The agents (ascending).
        agents: Vec<u64>,
        /// Send every non-zero chunk, not only those not sent before.
        full: bool,
    },
    /// Re-create one agent from an image (not answered: errors are
    /// collected until [`WorkerCommand::RestoreDone`]).
    Restore(RestoreOrder),
    /// Answered with [`WorkerReply::Restored`]: every restore since the
    /// last one.
    RestoreDone,
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// `Configure` done.
    Configured {
        /// Key of the engine configuration (compiled modules are valid only
        /// for the same key).
        engine: String,
    },
    /// A module compiled by [`WorkerCommand::Compile`].
    Compiled {
        /// What it declares.
        facts: ModuleFacts,
        /// The compiled module (for [`WorkerCommand::LoadModule`]).
        #[serde(with = "serde_bytes")]
        compiled: Vec<u8>,
        /// Key of the engine that compiled it.
        engine: String,
    },
    /// Module loaded.
    ModuleLoaded {
        /// The id.
        module_id: u32,
        /// What it declares.
        facts: ModuleFacts,
    },
    /// Module refused (by [`WorkerCommand::LoadModule`] or
    /// [`WorkerCommand::Compile`]).
    ModuleRefused {
        /// Why (names the module and the item).
        error: String,
    },
    /// Result of a tick.
    TickDone(TickDone),
    /// Captured states, in the order asked.
    Captured(Vec<(u64, AgentState)>),
    /// State hashes, in the order asked.
    Hashes(Vec<(u64, [u8; 32])>),
    /// One agent's image for a checkpoint.
    Imaged {
        /// The agent.
        agent_id: u64,
        /// Its image.
        image: AgentImage,
        /// Chunk bytes the supervisor may not have yet.
        chunks: Vec<ChunkData>,
    },
    /// End of the answer to [`WorkerCommand::Checkpoint`].
    Checkpointed {
        /// Agents asked for that this worker has no instance of (a spawn
        /// that could not be instantiated).
        missing: Vec<u64>,
    },
    /// Restores since the last [`WorkerCommand::RestoreDone`] are done.
    Restored {
        /// Agents that could not be restored, and why.
        errors: Vec<(u64, String)>,
    },
    /// A single restore from [`WorkerCommand::RestoreState`] is done.
    StateRestored {
        /// Error, if any.
        error: Option<String>,
    },
    /// A command the worker could not execute.
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::outputs::tests::output;

    proptest! {
        /// What the tick hash covers of a result is postcard's encoding of
        /// those fields, whatever the outputs.
        #[test]
        fn encode_hashed_is_the_fields_as_postcard_encodes_them(
            agent_id in any::<u64>(),
            fuel in any::<u64>(),
            calls in any::<u32>(),
            outputs in proptest::collection::vec(output(), 0..12),
            fault in proptest::option::of(prop_oneof![Just(Fault::OutOfFuel), "[a-z]{0,4}".prop_map(Fault::Trap)]),
            logs_suppressed in any::<u32>(),
        ) {
            let r = AgentResult {
                agent_id,
                fuel,
                calls,
                outputs: Outputs::from(&outputs[..]),
                fault,
                wall_ns: 5,
                logs_suppressed,
                memory_bytes: 7,
            };
            let mut fast = vec![9u8];
            r.encode_hashed(&mut fast);
            let reference = postcard::to_stdvec(&(
                r.agent_id,
                r.fuel,
                r.calls,
                &outputs,
                &r.fault,
                r.logs_suppressed,
            ))
            .unwrap();
            prop_assert_eq!(&fast[1..], &reference[..]);
        }
    }

    fn image(chunks: Vec<[u8; 32]>) -> AgentImage {
        AgentImage {
            module_hash: [1; 32],
            memory_len: chunks.len() as u64 * CHUNK as u64,
            chunks: ChunkList::from_hashes(&chunks),
            globals: vec![GlobalValue::I32(3)],
            host: HostCounters::default(),
        }
    }

    proptest! {
        /// Sparse chunk lists decode to the list encoded, and take no room
        /// for zero chunks.
        #[test]
        fn sparse_chunk_lists_round_trip(pattern in proptest::collection::vec(0u8..4, 0..200)) {
            let zero = zero_chunk_hash();
            let chunks: Vec<[u8; 32]> = pattern
                .iter()
                .map(|&p| if p == 0 { zero } else { [p; 32] })
                .collect();
            let img = image(chunks.clone());
            let bytes = crate::codec::encode(&img).unwrap();
            let back: AgentImage = crate::codec::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &img);
            prop_assert_eq!(back.chunks.iter().collect::<Vec<_>>(), chunks.clone());
            for (i, h) in chunks.iter().enumerate() {
                prop_assert_eq!(back.chunks.get(i), Some(*h));
            }
            prop_assert_eq!(back.chunks.get(chunks.len()), None);
            let nonzero = pattern.iter().filter(|&&p| p != 0).count();
            prop_assert!(bytes.len() <= 120 + nonzero * 36, "{} bytes", bytes.len());
        }
    }

    #[test]
    fn bad_sparse_chunk_lists_are_refused() {
        #[derive(Serialize)]
        struct Raw {
            module_hash: [u8; 32],
            memory_len: u64,
            len: u32,
            nonzero: Vec<(u32, [u8; 32])>,
            globals: Vec<GlobalValue>,
            host: HostCounters,
        }
        let raw = |len: u32, nonzero: Vec<(u32, [u8; 32])>| {
            crate::codec::encode(&Raw {
                module_hash: [1; 32],
                memory_len: u64::from(len) * CHUNK as u64,
                len,
                nonzero,
                globals: Vec::new(),
                host: HostCounters::default(),
            })
            .unwrap()
        };
        let ok: AgentImage = crate::codec::decode(&raw(3, vec![(1, [5; 32])])).unwrap();
        assert_eq!(ok.chunks.get(1), Some([5; 32]));
        for (what, bytes) in [
            ("too long", raw(ChunkList::MAX + 1, Vec::new())),
            ("out of range", raw(2, vec![(2, [5; 32])])),
            ("out of order", raw(4, vec![(2, [5; 32]), (1, [6; 32])])),
            ("repeated", raw(4, vec![(1, [5; 32]), (1, [6; 32])])),
            ("zero hash", raw(4, vec![(1, zero_chunk_hash())])),
        ] {
            assert!(
                crate::codec::decode::<AgentImage>(&bytes).is_err(),
                "{what} was accepted"
            );
        }
    }

    /// Byte fields are serialized as byte strings (`serde_bytes`, one copy)
    /// rather than as sequences of `u8` (one call per byte); in postcard both
    /// are the same bytes — a varint length, then the bytes — so journals,
    /// snapshots and hashes do not depend on the choice.
    #[test]
    fn byte_fields_encode_like_byte_sequences() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let chunk = ChunkData {
            hash: [7; 32],
            bytes: bytes.clone(),
        };
        let plain = crate::codec::encode(&([7u8; 32], bytes.clone())).unwrap();
        assert_eq!(crate::codec::encode(&chunk).unwrap(), plain);
        assert_eq!(crate::codec::decode::<ChunkData>(&plain).unwrap(), chunk);
        let out = Output::Send {
            to: 3,
            seq: 9,
            payload: bytes.as_slice().into(),
        };
        let enc = crate::codec::encode(&out).unwrap();
        assert!(enc.ends_with(&bytes));
        assert_eq!(crate::codec::decode::<Output>(&enc).unwrap(), out);
    }

    /// Over any `every` consecutive ticks a slice sample covers each agent
    /// exactly once, whatever the agent ids and the starting tick; a count
    /// that is not a power of two behaves as the next one.
    #[test]
    fn slices_cover_each_agent_once_per_period() {
        for every in [1u64, 2, 3, 4, 64, 100] {
            let period = every.next_power_of_two();
            for start in [0u64, 1, 63, 64, 1_000_003, u64::MAX - 300] {
                for id in (0..300u64).chain([u64::MAX, u64::MAX - 1, 1 << 40]) {
                    let hits = (0..period)
                        .filter(|k| Sample::slice(every, start.wrapping_add(*k)).covers(id))
                        .count();
                    assert_eq!(hits, 1, "every {every}, start {start}, agent {id}");
                }
            }
        }
        // Zero behaves as one: every agent every tick.
        assert!((0..10).all(|id| Sample::slice(0, 9).covers(id)));
        // Beyond the largest power of two: one id per tick, no overflow.
        assert!(Sample::slice(u64::MAX, 7).covers(7) && !Sample::slice(u64::MAX, 7).covers(8));
    }
}
