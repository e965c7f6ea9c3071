//! A target's stripes opened in steps while its push runs, as the
//! delivered rate shows they pay.

use std::time::{Duration, Instant};

use super::stripes::{STRIPE_MIN_RTT, auto_stripes, stripe_method};
use crate::cli::target::TargetArgs;
use crate::connect::Method;
use crate::files::FileService;
use crate::router::Router;

/// A task ended when its handle is dropped (the push to that target
/// ended): its early transports not attached end with it.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the stripe task of a push to one target needs.
pub(super) struct StripeJob {
    pub(super) router: Router,
    pub(super) fs: FileService,
    pub(super) host: String,
    pub(super) target: u32,
    pub(super) stripes: Option<usize>,
    pub(super) method: Method,
    pub(super) timeout: Duration,
}

/// Opens the stripes of a push to `target` (a direct ssh child) in the
/// background; the push does not wait for them — the FileService picks
/// stripes up as they attach, mid-transfer too. `--stripes N`: N − 1 data
/// stripes at once. The default: in steps chosen by what they deliver
/// ([`crate::connect::stripe_steps`]), using the transports started
/// early first, up to the round trip's cap ([`auto_stripes`]).
/// `None` when the push does not stripe.
#[allow(clippy::too_many_arguments)]
pub(super) fn stripe_in_steps(
    router: &Router,
    fs: &FileService,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    early: Option<crate::connect::stripe::Early>,
) -> Option<AbortOnDrop> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    let spec = targs.spec(host, log_filter).ok()?;
    let job = StripeJob {
        router: router.clone(),
        fs: fs.clone(),
        host: host.to_string(),
        target,
        stripes,
        method,
        timeout: spec.timeout(),
    };
    Some(AbortOnDrop(tokio::spawn(job.run(early))))
}

impl StripeJob {
    pub(super) async fn ping(&self, to: u32) -> Option<Duration> {
        crate::ping::round_trip(&self.router, to).await.ok()
    }

