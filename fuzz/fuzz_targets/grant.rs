//! Grant envelopes and bodies: no input panics or verifies against a pinned key it was not
//! signed with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::grant::open_grant;
use mesh_proto::{CaKeySet, SecretKey};

fuzz_target!(|data: &[u8]| {
    let keys = CaKeySet::single(SecretKey::from_seed(&[1; 32]).node_id());
    assert!(open_grant(data, &keys).is_err(), "random bytes never carry a valid signature");
    mesh_proto::fuzzing::grant_body(data);
});
