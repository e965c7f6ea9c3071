//! Extended attributes (`-X/--xattrs`) and POSIX ACLs (`-A/--acls`).
//!
//! On Linux a POSIX ACL *is* an extended attribute —
//! `system.posix_acl_access` (a file's or directory's ACL) and
//! `system.posix_acl_default` (a directory's default ACL) — in the
//! kernel's binary format, which is the same on every Linux host. So both
//! options carry name/value pairs verbatim, as `rsync -X`/`-A` effectively
//! do between Linux hosts; they differ only in which names they take
//! ([`XattrSel::takes`]): `-X` the `user.*` namespace, and `trusted.*` and
//! `security.*` when this process is root (as `rsync -X` as root); `-A`
//! exactly the two ACL names. Other `system.*` names (NFSv4 ACLs, file
//! system internals) are never taken.
//!
//! The sender reads them from the open descriptor (files) or with the
//! `l*` calls (directories, symlinks, special files: never through a
//! symlink); the receiver makes a destination's set exactly the source's
//! ([`sync_fd`], [`sync_place`]): names the source lacks are removed (a
//! new file inherits a default ACL from its directory, which `-A` must
//! replace), names that differ are set. What a peer may send is bounded
//! ([`check`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RawPath;
use rustix::io::Errno;

use super::place::{Place, describe};

/// One extended attribute: its full name (`user.comment`) and value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name, namespace included (bytes: need not be UTF-8).
    pub name: RawPath,
    /// Value, verbatim.
    pub value: bytes::Bytes,
}

/// An entry's extended attributes, sorted by name.
pub type Xattrs = Vec<Xattr>;

/// Which extended attributes a push carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XattrSel {
    /// `-X`: `user.*`, and `trusted.*`/`security.*` as root.
    pub xattrs: bool,
    /// `-A`: the POSIX ACLs (`system.posix_acl_access`/`_default`).
    pub acls: bool,
}

/// The access ACL's attribute name.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's attribute name (directories).
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Most attributes one entry may carry.
pub const MAX_COUNT: usize = 1024;
/// Longest name (Linux's `XATTR_NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Largest value (Linux's `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 64 * 1024;
/// Most bytes of names and values together per entry.
pub const MAX_TOTAL: usize = 1 << 20;

impl XattrSel {
    /// Whether anything is carried at all.
    pub fn any(self) -> bool {
        self.xattrs || self.acls
    }

    /// Whether attribute `name` is carried (by this process: the
    /// privileged namespaces only when it is root).
    pub fn takes(self, name: &[u8]) -> bool {
        if name == ACL_ACCESS || name == ACL_DEFAULT {
            return self.acls;
        }
        if name.starts_with(b"user.") {
            return self.xattrs;
        }
        if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
            return self.xattrs && rustix::process::geteuid().is_root();
        }
        false
    }
}

