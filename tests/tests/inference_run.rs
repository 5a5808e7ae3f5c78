//! Inference in real runs: the supervisor with real workers and the real
//! `lockstep-inference-host`, `inferrer` agents asking the `mlp` model.
//!
//! * same manifest twice, and with 1 and 2 workers → identical journals and
//!   final hashes, every answer a kind-3 result;
//! * every answer equals an in-process computation with the host's library;
//! * SIGKILL of the host (between ticks, and while it holds a batch) → the
//!   run goes on with the crash-free answers and hash;
//! * a request for an unknown model → an error answer, no hang;
//! * a journaled `SwapModel` switches versions at its tick, reproducibly.
//!
//! Needs `scripts/fetch-onnxruntime.sh`, `scripts/gen-models.sh` and
//! `scripts/build-agents.sh` (scripts/test.sh runs them).

use lockstep_inference_host::ModelRegistry;
use lockstep_supervisor::inference::{InferenceConfig, InferenceService};
use lockstep_supervisor::journal::{Entry, read_journal};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::run::{Run, RunConfig};
use lockstep_supervisor::sim::{InferAnswer, InferRequest, Input, InputOutcome};
use lockstep_tests::{TempDir, Watchdog, bin};
use shm_protocol::inference::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::Duration;

const SEED: u64 = 7;
/// The inferrer asks every this many ticks (agents/examples/inferrer).
const EVERY: u64 = 5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn need(p: PathBuf, how: &str) -> String {
    assert!(p.is_file(), "{} is missing: run {how}", p.display());
    p.display().to_string()
}

fn agent(name: &str) -> String {
    need(
        repo().join("target/agents").join(format!("{name}.wasm")),
        "scripts/build-agents.sh",
    )
}

fn model(name: &str) -> String {
    need(
        repo().join(".deps/models").join(name),
        "scripts/gen-models.sh",
    )
}

/// A manifest with `inferrers` inferrer agents and `models` (id, version,
/// file) entries.
fn manifest_text(inferrers: u64, models: &[(&str, &str, &str)], max_batch: u32) -> String {
    let mut s = format!(
        "[run]\nseed = {SEED}\nticks = 30\nworkers = 2\n\n\
         [[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = {inferrers}\n\n\
         [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 2\n",
        agent("inferrer"),
        agent("counter"),
    );
    for (id, version, file) in models {
        s.push_str(&format!(
            "\n[[models]]\nid = \"{id}\"\nversion = \"{version}\"\npath = \"{}\"\nmax_batch = {max_batch}\n",
            model(file)
        ));
    }
    s
}

fn config(dir: &Path, name: &str, text: &str, workers: usize) -> RunConfig {
    let mpath = dir.join(format!("{name}.toml"));
    std::fs::write(&mpath, text).unwrap();
    let manifest = Manifest::load(&mpath).unwrap();
    let mut cfg = RunConfig::new(manifest, text.to_owned(), dir.join(name)).unwrap();
    cfg.worker_bin = bin("lockstep-worker");
    cfg.inference.host_bin = Some(bin("lockstep-inference-host"));
    cfg.inference.device = "cpu".into();
    cfg.workers = workers;
    cfg.module_cache = None;
    cfg.control_socket = false;
    cfg.board = false;
    cfg
}

struct Outcome {
    hash: String,
    journal: Vec<u8>,
    entries: Vec<Entry>,
    logs: Vec<String>,
    restarts: u64,
}

/// Runs `ticks` ticks; `at(run, tick_just_done)` may act between ticks.
fn run_with(
    dir: &Path,
    name: &str,
    text: &str,
    workers: usize,
    ticks: u64,
    at: impl FnMut(&mut Run, u64),
) -> Outcome {
    run_cfg(config(dir, name, text, workers), ticks, at)
}

fn run_cfg(cfg: RunConfig, ticks: u64, mut at: impl FnMut(&mut Run, u64)) -> Outcome {
    let dir = cfg.run_dir.clone();
    let mut run = Run::start(cfg).unwrap();
    let mut logs = Vec::new();
    for t in 1..=ticks {
        run.tick().unwrap();
        // The last lines of the live view carry the agents' recent logs.
        logs.extend(run.live_state("running").log);
        at(&mut run, t);
    }
    let restarts = run.inference_restarts();
    let sum = run.finish().unwrap();
    let path = dir.join("journal.lsj");
    Outcome {
        hash: sum.hash,
        journal: std::fs::read(&path).unwrap(),
        entries: read_journal(&path).unwrap().entries,
        logs,
        restarts,
    }
}

