//! The target side of a push: `ferrogen.files.target`, in every context.
//!
//! `push(PushPlan) -> Vec<EntryResult>` (parents only) recreates a list of
//! directories, symlinks and files under a destination, pulling file data
//! from the FileService in context `server`:
//!
//! 1. directories are created, parents first (new ones private, 0700;
//!    existing ones untouched; a symlink or file where the source has a
//!    directory is replaced, as `rsync -a` does);
//! 2. (symlinks wait for step 4);
//! 3. files are received concurrently: those the plan saw as at most one
//!    chunk are fetched many to a call (`fetch_small`, up to 512 files or
//!    1 MiB, four calls in flight) and written on blocking threads; the
//!    others each through their own windowed transfer (`parallel` at a
//!    time). Each lands in its own temp file, verified;
//! 4. durability is batched: one `syncfs` covers every file received (with
//!    many small files, background syncs while they arrive leave it little
//!    to do), then each is put in place and each directory touched is
//!    fsynced once (a single file is simply fsynced). Until then received
//!    files stay anonymous `O_TMPFILE`s with their descriptors open (as
//!    many as the open-file limit allows), so a receiver killed mid-push
//!    leaves nothing, and a new destination costs one `linkat`; then
//!    symlinks are created under a temp name and renamed into place;
//! 5. directory modes and times are applied last, deepest first, since
//!    creating entries changes a directory's mtime.
//!
//! Destination rules (those of `cp -a`, plus rsync's trailing slash):
//! with `into_dir`, or when `dest` is an existing directory, entries land
//! at `dest/<rel>`; otherwise the first component of each `rel` (the
//! source's own name) is replaced by `dest`.
//!
//! Everything beneath the destination is reached through a directory
//! handle without following symlinks ([`super::place`]). Once the push is
//! cancelled (the `cancel` method, or this context's shutdown), received
//! files are discarded and nothing existing is changed any more.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rustix::fs::OFlags;
use tokio::sync::Semaphore;

use super::RawPath;
use super::outcome::raw_if_not_utf8;
pub use super::outcome::{EntryKind, EntryResult, Status, changes};
use super::place::{Place, Root, describe, plain, show};
use super::receive::{self, PendingFile, ReceiveOptions, TempFiles};
use super::serve::SMALL_BATCH_BYTES;
use super::spec::Ids;
pub use super::spec::{
    Compare, Owner, PlanEntry, PushBatch, PushEnd, PushOpened, PushPlan, SpecialKind, Stamp,
};
use super::uptodate::{self, Fixes, Found, Verdict, after_hash, file_verdict, look_at};
use super::xattr::Xattr;
use super::{
    DigestArgs, FILE_SERVICE, FetchSmallArgs, FileDigest, SMALL_FILE_MAX, SmallFile,
    TARGET_SERVICE, hex,
};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::wire::ContextId;

/// Registers `ferrogen.files.target` and returns the temp-file registry
/// its shutdown hook empties.
///
/// `push(PushPlan)` applies a whole plan sent as one message. A large
/// push streams instead: `push_open(PushPlan)` (the plan without its
/// entries) opens a session, `push_batch(PushBatch)` applies the next
/// entries and answers with their results, `push_close(PushEnd)` ends it
/// (directory metadata, `--delete`) — see docs/protocol.md §12.2.
///
/// Besides these, the service has `cancel(())`: the controller calls it
/// when the user interrupts the push, before it stops serving data, so a
/// push in progress puts nothing more in place and changes no directory's
/// mode or times (this context's shutdown does the same).
pub fn register_service(services: &Services, router: &Router) -> TempFiles {
    let temps = TempFiles::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let (r, t, t2) = (router.clone(), temps.clone(), temps.clone());
    let (c, c2, c3) = (cancel.clone(), cancel.clone(), cancel);
    let sessions = Sessions::default();
    let (s1, s2, s3) = (sessions.clone(), sessions.clone(), sessions);
    let (r2, t3, c4, c5) = (router.clone(), temps.clone(), c.clone(), c.clone());
    services.register(
        ServiceBuilder::new(TARGET_SERVICE)
            .method("push", Policy::ParentsOnly, move |_c, plan: PushPlan| {
                let r = r.clone();
                let t = t.clone();
                let c = c.clone();
                async move { Ok::<_, RemoteError>(apply_cancellable(&r, plan, &t, &c).await) }
            })
            .method(
                "push_open",
                Policy::ParentsOnly,
                move |_c, plan: PushPlan| {
                    let opened = s1.open(plan);
                    async move { Ok::<_, RemoteError>(opened) }
                },
            )
            .method(
                "push_batch",
                Policy::ParentsOnly,
                move |_c, b: PushBatch| {
                    let (r, t, c, session) =
                        (r2.clone(), t3.clone(), c4.clone(), s2.get(b.session));
                    async move {
                        let session = session?;
                        let mut session = session.lock().await;
                        Ok::<_, RemoteError>(session.batch(&r, &t, &c, b.entries).await)
                    }
                },
            )
            .method(
                "push_close",
                Policy::ParentsOnly,
                move |_c, end: PushEnd| {
                    let (c, session) = (c5.clone(), s3.take(end.session));
                    async move {
                        let session = session?;
                        let mut session = session.lock().await;
                        Ok::<_, RemoteError>(session.finish(&c, end).await)
                    }
                },
            )
            .method("cancel", Policy::ParentsOnly, move |_c, (): ()| {
                c2.store(true, Ordering::SeqCst);
                async move { Ok::<_, RemoteError>(()) }
            })
            .on_shutdown(move || async move {
                c3.store(true, Ordering::SeqCst);
                t2.remove_all()
            })
            .build(),
    );
    temps
}

/// The pushes open in this context, by session number.
#[derive(Clone, Default)]
struct Sessions {
    inner: Arc<std::sync::Mutex<SessionMap>>,
}

#[derive(Default)]
struct SessionMap {
    next: u64,
    open: std::collections::HashMap<u64, Arc<tokio::sync::Mutex<Session>>>,
}

/// Pushes open at once in one context (only the parent chain opens them;
/// a bound all the same, as for every table a peer can grow).
const MAX_SESSIONS: usize = 64;

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, plan: PushPlan) -> PushOpened {
        let dest = plan.dest.as_path().to_path_buf();
        if self.lock().open.len() >= MAX_SESSIONS {
            return PushOpened {
                session: 0,
                failed: vec![EntryResult::failed(
                    &dest,
                    format!("{}: too many pushes open in this context", show(&dest)),
                )],
            };
        }
        match Session::open(plan) {
            Ok(s) => {
                let mut map = self.lock();
                map.next += 1;
                let id = map.next;
                map.open.insert(id, Arc::new(tokio::sync::Mutex::new(s)));
                PushOpened {
                    session: id,
                    failed: Vec::new(),
                }
            }
            Err(failed) => PushOpened { session: 0, failed },
        }
    }

    fn get(&self, id: u64) -> Result<Arc<tokio::sync::Mutex<Session>>, RemoteError> {
        self.lock()
            .open
            .get(&id)
            .cloned()
            .ok_or_else(|| RemoteError::Failed(format!("no push session {id} in this context")))
    }

    fn take(&self, id: u64) -> Result<Arc<tokio::sync::Mutex<Session>>, RemoteError> {
        self.lock()
            .open
            .remove(&id)
            .ok_or_else(|| RemoteError::Failed(format!("no push session {id} in this context")))
    }
}

fn first_component_stripped(rel: &[u8]) -> &[u8] {
    match rel.iter().position(|&b| b == b'/') {
        Some(i) => &rel[i + 1..],
        None => b"",
    }
}

