//! The control vocabulary: every command that may be asked of a running
//! run, defined once.
//!
//! [`Command`] is at the same time
//!
//! * the `lockstep ctl RUN_DIR <command>` command line (clap
//!   [`Subcommand`]: the doc comments below are its help text),
//! * the JSON line on the control socket (`{"cmd":"<command>", …}`, see
//!   [`Command::from_json`] and [`Command::to_json`]; [`crate::ctl`]),
//! * the argument of the library's [`Run::command`](crate::run::Run::command)
//!   ([`crate::api`]), and
//! * for the commands that are **inputs** ([`Command::is_input`]: they
//!   change the run, are journaled and replayed), the journal's record of
//!   the input ([`crate::journal::Entry::Input`]).
//!
//! The names are kebab-case everywhere (`stop-agent`, `load-model`, …);
//! `lockstep log` prints journaled inputs under the same names.  Defaults
//! come from the constants of this module and of [`crate::manifest`],
//! nowhere else.
//!
//! # Pinned fields
//!
//! Some inputs carry facts fixed when the run accepted them, so that a
//! replay loads exactly what the original run loaded (or fails clearly):
//! a spawn's and an upgrade's module BLAKE3, an upgrade's ABI version,
//! state layout and `agent_migrate`, a loaded model's BLAKE3.  They are
//! fields of the same variants, absent from the command line
//! (`#[arg(skip)]`), optional in JSON (a client may pin a hash; the rest is
//! re-derived by the run and never trusted), and always filled in the
//! journal.
//!
//! # Encodings
//!
//! The serde derive is the default, externally tagged form, which postcard
//! (the journal) can encode: variants by index, so **new variants go at
//! the end**.  The socket's internally tagged `{"cmd": …}` form is made
//! from it by [`Command::to_json`] and read by [`Command::from_json`].
//! Payloads ([`Payload`]) are bytes in the journal and UTF-8 text in JSON.

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use shm_protocol::inference::{DType, Tensor};

/// Tenant of an agent spawned without one.
pub const DEFAULT_TENANT: &str = "default";
/// Priority of an agent or a task given none.
pub const DEFAULT_PRIORITY: i32 = 0;

fn default_tenant() -> String {
    DEFAULT_TENANT.into()
}
fn default_memory() -> u64 {
    crate::manifest::DEFAULT_AGENT_MEMORY
}
fn default_fuel() -> u64 {
    crate::manifest::DEFAULT_AGENT_FUEL
}
fn default_max_batch() -> u32 {
    crate::manifest::DEFAULT_MAX_BATCH
}
fn default_latency() -> u32 {
    1
}

