//! Verifying on the CPU a run whose answers came from another inference
//! device, with real processes (the `lockstep` binary, its workers and its
//! inference host running the `mlp` model in ONNX Runtime).
//!
//! There is no GPU here: the host's test-only device stand-in
//! (`LOCKSTEP_INFERENCE_INJECT=device=cuda:0,ulps=K`, the `fault-injection`
//! feature of the test builds) reports its answers as `cuda:0`'s and moves
//! every `f32` element by `K` ulps, as a GPU's kernels differ from the
//! CPU's in the last bits.
//!
//! * a run with the stand-in at 3 ulps, verified without it: identical,
//!   every answer "equal within tolerance" with its count and max diff;
//!   its journal keeps the answers and is byte-identical run to run;
//!   `replay` and `fork` deliver the recorded answers too;
//! * at 2²⁰ ulps (or with a manifest tolerance tighter than 3 ulps): a
//!   divergence naming the answer (tick, agent, request, model, max abs
//!   diff, tolerance), exit code 3;
//! * a CPU run: bitwise, no tolerance path, no answer bytes in the journal
//!   (and verified by a "cuda:0" host, a clear divergence: only hashes);
//! * a stand-in run re-verified with the same stand-in: the same-device
//!   path, bitwise — 4 ulps instead of 3 there is a divergence, although
//!   within tolerance;
//! * manifest tolerance errors name the field.
//!
//! Needs `scripts/fetch-onnxruntime.sh`, `scripts/gen-models.sh`,
//! `scripts/build-agents.sh` and the binaries of `cargo build --workspace
//! --bins` (which have the `fault-injection` feature).

use lockstep_supervisor::journal::{AnswerSource, Entry, read_journal};
use lockstep_tests::{TempDir, Watchdog, agent, bin, model};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const INJECT: &str = "LOCKSTEP_INFERENCE_INJECT";
/// The inferrers ask every 5 ticks; 3 of them over 40 ticks.
const ANSWERS: usize = 3 * 8;

