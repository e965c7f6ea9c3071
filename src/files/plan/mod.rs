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
//!
//! Here: the service, a session's state and DEST's opening. Beside it:
//! `session` keeps the sessions open, runs each batch and ends the push;
//! `batch` runs a batch's steps (1 and 3: directories, the files'
//! fetches), `judge` chooses the files to send with what `look` sees of
//! the destination (quick check, `-c`, dry run), `fetch` receives them,
//! `land` makes them durable and puts them in place (step 4), `links`
//! the symlinks, hard links and special files after them, `dirs` creates
//! the directories and sets their metadata (step 5); `error` is why an
//! entry failed.

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
use super::place::{Place, PlaceError, Root, describe, plain, show};
use super::receive::{self, PendingFile, ReceiveError, ReceiveOptions, TempFiles};
use super::serve::SMALL_BATCH_BYTES;
use super::spec::Ids;
pub use super::spec::{
    Compare, Owner, PlanEntry, PushBatch, PushEnd, PushOpened, PushPlan, SpecialKind, Stamp,
};
use super::uptodate::{self, Fixes, Found, Verdict, after_hash, file_verdict, look_at};
use super::xattr::{Xattr, XattrError};
use super::{
    DigestArgs, FetchSmallArgs, FileDigest, SMALL_FILE_MAX, SmallFile, TARGET_SERVICE, hex,
};
use crate::call::{CallError, RemoteError};
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::wire::ContextId;

mod batch;
mod dirs;
mod error;
mod fetch;
mod judge;
mod land;
mod links;
mod look;
mod session;

use batch::*;
use dirs::*;
pub use error::EntryError;
use fetch::*;
use land::*;
use look::*;
use session::*;

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
            .serve(
                crate::files::spec::PUSH,
                Policy::ParentsOnly,
                move |_c, plan: PushPlan| {
                    let r = r.clone();
                    let t = t.clone();
                    let c = c.clone();
                    async move { Ok::<_, RemoteError>(apply_cancellable(&r, plan, &t, &c).await) }
                },
            )
            .serve(
                crate::files::spec::PUSH_OPEN,
                Policy::ParentsOnly,
                move |_c, plan: PushPlan| {
                    let opened = s1.open(plan);
                    async move { Ok::<_, RemoteError>(opened) }
                },
            )
            .serve(
                crate::files::spec::PUSH_BATCH,
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
            .serve(
                crate::files::spec::PUSH_CLOSE,
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
            .serve(
                crate::files::spec::CANCEL,
                Policy::ParentsOnly,
                move |_c, (): ()| {
                    c2.store(true, Ordering::SeqCst);
                    async move { Ok::<_, RemoteError>(()) }
                },
            )
            .on_shutdown(move || async move {
                c3.store(true, Ordering::SeqCst);
                t2.remove_all()
            })
            .build(),
    );
    temps
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

/// The owner ids an entry of `plan` gets: its source owner's with
/// `--owner`, else none (it keeps whatever creating it gave).
fn owner_ids(plan: &PushPlan, owner: &Option<Owner>) -> Ids {
    owner
        .as_ref()
        .filter(|_| plan.options.preserve_owner)
        .map(Owner::ids)
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

/// Opens the push's root: DEST when entries go into it, else DEST's
/// parent (the copy is then named DEST). The path up to there is the
/// user's and is followed, as `cp` does. Returns the root and, in the
/// second case, DEST's own name.
fn open_root(plan: &PushPlan, dest: &Path) -> Result<(Arc<Root>, Option<OsString>), EntryError> {
    if plan.into_dir
        && let Err(source) = std::fs::create_dir_all(dest)
    {
        return Err(EntryError::CreateDest {
            dest: show(dest),
            source,
        });
    }
    if plan.into_dir || dest.is_dir() {
        let root = Root::open(dest).map_err(|source| EntryError::OpenDest {
            dest: show(dest),
            source,
        })?;
        return Ok((root, None));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| EntryError::NoName { dest: show(dest) })?;
    let parent = dest.parent().unwrap_or(Path::new(""));
    let root = Root::open(parent).map_err(|source| {
        let shown = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        EntryError::OpenDestParent {
            dest: show(dest),
            dir: show(shown),
            source,
        }
    })?;
    Ok((root, Some(name.to_os_string())))
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
        assert!(matches!(err, EntryError::NoLongerRegular), "{err}");
        let file = Place::new(&root, "file".into()).expect("place");
        assert_eq!(hash_place(&file).ok(), Some(*blake3::hash(b"").as_bytes()));
    }
}
