//! The plan in batches as the walk yields them, shared by every target
//! of a group (and kept at a relay, which hands them on).

use std::sync::Arc;

use super::stripes::{STRIPE_MIN_BYTES, open_stripes};
use crate::call::CallError;
use crate::cli::target::TargetArgs;
use crate::files::push_walk::walk_in_batches;
use crate::files::relay::TEE_SERVICE;
use crate::files::walk::{Sources, Walker};
use crate::router::Router;
use crate::wire::ContextId;

/// Where a target's plan batches come from: its own walk (the batches go
/// to it directly), or the group's one walk whose batches the relay keeps.
pub(super) enum Batches {
    Walk(Box<Walker>),
    Relay(Feed),
}

/// The group's walk behind a tee: each batch is sent to the relay once;
/// targets follow at their own pace.
#[derive(Clone)]
pub(super) struct Feed {
    pub(super) state: tokio::sync::watch::Receiver<FeedState>,
}

/// How far the group's walk has got.
#[derive(Clone, Default)]
pub(super) struct FeedState {
    /// Batches the relay holds (numbered from 0).
    pub(super) batches: u64,
    /// The walk's totals so far.
    pub(super) bytes: u64,
    pub(super) files: u64,
    /// The whole walk, once it ended; or why the batches stopped.
    pub(super) done: Option<Result<Arc<Sources>, FeedError>>,
}

/// Why the plan's batches stopped before the walk's end reached the relay.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum FeedError {
    /// The relay refused a batch, or the call failed.
    #[error(transparent)]
    Relay(#[from] CallError),
    /// The walk's blocking task failed (a bug).
    #[error("internal error walking the sources: {0}")]
    Walk(String),
    /// The feeding task ended without saying why.
    #[error("the walk stopped")]
    Stopped,
}

/// A batch at the relay, as [`Feed::batch`] tells it.
pub(super) struct FedBatch {
    /// The walk's bytes and files so far.
    pub(super) bytes: u64,
    pub(super) files: u64,
    /// The whole walk, if this batch is its last.
    pub(super) last: Option<Arc<Sources>>,
}

/// How to stripe the uplink to a relay: its first hop's spec.
pub(super) struct Uplink {
    pub(super) targs: TargetArgs,
    pub(super) spec: String,
    pub(super) stripes: Option<usize>,
    pub(super) log_filter: String,
}

impl Feed {
    pub(super) fn start(
        router: &Router,
        relay: ContextId,
        walker: Walker,
        uplink: Option<Uplink>,
    ) -> Feed {
        let (tx, state) = tokio::sync::watch::channel(FeedState::default());
        let router = router.clone();
        let mut uplink = uplink;
        tokio::spawn(async move {
            let (walking, mut brx) = walk_in_batches(walker);
            let mut k = 0u64;
            while let Some(batch) = brx.recv().await {
                let r: Result<(), _> = router
                    .call_service(relay, TEE_SERVICE, "batch", &(k, batch.entries))
                    .await;
                if let Err(e) = r {
                    tx.send_modify(|s| s.done = Some(Err(e.into())));
                    return;
                }
                k += 1;
                tx.send_modify(|s| {
                    s.batches = k;
                    s.bytes = batch.bytes;
                    s.files = batch.files;
                });
                if batch.bytes >= STRIPE_MIN_BYTES
                    && let Some(u) = uplink.take()
                {
                    open_stripes(
                        &router,
                        &u.targs,
                        &u.spec,
                        relay,
                        u.stripes,
                        batch.bytes,
                        &u.log_filter,
                    );
                }
            }
            let done = match walking.await {
                Ok(w) => Ok(Arc::new(w)),
                Err(e) => Err(FeedError::Walk(e.to_string())),
            };
            tx.send_modify(|s| s.done = Some(done));
        });
        Feed { state }
    }

    /// Waits until batch `k` is at the relay (the walk's bytes and files so
    /// far, and the whole walk if `k` is known to be its last batch), or
    /// the walk ended (`Err` with its result).
    pub(super) async fn batch(
        &mut self,
        k: u64,
    ) -> Result<FedBatch, Result<Arc<Sources>, FeedError>> {
        let got = self
            .state
            .wait_for(|s| s.batches > k || s.done.is_some())
            .await
            .map(|s| s.clone());
        match got {
            Ok(s) if s.batches > k => Ok(FedBatch {
                bytes: s.bytes,
                files: s.files,
                last: match s.done {
                    Some(Ok(walked)) if s.batches == k + 1 => Some(walked),
                    _ => None,
                },
            }),
            Ok(s) => Err(s.done.unwrap_or(Err(FeedError::Stopped))),
            Err(_) => Err(Err(FeedError::Stopped)),
        }
    }
}
