//! The real `lockstep-inference-host` process, spawned and driven through the
//! supervisor library over its shared-memory rings, against in-process
//! results.

mod common;

use common::{bits, blake3_hex, env, mlp_input, model};
use lockstep_inference_host::{DevicePref, HostOptions, ModelRegistry};
use lockstep_supervisor::child::{Child, ChildSpec};
use lockstep_supervisor::reaper::{ExitKind, Reaper};
use shm_protocol::control::{Down, ExitCode, Up};
use shm_protocol::inference::{DType, InferenceCommand, InferenceReply, InferenceRequest, Tensor};
use shm_protocol::segment::SegmentConfig;
use std::process::Command;
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_lockstep-inference-host");

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(30))
}

fn spawn(reaper: &Reaper, args: &[&str]) -> Child {
    let spec = common::host_spec("inference-host", args);
    let mut child = Child::spawn(&spec, reaper).unwrap();
    child.handshake(Duration::from_secs(30)).unwrap();
    child
}

fn call(child: &mut Child, cmd: InferenceCommand) -> InferenceReply {
    let ep = child.endpoint();
    ep.send_msg(&Down::Inference(cmd), soon()).unwrap();
    match ep.recv_msg::<Up>(soon()).unwrap() {
        Up::Inference(r) => r,
        other => panic!("expected an inference reply, got {other:?}"),
    }
}

fn load(child: &mut Child, id: &str, version: &str, file: &str) -> InferenceReply {
    let p = model(file);
    call(
        child,
        InferenceCommand::LoadModel {
            id: id.into(),
            version: version.into(),
            source: p.display().to_string(),
            bytes: std::fs::read(&p).unwrap(),
            blake3_hex: blake3_hex(&p),
        },
    )
}

fn infer(
    child: &mut Child,
    batch_id: u64,
    model: &str,
    version: Option<&str>,
    tensors: &[Tensor],
    max_batch: u32,
) -> InferenceReply {
    let requests = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| InferenceRequest {
            request_key: (batch_id << 32) | i as u64,
            input_name: Some("input".into()),
            tensor: t.clone(),
        })
        .collect();
    call(
        child,
        InferenceCommand::Infer {
            batch_id,
            model_id: model.into(),
            version: version.map(str::to_owned),
            requests,
            max_batch,
        },
    )
}

