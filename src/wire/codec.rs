//! Turning bytes into frames and back.
//!
//! The decoder validates `enc` and the declared length as soon as the 26
//! header bytes are present, *before* reserving room for the payload: a
//! corrupt or hostile peer cannot make us allocate more than one header.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::Frame;
use super::header::{Enc, HEADER_LEN, Header};

/// Why a byte stream stopped being decodable. Any of these closes the stream.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The `enc` field is not one ferrogen speaks (corruption, or not a ferrogen peer).
    #[error("corrupt frame: unknown encoding {enc:#06x} (header {header:?})")]
    UnknownEncoding {
        /// The value seen.
        enc: u16,
        /// The whole header, for the log.
        header: Header,
    },
    /// The declared payload length is over the limit.
    #[error("frame of {len} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The stream ended part-way through a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the partial frame that were buffered.
        buffered: usize,
    },
    /// The underlying read failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Frame decoder/encoder with a maximum payload size.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_len: usize,
}

impl FrameCodec {
    /// A codec refusing payloads longer than `max_len` bytes.
    pub fn new(max_len: usize) -> FrameCodec {
        FrameCodec { max_len }
    }

    /// The configured maximum payload length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl FrameCodec {
    /// Validates the header at the front of `src` without consuming or
    /// reserving anything: `Ok(None)` while fewer than 26 bytes are there,
    /// an error for an unknown `enc` or a length over the limit, else the
    /// encoding and the header. A reader that allocates the payload buffer
    /// itself must call this first.
    pub fn check_header(&self, src: &[u8]) -> Result<Option<(Enc, Header)>, DecodeError> {
        let Some(raw) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(raw);
        let enc = Enc::from_u16(header.enc).ok_or(DecodeError::UnknownEncoding {
            enc: header.enc,
            header,
        })?;
        let len = header.len as usize;
        if len > self.max_len {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        Ok(Some((enc, header)))
    }
}

/// The frame a validated header and its payload make.
pub fn frame_from(enc: Enc, header: &Header, payload: Bytes) -> Frame {
    Frame {
        enc,
        dst_id: header.dst_id,
        src_id: header.src_id,
        auth_id: header.auth_id,
        handle: header.handle,
        reply_to: header.reply_to,
        payload,
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let Some((enc, header)) = self.check_header(src)? else {
            return Ok(None);
        };
        let len = header.len as usize;
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Reserve only now that the length is known to be acceptable,
            // so the next read can fill the whole payload at once.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(frame_from(enc, &header, payload)))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::Truncated {
                buffered: buf.len(),
            }),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode_into(&frame, dst);
        Ok(())
    }
}

/// Appends the wire form of `frame` to `dst`.
pub fn encode_into(frame: &Frame, dst: &mut BytesMut) {
    dst.reserve(frame.wire_len());
    dst.extend_from_slice(&frame.header().encode());
    dst.extend_from_slice(&frame.payload);
}

/// The wire form of `frame` as a fresh vector.
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(frame.wire_len());
    encode_into(frame, &mut b);
    b.to_vec()
}
