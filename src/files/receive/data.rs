//! The data loop: decodes frames (data, compressed, copy, hole), hands
//! them to the reassembly, and writes what it releases, in order.

use std::fs::File;
use std::sync::Arc;

use super::ReceiveError;
use super::pending::{PendingFile, io_err};
use super::sink::Sink;
use crate::channel::ChannelError;
use crate::files::compress::Opened;
use crate::files::delta;
use crate::files::place::{self};
use crate::files::reassembly::{Piece, Reassembly, Started};
use crate::files::{FetchReply, TransferMsg};
use crate::router::Router;
use crate::wire::{Enc, control};

#[allow(clippy::too_many_arguments)]
pub(super) async fn receive_data(
    router: &Router,
    rx: &mut crate::channel::Receiver,
    reply: &FetchReply,
    pending: &mut PendingFile,
    sink: &mut Option<Sink>,
    basis: Option<(Arc<File>, u64)>,
    mut resume: Option<(u64, blake3::Hasher)>,
    early_writeback: bool,
    sparse: bool,
    written: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    frames: Option<Arc<crate::files::compress::FrameLog>>,
) -> Result<(), ReceiveError> {
    let dest = pending.dest.shown().to_path_buf();
    let dest = dest.as_path();
    let dest_s = place::show(dest);
    let meta = reply.meta.clone();
    let mismatch = |detail: String| ReceiveError::Mismatch {
        dest: place::show(dest),
        detail,
    };
    let old = basis.as_ref().map(|(f, _)| f.clone());
    // Order, bounds and the end are the reassembly's; this loop decodes
    // frames and writes what it releases.
    let mut order = Reassembly::new(meta.size, resume.as_ref().map(|(len, _)| *len));
    if resume.is_none() {
        *sink = Some(Sink::new(
            pending,
            &meta,
            router,
            reply,
            0,
            blake3::Hasher::new(),
            old.clone(),
            early_writeback,
            written.clone(),
        ));
    }
    let mut ready: Vec<Piece> = Vec::new();
    let mut chunks = crate::files::compress::ChunkDecoder::default();
    let mut linked = Linker {
        dest: dest_s.clone(),
        before: None,
    };
    while !order.is_complete() {
        let frame = match rx.recv().await {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    ChannelError::Dead(reason) => reason.to_string(),
                    e => e.to_string(),
                };
                return Err(ReceiveError::Interrupted {
                    dest: dest_s,
                    received: order.received(),
                    expected: meta.size,
                    reason,
                });
            }
        };
        match frame.enc {
            Enc::Bin => {
                let limit = order.limit();
                let (offset, piece) = match (
                    crate::files::sparse::parse_hole(&frame.payload),
                    delta::parse_copy(&frame.payload),
                ) {
                    (Some(hole), _) => {
                        let (offset, len) = hole.map_err(mismatch)?;
                        if !sparse {
                            return Err(mismatch(format!(
                                "hole frame at offset {offset}, but --sparse was not asked for"
                            )));
                        }
                        (offset, Piece::Hole(len))
                    }
                    (None, Some(copy)) => {
                        let (offset, from, len) = copy.map_err(mismatch)?;
                        let Some((_, old_size)) = &basis else {
                            return Err(mismatch(format!(
                                "copy instruction at offset {offset}, but no delta was asked for"
                            )));
                        };
                        if len == 0 || len > delta::MAX_COPY || from.saturating_add(len) > *old_size
                        {
                            return Err(mismatch(format!(
                                "copy instruction of {len} bytes from {from} does not fit the old file ({old_size} bytes)"
                            )));
                        }
                        (offset, Piece::Copy { from, len })
                    }
                    (None, None) => match chunks
                        .open_any(&frame.payload, limit)
                        .map_err(|e| mismatch(e.to_string()))?
                    {
                        (offset, Opened::Data(data)) => (offset, Piece::Data(data)),
                        (offset, Opened::Linked { zstd, len }) => {
                            (offset, Piece::Linked { zstd, len })
                        }
                    },
                };
                // A relay keeps a compressed chunk as it came, once it
                // decoded and was taken in order (below).
                let keep = match (&frames, &piece) {
                    (Some(_), Piece::Data(d))
                        if crate::files::compress::is_compressed(&frame.payload) =>
                    {
                        Some(d.len() as u64)
                    }
                    _ => None,
                };
                let now = unix_ns();
                if pending.data_span_ns.0 == 0 {
                    pending.data_span_ns.0 = now;
                }
                pending.data_span_ns.1 = now;
                let from = order.received();
                order
                    .on_piece(offset, piece, &mut ready)
                    .map_err(|e| mismatch(e.0))?;
                if let (Some(log), Some(len)) = (&frames, keep) {
                    log.record(
                        offset,
                        len,
                        meta.size,
                        &frame.payload[crate::files::OFFSET_LEN..],
                        0,
                    );
                }
                if ready.is_empty() {
                    continue;
                }
                let Some(s) = sink.as_mut() else {
                    return Err(mismatch("data before the transfer started".into()));
                };
                let mut at = from;
                for piece in ready.drain(..) {
                    let piece = linked.settle(at, piece, meta.size, frames.as_deref())?;
                    at += piece.len();
                    s.write(pending, piece, dest).await?;
                }
                if let Sink::Inline(..) = s {
                    reply.ack.send_control(router, &order.received());
                }
            }
            Enc::Control => {
                let msg: TransferMsg =
                    control::decode_frame(&frame).map_err(|e| mismatch(e.to_string()))?;
                match msg {
                    TransferMsg::End { size, digest } => order.on_end(size, digest),
                    TransferMsg::Abort { reason } => {
                        return Err(ReceiveError::Aborted {
                            dest: dest_s,
                            reason,
                        });
                    }
                    TransferMsg::Start { from } => {
                        let started = order
                            .on_start(from, &mut ready)
                            .map_err(|e| mismatch(e.0))?;
                        let Some((_, hasher)) = resume.take() else {
                            return Err(mismatch("unexpected start of data".into()));
                        };
                        let hasher = match started {
                            Started::AfterPrefix => hasher,
                            Started::FromScratch => {
                                // The sender's bytes differ: start over.
                                if let Some(f) = pending.file.as_ref() {
                                    f.set_len(0)
                                        .map_err(io_err(dest, "truncate partial file"))?;
                                }
                                blake3::Hasher::new()
                            }
                        };
                        let s = sink.insert(Sink::new(
                            pending,
                            &meta,
                            router,
                            reply,
                            from,
                            hasher,
                            old.clone(),
                            early_writeback,
                            written.clone(),
                        ));
                        let mut at = from;
                        for piece in ready.drain(..) {
                            let piece = linked.settle(at, piece, meta.size, frames.as_deref())?;
                            at += piece.len();
                            s.write(pending, piece, dest).await?;
                        }
                        if order.received() > from
                            && let Sink::Inline(..) = s
                        {
                            reply.ack.send_control(router, &order.received());
                        }
                    }
                }
            }
            Enc::Text => {}
        }
    }
    let (_, digest) = order.finish().map_err(|e| mismatch(e.0))?;
    let received = order.received();
    let got = match sink.take() {
        Some(Sink::Inline(hasher, ..)) => *hasher.finalize().as_bytes(),
        Some(Sink::Thread(writer)) => {
            let (file, got) = writer.finish(dest).await?;
            pending.file = Some(file);
            got
        }
        None => return Err(mismatch("no data".into())),
    };
    if got != digest {
        return Err(mismatch(format!(
            "digest {} does not match the sender's {}",
            crate::files::hex(&got),
            crate::files::hex(&digest)
        )));
    }
    pending.bytes = received;
    pending.digest = got;
    Ok(())
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
