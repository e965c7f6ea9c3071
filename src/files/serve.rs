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
//! [`Window`] has room and refills it from acknowledgements. A requester
//! that disconnects, cancels, or stops acknowledging for `ack_timeout` ends
//! its transfer, releasing the descriptor and the stream's turn.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, mpsc, watch};

use super::turns::Turns;

use super::compress::{self, ChunkEncoder, CompressCounters, Compression, Tuner};
use super::delta::{self, Matcher, Op};
use super::meta::FileMeta;
use super::pace::{Limits, Pacers};
use super::registry::{OpenError, Registry};
use super::rpc;
use super::tee::{Gate, Tee};
use super::transfer::{SendMachine, StripeView};
use super::window::{PathEstimate, Sizing, Window};
use super::{
    CHUNK_DATA, DigestArgs, FILE_SERVICE, FetchArgs, FetchReply, FetchSmallArgs, FileDigest,
    MAX_DIGEST_PATHS, OFFSET_LEN, Resume, SMALL_FILE_MAX, SmallFile, TransferMsg,
};
use crate::call::RemoteError;
use crate::channel::{ChannelError, Receiver, Sender};
use crate::router::{Policy, Router};
use crate::service::{Caller, FollowUp, ServiceBuilder, Services};
use crate::stream::StreamId;
use crate::wire::{ContextId, Enc, Frame, control};

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

/// Most large transfers one requester may have queued or running; past it
/// `fetch` is refused with a message naming the limit. A push target asks
/// for at most `--parallel` files at once, which is capped to this.
pub const MAX_FETCHES_PER_REQUESTER: usize = 64;

// A relay's tee fetches at most this many files at once from upstream,
// where it is one requester: checked when compiling.
const _: () = assert!(super::tee::UPSTREAM_FETCHES <= MAX_FETCHES_PER_REQUESTER / 2);

pub use super::transfer::TURN_STALL;

/// Waiting for a turn given up part-way ([`Turns::take_again`]).
type RegainTurn = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<super::turns::Turn, super::turns::Closed>> + Send>,
>;

/// `fetch_small` calls of one requester being read and answered at once
/// (a push target keeps 4 in flight); further calls wait their turn
/// without holding any file data.
pub const SMALL_CALLS_PER_REQUESTER: usize = 4;

/// The default [`FileServiceConfig::max_open`]: half the descriptors the
/// process may open (raised to its hard limit first), at most 4096 — the
/// rest is for streams and everything else.
pub fn default_max_open() -> usize {
    (raise_open_files_limit() / 2).clamp(16, 4096) as usize
}

/// Raises this process's soft limit on open files to its hard limit (as
/// Go's runtime does at start) and returns the soft limit now in force
/// (`u64::MAX` for none).
pub(crate) fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim
        .maximum
        .is_none_or(|max| lim.current.is_some_and(|cur| cur < max))
    {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

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

/// What transfers to one context have delivered so far
/// ([`FileService::delivered`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Bytes of large transfers (the ones stripes carry) as the link
    /// carried them (compressed, delta instructions), acknowledged by the
    /// receiver. One-chunk files and small-file answers go on the primary
    /// stream as they are sent, unacknowledged: not counted (a burst of
    /// them queued at once would read as a rate the link never had).
    pub wire_bytes: u64,
    /// The smallest round trip the large transfers' windows measured (a
    /// ping's may wait behind the data already queued).
    pub min_rtt: Option<Duration>,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct FileStats {
    /// The most unacknowledged bytes any transfer ever had.
    pub peak_in_flight: u64,
    /// Transfers completed (fully acknowledged, or sent for small files).
    pub completed: u64,
    /// Transfers cancelled or aborted.
    pub aborted: u64,
    /// `fetch_small` calls answered (each brings many small files).
    pub small_calls: u64,
    /// Calls refused for a cap (per requester or in all).
    pub refused: u64,
    /// Acknowledgements ignored as stale or repeated.
    pub stale_acks: u64,
    /// With `compress`: chunks and small files sent compressed.
    pub compressed_chunks: u64,
    /// With `compress`: chunks and small files tried and sent raw because
    /// they did not shrink.
    pub raw_chunks: u64,
    /// File bytes sent compressed.
    pub compressed_bytes_in: u64,
    /// What they took on the wire.
    pub compressed_bytes_out: u64,
    /// A relay's tee: chunks and small files sent on compressed as they
    /// came from upstream, not compressed again.
    pub forwarded_chunks: u64,
    /// Transfers sent as a delta against the requester's old file.
    pub delta_transfers: u64,
    /// File bytes those sent as copy instructions (not sent).
    pub delta_copied_bytes: u64,
    /// File bytes those sent as literal data.
    pub delta_literal_bytes: u64,
    /// Delta transfers whose matching was stopped because the signature's
    /// weak hits kept failing the strong check (the rest went literal).
    pub delta_gave_up: u64,
    /// Transfers resumed from a prefix the requester held (`--partial`).
    pub resumed_transfers: u64,
    /// Bytes of those prefixes, verified and not sent.
    pub resumed_bytes: u64,
    /// Resume requests whose prefix did not match (sent from the start).
    pub resume_mismatches: u64,
}

/// Counters kept by the reader threads (delta and resume).
#[derive(Debug, Default)]
struct DeltaCounters {
    transfers: AtomicU64,
    copied: AtomicU64,
    literal: AtomicU64,
    gave_up: AtomicU64,
    resumed_transfers: AtomicU64,
    resumed_bytes: AtomicU64,
    resume_mismatches: AtomicU64,
}

struct Inner {
    router: Router,
    config: FileServiceConfig,
    registry: Mutex<Registry>,
    lanes: Mutex<HashMap<StreamId, Arc<Lane>>>,
    cancels: Mutex<HashMap<u64, watch::Sender<Option<String>>>>,
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

#[derive(Default)]
struct OpenCount {
    total: usize,
    per: HashMap<ContextId, usize>,
}

/// One open transfer, counted in [`Inner::open`] until dropped.
struct OpenSlot {
    fs: FileService,
    requester: ContextId,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.fs.inner.open);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per.get_mut(&self.requester) {
            *n -= 1;
            if *n == 0 {
                open.per.remove(&self.requester);
            }
        }
    }
}

/// One stream's turn-taking and what its path has shown so far.
struct Lane {
    turn: Arc<Turns>,
    estimate: Mutex<Option<PathEstimate>>,
    /// The compression level this path has shown it affords (`-z`).
    tuner: Mutex<Tuner>,
    /// Wire bytes still in flight of transfers that sent their end and
    /// handed the turn on ([`SendMachine::hand_over`]): the transfer
    /// holding the turn counts them against its window.
    handed_over: AtomicU64,
    /// Woken when some of those are acknowledged.
    credit_freed: tokio::sync::Notify,
}

/// A handed-over transfer's share of its lane's `handed_over` bytes; what
/// is still counted is released when it drops (done, failed or cancelled),
/// so a transfer that ends badly never holds the next one's credit.
struct HandedOver {
    lane: Arc<Lane>,
    owed: u64,
}

