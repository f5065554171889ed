//! Text forms people paste: node ids, CA key ids, grant ids, key files. No input panics, and an
//! id that parses prints back to its canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::{GrantId, KeyId, NodeId, SecretKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<NodeId>() {
        assert_eq!(id.to_string(), text.trim().to_ascii_lowercase());
    }
    let _ = text.parse::<KeyId>();
    let _ = text.parse::<GrantId>();
    let _ = SecretKey::from_file_text(text);
});
