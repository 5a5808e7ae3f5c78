//! Typed views of the step context and message layouts (ABI v1.0, `docs/abi.md`).
//!
//! Both layouts start with a `size` field giving the length of their fixed part;
//! newer minor versions may grow it, so variable-length data (task payload,
//! topic, message payload) is located at `size`, not at the v1.0 constant.
//! Parsing validates every length against the bytes available and never
//! panics.

use alloc::vec::Vec;
use core::fmt;

/// The ABI version this SDK implements: `(major << 16) | minor`.
pub const ABI_VERSION: u32 = 0x0001_0000;

/// The major part of [`ABI_VERSION`].
pub const ABI_MAJOR: u32 = ABI_VERSION >> 16;

/// Size of the fixed part of a step context in ABI v1.0.
pub const STEP_CONTEXT_SIZE: usize = 64;

/// Size of the fixed part of a message in ABI v1.0.
pub const MESSAGE_SIZE: usize = 48;

/// Sender id used for messages from the runtime or an external input.
pub const RUNTIME_SENDER: u64 = u64::MAX;

/// `flags` bit 0 of the step context: first step after `agent_init`.
pub const FLAG_FIRST_STEP: u32 = 1;

/// Why a context or message could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// Fewer bytes than the fixed part (or its `size` field) needs.
    Truncated {
        /// Bytes the layout declares.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The `size` field is smaller than the v1.0 fixed part.
    SizeTooSmall(u32),
    /// The host speaks a different ABI major version.
    Version(u32),
    /// A length computation overflowed.
    Overflow,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(f, "truncated layout: need {needed} bytes, have {available}")
            }
            Self::SizeTooSmall(size) => write!(f, "fixed-part size {size} below the v1.0 size"),
            Self::Version(v) => write!(f, "unsupported ABI version {v:#010x}"),
            Self::Overflow => f.write_str("length overflow"),
        }
    }
}

