//! [`Messages`]: the messages for one agent in one tick, held as their
//! wire encoding.
//!
//! A tick that routes thousands of messages would, with a vector of
//! [`WireMessage`]s per recipient, serialise each message field by field
//! into the work, deserialise it into a vector again in the worker and then
//! copy it into the agent's memory.  A [`Messages`] block is written once —
//! the supervisor's mailboxes are blocks, and the barrier encodes each
//! message into its recipient's with a straight-line encoder; the work
//! carries the block as one byte string (a copy); the worker checks it as
//! it decodes the work and walks it with [`Messages::iter`], which borrows
//! every topic and payload from the block — no allocation and no second
//! structure per message on the worker's side.
//!
//! Each message is encoded exactly as postcard encodes a [`WireMessage`]
//! (varints for the numbers, a length before the topic and the payload),
//! back to back, so a block is as compact as the vector's encoding was.
//!
//! ```
//! use shm_protocol::messages::Messages;
//! use shm_protocol::worker::WireMessage;
//! let m = WireMessage {
//!     kind: 1,
//!     sender: 7,
//!     sent_tick: 3,
//!     seq: 1,
//!     topic: "prices".into(),
//!     payload: (&b"42"[..]).into(),
//! };
//! let block: Messages = [m.clone(), m.clone()].iter().collect();
//! assert_eq!(block.len(), 2);
//! let first = block.iter().next().unwrap();
//! assert_eq!((first.sender, first.topic, first.payload), (7, "prices", &b"42"[..]));
//! // On the wire: the count, then the bytes.
//! let bytes = shm_protocol::codec::encode(&block).unwrap();
//! assert_eq!(shm_protocol::codec::decode::<Messages>(&bytes).unwrap(), block);
//! assert_eq!(block.to_vec(), vec![m.clone(), m]);
//! ```

use crate::block::{Block, Record};
use crate::codec::{put_short, put_varint, take_bytes, take_varint};
use crate::worker::WireMessage;
use serde::{Serialize, Serializer};

/// Messages in canonical order, encoded (see the module docs).
pub type Messages = Block<MessageRecord>;

/// The records of a [`Messages`] block: each a [`WireMessage`] as
/// postcard encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRecord {}

impl Record for MessageRecord {
    type Ref<'a> = MessageRef<'a>;
    const NAME: &'static str = "message";

    #[inline]
    fn parse<'a>(b: &'a [u8], pos: &mut usize) -> Option<MessageRef<'a>> {
        parse(b, pos)
    }
}

/// One message of a [`Messages`] block, borrowed from it.  It serializes
/// exactly as the [`WireMessage`] it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MessageRef<'a> {
    /// Kind (see [`WireMessage::kind`]).
    pub kind: u32,
    /// Sender agent id (`u64::MAX` for the runtime).
    pub sender: u64,
    /// Tick in which it was produced.
    pub sent_tick: u64,
    /// Sender sequence number (request id for inference answers).
    pub seq: u64,
    /// Topic or channel name (empty for direct messages).
    pub topic: &'a str,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

impl MessageRef<'_> {
    /// An owned copy.
    pub fn to_message(&self) -> WireMessage {
        WireMessage {
            kind: self.kind,
            sender: self.sender,
            sent_tick: self.sent_tick,
            seq: self.seq,
            topic: self.topic.to_owned(),
            payload: self.payload.into(),
        }
    }
}

impl WireMessage {
    /// The message as a [`MessageRef`].
    #[inline]
    pub fn view(&self) -> MessageRef<'_> {
        MessageRef {
            kind: self.kind,
            sender: self.sender,
            sent_tick: self.sent_tick,
            seq: self.seq,
            topic: &self.topic,
            payload: &self.payload,
        }
    }
}

impl Block<MessageRecord> {
    /// Appends a message.
    ///
    /// # Panics
    ///
    /// Past `u32::MAX` messages (a mailbox holds at most its capacity, a
    /// `u32`).
    #[inline]
    pub fn push(&mut self, m: MessageRef<'_>) {
        self.count = self.count.checked_add(1).expect("too many messages");
        // The message is put together in a fixed-size array and appended
        // with one copy of the whole array (a few vector stores, no call)
        // before the vector is cut to its length; only a topic and payload
        // too long for the array are appended separately.
        let mut b = [0u8; PUSH_ARRAY];
        let mut n = 0;
        n = put_varint(&mut b, n, u64::from(m.kind));
        n = put_varint(&mut b, n, m.sender);
        n = put_varint(&mut b, n, m.sent_tick);
        n = put_varint(&mut b, n, m.seq);
        let out = &mut self.bytes;
        if m.topic.len() + m.payload.len() <= PUSH_INLINE {
            n = put_short(&mut b, n, m.topic.as_bytes());
            n = put_short(&mut b, n, m.payload);
            crate::codec::append_array(out, &b, n);
        } else {
            out.reserve(n + 20 + m.topic.len() + m.payload.len());
            out.extend_from_slice(&b[..n]);
            for part in [m.topic.as_bytes(), m.payload] {
                let mut len = [0u8; 10];
                let l = put_varint(&mut len, 0, part.len() as u64);
                out.extend_from_slice(&len[..l]);
                out.extend_from_slice(part);
            }
        }
    }

    /// A block with room for `n` messages of a few bytes each.
    pub fn with_capacity(n: usize) -> Self {
        let mut block = Self::default();
        block.reserve(n);
        block
    }

    /// Makes room for `n` more messages of about 16 bytes each (a direct
    /// message with a payload of a few bytes between agents with small
    /// ids); longer ones grow the block as they are pushed.
    pub fn reserve(&mut self, n: usize) {
        if n > 0 {
            self.bytes.reserve(n * 16 + PUSH_ARRAY);
        }
    }

