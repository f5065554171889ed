//! Identities: every participant is an ed25519 key pair, and its public key *is* its identity.
//!
//! [`NodeId`] has one canonical text form, 52 characters of lowercase base32, used in the CLI,
//! logs and the database alike, and a 10-character short form (a prefix of the canonical form,
//! so it can be grepped for) for log lines. [`SecretKey`] never prints its bytes; its file form
//! is produced here, while writing it with safe permissions is `mesh-node`'s job.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::text;

/// Length of a public key (and of a [`NodeId`]) in bytes.
pub const NODE_ID_LEN: usize = 32;
/// Length of the canonical text form of a [`NodeId`].
pub const NODE_ID_TEXT_LEN: usize = text::encoded_len(NODE_ID_LEN);
/// Length of [`NodeId::short`].
pub const NODE_ID_SHORT_LEN: usize = 10;

/// A participant's identity: its ed25519 public key.
///
/// Only valid curve points can be constructed, so holding a `NodeId` means holding a key that
/// signatures can be checked against.
///
/// Stored compressed (32 bytes, cheap to copy and compare); the point is decompressed when a
/// signature is checked.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// Builds an id from raw public key bytes, refusing bytes that are not an ed25519 point.
    pub fn from_bytes(bytes: &[u8; NODE_ID_LEN]) -> Result<Self, Error> {
        VerifyingKey::from_bytes(bytes)
            .map(|key| Self(key.to_bytes()))
            .map_err(|_| Error::InvalidText {
                what: "node id",
                reason: "not a valid ed25519 public key".into(),
            })
    }

    /// The short form for log lines: the first characters of the canonical form.
    pub fn short(&self) -> String {
        let mut full = self.to_string();
        full.truncate(NODE_ID_SHORT_LEN);
        full
    }

    /// The decompressed key; `None` cannot happen for a constructed id but is not unwrapped.
    pub(crate) fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text::encode(self.as_bytes()))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| Error::InvalidText {
            what: "node id",
            reason,
        };
        let s = s.trim();
        if s.len() != NODE_ID_TEXT_LEN {
            return Err(invalid(format!(
                "expected {NODE_ID_TEXT_LEN} characters of base32, got {}",
                s.chars().count()
            )));
        }
        let bytes = text::decode(s).map_err(invalid)?;
        let bytes: [u8; NODE_ID_LEN] = bytes
            .try_into()
            .map_err(|_| invalid("wrong decoded length".into()))?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.as_bytes().serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <[u8; NODE_ID_LEN]>::deserialize(deserializer)?;
            Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
        }
    }
}

/// Prefix of a secret key's file form; the version lets the format change later.
const SECRET_KEY_PREFIX: &str = "mesh-secret-key-v1:";

