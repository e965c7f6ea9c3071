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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::compress::FrameLog;
use super::meta::FileMeta;
use super::place::{Place, Root};
use super::receive::{self, Observer, PendingFile, ReceiveOptions, TempFiles};
use super::spec::PlanEntry;
use super::{DigestArgs, FetchSmallArgs, FileDigest, RawPath, SMALL_FILE_MAX, SmallFile};
use crate::call::RemoteError;
use crate::router::Router;
use crate::wire::ContextId;

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

/// How a spooled file ended: its digest, or why it failed.
type Ending = Option<Result<[u8; 32], String>>;

/// How far a spooled file has arrived, for its readers.
#[derive(Clone)]
pub struct Gate {
    written: watch::Receiver<u64>,
    done: watch::Receiver<Ending>,
}

impl Gate {
    /// Waits until the whole file has arrived and was verified; its digest.
    pub async fn complete(&mut self) -> Result<[u8; 32], String> {
        match self.done.wait_for(|d| d.is_some()).await {
            Ok(d) => d.clone().unwrap_or_else(|| Err("relay: no ending".into())),
            Err(_) => Err("relay: the upstream fetch was abandoned".into()),
        }
    }

    /// Blocks (on a reader thread) until `[0, upto)` is written. Fails if
    /// the upstream fetch fails first.
    pub fn wait_blocking(&mut self, upto: u64) -> Result<(), String> {
        if *self.written.borrow() >= upto {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "relay: no runtime to wait in".to_string())?;
        handle.block_on(async {
            loop {
                if *self.written.borrow_and_update() >= upto {
                    return Ok(());
                }
                if let Some(end) = self.done.borrow_and_update().clone() {
                    return match end {
                        Ok(_) if *self.written.borrow() >= upto => Ok(()),
                        Ok(_) => Err("relay: the spooled copy is shorter than announced".into()),
                        Err(why) => Err(why),
                    };
                }
                tokio::select! {
                    r = self.written.changed() => {
                        if r.is_err() {
                            // The writer is gone: only the ending can tell.
                            return self.complete().await.and_then(|_| {
                                if *self.written.borrow() >= upto {
                                    Ok(())
                                } else {
                                    Err("relay: the spooled copy is shorter than announced".into())
                                }
                            });
                        }
                    }
                    r = self.done.changed() => {
                        if r.is_err() {
                            return Err("relay: the upstream fetch was abandoned".into());
                        }
                    }
                }
            }
        })
    }

    /// Blocks (on a reader thread) until the file is verified; its digest.
    pub fn digest_blocking(&mut self) -> Result<[u8; 32], String> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "relay: no runtime to wait in".to_string())?;
        handle.block_on(self.complete())
    }
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

/// A spool file once it exists, or why it never will.
type Opened = Option<Result<(Arc<File>, FileMeta), String>>;

/// One large file: arriving, or arrived.
struct Large {
    opened: watch::Receiver<Opened>,
    gate: Gate,
    /// Its chunks that came compressed, as they came.
    frames: Option<Arc<FrameLog>>,
    /// Transfers of it completed to targets.
    delivered: AtomicU64,
}

/// What the tee has for one small file (from [`Tee::ensure_small`]).
#[derive(Clone)]
pub struct SmallEntry(Small);

/// One small file, once its batch has arrived.
#[derive(Clone)]
enum Small {
    Data {
        meta: FileMeta,
        at: u64,
        digest: [u8; 32],
        /// Where its compressed form, as upstream sent it, is kept in the
        /// same store, its length, and for a linked one (compressed after
        /// the file before it in upstream's reply) that file's path.
        zstd: Option<(u64, u64, Option<RawPath>)>,
    },
    TooLarge,
    Failed(String),
}

/// The private spool directory and its small-file store.
struct Spool {
    root: Arc<Root>,
    path: PathBuf,
    /// Every small file, appended; and its length.
    blob: Mutex<(File, u64)>,
    /// The push plan's batches as they came (encoded), and where each is.
    plan: Mutex<(File, Vec<(u64, u64)>)>,
}

