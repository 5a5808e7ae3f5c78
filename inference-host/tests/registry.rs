//! The model registry against the real ONNX Runtime library, in process.
//!
//! One ORT environment per process (ORT's rule), shared by every test here.

mod common;

use common::{bits, blake3_hex, env, mlp_input, model};
use lockstep_inference_host::{
    Device, DevicePref, HostOptions, InferenceError, ModelRegistry, locate_ort_library_from,
};
use ort::session::Session;
use ort::session::builder::{AutoDevicePolicy, GraphOptimizationLevel};
use shm_protocol::inference::{DType, InferenceRequest, Tensor};
use std::path::Path;

fn cpu() -> HostOptions {
    HostOptions {
        device: DevicePref::Cpu,
        intra_threads: 1,
    }
}

fn registry_with_mlp(options: HostOptions) -> ModelRegistry {
    let mut r = ModelRegistry::new(env(), options);
    let p = model("mlp.onnx");
    r.load_model("mlp", "v1", &p, &blake3_hex(&p)).unwrap();
    r
}

fn requests(tensors: &[Tensor]) -> Vec<InferenceRequest> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| InferenceRequest {
            request_key: 1000 + i as u64,
            input_name: None,
            tensor: t.clone(),
        })
        .collect()
}

/// Runs `input` through a session built directly with `ort` + `ndarray`.
fn direct(session: &mut Session, input: &Tensor) -> Vec<u32> {
    let rows = input.shape()[0] as usize;
    let array =
        ndarray::Array2::from_shape_vec((rows, 16), input.to_vec::<f32>().unwrap()).unwrap();
    let value = ort::value::Tensor::from_array(array).unwrap();
    let outputs = session.run(ort::inputs!["input" => value]).unwrap();
    let out = outputs["output"].try_extract_array::<f32>().unwrap();
    assert_eq!(out.shape(), [rows, 4]);
    out.iter().map(|v| v.to_bits()).collect()
}

/// (a) The registry's CPU result equals a direct ort session's, bit for bit.
#[test]
fn registry_matches_direct_ort_session_bitwise() {
    let mut reg = registry_with_mlp(cpu());
    assert_eq!(reg.model("mlp", None).unwrap().device(), Device::Cpu);
    // The same pinned settings the registry documents.
    let mut same = Session::builder(env())
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
        .commit_from_file(model("mlp.onnx"))
        .unwrap();
    // ORT's defaults (all optimisations, default thread count).
    let mut defaults = Session::builder(env())
        .unwrap()
        .commit_from_file(model("mlp.onnx"))
        .unwrap();
    let mut default_equal = true;
    for (seed, rows) in [(1, 1), (2, 1), (3, 5), (4, 64)] {
        let x = mlp_input(rows, seed);
        let ours = reg.infer("mlp", None, Some("input"), &x).unwrap();
        assert_eq!(ours.dtype(), DType::F32);
        assert_eq!(ours.shape(), [rows, 4]);
        assert_eq!(bits(&ours), direct(&mut same, &x), "rows {rows}");
        default_equal &= bits(&ours) == direct(&mut defaults, &x);
        // And the result is reproducible.
        assert_eq!(reg.infer("mlp", None, None, &x).unwrap(), ours);
    }
    eprintln!("registry == ORT-default-options session bitwise: {default_equal}");
}

