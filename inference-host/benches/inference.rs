//! Inference host benchmarks (no Criterion; `cargo bench -p
//! lockstep-inference-host --bench inference`).
//!
//! (i)  Latency at batch 1 for the MLP: a direct in-process `ort` call vs the
//!      registry in process vs a ring round trip to the real
//!      `lockstep-inference-host` process.
//! (ii) 64 requests per tick: one batched `Infer` vs the same requests one at
//!      a time (in the host, and as 64 round trips), plus the same comparison
//!      for direct `ort` calls.
//! (iii) Latency at batch 1 for the real model (Magika's file-type
//!      classifier, i32[1,2048] → f32[1,214]): direct `ort` call vs the
//!      registry in process vs the host process.
//!
//! Every figure is the median over `BENCH_RUNS` runs of the per-run median
//! (i; the paths' runs interleave) or per-run mean (ii).  Needs scripts/fetch-onnxruntime.sh and
//! scripts/gen-models.sh.  `BENCH_RUNS` / `BENCH_ITERS` override the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{blake3_hex, env, mlp_input, model};
use lockstep_bench_support::knobs::env_or;
use lockstep_bench_support::preamble;
use lockstep_bench_support::stat::{percentile, quantile};
use lockstep_inference_host::{DevicePref, HostOptions, ModelRegistry};
use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::reaper::Reaper;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::{Session, SessionInputValue};
use shm_protocol::WaitPolicy;
use shm_protocol::control::{Down, Up};
use shm_protocol::inference::{DType, InferenceCommand, InferenceReply, InferenceRequest, Tensor};
use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The models the host loads: (id, version, file).
const MODELS: &[(&str, &str, &str)] = &[
    ("mlp", "v1", "mlp.onnx"),
    ("magika", "standard_v3_3", "magika.onnx"),
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5).unwrap_or_default()
}

/// Median of `iters` timed calls.
fn run_median(iters: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Median over `runs` of the per-run mean time of one `f()` (a whole tick).
fn per_tick(runs: usize, iters: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 4 + 1 {
        f();
    }
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed() / iters as u32
            })
            .collect(),
    )
}

fn direct_session(file: &str) -> Session {
    Session::builder(env())
        .unwrap()
        .with_auto_device(AutoDevicePolicy::PreferCPU)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_parallel_execution(false)
        .unwrap()
        .with_deterministic_compute(true)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .commit_from_file(model(file))
        .unwrap()
}

/// One direct call: build the input value, run, copy the output out.
fn direct_call(session: &mut Session, x: &Tensor) -> Vec<f32> {
    direct_call_named(session, "input", x)
}

