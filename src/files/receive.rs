//! The receiving side: pulling one file into place atomically.
//!
//! Data goes into a hidden temp file in the destination directory with mode
//! 0600 (so nobody else can read a half-written file), with its full size
//! reserved up front so a full disk fails at once. Where the file system
//! supports it the temp file is *anonymous* (`O_TMPFILE`): it has no name
//! until it has been verified, so a receiver killed mid-transfer — even by
//! SIGKILL — leaves nothing behind; the kernel frees it. Elsewhere it is a
//! named `.NAME.ferrogen-XXXX.tmp` created `O_EXCL`. Only
//! when the byte count and the BLAKE3 digest match what the server sent are
//! mode, owner/group and times applied — on the descriptor — and the file
//! fsynced and renamed over the destination ([`PendingFile::commit`]), then
//! the directory fsynced. Any failure removes the temp file and leaves the
//! old destination untouched; so does this context's shutdown (every live
//! temp file is tracked in [`TempFiles`]).
//!
//! A destination is a [`Place`]: a name beneath the push's directory
//! handle. Its directory is resolved afresh, with no symlink followed, for
//! each step (temp file, link or rename into place, fsync), so nothing is
//! ever created or replaced outside the destination (see [`super::place`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::compress::Opened;
use super::delta;
use super::hashpipe::HashPipe;
use super::meta::{FileMeta, lookup_gid, lookup_uid};
use super::place::{self, Place};
use super::reassembly::{Piece, Reassembly, Started};
use super::{FetchArgs, FetchReply, TransferMsg};
use crate::call::CallError;
use crate::channel::ChannelError;
use crate::router::{Policy, Router};
use crate::wire::{ContextId, Enc, control};

/// How a received file is put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveOptions {
    /// fsync the file before the rename and its directory after.
    pub fsync: bool,
    /// Apply the source's owner and group (by name, falling back to the
    /// numeric ids when the names do not exist here).
    pub preserve_owner: bool,
    /// Offer an existing destination (a regular file of at least
    /// [`delta::DELTA_MIN`] bytes) as a delta basis, so that only what
    /// differs travels (off: `--whole-file`).
    #[serde(default)]
    pub delta: bool,
    /// `--partial`: receive a large file into a named, owner-only partial
    /// file that an interruption leaves behind, and resume from one found
    /// there.
    #[serde(default)]
    pub partial: bool,
    /// `-X`/`-A`: make each file's extended attributes (ACLs) exactly
    /// those its metadata carries, in the namespaces selected.
    #[serde(default)]
    pub xattrs: super::xattr::XattrSel,
    /// `--sparse`: ask for holes to travel as holes, and reserve no space
    /// for them (nor, then, for the rest: the file's layout is learnt only
    /// as its data arrives).
    #[serde(default)]
    pub sparse: bool,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            fsync: true,
            preserve_owner: false,
            delta: false,
            partial: false,
            xattrs: Default::default(),
            sparse: false,
        }
    }
}

/// Why a file was not received. Every variant names the destination path.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The server refused or the call failed.
    #[error("{dest}: fetch of {src} failed: {error}")]
    Fetch {
        /// Source path on the server.
        src: String,
        /// Destination path.
        dest: String,
        /// Why.
        error: Box<CallError>,
    },
    /// A local file operation failed.
    #[error("{dest}: {op} failed: {source}")]
    Io {
        /// Destination path.
        dest: String,
        /// What was being done.
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The server abandoned the transfer.
    #[error("{dest}: transfer aborted by the sender: {reason}")]
    Aborted {
        /// Destination path.
        dest: String,
        /// Why.
        reason: String,
    },
    /// The channel died (server, or a hop towards it, disconnected).
    #[error("{dest}: transfer interrupted after {received} of {expected} bytes: {reason}")]
    Interrupted {
        /// Destination path.
        dest: String,
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        expected: u64,
        /// Why.
        reason: String,
    },
    /// What arrived does not match what was announced.
    #[error("{dest}: integrity check failed: {detail}")]
    Mismatch {
        /// Destination path.
        dest: String,
        /// What differed.
        detail: String,
    },
}

/// The temp files this context currently owns, so shutdown can remove
/// them (each beneath its destination's handle: never through a symlink).
#[derive(Clone, Default)]
pub struct TempFiles(Arc<Mutex<HashMap<PathBuf, Place>>>);

impl TempFiles {
    fn add(&self, p: &Place) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(p.shown().to_path_buf(), p.clone());
        }
    }

    fn forget(&self, p: &Place) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(p.shown());
        }
    }

    /// Removes every tracked temp file (at shutdown).
    pub fn remove_all(&self) {
        let places: Vec<Place> = match self.0.lock() {
            Ok(mut s) => s.drain().map(|(_, p)| p).collect(),
            Err(_) => return,
        };
        for p in places {
            remove_place(&p);
        }
    }

    /// How many temp files are live.
    pub fn len(&self) -> usize {
        self.0.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// True if none are live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unlinks the file at `p` (never a directory, never through a symlink).
fn remove_place(p: &Place) {
    if let Ok(dir) = p.open_parent() {
        let _ = rustix::fs::unlinkat(&dir, p.name(), rustix::fs::AtFlags::empty());
    }
}

/// A fully received, verified file waiting to be renamed into place.
pub struct PendingFile {
    file: Option<File>,
    /// The temp file's name; not yet on disk while `anonymous`.
    temp: Place,
    anonymous: bool,
    dest: Place,
    temps: TempFiles,
    armed: bool,
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
    partial: bool,
    /// Keep the file when dropped: a partial file is kept unless its data
    /// turned out wrong, so that an interruption of any kind — even this
    /// context's runtime dropping the transfer as the process exits —
    /// leaves its prefix for the next push.
    keep: bool,
    /// Remove the destination's partial file once this one is in place.
    stale_partial: bool,
    /// The delta basis, for a file written inline.
    old: Option<Arc<File>>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.armed && !self.anonymous && !self.keep {
            remove_place(&self.temp);
            self.temps.forget(&self.temp);
        }
    }
}

