//! The FileService's calls as typed methods ([`Rpc`]): the service
//! registers each with `ServiceBuilder::serve`, callers use `Router::call`,
//! and both name the constant here — so a method's name, its argument and
//! its reply are written once (docs/protocol.md §12). A push target's
//! calls are beside their types (`spec::PUSH_OPEN`…), a pull source's
//! beside its service (`source::OFFER`, `source::OFFER_MORE`).

use crate::call::Rpc;

use super::{
    DigestArgs, FILE_SERVICE, FetchArgs, FetchReply, FetchSmallArgs, FileDigest, SmallFile,
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
