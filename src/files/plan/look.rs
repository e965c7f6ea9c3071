//! Looking at the destination before anything is sent: the quick check's
//! verdicts, `-c` digests, dry-run results, what links and specials need.

use super::*;

/// A dry run's results when DEST does not exist: every entry created
/// (DEST itself first, when `with_dest`).
pub(super) fn all_new(entries: &[PlanEntry], dest: &Path, with_dest: bool) -> Vec<EntryResult> {
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
pub(super) fn root_meta(
    plan: &PushPlan,
    root: &Root,
    before: Option<Found>,
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
    let (mode, sec, nsec, ids) = (*mode, *mtime_sec, *mtime_nsec, owner_ids(plan, owner));
    let shown = root.path();
    // Judged as the push found it (None: DEST was created by this push).
    let (mut status, mut changed) = dir_status(before.as_ref(), mode, sec, nsec, ids);
    if plan.dry_run {
        return Some(EntryResult::done(shown, EntryKind::Dir, status).with_changes(changed));
    }
    let applied = (|| -> Result<(), EntryError> {
        let fd = root.open_beneath(Path::new(""), OFlags::RDONLY | OFlags::DIRECTORY)?;
        if crate::files::xattr::sync_fd(&fd, xattrs, plan.options.xattrs)?
            && status == Status::Unchanged
        {
            (status, changed) = (Status::Changed, changed | changes::XATTRS);
        }
        let now = Found::of(&rustix::fs::fstat(&fd)?);
        if Fixes::needed(&now, mode, Some((sec, nsec)), ids).is_empty() {
            return Ok(());
        }
        if let Some((uid, gid)) = ids {
            rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
        }
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode))?;
        Ok(rustix::fs::futimens(&fd, &times(sec, nsec))?)
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
pub(super) fn dir_status(
    before: Option<&Found>,
    mode: u32,
    sec: i64,
    nsec: u32,
    ids: Ids,
) -> (Status, u8) {
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
pub(super) fn keep(p: &Place, fixes: &Fixes, dry_run: bool) -> EntryResult {
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
pub(super) fn keep_file(
    p: &Place,
    fixes: &Fixes,
    stamp: Option<&Stamp>,
    plan: &PushPlan,
) -> EntryResult {
    use crate::files::xattr;
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
                xattr::sync_place(p, want, sel)
                    .map_err(EntryError::from)
                    .and_then(|_| Ok(uptodate::apply(p, fixes)?))
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
pub(super) fn look_many(places: &[Place]) -> Vec<Result<Option<Found>, rustix::io::Errno>> {
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
pub(super) const LOOK_SHARE: usize = 8192;

/// [`look_many`] split over blocking threads, in order.
pub(super) async fn look_parallel(
    places: Vec<Place>,
) -> Result<Vec<Result<Option<Found>, rustix::io::Errno>>, EntryError> {
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
        out.extend(p.await.map_err(|e| EntryError::Internal {
            what: "looking at the destination",
            why: e.to_string(),
        })?);
    }
    Ok(out)
}

/// A file `--checksum` hashes on both sides: its place, source, stamp,
/// owner ids, what is at the destination, and size.
pub(super) type ToHash = (Place, RawPath, Option<Stamp>, Ids, Found, u64);

/// Most paths asked for in one `digests` call.
pub(super) const DIGEST_BATCH_FILES: usize = crate::files::MAX_DIGEST_PATHS;

/// For `--checksum`: whether each file at the destination has the same
/// BLAKE3 digest as its source. The destination's files are hashed here
/// while the server hashes the sources.
pub(super) async fn checksums(
    router: &Router,
    server: ContextId,
    files: &[ToHash],
) -> Vec<Result<bool, EntryError>> {
    let places: Vec<Place> = files.iter().map(|f| f.0.clone()).collect();
    let ours =
        tokio::task::spawn_blocking(move || places.iter().map(hash_place).collect::<Vec<_>>());
    // Batches of the most a call may name, several in flight (the server
    // reads as many at once per requester): one after the other, 10,000
    // files over a 20 ms link spent a second waiting.
    let mut calls = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(
        crate::files::serve::SMALL_CALLS_PER_REQUESTER,
    ));
    for (i, batch) in files.chunks(DIGEST_BATCH_FILES).enumerate() {
        let args = DigestArgs {
            paths: batch.iter().map(|f| f.1.clone()).collect(),
        };
        let (router, slots, n) = (router.clone(), slots.clone(), batch.len());
        calls.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let reply = router.call(server, crate::files::rpc::DIGESTS, &args).await;
            let got: Vec<Result<[u8; 32], EntryError>> = match reply {
                Ok(d) if d.len() == n => d
                    .into_iter()
                    .map(|d| match d {
                        FileDigest::Digest(x) => Ok(x),
                        FileDigest::Failed(why) => Err(EntryError::SourceHash(why)),
                    })
                    .collect(),
                Ok(d) => (0..n)
                    .map(|_| {
                        Err(EntryError::ShortHashes {
                            got: d.len(),
                            asked: n,
                        })
                    })
                    .collect(),
                Err(e) => (0..n)
                    .map(|_| Err(EntryError::SourceHashCall(Box::new(e.clone()))))
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
                    .map(|_| {
                        Err(EntryError::Internal {
                            what: "hashing",
                            why: e.to_string(),
                        })
                    })
                    .collect();
            }
        }
    }
    batches.sort_by_key(|(i, _)| *i);
    let theirs: Vec<Result<[u8; 32], EntryError>> =
        batches.into_iter().flat_map(|(_, b)| b).collect();
    let ours = match ours.await {
        Ok(o) => o,
        Err(e) => {
            return files
                .iter()
                .map(|_| {
                    Err(EntryError::Internal {
                        what: "hashing",
                        why: e.to_string(),
                    })
                })
                .collect();
        }
    };
    ours.into_iter()
        .zip(theirs)
        .map(|(o, t)| Ok(o? == t?))
        .collect()
}

/// The BLAKE3 digest of the regular file at `p` (no symlink followed).
pub(super) fn hash_place(p: &Place) -> Result<[u8; 32], EntryError> {
    let fd = p
        .root()
        .open_beneath(
            p.rel(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        )
        .map_err(|source| EntryError::Hash {
            what: "open",
            source,
        })?;
    // The name was a regular file when looked at; if something else (a
    // FIFO, a device) took its place since, its "content" must not be
    // judged equal to the source's and the entry kept.
    let st = rustix::fs::fstat(&fd).map_err(|source| EntryError::Hash {
        what: "stat",
        source,
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(EntryError::NoLongerRegular);
    }
    let file = std::fs::File::from(fd);
    let mut h = blake3::Hasher::new();
    h.update_reader(&file).map_err(EntryError::HashRead)?;
    Ok(*h.finalize().as_bytes())
}

/// The result of one step on an entry: ok, or failed with
/// "PATH: cannot WHAT: CAUSE".
pub(super) fn landed<E: std::fmt::Display>(
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
