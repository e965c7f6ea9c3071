//! One physical byte pipe between two adjacent contexts.
//!
//! A stream is two tasks around an [`Outbox`]:
//!
//! * the **reader** decodes frames with [`FrameCodec`] and hands each to the
//!   router; a decode error (corruption, an oversized frame) or EOF ends the
//!   stream and the router forgets every context behind it;
//! * the **writer** drains the outbox, always taking control frames before
//!   bulk data and never more than one bulk frame per write, so a call on a
//!   stream saturated with file data waits behind at most one data frame.
//!
//! Bulk frames are frames whose encoding is [`Enc::Bin`]. Local producers of
//! bulk data wait for room ([`Outbox::wait_bulk_room`]); frames forwarded for
//! other contexts never wait (their volume is bounded end to end by the
//! FileService window), so a reader never blocks on another stream's writer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_stream_shim::next_frame;

use crate::router::Router;
use crate::wire::{ContextId, Enc, Frame, FrameCodec, HEADER_LEN};

/// Identifies a stream within one router.
pub type StreamId = u64;

/// Bulk bytes a local producer may queue on one stream before it waits.
pub const BULK_HIGH_WATER: usize = 1024 * 1024;

/// Most control frames written in one system call.
const MAX_BATCH: usize = 64;

#[derive(Default)]
struct Queues {
    control: VecDeque<Frame>,
    bulk: VecDeque<Frame>,
    bulk_bytes: usize,
    closed: bool,
}

/// The outbound queue of one stream: control frames first, then bulk.
#[derive(Default)]
pub struct Outbox {
    queues: Mutex<Queues>,
    writer_wake: Notify,
    room: Notify,
}

impl Outbox {
    /// An empty, open outbox.
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic while holding this lock cannot leave the queues inconsistent
        // (every critical section is a single push or pop), so poisoning is
        // safe to ignore.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Returns `false` (and drops the frame) if the stream is closed.
    pub fn push(&self, frame: Frame) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        if frame.enc == Enc::Bin {
            q.bulk_bytes += frame.wire_len();
            q.bulk.push_back(frame);
        } else {
            q.control.push_back(frame);
        }
        drop(q);
        self.writer_wake.notify_one();
        true
    }

    /// Waits until fewer than `limit` bulk bytes are queued (or the stream closed).
    pub async fn wait_bulk_room(&self, limit: usize) {
        loop {
            let notified = self.room.notified();
            {
                let q = self.lock();
                if q.closed || q.bulk_bytes < limit {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Bulk bytes queued and not yet written.
    pub fn bulk_bytes(&self) -> usize {
        self.lock().bulk_bytes
    }

    /// Closes the outbox: queued frames are dropped, later pushes refused,
    /// the writer and every producer waiting for room are woken.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.control.clear();
        q.bulk.clear();
        q.bulk_bytes = 0;
        drop(q);
        self.writer_wake.notify_one();
        self.room.notify_waiters();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The next frames to write: every queued control frame (up to a batch),
    /// or else exactly one bulk frame. `None` once closed.
    async fn next_batch(&self, out: &mut Vec<Frame>) -> bool {
        loop {
            let notified = self.writer_wake.notified();
            {
                let mut q = self.lock();
                if q.closed {
                    return false;
                }
                while out.len() < MAX_BATCH {
                    match q.control.pop_front() {
                        Some(f) => out.push(f),
                        None => break,
                    }
                }
                if out.is_empty() {
                    if let Some(f) = q.bulk.pop_front() {
                        q.bulk_bytes -= f.wire_len();
                        out.push(f);
                        drop(q);
                        self.room.notify_waiters();
                        return true;
                    }
                } else {
                    return true;
                }
            }
            notified.await;
        }
    }
}

/// Writes every frame of `batch` with as few system calls as possible.
async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, batch: &[Frame]) -> std::io::Result<()> {
    let headers: Vec<[u8; HEADER_LEN]> = batch.iter().map(|f| f.header().encode()).collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for (h, f) in headers.iter().zip(batch) {
        slices.push(IoSlice::new(h));
        if !f.payload.is_empty() {
            slices.push(IoSlice::new(&f.payload));
        }
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Starts the reader and writer tasks of a stream to `remote_id` and
/// registers it with `router`. `buffered` holds bytes already read from
/// `reader` during the handshake. Returns the stream's id.
pub fn start<R, W>(
    router: &Router,
    name: String,
    remote_id: ContextId,
    is_parent: bool,
    reader: R,
    writer: W,
    buffered: BytesMut,
) -> StreamId
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Outbox::new();
    let id = router.attach_stream(remote_id, is_parent, outbox.clone(), name.clone());

    let r = router.clone();
    let wname = name.clone();
    let wbox = outbox.clone();
    tokio::spawn(async move {
        let mut writer = writer;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut failure = None;
        while wbox.next_batch(&mut batch).await {
            if let Err(e) = write_batch(&mut writer, &batch).await {
                failure = Some(format!("write to {wname} failed: {e}"));
                break;
            }
            batch.clear();
        }
        let _ = writer.shutdown().await;
        if let Some(reason) = failure {
            r.stream_lost(id, &reason);
        }
    });

    let r = router.clone();
    let codec = FrameCodec::new(router.max_message_size());
    tokio::spawn(async move {
        let reason = read_loop(&r, id, &name, reader, codec, buffered).await;
        r.stream_lost(id, &reason);
    });
    id
}

async fn read_loop<R: AsyncRead + Unpin>(
    router: &Router,
    id: StreamId,
    name: &str,
    mut reader: R,
    mut codec: FrameCodec,
    mut buf: BytesMut,
) -> String {
    loop {
        match next_frame(&mut reader, &mut codec, &mut buf).await {
            Ok(Some(frame)) => router.route(frame, Some(id)),
            Ok(None) => return format!("{name} closed the stream"),
            Err(e) => {
                tracing::error!(stream = %name, "closing stream: {e}");
                return format!("{name}: {e}");
            }
        }
    }
}

/// Reading frames straight from an `AsyncRead` with our codec. (A tiny
/// stand-in for `FramedRead` that lets the caller seed the buffer with bytes
/// read during the handshake and pick the read size.)
pub(crate) mod tokio_stream_shim {
    use bytes::BytesMut;
    use tokio::io::{AsyncRead, AsyncReadExt};
    use tokio_util::codec::Decoder;

    use crate::wire::{DecodeError, Frame, FrameCodec};

    /// Read size per system call: large enough that a 128 KiB chunk usually
    /// arrives in one read.
    pub const READ_SIZE: usize = 256 * 1024;

    /// The next frame, `Ok(None)` on a clean EOF between frames.
    pub async fn next_frame<R: AsyncRead + Unpin>(
        reader: &mut R,
        codec: &mut FrameCodec,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, DecodeError> {
        loop {
            if let Some(frame) = codec.decode(buf)? {
                return Ok(Some(frame));
            }
            if buf.capacity() - buf.len() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            let n = reader.read_buf(buf).await?;
            if n == 0 {
                return codec.decode_eof(buf);
            }
        }
    }
}
