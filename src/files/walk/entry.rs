//! What one file-system entry becomes: a plan entry (a file, a hard
//! link, a symlink, a directory, a special file) or a note as skipped or
//! unread. Apart: the top level and the walk beneath it both make entries.

use std::path::{Path, PathBuf};

use super::{Skipped, Sources, WalkOptions, show};
use crate::files::RawPath;
use crate::files::plan::{Owner, PlanEntry, SpecialKind, Stamp};
use crate::files::xattr::Xattrs;

/// What a special file is.
fn special_kind(ft: std::fs::FileType) -> Option<SpecialKind> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some(SpecialKind::Fifo)
    } else if ft.is_socket() {
        Some(SpecialKind::Socket)
    } else if ft.is_char_device() {
        Some(SpecialKind::CharDevice)
    } else if ft.is_block_device() {
        Some(SpecialKind::BlockDevice)
    } else {
        None
    }
}

/// The extended attributes of `path` itself that the walk records (none
/// without `-X`/`-A`); one that cannot be read is noted in `out.unread`
/// (the push goes on without them and fails at the end).
pub(super) fn xattrs_of(path: &Path, opts: &WalkOptions, out: &mut Sources) -> Xattrs {
    if !opts.xattrs.any() {
        return Vec::new();
    }
    crate::files::xattr::read_path(path, opts.xattrs).unwrap_or_else(|e| {
        out.unread.push(format!(
            "{}: cannot read extended attributes: {e}",
            show(path)
        ));
        Vec::new()
    })
}

/// The plan entry for special file `md` at `rel`, or its note as skipped.
pub(super) fn special_entry(
    path: &Path,
    rel: RawPath,
    md: &std::fs::Metadata,
    opts: &WalkOptions,
    out: &mut Sources,
) {
    use std::os::unix::fs::MetadataExt;
    match special_kind(md.file_type()) {
        Some(kind) if opts.takes(kind) => {
            let xattrs = xattrs_of(path, opts, out);
            out.entries.push(PlanEntry::Special {
                rel,
                kind,
                mode: md.mode() & 0o7777,
                rdev: md.rdev(),
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                owner: opts.owner.then(|| Owner::of(md)),
                xattrs,
            })
        }
        kind => out.skipped.push(Skipped {
            path: path.to_path_buf(),
            rel,
            kind: kind.map_or("special file", SpecialKind::name),
        }),
    }
}

impl Sources {
    /// The entry for regular file `md` at `src`/`rel`: the file itself, or
    /// — hard links kept and its inode already seen — a link to it.
    pub(super) fn file(
        &mut self,
        src: PathBuf,
        rel: RawPath,
        md: &std::fs::Metadata,
        opts: &WalkOptions,
    ) {
        use std::os::unix::fs::MetadataExt;
        if opts.hard_links && md.nlink() > 1 {
            match self.links.entry((md.dev(), md.ino())) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    self.entries.push(PlanEntry::HardLink {
                        rel,
                        to: first.get().clone(),
                    });
                    return;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(rel.clone());
                }
            }
        }
        self.total_bytes += md.len();
        let xattrs = opts.xattrs.any().then(|| xattrs_of(&src, opts, self));
        self.entries.push(PlanEntry::File {
            src: src.into(),
            rel,
            size: md.len(),
            stamp: Some(Stamp {
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                mode: md.mode() & 0o7777,
                owner: opts.owner.then(|| Owner::of(md)),
                xattrs,
            }),
        });
    }
}

/// Notes that `path` (in directory `rel`) could not be read, and marks
/// the directory incomplete.
pub(super) fn unread(out: &mut Sources, rel: &RawPath, path: &Path, what: &str, e: std::io::Error) {
    out.unread
        .push(format!("{}: cannot {what}: {e}", show(path)));
    if out.incomplete.last() != Some(rel) {
        out.incomplete.push(rel.clone());
    }
}

/// The plan entry of directory `md` at `rel`.
pub(super) fn dir_entry(
    rel: RawPath,
    md: &std::fs::Metadata,
    opts: &WalkOptions,
    xattrs: Xattrs,
) -> PlanEntry {
    use std::os::unix::fs::MetadataExt;
    PlanEntry::Dir {
        rel,
        mode: md.mode() & 0o7777,
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        owner: opts.owner.then(|| Owner::of(md)),
        xattrs,
    }
}

/// The plan entry of symlink `md` at `rel`, pointing at `target`.
pub(super) fn symlink_entry(
    rel: RawPath,
    target: PathBuf,
    md: &std::fs::Metadata,
    opts: &WalkOptions,
    xattrs: Xattrs,
) -> PlanEntry {
    use std::os::unix::fs::MetadataExt;
    PlanEntry::Symlink {
        rel,
        target: target.into(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        owner: opts.owner.then(|| Owner::of(md)),
        xattrs,
    }
}
