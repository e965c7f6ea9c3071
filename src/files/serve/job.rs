//! One fetch in progress ([`Transfer`]): how it ends, how a one-chunk file
//! is sent, what an acknowledgement does, and why a transfer is abandoned.

use std::fs::File;
use std::sync::Arc;

use tokio::sync::watch;

use super::limits::OpenSlot;
use super::read::{ReadError, ReadEvent, read_file};
use super::{FileService, lock};
use crate::channel::{ChannelError, Receiver, Sender};
use crate::files::compress::{self, ChunkEncoder};
use crate::files::meta::FileMeta;
use crate::files::tee::{Gate, SpoolError};
use crate::files::transfer::{SendError, SendMachine};
use crate::files::turns::Closed;
use crate::files::{CHUNK_DATA, Resume, TransferMsg};
use crate::router::Router;
use crate::wire::control::ControlDecodeError;
use crate::wire::{ContextId, Enc, Frame, control};

/// One fetch in progress.
pub(super) struct Transfer {
    pub(super) fs: FileService,
    pub(super) id: u64,
    pub(super) path: String,
    /// The path as asked for, byte for byte.
    pub(super) raw: crate::files::RawPath,
    pub(super) file: Arc<File>,
    pub(super) meta: FileMeta,
    /// A relay's spool file: how far it has arrived (see [`crate::files::tee`]).
    pub(super) gate: Option<Gate>,
    /// A relay's spool file: its chunks that came compressed, sent on as
    /// they came rather than compressed again.
    pub(super) frames: Option<Arc<compress::FrameLog>>,
    pub(super) to: Sender,
    /// The requester's signature of its old file, for a delta.
    pub(super) delta: Option<crate::files::delta::Basis>,
    /// The prefix the requester holds, for a resume.
    pub(super) resume: Option<Resume>,
    /// Holes sent as hole frames (`--sparse`).
    pub(super) sparse: bool,
    pub(super) requester: ContextId,
    pub(super) acks: Receiver,
    pub(super) cancel: watch::Receiver<Option<Cancelled>>,
    /// Set once the requester has been told how the transfer ended.
    pub(super) settled: bool,
    /// Acknowledgements that brought nothing new.
    pub(super) stale_acks: u64,
    /// This transfer's place in the open-transfer caps.
    pub(super) _slot: OpenSlot,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // Only reached unsettled if the pump panicked or was aborted: the
        // requester must not wait forever for an end that will not come.
        if !self.settled {
            let router = self.fs.inner.router.clone();
            self.to.send_control(
                &router,
                &TransferMsg::Abort {
                    reason: "internal error in the FileService".into(),
                },
            );
        }
    }
}

impl Transfer {
    pub(super) async fn run(mut self) {
        let router = self.fs.inner.router.clone();
        let outcome = self.pump(&router).await;
        self.settled = true;
        if self.stale_acks > 0 {
            tracing::warn!(
                "transfer of {} to {}: ignored {} stale or repeated acknowledgements",
                self.path,
                router.describe(self.requester),
                self.stale_acks
            );
        }
        let stats = &self.fs.inner.stats;
        match outcome {
            Ok(peak) => {
                if let Some(tee) = &self.fs.inner.tee {
                    tee.delivered(&self.raw);
                }
                let mut s = lock(stats);
                s.completed += 1;
                s.peak_in_flight = s.peak_in_flight.max(peak);
                drop(s);
                *lock(&self.fs.inner.files_sent)
                    .entry(self.requester)
                    .or_insert(0) += 1;
            }
            Err(abandon) => {
                let reason = abandon.to_string();
                match abandon {
                    Abandon::ByRequester(_) => tracing::debug!(
                        "transfer of {} to {} abandoned: {reason}",
                        self.path,
                        router.describe(self.requester)
                    ),
                    _ => tracing::warn!(
                        "transfer of {} to {} abandoned: {reason}",
                        self.path,
                        router.describe(self.requester)
                    ),
                }
                self.to
                    .send_control(&router, &TransferMsg::Abort { reason });
                lock(stats).aborted += 1;
            }
        }
        lock(&self.fs.inner.cancels).remove(&self.id);
    }

    pub(super) fn on_ack(&mut self, m: &mut SendMachine, f: &Frame) -> Result<(), Abandon> {
        let n: u64 = control::decode_frame(f).map_err(Abandon::BadAck)?;
        // Credit comes only from bytes really sent: an acknowledgement past
        // them ends the transfer (AckBeyondSent), a repeated or stale one
        // adds nothing and is counted (logged once, at the end). The window
        // counts wire bytes (-z): see WireLedger.
        let wire_before = m.window().acked();
        let delta =
            m.on_ack(n, std::time::Instant::now())
                .map_err(|source| Abandon::AckRefused {
                    to: self.fs.inner.router.describe(self.requester),
                    source,
                })?;
        self.fs.add_delivered(
            self.requester,
            m.window().acked() - wire_before,
            m.window().min_rtt(),
        );
        if delta == 0 {
            self.stale_acks += 1;
            lock(&self.fs.inner.stats).stale_acks += 1;
        }
        if delta > 0 {
            *lock(&self.fs.inner.progress)
                .entry(self.requester)
                .or_insert(0) += delta;
        }
        Ok(())
    }

