//! [`Outputs`]: what one agent asked for in one tick, held as its wire
//! encoding.
//!
//! An agent that sends ten messages a step would, with a vector of
//! [`Output`]s, have each message copied into a payload, serialised field
//! by field into the worker's reply, deserialised into a vector again by
//! the supervisor and serialised a second time into the tick hash.  An
//! [`Outputs`] block is written once, by the worker, as the agent makes
//! each call (a direct message straight from the agent's memory, with a
//! straight-line encoder); the reply carries it as one byte string; the
//! supervisor checks it once as it decodes the reply, hashes it as it is
//! and walks it with [`Outputs::iter`], which borrows every name and
//! payload from the block.
//!
//! Each output is encoded exactly as postcard encodes an [`Output`],
//! back to back, so the count and the bytes are the bytes postcard writes
//! for a `Vec<Output>` holding them — what the tick hash has always
//! covered.  A block is checked to be *canonical*: every varint in its
//! shortest form, so the bytes are a function of the outputs and decoding
//! then encoding them gives the same bytes.
//!
//! ```
//! use shm_protocol::outputs::{OutputRef, Outputs};
//! use shm_protocol::worker::Output;
//! let mut block = Outputs::new();
//! block.push_send(7, 1, b"hi");
//! block.push(&Output::Subscribe("prices".into()));
//! assert_eq!(block.len(), 2);
//! let mut it = block.iter();
//! assert_eq!(it.next(), Some(OutputRef::Send { to: 7, seq: 1, payload: &b"hi"[..] }));
//! assert_eq!(it.next(), Some(OutputRef::Subscribe("prices")));
//! // On the wire: the count, then the bytes; decoding checks them.
//! let bytes = shm_protocol::codec::encode(&block).unwrap();
//! assert_eq!(shm_protocol::codec::decode::<Outputs>(&bytes).unwrap(), block);
//! assert_eq!(block.to_vec()[1], Output::Subscribe("prices".into()));
//! ```

use crate::block::{Block, Iter, Record};
use crate::codec::{append_array, encode_into, put_short, put_varint, take_bytes, take_varint};
use crate::worker::Output;
use std::fmt;

/// An agent's outputs in the order it produced them, encoded (see the
/// module docs).
pub type Outputs = Block<OutputRecord>;

/// The records of an [`Outputs`] block: each an [`Output`] as postcard
/// encodes it, canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRecord {}

impl Record for OutputRecord {
    type Ref<'a> = OutputRef<'a>;
    const NAME: &'static str = "output";

    #[inline(always)]
    fn parse<'a>(b: &'a [u8], pos: &mut usize) -> Option<OutputRef<'a>> {
        parse(b, pos)
    }
}

