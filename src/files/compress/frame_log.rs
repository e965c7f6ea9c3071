//! [`FrameLog`]: a relay's on-disk record of the compressed chunks
//! upstream sent, so that its readers send them on instead of compressing
//! the same bytes again for every child. Apart: bounded against a hostile
//! upstream, and only a relay keeps one.

use bytes::Bytes;

use super::{COMPRESSED, LINKED};
use crate::files::OFFSET_LEN;

/// The smallest chunk a [`FrameLog`] keeps (but a file's last): the
/// smallest `--bwlimit` chunk. A hostile upstream cutting smaller ones
/// cannot make the index hold more than one entry per this many bytes.
pub const LOG_MIN_CHUNK: u64 = 16 * 1024;

/// Most chunks a [`FrameLog`] indexes (about 10 MiB of memory; 32 GiB of
/// file in whole chunks, 4 GiB in the smallest `--bwlimit` ones).
pub const LOG_MAX_ENTRIES: usize = 1 << 18;

/// A [`FrameLog`]'s index: offset -> (where, payload length, file bytes),
/// and the end of its file.
type LogIndex = (std::collections::HashMap<u64, LogEntry>, u64);

/// Where a kept payload is, its length, the chunk's file bytes, and the
/// length of the prefix it was compressed against (0: none).
type LogEntry = (u64, u32, u64, u64);

/// A relay's record of the compressed chunks of one file as they came
/// from upstream: each zstd payload in a file of the relay's private spool
/// (on disk, like the spool file itself: a slow child costs disk, not
/// memory), indexed by offset. The relay's readers send these on instead
/// of compressing the same bytes again for every child
/// ([`ChunkEncoder::forwarding`](super::ChunkEncoder::forwarding)).
///
/// Chunks are kept as upstream cut them (whole chunks, or the smaller ones
/// of `--bwlimit`, which the relay's readers cut the same way); the index
/// is bounded however an upstream cuts them: only chunks of at least
/// [`LOG_MIN_CHUNK`] bytes (or ending the file), and at most
/// [`LOG_MAX_ENTRIES`] per file (beyond that a relay compresses again).
/// A chunk is recorded once the
/// relay decoded it and took it in order (a duplicate offset fails the
/// fetch before it is recorded), so what a child is sent is what the
/// relay checked against the file's digest before its `End`.
pub struct FrameLog {
    file: std::fs::File,
    index: std::sync::Mutex<LogIndex>,
}