/// Three inferrers asking `mlp` and two counters, 40 ticks, a checkpoint
/// every 10; `extra` is appended to the model's table.
fn manifest(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[run]\nseed = 9\nticks = 40\nworkers = 2\ncheckpoint_every = 10\n\n\
         [[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 3\n\n\
         [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 2\n\n\
         [[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n{extra}",
        agent("inferrer"),
        agent("counter"),
        model("mlp.onnx"),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `lockstep ARGS…` with the device stand-in `inject` (`None`: without).
fn lockstep(tmp: &TempDir, args: &[&str], inject: Option<&str>) -> Output {
    let mut c = Command::new(bin("lockstep"));
    c.args(args)
        .env("LOCKSTEP_CACHE_DIR", tmp.path().join("cache"))
        .env_remove("LOCKSTEP_INFERENCE_DEVICE")
        .env_remove(INJECT);
    if let Some(v) = inject {
        c.env(INJECT, v);
    }
    c.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `manifest` into `tmp/name` on the CPU, with the stand-in `inject`.
fn run(tmp: &TempDir, manifest: &Path, name: &str, inject: Option<&str>) -> PathBuf {
    let dir = tmp.path().join(name);
    let out = lockstep(
        tmp,
        &[
            "run",
            manifest.to_str().unwrap(),
            "--run-dir",
            dir.to_str().unwrap(),
            "--device",
            "cpu",
            "--no-board",
        ],
        inject,
    );
    assert!(out.status.success(), "run {name}: {}", text(&out));
    dir
}

/// `lockstep verify DIR --json`: (exit code, the JSON).
fn verify(tmp: &TempDir, dir: &Path, inject: Option<&str>) -> (Option<i32>, serde_json::Value) {
    let out = lockstep(tmp, &["verify", dir.to_str().unwrap(), "--json"], inject);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify {}: {e}: {}", dir.display(), text(&out)));
    (out.status.code(), v)
}

/// Every journaled answer's source.
fn sources(dir: &Path) -> Vec<AnswerSource> {
    read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .into_iter()
        .flat_map(|e| match e {
            Entry::Inference { answers, .. } => answers.into_iter().map(|a| a.source).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The journal of a stand-in run records its answers as `cuda:0`'s, with
/// their bytes (else the binaries lack the test feature).
fn assert_stand_in_answers(dir: &Path) {
    let s = sources(dir);
    assert_eq!(s.len(), ANSWERS, "answers journaled");
    for src in &s {
        assert_eq!(
            src.device(),
            "cuda:0",
            "the host did not take the stand-in: rebuild with `cargo build --workspace --bins` \
             (the fault-injection feature)"
        );
        let Some(Ok(bytes)) = src.answer() else {
            panic!("no answer bytes: {src:?}")
        };
        assert_eq!(bytes.len(), 8 + 2 * 8 + 4 * 4, "an f32[1,4] ABI tensor");
    }
}

#[test]
fn a_run_from_another_device_verifies_on_the_cpu_equal_within_tolerance() {
    let _w = Watchdog::new("device_tolerance_within", Duration::from_secs(300));
    let tmp = TempDir::new("tolerance-within");
    let m = manifest(tmp.path(), "m", "");
    let stand_in = Some("device=cuda:0,ulps=3");
    let dir = run(&tmp, &m, "gpu", stand_in);
    assert_stand_in_answers(&dir);
    // Same manifest, seed and device: the same journal, byte for byte.
    let again = run(&tmp, &m, "gpu-again", stand_in);
    assert!(
        std::fs::read(dir.join("journal.lsj")).unwrap()
            == std::fs::read(again.join("journal.lsj")).unwrap(),
        "journals of two identical runs differ"
    );
    let header = read_journal(&dir.join("journal.lsj")).unwrap().entries[0].clone();
    assert!(
        matches!(&header, Entry::Header { device, .. } if device == "cpu"),
        "{header:?}"
    );

    // Verified on the CPU, without the stand-in.
    let (code, v) = verify(&tmp, &dir, None);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "identical", "{v}");
    assert_eq!(v["ticks"], 40, "{v}");
    let within = v["within_tolerance"].as_array().unwrap();
    assert_eq!(within.len(), 1, "{v}");
    let w = &within[0];
    assert_eq!(
        (&w["device"], &w["recomputed_on"], &w["model"]),
        (
            &"cuda:0".into(),
            &"cpu".into(),
            &serde_json::Value::from("mlp@v1")
        ),
        "{v}"
    );
    assert_eq!(w["answers"], ANSWERS as u64, "{v}");
    assert_eq!(w["bitwise"], 0, "every element moved: {v}");
    assert_eq!(
        (w["atol"].as_f64(), w["rtol"].as_f64()),
        (Some(1e-5), Some(1e-4))
    );
    // A few ulps: more than nothing, far less than atol.
    let max = w["max_abs_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 1e-5, "{v}");
    let used = w["max_used"].as_f64().unwrap();
    assert!(used > 0.0 && used < 0.05, "{v}");

    // The text verdict says so too.
    let out = lockstep(&tmp, &["verify", dir.to_str().unwrap()], None);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        said.starts_with("identical (40 ticks re-executed, 5 checkpoints compared")
            && said.contains(&format!(
                "; {ANSWERS} answers from cuda:0 equal within tolerance on cpu (model mlp@v1: max abs diff"
            )),
        "{said}"
    );

    // replay and fork deliver the recorded answers as well.
    let out = lockstep(&tmp, &["replay", dir.to_str().unwrap(), "--json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checked"], 40, "{r}");
    assert_eq!(r["within_tolerance"][0]["answers"], ANSWERS as u64, "{r}");
    let fork = tmp.path().join("fork");
    let out = lockstep(
        &tmp,
        &[
            "fork",
            dir.to_str().unwrap(),
            "--at",
            "23",
            "--into",
            fork.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_answer_outside_the_tolerance_is_a_divergence_naming_it() {
    let _w = Watchdog::new("device_tolerance_outside", Duration::from_secs(300));
    let tmp = TempDir::new("tolerance-outside");
    let m = manifest(tmp.path(), "m", "");
    // 2^20 ulps: about 12% of each element.
    let dir = run(&tmp, &m, "far", Some("device=cuda:0,ulps=1048576"));
    assert_stand_in_answers(&dir);
    let (code, v) = verify(&tmp, &dir, None);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["verdict"], "diverged", "{v}");
    // The inferrers ask at tick 5; the answers are delivered after it.
    assert_eq!(v["first_tick"], 5, "{v}");
    let a = &v["answer"];
    assert_eq!(a["tick"], 5, "{v}");
    assert_eq!(
        (&a["agent"], &a["agent_name"]),
        (&1.into(), &"inferrer-0".into()),
        "{v}"
    );
    assert_eq!(a["request_id"], 1, "{v}");
    assert_eq!(a["model"], "mlp@v1", "{v}");
    assert_eq!(
        (&a["recorded_on"], &a["recomputed_on"]),
        (&"cuda:0".into(), &"cpu".into())
    );
    assert_eq!(
        (a["atol"].as_f64(), a["rtol"].as_f64()),
        (Some(1e-5), Some(1e-4))
    );
    let max = a["max_abs_diff"].as_f64().unwrap();
    assert!(max > 1e-3, "{v}");
    let out = lockstep(&tmp, &["verify", dir.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for part in [
        "diverged: first divergent tick 5",
        "inference answer delivered after tick 5 to agent 1 (inferrer-0), request 1, model mlp@v1",
        "recorded on cuda:0, recomputed on cpu: max abs diff",
        "outside the tolerance atol 1e-5 + rtol 1e-4·|x|",
    ] {
        assert!(said.contains(part), "{part}: {said}");
    }

    // A tolerance of the manifest's own, tighter than 3 ulps.
    let tight = manifest(
        tmp.path(),
        "tight",
        "tolerance = { atol = 0, rtol = 1e-9 }\n",
    );
    let dir = run(&tmp, &tight, "tight", Some("device=cuda:0,ulps=3"));
    let (code, v) = verify(&tmp, &dir, None);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["answer"]["tick"], 5, "{v}");
    assert_eq!(
        (v["answer"]["atol"].as_f64(), v["answer"]["rtol"].as_f64()),
        (Some(0.0), Some(1e-9))
    );
}

#[test]
fn a_cpu_run_verifies_bitwise_without_answer_bytes() {
    let _w = Watchdog::new("device_tolerance_cpu", Duration::from_secs(300));
    let tmp = TempDir::new("tolerance-cpu");
    let m = manifest(tmp.path(), "m", "");
    let dir = run(&tmp, &m, "cpu", None);
    let s = sources(&dir);
    assert_eq!(s.len(), ANSWERS);
    assert!(
        s.iter().all(|a| *a == AnswerSource::Cpu),
        "CPU answers keep only their hash: {s:?}"
    );
    let (code, v) = verify(&tmp, &dir, None);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "identical", "{v}");
    assert_eq!(v["within_tolerance"], serde_json::json!([]), "{v}");
    // Recomputed by a "cuda:0" host, the hashes cannot be compared within
    // a tolerance: a clear divergence, not a false "equal".
    let (code, v) = verify(&tmp, &dir, Some("device=cuda:0,ulps=1"));
    assert_eq!(code, Some(3), "{v}");
    let reason = v["answer"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("keeps only the hash of answers computed on cpu")
            && reason.contains("--device cpu"),
        "{v}"
    );
}

#[test]
fn a_run_from_another_device_reverifies_bitwise_on_that_device() {
    let _w = Watchdog::new("device_tolerance_same", Duration::from_secs(300));
    let tmp = TempDir::new("tolerance-same");
    let m = manifest(tmp.path(), "m", "");
    let dir = run(&tmp, &m, "gpu", Some("device=cuda:0,ulps=3"));
    assert_stand_in_answers(&dir);
    let (code, v) = verify(&tmp, &dir, Some("device=cuda:0,ulps=3"));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["verdict"], "identical", "{v}");
    assert_eq!(
        v["within_tolerance"],
        serde_json::json!([]),
        "the same device compares bitwise: {v}"
    );
    // The same device with other bits (4 ulps, well within tolerance) is a
    // divergence: bitwise is bitwise.
    let (code, v) = verify(&tmp, &dir, Some("device=cuda:0,ulps=4"));
    assert_eq!(code, Some(3), "{v}");
    // Answers delivered after tick 5 are chained into tick 6's hash.
    assert_eq!(v["first_tick"], 6, "{v}");
    assert!(v.get("answer").is_none(), "a tick hash divergence: {v}");
}

#[test]
fn manifest_tolerance_errors_name_the_field() {
    let _w = Watchdog::new("device_tolerance_manifest", Duration::from_secs(120));
    let tmp = TempDir::new("tolerance-manifest");
    for (extra, says) in [
        (
            "tolerance = { atol = -1e-5 }\n",
            "models[0].tolerance.atol: atol must be a number from 0 to 1 (got -0.00001)",
        ),
        (
            "tolerance = { rtol = \"tight\" }\n",
            "models[0].tolerance.rtol: rtol must be a number from 0 to 1 (got a string)",
        ),
        (
            "tolerance = { atol = 1e-5, relative = 1e-4 }\n",
            "models[0].tolerance.relative: unknown key (expected atol or rtol)",
        ),
    ] {
        let m = manifest(tmp.path(), "bad", extra);
        let dir = tmp.path().join("bad-run");
        let out = lockstep(
            &tmp,
            &[
                "run",
                m.to_str().unwrap(),
                "--run-dir",
                dir.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{extra}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{extra}: {err}");
        let line = 1 + std::fs::read_to_string(&m)
            .unwrap()
            .lines()
            .position(|l| l.starts_with("tolerance"))
            .unwrap();
        assert!(
            err.contains(&format!("bad.toml:{line}: ")),
            "line {line}: {err}"
        );
        assert!(!dir.join("journal.lsj").exists(), "no run started");
    }
}
