//! The embeddings example (`examples/embeddings.toml`) end to end, with
//! the real all-MiniLM-L6-v2 text-embedding model in the inference host:
//!
//! * two runs (2 and 1 workers) give byte-identical journals and final
//!   hashes, and `lockstep verify` re-executes each as identical;
//! * every `minilm` answer in the journal is the in-process embedding of
//!   the text the router asked about (its desks' descriptions, then its
//!   headlines in feed order), so the text went through the run unchanged;
//! * every headline reaches the desk it belongs to: the routers log each
//!   routing, the specialists each receipt, all on topic, every desk
//!   served.
//!
//! Needs `scripts/fetch-onnxruntime.sh`, `scripts/fetch-minilm.sh` and
//! `scripts/build-agents.sh`; a missing file is a failure, not a skip.

use lockstep_common::text_model::{self, TextKind};
use lockstep_supervisor::journal::{Entry, read_journal};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::{Event, InferAnswer};
use lockstep_tests::{TempDir, Watchdog, bin, root};
use shm_protocol::inference::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Ticks run.
const TICKS: u64 = 200;
/// Routers (the manifest's `count`).
const ROUTERS: u64 = 3;
/// The router's constants (agents/examples/router).
const EVERY: u64 = 8;
const SPACING: u64 = 3;
const DESKS: [&str; 4] = ["sports", "cooking", "astronomy", "finance"];

fn need(p: PathBuf, how: &str) -> PathBuf {
    assert!(p.is_file(), "{} is missing: run {how}", p.display());
    p
}

fn manifest() -> PathBuf {
    need(root().join("examples/embeddings.toml"), "git checkout")
}

struct Outcome {
    hash: String,
    journal: Vec<u8>,
    entries: Vec<Entry>,
    logs: Vec<String>,
    names: BTreeMap<String, u64>,
}

fn run(dir: &Path, name: &str, workers: usize) -> Outcome {
    let mut cfg = lockstep_tests::config(&manifest(), dir.join(name), workers);
    cfg.inference.device = "cpu".into();
    let run_dir = cfg.run_dir.clone();
    let mut run = Run::start(cfg).unwrap();
    let names = run.state().names.clone();
    let mut logs = Vec::new();
    let mut seen = BTreeSet::new();
    while run.state().tick < TICKS {
        run.tick().unwrap();
        // The live view's last lines are the agents' recent logs.
        for l in run.live_state("running").log {
            if (l.contains(": routed #") || l.contains(": desk ")) && seen.insert(l.clone()) {
                logs.push(l);
            }
        }
    }
    let sum = run.finish().unwrap();
    let path = run_dir.join("journal.lsj");
    Outcome {
        hash: sum.hash,
        journal: std::fs::read(&path).unwrap(),
        entries: read_journal(&path).unwrap().entries,
        logs,
        names,
    }
}

