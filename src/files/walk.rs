//! The walk of a push's sources (or a pull's, on the target): what to
//! send, as plan entries, and what to register with the FileService.
//!
//! Names are taken as bytes, exactly as the file system has them. Entries
//! are stat'ed through their directory's handle (`fstatat`), sorted by
//! name, filtered (`--exclude`...: an excluded directory is not walked);
//! what cannot be read is noted and the walk goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::filter::{Filter, FilterError};
use super::plan::{Owner, PlanEntry, SpecialKind, Stamp};
use super::{FileService, RawPath};

/// A source entry that is not copied: a FIFO, a socket or a device node
/// (as `rsync -a` without `--specials`/`--devices`, and it too exits 0).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The source path.
    pub path: PathBuf,
    /// Its path relative to the transfer root.
    pub rel: RawPath,
    /// What it is: "fifo", "socket", "character device", "block device".
    pub kind: &'static str,
}

/// What a special file is.
fn special_kind(ft: std::fs::FileType) -> Option<SpecialKind> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some(SpecialKind::Fifo)
    } else if ft.is_socket() {
        Some(SpecialKind::Socket)
    } else if ft.is_char_device() {
        Some(SpecialKind::CharDevice)
    } else if ft.is_block_device() {
        Some(SpecialKind::BlockDevice)
    } else {
        None
    }
}

/// What the walk takes besides regular files, directories and symlinks,
/// and what it leaves out.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Descend into directories.
    pub recursive: bool,
    /// Take FIFOs and sockets.
    pub specials: bool,
    /// Take device nodes.
    pub devices: bool,
    /// Send later names of a multiply linked file as hard links.
    pub hard_links: bool,
    /// Record the owner of directories, symlinks and special files.
    pub owner: bool,
    /// Record extended attributes and ACLs (`-X`, `-A`).
    pub xattrs: super::xattr::XattrSel,
    /// Entries left out (`--exclude`...); an excluded directory is not
    /// walked.
    pub filter: Arc<Filter>,
}

impl WalkOptions {
    fn takes(&self, kind: SpecialKind) -> bool {
        match kind {
            SpecialKind::Fifo | SpecialKind::Socket => self.specials,
            SpecialKind::CharDevice | SpecialKind::BlockDevice => self.devices,
        }
    }
}

/// The extended attributes of `path` itself that the walk records (none
/// without `-X`/`-A`); one that cannot be read is noted in `out.unread`
/// (the push goes on without them and fails at the end).
fn xattrs_of(path: &Path, opts: &WalkOptions, out: &mut Sources) -> super::xattr::Xattrs {
    if !opts.xattrs.any() {
        return Vec::new();
    }
    super::xattr::read_path(path, opts.xattrs).unwrap_or_else(|e| {
        out.unread.push(format!(
            "{}: cannot read extended attributes: {e}",
            show(path)
        ));
        Vec::new()
    })
}

/// The plan entry for special file `md` at `rel`, or its note as skipped.
fn special_entry(
    path: &Path,
    rel: RawPath,
    md: &std::fs::Metadata,
    opts: &WalkOptions,
    out: &mut Sources,
) {
    use std::os::unix::fs::MetadataExt;
    match special_kind(md.file_type()) {
        Some(kind) if opts.takes(kind) => {
            let xattrs = xattrs_of(path, opts, out);
            out.entries.push(PlanEntry::Special {
                rel,
                kind,
                mode: md.mode() & 0o7777,
                rdev: md.rdev(),
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                owner: opts.owner.then(|| Owner::of(md)),
                xattrs,
            })
        }
        kind => out.skipped.push(Skipped {
            path: path.to_path_buf(),
            rel,
            kind: kind.map_or("special file", SpecialKind::name),
        }),
    }
}

