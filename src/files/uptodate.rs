//! Is the destination already the source? The quick check, and what to
//! fix when only metadata differs.
//!
//! A push looks at what each destination name holds now (one `lstat`
//! beneath the push's directory handle, no symlink followed) and decides
//! per entry: send the file, hash it first (`--checksum`), or keep it —
//! possibly fixing its mode, times or owner without sending a byte. The
//! decisions are pure functions of the plan and that `lstat`, so they are
//! tested here without files; [`look`] is the only I/O.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Gid, Uid};

use super::outcome::changes;
use super::place::{Place, PlaceError};
use super::spec::{Compare, Stamp};

/// The owner ids the push applies (`--owner`), if it applies them.
pub type Ids = Option<(Uid, Gid)>;

/// What a destination name holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its type.
    pub kind: FileType,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device of the file system holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Device number (device nodes).
    pub rdev: u64,
}

impl Found {
    /// From an `lstat`.
    pub fn of(st: &rustix::fs::Stat) -> Found {
        Found {
            kind: FileType::from_raw_mode(st.st_mode),
            size: st.st_size as u64,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: st.st_rdev,
        }
    }

    /// Whether its modification time is `sec`.`nsec`.
    pub fn same_time(&self, sec: i64, nsec: u32) -> bool {
        self.mtime_sec == sec && self.mtime_nsec == nsec
    }
}

/// Metadata to set on an entry that is otherwise kept as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fixes {
    /// Permission bits to set.
    pub mode: Option<u32>,
    /// Modification (and access) time to set.
    pub times: Option<(i64, u32)>,
    /// Owner and group to set.
    pub ids: Ids,
    /// Which of them differ, as [`changes`] flags.
    pub changes: u8,
}

impl Fixes {
    /// What must change for `found` to have `mode`, time `times` (when
    /// given) and owner `ids` (when applied).
    pub fn needed(found: &Found, mode: u32, times: Option<(i64, u32)>, ids: Ids) -> Fixes {
        let mut f = Fixes::default();
        if found.mode != mode {
            f.mode = Some(mode);
            f.changes |= changes::PERMS;
        }
        if let Some((sec, nsec)) = times
            && !found.same_time(sec, nsec)
        {
            f.times = Some((sec, nsec));
            f.changes |= changes::TIME;
        }
        if let Some((uid, gid)) = ids {
            if found.uid != uid.as_raw() {
                f.changes |= changes::OWNER;
            }
            if found.gid != gid.as_raw() {
                f.changes |= changes::GROUP;
            }
            if found.uid != uid.as_raw() || found.gid != gid.as_raw() {
                f.ids = Some((uid, gid));
            }
        }
        f
    }

    /// Whether nothing needs setting.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.times.is_none() && self.ids.is_none()
    }
}

/// What to do with a regular file of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it: it is missing (`existed` false) or differs, with these
    /// [`changes`] flags.
    Send {
        /// Whether something was at the destination name.
        existed: bool,
        /// What differed.
        changes: u8,
    },
    /// Same size: compare digests before deciding (`--checksum`).
    Hash,
    /// The data is the source's: keep it, setting these (if any).
    Keep(Fixes),
}

/// The decision for a file of `size` bytes with `stamp` (as the plan saw
/// it), given what the destination holds (`None`: nothing).
pub fn file_verdict(
    how: Compare,
    size: u64,
    stamp: Option<&Stamp>,
    ids: Ids,
    found: Option<&Found>,
) -> Verdict {
    let Some(found) = found else {
        return Verdict::Send {
            existed: false,
            changes: changes::CONTENT,
        };
    };
    if found.kind != FileType::RegularFile {
        return Verdict::Send {
            existed: true,
            changes: changes::CONTENT | changes::TYPE,
        };
    }
    let mut differs = changes::CONTENT;
    if found.size != size {
        differs |= changes::SIZE;
    }
    let Some(stamp) = stamp else {
        return Verdict::Send {
            existed: true,
            changes: differs,
        };
    };
    if !found.same_time(stamp.mtime_sec, stamp.mtime_nsec) {
        differs |= changes::TIME;
    }
    match how {
        Compare::IgnoreTimes => Verdict::Send {
            existed: true,
            changes: differs,
        },
        Compare::QuickCheck if differs & (changes::SIZE | changes::TIME) != 0 => Verdict::Send {
            existed: true,
            changes: differs,
        },
        Compare::QuickCheck => Verdict::Keep(Fixes::needed(found, stamp.mode, None, ids)),
        Compare::Checksum if differs & changes::SIZE != 0 => Verdict::Send {
            existed: true,
            changes: differs,
        },
        Compare::Checksum => Verdict::Hash,
    }
}

