//! The plan's directories beneath the root: creating one (or accepting
//! the one there), its mode and times at the end, a handle to sync it,
//! and those whose creation failed.

use super::*;

/// Directories whose creation failed, so that what lies below each is
/// reported once with it rather than once per entry.
#[derive(Default)]
pub(super) struct FailedDirs {
    /// Relative path → (its result, entries skipped below it).
    dirs: BTreeMap<PathBuf, (EntryResult, u64)>,
}

impl FailedDirs {
    pub(super) fn insert(&mut self, p: &Place, result: EntryResult) {
        self.dirs.insert(p.rel().to_path_buf(), (result, 0));
    }

    /// The place to create, or `None` (counted) when it lies below a
    /// directory that failed, or is unusable (reported).
    pub(super) fn admit(
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
    pub(super) fn into_results(self) -> Vec<EntryResult> {
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
pub(super) fn make_dir(p: &Place, is_dest: bool) -> Result<Option<Found>, PlaceError> {
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
pub(super) fn open_for_sync(root: &Root, rel: &Path) -> Result<OwnedFd, rustix::io::Errno> {
    root.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Applies a directory's mode and times through a handle on it (opened
/// without following any symlink, so the change cannot land elsewhere).
pub(super) fn set_dir_meta(
    p: &Place,
    mode: u32,
    sec: i64,
    nsec: u32,
    ids: Ids,
) -> Result<(), PlaceError> {
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

/// Step 5, the directories' metadata (mode, times, owner, attributes),
/// deepest first, now that their contents are in: their results.
pub(super) fn dirs_meta(plan: &PushPlan, mut dirs: Vec<DirMeta>) -> Vec<EntryResult> {
    let mut results = Vec::with_capacity(dirs.len());
    dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.rel().components().count()));
    for (p, mode, sec, nsec, ids, mut status, mut changed, xattrs) in dirs {
        // Extended attributes first (see `PendingFile::apply_meta`), only
        // where they differ.
        let set_xattrs = crate::files::xattr::sync_place(&p, &xattrs, plan.options.xattrs);
        if matches!(set_xattrs, Ok(true)) && status == Status::Unchanged {
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
            set_xattrs.map_err(EntryError::from).and_then(|_| {
                if needed {
                    Ok(set_dir_meta(&p, mode, sec, nsec, ids)?)
                } else {
                    Ok(())
                }
            }),
        );
        results.push(r.with_changes(changed));
    }
    results
}
