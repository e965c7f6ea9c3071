//! What the FileService may serve, and opening it safely.
//!
//! A trusted context registers exact paths or directory prefixes. A request
//! is first normalised lexically (`.`/`..` collapsed, as Mitogen does), so
//! `..` can never walk out of a prefix on paper. It is then opened so that
//! it cannot walk out on disk either: relative to the prefix's directory
//! with `openat2(RESOLVE_BENEATH)`, which makes the kernel refuse any
//! symlink or `..` that would leave it. Where `openat2` is unavailable, the
//! path is canonicalised and the prefix re-checked on the result instead.
//!
//! Opening uses `O_NONBLOCK` so a registered FIFO cannot block the server,
//! and the result must be a regular file.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Why a path cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not covered by any registration.
    #[error("{path}: path is not registered with the FileService")]
    NotRegistered {
        /// Requested path.
        path: String,
    },
    /// Covered by a prefix lexically, but resolving it leaves the prefix.
    #[error("{path}: resolves outside the registered prefix {prefix}")]
    Escapes {
        /// Requested path.
        path: String,
        /// The prefix it would escape.
        prefix: String,
    },
    /// Not an absolute path, or otherwise unusable.
    #[error("{path}: {why}")]
    BadPath {
        /// Requested path.
        path: String,
        /// Why.
        why: &'static str,
    },
    /// Exists but is not a regular file.
    #[error("{path}: not a regular file")]
    NotRegular {
        /// Requested path.
        path: String,
    },
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// Requested path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Registered paths and prefixes.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    paths: BTreeSet<PathBuf>,
    prefixes: BTreeSet<PathBuf>,
    /// Each prefix's directory, opened (`O_PATH`) at its first use and kept:
    /// a tree push opens thousands of files beneath one prefix, and
    /// reopening the directory for each cost two system calls per file.
    /// Requests then resolve beneath the directory that was at the prefix
    /// path at that first use, even if it is renamed later.
    prefix_dirs: Arc<Mutex<HashMap<PathBuf, Arc<OwnedFd>>>>,
}

/// Collapses `.`, `..` and repeated separators without touching the disk.
/// `None` for relative paths.
pub fn normalize(path: impl AsRef<Path>) -> Option<PathBuf> {
    let p = path.as_ref();
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

/// Paths are bytes (names need not be UTF-8); messages show them with
/// invalid bytes as `\xNN`.
fn show_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    super::escape_bytes(path.as_os_str().as_bytes())
}

fn check(path: &Path) -> Result<PathBuf, OpenError> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(OpenError::BadPath {
            path: show_path(path).escape_default().to_string(),
            why: "contains a NUL byte",
        });
    }
    normalize(path).ok_or_else(|| OpenError::BadPath {
        path: show_path(path),
        why: "not an absolute path",
    })
}

impl Registry {
    /// Allows exactly `path`.
    pub fn register(&mut self, path: impl AsRef<Path>) -> Result<(), OpenError> {
        self.paths.insert(check(path.as_ref())?);
        Ok(())
    }

    /// Allows every file beneath directory `dir`.
    pub fn register_prefix(&mut self, dir: impl AsRef<Path>) -> Result<(), OpenError> {
        self.prefixes.insert(check(dir.as_ref())?);
        Ok(())
    }

    /// True if `path` is covered by some registration (lexically).
    pub fn is_authorised(&self, path: impl AsRef<Path>) -> bool {
        match check(path.as_ref()) {
            Ok(p) => self.paths.contains(&p) || self.prefix_for(&p).is_some(),
            Err(_) => false,
        }
    }

    fn prefix_for(&self, p: &Path) -> Option<&PathBuf> {
        // Longest matching prefix first, so the tightest registration decides.
        self.prefixes.iter().rev().find(|pre| p.starts_with(pre))
    }

    fn prefix_dir(&self, prefix: &Path) -> Result<Arc<OwnedFd>, rustix::io::Errno> {
        let mut dirs = self.prefix_dirs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = dirs.get(prefix) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(rustix::fs::open(
            prefix,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        dirs.insert(prefix.to_path_buf(), fd.clone());
        Ok(fd)
    }

    /// Opens `path` for serving if a registration allows it.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<File, OpenError> {
        let p = check(path.as_ref())?;
        let shown = show_path(&p);
        let file = if self.paths.contains(&p) {
            let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
            let fd = rustix::fs::open(&p, flags, Mode::empty()).map_err(|e| OpenError::Io {
                path: shown.clone(),
                source: e.into(),
            })?;
            File::from(fd)
        } else if let Some(prefix) = self.prefix_for(&p) {
            let dir = self.prefix_dir(prefix).map_err(|e| OpenError::Io {
                path: shown.clone(),
                source: e.into(),
            })?;
            open_beneath(prefix, &dir, &p)?
        } else {
            return Err(OpenError::NotRegistered { path: shown });
        };
        let st = rustix::fs::fstat(&file).map_err(|e| OpenError::Io {
            path: shown.clone(),
            source: e.into(),
        })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(OpenError::NotRegular { path: shown });
        }
        // Regular files ignore O_NONBLOCK, but clear it for tidiness.
        let _ = rustix::fs::fcntl_setfl(&file, OFlags::empty());
        Ok(file)
    }
}

