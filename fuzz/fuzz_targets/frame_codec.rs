//! Frames of every protocol: no input panics, and whatever decodes re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::codec::{WireMessage, decode_exact, decode_frame, encode_frame};
use mesh_proto::messages::{
    agent::AgentMessage, control::ControlMessage, relay::RelayMessage, session::SessionMessage,
};

fn check<M: WireMessage + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = decode_exact::<M>(data) {
        let frame = encode_frame(&message).expect("a decoded message encodes");
        assert_eq!(decode_exact::<M>(&frame).expect("and decodes again"), message);
    }
    if let Ok(Some((_, used))) = decode_frame::<M>(data) {
        assert!(used <= data.len());
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ControlMessage>(data);
    check::<SessionMessage>(data);
    check::<RelayMessage>(data);
    check::<AgentMessage>(data);
});
