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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::meta::{FileMeta, lookup_gid, lookup_uid};
use super::place::{self, Place};
use super::{FILE_SERVICE, FetchArgs, FetchReply, TransferMsg};
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
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            fsync: true,
            preserve_owner: false,
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
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.armed && !self.anonymous {
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
        Ok(())
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
/// the final fsync has little left to wait for.
pub async fn receive_with(
    router: &Router,
    server: ContextId,
    src: &super::RawPath,
    place: &Place,
    temps: &TempFiles,
    opts: &ReceiveOptions,
) -> Result<PendingFile, ReceiveError> {
    let started = Instant::now();
    let dest = place.shown();
    let dest_s = place::show(dest);
    let mut rx = match router.add_handler(None, Policy::Any, Some(server), true) {
        Ok(rx) => rx,
        Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
    };
    let args = FetchArgs {
        path: src.clone(),
        sender: rx.to_sender(),
    };
    let reply: FetchReply = router
        .call_service(server, FILE_SERVICE, "fetch", &args)
        .await
        .map_err(|error| ReceiveError::Fetch {
            src: src.to_string(),
            dest: dest_s.clone(),
            error: Box::new(error),
        })?;
    let meta = reply.meta.clone();
    // From here on, any failure must tell the server to stop.
    let result = receive_data(router, &mut rx, &reply, place, temps, started, opts.fsync).await;
    if let Err(e) = &result {
        reply.ack.close_with(router, &e.to_string());
    }
    let _ = meta;
    result
}

async fn receive_data(
    router: &Router,
    rx: &mut crate::channel::Receiver,
    reply: &FetchReply,
    place: &Place,
    temps: &TempFiles,
    started: Instant,
    early_writeback: bool,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let dest_s = place::show(dest);
    let meta = reply.meta.clone();
    let mut pending = create_temp(place, temps, &meta, started)?;
    // A file of more than one chunk is written by its own blocking thread,
    // so this context's runtime goes back to reading the stream while the
    // previous chunk is hashed and written (the two used to take turns on
    // one thread). A one-chunk file is written right here: a thread hand-off
    // would cost more than the write.
    let mut sink = if meta.size > super::CHUNK_DATA as u64 {
        let Some(file) = pending.file.take() else {
            unreachable!("the file was just created");
        };
        Sink::Thread(DiskWriter::start(
            file,
            router.clone(),
            reply.ack,
            early_writeback,
        ))
    } else {
        Sink::Inline(Box::default())
    };
    let mut received = 0u64;
    let mut held: std::collections::BTreeMap<u64, bytes::Bytes> = std::collections::BTreeMap::new();
    let mut held_bytes = 0usize;
    let mut end: Option<(u64, [u8; 32])> = None;
    let mut chunks = super::compress::ChunkDecoder::default();
    loop {
        if let Some((size, _)) = end
            && received >= size
        {
            break;
        }
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(ChannelError::Dead(reason)) => {
                return Err(ReceiveError::Interrupted {
                    dest: dest_s,
                    received,
                    expected: meta.size,
                    reason,
                });
            }
            Err(e) => {
                return Err(ReceiveError::Interrupted {
                    dest: dest_s,
                    received,
                    expected: meta.size,
                    reason: e.to_string(),
                });
            }
        };
        match frame.enc {
            Enc::Bin => {
                let limit = end.map(|(s, _)| s).unwrap_or(meta.size);
                let (offset, data) =
                    chunks
                        .open(&frame.payload, limit)
                        .map_err(|e| ReceiveError::Mismatch {
                            dest: dest_s.clone(),
                            detail: e.to_string(),
                        })?;
                if offset.saturating_add(data.len() as u64) > limit || offset < received {
                    return Err(ReceiveError::Mismatch {
                        dest: dest_s,
                        detail: format!(
                            "chunk at {offset}+{} does not fit (announced {limit} bytes, {received} already written)",
                            data.len()
                        ),
                    });
                }
                let now = unix_ns();
                if pending.data_span_ns.0 == 0 {
                    pending.data_span_ns.0 = now;
                }
                pending.data_span_ns.1 = now;
                if offset > received {
                    // Ahead of a chunk still travelling on another stripe:
                    // hold it. The sender never has more than its window
                    // unacknowledged, and we acknowledge only what is
                    // contiguous, so this is bounded by the window.
                    held_bytes += data.len();
                    if held.insert(offset, data).is_some() || held_bytes > MAX_HELD {
                        return Err(ReceiveError::Mismatch {
                            dest: dest_s,
                            detail: format!(
                                "duplicate or excessive out-of-order data at offset {offset}"
                            ),
                        });
                    }
                    continue;
                }
                received += data.len() as u64;
                sink.write(&pending, data, dest).await?;
                while let Some(next) = held.remove(&received) {
                    held_bytes -= next.len();
                    received += next.len() as u64;
                    sink.write(&pending, next, dest).await?;
                }
                if let Sink::Inline(_) = sink {
                    reply.ack.send_control(router, &received);
                }
            }
            Enc::Control => {
                let msg: TransferMsg =
                    control::decode_frame(&frame).map_err(|e| ReceiveError::Mismatch {
                        dest: dest_s.clone(),
                        detail: e.to_string(),
                    })?;
                match msg {
                    TransferMsg::End { size, digest } => end = Some((size, digest)),
                    TransferMsg::Abort { reason } => {
                        return Err(ReceiveError::Aborted {
                            dest: dest_s,
                            reason,
                        });
                    }
                }
            }
            Enc::Text => {}
        }
    }
    let (size, digest) = end.unwrap_or((0, [0; 32]));
    if size != meta.size || received != size {
        return Err(ReceiveError::Mismatch {
            dest: dest_s,
            detail: format!(
                "announced {} bytes, sender counted {size}, received {received}",
                meta.size
            ),
        });
    }
    let got = match sink {
        Sink::Inline(hasher) => *hasher.finalize().as_bytes(),
        Sink::Thread(writer) => {
            let (file, got) = writer.finish(dest).await?;
            pending.file = Some(file);
            got
        }
    };
    if got != digest {
        return Err(ReceiveError::Mismatch {
            dest: dest_s,
            detail: format!(
                "digest {} does not match the sender's {}",
                super::hex(&got),
                super::hex(&digest)
            ),
        });
    }
    pending.bytes = received;
    pending.digest = got;
    Ok(pending)
}