fn run_plain(dir: &Path, name: &str, text: &str, workers: usize, ticks: u64) -> Outcome {
    run_with(dir, name, text, workers, ticks, |_, _| {})
}

/// `(tick, agent, request id, model, answer hash)` of every answer.
fn answers(entries: &[Entry]) -> Vec<(u64, u64, u64, String, [u8; 32])> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Inference { tick, answers } => Some(
                answers
                    .iter()
                    .map(|a| (*tick, a.agent, a.request_id, a.model.clone(), a.hash))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The inferrer's input at `tick`: 16 values of its random stream
/// (`random_f32` of the agent SDK over the worker's stream, docs/abi.md).
fn inferrer_input(agent: u64, tick: u64) -> Tensor {
    let mut h = blake3::Hasher::new();
    h.update(&SEED.to_le_bytes());
    h.update(&agent.to_le_bytes());
    h.update(&tick.to_le_bytes());
    let d = h.finalize();
    let base = u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap());
    let values: Vec<f32> = (0..16u64)
        .map(|n| {
            let r = lockstep_tests::stream::splitmix(base.wrapping_add(n));
            (r >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
        })
        .collect();
    Tensor::from_slice(vec![1, 16], &values).unwrap()
}

/// In-process reference: the host's own library on the CPU, with `mlp` v1
/// and v2 loaded (one ONNX Runtime environment per process, so one registry
/// shared by the tests).
struct Reference {
    reg: MutexGuard<'static, ModelRegistry>,
}

impl Reference {
    fn new() -> Self {
        let models: Vec<(&str, &str, PathBuf)> = MLP_V1_V2
            .iter()
            .map(|(id, version, file)| (*id, *version, PathBuf::from(model(file))))
            .collect();
        Self {
            reg: lockstep_tests::reference_registry(&models),
        }
    }

    /// The output of `id@version` for `input`, as an ABI tensor.
    fn output(&mut self, id: &str, version: &str, input: &Tensor) -> Vec<u8> {
        self.reg
            .infer(id, Some(version), None, input)
            .unwrap()
            .encode_abi()
    }

    /// The journal hash of the answer to `input` on `id@version`.
    fn answer_hash(
        &mut self,
        agent: u64,
        request: u64,
        id: &str,
        version: &str,
        input: &Tensor,
    ) -> [u8; 32] {
        let out = self.output(id, version, input);
        answer_hash(&InferAnswer {
            agent,
            request_id: request,
            result: Ok(out),
        })
    }
}

fn answer_hash(a: &InferAnswer) -> [u8; 32] {
    *blake3::hash(&shm_protocol::codec::encode(a).unwrap()).as_bytes()
}

const MLP: &[(&str, &str, &str)] = &[("mlp", "v1", "mlp.onnx")];
const MLP_V1_V2: &[(&str, &str, &str)] = &[("mlp", "v1", "mlp.onnx"), ("mlp", "v2", "mlp_v2.onnx")];

/// (a) + (b): identical journals and hashes across reruns and worker
/// counts; every answer is the in-process result.
#[test]
fn inference_runs_are_reproducible_and_correct() {
    let _w = Watchdog::new("inference_reproducible", Duration::from_secs(240));
    let tmp = TempDir::new("infer-repro");
    let text = manifest_text(4, MLP, 3);
    let ticks = 26;
    let a = run_plain(tmp.path(), "a", &text, 2, ticks);
    let b = run_plain(tmp.path(), "b", &text, 2, ticks);
    let c = run_plain(tmp.path(), "c", &text, 1, ticks);
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.hash, c.hash, "1 vs 2 workers");
    assert!(a.journal == b.journal, "journals differ between reruns");
    assert!(
        a.journal == c.journal,
        "journals differ between 1 and 2 workers"
    );

    // Requests at ticks 5, 10, 15, 20, 25 from the 4 inferrers (ids 1–4).
    let got = answers(&a.entries);
    assert_eq!(got.len(), 5 * 4, "{got:?}");
    let mut reference = Reference::new();
    for (tick, agent, request, model, hash) in &got {
        assert_eq!(tick % EVERY, 0);
        assert!((1..=4).contains(agent));
        assert_eq!(model, "mlp");
        let expect = reference.answer_hash(
            *agent,
            *request,
            "mlp",
            "v1",
            &inferrer_input(*agent, *tick),
        );
        assert_eq!(
            hash, &expect,
            "answer to agent {agent} request {request} (tick {tick}) is not the in-process result"
        );
    }
    // The agents received kind-3 results (they log the argmax of each).
    assert!(
        a.logs.iter().any(|l| l.contains("argmax")),
        "no inferrer logged a result: {:?}",
        a.logs
    );
    assert!(!a.logs.iter().any(|l| l.contains("failed")), "{:?}", a.logs);
    assert_eq!(a.restarts, 0);
}

