//! A received file waiting for its place: metadata applied on the
//! descriptor, linked or renamed into place beneath the destination's
//! directory handle, and removed if it never gets there.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::names::partial_place;
use super::{ReceiveError, ReceiveOptions, TempFiles};
use crate::files::meta::{FileMeta, lookup_gid, lookup_uid};
use crate::files::place::{self, Place};

/// A fully received, verified file waiting to be renamed into place.
pub struct PendingFile {
    pub(super) file: Option<File>,
    /// The temp file's name; not yet on disk while `anonymous`.
    pub(super) temp: Place,
    pub(super) anonymous: bool,
    pub(super) dest: Place,
    pub(super) temps: TempFiles,
    pub(super) armed: bool,
    /// Metadata announced by the server.
    pub meta: FileMeta,
    /// Bytes received.
    pub bytes: u64,
    /// BLAKE3 digest of the bytes received.
    pub digest: [u8; 32],
    /// When the fetch started.
    pub started: Instant,
    /// When the first and the last data frame arrived (Unix time, ns; 0 if none).
    pub data_span_ns: (u64, u64),
    /// The temp file is the named partial file (`--partial`).
    pub(super) partial: bool,
    /// Keep the file when dropped: a partial file is kept unless its data
    /// turned out wrong, so that an interruption of any kind — even this
    /// context's runtime dropping the transfer as the process exits —
    /// leaves its prefix for the next push.
    pub(super) keep: bool,
    /// Remove the destination's partial file once this one is in place.
    pub(super) stale_partial: bool,
    /// The delta basis, for a file written inline.
    pub(super) old: Option<Arc<File>>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.armed && !self.anonymous && !self.keep {
            remove_place(&self.temp);
            self.temps.forget(&self.temp);
        }
    }
}

pub(super) fn io_err<'a>(
    dest: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> ReceiveError + 'a {
    move |source| ReceiveError::Io {
        dest: place::show(dest),
        op,
        source,
    }
}

impl PendingFile {
    /// True if the temp file has no name (`O_TMPFILE`): dropping this
    /// leaves nothing behind, and another descriptor of it keeps it alive.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// A named temp file `temp` (a partial file, if `partial`: then not
    /// registered in `temps`, so this context's shutdown keeps it).
    pub(super) fn new(
        file: File,
        temp: Place,
        dest: &Place,
        temps: &TempFiles,
        meta: &FileMeta,
        started: Instant,
        partial: bool,
    ) -> PendingFile {
        if !partial {
            temps.add(&temp);
        }
        PendingFile {
            file: Some(file),
            temp,
            anonymous: false,
            dest: dest.clone(),
            temps: temps.clone(),
            armed: true,
            meta: meta.clone(),
            bytes: 0,
            digest: [0; 32],
            started,
            data_span_ns: (0, 0),
            partial,
            keep: partial,
            stale_partial: false,
            old: None,
        }
    }

    /// Applies mode, owner/group and times on the descriptor; with `fsync`,
    /// syncs the file; then closes it (so thousands of pending files do not
    /// hold thousands of descriptors).
    pub fn finish(&mut self, opts: &ReceiveOptions, fsync: bool) -> Result<(), ReceiveError> {
        self.apply_meta(opts, fsync)?;
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let dest = self.dest.shown().to_path_buf();
        if self.anonymous {
            // Give the verified file its hidden name so the descriptor can
            // be closed; from here on Drop (or shutdown) removes it by name.
            link_to(&file, &self.temp).map_err(|e| io_err(&dest, "link temp file")(e.into()))?;
            self.anonymous = false;
            self.temps.add(&self.temp);
        }
        Ok(())
    }

    /// Like [`PendingFile::finish`] without the fsync, but keeps the
    /// descriptor open, so an anonymous temp file stays nameless until
    /// [`PendingFile::rename`]: a receiver killed before then leaves
    /// nothing behind, and a new destination costs one `linkat` instead of
    /// a link and a rename. Costs one descriptor per file until then.
    pub fn finish_open(&mut self, opts: &ReceiveOptions) -> Result<(), ReceiveError> {
        self.apply_meta(opts, false)
    }

