//! Shared set-up of the inference-host tests: the real ONNX Runtime library
//! (found exactly as the binary finds it) and the generated models.

#![allow(dead_code)]

use lockstep_inference_host::{init_runtime, locate_ort_library};
use lockstep_supervisor::child::ChildSpec;
use ort::environment::Environment;
use shm_protocol::inference::Tensor;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The ONNX Runtime library, or a failure saying how to get it.
pub fn ort_lib() -> PathBuf {
    locate_ort_library(None).unwrap_or_else(|e| {
        panic!(
            "{e}\nThese tests need the real ONNX Runtime library: run scripts/fetch-onnxruntime.sh \
             (or set ORT_DYLIB_PATH)."
        )
    })
}

/// The process's single ONNX Runtime environment.
pub fn env() -> &'static Environment {
    static ENV: OnceLock<Environment> = OnceLock::new();
    ENV.get_or_init(|| init_runtime(&ort_lib()).unwrap_or_else(|e| panic!("{e}")))
}

/// How a test or bench starts this build's inference host with `args`: as
/// the supervisor does (its environment, default rings, adaptive waiting),
/// without a cgroup or a hang timeout.  Callers change what differs.
pub fn host_spec(name: &str, args: &[&str]) -> ChildSpec {
    ChildSpec {
        role: shm_protocol::control::Role::InferenceHost,
        name: name.into(),
        program: env!("CARGO_BIN_EXE_lockstep-inference-host").into(),
        args: args.iter().map(std::ffi::OsString::from).collect(),
        rings: shm_protocol::segment::SegmentConfig::default(),
        policy: shm_protocol::WaitPolicy::ADAPTIVE,
        // ONNX Runtime's telemetry uploader would be killed by the host's
        // seccomp filter: the supervisor's environment turns it off.
        env: lockstep_supervisor::jail::inference_host_env(),
        cgroup: None,
        hang_timeout: None,
    }
}

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A generated model, or a failure saying how to generate it.
pub fn model(name: &str) -> PathBuf {
    let p = repo().join(".deps/models").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/gen-models.sh to generate the test models",
        p.display()
    );
    p
}

/// BLAKE3 (hex) of a file.
pub fn blake3_hex(path: &std::path::Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// Deterministic f32 inputs for the MLP: `rows` × 16 values in [-2, 2).
pub fn mlp_input(rows: u64, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..rows * 16)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_slice(vec![rows, 16], &values).unwrap()
}

/// The bit patterns of an f32 tensor (for bitwise comparisons).
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .expect("f32 tensor")
        .iter()
        .map(|v| v.to_bits())
        .collect()
}