/// (b) Batches are reproducible and, for the MLP on CPU, bitwise identical
/// to one-at-a-time results.
#[test]
fn batches_are_reproducible_and_equal_single_runs() {
    let mut reg = registry_with_mlp(cpu());
    let tensors: Vec<Tensor> = (0..64).map(|i| mlp_input(1, 100 + i)).collect();
    let reqs = requests(&tensors);
    let singles: Vec<Tensor> = tensors
        .iter()
        .map(|t| reg.infer("mlp", None, None, t).unwrap())
        .collect();
    for max_batch in [0, 1, 2, 7, 16, 64, 1000] {
        let a = reg.batch_infer("mlp", None, &reqs, max_batch);
        let b = reg.batch_infer("mlp", None, &reqs, max_batch);
        let expect_batches = 64u32.div_ceil(max_batch.clamp(1, 64));
        assert_eq!(a.telemetry.batches, expect_batches, "max_batch {max_batch}");
        assert_eq!(a.telemetry.max_batch_size, max_batch.clamp(1, 64));
        assert_eq!(a.telemetry.device, "cpu");
        for (i, (ra, rb)) in a.results.iter().zip(&b.results).enumerate() {
            let (ra, rb) = (ra.as_ref().unwrap(), rb.as_ref().unwrap());
            assert_eq!(
                bits(ra),
                bits(rb),
                "run to run, request {i}, max_batch {max_batch}"
            );
            assert_eq!(
                bits(ra),
                bits(&singles[i]),
                "batched vs alone, request {i}, max_batch {max_batch}"
            );
        }
    }
    // Requests of several rows are split back by rows.
    let multi: Vec<Tensor> = (1..=6).map(|rows| mlp_input(rows, 7 * rows)).collect();
    let out = reg.batch_infer("mlp", None, &requests(&multi), 8);
    // Rows 1+2+3 | 4 | 5 | 6 (each later one alone: 4+5 > 8).
    assert_eq!(out.telemetry.batches, 4);
    for (t, r) in multi.iter().zip(&out.results) {
        let r = r.as_ref().unwrap();
        assert_eq!(r.shape(), [t.shape()[0], 4]);
        assert_eq!(bits(r), bits(&reg.infer("mlp", None, None, t).unwrap()));
    }
    // A fixed-batch model cannot batch: every request runs alone.
    let p = model("mlp_fixed.onnx");
    reg.load_model("fixed", "v1", &p, &blake3_hex(&p)).unwrap();
    assert!(!reg.model("fixed", None).unwrap().batchable());
    let out = reg.batch_infer("fixed", None, &reqs[..10], 64);
    assert_eq!(
        (out.telemetry.batches, out.telemetry.max_batch_size),
        (10, 1)
    );
    for (i, r) in out.results.iter().enumerate() {
        assert_eq!(
            bits(r.as_ref().unwrap()),
            bits(&singles[i]),
            "fixed model, request {i}"
        );
    }
}

/// (c) Bad model files are refused with typed errors.
#[test]
fn bad_models_are_refused() {
    let mut reg = ModelRegistry::new(env(), cpu());
    let mlp = model("mlp.onnx");
    let good = blake3_hex(&mlp);
    let missing = Path::new("/nonexistent/model.onnx");
    assert!(matches!(
        reg.load_model("m", "v1", missing, &good),
        Err(InferenceError::ModelFile { .. })
    ));
    for not_a_file in ["/dev/zero", "/tmp"] {
        let e = reg
            .load_model("m", "v1", Path::new(not_a_file), &good)
            .unwrap_err();
        assert!(matches!(e, InferenceError::ModelFile { .. }), "{e}");
    }
    let wrong = blake3_hex(&model("mlp_v2.onnx"));
    let e = reg.load_model("m", "v1", &mlp, &wrong).unwrap_err();
    assert!(
        matches!(&e, InferenceError::HashMismatch { expected, actual, .. }
        if *expected == wrong && *actual == good),
        "{e}"
    );
    for spec in [
        "",
        "abc",
        &good[..63],
        &format!("{}g", &good[..63]),
        &format!("{good}0"),
    ] {
        assert!(
            matches!(
                reg.load_model("m", "v1", &mlp, spec),
                Err(InferenceError::BadHashSpec(_))
            ),
            "{spec:?}"
        );
    }
    // Upper-case hex is the same hash.
    reg.load_model("m", "v1", &mlp, &good.to_uppercase())
        .unwrap();
    let broken = model("broken.onnx");
    let e = reg
        .load_model("b", "v1", &broken, &blake3_hex(&broken))
        .unwrap_err();
    assert!(matches!(e, InferenceError::InvalidModel { .. }), "{e}");
    eprintln!("garbage model: {e}");
    // The same id@version with other bytes is a conflict; with the same
    // bytes a no-op.
    let v2 = model("mlp_v2.onnx");
    assert!(matches!(
        reg.load_model("m", "v1", &v2, &blake3_hex(&v2)),
        Err(InferenceError::VersionConflict { .. })
    ));
    reg.load_model("m", "v1", &mlp, &good).unwrap();
    // Nothing failed left anything behind.
    let status = reg.status();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].id.as_str(), status[0].version.as_str()),
        ("m", "v1")
    );
}

