//! Stripes: how many a path is worth, and opening them (after the round
//! trip is known, or early, before it).

use std::time::{Duration, Instant};

use crate::cli::target::TargetArgs;
use crate::connect::Method;
use crate::router::Router;

/// Round trips below this are not worth striping: the path's
/// bandwidth × delay then fits one SSH channel window (2 MiB) at any
/// realistic rate, and extra connections only add encryption work that
/// competes for the same CPUs (measured: 4 stripes on loopback were
/// slower than one).
pub(super) const STRIPE_MIN_RTT: Duration = Duration::from_millis(4);

/// Streams for a path of round trip `rtt` at most: the primary (kept for
/// calls and acknowledgements) plus data stripes. One SSH channel carries
/// 2 MiB per round trip, so longer paths need more of them to fill a fast
/// link: one data stripe per 12.5 ms of round trip, at least 2 and at most
/// 8 (each costs a connection and its encryption). The count asked of a
/// pull without `--stripes`; the default push's steps
/// ([`crate::connect::stripe_steps`]) may go up to that of twice the
/// round trip.
pub fn auto_stripes(rtt: Duration) -> usize {
    1 + ((rtt.as_secs_f64() * 1000.0 / 12.5).ceil() as usize).clamp(2, 8)
}

/// Plans smaller than this are not worth the extra connections.
pub(crate) const STRIPE_MIN_BYTES: u64 = 32 << 20;

/// Opens extra streams to the first hop of an ssh target reached directly
/// from the controller, in the background, when the push is large and the
/// path long enough for them to help. The FileService picks stripes up
/// as they attach. (Public for `tools/ferroprobe`, which measures calls on
/// a push set up exactly like this one.)
pub fn open_stripes(
    router: &Router,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) {
    open_stripes_with(
        router, targs, host, target, stripes, total, log_filter, None,
    );
}

/// Whether a push of `total` bytes to `host` may stripe, and with what
/// method (the first hop's: `ssh` only).
pub(super) fn stripe_method(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) -> Option<Method> {
    if stripes.is_some_and(|n| n <= 1) || !targs.via.is_empty() || total < STRIPE_MIN_BYTES {
        return None;
    }
    let spec = targs.spec(host, log_filter).ok()?;
    match spec.method {
        Method::Ssh(_) => Some(spec.method),
        _ => None,
    }
}

/// Starts the stripe transports of a push to `host` before its primary
/// connection is made, so their connection set-up (a dozen round trips
/// for ssh) overlaps the primary's and its bootstrap: as many as asked,
/// or as many as the longest path would get (those the measured round
/// trip does not call for are ended once it is known). `None` when the
/// push will not stripe.
pub fn start_stripes_early(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) -> Option<crate::connect::stripe::Early> {
    let count = stripes.unwrap_or_else(|| auto_stripes(Duration::MAX)) - 1;
    start_stripes_early_n(targs, host, stripes, total, log_filter, count)
}

/// [`start_stripes_early`], `count` transports.
pub(super) fn start_stripes_early_n(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    count: usize,
) -> Option<crate::connect::stripe::Early> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    Some(crate::connect::stripe::Early::start(
        &method,
        &format!("ssh.{host}"),
        count,
    ))
}

/// [`open_stripes`], using transports started by [`start_stripes_early`]
/// when given. Returns the task that attaches them, when there were early
/// transports: they attach a few round trips after the context is up, and
/// a push that waits for them starts on all its streams at once instead of
/// on the primary alone (whose fresh TCP connection needs as many round
/// trips to open up as the stripes take to attach).
#[allow(clippy::too_many_arguments)]
pub fn open_stripes_with(
    router: &Router,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    early: Option<crate::connect::stripe::Early>,
) -> Option<tokio::task::JoinHandle<()>> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    let spec = targs.spec(host, log_filter).ok()?;
    let first_hop = router
        .stream_towards(target)
        .and_then(|s| router.stream_remote(s))?;
    let early = early.filter(|e| !e.is_empty());
    let has_early = early.is_some();
    let (router, host) = (router.clone(), host.to_string());
    let task = tokio::spawn(async move {
        let t0 = Instant::now();
        let ping = || crate::ping::round_trip(&router, first_hop);
        // Two pings at once and, for early transports, the context's
        // stripe offer at the same time: one round trip, not three,
        // before the stripes can be attached.
        let prepare = async {
            match early {
                Some(e) => e.prepare(&router, first_hop, spec.timeout()).await,
                None => None,
            }
        };
        let (a, b, prepared) = tokio::join!(ping(), ping(), prepare);
        let (Ok(a), Ok(b)) = (a, b) else {
            return;
        };
        let best = a.min(b);
        let want = match stripes {
            Some(n) => n,
            None if best < STRIPE_MIN_RTT => {
                tracing::info!("{host}: round trip {best:?}; one stream is enough, no stripes");
                return;
            }
            None => auto_stripes(best),
        };
        let n = match prepared {
            Some(p) => p.attach(&router, want - 1, spec.timeout()).await,
            None => {
                crate::connect::stripe::open(&router, first_hop, &method, want - 1, spec.timeout())
                    .await
            }
        };
        tracing::info!(
            "{host}: round trip {best:?}; {n} of {} extra streams attached ({:?} after the context was up)",
            want - 1,
            t0.elapsed()
        );
    });
    has_early.then_some(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_follow_the_round_trip() {
        assert_eq!(auto_stripes(Duration::from_millis(5)), 3);
        assert_eq!(auto_stripes(Duration::from_millis(20)), 3);
        assert_eq!(auto_stripes(Duration::from_millis(50)), 5);
        assert_eq!(auto_stripes(Duration::from_millis(100)), 9);
        assert_eq!(auto_stripes(Duration::from_millis(400)), 9);
    }
}