/// (c): SIGKILL the host between ticks and while it holds a batch, and let
/// it hang on one; the run continues and ends with the crash-free hash and
/// journal.
#[test]
fn killed_inference_host_is_restarted_transparently() {
    let _w = Watchdog::new("inference_host_kill", Duration::from_secs(240));
    let tmp = TempDir::new("infer-kill");
    let text = manifest_text(3, MLP, 32);
    let ticks = 22;
    let clean = run_plain(tmp.path(), "clean", &text, 2, ticks);
    let mut killed_pids = Vec::new();
    let mut cfg = config(tmp.path(), "crashed", &text, 2);
    cfg.inference.batch_timeout = Duration::from_secs(3);
    let crashed = run_cfg(cfg, ticks, |run, t| {
        let pid = run.inference_host_pid().expect("a host is running") as i32;
        let pid = nix::unistd::Pid::from_raw(pid);
        match t {
            // Found dead before tick 10's batch.
            7 => {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
                killed_pids.push(pid);
            }
            // Dies while holding tick 15's batch: stopped now, killed while
            // the supervisor waits for its answer.
            14 => {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(700));
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                });
                killed_pids.push(pid);
            }
            // Hangs (stopped for good) on tick 20's batch: replaced after
            // the batch timeout.
            19 => {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
                killed_pids.push(pid);
            }
            _ => {}
        }
    });
    assert_eq!(killed_pids.len(), 3);
    for pid in &killed_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "host {pid} left behind"
        );
    }
    assert_eq!(crashed.restarts, 3, "one restart per kill or hang");
    assert_eq!(crashed.hash, clean.hash);
    assert!(
        crashed.journal == clean.journal,
        "journal differs after host crashes"
    );
    let got = answers(&crashed.entries);
    assert_eq!(got.len(), 4 * 3);
    let mut reference = Reference::new();
    for (tick, agent, request, _, hash) in &got {
        let expect = reference.answer_hash(
            *agent,
            *request,
            "mlp",
            "v1",
            &inferrer_input(*agent, *tick),
        );
        assert_eq!(hash, &expect, "tick {tick} agent {agent}");
    }
}

/// (d): a model nobody declared: an error answer (kind 4), no host, no hang.
#[test]
fn unknown_model_gets_an_error_answer() {
    let _w = Watchdog::new("inference_unknown_model", Duration::from_secs(120));
    let tmp = TempDir::new("infer-unknown");
    let text = manifest_text(2, &[], 32);
    let mut host = None;
    let out = run_with(tmp.path(), "none", &text, 1, 11, |run, _| {
        host = host.or(run.inference_host_pid());
    });
    assert_eq!(host, None, "no models declared: no inference host");
    let got = answers(&out.entries);
    assert_eq!(got.len(), 2 * 2);
    for (_, agent, request, model, hash) in &got {
        assert_eq!(model, "mlp");
        let expect = answer_hash(&InferAnswer {
            agent: *agent,
            request_id: *request,
            result: Err("unknown model `mlp`".into()),
        });
        assert_eq!(hash, &expect);
    }
    assert!(
        out.logs
            .iter()
            .any(|l| l.contains("failed: unknown model `mlp`")),
        "{:?}",
        out.logs
    );
}

