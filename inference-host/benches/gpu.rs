//! CPU vs CUDA table of the inference host's registry (what
//! `scripts/gpu-check.sh` prints; `cargo bench -p lockstep-inference-host
//! --bench gpu`).
//!
//! For the MLP, Magika and the MiniLM text-embedding model (when
//! `scripts/fetch-minilm.sh` has fetched it; its direct-`ort` column is
//! left out: the registry's text path tokenizes and pools around the run)
//! at batch 1, 64 and 1,024, on the CPU and — where
//! CUDA works — on CUDA: latency p50/p99 and spread of one batched
//! registry call, throughput, the registry's overhead over a direct `ort`
//! session built with the same options on the same device, the largest
//! absolute difference CPU vs CUDA, and whether CUDA gives the same bits
//! run after run (every iteration's output compared with the first).
//!
//! ONNX Runtime is loaded once per process: the CUDA build that
//! `scripts/fetch-onnxruntime.sh --gpu` installs when it is there and the
//! machine has an NVIDIA driver (both columns then come from that build's
//! CPU and CUDA providers), else the pinned CPU library (CUDA columns "—").
//! `ORT_DYLIB_PATH` overrides the choice.
//!
//! Knobs: `GPU_CHECK_ITERS` (iterations at batch 1; fewer at larger
//! batches), `GPU_CHECK_SECONDS` (time budget per cell, default 10; at
//! least 3 iterations).

#[path = "../tests/common/mod.rs"]
mod common;

use lockstep_bench_support::knobs::env_or;
use lockstep_bench_support::preamble;
use lockstep_bench_support::stat::{coefficient_of_variation, percentile};
use lockstep_common::text_model::{self, TextKind};
use lockstep_inference_host::gpu;
use lockstep_inference_host::{DevicePref, HostOptions, ModelRegistry, init_runtime};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel, SessionBuilder};
use shm_protocol::inference::{DType, InferenceRequest, Tensor};
use std::path::Path;
use std::time::{Duration, Instant};

/// A model of the table: id, file, input and output names (`None`: no
/// direct `ort` comparison), the bytes the registry loads, input maker.
struct Case {
    id: &'static str,
    file: &'static str,
    io: Option<(&'static str, &'static str)>,
    bytes: fn(&Path) -> Vec<u8>,
    make: fn(u64, u64) -> Tensor,
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The text model's blob: its tokenizer and the ONNX model.
fn minilm_blob(p: &Path) -> Vec<u8> {
    text_model::encode(
        TextKind::Embedding,
        &file_bytes(&p.with_file_name("minilm.tokenizer.json")),
        &file_bytes(p),
    )
}

const HEADLINES: &[&str] = &[
    "The central bank raised interest rates to fight inflation.",
    "Astronauts docked with the space station after a two-day flight.",
    "Whisk the eggs with sugar until pale, then fold in the flour.",
    "The goalkeeper saved a penalty in extra time.",
];

fn text_input(_rows: u64, seed: u64) -> Tensor {
    let s = HEADLINES[seed as usize % HEADLINES.len()];
    Tensor::new(DType::U8, vec![s.len() as u64], s.as_bytes().to_vec()).unwrap()
}

fn magika_input(rows: u64, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<i32> = (0..rows * 2048)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 257) as i32
        })
        .collect();
    Tensor::from_slice(vec![rows, 2048], &values).unwrap()
}

const CASES: &[Case] = &[
    Case {
        id: "mlp",
        file: "mlp.onnx",
        io: Some(("input", "output")),
        bytes: file_bytes,
        make: common::mlp_input,
    },
    Case {
        id: "magika",
        file: "magika.onnx",
        io: Some(("bytes", "target_label")),
        bytes: file_bytes,
        make: magika_input,
    },
    Case {
        id: "minilm",
        file: "minilm.onnx",
        io: None,
        bytes: minilm_blob,
        make: text_input,
    },
];

const BATCHES: &[u64] = &[1, 64, 1024];

