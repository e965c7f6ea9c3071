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

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{CHUNK_DATA, OFFSET_LEN, SmallFile};

/// The offset bit that marks a compressed chunk.
pub const COMPRESSED: u64 = 1 << 63;

/// With [`COMPRESSED`]: the chunk was compressed with the file bytes of
/// the data chunk just before it as a zstd prefix (a *linked* chunk): its
/// matches may reach back into them, so it decodes only once they are
/// known, in file order ([`decode_linked`]).
pub const LINKED: u64 = 1 << 60;

/// Bytes of a chunk compressed as a trial before the whole chunk is.
pub const TRIAL_LEN: usize = 8 * 1024;

/// Raw (non-shrinking) chunks in a row after which a file stops being tried.
pub const GIVE_UP_AFTER: u32 = 4;

/// While a file is given up, one chunk in this many is still tried.
pub const REPROBE_EVERY: u64 = 64;

/// Chunks per adaptation period: 2 MiB, a few milliseconds on loopback,
/// so a fast link stops paying for compression within a few periods.
pub const PERIOD_CHUNKS: u64 = 16;

/// `fetch_small` replies per adaptation period of the small-file path.
pub const PERIOD_BATCHES: u32 = 4;

/// zstd levels the tuner moves between, slowest (best ratio) last. Level 3
/// is zstd's (and `rsync -z`'s) default; the negative levels trade ratio
/// for speed. Level 5 is for a link slow enough to leave the compressor
/// mostly idle at 3 (100 Mbit): on the text tree of docs/benchmarks.md,
/// linked chunks at 5 are 4.6 % smaller than at 3 for 2.4 times the CPU.
pub const LADDER: [i32; 5] = [-5, -1, 1, 3, 5];

/// CPU time per byte of each [`LADDER`] step relative to the one below
/// (linked 128 KiB chunks of a 64 MiB text tree, CPU time on one core of
/// the bench machine: -5 720 MB/s, -1 500, 1 460, 3 300, 5 125): the next
/// step is taken only if the compressor would stay under [`UP_BUSY`] there.
const STEP_COST: [f64; 5] = [1.0, 1.4, 1.1, 1.55, 2.35];

/// The highest step the tuner goes to: level 5.
const TOP: usize = LADDER.len() - 1;

/// The highest step the small-file path climbs to: level 3. Small files
/// compressed on their own gain 1 % at level 5 (5.59 to 5.54 MB of 16
/// MiB) for 2.5 times the CPU; the chunk path may still take the
/// stream's level higher.
const SMALL_TOP: usize = 3;

/// Where it starts: level 1, one step below, so a fast link finds
/// compression too slow a period sooner and a slow one climbs to level 3
/// within two periods (over the local pipe, stepping down from level 3
/// to off took about 60 ms of a 200 MB push by the debug log).
const INITIAL: usize = 2;

/// A level value meaning "do not compress".
const OFF: i32 = i32::MIN;

/// Bytes sent raw after compression was switched off before the first
/// probe; doubles after each probe that switched it off again.
const FIRST_REPROBE_BYTES: u64 = 64 << 20;

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

/// Two zstd contexts, made when first needed and reused: one for the
/// trials at the fastest level, one at the level in force. (A context costs
/// an allocation of up to a few MiB at level 3: not something to make per
/// chunk or per small file.)
#[derive(Default)]
pub struct Zstd {
    trial: Option<zstd::bulk::Compressor<'static>>,
    main: Option<(zstd::bulk::Compressor<'static>, i32)>,
}

impl Zstd {
    /// The cheap trial: does `data`'s first [`TRIAL_LEN`] bytes shrink by
    /// 1/32 at the fastest level?
    fn trial_shrinks(&mut self, data: &[u8]) -> bool {
        let sample = &data[..data.len().min(TRIAL_LEN)];
        if sample.len() < 64 {
            return false;
        }
        let cctx = match &mut self.trial {
            Some(c) => c,
            None => match zstd::bulk::Compressor::new(LADDER[0]) {
                Ok(c) => self.trial.insert(c),
                Err(_) => return false,
            },
        };
        let mut out = Vec::with_capacity(sample.len() - sample.len() / 32);
        cctx.compress_to_buffer(sample, &mut out).is_ok()
    }

    /// `prefix` then `data` compressed at `level`, if that takes at most
    /// `data.len() - data.len() / 64` bytes; `None` if not, or if zstd
    /// failed: then raw is the safe answer.
    fn compress(
        &mut self,
        level: i32,
        prefix: &[u8],
        data: &[u8],
        linked: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let cctx = match &mut self.main {
            Some((c, l)) if *l == level => c,
            Some((c, l)) => {
                c.set_compression_level(level).ok()?;
                *l = level;
                c
            }
            None => {
                let c = zstd::bulk::Compressor::new(level).ok()?;
                &mut self.main.insert((c, level)).0
            }
        };
        // Room for at most that: zstd fails when it cannot fit, which is
        // the "does not shrink" answer, found without compressing into a
        // full-size buffer first.
        let room = data.len() - data.len() / 64;
        let mut out = Vec::with_capacity(prefix.len() + room);
        out.extend_from_slice(prefix);
        let mut cur = Cursor::new(out);
        cur.set_position(prefix.len() as u64);
        let n = match linked {
            None => cctx.compress_to_buffer(data, &mut cur).ok()?,
            Some(before) => {
                // The session is reset when `linked` goes, whatever
                // happened (a failed frame, or a panic unwinding).
                let linked = ResetOnDrop(cctx);
                // SAFETY: zstd uses a referenced prefix for the next frame
                // only and forgets it when that frame ends; the frame is
                // begun and ended by `compress_to_buffer` below, within
                // this borrow of `before`, and `linked`'s drop resets the
                // session before the borrow ends, so the context never
                // refers to `before` once this returns or unwinds.
                let before: &'static [u8] = unsafe { std::mem::transmute(before) };
                match linked.0.context_mut().ref_prefix(before) {
                    Ok(_) => linked.0.compress_to_buffer(data, &mut cur).ok()?,
                    Err(_) => return None,
                }
            }
        };
        (n <= room).then(|| cur.into_inner())
    }
}

/// Resets a compressor's session when dropped: the end of a linked
/// chunk's borrow of its prefix (see `Zstd::compress`).
struct ResetOnDrop<'c>(&'c mut zstd::bulk::Compressor<'static>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .context_mut()
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly);
    }
}

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
                counters.compressed_chunks.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                counters
                    .bytes_out
                    .fetch_add((out.len() - OFFSET_LEN) as u64, Ordering::Relaxed);
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
/// ([`ChunkEncoder::forwarding`]).
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

