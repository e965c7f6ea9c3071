//! The data loop: decodes frames (data, compressed, copy, hole), hands
//! them to the reassembly, and writes what it releases, in order.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::ReceiveError;
use super::pending::{PendingFile, io_err};
use super::sink::Sink;
use crate::channel::ChannelError;
use crate::files::compress::{ChunkDecoder, FrameLog, Opened};
use crate::files::delta;
use crate::files::meta::FileMeta;
use crate::files::place::{self};
use crate::files::reassembly::{Piece, Reassembly, Started};
use crate::files::{FetchReply, TransferMsg};
use crate::router::Router;
use crate::wire::{Enc, control};

/// One file's data loop: what it was asked for, and where it has got.
struct DataLoop<'a> {
    router: &'a Router,
    reply: &'a FetchReply,
    dest: PathBuf,
    dest_s: String,
    meta: FileMeta,
    /// The delta's old file and its size.
    basis: Option<(Arc<File>, u64)>,
    /// The partial file's prefix and its digest state, until the sender
    /// says where its data starts.
    resume: Option<(u64, blake3::Hasher)>,
    early_writeback: bool,
    sparse: bool,
    written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    frames: Option<Arc<FrameLog>>,
    /// Order, bounds and the end are the reassembly's; this loop decodes
    /// frames and writes what it releases.
    order: Reassembly,
    /// What the reassembly released, to be written (reused).
    ready: Vec<Piece>,
    chunks: ChunkDecoder,
    linked: Linker,
}

/// Receives the data of the transfer `reply` answers into `pending`'s
/// file, through `sink`, and checks its size and digest.
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_data(
    router: &Router,
    rx: &mut crate::channel::Receiver,
    reply: &FetchReply,
    pending: &mut PendingFile,
    sink: &mut Option<Sink>,
    basis: Option<(Arc<File>, u64)>,
    resume: Option<(u64, blake3::Hasher)>,
    early_writeback: bool,
    sparse: bool,
    written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    frames: Option<Arc<FrameLog>>,
) -> Result<(), ReceiveError> {
    let dest = pending.dest.shown().to_path_buf();
    let dest_s = place::show(&dest);
    let meta = reply.meta.clone();
    let order = Reassembly::new(meta.size, resume.as_ref().map(|(len, _)| *len));
    let mut dl = DataLoop {
        router,
        reply,
        linked: Linker {
            dest: dest_s.clone(),
            before: None,
        },
        dest,
        dest_s,
        meta,
        basis,
        resume,
        early_writeback,
        sparse,
        written,
        frames,
        order,
        ready: Vec::new(),
        chunks: ChunkDecoder::default(),
    };
    if dl.resume.is_none() {
        *sink = Some(dl.new_sink(pending, 0, blake3::Hasher::new()));
    }
    while !dl.order.is_complete() {
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    ChannelError::Dead(reason) => reason.to_string(),
                    e => e.to_string(),
                };
                return Err(ReceiveError::Interrupted {
                    dest: dl.dest_s,
                    received: dl.order.received(),
                    expected: dl.meta.size,
                    reason,
                });
            }
        };
        match frame.enc {
            Enc::Bin => dl.on_data(pending, sink, &frame.payload).await?,
            Enc::Control => {
                let msg: TransferMsg =
                    control::decode_frame(&frame).map_err(|e| dl.mismatch(e.to_string()))?;
                match msg {
                    TransferMsg::End { size, digest } => dl.order.on_end(size, digest),
                    TransferMsg::Abort { reason } => {
                        return Err(ReceiveError::Aborted {
                            dest: dl.dest_s,
                            reason,
                        });
                    }
                    TransferMsg::Start { from } => dl.on_start(pending, sink, from).await?,
                }
            }
            Enc::Text => {}
        }
    }
    dl.finish(pending, sink).await
}

