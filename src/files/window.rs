//! The credit window: how many bytes may be sent and not yet acknowledged,
//! and how big that should be.
//!
//! Acknowledgements are cumulative byte counts from the final receiver, so
//! the window bounds the data buffered at every hop in between, not just on
//! the first stream. An acknowledgement for more than was sent is a protocol
//! error (it would let a peer inflate the window without limit); one for
//! less than already acknowledged is stale and ignored.
//!
//! # Sizing
//!
//! [`Sizing::Fixed`] is the seed's rule: a constant window (Mitogen: 1 MiB),
//! which caps a transfer at window/RTT — about 10 MiB/s at 100 ms.
//!
//! [`Sizing::Auto`] learns the path's bandwidth × delay product from the
//! acknowledgements, in rounds of one round trip, with a delay-based rule
//! after TCP Vegas:
//!
//! * every acknowledgement gives an RTT sample (send time of the newest
//!   chunk it covers to now); `min_rtt` is the smallest seen;
//! * at the end of each round, the bytes *queued* along the path are
//!   estimated as `bytes_delivered_in_the_round × (latest_rtt − min_rtt) /
//!   latest_rtt` (Vegas' difference; unlike `rate × (rtt − min_rtt)` it
//!   stays small for a round that lasted microseconds, as the first ones
//!   do when their acknowledgements come in a batch);
//! * slow start: each acknowledgement whose round trip is within an eighth
//!   of `min_rtt` grows the window by the bytes it acknowledges (doubling
//!   it each round trip); a round with a queue (≥ [`QUEUE_LOW`] and an
//!   eighth of the window) ends slow start unless the delivery rate still
//!   grew by a quarter in it (fresh TCP connections under a new stripe
//!   show a rising delay while they open up, which is not a full path);
//! * after slow start, little queue (< [`QUEUE_LOW`] or an eighth of the
//!   window): the window was the bottleneck — grow by a quarter per round;
//! * much queue (> [`QUEUE_HIGH`] and a quarter of the window): the path
//!   is the bottleneck and the extra bytes only sit in buffers (delaying
//!   control calls behind them) — shrink by half the estimated queue;
//! * and never past twice the bandwidth × delay product (best delivery
//!   rate of the last ten rounds × `min_rtt`), as in BBR: on a fast local
//!   path the queue estimate is within the noise of the RTT samples, and
//!   without this the window (and so the receiver's buffering) crept up to
//!   the cap for nothing;
//! * never below the floor (the fixed window, so auto is never slower
//!   than the seed) nor above the memory cap.
//!
//! The estimate lives per stream ([`PathEstimate`]), so the next transfer
//! on the same stream starts at the learnt size. When the path gains
//! capacity — a stripe attaches — [`Window::on_more_paths`] goes back to
//! slow start, so the window doubles to the new bandwidth × delay instead
//! of creeping up by a quarter a round.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::stream::MAX_WINDOW;

/// Estimated queue below which the window grows.
pub const QUEUE_LOW: u64 = 256 * 1024;
/// Estimated queue above which the window shrinks.
pub const QUEUE_HIGH: u64 = 1024 * 1024;
/// The delivery rate "still grows" in slow start when a round's is at
/// least this much above the best before it.
const RATE_GROWTH: f64 = 1.25;

/// How the window is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Always this many bytes.
    Fixed(u64),
    /// Learnt from acknowledgements, between `floor` and `cap` bytes.
    Auto {
        /// Smallest window (and the starting one).
        floor: u64,
        /// Largest window: the memory bound per stream.
        cap: u64,
    },
}

impl Sizing {
    /// This sizing with every bound at most [`MAX_WINDOW`] (and at least
    /// one byte): the most any hop buffers for a stream
    /// ([`crate::stream::BULK_CAP`]) is sized from it.
    pub fn bounded(self) -> Sizing {
        match self {
            Sizing::Fixed(w) => Sizing::Fixed(w.clamp(1, MAX_WINDOW)),
            Sizing::Auto { floor, cap } => {
                let cap = cap.clamp(1, MAX_WINDOW);
                Sizing::Auto {
                    floor: floor.clamp(1, cap),
                    cap,
                }
            }
        }
    }

    fn initial(self) -> u64 {
        match self {
            Sizing::Fixed(w) => w.max(1),
            Sizing::Auto { floor, .. } => floor.max(1),
        }
    }
}

/// What one stream's path has shown so far; carried from transfer to transfer.
#[derive(Debug, Clone)]
pub struct PathEstimate {
    /// The current window.
    pub window: u64,
    /// Smallest RTT sample seen.
    pub min_rtt: Option<Duration>,
    /// Still doubling each round.
    pub slow_start: bool,
}

