//! `--sparse`: holes travel as holes.
//!
//! The sender learns where a file's data is with `lseek(SEEK_DATA)` and
//! `lseek(SEEK_HOLE)` ([`next_extent`]) and sends only that; each hole
//! becomes a *hole frame* ([`hole_frame`]): a data frame whose offset word
//! has bit 61 ([`HOLE`]) set and whose body is the hole's length — no
//! bytes. The receiver extends its temp file over the hole
//! (`ftruncate`), so the hole stays a hole, and reserves no space up front
//! (a full-size `fallocate` would allocate the holes). Both sides hash a
//! hole as the zeros it reads as: the digest is of the whole file's bytes,
//! exactly as without `--sparse`.

use bytes::Bytes;

use super::OFFSET_LEN;

/// Bit of a data frame's offset word that marks a hole frame (bit 63 is
/// [`super::compress::COMPRESSED`], bit 62 [`super::delta::COPY`]).
pub const HOLE: u64 = 1 << 61;
/// A hole frame's payload: `[offset | HOLE][len: u64 BE]`.
pub const HOLE_FRAME_LEN: usize = OFFSET_LEN + 8;
/// Most bytes one hole frame stands for: the receiver hashes that many
/// zeros before it acknowledges, so acknowledgements keep flowing through
/// a large hole.
pub const MAX_HOLE: u64 = 64 << 20;

/// The frame saying that `[offset, offset + len)` is a hole.
pub fn hole_frame(offset: u64, len: u64) -> Bytes {
    let mut v = Vec::with_capacity(HOLE_FRAME_LEN);
    v.extend_from_slice(&(offset | HOLE).to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    Bytes::from(v)
}

/// Why a hole frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoleFrameError {
    /// Another length than a hole frame's, or another mark set too.
    #[error("malformed hole frame ({len} bytes, offset word {word:#x})")]
    Malformed {
        /// The frame's length.
        len: usize,
        /// Its offset word.
        word: u64,
    },
    /// A hole of 0 bytes or over [`MAX_HOLE`].
    #[error("hole frame of {len} bytes (1 to {MAX_HOLE})")]
    BadLength {
        /// The hole's length.
        len: u64,
    },
}

/// A hole frame's `(offset, len)`, if `payload` is one; `Err` if it is
/// one but malformed (another length, another mark set, `len` 0 or over
/// [`MAX_HOLE`]).
pub fn parse_hole(payload: &[u8]) -> Option<Result<(u64, u64), HoleFrameError>> {
    let head: [u8; 8] = payload.get(..OFFSET_LEN)?.try_into().ok()?;
    let raw = u64::from_be_bytes(head);
    if raw & HOLE == 0 {
        return None;
    }
    let others = super::compress::COMPRESSED | super::delta::COPY;
    if raw & others != 0 || payload.len() != HOLE_FRAME_LEN {
        return Some(Err(HoleFrameError::Malformed {
            len: payload.len(),
            word: raw,
        }));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[OFFSET_LEN..]);
    let len = u64::from_be_bytes(b);
    if len == 0 || len > MAX_HOLE {
        return Some(Err(HoleFrameError::BadLength { len }));
    }
    Some(Ok((raw & !HOLE, len)))
}

/// The data extent at or after `offset` in a file of `size` bytes:
/// `(start, end)`, `start == size` if only a hole is left. Where the file
/// system cannot say (`EINVAL`, or any other error) all of it is data.
pub fn next_extent(file: &impl std::os::fd::AsFd, offset: u64, size: u64) -> (u64, u64) {
    use rustix::fs::SeekFrom;
    if offset >= size {
        return (size, size);
    }
    let start = match rustix::fs::seek(file, SeekFrom::Data(offset)) {
        Ok(s) => s.min(size),
        // ENXIO: nothing but a hole from `offset` to the end.
        Err(rustix::io::Errno::NXIO) => return (size, size),
        Err(_) => return (offset, size),
    };
    let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
        Ok(e) => e.clamp(start, size),
        Err(_) => size,
    };
    // A file that grew meanwhile may show data past `size`: the read's
    // own size checks report that; here, never an empty extent before it.
    if start < size && end == start {
        return (start, size);
    }
    (start, end)
}

/// Whether the file has a hole before `size` (a file system that cannot
/// say has none).
pub fn has_hole(file: &impl std::os::fd::AsFd, size: u64) -> bool {
    let mut at = 0;
    while at < size {
        let (start, end) = next_extent(file, at, size);
        if start > at {
            return true;
        }
        at = end;
    }
    false
}

/// Feeds `len` zero bytes to `hasher`.
pub fn hash_zeros(hasher: &mut blake3::Hasher, len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        left -= n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_frames_round_trip_and_malformed_ones_are_errors() {
        let f = hole_frame(4096, 1 << 20);
        assert_eq!(parse_hole(&f), Some(Ok((4096, 1 << 20))));
        assert!(parse_hole(&f[..12]).is_some_and(|r| r.is_err()));
        assert_eq!(
            parse_hole(&hole_frame(0, 0)),
            Some(Err(HoleFrameError::BadLength { len: 0 }))
        );
        assert_eq!(
            parse_hole(&hole_frame(0, MAX_HOLE + 1)),
            Some(Err(HoleFrameError::BadLength { len: MAX_HOLE + 1 }))
        );
        let mut copy_too = f.to_vec();
        copy_too[0] |= 0x40;
        assert!(parse_hole(&copy_too).is_some_and(|r| r.is_err()));
        assert_eq!(parse_hole(&[0u8; 16]), None, "a plain chunk");
        assert_eq!(parse_hole(&super::super::delta::copy_frame(1, 2, 3)), None);
    }

    #[test]
    fn zeros_hash_as_zeros() {
        let mut a = blake3::Hasher::new();
        hash_zeros(&mut a, 200_000);
        assert_eq!(a.finalize(), blake3::hash(&vec![0u8; 200_000]));
    }

    #[test]
    fn extents_of_a_file_with_a_hole_in_the_middle() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(t.path().join("s")).expect("create");
        let mib = 1u64 << 20;
        f.write_all_at(&[1u8; 4096], 0).expect("write");
        f.write_all_at(&[2u8; 4096], 8 * mib).expect("write");
        f.set_len(16 * mib).expect("truncate");
        let size = 16 * mib;
        let (s0, e0) = next_extent(&f, 0, size);
        if e0 == size {
            eprintln!("skipped: this file system reports no holes");
            return;
        }
        assert_eq!(s0, 0);
        assert!(e0 >= 4096 && e0 <= 8 * mib, "{e0}");
        let (s1, e1) = next_extent(&f, e0, size);
        assert!(s1 <= 8 * mib && s1 >= e0, "{s1}");
        assert!(e1 >= 8 * mib + 4096 && e1 <= size, "{e1}");
        assert!(has_hole(&f, size));
        assert_eq!(
            next_extent(&f, 15 * mib, size),
            (size, size),
            "a trailing hole"
        );
    }
}
