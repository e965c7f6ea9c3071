//! One batch of a push, step by step (the numbers are those of the module
//! docs): its directories, the files the destination lacks (quick check,
//! `-c`) and their fetches. Durability and the renames follow (`land`),
//! then symlinks, hard links and special files (`links`).

use super::*;

/// One batch at work beneath its session's root: what it needs of the
/// session, and its results so far.
pub(super) struct Batch<'a> {
    pub(super) plan: &'a PushPlan,
    pub(super) root: &'a Arc<Root>,
    /// DEST's own name when the entries' top is renamed to it (DEST's
    /// parent is then the root).
    pub(super) top: &'a Option<OsString>,
    pub(super) failed_dirs: &'a mut FailedDirs,
    /// The results of the batch's entries so far.
    pub(super) results: Vec<EntryResult>,
}

/// A file of the batch to judge: its place, source, size and stamp.
type Wanted<'e> = (Place, &'e RawPath, u64, Option<&'e Stamp>);

/// What a look at one destination gave.
type Seen = Result<Option<Found>, rustix::io::Errno>;

/// A batch's files as received, not yet in place.
pub(super) struct Received {
    /// Each file's outcome, in plan order.
    pub(super) outcomes: Vec<Outcome>,
    /// How each file sent is reported, by its index among them.
    pub(super) how: Vec<Sent>,
    /// The background syncs while many small files arrive, if any.
    pub(super) early_sync: Option<Arc<EarlySync>>,
}

