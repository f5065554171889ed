//! The vocabulary every mesh participant shares, with no I/O and no async runtime.
//!
//! - [`id`]: ed25519 identities ([`NodeId`], [`SecretKey`]) and their text forms.
//! - [`time`]: wall-clock time for grant expiry ([`UnixTime`], the [`Clock`] seam) and the
//!   clock-skew tolerance.
//! - [`signed`]: the signed envelope shared by every CA-signed object, with a domain-separation
//!   context per type, and the set of pinned CA keys a verifier trusts.
//! - [`grant`], [`token`], [`revocation`]: the signed objects of the trust model and their checks;
//!   [`grant_file`]: a grant's text form, as a client keeps it.
//! - [`codec`] and [`messages`]: versioned, length-capped frames for the control, session and relay
//!   protocols.
//! - [`nat`]: what a node knows of its NAT's mapping behaviour, from two observations.
//! - [`socket`]: the datagram-socket seam that real UDP (in `mesh-node`) and the simulator (in
//!   `mesh-netsim`) implement.
//!
//! Everything that decodes bytes from the network caps lengths before allocating and returns a
//! typed [`Error`] (or, for a grant, a typed [`Rejection`]) on any input; nothing here panics on
//! malformed data.

#[macro_use]
mod random_id;

pub mod audit;
pub mod codec;
pub mod error;
pub mod grant;
pub mod grant_file;
pub mod id;
pub mod messages;
pub mod nat;
pub mod probe;
pub mod revocation;
pub mod signed;
pub mod socket;
pub mod time;
pub mod token;

mod text;

// Also built for tests, so that the hooks' logic runs in `cargo test` and not only under
// cargo-fuzz.
#[cfg(any(fuzzing, test))]
pub mod fuzzing;

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod test_alloc;

pub use error::{Error, Rejection};
pub use grant::{
    Grant, GrantId, GrantKind, GrantRequest, Permissions, RequestedLogin, UserId, VerifiedGrant,
    verify_grant,
};
pub use id::{NodeId, SecretKey};
pub use revocation::{Revocation, RevocationId, RevocationSet, RevocationTarget};
pub use signed::{CaKeySet, CaSigner, KeyId};
pub use time::{CLOCK_SKEW_TOLERANCE, Clock, ManualClock, SystemClock, UnixTime};
pub use token::{EnrollmentToken, TokenKind};
