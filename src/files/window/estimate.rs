//! What one round of acknowledgements shows of the path: its delivery
//! rate, the bytes that waited in a queue (Vegas), and the best recent
//! rate that bounds the window. Apart from the rules: measuring, not
//! deciding.

use std::time::Duration;

use super::{RATE_MIN_INTERVAL, RATE_ROUNDS, Window};

/// What a round measured.
pub(super) struct Round {
    /// Bytes a second delivered in the round.
    pub(super) rate: f64,
    /// The same, the round counted as lasting at least
    /// [`RATE_MIN_INTERVAL`].
    pub(super) capped_rate: f64,
    /// The round lasted long enough to say something about the path's
    /// rate (and was recorded among the recent rates).
    pub(super) counted: bool,
    /// The best recent rate before this round.
    pub(super) best_before: f64,
    /// Bytes of the round that waited in a queue.
    pub(super) queued: u64,
    /// Twice the path's bandwidth × delay product.
    pub(super) bdp2: u64,
}

impl Window {
    /// Measures a round of `elapsed` that delivered `bytes`, the path's
    /// smallest round trip being `min_rtt` and its latest `rtt`; records
    /// its rate among the recent ones if it counts.
    pub(super) fn measure_round(
        &mut self,
        elapsed: Duration,
        bytes: u64,
        min_rtt: Duration,
        rtt: Duration,
    ) -> Round {
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
        // Never grow past twice the path's bandwidth × delay product
        // (best recent rate × min RTT): beyond it the extra bytes can
        // only queue. On a fast local path, where a queue of a few
        // hundred µs is within the RTT samples' noise, this is what
        // keeps the window (and the receiver's buffering) at the floor.
        let best = self.rates.iter().copied().fold(0.0, f64::max);
        let bdp2 = (2.0 * best * min_rtt.as_secs_f64()) as u64;
        Round {
            rate,
            capped_rate,
            counted,
            best_before,
            queued,
            bdp2,
        }
    }
}
