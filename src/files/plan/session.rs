//! A push session's batches and its end: what each batch looks at, receives
//! and lands, and the end's directory metadata and `--delete`.

use super::*;

impl Session {
    /// Opens DEST for `plan` (its entries, if any, are ignored: they come
    /// in batches). Fails with the result to report when DEST cannot be
    /// used.
    pub fn open(mut plan: PushPlan) -> Result<Session, Vec<EntryResult>> {
        plan.entries = Vec::new();
        let dest = plan.dest.as_path().to_path_buf();
        let mut session = Session {
            dest: dest.clone(),
            opened: None,
            broken: false,
            announced: false,
            failed_dirs: FailedDirs::default(),
            dirs: Vec::new(),
            seen: crate::files::delete::Seen::default(),
            started: Instant::now(),
            plan,
        };
        if session.plan.dry_run
            && session.plan.into_dir
            && std::fs::symlink_metadata(&dest).is_err()
        {
            // Nothing there yet: everything would be created, DEST first.
            return Ok(session);
        }
        let dest_existed = std::fs::symlink_metadata(&dest).is_ok();
        let (root, top) = open_root(&session.plan, &dest)
            .map_err(|e| vec![EntryResult::failed(&dest, e.to_string())])?;
        let dest_before = rustix::fs::fstat(root.fd()).ok().map(|st| Found::of(&st));
        session.opened = Some(Opened {
            root,
            top,
            dest_existed,
            dest_before,
        });
        Ok(session)
    }