/// True if `rel` is a plain relative path: no empty, `.` or `..`
/// component, no NUL.
fn safe_rel(rel: &[u8]) -> bool {
    !rel.is_empty()
        && !rel.contains(&0)
        && rel
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Applies a plan; never fails as a whole — each entry reports its own result.
pub async fn apply(router: &Router, plan: PushPlan, temps: &TempFiles) -> Vec<EntryResult> {
    apply_cancellable(router, plan, temps, &AtomicBool::new(false)).await
}

/// The result of every entry not put in place because the push was
/// cancelled.
fn cancelled(dest: &Path) -> EntryResult {
    EntryResult::failed(
        dest,
        format!("{}: push cancelled: nothing was put in place", show(dest)),
    )
}

/// A refusal of the whole push if an entry's path is not a plain relative
/// path beneath DEST.
fn unsafe_entry(entries: &[PlanEntry], dest: &Path) -> Option<EntryResult> {
    for e in entries {
        let rel = match e {
            PlanEntry::Dir { rel, .. }
            | PlanEntry::File { rel, .. }
            | PlanEntry::Symlink { rel, .. }
            | PlanEntry::Special { rel, .. }
            | PlanEntry::HardLink { rel, .. } => rel,
        };
        let to_ok = match e {
            PlanEntry::HardLink { to, .. } => safe_rel(to.as_bytes()),
            _ => true,
        };
        if !safe_rel(rel.as_bytes()) || !to_ok {
            return Some(EntryResult::failed(
                dest,
                format!("refusing entry with unsafe relative path {rel:?}"),
            ));
        }
    }
    None
}

/// [`apply`], stopping short of changing anything that exists once
/// `cancel` is set: received files are discarded rather than put in
/// place, and no directory's mode or times are applied. The whole plan
/// is one batch of a [`Session`].
pub async fn apply_cancellable(
    router: &Router,
    mut plan: PushPlan,
    temps: &TempFiles,
    cancel: &AtomicBool,
) -> Vec<EntryResult> {
    let entries = std::mem::take(&mut plan.entries);
    if let Some(refused) = unsafe_entry(&entries, plan.dest.as_path()) {
        return vec![refused];
    }
    let end = PushEnd {
        session: 0,
        incomplete: std::mem::take(&mut plan.delete.incomplete),
        keep: std::mem::take(&mut plan.delete.keep),
    };
    let mut session = match Session::open(plan) {
        Ok(s) => s,
        Err(failed) => return failed,
    };
    let mut results = session.batch(router, temps, cancel, entries).await;
    results.extend(session.finish(cancel, end).await);
    collapse_alike(results)
}

/// A directory whose mode, times, owner and attributes are applied at the
/// end of the push.
type DirMeta = (Place, u32, i64, u32, Ids, Status, u8, Vec<Xattr>);

/// DEST, opened for a push.
struct Opened {
    root: Arc<Root>,
    /// DEST's own name when the entries' top is renamed to it (DEST's
    /// parent is then the root).
    top: Option<OsString>,
    dest_existed: bool,
    /// DEST as the push found it, for its own status (entries landing in
    /// it move its mtime before its metadata is judged).
    dest_before: Option<Found>,
}

/// A push in progress in this context: the plan's header (its `entries`
/// are empty), and what the batches applied so far leave for the end —
/// the directories whose metadata comes last, those that failed, and
/// (only with `--delete`) the names the source has. Nothing else grows
/// with the number of entries: each batch's files are received, made
/// durable and put in place before its results are returned.
pub struct Session {
    plan: PushPlan,
    dest: PathBuf,
    /// `None`: a dry run into a DEST that does not exist (every entry
    /// would be created).
    opened: Option<Opened>,
    /// The push was refused or cancelled: later batches do nothing.
    broken: bool,
    /// (Dry run, DEST missing) DEST's own result was given.
    announced: bool,
    failed_dirs: FailedDirs,
    dirs: Vec<DirMeta>,
    seen: super::delete::Seen,
    started: Instant,
}

impl Session {
    /// Opens DEST for `plan` (its entries, if any, are ignored: they come
    /// in batches). Fails with the result to report when DEST cannot be
    /// used.
    pub fn open(mut plan: PushPlan) -> Result<Session, Vec<EntryResult>> {
        plan.entries = Vec::new();
        let dest = plan.dest.as_path().to_path_buf();
        let mut session = Session {
            dest: dest.clone(),
            opened: None,
            broken: false,
            announced: false,
            failed_dirs: FailedDirs::default(),
            dirs: Vec::new(),
            seen: super::delete::Seen::default(),
            started: Instant::now(),
            plan,
        };
        if session.plan.dry_run
            && session.plan.into_dir
            && std::fs::symlink_metadata(&dest).is_err()
        {
            // Nothing there yet: everything would be created, DEST first.
            return Ok(session);
        }
        let dest_existed = std::fs::symlink_metadata(&dest).is_ok();
        let (root, top) =
            open_root(&session.plan, &dest).map_err(|e| vec![EntryResult::failed(&dest, e)])?;
        let dest_before = rustix::fs::fstat(root.fd()).ok().map(|st| Found::of(&st));
        session.opened = Some(Opened {
            root,
            top,
            dest_existed,
            dest_before,
        });
        Ok(session)
    }

    /// Applies one batch of entries, in walk order (a directory before
    /// what it holds, a hard link after the file it links to): returns
    /// their results once each is in place (or has failed).
    pub async fn batch(
        &mut self,
        router: &Router,
        temps: &TempFiles,
        cancel: &AtomicBool,
        entries: Vec<PlanEntry>,
    ) -> Vec<EntryResult> {
        if self.broken {
            return Vec::new();
        }
        if let Some(refused) = unsafe_entry(&entries, &self.dest) {
            self.broken = true;
            return vec![refused];
        }
        if self.plan.delete.enabled {
            self.seen.add(&entries);
        }
        tracing::debug!(
            "push batch of {} entries to {}",
            entries.len(),
            show(&self.dest)
        );
        let Session {
            plan,
            dest,
            opened,
            broken,
            announced,
            failed_dirs,
            dirs,
            ..
        } = self;
        let dest: &Path = dest;
        let Some(Opened { root, top, .. }) = opened else {
            return all_new(&entries, dest, !std::mem::replace(announced, true));
        };
        let rel_of = |rel: &RawPath| -> PathBuf { rel_beneath(top, rel) };
        let place_of = |rel: &RawPath| Place::new(root, rel_of(rel));
        let mut results = Vec::new();
        let ids_of = |owner: &Option<Owner>| -> Ids {
            owner
                .as_ref()
                .filter(|_| plan.options.preserve_owner)
                .map(Owner::ids)
        };
        // 1. Directories, parents first. A new one is created private (0700)
        //    and gets its mode and times once its contents are in; an existing
        //    one is left exactly as it is until then.
        let mut dir_entries: Vec<&PlanEntry> = entries
            .iter()
            .filter(|e| matches!(e, PlanEntry::Dir { .. }))
            .collect();
        dir_entries.sort_by_key(|e| match e {
            PlanEntry::Dir { rel, .. } => rel.as_bytes().iter().filter(|&&b| b == b'/').count(),
            _ => 0,
        });
        for e in dir_entries {
            if let PlanEntry::Dir {
                rel,
                mode,
                mtime_sec,
                mtime_nsec,
                owner,
                xattrs,
            } = e
            {
                let Some(p) = failed_dirs.admit(place_of(rel), root, &mut results) else {
                    continue;
                };
                // DEST itself is the user's: a non-directory there is refused
                // (as `cp` does), not replaced.
                let is_dest = top.is_some() && !rel.as_bytes().contains(&b'/');
                let ids = ids_of(owner);
                let made = if plan.dry_run {
                    look_at(&p).map_err(describe).and_then(|f| match f {
                        Some(f) if is_dest && f.kind != rustix::fs::FileType::Directory => {
                            Err("exists and is not a directory".to_string())
                        }
                        f => Ok(f),
                    })
                } else {
                    make_dir(&p, is_dest)
                };
                match made {
                    Ok(before) => {
                        let (status, changed) =
                            dir_status(before.as_ref(), *mode, *mtime_sec, *mtime_nsec, ids);
                        if plan.dry_run {
                            results.push(
                                EntryResult::done(p.shown(), EntryKind::Dir, status)
                                    .with_changes(changed),
                            );
                        } else {
                            dirs.push((
                                p,
                                *mode,
                                *mtime_sec,
                                *mtime_nsec,
                                ids,
                                status,
                                changed,
                                xattrs.clone(),
                            ));
                        }
                    }
                    Err(err) => {
                        // Held to the end of the push, to say how many entries
                        // below it (in any batch) were not copied.
                        failed_dirs.insert(
                            &p,
                            EntryResult::failed(
                                p.shown(),
                                format!("{}: cannot create directory: {err}", show(p.shown())),
                            )
                            .of_kind(EntryKind::Dir),
                        );
                    }
                }
            }
        }
        // 3. Files, concurrently: small ones many to a call, the rest one by
        //    one — those the destination does not already hold.
        let mut wanted: Vec<(Place, &RawPath, u64, Option<&Stamp>)> = Vec::new();
        for e in &entries {
            if let PlanEntry::File {
                src,
                rel,
                size,
                stamp,
            } = e
            {
                let Some(place) = failed_dirs.admit(place_of(rel), root, &mut results) else {
                    continue;
                };
                wanted.push((place, src, *size, stamp.as_ref()));
            }
        }
        let file_ids = |stamp: Option<&Stamp>| -> Ids { stamp.and_then(|s| ids_of(&s.owner)) };
        let places: Vec<Place> = wanted.iter().map(|(p, ..)| p.clone()).collect();
        let looking = Instant::now();
        let seen = match look_parallel(places).await {
            Ok(seen) => seen,
            Err(e) => {
                results.push(EntryResult::failed(dest, e));
                *broken = true;
                return results;
            }
        };
        tracing::debug!(
            "looked at {} destinations in {:?}",
            seen.len(),
            looking.elapsed()
        );
        let mut files: Vec<FileJob> = Vec::new();
        let mut to_hash: Vec<ToHash> = Vec::new();
        for ((place, src, size, stamp), seen) in wanted.into_iter().zip(seen) {
            let found = match seen {
                Ok(f) => f,
                Err(e) => {
                    let shown = show(place.shown());
                    results.push(
                        EntryResult::failed(
                            place.shown(),
                            format!("{shown}: cannot look at it: {}", describe(e)),
                        )
                        .of_kind(EntryKind::File),
                    );
                    continue;
                }
            };
            let ids = file_ids(stamp);
            if found.is_some_and(|f| f.kind == rustix::fs::FileType::Directory)
                && !is_empty_dir(&place)
            {
                // rsync refuses too (without --force or --delete).
                let shown = show(place.shown());
                results.push(
                    EntryResult::failed(
                        place.shown(),
                        format!(
                            "{shown}: cannot replace a directory that is not empty with a file"
                        ),
                    )
                    .of_kind(EntryKind::File),
                );
                continue;
            }
            match file_verdict(plan.compare, size, stamp, ids, found.as_ref()) {
                Verdict::Send {
                    existed,
                    changes: what,
                } => files.push(FileJob {
                    index: files.len(),
                    src: src.clone(),
                    place,
                    size,
                    status: if existed {
                        Status::Changed
                    } else {
                        Status::Created
                    },
                    changes: what,
                    before: found,
                }),
                Verdict::Keep(fixes) => results.push(keep_file(&place, &fixes, stamp, plan)),
                Verdict::Hash => {
                    if let Some(found) = found {
                        to_hash.push((place, src.clone(), stamp.cloned(), ids, found, size));
                    }
                }
            }
        }
        if !to_hash.is_empty() {
            let same = checksums(router, plan.server, &to_hash).await;
            for ((place, src, stamp, ids, found, size), same) in to_hash.into_iter().zip(same) {
                match same.map(|same| after_hash(same, stamp.as_ref(), ids, &found)) {
                    Ok(Verdict::Keep(fixes)) => {
                        results.push(keep_file(&place, &fixes, stamp.as_ref(), plan))
                    }
                    Ok(v @ (Verdict::Send { .. } | Verdict::Hash)) => files.push(FileJob {
                        index: files.len(),
                        src,
                        place,
                        size,
                        status: Status::Changed,
                        changes: match v {
                            Verdict::Send { changes: what, .. } => what,
                            _ => changes::CONTENT,
                        },
                        before: Some(found),
                    }),
                    Err(e) => results.push(
                        EntryResult::failed(place.shown(), format!("{}: {e}", show(place.shown())))
                            .of_kind(EntryKind::File),
                    ),
                }
            }
        }
        if plan.dry_run {
            for f in files {
                let mut r = EntryResult::done(f.place.shown(), EntryKind::File, f.status)
                    .with_changes(f.changes);
                r.bytes = f.size;
                results.push(r);
            }
            links_and_specials(
                plan,
                &entries,
                &place_of,
                root,
                failed_dirs,
                &mut results,
                &ids_of,
                true,
            );
            return collapse_alike(results);
        }
        let how: Vec<Sent> = files
            .iter()
            .map(|f| Sent {
                status: f.status,
                changes: f.changes,
                before: f.before,
            })
            .collect();
        let single = files.len() == 1;
        let (small, large): (Vec<FileJob>, Vec<FileJob>) = files
            .into_iter()
            .partition(|f| !single && f.size <= SMALL_FILE_MAX);
        // At most half the large fetches the server queues per requester (it
        // refuses past its cap): a transfer's slot there is freed only after
        // its last acknowledgement, a moment after this side is done with it,
        // so the next fetch must not depend on that race (seen in
        // hostile::a_target_cannot_multiply_its_fetch_cap_with_ids_it_owns).
        let sem = Arc::new(Semaphore::new(
            (plan.parallel as usize).clamp(1, super::serve::MAX_FETCHES_PER_REQUESTER / 2),
        ));
        let batch_sem = Arc::new(Semaphore::new(SMALL_BATCHES_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        let held = HeldFiles::from_rlimit();
        let early_sync = (plan.options.fsync && small.len() >= EARLY_SYNC_MIN_FILES)
            .then(|| EarlySync::new(root.clone()));
        let fetch_context = || FetchContext {
            router: router.clone(),
            server: plan.server,
            temps: temps.clone(),
            opts: plan.options.clone(),
            held: held.clone(),
            sizes_bound: plan.sizes_bound,
        };
        for batch in small_batches(small) {
            let ctx = fetch_context();
            let sem = batch_sem.clone();
            let early = early_sync.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let done = fetch_batch(ctx, batch).await;
                if let Some(early) = early {
                    early.kick().await;
                }
                done
            });
        }
        for job in large {
            let ctx = fetch_context();
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                vec![fetch_one(&ctx, job, single).await]
            });
        }
        let mut outcomes: Vec<Outcome> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) => outcomes.extend(o),
                Err(e) => results.push(EntryResult::failed(
                    plan.dest.as_path(),
                    format!("internal error: {e}"),
                )),
            }
        }
        outcomes.sort_by_key(|(i, _, _)| *i);
        if cancel.load(Ordering::SeqCst) {
            // Dropping the received files discards them (an anonymous temp
            // file simply vanishes).
            drop(outcomes);
            results.push(cancelled(dest));
            *broken = true;
            return results;
        }
        // 4. Batched durability for many files.
        let pending_dirs: BTreeSet<PathBuf> = outcomes
            .iter()
            .filter(|(_, _, r)| matches!(r, Ok(Done::Pending(_))))
            .map(|(_, p, _)| p.parent_rel().to_path_buf())
            .collect();
        // The file system work from here on runs on blocking threads: a
        // syncfs can take a while, and this context's runtime must keep
        // answering its stream meanwhile.
        let mut sync_error = None;
        if plan.options.fsync && !pending_dirs.is_empty() {
            if let Some(early) = &early_sync {
                early.wait().await;
            }
            let (dirs, root) = (pending_dirs.clone(), root.clone());
            sync_error = match tokio::task::spawn_blocking(move || syncfs_all(&root, &dirs)).await {
                Ok(r) => r.err(),
                Err(e) => Some(format!("internal error syncing: {e}")),
            };
        }
        results.extend(put_in_place(outcomes, sync_error.clone(), &how).await);
        if plan.options.fsync && sync_error.is_none() {
            let root = root.clone();
            let synced = tokio::task::spawn_blocking(move || {
                let mut failed = Vec::new();
                for d in &pending_dirs {
                    if let Err(e) = open_for_sync(&root, d).and_then(|f| rustix::fs::fsync(&f)) {
                        let shown = root.path().join(d);
                        failed.push(EntryResult::failed(
                            &shown,
                            format!("{}: fsync directory: {}", show(&shown), describe(e)),
                        ));
                    }
                }
                failed
            })
            .await;
            match synced {
                Ok(failed) => results.extend(failed),
                Err(e) => results.push(EntryResult::failed(
                    plan.dest.as_path(),
                    format!("internal error syncing directories: {e}"),
                )),
            }
        }
        if cancel.load(Ordering::SeqCst) {
            results.push(cancelled(dest));
            *broken = true;
            return results;
        }
        // Symlinks, hard links and special files, once the files are in: like
        // them, an existing entry is replaced only when the push is final.
        links_and_specials(
            plan,
            &entries,
            &place_of,
            root,
            failed_dirs,
            &mut results,
            &ids_of,
            false,
        );
        collapse_alike(results)
    }

    /// Ends the push: directory metadata (deepest first, now that their
    /// contents are in), DEST's own, then `--delete` with what the walk
    /// learnt (`end`); returns their results and those of the
    /// directories that failed.
    pub async fn finish(&mut self, cancel: &AtomicBool, end: PushEnd) -> Vec<EntryResult> {
        if self.broken {
            return Vec::new();
        }
        self.plan.delete.incomplete.extend(end.incomplete);
        self.plan.delete.keep.extend(end.keep);
        let Session {
            plan,
            dest,
            opened,
            announced,
            failed_dirs,
            dirs,
            seen,
            started,
            ..
        } = self;
        let Some(Opened {
            root,
            top,
            dest_existed,
            dest_before,
        }) = opened
        else {
            return all_new(&[], dest, !std::mem::replace(announced, true));
        };
        if cancel.load(Ordering::SeqCst) {
            return vec![cancelled(dest)];
        }
        let ids_of = |owner: &Option<Owner>| -> Ids {
            owner
                .as_ref()
                .filter(|_| plan.options.preserve_owner)
                .map(Owner::ids)
        };
        let rel_of = |rel: &RawPath| -> PathBuf { rel_beneath(top, rel) };
        // `--delete` first, now that every entry is in place (in a dry
        // run, what it would remove): removing an entry changes its
        // directory's mtime, so directories get theirs after it.
        let mut results = super::delete::after_push(plan, root, &rel_of, cancel, seen).await;
        let mut dirs = std::mem::take(dirs);
        // 5. Directory metadata, deepest first: now that their contents are in.
        dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.rel().components().count()));
        for (p, mode, sec, nsec, ids, mut status, mut changed, xattrs) in dirs {
            // Extended attributes first (see `PendingFile::apply_meta`), only
            // where they differ.
            let set_xattrs = super::xattr::sync_place(&p, &xattrs, plan.options.xattrs);
            if set_xattrs == Ok(true) && status == Status::Unchanged {
                (status, changed) = (Status::Changed, changed | changes::XATTRS);
            }
            // Only what differs now (entries landing in it changed its
            // mtime): a directory that matches is not touched, not even its
            // ctime.
            let now = look_at(&p).ok().flatten();
            let needed =
                now.is_none_or(|f| !Fixes::needed(&f, mode, Some((sec, nsec)), ids).is_empty());
            let r = landed(
                &p,
                EntryKind::Dir,
                status,
                "set directory metadata",
                set_xattrs.and_then(|_| {
                    if needed {
                        set_dir_meta(&p, mode, sec, nsec, ids)
                    } else {
                        Ok(())
                    }
                }),
            );
            results.push(r.with_changes(changed));
        }
        let found = dest_existed.then_some(*dest_before).flatten();
        let end = Ending {
            plan,
            root,
            dest_is_root: top.is_none(),
            found,
        };
        let results = end.finish(&ids_of, std::mem::take(failed_dirs), results);
        tracing::debug!("push applied in {:?}", started.elapsed());
        results
    }
}