/// Compresses a small file's bytes for `fetch_small` at `level`; `None` if
/// that does not save 1/64 of them.
pub fn compress_small(
    zstd: &mut Zstd,
    data: &[u8],
    level: i32,
    counters: &CompressCounters,
) -> Option<Bytes> {
    compress_small_after(zstd, data, level, counters, None).map(|(z, _)| z)
}

/// [`compress_small`], linked to `before` (the reply's previous file) if
/// given and not empty: the frame, and whether it is linked.
fn compress_small_after(
    zstd: &mut Zstd,
    data: &[u8],
    level: i32,
    counters: &CompressCounters,
    before: Option<&[u8]>,
) -> Option<(Bytes, bool)> {
    let before = before.filter(|b| !b.is_empty());
    let out = if zstd.trial_shrinks(data) {
        zstd.compress(level, &[], data, before)
    } else {
        None
    };
    let Some(out) = out else {
        counters.raw_chunks.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    counters.compressed_chunks.fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_in
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    counters
        .bytes_out
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    Some((Bytes::from(out), before.is_some()))
}

/// Translates the receiver's acknowledgements (cumulative *file* bytes)
/// into wire bytes for the credit window, so that the window, its RTT
/// samples and its queue estimate count what the link carries. Counted in
/// file bytes, a compressed stream's queue estimate was inflated by the
/// ratio and the window held the link to about a third of 100 Mbit at
/// 100 ms (docs/benchmarks.md). Without compression both counts are equal.
#[derive(Debug, Default)]
pub struct WireLedger {
    /// (file end, wire end) of each chunk sent and not yet acknowledged.
    chunks: std::collections::VecDeque<(u64, u64)>,
    file_sent: u64,
    wire_sent: u64,
    file_acked: u64,
    wire_acked: u64,
}

impl WireLedger {
    /// A ledger for a transfer whose first `from` file bytes the receiver
    /// already holds (a resume): its acknowledgements count them.
    pub fn starting_at(from: u64) -> WireLedger {
        WireLedger {
            file_sent: from,
            file_acked: from,
            ..WireLedger::default()
        }
    }

    /// Records a chunk of `file_len` file bytes sent as `wire_len`;
    /// returns `wire_len`.
    pub fn on_send(&mut self, file_len: u64, wire_len: u64) -> u64 {
        self.file_sent += file_len;
        self.wire_sent += wire_len;
        self.chunks.push_back((self.file_sent, self.wire_sent));
        wire_len
    }

    /// An acknowledgement of `file` bytes: the newly acknowledged file
    /// bytes and the cumulative wire bytes they cover (the whole chunks
    /// acknowledged), or an error if more was claimed than sent.
    pub fn on_ack(&mut self, file: u64) -> Result<(u64, u64), super::window::AckBeyondSent> {
        if file > self.file_sent {
            return Err(super::window::AckBeyondSent {
                acked: file,
                sent: self.file_sent,
            });
        }
        if file <= self.file_acked {
            return Ok((0, self.wire_acked));
        }
        while let Some(&(f, w)) = self.chunks.front() {
            if f > file {
                break;
            }
            self.wire_acked = w;
            self.chunks.pop_front();
        }
        let delta = file - self.file_acked;
        self.file_acked = file;
        Ok((delta, self.wire_acked))
    }

    /// File bytes sent.
    pub fn file_sent(&self) -> u64 {
        self.file_sent
    }

    /// File bytes acknowledged.
    pub fn file_acked(&self) -> u64 {
        self.file_acked
    }
}

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

/// Turns an unlinked [`SmallFile::Compressed`] into [`SmallFile::Data`]
/// (at most `meta.size` bytes, itself at most one chunk), or into
/// [`SmallFile::Failed`] if it does not decompress to exactly that. A
/// linked one fails here (it needs the file before it: [`SmallDecoder`]).
/// Anything else passes through.
pub fn open_small(file: SmallFile) -> SmallFile {
    SmallDecoder::default().open(file)
}

/// The receiver's side of one `fetch_small` reply: decodes its files in
/// order, a linked one ([`SmallFile::Compressed`] with `linked`) against
/// the bytes of the file just before it in the reply.
#[derive(Default)]
pub struct SmallDecoder {
    /// The bytes of the reply's previous file, if it carried data that
    /// decoded.
    prev: Option<Bytes>,
}

impl SmallDecoder {
    /// The next file of the reply, compressed or not: [`SmallFile::Data`]
    /// of exactly `meta.size` bytes (at most one chunk) for a compressed
    /// one, or [`SmallFile::Failed`] if it does not decompress to exactly
    /// that. Anything else passes through. Call for every file of the
    /// reply, in order.
    pub fn open(&mut self, file: SmallFile) -> SmallFile {
        let out = match file {
            SmallFile::Compressed {
                meta,
                data,
                digest,
                linked,
            } => Self::decode(meta, &data, digest, linked.then_some(self.prev.as_deref()))
                .unwrap_or_else(SmallFile::Failed),
            other => other,
        };
        self.prev = match &out {
            SmallFile::Data { data, .. } => Some(data.clone()),
            _ => None,
        };
        out
    }

    /// `data` decoded (after `before` if linked: `Some(None)` is a linked
    /// file with no data before it).
    fn decode(
        meta: super::FileMeta,
        data: &[u8],
        digest: [u8; 32],
        before: Option<Option<&[u8]>>,
    ) -> Result<SmallFile, String> {
        let cap = meta.size.min(CHUNK_DATA as u64) as usize;
        let out = match before {
            None => zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress(data, cap))
                .map_err(|e| e.to_string()),
            Some(None) => {
                return Err("a compressed file linked to the one before it came \
                            with no file before it"
                    .into());
            }
            Some(Some(before)) => decode_linked(0, data, cap as u64, before)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string()),
        };
        match out {
            Ok(out) if out.len() as u64 == meta.size => Ok(SmallFile::Data {
                meta,
                data: Bytes::from(out),
                digest,
            }),
            Ok(out) => Err(format!(
                "compressed file decompressed to {} bytes, {} announced",
                out.len(),
                meta.size
            )),
            Err(e) => Err(format!(
                "compressed file is corrupt or exceeds its announced {} bytes: {e}",
                meta.size
            )),
        }
    }
}

