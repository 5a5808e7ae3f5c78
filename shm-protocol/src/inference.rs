//! Wire types between the supervisor and the inference host.
//!
//! The supervisor sends [`InferenceCommand`]s inside
//! [`Down::Inference`](crate::control::Down::Inference); the host answers each
//! with exactly one [`InferenceReply`] inside
//! [`Up::Inference`](crate::control::Up::Inference).  Both travel as postcard
//! like every control message.
//!
//! | command | reply |
//! |---|---|
//! | [`InferenceCommand::LoadModel`] | [`InferenceReply::Loaded`] or [`InferenceReply::LoadFailed`] |
//! | [`InferenceCommand::UnloadModel`] | [`InferenceReply::Unloaded`] |
//! | [`InferenceCommand::Infer`] | [`InferenceReply::Results`] (one result per request, same order) |
//! | [`InferenceCommand::Status`] | [`InferenceReply::Status`] |
//!
//! A [`Tensor`] is also what agents exchange with the runtime (ABI section
//! "Tensor" of `docs/abi.md`): [`Tensor::encode_abi`] / [`Tensor::decode_abi`]
//! convert to and from that byte layout.  Every `Tensor` value is valid by
//! construction — [`Tensor::new`], [`Tensor::decode_abi`] and deserialization
//! all check that
//!
//! * the rank is at most [`MAX_RANK`];
//! * every dimension is at most `i64::MAX` (ONNX dimensions are `int64`);
//! * the data holds exactly `product(dims) × element size` bytes, computed
//!   with overflow checks (any zero dimension makes the tensor empty, but the
//!   product of the other dimensions × element size must still fit a
//!   `usize`, so that no consumer multiplying dimensions in order overflows);
//!
//! and `decode_abi` additionally that the reserved header bytes are zero, the
//! dtype is known and no bytes trail the elements.  Malformed input is a
//! [`TensorError`], never a panic.

use serde::{Deserialize, Serialize};

/// Highest tensor rank the ABI allows.
pub const MAX_RANK: usize = 8;
/// Largest encoded reply of the inference host to one batch (outputs that
/// would make it larger are answered with errors, largest first).
pub const MAX_REPLY: usize = 64 << 20;
/// Largest input tensor of one inference request.
pub const MAX_INPUT: usize = 4 << 20;

/// Size of the fixed ABI tensor header (before the dimensions).
pub const ABI_HEADER_LEN: usize = 8;

/// Element type of a [`Tensor`]; the discriminants are the ABI `dtype` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum DType {
    /// `f32`.
    F32 = 1,
    /// `i64`.
    I64 = 2,
    /// `i32`.
    I32 = 3,
    /// `u8`.
    U8 = 4,
    /// `f64`.
    F64 = 5,
}

impl DType {
    /// All dtypes, in code order.
    pub const ALL: [DType; 5] = [DType::F32, DType::I64, DType::I32, DType::U8, DType::F64];

    /// The ABI code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The dtype of an ABI code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F32 | DType::I32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// Short name (`f32`, `i64`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes or parts do not form a valid [`Tensor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The input ends before the header, dimensions or elements do.
    #[error("tensor truncated: needs {needed} bytes, has {got}")]
    Truncated {
        /// Bytes needed so far.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// Unknown dtype code.
    #[error("unknown tensor dtype code {0}")]
    UnknownDType(u8),
    /// Rank above [`MAX_RANK`].
    #[error("tensor rank {0} exceeds the maximum of {MAX_RANK}")]
    RankTooLarge(usize),
    /// A reserved header byte is not zero.
    #[error("reserved tensor header byte {offset} is {value:#04x}, must be zero")]
    ReservedNonZero {
        /// Offset of the byte.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// A dimension does not fit ONNX's `int64`.
    #[error("tensor dimension {index} is {value}, above i64::MAX")]
    DimTooLarge {
        /// Index of the dimension.
        index: usize,
        /// Its value.
        value: u64,
    },
    /// The byte size of the elements overflows.
    #[error("tensor of shape {shape:?} has more bytes than this machine can address")]
    SizeOverflow {
        /// The shape.
        shape: Vec<u64>,
    },
    /// The element bytes do not match the shape.
    #[error("tensor data is {got} bytes, shape {shape:?} of {dtype} needs {expected}")]
    LengthMismatch {
        /// The dtype.
        dtype: DType,
        /// The shape.
        shape: Vec<u64>,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes follow the elements.
    #[error("{0} bytes follow the tensor's elements")]
    Trailing(usize),
}

/// A dense, row-major, little-endian tensor (valid by construction).
///
/// Serialized as the struct `{ dtype, shape, data }`, with `data` written
/// and read as one byte string (postcard: length, then the raw bytes — the
/// same bytes as a sequence of `u8`, without per-element work or a copy of
/// the tensor).
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Serialized form of [`Tensor`] (checked on the way in).
#[derive(Deserialize)]
#[serde(rename = "Tensor")]
struct RawTensor {
    dtype: DType,
    shape: Vec<u64>,
    data: ByteBuf,
}

/// The serialized form, borrowed (no copy of the data).
#[derive(Serialize)]
#[serde(rename = "Tensor")]
struct TensorRef<'a> {
    dtype: DType,
    shape: &'a [u64],
    data: Bytes<'a>,
}

impl Serialize for Tensor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TensorRef {
            dtype: self.dtype,
            shape: &self.shape,
            data: Bytes(&self.data),
        }
        .serialize(s)
    }
}

