//! The bytes a text model travels in (`kind = "text-embedding"` in the
//! manifest): its tokenizer file, checked against its pin, and its ONNX
//! model in one [`lockstep_common::text_model`] blob, which the host checks
//! against the blob's BLAKE3 like any model's bytes.

use crate::manifest::ModelDef;

/// What the host is sent for `def`, and its BLAKE3: `model` (`model_hex`
/// its hash, already checked against the model's pin) for a plain model;
/// for a text model the blob of its tokenizer (read once here, checked
/// against `tokenizer_blake3`) and `model`.
pub(crate) fn host_bytes(
    def: &ModelDef,
    model: Vec<u8>,
    model_hex: String,
) -> Result<(Vec<u8>, String), String> {
    let Some(text) = &def.text else {
        return Ok((model, model_hex));
    };
    let kind = text
        .kind()
        .ok_or_else(|| format!("unknown model kind {:?}", text.kind))?;
    let tokenizer = std::fs::read(&text.tokenizer).map_err(|e| {
        format!(
            "cannot read the tokenizer {}: {e}",
            text.tokenizer.display()
        )
    })?;
    let actual = blake3::hash(&tokenizer).to_hex().to_string();
    if let Some(pin) = &text.tokenizer_blake3
        && !pin.eq_ignore_ascii_case(&actual)
    {
        return Err(format!(
            "the tokenizer {} has BLAKE3 {actual}, the manifest pins {pin}",
            text.tokenizer.display()
        ));
    }
    let blob = lockstep_common::text_model::encode(kind, &tokenizer, &model);
    let hex = blake3::hash(&blob).to_hex().to_string();
    Ok((blob, hex))
}
