//! The model side of `lockstep-inference-host`: ONNX Runtime (through
//! `ort`) behind a deterministic, typed API.
//!
//! * [`locate_ort_library`] / [`init_runtime`] — find the pinned ONNX Runtime
//!   library (installed by `scripts/fetch-onnxruntime.sh`) and create the
//!   process's single ORT environment.
//! * [`ModelRegistry`] — loads models after checking their BLAKE3 hash, keeps
//!   several versions per model id (the last loaded one is *current*), runs
//!   single requests ([`ModelRegistry::infer`]) and a tick's requests as
//!   batches ([`ModelRegistry::batch_infer`]), and records where each model
//!   runs.
//!
//! # Determinism
//!
//! Every session is created with the same pinned options, so the same model,
//! input and library give bit-identical outputs run after run:
//!
//! * no automatic execution-provider selection (ORT's default policy may
//!   pick an NPU/GPU plugin by itself; ours is `PreferCPU`, which never
//!   does): a session runs exactly on the EPs registered here;
//! * graph optimisation [`GraphOptimizationLevel::Level1`] (basic,
//!   semantics-preserving rewrites only: constant folding, redundant-node
//!   elimination; no layout changes or approximating fusions) — the kernels
//!   executed are those of the graph as written;
//! * sequential execution, `intra_threads` intra-op threads (default 1 —
//!   more threads split reductions differently and may change float
//!   results), one inter-op thread; the host process runs each model id on
//!   a lane (thread) of its own, which changes when an answer is ready,
//!   never what it is;
//! * deterministic compute on (ORT picks deterministic kernels where it has a
//!   choice, e.g. cuDNN algorithms);
//! * CUDA (when used): device 0, TF32 off, heuristic convolution algorithm
//!   search (no timing-dependent benchmarking).
//!
//! Batching concatenates requests along dimension 0 and assumes the rows are
//! independent (as they are for a model with a dynamic leading batch
//! dimension; a model that mixes rows must be served with `max_batch` 1).
//! Whether a row's result is bitwise independent of the other rows in its
//! batch depends on the kernels: it is for the bundled MLP on CPU, it is not
//! for Magika (Conv/MatMul, differences ≈ 1e-7) — see the tests.  Batches are
//! formed only from the request order and `max_batch` the caller gives, so a
//! given tick's results are reproducible either way.
//!
//! Results are reproducible on one machine and library; across CPUs with
//! different instruction sets (ORT picks AVX2/AVX-512/NEON/… kernels at run
//! time) they may differ in the last bits.  Between x86_64 and aarch64 the
//! known culprits are `Reciprocal` and the reductions (`ReduceSum`,
//! `ReduceMean`); `scripts/onnx-portable.py` rewrites a model without them
//! (pairwise `Add` trees, `Div`), and the demo's models then give the same
//! bits on both (ARCHITECTURE.md, "Portability").
//!
//! The bytes that are hashed are the bytes that are loaded (the file is read
//! once), so a file swapped after the check cannot be loaded by mistake; the
//! price is that models with external-data files are not supported.

#![forbid(unsafe_code)]

pub mod gpu;
pub mod magika;
pub mod text;

use ort::environment::Environment;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use shm_protocol::inference::{
    BatchTelemetry, DType, Element, InferenceRequest, ModelStatus, Tensor, TensorInfo,
};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Version of ONNX Runtime that `scripts/fetch-onnxruntime.sh` installs.
pub const ORT_VERSION: &str = "1.32.0";

/// File name of the library under `.deps/onnxruntime/`.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.32.0";

/// What to tell a user whose ONNX Runtime library is missing or unusable.
pub const ORT_FIX_HINT: &str = "run scripts/fetch-onnxruntime.sh or pass --ort-lib PATH";

