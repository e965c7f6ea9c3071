//! A relay's tee: each file crosses the relay's uplink once, whatever the
//! number of targets behind it.
//!
//! A push to targets reached through a relay (`--via`) would have every
//! target fetch every file from the controller, each copy crossing the
//! (usually slow, far) uplink. Instead the controller starts a tee in the
//! relay (`ferrogen.files.tee.start`) and points those targets' plans at
//! the relay. The relay then runs a FileService whose files are not its
//! own: the first request for a path fetches it once from `upstream` (the
//! controller) into a spool file, and every request — the first and the
//! later ones — is served from that spool, while it is still arriving:
//!
//! * **Large files** are received with the ordinary receiving code (size
//!   and BLAKE3 digest checked, out-of-order stripes reassembled) into an
//!   anonymous temp file of a private spool directory; a [`Gate`] tells the
//!   readers how far it is written, so children start as soon as bytes
//!   arrive and a fast child runs right behind the uplink. The relay's own
//!   `End` to a child is sent only once the upstream digest has been
//!   checked (and matches what the child was sent): a corrupt upstream
//!   transfer aborts every child's copy, and nothing half-verified lands.
//! * **Small files** (`fetch_small` batches) are fetched upstream in one
//!   batch per request, checked against their digests, and appended to one
//!   spool file.
//! * **Digests** (`--checksum`) are asked upstream.
//! * **`-z`**: a chunk or small file that came compressed is kept beside
//!   the decoded spool as it came ([`FrameLog`], a record of offset →
//!   zstd payload in an anonymous file of the spool; small files in the
//!   small-file store), and sent on to a child in that form whenever the
//!   relay would compress for that child and the child's chunk has the
//!   same bounds: the relay decompresses each chunk once (to check it)
//!   and compresses nothing twice. The child decodes what the relay
//!   decoded and checks the file's digest as always.
//!
//! Memory: the spool is on disk (the page cache holds what is hot), so a
//! slow or dead child costs disk space, not memory, and never holds the
//! others back: each child reads the spool at its own pace. The relay
//! holds in memory one upstream window plus, per child, what its own
//! FileService window allows. The spool directory is private (0700) and
//! its files have no names where the file system allows (`O_TMPFILE`); it
//! is removed when the tee stops, when the relay shuts down, and the
//! kernel frees anonymous files even after SIGKILL.
//!
//! The service that starts a tee and hands the plan on is
//! [`super::relay`].
//!
//! A child may ask the tee for any path; the tee asks upstream as itself,
//! so the controller's registry decides, exactly as for a direct fetch.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::compress::FrameLog;
use super::meta::FileMeta;
use super::receive::{PendingFile, ReceiveOptions, TempFiles};
use super::{DigestArgs, FileDigest, RawPath};
use crate::call::RemoteError;
use crate::router::Router;
use crate::wire::ContextId;

mod error;
mod gate;
mod large;
mod small;
mod spool;

pub use error::SpoolError;
pub use gate::Gate;
pub use small::{SmallEntry, StreamAt};

use large::Large;
use small::Small;
use spool::Spool;

/// What a tee did, as `stop` and `stats` answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeeStats {
    /// Files fetched from upstream one by one (`fetch`).
    pub files_fetched: u64,
    /// Files fetched from upstream in batches (`fetch_small`).
    pub small_fetched: u64,
    /// File bytes received from upstream (each file once).
    pub bytes_fetched: u64,
    /// Requests answered from what was already spooled or on its way.
    pub shared: u64,
    /// Transfers this relay completed to its children.
    pub served: u64,
    /// Spooled files dropped once every target had them.
    #[serde(default)]
    pub evicted: u64,
    /// Files fetched ahead of any target's asking (see [`Tee::read_ahead`]).
    #[serde(default)]
    pub read_ahead: u64,
    /// Of those, files no target wanted: their fetch was stopped (or their
    /// spool file dropped) once a target answered that it had them.
    #[serde(default)]
    pub read_ahead_dropped: u64,
    /// `-z`: chunks and small files sent on to targets compressed as they
    /// came from upstream, without compressing them again.
    #[serde(default)]
    pub forwarded_compressed: u64,
    /// `-z`: chunks and small files this relay compressed itself (those
    /// that came raw from upstream, or cut differently).
    #[serde(default)]
    pub compressed_here: u64,
}

/// Most upstream `fetch`es at once: half the FileService's per-requester
/// cap (`serve::MAX_FETCHES_PER_REQUESTER`, 64; a test there checks), the
/// share a push target uses for itself.
pub const UPSTREAM_FETCHES: usize = 32;

/// Bytes of files a tee starts fetching before any target has asked
/// (see [`Tee::read_ahead`]). Their point is to keep the uplink busy while
/// the first target connects and compares: measured at one host behind a
/// 100 ms / 100 Mbit uplink, that took 0.75 s between the relay being up
/// and the first target's first fetch (its `ssh`, its bootstrap, the
/// session's calls) — ~9 MiB of uplink; at 1 Gbit ten times that. A file
/// is started whole, so one larger than this is still read ahead if it is
/// the first.
pub const READ_AHEAD_BYTES: u64 = 64 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single map update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A spooled file, as a reader gets it.
pub struct Spooled {
    /// The spool file, read-only.
    pub file: Arc<File>,
    /// The metadata the upstream FileService sent.
    pub meta: FileMeta,
    /// How far it has arrived.
    pub gate: Gate,
    /// The chunks that came compressed, as they came (`None`: the spool
    /// could not keep them), to send on as they are.
    pub frames: Option<Arc<FrameLog>>,
}