/// One output of an [`Outputs`] block, borrowed from it: the [`Output`]
/// it stands for, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputRef<'a> {
    /// [`Output::Send`].
    Send {
        /// Recipient.
        to: u64,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: &'a [u8],
    },
    /// [`Output::Publish`].
    Publish {
        /// Topic.
        topic: &'a str,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: &'a [u8],
    },
    /// [`Output::ChannelSend`].
    ChannelSend {
        /// Channel.
        channel: &'a str,
        /// Sender sequence.
        seq: u64,
        /// Payload.
        payload: &'a [u8],
    },
    /// [`Output::Subscribe`].
    Subscribe(&'a str),
    /// [`Output::Unsubscribe`].
    Unsubscribe(&'a str),
    /// [`Output::Join`].
    Join(&'a str),
    /// [`Output::Leave`].
    Leave(&'a str),
    /// [`Output::ScheduleTask`].
    ScheduleTask {
        /// Its id.
        task_id: u64,
        /// The agent that runs it.
        target: u64,
        /// Priority.
        priority: i32,
        /// Payload.
        payload: &'a [u8],
        /// Tasks it depends on.
        deps: Deps<'a>,
    },
    /// [`Output::Infer`].
    Infer {
        /// Request id.
        request_id: u64,
        /// Model.
        model: &'a str,
        /// Input tensor.
        input: &'a [u8],
    },
    /// [`Output::Log`].
    Log {
        /// 0 error … 4 trace.
        level: u8,
        /// Text.
        line: &'a str,
    },
}

/// The dependencies of an [`OutputRef::ScheduleTask`]: task ids, as
/// varints in the block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Deps<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Deps<'a> {
    /// Number of dependencies.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The task ids in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        let bytes = self.bytes;
        let mut pos = 0;
        // The ids were checked when the block was.
        (0..self.count).map_while(move |_| take_varint(bytes, &mut pos, 10))
    }
}

impl fmt::Debug for Deps<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl OutputRef<'_> {
    /// An owned copy.
    pub fn to_output(&self) -> Output {
        match *self {
            Self::Send { to, seq, payload } => Output::Send {
                to,
                seq,
                payload: payload.into(),
            },
            Self::Publish {
                topic,
                seq,
                payload,
            } => Output::Publish {
                topic: topic.to_owned(),
                seq,
                payload: payload.into(),
            },
            Self::ChannelSend {
                channel,
                seq,
                payload,
            } => Output::ChannelSend {
                channel: channel.to_owned(),
                seq,
                payload: payload.into(),
            },
            Self::Subscribe(t) => Output::Subscribe(t.to_owned()),
            Self::Unsubscribe(t) => Output::Unsubscribe(t.to_owned()),
            Self::Join(c) => Output::Join(c.to_owned()),
            Self::Leave(c) => Output::Leave(c.to_owned()),
            Self::ScheduleTask {
                task_id,
                target,
                priority,
                payload,
                deps,
            } => Output::ScheduleTask {
                task_id,
                target,
                priority,
                payload: payload.to_vec(),
                deps: deps.iter().collect(),
            },
            Self::Infer {
                request_id,
                model,
                input,
            } => Output::Infer {
                request_id,
                model: model.to_owned(),
                input: input.to_vec(),
            },
            Self::Log { level, line } => Output::Log {
                level,
                line: line.to_owned(),
            },
        }
    }
}

/// Where an output starts in its block ([`Iter::offset`],
/// [`Outputs::send_at`]).
pub type Offset = u32;

/// A point to cut a block back to ([`Outputs::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    count: u32,
    len: usize,
}

impl Block<OutputRecord> {
    /// Whether another output fits (a block counts at most `u32::MAX`
    /// outputs and holds at most `u32::MAX` bytes before the last one, so
    /// that an [`Offset`] can name each).
    #[inline]
    pub fn has_room(&self) -> bool {
        self.count < u32::MAX && self.bytes.len() <= Offset::MAX as usize
    }

    /// Appends a direct message: the bytes postcard writes for
    /// `Output::Send { to, seq, payload }`, put together in a fixed-size
    /// array when the payload is short.
    ///
    /// # Panics
    ///
    /// Without [`room`](Self::has_room) for it.
    #[inline]
    pub fn push_send(&mut self, to: u64, seq: u64, payload: &[u8]) {
        self.count_one();
        let mut b = [0u8; 1 + 10 + 10 + 10 + SHORT_SEND];
        // Variant 0.
        let mut n = put_varint(&mut b, 0, 0);
        n = put_varint(&mut b, n, to);
        n = put_varint(&mut b, n, seq);
        if payload.len() <= SHORT_SEND {
            n = put_short(&mut b, n, payload);
            append_array(&mut self.bytes, &b, n);
        } else {
            n = put_varint(&mut b, n, payload.len() as u64);
            self.bytes.reserve(n + payload.len());
            self.bytes.extend_from_slice(&b[..n]);
            self.bytes.extend_from_slice(payload);
        }
    }

    /// Appends an output.
    ///
    /// # Panics
    ///
    /// Without [`room`](Self::has_room) for it.
    pub fn push(&mut self, o: &Output) {
        if let Output::Send { to, seq, payload } = o {
            self.push_send(*to, *seq, payload);
            return;
        }
        self.count_one();
        // Encoding into a vector cannot fail.
        let _ = encode_into(o, &mut self.bytes);
    }

    #[inline]
    fn count_one(&mut self) {
        assert!(self.has_room(), "too many outputs in one block");
        self.count += 1;
        if self.bytes.capacity() == 0 {
            // Room for a few short messages at once, rather than growing
            // from 8 bytes by doubling.
            self.bytes.reserve(FIRST_RESERVE);
        }
    }