impl TryFrom<RawTensor> for Tensor {
    type Error = TensorError;
    fn try_from(r: RawTensor) -> Result<Self, TensorError> {
        Tensor::new(r.dtype, r.shape, r.data.0)
    }
}

/// Bytes serialized as a byte string.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Bytes deserialized from a byte string (or a sequence of `u8`).
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tensor bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteBuf, A::Error> {
                // Never trust a length hint for the allocation.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Byte size of `shape` × `dtype`, with overflow checks.
fn byte_len(dtype: DType, shape: &[u64]) -> Result<usize, TensorError> {
    if shape.len() > MAX_RANK {
        return Err(TensorError::RankTooLarge(shape.len()));
    }
    for (index, &value) in shape.iter().enumerate() {
        if value > i64::MAX as u64 {
            return Err(TensorError::DimTooLarge { index, value });
        }
    }
    // The non-zero dimensions must multiply out even when a zero one makes
    // the tensor empty, so that no consumer (ONNX Runtime multiplies the
    // dimensions in order) can overflow on a valid tensor.
    let overflow = || TensorError::SizeOverflow {
        shape: shape.to_vec(),
    };
    let bytes = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let bytes = usize::try_from(bytes).map_err(|_| overflow())?;
    Ok(if shape.contains(&0) { 0 } else { bytes })
}

/// Element types that can be viewed as tensor data.
pub trait Element: Copy + sealed::Sealed {
    /// The matching dtype.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `DTYPE.size()` bytes.
    fn get(bytes: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut b = [0u8; std::mem::size_of::<$t>()];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
        }
    };
}
element!(f32, DType::F32);
element!(i64, DType::I64);
element!(i32, DType::I32);
element!(u8, DType::U8);
element!(f64, DType::F64);

