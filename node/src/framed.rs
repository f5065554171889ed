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
///
/// Not cancel-safe: a frame half-read when the future is dropped is lost. In a `select!` loop,
/// use a [`FrameReader`].
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

/// Reads frames from a stream, cancel-safely: bytes of a partly read frame stay in the reader
/// when a `select!` drops the future of [`next`](Self::next), and the next call resumes.
///
/// It reads exactly the bytes of the current frame (never past its end), and grows its buffer
/// past the header only after the header's length has passed the protocol's cap.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    /// The frame read so far.
    buf: Vec<u8>,
    /// Where each read lands before it is appended, so that nothing is in `buf` but bytes.
    scratch: Box<[u8]>,
}

/// Largest single read of a [`FrameReader`].
const READ_SCRATCH: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(FRAME_HEADER_LEN),
            scratch: vec![0; READ_SCRATCH].into_boxed_slice(),
        }
    }

    /// The next frame, or `None` if the stream ended cleanly between frames.
    pub async fn next<M: WireMessage>(&mut self) -> Result<Option<M>, Error> {
        loop {
            let wanted = match self.buf.first_chunk::<FRAME_HEADER_LEN>() {
                None => FRAME_HEADER_LEN,
                Some(header) => {
                    let header = FrameHeader::parse::<M>(header).map_err(Error::Protocol)?;
                    let total = FRAME_HEADER_LEN + header.payload_len();
                    if self.buf.len() == total {
                        let frame = std::mem::take(&mut self.buf);
                        self.buf.reserve(FRAME_HEADER_LEN);
                        return M::decode_payload(header.type_code, &frame[FRAME_HEADER_LEN..])
                            .map(Some)
                            .map_err(Error::Protocol);
                    }
                    total
                }
            };
            let have = self.buf.len();
            let room = (wanted - have).min(self.scratch.len());
            // A read that is cancelled has consumed nothing; one that completes is kept at once.
            let n = self
                .reader
                .read(&mut self.scratch[..room])
                .await
                .map_err(|e| Error::Stream(e.to_string()))?;
            self.buf.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                return match have {
                    0 => Ok(None),
                    _ => Err(truncated::<M>(wanted, have)),
                };
            }
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }
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
    async fn a_frame_reader_survives_being_cancelled_mid_frame() {
        let messages: Vec<SessionMessage> = (0..50u16)
            .map(|i| {
                SessionMessage::Resize(WindowSize {
                    cols: i,
                    rows: i + 1,
                })
            })
            .collect();
        let mut bytes = Vec::new();
        for m in &messages {
            bytes.extend(encode_frame(m).unwrap());
        }
        let (mut a, b) = tokio::io::duplex(1024);
        // Trickle the bytes one at a time so that most polls end mid-frame.
        tokio::spawn(async move {
            for byte in bytes {
                a.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = FrameReader::new(b);
        let mut got = Vec::new();
        loop {
            tokio::select! {
                biased;
                // Cancels the read at every yield of the writer.
                () = tokio::task::yield_now() => {}
                frame = reader.next::<SessionMessage>() => match frame.unwrap() {
                    Some(m) => got.push(m),
                    None => break,
                },
            }
        }
        assert_eq!(got, messages);
    }

    #[tokio::test]
    async fn a_frame_reader_refuses_a_huge_length_and_reports_truncation() {
        let mut reader = FrameReader::new(&[1u8, 0, 4, 0xff, 0xff, 0xff, 0xff][..]);
        let err = reader.next::<SessionMessage>().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Protocol(mesh_proto::Error::FrameTooLarge { .. })
            ),
            "{err}"
        );
        let frame = encode_frame(&SessionMessage::Resize(WindowSize { cols: 1, rows: 2 })).unwrap();
        let mut reader = FrameReader::new(&frame[..frame.len() - 1]);
        let err = reader.next::<SessionMessage>().await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol(mesh_proto::Error::Truncated { .. })),
            "{err}"
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