    /// The current end, to [`truncate`](Self::truncate) back to.
    pub fn mark(&self) -> Mark {
        Mark {
            count: self.count,
            len: self.bytes.len(),
        }
    }

    /// Removes every output pushed since `mark` was taken (nothing if the
    /// block is no longer than it was then).
    pub fn truncate(&mut self, mark: Mark) {
        if mark.count < self.count && mark.len <= self.bytes.len() {
            self.count = mark.count;
            self.bytes.truncate(mark.len);
        }
    }

    /// The outputs other than direct messages, in order (direct messages
    /// are skipped without being read whole).
    pub fn others(&self) -> impl Iterator<Item = OutputRef<'_>> {
        let mut it = self.iter();
        std::iter::from_fn(move || {
            while it.next_send().is_some() {}
            it.next()
        })
    }

    /// The direct message at `at` (an [`offset`](Iter::offset) the
    /// iterator gave): its recipient, sequence number and payload; `None` if no
    /// direct message starts there.
    #[inline]
    pub fn send_at(&self, at: Offset) -> Option<(u64, u64, &[u8])> {
        let mut pos = at as usize;
        if *self.bytes.get(pos)? != 0 {
            return None;
        }
        pos += 1;
        let to = take_varint(&self.bytes, &mut pos, 10)?;
        let seq = take_varint(&self.bytes, &mut pos, 10)?;
        let payload = take_bytes(&self.bytes, &mut pos)?;
        Some((to, seq, payload))
    }

    /// Owned copies of the outputs.
    pub fn to_vec(&self) -> Vec<Output> {
        self.iter().map(|o| o.to_output()).collect()
    }
}

/// Bytes a block reserves at its first output.
const FIRST_RESERVE: usize = 256;

/// Payload bytes of a direct message that [`Outputs::push_send`] puts
/// together in its array.
const SHORT_SEND: usize = 32;

impl From<&[Output]> for Outputs {
    fn from(v: &[Output]) -> Self {
        let mut block = Self::new();
        for o in v {
            block.push(o);
        }
        block
    }
}

impl From<Vec<Output>> for Outputs {
    fn from(v: Vec<Output>) -> Self {
        Self::from(&v[..])
    }
}

impl FromIterator<Output> for Outputs {
    fn from_iter<I: IntoIterator<Item = Output>>(iter: I) -> Self {
        let mut block = Self::new();
        for o in iter {
            block.push(&o);
        }
        block
    }
}

impl Iter<'_, OutputRecord> {
    /// If the next output is a direct message: moves past it and returns
    /// where it starts and its recipient.  Routing reads only that much of
    /// most outputs, without an [`OutputRef`] in between.
    #[inline(always)]
    pub fn next_send(&mut self) -> Option<(Offset, u64)> {
        if self.left == 0 || self.bytes.get(self.pos) != Some(&0) {
            return None;
        }
        let mut pos = self.pos + 1;
        let to = take_varint(self.bytes, &mut pos, 10)?;
        take_varint(self.bytes, &mut pos, 10)?;
        take_bytes(self.bytes, &mut pos)?;
        // A block holds at most `u32::MAX` bytes (checked or pushed).
        let at = self.pos as Offset;
        self.pos = pos;
        self.left -= 1;
        Some((at, to))
    }
}

#[inline]
fn take_str<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    std::str::from_utf8(take_bytes(b, pos)?).ok()
}

/// Postcard's zigzag varint of an `i32`.
fn take_i32(b: &[u8], pos: &mut usize) -> Option<i32> {
    let z = u32::try_from(take_varint(b, pos, 5)?).ok()?;
    Some(((z >> 1) as i32) ^ -((z & 1) as i32))
}

/// One output as postcard encodes an [`Output`] (variant index, then the
/// fields in order), canonical.  A direct message, most of a busy tick's
/// outputs, is read inline; the other variants by a call.
#[inline(always)]
fn parse<'a>(b: &'a [u8], pos: &mut usize) -> Option<OutputRef<'a>> {
    if b.get(*pos) == Some(&0) {
        *pos += 1;
        return Some(OutputRef::Send {
            to: take_varint(b, pos, 10)?,
            seq: take_varint(b, pos, 10)?,
            payload: take_bytes(b, pos)?,
        });
    }
    parse_other(b, pos)
}

