//! The demo manifest (`examples/demo.toml`) end to end, with the real Magika
//! file-type model from PyPI in the inference host:
//!
//! * `classifier` agents build Magika's byte features for their embedded
//!   snippets (`agents/examples/classifier/corpus/`) and ask `magika`; every
//!   answer in the journal is the in-process result of this file's
//!   `lockstep_inference_host::magika::features` for the
//!   expected snippet — so the agent's feature extraction is byte-identical —
//!   and classifies its snippet as expected;
//! * the run has no fault, and two runs (2 and 1 workers) give identical
//!   journals;
//! * the classifiers log their verdicts, and the `archivist` tallies them.
//!
//! Needs `scripts/fetch-onnxruntime.sh`, `scripts/gen-models.sh` and
//! `scripts/build-agents.sh` (scripts/test.sh runs them); a missing model or
//! agent is a failure, not a skip.

use lockstep_inference_host::ModelRegistry;
use lockstep_supervisor::journal::{Entry, read_journal};
use lockstep_supervisor::manifest::Manifest;
use lockstep_supervisor::run::Run;
use lockstep_supervisor::sim::{Event, InferAnswer};
use lockstep_tests::{TempDir, Watchdog, root};
use shm_protocol::inference::Tensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::Duration;

/// Ticks run (enough for every classifier to ask and be answered several
/// times; the manifest runs 2000).
const TICKS: u64 = 1200;
/// The classifier asks every this many ticks (agents/examples/classifier).
const EVERY: u64 = 256;
/// Ticks between consecutive classifiers' requests (the agent's `SPACING`).
const SPACING: u64 = 64;
/// The demo's classifier instances.
const CLASSIFIERS: u64 = 4;
/// The archivist summarises every this many ticks (agents/examples/archivist).
const ARCHIVE_EVERY: u64 = 50;

fn need(p: PathBuf, how: &str) -> PathBuf {
    assert!(
        p.is_file(),
        "{} is missing: run {how} (scripts/test.sh runs it)",
        p.display()
    );
    p
}

fn demo_manifest() -> PathBuf {
    need(root().join("examples/demo.toml"), "git checkout")
}

fn magika_model() -> PathBuf {
    need(
        root().join(".deps/models/magika.onnx"),
        "scripts/gen-models.sh",
    )
}

/// Fails clearly when something the demo needs is missing.
fn check_prerequisites() {
    magika_model();
    need(
        root().join(".deps/models/magika.config.json"),
        "scripts/gen-models.sh",
    );
    for name in ["classifier", "archivist"] {
        need(
            root().join("target/agents").join(format!("{name}.wasm")),
            "scripts/build-agents.sh",
        );
    }
    let m = Manifest::load(&demo_manifest()).unwrap_or_else(|e| panic!("{e}"));
    for a in &m.agents {
        need(a.module.clone(), "scripts/build-agents.sh");
    }
    for model in &m.models {
        need(model.path.clone(), "scripts/gen-models.sh");
    }
    assert!(
        m.models.iter().any(|d| d.id == "magika"),
        "examples/demo.toml declares no `magika` model"
    );
}