fn io_err<'a>(
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
    fn new(
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

    fn apply_meta(&self, opts: &ReceiveOptions, fsync: bool) -> Result<(), ReceiveError> {
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
        super::xattr::sync_fd(fd, &self.meta.xattrs, opts.xattrs)
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
    fn remove_stale_partial(&self, dir: &impl AsFd) {
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

/// The error for a destination whose directory could not be resolved
/// beneath the push's root.
fn resolve_err(dest: &Path, e: rustix::io::Errno) -> ReceiveError {
    ReceiveError::Io {
        dest: place::show(dest),
        op: "open its directory",
        source: std::io::Error::other(place::describe(e)),
    }
}

/// Gives the open (anonymous) file `file` the name `name` in `dir`; fails
/// with `EEXIST` rather than replace anything.
fn link_at(file: &File, dir: &impl AsFd, name: &std::ffi::OsStr) -> Result<(), rustix::io::Errno> {
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
fn link_to(file: &File, p: &Place) -> Result<(), rustix::io::Errno> {
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

fn temp_path(dest: &Place) -> Place {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // At most 80 bytes of the name (a name is bytes, not necessarily UTF-8).
    let name = dest.name().as_bytes();
    let short = &name[..name.len().min(80)];
    let nonce: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    let mut temp = b".".to_vec();
    temp.extend_from_slice(short);
    temp.extend_from_slice(format!(".ferrogen-{nonce:016x}.tmp").as_bytes());
    dest.sibling(std::ffi::OsString::from_vec(temp))
}

/// Fetches `src` from the FileService in context `server` into a temp file
/// next to `dest`, verifying size and digest. Does not touch `dest` itself;
/// call [`PendingFile::commit`] for that.
pub async fn receive(
    router: &Router,
    server: ContextId,
    src: &str,
    dest: &Path,
    temps: &TempFiles,
) -> Result<PendingFile, ReceiveError> {
    let place = Place::from_path(dest).map_err(io_err(dest, "open its directory"))?;
    receive_with(
        router,
        server,
        &super::RawPath::from(src),
        &place,
        temps,
        &ReceiveOptions::default(),
    )
    .await
}

/// [`receive`], told how the file will be committed: with `opts.fsync`, the
/// data is handed to the disk while it arrives ([`WRITEBACK_EVERY`]), so
/// the final fsync has little left to wait for. With `opts.delta` an
/// existing destination is offered as a delta basis; with `opts.partial`
/// the data goes to a named partial file that an interruption leaves
/// behind, and a partial file found there is resumed from.
pub async fn receive_with(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
) -> Result<PendingFile, ReceiveError> {
    receive_limited(router, server, src, place, temps, opts, None).await
}

/// [`receive_with`], refusing (before reserving any space or writing a
/// byte) a file the server says is larger than `max_size`: a pull's
/// target is not trusted to send more than it announced.
pub async fn receive_at_most(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    max_size: u64,
) -> Result<PendingFile, ReceiveError> {
    receive_limited(router, server, src, place, temps, opts, Some(max_size)).await
}

async fn receive_limited(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    max_size: Option<u64>,
) -> Result<PendingFile, ReceiveError> {
    let started = Instant::now();
    let (p, o) = (place.clone(), opts.clone());
    let mut prep = tokio::task::spawn_blocking(move || prepare(&p, &o))
        .await
        .map_err(|e| ReceiveError::Io {
            dest: place::show(place.shown()),
            op: "prepare",
            source: std::io::Error::other(e.to_string()),
        })??;
    prep.max_size = max_size;
    receive_prepared(router, server, src, place, temps, opts, prep, started).await
}

/// [`receive_with`] with an explicit delta basis `(old, basis)`: `old` is
/// the file the copy instructions read from and `basis` the signature
/// offered for it
/// (normally [`delta::signature`] of `old`; a test may offer a lie, which
/// must fail this file and leave the destination as it was).
pub async fn receive_with_basis(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    (old, basis): (File, delta::Basis),
) -> Result<PendingFile, ReceiveError> {
    let prep = Prepared {
        basis: Some((Arc::new(old), basis)),
        ..Prepared::default()
    };
    receive_prepared(
        router,
        server,
        src,
        place,
        temps,
        opts,
        prep,
        Instant::now(),
    )
    .await
}

/// Watches a file while it is received, for a relay's tee
/// ([`super::tee`]), which serves the bytes onwards as they land.
pub struct Observer {
    /// Gets the temp file, reopened read-only, and the sender's metadata
    /// as soon as the file exists (before any data).
    pub opened: Option<tokio::sync::oneshot::Sender<(File, FileMeta)>>,
    /// How many bytes of the file are written, in order, from its start;
    /// raised after each write.
    pub written: Arc<tokio::sync::watch::Sender<u64>>,
    /// Where each chunk that arrives compressed is kept as it came, so
    /// the relay can send it on without compressing it again.
    pub frames: Option<Arc<super::compress::FrameLog>>,
}

/// [`receive_with`], telling `observer` where the data goes and how far it
/// has got, so another reader may follow the file as it is written.
pub async fn receive_observed(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    observer: Observer,
) -> Result<PendingFile, ReceiveError> {
    let prep = Prepared {
        observer: Some(observer),
        ..Prepared::default()
    };
    receive_prepared(
        router,
        server,
        src,
        place,
        temps,
        opts,
        prep,
        Instant::now(),
    )
    .await
}

/// The temp file behind `file`, opened again read-only (through
/// `/proc/self/fd`, which also reaches an anonymous `O_TMPFILE`).
fn reopen_read_only(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let fd = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// What a requester brings to a fetch besides the path.
#[derive(Default)]
struct Prepared {
    /// Someone following the file as it is written (a relay's tee).
    observer: Option<Observer>,
    /// The most bytes the file may have (a pull: what the serving target
    /// announced); a larger one is refused before anything is reserved.
    max_size: Option<u64>,
    /// A partial file of ours to resume from.
    partial: Option<PartialFile>,
    /// The old destination (opened without following a symlink) and its
    /// signature, for a delta.
    basis: Option<(Arc<File>, delta::Basis)>,
    /// A regular file at the partial name that this receive does not
    /// resume from: removed once the destination lands complete.
    stale_partial: bool,
}

/// An existing partial file and the digest state of its prefix.
struct PartialFile {
    file: File,
    len: u64,
    hasher: blake3::Hasher,
}

/// The hidden name of `dest`'s partial file (`--partial`):
/// `.NAME.ferrogen-partial`, the name cut to 200 bytes (a shared partial
/// name is harmless: the prefix is verified by digest before use).
pub fn partial_place(dest: &Place) -> Place {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = dest.name().as_bytes();
    let mut p = b".".to_vec();
    p.extend_from_slice(&name[..name.len().min(200)]);
    p.extend_from_slice(b".ferrogen-partial");
    dest.sibling(std::ffi::OsString::from_vec(p))
}

/// Looks for a partial file and an old destination beneath `place`'s
/// directory handle, never following a symlink; hashes or signs what it
/// finds (a blocking read of up to the whole file).
fn prepare(place: &Place, opts: &ReceiveOptions) -> Result<Prepared, ReceiveError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dest = place.shown();
    let dir = place.open_parent().map_err(|e| resolve_err(dest, e))?;
    let mut prep = Prepared::default();
    let partial = partial_place(place);
    if let Ok(st) = rustix::fs::statat(&dir, partial.name(), AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
    {
        prep.stale_partial = true;
        if opts.partial
            && let Some(p) = open_partial(&dir, &partial, &st)
        {
            prep.stale_partial = false;
            prep.partial = Some(p);
            return Ok(prep);
        }
    }
    if !opts.delta {
        return Ok(prep);
    }
    // The old destination, if it is a regular file we can read: a symlink
    // (ELOOP), a FIFO (O_NONBLOCK: never waits) or anything else is not a
    // basis.
    let Ok(fd) = rustix::fs::openat(
        &dir,
        place.name(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(prep);
    };
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return Ok(prep);
    };
    let size = st.st_size as u64;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || size < delta::DELTA_MIN {
        return Ok(prep);
    }
    let Some(block_len) = delta::block_len_for(size) else {
        return Ok(prep);
    };
    let old = File::from(fd);
    let signing = Instant::now();
    match delta::signature_of_file(&old, size, block_len) {
        Ok(basis) => {
            tracing::debug!(
                "{}: signed {size} bytes as a delta basis in {:?}",
                place::show(dest),
                signing.elapsed()
            );
            prep.basis = Some((Arc::new(old), basis));
        }
        // Unreadable or changing under us: send the file whole.
        Err(e) => tracing::debug!("{}: no delta basis: {e}", place::show(dest)),
    }
    Ok(prep)
}

/// Opens the partial file `p` if it is one this receiver can trust: a
/// regular file with one link, owned by us, the same inode as `st` was;
/// hashes its contents.
fn open_partial(dir: &impl AsFd, p: &Place, st: &rustix::fs::Stat) -> Option<PartialFile> {
    use rustix::fs::{FileType, Mode, OFlags};
    if st.st_nlink != 1 || st.st_uid != rustix::process::geteuid().as_raw() {
        return None;
    }
    let fd = rustix::fs::openat(
        dir,
        p.name(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let now = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
        || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
    {
        return None;
    }
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600));
    let file = File::from(fd);
    let len = now.st_size as u64;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).ok()?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Some(PartialFile { file, len, hasher })
}

#[allow(clippy::too_many_arguments)]
async fn receive_prepared(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
    mut prep: Prepared,
    started: Instant,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let dest_s = place::show(dest);
    let mut rx = match router.add_handler(None, Policy::Any, Some(server), true) {
        Ok(rx) => rx,
        Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
    };
    let args = FetchArgs {
        path: src.clone(),
        sender: rx.to_sender(),
        delta: prep.basis.as_ref().map(|(_, b)| b.clone()),
        resume: prep.partial.as_ref().map(|p| super::Resume {
            len: p.len,
            digest: *p.hasher.finalize().as_bytes(),
        }),
        sparse: opts.sparse,
    };
    let reply = router
        .call(server, super::rpc::FETCH, &args)
        .await
        .map_err(|error| ReceiveError::Fetch {
            src: src.to_string(),
            dest: dest_s.clone(),
            error: Box::new(error),
        })?;
    let meta = reply.meta.clone();
    // Every way out but success tells the server to stop: an error below,
    // and this future dropped midway (a relay's read-ahead nobody wanted, a
    // cancelled push). Data sent to a handle that no longer exists is not
    // answered, so without this the server would keep a window in flight
    // until its ack timeout.
    let stop = StopServer {
        router,
        ack: Some(reply.ack),
    };
    if let Some(max) = prep.max_size
        && meta.size > max
    {
        return Err(ReceiveError::Mismatch {
            dest: dest_s,
            detail: format!(
                "the source sent {} bytes for a file it announced at {max}; refused \
                 (pull again if it grew meanwhile)",
                meta.size
            ),
        });
    }
    // From here on, any failure must tell the server to stop.
    let resume = prep.partial.take();
    let made = match resume {
        Some(p) => Ok((
            PendingFile::new(
                p.file,
                partial_place(place),
                place,
                temps,
                &meta,
                started,
                true,
            ),
            Some((p.len, p.hasher)),
        )),
        None => {
            let large = meta.size > super::CHUNK_DATA as u64;
            // A delta's space is reserved beside the writes, not before
            // them (`ReserveAhead`).
            let reserve = !opts.sparse && prep.basis.is_none();
            let named = if opts.partial && large {
                create_partial(place, temps, &meta, started, reserve)
            } else {
                None
            };
            match named {
                Some(p) => Ok((p, None)),
                None => create_temp(place, temps, &meta, started, reserve).map(|p| (p, None)),
            }
        }
    };
    let (mut pending, resume) = match made {
        Ok(m) => m,
        Err(e) => {
            reply.ack.close_with(router, &e.to_string());
            return Err(e);
        }
    };
    pending.stale_partial = prep.stale_partial && !pending.partial;
    let _reserving = match (&prep.basis, pending.file.as_ref()) {
        (Some(_), Some(f)) if !opts.sparse && resume.is_none() => ReserveAhead::start(f, meta.size),
        _ => None,
    };
    let written = match prep.observer.take() {
        Some(Observer {
            opened,
            written,
            frames,
        }) => {
            let reopened = pending.file.as_ref().map(reopen_read_only);
            match (reopened, opened) {
                (Some(Ok(f)), Some(tx)) => {
                    let _ = tx.send((f, meta.clone()));
                }
                (Some(Err(e)), _) => {
                    let e = io_err(dest, "reopen for reading")(e);
                    reply.ack.close_with(router, &e.to_string());
                    return Err(e);
                }
                _ => {}
            }
            Some((written, frames))
        }
        None => None,
    };
    let (written, frames) = match written {
        Some((w, f)) => (Some(w), f),
        None => (None, None),
    };
    let mut sink = None;
    let basis = prep.basis.map(|(f, b)| (f, b.size));
    let result = receive_data(
        router,
        &mut rx,
        &reply,
        &mut pending,
        &mut sink,
        basis,
        resume,
        opts.fsync,
        opts.sparse,
        written,
        frames,
    )
    .await;
    if let Err(e) = &result {
        reply.ack.close_with(router, &e.to_string());
        if pending.partial {
            if matches!(
                e,
                ReceiveError::Interrupted { .. } | ReceiveError::Aborted { .. }
            ) {
                keep_partial(&mut pending, sink.take()).await;
            } else {
                // Wrong data or a failed write: nothing worth resuming.
                pending.keep = false;
            }
        }
    }
    result.map(|()| {
        stop.disarm();
        pending
    })
}

/// Tells a transfer's server to stop when dropped, unless disarmed.
struct StopServer<'a> {
    router: &'a Router,
    ack: Option<crate::channel::Sender>,
}

impl StopServer<'_> {
    fn disarm(mut self) {
        self.ack = None;
    }
}

impl Drop for StopServer<'_> {
    fn drop(&mut self) {
        if let Some(ack) = self.ack.take() {
            ack.close_with(self.router, "the receiver stopped");
        }
    }
}

/// After an interruption with `--partial`: waits for the writer to put
/// down what it was given (a contiguous prefix: data is written in order),
/// makes it durable, and keeps the partial file for the next push.
async fn keep_partial(pending: &mut PendingFile, sink: Option<Sink>) {
    if let Some(Sink::Thread(w)) = sink
        && let Some(out) = w.stop().await
    {
        pending.file = Some(out.file);
    }
    if let Some(f) = pending.file.as_ref()
        && rustix::fs::fsync(f).is_ok()
    {
        tracing::debug!(
            "{}: partial file kept for the next push",
            place::show(pending.dest.shown())
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive_data(
    router: &Router,
    rx: &mut crate::channel::Receiver,
    reply: &FetchReply,
    pending: &mut PendingFile,
    sink: &mut Option<Sink>,
    basis: Option<(Arc<File>, u64)>,
    mut resume: Option<(u64, blake3::Hasher)>,
    early_writeback: bool,
    sparse: bool,
    written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    frames: Option<Arc<super::compress::FrameLog>>,
) -> Result<(), ReceiveError> {
    let dest = pending.dest.shown().to_path_buf();
    let dest = dest.as_path();
    let dest_s = place::show(dest);
    let meta = reply.meta.clone();
    let mismatch = |detail: String| ReceiveError::Mismatch {
        dest: place::show(dest),
        detail,
    };
    let old = basis.as_ref().map(|(f, _)| f.clone());
    // Order, bounds and the end are the reassembly's; this loop decodes
    // frames and writes what it releases.
    let mut order = Reassembly::new(meta.size, resume.as_ref().map(|(len, _)| *len));
    if resume.is_none() {
        *sink = Some(Sink::new(
            pending,
            &meta,
            router,
            reply,
            0,
            blake3::Hasher::new(),
            old.clone(),
            early_writeback,
            written.clone(),
        ));
    }
    let mut ready: Vec<Piece> = Vec::new();
    let mut chunks = super::compress::ChunkDecoder::default();
    let mut linked = Linker {
        dest: dest_s.clone(),
        before: None,
    };
    while !order.is_complete() {
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    ChannelError::Dead(reason) => reason.to_string(),
                    e => e.to_string(),
                };
                return Err(ReceiveError::Interrupted {
                    dest: dest_s,
                    received: order.received(),
                    expected: meta.size,
                    reason,
                });
            }
        };
        match frame.enc {
            Enc::Bin => {
                let limit = order.limit();
                let (offset, piece) = match (
                    super::sparse::parse_hole(&frame.payload),
                    delta::parse_copy(&frame.payload),
                ) {
                    (Some(hole), _) => {
                        let (offset, len) = hole.map_err(mismatch)?;
                        if !sparse {
                            return Err(mismatch(format!(
                                "hole frame at offset {offset}, but --sparse was not asked for"
                            )));
                        }
                        (offset, Piece::Hole(len))
                    }
                    (None, Some(copy)) => {
                        let (offset, from, len) = copy.map_err(mismatch)?;
                        let Some((_, old_size)) = &basis else {
                            return Err(mismatch(format!(
                                "copy instruction at offset {offset}, but no delta was asked for"
                            )));
                        };
                        if len == 0 || len > delta::MAX_COPY || from.saturating_add(len) > *old_size
                        {
                            return Err(mismatch(format!(
                                "copy instruction of {len} bytes from {from} does not fit the old file ({old_size} bytes)"
                            )));
                        }
                        (offset, Piece::Copy { from, len })
                    }
                    (None, None) => match chunks
                        .open_any(&frame.payload, limit)
                        .map_err(|e| mismatch(e.to_string()))?
                    {
                        (offset, Opened::Data(data)) => (offset, Piece::Data(data)),
                        (offset, Opened::Linked { zstd, len }) => {
                            (offset, Piece::Linked { zstd, len })
                        }
                    },
                };
                // A relay keeps a compressed chunk as it came, once it
                // decoded and was taken in order (below).
                let keep = match (&frames, &piece) {
                    (Some(_), Piece::Data(d)) if super::compress::is_compressed(&frame.payload) => {
                        Some(d.len() as u64)
                    }
                    _ => None,
                };
                let now = unix_ns();
                if pending.data_span_ns.0 == 0 {
                    pending.data_span_ns.0 = now;
                }
                pending.data_span_ns.1 = now;
                let from = order.received();
                order
                    .on_piece(offset, piece, &mut ready)
                    .map_err(|e| mismatch(e.0))?;
                if let (Some(log), Some(len)) = (&frames, keep) {
                    log.record(
                        offset,
                        len,
                        meta.size,
                        &frame.payload[super::OFFSET_LEN..],
                        0,
                    );
                }
                if ready.is_empty() {
                    continue;
                }
                let Some(s) = sink.as_mut() else {
                    return Err(mismatch("data before the transfer started".into()));
                };
                let mut at = from;
                for piece in ready.drain(..) {
                    let piece = linked.settle(at, piece, meta.size, frames.as_deref())?;
                    at += piece.len();
                    s.write(pending, piece, dest).await?;
                }
                if let Sink::Inline(..) = s {
                    reply.ack.send_control(router, &order.received());
                }
            }
            Enc::Control => {
                let msg: TransferMsg =
                    control::decode_frame(&frame).map_err(|e| mismatch(e.to_string()))?;
                match msg {
                    TransferMsg::End { size, digest } => order.on_end(size, digest),
                    TransferMsg::Abort { reason } => {
                        return Err(ReceiveError::Aborted {
                            dest: dest_s,
                            reason,
                        });
                    }
                    TransferMsg::Start { from } => {
                        let started = order
                            .on_start(from, &mut ready)
                            .map_err(|e| mismatch(e.0))?;
                        let Some((_, hasher)) = resume.take() else {
                            return Err(mismatch("unexpected start of data".into()));
                        };
                        let hasher = match started {
                            Started::AfterPrefix => hasher,
                            Started::FromScratch => {
                                // The sender's bytes differ: start over.
                                if let Some(f) = pending.file.as_ref() {
                                    f.set_len(0)
                                        .map_err(io_err(dest, "truncate partial file"))?;
                                }
                                blake3::Hasher::new()
                            }
                        };
                        let s = sink.insert(Sink::new(
                            pending,
                            &meta,
                            router,
                            reply,
                            from,
                            hasher,
                            old.clone(),
                            early_writeback,
                            written.clone(),
                        ));
                        let mut at = from;
                        for piece in ready.drain(..) {
                            let piece = linked.settle(at, piece, meta.size, frames.as_deref())?;
                            at += piece.len();
                            s.write(pending, piece, dest).await?;
                        }
                        if order.received() > from
                            && let Sink::Inline(..) = s
                        {
                            reply.ack.send_control(router, &order.received());
                        }
                    }
                }
            }
            Enc::Text => {}
        }
    }
    let (_, digest) = order.finish().map_err(|e| mismatch(e.0))?;
    let received = order.received();
    let got = match sink.take() {
        Some(Sink::Inline(hasher, ..)) => *hasher.finalize().as_bytes(),
        Some(Sink::Thread(writer)) => {
            let (file, got) = writer.finish(dest).await?;
            pending.file = Some(file);
            got
        }
        None => return Err(mismatch("no data".into())),
    };
    if got != digest {
        return Err(mismatch(format!(
            "digest {} does not match the sender's {}",
            super::hex(&got),
            super::hex(&digest)
        )));
    }
    pending.bytes = received;
    pending.digest = got;
    Ok(())
}

/// Decodes linked `-z` chunks ([`super::compress::LINKED`]) as they are
/// released in file order: each against the data piece just before it.
struct Linker {
    dest: String,
    /// The last data piece released: where it ends, and its bytes.
    before: Option<(u64, bytes::Bytes)>,
}

impl Linker {
    /// `piece`, released at `at` of a file of `size` bytes, as it is to be
    /// written: a linked chunk decoded (and, at a relay, kept as it came
    /// in `frames`). Fails if a linked chunk does not follow a data piece
    /// or does not decode to what it declared.
    fn settle(
        &mut self,
        at: u64,
        piece: Piece,
        size: u64,
        frames: Option<&super::compress::FrameLog>,
    ) -> Result<Piece, ReceiveError> {
        let piece = match piece {
            Piece::Linked { zstd, len } => {
                let before = match &self.before {
                    Some((end, b)) if *end == at => b,
                    _ => {
                        return Err(ReceiveError::Mismatch {
                            dest: self.dest.clone(),
                            detail: format!(
                                "compressed chunk at offset {at} refers to data before it that was not sent"
                            ),
                        });
                    }
                };
                let data = super::compress::decode_linked(at, &zstd, len, before).map_err(|e| {
                    ReceiveError::Mismatch {
                        dest: self.dest.clone(),
                        detail: e.to_string(),
                    }
                })?;
                if let Some(log) = frames {
                    log.record(at, len, size, &zstd, before.len() as u64);
                }
                Piece::Data(data)
            }
            other => other,
        };
        self.before = match &piece {
            Piece::Data(d) => Some((at + d.len() as u64, d.clone())),
            _ => None,
        };
        Ok(piece)
    }
}

/// With `--partial`, a new named partial file for `place`, created
/// `O_EXCL`, owner-only, beneath the directory handle; `None` if it cannot
/// be (something is at that name): the anonymous temp file serves then.
fn create_partial(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    started: Instant,
    reserve: bool,
) -> Option<PendingFile> {
    use rustix::fs::{Mode, OFlags};
    let dir = place.open_parent().ok()?;
    let p = partial_place(place);
    let fd = rustix::fs::openat(
        &dir,
        p.name(),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    // Space reserved, size unchanged: the file's size is then always the
    // length of what was written, in order — the prefix a resume offers.
    // Not with --sparse: the reservation would allocate the holes.
    if reserve {
        let _ = rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::KEEP_SIZE, 0, meta.size);
    }
    Some(PendingFile::new(
        File::from(fd),
        p,
        place,
        temps,
        meta,
        started,
        true,
    ))
}

/// Creates the hidden temp file that will receive `meta.size` bytes for
/// `dest`, with the space reserved if `reserve` (not with `--sparse`: a
/// full-size reservation would allocate the holes).
fn create_temp(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    started: Instant,
    reserve: bool,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let temp = temp_path(place);
    // The directory, beneath the push's root, no symlink followed.
    let dir = place.open_parent().map_err(|e| resolve_err(dest, e))?;
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    let anon = rustix::fs::openat(
        &dir,
        ".",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::CLOEXEC,
        mode,
    );
    let (fd, anonymous) = match anon {
        Ok(fd) => (fd, true),
        Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::NOTDIR)
        | Err(rustix::io::Errno::ACCESS) => {
            // Not a file system question: report the real cause.
            let e = anon
                .err()
                .map(std::io::Error::from)
                .unwrap_or_else(|| std::io::Error::other("?"));
            return Err(io_err(dest, "create temp file")(e));
        }
        Err(_) => {
            let fd = rustix::fs::openat(
                &dir,
                temp.name(),
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::EXCL
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::NOFOLLOW,
                mode,
            )
            .map_err(|e| io_err(dest, "create temp file")(e.into()))?;
            temps.add(&temp);
            (fd, false)
        }
    };
    let pending = PendingFile {
        file: Some(File::from(fd)),
        temp,
        anonymous,
        dest: place.clone(),
        temps: temps.clone(),
        armed: true,
        meta: meta.clone(),
        bytes: 0,
        digest: [0; 32],
        started,
        data_span_ns: (0, 0),
        partial: false,
        keep: false,
        stale_partial: false,
        old: None,
    };
    // Reserve the space up front so a full disk fails at once, unless the
    // data comes in one chunk, whose single write fails just as soon.
    if reserve && meta.size > super::CHUNK_DATA as u64 {
        let Some(file) = pending.file.as_ref() else {
            unreachable!("the file was just created");
        };
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, meta.size) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) => {
                return Err(io_err(dest, "reserve space")(
                    std::io::Error::from_raw_os_error(libc_enospc()),
                ));
            }
            // Not supported by this file system: fine, writes will tell.
            Err(_) => {}
        }
    }

    Ok(pending)
}

