//! The serving side: `ferrogen.files`, run by the controller.
//!
//! Methods:
//!
//! * `register(path)`, `register_prefix(dir)` — parents only.
//! * `fetch(FetchArgs) -> FetchReply` — anyone, for registered paths, and
//!   only with a `sender` in the caller's own context (so nobody can aim a
//!   transfer at a third party).
//!
//! Scheduling follows the seed: on each physical stream, large transfers
//! send one at a time, so a contended link completes transfers instead of
//! interleaving many partial ones. A transfer hands the turn on as soon as
//! its end is sent; the next one's chunks follow while the previous one's
//! last acknowledgements are in flight, within one window shared by both
//! (waiting for them cost a round trip per file on a long link). A file that fits in one chunk is sent at once, never
//! queued behind them. The turn goes round the requesters ([`super::turns`]),
//! so one requester's queue cannot starve another's on a shared stream.
//!
//! What one requester can make the service hold is capped: at most
//! [`MAX_FETCHES_PER_REQUESTER`] transfers queued or running (each holds an
//! open descriptor), at most [`FileServiceConfig::max_open`] in all, and at
//! most [`SMALL_CALLS_PER_REQUESTER`] `fetch_small` batches being read at
//! once, each only once its reply has room on the requester's stream.
//!
//! Each large transfer has two tasks: a blocking reader that `pread`s the
//! file, hashes it (BLAKE3) and checks at the end that it did not change
//! while being read; and the pump, which sends chunks while the credit
//! [`Window`](super::window::Window) has room and refills it from acknowledgements. A requester
//! that disconnects, cancels, or stops acknowledging for `ack_timeout` ends
//! its transfer, releasing the descriptor and the stream's turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::compress::{CompressCounters, Compression};
use super::pace::{Limits, Pacers};
use super::registry::{OpenError, Registry};
use super::rpc;
use super::tee::Tee;
use super::window::Sizing;
use super::{DigestArgs, FILE_SERVICE, FetchArgs, FetchSmallArgs};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::stream::StreamId;
use crate::wire::ContextId;

mod chunk_pool;
mod fetch;
mod job;
mod lane;
mod limits;
mod pump;
mod read;
mod read_delta;
mod small;
mod stats;

use job::Cancelled;
use lane::Lane;
use limits::OpenCount;
pub(crate) use limits::raise_open_files_limit;
pub use limits::{MAX_FETCHES_PER_REQUESTER, SMALL_CALLS_PER_REQUESTER, default_max_open};
pub use small::SMALL_BATCH_BYTES;
use stats::DeltaCounters;
pub use stats::{Delivered, FileStats};

/// Tunables of the FileService.
#[derive(Debug, Clone)]
pub struct FileServiceConfig {
    /// How many unacknowledged bytes are allowed per stream.
    pub sizing: Sizing,
    /// How long a transfer may wait for an acknowledgement before it is
    /// cancelled.
    pub ack_timeout: Duration,
    /// Most large transfers (queued or running, each with an open
    /// descriptor) for all requesters together; past it `fetch` is refused.
    pub max_open: usize,
    /// Compress chunks and small files with zstd where that pays (`-z`).
    pub compress: Compression,
    /// Rate limits of the data sent (`--bwlimit`, `--bwlimit-total`).
    pub bwlimit: Limits,
    /// Extended attributes and ACLs sent with each file's metadata
    /// (`-X`, `-A`). Decided here, by whoever started the service, not by
    /// the requester: a target cannot ask for the privileged namespaces
    /// of the files it is sent.
    pub xattrs: super::xattr::XattrSel,
}

pub use super::transfer::TURN_STALL;

impl Default for FileServiceConfig {
    fn default() -> Self {
        FileServiceConfig {
            sizing: Sizing::Auto {
                floor: 1024 * 1024,
                cap: 64 * 1024 * 1024,
            },
            ack_timeout: Duration::from_secs(60),
            max_open: default_max_open(),
            compress: Compression::Off,
            bwlimit: Limits::default(),
            xattrs: Default::default(),
        }
    }
}

struct Inner {
    router: Router,
    config: FileServiceConfig,
    registry: Mutex<Registry>,
    lanes: Mutex<HashMap<StreamId, Arc<Lane>>>,
    cancels: Mutex<HashMap<u64, watch::Sender<Option<Cancelled>>>>,
    progress: Mutex<HashMap<ContextId, u64>>,
    /// What was delivered per requester (see [`FileService::delivered`]).
    wire_delivered: Mutex<HashMap<ContextId, Delivered>>,
    /// Files sent whole, per requester (for progress bars).
    files_sent: Mutex<HashMap<ContextId, u64>>,
    stats: Mutex<FileStats>,
    next_transfer: AtomicU64,
    shutting_down: AtomicBool,
    /// Every transfer's pump, so a shutdown can wait for them together.
    pumps: tokio_util::task::TaskTracker,
    /// Large transfers queued or running, per requester and in all.
    open: Mutex<OpenCount>,
    /// `fetch_small` batches being read, per requester.
    small: Mutex<HashMap<ContextId, Arc<Semaphore>>>,
    zcounters: Arc<CompressCounters>,
    dcounters: Arc<DeltaCounters>,
    pacers: Pacers,
    /// A relay's tee: files come from its spool, not from `registry`.
    tee: Option<Arc<Tee>>,
}

