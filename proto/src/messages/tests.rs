//! Round trips and hostile inputs for every message of every protocol.

use std::fmt::Debug;

use proptest::prelude::*;

use super::agent::AgentMessage;
use super::control::ControlMessage;
use super::relay::RelayMessage;
use super::session::SessionMessage;
use crate::codec::{
    FRAME_HEADER_LEN, FRAME_VERSION, WireMessage, decode_exact, decode_frame, encode_frame,
};
use crate::error::Error;
use crate::hostile::{ALLOC_SLACK, mutated};
use crate::test_alloc::largest_allocation;

/// A strategy for vectors no longer than a field's cap.
pub(crate) fn vec_up_to<T: Arbitrary + Debug>(max: usize) -> impl Strategy<Value = Vec<T>> {
    proptest::collection::vec(any::<T>(), 0..=max)
}

/// Socket addresses as they travel: serde carries IPv6 addresses without scope id or flow
/// label (a scope id names a local interface, meaningless to the peer), so tests use none.
pub(crate) fn socket_addrs(max: usize) -> impl Strategy<Value = Vec<std::net::SocketAddr>> {
    use std::net::{IpAddr, SocketAddr};
    proptest::collection::vec(
        (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
        0..=max,
    )
}

/// Boxed: the control message's derived strategy is deep enough to overflow a test thread's
/// stack in a debug build without it.
pub(crate) fn nat_mapping() -> BoxedStrategy<crate::nat::NatMapping> {
    any::<crate::nat::NatMapping>().boxed()
}

/// Boxed, as [`nat_mapping`].
pub(crate) fn punch_offer() -> BoxedStrategy<Option<super::control::PunchOffer>> {
    any::<Option<super::control::PunchOffer>>().boxed()
}

pub(crate) fn ip_addr() -> impl Strategy<Value = std::net::IpAddr> {
    any::<std::net::IpAddr>()
}

pub(crate) fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    use std::net::{IpAddr, SocketAddr};
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn header(code: u16, len: u32) -> Vec<u8> {
    let mut h = vec![FRAME_VERSION];
    h.extend_from_slice(&code.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn round_trip<M: WireMessage + PartialEq + Debug>(message: &M) -> Result<(), TestCaseError> {
    let frame = encode_frame(message).unwrap();
    prop_assert_eq!(&decode_exact::<M>(&frame).unwrap(), message);
    // The same frame arriving in a stream, in two pieces, with the next frame behind it.
    let mut stream = frame.clone();
    stream.extend_from_slice(&frame);
    let split = frame.len() / 2;
    prop_assert!(decode_frame::<M>(&stream[..split]).unwrap().is_none());
    let (decoded, used) = decode_frame::<M>(&stream).unwrap().unwrap();
    prop_assert_eq!(&decoded, message);
    prop_assert_eq!(used, frame.len());
    Ok(())
}

/// Every type code, announcing `u32::MAX` bytes, fails as too large from the header alone.
fn huge_frame_lengths_are_refused_before_allocating<M: WireMessage + Debug>() {
    for &code in M::TYPE_CODES {
        let frame = header(code, u32::MAX);
        let err = decode_frame::<M>(&frame).unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { len, .. } if len == u64::from(u32::MAX)),
            "{err}"
        );
        let err = decode_exact::<M>(&frame).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
        let just_over = header(code, M::MAX_PAYLOAD + 1);
        assert!(matches!(
            decode_frame::<M>(&just_over),
            Err(Error::FrameTooLarge { .. })
        ));
    }
}

/// Every type code, with `u64::MAX` as a length (or a number) at every position of the payload,
/// decodes to an error or to a faithful value, and never allocates more than a small multiple of
/// the frame: postcard must not believe the length and reserve it.
fn huge_inner_lengths_are_refused<M: WireMessage + Debug + PartialEq>() {
    let max_varint = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    for &code in M::TYPE_CODES {
        for prefix_len in 0..48 {
            let mut payload = vec![0u8; prefix_len];
            payload.extend_from_slice(&max_varint);
            payload.extend_from_slice(&[0x41; 8]);
            let mut frame = header(code, payload.len() as u32);
            frame.extend_from_slice(&payload);
            let (decoded, largest) = largest_allocation(|| decode_exact::<M>(&frame));
            assert!(
                largest <= 4096,
                "code {code}, prefix {prefix_len}: allocated {largest} bytes"
            );
            if let Ok(message) = decoded {
                // The huge number landed in a plain integer field: fine, if faithfully.
                assert_eq!(encode_frame(&message).unwrap(), frame);
            }
        }
    }
}

fn unknown_types_and_versions_are_typed_errors<M: WireMessage + Debug>() {
    let unknown = (0..=u16::MAX).find(|c| !M::TYPE_CODES.contains(c)).unwrap();
    let err = decode_exact::<M>(&header(unknown, 0)).unwrap_err();
    assert!(
        matches!(err, Error::UnknownMessageType { code, .. } if code == unknown),
        "{err}"
    );
    let mut bad_version = header(M::TYPE_CODES[0], 0);
    bad_version[0] = 2;
    let err = decode_exact::<M>(&bad_version).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
}

fn truncation_is_a_typed_error<M: WireMessage + Debug>(message: &M) -> Result<(), TestCaseError> {
    let frame = encode_frame(message).unwrap();
    for cut in 0..frame.len() {
        let err = decode_exact::<M>(&frame[..cut]).unwrap_err();
        let is_truncated = matches!(err, Error::Truncated { .. });
        prop_assert!(is_truncated, "cut at {}: {}", cut, err);
        prop_assert!(decode_frame::<M>(&frame[..cut]).unwrap().is_none());
    }
    let mut longer = frame.clone();
    longer.push(0);
    prop_assert!(decode_exact::<M>(&longer).is_err());
    Ok(())
}

#[test]
fn huge_lengths_are_refused_for_every_protocol() {
    huge_frame_lengths_are_refused_before_allocating::<ControlMessage>();
    huge_frame_lengths_are_refused_before_allocating::<SessionMessage>();
    huge_frame_lengths_are_refused_before_allocating::<RelayMessage>();
    huge_frame_lengths_are_refused_before_allocating::<AgentMessage>();
    huge_inner_lengths_are_refused::<ControlMessage>();
    huge_inner_lengths_are_refused::<SessionMessage>();
    huge_inner_lengths_are_refused::<RelayMessage>();
    huge_inner_lengths_are_refused::<AgentMessage>();
}

#[test]
fn unknown_types_and_versions_are_refused_for_every_protocol() {
    unknown_types_and_versions_are_typed_errors::<ControlMessage>();
    unknown_types_and_versions_are_typed_errors::<SessionMessage>();
    unknown_types_and_versions_are_typed_errors::<RelayMessage>();
    unknown_types_and_versions_are_typed_errors::<AgentMessage>();
}

#[test]
fn a_capped_sequence_longer_than_its_cap_is_refused() {
    use super::session::{LoginRequest, MAX_ENV_VARS, Open};
    let open = Open {
        grant: vec![],
        login: LoginRequest::Temporary,
        command: None,
        pty: None,
        env: vec![],
    };
    // env is the last field: replace its count (an empty vec encodes as a single 0) with `count`
    // followed by that many well-formed entries (empty name and value).
    let frame_with = |count: usize| {
        let mut frame = encode_frame(&SessionMessage::Open(open.clone())).unwrap();
        assert_eq!(frame.pop(), Some(0));
        frame.push(count as u8);
        frame.extend(std::iter::repeat_n(0u8, 2 * count));
        let len = (frame.len() - FRAME_HEADER_LEN) as u32;
        frame[3..7].copy_from_slice(&len.to_be_bytes());
        frame
    };
    match decode_exact::<SessionMessage>(&frame_with(MAX_ENV_VARS)).unwrap() {
        SessionMessage::Open(open) => assert_eq!(open.env.len(), MAX_ENV_VARS),
        other => panic!("decoded {other:?}"),
    }
    let err = decode_exact::<SessionMessage>(&frame_with(MAX_ENV_VARS + 1)).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
}

#[test]
fn a_message_over_the_cap_is_not_encoded() {
    use super::relay::{RelayMessage, Send};
    use crate::id::SecretKey;
    let too_big = RelayMessage::Send(Send {
        to: SecretKey::from_seed(&[1; 32]).node_id(),
        to_instance: Some(u64::MAX),
        from_instance: u64::MAX,
        packet: vec![0; RelayMessage::MAX_PAYLOAD as usize],
    });
    let mut out = vec![1, 2, 3];
    let err = crate::codec::encode_frame_into(&too_big, &mut out).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert_eq!(
        out,
        vec![1, 2, 3],
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn a_failed_encode_keeps_the_frames_already_in_the_buffer() {
    use super::session::{Data, MAX_DATA_CHUNK, SessionMessage, Stream};
    let first = SessionMessage::Data(Data {
        stream: Stream::Stdout,
        bytes: b"kept".to_vec(),
    });
    let mut out = encode_frame(&first).unwrap();
    let before = out.clone();
    // The serializer fails part-way through the payload, after the header and the stream.
    let too_long = SessionMessage::Data(Data {
        stream: Stream::Stdout,
        bytes: vec![0; MAX_DATA_CHUNK + 1],
    });
    let result = crate::codec::encode_frame_into(&too_long, &mut out);
    assert!(matches!(result, Err(Error::Encode { .. })), "{result:?}");
    assert_eq!(out, before, "a failed encode leaves the buffer as it was");
    assert_eq!(decode_exact::<SessionMessage>(&out).unwrap(), first);
}

/// A session frame carrying one `Data` message of `len` bytes, built by hand so that its size
/// does not depend on what the encoder allows.
fn data_frame(len: usize) -> Vec<u8> {
    use super::session::Stream;
    let payload =
        postcard::to_stdvec(&(Stream::Stdin, serde_bytes::Bytes::new(&vec![7; len]))).unwrap();
    let mut frame = header(4, payload.len() as u32);
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn a_data_chunk_over_its_cap_is_refused_before_copying() {
    use super::session::{Data, MAX_DATA_CHUNK, SessionMessage, Stream};
    let frame = data_frame(MAX_DATA_CHUNK);
    let at_cap = decode_exact::<SessionMessage>(&frame).unwrap();
    assert_eq!(
        at_cap,
        SessionMessage::Data(Data {
            stream: Stream::Stdin,
            bytes: vec![7; MAX_DATA_CHUNK],
        })
    );
    assert_eq!(
        encode_frame(&at_cap).unwrap(),
        frame,
        "the same encoding as before"
    );

    let frame = data_frame(MAX_DATA_CHUNK + 1);
    assert!(frame.len() - FRAME_HEADER_LEN <= SessionMessage::MAX_PAYLOAD as usize);
    let (decoded, largest) = largest_allocation(|| decode_exact::<SessionMessage>(&frame));
    // Matched rather than unwrapped: a wrongly accepted chunk would print 64 KiB of bytes.
    assert!(
        matches!(decoded, Err(Error::Malformed { .. })),
        "a chunk of {} bytes was not refused",
        MAX_DATA_CHUNK + 1
    );
    assert!(
        largest < 4096,
        "allocated {largest} bytes for a refused chunk"
    );
    assert!(
        matches!(
            decode_frame::<SessionMessage>(&frame),
            Err(Error::Malformed { .. })
        ),
        "decode_frame refuses it too"
    );
}

#[test]
fn the_largest_udp_payload_fits_a_relay_frame() {
    use super::relay::{Deliver, RelayMessage};
    use crate::id::SecretKey;
    let message = RelayMessage::Deliver(Deliver {
        from: SecretKey::from_seed(&[1; 32]).node_id(),
        from_instance: u64::MAX,
        packet: vec![7; crate::socket::MAX_UDP_PAYLOAD],
    });
    let frame = encode_frame(&message).unwrap();
    assert_eq!(decode_exact::<RelayMessage>(&frame).unwrap(), message);
}

/// Runs `test` on a thread with a large stack: the control message's derived strategy (every
/// message of the protocol, nested) is too deep for a test thread's 2 MiB in a debug build.
fn with_large_stack(test: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 * 1024 * 1024)
        .spawn(test)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn control_messages_round_trip() {
    with_large_stack(|| {
        proptest::test_runner::TestRunner::default()
            .run(&any::<ControlMessage>(), |m| {
                round_trip(&m)?;
                truncation_is_a_typed_error(&m)
            })
            .unwrap();
    });
}

#[test]
fn hostile_control_payloads_never_panic_or_overallocate() {
    with_large_stack(|| {
        proptest::test_runner::TestRunner::default()
            .run(&hostile_payload::<ControlMessage>(), |(code, payload)| {
                decodes_safely::<ControlMessage>(code, &payload)
            })
            .unwrap();
    });
}

proptest! {

    #[test]
    fn session_messages_round_trip(m: SessionMessage) {
        round_trip(&m)?;
        truncation_is_a_typed_error(&m)?;
    }

    #[test]
    fn relay_messages_round_trip(m: RelayMessage) {
        round_trip(&m)?;
        truncation_is_a_typed_error(&m)?;
    }

    #[test]
    fn agent_messages_round_trip(m: AgentMessage) {
        round_trip(&m)?;
        truncation_is_a_typed_error(&m)?;
    }

    #[test]
    fn hostile_session_payloads_never_panic_or_overallocate(
        (code, payload) in hostile_payload::<SessionMessage>()
    ) {
        decodes_safely::<SessionMessage>(code, &payload)?;
    }

    #[test]
    fn hostile_relay_payloads_never_panic_or_overallocate(
        (code, payload) in hostile_payload::<RelayMessage>()
    ) {
        decodes_safely::<RelayMessage>(code, &payload)?;
    }

    #[test]
    fn hostile_agent_payloads_never_panic_or_overallocate(
        (code, payload) in hostile_payload::<AgentMessage>()
    ) {
        decodes_safely::<AgentMessage>(code, &payload)?;
    }
}

/// A type code of `M` and a payload for it: random bytes under a random known code, or a
/// message's own payload, mutated, under its own code (so the decoder gets far).
fn hostile_payload<M: WireMessage + Arbitrary + Debug>() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let random = (
        any::<proptest::sample::Index>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(code, payload)| (M::TYPE_CODES[code.index(M::TYPE_CODES.len())], payload));
    let mutated_message = any::<M>().prop_flat_map(|message| {
        let mut payload = Vec::new();
        let encoded = message.encode_payload(&mut payload).is_ok();
        let payload = if encoded { payload } else { Vec::new() };
        (Just(message.type_code()), mutated(Just(payload)))
    });
    prop_oneof![random, mutated_message]
}

/// Decodes `payload` behind a valid header (version, `code`, its true length), alone and at
/// the head of a stream: no panic, no allocation beyond the frame's own size, the same verdict
/// both ways, and whatever decodes encodes again to a frame that decodes to the same message.
fn decodes_safely<M: WireMessage + PartialEq + Debug>(
    code: u16,
    payload: &[u8],
) -> Result<(), TestCaseError> {
    let mut frame = header(code, payload.len() as u32);
    frame.extend_from_slice(payload);
    let (decoded, largest) = largest_allocation(|| decode_exact::<M>(&frame));
    prop_assert!(
        largest <= ALLOC_SLACK + frame.len(),
        "code {}: allocated {} bytes for a {}-byte frame",
        code,
        largest,
        frame.len()
    );
    let mut stream = frame.clone();
    stream.extend_from_slice(&[0xff; 9]);
    match (&decoded, decode_frame::<M>(&stream)) {
        (Ok(message), Ok(Some((again, used)))) => {
            prop_assert_eq!(&again, message);
            prop_assert_eq!(used, frame.len());
        }
        (Err(_), Err(_)) => {}
        (exact, streamed) => {
            prop_assert!(
                false,
                "decode_exact {:?} but decode_frame {:?}",
                exact,
                streamed
            );
        }
    }
    if let Ok(message) = decoded {
        let again = encode_frame(&message);
        prop_assert!(
            again.is_ok(),
            "a decoded message does not encode: {:?}",
            again
        );
        let again = again.unwrap_or_default();
        prop_assert_eq!(decode_exact::<M>(&again).ok(), Some(message));
    }
    Ok(())
}
