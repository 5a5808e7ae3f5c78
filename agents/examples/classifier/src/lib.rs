//! Classifies the file type of embedded text snippets with Google's Magika
//! model (`infer("magika", i32[1,2048])`, the `magika` wheel from PyPI, see
//! `scripts/gen-models.sh`) and publishes each verdict.
//!
//! Every [`EVERY`] ticks — at ticks `t` with `t % EVERY == phase(agent_id)`,
//! so agents with consecutive ids ask [`SPACING`] ticks apart — it takes the next
//! snippet of [`CORPUS`] (round-robin, starting at `agent_id % CORPUS.len()`,
//! so agents classify different files), builds Magika's input features
//! ([`features`]) and asks the model.  On the answer (kind 3) it takes the
//! argmax of the 214 scores, maps it to its [label](LABELS), compares it with
//! the snippet's expected label, logs
//! `classified <snippet> as <label> (<score>)` at info level and publishes on
//! topic `files/<label>` the payload (9 bytes, LE) `snippet index: u32`,
//! `score: f32`, `as expected: u8` (1 or 0).  Kind-4 answers are logged as
//! warnings.  Counts are kept in memory and readable through the extra
//! exports `classifier_correct`, `classifier_incorrect`, `classifier_errors`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod labels;

use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::host::LineBuf;
use lockstep_agent_sdk::tensor::{self, DType, TensorView};
use lockstep_agent_sdk::{Agent, Message, MessageKind, StepContext, export_agent, host};
use lockstep_agent_sdk::{error, info, warn};

pub use labels::LABELS;

/// Ticks between one agent's requests.
pub const EVERY: u64 = 256;
/// Ticks between the requests of agents with consecutive ids: four
/// classifiers ask one question every 64 ticks between them, so a model
/// run of about 10 ms on a CPU fits in the ticks that follow it.
pub const SPACING: u64 = 64;
/// Model asked.
pub const MODEL: &str = "magika";
/// Bytes taken from the start of the (stripped) content.
pub const BEG_SIZE: usize = 1024;
/// Bytes taken from the end of the (stripped) content.
pub const END_SIZE: usize = 1024;
/// Token that pads short content (byte values are `0..=255`).
pub const PADDING: i32 = 256;
/// Length of one feature row.
pub const FEATURES: usize = BEG_SIZE + END_SIZE;
/// Topic prefix of the published verdicts.
pub const TOPIC_PREFIX: &str = "files/";
/// Agent error returned for a malformed result tensor.
pub const ERR_BAD_RESULT: i32 = 3;
/// Agent error returned if the input tensor cannot be encoded (never).
pub const ERR_ENCODE: i32 = 2;

/// One embedded text file and the Magika label it should get.
#[derive(Debug, Clone, Copy)]
pub struct Snippet {
    /// File name (under `corpus/`); its stem is the expected label.
    pub name: &'static str,
    /// Expected Magika label.
    pub label: &'static str,
    /// The file's bytes.
    pub content: &'static [u8],
}

macro_rules! snippet {
    ($label:literal, $file:literal) => {
        Snippet {
            name: $file,
            label: $label,
            content: include_bytes!(concat!("../corpus/", $file)),
        }
    };
}

/// The embedded corpus, sorted by file name (every file of `corpus/`).
pub const CORPUS: [Snippet; 13] = [
    snippet!("c", "c.c"),
    snippet!("css", "css.css"),
    snippet!("go", "go.go"),
    snippet!("html", "html.html"),
    snippet!("javascript", "javascript.js"),
    snippet!("json", "json.json"),
    snippet!("markdown", "markdown.md"),
    snippet!("python", "python.py"),
    snippet!("rust", "rust.rs"),
    snippet!("shell", "shell.sh"),
    snippet!("sql", "sql.sql"),
    snippet!("toml", "toml.toml"),
    snippet!("yaml", "yaml.yaml"),
];

/// Magika's input features for `content`: the first [`BEG_SIZE`] bytes after
/// leading ASCII whitespace, padded at the end with [`PADDING`], then the last
/// [`END_SIZE`] bytes before trailing ASCII whitespace, padded at the start.
pub fn features(content: &[u8]) -> [i32; FEATURES] {
    let start = content
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(content.len());
    let end = content
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let mut f = [PADDING; FEATURES];
    let beg = &content[start..];
    let beg = &beg[..beg.len().min(BEG_SIZE)];
    for (x, &b) in f.iter_mut().zip(beg) {
        *x = i32::from(b);
    }
    let tail = &content[..end];
    let last = &tail[tail.len().saturating_sub(END_SIZE)..];
    for (x, &b) in f[FEATURES - last.len()..].iter_mut().zip(last) {
        *x = i32::from(b);
    }
    f
}

/// The tick (modulo [`EVERY`]) at which agent `agent_id` asks.
pub fn phase(agent_id: u64) -> u64 {
    agent_id.wrapping_mul(SPACING) % EVERY
}

