//! The reader of a transfer: `pread`s and hashes the file on a blocking
//! thread, checking at the end that it did not change while being read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::stats::DeltaCounters;
use crate::files::delta::BasisError;
use crate::files::hashpipe::HashPipeError;
use crate::files::meta::FileMeta;
use crate::files::tee::{Gate, SpoolError};
use crate::files::{CHUNK_DATA, OFFSET_LEN, Resume};

/// A chunk from the reader, or its final word.
pub(super) enum ReadEvent {
    /// The answer to a resume: data starts at this offset.
    Start(u64),
    /// `[offset][bytes]` and how many file bytes it holds.
    Chunk(Bytes, u64),
    /// A copy instruction ([`crate::files::delta::copy_frame`]) and how many file
    /// bytes it stands for; never compressed.
    Copy(Bytes, u64),
    /// The digest of the whole file: all was read, and it did not change.
    Done([u8; 32]),
    /// Why reading stopped.
    Failed(ReadError),
}

/// Why the reader of a transfer stopped. Sent to the requester as the
/// transfer's abort reason (its own report names the file).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// A read of the whole (small) file failed.
    #[error("read failed: {0}")]
    Read(#[source] std::io::Error),
    /// A read at `offset` failed.
    #[error("read failed at offset {offset}: {source}")]
    ReadAt {
        /// Where.
        offset: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file ended before its announced size.
    #[error("source file shrank during transfer: {expected} bytes expected, {found} found")]
    Shrank {
        /// The size announced.
        expected: u64,
        /// Where it ended.
        found: u64,
    },
    /// The file ended before its announced size (a delta's read, which
    /// does not say where).
    #[error("source file shrank during transfer: {expected} bytes expected")]
    ShrankSomewhere {
        /// The size announced.
        expected: u64,
    },
    /// A small file's size differed from its announced one.
    #[error("source file was modified while being read ({expected} bytes expected, {found} found)")]
    ResizedWhileRead {
        /// The size announced.
        expected: u64,
        /// What was read.
        found: u64,
    },
    /// A small file's size or mtime changed while it was read.
    #[error("source file was modified while being read (size or mtime changed)")]
    ChangedWhileRead,
    /// A large file's size or mtime changed while it was sent.
    #[error("source file was modified during transfer (size or mtime changed)")]
    ChangedDuringTransfer,
    /// A relay's spool could not give the bytes.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The hashing thread of a delta failed.
    #[error(transparent)]
    Hash(#[from] HashPipeError),
    /// The hashing thread of a delta could not start.
    #[error("cannot start the hashing thread: {0}")]
    HashThread(#[source] std::io::Error),
    /// The requester's delta signature is unusable.
    #[error(transparent)]
    Basis(#[from] BasisError),
}

/// True if `file`'s size or mtime differ from `meta` (or it cannot be
/// stat'ed). A bare fstat: `FileMeta::from_fd` would also look the owner
/// and group names up again.
pub(super) fn changed_since(file: &File, meta: &FileMeta) -> bool {
    match rustix::fs::fstat(file) {
        Ok(now) => {
            now.st_size as u64 != meta.size
                || now.st_mtime != meta.mtime_sec
                || now.st_mtime_nsec as u32 != meta.mtime_nsec
        }
        Err(_) => true,
    }
}

/// Reads a small file in one `pread` of one byte more than its size (so
/// growth shows without a second read), hashes it, and checks it was not
/// modified meanwhile.
pub(super) fn read_whole(file: &File, meta: &FileMeta) -> Result<(Bytes, [u8; 32]), ReadError> {
    let size = meta.size as usize;
    let mut buf = BytesMut::with_capacity(size + 1);
    loop {
        let have = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..size + 1 - have];
        match rustix::io::pread(file, spare, have as u64).map(|(got, _)| got.len()) {
            Ok(0) => break,
            Ok(n) => {
                // SAFETY: `pread` initialised exactly the first `n` bytes of
                // the spare capacity it was given.
                unsafe { buf.set_len(buf.len() + n) };
                if buf.len() > size {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ReadError::Read(e.into())),
        }
    }
    if buf.len() != size {
        return Err(ReadError::ResizedWhileRead {
            expected: size as u64,
            found: buf.len() as u64,
        });
    }
    if changed_since(file, meta) {
        return Err(ReadError::ChangedWhileRead);
    }
    let digest = *blake3::hash(&buf).as_bytes();
    Ok((buf.freeze(), digest))
}

/// Reads the whole file in chunks, hashing as it goes, and finally checks
/// that the file still has the size and mtime it was opened with. Each
/// event goes to `send`; reading stops when it returns `false`. Chunks
/// hold `chunk_len` bytes (at most [`CHUNK_DATA`]), the last one fewer.
pub(super) fn read_file(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    sparse: bool,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    read_range(
        file,
        meta,
        chunk_len,
        0,
        sparse,
        blake3::Hasher::new(),
        None,
        &mut send,
    );
}

/// [`read_file`], answering a resume first: the requester's prefix is
/// hashed here too; if the digests agree the data starts after it, else
/// at 0. Either way [`ReadEvent::Start`] says where.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_file_from(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    resume: Option<Resume>,
    sparse: bool,
    counters: &DeltaCounters,
    gate: Option<Gate>,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    let Some(resume) = resume else {
        return read_range(
            file,
            meta,
            chunk_len,
            0,
            sparse,
            blake3::Hasher::new(),
            gate,
            &mut send,
        );
    };
    let mut hasher = blake3::Hasher::new();
    let mut from = 0;
    if resume.len <= meta.size {
        // The hasher that covered the prefix carries on over the rest:
        // its final digest is the whole file's.
        match hash_prefix(file, resume.len, &mut hasher) {
            Ok(()) if *hasher.finalize().as_bytes() == resume.digest => from = resume.len,
            Ok(()) => hasher = blake3::Hasher::new(),
            Err(why) => {
                let _ = send(ReadEvent::Failed(why));
                return;
            }
        }
    }
    if from > 0 {
        counters.resumed_transfers.fetch_add(1, Ordering::Relaxed);
        counters.resumed_bytes.fetch_add(from, Ordering::Relaxed);
    } else {
        counters.resume_mismatches.fetch_add(1, Ordering::Relaxed);
    }
    if !send(ReadEvent::Start(from)) {
        return;
    }
    read_range(file, meta, chunk_len, from, sparse, hasher, None, &mut send);
}

/// Hashes `[0, len)` of `file` into `hasher`.
pub(super) fn hash_prefix(
    file: &File,
    len: u64,
    hasher: &mut blake3::Hasher,
) -> Result<(), ReadError> {
    let mut buf = vec![0u8; DELTA_READ];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(DELTA_READ as u64) as usize;
        file.read_exact_at(&mut buf[..want], at)
            .map_err(|source| ReadError::ReadAt { offset: at, source })?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    Ok(())
}

/// Bytes read at a time for a delta or a resume's hash.
pub(super) const DELTA_READ: usize = 1 << 20;

/// Reads `[offset, size)` in chunks into `hasher` (which holds the bytes
/// before `offset`), then checks the file did not change. With `sparse`,
/// only the data extents are read; each hole is sent as hole frames
/// ([`ReadEvent::Copy`], which travels as it is) and hashed as zeros.
#[allow(clippy::too_many_arguments)]
pub(super) fn read_range(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    mut offset: u64,
    sparse: bool,
    mut hasher: blake3::Hasher,
    mut gate: Option<Gate>,
    send: &mut impl FnMut(ReadEvent) -> bool,
) {
    use crate::files::sparse as holes;
    // End of the data extent `offset` is in (without --sparse: all data).
    let mut data_end = if sparse { offset } else { meta.size };
    while offset < meta.size {
        if offset >= data_end {
            let (start, end) = holes::next_extent(file, offset, meta.size);
            while offset < start {
                let len = (start - offset).min(holes::MAX_HOLE);
                holes::hash_zeros(&mut hasher, len);
                if !send(ReadEvent::Copy(holes::hole_frame(offset, len), len)) {
                    return;
                }
                offset += len;
            }
            data_end = end;
            if offset >= meta.size {
                break;
            }
        }
        let len = (data_end - offset).min(chunk_len.clamp(1, CHUNK_DATA) as u64) as usize;
        if let Some(g) = gate.as_mut()
            && let Err(why) = g.wait_blocking(offset + len as u64)
        {
            let _ = send(ReadEvent::Failed(why.into()));
            return;
        }
        let buf = match read_chunk(file, meta, offset, len) {
            Ok(buf) => buf,
            Err(why) => {
                let _ = send(ReadEvent::Failed(why));
                return;
            }
        };
        if gate.is_none() {
            hasher.update(&buf[OFFSET_LEN..]);
        }
        offset += len as u64;
        if !send(ReadEvent::Chunk(super::chunk_pool::freeze(buf), len as u64)) {
            return;
        }
    }
    if let Some(g) = gate.as_mut() {
        // A relay's spool: hashed as it was written, against the digest
        // upstream sent. Not hashed again for each child — that was a
        // second BLAKE3 pass over every byte per target, on the relay's
        // CPU, which is what bounds a large fleet (see docs/benchmarks.md).
        match g.digest_blocking() {
            Ok(d) => {
                let _ = send(ReadEvent::Done(d));
            }
            Err(why) => {
                let _ = send(ReadEvent::Failed(why.into()));
            }
        }
        return;
    }
    finish_read(file, meta, &hasher, send);
}

/// The chunk `[offset, offset + len)` of `file`, as it goes on the wire:
/// `[offset][bytes]`.
fn read_chunk(file: &File, meta: &FileMeta, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
    // Not zeroed first: zeroing 128 KiB per chunk cost about 4 % of
    // the sender's CPU, and every byte is overwritten by the read. The
    // buffer is a reused one (`chunk_pool`).
    let mut buf = super::chunk_pool::take();
    buf.extend_from_slice(&offset.to_be_bytes());
    let mut filled = 0;
    while filled < len {
        let spare = &mut buf.spare_capacity_mut()[..len - filled];
        match rustix::io::pread(file, spare, offset + filled as u64).map(|(got, _)| got.len()) {
            Ok(0) => {
                return Err(ReadError::Shrank {
                    expected: meta.size,
                    found: offset + filled as u64,
                });
            }
            Ok(n) => {
                // SAFETY: `pread` initialised exactly the first `n`
                // bytes of the spare capacity it was given.
                unsafe { buf.set_len(buf.len() + n) };
                filled += n;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(ReadError::ReadAt {
                    offset: offset + filled as u64,
                    source: e.into(),
                });
            }
        }
    }
    Ok(buf)
}

/// The last word of a read: the digest, unless the file changed.
pub(super) fn finish_read(
    file: &File,
    meta: &FileMeta,
    hasher: &blake3::Hasher,
    send: &mut impl FnMut(ReadEvent) -> bool,
) {
    let mut probe = [0u8; 1];
    let grew = matches!(file.read_at(&mut probe, meta.size), Ok(n) if n > 0);
    if grew || changed_since(file, meta) {
        let _ = send(ReadEvent::Failed(ReadError::ChangedDuringTransfer));
        return;
    }
    let _ = send(ReadEvent::Done(*hasher.finalize().as_bytes()));
}
