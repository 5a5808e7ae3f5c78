//! `serde` + `postcard` encoding of control messages.
//!
//! A message travels as one ring frame of kind [`KIND_MESSAGE`] whose payload
//! is the postcard encoding of the value.  A message larger than a ring's
//! largest frame is split by the endpoint (never by its callers) into frames
//! of kind [`KIND_FRAGMENT`] followed by a final [`KIND_MESSAGE`] frame; the
//! receiver joins them, up to [`MAX_MESSAGE`] bytes.  Decoding is strict: malformed bytes,
//! unknown enum variants and trailing bytes are all a [`CodecError`], never a
//! panic; length prefixes cannot make the decoder pre-allocate more than
//! serde's cautious bound.

use serde::{Serialize, de::DeserializeOwned};

/// Frame kind of a postcard-encoded control message.
pub const KIND_MESSAGE: u32 = 1;
/// Frame kind of a leading piece of a message too large for one frame (the
/// message ends with a [`KIND_MESSAGE`] frame).
pub const KIND_FRAGMENT: u32 = 2;
/// Largest encoded message accepted from a peer (1 GiB): a peer that sends
/// more fragments than this breaks the protocol.
pub const MAX_MESSAGE: usize = 1 << 30;

/// Encoding/decoding failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("could not encode message")]
    Encode(#[source] postcard::Error),
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed message ({len} bytes)")]
    Decode {
        /// Length of the rejected payload.
        len: usize,
        /// The decoder's complaint.
        #[source]
        source: postcard::Error,
    },
    /// A valid message followed by unexpected bytes.
    #[error("message has {extra} trailing bytes")]
    Trailing {
        /// Number of bytes left over.
        extra: usize,
    },
}

/// Appends the encoding of `msg` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(msg: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    postcard::serialize_with_flavor(msg, Appending { out }).map_err(CodecError::Encode)
}

/// The postcard flavor of [`encode_into`] and [`encode`]: postcard writes
/// every field (a varint, a tag) as a slice of a few bytes, and appending
/// those with `extend_from_slice` (as postcard's own vector flavor does)
/// calls `memcpy` for each — a fifth of the supervisor's time in a tick
/// that routes 10,000 messages.  Short slices are pushed byte by byte
/// instead.
struct Appending<'a> {
    out: &'a mut Vec<u8>,
}

impl postcard::ser_flavors::Flavor for Appending<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.out.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= SHORT {
            for &b in data {
                self.out.push(b);
            }
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The number of bytes `msg` encodes to (a pass over it that writes
/// nothing).
pub fn encoded_len<T: Serialize + ?Sized>(msg: &T) -> Result<usize, CodecError> {
    postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(CodecError::Encode)
}

/// Slices up to this many bytes are copied byte by byte by this module's
/// flavors (a `memcpy` call costs more than the copy).
const SHORT: usize = 16;

/// Encodes `msg` into `out`, which must be at least [`encoded_len`]
/// bytes; returns the bytes written.
pub fn encode_to_slice<T: Serialize + ?Sized>(
    msg: &T,
    out: &mut [u8],
) -> Result<usize, CodecError> {
    postcard::serialize_with_flavor(msg, Filling { out, len: 0 }).map_err(CodecError::Encode)
}

/// The postcard flavor of [`encode_to_slice`] (postcard's own slice flavor
/// calls `memcpy` for every field, as its vector flavor does).
struct Filling<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl postcard::ser_flavors::Flavor for Filling<'_> {
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        let slot = self
            .out
            .get_mut(self.len)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = data;
        self.len += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self
            .len
            .checked_add(data.len())
            .filter(|&end| end <= self.out.len())
            .ok_or(postcard::Error::SerializeBufferFull)?;
        let dst = &mut self.out[self.len..end];
        if data.len() <= SHORT {
            for (d, &b) in dst.iter_mut().zip(data) {
                *d = b;
            }
        } else {
            dst.copy_from_slice(data);
        }
        self.len = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// Encodes `msg` into `sink` piece by piece, through a 4 KiB buffer: the
/// bytes of [`encode`] without a buffer the size of the message (hashing
/// a large state, for instance).
pub fn encode_to_sink<T: Serialize + ?Sized>(
    msg: &T,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), CodecError> {
    postcard::serialize_with_flavor(
        msg,
        Streaming {
            buf: [0; 4096],
            len: 0,
            sink,
        },
    )
    .map_err(CodecError::Encode)
}

/// The postcard flavor of [`encode_to_sink`].
struct Streaming<'a> {
    buf: [u8; 4096],
    len: usize,
    sink: &'a mut dyn FnMut(&[u8]),
}

impl Streaming<'_> {
    fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl postcard::ser_flavors::Flavor for Streaming<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = data;
        self.len += 1;
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.buf.len() - self.len {
            self.flush();
            if data.len() >= self.buf.len() {
                (self.sink)(data);
                return Ok(());
            }
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.flush();
        Ok(())
    }
}