    pub(super) fn apply_meta(
        &self,
        opts: &ReceiveOptions,
        fsync: bool,
    ) -> Result<(), ReceiveError> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        let dest = self.dest.shown();
        let fd = file.as_fd();
        let mode = rustix::fs::Mode::from_raw_mode(self.meta.mode);
        if opts.preserve_owner {
            let uid = lookup_uid(&self.meta.owner).unwrap_or(self.meta.uid);
            let gid = lookup_gid(&self.meta.group).unwrap_or(self.meta.gid);
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| io_err(dest, "chown")(e.into()))?;
        }
        // Before the mode: setting a `user.*` attribute needs write
        // permission, which a 0444 or 0000 file would not give a
        // non-root receiver (the temp file is 0600 until the chmod). An
        // ACL set here and the mode set after agree: the mode's group
        // bits are the ACL's mask.
        crate::files::xattr::sync_fd(fd, &self.meta.xattrs, opts.xattrs)
            .map_err(|e| io_err(dest, "set extended attributes")(std::io::Error::other(e)))?;
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(fd, mode).map_err(|e| io_err(dest, "chmod")(e.into()))?;
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: self.meta.atime_sec,
                tv_nsec: self.meta.atime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: self.meta.mtime_sec,
                tv_nsec: self.meta.mtime_nsec as _,
            },
        };
        rustix::fs::futimens(fd, &ts).map_err(|e| io_err(dest, "set times")(e.into()))?;
        if fsync {
            rustix::fs::fsync(fd).map_err(|e| io_err(dest, "fsync")(e.into()))?;
        }
        Ok(())
    }

    /// Puts the verified file at its destination. Call after
    /// [`PendingFile::finish`] or [`PendingFile::finish_open`] (and after a
    /// sync of the file system, when batching). A still-anonymous file is
    /// linked straight to the destination if that does not exist;
    /// otherwise the temp file is renamed over it.
    pub fn rename(mut self) -> Result<(), ReceiveError> {
        let shown = self.dest.shown().to_path_buf();
        // Both names live in one directory, resolved afresh beneath the
        // destination's handle: if it was swapped for a symlink meanwhile,
        // this fails rather than write where the link points.
        let dir = self
            .dest
            .open_parent()
            .map_err(|e| resolve_err(&shown, e))?;
        if let Some(file) = self.file.take()
            && self.anonymous
        {
            match link_at(&file, &dir, self.dest.name()) {
                Ok(()) => {
                    self.anonymous = false;
                    self.armed = false;
                    if self.stale_partial {
                        self.remove_stale_partial(&dir);
                    }
                    return Ok(());
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err(&shown, "link into place")(e.into())),
            }
            link_at(&file, &dir, self.temp.name())
                .map_err(|e| io_err(&shown, "link temp file")(e.into()))?;
            self.anonymous = false;
            self.temps.add(&self.temp);
        }
        rustix::fs::renameat(&dir, self.temp.name(), &dir, self.dest.name())
            .map_err(|e| io_err(&shown, "rename")(e.into()))?;
        self.armed = false;
        self.temps.forget(&self.temp);
        if self.stale_partial {
            self.remove_stale_partial(&dir);
        }
        Ok(())
    }

    /// The destination is now complete: a partial file left for it by an
    /// earlier push is of no more use. Only a regular file is removed
    /// (and `unlinkat` never follows a symlink).
    pub(super) fn remove_stale_partial(&self, dir: &impl AsFd) {
        use rustix::fs::{AtFlags, FileType};
        let p = partial_place(&self.dest);
        if let Ok(st) = rustix::fs::statat(dir, p.name(), AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        {
            let _ = rustix::fs::unlinkat(dir, p.name(), AtFlags::empty());
        }
    }

    /// `finish`, fsync, rename, and fsync the directory (when `opts.fsync`):
    /// the whole durable commit of one file.
    pub fn commit(mut self, opts: &ReceiveOptions) -> Result<(), ReceiveError> {
        self.finish(opts, opts.fsync)?;
        let dest = self.dest.clone();
        self.rename()?;
        if opts.fsync {
            sync_dir(&dest)?;
        }
        Ok(())
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        self.dest.shown()
    }

    /// The destination's place beneath the push's root.
    pub fn place(&self) -> &Place {
        &self.dest
    }
}

/// Unlinks the file at `p` (never a directory, never through a symlink).
pub(super) fn remove_place(p: &Place) {
    if let Ok(dir) = p.open_parent() {
        let _ = rustix::fs::unlinkat(&dir, p.name(), rustix::fs::AtFlags::empty());
    }
}

/// The error for a destination whose directory could not be resolved
/// beneath the push's root.
pub(super) fn resolve_err(dest: &Path, e: rustix::io::Errno) -> ReceiveError {
    ReceiveError::Io {
        dest: place::show(dest),
        op: "open its directory",
        source: std::io::Error::other(place::describe(e)),
    }
}

/// Gives the open (anonymous) file `file` the name `name` in `dir`; fails
/// with `EEXIST` rather than replace anything.
pub(super) fn link_at(
    file: &File,
    dir: &impl AsFd,
    name: &std::ffi::OsStr,
) -> Result<(), rustix::io::Errno> {
    // AT_EMPTY_PATH first: Linux ≥ 6.10 allows it for a file we opened
    // ourselves (before, only with CAP_DAC_READ_SEARCH), and it skips the
    // procfs lookup.
    match rustix::fs::linkat(file, "", dir, name, rustix::fs::AtFlags::EMPTY_PATH) {
        Err(e) if e != rustix::io::Errno::EXIST => {
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc_path.as_str(),
                dir,
                name,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
        }
        other => other,
    }
}

/// Gives the open (anonymous) file `file` the name of `p`.
pub(super) fn link_to(file: &File, p: &Place) -> Result<(), rustix::io::Errno> {
    let dir = p.open_parent()?;
    link_at(file, &dir, p.name())
}

/// fsyncs the directory containing `dest`.
pub fn sync_dir(dest: &Place) -> Result<(), ReceiveError> {
    let path = dest.shown();
    let dir = dest.open_parent().map_err(|e| resolve_err(path, e))?;
    // The handle is O_PATH, which cannot be fsynced: open it for reading.
    let d = rustix::fs::openat(
        &dir,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_err(path, "open directory for fsync")(e.into()))?;
    rustix::fs::fsync(&d).map_err(|e| io_err(path, "fsync directory")(e.into()))
}
