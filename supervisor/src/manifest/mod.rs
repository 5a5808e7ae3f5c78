//! The run manifest (TOML): parsing into raw structs, then validation into a
//! [`Manifest`] in which every name is resolved.  Every error names the
//! file, line and field.
//!
//! ```toml
//! [run]
//! seed = 42
//! ticks = 1000
//! workers = 2
//! checkpoint_every = 100        # default 1000; 0: only at the start and end
//! checkpoint_work = "256MiB"    # also checkpoint once the messages and task
//!                               # payloads sent to the workers since the last
//!                               # checkpoint reach this (default 256MiB): what a
//!                               # worker's recovery re-executes, and the
//!                               # recovery log on disk, stay bounded
//! retain_checkpoints = 8        # keep the last 8 checkpoints and the journal
//!                               # from the oldest of them (default: all; for
//!                               # `--forever` runs 8)
//!
//! [scheduler]
//! mode = "round-robin"        # or "priority", "dag"
//! budget = 1000               # steps (priority/dag: tasks) per tick
//! mailbox_capacity = 1024
//! mailbox_overflow = "drop-oldest"   # or "drop-newest"
//!
//! [[tenants]]
//! name = "default"
//! max_agents = 10000
//! max_steps_per_tick = 100000
//! max_fuel_per_tick = 1000000000
//! max_memory = "1GiB"
//! max_inference_per_tick = 1000
//! isolation = "shared"        # or "process": workers of its own ([sandbox])
//!
//! [[agents]]
//! name = "sensor"
//! module = "../target/agents/sensor.wasm"   # relative to this file
//! blake3 = "…"                 # optional pin of the module's hash
//! count = 50                   # sensor-0 … sensor-49
//! priority = 0
//! tenant = "default"
//! memory = "2MiB"
//! fuel = 1000000
//! subscriptions = ["sensors"]
//! channels = ["ops"]
//! restart = { max = 3, within = 100 }
//!
//! [[tasks]]
//! name = "t1"                  # for `after` references
//! agent = "sensor-3"
//! priority = 5
//! payload = "text"             # or payload_hex = "0a0b"
//! after = ["t0"]
//!
//! [[models]]
//! id = "mlp"
//! version = "1"
//! path = "../.deps/models/mlp-v1.onnx"
//! blake3 = "…"                 # optional pin of the file's hash
//! max_batch = 32               # optional: rows per model run (default 32)
//! latency_ticks = 1            # answers to tick t's requests arrive at tick
//!                              # t + latency_ticks (default 1); the ticks
//!                              # in between run while the model computes
//! tolerance = { atol = 1e-5, rtol = 1e-4 }
//!                              # optional (these are the defaults): how far
//!                              # an f32 answer recomputed on another device
//!                              # class may be from one recorded on a GPU,
//!                              # |recorded − recomputed| ≤ atol + rtol·|recomputed|
//!                              # (crate::inference::tolerance)
//! ```
//!
//! The `[sandbox]` table and the tenants' process limits are described in
//! [`sandbox`].
//!
//! The first declared version of a model id is its *current* version (what
//! `infer("mlp")` without `@version` uses) until an `Input::SwapModel`.

pub mod sandbox;
mod text;

pub use crate::inference::tolerance::Tolerance;
pub use sandbox::{Isolation, ProcessLimits, SandboxDef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
pub use text::TextModelDef;
use toml::Spanned;

/// A manifest error: file, line and field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// The field (`agents[2].tenant`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Scheduler mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every runnable agent steps once per tick, in a fixed rotation.
    RoundRobin,
    /// Tasks by priority, then sequence, within the per-tick budget.
    Priority,
    /// Like priority, but a task runs only after its dependencies completed.
    Dag,
}

/// What happens when a message arrives at a full mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Drop the oldest queued message (counted, reported to the recipient).
    DropOldest,
    /// Drop the arriving message (counted, reported to the sender).
    DropNewest,
}

/// A byte size: an integer or a string like `"4MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