/// A command to a running run (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Subcommand)]
#[serde(rename_all = "kebab-case")]
#[command(rename_all = "kebab-case")]
pub enum Command {
    /// Start an agent at the next tick.  The module is read, checked and
    /// compiled before the input is journaled.
    Spawn {
        /// Instance name (1 to 128 bytes, not starting with `#`).
        name: String,
        /// Module file (made absolute by the command line; relative to the
        /// supervisor's working directory otherwise).
        module: String,
        /// Tenant.
        #[arg(long, default_value = DEFAULT_TENANT)]
        #[serde(default = "default_tenant")]
        tenant: String,
        /// Scheduling priority.
        #[arg(long, default_value_t = DEFAULT_PRIORITY, allow_negative_numbers = true)]
        #[serde(default)]
        priority: i32,
        /// Linear-memory limit in bytes.
        #[arg(long, default_value_t = crate::manifest::DEFAULT_AGENT_MEMORY)]
        #[serde(default = "default_memory")]
        memory: u64,
        /// Fuel per call.
        #[arg(long, default_value_t = crate::manifest::DEFAULT_AGENT_FUEL)]
        #[serde(default = "default_fuel")]
        fuel: u64,
        /// BLAKE3 of the module (hex), pinned when the spawn was accepted.
        #[arg(skip)]
        #[serde(default)]
        blake3: Option<String>,
    },
    /// Schedule a task for an agent (name or `#id`); the issuer is the
    /// runtime.
    Task {
        /// Agent.
        agent: String,
        /// Payload text.
        #[arg(default_value = "")]
        #[serde(default)]
        payload: Payload,
        /// Priority.
        #[arg(long, default_value_t = DEFAULT_PRIORITY, allow_negative_numbers = true)]
        #[serde(default)]
        priority: i32,
        /// Task ids it depends on (decimal or 0x hex; at most 64).
        #[arg(long = "after", value_parser = parse_u64)]
        #[serde(default)]
        deps: Vec<u64>,
    },
    /// Publish on a topic (sender: the runtime).
    Publish {
        /// Topic.
        topic: String,
        /// Payload text.
        payload: Payload,
    },
    /// Send a message to an agent (name or `#id`; sender: the runtime).
    Send {
        /// Agent.
        agent: String,
        /// Payload text.
        payload: Payload,
    },
    /// Stop one agent (name or `#id`) at the next tick.
    StopAgent {
        /// Agent.
        agent: String,
    },
    /// Make `version` the current version of model `id` from the next tick:
    /// what agents asking for `id` without `@version` get.
    SwapModel {
        /// Model id.
        id: String,
        /// A loaded version of it.
        version: String,
    },
    /// Make an agent (name or `#id`) a member of a channel from the next
    /// tick on.
    JoinChannel {
        /// Agent.
        agent: String,
        /// Channel.
        channel: String,
    },
    /// Hot-swap an agent (name or `#id`) to another module at the next tick
    /// boundary (same ABI major version; a changed state layout needs
    /// `agent_migrate`).
    Upgrade {
        /// Agent.
        agent: String,
        /// The new module file.
        module: String,
        /// BLAKE3 of the module (hex), pinned when accepted.
        #[arg(skip)]
        #[serde(default)]
        blake3: Option<String>,
        /// Its `agent_abi_version`, pinned when accepted.
        #[arg(skip)]
        #[serde(default)]
        abi_version: u32,
        /// Types of its mutable globals, pinned when accepted.
        #[arg(skip)]
        #[serde(default)]
        globals: Vec<String>,
        /// Whether it exports `agent_migrate`, pinned when accepted.
        #[arg(skip)]
        #[serde(default)]
        migrates: bool,
    },
    /// Take a snapshot now, between ticks.
    Snapshot,
    /// Stop the run at the next tick boundary.
    Stop,
    /// The last tick, its hash and the run's counters.
    Status,
    /// The run's children: name, role, pid and sandbox report (what
    /// `lockstep doctor` reads).
    Children,
    /// Load a model version at the next tick boundary; it becomes the
    /// model's current version.  The file is read, hashed and loaded by the
    /// inference host before the input is journaled (a model the host
    /// cannot load is refused, and the run goes on).  Same options as the
    /// manifest's `[[models]]`.
    LoadModel {
        /// Model id (what agents name).
        id: String,
        /// Version label (letters, digits, `-`, `_`, `.`).
        version: String,
        /// The `.onnx` file (made absolute by the command line).
        path: String,
        /// Expected BLAKE3 of the file (hex); always pinned in the journal.
        #[arg(long)]
        #[serde(default)]
        blake3: Option<String>,
        /// Largest batch (rows along dimension 0) of one model run.
        #[arg(long, default_value_t = crate::manifest::DEFAULT_MAX_BATCH)]
        #[serde(default = "default_max_batch")]
        max_batch: u32,
        /// Ticks between a request and its answer (1: the next tick).
        #[arg(long, default_value_t = 1)]
        #[serde(default = "default_latency")]
        latency_ticks: u32,
    },
    /// Unload one version of a model, or every version, at the next tick
    /// boundary.  Requests for it are then answered as for an unknown
    /// model; requests already asked of an unloaded version are answered
    /// with an error when due.
    UnloadModel {
        /// Model id.
        id: String,
        /// Version (default: every version).
        #[arg(long)]
        #[serde(default)]
        version: Option<String>,
    },
    /// Ask a model (its current version, or `id@version`) one question
    /// from outside the run.  Answered between ticks; not journaled and
    /// never seen by agents: it does not change the run.
    Infer {
        /// Model: `id` or `id@version`.
        model: String,
        /// Input tensor as JSON: `{"dtype":"f32","shape":[1,16],"data":[…]}`.
        input: TensorJson,
    },
    /// Like `infer`, for several inputs at once (one answer each, in
    /// order).
    BatchInfer {
        /// Model: `id` or `id@version`.
        model: String,
        /// Input tensors as JSON, one argument each.
        #[arg(required = true)]
        inputs: Vec<TensorJson>,
    },
}

