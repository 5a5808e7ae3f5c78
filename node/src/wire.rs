//! What crosses NATS between a bridge and a node: subjects, the open
//! request and its reply, and the packets of a link.
//!
//! A link carries one worker's ring conversation in both directions.  Each
//! message of the worker protocol (`Down` from the supervisor, `Up` from
//! the worker) is postcard-encoded and cut into [`Packet`]s of at most
//! [`MAX_CHUNK`] bytes (NATS servers refuse payloads over their
//! `max_payload`, 1 MiB by default).  Every packet carries the sender's
//! sequence number; core NATS may drop messages (a slow consumer, a
//! reconnect), so a receiver that sees a gap treats the link as broken —
//! a worker failure the supervisor recovers from like any other, never a
//! silently lost frame.

use serde::{Deserialize, Serialize};
use shm_protocol::control::SandboxReport;

/// Largest chunk of one encoded message in one packet.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Largest encoded message a link reassembles (a bound against a peer that
/// never ends one).
pub const MAX_MESSAGE: usize = 1 << 30;

/// How often each side of a link says it is alive.
pub const BEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The subject a node takes open requests on.
pub fn open_subject(node: &str) -> String {
    format!("lockstep.node.{node}.open")
}

/// The subject of a link's supervisor → worker direction.
pub fn down_subject(session: &str) -> String {
    format!("lockstep.link.{session}.down")
}

/// The subject of a link's worker → supervisor direction.
pub fn up_subject(session: &str) -> String {
    format!("lockstep.link.{session}.up")
}

/// Whether `s` may be a node name or a session id: the supervisor's rule
/// for one NATS subject word.
pub use lockstep_supervisor::remote::is_subject_word as is_token;

/// A bridge asks a node to host one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// The link's id (a subject token).
    pub session: String,
    /// The worker's name in the supervisor (`worker-1`).
    pub name: String,
    /// The lockstep build of the bridge (a node refuses another build:
    /// compiled modules and the protocol are per build).
    pub build: String,
    /// Longest heartbeat silence of the worker while it owes an answer.
    pub hang_ms: u64,
    /// Whether the worker should yield rather than spin while it waits
    /// (fewer cores than processes).
    pub wait_yield: bool,
    /// What to host.
    pub role: Hosted,
}

/// What a bridge asks a node to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hosted {
    /// A worker.
    Worker,
    /// The inference host, on `device` (`cpu`, `auto`, `cuda`, `cuda:N`)
    /// with `intra_threads` per model session.
    Inference {
        /// The device.
        device: String,
        /// Intra-op threads.
        intra_threads: u16,
    },
}

impl Hosted {
    /// Checks the values a node passes on to the process it starts.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Hosted::Worker => Ok(()),
            Hosted::Inference {
                device,
                intra_threads,
            } => {
                let ok = lockstep_common::is_device(device);
                if !ok {
                    return Err(format!("device {device:?} (cpu, auto, cuda or cuda:N)"));
                }
                if *intra_threads == 0 || *intra_threads > 256 {
                    return Err(format!("{intra_threads} intra-op threads (1 to 256)"));
                }
                Ok(())
            }
        }
    }
}

/// A node's answer to an [`OpenRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenReply {
    /// The worker is up and sandboxed; the link is open.
    Ready {
        /// The worker's account of its sandbox.
        sandbox: SandboxReport,
        /// Its pid on the node.
        pid: u32,
    },
    /// The node will not host it.
    Refused {
        /// Why.
        reason: String,
    },
}

/// How a remote worker ended, as its node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// Its heartbeat stalled while it owed an answer.
    Hung,
    /// The node lost it otherwise (its ring broke, the node is stopping).
    Lost,
}

/// What a packet carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A piece of one encoded message; `last` ends the message.
    Chunk {
        /// Whether this piece ends the message.
        last: bool,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The sender is alive (and, from a node, its worker is not hung).
    Beat,
    /// From a node: the worker is gone.
    Failed(Failure),
    /// From a bridge: the supervisor is done with the worker.
    Close,
}

