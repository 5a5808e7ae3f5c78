//! `lockstep-inference-host`: the child process of the Lockstep supervisor
//! that owns all model execution (ONNX Runtime through `ort`).
//!
//! Started by the supervisor with an inherited shared-memory segment
//! (`--shm-fd`), it first loads ONNX Runtime (`--ort-lib`, else
//! `ORT_DYLIB_PATH`, else — for CUDA — the CUDA build that
//! `scripts/fetch-onnxruntime.sh --gpu` puts in `.deps/onnxruntime-gpu/`
//! with the CUDA libraries of `.deps/cuda/lib` ([`gpu`]), else
//! `.deps/onnxruntime/` above the executable) and
//! checks it works, then attaches, says hello and serves
//! [`Down::Inference`] commands over its ring pair, answering each with one
//! [`Up::Inference`] from the lane (thread) of the command's model
//! ([`lanes`]).  Keeping inference in its own process isolates the
//! runtime from native-library crashes (an abort inside ONNX Runtime takes
//! down this process only; the supervisor restarts it).
//!
//! A missing or unusable library, or `--device cuda` without a working CUDA,
//! ends the process with [`ExitCode::Runtime`] (72) and a message naming the
//! fix, before the handshake.
//!
//! It jails itself as it comes up (`lockstep_sandbox`, ARCHITECTURE.md
//! "Bring-up"): descriptors, cgroup and namespaces first; then ONNX Runtime
//! is loaded (the last file it reads: models arrive over the ring); then an
//! empty read-only root (the CUDA class keeps a read-only view of its
//! libraries and devices), no capabilities, an unprivileged uid; after the
//! handshake rlimits, Landlock, its heartbeat thread and the seccomp
//! allowlist of its class (threads allowed, processes never).

#![forbid(unsafe_code)]

mod answer;
mod lanes;
#[cfg(feature = "fault-injection")]
mod stand_in;

use clap::Parser;
use lockstep_common::ChildArgs;
use lockstep_inference_host::gpu::{self, GpuRuntime};
use lockstep_inference_host::{
    DevicePref, HostOptions, InferenceError, ModelRegistry, RssSampler, init_runtime,
    locate_ort_library,
};
use lockstep_sandbox::{Class, Jail, JailArgs};
use shm_protocol::bootstrap::{self, Reply};
use shm_protocol::control::{Down, ExitCode, Role, Up};
#[cfg(feature = "fault-injection")]
use shm_protocol::inference::InferenceCommand;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Command line of the inference host (normally written by the supervisor).
#[derive(Debug, Parser)]
#[command(
    name = "lockstep-inference-host",
    version,
    about = "Lockstep inference host process"
)]
struct Args {
    #[command(flatten)]
    child: ChildArgs,
    /// The ONNX Runtime shared library (default: $ORT_DYLIB_PATH, else
    /// .deps/onnxruntime/libonnxruntime.so.1.32.0 above the executable).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Where models run: `auto` (CUDA if it works, else CPU), `cpu`, `cuda`.
    #[arg(long, default_value = "auto")]
    device: DevicePref,
    /// Intra-op threads per model session (1 keeps results independent of
    /// the thread count).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    intra_threads: u16,
    /// Largest encoded reply to one batch, bytes; outputs beyond it are
    /// answered with errors, largest first.
    #[arg(long, default_value_t = shm_protocol::inference::MAX_REPLY)]
    max_reply: usize,
    #[command(flatten)]
    jail: JailArgs,
}

/// Running out of heap memory exits with the out-of-memory code.
#[global_allocator]
static ALLOC: shm_protocol::oom::OomExit = shm_protocol::oom::OomExit;

fn fail(e: &InferenceError) -> ! {
    eprintln!("lockstep-inference-host: {e}");
    ExitCode::Runtime.exit()
}

