//! Putting received files and other entries in place: the batched sync,
//! the renames, hard links, specials, symlinks.

use super::*;

/// Threads renaming verified files into place at the end of a push: the
/// renames of a 10,000-file push took a tenth of its time on one thread,
/// and renames in different directories do not contend.
pub(super) const RENAME_THREADS: usize = 2;

impl Batch<'_> {
    /// Step 4, batched durability: one `syncfs` covers every file
    /// received, then each is put in place and each directory it landed
    /// in is fsynced once.
    pub(super) async fn land(&mut self, received: Received) {
        let Received {
            outcomes,
            how,
            early_sync,
        } = received;
        let fsync = self.plan.options.fsync;
        let pending_dirs: BTreeSet<PathBuf> = outcomes
            .iter()
            .filter(|(_, _, r)| matches!(r, Ok(Done::Pending(_))))
            .map(|(_, p, _)| p.parent_rel().to_path_buf())
            .collect();
        // The file system work from here on runs on blocking threads: a
        // syncfs can take a while, and this context's runtime must keep
        // answering its stream meanwhile.
        let mut sync_error = None;
        if fsync && !pending_dirs.is_empty() {
            if let Some(early) = &early_sync {
                early.wait().await;
            }
            sync_error = self.sync_all(pending_dirs.clone()).await;
        }
        self.results
            .extend(put_in_place(outcomes, sync_error.clone(), &how).await);
        if fsync && sync_error.is_none() {
            self.fsync_dirs(pending_dirs).await;
        }
    }

    /// One `syncfs` per file system the received files are on; the error
    /// every pending file then reports, if it failed.
    async fn sync_all(&self, dirs: BTreeSet<PathBuf>) -> Option<Arc<EntryError>> {
        let root = self.root.clone();
        match tokio::task::spawn_blocking(move || syncfs_all(&root, &dirs)).await {
            Ok(r) => r.err().map(|e| Arc::new(EntryError::Place(e))),
            Err(e) => Some(Arc::new(EntryError::Internal {
                what: "syncing",
                why: e.to_string(),
            })),
        }
    }

    /// Fsyncs each directory files were renamed into.
    async fn fsync_dirs(&mut self, dirs: BTreeSet<PathBuf>) {
        let root = self.root.clone();
        let synced = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for d in &dirs {
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
            Ok(failed) => self.results.extend(failed),
            Err(e) => self.results.push(EntryResult::failed(
                self.plan.dest.as_path(),
                format!("internal error syncing directories: {e}"),
            )),
        }
    }
}