    /// The messages as a sequence of [`WireMessage`]s for serde: the same
    /// encoding as a `Vec<WireMessage>` holding them.
    pub fn as_seq(&self) -> AsSeq<'_> {
        AsSeq(self)
    }

    /// Owned copies of the messages.
    pub fn to_vec(&self) -> Vec<WireMessage> {
        self.iter().map(|m| m.to_message()).collect()
    }
}

impl<'a> FromIterator<&'a WireMessage> for Messages {
    fn from_iter<I: IntoIterator<Item = &'a WireMessage>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut block = Self::with_capacity(iter.size_hint().0);
        for m in iter {
            block.push(m.view());
        }
        block
    }
}

impl From<&[WireMessage]> for Messages {
    fn from(v: &[WireMessage]) -> Self {
        v.iter().collect()
    }
}

impl From<Vec<WireMessage>> for Messages {
    fn from(v: Vec<WireMessage>) -> Self {
        v.iter().collect()
    }
}

/// [`Messages::as_seq`].
#[derive(Debug, Clone, Copy)]
pub struct AsSeq<'a>(&'a Messages);

impl Serialize for AsSeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// Bytes of topic and payload that [`Messages::push`] puts together in
/// its array.
const PUSH_INLINE: usize = 32;

/// The array: four varints, two lengths and the inline bytes.
const PUSH_ARRAY: usize = 4 * 10 + 2 * 10 + PUSH_INLINE;

#[inline]
fn parse<'a>(b: &'a [u8], pos: &mut usize) -> Option<MessageRef<'a>> {
    let kind = u32::try_from(take_varint(b, pos, 5)?).ok()?;
    let sender = take_varint(b, pos, 10)?;
    let sent_tick = take_varint(b, pos, 10)?;
    let seq = take_varint(b, pos, 10)?;
    let topic = match take_bytes(b, pos)? {
        // A direct message's: no call into the UTF-8 check.
        [] => "",
        t => std::str::from_utf8(t).ok()?,
    };
    let payload = take_bytes(b, pos)?;
    Some(MessageRef {
        kind,
        sender,
        sent_tick,
        seq,
        topic,
        payload,
    })
}

/// On the wire: `(count, bytes)`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = WireMessage> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            "[a-z\u{e9}\u{1F600}]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(
                |(kind, sender, sent_tick, seq, topic, payload)| WireMessage {
                    kind,
                    sender,
                    sent_tick,
                    seq,
                    topic,
                    payload: payload.into(),
                },
            )
    }

    proptest! {
        /// A block is postcard's encoding of each message, back to back;
        /// it reads back as the same messages, alone and inside the wire
        /// encoding of a block.
        #[test]
        fn a_block_is_each_message_as_postcard_encodes_it(
            msgs in proptest::collection::vec(message(), 0..20)
        ) {
            let block = Messages::from(&msgs[..]);
            let reference: Vec<u8> = msgs
                .iter()
                .flat_map(|m| postcard::to_stdvec(m).unwrap())
                .collect();
            prop_assert_eq!(block.as_bytes(), &reference[..]);
            prop_assert_eq!(block.len(), msgs.len());
            prop_assert_eq!(&block.to_vec(), &msgs);
            let wire = codec::encode(&block).unwrap();
            prop_assert_eq!(&codec::decode::<Messages>(&wire).unwrap(), &block);
            // As a sequence, and message by message, it is what the
            // messages' own vector encodes to.
            prop_assert_eq!(
                codec::encode(&block.as_seq()).unwrap(),
                codec::encode(&msgs).unwrap()
            );
            prop_assert_eq!(
                serde_json::to_string(&block.as_seq()).unwrap(),
                serde_json::to_string(&msgs).unwrap()
            );
            // Dropping the first k leaves the rest.
            for k in 0..=msgs.len() + 1 {
                let mut rest = block.clone();
                rest.drop_front(k);
                prop_assert_eq!(rest, Messages::from(&msgs[k.min(msgs.len())..]));
            }
        }

        /// Any bytes with any count: a block or an error, never a panic;
        /// a block that is accepted iterates over exactly its count.
        #[test]
        fn arbitrary_blocks_are_checked(
            count in 0u32..8,
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(b) = Messages::from_parts(count, bytes) {
                prop_assert_eq!(b.iter().count(), count as usize);
            }
        }
    }

    #[test]
    fn truncated_trailing_and_miscounted_blocks_are_errors() {
        let m = WireMessage {
            kind: 0,
            sender: 300,
            sent_tick: 9,
            seq: 1,
            topic: String::new(),
            payload: (&b"abc"[..]).into(),
        };
        let block = Messages::from(vec![m.clone(), m]);
        let bytes = block.as_bytes().to_vec();
        assert!(Messages::from_parts(2, bytes.clone()).is_ok());
        assert!(
            Messages::from_parts(3, bytes.clone())
                .unwrap_err()
                .contains("message 2 of 3")
        );
        assert!(
            Messages::from_parts(1, bytes.clone())
                .unwrap_err()
                .contains("bytes after the last of 1")
        );
        assert!(Messages::from_parts(2, bytes[..bytes.len() - 1].to_vec()).is_err());
        // A topic that is not UTF-8.
        let bad = vec![0, 1, 1, 1, 1, 0xff, 0];
        assert!(Messages::from_parts(1, bad).is_err());
        // A kind past u32 and an eleven-byte varint.
        assert!(
            Messages::from_parts(1, vec![0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0]).is_err()
        );
        let mut long = vec![0];
        long.extend([0xff; 10]);
        long.extend([1, 1, 0, 0]);
        assert!(Messages::from_parts(1, long).is_err());
    }
}