/// The space of a delta's temp file, reserved on a thread of its own while
/// the file is built, a slice at a time ahead of the writes.
///
/// Reserving the whole file before the first write (as for a plain
/// transfer) puts the file system's allocation on the delta's critical
/// path: on tmpfs it allocates and zeroes every page, 0.27 s for 1 GiB
/// here, after the signature and before the first copy; a delta's data
/// arrive as fast as the receiver reads its old blocks, so nothing hides
/// it. Beside the writes it costs another core's time instead (the
/// writer then finds the pages there). `KEEP_SIZE`: the file's size stays
/// that of the data written, as without a reservation. A full disk still
/// fails the transfer — through the writes — just not before the first.
struct ReserveAhead {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Bytes reserved per `fallocate` call: tmpfs holds the inode's lock for
/// the call, which the writer waits for, so a slice is short.
const RESERVE_SLICE: u64 = 8 << 20;

impl ReserveAhead {
    fn start(file: &File, size: u64) -> Option<ReserveAhead> {
        use std::sync::atomic::{AtomicBool, Ordering};
        if size <= RESERVE_SLICE {
            return None;
        }
        let file = file.try_clone().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("reserve".into())
            .spawn(move || {
                let mut at = 0;
                while at < size && !stopped.load(Ordering::Relaxed) {
                    let len = (size - at).min(RESERVE_SLICE);
                    let keep = rustix::fs::FallocateFlags::KEEP_SIZE;
                    if rustix::fs::fallocate(&file, keep, at, len).is_err() {
                        // Not supported, or the disk is full: the writes
                        // will say so.
                        break;
                    }
                    at += len;
                }
            });
        spawned.ok().map(|_| ReserveAhead { stop })
    }
}

impl Drop for ReserveAhead {
    fn drop(&mut self) {
        // The transfer is over (or failed): no more space for it.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The small-file path: puts a file that arrived whole (from
/// `fetch_small`) into a verified temp file next to `dest`. Checks the size
/// and the digest before anything is written.
pub fn receive_whole(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    data: &[u8],
    digest: &[u8; 32],
    started: Instant,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let dest_s = || place::show(dest);
    if data.len() as u64 != meta.size {
        return Err(ReceiveError::Mismatch {
            dest: dest_s(),
            detail: format!("announced {} bytes, received {}", meta.size, data.len()),
        });
    }
    let got = *blake3::hash(data).as_bytes();
    if &got != digest {
        return Err(ReceiveError::Mismatch {
            dest: dest_s(),
            detail: format!(
                "digest {} does not match the sender's {}",
                super::hex(&got),
                super::hex(digest)
            ),
        });
    }
    let mut pending = create_temp(place, temps, meta, started, true)?;
    if let Some(f) = pending.file.as_ref() {
        let mut f: &File = f;
        f.write_all(data).map_err(io_err(dest, "write"))?;
    }
    pending.bytes = meta.size;
    pending.digest = got;
    Ok(pending)
}

/// Where in-order data goes: hashed and written here (with the offset of
/// the next byte), or handed to a [`DiskWriter`] thread.
enum Sink {
    Inline(
        Box<blake3::Hasher>,
        u64,
        Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ),
    Thread(DiskWriter),
}

impl Sink {
    /// A sink for `meta.size` bytes whose first `from` are already in
    /// `pending`'s file (digested by `hasher`), copying from `old`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        pending: &mut PendingFile,
        meta: &FileMeta,
        router: &Router,
        reply: &FetchReply,
        from: u64,
        hasher: blake3::Hasher,
        old: Option<Arc<File>>,
        early_writeback: bool,
        written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ) -> Sink {
        // A file of more than one chunk is written by its own blocking
        // thread, so this context's runtime goes back to reading the stream
        // while the previous chunk is hashed and written (the two used to
        // take turns on one thread). A one-chunk file is written right
        // here: a thread hand-off would cost more than the write.
        match pending.file.take() {
            Some(file) if meta.size > super::CHUNK_DATA as u64 => Sink::Thread(DiskWriter::start(
                file,
                router.clone(),
                reply.ack,
                early_writeback,
                from,
                hasher,
                old,
                written,
            )),
            file => {
                pending.file = file;
                pending.old = old;
                Sink::Inline(Box::new(hasher), from, written)
            }
        }
    }

    async fn write(
        &mut self,
        pending: &PendingFile,
        piece: Piece,
        dest: &Path,
    ) -> Result<(), ReceiveError> {
        match self {
            Sink::Inline(hasher, at, written) => {
                if let Some(f) = pending.file.as_ref() {
                    let mut buf = Vec::new();
                    put(f, pending.old.as_deref(), &piece, *at, hasher, &mut buf)
                        .map_err(io_err(dest, "write"))?;
                }
                *at += piece.len();
                if let Some(w) = written {
                    w.send_replace(*at);
                }
                Ok(())
            }
            Sink::Thread(writer) => {
                if writer.tx.send(piece).await.is_ok() {
                    return Ok(());
                }
                // The thread stopped early because a write failed: collect
                // its error. The sink is not used again after an error.
                let Sink::Thread(writer) =
                    std::mem::replace(self, Sink::Inline(Default::default(), 0, None))
                else {
                    unreachable!("matched above");
                };
                match writer.finish(dest).await {
                    Err(e) => Err(e),
                    Ok(_) => Err(ReceiveError::Io {
                        dest: place::show(dest),
                        op: "write",
                        source: std::io::Error::other("disk writer stopped early"),
                    }),
                }
            }
        }
    }
}

/// Writes `piece` at offset `at` of `file` and hashes it: data as it is,
/// a copy read from `old` (a delta's basis) through `buf`. Read and written
/// rather than `copy_file_range`d: the bytes must be hashed anyway, since
/// the whole file's digest is checked.
fn put(
    file: &File,
    old: Option<&File>,
    piece: &Piece,
    at: u64,
    hasher: &mut blake3::Hasher,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    match piece {
        Piece::Data(data) => {
            file.write_all_at(data, at)?;
            hasher.update(data);
        }
        Piece::Linked { .. } => {
            // Decoded before it is written (`Linker::settle`).
            return Err(std::io::Error::other("a compressed chunk was not decoded"));
        }
        Piece::Hole(len) => {
            // Data is written in order, so the file ends at `at`:
            // extending it leaves the range a hole.
            file.set_len(at + len)?;
            super::sparse::hash_zeros(hasher, *len);
        }
        Piece::Copy { from, len } => {
            let Some(old) = old else {
                return Err(std::io::Error::other(
                    "copy instruction without an old file",
                ));
            };
            buf.resize(COPY_BUF.min(*len as usize), 0);
            let mut done = 0u64;
            while done < *len {
                let n = (*len - done).min(buf.len() as u64) as usize;
                read_old(old, &mut buf[..n], from + done)?;
                hasher.update(&buf[..n]);
                file.write_all_at(&buf[..n], at + done)?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// [`put`], with the hash fed to `pipe`'s thread rather than computed
/// here.
fn put_piped(
    file: &File,
    old: Option<&File>,
    piece: &Piece,
    at: u64,
    pipe: &mut HashPipe,
) -> std::io::Result<()> {
    match piece {
        Piece::Data(data) => {
            file.write_all_at(data, at)?;
            pipe.hash_bytes(data.clone())
                .map_err(std::io::Error::other)?;
        }
        Piece::Linked { .. } => {
            // Decoded before it is written (`Linker::settle`).
            return Err(std::io::Error::other("a compressed chunk was not decoded"));
        }
        Piece::Hole(len) => {
            file.set_len(at + len)?;
            pipe.hash_zeros(*len).map_err(std::io::Error::other)?;
        }
        Piece::Copy { from, len } => {
            let Some(old) = old else {
                return Err(std::io::Error::other(
                    "copy instruction without an old file",
                ));
            };
            let mut done = 0u64;
            while done < *len {
                let n = (*len - done).min(COPY_BUF as u64) as usize;
                let mut buf = pipe.buffer(n);
                read_old(old, &mut buf, from + done)?;
                file.write_all_at(&buf, at + done)?;
                pipe.hash_buf(buf).map_err(std::io::Error::other)?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads `buf.len()` bytes of a delta's old file at `at`.
fn read_old(old: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    old.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::other("the old file shrank while it was the basis of a delta transfer")
        } else {
            e
        }
    })
}

/// Bytes of the old file copied at a time.
const COPY_BUF: usize = 1 << 20;

/// Pieces queued for the disk writer: with the window's chunks in the
/// pipe, this bounds what one file holds in memory here.
const WRITER_QUEUE: usize = 8;

/// A blocking thread that writes, hashes and acknowledges one file's
/// in-order data. Acknowledgements leave from here, after the write, so
/// the sender's window still counts only bytes that reached the file.
struct DiskWriter {
    tx: tokio::sync::mpsc::Sender<Piece>,
    handle: tokio::task::JoinHandle<WriterOutcome>,
}

struct WriterOutcome {
    file: File,
    hasher: blake3::Hasher,
    error: Option<std::io::Error>,
}

impl DiskWriter {
    #[allow(clippy::too_many_arguments)]
    fn start(
        file: File,
        router: Router,
        ack: crate::channel::Sender,
        early_writeback: bool,
        from: u64,
        mut hasher: blake3::Hasher,
        old: Option<Arc<File>>,
        observed: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ) -> DiskWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(WRITER_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut written = from;
            let mut written_back = from;
            let mut buf = Vec::new();
            // A delta's copies are read from the old file here: their hash
            // goes to a thread of its own, beside the reads and writes
            // (`HashPipe`); the last of the delta's three passes is then
            // the longer of the two, not their sum. Other files keep the
            // hash on this thread (their data arrives at the link's pace).
            let mut pipe = match old {
                Some(_) => HashPipe::start(std::mem::take(&mut hasher)).ok(),
                None => None,
            };
            while let Some(piece) = rx.blocking_recv() {
                let put = match pipe.as_mut() {
                    Some(pipe) => put_piped(&file, old.as_deref(), &piece, written, pipe),
                    None => put(
                        &file,
                        old.as_deref(),
                        &piece,
                        written,
                        &mut hasher,
                        &mut buf,
                    ),
                };
                if let Err(e) = put {
                    return WriterOutcome {
                        file,
                        hasher,
                        error: Some(e),
                    };
                }
                written += piece.len();
                ack.send_control(&router, &written);
                if let Some(w) = &observed {
                    w.send_replace(written);
                }
                if early_writeback && written - written_back >= WRITEBACK_EVERY {
                    start_writeback(&file, written_back, written);
                    written_back = written;
                }
            }
            let (hasher, error) = match pipe.map(HashPipe::finish) {
                None => (hasher, None),
                Some(Ok(h)) => (h, None),
                Some(Err(why)) => (hasher, Some(std::io::Error::other(why))),
            };
            WriterOutcome {
                file,
                hasher,
                error,
            }
        });
        DiskWriter { tx, handle }
    }

    /// Waits for every queued piece to be written; returns the file and
    /// the digest of what was written.
    async fn finish(self, dest: &Path) -> Result<(File, [u8; 32]), ReceiveError> {
        drop(self.tx);
        match self.handle.await {
            Ok(WriterOutcome {
                file,
                hasher,
                error: None,
            }) => Ok((file, *hasher.finalize().as_bytes())),
            Ok(WriterOutcome { error: Some(e), .. }) => Err(io_err(dest, "write")(e)),
            Err(e) => Err(ReceiveError::Io {
                dest: place::show(dest),
                op: "write",
                source: std::io::Error::other(format!("disk writer failed: {e}")),
            }),
        }
    }

    /// Stops after what was queued; the file back (`None` if the thread
    /// failed to run).
    async fn stop(self) -> Option<WriterOutcome> {
        drop(self.tx);
        self.handle.await.ok()
    }
}

/// With fsync on, how much newly written data starts its way to the disk
/// at a time.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts (does not wait for) writeback of `[from, to)`: `fadvise(DONTNEED)`
/// begins writing dirty pages (what `sync_file_range(WRITE)` does) and drops
/// only pages already clean. Without it a large file's data would all wait
/// in the page cache for the final fsync, which then took about as long as
/// the transfer itself. Advice only: ignored where unsupported (tmpfs).
fn start_writeback(file: &File, from: u64, to: u64) {
    let _ = rustix::fs::fadvise(
        file,
        from,
        std::num::NonZeroU64::new(to - from),
        rustix::fs::Advice::DontNeed,
    );
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}
