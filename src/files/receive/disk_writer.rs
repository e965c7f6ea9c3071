//! The disk writer: a blocking thread that writes, hashes and acknowledges
//! one file's in-order data.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::ReceiveError;
use super::pending::io_err;
use super::write::{put, put_piped};
use crate::files::hashpipe::HashPipe;
use crate::files::place::{self};
use crate::files::reassembly::Piece;
use crate::router::Router;

/// Pieces queued for the disk writer: with the window's chunks in the
/// pipe, this bounds what one file holds in memory here.
const WRITER_QUEUE: usize = 8;

/// A blocking thread that writes, hashes and acknowledges one file's
/// in-order data. Acknowledgements leave from here, after the write, so
/// the sender's window still counts only bytes that reached the file.
pub(super) struct DiskWriter {
    pub(super) tx: tokio::sync::mpsc::Sender<Piece>,
    pub(super) handle: tokio::task::JoinHandle<WriterOutcome>,
}

pub(super) struct WriterOutcome {
    pub(super) file: File,
    pub(super) hasher: blake3::Hasher,
    pub(super) error: Option<std::io::Error>,
}

impl DiskWriter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        file: File,
        router: Router,
        ack: crate::channel::Sender,
        early_writeback: bool,
        from: u64,
        mut hasher: blake3::Hasher,
        old: Option<Arc<File>>,
        observed: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    ) -> DiskWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(WRITER_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut written = from;
            let mut written_back = from;
            let mut acked = from;
            let mut buf = Vec::new();
            // A delta's copies are read from the old file here: their hash
            // goes to a thread of its own, beside the reads and writes
            // (`HashPipe`); the last of the delta's three passes is then
            // the longer of the two, not their sum. Other files keep the
            // hash on this thread (their data arrives at the link's pace).
            let mut pipe = match old {
                Some(_) => HashPipe::start(std::mem::take(&mut hasher)).ok(),
                None => None,
            };
            while let Some(piece) = rx.blocking_recv() {
                let put = match pipe.as_mut() {
                    Some(pipe) => put_piped(&file, old.as_deref(), &piece, written, pipe),
                    None => put(
                        &file,
                        old.as_deref(),
                        &piece,
                        written,
                        &mut hasher,
                        &mut buf,
                    ),
                };
                if let Err(e) = put {
                    return WriterOutcome {
                        file,
                        hasher,
                        error: Some(e),
                    };
                }
                written += piece.len();
                // One acknowledgement per piece cost a frame, a route and a
                // wake-up of the sender's pump every 128 KiB; one when the
                // queue is caught up (the window's round trip samples stay
                // as fresh) or every ACK_EVERY while it is not.
                if rx.is_empty() || written - acked >= ACK_EVERY {
                    ack.send_control(&router, &written);
                    acked = written;
                }
                if let Some(w) = &observed {
                    w.send_replace(written);
                }
                if early_writeback && written - written_back >= WRITEBACK_EVERY {
                    start_writeback(&file, written_back, written);
                    written_back = written;
                }
            }
            if acked < written {
                ack.send_control(&router, &written);
            }
            let (hasher, error) = match pipe.map(HashPipe::finish) {
                None => (hasher, None),
                Some(Ok(h)) => (h, None),
                Some(Err(why)) => (hasher, Some(std::io::Error::other(why))),
            };
            WriterOutcome {
                file,
                hasher,
                error,
            }
        });
        DiskWriter { tx, handle }
    }

    /// Waits for every queued piece to be written; returns the file and
    /// the digest of what was written.
    pub(super) async fn finish(self, dest: &Path) -> Result<(File, [u8; 32]), ReceiveError> {
        drop(self.tx);
        match self.handle.await {
            Ok(WriterOutcome {
                file,
                hasher,
                error: None,
            }) => Ok((file, *hasher.finalize().as_bytes())),
            Ok(WriterOutcome { error: Some(e), .. }) => Err(io_err(dest, "write")(e)),
            Err(e) => Err(ReceiveError::Io {
                dest: place::show(dest),
                op: "write",
                source: std::io::Error::other(format!("disk writer failed: {e}")),
            }),
        }
    }

    /// Stops after what was queued; the file back (`None` if the thread
    /// failed to run).
    pub(super) async fn stop(self) -> Option<WriterOutcome> {
        drop(self.tx);
        self.handle.await.ok()
    }
}

/// While more pieces wait, the most written before an acknowledgement.
const ACK_EVERY: u64 = 512 << 10;

/// With fsync on, how much newly written data starts its way to the disk
/// at a time.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts (does not wait for) writeback of `[from, to)`: `fadvise(DONTNEED)`
/// begins writing dirty pages (what `sync_file_range(WRITE)` does) and drops
/// only pages already clean. Without it a large file's data would all wait
/// in the page cache for the final fsync, which then took about as long as
/// the transfer itself. Advice only: ignored where unsupported (tmpfs).
pub(super) fn start_writeback(file: &File, from: u64, to: u64) {
    let _ = rustix::fs::fadvise(
        file,
        from,
        std::num::NonZeroU64::new(to - from),
        rustix::fs::Advice::DontNeed,
    );
}
