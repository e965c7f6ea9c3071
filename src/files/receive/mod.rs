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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::delta;
use super::meta::FileMeta;
use super::place::{self, Place};
use crate::call::CallError;
use crate::router::Router;
use crate::wire::ContextId;

mod data;
mod disk_writer;
mod names;
mod pending;
mod prepare;
mod request;
mod sink;
mod temp;
mod whole;
mod write;

pub use disk_writer::WRITEBACK_EVERY;
pub use names::partial_place;
pub use pending::{PendingFile, sync_dir};
use pending::{io_err, remove_place};
use prepare::{Prepared, prepare};
use request::receive_prepared;
pub use whole::receive_whole;

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