/// Encodes `msg` into a new vector.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Decodes exactly one `T` from `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|source| CodecError::Decode {
            len: bytes.len(),
            source,
        })?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing { extra: rest.len() });
    }
    Ok(value)
}

/// Decodes `bytes` as every control message type (fuzz entry point).
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) {
    let _ = decode::<crate::control::Down>(bytes);
    let _ = decode::<crate::control::Up>(bytes);
}

/// Writes `v` as postcard writes a `u64` (a varint) at `b[n..]`; returns
/// the end.  With [`put_short`] and [`append_array`], for hot encoders
/// that put a record together in a fixed-size array: no capacity check and
/// no `memcpy` call per field.
///
/// # Panics
///
/// If the array is too short (its size is a constant of the caller's).
#[inline]
pub fn put_varint<const N: usize>(b: &mut [u8; N], mut n: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        b[n] = v as u8 | 0x80;
        n += 1;
        v >>= 7;
    }
    b[n] = v as u8;
    n + 1
}

/// Writes `s` as postcard writes a byte string (its length, then the
/// bytes, byte by byte) at `b[n..]`; returns the end.
///
/// # Panics
///
/// If the array is too short.
#[inline]
pub fn put_short<const N: usize>(b: &mut [u8; N], n: usize, s: &[u8]) -> usize {
    let n = put_varint(b, n, s.len() as u64);
    let end = n + s.len();
    copy_short(&mut b[n..end], s);
    end
}

/// Copies `src` into `dst` (the same length) without a `memcpy` call for
/// the short strings hot encoders copy: 4 to 32 bytes as two fixed-size
/// copies that overlap in the middle, fewer byte by byte.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    match len {
        0..4 => {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = x;
            }
        }
        4..8 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[len - 4..].copy_from_slice(&src[len - 4..]);
        }
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[len - 8..].copy_from_slice(&src[len - 8..]);
        }
        17..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[len - 16..].copy_from_slice(&src[len - 16..]);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Appends the first `n` bytes of `b` to `out`: the whole array is copied
/// (a fixed-size copy: a few vector stores) and the vector cut back.
#[inline]
pub fn append_array<const N: usize>(out: &mut Vec<u8>, b: &[u8; N], n: usize) {
    let start = out.len();
    out.extend_from_slice(b);
    out.truncate(start + n.min(N));
}

/// Reads a varint as postcard writes one, of at most `max` bytes (5 for a
/// `u32`, 10 for a `u64`) whose value fits in `max * 7` bits, or in 64 for
/// a ten-byte one; `None` if the bytes end first, the value is too large
/// or the varint is longer than it needs to be (a final zero byte after
/// the first: postcard never writes one, so every value has one encoding).
#[inline(always)]
pub fn take_varint(b: &[u8], pos: &mut usize, max: u32) -> Option<u64> {
    // One byte: most lengths, sequence numbers and small ids; two: the
    // rest of them below 16,384 (`max` is at least 2 for every caller).
    let first = *b.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    if let Some(&second) = b.get(*pos + 1)
        && second < 0x80
        && second != 0
        && max >= 2
    {
        *pos += 2;
        return Some(u64::from(first & 0x7f) | (u64::from(second) << 7));
    }
    take_long_varint(b, pos, max)
}

