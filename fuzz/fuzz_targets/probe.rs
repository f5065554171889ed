//! Path probes as they arrive on the path socket: no input panics, and what opens survives the
//! replay guard's checks without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::probe::{Probe, ReplayGuard};
use mesh_proto::{SecretKey, UnixTime};

fuzz_target!(|data: &[u8]| {
    let me = SecretKey::from_seed(&[2; 32]).node_id();
    let _ = mesh_proto::probe::is_probe(data);
    if let Ok(probe) = Probe::open(data, me) {
        let mut guard = ReplayGuard::default();
        let _ = guard.check(&probe, UnixTime::EPOCH);
        let _ = guard.check(&probe, UnixTime::from_millis(u64::MAX));
    }
});