fn parse_size(s: &RawSize) -> Result<u64, String> {
    match s {
        RawSize::Bytes(b) => Ok(*b),
        RawSize::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| format!("`{t}` is not a size like 4096, \"64KiB\" or \"2MiB\""))?;
            let mult = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                other => {
                    return Err(format!(
                        "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                    ));
                }
            };
            n.checked_mul(mult)
                .ok_or_else(|| format!("`{t}` is too large"))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    seed: Option<u64>,
    ticks: Option<u64>,
    workers: Option<Spanned<u64>>,
    checkpoint_every: Option<u64>,
    checkpoint_work: Option<Spanned<RawSize>>,
    retain_checkpoints: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    mode: Option<Mode>,
    budget: Option<Spanned<u64>>,
    mailbox_capacity: Option<Spanned<u64>>,
    mailbox_overflow: Option<Overflow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
    max_agents: Option<u64>,
    max_steps_per_tick: Option<u64>,
    max_fuel_per_tick: Option<u64>,
    max_memory: Option<Spanned<RawSize>>,
    max_inference_per_tick: Option<u64>,
    isolation: Option<Isolation>,
    workers: Option<Spanned<u32>>,
    process_memory: Option<Spanned<RawSize>>,
    process_pids: Option<Spanned<u64>>,
    process_cpu: Option<Spanned<f64>>,
    process_cpu_weight: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    max: u32,
    within: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    module: Spanned<String>,
    blake3: Option<Spanned<String>>,
    count: Option<Spanned<u64>>,
    priority: Option<i32>,
    tenant: Option<Spanned<String>>,
    memory: Option<Spanned<RawSize>>,
    fuel: Option<Spanned<u64>>,
    subscriptions: Option<Vec<Spanned<String>>>,
    channels: Option<Vec<Spanned<String>>>,
    restart: Option<RawRestart>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Option<Spanned<String>>,
    agent: Spanned<String>,
    priority: Option<i32>,
    payload: Option<String>,
    payload_hex: Option<Spanned<String>>,
    after: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: Spanned<String>,
    version: Spanned<String>,
    path: Spanned<String>,
    blake3: Option<Spanned<String>>,
    max_batch: Option<Spanned<i64>>,
    latency_ticks: Option<Spanned<i64>>,
    kind: Option<Spanned<String>>,
    tokenizer: Option<Spanned<String>>,
    tokenizer_blake3: Option<Spanned<String>>,
    tolerance: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    run: Option<RawRun>,
    scheduler: Option<RawScheduler>,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    tasks: Vec<RawTask>,
    #[serde(default)]
    models: Vec<RawModel>,
    sandbox: Option<sandbox::RawSandbox>,
}

/// Per-tenant limits (`None` = unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Most agents alive at once.
    pub max_agents: Option<u64>,
    /// Most steps per tick.
    pub max_steps_per_tick: Option<u64>,
    /// Most fuel per tick (enforced from the next tick on).
    pub max_fuel_per_tick: Option<u64>,
    /// Most linear memory summed over its agents' limits.
    pub max_memory: Option<u64>,
    /// Most inference requests per tick.
    pub max_inference_per_tick: Option<u64>,
    /// Whether its agents share worker processes with other tenants.
    #[serde(default)]
    pub isolation: Isolation,
    /// With [`Isolation::Process`]: its worker processes.
    #[serde(default)]
    pub workers: u32,
    /// With [`Isolation::Process`]: the cgroup limits of its workers
    /// together.
    #[serde(default)]
    pub process: ProcessLimits,
}

/// OTP-style restart intensity: at most `max` restarts within `within` ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed in the window.
    pub max: u32,
    /// Window length in ticks.
    pub within: u64,
}

/// An agent definition (a template for `count` instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDef {
    /// Name (instances are `name-i` when `count > 1`).
    pub name: String,
    /// Module path (resolved against the manifest's directory).
    pub module: PathBuf,
    /// Pinned BLAKE3 of the module, lower-case hex.
    pub blake3: Option<String>,
    /// Instances.
    pub count: u64,
    /// Scheduling priority (higher first).
    pub priority: i32,
    /// Index into [`Manifest::tenants`].
    pub tenant: u32,
    /// Linear memory limit.
    pub memory: u64,
    /// Fuel per call.
    pub fuel: u64,
    /// Topics subscribed from the start.
    pub subscriptions: Vec<String>,
    /// Channels joined from the start.
    pub channels: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
}

/// An initial task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDef {
    /// Optional name.
    pub name: Option<String>,
    /// The agent instance that runs it.
    pub agent: String,
    /// Priority.
    pub priority: i32,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Indices (into [`Manifest::tasks`]) of the tasks it waits for.
    pub after: Vec<usize>,
}

/// A model for the inference host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDef {
    /// Id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Path (resolved).
    pub path: PathBuf,
    /// Pinned BLAKE3, lower-case hex.
    pub blake3: Option<String>,
    /// Largest batch (rows along dimension 0) of one model run
    /// ([`DEFAULT_MAX_BATCH`] unless set; 1 runs every request alone).
    pub max_batch: u32,
    /// Answers to a request made in tick `t` are delivered at tick
    /// `t + latency_ticks` (1, the default: the next tick); the ticks in
    /// between run while the inference host computes.
    #[serde(default = "one")]
    pub latency_ticks: u32,
    /// A text model's kind and tokenizer ([`TextModelDef`]); `None`: a
    /// plain ONNX model.
    #[serde(default)]
    pub text: Option<TextModelDef>,
    /// How far an `f32` answer recomputed on another device class may be
    /// from one recorded on a GPU ([`crate::inference::tolerance`]; the
    /// defaults unless the manifest sets `tolerance`).
    #[serde(default)]
    pub tolerance: Tolerance,
}

fn one() -> u32 {
    1
}

/// Largest `latency_ticks` a model may declare.
pub const MAX_LATENCY_TICKS: u32 = 1024;

/// `max_batch` of a model that does not set it.
pub const DEFAULT_MAX_BATCH: u32 = 32;

/// Largest `max_batch` a model may set.
pub const MAX_MAX_BATCH: u32 = 1 << 16;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Run seed.
    pub seed: u64,
    /// Default number of ticks.
    pub ticks: u64,
    /// Default worker count.
    pub workers: u64,
    /// Checkpoint period in ticks (0: only at the start and the end).
    pub checkpoint_every: u64,
    /// Bytes of messages and task payloads sent to the workers after which
    /// a checkpoint is taken at the end of the tick, whatever the period.
    #[serde(default = "default_checkpoint_work")]
    pub checkpoint_work: u64,
    /// How many of the most recent checkpoints to keep, with the journal
    /// from the oldest of them on (`None`: the run's default policy).
    #[serde(default)]
    pub retain_checkpoints: Option<u64>,
    /// Scheduler mode.
    pub mode: Mode,
    /// Steps (or tasks) per tick.
    pub budget: u64,
    /// Mailbox capacity per agent.
    pub mailbox_capacity: u64,
    /// Overflow policy.
    pub overflow: Overflow,
    /// Tenants (index 0 is `default` if none were declared).
    pub tenants: Vec<Tenant>,
    /// Agent definitions, in manifest order.
    pub agents: Vec<AgentDef>,
    /// Initial tasks.
    pub tasks: Vec<TaskDef>,
    /// Models.
    pub models: Vec<ModelDef>,
    /// The children's sandbox.
    #[serde(default)]
    pub sandbox: SandboxDef,
}

