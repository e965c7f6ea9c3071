//! The walk of a push's sources (or a pull's, on the target): what to
//! send, as plan entries, and what to register with the FileService.
//!
//! Names are taken as bytes, exactly as the file system has them. Entries
//! are stat'ed through their directory's handle (`fstatat`), sorted by
//! name, filtered (`--exclude`...: an excluded directory is not walked);
//! what cannot be read is noted and the walk goes on.
//!
//! The sources themselves are looked at in `top`, one directory's entries
//! in `entry`, and the lazy walk between them in `walker`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::filter::{Filter, FilterError};
use super::plan::{PlanEntry, SpecialKind};
use super::{FileService, RawPath};

mod entry;
mod top;
mod walker;

pub use walker::Walker;

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
    pub xattrs: crate::files::xattr::XattrSel,
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