impl HandedOver {
    fn new(lane: Arc<Lane>, owed: u64) -> HandedOver {
        lane.handed_over.fetch_add(owed, Ordering::AcqRel);
        HandedOver { lane, owed }
    }

    /// This transfer now has `in_flight` wire bytes unacknowledged.
    fn update(&mut self, in_flight: u64) {
        let freed = self.owed.saturating_sub(in_flight);
        if freed > 0 {
            self.owed -= freed;
            self.lane.handed_over.fetch_sub(freed, Ordering::AcqRel);
            // One waiter at most (the turn's holder); a stored permit
            // covers the race with its check.
            self.lane.credit_freed.notify_one();
        }
    }
}

impl Drop for HandedOver {
    fn drop(&mut self) {
        self.update(0);
    }
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

/// A chunk from the reader, or its final word.
enum ReadEvent {
    /// The answer to a resume: data starts at this offset.
    Start(u64),
    /// `[offset][bytes]` and how many file bytes it holds.
    Chunk(Bytes, u64),
    /// A copy instruction ([`super::delta::copy_frame`]) and how many file
    /// bytes it stands for; never compressed.
    Copy(Bytes, u64),
    Done([u8; 32]),
    Failed(String),
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
        fs
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

    /// Bytes acknowledged so far by transfers to `context`.
    pub fn progress(&self, context: ContextId) -> u64 {
        lock(&self.inner.progress)
            .get(&context)
            .copied()
            .unwrap_or(0)
    }

    /// What transfers to `context` have delivered so far, in the bytes the
    /// link carried: what the push's stripe steps measure the path by
    /// ([`crate::connect::stripe_steps`]).
    pub fn delivered(&self, context: ContextId) -> Delivered {
        lock(&self.inner.wire_delivered)
            .get(&context)
            .copied()
            .unwrap_or_default()
    }

    fn add_delivered(&self, context: ContextId, wire: u64, min_rtt: Option<Duration>) {
        if wire == 0 && min_rtt.is_none() {
            return;
        }
        let mut map = lock(&self.inner.wire_delivered);
        let d = map.entry(context).or_default();
        d.wire_bytes += wire;
        if let Some(r) = min_rtt {
            d.min_rtt = Some(d.min_rtt.map_or(r, |m| m.min(r)));
        }
    }

    /// Files sent whole to `context` so far.
    pub fn files_sent(&self, context: ContextId) -> u64 {
        lock(&self.inner.files_sent)
            .get(&context)
            .copied()
            .unwrap_or(0)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FileStats {
        let mut s = lock(&self.inner.stats).clone();
        let z = &self.inner.zcounters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.compressed_chunks = get(&z.compressed_chunks);
        s.raw_chunks = get(&z.raw_chunks);
        s.compressed_bytes_in = get(&z.bytes_in);
        s.compressed_bytes_out = get(&z.bytes_out);
        s.forwarded_chunks = get(&z.forwarded);
        let d = &self.inner.dcounters;
        s.delta_transfers = get(&d.transfers);
        s.delta_copied_bytes = get(&d.copied);
        s.delta_literal_bytes = get(&d.literal);
        s.delta_gave_up = get(&d.gave_up);
        s.resumed_transfers = get(&d.resumed_transfers);
        s.resumed_bytes = get(&d.resumed_bytes);
        s.resume_mismatches = get(&d.resume_mismatches);
        s
    }

    /// The configuration in force.
    pub fn config(&self) -> &FileServiceConfig {
        &self.inner.config
    }

    async fn fetch(
        &self,
        caller: Caller,
        args: FetchArgs,
    ) -> Result<(FetchReply, Option<FollowUp>), RemoteError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(RemoteError::Failed(
                "the FileService is shutting down".into(),
            ));
        }
        if args.sender.context != caller.src_id {
            return Err(RemoteError::Failed(format!(
                "{}: sender context {} does not match the requesting context {}",
                args.path, args.sender.context, caller.src_id
            )));
        }
        if args.delta.is_some() && args.resume.is_some() {
            return Err(RemoteError::Failed(format!(
                "{}: a fetch may carry a delta signature or a resume, not both",
                args.path
            )));
        }
        if let Some(basis) = &args.delta {
            basis
                .validate()
                .map_err(|e| RemoteError::Failed(format!("{}: {e}", args.path)))?;
        }
        let slot = self.open_slot(caller.src_id, &args.path.escaped())?;
        let (file, meta, gate, frames) = match &inner.tee {
            Some(tee) => {
                let s = tee.open(&args.path).await.map_err(RemoteError::Failed)?;
                (s.file, s.meta, Some(s.gate), s.frames)
            }
            None => {
                let opened = lock(&inner.registry).open(&args.path);
                let file = opened.map_err(|e| RemoteError::Failed(e.to_string()))?;
                let meta = FileMeta::from_fd_with(&file, inner.config.xattrs)
                    .map_err(|e| RemoteError::Failed(format!("{}: {e}", args.path)))?;
                (Arc::new(file), meta, None, None)
            }
        };
        let ack_rx = inner
            .router
            .add_handler(None, Policy::Any, Some(caller.src_id), true)
            .map_err(|e| RemoteError::Failed(e.to_string()))?;
        let id = inner.next_transfer.fetch_add(1, Ordering::Relaxed);
        let (cancel_tx, cancel_rx) = watch::channel(None);
        lock(&inner.cancels).insert(id, cancel_tx);
        let reply = FetchReply {
            meta: meta.clone(),
            ack: ack_rx.to_sender(),
        };
        let job = Transfer {
            fs: self.clone(),
            id,
            path: args.path.to_string(),
            raw: args.path.clone(),
            file,
            meta,
            gate,
            frames,
            to: args.sender,
            delta: args.delta,
            resume: args.resume,
            sparse: args.sparse,
            requester: caller.src_id,
            acks: ack_rx,
            cancel: cancel_rx,
            settled: false,
            stale_acks: 0,
            _slot: slot,
        };
        // The pump is spawned (rather than run as the follow-up itself) so
        // shutdown can wait for it.
        let follow: FollowUp = Box::pin(async move {
            let pumps = job.fs.inner.pumps.clone();
            pumps.spawn(job.run());
        });
        Ok((reply, Some(follow)))
    }

