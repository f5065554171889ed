//! Enrollment tokens, as text and as bytes: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::UnixTime;
use mesh_proto::token::{open_token, open_token_text};

fuzz_target!(|data: &[u8]| {
    let _ = open_token(data, None, UnixTime::EPOCH);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = open_token_text(text, None, UnixTime::EPOCH);
    }
    mesh_proto::fuzzing::token_body(data);
});
