//! The walk of a push's sources (or a pull's, on the target): what to
//! send, as plan entries, and what to register with the FileService.
//!
//! Names are taken as bytes, exactly as the file system has them. Entries
//! are stat'ed through their directory's handle (`fstatat`), sorted by
//! name, filtered (`--exclude`...: an excluded directory is not walked);
//! what cannot be read is noted and the walk goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::filter::Filter;
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
    pub fn register(&self, fs: &FileService) -> Result<(), String> {
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

/// Walks the sources into a plan. Names are taken as bytes, exactly as
/// the file system has them (they need not be UTF-8).
pub fn collect_sources(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    recursive: bool,
) -> Result<Sources, String> {
    collect_sources_with(
        srcs,
        &WalkOptions {
            recursive,
            ..Default::default()
        },
    )
}

/// [`collect_sources`] with every walk option.
pub fn collect_sources_with(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    opts: &WalkOptions,
) -> Result<Sources, String> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut out = Sources {
        into_dir: srcs.len() > 1,
        filter: opts.filter.clone(),
        ..Default::default()
    };
    // Each source's own name at the top of DEST: two sources of one name
    // (`a/x b/x`) would land on each other, so the later is left out and
    // said (rsync keeps the first too).
    let mut tops: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    for src in srcs {
        let given = Path::new(src);
        let src = show(given);
        let bytes = given.as_os_str().as_bytes();
        let md = std::fs::symlink_metadata(given).map_err(|e| format!("{src}: {e}"))?;
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
        if md.file_type().is_symlink() {
            use std::os::unix::fs::MetadataExt;
            let target = std::fs::read_link(given).map_err(|e| format!("{src}: {e}"))?;
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
            let abs = std::fs::canonicalize(given).map_err(|e| format!("{src}: {e}"))?;
            out.files.push(abs.clone());
            out.file(abs, top, &md, opts);
        } else if md.is_dir() {
            if !opts.recursive {
                return Err(format!("{src}: is a directory (use -r to copy it)"));
            }
            let abs = std::fs::canonicalize(given).map_err(|e| format!("{src}: {e}"))?;
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
            walk(&abs, &top, opts, &mut out);
        } else {
            special_entry(given, top, &md, opts, &mut out);
        }
    }
    Ok(out)
}

/// Adds the entries beneath directory `dir` (at `rel`) to `out`. What
/// cannot be read is noted in `out.unread`, and its directory marked
/// incomplete (so `--delete` spares it on the target); the walk goes on.
fn walk(dir: &Path, rel: &RawPath, opts: &WalkOptions, out: &mut Sources) {
    use std::os::unix::fs::MetadataExt;
    let unread = |out: &mut Sources, path: &Path, what: &str, e: std::io::Error| {
        out.unread
            .push(format!("{}: cannot {what}: {e}", show(path)));
        if out.incomplete.last() != Some(rel) {
            out.incomplete.push(rel.clone());
        }
    };
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                match e {
                    Ok(e) => names.push(e),
                    Err(e) => {
                        unread(out, dir, "read directory", e);
                        break;
                    }
                }
            }
        }
        Err(e) => unread(out, dir, "read directory", e),
    }
    // Cached: a key per comparison was a million allocations for
    // 100,000 files.
    names.sort_by_cached_key(|e| e.file_name());
    for entry in names {
        let path = entry.path();
        let child_rel = join_rel(rel.as_bytes(), &entry.file_name());
        // Through the directory handle (fstatat), not the full path: a
        // third of the walk went to resolving paths again and again.
        let md = match entry.metadata() {
            Ok(md) => md,
            Err(e) => {
                unread(out, &path, "read metadata", e);
                continue;
            }
        };
        let ft = md.file_type();
        // An excluded directory is not walked.
        if opts.filter.excluded(child_rel.as_bytes(), ft.is_dir()) {
            continue;
        }
        if ft.is_symlink() {
            let target = match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e) => {
                    unread(out, &path, "read symlink", e);
                    continue;
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
            walk(&path, &child_rel, opts, out);
        } else {
            special_entry(&path, child_rel, &md, opts, out);
        }
    }
}