/// Where an entry lands, relative to the root: `rel` itself beneath
/// DEST, or with its first component (the source's name) renamed to
/// DEST's own name beneath DEST's parent.
fn rel_beneath(top: &Option<OsString>, rel: &RawPath) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    match top {
        None => rel.as_path().to_path_buf(),
        Some(name) => {
            let rest = first_component_stripped(rel.as_bytes());
            if rest.is_empty() {
                PathBuf::from(name)
            } else {
                Path::new(name).join(std::ffi::OsStr::from_bytes(rest))
            }
        }
    }
}

/// What the end of a push (dry or not) needs.
struct Ending<'a> {
    plan: &'a PushPlan,
    root: &'a Arc<Root>,
    /// DEST is the push's root (entries go into it).
    dest_is_root: bool,
    /// DEST as the push found it (`None`: this push created it).
    found: Option<Found>,
}

impl Ending<'_> {
    /// DEST's own metadata (a contents copy's source directory), the
    /// failed directories' results, then the results with alike failures
    /// grouped.
    fn finish(
        self,
        ids_of: &(dyn Fn(&Option<Owner>) -> Ids + Sync),
        failed_dirs: FailedDirs,
        mut results: Vec<EntryResult>,
    ) -> Vec<EntryResult> {
        if self.dest_is_root
            && let Some(r) = root_meta(self.plan, self.root, self.found, ids_of)
        {
            results.push(r);
        }
        results.extend(failed_dirs.into_results());
        collapse_alike(results)
    }
}

