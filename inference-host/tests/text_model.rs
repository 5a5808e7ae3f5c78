//! Text models: all-MiniLM-L6-v2 (int8, `scripts/fetch-minilm.sh`) with its
//! WordPiece tokenizer, in process and in the real host process.
//!
//! * the tokenizer gives the Hugging Face `tokenizers` library's ids
//!   (reference ids below, produced by `tokenizers` 0.23.3 from the same
//!   `tokenizer.json`; the same library agreed on 4,000 generated strings
//!   of mixed scripts when this was written);
//! * sentence embeddings mean what they should: unit norm, paraphrases
//!   closer than unrelated sentences, the reference values of a direct
//!   ONNX Runtime run with numpy pooling;
//! * answers are bitwise repeatable, and a request's answer is bitwise the
//!   same alone and in a padded batch of requests of other lengths;
//! * bad input is a refused request (non-UTF-8 bytes, a wrong dtype), a
//!   bad tokenizer a load error naming the model, never a crash.

mod common;

use common::{bits, env, repo};
use lockstep_common::text_model::{self, TextKind};
use lockstep_inference_host::text::{Tokenizer, mean_pool_normalize};
use lockstep_inference_host::{DevicePref, HostOptions, InferenceError, ModelRegistry};
use lockstep_supervisor::child::Child;
use lockstep_supervisor::reaper::Reaper;
use shm_protocol::control::{Down, Up};
use shm_protocol::inference::{DType, InferenceCommand, InferenceReply, InferenceRequest, Tensor};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DIM: usize = 384;

fn minilm_file(name: &str) -> PathBuf {
    let p = repo().join(".deps/models").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-minilm.sh",
        p.display()
    );
    p
}

/// The text-model blob of MiniLM and its tokenizer.
fn blob() -> Vec<u8> {
    let tokenizer = std::fs::read(minilm_file("minilm.tokenizer.json")).unwrap();
    let model = std::fs::read(minilm_file("minilm.onnx")).unwrap();
    text_model::encode(TextKind::Embedding, &tokenizer, &model)
}

fn registry() -> ModelRegistry {
    ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cpu,
            intra_threads: 1,
        },
    )
}

fn loaded() -> ModelRegistry {
    let mut r = registry();
    let bytes = blob();
    let hex = blake3::hash(&bytes).to_hex().to_string();
    r.load_model_bytes("minilm", "v1", Path::new("minilm"), &bytes, &hex)
        .unwrap();
    r
}

fn text(s: &str) -> Tensor {
    Tensor::new(DType::U8, vec![s.len() as u64], s.as_bytes().to_vec()).unwrap()
}

