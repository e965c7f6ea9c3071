//! A push plan as it travels: what to create at the destination, and how
//! (the data of `ferrogen.files.target.push`; [`super::plan`] applies it).

use serde::{Deserialize, Serialize};

use super::outcome::EntryResult;
use super::receive::ReceiveOptions;
use super::{RawPath, TARGET_SERVICE};
use crate::call::Rpc;
use crate::wire::ContextId;

/// One thing to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanEntry {
    /// A directory.
    Dir {
        /// Path relative to the copy root ('/'-separated, first component = source name).
        rel: RawPath,
        /// Permission bits.
        mode: u32,
        /// Modification time, seconds.
        mtime_sec: i64,
        /// Modification time, nanoseconds.
        mtime_nsec: u32,
        /// Owner, applied with `--owner`.
        owner: Option<Owner>,
        /// Extended attributes and ACLs (`-X`, `-A`; empty otherwise).
        #[serde(default)]
        xattrs: super::xattr::Xattrs,
    },
    /// A regular file, fetched from the server.
    File {
        /// Absolute path on the server (registered with its FileService).
        src: RawPath,
        /// Relative destination.
        rel: RawPath,
        /// Size when the plan was made. A hint only (the file may change
        /// before it is fetched): files that looked small are fetched many
        /// to a call.
        size: u64,
        /// Modification time, mode and owner when the plan was made: what
        /// the quick check compares with the destination. `None`: unknown,
        /// the file is always sent.
        stamp: Option<Stamp>,
    },
    /// A symbolic link.
    Symlink {
        /// Relative destination.
        rel: RawPath,
        /// Link target, verbatim.
        target: RawPath,
        /// The link's own modification time, seconds.
        mtime_sec: i64,
        /// The link's own modification time, nanoseconds.
        mtime_nsec: u32,
        /// Owner, applied with `--owner`.
        owner: Option<Owner>,
        /// Extended attributes and ACLs (`-X`, `-A`; empty otherwise).
        #[serde(default)]
        xattrs: super::xattr::Xattrs,
    },
    /// Another name for a file of this plan (`--hard-links`): linked to
    /// it once it is in place.
    HardLink {
        /// Relative destination.
        rel: RawPath,
        /// The `rel` of the plan's `File` entry it is a link to.
        to: RawPath,
    },
    /// A FIFO, socket or device node (`--specials`, `--devices`).
    Special {
        /// Relative destination.
        rel: RawPath,
        /// What it is.
        kind: SpecialKind,
        /// Permission bits.
        mode: u32,
        /// Device number (devices only; 0 otherwise).
        rdev: u64,
        /// Modification time, seconds.
        mtime_sec: i64,
        /// Modification time, nanoseconds.
        mtime_nsec: u32,
        /// Owner, applied with `--owner`.
        owner: Option<Owner>,
        /// Extended attributes and ACLs (`-X`, `-A`; empty otherwise).
        #[serde(default)]
        xattrs: super::xattr::Xattrs,
    },
}

/// A regular file's modification time, mode and owner as the plan saw
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Permission bits.
    pub mode: u32,
    /// Owner, compared and applied with `--owner`.
    pub owner: Option<Owner>,
    /// Extended attributes and ACLs (`-X`, `-A`; `None` otherwise): what
    /// the quick check compares with the destination's. The file's own
    /// come with its data ([`super::FileMeta::xattrs`]), read when it is
    /// sent.
    #[serde(default)]
    pub xattrs: Option<super::xattr::Xattrs>,
}

/// How a target decides that a file at the destination is already the
/// source's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// Same size and modification time (to the nanosecond): rsync's quick
    /// check.
    #[default]
    QuickCheck,
    /// Same size and BLAKE3 digest (`-c/--checksum`): both sides hash.
    Checksum,
    /// Never: every file is sent (`-I/--ignore-times`).
    IgnoreTimes,
}

/// Who owns an entry: by name, and by number where the name does not
/// exist on the target (as for files, see [`super::FileMeta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User name (numeric string if the uid had no name).
    pub user: String,
    /// Group name (numeric string if the gid had no name).
    pub group: String,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
}

impl Owner {
    /// The owner of `md`, with names looked up here.
    pub fn of(md: &std::fs::Metadata) -> Owner {
        use std::os::unix::fs::MetadataExt;
        Owner {
            user: super::meta::user_name(md.uid()),
            group: super::meta::group_name(md.gid()),
            uid: md.uid(),
            gid: md.gid(),
        }
    }

    /// The ids to apply on this host.
    pub(crate) fn ids(&self) -> (rustix::fs::Uid, rustix::fs::Gid) {
        let uid = super::meta::lookup_uid(&self.user).unwrap_or(self.uid);
        let gid = super::meta::lookup_gid(&self.group).unwrap_or(self.gid);
        (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        )
    }
}

/// The ids of an entry's owner, when owners are applied.
pub(crate) type Ids = Option<(rustix::fs::Uid, rustix::fs::Gid)>;