pub(crate) fn u32_at(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Total length (fixed part plus trailing data) declared by the header at the
/// start of `header`, which must hold at least `fixed` bytes.  `lens` are the
/// offsets of the `u32` length fields of the variable parts.
pub(crate) fn declared_len(
    header: &[u8],
    fixed: usize,
    lens: &[usize],
) -> Result<usize, LayoutError> {
    if header.len() < fixed {
        return Err(LayoutError::Truncated {
            needed: fixed,
            available: header.len(),
        });
    }
    let size = u32_at(header, 0);
    if (size as usize) < fixed {
        return Err(LayoutError::SizeTooSmall(size));
    }
    let mut total = size as usize;
    for &off in lens {
        total = total
            .checked_add(u32_at(header, off) as usize)
            .ok_or(LayoutError::Overflow)?;
    }
    Ok(total)
}

fn check_total(bytes: &[u8], total: usize) -> Result<(), LayoutError> {
    if bytes.len() < total {
        Err(LayoutError::Truncated {
            needed: total,
            available: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// One scheduled step, as the host describes it to `agent_step`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepContext<'a> {
    /// Size of the fixed part (64 in v1.0).
    pub size: u32,
    /// ABI version the host speaks.
    pub abi_version: u32,
    /// The current logical tick.
    pub tick: u64,
    /// This agent's id.
    pub agent_id: u64,
    /// The task being run; `0` for a plain (round-robin) step.
    pub task_id: u64,
    /// The task's priority; `0` when there is no task.
    pub task_priority: i32,
    /// Messages delivered to this agent this tick (already passed to `receive`).
    pub mailbox_len: u32,
    /// Flag bits; see [`FLAG_FIRST_STEP`].
    pub flags: u32,
    /// Task payload (empty for a plain step).
    pub payload: &'a [u8],
}

impl<'a> StepContext<'a> {
    /// Parses a context from `bytes` (the fixed part followed by the payload).
    /// Trailing bytes beyond the declared length are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LayoutError> {
        let total = declared_len(bytes, STEP_CONTEXT_SIZE, &[36])?;
        check_total(bytes, total)?;
        let size = u32_at(bytes, 0);
        let abi_version = u32_at(bytes, 4);
        if abi_version >> 16 != ABI_MAJOR {
            return Err(LayoutError::Version(abi_version));
        }
        Ok(Self {
            size,
            abi_version,
            tick: u64_at(bytes, 8),
            agent_id: u64_at(bytes, 16),
            task_id: u64_at(bytes, 24),
            task_priority: u32_at(bytes, 32) as i32,
            mailbox_len: u32_at(bytes, 40),
            flags: u32_at(bytes, 44),
            payload: &bytes[size as usize..total],
        })
    }

    /// Whether this is the first step after `agent_init`.
    pub fn first_step(&self) -> bool {
        self.flags & FLAG_FIRST_STEP != 0
    }

    /// Whether this step runs a scheduled task (rather than a plain step).
    pub fn is_task(&self) -> bool {
        self.task_id != 0
    }

    /// Encodes this context in the v1.0 layout (`size` is written as 64
    /// whatever `self.size` says).  Useful for host-side tests and tools.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STEP_CONTEXT_SIZE + self.payload.len());
        out.extend_from_slice(&(STEP_CONTEXT_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&self.abi_version.to_le_bytes());
        out.extend_from_slice(&self.tick.to_le_bytes());
        out.extend_from_slice(&self.agent_id.to_le_bytes());
        out.extend_from_slice(&self.task_id.to_le_bytes());
        out.extend_from_slice(&self.task_priority.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.mailbox_len.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(self.payload);
        out
    }
}

/// The `kind` of a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// `0`: a direct message (`send`).
    Direct,
    /// `1`: a topic publication; the topic is in [`Message::topic`].
    Topic,
    /// `2`: a channel message; the channel name is in [`Message::topic`].
    Channel,
    /// `3`: an inference result; the payload is a tensor, `seq` the request id.
    InferenceResult,
    /// `4`: an inference error; the payload is UTF-8, `seq` the request id.
    InferenceError,
    /// `5`: a runtime notice (UTF-8 payload).
    Notice,
    /// A kind added by a later minor version.
    Unknown(u32),
}

impl MessageKind {
    /// Maps the wire value to a kind.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Direct,
            1 => Self::Topic,
            2 => Self::Channel,
            3 => Self::InferenceResult,
            4 => Self::InferenceError,
            5 => Self::Notice,
            other => Self::Unknown(other),
        }
    }

    /// The wire value of this kind.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::Direct => 0,
            Self::Topic => 1,
            Self::Channel => 2,
            Self::InferenceResult => 3,
            Self::InferenceError => 4,
            Self::Notice => 5,
            Self::Unknown(v) => v,
        }
    }
}

