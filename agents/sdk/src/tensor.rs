//! The tensor encoding used for inference inputs and results (`docs/abi.md`,
//! "Tensor"): an 8-byte header (`dtype`, `rank`, 6 reserved bytes), `rank`
//! `u64` dimensions, then the elements, little-endian and row-major.

use alloc::vec::Vec;
use core::fmt;

use crate::layout::u64_at;

/// Maximum tensor rank.
pub const MAX_RANK: usize = 8;

/// Size of the fixed tensor header (before the dimensions).
pub const HEADER_SIZE: usize = 8;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `1`: IEEE 754 binary32.
    F32,
    /// `2`: signed 64-bit integer.
    I64,
    /// `3`: signed 32-bit integer.
    I32,
    /// `4`: unsigned byte.
    U8,
    /// `5`: IEEE 754 binary64.
    F64,
}

impl DType {
    /// Maps the wire value to a dtype.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::F32,
            2 => Self::I64,
            3 => Self::I32,
            4 => Self::U8,
            5 => Self::F64,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::F32 => 1,
            Self::I64 => 2,
            Self::I32 => 3,
            Self::U8 => 4,
            Self::F64 => 5,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F32 | Self::I32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }
}

/// Why a tensor could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorError {
    /// Fewer bytes than the header, dimensions or elements need.
    Truncated,
    /// More bytes than the header, dimensions and elements account for.
    TrailingBytes,
    /// Unknown `dtype` value.
    BadDType(u8),
    /// `rank` above [`MAX_RANK`].
    BadRank(u8),
    /// The element count or byte length overflows.
    Overflow,
    /// The element data does not match the dimensions.
    ShapeMismatch,
    /// Typed access with an element type different from the tensor's dtype.
    WrongDType,
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("tensor truncated"),
            Self::TrailingBytes => f.write_str("trailing bytes after tensor"),
            Self::BadDType(d) => write!(f, "unknown tensor dtype {d}"),
            Self::BadRank(r) => write!(f, "tensor rank {r} above {MAX_RANK}"),
            Self::Overflow => f.write_str("tensor size overflow"),
            Self::ShapeMismatch => f.write_str("element count does not match dimensions"),
            Self::WrongDType => f.write_str("wrong element type for tensor dtype"),
        }
    }
}

/// A Rust type that is a tensor element.
pub trait Element: Copy + 'static + sealed::Sealed {
    /// The matching dtype.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `DTYPE.size()` little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for i64 {}
    impl Sealed for i32 {}
    impl Sealed for u8 {}
}

macro_rules! element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut b = [0u8; core::mem::size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
        }
    };
}

element!(f32, F32);
element!(f64, F64);
element!(i64, I64);
element!(i32, I32);
element!(u8, U8);

fn element_count(dims: &[u64]) -> Result<usize, TensorError> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n.checked_mul(d).ok_or(TensorError::Overflow)?;
    }
    usize::try_from(n).map_err(|_| TensorError::Overflow)
}

fn encoded_len(dtype: DType, dims: &[u64]) -> Result<(usize, usize), TensorError> {
    if dims.len() > MAX_RANK {
        return Err(TensorError::BadRank(dims.len().min(255) as u8));
    }
    let count = element_count(dims)?;
    let data = count
        .checked_mul(dtype.size())
        .ok_or(TensorError::Overflow)?;
    let total = (HEADER_SIZE + 8 * dims.len())
        .checked_add(data)
        .ok_or(TensorError::Overflow)?;
    Ok((count, total))
}

fn write_header(out: &mut Vec<u8>, dtype: DType, dims: &[u64]) {
    out.push(dtype.as_u8());
    out.push(dims.len() as u8);
    out.extend_from_slice(&[0u8; 6]);
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
}

/// Encodes a tensor from raw little-endian element bytes.
pub fn encode_raw(dtype: DType, dims: &[u64], data: &[u8]) -> Result<Vec<u8>, TensorError> {
    let (_, total) = encoded_len(dtype, dims)?;
    if HEADER_SIZE + 8 * dims.len() + data.len() != total {
        return Err(TensorError::ShapeMismatch);
    }
    let mut out = Vec::with_capacity(total);
    write_header(&mut out, dtype, dims);
    out.extend_from_slice(data);
    Ok(out)
}