/// Why a JSON request is not a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not an object with a string `cmd`.
    #[error("a request is a JSON object with a string field `cmd`")]
    NoCmd,
    /// The fields do not fit the command.
    #[error("{0}")]
    Fields(#[from] serde_json::Error),
}

impl Command {
    /// Every command name, in declaration order.
    pub const NAMES: [&'static str; 16] = [
        "spawn",
        "task",
        "publish",
        "send",
        "stop-agent",
        "swap-model",
        "join-channel",
        "upgrade",
        "snapshot",
        "stop",
        "status",
        "children",
        "load-model",
        "unload-model",
        "infer",
        "batch-infer",
    ];

    /// The command's kebab-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Spawn { .. } => "spawn",
            Command::Task { .. } => "task",
            Command::Publish { .. } => "publish",
            Command::Send { .. } => "send",
            Command::StopAgent { .. } => "stop-agent",
            Command::SwapModel { .. } => "swap-model",
            Command::JoinChannel { .. } => "join-channel",
            Command::Upgrade { .. } => "upgrade",
            Command::Snapshot => "snapshot",
            Command::Stop => "stop",
            Command::Status => "status",
            Command::Children => "children",
            Command::LoadModel { .. } => "load-model",
            Command::UnloadModel { .. } => "unload-model",
            Command::Infer { .. } => "infer",
            Command::BatchInfer { .. } => "batch-infer",
        }
    }

    /// Whether the command is an input: it changes the run, is validated,
    /// journaled and applied at the next tick boundary, and replayed.  The
    /// others (snapshot, stop, status, children, infer, batch-infer) are
    /// answered between ticks and never journaled as inputs.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Command::Spawn { .. }
                | Command::Task { .. }
                | Command::Publish { .. }
                | Command::Send { .. }
                | Command::StopAgent { .. }
                | Command::SwapModel { .. }
                | Command::JoinChannel { .. }
                | Command::Upgrade { .. }
                | Command::LoadModel { .. }
                | Command::UnloadModel { .. }
        )
    }

    /// The socket's form: `{"cmd":"<name>", <fields>}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("cmd".into(), self.name().into());
        // The externally tagged form is `"name"` or `{"name": {fields}}`.
        if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(self) {
            for (_, fields) in o {
                if let serde_json::Value::Object(f) = fields {
                    out.extend(f);
                }
            }
        }
        serde_json::Value::Object(out)
    }

    /// Reads the socket's form (unknown fields are ignored; missing ones
    /// take their defaults).
    pub fn from_json(mut v: serde_json::Value) -> Result<Self, CommandError> {
        let o = v.as_object_mut().ok_or(CommandError::NoCmd)?;
        let Some(serde_json::Value::String(name)) = o.remove("cmd") else {
            return Err(CommandError::NoCmd);
        };
        let fields = std::mem::take(o);
        let tagged = serde_json::json!({ name.clone(): serde_json::Value::Object(fields) });
        match serde_json::from_value(tagged) {
            Ok(c) => Ok(c),
            // A command without fields (`status`) is a bare name; any
            // other field it came with is ignored, as for the others.
            Err(e) => serde_json::from_value(serde_json::Value::String(name)).map_err(|_| e.into()),
        }
    }

    /// One line for people and `lockstep log`: the name, then the fields
    /// as JSON (payloads as text).
    pub fn describe(&self) -> String {
        let mut v = self.to_json();
        if let Some(o) = v.as_object_mut() {
            o.remove("cmd");
            if o.is_empty() {
                return self.name().to_owned();
            }
        }
        format!("{} {v}", self.name())
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("`{s}`: {e}"))
}

