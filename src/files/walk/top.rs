//! The sources themselves, as given: what each is, the contents copy's
//! root, what to register, and the walk's top level in order. Apart: the
//! only part of the walk that refuses (a missing source, a directory
//! without `-r`) rather than noting and going on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::entry::{dir_entry, special_entry, symlink_entry, xattrs_of};
use super::{Sources, WalkError, WalkOptions, join_rel, show};
use crate::files::RawPath;
use crate::files::plan::PlanEntry;

/// What the sources' top level holds, in order: entries, and directories
/// still to descend into.
#[derive(Debug, Clone)]
pub(super) enum Top {
    Entry(PlanEntry),
    Descend(PathBuf, RawPath),
}

/// The sources themselves: what they are, the contents copy's root, what
/// to register; and the top level of the walk, in order.
pub(super) fn top_level(
    srcs: &[impl AsRef<std::ffi::OsStr>],
    opts: &WalkOptions,
) -> Result<(Sources, Vec<Top>), WalkError> {
    let mut out = Sources {
        into_dir: srcs.len() > 1,
        filter: opts.filter.clone(),
        ..Default::default()
    };
    let mut tops_out = Vec::new();
    // Each source's own name at the top of DEST: two sources of one name
    // (`a/x b/x`) would land on each other, so the later is left out and
    // said (rsync keeps the first too).
    let mut tops: HashSet<Vec<u8>> = HashSet::new();
    for src in srcs {
        top_source(Path::new(src), opts, &mut out, &mut tops, &mut tops_out)?;
    }
    Ok((out, tops_out))
}

/// One source, `given`: its entry (or its directory's, and the directory
/// to descend into) appended to `tops_out`, unless another source took
/// its name (`names`) or the filter rules exclude it.
fn top_source(
    given: &Path,
    opts: &WalkOptions,
    out: &mut Sources,
    names: &mut HashSet<Vec<u8>>,
    tops_out: &mut Vec<Top>,
) -> Result<(), WalkError> {
    use std::os::unix::ffi::OsStrExt;
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
    let top = join_rel(b"", &top_name(given));
    if !contents && !names.insert(top.as_bytes().to_vec()) {
        out.unread.push(format!(
            "{src}: another source has the same name ({top}); this one is left out"
        ));
        return Ok(());
    }
    // Filter rules apply to a source's own name too, as in rsync (a
    // contents copy has none: its root is the transfer root).
    if !contents && opts.filter.excluded(top.as_bytes(), md.is_dir()) {
        return Ok(());
    }
    let before = out.entries.len();
    let canonical = |given: &Path| {
        std::fs::canonicalize(given).map_err(|source| WalkError::Source {
            src: src.clone(),
            source,
        })
    };
    if md.file_type().is_symlink() {
        let target = std::fs::read_link(given).map_err(|source| WalkError::Source {
            src: src.clone(),
            source,
        })?;
        let xattrs = xattrs_of(given, opts, out);
        out.entries
            .push(symlink_entry(top, target, &md, opts, xattrs));
    } else if md.is_file() {
        let abs = canonical(given)?;
        out.files.push(abs.clone());
        out.file(abs, top, &md, opts);
    } else if md.is_dir() {
        if !opts.recursive {
            return Err(WalkError::IsDir { src });
        }
        let abs = canonical(given)?;
        let top = top_dir(given, &md, contents, top, opts, out);
        out.prefixes.push((abs.clone(), top.clone()));
        tops_out.extend(out.entries.drain(before..).map(Top::Entry));
        tops_out.push(Top::Descend(abs, top));
        return Ok(());
    } else {
        special_entry(given, top, &md, opts, out);
    }
    tops_out.extend(out.entries.drain(before..).map(Top::Entry));
    Ok(())
}

/// The name a source has at the top of DEST: its own, or (`.`, `..`, a
/// trailing `/`) its canonical directory's; `root` for `/`.
fn top_name(given: &Path) -> std::ffi::OsString {
    use std::ffi::OsStr;
    given
        .file_name()
        .filter(|n| !n.is_empty() && *n != OsStr::new(".") && *n != OsStr::new(".."))
        .map(OsStr::to_os_string)
        .or_else(|| {
            std::fs::canonicalize(given)
                .ok()
                .and_then(|c| c.file_name().map(OsStr::to_os_string))
        })
        .unwrap_or_else(|| "root".into())
}

/// A source directory `given` named `top`: a contents copy (`src/`) is
/// the transfer root, its directory DEST's metadata; any other is an
/// entry of its own. Returns its path relative to the transfer root.
fn top_dir(
    given: &Path,
    md: &std::fs::Metadata,
    contents: bool,
    top: RawPath,
    opts: &WalkOptions,
    out: &mut Sources,
) -> RawPath {
    if contents {
        out.into_dir = true;
        out.contents = true;
        if out.root.is_none() {
            let xattrs = xattrs_of(given, opts, out);
            out.root = Some(dir_entry(RawPath::default(), md, opts, xattrs));
        }
        RawPath::default()
    } else {
        let xattrs = xattrs_of(given, opts, out);
        out.entries.push(dir_entry(top.clone(), md, opts, xattrs));
        top
    }
}