/// Creates the hidden temp file that will receive `meta.size` bytes for
/// `dest`, with the space reserved.
fn create_temp(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    started: Instant,
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
    };
    // Reserve the space up front so a full disk fails at once, unless the
    // data comes in one chunk, whose single write fails just as soon.
    if meta.size > super::CHUNK_DATA as u64 {
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
    let mut pending = create_temp(place, temps, meta, started)?;
    if let Some(f) = pending.file.as_ref() {
        let mut f: &File = f;
        f.write_all(data).map_err(io_err(dest, "write"))?;
    }
    pending.bytes = meta.size;
    pending.digest = got;
    Ok(pending)
}

/// Where in-order data goes: hashed and written here, or handed to a
/// [`DiskWriter`] thread.
enum Sink {
    Inline(Box<blake3::Hasher>),
    Thread(DiskWriter),
}

impl Sink {
    async fn write(
        &mut self,
        pending: &PendingFile,
        data: bytes::Bytes,
        dest: &Path,
    ) -> Result<(), ReceiveError> {
        match self {
            Sink::Inline(hasher) => {
                if let Some(f) = pending.file.as_ref() {
                    let mut f: &File = f;
                    f.write_all(&data).map_err(io_err(dest, "write"))?;
                }
                hasher.update(&data);
                Ok(())
            }
            Sink::Thread(writer) => {
                if writer.tx.send(data).await.is_ok() {
                    return Ok(());
                }
                // The thread stopped early because a write failed: collect
                // its error. The sink is not used again after an error.
                let Sink::Thread(writer) =
                    std::mem::replace(self, Sink::Inline(Default::default()))
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

/// Chunks queued for the disk writer: with the window's chunks in the
/// pipe, this bounds what one file holds in memory here.
const WRITER_QUEUE: usize = 8;

/// A blocking thread that writes, hashes and acknowledges one file's
/// in-order data. Acknowledgements leave from here, after the write, so
/// the sender's window still counts only bytes that reached the file.
struct DiskWriter {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    handle: tokio::task::JoinHandle<WriterOutcome>,
}

struct WriterOutcome {
    file: File,
    hasher: blake3::Hasher,
    error: Option<std::io::Error>,
}

impl DiskWriter {
    fn start(
        file: File,
        router: Router,
        ack: crate::channel::Sender,
        early_writeback: bool,
    ) -> DiskWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(WRITER_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut hasher = blake3::Hasher::new();
            let mut written = 0u64;
            let mut written_back = 0u64;
            while let Some(data) = rx.blocking_recv() {
                if let Err(e) = (&file).write_all(&data) {
                    return WriterOutcome {
                        file,
                        hasher,
                        error: Some(e),
                    };
                }
                hasher.update(&data);
                written += data.len() as u64;
                ack.send_control(&router, &written);
                if early_writeback && written - written_back >= WRITEBACK_EVERY {
                    start_writeback(&file, written_back, written);
                    written_back = written;
                }
            }
            WriterOutcome {
                file,
                hasher,
                error: None,
            }
        });
        DiskWriter { tx, handle }
    }

    /// Waits for every queued chunk to be written; returns the file and the
    /// digest of what was written.
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
}

/// Most out-of-order bytes held while waiting for an earlier chunk: the
/// largest window a sender may use, plus slack.
const MAX_HELD: usize = 80 << 20;

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