    pub(super) async fn send_small(&mut self, router: &Router) -> Result<u64, Abandon> {
        // One pread and one fstat: cheaper right here than a round trip
        // through the blocking pool, which cost about a tenth of the CPU of
        // a 10,000-file push (fetch already opens and stats inline).
        let mut read = Vec::with_capacity(2);
        let level = self.fs.small_level(self.requester);
        let mut encoder = ChunkEncoder::new(compress::Shared::new(
            level,
            self.fs.inner.zcounters.clone(),
        ))
        .forwarding(self.frames.clone());
        let pacing = self.fs.inner.pacers.for_target(self.requester);
        if self.resume.take().is_some() {
            // Too small to be worth a resume: all of it, from the start.
            self.to
                .send_control(router, &TransferMsg::Start { from: 0 });
        }
        read_file(
            &self.file,
            &self.meta,
            pacing.chunk_len(CHUNK_DATA),
            self.sparse,
            |ev| {
                read.push(match ev {
                    ReadEvent::Chunk(data, len) => ReadEvent::Chunk(encoder.encode(data), len),
                    other => other,
                });
                true
            },
        );
        let mut sent = 0u64;
        for ev in read {
            match ev {
                ReadEvent::Chunk(data, len) => {
                    sent += len;
                    pacing.wait(data.len() as u64).await;
                    // Waits for room, like the large-file pump: a requester
                    // that does not read its one-chunk files stalls here.
                    router
                        .send_bulk(Frame::new(self.to.context, self.to.handle, Enc::Bin, data))
                        .await;
                }
                ReadEvent::Done(digest) => {
                    self.to
                        .send_control(router, &TransferMsg::End { size: sent, digest });
                    *lock(&self.fs.inner.progress)
                        .entry(self.requester)
                        .or_insert(0) += sent;
                    return Ok(sent);
                }
                ReadEvent::Failed(why) => return Err(Abandon::Read(why)),
                ReadEvent::Copy(frame, len) => {
                    // A hole frame (--sparse).
                    sent += len;
                    router
                        .send_bulk(Frame::new(self.to.context, self.to.handle, Enc::Bin, frame))
                        .await;
                }
                ReadEvent::Start(_) => {
                    return Err(Abandon::Internal {
                        path: self.path.clone(),
                        what: "unexpected read event",
                    });
                }
            }
        }
        Err(Abandon::ReaderStopped {
            path: self.path.clone(),
        })
    }
}

/// Why the service cancelled a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Cancelled {
    /// [`FileService::shutdown`].
    #[error("the controller is shutting down")]
    Shutdown,
    /// The service was dropped without saying.
    #[error("the FileService went away")]
    ServiceGone,
}

/// Waits until the transfer is cancelled; why.
pub(super) async fn wait_cancel(rx: &mut watch::Receiver<Option<Cancelled>>) -> Cancelled {
    loop {
        if let Some(why) = *rx.borrow_and_update() {
            return why;
        }
        if rx.changed().await.is_err() {
            return Cancelled::ServiceGone;
        }
    }
}

/// Why a transfer ended before its last acknowledgement. Its text is the
/// abort reason the requester is sent (its own report names the file).
#[derive(Debug, thiserror::Error)]
pub(super) enum Abandon {
    /// The requester closed the transfer (it failed on its side, or no
    /// longer wants the file): its own report says why, so this is not
    /// news here.
    #[error("the requester ended the transfer: {0}")]
    ByRequester(crate::wire::DeadReason),
    /// No stream leads to the requester any more.
    #[error("no route to {to}")]
    NoRoute {
        /// The requester.
        to: String,
    },
    /// A stripe carrying the transfer closed; its queued chunks are gone.
    #[error("a stripe to {to} was lost mid-transfer")]
    StripeLost {
        /// The requester.
        to: String,
    },
    /// The requester stopped acknowledging (the ack deadline passed).
    #[error("{to} {source}")]
    Silent {
        /// The requester.
        to: String,
        /// What the machine saw.
        #[source]
        source: SendError,
    },
    /// The requester acknowledged what was never sent.
    #[error("{to}: {source}")]
    AckRefused {
        /// The requester.
        to: String,
        /// What the machine saw.
        #[source]
        source: SendError,
    },
    /// An acknowledgement that does not decode.
    #[error("bad acknowledgement: {0}")]
    BadAck(#[source] ControlDecodeError),
    /// The acknowledgement channel closed for another reason than the
    /// requester's.
    #[error("acknowledgement channel closed: {0}")]
    AckChannel(#[source] ChannelError),
    /// Something came where only an acknowledgement could.
    #[error("unexpected acknowledgement")]
    UnexpectedAck,
    /// The service cancelled it.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// The stream's turns closed (the service is shutting down).
    #[error(transparent)]
    Turn(#[from] Closed),
    /// A relay's spool could not give the whole file.
    #[error("{path}: {source}")]
    Spool {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: SpoolError,
    },
    /// Reading the file failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The reader ended without its final word.
    #[error("{path}: reader stopped unexpectedly")]
    ReaderStopped {
        /// The file.
        path: String,
    },
    /// The reader said something the sender does not expect (a bug).
    #[error("{path}: internal error: {what}")]
    Internal {
        /// The file.
        path: String,
        /// What.
        what: &'static str,
    },
}

/// [`Abandon`] for an acknowledgement channel that ended (`Err`) or gave
/// something else than an acknowledgement.
pub(super) fn ack_channel_ended(r: Result<Frame, ChannelError>) -> Abandon {
    match r {
        Err(ChannelError::Dead(why)) => Abandon::ByRequester(why),
        Err(e) => Abandon::AckChannel(e),
        Ok(_) => Abandon::UnexpectedAck,
    }
}