impl DataLoop<'_> {
    fn mismatch(&self, detail: String) -> ReceiveError {
        ReceiveError::Mismatch {
            dest: place::show(&self.dest),
            detail,
        }
    }

    /// A sink for the data from `from` on, the bytes before it digested
    /// by `hasher`.
    fn new_sink(&self, pending: &mut PendingFile, from: u64, hasher: blake3::Hasher) -> Sink {
        Sink::new(
            pending,
            &self.meta,
            self.router,
            self.reply,
            from,
            hasher,
            self.basis.as_ref().map(|(f, _)| f.clone()),
            self.early_writeback,
            self.written.clone(),
        )
    }

    /// A data frame: decoded, taken in order, and what that releases
    /// written.
    async fn on_data(
        &mut self,
        pending: &mut PendingFile,
        sink: &mut Option<Sink>,
        payload: &Bytes,
    ) -> Result<(), ReceiveError> {
        let (offset, piece) = self.decode(payload)?;
        // A relay keeps a compressed chunk as it came, once it
        // decoded and was taken in order (below).
        let keep = match (&self.frames, &piece) {
            (Some(_), Piece::Data(d)) if crate::files::compress::is_compressed(payload) => {
                Some(d.len() as u64)
            }
            _ => None,
        };
        let now = unix_ns();
        if pending.data_span_ns.0 == 0 {
            pending.data_span_ns.0 = now;
        }
        pending.data_span_ns.1 = now;
        let from = self.order.received();
        self.order
            .on_piece(offset, piece, &mut self.ready)
            .map_err(|e| self.mismatch(e.0))?;
        if let (Some(log), Some(len)) = (&self.frames, keep) {
            log.record(
                offset,
                len,
                self.meta.size,
                &payload[crate::files::OFFSET_LEN..],
                0,
            );
        }
        if self.ready.is_empty() {
            return Ok(());
        }
        let Some(s) = sink.as_mut() else {
            return Err(self.mismatch("data before the transfer started".into()));
        };
        self.write_ready(pending, s, from).await?;
        if let Sink::Inline(..) = s {
            self.reply
                .ack
                .send_control(self.router, &self.order.received());
        }
        Ok(())
    }

    /// What a data frame carries: a hole (`--sparse`), a copy from the
    /// old file (a delta), or data, perhaps compressed; checked against
    /// what was asked for.
    fn decode(&mut self, payload: &Bytes) -> Result<(u64, Piece), ReceiveError> {
        let limit = self.order.limit();
        Ok(
            match (
                crate::files::sparse::parse_hole(payload),
                delta::parse_copy(payload),
            ) {
                (Some(hole), _) => {
                    let (offset, len) = hole.map_err(|e| self.mismatch(e.to_string()))?;
                    if !self.sparse {
                        return Err(self.mismatch(format!(
                            "hole frame at offset {offset}, but --sparse was not asked for"
                        )));
                    }
                    (offset, Piece::Hole(len))
                }
                (None, Some(copy)) => {
                    let (offset, from, len) = copy.map_err(|e| self.mismatch(e.to_string()))?;
                    let Some((_, old_size)) = &self.basis else {
                        return Err(self.mismatch(format!(
                            "copy instruction at offset {offset}, but no delta was asked for"
                        )));
                    };
                    if len == 0 || len > delta::MAX_COPY || from.saturating_add(len) > *old_size {
                        return Err(self.mismatch(format!(
                            "copy instruction of {len} bytes from {from} does not fit the old file ({old_size} bytes)"
                        )));
                    }
                    (offset, Piece::Copy { from, len })
                }
                (None, None) => match self.chunks.open_any(payload, limit) {
                    Ok((offset, Opened::Data(data))) => (offset, Piece::Data(data)),
                    Ok((offset, Opened::Linked { zstd, len })) => {
                        (offset, Piece::Linked { zstd, len })
                    }
                    Err(e) => return Err(self.mismatch(e.to_string())),
                },
            },
        )
    }

    /// `Start`: where the sender's data begins, after the partial file's
    /// prefix or (if the sender's bytes differ) from scratch.
    async fn on_start(
        &mut self,
        pending: &mut PendingFile,
        sink: &mut Option<Sink>,
        from: u64,
    ) -> Result<(), ReceiveError> {
        let started = self
            .order
            .on_start(from, &mut self.ready)
            .map_err(|e| self.mismatch(e.0))?;
        let Some((_, hasher)) = self.resume.take() else {
            return Err(self.mismatch("unexpected start of data".into()));
        };
        let hasher = match started {
            Started::AfterPrefix => hasher,
            Started::FromScratch => {
                // The sender's bytes differ: start over.
                if let Some(f) = pending.file.as_ref() {
                    f.set_len(0)
                        .map_err(io_err(&self.dest, "truncate partial file"))?;
                }
                blake3::Hasher::new()
            }
        };
        let s = sink.insert(self.new_sink(pending, from, hasher));
        self.write_ready(pending, s, from).await?;
        if self.order.received() > from
            && let Sink::Inline(..) = s
        {
            self.reply
                .ack
                .send_control(self.router, &self.order.received());
        }
        Ok(())
    }

    /// Writes what the reassembly released, from `at` on, linked chunks
    /// decoded on the way.
    async fn write_ready(
        &mut self,
        pending: &PendingFile,
        s: &mut Sink,
        mut at: u64,
    ) -> Result<(), ReceiveError> {
        let size = self.meta.size;
        for piece in self.ready.drain(..) {
            let piece = self
                .linked
                .settle(at, piece, size, self.frames.as_deref())?;
            at += piece.len();
            s.write(pending, piece, &self.dest).await?;
        }
        Ok(())
    }

    /// All arrived: the writer's digest checked against the sender's.
    async fn finish(
        self,
        pending: &mut PendingFile,
        sink: &mut Option<Sink>,
    ) -> Result<(), ReceiveError> {
        let (_, digest) = self.order.finish().map_err(|e| self.mismatch(e.0))?;
        let received = self.order.received();
        let got = match sink.take() {
            Some(Sink::Inline(hasher, ..)) => *hasher.finalize().as_bytes(),
            Some(Sink::Thread(writer)) => {
                let (file, got) = writer.finish(&self.dest).await?;
                pending.file = Some(file);
                got
            }
            None => return Err(self.mismatch("no data".into())),
        };
        if got != digest {
            return Err(self.mismatch(format!(
                "digest {} does not match the sender's {}",
                crate::files::hex(&got),
                crate::files::hex(&digest)
            )));
        }
        pending.bytes = received;
        pending.digest = got;
        Ok(())
    }
}

