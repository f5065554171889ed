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
//! sequences and byte strings inside payloads are capped by [`bounded_vec`] and
//! [`bounded_bytes`] before they are allocated, so a frame can never make a decoder allocate
//! much more than the frame's own size. The same caps refuse to encode what a peer would refuse
//! to decode.

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
    /// Appends the payload's encoding to `out`. On error `out` may hold part of it;
    /// [`encode_frame_into`] removes that.
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error>;
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

/// Appends `message` as one frame to `out`. On error, `out` is left as it was: a caller
/// batching frames into one buffer keeps the frames already in it.
pub fn encode_frame_into<M: WireMessage>(message: &M, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    let result = append_frame(message, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// [`encode_frame_into`]'s work, which may leave a partial frame behind on error.
fn append_frame<M: WireMessage>(message: &M, out: &mut Vec<u8>, start: usize) -> Result<(), Error> {
    let encode_error = |reason: String| Error::Encode {
        what: M::PROTOCOL,
        reason,
    };
    out.push(FRAME_VERSION);
    out.extend_from_slice(&message.type_code().to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    message
        .encode_payload(out)
        .map_err(|e| encode_error(e.to_string()))?;
    let len = out.len() - start - FRAME_HEADER_LEN;
    let len = u32::try_from(len)
        .ok()
        .filter(|len| *len <= M::MAX_PAYLOAD)
        .ok_or_else(|| {
            encode_error(format!(
                "payload of {len} bytes exceeds the {}-byte limit",
                M::MAX_PAYLOAD
            ))
        })?;
    out[start + 3..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The size of `value`'s payload encoding, to fill a message up to a frame's limit.
pub fn payload_len<T: serde::Serialize>(value: &T) -> Result<usize, Error> {
    postcard::experimental::serialized_size(value).map_err(|e| Error::Encode {
        what: "payload",
        reason: e.to_string(),
    })
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

/// Most bytes [`bounded_vec`] reserves on the strength of an announced length alone.
const PREALLOC_BYTES: usize = 1024;

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
            // The announced length is the sender's claim: reserve for at most a small number of
            // bytes' worth of elements, and let real elements grow the vector.
            let budget = PREALLOC_BYTES / size_of::<T>().max(1);
            let mut out = Vec::with_capacity(announced.min(budget));
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

/// Byte strings of at most `MAX` bytes, both ways: encoding a longer one fails, and decoding
/// refuses a longer one before copying it. Use with
/// `#[serde(serialize_with = "bounded_bytes::serialize::<_, MAX>",
/// deserialize_with = "bounded_bytes::deserialize::<_, MAX>")]`; the encoding is
/// `serde_bytes`'s (a length and the bytes).
pub mod bounded_bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Serializes `bytes` as a byte string, refusing more than `MAX` bytes.
    pub fn serialize<S: Serializer, const MAX: usize>(
        bytes: &[u8],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if bytes.len() > MAX {
            return Err(serde::ser::Error::custom(format!(
                "{} bytes where at most {MAX} are allowed",
                bytes.len()
            )));
        }
        serializer.serialize_bytes(bytes)
    }

    /// Deserializes a byte string of at most `MAX` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const MAX: usize>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        struct Bounded<const MAX: usize>;

        impl<const MAX: usize> Bounded<MAX> {
            fn check<E: serde::de::Error>(&self, len: usize) -> Result<(), E> {
                if len > MAX {
                    return Err(E::invalid_length(len, self));
                }
                Ok(())
            }
        }

        impl<'de, const MAX: usize> Visitor<'de> for Bounded<MAX> {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of at most {MAX} bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                self.check(v.len())?;
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                self.check(v.len())?;
                Ok(v)
            }

            // Self-describing formats may carry bytes as a sequence of numbers.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let announced = seq.size_hint().unwrap_or(0);
                self.check(announced)?;
                let mut out = Vec::with_capacity(announced);
                while let Some(byte) = seq.next_element()? {
                    self.check(out.len() + 1)?;
                    out.push(byte);
                }
                Ok(out)
            }
        }

        deserializer.deserialize_byte_buf(Bounded::<MAX>)
    }
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

            fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
                match self {
                    $( Self::$variant(m) => postcard::to_io(m, out).map(|_| ()), )+
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
