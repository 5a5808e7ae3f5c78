//! Models managed while a run runs, with real processes (the `lockstep`
//! binary, its workers and its inference host):
//!
//! * `load-model` mid-run through `lockstep ctl`: the agents' requests for
//!   the model, unknown until then, get its answers from the load's tick
//!   on; `verify` says identical; a `resume` from a checkpoint after the
//!   load writes a byte-identical journal;
//! * a model ONNX Runtime cannot load is refused with `model-refused`, is
//!   not journaled, and the run goes on;
//! * after `unload-model`, the agents' requests get exactly the answers
//!   (hashes) of a run that never had the model;
//! * outside `infer`/`batch-infer` calls leave the journal byte-identical.
//!
//! Needs `scripts/build-agents.sh`, `scripts/gen-models.sh` and the
//! binaries (`cargo build --workspace --bins`).

use lockstep_supervisor::ctl::ErrorCode;
use lockstep_supervisor::journal::{Entry, JournalWriter, read_journal};
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::InferAnswer;
use lockstep_tests::{ChildGuard, TempDir, Watchdog, agent, bin, config, journal_diff, model};
use shm_protocol::inference::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Inferrers (asking `mlp` every 5 ticks) and counters, `models` appended.
fn manifest(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[run]\nseed = 9\nticks = 100\nworkers = 2\ncheckpoint_every = 10\nretain_checkpoints = 1000\n\n\
         [[agents]]\nname = \"inferrer\"\nmodule = \"{}\"\ncount = 3\n\n\
         [[agents]]\nname = \"counter\"\nmodule = \"{}\"\ncount = 2\n{extra}",
        agent("inferrer"),
        agent("counter"),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn mlp_declared() -> String {
    format!(
        "\n[[models]]\nid = \"mlp\"\nversion = \"v1\"\npath = \"{}\"\n",
        model("mlp.onnx")
    )
}

fn lockstep(args: &[&str], dir: &Path) -> Output {
    Command::new(bin("lockstep"))
        .args(&args[..1])
        .arg(dir)
        .args(&args[1..])
        .output()
        .unwrap()
}

/// `lockstep ctl DIR --json …`: the parsed answer.
fn ctl(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["ctl", "--json"];
    all.extend_from_slice(args);
    let out = lockstep(&all, dir);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.success(), v["ok"] == true, "{args:?}: {v}");
    v
}

