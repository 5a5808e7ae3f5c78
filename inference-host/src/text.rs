//! Text models: a transformer encoder (ONNX) behind a WordPiece tokenizer,
//! answering UTF-8 text with a sentence embedding.
//!
//! A text model arrives as a [`lockstep_common::text_model`] blob (the
//! supervisor builds it from a `kind = "text-embedding"` model and its
//! `tokenizer` file; the host reads no file).  Requests carry the text as a
//! `u8[n]` tensor of UTF-8 bytes (input name `text`); the answer is
//! `f32[hidden]`, the mean of the model's last hidden state over the
//! sequence's tokens, L2-normalised — what `sentence-transformers` computes
//! for models such as all-MiniLM-L6-v2.
//!
//! # Tokenizer
//!
//! [`Tokenizer`] reads a Hugging Face `tokenizer.json` of the BERT family
//! (`BertNormalizer`, `BertPreTokenizer`, `WordPiece`, a `[CLS] $A [SEP]`
//! template or `BertProcessing`) and reproduces the `tokenizers` library's
//! ids: special tokens found verbatim in the text are kept whole; the rest
//! is cleaned (control characters dropped, whitespace made a space),
//! CJK ideographs are split off, accents stripped (NFD, non-spacing marks
//! removed) and the text lower-cased as the file says; words are split at
//! whitespace and punctuation; each word is cut greedily into the longest
//! vocabulary pieces (`##` continuations, `[UNK]` for a word that cannot be
//! cut or is longer than `max_input_chars_per_word`); the template adds
//! `[CLS]`/`[SEP]` and the sequence is truncated to the file's
//! `truncation.max_length` (512 without one).  It is plain sequential Rust
//! over `std`'s and two pinned crates' Unicode tables (those the
//! `tokenizers` library uses), with no threads and no state between
//! calls: the same bytes give the same ids on every machine.
//!
//! # Batches
//!
//! Consecutive requests (at most `max_batch`) run as one batch padded to
//! its longest sequence with an attention mask; the pooling reads only each
//! request's own tokens.  On ONNX Runtime's CPU kernels a request's hidden
//! states are then bitwise those of the request alone (tested); a manifest
//! that wants every request run alone anyway sets `max_batch = 1`.
//!
//! # Pooling
//!
//! Done here, in Rust, in a fixed order: the hidden states of a request's
//! tokens are summed token by token in `f64` (exact for these magnitudes
//! up to the last rounding), divided by the token count, the squared
//! components summed in order, the vector divided by the square root (or by
//! `1e-12` if smaller, as `sentence-transformers` does) and rounded to
//! `f32`.  Every step is one correctly rounded IEEE operation in an order
//! the code fixes, so the host's part of the answer is the same bits on any
//! architecture; the model's own kernels are ONNX Runtime's (see the crate
//! docs on reproducibility).

use crate::{BatchOutcome, InferenceError, LoadedModel, Port};
use lockstep_common::text_model::TextKind;
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};
use serde_json::Value;
use shm_protocol::inference::{BatchTelemetry, DType, InferenceRequest, Tensor, TensorInfo};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

/// Name of a text model's request input.
pub const TEXT_INPUT: &str = "text";
/// Name of a text embedding model's output.
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// Sequence length (with the special tokens) when the tokenizer file sets
/// no truncation (BERT's position limit).
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Largest tokenizer file accepted.
pub const MAX_TOKENIZER_BYTES: usize = 64 << 20;

/// A WordPiece tokenizer of the BERT family, read from `tokenizer.json`
/// (see the module docs).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, i64>,
    unk: i64,
    prefix: String,
    max_word_chars: usize,
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    /// Tokens matched verbatim in the raw text, longest first.
    added: Vec<(String, i64)>,
    /// Template: special ids before and after the sequence.
    before: Vec<i64>,
    after: Vec<i64>,
    max_tokens: usize,
    pad: i64,
}

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("{what} has no `{key}`"))
}

fn flag(v: &Value, key: &str, default: bool) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("normalizer `{key}` is {other}, not a boolean")),
    }
}

fn kind_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

