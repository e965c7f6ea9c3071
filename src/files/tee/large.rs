//! Large files: fetched once from upstream into the spool, read by every
//! target while they arrive; read ahead before any target asks; let go
//! once every target has had them.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{oneshot, watch};

use super::gate::Ending;
use super::{Gate, READ_AHEAD_BYTES, SpoolError, Spooled, Tee, lock, spool::stamp};
use crate::files::compress::FrameLog;
use crate::files::meta::FileMeta;
use crate::files::place::Place;
use crate::files::receive::{self, Observer, PendingFile, ReceiveError};
use crate::files::spec::PlanEntry;
use crate::files::{RawPath, SMALL_FILE_MAX};

/// A spool file once it exists, or why it never will.
pub(super) type Opened = Option<Result<(Arc<File>, FileMeta), SpoolError>>;

/// One large file: arriving, or arrived.
pub(super) struct Large {
    opened: watch::Receiver<Opened>,
    gate: Gate,
    /// Its chunks that came compressed, as they came.
    frames: Option<Arc<FrameLog>>,
    /// Transfers of it completed to targets.
    delivered: AtomicU64,
}

impl Tee {
    /// Opens `path` for a `fetch`: from the spool, fetching it from
    /// upstream first if nobody has asked for it yet. Returns once the
    /// file exists in the spool (with the upstream metadata), typically
    /// before its data.
    pub async fn open(self: &Arc<Self>, path: &RawPath) -> Result<Spooled, SpoolError> {
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
            .map_err(|_| SpoolError::OpenAbandoned {
                path: path.to_string(),
            })?
            .clone();
        match got {
            Some(Ok((file, meta))) => Ok(Spooled {
                file,
                meta,
                gate: large.gate.clone(),
                frames: large.frames.clone(),
            }),
            Some(Err(why)) => Err(why),
            None => Err(SpoolError::OpenAbandoned {
                path: path.to_string(),
            }),
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

    /// Starts fetching `path` into the spool: the file its readers wait
    /// on, and the fetch's handle.
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
        let fetching = Fetching {
            n,
            path: path.clone(),
            opened: open_tx,
            written,
            done: done_tx,
            frames,
        };
        let task = tokio::spawn(fetching.run(self.clone()));
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
}

/// A file received into the spool from upstream, once opened there.
type SpoolFile = (Arc<File>, FileMeta);

/// One large file's fetch from upstream, with the ends its [`Large`]'s
/// readers wait on: the spool file opened, the bytes written, the end.
struct Fetching {
    /// The spool file's number.
    n: u64,
    path: RawPath,
    opened: watch::Sender<Opened>,
    written: Arc<watch::Sender<u64>>,
    done: watch::Sender<Ending>,
    /// The record of its chunks that came compressed, if the spool could
    /// hold one.
    frames: Option<Arc<FrameLog>>,
}

impl Fetching {
    /// Fetches the file (once an upstream slot is free) and tells its
    /// readers how it ended.
    async fn run(self, tee: Arc<Tee>) {
        let Ok(_slot) = tee.upstream_slots.clone().acquire_owned().await else {
            return;
        };
        let place = match Place::new(&tee.spool.root, PathBuf::from(format!("f{}", self.n))) {
            Ok(p) => p,
            Err(e) => {
                let why = SpoolError::Spool {
                    path: self.path.to_string(),
                    source: Arc::new(e.into()),
                };
                self.opened.send_replace(Some(Err(why.clone())));
                self.done.send_replace(Some(Err(why)));
                return;
            }
        };
        let (result, file) = self.receive(&tee, &place).await;
        match result {
            Ok(pending) => self.arrived(&tee, pending, file),
            Err(e) => {
                let why = SpoolError::Upstream(Arc::new(e));
                if file.is_none() {
                    self.opened.send_replace(Some(Err(why.clone())));
                }
                self.done.send_replace(Some(Err(why)));
                // Answered, not kept: a target asking for paths that
                // do not exist must not grow the relay (a later ask
                // fetches again).
                lock(&tee.large).remove(&self.path);
            }
        }
    }

    /// Receives the file into `place`, telling the readers as soon as it
    /// is opened: the transfer's result, and the spool file if it was.
    async fn receive(
        &self,
        tee: &Tee,
        place: &Place,
    ) -> (Result<PendingFile, ReceiveError>, Option<SpoolFile>) {
        let (otx, orx) = oneshot::channel();
        let observer = Observer {
            opened: Some(otx),
            written: self.written.clone(),
            frames: self.frames.clone(),
        };
        let receiving = receive::receive_observed(
            &tee.router,
            tee.upstream,
            &self.path,
            place,
            &tee.temps,
            &tee.opts,
            observer,
        );
        tokio::pin!(receiving);
        let mut orx = Some(orx);
        let mut file: Option<SpoolFile> = None;
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
                        file = Some(self.publish(f, meta));
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
            file = Some(self.publish(f, meta));
        }
        (result, file)
    }

    /// Tells the readers the spool file is open.
    fn publish(&self, f: File, meta: FileMeta) -> SpoolFile {
        let f = Arc::new(f);
        self.opened
            .send_replace(Some(Ok((f.clone(), meta.clone()))));
        (f, meta)
    }

    /// The file arrived whole: counted, stamped with the source's times,
    /// and its end (the digest) told to the readers.
    fn arrived(&self, tee: &Tee, pending: PendingFile, file: Option<SpoolFile>) {
        tee.files_fetched.fetch_add(1, Ordering::Relaxed);
        tee.bytes_fetched
            .fetch_add(pending.bytes, Ordering::Relaxed);
        let digest = pending.digest;
        let ending = match &file {
            // The spool file's times are the source's, so the
            // reader's "changed while read" check holds.
            Some((f, meta)) => stamp(f, meta)
                .map(|()| digest)
                .map_err(|e| SpoolError::Stamp {
                    path: self.path.to_string(),
                    source: Arc::new(e),
                }),
            None => Err(SpoolError::NotOpened {
                path: self.path.to_string(),
            }),
        };
        if !pending.is_anonymous() {
            // A named temp file (no O_TMPFILE here): removed
            // when this is dropped, at the end.
            lock(&tee.kept).push(pending);
        }
        // (An anonymous one lives on through the read-only
        // descriptor; its writing one is closed now.)
        self.done.send_replace(Some(ending));
    }
}
