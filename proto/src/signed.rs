//! The signed envelope every CA-signed object travels in, and the pinned CA keys that check it.
//!
//! Layout (fixed, so that no length field can be tampered with):
//!
//! ```text
//! version (1) | issuer key id (8) | ed25519 signature (64) | body (postcard, rest of the bytes)
//! ```
//!
//! The signature covers `context || key id || body`, where the context is a fixed string per
//! object type ([`Domain`]) ending in a NUL byte, so that a signature over a grant can never be
//! replayed as a token or a revocation. The signature is checked over the bytes as received,
//! *before* the body is decoded; the body must then be in canonical form (re-encoding it gives
//! the same bytes), so each signed object has exactly one encoding.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::Signature;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Rejection};
use crate::id::{NodeId, SecretKey};
use crate::text;

/// Format version of the envelope.
pub const ENVELOPE_VERSION: u8 = 1;
/// Length of a [`KeyId`] in bytes.
pub const KEY_ID_LEN: usize = 8;
const SIGNATURE_LEN: usize = 64;
/// Bytes before the body: version, key id and signature.
pub const ENVELOPE_HEADER_LEN: usize = 1 + KEY_ID_LEN + SIGNATURE_LEN;

/// The object types that are signed, each with its own signature context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A [`Grant`](crate::grant::Grant).
    Grant,
    /// An [`EnrollmentToken`](crate::token::EnrollmentToken).
    Token,
    /// A [`Revocation`](crate::revocation::Revocation).
    Revocation,
}

impl Domain {
    /// The context prepended to the signed bytes. Each ends in NUL, so none is a prefix of
    /// another's signed message.
    const fn context(self) -> &'static [u8] {
        match self {
            Self::Grant => b"mesh/grant/v1\0",
            Self::Token => b"mesh/enrollment-token/v1\0",
            Self::Revocation => b"mesh/revocation/v1\0",
        }
    }

    /// The object's name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Token => "enrollment token",
            Self::Revocation => "revocation",
        }
    }

    /// The largest envelope of this type a decoder accepts, checked before anything else.
    pub const fn max_len(self) -> usize {
        match self {
            Self::Grant | Self::Token => 4096,
            Self::Revocation => 1024,
        }
    }
}

/// Names a CA key: the first 8 bytes of SHA-256 over a fixed context and the public key.
///
/// Envelopes carry the key id rather than the key, and verifiers look it up in their
/// [`CaKeySet`]; rotation adds a key with a new id before the old one is retired.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// The key id of `key`.
    pub fn of(key: &NodeId) -> Self {
        let digest = Sha256::new()
            .chain_update(b"mesh/ca-key-id/v1\0")
            .chain_update(key.as_bytes())
            .finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self(id)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        text::write_hex(f, &self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        text::decode_hex("CA key id", s).map(Self)
    }
}

/// The CA public keys a participant trusts, by key id. Holding several lets the CA rotate:
/// the new key is pinned when announced, the old one retired later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaKeySet(BTreeMap<KeyId, NodeId>);

impl CaKeySet {
    /// A set holding just `key`.
    pub fn single(key: NodeId) -> Self {
        let mut set = Self::default();
        set.pin(key);
        set
    }

    /// Trusts `key` from now on; returns its id.
    pub fn pin(&mut self, key: NodeId) -> KeyId {
        let id = KeyId::of(&key);
        self.0.insert(id, key);
        id
    }

    /// Pins `key` under an id that is not its own, as a key-id collision would: for tests of
    /// verifiers that must compare whole keys, not ids.
    #[cfg(test)]
    pub(crate) fn pin_under(&mut self, id: KeyId, key: NodeId) {
        self.0.insert(id, key);
    }

    /// Stops trusting the key with id `id`; returns whether it was pinned.
    pub fn retire(&mut self, id: &KeyId) -> bool {
        self.0.remove(id).is_some()
    }

