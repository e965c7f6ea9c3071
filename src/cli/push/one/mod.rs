//! One target's push: connect, open a session, send the plan's batches
//! (`send`), and collect the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Targets;
use super::failure::{failed_whole, whole_failure};
use super::feed::{Batches, Feed};
use super::notes::Notes;
use super::relay::tee_progress;
use super::stripe_job::{AbortOnDrop, stripe_in_steps};
use super::stripes::STRIPE_MIN_BYTES;
use crate::cli::report;
use crate::cli::target::{Chain, TargetArgs};
use crate::connect::ContextInfo;
use crate::files::plan::{EntryResult, PushBatch, PushOpened, PushPlan};
use crate::files::push_walk::{Walked, Walking, push_end, whole_plan};
use crate::files::relay::TEE_SERVICE;
use crate::files::tee::TeeStats;
use crate::files::walk::Sources;
use crate::files::{FileService, TARGET_SERVICE};
use crate::router::Router;
use crate::wire::ContextId;

mod send;

use send::{Sent, StripeTask};

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

/// Where a target's plan comes from, once its push started.
enum Plan {
    /// Its own walk, running.
    Walking(Walking),
    /// The group's walk, kept at the relay.
    Fed(Feed),
}

impl One<'_> {
    pub(super) async fn push(
        &self,
        host: String,
        batches: Batches,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        let t0 = Instant::now();
        // The walk starts now, beside the connection: its first batches
        // are ready by the time the context is up.
        let plan = match batches {
            Batches::Walk(walker) => Plan::Walking(Walking::start(*walker)),
            Batches::Relay(feed) => Plan::Fed(feed),
        };
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
        // runs on the streams it has (see stripe_in_steps).
        let mut stripes = StripeTask::default();
        if early.is_some() {
            stripes.start(self, &host, info.id, self.size_hint, early);
        }
        let mut tally = report::Tally::new(&host);
        tally.context = info.name.clone();
        let plan = match plan {
            Plan::Walking(mut walking) => match walking.whole().await {
                Some(last) => {
                    let sent = self
                        .send_whole(&host, &info, walking, last, &bar, &mut tally, &mut stripes)
                        .await;
                    return self.ended(sent, tally, t0, bar);
                }
                None => Plan::Walking(walking),
            },
            fed => fed,
        };
        let session = match self.open(&info, &bar).await {
            Ok(session) => session,
            Err(failed) => {
                tally.add(self.style, &failed);
                return self.end(tally, t0, bar);
            }
        };
        let sent = match plan {
            Plan::Walking(walking) => {
                self.send_walk(
                    &host,
                    &info,
                    session,
                    walking,
                    &bar,
                    &mut tally,
                    &mut stripes,
                )
                .await
            }
            Plan::Fed(feed) => self.send_fed(&info, session, feed, &bar, &mut tally).await,
        };
        let sent = match sent {
            Some(Sent {
                closed: None,
                walked,
                files,
            }) => {
                let closed = self.close(&info, session, &walked, &bar, files).await;
                Some(Sent {
                    closed: Some(closed),
                    walked,
                    files,
                })
            }
            other => other,
        };
        self.ended(sent, tally, t0, bar)
    }

    /// The target's tally once its plan was sent and the session closed
    /// (`sent` is `None` when the push ended early: its failure is in
    /// `tally`).
    fn ended(
        &self,
        sent: Option<Sent>,
        mut tally: report::Tally,
        t0: Instant,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        let Some(sent) = sent else {
            return self.end(tally, t0, bar);
        };
        self.notes.say(&sent.walked, self.style.json);
        match sent.closed {
            Some(Ok(results)) => tally.add(self.style, &results),
            Some(Err(e)) => tally.add(self.style, &[whole_failure(&self.plan.dest, e)]),
            None => {}
        }
        tally.skipped(self.style, &sent.walked.skipped);
        self.end(tally, t0, bar)
    }

    /// A failed call of the push, worded (naming the target) and logged.
    fn failure(&self, info: &ContextInfo, e: crate::call::CallError) -> String {
        let msg = crate::cli::call_failure(&info.name, "the push", &e);
        tracing::warn!("{}", crate::cli::sanitize::sanitize(&msg));
        msg
    }

    /// Opens the push session on the target (through its relay when it
    /// tees): the session's number, or the entries that failed.
    async fn open(
        &self,
        info: &ContextInfo,
        bar: &Option<indicatif::ProgressBar>,
    ) -> Result<u64, Vec<EntryResult>> {
        let opened: Result<PushOpened, _> = match self.relay {
            Some(relay) => {
                let args = (info.id, self.plan);
                self.call_at(relay, TEE_SERVICE, info, "push_open", &args, bar, 0)
                    .await
            }
            None => self.call(info, "push_open", self.plan, bar, 0).await,
        };
        match opened {
            Ok(o) if o.failed.is_empty() => Ok(o.session),
            Ok(o) => Err(o.failed),
            Err(e) => Err(vec![whole_failure(&self.plan.dest, self.failure(info, e))]),
        }
    }

    /// Closes the session (through the relay when it tees): the results of
    /// the entries the target kept for the end.
    async fn close(
        &self,
        info: &ContextInfo,
        session: u64,
        walked: &Sources,
        bar: &Option<indicatif::ProgressBar>,
        files: u64,
    ) -> Result<Vec<EntryResult>, String> {
        let end = push_end(session, walked);
        let closed: Result<Vec<EntryResult>, _> = match self.relay {
            Some(relay) => {
                let args = (info.id, end);
                self.call_at(relay, TEE_SERVICE, info, "push_close", &args, bar, files)
                    .await
            }
            None => self.call(info, "push_close", &end, bar, files).await,
        };
        closed.map_err(|e| self.failure(info, e))
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
