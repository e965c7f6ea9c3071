//! [`Tuner`]: the level chooser of one stream, sans-IO (durations and
//! rates are passed in), and the measured constants it goes by. Apart:
//! the policy, tested in simulated periods, with no zstd in it. The
//! chunk path's periods are judged here, the small-file path's
//! `fetch_small` replies in `batches`.

use std::time::Duration;

mod batches;

use batches::Batches;

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

/// Bytes sent raw after compression was switched off before the first
/// probe; doubles after each probe that switched it off again.
const FIRST_REPROBE_BYTES: u64 = 64 << 20;

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
    /// The most the link may carry for this stream's transfers (wire
    /// bytes/s): `--bwlimit`. A faster measured rate (a round's burst)
    /// is capped to it.
    ceiling: Option<f64>,
    /// The compressor's rate at the fastest level it was last measured at
    /// (file bytes per CPU second), for deciding when off.
    last_rate: Option<f64>,
    period: Period,
    batches: Batches,
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

impl Period {
    /// `d`'s share of the period's wall time.
    fn share(&self, d: Duration) -> f64 {
        let total = self.elapsed.max(Duration::from_micros(1));
        d.as_secs_f64() / total.as_secs_f64()
    }
}

/// How a period at a level was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    /// Off for a raw period or two, to measure the link.
    Probing,
    /// The level kept, moved, or switched off.
    Decided,
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
            ceiling: None,
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

    /// The transfer being sent is paced to at most `ceiling` wire bytes a
    /// second (`--bwlimit`; `None`: unlimited). The link counts as no
    /// faster than that, and a compressor that outruns it well needs no
    /// raw probe to be kept: with `--bwlimit 2M` the probe sent 2.5 MiB of
    /// text raw that compressed 9:1, a second lost at the limit, and a
    /// relay then compressed those chunks again for each child.
    pub fn set_link_ceiling(&mut self, ceiling: Option<u64>) {
        self.ceiling = ceiling.map(|c| c as f64);
    }

    /// `rate` (wire bytes/s) capped to the ceiling.
    fn capped(&self, rate: f64) -> f64 {
        self.ceiling.map_or(rate, |c| rate.min(c))
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
        let p = self.count_chunk(len, elapsed, compress, link_rate)?;
        let before = self.step;
        let busy = p.share(p.compress);
        match self.step {
            Some(i) => {
                if self.judge_compressing(i, &p, busy) == Judged::Probing {
                    return (self.step != before).then(|| self.level());
                }
            }
            None => self.judge_off(&p),
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

    /// Adds a chunk to the period; the period, once it has
    /// [`PERIOD_CHUNKS`] chunks (and a new one begins).
    fn count_chunk(
        &mut self,
        len: u64,
        elapsed: Duration,
        compress: Duration,
        link_rate: Option<f64>,
    ) -> Option<Period> {
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
        p.link_rate = p.link_rate.map(|r| self.capped(r));
        Some(p)
    }

    /// A period ended compressing at step `i`, the compressor `busy` that
    /// share of it: keeps the level, moves it, or starts the raw probe.
    fn judge_compressing(&mut self, i: usize, p: &Period, busy: f64) -> Judged {
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
        let suspect = (saturated || p.share(p.reader_wait) > 0.5) && p.link_rate.is_some();
        // Two periods in a row: the first of a stream always waits
        // on the reader, the window being empty.
        let twice = suspect && self.suspect;
        self.suspect = suspect;
        // Under a `--bwlimit` the compressor outruns by far, raw could
        // show nothing that would switch it off.
        let outruns_ceiling = self.ceiling.is_some_and(|c| rate >= c * ON_MARGIN);
        if !self.raw_seen && twice && !outruns_ceiling {
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
            return Judged::Probing;
        }
        self.step = self.next_step(i, rate, saturated, busy);
        if self.step.is_none() {
            self.off_bytes = 0;
        }
        Judged::Decided
    }

    /// The step after a period at step `i` that compressed at `rate` file
    /// bytes per CPU second, `busy` that share of the period.
    fn next_step(&mut self, i: usize, rate: f64, saturated: bool, busy: f64) -> Option<usize> {
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
                if saturated || far {
                    None
                } else {
                    i.checked_sub(1)
                }
            }
            Some(_) if saturated => {
                // The compressor is the bottleneck but beats the
                // link: a faster level moves more file bytes (zstd
                // level 1 is about twice level 3's speed for a
                // tenth less ratio). Never off: it pays.
                Some(i.saturating_sub(1))
            }
            _ if i < TOP && busy < IDLE && busy * STEP_COST[i + 1] < UP_BUSY => {
                // The compressor mostly idle, and it would not be
                // saturated at the next level: a better ratio for
                // CPU time the link leaves unused.
                Some(i + 1)
            }
            _ => Some(i),
        }
    }

    /// A period ended sending raw: the link's rate is measured; back on
    /// after a probe that shows the compressor fast enough, or once the
    /// link has long been the bottleneck.
    fn judge_off(&mut self, p: &Period) {
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
            && p.share(p.link_wait) > 0.75
        {
            // The link may have slowed (or the data changed): try
            // the fastest level again, ever more rarely.
            self.reprobe_after = self.reprobe_after.saturating_mul(2);
            self.step = Some(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::CHUNK_DATA;
    use std::time::Instant;

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
    fn under_a_bwlimit_the_link_counts_as_no_faster_than_the_limit() {
        // `--bwlimit 2M` over loopback, as at a relay whose reader waits
        // for its spool: the pump waits on the reader, the window's short
        // rounds show bursts of 9 MB/s, the compressor does 53 MB/s. Left
        // alone the tuner sends two periods raw to measure the link.
        let two = |t: &mut Tuner| {
            for _ in 0..2 {
                period(t, 30 * MS, (0.6, 0.0, 0.08), Some(9e6));
            }
            t.level()
        };
        assert_eq!(two(&mut Tuner::default()), None);
        // Capped at 2 MB/s, raw could show nothing that would switch it
        // off: no probe, and the level stays on.
        let mut t = Tuner::default();
        t.set_link_ceiling(Some(2_000_000));
        assert!(two(&mut t).is_some(), "{t:?}");
        assert_eq!(t.link_rate(), Some(2e6));
        // A compressor slower than the limit still goes off (the ceiling
        // does not make a slow one pay): 128 KiB per 0.2 s of CPU is
        // 0.65 MB/s against the 2 MB/s a raw link can carry.
        let mut t = Tuner::default();
        t.set_link_ceiling(Some(2_000_000));
        for _ in 0..3 {
            period(&mut t, 200 * MS, (0.0, 0.0, 0.9), Some(9e6));
        }
        assert_eq!(t.level(), None, "{t:?}");
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
}