impl PathEstimate {
    /// A fresh estimate for `sizing`.
    pub fn new(sizing: Sizing) -> PathEstimate {
        PathEstimate {
            window: sizing.initial(),
            min_rtt: None,
            slow_start: true,
        }
    }
}

/// An acknowledgement that cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("acknowledgement of {acked} bytes, but only {sent} were sent")]
pub struct AckBeyondSent {
    /// What the peer claimed.
    pub acked: u64,
    /// What was sent.
    pub sent: u64,
}

/// Sent/acknowledged accounting for one transfer, and the sizing state.
#[derive(Debug, Clone)]
pub struct Window {
    sizing: Sizing,
    est: PathEstimate,
    sent: u64,
    acked: u64,
    peak: u64,
    /// (end offset, send time) of chunks not yet acknowledged.
    in_flight: VecDeque<(u64, Instant)>,
    round_start: Instant,
    round_acked_at_start: u64,
    round_end_offset: u64,
    latest_rtt: Option<Duration>,
    /// Delivery rates (bytes/s) of the last [`RATE_ROUNDS`] rounds.
    rates: VecDeque<f64>,
    /// The window when the current round began.
    round_window: u64,
    /// Rounds, after the path gained capacity, whose queue does not end
    /// slow start: they measure data sent on the old path.
    grace: u8,
    /// The most a slow start resumed by [`Window::on_more_paths`] may
    /// grow the window to.
    ss_ceiling: Option<u64>,
}

/// Rounds over which the delivery rate's maximum is taken.
const RATE_ROUNDS: usize = 10;

