//! Versioned, length-prefixed frames for the control, session and relay protocols.
//!
//! ```text
//! version (1) | message type (u16, big-endian) | payload length (u32, big-endian) | payload
//! ```
//!
//! The payload is the message's postcard encoding. Each protocol is one enum declared with
//! [`wire_messages!`](crate::wire_messages), which fixes its type codes (never reused, so message
//! sets can grow: a peer that meets a type it does not know gets
//! [`Error::UnknownMessageType`] and, since the length is known, can skip the frame) and its
//! payload cap. The length is checked against that cap *before* anything is allocated, and
//! sequences inside payloads are capped by [`bounded_vec`] before they are allocated, so a
//! frame can never make a decoder allocate much more than the frame's own size.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::Error;

/// Format version of the frame header.
pub const FRAME_VERSION: u8 = 1;
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 7;

/// A protocol's message set: one enum, each variant a message type with a fixed code.
pub trait WireMessage: Sized {
    /// The protocol's name, for errors.
    const PROTOCOL: &'static str;
    /// The largest payload a frame of this protocol may announce.
    const MAX_PAYLOAD: u32;
    /// Every type code this build knows.
    const TYPE_CODES: &'static [u16];

    /// This message's type code.
    fn type_code(&self) -> u16;
    /// Appends the payload's encoding to `out`.
    fn encode_payload(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error>;
    /// Decodes the payload of a frame of type `code`.
    fn decode_payload(code: u16, payload: &[u8]) -> Result<Self, Error>;
}

/// A frame header, checked: the version is known and the length within the protocol's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type.
    pub type_code: u16,
    /// The payload's length, at most the protocol's cap.
    pub len: u32,
}

impl FrameHeader {
    /// Parses and checks a header for protocol `M`. Call this before allocating the payload.
    pub fn parse<M: WireMessage>(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<Self, Error> {
        if bytes[0] != FRAME_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "frame",
                found: bytes[0],
                supported: FRAME_VERSION,
            });
        }
        let type_code = u16::from_be_bytes([bytes[1], bytes[2]]);
        let len = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]);
        if len > M::MAX_PAYLOAD {
            return Err(Error::FrameTooLarge {
                protocol: M::PROTOCOL,
                len: len.into(),
                limit: M::MAX_PAYLOAD,
            });
        }
        Ok(Self { type_code, len })
    }

    /// The payload length as a `usize`.
    pub fn payload_len(&self) -> usize {
        // The cap is a u32 well below any usize this code runs on.
        self.len as usize
    }
}

/// Appends `message` as one frame to `out`.
pub fn encode_frame_into<M: WireMessage>(message: &M, out: &mut Vec<u8>) -> Result<(), Error> {
    let encode_error = |reason: String| Error::Encode {
        what: M::PROTOCOL,
        reason,
    };
    let start = out.len();
    out.push(FRAME_VERSION);
    out.extend_from_slice(&message.type_code().to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let mut buf = message
        .encode_payload(std::mem::take(out))
        .map_err(|e| encode_error(e.to_string()))?;
    let len = buf.len() - start - FRAME_HEADER_LEN;
    let len = u32::try_from(len)
        .ok()
        .filter(|len| *len <= M::MAX_PAYLOAD)
        .ok_or_else(|| {
            encode_error(format!(
                "payload of {len} bytes exceeds the {}-byte limit",
                M::MAX_PAYLOAD
            ))
        });
    match len {
        Ok(len) => {
            buf[start + 3..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
            *out = buf;
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            *out = buf;
            Err(e)
        }
    }
}

/// `message` as one frame.
pub fn encode_frame<M: WireMessage>(message: &M) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_frame_into(message, &mut out)?;
    Ok(out)
}

/// Decodes the first frame in `buf` (a stream's receive buffer). `Ok(None)` means more bytes
/// are needed; on success, also returns how many bytes the frame took.
pub fn decode_frame<M: WireMessage>(buf: &[u8]) -> Result<Option<(M, usize)>, Error> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse::<M>(header)?;
    let end = FRAME_HEADER_LEN + header.payload_len();
    match buf.get(FRAME_HEADER_LEN..end) {
        None => Ok(None),
        Some(payload) => Ok(Some((M::decode_payload(header.type_code, payload)?, end))),
    }
}

/// Decodes a buffer that must hold exactly one whole frame (a datagram, a finished stream).
pub fn decode_exact<M: WireMessage>(buf: &[u8]) -> Result<M, Error> {
    let truncated = |needed: usize| Error::Truncated {
        what: M::PROTOCOL,
        needed,
        available: buf.len(),
    };
    let header = buf
        .first_chunk::<FRAME_HEADER_LEN>()
        .ok_or_else(|| truncated(FRAME_HEADER_LEN))?;
    let header = FrameHeader::parse::<M>(header)?;
    let end = FRAME_HEADER_LEN + header.payload_len();
    let payload = buf
        .get(FRAME_HEADER_LEN..end)
        .ok_or_else(|| truncated(end))?;
    if buf.len() > end {
        return Err(Error::Malformed {
            what: M::PROTOCOL,
            reason: format!("{} bytes after the frame", buf.len() - end),
        });
    }
    M::decode_payload(header.type_code, payload)
}

/// Decodes one message payload with postcard, which must fill `payload` exactly.
pub fn decode_payload<T: DeserializeOwned>(
    protocol: &'static str,
    payload: &[u8],
) -> Result<T, Error> {
    let malformed = |reason: String| Error::Malformed {
        what: protocol,
        reason,
    };
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} trailing bytes in payload",
            rest.len()
        )));
    }
    Ok(value)
}

/// Deserializes a sequence of at most `MAX` elements, refusing a longer announced length before
/// allocating anything. Use with `#[serde(deserialize_with = "bounded_vec::<_, _, MAX>")]`.
pub fn bounded_vec<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a sequence of at most {MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > MAX {
                return Err(serde::de::Error::invalid_length(announced, &self));
            }
            let mut out = Vec::with_capacity(announced);
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

/// Declares a protocol's message set: an enum whose variants each wrap one message struct, with
/// a fixed type code per variant and a payload cap, implementing [`WireMessage`].
#[macro_export]
macro_rules! wire_messages {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: protocol $protocol:literal, max_payload = $max:expr; {
            $( $(#[$vmeta:meta])* $code:literal => $variant:ident($ty:ty), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Debug)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        $vis enum $name {
            $( $(#[$vmeta])* $variant($ty), )+
        }

        impl $crate::codec::WireMessage for $name {
            const PROTOCOL: &'static str = $protocol;
            const MAX_PAYLOAD: u32 = $max;
            const TYPE_CODES: &'static [u16] = &[$($code),+];

            fn type_code(&self) -> u16 {
                match self {
                    $( Self::$variant(_) => $code, )+
                }
            }

            fn encode_payload(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
                match self {
                    $( Self::$variant(m) => postcard::to_extend(m, out), )+
                }
            }

            fn decode_payload(code: u16, payload: &[u8]) -> Result<Self, $crate::Error> {
                match code {
                    $( $code => $crate::codec::decode_payload::<$ty>($protocol, payload)
                        .map(Self::$variant), )+
                    _ => Err($crate::Error::UnknownMessageType { protocol: $protocol, code }),
                }
            }
        }
    };
}