/// [`take_varint`] of two bytes or more.
#[inline]
fn take_long_varint(b: &[u8], pos: &mut usize, max: u32) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..max {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if (i == 9 && byte > 1) || (i > 0 && byte == 0) {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads a byte string as postcard writes one (its length, then the
/// bytes), borrowed from `b`.
#[inline(always)]
pub fn take_bytes<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(b, pos, 10)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = b.get(*pos..end)?;
    *pos = end;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Down, Hello, Role, Up};

    #[test]
    fn round_trip() {
        let m = Up::Hello(Hello {
            protocol: 1,
            role: Role::Worker,
            pid: 42,
            name: "worker-0".into(),
            build: "0.1.0".into(),
        });
        assert_eq!(decode::<Up>(&encode(&m).unwrap()).unwrap(), m);
    }

    proptest::proptest! {
        /// Streamed, sized, sliced and plain encodings are the same bytes,
        /// whatever the mix of small fields and large byte strings.
        #[test]
        fn every_encoding_path_gives_the_same_bytes(
            parts in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000)),
                0..12,
            )
        ) {
            let msg: Vec<(u64, serde_bytes::ByteBuf)> = parts
                .into_iter()
                .map(|(n, b)| (n, serde_bytes::ByteBuf::from(b)))
                .collect();
            let plain = encode(&msg).unwrap();
            // The reference: postcard's own vector flavor.
            proptest::prop_assert_eq!(&plain, &postcard::to_stdvec(&msg).unwrap());
            let mut appended = vec![7u8];
            encode_into(&msg, &mut appended).unwrap();
            proptest::prop_assert_eq!(&appended[1..], &plain[..]);
            let mut streamed = Vec::new();
            encode_to_sink(&msg, &mut |b: &[u8]| streamed.extend_from_slice(b)).unwrap();
            proptest::prop_assert_eq!(&streamed, &plain);
            proptest::prop_assert_eq!(encoded_len(&msg).unwrap(), plain.len());
            let mut sliced = vec![0u8; plain.len()];
            proptest::prop_assert_eq!(encode_to_slice(&msg, &mut sliced).unwrap(), plain.len());
            proptest::prop_assert_eq!(&sliced, &plain);
            // A slice one byte short is an error, not a panic.
            let mut short = vec![0u8; plain.len() - 1];
            proptest::prop_assert!(encode_to_slice(&msg, &mut short).is_err());
        }
    }

    proptest::proptest! {
        /// The array encoders write what postcard writes; the readers take
        /// back exactly that and refuse the same value written longer.
        #[test]
        fn varints_and_short_strings_round_trip(
            v in proptest::prop_oneof![0..20_000u64, proptest::prelude::any::<u64>()],
            s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..70),
        ) {
            let mut b = [0u8; 90];
            let n = put_varint(&mut b, 0, v);
            let end = put_short(&mut b, n, &s);
            proptest::prop_assert_eq!(&b[..end], &postcard::to_stdvec(&(v, serde_bytes::Bytes::new(&s))).unwrap()[..]);
            let mut pos = 0;
            proptest::prop_assert_eq!(take_varint(&b[..end], &mut pos, 10), Some(v));
            proptest::prop_assert_eq!(take_bytes(&b[..end], &mut pos), Some(&s[..]));
            proptest::prop_assert_eq!(pos, end);
            // The same value with a continuation byte too many.
            if n < 10 {
                let mut long = b[..n].to_vec();
                long[n - 1] |= 0x80;
                long.push(0);
                proptest::prop_assert_eq!(take_varint(&long, &mut 0, 10), None);
            }
            // Cut short.
            proptest::prop_assert_eq!(take_varint(&b[..n - 1], &mut 0, 10), None);
        }
    }

    #[test]
    fn malformed_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode::<Down>(&[200]),
            Err(CodecError::Decode { .. })
        ));
        let mut b = encode(&Down::Shutdown).unwrap();
        b.push(0);
        assert!(matches!(
            decode::<Down>(&b),
            Err(CodecError::Trailing { extra: 1 })
        ));
        assert!(matches!(
            decode::<Down>(&[]),
            Err(CodecError::Decode { len: 0, .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]

        /// 100,000 random byte strings decoded as every control message:
        /// errors, never panics.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..24)) {
            fuzz_decode(&bytes);
        }

        /// Random frames through the message assembler (fragments, messages,
        /// other kinds).
        #[test]
        fn random_fragments_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            crate::endpoint::fuzz_fragments(&bytes);
        }
    }
}
