//! Receiving a batch's files: one windowed transfer for a large file, many
//! small files to a `fetch_small` call; each verified into its temp file.

use super::*;

pub(super) enum Done {
    Committed(Summary),
    Pending(Box<PendingFile>),
}

/// One file of the plan: its place in the plan, where it comes from and
/// goes, and the size the plan saw.
pub(super) struct FileJob {
    pub(super) index: usize,
    pub(super) src: RawPath,
    pub(super) place: Place,
    pub(super) size: u64,
    /// Created or Changed, once it lands.
    pub(super) status: Status,
    /// What differed ([`changes`] flags).
    pub(super) changes: u8,
    /// What the destination held when it was checked.
    pub(super) before: Option<Found>,
}

/// How a sent file is reported, and what its destination held when it
/// was checked (it is not replaced if that changed meanwhile).
#[derive(Clone, Copy)]
pub(super) struct Sent {
    pub(super) status: Status,
    pub(super) changes: u8,
    pub(super) before: Option<Found>,
}

/// Whether the destination of `p` still holds what the check saw: the
/// same inode, size and mtime, or still nothing. Another writer's change
/// since then is not silently overwritten.
pub(super) fn still_as_checked(p: &Place, before: Option<&Found>) -> Result<(), PlaceError> {
    let now = look_at(p).map_err(|source| PlaceError::OsAt {
        path: show(p.shown()),
        source,
    })?;
    let same = match (before, now.as_ref()) {
        (None, None) => true,
        (Some(b), Some(n)) => {
            b.dev == n.dev
                && b.ino == n.ino
                && b.kind == n.kind
                && b.size == n.size
                && b.same_time(n.mtime_sec, n.mtime_nsec)
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(PlaceError::ChangedMeanwhile {
            path: show(p.shown()),
        })
    }
}

/// A file's outcome: its plan index, destination, and result.
pub(super) type Outcome = (usize, Place, Result<Done, EntryError>);

/// What every fetch needs.
pub(super) struct FetchContext {
    pub(super) router: Router,
    pub(super) server: ContextId,
    pub(super) temps: TempFiles,
    pub(super) opts: ReceiveOptions,
    pub(super) held: Arc<HeldFiles>,
    /// [`PushPlan::sizes_bound`].
    pub(super) sizes_bound: bool,
}

/// With sizes bound, why a file of `size` bytes offered for the entry at
/// `p` announced at `announced` is refused.
pub(super) fn over_announced(
    sizes_bound: bool,
    p: &Place,
    announced: u64,
    size: u64,
) -> Option<EntryError> {
    (sizes_bound && size > announced).then(|| EntryError::OverAnnounced {
        path: show(p.shown()),
        size,
        announced,
    })
}

/// How many received files may wait for the batched sync with their
/// descriptors still open (and so still nameless, see
/// [`PendingFile::finish_open`]); beyond that, files get a hidden name
/// and their descriptor is closed.
pub(super) struct HeldFiles {
    pub(super) left: std::sync::atomic::AtomicUsize,
}

impl HeldFiles {
    /// Raises this process's soft limit on open files to its hard limit
    /// (as Go's runtime does at start) and allows all but a reserve of it.
    pub(super) fn from_rlimit() -> Arc<HeldFiles> {
        let limit = crate::files::serve::raise_open_files_limit().min(1 << 20) as usize;
        Arc::new(HeldFiles {
            left: std::sync::atomic::AtomicUsize::new(limit.saturating_sub(FD_RESERVE)),
        })
    }

    /// Takes one descriptor from the budget, if any is left.
    pub(super) fn take_one(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Descriptors left for everything else (streams, directories, files
/// still being received) when files are held open.
pub(super) const FD_RESERVE: usize = 512;

/// `fetch_small` calls in flight at once: enough to keep the link busy
/// while the previous reply is written out, few enough that at most this
/// many × [`SMALL_BATCH_BYTES`] of replies are buffered.
pub(super) const SMALL_BATCHES_IN_FLIGHT: usize = 4;

/// Small files in a push from which on the destination's file system is
/// synced in the background while they arrive ([`EarlySync`]).
pub(super) const EARLY_SYNC_MIN_FILES: usize = 2048;

/// Most files asked for in one `fetch_small`.
pub(super) const SMALL_BATCH_FILES: usize = 512;

/// Groups small files into `fetch_small` calls of at most
/// [`SMALL_BATCH_FILES`] files and [`SMALL_BATCH_BYTES`] of data (by the
/// plan's sizes; the server enforces the real budget).
pub(super) fn small_batches(small: Vec<FileJob>) -> Vec<Vec<FileJob>> {
    let mut batches = Vec::new();
    let mut batch: Vec<FileJob> = Vec::new();
    let mut bytes = 0u64;
    for job in small {
        if !batch.is_empty()
            && (batch.len() >= SMALL_BATCH_FILES || bytes + job.size > SMALL_BATCH_BYTES)
        {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += job.size;
        batch.push(job);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Fetches one file through its own transfer. The only file of a plan is
/// committed durably at once; one of many is finished (its descriptor
/// closed) and left for the batched sync.
pub(super) async fn fetch_one(ctx: &FetchContext, job: FileJob, single: bool) -> Outcome {
    let r = if ctx.sizes_bound {
        receive::receive_at_most(
            &ctx.router,
            ctx.server,
            &job.src,
            &job.place,
            &ctx.temps,
            &ctx.opts,
            job.size,
        )
        .await
    } else {
        receive::receive_with(
            &ctx.router,
            ctx.server,
            &job.src,
            &job.place,
            &ctx.temps,
            &ctx.opts,
        )
        .await
    };
    let r = match r {
        Ok(p) if let Some(e) = over_announced(ctx.sizes_bound, &job.place, job.size, p.bytes) => {
            Err(e)
        }
        Ok(mut p) => {
            let done = if single {
                let s = Summary {
                    bytes: p.bytes,
                    digest: p.digest,
                    started: p.started,
                    span: p.data_span_ns,
                };
                match still_as_checked(&job.place, job.before.as_ref()) {
                    Ok(()) => p.commit(&ctx.opts).map(|()| Done::Committed(s)),
                    Err(e) => return (job.index, job.place, Err(e.into())),
                }
            } else if ctx.held.take_one() {
                p.finish_open(&ctx.opts)
                    .map(|()| Done::Pending(Box::new(p)))
            } else {
                p.finish(&ctx.opts, false)
                    .map(|()| Done::Pending(Box::new(p)))
            };
            done.map_err(EntryError::from)
        }
        Err(e) => Err(e.into()),
    };
    (job.index, job.place, r)
}

/// Fetches a batch of small files in one `fetch_small` call and writes
/// them on a blocking thread (so this context keeps reading its stream
/// meanwhile). Files the server found too large by now are fetched one by
/// one.
pub(super) async fn fetch_batch(ctx: FetchContext, batch: Vec<FileJob>) -> Vec<Outcome> {
    let started = Instant::now();
    let args = FetchSmallArgs {
        paths: batch.iter().map(|j| j.src.clone()).collect(),
    };
    let reply = ctx
        .router
        .call(ctx.server, crate::files::rpc::FETCH_SMALL, &args)
        .await;
    let files = match reply {
        Ok(files) if files.len() == batch.len() => files,
        Ok(files) => {
            let (got, asked) = (files.len(), batch.len());
            return all_failed(batch, &|path, src| EntryError::ShortAnswer {
                path,
                src,
                got,
                asked,
            });
        }
        Err(e) => {
            return all_failed(batch, &|path, src| EntryError::FetchCall {
                path,
                src,
                source: Box::new(e.clone()),
            });
        }
    };
    let places: Vec<(usize, Place)> = batch.iter().map(|j| (j.index, j.place.clone())).collect();
    let writer = SmallWriter {
        temps: ctx.temps.clone(),
        opts: ctx.opts.clone(),
        held: ctx.held.clone(),
        sizes_bound: ctx.sizes_bound,
        started,
    };
    let written = tokio::task::spawn_blocking(move || writer.write(batch, files)).await;
    let (mut done, too_large) = match written {
        Ok(w) => w,
        Err(e) => {
            return places
                .into_iter()
                .map(|(i, p)| {
                    let why = e.to_string();
                    (
                        i,
                        p,
                        Err(EntryError::Internal {
                            what: "writing files",
                            why,
                        }),
                    )
                })
                .collect();
        }
    };
    for job in too_large {
        done.push(fetch_one(&ctx, job, false).await);
    }
    done
}

/// Every file of `batch` failed, each with `why(its path, its source)`.
fn all_failed(batch: Vec<FileJob>, why: &dyn Fn(String, String) -> EntryError) -> Vec<Outcome> {
    batch
        .into_iter()
        .map(|j| {
            let e = why(show(j.place.shown()), j.src.to_string());
            (j.index, j.place, Err(e))
        })
        .collect()
}

/// What writing a `fetch_small` reply needs, on its blocking thread.
struct SmallWriter {
    temps: TempFiles,
    opts: ReceiveOptions,
    held: Arc<HeldFiles>,
    sizes_bound: bool,
    /// When the batch's call was made.
    started: Instant,
}

impl SmallWriter {
    /// Writes each file of the reply into its temp file: the outcomes,
    /// and the jobs the server found too large by now.
    fn write(self, batch: Vec<FileJob>, files: Vec<SmallFile>) -> (Vec<Outcome>, Vec<FileJob>) {
        let mut done = Vec::with_capacity(batch.len());
        let mut too_large = Vec::new();
        // Every file of the reply, in order: a linked one decodes against
        // the one before it.
        let mut decoder = crate::files::compress::SmallDecoder::default();
        for (job, file) in batch.into_iter().zip(files) {
            match self.land(&job, decoder.open(file)) {
                Some(r) => done.push((job.index, job.place, r)),
                None => too_large.push(job),
            }
        }
        (done, too_large)
    }

    /// One decoded file of the reply, received into its temp file;
    /// `None` when the server found it too large by now.
    fn land(&self, job: &FileJob, file: SmallFile) -> Option<Result<Done, EntryError>> {
        Some(match file {
            SmallFile::Data { meta, .. } | SmallFile::Compressed { meta, .. }
                if let Some(e) =
                    over_announced(self.sizes_bound, &job.place, job.size, meta.size) =>
            {
                Err(e)
            }
            SmallFile::Data { meta, data, digest } => {
                receive::receive_whole(&job.place, &self.temps, &meta, &data, &digest, self.started)
                    .and_then(|mut p| {
                        if self.held.take_one() {
                            p.finish_open(&self.opts)
                        } else {
                            p.finish(&self.opts, false)
                        }
                        .map(|()| Done::Pending(Box::new(p)))
                    })
                    .map_err(EntryError::from)
            }
            SmallFile::Failed(why) => Err(EntryError::SourceFailed {
                path: show(job.place.shown()),
                src: job.src.to_string(),
                why,
            }),
            // The decoder decodes these; nothing else may land.
            SmallFile::Compressed { .. } => Err(EntryError::NotDecoded {
                path: show(job.place.shown()),
                src: job.src.to_string(),
            }),
            SmallFile::TooLarge => return None,
        })
    }
}

pub(super) struct Summary {
    pub(super) bytes: u64,
    pub(super) digest: [u8; 32],
    pub(super) started: Instant,
    pub(super) span: (u64, u64),
}

pub(super) fn file_ok(path: &Path, s: &Summary, status: Status, changed: u8) -> EntryResult {
    EntryResult {
        path: show(path),
        path_bytes: raw_if_not_utf8(path),
        bytes: s.bytes,
        seconds: s.started.elapsed().as_secs_f64(),
        digest: Some(hex(&s.digest)),
        error: None,
        data_span_ns: s.span,
        status,
        kind: EntryKind::File,
        changes: changed,
    }
}