/// Encodes a tensor of `T` elements (row-major) with the given dimensions.
///
/// ```
/// use lockstep_agent_sdk::tensor::{encode, TensorView};
/// let bytes = encode(&[1, 3], &[0.5f32, 2.0, -1.0]).unwrap();
/// let t = TensorView::parse(&bytes).unwrap();
/// assert_eq!(t.dims(), &[1, 3]);
/// assert_eq!(t.argmax(), Some(1));
/// ```
pub fn encode<T: Element>(dims: &[u64], values: &[T]) -> Result<Vec<u8>, TensorError> {
    let (count, total) = encoded_len(T::DTYPE, dims)?;
    if count != values.len() {
        return Err(TensorError::ShapeMismatch);
    }
    let mut out = Vec::with_capacity(total);
    write_header(&mut out, T::DTYPE, dims);
    for &v in values {
        v.write_le(&mut out);
    }
    Ok(out)
}

/// A borrowed, validated view of an encoded tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorView<'a> {
    dtype: DType,
    rank: usize,
    dims: [u64; MAX_RANK],
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Validates and parses an encoded tensor; `bytes` must be exactly one
    /// tensor.  Reserved header bytes are not checked (later minors may use them).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TensorError> {
        if bytes.len() < HEADER_SIZE {
            return Err(TensorError::Truncated);
        }
        let dtype = DType::from_u8(bytes[0]).ok_or(TensorError::BadDType(bytes[0]))?;
        let rank = bytes[1] as usize;
        if rank > MAX_RANK {
            return Err(TensorError::BadRank(bytes[1]));
        }
        let data_off = HEADER_SIZE + 8 * rank;
        if bytes.len() < data_off {
            return Err(TensorError::Truncated);
        }
        let mut dims = [0u64; MAX_RANK];
        for (i, d) in dims.iter_mut().take(rank).enumerate() {
            *d = u64_at(bytes, HEADER_SIZE + 8 * i);
        }
        let (_, total) = encoded_len(dtype, &dims[..rank])?;
        if bytes.len() < total {
            return Err(TensorError::Truncated);
        }
        if bytes.len() > total {
            return Err(TensorError::TrailingBytes);
        }
        Ok(Self {
            dtype,
            rank,
            dims,
            data: &bytes[data_off..],
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dimensions (`rank` of them).
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.rank]
    }

    /// Number of elements (1 for a rank-0 scalar).
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Raw little-endian element bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Element `i` as `T`; `None` if out of range or `T` is not the dtype.
    pub fn get<T: Element>(&self, i: usize) -> Option<T> {
        if T::DTYPE != self.dtype || i >= self.len() {
            return None;
        }
        let s = self.dtype.size();
        Some(T::read_le(&self.data[i * s..(i + 1) * s]))
    }

    /// Iterates the elements as `T`.
    pub fn iter<T: Element>(&self) -> Result<impl Iterator<Item = T> + 'a, TensorError> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::WrongDType);
        }
        Ok(self.data.chunks_exact(self.dtype.size()).map(T::read_le))
    }

    /// Copies the elements out as `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        Ok(self.iter::<T>()?.collect())
    }

    /// Index of the largest element (first one on ties; NaNs are skipped),
    /// whatever the dtype.  `None` for an empty tensor or an all-NaN one.
    pub fn argmax(&self) -> Option<usize> {
        fn best<T: Element, K: PartialOrd>(
            t: &TensorView<'_>,
            key: impl Fn(T) -> Option<K>,
        ) -> Option<usize> {
            let mut best: Option<(usize, K)> = None;
            for (i, v) in t.iter::<T>().ok()?.enumerate() {
                if let Some(k) = key(v) {
                    if best.as_ref().is_none_or(|(_, b)| k > *b) {
                        best = Some((i, k));
                    }
                }
            }
            best.map(|(i, _)| i)
        }
        match self.dtype {
            DType::F32 => best::<f32, f32>(self, |v| (!v.is_nan()).then_some(v)),
            DType::F64 => best::<f64, f64>(self, |v| (!v.is_nan()).then_some(v)),
            DType::I64 => best::<i64, i64>(self, Some),
            DType::I32 => best::<i32, i32>(self, Some),
            DType::U8 => best::<u8, u8>(self, Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn encode_layout() {
        let bytes = encode(&[1, 2], &[1.5f32, -2.0]).unwrap();
        assert_eq!(bytes.len(), 8 + 16 + 8);
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[1], 2);
        assert_eq!(&bytes[2..8], &[0u8; 6]);
        assert_eq!(&bytes[8..16], &1u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &1.5f32.to_le_bytes());
        assert_eq!(&bytes[28..32], &(-2.0f32).to_le_bytes());
    }

    #[test]
    fn roundtrip_every_dtype() {
        let t = encode(&[2, 2], &[1i64, -2, 3, i64::MIN]).unwrap();
        assert_eq!(
            TensorView::parse(&t).unwrap().to_vec::<i64>().unwrap(),
            [1, -2, 3, i64::MIN]
        );
        let t = encode(&[3], &[7i32, -1, 0]).unwrap();
        let v = TensorView::parse(&t).unwrap();
        assert_eq!(v.dtype(), DType::I32);
        assert_eq!(v.to_vec::<i32>().unwrap(), [7, -1, 0]);
        assert_eq!(v.argmax(), Some(0));
        let t = encode(&[4], &[1u8, 9, 9, 2]).unwrap();
        assert_eq!(TensorView::parse(&t).unwrap().argmax(), Some(1));
        let t = encode(&[2], &[0.25f64, 1e300]).unwrap();
        assert_eq!(TensorView::parse(&t).unwrap().get::<f64>(1), Some(1e300));
        let t = encode(&[1, 16], &[0.0f32; 16]).unwrap();
        let v = TensorView::parse(&t).unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(v.dims(), &[1, 16]);
    }

    #[test]
    fn scalar_and_empty() {
        let t = encode::<f32>(&[], &[4.0]).unwrap();
        assert_eq!(t.len(), 12);
        let v = TensorView::parse(&t).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v.get::<f32>(0), Some(4.0));
        let t = encode::<f32>(&[0, 5], &[]).unwrap();
        let v = TensorView::parse(&t).unwrap();
        assert!(v.is_empty());
        assert_eq!(v.argmax(), None);
    }

    #[test]
    fn argmax_skips_nan_and_takes_first_tie() {
        let t = encode(&[4], &[f32::NAN, 2.0, 3.0, 3.0]).unwrap();
        assert_eq!(TensorView::parse(&t).unwrap().argmax(), Some(2));
        let t = encode(&[1], &[f32::NAN]).unwrap();
        assert_eq!(TensorView::parse(&t).unwrap().argmax(), None);
    }

    #[test]
    fn typed_access_checks_dtype() {
        let t = encode(&[2], &[1.0f32, 2.0]).unwrap();
        let v = TensorView::parse(&t).unwrap();
        assert_eq!(v.get::<i32>(0), None);
        assert_eq!(v.get::<f32>(2), None);
        assert!(matches!(v.iter::<f64>(), Err(TensorError::WrongDType)));
    }

    #[test]
    fn encode_rejects_mismatches() {
        assert_eq!(
            encode(&[2, 2], &[1.0f32; 3]),
            Err(TensorError::ShapeMismatch)
        );
        assert_eq!(encode(&[1; 9], &[1.0f32]), Err(TensorError::BadRank(9)));
        assert_eq!(encode(&[u64::MAX, 2], &[1u8]), Err(TensorError::Overflow));
        assert_eq!(
            encode_raw(DType::I32, &[2], &[0u8; 7]),
            Err(TensorError::ShapeMismatch)
        );
        assert_eq!(encode_raw(DType::I32, &[2], &[0u8; 8]).unwrap().len(), 24);
    }

    #[test]
    fn parse_rejects_malformed() {
        let good = encode(&[2, 3], &[1i32; 6]).unwrap();
        assert!(TensorView::parse(&good).is_ok());
        assert_eq!(TensorView::parse(&good[..5]), Err(TensorError::Truncated));
        assert_eq!(TensorView::parse(&good[..20]), Err(TensorError::Truncated));
        assert_eq!(
            TensorView::parse(&good[..good.len() - 1]),
            Err(TensorError::Truncated)
        );
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(TensorView::parse(&extra), Err(TensorError::TrailingBytes));
        let mut bad = good.clone();
        bad[0] = 6;
        assert_eq!(TensorView::parse(&bad), Err(TensorError::BadDType(6)));
        bad[0] = 0;
        assert_eq!(TensorView::parse(&bad), Err(TensorError::BadDType(0)));
        let mut rank = good.clone();
        rank[1] = 9;
        assert_eq!(TensorView::parse(&rank), Err(TensorError::BadRank(9)));
        let mut huge = vec![1u8, 2, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(TensorView::parse(&huge), Err(TensorError::Overflow));
        let mut big = vec![4u8, 1, 0, 0, 0, 0, 0, 0];
        big.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(TensorView::parse(&big).is_err());
    }
}
