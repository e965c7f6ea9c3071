//! Sending a target's plan: whole in one call, in batches as its own walk
//! makes them, or from the batches its relay keeps (a tee) — and the
//! stripes started on the way.

use super::*;

/// The stripe task of one target's push, started once: with the early
/// transports, or when the walk passes [`STRIPE_MIN_BYTES`]. It ends with
/// the push (and the transports it did not attach with it).
#[derive(Default)]
pub(super) struct StripeTask {
    pub(super) started: bool,
    _task: Option<AbortOnDrop>,
}

impl StripeTask {
    pub(super) fn start(
        &mut self,
        one: &One<'_>,
        host: &str,
        target: u32,
        total: u64,
        early: Option<crate::connect::stripe::Early>,
    ) {
        self.started = true;
        self._task = stripe_in_steps(
            one.router,
            one.fs,
            one.targs,
            host,
            target,
            one.stripes,
            total,
            one.log_filter,
            early,
        );
    }
}

/// What sending the plan's batches ended with.
pub(super) struct Sent {
    pub(super) walked: Arc<Sources>,
    /// Files in the plan.
    pub(super) files: u64,
    /// The close's answer, when it came with the last batch's (a relay's
    /// `push_last`).
    pub(super) closed: Option<Result<Vec<EntryResult>, String>>,
}

impl One<'_> {
    /// Sends a plan the walk made in one batch as one `push` call — open,
    /// the batch and the close in one round trip instead of three (0.2 s
    /// of a push over a 100 ms path, see docs/benchmarks.md).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_whole(
        &self,
        host: &str,
        info: &ContextInfo,
        walking: Walking,
        last: Option<Walked>,
        bar: &Option<indicatif::ProgressBar>,
        tally: &mut report::Tally,
        stripes: &mut StripeTask,
    ) -> Option<Sent> {
        let walked = match walking.finish().await {
            Ok(w) => Arc::new(w),
            Err(e) => {
                let e = format!("internal error walking the sources: {e}");
                tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                return None;
            }
        };
        let (bytes, files) = last.as_ref().map_or((0, 0), |b| (b.bytes, b.files));
        if let Some(b) = bar {
            b.set_length(bytes);
        }
        if !stripes.started && bytes >= STRIPE_MIN_BYTES {
            stripes.start(self, host, info.id, bytes, None);
        }
        let mut plan = self.plan.clone();
        whole_plan(&mut plan, last, &walked);
        tracing::debug!(
            "{}: the plan goes whole, in one call ({} entries)",
            info.name,
            plan.entries.len()
        );
        let closed = self
            .call::<_, Vec<EntryResult>>(info, "push", &plan, bar, files)
            .await
            .map_err(|e| self.failure(info, e));
        Some(Sent {
            walked,
            files,
            closed: Some(closed),
        })
    }

    /// Walks the sources and sends each batch to the target as the walk
    /// makes it, starting the stripes once the walk passes
    /// [`STRIPE_MIN_BYTES`]. `None` when the push ended here (its failure
    /// is in `tally`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_walk(
        &self,
        host: &str,
        info: &ContextInfo,
        session: u64,
        walking: Walking,
        bar: &Option<indicatif::ProgressBar>,
        tally: &mut report::Tally,
        stripes: &mut StripeTask,
    ) -> Option<Sent> {
        let mut walking = walking;
        tracing::debug!("{}: the plan streams in batches", info.name);
        let mut files = 0;
        while let Some(batch) = walking.next().await {
            files = batch.files;
            if let Some(b) = bar {
                b.set_length(batch.bytes);
            }
            if !stripes.started && batch.bytes >= STRIPE_MIN_BYTES {
                stripes.start(self, host, info.id, batch.bytes, None);
            }
            let args = PushBatch {
                session,
                entries: batch.entries,
            };
            match self
                .call::<_, Vec<EntryResult>>(info, "push_batch", &args, bar, files)
                .await
            {
                Ok(results) => tally.add(self.style, &results),
                Err(e) => {
                    drop(walking);
                    let e = self.failure(info, e);
                    tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                    return None;
                }
            }
        }
        match walking.finish().await {
            Ok(w) => Some(Sent {
                walked: Arc::new(w),
                files,
                closed: None,
            }),
            Err(e) => {
                let e = format!("internal error walking the sources: {e}");
                tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                None
            }
        }
    }

    /// Has the relay send this target the batches it keeps, one call each;
    /// the last batch and the close go in one call (`push_last`). `None`
    /// when the push ended here (its failure is in `tally`).
    pub(super) async fn send_fed(
        &self,
        info: &ContextInfo,
        session: u64,
        mut feed: Feed,
        bar: &Option<indicatif::ProgressBar>,
        tally: &mut report::Tally,
    ) -> Option<Sent> {
        let relay = self.relay.unwrap_or_default();
        let mut closed_early = None;
        let mut files = 0;
        let mut k = 0u64;
        loop {
            let fed = match feed.batch(k).await {
                Ok(fed) => fed,
                Err(Ok(walked)) => {
                    return Some(Sent {
                        walked,
                        files,
                        closed: closed_early,
                    });
                }
                Err(Err(e)) => {
                    let e = format!("{}: the plan did not reach the relay: {e}", info.name);
                    tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                    return None;
                }
            };
            files = fed.files;
            if let Some(b) = bar {
                b.set_length(fed.bytes);
            }
            let r = match &fed.last {
                Some(walked) => {
                    let args = (info.id, session, k, push_end(session, walked));
                    self.call_at::<_, (
                        Vec<EntryResult>,
                        Result<Vec<EntryResult>, String>,
                        Option<TeeStats>,
                    )>(
                        relay, TEE_SERVICE, info, "push_last", &args, bar, files
                    )
                    .await
                    .map(|(results, closed, last)| {
                        if last.is_some()
                            && let Ok(mut f) = self.tee_final.lock()
                        {
                            *f = last;
                        }
                        let name = &info.name;
                        closed_early = Some(closed.map_err(|e| format!("{name}: {e}")));
                        results
                    })
                }
                None => {
                    self.call_at::<_, Vec<EntryResult>>(
                        relay,
                        TEE_SERVICE,
                        info,
                        "push_batch",
                        &(info.id, session, k),
                        bar,
                        files,
                    )
                    .await
                }
            };
            match r {
                Ok(results) => tally.add(self.style, &results),
                Err(e) => {
                    let e = self.failure(info, e);
                    tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                    return None;
                }
            }
            if let Some(walked) = fed.last {
                return Some(Sent {
                    walked,
                    files,
                    closed: closed_early,
                });
            }
            k += 1;
        }
    }
}
