//! Enrollment tokens: one-time secrets that carry everything `mesh node join` and `mesh login`
//! need — the coordinator's addresses and key and the CA key to pin.
//!
//! A token is a signed envelope (see [`signed`](crate::signed)) whose body starts with the CA
//! public key, so the signature can be checked with the key the token itself carries. That
//! cannot make a token trustworthy (whoever hands you a token chooses your coordinator, as with
//! any invite), but it catches any damage in copy and paste, and lets the coordinator recognise
//! its own tokens. The coordinator stores only [`TokenSecret::hash`]; the name and labels a
//! joining host gets are bound to the invite on the coordinator, not carried here.
//!
//! Text form: [`TOKEN_PREFIX`] followed by lowercase base32. It is one "word" (a double-click
//! selects all of it), and parsing ignores case and any whitespace, so a token wrapped across
//! lines or shouted in capitals still works.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Rejection};
use crate::id::{NODE_ID_LEN, NodeId};
use crate::signed::{CaKeySet, CaSigner, Domain, Envelope};
use crate::text;
use crate::time::{CLOCK_SKEW_TOLERANCE, UnixTime};

/// Every token's text starts with this.
pub const TOKEN_PREFIX: &str = "meshtok1";
/// Most coordinator addresses a token may carry.
pub const MAX_TOKEN_ADDRS: usize = 8;
/// Longest coordinator address (`host:port`) a token may carry.
pub const MAX_ADDR_LEN: usize = 255;

/// Who a token enrolls.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TokenKind {
    /// A host (`mesh node join`).
    Host,
    /// A user's device (`mesh login`).
    User,
    /// A standalone relay (`mesh relay join`).
    Relay,
}

/// The one-time secret in a token. Wiped on drop; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenSecret([u8; 32]);

impl TokenSecret {
    /// A fresh random secret.
    pub fn random() -> Result<Self, Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(secret))
    }

    /// What the coordinator stores: SHA-256 of a context and the secret.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"mesh/token-secret/v1\0")
            .chain_update(self.0)
            .finalize()
            .into()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

/// The content of an enrollment token.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnrollmentToken {
    /// The CA key to pin. It must stay the first field: postcard writes it as the body's first
    /// 32 bytes, which is where [`open_token`] reads it to check the signature.
    pub ca_key: NodeId,
    /// Host or user.
    pub kind: TokenKind,
    /// The key the coordinator authenticates with.
    pub coordinator_key: NodeId,
    /// Where to reach the coordinator (`host:port`), in order of preference.
    pub coordinator_addrs: Vec<String>,
    /// The one-time secret.
    pub secret: TokenSecret,
    /// After this the coordinator refuses the token.
    pub not_after: UnixTime,
}

impl EnrollmentToken {
    pub(crate) fn check_shape(&self) -> Result<(), String> {
        if self.coordinator_addrs.is_empty() || self.coordinator_addrs.len() > MAX_TOKEN_ADDRS {
            return Err(format!(
                "needs 1 to {MAX_TOKEN_ADDRS} coordinator addresses"
            ));
        }
        if let Some(bad) = self
            .coordinator_addrs
            .iter()
            .find(|a| a.is_empty() || a.len() > MAX_ADDR_LEN)
        {
            return Err(format!(
                "coordinator address {bad:?} is empty or longer than {MAX_ADDR_LEN} bytes"
            ));
        }
        Ok(())
    }
}

impl CaSigner {
    /// Signs `token` (whose `ca_key` must be this signer's key) and returns its text form.
    pub fn sign_token(&self, token: &EnrollmentToken) -> Result<String, Error> {
        let refuse = |reason: String| Error::Encode {
            what: "enrollment token",
            reason,
        };
        if token.ca_key != self.public_key() {
            return Err(refuse("ca_key is not the signing key".into()));
        }
        token.check_shape().map_err(refuse)?;
        let bytes = self.seal(Domain::Token, token)?;
        Ok(format!("{TOKEN_PREFIX}{}", text::encode(&bytes)))
    }
}

