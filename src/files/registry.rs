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
//!
//! A prefix may be registered with the push's filter rules
//! ([`Registry::register_prefix_filtered`]): a file they exclude (or that
//! lies beneath a directory they exclude) is then refused like an
//! unregistered one, so a target cannot fetch `secrets.key` after
//! `--exclude secrets.key` by naming it. Beneath such a prefix no symlink
//! is followed either (`RESOLVE_NO_SYMLINKS`): a link inside the tree could
//! otherwise lead to an excluded file under a name the rules admit. The
//! push never needs that: its walk sends symlinks as symlinks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::filter::Filter;

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
    /// Beneath a registered prefix, but left out of the push by its filter
    /// rules.
    #[error("{path}: excluded from the push by a filter rule, not served")]
    Excluded {
        /// Requested path.
        path: String,
    },
    /// Beneath a prefix registered with filter rules, and reached through
    /// a symlink (not followed there).
    #[error("{path}: goes through a symlink, which is not followed beneath {prefix}")]
    Symlink {
        /// Requested path.
        path: String,
        /// The prefix.
        prefix: String,
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
    /// Each prefix with its registrations: one without rules admits every
    /// file beneath it; others admit what their rules do.
    prefixes: BTreeMap<PathBuf, Vec<View>>,
    /// Each prefix's directory, opened (`O_PATH`) at its first use and kept:
    /// a tree push opens thousands of files beneath one prefix, and
    /// reopening the directory for each cost two system calls per file.
    /// Requests then resolve beneath the directory that was at the prefix
    /// path at that first use, even if it is renamed later.
    prefix_dirs: Arc<Mutex<HashMap<PathBuf, Arc<OwnedFd>>>>,
}

/// One registration of a prefix: everything, or what a filter admits.
#[derive(Debug, Clone)]
enum View {
    /// Every file beneath the prefix.
    All,
    /// Files the filter does not exclude.
    Filtered {
        /// The push's rules.
        filter: Arc<Filter>,
        /// The prefix's own path relative to the transfer root the rules
        /// are written for (the source's name; empty for a contents copy).
        top: Vec<u8>,
    },
}

impl View {
    /// Whether this registration admits the file `rel` beneath the prefix.
    fn admits(&self, rel: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        match self {
            View::All => true,
            View::Filtered { filter, top } => {
                let rel = rel.as_os_str().as_bytes();
                let mut full = Vec::with_capacity(top.len() + 1 + rel.len());
                full.extend_from_slice(top);
                if !top.is_empty() {
                    full.push(b'/');
                }
                full.extend_from_slice(rel);
                !filter.excludes_file(&full)
            }
        }
    }
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
        self.prefixes
            .entry(check(dir.as_ref())?)
            .or_default()
            .push(View::All);
        Ok(())
    }

    /// Allows the files beneath directory `dir` that `filter` does not
    /// exclude; `top` is `dir`'s path relative to the transfer root the
    /// rules apply to (the source's name, or empty for a contents copy).
    /// No symlink is followed beneath `dir` for these files.
    pub fn register_prefix_filtered(
        &mut self,
        dir: impl AsRef<Path>,
        filter: Arc<Filter>,
        top: &[u8],
    ) -> Result<(), OpenError> {
        let view = if filter.is_empty() {
            View::All
        } else {
            View::Filtered {
                filter,
                top: top.to_vec(),
            }
        };
        self.prefixes
            .entry(check(dir.as_ref())?)
            .or_default()
            .push(view);
        Ok(())
    }

    /// True if `path` is covered by some registration (lexically, and
    /// admitted by its filter rules).
    pub fn is_authorised(&self, path: impl AsRef<Path>) -> bool {
        match check(path.as_ref()) {
            Ok(p) => self.paths.contains(&p) || matches!(self.prefix_for(&p), Some((_, Some(_)))),
            Err(_) => false,
        }
    }

    /// The prefix that serves `p` and whether it serves it with rules (so
    /// without following symlinks): `Some((prefix, None))` when `p` is
    /// beneath some prefix but every registration of those excludes it.
    /// Longest prefix first, so the tightest registration decides.
    fn prefix_for(&self, p: &Path) -> Option<(&PathBuf, Option<bool>)> {
        let mut covered = None;
        for (pre, views) in self.prefixes.iter().rev() {
            let Ok(rel) = p.strip_prefix(pre) else {
                continue;
            };
            if views.iter().any(|v| matches!(v, View::All)) {
                return Some((pre, Some(false)));
            }
            if views.iter().any(|v| v.admits(rel)) {
                return Some((pre, Some(true)));
            }
            covered.get_or_insert((pre, None));
        }
        covered
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
        } else if let Some((prefix, served)) = self.prefix_for(&p) {
            let Some(filtered) = served else {
                return Err(OpenError::Excluded { path: shown });
            };
            let dir = self.prefix_dir(prefix).map_err(|e| OpenError::Io {
                path: shown.clone(),
                source: e.into(),
            })?;
            open_beneath(prefix, &dir, &p, filtered)?
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

/// Opens `p` beneath `prefix` (whose handle is `dir`); with `no_symlinks`,
/// following no symlink at all on the way.
fn open_beneath(
    prefix: &Path,
    dir: &OwnedFd,
    p: &Path,
    no_symlinks: bool,
) -> Result<File, OpenError> {
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
    let mut resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    if no_symlinks {
        resolve |= ResolveFlags::NO_SYMLINKS;
    }
    match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::XDEV) => Err(OpenError::Escapes {
            path: shown.clone(),
            prefix: show_path(prefix),
        }),
        Err(rustix::io::Errno::LOOP) if no_symlinks => Err(OpenError::Symlink {
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
            // With rules, the path as named must be the path as resolved:
            // no symlink on the way (the rules were checked on the name).
            if no_symlinks && real != real_prefix.join(rel) {
                return Err(OpenError::Symlink {
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
    fn files_excluded_by_the_rules_are_not_served() {
        use crate::files::filter::{Rule, Rules};
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("private")).expect("mkdir");
        std::fs::create_dir_all(src.join("public")).expect("mkdir");
        for f in ["ok.txt", "secrets.key", "private/a", "public/b.key"] {
            std::fs::write(src.join(f), b"x").expect("write");
        }
        // A link to an excluded file under a name the rules admit.
        std::os::unix::fs::symlink("secrets.key", src.join("innocent.txt")).expect("symlink");
        let rules = Rules(vec![
            Rule::include("/src/public/b.key"),
            Rule::exclude("*.key"),
            Rule::exclude("/src/private/"),
        ]);
        let filter = Arc::new(rules.compile().expect("compiles"));
        let mut r = Registry::default();
        r.register_prefix_filtered(&src, filter, b"src")
            .expect("register");
        let open = |n: &str| r.open(src.join(n));
        assert!(open("ok.txt").is_ok());
        assert!(open("public/b.key").is_ok(), "included before the exclude");
        for refused in ["secrets.key", "private/a", "public/../secrets.key"] {
            assert!(
                matches!(open(refused), Err(OpenError::Excluded { .. })),
                "{refused}: {:?}",
                open(refused)
            );
            assert!(!r.is_authorised(src.join(refused)), "{refused}");
        }
        assert!(
            matches!(open("innocent.txt"), Err(OpenError::Symlink { .. })),
            "{:?}",
            open("innocent.txt")
        );
        // Another registration of the same tree without rules serves all.
        r.register_prefix(&src).expect("register");
        assert!(r.open(src.join("secrets.key")).is_ok());
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
