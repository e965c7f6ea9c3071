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
//!
//! The accounting is here; what a round shows of the path in `estimate`,
//! and how the window moves on it in `rules`. Sans-IO throughout (times
//! are passed in), so the rules are tested on simulated paths (`sim`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::stream::MAX_WINDOW;

/// Estimated queue below which the window grows.
pub const QUEUE_LOW: u64 = 256 * 1024;
/// Estimated queue above which the window shrinks.
pub const QUEUE_HIGH: u64 = 1024 * 1024;

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
    /// Data streams the bytes in flight spread over (1 without stripes):
    /// the queue thresholds are per stream, since each has its own pipes,
    /// ssh buffers and TCP connection that a steady flow keeps partly full.
    streams: u64,
}

/// Rounds over which the delivery rate's maximum is taken.
const RATE_ROUNDS: usize = 10;

/// Shortest time a round counts as lasting when its delivery rate is
/// measured for the bandwidth × delay cap (about the scheduling noise of a
/// busy machine).
const RATE_MIN_INTERVAL: Duration = Duration::from_millis(1);

mod estimate;
mod rules;
#[cfg(test)]
mod sim;

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
            streams: 1,
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
        self.streams = to as u64;
    }

    /// The bytes in flight spread over `n` data streams (the stripes a
    /// transfer starts on), without the slow start of
    /// [`Window::on_more_paths`]: the queue the delay rule allows is per
    /// stream.
    pub fn set_streams(&mut self, n: usize) {
        self.streams = n.max(1) as u64;
    }

    /// Estimated queue below which the window grows: [`QUEUE_LOW`] per
    /// data stream.
    fn queue_low(&self) -> u64 {
        QUEUE_LOW.saturating_mul(self.streams)
    }

    /// Estimated queue above which the window shrinks: [`QUEUE_HIGH`] per
    /// data stream.
    fn queue_high(&self) -> u64 {
        QUEUE_HIGH.saturating_mul(self.streams)
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
}
