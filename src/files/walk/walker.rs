//! [`Walker`]: the lazy walk — directories read one at a time as batches
//! are asked for, so memory holds one listing per level. Apart from the
//! entries it makes: this is the order and the bounds of a push's batches.

use std::path::{Path, PathBuf};

use super::entry::{dir_entry, special_entry, symlink_entry, unread, xattrs_of};
use super::top::{Top, top_level};
use super::{Sources, WalkError, WalkOptions, join_rel};
use crate::files::RawPath;
use crate::files::plan::PlanEntry;

/// A directory being walked: its remaining entries, sorted by name.
struct Frame {
    rel: RawPath,
    names: std::vec::IntoIter<std::fs::DirEntry>,
}

/// A lazy walk: the sources' top level is looked at when it is made (a
/// missing source, or a directory without `-r`, is refused up front);
/// directories below are read one at a time as batches are asked for, so
/// memory holds one directory listing per level, not the whole tree.
/// Entries come in the order [`super::collect_sources_with`] lists them: each
/// directory before what it holds, names sorted, depth first.
pub struct Walker {
    opts: WalkOptions,
    out: Sources,
    tops: std::collections::VecDeque<Top>,
    stack: Vec<Frame>,
}

impl Walker {
    /// Looks at the sources themselves (not yet beneath them).
    pub fn new(
        srcs: &[impl AsRef<std::ffi::OsStr>],
        opts: &WalkOptions,
    ) -> Result<Walker, WalkError> {
        let (out, tops) = top_level(srcs, opts)?;
        Ok(Walker {
            opts: opts.clone(),
            out,
            tops: tops.into(),
            stack: Vec::new(),
        })
    }

    /// What the walk knows before descending: whether DEST must be a
    /// directory, the contents copy's root, what to register.
    pub fn sources(&self) -> &Sources {
        &self.out
    }

    /// The next entries, at most `max_entries` of them and about
    /// `max_bytes`; empty when the walk is over.
    pub fn next_batch(&mut self, max_entries: usize, max_bytes: usize) -> Vec<PlanEntry> {
        let mut bytes = 0usize;
        let mut batch = Vec::new();
        while batch.len() < max_entries && bytes < max_bytes {
            let before = self.out.entries.len();
            if !self.step() {
                break;
            }
            for e in self.out.entries.drain(before..) {
                bytes += entry_bytes(&e);
                batch.push(e);
            }
        }
        batch
    }

    /// Takes one step: an entry of the current directory, or the next
    /// top-level item. False when the walk is over.
    fn step(&mut self) -> bool {
        if let Some(frame) = self.stack.last_mut() {
            match frame.names.next() {
                Some(entry) => {
                    let rel = frame.rel.clone();
                    if let Some((path, child_rel)) = visit(entry, &rel, &self.opts, &mut self.out) {
                        self.descend(&path, child_rel);
                    }
                }
                None => {
                    self.stack.pop();
                }
            }
            return true;
        }
        match self.tops.pop_front() {
            Some(Top::Entry(e)) => self.out.entries.push(e),
            Some(Top::Descend(dir, rel)) => self.descend(&dir, rel),
            None => return false,
        }
        true
    }

    /// Reads directory `dir` (at `rel`) and walks into it next.
    fn descend(&mut self, dir: &Path, rel: RawPath) {
        let names = read_sorted(dir, &rel, &mut self.out);
        self.stack.push(Frame {
            rel,
            names: names.into_iter(),
        });
    }

    /// What the walk learnt on its way (entries excluded): what could not
    /// be read, what was skipped, the bytes in files.
    pub fn finish(self) -> Sources {
        self.out
    }

    /// Bytes in the regular files walked so far.
    pub fn total_bytes(&self) -> u64 {
        self.out.total_bytes
    }
}

impl Walker {
    /// A walk of the same sources, from the start (for another target):
    /// the top level is not looked at again.
    pub fn restart(&self) -> Walker {
        Walker {
            opts: self.opts.clone(),
            out: Sources {
                entries: Vec::new(),
                files: self.out.files.clone(),
                prefixes: self.out.prefixes.clone(),
                filter: self.out.filter.clone(),
                unread: self.out.unread.clone(),
                incomplete: self.out.incomplete.clone(),
                contents: self.out.contents,
                root: self.out.root.clone(),
                total_bytes: self.out.total_bytes,
                into_dir: self.out.into_dir,
                skipped: self.out.skipped.clone(),
                links: self.out.links.clone(),
            },
            tops: self.tops.clone(),
            stack: Vec::new(),
        }
    }
}

/// About the size of an entry on the wire.
fn entry_bytes(e: &PlanEntry) -> usize {
    let x = |xs: &crate::files::xattr::Xattrs| {
        xs.iter()
            .map(|a| a.name.as_bytes().len() + a.value.len())
            .sum()
    };
    64 + match e {
        PlanEntry::Dir { rel, xattrs, .. } => rel.as_bytes().len() + x(xattrs),
        PlanEntry::File {
            src, rel, stamp, ..
        } => {
            src.as_bytes().len()
                + rel.as_bytes().len()
                + stamp.as_ref().and_then(|s| s.xattrs.as_ref()).map_or(0, x)
        }
        PlanEntry::Symlink {
            rel,
            target,
            xattrs,
            ..
        } => rel.as_bytes().len() + target.as_bytes().len() + x(xattrs),
        PlanEntry::HardLink { rel, to } => rel.as_bytes().len() + to.as_bytes().len(),
        PlanEntry::Special { rel, xattrs, .. } => rel.as_bytes().len() + x(xattrs),
    }
}