/// Failures in one directory with the same cause (say, 2,000 files in a
/// read-only directory) become one result for the directory that says
/// how many entries failed and names the first, instead of one per entry.
fn collapse_alike(results: Vec<EntryResult>) -> Vec<EntryResult> {
    // (directory, cause) → (index of the first, how many).
    let mut groups: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let key = |r: &EntryResult| -> Option<(String, String)> {
        let e = r.error.as_deref()?;
        let cause = e.strip_prefix(r.path.as_str())?.strip_prefix(": ")?;
        let (dir, _) = r.path.rsplit_once('/')?;
        Some((dir.to_string(), cause.to_string()))
    };
    for (i, r) in results.iter().enumerate() {
        if let Some(k) = key(r) {
            groups.entry(k).or_insert((i, 0)).1 += 1;
        }
    }
    if groups.values().all(|&(_, n)| n < 2) {
        return results;
    }
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        let Some(k) = key(&r) else {
            out.push(r);
            continue;
        };
        match groups.get(&k) {
            Some(&(first, n)) if n >= 2 => {
                if i == first {
                    let (dir, cause) = k;
                    let error =
                        format!("{dir}: {n} entries failed: {cause} (the first: {})", r.path);
                    let dir_bytes = r.path_bytes.as_ref().and_then(|b| {
                        let cut = b.as_bytes().iter().rposition(|&c| c == b'/')?;
                        Some(RawPath::from_bytes(b.as_bytes()[..cut].to_vec()))
                            .filter(|d| d.to_str().is_none())
                    });
                    out.push(EntryResult {
                        path: dir,
                        path_bytes: dir_bytes,
                        error: Some(error),
                        ..EntryResult::failed(Path::new(""), String::new())
                    });
                }
            }
            _ => out.push(r),
        }
    }
    out
}

/// Opens the push's root: DEST when entries go into it, else DEST's
/// parent (the copy is then named DEST). The path up to there is the
/// user's and is followed, as `cp` does. Returns the root and, in the
/// second case, DEST's own name.
fn open_root(plan: &PushPlan, dest: &Path) -> Result<(Arc<Root>, Option<OsString>), String> {
    if plan.into_dir
        && let Err(e) = std::fs::create_dir_all(dest)
    {
        return Err(format!("{}: cannot create directory: {e}", show(dest)));
    }
    if plan.into_dir || dest.is_dir() {
        let root = Root::open(dest)
            .map_err(|e| format!("{}: cannot open directory: {}", show(dest), plain(&e)))?;
        return Ok((root, None));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| format!("{}: names no file to create", show(dest)))?;
    let parent = dest.parent().unwrap_or(Path::new(""));
    let root = Root::open(parent).map_err(|e| {
        let shown = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        format!(
            "{}: cannot open its directory {}: {}",
            show(dest),
            show(shown),
            plain(&e)
        )
    })?;
    Ok((root, Some(name.to_os_string())))
}

/// Directories whose creation failed, so that what lies below each is
/// reported once with it rather than once per entry.
#[derive(Default)]
struct FailedDirs {
    /// Relative path → (its result, entries skipped below it).
    dirs: BTreeMap<PathBuf, (EntryResult, u64)>,
}

impl FailedDirs {
    fn insert(&mut self, p: &Place, result: EntryResult) {
        self.dirs.insert(p.rel().to_path_buf(), (result, 0));
    }

    /// The place to create, or `None` (counted) when it lies below a
    /// directory that failed, or is unusable (reported).
    fn admit(
        &mut self,
        place: Result<Place, rustix::io::Errno>,
        root: &Arc<Root>,
        results: &mut Vec<EntryResult>,
    ) -> Option<Place> {
        let p = match place {
            Ok(p) => p,
            Err(e) => {
                results.push(EntryResult::failed(
                    root.path(),
                    format!(
                        "{}: unusable entry name: {}",
                        show(root.path()),
                        describe(e)
                    ),
                ));
                return None;
            }
        };
        if !self.dirs.is_empty() {
            for a in p.rel().ancestors().skip(1) {
                if let Some((_, n)) = self.dirs.get_mut(a) {
                    *n += 1;
                    return None;
                }
            }
        }
        Some(p)
    }

    /// Each failed directory's result, saying how many entries below it
    /// were not copied.
    fn into_results(self) -> Vec<EntryResult> {
        self.dirs
            .into_values()
            .map(|(mut r, n)| {
                if n > 0
                    && let Some(e) = &mut r.error
                {
                    let s = if n == 1 { "y" } else { "ies" };
                    e.push_str(&format!("; {n} entr{s} below it not copied"));
                }
                r
            })
            .collect()
    }
}

/// Creates directory `p` (mode 0700 until its contents are in), or
/// accepts the directory already there. Anything else there — a symlink
/// or a file — is replaced by a directory, as `rsync -a` does, unless
/// it is DEST itself (`is_dest`). Never follows a symlink.
fn make_dir(p: &Place, is_dest: bool) -> Result<Option<Found>, String> {
    use rustix::fs::{AtFlags, FileType, Mode};
    let dir = p.open_parent().map_err(describe)?;
    let private = Mode::from_raw_mode(0o700);
    match rustix::fs::mkdirat(&dir, p.name(), private) {
        Ok(()) => return Ok(None),
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(describe(e)),
    }
    let st = rustix::fs::statat(&dir, p.name(), AtFlags::SYMLINK_NOFOLLOW).map_err(describe)?;
    let before = Found::of(&st);
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        return Ok(Some(before));
    }
    if is_dest {
        return Err("exists and is not a directory".into());
    }
    rustix::fs::unlinkat(&dir, p.name(), AtFlags::empty())
        .map_err(|e| format!("cannot replace the non-directory there: {}", describe(e)))?;
    rustix::fs::mkdirat(&dir, p.name(), private).map_err(describe)?;
    Ok(Some(before))
}