/// Largest model file accepted (protobuf's limit for a single-file model).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Errors of the inference host, each with a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// No ONNX Runtime library at any of the places looked at.
    #[error("no ONNX Runtime library found (looked at: {looked}); {ORT_FIX_HINT}")]
    LibraryNotFound {
        /// The paths tried, comma-separated.
        looked: String,
    },
    /// The library exists but could not be loaded or initialised.
    #[error("could not initialise ONNX Runtime from {path}: {message}; {ORT_FIX_HINT}")]
    RuntimeInit {
        /// The library.
        path: PathBuf,
        /// The loader's or runtime's complaint.
        message: String,
    },
    /// The library exists but this process may not read it: the host runs
    /// as an unprivileged user in its sandbox, and a directory on the
    /// library's path is closed to that user.
    #[error(
        "the ONNX Runtime library {path} cannot be read by this process (uid {uid}): a directory on its path is closed to that user — the sandboxed host runs unprivileged, so the library must not sit under a directory only its owner may enter (a 0700 home or temporary directory); make the directories on its path searchable by others (chmod o+x) or pass --ort-lib with a copy that is"
    )]
    RuntimeUnreadable {
        /// The library.
        path: PathBuf,
        /// This process's user.
        uid: u32,
    },
    /// `--device cuda` was asked for but CUDA cannot be used.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// The model file cannot be read.
    #[error("cannot read model file {path}: {message}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The expected hash is not 64 hex digits.
    #[error("expected BLAKE3 {0:?} is not 64 hex digits")]
    BadHashSpec(String),
    /// The model file's hash is not the expected one.
    #[error("model file {path} has BLAKE3 {actual}, expected {expected}; refusing to load it")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The expected hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// ONNX Runtime could not parse or prepare the model.
    #[error("ONNX Runtime cannot load model {path}: {message}")]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// ORT's complaint.
        message: String,
    },
    /// The model loads but its signature is not one the host can serve.
    #[error("model {model} is not supported: {reason}")]
    UnsupportedModel {
        /// `id@version`.
        model: String,
        /// Why.
        reason: String,
    },
    /// The same `id@version` is already loaded from different bytes.
    #[error("model {model} is already loaded with BLAKE3 {loaded}; unload it or use a new version")]
    VersionConflict {
        /// `id@version`.
        model: String,
        /// Hash of the loaded file.
        loaded: String,
    },
    /// No model with this id is loaded.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The model is loaded, but not this version.
    #[error("model {id:?} has no version {version:?} loaded (loaded: {loaded})")]
    UnknownVersion {
        /// Model id.
        id: String,
        /// The version asked for.
        version: String,
        /// The versions loaded.
        loaded: String,
    },
    /// The request names an input the model does not have.
    #[error("model {model} has no input {name:?} (its input is {expected:?})")]
    UnknownInput {
        /// `id@version`.
        model: String,
        /// The name asked for.
        name: String,
        /// The model's input.
        expected: String,
    },
    /// The input tensor has the wrong element type.
    #[error("input {input:?} of {model} takes {expected}, got {got}")]
    DTypeMismatch {
        /// `id@version`.
        model: String,
        /// Input name.
        input: String,
        /// The model's dtype.
        expected: DType,
        /// The request's dtype.
        got: DType,
    },
    /// The input tensor has the wrong shape.
    #[error("input {input:?} of {model} has shape {expected}, got {got:?}")]
    ShapeMismatch {
        /// `id@version`.
        model: String,
        /// Input name.
        input: String,
        /// The model's shape (`?` = any size).
        expected: String,
        /// The request's shape.
        got: Vec<u64>,
    },
    /// A text model's request is not text it can take.
    #[error("request to {model} refused: {reason}")]
    BadText {
        /// `id@version`.
        model: String,
        /// Why.
        reason: String,
    },
    /// ONNX Runtime failed while running the model.
    #[error("running {model} failed: {message}")]
    Run {
        /// `id@version`.
        model: String,
        /// ORT's complaint.
        message: String,
    },
    /// The model produced something that is not a valid ABI tensor.
    #[error("model {model} produced an unusable output: {reason}")]
    BadOutput {
        /// `id@version`.
        model: String,
        /// Why.
        reason: String,
    },
}

/// Which device `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePref {
    /// CUDA when it works, else CPU (recorded per model).
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA only, on this device (`cuda` is `cuda:0`); failing to use it
    /// is an error.
    Cuda(i32),
}

impl FromStr for DevicePref {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u16>().ok())
                .map(|n| Self::Cuda(i32::from(n)))
                .ok_or_else(|| {
                    format!("unknown device {other:?} (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

/// Where a model actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ORT's CPU execution provider.
    Cpu,
    /// ORT's CUDA execution provider on a device.
    Cuda(i32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

/// Session settings of a [`ModelRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// Device preference.
    pub device: DevicePref,
    /// Intra-op threads per session (≥ 1).
    pub intra_threads: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            device: DevicePref::Auto,
            intra_threads: 1,
        }
    }
}

/// Finds the ONNX Runtime library: `explicit` (`--ort-lib`), else
/// `ORT_DYLIB_PATH`, else `.deps/onnxruntime/libonnxruntime.so.1.32.0` in the
/// nearest directory above the running executable that has a `.deps`.
pub fn locate_ort_library(explicit: Option<&Path>) -> Result<PathBuf, InferenceError> {
    let env = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    locate_ort_library_from(explicit, env.as_deref(), exe.as_deref())
}

/// [`locate_ort_library`] with the environment and executable made explicit.
pub fn locate_ort_library_from(
    explicit: Option<&Path>,
    env: Option<&Path>,
    exe: Option<&Path>,
) -> Result<PathBuf, InferenceError> {
    let not_found = |looked: &[PathBuf]| InferenceError::LibraryNotFound {
        looked: if looked.is_empty() {
            "nothing: the executable's location is unknown".to_owned()
        } else {
            looked
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    // An explicit choice is never second-guessed.
    if let Some(p) = explicit.or(env) {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(not_found(&[p.to_path_buf()]))
        };
    }
    let mut looked = Vec::new();
    for dir in exe.into_iter().flat_map(Path::ancestors).skip(1) {
        let deps = dir.join(".deps");
        if deps.is_dir() {
            let candidate = deps.join("onnxruntime").join(ORT_LIB_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
            looked.push(candidate);
        }
    }
    if looked.is_empty()
        && let Some(exe) = exe
    {
        looked.push(PathBuf::from(format!(
            "<a directory above {} holding .deps/onnxruntime/{ORT_LIB_NAME}>",
            exe.display()
        )));
    }
    Err(not_found(&looked))
}

/// Loads the library at `lib` and creates the process's ONNX Runtime
/// environment.  ORT allows one environment per process, ever: a second
/// call fails.
pub fn init_runtime(lib: &Path) -> Result<Environment, InferenceError> {
    let init_err = |message: String| InferenceError::RuntimeInit {
        path: lib.to_path_buf(),
        message,
    };
    // The loader would only say that loading failed.
    if let Err(e) = std::fs::File::open(lib)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(InferenceError::RuntimeUnreadable {
            path: lib.to_path_buf(),
            uid: rustix::process::getuid().as_raw(),
        });
    }
    let builder = ort::init_from(lib).map_err(|e| init_err(e.to_string()))?;
    let env = builder
        .with_name("lockstep-inference-host")
        .with_telemetry(false)
        .build()
        .map_err(|e| init_err(e.to_string()))?;
    env.set_log_level(ort::logging::LogLevel::Warning);
    Ok(env)
}

/// Drops the builder an `ort` builder error carries.
fn plain(e: ort::Error<SessionBuilder>) -> ort::Error {
    ort::Error::new(e.to_string())
}

/// `id@version`.
fn label(id: &str, version: &str) -> String {
    format!("{id}@{version}")
}

/// The signature of a model input or output the host can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    name: String,
    dtype: DType,
    /// `None`: dynamic.
    shape: Vec<Option<u64>>,
}

impl Port {
    fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "?".to_owned(), |d| d.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }

    fn accepts(&self, shape: &[u64]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got))
    }
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Float64 => DType::F64,
        _ => return None,
    })
}