/// Most agents one run may declare.
pub const MAX_AGENTS: u64 = 1 << 24;
/// Checkpoint period of a manifest that does not set one.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// `checkpoint_work` of a manifest that does not set it.
pub const DEFAULT_CHECKPOINT_WORK: u64 = 256 << 20;

fn default_checkpoint_work() -> u64 {
    DEFAULT_CHECKPOINT_WORK
}
/// Smallest agent memory limit (one WebAssembly page).
pub const MIN_AGENT_MEMORY: u64 = 64 << 10;
/// Largest agent memory limit (a 32-bit memory).
pub const MAX_AGENT_MEMORY: u64 = 4 << 30;
/// Default memory limit of an agent.
pub const DEFAULT_AGENT_MEMORY: u64 = 16 << 20;
/// Default fuel per call of an agent.
pub const DEFAULT_AGENT_FUEL: u64 = 10_000_000;

/// Checks an agent's memory limit (the manifest's `memory`, a spawn's).
pub fn check_memory(bytes: u64) -> Result<(), String> {
    if (MIN_AGENT_MEMORY..=MAX_AGENT_MEMORY).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "must be between 64KiB and 4GiB (got {bytes} bytes)"
        ))
    }
}

/// Checks an agent's fuel per call.
pub fn check_fuel(fuel: u64) -> Result<(), String> {
    if fuel == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(())
    }
}

/// Checks an agent instance name.
pub fn check_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        Err(format!("`{name}` must be 1 to 128 bytes"))
    } else if name.starts_with('#') {
        Err(format!(
            "`{name}` must not start with `#` (that means an agent id)"
        ))
    } else {
        Ok(())
    }
}

/// Checks a topic or channel name.
pub fn check_topic(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        Err("must be 1 to 256 bytes".into())
    } else {
        Ok(())
    }
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset.min(self.text.len()))
            .map_or(0, |t| t.matches('\n').count() + 1)
    }

    fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ManifestError> {
        Err(ManifestError {
            file: self.file.to_owned(),
            line: span.map_or(0, |s| self.line_of(s.start)),
            field: field.into(),
            message: message.into(),
        })
    }
}

