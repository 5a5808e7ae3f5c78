//! A specialist desk of the embedding router society
//! (`examples/embeddings.toml`): counts the texts the routers send it.
//!
//! The manifest subscribes each specialist to its desk's topic
//! (`subscriptions = ["desk/<name>"]`); the desk's name is what follows
//! `desk/` in the topic of what it receives.  A routed text's payload is
//! (little-endian) `cosine: f32`, `expected desk length: u8`, the expected
//! desk's name (empty when unknown), then the UTF-8 text (see
//! `agents/examples/router`).  For each it logs
//! `desk <name> #<n>: "<text>" (cos <c>) on topic` — or `off topic,
//! expected <desk>`, or `unlabelled` — at info level, and every
//! [`REPORT_EVERY`] ticks in which it got something a tally
//! `tally: <n> received, <k> on topic`.  Counts are readable through
//! the extra exports `specialist_received` and `specialist_on_topic`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use core::sync::atomic::{AtomicU64, Ordering};

use lockstep_agent_sdk::{Agent, Message, MessageKind, StepContext, export_agent, info, warn};

/// Topic prefix of the desks.
pub const TOPIC_PREFIX: &str = "desk/";
/// Ticks between two tallies (logged only when something arrived).
pub const REPORT_EVERY: u64 = 100;

/// A routed text, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routed<'a> {
    /// Cosine similarity of the text and the desk's topic.
    pub cosine: f32,
    /// The desk the text belongs to, if known.
    pub expected: Option<&'a str>,
    /// The text.
    pub text: &'a str,
}

/// Parses a routed text's payload; `None` if it is malformed.
pub fn parse(payload: &[u8]) -> Option<Routed<'_>> {
    let cosine = f32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
    let n = usize::from(*payload.get(4)?);
    let expected = core::str::from_utf8(payload.get(5..5 + n)?).ok()?;
    let text = core::str::from_utf8(payload.get(5 + n..)?).ok()?;
    Some(Routed {
        cosine,
        expected: (n > 0).then_some(expected),
        text,
    })
}

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static ON_TOPIC: AtomicU64 = AtomicU64::new(0);

/// The specialist agent.
#[derive(Debug)]
pub struct Specialist {
    received: u64,
    on_topic: u64,
    /// Received since the last tally.
    fresh: u64,
}

fn shown(text: &str) -> &str {
    let mut i = text.len().min(120);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    &text[..i]
}

impl Agent for Specialist {
    fn init() -> Self {
        RECEIVED.store(0, Ordering::Relaxed);
        ON_TOPIC.store(0, Ordering::Relaxed);
        Specialist {
            received: 0,
            on_topic: 0,
            fresh: 0,
        }
    }

    fn step(&mut self, ctx: &StepContext<'_>) -> Result<(), i32> {
        if ctx.tick % REPORT_EVERY == 0 && self.fresh > 0 {
            self.fresh = 0;
            let _ = info!(
                "tally: {} received, {} on topic",
                self.received, self.on_topic
            );
        }
        Ok(())
    }

    fn receive(&mut self, msg: &Message<'_>) -> Result<(), i32> {
        if msg.kind != MessageKind::Topic {
            return Ok(());
        }
        let desk = msg
            .topic_str()
            .and_then(|t| t.strip_prefix(TOPIC_PREFIX))
            .unwrap_or("?");
        let Some(r) = parse(msg.payload) else {
            let _ = warn!("desk {}: malformed routed text from {}", desk, msg.sender);
            return Ok(());
        };
        self.received += 1;
        self.fresh += 1;
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        match r.expected {
            Some(e) if e == desk => {
                self.on_topic += 1;
                ON_TOPIC.fetch_add(1, Ordering::Relaxed);
                let _ = info!(
                    "desk {} #{}: \"{}\" (cos {:.3}) on topic",
                    desk,
                    self.received,
                    shown(r.text),
                    r.cosine
                );
            }
            Some(e) => {
                let _ = info!(
                    "desk {} #{}: \"{}\" (cos {:.3}) off topic, expected {}",
                    desk,
                    self.received,
                    shown(r.text),
                    r.cosine,
                    e
                );
            }
            None => {
                let _ = info!(
                    "desk {} #{}: \"{}\" (cos {:.3}) unlabelled",
                    desk,
                    self.received,
                    shown(r.text),
                    r.cosine
                );
            }
        }
        Ok(())
    }
}

export_agent!(Specialist);

/// Extra export (ignored by the runtime): texts received since `agent_init`.
#[unsafe(no_mangle)]
pub extern "C" fn specialist_received() -> i64 {
    RECEIVED.load(Ordering::Relaxed) as i64
}

/// Extra export (ignored by the runtime): texts whose expected desk is this one.
#[unsafe(no_mangle)]
pub extern "C" fn specialist_on_topic() -> i64 {
    ON_TOPIC.load(Ordering::Relaxed) as i64
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use lockstep_agent_sdk::host::mock::{self, HostCall};

    fn routed(cosine: f32, expected: &str, text: &str) -> std::vec::Vec<u8> {
        let mut p = cosine.to_le_bytes().to_vec();
        p.push(expected.len() as u8);
        p.extend_from_slice(expected.as_bytes());
        p.extend_from_slice(text.as_bytes());
        p
    }

    #[test]
    fn counts_on_and_off_topic_texts() {
        mock::reset();
        let mut s = Specialist::init();
        let on = routed(0.5, "sports", "goal!");
        let off = routed(0.25, "finance", "stocks");
        let unlabelled = routed(0.125, "", "hello");
        for p in [&on, &off, &unlabelled] {
            let m = Message {
                size: 48,
                kind: MessageKind::Topic,
                sender: 3,
                sent_tick: 1,
                seq: 1,
                topic: b"desk/sports",
                payload: p,
            };
            s.receive(&m).unwrap();
        }
        assert_eq!((s.received, s.on_topic), (3, 1));
        let lines: std::vec::Vec<std::string::String> = mock::take_calls()
            .into_iter()
            .filter_map(|c| match c {
                HostCall::Log { line, .. } => Some(line),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                "desk sports #1: \"goal!\" (cos 0.500) on topic",
                "desk sports #2: \"stocks\" (cos 0.250) off topic, expected finance",
                "desk sports #3: \"hello\" (cos 0.125) unlabelled",
            ]
        );
        assert_eq!(parse(b"\x00\x00"), None);
        assert_eq!(parse(&on).unwrap().expected, Some("sports"));
    }
}
