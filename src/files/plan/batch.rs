//! One batch of a push, step by step (the numbers are those of the module
//! docs): its directories, then the files the destination lacks (chosen
//! in `judge`: quick check, `-c`) and their fetches. Durability and the
//! renames follow (`land`), then symlinks, hard links and special files
//! (`links`).

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

    /// Step 3, second half: receives the files, concurrently: small ones
    /// many to a call, the rest one by one; each lands verified in its
    /// temp file.
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
