//! The reader of a delta transfer: the file through a rolling [`Matcher`]
//! against the requester's signature.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use super::read::{DELTA_READ, ReadError, ReadEvent, finish_read};
use super::stats::DeltaCounters;
use crate::files::delta::{self, Matcher, Op};
use crate::files::meta::FileMeta;
use crate::files::{CHUNK_DATA, OFFSET_LEN};

/// Reads the file through a delta [`Matcher`] against the requester's
/// `basis`: copy instructions for what the requester has, chunks of
/// literal data for the rest, and the digest of the whole file.
pub(super) fn read_file_delta(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    basis: &delta::Basis,
    counters: &DeltaCounters,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    // A lying signature may make every offset a weak hit: strong digests
    // that match nothing may cover the file once more plus 64 MiB, then
    // the rest goes literal.
    let mut matcher = match Matcher::new(basis, meta.size.saturating_add(64 << 20)) {
        Ok(m) => m,
        Err(e) => {
            let _ = send(ReadEvent::Failed(e.into()));
            return;
        }
    };
    counters.transfers.fetch_add(1, Ordering::Relaxed);
    let matching = std::time::Instant::now();
    let mut ops = Vec::new();
    let mut offset = 0u64;
    let chunk_len = chunk_len.clamp(1, CHUNK_DATA);
    // The whole file's BLAKE3 runs on a thread of its own, beside the
    // matcher (`HashPipe`): one after the other on one core the two were
    // the longest of the delta's passes (docs/benchmarks.md, issue 11).
    let mut pipe = match crate::files::hashpipe::HashPipe::start(blake3::Hasher::new()) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(ReadEvent::Failed(ReadError::HashThread(e)));
            return;
        }
    };
    while offset < meta.size {
        let want = (meta.size - offset).min(DELTA_READ as u64) as usize;
        let mut buf = pipe.buffer(want);
        if let Err(e) = file.read_exact_at(&mut buf, offset) {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadError::ShrankSomewhere {
                    expected: meta.size,
                }
            } else {
                ReadError::ReadAt { offset, source: e }
            };
            let _ = send(ReadEvent::Failed(why));
            return;
        }
        matcher.feed(&buf, &mut ops);
        if let Err(why) = pipe.hash_buf(buf) {
            let _ = send(ReadEvent::Failed(why.into()));
            return;
        }
        offset += want as u64;
        if !emit(&mut ops, counters, chunk_len, &mut send) {
            return;
        }
    }
    matcher.finish(&mut ops);
    if !emit(&mut ops, counters, chunk_len, &mut send) {
        return;
    }
    let hasher = match pipe.finish() {
        Ok(h) => h,
        Err(why) => {
            let _ = send(ReadEvent::Failed(why.into()));
            return;
        }
    };
    tracing::debug!(
        "delta: matched {} bytes in {:?}: {:?}",
        meta.size,
        matching.elapsed(),
        matcher.stats()
    );
    if matcher.stats().gave_up {
        counters.gave_up.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "delta: the requester's signature kept failing the strong check; the rest of the file was sent whole"
        );
    }
    finish_read(file, meta, &hasher, &mut send);
}

/// Sends the matcher's `ops`: copy instructions as they are, literal data
/// in chunks of `chunk_len`. False once `send` wants no more.
fn emit(
    ops: &mut Vec<Op>,
    counters: &DeltaCounters,
    chunk_len: usize,
    send: &mut dyn FnMut(ReadEvent) -> bool,
) -> bool {
    for op in ops.drain(..) {
        match op {
            Op::Copy { offset, from, len } => {
                counters.copied.fetch_add(len, Ordering::Relaxed);
                if !send(ReadEvent::Copy(delta::copy_frame(offset, from, len), len)) {
                    return false;
                }
            }
            Op::Literal { offset, data } => {
                counters
                    .literal
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let mut at = offset;
                for piece in data.chunks(chunk_len) {
                    let mut chunk = BytesMut::with_capacity(OFFSET_LEN + piece.len());
                    chunk.extend_from_slice(&at.to_be_bytes());
                    chunk.extend_from_slice(piece);
                    at += piece.len() as u64;
                    if !send(ReadEvent::Chunk(chunk.freeze(), piece.len() as u64)) {
                        return false;
                    }
                }
            }
        }
    }
    true
}
