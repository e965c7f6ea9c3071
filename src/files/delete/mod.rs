//! `--delete`: removing what the source lacks from the pushed directories
//! of DEST, on the target, once every file of the push is in place.
//!
//! The directories swept are the plan's `Dir` entries and, when a source
//! was a contents copy (`src/`), DEST itself ([`DeleteSpec::contents`]).
//! In each, a name the plan does not have is deleted unless the push's
//! filter rules exclude it (rsync's default: excluded names are
//! protected), or the controller could not read that part of the source
//! ([`DeleteSpec::incomplete`]: nothing at or beneath such a directory is
//! deleted). A directory to delete is emptied first, deepest entries
//! first, with the same rules applied to everything in it; one that keeps
//! a protected entry stays.
//!
//! Never outside DEST, never through a symlink: every directory is opened
//! beneath the push's [`Root`] with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! (or one `O_NOFOLLOW` component at a time), and each entry is removed
//! with `unlinkat` on its parent's handle — a symlink is removed as a
//! link, its target untouched, and a directory swapped for a symlink
//! meanwhile makes that removal fail rather than follow it.
//!
//! All entries to delete are listed first, so `--max-delete N` can refuse
//! the lot before anything goes, and a dry run reports the same list.
//!
//! Here: what to sweep and the run as a whole; the listing and the
//! removals in `sweep`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, OFlags};
use rustix::io::Errno;

use super::RawPath;
use super::filter::Filter;
use super::outcome::{EntryKind, EntryResult, Status};
use super::place::{Root, describe, show};
use super::spec::{PlanEntry, PushPlan};

pub use super::spec::DeleteSpec;

mod sweep;

use sweep::{Scan, remove_all};

/// An entry to delete: where it is beneath the root, and what it is.
struct Doomed {
    rel: PathBuf,
    kind: EntryKind,
}

/// A directory to sweep: its path beneath the root, and its path from the
/// transfer root (for the filter rules and the plan's names).
struct Swept {
    target: PathBuf,
    source: Vec<u8>,
}

/// What the source has, gathered from a push's batches as they come:
/// every name (for `--delete` to keep), and the directories to sweep.
/// (The one part of a push that grows with the number of entries, and
/// only with `--delete`.)
#[derive(Debug, Default)]
pub struct Seen {
    names: HashSet<Vec<u8>>,
    dirs: Vec<RawPath>,
}

impl Seen {
    /// Notes a batch's entries.
    pub fn add(&mut self, entries: &[PlanEntry]) {
        for e in entries {
            let rel = match e {
                PlanEntry::Dir { rel, .. } => {
                    self.dirs.push(rel.clone());
                    rel
                }
                PlanEntry::File { rel, .. }
                | PlanEntry::Symlink { rel, .. }
                | PlanEntry::HardLink { rel, .. }
                | PlanEntry::Special { rel, .. } => rel,
            };
            self.names.insert(rel.as_bytes().to_vec());
        }
    }
}

/// Runs `--delete` for `plan` after its files are in place; `seen` holds
/// its entries' names. `target_rel` maps a plan `rel` to the path beneath
/// `root` where it landed. Returns one result per entry deleted (or, in a
/// dry run, to be deleted), and failures.
pub async fn after_push(
    plan: &PushPlan,
    root: &Arc<Root>,
    target_rel: &(dyn Fn(&RawPath) -> PathBuf + Sync),
    cancel: &AtomicBool,
    seen: &mut Seen,
) -> Vec<EntryResult> {
    let spec = &plan.delete;
    if !spec.enabled {
        return Vec::new();
    }
    let dest = plan.dest.as_path();
    let nothing = |why: String| {
        vec![EntryResult::failed(
            dest,
            format!("{}: {why}: nothing deleted (--delete)", show(dest)),
        )]
    };
    if cancel.load(Ordering::SeqCst) {
        return nothing("push cancelled".into());
    }
    let filter = match plan.filter.compile() {
        Ok(f) => Arc::new(f),
        Err(e) => return nothing(e.to_string()),
    };
    // The names seen, and those the controller kept out of the plan.
    let mut kept: HashSet<Vec<u8>> = std::mem::take(&mut seen.names);
    kept.extend(spec.keep.iter().map(|k| k.as_bytes().to_vec()));
    let swept = to_sweep(spec, seen, target_rel);
    let (doomed, mut results) = match list_doomed(root, filter, kept, swept).await {
        Ok(l) => l,
        Err(e) => return nothing(format!("internal error listing entries: {e}")),
    };
    if let Some(max) = spec.max
        && doomed.len() as u64 > max
    {
        results.push(EntryResult::failed(
            dest,
            format!(
                "{}: --delete would remove {} entries; --max-delete {max} stopped it: nothing deleted",
                show(dest),
                doomed.len()
            ),
        ));
        return results;
    }
    if plan.dry_run {
        results.extend(
            doomed
                .iter()
                .map(|d| EntryResult::done(&root.path().join(&d.rel), d.kind, Status::Deleted)),
        );
        return results;
    }
    // The last moment an interrupt can stop it: after this, entries go.
    if cancel.load(Ordering::SeqCst) {
        results.extend(nothing("push cancelled".into()));
        return results;
    }
    let r = root.clone();
    match tokio::task::spawn_blocking(move || remove_all(&r, doomed)).await {
        Ok(done) => results.extend(done),
        Err(e) => results.extend(nothing(format!("internal error deleting: {e}"))),
    }
    results
}

/// What the swept directories hold that the source does not (nor the
/// filter protects), listed on a blocking thread; and the failures to
/// read them.
async fn list_doomed(
    root: &Arc<Root>,
    filter: Arc<Filter>,
    kept: HashSet<Vec<u8>>,
    swept: Vec<Swept>,
) -> Result<(Vec<Doomed>, Vec<EntryResult>), tokio::task::JoinError> {
    let r = root.clone();
    tokio::task::spawn_blocking(move || {
        let mut scan = Scan {
            root: &r,
            filter: &filter,
            kept: &kept,
            doomed: Vec::new(),
            failed: Vec::new(),
        };
        for s in &swept {
            scan.sweep(s);
        }
        (scan.doomed, scan.failed)
    })
    .await
}

/// The directories `--delete` sweeps: DEST itself for a contents copy,
/// and every directory of the plan — none at or beneath a directory the
/// walk could not read whole.
fn to_sweep(
    spec: &DeleteSpec,
    seen: &Seen,
    target_rel: &(dyn Fn(&RawPath) -> PathBuf + Sync),
) -> Vec<Swept> {
    let mut swept = Vec::new();
    if spec.contents {
        let top = target_rel(&RawPath::default());
        // Only when the entries land in DEST itself (a contents copy
        // always does): the root is then DEST, never its parent.
        if top.as_os_str().is_empty() {
            swept.push(Swept {
                target: top,
                source: Vec::new(),
            });
        }
    }
    for rel in &seen.dirs {
        swept.push(Swept {
            target: target_rel(rel),
            source: rel.as_bytes().to_vec(),
        });
    }
    swept.retain(|s| {
        !spec
            .incomplete
            .iter()
            .any(|i| beneath(&s.source, i.as_bytes()))
    });
    swept
}

/// Whether `rel` is `dir` or beneath it (everything is beneath `""`).
fn beneath(rel: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || rel == dir
        || (rel.len() > dir.len() && rel.starts_with(dir) && rel[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_is_by_component() {
        assert!(beneath(b"a/b", b"a"));
        assert!(beneath(b"a", b"a"));
        assert!(!beneath(b"ab", b"a"));
        assert!(beneath(b"x", b""));
    }
}