/// [`direct_call`] for an f32 or i32 input called `name`.
fn direct_call_named(session: &mut Session, name: &'static str, x: &Tensor) -> Vec<f32> {
    let shape: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let value: SessionInputValue = match x.dtype() {
        DType::I32 => ort::value::Tensor::from_array((shape, x.to_vec::<i32>().unwrap()))
            .unwrap()
            .into(),
        _ => ort::value::Tensor::from_array((shape, x.to_vec::<f32>().unwrap()))
            .unwrap()
            .into(),
    };
    let inputs = vec![(Cow::Borrowed(name), value)];
    let out = session.run(inputs).unwrap();
    out[0].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

struct Host {
    child: Child,
    _reaper: Reaper,
}

impl Host {
    fn start() -> Self {
        let (reaper, _deaths) = Reaper::start().unwrap();
        let spec = ChildSpec {
            policy: match std::env::var("BENCH_POLICY").as_deref() {
                Ok("park") => WaitPolicy::PARK,
                Ok("spin") => WaitPolicy::SPIN,
                _ => WaitPolicy::ADAPTIVE,
            },
            ..common::host_spec("bench-host", &["--device", "cpu"])
        };
        let mut child = Child::spawn(&spec, &reaper).unwrap();
        child.handshake(Duration::from_secs(30)).unwrap();
        for (id, version, file) in MODELS {
            let p = model(file);
            let reply = Self::call_on(
                &mut child,
                InferenceCommand::LoadModel {
                    id: (*id).into(),
                    version: (*version).into(),
                    source: p.display().to_string(),
                    bytes: std::fs::read(&p).unwrap(),
                    blake3_hex: blake3_hex(&p),
                },
            );
            assert!(matches!(reply, InferenceReply::Loaded { .. }), "{reply:?}");
        }
        Self {
            child,
            _reaper: reaper,
        }
    }

    fn call_on(child: &mut Child, cmd: InferenceCommand) -> InferenceReply {
        let ep = child.endpoint();
        ep.send_msg(&Down::Inference(cmd), None).unwrap();
        match ep.recv_msg::<Up>(None).unwrap() {
            Up::Inference(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// A prepared `Infer` command (built once, so the timing does not
    /// include cloning the inputs).
    fn command(requests: &[InferenceRequest], max_batch: u32) -> Down {
        Self::command_for("mlp", requests, max_batch)
    }

    /// [`Host::command`] for another model.
    fn command_for(model_id: &str, requests: &[InferenceRequest], max_batch: u32) -> Down {
        Down::Inference(InferenceCommand::Infer {
            batch_id: 1,
            model_id: model_id.into(),
            version: None,
            requests: requests.to_vec(),
            max_batch,
        })
    }

    /// One round trip: send, receive, decode the reply.
    fn infer(&mut self, cmd: &Down) -> usize {
        let ep = self.child.endpoint();
        ep.send_msg(cmd, None).unwrap();
        match ep.recv_msg::<Up>(None).unwrap() {
            Up::Inference(InferenceReply::Results { results, .. }) => {
                assert!(results.iter().all(|r| r.output.is_ok()));
                results.len()
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Prints the rows of a batch-1 latency table (median, min and max run of
/// each path) and the host overhead: the median over runs of host − direct
/// (`overheads`), also as a share of the direct call (`paths[0]`).
fn latency_table(names: &[&str], paths: &[Vec<Duration>], mut overheads: Vec<f64>) {
    let mut medians = Vec::new();
    for (name, v) in names.iter().zip(paths) {
        let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        let m = median(v.clone());
        medians.push(m);
        println!("| {name} | {} | {} | {} |", us(m), us(lo), us(hi));
    }
    let overhead = quantile(&mut overheads, 0.5);
    println!(
        "\nhost overhead per request (median over runs of host − direct): {:.1} µs ({:.1} % of the direct call); target ≤ 50 µs or ≤ 5 %",
        overhead * 1e6,
        100.0 * overhead / medians[0].as_secs_f64()
    );
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let runs: usize = env_or("BENCH_RUNS", 7);
    let iters: usize = env_or("BENCH_ITERS", 2000);
    println!("# Inference host benchmark\n");
    preamble();
    println!();
    let x1 = mlp_input(1, 1);
    let req = |i: u64| InferenceRequest {
        request_key: i,
        input_name: None,
        tensor: mlp_input(1, 1000 + i),
    };
    let reqs64: Vec<InferenceRequest> = (0..64).map(req).collect();

    let mut session = direct_session("mlp.onnx");
    let mut registry = ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cpu,
            intra_threads: 1,
        },
    );
    let p = model("mlp.onnx");
    registry
        .load_model("mlp", "v1", &p, &blake3_hex(&p))
        .unwrap();
    let mut host = Host::start();

    // Sanity: all three paths agree.
    let d = direct_call(&mut session, &x1);
    let r = registry
        .infer("mlp", None, None, &x1)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(
        d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        r.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );

    println!(
        "## (i) batch-1 latency, MLP 16→64→4 ({runs} runs × {iters} calls, median of run medians)\n"
    );
    println!("| path | median | min run | max run |");
    println!("|---|---|---|---|");
    let one = Host::command(
        &[InferenceRequest {
            request_key: 1,
            input_name: None,
            tensor: x1.clone(),
        }],
        1,
    );
    // Runs interleave the paths, so that drift (frequency, neighbours)
    // affects all of them alike; the overhead is taken per run.
    let mut paths: [Vec<Duration>; 4] = Default::default();
    let mut overheads = Vec::new();
    for run in 0..=runs {
        let d = run_median(iters, || {
            black_box(direct_call(&mut session, &x1));
        });
        let r = run_median(iters, || {
            black_box(registry.infer("mlp", None, None, &x1).unwrap());
        });
        let h = run_median(iters, || {
            black_box(host.infer(&one));
        });
        let p = run_median(iters, || {
            host.child.ping(Duration::from_secs(5)).unwrap();
        });
        if run == 0 {
            continue; // warm-up
        }
        for (v, x) in paths.iter_mut().zip([d, r, h, p]) {
            v.push(x);
        }
        overheads.push(h.as_secs_f64() - d.as_secs_f64());
    }
    let names = [
        "direct `ort` call in process",
        "`ModelRegistry::infer` in process",
        "host process, ring round trip",
        "(ring ping round trip alone)",
    ];
    latency_table(&names, &paths, overheads);
    println!();

    let tick_iters = (iters / 20).max(10);
    println!(
        "## (ii) 64 requests per tick ({runs} runs × {tick_iters} ticks, median of run means)\n"
    );
    println!("| path | per tick | per request | speed-up vs one at a time |");
    println!("|---|---|---|---|");
    let xs: Vec<Tensor> = reqs64.iter().map(|r| r.tensor.clone()).collect();
    let mut x64_data = Vec::new();
    for t in &xs {
        x64_data.extend_from_slice(&t.to_vec::<f32>().unwrap());
    }
    let x64 = Tensor::from_slice(vec![64, 16], &x64_data).unwrap();
    let d_single = per_tick(runs, tick_iters, || {
        for t in &xs {
            black_box(direct_call(&mut session, t));
        }
    });
    let d_batch = per_tick(runs, tick_iters, || {
        black_box(direct_call(&mut session, &x64));
    });
    let r_single = per_tick(runs, tick_iters, || {
        black_box(registry.batch_infer("mlp", None, &reqs64, 1));
    });
    let r_batch = per_tick(runs, tick_iters, || {
        black_box(registry.batch_infer("mlp", None, &reqs64, 64));
    });
    let singles: Vec<Down> = reqs64
        .iter()
        .map(|r| Host::command(std::slice::from_ref(r), 1))
        .collect();
    let all_one_by_one = Host::command(&reqs64, 1);
    let all_batched = Host::command(&reqs64, 64);
    let h_trips = per_tick(runs, tick_iters, || {
        for c in &singles {
            black_box(host.infer(c));
        }
    });
    let h_single = per_tick(runs, tick_iters, || {
        black_box(host.infer(&all_one_by_one));
    });
    let h_batch = per_tick(runs, tick_iters, || {
        black_box(host.infer(&all_batched));
    });
    // Where the host's time goes beyond ORT: the messages themselves.
    let cmd_codec = per_tick(runs, tick_iters, || {
        let b = shm_protocol::codec::encode(&all_batched).unwrap();
        black_box(shm_protocol::codec::decode::<Down>(&b).unwrap());
    });
    let reply = Up::Inference(InferenceReply::Results {
        batch_id: 1,
        results: registry
            .batch_infer("mlp", None, &reqs64, 64)
            .results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let t = r.unwrap();
                let output_blake3 = *blake3::hash(&t.encode_abi()).as_bytes();
                shm_protocol::inference::InferenceResult {
                    request_key: i as u64,
                    output: Ok(t),
                    output_blake3,
                }
            })
            .collect(),
        telemetry: Default::default(),
    });
    let reply_codec = per_tick(runs, tick_iters, || {
        let b = shm_protocol::codec::encode(&reply).unwrap();
        black_box(shm_protocol::codec::decode::<Up>(&b).unwrap());
    });
    let row = |name: &str, t: Duration, base: Duration| {
        println!(
            "| {name} | {} | {} | {:.1}× |",
            us(t),
            us(t / 64),
            base.as_secs_f64() / t.as_secs_f64()
        );
    };
    row("direct `ort`: 64 calls of [1,16]", d_single, d_single);
    row("direct `ort`: 1 call of [64,16]", d_batch, d_single);
    row(
        "`ModelRegistry::batch_infer` in process, max_batch 1",
        r_single,
        r_single,
    );
    row(
        "`ModelRegistry::batch_infer` in process, max_batch 64",
        r_batch,
        r_single,
    );
    row("host: 64 round trips of 1 request", h_trips, h_trips);
    row(
        "host: 1 `Infer`, 64 requests, max_batch 1",
        h_single,
        h_trips,
    );
    row(
        "host: 1 `Infer`, 64 requests, max_batch 64",
        h_batch,
        h_trips,
    );
    println!(
        "\nmessage costs per tick: 64-request command encode+decode {}, 64-result reply encode+decode {}",
        us(cmd_codec),
        us(reply_codec)
    );
    println!(
        "\nper-tick batching vs one request at a time in the host (max_batch 64 vs 1): {:.1}× (target ≥ 4×)",
        h_single.as_secs_f64() / h_batch.as_secs_f64()
    );

    // (iii) The real model at batch 1.
    let p = model("magika.onnx");
    registry
        .load_model("magika", "standard_v3_3", &p, &blake3_hex(&p))
        .unwrap();
    let mut magika = direct_session("magika.onnx");
    let content = b"fn main() {\n    println!(\"hello, lockstep\");\n}\n";
    let mx = Tensor::from_slice(
        vec![1, 2048],
        &lockstep_inference_host::magika::features(content),
    )
    .unwrap();
    let d = direct_call_named(&mut magika, "bytes", &mx);
    let r = registry
        .infer("magika", None, Some("bytes"), &mx)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(
        d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        r.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let m_iters = (iters / 4).max(50);
    println!(
        "\n## (iii) batch-1 latency, Magika standard_v3_3 ({runs} runs × {m_iters} calls, median of run medians)\n"
    );
    println!("| path | median | min run | max run |");
    println!("|---|---|---|---|");
    let one = Host::command_for(
        "magika",
        &[InferenceRequest {
            request_key: 1,
            input_name: Some("bytes".into()),
            tensor: mx.clone(),
        }],
        1,
    );
    let mut paths: [Vec<Duration>; 3] = Default::default();
    let mut overheads = Vec::new();
    for run in 0..=runs {
        let d = run_median(m_iters, || {
            black_box(direct_call_named(&mut magika, "bytes", &mx));
        });
        let r = run_median(m_iters, || {
            black_box(registry.infer("magika", None, Some("bytes"), &mx).unwrap());
        });
        let h = run_median(m_iters, || {
            black_box(host.infer(&one));
        });
        if run == 0 {
            continue;
        }
        for (v, x) in paths.iter_mut().zip([d, r, h]) {
            v.push(x);
        }
        overheads.push(h.as_secs_f64() - d.as_secs_f64());
    }
    latency_table(&names, &paths, overheads);
    let _ = host.child.shutdown(Duration::from_secs(5));
}
