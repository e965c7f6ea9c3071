//! The relay's service, `ferrogen.files.tee` (parents only): starts a
//! [`Tee`] and the FileService that serves from it, keeps the push plan
//! (sent once over the uplink) and hands it to each target, reports
//! progress, and stops it all. See [`super::tee`] for what the tee does.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::outcome::EntryResult;
use super::source::ServeOptions;
use super::spec::PushPlan;
use super::tee::{Tee, TeeStats};
use super::{FileService, TARGET_SERVICE};
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
    /// The push plan, sent once over the uplink and forwarded from here
    /// to each target (`plan`, `push`).
    plan: Option<Arc<PushPlan>>,
}

/// Registers `ferrogen.files.tee` (parents only): `start(TeeArgs)`,
/// `plan(PushPlan)` (kept here), `push(u32) -> Vec<EntryResult>` (sends
/// the kept plan to that target and answers its results), `stats(()) ->
/// TeeStats`, `progress(Vec<u32>) -> Vec<(u64, u64)>` (bytes acknowledged
/// and files sent to each of those children) and `stop(()) -> TeeStats`.
pub fn register_service(services: &Services, router: &Router) {
    let slot: Arc<Mutex<Slot>> = Arc::default();
    let (r, s, start_slot) = (router.clone(), services.clone(), slot.clone());
    let (stats_slot, progress_slot, stop_slot) = (slot.clone(), slot.clone(), slot.clone());
    let (plan_slot, push_slot, push_router) = (slot.clone(), slot, router.clone());
    services.register(
        ServiceBuilder::new(TEE_SERVICE)
            .method("start", Policy::ParentsOnly, move |_c, args: TeeArgs| {
                let (r, s, slot) = (r.clone(), s.clone(), start_slot.clone());
                async move {
                    let mut slot = lock(&slot);
                    if slot.running.is_some() {
                        return Err(RemoteError::Failed(
                            "relay: a tee is already running here".into(),
                        ));
                    }
                    let tee =
                        Tee::new(&r, args.upstream, args.sparse, args.targets).map_err(|e| {
                            RemoteError::Failed(format!(
                                "relay: cannot create a spool directory under {}: {e}",
                                std::env::temp_dir().display()
                            ))
                        })?;
                    let tee = Arc::new(tee);
                    let fs = FileService::start_tee(&r, &s, args.serve.config(), tee.clone());
                    slot.running = Some((tee, fs));
                    Ok::<_, RemoteError>(())
                }
            })
            .method("plan", Policy::ParentsOnly, move |_c, plan: PushPlan| {
                let slot = plan_slot.clone();
                async move {
                    lock(&slot).plan = Some(Arc::new(plan));
                    Ok::<_, RemoteError>(())
                }
            })
            .method("push", Policy::ParentsOnly, move |_c, target: u32| {
                let (slot, router) = (push_slot.clone(), push_router.clone());
                async move {
                    let plan = lock(&slot).plan.clone().ok_or_else(|| {
                        RemoteError::Failed("relay: no plan was sent here".into())
                    })?;
                    router
                        .call_service::<_, Vec<EntryResult>>(target, TARGET_SERVICE, "push", &*plan)
                        .await
                        .map_err(|e| RemoteError::Failed(e.to_string()))
                }
            })
            .method("stats", Policy::ParentsOnly, move |_c, (): ()| {
                let slot = stats_slot.clone();
                async move { Ok::<_, RemoteError>(running_stats(&slot)) }
            })
            .method(
                "progress",
                Policy::ParentsOnly,
                move |_c, children: Vec<u32>| {
                    let slot = progress_slot.clone();
                    async move {
                        let fs = lock(&slot).running.as_ref().map(|(_, fs)| fs.clone());
                        Ok::<_, RemoteError>(
                            children
                                .iter()
                                .map(|c| match &fs {
                                    Some(fs) => (fs.progress(*c), fs.files_sent(*c)),
                                    None => (0, 0),
                                })
                                .collect::<Vec<(u64, u64)>>(),
                        )
                    }
                },
            )
            .method("stop", Policy::ParentsOnly, move |_c, (): ()| {
                let slot = stop_slot.clone();
                async move {
                    let stats = running_stats(&slot);
                    let running = {
                        let mut slot = lock(&slot);
                        slot.plan = None;
                        slot.running.take()
                    };
                    if let Some((tee, fs)) = running {
                        fs.shutdown().await;
                        tee.stop();
                    }
                    Ok::<_, RemoteError>(stats)
                }
            })
            .build(),
    );
}

fn running_stats(slot: &Mutex<Slot>) -> TeeStats {
    match &lock(slot).running {
        Some((tee, fs)) => TeeStats {
            served: fs.stats().completed,
            ..tee.stats()
        },
        None => TeeStats::default(),
    }
}
