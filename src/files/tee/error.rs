//! Why a relay cannot serve a file, or its plan, from its spool.

use std::sync::Arc;

use crate::files::receive::ReceiveError;

/// Why a relay cannot serve a file (or its plan) from its spool. Cloned
/// to every reader of a spooled file, so causes are shared (`Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The upstream fetch ended (was dropped) before saying how.
    #[error("relay: the upstream fetch was abandoned")]
    Abandoned,
    /// The same, for a file being opened.
    #[error("{path}: relay: the upstream fetch was abandoned")]
    OpenAbandoned {
        /// The file asked for.
        path: String,
    },
    /// The ending was read before it was set (an internal error).
    #[error("relay: no ending")]
    NoEnding,
    /// A reader thread found no runtime to wait in.
    #[error("relay: no runtime to wait in")]
    NoRuntime,
    /// The file ended before the bytes a reader waits for.
    #[error("relay: the spooled copy is shorter than announced")]
    Shorter,
    /// No spool file could be named for the file.
    #[error("{path}: relay: spool: {source}")]
    Spool {
        /// The file fetched.
        path: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The spool file's times could not be set to the source's.
    #[error("{path}: relay: could not set the spool file's times: {source}")]
    Stamp {
        /// The file fetched.
        path: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The fetch finished but never gave the spool file.
    #[error("{path}: relay: the spool file was not opened")]
    NotOpened {
        /// The file fetched.
        path: String,
    },
    /// The upstream fetch failed.
    #[error("relay: {0}")]
    Upstream(#[source] Arc<ReceiveError>),
    /// A plan batch came out of order.
    #[error("relay: plan batch {k} out of order ({kept} kept)")]
    BatchOutOfOrder {
        /// The batch.
        k: u64,
        /// How many are kept.
        kept: usize,
    },
    /// A plan batch could not be written to the spool.
    #[error("relay: could not keep the plan: {0}")]
    KeepPlan(#[source] Arc<std::io::Error>),
    /// No such plan batch is kept.
    #[error("relay: no plan batch {0}")]
    NoBatch(u64),
    /// A kept plan batch could not be read back.
    #[error("relay: could not read the plan: {0}")]
    ReadPlan(#[source] Arc<std::io::Error>),
}