fn info_of(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_owned(),
            dtype: dtype_of(*ty),
            onnx_type: format!("{ty:?}"),
            shape: shape.iter().map(|d| u64::try_from(*d).ok()).collect(),
        },
        other => TensorInfo {
            name: name.to_owned(),
            dtype: None,
            onnx_type: format!("{other:?}"),
            shape: Vec::new(),
        },
    }
}

fn port_of(info: &TensorInfo, ty: &ValueType) -> Result<Port, String> {
    if !ty.is_tensor() {
        return Err(format!(
            "{:?} is a {}, not a tensor",
            info.name, info.onnx_type
        ));
    }
    let dtype = info.dtype.ok_or_else(|| {
        format!(
            "{:?} has element type {}; the ABI supports f32, i64, i32, u8, f64",
            info.name, info.onnx_type
        )
    })?;
    if info.shape.len() > shm_protocol::inference::MAX_RANK {
        return Err(format!(
            "{:?} has rank {} (maximum 8)",
            info.name,
            info.shape.len()
        ));
    }
    Ok(Port {
        name: info.name.clone(),
        dtype,
        shape: info.shape.clone(),
    })
}

/// One loaded model version.
#[derive(Debug)]
pub struct LoadedModel {
    id: String,
    version: String,
    device: Device,
    blake3_hex: String,
    session: Session,
    input: Port,
    output: Port,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    requests: u64,
    /// Tokenizer and pooling of a text model (`None`: a plain model).
    text: Option<text::TextModel>,
}

impl LoadedModel {
    /// Model id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Version label.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// Where it runs.
    pub fn device(&self) -> Device {
        self.device
    }
    /// BLAKE3 of the model file.
    pub fn blake3_hex(&self) -> &str {
        &self.blake3_hex
    }
    /// The model's inputs.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }
    /// The model's outputs (results are the first one).
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }
    /// Whether requests can be concatenated along dimension 0.
    pub fn batchable(&self) -> bool {
        self.input.shape.first() == Some(&None) && self.output.shape.first() == Some(&None)
    }

    fn label(&self) -> String {
        label(&self.id, &self.version)
    }

    fn check(&self, input_name: Option<&str>, t: &Tensor) -> Result<(), InferenceError> {
        if let Some(name) = input_name
            && name != self.input.name
        {
            return Err(InferenceError::UnknownInput {
                model: self.label(),
                name: name.to_owned(),
                expected: self.input.name.clone(),
            });
        }
        if t.dtype() != self.input.dtype {
            return Err(InferenceError::DTypeMismatch {
                model: self.label(),
                input: self.input.name.clone(),
                expected: self.input.dtype,
                got: t.dtype(),
            });
        }
        if !self.input.accepts(t.shape()) {
            return Err(InferenceError::ShapeMismatch {
                model: self.label(),
                input: self.input.name.clone(),
                expected: self.input.shape_text(),
                got: t.shape().to_vec(),
            });
        }
        Ok(())
    }

    /// Runs the session on one input (already checked); returns the first
    /// output.
    fn run(&mut self, shape: &[u64], data: &[u8]) -> Result<Tensor, InferenceError> {
        let model = self.label();
        let run_err = |message: String| InferenceError::Run {
            model: model.clone(),
            message,
        };
        let value = ort_value(self.input.dtype, shape, data).map_err(|e| run_err(e.to_string()))?;
        let inputs = vec![(
            Cow::Borrowed(self.input.name.as_str()),
            SessionInputValue::from(value),
        )];
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| run_err(e.to_string()))?;
        let bad = |reason: String| InferenceError::BadOutput {
            model: model.clone(),
            reason,
        };
        if outputs.len() == 0 {
            return Err(bad("the model returned no outputs".into()));
        }
        tensor_of(&outputs[0], self.output.dtype).map_err(bad)
    }
}