/// A relay's tee: the source of a tee-mode [`FileService`](super::FileService).
pub struct Tee {
    router: Router,
    upstream: ContextId,
    /// Targets served (0: not known; nothing is evicted).
    targets: u64,
    /// Spooled files dropped once every target had them.
    evicted: AtomicU64,
    opts: ReceiveOptions,
    spool: Spool,
    temps: TempFiles,
    large: Mutex<HashMap<RawPath, Arc<Large>>>,
    small: Mutex<HashMap<RawPath, watch::Receiver<Option<Small>>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Upstream fetches running at once: the relay is one requester to the
    /// controller, which refuses more than its per-requester cap; targets
    /// at different points of a large tree could ask for more files than
    /// that between them, so the rest wait here.
    upstream_slots: Arc<tokio::sync::Semaphore>,
    /// Verified spool files, kept until the tee stops.
    kept: Mutex<Vec<PendingFile>>,
    next: AtomicU64,
    files_fetched: AtomicU64,
    small_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    shared: AtomicU64,
    /// Still reading ahead: no target has answered a batch yet.
    reading_ahead: AtomicBool,
    /// Bytes of the files read ahead so far.
    ahead_bytes: AtomicU64,
    /// Files read ahead that no target has asked for yet: their batch and
    /// their fetch's task.
    ahead: Mutex<HashMap<RawPath, (u64, tokio::task::AbortHandle)>>,
    read_ahead: AtomicU64,
    read_ahead_dropped: AtomicU64,
}

impl Tee {
    /// A tee fetching from `upstream`, spooling in a fresh private
    /// directory under the temp directory.
    pub fn new(
        router: &Router,
        upstream: ContextId,
        sparse: bool,
        targets: u32,
        read_ahead: bool,
    ) -> std::io::Result<Tee> {
        Ok(Tee {
            router: router.clone(),
            upstream,
            targets: u64::from(targets),
            evicted: AtomicU64::new(0),
            opts: ReceiveOptions {
                fsync: false,
                preserve_owner: false,
                delta: false,
                partial: false,
                xattrs: Default::default(),
                sparse,
            },
            spool: Spool::create()?,
            temps: TempFiles::default(),
            large: Mutex::default(),
            small: Mutex::default(),
            tasks: Mutex::default(),
            upstream_slots: Arc::new(tokio::sync::Semaphore::new(UPSTREAM_FETCHES)),
            kept: Mutex::default(),
            next: AtomicU64::new(0),
            files_fetched: AtomicU64::new(0),
            small_fetched: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            shared: AtomicU64::new(0),
            reading_ahead: AtomicBool::new(read_ahead),
            ahead_bytes: AtomicU64::new(0),
            ahead: Mutex::default(),
            read_ahead: AtomicU64::new(0),
            read_ahead_dropped: AtomicU64::new(0),
        })
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool.path
    }

    /// What this tee has fetched so far.
    pub fn stats(&self) -> TeeStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TeeStats {
            files_fetched: get(&self.files_fetched),
            small_fetched: get(&self.small_fetched),
            bytes_fetched: get(&self.bytes_fetched),
            shared: get(&self.shared),
            served: 0,
            evicted: get(&self.evicted),
            read_ahead: get(&self.read_ahead),
            read_ahead_dropped: get(&self.read_ahead_dropped),
            forwarded_compressed: 0,
            compressed_here: 0,
        }
    }

    /// Keeps batch `k` of the push plan (encoded) until the tee stops, on
    /// disk: the targets behind the relay each take it at their own pace,
    /// and a slow one must not make the relay hold the whole plan in
    /// memory. Batches come in order, each once.
    pub fn keep_batch(&self, k: u64, encoded: &[u8]) -> Result<(), SpoolError> {
        let mut plan = lock(&self.spool.plan);
        let (file, index) = &mut *plan;
        if k != index.len() as u64 {
            return Err(SpoolError::BatchOutOfOrder {
                k,
                kept: index.len(),
            });
        }
        let at = index.last().map(|(o, l)| o + l).unwrap_or(0);
        file.write_all_at(encoded, at)
            .map_err(|e| SpoolError::KeepPlan(Arc::new(e)))?;
        index.push((at, encoded.len() as u64));
        Ok(())
    }

    /// Batch `k` of the push plan, as kept.
    pub fn batch(&self, k: u64) -> Result<Vec<u8>, SpoolError> {
        let plan = lock(&self.spool.plan);
        let (file, index) = &*plan;
        let Some(&(at, len)) = usize::try_from(k).ok().and_then(|k| index.get(k)) else {
            return Err(SpoolError::NoBatch(k));
        };
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)
            .map_err(|e| SpoolError::ReadPlan(Arc::new(e)))?;
        Ok(buf)
    }

    /// `--checksum`: the digests, asked upstream.
    pub async fn digests(&self, args: DigestArgs) -> Result<Vec<FileDigest>, RemoteError> {
        self.router
            .call(self.upstream, super::rpc::DIGESTS, &args)
            .await
            .map_err(|e| RemoteError::Failed(format!("relay: {e}")))
    }

    /// Stops every upstream fetch and removes the spool.
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        lock(&self.kept).clear();
        lock(&self.large).clear();
        lock(&self.small).clear();
        self.temps.remove_all();
        self.spool.remove();
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.stop();
    }
}