    /// Counts one more open transfer for `requester`, or refuses it past
    /// [`MAX_FETCHES_PER_REQUESTER`] or [`FileServiceConfig::max_open`].
    fn open_slot(&self, requester: ContextId, path: &str) -> Result<OpenSlot, RemoteError> {
        // Counted per principal: the ids a target announces of its own
        // blocks do not multiply its share.
        let requester = self.inner.router.principal(requester);
        let max_open = self.inner.config.max_open;
        let mut open = lock(&self.inner.open);
        let mine = open.per.get(&requester).copied().unwrap_or(0);
        let refusal = if mine >= MAX_FETCHES_PER_REQUESTER {
            Some(format!(
                "{path}: {} already has {mine} transfers queued or running \
                 (limit {MAX_FETCHES_PER_REQUESTER} per requester)",
                self.inner.router.describe(requester)
            ))
        } else if open.total >= max_open {
            Some(format!(
                "{path}: the FileService already has {} transfers queued or running \
                 (limit {max_open} in all); try again later",
                open.total
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            drop(open);
            lock(&self.inner.stats).refused += 1;
            tracing::warn!("refused a fetch: {why}");
            return Err(RemoteError::Failed(why));
        }
        open.total += 1;
        *open.per.entry(requester).or_insert(0) += 1;
        Ok(OpenSlot {
            fs: self.clone(),
            requester,
        })
    }

    /// The small-file path: opens, reads and hashes each file (on a
    /// blocking thread, so the runtime keeps serving the stream) and
    /// returns them all in one reply. Nothing is queued behind large
    /// transfers: like a one-chunk `fetch`, these are cheap and bounded
    /// (at most [`SMALL_BATCH_BYTES`] of data are read per call).
    async fn fetch_small(
        &self,
        requester: ContextId,
        args: FetchSmallArgs,
    ) -> Result<Vec<SmallFile>, RemoteError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(RemoteError::Failed(
                "the FileService is shutting down".into(),
            ));
        }
        // Read nothing until this requester's earlier batches are answered
        // and its stream has room for the reply: a requester that stops
        // reading then holds no file data here, only waiting calls.
        let principal = self.inner.router.principal(requester);
        let batches = lock(&self.inner.small)
            .entry(principal)
            .or_insert_with(|| Arc::new(Semaphore::new(SMALL_CALLS_PER_REQUESTER)))
            .clone();
        let _batch = batches
            .acquire_owned()
            .await
            .map_err(|_| RemoteError::Failed("the FileService is shutting down".into()))?;
        let router = &self.inner.router;
        if router.stream_towards(requester).is_none() && requester != router.id() {
            return Err(RemoteError::Failed(format!(
                "no route to {}",
                router.describe(requester)
            )));
        }
        crate::service::wait_reply_room(router, requester).await;
        // Again after the wait: a requester that left meanwhile must not
        // have its batch read (each is up to 1 MiB, and many calls may be
        // waiting for a requester that hung up).
        if router.stream_towards(requester).is_none() && requester != router.id() {
            return Err(RemoteError::Failed(format!(
                "no route to {}",
                router.describe(requester)
            )));
        }
        // A relay's tee: what upstream answered for each path, in order.
        let teed = match &self.inner.tee {
            Some(tee) => Some(tee.ensure_small(&args.paths).await),
            None => None,
        };
        let fs = self.clone();
        let pacing = self.inner.pacers.for_target(requester);
        // Paced, a reply is one burst: keep it to 1/32 s of the limit
        // (larger files are then fetched on their own, in paced chunks).
        let batch = pacing.chunk_len(SMALL_BATCH_BYTES as usize) as u64;
        let level = self.small_level(requester);
        let files = tokio::task::spawn_blocking(move || {
            // Each file linked to the one before it when that pays.
            let mut zstd = compress::SmallEncoder::default();
            let mut budget = batch;
            let mut out = Vec::with_capacity(args.paths.len());
            for (k, path) in args.paths.iter().enumerate() {
                let one = match (&fs.inner.tee, &teed) {
                    // Compressed upstream: sent on as it came whenever it
                    // would be compressed here.
                    (Some(tee), Some(got)) => {
                        let before = k.checked_sub(1).and_then(|j| args.paths.get(j));
                        let before = before.filter(|_| zstd.follows());
                        tee.read_small(path, got.get(k), budget, level.is_some(), before)
                    }
                    _ => fs.read_small(path, budget),
                };
                match &one {
                    SmallFile::Data { meta, .. } => budget = budget.saturating_sub(meta.size),
                    SmallFile::Compressed { meta, .. } => {
                        budget = budget.saturating_sub(meta.size);
                        fs.inner.zcounters.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                out.push(zstd.encode(one, level, &fs.inner.zcounters));
            }
            (out, zstd.compressing())
        })
        .await
        .map_err(|e| RemoteError::Failed(format!("internal error reading files: {e}")))?;
        let (files, compressing) = files;
        let (mut count, mut bytes, mut wire) = (0, 0, 0);
        for f in &files {
            if let SmallFile::Data { meta, data, .. } | SmallFile::Compressed { meta, data, .. } = f
            {
                count += 1;
                bytes += meta.size;
                wire += data.len() as u64;
            }
        }
        let paced = pacing.wait(wire).await;
        if level.is_some()
            && self.inner.config.compress == Compression::Adaptive
            && let Some(stream) = self.inner.router.stream_towards(requester)
            && let Some(now) = lock(&self.lane(stream).tuner).on_batch(
                std::time::Instant::now(),
                compressing,
                paced,
                bytes,
            )
        {
            tracing::debug!("small files: compression level now {now:?}");
        }
        {
            let mut stats = lock(&self.inner.stats);
            stats.completed += count;
            stats.small_calls += 1;
        }
        *lock(&self.inner.progress).entry(requester).or_insert(0) += bytes;
        *lock(&self.inner.files_sent).entry(requester).or_insert(0) += count;
        Ok(files)
    }

    /// `--checksum`: the BLAKE3 digest of each registered file named, read
    /// on a blocking thread. Shares the requester's `fetch_small` slots, so
    /// one requester has at most [`SMALL_CALLS_PER_REQUESTER`] calls of
    /// either being read at once.
    async fn digests(
        &self,
        requester: ContextId,
        args: DigestArgs,
    ) -> Result<Vec<FileDigest>, RemoteError> {
        if args.paths.len() > MAX_DIGEST_PATHS {
            return Err(RemoteError::Failed(format!(
                "{} paths asked for at once; at most {MAX_DIGEST_PATHS}",
                args.paths.len()
            )));
        }
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(RemoteError::Failed(
                "the FileService is shutting down".into(),
            ));
        }
        if let Some(tee) = &self.inner.tee {
            return tee.digests(args).await;
        }
        let principal = self.inner.router.principal(requester);
        let slots = lock(&self.inner.small)
            .entry(principal)
            .or_insert_with(|| Arc::new(Semaphore::new(SMALL_CALLS_PER_REQUESTER)))
            .clone();
        let _slot = slots
            .acquire_owned()
            .await
            .map_err(|_| RemoteError::Failed("the FileService is shutting down".into()))?;
        let fs = self.clone();
        tokio::task::spawn_blocking(move || {
            args.paths
                .iter()
                .map(|path| {
                    let opened = lock(&fs.inner.registry).open(path);
                    let file = match opened {
                        Ok(f) => f,
                        Err(e) => return FileDigest::Failed(e.to_string()),
                    };
                    let mut h = blake3::Hasher::new();
                    match h.update_reader(&file) {
                        Ok(_) => FileDigest::Digest(*h.finalize().as_bytes()),
                        Err(e) => FileDigest::Failed(format!("{path}: read failed: {e}")),
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| RemoteError::Failed(format!("internal error hashing files: {e}")))
    }

    /// One file of [`FileService::fetch_small`], if it is registered, regular, at
    /// most [`SMALL_FILE_MAX`] bytes, and fits in what is left of the
    /// reply's `budget`.
    fn read_small(&self, path: &super::RawPath, budget: u64) -> SmallFile {
        let opened = lock(&self.inner.registry).open(path);
        let file = match opened {
            Ok(f) => f,
            Err(e) => return SmallFile::Failed(e.to_string()),
        };
        let meta = match FileMeta::from_fd_with(&file, self.inner.config.xattrs) {
            Ok(m) => m,
            Err(e) => return SmallFile::Failed(format!("{path}: {e}")),
        };
        if meta.size > SMALL_FILE_MAX || meta.size > budget {
            return SmallFile::TooLarge;
        }
        match read_whole(&file, &meta) {
            Ok((data, digest)) => SmallFile::Data { meta, data, digest },
            Err(why) => SmallFile::Failed(format!("{path}: {why}")),
        }
    }

    /// The level small files to `requester` are compressed at: what the
    /// stream towards it affords (`None`: not compressed).
    fn small_level(&self, requester: ContextId) -> Option<i32> {
        match self.inner.config.compress {
            Compression::Off => None,
            Compression::Level(l) => Some(l),
            Compression::Adaptive => match self.inner.router.stream_towards(requester) {
                Some(stream) => lock(&self.lane(stream).tuner).level(),
                None => Tuner::default().level(),
            },
        }
    }

    fn lane(&self, stream: StreamId) -> Arc<Lane> {
        lock(&self.inner.lanes)
            .entry(stream)
            .or_insert_with(|| {
                Arc::new(Lane {
                    turn: Turns::new(),
                    estimate: Mutex::new(None),
                    tuner: Mutex::new(Tuner::default()),
                    handed_over: AtomicU64::new(0),
                    credit_freed: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// The window the next transfer on `stream` would start with.
    pub fn window_for(&self, stream: StreamId) -> u64 {
        let lane = self.lane(stream);
        let est = lock(&lane.estimate).clone();
        Window::with_estimate(
            self.inner.config.sizing,
            est.unwrap_or_else(|| PathEstimate::new(self.inner.config.sizing)),
        )
        .limit()
    }

    /// Cancels every pending transfer (receivers discard their partial
    /// files), then waits briefly for the pumps to say so.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for lane in lock(&self.inner.lanes).values() {
            lane.turn.close();
        }
        for tx in lock(&self.inner.cancels).values() {
            let _ = tx.send(Some("the controller is shutting down".into()));
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

/// One fetch in progress.
struct Transfer {
    fs: FileService,
    id: u64,
    path: String,
    /// The path as asked for, byte for byte.
    raw: super::RawPath,
    file: Arc<File>,
    meta: FileMeta,
    /// A relay's spool file: how far it has arrived (see [`super::tee`]).
    gate: Option<Gate>,
    /// A relay's spool file: its chunks that came compressed, sent on as
    /// they came rather than compressed again.
    frames: Option<Arc<compress::FrameLog>>,
    to: Sender,
    /// The requester's signature of its old file, for a delta.
    delta: Option<super::delta::Basis>,
    /// The prefix the requester holds, for a resume.
    resume: Option<Resume>,
    /// Holes sent as hole frames (`--sparse`).
    sparse: bool,
    requester: ContextId,
    acks: Receiver,
    cancel: watch::Receiver<Option<String>>,
    /// Set once the requester has been told how the transfer ended.
    settled: bool,
    /// Acknowledgements that brought nothing new.
    stale_acks: u64,
    /// This transfer's place in the open-transfer caps.
    _slot: OpenSlot,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // Only reached unsettled if the pump panicked or was aborted: the
        // requester must not wait forever for an end that will not come.
        if !self.settled {
            let router = self.fs.inner.router.clone();
            self.to.send_control(
                &router,
                &TransferMsg::Abort {
                    reason: "internal error in the FileService".into(),
                },
            );
        }
    }
}

impl Transfer {
    async fn run(mut self) {
        let router = self.fs.inner.router.clone();
        let outcome = self.pump(&router).await;
        self.settled = true;
        if self.stale_acks > 0 {
            tracing::warn!(
                "transfer of {} to {}: ignored {} stale or repeated acknowledgements",
                self.path,
                router.describe(self.requester),
                self.stale_acks
            );
        }
        let stats = &self.fs.inner.stats;
        match outcome {
            Ok(peak) => {
                if let Some(tee) = &self.fs.inner.tee {
                    tee.delivered(&self.raw);
                }
                let mut s = lock(stats);
                s.completed += 1;
                s.peak_in_flight = s.peak_in_flight.max(peak);
                drop(s);
                *lock(&self.fs.inner.files_sent)
                    .entry(self.requester)
                    .or_insert(0) += 1;
            }
            Err(abandon) => {
                let reason = abandon.to_string();
                match abandon {
                    Abandon::ByRequester(_) => tracing::debug!(
                        "transfer of {} to {} abandoned: {reason}",
                        self.path,
                        router.describe(self.requester)
                    ),
                    Abandon::Other(_) => tracing::warn!(
                        "transfer of {} to {} abandoned: {reason}",
                        self.path,
                        router.describe(self.requester)
                    ),
                }
                self.to
                    .send_control(&router, &TransferMsg::Abort { reason });
                lock(stats).aborted += 1;
            }
        }
        lock(&self.fs.inner.cancels).remove(&self.id);
    }

    /// Returns the peak bytes in flight, or why the transfer was abandoned.
    async fn pump(&mut self, router: &Router) -> Result<u64, Abandon> {
        let size = self.meta.size;
        let whole_first = size as usize <= CHUNK_DATA
            || self.delta.is_some()
            || self.resume.is_some()
            || self.sparse;
        if let Some(gate) = self.gate.as_mut()
            && whole_first
        {
            // A one-chunk file, a delta, a resume and holes read the file
            // out of order or all at once: they wait for the whole spool.
            gate.complete()
                .await
                .map_err(|why| format!("{}: {why}", self.path))?;
            self.gate = None;
        }
        if size as usize <= CHUNK_DATA {
            return self.send_small(router).await;
        }
        let Some(stream) = router.stream_towards(self.requester) else {
            return Err(Abandon::from(format!(
                "no route to {}",
                router.describe(self.requester)
            )));
        };
        // Wait for this stream's turn (FIFO), unless cancelled meanwhile.
        let lane = self.fs.lane(stream);
        let mut turn = Some(tokio::select! {
            t = lane.turn.take(self.requester) => t.map_err(|e| e.to_string())?,
            why = wait_cancel(&mut self.cancel) => return Err(Abandon::from(why)),
            dead = self.acks.recv() => return Err(ack_channel_ended(dead)),
        });

        let (tx, mut rx) = mpsc::channel::<ReadEvent>(8);
        let file = self.file.clone();
        let meta = self.meta.clone();
        // -z and --bwlimit: the reader compresses (on its own thread, so
        // compressing overlaps sending) and the pump paces.
        let pacing = self.fs.inner.pacers.for_target(self.requester);
        let chunk_len = pacing.chunk_len(CHUNK_DATA);
        // The stream's tuner is shared with its small-file replies: each
        // hook takes the lock for a few arithmetic operations.
        let (tuner, level) = match self.fs.inner.config.compress {
            Compression::Off => (None, None),
            Compression::Level(l) => (None, Some(l)),
            Compression::Adaptive => (Some(&lane.tuner), lock(&lane.tuner).level()),
        };
        let zshared = compress::Shared::new(level, self.fs.inner.zcounters.clone());
        let mut encoder = ChunkEncoder::new(zshared.clone()).forwarding(self.frames.clone());
        let (mut basis, resume, sparse) = (self.delta.take(), self.resume.take(), self.sparse);
        if sparse && basis.is_some() && super::sparse::has_hole(&*self.file, size) {
            // Copy instructions would fill the holes: sent whole, holes
            // as holes.
            basis = None;
        }
        let counters = self.fs.inner.dcounters.clone();
        let gate = self.gate.take();
        let reader = tokio::task::spawn_blocking(move || {
            let send = |ev| {
                let ev = match ev {
                    ReadEvent::Chunk(data, len) => ReadEvent::Chunk(encoder.encode(data), len),
                    ReadEvent::Copy(data, len) => ReadEvent::Chunk(data, len),
                    other => other,
                };
                tx.blocking_send(ev).is_ok()
            };
            if let Some(basis) = basis {
                read_file_delta(&file, &meta, chunk_len, &basis, &counters, send)
            } else {
                read_file_from(
                    &file, &meta, chunk_len, resume, sparse, &counters, gate, send,
                )
            }
        });
        let (mut last_chunk, mut last_compress_ns) = (std::time::Instant::now(), 0u64);
        let mut last_acked = 0u64;

        let mut stripes = router.stripes(stream);
        let mut chunks_sent = 0u64;
        if stripes.len() > 1 {
            tracing::debug!("{}: striping over {} streams", self.path, stripes.len());
        }
        let sizing = self.fs.inner.config.sizing;
        let start = lock(&lane.estimate)
            .clone()
            .unwrap_or_else(|| PathEstimate::new(sizing));
        // The decisions are the machine's (files/transfer.rs); this loop
        // reads, sends and waits.
        let mut m = SendMachine::new(
            size,
            Window::with_estimate(sizing, start),
            self.fs.inner.config.ack_timeout,
            tokio::time::Instant::now().into_std(),
        );
        m.on_turn(std::time::Instant::now());
        let mut regain: Option<RegainTurn> = None;
        // Set once the end has gone out and the turn passed on.
        let mut handed: Option<HandedOver> = None;
        loop {
            // Take every acknowledgement already queued, without waiting.
            while let Some(f) = self
                .acks
                .try_recv()
                .map_err(|e| ack_channel_ended(Err(e)))?
            {
                self.on_ack(&mut m, &f)?;
            }
            if let Some(h) = handed.as_mut() {
                h.update(m.in_flight());
            }
            if m.should_yield_turn(
                std::time::Instant::now(),
                lane.turn.others_waiting(self.requester),
            ) {
                // Stalled while another requester waits: let it have the
                // link. This transfer sends nothing more until its turn
                // comes again (ahead of its requester's newer transfers,
                // so one receiver never has two windows in flight); acks
                // and the deadline still count meanwhile.
                tracing::debug!(
                    "{}: no acknowledgement from {} for {TURN_STALL:?}; giving up the stream's turn",
                    self.path,
                    router.describe(self.requester)
                );
                m.yield_turn();
                turn = None;
                let (turns, requester) = (lane.turn.clone(), self.requester);
                regain = Some(Box::pin(async move { turns.take_again(requester).await }));
            }
            if m.is_done() {
                break;
            }
            if stripes.len() > 1 && stripes.iter().any(|o| o.is_closed()) {
                // Chunks queued on the lost stripe are gone with it.
                return Err(Abandon::from(format!(
                    "a stripe to {} was lost mid-transfer",
                    router.describe(self.requester)
                )));
            }
            let others = lane.handed_over.load(Ordering::Acquire);
            if m.wants_data_beside(chunk_len as u64, others) {
                let waited = std::time::Instant::now();
                let event = rx.recv().await;
                // Time spent waiting for our own reader (a relay's spool
                // still arriving) is not the requester's silence.
                m.on_reader_wait(waited.elapsed());
                match event {
                    Some(ReadEvent::Chunk(data, len)) => {
                        if let Some(t) = tuner {
                            let mut t = lock(t);
                            t.on_reader_wait(waited.elapsed());
                            let ns = zshared.compress_ns();
                            let spent = Duration::from_nanos(ns - last_compress_ns);
                            let acked = m.window().acked();
                            t.on_delivered(
                                acked.saturating_sub(last_acked),
                                m.window().estimate().min_rtt,
                            );
                            last_acked = acked;
                            if let Some(level) =
                                t.on_chunk(len, last_chunk.elapsed(), spent, m.window().best_rate())
                            {
                                tracing::debug!(
                                    "{}: compression level now {level:?} (link {:.1} MB/s, compressor {:.1} MB/s)",
                                    self.path,
                                    t.link_rate().unwrap_or(0.0) / 1e6,
                                    t.compress_rate().unwrap_or(0.0) / 1e6
                                );
                            }
                            // Also picks up a change made by the small-file path.
                            zshared.set_level(t.level());
                            (last_chunk, last_compress_ns) = (std::time::Instant::now(), ns);
                        }
                        let paced = pacing.wait(data.len() as u64).await;
                        if let Some(t) = tuner {
                            // The limit is the link: waiting for it is
                            // what makes a better ratio worth its CPU.
                            lock(t).on_link_wait(paced);
                        }
                        chunks_sent += 1;
                        // Looked at every few chunks: a stripe carries data
                        // (and the window grows for it) soon after it attaches.
                        if chunks_sent.is_multiple_of(4) {
                            // Stripes may attach while a transfer runs.
                            let now = router.stripes(stream);
                            if now.len() > stripes.len() {
                                // Said here too: stripes usually attach
                                // seconds after a large transfer starts
                                // (a fresh ssh connection each), so the
                                // line at the start rarely shows them.
                                tracing::debug!(
                                    "{}: now striping over {} streams",
                                    self.path,
                                    now.len()
                                );
                                // Bulk goes on the stripes, not the
                                // primary, once there are any.
                                let data_streams = |n: usize| n.saturating_sub(1).max(1);
                                m.on_more_paths(
                                    data_streams(stripes.len()),
                                    data_streams(now.len()),
                                );
                                stripes = now;
                            }
                        }
                        let sent_at = std::time::Instant::now();
                        m.on_sent(len, (data.len() - OFFSET_LEN) as u64, sent_at);
                        let frame = Frame::new(self.to.context, self.to.handle, Enc::Bin, data);
                        if stripes.len() > 1 {
                            // The primary (first) carries no bulk data
                            // while there are stripes: it stays free for
                            // calls and acknowledgements, which then never
                            // wait behind megabytes buffered in a pipe or
                            // an SSH channel.
                            let bulk = &stripes[1..];
                            let views: Vec<StripeView> = bulk
                                .iter()
                                .map(|o| StripeView {
                                    closed: o.is_closed(),
                                    full: o.bulk_bytes() >= crate::stream::BULK_HIGH_WATER,
                                })
                                .collect();
                            let pick = m.pick_stripe(&views).map_err(|_| {
                                format!(
                                    "a stripe to {} was lost mid-transfer",
                                    router.describe(self.requester)
                                )
                            })?;
                            router.send_bulk_on(&bulk[pick], frame).await;
                        } else {
                            router.send_bulk(frame).await;
                        }
                        if let Some(t) = tuner {
                            // A full stream queue is the link pushing back.
                            lock(t).on_link_wait(sent_at.elapsed());
                        }
                    }
                    Some(ReadEvent::Start(from)) => {
                        self.to.send_control(router, &TransferMsg::Start { from });
                        m.start_at(from);
                    }
                    Some(ReadEvent::Copy(..)) => {
                        return Err(Abandon::from(format!(
                            "{}: internal error: unconverted copy",
                            self.path
                        )));
                    }
                    Some(ReadEvent::Done(d)) => {
                        m.on_end_sent();
                        self.to
                            .send_control(router, &TransferMsg::End { size, digest: d });
                        // The next transfer on this stream starts now, its
                        // chunks following these while their
                        // acknowledgements come back; what is still in
                        // flight counts against its window.
                        if let Some(owed) = m.hand_over() {
                            *lock(&lane.estimate) = Some(m.window().estimate());
                            handed = Some(HandedOver::new(lane.clone(), owed));
                            turn = None;
                        }
                    }
                    Some(ReadEvent::Failed(why)) => return Err(Abandon::from(why)),
                    None => {
                        return Err(Abandon::from(format!(
                            "{}: reader stopped unexpectedly",
                            self.path
                        )));
                    }
                }
                continue;
            }
            // Window full (or all sent): wait for an acknowledgement, a
            // cancel, the ack deadline, or (when striping) a stripe closing.
            let striped = stripes.len() > 1;
            // Any stripe's outbox closing wakes this at once.
            let stripe_lost = async {
                let mut lost: Vec<_> = stripes.iter().map(|o| Box::pin(o.closed())).collect();
                std::future::poll_fn(|cx| {
                    if lost.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await
            };
            let waited = std::time::Instant::now();
            let deadline = tokio::time::Instant::from_std(m.poll_timeout());
            tokio::select! {
                got = self.acks.recv() => {
                    if let Some(t) = tuner {
                        lock(t).on_link_wait(waited.elapsed());
                    }
                    let f = got.map_err(|e| ack_channel_ended(Err(e)))?;
                    self.on_ack(&mut m, &f)?;
                }
                // Look again at the turn now and then (see the top of the loop).
                _ = tokio::time::sleep(TURN_STALL / 4), if m.has_turn() => {}
                // Credit held by a handed-over transfer came back.
                _ = lane.credit_freed.notified(), if m.has_turn() && others > 0 => {}
                t = async {
                    match regain.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if regain.is_some() => {
                    turn = Some(t.map_err(|e| e.to_string())?);
                    regain = None;
                    m.on_turn(std::time::Instant::now());
                }
                why = wait_cancel(&mut self.cancel) => return Err(Abandon::from(why)),
                _ = stripe_lost, if striped => {} // reported at the top of the loop
                _ = tokio::time::sleep_until(deadline) => {
                    m.handle_timeout(std::time::Instant::now()).map_err(|e| {
                        format!("{} {e}", router.describe(self.requester))
                    })?;
                }
            }
        }
        let _ = &turn;
        drop(rx);
        let _ = reader.await;
        let window = m.window();
        *lock(&lane.estimate) = Some(window.estimate());
        tracing::debug!(
            "{}: {} bytes to {}, window now {} (min rtt {:?}, peak in flight {})",
            self.path,
            size,
            router.describe(self.requester),
            window.limit(),
            window.estimate().min_rtt,
            window.peak()
        );
        Ok(window.peak())
    }

    fn on_ack(&mut self, m: &mut SendMachine, f: &Frame) -> Result<(), String> {
        let n: u64 = control::decode_frame(f).map_err(|e| format!("bad acknowledgement: {e}"))?;
        // Credit comes only from bytes really sent: an acknowledgement past
        // them ends the transfer (AckBeyondSent), a repeated or stale one
        // adds nothing and is counted (logged once, at the end). The window
        // counts wire bytes (-z): see WireLedger.
        let wire_before = m.window().acked();
        let delta = m
            .on_ack(n, std::time::Instant::now())
            .map_err(|e| e.to_string())?;
        self.fs.add_delivered(
            self.requester,
            m.window().acked() - wire_before,
            m.window().min_rtt(),
        );
        if delta == 0 {
            self.stale_acks += 1;
            lock(&self.fs.inner.stats).stale_acks += 1;
        }
        if delta > 0 {
            *lock(&self.fs.inner.progress)
                .entry(self.requester)
                .or_insert(0) += delta;
        }
        Ok(())
    }

    async fn send_small(&mut self, router: &Router) -> Result<u64, Abandon> {
        // One pread and one fstat: cheaper right here than a round trip
        // through the blocking pool, which cost about a tenth of the CPU of
        // a 10,000-file push (fetch already opens and stats inline).
        let mut read = Vec::with_capacity(2);
        let level = self.fs.small_level(self.requester);
        let mut encoder = ChunkEncoder::new(compress::Shared::new(
            level,
            self.fs.inner.zcounters.clone(),
        ))
        .forwarding(self.frames.clone());
        let pacing = self.fs.inner.pacers.for_target(self.requester);
        if self.resume.take().is_some() {
            // Too small to be worth a resume: all of it, from the start.
            self.to
                .send_control(router, &TransferMsg::Start { from: 0 });
        }
        read_file(
            &self.file,
            &self.meta,
            pacing.chunk_len(CHUNK_DATA),
            self.sparse,
            |ev| {
                read.push(match ev {
                    ReadEvent::Chunk(data, len) => ReadEvent::Chunk(encoder.encode(data), len),
                    other => other,
                });
                true
            },
        );
        let mut sent = 0u64;
        for ev in read {
            match ev {
                ReadEvent::Chunk(data, len) => {
                    sent += len;
                    pacing.wait(data.len() as u64).await;
                    // Waits for room, like the large-file pump: a requester
                    // that does not read its one-chunk files stalls here.
                    router
                        .send_bulk(Frame::new(self.to.context, self.to.handle, Enc::Bin, data))
                        .await;
                }
                ReadEvent::Done(digest) => {
                    self.to
                        .send_control(router, &TransferMsg::End { size: sent, digest });
                    *lock(&self.fs.inner.progress)
                        .entry(self.requester)
                        .or_insert(0) += sent;
                    return Ok(sent);
                }
                ReadEvent::Failed(why) => return Err(Abandon::from(why)),
                ReadEvent::Copy(frame, len) => {
                    // A hole frame (--sparse).
                    sent += len;
                    router
                        .send_bulk(Frame::new(self.to.context, self.to.handle, Enc::Bin, frame))
                        .await;
                }
                ReadEvent::Start(_) => {
                    return Err(Abandon::from(format!(
                        "{}: internal error: unexpected read event",
                        self.path
                    )));
                }
            }
        }
        Err(Abandon::from(format!(
            "{}: reader stopped unexpectedly",
            self.path
        )))
    }
}

async fn wait_cancel(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(why) = rx.borrow_and_update().clone() {
            return why;
        }
        if rx.changed().await.is_err() {
            return "the FileService went away".into();
        }
    }
}

/// Why a transfer ended before its last acknowledgement.
#[derive(Debug)]
enum Abandon {
    /// The requester closed the transfer (it failed on its side, or no
    /// longer wants the file): its own report says why, so this is not
    /// news here.
    ByRequester(crate::wire::DeadReason),
    /// Anything else: a lost route or stripe, a read error, a timeout.
    Other(String),
}

impl From<String> for Abandon {
    fn from(s: String) -> Abandon {
        Abandon::Other(s)
    }
}

impl std::fmt::Display for Abandon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abandon::ByRequester(why) => write!(f, "the requester ended the transfer: {why}"),
            Abandon::Other(why) => f.write_str(why),
        }
    }
}

fn ack_channel_ended(r: Result<Frame, ChannelError>) -> Abandon {
    match r {
        Err(ChannelError::Dead(why)) => Abandon::ByRequester(why),
        Err(e) => Abandon::Other(format!("acknowledgement channel closed: {e}")),
        Ok(_) => Abandon::Other("unexpected acknowledgement".into()),
    }
}

/// Most file data one `fetch_small` reply carries; files beyond it are
/// answered [`SmallFile::TooLarge`] and fetched on their own.
pub const SMALL_BATCH_BYTES: u64 = 1024 * 1024;

/// True if `file`'s size or mtime differ from `meta` (or it cannot be
/// stat'ed). A bare fstat: `FileMeta::from_fd` would also look the owner
/// and group names up again.
fn changed_since(file: &File, meta: &FileMeta) -> bool {
    match rustix::fs::fstat(file) {
        Ok(now) => {
            now.st_size as u64 != meta.size
                || now.st_mtime != meta.mtime_sec
                || now.st_mtime_nsec as u32 != meta.mtime_nsec
        }
        Err(_) => true,
    }
}

/// Reads a small file in one `pread` of one byte more than its size (so
/// growth shows without a second read), hashes it, and checks it was not
/// modified meanwhile.
fn read_whole(file: &File, meta: &FileMeta) -> Result<(Bytes, [u8; 32]), String> {
    let size = meta.size as usize;
    let mut buf = BytesMut::with_capacity(size + 1);
    loop {
        let have = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..size + 1 - have];
        match rustix::io::pread(file, spare, have as u64).map(|(got, _)| got.len()) {
            Ok(0) => break,
            Ok(n) => {
                // SAFETY: `pread` initialised exactly the first `n` bytes of
                // the spare capacity it was given.
                unsafe { buf.set_len(buf.len() + n) };
                if buf.len() > size {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    if buf.len() != size {
        return Err(format!(
            "source file was modified while being read ({size} bytes expected, {} found)",
            buf.len()
        ));
    }
    if changed_since(file, meta) {
        return Err("source file was modified while being read (size or mtime changed)".into());
    }
    let digest = *blake3::hash(&buf).as_bytes();
    Ok((buf.freeze(), digest))
}

/// Reads the whole file in chunks, hashing as it goes, and finally checks
/// that the file still has the size and mtime it was opened with. Each
/// event goes to `send`; reading stops when it returns `false`. Chunks
/// hold `chunk_len` bytes (at most [`CHUNK_DATA`]), the last one fewer.
fn read_file(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    sparse: bool,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    read_range(
        file,
        meta,
        chunk_len,
        0,
        sparse,
        blake3::Hasher::new(),
        None,
        &mut send,
    );
}

/// [`read_file`], answering a resume first: the requester's prefix is
/// hashed here too; if the digests agree the data starts after it, else
/// at 0. Either way [`ReadEvent::Start`] says where.
#[allow(clippy::too_many_arguments)]
fn read_file_from(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    resume: Option<Resume>,
    sparse: bool,
    counters: &DeltaCounters,
    gate: Option<Gate>,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    let Some(resume) = resume else {
        return read_range(
            file,
            meta,
            chunk_len,
            0,
            sparse,
            blake3::Hasher::new(),
            gate,
            &mut send,
        );
    };
    let mut hasher = blake3::Hasher::new();
    let mut from = 0;
    if resume.len <= meta.size {
        // The hasher that covered the prefix carries on over the rest:
        // its final digest is the whole file's.
        match hash_prefix(file, resume.len, &mut hasher) {
            Ok(()) if *hasher.finalize().as_bytes() == resume.digest => from = resume.len,
            Ok(()) => hasher = blake3::Hasher::new(),
            Err(why) => {
                let _ = send(ReadEvent::Failed(why));
                return;
            }
        }
    }
    if from > 0 {
        counters.resumed_transfers.fetch_add(1, Ordering::Relaxed);
        counters.resumed_bytes.fetch_add(from, Ordering::Relaxed);
    } else {
        counters.resume_mismatches.fetch_add(1, Ordering::Relaxed);
    }
    if !send(ReadEvent::Start(from)) {
        return;
    }
    read_range(file, meta, chunk_len, from, sparse, hasher, None, &mut send);
}

/// Hashes `[0, len)` of `file` into `hasher`.
fn hash_prefix(file: &File, len: u64, hasher: &mut blake3::Hasher) -> Result<(), String> {
    let mut buf = vec![0u8; DELTA_READ];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(DELTA_READ as u64) as usize;
        file.read_exact_at(&mut buf[..want], at)
            .map_err(|e| format!("read failed at offset {at}: {e}"))?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    Ok(())
}

/// Bytes read at a time for a delta or a resume's hash.
const DELTA_READ: usize = 1 << 20;

/// Reads `[offset, size)` in chunks into `hasher` (which holds the bytes
/// before `offset`), then checks the file did not change. With `sparse`,
/// only the data extents are read; each hole is sent as hole frames
/// ([`ReadEvent::Copy`], which travels as it is) and hashed as zeros.
#[allow(clippy::too_many_arguments)]
fn read_range(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    mut offset: u64,
    sparse: bool,
    mut hasher: blake3::Hasher,
    mut gate: Option<Gate>,
    send: &mut impl FnMut(ReadEvent) -> bool,
) {
    use super::sparse as holes;
    // End of the data extent `offset` is in (without --sparse: all data).
    let mut data_end = if sparse { offset } else { meta.size };
    while offset < meta.size {
        if offset >= data_end {
            let (start, end) = holes::next_extent(file, offset, meta.size);
            while offset < start {
                let len = (start - offset).min(holes::MAX_HOLE);
                holes::hash_zeros(&mut hasher, len);
                if !send(ReadEvent::Copy(holes::hole_frame(offset, len), len)) {
                    return;
                }
                offset += len;
            }
            data_end = end;
            if offset >= meta.size {
                break;
            }
        }
        let len = (data_end - offset).min(chunk_len.clamp(1, CHUNK_DATA) as u64) as usize;
        if let Some(g) = gate.as_mut()
            && let Err(why) = g.wait_blocking(offset + len as u64)
        {
            let _ = send(ReadEvent::Failed(why));
            return;
        }
        // Not zeroed first: zeroing 128 KiB per chunk cost about 4 % of
        // the sender's CPU, and every byte is overwritten by the read.
        let mut buf = BytesMut::with_capacity(OFFSET_LEN + len);
        buf.extend_from_slice(&offset.to_be_bytes());
        let mut filled = 0;
        while filled < len {
            let spare = &mut buf.spare_capacity_mut()[..len - filled];
            match rustix::io::pread(file, spare, offset + filled as u64).map(|(got, _)| got.len()) {
                Ok(0) => {
                    let _ = send(ReadEvent::Failed(format!(
                        "source file shrank during transfer: {} bytes expected, {} found",
                        meta.size,
                        offset + filled as u64
                    )));
                    return;
                }
                Ok(n) => {
                    // SAFETY: `pread` initialised exactly the first `n`
                    // bytes of the spare capacity it was given.
                    unsafe { buf.set_len(buf.len() + n) };
                    filled += n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    let _ = send(ReadEvent::Failed(format!(
                        "read failed at offset {}: {e}",
                        offset + filled as u64
                    )));
                    return;
                }
            }
        }
        if gate.is_none() {
            hasher.update(&buf[OFFSET_LEN..]);
        }
        offset += len as u64;
        if !send(ReadEvent::Chunk(buf.freeze(), len as u64)) {
            return;
        }
    }
    if let Some(g) = gate.as_mut() {
        // A relay's spool: hashed as it was written, against the digest
        // upstream sent. Not hashed again for each child — that was a
        // second BLAKE3 pass over every byte per target, on the relay's
        // CPU, which is what bounds a large fleet (see docs/benchmarks.md).
        match g.digest_blocking() {
            Ok(d) => {
                let _ = send(ReadEvent::Done(d));
            }
            Err(why) => {
                let _ = send(ReadEvent::Failed(why));
            }
        }
        return;
    }
    finish_read(file, meta, &hasher, send);
}

/// The last word of a read: the digest, unless the file changed.
fn finish_read(
    file: &File,
    meta: &FileMeta,
    hasher: &blake3::Hasher,
    send: &mut impl FnMut(ReadEvent) -> bool,
) {
    let mut probe = [0u8; 1];
    let grew = matches!(file.read_at(&mut probe, meta.size), Ok(n) if n > 0);
    if grew || changed_since(file, meta) {
        let _ = send(ReadEvent::Failed(
            "source file was modified during transfer (size or mtime changed)".into(),
        ));
        return;
    }
    let _ = send(ReadEvent::Done(*hasher.finalize().as_bytes()));
}

/// Reads the file through a delta [`Matcher`] against the requester's
/// `basis`: copy instructions for what the requester has, chunks of
/// literal data for the rest, and the digest of the whole file.
fn read_file_delta(
    file: &File,
    meta: &FileMeta,
    chunk_len: usize,
    basis: &delta::Basis,
    counters: &DeltaCounters,
    mut send: impl FnMut(ReadEvent) -> bool,
) {
    // A lying signature may make every offset a weak hit: strong digests
    // that match nothing may cover the file once more plus 64 MiB, then
    // the rest goes literal.
    let mut matcher = match Matcher::new(basis, meta.size.saturating_add(64 << 20)) {
        Ok(m) => m,
        Err(e) => {
            let _ = send(ReadEvent::Failed(e.to_string()));
            return;
        }
    };
    counters.transfers.fetch_add(1, Ordering::Relaxed);
    let matching = std::time::Instant::now();
    let mut ops = Vec::new();
    let mut offset = 0u64;
    let chunk_len = chunk_len.clamp(1, CHUNK_DATA);
    let emit = |ops: &mut Vec<Op>, send: &mut dyn FnMut(ReadEvent) -> bool| -> bool {
        for op in ops.drain(..) {
            match op {
                Op::Copy { offset, from, len } => {
                    counters.copied.fetch_add(len, Ordering::Relaxed);
                    if !send(ReadEvent::Copy(delta::copy_frame(offset, from, len), len)) {
                        return false;
                    }
                }
                Op::Literal { offset, data } => {
                    counters
                        .literal
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    let mut at = offset;
                    for piece in data.chunks(chunk_len) {
                        let mut chunk = BytesMut::with_capacity(OFFSET_LEN + piece.len());
                        chunk.extend_from_slice(&at.to_be_bytes());
                        chunk.extend_from_slice(piece);
                        at += piece.len() as u64;
                        if !send(ReadEvent::Chunk(chunk.freeze(), piece.len() as u64)) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    };
    // The whole file's BLAKE3 runs on a thread of its own, beside the
    // matcher (`HashPipe`): one after the other on one core the two were
    // the longest of the delta's passes (docs/benchmarks.md, issue 11).
    let mut pipe = match super::hashpipe::HashPipe::start(blake3::Hasher::new()) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(ReadEvent::Failed(format!(
                "cannot start the hashing thread: {e}"
            )));
            return;
        }
    };
    while offset < meta.size {
        let want = (meta.size - offset).min(DELTA_READ as u64) as usize;
        let mut buf = pipe.buffer(want);
        if let Err(e) = file.read_exact_at(&mut buf, offset) {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "source file shrank during transfer: {} bytes expected",
                    meta.size
                )
            } else {
                format!("read failed at offset {offset}: {e}")
            };
            let _ = send(ReadEvent::Failed(why));
            return;
        }
        matcher.feed(&buf, &mut ops);
        if let Err(why) = pipe.hash_buf(buf) {
            let _ = send(ReadEvent::Failed(why));
            return;
        }
        offset += want as u64;
        if !emit(&mut ops, &mut send) {
            return;
        }
    }
    matcher.finish(&mut ops);
    if !emit(&mut ops, &mut send) {
        return;
    }
    let hasher = match pipe.finish() {
        Ok(h) => h,
        Err(why) => {
            let _ = send(ReadEvent::Failed(why));
            return;
        }
    };
    tracing::debug!(
        "delta: matched {} bytes in {:?}: {:?}",
        meta.size,
        matching.elapsed(),
        matcher.stats()
    );
    if matcher.stats().gave_up {
        counters.gave_up.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "delta: the requester's signature kept failing the strong check; the rest of the file was sent whole"
        );
    }
    finish_read(file, meta, &hasher, &mut send);
}
