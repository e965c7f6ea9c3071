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
//! Here: the service, its sessions and DEST's opening. Beside it:
//! `session` runs each batch through the steps above and ends the push,
//! `look` judges the destination before anything is sent (quick check,
//! `-c`, dry run), `fetch` receives a batch's files, `land` puts them and
//! the other entries in place.

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

/// Why one entry of a push failed at the target. Its text is the entry's
/// `error` in the push's results.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// An operation beneath the destination failed.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// Extended attributes could not be read or set.
    #[error(transparent)]
    Xattr(#[from] XattrError),
    /// The file could not be received.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// DEST could not be created.
    #[error("{dest}: cannot create directory: {source}")]
    CreateDest {
        /// DEST.
        dest: String,
        /// Why.
        source: std::io::Error,
    },
    /// DEST could not be opened.
    #[error("{dest}: cannot open directory: {}", plain(.source))]
    OpenDest {
        /// DEST.
        dest: String,
        /// Why.
        source: std::io::Error,
    },
    /// DEST has no last component to create.
    #[error("{dest}: names no file to create")]
    NoName {
        /// DEST.
        dest: String,
    },
    /// DEST's parent could not be opened.
    #[error("{dest}: cannot open its directory {dir}: {}", plain(.source))]
    OpenDestParent {
        /// DEST.
        dest: String,
        /// Its parent.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// With sizes bound (a pull), the source sent more than it announced.
    #[error(
        "{path}: the source sent {size} bytes for a file it announced at {announced}; \
         refused (pull again if it grew meanwhile)"
    )]
    OverAnnounced {
        /// The entry.
        path: String,
        /// What was sent.
        size: u64,
        /// What was announced.
        announced: u64,
    },
    /// A `fetch_small` call failed.
    #[error("{path}: fetch of {src} failed: {source}")]
    FetchCall {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// Why.
        source: Box<CallError>,
    },
    /// A `fetch_small` reply did not answer every file.
    #[error("{path}: fetch of {src} failed: the server answered {got} of {asked} files")]
    ShortAnswer {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// Files answered.
        got: usize,
        /// Files asked for.
        asked: usize,
    },
    /// The source could not give the file (in its words).
    #[error("{path}: fetch of {src} failed: {why}")]
    SourceFailed {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// The source's reason.
        why: String,
    },
    /// A compressed small file reached the writer undecoded (a bug).
    #[error("{path}: fetch of {src} failed: compressed data was not decoded")]
    NotDecoded {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
    },
    /// The destination's file could not be hashed (`--checksum`).
    #[error("cannot {what} it to hash: {}", describe(*.source))]
    Hash {
        /// What failed: `open`, `stat`.
        what: &'static str,
        /// Why.
        source: rustix::io::Errno,
    },
    /// The destination's file could not be read to hash.
    #[error("cannot read it to hash: {}", plain(.0))]
    HashRead(#[source] std::io::Error),
    /// What is at the destination is no longer a regular file.
    #[error("is no longer a regular file")]
    NoLongerRegular,
    /// The source could not hash its file (in its words).
    #[error("cannot hash the source: {0}")]
    SourceHash(String),
    /// A `digests` call failed.
    #[error("cannot hash the source: {0}")]
    SourceHashCall(#[source] Box<CallError>),
    /// A `digests` reply did not answer every file.
    #[error("the server hashed {got} of {asked} files")]
    ShortHashes {
        /// Files answered.
        got: usize,
        /// Files asked for.
        asked: usize,
    },
    /// The batched sync failed: the entry was not put in place.
    #[error("{path}: {source}")]
    Sync {
        /// The entry.
        path: String,
        /// Why (shared by every entry the sync held).
        source: Arc<EntryError>,
    },
    /// A blocking task of the push failed (a bug): the task's panic,
    /// reported to each entry it held.
    #[error("internal error {what}: {why}")]
    Internal {
        /// What it was doing.
        what: &'static str,
        /// The task's failure.
        why: String,
    },
}

impl From<rustix::io::Errno> for EntryError {
    fn from(e: rustix::io::Errno) -> EntryError {
        EntryError::Place(e.into())
    }
}

mod fetch;
mod land;
mod look;
mod session;

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
fn make_dir(p: &Place, is_dest: bool) -> Result<Option<Found>, PlaceError> {
    use rustix::fs::{AtFlags, FileType, Mode};
    let dir = p.open_parent()?;
    let private = Mode::from_raw_mode(0o700);
    match rustix::fs::mkdirat(&dir, p.name(), private) {
        Ok(()) => return Ok(None),
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let st = rustix::fs::statat(&dir, p.name(), AtFlags::SYMLINK_NOFOLLOW)?;
    let before = Found::of(&st);
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        return Ok(Some(before));
    }
    if is_dest {
        return Err(PlaceError::NotADirectory);
    }
    rustix::fs::unlinkat(&dir, p.name(), AtFlags::empty()).map_err(PlaceError::CannotReplace)?;
    rustix::fs::mkdirat(&dir, p.name(), private)?;
    Ok(Some(before))
}

/// Opens the directory `rel` beneath `root` for fsync or syncfs (an
/// `O_PATH` handle can do neither).
fn open_for_sync(root: &Root, rel: &Path) -> Result<OwnedFd, rustix::io::Errno> {
    root.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Applies a directory's mode and times through a handle on it (opened
/// without following any symlink, so the change cannot land elsewhere).
fn set_dir_meta(p: &Place, mode: u32, sec: i64, nsec: u32, ids: Ids) -> Result<(), PlaceError> {
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
                rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
            }
            rustix::fs::fchmod(&fd, mode)?;
            rustix::fs::futimens(&fd, &ts).map_err(Into::into)
        }
        Err(rustix::io::Errno::ACCESS) => {
            // Not readable by us (e.g. an existing 0300 directory): act on
            // an O_PATH handle through its /proc link, which names exactly
            // that inode.
            let fd = p.root().open_dir(p.rel())?;
            let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            if let Some((uid, gid)) = ids {
                rustix::fs::chownat(
                    &fd,
                    "",
                    Some(uid),
                    Some(gid),
                    rustix::fs::AtFlags::EMPTY_PATH,
                )?;
            }
            rustix::fs::chmodat(
                rustix::fs::CWD,
                via.as_str(),
                mode,
                rustix::fs::AtFlags::empty(),
            )?;
            rustix::fs::utimensat(
                rustix::fs::CWD,
                via.as_str(),
                &ts,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(Into::into)
        }
        Err(e) => Err(e.into()),
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
        assert!(matches!(err, EntryError::NoLongerRegular), "{err}");
        let file = Place::new(&root, "file".into()).expect("place");
        assert_eq!(hash_place(&file).ok(), Some(*blake3::hash(b"").as_bytes()));
    }
}
