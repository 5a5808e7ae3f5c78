//! The bytes of a *text model*: an ONNX model and the tokenizer that turns
//! text into its inputs, travelling together as one blob.
//!
//! The supervisor builds the blob from a manifest model declared with
//! `kind = "text-embedding"` and `tokenizer = "…"` (both files checked
//! against their pins first) and sends it to the inference host like any
//! model's bytes (`LoadModel`, BLAKE3-checked); the host, which reads no
//! file, recognises it by its magic and serves the model with text inputs.
//! One hash therefore covers the model *and* its tokenizer.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `LSTEXT\0\x01` (format version 1) |
//! | 8 | 1 | kind: 1 = text embedding |
//! | 9 | 7 | reserved, zero |
//! | 16 | 8 | tokenizer length `n` |
//! | 24 | `n` | the tokenizer (Hugging Face `tokenizer.json`) |
//! | 24 + `n` | rest | the ONNX model |
//!
//! An ONNX file cannot start with the magic (`L` is not a valid first
//! protobuf tag of a `ModelProto`), so a plain model is never taken for a
//! text model.

/// First bytes of every text-model blob (the last one is the format version).
pub const MAGIC: [u8; 8] = *b"LSTEXT\0\x01";
/// Size of the header before the tokenizer.
pub const HEADER_LEN: usize = 24;

/// What a text model computes from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// A sentence embedding: mean of the last hidden state over the tokens,
    /// L2-normalised (`f32[hidden]`).
    Embedding,
}

impl TextKind {
    /// Every kind.
    pub const ALL: [TextKind; 1] = [TextKind::Embedding];

    /// The manifest's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            TextKind::Embedding => "text-embedding",
        }
    }

    /// The kind the manifest names `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn code(self) -> u8 {
        match self {
            TextKind::Embedding => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// A text-model blob taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextModelParts<'a> {
    /// What the model computes.
    pub kind: TextKind,
    /// The tokenizer file's bytes.
    pub tokenizer: &'a [u8],
    /// The ONNX model's bytes.
    pub model: &'a [u8],
}

/// Why bytes that start like a text-model blob are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextModelError {
    /// Shorter than its header.
    #[error("text model: {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// A format version this build does not know.
    #[error("text model: format version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// An unknown kind code.
    #[error("text model: unknown kind code {0}")]
    Kind(u8),
    /// Reserved bytes are not zero.
    #[error("text model: reserved header bytes are not zero")]
    Reserved,
    /// The tokenizer length runs past the end.
    #[error("text model: a {tokenizer}-byte tokenizer does not fit in {len} bytes")]
    Truncated {
        /// The tokenizer length the header gives.
        tokenizer: u64,
        /// The blob's length.
        len: usize,
    },
}

/// Whether `bytes` start with the text-model magic (any format version).
pub fn is_text_model(bytes: &[u8]) -> bool {
    bytes.len() >= 7 && bytes[..7] == MAGIC[..7]
}

/// The blob of a `kind` model with `tokenizer` and ONNX `model` bytes.
pub fn encode(kind: TextKind, tokenizer: &[u8], model: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + tokenizer.len() + model.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind.code());
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&(tokenizer.len() as u64).to_le_bytes());
    out.extend_from_slice(tokenizer);
    out.extend_from_slice(model);
    out
}

/// Takes a blob apart: `Ok(None)` for bytes that are not a text model (a
/// plain ONNX file), an error for a malformed blob.
pub fn decode(bytes: &[u8]) -> Result<Option<TextModelParts<'_>>, TextModelError> {
    if !is_text_model(bytes) {
        return Ok(None);
    }
    if bytes.len() < HEADER_LEN {
        return Err(TextModelError::Short(bytes.len()));
    }
    if bytes[7] != MAGIC[7] {
        return Err(TextModelError::Version(bytes[7]));
    }
    let kind = TextKind::from_code(bytes[8]).ok_or(TextModelError::Kind(bytes[8]))?;
    if bytes[9..16].iter().any(|&b| b != 0) {
        return Err(TextModelError::Reserved);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let n = u64::from_le_bytes(len);
    let rest = &bytes[HEADER_LEN..];
    let truncated = TextModelError::Truncated {
        tokenizer: n,
        len: bytes.len(),
    };
    let n = usize::try_from(n).map_err(|_| truncated.clone())?;
    if n > rest.len() {
        return Err(truncated);
    }
    let (tokenizer, model) = rest.split_at(n);
    Ok(Some(TextModelParts {
        kind,
        tokenizer,
        model,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_plain_models() {
        let blob = encode(TextKind::Embedding, b"{\"tok\":1}", b"\x08\x08onnx");
        let parts = decode(&blob).unwrap().unwrap();
        assert_eq!(parts.kind, TextKind::Embedding);
        assert_eq!(parts.tokenizer, b"{\"tok\":1}");
        assert_eq!(parts.model, b"\x08\x08onnx");
        // A plain ONNX file (first field: ir_version) is not a text model.
        assert_eq!(decode(b"\x08\x08\x12\x08lockstep").unwrap(), None);
        assert_eq!(decode(b"").unwrap(), None);
        assert_eq!(
            TextKind::from_name("text-embedding"),
            Some(TextKind::Embedding)
        );
        assert_eq!(TextKind::from_name("image"), None);
    }

    #[test]
    fn malformed_blobs_are_refused() {
        let blob = encode(TextKind::Embedding, b"tok", b"model");
        assert_eq!(decode(&blob[..10]), Err(TextModelError::Short(10)));
        let mut v2 = blob.clone();
        v2[7] = 2;
        assert_eq!(decode(&v2), Err(TextModelError::Version(2)));
        let mut kind = blob.clone();
        kind[8] = 9;
        assert_eq!(decode(&kind), Err(TextModelError::Kind(9)));
        let mut reserved = blob.clone();
        reserved[12] = 1;
        assert_eq!(decode(&reserved), Err(TextModelError::Reserved));
        let mut long = blob.clone();
        long[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&long),
            Err(TextModelError::Truncated { .. })
        ));
    }
}