impl Tokenizer {
    /// Reads a `tokenizer.json`; the error says what in the file is not
    /// supported or does not parse.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_TOKENIZER_BYTES {
            return Err(format!(
                "{} bytes is above the {MAX_TOKENIZER_BYTES}-byte limit",
                bytes.len()
            ));
        }
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let model = field(&root, "model", "the file")?;
        if kind_of(model) != Some("WordPiece") {
            return Err(format!(
                "model type {:?} is not supported (only WordPiece)",
                kind_of(model).unwrap_or("<none>")
            ));
        }
        let vocab_json = field(model, "vocab", "model")?
            .as_object()
            .ok_or("model `vocab` is not an object")?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (piece, id) in vocab_json {
            let id = id
                .as_u64()
                .filter(|&i| i < 1 << 31)
                .ok_or_else(|| format!("vocabulary id of {piece:?} is {id}, not a token id"))?;
            vocab.insert(piece.clone(), id as i64);
        }
        let unk_token = field(model, "unk_token", "model")?
            .as_str()
            .ok_or("model `unk_token` is not a string")?;
        let unk = *vocab
            .get(unk_token)
            .ok_or_else(|| format!("unk_token {unk_token:?} is not in the vocabulary"))?;
        let prefix = match model.get("continuing_subword_prefix") {
            None | Some(Value::Null) => "##".to_owned(),
            Some(p) => p
                .as_str()
                .ok_or("model `continuing_subword_prefix` is not a string")?
                .to_owned(),
        };
        let max_word_chars = match model.get("max_input_chars_per_word") {
            None | Some(Value::Null) => 100,
            Some(n) => n
                .as_u64()
                .ok_or("model `max_input_chars_per_word` is not a number")?
                as usize,
        };

        // Normalizer: BERT's, or none.
        let (clean_text, chinese_chars, strip_accents, lowercase) = match root.get("normalizer") {
            None | Some(Value::Null) => (false, false, false, false),
            Some(n) if kind_of(n) == Some("BertNormalizer") => {
                let lowercase = flag(n, "lowercase", true)?;
                (
                    flag(n, "clean_text", true)?,
                    flag(n, "handle_chinese_chars", true)?,
                    flag(n, "strip_accents", lowercase)?,
                    lowercase,
                )
            }
            Some(n) => {
                return Err(format!(
                    "normalizer {:?} is not supported (only BertNormalizer)",
                    kind_of(n).unwrap_or("<untyped>")
                ));
            }
        };
        match root.get("pre_tokenizer") {
            Some(p) if kind_of(p) == Some("BertPreTokenizer") => {}
            other => {
                return Err(format!(
                    "pre_tokenizer {:?} is not supported (only BertPreTokenizer)",
                    other.and_then(kind_of).unwrap_or("<none>")
                ));
            }
        }

        // Special tokens around the sequence.
        let special_id = |name: &str| {
            vocab
                .get(name)
                .copied()
                .ok_or_else(|| format!("special token {name:?} is not in the vocabulary"))
        };
        let (before, after) = match root.get("post_processor") {
            Some(p) if kind_of(p) == Some("TemplateProcessing") => {
                let single = field(p, "single", "post_processor")?
                    .as_array()
                    .ok_or("post_processor `single` is not a list")?;
                let specials = p.get("special_tokens");
                let (mut before, mut after, mut seen) = (Vec::new(), Vec::new(), false);
                for item in single {
                    if let Some(s) = item.get("SpecialToken") {
                        let name = field(s, "id", "SpecialToken")?
                            .as_str()
                            .ok_or("SpecialToken `id` is not a string")?;
                        let ids: Vec<i64> = match specials
                            .and_then(|m| m.get(name))
                            .and_then(|t| t.get("ids"))
                            .and_then(Value::as_array)
                        {
                            Some(ids) => ids
                                .iter()
                                .map(|i| {
                                    i.as_u64()
                                        .filter(|&i| i < 1 << 31)
                                        .map(|i| i as i64)
                                        .ok_or_else(|| format!("id of {name:?} is {i}"))
                                })
                                .collect::<Result<_, String>>()?,
                            None => vec![special_id(name)?],
                        };
                        if seen { &mut after } else { &mut before }.extend(ids);
                    } else if let Some(s) = item.get("Sequence") {
                        if seen || s.get("id").and_then(Value::as_str) != Some("A") {
                            return Err("post_processor `single` must hold sequence A once".into());
                        }
                        seen = true;
                    } else {
                        return Err(format!("post_processor item {item} is not supported"));
                    }
                }
                if !seen {
                    return Err("post_processor `single` has no sequence".into());
                }
                (before, after)
            }
            Some(p) if kind_of(p) == Some("BertProcessing") => {
                let id = |key: &str| {
                    p.get(key)
                        .and_then(|v| v.get(1))
                        .and_then(Value::as_u64)
                        .filter(|&i| i < 1 << 31)
                        .map(|i| i as i64)
                        .ok_or_else(|| format!("post_processor `{key}` is not [token, id]"))
                };
                (vec![id("cls")?], vec![id("sep")?])
            }
            None | Some(Value::Null) => (Vec::new(), Vec::new()),
            Some(p) => {
                return Err(format!(
                    "post_processor {:?} is not supported (only TemplateProcessing, BertProcessing)",
                    kind_of(p).unwrap_or("<untyped>")
                ));
            }
        };

        let mut added = Vec::new();
        if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
            for t in list {
                let (Some(content), Some(id)) = (
                    t.get("content").and_then(Value::as_str),
                    t.get("id").and_then(Value::as_u64).filter(|&i| i < 1 << 31),
                ) else {
                    return Err(format!("added token {t} has no content or id"));
                };
                if content.is_empty() {
                    continue;
                }
                if t.get("normalized").and_then(Value::as_bool) == Some(true)
                    || t.get("single_word").and_then(Value::as_bool) == Some(true)
                    || t.get("lstrip").and_then(Value::as_bool) == Some(true)
                    || t.get("rstrip").and_then(Value::as_bool) == Some(true)
                {
                    return Err(format!(
                        "added token {content:?}: normalized, single_word, lstrip and rstrip are not supported"
                    ));
                }
                added.push((content.to_owned(), id as i64));
            }
        }
        // Longest first: at one position the longest token wins.
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));

        let max_tokens = match root.get("truncation") {
            None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
            Some(t) => field(t, "max_length", "truncation")?
                .as_u64()
                .ok_or("truncation `max_length` is not a number")? as usize,
        };
        if max_tokens <= before.len() + after.len() {
            return Err(format!(
                "truncation max_length {max_tokens} leaves no room for text"
            ));
        }
        let pad = root
            .get("padding")
            .and_then(|p| p.get("pad_id"))
            .and_then(Value::as_u64)
            .filter(|&i| i < 1 << 31)
            .map_or(0, |i| i as i64);
        Ok(Self {
            vocab,
            unk,
            prefix,
            max_word_chars,
            clean_text,
            chinese_chars,
            strip_accents,
            lowercase,
            added,
            before,
            after,
            max_tokens,
            pad,
        })
    }

    /// Largest sequence length (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The id that pads a sequence in a batch (masked out).
    pub fn pad_id(&self) -> i64 {
        self.pad
    }

    /// The ids of `text`: the template's special tokens around its pieces,
    /// truncated to [`Tokenizer::max_tokens`] (the text's last pieces go).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let room = self.max_tokens - self.before.len() - self.after.len();
        let mut pieces = Vec::new();
        let mut rest = text;
        // Special tokens are matched in the raw text, leftmost first.
        while !rest.is_empty() && pieces.len() < room {
            let found = self
                .added
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let (plain, token) = match found {
                Some((at, len, id)) => (&rest[..at], Some((len, id, at))),
                None => (rest, None),
            };
            self.encode_plain(plain, room, &mut pieces);
            match token {
                Some((len, id, at)) => {
                    if pieces.len() < room {
                        pieces.push(id);
                    }
                    rest = &rest[at + len..];
                }
                None => rest = "",
            }
        }
        pieces.truncate(room);
        let mut ids = Vec::with_capacity(self.before.len() + pieces.len() + self.after.len());
        ids.extend_from_slice(&self.before);
        ids.extend_from_slice(&pieces);
        ids.extend_from_slice(&self.after);
        ids
    }

    /// The normalised form of `text` (BERT's normaliser as configured).
    fn normalize(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    s.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_chinese_char(c) {
                s.push(' ');
                s.push(c);
                s.push(' ');
            } else {
                s.push(c);
            }
        }
        if self.strip_accents {
            s = s.nfd().filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            s = s.chars().flat_map(char::to_lowercase).collect();
        }
        s
    }

    /// Appends the pieces of text without special tokens, up to `room`.
    fn encode_plain(&self, text: &str, room: usize, out: &mut Vec<i64>) {
        if text.is_empty() {
            return;
        }
        let normal = self.normalize(text);
        for word in normal.split(char::is_whitespace) {
            let mut start = 0;
            for (i, c) in word.char_indices() {
                if is_bert_punctuation(c) {
                    self.word_pieces(&word[start..i], out);
                    self.word_pieces(&word[i..i + c.len_utf8()], out);
                    start = i + c.len_utf8();
                }
                if out.len() >= room {
                    return;
                }
            }
            self.word_pieces(&word[start..], out);
            if out.len() >= room {
                return;
            }
        }
    }

    /// WordPiece: the longest vocabulary pieces of `word`, left to right.
    fn word_pieces(&self, word: &str, out: &mut Vec<i64>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > self.max_word_chars {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + self.prefix.len());
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some(id);
                    break;
                }
                // The previous character boundary.
                end -= 1;
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// What a loaded text model needs besides its session.
#[derive(Debug)]
pub(crate) struct TextModel {
    tokenizer: Tokenizer,
    /// Whether the graph takes `token_type_ids`.
    token_types: bool,
    hidden: usize,
}

