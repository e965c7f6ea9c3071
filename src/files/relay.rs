//! The relay's service, `ferrogen.files.tee` (parents only): starts a
//! [`Tee`] and the FileService that serves from it, keeps the push plan
//! (sent once over the uplink) and hands it to each target, reports
//! progress, and stops it all. See [`super::tee`] for what the tee does.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::FileService;
use super::outcome::EntryResult;
use super::source::ServeOptions;
use super::spec::{PlanEntry, PushBatch, PushEnd, PushPlan};
use super::tee::{Tee, TeeStats};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};

/// Name of the service that starts and stops a tee.
pub const TEE_SERVICE: &str = "ferrogen.files.tee";

/// Arguments of `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeArgs {
    /// The context whose FileService holds the files (the controller, or
    /// a tee nearer to it).
    pub upstream: u32,
    /// How this relay serves its children: the push's window, `-z`,
    /// `--bwlimit`, `-X`/`-A`.
    pub serve: ServeOptions,
    /// `--sparse`: holes are fetched as holes and kept in the spool.
    pub sparse: bool,
    /// How many targets this relay serves (0: not known). A spooled file
    /// sent whole to that many is dropped from the spool, so the spool
    /// holds only what some target still lacks.
    #[serde(default)]
    pub targets: u32,
    /// Fetch the plan's first large files before any target asks
    /// ([`Tee::read_ahead`]); `--no-read-ahead` turns it off.
    #[serde(default)]
    pub read_ahead: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single field update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running tee of this context, if any (one at a time: a relay serves
/// one push; a second `start` replaces the first once it has stopped).
#[derive(Default)]
struct Slot {
    running: Option<(Arc<Tee>, FileService)>,
    /// The last `start` failed: batches sent behind it are refused at once.
    failed: bool,
    /// Targets the running tee serves (0: not known), and the sessions
    /// ended by `push_last` so far: when every target's has, the tee stops
    /// itself and that answer carries its final figures, which saves the
    /// controller a `stop` round trip over the uplink.
    targets: u32,
    closed: u32,
}

/// Stops the running tee, if any: its final figures.
async fn stop_running(slot: &Mutex<Slot>) -> TeeStats {
    let stats = running_stats(slot);
    let running = lock(slot).running.take();
    if let Some((tee, fs)) = running {
        fs.shutdown().await;
        tee.stop();
    }
    stats
}

/// How long a `batch` that overtook its `start` waits for it. The
/// controller sends the first batch right behind `start`, without waiting
/// for its answer (a round trip less before the relay reads ahead), and
/// the two calls may be run in either order here.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The running tee, waiting (up to [`START_WAIT`]) for a `start` on its way.
async fn started_tee(
    slot: &Mutex<Slot>,
    started: &tokio::sync::Notify,
) -> Result<Arc<Tee>, RemoteError> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let notified = started.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if lock(slot).failed {
            return running_tee(slot);
        }
        if let Ok(tee) = running_tee(slot) {
            return Ok(tee);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return running_tee(slot);
        }
    }
}

/// Sends the kept plan batch `k` to `target`'s session and notes that it
/// answered (the read-ahead then knows what that target wanted).
async fn push_kept_batch(
    tee: &Tee,
    router: &Router,
    target: u32,
    session: u64,
    k: u64,
) -> Result<Vec<EntryResult>, RemoteError> {
    let encoded = tee
        .batch(k)
        .map_err(|e| RemoteError::Failed(e.to_string()))?;
    let entries: Vec<PlanEntry> = crate::wire::control::decode(&encoded)
        .map_err(|e| RemoteError::Failed(format!("relay: {e}")))?;
    let batch = PushBatch { session, entries };
    let results = router
        .call(target, crate::files::spec::PUSH_BATCH, &batch)
        .await
        .map_err(|e| RemoteError::Failed(e.to_string()))?;
    tee.answered(k);
    Ok(results)
}