/// The router's texts: desk descriptions and the news feed (with each
/// headline's desk), read from the agent's source so that the test follows it.
fn router_texts() -> (Vec<String>, Vec<(String, usize)>) {
    let src = std::fs::read_to_string(root().join("agents/examples/router/src/lib.rs")).unwrap();
    // The string literals of a constant, with what follows each.
    let block = |name: &str| -> Vec<(String, String)> {
        let from = src.find(&format!("pub const {name}")).unwrap();
        let body = &src[from..from + src[from..].find("];").unwrap()];
        let parts: Vec<&str> = body.split('"').collect();
        (1..parts.len())
            .step_by(2)
            .map(|i| {
                (
                    parts[i].to_owned(),
                    parts.get(i + 1).copied().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    // DESKS: name, description, name, description, …
    let descriptions: Vec<String> = block("DESKS")
        .into_iter()
        .skip(1)
        .step_by(2)
        .map(|(s, _)| s)
        .collect();
    let news: Vec<(String, usize)> = block("NEWS")
        .into_iter()
        .map(|(text, after)| {
            let digits: String = after
                .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            (text, digits.parse().unwrap())
        })
        .collect();
    assert_eq!(descriptions.len(), DESKS.len(), "{descriptions:?}");
    assert!(descriptions[0].starts_with("Sport:"), "{descriptions:?}");
    assert_eq!(news.len(), 24, "{news:?}");
    (descriptions, news)
}

fn answer_hash(a: &InferAnswer) -> [u8; 32] {
    *blake3::hash(&shm_protocol::codec::encode(a).unwrap()).as_bytes()
}

/// `lockstep verify <dir>`'s report (it must say identical), without its
/// wall-clock time.
fn verify(dir: &Path) -> String {
    let out = Command::new(bin("lockstep"))
        .arg("verify")
        .arg(dir)
        .env("LOCKSTEP_INFERENCE_DEVICE", "cpu")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.starts_with("identical"),
        "lockstep verify {}: {text}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.rsplit_once(", ")
        .map_or(text.clone(), |(head, _)| head.to_owned())
}

#[test]
fn embeddings_example_routes_by_meaning_reproducibly() {
    let _w = Watchdog::new("embeddings_run", Duration::from_secs(600));
    for a in ["router", "specialist"] {
        need(
            root().join("target/agents").join(format!("{a}.wasm")),
            "scripts/build-agents.sh",
        );
    }
    let m = Manifest::load(&manifest()).unwrap_or_else(|e| panic!("{e}"));
    let def = m.models.iter().find(|d| d.id == "minilm").expect("minilm");
    let text = def.text.as_ref().expect("minilm is a text model");
    need(def.path.clone(), "scripts/fetch-minilm.sh");
    need(text.tokenizer.clone(), "scripts/fetch-minilm.sh");
    let latency = u64::from(def.latency_ticks);

    let tmp = TempDir::new("embeddings-run");
    let a = run(tmp.path(), "a", 2);
    let b = run(tmp.path(), "b", 1);
    assert_eq!(a.hash, b.hash, "final hash, 2 vs 1 workers");
    assert!(
        a.journal == b.journal,
        "journals differ between 2 and 1 workers: {:?}",
        lockstep_tests::journal_diff(
            &tmp.path().join("a/journal.lsj"),
            &tmp.path().join("b/journal.lsj")
        )
    );
    assert_eq!(verify(&tmp.path().join("a")), verify(&tmp.path().join("b")));

    // No fault, no refused request.
    for e in &a.entries {
        if let Entry::Event { event, .. } = e {
            assert!(
                !matches!(event, Event::Fault { .. } | Event::InferRefused { .. }),
                "{event:?}"
            );
        }
    }

    // Every answer is the in-process embedding of the text asked about:
    // requests 1-4 are the desks, then one headline every EVERY ticks.
    let (descriptions, news) = router_texts();
    let mut reg = lockstep_tests::reference_registry(&[]);
    let blob = text_model::encode(
        TextKind::Embedding,
        &std::fs::read(&text.tokenizer).unwrap(),
        &std::fs::read(&def.path).unwrap(),
    );
    let hex = blake3::hash(&blob).to_hex().to_string();
    reg.load_model_bytes("minilm", &def.version, &def.path, &blob, &hex)
        .unwrap();
    let mut embed = |s: &str| {
        let t = Tensor::new(DType::U8, vec![s.len() as u64], s.as_bytes().to_vec()).unwrap();
        reg.infer("minilm", None, None, &t).unwrap().encode_abi()
    };
    let routers: Vec<u64> = (0..ROUTERS)
        .map(|i| a.names[&format!("router-{i}")])
        .collect();
    let mut answered = 0;
    for e in &a.entries {
        let Entry::Inference { tick, answers } = e else {
            continue;
        };
        for a in answers {
            let (agent, request, model, hash) = (&a.agent, &a.request_id, &a.model, &a.hash);
            assert!(model.starts_with("minilm"), "{model}");
            assert!(routers.contains(agent), "agent {agent} asked");
            let text = match *request {
                r @ 1..=4 => descriptions[r as usize - 1].clone(),
                r => news[((agent + r - 5) % news.len() as u64) as usize]
                    .0
                    .clone(),
            };
            let want = answer_hash(&InferAnswer {
                agent: *agent,
                request_id: *request,
                result: Ok(embed(&text)),
            });
            assert_eq!(
                hash, &want,
                "router {agent} request {request} (tick {tick}): not the embedding of {text:?}"
            );
            answered += 1;
        }
    }
    // Each router: 4 desks at tick 1, then a headline at each of its phase
    // ticks, answered `latency` ticks after the question.
    let expected: usize = routers
        .iter()
        .map(|&id| {
            let asked = (1..=TICKS).filter(|t| t % EVERY == id * SPACING % EVERY);
            4 * usize::from(latency <= TICKS) + asked.filter(|t| t + latency - 1 <= TICKS).count()
        })
        .sum();
    assert_eq!(answered, expected, "answers in the journal");

    // Routing: every headline went to its own desk, and arrived there.
    let mut routed = 0;
    for l in a.logs.iter().filter(|l| l.contains(": routed #")) {
        let (_, tail) = l.rsplit_once("\" to ").unwrap();
        let desk = tail.split(' ').next().unwrap();
        let expected = tail.rsplit_once(", expected ").unwrap().1;
        assert_eq!(desk, expected, "{l}");
        routed += 1;
    }
    let mut per_desk = BTreeMap::new();
    for l in a.logs.iter().filter(|l| l.contains(": desk ")) {
        assert!(l.ends_with(" on topic"), "{l}");
        let desk = l
            .split(": desk ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        *per_desk.entry(desk.to_owned()).or_insert(0) += 1;
    }
    eprintln!("embeddings: {answered} answers, {routed} routed, per desk {per_desk:?}");
    assert!(routed >= 40, "only {routed} texts routed in {TICKS} ticks");
    assert_eq!(per_desk.values().sum::<usize>(), routed, "{per_desk:?}");
    for d in DESKS {
        assert!(
            per_desk.get(d).copied().unwrap_or(0) >= 5,
            "desk {d}: {per_desk:?}"
        );
    }
}