/// Decodes linked `-z` chunks ([`crate::files::compress::LINKED`]) as they are
/// released in file order: each against the data piece just before it.
pub(super) struct Linker {
    pub(super) dest: String,
    /// The last data piece released: where it ends, and its bytes.
    pub(super) before: Option<(u64, bytes::Bytes)>,
}

impl Linker {
    /// `piece`, released at `at` of a file of `size` bytes, as it is to be
    /// written: a linked chunk decoded (and, at a relay, kept as it came
    /// in `frames`). Fails if a linked chunk does not follow a data piece
    /// or does not decode to what it declared.
    pub(super) fn settle(
        &mut self,
        at: u64,
        piece: Piece,
        size: u64,
        frames: Option<&crate::files::compress::FrameLog>,
    ) -> Result<Piece, ReceiveError> {
        let piece = match piece {
            Piece::Linked { zstd, len } => {
                let before = match &self.before {
                    Some((end, b)) if *end == at => b,
                    _ => {
                        return Err(ReceiveError::Mismatch {
                            dest: self.dest.clone(),
                            detail: format!(
                                "compressed chunk at offset {at} refers to data before it that was not sent"
                            ),
                        });
                    }
                };
                let data =
                    crate::files::compress::decode_linked(at, &zstd, len, before).map_err(|e| {
                        ReceiveError::Mismatch {
                            dest: self.dest.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                if let Some(log) = frames {
                    log.record(at, len, size, &zstd, before.len() as u64);
                }
                Piece::Data(data)
            }
            other => other,
        };
        self.before = match &piece {
            Piece::Data(d) => Some((at + d.len() as u64, d.clone())),
            _ => None,
        };
        Ok(piece)
    }
}

pub(super) fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
