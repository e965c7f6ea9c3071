//! What a push (or pull) did to each entry: its status, kind and what
//! differed — the results `ferrogen.files.target.push` answers with.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RawPath;
use super::place::show;

/// The outcome for one entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryResult {
    /// Destination path in the target context, as text: a byte that is
    /// not valid UTF-8 is written `\xNN` (see `path_bytes`).
    pub path: String,
    /// The exact bytes of the path, when they are not UTF-8 (else `None`:
    /// `path` is exact).
    pub path_bytes: Option<RawPath>,
    /// Bytes written (files only).
    pub bytes: u64,
    /// Seconds from request to verified receipt (files only).
    pub seconds: f64,
    /// BLAKE3 digest, hex (files only).
    pub digest: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When the first and last data frames arrived (Unix ns; files only).
    pub data_span_ns: (u64, u64),
    /// What happened to the entry.
    pub status: Status,
    /// What kind of entry it is.
    pub kind: EntryKind,
    /// What differed (for [`Status::Changed`]): [`changes`] flags.
    #[serde(default)]
    pub changes: u8,
}

/// What differed about an entry that was changed, as flags of
/// [`EntryResult::changes`] (rsync's itemised `s`, `t`, `p`, `o`, `g`, `c`).
pub mod changes {
    /// Its data was sent (the file differed, or was not there).
    pub const CONTENT: u8 = 1;
    /// Its size differed.
    pub const SIZE: u8 = 1 << 1;
    /// Its modification time differed.
    pub const TIME: u8 = 1 << 2;
    /// Its permission bits differed.
    pub const PERMS: u8 = 1 << 3;
    /// Its owner differed.
    pub const OWNER: u8 = 1 << 4;
    /// Its group differed.
    pub const GROUP: u8 = 1 << 5;
    /// Its type differed (a file where a directory was, a symlink's target).
    pub const TYPE: u8 = 1 << 6;
    /// Its extended attributes or ACLs differed (`-X`, `-A`).
    pub const XATTRS: u8 = 1 << 7;
}

/// What a push did to one entry (Ansible's `changed` is any of
/// [`Status::Created`], [`Status::Changed`] or [`Status::Deleted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// It did not exist and was created.
    Created,
    /// It existed and was replaced or its metadata updated.
    Changed,
    /// It already matched the source: nothing was done.
    Unchanged,
    /// It was removed (`--delete`).
    Deleted,
    /// It was not copied (a special file without `--specials`, say).
    Skipped,
    /// It could not be done; see `error`.
    Failed,
}

impl Status {
    /// In words, as in `--json` and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Changed => "changed",
            Status::Unchanged => "unchanged",
            Status::Deleted => "deleted",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }

    /// Whether the destination was (or, in a dry run, would be) modified.
    pub fn is_change(self) -> bool {
        matches!(self, Status::Created | Status::Changed | Status::Deleted)
    }
}

/// The kind of an entry, as in `--json` and the itemised list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Another name of a file (`--hard-links`).
    HardLink,
    /// A FIFO, socket or device node.
    Special,
    /// Not one entry: the destination as a whole, or a group of entries.
    Other,
}

impl EntryKind {
    /// In words, as in `--json`.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::HardLink => "hardlink",
            EntryKind::Special => "special",
            EntryKind::Other => "other",
        }
    }
}

impl EntryResult {
    /// The result of an entry that failed.
    pub fn failed(path: &Path, error: String) -> EntryResult {
        EntryResult {
            path: show(path),
            path_bytes: raw_if_not_utf8(path),
            bytes: 0,
            seconds: 0.0,
            digest: None,
            error: Some(error),
            data_span_ns: (0, 0),
            status: Status::Failed,
            kind: EntryKind::Other,
            changes: 0,
        }
    }

    /// The result of an entry that succeeded with `status`.
    pub fn done(path: &Path, kind: EntryKind, status: Status) -> EntryResult {
        EntryResult {
            path: show(path),
            path_bytes: raw_if_not_utf8(path),
            bytes: 0,
            seconds: 0.0,
            digest: None,
            error: None,
            data_span_ns: (0, 0),
            status,
            kind,
            changes: 0,
        }
    }

    /// The same result, with `changes` flags.
    pub fn with_changes(mut self, changes: u8) -> EntryResult {
        self.changes = changes;
        self
    }

    /// The same result, said to be of `kind`.
    pub fn of_kind(mut self, kind: EntryKind) -> EntryResult {
        self.kind = kind;
        self
    }
}

/// The path's bytes when they are not UTF-8.
pub(crate) fn raw_if_not_utf8(p: &Path) -> Option<RawPath> {
    p.to_str().is_none().then(|| RawPath::from(p))
}