/// Opens the directory `rel` beneath `root` for fsync or syncfs (an
/// `O_PATH` handle can do neither).
fn open_for_sync(root: &Root, rel: &Path) -> Result<OwnedFd, rustix::io::Errno> {
    root.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Applies a directory's mode and times through a handle on it (opened
/// without following any symlink, so the change cannot land elsewhere).
fn set_dir_meta(p: &Place, mode: u32, sec: i64, nsec: u32, ids: Ids) -> Result<(), String> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    };
    let mode = rustix::fs::Mode::from_raw_mode(mode);
    match p
        .root()
        .open_beneath(p.rel(), OFlags::RDONLY | OFlags::DIRECTORY)
    {
        Ok(fd) => {
            // Owner first: a chown clears the set-id bits the mode sets.
            if let Some((uid, gid)) = ids {
                rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(describe)?;
            }
            rustix::fs::fchmod(&fd, mode).map_err(describe)?;
            rustix::fs::futimens(&fd, &ts).map_err(describe)
        }
        Err(rustix::io::Errno::ACCESS) => {
            // Not readable by us (e.g. an existing 0300 directory): act on
            // an O_PATH handle through its /proc link, which names exactly
            // that inode.
            let fd = p.root().open_dir(p.rel()).map_err(describe)?;
            let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            if let Some((uid, gid)) = ids {
                rustix::fs::chownat(
                    &fd,
                    "",
                    Some(uid),
                    Some(gid),
                    rustix::fs::AtFlags::EMPTY_PATH,
                )
                .map_err(describe)?;
            }
            rustix::fs::chmodat(
                rustix::fs::CWD,
                via.as_str(),
                mode,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(describe)?;
            rustix::fs::utimensat(
                rustix::fs::CWD,
                via.as_str(),
                &ts,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(describe)
        }
        Err(e) => Err(describe(e)),
    }
}

enum Done {
    Committed(Summary),
    Pending(Box<PendingFile>),
}

/// One file of the plan: its place in the plan, where it comes from and
/// goes, and the size the plan saw.
struct FileJob {
    index: usize,
    src: RawPath,
    place: Place,
    size: u64,
    /// Created or Changed, once it lands.
    status: Status,
    /// What differed ([`changes`] flags).
    changes: u8,
    /// What the destination held when it was checked.
    before: Option<Found>,
}

/// How a sent file is reported, and what its destination held when it
/// was checked (it is not replaced if that changed meanwhile).
#[derive(Clone, Copy)]
struct Sent {
    status: Status,
    changes: u8,
    before: Option<Found>,
}

/// Whether the destination of `p` still holds what the check saw: the
/// same inode, size and mtime, or still nothing. Another writer's change
/// since then is not silently overwritten.
fn still_as_checked(p: &Place, before: Option<&Found>) -> Result<(), String> {
    let now = look_at(p).map_err(|e| format!("{}: {}", show(p.shown()), describe(e)))?;
    let same = match (before, now.as_ref()) {
        (None, None) => true,
        (Some(b), Some(n)) => {
            b.dev == n.dev
                && b.ino == n.ino
                && b.kind == n.kind
                && b.size == n.size
                && b.same_time(n.mtime_sec, n.mtime_nsec)
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "{}: changed at the destination while the push ran; not replaced \
             (push again to replace it)",
            show(p.shown())
        ))
    }
}

/// A file's outcome: its plan index, destination, and result.
type Outcome = (usize, Place, Result<Done, String>);

/// What every fetch needs.
struct FetchContext {
    router: Router,
    server: ContextId,
    temps: TempFiles,
    opts: ReceiveOptions,
    held: Arc<HeldFiles>,
    /// [`PushPlan::sizes_bound`].
    sizes_bound: bool,
}

/// With sizes bound, why a file of `size` bytes offered for an entry
/// announced at `announced` is refused.
fn over_announced(sizes_bound: bool, announced: u64, size: u64) -> Option<String> {
    (sizes_bound && size > announced).then(|| {
        format!(
            "the source sent {size} bytes for a file it announced at {announced}; \
             refused (pull again if it grew meanwhile)"
        )
    })
}

/// How many received files may wait for the batched sync with their
/// descriptors still open (and so still nameless, see
/// [`PendingFile::finish_open`]); beyond that, files get a hidden name
/// and their descriptor is closed.
struct HeldFiles {
    left: std::sync::atomic::AtomicUsize,
}

impl HeldFiles {
    /// Raises this process's soft limit on open files to its hard limit
    /// (as Go's runtime does at start) and allows all but a reserve of it.
    fn from_rlimit() -> Arc<HeldFiles> {
        let limit = super::serve::raise_open_files_limit().min(1 << 20) as usize;
        Arc::new(HeldFiles {
            left: std::sync::atomic::AtomicUsize::new(limit.saturating_sub(FD_RESERVE)),
        })
    }

