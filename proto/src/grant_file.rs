//! The text form of a signed grant, as a client keeps it in a grant file (`--grant FILE`).
//!
//! `meshgrant1` followed by the envelope in lowercase base32: one line that survives copying
//! between machines, email and chat, like a token. The text carries the signed bytes unchanged;
//! the host verifies them as it would any grant, so a file is only as good as its signature.

use crate::error::Rejection;
use crate::grant::Grant;
use crate::signed::{Domain, Envelope, decode_canonical};
use crate::text;

/// What every grant file starts with; the digit is the format's version.
pub const GRANT_PREFIX: &str = "meshgrant1";

/// Writes signed grant bytes as grant-file text (one line, with a trailing newline).
pub fn grant_to_text(signed: &[u8]) -> String {
    format!("{GRANT_PREFIX}{}\n", text::encode(signed))
}

/// Reads grant-file text back into the signed bytes, without verifying them.
pub fn grant_from_text(file_text: &str) -> Result<Vec<u8>, Rejection> {
    text::decode_prefixed(GRANT_PREFIX, Domain::Grant.max_len(), file_text).map_err(|reason| {
        Rejection::Malformed {
            what: Domain::Grant.name().into(),
            reason,
        }
    })
}

/// What a grant says, **without checking its signature**: for the client, to learn which host
/// key to expect and which login to ask for. Never a basis for allowing anything; the host
/// verifies the same bytes with [`verify_grant`](crate::grant::verify_grant).
pub fn grant_unverified(signed: &[u8]) -> Result<Grant, Rejection> {
    let envelope = Envelope::parse(Domain::Grant, signed)?;
    decode_canonical::<Grant>(Domain::Grant.name(), envelope.body).map_err(|e| {
        Rejection::Malformed {
            what: Domain::Grant.name().into(),
            reason: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_wrapped_text_of_either_case() {
        let signed: Vec<u8> = (0..=255).collect();
        let text = grant_to_text(&signed);
        assert!(text.starts_with(GRANT_PREFIX) && text.ends_with('\n'));
        assert_eq!(grant_from_text(&text).unwrap(), signed);
        let wrapped: String = text
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(40)
            .map(|c| format!("  {}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(grant_from_text(&wrapped).unwrap(), signed);
    }

    #[test]
    fn refuses_other_text_and_oversized_input_with_the_reason() {
        let err = grant_from_text("meshtok1abc").unwrap_err().to_string();
        assert!(err.contains("meshgrant1"), "{err}");
        let huge = format!("{GRANT_PREFIX}{}", "a".repeat(1 << 20));
        let err = grant_from_text(&huge).unwrap_err().to_string();
        assert!(err.contains("longer than any"), "{err}");
    }
}