    /// Applies one batch of entries, in walk order (a directory before
    /// what it holds, a hard link after the file it links to): returns
    /// their results once each is in place (or has failed).
    pub async fn batch(
        &mut self,
        router: &Router,
        temps: &TempFiles,
        cancel: &AtomicBool,
        entries: Vec<PlanEntry>,
    ) -> Vec<EntryResult> {
        if self.broken {
            return Vec::new();
        }
        if let Some(refused) = unsafe_entry(&entries, &self.dest) {
            self.broken = true;
            return vec![refused];
        }
        if self.plan.delete.enabled {
            self.seen.add(&entries);
        }
        tracing::debug!(
            "push batch of {} entries to {}",
            entries.len(),
            show(&self.dest)
        );
        let Session {
            plan,
            dest,
            opened,
            broken,
            announced,
            failed_dirs,
            dirs,
            ..
        } = self;
        let dest: &Path = dest;
        let Some(Opened { root, top, .. }) = opened else {
            return all_new(&entries, dest, !std::mem::replace(announced, true));
        };
        let rel_of = |rel: &RawPath| -> PathBuf { rel_beneath(top, rel) };
        let place_of = |rel: &RawPath| Place::new(root, rel_of(rel));
        let mut results = Vec::new();
        let ids_of = |owner: &Option<Owner>| -> Ids {
            owner
                .as_ref()
                .filter(|_| plan.options.preserve_owner)
                .map(Owner::ids)
        };
        // 1. Directories, parents first. A new one is created private (0700)
        //    and gets its mode and times once its contents are in; an existing
        //    one is left exactly as it is until then.
        let mut dir_entries: Vec<&PlanEntry> = entries
            .iter()
            .filter(|e| matches!(e, PlanEntry::Dir { .. }))
            .collect();
        dir_entries.sort_by_key(|e| match e {
            PlanEntry::Dir { rel, .. } => rel.as_bytes().iter().filter(|&&b| b == b'/').count(),
            _ => 0,
        });
        for e in dir_entries {
            if let PlanEntry::Dir {
                rel,
                mode,
                mtime_sec,
                mtime_nsec,
                owner,
                xattrs,
            } = e
            {
                let Some(p) = failed_dirs.admit(place_of(rel), root, &mut results) else {
                    continue;
                };
                // DEST itself is the user's: a non-directory there is refused
                // (as `cp` does), not replaced.
                let is_dest = top.is_some() && !rel.as_bytes().contains(&b'/');
                let ids = ids_of(owner);
                let made = if plan.dry_run {
                    look_at(&p).map_err(PlaceError::from).and_then(|f| match f {
                        Some(f) if is_dest && f.kind != rustix::fs::FileType::Directory => {
                            Err(PlaceError::NotADirectory)
                        }
                        f => Ok(f),
                    })
                } else {
                    make_dir(&p, is_dest)
                };
                match made {
                    Ok(before) => {
                        let (status, changed) =
                            dir_status(before.as_ref(), *mode, *mtime_sec, *mtime_nsec, ids);
                        if plan.dry_run {
                            results.push(
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
                        failed_dirs.insert(
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
        // 3. Files, concurrently: small ones many to a call, the rest one by
        //    one — those the destination does not already hold.
        let mut wanted: Vec<(Place, &RawPath, u64, Option<&Stamp>)> = Vec::new();
        for e in &entries {
            if let PlanEntry::File {
                src,
                rel,
                size,
                stamp,
            } = e
            {
                let Some(place) = failed_dirs.admit(place_of(rel), root, &mut results) else {
                    continue;
                };
                wanted.push((place, src, *size, stamp.as_ref()));
            }
        }
        let file_ids = |stamp: Option<&Stamp>| -> Ids { stamp.and_then(|s| ids_of(&s.owner)) };
        let places: Vec<Place> = wanted.iter().map(|(p, ..)| p.clone()).collect();
        let looking = Instant::now();
        let seen = match look_parallel(places).await {
            Ok(seen) => seen,
            Err(e) => {
                results.push(EntryResult::failed(dest, e.to_string()));
                *broken = true;
                return results;
            }
        };
        tracing::debug!(
            "looked at {} destinations in {:?}",
            seen.len(),
            looking.elapsed()
        );
        let mut files: Vec<FileJob> = Vec::new();
        let mut to_hash: Vec<ToHash> = Vec::new();
        for ((place, src, size, stamp), seen) in wanted.into_iter().zip(seen) {
            let found = match seen {
                Ok(f) => f,
                Err(e) => {
                    let shown = show(place.shown());
                    results.push(
                        EntryResult::failed(
                            place.shown(),
                            format!("{shown}: cannot look at it: {}", describe(e)),
                        )
                        .of_kind(EntryKind::File),
                    );
                    continue;
                }
            };
            let ids = file_ids(stamp);
            if found.is_some_and(|f| f.kind == rustix::fs::FileType::Directory)
                && !is_empty_dir(&place)
            {
                // rsync refuses too (without --force or --delete).
                let shown = show(place.shown());
                results.push(
                    EntryResult::failed(
                        place.shown(),
                        format!(
                            "{shown}: cannot replace a directory that is not empty with a file"
                        ),
                    )
                    .of_kind(EntryKind::File),
                );
                continue;
            }
            match file_verdict(plan.compare, size, stamp, ids, found.as_ref()) {
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
                Verdict::Keep(fixes) => results.push(keep_file(&place, &fixes, stamp, plan)),
                Verdict::Hash => {
                    if let Some(found) = found {
                        to_hash.push((place, src.clone(), stamp.cloned(), ids, found, size));
                    }
                }
            }
        }
        if !to_hash.is_empty() {
            let same = checksums(router, plan.server, &to_hash).await;
            for ((place, src, stamp, ids, found, size), same) in to_hash.into_iter().zip(same) {
                match same.map(|same| after_hash(same, stamp.as_ref(), ids, &found)) {
                    Ok(Verdict::Keep(fixes)) => {
                        results.push(keep_file(&place, &fixes, stamp.as_ref(), plan))
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
                    Err(e) => results.push(
                        EntryResult::failed(place.shown(), format!("{}: {e}", show(place.shown())))
                            .of_kind(EntryKind::File),
                    ),
                }
            }
        }
        if plan.dry_run {
            for f in files {
                let mut r = EntryResult::done(f.place.shown(), EntryKind::File, f.status)
                    .with_changes(f.changes);
                r.bytes = f.size;
                results.push(r);
            }
            links_and_specials(
                plan,
                &entries,
                &place_of,
                root,
                failed_dirs,
                &mut results,
                &ids_of,
                true,
            );
            return collapse_alike(results);
        }
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
            .then(|| EarlySync::new(root.clone()));
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
        let mut outcomes: Vec<Outcome> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) => outcomes.extend(o),
                Err(e) => results.push(EntryResult::failed(
                    plan.dest.as_path(),
                    format!("internal error: {e}"),
                )),
            }
        }
        outcomes.sort_by_key(|(i, _, _)| *i);
        if cancel.load(Ordering::SeqCst) {
            // Dropping the received files discards them (an anonymous temp
            // file simply vanishes).
            drop(outcomes);
            results.push(cancelled(dest));
            *broken = true;
            return results;
        }
        // 4. Batched durability for many files.
        let pending_dirs: BTreeSet<PathBuf> = outcomes
            .iter()
            .filter(|(_, _, r)| matches!(r, Ok(Done::Pending(_))))
            .map(|(_, p, _)| p.parent_rel().to_path_buf())
            .collect();
        // The file system work from here on runs on blocking threads: a
        // syncfs can take a while, and this context's runtime must keep
        // answering its stream meanwhile.
        let mut sync_error = None;
        if plan.options.fsync && !pending_dirs.is_empty() {
            if let Some(early) = &early_sync {
                early.wait().await;
            }
            let (dirs, root) = (pending_dirs.clone(), root.clone());
            sync_error = match tokio::task::spawn_blocking(move || syncfs_all(&root, &dirs)).await {
                Ok(r) => r.err().map(|e| Arc::new(EntryError::Place(e))),
                Err(e) => Some(Arc::new(EntryError::Internal {
                    what: "syncing",
                    why: e.to_string(),
                })),
            };
        }
        results.extend(put_in_place(outcomes, sync_error.clone(), &how).await);
        if plan.options.fsync && sync_error.is_none() {
            let root = root.clone();
            let synced = tokio::task::spawn_blocking(move || {
                let mut failed = Vec::new();
                for d in &pending_dirs {
                    if let Err(e) = open_for_sync(&root, d).and_then(|f| rustix::fs::fsync(&f)) {
                        let shown = root.path().join(d);
                        failed.push(EntryResult::failed(
                            &shown,
                            format!("{}: fsync directory: {}", show(&shown), describe(e)),
                        ));
                    }
                }
                failed
            })
            .await;
            match synced {
                Ok(failed) => results.extend(failed),
                Err(e) => results.push(EntryResult::failed(
                    plan.dest.as_path(),
                    format!("internal error syncing directories: {e}"),
                )),
            }
        }
        if cancel.load(Ordering::SeqCst) {
            results.push(cancelled(dest));
            *broken = true;
            return results;
        }
        // Symlinks, hard links and special files, once the files are in: like
        // them, an existing entry is replaced only when the push is final.
        links_and_specials(
            plan,
            &entries,
            &place_of,
            root,
            failed_dirs,
            &mut results,
            &ids_of,
            false,
        );
        collapse_alike(results)
    }

    /// Ends the push: directory metadata (deepest first, now that their
    /// contents are in), DEST's own, then `--delete` with what the walk
    /// learnt (`end`); returns their results and those of the
    /// directories that failed.
    pub async fn finish(&mut self, cancel: &AtomicBool, end: PushEnd) -> Vec<EntryResult> {
        if self.broken {
            return Vec::new();
        }
        self.plan.delete.incomplete.extend(end.incomplete);
        self.plan.delete.keep.extend(end.keep);
        let Session {
            plan,
            dest,
            opened,
            announced,
            failed_dirs,
            dirs,
            seen,
            started,
            ..
        } = self;
        let Some(Opened {
            root,
            top,
            dest_existed,
            dest_before,
        }) = opened
        else {
            return all_new(&[], dest, !std::mem::replace(announced, true));
        };
        if cancel.load(Ordering::SeqCst) {
            return vec![cancelled(dest)];
        }
        let ids_of = |owner: &Option<Owner>| -> Ids {
            owner
                .as_ref()
                .filter(|_| plan.options.preserve_owner)
                .map(Owner::ids)
        };
        let rel_of = |rel: &RawPath| -> PathBuf { rel_beneath(top, rel) };
        // `--delete` first, now that every entry is in place (in a dry
        // run, what it would remove): removing an entry changes its
        // directory's mtime, so directories get theirs after it.
        let mut results = crate::files::delete::after_push(plan, root, &rel_of, cancel, seen).await;
        let mut dirs = std::mem::take(dirs);
        // 5. Directory metadata, deepest first: now that their contents are in.
        dirs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.rel().components().count()));
        for (p, mode, sec, nsec, ids, mut status, mut changed, xattrs) in dirs {
            // Extended attributes first (see `PendingFile::apply_meta`), only
            // where they differ.
            let set_xattrs = crate::files::xattr::sync_place(&p, &xattrs, plan.options.xattrs);
            if matches!(set_xattrs, Ok(true)) && status == Status::Unchanged {
                (status, changed) = (Status::Changed, changed | changes::XATTRS);
            }
            // Only what differs now (entries landing in it changed its
            // mtime): a directory that matches is not touched, not even its
            // ctime.
            let now = look_at(&p).ok().flatten();
            let needed =
                now.is_none_or(|f| !Fixes::needed(&f, mode, Some((sec, nsec)), ids).is_empty());
            let r = landed(
                &p,
                EntryKind::Dir,
                status,
                "set directory metadata",
                set_xattrs.map_err(EntryError::from).and_then(|_| {
                    if needed {
                        Ok(set_dir_meta(&p, mode, sec, nsec, ids)?)
                    } else {
                        Ok(())
                    }
                }),
            );
            results.push(r.with_changes(changed));
        }
        let found = dest_existed.then_some(*dest_before).flatten();
        let end = Ending {
            plan,
            root,
            dest_is_root: top.is_none(),
            found,
        };
        let results = end.finish(&ids_of, std::mem::take(failed_dirs), results);
        tracing::debug!("push applied in {:?}", started.elapsed());
        results
    }
}

/// Where an entry lands, relative to the root: `rel` itself beneath
/// DEST, or with its first component (the source's name) renamed to
/// DEST's own name beneath DEST's parent.
pub(super) fn rel_beneath(top: &Option<OsString>, rel: &RawPath) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    match top {
        None => rel.as_path().to_path_buf(),
        Some(name) => {
            let rest = first_component_stripped(rel.as_bytes());
            if rest.is_empty() {
                PathBuf::from(name)
            } else {
                Path::new(name).join(std::ffi::OsStr::from_bytes(rest))
            }
        }
    }
}

/// What the end of a push (dry or not) needs.
pub(super) struct Ending<'a> {
    pub(super) plan: &'a PushPlan,
    pub(super) root: &'a Arc<Root>,
    /// DEST is the push's root (entries go into it).
    pub(super) dest_is_root: bool,
    /// DEST as the push found it (`None`: this push created it).
    pub(super) found: Option<Found>,
}

impl Ending<'_> {
    /// DEST's own metadata (a contents copy's source directory), the
    /// failed directories' results, then the results with alike failures
    /// grouped.
    pub(super) fn finish(
        self,
        ids_of: &(dyn Fn(&Option<Owner>) -> Ids + Sync),
        failed_dirs: FailedDirs,
        mut results: Vec<EntryResult>,
    ) -> Vec<EntryResult> {
        if self.dest_is_root
            && let Some(r) = root_meta(self.plan, self.root, self.found, ids_of)
        {
            results.push(r);
        }
        results.extend(failed_dirs.into_results());
        collapse_alike(results)
    }
}