/// The decision once digests are known (`--checksum`): keep the file if
/// they match (fixing its time, mode and owner), else send it.
pub fn after_hash(same: bool, stamp: Option<&Stamp>, ids: Ids, found: &Found) -> Verdict {
    match stamp {
        Some(stamp) if same => Verdict::Keep(Fixes::needed(
            found,
            stamp.mode,
            Some((stamp.mtime_sec, stamp.mtime_nsec)),
            ids,
        )),
        _ => Verdict::Send {
            existed: true,
            changes: changes::CONTENT
                | if stamp.is_some_and(|s| !found.same_time(s.mtime_sec, s.mtime_nsec)) {
                    changes::TIME
                } else {
                    0
                },
        },
    }
}

/// What `name` in directory `dir` holds (`None`: nothing), without
/// following a symlink.
pub fn look(dir: &OwnedFd, name: &OsStr) -> Result<Option<Found>, rustix::io::Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(Found::of(&st))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the place `p` holds: `Ok(None)` when it, or a directory above it
/// beneath the root, does not exist (or is not a directory: the push
/// replaces it, so nothing below it exists either).
pub fn look_at(p: &Place) -> Result<Option<Found>, rustix::io::Errno> {
    match p.open_parent() {
        Ok(dir) => look(&dir, p.name()),
        // A missing parent, a non-directory (ENOTDIR) or a symlink (ELOOP,
        // refused by RESOLVE_NO_SYMLINKS) in a parent's place: the push
        // puts a new directory there, so this name is new.
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Sets `fixes` on the regular file, directory or special file at `p`,
/// through a handle on it (opened without following a symlink, so the
/// change cannot land elsewhere). Owner first: a chown clears the set-id
/// bits the mode sets.
pub fn apply(p: &Place, fixes: &Fixes) -> Result<(), PlaceError> {
    use rustix::fs::{Mode, OFlags};
    if fixes.is_empty() {
        return Ok(());
    }
    let fd = p
        .root()
        .open_beneath(p.rel(), OFlags::PATH | OFlags::NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Err(PlaceError::SymlinkNow);
    }
    if let Some((uid, gid)) = fixes.ids {
        rustix::fs::chownat(&fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)?;
    }
    // chmod and utimens on an O_PATH handle go through its /proc link,
    // which names exactly that inode.
    let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    if let Some(mode) = fixes.mode {
        rustix::fs::chmodat(
            rustix::fs::CWD,
            via.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?;
    }
    if let Some((sec, nsec)) = fixes.times {
        let t = rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        let ts = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, via.as_str(), &ts, AtFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(size: u64, sec: i64, nsec: u32, mode: u32) -> Found {
        Found {
            kind: FileType::RegularFile,
            size,
            mtime_sec: sec,
            mtime_nsec: nsec,
            mode,
            uid: 1000,
            gid: 1000,
            dev: 1,
            ino: 2,
            rdev: 0,
        }
    }

    fn stamp(sec: i64, nsec: u32, mode: u32) -> Stamp {
        Stamp {
            mtime_sec: sec,
            mtime_nsec: nsec,
            mode,
            owner: None,
            xattrs: None,
        }
    }

    #[test]
    fn a_missing_file_is_sent_as_new() {
        let v = file_verdict(
            Compare::QuickCheck,
            5,
            Some(&stamp(1, 0, 0o644)),
            None,
            None,
        );
        assert_eq!(
            v,
            Verdict::Send {
                existed: false,
                changes: changes::CONTENT
            }
        );
    }

    #[test]
    fn same_size_and_time_is_kept_and_only_a_mode_change_is_applied() {
        let f = found(5, 10, 7, 0o600);
        let v = file_verdict(
            Compare::QuickCheck,
            5,
            Some(&stamp(10, 7, 0o644)),
            None,
            Some(&f),
        );
        let Verdict::Keep(fix) = v else {
            panic!("{v:?}")
        };
        assert_eq!(fix.mode, Some(0o644));
        assert_eq!(fix.times, None);
        assert_eq!(fix.changes, changes::PERMS);
        let same = file_verdict(
            Compare::QuickCheck,
            5,
            Some(&stamp(10, 7, 0o600)),
            None,
            Some(&f),
        );
        assert_eq!(same, Verdict::Keep(Fixes::default()));
    }

    #[test]
    fn a_nanosecond_or_a_byte_of_difference_sends_the_file() {
        let f = found(5, 10, 7, 0o644);
        for (size, nsec, flag) in [(5, 8, changes::TIME), (6, 7, changes::SIZE)] {
            let v = file_verdict(
                Compare::QuickCheck,
                size,
                Some(&stamp(10, nsec, 0o644)),
                None,
                Some(&f),
            );
            assert_eq!(
                v,
                Verdict::Send {
                    existed: true,
                    changes: changes::CONTENT | flag
                }
            );
        }
    }

    #[test]
    fn ignore_times_sends_even_an_identical_file() {
        let f = found(5, 10, 7, 0o644);
        let v = file_verdict(
            Compare::IgnoreTimes,
            5,
            Some(&stamp(10, 7, 0o644)),
            None,
            Some(&f),
        );
        assert!(matches!(v, Verdict::Send { existed: true, .. }));
    }

    #[test]
    fn checksum_hashes_same_sized_files_whatever_their_times() {
        let f = found(5, 99, 0, 0o644);
        let s = stamp(10, 7, 0o644);
        assert_eq!(
            file_verdict(Compare::Checksum, 5, Some(&s), None, Some(&f)),
            Verdict::Hash
        );
        assert!(matches!(
            file_verdict(Compare::Checksum, 6, Some(&s), None, Some(&f)),
            Verdict::Send { .. }
        ));
        // Same digest: kept, its time set from the source.
        let Verdict::Keep(fix) = after_hash(true, Some(&s), None, &f) else {
            panic!()
        };
        assert_eq!(fix.times, Some((10, 7)));
        assert_eq!(fix.changes, changes::TIME);
        assert!(matches!(
            after_hash(false, Some(&s), None, &f),
            Verdict::Send { existed: true, .. }
        ));
    }

    #[test]
    fn something_else_in_the_files_place_is_replaced() {
        let mut f = found(5, 10, 7, 0o644);
        f.kind = FileType::Symlink;
        let v = file_verdict(
            Compare::QuickCheck,
            5,
            Some(&stamp(10, 7, 0o644)),
            None,
            Some(&f),
        );
        assert_eq!(
            v,
            Verdict::Send {
                existed: true,
                changes: changes::CONTENT | changes::TYPE
            }
        );
    }

    #[test]
    fn an_owner_difference_counts_only_when_owners_are_applied() {
        let f = found(5, 10, 7, 0o644);
        let s = stamp(10, 7, 0o644);
        assert_eq!(
            file_verdict(Compare::QuickCheck, 5, Some(&s), None, Some(&f)),
            Verdict::Keep(Fixes::default())
        );
        let ids = Some((Uid::from_raw(0), Gid::from_raw(1000)));
        let Verdict::Keep(fix) = file_verdict(Compare::QuickCheck, 5, Some(&s), ids, Some(&f))
        else {
            panic!()
        };
        assert_eq!(fix.ids, ids);
        assert_eq!(fix.changes, changes::OWNER);
    }

    #[test]
    fn an_unknown_stamp_always_sends() {
        let f = found(5, 10, 7, 0o644);
        assert!(matches!(
            file_verdict(Compare::QuickCheck, 5, None, None, Some(&f)),
            Verdict::Send { existed: true, .. }
        ));
    }
}