/// Why extended attributes were refused, or could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    /// More attributes than a peer may send.
    #[error("{count} extended attributes (at most {MAX_COUNT})")]
    TooMany {
        /// How many.
        count: usize,
    },
    /// An empty, overlong or NUL-holding name.
    #[error("extended attribute name {name} is invalid")]
    BadName {
        /// The name.
        name: RawPath,
    },
    /// A value larger than a peer may send.
    #[error("extended attribute {name} has {len} bytes (at most {MAX_VALUE})")]
    TooLarge {
        /// The name.
        name: RawPath,
        /// The value's length.
        len: usize,
    },
    /// A name given twice.
    #[error("extended attribute {name} given twice")]
    Twice {
        /// The name.
        name: RawPath,
    },
    /// More bytes in all than a peer may send.
    #[error("extended attributes of {total} bytes (at most {MAX_TOTAL})")]
    TooMuch {
        /// Names and values together.
        total: usize,
    },
    /// The entry's attributes could not be listed or read.
    #[error("cannot read extended attributes: {0}")]
    Read(#[source] std::io::Error),
    /// An attribute could not be removed.
    #[error("cannot remove extended attribute {name}: {}", describe(*.source))]
    Remove {
        /// The name.
        name: RawPath,
        /// Why.
        source: Errno,
    },
    /// An attribute could not be set.
    #[error("cannot set extended attribute {name}: {}", describe(*.source))]
    Set {
        /// The name.
        name: RawPath,
        /// Why.
        source: Errno,
    },
    /// The entry's directory could not be resolved beneath the root.
    #[error("{}", describe(*.0))]
    Resolve(#[source] Errno),
}

/// Refuses a set of attributes larger than a peer may send: more than
/// [`MAX_COUNT`], a name longer than [`MAX_NAME`] (or empty), a value
/// larger than [`MAX_VALUE`], more than [`MAX_TOTAL`] bytes in all, or
/// a name twice.
pub fn check(x: &[Xattr]) -> Result<(), XattrError> {
    if x.len() > MAX_COUNT {
        return Err(XattrError::TooMany { count: x.len() });
    }
    let mut total = 0usize;
    for (i, a) in x.iter().enumerate() {
        let n = a.name.as_bytes();
        if n.is_empty() || n.len() > MAX_NAME || n.contains(&0) {
            return Err(XattrError::BadName {
                name: a.name.clone(),
            });
        }
        if a.value.len() > MAX_VALUE {
            return Err(XattrError::TooLarge {
                name: a.name.clone(),
                len: a.value.len(),
            });
        }
        if x[..i].iter().any(|b| b.name == a.name) {
            return Err(XattrError::Twice {
                name: a.name.clone(),
            });
        }
        total += n.len() + a.value.len();
    }
    if total > MAX_TOTAL {
        return Err(XattrError::TooMuch { total });
    }
    Ok(())
}

/// Whether the `sel` part of `have` differs from the `sel` part of
/// `want` (order aside).
pub fn differ(want: &[Xattr], have: &[Xattr], sel: XattrSel) -> bool {
    fn pick(x: &[Xattr], sel: XattrSel) -> Vec<&Xattr> {
        let mut v: Vec<&Xattr> = x.iter().filter(|a| sel.takes(a.name.as_bytes())).collect();
        v.sort();
        v
    }
    pick(want, sel) != pick(have, sel)
}

/// What the calls act on: an open descriptor, or a path whose last
/// component is never followed (the `l*` calls).
#[derive(Clone, Copy)]
enum On<'a> {
    Fd(BorrowedFd<'a>),
    Link(&'a Path),
}

impl On<'_> {
    /// The size of the name list (rustix answers 0 for an empty buffer:
    /// the size has its own call).
    fn list_len(self) -> rustix::io::Result<usize> {
        match self {
            On::Fd(fd) => rustix::fs::flistxattr_query(fd),
            On::Link(p) => rustix::fs::llistxattr_query(p),
        }
    }

    fn get_len(self, name: &std::ffi::CStr) -> rustix::io::Result<usize> {
        match self {
            On::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            On::Link(p) => rustix::fs::lgetxattr_query(p, name),
        }
    }

    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            On::Link(p) => rustix::fs::llistxattr(p, buf),
        }
    }

    fn get(self, name: &std::ffi::CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            On::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            On::Link(p) => rustix::fs::lgetxattr(p, name, buf),
        }
    }

    fn set(self, name: &std::ffi::CStr, value: &[u8]) -> rustix::io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        match self {
            On::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
            On::Link(p) => rustix::fs::lsetxattr(p, name, value, flags),
        }
    }

    fn remove(self, name: &std::ffi::CStr) -> rustix::io::Result<()> {
        match self {
            On::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            On::Link(p) => rustix::fs::lremovexattr(p, name),
        }
    }
}

/// No attributes here, as opposed to a failure: the file system has none
/// to offer (`ENOTSUP`), or a symlink/special file refuses the namespace.
fn none_here(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::NODATA
}

