//! The small-file path's share of the [`Tuner`]: `fetch_small` replies
//! judged [`PERIOD_BATCHES`] at a time.

use std::time::{Duration, Instant};

use super::{PERIOD_BATCHES, SMALL_TOP, Tuner, compressing_pays};

/// The replies of the small-file path's current period.
#[derive(Debug, Clone, Default)]
pub(super) struct Batches {
    count: u32,
    bytes: u64,
    start: Option<Instant>,
    compress: Duration,
    link_wait: Duration,
}

impl Tuner {
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
        let pays = self
            .link
            .or(self.ceiling)
            .is_some_and(|l| compressing_pays(rate, l));
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
