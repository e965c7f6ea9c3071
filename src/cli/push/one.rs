//! One target's push: connect, open a session, send the plan's batches,
//! and collect the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Targets;
use super::early::{EARLY_STRIPE_AFTER, EARLY_STRIPE_MORE, EarlySteps};
use super::failure::{failed_whole, whole_failure};
use super::feed::{Batches, walk_in_batches};
use super::notes::Notes;
use super::relay::tee_progress;
use super::stripe_job::stripe_in_steps;
use super::stripes::{STRIPE_MIN_BYTES, start_stripes_early_n};
use crate::cli::report;
use crate::cli::target::{self, Chain, HopError, TargetArgs};
use crate::connect::ContextInfo;
use crate::connect::path_rtt::{self, SpawnWatch};
use crate::files::plan::{EntryResult, PushBatch, PushEnd, PushOpened, PushPlan};
use crate::files::relay::TEE_SERVICE;
use crate::files::tee::TeeStats;
use crate::files::walk::Sources;
use crate::files::{FileService, TARGET_SERVICE};
use crate::router::Router;
use crate::wire::ContextId;

/// What a push to one target needs.
pub(super) struct One<'a> {
    pub(super) router: &'a Router,
    pub(super) fs: &'a FileService,
    pub(super) targs: &'a TargetArgs,
    pub(super) chain: &'a Chain,
    pub(super) plan: &'a PushPlan,
    pub(super) log_filter: &'a str,
    pub(super) stripes: Option<usize>,
    pub(super) reached: &'a Targets,
    pub(super) style: &'a report::Style,
    pub(super) notes: &'a Notes,
    /// The group's relay, when it tees: the session's calls go through it.
    pub(super) relay: Option<ContextId>,
    /// The tee's final figures, once the last target's session stopped it.
    pub(super) tee_final: &'a std::sync::Mutex<Option<TeeStats>>,
    /// The bytes of the regular files named on the command line (what is
    /// known before the walk): enough of them start stripes early.
    pub(super) size_hint: u64,
}

