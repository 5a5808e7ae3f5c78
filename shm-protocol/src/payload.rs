//! [`Payload`]: the bytes of a message, kept inline up to
//! [`Payload::INLINE`] bytes.
//!
//! A tick that routes thousands of messages decodes, moves and frees a
//! payload for each of them in the supervisor and again in the workers;
//! most are a few bytes (an id, a counter, a small record).  Kept inline
//! they cost no allocation and no free anywhere on their way.  On the wire
//! (postcard, JSON) a payload is exactly what a `serde_bytes` byte vector
//! is, so encodings, journals and snapshots do not change.
//!
//! ```
//! use shm_protocol::payload::Payload;
//! let p = Payload::from(&b"ping"[..]);
//! assert_eq!(&p[..], b"ping");
//! let bytes = shm_protocol::codec::encode(&p).unwrap();
//! let v: serde_bytes::ByteBuf = shm_protocol::codec::decode(&bytes).unwrap();
//! assert_eq!(v.into_vec(), b"ping".to_vec());
//! ```

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use std::fmt;
use std::ops::Deref;

/// The bytes of a message (see the module docs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(SmallVec<[u8; Payload::INLINE]>);

impl Payload {
    /// Payloads up to this many bytes are stored inline.
    pub const INLINE: usize = 16;

    /// The bytes, as a vector.
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into_vec()
    }
}

impl Deref for Payload {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Payload {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0[..], f)
    }
}

impl From<&[u8]> for Payload {
    #[inline]
    fn from(b: &[u8]) -> Self {
        Self(SmallVec::from_slice(b))
    }
}

impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(b: &[u8; N]) -> Self {
        Self(SmallVec::from_slice(b))
    }
}

impl From<Vec<u8>> for Payload {
    /// Takes the vector's allocation when the bytes do not fit inline.
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= Self::INLINE {
            Self(SmallVec::from_slice(&v))
        } else {
            Self(SmallVec::from_vec(v))
        }
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Self::from(s.into_bytes())
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Self::from(s.as_bytes())
    }
}

impl From<Payload> for Vec<u8> {
    fn from(p: Payload) -> Self {
        p.into_vec()
    }
}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        self.0[..] == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Payload {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.0[..] == other[..]
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(PayloadVisitor)
    }
}

/// Accepts what `serde_bytes::ByteBuf` accepts: bytes, a string, or a
/// sequence of bytes (JSON's form).
struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte array")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload::from(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::from(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
        // Never trust a peer's size hint beyond what a frame can hold.
        let hint = seq.size_hint().unwrap_or(0).min(4096);
        let mut v = SmallVec::<[u8; Payload::INLINE]>::with_capacity(hint);
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Payload(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    /// A payload encodes exactly as a `serde_bytes` vector, whatever its
    /// length, and decodes back from one.
    #[test]
    fn encodes_as_a_byte_vector() {
        for len in [0usize, 1, 8, 15, 16, 17, 64, 5000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let p = Payload::from(bytes.clone());
            let b = ByteBuf::from(bytes.clone());
            let ep = crate::codec::encode(&p).unwrap();
            assert_eq!(
                ep,
                crate::codec::encode(&b).unwrap(),
                "postcard, {len} bytes"
            );
            let back: Payload = crate::codec::decode(&ep).unwrap();
            assert_eq!(back, p);
            assert_eq!(back.into_vec(), bytes);
        }
    }

    /// Decoding from a sequence of numbers (as JSON writes bytes), a string
    /// or a byte string all give the bytes.
    #[test]
    fn decodes_every_form_serde_bytes_accepts() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{BytesDeserializer, Error, SeqDeserializer, StrDeserializer};
        let seq: SeqDeserializer<_, Error> = SeqDeserializer::new(vec![1u8, 2, 3].into_iter());
        assert_eq!(Payload::deserialize(seq).unwrap(), [1u8, 2, 3]);
        let s: StrDeserializer<'_, Error> = "hi".into_deserializer();
        assert_eq!(Payload::deserialize(s).unwrap(), *b"hi");
        let b: BytesDeserializer<'_, Error> = BytesDeserializer::new(b"xyz");
        assert_eq!(Payload::deserialize(b).unwrap(), *b"xyz");
    }

    #[test]
    fn short_payloads_are_inline() {
        assert!(!Payload::from(&[7u8; 16]).0.spilled());
        assert!(Payload::from(vec![7u8; 17]).0.spilled());
    }
}