/// The sender's side of one `fetch_small` reply: compresses its files in
/// order, each *linked* to the file just before it in the reply (its
/// bytes are the zstd prefix) when that one carried data whose bytes are
/// known here. On the text tree of docs/benchmarks.md (16 MiB of 4-60 KiB
/// source-like files, level 3) that made 5.22 MB where files compressed on
/// their own made 5.59 (-7 %), for about 1.5 times the CPU. A frame stays
/// decodable from one earlier file's bytes, as a linked chunk does, so a
/// relay can still send it on as it came to a child whose reply has the
/// same file before it ([`SmallEncoder::follows`]); a context kept across
/// the whole reply (-22 %) would tie each frame to every file before it.
#[derive(Default)]
pub struct SmallEncoder {
    zstd: Zstd,
    /// The bytes of the reply's previous file, when known here.
    prev: Option<Bytes>,
    /// The reply's previous file carried data, in either form: the
    /// receiver will know its bytes.
    follows: bool,
    /// CPU time spent compressing so far.
    compressing: Duration,
}

impl SmallEncoder {
    /// Whether the reply's previous file carried data (a frame linked to
    /// it can be decoded).
    pub fn follows(&self) -> bool {
        self.follows
    }

    /// CPU time spent compressing so far.
    pub fn compressing(&self) -> Duration {
        self.compressing
    }

    /// The next file of the reply as it goes on the wire: [`SmallFile::Data`]
    /// compressed at `level` if that saves 1/64 of it (counted in
    /// `counters`), anything else as it is. Call for every file of the
    /// reply, in order.
    pub fn encode(
        &mut self,
        one: SmallFile,
        level: Option<i32>,
        counters: &CompressCounters,
    ) -> SmallFile {
        let prev = self.prev.take();
        self.follows = matches!(one, SmallFile::Data { .. } | SmallFile::Compressed { .. });
        let (Some(level), SmallFile::Data { meta, data, digest }) = (level, &one) else {
            if let SmallFile::Data { data, .. } = &one {
                self.prev = Some(data.clone());
            }
            return one;
        };
        self.prev = Some(data.clone());
        let t0 = thread_cpu_ns();
        let z = compress_small_after(&mut self.zstd, data, level, counters, prev.as_deref());
        self.compressing += Duration::from_nanos(thread_cpu_ns().saturating_sub(t0));
        match z {
            Some((z, linked)) => SmallFile::Compressed {
                meta: meta.clone(),
                data: z,
                digest: *digest,
                linked,
            },
            None => one,
        }
    }
}

/// Share of a period the reader may spend compressing before the
/// compressor counts as the bottleneck (saturated).
const SATURATED: f64 = 0.5;

/// Share under which the compressor counts as mostly idle: a better ratio
/// costs nothing, the level goes up a step (if [`UP_BUSY`] allows). Over
/// 100 Mbit level 3 keeps the reader compressing 13-15 % of the time (2
/// MiB of text per ~50 ms of link, 7 ms of CPU), which 0.15 left at 3.
const IDLE: f64 = 0.2;

/// The share of a period the compressor may be predicted to take at the
/// next step up ([`STEP_COST`]) for the level to go up: under
/// [`SATURATED`], so that the step is not undone the period after.
const UP_BUSY: f64 = 0.45;

/// A level is kept while it compresses file bytes this many times faster
/// than the link delivers wire bytes: the reader also reads and hashes on
/// the same thread, and the compressor shares the CPUs with the rest of
/// the push (on the local pipe, with the receiver's decompressing too), so
/// compressing must beat the link clearly: over the local pipe, a
/// compressor measured at 1.8× the link's rate still made a tree push 1.5×
/// slower than without `-z`.
const KEEP_MARGIN: f64 = 2.0;

/// Compression is switched back on when the last level measured compressed
/// this many times faster than the link delivered raw bytes.
const ON_MARGIN: f64 = 3.0;

/// True if compressing at a level that turns `compress_rate` file bytes a
/// second (CPU time) delivers more file bytes a second than sending them
/// raw would over a link that takes `link_rate` wire bytes a second.
///
/// Compressed, a push moves `min(compress_rate, link_rate / ratio)` file
/// bytes a second; raw, `link_rate` at most. As the ratio is below 1, the
/// first wins exactly when the compressor outruns the link, whatever the
/// ratio (a chunk that does not shrink goes raw anyway).
pub fn compressing_pays(compress_rate: f64, link_rate: f64) -> bool {
    compress_rate >= link_rate * KEEP_MARGIN
}