/// The attributes of `on` that `sel` takes, sorted by name.
fn read(on: On<'_>, sel: XattrSel) -> std::io::Result<Xattrs> {
    if !sel.any() {
        return Ok(Vec::new());
    }
    // Asked for the size first (most files have no attributes: one
    // call), then read; ERANGE means it grew meanwhile: ask again.
    let names = loop {
        let need = match on.list_len() {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) if none_here(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names = vec![0u8; need];
        match on.list(&mut names) {
            Ok(n) => {
                names.truncate(n);
                break names;
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !sel.takes(name) {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(name) else {
            continue;
        };
        let value = loop {
            let need = match on.get_len(&c) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let mut value = vec![0u8; need];
            match on.get(&c, &mut value) {
                Ok(n) => {
                    value.truncate(n);
                    break Ok(value);
                }
                Err(rustix::io::Errno::RANGE) => continue,
                Err(e) => break Err(e),
            }
        };
        match value {
            Ok(v) => out.push(Xattr {
                name: RawPath::from_bytes(name.to_vec()),
                value: bytes::Bytes::from(v),
            }),
            // Removed since the list was read.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort();
    Ok(out)
}

/// The attributes `sel` takes of the open file `fd`.
pub fn read_fd(fd: impl AsFd, sel: XattrSel) -> std::io::Result<Xattrs> {
    read(On::Fd(fd.as_fd()), sel)
}

/// The attributes `sel` takes of `path` itself (a symlink's own, never
/// its target's).
pub fn read_path(path: &Path, sel: XattrSel) -> std::io::Result<Xattrs> {
    read(On::Link(path), sel)
}

/// Makes the `sel` part of `on`'s attributes exactly `want`'s `sel` part;
/// true if anything had to change.
fn sync(on: On<'_>, want: &[Xattr], sel: XattrSel) -> Result<bool, XattrError> {
    if !sel.any() {
        return Ok(false);
    }
    let mut changed = false;
    check(want)?;
    let have = read(on, sel).map_err(XattrError::Read)?;
    for a in &have {
        if !want.iter().any(|w| w.name == a.name) {
            let c = std::ffi::CString::new(a.name.as_bytes()).map_err(|_| XattrError::BadName {
                name: a.name.clone(),
            })?;
            changed = true;
            match on.remove(&c) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => {
                    return Err(XattrError::Remove {
                        name: a.name.clone(),
                        source: e,
                    });
                }
            }
        }
    }
    for w in want.iter().filter(|w| sel.takes(w.name.as_bytes())) {
        if have.iter().any(|h| h == w) {
            continue;
        }
        let c = std::ffi::CString::new(w.name.as_bytes()).map_err(|_| XattrError::BadName {
            name: w.name.clone(),
        })?;
        changed = true;
        on.set(&c, &w.value).map_err(|e| XattrError::Set {
            name: w.name.clone(),
            source: e,
        })?;
    }
    Ok(changed)
}

/// Makes the `sel` part of the open file's attributes exactly `want`'s;
/// true if anything had to change.
pub fn sync_fd(fd: impl AsFd, want: &[Xattr], sel: XattrSel) -> Result<bool, XattrError> {
    sync(On::Fd(fd.as_fd()), want, sel)
}

/// [`sync_fd`] for the entry at `p` itself (never through a symlink: its
/// directory is resolved beneath the push's root and the `l*` calls do
/// not follow the last component).
pub fn sync_place(p: &Place, want: &[Xattr], sel: XattrSel) -> Result<bool, XattrError> {
    use std::os::unix::ffi::OsStrExt;
    if !sel.any() {
        return Ok(false);
    }
    let dir = p.open_parent().map_err(XattrError::Resolve)?;
    let mut path = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
    path.extend_from_slice(p.name().as_bytes());
    sync(
        On::Link(Path::new(std::ffi::OsStr::from_bytes(&path))),
        want,
        sel,
    )
}

/// The `sel` attributes of the entry at `p` itself (see [`sync_place`]).
pub fn read_place(p: &Place, sel: XattrSel) -> Result<Xattrs, XattrError> {
    use std::os::unix::ffi::OsStrExt;
    let dir = p.open_parent().map_err(XattrError::Resolve)?;
    let mut path = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
    path.extend_from_slice(p.name().as_bytes());
    read(On::Link(Path::new(std::ffi::OsStr::from_bytes(&path))), sel).map_err(XattrError::Read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr {
            name: name.into(),
            value: bytes::Bytes::copy_from_slice(value),
        }
    }

    #[test]
    fn x_and_a_take_separate_namespaces() {
        let both = XattrSel {
            xattrs: true,
            acls: true,
        };
        let only_x = XattrSel {
            xattrs: true,
            acls: false,
        };
        let only_a = XattrSel {
            xattrs: false,
            acls: true,
        };
        assert!(only_x.takes(b"user.a"));
        assert!(!only_x.takes(ACL_ACCESS));
        assert!(!only_x.takes(ACL_DEFAULT));
        assert!(only_a.takes(ACL_ACCESS) && only_a.takes(ACL_DEFAULT));
        assert!(!only_a.takes(b"user.a"));
        assert!(!both.takes(b"system.nfs4_acl"));
        assert!(!XattrSel::default().any());
        let root = rustix::process::geteuid().is_root();
        assert_eq!(only_x.takes(b"trusted.t"), root);
        assert_eq!(only_x.takes(b"security.s"), root);
    }

    #[test]
    fn what_a_peer_may_send_is_bounded() {
        assert!(check(&[x("user.a", b"1"), x("user.b", b"2")]).is_ok());
        let twice = check(&[x("user.a", b"1"), x("user.a", b"2")]);
        assert!(matches!(twice, Err(XattrError::Twice { .. })), "{twice:?}");
        let empty = check(&[x("", b"1")]);
        assert!(
            matches!(empty, Err(XattrError::BadName { .. })),
            "{empty:?}"
        );
        let long = check(&[x(&"u".repeat(256), b"1")]);
        assert!(matches!(long, Err(XattrError::BadName { .. })), "{long:?}");
        let big = check(&[x("user.big", &vec![0; MAX_VALUE + 1])]);
        assert!(matches!(big, Err(XattrError::TooLarge { .. })), "{big:?}");
        let many: Vec<Xattr> = (0..=MAX_COUNT)
            .map(|i| x(&format!("user.{i}"), b""))
            .collect();
        let many = check(&many);
        assert!(matches!(many, Err(XattrError::TooMany { .. })), "{many:?}");
        let heavy: Vec<Xattr> = (0..20)
            .map(|i| x(&format!("user.{i}"), &vec![1; MAX_VALUE]))
            .collect();
        let heavy = check(&heavy);
        assert!(
            matches!(heavy, Err(XattrError::TooMuch { .. })),
            "over {MAX_TOTAL} bytes in all: {heavy:?}"
        );
    }

    #[test]
    fn differences_count_only_what_is_carried() {
        let sel = XattrSel {
            xattrs: true,
            acls: false,
        };
        let a = [x("user.a", b"1"), x("user.b", b"2")];
        let b = [x("user.b", b"2"), x("user.a", b"1")];
        assert!(!differ(&a, &b, sel), "order does not matter");
        assert!(differ(&a, &[x("user.a", b"1")], sel));
        assert!(differ(&a, &[x("user.a", b"9"), x("user.b", b"2")], sel));
        let acl = [
            x("user.a", b"1"),
            x("user.b", b"2"),
            x("system.posix_acl_access", b"z"),
        ];
        assert!(!differ(&a, &acl, sel), "-X alone ignores ACLs");
    }

    #[test]
    fn a_files_attributes_are_made_exactly_the_sources() {
        let t = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(t.path().join("f")).expect("create");
        let sel = XattrSel {
            xattrs: true,
            acls: false,
        };
        if rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("skipped: no user xattrs on this file system");
            return;
        }
        rustix::fs::fsetxattr(&f, "user.stale", b"old", rustix::fs::XattrFlags::empty())
            .expect("set");
        let want = vec![x("user.a", b"1"), x("user.probe", b"1")];
        sync_fd(&f, &want, sel).expect("sync");
        assert_eq!(read_fd(&f, sel).expect("read"), want);
        assert_eq!(read_path(&t.path().join("f"), sel).expect("read"), want);
        sync_fd(&f, &[], sel).expect("sync");
        assert!(read_fd(&f, sel).expect("read").is_empty());
    }
}
