//! Test-only strategies for hostile input that gets past the first checks.
//!
//! Random bytes almost always fail at a version byte, a prefix or a signature, so tests built on
//! them never reach the decoders behind those checks. These strategies produce bodies that do:
//! random bytes, and valid encodings as they are or with a byte flipped, cut short or extended.
//! Tests wrap them in a valid header themselves (frame version, known type code and true length;
//! token prefix and base32; envelope version, pinned key id and, where the body decoder is to
//! be reached, a real signature).

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use serde::Serialize;

/// Slack on top of the input's own size that a decoder may allocate (error messages, a capped
/// sequence's capacity): anything beyond means a length from the input was believed.
pub(crate) const ALLOC_SLACK: usize = 4096;

/// A valid encoding as it is (so that what lies behind the decoder, such as shape checks, is
/// reached too), or with one byte changed, or cut short, or with a few bytes appended.
pub(crate) fn mutated(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        valid,
        0..4u8,
        any::<Index>(),
        1..=u8::MAX,
        proptest::collection::vec(any::<u8>(), 1..8),
    )
        .prop_map(|(mut bytes, how, at, xor, tail)| {
            match how {
                0 => {}
                1 if !bytes.is_empty() => {
                    let at = at.index(bytes.len());
                    bytes[at] ^= xor;
                }
                2 => bytes.truncate(at.index(bytes.len() + 1)),
                _ => bytes.extend_from_slice(&tail),
            }
            bytes
        })
}

/// Bodies for a decoder of `T`: random bytes, or a mutated postcard encoding of some `T`.
pub(crate) fn hostile_body<T: Arbitrary + Serialize + Debug>() -> impl Strategy<Value = Vec<u8>> {
    hostile_body_of(any::<T>())
}

/// Bodies for a decoder of `T`: random bytes, or a mutated postcard encoding of a value from
/// `values` (a strategy for values that pass the checks behind the decoder, say).
pub(crate) fn hostile_body_of<T: Serialize + Debug>(
    values: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        mutated(values.prop_map(|value| postcard::to_stdvec(&value).unwrap_or_default())),
    ]
}