/// The library to load and whether CUDA can be tried with it.
fn runtime() -> (Environment, String, bool) {
    let driver = gpu::driver_version();
    let exe = std::env::current_exe().ok();
    let named = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty());
    let fetched = (!named && driver.is_some())
        .then(|| gpu::locate_gpu_runtime(exe.as_deref()))
        .flatten();
    let lib = match &fetched {
        Some(g) => g.lib.clone(),
        None => common::ort_lib(),
    };
    if let Some(dir) = fetched.as_ref().and_then(|g| g.cuda_libs.as_deref())
        && let Err(e) = gpu::preload_cuda_libraries(dir)
    {
        println!("CUDA libraries of {}: {e}", dir.display());
    }
    let env = init_runtime(&lib).unwrap_or_else(|e| panic!("{e}"));
    let what = format!(
        "{} (driver {})",
        lib.display(),
        driver.as_deref().unwrap_or("none")
    );
    (env, what, driver.is_some())
}

fn plain(e: ort::Error<SessionBuilder>) -> ort::Error {
    e.into()
}

/// A session built like the registry's (crate docs of
/// `lockstep-inference-host`), directly with `ort`.
fn direct_session(env: &Environment, bytes: &[u8], cuda: bool) -> ort::Result<Session> {
    let b = Session::builder(env)?
        .with_auto_device(AutoDevicePolicy::PreferCPU)
        .map_err(plain)?
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .map_err(plain)?
        .with_intra_threads(1)
        .map_err(plain)?
        .with_inter_threads(1)
        .map_err(plain)?
        .with_parallel_execution(false)
        .map_err(plain)?
        .with_deterministic_compute(true)
        .map_err(plain)?;
    let mut b = b.with_intra_op_spinning(false).map_err(plain)?;
    if cuda {
        let ep = ort::ep::CUDA::default()
            .with_device_id(0)
            .with_tf32(false)
            .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
            .build()
            .error_on_failure();
        b = b.with_execution_providers([ep]).map_err(plain)?;
    }
    b.commit_from_memory(bytes)
}

/// The rows of `t` as one ORT value.
fn value_of(t: &Tensor) -> ort::value::DynValue {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    match t.to_vec::<f32>() {
        Some(v) => ort::value::Tensor::from_array((shape, v))
            .unwrap()
            .into_dyn(),
        None => ort::value::Tensor::from_array((shape, t.to_vec::<i32>().unwrap()))
            .unwrap()
            .into_dyn(),
    }
}

/// Times `f` `iters` times (at least 3, within `budget` after those).
fn timed(iters: u64, budget: Duration, mut f: impl FnMut()) -> Vec<Duration> {
    let start = Instant::now();
    let mut out = Vec::new();
    for i in 0..iters.max(3) {
        if i >= 3 && start.elapsed() > budget {
            break;
        }
        let t = Instant::now();
        f();
        out.push(t.elapsed());
    }
    out.sort();
    out
}

/// The `p` quantile of sorted latencies.
fn pct(v: &[Duration], p: f64) -> Duration {
    percentile(v, p).unwrap_or_default()
}

