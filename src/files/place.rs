//! Where a push may write: everything beneath one directory handle.
//!
//! A push's destination `DEST` is the user's: the path up to it is
//! resolved as `cp` does, following symlinks, once, into a [`Root`] (an
//! open directory). Everything the push creates, replaces, chmods or
//! removes is then named *relative to that handle* ([`Place`]) and reached
//! with `openat`-family calls that never follow a symlink: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it, else
//! one `openat(O_NOFOLLOW | O_DIRECTORY)` per component. So a symlink
//! planted inside `DEST` by someone else — even one swapped in while the
//! push runs — can make an entry fail, but never lead a write, a chmod or
//! an unlink outside `DEST`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The directory a push writes beneath, opened once.
#[derive(Debug)]
pub struct Root {
    /// `O_PATH` handle of the directory.
    fd: OwnedFd,
    /// Its path as given, for messages.
    shown: PathBuf,
}

/// Flags for resolving a directory beneath the root: a handle only
/// (`O_PATH` needs no read permission), and it must be a directory.
fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

impl Root {
    /// Opens `dir`, following symlinks on the way (the path up to the
    /// destination is the user's, as for `cp`). A bare `""` is the working
    /// directory.
    pub fn open(dir: &Path) -> std::io::Result<Arc<Root>> {
        let path: &Path = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())?;
        Ok(Arc::new(Root {
            fd,
            shown: dir.to_path_buf(),
        }))
    }

    /// The root's path as given.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The root directory's handle.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `rel` (relative, no `.`/`..`) beneath the root
    /// without following any symlink, as an `O_PATH` handle. `""` is the
    /// root itself.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        self.open_beneath(rel, dir_flags())
    }

    /// Opens `rel` beneath the root with `flags` (which should include
    /// `O_DIRECTORY` or `O_NOFOLLOW` for the last component), following no
    /// symlink in any component.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        check_rel(rel)?;
        let target: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        match rustix::fs::openat2(
            &self.fd,
            target,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            // No openat2 (older kernel, or a seccomp filter that refuses
            // it): walk the components one by one instead.
            Err(Errno::NOSYS) | Err(Errno::PERM) | Err(Errno::INVAL) => {
                self.open_by_components(rel, flags)
            }
            other => other,
        }
    }

    fn open_by_components(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        let comps: Vec<&OsStr> = rel.iter().collect();
        let Some((last, parents)) = comps.split_last() else {
            return rustix::fs::openat(&self.fd, ".", flags | OFlags::CLOEXEC, Mode::empty());
        };
        let mut cur: Option<OwnedFd> = None;
        for c in parents {
            let dir = match &cur {
                Some(fd) => fd.as_fd(),
                None => self.fd.as_fd(),
            };
            cur = Some(rustix::fs::openat(
                dir,
                *c,
                dir_flags() | OFlags::NOFOLLOW,
                Mode::empty(),
            )?);
        }
        let dir = match &cur {
            Some(fd) => fd.as_fd(),
            None => self.fd.as_fd(),
        };
        rustix::fs::openat(
            dir,
            *last,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }
}

/// Refuses anything but plain relative components.
fn check_rel(rel: &Path) -> Result<(), Errno> {
    if rel.components().all(|c| matches!(c, Component::Normal(_)))
        && !rel.as_os_str().as_bytes().contains(&0)
    {
        Ok(())
    } else {
        Err(Errno::INVAL)
    }
}

/// One entry's place: a name relative to a [`Root`].
#[derive(Debug, Clone)]
pub struct Place {
    root: Arc<Root>,
    rel: PathBuf,
    shown: PathBuf,
}

impl Place {
    /// `rel` beneath `root`; `rel` must be one or more plain components.
    pub fn new(root: &Arc<Root>, rel: PathBuf) -> Result<Place, Errno> {
        check_rel(&rel)?;
        if rel.as_os_str().is_empty() {
            return Err(Errno::INVAL);
        }
        let shown = root.shown.join(&rel);
        Ok(Place {
            root: root.clone(),
            rel,
            shown,
        })
    }

