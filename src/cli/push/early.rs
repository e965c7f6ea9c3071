//! Early stripe transports: started speculatively while the first
//! connection comes up, for a push to one target — as many as the round
//! trip ssh's own connection has measured calls for, or on a clock where
//! there is no such reading.

use std::time::{Duration, Instant};

use super::one::One;
use super::stripes::{STRIPE_MIN_RTT, auto_stripes, start_stripes_early_n};
use crate::cli::target::{self, HopError};
use crate::connect::ContextInfo;
use crate::connect::path_rtt::{self, SpawnWatch};

/// The bytes of the regular files among the source operands (`paths`
/// without its last, the destination): what a push is known to carry
/// before its walk. Directories count nothing.
pub(super) fn top_files_size(paths: &[std::ffi::OsString]) -> u64 {
    let srcs = paths.split_last().map_or(&[][..], |(_, s)| s);
    srcs.iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// How long after the primary connection's start the early stripes start,
/// if it is not up by then. An ssh connection and a cached bootstrap take
/// about 15 round trips: up within this, the round trip is under ~15 ms.
pub(super) const EARLY_STRIPE_AFTER: Duration = Duration::from_millis(250);

/// How long after the primary connection's start the rest of the early
/// transports (up to the longest path's count) start, if it is not up by
/// then: a path of ~30 ms or more (an ssh connection and a cached
/// bootstrap take about 15 round trips; on the project's delay line the
/// context is up in 0.4–0.7 s at 20 ms, 1.6 s at 100 ms). Started at 1 s,
/// they attached 0.7 s after the first two at 100 ms and the 1 GiB push
/// took 0.6 s longer than with all eight at 250 ms; at 500 ms, 0.15 s.
pub(super) const EARLY_STRIPE_MORE: Duration = Duration::from_millis(500);

/// How many stripe transports a push to one target starts before its
/// primary connection is up, step by step: at [`EARLY_STRIPE_AFTER`] and
/// at [`EARLY_STRIPE_MORE`] if the connection is not up by then. Once the
/// path's round trip is known (read from ssh's own TCP connection, see
/// [`path_rtt`]) the count is what that round trip calls for
/// ([`auto_stripes`]), all at once: eight at 100 ms as soon as 250 ms
/// (measured 0.15 s sooner to full rate than at 500 ms), and no more than
/// the first two at 20 ms however slow the start-up (on the shared
/// testbed, 0.55 s: the clock rule started eight there). Without it, the
/// clock rule: the first step's at 250 ms, the longest path's rest at
/// 500 ms — also when the round trip read is under [`STRIPE_MIN_RTT`]:
/// that is ssh's hop to a local forwarder or proxy, not the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EarlySteps {
    /// Transports of the first step.
    pub(super) first: usize,
    /// The rest the longest path would get (0 with `--stripes`).
    pub(super) rest: usize,
    /// `--stripes N` given: N - 1 at the first step, whatever the path.
    pub(super) fixed: bool,
}

impl EarlySteps {
    pub(super) fn new(stripes: Option<usize>) -> EarlySteps {
        let first = stripes.map_or(crate::connect::stripe_steps::FIRST_STEP, |n| {
            n.saturating_sub(1)
        });
        let rest = match stripes {
            Some(_) => 0,
            None => (auto_stripes(Duration::MAX) - 1).saturating_sub(first),
        };
        EarlySteps {
            first,
            rest,
            fixed: stripes.is_some(),
        }
    }

    /// The transports to start at step `step` (0 or 1) given the round
    /// trip known by then, and whether no step follows.
    pub(super) fn at(&self, step: usize, rtt: Option<Duration>) -> (usize, bool) {
        let started = if step == 0 { 0 } else { self.first };
        // A local round trip on a connection not up within 250 ms is not
        // the path: ssh talks to a local forwarder or proxy (or the test
        // suite's delaying relay), whose far side the kernel cannot see.
        let rtt = rtt.filter(|r| *r >= STRIPE_MIN_RTT);
        match rtt {
            _ if self.fixed => (if step == 0 { self.first } else { 0 }, true),
            Some(r) => ((auto_stripes(r) - 1).saturating_sub(started), true),
            None if step == 0 => (self.first, self.rest == 0),
            None => (self.rest, true),
        }
    }
}