/// The level chooser of one stream (sans-IO: durations and rates are
/// passed in).
///
/// Per period of [`PERIOD_CHUNKS`] chunks it knows the compressor's rate at
/// the level in force (file bytes per second of the reader's CPU time
/// compressing) and, from the credit window's rounds, the link's delivery
/// rate in wire bytes. It keeps a level whenever compressing at it
/// delivers more file bytes a second than raw would at the link's rate
/// ([`compressing_pays`]); it drops it only when the link outruns the
/// compressor (loopback, a fast LAN).
///
/// A delivery rate measured while compressing may be the reader's, not
/// the link's (reading, hashing and compressing share one thread: on the
/// local pipe they kept the link half idle without the compressor being
/// busy over half the time). So when two periods in a row show the pump
/// waiting on the reader or the compressor saturated, the next
/// period sends raw (measuring the link, limited only by what limits a
/// push without `-z`); the level is decided from then on, the link's rate
/// being the best its rounds have shown.
/// (The pump's waits on the reader decided this before; with the window in
/// wire bytes the stream's queue absorbs chunks, the pump waits on the
/// reader even while the link is the bottleneck, and compression went off
/// partway through pushes over a 100 ms link it was saving two thirds of.)
#[derive(Debug, Clone)]
pub struct Tuner {
    /// Index into [`LADDER`]; `None`: off.
    step: Option<usize>,
    /// Raw bytes to send before probing again while off.
    reprobe_after: u64,
    /// Raw bytes sent since switched off.
    off_bytes: u64,
    /// The link's delivery rate (wire bytes/s): the best the window's
    /// rounds have shown on this stream.
    link: Option<f64>,
    /// Off to measure the link: the step to come back to and the
    /// compressor's rate there.
    probe: Option<(usize, f64)>,
    /// A raw period has measured the link.
    raw_seen: bool,
    /// Raw periods of the probe so far.
    probe_periods: u32,
    /// The last period waited on the reader or saturated the compressor.
    suspect: bool,
    /// The compressor's rate at the fastest level it was last measured at
    /// (file bytes per CPU second), for deciding when off.
    last_rate: Option<f64>,
    period: Period,
    batches: Batches,
}

#[derive(Debug, Clone, Default)]
struct Batches {
    count: u32,
    bytes: u64,
    start: Option<Instant>,
    compress: Duration,
    link_wait: Duration,
}

#[derive(Debug, Clone, Default)]
struct Period {
    chunks: u64,
    bytes: u64,
    elapsed: Duration,
    reader_wait: Duration,
    link_wait: Duration,
    compress: Duration,
    link_rate: Option<f64>,
    /// Wire bytes acknowledged during the period.
    delivered: u64,
    min_rtt: Option<Duration>,
}

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            step: Some(INITIAL),
            reprobe_after: FIRST_REPROBE_BYTES,
            off_bytes: 0,
            link: None,
            probe: None,
            raw_seen: false,
            probe_periods: 0,
            suspect: false,
            last_rate: None,
            period: Period::default(),
            batches: Batches::default(),
        }
    }
}

impl Tuner {
    /// The level to compress at now (`None`: do not).
    pub fn level(&self) -> Option<i32> {
        self.step.map(|i| LADDER[i])
    }

    /// The link's delivery rate (wire bytes/s) the tuner goes by, if known.
    pub fn link_rate(&self) -> Option<f64> {
        self.link
    }

    /// The compressor's rate (file bytes per CPU second) last measured.
    pub fn compress_rate(&self) -> Option<f64> {
        self.last_rate
    }

    /// The receiver acknowledged `wire` more bytes; the path's smallest
    /// round trip is `min_rtt`. A period lasting several round trips
    /// delivers at most what the link carries, so its delivery rate counts
    /// as the link's too: on the local pipe the window's rounds, a
    /// millisecond or less, showed a tenth of what it carries.
    pub fn on_delivered(&mut self, wire: u64, min_rtt: Option<Duration>) {
        self.period.delivered += wire;
        if min_rtt.is_some() {
            self.period.min_rtt = min_rtt;
        }
    }

    /// The pump waited `d` for the reader while the window had room.
    pub fn on_reader_wait(&mut self, d: Duration) {
        self.period.reader_wait += d;
    }

    /// The pump waited `d` for an acknowledgement with the window full.
    pub fn on_link_wait(&mut self, d: Duration) {
        self.period.link_wait += d;
    }

