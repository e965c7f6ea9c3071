//! A push session: the sessions open in this context, one's batches (each
//! through the steps of `batch`) and its end — directory metadata,
//! `--delete`.

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
        let batch = Batch {
            plan,
            root,
            top,
            failed_dirs,
            results: Vec::new(),
        };
        let (results, broke) = batch.run(router, temps, cancel, &entries, dirs, dest).await;
        *broken |= broke;
        results
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
        let rel_of = |rel: &RawPath| -> PathBuf { rel_beneath(top, rel) };
        // `--delete` first, now that every entry is in place (in a dry
        // run, what it would remove): removing an entry changes its
        // directory's mtime, so directories get theirs after it.
        let mut results = crate::files::delete::after_push(plan, root, &rel_of, cancel, seen).await;
        results.extend(dirs_meta(plan, std::mem::take(dirs)));
        let found = dest_existed.then_some(*dest_before).flatten();
        let end = Ending {
            plan,
            root,
            dest_is_root: top.is_none(),
            found,
        };
        let results = end.finish(std::mem::take(failed_dirs), results);
        tracing::debug!("push applied in {:?}", started.elapsed());
        results
    }
}

/// The pushes open in this context, by session number.
#[derive(Clone, Default)]
pub(super) struct Sessions {
    inner: Arc<std::sync::Mutex<SessionMap>>,
}

#[derive(Default)]
struct SessionMap {
    next: u64,
    open: std::collections::HashMap<u64, Arc<tokio::sync::Mutex<Session>>>,
}

/// Pushes open at once in one context (only the parent chain opens them;
/// a bound all the same, as for every table a peer can grow).
const MAX_SESSIONS: usize = 64;

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn open(&self, plan: PushPlan) -> PushOpened {
        let dest = plan.dest.as_path().to_path_buf();
        if self.lock().open.len() >= MAX_SESSIONS {
            return PushOpened {
                session: 0,
                failed: vec![EntryResult::failed(
                    &dest,
                    format!("{}: too many pushes open in this context", show(&dest)),
                )],
            };
        }
        match Session::open(plan) {
            Ok(s) => {
                let mut map = self.lock();
                map.next += 1;
                let id = map.next;
                map.open.insert(id, Arc::new(tokio::sync::Mutex::new(s)));
                PushOpened {
                    session: id,
                    failed: Vec::new(),
                }
            }
            Err(failed) => PushOpened { session: 0, failed },
        }
    }

    pub(super) fn get(&self, id: u64) -> Result<Arc<tokio::sync::Mutex<Session>>, RemoteError> {
        self.lock()
            .open
            .get(&id)
            .cloned()
            .ok_or_else(|| RemoteError::Failed(format!("no push session {id} in this context")))
    }

    pub(super) fn take(&self, id: u64) -> Result<Arc<tokio::sync::Mutex<Session>>, RemoteError> {
        self.lock()
            .open
            .remove(&id)
            .ok_or_else(|| RemoteError::Failed(format!("no push session {id} in this context")))
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
        failed_dirs: FailedDirs,
        mut results: Vec<EntryResult>,
    ) -> Vec<EntryResult> {
        if self.dest_is_root
            && let Some(r) = root_meta(self.plan, self.root, self.found)
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
