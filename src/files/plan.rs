//! The target side of a push: `ferrogen.files.target`, in every context.
//!
//! `push(PushPlan) -> Vec<EntryResult>` (parents only) recreates a list of
//! directories, symlinks and files under a destination, pulling file data
//! from the FileService in context `server`:
//!
//! 1. directories are created, parents first;
//! 2. symlinks are created under a temp name and renamed into place;
//! 3. files are received concurrently (`parallel` at a time), so many small
//!    files cost a few round trips rather than one each; each lands in its
//!    own hidden temp file, verified;
//! 4. durability is batched: one `syncfs` covers every file received, then
//!    each is renamed over its destination and each directory touched is
//!    fsynced once (a single file is simply fsynced);
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
use super::{TARGET_SERVICE, hex};
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
    // 3. Files, concurrently.
    let files: Vec<(String, PathBuf)> = plan
        .entries
        .iter()
        .filter_map(|e| match e {
            PlanEntry::File { src, rel } => Some((src.clone(), place(rel))),
            _ => None,
        })
        .collect();
    let single = files.len() == 1;
    let sem = Arc::new(Semaphore::new(plan.parallel.clamp(1, 1024) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (src, path)) in files.into_iter().enumerate() {
        let (router, temps, sem, opts) = (
            router.clone(),
            temps.clone(),
            sem.clone(),
            plan.options.clone(),
        );
        let server = plan.server;
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = receive::receive_with(&router, server, &src, &path, &temps, &opts).await;
            let r = match r {
                Ok(mut p) => {
                    // One file: the plain durable commit. Many: finish each now
                    // (closing its descriptor) and sync them together below.
                    let done = if single {
                        let s = Summary {
                            bytes: p.bytes,
                            digest: p.digest,
                            started: p.started,
                            span: p.data_span_ns,
                        };
                        p.commit(&opts).map(|()| Done::Committed(s))
                    } else {
                        p.finish(&opts, false).map(|()| Done::Pending(p))
                    };
                    done.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            (i, path, r)
        });
    }
    let mut outcomes: Vec<(usize, PathBuf, Result<Done, String>)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(o) => outcomes.push(o),
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
    let mut sync_error = None;
    if plan.options.fsync && !pending_dirs.is_empty() {
        sync_error = syncfs_all(&pending_dirs).err();
    }
    for (_, path, r) in outcomes {
        results.push(match r {
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
        });
    }
    if plan.options.fsync && sync_error.is_none() {
        for d in &pending_dirs {
            if let Ok(f) = std::fs::File::open(d)
                && let Err(e) = rustix::fs::fsync(&f)
            {
                results.push(EntryResult::failed(
                    d,
                    format!("{}: fsync directory: {e}", d.display()),
                ));
            }
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
