//! `-z`: zstd per chunk, decided by the sender, undone by the receiver
//! before the digest check (the digest stays that of the file).
//!
//! # On the wire
//!
//! A data frame is `[offset: u64 BE][bytes]`. A *compressed* chunk sets the
//! top bit of the offset ([`COMPRESSED`]) and carries one or more zstd
//! frames that decompress to the chunk's file bytes. File offsets are below
//! 2⁶³ (`st_size` is an `i64`), so the bit is never part of a real offset,
//! and a receiver that does not know it refuses the chunk as out of range
//! instead of writing compressed bytes into the file. The receiver caps
//! the decompressed size at what the protocol allows for that offset
//! ([`CHUNK_DATA`], and no further than the announced size), so a hostile
//! chunk can neither make it allocate more nor land bytes past the end.
//!
//! Small files (`fetch_small`) come as [`SmallFile::Compressed`], whose
//! `data` is a zstd frame of exactly `meta.size` bytes.
//!
//! # What is compressed
//!
//! * Each chunk is first tried on a [`TRIAL_LEN`] sample at the fastest
//!   level: random data costs that sample, not a whole chunk's work.
//! * A chunk whose compressed form does not save at least 1/64 of it is
//!   sent raw ([`CompressCounters::raw_chunks`]).
//! * After [`GIVE_UP_AFTER`] raw chunks in a row, a file stops being tried,
//!   except one chunk in [`REPROBE_EVERY`] (a file may change character:
//!   an archive with a text part).
//!
//! # How hard
//!
//! The level adapts to the link ([`Tuner`]): never make a push slower than
//! it would be without `-z`. Per period of [`PERIOD_CHUNKS`] chunks the
//! reader measures the CPU time compressing took (the compressor's rate in
//! file bytes a second) and the credit window's rounds give the link's
//! delivery rate in wire bytes a second. A level is kept while compressing
//! at it delivers more file bytes a second than raw would at that link
//! rate ([`compressing_pays`]); when the link outruns the compressor
//! (loopback, a fast LAN) the level goes down a step, or off at once if
//! the compressor is saturated. A saturated compressor that still beats the
//! link steps down to a faster level but never off. With no link rate known
//! yet, a saturated compressor sends raw for a period or two to measure it.
//! Off, compression comes back as soon as a raw period shows the link
//! slower than the compressor was, and otherwise is tried again only when
//! the link is clearly the bottleneck, after twice as many bytes each time.
//! With the compressor mostly idle, the level goes up a step, to 5 at
//! most, if the compressor would not be saturated there. The small-file
//! path ([`Tuner::on_batch`]) moves the same stream's level by the share
//! of time its replies spend compressing.
//!
//! # Layout
//!
//! The wire bits, the counters and what a transfer's pump and reader
//! share are here; the sender's chunks in `encode`, the receiver's in
//! `decode`, whole small files in `small`, the zstd contexts both senders
//! reuse in `compressor`, a relay's record of upstream's frames in
//! `frame_log`, file-to-wire acknowledgements in `ledger`, and the level
//! policy in `tuner`.
//!
//! [`CHUNK_DATA`]: crate::files::CHUNK_DATA
//! [`SmallFile::Compressed`]: crate::files::SmallFile::Compressed

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

mod compressor;
mod decode;
mod encode;
mod frame_log;
mod ledger;
mod small;
#[cfg(test)]
mod test_data;
mod tuner;

pub use compressor::{TRIAL_LEN, Zstd};
pub use decode::{ChunkDecoder, ChunkError, Opened, decode_linked};
pub use encode::{ChunkEncoder, GIVE_UP_AFTER, REPROBE_EVERY};
pub use frame_log::{FrameLog, LOG_MAX_ENTRIES, LOG_MIN_CHUNK};
pub use ledger::WireLedger;
pub use small::{SmallDecoder, SmallEncoder, compress_small, open_small};
pub use tuner::{LADDER, PERIOD_BATCHES, PERIOD_CHUNKS, Tuner, compressing_pays};

/// The offset bit that marks a compressed chunk.
pub const COMPRESSED: u64 = 1 << 63;

/// With [`COMPRESSED`]: the chunk was compressed with the file bytes of
/// the data chunk just before it as a zstd prefix (a *linked* chunk): its
/// matches may reach back into them, so it decodes only once they are
/// known, in file order ([`decode_linked`]).
pub const LINKED: u64 = 1 << 60;

/// A level value meaning "do not compress".
const OFF: i32 = i32::MIN;

/// Whether and how hard the FileService compresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Never (the default).
    #[default]
    Off,
    /// `-z`: at the level the link affords ([`Tuner`]).
    Adaptive,
    /// Always try, at this zstd level (tests and benchmarks).
    Level(i32),
}

/// Counters of what `-z` did, kept by the FileService.
#[derive(Debug, Default)]
pub struct CompressCounters {
    /// Chunks (or small files) sent compressed.
    pub compressed_chunks: AtomicU64,
    /// Chunks (or small files) tried and sent raw because they did not
    /// shrink.
    pub raw_chunks: AtomicU64,
    /// File bytes in compressed chunks.
    pub bytes_in: AtomicU64,
    /// Their size on the wire (zstd frames, without the offset).
    pub bytes_out: AtomicU64,
    /// Chunks (or small files) a relay sent on compressed as they came
    /// from upstream, without compressing them again ([`FrameLog`]).
    pub forwarded: AtomicU64,
}

impl CompressCounters {
    /// One chunk or small file of `file_bytes` sent as `wire_bytes` of zstd.
    pub fn count_compressed(&self, file_bytes: usize, wire_bytes: usize) {
        self.compressed_chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(file_bytes as u64, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(wire_bytes as u64, Ordering::Relaxed);
    }
}

/// What the pump and the reader of one transfer share.
#[derive(Debug)]
pub struct Shared {
    level: AtomicI32,
    compress_ns: AtomicU64,
    counters: Arc<CompressCounters>,
}

impl Shared {
    /// A transfer starting at `level` (`None`: off).
    pub fn new(level: Option<i32>, counters: Arc<CompressCounters>) -> Arc<Shared> {
        Arc::new(Shared {
            level: AtomicI32::new(level.unwrap_or(OFF)),
            compress_ns: AtomicU64::new(0),
            counters,
        })
    }

    fn level(&self) -> Option<i32> {
        match self.level.load(Ordering::Relaxed) {
            OFF => None,
            l => Some(l),
        }
    }

    /// Nanoseconds spent compressing so far.
    pub fn compress_ns(&self) -> u64 {
        self.compress_ns.load(Ordering::Relaxed)
    }

    /// Sets the level for the chunks read from now on.
    pub fn set_level(&self, level: Option<i32>) {
        self.level.store(level.unwrap_or(OFF), Ordering::Relaxed);
    }
}

/// True if the data frame `payload` carries a compressed chunk.
pub fn is_compressed(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x80 != 0)
}

/// This thread's CPU time in nanoseconds. The compressor's cost is taken
/// as CPU time, not wall time: on a busy machine (during a push over the
/// emulated 100 ms link, with 8 stripes' ssh handshakes and the delay line
/// competing for 2 CPUs) wall time inflated by preemption made the tuner
/// switch compression off on a link it was saving two thirds of.
pub fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.max(0) as u64)
}
