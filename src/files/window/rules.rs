//! How the window moves: slow start ack by ack, and the delay rule at
//! each round's end (grow, hold, shrink, within the floor and the cap).
//! Apart: the policy, tested on simulated paths.

use std::time::{Duration, Instant};

use super::estimate::Round;
use super::{RATE_MIN_INTERVAL, Sizing, Window};

/// The delivery rate "still grows" in slow start when a round's is at
/// least this much above the best before it.
const RATE_GROWTH: f64 = 1.25;

impl Window {
    /// Slow start grows the window by what each acknowledgement frees, as
    /// TCP does (doubling it each round trip), while that acknowledgement's
    /// round trip shows no queue: waiting for a round's end to double would
    /// double once more past the path, as a round's verdict is about the
    /// window before. At most doubling in a round; on a path of under a
    /// millisecond, whose delay samples are scheduling noise, held to four
    /// times the best recent rate × min RTT (the rate lags the window by a
    /// round), which keeps a fast local path at the floor.
    pub(super) fn slow_start_step(&mut self, delta: u64, rtt: Duration) {
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

    /// A round ended at `now` (its last chunk acknowledged): measures it
    /// and, with an automatic sizing, moves the window.
    pub(super) fn end_round(&mut self, now: Instant) {
        let (elapsed, bytes) = self.close_round(now);
        let Sizing::Auto { floor, cap } = self.sizing else {
            return;
        };
        let (Some(min_rtt), Some(rtt)) = (self.est.min_rtt, self.latest_rtt) else {
            return;
        };
        if elapsed.is_zero() || bytes == 0 {
            return;
        }
        let round = self.measure_round(elapsed, bytes, min_rtt, rtt);
        let w = self.est.window;
        let new = self.next_window(w, &round);
        self.est.window = new.clamp(floor.max(1), cap.max(floor).max(1));
        self.round_window = self.est.window;
        tracing::debug!(
            "window round: {:.1} MiB/s, rtt {:?} (min {:?}), queue {} KiB: window {} -> {} KiB{}",
            round.rate / (1 << 20) as f64,
            rtt,
            min_rtt,
            round.queued >> 10,
            w >> 10,
            self.est.window >> 10,
            if self.est.slow_start {
                " (slow start)"
            } else {
                ""
            }
        );
    }

    /// Ends the round at `now` and starts the next; the round's length
    /// and the bytes acknowledged in it.
    fn close_round(&mut self, now: Instant) -> (Duration, u64) {
        let elapsed = now.saturating_duration_since(self.round_start);
        let bytes = self.acked - self.round_acked_at_start;
        self.round_start = now;
        self.round_acked_at_start = self.acked;
        self.round_end_offset = self.sent.max(self.acked + 1);
        self.round_window = self.est.window;
        (elapsed, bytes)
    }

    /// The window after round `r`, from `w` (before the floor and cap):
    /// held in slow start (grown ack by ack) and during a grace, else the
    /// delay rule.
    fn next_window(&mut self, w: u64, r: &Round) -> u64 {
        let queued = r.queued;
        let (low, high) = (self.queue_low(), self.queue_high());
        let rate_grows =
            r.counted && r.best_before > 0.0 && r.capped_rate >= RATE_GROWTH * r.best_before;
        let grace = self.grace > 0;
        self.grace = self.grace.saturating_sub(1);
        // The new streams' share is in: held while the grace lasts (a
        // fresh stripe's TCP connection stalls its first round trips, and
        // that queue says nothing of the path), then the delay rule.
        let at_ceiling = self.est.slow_start && self.ss_ceiling.is_some_and(|c| w >= c);
        if at_ceiling && grace {
            w
        } else if self.est.slow_start
            && !at_ceiling
            && (queued < low.max(w / 8) || rate_grows || grace)
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
            if queued < low.max(w / 8) {
                (w + w / 4).min(r.bdp2.max(w))
            } else if queued > high.max(w / 4) {
                w.saturating_sub(queued / 2)
            } else {
                w
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use super::super::sim::*;
    use super::super::{PathEstimate, Sizing, Window};

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

    /// Each data stream is a pipeline of its own (pipes, ssh's buffers, a
    /// TCP connection) that a steady flow keeps partly full, and on a
    /// busy machine the scheduling of its processes shows as delay: with
    /// one stream's queue allowance spread over four, a 20 ms push held its
    /// window at 3.5 MiB and 125 MiB/s where four raw connections moved
    /// 175 MiB/s. The allowance is per stream; the bound on memory is still
    /// the cap and twice the bandwidth × delay product.
    #[test]
    fn the_queue_allowed_is_per_data_stream() {
        let (rtt, rate) = (0.02, 150.0 * MIB as f64);
        let bdp = (rate * rtt) as u64;
        let settled = |streams: usize| {
            let mut w = Window::with_estimate(auto(), PathEstimate::new(auto()));
            w.set_streams(streams);
            let trace = sim_path(&mut w, rtt, |_| rate, 3.0, None);
            let late: Vec<u64> = trace
                .iter()
                .filter(|&&(t, _, _)| t >= 2.0)
                .map(|&(_, w, _)| w)
                .collect();
            (
                late.iter().copied().min().unwrap_or(0),
                late.iter().copied().max().unwrap_or(0),
            )
        };
        let (one_lo, one_hi) = settled(1);
        let (four_lo, four_hi) = settled(4);
        assert!(
            one_lo >= bdp && four_lo >= bdp,
            "both fill the path: {} / {} KiB of {} KiB",
            one_lo >> 10,
            four_lo >> 10,
            bdp >> 10
        );
        // One stream's allowance cuts the window back each time the queue
        // passes it; four streams' holds more at its lowest.
        assert!(
            four_lo > one_lo + MIB,
            "four streams may queue more than one: {}..{} against {}..{} KiB",
            four_lo >> 10,
            four_hi >> 10,
            one_lo >> 10,
            one_hi >> 10
        );
        assert!(
            four_hi <= 2 * bdp,
            "still within twice the product: {} KiB of {} KiB",
            four_hi >> 10,
            bdp >> 10
        );
    }
}