/// Loads ONNX Runtime from `lib` and the registry (and probes CUDA as
/// `--device` asks, with the CUDA libraries of `gpu` preloaded).
fn start_runtime(
    args: &Args,
    lib: &Path,
    gpu: Option<&GpuRuntime>,
) -> Result<ModelRegistry, InferenceError> {
    let env = init_runtime(lib)?;
    let options = HostOptions {
        device: args.device,
        intra_threads: usize::from(args.intra_threads),
    };
    let mut registry = ModelRegistry::new(&env, options);
    registry.self_test()?;
    let probe = |registry: &mut ModelRegistry| {
        if let Some(dir) = gpu.and_then(|g| g.cuda_libs.as_deref()) {
            gpu::preload_cuda_libraries(dir).map_err(InferenceError::CudaUnavailable)?;
        }
        registry.probe_cuda().map_err(|e| match e {
            InferenceError::CudaUnavailable(m) => InferenceError::CudaUnavailable(format!(
                "{}; {}",
                m.trim_end(),
                gpu::hint(lib, gpu::driver_version().as_deref())
            )),
            e => e,
        })
    };
    match args.device {
        DevicePref::Cpu => {}
        DevicePref::Cuda(_) => probe(&mut registry)?,
        DevicePref::Auto => match probe(&mut registry) {
            Ok(()) => tracing::info!(lib = %lib.display(), "--device auto: using CUDA"),
            Err(e) => tracing::info!(reason = %e, "--device auto: using the CPU"),
        },
    }
    tracing::debug!(lib = %lib.display(), ?options, "ONNX Runtime ready");
    Ok(registry)
}

/// Test-only fault injection (cargo feature `fault-injection`; absent from
/// release builds): `LOCKSTEP_INJECT=corrupt=BATCH:ATTACK,…` makes the host
/// answer batch `BATCH` by corrupting its ring to the supervisor with
/// `ATTACK` (a [`shm_protocol::rogue::Attack`] name), then wait to be
/// killed; `escape=BATCH:ATTEMPT` makes it try to break out of its sandbox
/// when batch `BATCH` arrives ([`lockstep_sandbox::escape`]).
#[cfg(feature = "fault-injection")]
mod inject {
    use lockstep_sandbox::escape::Attempt;
    use shm_protocol::rogue::Attack;

    /// Parsed directives.
    #[derive(Debug, Default)]
    pub struct Inject {
        pub corrupt: Vec<(u64, Attack)>,
        pub escape: Vec<(u64, Attempt)>,
    }

    pub fn from_env() -> Inject {
        let Ok(v) = std::env::var("LOCKSTEP_INJECT") else {
            return Inject::default();
        };
        let mut out = Inject::default();
        for d in v.split(',') {
            let d = d.trim();
            if let Some((b, how)) = d.strip_prefix("corrupt=").and_then(|r| r.split_once(':'))
                && let (Ok(b), Some(a)) = (b.parse(), Attack::parse(how))
            {
                out.corrupt.push((b, a));
            }
            if let Some((b, how)) = d.strip_prefix("escape=").and_then(|r| r.split_once(':'))
                && let (Ok(b), Some(a)) = (b.parse(), Attempt::parse(how))
            {
                out.escape.push((b, a));
            }
        }
        if !out.corrupt.is_empty() || !out.escape.is_empty() {
            tracing::warn!(directives = %v, "fault injection is enabled");
        }
        out
    }
}

/// The sandbox class of a host asked to run on `device`: CUDA when asked
/// for, or — for `auto` — when the machine has NVIDIA's devices (the class
/// is fixed before ONNX Runtime is loaded; a CUDA class whose CUDA turns out
/// not to work runs its models on the CPU).
fn class_for(device: DevicePref) -> Class {
    match device {
        DevicePref::Cpu => Class::InferenceCpu,
        DevicePref::Cuda(_) => Class::InferenceCuda,
        DevicePref::Auto if Path::new("/dev/nvidiactl").exists() => Class::InferenceCuda,
        DevicePref::Auto => Class::InferenceCpu,
    }
}

