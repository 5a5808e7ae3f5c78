//! The deterministic wasmtime engine, the module interface checks, and
//! compilation to (and loading from) the supervisor's compiled form
//! (validation and instrumentation of the bytes: [`crate::instrument`]).
//!
//! Workers never read module files or a compiled-module cache: the
//! supervisor sends the module bytes, and the compiled form produced by a
//! fresh process that ran no agent ([`compile`]), which workers then load
//! ([`load_module`]).
//!
//! # Determinism settings
//!
//! | setting | value | why |
//! |---|---|---|
//! | fuel | on | the deterministic bound on every call |
//! | NaN canonicalisation | on | float results identical on every CPU |
//! | relaxed SIMD | rejected | its results may differ between CPUs |
//! | threads, shared memory | off (the `threads` feature is not even compiled in) | no data races, no scheduling dependence |
//! | multi-memory, memory64 | off | one 32-bit memory per agent, captured whole |
//! | epoch interruption | on, as a wall-clock watchdog only | an epoch kill is a fault, never a result |
//! | memory reservation / guard | 0 / 0 (packed, explicitly bounds-checked memories) | 10,000 agents fit under an address-space limit |
//! | reservation for growth | 0 (a growing memory moves) | each memory is one mapping, and adjacent ones merge: 50,000 agents per worker stay far below the kernel's 65,530 mappings per process (with room to grow, two mappings per agent hit that limit at about 32,000 agents) |
//!
//! wasmtime is pinned (`=48.0.8`): its fuel costs are part of the contract.

use crate::error::LoadError;
use shm_protocol::worker::ModuleFacts;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Engine, ExternType, Module, OptLevel, ValType};

/// ABI major version this worker implements.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version this worker implements.
pub const ABI_MINOR: u32 = 0;
/// Engine epoch period (the watchdog's resolution).
pub const EPOCH_PERIOD: Duration = Duration::from_millis(10);

/// Builds the deterministic engine (see the module docs).
pub fn deterministic_engine() -> Result<Engine, LoadError> {
    let mut c = Config::new();
    c.consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_relaxed_simd(false)
        .shared_memory(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .epoch_interruption(true)
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0)
        .guard_before_linear_memory(false)
        .memory_init_cow(false)
        .max_wasm_stack(512 << 10)
        .parallel_compilation(false);
    Engine::new(&c).map_err(|e| LoadError::Engine(e.to_string()))
}

/// Starts the thread that advances the engine's epoch every
/// [`EPOCH_PERIOD`] (the watchdog clock) and calls `beat` each time (the
/// worker's heartbeat: it goes on while an agent computes, and stops only
/// when the whole process is stopped or hung); it stops when the returned
/// guard is dropped.
///
/// Returns once the thread runs its loop, i.e. after the C library and
/// `std` have set it up (robust futex list, rseq, name, signal stack): the
/// worker sandbox installs its seccomp filter right after, and those set-up
/// calls are not in its allowlist.
pub fn start_epoch_ticker(engine: &Engine, mut beat: impl FnMut() + Send + 'static) -> EpochTicker {
    let stop = Arc::new(AtomicBool::new(false));
    let (e, s) = (engine.clone(), stop.clone());
    let (started_tx, started) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("lockstep-epoch".into())
        .spawn(move || {
            let _ = started_tx.send(());
            drop(started_tx);
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_PERIOD);
                e.increment_epoch();
                beat();
            }
        })
        .ok();
    if thread.is_some() {
        let _ = started.recv();
    }
    EpochTicker { stop, thread }
}

/// Stops the epoch thread on drop.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The signature of an import or export, for checking modules.
type Sig = (&'static [ValType], &'static [ValType]);

const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

/// Every import a module may use (docs/abi.md), with its signature.
pub const IMPORTS: &[(&str, Sig)] = &[
    ("send", (&[I64, I32, I32], &[I32])),
    ("publish", (&[I32, I32, I32, I32], &[I32])),
    ("subscribe", (&[I32, I32], &[I32])),
    ("unsubscribe", (&[I32, I32], &[I32])),
    ("join_channel", (&[I32, I32], &[I32])),
    ("leave_channel", (&[I32, I32], &[I32])),
    ("channel_send", (&[I32, I32, I32, I32], &[I32])),
    ("schedule_task", (&[I64, I32, I32, I32, I32, I32], &[I64])),
    ("infer", (&[I32, I32, I32, I32], &[I64])),
    ("log", (&[I32, I32, I32], &[I32])),
    ("random", (&[], &[I64])),
    ("tick", (&[], &[I64])),
    ("agent_id", (&[], &[I64])),
];

