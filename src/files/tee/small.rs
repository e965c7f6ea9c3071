//! Small files: fetched upstream in one batch per request, checked against
//! their digests, and appended to the spool's small-file store.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::{Tee, lock};
use crate::files::meta::FileMeta;
use crate::files::{FetchSmallArgs, RawPath, SMALL_FILE_MAX, SmallFile};

/// What the tee has for one small file (from [`Tee::ensure_small`]).
#[derive(Clone)]
pub struct SmallEntry(pub(super) Small);

/// A compressed small file's place in the streams upstream sent
/// (`fetch_small` replies, see [`crate::files::compress::SmallEncoder`]):
/// which stream (numbered here, unique in this process) and which of its
/// files, 0 for the one that starts it. A relay passes a file on as it
/// came only where the child can decode it: at a stream's start, or right
/// after the file before it in the same stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAt {
    stream: u64,
    index: u32,
}

impl StreamAt {
    /// Whether a child whose stream last got `last` (passed on from
    /// upstream) can decode this one next.
    fn follows(self, last: Option<StreamAt>) -> bool {
        self.index == 0
            || last.is_some_and(|l| l.stream == self.stream && l.index + 1 == self.index)
    }
}

/// Numbers upstream's streams, across every tee of the process.
static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One small file, once its batch has arrived.
#[derive(Clone)]
pub(super) enum Small {
    Data {
        meta: FileMeta,
        at: u64,
        digest: [u8; 32],
        /// Where its compressed form, as upstream sent it, is kept in the
        /// same store, its length, and its place in upstream's stream.
        zstd: Option<(u64, u64, StreamAt)>,
    },
    TooLarge,
    Failed(String),
}

impl Tee {
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
            .call(self.upstream, crate::files::rpc::FETCH_SMALL, &args)
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
            // In reply order: a linked file continues the stream before it.
            let mut decoder = crate::files::compress::SmallDecoder::default();
            let mut stream: Option<StreamAt> = None;
            files
                .into_iter()
                .map(|f| {
                    let at = match &f {
                        SmallFile::Compressed { linked: false, .. } => Some(StreamAt {
                            stream: STREAMS.fetch_add(1, Ordering::Relaxed),
                            index: 0,
                        }),
                        SmallFile::Compressed { linked: true, .. } => stream.map(|s| StreamAt {
                            index: s.index.saturating_add(1),
                            ..s
                        }),
                        _ => None,
                    };
                    if matches!(f, SmallFile::Compressed { .. }) {
                        stream = at;
                    }
                    tee.store_small(f, &mut decoder, at)
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

    /// Checks one small file from upstream (decoded by `decoder`, in reply
    /// order; `at`: its place in upstream's streams, if compressed) and
    /// appends it to the spool.
    fn store_small(
        &self,
        file: SmallFile,
        decoder: &mut crate::files::compress::SmallDecoder,
        at: Option<StreamAt>,
    ) -> Small {
        // Kept only if it saves bytes (a hostile upstream could pad it).
        let zstd = match (&file, at) {
            (SmallFile::Compressed { data, meta, .. }, Some(at))
                if (data.len() as u64) < meta.size =>
            {
                Some((data.clone(), at))
            }
            // A linked file with no stream before it does not decode
            // (below) either.
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
                let zstd = zstd.and_then(|(z, at)| {
                    let zat = blob.1;
                    blob.0.write_all_at(&z, zat).ok()?;
                    blob.1 += z.len() as u64;
                    Some((zat, z.len() as u64, at))
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
    /// ([`SmallFile::Compressed`], not compressed again) if the child can
    /// decode it — it starts a stream, or follows `last`, the file this
    /// reply last passed on from upstream, in the same stream, with no file
    /// compressed here since. Returns, with the file, its place in
    /// upstream's streams when it was passed on as it came.
    pub fn read_small(
        &self,
        path: &RawPath,
        entry: Option<&SmallEntry>,
        budget: u64,
        compressed: bool,
        last: Option<StreamAt>,
    ) -> (SmallFile, Option<StreamAt>) {
        match entry.map(|e| &e.0) {
            Some(Small::Data {
                meta,
                at,
                digest,
                zstd,
            }) => {
                if meta.size > budget {
                    return (SmallFile::TooLarge, None);
                }
                if let (true, Some((zat, zlen, place))) = (compressed, zstd)
                    && place.follows(last)
                {
                    let mut buf = vec![0u8; *zlen as usize];
                    let blob = lock(&self.spool.blob);
                    if blob.0.read_exact_at(&mut buf, *zat).is_ok() {
                        let file = SmallFile::Compressed {
                            meta: meta.clone(),
                            data: buf.into(),
                            digest: *digest,
                            linked: place.index > 0,
                        };
                        return (file, Some(*place));
                    }
                }
                let mut buf = vec![0u8; meta.size as usize];
                let blob = lock(&self.spool.blob);
                if let Err(e) = blob.0.read_exact_at(&mut buf, *at) {
                    let why = format!("{path}: relay: spool read failed: {e}");
                    return (SmallFile::Failed(why), None);
                }
                drop(blob);
                let file = SmallFile::Data {
                    meta: meta.clone(),
                    data: buf.into(),
                    digest: *digest,
                };
                (file, None)
            }
            Some(Small::TooLarge) => (SmallFile::TooLarge, None),
            Some(Small::Failed(why)) => (SmallFile::Failed(format!("{path}: {why}")), None),
            None => {
                let why = format!("{path}: relay: not fetched (internal error)");
                (SmallFile::Failed(why), None)
            }
        }
    }
}