/// Everything [`crate::ModelRegistry`] keeps of a text model.
pub(crate) struct Prepared {
    pub text: TextModel,
    pub input: Port,
    pub output: Port,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

fn int64_matrix(ty: &ValueType) -> bool {
    matches!(ty, ValueType::Tensor { ty: TensorElementType::Int64, shape, .. } if shape.len() == 2)
}

/// Checks a text model's graph and tokenizer; the error says why the model
/// cannot be served.
pub(crate) fn prepare(
    kind: TextKind,
    tokenizer: &[u8],
    session: &Session,
) -> Result<Prepared, String> {
    // The only kind so far: a sentence embedding.
    let TextKind::Embedding = kind;
    let tokenizer =
        Tokenizer::from_json(tokenizer).map_err(|e| format!("its tokenizer.json: {e}"))?;
    let mut names = Vec::new();
    for i in session.inputs() {
        if !int64_matrix(i.dtype()) {
            return Err(format!(
                "input {:?} is {:?}; a text model's inputs are int64 [batch, sequence]",
                i.name(),
                i.dtype()
            ));
        }
        names.push(i.name().to_owned());
    }
    let has = |n: &str| names.iter().any(|x| x == n);
    let allowed = ["input_ids", "attention_mask", "token_type_ids"];
    if !has("input_ids")
        || !has("attention_mask")
        || names.iter().any(|n| !allowed.contains(&n.as_str()))
    {
        return Err(format!(
            "its inputs are {names:?}; a text model takes input_ids, attention_mask and optionally token_type_ids"
        ));
    }
    let Some(first) = session.outputs().first() else {
        return Err("it has no outputs".into());
    };
    let hidden = match first.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 3 && shape[2] > 0 => shape[2] as usize,
        other => {
            return Err(format!(
                "its first output {:?} is {other:?}; a text embedding model's is float32 [batch, sequence, hidden] with a fixed hidden size",
                first.name()
            ));
        }
    };
    let input = Port {
        name: TEXT_INPUT.to_owned(),
        dtype: DType::U8,
        shape: vec![None],
    };
    let output = Port {
        name: EMBEDDING_OUTPUT.to_owned(),
        dtype: DType::F32,
        shape: vec![Some(hidden as u64)],
    };
    let info = |p: &Port, onnx_type: &str| TensorInfo {
        name: p.name.clone(),
        dtype: Some(p.dtype),
        onnx_type: onnx_type.to_owned(),
        shape: p.shape.clone(),
    };
    Ok(Prepared {
        inputs: vec![info(&input, "UTF-8 text")],
        outputs: vec![info(&output, "Float32")],
        text: TextModel {
            tokenizer,
            token_types: has("token_type_ids"),
            hidden,
        },
        input,
        output,
    })
}