/// Renames every pending file over its destination (unless the batched
/// sync failed) and turns every outcome into a result, in plan order.
pub(super) async fn put_in_place(
    outcomes: Vec<Outcome>,
    sync_error: Option<Arc<EntryError>>,
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
                            let e = EntryError::Sync {
                                path: show(&path),
                                source: e.clone(),
                            };
                            EntryResult::failed(&path, e.to_string())
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
                            let cleared = cleared.map_err(EntryError::from);
                            match cleared.and_then(|()| Ok((*p).rename()?)) {
                                Ok(()) => file_ok(&path, &s, status, changed),
                                Err(e) => EntryResult::failed(&path, e.to_string())
                                    .of_kind(EntryKind::File),
                            }
                        }
                    }
                    Err(e) => EntryResult::failed(&path, e.to_string()).of_kind(EntryKind::File),
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
pub(super) struct EarlySync {
    pub(super) dir: Arc<Root>,
    pub(super) running: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl EarlySync {
    pub(super) fn new(dir: Arc<Root>) -> Arc<EarlySync> {
        Arc::new(EarlySync {
            dir,
            running: tokio::sync::Mutex::new(None),
        })
    }

    /// Starts a sync unless one is running.
    pub(super) async fn kick(&self) {
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
    pub(super) async fn wait(&self) {
        if let Some(h) = self.running.lock().await.take() {
            let _ = h.await;
        }
    }
}

pub(super) fn syncfs_all(root: &Root, dirs: &BTreeSet<PathBuf>) -> Result<(), PlaceError> {
    let mut seen_devs = BTreeSet::new();
    for d in dirs {
        let shown = || root.path().join(d).display().to_string();
        let f = open_for_sync(root, d).map_err(|source| PlaceError::OpenForSync {
            path: shown(),
            source,
        })?;
        let dev = rustix::fs::fstat(&f).map(|s| s.st_dev).unwrap_or(0);
        if seen_devs.insert(dev) {
            rustix::fs::syncfs(&f).map_err(|source| PlaceError::Syncfs {
                path: shown(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Access and modification time both `sec`.`nsec`.
pub(super) fn times(sec: i64, nsec: u32) -> rustix::fs::Timestamps {
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
pub(super) fn temp_name(p: &Place, what: &str) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(&p.name().as_bytes()[..p.name().len().min(80)]);
    tmp.extend_from_slice(format!(".ferrogen-{what}-{}.tmp", std::process::id()).as_bytes());
    OsString::from_vec(tmp)
}

/// Links `p` to the file at `first` (both beneath the root, no symlink
/// followed: `linkat` without `AT_SYMLINK_FOLLOW`), under a temp name
/// renamed into place.
pub(super) fn make_hard_link(first: &Place, p: &Place) -> Result<(), PlaceError> {
    use rustix::fs::AtFlags;
    let from_dir = first.open_parent()?;
    let st = rustix::fs::statat(&from_dir, first.name(), AtFlags::SYMLINK_NOFOLLOW).map_err(
        |source| PlaceError::OsAt {
            path: show(first.shown()),
            source,
        },
    )?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(PlaceError::NotRegular {
            path: show(first.shown()),
        });
    }
    let dir = p.open_parent()?;
    let tmp = temp_name(p, "hardlink");
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    rustix::fs::linkat(&from_dir, first.name(), &dir, &tmp, AtFlags::empty())?;
    let r = rustix::fs::renameat(&dir, &tmp, &dir, p.name()).map_err(PlaceError::from);
    // Renaming over a name that is already a link to the same file does
    // nothing and leaves the temp name: remove it either way.
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    r
}

/// Creates the special file `p` under a temp name, gives it its mode and
/// times through a handle on the node itself (so a name swapped for a
/// symlink meanwhile is never followed), and renames it into place.
pub(super) fn make_special(
    p: &Place,
    kind: SpecialKind,
    mode: u32,
    rdev: u64,
    ts: &rustix::fs::Timestamps,
    ids: Ids,
) -> Result<(), PlaceError> {
    use rustix::fs::{AtFlags, Mode};
    let dir = p.open_parent()?;
    let tmp = temp_name(p, "node");
    let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    rustix::fs::mknodat(
        &dir,
        &tmp,
        kind.file_type(),
        Mode::from_raw_mode(0o600),
        rdev as _,
    )?;
    let finish = || -> Result<(), PlaceError> {
        let node = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&node)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != kind.file_type() {
            return Err(PlaceError::Replaced);
        }
        if let Some((uid, gid)) = ids {
            rustix::fs::chownat(&node, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)?;
        }
        let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
        rustix::fs::chmodat(
            rustix::fs::CWD,
            via.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?;
        rustix::fs::utimensat(rustix::fs::CWD, via.as_str(), ts, AtFlags::empty())?;
        Ok(rustix::fs::renameat(&dir, &tmp, &dir, p.name())?)
    };
    finish().inspect_err(|_| {
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
    })
}

/// Creates the symlink `p` under a temp name and renames it into place,
/// all relative to its directory's handle.
pub(super) fn make_symlink(
    target: &RawPath,
    ts: &rustix::fs::Timestamps,
    ids: Ids,
    p: &Place,
) -> Result<(), PlaceError> {
    let dir = p.open_parent()?;
    let tmp = temp_name(p, "link");
    let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
    rustix::fs::symlinkat(target.as_bytes(), &dir, &tmp)?;
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
        PlaceError::from(e)
    })
}

/// Whether `p` is a directory with nothing in it.
pub(super) fn is_empty_dir(p: &Place) -> bool {
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
pub(super) fn remove_empty_dir(p: &Place) -> Result<(), PlaceError> {
    let dir = p.open_parent()?;
    match rustix::fs::unlinkat(&dir, p.name(), rustix::fs::AtFlags::REMOVEDIR) {
        // NOTDIR: a symlink or file was there; the rename replaces it.
        Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(()),
        Err(source) => Err(PlaceError::DirInTheWay {
            path: show(p.shown()),
            source,
        }),
    }
}
