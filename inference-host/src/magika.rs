//! Client-side helpers for Magika's file-type model (`scripts/gen-models.sh`
//! fetches it from PyPI), for Rust callers and the tests that compare the
//! runtime's answers with a direct run.  Agents compute the same features in
//! WebAssembly (`agents/examples/classifier`).

/// Bytes taken from each end of the content.
pub const BLOCK: usize = 1024;
/// The padding token.
pub const PADDING: i32 = 256;

/// Magika's input row (`[1, 2 × BLOCK]` int32) for `content`, as its Python
/// package computes it for content shorter than one read block: the first
/// [`BLOCK`] bytes after leading whitespace, padded at the end with
/// [`PADDING`], then the last [`BLOCK`] bytes before trailing whitespace,
/// padded at the front.
pub fn features(content: &[u8]) -> Vec<i32> {
    let start = content
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(content.len());
    let end = content
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let mut f: Vec<i32> = content[start..]
        .iter()
        .take(BLOCK)
        .map(|&b| i32::from(b))
        .collect();
    f.resize(BLOCK, PADDING);
    let tail = &content[..end];
    let last = &tail[tail.len().saturating_sub(BLOCK)..];
    f.extend(std::iter::repeat_n(PADDING, BLOCK - last.len()));
    f.extend(last.iter().map(|&b| i32::from(b)));
    f
}

/// The output labels (`target_labels_space`) of a Magika model's
/// `config.json`, in output order; `None` when the file does not have them.
pub fn labels(config_json: &str) -> Option<Vec<String>> {
    let key = "\"target_labels_space\":[";
    let start = config_json.find(key)? + key.len();
    let end = start + config_json[start..].find(']')?;
    Some(
        config_json[start..end]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_strip_whitespace_and_pad() {
        let f = features(b"  ab \n");
        assert_eq!(f.len(), 2 * BLOCK);
        // The beginning starts after the leading whitespace, the end stops
        // before the trailing whitespace.
        assert_eq!(&f[..5], &[97, 98, 32, 10, PADDING]);
        assert_eq!(&f[2 * BLOCK - 5..], &[PADDING, 32, 32, 97, 98]);
        assert!(features(b"   ").iter().all(|&x| x == PADDING));
    }

    #[test]
    fn labels_are_read_in_order() {
        let l = labels(r#"{"x":1,"target_labels_space":["a", "b","c"]}"#).unwrap();
        assert_eq!(l, ["a", "b", "c"]);
        assert!(labels("{}").is_none());
    }
}