/// A model id or version (letters, digits, `-`, `_`, `.`; 1 to 128).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 64 hexadecimal digits.
pub(crate) fn valid_blake3(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.display().to_string(),
            line: 0,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse(&text, &path.display().to_string(), &base)
    }

    /// Instance names of agent definition `i`, in id order.
    pub fn instance_names(def: &AgentDef) -> impl Iterator<Item = String> + '_ {
        (0..def.count).map(move |i| {
            if def.count == 1 {
                def.name.clone()
            } else {
                format!("{}-{i}", def.name)
            }
        })
    }

    /// Total number of agent instances.
    pub fn agent_count(&self) -> u64 {
        self.agents.iter().map(|a| a.count).sum()
    }

    /// Validates manifest text; relative paths resolve against `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Self, ManifestError> {
        let cx = Ctx { file, text };
        let raw: RawManifest = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let field = e.message().split('`').nth(1).unwrap_or("-").to_owned();
                return cx.err(e.span(), field, e.message().trim().to_owned());
            }
        };
        let run = raw.run;
        let sched = raw.scheduler;
        let workers = match run.as_ref().and_then(|r| r.workers.as_ref()) {
            Some(w) if *w.get_ref() == 0 || *w.get_ref() > 256 => {
                return cx.err(Some(w.span()), "run.workers", "must be between 1 and 256");
            }
            Some(w) => *w.get_ref(),
            None => 2,
        };
        let positive = |v: &Option<Spanned<u64>>,
                        field: &str,
                        default: u64|
         -> Result<u64, ManifestError> {
            match v {
                Some(s) if *s.get_ref() == 0 => cx.err(Some(s.span()), field, "must be at least 1"),
                Some(s) => Ok(*s.get_ref()),
                None => Ok(default),
            }
        };
        let budget = positive(
            &sched.as_ref().and_then(|s| s.budget.clone()),
            "scheduler.budget",
            u64::MAX,
        )?;
        let mailbox_capacity = positive(
            &sched.as_ref().and_then(|s| s.mailbox_capacity.clone()),
            "scheduler.mailbox_capacity",
            1024,
        )?;
        if let Some(s) = sched.as_ref().and_then(|s| s.mailbox_capacity.as_ref())
            && *s.get_ref() > u64::from(u32::MAX)
        {
            return cx.err(
                Some(s.span()),
                "scheduler.mailbox_capacity",
                format!("must be at most {} messages", u32::MAX),
            );
        }
        let checkpoint_work = match run.as_ref().and_then(|r| r.checkpoint_work.as_ref()) {
            Some(s) => match parse_size(s.get_ref()) {
                Ok(0) => {
                    return cx.err(
                        Some(s.span()),
                        "run.checkpoint_work",
                        "must be at least 1 byte",
                    );
                }
                Ok(n) => n,
                Err(m) => return cx.err(Some(s.span()), "run.checkpoint_work", m),
            },
            None => DEFAULT_CHECKPOINT_WORK,
        };
        let retain_checkpoints = match run.as_ref().and_then(|r| r.retain_checkpoints.clone()) {
            Some(r) => Some(positive(&Some(r), "run.retain_checkpoints", 1)?),
            None => None,
        };

        let mut tenants = Vec::new();
        let mut tenant_idx: BTreeMap<String, u32> = BTreeMap::new();
        for (i, t) in raw.tenants.iter().enumerate() {
            let name = t.name.get_ref();
            if !valid_name(name) {
                return cx.err(
                    Some(t.name.span()),
                    format!("tenants[{i}].name"),
                    format!("`{name}` is not a valid name (letters, digits, - _ .)"),
                );
            }
            if tenant_idx
                .insert(name.clone(), tenants.len() as u32)
                .is_some()
            {
                return cx.err(
                    Some(t.name.span()),
                    format!("tenants[{i}].name"),
                    format!("tenant `{name}` is declared twice"),
                );
            }
            let max_memory =
                match &t.max_memory {
                    Some(s) => Some(parse_size(s.get_ref()).or_else(|m| {
                        cx.err(Some(s.span()), format!("tenants[{i}].max_memory"), m)
                    })?),
                    None => None,
                };
            let isolation = t.isolation.unwrap_or_default();
            let process = sandbox::RawTenantLimits {
                memory: t.process_memory.as_ref(),
                pids: t.process_pids.as_ref(),
                cpu: t.process_cpu.as_ref(),
                cpu_weight: t.process_cpu_weight.as_ref(),
            };
            let has_process = t.workers.is_some()
                || t.process_memory.is_some()
                || t.process_pids.is_some()
                || t.process_cpu.is_some()
                || t.process_cpu_weight.is_some();
            if has_process && isolation != Isolation::Process {
                return cx.err(
                    Some(t.name.span()),
                    format!("tenants[{i}].isolation"),
                    "`workers` and `process_*` limits need isolation = \"process\"",
                );
            }
            let workers = match &t.workers {
                Some(w) if *w.get_ref() == 0 || *w.get_ref() > 64 => {
                    return cx.err(
                        Some(w.span()),
                        format!("tenants[{i}].workers"),
                        "must be between 1 and 64",
                    );
                }
                Some(w) => *w.get_ref(),
                None if isolation == Isolation::Process => 1,
                None => 0,
            };
            let process = sandbox::limits(
                &cx,
                &format!("tenants[{i}].process_"),
                &process,
                ProcessLimits::default(),
            )?;
            tenants.push(Tenant {
                name: name.clone(),
                max_agents: t.max_agents,
                max_steps_per_tick: t.max_steps_per_tick,
                max_fuel_per_tick: t.max_fuel_per_tick,
                max_memory,
                max_inference_per_tick: t.max_inference_per_tick,
                isolation,
                workers,
                process,
            });
        }
        if tenants.is_empty() {
            tenant_idx.insert("default".into(), 0);
            tenants.push(Tenant {
                name: "default".into(),
                max_agents: None,
                max_steps_per_tick: None,
                max_fuel_per_tick: None,
                max_memory: None,
                max_inference_per_tick: None,
                isolation: Isolation::Shared,
                workers: 0,
                process: ProcessLimits::default(),
            });
        }

        let mut agents = Vec::new();
        let mut instances: BTreeSet<String> = BTreeSet::new();
        let mut total = 0u64;
        for (i, a) in raw.agents.iter().enumerate() {
            let f = |name: &str| format!("agents[{i}].{name}");
            let name = a.name.get_ref();
            if !valid_name(name) {
                return cx.err(
                    Some(a.name.span()),
                    f("name"),
                    format!("`{name}` is not a valid name (letters, digits, - _ .)"),
                );
            }
            let count = match &a.count {
                Some(c) if *c.get_ref() == 0 || *c.get_ref() > MAX_AGENTS => {
                    return cx.err(
                        Some(c.span()),
                        f("count"),
                        format!("must be between 1 and {MAX_AGENTS}"),
                    );
                }
                Some(c) => *c.get_ref(),
                None => 1,
            };
            total += count;
            if total > MAX_AGENTS {
                return cx.err(
                    Some(a.name.span()),
                    f("count"),
                    format!("the manifest declares more than {MAX_AGENTS} agents"),
                );
            }
            let module = base.join(a.module.get_ref());
            if !module.is_file() {
                return cx.err(
                    Some(a.module.span()),
                    f("module"),
                    format!("no such file: {}", module.display()),
                );
            }
            let blake3 = match &a.blake3 {
                Some(h) if !valid_blake3(h.get_ref()) => {
                    return cx.err(Some(h.span()), f("blake3"), "must be 64 hexadecimal digits");
                }
                Some(h) => Some(h.get_ref().to_ascii_lowercase()),
                None => None,
            };
            let tenant = match &a.tenant {
                Some(t) => match tenant_idx.get(t.get_ref()) {
                    Some(idx) => *idx,
                    None => {
                        return cx.err(
                            Some(t.span()),
                            f("tenant"),
                            format!("unknown tenant `{}`", t.get_ref()),
                        );
                    }
                },
                None => match tenant_idx.get("default") {
                    Some(idx) => *idx,
                    None => {
                        return cx.err(
                            Some(a.name.span()),
                            f("tenant"),
                            "no tenant given and no tenant named `default`",
                        );
                    }
                },
            };
            let memory = match &a.memory {
                Some(s) => {
                    parse_size(s.get_ref()).or_else(|m| cx.err(Some(s.span()), f("memory"), m))?
                }
                None => DEFAULT_AGENT_MEMORY,
            };
            if let Err(m) = check_memory(memory) {
                return cx.err(a.memory.as_ref().map(Spanned::span), f("memory"), m);
            }
            let fuel = match &a.fuel {
                Some(s) => match check_fuel(*s.get_ref()) {
                    Ok(()) => *s.get_ref(),
                    Err(m) => return cx.err(Some(s.span()), f("fuel"), m),
                },
                None => DEFAULT_AGENT_FUEL,
            };
            let names = |v: &Option<Vec<Spanned<String>>>,
                         field: &str|
             -> Result<Vec<String>, ManifestError> {
                let mut out = Vec::new();
                for (j, s) in v.iter().flatten().enumerate() {
                    let n = s.get_ref();
                    if let Err(m) = check_topic(n) {
                        return cx.err(Some(s.span()), format!("agents[{i}].{field}[{j}]"), m);
                    }
                    out.push(n.clone());
                }
                Ok(out)
            };
            let def = AgentDef {
                name: name.clone(),
                module,
                blake3,
                count,
                priority: a.priority.unwrap_or(0),
                tenant,
                memory,
                fuel,
                subscriptions: names(&a.subscriptions, "subscriptions")?,
                channels: names(&a.channels, "channels")?,
                restart: a.restart.as_ref().map_or(
                    RestartPolicy {
                        max: 3,
                        within: 100,
                    },
                    |r| RestartPolicy {
                        max: r.max,
                        within: r.within.max(1),
                    },
                ),
            };
            for inst in Self::instance_names(&def) {
                if !instances.insert(inst.clone()) {
                    return cx.err(
                        Some(a.name.span()),
                        f("name"),
                        format!("agent instance `{inst}` is declared twice"),
                    );
                }
            }
            agents.push(def);
        }

        let mut tasks = Vec::new();
        let mut task_names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, t) in raw.tasks.iter().enumerate() {
            if let Some(n) = &t.name
                && task_names.insert(n.get_ref().clone(), i).is_some()
            {
                return cx.err(
                    Some(n.span()),
                    format!("tasks[{i}].name"),
                    format!("task `{}` is declared twice", n.get_ref()),
                );
            }
        }
        for (i, t) in raw.tasks.iter().enumerate() {
            if !instances.contains(t.agent.get_ref()) {
                return cx.err(
                    Some(t.agent.span()),
                    format!("tasks[{i}].agent"),
                    format!("no agent instance named `{}`", t.agent.get_ref()),
                );
            }
            let payload = match (&t.payload, &t.payload_hex) {
                (Some(_), Some(h)) => {
                    return cx.err(
                        Some(h.span()),
                        format!("tasks[{i}].payload_hex"),
                        "give either payload or payload_hex",
                    );
                }
                (Some(p), None) => p.as_bytes().to_vec(),
                (None, Some(h)) => match parse_hex(h.get_ref()) {
                    Some(b) => b,
                    None => {
                        return cx.err(
                            Some(h.span()),
                            format!("tasks[{i}].payload_hex"),
                            "is not an even-length hexadecimal string",
                        );
                    }
                },
                (None, None) => Vec::new(),
            };
            let mut after = Vec::new();
            for (j, dep) in t.after.iter().flatten().enumerate() {
                match task_names.get(dep.get_ref()) {
                    Some(&k) => after.push(k),
                    None => {
                        return cx.err(
                            Some(dep.span()),
                            format!("tasks[{i}].after[{j}]"),
                            format!("unknown task `{}`", dep.get_ref()),
                        );
                    }
                }
            }
            tasks.push(TaskDef {
                name: t.name.as_ref().map(|n| n.get_ref().clone()),
                agent: t.agent.get_ref().clone(),
                priority: t.priority.unwrap_or(0),
                payload,
                after,
            });
        }
        // Reject dependency cycles among the initial tasks.
        if let Some(cycle) = find_cycle(&tasks) {
            let names: Vec<String> = cycle
                .iter()
                .map(|&k| tasks[k].name.clone().unwrap_or_else(|| format!("#{k}")))
                .collect();
            let span = raw
                .tasks
                .get(cycle[0])
                .and_then(|t| t.name.as_ref())
                .map(Spanned::span);
            return cx.err(
                span,
                format!("tasks[{}].after", cycle[0]),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }

        let mut models = Vec::new();
        let mut model_keys = BTreeSet::new();
        for (i, m) in raw.models.iter().enumerate() {
            let id = m.id.get_ref();
            if !valid_name(id) {
                return cx.err(
                    Some(m.id.span()),
                    format!("models[{i}].id"),
                    format!("`{id}` is not a valid name"),
                );
            }
            if !valid_name(m.version.get_ref()) {
                return cx.err(
                    Some(m.version.span()),
                    format!("models[{i}].version"),
                    format!(
                        "`{}` is not a valid version (letters, digits, `-`, `_`, `.`)",
                        m.version.get_ref()
                    ),
                );
            }
            if !model_keys.insert((id.clone(), m.version.get_ref().clone())) {
                return cx.err(
                    Some(m.version.span()),
                    format!("models[{i}].version"),
                    format!(
                        "model {id} version {} is declared twice",
                        m.version.get_ref()
                    ),
                );
            }
            let path = base.join(m.path.get_ref());
            if !path.is_file() {
                return cx.err(
                    Some(m.path.span()),
                    format!("models[{i}].path"),
                    format!("no such file: {}", path.display()),
                );
            }
            let blake3 = match &m.blake3 {
                Some(h) if !valid_blake3(h.get_ref()) => {
                    return cx.err(
                        Some(h.span()),
                        format!("models[{i}].blake3"),
                        "must be 64 hexadecimal digits",
                    );
                }
                Some(h) => Some(h.get_ref().to_ascii_lowercase()),
                None => None,
            };
            let max_batch = match &m.max_batch {
                None => DEFAULT_MAX_BATCH,
                Some(b) => match u32::try_from(*b.get_ref()) {
                    Ok(n) if (1..=MAX_MAX_BATCH).contains(&n) => n,
                    _ => {
                        return cx.err(
                            Some(b.span()),
                            format!("models[{i}].max_batch"),
                            format!("must be between 1 and {MAX_MAX_BATCH}"),
                        );
                    }
                },
            };
            let latency_ticks = match &m.latency_ticks {
                None => 1,
                Some(d) => match u32::try_from(*d.get_ref()) {
                    Ok(n) if (1..=MAX_LATENCY_TICKS).contains(&n) => n,
                    _ => {
                        return cx.err(
                            Some(d.span()),
                            format!("models[{i}].latency_ticks"),
                            format!("must be between 1 and {MAX_LATENCY_TICKS}"),
                        );
                    }
                },
            };
            let text = text::validate(
                &cx,
                i,
                base,
                m.kind.as_ref(),
                m.tokenizer.as_ref(),
                m.tokenizer_blake3.as_ref(),
            )?;
            let tolerance = match &m.tolerance {
                None => Tolerance::default(),
                Some(t) => validate_tolerance(t.get_ref()).or_else(|(key, why)| {
                    cx.err(Some(t.span()), format!("models[{i}].{key}"), why)
                })?,
            };
            models.push(ModelDef {
                id: id.clone(),
                version: m.version.get_ref().clone(),
                path,
                blake3,
                max_batch,
                latency_ticks,
                text,
                tolerance,
            });
        }

        Ok(Self {
            seed: run.as_ref().and_then(|r| r.seed).unwrap_or(0),
            ticks: run.as_ref().and_then(|r| r.ticks).unwrap_or(100),
            workers,
            checkpoint_every: run
                .as_ref()
                .and_then(|r| r.checkpoint_every)
                .unwrap_or(DEFAULT_CHECKPOINT_EVERY),
            checkpoint_work,
            retain_checkpoints,
            mode: sched
                .as_ref()
                .and_then(|s| s.mode)
                .unwrap_or(Mode::RoundRobin),
            budget,
            mailbox_capacity,
            overflow: sched
                .as_ref()
                .and_then(|s| s.mailbox_overflow)
                .unwrap_or(Overflow::DropOldest),
            tenants,
            agents,
            tasks,
            models,
            sandbox: sandbox::validate(&cx, raw.sandbox.as_ref())?,
        })
    }
}