fn typed<T: Element>(data: &[u8]) -> Vec<T> {
    data.chunks_exact(std::mem::size_of::<T>())
        .map(T::get)
        .collect()
}

/// An ORT tensor holding `data` (which matches `shape` and `dtype`).
fn ort_value(dtype: DType, shape: &[u64], data: &[u8]) -> ort::Result<DynValue> {
    // Dimensions are ≤ i64::MAX (checked when the Tensor was built).
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(match dtype {
        DType::F32 => ort::value::Tensor::from_array((shape, typed::<f32>(data)))?.into_dyn(),
        DType::I64 => ort::value::Tensor::from_array((shape, typed::<i64>(data)))?.into_dyn(),
        DType::I32 => ort::value::Tensor::from_array((shape, typed::<i32>(data)))?.into_dyn(),
        DType::U8 => ort::value::Tensor::from_array((shape, data.to_vec()))?.into_dyn(),
        DType::F64 => ort::value::Tensor::from_array((shape, typed::<f64>(data)))?.into_dyn(),
    })
}

/// Copies an ORT output tensor of `dtype` into a [`Tensor`].
fn tensor_of(value: &DynValue, dtype: DType) -> Result<Tensor, String> {
    fn copy<T: Element + ort::value::PrimitiveTensorElementType>(
        value: &DynValue,
    ) -> Result<(Vec<u64>, Vec<u8>), String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        let dims = shape
            .iter()
            .map(|&d| u64::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<Vec<u64>, String>>()?;
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(data));
        for v in data {
            v.put(&mut bytes);
        }
        Ok((dims, bytes))
    }
    let (shape, data) = match dtype {
        DType::F32 => copy::<f32>(value)?,
        DType::I64 => copy::<i64>(value)?,
        DType::I32 => copy::<i32>(value)?,
        DType::U8 => copy::<u8>(value)?,
        DType::F64 => copy::<f64>(value)?,
    };
    Tensor::new(dtype, shape, data).map_err(|e| e.to_string())
}

/// All versions of one model id.
#[derive(Debug, Default)]
struct ModelEntry {
    versions: BTreeMap<String, LoadedModel>,
    /// Versions in load order; the last is current.
    order: Vec<String>,
}

impl ModelEntry {
    fn current(&self) -> Option<&str> {
        self.order.last().map(String::as_str)
    }
}

/// Answers of [`ModelRegistry::batch_infer`], one per request, in order.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The results.
    pub results: Vec<Result<Tensor, InferenceError>>,
    /// Measurements (`rss_bytes` is left 0; the caller samples it).
    pub telemetry: BatchTelemetry,
}

/// The loaded models of one host process.
#[derive(Debug)]
pub struct ModelRegistry {
    env: Environment,
    options: HostOptions,
    /// `Some(false)` once CUDA is known not to work (auto mode stops trying).
    cuda_ok: Option<bool>,
    models: BTreeMap<String, ModelEntry>,
}