fn main() {
    bootstrap::install_panic_exit("lockstep-inference-host");
    let args: Args = lockstep_common::parse_or_exit();
    // ONNX Runtime warns that it cannot persist a telemetry id (it has no
    // home directory, and telemetry is off).
    lockstep_common::init_logging("warn,ort::logging=error");
    let keep: Vec<i32> = args.child.shm_fd.into_iter().collect();
    let class = class_for(args.device);
    let mut jail = Jail::enter(class, args.jail.config(&keep)).unwrap_or_else(|e| e.exit());
    // A CUDA host uses the fetched CUDA build unless a library is named.
    let named =
        args.ort_lib.is_some() || std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty());
    let gpu = (class == Class::InferenceCuda && !named)
        .then(|| gpu::locate_gpu_runtime(std::env::current_exe().ok().as_deref()))
        .flatten();
    let lib = match &gpu {
        Some(g) => g.lib.clone(),
        None => locate_ort_library(args.ort_lib.as_deref()).unwrap_or_else(|e| fail(&e)),
    };
    // ONNX Runtime, its providers and the CUDA libraries are the only files
    // read later.
    for dir in lib
        .parent()
        .into_iter()
        .chain(gpu.iter().filter_map(|g| g.cuda_libs.as_deref()))
    {
        jail.allow_read(dir.to_path_buf());
    }
    let rss = RssSampler::new(Duration::from_millis(100));
    let source = args.child.open_source();
    jail.confine().unwrap_or_else(|e| e.exit());
    let (mut ep, name) =
        lockstep_common::connect_or_exit(&args.child, &source, Role::InferenceHost);
    jail.restrict().unwrap_or_else(|e| {
        lockstep_common::refuse_and_exit(&mut ep, &name, &e.to_string(), e.layer.exit_code())
    });
    // ONNX Runtime starts its own thread: inside Landlock, before seccomp.
    let registry = start_runtime(&args, &lib, gpu.as_ref()).unwrap_or_else(|e| {
        lockstep_common::refuse_and_exit(&mut ep, &name, &e.to_string(), ExitCode::Runtime)
    });
    // Beat while a model runs: the supervisor declares a silent host hung.
    let activity = Arc::new(lockstep_common::Activity::default());
    lockstep_common::start_heartbeat(&ep, Duration::from_millis(10), activity.clone());
    let report = jail.seal().unwrap_or_else(|e| {
        lockstep_common::refuse_and_exit(&mut ep, &name, &e.to_string(), e.layer.exit_code())
    });
    lockstep_common::ready_or_exit(&mut ep, report.to_wire());
    tracing::debug!(%name, sandbox = %report.summary(), "inference host ready");
    #[cfg(feature = "fault-injection")]
    let inject = inject::from_env();
    // Test-only: read (and announce) the device stand-in once, up front.
    #[cfg(feature = "fault-injection")]
    let _ = stand_in::StandIn::get();
    #[cfg(feature = "fault-injection")]
    let own = shm_protocol::rogue::Target::of(ep.segment());
    let (tx, mut rx, segment) = ep.split();
    let tx = Arc::new(Mutex::new(tx));
    let mut lanes = lanes::Lanes::new(
        registry,
        tx.clone(),
        Arc::new(Mutex::new(rss)),
        activity.clone(),
        args.max_reply,
    );
    let code = bootstrap::serve_shared(&mut rx, &tx, &segment, |cmd| match cmd {
        Down::Inference(c) => {
            #[cfg(feature = "fault-injection")]
            if let InferenceCommand::Infer { batch_id, .. } = &c {
                if let Some((_, attempt)) = inject.escape.iter().find(|(b, _)| b == batch_id) {
                    lockstep_sandbox::escape::attempt(*attempt);
                }
                if let Some((_, attack)) = inject.corrupt.iter().find(|(b, _)| b == batch_id) {
                    // Test-only fault injection: a rogue host.
                    tracing::error!(batch_id, ?attack, "injected ring corruption");
                    shm_protocol::rogue::attack(&own, shm_protocol::rogue::Ring::Up, *attack);
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            activity.step();
            lanes.dispatch(c)
        }
        other => Reply::Send(Up::Error {
            message: format!("inference host does not handle {other:?}"),
        }),
    });
    code.exit();
}