fn open_beneath(prefix: &Path, dir: &OwnedFd, p: &Path) -> Result<File, OpenError> {
    let shown = show_path(p);
    let io = |e: rustix::io::Errno| OpenError::Io {
        path: shown.clone(),
        source: e.into(),
    };
    let rel = match p.strip_prefix(prefix) {
        Ok(r) if !r.as_os_str().is_empty() => r,
        _ => {
            return Err(OpenError::NotRegular {
                path: shown.clone(),
            });
        }
    };
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    match rustix::fs::openat2(
        dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::XDEV) => Err(OpenError::Escapes {
            path: shown.clone(),
            prefix: show_path(prefix),
        }),
        Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM) => {
            // No openat2 (old kernel or a seccomp filter): resolve and re-check.
            let real = std::fs::canonicalize(p).map_err(|e| OpenError::Io {
                path: shown.clone(),
                source: e,
            })?;
            let real_prefix = std::fs::canonicalize(prefix).map_err(|e| OpenError::Io {
                path: shown.clone(),
                source: e,
            })?;
            if !real.starts_with(&real_prefix) {
                return Err(OpenError::Escapes {
                    path: shown.clone(),
                    prefix: show_path(prefix),
                });
            }
            let fd = rustix::fs::open(&real, flags, Mode::empty()).map_err(io)?;
            Ok(File::from(fd))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_collapses_dots() {
        assert_eq!(
            normalize("/etc/foo/bar/../../../passwd"),
            Some(PathBuf::from("/passwd"))
        );
        assert_eq!(normalize("/etc/../shadow"), Some(PathBuf::from("/shadow")));
        assert_eq!(normalize("//a/./b//c/"), Some(PathBuf::from("/a/b/c")));
        assert_eq!(normalize("/.."), Some(PathBuf::from("/")));
        assert_eq!(normalize("rel/path"), None);
    }

    #[test]
    fn lexical_escapes_are_not_authorised() {
        let mut r = Registry::default();
        r.register_prefix("/etc").expect("register");
        assert!(r.is_authorised("/etc/passwd"));
        assert!(!r.is_authorised("/etc/foo/bar/../../../passwd"));
        assert!(!r.is_authorised("/etc/../shadow"));
        assert!(!r.is_authorised("/etcetera/x"));
        assert!(!r.is_authorised("etc/passwd"));
    }

    #[test]
    fn unregistered_shadow_is_refused() {
        let r = Registry::default();
        assert!(matches!(
            r.open("/etc/shadow"),
            Err(OpenError::NotRegistered { .. })
        ));
    }

    #[test]
    fn root_prefix_authorises_everything() {
        let mut r = Registry::default();
        r.register_prefix("/").expect("register");
        let f = r.open("/etc/passwd").expect("open");
        drop(f);
    }

    #[test]
    fn symlink_inside_prefix_pointing_out_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = dir.path().join("served");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::write(inner.join("ok.txt"), b"fine").expect("write");
        std::fs::write(dir.path().join("secret"), b"no").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), inner.join("link")).expect("symlink");
        std::os::unix::fs::symlink("../secret", inner.join("rel_link")).expect("symlink");
        std::os::unix::fs::symlink("ok.txt", inner.join("good_link")).expect("symlink");
        let mut r = Registry::default();
        r.register_prefix(inner.to_str().expect("utf8"))
            .expect("register");
        let p = |n: &str| inner.join(n).to_str().expect("utf8").to_string();
        assert!(r.open(p("ok.txt")).is_ok());
        assert!(
            r.open(p("good_link")).is_ok(),
            "a link that stays inside is fine"
        );
        assert!(matches!(r.open(p("link")), Err(OpenError::Escapes { .. })));
        assert!(matches!(
            r.open(p("rel_link")),
            Err(OpenError::Escapes { .. })
        ));
        // A symlinked directory inside the prefix pointing outside.
        std::os::unix::fs::symlink(dir.path(), inner.join("up")).expect("symlink");
        assert!(matches!(
            r.open(p("up/secret")),
            Err(OpenError::Escapes { .. })
        ));
    }

    #[test]
    fn fifo_and_directories_are_not_regular() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        let mut r = Registry::default();
        r.register(fifo.to_str().expect("utf8")).expect("register");
        assert!(matches!(
            r.open(fifo.to_str().expect("utf8")),
            Err(OpenError::NotRegular { .. })
        ));
        r.register_prefix(dir.path().to_str().expect("utf8"))
            .expect("register");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let sub = dir.path().join("sub");
        assert!(matches!(
            r.open(sub.to_str().expect("utf8")),
            Err(OpenError::NotRegular { .. })
        ));
    }
}
