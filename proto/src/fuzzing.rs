//! Entry points for the fuzz targets in `fuzz/`, compiled only under `cfg(fuzzing)` (and for
//! this crate's own tests, which run them on hostile bodies too).
//!
//! Random bytes never carry a valid signature, so fuzzing only the public verifiers would stop
//! at the signature check; these hooks also run the body decoders and shape checks behind it.

use crate::grant::Grant;
use crate::revocation::Revocation;
use crate::signed::decode_canonical;
use crate::token::EnrollmentToken;

/// Decodes `bytes` as a grant body and checks its shape, as `open_grant` does after the
/// signature.
pub fn grant_body(bytes: &[u8]) {
    if let Ok(grant) = decode_canonical::<Grant>("grant", bytes) {
        let _ = grant.check_shape();
        let again = postcard::to_stdvec(&grant).ok();
        assert_eq!(
            again.as_deref(),
            Some(bytes),
            "canonical grants re-encode identically"
        );
    }
}

/// Decodes `bytes` as a token body and checks its shape.
pub fn token_body(bytes: &[u8]) {
    if let Ok(token) = decode_canonical::<EnrollmentToken>("enrollment token", bytes) {
        let _ = token.check_shape();
    }
}

/// Decodes `bytes` as a revocation body.
pub fn revocation_body(bytes: &[u8]) {
    let _ = decode_canonical::<Revocation>("revocation", bytes);
}
