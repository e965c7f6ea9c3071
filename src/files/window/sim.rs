//! Simulated paths for the window's tests: a propagation delay, a
//! bottleneck with a FIFO queue in front, acknowledgements in simulated
//! time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{PathEstimate, Sizing, Window};

/// A simulated path: fixed propagation delay `rtt`, a bottleneck of
/// `rate` bytes/s with a FIFO queue in front of it. Returns the window
/// the controller settles at and the throughput reached.
pub(super) fn simulate(
    sizing: Sizing,
    rtt: Duration,
    rate: f64,
    secs: f64,
) -> (u64, f64, Duration) {
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

/// One transfer through a simulated path: propagation delay `rtt`, a
/// bottleneck whose rate (bytes/s) at simulated time t is `rate(t)`
/// with a FIFO queue in front. `more_paths_at`: when the transfer is
/// told the path gained capacity. Returns (time, window, acked) after
/// every acknowledgement.
pub(super) fn sim_path(
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
pub(super) fn sim_path_told(
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

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn auto() -> Sizing {
    Sizing::Auto {
        floor: MIB,
        cap: 64 * MIB,
    }
}

/// Round trips from `from` until the window first holds `bdp` bytes.
pub(super) fn rtts_to(trace: &[(f64, u64, u64)], from: f64, rtt: f64, bdp: u64) -> Option<f64> {
    trace
        .iter()
        .find(|&&(t, w, _)| t >= from && w >= bdp)
        .map(|&(t, _, _)| (t - from) / rtt)
}

/// Bytes acknowledged between two simulated times.
pub(super) fn acked_between(trace: &[(f64, u64, u64)], a: f64, b: f64) -> u64 {
    let upto = |x: f64| {
        trace
            .iter()
            .take_while(|&&(t, _, _)| t <= x)
            .last()
            .map_or(0, |&(_, _, n)| n)
    };
    upto(b) - upto(a)
}
