//! [`ChunkEncoder`]: the sender's side of one large file — which chunks
//! are tried, linked to the chunk before, forwarded from a relay's
//! [`FrameLog`], or given up. Runs on the reader's thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{COMPRESSED, FrameLog, LINKED, Shared, Zstd, thread_cpu_ns};
use crate::files::OFFSET_LEN;

/// Raw (non-shrinking) chunks in a row after which a file stops being tried.
pub const GIVE_UP_AFTER: u32 = 4;

/// While a file is given up, one chunk in this many is still tried.
pub const REPROBE_EVERY: u64 = 64;

/// The sender's side of one file: turns raw chunks (`[offset][bytes]`)
/// into what goes on the wire. Runs on the reader's thread.
///
/// A chunk that directly follows the previous one (its file bytes start
/// where the previous chunk's ended) is compressed *linked* to it
/// ([`LINKED`]): the previous chunk's bytes are its zstd prefix, which on
/// the text tree of docs/benchmarks.md made 12–13 % fewer bytes of the
/// large files than chunks compressed alone.
pub struct ChunkEncoder {
    shared: Arc<Shared>,
    zstd: Zstd,
    misses: u32,
    chunks: u64,
    /// A relay's record of the compressed chunks upstream sent.
    forward: Option<Arc<FrameLog>>,
    /// The previous chunk sent: its offset and file bytes, whichever way
    /// it went (the receiver holds them as the piece before the next).
    prev: Option<(u64, Bytes)>,
}

impl ChunkEncoder {
    /// An encoder following `shared`'s level.
    pub fn new(shared: Arc<Shared>) -> ChunkEncoder {
        ChunkEncoder {
            shared,
            zstd: Zstd::default(),
            misses: 0,
            chunks: 0,
            forward: None,
            prev: None,
        }
    }

    /// Sends on, whenever this encoder would compress, the compressed form
    /// upstream sent of a chunk with the same offset and length (a relay's
    /// tee, [`FrameLog`]) instead of compressing it again.
    pub fn forwarding(mut self, log: Option<Arc<FrameLog>>) -> ChunkEncoder {
        self.forward = log;
        self
    }

    /// The frame payload for `chunk` (`[offset][bytes]`): compressed if
    /// that pays, else `chunk` itself.
    pub fn encode(&mut self, chunk: Bytes) -> Bytes {
        self.chunks += 1;
        let Some(offset) = chunk
            .get(..OFFSET_LEN)
            .and_then(|h| <[u8; OFFSET_LEN]>::try_from(h).ok())
            .map(u64::from_be_bytes)
        else {
            return chunk;
        };
        let data = chunk.slice(OFFSET_LEN..);
        // The bytes just before this chunk, if the previous chunk ends
        // where it starts (not after a hole, a copy or a resume's start).
        let before = self
            .prev
            .take()
            .filter(|(o, d)| o.saturating_add(d.len() as u64) == offset)
            .map(|(_, d)| d);
        let out = self.encode_one(offset, &data, before.as_deref());
        self.prev = Some((offset, data));
        out.unwrap_or(chunk)
    }

