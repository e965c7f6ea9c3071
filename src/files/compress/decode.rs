//! The receiver's side of a data frame: [`ChunkDecoder`] splits off the
//! offset and decompresses within the cap the protocol allows there;
//! [`decode_linked`] decodes a [`LINKED`] chunk once the bytes before it
//! are known. Apart from the sender's side: it is what a hostile peer's
//! bytes meet first.

use bytes::Bytes;

use super::{COMPRESSED, LINKED};
use crate::files::{CHUNK_DATA, OFFSET_LEN};

/// A data frame or small file the receiver cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Shorter than the offset.
    #[error("data frame of {0} bytes has no offset")]
    NoOffset(usize),
    /// Not a valid zstd frame of at most the allowed size.
    #[error("compressed chunk at offset {offset} is corrupt or exceeds {cap} bytes: {detail}")]
    Corrupt {
        /// The chunk's file offset.
        offset: u64,
        /// Most bytes it may decompress to.
        cap: u64,
        /// zstd's complaint.
        detail: String,
    },
}

/// The receiver's side of one file: one decompression context, made when
/// the first compressed chunk arrives.
#[derive(Default)]
pub struct ChunkDecoder {
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

/// A data frame's file bytes, or a linked chunk still to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The chunk's file bytes.
    Data(Bytes),
    /// A [`LINKED`] chunk: one zstd frame that declares `len` file bytes
    /// (at most the cap), decoded once the bytes before it are known
    /// ([`decode_linked`]).
    Linked {
        /// The zstd frame.
        zstd: Bytes,
        /// The file bytes its header declares.
        len: u64,
    },
}

impl ChunkDecoder {
    /// Splits a data frame into its offset and file bytes, decompressing a
    /// compressed chunk to at most [`CHUNK_DATA`] bytes and no further
    /// than `limit` (the announced size). A linked chunk is an error here:
    /// see [`ChunkDecoder::open_any`].
    pub fn open(&mut self, payload: &Bytes, limit: u64) -> Result<(u64, Bytes), ChunkError> {
        match self.open_any(payload, limit)? {
            (offset, Opened::Data(d)) => Ok((offset, d)),
            (offset, Opened::Linked { .. }) => Err(ChunkError::Corrupt {
                offset,
                cap: 0,
                detail: "a linked chunk needs the bytes before it".into(),
            }),
        }
    }

    /// [`ChunkDecoder::open`], but a [`LINKED`] chunk comes back
    /// undecoded, its length read from its zstd frame header (a single
    /// frame that declares at most what the protocol allows at its
    /// offset).
    pub fn open_any(&mut self, payload: &Bytes, limit: u64) -> Result<(u64, Opened), ChunkError> {
        let head: [u8; OFFSET_LEN] = payload
            .get(..OFFSET_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(ChunkError::NoOffset(payload.len()))?;
        let raw = u64::from_be_bytes(head);
        let data = payload.slice(OFFSET_LEN..);
        if raw & COMPRESSED == 0 {
            return Ok((raw, Opened::Data(data)));
        }
        let offset = raw & !(COMPRESSED | LINKED);
        let cap = limit.saturating_sub(offset).min(CHUNK_DATA as u64);
        let corrupt = |detail: String| ChunkError::Corrupt {
            offset,
            cap,
            detail,
        };
        if raw & LINKED != 0 {
            use zstd::zstd_safe;
            match zstd_safe::find_frame_compressed_size(&data) {
                Ok(n) if n == data.len() => {}
                _ => {
                    return Err(corrupt(
                        "a linked chunk is not exactly one zstd frame".into(),
                    ));
                }
            }
            return match zstd_safe::get_frame_content_size(&data) {
                Ok(Some(len)) if len > 0 && len <= cap => {
                    Ok((offset, Opened::Linked { zstd: data, len }))
                }
                Ok(Some(len)) => Err(corrupt(format!("a linked chunk declares {len} bytes"))),
                _ => Err(corrupt("a linked chunk declares no size".into())),
            };
        }
        let dctx = match &mut self.dctx {
            Some(d) => d,
            None => {
                let d = zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?;
                self.dctx.insert(d)
            }
        };
        let out = dctx
            .decompress(&data, cap as usize)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((offset, Opened::Data(Bytes::from(out))))
    }
}

/// Decodes a [`LINKED`] chunk at `offset` that declared `len` bytes,
/// given `before`, the file bytes of the data chunk just before it (as
/// the sender had them: the receiver's previous piece). Fails unless it
/// decodes to exactly `len` bytes.
pub fn decode_linked(
    offset: u64,
    zstd: &[u8],
    len: u64,
    before: &[u8],
) -> Result<Bytes, ChunkError> {
    let corrupt = |detail: String| ChunkError::Corrupt {
        offset,
        cap: len,
        detail,
    };
    // A context per chunk: it borrows `before` (creating one is cheap next
    // to decoding 128 KiB).
    let mut dctx = zstd::zstd_safe::DCtx::try_create()
        .ok_or_else(|| corrupt("cannot make a zstd context".into()))?;
    dctx.ref_prefix(before)
        .map_err(|c| corrupt(zstd::zstd_safe::get_error_name(c).into()))?;
    let mut out = Vec::with_capacity(len as usize);
    let n = dctx
        .decompress(&mut out, zstd)
        .map_err(|c| corrupt(zstd::zstd_safe::get_error_name(c).into()))?;
    if n as u64 != len || out.len() as u64 != len {
        return Err(corrupt(format!(
            "a linked chunk decoded to {n} bytes, {len} declared"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::compress::test_data::{chunk, encoder};

    #[test]
    fn corrupt_and_oversized_chunks_are_errors() {
        let (mut enc, _) = encoder(Some(1));
        let data = vec![b'a'; CHUNK_DATA];
        let wire = enc.encode(chunk(0, &data));
        // Truncated.
        let cut = wire.slice(..wire.len() - 3);
        let e = ChunkDecoder::default()
            .open(&cut, CHUNK_DATA as u64)
            .unwrap_err();
        assert!(matches!(e, ChunkError::Corrupt { .. }), "{e}");
        // Flipped bytes in the middle.
        let mut bad = wire.to_vec();
        for b in &mut bad[OFFSET_LEN + 4..] {
            *b ^= 0x5a;
        }
        assert!(
            ChunkDecoder::default()
                .open(&Bytes::from(bad), CHUNK_DATA as u64)
                .is_err()
        );
        // Past the announced size: refused, not allocated.
        let e = ChunkDecoder::default()
            .open(&wire, CHUNK_DATA as u64 - 1)
            .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        // A bomb: 64 MiB of zeros in a few KiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).expect("compress");
        let mut frame = COMPRESSED.to_be_bytes().to_vec();
        frame.extend(bomb);
        let e = ChunkDecoder::default()
            .open(&Bytes::from(frame), u64::MAX >> 1)
            .unwrap_err();
        assert!(matches!(e, ChunkError::Corrupt { cap, .. } if cap == CHUNK_DATA as u64));
        // No offset at all.
        assert_eq!(
            ChunkDecoder::default().open(&Bytes::from_static(b"abc"), 9),
            Err(ChunkError::NoOffset(3))
        );
    }

    #[test]
    fn raw_chunks_pass_through() {
        let c = chunk(42, b"hello");
        let (off, got) = ChunkDecoder::default().open(&c, 100).expect("raw");
        assert_eq!((off, &got[..]), (42, &b"hello"[..]));
    }
}
