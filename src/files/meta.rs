//! File metadata, read from an open descriptor (never by path: what is
//! described is exactly what is streamed).

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

/// What a receiver needs to recreate a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Size in bytes when opened.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner's user name (numeric string if the uid has no name).
    pub owner: String,
    /// Group name (numeric string if the gid has no name).
    pub group: String,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time: seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time: nanoseconds.
    pub mtime_nsec: u32,
    /// Access time: seconds since the epoch.
    pub atime_sec: i64,
    /// Access time: nanoseconds.
    pub atime_nsec: u32,
    /// Extended attributes and ACLs (`-X`, `-A`: what the FileService was
    /// configured to read; empty otherwise), sorted by name.
    #[serde(default)]
    pub xattrs: super::xattr::Xattrs,
}

/// Why metadata could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// fstat failed.
    #[error("cannot stat: {0}")]
    Stat(std::io::Error),
    /// Not a regular file.
    #[error("not a regular file")]
    NotRegular,
    /// Its extended attributes could not be read.
    #[error("cannot read extended attributes: {0}")]
    Xattrs(std::io::Error),
}

impl FileMeta {
    /// Reads metadata from an open file; refuses anything but a regular file.
    pub fn from_fd<F: AsFd>(fd: F) -> Result<FileMeta, MetaError> {
        let st = rustix::fs::fstat(fd).map_err(|e| MetaError::Stat(e.into()))?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if kind != rustix::fs::FileType::RegularFile {
            return Err(MetaError::NotRegular);
        }
        Ok(FileMeta {
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            owner: user_name(st.st_uid),
            group: group_name(st.st_gid),
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            atime_sec: st.st_atime,
            atime_nsec: st.st_atime_nsec as u32,
            xattrs: Vec::new(),
        })
    }

    /// [`FileMeta::from_fd`] with the extended attributes `sel` takes.
    pub fn from_fd_with<F: AsFd>(
        fd: F,
        sel: super::xattr::XattrSel,
    ) -> Result<FileMeta, MetaError> {
        let mut meta = FileMeta::from_fd(fd.as_fd())?;
        meta.xattrs = super::xattr::read_fd(fd, sel).map_err(MetaError::Xattrs)?;
        Ok(meta)
    }
}

/// Names already looked up. An NSS lookup reads /etc/passwd (or asks a
/// directory service) every time, and a tree push asks for the same few
/// ids thousands of times; a process lives for one command, so names
/// changing under it are not a concern.
type NameCache = std::sync::Mutex<std::collections::HashMap<u32, String>>;

fn cached(
    cache: &'static std::sync::OnceLock<NameCache>,
    id: u32,
    look_up: impl FnOnce() -> String,
) -> String {
    let cache = cache.get_or_init(Default::default);
    if let Some(n) = cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
        return n;
    }
    let name = look_up();
    if let Ok(mut c) = cache.lock() {
        c.insert(id, name.clone());
    }
    name
}

/// The user name of `uid` (through NSS; in a static build from
/// `/etc/passwd`, see [`super::passwd`]), or the number as text.
pub fn user_name(uid: u32) -> String {
    static USERS: std::sync::OnceLock<NameCache> = std::sync::OnceLock::new();
    cached(&USERS, uid, || {
        nss::user_name(uid).unwrap_or_else(|| uid.to_string())
    })
}

/// The group name of `gid` (through NSS; in a static build from
/// `/etc/group`), or the number as text.
pub fn group_name(gid: u32) -> String {
    static GROUPS: std::sync::OnceLock<NameCache> = std::sync::OnceLock::new();
    cached(&GROUPS, gid, || {
        nss::group_name(gid).unwrap_or_else(|| gid.to_string())
    })
}

/// The uid for a user name (or numeric string) on this host.
pub fn lookup_uid(name: &str) -> Option<u32> {
    nss::uid_of(name).or_else(|| name.parse().ok())
}

/// The gid for a group name (or numeric string) on this host.
pub fn lookup_gid(name: &str) -> Option<u32> {
    nss::gid_of(name).or_else(|| name.parse().ok())
}

/// Name lookups of a dynamically linked build: the C library's NSS, so
/// directory services (LDAP, sssd) work.
#[cfg(not(target_feature = "crt-static"))]
mod nss {
    use nix::unistd::{Gid, Group, Uid, User};

    pub(super) fn user_name(uid: u32) -> Option<String> {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    pub(super) fn group_name(gid: u32) -> Option<String> {
        Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    }

    pub(super) fn uid_of(name: &str) -> Option<u32> {
        User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
    }

    pub(super) fn gid_of(name: &str) -> Option<u32> {
        Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// Name lookups of a static build: never NSS (a static glibc's NSS loads
/// the host's modules and can crash), the files themselves.
#[cfg(target_feature = "crt-static")]
mod nss {
    use std::path::Path;

    use crate::files::passwd::{GROUP, PASSWD, id_of, name_of};

    pub(super) fn user_name(uid: u32) -> Option<String> {
        name_of(Path::new(PASSWD), uid)
    }

    pub(super) fn group_name(gid: u32) -> Option<String> {
        name_of(Path::new(GROUP), gid)
    }

    pub(super) fn uid_of(name: &str) -> Option<u32> {
        id_of(Path::new(PASSWD), name)
    }

    pub(super) fn gid_of(name: &str) -> Option<u32> {
        id_of(Path::new(GROUP), name)
    }
}
