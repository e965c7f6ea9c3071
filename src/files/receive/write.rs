//! Writing one in-order piece of a file (data, a hole, a copy from a
//! delta's old file) and hashing it, inline or through a [`HashPipe`].

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::files::hashpipe::HashPipe;
use crate::files::reassembly::Piece;

/// Writes `piece` at offset `at` of `file` and hashes it: data as it is,
/// a copy read from `old` (a delta's basis) through `buf`. Read and written
/// rather than `copy_file_range`d: the bytes must be hashed anyway, since
/// the whole file's digest is checked.
pub(super) fn put(
    file: &File,
    old: Option<&File>,
    piece: &Piece,
    at: u64,
    hasher: &mut blake3::Hasher,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    match piece {
        Piece::Data(data) => {
            file.write_all_at(data, at)?;
            hasher.update(data);
        }
        Piece::Linked { .. } => {
            // Decoded before it is written (`Linker::settle`).
            return Err(std::io::Error::other("a compressed chunk was not decoded"));
        }
        Piece::Hole(len) => {
            // Data is written in order, so the file ends at `at`:
            // extending it leaves the range a hole.
            file.set_len(at + len)?;
            crate::files::sparse::hash_zeros(hasher, *len);
        }
        Piece::Copy { from, len } => {
            let Some(old) = old else {
                return Err(std::io::Error::other(
                    "copy instruction without an old file",
                ));
            };
            buf.resize(COPY_BUF.min(*len as usize), 0);
            let mut done = 0u64;
            while done < *len {
                let n = (*len - done).min(buf.len() as u64) as usize;
                read_old(old, &mut buf[..n], from + done)?;
                hasher.update(&buf[..n]);
                file.write_all_at(&buf[..n], at + done)?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// [`put`], with the hash fed to `pipe`'s thread rather than computed
/// here.
pub(super) fn put_piped(
    file: &File,
    old: Option<&File>,
    piece: &Piece,
    at: u64,
    pipe: &mut HashPipe,
) -> std::io::Result<()> {
    match piece {
        Piece::Data(data) => {
            file.write_all_at(data, at)?;
            pipe.hash_bytes(data.clone())
                .map_err(std::io::Error::other)?;
        }
        Piece::Linked { .. } => {
            // Decoded before it is written (`Linker::settle`).
            return Err(std::io::Error::other("a compressed chunk was not decoded"));
        }
        Piece::Hole(len) => {
            file.set_len(at + len)?;
            pipe.hash_zeros(*len).map_err(std::io::Error::other)?;
        }
        Piece::Copy { from, len } => {
            let Some(old) = old else {
                return Err(std::io::Error::other(
                    "copy instruction without an old file",
                ));
            };
            let mut done = 0u64;
            while done < *len {
                let n = (*len - done).min(COPY_BUF as u64) as usize;
                let mut buf = pipe.buffer(n);
                read_old(old, &mut buf, from + done)?;
                file.write_all_at(&buf, at + done)?;
                pipe.hash_buf(buf).map_err(std::io::Error::other)?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads `buf.len()` bytes of a delta's old file at `at`.
pub(super) fn read_old(old: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    old.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::other("the old file shrank while it was the basis of a delta transfer")
        } else {
            e
        }
    })
}

/// Bytes of the old file copied at a time.
const COPY_BUF: usize = 1 << 20;