    /// One chunk of `len` file bytes was sent; `elapsed` has passed since
    /// the previous one, the reader spent `compress` (CPU time)
    /// compressing meanwhile, and the credit window's best recent round
    /// delivered `link_rate` wire bytes a second (`None`: no round yet).
    /// Returns the new level when it changes.
    pub fn on_chunk(
        &mut self,
        len: u64,
        elapsed: Duration,
        compress: Duration,
        link_rate: Option<f64>,
    ) -> Option<Option<i32>> {
        let p = &mut self.period;
        p.chunks += 1;
        p.bytes += len;
        p.elapsed += elapsed;
        p.compress += compress;
        if link_rate.is_some() {
            p.link_rate = link_rate;
        }
        if self.step.is_none() {
            self.off_bytes += len;
        }
        if p.chunks < PERIOD_CHUNKS {
            return None;
        }
        let mut p = std::mem::take(&mut self.period);
        if let Some(rtt) = p.min_rtt
            && p.elapsed >= rtt * 4
            && p.delivered > 0
        {
            let r = p.delivered as f64 / p.elapsed.as_secs_f64();
            p.link_rate = Some(p.link_rate.map_or(r, |l| l.max(r)));
        }
        let before = self.step;
        let total = p.elapsed.max(Duration::from_micros(1));
        let share = |d: Duration| d.as_secs_f64() / total.as_secs_f64();
        let busy = share(p.compress);
        match self.step {
            Some(i) => {
                // File bytes compressed per CPU second at this level (a
                // given-up file's chunks cost nothing and count as fast).
                let rate = p.bytes as f64 / p.compress.max(Duration::from_nanos(1)).as_secs_f64();
                let saturated = busy > SATURATED;
                if let Some(r) = p.link_rate {
                    // A delivery rate is what the link took at least.
                    self.link = Some(self.link.map_or(r, |l| l.max(r)));
                }
                if i == 0 || self.last_rate.is_none() {
                    self.last_rate = Some(rate);
                }
                // Only once the link has shown a rate (a round of the
                // window ended): before that, over a long link, the pump
                // waits on the reader because the first window is open,
                // not because the reader limits; a raw probe then cost
                // about a second of raw chunks over 100 ms (260 of 920
                // chunks of the text tree, debug log), and happened in
                // most pushes once chunks were linked (slower to
                // compress). On a fast link a round ends within the first
                // period.
                let suspect = (saturated || share(p.reader_wait) > 0.5) && p.link_rate.is_some();
                // Two periods in a row: the first of a stream always waits
                // on the reader, the window being empty.
                let twice = suspect && self.suspect;
                self.suspect = suspect;
                if !self.raw_seen && twice {
                    // The reader (or the compressor) may be what limits
                    // the push: then the rate delivered while compressing
                    // is the reader's (reading, hashing and compressing on
                    // one thread can keep a fast link half idle without
                    // saturating the compressor), and the link's own rate
                    // comes from sending raw, once per stream, before
                    // anything is decided. (Waiting for the link most of
                    // the time, as over a long link, needs no probe.)
                    self.last_rate = Some(rate);
                    self.probe = Some((i, rate));
                    self.step = None;
                    self.off_bytes = 0;
                    return (self.step != before).then(|| self.level());
                }
                match self.link {
                    Some(link) if !compressing_pays(rate, link) => {
                        // The link outruns the compressor at this level.
                        // Saturated, even the fastest level (about 3×
                        // level 1's speed) is unlikely to catch up: off
                        // at once (stepping through the levels, a 130 MiB
                        // tree over the local pipe took 0.40 s with -z,
                        // 0.29 s without).
                        self.last_rate = Some(rate);
                        // Far slower (a third of the link or less): no
                        // faster level will catch up either.
                        let far = rate * 3.0 < link * KEEP_MARGIN;
                        self.step = if saturated || far {
                            None
                        } else {
                            i.checked_sub(1)
                        };
                    }
                    Some(_) if saturated => {
                        // The compressor is the bottleneck but beats the
                        // link: a faster level moves more file bytes (zstd
                        // level 1 is about twice level 3's speed for a
                        // tenth less ratio). Never off: it pays.
                        self.step = Some(i.saturating_sub(1));
                    }
                    _ if i < TOP && busy < IDLE && busy * STEP_COST[i + 1] < UP_BUSY => {
                        // The compressor mostly idle, and it would not be
                        // saturated at the next level: a better ratio for
                        // CPU time the link leaves unused.
                        self.step = Some(i + 1);
                    }
                    _ => {}
                }
                if self.step.is_none() {
                    self.off_bytes = 0;
                }
            }
            None => {
                if let Some(r) = p.link_rate {
                    // Raw: only reading and hashing limit what the link
                    // shows, as they would without -z.
                    self.link = Some(self.link.map_or(r, |l| l.max(r)));
                    self.raw_seen = true;
                }
                let back = match (self.probe, self.last_rate, self.link) {
                    // Two raw periods at least: the first after a level
                    // change runs on a window the compressed chunks sized
                    // (on the local pipe it showed a fifth of the rate).
                    (Some((i, rate)), _, Some(link)) if self.probe_periods >= 1 => {
                        self.probe = None;
                        (rate >= link * ON_MARGIN).then_some(i)
                    }
                    // No round yet to tell the link's rate, but raw
                    // chunks waited for the link most of the time: the
                    // link, not the reader, is the limit; compress.
                    // No rate yet (no round, nor a period of several
                    // round trips): raw a while longer. (Waiting on the
                    // link says nothing here: on the local pipe the window
                    // stays at its floor and the pump waits on it.)
                    (Some(_), _, None) => None,
                    (None, Some(rate), Some(link)) if rate >= link * ON_MARGIN => Some(0),
                    _ => None,
                };
                self.probe_periods = if self.probe.is_some() {
                    self.probe_periods + 1
                } else {
                    0
                };
                if back.is_some() {
                    self.step = back;
                } else if self.probe.is_none()
                    && self.off_bytes >= self.reprobe_after
                    && share(p.link_wait) > 0.75
                {
                    // The link may have slowed (or the data changed): try
                    // the fastest level again, ever more rarely.
                    self.reprobe_after = self.reprobe_after.saturating_mul(2);
                    self.step = Some(0);
                }
            }
        }
        if self.step != before {
            tracing::debug!(
                "tuner: period of {} KiB in {:?}, compressing {:.0} % of it, link {:?} MB/s",
                p.bytes >> 10,
                p.elapsed,
                busy * 100.0,
                self.link.map(|l| (l / 1e5).round() / 10.0)
            );
        }
        (self.step != before).then(|| self.level())
    }

