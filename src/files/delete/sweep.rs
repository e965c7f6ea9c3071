//! Sweeping a directory beneath the root: listing what the source does
//! not have (nor the filter protects), and removing it, never following
//! a symlink.

use super::*;

/// `base/name` as bytes (`name` alone at the top).
fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(base.len() + 1 + name.len());
    if !base.is_empty() {
        v.extend_from_slice(base);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn kind_of(ft: FileType) -> EntryKind {
    match ft {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::File,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Special,
    }
}

/// Listing what to delete.
pub(super) struct Scan<'a> {
    pub(super) root: &'a Root,
    pub(super) filter: &'a Filter,
    pub(super) kept: &'a HashSet<Vec<u8>>,
    pub(super) doomed: Vec<Doomed>,
    pub(super) failed: Vec<EntryResult>,
}

impl Scan<'_> {
    /// The entries of directory `target` (beneath the root, no symlink
    /// followed) with their types; `None` (and a failure noted) when it
    /// cannot be read. A directory that is missing or is not a directory
    /// (a symlink, say) is `Some(empty)` when `quiet`: the push reported
    /// it already, or (in a dry run) would have created it.
    fn list(&mut self, target: &Path, quiet: bool) -> Option<Vec<(Vec<u8>, FileType)>> {
        let shown = self.root.path().join(target);
        let fail = |e: Errno| {
            EntryResult::failed(
                &shown,
                format!(
                    "{}: cannot read directory for --delete: {}",
                    show(&shown),
                    describe(e)
                ),
            )
        };
        let fd = match self
            .root
            .open_beneath(target, OFlags::RDONLY | OFlags::DIRECTORY)
        {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) if quiet => return Some(Vec::new()),
            Err(e) => {
                self.failed.push(fail(e));
                return None;
            }
        };
        let mut dir = match rustix::fs::Dir::read_from(&fd) {
            Ok(d) => d,
            Err(e) => {
                self.failed.push(fail(e));
                return None;
            }
        };
        let mut out = Vec::new();
        for entry in dir.by_ref() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.failed.push(fail(e));
                    return None;
                }
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let ft = match entry.file_type() {
                FileType::Unknown => {
                    match rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => FileType::from_raw_mode(st.st_mode),
                        Err(Errno::NOENT) => continue,
                        Err(e) => {
                            self.failed.push(fail(e));
                            return None;
                        }
                    }
                }
                ft => ft,
            };
            out.push((name.to_vec(), ft));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    }

    /// Notes what to delete in pushed directory `s`.
    pub(super) fn sweep(&mut self, s: &Swept) {
        let Some(entries) = self.list(&s.target, true) else {
            return;
        };
        for (name, ft) in entries {
            let source = join(&s.source, &name);
            if self.kept.contains(&source) {
                continue;
            }
            self.extra(s.target.join(OsStr::from_bytes(&name)), source, ft);
        }
    }

    /// Notes `target` (an entry the source lacks) for deletion, unless the
    /// rules protect it; a directory's contents first. Returns whether it
    /// is to go (a directory keeping a protected entry stays).
    fn extra(&mut self, target: PathBuf, source: Vec<u8>, ft: FileType) -> bool {
        let is_dir = ft == FileType::Directory;
        if self.filter.excluded(&source, is_dir) {
            return false;
        }
        if is_dir {
            let Some(entries) = self.list(&target, false) else {
                return false;
            };
            let mut all = true;
            for (name, ft) in entries {
                all &= self.extra(
                    target.join(OsStr::from_bytes(&name)),
                    join(&source, &name),
                    ft,
                );
            }
            if !all {
                return false;
            }
        }
        self.doomed.push(Doomed {
            rel: target,
            kind: kind_of(ft),
        });
        true
    }
}

/// Removes each entry, in order (a directory after its contents), through
/// its parent's handle. A directory whose contents could not all be
/// removed is left without a second error.
pub(super) fn remove_all(root: &Root, doomed: Vec<Doomed>) -> Vec<EntryResult> {
    let mut results = Vec::with_capacity(doomed.len());
    let mut blocked: HashSet<PathBuf> = HashSet::new();
    for d in doomed {
        if blocked.contains(&d.rel) {
            continue;
        }
        let shown = root.path().join(&d.rel);
        match remove(root, &d) {
            Ok(()) | Err(Errno::NOENT) => {
                results.push(EntryResult::done(&shown, d.kind, Status::Deleted))
            }
            Err(e) => {
                results.push(
                    EntryResult::failed(
                        &shown,
                        format!("{}: cannot delete: {}", show(&shown), describe(e)),
                    )
                    .of_kind(d.kind),
                );
                blocked.extend(d.rel.ancestors().skip(1).map(Path::to_path_buf));
            }
        }
    }
    results
}

/// Removes one entry with `unlinkat` on its parent (opened beneath the
/// root without following any symlink).
fn remove(root: &Root, d: &Doomed) -> Result<(), Errno> {
    let parent = d.rel.parent().unwrap_or(Path::new(""));
    let name = d.rel.file_name().ok_or(Errno::INVAL)?;
    let dir = root.open_dir(parent)?;
    let flags = if d.kind == EntryKind::Dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(&dir, name, flags)
}