/// A message or task payload: bytes in the journal (and in the library's
/// API), UTF-8 text in JSON and on the command line (bytes that are not
/// UTF-8 are shown with replacement characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Self(b)
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl std::str::FromStr for Payload {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.into())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&String::from_utf8_lossy(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(Self(String::deserialize(d)?.into_bytes()))
        } else {
            Ok(Self(serde_bytes::ByteBuf::deserialize(d)?.into_vec()))
        }
    }
}

/// Element values of a [`TensorJson`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorData {
    /// Integers (`i32`, `i64`, `u8` tensors).
    Int(Vec<i64>),
    /// Numbers (`f32`, `f64` tensors; also integers written as numbers).
    Float(Vec<f64>),
}

/// A tensor as JSON, for the outside `infer` and `batch-infer`:
/// `{"dtype":"f32","shape":[1,16],"data":[0.5, …]}` (`dtype`: `f32`, the
/// default, `f64`, `i32`, `i64` or `u8`; `data` row-major, as many values
/// as the shape has elements).  Answers use the same form; a NaN or
/// infinite output value is written as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorJson {
    /// Element type.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Values.
    pub data: TensorData,
}

fn default_dtype() -> String {
    "f32".into()
}

impl std::str::FromStr for TensorJson {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s)
            .map_err(|e| format!("not a tensor ({{\"shape\":[…],\"data\":[…]}}): {e}"))
    }
}

impl TensorJson {
    /// The tensor, checked (dtype, shape against the number of values,
    /// integer ranges).
    pub fn to_tensor(&self) -> Result<Tensor, String> {
        let ints = |d: &TensorData| -> Result<Vec<i64>, String> {
            match d {
                TensorData::Int(v) => Ok(v.clone()),
                TensorData::Float(v) => v
                    .iter()
                    .map(|x| {
                        if x.fract() == 0.0 && x.is_finite() {
                            Ok(*x as i64)
                        } else {
                            Err(format!("{x} is not an integer"))
                        }
                    })
                    .collect(),
            }
        };
        let floats = |d: &TensorData| -> Vec<f64> {
            match d {
                TensorData::Int(v) => v.iter().map(|&x| x as f64).collect(),
                TensorData::Float(v) => v.clone(),
            }
        };
        let shape = self.shape.clone();
        let r = match self.dtype.as_str() {
            "f32" => {
                let v: Vec<f32> = floats(&self.data).into_iter().map(|x| x as f32).collect();
                Tensor::from_slice(shape, &v)
            }
            "f64" => Tensor::from_slice(shape, &floats(&self.data)),
            "i64" => Tensor::from_slice(shape, &ints(&self.data)?),
            "i32" => {
                let v = ints(&self.data)?
                    .into_iter()
                    .map(|x| i32::try_from(x).map_err(|_| format!("{x} is out of i32's range")))
                    .collect::<Result<Vec<i32>, String>>()?;
                Tensor::from_slice(shape, &v)
            }
            "u8" => {
                let v = ints(&self.data)?
                    .into_iter()
                    .map(|x| u8::try_from(x).map_err(|_| format!("{x} is out of u8's range")))
                    .collect::<Result<Vec<u8>, String>>()?;
                Tensor::from_slice(shape, &v)
            }
            other => return Err(format!("unknown dtype `{other}` (f32, f64, i32, i64, u8)")),
        };
        r.map_err(|e| format!("bad tensor: {e}"))
    }