fn embed(r: &mut ModelRegistry, s: &str) -> Vec<f32> {
    let t = r.infer("minilm", None, None, &text(s)).unwrap();
    assert_eq!(t.shape(), [DIM as u64]);
    t.to_vec::<f32>().unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn requests(texts: &[&str]) -> Vec<InferenceRequest> {
    texts
        .iter()
        .enumerate()
        .map(|(i, s)| InferenceRequest {
            request_key: i as u64,
            input_name: None,
            tensor: text(s),
        })
        .collect()
}

#[test]
fn tokenizer_gives_the_reference_ids() {
    let t = Tokenizer::from_json(&std::fs::read(minilm_file("minilm.tokenizer.json")).unwrap())
        .unwrap();
    let cases: &[(&str, &[i64])] = &[
        (
            "the cat sat on the mat",
            &[101, 1996, 4937, 2938, 2006, 1996, 13523, 102],
        ),
        (
            "Héllo, Wörld! Ça va? naïve café",
            &[
                101, 7592, 1010, 2088, 999, 6187, 12436, 1029, 15743, 7668, 102,
            ],
        ),
        (
            "東京タワー [SEP] unbelievably",
            &[
                101, 1879, 1755, 1709, 30262, 30265, 102, 4895, 8671, 2666, 3567, 6321, 102,
            ],
        ),
        ("emoji 🙂 x", &[101, 7861, 29147, 2072, 100, 1060, 102]),
    ];
    for (s, want) in cases {
        assert_eq!(t.encode(s), *want, "{s:?}");
    }
    // The file truncates at 128 ids, [CLS] and [SEP] included.
    let long = t.encode(&"word ".repeat(300));
    assert_eq!(long.len(), 128);
    assert_eq!((long[0], long[127]), (101, 102));
    assert_eq!(t.max_tokens(), 128);
}

#[test]
fn embeddings_are_unit_vectors_that_mean_something() {
    let mut r = loaded();
    let status = r.status();
    assert_eq!(status[0].inputs[0].name, "text");
    assert_eq!(status[0].inputs[0].dtype, Some(DType::U8));
    assert_eq!(status[0].outputs[0].shape, [Some(DIM as u64)]);

    let cat = embed(&mut r, "the cat sat on the mat");
    let cat2 = embed(&mut r, "a cat was sitting on a mat");
    let other = embed(&mut r, "Quarterly revenue grew by eight percent.");
    for v in [&cat, &cat2, &other] {
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let (near, far1, far2) = (dot(&cat, &cat2), dot(&cat, &other), dot(&cat2, &other));
    eprintln!("cos(cat, cat2) = {near}, cos(cat, other) = {far1}, cos(cat2, other) = {far2}");
    assert!(near > 0.8, "paraphrases: {near}");
    assert!(
        near > far1 + 0.5 && near > far2 + 0.5,
        "{near} vs {far1}, {far2}"
    );
    // A direct ONNX Runtime run of the same model with numpy pooling.
    let reference = [
        0.127_239_8,
        -0.011_875_22,
        -0.026_687_77,
        0.048_999_11,
        -0.056_073_16,
    ];
    for (got, want) in cat.iter().zip(reference) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    // The host's pooling is the documented one.
    assert_eq!(mean_pool_normalize(&[1.0, 1.0], 1, 2)[0], 0.707_106_77);
}

#[test]
fn answers_are_bitwise_repeatable_alone_and_in_padded_batches() {
    let texts = [
        "the cat sat on the mat",
        "hi",
        "A considerably longer sentence, with punctuation; and several clauses that make it the longest one of this batch by far.",
        "",
        "naïve café ünïcödé",
    ];
    let mut r = loaded();
    let alone: Vec<Vec<u32>> = texts
        .iter()
        .map(|s| bits(&r.infer("minilm", None, None, &text(s)).unwrap()))
        .collect();
    // Again, in a fresh registry (a new session).
    let mut again = loaded();
    for (s, want) in texts.iter().zip(&alone) {
        assert_eq!(
            &bits(&again.infer("minilm", None, None, &text(s)).unwrap()),
            want,
            "{s:?}"
        );
    }
    // One padded batch of all of them, and batches of 2.
    for max_batch in [32, 2] {
        let out = r.batch_infer("minilm", None, &requests(&texts), max_batch);
        assert_eq!(
            out.telemetry.batches as usize,
            texts.len().div_ceil(max_batch as usize)
        );
        for ((s, got), want) in texts.iter().zip(&out.results).zip(&alone) {
            assert_eq!(
                &bits(got.as_ref().unwrap()),
                want,
                "{s:?} in a batch of up to {max_batch} differs from its answer alone"
            );
        }
    }
}

#[test]
fn bad_requests_are_refused_and_bad_tokenizers_named() {
    let mut r = loaded();
    // Not UTF-8: that request is refused, its neighbours answered.
    let mut reqs = requests(&["fine", "also fine"]);
    reqs.insert(
        1,
        InferenceRequest {
            request_key: 9,
            input_name: None,
            tensor: Tensor::new(DType::U8, vec![3], vec![b'a', 0xff, b'b']).unwrap(),
        },
    );
    let out = r.batch_infer("minilm", None, &reqs, 32);
    assert!(out.results[0].is_ok() && out.results[2].is_ok());
    match &out.results[1] {
        Err(e @ InferenceError::BadText { model, .. }) => {
            assert_eq!(model, "minilm@v1");
            assert!(e.to_string().contains("not UTF-8"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Numbers are not text; neither is a matrix of bytes.
    let f = Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap();
    assert!(matches!(
        r.infer("minilm", None, None, &f),
        Err(InferenceError::DTypeMismatch { .. })
    ));
    let m = Tensor::new(DType::U8, vec![1, 2], b"ab".to_vec()).unwrap();
    assert!(matches!(
        r.infer("minilm", None, None, &m),
        Err(InferenceError::ShapeMismatch { .. })
    ));

    // A tokenizer that does not parse: the load fails, naming the model.
    let model = std::fs::read(minilm_file("minilm.onnx")).unwrap();
    let bad = text_model::encode(TextKind::Embedding, b"{\"model\": ", &model);
    let hex = blake3::hash(&bad).to_hex().to_string();
    let e = registry()
        .load_model_bytes("minilm", "broken", Path::new("x.onnx"), &bad, &hex)
        .unwrap_err();
    assert!(
        matches!(&e, InferenceError::UnsupportedModel { model, .. } if model == "minilm@broken"),
        "{e}"
    );
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    // A malformed blob is an invalid model.
    let mut cut = blob();
    cut.truncate(40);
    let hex = blake3::hash(&cut).to_hex().to_string();
    let e = registry()
        .load_model_bytes("minilm", "cut", Path::new("x.onnx"), &cut, &hex)
        .unwrap_err();
    assert!(matches!(e, InferenceError::InvalidModel { .. }), "{e}");
    // The plain ONNX file has three inputs: not servable without its tokenizer.
    let hex = blake3::hash(&model).to_hex().to_string();
    let e = registry()
        .load_model_bytes("minilm", "plain", Path::new("minilm.onnx"), &model, &hex)
        .unwrap_err();
    assert!(matches!(e, InferenceError::UnsupportedModel { .. }), "{e}");
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(60))
}

fn call(child: &mut Child, cmd: InferenceCommand) -> InferenceReply {
    let ep = child.endpoint();
    ep.send_msg(&Down::Inference(cmd), soon()).unwrap();
    match ep.recv_msg::<Up>(soon()).unwrap() {
        Up::Inference(r) => r,
        other => panic!("expected an inference reply, got {other:?}"),
    }
}

/// The sandboxed host process: the blob over the ring, text in, the
/// in-process answers out, bit for bit; a non-UTF-8 request is refused and
/// the host keeps serving.
#[test]
fn host_process_embeds_text_over_the_ring() {
    let (reaper, deaths) = Reaper::start().unwrap();
    let spec = common::host_spec("inference-host", &["--device", "cpu"]);
    let mut child = Child::spawn(&spec, &reaper).unwrap();
    child.handshake(Duration::from_secs(30)).unwrap();
    let bytes = blob();
    let hex = blake3::hash(&bytes).to_hex().to_string();
    match call(
        &mut child,
        InferenceCommand::LoadModel {
            id: "minilm".into(),
            version: "v1".into(),
            source: "minilm.onnx".into(),
            bytes,
            blake3_hex: hex,
        },
    ) {
        InferenceReply::Loaded {
            inputs, outputs, ..
        } => {
            assert_eq!(inputs[0].name, "text");
            assert_eq!(outputs[0].shape, [Some(DIM as u64)]);
        }
        other => panic!("{other:?}"),
    }
    let texts = [
        "the cat sat on the mat",
        "a cat was sitting on a mat",
        "stocks fell",
        "The striker scored twice in the second half to win the cup final.",
        "Knead the dough for ten minutes, then let it rise for an hour.",
        "The telescope captured a spiral galaxy millions of light years away.",
        "The central bank raised interest rates to fight inflation.",
        "Astronauts docked with the space station after a two-day flight.",
    ];
    // 32 texts: a full batch.
    let texts: Vec<&str> = texts.iter().cycle().take(32).copied().collect();
    let mut reqs = requests(&texts);
    reqs.push(InferenceRequest {
        request_key: 99,
        input_name: Some("text".into()),
        tensor: Tensor::new(DType::U8, vec![2], vec![0xc3, 0x28]).unwrap(),
    });
    let ep = child.endpoint();
    ep.send_msg(
        &Down::Inference(InferenceCommand::Infer {
            batch_id: 1,
            model_id: "minilm".into(),
            version: None,
            requests: reqs,
            max_batch: 32,
        }),
        soon(),
    )
    .unwrap();
    let reply = match ep.recv_msg::<Up>(soon()) {
        Ok(Up::Inference(r)) => r,
        other => panic!(
            "expected the results, got {other:?} ({:?})",
            deaths.recv_timeout(Duration::from_secs(2))
        ),
    };
    let InferenceReply::Results { results, .. } = reply else {
        panic!("{reply:?}");
    };
    let mut local = loaded();
    for (s, r) in texts.iter().zip(&results) {
        let want = local.infer("minilm", None, None, &text(s)).unwrap();
        assert_eq!(
            bits(r.output.as_ref().unwrap()),
            bits(&want),
            "{s:?}: host process vs in process"
        );
    }
    let err = results[32].output.as_ref().unwrap_err();
    assert!(err.contains("not UTF-8"), "{err}");
    child.shutdown(Duration::from_secs(10)).unwrap();
}