impl FrameLog {
    /// A log kept in `file` (read-write, the relay's alone).
    pub fn new(file: std::fs::File) -> FrameLog {
        FrameLog {
            file,
            index: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogIndex> {
        // Each critical section is one map access.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the chunk of `len` file bytes at `offset` of a file of
    /// `size` bytes came as the zstd `payload` (without its offset),
    /// compressed against the `prefix` bytes before it (0: alone).
    /// Chunks a reader would never ask for are not kept; a failed write
    /// only means that chunk is compressed again when sent on.
    pub fn record(&self, offset: u64, len: u64, size: u64, payload: &[u8], prefix: u64) {
        let big = len >= LOG_MIN_CHUNK || offset.saturating_add(len) == size;
        // Kept only if it saves bytes (a hostile upstream could pad it).
        let saves = (payload.len() as u64) < len;
        if !big || !saves {
            return;
        }
        let Ok(n) = u32::try_from(payload.len()) else {
            return;
        };
        let mut index = self.lock();
        if index.0.len() >= LOG_MAX_ENTRIES || index.0.contains_key(&offset) {
            return;
        }
        let at = index.1;
        // Written under the lock: a reader that finds the entry finds the
        // bytes.
        use std::os::unix::fs::FileExt;
        if let Err(e) = self.file.write_all_at(payload, at) {
            tracing::debug!("relay: could not keep a compressed chunk: {e}");
            return;
        }
        index.1 += payload.len() as u64;
        index.0.insert(offset, (at, n, len, prefix));
    }

    /// The frame payload (`[offset | COMPRESSED (| LINKED)][zstd]`)
    /// upstream sent for the chunk of `len` bytes at `offset`, if it came
    /// compressed and with those bounds, and the length of the prefix
    /// (the data chunk before it) it needs (0: none).
    pub fn get(&self, offset: u64, len: u64) -> Option<(Bytes, u64)> {
        let (at, n, kept, prefix) = *self.lock().0.get(&offset)?;
        if kept != len {
            return None;
        }
        let flags = match prefix {
            0 => COMPRESSED,
            _ => COMPRESSED | LINKED,
        };
        let mut buf = vec![0u8; OFFSET_LEN + n as usize];
        buf[..OFFSET_LEN].copy_from_slice(&(offset | flags).to_be_bytes());
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(&mut buf[OFFSET_LEN..], at).ok()?;
        Some((Bytes::from(buf), prefix))
    }

    /// Chunks recorded.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// True if no chunk is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::files::CHUNK_DATA;
    use crate::files::compress::ChunkDecoder;
    use crate::files::compress::test_data::{chunk, encoder, text};

    #[test]
    fn a_frame_log_keeps_what_a_reader_can_ask_for_and_gives_it_back_as_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("z"))
            .expect("create");
        let log = FrameLog::new(file);
        let size = 2 * CHUNK_DATA as u64 + 1000;
        let (mut enc, _) = encoder(Some(3));
        let first = text(CHUNK_DATA);
        let wire = enc.encode(chunk(0, &first));
        log.record(0, CHUNK_DATA as u64, size, &wire[OFFSET_LEN..], 0);
        // The last, short chunk ends the file: kept.
        let last = text(1000);
        let wire_last = enc.encode(chunk(2 * CHUNK_DATA as u64, &last));
        log.record(
            2 * CHUNK_DATA as u64,
            1000,
            size,
            &wire_last[OFFSET_LEN..],
            0,
        );
        // Tiny (a hostile upstream's cut), or no smaller than its bytes:
        // not kept.
        log.record(4096, 100, size, &wire[OFFSET_LEN..OFFSET_LEN + 50], 0);
        log.record(
            CHUNK_DATA as u64,
            100,
            size,
            &wire[OFFSET_LEN..OFFSET_LEN + 50],
            0,
        );
        log.record(
            CHUNK_DATA as u64,
            CHUNK_DATA as u64,
            size,
            &vec![0u8; CHUNK_DATA],
            0,
        );
        assert_eq!(log.len(), 2);
        // Given back byte for byte, decoding to the chunk.
        assert_eq!(log.get(0, CHUNK_DATA as u64), Some((wire.clone(), 0)));
        let (back, _) = log.get(2 * CHUNK_DATA as u64, 1000).expect("kept");
        assert_eq!(back, wire_last);
        let (off, got) = ChunkDecoder::default().open(&back, size).expect("decodes");
        assert_eq!((off, &got[..]), (2 * CHUNK_DATA as u64, &last[..]));
        // Asked with other bounds: not this chunk.
        assert_eq!(log.get(0, 1000), None);
        assert_eq!(log.get(CHUNK_DATA as u64, CHUNK_DATA as u64), None);
        // Recorded once: a second record of an offset changes nothing.
        log.record(0, CHUNK_DATA as u64, size, &wire_last[OFFSET_LEN..], 0);
        assert_eq!(log.get(0, CHUNK_DATA as u64), Some((wire.clone(), 0)));
        // An encoder forwarding from it sends the kept payload as it is
        // (whatever its own level), and compresses the rest itself.
        let log = Arc::new(log);
        let (enc, counters) = encoder(Some(1));
        let mut enc = enc.forwarding(Some(log.clone()));
        assert_eq!(enc.encode(chunk(0, &first)), wire);
        let other = enc.encode(chunk(CHUNK_DATA as u64, &first));
        assert_ne!(other[0] & 0x80, 0, "compressed here");
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 1);
        assert_eq!(counters.compressed_chunks.load(Ordering::Relaxed), 1);
        // Off: nothing is forwarded either (the target's link outruns its
        // decompressing).
        let (enc, counters) = encoder(None);
        let c = chunk(0, &first);
        assert_eq!(enc.forwarding(Some(log)).encode(c.clone()), c);
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 0);
    }
}
