//! The relay's private spool directory: owner-only, its files without
//! names while used, swept when its relay died without stopping.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::files::meta::FileMeta;
use crate::files::place::Root;

/// The private spool directory and its small-file store.
pub(super) struct Spool {
    pub(super) root: Arc<Root>,
    pub(super) path: PathBuf,
    /// Every small file, appended; and its length.
    pub(super) blob: Mutex<(File, u64)>,
    /// The push plan's batches as they came (encoded), and where each is.
    pub(super) plan: Mutex<(File, Vec<(u64, u64)>)>,
}

impl Spool {
    /// A fresh owner-only directory under the temp directory.
    pub(super) fn create() -> std::io::Result<Spool> {
        let base = std::env::temp_dir();
        sweep_stale(&base);
        let mut attempt = 0u32;
        let path = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "ferrogen-tee-{}-{nanos:08x}{attempt}",
                std::process::id()
            ));
            match rustix::fs::mkdir(&p, rustix::fs::Mode::from_raw_mode(0o700)) {
                Ok(()) => break p,
                Err(rustix::io::Errno::EXIST) if attempt < 100 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let root = Root::open(&path)?;
        // The small-file store and the plan: without names while used.
        let blob = anonymous_in(&root, "small")?;
        let plan = anonymous_in(&root, "plan")?;
        Ok(Spool {
            root,
            path,
            blob: Mutex::new((blob, 0)),
            plan: Mutex::new((plan, Vec::new())),
        })
    }

    /// A fresh read-write file of the spool with no name.
    pub(super) fn anonymous(&self, name: &str) -> std::io::Result<File> {
        anonymous_in(&self.root, name)
    }
}

/// A file created as `name` in `root` and unlinked at once (the directory
/// is ours alone), so it has no name while it is used and its space is
/// freed when its last descriptor closes.
fn anonymous_in(root: &Root, name: &str) -> std::io::Result<File> {
    let fd = rustix::fs::openat(
        root.fd(),
        name,
        rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::from_raw_mode(0o600),
    )?;
    let _ = rustix::fs::unlinkat(root.fd(), name, rustix::fs::AtFlags::empty());
    Ok(File::from(fd))
}

/// Removes the spool directories of relays that died without stopping
/// (SIGKILL, a power cut): their anonymous files went with them, so only
/// the empty directory is left, named after the dead process.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ferrogen-tee-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let mine = {
            use std::os::unix::fs::MetadataExt;
            e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me)
        };
        if mine && !Path::new(&format!("/proc/{pid}")).exists() {
            // Only if empty: anything else in it is not ours to remove.
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Spool {
    /// Removes the directory. Anonymous files leave nothing in it; named
    /// temp files (file systems without `O_TMPFILE`) are removed by
    /// [`TempFiles::remove_all`] first.
    pub(super) fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("relay: could not remove spool {}: {e}", self.path.display())
            }
        }
    }
}

/// Gives the spool file the source's times (on its descriptor).
pub(super) fn stamp(file: &File, meta: &FileMeta) -> std::io::Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime_sec,
            tv_nsec: meta.atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime_sec,
            tv_nsec: meta.mtime_nsec as _,
        },
    };
    rustix::fs::futimens(file, &ts).map_err(Into::into)
}
