//! Where in-order data goes: written and hashed inline (a one-chunk
//! file) or handed to a [`DiskWriter`] thread.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::ReceiveError;
use super::disk_writer::DiskWriter;
use super::pending::{PendingFile, io_err};
use super::write::put;
use crate::files::FetchReply;
use crate::files::meta::FileMeta;
use crate::files::place::{self};
use crate::files::reassembly::Piece;
use crate::router::Router;

/// Where in-order data goes: hashed and written here (with the offset of
/// the next byte), or handed to a [`DiskWriter`] thread.
pub(super) enum Sink {
    Inline(
        Box<blake3::Hasher>,
        u64,
        Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ),
    Thread(DiskWriter),
}

impl Sink {
    /// A sink for `meta.size` bytes whose first `from` are already in
    /// `pending`'s file (digested by `hasher`), copying from `old`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pending: &mut PendingFile,
        meta: &FileMeta,
        router: &Router,
        reply: &FetchReply,
        from: u64,
        hasher: blake3::Hasher,
        old: Option<Arc<File>>,
        early_writeback: bool,
        written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ) -> Sink {
        // A file of more than one chunk is written by its own blocking
        // thread, so this context's runtime goes back to reading the stream
        // while the previous chunk is hashed and written (the two used to
        // take turns on one thread). A one-chunk file is written right
        // here: a thread hand-off would cost more than the write.
        match pending.file.take() {
            Some(file) if meta.size > crate::files::CHUNK_DATA as u64 => {
                Sink::Thread(DiskWriter::start(
                    file,
                    router.clone(),
                    reply.ack,
                    early_writeback,
                    from,
                    hasher,
                    old,
                    written,
                ))
            }
            file => {
                pending.file = file;
                pending.old = old;
                Sink::Inline(Box::new(hasher), from, written)
            }
        }
    }

    pub(super) async fn write(
        &mut self,
        pending: &PendingFile,
        piece: Piece,
        dest: &Path,
    ) -> Result<(), ReceiveError> {
        match self {
            Sink::Inline(hasher, at, written) => {
                if let Some(f) = pending.file.as_ref() {
                    let mut buf = Vec::new();
                    put(f, pending.old.as_deref(), &piece, *at, hasher, &mut buf)
                        .map_err(io_err(dest, "write"))?;
                }
                *at += piece.len();
                if let Some(w) = written {
                    w.send_replace(*at);
                }
                Ok(())
            }
            Sink::Thread(writer) => {
                if writer.tx.send(piece).await.is_ok() {
                    return Ok(());
                }
                // The thread stopped early because a write failed: collect
                // its error. The sink is not used again after an error.
                let Sink::Thread(writer) =
                    std::mem::replace(self, Sink::Inline(Default::default(), 0, None))
                else {
                    unreachable!("matched above");
                };
                match writer.finish(dest).await {
                    Err(e) => Err(e),
                    Ok(_) => Err(ReceiveError::Io {
                        dest: place::show(dest),
                        op: "write",
                        source: std::io::Error::other("disk writer stopped early"),
                    }),
                }
            }
        }
    }
}
