//! The target side of a push: `ferrogen.files.target`, in every context.
//!
//! `push(PushPlan) -> Vec<EntryResult>` (parents only) recreates a list of
//! directories, symlinks and files under a destination, pulling file data
//! from the FileService in context `server`:
//!
//! 1. directories are created, parents first;
//! 2. symlinks are created under a temp name and renamed into place;
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
//!    leaves nothing, and a new destination costs one `linkat`;
//! 5. directory modes and times are applied last, deepest first, since
//!    creating entries changes a directory's mtime.
//!
//! Destination rules (those of `cp -a`, plus rsync's trailing slash):
//! with `into_dir`, or when `dest` is an existing directory, entries land
//! at `dest/<rel>`; otherwise the first component of each `rel` (the
//! source's own name) is replaced by `dest`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::receive::{self, PendingFile, ReceiveOptions, TempFiles};
use super::serve::SMALL_BATCH_BYTES;
use super::{FILE_SERVICE, FetchSmallArgs, SMALL_FILE_MAX, SmallFile, TARGET_SERVICE, hex};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::wire::ContextId;

/// One thing to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanEntry {
    /// A directory.
    Dir {
        /// Path relative to the copy root ('/'-separated, first component = source name).
        rel: String,
        /// Permission bits.
        mode: u32,
        /// Modification time, seconds.
        mtime_sec: i64,
        /// Modification time, nanoseconds.
        mtime_nsec: u32,
    },
    /// A regular file, fetched from the server.
    File {
        /// Absolute path on the server (registered with its FileService).
        src: String,
        /// Relative destination.
        rel: String,
        /// Size when the plan was made. A hint only (the file may change
        /// before it is fetched): files that looked small are fetched many
        /// to a call.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Relative destination.
        rel: String,
        /// Link target, verbatim.
        target: String,
    },
}

/// A push to apply in one context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPlan {
    /// Context running the FileService.
    pub server: ContextId,
    /// Destination as given by the user.
    pub dest: String,
    /// Treat `dest` as a directory to put entries into (trailing slash,
    /// several sources, or a `src/` contents copy).
    pub into_dir: bool,
    /// What to create.
    pub entries: Vec<PlanEntry>,
    /// How files are put in place.
    pub options: ReceiveOptions,
    /// Files received at once.
    pub parallel: u32,
}

/// The outcome for one entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryResult {
    /// Destination path in the target context.
    pub path: String,
    /// Bytes written (files only).
    pub bytes: u64,
    /// Seconds from request to verified receipt (files only).
    pub seconds: f64,
    /// BLAKE3 digest, hex (files only).
    pub digest: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When the first and last data frames arrived (Unix ns; files only).
    pub data_span_ns: (u64, u64),
}

impl EntryResult {
    fn failed(path: &Path, error: String) -> EntryResult {
        EntryResult {
            path: path.display().to_string(),
            bytes: 0,
            seconds: 0.0,
            digest: None,
            error: Some(error),
            data_span_ns: (0, 0),
        }
    }

    fn ok(path: &Path) -> EntryResult {
        EntryResult {
            path: path.display().to_string(),
            bytes: 0,
            seconds: 0.0,
            digest: None,
            error: None,
            data_span_ns: (0, 0),
        }
    }
}

/// Registers `ferrogen.files.target` and returns the temp-file registry
/// its shutdown hook empties.
pub fn register_service(services: &Services, router: &Router) -> TempFiles {
    let temps = TempFiles::default();
    let (r, t, t2) = (router.clone(), temps.clone(), temps.clone());
    services.register(
        ServiceBuilder::new(TARGET_SERVICE)
            .method("push", Policy::ParentsOnly, move |_c, plan: PushPlan| {
                let r = r.clone();
                let t = t.clone();
                async move { Ok::<_, RemoteError>(apply(&r, plan, &t).await) }
            })
            .on_shutdown(move || async move { t2.remove_all() })
            .build(),
    );
    temps
}