/// Turns a token's text into its envelope bytes, ignoring case and whitespace.
pub fn token_bytes_from_text(token: &str) -> Result<Vec<u8>, Rejection> {
    let malformed = |reason: String| Rejection::Malformed {
        what: Domain::Token.name().into(),
        reason,
    };
    // Cap before copying: the largest envelope in base32, with generous room for whitespace.
    let limit = 2 * (TOKEN_PREFIX.len() + text::encoded_len(Domain::Token.max_len()));
    if token.len() > limit {
        return Err(malformed(format!(
            "{} characters is longer than any token",
            token.len()
        )));
    }
    let compact: String = token.chars().filter(|c| !c.is_whitespace()).collect();
    let body = match compact.get(..TOKEN_PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(TOKEN_PREFIX) => &compact[TOKEN_PREFIX.len()..],
        _ => {
            return Err(malformed(format!(
                "does not start with {TOKEN_PREFIX:?}; copy the whole token"
            )));
        }
    };
    text::decode(body).map_err(malformed)
}

/// Checks a token's signature with the CA key it carries, its shape, and its expiry at `now`.
/// When `pinned` is given (the coordinator redeeming its own token), the CA key the token
/// carries must be the very key pinned under the token's key id: an 8-byte key id names a key,
/// it does not prove one, and a forger can search for a key whose id matches.
pub fn open_token(
    bytes: &[u8],
    pinned: Option<&CaKeySet>,
    now: UnixTime,
) -> Result<EnrollmentToken, Rejection> {
    let envelope = Envelope::parse(Domain::Token, bytes)?;
    let bad_signature = || Rejection::BadSignature {
        what: Domain::Token.name().into(),
    };
    let ca_bytes: &[u8; NODE_ID_LEN] = envelope
        .body
        .get(..NODE_ID_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad_signature)?;
    // A damaged key is a damaged token: report it as the signature failing, not as a bad issuer.
    let ca_key = NodeId::from_bytes(ca_bytes).map_err(|_| bad_signature())?;
    let token: EnrollmentToken = envelope.open(&ca_key)?;
    token.check_shape().map_err(|reason| Rejection::Malformed {
        what: Domain::Token.name().into(),
        reason,
    })?;
    if let Some(pinned) = pinned
        && pinned.get(&envelope.key_id) != Some(&ca_key)
    {
        return Err(Rejection::WrongIssuer {
            key_id: envelope.key_id,
        });
    }
    if now > token.not_after.saturating_add(CLOCK_SKEW_TOLERANCE) {
        return Err(Rejection::Expired {
            not_after: token.not_after,
            now,
        });
    }
    Ok(token)
}