/// The service on its own: version resolution, malformed inputs, unknown
/// versions, the built-in echo model, all against in-process results.
#[test]
fn service_resolves_versions_and_reports_bad_requests() {
    let _w = Watchdog::new("inference_service", Duration::from_secs(120));
    let tmp = TempDir::new("infer-service");
    let text = manifest_text(1, MLP_V1_V2, 2);
    let mpath = tmp.path().join("m.toml");
    std::fs::write(&mpath, &text).unwrap();
    let manifest = Manifest::load(&mpath).unwrap();
    let cfg = InferenceConfig {
        host_bin: Some(bin("lockstep-inference-host")),
        device: "cpu".into(),
        ..InferenceConfig::default()
    };
    let mut svc = InferenceService::start(&manifest.models, cfg.clone()).unwrap();
    assert!(svc.host_pid().is_some());
    assert_eq!(svc.device(), "cpu");
    let x = inferrer_input(1, 5).encode_abi();
    let req =
        |agent: u64, model: &str, input: &[u8]| InferRequest::new(agent, 1, model, input.to_vec());
    let queue = vec![
        req(1, "mlp", &x),
        req(2, "mlp@v1", &x),
        req(3, "mlp@v2", &x),
        req(4, "mlp@v9", &x),
        req(5, "nope", &x),
        req(6, "mlp", b"\x09garbage"),
        req(7, "echo", b"anything"),
        req(
            8,
            "mlp",
            &Tensor::from_slice(vec![1, 3], &[1i64, 2, 3])
                .unwrap()
                .encode_abi(),
        ),
        req(9, "mlp", &x),
    ];
    let mut current = BTreeMap::new();
    current.insert("mlp".to_owned(), "v2".to_owned());
    let (answers, tel) = svc.infer(3, &queue, &current);
    assert_eq!(answers.len(), queue.len());
    let t = inferrer_input(1, 5);
    let (v1, v2) = {
        let mut reference = Reference::new();
        (
            reference.output("mlp", "v1", &t),
            reference.output("mlp", "v2", &t),
        )
    };
    assert_ne!(v1, v2, "the two versions must differ for this test");
    assert_eq!(answers[0].result, Ok(v2.clone()), "current version is v2");
    assert_eq!(answers[1].result, Ok(v1.clone()));
    assert_eq!(answers[2].result, Ok(v2.clone()));
    let err = |i: usize| answers[i].result.clone().unwrap_err();
    assert!(err(3).contains("has no version `v9`"), "{}", err(3));
    assert_eq!(err(4), "unknown model `nope`");
    assert!(err(5).contains("malformed input tensor"), "{}", err(5));
    assert_eq!(answers[6].result, Ok(b"anything".to_vec()));
    assert!(err(7).contains("f32"), "{}", err(7));
    assert_eq!(answers[8].result, Ok(v2.clone()));
    for (a, q) in answers.iter().zip(&queue) {
        assert_eq!((a.agent, a.request_id), (q.agent, q.request_id));
    }
    // One record per command (v1, v2) plus the built-in echo.
    assert_eq!(tel.len(), 3, "{tel:?}");
    assert!(tel.iter().any(|t| t.model == "mlp"
        && t.version == "v2"
        && t.requests == 4
        && t.rss_bytes > 0
        && t.device == "cpu"));
    // Without a current-version entry, the first declared version is used.
    let (answers, _) = svc.infer(4, &queue[..1], &BTreeMap::new());
    assert_eq!(answers[0].result, Ok(v1));
    svc.shutdown();
    assert_eq!(svc.host_pid(), None);

    // A model that cannot load is a start-up error naming it and its file.
    let broken = manifest_text(1, &[("bad", "1", "broken.onnx")], 2);
    std::fs::write(&mpath, &broken).unwrap();
    let manifest = Manifest::load(&mpath).unwrap();
    let e = InferenceService::start(&manifest.models, cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad@1") && e.contains("broken.onnx"), "{e}");
}

/// A host that dies and cannot be restarted: after `max_attempts` the
/// batch is answered with errors (no hang, no supervisor error), and the
/// service tries again at the next batch.
#[test]
fn host_that_cannot_restart_gives_error_answers() {
    use std::os::unix::fs::PermissionsExt;
    let _w = Watchdog::new("inference_no_restart", Duration::from_secs(120));
    let tmp = TempDir::new("infer-norestart");
    let text = manifest_text(1, MLP, 8);
    let mpath = tmp.path().join("m.toml");
    std::fs::write(&mpath, &text).unwrap();
    let manifest = Manifest::load(&mpath).unwrap();
    // Starts the real host once; every later start fails at once.
    let marker = tmp.path().join("started");
    let script = tmp.path().join("host.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{m}' ]; then exit 1; fi\n: > '{m}'\nexec '{b}' \"$@\"\n",
            m = marker.display(),
            b = bin("lockstep-inference-host").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = InferenceConfig {
        host_bin: Some(script),
        device: "cpu".into(),
        ..InferenceConfig::default()
    };
    let mut svc = InferenceService::start(&manifest.models, cfg).unwrap();
    let x = inferrer_input(1, 5).encode_abi();
    let queue = vec![InferRequest::new(1, 1, "mlp", x)];
    let (ok, _) = svc.infer(1, &queue, &BTreeMap::new());
    assert!(ok[0].result.is_ok());
    let pid = svc.host_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for tick in 2..4 {
        let (answers, tel) = svc.infer(tick, &queue, &BTreeMap::new());
        let e = answers[0].result.clone().unwrap_err();
        assert!(e.contains("failed 3 times"), "{e}");
        assert_eq!(tel[0].errors, 1);
        assert_eq!(svc.host_pid(), None);
    }
}

/// (e): a journaled swap at tick T: v1 answers before T, v2 from T on, and
/// the same journal and hash when rerun.
#[test]
fn model_swap_applies_at_its_tick_and_reproduces() {
    let _w = Watchdog::new("inference_swap", Duration::from_secs(240));
    let tmp = TempDir::new("infer-swap");
    let text = manifest_text(2, MLP_V1_V2, 32);
    let ticks = 26;
    let swap_after = 12; // applies at tick 13: requests of ticks 15, 20, 25 use v2
    let swap = |run: &mut Run, t: u64| {
        if t == swap_after {
            let refused = run
                .input(Input::SwapModel {
                    id: "mlp".into(),
                    version: "v7".into(),
                })
                .unwrap();
            assert!(
                matches!(&refused, InputOutcome::Refused(m) if m.contains("no version `v7`")),
                "{refused:?}"
            );
            let refused = run
                .input(Input::SwapModel {
                    id: "other".into(),
                    version: "v1".into(),
                })
                .unwrap();
            assert!(matches!(refused, InputOutcome::Refused(_)));
            let ok = run
                .input(Input::SwapModel {
                    id: "mlp".into(),
                    version: "v2".into(),
                })
                .unwrap();
            assert!(matches!(ok, InputOutcome::Applied(_)), "{ok:?}");
            assert_eq!(run.state().model_versions["mlp"], "v2");
        }
    };
    let plain = run_plain(tmp.path(), "plain", &text, 2, ticks);
    let one = run_with(tmp.path(), "swap1", &text, 2, ticks, swap);
    let two = run_with(tmp.path(), "swap2", &text, 1, ticks, swap);
    assert_eq!(one.hash, two.hash, "rerun of the swap");
    assert!(
        one.journal == two.journal,
        "journals of the swap reruns differ"
    );
    assert_ne!(one.hash, plain.hash);
    assert!(one.entries.iter().any(|e| matches!(
        e,
        Entry::Input {
            tick: 13,
            input: Input::SwapModel { .. },
            outcome: InputOutcome::Applied(_)
        }
    )));

    // `lockstep verify` re-executes the journal: the swap input replays at
    // its tick and every tick hash and checkpoint is reproduced.
    match lockstep_supervisor::replay::verify(&tmp.path().join("swap1"), Some(1)).unwrap() {
        lockstep_supervisor::replay::Verdict::Identical { ticks: t, .. } => assert_eq!(t, ticks),
        other => panic!("replay of the swap run diverged: {other:?}"),
    }

    let mut reference = Reference::new();
    let before = answers(&plain.entries);
    let after = answers(&one.entries);
    assert_eq!(before.len(), after.len());
    assert_eq!(after.len(), 5 * 2);
    for (p, s) in before.iter().zip(&after) {
        let (tick, agent, request, _, hash) = s;
        assert_eq!(&p.0, tick);
        let version = if *tick > swap_after { "v2" } else { "v1" };
        let expect = reference.answer_hash(
            *agent,
            *request,
            "mlp",
            version,
            &inferrer_input(*agent, *tick),
        );
        assert_eq!(
            hash, &expect,
            "tick {tick} agent {agent} should use {version}"
        );
        if *tick > swap_after {
            assert_ne!(p.4, s.4, "tick {tick}: v2 answer equals v1's");
        } else {
            assert_eq!(p.4, s.4, "tick {tick}: before the swap");
        }
    }
}

/// `lockstep ctl <dir> swap-model` reaches the run through its socket.
#[test]
fn swap_model_over_the_control_socket() {
    let _w = Watchdog::new("inference_ctl_swap", Duration::from_secs(120));
    let tmp = TempDir::new("infer-ctl");
    let text = manifest_text(1, MLP_V1_V2, 32);
    let mut cfg = config(tmp.path(), "ctl", &text, 1);
    cfg.control_socket = true;
    let dir = cfg.run_dir.clone();
    let mut run = Run::start(cfg).unwrap();
    run.tick().unwrap();
    let client = std::thread::spawn(move || {
        let out = std::process::Command::new(bin("lockstep"))
            .arg("ctl")
            .arg(&dir)
            .args(["swap-model", "mlp", "v2"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    });
    while !client.is_finished() {
        run.tick().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (ok, answer) = client.join().unwrap();
    assert!(ok, "{answer}");
    assert!(
        answer.contains("swapped from version `v1` to `v2`"),
        "{answer}"
    );
    assert_eq!(run.state().model_versions["mlp"], "v2");
    run.finish().unwrap();
}

/// A manifest like [`manifest_text`] whose models answer `latency` ticks
/// after they are asked.
fn pipelined_text(inferrers: u64, latency: u32, checkpoint_every: u64) -> String {
    manifest_text(inferrers, MLP, 8)
        .replace(
            "max_batch = 8\n",
            &format!("max_batch = 8\nlatency_ticks = {latency}\n"),
        )
        .replace(
            "workers = 2\n",
            &format!("workers = 2\ncheckpoint_every = {checkpoint_every}\n"),
        )
}

/// `(asked, answered)` from the inferrer's logs ("request R asked at tick
/// A answered at tick B"), deduplicated.
fn ask_answer_ticks(logs: &[String]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = logs
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("inferrer: request ")? + "inferrer: request ".len()..];
            let mut w = rest.split_whitespace();
            let r = w.next()?.parse().ok()?;
            let (_, _, _, a, _, _, _, b) = (
                w.next()?,
                w.next()?,
                w.next()?,
                w.next()?.parse().ok()?,
                w.next()?,
                w.next()?,
                w.next()?,
                w.next()?.parse().ok()?,
            );
            Some((r, a, b))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Answers arrive exactly `latency_ticks` after the request, as the agent
/// itself sees it (it logs the tick it asked in and the tick it received
/// the answer in), and the journal records each answer after the barrier
/// of the tick before; every answer equals the in-process computation for
/// the tick it was asked in.
#[test]
fn answers_arrive_exactly_latency_ticks_later() {
    let _w = Watchdog::new("inference_latency", Duration::from_secs(300));
    let tmp = TempDir::new("infer-latency");
    let mut reference = Reference::new();
    for d in [1u32, 2, 4] {
        let text = pipelined_text(3, d, 1000);
        let out = run_plain(tmp.path(), &format!("d{d}"), &text, 2, 30);
        let pairs = ask_answer_ticks(&out.logs);
        assert!(pairs.len() >= 3, "d={d}: {:?}", out.logs);
        for (r, asked, answered) in &pairs {
            assert_eq!(answered - asked, u64::from(d), "d={d}: request {r}");
            assert_eq!(asked % EVERY, 0, "d={d}: request {r}");
        }
        let got = answers(&out.entries);
        // Asked at 5, 10, …, 30; journaled after the barrier of tick
        // asked + d − 1, so within 30 ticks when that is at most 30.
        let asked_ticks = (1..=30u64).filter(|t| t % EVERY == 0 && t + u64::from(d) - 1 <= 30);
        assert_eq!(got.len(), 3 * asked_ticks.count(), "d={d}");
        for (tick, agent, request, _, hash) in &got {
            let asked = tick + 1 - u64::from(d);
            assert_eq!(asked % EVERY, 0, "d={d}: journaled at tick {tick}");
            let expect = reference.answer_hash(
                *agent,
                *request,
                "mlp",
                "v1",
                &inferrer_input(*agent, asked),
            );
            assert_eq!(hash, &expect, "d={d} tick {tick} agent {agent}");
        }
    }
}

/// With answers due `d` ticks later the run is still byte-identical across
/// 1, 2 and 4 workers, and across SIGKILLs of the inference host while
/// batches are in flight (they are sent again, once, to the new host).
#[test]
fn pipelined_runs_are_identical_across_workers_and_host_kills() {
    let _w = Watchdog::new("inference_pipeline_identical", Duration::from_secs(600));
    let tmp = TempDir::new("infer-pipeline");
    for d in [1u32, 2, 4] {
        let text = pipelined_text(3, d, 1000);
        let base = run_plain(tmp.path(), &format!("d{d}-w2"), &text, 2, 26);
        for workers in [1, 4] {
            let other = run_plain(tmp.path(), &format!("d{d}-w{workers}"), &text, workers, 26);
            assert_eq!(other.hash, base.hash, "d={d} workers={workers}");
            assert!(
                other.journal == base.journal,
                "d={d} workers={workers}: journal differs"
            );
        }
        // Kill the host right after the ticks that asked (5, 15): with d > 1
        // their batches are in flight then.
        let mut kills = 0;
        let killed = run_with(tmp.path(), &format!("d{d}-kill"), &text, 2, 26, |run, t| {
            if t == 5 || t == 15 {
                let pid = run.inference_host_pid().expect("a host is running") as i32;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                kills += 1;
            }
        });
        assert_eq!(kills, 2);
        assert_eq!(killed.restarts, 2, "d={d}: one restart per kill");
        assert_eq!(killed.hash, base.hash, "d={d}");
        assert!(
            killed.journal == base.journal,
            "d={d}: journal differs after kills"
        );
    }
}

/// A checkpoint taken while batches are in flight (asked at tick 5,
/// answered at tick 9 with d = 4; checkpoint after tick 6): `verify`
/// re-executes the run from it, and a fork at tick 6 resumed to the end
/// reaches the original's final hash — the outstanding requests are part
/// of the state and sent again.
#[test]
fn replay_and_fork_with_batches_in_flight() {
    use lockstep_supervisor::replay;
    let _w = Watchdog::new("inference_pipeline_fork", Duration::from_secs(600));
    let tmp = TempDir::new("infer-pipeline-fork");
    let text = pipelined_text(3, 4, 6);
    let original = run_plain(tmp.path(), "orig", &text, 2, 30);
    let dir = tmp.path().join("orig");
    match replay::verify(&dir, Some(2)).unwrap() {
        replay::Verdict::Identical {
            ticks,
            checkpoints,
            within_tolerance,
        } => {
            assert_eq!(ticks, 30);
            assert!(checkpoints >= 5, "{checkpoints}");
            assert!(within_tolerance.is_empty(), "{within_tolerance:?}");
        }
        replay::Verdict::Diverged(d) => panic!("{d:?}"),
    }
    let fork = tmp.path().join("fork");
    replay::fork(&dir, 6, &fork, Some(1)).unwrap();
    let (mut run, from) = replay::resume(&fork, Some(2)).unwrap();
    assert_eq!(from, 6);
    assert_eq!(
        run.state().inference_in_flight(),
        3,
        "asked at 5, due after 8"
    );
    while run.state().tick < 30 {
        run.tick().unwrap();
    }
    let sum = run.finish().unwrap();
    assert_eq!(sum.hash, original.hash);
}

/// The inference host, sandboxed as in production, stays up for longer
/// than ONNX Runtime takes to start its telemetry uploader (about 9 s after
/// start-up in the official 1.32 build): that uploader opens sockets, which
/// the host's seccomp filter answers with SIGSYS, so a host that left it on
/// would be killed and restarted every few seconds.
#[test]
fn the_sandboxed_inference_host_outlives_onnx_runtimes_telemetry() {
    let _w = Watchdog::new("inference_host_telemetry", Duration::from_secs(180));
    let tmp = TempDir::new("inference-telemetry");
    let manifest = tmp.path().join("m.toml");
    std::fs::write(
        &manifest,
        manifest_text(4, &[("mlp", "v1", "mlp.onnx")], 64),
    )
    .unwrap();
    let dir = tmp.path().join("run");
    let child = std::process::Command::new(bin("lockstep"))
        .args([
            "run",
            "--forever",
            "--no-board",
            "--no-metrics",
            "--run-dir",
        ])
        .arg(&dir)
        .arg(&manifest)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = lockstep_tests::ChildGuard(Some(child));
    let t0 = std::time::Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(15));
    let out = std::process::Command::new(bin("lockstep"))
        .arg("ctl")
        .arg(&dir)
        .arg("stop")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = guard.0.take().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("[RECOVERY] inference host"),
        "the inference host was restarted:\n{stderr}"
    );
}