/// Registers `ferrogen.files.tee` (parents only): `start(TeeArgs)`;
/// `batch((k, entries))` keeps batch `k` of the push plan (on disk, sent
/// once over the uplink); `push_open((target, PushPlan)) -> PushOpened`,
/// `push_batch((target, session, k)) -> Vec<EntryResult>` (hands batch `k`
/// to that target) and `push_close((target, PushEnd)) -> Vec<EntryResult>`
/// run a target's push session from here (`push_last((target, session, k,
/// PushEnd)) -> (Vec<EntryResult>, Result<Vec<EntryResult>, String>,
/// Option<TeeStats>)` is the plan's last batch and the close in one call: a
/// round trip over the uplink less; the last target's also stops the tee
/// and answers its final figures); `stats(()) -> TeeStats`,
/// `progress(Vec<u32>) -> Vec<(u64, u64)>` (bytes acknowledged and files
/// sent to each of those targets) and `stop(()) -> TeeStats`.
pub fn register_service(services: &Services, router: &Router) {
    let slot: Arc<Mutex<Slot>> = Arc::default();
    let (r, s, start_slot) = (router.clone(), services.clone(), slot.clone());
    let (stats_slot, progress_slot, stop_slot) = (slot.clone(), slot.clone(), slot.clone());
    let (batch_slot, push_slot, last_slot) = (slot.clone(), slot.clone(), slot);
    let started = Arc::new(tokio::sync::Notify::new());
    let (start_note, batch_note) = (started.clone(), started);
    let (open_router, push_router, close_router) = (router.clone(), router.clone(), router.clone());
    let last_router = router.clone();
    services.register(
        ServiceBuilder::new(TEE_SERVICE)
            .method("start", Policy::ParentsOnly, move |_c, args: TeeArgs| {
                let (r, s, slot) = (r.clone(), s.clone(), start_slot.clone());
                let note = start_note.clone();
                async move { start_tee(&r, &s, &slot, &note, args) }
            })
            .method(
                "batch",
                Policy::ParentsOnly,
                move |_c, (k, entries): (u64, Vec<PlanEntry>)| {
                    let (slot, note) = (batch_slot.clone(), batch_note.clone());
                    async move {
                        let tee = started_tee(&slot, &note).await?;
                        let encoded = crate::wire::control::encode(&entries);
                        tee.keep_batch(k, &encoded)
                            .map_err(|e| RemoteError::Failed(e.to_string()))?;
                        tee.read_ahead(k, &entries);
                        Ok(())
                    }
                },
            )
            .method(
                "push_open",
                Policy::ParentsOnly,
                move |_c, (target, plan): (u32, PushPlan)| {
                    let router = open_router.clone();
                    async move {
                        router
                            .call(target, crate::files::spec::PUSH_OPEN, &plan)
                            .await
                            .map_err(|e| RemoteError::Failed(e.to_string()))
                    }
                },
            )
            .method(
                "push_batch",
                Policy::ParentsOnly,
                move |_c, (target, session, k): (u32, u64, u64)| {
                    let (slot, router) = (push_slot.clone(), push_router.clone());
                    async move {
                        let tee = running_tee(&slot)?;
                        push_kept_batch(&tee, &router, target, session, k).await
                    }
                },
            )
            .method(
                "push_close",
                Policy::ParentsOnly,
                move |_c, (target, end): (u32, PushEnd)| {
                    let router = close_router.clone();
                    async move {
                        router
                            .call(target, crate::files::spec::PUSH_CLOSE, &end)
                            .await
                            .map_err(|e| RemoteError::Failed(e.to_string()))
                    }
                },
            )
            .method(
                "push_last",
                Policy::ParentsOnly,
                move |_c, (target, session, k, end): (u32, u64, u64, PushEnd)| {
                    let (slot, router) = (last_slot.clone(), last_router.clone());
                    async move { push_last(&slot, &router, target, session, k, end).await }
                },
            )
            .method("stats", Policy::ParentsOnly, move |_c, (): ()| {
                let slot = stats_slot.clone();
                async move { Ok::<_, RemoteError>(running_stats(&slot)) }
            })
            .method(
                "progress",
                Policy::ParentsOnly,
                move |_c, children: Vec<u32>| {
                    let slot = progress_slot.clone();
                    async move { Ok::<_, RemoteError>(progress(&slot, &children)) }
                },
            )
            .method("stop", Policy::ParentsOnly, move |_c, (): ()| {
                let slot = stop_slot.clone();
                async move { Ok::<_, RemoteError>(stop_running(&slot).await) }
            })
            .build(),
    );
}