impl Spool {
    /// A fresh owner-only directory under the temp directory.
    fn create() -> std::io::Result<Spool> {
        let base = std::env::temp_dir();
        sweep_stale(&base);
        let mut attempt = 0u32;
        let path = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "ferrogen-tee-{}-{nanos:08x}{attempt}",
                std::process::id()
            ));
            match rustix::fs::mkdir(&p, rustix::fs::Mode::from_raw_mode(0o700)) {
                Ok(()) => break p,
                Err(rustix::io::Errno::EXIST) if attempt < 100 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let root = Root::open(&path)?;
        // The small-file store and the plan: without names while used.
        let blob = anonymous_in(&root, "small")?;
        let plan = anonymous_in(&root, "plan")?;
        Ok(Spool {
            root,
            path,
            blob: Mutex::new((blob, 0)),
            plan: Mutex::new((plan, Vec::new())),
        })
    }

    /// A fresh read-write file of the spool with no name.
    fn anonymous(&self, name: &str) -> std::io::Result<File> {
        anonymous_in(&self.root, name)
    }
}

/// A file created as `name` in `root` and unlinked at once (the directory
/// is ours alone), so it has no name while it is used and its space is
/// freed when its last descriptor closes.
fn anonymous_in(root: &Root, name: &str) -> std::io::Result<File> {
    let fd = rustix::fs::openat(
        root.fd(),
        name,
        rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::from_raw_mode(0o600),
    )?;
    let _ = rustix::fs::unlinkat(root.fd(), name, rustix::fs::AtFlags::empty());
    Ok(File::from(fd))
}