/// (c) Bad inputs are refused with typed errors; in a batch they do not
/// disturb the other requests.
#[test]
fn bad_inputs_are_refused() {
    let mut reg = registry_with_mlp(cpu());
    let x = mlp_input(1, 5);
    let f64_input = Tensor::from_slice(vec![1, 16], &[0.5f64; 16]).unwrap();
    let e = reg.infer("mlp", None, None, &f64_input).unwrap_err();
    assert!(
        matches!(
            e,
            InferenceError::DTypeMismatch {
                expected: DType::F32,
                got: DType::F64,
                ..
            }
        ),
        "{e}"
    );
    for shape in [vec![1u64, 15], vec![16], vec![1, 16, 1], vec![]] {
        let n: u64 = shape.iter().product();
        let t = Tensor::from_slice(shape.clone(), &vec![0f32; n as usize]).unwrap();
        let e = reg.infer("mlp", None, None, &t).unwrap_err();
        assert!(
            matches!(e, InferenceError::ShapeMismatch { .. }),
            "{shape:?}: {e}"
        );
    }
    // An empty batch (0 rows) is a valid input.
    let empty = Tensor::new(DType::F32, vec![0, 16], vec![]).unwrap();
    assert_eq!(
        reg.infer("mlp", None, None, &empty).unwrap().shape(),
        [0, 4]
    );
    let e = reg.infer("mlp", None, Some("tokens"), &x).unwrap_err();
    assert!(matches!(e, InferenceError::UnknownInput { .. }), "{e}");
    assert!(e.to_string().contains("\"input\""), "{e}");
    assert!(matches!(
        reg.infer("nope", None, None, &x),
        Err(InferenceError::UnknownModel(_))
    ));
    assert!(matches!(
        reg.infer("mlp", Some("v9"), None, &x),
        Err(InferenceError::UnknownVersion { .. })
    ));
    // In a batch: errors in place, the rest batched and correct.
    let mut reqs = requests(&[x.clone(), f64_input.clone(), mlp_input(1, 6), x.clone()]);
    reqs[2].input_name = Some("wrong".into());
    let out = reg.batch_infer("mlp", None, &reqs, 64);
    assert_eq!(out.results.len(), 4);
    assert!(matches!(
        out.results[1],
        Err(InferenceError::DTypeMismatch { .. })
    ));
    assert!(matches!(
        out.results[2],
        Err(InferenceError::UnknownInput { .. })
    ));
    let single = reg.infer("mlp", None, None, &x).unwrap();
    assert_eq!(out.results[0].as_ref().unwrap(), &single);
    assert_eq!(out.results[3].as_ref().unwrap(), &single);
    assert_eq!(
        (out.telemetry.batches, out.telemetry.max_batch_size),
        (1, 2)
    );
    // An unknown model answers every request with the error.
    let out = reg.batch_infer("nope", None, &reqs, 64);
    assert_eq!(out.results.len(), 4);
    assert!(
        out.results
            .iter()
            .all(|r| matches!(r, Err(InferenceError::UnknownModel(_))))
    );
    assert_eq!(out.telemetry.batches, 0);
}

/// Several versions stay loaded; `None` means the latest loaded.
#[test]
fn versioned_models() {
    let mut reg = registry_with_mlp(cpu());
    let x = mlp_input(3, 11);
    let v1 = reg.infer("mlp", None, None, &x).unwrap();
    let p2 = model("mlp_v2.onnx");
    reg.load_model("mlp", "v2", &p2, &blake3_hex(&p2)).unwrap();
    let v2 = reg.infer("mlp", None, None, &x).unwrap();
    assert_ne!(v1, v2, "v2 has different weights");
    assert_eq!(reg.infer("mlp", Some("v1"), None, &x).unwrap(), v1);
    assert_eq!(reg.infer("mlp", Some("v2"), None, &x).unwrap(), v2);
    let status = reg.status();
    let current: Vec<(&str, bool)> = status
        .iter()
        .map(|s| (s.version.as_str(), s.current))
        .collect();
    assert_eq!(current, [("v1", false), ("v2", true)]);
    assert_eq!(status[0].inputs[0].shape, [None, Some(16)]);
    assert_eq!(status[0].outputs[0].shape, [None, Some(4)]);
    // Re-loading v1 makes it current again.
    let p1 = model("mlp.onnx");
    reg.load_model("mlp", "v1", &p1, &blake3_hex(&p1)).unwrap();
    assert_eq!(reg.infer("mlp", None, None, &x).unwrap(), v1);
    // Unloading the current version falls back to the other one.
    assert_eq!(reg.unload_model("mlp", Some("v1")), ["v1"]);
    assert_eq!(reg.infer("mlp", None, None, &x).unwrap(), v2);
    assert_eq!(reg.unload_model("mlp", Some("v1")), Vec::<String>::new());
    assert_eq!(reg.unload_model("mlp", None), ["v2"]);
    assert!(reg.status().is_empty());
    assert!(matches!(
        reg.infer("mlp", None, None, &x),
        Err(InferenceError::UnknownModel(_))
    ));
}