    /// [`ChunkEncoder::encode`] of the chunk at `offset`, whose file bytes
    /// are `data` and preceded by `before`: `None` to send it raw.
    fn encode_one(&mut self, offset: u64, data: &[u8], before: Option<&[u8]>) -> Option<Bytes> {
        let level = self.shared.level()?;
        if let Some(log) = &self.forward
            && let Some((frame, prefix)) = log.get(offset, data.len() as u64)
            && (prefix == 0 || before.map(|b| b.len() as u64) == Some(prefix))
        {
            // Upstream's work, sent on: the same bytes (after the same
            // prefix) decode to the same chunk here as at the relay, which
            // checked them (and the child checks the file's digest as
            // always).
            self.misses = 0;
            self.shared
                .counters
                .forwarded
                .fetch_add(1, Ordering::Relaxed);
            return Some(frame);
        }
        if self.misses >= GIVE_UP_AFTER && !self.chunks.is_multiple_of(REPROBE_EVERY) {
            return None;
        }
        let t0 = thread_cpu_ns();
        let out = self.compress(level, offset, data, before);
        self.shared
            .compress_ns
            .fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
        let counters = &self.shared.counters;
        match out {
            Some(out) => {
                self.misses = 0;
                counters.count_compressed(data.len(), out.len() - OFFSET_LEN);
                Some(Bytes::from(out))
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                counters.raw_chunks.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// `[offset | COMPRESSED (| LINKED)][zstd(data)]`, or `None` if it
    /// would not save 1/64 of `data` (or zstd failed: then raw is the safe
    /// answer).
    fn compress(
        &mut self,
        level: i32,
        offset: u64,
        data: &[u8],
        before: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        if !self.zstd.trial_shrinks(data) {
            return None;
        }
        // An offset with the LINKED bit set could not be told apart.
        let before = before.filter(|b| !b.is_empty() && offset & LINKED == 0);
        let flags = match before {
            Some(_) => COMPRESSED | LINKED,
            None => COMPRESSED,
        };
        self.zstd
            .compress(level, &(offset | flags).to_be_bytes(), data, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::CHUNK_DATA;
    use crate::files::compress::test_data::{chunk, encoder, random, text};
    use crate::files::compress::{ChunkDecoder, Opened, decode_linked};

    #[test]
    fn text_round_trips_compressed() {
        let (mut enc, counters) = encoder(Some(3));
        let data = text(CHUNK_DATA);
        let wire = enc.encode(chunk(5 * CHUNK_DATA as u64, &data));
        assert!(wire.len() < data.len() / 3, "{} bytes", wire.len());
        assert_ne!(wire[0] & 0x80, 0, "the compressed bit is set");
        let (off, got) = ChunkDecoder::default()
            .open(&wire, 10 * CHUNK_DATA as u64)
            .expect("decodes");
        assert_eq!(off, 5 * CHUNK_DATA as u64);
        assert_eq!(&got[..], &data[..]);
        assert_eq!(counters.compressed_chunks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn random_data_goes_raw_and_a_file_is_given_up() {
        let (mut enc, counters) = encoder(Some(3));
        for i in 0..GIVE_UP_AFTER as u64 + 3 {
            let c = chunk(i, &random(CHUNK_DATA, i + 1));
            let wire = enc.encode(c.clone());
            assert_eq!(wire, c, "sent as it was");
        }
        // Tried only until given up.
        assert_eq!(
            counters.raw_chunks.load(Ordering::Relaxed),
            GIVE_UP_AFTER as u64
        );
        assert_eq!(counters.compressed_chunks.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_chunk_that_passes_the_trial_but_does_not_shrink_goes_raw() {
        let (mut enc, counters) = encoder(Some(3));
        // 1 KiB of text first (the trial on 8 KiB passes), random after:
        // the whole saves well under 1/64.
        let mut data = text(1024);
        data.extend(random(CHUNK_DATA - 1024, 9));
        let c = chunk(0, &data);
        assert_eq!(enc.encode(c.clone()), c);
        assert_eq!(counters.raw_chunks.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn off_sends_everything_raw_untried() {
        let (mut enc, counters) = encoder(None);
        let c = chunk(0, &text(1000));
        assert_eq!(enc.encode(c.clone()), c);
        assert_eq!(counters.raw_chunks.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn consecutive_chunks_are_linked_and_decode_only_after_their_prefix() {
        let (mut enc, _) = encoder(Some(3));
        let data = text(3 * CHUNK_DATA);
        let parts: Vec<&[u8]> = data.chunks(CHUNK_DATA).collect();
        let w0 = enc.encode(chunk(0, parts[0]));
        let w1 = enc.encode(chunk(CHUNK_DATA as u64, parts[1]));
        // After a gap (a hole, a copy): alone again.
        let w3 = enc.encode(chunk(3 * CHUNK_DATA as u64, parts[2]));
        let flags =
            |w: &Bytes| u64::from_be_bytes(w[..8].try_into().expect("8")) & (COMPRESSED | LINKED);
        assert_eq!(flags(&w0), COMPRESSED);
        assert_eq!(flags(&w1), COMPRESSED | LINKED);
        assert_eq!(flags(&w3), COMPRESSED);
        let mut dec = ChunkDecoder::default();
        let limit = 4 * CHUNK_DATA as u64;
        let (off, opened) = dec.open_any(&w1, limit).expect("header");
        assert_eq!(off, CHUNK_DATA as u64);
        let Opened::Linked { zstd, len } = opened else {
            panic!("not linked: {opened:?}");
        };
        assert_eq!(len, CHUNK_DATA as u64);
        let got = decode_linked(off, &zstd, len, parts[0]).expect("decodes");
        assert_eq!(&got[..], parts[1]);
        // Not on its own.
        assert!(dec.open(&w1, limit).is_err());
        // A declared size past the cap is refused before decoding.
        assert!(dec.open_any(&w1, CHUNK_DATA as u64 + 10).is_err());
        // A relay forwards it only after the same prefix.
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("z"))
            .expect("create");
        let log = Arc::new(FrameLog::new(f));
        log.record(off, len, limit, &zstd, CHUNK_DATA as u64);
        let (enc, counters) = encoder(Some(1));
        let mut relay = enc.forwarding(Some(log.clone()));
        // No chunk before it here: compressed alone instead.
        let out = relay.encode(chunk(CHUNK_DATA as u64, parts[1]));
        assert_eq!(flags(&out), COMPRESSED);
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 0);
        let (enc, counters) = encoder(Some(1));
        let mut relay = enc.forwarding(Some(log));
        relay.encode(chunk(0, parts[0]));
        assert_eq!(relay.encode(chunk(CHUNK_DATA as u64, parts[1])), w1);
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 1);
    }
}