/// A model's `tolerance = { atol = …, rtol = … }` (either may be left
/// out for its default); an error names the key (`tolerance.atol`) and says
/// what is wrong.
fn validate_tolerance(v: &toml::Value) -> Result<Tolerance, (String, String)> {
    let Some(table) = v.as_table() else {
        return Err((
            "tolerance".into(),
            "must be a table such as { atol = 1e-5, rtol = 1e-4 }".into(),
        ));
    };
    let mut tol = Tolerance::default();
    for (key, value) in table {
        let slot = match key.as_str() {
            "atol" => &mut tol.atol,
            "rtol" => &mut tol.rtol,
            other => {
                return Err((
                    format!("tolerance.{other}"),
                    "unknown key (expected atol or rtol)".into(),
                ));
            }
        };
        let number = match value {
            toml::Value::Float(f) => *f,
            toml::Value::Integer(n) => *n as f64,
            other => {
                return Err((
                    format!("tolerance.{key}"),
                    format!(
                        "{key} must be a number from 0 to {} (got a {})",
                        crate::inference::tolerance::MAX_TOLERANCE,
                        other.type_str()
                    ),
                ));
            }
        };
        *slot =
            Tolerance::check_bound(key, number).map_err(|why| (format!("tolerance.{key}"), why))?;
    }
    Ok(tol)
}