/// Removes the spool directories of relays that died without stopping
/// (SIGKILL, a power cut): their anonymous files went with them, so only
/// the empty directory is left, named after the dead process.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ferrogen-tee-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let mine = {
            use std::os::unix::fs::MetadataExt;
            e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me)
        };
        if mine && !Path::new(&format!("/proc/{pid}")).exists() {
            // Only if empty: anything else in it is not ours to remove.
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Spool {
    /// Removes the directory. Anonymous files leave nothing in it; named
    /// temp files (file systems without `O_TMPFILE`) are removed by
    /// [`TempFiles::remove_all`] first.
    fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("relay: could not remove spool {}: {e}", self.path.display())
            }
        }
    }
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

    /// Opens `path` for a `fetch`: from the spool, fetching it from
    /// upstream first if nobody has asked for it yet. Returns once the
    /// file exists in the spool (with the upstream metadata), typically
    /// before its data.
    pub async fn open(self: &Arc<Self>, path: &RawPath) -> Result<Spooled, String> {
        let large = {
            let mut map = lock(&self.large);
            match map.get(path) {
                Some(l) => {
                    // The first ask for a file read ahead is its own fetch.
                    if lock(&self.ahead).remove(path).is_none() {
                        self.shared.fetch_add(1, Ordering::Relaxed);
                    }
                    l.clone()
                }
                None => {
                    let (l, _) = self.start_large(path);
                    map.insert(path.clone(), l.clone());
                    l
                }
            }
        };
        let mut opened = large.opened.clone();
        let got = opened
            .wait_for(|o| o.is_some())
            .await
            .map_err(|_| format!("{path}: relay: the upstream fetch was abandoned"))?
            .clone();
        match got {
            Some(Ok((file, meta))) => Ok(Spooled {
                file,
                meta,
                gate: large.gate.clone(),
                frames: large.frames.clone(),
            }),
            Some(Err(why)) => Err(why),
            None => Err(format!("{path}: relay: the upstream fetch was abandoned")),
        }
    }

    /// Starts fetching the large files of plan batch `k` before any target
    /// asks for them, while no target has answered a batch yet and fewer
    /// than [`READ_AHEAD_BYTES`] were started this way: a first push then
    /// has its data crossing the uplink while the targets connect and
    /// compare, instead of after. The files a target then asks for are
    /// served from these fetches as from any other; those the first target
    /// to answer the batch did not want are dropped ([`Tee::answered`]).
    /// (A file is one a target fetches with `fetch`: larger than one
    /// chunk, or the plan's only entry.)
    pub fn read_ahead(self: &Arc<Self>, k: u64, entries: &[PlanEntry]) {
        let only = k == 0 && entries.len() == 1;
        for e in entries {
            let PlanEntry::File { src, size, .. } = e else {
                continue;
            };
            if *size == 0 || (*size <= SMALL_FILE_MAX && !only) {
                continue;
            }
            if !self.reading_ahead.load(Ordering::Relaxed)
                || self.ahead_bytes.load(Ordering::Relaxed) >= READ_AHEAD_BYTES
            {
                return;
            }
            let mut map = lock(&self.large);
            if map.contains_key(src) {
                continue;
            }
            let (l, task) = self.start_large(src);
            map.insert(src.clone(), l);
            lock(&self.ahead).insert(src.clone(), (k, task));
            self.ahead_bytes.fetch_add(*size, Ordering::Relaxed);
            self.read_ahead.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A target answered plan batch `k`: nothing more is read ahead, and
    /// the files read ahead for batches up to `k` that no target asked for
    /// are dropped (their fetch stopped, their spool file closed) — that
    /// target had them already, and so, most likely, have the others (one
    /// that lacks one fetches it then).
    pub fn answered(&self, k: u64) {
        self.reading_ahead.store(false, Ordering::Relaxed);
        // In `open`'s order (large, then ahead): a target asking for one of
        // these meanwhile either claimed it first or starts a fresh fetch.
        let mut map = lock(&self.large);
        let mut ahead = lock(&self.ahead);
        let paths: Vec<RawPath> = ahead
            .iter()
            .filter(|(_, (b, _))| *b <= k)
            .map(|(p, _)| p.clone())
            .collect();
        for path in paths {
            if let Some((_, task)) = ahead.remove(&path) {
                task.abort();
                map.remove(&path);
                self.read_ahead_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn start_large(self: &Arc<Self>, path: &RawPath) -> (Arc<Large>, tokio::task::AbortHandle) {
        let (open_tx, open_rx) = watch::channel(None);
        let written = Arc::new(watch::channel(0u64).0);
        let (done_tx, done_rx) = watch::channel(None);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let frames = match self.spool.anonymous(&format!("z{n}")) {
            Ok(f) => Some(Arc::new(FrameLog::new(f))),
            Err(e) => {
                // Not fatal: the chunks are compressed again per child.
                tracing::debug!("relay: no record of compressed chunks for {path}: {e}");
                None
            }
        };
        let large = Arc::new(Large {
            opened: open_rx,
            gate: Gate {
                written: written.subscribe(),
                done: done_rx,
            },
            frames: frames.clone(),
            delivered: AtomicU64::new(0),
        });
        let (tee, path) = (self.clone(), path.clone());
        let task = tokio::spawn(async move {
            let Ok(_slot) = tee.upstream_slots.clone().acquire_owned().await else {
                return;
            };
            let place = match Place::new(&tee.spool.root, PathBuf::from(format!("f{n}"))) {
                Ok(p) => p,
                Err(e) => {
                    let why = format!("{path}: relay: spool: {e}");
                    open_tx.send_replace(Some(Err(why.clone())));
                    done_tx.send_replace(Some(Err(why)));
                    return;
                }
            };
            let (otx, orx) = oneshot::channel();
            let observer = Observer {
                opened: Some(otx),
                written: written.clone(),
                frames,
            };
            let receiving = receive::receive_observed(
                &tee.router,
                tee.upstream,
                &path,
                &place,
                &tee.temps,
                &tee.opts,
                observer,
            );
            tokio::pin!(receiving);
            let mut orx = Some(orx);
            let mut file: Option<(Arc<File>, FileMeta)> = None;
            let result = loop {
                let opening = async {
                    match orx.as_mut() {
                        Some(r) => r.await.ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = &mut receiving => break r,
                    o = opening => {
                        orx = None;
                        if let Some((f, meta)) = o {
                            let f = Arc::new(f);
                            file = Some((f.clone(), meta.clone()));
                            open_tx.send_replace(Some(Ok((f, meta))));
                        }
                    }
                }
            };
            // (The file may have been opened and finished before the
            // branch above ran.)
            if file.is_none()
                && let Some(mut r) = orx
                && let Ok((f, meta)) = r.try_recv()
            {
                let f = Arc::new(f);
                file = Some((f.clone(), meta.clone()));
                open_tx.send_replace(Some(Ok((f, meta))));
            }
            match result {
                Ok(pending) => {
                    tee.files_fetched.fetch_add(1, Ordering::Relaxed);
                    tee.bytes_fetched
                        .fetch_add(pending.bytes, Ordering::Relaxed);
                    let digest = pending.digest;
                    let ending = match &file {
                        // The spool file's times are the source's, so the
                        // reader's "changed while read" check holds.
                        Some((f, meta)) => stamp(f, meta).map(|()| digest).map_err(|e| {
                            format!("{path}: relay: could not set the spool file's times: {e}")
                        }),
                        None => Err(format!("{path}: relay: the spool file was not opened")),
                    };
                    if !pending.is_anonymous() {
                        // A named temp file (no O_TMPFILE here): removed
                        // when this is dropped, at the end.
                        lock(&tee.kept).push(pending);
                    }
                    // (An anonymous one lives on through the read-only
                    // descriptor; its writing one is closed now.)
                    done_tx.send_replace(Some(ending));
                }
                Err(e) => {
                    let why = format!("relay: {e}");
                    if file.is_none() {
                        open_tx.send_replace(Some(Err(why.clone())));
                    }
                    done_tx.send_replace(Some(Err(why)));
                    // Answered, not kept: a target asking for paths that
                    // do not exist must not grow the relay (a later ask
                    // fetches again).
                    lock(&tee.large).remove(&path);
                }
            }
        });
        let handle = task.abort_handle();
        lock(&self.tasks).push(task.abort_handle());
        (large, handle)
    }

    /// A transfer of `path` to a target completed. Once every target has
    /// had it, the spool lets it go: its descriptors close and, having no
    /// name, the file's space is freed (a target that fetches it again
    /// later gets a fresh upstream fetch).
    pub fn delivered(&self, path: &RawPath) {
        if self.targets == 0 {
            return;
        }
        let mut map = lock(&self.large);
        let done = map
            .get(path)
            .is_some_and(|l| l.delivered.fetch_add(1, Ordering::Relaxed) + 1 >= self.targets);
        if done {
            map.remove(path);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes sure every path of a `fetch_small` batch has arrived (or
    /// failed): those nobody asked for yet are fetched upstream in one
    /// batch; those already on their way are waited for.
    pub async fn ensure_small(self: &Arc<Self>, paths: &[RawPath]) -> Vec<SmallEntry> {
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        {
            let mut map = lock(&self.small);
            for p in paths {
                match map.get(p) {
                    Some(rx) => {
                        self.shared.fetch_add(1, Ordering::Relaxed);
                        waits.push(rx.clone());
                    }
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(p.clone(), rx.clone());
                        waits.push(rx);
                        mine.push((p.clone(), tx));
                    }
                }
            }
        }
        if !mine.is_empty() {
            // On its own task: a requester that goes away must not leave
            // the others waiting for a batch nobody finishes.
            let tee = self.clone();
            let task = tokio::spawn(async move { tee.fetch_small_upstream(mine).await });
            lock(&self.tasks).push(task.abort_handle());
        }
        let mut out = Vec::with_capacity(waits.len());
        for mut rx in waits {
            let got = match rx.wait_for(|s| s.is_some()).await {
                Ok(s) => s.clone(),
                Err(_) => None,
            };
            out.push(SmallEntry(got.unwrap_or_else(|| {
                Small::Failed("relay: the upstream fetch was abandoned".into())
            })));
        }
        out
    }

    async fn fetch_small_upstream(
        self: Arc<Self>,
        mine: Vec<(RawPath, watch::Sender<Option<Small>>)>,
    ) {
        let args = FetchSmallArgs {
            paths: mine.iter().map(|(p, _)| p.clone()).collect(),
        };
        let reply = self
            .router
            .call(self.upstream, super::rpc::FETCH_SMALL, &args)
            .await;
        let files = match reply {
            Ok(files) if files.len() == mine.len() => files,
            Ok(files) => {
                let why = format!(
                    "relay: upstream answered {} of {} files",
                    files.len(),
                    mine.len()
                );
                self.forget_small(&mine, &why);
                return;
            }
            Err(e) => {
                self.forget_small(&mine, &format!("relay: {e}"));
                return;
            }
        };
        let tee = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            // In reply order: a linked file decodes after the one before.
            let mut decoder = super::compress::SmallDecoder::default();
            files
                .into_iter()
                .enumerate()
                .map(|(k, f)| {
                    let before = k.checked_sub(1).and_then(|j| args.paths.get(j));
                    tee.store_small(f, &mut decoder, before)
                })
                .collect::<Vec<_>>()
        })
        .await;
        match stored {
            Ok(stored) => {
                let mut failed = Vec::new();
                for ((path, tx), s) in mine.iter().zip(stored) {
                    if matches!(s, Small::Failed(_)) {
                        failed.push(path);
                    }
                    tx.send_replace(Some(s));
                }
                // Failures are answered, not kept: a target asking for
                // paths that do not exist must not grow the relay.
                let mut map = lock(&self.small);
                for path in failed {
                    map.remove(path);
                }
            }
            Err(e) => {
                let why = format!("relay: internal error storing small files: {e}");
                for (_, tx) in &mine {
                    tx.send_replace(Some(Small::Failed(why.clone())));
                }
            }
        }
    }

    /// Answers a batch that failed as a whole, and keeps nothing of it.
    fn forget_small(&self, mine: &[(RawPath, watch::Sender<Option<Small>>)], why: &str) {
        for (_, tx) in mine {
            tx.send_replace(Some(Small::Failed(why.to_string())));
        }
        let mut map = lock(&self.small);
        for (path, _) in mine {
            map.remove(path);
        }
    }

    /// Checks one small file from upstream (the one after `before` in its
    /// reply, decoded by `decoder`) and appends it to the spool.
    fn store_small(
        &self,
        file: SmallFile,
        decoder: &mut super::compress::SmallDecoder,
        before: Option<&RawPath>,
    ) -> Small {
        // Kept only if it saves bytes (a hostile upstream could pad it).
        let zstd = match &file {
            SmallFile::Compressed {
                data, meta, linked, ..
            } if (data.len() as u64) < meta.size => match (linked, before) {
                (false, _) => Some((data.clone(), None)),
                (true, Some(b)) => Some((data.clone(), Some(b.clone()))),
                // Linked to nothing: it does not decode (below) either.
                (true, None) => None,
            },
            _ => None,
        };
        match decoder.open(file) {
            SmallFile::Data { meta, data, digest } => {
                if data.len() as u64 != meta.size || meta.size > SMALL_FILE_MAX {
                    return Small::Failed(format!(
                        "relay: upstream sent {} bytes for a file of {}",
                        data.len(),
                        meta.size
                    ));
                }
                if *blake3::hash(&data).as_bytes() != digest {
                    return Small::Failed("relay: upstream data does not match its digest".into());
                }
                let mut blob = lock(&self.spool.blob);
                let at = blob.1;
                if let Err(e) = blob.0.write_all_at(&data, at) {
                    return Small::Failed(format!("relay: spool write failed: {e}"));
                }
                blob.1 += data.len() as u64;
                // Its compressed form too (it decoded to these checked
                // bytes), to send on as it is; if that write fails, it is
                // compressed again when sent.
                let zstd = zstd.and_then(|(z, linked_to)| {
                    let zat = blob.1;
                    blob.0.write_all_at(&z, zat).ok()?;
                    blob.1 += z.len() as u64;
                    Some((zat, z.len() as u64, linked_to))
                });
                drop(blob);
                self.small_fetched.fetch_add(1, Ordering::Relaxed);
                self.bytes_fetched.fetch_add(meta.size, Ordering::Relaxed);
                Small::Data {
                    meta,
                    at,
                    digest,
                    zstd,
                }
            }
            SmallFile::TooLarge => Small::TooLarge,
            SmallFile::Failed(why) => Small::Failed(why),
            SmallFile::Compressed { .. } => {
                Small::Failed("relay: compressed data was not decoded".into())
            }
        }
    }

    /// One file of a `fetch_small` reply: `entry` is what
    /// [`Tee::ensure_small`] answered for `path`; its data comes from the
    /// spool if it fits in what is left of `budget`. With `compressed`,
    /// a file that came compressed from upstream is answered in that form
    /// ([`SmallFile::Compressed`], not compressed again) — a linked one
    /// only if `before`, the file before it in this reply (if that one
    /// carried data), is the one it was linked to upstream.
    pub fn read_small(
        &self,
        path: &RawPath,
        entry: Option<&SmallEntry>,
        budget: u64,
        compressed: bool,
        before: Option<&RawPath>,
    ) -> SmallFile {
        match entry.map(|e| &e.0) {
            Some(Small::Data {
                meta,
                at,
                digest,
                zstd,
            }) => {
                if meta.size > budget {
                    return SmallFile::TooLarge;
                }
                if let (true, Some((zat, zlen, linked_to))) = (compressed, zstd)
                    && (linked_to.is_none() || linked_to.as_ref() == before)
                {
                    let mut buf = vec![0u8; *zlen as usize];
                    let blob = lock(&self.spool.blob);
                    if blob.0.read_exact_at(&mut buf, *zat).is_ok() {
                        return SmallFile::Compressed {
                            meta: meta.clone(),
                            data: buf.into(),
                            digest: *digest,
                            linked: linked_to.is_some(),
                        };
                    }
                }
                let mut buf = vec![0u8; meta.size as usize];
                let blob = lock(&self.spool.blob);
                if let Err(e) = blob.0.read_exact_at(&mut buf, *at) {
                    return SmallFile::Failed(format!("{path}: relay: spool read failed: {e}"));
                }
                drop(blob);
                SmallFile::Data {
                    meta: meta.clone(),
                    data: buf.into(),
                    digest: *digest,
                }
            }
            Some(Small::TooLarge) => SmallFile::TooLarge,
            Some(Small::Failed(why)) => SmallFile::Failed(format!("{path}: {why}")),
            None => SmallFile::Failed(format!("{path}: relay: not fetched (internal error)")),
        }
    }

    /// Keeps batch `k` of the push plan (encoded) until the tee stops, on
    /// disk: the targets behind the relay each take it at their own pace,
    /// and a slow one must not make the relay hold the whole plan in
    /// memory. Batches come in order, each once.
    pub fn keep_batch(&self, k: u64, encoded: &[u8]) -> Result<(), String> {
        let mut plan = lock(&self.spool.plan);
        let (file, index) = &mut *plan;
        if k != index.len() as u64 {
            return Err(format!(
                "relay: plan batch {k} out of order ({} kept)",
                index.len()
            ));
        }
        let at = index.last().map(|(o, l)| o + l).unwrap_or(0);
        file.write_all_at(encoded, at)
            .map_err(|e| format!("relay: could not keep the plan: {e}"))?;
        index.push((at, encoded.len() as u64));
        Ok(())
    }

    /// Batch `k` of the push plan, as kept.
    pub fn batch(&self, k: u64) -> Result<Vec<u8>, String> {
        let plan = lock(&self.spool.plan);
        let (file, index) = &*plan;
        let Some(&(at, len)) = usize::try_from(k).ok().and_then(|k| index.get(k)) else {
            return Err(format!("relay: no plan batch {k}"));
        };
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)
            .map_err(|e| format!("relay: could not read the plan: {e}"))?;
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

/// Gives the spool file the source's times (on its descriptor).
fn stamp(file: &File, meta: &FileMeta) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime_sec,
            tv_nsec: meta.atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime_sec,
            tv_nsec: meta.mtime_nsec as _,
        },
    };
    rustix::fs::futimens(file, &ts).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (watch::Sender<u64>, watch::Sender<Ending>, Gate) {
        let (w, wr) = watch::channel(0u64);
        let (d, dr) = watch::channel(None);
        (
            w,
            d,
            Gate {
                written: wr,
                done: dr,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waits_for_the_bytes_it_needs_and_no_longer() {
        let (w, d, g) = gate();
        let reader = tokio::task::spawn_blocking(move || {
            let mut g = g;
            let first = g.wait_blocking(100);
            let end = g.digest_blocking();
            (first, end)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        w.send_replace(50);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "50 of 100 bytes are not enough");
        w.send_replace(100);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        d.send_replace(Some(Ok([5; 32])));
        let (first, end) = reader.await.expect("join");
        assert_eq!(first, Ok(()));
        assert_eq!(end, Ok([5; 32]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upstream_failure_ends_every_reader_with_its_reason() {
        let (w, d, g) = gate();
        let g2 = g.clone();
        let a = tokio::task::spawn_blocking(move || g.clone().wait_blocking(1 << 20));
        let b = tokio::task::spawn_blocking(move || g2.clone().digest_blocking());
        w.send_replace(10);
        d.send_replace(Some(Err("relay: upstream digest mismatch".into())));
        let a = a.await.expect("join");
        let b = b.await.expect("join");
        assert_eq!(a, Err("relay: upstream digest mismatch".into()));
        assert_eq!(b, Err("relay: upstream digest mismatch".into()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_shorter_than_announced_is_an_error_not_a_hang() {
        let (w, d, g) = gate();
        w.send_replace(10);
        d.send_replace(Some(Ok([0; 32])));
        let r = tokio::task::spawn_blocking(move || g.clone().wait_blocking(20))
            .await
            .expect("join");
        assert!(r.is_err_and(|e| e.contains("shorter")));
        // The writer gone before the end: decided by the ending alone.
        let (w, d, g) = gate();
        drop(w);
        let r = tokio::task::spawn_blocking(move || g.clone().wait_blocking(20));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(d);
        assert!(r.await.expect("join").is_err());
    }
}