impl One<'_> {
    pub(super) async fn push(
        &self,
        host: String,
        batches: Batches,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        let t0 = Instant::now();
        let (connected, early) = self.connect_early(&host, t0).await;
        let info = match connected {
            Ok(i) => i,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon_with_message("connection failed");
                }
                let mut t = failed_whole(self.style, &host, &self.plan.dest, e.to_string());
                t.seconds = t0.elapsed().as_secs_f64();
                return t;
            }
        };
        if let Ok(mut t) = self.reached.lock() {
            t.push(info.id);
        }
        if let Some(b) = &bar {
            report::Bars::connected(b);
        }
        // Started early: attached in steps from now on, while the push
        // runs on the streams it has (see stripe_in_steps). The task ends
        // with this push (the transports it did not attach with it).
        let mut striped = false;
        let mut _stripe_task = None;
        if early.is_some() {
            striped = true;
            _stripe_task = stripe_in_steps(
                self.router,
                self.fs,
                self.targs,
                &host,
                info.id,
                self.stripes,
                self.size_hint,
                self.log_filter,
                early,
            );
        }
        let mut tally = report::Tally::new(&host);
        tally.context = info.name.clone();
        let failure = |e: crate::call::CallError| {
            let msg = crate::cli::call_failure(&info.name, "the push", &e);
            tracing::warn!("{}", crate::cli::sanitize::sanitize(&msg));
            msg
        };
        let opened: Result<PushOpened, _> = match self.relay {
            Some(relay) => {
                let args = (info.id, self.plan);
                self.call_at(relay, TEE_SERVICE, &info, "push_open", &args, &bar, 0)
                    .await
            }
            None => self.call(&info, "push_open", self.plan, &bar, 0).await,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tally.add(self.style, &[whole_failure(&self.plan.dest, failure(e))]);
                return self.end(tally, t0, bar);
            }
        };
        if !opened.failed.is_empty() {
            tally.add(self.style, &opened.failed);
            return self.end(tally, t0, bar);
        }
        let session = opened.session;
        let mut files = 0;
        // The close's answer, when it came with the last batch's.
        let mut closed_early: Option<Result<Vec<EntryResult>, String>> = None;
        let walked: Arc<Sources> = match batches {
            Batches::Walk(walker) => {
                let (walking, mut rx) = walk_in_batches(*walker);
                while let Some(batch) = rx.recv().await {
                    files = batch.files;
                    if let Some(b) = &bar {
                        b.set_length(batch.bytes);
                    }
                    if !striped && batch.bytes >= STRIPE_MIN_BYTES {
                        striped = true;
                        _stripe_task = stripe_in_steps(
                            self.router,
                            self.fs,
                            self.targs,
                            &host,
                            info.id,
                            self.stripes,
                            batch.bytes,
                            self.log_filter,
                            None,
                        );
                    }
                    let args = PushBatch {
                        session,
                        entries: batch.entries,
                    };
                    match self
                        .call::<_, Vec<EntryResult>>(&info, "push_batch", &args, &bar, files)
                        .await
                    {
                        Ok(results) => tally.add(self.style, &results),
                        Err(e) => {
                            drop(rx);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, failure(e))]);
                            return self.end(tally, t0, bar);
                        }
                    }
                }
                match walking.await {
                    Ok(w) => Arc::new(w),
                    Err(e) => {
                        let e = format!("internal error walking the sources: {e}");
                        tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                        return self.end(tally, t0, bar);
                    }
                }
            }
            Batches::Relay(mut feed) => {
                let relay = self.relay.unwrap_or_default();
                let mut k = 0u64;
                loop {
                    let fed = match feed.batch(k).await {
                        Ok(fed) => fed,
                        Err(Ok(walked)) => break walked,
                        Err(Err(e)) => {
                            let e = format!("{}: the plan did not reach the relay: {e}", info.name);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                            return self.end(tally, t0, bar);
                        }
                    };
                    files = fed.files;
                    if let Some(b) = &bar {
                        b.set_length(fed.bytes);
                    }
                    // The last batch and the close go in one call.
                    let r = match &fed.last {
                        Some(walked) => {
                            let args = (info.id, session, k, push_end(session, walked));
                            self.call_at::<_, (
                                Vec<EntryResult>,
                                Result<Vec<EntryResult>, String>,
                                Option<TeeStats>,
                            )>(
                                relay, TEE_SERVICE, &info, "push_last", &args, &bar, files
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
                                &info,
                                "push_batch",
                                &(info.id, session, k),
                                &bar,
                                files,
                            )
                            .await
                        }
                    };
                    match r {
                        Ok(results) => tally.add(self.style, &results),
                        Err(e) => {
                            let e = failure(e);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                            return self.end(tally, t0, bar);
                        }
                    }
                    if let Some(walked) = fed.last {
                        break walked;
                    }
                    k += 1;
                }
            }
        };
        self.notes.say(&walked, self.style.json);
        let closed = match closed_early {
            Some(closed) => closed,
            None => {
                let end = push_end(session, &walked);
                let closed: Result<Vec<EntryResult>, _> = match self.relay {
                    Some(relay) => {
                        let args = (info.id, end);
                        self.call_at(relay, TEE_SERVICE, &info, "push_close", &args, &bar, files)
                            .await
                    }
                    None => self.call(&info, "push_close", &end, &bar, files).await,
                };
                closed.map_err(failure)
            }
        };
        match closed {
            Ok(results) => tally.add(self.style, &results),
            Err(e) => tally.add(self.style, &[whole_failure(&self.plan.dest, e)]),
        }
        tally.skipped(self.style, &walked.skipped);
        self.end(tally, t0, bar)
    }

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
    async fn connect_early(
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

    pub(super) async fn call<A: serde::Serialize + Sync, R: serde::de::DeserializeOwned>(
        &self,
        info: &crate::connect::ContextInfo,
        method: &str,
        args: &A,
        bar: &Option<indicatif::ProgressBar>,
        files: u64,
    ) -> Result<R, crate::call::CallError> {
        self.call_at(info.id, TARGET_SERVICE, info, method, args, bar, files)
            .await
    }

    /// A call to `service` in `to` (the target, or its relay) for the push
    /// to `info`, moving its bar meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call_at<A: serde::Serialize + Sync, R: serde::de::DeserializeOwned>(
        &self,
        to: ContextId,
        service: &str,
        info: &crate::connect::ContextInfo,
        method: &str,
        args: &A,
        bar: &Option<indicatif::ProgressBar>,
        files: u64,
    ) -> Result<R, crate::call::CallError> {
        let call = self.router.call_service::<_, R>(to, service, method, args);
        tokio::pin!(call);
        // Behind a tee the relay's FileService sends; it is asked now and then.
        let tick = Duration::from_millis(if self.relay.is_some() { 500 } else { 100 });
        loop {
            tokio::select! {
                r = &mut call => return r,
                _ = tokio::time::sleep(tick), if bar.is_some() => {
                    let (bytes, sent) = match self.relay {
                        Some(relay) => tee_progress(self.router, relay, info.id)
                            .await
                            .unwrap_or((0, 0)),
                        None => (self.fs.progress(info.id), self.fs.files_sent(info.id)),
                    };
                    if let Some(b) = bar {
                        b.set_position(bytes);
                        b.set_message(format!("{sent} of {files} files sent"));
                    }
                }
            }
        }
    }

    /// The target's tally, its bar finished.
    pub(super) fn end(
        &self,
        mut tally: report::Tally,
        t0: Instant,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        tally.seconds = t0.elapsed().as_secs_f64();
        if let Some(b) = &bar {
            if tally.failed {
                b.abandon_with_message("failed");
            } else {
                b.finish_with_message("done");
            }
        }
        tally
    }
}

/// How a push session ends, from the whole walk.
pub(super) fn push_end(session: u64, walked: &Sources) -> PushEnd {
    PushEnd {
        session,
        incomplete: walked.incomplete.clone(),
        keep: walked.skipped.iter().map(|s| s.rel.clone()).collect(),
    }
}