/// A one-node `Identity` model (`f32[1]` → `f32[1]`) for start-up checks,
/// encoded by hand (ONNX protobuf, IR version 8, opset 17).
pub fn probe_model() -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn int(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }
    fn bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint((field << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn value_info(name: &str) -> Vec<u8> {
        let mut dim = Vec::new();
        int(1, 1, &mut dim); // dim_value = 1
        let mut shape = Vec::new();
        bytes(1, &dim, &mut shape); // TensorShapeProto.dim
        let mut tensor = Vec::new();
        int(1, 1, &mut tensor); // elem_type = FLOAT
        bytes(2, &shape, &mut tensor); // shape
        let mut ty = Vec::new();
        bytes(1, &tensor, &mut ty); // TypeProto.tensor_type
        let mut vi = Vec::new();
        bytes(1, name.as_bytes(), &mut vi); // ValueInfoProto.name
        bytes(2, &ty, &mut vi); // type
        vi
    }
    let mut node = Vec::new();
    bytes(1, b"x", &mut node); // input
    bytes(2, b"y", &mut node); // output
    bytes(4, b"Identity", &mut node); // op_type
    let mut graph = Vec::new();
    bytes(1, &node, &mut graph); // node
    bytes(2, b"probe", &mut graph); // name
    bytes(11, &value_info("x"), &mut graph); // input
    bytes(12, &value_info("y"), &mut graph); // output
    let mut opset = Vec::new();
    bytes(1, b"", &mut opset); // domain
    int(2, 17, &mut opset); // version
    let mut model = Vec::new();
    int(1, 8, &mut model); // ir_version
    bytes(2, b"lockstep", &mut model); // producer_name
    bytes(7, &graph, &mut model); // graph
    bytes(8, &opset, &mut model); // opset_import
    model
}

impl ModelRegistry {
    /// An empty registry creating sessions in `env`.
    pub fn new(env: &Environment, options: HostOptions) -> Self {
        Self {
            env: env.clone(),
            options,
            cuda_ok: None,
            models: BTreeMap::new(),
        }
    }

    /// An empty registry sharing this one's runtime, options and what is
    /// known of CUDA (one per model lane of the host process).
    pub fn sibling(&self) -> Self {
        Self {
            env: self.env.clone(),
            options: self.options,
            cuda_ok: self.cuda_ok,
            models: BTreeMap::new(),
        }
    }

    /// The options.
    pub fn options(&self) -> HostOptions {
        self.options
    }

    /// Session options shared by every device (see the crate docs).
    fn builder(&self) -> ort::Result<SessionBuilder> {
        let threads = self.options.intra_threads.max(1);
        let b = Session::builder(&self.env)?;
        // No automatic EP selection: the EPs we register are the only ones,
        // so the recorded device is the real one.
        let b = b
            .with_auto_device(AutoDevicePolicy::PreferCPU)
            .map_err(plain)?;
        let b = b
            .with_optimization_level(GraphOptimizationLevel::Level1)
            .map_err(plain)?;
        let b = b.with_intra_threads(threads).map_err(plain)?;
        let b = b.with_inter_threads(1).map_err(plain)?;
        let b = b.with_parallel_execution(false).map_err(plain)?;
        let b = b.with_deterministic_compute(true).map_err(plain)?;
        b.with_intra_op_spinning(false).map_err(plain)
    }

    fn cpu_session(&self, bytes: &[u8]) -> ort::Result<Session> {
        self.builder()?.commit_from_memory(bytes)
    }

    /// The CUDA device sessions go to (`cuda:N`; 0 for `auto`).
    fn cuda_device(&self) -> i32 {
        match self.options.device {
            DevicePref::Cuda(n) => n,
            DevicePref::Auto | DevicePref::Cpu => 0,
        }
    }

    fn cuda_session(&self, bytes: &[u8]) -> ort::Result<Session> {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(self.cuda_device())
            .with_tf32(false)
            .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
            .build()
            .error_on_failure();
        self.builder()?
            .with_execution_providers([cuda])
            .map_err(plain)?
            .commit_from_memory(bytes)
    }

    /// Builds a session on the preferred device.  `Auto` falls back to a
    /// fresh CPU session when CUDA registration or commit fails.
    fn session(&mut self, bytes: &[u8]) -> Result<(Session, Device), (String, bool)> {
        let try_cuda = match self.options.device {
            DevicePref::Cpu => false,
            DevicePref::Cuda(_) => true,
            DevicePref::Auto => self.cuda_ok != Some(false),
        };
        if try_cuda {
            match self.cuda_session(bytes) {
                Ok(s) => {
                    self.cuda_ok = Some(true);
                    return Ok((s, Device::Cuda(self.cuda_device())));
                }
                Err(e) if matches!(self.options.device, DevicePref::Cuda(_)) => {
                    return Err((e.to_string(), true));
                }
                Err(e) => {
                    tracing::info!(error = %e, "CUDA session failed; using the CPU");
                    // Only a failure that also happens on the CPU is the
                    // model's fault; remember CUDA as broken otherwise.
                    match self.cpu_session(bytes) {
                        Ok(s) => {
                            if self.cuda_ok.is_none() {
                                self.cuda_ok = Some(false);
                            }
                            return Ok((s, Device::Cpu));
                        }
                        Err(e) => return Err((e.to_string(), false)),
                    }
                }
            }
        }
        self.cpu_session(bytes)
            .map(|s| (s, Device::Cpu))
            .map_err(|e| (e.to_string(), false))
    }

    /// Checks that sessions can be created and run at all (CPU), with a
    /// built-in one-node model.
    pub fn self_test(&self) -> Result<(), InferenceError> {
        let err = |message: String| InferenceError::RuntimeInit {
            path: PathBuf::from("<loaded library>"),
            message: format!("self-test failed: {message}"),
        };
        let mut session = self
            .cpu_session(&probe_model())
            .map_err(|e| err(e.to_string()))?;
        let input = ort::value::Tensor::from_array(([1i64], vec![1.5f32]))
            .map_err(|e| err(e.to_string()))?;
        let outputs = session
            .run([SessionInputValue::from(input)])
            .map_err(|e| err(e.to_string()))?;
        if outputs.len() == 0 {
            return Err(err("no output".into()));
        }
        let y = tensor_of(&outputs[0], DType::F32).map_err(err)?;
        if y.to_vec::<f32>() != Some(vec![1.5]) {
            return Err(err(format!("Identity returned {y:?}")));
        }
        Ok(())
    }

    /// Checks that a CUDA session can be created (with the built-in model).
    /// In `Auto` mode a failure makes later loads go straight to the CPU.
    pub fn probe_cuda(&mut self) -> Result<(), InferenceError> {
        match self.cuda_session(&probe_model()) {
            Ok(_) => {
                self.cuda_ok = Some(true);
                Ok(())
            }
            Err(e) => {
                self.cuda_ok = Some(false);
                Err(InferenceError::CudaUnavailable(e.to_string()))
            }
        }
    }

    /// Reads `path` ([`read_model_file`]) and loads it as `id@version`
    /// ([`ModelRegistry::load_model_bytes`]).
    pub fn load_model(
        &mut self,
        id: &str,
        version: &str,
        path: &Path,
        expected_blake3_hex: &str,
    ) -> Result<&LoadedModel, InferenceError> {
        parse_hash(expected_blake3_hex)?;
        let bytes = read_model_file(path).map_err(|message| InferenceError::ModelFile {
            path: path.to_path_buf(),
            message,
        })?;
        self.load_model_bytes(id, version, path, &bytes, expected_blake3_hex)
    }

    /// Loads `bytes` (read from `path`, which names them in messages) as
    /// `id@version` after checking their BLAKE3 against
    /// `expected_blake3_hex`; the version becomes the model's current one.
    ///
    /// Loading the same `id@version` again with the same hash changes
    /// nothing (and makes it current); with a different hash it is refused.
    pub fn load_model_bytes(
        &mut self,
        id: &str,
        version: &str,
        path: &Path,
        bytes: &[u8],
        expected_blake3_hex: &str,
    ) -> Result<&LoadedModel, InferenceError> {
        let expected = parse_hash(expected_blake3_hex)?;
        if bytes.len() as u64 > MAX_MODEL_BYTES {
            return Err(InferenceError::ModelFile {
                path: path.to_path_buf(),
                message: format!(
                    "{} bytes is above the {MAX_MODEL_BYTES}-byte limit",
                    bytes.len()
                ),
            });
        }
        let actual = blake3::hash(bytes);
        if actual != expected {
            return Err(InferenceError::HashMismatch {
                path: path.to_path_buf(),
                expected: expected.to_hex().to_string(),
                actual: actual.to_hex().to_string(),
            });
        }
        let hex = actual.to_hex().to_string();
        if let Some(existing) = self.models.get(id).and_then(|e| e.versions.get(version)) {
            if existing.blake3_hex != hex {
                return Err(InferenceError::VersionConflict {
                    model: label(id, version),
                    loaded: existing.blake3_hex.clone(),
                });
            }
            let entry = self.models.get_mut(id).ok_or_else(|| unknown(id))?;
            entry.order.retain(|v| v != version);
            entry.order.push(version.to_owned());
            return entry.versions.get(version).ok_or_else(|| unknown(id));
        }
        // A text model (its tokenizer and ONNX model in one blob) or a
        // plain ONNX model.
        let blob = lockstep_common::text_model::decode(bytes).map_err(|e| {
            InferenceError::InvalidModel {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let onnx = blob.map_or(bytes, |b| b.model);
        let (session, device) = self.session(onnx).map_err(|(message, cuda)| {
            if cuda {
                InferenceError::CudaUnavailable(message)
            } else {
                InferenceError::InvalidModel {
                    path: path.to_path_buf(),
                    message,
                }
            }
        })?;
        let model = label(id, version);
        let unsupported = |reason: String| InferenceError::UnsupportedModel {
            model: model.clone(),
            reason,
        };
        let (text, input, output, inputs, outputs) = if let Some(blob) = blob {
            let p = text::prepare(blob.kind, blob.tokenizer, &session).map_err(&unsupported)?;
            (Some(p.text), p.input, p.output, p.inputs, p.outputs)
        } else {
            let inputs: Vec<TensorInfo> = session
                .inputs()
                .iter()
                .map(|o| info_of(o.name(), o.dtype()))
                .collect();
            let outputs: Vec<TensorInfo> = session
                .outputs()
                .iter()
                .map(|o| info_of(o.name(), o.dtype()))
                .collect();
            if session.inputs().len() != 1 {
                return Err(unsupported(format!(
                    "it has {} inputs; requests carry exactly one tensor",
                    session.inputs().len()
                )));
            }
            let input = port_of(&inputs[0], session.inputs()[0].dtype()).map_err(&unsupported)?;
            let Some(first) = session.outputs().first() else {
                return Err(unsupported("it has no outputs".into()));
            };
            let output = port_of(&outputs[0], first.dtype()).map_err(&unsupported)?;
            (None, input, output, inputs, outputs)
        };
        tracing::info!(%model, %device, "model loaded");
        let loaded = LoadedModel {
            id: id.to_owned(),
            version: version.to_owned(),
            device,
            blake3_hex: hex,
            session,
            input,
            output,
            inputs,
            outputs,
            requests: 0,
            text,
        };
        let entry = self.models.entry(id.to_owned()).or_default();
        entry.order.push(version.to_owned());
        Ok(entry.versions.entry(version.to_owned()).or_insert(loaded))
    }

    /// Unloads one version (`Some`) or all versions (`None`) of `id`;
    /// returns the versions unloaded (empty if none were loaded).  If the
    /// current version goes, the most recently loaded remaining one becomes
    /// current.
    pub fn unload_model(&mut self, id: &str, version: Option<&str>) -> Vec<String> {
        let Some(entry) = self.models.get_mut(id) else {
            return Vec::new();
        };
        let removed = match version {
            None => std::mem::take(&mut entry.order),
            Some(v) if entry.versions.contains_key(v) => {
                entry.order.retain(|x| x != v);
                vec![v.to_owned()]
            }
            Some(_) => Vec::new(),
        };
        for v in &removed {
            entry.versions.remove(v);
        }
        if entry.versions.is_empty() {
            self.models.remove(id);
        }
        let mut removed = removed;
        removed.sort();
        removed
    }

    /// The loaded model `id` at `version` (`None`: current).
    pub fn model(&self, id: &str, version: Option<&str>) -> Result<&LoadedModel, InferenceError> {
        let entry = self.models.get(id).ok_or_else(|| unknown(id))?;
        let v = match version {
            Some(v) => v,
            None => entry.current().ok_or_else(|| unknown(id))?,
        };
        entry
            .versions
            .get(v)
            .ok_or_else(|| InferenceError::UnknownVersion {
                id: id.to_owned(),
                version: v.to_owned(),
                loaded: entry.order.join(", "),
            })
    }

    fn model_mut(
        &mut self,
        id: &str,
        version: Option<&str>,
    ) -> Result<&mut LoadedModel, InferenceError> {
        // Resolve through the shared path for identical errors.
        let v = self.model(id, version)?.version.clone();
        self.models
            .get_mut(id)
            .and_then(|e| e.versions.get_mut(&v))
            .ok_or_else(|| unknown(id))
    }

    /// Runs one request on `id` at `version` (`None`: current).
    pub fn infer(
        &mut self,
        id: &str,
        version: Option<&str>,
        input_name: Option<&str>,
        tensor: &Tensor,
    ) -> Result<Tensor, InferenceError> {
        let m = self.model_mut(id, version)?;
        m.check(input_name, tensor)?;
        m.requests += 1;
        if m.text.is_some() {
            return text::infer_one(m, tensor);
        }
        m.run(tensor.shape(), tensor.data())
    }

    /// Runs a tick's requests for one model.
    ///
    /// Requests are taken in the given order.  Invalid requests get their
    /// error and are skipped; the valid ones are grouped into batches of
    /// consecutive requests whose shapes agree beyond dimension 0 and whose
    /// rows (dimension 0) add up to at most `max_batch` (`0` counts as 1; a
    /// request with more rows than that runs alone).  Each batch is one
    /// model run on the requests concatenated along dimension 0, whose
    /// output is split back by rows.  Models without a dynamic leading
    /// dimension on their input and output run every request alone.  If a
    /// batched run fails, its requests are retried one at a time, so one bad
    /// request cannot fail its neighbours.
    pub fn batch_infer(
        &mut self,
        id: &str,
        version: Option<&str>,
        requests: &[InferenceRequest],
        max_batch: u32,
    ) -> BatchOutcome {
        let t0 = Instant::now();
        let mut telemetry = BatchTelemetry::default();
        let m = match self.model_mut(id, version) {
            Ok(m) => m,
            Err(e) => {
                return BatchOutcome {
                    results: requests.iter().map(|_| Err(e.clone())).collect(),
                    telemetry,
                };
            }
        };
        telemetry.device = m.device.to_string();
        if m.text.is_some() {
            return text::batch_infer(m, requests, max_batch, t0, telemetry);
        }
        let mut results: Vec<Option<Result<Tensor, InferenceError>>> =
            requests.iter().map(|_| None).collect();
        // Validate, then group.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let max_rows = u64::from(max_batch.max(1));
        let batchable = m.batchable();
        let mut rows_in_group = 0u64;
        for (i, r) in requests.iter().enumerate() {
            if let Err(e) = m.check(r.input_name.as_deref(), &r.tensor) {
                results[i] = Some(Err(e));
                continue;
            }
            let shape = r.tensor.shape();
            let rows = shape.first().copied().unwrap_or(1);
            let joins = batchable
                && groups.last().is_some_and(|g| {
                    let prev = requests[g[0]].tensor.shape();
                    prev[1..] == shape[1..] && rows_in_group.saturating_add(rows) <= max_rows
                });
            if joins {
                rows_in_group += rows;
                if let Some(g) = groups.last_mut() {
                    g.push(i);
                }
            } else {
                rows_in_group = rows;
                groups.push(vec![i]);
            }
        }
        let mut first_run = None;
        let mut run = |m: &mut LoadedModel, shape: &[u64], data: &[u8], n: usize| {
            let start = Instant::now();
            first_run.get_or_insert(start);
            let out = m.run(shape, data);
            telemetry.run_ns += start.elapsed().as_nanos() as u64;
            telemetry.batches += 1;
            telemetry.max_batch_size = telemetry.max_batch_size.max(n as u32);
            out
        };
        for g in &groups {
            if let [i] = g[..] {
                let t = &requests[i].tensor;
                results[i] = Some(run(m, t.shape(), t.data(), 1));
                continue;
            }
            // Concatenate along dimension 0.
            let first = requests[g[0]].tensor.shape();
            let total: u64 = g.iter().map(|&i| requests[i].tensor.shape()[0]).sum();
            let mut shape = first.to_vec();
            shape[0] = total;
            let mut data =
                Vec::with_capacity(g.iter().map(|&i| requests[i].tensor.data().len()).sum());
            for &i in g {
                data.extend_from_slice(requests[i].tensor.data());
            }
            let split = run(m, &shape, &data, g.len()).and_then(|out| {
                split_rows(
                    &out,
                    g.iter().map(|&i| requests[i].tensor.shape()[0]),
                    total,
                )
            });
            match split {
                Ok(parts) => {
                    for (&i, part) in g.iter().zip(parts) {
                        results[i] = Some(Ok(part));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "batched run failed; running the requests alone");
                    for &i in g {
                        let t = &requests[i].tensor;
                        results[i] = Some(run(m, t.shape(), t.data(), 1));
                    }
                }
            }
        }
        m.requests += requests.len() as u64;
        telemetry.queue_ns = first_run
            .unwrap_or_else(Instant::now)
            .duration_since(t0)
            .as_nanos() as u64;
        let label = m.label();
        BatchOutcome {
            results: results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(InferenceError::Run {
                            model: label.clone(),
                            message: "not run".into(),
                        })
                    })
                })
                .collect(),
            telemetry,
        }
    }

    /// Every loaded version, by id then version.
    pub fn status(&self) -> Vec<ModelStatus> {
        let mut out = Vec::new();
        for (id, entry) in &self.models {
            for (version, m) in &entry.versions {
                out.push(ModelStatus {
                    id: id.clone(),
                    version: version.clone(),
                    current: entry.current() == Some(version.as_str()),
                    device: m.device.to_string(),
                    blake3_hex: m.blake3_hex.clone(),
                    inputs: m.inputs.clone(),
                    outputs: m.outputs.clone(),
                    requests: m.requests,
                });
            }
        }
        out
    }
}