/// The kinds of special file a push can recreate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A Unix socket's name (no one listens on the copy).
    Socket,
    /// A character device node (needs privilege on the target).
    CharDevice,
    /// A block device node (needs privilege on the target).
    BlockDevice,
}

impl SpecialKind {
    /// The file type it is created as.
    pub(crate) fn file_type(self) -> rustix::fs::FileType {
        use rustix::fs::FileType;
        match self {
            SpecialKind::Fifo => FileType::Fifo,
            SpecialKind::Socket => FileType::Socket,
            SpecialKind::CharDevice => FileType::CharacterDevice,
            SpecialKind::BlockDevice => FileType::BlockDevice,
        }
    }

    /// In words, as in messages and `--json`.
    pub fn name(self) -> &'static str {
        match self {
            SpecialKind::Fifo => "fifo",
            SpecialKind::Socket => "socket",
            SpecialKind::CharDevice => "character device",
            SpecialKind::BlockDevice => "block device",
        }
    }
}

/// A push to apply in one context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPlan {
    /// Context running the FileService.
    pub server: ContextId,
    /// Destination as given by the user (bytes: need not be UTF-8).
    pub dest: RawPath,
    /// Treat `dest` as a directory to put entries into (trailing slash,
    /// several sources, or a `src/` contents copy).
    pub into_dir: bool,
    /// What to create.
    pub entries: Vec<PlanEntry>,
    /// How files are put in place.
    pub options: ReceiveOptions,
    /// Files received at once.
    pub parallel: u32,
    /// Report what a push would do, changing nothing (`-n/--dry-run`).
    pub dry_run: bool,
    /// How files already at the destination are compared with the source.
    #[serde(default)]
    pub compare: Compare,
    /// Refuse a file whose data is larger than its entry's `size` (a pull:
    /// the serving target announced the sizes and is not trusted).
    #[serde(default)]
    pub sizes_bound: bool,
    /// The push's filter rules (`--exclude`...): `--delete` spares the
    /// names they exclude.
    #[serde(default)]
    pub filter: super::filter::Rules,
    /// `--delete`: whether, and what it must spare.
    #[serde(default)]
    pub delete: DeleteSpec,
    /// The source directory of a contents copy (`src/`), as a `Dir` entry
    /// with an empty `rel`: its mode, times, owner and attributes go to
    /// DEST itself, as rsync gives them.
    #[serde(default)]
    pub root: Option<PlanEntry>,
}

/// What `--delete` needs to know, carried in the [`PushPlan`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSpec {
    /// Delete what the source lacks (`--delete`).
    pub enabled: bool,
    /// `--max-delete N`: if more than N entries would go, delete none.
    pub max: Option<u64>,
    /// A source was a contents copy (`src/`): DEST itself is one of the
    /// pushed directories.
    pub contents: bool,
    /// Directories of the source (relative to the transfer root, as the
    /// plan's `rel`; empty for the root of a contents copy) that the
    /// controller could not read completely: nothing at or beneath them is
    /// deleted.
    pub incomplete: Vec<RawPath>,
    /// Source entries not sent (special files without `--specials`, say):
    /// their names are left alone, as if they had been.
    pub keep: Vec<RawPath>,
}

/// `push_open`'s answer: the session the batches go to, or (when DEST
/// cannot be used) the results that end the push at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushOpened {
    /// The session (0 when `failed` is not empty).
    pub session: u64,
    /// Why the push cannot start (empty when it can).
    pub failed: Vec<super::outcome::EntryResult>,
}

/// `push_batch`'s argument: the next entries of a session's plan, in walk
/// order (a directory before what it holds; a hard link after its file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBatch {
    /// From [`PushOpened::session`].
    pub session: u64,
    /// At most a few thousand entries.
    pub entries: Vec<PlanEntry>,
}

/// `push_close`'s argument: what the walk learnt on its way, which the
/// end of the push (`--delete`) needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEnd {
    /// From [`PushOpened::session`].
    pub session: u64,
    /// Added to [`DeleteSpec::incomplete`].
    pub incomplete: Vec<RawPath>,
    /// Added to [`DeleteSpec::keep`].
    pub keep: Vec<RawPath>,
}

/// Push target (`ferrogen.files.target`): applies a whole plan sent as one message.
pub const PUSH: Rpc<PushPlan, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push");
/// Push target (`ferrogen.files.target`): opens a streamed push's session.
pub const PUSH_OPEN: Rpc<PushPlan, PushOpened> = Rpc::new(TARGET_SERVICE, "push_open");
/// Push target (`ferrogen.files.target`): applies a session's next entries.
pub const PUSH_BATCH: Rpc<PushBatch, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push_batch");
/// Push target (`ferrogen.files.target`): ends a session (directory metadata, `--delete`).
pub const PUSH_CLOSE: Rpc<PushEnd, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push_close");
/// Push target (`ferrogen.files.target`): the user interrupted; put nothing more in place.
pub const CANCEL: Rpc<(), ()> = Rpc::new(TARGET_SERVICE, "cancel");