/// A participant's ed25519 secret key. Its bytes are wiped on drop and never printed.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed))
    }

    /// The key whose 32-byte seed is `seed` (deterministic; tests and the simulator use it).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The identity that goes with this key.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// Signs `message` as it is; callers add a domain-separation context first.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The 32-byte seed, for handing the key to TLS; wiped when dropped.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The text stored in a key file: a versioned prefix and the base32 seed, one line.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = self.seed();
        Zeroizing::new(format!(
            "{SECRET_KEY_PREFIX}{}\n",
            Zeroizing::new(text::encode(seed.as_ref())).as_str()
        ))
    }

    /// Parses [`to_file_text`](Self::to_file_text)'s output.
    pub fn from_file_text(file_text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidText {
            what: "secret key file",
            reason,
        };
        let body = file_text
            .trim()
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or_else(|| invalid(format!("does not start with {SECRET_KEY_PREFIX:?}")))?;
        let seed = Zeroizing::new(text::decode(body).map_err(invalid)?);
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("key is {} bytes, expected 32", seed.len())))?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {})", self.node_id().short())
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for NodeId {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Self>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        use proptest::strategy::Strategy;
        proptest::array::uniform32(proptest::num::u8::ANY)
            .prop_map(|seed| SecretKey::from_seed(&seed).node_id())
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_is_52_lowercase_characters_and_short_is_its_prefix() {
        let id = SecretKey::from_seed(&[7; 32]).node_id();
        let text = id.to_string();
        assert_eq!(text.len(), NODE_ID_TEXT_LEN);
        assert_eq!(text.len(), 52);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(text.starts_with(&id.short()));
        assert_eq!(id.short().len(), NODE_ID_SHORT_LEN);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let id = SecretKey::from_seed(&[7; 32]).node_id().to_string();
        let short = id[..40].parse::<NodeId>().unwrap_err().to_string();
        assert!(short.contains("expected 52 characters"), "{short}");
        let mut bad = id.clone();
        bad.replace_range(5..6, "0");
        let bad = bad.parse::<NodeId>().unwrap_err().to_string();
        assert!(bad.contains("'0' at position 5"), "{bad}");
    }

    #[test]
    fn parse_refuses_bytes_that_are_not_a_curve_point() {
        // y = 2 has no matching x on edwards25519, so these bytes are no public key.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let err = NodeId::from_bytes(&bytes).unwrap_err().to_string();
        assert!(err.contains("not a valid ed25519 public key"), "{err}");
        let err = text::encode(&bytes)
            .parse::<NodeId>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid ed25519 public key"), "{err}");
    }

    #[test]
    fn parse_accepts_uppercase_and_surrounding_space() {
        let id = SecretKey::from_seed(&[9; 32]).node_id();
        let pasted = format!("  {}\n", id.to_string().to_ascii_uppercase());
        assert_eq!(pasted.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn secret_key_file_text_round_trips_and_debug_hides_the_key() {
        let key = SecretKey::from_seed(&[3; 32]);
        let file = key.to_file_text();
        assert!(file.starts_with(SECRET_KEY_PREFIX));
        let back = SecretKey::from_file_text(&file).unwrap();
        assert_eq!(back.node_id(), key.node_id());
        let debug = format!("{key:?}");
        assert!(!debug.contains(&text::encode(&[3; 32])), "{debug}");
    }

    #[test]
    fn secret_key_file_text_rejects_other_files() {
        let err = SecretKey::from_file_text("ssh-ed25519 AAAA").unwrap_err();
        assert!(err.to_string().contains("does not start with"), "{err}");
        let err = SecretKey::from_file_text("mesh-secret-key-v1:abc").unwrap_err();
        assert!(err.to_string().contains("secret key file"), "{err}");
    }

    proptest! {
        #[test]
        fn node_id_text_round_trips(id: NodeId) {
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }

        #[test]
        fn node_id_postcard_round_trips(id: NodeId) {
            let bytes = postcard::to_stdvec(&id).unwrap();
            prop_assert_eq!(bytes.len(), NODE_ID_LEN);
            prop_assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), id);
        }

        /// Arbitrary text fails the length check at once; 52 base32 characters in either case,
        /// with whitespace around, reach the base32 decoder and (when the last character's
        /// unused bits are zero, as `a` and `q` have them) the curve-point check.
        #[test]
        fn node_id_text_of_the_right_form_parses_only_to_its_canonical_form(
            text in prop_oneof![
                "[ \t]{0,2}[a-zA-Z2-7]{52}[ \t\n]{0,2}",
                "[ \t]{0,2}[a-zA-Z2-7]{51}[aAqQ][ \t\n]{0,2}",
            ],
        ) {
            if let Ok(id) = text.parse::<NodeId>() {
                prop_assert_eq!(id.to_string(), text.trim().to_ascii_lowercase());
            }
        }

        /// Key files with the right prefix and base32 of any length up to a little over a
        /// key's: only a 32-byte seed parses, and it writes back the same text.
        #[test]
        fn secret_key_file_text_past_the_prefix_never_panics(
            body in prop_oneof!["[a-z2-7]{0,60}", "[a-z2-7]{51}[aq]"],
        ) {
            let file_text = format!("{SECRET_KEY_PREFIX}{body}\n");
            if let Ok(key) = SecretKey::from_file_text(&file_text) {
                prop_assert_eq!(body.len(), NODE_ID_TEXT_LEN);
                let written = key.to_file_text();
                prop_assert_eq!(written.as_str(), file_text.as_str());
            }
        }
    }
}