    /// The place of a single path: its parent directory (the user's,
    /// followed) is the root.
    pub fn from_path(path: &Path) -> std::io::Result<Place> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path names no file"))?;
        let parent = path.parent().unwrap_or(Path::new(""));
        let root = Root::open(parent)?;
        Place::new(&root, PathBuf::from(name)).map_err(std::io::Error::from)
    }

    /// The full path, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// The path relative to the root.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The root this place is beneath.
    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    /// The last component.
    pub fn name(&self) -> &OsStr {
        self.rel.file_name().unwrap_or(self.rel.as_os_str())
    }

    /// The parent's path relative to the root (`""` for the root).
    pub fn parent_rel(&self) -> &Path {
        self.rel.parent().unwrap_or(Path::new(""))
    }

    /// Opens the parent directory (no symlinks followed anywhere beneath
    /// the root).
    pub fn open_parent(&self) -> Result<OwnedFd, Errno> {
        self.root.open_dir(self.parent_rel())
    }

    /// A sibling of this place named `name` (for temp files).
    pub fn sibling(&self, name: OsString) -> Place {
        let rel = self.parent_rel().join(&name);
        Place {
            root: self.root.clone(),
            shown: self.root.shown.join(&rel),
            rel,
        }
    }
}

/// A path for messages: every byte that is not valid UTF-8 is written
/// `\xNN`, so names that differ only there stay distinct.
pub fn show(p: &Path) -> String {
    super::escape_bytes(p.as_os_str().as_bytes())
}

/// Says in plain words why resolving a place failed, for the errors that
/// mean "not a directory we may enter".
pub fn describe(e: Errno) -> String {
    match e {
        Errno::LOOP => "a symlink where a directory is expected (not followed)".into(),
        Errno::NOTDIR => "not a directory where a directory is expected".into(),
        Errno::XDEV => "resolves outside the destination".into(),
        other => plain(&std::io::Error::from(other)),
    }
}

/// Why an entry beneath the destination could not be made, changed or
/// looked at. Its text is what a push reports for the entry, after the
/// entry's path (paths other than the entry's own are named in it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceError {
    /// The operating system refused (in the words of [`describe`]).
    #[error("{}", describe(*.0))]
    Os(#[from] Errno),
    /// The same, for another path than the entry's.
    #[error("{path}: {}", describe(*.source))]
    OsAt {
        /// The path acted on.
        path: String,
        /// Why.
        source: Errno,
    },
    /// What was created was swapped for something else meanwhile.
    #[error("replaced while being created")]
    Replaced,
    /// The entry became a symlink since it was looked at.
    #[error("is a symlink now")]
    SymlinkNow,
    /// DEST itself exists as something else than a directory.
    #[error("exists and is not a directory")]
    NotADirectory,
    /// A hard link's first name is not a regular file.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The first name.
        path: String,
    },
    /// The non-directory where a directory goes could not be removed.
    #[error("cannot replace the non-directory there: {}", describe(*.0))]
    CannotReplace(#[source] Errno),
    /// The empty directory where a file goes could not be removed.
    #[error("{path}: cannot remove the directory in the way: {}", describe(*.source))]
    DirInTheWay {
        /// The entry.
        path: String,
        /// Why.
        source: Errno,
    },
    /// Another writer changed the destination since it was checked.
    #[error(
        "{path}: changed at the destination while the push ran; not replaced \
         (push again to replace it)"
    )]
    ChangedMeanwhile {
        /// The entry.
        path: String,
    },
    /// A directory could not be opened to sync its file system.
    #[error("open {path} for sync: {}", describe(*.source))]
    OpenForSync {
        /// The directory.
        path: String,
        /// Why.
        source: Errno,
    },
    /// `syncfs` failed.
    #[error("syncfs on {path}: {source}")]
    Syncfs {
        /// A directory on that file system.
        path: String,
        /// Why.
        source: Errno,
    },
}

/// An OS error's text without the "(os error N)" that std appends.
pub fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rsplit_once(" (os error ") {
        Some((words, _)) => words.to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_in_parent_positions_are_never_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        let dest = t.path().join("dest");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(dest.join("real")).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, dest.join("evil")).expect("symlink");
        let root = Root::open(&dest).expect("root");
        assert!(root.open_dir(Path::new("real")).is_ok());
        assert_eq!(
            root.open_dir(Path::new("evil")).err(),
            Some(Errno::LOOP),
            "the last component"
        );
        let p = Place::new(&root, PathBuf::from("evil/f")).expect("place");
        assert_eq!(p.open_parent().err(), Some(Errno::LOOP));
        // The component-by-component walk refuses it too.
        assert!(
            root.open_by_components(Path::new("evil"), dir_flags())
                .is_err()
        );
        assert!(
            root.open_by_components(Path::new("real"), dir_flags())
                .is_ok()
        );
        assert!(Place::new(&root, PathBuf::from("../x")).is_err());
        assert!(Place::new(&root, PathBuf::from("/x")).is_err());
    }
}