    /// Takes one descriptor from the budget, if any is left.
    fn take_one(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Descriptors left for everything else (streams, directories, files
/// still being received) when files are held open.
const FD_RESERVE: usize = 512;

/// `fetch_small` calls in flight at once: enough to keep the link busy
/// while the previous reply is written out, few enough that at most this
/// many × [`SMALL_BATCH_BYTES`] of replies are buffered.
const SMALL_BATCHES_IN_FLIGHT: usize = 4;

/// Small files in a push from which on the destination's file system is
/// synced in the background while they arrive ([`EarlySync`]).
const EARLY_SYNC_MIN_FILES: usize = 2048;

/// Most files asked for in one `fetch_small`.
const SMALL_BATCH_FILES: usize = 512;

/// Groups small files into `fetch_small` calls of at most
/// [`SMALL_BATCH_FILES`] files and [`SMALL_BATCH_BYTES`] of data (by the
/// plan's sizes; the server enforces the real budget).
fn small_batches(small: Vec<FileJob>) -> Vec<Vec<FileJob>> {
    let mut batches = Vec::new();
    let mut batch: Vec<FileJob> = Vec::new();
    let mut bytes = 0u64;
    for job in small {
        if !batch.is_empty()
            && (batch.len() >= SMALL_BATCH_FILES || bytes + job.size > SMALL_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += job.size;
        batch.push(job);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Fetches one file through its own transfer. The only file of a plan is
/// committed durably at once; one of many is finished (its descriptor
/// closed) and left for the batched sync.
async fn fetch_one(ctx: &FetchContext, job: FileJob, single: bool) -> Outcome {
    let r = if ctx.sizes_bound {
        receive::receive_at_most(
            &ctx.router,
            ctx.server,
            &job.src,
            &job.place,
            &ctx.temps,
            &ctx.opts,
            job.size,
        )
        .await
    } else {
        receive::receive_with(
            &ctx.router,
            ctx.server,
            &job.src,
            &job.place,
            &ctx.temps,
            &ctx.opts,
        )
        .await
    };
    let r = match r {
        Ok(p) if over_announced(ctx.sizes_bound, job.size, p.bytes).is_some() => Err(format!(
            "{}: {}",
            show(job.place.shown()),
            over_announced(ctx.sizes_bound, job.size, p.bytes).unwrap_or_default()
        )),
        Ok(mut p) => {
            let done = if single {
                let s = Summary {
                    bytes: p.bytes,
                    digest: p.digest,
                    started: p.started,
                    span: p.data_span_ns,
                };
                match still_as_checked(&job.place, job.before.as_ref()) {
                    Ok(()) => p.commit(&ctx.opts).map(|()| Done::Committed(s)),
                    Err(e) => return (job.index, job.place, Err(e)),
                }
            } else if ctx.held.take_one() {
                p.finish_open(&ctx.opts)
                    .map(|()| Done::Pending(Box::new(p)))
            } else {
                p.finish(&ctx.opts, false)
                    .map(|()| Done::Pending(Box::new(p)))
            };
            done.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    (job.index, job.place, r)
}

/// Fetches a batch of small files in one `fetch_small` call and writes
/// them on a blocking thread (so this context keeps reading its stream
/// meanwhile). Files the server found too large by now are fetched one by
/// one.
async fn fetch_batch(ctx: FetchContext, batch: Vec<FileJob>) -> Vec<Outcome> {
    let started = Instant::now();
    let args = FetchSmallArgs {
        paths: batch.iter().map(|j| j.src.clone()).collect(),
    };
    let reply: Result<Vec<SmallFile>, _> = ctx
        .router
        .call_service(ctx.server, FILE_SERVICE, "fetch_small", &args)
        .await;
    let all_failed = |batch: Vec<FileJob>, why: String| -> Vec<Outcome> {
        batch
            .into_iter()
            .map(|j| {
                let e = format!(
                    "{}: fetch of {} failed: {why}",
                    show(j.place.shown()),
                    j.src
                );
                (j.index, j.place, Err(e))
            })
            .collect()
    };
    let files = match reply {
        Ok(files) if files.len() == batch.len() => files,
        Ok(files) => {
            let why = format!(
                "the server answered {} of {} files",
                files.len(),
                batch.len()
            );
            return all_failed(batch, why);
        }
        Err(why) => return all_failed(batch, why.to_string()),
    };
    let (temps, opts, held) = (ctx.temps.clone(), ctx.opts.clone(), ctx.held.clone());
    let sizes_bound = ctx.sizes_bound;
    let places: Vec<(usize, Place)> = batch.iter().map(|j| (j.index, j.place.clone())).collect();
    let written = tokio::task::spawn_blocking(move || {
        let mut done = Vec::with_capacity(batch.len());
        let mut too_large = Vec::new();
        for (job, file) in batch.into_iter().zip(files) {
            let r = match super::compress::open_small(file) {
                SmallFile::Data { meta, .. } | SmallFile::Compressed { meta, .. }
                    if over_announced(sizes_bound, job.size, meta.size).is_some() =>
                {
                    Err(format!(
                        "{}: {}",
                        show(job.place.shown()),
                        over_announced(sizes_bound, job.size, meta.size).unwrap_or_default()
                    ))
                }
                SmallFile::Data { meta, data, digest } => {
                    receive::receive_whole(&job.place, &temps, &meta, &data, &digest, started)
                        .and_then(|mut p| {
                            if held.take_one() {
                                p.finish_open(&opts)
                            } else {
                                p.finish(&opts, false)
                            }
                            .map(|()| Done::Pending(Box::new(p)))
                        })
                        .map_err(|e| e.to_string())
                }
                SmallFile::TooLarge => {
                    too_large.push(job);
                    continue;
                }
                SmallFile::Failed(why) => Err(format!(
                    "{}: fetch of {} failed: {why}",
                    show(job.place.shown()),
                    job.src
                )),
                // open_small decodes these; nothing else may land.
                SmallFile::Compressed { .. } => Err(format!(
                    "{}: fetch of {} failed: compressed data was not decoded",
                    show(job.place.shown()),
                    job.src
                )),
            };
            done.push((job.index, job.place, r));
        }
        (done, too_large)
    })
    .await;
    let (mut done, too_large) = match written {
        Ok(w) => w,
        Err(e) => {
            return places
                .into_iter()
                .map(|(i, p)| (i, p, Err(format!("internal error writing files: {e}"))))
                .collect();
        }
    };
    for job in too_large {
        done.push(fetch_one(&ctx, job, false).await);
    }
    done
}

struct Summary {
    bytes: u64,
    digest: [u8; 32],
    started: Instant,
    span: (u64, u64),
}

fn file_ok(path: &Path, s: &Summary, status: Status, changed: u8) -> EntryResult {
    EntryResult {
        path: show(path),
        path_bytes: raw_if_not_utf8(path),
        bytes: s.bytes,
        seconds: s.started.elapsed().as_secs_f64(),
        digest: Some(hex(&s.digest)),
        error: None,
        data_span_ns: s.span,
        status,
        kind: EntryKind::File,
        changes: changed,
    }
}

/// Threads renaming verified files into place at the end of a push: the
/// renames of a 10,000-file push took a tenth of its time on one thread,
/// and renames in different directories do not contend.
const RENAME_THREADS: usize = 2;

/// Renames every pending file over its destination (unless the batched
/// sync failed) and turns every outcome into a result, in plan order.
async fn put_in_place(
    outcomes: Vec<Outcome>,
    sync_error: Option<String>,
    how: &[Sent],
) -> Vec<EntryResult> {
    // Each file's status, by its index among the files sent.
    let outcomes: Vec<(Outcome, Sent)> = outcomes
        .into_iter()
        .map(|o| {
            let h = how.get(o.0).copied().unwrap_or(Sent {
                status: Status::Created,
                changes: changes::CONTENT,
                before: None,
            });
            (o, h)
        })
        .collect();
    let per_thread = outcomes.len().div_ceil(RENAME_THREADS).max(1);
    let mut parts = Vec::new();
    let mut rest = outcomes.into_iter();
    loop {
        let part: Vec<(Outcome, Sent)> = rest.by_ref().take(per_thread).collect();
        if part.is_empty() {
            break;
        }
        let sync_error = sync_error.clone();
        parts.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|((_, place, r), how)| (place.shown().to_path_buf(), r, how))
                .map(|(path, r, sent)| (path, r, sent.status, sent.changes, sent.before))
                .map(|(path, r, status, changed, before)| match r {
                    Ok(Done::Committed(s)) => file_ok(&path, &s, status, changed),
                    Ok(Done::Pending(p)) => {
                        if let Some(e) = &sync_error {
                            EntryResult::failed(&path, format!("{}: {e}", show(&path)))
                        } else {
                            let s = Summary {
                                bytes: p.bytes,
                                digest: p.digest,
                                started: p.started,
                                span: p.data_span_ns,
                            };
                            let cleared =
                                still_as_checked(p.place(), before.as_ref()).and_then(|()| {
                                    if changed & changes::TYPE != 0 {
                                        remove_empty_dir(p.place())
                                    } else {
                                        Ok(())
                                    }
                                });
                            match cleared.and_then(|()| (*p).rename().map_err(|e| e.to_string())) {
                                Ok(()) => file_ok(&path, &s, status, changed),
                                Err(e) => EntryResult::failed(&path, e).of_kind(EntryKind::File),
                            }
                        }
                    }
                    Err(e) => EntryResult::failed(&path, e).of_kind(EntryKind::File),
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut results = Vec::new();
    for part in parts {
        match part.await {
            Ok(r) => results.extend(r),
            Err(e) => results.push(EntryResult::failed(
                Path::new("?"),
                format!("internal error renaming files into place: {e}"),
            )),
        }
    }
    results
}

/// Syncs the destination's file system in the background while a push of
/// many files is still arriving, so the final `syncfs` finds most of the
/// data, inodes and journal already on disk; it only ever runs one at a
/// time, and only helps: the final sync still covers everything.
struct EarlySync {
    dir: Arc<Root>,
    running: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EarlySync {
    fn new(dir: Arc<Root>) -> Arc<EarlySync> {
        Arc::new(EarlySync {
            dir,
            running: tokio::sync::Mutex::new(None),
        })
    }

    /// Starts a sync unless one is running.
    async fn kick(&self) {
        let mut running = self.running.lock().await;
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let dir = self.dir.clone();
        *running = Some(tokio::task::spawn_blocking(move || {
            if let Ok(f) = open_for_sync(&dir, Path::new("")) {
                let _ = rustix::fs::syncfs(&f);
            }
        }));
    }

    /// Waits for a running sync to end.
    async fn wait(&self) {
        if let Some(h) = self.running.lock().await.take() {
            let _ = h.await;
        }
    }
}

fn syncfs_all(root: &Root, dirs: &BTreeSet<PathBuf>) -> Result<(), String> {
    let mut seen_devs = BTreeSet::new();
    for d in dirs {
        let shown = || root.path().join(d).display().to_string();
        let f = open_for_sync(root, d)
            .map_err(|e| format!("open {} for sync: {}", shown(), describe(e)))?;
        let dev = rustix::fs::fstat(&f).map(|s| s.st_dev).unwrap_or(0);
        if seen_devs.insert(dev) {
            rustix::fs::syncfs(&f).map_err(|e| format!("syncfs on {}: {e}", shown()))?;
        }
    }
    Ok(())
}

/// Access and modification time both `sec`.`nsec`.
fn times(sec: i64, nsec: u32) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A temp name for `p` in its directory.
fn temp_name(p: &Place, what: &str) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&p.name().as_bytes()[..p.name().len().min(80)]);
    tmp.extend_from_slice(format!(".ferrogen-{what}-{}.tmp", std::process::id()).as_bytes());
    OsString::from_vec(tmp)
}

/// Links `p` to the file at `first` (both beneath the root, no symlink
/// followed: `linkat` without `AT_SYMLINK_FOLLOW`), under a temp name
/// renamed into place.
fn make_hard_link(first: &Place, p: &Place) -> Result<(), String> {
    use rustix::fs::AtFlags;
    let from_dir = first.open_parent().map_err(describe)?;
    let st = rustix::fs::statat(&from_dir, first.name(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| format!("{}: {}", show(first.shown()), describe(e)))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("{} is not a regular file", show(first.shown())));
    }
    let dir = p.open_parent().map_err(describe)?;
    let tmp = temp_name(p, "hardlink");
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    rustix::fs::linkat(&from_dir, first.name(), &dir, &tmp, AtFlags::empty()).map_err(describe)?;
    let r = rustix::fs::renameat(&dir, &tmp, &dir, p.name()).map_err(describe);
    // Renaming over a name that is already a link to the same file does
    // nothing and leaves the temp name: remove it either way.
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    r
}

/// Creates the special file `p` under a temp name, gives it its mode and
/// times through a handle on the node itself (so a name swapped for a
/// symlink meanwhile is never followed), and renames it into place.
fn make_special(
    p: &Place,
    kind: SpecialKind,
    mode: u32,
    rdev: u64,
    ts: &rustix::fs::Timestamps,
    ids: Ids,
) -> Result<(), String> {
    use rustix::fs::{AtFlags, Mode};
    let dir = p.open_parent().map_err(describe)?;
    let tmp = temp_name(p, "node");
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    rustix::fs::mknodat(
        &dir,
        &tmp,
        kind.file_type(),
        Mode::from_raw_mode(0o600),
        rdev as _,
    )
    .map_err(describe)?;
    let finish = || -> Result<(), String> {
        let node = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(describe)?;
        let st = rustix::fs::fstat(&node).map_err(describe)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != kind.file_type() {
            return Err("replaced while being created".into());
        }
        if let Some((uid, gid)) = ids {
            rustix::fs::chownat(&node, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)
                .map_err(describe)?;
        }
        let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
        rustix::fs::chmodat(
            rustix::fs::CWD,
            via.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )
        .map_err(describe)?;
        rustix::fs::utimensat(rustix::fs::CWD, via.as_str(), ts, AtFlags::empty())
            .map_err(describe)?;
        rustix::fs::renameat(&dir, &tmp, &dir, p.name()).map_err(describe)
    };
    finish().inspect_err(|_| {
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    })
}

/// Creates the symlink `p` under a temp name and renames it into place,
/// all relative to its directory's handle.
fn make_symlink(
    target: &RawPath,
    ts: &rustix::fs::Timestamps,
    ids: Ids,
    p: &Place,
) -> Result<(), String> {
    let dir = p.open_parent().map_err(describe)?;
    let tmp = temp_name(p, "link");
    let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
    rustix::fs::symlinkat(target.as_bytes(), &dir, &tmp).map_err(describe)?;
    // The link's own owner and times (never its target's), as `cp -a`
    // and `rsync -a`.
    let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    ids.map_or(Ok(()), |(uid, gid)| {
        rustix::fs::chownat(&dir, &tmp, Some(uid), Some(gid), nofollow)
    })
    .and_then(|()| rustix::fs::utimensat(&dir, &tmp, ts, nofollow))
    .and_then(|()| rustix::fs::renameat(&dir, &tmp, &dir, p.name()))
    .map_err(|e| {
        let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
        describe(e)
    })
}

/// Whether `p` is a directory with nothing in it.
fn is_empty_dir(p: &Place) -> bool {
    let Ok(fd) = p.root().open_beneath(
        p.rel(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
    ) else {
        return false;
    };
    let Ok(mut dir) = rustix::fs::Dir::read_from(&fd) else {
        return false;
    };
    dir.all(|e| e.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b"..")))
}

/// Removes the empty directory at `p` so a file can be renamed over it.
fn remove_empty_dir(p: &Place) -> Result<(), String> {
    let dir = p.open_parent().map_err(describe)?;
    match rustix::fs::unlinkat(&dir, p.name(), rustix::fs::AtFlags::REMOVEDIR) {
        // NOTDIR: a symlink or file was there; the rename replaces it.
        Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(()),
        Err(e) => Err(format!(
            "{}: cannot remove the directory in the way: {}",
            show(p.shown()),
            describe(e)
        )),
    }
}

/// A dry run's results when DEST does not exist: every entry created
/// (DEST itself first, when `with_dest`).
fn all_new(entries: &[PlanEntry], dest: &Path, with_dest: bool) -> Vec<EntryResult> {
    let mut out = Vec::with_capacity(entries.len() + 1);
    if with_dest {
        out.push(EntryResult::done(dest, EntryKind::Dir, Status::Created));
    }
    for e in entries {
        let (rel, kind, bytes) = match e {
            PlanEntry::Dir { rel, .. } => (rel, EntryKind::Dir, 0),
            PlanEntry::File { rel, size, .. } => (rel, EntryKind::File, *size),
            PlanEntry::Symlink { rel, .. } => (rel, EntryKind::Symlink, 0),
            PlanEntry::HardLink { rel, .. } => (rel, EntryKind::HardLink, 0),
            PlanEntry::Special { rel, .. } => (rel, EntryKind::Special, 0),
        };
        let mut r = EntryResult::done(&dest.join(rel.as_path()), kind, Status::Created);
        if kind == EntryKind::File {
            r.bytes = bytes;
            r.changes = changes::CONTENT;
        }
        out.push(r);
    }
    out
}

/// A contents copy's source directory's metadata applied to DEST itself
/// (the push's root), as rsync does; `None` without one. In a dry run,
/// only the status.
fn root_meta(
    plan: &PushPlan,
    root: &Root,
    before: Option<Found>,
    ids_of: &dyn Fn(&Option<Owner>) -> Ids,
) -> Option<EntryResult> {
    let Some(PlanEntry::Dir {
        mode,
        mtime_sec,
        mtime_nsec,
        owner,
        xattrs,
        ..
    }) = &plan.root
    else {
        return None;
    };
    let (mode, sec, nsec, ids) = (*mode, *mtime_sec, *mtime_nsec, ids_of(owner));
    let shown = root.path();
    // Judged as the push found it (None: DEST was created by this push).
    let (mut status, mut changed) = dir_status(before.as_ref(), mode, sec, nsec, ids);
    if plan.dry_run {
        return Some(EntryResult::done(shown, EntryKind::Dir, status).with_changes(changed));
    }
    let applied = (|| -> Result<(), String> {
        let fd = root
            .open_beneath(Path::new(""), OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(describe)?;
        if super::xattr::sync_fd(&fd, xattrs, plan.options.xattrs)? && status == Status::Unchanged {
            (status, changed) = (Status::Changed, changed | changes::XATTRS);
        }
        let now = Found::of(&rustix::fs::fstat(&fd).map_err(describe)?);
        if Fixes::needed(&now, mode, Some((sec, nsec)), ids).is_empty() {
            return Ok(());
        }
        if let Some((uid, gid)) = ids {
            rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(describe)?;
        }
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode)).map_err(describe)?;
        rustix::fs::futimens(&fd, &times(sec, nsec)).map_err(describe)
    })();
    Some(match applied {
        Ok(()) => EntryResult::done(shown, EntryKind::Dir, status).with_changes(changed),
        Err(e) => EntryResult::failed(
            shown,
            format!("{}: cannot set directory metadata: {e}", show(shown)),
        )
        .of_kind(EntryKind::Dir),
    })
}

/// The status of a directory of the plan, given what was at its name
/// before the push (`None`: nothing, so it is created).
fn dir_status(before: Option<&Found>, mode: u32, sec: i64, nsec: u32, ids: Ids) -> (Status, u8) {
    match before {
        None => (Status::Created, 0),
        Some(f) if f.kind != rustix::fs::FileType::Directory => (Status::Changed, changes::TYPE),
        Some(f) => {
            let fixes = Fixes::needed(f, mode, Some((sec, nsec)), ids);
            if fixes.is_empty() {
                (Status::Unchanged, 0)
            } else {
                (Status::Changed, fixes.changes)
            }
        }
    }
}

/// A file whose data is already the source's: unchanged, or changed by
/// setting `fixes` (only reported in a dry run).
fn keep(p: &Place, fixes: &Fixes, dry_run: bool) -> EntryResult {
    if fixes.is_empty() {
        return EntryResult::done(p.shown(), EntryKind::File, Status::Unchanged);
    }
    let r = if dry_run {
        Ok(())
    } else {
        uptodate::apply(p, fixes)
    };
    landed(p, EntryKind::File, Status::Changed, "set file metadata", r).with_changes(fixes.changes)
}

/// [`keep`], and with `-X`/`-A` the file's extended attributes (ACLs)
/// made the source's where they differ: a metadata change, as in rsync's
/// quick check (the data is not sent again).
fn keep_file(p: &Place, fixes: &Fixes, stamp: Option<&Stamp>, plan: &PushPlan) -> EntryResult {
    use super::xattr;
    let sel = plan.options.xattrs;
    let Some(want) = stamp
        .and_then(|s| s.xattrs.as_deref())
        .filter(|_| sel.any())
    else {
        return keep(p, fixes, plan.dry_run);
    };
    match xattr::read_place(p, sel) {
        Ok(have) if !xattr::differ(want, &have, sel) => keep(p, fixes, plan.dry_run),
        Ok(_) => {
            // Before the mode, as for a received file.
            let r = if plan.dry_run {
                Ok(())
            } else {
                xattr::sync_place(p, want, sel).and_then(|_| uptodate::apply(p, fixes))
            };
            landed(p, EntryKind::File, Status::Changed, "set file metadata", r)
                .with_changes(fixes.changes | changes::XATTRS)
        }
        Err(e) => EntryResult::failed(p.shown(), format!("{}: {e}", show(p.shown())))
            .of_kind(EntryKind::File),
    }
}

/// What each place holds now, looked at beneath its parent's handle (one
/// handle per run of places in the same directory, as a walk yields them).
fn look_many(places: &[Place]) -> Vec<Result<Option<Found>, rustix::io::Errno>> {
    use rustix::io::Errno;
    let mut parent: Option<(PathBuf, Result<OwnedFd, Errno>)> = None;
    let mut out = Vec::with_capacity(places.len());
    for p in places {
        let fresh = match &parent {
            Some((rel, _)) => rel != p.parent_rel(),
            None => true,
        };
        if fresh {
            parent = Some((p.parent_rel().to_path_buf(), p.open_parent()));
        }
        out.push(match &parent {
            Some((_, Ok(dir))) => uptodate::look(dir, p.name()),
            Some((_, Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP))) => Ok(None),
            Some((_, Err(e))) => Err(*e),
            None => Err(Errno::INVAL),
        });
    }
    out
}

/// Places looked at per blocking thread: a quick check of 100,000
/// unchanged files is mostly `lstat`s, which two threads halve.
const LOOK_SHARE: usize = 8192;

/// [`look_many`] split over blocking threads, in order.
async fn look_parallel(
    places: Vec<Place>,
) -> Result<Vec<Result<Option<Found>, rustix::io::Errno>>, String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let share = places.len().div_ceil(threads).max(LOOK_SHARE);
    let mut parts = Vec::new();
    let mut rest = places.into_iter();
    loop {
        let part: Vec<Place> = rest.by_ref().take(share).collect();
        if part.is_empty() {
            break;
        }
        parts.push(tokio::task::spawn_blocking(move || look_many(&part)));
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend(p.await.map_err(|e| format!("internal error: {e}"))?);
    }
    Ok(out)
}

/// A file `--checksum` hashes on both sides: its place, source, stamp,
/// owner ids, what is at the destination, and size.
type ToHash = (Place, RawPath, Option<Stamp>, Ids, Found, u64);

/// Most paths asked for in one `digests` call.
const DIGEST_BATCH_FILES: usize = super::MAX_DIGEST_PATHS;

/// For `--checksum`: whether each file at the destination has the same
/// BLAKE3 digest as its source. The destination's files are hashed here
/// while the server hashes the sources.
async fn checksums(
    router: &Router,
    server: ContextId,
    files: &[ToHash],
) -> Vec<Result<bool, String>> {
    let places: Vec<Place> = files.iter().map(|f| f.0.clone()).collect();
    let ours =
        tokio::task::spawn_blocking(move || places.iter().map(hash_place).collect::<Vec<_>>());
    // Batches of the most a call may name, several in flight (the server
    // reads as many at once per requester): one after the other, 10,000
    // files over a 20 ms link spent a second waiting.
    let mut calls = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(super::serve::SMALL_CALLS_PER_REQUESTER));
    for (i, batch) in files.chunks(DIGEST_BATCH_FILES).enumerate() {
        let args = DigestArgs {
            paths: batch.iter().map(|f| f.1.clone()).collect(),
        };
        let (router, slots, n) = (router.clone(), slots.clone(), batch.len());
        calls.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let reply: Result<Vec<FileDigest>, _> = router
                .call_service(server, FILE_SERVICE, "digests", &args)
                .await;
            let got: Vec<Result<[u8; 32], String>> = match reply {
                Ok(d) if d.len() == n => d
                    .into_iter()
                    .map(|d| match d {
                        FileDigest::Digest(x) => Ok(x),
                        FileDigest::Failed(why) => Err(format!("cannot hash the source: {why}")),
                    })
                    .collect(),
                Ok(d) => (0..n)
                    .map(|_| Err(format!("the server hashed {} of {n} files", d.len())))
                    .collect(),
                Err(e) => (0..n)
                    .map(|_| Err(format!("cannot hash the source: {e}")))
                    .collect(),
            };
            (i, got)
        });
    }
    let mut batches = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(b) => batches.push(b),
            Err(e) => {
                return files
                    .iter()
                    .map(|_| Err(format!("internal error hashing: {e}")))
                    .collect();
            }
        }
    }
    batches.sort_by_key(|(i, _)| *i);
    let theirs: Vec<Result<[u8; 32], String>> = batches.into_iter().flat_map(|(_, b)| b).collect();
    let ours = match ours.await {
        Ok(o) => o,
        Err(e) => {
            return files
                .iter()
                .map(|_| Err(format!("internal error hashing: {e}")))
                .collect();
        }
    };
    ours.into_iter()
        .zip(theirs)
        .map(|(o, t)| Ok(o? == t?))
        .collect()
}