    /// The pinned key with id `id`.
    pub fn get(&self, id: &KeyId) -> Option<&NodeId> {
        self.0.get(id)
    }

    /// Every pinned key, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyId, &NodeId)> {
        self.0.iter()
    }

    /// Whether no key is pinned (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A CA signing key with its id: what the coordinator (or an admin minting offline grants) uses.
#[derive(Debug, Clone)]
pub struct CaSigner {
    key: SecretKey,
    key_id: KeyId,
}

impl CaSigner {
    /// Signs with `key`.
    pub fn new(key: SecretKey) -> Self {
        let key_id = KeyId::of(&key.node_id());
        Self { key, key_id }
    }

    /// The id verifiers know this key by.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The public key to pin.
    pub fn public_key(&self) -> NodeId {
        self.key.node_id()
    }

    /// Encodes `body` canonically and wraps it in a signed envelope for `domain`.
    pub(crate) fn seal<T: Serialize>(&self, domain: Domain, body: &T) -> Result<Vec<u8>, Error> {
        let mut out = vec![ENVELOPE_VERSION];
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&[0; SIGNATURE_LEN]);
        let body_start = out.len();
        let mut out = postcard::to_extend(body, out).map_err(|e| Error::Encode {
            what: domain.name(),
            reason: e.to_string(),
        })?;
        if out.len() > domain.max_len() {
            return Err(Error::Encode {
                what: domain.name(),
                reason: format!(
                    "{} bytes exceeds the {}-byte limit",
                    out.len(),
                    domain.max_len()
                ),
            });
        }
        let signature = self
            .key
            .sign(&signed_message(domain, &self.key_id, &out[body_start..]));
        out[1 + KEY_ID_LEN..body_start].copy_from_slice(&signature);
        Ok(out)
    }
}

#[cfg(test)]
impl CaSigner {
    /// Signs `body` as it is, with no encoding or size check: for tests that need hostile
    /// bodies to get past the signature to the decoder behind it.
    pub(crate) fn seal_raw(&self, domain: Domain, body: &[u8]) -> Vec<u8> {
        let mut out = vec![ENVELOPE_VERSION];
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.key.sign(&signed_message(domain, &self.key_id, body)));
        out.extend_from_slice(body);
        out
    }
}

fn signed_message(domain: Domain, key_id: &KeyId, body: &[u8]) -> Vec<u8> {
    let context = domain.context();
    let mut message = Vec::with_capacity(context.len() + KEY_ID_LEN + body.len());
    message.extend_from_slice(context);
    message.extend_from_slice(key_id.as_bytes());
    message.extend_from_slice(body);
    message
}

/// An envelope split into its parts; nothing in it is checked yet.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub(crate) key_id: KeyId,
    signature: [u8; SIGNATURE_LEN],
    pub(crate) body: &'a [u8],
    domain: Domain,
}

impl<'a> Envelope<'a> {
    /// Splits `bytes`, checking only the size cap and the version.
    pub(crate) fn parse(domain: Domain, bytes: &'a [u8]) -> Result<Self, Rejection> {
        let malformed = |reason: String| Rejection::Malformed {
            what: domain.name().into(),
            reason,
        };
        if bytes.len() > domain.max_len() {
            return Err(malformed(format!(
                "{} bytes exceeds the {}-byte limit",
                bytes.len(),
                domain.max_len()
            )));
        }
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(malformed(format!(
                "truncated: {} bytes, at least {ENVELOPE_HEADER_LEN} needed",
                bytes.len()
            )));
        }
        let (header, body) = bytes.split_at(ENVELOPE_HEADER_LEN);
        if header[0] != ENVELOPE_VERSION {
            return Err(malformed(format!(
                "unsupported version {} (this build speaks version {ENVELOPE_VERSION})",
                header[0]
            )));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&header[1..1 + KEY_ID_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&header[1 + KEY_ID_LEN..]);
        Ok(Self {
            key_id: KeyId(key_id),
            signature,
            body,
            domain,
        })
    }

