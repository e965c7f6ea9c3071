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

/// One small file, once its batch has arrived.
#[derive(Clone)]
pub(super) enum Small {
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
            // In reply order: a linked file decodes after the one before.
            let mut decoder = crate::files::compress::SmallDecoder::default();
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
        decoder: &mut crate::files::compress::SmallDecoder,
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
}
