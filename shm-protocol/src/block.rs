//! [`Block`]: records of one kind encoded back to back behind a count,
//! checked once and then read in place — what [`Messages`](crate::messages)
//! and [`Outputs`](crate::outputs) are.
//!
//! A block is written once, by a straight-line encoder, travels as one
//! byte string (its count, then its bytes: one copy) and is checked whole
//! when it is decoded from a peer ([`Block::from_parts`]: exactly `count`
//! well-formed records and nothing after them); after that its records are
//! read where they are ([`Block::iter`]), every name and payload borrowed
//! from the block.  Each kind of record says how one is read
//! ([`Record::parse`]) and which borrowed view it gives.
//!
//! ```
//! use shm_protocol::block::Block;
//! use shm_protocol::messages::Messages;
//! // A message block from a peer: the count and the bytes are checked.
//! let e = Messages::from_parts(1, vec![1, 2]).unwrap_err();
//! assert!(e.contains("message 0 of 1 is malformed"), "{e}");
//! let empty: Messages = Block::from_parts(0, Vec::new()).unwrap();
//! assert!(empty.is_empty());
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::marker::PhantomData;

/// One kind of record a [`Block`] holds.
pub trait Record {
    /// A record borrowed from its block.
    type Ref<'a>;

    /// What one record is called in errors ("message", "output").
    const NAME: &'static str;

    /// Reads the record at `*pos` and moves past it; `None` if the bytes
    /// there are not one (truncated, malformed or not canonical).
    fn parse<'a>(b: &'a [u8], pos: &mut usize) -> Option<Self::Ref<'a>>;
}

/// Records of kind `R`, encoded back to back (see the module docs).
pub struct Block<R> {
    pub(crate) count: u32,
    pub(crate) bytes: Vec<u8>,
    kind: PhantomData<fn() -> R>,
}

impl<R> Block<R> {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    #[inline]
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded records, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Removes every record (keeps the allocation).
    pub fn clear(&mut self) {
        self.count = 0;
        self.bytes.clear();
    }
}

impl<R: Record> Block<R> {
    /// The records in order.
    pub fn iter(&self) -> Iter<'_, R> {
        Iter {
            bytes: &self.bytes,
            pos: 0,
            left: self.count,
            kind: PhantomData,
        }
    }

    /// Removes the first `k` records (all of them if there are fewer).
    pub fn drop_front(&mut self, k: usize) {
        if k >= self.len() {
            self.clear();
            return;
        }
        let mut it = self.iter();
        for _ in 0..k {
            if it.next().is_none() {
                // Cannot happen for a block that was built or checked.
                break;
            }
        }
        let pos = it.offset();
        self.bytes.drain(..pos);
        self.count -= k as u32;
    }

    /// A block from its parts, checked: exactly `count` well-formed records
    /// and nothing after them, in at most `u32::MAX` bytes.
    pub fn from_parts(count: u32, bytes: Vec<u8>) -> Result<Self, String> {
        let name = R::NAME;
        if u32::try_from(bytes.len()).is_err() {
            return Err(format!("a block of {name}s of {} bytes", bytes.len()));
        }
        let mut pos = 0;
        for i in 0..count {
            let at = pos;
            if R::parse(&bytes, &mut pos).is_none() {
                return Err(format!(
                    "{name} {i} of {count} is malformed (at byte {at} of {})",
                    bytes.len()
                ));
            }
        }
        if pos != bytes.len() {
            return Err(format!(
                "{} bytes after the last of {count} {name}s",
                bytes.len() - pos
            ));
        }
        Ok(Self {
            count,
            bytes,
            kind: PhantomData,
        })
    }
}

impl<R> Default for Block<R> {
    fn default() -> Self {
        Self {
            count: 0,
            bytes: Vec::new(),
            kind: PhantomData,
        }
    }
}

impl<R> Clone for Block<R> {
    fn clone(&self) -> Self {
        Self {
            count: self.count,
            bytes: self.bytes.clone(),
            kind: PhantomData,
        }
    }
}

impl<R> PartialEq for Block<R> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.bytes == other.bytes
    }
}

impl<R> Eq for Block<R> {}

impl<R: Record> fmt::Debug for Block<R>
where
    for<'a> R::Ref<'a>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The records of a [`Block`], in order.
pub struct Iter<'a, R> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) left: u32,
    kind: PhantomData<fn() -> R>,
}

impl<R> Iter<'_, R> {
    /// Where the next record starts in the block (its length once every
    /// record has been read).
    #[inline]
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<R> Clone for Iter<'_, R> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes,
            pos: self.pos,
            left: self.left,
            kind: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Iter<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("pos", &self.pos)
            .field("left", &self.left)
            .finish()
    }
}

impl<'a, R: Record> Iterator for Iter<'a, R> {
    type Item = R::Ref<'a>;

    #[inline]
    fn next(&mut self) -> Option<R::Ref<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = R::parse(self.bytes, &mut self.pos);
        if r.is_none() {
            // Cannot happen for a block that was built or checked; stop.
            self.left = 0;
        }
        r
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Exact: a block holds `count` well-formed records.
        (self.left as usize, Some(self.left as usize))
    }
}

impl<R: Record> ExactSizeIterator for Iter<'_, R> {}

impl<'a, R: Record> IntoIterator for &'a Block<R> {
    type Item = R::Ref<'a>;
    type IntoIter = Iter<'a, R>;

    fn into_iter(self) -> Iter<'a, R> {
        self.iter()
    }
}

#[derive(Serialize)]
struct RawRef<'a> {
    count: u32,
    #[serde(with = "serde_bytes")]
    bytes: &'a [u8],
}

#[derive(Deserialize)]
struct Raw {
    count: u32,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// On the wire: the count, then the bytes.
impl<R> Serialize for Block<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawRef {
            count: self.count,
            bytes: &self.bytes,
        }
        .serialize(s)
    }
}

/// Checked as [`Block::from_parts`] checks.
impl<'de, R: Record> Deserialize<'de> for Block<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Raw::deserialize(d)?;
        Self::from_parts(raw.count, raw.bytes).map_err(serde::de::Error::custom)
    }
}