impl Tensor {
    /// A tensor from its parts, checked as described in the module docs.
    pub fn new(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Result<Self, TensorError> {
        let expected = byte_len(dtype, &shape)?;
        if data.len() != expected {
            return Err(TensorError::LengthMismatch {
                dtype,
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Self { dtype, shape, data })
    }

    /// A tensor from typed elements.
    pub fn from_slice<T: Element>(shape: Vec<u64>, values: &[T]) -> Result<Self, TensorError> {
        let mut data = Vec::with_capacity(values.len() * T::DTYPE.size());
        for v in values {
            v.put(&mut data);
        }
        Self::new(T::DTYPE, shape, data)
    }

    /// The elements as `T`, if `T` is this tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        (T::DTYPE == self.dtype).then(|| {
            self.data
                .chunks_exact(self.dtype.size())
                .map(T::get)
                .collect()
        })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The elements' little-endian bytes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Takes the parts apart.
    pub fn into_parts(self) -> (DType, Vec<u64>, Vec<u8>) {
        (self.dtype, self.shape, self.data)
    }

    /// Length of [`Tensor::encode_abi`]'s output.
    pub fn abi_len(&self) -> usize {
        ABI_HEADER_LEN + 8 * self.shape.len() + self.data.len()
    }

    /// Appends the ABI encoding (docs/abi.md, "Tensor") to `out`.
    pub fn encode_abi_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.abi_len());
        out.push(self.dtype.code());
        // The rank is at most MAX_RANK (checked at construction).
        out.push(self.shape.len() as u8);
        out.extend_from_slice(&[0; 6]);
        for d in &self.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
    }

    /// The ABI encoding (docs/abi.md, "Tensor").
    pub fn encode_abi(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_abi_into(&mut out);
        out
    }

    /// Decodes exactly one ABI-encoded tensor from `bytes`.
    pub fn decode_abi(bytes: &[u8]) -> Result<Tensor, TensorError> {
        let truncated = |needed: usize| TensorError::Truncated {
            needed,
            got: bytes.len(),
        };
        let header = bytes
            .get(..ABI_HEADER_LEN)
            .ok_or_else(|| truncated(ABI_HEADER_LEN))?;
        let dtype = DType::from_code(header[0]).ok_or(TensorError::UnknownDType(header[0]))?;
        let rank = usize::from(header[1]);
        if rank > MAX_RANK {
            return Err(TensorError::RankTooLarge(rank));
        }
        if let Some(offset) = (2..ABI_HEADER_LEN).find(|&i| header[i] != 0) {
            return Err(TensorError::ReservedNonZero {
                offset,
                value: header[offset],
            });
        }
        let dims_end = ABI_HEADER_LEN + 8 * rank;
        let dims = bytes
            .get(ABI_HEADER_LEN..dims_end)
            .ok_or_else(|| truncated(dims_end))?;
        let shape: Vec<u64> = dims
            .chunks_exact(8)
            .map(|c| {
                c.iter()
                    .rev()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            })
            .collect();
        let len = byte_len(dtype, &shape)?;
        let end = dims_end
            .checked_add(len)
            .ok_or_else(|| TensorError::SizeOverflow {
                shape: shape.clone(),
            })?;
        let data = bytes.get(dims_end..end).ok_or_else(|| truncated(end))?;
        if bytes.len() > end {
            return Err(TensorError::Trailing(bytes.len() - end));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: data.to_vec(),
        })
    }
}

/// Description of one model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Its name in the graph.
    pub name: String,
    /// Its element type, if the ABI has it (`None`: see `onnx_type`).
    pub dtype: Option<DType>,
    /// ONNX Runtime's name of the element type (e.g. `Float32`).
    pub onnx_type: String,
    /// Dimensions; `None` for a dynamic (symbolic) one.
    pub shape: Vec<Option<u64>>,
}

/// One request of an [`InferenceCommand::Infer`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceRequest {
    /// Caller's key, echoed in the result (e.g. `(agent << 32) | request id`).
    pub request_key: u64,
    /// The model input to feed; `None` = the model's only input.
    pub input_name: Option<String>,
    /// The input tensor.
    pub tensor: Tensor,
}

/// Supervisor → inference host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InferenceCommand {
    /// Load a model as `id@version`; the new version becomes the model's
    /// current one (older versions stay loaded until unloaded).  The model
    /// travels over the ring: the host reads no file (its sandbox has
    /// none).
    LoadModel {
        /// Model id (what agents name).
        id: String,
        /// Version label.
        version: String,
        /// Where the supervisor read it (for messages).
        source: String,
        /// The `.onnx` file's bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// Expected BLAKE3 of the bytes, 64 lowercase hex digits; the host
        /// refuses bytes that do not match.
        blake3_hex: String,
    },
    /// Unload one version of a model (`Some`) or all of them (`None`).
    UnloadModel {
        /// Model id.
        id: String,
        /// Version to unload; `None` unloads every version.
        version: Option<String>,
    },
    /// Run a tick's requests for one model.
    Infer {
        /// Caller's id for the batch, echoed in the reply.
        batch_id: u64,
        /// Model id.
        model_id: String,
        /// Version; `None` = the model's current version.
        version: Option<String>,
        /// The requests, in canonical order; the host runs them in this order
        /// and answers in this order.
        requests: Vec<InferenceRequest>,
        /// Largest batch (rows along dimension 0) one model run may take;
        /// `0` or `1` run every request alone.
        max_batch: u32,
    },
    /// Report the loaded models and memory use.
    Status,
}

/// A loaded model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Model id.
    pub id: String,
    /// Version label.
    pub version: String,
    /// Whether it is the model's current version.
    pub current: bool,
    /// Where it runs (`cpu`, `cuda:0`).
    pub device: String,
    /// BLAKE3 of the model file (hex).
    pub blake3_hex: String,
    /// Its inputs.
    pub inputs: Vec<TensorInfo>,
    /// Its outputs.
    pub outputs: Vec<TensorInfo>,
    /// Requests answered so far.
    pub requests: u64,
}