impl TextModel {
    /// The ids of a request's text (a checked `u8[n]` tensor).
    pub fn tokens(&self, model: &str, t: &Tensor) -> Result<Vec<i64>, InferenceError> {
        let text = std::str::from_utf8(t.data()).map_err(|e| InferenceError::BadText {
            model: model.to_owned(),
            reason: format!("the request's bytes are not UTF-8 ({e})"),
        })?;
        Ok(self.tokenizer.encode(text))
    }
}

/// The sentence embedding of one sequence: `hidden` holds its `len` tokens'
/// states (`len × dim`, row-major); see the module docs for the order.
pub fn mean_pool_normalize(hidden: &[f32], len: usize, dim: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    for token in hidden.chunks_exact(dim).take(len) {
        for (s, &x) in sum.iter_mut().zip(token) {
            *s += f64::from(x);
        }
    }
    let n = len.max(1) as f64;
    for s in &mut sum {
        *s /= n;
    }
    let mut squares = 0f64;
    for &s in &sum {
        squares += s * s;
    }
    let norm = squares.sqrt().max(1e-12);
    sum.iter().map(|&s| (s / norm) as f32).collect()
}

/// Runs `batch` (token ids per request) as one padded run of `m` and pools
/// each request's own tokens.
pub(crate) fn run_batch(m: &mut LoadedModel, batch: &[&[i64]]) -> Result<Vec<Tensor>, String> {
    let Some(text) = m.text.as_ref() else {
        return Err("not a text model".into());
    };
    let rows = batch.len();
    let width = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![text.tokenizer.pad_id(); rows * width];
    let mut mask = vec![0i64; rows * width];
    for (r, t) in batch.iter().enumerate() {
        ids[r * width..r * width + t.len()].copy_from_slice(t);
        mask[r * width..r * width + t.len()].fill(1);
    }
    let shape = vec![rows as i64, width as i64];
    let value = |v: Vec<i64>| -> Result<SessionInputValue<'static>, String> {
        ort::value::Tensor::from_array((shape.clone(), v))
            .map(|t| SessionInputValue::from(t.into_dyn()))
            .map_err(|e| e.to_string())
    };
    let mut inputs = vec![
        (Cow::Borrowed("input_ids"), value(ids)?),
        (Cow::Borrowed("attention_mask"), value(mask)?),
    ];
    if text.token_types {
        inputs.push((
            Cow::Borrowed("token_type_ids"),
            value(vec![0; rows * width])?,
        ));
    }
    let dim = text.hidden;
    let outputs = m.session.run(inputs).map_err(|e| e.to_string())?;
    if outputs.len() == 0 {
        return Err("the model returned no outputs".into());
    }
    let (out_shape, data) = outputs[0]
        .try_extract_tensor::<f32>()
        .map_err(|e| e.to_string())?;
    let want = [rows as i64, width as i64, dim as i64];
    if **out_shape != want {
        return Err(format!(
            "its output has shape {:?}, expected {want:?}",
            &**out_shape
        ));
    }
    let per_row = width * dim;
    batch
        .iter()
        .enumerate()
        .map(|(r, t)| {
            let v = mean_pool_normalize(&data[r * per_row..(r + 1) * per_row], t.len(), dim);
            Tensor::from_slice(vec![dim as u64], &v).map_err(|e| e.to_string())
        })
        .collect()
}