fn first_component_stripped(rel: &str) -> &str {
    match rel.split_once('/') {
        Some((_, rest)) => rest,
        None => "",
    }
}

/// Applies a plan; never fails as a whole — each entry reports its own result.
pub async fn apply(router: &Router, plan: PushPlan, temps: &TempFiles) -> Vec<EntryResult> {
    let dest = PathBuf::from(&plan.dest);
    if plan.into_dir
        && let Err(e) = std::fs::create_dir_all(&dest)
    {
        return vec![EntryResult::failed(
            &dest,
            format!("{}: cannot create directory: {e}", dest.display()),
        )];
    }
    let dest_is_dir = plan.into_dir || dest.is_dir();
    let place = |rel: &str| -> PathBuf {
        if dest_is_dir {
            dest.join(rel)
        } else {
            let rest = first_component_stripped(rel);
            if rest.is_empty() {
                dest.clone()
            } else {
                dest.join(rest)
            }
        }
    };
    for e in &plan.entries {
        let rel = match e {
            PlanEntry::Dir { rel, .. }
            | PlanEntry::File { rel, .. }
            | PlanEntry::Symlink { rel, .. } => rel,
        };
        if rel.split('/').any(|c| c == ".." || c == ".") || rel.starts_with('/') || rel.is_empty() {
            return vec![EntryResult::failed(
                &dest,
                format!("refusing entry with unsafe relative path {rel:?}"),
            )];
        }
    }

    let mut results = Vec::new();
    let mut dirs: Vec<(PathBuf, u32, i64, u32)> = Vec::new();
    // 1. Directories, parents first.
    let mut dir_entries: Vec<&PlanEntry> = plan
        .entries
        .iter()
        .filter(|e| matches!(e, PlanEntry::Dir { .. }))
        .collect();
    dir_entries.sort_by_key(|e| match e {
        PlanEntry::Dir { rel, .. } => rel.matches('/').count(),
        _ => 0,
    });
    for e in dir_entries {
        if let PlanEntry::Dir {
            rel,
            mode,
            mtime_sec,
            mtime_nsec,
        } = e
        {
            let p = place(rel);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(err) => {
                    results.push(EntryResult::failed(
                        &p,
                        format!("{}: cannot create directory: {err}", p.display()),
                    ));
                    continue;
                }
            }
            // Owner-writable while we fill it; the real mode is applied last.
            let _ =
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700));
            dirs.push((p, *mode, *mtime_sec, *mtime_nsec));
        }
    }
    // 2. Symlinks.
    for e in &plan.entries {
        if let PlanEntry::Symlink { rel, target } = e {
            let p = place(rel);
            results.push(match make_symlink(target, &p) {
                Ok(()) => EntryResult::ok(&p),
                Err(err) => EntryResult::failed(
                    &p,
                    format!("{}: cannot create symlink: {err}", p.display()),
                ),
            });
        }
    }
    // 3. Files, concurrently: small ones many to a call, the rest one by one.
    let files: Vec<FileJob> = plan
        .entries
        .iter()
        .filter_map(|e| match e {
            PlanEntry::File { src, rel, size } => Some((src.clone(), place(rel), *size)),
            _ => None,
        })
        .enumerate()
        .map(|(index, (src, path, size))| FileJob {
            index,
            src,
            path,
            size,
        })
        .collect();
    let single = files.len() == 1;
    let (small, large): (Vec<FileJob>, Vec<FileJob>) = files
        .into_iter()
        .partition(|f| !single && f.size <= SMALL_FILE_MAX);
    let sem = Arc::new(Semaphore::new(plan.parallel.clamp(1, 1024) as usize));
    let batch_sem = Arc::new(Semaphore::new(SMALL_BATCHES_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let held = HeldFiles::from_rlimit();
    let early_sync = (plan.options.fsync && small.len() >= EARLY_SYNC_MIN_FILES).then(|| {
        EarlySync::new(if dest_is_dir {
            dest.clone()
        } else {
            dest.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
    });
    let fetch_context = || FetchContext {
        router: router.clone(),
        server: plan.server,
        temps: temps.clone(),
        opts: plan.options.clone(),
        held: held.clone(),
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
                Path::new(&plan.dest),
                format!("internal error: {e}"),
            )),
        }
    }
    outcomes.sort_by_key(|(i, _, _)| *i);
    // 4. Batched durability for many files.
    let pending_dirs: BTreeSet<PathBuf> = outcomes
        .iter()
        .filter(|(_, _, r)| matches!(r, Ok(Done::Pending(_))))
        .filter_map(|(_, p, _)| p.parent().map(Path::to_path_buf))
        .collect();
    // The file system work from here on runs on blocking threads: a
    // syncfs can take a while, and this context's runtime must keep
    // answering its stream meanwhile.
    let mut sync_error = None;
    if plan.options.fsync && !pending_dirs.is_empty() {
        if let Some(early) = &early_sync {
            early.wait().await;
        }
        let dirs = pending_dirs.clone();
        sync_error = match tokio::task::spawn_blocking(move || syncfs_all(&dirs)).await {
            Ok(r) => r.err(),
            Err(e) => Some(format!("internal error syncing: {e}")),
        };
    }
    results.extend(put_in_place(outcomes, sync_error.clone()).await);
    if plan.options.fsync && sync_error.is_none() {
        let synced = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for d in &pending_dirs {
                if let Ok(f) = std::fs::File::open(d)
                    && let Err(e) = rustix::fs::fsync(&f)
                {
                    failed.push(EntryResult::failed(
                        d,
                        format!("{}: fsync directory: {e}", d.display()),
                    ));
                }
            }
            failed
        })
        .await;
        match synced {
            Ok(failed) => results.extend(failed),
            Err(e) => results.push(EntryResult::failed(
                Path::new(&plan.dest),
                format!("internal error syncing directories: {e}"),
            )),
        }
    }
    // 5. Directory metadata, deepest first.
    dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.components().count()));
    for (p, mode, sec, nsec) in dirs {
        let r = (|| -> std::io::Result<()> {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
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
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &p,
                &ts,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            Ok(())
        })();
        results.push(match r {
            Ok(()) => EntryResult::ok(&p),
            Err(e) => EntryResult::failed(
                &p,
                format!("{}: cannot set directory metadata: {e}", p.display()),
            ),
        });
    }
    results
}