#[test]
fn host_process_serves_models_over_the_ring() {
    let (reaper, deaths) = Reaper::start().unwrap();
    let mut child = spawn(&reaper, &["--device", "auto"]);

    // In-process reference.
    let mut local = ModelRegistry::new(
        env(),
        HostOptions {
            device: DevicePref::Cpu,
            intra_threads: 1,
        },
    );
    for (v, f) in [("v1", "mlp.onnx"), ("v2", "mlp_v2.onnx")] {
        let p = model(f);
        local.load_model("mlp", v, &p, &blake3_hex(&p)).unwrap();
    }

    // Load: `auto` ends up on the CPU here, and says so.
    match load(&mut child, "mlp", "v1", "mlp.onnx") {
        InferenceReply::Loaded {
            id,
            version,
            device,
            inputs,
            outputs,
        } => {
            assert_eq!(
                (id.as_str(), version.as_str(), device.as_str()),
                ("mlp", "v1", "cpu")
            );
            assert_eq!(inputs[0].name, "input");
            assert_eq!(inputs[0].dtype, Some(DType::F32));
            assert_eq!(inputs[0].shape, [None, Some(16)]);
            assert_eq!(outputs[0].name, "output");
        }
        other => panic!("{other:?}"),
    }

    // Several ticks of batches, compared with in-process results bit for bit.
    for tick in 0..5u64 {
        let tensors: Vec<Tensor> = (0..64)
            .map(|i| mlp_input(1 + i % 3, tick * 1000 + i))
            .collect();
        let InferenceReply::Results {
            batch_id,
            results,
            telemetry,
        } = infer(&mut child, tick, "mlp", None, &tensors, 16)
        else {
            panic!("expected results");
        };
        assert_eq!(batch_id, tick);
        assert_eq!(results.len(), 64);
        assert_eq!(telemetry.device, "cpu");
        assert!(
            telemetry.batches >= 8 && telemetry.max_batch_size > 1,
            "{telemetry:?}"
        );
        assert!(telemetry.rss_bytes > 0);
        for (i, (r, t)) in results.iter().zip(&tensors).enumerate() {
            assert_eq!(r.request_key, (tick << 32) | i as u64);
            let out = r.output.as_ref().unwrap();
            let expect = local.infer("mlp", Some("v1"), None, t).unwrap();
            assert_eq!(bits(out), bits(&expect), "tick {tick} request {i}");
            assert_eq!(r.output_blake3, *blake3::hash(&out.encode_abi()).as_bytes());
        }
    }

    // A second version becomes current; the first stays addressable.
    assert!(matches!(
        load(&mut child, "mlp", "v2", "mlp_v2.onnx"),
        InferenceReply::Loaded { .. }
    ));
    let x = [mlp_input(2, 42)];
    for (version, local_version) in [(None, "v2"), (Some("v1"), "v1"), (Some("v2"), "v2")] {
        let InferenceReply::Results { results, .. } = infer(&mut child, 9, "mlp", version, &x, 8)
        else {
            panic!("expected results");
        };
        let expect = local
            .infer("mlp", Some(local_version), None, &x[0])
            .unwrap();
        assert_eq!(results[0].output.as_ref().unwrap(), &expect, "{version:?}");
    }

    // Unknown model / version / bad input: error results, not a hang.
    for (model_id, version) in [("nope", None), ("mlp", Some("v7"))] {
        let InferenceReply::Results {
            batch_id, results, ..
        } = infer(&mut child, 77, model_id, version, &x, 8)
        else {
            panic!("expected results");
        };
        assert_eq!(batch_id, 77);
        let e = results[0].output.as_ref().unwrap_err();
        assert!(
            e.contains("unknown model") || e.contains("no version"),
            "{e}"
        );
        assert_eq!(
            results[0].output_blake3,
            *blake3::hash(e.as_bytes()).as_bytes()
        );
    }
    let wrong = Tensor::from_slice(vec![1, 3], &[1i64, 2, 3]).unwrap();
    let InferenceReply::Results { results, .. } =
        infer(&mut child, 78, "mlp", None, &[wrong, x[0].clone()], 8)
    else {
        panic!("expected results");
    };
    assert!(
        results[0]
            .output
            .as_ref()
            .unwrap_err()
            .contains("takes f32, got i64")
    );
    assert!(results[1].output.is_ok());

    // Bad files: LoadFailed with the reason, and the host keeps serving.
    match load(&mut child, "broken", "v1", "broken.onnx") {
        InferenceReply::LoadFailed { error, .. } => {
            assert!(error.contains("cannot load"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let p = model("mlp.onnx");
    let reply = call(
        &mut child,
        InferenceCommand::LoadModel {
            id: "x".into(),
            version: "v1".into(),
            source: p.display().to_string(),
            bytes: std::fs::read(&p).unwrap(),
            blake3_hex: "00".repeat(32),
        },
    );
    assert!(
        matches!(&reply, InferenceReply::LoadFailed { error, .. } if error.contains("expected 0000")),
        "{reply:?}"
    );

    // Status and unload.
    match call(&mut child, InferenceCommand::Status) {
        InferenceReply::Status {
            models,
            rss_bytes,
            gpu_mem_bytes,
        } => {
            let names: Vec<(String, String, bool)> = models
                .iter()
                .map(|m| (m.id.clone(), m.version.clone(), m.current))
                .collect();
            assert_eq!(
                names,
                [
                    ("mlp".into(), "v1".into(), false),
                    ("mlp".into(), "v2".into(), true)
                ]
            );
            assert!(models[0].requests >= 5 * 64);
            assert!(rss_bytes > 1 << 20, "{rss_bytes}");
            assert_eq!(gpu_mem_bytes, None);
        }
        other => panic!("{other:?}"),
    }
    let reply = call(
        &mut child,
        InferenceCommand::UnloadModel {
            id: "mlp".into(),
            version: None,
        },
    );
    assert_eq!(
        reply,
        InferenceReply::Unloaded {
            id: "mlp".into(),
            versions: vec!["v1".into(), "v2".into()]
        }
    );

    // Still alive and well: ping, then a clean shutdown.
    child.ping(Duration::from_secs(10)).unwrap();
    child.shutdown(Duration::from_secs(10)).unwrap();
    let exit = deaths.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(exit.kind, ExitKind::Exited(0), "{exit}");
}

/// A reply larger than the ring is carried whole (the endpoint splits it
/// into frames); a reply beyond the host's reply limit turns into
/// per-request errors instead of killing the host.
#[test]
fn large_replies_are_carried_and_oversized_ones_become_errors() {
    let (reaper, _deaths) = Reaper::start().unwrap();
    let spawn_small = |extra: &[&str]| {
        let mut args = vec!["--device", "cpu"];
        args.extend(extra);
        let spec = ChildSpec {
            rings: SegmentConfig {
                to_attacher: 1 << 20,
                to_creator: 1 << 12,
            },
            ..common::host_spec("small-rings", &args)
        };
        let mut child = Child::spawn(&spec, &reaper).unwrap();
        child.handshake(Duration::from_secs(30)).unwrap();
        assert!(matches!(
            load(&mut child, "mlp", "v1", "mlp.onnx"),
            InferenceReply::Loaded { .. }
        ));
        child
    };
    // 64 rows × 4 f32 = 1 KiB per request; 8 of them exceed a 4 KiB ring.
    let tensors: Vec<Tensor> = (0..8).map(|i| mlp_input(64, i)).collect();
    let mut child = spawn_small(&[]);
    let InferenceReply::Results { results, .. } = infer(&mut child, 1, "mlp", None, &tensors, 1024)
    else {
        panic!("expected results");
    };
    assert!(
        results.iter().all(|r| r.output.is_ok()),
        "all 8 outputs carried"
    );
    child.shutdown(Duration::from_secs(10)).unwrap();

    let mut child = spawn_small(&["--max-reply", "4096"]);
    let InferenceReply::Results { results, .. } = infer(&mut child, 1, "mlp", None, &tensors, 1024)
    else {
        panic!("expected results");
    };
    let ok = results.iter().filter(|r| r.output.is_ok()).count();
    assert!(ok > 0 && ok < 8, "{ok} outputs kept");
    for r in results.iter().filter(|r| r.output.is_err()) {
        assert!(r.output.as_ref().unwrap_err().contains("does not fit"));
    }
    // So many requests that even their errors do not fit: one Up::Error.
    let many: Vec<InferenceRequest> = (0..64)
        .map(|i| InferenceRequest {
            request_key: i,
            input_name: None,
            tensor: mlp_input(64, i),
        })
        .collect();
    let cmd = InferenceCommand::Infer {
        batch_id: 2,
        model_id: "mlp".into(),
        version: None,
        requests: many,
        max_batch: 64,
    };
    child
        .endpoint()
        .send_msg(&Down::Inference(cmd), soon())
        .unwrap();
    match child.endpoint().recv_msg::<Up>(soon()).unwrap() {
        Up::Inference(InferenceReply::Refused { batch_id, error }) => {
            assert_eq!(batch_id, 2);
            assert!(error.contains("batch 2"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    child.ping(Duration::from_secs(10)).unwrap();
    child.shutdown(Duration::from_secs(10)).unwrap();
}

/// A host that cannot start its runtime tells the supervisor why during the
/// handshake (the runtime is loaded inside the sandbox, after the hello),
/// then exits with `ExitCode::Runtime`.
fn start_failure(args: &[&str]) -> (String, ExitKind) {
    let (reaper, deaths) = Reaper::start().unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--disable", "cgroup"]);
    let spec = common::host_spec("inference-host", &all);
    let mut child = Child::spawn(&spec, &reaper).unwrap();
    let err = child
        .handshake(Duration::from_secs(60))
        .expect_err("the host cannot be ready")
        .to_string();
    let death = deaths.recv_timeout(Duration::from_secs(30)).unwrap();
    (err, death.kind)
}

/// Start-up failures exit with `ExitCode::Runtime` and name the fix.
#[test]
fn missing_library_or_cuda_exit_with_runtime_code() {
    let run = |args: &[&str]| {
        let out = Command::new(HOST)
            .args(["--shm-path", "/nonexistent/segment"])
            .args(args)
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let runtime = Some(ExitCode::Runtime as i32);
    let (code, err) = run(&["--ort-lib", "/nonexistent/libonnxruntime.so"]);
    assert_eq!(code, runtime, "{err}");
    assert!(err.contains("scripts/fetch-onnxruntime.sh"), "{err}");
    let runtime_exit = ExitKind::Exited(ExitCode::Runtime as i32);
    let (err, kind) = start_failure(&["--ort-lib", "/etc/hostname"]);
    assert_eq!(kind, runtime_exit, "{err}");
    assert!(err.contains("could not initialise ONNX Runtime"), "{err}");
    // No CUDA here (the message says why: no driver, or a CPU-only library;
    // with `scripts/fetch-onnxruntime.sh --gpu` run, the CUDA build is the
    // one loaded).  `cuda:N` names a device.
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        eprintln!("skipped the no-CUDA start failures: this machine has an NVIDIA driver");
    } else {
        for device in ["cuda", "cuda:1"] {
            let (err, kind) = start_failure(&["--device", device]);
            if err.contains("cannot be read by this process") {
                // A checkout under a directory closed to others (a 0700
                // temporary directory): the sandboxed host never gets to
                // CUDA (`a_library_closed_to_the_sandbox_user_is_named`).
                eprintln!(
                    "skipped the no-CUDA start failures: the sandboxed host cannot read this checkout's ONNX Runtime ({err})"
                );
                break;
            }
            assert_eq!(kind, runtime_exit, "{err}");
            assert!(err.contains("CUDA is not available"), "{err}");
            assert!(err.contains("no NVIDIA driver"), "{err}");
        }
    }
    // With a working library, start-up gets as far as attaching.
    let (code, err) = run(&["--device", "cpu"]);
    assert_eq!(code, Some(ExitCode::Attach as i32), "{err}");
    // Bad flags are usage errors.
    let (code, _) = run(&["--intra-threads", "0"]);
    assert_eq!(code, Some(ExitCode::Usage as i32));
    let (code, _) = run(&["--device", "tpu"]);
    assert_eq!(code, Some(ExitCode::Usage as i32));
}

/// A library the sandboxed CUDA host may not read — a directory on its
/// path is closed to all but its owner — is reported as such, with the fix,
/// instead of as the loader's bare failure; the host exits with
/// `ExitCode::Runtime`.
#[test]
fn a_library_closed_to_the_sandbox_user_is_named() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only a host started as root runs as another user");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("lockstep-closed-")
        .tempdir()
        .unwrap();
    let closed = tmp.path();
    let lib_dir = closed.join("lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    let lib = lib_dir.join("libonnxruntime.so");
    std::fs::copy(common::ort_lib(), &lib).unwrap();
    std::fs::set_permissions(closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A CUDA host sees the machine's own file system (the driver needs
    // it), so the library's real path is what it must reach.
    let (err, kind) = start_failure(&["--device", "cuda", "--ort-lib", lib.to_str().unwrap()]);
    drop(tmp);
    assert_eq!(kind, ExitKind::Exited(ExitCode::Runtime as i32), "{err}");
    assert!(
        err.contains("cannot be read by this process") && err.contains("chmod o+x"),
        "{err}"
    );
}

/// Each model runs on a lane of its own: a fast model's batches are
/// answered while a slow model's batch, sent before them, still runs; a
/// model's own answers keep the order of its batches.
#[test]
fn a_fast_model_is_answered_while_a_slow_one_runs() {
    let (reaper, _deaths) = Reaper::start().unwrap();
    let mut child = spawn(&reaper, &["--device", "cpu"]);
    assert!(matches!(
        load(&mut child, "magika", "v3", "magika.onnx"),
        InferenceReply::Loaded { .. }
    ));
    assert!(matches!(
        load(&mut child, "mlp", "v1", "mlp.onnx"),
        InferenceReply::Loaded { .. }
    ));
    // Eight Magika runs of about 10 ms each, one at a time.
    let features = Tensor::new(DType::I32, vec![1, 2048], vec![0; 2048 * 4]).unwrap();
    let slow = InferenceCommand::Infer {
        batch_id: 1,
        model_id: "magika".into(),
        version: None,
        requests: (0..8)
            .map(|i| InferenceRequest {
                request_key: i,
                input_name: None,
                tensor: features.clone(),
            })
            .collect(),
        max_batch: 1,
    };
    let fast = |batch_id: u64| InferenceCommand::Infer {
        batch_id,
        model_id: "mlp".into(),
        version: None,
        requests: vec![InferenceRequest {
            request_key: 0,
            input_name: Some("input".into()),
            tensor: mlp_input(1, batch_id),
        }],
        max_batch: 1,
    };
    let ep = child.endpoint();
    for cmd in [slow, fast(2), fast(3)] {
        ep.send_msg(&Down::Inference(cmd), soon()).unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        match ep.recv_msg::<Up>(soon()).unwrap() {
            Up::Inference(InferenceReply::Results {
                batch_id, results, ..
            }) => {
                assert!(results.iter().all(|r| r.output.is_ok()), "{results:?}");
                order.push(batch_id);
            }
            other => panic!("expected results, got {other:?}"),
        }
    }
    assert_eq!(order, [2, 3, 1], "answers in the order they were ready");
}