/// One delivered message, as the host passes it to `agent_receive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Size of the fixed part (48 in v1.0).
    pub size: u32,
    /// What sort of message this is.
    pub kind: MessageKind,
    /// Sender agent id; [`RUNTIME_SENDER`] for the runtime or external input.
    pub sender: u64,
    /// Tick in which the message was produced.
    pub sent_tick: u64,
    /// Sender's output sequence number; the request id for kinds 3 and 4.
    pub seq: u64,
    /// Topic or channel name (empty for direct messages).
    pub topic: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Parses a message from `bytes` (fixed part, topic, payload).  Trailing
    /// bytes beyond the declared length are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LayoutError> {
        let total = declared_len(bytes, MESSAGE_SIZE, &[32, 36])?;
        check_total(bytes, total)?;
        let size = u32_at(bytes, 0) as usize;
        let topic_end = size + u32_at(bytes, 32) as usize;
        Ok(Self {
            size: size as u32,
            kind: MessageKind::from_u32(u32_at(bytes, 4)),
            sender: u64_at(bytes, 8),
            sent_tick: u64_at(bytes, 16),
            seq: u64_at(bytes, 24),
            topic: &bytes[size..topic_end],
            payload: &bytes[topic_end..total],
        })
    }

    /// The topic / channel name as UTF-8, if it is valid UTF-8.
    pub fn topic_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.topic).ok()
    }

    /// The payload as UTF-8 (inference errors, notices), if valid.
    pub fn payload_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.payload).ok()
    }

    /// Whether the runtime (or an external input) sent this message.
    pub fn from_runtime(&self) -> bool {
        self.sender == RUNTIME_SENDER
    }

    /// Encodes this message in the v1.0 layout (`size` is written as 48).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_SIZE + self.topic.len() + self.payload.len());
        out.extend_from_slice(&(MESSAGE_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&self.kind.as_u32().to_le_bytes());
        out.extend_from_slice(&self.sender.to_le_bytes());
        out.extend_from_slice(&self.sent_tick.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(self.topic);
        out.extend_from_slice(self.payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(payload: &[u8]) -> StepContext<'_> {
        StepContext {
            size: 64,
            abi_version: ABI_VERSION,
            tick: 0x0102_0304_0506_0708,
            agent_id: 7,
            task_id: (7 << 32) | 3,
            task_priority: -5,
            mailbox_len: 2,
            flags: FLAG_FIRST_STEP,
            payload,
        }
    }

    #[test]
    fn step_context_offsets_match_abi() {
        let bytes = ctx(b"xyz").encode();
        assert_eq!(bytes.len(), 67);
        assert_eq!(&bytes[0..4], &64u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &0x0001_0000u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &7u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &((7u64 << 32) | 3).to_le_bytes());
        assert_eq!(&bytes[32..36], &(-5i32).to_le_bytes());
        assert_eq!(&bytes[36..40], &3u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &2u32.to_le_bytes());
        assert_eq!(&bytes[44..48], &1u32.to_le_bytes());
        assert_eq!(&bytes[48..64], &[0u8; 16]);
        assert_eq!(&bytes[64..], b"xyz");
    }

    #[test]
    fn step_context_roundtrip() {
        let bytes = ctx(b"payload").encode();
        let parsed = StepContext::parse(&bytes).unwrap();
        assert_eq!(parsed, ctx(b"payload"));
        assert!(parsed.first_step());
        assert!(parsed.is_task());
    }

    #[test]
    fn step_context_trailing_bytes_ignored() {
        let mut bytes = ctx(b"ab").encode();
        bytes.extend_from_slice(&[0xEE; 10]);
        assert_eq!(StepContext::parse(&bytes).unwrap().payload, b"ab");
    }

    #[test]
    fn step_context_grown_fixed_part() {
        // A later minor with an 80-byte fixed part: the payload follows `size`.
        let mut bytes = ctx(b"pp").encode();
        bytes.splice(64..64, [0xAA; 16]);
        bytes[0..4].copy_from_slice(&80u32.to_le_bytes());
        let parsed = StepContext::parse(&bytes).unwrap();
        assert_eq!(parsed.size, 80);
        assert_eq!(parsed.payload, b"pp");
    }

    #[test]
    fn step_context_rejects_bad_layouts() {
        let good = ctx(b"abcd").encode();
        assert_eq!(
            StepContext::parse(&good[..40]),
            Err(LayoutError::Truncated {
                needed: 64,
                available: 40
            })
        );
        assert_eq!(
            StepContext::parse(&good[..66]),
            Err(LayoutError::Truncated {
                needed: 68,
                available: 66
            })
        );
        let mut small = good.clone();
        small[0..4].copy_from_slice(&32u32.to_le_bytes());
        assert_eq!(
            StepContext::parse(&small),
            Err(LayoutError::SizeTooSmall(32))
        );
        let mut v2 = good.clone();
        v2[4..8].copy_from_slice(&0x0002_0000u32.to_le_bytes());
        assert_eq!(
            StepContext::parse(&v2),
            Err(LayoutError::Version(0x0002_0000))
        );
        let mut minor = good.clone();
        minor[4..8].copy_from_slice(&0x0001_0003u32.to_le_bytes());
        assert!(StepContext::parse(&minor).is_ok());
        let mut huge = good;
        huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            StepContext::parse(&huge),
            Err(LayoutError::Truncated { .. })
        ));
    }

    fn msg<'a>(kind: MessageKind, topic: &'a [u8], payload: &'a [u8]) -> Message<'a> {
        Message {
            size: 48,
            kind,
            sender: 3,
            sent_tick: 41,
            seq: 9,
            topic,
            payload,
        }
    }

    #[test]
    fn message_offsets_match_abi() {
        let bytes = msg(MessageKind::Topic, b"sensors", b"\x01\x02").encode();
        assert_eq!(bytes.len(), 48 + 7 + 2);
        assert_eq!(&bytes[0..4], &48u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &3u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &41u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &9u64.to_le_bytes());
        assert_eq!(&bytes[32..36], &7u32.to_le_bytes());
        assert_eq!(&bytes[36..40], &2u32.to_le_bytes());
        assert_eq!(&bytes[40..48], &[0u8; 8]);
        assert_eq!(&bytes[48..55], b"sensors");
        assert_eq!(&bytes[55..], b"\x01\x02");
    }

    #[test]
    fn message_roundtrip_and_accessors() {
        let m = msg(MessageKind::Topic, b"sensors", b"hello");
        let bytes = m.encode();
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed, m);
        assert_eq!(parsed.topic_str(), Some("sensors"));
        assert_eq!(parsed.payload_str(), Some("hello"));
        assert!(!parsed.from_runtime());

        let mut rt = msg(MessageKind::Notice, b"", b"quota");
        rt.sender = RUNTIME_SENDER;
        let bytes = rt.encode();
        let parsed = Message::parse(&bytes).unwrap();
        assert!(parsed.from_runtime());
        assert_eq!(parsed.kind, MessageKind::Notice);
    }

    #[test]
    fn message_kinds() {
        for v in 0..8 {
            assert_eq!(MessageKind::from_u32(v).as_u32(), v);
        }
        assert_eq!(MessageKind::from_u32(3), MessageKind::InferenceResult);
        assert_eq!(MessageKind::from_u32(99), MessageKind::Unknown(99));
    }

    #[test]
    fn message_rejects_bad_layouts() {
        let good = msg(MessageKind::Channel, b"chan", b"data").encode();
        assert!(matches!(
            Message::parse(&good[..47]),
            Err(LayoutError::Truncated { .. })
        ));
        assert!(matches!(
            Message::parse(&good[..55]),
            Err(LayoutError::Truncated { .. })
        ));
        let mut small = good.clone();
        small[0..4].copy_from_slice(&47u32.to_le_bytes());
        assert_eq!(Message::parse(&small), Err(LayoutError::SizeTooSmall(47)));
        let mut over = good;
        over[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        over[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        let r = Message::parse(&over);
        // 48 + 2 * (2^32 - 1) overflows on 32-bit targets, not on 64-bit ones.
        assert!(matches!(
            r,
            Err(LayoutError::Truncated { .. }) | Err(LayoutError::Overflow)
        ));
        assert!(Message::parse(&[0u8; 10]).is_err());
    }

    #[test]
    fn message_grown_fixed_part() {
        let mut bytes = msg(MessageKind::Direct, b"", b"pl").encode();
        bytes.splice(48..48, [0u8; 8]);
        bytes[0..4].copy_from_slice(&56u32.to_le_bytes());
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed.size, 56);
        assert_eq!(parsed.payload, b"pl");
        assert!(parsed.topic.is_empty());
    }
}
