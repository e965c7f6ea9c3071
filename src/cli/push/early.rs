//! Early stripe transports: started speculatively while the first
//! connection comes up, for a push to one target — as many as the round
//! trip ssh's own connection has measured calls for, or on a clock where
//! there is no such reading.

use std::time::{Duration, Instant};

use super::one::One;
use super::stripes::{STRIPE_MIN_RTT, auto_stripes, start_stripes_early_n, stripe_method};
use crate::cli::target::{self, HopError};
use crate::connect::ContextInfo;
use crate::connect::path_rtt::{PathReading, SpawnWatch};

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

/// How often, until the first step's clock, the controller looks for the
/// kernel's reading of ssh's connection: it exists one round trip after
/// ssh starts (the SYN's answer), so a long path is known long before
/// [`EARLY_STRIPE_AFTER`].
pub(super) const READING_POLL: Duration = Duration::from_millis(10);

/// How many stripe transports a push to one target starts before its
/// primary connection is up, step by step. Once the path's round trip is
/// known (read from ssh's own TCP connection, see [`path_rtt`]; looked for
/// every [`READING_POLL`] from the start) the count is what that round
/// trip calls for ([`auto_stripes`]), all together as soon as it shows: eight at
/// 100 ms about 100 ms after ssh starts (before, at 250 ms: measured 0.15 s
/// sooner to full rate than at 500 ms), and no more than the first two at
/// 20 ms however slow the start-up (on the shared testbed, 0.55 s: the
/// clock rule started eight there). A round trip under [`STRIPE_MIN_RTT`]
/// to a peer that is not this machine is a fast path (a LAN): no early
/// transports, however slow the login (each is a full ssh handshake, and
/// the pings then decide, as for a directory). Without a reading, or with
/// a short one to a loopback peer (ssh's hop to a local forwarder or
/// proxy, or the test suite's delaying relay: not the path), the clock
/// rule: the first step's transports at [`EARLY_STRIPE_AFTER`], the
/// longest path's rest at [`EARLY_STRIPE_MORE`], each only if the
/// connection is not up by then. A loopback peer that answered as a server
/// on this machine does (its version line within
/// [`LOCAL_SERVER_ANSWER`] of ssh's start) is the path's far end, a fast
/// path like a LAN's: a loopback sshd whose login takes 0.44 s got eight
/// transports by the clock rule, and 1 GiB over it took 5.40 s (5.24–6.23)
/// against 4.43 s (4.18–4.79) with `--stripes 1`.
///
/// [`LOCAL_SERVER_ANSWER`]: crate::connect::path_rtt::LOCAL_SERVER_ANSWER
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

    /// The transports to start at step `step` (0 or 1) given what the
    /// kernel has read of the path by then, and whether no step follows.
    pub(super) fn at(&self, step: usize, reading: Option<PathReading>) -> (usize, bool) {
        let started = if step == 0 { 0 } else { self.first };
        match reading {
            _ if self.fixed => (if step == 0 { self.first } else { 0 }, true),
            Some(r) if r.rtt >= STRIPE_MIN_RTT => {
                ((auto_stripes(r.rtt) - 1).saturating_sub(started), true)
            }
            Some(r) if !r.peer_local => (0, true),
            _ if step == 0 => (self.first, self.rest == 0),
            _ => (self.rest, true),
        }
    }

    /// Whether `reading` settles the first step before its clock: a long
    /// path, or a fast one that is not a local hop.
    pub(super) fn decided_by(&self, reading: Option<PathReading>) -> bool {
        !self.fixed && reading.is_some_and(|r| r.rtt >= STRIPE_MIN_RTT || !r.peer_local)
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
            // A push that will not stripe takes no step (nor looks).
            let may_stripe = stripe_method(
                self.targs,
                host,
                self.stripes,
                self.size_hint,
                self.log_filter,
            )
            .is_some();
            let mut step = if may_stripe { 0 } else { 2 };
            let mut last = false;
            loop {
                let at = match step {
                    0 => Some(EARLY_STRIPE_AFTER),
                    1 if !last => Some(EARLY_STRIPE_MORE),
                    _ => None,
                };
                let mut wait = at.map_or(Duration::ZERO, |a| a.saturating_sub(t0.elapsed()));
                // Before the first step's clock, look for the kernel's
                // reading every READING_POLL: it may settle the step sooner.
                let polling = step == 0 && !steps.fixed;
                if polling {
                    wait = wait.min(READING_POLL);
                }
                tokio::select! {
                    r = &mut connect => break r,
                    _ = tokio::time::sleep(wait), if at.is_some() => {
                        // What the kernel measured on ssh's connection so
                        // far (see connect::path_rtt); None: the clock rule.
                        let rtt = if self.stripes.is_none() {
                            watch.reading()
                        } else {
                            None
                        };
                        if polling
                            && t0.elapsed() < EARLY_STRIPE_AFTER
                            && !steps.decided_by(rtt)
                        {
                            continue;
                        }
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
        let far = |rtt| {
            Some(PathReading {
                rtt,
                peer_local: false,
                heard: None,
            })
        };
        let local = |rtt| {
            Some(PathReading {
                rtt,
                peer_local: true,
                heard: None,
            })
        };
        let auto = EarlySteps::new(None);
        // The clock rule: the first step's two at 250 ms, the longest
        // path's other six at 500 ms.
        assert_eq!(auto.at(0, None), (2, false));
        assert_eq!(auto.at(1, None), (6, true));
        assert!(!auto.decided_by(None));
        // A 20 ms path measured by 250 ms (the testbed, up after 0.55 s):
        // its two and no more; measured only by 500 ms: none more.
        assert_eq!(auto.at(0, far(ms(20))), (2, true));
        assert_eq!(auto.at(1, far(ms(20))), (0, true));
        // 100 ms: all eight at once, at the first step, and as soon as
        // the reading is there.
        assert_eq!(auto.at(0, far(ms(100))), (8, true));
        assert_eq!(auto.at(1, far(ms(100))), (6, true));
        assert!(auto.decided_by(far(ms(100))));
        // 40 ms calls for four.
        assert_eq!(auto.at(0, far(ms(40))), (4, true));
        // A peer behind a loopback address at 100 ms (the delay lines of
        // the test suite's relays are further on): the reading still says
        // so only if it is long.
        assert_eq!(auto.at(0, local(ms(100))), (8, true));
        // A local round trip to a loopback peer on a connection this slow
        // is a forwarder's, not the path's: the clock rule.
        let short = Duration::from_micros(300);
        assert_eq!(auto.at(0, local(short)), (2, false));
        assert_eq!(auto.at(1, local(short)), (6, true));
        assert!(!auto.decided_by(local(short)));
        // The same round trip to another machine is a fast path: none,
        // decided as soon as it is read.
        assert_eq!(auto.at(0, far(short)), (0, true));
        assert!(auto.decided_by(far(short)));
        // --stripes N: N - 1 at the first step whatever the path, on the
        // clock.
        let fixed = EarlySteps::new(Some(4));
        assert_eq!(fixed.at(0, None), (3, true));
        assert_eq!(fixed.at(0, far(ms(100))), (3, true));
        assert_eq!(fixed.at(0, far(ms(1))), (3, true));
        assert!(!fixed.decided_by(far(ms(100))));
    }
}
