//! Reading and writing [`codec`](mesh_proto::codec) frames on async byte streams (QUIC streams,
//! the Unix sockets to session processes).
//!
//! The header is read and its length checked against the protocol's cap before the payload
//! buffer is allocated. A stream that ends cleanly between frames yields `None`; one that ends
//! inside a frame is a typed truncation error.

use std::io::ErrorKind;

use mesh_proto::codec::{FRAME_HEADER_LEN, FrameHeader, WireMessage, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

/// Reads the next frame, or `None` if the stream ended cleanly before one began.
pub async fn read_frame<M: WireMessage, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<M>, Error> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut filled = 0;
    while filled < FRAME_HEADER_LEN {
        let n = reader
            .read(&mut header[filled..])
            .await
            .map_err(|e| Error::Stream(e.to_string()))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(truncated::<M>(FRAME_HEADER_LEN, filled));
        }
        filled += n;
    }
    let header = FrameHeader::parse::<M>(&header).map_err(Error::Protocol)?;
    let mut payload = vec![0u8; header.payload_len()];
    reader.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            truncated::<M>(header.payload_len(), 0)
        } else {
            Error::Stream(e.to_string())
        }
    })?;
    M::decode_payload(header.type_code, &payload)
        .map(Some)
        .map_err(Error::Protocol)
}

fn truncated<M: WireMessage>(needed: usize, available: usize) -> Error {
    Error::Protocol(mesh_proto::Error::Truncated {
        what: M::PROTOCOL,
        needed,
        available,
    })
}

/// Writes one frame.
pub async fn write_frame<M: WireMessage, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &M,
) -> Result<(), Error> {
    let frame = encode_frame(message).map_err(Error::Protocol)?;
    writer
        .write_all(&frame)
        .await
        .map_err(|e| Error::Stream(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::messages::session::{Eof, SessionMessage, Stream, WindowSize};

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_end_is_none() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let messages = vec![
            SessionMessage::Resize(WindowSize { cols: 80, rows: 24 }),
            SessionMessage::Eof(Eof {
                stream: Stream::Stdin,
            }),
        ];
        let sent = messages.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write_frame(&mut a, m).await.unwrap();
            }
        });
        for m in &messages {
            assert_eq!(
                read_frame::<SessionMessage, _>(&mut b)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(m)
            );
        }
        writer.await.unwrap();
        assert!(
            read_frame::<SessionMessage, _>(&mut b)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_huge_length_is_refused_from_the_header() {
        let mut input: &[u8] = &[1, 0, 4, 0xff, 0xff, 0xff, 0xff];
        let err = read_frame::<SessionMessage, _>(&mut input)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Protocol(mesh_proto::Error::FrameTooLarge { .. })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_end_inside_a_frame_is_truncation() {
        let frame = encode_frame(&SessionMessage::Resize(WindowSize { cols: 1, rows: 2 })).unwrap();
        for cut in 1..frame.len() {
            let mut input = &frame[..cut];
            let err = read_frame::<SessionMessage, _>(&mut input)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Protocol(mesh_proto::Error::Truncated { .. })),
                "{err}"
            );
        }
    }
}