/// (d) `auto` falls back to the CPU (the pinned library has no CUDA) and
/// records it; `cuda` fails clearly.
#[test]
fn device_auto_falls_back_to_cpu_and_cuda_fails_clearly() {
    let auto = HostOptions {
        device: DevicePref::Auto,
        intra_threads: 1,
    };
    let mut reg = ModelRegistry::new(env(), auto);
    let p = model("mlp.onnx");
    // Without a probe first: the CUDA attempt fails, a fresh CPU session is built.
    let m = reg.load_model("mlp", "v1", &p, &blake3_hex(&p)).unwrap();
    assert_eq!(m.device(), Device::Cpu);
    assert_eq!(m.device().to_string(), "cpu");
    assert_eq!(reg.status()[0].device, "cpu");
    let x = mlp_input(2, 3);
    let out = reg.batch_infer("mlp", None, &requests(std::slice::from_ref(&x)), 4);
    assert_eq!(out.telemetry.device, "cpu");
    // Same numbers as a CPU-only registry.
    let mut cpu_reg = registry_with_mlp(cpu());
    assert_eq!(
        out.results[0].as_ref().unwrap(),
        &cpu_reg.infer("mlp", None, None, &x).unwrap()
    );
    let e = reg.probe_cuda().unwrap_err();
    assert!(matches!(e, InferenceError::CudaUnavailable(_)), "{e}");
    let mut cuda = ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cuda(0),
            intra_threads: 1,
        },
    );
    let e = cuda
        .load_model("mlp", "v1", &p, &blake3_hex(&p))
        .unwrap_err();
    assert!(matches!(e, InferenceError::CudaUnavailable(_)), "{e}");
    eprintln!("--device cuda here: {e}");
    assert!(cuda.status().is_empty());
}

#[test]
fn self_test_and_more_threads() {
    let mut reg = ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cpu,
            intra_threads: 2,
        },
    );
    reg.self_test().unwrap();
    let p = model("mlp.onnx");
    reg.load_model("mlp", "v1", &p, &blake3_hex(&p)).unwrap();
    let x = mlp_input(64, 9);
    let a = reg.infer("mlp", None, None, &x).unwrap();
    assert_eq!(reg.infer("mlp", None, None, &x).unwrap(), a);
}

#[test]
fn library_lookup() {
    let dir = tempfile::Builder::new()
        .prefix("lockstep-ortlib-")
        .tempdir()
        .unwrap();
    let tmp = dir.path();
    let bin = tmp.join("a/b/target/debug");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("lockstep-inference-host");
    // Nothing there: the error names the fix.
    let e = locate_ort_library_from(None, None, Some(&exe)).unwrap_err();
    assert!(matches!(e, InferenceError::LibraryNotFound { .. }));
    assert!(
        e.to_string().contains("scripts/fetch-onnxruntime.sh"),
        "{e}"
    );
    // A .deps with the library above the executable is found.
    let lib_dir = tmp.join("a/.deps/onnxruntime");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let lib = lib_dir.join("libonnxruntime.so.1.32.0");
    std::fs::write(&lib, b"x").unwrap();
    assert_eq!(
        locate_ort_library_from(None, None, Some(&exe)).unwrap(),
        lib
    );
    // Explicit and environment paths win, and are not second-guessed.
    let other = tmp.join("other.so");
    std::fs::write(&other, b"x").unwrap();
    assert_eq!(
        locate_ort_library_from(None, Some(&other), Some(&exe)).unwrap(),
        other
    );
    assert_eq!(
        locate_ort_library_from(Some(&other), Some(&lib), Some(&exe)).unwrap(),
        other
    );
    let e = locate_ort_library_from(Some(&tmp.join("missing.so")), None, Some(&exe)).unwrap_err();
    assert!(e.to_string().contains("missing.so"), "{e}");
}

