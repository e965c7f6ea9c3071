//! Why one entry of a push failed at the target.

use super::*;

/// Why one entry of a push failed at the target. Its text is the entry's
/// `error` in the push's results.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// An operation beneath the destination failed.
    #[error(transparent)]
    Place(#[from] PlaceError),
    /// Extended attributes could not be read or set.
    #[error(transparent)]
    Xattr(#[from] XattrError),
    /// The file could not be received.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// DEST could not be created.
    #[error("{dest}: cannot create directory: {source}")]
    CreateDest {
        /// DEST.
        dest: String,
        /// Why.
        source: std::io::Error,
    },
    /// DEST could not be opened.
    #[error("{dest}: cannot open directory: {}", plain(.source))]
    OpenDest {
        /// DEST.
        dest: String,
        /// Why.
        source: std::io::Error,
    },
    /// DEST has no last component to create.
    #[error("{dest}: names no file to create")]
    NoName {
        /// DEST.
        dest: String,
    },
    /// DEST's parent could not be opened.
    #[error("{dest}: cannot open its directory {dir}: {}", plain(.source))]
    OpenDestParent {
        /// DEST.
        dest: String,
        /// Its parent.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// With sizes bound (a pull), the source sent more than it announced.
    #[error(
        "{path}: the source sent {size} bytes for a file it announced at {announced}; \
         refused (pull again if it grew meanwhile)"
    )]
    OverAnnounced {
        /// The entry.
        path: String,
        /// What was sent.
        size: u64,
        /// What was announced.
        announced: u64,
    },
    /// A `fetch_small` call failed.
    #[error("{path}: fetch of {src} failed: {source}")]
    FetchCall {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// Why.
        source: Box<CallError>,
    },
    /// A `fetch_small` reply did not answer every file.
    #[error("{path}: fetch of {src} failed: the server answered {got} of {asked} files")]
    ShortAnswer {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// Files answered.
        got: usize,
        /// Files asked for.
        asked: usize,
    },
    /// The source could not give the file (in its words).
    #[error("{path}: fetch of {src} failed: {why}")]
    SourceFailed {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
        /// The source's reason.
        why: String,
    },
    /// A compressed small file reached the writer undecoded (a bug).
    #[error("{path}: fetch of {src} failed: compressed data was not decoded")]
    NotDecoded {
        /// The entry.
        path: String,
        /// The source path.
        src: String,
    },
    /// The destination's file could not be hashed (`--checksum`).
    #[error("cannot {what} it to hash: {}", describe(*.source))]
    Hash {
        /// What failed: `open`, `stat`.
        what: &'static str,
        /// Why.
        source: rustix::io::Errno,
    },
    /// The destination's file could not be read to hash.
    #[error("cannot read it to hash: {}", plain(.0))]
    HashRead(#[source] std::io::Error),
    /// What is at the destination is no longer a regular file.
    #[error("is no longer a regular file")]
    NoLongerRegular,
    /// The source could not hash its file (in its words).
    #[error("cannot hash the source: {0}")]
    SourceHash(String),
    /// A `digests` call failed.
    #[error("cannot hash the source: {0}")]
    SourceHashCall(#[source] Box<CallError>),
    /// A `digests` reply did not answer every file.
    #[error("the server hashed {got} of {asked} files")]
    ShortHashes {
        /// Files answered.
        got: usize,
        /// Files asked for.
        asked: usize,
    },
    /// The batched sync failed: the entry was not put in place.
    #[error("{path}: {source}")]
    Sync {
        /// The entry.
        path: String,
        /// Why (shared by every entry the sync held).
        source: Arc<EntryError>,
    },
    /// A blocking task of the push failed (a bug): the task's panic,
    /// reported to each entry it held.
    #[error("internal error {what}: {why}")]
    Internal {
        /// What it was doing.
        what: &'static str,
        /// The task's failure.
        why: String,
    },
}

impl From<rustix::io::Errno> for EntryError {
    fn from(e: rustix::io::Errno) -> EntryError {
        EntryError::Place(e.into())
    }
}