    /// Attaches `more` data stripes: early transports first, fresh ones
    /// for the rest. The future gives how many attached.
    pub(super) fn attach_more(
        &self,
        prepared: &mut Option<crate::connect::stripe::Prepared>,
        first_hop: u32,
        more: usize,
    ) -> impl std::future::Future<Output = usize> + Send + 'static {
        let k = prepared.as_ref().map_or(0, |p| p.len()).min(more);
        let from_early = match prepared.as_mut() {
            Some(p) if k > 0 => Some(p.attach_next(&self.router, k, self.timeout)),
            _ => None,
        };
        let fresh = more - k;
        let (router, method, timeout) = (self.router.clone(), self.method.clone(), self.timeout);
        async move {
            let early = async {
                match from_early {
                    Some(f) => f.await,
                    None => 0,
                }
            };
            let fresh = async {
                if fresh == 0 {
                    return 0;
                }
                crate::connect::stripe::open(&router, first_hop, &method, fresh, timeout).await
            };
            let (a, b) = tokio::join!(early, fresh);
            a + b
        }
    }

    pub(super) async fn run(self, early: Option<crate::connect::stripe::Early>) {
        let Some(stream) = self.router.stream_towards(self.target) else {
            return;
        };
        let Some(first_hop) = self.router.stream_remote(stream) else {
            return;
        };
        let t0 = Instant::now();
        // Two pings at once and, for early transports, the context's
        // stripe offer at the same time: one round trip, not three,
        // before the stripes can be attached.
        let prepare = async {
            match early.filter(|e| !e.is_empty()) {
                Some(e) => e.prepare(&self.router, first_hop, self.timeout).await,
                None => None,
            }
        };
        let (a, b, mut prepared) =
            tokio::join!(self.ping(first_hop), self.ping(first_hop), prepare);
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        let best = a.min(b);
        let host = &self.host;
        if let Some(n) = self.stripes {
            // An explicit count: all at once.
            let got = self.attach_more(&mut prepared, first_hop, n - 1).await;
            // Early transports beyond the count end here.
            drop(prepared);
            tracing::info!(
                "{host}: round trip {best:?}; {got} of {} extra streams attached ({:?} after the context was up)",
                n - 1,
                t0.elapsed()
            );
            return;
        }
        if best < STRIPE_MIN_RTT {
            tracing::info!("{host}: round trip {best:?}; one stream is enough, no stripes");
            return;
        }
        self.in_steps(stream, first_hop, best, prepared, t0).await;
    }

    /// Adds data stripes in steps while they make the delivered rate grow
    /// ([`crate::connect::stripe_steps`]), early transports (`prepared`)
    /// first, up to the cap for the round trip `best`.
    async fn in_steps(
        &self,
        stream: u64,
        first_hop: u32,
        best: Duration,
        mut prepared: Option<crate::connect::stripe::Prepared>,
        t0: Instant,
    ) {
        use crate::connect::stripe_steps::{StepAction, StepRules, Steps};
        let (router, host) = (&self.router, &self.host);
        // The cap: the round trip's count for twice this round trip. The
        // channel windows alone call for one data stripe per 12.5 ms; on
        // short paths more ssh processes also spread the encryption over
        // more cores (measured at 20 ms: 3 data stripes 5.4–6.3 s against
        // 6.8–7.3 s with 2), and the growth rule stops where they stop paying.
        let cap = auto_stripes(best * 2) - 1;
        let rules = StepRules::for_rtt(best, cap);
        let mut steps = Steps::new(rules);
        // Transports started early (as many as the round trip ssh's
        // connection measured called for; their CPU is spent) are the
        // first step, at once: attaching costs a round trip, and their TCP
        // connections then open up together with the primary's rather
        // than after it — each later step costs its fresh connections'
        // slow start (~5 round trips in which the in-order
        // acknowledgements wait for them). Measured against what one
        // channel could carry.
        let channel = crate::connect::stripe_steps::CHANNEL_WINDOW as f64 / best.as_secs_f64();
        let mut first = match prepared.as_ref().map_or(0, |p| p.len()).min(cap) {
            0 => None,
            n => Some(steps.open_now(n, channel)),
        };
        let mut asked = 0usize;
        let mut attaching: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + '_>>,
        > = None;
        loop {
            let now = Instant::now();
            let delivered = self.fs.delivered(self.target);
            if let Some(rtt) = delivered.min_rtt {
                steps.on_min_rtt(rtt);
            }
            steps.on_delivered(now, delivered.wire_bytes);
            steps.on_stripes(router.stripes(stream).len().saturating_sub(1));
            match first.take().unwrap_or_else(|| steps.poll(now)) {
                StepAction::Open(more) => {
                    asked += more;
                    tracing::debug!(
                        "{host}: {:.1} MiB/s over {} data streams; opening {more} more stripes",
                        steps.best_rate() / (1 << 20) as f64,
                        steps.attached().max(1)
                    );
                    attaching = Some(Box::pin(self.attach_more(&mut prepared, first_hop, more)));
                }
                StepAction::Done => {
                    tracing::info!(
                        "{host}: round trip {best:?}; stripes settled at {} data streams ({:?}, {:.1} MiB/s){}",
                        steps.attached(),
                        steps.ended(),
                        steps.best_rate() / (1 << 20) as f64,
                        match prepared.as_ref().map_or(0, |p| p.len()) {
                            0 => String::new(),
                            n => format!("; {n} early transports ended"),
                        }
                    );
                    return;
                }
                StepAction::Wait => {}
            }
            tokio::select! {
                got = async {
                    match attaching.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if attaching.is_some() => {
                    attaching = None;
                    let total = steps.attached() + got;
                    steps.on_attached(Instant::now(), total);
                    tracing::info!(
                        "{host}: round trip {best:?}; {total} of {asked} extra streams attached ({:?} after the context was up)",
                        t0.elapsed()
                    );
                }
                _ = tokio::time::sleep(rules.tick()) => {}
            }
        }
    }
}
