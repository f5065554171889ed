//! The errors of this crate: [`Error`] for anything that fails to parse or decode, and
//! [`Rejection`], the typed reason a signed object was refused.

use serde::{Deserialize, Serialize};

use crate::grant::Permissions;
use crate::id::NodeId;
use crate::signed::KeyId;
use crate::time::UnixTime;

/// Why bytes or text could not be turned into a mesh value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A text form (node id, token, key file) is wrong; `reason` says how.
    #[error("invalid {what}: {reason}")]
    InvalidText {
        /// What was being parsed.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A frame announced a payload longer than its protocol allows; nothing was allocated.
    #[error("{protocol} frame of {len} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The protocol whose frame it was.
        protocol: &'static str,
        /// The announced length.
        len: u64,
        /// The protocol's cap.
        limit: u32,
    },
    /// A frame or signed object carries a format version this build does not speak.
    #[error("unsupported {what} version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// What carried the version.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// A frame's message type is not one this build knows.
    #[error("unknown {protocol} message type {code}")]
    UnknownMessageType {
        /// The protocol.
        protocol: &'static str,
        /// The unknown type code.
        code: u16,
    },
    /// Input ended before a complete value.
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Bytes of the right length that do not decode as the expected value.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A value could not be encoded (for example, it exceeds its protocol's frame limit).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why not.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// Why a grant (or another signed object) was refused. Hosts send this back to the client, so it
/// serializes; every variant names what to check next in its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[non_exhaustive]
pub enum Rejection {
    /// The bytes are not a well-formed signed object of the expected type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being checked.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not match the content: the object was altered or damaged.
    #[error("bad signature: the {what} was altered or damaged")]
    BadSignature {
        /// What was being checked.
        what: String,
    },
    /// Signed by a CA key this verifier does not trust.
    #[error(
        "wrong issuer: signed by CA key {key_id}, which is not pinned here (re-enroll, or wait for the CA rotation to reach this host)"
    )]
    WrongIssuer {
        /// The key id the object names.
        key_id: KeyId,
    },
    /// The grant's lifetime is over.
    #[error("expired at {not_after} (now {now}); ask for a new grant")]
    Expired {
        /// End of validity.
        not_after: UnixTime,
        /// The verifier's time.
        now: UnixTime,
    },
    /// The grant is not valid yet.
    #[error("not valid until {not_before} (now {now}); check this host's clock")]
    NotYetValid {
        /// Start of validity.
        not_before: UnixTime,
        /// The verifier's time.
        now: UnixTime,
    },
    /// The grant was issued for another host.
    #[error("wrong host: the grant is for host {granted}, this is {this}")]
    WrongHost {
        /// The host the grant names.
        granted: NodeId,
        /// The host checking it.
        this: NodeId,
    },
    /// The grant was issued to another client key than the one presenting it.
    #[error("wrong client: the grant is for device {granted}, presented by {presented}")]
    WrongClient {
        /// The client key the grant names.
        granted: NodeId,
        /// The key that presented it.
        presented: NodeId,
    },
    /// The requested Unix login is not the one the grant allows.
    #[error("login not allowed: {requested} is not granted (granted: {granted})")]
    LoginNotAllowed {
        /// The login that was asked for.
        requested: String,
        /// The login the grant allows.
        granted: String,
    },
    /// The grant does not include the permission this action needs.
    #[error("permission not granted: this needs {needed}, the grant allows {granted}")]
    PermissionNotGranted {
        /// What the action needs.
        needed: Permissions,
        /// What the grant allows.
        granted: Permissions,
    },
    /// The grant, its device or its user has been revoked.
    #[error("revoked: {what}")]
    Revoked {
        /// What was revoked (the grant, the device or the user).
        what: String,
    },
    // Appended last: variants are numbered on the wire, so existing numbers must not move.
    /// The host checked a grant for a request that needs no permission it knows: a bug in the
    /// host, refused so that it cannot let anything through.
    #[error(
        "refused by a bug in this host: {reason}; nothing was started (report it to the host's admin)"
    )]
    InvalidRequest {
        /// What is wrong with the request.
        reason: String,
    },
}