/// One request of text model `m` (already checked), run alone.
pub(crate) fn infer_one(m: &mut LoadedModel, t: &Tensor) -> Result<Tensor, InferenceError> {
    let label = m.label();
    let ids = match m.text.as_ref() {
        Some(text) => text.tokens(&label, t)?,
        None => return Err(run_error(&label, "not a text model".into())),
    };
    run_batch(m, &[&ids])
        .map_err(|e| run_error(&label, e))?
        .pop()
        .ok_or_else(|| run_error(&label, "no answer".into()))
}

fn run_error(model: &str, message: String) -> InferenceError {
    InferenceError::Run {
        model: model.to_owned(),
        message,
    }
}

/// A tick's requests for text model `m`, in order: each checked and
/// tokenized (a bad one gets its error, never its neighbours'), then runs
/// of at most `max_batch` consecutive valid requests (`0` counts as 1),
/// each padded to its longest sequence; a failed run is retried one
/// request at a time.
pub(crate) fn batch_infer(
    m: &mut LoadedModel,
    requests: &[InferenceRequest],
    max_batch: u32,
    t0: Instant,
    mut telemetry: BatchTelemetry,
) -> BatchOutcome {
    let label = m.label();
    let mut results: Vec<Option<Result<Tensor, InferenceError>>> =
        requests.iter().map(|_| None).collect();
    let mut valid: Vec<(usize, Vec<i64>)> = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let ids = m.check(r.input_name.as_deref(), &r.tensor).and_then(|()| {
            m.text
                .as_ref()
                .ok_or_else(|| run_error(&label, "not a text model".into()))?
                .tokens(&label, &r.tensor)
        });
        match ids {
            Ok(ids) => valid.push((i, ids)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let first_run = Instant::now();
    let per_run = usize::try_from(max_batch.max(1)).unwrap_or(usize::MAX);
    for group in valid.chunks(per_run) {
        let batch: Vec<&[i64]> = group.iter().map(|(_, ids)| ids.as_slice()).collect();
        let start = Instant::now();
        let out = run_batch(m, &batch);
        telemetry.run_ns += start.elapsed().as_nanos() as u64;
        telemetry.batches += 1;
        telemetry.max_batch_size = telemetry.max_batch_size.max(group.len() as u32);
        match out {
            Ok(answers) => {
                for ((i, _), a) in group.iter().zip(answers) {
                    results[*i] = Some(Ok(a));
                }
            }
            Err(e) if group.len() == 1 => results[group[0].0] = Some(Err(run_error(&label, e))),
            Err(e) => {
                tracing::debug!(error = %e, "batched run failed; running the requests alone");
                for (i, ids) in group {
                    let start = Instant::now();
                    let one = run_batch(m, &[ids.as_slice()]);
                    telemetry.run_ns += start.elapsed().as_nanos() as u64;
                    telemetry.batches += 1;
                    results[*i] = Some(one.map_err(|e| run_error(&label, e)).and_then(|mut v| {
                        v.pop().ok_or_else(|| run_error(&label, "no answer".into()))
                    }));
                }
            }
        }
    }
    m.requests += requests.len() as u64;
    telemetry.queue_ns = first_run.duration_since(t0).as_nanos() as u64;
    BatchOutcome {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(run_error(&label, "not run".into()))))
            .collect(),
        telemetry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Tokenizer {
        let json = r###"{
          "added_tokens": [{"id": 1, "content": "[UNK]", "special": true},
                           {"id": 2, "content": "[CLS]", "special": true},
                           {"id": 3, "content": "[SEP]", "special": true}],
          "normalizer": {"type": "BertNormalizer", "clean_text": true,
                         "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
          "pre_tokenizer": {"type": "BertPreTokenizer"},
          "post_processor": {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
             "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
          "truncation": {"max_length": 8},
          "model": {"type": "WordPiece", "unk_token": "[UNK]",
                    "continuing_subword_prefix": "##", "max_input_chars_per_word": 10,
                    "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
                              "cafe": 4, "un": 5, "##able": 6, "!": 7, "a": 8, "中": 9}}
        }"###;
        Tokenizer::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn wordpiece_normalises_splits_and_truncates() {
        let t = tiny();
        // Accents stripped, lower-cased, punctuation split off.
        assert_eq!(t.encode("CAFÉ!"), [2, 4, 7, 3]);
        assert_eq!(t.encode("unable"), [2, 5, 6, 3]);
        // A word that cannot be cut is one [UNK]; so is a very long one.
        assert_eq!(t.encode("unknown a"), [2, 1, 8, 3]);
        assert_eq!(t.encode("aaaaaaaaaaa"), [2, 1, 3]);
        // CJK ideographs are words of their own; control characters go.
        assert_eq!(t.encode("a中a\u{7}"), [2, 8, 9, 8, 3]);
        // Special tokens in the text are kept whole.
        assert_eq!(t.encode("a[SEP]a"), [2, 8, 3, 8, 3]);
        // At most 8 ids with [CLS] and [SEP].
        assert_eq!(t.encode("a a a a a a a a a a"), [2, 8, 8, 8, 8, 8, 8, 3]);
        assert_eq!(t.encode(""), [2, 3]);
    }

    #[test]
    fn bad_tokenizer_files_are_explained() {
        let e = Tokenizer::from_json(b"{not json").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = Tokenizer::from_json(br#"{"model": {"type": "BPE"}}"#).unwrap_err();
        assert!(e.contains("BPE"), "{e}");
    }

    #[test]
    fn pooling_is_the_normalised_mean_of_the_tokens() {
        // Two tokens of a 2-d model, then a padding row that must not count.
        let v = mean_pool_normalize(&[3.0, 0.0, 3.0, 8.0, 99.0, 99.0], 2, 2);
        assert_eq!(v, [0.6, 0.8]);
        assert_eq!(mean_pool_normalize(&[0.0, 0.0], 1, 2), [0.0, 0.0]);
    }
}