/// The entries of directory `dir` (at `rel`), sorted by name. What cannot
/// be read is noted in `out.unread`, and the directory marked incomplete
/// (so `--delete` spares it on the target).
fn read_sorted(dir: &Path, rel: &RawPath, out: &mut Sources) -> Vec<std::fs::DirEntry> {
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                match e {
                    Ok(e) => names.push(e),
                    Err(e) => {
                        unread(out, rel, dir, "read directory", e);
                        break;
                    }
                }
            }
        }
        Err(e) => unread(out, rel, dir, "read directory", e),
    }
    // Cached: a key per comparison was a million allocations for
    // 100,000 files.
    names.sort_by_cached_key(|e| e.file_name());
    names
}

/// Adds the entry `entry` of the directory at `rel` to `out`; returns the
/// directory to walk into next, if it is one.
fn visit(
    entry: std::fs::DirEntry,
    rel: &RawPath,
    opts: &WalkOptions,
    out: &mut Sources,
) -> Option<(PathBuf, RawPath)> {
    let path = entry.path();
    let child_rel = join_rel(rel.as_bytes(), &entry.file_name());
    // Through the directory handle (fstatat), not the full path: a third
    // of the walk went to resolving paths again and again.
    let md = match entry.metadata() {
        Ok(md) => md,
        Err(e) => {
            unread(out, rel, &path, "read metadata", e);
            return None;
        }
    };
    let ft = md.file_type();
    // An excluded directory is not walked.
    if opts.filter.excluded(child_rel.as_bytes(), ft.is_dir()) {
        return None;
    }
    if ft.is_symlink() {
        let target = match std::fs::read_link(&path) {
            Ok(t) => t,
            Err(e) => {
                unread(out, rel, &path, "read symlink", e);
                return None;
            }
        };
        let xattrs = xattrs_of(&path, opts, out);
        out.entries
            .push(symlink_entry(child_rel, target, &md, opts, xattrs));
    } else if ft.is_file() {
        out.file(path, child_rel, &md, opts);
    } else if ft.is_dir() {
        let xattrs = xattrs_of(&path, opts, out);
        out.entries
            .push(dir_entry(child_rel.clone(), &md, opts, xattrs));
        return Some((path, child_rel));
    } else {
        special_entry(&path, child_rel, &md, opts, out);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::walk::collect_sources_with;

    fn rels(entries: &[PlanEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                PlanEntry::Dir { rel, .. }
                | PlanEntry::File { rel, .. }
                | PlanEntry::Symlink { rel, .. }
                | PlanEntry::HardLink { rel, .. }
                | PlanEntry::Special { rel, .. } => rel.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_lazy_walk_yields_the_whole_walk_in_order_in_bounded_batches() {
        let t = tempfile::tempdir().expect("tempdir");
        let src = t.path().join("s");
        for d in ["a/x/y", "b", "c"] {
            std::fs::create_dir_all(src.join(d)).expect("mkdir");
        }
        for (i, f) in ["a/1", "a/x/2", "a/x/y/3", "b/4", "b/5", "top"]
            .iter()
            .enumerate()
        {
            std::fs::write(src.join(f), vec![b'x'; i]).expect("write");
        }
        std::fs::hard_link(src.join("a/1"), src.join("c/1-again")).expect("link");
        let single = t.path().join("single");
        std::fs::write(&single, "one").expect("write");
        let srcs = [src.clone(), single];
        let opts = WalkOptions {
            recursive: true,
            hard_links: true,
            ..Default::default()
        };
        let whole = collect_sources_with(&srcs, &opts).expect("walk");
        let walker = Walker::new(&srcs, &opts).expect("walker");
        for mut w in [walker.restart(), walker] {
            let mut lazy = Vec::new();
            loop {
                let batch = w.next_batch(3, usize::MAX);
                assert!(batch.len() <= 3, "at most 3 entries a batch");
                if batch.is_empty() {
                    break;
                }
                lazy.extend(batch);
            }
            assert_eq!(rels(&lazy), rels(&whole.entries));
            assert_eq!(lazy, whole.entries);
            let end = w.finish();
            assert_eq!(end.total_bytes, whole.total_bytes);
            assert!(end.into_dir);
        }
        // Directories before what they hold; the link after its file.
        let order = rels(&whole.entries);
        let at = |r: &str| order.iter().position(|x| x == r).expect(r);
        assert!(at("s") < at("s/a") && at("s/a") < at("s/a/x") && at("s/a/x") < at("s/a/x/y/3"));
        assert!(at("s/a/1") < at("s/c/1-again"));
        assert!(matches!(
            whole.entries[at("s/c/1-again")],
            PlanEntry::HardLink { .. }
        ));
        // A byte bound cuts batches too.
        let mut w = Walker::new(&srcs, &opts).expect("walker");
        assert_eq!(w.next_batch(usize::MAX, 1).len(), 1);
    }
}