/// [`token_bytes_from_text`] then [`open_token`].
pub fn open_token_text(
    token: &str,
    pinned: Option<&CaKeySet>,
    now: UnixTime,
) -> Result<EnrollmentToken, Rejection> {
    open_token(&token_bytes_from_text(token)?, pinned, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::{ALLOC_SLACK, hostile_body_of};
    use crate::id::SecretKey;
    use crate::signed::ENVELOPE_VERSION;
    use crate::test_alloc::largest_allocation;
    use proptest::prelude::*;
    use std::time::Duration;

    const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn ca() -> CaSigner {
        CaSigner::new(SecretKey::from_seed(&[1; 32]))
    }

    fn token(ca: &CaSigner) -> EnrollmentToken {
        EnrollmentToken {
            ca_key: ca.public_key(),
            kind: TokenKind::Host,
            coordinator_key: SecretKey::from_seed(&[2; 32]).node_id(),
            coordinator_addrs: vec!["192.0.2.10:7443".into(), "coord.example:7443".into()],
            secret: TokenSecret([5; 32]),
            not_after: NOW.saturating_add(Duration::from_secs(86_400)),
        }
    }

    #[test]
    fn text_form_round_trips_and_is_one_word() {
        let ca = ca();
        let t = token(&ca);
        let text = ca.sign_token(&t).unwrap();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(open_token_text(&text, None, NOW).unwrap(), t);
    }

    #[test]
    fn wrapped_and_uppercased_tokens_still_parse() {
        let ca = ca();
        let text = ca.sign_token(&token(&ca)).unwrap();
        let mangled: String = text
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(60)
            .map(|c| format!("  {}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(open_token_text(&mangled, None, NOW).unwrap(), token(&ca));
    }

    #[test]
    fn every_tampered_byte_fails_with_the_reason_for_that_byte() {
        let ca = ca();
        let text = ca.sign_token(&token(&ca)).unwrap();
        let bytes = token_bytes_from_text(&text).unwrap();
        for position in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut tampered = bytes.clone();
                tampered[position] ^= flip;
                let err = open_token(&tampered, None, NOW).unwrap_err();
                let expected_ok = match position {
                    0 => {
                        matches!(err, Rejection::Malformed { ref reason, .. } if reason.contains("version"))
                    }
                    _ => matches!(err, Rejection::BadSignature { .. }),
                };
                assert!(expected_ok, "byte {position} ^ {flip:#x}: {err:?}");
            }
        }
    }

    #[test]
    fn every_changed_character_of_the_text_is_refused() {
        let ca = ca();
        let text = ca.sign_token(&token(&ca)).unwrap();
        for (position, original) in text.char_indices() {
            let replacement = if original == 'a' { 'b' } else { 'a' };
            let mut tampered = text.clone();
            tampered.replace_range(position..position + 1, &replacement.to_string());
            let err = open_token_text(&tampered, None, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    Rejection::BadSignature { .. } | Rejection::Malformed { .. }
                ),
                "char {position}: {err:?}"
            );
        }
    }

    #[test]
    fn expired_tokens_fail_as_expired() {
        let ca = ca();
        let t = token(&ca);
        let text = ca.sign_token(&t).unwrap();
        let later = t
            .not_after
            .saturating_add(CLOCK_SKEW_TOLERANCE + Duration::from_secs(1));
        assert_eq!(
            open_token_text(&text, None, later).unwrap_err(),
            Rejection::Expired {
                not_after: t.not_after,
                now: later
            }
        );
    }

    #[test]
    fn a_coordinator_refuses_tokens_of_another_ca() {
        let ca = ca();
        let other = CaSigner::new(SecretKey::from_seed(&[8; 32]));
        let text = other.sign_token(&token(&other)).unwrap();
        let pinned = CaKeySet::single(ca.public_key());
        assert_eq!(
            open_token_text(&text, Some(&pinned), NOW).unwrap_err(),
            Rejection::WrongIssuer {
                key_id: other.key_id()
            }
        );
    }

    #[test]
    fn a_pinned_key_id_is_not_enough_the_whole_key_must_match() {
        // A forger's key whose id collides with the pinned key's: simulated by pinning the
        // real key under the forger's id, which is what a found collision amounts to.
        let ca = ca();
        let forger = CaSigner::new(SecretKey::from_seed(&[8; 32]));
        let text = forger.sign_token(&token(&forger)).unwrap();
        let mut pinned = CaKeySet::default();
        pinned.pin_under(forger.key_id(), ca.public_key());
        assert_eq!(
            open_token_text(&text, Some(&pinned), NOW).unwrap_err(),
            Rejection::WrongIssuer {
                key_id: forger.key_id()
            }
        );
        // The real key, pinned the ordinary way, still opens its own tokens.
        let own = ca.sign_token(&token(&ca)).unwrap();
        let pinned = CaKeySet::single(ca.public_key());
        assert_eq!(
            open_token_text(&own, Some(&pinned), NOW).unwrap(),
            token(&ca)
        );
    }

    #[test]
    fn text_errors_say_what_to_do() {
        let err = open_token_text("hello", None, NOW).unwrap_err().to_string();
        assert!(err.contains("copy the whole token"), "{err}");
        let err = open_token_text(&"a".repeat(100_000), None, NOW)
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than any token"), "{err}");
    }

    #[test]
    fn the_secret_hash_is_stable_and_debug_hides_the_secret() {
        let s = TokenSecret([5; 32]);
        assert_eq!(s.hash(), TokenSecret([5; 32]).hash());
        assert_ne!(s.hash(), TokenSecret([6; 32]).hash());
        assert_eq!(format!("{s:?}"), "TokenSecret(..)");
    }

    /// `t` bent into a token the test CA signs: its key, 1 to 8 short addresses.
    fn well_shaped(mut t: EnrollmentToken) -> EnrollmentToken {
        t.ca_key = ca().public_key();
        t.coordinator_addrs.truncate(MAX_TOKEN_ADDRS);
        if t.coordinator_addrs.is_empty() {
            t.coordinator_addrs.push("x:1".into());
        }
        for a in &mut t.coordinator_addrs {
            *a = a.chars().take(20).collect();
            if a.is_empty() {
                a.push('h');
            }
        }
        t
    }

    /// Well-shaped tokens, half of them unexpired at [`NOW`] and half just expired, so that
    /// their mutations get as far as the expiry check.
    fn plausible_tokens() -> impl Strategy<Value = EnrollmentToken> {
        (any::<EnrollmentToken>(), any::<bool>()).prop_map(|(t, unexpired)| {
            let mut t = well_shaped(t);
            let hour = Duration::from_secs(3600);
            t.not_after = if unexpired {
                NOW.saturating_add(hour)
            } else {
                NOW.saturating_sub(hour)
            };
            t
        })
    }

    proptest! {
        #[test]
        fn signed_tokens_round_trip(t: EnrollmentToken) {
            let t = well_shaped(t);
            let text = ca().sign_token(&t).unwrap();
            prop_assert_eq!(open_token_text(&text, None, UnixTime::EPOCH).unwrap(), t);
        }

        /// Token texts with the prefix and valid base32, in either case and wrapped as people
        /// paste them, around envelopes with a valid header. Signed with the key the body
        /// carries, they reach the body decoder, the shape check and the expiry; with a random
        /// signature they stop at the signature. Nothing panics or allocates beyond the input,
        /// and only a canonical, well-shaped token opens.
        #[test]
        fn hostile_token_bodies_never_panic_or_overallocate(
            mut body in hostile_body_of(plausible_tokens()),
            signature in proptest::collection::vec(any::<u8>(), 64),
            signed: bool,
            pinned: bool,
            upper: bool,
            wrap in 8usize..120,
        ) {
            let ca = ca();
            let key = ca.public_key();
            if signed && !body.starts_with(key.as_bytes()) {
                // open_token checks the signature with the key the body starts with.
                body.splice(0..0, key.as_bytes().iter().copied());
            }
            let bytes = if signed {
                ca.seal_raw(Domain::Token, &body)
            } else {
                let mut bytes = vec![ENVELOPE_VERSION];
                bytes.extend_from_slice(ca.key_id().as_bytes());
                bytes.extend_from_slice(&signature);
                bytes.extend_from_slice(&body);
                bytes
            };
            let mut encoded = text::encode(&bytes);
            if upper {
                encoded = encoded.to_ascii_uppercase();
            }
            let mut text = String::from(TOKEN_PREFIX);
            for (i, c) in encoded.chars().enumerate() {
                if i % wrap == 0 {
                    text.push_str("\r\n  ");
                }
                text.push(c);
            }
            let keys = CaKeySet::single(key);
            let (result, largest) = largest_allocation(|| {
                open_token_text(&text, pinned.then_some(&keys), NOW)
            });
            prop_assert!(
                largest <= ALLOC_SLACK + 2 * text.len(),
                "allocated {} bytes for a {}-character token", largest, text.len()
            );
            match result {
                Ok(token) => {
                    prop_assert!(signed);
                    prop_assert!(token.check_shape().is_ok());
                    prop_assert_eq!(postcard::to_stdvec(&token).unwrap(), body.clone());
                }
                Err(Rejection::BadSignature { .. }) => {
                    prop_assert!(!signed, "the CA's own signature was refused");
                }
                Err(Rejection::WrongIssuer { .. }) => {
                    prop_assert!(false, "the token carries the pinned key");
                }
                Err(Rejection::Malformed { .. }) => {}
                Err(other) => {
                    // Only the expiry lies behind the body decoder.
                    prop_assert!(signed, "{:?}", other);
                    let is_expired = matches!(other, Rejection::Expired { .. });
                    prop_assert!(is_expired, "{:?}", other);
                }
            }
            crate::fuzzing::token_body(&body);
        }
    }
}