/// The controller-side description of what to push.
#[derive(Debug, Default)]
pub struct Sources {
    /// Entries in order.
    pub entries: Vec<PlanEntry>,
    /// Exact paths to register.
    pub files: Vec<PathBuf>,
    /// Prefixes to register, each with its path relative to the transfer
    /// root (what the filter rules are written for).
    pub prefixes: Vec<(PathBuf, RawPath)>,
    /// The filter rules the walk applied (the FileService refuses what
    /// they exclude).
    pub filter: Arc<Filter>,
    /// Parts of the sources that could not be read: what and why. The
    /// push goes on without them and fails at the end.
    pub unread: Vec<String>,
    /// Directories (relative to the transfer root) not read completely:
    /// `--delete` deletes nothing at or beneath them.
    pub incomplete: Vec<RawPath>,
    /// A source was a contents copy (`src/`).
    pub contents: bool,
    /// The first contents copy's own directory (a `Dir` entry with an
    /// empty `rel`), for DEST's metadata.
    pub root: Option<PlanEntry>,
    /// Bytes in regular files.
    pub total_bytes: u64,
    /// Whether the destination must be a directory.
    pub into_dir: bool,
    /// Special files (FIFOs, sockets, device nodes) not copied.
    pub skipped: Vec<Skipped>,
    /// With hard links kept: (device, inode) of each multiply linked file
    /// seen → the `rel` of its first name.
    links: std::collections::HashMap<(u64, u64), RawPath>,
}

impl Sources {
    /// The entry for regular file `md` at `src`/`rel`: the file itself, or
    /// — hard links kept and its inode already seen — a link to it.
    fn file(&mut self, src: PathBuf, rel: RawPath, md: &std::fs::Metadata, opts: &WalkOptions) {
        use std::os::unix::fs::MetadataExt;
        if opts.hard_links && md.nlink() > 1 {
            match self.links.entry((md.dev(), md.ino())) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    self.entries.push(PlanEntry::HardLink {
                        rel,
                        to: first.get().clone(),
                    });
                    return;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(rel.clone());
                }
            }
        }
        self.total_bytes += md.len();
        let xattrs = opts.xattrs.any().then(|| xattrs_of(&src, opts, self));
        self.entries.push(PlanEntry::File {
            src: src.into(),
            rel,
            size: md.len(),
            stamp: Some(Stamp {
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                mode: md.mode() & 0o7777,
                owner: opts.owner.then(|| Owner::of(md)),
                xattrs,
            }),
        });
    }
}

impl Sources {
    /// Registers every source file and directory with `fs`.
    pub fn register(&self, fs: &FileService) -> Result<(), super::registry::OpenError> {
        for f in &self.files {
            fs.register(f)?;
        }
        for (p, top) in &self.prefixes {
            fs.register_prefix_filtered(p, self.filter.clone(), top.as_bytes())?;
        }
        Ok(())
    }
}

/// `base/name` as a relative path of bytes (`name` alone at the top).
fn join_rel(base: &[u8], name: &std::ffi::OsStr) -> RawPath {
    use std::os::unix::ffi::OsStrExt;
    let mut rel = Vec::with_capacity(base.len() + 1 + name.len());
    if !base.is_empty() {
        rel.extend_from_slice(base);
        rel.push(b'/');
    }
    rel.extend_from_slice(name.as_bytes());
    RawPath::from_bytes(rel)
}

/// A path for messages, invalid UTF-8 shown as `\xNN`.
fn show(p: &Path) -> String {
    crate::files::place::show(p)
}

/// Why the sources could not be walked (their top level: what lies
/// beneath is reported per entry, in [`Sources::unread`]).
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A source could not be looked at.
    #[error("{src}: {source}")]
    Source {
        /// The source, as given.
        src: String,
        /// Why.
        source: std::io::Error,
    },
    /// A directory given without `-r`.
    #[error("{src}: is a directory (use -r to copy it)")]
    IsDir {
        /// The source, as given.
        src: String,
    },
    /// The filter rules are unusable.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// Walks the sources into a plan. Names are taken as bytes, exactly as
