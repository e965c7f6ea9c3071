//! `--bwlimit`: the sender paces data frames so the average rate stays at
//! the limit, per target and (with `--bwlimit-total`) over the whole push.
//!
//! [`Pacer`] is a virtual clock (GCRA, as in token buckets without the
//! tokens): each frame of `len` bytes takes `len / rate` seconds of the
//! link's schedule, starting when the previous one's slot ends, and is
//! sent at the start of its slot. A sender that fell behind (it was
//! waiting for acknowledgements, or a disk) may catch up by at most
//! [`CATCH_UP`], so no idle period turns into a burst: over any window
//! of `T` seconds at most `rate × (T + CATCH_UP) + one frame` bytes leave.
//!
//! The window and stripes are untouched: pacing only delays the moment a
//! chunk is handed to the router, after the window allowed it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wire::ContextId;

/// How far behind its schedule a sender may catch up at once. 25 ms: at
/// most 1.25 % over the limit in a 2 s window, and enough to absorb a
/// scheduling hiccup on a busy machine without losing rate.
pub const CATCH_UP: Duration = Duration::from_millis(25);

/// Smallest chunk the pump reads when paced; below it, frames cost more
/// than they quantise.
pub const MIN_CHUNK: usize = 16 * 1024;

/// Time, per chunk, that chunks are sized to when paced: 1/32 s, so the
/// granularity of the rate over a 2 s window is under 1 %.
const CHUNK_TIME_DIV: u64 = 32;

/// The limits of a push, in bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Per target (each requesting context).
    pub per_target: Option<u64>,
    /// Over all targets together.
    pub total: Option<u64>,
}

impl Limits {
    /// The lowest limit in force, if any.
    pub fn lowest(&self) -> Option<u64> {
        match (self.per_target, self.total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The virtual clock of one limit.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    /// When the schedule is free again (the theoretical arrival time).
    tat: Option<Instant>,
}

impl Pacer {
    /// A pacer for `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            rate: rate.max(1) as f64,
            tat: None,
        }
    }

    /// Takes a slot for `len` bytes asked for at `now`; returns how long to
    /// wait before sending them.
    pub fn reserve(&mut self, now: Instant, len: u64) -> Duration {
        let floor = now.checked_sub(CATCH_UP).unwrap_or(now);
        let start = self.tat.map_or(now, |t| t.max(floor));
        self.tat = Some(start + Duration::from_secs_f64(len as f64 / self.rate));
        start.saturating_duration_since(now)
    }
}

/// The pacers of one transfer: its target's, then the whole push's.
#[derive(Clone, Default)]
pub struct Pacing {
    pacers: Vec<Arc<Mutex<Pacer>>>,
    chunk: Option<usize>,
    ceiling: Option<u64>,
}

impl Pacing {
    /// True if nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.pacers.is_empty()
    }

    /// The most wire bytes a second this transfer can go at: the lowest
    /// limit in force (`None`: unlimited). What the link is measured to
    /// carry above it, it never will for this transfer.
    pub fn ceiling(&self) -> Option<u64> {
        self.ceiling
    }

    /// File bytes per chunk for a transfer paced like this: 1/32 s of the
    /// lowest limit, between [`MIN_CHUNK`] and `max`.
    pub fn chunk_len(&self, max: usize) -> usize {
        self.chunk.map_or(max, |c| c.clamp(MIN_CHUNK.min(max), max))
    }

    /// Waits until `len` bytes may be sent; returns how long that was.
    pub async fn wait(&self, len: u64) -> Duration {
        let mut waited = Duration::ZERO;
        for p in &self.pacers {
            let d = match p.lock() {
                Ok(mut p) => p.reserve(Instant::now(), len),
                Err(poisoned) => poisoned.into_inner().reserve(Instant::now(), len),
            };
            if !d.is_zero() {
                tokio::time::sleep(d).await;
                waited += d;
            }
        }
        waited
    }
}

/// The pacers of a FileService: one per target, one in all.
#[derive(Default)]
pub struct Pacers {
    limits: Limits,
    total: Option<Arc<Mutex<Pacer>>>,
    per_target: Mutex<HashMap<ContextId, Arc<Mutex<Pacer>>>>,
}

