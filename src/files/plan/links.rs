//! Symlinks, hard links and special files, once a batch's files are in:
//! like them, an existing entry is replaced only when the push is final.
//! Each one is created, replaced, or left as it is when it already
//! matches (only reported in a dry run).

use super::*;
use rustix::fs::FileType;

impl Batch<'_> {
    /// The batch's symlinks, then its hard links (their first names are
    /// in place by now), then its special files.
    pub(super) fn links_and_specials(&mut self, entries: &[PlanEntry], dry_run: bool) {
        for e in entries {
            if let PlanEntry::Symlink { .. } = e {
                self.symlink(e, dry_run);
            }
        }
        for e in entries {
            if let PlanEntry::HardLink { rel, to } = e {
                self.hard_link(rel, to, dry_run);
            }
        }
        for e in entries {
            if let PlanEntry::Special { .. } = e {
                self.special(e, dry_run);
            }
        }
    }

    fn symlink(&mut self, e: &PlanEntry, dry_run: bool) {
        let PlanEntry::Symlink {
            rel,
            target,
            mtime_sec,
            mtime_nsec,
            owner,
            xattrs,
        } = e
        else {
            return;
        };
        let Some(p) = self.admit(rel) else {
            return;
        };
        let (ids, sel) = (self.ids_of(owner), self.plan.options.xattrs);
        let found = look_at(&p).ok().flatten();
        let same = found.as_ref().is_some_and(|f| {
            f.kind == FileType::Symlink
                && f.same_time(*mtime_sec, *mtime_nsec)
                && owned_as(f, ids)
                && same_xattrs(&p, xattrs, sel)
                && p.open_parent()
                    .and_then(|d| rustix::fs::readlinkat(&d, p.name(), Vec::new()))
                    .is_ok_and(|t| t.as_bytes() == target.as_bytes())
        });
        if same {
            self.results.push(EntryResult::done(
                p.shown(),
                EntryKind::Symlink,
                Status::Unchanged,
            ));
            return;
        }
        let r = if dry_run {
            Ok(())
        } else {
            make_symlink(target, &times(*mtime_sec, *mtime_nsec), ids, &p)
                .map_err(EntryError::from)
                .and_then(|()| {
                    crate::files::xattr::sync_place(&p, xattrs, sel)?;
                    Ok(())
                })
        };
        let status = created_or_changed(&found);
        self.results
            .push(landed(&p, EntryKind::Symlink, status, "create symlink", r));
    }

    fn hard_link(&mut self, rel: &RawPath, to: &RawPath, dry_run: bool) {
        let Some(p) = self.admit(rel) else {
            return;
        };
        let found = look_at(&p).ok().flatten();
        let first = self.place_of(to);
        let same = match (&found, &first) {
            (Some(f), Ok(first)) => look_at(first)
                .ok()
                .flatten()
                .is_some_and(|g| g.dev == f.dev && g.ino == f.ino),
            _ => false,
        };
        if same {
            self.results.push(EntryResult::done(
                p.shown(),
                EntryKind::HardLink,
                Status::Unchanged,
            ));
            return;
        }
        let r = if dry_run {
            Ok(())
        } else {
            first
                .map_err(PlaceError::from)
                .and_then(|first| make_hard_link(&first, &p))
        };
        let status = created_or_changed(&found);
        self.results.push(landed(
            &p,
            EntryKind::HardLink,
            status,
            "create hard link",
            r,
        ));
    }

    fn special(&mut self, e: &PlanEntry, dry_run: bool) {
        let PlanEntry::Special {
            rel,
            kind,
            mode,
            rdev,
            mtime_sec,
            mtime_nsec,
            owner,
            xattrs,
        } = e
        else {
            return;
        };
        let Some(p) = self.admit(rel) else {
            return;
        };
        let (ids, sel) = (self.ids_of(owner), self.plan.options.xattrs);
        let found = look_at(&p).ok().flatten();
        let same = found.as_ref().is_some_and(|f| {
            same_xattrs(&p, xattrs, sel)
                && f.kind == kind.file_type()
                && f.mode == *mode
                && f.same_time(*mtime_sec, *mtime_nsec)
                && owned_as(f, ids)
                && (!matches!(kind, SpecialKind::CharDevice | SpecialKind::BlockDevice)
                    || f.rdev == *rdev)
        });
        if same {
            self.results.push(EntryResult::done(
                p.shown(),
                EntryKind::Special,
                Status::Unchanged,
            ));
            return;
        }
        let r = if dry_run {
            Ok(())
        } else {
            let times = times(*mtime_sec, *mtime_nsec);
            make_special(&p, *kind, *mode, *rdev, &times, ids)
                .map_err(EntryError::from)
                .and_then(|()| {
                    crate::files::xattr::sync_place(&p, xattrs, sel)?;
                    Ok(())
                })
        };
        let status = created_or_changed(&found);
        let what = format!("create {}", kind.name());
        self.results
            .push(landed(&p, EntryKind::Special, status, &what, r));
    }
}

/// A link or special file's status when it does not already match.
fn created_or_changed(found: &Option<Found>) -> Status {
    if found.is_some() {
        Status::Changed
    } else {
        Status::Created
    }
}

/// Whether `f` has the owner `ids` (any, when the push keeps none).
fn owned_as(f: &Found, ids: Ids) -> bool {
    ids.is_none_or(|(u, g)| f.uid == u.as_raw() && f.gid == g.as_raw())
}

/// Whether the entry at `p` already has the extended attributes `want`
/// (in the namespaces `sel` carries; always, when it carries none).
fn same_xattrs(p: &Place, want: &[Xattr], sel: crate::files::xattr::XattrSel) -> bool {
    !sel.any()
        || crate::files::xattr::read_place(p, sel)
            .is_ok_and(|have| !crate::files::xattr::differ(want, &have, sel))
}