/// The BLAKE3 digest of the regular file at `p` (no symlink followed).
fn hash_place(p: &Place) -> Result<[u8; 32], String> {
    let fd = p
        .root()
        .open_beneath(
            p.rel(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        )
        .map_err(|e| format!("cannot open it to hash: {}", describe(e)))?;
    // The name was a regular file when looked at; if something else (a
    // FIFO, a device) took its place since, its "content" must not be
    // judged equal to the source's and the entry kept.
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot hash it: {}", describe(e)))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("is no longer a regular file".into());
    }
    let file = std::fs::File::from(fd);
    let mut h = blake3::Hasher::new();
    h.update_reader(&file)
        .map_err(|e| format!("cannot read it to hash: {}", plain(&e)))?;
    Ok(*h.finalize().as_bytes())
}

/// Where a plan's relative path lands beneath the root.
type PlaceOf<'a> = dyn Fn(&RawPath) -> Result<Place, rustix::io::Errno> + 'a;

/// Symlinks, hard links and special files: each one created, replaced,
/// or left as it is when it already matches (only reported in a dry run).
#[allow(clippy::too_many_arguments)]
fn links_and_specials(
    plan: &PushPlan,
    entries: &[PlanEntry],
    place_of: &PlaceOf<'_>,
    root: &Arc<Root>,
    failed_dirs: &mut FailedDirs,
    results: &mut Vec<EntryResult>,
    ids_of: &dyn Fn(&Option<Owner>) -> Ids,
    dry_run: bool,
) {
    use rustix::fs::FileType;
    let status_of = |found: &Option<Found>| {
        if found.is_some() {
            Status::Changed
        } else {
            Status::Created
        }
    };
    let owned_as =
        |f: &Found, ids: Ids| ids.is_none_or(|(u, g)| f.uid == u.as_raw() && f.gid == g.as_raw());
    for e in entries {
        if let PlanEntry::Symlink {
            rel,
            target,
            mtime_sec,
            mtime_nsec,
            owner,
            xattrs,
        } = e
        {
            let Some(p) = failed_dirs.admit(place_of(rel), root, results) else {
                continue;
            };
            let ids = ids_of(owner);
            let found = look_at(&p).ok().flatten();
            let same = found.as_ref().is_some_and(|f| {
                f.kind == FileType::Symlink
                    && f.same_time(*mtime_sec, *mtime_nsec)
                    && owned_as(f, ids)
                    && same_xattrs(&p, xattrs, plan.options.xattrs)
                    && p.open_parent()
                        .and_then(|d| rustix::fs::readlinkat(&d, p.name(), Vec::new()))
                        .is_ok_and(|t| t.as_bytes() == target.as_bytes())
            });
            if same {
                results.push(EntryResult::done(
                    p.shown(),
                    EntryKind::Symlink,
                    Status::Unchanged,
                ));
                continue;
            }
            let status = status_of(&found);
            let r = if dry_run {
                Ok(())
            } else {
                make_symlink(target, &times(*mtime_sec, *mtime_nsec), ids, &p).and_then(|()| {
                    super::xattr::sync_place(&p, xattrs, plan.options.xattrs).map(|_| ())
                })
            };
            results.push(landed(&p, EntryKind::Symlink, status, "create symlink", r));
        }
    }
    for e in entries {
        if let PlanEntry::HardLink { rel, to } = e {
            let Some(p) = failed_dirs.admit(place_of(rel), root, results) else {
                continue;
            };
            let found = look_at(&p).ok().flatten();
            let first = place_of(to);
            let same = match (&found, &first) {
                (Some(f), Ok(first)) => look_at(first)
                    .ok()
                    .flatten()
                    .is_some_and(|g| g.dev == f.dev && g.ino == f.ino),
                _ => false,
            };
            if same {
                results.push(EntryResult::done(
                    p.shown(),
                    EntryKind::HardLink,
                    Status::Unchanged,
                ));
                continue;
            }
            let status = status_of(&found);
            let r = if dry_run {
                Ok(())
            } else {
                first
                    .map_err(describe)
                    .and_then(|first| make_hard_link(&first, &p))
            };
            results.push(landed(
                &p,
                EntryKind::HardLink,
                status,
                "create hard link",
                r,
            ));
        }
    }
    for e in entries {
        if let PlanEntry::Special {
            rel,
            kind,
            mode,
            rdev,
            mtime_sec,
            mtime_nsec,
            owner,
            xattrs,
        } = e
        {
            let Some(p) = failed_dirs.admit(place_of(rel), root, results) else {
                continue;
            };
            let ids = ids_of(owner);
            let found = look_at(&p).ok().flatten();
            let same = found.as_ref().is_some_and(|f| {
                same_xattrs(&p, xattrs, plan.options.xattrs)
                    && f.kind == kind.file_type()
                    && f.mode == *mode
                    && f.same_time(*mtime_sec, *mtime_nsec)
                    && owned_as(f, ids)
                    && (!matches!(kind, SpecialKind::CharDevice | SpecialKind::BlockDevice)
                        || f.rdev == *rdev)
            });
            if same {
                results.push(EntryResult::done(
                    p.shown(),
                    EntryKind::Special,
                    Status::Unchanged,
                ));
                continue;
            }
            let status = status_of(&found);
            let r = if dry_run {
                Ok(())
            } else {
                make_special(
                    &p,
                    *kind,
                    *mode,
                    *rdev,
                    &times(*mtime_sec, *mtime_nsec),
                    ids,
                )
                .and_then(|()| {
                    super::xattr::sync_place(&p, xattrs, plan.options.xattrs).map(|_| ())
                })
            };
            results.push(landed(
                &p,
                EntryKind::Special,
                status,
                &format!("create {}", kind.name()),
                r,
            ));
        }
    }
}

