//! The one text encoding mesh shows people: lowercase base32 (RFC 4648, no padding).
//!
//! Base32 is case-insensitive and uses only letters and digits, so an id or token survives being
//! double-clicked in a terminal, pasted into chat, or read aloud. Decoding accepts either case
//! and, where asked, ignores whitespace so that a token wrapped across lines still parses.

use data_encoding::BASE32_NOPAD;

/// Encodes bytes as lowercase unpadded base32.
pub(crate) fn encode(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// Decodes lowercase or uppercase unpadded base32, saying where the first bad character is.
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, String> {
    if let Some((position, bad)) = text
        .char_indices()
        .find(|(_, c)| !matches!(c.to_ascii_lowercase(), 'a'..='z' | '2'..='7'))
    {
        return Err(format!(
            "invalid character {bad:?} at position {position} (expected a-z or 2-7)"
        ));
    }
    BASE32_NOPAD
        .decode(text.to_ascii_uppercase().as_bytes())
        .map_err(|e| format!("not valid base32: {e}"))
}

/// Number of base32 characters that encode `bytes` bytes without padding.
pub(crate) const fn encoded_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

/// Decodes `<prefix><base32>` text (a token, a grant file) into bytes, ignoring case and
/// whitespace; `max_bytes` bounds the decoded size, and the text length is checked against it
/// before anything is copied.
pub(crate) fn decode_prefixed(
    prefix: &str,
    max_bytes: usize,
    text: &str,
) -> Result<Vec<u8>, String> {
    // Generous room for whitespace (line wrapping, indentation) around the base32.
    let limit = 2 * (prefix.len() + encoded_len(max_bytes));
    if text.len() > limit {
        return Err(format!(
            "{} characters is longer than any {prefix} text",
            text.len()
        ));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => decode(&compact[prefix.len()..]),
        _ => Err(format!(
            "does not start with {prefix:?}; copy the whole text"
        )),
    }
}

/// Parses exactly `N` bytes written as `2 * N` hex digits (either case).
pub(crate) fn decode_hex<const N: usize>(
    what: &'static str,
    text: &str,
) -> Result<[u8; N], crate::error::Error> {
    let text = text.trim();
    let invalid = || crate::error::Error::InvalidText {
        what,
        reason: format!("expected {} hex digits", 2 * N),
    };
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(invalid());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

/// Writes bytes as lowercase hex.
pub(crate) fn write_hex(f: &mut std::fmt::Formatter<'_>, bytes: &[u8]) -> std::fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_either_case() {
        let bytes = [0u8, 1, 2, 250, 255, 7];
        let text = encode(&bytes);
        assert_eq!(text, text.to_ascii_lowercase());
        assert_eq!(text.len(), encoded_len(bytes.len()));
        assert_eq!(decode(&text).unwrap(), bytes);
        assert_eq!(decode(&text.to_ascii_uppercase()).unwrap(), bytes);
    }

    #[test]
    fn names_the_bad_character() {
        let err = decode("abc1def").unwrap_err();
        assert!(err.contains("'1' at position 3"), "{err}");
    }
}