/// The answer to one [`InferenceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceResult {
    /// The request's key.
    pub request_key: u64,
    /// The model's first output for this request, or why there is none.
    pub output: Result<Tensor, String>,
    /// BLAKE3 of the output's ABI encoding ([`Tensor::encode_abi`]; for an
    /// error: of its UTF-8 message), for the journal.
    pub output_blake3: [u8; 32],
}

/// Measurements of one [`InferenceCommand::Infer`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchTelemetry {
    /// Model runs made.
    pub batches: u32,
    /// Largest number of requests in one run.
    pub max_batch_size: u32,
    /// Time inside ONNX Runtime, summed over the runs.
    pub run_ns: u64,
    /// Time from the command's arrival to its first run (validation,
    /// concatenation).
    pub queue_ns: u64,
    /// Where the model ran.
    pub device: String,
    /// Resident set size of the host process (sampled at most every 100 ms).
    pub rss_bytes: u64,
}

/// Inference host → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InferenceReply {
    /// A model version is loaded (and is now current).
    Loaded {
        /// Model id.
        id: String,
        /// Version label.
        version: String,
        /// Where it runs (`cpu`, `cuda:0`).
        device: String,
        /// Its inputs.
        inputs: Vec<TensorInfo>,
        /// Its outputs.
        outputs: Vec<TensorInfo>,
    },
    /// Loading failed; nothing changed.
    LoadFailed {
        /// Model id.
        id: String,
        /// Version label.
        version: String,
        /// Why.
        error: String,
    },
    /// Versions unloaded (empty: nothing of that id/version was loaded).
    Unloaded {
        /// Model id.
        id: String,
        /// The versions that were unloaded.
        versions: Vec<String>,
    },
    /// Answers to an [`InferenceCommand::Infer`], one per request, in order.
    Results {
        /// The command's batch id.
        batch_id: u64,
        /// The results.
        results: Vec<InferenceResult>,
        /// Measurements.
        telemetry: BatchTelemetry,
    },
    /// Answer to [`InferenceCommand::Status`].
    Status {
        /// Loaded model versions, by id then version.
        models: Vec<ModelStatus>,
        /// Resident set size of the host process.
        rss_bytes: u64,
        /// GPU memory in use, where known.
        gpu_mem_bytes: Option<u64>,
    },
    /// The whole batch is refused (deterministically: its answer would
    /// exceed the reply limit even with every output an error).
    Refused {
        /// The batch.
        batch_id: u64,
        /// Why.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::control::{Down, Up};

    fn samples() -> Vec<Tensor> {
        vec![
            Tensor::from_slice(
                vec![2, 3],
                &[1.0f32, -2.5, 0.0, f32::MAX, f32::MIN_POSITIVE, -0.0],
            )
            .unwrap(),
            Tensor::from_slice(vec![3], &[i64::MIN, 0, i64::MAX]).unwrap(),
            Tensor::from_slice(vec![1, 1, 2], &[7i32, -7]).unwrap(),
            Tensor::from_slice(vec![4], &[0u8, 1, 254, 255]).unwrap(),
            Tensor::from_slice(vec![2], &[f64::NAN, f64::NEG_INFINITY]).unwrap(),
            // Scalar (rank 0): one element.
            Tensor::from_slice(vec![], &[42.0f32]).unwrap(),
            // Empty along one dimension, large along another.
            Tensor::new(DType::F64, vec![0, 1 << 40], vec![]).unwrap(),
            Tensor::new(DType::U8, vec![1; MAX_RANK], vec![9]).unwrap(),
        ]
    }

    #[test]
    fn abi_round_trip() {
        for t in samples() {
            let bytes = t.encode_abi();
            assert_eq!(bytes.len(), t.abi_len());
            assert_eq!(bytes[0], t.dtype().code());
            assert_eq!(usize::from(bytes[1]), t.shape().len());
            assert_eq!(&bytes[2..8], &[0; 6]);
            let back = Tensor::decode_abi(&bytes).unwrap();
            assert_eq!(back, t);
            assert_eq!(back.encode_abi(), bytes);
        }
    }

    #[test]
    fn abi_layout_is_the_documented_one() {
        let t = Tensor::from_slice(vec![2], &[1i32, 0x0102_0304]).unwrap();
        assert_eq!(
            t.encode_abi(),
            [
                3, 1, 0, 0, 0, 0, 0, 0, // dtype i32, rank 1, reserved
                2, 0, 0, 0, 0, 0, 0, 0, // dim 0 = 2
                1, 0, 0, 0, 4, 3, 2, 1, // elements, little-endian
            ]
        );
    }

    #[test]
    fn typed_access() {
        let t = Tensor::from_slice(vec![2], &[1.5f32, -3.0]).unwrap();
        assert_eq!(t.to_vec::<f32>(), Some(vec![1.5, -3.0]));
        assert_eq!(t.to_vec::<i32>(), None);
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        assert_eq!(
            Tensor::from_slice(vec![3], &[1.0f32]),
            Err(TensorError::LengthMismatch {
                dtype: DType::F32,
                shape: vec![3],
                expected: 12,
                got: 4
            })
        );
    }

    #[test]
    fn malformed_abi_bytes_are_rejected() {
        let good = Tensor::from_slice(vec![2, 2], &[1.0f32, 2.0, 3.0, 4.0])
            .unwrap()
            .encode_abi();
        let dec = Tensor::decode_abi;
        // Truncated everywhere.
        for n in 0..good.len() {
            assert!(
                matches!(dec(&good[..n]), Err(TensorError::Truncated { .. })),
                "{n}"
            );
        }
        // Trailing bytes.
        let mut b = good.clone();
        b.push(0);
        assert_eq!(dec(&b), Err(TensorError::Trailing(1)));
        // Unknown dtypes.
        for code in [0u8, 6, 200, 255] {
            let mut b = good.clone();
            b[0] = code;
            assert_eq!(dec(&b), Err(TensorError::UnknownDType(code)));
        }
        // Rank above 8.
        let mut b = good.clone();
        b[1] = 9;
        assert_eq!(dec(&b), Err(TensorError::RankTooLarge(9)));
        // Reserved bytes.
        for offset in 2..8 {
            let mut b = good.clone();
            b[offset] = 1;
            assert_eq!(
                dec(&b),
                Err(TensorError::ReservedNonZero { offset, value: 1 })
            );
        }
        // Dimension above i64::MAX.
        let mut b = vec![1, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            dec(&b),
            Err(TensorError::DimTooLarge {
                index: 0,
                value: u64::MAX
            })
        );
        // Element count overflow: 2^62 × 2^62.
        let mut b = vec![5, 2, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(dec(&b), Err(TensorError::SizeOverflow { .. })));
        // Byte count overflow: 2^61 f64 elements.
        let mut b = vec![5, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&(1u64 << 61).to_le_bytes());
        assert!(matches!(dec(&b), Err(TensorError::SizeOverflow { .. })));
        // Large but addressable: truncated, not an allocation.
        let mut b = vec![4, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(dec(&b), Err(TensorError::Truncated { .. })));
    }

    #[test]
    fn invalid_parts_are_rejected() {
        assert_eq!(
            Tensor::new(DType::U8, vec![1; 9], vec![0]),
            Err(TensorError::RankTooLarge(9))
        );
        assert!(matches!(
            Tensor::new(DType::U8, vec![u64::MAX], vec![]),
            Err(TensorError::DimTooLarge { .. })
        ));
        assert!(matches!(
            Tensor::new(DType::I64, vec![1 << 62, 4], vec![]),
            Err(TensorError::SizeOverflow { .. })
        ));
    }

    /// Empty tensors whose other dimensions overflow are refused too, in
    /// any order.
    #[test]
    fn empty_tensors_with_overflowing_dims_are_rejected() {
        for shape in [
            vec![1 << 62, 1 << 62, 0],
            vec![0, 1 << 62, 1 << 62],
            vec![0, 1 << 62],
        ] {
            let r = Tensor::new(DType::F64, shape.clone(), vec![]);
            assert!(
                matches!(r, Err(TensorError::SizeOverflow { .. })),
                "{shape:?}"
            );
        }
    }

    /// A tensor on the ring is checked while decoding the message.
    #[test]
    fn deserialization_validates() {
        let t = Tensor::from_slice(vec![2], &[1u8, 2]).unwrap();
        let cmd = Down::Inference(InferenceCommand::Infer {
            batch_id: 9,
            model_id: "mlp".into(),
            version: Some("v1".into()),
            requests: vec![InferenceRequest {
                request_key: 1,
                input_name: None,
                tensor: t.clone(),
            }],
            max_batch: 8,
        });
        let bytes = codec::encode(&cmd).unwrap();
        assert_eq!(codec::decode::<Down>(&bytes).unwrap(), cmd);
        // The same message with a shape that does not match its data: the
        // shape [2] is encoded as varint 1, 2; make it [3].
        let good = codec::encode(&t).unwrap();
        // dtype, shape (len 1, 2), data (len 2, bytes 1 2): a byte string has
        // the layout of a sequence of u8.
        assert_eq!(good, [3, 1, 2, 2, 1, 2]);
        #[derive(Serialize)]
        struct AsSeq {
            dtype: DType,
            shape: Vec<u64>,
            data: Vec<u8>,
        }
        let seq = AsSeq {
            dtype: DType::U8,
            shape: vec![2],
            data: vec![1, 2],
        };
        assert_eq!(codec::encode(&seq).unwrap(), good);
        let mut bad = good.clone();
        assert_eq!(bad[2], 2);
        bad[2] = 3;
        assert_eq!(codec::decode::<Tensor>(&good).unwrap(), t);
        assert!(codec::decode::<Tensor>(&bad).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let t = samples().remove(0);
        let msgs = vec![
            Up::Inference(InferenceReply::Loaded {
                id: "mlp".into(),
                version: "v1".into(),
                device: "cpu".into(),
                inputs: vec![TensorInfo {
                    name: "input".into(),
                    dtype: Some(DType::F32),
                    onnx_type: "Float32".into(),
                    shape: vec![None, Some(16)],
                }],
                outputs: vec![],
            }),
            Up::Inference(InferenceReply::Results {
                batch_id: 3,
                results: vec![
                    InferenceResult {
                        request_key: 1,
                        output: Ok(t),
                        output_blake3: [7; 32],
                    },
                    InferenceResult {
                        request_key: 2,
                        output: Err("unknown model".into()),
                        output_blake3: [0; 32],
                    },
                ],
                telemetry: BatchTelemetry {
                    batches: 1,
                    device: "cpu".into(),
                    ..Default::default()
                },
            }),
            Up::Inference(InferenceReply::Status {
                models: vec![],
                rss_bytes: 1 << 20,
                gpu_mem_bytes: None,
            }),
        ];
        for m in msgs {
            assert_eq!(codec::decode::<Up>(&codec::encode(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn random_abi_bytes_never_panic() {
        let mut rng = 0x1234_5678_9abc_def0_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let seeds: Vec<Vec<u8>> = samples().iter().map(Tensor::encode_abi).collect();
        let mut accepted = 0;
        for i in 0..200_000u32 {
            let r = next();
            let bytes: Vec<u8> = if i % 2 == 0 {
                // Pure noise with a plausible header now and then.
                let len = (r % 96) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len >= 8 && r & 0x100 != 0 {
                    b[0] = (r >> 9) as u8 % 7;
                    b[1] = (r >> 12) as u8 % 10;
                    b[2..8].fill(0);
                }
                b
            } else {
                // A valid encoding with a few bytes flipped, cut or extended.
                let mut b = seeds[(r % seeds.len() as u64) as usize].clone();
                for _ in 0..(r >> 8) % 4 {
                    if !b.is_empty() {
                        let at = (next() % b.len() as u64) as usize;
                        b[at] ^= 1 << (next() % 8);
                    }
                }
                match (r >> 16) % 4 {
                    0 => b.truncate((next() % (b.len() as u64 + 1)) as usize),
                    1 => b.push(next() as u8),
                    _ => {}
                }
                b
            };
            if let Ok(t) = Tensor::decode_abi(&bytes) {
                // Whatever decodes re-encodes to the same bytes.
                assert_eq!(t.encode_abi(), bytes);
                accepted += 1;
            }
            // The same bytes as a postcard message never panic either.
            let _ = codec::decode::<Tensor>(&bytes);
            let _ = codec::decode::<InferenceCommand>(&bytes);
            let _ = codec::decode::<InferenceReply>(&bytes);
        }
        assert!(accepted > 1000, "only {accepted} inputs decoded");
    }
}