    /// The JSON form of a tensor.
    pub fn from_tensor(t: &Tensor) -> Self {
        let shape = t.shape().to_vec();
        let (dtype, data) = match t.dtype() {
            DType::F32 => (
                "f32",
                TensorData::Float(
                    t.to_vec::<f32>()
                        .unwrap_or_default()
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                ),
            ),
            DType::F64 => (
                "f64",
                TensorData::Float(t.to_vec::<f64>().unwrap_or_default()),
            ),
            DType::I64 => (
                "i64",
                TensorData::Int(t.to_vec::<i64>().unwrap_or_default()),
            ),
            DType::I32 => (
                "i32",
                TensorData::Int(
                    t.to_vec::<i32>()
                        .unwrap_or_default()
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
            ),
            DType::U8 => (
                "u8",
                TensorData::Int(
                    t.to_vec::<u8>()
                        .unwrap_or_default()
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
            ),
        };
        Self {
            dtype: dtype.into(),
            shape,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Command,
    }

    fn cli(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn names_match_the_command_line_and_json() {
        let samples = [
            cli(&["spawn", "a", "m.wasm"]),
            cli(&["task", "a"]),
            cli(&["publish", "t", "p"]),
            cli(&["send", "a", "p"]),
            cli(&["stop-agent", "a"]),
            cli(&["swap-model", "m", "2"]),
            cli(&["join-channel", "a", "c"]),
            cli(&["upgrade", "a", "m.wasm"]),
            cli(&["snapshot"]),
            cli(&["stop"]),
            cli(&["status"]),
            cli(&["children"]),
            cli(&["load-model", "m", "3", "m.onnx"]),
            cli(&["unload-model", "m"]),
            cli(&["infer", "m", r#"{"shape":[1],"data":[1]}"#]),
            cli(&["batch-infer", "m", r#"{"shape":[1],"data":[1]}"#]),
        ];
        for (c, name) in samples.iter().zip(Command::NAMES) {
            assert_eq!(c.name(), name);
            let j = c.to_json();
            assert_eq!(j["cmd"], name);
            assert_eq!(&Command::from_json(j).unwrap(), c, "{name}");
            // The journal's encoding (of the inputs).
            if c.is_input() {
                let bytes = shm_protocol::codec::encode(c).unwrap();
                let back: Command = shm_protocol::codec::decode(&bytes).unwrap();
                assert_eq!(&back, c);
            }
        }
    }

    #[test]
    fn defaults_are_the_same_on_both_sides() {
        let from_cli = cli(&["spawn", "a", "m.wasm"]);
        let from_json =
            Command::from_json(serde_json::json!({"cmd":"spawn","name":"a","module":"m.wasm"}))
                .unwrap();
        assert_eq!(from_cli, from_json);
        let Command::Spawn {
            tenant,
            memory,
            fuel,
            ..
        } = from_cli
        else {
            panic!()
        };
        assert_eq!(tenant, DEFAULT_TENANT);
        assert_eq!(memory, crate::manifest::DEFAULT_AGENT_MEMORY);
        assert_eq!(fuel, crate::manifest::DEFAULT_AGENT_FUEL);
        assert_eq!(
            cli(&["load-model", "m", "3", "m.onnx"]),
            Command::from_json(
                serde_json::json!({"cmd":"load-model","id":"m","version":"3","path":"m.onnx"})
            )
            .unwrap()
        );
        assert_eq!(
            cli(&["task", "a", "x", "--after", "0x10", "--after", "3"]),
            Command::from_json(
                serde_json::json!({"cmd":"task","agent":"a","payload":"x","deps":[16,3]})
            )
            .unwrap()
        );
    }

    #[test]
    fn tensors_round_trip() {
        let t: TensorJson = r#"{"shape":[2],"data":[1.5,-2]}"#.parse().unwrap();
        let tensor = t.to_tensor().unwrap();
        assert_eq!(tensor.to_vec::<f32>().unwrap(), vec![1.5f32, -2.0]);
        assert_eq!(
            TensorJson::from_tensor(&tensor).to_tensor().unwrap(),
            tensor
        );
        let i: TensorJson = r#"{"dtype":"i32","shape":[1,2],"data":[7,-7]}"#.parse().unwrap();
        assert_eq!(i.to_tensor().unwrap().to_vec::<i32>().unwrap(), vec![7, -7]);
        let bad: TensorJson = r#"{"shape":[3],"data":[1]}"#.parse().unwrap();
        assert!(bad.to_tensor().is_err());
        let bad: TensorJson = r#"{"dtype":"u8","shape":[1],"data":[300]}"#.parse().unwrap();
        assert!(bad.to_tensor().is_err());
    }

    #[test]
    fn errors_are_bad_requests() {
        assert!(Command::from_json(serde_json::json!({"cmd":"fly"})).is_err());
        assert!(Command::from_json(serde_json::json!({"name":"x"})).is_err());
        assert!(Command::from_json(serde_json::json!({"cmd":"send","agent":"a"})).is_err());
    }
}