/// Reads a model file: a regular file of at most [`MAX_MODEL_BYTES`].
pub fn read_model_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_big = |len: u64| format!("{len} bytes is above the {MAX_MODEL_BYTES}-byte limit");
    if meta.len() > MAX_MODEL_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows while we read it.
    file.take(MAX_MODEL_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

fn unknown(id: &str) -> InferenceError {
    InferenceError::UnknownModel(id.to_owned())
}

fn parse_hash(hex: &str) -> Result<blake3::Hash, InferenceError> {
    if hex.len() != 64 {
        return Err(InferenceError::BadHashSpec(hex.to_owned()));
    }
    blake3::Hash::from_hex(hex).map_err(|_| InferenceError::BadHashSpec(hex.to_owned()))
}

/// Splits a batched output into per-request tensors of `rows` rows each.
fn split_rows(
    out: &Tensor,
    rows: impl Iterator<Item = u64>,
    total: u64,
) -> Result<Vec<Tensor>, InferenceError> {
    let bad = |reason: String| InferenceError::BadOutput {
        model: String::new(),
        reason,
    };
    if out.shape().first() != Some(&total) {
        return Err(bad(format!(
            "batched output has shape {:?}, expected {total} rows",
            out.shape()
        )));
    }
    let row_bytes = if total == 0 {
        0
    } else {
        out.data().len() / total as usize
    };
    let mut at = 0usize;
    let mut parts = Vec::new();
    for r in rows {
        let len = row_bytes * r as usize;
        let mut shape = out.shape().to_vec();
        shape[0] = r;
        let bytes = out
            .data()
            .get(at..at + len)
            .ok_or_else(|| bad("short output".into()))?;
        parts
            .push(Tensor::new(out.dtype(), shape, bytes.to_vec()).map_err(|e| bad(e.to_string()))?);
        at += len;
    }
    Ok(parts)
}

/// Samples the process's resident set size, at most once per `max_age`,
/// from `/proc/self/statm` opened at creation: the sandbox's empty root has
/// no `/proc`, but a descriptor opened before it keeps reading this
/// process's numbers.
#[derive(Debug)]
pub struct RssSampler {
    statm: Option<std::fs::File>,
    page: u64,
    last: Option<(Instant, u64)>,
    max_age: Duration,
}

impl RssSampler {
    /// A sampler that reuses a sample for up to `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            statm: std::fs::File::open("/proc/self/statm").ok(),
            page: rustix::param::page_size() as u64,
            last: None,
            max_age,
        }
    }

    /// The RSS in bytes (0 if unknown).
    pub fn rss_bytes(&mut self) -> u64 {
        use std::os::unix::fs::FileExt;
        if let Some((at, v)) = self.last
            && at.elapsed() < self.max_age
        {
            return v;
        }
        let Some(f) = &self.statm else {
            return 0;
        };
        let mut buf = [0u8; 128];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        let v = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u64>().ok())
            .map_or(0, |pages| pages * self.page);
        self.last = Some((Instant::now(), v));
        v
    }
}