/// Whether the entry at `p` already has the extended attributes `want`
/// (in the namespaces `sel` carries; always, when it carries none).
fn same_xattrs(p: &Place, want: &[Xattr], sel: super::xattr::XattrSel) -> bool {
    !sel.any()
        || super::xattr::read_place(p, sel)
            .is_ok_and(|have| !super::xattr::differ(want, &have, sel))
}

/// The result of one step on an entry: ok, or failed with
/// "PATH: cannot WHAT: CAUSE".
fn landed<E: std::fmt::Display>(
    p: &Place,
    kind: EntryKind,
    status: Status,
    what: &str,
    r: Result<(), E>,
) -> EntryResult {
    match r {
        Ok(()) => EntryResult::done(p.shown(), kind, status),
        Err(err) => EntryResult::failed(
            p.shown(),
            format!("{}: cannot {what}: {err}", show(p.shown())),
        )
        .of_kind(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_refuses_what_is_not_a_regular_file() {
        // A FIFO put where the quick check saw a file: with O_NONBLOCK and
        // no writer it reads as empty, so it hashed like an empty source
        // file and was kept as "unchanged" (found by the attack review).
        let t = tempfile::tempdir().expect("tempdir");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .expect("mkfifo");
        std::fs::write(t.path().join("file"), b"").expect("write");
        let root = Root::open(t.path()).expect("root");
        let fifo = Place::new(&root, "fifo".into()).expect("place");
        let err = hash_place(&fifo).expect_err("a FIFO is not hashed");
        assert!(err.contains("no longer a regular file"), "{err}");
        let file = Place::new(&root, "file".into()).expect("place");
        assert_eq!(hash_place(&file), Ok(*blake3::hash(b"").as_bytes()));
    }
}