/// The classifier's corpus: `(file name, expected label, bytes)`, sorted by
/// name (the agent's `CORPUS` order; its unit test checks that).
fn corpus() -> Vec<(String, String, Vec<u8>)> {
    let dir = root().join("agents/examples/classifier/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            let label = name.split('.').next().unwrap().to_owned();
            (name, label, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// In-process reference: the host's library on the CPU with `magika` loaded
/// (one ONNX Runtime environment per process, so one registry for the tests).
struct Reference {
    reg: MutexGuard<'static, ModelRegistry>,
    labels: Vec<String>,
}

impl Reference {
    fn new() -> Self {
        let reg =
            lockstep_tests::reference_registry(&[("magika", "standard_v3_3", magika_model())]);
        let labels = lockstep_inference_host::magika::labels(
            &std::fs::read_to_string(need(
                root().join(".deps/models/magika.config.json"),
                "scripts/gen-models.sh",
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(labels.len(), 214);
        Self { reg, labels }
    }

    /// The model's answer (ABI tensor) for `content`, and its best label and score.
    fn classify(&mut self, content: &[u8]) -> (Vec<u8>, String, f32) {
        let input = Tensor::from_slice(
            vec![1, 2048],
            &lockstep_inference_host::magika::features(content),
        )
        .unwrap();
        let out = self.reg.infer("magika", None, None, &input).unwrap();
        let scores = out.to_vec::<f32>().unwrap();
        assert_eq!(scores.len(), self.labels.len());
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .unwrap();
        (out.encode_abi(), self.labels[best].clone(), scores[best])
    }
}

fn answer_hash(a: &InferAnswer) -> [u8; 32] {
    *blake3::hash(&shm_protocol::codec::encode(a).unwrap()).as_bytes()
}

struct Outcome {
    hash: String,
    /// The run summary's message count.
    messages: u64,
    journal: Vec<u8>,
    entries: Vec<Entry>,
    /// Classifier and archivist log lines seen on the live view.
    logs: BTreeSet<String>,
    /// Instance name → agent id.
    names: BTreeMap<String, u64>,
}

fn run_demo(dir: &Path, name: &str, workers: usize) -> Outcome {
    let mut cfg = lockstep_tests::config(&demo_manifest(), dir.join(name), workers);
    // Bit-reproducible answers, comparable with the in-process reference.
    cfg.inference.device = "cpu".into();
    let run_dir = cfg.run_dir.clone();
    let mut run = Run::start(cfg).unwrap();
    let names = run.state().names.clone();
    let mut logs = BTreeSet::new();
    while run.state().tick < TICKS {
        run.tick().unwrap();
        // The live view's last lines are the agents' recent logs.
        logs.extend(
            run.live_state("running").log.into_iter().filter(|l| {
                l.starts_with("[INFO] classifier-") || l.starts_with("[INFO] archivist:")
            }),
        );
    }
    let sum = run.finish().unwrap();
    let path = run_dir.join("journal.lsj");
    Outcome {
        hash: sum.hash,
        messages: sum.messages,
        journal: std::fs::read(&path).unwrap(),
        entries: read_journal(&path).unwrap().entries,
        logs,
        names,
    }
}

/// `(tick, agent, request id, answer hash)` of every `magika` answer.
fn magika_answers(entries: &[Entry]) -> Vec<(u64, u64, u64, [u8; 32])> {
    let mut out = Vec::new();
    for e in entries {
        if let Entry::Inference { tick, answers } = e {
            for a in answers {
                if a.model.starts_with("magika") {
                    out.push((*tick, a.agent, a.request_id, a.hash));
                }
            }
        }
    }
    out
}

/// Every corpus snippet, through the agent-independent feature extraction
/// and the real model in process, gets its expected label.
#[test]
fn corpus_snippets_classify_as_expected() {
    let _w = Watchdog::new("demo_corpus", Duration::from_secs(120));
    check_prerequisites();
    let corpus = corpus();
    assert!(corpus.len() >= 8, "{} snippets", corpus.len());
    let mut reference = Reference::new();
    let mut wrong = Vec::new();
    for (name, label, content) in &corpus {
        let (_, got, score) = reference.classify(content);
        eprintln!("corpus: {name}: {got} ({score:.3})");
        if got != *label {
            wrong.push(format!("{name} -> {got} ({score:.3})"));
        }
    }
    assert!(wrong.is_empty(), "misclassified snippets: {wrong:?}");
}

/// The demo for [`TICKS`] ticks, twice: no fault, identical journals, every
/// classifier request answered with the reference result for its snippet.
#[test]
fn demo_classifies_files_reproducibly() {
    let _w = Watchdog::new("demo_run", Duration::from_secs(400));
    check_prerequisites();
    let tmp = TempDir::new("demo-run");
    let a = run_demo(tmp.path(), "a", 2);
    let b = run_demo(tmp.path(), "b", 1);
    assert_eq!(a.hash, b.hash, "final hash, 2 vs 1 workers");
    // The tick records count every delivery (inference answers included),
    // so they add up to the summary's count, which `lockstep inspect` shows.
    let recorded: u64 = a
        .entries
        .iter()
        .map(|e| match e {
            Entry::Tick { messages, .. } => *messages,
            _ => 0,
        })
        .sum();
    assert_eq!(recorded, a.messages, "messages in tick records vs summary");
    assert!(
        a.journal == b.journal,
        "journals differ between 2 and 1 workers: {:?}",
        lockstep_tests::journal_diff(
            &tmp.path().join("a/journal.lsj"),
            &tmp.path().join("b/journal.lsj")
        )
    );

    // No fault, no refused inference.
    let events: Vec<&Event> = a
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Event { event, .. } => Some(event),
            _ => None,
        })
        .collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Fault { .. } | Event::InferRefused { .. })),
        "{events:?}"
    );
    for e in &a.entries {
        if let Entry::Tick { tick, faults, .. } = e {
            assert_eq!(*faults, 0, "faults at tick {tick}");
        }
    }

    // One answer per request: classifier `id` asks at ticks
    // t ≡ id · SPACING (mod EVERY), its n-th request (from 1) about snippet (id + n - 1) mod len;
    // the answer is journaled after the barrier of tick t + latency − 1
    // (the model's `latency_ticks`).
    let latency = Manifest::load(&demo_manifest())
        .unwrap()
        .models
        .iter()
        .find(|m| m.id == "magika")
        .map_or(1, |m| u64::from(m.latency_ticks));
    let corpus = corpus();
    let ids: Vec<u64> = (0..CLASSIFIERS)
        .map(|i| a.names[&format!("classifier-{i}")])
        .collect();
    let got = magika_answers(&a.entries);
    let mut reference = Reference::new();
    let mut results: Vec<(u64, String, bool)> = Vec::new();
    for &id in &ids {
        let ticks: Vec<u64> = (1..=TICKS)
            .filter(|t| t % EVERY == id * SPACING % EVERY && t + latency - 1 <= TICKS)
            .map(|t| t + latency - 1)
            .collect();
        let mine: Vec<_> = got.iter().filter(|(_, agent, _, _)| *agent == id).collect();
        assert_eq!(
            mine.iter().map(|(t, _, r, _)| (*t, *r)).collect::<Vec<_>>(),
            ticks
                .iter()
                .zip(1u64..)
                .map(|(&t, r)| (t, r))
                .collect::<Vec<_>>(),
            "classifier {id}: (tick, request id) of its answers"
        );
        for (tick, _, request, hash) in mine {
            let (name, label, content) =
                &corpus[((id + request - 1) % corpus.len() as u64) as usize];
            let (out, best, _) = reference.classify(content);
            let expect = answer_hash(&InferAnswer {
                agent: id,
                request_id: *request,
                result: Ok(out),
            });
            assert_eq!(
                hash, &expect,
                "classifier {id} request {request} (tick {tick}, {name}): the answer is not the \
                 reference result for the snippet's features"
            );
            results.push((*tick, name.clone(), best == *label));
        }
    }
    let correct = results.iter().filter(|r| r.2).count();
    eprintln!(
        "demo: {} classifications in {TICKS} ticks, {correct} as expected",
        results.len()
    );
    assert_eq!(correct, results.len(), "{results:?}");

    // The agents received the answers: every classifier logged verdicts,
    // all as expected.
    for i in 0..CLASSIFIERS {
        let prefix = format!("[INFO] classifier-{i}: classified ");
        let lines: Vec<&String> = a.logs.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert!(!lines.is_empty(), "classifier-{i} logged no verdict");
        for l in lines {
            assert!(!l.contains(", expected "), "{l}");
        }
    }
    // The archivist's summary at tick T counts the verdicts published up to
    // T - 1, i.e. the answers journaled at ticks ≤ T - 2.
    let last = TICKS / ARCHIVE_EVERY * ARCHIVE_EVERY;
    let published = results.iter().filter(|r| r.0 + 2 <= last).count();
    let want =
        format!("[INFO] archivist: archive @{last}: {published} files ({published} as expected)");
    assert!(
        a.logs.iter().any(|l| l.starts_with(&want)),
        "no `{want}` in {:?}",
        a.logs
            .iter()
            .filter(|l| l.contains("archivist"))
            .collect::<Vec<_>>()
    );
}
