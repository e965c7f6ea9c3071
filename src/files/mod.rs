//! The FileService and its receiving side: streaming registered files to
//! other contexts with windowed, acknowledged flow control.
//!
//! * [`registry`] — what may be served: exact paths and prefixes, opened so
//!   that neither `..` nor a symlink can escape a prefix.
//! * [`meta`] — file metadata taken from the open descriptor.
//! * [`window`] — the credit window of unacknowledged bytes.
//! * [`serve`] — the service (`ferrogen.files`): register, fetch, the
//!   caps on what one requester can make it hold.
//! * [`turns`] — the per-stream scheduler that runs large transfers one
//!   at a time, the turn going round the requesters.
//! * [`receive`] — pulling one file into a hidden temp file and renaming it
//!   into place only once size and digest check out.
//! * [`place`] — where a push may write: names beneath one directory
//!   handle for the destination, resolved without following symlinks.
//! * [`plan`] — the target-side service (`ferrogen.files.target`) that
//!   applies a push: directories, symlinks and many files, pipelined.
//! * [`compress`] — `-z`: zstd per chunk, its wire mark, the level tuner.
//! * [`delta`] — delta transfer: the receiver's block signature, the
//!   sender's rolling matcher, copy instructions on the wire. With
//!   `--partial` a fetch may instead resume from a verified prefix
//!   ([`Resume`], [`TransferMsg::Start`]).
//! * [`hashpipe`] — a whole-file BLAKE3 on its own thread, beside the
//!   pass that reads or writes the bytes (a delta's sender and receiver).
//! * [`pace`] — `--bwlimit`: pacing data frames to a rate.
//! * [`sparse`] — `--sparse`: holes found with `SEEK_DATA`/`SEEK_HOLE`,
//!   sent as hole frames, left as holes.
//! * [`filter`] — `--exclude`/`--include`: rsync's pattern rules.
//! * [`delete`] — `--delete`: removing what the source lacks, beneath the
//!   destination only, never through a symlink.
//! * [`xattr`] — `-X`/`-A`: extended attributes and POSIX ACLs, read on
//!   the sender and made exactly the source's on the receiver.
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
pub mod delete;
pub mod delta;
pub mod filter;
pub mod hashpipe;
pub mod meta;
pub mod outcome;
pub mod pace;
pub mod passwd;
pub mod place;
pub mod plan;
pub mod push_walk;
pub mod reassembly;
pub mod receive;
pub mod registry;
pub mod relay;
pub mod rpc;
pub mod serve;
pub mod source;
pub mod sparse;
pub mod spec;
pub mod tee;
pub mod transfer;
pub mod turns;
pub mod uptodate;
pub mod walk;
pub mod window;
pub mod xattr;

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

/// A file name or path exactly as the file system has it: bytes, not
/// necessarily UTF-8 (a Unix name is any bytes but `/` and NUL).
///
/// On the wire it is postcard's byte string — a varint length, then the
/// bytes — which is byte for byte how a `String` is encoded, so a UTF-8
/// path reads the same either way. Shown to people ([`std::fmt::Display`],
/// [`RawPath::escaped`]) each byte that is not part of valid UTF-8 is
/// written `\xNN`, so two names that differ only there stay distinct.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RawPath(Vec<u8>);

impl RawPath {
    /// The path made of `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> RawPath {
        RawPath(bytes)
    }

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// As a file system path.
    pub fn as_path(&self) -> &std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        std::path::Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }

    /// The text, if the bytes are UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The text with every byte that is not valid UTF-8 written `\xNN`.
    pub fn escaped(&self) -> String {
        escape_bytes(&self.0)
    }

    /// The bytes in lower-case hex (for `--json`'s `path_hex`).
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0
            .iter()
            .fold(String::with_capacity(self.0.len() * 2), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// `bytes` as text, each byte that is not part of valid UTF-8 written
/// `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

impl std::fmt::Display for RawPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.escaped())
    }
}

impl std::fmt::Debug for RawPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.escaped())
    }
}

impl AsRef<std::path::Path> for RawPath {
    fn as_ref(&self) -> &std::path::Path {
        self.as_path()
    }
}

impl From<&str> for RawPath {
    fn from(s: &str) -> RawPath {
        RawPath(s.as_bytes().to_vec())
    }
}

impl From<String> for RawPath {
    fn from(s: String) -> RawPath {
        RawPath(s.into_bytes())
    }
}

impl From<&std::path::Path> for RawPath {
    fn from(p: &std::path::Path) -> RawPath {
        use std::os::unix::ffi::OsStrExt;
        RawPath(p.as_os_str().as_bytes().to_vec())
    }
}

impl From<std::path::PathBuf> for RawPath {
    fn from(p: std::path::PathBuf) -> RawPath {
        use std::os::unix::ffi::OsStringExt;
        RawPath(p.into_os_string().into_vec())
    }
}