/// Failures in one directory with the same cause (say, 2,000 files in a
/// read-only directory) become one result for the directory that says
/// how many entries failed and names the first, instead of one per entry.
pub(super) fn collapse_alike(results: Vec<EntryResult>) -> Vec<EntryResult> {
    // (directory, cause) → (index of the first, how many).
    let mut groups: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let key = |r: &EntryResult| -> Option<(String, String)> {
        let e = r.error.as_deref()?;
        let cause = e.strip_prefix(r.path.as_str())?.strip_prefix(": ")?;
        let (dir, _) = r.path.rsplit_once('/')?;
        Some((dir.to_string(), cause.to_string()))
    };
    for (i, r) in results.iter().enumerate() {
        if let Some(k) = key(r) {
            groups.entry(k).or_insert((i, 0)).1 += 1;
        }
    }
    if groups.values().all(|&(_, n)| n < 2) {
        return results;
    }
    let mut out = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        let Some(k) = key(&r) else {
            out.push(r);
            continue;
        };
        match groups.get(&k) {
            Some(&(first, n)) if n >= 2 => {
                if i == first {
                    let (dir, cause) = k;
                    let error =
                        format!("{dir}: {n} entries failed: {cause} (the first: {})", r.path);
                    let dir_bytes = r.path_bytes.as_ref().and_then(|b| {
                        let cut = b.as_bytes().iter().rposition(|&c| c == b'/')?;
                        Some(RawPath::from_bytes(b.as_bytes()[..cut].to_vec()))
                            .filter(|d| d.to_str().is_none())
                    });
                    out.push(EntryResult {
                        path: dir,
                        path_bytes: dir_bytes,
                        error: Some(error),
                        ..EntryResult::failed(Path::new(""), String::new())
                    });
                }
            }
            _ => out.push(r),
        }
    }
    out
}