/// the file system has them (they need not be UTF-8).
pub fn collect_sources(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    recursive: bool,
) -> Result<Sources, WalkError> {
    collect_sources_with(
        srcs,
        &WalkOptions {
            recursive,
            ..Default::default()
        },
    )
}

/// [`collect_sources`] with every walk option: the whole walk at once
/// (a pull's offer, the library's push). A push of many files walks
/// lazily instead ([`Walker`]).
pub fn collect_sources_with(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    opts: &WalkOptions,
) -> Result<Sources, WalkError> {
    let mut w = Walker::new(srcs, opts)?;
    let mut entries = Vec::new();
    loop {
        let batch = w.next_batch(usize::MAX, usize::MAX);
        if batch.is_empty() {
            break;
        }
        entries.extend(batch);
    }
    let mut out = w.finish();
    out.entries = entries;
    Ok(out)
}

/// Most entries in one batch of a lazy walk (what a push sends at once).
pub const BATCH_ENTRIES: usize = 4096;

/// Most bytes (names, link targets, attributes: roughly their encoded
/// size) in one batch of a lazy walk.
pub const BATCH_BYTES: usize = 4 << 20;

/// What the sources' top level holds, in order: entries, and directories
/// still to descend into.
#[derive(Debug, Clone)]
enum Top {
    Entry(PlanEntry),
    Descend(PathBuf, RawPath),
}

/// A directory being walked: its remaining entries, sorted by name.
struct Frame {
    rel: RawPath,
    names: std::vec::IntoIter<std::fs::DirEntry>,
}