/// [`parse`] for every variant but a direct message.
#[inline(never)]
fn parse_other<'a>(b: &'a [u8], pos: &mut usize) -> Option<OutputRef<'a>> {
    let variant = take_varint(b, pos, 5)?;
    Some(match variant {
        1 => OutputRef::Publish {
            topic: take_str(b, pos)?,
            seq: take_varint(b, pos, 10)?,
            payload: take_bytes(b, pos)?,
        },
        2 => OutputRef::ChannelSend {
            channel: take_str(b, pos)?,
            seq: take_varint(b, pos, 10)?,
            payload: take_bytes(b, pos)?,
        },
        3 => OutputRef::Subscribe(take_str(b, pos)?),
        4 => OutputRef::Unsubscribe(take_str(b, pos)?),
        5 => OutputRef::Join(take_str(b, pos)?),
        6 => OutputRef::Leave(take_str(b, pos)?),
        7 => {
            let task_id = take_varint(b, pos, 10)?;
            let target = take_varint(b, pos, 10)?;
            let priority = take_i32(b, pos)?;
            let payload = take_bytes(b, pos)?;
            let count = usize::try_from(take_varint(b, pos, 10)?).ok()?;
            let start = *pos;
            for _ in 0..count {
                take_varint(b, pos, 10)?;
            }
            OutputRef::ScheduleTask {
                task_id,
                target,
                priority,
                payload,
                deps: Deps {
                    count,
                    bytes: &b[start..*pos],
                },
            }
        }
        8 => OutputRef::Infer {
            request_id: take_varint(b, pos, 10)?,
            model: take_str(b, pos)?,
            input: take_bytes(b, pos)?,
        },
        9 => {
            let level = *b.get(*pos)?;
            *pos += 1;
            OutputRef::Log {
                level,
                line: take_str(b, pos)?,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z\u{e9}\u{1F600}]{0,12}"
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    /// Every variant, with payloads short and long (the array encoder's
    /// limit is 32 bytes) and numbers of every varint length.
    pub(crate) fn output() -> impl Strategy<Value = Output> {
        let num = prop_oneof![0..200u64, any::<u64>()];
        prop_oneof![
            4 => (num.clone(), num.clone(), bytes(70)).prop_map(|(to, seq, p)| Output::Send {
                to,
                seq,
                payload: p.into()
            }),
            1 => (name(), num.clone(), bytes(40)).prop_map(|(topic, seq, p)| Output::Publish {
                topic,
                seq,
                payload: p.into()
            }),
            1 => (name(), num.clone(), bytes(40)).prop_map(|(channel, seq, p)| Output::ChannelSend {
                channel,
                seq,
                payload: p.into()
            }),
            1 => name().prop_map(Output::Subscribe),
            1 => name().prop_map(Output::Unsubscribe),
            1 => name().prop_map(Output::Join),
            1 => name().prop_map(Output::Leave),
            1 => (
                num.clone(),
                num.clone(),
                any::<i32>(),
                bytes(40),
                proptest::collection::vec(num.clone(), 0..5)
            )
                .prop_map(|(task_id, target, priority, payload, deps)| {
                    Output::ScheduleTask {
                        task_id,
                        target,
                        priority,
                        payload,
                        deps,
                    }
                }),
            1 => (num, name(), bytes(40)).prop_map(|(request_id, model, input)| Output::Infer {
                request_id,
                model,
                input
            }),
            1 => (any::<u8>(), name()).prop_map(|(level, line)| Output::Log { level, line }),
        ]
    }

    proptest! {
        /// A block is the bytes postcard writes for the outputs, reads
        /// back as them (in place and through the wire), and names each
        /// direct message by its offset.
        #[test]
        fn a_block_is_each_output_as_postcard_encodes_it(
            outs in proptest::collection::vec(output(), 0..20)
        ) {
            let block = Outputs::from(&outs[..]);
            let reference: Vec<u8> = outs
                .iter()
                .flat_map(|o| postcard::to_stdvec(o).unwrap())
                .collect();
            prop_assert_eq!(block.as_bytes(), &reference[..]);
            prop_assert_eq!(block.len(), outs.len());
            prop_assert_eq!(&block.to_vec(), &outs);
            // The count and the bytes are a `Vec<Output>`'s encoding.
            let mut as_vec = postcard::to_stdvec(&(outs.len() as u64)).unwrap();
            as_vec.extend_from_slice(block.as_bytes());
            prop_assert_eq!(as_vec, postcard::to_stdvec(&outs).unwrap());
            let wire = codec::encode(&block).unwrap();
            prop_assert_eq!(&codec::decode::<Outputs>(&wire).unwrap(), &block);
            let others: Vec<Output> = outs
                .iter()
                .filter(|o| !matches!(o, Output::Send { .. }))
                .cloned()
                .collect();
            prop_assert_eq!(
                block.others().map(|o| o.to_output()).collect::<Vec<_>>(),
                others
            );
            let mut it = block.iter();
            for orig in &outs {
                let at = it.offset() as Offset;
                let o = it.next().unwrap();
                let sent = block.send_at(at);
                match orig {
                    Output::Send { to, seq, payload } => {
                        prop_assert_eq!(sent, Some((*to, *seq, &payload[..])));
                    }
                    _ => prop_assert_eq!(sent, None),
                }
                prop_assert_eq!(&o.to_output(), orig);
            }
        }

        /// Cutting back to a mark leaves exactly what was there.
        #[test]
        fn truncate_to_a_mark(
            first in proptest::collection::vec(output(), 0..6),
            then in proptest::collection::vec(output(), 0..6),
        ) {
            let mut block = Outputs::from(&first[..]);
            let mark = block.mark();
            for o in &then {
                block.push(o);
            }
            block.truncate(mark);
            prop_assert_eq!(block, Outputs::from(&first[..]));
        }

        /// Arbitrary bytes with an arbitrary count are a block or an error,
        /// never a panic; a block they make holds outputs whose encoding
        /// is exactly those bytes (canonical).
        #[test]
        fn arbitrary_bytes_are_a_canonical_block_or_an_error(
            count in 0u32..6,
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Ok(block) = Outputs::from_parts(count, bytes.clone()) {
                let again = Outputs::from(block.to_vec());
                prop_assert_eq!(again.as_bytes(), &bytes[..]);
                prop_assert_eq!(again.len(), count as usize);
            }
        }

        /// What the worker encodes, bytes mutated at one place, is still
        /// a block or an error.
        #[test]
        fn mutated_blocks_never_panic(
            outs in proptest::collection::vec(output(), 1..6),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let block = Outputs::from(&outs[..]);
            let mut bytes = block.as_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(b) = Outputs::from_parts(block.len() as u32, bytes.clone()) {
                let again = Outputs::from(b.to_vec());
                prop_assert_eq!(again.as_bytes(), &bytes[..]);
            }
        }
    }

    #[test]
    fn malformed_blocks_name_the_output() {
        let mut block = Outputs::new();
        block.push_send(1, 1, b"x");
        block.push(&Output::Subscribe("t".into()));
        let bytes = block.as_bytes().to_vec();
        // Truncated.
        let e = Outputs::from_parts(2, bytes[..bytes.len() - 1].to_vec()).unwrap_err();
        assert!(e.contains("output 1 of 2"), "{e}");
        // Miscounted.
        let e = Outputs::from_parts(1, bytes.clone()).unwrap_err();
        assert!(e.contains("bytes after the last of 1 outputs"), "{e}");
        assert!(Outputs::from_parts(3, bytes.clone()).is_err());
        // An unknown variant.
        assert!(Outputs::from_parts(1, vec![10, 0]).is_err());
        // A recipient written longer than it needs to be (0x81 0x00 for 1).
        let e = Outputs::from_parts(1, vec![0, 0x81, 0x00, 1, 0]).unwrap_err();
        assert!(e.contains("output 0 of 1"), "{e}");
        assert!(Outputs::from_parts(1, vec![0, 1, 1, 0]).is_ok());
        // A topic that is not UTF-8.
        assert!(Outputs::from_parts(1, vec![3, 1, 0xff]).is_err());
    }
}