fn wait_tick(dir: &Path, at_least: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let v = ctl(dir, &["status"]);
        let t = v["tick"].as_u64().unwrap();
        if t >= at_least {
            return t;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "stuck at tick {t}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_forever(manifest: &Path, dir: &Path) -> ChildGuard {
    let child = ChildGuard::new(
        Command::new(bin("lockstep"))
            .arg("run")
            .arg(manifest)
            .args(["--forever", "--no-board", "--run-dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The hash the journal records for an answer.
fn answer_hash(agent: u64, request_id: u64, result: Result<Vec<u8>, String>) -> [u8; 32] {
    let a = InferAnswer {
        agent,
        request_id,
        result,
    };
    *blake3::hash(&shm_protocol::codec::encode(&a).unwrap()).as_bytes()
}

fn unknown_mlp(agent: u64, request_id: u64) -> [u8; 32] {
    answer_hash(agent, request_id, Err("unknown model `mlp`".into()))
}

/// (tick, agent, request, hash) of every journaled answer.
fn answers(dir: &Path) -> Vec<(u64, u64, u64, [u8; 32])> {
    read_journal(&dir.join("journal.lsj"))
        .unwrap()
        .entries
        .iter()
        .flat_map(|e| match e {
            Entry::Inference { tick, answers } => answers
                .iter()
                .map(|a| (*tick, a.agent, a.request_id, a.hash))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_model_loaded_mid_run_answers_agents_verifies_and_resumes_byte_identical() {
    let _w = Watchdog::new("load_model", Duration::from_secs(600));
    let tmp = TempDir::new("loadmodel");
    let m = manifest(tmp.path(), "nomodels", "");
    let a = tmp.path().join("a");
    let mut child = start_forever(&m, &a);
    wait_tick(&a, 12);
    // Not loadable: refused with its code, nothing journaled, the run goes on.
    let broken = ctl(&a, &["load-model", "broken", "v1", &model("broken.onnx")]);
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["code"], ErrorCode::ModelRefused.code(), "{broken}");
    let loaded = ctl(&a, &["load-model", "mlp", "v1", &model("mlp.onnx")]);
    assert_eq!(loaded["ok"], true, "{loaded}");
    let load_tick = loaded["tick"].as_u64().unwrap();
    assert_eq!(
        loaded["data"]["blake3"],
        blake3::hash(&std::fs::read(model("mlp.onnx")).unwrap())
            .to_hex()
            .as_str()
    );
    wait_tick(&a, load_tick + 35);
    assert_eq!(ctl(&a, &["stop"])["ok"], true);
    assert!(child.child().wait().unwrap().success());

    // Before the load the agents' `mlp` is unknown; from its tick on the
    // model answers.
    let got = answers(&a);
    let (before, after): (Vec<_>, Vec<_>) = got.iter().partition(|x| x.0 < load_tick);
    assert!(!before.is_empty() && after.len() >= 6, "{got:?}");
    for (t, ag, r, h) in &before {
        assert_eq!(
            *h,
            unknown_mlp(*ag, *r),
            "tick {t}: an unknown model's error"
        );
    }
    for (t, ag, r, h) in &after {
        assert_ne!(*h, unknown_mlp(*ag, *r), "tick {t}: the model answers");
    }
    let j = read_journal(&a.join("journal.lsj")).unwrap();
    let inputs: Vec<String> = j
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Input { input, .. } => Some(input.describe()),
            _ => None,
        })
        .collect();
    assert_eq!(inputs.len(), 1, "{inputs:?}");
    assert!(inputs[0].starts_with("load-model "), "{inputs:?}");

    let verify = lockstep(&["verify"], &a);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && text.starts_with("identical"),
        "{text}"
    );

    // A crash right after the first checkpoint past the load: the journal
    // up to it, the snapshots up to it; `resume` to the same last tick.
    let (cut, last) = {
        let cut = j
            .entries
            .iter()
            .position(|e| matches!(e, Entry::Checkpoint { tick, .. } if *tick >= load_tick + 10))
            .expect("a checkpoint after the load");
        (cut, j.entries.last().unwrap().tick())
    };
    let cut_tick = j.entries[cut].tick();
    let b = tmp.path().join("b");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&a)
            .arg(&b)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(b.join("journal.lsj")).unwrap();
    let mut w = JournalWriter::create(&b.join("journal.lsj")).unwrap();
    for e in &j.entries[..=cut] {
        w.write(e).unwrap();
    }
    w.sync().unwrap();
    drop(w);
    for f in std::fs::read_dir(b.join("snapshots")).unwrap() {
        let f = f.unwrap().path();
        let tick: u64 = f
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("tick-"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if tick > cut_tick {
            std::fs::remove_file(f).unwrap();
        }
    }
    let out = lockstep(&["resume", "--until", &last.to_string()], &b);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ja, jb) = (a.join("journal.lsj"), b.join("journal.lsj"));
    assert!(
        std::fs::read(&ja).unwrap() == std::fs::read(&jb).unwrap(),
        "resumed after tick {cut_tick}: {:?}",
        journal_diff(&ja, &jb)
    );
}

#[test]
fn an_unloaded_model_answers_like_an_unknown_one() {
    let _w = Watchdog::new("unload_model", Duration::from_secs(600));
    let tmp = TempDir::new("unloadmodel");
    let with = manifest(tmp.path(), "with", &mlp_declared());
    let without = manifest(tmp.path(), "without", "");
    let probe = Tensor::from_slice(vec![1, 16], &[0.25f32; 16]).unwrap();

    let mut run = Run::start(config(&with, tmp.path().join("with"), 2)).unwrap();
    while run.state().tick < 20 {
        run.tick().unwrap();
    }
    assert!(run.infer("mlp", probe.clone()).is_ok());
    let applied = run.unload_model("mlp", None).unwrap();
    assert!(applied.text.contains("unloaded"), "{applied:?}");
    let e = run.infer("mlp", probe.clone()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnknownModel, "{e}");
    while run.state().tick < 40 {
        run.tick().unwrap();
    }
    run.finish().unwrap();

    let mut run = Run::start(config(&without, tmp.path().join("without"), 2)).unwrap();
    while run.state().tick < 40 {
        run.tick().unwrap();
    }
    let e2 = run.infer("mlp", probe).unwrap_err();
    assert_eq!(e2.code(), ErrorCode::UnknownModel);
    assert_eq!(e.to_string(), e2.to_string());
    run.finish().unwrap();

    let after_unload: Vec<_> = answers(&tmp.path().join("with"))
        .into_iter()
        .filter(|x| x.0 > 20)
        .collect();
    let unknown: Vec<_> = answers(&tmp.path().join("without"))
        .into_iter()
        .filter(|x| x.0 > 20)
        .collect();
    assert!(after_unload.len() >= 6, "{after_unload:?}");
    assert_eq!(after_unload, unknown);
    for (_, a, r, h) in &unknown {
        assert_eq!(*h, unknown_mlp(*a, *r));
    }
}

#[test]
fn outside_inference_leaves_the_journal_identical() {
    let _w = Watchdog::new("outside_infer", Duration::from_secs(600));
    let tmp = TempDir::new("outsideinfer");
    let m = manifest(tmp.path(), "m", &mlp_declared());
    const TICKS: &str = "300";
    let quiet = tmp.path().join("quiet");
    let out = Command::new(bin("lockstep"))
        .arg("run")
        .arg(&m)
        .args(["--ticks", TICKS, "--no-board", "--run-dir"])
        .arg(&quiet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let asked = tmp.path().join("asked");
    let mut child = ChildGuard::new(
        Command::new(bin("lockstep"))
            .arg("run")
            .arg(&m)
            .args(["--ticks", TICKS, "--no-board", "--run-dir"])
            .arg(&asked)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let input = r#"{"dtype":"f32","shape":[1,16],"data":[0.5,0.25,0,1,0.5,0.25,0,1,0.5,0.25,0,1,0.5,0.25,0,1]}"#;
    let mut answered = 0;
    let t0 = Instant::now();
    while child.child().try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the run does not end"
        );
        if !asked.join("control.sock").exists() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let args: Vec<&str> = if answered % 2 == 0 {
            vec!["ctl", "--json", "infer", "mlp", input]
        } else {
            vec!["ctl", "--json", "batch-infer", "mlp", input, input]
        };
        let out = lockstep(&args, &asked);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["data"]["model"], "mlp", "{v}");
            answered += 1;
        }
    }
    assert!(child.child().wait().unwrap().success());
    assert!(answered >= 3, "only {answered} outside requests answered");
    let (jq, ja) = (quiet.join("journal.lsj"), asked.join("journal.lsj"));
    assert!(
        std::fs::read(&jq).unwrap() == std::fs::read(&ja).unwrap(),
        "{answered} outside requests changed the journal: {:?}",
        journal_diff(&jq, &ja)
    );
}
