//! Revocation envelopes and bodies: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::revocation::open_revocation;
use mesh_proto::{CaKeySet, SecretKey};

fuzz_target!(|data: &[u8]| {
    let keys = CaKeySet::single(SecretKey::from_seed(&[1; 32]).node_id());
    assert!(open_revocation(data, &keys).is_err());
    mesh_proto::fuzzing::revocation_body(data);
});