/// Required function exports and their signatures.
pub const EXPORTS: &[(&str, Sig)] = &[
    ("agent_abi_version", (&[], &[I32])),
    ("agent_buffer", (&[I32], &[I32])),
    ("agent_init", (&[], &[I32])),
    ("agent_step", (&[I32], &[I32])),
    ("agent_receive", (&[I32], &[I32])),
    ("agent_shutdown", (&[], &[I32])),
];

/// Optional function exports.
pub const OPTIONAL_EXPORTS: &[(&str, Sig)] = &[("agent_migrate", (&[I32], &[I32]))];

/// A mutable global of a module and the export through which it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutableGlobal {
    /// Index in the module's global index space.
    pub index: u32,
    /// Export name (the module's own, or one we added).
    pub export: String,
    /// Its value type (`i32`, `i64`, `f32`, `f64`, `v128`).
    pub ty: String,
}

/// A validated, instrumented, compiled agent module.
#[derive(Debug, Clone)]
pub struct AgentModule {
    /// Name (for messages).
    pub name: String,
    /// BLAKE3 of the original bytes: the module's version hash.
    pub hash: [u8; 32],
    /// The compiled module.
    pub module: Module,
    /// Every mutable global, in index order.
    pub globals: Vec<MutableGlobal>,
    /// Whether the module exports `agent_migrate`.
    pub has_migrate: bool,
    /// Its active data segments with constant offsets, `(offset, bytes)`:
    /// the memory contents an instance starts with besides zeros (a
    /// hot-swap tells state from static data by comparing against them).
    pub data: Arc<Vec<(u32, Vec<u8>)>>,
    /// Whether instrumentation added the step entry
    /// ([`crate::instrument::STEP_ENTRY_EXPORT`]).
    pub step_entry: bool,
    /// Initial memory size in bytes.
    pub min_memory: u64,
    /// Its `agent_abi_version` (0 until checked).
    pub abi_version: u32,
}

impl AgentModule {
    /// What the module declares (its ABI version must have been checked).
    pub fn facts(&self) -> ModuleFacts {
        ModuleFacts {
            blake3: self.hash,
            abi_version: self.abi_version,
            globals: self.globals.iter().map(|g| g.ty.clone()).collect(),
            migrates: self.has_migrate,
            min_memory: self.min_memory,
        }
    }
}

fn sig_matches(ty: &wasmtime::FuncType, sig: Sig) -> bool {
    let p: Vec<ValType> = ty.params().collect();
    let r: Vec<ValType> = ty.results().collect();
    p.len() == sig.0.len()
        && r.len() == sig.1.len()
        && p.iter().zip(sig.0).all(|(a, b)| ValType::eq(a, b))
        && r.iter().zip(sig.1).all(|(a, b)| ValType::eq(a, b))
}

fn fmt_sig(sig: Sig) -> String {
    let f = |v: &[ValType]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", f(sig.0), f(sig.1))
}

