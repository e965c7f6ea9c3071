//! The FileService and its receiving side: streaming registered files to
//! other contexts with windowed, acknowledged flow control.
//!
//! * [`registry`] — what may be served: exact paths and prefixes, opened so
//!   that neither `..` nor a symlink can escape a prefix.
//! * [`meta`] — file metadata taken from the open descriptor.
//! * [`window`] — the credit window of unacknowledged bytes.
//! * [`serve`] — the service (`ferrogen.files`): register, fetch, the
//!   per-stream scheduler that runs large transfers one at a time.
//! * [`receive`] — pulling one file into a hidden temp file and renaming it
//!   into place only once size and digest check out.
//! * [`plan`] — the target-side service (`ferrogen.files.target`) that
//!   applies a push: directories, symlinks and many files, pipelined.
//! * [`compress`] — `-z`: zstd per chunk, its wire mark, the level tuner.
//! * [`pace`] — `--bwlimit`: pacing data frames to a rate.
//!
//! # One transfer, on the wire
//!
//! 1. The requester opens a [`crate::channel::Receiver`] and calls
//!    `ferrogen.files.fetch(FetchArgs { path, sender })`.
//! 2. The reply ([`FetchReply`]) carries the metadata read from the opened
//!    descriptor and a [`crate::channel::Sender`] for acknowledgements; it is
//!    sent before any data.
//! 3. Data arrives as raw ([`crate::wire::Enc::Bin`]) frames on `sender`,
//!    each `[offset: u64 BE][bytes]` ([`OFFSET_LEN`]; with `-z` a chunk may
//!    be zstd-compressed, marked by the offset's top bit: [`compress`]); frames on one stream
//!    arrive in order, frames spread over stripes may not, and the requester
//!    reorders them. It acknowledges the contiguous prefix it has written,
//!    cumulatively ([`Ack`]), on the ack
//!    handle, which is scoped to the requester's context (anyone else's acks
//!    are refused by the router, and the requester's disconnect wakes the
//!    serving side).
//! 4. The end is an explicit [`TransferMsg::End`] with the byte count and
//!    the BLAKE3 digest of what was sent, or [`TransferMsg::Abort`] with a
//!    reason. Control frames may overtake data frames still queued at a hop,
//!    so `End` carries the size and the requester finishes once it has that
//!    many bytes.

//!
//! # Small files
//!
//! A file of at most one chunk ([`SMALL_FILE_MAX`]) needs no window: a push
//! of many such files asks for them many to a call with `fetch_small`
//! ([`FetchSmallArgs`]), whose reply carries each file whole with its
//! metadata and BLAKE3 digest ([`SmallFile`]), or why it was refused — the
//! same registry checks as `fetch`, file by file. A file that has grown
//! past the limit is answered [`SmallFile::TooLarge`] and fetched on its
//! own. Mitogen ships small files inline for the same reason: a round trip
//! per file dominates everything else.

pub mod compress;
pub mod meta;
pub mod pace;
pub mod passwd;
pub mod plan;
pub mod receive;
pub mod registry;
pub mod serve;
pub mod window;

use serde::{Deserialize, Serialize};

use crate::channel::Sender;

pub use meta::FileMeta;
pub use serve::{FileService, FileServiceConfig};

/// Name of the serving service (runs in the controller).
pub const FILE_SERVICE: &str = "ferrogen.files";
/// Name of the receiving service (runs in every context).
pub const TARGET_SERVICE: &str = "ferrogen.files.target";

/// Payload bytes per data frame: header + payload = 128 KiB, so each frame
/// is one 128 KiB write (as in Mitogen).
pub const CHUNK_PAYLOAD: usize = 128 * 1024 - crate::wire::HEADER_LEN;

/// Every data frame starts with the big-endian u64 offset of its bytes in
/// the file, so chunks spread over several streams (stripes) can be put
/// back in order by the receiver.
pub const OFFSET_LEN: usize = 8;

/// File bytes per data frame.
pub const CHUNK_DATA: usize = CHUNK_PAYLOAD - OFFSET_LEN;

/// Arguments of `fetch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchArgs {
    /// Absolute path of a registered file.
    pub path: String,
    /// Where to send the data; must belong to the calling context.
    pub sender: Sender,
}

/// Reply of `fetch`, sent before any data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchReply {
    /// Metadata of the file as opened.
    pub meta: FileMeta,
    /// Where to send [`Ack`]s.
    pub ack: Sender,
}

/// Largest file that [`FetchSmallArgs`] returns inline: one chunk's worth.
pub const SMALL_FILE_MAX: u64 = CHUNK_DATA as u64;

/// Arguments of `fetch_small`: several registered files, each expected to
/// be at most [`SMALL_FILE_MAX`] bytes, returned whole in the reply — the
/// small-file path, where one round trip brings hundreds of files instead
/// of one each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchSmallArgs {
    /// Absolute paths of registered files.
    pub paths: Vec<String>,
}

/// One file of a `fetch_small` reply (in request order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmallFile {
    /// The whole file.
    Data {
        /// Metadata of the file as opened.
        meta: FileMeta,
        /// Its bytes, exactly `meta.size` of them.
        data: bytes::Bytes,
        /// BLAKE3 digest of `data` as read, checked by the receiver.
        digest: [u8; 32],
    },
    /// Larger than [`SMALL_FILE_MAX`] now: fetch it with `fetch`.
    TooLarge,
    /// Refused (unregistered, not a regular file) or unreadable: why.
    Failed(String),
    /// The whole file, zstd-compressed (`-z`): `data` is a zstd frame of
    /// exactly `meta.size` bytes, whose BLAKE3 digest is `digest`. The
    /// receiver turns it into [`SmallFile::Data`] with
    /// [`compress::open_small`], which caps the output at `meta.size`.
    Compressed {
        /// Metadata of the file as opened.
        meta: FileMeta,
        /// The compressed bytes.
        data: bytes::Bytes,
        /// BLAKE3 digest of the file's bytes (not of `data`).
        digest: [u8; 32],
    },
}

/// A cumulative acknowledgement: `received` bytes of the transfer have been
/// written by the requester. Sent as a control frame to [`FetchReply::ack`].
pub type Ack = u64;

/// Control messages on a transfer's data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMsg {
    /// All data has been sent.
    End {
        /// Bytes sent.
        size: u64,
        /// BLAKE3 digest of the bytes sent.
        digest: [u8; 32],
    },
    /// The transfer was abandoned; the requester must discard what it has.
    Abort {
        /// Why.
        reason: String,
    },
}

/// Hex form of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
