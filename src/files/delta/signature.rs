//! The receiver's signature of its old file: computed (on threads for a
//! large file), and bounded when it arrives at the sender.

use std::io::Read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{LITERAL_FLUSH, MAX_BLOCK, MAX_BLOCKS, MIN_BLOCK, STRONG_LEN, SUM_LEN, strong, weak};

/// The per-block sums of a signature, bounded when decoded: a length past
/// [`MAX_BLOCKS`] × [`SUM_LEN`] is refused before the bytes are copied out
/// of the frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sums(pub Bytes);

impl Serialize for Sums {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sums {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sums, D::Error> {
        struct V;
        const MAX: usize = MAX_BLOCKS as usize * SUM_LEN;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sums;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX} bytes of block sums")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sums, E> {
                if v.len() > MAX {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Sums(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Sums, E> {
                if v.len() > MAX {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Sums(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A signature of the receiver's old file, sent with `fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    /// Size of the old file.
    pub size: u64,
    /// Bytes per block (the last block may be shorter).
    pub block_len: u32,
    /// [`SUM_LEN`] bytes per block, in order: weak checksum (u32 BE), then
    /// the block's [`strong`] digest ([`STRONG_LEN`] bytes).
    pub sums: Sums,
}

/// A signature the sender refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable delta signature: {0}")]
pub struct BasisError(pub String);

impl Basis {
    /// Blocks in the signature.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_len.max(1) as u64)
    }

    /// Checks that the signature is self-consistent and within bounds.
    pub fn validate(&self) -> Result<(), BasisError> {
        let bad = |s: String| Err(BasisError(s));
        if !(MIN_BLOCK..=MAX_BLOCK).contains(&self.block_len) {
            return bad(format!(
                "block size {} outside {MIN_BLOCK}..={MAX_BLOCK}",
                self.block_len
            ));
        }
        if self.size == 0 {
            return bad("empty basis".into());
        }
        let blocks = self.blocks();
        if blocks > MAX_BLOCKS {
            return bad(format!("{blocks} blocks (limit {MAX_BLOCKS})"));
        }
        if self.sums.0.len() as u64 != blocks * SUM_LEN as u64 {
            return bad(format!(
                "{} bytes of sums for {blocks} blocks of {SUM_LEN}",
                self.sums.0.len()
            ));
        }
        Ok(())
    }

    pub(super) fn sum(&self, i: usize) -> (u32, [u8; STRONG_LEN]) {
        let s = &self.sums.0[i * SUM_LEN..(i + 1) * SUM_LEN];
        let mut weak = [0u8; 4];
        weak.copy_from_slice(&s[..4]);
        let mut strong = [0u8; STRONG_LEN];
        strong.copy_from_slice(&s[4..]);
        (u32::from_be_bytes(weak), strong)
    }
}

/// Computes the signature of `size` bytes read from `r` in blocks of
/// `block_len`. Fails if `r` ends early.
pub fn signature(mut r: impl Read, size: u64, block_len: u32) -> std::io::Result<Basis> {
    let bl = block_len.max(1) as usize;
    let blocks = size.div_ceil(bl as u64) as usize;
    let mut sums = Vec::with_capacity(blocks * SUM_LEN);
    // Read a whole number of blocks at a time, about 1 MiB.
    let mut buf = vec![0u8; bl * (LITERAL_FLUSH / bl).max(1)];
    let mut left = size;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        r.read_exact(&mut buf[..want])?;
        for block in buf[..want].chunks(bl) {
            sums.extend_from_slice(&weak(block).to_be_bytes());
            sums.extend_from_slice(&strong(block));
        }
        left -= want as u64;
    }
    Ok(Basis {
        size,
        block_len,
        sums: Sums(Bytes::from(sums)),
    })
}

/// Threads at most for [`signature_of_file`].
const SIGN_THREADS: usize = 4;

/// [`signature`] of the first `size` bytes of `file`, read at offsets
/// (the file position is not used): the blocks are split into contiguous
/// runs signed on up to `SIGN_THREADS` threads (as many as the machine
/// has cores). The signature is the first of the three passes over the
/// data of a delta (sign, match, copy), and the sender waits for it, so
/// the receiver's cores all work on it.
pub fn signature_of_file(
    file: &std::fs::File,
    size: u64,
    block_len: u32,
) -> std::io::Result<Basis> {
    use std::os::unix::fs::FileExt;
    let bl = block_len.max(1) as u64;
    let blocks = size.div_ceil(bl);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SIGN_THREADS) as u64;
    // Below a few MiB per thread a thread costs more than it saves.
    let threads = threads.min((size >> 22).max(1)).max(1);
    let per = blocks.div_ceil(threads);
    let sign_range = |first: u64, end: u64| -> std::io::Result<Vec<u8>> {
        let start = first * bl;
        let stop = (end * bl).min(size);
        struct At<'a>(&'a std::fs::File, u64);
        impl Read for At<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read_at(buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let part = signature(At(file, start), stop - start, block_len)?;
        Ok(part.sums.0.to_vec())
    };
    let parts: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (first, end) = (t * per, ((t + 1) * per).min(blocks));
                scope.spawn(move || sign_range(first, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a signing thread panicked")))
            })
            .collect()
    });
    let mut sums = Vec::with_capacity(blocks as usize * SUM_LEN);
    for part in parts {
        sums.extend_from_slice(&part?);
    }
    Ok(Basis {
        size,
        block_len,
        sums: Sums(Bytes::from(sums)),
    })
}