    /// Checks the signature against `key`, then decodes the body, which must be canonical.
    pub(crate) fn open<T: Serialize + DeserializeOwned>(
        &self,
        key: &NodeId,
    ) -> Result<T, Rejection> {
        let bad_signature = || Rejection::BadSignature {
            what: self.domain.name().into(),
        };
        if KeyId::of(key) != self.key_id {
            return Err(bad_signature());
        }
        let message = signed_message(self.domain, &self.key_id, self.body);
        key.verifying_key()
            .ok_or_else(bad_signature)?
            .verify_strict(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| bad_signature())?;
        decode_canonical(self.domain.name(), self.body).map_err(|e| Rejection::Malformed {
            what: self.domain.name().into(),
            reason: e.to_string(),
        })
    }
}

/// Decodes a postcard value that must fill `bytes` exactly and be in canonical form.
pub(crate) fn decode_canonical<T: Serialize + DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    let malformed = |reason: String| Error::Malformed { what, reason };
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    let again = postcard::to_stdvec(&value).map_err(|e| malformed(e.to_string()))?;
    if again != bytes {
        return Err(malformed("not in canonical encoding".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CaSigner {
        CaSigner::new(SecretKey::from_seed(&[1; 32]))
    }

    #[test]
    fn key_id_text_round_trips() {
        let id = signer().key_id();
        assert_eq!(id.to_string().len(), 16);
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert!("zz".parse::<KeyId>().is_err());
        assert!("é".repeat(8).parse::<KeyId>().is_err());
    }

    #[test]
    fn a_signature_for_one_domain_does_not_open_in_another() {
        let s = signer();
        let sealed = s.seal(Domain::Grant, &42u32).unwrap();
        let env = Envelope::parse(Domain::Revocation, &sealed).unwrap();
        assert!(matches!(
            env.open::<u32>(&s.public_key()),
            Err(Rejection::BadSignature { .. })
        ));
        let env = Envelope::parse(Domain::Grant, &sealed).unwrap();
        assert_eq!(env.open::<u32>(&s.public_key()).unwrap(), 42);
    }

    #[test]
    fn non_canonical_bodies_are_refused_even_when_signed() {
        // 0x80 0x00 is an overlong varint for zero: postcard may accept it, we must not.
        let s = signer();
        let body = [0x80u8, 0x00];
        let mut bytes = vec![ENVELOPE_VERSION];
        bytes.extend_from_slice(s.key_id().as_bytes());
        let sig = s
            .key
            .sign(&signed_message(Domain::Grant, &s.key_id(), &body));
        bytes.extend_from_slice(&sig);
        bytes.extend_from_slice(&body);
        let env = Envelope::parse(Domain::Grant, &bytes).unwrap();
        let err = env.open::<u32>(&s.public_key()).unwrap_err();
        assert!(matches!(err, Rejection::Malformed { .. }), "{err}");
    }

    #[test]
    fn oversized_and_truncated_envelopes_are_malformed() {
        let err = Envelope::parse(Domain::Grant, &[1; 4097]).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the 4096-byte limit"),
            "{err}"
        );
        let err = Envelope::parse(Domain::Grant, &[1; 10]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = Envelope::parse(Domain::Grant, &[9; 80]).unwrap_err();
        assert!(err.to_string().contains("unsupported version 9"), "{err}");
    }

    #[test]
    fn rotation_keeps_both_keys_until_the_old_is_retired() {
        let old = SecretKey::from_seed(&[1; 32]).node_id();
        let new = SecretKey::from_seed(&[2; 32]).node_id();
        let mut set = CaKeySet::single(old);
        let new_id = set.pin(new);
        assert_eq!(set.get(&KeyId::of(&old)), Some(&old));
        assert_eq!(set.get(&new_id), Some(&new));
        assert!(set.retire(&KeyId::of(&old)));
        assert_eq!(set.get(&KeyId::of(&old)), None);
        assert!(!set.is_empty());
    }
}