impl Serialize for RawPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawPath, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = RawPath;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawPath, E> {
                Ok(RawPath(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RawPath, E> {
                Ok(RawPath(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPath, E> {
                Ok(RawPath::from(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawPath, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(RawPath(v))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// Arguments of `fetch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchArgs {
    /// Absolute path of a registered file.
    pub path: RawPath,
    /// Where to send the data; must belong to the calling context.
    pub sender: Sender,
    /// Delta transfer: the signature of the requester's old copy of the
    /// file. The sender then sends copy instructions for the blocks it
    /// has in common ([`delta`]) and literal data for the rest.
    #[serde(default)]
    pub delta: Option<delta::Basis>,
    /// Resume (`--partial`): the requester already has this prefix of the
    /// file. The sender hashes the same range of its file and answers
    /// [`TransferMsg::Start`] before any data.
    #[serde(default)]
    pub resume: Option<Resume>,
    /// `--sparse`: send the file's holes as hole frames ([`sparse`])
    /// rather than as zeros. A file with a hole is then sent whole, never
    /// as a delta (the copy instructions would fill its holes).
    #[serde(default)]
    pub sparse: bool,
}

/// A prefix the requester already holds (`--partial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Bytes held: the prefix `[0, len)`.
    pub len: u64,
    /// BLAKE3 digest of those bytes.
    pub digest: [u8; 32],
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
    pub paths: Vec<RawPath>,
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
    /// The whole file, zstd-compressed (`-z`): `data` is a zstd frame, or
    /// a segment of one, of exactly `meta.size` bytes, whose BLAKE3 digest is `digest`. The
    /// receiver turns it into [`SmallFile::Data`] with
    /// [`compress::SmallDecoder`], which caps the output at `meta.size`.
    Compressed {
        /// Metadata of the file as opened.
        meta: FileMeta,
        /// The compressed bytes.
        data: bytes::Bytes,
        /// BLAKE3 digest of the file's bytes (not of `data`).
        digest: [u8; 32],
        /// `data` continues the zstd stream of the reply's previous
        /// `Compressed` file (without it, `data` starts a stream): it
        /// decodes only after every file of that stream before it
        /// (docs/protocol.md §12).
        linked: bool,
    },
}

/// Arguments of `digests`: registered files whose BLAKE3 digests the
/// caller wants (`--checksum`), at most [`MAX_DIGEST_PATHS`] of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestArgs {
    /// Absolute paths of registered files.
    pub paths: Vec<RawPath>,
}

/// Most paths one `digests` call may name.
pub const MAX_DIGEST_PATHS: usize = 1024;

/// One file of a `digests` reply (in request order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileDigest {
    /// The BLAKE3 digest of the file's bytes as read.
    Digest([u8; 32]),
    /// Refused (unregistered, not a regular file) or unreadable: why.
    Failed(String),
}

/// A cumulative acknowledgement: `received` bytes of the transfer have been
/// written by the requester. Sent as a control frame to [`FetchReply::ack`].
pub type Ack = u64;

/// Control messages on a transfer's data channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMsg {
    /// All data has been sent.
    End {
        /// The file's size.
        size: u64,
        /// BLAKE3 digest of the sender's whole file (with a delta or a
        /// resume too: of the file, not of what was sent).
        digest: [u8; 32],
    },
    /// The transfer was abandoned; the requester must discard what it has.
    Abort {
        /// Why.
        reason: String,
    },
    /// Answer to [`FetchArgs::resume`], before any data: the data starts at
    /// `from` — the requester's prefix length if the sender's bytes there
    /// have the same digest, else 0 (start over).
    Start {
        /// Offset of the first byte that will be sent.
        from: u64,
    },
}

/// Registers what makes a context a file target: the receiving side of a
/// push (`ferrogen.files.target`) and the serving side of a pull
/// (`ferrogen.files.source`). A child program passes this (or a function
/// that calls it) to [`crate::connect::child::run`].
pub fn serve_transfers(services: &crate::service::Services, router: &crate::router::Router) {
    plan::register_service(services, router);
    source::register_service(services, router);
    relay::register_service(services, router);
}

/// Hex form of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::RawPath;

    #[test]
    fn a_raw_path_is_encoded_as_a_string_is_and_keeps_every_byte() {
        let text = postcard::to_stdvec(&"/tmp/ä".to_string()).expect("encode");
        let raw = postcard::to_stdvec(&RawPath::from("/tmp/ä")).expect("encode");
        assert_eq!(raw, text, "a UTF-8 path reads the same either way");
        for bytes in [&b"d\xff"[..], b"d\xfe", b"", b"\x80/\xc3"] {
            let p = RawPath::from_bytes(bytes.to_vec());
            let wire = postcard::to_stdvec(&p).expect("encode");
            let back: RawPath = postcard::from_bytes(&wire).expect("decode");
            assert_eq!(back.as_bytes(), bytes);
        }
        let a = RawPath::from_bytes(b"d\xff".to_vec());
        let b = RawPath::from_bytes(b"d\xfe".to_vec());
        assert_eq!(a.escaped(), "d\\xff");
        assert_ne!(a.escaped(), b.escaped(), "distinct names stay distinct");
        assert_eq!(a.hex(), "64ff");
    }
}