/// A real model (Magika's file-type classifier from PyPI, i32 input, Conv
/// layers): loads, classifies, and batches reproducibly.
#[test]
fn real_model_magika() {
    let mut reg = ModelRegistry::new(env(), cpu());
    let p = model("magika.onnx");
    let m = reg
        .load_model("magika", "standard_v3_3", &p, &blake3_hex(&p))
        .unwrap();
    assert_eq!(m.inputs()[0].dtype, Some(DType::I32));
    assert_eq!(m.inputs()[0].shape, [None, Some(2048)]);
    assert_eq!(m.outputs()[0].shape, [None, Some(214)]);
    assert!(m.batchable());
    let labels = lockstep_inference_host::magika::labels(
        &std::fs::read_to_string(model("magika.config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(labels.len(), 214);
    let samples: Vec<(&str, Vec<u8>)> = vec![
        ("rust", include_bytes!("registry.rs").to_vec()),
        (
            "python",
            std::fs::read(common::repo().join("scripts/gen-models.py")).unwrap(),
        ),
        (
            "shell",
            std::fs::read(common::repo().join("scripts/fetch-onnxruntime.sh")).unwrap(),
        ),
        ("toml", include_bytes!("../Cargo.toml").to_vec()),
    ];
    let tensors: Vec<Tensor> = samples
        .iter()
        .map(|(_, c)| {
            Tensor::from_slice(vec![1, 2048], &lockstep_inference_host::magika::features(c))
                .unwrap()
        })
        .collect();
    let singles: Vec<Tensor> = tensors
        .iter()
        .map(|t| reg.infer("magika", None, Some("bytes"), t).unwrap())
        .collect();
    for ((want, _), out) in samples.iter().zip(&singles) {
        let scores = out.to_vec::<f32>().unwrap();
        let sum: f32 = scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "softmax sums to {sum}");
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        eprintln!(
            "magika: expected {want}, got {} ({:.3})",
            labels[best], scores[best]
        );
        assert_eq!(labels[best], *want);
    }
    let reqs = requests(&tensors);
    let a = reg.batch_infer("magika", None, &reqs, 4);
    let b = reg.batch_infer("magika", None, &reqs, 4);
    assert_eq!(a.telemetry.batches, 1);
    // Batched and single results were not bitwise equal for the upstream
    // model (its reductions follow the vector width); the portable form the
    // demo serves agrees on these inputs, but nothing guarantees it for
    // Conv/MatMul at other batch sizes, so only closeness is asserted; a
    // given batch composition is reproducible bit for bit.
    let mut batch_equals_single = true;
    let mut max_diff = 0f32;
    for (i, (ra, rb)) in a.results.iter().zip(&b.results).enumerate() {
        let (ra, rb) = (ra.as_ref().unwrap(), rb.as_ref().unwrap());
        assert_eq!(bits(ra), bits(rb), "batch run to run, request {i}");
        batch_equals_single &= bits(ra) == bits(&singles[i]);
        let (x, y) = (
            ra.to_vec::<f32>().unwrap(),
            singles[i].to_vec::<f32>().unwrap(),
        );
        max_diff = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(max_diff, f32::max);
    }
    eprintln!(
        "magika: batched == one at a time bitwise: {batch_equals_single}; max |diff| {max_diff:e}"
    );
    assert!(max_diff < 1e-4, "{max_diff}");
}

/// The demo's Magika is the upstream model rewritten by
/// scripts/onnx-portable.py (reductions as pairwise trees of `Add`,
/// `Reciprocal` as `Div`) so that it gives the same bits on x86_64 and
/// aarch64.  The rewrite changes only the rounding of a few sums: on every
/// snippet of the classifier agents' corpus it picks the same label as the
/// upstream model, with scores within 1e-6.
#[test]
fn portable_magika_agrees_with_upstream() {
    let mut reg = ModelRegistry::new(env(), cpu());
    for (version, file) in [
        ("upstream", "magika.upstream.onnx"),
        ("portable", "magika.onnx"),
    ] {
        let p = model(file);
        reg.load_model("magika", version, &p, &blake3_hex(&p))
            .unwrap();
    }
    let corpus = common::repo().join("agents/examples/classifier/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus {} too small", corpus.display());
    let (mut max_diff, mut differing) = (0f32, 0usize);
    for f in &files {
        let t = Tensor::from_slice(
            vec![1, 2048],
            &lockstep_inference_host::magika::features(&std::fs::read(f).unwrap()),
        )
        .unwrap();
        let up = reg
            .infer("magika", Some("upstream"), Some("bytes"), &t)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let port = reg
            .infer("magika", Some("portable"), Some("bytes"), &t)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmax(&up), argmax(&port), "label of {}", f.display());
        differing += usize::from(up != port);
        for (a, b) in up.iter().zip(&port) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    eprintln!(
        "portable vs upstream Magika: {differing} of {} snippets differ in some bit, max |diff| {max_diff:e}",
        files.len()
    );
    assert!(max_diff < 1e-5, "{max_diff}");
}
