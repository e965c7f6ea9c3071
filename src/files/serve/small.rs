//! The small-file path (`fetch_small`, many files in one reply) and
//! `--checksum` digests, both read on a blocking thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::limits::SMALL_CALLS_PER_REQUESTER;
use super::read::read_whole;
use super::{FileService, lock};
use crate::call::RemoteError;
use crate::files::compress::{self, Compression, Tuner};
use crate::files::meta::FileMeta;
use crate::files::{
    DigestArgs, FetchSmallArgs, FileDigest, MAX_DIGEST_PATHS, SMALL_FILE_MAX, SmallFile,
};
use crate::wire::ContextId;

/// Most file data one `fetch_small` reply carries; files beyond it are
/// answered [`SmallFile::TooLarge`] and fetched on their own.
pub const SMALL_BATCH_BYTES: u64 = 1024 * 1024;

impl FileService {
    /// The small-file path: opens, reads and hashes each file (on a
    /// blocking thread, so the runtime keeps serving the stream) and
    /// returns them all in one reply. Nothing is queued behind large
    /// transfers: like a one-chunk `fetch`, these are cheap and bounded
    /// (at most [`SMALL_BATCH_BYTES`] of data are read per call).
    pub(super) async fn fetch_small(
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
        let pacing = self.inner.pacers.for_target(requester);
        // Paced, a reply is one burst: keep it to 1/32 s of the limit
        // (larger files are then fetched on their own, in paced chunks).
        let batch = pacing.chunk_len(SMALL_BATCH_BYTES as usize) as u64;
        let level = self.small_level(requester);
        let fs = self.clone();
        let files = tokio::task::spawn_blocking(move || fs.read_batch(&args, teed, batch, level))
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
            && let Some(now) = {
                let lane = self.lane(stream);
                let mut tuner = lock(&lane.tuner);
                tuner.set_link_ceiling(pacing.ceiling());
                tuner.on_batch(std::time::Instant::now(), compressing, paced, bytes)
            }
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

    /// Reads (and with `level`, compresses) a `fetch_small` batch, at
    /// most `batch` bytes of file data; a relay's tee answers from what
    /// upstream sent (`teed`). Also returns the CPU time compressing took.
    fn read_batch(
        &self,
        args: &FetchSmallArgs,
        teed: Option<Vec<crate::files::tee::SmallEntry>>,
        batch: u64,
        level: Option<i32>,
    ) -> (Vec<SmallFile>, Duration) {
        let fs = self;
        // The reply's files in one stream when that pays.
        let mut zstd = compress::SmallEncoder::default();
        // Where in upstream's streams the last file passed on as it came
        // was, while the child's stream is still that one.
        let mut forwarded: Option<crate::files::tee::StreamAt> = None;
        let mut budget = batch;
        let mut out = Vec::with_capacity(args.paths.len());
        for (k, path) in args.paths.iter().enumerate() {
            let (one, at) = match (&fs.inner.tee, &teed) {
                // Compressed upstream: sent on as it came whenever it
                // would be compressed here and the child can decode it.
                (Some(tee), Some(got)) => {
                    tee.read_small(path, got.get(k), budget, level.is_some(), forwarded)
                }
                _ => (fs.read_small(path, budget), None),
            };
            match &one {
                SmallFile::Data { meta, .. } => budget = budget.saturating_sub(meta.size),
                SmallFile::Compressed { meta, .. } => {
                    budget = budget.saturating_sub(meta.size);
                    fs.inner.zcounters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let sent = zstd.encode(one, level, &fs.inner.zcounters);
            match at {
                Some(at) => forwarded = Some(at),
                // Compressed here: the child's stream is now this side's.
                None if matches!(sent, SmallFile::Compressed { .. }) => forwarded = None,
                None => {}
            }
            out.push(sent);
        }
        (out, zstd.compressing())
    }

    /// `--checksum`: the BLAKE3 digest of each registered file named, read
    /// on a blocking thread. Shares the requester's `fetch_small` slots, so
    /// one requester has at most [`SMALL_CALLS_PER_REQUESTER`] calls of
    /// either being read at once.
    pub(super) async fn digests(
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
    pub(super) fn read_small(&self, path: &crate::files::RawPath, budget: u64) -> SmallFile {
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
    pub(super) fn small_level(&self, requester: ContextId) -> Option<i32> {
        match self.inner.config.compress {
            Compression::Off => None,
            Compression::Level(l) => Some(l),
            Compression::Adaptive => match self.inner.router.stream_towards(requester) {
                Some(stream) => lock(&self.lane(stream).tuner).level(),
                None => Tuner::default().level(),
            },
        }
    }
}