    /// A `fetch_small` reply was made at `now`, after `compress` spent
    /// compressing its files and `link_wait` waiting for the `--bwlimit`
    /// pacer. Over [`PERIOD_BATCHES`] replies, compressing for more than
    /// a quarter of the wall time, and for longer than the pacer made
    /// them wait, means the requester waits for the compressor rather than
    /// for the link (replies are pipelined: on a slow link they queue
    /// behind each other and compressing is a small share): a step down.
    /// Under a twentieth: a step up. Off stays off (only the chunk path
    /// probes). A link whose rate the chunk path measured decides instead
    /// when known: the level stays while its `bytes` (file bytes in the
    /// reply) compress faster than that link delivers
    /// ([`compressing_pays`]). Returns the new level on a change.
    pub fn on_batch(
        &mut self,
        now: Instant,
        compress: Duration,
        link_wait: Duration,
        bytes: u64,
    ) -> Option<Option<i32>> {
        let i = self.step?;
        let b = &mut self.batches;
        let start = *b.start.get_or_insert(now);
        b.count += 1;
        b.compress += compress;
        b.link_wait += link_wait;
        b.bytes += bytes;
        if b.count <= PERIOD_BATCHES {
            return None;
        }
        let b = std::mem::take(&mut self.batches);
        self.batches.start = Some(now);
        let wall = now
            .saturating_duration_since(start)
            .max(Duration::from_micros(1));
        let share = b.compress.as_secs_f64() / wall.as_secs_f64();
        let rate = b.bytes as f64 / b.compress.max(Duration::from_nanos(1)).as_secs_f64();
        let pays = self.link.is_some_and(|l| compressing_pays(rate, l));
        if share > 0.25 && b.compress > b.link_wait && !pays {
            self.step = if share > 0.5 { None } else { i.checked_sub(1) };
            self.off_bytes = 0;
        } else if share < 0.05 && i < SMALL_TOP {
            self.step = Some(i + 1);
        } else {
            return None;
        }
        Some(self.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, data: &[u8]) -> Bytes {
        let mut v = offset.to_be_bytes().to_vec();
        v.extend_from_slice(data);
        Bytes::from(v)
    }

    fn text(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!("2026-11-30 14:{:02} INFO request {i} served\n", i % 60).as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn encoder(level: Option<i32>) -> (ChunkEncoder, Arc<CompressCounters>) {
        let counters = Arc::new(CompressCounters::default());
        (
            ChunkEncoder::new(Shared::new(level, counters.clone())),
            counters,
        )
    }

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

    #[test]
    fn small_files_round_trip_and_corruption_fails() {
        let counters = CompressCounters::default();
        let data = text(10_000);
        let mut zstd = Zstd::default();
        let z = compress_small(&mut zstd, &data, 3, &counters).expect("text shrinks");
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let meta = crate::files::FileMeta {
            size: data.len() as u64,
            ..crate::files::FileMeta::from_fd(&f).expect("fstat")
        };
        let ok = open_small(SmallFile::Compressed {
            meta: meta.clone(),
            data: z.clone(),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(&ok, SmallFile::Data { data: d, .. } if d[..] == data[..]));
        let short = open_small(SmallFile::Compressed {
            meta: crate::files::FileMeta {
                size: 100,
                ..meta.clone()
            },
            data: z.clone(),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(short, SmallFile::Failed(_)), "{short:?}");
        let garbage = open_small(SmallFile::Compressed {
            meta,
            data: Bytes::from_static(b"not zstd at all"),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(garbage, SmallFile::Failed(_)), "{garbage:?}");
        assert!(compress_small(&mut zstd, &random(10_000, 3), 3, &counters).is_none());
    }

    #[test]
    fn small_files_are_linked_to_the_one_before_and_decode_in_reply_order() {
        let counters = CompressCounters::default();
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let meta0 = crate::files::FileMeta::from_fd(&f).expect("fstat");
        let file = |data: &[u8]| SmallFile::Data {
            meta: crate::files::FileMeta {
                size: data.len() as u64,
                ..meta0.clone()
            },
            data: Bytes::copy_from_slice(data),
            digest: [7; 32],
        };
        // b repeats most of a: linked, it costs a fraction of itself.
        let a = text(20_000);
        let mut b = a[..15_000].to_vec();
        b.extend_from_slice(&text(2_000));
        let c = text(9_000);
        let reply = vec![
            file(&a),
            file(&b),
            SmallFile::Failed("gone".into()),
            file(&c),
            file(&random(5_000, 9)),
        ];
        let mut enc = SmallEncoder::default();
        let sent: Vec<SmallFile> = reply
            .iter()
            .map(|f| enc.encode(f.clone(), Some(3), &counters))
            .collect();
        let linked = |f: &SmallFile| match f {
            SmallFile::Compressed { linked, data, .. } => Some((*linked, data.len())),
            _ => None,
        };
        assert_eq!(linked(&sent[0]).map(|l| l.0), Some(false));
        let (b_linked, b_len) = linked(&sent[1]).expect("b compressed");
        assert!(b_linked);
        let alone = compress_small(&mut Zstd::default(), &b, 3, &counters).expect("shrinks");
        assert!(
            b_len * 3 < alone.len(),
            "{b_len} linked, {} alone",
            alone.len()
        );
        // After a failed file nothing is linked; random data goes raw.
        assert_eq!(linked(&sent[3]).map(|l| l.0), Some(false));
        assert!(matches!(sent[4], SmallFile::Data { .. }));
        // In order, every file comes back as it was.
        let mut dec = SmallDecoder::default();
        let got: Vec<SmallFile> = sent.iter().map(|f| dec.open(f.clone())).collect();
        assert_eq!(got, reply);
        // b without a before it (a fresh decoder, or a failed file before
        // it) is a clear error, not wrong bytes.
        let orphan = SmallDecoder::default().open(sent[1].clone());
        assert!(
            matches!(&orphan, SmallFile::Failed(w) if w.contains("no file before it")),
            "{orphan:?}"
        );
        let mut dec = SmallDecoder::default();
        dec.open(SmallFile::Failed("gone".into()));
        assert!(matches!(dec.open(sent[1].clone()), SmallFile::Failed(_)));
        // b after another file than a: never b's bytes (if zstd cannot
        // tell, the digest check of the receiver does).
        let mut dec = SmallDecoder::default();
        dec.open(sent[3].clone());
        assert_ne!(dec.open(sent[1].clone()), reply[1]);
    }

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

    const MS: Duration = Duration::from_millis(1);

    /// Runs one period where each chunk took `per`, the reader waited, the
    /// link waited and compressing took the given shares of it, and the
    /// window's rounds delivered `link` wire bytes a second.
    fn period(
        t: &mut Tuner,
        per: Duration,
        (reader, wait, comp): (f64, f64, f64),
        link: Option<f64>,
    ) -> Option<i32> {
        for _ in 0..PERIOD_CHUNKS {
            t.on_reader_wait(per.mul_f64(reader));
            t.on_link_wait(per.mul_f64(wait));
            t.on_chunk(CHUNK_DATA as u64, per, per.mul_f64(comp), link);
        }
        t.level()
    }

    /// 100 Mbit in bytes a second.
    const MBIT_100: f64 = 12.5e6;

    #[test]
    fn compressing_pays_while_the_compressor_outruns_the_link() {
        // zstd -3 on this machine's logs: ~50 MB/s of CPU; 100 Mbit: keep.
        assert!(compressing_pays(50e6, MBIT_100));
        // Loopback delivers ~1 GB/s: even -5 at 600 MB/s loses.
        assert!(!compressing_pays(600e6, 1e9));
        // Within the margin: the reader also reads and hashes, so no.
        assert!(!compressing_pays(MBIT_100 * 1.1, MBIT_100));
    }

    #[test]
    fn a_fast_link_switches_compression_off() {
        let mut t = Tuner::default();
        assert_eq!(t.level(), Some(1));
        // Loopback: the reader compresses most of the time (128 KiB in
        // 0.8 ms: 164 MB/s); the rounds show what it delivered (50 MB/s of
        // wire), which is the reader's rate, not the link's: a faster
        // level (saturated), then raw, to measure.
        assert_eq!(period(&mut t, MS, (0.9, 0.0, 0.8), Some(50e6)), Some(-1));
        assert_eq!(period(&mut t, MS, (0.9, 0.0, 0.8), Some(50e6)), None);
        // Raw, the link delivers 1 GB/s: far faster than level 1, off it
        // stays, also while the link is the bottleneck for a while.
        assert_eq!(period(&mut t, MS / 4, (0.5, 0.0, 0.0), Some(1e9)), None);
        for _ in 0..16 {
            assert_eq!(period(&mut t, MS / 4, (0.0, 0.9, 0.0), Some(1e9)), None);
        }
        // The pump waits on the reader, the compressor not saturated (128
        // KiB in 0.2 ms: 655 MB/s; the reader also reads and hashes): the
        // next period measures the link raw: 200 MB/s, far slower than
        // the compressor, so back on.
        let mut t = Tuner::default();
        assert_eq!(period(&mut t, MS, (0.6, 0.0, 0.2), Some(50e6)), Some(1));
        assert_eq!(period(&mut t, MS, (0.6, 0.0, 0.2), Some(50e6)), None);
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.0), Some(200e6)), None);
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.0), Some(200e6)), Some(1));
        // The link shows 600 MB/s: too fast for this level, which is not
        // saturated: a step down at a time.
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.2), Some(600e6)), Some(-1));
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.2), Some(600e6)), Some(-5));
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.2), Some(600e6)), None);
        // A link far faster than the compressor: off at once.
        let mut t = Tuner::default();
        assert_eq!(period(&mut t, MS, (0.0, 0.5, 0.2), Some(5e9)), None);
    }

    #[test]
    fn a_long_link_keeps_compressing_even_with_the_compressor_busy() {
        // 100 Mbit, 100 ms: a 128 KiB chunk compressed 3.4:1 is 3 ms on
        // the wire; compressing it at level 3 takes 2.6 ms of CPU (50
        // MB/s): the compressor is busy most of the time, and the pump
        // waits on the reader (the stream's queue absorbs the chunks).
        let mut t = Tuner::default();
        // No round has ended (100 ms) in the first two periods: nothing to
        // judge the reader by, so no raw probe (one cost about a second of
        // raw chunks over 100 ms).
        assert_eq!(period(&mut t, 3 * MS, (0.6, 0.1, 0.87), None), Some(1));
        assert_eq!(period(&mut t, 3 * MS, (0.6, 0.1, 0.87), None), Some(1));
        // The rounds show 100 Mbit, the compressor saturated but far
        // faster: a faster level; still waiting on the reader next period:
        // raw for two periods, measuring the link, then back on.
        let busy = |t: &mut Tuner| period(t, 3 * MS, (0.6, 0.1, 0.87), Some(MBIT_100));
        assert_eq!(busy(&mut t), Some(-1));
        assert_eq!(busy(&mut t), None);
        let raw = |t: &mut Tuner| period(t, 10 * MS, (0.0, 0.9, 0.0), Some(MBIT_100));
        assert_eq!(raw(&mut t), None);
        assert_eq!(raw(&mut t), Some(-1));
        // With no round ended, a period of several round trips tells the
        // rate.
        let mut u = Tuner::default();
        period(&mut u, 3 * MS, (0.6, 0.1, 0.87), None);
        u.on_delivered(1 << 20, Some(20 * MS));
        assert!(period(&mut u, 10 * MS, (0.0, 0.9, 0.1), None).is_some());
        assert!(u.link_rate().is_some_and(|r| r < MBIT_100), "{u:?}");
        // Busy: a faster level (more file bytes a second), never off.
        let mut seen = vec![];
        for _ in 0..10 {
            seen.push(period(&mut t, 3 * MS, (0.6, 0.1, 0.87), Some(2e6)));
        }
        assert_eq!(seen[0], Some(-5));
        assert!(seen.iter().all(Option::is_some), "{seen:?}");
        // Waiting for the link from the start, the compressor mostly idle:
        // no raw probe, up to level 5, where it stays.
        let mut t = Tuner::default();
        for _ in 0..10 {
            assert!(period(&mut t, 10 * MS, (0.0, 0.9, 0.1), Some(MBIT_100)).is_some());
        }
        assert_eq!(t.level(), Some(5));
        // Compressing 19.7 % of the time at level 3: level 5 (2.35 times
        // the CPU) would nearly saturate it: it stays at 3.
        let mut t = Tuner::default();
        for _ in 0..10 {
            period(&mut t, 10 * MS, (0.0, 0.7, 0.197), Some(MBIT_100));
        }
        assert_eq!(t.level(), Some(3));
        assert_eq!(t.link_rate(), Some(MBIT_100));
    }

    #[test]
    fn the_level_follows_the_compressor_rate_against_the_link_rate() {
        // Same compressor (128 KiB per 1 ms of CPU: 131 MB/s), not
        // saturated (a chunk every 4 ms): the link's rate decides.
        let chosen = |link: f64| {
            let mut t = Tuner::default();
            for _ in 0..6 {
                period(&mut t, 4 * MS, (0.0, 0.7, 0.25), Some(link));
            }
            t.level()
        };
        // 100 Mbit: compressing pays, the level stays at 1 (0.25 of the
        // time compressing is not idle enough to climb).
        assert_eq!(chosen(MBIT_100), Some(1));
        // 1 Gbit (125 MB/s): the link outruns the compressor: off.
        assert_eq!(chosen(125e6), None);
    }

    #[test]
    fn off_is_probed_again_ever_more_rarely_when_the_link_is_the_bottleneck() {
        let mut t = Tuner::default();
        // A fast link switches it off (known rate, saturated compressor).
        period(&mut t, MS, (0.9, 0.0, 0.9), Some(1e9));
        assert_eq!(t.level(), None);
        // 16 chunks a period = 2 MiB: 64 MiB are 32 periods.
        let periods_until_on = |t: &mut Tuner| {
            (1..1000)
                .find(|_| period(t, MS, (0.0, 0.9, 0.0), Some(1e9)).is_some())
                .unwrap_or(0)
        };
        let first = periods_until_on(&mut t);
        assert_eq!(t.level(), Some(LADDER[0]));
        // The probe finds the compressor too slow again: off.
        period(&mut t, MS, (0.9, 0.0, 0.9), Some(1e9));
        assert_eq!(t.level(), None);
        let second = periods_until_on(&mut t);
        assert!(second >= 2 * first - 1, "{first} then {second}");
    }

    #[test]
    fn small_file_replies_step_down_when_compressing_dominates() {
        let t0 = Instant::now();
        let mut t = Tuner::default();
        // Loopback: replies every 2 ms, each compressed for 0.7 ms.
        let mut now = t0;
        let mut levels = vec![];
        for _ in 0..3 * (PERIOD_BATCHES + 1) {
            now += 2 * MS;
            if let Some(l) = t.on_batch(now, MS * 7 / 10, Duration::ZERO, CHUNK_DATA as u64) {
                levels.push(l);
            }
        }
        assert_eq!(levels, vec![Some(-1), Some(-5), None]);
        // Off stays off on this path.
        assert_eq!(
            t.on_batch(now + MS, Duration::ZERO, Duration::ZERO, 0),
            None
        );
        assert_eq!(t.level(), None);
        // Compressing nearly all the time: off at once.
        let mut t = Tuner::default();
        let mut now = t0;
        for _ in 0..=PERIOD_BATCHES {
            now += 2 * MS;
            t.on_batch(now, MS * 3 / 2, Duration::ZERO, CHUNK_DATA as u64);
        }
        assert_eq!(t.level(), None);
        // The same, but paced for longer than it compressed: the limit is
        // the bottleneck, the level stays.
        let mut t = Tuner::default();
        let mut now = t0;
        for _ in 0..=PERIOD_BATCHES {
            now += 4 * MS;
            t.on_batch(now, MS * 3 / 2, 2 * MS, CHUNK_DATA as u64);
        }
        assert_eq!(t.level(), Some(1));

        // A slow link: replies every 80 ms, 2 ms of compressing: up to 3.
        let mut t = Tuner::default();
        let mut now = t0;
        for _ in 0..2 * (PERIOD_BATCHES + 1) {
            now += 80 * MS;
            t.on_batch(now, 2 * MS, Duration::ZERO, CHUNK_DATA as u64);
        }
        assert_eq!(t.level(), Some(3));
    }

    #[test]
    fn the_ledger_translates_file_acknowledgements_to_wire_bytes() {
        let mut l = WireLedger::default();
        assert_eq!(l.on_send(100, 30), 30);
        l.on_send(100, 100);
        l.on_send(50, 10);
        assert_eq!(l.file_sent(), 250);
        assert_eq!(l.on_ack(100), Ok((100, 30)));
        // Stale: nothing new.
        assert_eq!(l.on_ack(60), Ok((0, 30)));
        // Inside a chunk: only whole chunks count on the wire.
        assert_eq!(l.on_ack(150), Ok((50, 30)));
        assert_eq!(l.on_ack(250), Ok((100, 140)));
        assert_eq!(l.file_acked(), 250);
        assert!(l.on_ack(251).is_err());
    }
}
