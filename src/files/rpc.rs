//! The calls of the FileService and of a push's target, as typed methods
//! ([`Rpc`]): the service's side registers each with
//! `ServiceBuilder::serve`, callers use `Router::call`, and both name the
//! constant here — so a method's name, its argument and its reply are
//! written once (docs/protocol.md §12). A pull's source has its own
//! beside its service (`source::OFFER`, `source::OFFER_MORE`).

use crate::call::Rpc;

use super::outcome::EntryResult;
use super::spec::{PushBatch, PushEnd, PushOpened, PushPlan};
use super::{
    DigestArgs, FILE_SERVICE, FetchArgs, FetchReply, FetchSmallArgs, FileDigest, SmallFile,
    TARGET_SERVICE,
};

/// FileService: allows `path` to be served (parents only).
pub const REGISTER: Rpc<String, ()> = Rpc::new(FILE_SERVICE, "register");
/// FileService: allows everything beneath a directory to be served.
pub const REGISTER_PREFIX: Rpc<String, ()> = Rpc::new(FILE_SERVICE, "register_prefix");
/// FileService: starts a windowed transfer of one file to the caller's sender.
pub const FETCH: Rpc<FetchArgs, FetchReply> = Rpc::new(FILE_SERVICE, "fetch");
/// FileService: many small files in one reply.
pub const FETCH_SMALL: Rpc<FetchSmallArgs, Vec<SmallFile>> = Rpc::new(FILE_SERVICE, "fetch_small");
/// FileService: the BLAKE3 digests of registered files (`-c`).
pub const DIGESTS: Rpc<DigestArgs, Vec<FileDigest>> = Rpc::new(FILE_SERVICE, "digests");

/// Push target: applies a whole plan sent as one message.
pub const PUSH: Rpc<PushPlan, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push");
/// Push target: opens a streamed push's session.
pub const PUSH_OPEN: Rpc<PushPlan, PushOpened> = Rpc::new(TARGET_SERVICE, "push_open");
/// Push target: applies a session's next entries.
pub const PUSH_BATCH: Rpc<PushBatch, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push_batch");
/// Push target: ends a session (directory metadata, `--delete`).
pub const PUSH_CLOSE: Rpc<PushEnd, Vec<EntryResult>> = Rpc::new(TARGET_SERVICE, "push_close");
/// Push target: the user interrupted; put nothing more in place.
pub const CANCEL: Rpc<(), ()> = Rpc::new(TARGET_SERVICE, "cancel");