/// A dependency cycle among tasks, if any (indices, first repeated at the end).
fn find_cycle(tasks: &[TaskDef]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; tasks.len()];
    for start in 0..tasks.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = tasks[node].after.get(*next) {
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[pos..].iter().map(|(n, _)| *n).collect();
                        cycle.push(dep);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// Fuzz entry point: parses arbitrary bytes as a manifest (never panics;
/// relative paths resolve under a directory that does not exist).
#[doc(hidden)]
pub fn fuzz_parse(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Manifest::parse(text, "fuzz.toml", Path::new("/nonexistent-lockstep-fuzz"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest of one model `m` (a dummy file in a scratch directory
    /// named after `label`) with `extra` appended to its table.
    fn with_model(label: &str, extra: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lockstep-{label}-"))
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("m.onnx"), b"x").unwrap();
        Manifest::parse(
            &format!(
                "[run]\nseed = 1\n\n[[models]]\nid = \"m\"\nversion = \"1\"\npath = \"m.onnx\"\n{extra}"
            ),
            "m.toml",
            dir.path(),
        )
    }

    #[test]
    fn latency_ticks_default_to_one_and_are_bounded() {
        let with = |extra: &str| with_model("latency", extra);
        assert_eq!(with("").unwrap().models[0].latency_ticks, 1);
        assert_eq!(
            with("latency_ticks = 32\n").unwrap().models[0].latency_ticks,
            32
        );
        for bad in [
            "latency_ticks = 0\n",
            "latency_ticks = 1025\n",
            "latency_ticks = -3\n",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.field, "models[0].latency_ticks", "{bad}: {e}");
            assert!(e.message.contains("between 1 and 1024"), "{bad}: {e}");
        }
    }

    #[test]
    fn tolerances_default_and_are_validated_naming_the_field() {
        let with = |extra: &str| with_model("tolerance", extra);
        assert_eq!(with("").unwrap().models[0].tolerance, Tolerance::default());
        assert_eq!(
            with("tolerance = { atol = 1e-6, rtol = 0 }\n")
                .unwrap()
                .models[0]
                .tolerance,
            Tolerance {
                atol: 1e-6,
                rtol: 0.0
            }
        );
        assert_eq!(
            with("tolerance = { rtol = 1e-3 }\n").unwrap().models[0].tolerance,
            Tolerance {
                atol: crate::inference::tolerance::DEFAULT_ATOL,
                rtol: 1e-3
            }
        );
        for (bad, field, says) in [
            (
                "tolerance = { atol = -1e-5 }\n",
                "tolerance.atol",
                "atol must be a number from 0 to 1",
            ),
            (
                "tolerance = { rtol = 2.0 }\n",
                "tolerance.rtol",
                "rtol must be a number from 0 to 1",
            ),
            ("tolerance = { rtol = nan }\n", "tolerance.rtol", "got NaN"),
            (
                "tolerance = { atol = \"small\" }\n",
                "tolerance.atol",
                "from 0 to 1",
            ),
            (
                "tolerance = { abs = 1e-5 }\n",
                "tolerance.abs",
                "expected atol or rtol",
            ),
            ("tolerance = 1e-5\n", "tolerance", "must be a table"),
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.field, format!("models[0].{field}"), "{bad}: {e}");
            assert_eq!(e.line, 8, "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
    }

    /// A scratch directory holding a module `a.wasm` (removed on drop).
    fn manifest_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-manifest-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"\0asm").unwrap();
        dir
    }

    fn parse_in(dir: &Path, text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, "m.toml", dir)
    }

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        parse_in(manifest_dir().path(), text)
    }

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = parse("[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ncount = 3\n").unwrap();
        assert_eq!(m.mode, Mode::RoundRobin);
        assert_eq!(m.agent_count(), 3);
        assert_eq!(
            Manifest::instance_names(&m.agents[0]).collect::<Vec<_>>(),
            ["a-0", "a-1", "a-2"]
        );
        assert_eq!(m.tenants[0].name, "default");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse(
            "[run]\nseed = 1\n\n[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ntenant = \"nope\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.field.as_str()),
            ("m.toml", 7, "agents[0].tenant")
        );
        assert!(
            e.to_string()
                .starts_with("m.toml:7: agents[0].tenant: unknown tenant `nope`"),
            "{e}"
        );
        let e = parse("[[agents]]\nname = \"a\"\nmodule = \"missing.wasm\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (3, "agents[0].module"));
        let e = parse("[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\nmemory = \"3 parsecs\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "agents[0].memory"));
        let e = parse("[run]\nworkers = 0\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "run.workers"));
        for (work, says) in [("\"0\"", "at least 1 byte"), ("\"lots\"", "lots")] {
            let e = parse(&format!("[run]\nseed = 1\ncheckpoint_work = {work}\n")).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str()),
                (3, "run.checkpoint_work"),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
        }
        let base = "[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\n";
        assert_eq!(parse(base).unwrap().checkpoint_work, 256 << 20);
        assert_eq!(
            parse(&format!("[run]\ncheckpoint_work = \"64MiB\"\n\n{base}"))
                .unwrap()
                .checkpoint_work,
            64 << 20
        );
        for (cap, says) in [
            ("0", "at least 1"),
            ("4294967296", "at most 4294967295 messages"),
        ] {
            let e = parse(&format!(
                "[scheduler]\nmailbox_capacity = {cap}\n\n[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\n"
            ))
            .unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str()),
                (2, "scheduler.mailbox_capacity"),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
        }
        assert_eq!(
            parse("[scheduler]\nmailbox_capacity = 4294967295\n\n[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\n")
                .unwrap()
                .mailbox_capacity,
            u64::from(u32::MAX)
        );
        let e = parse("[run]\nsede = 1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("sede"), "{e}");
        let e = parse("[run\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn task_cycles_and_unknown_dependencies_are_rejected() {
        let base = "[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\n";
        let e = parse(&format!("{base}[[tasks]]\nname = \"x\"\nagent = \"a\"\nafter = [\"y\"]\n[[tasks]]\nname = \"y\"\nagent = \"a\"\nafter = [\"x\"]\n")).unwrap_err();
        assert!(e.message.contains("dependency cycle: x -> y -> x"), "{e}");
        let e = parse(&format!(
            "{base}[[tasks]]\nagent = \"a\"\nafter = [\"ghost\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.field, "tasks[0].after[0]");
        let e = parse(&format!("{base}[[tasks]]\nagent = \"b\"\n")).unwrap_err();
        assert_eq!(e.field, "tasks[0].agent");
        let ok = parse(&format!("{base}[[tasks]]\nname = \"x\"\nagent = \"a\"\n[[tasks]]\nagent = \"a\"\nafter = [\"x\"]\npayload_hex = \"0aff\"\n")).unwrap();
        assert_eq!(ok.tasks[1].after, vec![0]);
        assert_eq!(ok.tasks[1].payload, vec![0x0a, 0xff]);
    }

    #[test]
    fn models_get_max_batch_and_checked_versions() {
        let dir = manifest_dir();
        std::fs::write(dir.path().join("m.onnx"), b"onnx").unwrap();
        let parse = |text: &str| parse_in(dir.path(), text);
        let m = parse("[[models]]\nid = \"mlp\"\nversion = \"1\"\npath = \"m.onnx\"\n[[models]]\nid = \"mlp\"\nversion = \"2\"\npath = \"m.onnx\"\nmax_batch = 4\n").unwrap();
        assert_eq!(m.models[0].max_batch, DEFAULT_MAX_BATCH);
        assert_eq!(m.models[1].max_batch, 4);
        let e =
            parse("[[models]]\nid = \"mlp\"\nversion = \"1\"\npath = \"m.onnx\"\nmax_batch = 0\n")
                .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (5, "models[0].max_batch"));
        let e =
            parse("[[models]]\nid = \"mlp\"\nversion = \"1@2\"\npath = \"m.onnx\"\n").unwrap_err();
        assert_eq!(e.field, "models[0].version");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size(&RawSize::Text("4MiB".into())), Ok(4 << 20));
        assert_eq!(parse_size(&RawSize::Bytes(10)), Ok(10));
        assert!(parse_size(&RawSize::Text("4XB".into())).is_err());
    }

    const FULL: &str = "[run]\nseed = 7\nticks = 100\nworkers = 2\ncheckpoint_every = 10\nretain_checkpoints = 3\n\n\
                    [scheduler]\nmode = \"dag\"\nbudget = 50\nmailbox_capacity = 8\nmailbox_overflow = \"drop-newest\"\n\n\
                    [[tenants]]\nname = \"t\"\nmax_agents = 5\nmax_fuel_per_tick = 1000\nmax_memory = \"64MiB\"\nmax_inference_per_tick = 3\n\n\
                    [[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\ncount = 3\ntenant = \"t\"\n\
                    memory = \"1MiB\"\nfuel = 5000\npriority = 2\nsubscriptions = [\"x\"]\nchannels = [\"c\"]\n\n\
                    [[tasks]]\nname = \"k\"\nagent = \"a-0\"\npriority = 1\nafter = []\n\n\
                    [[models]]\nid = \"m\"\nversion = \"1\"\npath = \"m.onnx\"\nmax_batch = 4\n";

    const NOISE: &[&[u8]] = &[
        b"-1",
        b"1e400",
        b"18446744073709551616",
        b"\"\"",
        b"[",
        b"]",
        b"=",
        b"\n[[agents]]\n",
        b"\"0B\"",
        b"{}",
        b"\"\\u0000\"",
        b"0x7fffffffffffffff",
    ];

    /// A scratch directory holding the files `FULL` names (removed on drop).
    fn fuzz_dir() -> tempfile::TempDir {
        let dir = manifest_dir();
        std::fs::write(dir.path().join("m.onnx"), b"onnx").unwrap();
        dir
    }

    #[test]
    fn the_full_manifest_parses() {
        let dir = fuzz_dir();
        let parsed = Manifest::parse(FULL, "full.toml", dir.path());
        assert!(parsed.is_ok(), "{:?}", parsed.err());
    }

    /// The fuzz target's function on damaged variants of a manifest
    /// that uses every section (TOML syntax errors, wrong types, huge
    /// and negative numbers, unknown references): errors, never panics.
    #[test]
    fn damaged_manifests_never_panic() {
        // One scratch directory for every case, removed when the test ends.
        let dir = fuzz_dir();
        proptest::proptest!(
            proptest::prelude::ProptestConfig::with_cases(100_000),
            |(
                pos in 0usize..4096,
                flip in 1u8..,
                how in 0u8..3,
                noise in 0usize..NOISE.len(),
                span in 0usize..8,
            )| {
                let mut b = FULL.as_bytes().to_vec();
                let pos = pos % b.len();
                match how {
                    0 => b[pos] ^= flip,
                    1 => b.truncate(pos),
                    _ => {
                        let end = (pos + span).min(b.len());
                        b.splice(pos..end, NOISE[noise].iter().copied());
                    }
                }
                if let Ok(t) = std::str::from_utf8(&b) {
                    let _ = Manifest::parse(t, "fuzz.toml", dir.path());
                }
                fuzz_parse(&b);
            }
        );
    }
}