impl Batch<'_> {
    /// Runs the batch through the steps, in order: its results, and
    /// whether the push broke here (cancelled, or DEST could not be
    /// looked at), so that later batches do nothing.
    pub(super) async fn run(
        mut self,
        router: &Router,
        temps: &TempFiles,
        cancel: &AtomicBool,
        entries: &[PlanEntry],
        dirs: &mut Vec<DirMeta>,
        dest: &Path,
    ) -> (Vec<EntryResult>, bool) {
        self.make_dirs(entries, dirs);
        // (Step 2: symlinks wait for the files.)
        let files = match self.files_to_send(router, entries).await {
            Ok(files) => files,
            Err(e) => {
                self.results.push(EntryResult::failed(dest, e.to_string()));
                return (self.results, true);
            }
        };
        if self.plan.dry_run {
            self.dry_files(files);
            self.links_and_specials(entries, true);
            return (collapse_alike(self.results), false);
        }
        let received = self.receive(router, temps, files).await;
        if cancel.load(Ordering::SeqCst) {
            // Dropping the received files discards them (an anonymous temp
            // file simply vanishes).
            drop(received);
            self.results.push(cancelled(dest));
            return (self.results, true);
        }
        self.land(received).await;
        if cancel.load(Ordering::SeqCst) {
            self.results.push(cancelled(dest));
            return (self.results, true);
        }
        // Symlinks, hard links and special files, once the files are in: like
        // them, an existing entry is replaced only when the push is final.
        self.links_and_specials(entries, false);
        (collapse_alike(self.results), false)
    }

    /// Where the plan's relative path `rel` lands beneath the root.
    pub(super) fn place_of(&self, rel: &RawPath) -> Result<Place, rustix::io::Errno> {
        Place::new(self.root, rel_beneath(self.top, rel))
    }

    /// The place for `rel`, or `None` (counted) when it lies below a
    /// directory that failed, or is unusable (reported).
    pub(super) fn admit(&mut self, rel: &RawPath) -> Option<Place> {
        let place = self.place_of(rel);
        self.failed_dirs.admit(place, self.root, &mut self.results)
    }

    /// The owner ids an entry of the plan gets.
    pub(super) fn ids_of(&self, owner: &Option<Owner>) -> Ids {
        owner_ids(self.plan, owner)
    }

    /// Step 1, directories, parents first. A new one is created private
    /// (0700) and gets its mode and times once its contents are in (`dirs`
    /// holds them for the end); an existing one is left exactly as it is
    /// until then.
    pub(super) fn make_dirs(&mut self, entries: &[PlanEntry], dirs: &mut Vec<DirMeta>) {
        let mut dir_entries: Vec<&PlanEntry> = entries
            .iter()
            .filter(|e| matches!(e, PlanEntry::Dir { .. }))
            .collect();
        dir_entries.sort_by_key(|e| match e {
            PlanEntry::Dir { rel, .. } => rel.as_bytes().iter().filter(|&&b| b == b'/').count(),
            _ => 0,
        });
        for e in dir_entries {
            let PlanEntry::Dir {
                rel,
                mode,
                mtime_sec,
                mtime_nsec,
                owner,
                xattrs,
            } = e
            else {
                continue;
            };
            let Some(p) = self.admit(rel) else {
                continue;
            };
            // DEST itself is the user's: a non-directory there is refused
            // (as `cp` does), not replaced.
            let is_dest = self.top.is_some() && !rel.as_bytes().contains(&b'/');
            let ids = self.ids_of(owner);
            match self.dir_made(&p, is_dest) {
                Ok(before) => {
                    let (status, changed) =
                        dir_status(before.as_ref(), *mode, *mtime_sec, *mtime_nsec, ids);
                    if self.plan.dry_run {
                        self.results.push(
                            EntryResult::done(p.shown(), EntryKind::Dir, status)
                                .with_changes(changed),
                        );
                    } else {
                        dirs.push((
                            p,
                            *mode,
                            *mtime_sec,
                            *mtime_nsec,
                            ids,
                            status,
                            changed,
                            xattrs.clone(),
                        ));
                    }
                }
                Err(err) => {
                    // Held to the end of the push, to say how many entries
                    // below it (in any batch) were not copied.
                    self.failed_dirs.insert(
                        &p,
                        EntryResult::failed(
                            p.shown(),
                            format!("{}: cannot create directory: {err}", show(p.shown())),
                        )
                        .of_kind(EntryKind::Dir),
                    );
                }
            }
        }
    }

    /// Directory `p` created (in a dry run, only looked at): what was at
    /// its name before.
    fn dir_made(&self, p: &Place, is_dest: bool) -> Result<Option<Found>, PlaceError> {
        if !self.plan.dry_run {
            return make_dir(p, is_dest);
        }
        look_at(p).map_err(PlaceError::from).and_then(|f| match f {
            Some(f) if is_dest && f.kind != rustix::fs::FileType::Directory => {
                Err(PlaceError::NotADirectory)
            }
            f => Ok(f),
        })
    }

    /// Step 3, first half: the batch's files that the destination does not already hold,
    /// by the quick check (or `-c`'s digests); the others get their
    /// results here (unchanged, or their metadata set). Fails only when
    /// the destination could not be looked at at all.
    pub(super) async fn files_to_send(
        &mut self,
        router: &Router,
        entries: &[PlanEntry],
    ) -> Result<Vec<FileJob>, EntryError> {
        let mut wanted: Vec<Wanted<'_>> = Vec::new();
        for e in entries {
            if let PlanEntry::File {
                src,
                rel,
                size,
                stamp,
            } = e
            {
                let Some(place) = self.admit(rel) else {
                    continue;
                };
                wanted.push((place, src, *size, stamp.as_ref()));
            }
        }
        let places: Vec<Place> = wanted.iter().map(|(p, ..)| p.clone()).collect();
        let looking = Instant::now();
        let seen = look_parallel(places).await?;
        tracing::debug!(
            "looked at {} destinations in {:?}",
            seen.len(),
            looking.elapsed()
        );
        let (mut files, to_hash) = self.verdicts(wanted, seen);
        if !to_hash.is_empty() {
            self.after_checksums(router, to_hash, &mut files).await;
        }
        Ok(files)
    }

    /// The quick check's verdict on each file: to send, to keep (its
    /// result given), or to hash (`-c`).
    fn verdicts(
        &mut self,
        wanted: Vec<Wanted<'_>>,
        seen: Vec<Seen>,
    ) -> (Vec<FileJob>, Vec<ToHash>) {
        let mut files: Vec<FileJob> = Vec::new();
        let mut to_hash: Vec<ToHash> = Vec::new();
        for ((place, src, size, stamp), seen) in wanted.into_iter().zip(seen) {
            let Some(found) = self.found_for_file(&place, seen) else {
                continue;
            };
            let ids = stamp.and_then(|s| self.ids_of(&s.owner));
            match file_verdict(self.plan.compare, size, stamp, ids, found.as_ref()) {
                Verdict::Send {
                    existed,
                    changes: what,
                } => files.push(FileJob {
                    index: files.len(),
                    src: src.clone(),
                    place,
                    size,
                    status: if existed {
                        Status::Changed
                    } else {
                        Status::Created
                    },
                    changes: what,
                    before: found,
                }),
                Verdict::Keep(fixes) => self
                    .results
                    .push(keep_file(&place, &fixes, stamp, self.plan)),
                Verdict::Hash => {
                    if let Some(found) = found {
                        to_hash.push((place, src.clone(), stamp.cloned(), ids, found, size));
                    }
                }
            }
        }
        (files, to_hash)
    }

    /// What is at a file's place, or `None` (its failure reported) when
    /// it could not be looked at or is a directory that is not empty.
    fn found_for_file(&mut self, place: &Place, seen: Seen) -> Option<Option<Found>> {
        let shown = show(place.shown());
        let why = match seen {
            Err(e) => format!("{shown}: cannot look at it: {}", describe(e)),
            Ok(found)
                if found.is_some_and(|f| f.kind == rustix::fs::FileType::Directory)
                    && !is_empty_dir(place) =>
            {
                // rsync refuses too (without --force or --delete).
                format!("{shown}: cannot replace a directory that is not empty with a file")
            }
            Ok(found) => return Some(found),
        };
        self.results
            .push(EntryResult::failed(place.shown(), why).of_kind(EntryKind::File));
        None
    }

    /// `-c`: the files whose digests differ from their sources' join
    /// `files`; the others are kept.
    async fn after_checksums(
        &mut self,
        router: &Router,
        to_hash: Vec<ToHash>,
        files: &mut Vec<FileJob>,
    ) {
        let same = checksums(router, self.plan.server, &to_hash).await;
        for ((place, src, stamp, ids, found, size), same) in to_hash.into_iter().zip(same) {
            match same.map(|same| after_hash(same, stamp.as_ref(), ids, &found)) {
                Ok(Verdict::Keep(fixes)) => {
                    self.results
                        .push(keep_file(&place, &fixes, stamp.as_ref(), self.plan))
                }
                Ok(v @ (Verdict::Send { .. } | Verdict::Hash)) => files.push(FileJob {
                    index: files.len(),
                    src,
                    place,
                    size,
                    status: Status::Changed,
                    changes: match v {
                        Verdict::Send { changes: what, .. } => what,
                        _ => changes::CONTENT,
                    },
                    before: Some(found),
                }),
                Err(e) => self.results.push(
                    EntryResult::failed(place.shown(), format!("{}: {e}", show(place.shown())))
                        .of_kind(EntryKind::File),
                ),
            }
        }
    }

    /// A dry run's results for the files it would send.
    pub(super) fn dry_files(&mut self, files: Vec<FileJob>) {
        for f in files {
            let mut r = EntryResult::done(f.place.shown(), EntryKind::File, f.status)
                .with_changes(f.changes);
            r.bytes = f.size;
            self.results.push(r);
        }
    }

    /// Step 3, second half: receives the files, concurrently: small ones many to a call,
    /// the rest one by one; each lands verified in its temp file.
    pub(super) async fn receive(
        &mut self,
        router: &Router,
        temps: &TempFiles,
        files: Vec<FileJob>,
    ) -> Received {
        let plan = self.plan;
        let how: Vec<Sent> = files
            .iter()
            .map(|f| Sent {
                status: f.status,
                changes: f.changes,
                before: f.before,
            })
            .collect();
        let single = files.len() == 1;
        let (small, large): (Vec<FileJob>, Vec<FileJob>) = files
            .into_iter()
            .partition(|f| !single && f.size <= SMALL_FILE_MAX);
        // At most half the large fetches the server queues per requester (it
        // refuses past its cap): a transfer's slot there is freed only after
        // its last acknowledgement, a moment after this side is done with it,
        // so the next fetch must not depend on that race (seen in
        // hostile::a_target_cannot_multiply_its_fetch_cap_with_ids_it_owns).
        let sem = Arc::new(Semaphore::new(
            (plan.parallel as usize).clamp(1, crate::files::serve::MAX_FETCHES_PER_REQUESTER / 2),
        ));
        let batch_sem = Arc::new(Semaphore::new(SMALL_BATCHES_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        let held = HeldFiles::from_rlimit();
        let early_sync = (plan.options.fsync && small.len() >= EARLY_SYNC_MIN_FILES)
            .then(|| EarlySync::new(self.root.clone()));
        let fetch_context = || FetchContext {
            router: router.clone(),
            server: plan.server,
            temps: temps.clone(),
            opts: plan.options.clone(),
            held: held.clone(),
            sizes_bound: plan.sizes_bound,
        };
        for batch in small_batches(small) {
            let ctx = fetch_context();
            let sem = batch_sem.clone();
            let early = early_sync.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let done = fetch_batch(ctx, batch).await;
                if let Some(early) = early {
                    early.kick().await;
                }
                done
            });
        }
        for job in large {
            let ctx = fetch_context();
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                vec![fetch_one(&ctx, job, single).await]
            });
        }
        Received {
            outcomes: self.joined(tasks).await,
            how,
            early_sync,
        }
    }

    /// Every fetch's outcomes, in plan order, once all have ended.
    async fn joined(&mut self, mut tasks: tokio::task::JoinSet<Vec<Outcome>>) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) => outcomes.extend(o),
                Err(e) => self.results.push(EntryResult::failed(
                    self.plan.dest.as_path(),
                    format!("internal error: {e}"),
                )),
            }
        }
        outcomes.sort_by_key(|(i, _, _)| *i);
        outcomes
    }
}