enum Done {
    Committed(Summary),
    Pending(PendingFile),
}

/// One file of the plan: its place in the plan, where it comes from and
/// goes, and the size the plan saw.
struct FileJob {
    index: usize,
    src: String,
    path: PathBuf,
    size: u64,
}

/// A file's outcome: its plan index, destination, and result.
type Outcome = (usize, PathBuf, Result<Done, String>);

/// What every fetch needs.
struct FetchContext {
    router: Router,
    server: ContextId,
    temps: TempFiles,
    opts: ReceiveOptions,
    held: Arc<HeldFiles>,
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
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim
            .maximum
            .is_none_or(|max| lim.current.is_some_and(|cur| cur < max))
        {
            let raised = rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                lim = raised;
            }
        }
        let limit = lim.current.unwrap_or(u64::MAX).min(1 << 20) as usize;
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
    let r = receive::receive_with(
        &ctx.router,
        ctx.server,
        &job.src,
        &job.path,
        &ctx.temps,
        &ctx.opts,
    )
    .await;
    let r = match r {
        Ok(mut p) => {
            let done = if single {
                let s = Summary {
                    bytes: p.bytes,
                    digest: p.digest,
                    started: p.started,
                    span: p.data_span_ns,
                };
                p.commit(&ctx.opts).map(|()| Done::Committed(s))
            } else if ctx.held.take_one() {
                p.finish_open(&ctx.opts).map(|()| Done::Pending(p))
            } else {
                p.finish(&ctx.opts, false).map(|()| Done::Pending(p))
            };
            done.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    (job.index, job.path, r)
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
                let e = format!("{}: fetch of {} failed: {why}", j.path.display(), j.src);
                (j.index, j.path, Err(e))
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
    let places: Vec<(usize, PathBuf)> = batch.iter().map(|j| (j.index, j.path.clone())).collect();
    let written = tokio::task::spawn_blocking(move || {
        let mut done = Vec::with_capacity(batch.len());
        let mut too_large = Vec::new();
        for (job, file) in batch.into_iter().zip(files) {
            let r = match super::compress::open_small(file) {
                SmallFile::Data { meta, data, digest } => {
                    receive::receive_whole(&job.path, &temps, &meta, &data, &digest, started)
                        .and_then(|mut p| {
                            if held.take_one() {
                                p.finish_open(&opts)
                            } else {
                                p.finish(&opts, false)
                            }
                            .map(|()| Done::Pending(p))
                        })
                        .map_err(|e| e.to_string())
                }
                SmallFile::TooLarge => {
                    too_large.push(job);
                    continue;
                }
                SmallFile::Failed(why) => Err(format!(
                    "{}: fetch of {} failed: {why}",
                    job.path.display(),
                    job.src
                )),
                // open_small decodes these; nothing else may land.
                SmallFile::Compressed { .. } => Err(format!(
                    "{}: fetch of {} failed: compressed data was not decoded",
                    job.path.display(),
                    job.src
                )),
            };
            done.push((job.index, job.path, r));
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

fn file_ok(path: &Path, s: &Summary) -> EntryResult {
    EntryResult {
        path: path.display().to_string(),
        bytes: s.bytes,
        seconds: s.started.elapsed().as_secs_f64(),
        digest: Some(hex(&s.digest)),
        error: None,
        data_span_ns: s.span,
    }
}

/// Threads renaming verified files into place at the end of a push: the
/// renames of a 10,000-file push took a tenth of its time on one thread,
/// and renames in different directories do not contend.
const RENAME_THREADS: usize = 2;

/// Renames every pending file over its destination (unless the batched
/// sync failed) and turns every outcome into a result, in plan order.
async fn put_in_place(outcomes: Vec<Outcome>, sync_error: Option<String>) -> Vec<EntryResult> {
    let per_thread = outcomes.len().div_ceil(RENAME_THREADS).max(1);
    let mut parts = Vec::new();
    let mut rest = outcomes.into_iter();
    loop {
        let part: Vec<Outcome> = rest.by_ref().take(per_thread).collect();
        if part.is_empty() {
            break;
        }
        let sync_error = sync_error.clone();
        parts.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(_, path, r)| match r {
                    Ok(Done::Committed(s)) => file_ok(&path, &s),
                    Ok(Done::Pending(p)) => {
                        if let Some(e) = &sync_error {
                            EntryResult::failed(&path, format!("{}: {e}", path.display()))
                        } else {
                            let s = Summary {
                                bytes: p.bytes,
                                digest: p.digest,
                                started: p.started,
                                span: p.data_span_ns,
                            };
                            match p.rename() {
                                Ok(()) => file_ok(&path, &s),
                                Err(e) => EntryResult::failed(&path, e.to_string()),
                            }
                        }
                    }
                    Err(e) => EntryResult::failed(&path, e),
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
    dir: PathBuf,
    running: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EarlySync {
    fn new(dir: PathBuf) -> Arc<EarlySync> {
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
            if let Ok(f) = std::fs::File::open(&dir) {
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

fn syncfs_all(dirs: &BTreeSet<PathBuf>) -> Result<(), String> {
    let mut seen_devs = BTreeSet::new();
    for d in dirs {
        let f =
            std::fs::File::open(d).map_err(|e| format!("open {} for sync: {e}", d.display()))?;
        let dev = rustix::fs::fstat(&f).map(|s| s.st_dev).unwrap_or(0);
        if seen_devs.insert(dev) {
            rustix::fs::syncfs(&f).map_err(|e| format!("syncfs on {}: {e}", d.display()))?;
        }
    }
    Ok(())
}

fn make_symlink(target: &str, p: &Path) -> std::io::Result<()> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = p.with_file_name(format!(".{name}.ferrogen-link-{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, p).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