/// Coefficient of variation of the latencies, in %.
fn spread(v: &[Duration]) -> f64 {
    let xs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    coefficient_of_variation(&xs)
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// One device's measurements of one cell.
struct Cell {
    lat: Vec<Duration>,
    direct: Option<Duration>,
    first: Vec<f32>,
    bitwise: bool,
}

fn measure(
    env: &Environment,
    case: &Case,
    rows: u64,
    device: DevicePref,
    iters: u64,
    budget: Duration,
) -> Result<Cell, String> {
    let path = common::model(case.file);
    let bytes = (case.bytes)(&path);
    let mut reg = ModelRegistry::new(
        env,
        HostOptions {
            device,
            intra_threads: 1,
        },
    );
    let hash = blake3::hash(&bytes).to_hex().to_string();
    reg.load_model_bytes(case.id, "bench", &path, &bytes, &hash)
        .map_err(|e| e.to_string())?;
    let reqs: Vec<InferenceRequest> = (0..rows)
        .map(|i| InferenceRequest {
            request_key: i,
            input_name: None,
            tensor: (case.make)(1, 7 + i),
        })
        .collect();
    let run = |reg: &mut ModelRegistry| -> Vec<f32> {
        let out = reg.batch_infer(case.id, None, &reqs, rows as u32);
        out.results
            .into_iter()
            .flat_map(|r| r.unwrap().to_vec::<f32>().unwrap())
            .collect()
    };
    let first = run(&mut reg);
    let mut bitwise = true;
    let lat = timed(iters, budget, || {
        let again = run(&mut reg);
        bitwise &= again
            .iter()
            .map(|v| v.to_bits())
            .eq(first.iter().map(|v| v.to_bits()));
    });
    let Some((input, output)) = case.io else {
        return Ok(Cell {
            direct: None,
            lat,
            first,
            bitwise,
        });
    };
    // The same rows as one tensor through a direct session.
    let mut all = Vec::new();
    for r in &reqs {
        all.extend_from_slice(r.tensor.data());
    }
    let mut shape = reqs[0].tensor.shape().to_vec();
    shape[0] = rows;
    let batch = Tensor::new(reqs[0].tensor.dtype(), shape, all).map_err(|e| e.to_string())?;
    let mut session = direct_session(env, &bytes, matches!(device, DevicePref::Cuda(_)))
        .map_err(|e| e.to_string())?;
    let direct = timed(iters, budget, || {
        let out = session
            .run(ort::inputs![input => value_of(&batch)])
            .unwrap();
        std::hint::black_box(out[output].try_extract_tensor::<f32>().unwrap().1.len());
    });
    Ok(Cell {
        direct: Some(pct(&direct, 0.5)),
        lat,
        first,
        bitwise,
    })
}

fn main() {
    println!("# Inference CPU vs CUDA\n");
    preamble();
    let (env, lib, driver) = runtime();
    let iters: u64 = env_or("GPU_CHECK_ITERS", 100);
    let budget = Duration::from_secs(env_or("GPU_CHECK_SECONDS", 10));
    println!("ONNX Runtime: {lib}");
    println!(
        "| model | batch | device | p50 | p99 | spread (CV) | rows/s | registry vs direct ort | max abs diff CPU vs CUDA | CUDA run to run |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for case in CASES {
        if !common::repo()
            .join(".deps/models")
            .join(case.file)
            .is_file()
        {
            println!(
                "| {} | | | — (.deps/models/{} missing) | | | | | | |",
                case.id, case.file
            );
            continue;
        }
        for &rows in BATCHES {
            let n = (iters / rows.max(1)).max(3);
            let cpu = measure(&env, case, rows, DevicePref::Cpu, n, budget)
                .unwrap_or_else(|e| panic!("{} on the CPU: {e}", case.id));
            let cuda = if driver {
                measure(&env, case, rows, DevicePref::Cuda(0), iters, budget)
            } else {
                Err("no NVIDIA driver".into())
            };
            let diff = cuda.as_ref().ok().map(|g| {
                cpu.first
                    .iter()
                    .zip(&g.first)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            });
            for (name, cell) in [("cpu", Ok(&cpu)), ("cuda", cuda.as_ref())] {
                match cell {
                    Ok(c) => {
                        let p50 = pct(&c.lat, 0.5);
                        println!(
                            "| {} | {rows} | {name} | {} | {} | {:.1} % | {:.0} | {} | {} | {} |",
                            case.id,
                            fmt(p50),
                            fmt(pct(&c.lat, 0.99)),
                            spread(&c.lat),
                            rows as f64 / p50.as_secs_f64(),
                            c.direct.map_or("—".into(), |d| format!(
                                "{:+.1} %",
                                100.0 * (p50.as_secs_f64() / d.as_secs_f64() - 1.0)
                            )),
                            diff.map_or("—".into(), |d| format!("{d:.1e}")),
                            if name == "cuda" {
                                if c.bitwise { "identical" } else { "DIFFERS" }
                            } else {
                                "—"
                            },
                        );
                    }
                    Err(e) => println!("| {} | {rows} | {name} | — ({e}) | | | | | | |", case.id),
                }
            }
        }
    }
}