/// One NATS message of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender's sequence number, from 0, one per packet.
    pub seq: u64,
    /// What it carries.
    pub body: Body,
}

/// Numbers the packets one side of a link sends.
#[derive(Debug, Default)]
pub struct Outbox {
    next: u64,
}

impl Outbox {
    /// The packets of one message (encoded `bytes`).
    pub fn message(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len() / MAX_CHUNK + 1);
        let mut chunks = bytes.chunks(MAX_CHUNK).peekable();
        if chunks.peek().is_none() {
            out.push(self.packet(Body::Chunk {
                last: true,
                bytes: Vec::new(),
            }));
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.push(self.packet(Body::Chunk {
                last,
                bytes: c.to_vec(),
            }));
        }
        out
    }

    /// One encoded packet with `body`.
    pub fn packet(&mut self, body: Body) -> Vec<u8> {
        let p = Packet {
            seq: self.next,
            body,
        };
        self.next += 1;
        postcard::to_allocvec(&p).expect("a packet always encodes")
    }
}

/// What a receiver makes of the packets of a link.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole message (encoded).
    Message(Vec<u8>),
    /// The peer is alive.
    Beat,
    /// From a node: the worker is gone.
    Failed(Failure),
    /// From a bridge: close the link.
    Close,
}

/// A broken link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// A packet did not decode.
    #[error("undecodable packet: {0}")]
    Garbled(String),
    /// Packets were lost or reordered.
    #[error("packet {got} arrived where {expected} was due (packets were lost)")]
    Gap {
        /// The sequence number due.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// A message grew past [`MAX_MESSAGE`].
    #[error("a message grew past {MAX_MESSAGE} bytes")]
    TooLarge,
}

/// Reassembles the messages of one direction of a link.
#[derive(Debug, Default)]
pub struct Inbox {
    expected: u64,
    partial: Vec<u8>,
}

impl Inbox {
    /// Takes one NATS payload.
    pub fn push(&mut self, payload: &[u8]) -> Result<Option<Event>, LinkError> {
        let p: Packet =
            postcard::from_bytes(payload).map_err(|e| LinkError::Garbled(e.to_string()))?;
        if p.seq != self.expected {
            return Err(LinkError::Gap {
                expected: self.expected,
                got: p.seq,
            });
        }
        self.expected += 1;
        Ok(match p.body {
            Body::Chunk { last, bytes } => {
                if self.partial.len() + bytes.len() > MAX_MESSAGE {
                    return Err(LinkError::TooLarge);
                }
                self.partial.extend_from_slice(&bytes);
                last.then(|| std::mem::take(&mut self.partial))
                    .map(Event::Message)
            }
            Body::Beat => Some(Event::Beat),
            Body::Failed(f) => Some(Event::Failed(f)),
            Body::Close => Some(Event::Close),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_any_size_survive_the_cut() {
        for len in [
            0,
            1,
            MAX_CHUNK - 1,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            3 * MAX_CHUNK + 7,
        ] {
            let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Outbox::default();
            let mut inb = Inbox::default();
            let packets = out.message(&msg);
            assert_eq!(packets.len(), len.div_ceil(MAX_CHUNK).max(1));
            let mut got = None;
            for p in &packets {
                if let Some(e) = inb.push(p).unwrap() {
                    got = Some(e);
                }
            }
            assert_eq!(got, Some(Event::Message(msg)));
        }
    }

    #[test]
    fn a_lost_packet_breaks_the_link() {
        let mut out = Outbox::default();
        let mut inb = Inbox::default();
        let _lost = out.packet(Body::Beat);
        let next = out.packet(Body::Beat);
        assert_eq!(
            inb.push(&next),
            Err(LinkError::Gap {
                expected: 0,
                got: 1
            })
        );
        assert!(matches!(inb.push(b"\xff\xff"), Err(LinkError::Garbled(_))));
    }

    #[test]
    fn tokens_are_single_subject_words() {
        assert!(is_token("node-a_1"));
        for bad in ["", "a.b", "a b", "*", ">", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