impl One<'_> {
    /// Connects to `host`, starting the stripes' transports early while
    /// the connection is being made.
    ///
    /// The stripes' transports start while the primary connection is
    /// still being made (see start_stripes_early) — if it is not up
    /// within EARLY_STRIPE_AFTER: a path that fast gains nothing from
    /// them (and below 4 ms gets none), and the primary, being well
    /// ahead, is never the connection an sshd that limits connections
    /// still in authentication (MaxStartups) drops.
    /// How many, and when: EarlySteps — as many as the path's round
    /// trip calls for once ssh's connection has measured it, so that
    /// each step of stripes attaches in one round trip rather than
    /// after a fresh ssh connection.
    pub(super) async fn connect_early(
        &self,
        host: &str,
        t0: Instant,
    ) -> (
        Result<ContextInfo, HopError>,
        Option<crate::connect::stripe::Early>,
    ) {
        let mut early: Option<crate::connect::stripe::Early> = None;
        let connected = {
            let watch = SpawnWatch::new();
            let connect = target::connect_target_watched(
                self.router,
                self.targs,
                self.chain,
                host,
                self.log_filter,
                watch.clone(),
            );
            tokio::pin!(connect);
            let steps = EarlySteps::new(self.stripes);
            let mut step = 0;
            let mut last = false;
            loop {
                let at = match step {
                    0 => Some(EARLY_STRIPE_AFTER),
                    1 if !last => Some(EARLY_STRIPE_MORE),
                    _ => None,
                };
                let wait = at.map_or(Duration::ZERO, |a| a.saturating_sub(t0.elapsed()));
                tokio::select! {
                    r = &mut connect => break r,
                    _ = tokio::time::sleep(wait), if at.is_some() => {
                        // What the kernel measured on ssh's connection so
                        // far (see connect::path_rtt); None: the clock rule.
                        let rtt = if self.stripes.is_none() {
                            watch.pid().and_then(path_rtt::tcp_rtt)
                        } else {
                            None
                        };
                        let (count, done) = steps.at(step, rtt);
                        tracing::debug!(
                            "{host}: early stripe step {step} at {:?}: path round trip {rtt:?}, \
                             {count} transports",
                            t0.elapsed()
                        );
                        step += 1;
                        last = done;
                        if count == 0 {
                            continue;
                        }
                        let more = start_stripes_early_n(
                            self.targs, host, self.stripes, self.size_hint, self.log_filter, count,
                        );
                        match (early.as_mut(), more) {
                            (Some(e), Some(m)) => e.absorb(m),
                            (None, m) => early = m,
                            (Some(_), None) => {}
                        }
                        if early.is_none() {
                            // Not a push that stripes: no more early transports.
                            last = true;
                        }
                    }
                }
            }
        };
        (connected, early)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_transports_follow_the_measured_round_trip_and_the_clock_without_one() {
        let ms = Duration::from_millis;
        let auto = EarlySteps::new(None);
        // The clock rule: the first step's two at 250 ms, the longest
        // path's other six at 500 ms.
        assert_eq!(auto.at(0, None), (2, false));
        assert_eq!(auto.at(1, None), (6, true));
        // A 20 ms path measured by 250 ms (the testbed, up after 0.55 s):
        // its two and no more; measured only by 500 ms: none more.
        assert_eq!(auto.at(0, Some(ms(20))), (2, true));
        assert_eq!(auto.at(1, Some(ms(20))), (0, true));
        // 100 ms: all eight at once, at the first step.
        assert_eq!(auto.at(0, Some(ms(100))), (8, true));
        assert_eq!(auto.at(1, Some(ms(100))), (6, true));
        // 40 ms calls for four.
        assert_eq!(auto.at(0, Some(ms(40))), (4, true));
        // A local round trip on a connection this slow is a forwarder's,
        // not the path's: the clock rule.
        assert_eq!(auto.at(0, Some(Duration::from_micros(300))), (2, false));
        assert_eq!(auto.at(1, Some(Duration::from_micros(300))), (6, true));
        // --stripes N: N - 1 at the first step whatever the path.
        let fixed = EarlySteps::new(Some(4));
        assert_eq!(fixed.at(0, None), (3, true));
        assert_eq!(fixed.at(0, Some(ms(100))), (3, true));
        assert_eq!(fixed.at(0, Some(ms(1))), (3, true));
    }
}
