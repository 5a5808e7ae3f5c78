//! Text-embedding latency (no Criterion; `cargo bench -p
//! lockstep-inference-host --bench text`): all-MiniLM-L6-v2 int8
//! (`scripts/fetch-minilm.sh`), UTF-8 text in, f32[384] out.
//!
//! For a batch of 1 and of 32 texts (news-headline-sized sentences of 8 to
//! 20 tokens), per path, p50 and p99 of one call:
//!
//! * `direct ort`: the same model through `ort` in this process with the
//!   host's session options, on ids tokenized beforehand, the batch padded
//!   to its longest sequence; the hidden states copied out (no pooling);
//! * `registry`: [`ModelRegistry::batch_infer`] in this process — the
//!   host's whole text path: UTF-8 check, tokenization, padding, the run,
//!   pooling and normalisation;
//! * `host process`: the same as one `Infer` round trip over the ring to
//!   the real (sandboxed) `lockstep-inference-host`;
//! * `registry, one request per run`: the registry with `max_batch` 1 (no
//!   padding, one model run per text).
//!
//! Each run times `BENCH_ITERS` calls per path (interleaved); the table
//! gives the median over `BENCH_RUNS` runs of each percentile, with the
//! lowest and highest run.
//!
//! The host gets `ORT_DISABLE_TELEMETRY=1`, as the supervisor gives it
//! (without it ONNX Runtime starts its telemetry uploader some seconds in,
//! and the host's seccomp filter kills the host for it).  `BENCH_BATCHES`
//! (`1,32`) picks the batch sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{env, repo};
use lockstep_bench_support::knobs::{env_list, env_or};
use lockstep_bench_support::stat::percentile;
use lockstep_bench_support::{Stat, preamble};
use lockstep_common::text_model::{self, TextKind};
use lockstep_inference_host::text::Tokenizer;
use lockstep_inference_host::{DevicePref, HostOptions, ModelRegistry};
use lockstep_supervisor::child::Child;
use lockstep_supervisor::reaper::Reaper;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use ort::session::{Session, SessionInputValue};
use shm_protocol::control::{Down, Up};
use shm_protocol::inference::{DType, InferenceCommand, InferenceReply, InferenceRequest, Tensor};
use std::borrow::Cow;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sentences of 8 to 20 tokens, cycled to fill a batch.
const TEXTS: [&str; 8] = [
    "The striker scored twice in the second half to win the cup final.",
    "Knead the dough for ten minutes, then let it rise for an hour.",
    "The telescope captured a spiral galaxy millions of light years away.",
    "The central bank raised interest rates to fight inflation.",
    "Astronauts docked with the space station after a two-day flight.",
    "Whisk the eggs with sugar until pale, then fold in the flour.",
    "Mortgage lenders tightened credit as house prices slipped and buyers waited for better offers.",
    "The goalkeeper saved a penalty in extra time.",
];

fn file(name: &str) -> PathBuf {
    let p = repo().join(".deps/models").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-minilm.sh",
        p.display()
    );
    p
}

fn blob() -> Vec<u8> {
    text_model::encode(
        TextKind::Embedding,
        &std::fs::read(file("minilm.tokenizer.json")).unwrap(),
        &std::fs::read(file("minilm.onnx")).unwrap(),
    )
}

fn texts(n: usize) -> Vec<&'static str> {
    TEXTS.iter().cycle().take(n).copied().collect()
}

fn requests(n: usize) -> Vec<InferenceRequest> {
    texts(n)
        .into_iter()
        .enumerate()
        .map(|(i, s)| InferenceRequest {
            request_key: i as u64,
            input_name: None,
            tensor: Tensor::new(DType::U8, vec![s.len() as u64], s.as_bytes().to_vec()).unwrap(),
        })
        .collect()
}

/// The padded `[ids, mask, token types]` of a batch, and its shape.
fn padded(tok: &Tokenizer, n: usize) -> (Vec<i64>, [Vec<i64>; 3]) {
    let ids: Vec<Vec<i64>> = texts(n).iter().map(|s| tok.encode(s)).collect();
    let width = ids.iter().map(Vec::len).max().unwrap();
    let mut flat = vec![0i64; n * width];
    let mut mask = vec![0i64; n * width];
    for (r, t) in ids.iter().enumerate() {
        flat[r * width..r * width + t.len()].copy_from_slice(t);
        mask[r * width..r * width + t.len()].fill(1);
    }
    (
        vec![n as i64, width as i64],
        [flat, mask, vec![0; n * width]],
    )
}

fn direct_session() -> Session {
    Session::builder(env())
        .unwrap()
        .with_auto_device(AutoDevicePolicy::PreferCPU)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level1)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .with_parallel_execution(false)
        .unwrap()
        .with_deterministic_compute(true)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .commit_from_file(file("minilm.onnx"))
        .unwrap()
}

fn direct_call(session: &mut Session, shape: &[i64], inputs: &[Vec<i64>; 3]) -> usize {
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = names
        .iter()
        .zip(inputs)
        .map(|(n, v)| {
            let t = ort::value::Tensor::from_array((shape.to_vec(), v.clone())).unwrap();
            (Cow::Borrowed(*n), SessionInputValue::from(t.into_dyn()))
        })
        .collect();
    let out = session.run(values).unwrap();
    out[0].try_extract_tensor::<f32>().unwrap().1.to_vec().len()
}