/// The snippet an agent asks about in its `n`-th request (from 0).
pub fn snippet_index(agent_id: u64, n: u64) -> usize {
    (agent_id.wrapping_add(n) % CORPUS.len() as u64) as usize
}

/// `(label index, score)` of the best of a result's scores; `None` if the
/// tensor is malformed, not f32 or not [`LABELS`]-long.
pub fn best(result: &[u8]) -> Option<(usize, f32)> {
    let t = TensorView::parse(result).ok()?;
    if t.dtype() != DType::F32 || t.len() != LABELS.len() {
        return None;
    }
    let i = t.argmax()?;
    Some((i, t.get::<f32>(i)?))
}

static CORRECT: AtomicU64 = AtomicU64::new(0);
static INCORRECT: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// The classifier agent.
#[derive(Debug)]
pub struct Classifier {
    /// Requests made so far.
    requests: u64,
    /// `(request id, snippet index)` of the requests not answered yet.
    pending: Vec<(u64, usize)>,
    correct: u64,
    incorrect: u64,
    errors: u64,
}

impl Classifier {
    fn take_pending(&mut self, request: u64) -> Option<usize> {
        let i = self.pending.iter().position(|&(id, _)| id == request)?;
        Some(self.pending.remove(i).1)
    }

    fn verdict(&mut self, request: u64, index: usize, result: &[u8]) -> Result<(), i32> {
        let snippet = &CORPUS[index];
        let Some((label_index, score)) = best(result) else {
            let _ = error!("classifier: malformed result for request {}", request);
            return Err(ERR_BAD_RESULT);
        };
        let label = LABELS[label_index];
        let as_expected = label == snippet.label;
        if as_expected {
            self.correct += 1;
            CORRECT.fetch_add(1, Ordering::Relaxed);
        } else {
            self.incorrect += 1;
            INCORRECT.fetch_add(1, Ordering::Relaxed);
        }
        let mut topic = LineBuf::<64>::new();
        let _ = write!(topic, "{TOPIC_PREFIX}{label}");
        let mut payload = [0u8; 9];
        payload[0..4].copy_from_slice(&(index as u32).to_le_bytes());
        payload[4..8].copy_from_slice(&score.to_le_bytes());
        payload[8] = u8::from(as_expected);
        if let Err(e) = host::publish(topic.as_str(), &payload) {
            let _ = warn!("classifier: publish on {} refused: {}", topic.as_str(), e);
        }
        let total = self.correct + self.incorrect;
        if as_expected {
            let _ = info!(
                "classified {} as {} ({:.3}); {}/{} correct",
                snippet.name, label, score, self.correct, total
            );
        } else {
            let _ = info!(
                "classified {} as {} ({:.3}), expected {}; {}/{} correct",
                snippet.name, label, score, snippet.label, self.correct, total
            );
        }
        Ok(())
    }
}

impl Agent for Classifier {
    fn init() -> Self {
        CORRECT.store(0, Ordering::Relaxed);
        INCORRECT.store(0, Ordering::Relaxed);
        ERRORS.store(0, Ordering::Relaxed);
        Classifier {
            requests: 0,
            pending: Vec::new(),
            correct: 0,
            incorrect: 0,
            errors: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if ctx.tick % EVERY != phase(ctx.agent_id) {
            return Ok(());
        }
        let index = snippet_index(ctx.agent_id, self.requests);
        self.requests += 1;
        let input = features(CORPUS[index].content);
        let Ok(bytes) = tensor::encode(&[1, FEATURES as u64], &input) else {
            return Err(ERR_ENCODE);
        };
        match host::infer(MODEL, &bytes) {
            Ok(id) => self.pending.push((id, index)),
            Err(e) => {
                let _ = warn!("classifier: request refused: {}", e);
            }
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        match msg.kind {
            MessageKind::InferenceResult => match self.take_pending(msg.seq) {
                Some(index) => self.verdict(msg.seq, index, msg.payload)?,
                None => {
                    let _ = warn!("classifier: answer for unknown request {}", msg.seq);
                }
            },
            MessageKind::InferenceError => {
                let index = self.take_pending(msg.seq);
                self.errors += 1;
                ERRORS.fetch_add(1, Ordering::Relaxed);
                let _ = warn!(
                    "classifier: request {} ({}) failed: {}",
                    msg.seq,
                    index.map_or("?", |i| CORPUS[i].name),
                    msg.payload_str().unwrap_or("<non-UTF-8 error>")
                );
            }
            _ => {}
        }
        Ok(())
    }
}

export_agent!(Classifier);

/// Extra export (ignored by the runtime): classifications as expected since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn classifier_correct() -> i64 {
    CORRECT.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): classifications not as expected since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn classifier_incorrect() -> i64 {
    INCORRECT.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): error answers since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn classifier_errors() -> i64 {
    ERRORS.load(Ordering::Relaxed) as i64
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use lockstep_agent_sdk::host::mock::{self, HostCall};

    #[test]
    fn features_strip_whitespace_and_pad() {
        // The start strips leading whitespace only, the end trailing only.
        let f = features(b" \n\tab c\r\n ");
        let bytes = |s: &[u8]| s.iter().map(|&b| i32::from(b)).collect::<Vec<_>>();
        assert_eq!(f[..7], bytes(b"ab c\r\n ")[..]);
        assert!(f[7..FEATURES - 7].iter().all(|&x| x == PADDING));
        assert_eq!(f[FEATURES - 7..], bytes(b" \n\tab c")[..]);
        assert!(features(b"").iter().all(|&x| x == PADDING));
        // All whitespace: nothing at the start; the end keeps it (as the
        // inference host's `magika_features` does).
        let f = features(b" \n ");
        assert!(f[..FEATURES - 3].iter().all(|&x| x == PADDING));
        assert_eq!(f[FEATURES - 3..], [32, 10, 32]);
        let long: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let f = features(&long);
        assert_eq!(f[0], i32::from(b'a'));
        assert_eq!(f[BEG_SIZE - 1], i32::from(long[BEG_SIZE - 1]));
        assert_eq!(f[BEG_SIZE], i32::from(long[3000 - END_SIZE]));
        assert_eq!(f[FEATURES - 1], i32::from(long[2999]));
    }

    #[test]
    fn corpus_matches_its_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let names: Vec<&str> = CORPUS.iter().map(|s| s.name).collect();
        assert_eq!(names, files, "CORPUS lists corpus/, sorted");
        for s in &CORPUS {
            assert_eq!(s.name.split('.').next(), Some(s.label), "{}", s.name);
            assert!(
                LABELS.contains(&s.label),
                "{} is not a Magika label",
                s.label
            );
            assert!(
                (300..=1500).contains(&s.content.len()),
                "{}: {} bytes",
                s.name,
                s.content.len()
            );
            assert_eq!(std::fs::read(dir.join(s.name)).unwrap(), s.content);
        }
        assert_eq!(LABELS.len(), 214);
    }

