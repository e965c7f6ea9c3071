//! Which of a batch's files to send (step 3, first half): each
//! destination looked at, the quick check's verdict, `-c`'s digests; the
//! files kept get their results here, and a dry run its report.

use super::*;

/// A file of the batch to judge: its place, source, size and stamp.
type Wanted<'e> = (Place, &'e RawPath, u64, Option<&'e Stamp>);

/// What a look at one destination gave.
type Seen = Result<Option<Found>, rustix::io::Errno>;

impl Batch<'_> {
    /// Step 3, first half: the batch's files that the destination does not
    /// already hold, by the quick check (or `-c`'s digests); the others get
    /// their results here (unchanged, or their metadata set). Fails only
    /// when the destination could not be looked at at all.
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
}