/// A lazy walk: the sources' top level is looked at when it is made (a
/// missing source, or a directory without `-r`, is refused up front);
/// directories below are read one at a time as batches are asked for, so
/// memory holds one directory listing per level, not the whole tree.
/// Entries come in the order [`collect_sources_with`] lists them: each
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
    let x = |xs: &super::xattr::Xattrs| {
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

/// The sources themselves: what they are, the contents copy's root, what
/// to register; and the top level of the walk, in order.
fn top_level(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    opts: &WalkOptions,
) -> Result<(Sources, Vec<Top>), WalkError> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut out = Sources {
        into_dir: srcs.len() > 1,
        filter: opts.filter.clone(),
        ..Default::default()
    };
    let mut tops_out = Vec::new();
    // Each source's own name at the top of DEST: two sources of one name
    // (`a/x b/x`) would land on each other, so the later is left out and
    // said (rsync keeps the first too).
    let mut tops: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    for src in srcs {
        let given = Path::new(src);
        let src = show(given);
        let bytes = given.as_os_str().as_bytes();
        let md = std::fs::symlink_metadata(given).map_err(|source| WalkError::Source {
            src: src.clone(),
            source,
        })?;
        // `dir/` and `dir/.` (and `.` itself) mean the directory's
        // contents, as in rsync and `cp -r dir/. dest`.
        let contents =
            (bytes.ends_with(b"/") || bytes == b"." || bytes.ends_with(b"/.")) && md.is_dir();
        let name: std::ffi::OsString = given
            .file_name()
            .filter(|n| !n.is_empty() && *n != OsStr::new(".") && *n != OsStr::new(".."))
            .map(OsStr::to_os_string)
            .or_else(|| {
                std::fs::canonicalize(given)
                    .ok()
                    .and_then(|c| c.file_name().map(OsStr::to_os_string))
            })
            .unwrap_or_else(|| "root".into());
        let top = join_rel(b"", &name);
        if !contents && !tops.insert(top.as_bytes().to_vec()) {
            out.unread.push(format!(
                "{src}: another source has the same name ({top}); this one is left out"
            ));
            continue;
        }
        // Filter rules apply to a source's own name too, as in rsync (a
        // contents copy has none: its root is the transfer root).
        if !contents && opts.filter.excluded(top.as_bytes(), md.is_dir()) {
            continue;
        }
        let before = out.entries.len();
        if md.file_type().is_symlink() {
            use std::os::unix::fs::MetadataExt;
            let target = std::fs::read_link(given).map_err(|source| WalkError::Source {
                src: src.clone(),
                source,
            })?;
            let xattrs = xattrs_of(given, opts, &mut out);
            out.entries.push(PlanEntry::Symlink {
                rel: top,
                target: target.into(),
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                owner: opts.owner.then(|| Owner::of(&md)),
                xattrs,
            });
        } else if md.is_file() {
            let abs = std::fs::canonicalize(given).map_err(|source| WalkError::Source {
                src: src.clone(),
                source,
            })?;
            out.files.push(abs.clone());
            out.file(abs, top, &md, opts);
        } else if md.is_dir() {
            if !opts.recursive {
                return Err(WalkError::IsDir { src });
            }
            let abs = std::fs::canonicalize(given).map_err(|source| WalkError::Source {
                src: src.clone(),
                source,
            })?;
            let top = if contents {
                use std::os::unix::fs::MetadataExt;
                out.into_dir = true;
                out.contents = true;
                if out.root.is_none() {
                    let xattrs = xattrs_of(given, opts, &mut out);
                    out.root = Some(PlanEntry::Dir {
                        rel: RawPath::default(),
                        mode: md.mode() & 0o7777,
                        mtime_sec: md.mtime(),
                        mtime_nsec: md.mtime_nsec() as u32,
                        owner: opts.owner.then(|| Owner::of(&md)),
                        xattrs,
                    });
                }
                RawPath::default()
            } else {
                use std::os::unix::fs::MetadataExt;
                let xattrs = xattrs_of(given, opts, &mut out);
                out.entries.push(PlanEntry::Dir {
                    rel: top.clone(),
                    mode: md.mode() & 0o7777,
                    mtime_sec: md.mtime(),
                    mtime_nsec: md.mtime_nsec() as u32,
                    owner: opts.owner.then(|| Owner::of(&md)),
                    xattrs,
                });
                top
            };
            out.prefixes.push((abs.clone(), top.clone()));
            tops_out.extend(out.entries.drain(before..).map(Top::Entry));
            tops_out.push(Top::Descend(abs, top));
            continue;
        } else {
            special_entry(given, top, &md, opts, &mut out);
        }
        tops_out.extend(out.entries.drain(before..).map(Top::Entry));
    }
    Ok((out, tops_out))
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

/// Notes that `path` (in directory `rel`) could not be read, and marks
/// the directory incomplete.
fn unread(out: &mut Sources, rel: &RawPath, path: &Path, what: &str, e: std::io::Error) {
    out.unread
        .push(format!("{}: cannot {what}: {e}", show(path)));
    if out.incomplete.last() != Some(rel) {
        out.incomplete.push(rel.clone());
    }
}

/// Adds the entry `entry` of the directory at `rel` to `out`; returns the
/// directory to walk into next, if it is one.
fn visit(
    entry: std::fs::DirEntry,
    rel: &RawPath,
    opts: &WalkOptions,
    out: &mut Sources,
) -> Option<(PathBuf, RawPath)> {
    use std::os::unix::fs::MetadataExt;
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
        out.entries.push(PlanEntry::Symlink {
            rel: child_rel,
            target: target.into(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            owner: opts.owner.then(|| Owner::of(&md)),
            xattrs,
        });
    } else if ft.is_file() {
        out.file(path, child_rel, &md, opts);
    } else if ft.is_dir() {
        let xattrs = xattrs_of(&path, opts, out);
        out.entries.push(PlanEntry::Dir {
            rel: child_rel.clone(),
            mode: md.mode() & 0o7777,
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            owner: opts.owner.then(|| Owner::of(&md)),
            xattrs,
        });
        return Some((path, child_rel));
    } else {
        special_entry(&path, child_rel, &md, opts, out);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