    #[test]
    fn asks_on_its_phase_and_publishes_the_verdict() {
        mock::reset();
        let mut c = Classifier::init();
        let ctx = |tick| StepContext {
            size: 64,
            abi_version: lockstep_agent_sdk::ABI_VERSION,
            tick,
            agent_id: 11,
            task_id: 0,
            task_priority: 0,
            mailbox_len: 0,
            flags: 0,
            payload: b"",
        };
        c.step(&ctx(10)).unwrap();
        assert!(mock::take_calls().is_empty(), "not its phase");
        c.step(&ctx(11)).unwrap();
        let calls = mock::take_calls();
        let index = snippet_index(11, 0);
        let [HostCall::Infer { model, input }] = calls.as_slice() else {
            panic!("{calls:?}");
        };
        assert_eq!(model, b"magika");
        let t = TensorView::parse(input).unwrap();
        assert_eq!(t.dims(), &[1, FEATURES as u64]);
        assert_eq!(
            t.to_vec::<i32>().unwrap(),
            features(CORPUS[index].content).to_vec()
        );

        // The answer: the expected label scores best.
        let want = LABELS
            .iter()
            .position(|&l| l == CORPUS[index].label)
            .unwrap();
        let mut scores = vec![0.001f32; LABELS.len()];
        scores[want] = 0.9;
        let result = tensor::encode(&[1, LABELS.len() as u64], &scores).unwrap();
        let answer = Message {
            size: 48,
            kind: MessageKind::InferenceResult,
            sender: u64::MAX,
            sent_tick: 11,
            seq: 1,
            topic: b"",
            payload: &result,
        };
        c.receive(&answer).unwrap();
        let calls = mock::take_calls();
        let mut payload = vec![];
        payload.extend_from_slice(&(index as u32).to_le_bytes());
        payload.extend_from_slice(&0.9f32.to_le_bytes());
        payload.push(1);
        assert_eq!(
            calls[0],
            HostCall::Publish {
                topic: alloc::format!("files/{}", CORPUS[index].label).into_bytes(),
                payload,
            }
        );
        let HostCall::Log { level: 2, line } = &calls[1] else {
            panic!("{calls:?}");
        };
        assert!(line.starts_with(&alloc::format!(
            "classified {} as {} (0.900)",
            CORPUS[index].name,
            CORPUS[index].label
        )));
        assert_eq!((c.correct, c.incorrect, c.errors), (1, 0, 0));
        assert!(c.pending.is_empty());

        // An error answer is counted; a malformed result is an agent error.
        c.step(&ctx(19)).unwrap();
        mock::take_calls();
        let err = Message {
            kind: MessageKind::InferenceError,
            seq: 2,
            payload: b"boom",
            ..answer
        };
        c.receive(&err).unwrap();
        assert_eq!(c.errors, 1);
        c.step(&ctx(27)).unwrap();
        let bad = Message {
            seq: 3,
            payload: b"\x01\x00",
            ..answer
        };
        assert_eq!(c.receive(&bad), Err(ERR_BAD_RESULT));
    }
}
