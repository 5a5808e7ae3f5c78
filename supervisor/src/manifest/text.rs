//! Text models in the manifest: a `[[models]]` entry with
//! `kind = "text-embedding"` and its `tokenizer` file.
//!
//! ```toml
//! [[models]]
//! id = "minilm"
//! version = "all-MiniLM-L6-v2-int8"
//! path = "../.deps/models/minilm.onnx"
//! blake3 = "…"                      # pins the ONNX file
//! kind = "text-embedding"
//! tokenizer = "../.deps/models/minilm.tokenizer.json"
//! tokenizer_blake3 = "…"            # pins the tokenizer file
//! ```
//!
//! Agents then send UTF-8 text (`u8[n]`) and receive the sentence
//! embedding (`f32[hidden]`, unit length).  The supervisor reads both
//! files once, checks each against its pin and sends them to the inference
//! host as one blob ([`lockstep_common::text_model`]); the BLAKE3 the host
//! checks is the blob's.

use super::{Ctx, ManifestError, valid_blake3};
use lockstep_common::text_model::TextKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// What makes a model a text model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextModelDef {
    /// What it computes (`text-embedding`).
    pub kind: String,
    /// The tokenizer file (Hugging Face `tokenizer.json`; resolved).
    pub tokenizer: PathBuf,
    /// Pinned BLAKE3 of the tokenizer file, lower-case hex.
    pub tokenizer_blake3: Option<String>,
}

impl TextModelDef {
    /// The kind, parsed.
    pub fn kind(&self) -> Option<TextKind> {
        TextKind::from_name(&self.kind)
    }
}

/// Checks `models[i]`'s text options (`kind`, `tokenizer`,
/// `tokenizer_blake3`): all absent is a plain model.
pub(super) fn validate(
    cx: &Ctx<'_>,
    i: usize,
    base: &Path,
    kind: Option<&Spanned<String>>,
    tokenizer: Option<&Spanned<String>>,
    tokenizer_blake3: Option<&Spanned<String>>,
) -> Result<Option<TextModelDef>, ManifestError> {
    let Some(kind) = kind else {
        if let Some(t) = tokenizer.or(tokenizer_blake3) {
            return cx.err(
                Some(t.span()),
                format!("models[{i}].tokenizer"),
                "a tokenizer belongs to a text model: add kind = \"text-embedding\"",
            );
        }
        return Ok(None);
    };
    if TextKind::from_name(kind.get_ref()).is_none() {
        let known: Vec<&str> = TextKind::ALL.iter().map(|k| k.name()).collect();
        return cx.err(
            Some(kind.span()),
            format!("models[{i}].kind"),
            format!(
                "unknown kind {:?} (known: {})",
                kind.get_ref(),
                known.join(", ")
            ),
        );
    }
    let Some(tokenizer) = tokenizer else {
        return cx.err(
            Some(kind.span()),
            format!("models[{i}].tokenizer"),
            format!(
                "a {} model needs its tokenizer file (tokenizer = \"…/tokenizer.json\")",
                kind.get_ref()
            ),
        );
    };
    let path = base.join(tokenizer.get_ref());
    if !path.is_file() {
        return cx.err(
            Some(tokenizer.span()),
            format!("models[{i}].tokenizer"),
            format!("no such file: {}", path.display()),
        );
    }
    let pin = match tokenizer_blake3 {
        Some(h) if !valid_blake3(h.get_ref()) => {
            return cx.err(
                Some(h.span()),
                format!("models[{i}].tokenizer_blake3"),
                "must be 64 hexadecimal digits",
            );
        }
        Some(h) => Some(h.get_ref().to_ascii_lowercase()),
        None => None,
    };
    Ok(Some(TextModelDef {
        kind: kind.get_ref().clone(),
        tokenizer: path,
        tokenizer_blake3: pin,
    }))
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;

    fn parse(models: &str, dir: &std::path::Path) -> Result<Manifest, String> {
        let text = format!("[[agents]]\nname = \"a\"\nmodule = \"a.wasm\"\n{models}");
        Manifest::parse(&text, "m.toml", dir).map_err(|e| e.to_string())
    }

    #[test]
    fn text_models_need_a_known_kind_and_their_tokenizer() {
        let tmp = tempfile::Builder::new()
            .prefix("lockstep-text-manifest-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        for f in ["a.wasm", "m.onnx", "tok.json"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let model = "[[models]]\nid = \"e\"\nversion = \"1\"\npath = \"m.onnx\"\n";
        let m = parse(
            &format!("{model}kind = \"text-embedding\"\ntokenizer = \"tok.json\"\ntokenizer_blake3 = \"{}\"\n", "AB".repeat(32)),
            &dir,
        )
        .unwrap();
        let text = m.models[0].text.as_ref().unwrap();
        assert_eq!(text.tokenizer, dir.join("tok.json"));
        assert_eq!(
            text.tokenizer_blake3.as_deref(),
            Some("ab".repeat(32).as_str())
        );
        assert!(parse(model, &dir).unwrap().models[0].text.is_none());

        let e = parse(&format!("{model}kind = \"text-embedding\"\n"), &dir).unwrap_err();
        assert!(
            e.contains("models[0].tokenizer") && e.contains("needs its tokenizer"),
            "{e}"
        );
        let e = parse(
            &format!("{model}kind = \"image\"\ntokenizer = \"tok.json\"\n"),
            &dir,
        )
        .unwrap_err();
        assert!(e.contains("unknown kind \"image\""), "{e}");
        let e = parse(&format!("{model}tokenizer = \"tok.json\"\n"), &dir).unwrap_err();
        assert!(e.contains("add kind"), "{e}");
        let e = parse(
            &format!("{model}kind = \"text-embedding\"\ntokenizer = \"nope.json\"\n"),
            &dir,
        )
        .unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        let e = parse(
            &format!("{model}kind = \"text-embedding\"\ntokenizer = \"tok.json\"\ntokenizer_blake3 = \"xyz\"\n"),
            &dir,
        )
        .unwrap_err();
        assert!(e.contains("tokenizer_blake3"), "{e}");
    }
}