/// `start`: a tee for `args.targets`, serving them from its spool with a
/// FileService of its own. One at a time.
fn start_tee(
    router: &Router,
    services: &Services,
    slot: &Mutex<Slot>,
    started: &tokio::sync::Notify,
    args: TeeArgs,
) -> Result<(), RemoteError> {
    let mut slot = lock(slot);
    if slot.running.is_some() {
        return Err(RemoteError::Failed(
            "relay: a tee is already running here".into(),
        ));
    }
    let tee = match Tee::new(
        router,
        args.upstream,
        args.sparse,
        args.targets,
        args.read_ahead,
    ) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            slot.failed = true;
            started.notify_waiters();
            return Err(RemoteError::Failed(format!(
                "relay: cannot create a spool directory under {}: {e}",
                std::env::temp_dir().display()
            )));
        }
    };
    let fs = FileService::start_tee(router, services, args.serve.config(), tee.clone());
    slot.running = Some((tee, fs));
    slot.failed = false;
    (slot.targets, slot.closed) = (args.targets, 0);
    started.notify_waiters();
    Ok(())
}

/// What `push_last` answers: the last batch's results, the close's, and
/// the tee's final figures when this target was the last to close.
type LastAnswer = (
    Vec<EntryResult>,
    Result<Vec<EntryResult>, String>,
    Option<TeeStats>,
);

/// `push_last`: hands `target` the plan's last batch `k` and closes its
/// session; the last target to close stops the tee.
async fn push_last(
    slot: &Mutex<Slot>,
    router: &Router,
    target: u32,
    session: u64,
    k: u64,
    end: PushEnd,
) -> Result<LastAnswer, RemoteError> {
    let tee = running_tee(slot)?;
    let results = push_kept_batch(&tee, router, target, session, k).await?;
    let closed = router
        .call(target, crate::files::spec::PUSH_CLOSE, &end)
        .await
        .map_err(|e| e.to_string());
    let all_closed = {
        let mut s = lock(slot);
        s.closed += 1;
        s.targets > 0 && s.closed >= s.targets
    };
    let last = match all_closed {
        true => Some(stop_running(slot).await),
        false => None,
    };
    Ok((results, closed, last))
}

/// `progress`: the bytes acknowledged and files sent to each of
/// `children` ((0, 0) without a tee).
fn progress(slot: &Mutex<Slot>, children: &[u32]) -> Vec<(u64, u64)> {
    let fs = lock(slot).running.as_ref().map(|(_, fs)| fs.clone());
    children
        .iter()
        .map(|c| match &fs {
            Some(fs) => (fs.progress(*c), fs.files_sent(*c)),
            None => (0, 0),
        })
        .collect()
}

fn running_tee(slot: &Mutex<Slot>) -> Result<Arc<Tee>, RemoteError> {
    match &lock(slot).running {
        Some((tee, _)) => Ok(tee.clone()),
        None => Err(RemoteError::Failed("relay: no tee is running here".into())),
    }
}

fn running_stats(slot: &Mutex<Slot>) -> TeeStats {
    match &lock(slot).running {
        Some((tee, fs)) => {
            let s = fs.stats();
            TeeStats {
                served: s.completed,
                forwarded_compressed: s.forwarded_chunks,
                compressed_here: s.compressed_chunks,
                ..tee.stats()
            }
        }
        None => TeeStats::default(),
    }
}