struct Host {
    child: Child,
    _reaper: Reaper,
    deaths: std::sync::mpsc::Receiver<lockstep_supervisor::reaper::ChildExit>,
}

impl Host {
    fn start() -> Self {
        let (reaper, deaths) = Reaper::start().unwrap();
        let spec = common::host_spec("bench-host", &["--device", "cpu"]);
        let mut child = Child::spawn(&spec, &reaper).unwrap();
        child.handshake(Duration::from_secs(30)).unwrap();
        let bytes = blob();
        let hex = blake3::hash(&bytes).to_hex().to_string();
        let cmd = Down::Inference(InferenceCommand::LoadModel {
            id: "minilm".into(),
            version: "v1".into(),
            source: "minilm.onnx".into(),
            bytes,
            blake3_hex: hex,
        });
        let ep = child.endpoint();
        ep.send_msg(&cmd, None).unwrap();
        let reply = ep.recv_msg::<Up>(None).unwrap();
        assert!(
            matches!(reply, Up::Inference(InferenceReply::Loaded { .. })),
            "{reply:?}"
        );
        Self {
            child,
            _reaper: reaper,
            deaths,
        }
    }

    fn infer(&mut self, cmd: &Down) -> usize {
        let ep = self.child.endpoint();
        ep.send_msg(cmd, None).unwrap();
        let reply = ep.recv_msg::<Up>(None).unwrap_or_else(|e| {
            panic!(
                "the host: {e} ({:?})",
                self.deaths.recv_timeout(Duration::from_secs(2))
            )
        });
        match reply {
            Up::Inference(InferenceReply::Results { results, .. }) => {
                assert!(results.iter().all(|r| r.output.is_ok()));
                results.len()
            }
            other => panic!("{other:?}"),
        }
    }
}

fn main() {
    let runs: usize = env_or("BENCH_RUNS", 3);
    let iters: usize = env_or("BENCH_ITERS", 100);
    println!("# Text embedding benchmark\n");
    preamble();
    println!();
    let mut registry = ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cpu,
            intra_threads: 1,
        },
    );
    let bytes = blob();
    let hex = blake3::hash(&bytes).to_hex().to_string();
    registry
        .load_model_bytes("minilm", "v1", Path::new("minilm"), &bytes, &hex)
        .unwrap();
    let tok = Tokenizer::from_json(&std::fs::read(file("minilm.tokenizer.json")).unwrap()).unwrap();
    let mut session = direct_session();
    let mut host = Host::start();

    println!("text embedding (all-MiniLM-L6-v2 int8), {runs} runs × {iters} calls per path");
    let batches: Vec<usize> = env_list("BENCH_BATCHES", vec![1, 32]);
    for batch in batches {
        let reqs = requests(batch);
        let (shape, inputs) = padded(&tok, batch);
        let cmd = Down::Inference(InferenceCommand::Infer {
            batch_id: 1,
            model_id: "minilm".into(),
            version: None,
            requests: reqs.clone(),
            max_batch: 32,
        });
        // (path, run) -> [p50, p99]
        let mut table: Vec<Vec<[Duration; 2]>> = vec![Vec::new(); 4];
        for _ in 0..runs {
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); 4];
            // Warm-up.
            for _ in 0..3 {
                black_box(direct_call(&mut session, &shape, &inputs));
                black_box(registry.batch_infer("minilm", None, &reqs, 32));
                black_box(host.infer(&cmd));
            }
            for _ in 0..iters {
                let t = Instant::now();
                black_box(direct_call(&mut session, &shape, &inputs));
                times[0].push(t.elapsed());
                let t = Instant::now();
                let out = registry.batch_infer("minilm", None, &reqs, 32);
                times[1].push(t.elapsed());
                assert!(out.results.iter().all(Result::is_ok));
                let t = Instant::now();
                black_box(host.infer(&cmd));
                times[2].push(t.elapsed());
                let t = Instant::now();
                black_box(registry.batch_infer("minilm", None, &reqs, 1));
                times[3].push(t.elapsed());
            }
            for (path, mut v) in times.into_iter().enumerate() {
                v.sort();
                table[path].push([
                    percentile(&v, 0.5).unwrap_or_default(),
                    percentile(&v, 0.99).unwrap_or_default(),
                ]);
            }
        }
        println!(
            "\nbatch {batch} (longest sequence {} tokens)\n\n| path | p50 ms (min–max run) | p99 ms (min–max run) |\n|---|---|---|",
            shape[1]
        );
        for (name, rows) in [
            "direct ort",
            "registry",
            "host process",
            "registry, one request per run",
        ]
        .iter()
        .zip(&table)
        {
            let cell = |k: usize| {
                let v: Vec<f64> = rows.iter().map(|r| r[k].as_secs_f64() * 1e3).collect();
                Stat::of(&v).show(2)
            };
            println!("| {name} | {} | {} |", cell(0), cell(1));
        }
    }
}