/// The FileService. Cheap to clone.
#[derive(Clone)]
pub struct FileService {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single map/counter update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FileService {
    /// Creates the service and registers it with `services`.
    pub fn start(router: &Router, services: &Services, config: FileServiceConfig) -> FileService {
        Self::start_with(router, services, config, None)
    }

    /// Creates a relay's service, which serves what `tee` fetches from
    /// upstream (see [`super::tee`]), and registers it with `services` in
    /// place of any other FileService of this context.
    pub fn start_tee(
        router: &Router,
        services: &Services,
        config: FileServiceConfig,
        tee: Arc<Tee>,
    ) -> FileService {
        Self::start_with(router, services, config, Some(tee))
    }

    fn start_with(
        router: &Router,
        services: &Services,
        config: FileServiceConfig,
        tee: Option<Arc<Tee>>,
    ) -> FileService {
        let mut config = config;
        config.sizing = config.sizing.bounded();
        let pacers = Pacers::new(config.bwlimit);
        let fs = FileService {
            inner: Arc::new(Inner {
                router: router.clone(),
                config,
                registry: Mutex::new(Registry::default()),
                lanes: Mutex::new(HashMap::new()),
                cancels: Mutex::new(HashMap::new()),
                progress: Mutex::new(HashMap::new()),
                wire_delivered: Mutex::new(HashMap::new()),
                files_sent: Mutex::new(HashMap::new()),
                stats: Mutex::new(FileStats::default()),
                next_transfer: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                pumps: tokio_util::task::TaskTracker::new(),
                open: Mutex::new(OpenCount::default()),
                small: Mutex::new(HashMap::new()),
                zcounters: Arc::default(),
                dcounters: Arc::default(),
                pacers,
                tee,
            }),
        };
        fs.register_with(services);
        fs
    }

    /// Registers the service's methods with `services`.
    fn register_with(&self, services: &Services) {
        let fs = self;
        let (a, b, c, d) = (fs.clone(), fs.clone(), fs.clone(), fs.clone());
        services.register(
            ServiceBuilder::new(FILE_SERVICE)
                .serve(
                    rpc::REGISTER,
                    Policy::ParentsOnly,
                    move |_c, path: String| {
                        let fs = a.clone();
                        async move {
                            fs.register(&path)
                                .map_err(|e| RemoteError::Failed(e.to_string()))
                        }
                    },
                )
                .serve(
                    rpc::REGISTER_PREFIX,
                    Policy::ParentsOnly,
                    move |_c, dir: String| {
                        let fs = b.clone();
                        async move {
                            fs.register_prefix(&dir)
                                .map_err(|e| RemoteError::Failed(e.to_string()))
                        }
                    },
                )
                .serve_then(rpc::FETCH, Policy::Any, move |caller, args: FetchArgs| {
                    let fs = c.clone();
                    async move { fs.fetch(caller, args).await }
                })
                .serve(rpc::FETCH_SMALL, Policy::Any, {
                    let fs = fs.clone();
                    move |caller, args: FetchSmallArgs| {
                        let fs = fs.clone();
                        async move { fs.fetch_small(caller.src_id, args).await }
                    }
                })
                .serve(rpc::DIGESTS, Policy::Any, {
                    let fs = fs.clone();
                    move |caller, args: DigestArgs| {
                        let fs = fs.clone();
                        async move { fs.digests(caller.src_id, args).await }
                    }
                })
                .on_shutdown(move || async move {
                    d.shutdown().await;
                    if let Some(tee) = &d.inner.tee {
                        tee.stop();
                    }
                })
                .build(),
        );
    }

    /// Allows `path` to be fetched.
    pub fn register(&self, path: impl AsRef<std::path::Path>) -> Result<(), OpenError> {
        lock(&self.inner.registry).register(path)
    }

    /// Allows every file beneath `dir` to be fetched.
    pub fn register_prefix(&self, dir: impl AsRef<std::path::Path>) -> Result<(), OpenError> {
        lock(&self.inner.registry).register_prefix(dir)
    }

    /// Allows the files beneath `dir` that `filter` does not exclude
    /// (see [`Registry::register_prefix_filtered`]; `top` is `dir`'s path
    /// relative to the rules' transfer root).
    pub fn register_prefix_filtered(
        &self,
        dir: impl AsRef<std::path::Path>,
        filter: Arc<super::filter::Filter>,
        top: &[u8],
    ) -> Result<(), OpenError> {
        lock(&self.inner.registry).register_prefix_filtered(dir, filter, top)
    }

    /// The configuration in force.
    pub fn config(&self) -> &FileServiceConfig {
        &self.inner.config
    }

    /// Cancels every pending transfer (receivers discard their partial
    /// files), then waits briefly for the pumps to say so.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for lane in lock(&self.inner.lanes).values() {
            lane.turn.close();
        }
        for tx in lock(&self.inner.cancels).values() {
            let _ = tx.send(Some(Cancelled::Shutdown));
        }
        // One deadline for all of them, not one each: a hundred pumps
        // that do not answer cost SHUTDOWN_GRACE, not a hundred times it.
        self.inner.pumps.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.inner.pumps.wait()).await;
    }
}

/// How long a shutdown waits for the pumps it cancelled to tell their
/// requesters: long enough for a message over a slow link, short enough
/// for Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