/// Shortest time a round counts as lasting when its delivery rate is
/// measured for the bandwidth × delay cap (about the scheduling noise of a
/// busy machine).
const RATE_MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Window {
    /// A fixed window of `limit` bytes (the seed's behaviour).
    pub fn new(limit: u64) -> Window {
        Window::with_estimate(
            Sizing::Fixed(limit),
            PathEstimate::new(Sizing::Fixed(limit)),
        )
    }

    /// A window continuing from a stream's estimate.
    pub fn with_estimate(sizing: Sizing, mut est: PathEstimate) -> Window {
        if let Sizing::Fixed(w) = sizing {
            est.window = w.max(1);
        }
        // A path never measured: its first round's queue does not end slow
        // start. Its round trips are those of a TCP connection still
        // opening up (idle since its handshake: measured 400–670 ms on a
        // 100 ms path for the first window), and ending slow start on them
        // left the window creeping up by a quarter a round.
        let grace = u8::from(est.min_rtt.is_none() && est.slow_start);
        Window {
            sizing,
            est,
            sent: 0,
            acked: 0,
            peak: 0,
            in_flight: VecDeque::new(),
            round_start: Instant::now(),
            round_acked_at_start: 0,
            round_end_offset: 0,
            latest_rtt: None,
            rates: VecDeque::new(),
            round_window: 0,
            grace,
            ss_ceiling: None,
        }
        .with_round_window()
    }

    fn with_round_window(mut self) -> Window {
        self.round_window = self.est.window;
        self
    }

    /// The path gained capacity: the bulk now goes over `to` streams where
    /// it went over `from` (stripes attached). Back to slow start, so the
    /// window doubles each round until the new path shows a queue or stops
    /// delivering more — but never past `to / from` times the window it
    /// had (the most the new streams can add: where the window already
    /// filled the link, this bounds the overshoot to the new streams'
    /// share instead of letting it double until a queue shows). The next
    /// two rounds' queue does not end it: their bytes went out on the old
    /// path. No more streams than before (the primary's bulk moved to one
    /// stripe): nothing changes.
    pub fn on_more_paths(&mut self, from: usize, to: usize) {
        if !matches!(self.sizing, Sizing::Auto { .. }) || to <= from {
            return;
        }
        let ceiling = (self.est.window as f64 * to as f64 / from.max(1) as f64) as u64;
        // A slow start still unbounded (a fresh path) stays so; one
        // bounded by an earlier attach takes the larger bound.
        if !(self.est.slow_start && self.ss_ceiling.is_none()) {
            self.ss_ceiling = Some(self.ss_ceiling.unwrap_or(0).max(ceiling));
        }
        self.est.slow_start = true;
        self.grace = 2;
    }

    /// The current limit.
    pub fn limit(&self) -> u64 {
        self.est.window
    }

    /// The estimate to carry to the stream's next transfer.
    pub fn estimate(&self) -> PathEstimate {
        self.est.clone()
    }

    /// The smallest round trip seen (carried from the stream's earlier
    /// transfers).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.est.min_rtt
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }

    /// The most bytes ever in flight at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The best delivery rate (bytes/s, in what the window counts: wire
    /// bytes) of the last rounds long enough to say something about the
    /// path, or `None` before the first such round.
    pub fn best_rate(&self) -> Option<f64> {
        let best = self.rates.iter().copied().fold(0.0, f64::max);
        (best > 0.0).then_some(best)
    }

    /// True if `len` more bytes fit. A window smaller than one chunk still
    /// lets one chunk through when nothing is in flight, so it can never
    /// deadlock.
    pub fn can_send(&self, len: u64) -> bool {
        self.in_flight() + len <= self.est.window || self.in_flight() == 0
    }

    /// Records `len` bytes sent now.
    pub fn on_send(&mut self, len: u64) {
        self.on_send_at(len, Instant::now());
    }

    /// Records `len` bytes sent at `now`.
    pub fn on_send_at(&mut self, len: u64, now: Instant) {
        if self.sent == 0 {
            self.round_start = now;
        }
        if self.acked == 0 {
            // The first round is the whole first flight: ending it at the
            // first chunk's acknowledgement would measure one chunk per
            // round trip as the path's rate, and the bandwidth × delay cap
            // would then hold the window back for rounds.
            self.round_end_offset = self.sent + len;
        }
        self.sent += len;
        self.in_flight.push_back((self.sent, now));
        self.peak = self.peak.max(self.in_flight());
    }

    /// Records a cumulative acknowledgement now; returns the newly
    /// acknowledged bytes.
    pub fn on_ack(&mut self, cumulative: u64) -> Result<u64, AckBeyondSent> {
        self.on_ack_at(cumulative, Instant::now())
    }

    /// Records a cumulative acknowledgement received at `now`.
    pub fn on_ack_at(&mut self, cumulative: u64, now: Instant) -> Result<u64, AckBeyondSent> {
        if cumulative > self.sent {
            return Err(AckBeyondSent {
                acked: cumulative,
                sent: self.sent,
            });
        }
        if cumulative <= self.acked {
            return Ok(0);
        }
        let delta = cumulative - self.acked;
        self.acked = cumulative;
        let mut newest = None;
        while let Some(&(end, at)) = self.in_flight.front() {
            if end > cumulative {
                break;
            }
            newest = Some(at);
            self.in_flight.pop_front();
        }
        if let Some(at) = newest {
            let rtt = now.saturating_duration_since(at);
            self.latest_rtt = Some(rtt);
            self.est.min_rtt = Some(self.est.min_rtt.map_or(rtt, |m| m.min(rtt)));
            self.slow_start_step(delta, rtt);
        }
        if cumulative >= self.round_end_offset {
            self.end_round(now);
        }
        Ok(delta)
    }

    /// Slow start grows the window by what each acknowledgement frees, as
    /// TCP does (doubling it each round trip), while that acknowledgement's
    /// round trip shows no queue: waiting for a round's end to double would
    /// double once more past the path, as a round's verdict is about the
    /// window before. At most doubling in a round; on a path of under a
    /// millisecond, whose delay samples are scheduling noise, held to four
    /// times the best recent rate × min RTT (the rate lags the window by a
    /// round), which keeps a fast local path at the floor.
    fn slow_start_step(&mut self, delta: u64, rtt: Duration) {
        let (Sizing::Auto { floor, cap }, true, Some(min_rtt)) =
            (self.sizing, self.est.slow_start, self.est.min_rtt)
        else {
            return;
        };
        if rtt > min_rtt + min_rtt / 8 {
            return;
        }
        let w = self.est.window;
        let limit = if min_rtt >= RATE_MIN_INTERVAL {
            // At most doubling in a round, as TCP's slow start.
            self.round_window.saturating_mul(2)
        } else {
            let best = self.rates.iter().copied().fold(0.0, f64::max);
            (4.0 * best * min_rtt.as_secs_f64()) as u64
        };
        let limit = limit.min(self.ss_ceiling.unwrap_or(u64::MAX));
        self.est.window = (w + delta)
            .min(limit.max(w))
            .clamp(floor.max(1), cap.max(floor).max(1));
    }

    fn end_round(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round_start);
        let bytes = self.acked - self.round_acked_at_start;
        self.round_start = now;
        self.round_acked_at_start = self.acked;
        self.round_end_offset = self.sent.max(self.acked + 1);
        self.round_window = self.est.window;
        let Sizing::Auto { floor, cap } = self.sizing else {
            return;
        };
        let (Some(min_rtt), Some(rtt)) = (self.est.min_rtt, self.latest_rtt) else {
            return;
        };
        if elapsed.is_zero() || bytes == 0 {
            return;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64();
        // For the bandwidth × delay cap, a round counts as lasting at least
        // RATE_MIN_INTERVAL: acknowledgements taken in a batch end rounds
        // microseconds apart, and the absurd rates those would give let
        // the window run up to the cap on a local pipe.
        let capped_rate = bytes as f64 / elapsed.max(RATE_MIN_INTERVAL).as_secs_f64();
        let best_before = self.rates.iter().copied().fold(0.0, f64::max);
        // A round much shorter than the round trip (the first ones, whose
        // acknowledgements come in a batch) says nothing about the path's
        // rate: kept out of the best rate that caps the window, so it
        // cannot let the window run past the path for ten rounds.
        let counted = elapsed >= min_rtt / 2;
        if counted {
            if self.rates.len() == RATE_ROUNDS {
                self.rates.pop_front();
            }
            self.rates.push_back(capped_rate);
        }
        // The share of this round's bytes that waited in a queue (Vegas).
        let queued = if rtt.is_zero() {
            0
        } else {
            (bytes as f64 * rtt.saturating_sub(min_rtt).as_secs_f64() / rtt.as_secs_f64()) as u64
        };
        let w = self.est.window;
        // Never grow past twice the path's bandwidth × delay product
        // (best recent rate × min RTT): beyond it the extra bytes can
        // only queue. On a fast local path, where a queue of a few
        // hundred µs is within the RTT samples' noise, this is what
        // keeps the window (and the receiver's buffering) at the floor.
        let best = self.rates.iter().copied().fold(0.0, f64::max);
        let bdp2 = (2.0 * best * min_rtt.as_secs_f64()) as u64;
        let rate_grows = counted && best_before > 0.0 && capped_rate >= RATE_GROWTH * best_before;
        let grace = self.grace > 0;
        self.grace = self.grace.saturating_sub(1);
        // The new streams' share is in: held while the grace lasts (a
        // fresh stripe's TCP connection stalls its first round trips, and
        // that queue says nothing of the path), then the delay rule.
        let at_ceiling = self.est.slow_start && self.ss_ceiling.is_some_and(|c| w >= c);
        let new = if at_ceiling && grace {
            w
        } else if self.est.slow_start
            && !at_ceiling
            && (queued < QUEUE_LOW.max(w / 8) || rate_grows || grace)
        {
            // Grown ack by ack (slow_start_step). A queue while the path
            // still delivers more each round (fresh TCP connections
            // opening up) does not end slow start either: the window
            // holds, and grows again once the queue is gone.
            // A queue, but the path still delivers more each round (fresh
            // TCP connections opening up): hold, and double again once the
            // queue is gone.
            w
        } else {
            // The delay rule, and slow start is over (if it was not).
            self.est.slow_start = false;
            self.ss_ceiling = None;
            if queued < QUEUE_LOW.max(w / 8) {
                (w + w / 4).min(bdp2.max(w))
            } else if queued > QUEUE_HIGH.max(w / 4) {
                w.saturating_sub(queued / 2)
            } else {
                w
            }
        };
        self.est.window = new.clamp(floor.max(1), cap.max(floor).max(1));
        self.round_window = self.est.window;
        tracing::debug!(
            "window round: {:.1} MiB/s, rtt {:?} (min {:?}), queue {} KiB: window {} -> {} KiB{}",
            rate / (1 << 20) as f64,
            rtt,
            min_rtt,
            queued >> 10,
            w >> 10,
            self.est.window >> 10,
            if self.est.slow_start {
                " (slow start)"
            } else {
                ""
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_limit_with_whole_chunks() {
        let mut w = Window::new(1 << 20);
        let chunk = 131_046;
        let mut sent_chunks = 0;
        while w.can_send(chunk) {
            w.on_send(chunk);
            sent_chunks += 1;
        }
        assert_eq!(sent_chunks, 8, "8 * 131046 <= 1 MiB < 9 * 131046");
        assert!(w.peak() <= 1 << 20);
        assert_eq!(w.on_ack(chunk), Ok(chunk));
        assert!(w.can_send(chunk));
    }

    #[test]
    fn ack_beyond_sent_is_refused_and_stale_is_ignored() {
        let mut w = Window::new(100);
        w.on_send(50);
        assert_eq!(
            w.on_ack(60),
            Err(AckBeyondSent {
                acked: 60,
                sent: 50
            })
        );
        assert_eq!(w.on_ack(30), Ok(30));
        assert_eq!(w.on_ack(20), Ok(0));
        assert_eq!(w.in_flight(), 20);
    }

    #[test]
    fn tiny_window_still_moves() {
        let mut w = Window::new(10);
        assert!(w.can_send(1000));
        w.on_send(1000);
        assert!(!w.can_send(1));
    }

    /// A simulated path: fixed propagation delay `rtt`, a bottleneck of
    /// `rate` bytes/s with a FIFO queue in front of it. Returns the window
    /// the controller settles at and the throughput reached.
    fn simulate(sizing: Sizing, rtt: Duration, rate: f64, secs: f64) -> (u64, f64, Duration) {
        let chunk = 131_046u64;
        let start = Instant::now();
        let mut w = Window::with_estimate(sizing, PathEstimate::new(sizing));
        let mut t = 0.0f64; // simulated seconds
        let mut link_free_at = 0.0f64;
        let mut acks: VecDeque<(f64, u64)> = VecDeque::new(); // (arrival time, cumulative)
        let mut worst_queue_delay = 0.0f64;
        while t < secs {
            while w.can_send(chunk) && w.in_flight() + chunk <= w.limit().max(chunk) {
                let now = start + Duration::from_secs_f64(t);
                w.on_send_at(chunk, now);
                let depart = link_free_at.max(t) + chunk as f64 / rate;
                worst_queue_delay = worst_queue_delay.max(depart - t - chunk as f64 / rate);
                link_free_at = depart;
                acks.push_back((depart + rtt.as_secs_f64(), w.sent()));
            }
            let Some((at, cum)) = acks.pop_front() else {
                break;
            };
            t = at;
            w.on_ack_at(cum, start + Duration::from_secs_f64(t))
                .expect("ack");
        }
        let _ = worst_queue_delay;
        (
            w.limit(),
            w.acked() as f64 / t,
            w.estimate().min_rtt.unwrap_or_default(),
        )
    }

    /// A fast local pipe whose receiver acknowledges in bursts (a disk
    /// thread that stalls, then catches up; the sender taking queued acks
    /// microseconds apart): the window must stay near the floor, since a
    /// bigger one only buffers data at the receiver.
    #[test]
    fn batched_acks_on_a_fast_local_path_do_not_grow_the_window() {
        let chunk = 131_046u64;
        let sizing = Sizing::Auto {
            floor: 1 << 20,
            cap: 64 << 20,
        };
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let mut w = Window::with_estimate(sizing, PathEstimate::new(sizing));
        let mut t = 0u64; // µs
        let mut highest = 0;
        for i in 0..5000u64 {
            while w.can_send(chunk) {
                w.on_send_at(chunk, at(t));
            }
            highest = highest.max(w.limit());
            // Every tenth burst waits behind a 2 ms disk stall; the others
            // come 80 µs after the sends, all taken at the same instant.
            t += if i % 10 == 0 { 2000 } else { 80 };
            let mut acked = w.acked();
            while acked < w.sent() {
                acked = (acked + chunk).min(w.sent());
                w.on_ack_at(acked, at(t)).expect("ack");
            }
        }
        assert!(
            highest <= 4 << 20,
            "window grew to {highest} bytes on a local path"
        );
    }

    #[test]
    fn auto_grows_to_the_bandwidth_delay_product_on_a_long_fat_path() {
        let mib = (1u64 << 20) as f64;
        let rate = 100.0 * mib; // 100 MiB/s
        let rtt = Duration::from_millis(100); // BDP = 10 MiB
        let (fixed_w, fixed_tput, _) = simulate(Sizing::Fixed(1 << 20), rtt, rate, 20.0);
        let (auto_w, auto_tput, _) = simulate(
            Sizing::Auto {
                floor: 1 << 20,
                cap: 64 << 20,
            },
            rtt,
            rate,
            20.0,
        );
        assert_eq!(fixed_w, 1 << 20);
        assert!(
            fixed_tput < 11.0 * mib,
            "fixed 1 MiB at 100 ms is capped near 10 MiB/s: {fixed_tput}"
        );
        assert!(
            auto_tput > 0.9 * rate,
            "auto reaches the path rate: {} MiB/s",
            auto_tput / mib
        );
        // (It settles around the BDP, a little below or above it: the
        // throughput above is what says it is big enough.)
        assert!(auto_w >= 8 << 20, "window near the BDP: {auto_w}");
        assert!(
            auto_w <= 20 << 20,
            "but not much more (no standing queue): {auto_w}"
        );
    }

    #[test]
    fn auto_respects_its_cap_and_floor() {
        let mib = (1u64 << 20) as f64;
        let (w, _, _) = simulate(
            Sizing::Auto {
                floor: 1 << 20,
                cap: 4 << 20,
            },
            Duration::from_millis(100),
            100.0 * mib,
            10.0,
        );
        assert_eq!(w, 4 << 20);
        // A fast, short path: nothing to gain above the floor.
        let (w, _, _) = simulate(
            Sizing::Auto {
                floor: 1 << 20,
                cap: 64 << 20,
            },
            Duration::from_micros(200),
            500.0 * mib,
            2.0,
        );
        assert!(w >= 1 << 20);
    }

    #[test]
    fn auto_shrinks_when_the_path_slows() {
        let mib = (1u64 << 20) as f64;
        let sizing = Sizing::Auto {
            floor: 1 << 20,
            cap: 64 << 20,
        };
        let mut est = PathEstimate::new(sizing);
        est.window = 40 << 20; // learnt on a faster path
        est.slow_start = false;
        let chunk = 131_046u64;
        let start = Instant::now();
        let mut w = Window::with_estimate(sizing, est);
        let (rate, rtt) = (10.0 * mib, 0.05);
        let (mut t, mut free) = (0.0f64, 0.0f64);
        let mut acks = VecDeque::new();
        while t < 30.0 {
            while w.can_send(chunk) {
                w.on_send_at(chunk, start + Duration::from_secs_f64(t));
                free = free.max(t) + chunk as f64 / rate;
                acks.push_back((free + rtt, w.sent()));
            }
            let Some((at, cum)) = acks.pop_front() else {
                break;
            };
            t = at;
            w.on_ack_at(cum, start + Duration::from_secs_f64(t))
                .expect("ack");
        }
        // BDP = 0.5 MiB: the window falls back towards the floor.
        assert!(w.limit() < 4 << 20, "window shrank: {}", w.limit());
    }

    /// One transfer through a simulated path: propagation delay `rtt`, a
    /// bottleneck whose rate (bytes/s) at simulated time t is `rate(t)`
    /// with a FIFO queue in front. `more_paths_at`: when the transfer is
    /// told the path gained capacity. Returns (time, window, acked) after
    /// every acknowledgement.
    fn sim_path(
        w: &mut Window,
        rtt: f64,
        rate: impl Fn(f64) -> f64,
        secs: f64,
        more_paths_at: Option<f64>,
    ) -> Vec<(f64, u64, u64)> {
        sim_path_told(w, rtt, rate, secs, more_paths_at.map(|t| (t, 1, 8)))
    }

    /// [`sim_path`], told at `t` that the bulk went from `from` to `to`
    /// streams.
    fn sim_path_told(
        w: &mut Window,
        rtt: f64,
        rate: impl Fn(f64) -> f64,
        secs: f64,
        more_paths_at: Option<(f64, usize, usize)>,
    ) -> Vec<(f64, u64, u64)> {
        let chunk = 131_046u64;
        let start = Instant::now();
        let at = |t: f64| start + Duration::from_secs_f64(t);
        let (mut t, mut link_free_at) = (0.0f64, 0.0f64);
        let mut told = more_paths_at.is_none();
        let mut acks: VecDeque<(f64, u64)> = VecDeque::new();
        let mut trace = Vec::new();
        while t < secs {
            if let Some((at, from, to)) = more_paths_at
                && !told
                && t >= at
            {
                w.on_more_paths(from, to);
                told = true;
            }
            while w.can_send(chunk) {
                w.on_send_at(chunk, at(t));
                link_free_at = link_free_at.max(t) + chunk as f64 / rate(t);
                acks.push_back((link_free_at + rtt, w.sent()));
            }
            let Some((when, cum)) = acks.pop_front() else {
                break;
            };
            t = when;
            w.on_ack_at(cum, at(t)).expect("ack");
            trace.push((t, w.limit(), w.acked()));
        }
        trace
    }

    const MIB: u64 = 1 << 20;

    fn auto() -> Sizing {
        Sizing::Auto {
            floor: MIB,
            cap: 64 * MIB,
        }
    }

    /// Round trips from `from` until the window first holds `bdp` bytes.
    fn rtts_to(trace: &[(f64, u64, u64)], from: f64, rtt: f64, bdp: u64) -> Option<f64> {
        trace
            .iter()
            .find(|&&(t, w, _)| t >= from && w >= bdp)
            .map(|&(t, _, _)| (t - from) / rtt)
    }

    /// Bytes acknowledged between two simulated times.
    fn acked_between(trace: &[(f64, u64, u64)], a: f64, b: f64) -> u64 {
        let upto = |x: f64| {
            trace
                .iter()
                .take_while(|&&(t, _, _)| t <= x)
                .last()
                .map_or(0, |&(_, _, n)| n)
        };
        upto(b) - upto(a)
    }

    /// From the 1 MiB floor on a fresh 100 ms, 90 MiB/s path (BDP 9 MiB):
    /// slow start doubles each round trip, so the window holds the BDP
    /// after a handful of them, and the transfer moves at the path's rate
    /// from then on.
    #[test]
    fn a_fresh_window_reaches_the_bandwidth_delay_product_in_a_few_round_trips() {
        let (rtt, rate) = (0.1, 90.0 * MIB as f64);
        let bdp = (rate * rtt) as u64;
        let mut w = Window::with_estimate(auto(), PathEstimate::new(auto()));
        let trace = sim_path(&mut w, rtt, |_| rate, 4.0, None);
        let rtts = rtts_to(&trace, 0.0, rtt, bdp).expect("the window reached the BDP");
        assert!(
            rtts <= 6.0,
            "window reached the BDP after {rtts:.1} round trips"
        );
        let moved = acked_between(&trace, 1.0, 3.0) as f64 / 2.0;
        assert!(
            moved > 0.9 * rate,
            "at the path's rate after the first second: {:.1} MiB/s",
            moved / MIB as f64
        );
        assert!(
            w.limit() <= 4 * bdp,
            "no runaway once the path is full: {} MiB",
            w.limit() / MIB
        );
    }

    /// What a push sees when stripes attach: first one SSH channel (about
    /// 20 MiB/s at 100 ms) has shown a queue and ended slow start (an
    /// earlier file of the push); then
    /// the path carries 90 MiB/s — at once, or (`ramp`) doubling each round
    /// trip as the stripes' fresh TCP connections open up. Returns the
    /// round trips from the attach until the window holds the new BDP,
    /// told of the new paths or not (the old behaviour: a quarter a round),
    /// and the rate over the 3 s starting 1.5 s after the attach.
    fn after_stripes_attach(ramp: bool, tell: bool) -> (f64, f64) {
        let (rtt, attach) = (0.1, 3.0);
        let (one, all) = (20.0 * MIB as f64, 90.0 * MIB as f64);
        let rate = move |t: f64| match (t < attach, ramp) {
            (true, _) => one,
            (false, false) => all,
            (false, true) => (one * 2f64.powf((t - attach) / rtt)).min(all),
        };
        let bdp = (all * rtt) as u64;
        // As carried from an earlier file: one channel's window, slow
        // start over (its queue showed).
        let mut est = PathEstimate::new(auto());
        est.window = 2 * MIB;
        est.slow_start = false;
        let mut w = Window::with_estimate(auto(), est);
        let trace = sim_path(&mut w, rtt, rate, 8.0, tell.then_some(attach));
        let before = trace
            .iter()
            .take_while(|&&(t, _, _)| t < attach)
            .last()
            .map_or(0, |&(_, w, _)| w);
        assert!(
            before < bdp / 2,
            "one channel's window stays small: {} KiB",
            before >> 10
        );
        let rtts = rtts_to(&trace, attach, rtt, bdp).unwrap_or(f64::INFINITY);
        let moved = acked_between(&trace, attach + 1.5, attach + 4.5) as f64 / 3.0;
        (rtts, moved / MIB as f64)
    }

    #[test]
    fn stripes_attaching_take_the_window_to_the_new_bdp_in_a_few_round_trips() {
        let (fast, rate) = after_stripes_attach(false, true);
        let (slow, _) = after_stripes_attach(false, false);
        assert!(
            fast <= 5.0,
            "the window held the new BDP {fast:.1} round trips after the stripes attached"
        );
        assert!(
            slow >= fast + 2.0,
            "growing by a quarter a round takes longer: {slow:.1} against {fast:.1} round trips"
        );
        assert!(
            rate > 0.9 * 90.0,
            "at the new rate 1.5 s after: {rate:.1} MiB/s"
        );
        // Fresh TCP connections under the stripes: the path itself takes
        // a few round trips to open up; the window follows within a few more.
        let (ramped, rate) = after_stripes_attach(true, true);
        assert!(
            ramped <= 8.0,
            "with the path opening up: {ramped:.1} round trips"
        );
        assert!(
            rate > 0.9 * 90.0,
            "at the new rate 1.5 s after: {rate:.1} MiB/s"
        );
    }

    /// The first round's acknowledgements come in a batch (the sender took
    /// them microseconds apart): that round says nothing about the path,
    /// and must neither end slow start nor count as its delivery rate.
    #[test]
    fn a_batched_first_round_does_not_end_slow_start() {
        let start = Instant::now();
        let at = |ms: f64| start + Duration::from_secs_f64(ms / 1000.0);
        let mut w = Window::with_estimate(auto(), PathEstimate::new(auto()));
        let chunk = 131_046u64;
        // One chunk, acknowledged after a slow first round trip (180 ms:
        // the receiver was still opening its file) ...
        w.on_send_at(chunk, at(0.0));
        w.on_ack_at(chunk, at(180.0)).expect("ack");
        // ... then a window's worth sent at once and acknowledged 101 ms
        // later in a burst 5 µs apart.
        while w.can_send(chunk) {
            w.on_send_at(chunk, at(180.0));
        }
        let mut acked = w.acked();
        let mut t = 281.0;
        while acked < w.sent() {
            acked = (acked + chunk).min(w.sent());
            w.on_ack_at(acked, at(t)).expect("ack");
            t += 0.005;
        }
        assert!(w.estimate().slow_start, "still in slow start");
        assert!(w.limit() >= 2 * MIB, "and still doubling: {}", w.limit());
    }

    /// What one file learnt is where the next file (or stripe set) of the
    /// same push starts: at the path's BDP, at its full rate from the first
    /// round trip.
    #[test]
    fn the_next_file_starts_at_the_learnt_window() {
        let (rtt, rate) = (0.1, 90.0 * MIB as f64);
        let bdp = (rate * rtt) as u64;
        let mut first = Window::with_estimate(auto(), PathEstimate::new(auto()));
        sim_path(&mut first, rtt, |_| rate, 3.0, None);
        let mut next = Window::with_estimate(auto(), first.estimate());
        assert!(next.limit() >= bdp, "starts at {} KiB", next.limit() >> 10);
        let trace = sim_path(&mut next, rtt, |_| rate, 1.0, None);
        let moved = acked_between(&trace, 0.0, 0.5) as f64 / 0.5;
        assert!(
            moved > 0.7 * rate,
            "near the path's rate in its first half second: {:.1} MiB/s",
            moved / MIB as f64
        );
    }

    /// A link one channel already fills (100 ms, 12.5 MB/s): stripes
    /// attaching add no capacity. The window, learnt at about the path's
    /// bandwidth × delay, may grow by the new streams' share at most (it
    /// used to be sent back to an unbounded slow start), and swapping the
    /// primary for one stripe changes nothing.
    #[test]
    fn an_attach_to_a_full_link_grows_the_window_by_the_new_share_at_most() {
        let (rtt, rate) = (0.1, 12.5e6);
        let learnt = || {
            let mut w = Window::with_estimate(auto(), PathEstimate::new(auto()));
            sim_path(&mut w, rtt, |_| rate, 4.0, None);
            assert!(!w.estimate().slow_start, "slow start over on a full link");
            w.estimate()
        };
        let est = learnt();
        let before = est.window;
        let most_after = |from, to| {
            let mut w = Window::with_estimate(auto(), est.clone());
            let trace = sim_path_told(&mut w, rtt, |_| rate, 4.0, Some((0.5, from, to)));
            trace
                .iter()
                .filter(|&&(t, _, _)| t >= 0.5)
                .map(|&(_, w, _)| w)
                .max()
                .unwrap_or(0)
        };
        let swapped = most_after(1, 1);
        let unchanged = most_after(1, 0);
        assert_eq!(
            swapped, unchanged,
            "one stripe for the primary: as if nothing attached"
        );
        let doubled = most_after(1, 2);
        assert!(
            doubled <= 2 * before,
            "two streams for one: at most twice {} KiB, got {} KiB",
            before >> 10,
            doubled >> 10
        );
        // Eight for one: bounded by eight times, and the delay rule takes
        // it back down once the queue shows.
        let mut w = Window::with_estimate(auto(), est.clone());
        sim_path_told(&mut w, rtt, |_| rate, 6.0, Some((0.5, 1, 8)));
        assert!(
            w.limit() <= 3 * before.max(MIB),
            "back near the path's product: {} KiB (was {} KiB)",
            w.limit() >> 10,
            before >> 10
        );
    }

    /// The first window of a fresh path goes out on a TCP connection idle
    /// since its handshake: its round trips are several times the path's
    /// while the connection opens up. That round must not end slow start.
    #[test]
    fn a_cold_first_round_does_not_end_slow_start() {
        let start = Instant::now();
        let at = |ms: f64| start + Duration::from_secs_f64(ms / 1000.0);
        let mut w = Window::with_estimate(auto(), PathEstimate::new(auto()));
        let chunk = 131_046u64;
        while w.can_send(chunk) {
            w.on_send_at(chunk, at(0.0));
        }
        // Acknowledged from 400 ms on, the last at 670 ms (a 100 ms path).
        let n = w.sent() / chunk;
        for k in 1..=n {
            let t = 400.0 + 270.0 * k as f64 / n as f64;
            w.on_ack_at((k * chunk).min(w.sent()), at(t)).expect("ack");
        }
        assert!(w.estimate().slow_start, "still in slow start");
        let first = w.limit();
        // Then the path's own round trips: the window doubles a round.
        let mut t = 670.0;
        for _ in 0..3 {
            let from = w.acked();
            while w.can_send(chunk) {
                w.on_send_at(chunk, at(t));
            }
            let sent = w.sent();
            let steps = (sent - from).div_ceil(chunk);
            for k in 1..=steps {
                w.on_ack_at((from + k * chunk).min(sent), at(t + 100.0 + k as f64 * 0.2))
                    .expect("ack");
            }
            t += 101.0 + steps as f64 * 0.2;
        }
        assert!(
            w.limit() >= 6 * first,
            "doubling after the cold round: {} KiB from {} KiB",
            w.limit() >> 10,
            first >> 10
        );
    }
}
