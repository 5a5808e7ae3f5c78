//! Tallies the file types that `classifier` agents publish on `files/<label>`
//! and publishes a summary on `archive` every [`EVERY`] ticks.
//!
//! There are no wildcard subscriptions: it subscribes (in `agent_init`) to
//! the fixed list [`TOPICS`].  A verdict's payload is 9 bytes (LE): snippet
//! index `u32`, score `f32`, as expected `u8`.  The summary payload is
//! `tick: u64` then, per topic of [`TOPICS`] in order, `count: u64`; it is
//! also logged (non-zero counts only) at info level.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::host::LineBuf;
use lockstep_agent_sdk::{
    Agent, Message, MessageKind, StepContext, export_agent, host, info, warn,
};

/// How often (in ticks) a summary is published.
pub const EVERY: u64 = 50;
/// Topic of the summaries.
pub const SUMMARY_TOPIC: &str = "archive";
/// The verdict topics tallied: the classifier corpus' labels plus `txt`.
pub const TOPICS: [&str; 14] = [
    "files/c",
    "files/css",
    "files/go",
    "files/html",
    "files/javascript",
    "files/json",
    "files/markdown",
    "files/python",
    "files/rust",
    "files/shell",
    "files/sql",
    "files/toml",
    "files/yaml",
    "files/txt",
];
/// Size of a verdict payload.
pub const VERDICT_LEN: usize = 9;

static FILES: AtomicU64 = AtomicU64::new(0);

/// Per-topic tally.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Verdicts received.
    pub count: u64,
    /// Of which the classifier found as expected.
    pub as_expected: u64,
    /// Sum of their scores.
    pub score_sum: f64,
}

/// The archivist agent.
#[derive(Debug)]
pub struct Archivist {
    subscribed: bool,
    tallies: [Tally; TOPICS.len()],
    malformed: u64,
}

fn subscribe_all() -> bool {
    for t in TOPICS {
        if let Err(e) = host::subscribe(t) {
            let _ = warn!("archivist: subscribe to {} refused: {}", t, e);
            return false;
        }
    }
    true
}

impl Archivist {
    /// Files tallied so far, and how many of them as expected.
    pub fn totals(&self) -> (u64, u64) {
        self.tallies
            .iter()
            .fold((0, 0), |(n, ok), t| (n + t.count, ok + t.as_expected))
    }

    /// Records one verdict published on `topic`.
    pub fn record(&mut self, topic: &[u8], payload: &[u8]) {
        let Some(i) = TOPICS.iter().position(|t| t.as_bytes() == topic) else {
            return;
        };
        if payload.len() != VERDICT_LEN {
            self.malformed += 1;
            return;
        }
        let mut score = [0u8; 4];
        score.copy_from_slice(&payload[4..8]);
        let t = &mut self.tallies[i];
        t.count += 1;
        t.as_expected += u64::from(payload[8] == 1);
        t.score_sum += f64::from(f32::from_le_bytes(score));
        FILES.fetch_add(1, Ordering::Relaxed);
    }

    /// The summary payload for `tick`.
    pub fn summary(&self, tick: u64) -> [u8; 8 + 8 * TOPICS.len()] {
        let mut p = [0u8; 8 + 8 * TOPICS.len()];
        p[..8].copy_from_slice(&tick.to_le_bytes());
        for (chunk, t) in p[8..].chunks_exact_mut(8).zip(&self.tallies) {
            chunk.copy_from_slice(&t.count.to_le_bytes());
        }
        p
    }
}

impl Agent for Archivist {
    fn init() -> Self {
        FILES.store(0, Ordering::Relaxed);
        Archivist {
            subscribed: subscribe_all(),
            tallies: [Tally::default(); TOPICS.len()],
            malformed: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if !self.subscribed {
            self.subscribed = subscribe_all();
        }
        if ctx.tick % EVERY != 0 {
            return Ok(());
        }
        if let Err(e) = host::publish(SUMMARY_TOPIC, &self.summary(ctx.tick)) {
            let _ = warn!("archivist: publish refused: {}", e);
        }
        let (files, ok) = self.totals();
        let mut line = LineBuf::<256>::new();
        let _ = write!(
            line,
            "archive @{}: {} files ({} as expected)",
            ctx.tick, files, ok
        );
        let mut sep = ":";
        for (topic, t) in TOPICS.iter().zip(&self.tallies) {
            if t.count > 0 {
                let label = topic.strip_prefix("files/").unwrap_or(topic);
                let _ = write!(line, "{} {} {}", sep, label, t.count);
                sep = ",";
            }
        }
        if self.malformed > 0 {
            let _ = write!(line, "; {} malformed", self.malformed);
        }
        let _ = info!("{}", line.as_str());
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        if msg.kind == MessageKind::Topic {
            self.record(msg.topic, msg.payload);
        }
        Ok(())
    }
}

export_agent!(Archivist);

/// Extra export (ignored by the runtime): verdicts tallied since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn archivist_files() -> i64 {
    FILES.load(Ordering::Relaxed) as i64
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use lockstep_agent_sdk::host::mock::{self, HostCall};

    fn verdict(index: u32, score: f32, ok: bool) -> [u8; 9] {
        let mut p = [0u8; 9];
        p[..4].copy_from_slice(&index.to_le_bytes());
        p[4..8].copy_from_slice(&score.to_le_bytes());
        p[8] = u8::from(ok);
        p
    }

    #[test]
    fn tallies_and_summarises() {
        mock::reset();
        let mut a = Archivist::init();
        let calls = mock::take_calls();
        assert_eq!(calls.len(), TOPICS.len());
        assert_eq!(calls[0], HostCall::Subscribe(b"files/c".to_vec()));
        a.record(b"files/rust", &verdict(8, 0.99, true));
        a.record(b"files/rust", &verdict(8, 0.97, true));
        a.record(b"files/txt", &verdict(6, 0.5, false));
        a.record(b"files/rust", b"short");
        a.record(b"other", &verdict(1, 0.5, true));
        assert_eq!(a.totals(), (3, 2));
        assert_eq!(a.malformed, 1);
        let rust = TOPICS.iter().position(|&t| t == "files/rust").unwrap();
        assert_eq!(a.tallies[rust].count, 2);

        let ctx = |tick| StepContext {
            size: 64,
            abi_version: lockstep_agent_sdk::ABI_VERSION,
            tick,
            agent_id: 3,
            task_id: 0,
            task_priority: 0,
            mailbox_len: 0,
            flags: 0,
            payload: b"",
        };
        a.step(&ctx(49)).unwrap();
        assert!(mock::take_calls().is_empty());
        a.step(&ctx(50)).unwrap();
        let calls = mock::take_calls();
        let HostCall::Publish { topic, payload } = &calls[0] else {
            panic!("{calls:?}");
        };
        assert_eq!(topic, b"archive");
        assert_eq!(payload.len(), 8 + 8 * TOPICS.len());
        assert_eq!(&payload[..8], &50u64.to_le_bytes());
        let at = 8 + 8 * rust;
        assert_eq!(&payload[at..at + 8], &2u64.to_le_bytes());
        let HostCall::Log { level: 2, line } = &calls[1] else {
            panic!("{calls:?}");
        };
        assert_eq!(
            line,
            "archive @50: 3 files (2 as expected): rust 2, txt 1; 1 malformed"
        );
    }
}