impl Pacers {
    /// Pacers for `limits`.
    pub fn new(limits: Limits) -> Pacers {
        Pacers {
            limits,
            total: limits.total.map(|r| Arc::new(Mutex::new(Pacer::new(r)))),
            per_target: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The pacing of data sent to `target`.
    pub fn for_target(&self, target: ContextId) -> Pacing {
        let mut pacers = Vec::new();
        if let Some(rate) = self.limits.per_target {
            let mut map = self.per_target.lock().unwrap_or_else(|p| p.into_inner());
            pacers.push(
                map.entry(target)
                    .or_insert_with(|| Arc::new(Mutex::new(Pacer::new(rate))))
                    .clone(),
            );
        }
        pacers.extend(self.total.clone());
        Pacing {
            pacers,
            ceiling: self.limits.lowest(),
            chunk: self
                .limits
                .lowest()
                .map(|r| (r / CHUNK_TIME_DIV).min(usize::MAX as u64) as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated sender: asks for `chunk` bytes as soon as allowed (plus
    /// `stall(i)` of its own delay before chunk `i`) for `secs` seconds;
    /// returns (send time since start, bytes).
    fn simulate(
        rate: u64,
        chunk: u64,
        secs: f64,
        mut stall: impl FnMut(u64) -> Duration,
    ) -> Vec<(f64, u64)> {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = Pacer::new(rate);
        let mut sent = Vec::new();
        let mut i = 0;
        while (now - t0).as_secs_f64() < secs {
            now += stall(i);
            now += p.reserve(now, chunk);
            sent.push(((now - t0).as_secs_f64(), chunk));
            i += 1;
        }
        sent
    }

    /// The lowest and highest average rate over every 2 s window starting
    /// after the first second, as a fraction of `rate`.
    fn window_extremes(sent: &[(f64, u64)], rate: u64, secs: f64) -> (f64, f64) {
        let (mut lo, mut hi) = (f64::MAX, 0f64);
        let mut start = 1.0;
        while start + 2.0 <= secs {
            let bytes: u64 = sent
                .iter()
                .filter(|(t, _)| *t >= start && *t < start + 2.0)
                .map(|(_, b)| b)
                .sum();
            let r = bytes as f64 / 2.0 / rate as f64;
            lo = lo.min(r);
            hi = hi.max(r);
            start += 0.01;
        }
        (lo, hi)
    }

    #[test]
    fn a_greedy_sender_holds_the_rate_within_5_percent() {
        for (rate, chunk) in [
            (10 << 20, 128 * 1024),
            (5 << 20, 128 * 1024),
            (500 << 10, MIN_CHUNK as u64),
        ] {
            let sent = simulate(rate, chunk, 12.0, |_| Duration::ZERO);
            let (lo, hi) = window_extremes(&sent, rate, 12.0);
            assert!(lo >= 0.95 && hi <= 1.05, "{rate}: {lo:.3}..{hi:.3}");
        }
    }

    #[test]
    fn an_idle_sender_does_not_burst_afterwards() {
        let rate = 1 << 20;
        // Stalls 3 s before chunk 40: afterwards at most CATCH_UP extra.
        let sent = simulate(rate, 32 * 1024, 12.0, |i| {
            if i == 40 {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            }
        });
        let (_, hi) = window_extremes(&sent, rate, 12.0);
        assert!(hi <= 1.05, "{hi:.3}");
    }

    #[test]
    fn small_hiccups_are_caught_up() {
        let rate = 4 << 20;
        // 10 ms late every 10th chunk: the rate is kept anyway.
        let sent = simulate(rate, 64 * 1024, 12.0, |i| {
            if i % 10 == 0 {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            }
        });
        let (lo, hi) = window_extremes(&sent, rate, 12.0);
        assert!(lo >= 0.95 && hi <= 1.05, "{lo:.3}..{hi:.3}");
    }

    #[test]
    fn two_senders_share_a_total() {
        // Two pumps taking turns on one pacer: together at the rate.
        let rate = 8 << 20;
        let t0 = Instant::now();
        let mut p = Pacer::new(rate);
        let mut clocks = [t0, t0];
        let mut sent = Vec::new();
        for i in 0..2000 {
            let k = i % 2;
            let now = clocks[k];
            let at = now + p.reserve(now, 128 * 1024);
            clocks[k] = at;
            sent.push(((at - t0).as_secs_f64(), 128 * 1024));
        }
        let end = sent.last().map_or(0.0, |s| s.0);
        let (lo, hi) = window_extremes(&sent, rate, end);
        assert!(lo >= 0.95 && hi <= 1.05, "{lo:.3}..{hi:.3}");
    }

    #[test]
    fn chunks_shrink_with_the_rate() {
        let p = Pacers::new(Limits {
            per_target: Some(500 << 10),
            total: None,
        });
        assert_eq!(p.for_target(1).chunk_len(128 << 10), MIN_CHUNK);
        let p = Pacers::new(Limits {
            per_target: Some(100 << 20),
            total: Some(2 << 20),
        });
        assert_eq!(p.for_target(1).chunk_len(128 << 10), 64 << 10);
        assert!(Pacers::default().for_target(1).is_unlimited());
        assert_eq!(Pacers::default().for_target(1).chunk_len(1000), 1000);
    }
}