/// The key of an engine configuration and of the instrumentation: compiled
/// modules load only into an engine with the same key (wasmtime checks the
/// same compatibility hash again when deserializing).
pub fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    // The compatibility hash implements `Hash`; fold it through a fixed
    // (non-randomised) hasher into the key.
    struct B3(blake3::Hasher);
    impl Hasher for B3 {
        fn finish(&self) -> u64 {
            let h = self.0.finalize();
            u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = B3(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    // What instrumentation adds is compiled in too.
    crate::instrument::VERSION.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Validates, instruments and compiles an agent module — or, given
/// `compiled` (the supervisor's copy of what [`compile`] produced for these
/// bytes), loads that instead of compiling.  `memory_limit` bounds the
/// memory's declared minimum.
#[allow(
    unsafe_code,
    reason = "wasmtime's Module::deserialize; see the SAFETY comment"
)]
pub fn load_module(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
    compiled: Option<&[u8]>,
    memory_limit: u64,
) -> Result<AgentModule, LoadError> {
    let hash = *blake3::hash(bytes).as_bytes();
    // Accept the text format too (handy for fixtures).
    let binary;
    let bytes = if bytes.starts_with(b"\0asm") {
        bytes
    } else {
        binary = wat::parse_bytes(bytes)
            .map_err(|e| LoadError::Invalid {
                module: name.to_owned(),
                reason: e.to_string(),
            })?
            .into_owned();
        &binary[..]
    };
    let scan = crate::instrument::scan(name, bytes)?;
    let (code, globals, step_entry) = crate::instrument::instrument(name, bytes, &scan)?;
    let module = match compiled {
        // SAFETY: `compiled` comes from the supervisor, which only hands
        // out bytes that `Module::serialize` produced for these very module
        // bytes in a fresh process of this binary that never ran an agent
        // (its compile step; workers cannot write what it hands out), and
        // wasmtime re-checks that they were made by a compatible engine.
        Some(c) => unsafe { Module::deserialize(engine, c) }.map_err(|e| LoadError::Invalid {
            module: name.to_owned(),
            reason: format!("its compiled form does not load: {e:#}"),
        })?,
        None => Module::new(engine, &code).map_err(|e| LoadError::Invalid {
            module: name.to_owned(),
            reason: format!("{e:#}"),
        })?,
    };
    let min_memory = check_interface(name, &module, memory_limit)?;
    if step_entry
        && !matches!(
            module.get_export(crate::instrument::STEP_ENTRY_EXPORT),
            Some(ExternType::Func(_))
        )
    {
        return Err(LoadError::Invalid {
            module: name.to_owned(),
            reason: "its compiled form lacks the step entry its instrumentation adds (compiled by another version)".into(),
        });
    }
    let has_migrate = module.get_export("agent_migrate").is_some();
    Ok(AgentModule {
        name: name.to_owned(),
        hash,
        module,
        globals,
        has_migrate,
        data: Arc::new(scan.data),
        step_entry,
        min_memory,
        abi_version: 0,
    })
}

/// Compiles a module for the supervisor's compile step: validation,
/// instrumentation, compilation, then the serialized form that workers
/// load with [`load_module`].
pub fn compile(
    engine: &Engine,
    name: &str,
    bytes: &[u8],
) -> Result<(AgentModule, Vec<u8>), LoadError> {
    // The memory limit is checked per agent when modules are loaded; here
    // only the module itself is validated.
    let module = load_module(engine, name, bytes, None, u64::MAX)?;
    let serialized = module.module.serialize().map_err(|e| LoadError::Invalid {
        module: name.to_owned(),
        reason: format!("cannot serialize its compiled form: {e:#}"),
    })?;
    Ok((module, serialized))
}

/// Checks imports, exports and the memory against the ABI; returns the
/// memory's initial size in bytes.
fn check_interface(name: &str, module: &Module, memory_limit: u64) -> Result<u64, LoadError> {
    for imp in module.imports() {
        let known = IMPORTS
            .iter()
            .find(|(n, _)| imp.module() == "lockstep" && *n == imp.name());
        match (known, imp.ty()) {
            (Some((_, sig)), ExternType::Func(ft)) if sig_matches(&ft, *sig) => {}
            (Some((n, sig)), _) => {
                return Err(LoadError::ImportSignature {
                    module: name.to_owned(),
                    import: (*n).to_owned(),
                    expected: fmt_sig(*sig),
                });
            }
            (None, _) => {
                return Err(LoadError::UnknownImport {
                    module: name.to_owned(),
                    import: format!("{}::{}", imp.module(), imp.name()),
                });
            }
        }
    }
    for (export, sig) in EXPORTS.iter().chain(OPTIONAL_EXPORTS) {
        let required = EXPORTS.iter().any(|(n, _)| n == export);
        match module.get_export(export) {
            Some(ExternType::Func(ft)) if sig_matches(&ft, *sig) => {}
            Some(_) => {
                return Err(LoadError::ExportSignature {
                    module: name.to_owned(),
                    export: (*export).to_owned(),
                    expected: fmt_sig(*sig),
                });
            }
            None if required => {
                return Err(LoadError::MissingExport {
                    module: name.to_owned(),
                    export: (*export).to_owned(),
                });
            }
            None => {}
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) => {
            let min = m.minimum().saturating_mul(m.page_size());
            if min > memory_limit {
                return Err(LoadError::MemoryTooLarge {
                    module: name.to_owned(),
                    declared: min,
                    limit: memory_limit,
                });
            }
            Ok(min)
        }
        _ => Err(LoadError::MissingExport {
            module: name.to_owned(),
            export: "memory".into(),
        }),
    }
}

/// Path helper for messages.
pub fn display(p: &Path) -> String {
    p.display().to_string()
}
