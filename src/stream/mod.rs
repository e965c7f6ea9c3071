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
//! Bulk frames are frames whose encoding is [`Enc::Bin`]. Frames of one
//! channel (`dst_id`, `handle`) keep their order: a control frame — say the
//! dead message of [`crate::channel::Sender::close`] — for a channel that
//! still has bulk frames queued waits behind them instead of overtaking its
//! own data. Local producers of
//! bulk data wait for room ([`Outbox::wait_bulk_room`]), and so do service
//! replies ([`Outbox::wait_control_room`]); frames forwarded for other
//! contexts never wait, so a reader never blocks on another stream's writer.
//!
//! Instead, every outbox is capped ([`CONTROL_CAP`], [`BULK_CAP`]): a
//! correct peer never lets that much pile up (bulk is bounded end to end by
//! the FileService window, replies by their producers waiting), so a push
//! past a cap means the peer has stopped reading — or acknowledged data it
//! never read. The stream is then closed with a reason saying so, and the
//! peer loses only its own work: no intermediary ever holds more than a
//! window's worth for it, whatever its acknowledgements claim.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

pub mod outbox;
pub(crate) mod splice;

use outbox::MAX_BATCH;
pub use outbox::{
    BULK_CAP, BULK_HIGH_WATER, CONTROL_CAP, MAX_WINDOW, Outbox, REPLY_HIGH_WATER, StreamId,
};

use crate::router::Router;
use crate::wire::{ContextId, DecodeError, Enc, Frame, FrameCodec, HEADER_LEN, Header, codec};

/// Where a stream's writer puts the bytes of its batches: copied, and —
/// for a sink that can — large payloads handed over by reference
/// ([`splice`]).
trait FrameSink {
    /// Payloads at least this long go to [`FrameSink::splice_all`]
    /// (`usize::MAX`: none do).
    const SPLICE_MIN: usize;

    /// Writes all of `slices`, copied.
    fn copy_all(
        &mut self,
        slices: &mut [IoSlice<'_>],
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Writes all of `payload` by reference.
    fn splice_all(&mut self, payload: &Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Writes every frame of `batch` with as few system calls as possible
/// (one `writev` per [`MAX_BATCH`] frames when the pipe has room, and one
/// more per spliced payload), without allocating.
async fn write_frames<S: FrameSink>(sink: &mut S, batch: &[Frame]) -> std::io::Result<()> {
    for chunk in batch.chunks(MAX_BATCH) {
        let mut headers = [[0u8; HEADER_LEN]; MAX_BATCH];
        for (h, f) in headers.iter_mut().zip(chunk) {
            *h = f.header().encode();
        }
        let mut slices = [IoSlice::new(&[]); 2 * MAX_BATCH];
        let mut n = 0;
        for (h, f) in headers.iter().zip(chunk) {
            slices[n] = IoSlice::new(h);
            n += 1;
            if f.payload.len() >= S::SPLICE_MIN {
                // Its header (and whatever came before) first.
                sink.copy_all(&mut slices[..n]).await?;
                n = 0;
                sink.splice_all(&f.payload).await?;
            } else if !f.payload.is_empty() {
                slices[n] = IoSlice::new(&f.payload);
                n += 1;
            }
        }
        sink.copy_all(&mut slices[..n]).await?;
    }
    Ok(())
}

/// Any `AsyncWrite`, everything copied.
struct Copying<W>(W);

impl<W: AsyncWrite + Unpin + Send> FrameSink for Copying<W> {
    const SPLICE_MIN: usize = usize::MAX;

    async fn copy_all(&mut self, mut rest: &mut [IoSlice<'_>]) -> std::io::Result<()> {
        while !rest.is_empty() {
            let n = self.0.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    async fn splice_all(&mut self, payload: &Bytes) -> std::io::Result<()> {
        self.0.write_all(payload).await
    }
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
    let writer = Writer::Copy(Copying(writer));
    start_with(router, name, remote_id, is_parent, reader, writer, buffered)
}

/// [`start`] for a stream whose writing side is a pipe read by a reader
/// that copies what it reads: large payloads are spliced into it
/// ([`splice`]).
pub(crate) fn start_spliced<R>(
    router: &Router,
    name: String,
    remote_id: ContextId,
    is_parent: bool,
    reader: R,
    writer: splice::SpliceWriter,
    buffered: BytesMut,
) -> StreamId
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let writer = Writer::<tokio::io::Sink>::Splice(writer);
    start_with(router, name, remote_id, is_parent, reader, writer, buffered)
}

fn start_with<R, W>(
    router: &Router,
    name: String,
    remote_id: ContextId,
    is_parent: bool,
    reader: R,
    writer: Writer<W>,
    buffered: BytesMut,
) -> StreamId
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Outbox::new();
    let id = router.attach_stream(remote_id, is_parent, outbox.clone(), name.clone());
    spawn_tasks(router, id, outbox, name, reader, writer, buffered);
    id
}

/// [`start_alias`] for a stripe whose writing side is a pipe read by a
/// reader that copies what it reads ([`splice`]).
pub(crate) fn start_alias_spliced<R>(
    router: &Router,
    name: String,
    primary: StreamId,
    reader: R,
    writer: splice::SpliceWriter,
    buffered: BytesMut,
) -> Option<StreamId>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let writer = Writer::<tokio::io::Sink>::Splice(writer);
    alias_with(router, name, primary, reader, writer, buffered)
}

fn alias_with<R, W>(
    router: &Router,
    name: String,
    primary: StreamId,
    reader: R,
    writer: Writer<W>,
    buffered: BytesMut,
) -> Option<StreamId>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Outbox::new();
    let id = router.attach_alias_stream(primary, outbox.clone(), name.clone())?;
    spawn_tasks(router, id, outbox, name, reader, writer, buffered);
    Some(id)
}

/// The writing side of a stream.
enum Writer<W> {
    /// Everything copied into `W`.
    Copy(Copying<W>),
    /// A pipe, large payloads spliced.
    Splice(splice::SpliceWriter),
}

impl<W: AsyncWrite + Unpin + Send> Writer<W> {
    async fn write_batch(&mut self, batch: &[Frame]) -> std::io::Result<()> {
        match self {
            Writer::Copy(w) => write_frames(w, batch).await,
            Writer::Splice(w) => write_frames(w, batch).await,
        }
    }

    async fn shutdown(self) {
        match self {
            Writer::Copy(Copying(mut w)) => {
                let _ = w.shutdown().await;
            }
            Writer::Splice(w) => w.finish(),
        }
    }
}

/// Starts an additional stream to the neighbour already reached by
/// `primary` (a stripe: more bandwidth to the same context). Frames arriving
/// on it are checked as if they came on `primary`; its loss loses nothing
/// but its own bandwidth.
pub fn start_alias<R, W>(
    router: &Router,
    name: String,
    primary: StreamId,
    reader: R,
    writer: W,
    buffered: BytesMut,
) -> Option<StreamId>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = Writer::Copy(Copying(writer));
    alias_with(router, name, primary, reader, writer, buffered)
}

fn spawn_tasks<R, W>(
    router: &Router,
    id: StreamId,
    outbox: Arc<Outbox>,
    name: String,
    reader: R,
    writer: Writer<W>,
    buffered: BytesMut,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let r = router.clone();
    let wname = name.clone();
    let wbox = outbox.clone();
    tokio::spawn(async move {
        let mut writer = writer;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut failure = None;
        while wbox.next_batch(&mut batch).await {
            if let Err(e) = writer.write_batch(&batch).await {
                failure = Some(format!("write to {wname} failed: {e}"));
                break;
            }
            batch.clear();
        }
        writer.shutdown().await;
        // An overflow is the cause of anything that failed after it.
        // (The reader logs an overflow, naming the stream.)
        if let Some(reason) = wbox.overflow().or(failure) {
            r.stream_lost(id, &reason);
        }
    });

    let r = router.clone();
    let codec = FrameCodec::new(router.max_message_size());
    tokio::spawn(async move {
        // A stream closed from our side (lost, overflowed, shut down) is
        // not read any further: nothing it says can be routed any more.
        let reason = tokio::select! {
            reason = read_loop(&r, id, &name, reader, codec, buffered) => reason,
            () = outbox.closed() => match outbox.overflow() {
                Some(why) => {
                    tracing::warn!(stream = %name, "closing stream: {why}");
                    format!("{name}: {why}")
                }
                None => format!("{name}: stream closed"),
            },
        };
        r.stream_lost(id, &reason);
    });
}

async fn read_loop<R: AsyncRead + Unpin>(
    router: &Router,
    id: StreamId,
    name: &str,
    mut reader: R,
    codec: FrameCodec,
    buf: BytesMut,
) -> String {
    let mut frames = FrameReader::new(codec, buf);
    loop {
        match frames.next(&mut reader).await {
            Ok(Some(frame)) => {
                let bulk = frame.payload.len() >= DIRECT_MIN;
                router.route(frame, Some(id));
                if bulk {
                    // Let the consumer (or the writer forwarding it) run
                    // before reading the next large frame: the reader
                    // cannot run ahead through the buffer pool, and the
                    // data is still in cache when it is used.
                    tokio::task::yield_now().await;
                }
            }
            Ok(None) => return format!("{name} closed the stream"),
            Err(e) => {
                tracing::error!(stream = %name, "closing stream: {e}");
                return format!("{name}: {e}");
            }
        }
    }
}

/// Payloads at least this long are read straight into a buffer of their
/// own instead of through the shared read buffer (one copy fewer, and no
/// reallocation of the read buffer around a partial frame).
const DIRECT_MIN: usize = 16 * 1024;

/// Bytes read past the end of a large payload, into its buffer's slack.
const READ_AHEAD: usize = 4 * 1024;

/// Largest payload a pooled buffer holds: one standard 128 KiB bulk frame.
const POOL_BUF: usize = 128 * 1024;

/// Payload buffers kept for reuse, per process (8 MiB at most).
const POOL_MAX: usize = 64;

/// Recycled payload buffers of [`POOL_BUF`] bytes, shared by every stream
/// of the process. A frame's payload gives its buffer back when the last
/// reference to it is dropped, so a steady flow of bulk frames reuses a few
/// warm buffers instead of asking the allocator (and, past its mmap and
/// trim thresholds, the kernel) for fresh zeroed pages every frame.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Payload lengths served from the pool: big enough that a pooled buffer
/// is not mostly waste.
fn pooled_len(len: usize) -> bool {
    (POOL_BUF / 2..=POOL_BUF).contains(&len)
}

/// An empty buffer with room for `len` bytes.
fn take_buffer(len: usize) -> Vec<u8> {
    if pooled_len(len) {
        if let Some(v) = pool().pop() {
            return v;
        }
        Vec::with_capacity(POOL_BUF + READ_AHEAD)
    } else {
        Vec::with_capacity(len + READ_AHEAD)
    }
}

/// Turns a filled buffer into a payload that goes back to the pool when
/// dropped.
fn wrap_buffer(buf: Vec<u8>) -> Bytes {
    if pooled_len(buf.len()) {
        Bytes::from_owner(Pooled(buf))
    } else {
        Bytes::from(buf)
    }
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        let mut free = pool();
        if free.len() < POOL_MAX {
            free.push(buf);
        }
    }
}

/// Decodes frames from a byte stream (the read half of a stream, and the
/// handshake before it).
///
/// Small frames are decoded out of one read buffer, many per system call.
/// Once a header announcing a payload of at least [`DIRECT_MIN`] bytes has
/// been validated by the codec, the rest of that payload is read straight
/// into a buffer of exactly its size, so it is copied once (pipe to buffer)
/// and the read buffer never holds more than [`READ_SIZE`] bytes.
pub(crate) struct FrameReader {
    codec: FrameCodec,
    buf: BytesMut,
    /// The last frame was read directly: the next one probably is too, so
    /// read only a little ahead of its header.
    direct: bool,
}

/// Bytes asked for per read into the shared buffer.
const READ_SIZE: usize = 64 * 1024;

impl FrameReader {
    fn new(codec: FrameCodec, buf: BytesMut) -> FrameReader {
        FrameReader {
            codec,
            buf,
            direct: false,
        }
    }

    /// The next frame, `Ok(None)` on a clean EOF between frames.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Option<Frame>, DecodeError> {
        loop {
            if let Some((enc, header)) = self.codec.check_header(&self.buf)? {
                let len = header.len as usize;
                if self.buf.len() >= HEADER_LEN + len {
                    return self.codec.decode(&mut self.buf);
                }
                if len >= DIRECT_MIN {
                    return self.read_direct(reader, enc, &header).await.map(Some);
                }
            }
            let want = if self.direct { READ_AHEAD } else { READ_SIZE };
            self.direct = false;
            if self.buf.capacity() - self.buf.len() < want {
                // Reclaims the old allocation when no frame still uses it.
                self.buf.reserve(READ_SIZE);
            }
            let n = reader.read_buf(&mut (&mut self.buf).limit(want)).await?;
            if n == 0 {
                return self.codec.decode_eof(&mut self.buf);
            }
        }
    }

    /// Reads the rest of a large frame whose validated header (and perhaps
    /// the start of its payload) is in the read buffer.
    async fn read_direct<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        enc: Enc,
        header: &Header,
    ) -> Result<Frame, DecodeError> {
        let len = header.len as usize;
        let mut payload = take_buffer(len);
        payload.extend_from_slice(&self.buf[HEADER_LEN..]);
        self.buf.clear();
        // Read up to READ_AHEAD bytes past the payload into its buffer's
        // slack: the next frame's header (and the start of its payload)
        // then usually comes with the same system call.
        let ahead = (payload.capacity() - len).min(READ_AHEAD);
        while payload.len() < len {
            let room = len + ahead - payload.len();
            let n = reader.read_buf(&mut (&mut payload).limit(room)).await?;
            if n == 0 {
                return Err(DecodeError::Truncated {
                    buffered: HEADER_LEN + payload.len(),
                });
            }
        }
        if payload.len() > len {
            self.buf.extend_from_slice(&payload[len..]);
            payload.truncate(len);
        }
        self.direct = true;
        let payload = wrap_buffer(payload);
        Ok(codec::frame_from(enc, header, payload))
    }
}

/// Reading frames straight from an `AsyncRead` with our codec. (A tiny
/// stand-in for `FramedRead` that lets the caller seed the buffer with bytes
/// read during the handshake.)
pub(crate) mod tokio_stream_shim {
    use bytes::BytesMut;
    use tokio::io::AsyncRead;

    use super::FrameReader;
    use crate::wire::{DecodeError, Frame, FrameCodec};

    /// The next frame, `Ok(None)` on a clean EOF between frames. Bytes read
    /// beyond it stay in `buf`.
    pub(crate) async fn next_frame<R: AsyncRead + Unpin>(
        reader: &mut R,
        codec: &mut FrameCodec,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, DecodeError> {
        let mut frames = FrameReader::new(codec.clone(), std::mem::take(buf));
        let r = frames.next(reader).await;
        *buf = frames.buf;
        r
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::{Handle, handles};

    const DATA: Handle = 2000;
    const CALLS: Handle = handles::CALL_SERVICE;

    fn bin(seq: u8) -> Frame {
        Frame::new(1, DATA, Enc::Bin, Bytes::from(vec![seq; 1024]))
    }

    fn ctl(handle: Handle, seq: u8) -> Frame {
        Frame::new(1, handle, Enc::Control, Bytes::from(vec![seq]))
    }

    async fn batch(outbox: &Outbox) -> Vec<Frame> {
        let mut out = Vec::new();
        assert!(outbox.next_batch(&mut out).await, "outbox closed");
        out
    }

    #[tokio::test]
    async fn control_frame_overtakes_queued_bulk_frames() {
        let outbox = Outbox::new();
        for i in 0..100 {
            assert!(outbox.push(bin(i)));
        }
        // The writer has taken one bulk frame when the call is queued ...
        let first = batch(&outbox).await;
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].enc, first[0].payload[0]), (Enc::Bin, 0));
        assert!(outbox.push(ctl(CALLS, 7)));
        // ... and the call is the very next write, ahead of 99 bulk frames.
        let next = batch(&outbox).await;
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].handle, next[0].payload[0]), (CALLS, 7));
        // Then the bulk frames, one per write, in order.
        for i in 1..100 {
            let b = batch(&outbox).await;
            assert_eq!(b.len(), 1);
            assert_eq!((b[0].enc, b[0].payload[0]), (Enc::Bin, i));
        }
        assert_eq!(outbox.bulk_bytes(), 0);
    }

    #[tokio::test]
    async fn control_frames_go_first_and_are_batched() {
        let outbox = Outbox::new();
        for i in 0..100 {
            outbox.push(bin(i));
        }
        for i in 0..3 {
            outbox.push(ctl(CALLS, i));
        }
        assert_eq!(outbox.bulk_bytes(), 100 * bin(0).wire_len());
        let b = batch(&outbox).await;
        let seqs: Vec<u8> = b.iter().map(|f| f.payload[0]).collect();
        assert!(b.iter().all(|f| f.enc == Enc::Control));
        assert_eq!(seqs, vec![0, 1, 2]);
        let b = batch(&outbox).await;
        assert_eq!((b.len(), b[0].enc), (1, Enc::Bin));
        assert_eq!(outbox.bulk_bytes(), 99 * bin(0).wire_len());
    }

    #[tokio::test]
    async fn a_channels_own_control_frames_stay_behind_its_data() {
        let outbox = Outbox::new();
        outbox.push(bin(0));
        outbox.push(bin(1));
        // The end of the data channel (e.g. Sender::close) must not
        // overtake the data; a call on another handle still does.
        outbox.push(Frame::dead(1, DATA, "end"));
        outbox.push(ctl(CALLS, 9));
        let order: Vec<(Handle, bool)> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                for f in batch(&outbox).await {
                    v.push((f.handle, f.is_dead()));
                }
            }
            v
        };
        assert_eq!(
            order,
            vec![(CALLS, false), (DATA, false), (DATA, false), (DATA, true)]
        );
        // Once the channel's data is written, its control frames go first
        // again.
        outbox.push(bin(2));
        let _ = batch(&outbox).await;
        outbox.push(bin(3));
        outbox.push(ctl(CALLS, 1));
        outbox.push(ctl(DATA, 1));
        let b = batch(&outbox).await;
        assert_eq!(b.iter().map(|f| f.handle).collect::<Vec<_>>(), vec![CALLS]);
        assert_eq!(batch(&outbox).await[0].enc, Enc::Bin);
        assert_eq!(batch(&outbox).await[0].handle, DATA);
        assert_eq!(outbox.bulk_bytes(), 0);
    }

    #[tokio::test]
    async fn a_push_past_a_cap_closes_the_outbox_and_says_why() {
        let outbox = Outbox::new();
        let chunk = Frame::new(1, DATA, Enc::Bin, Bytes::from(vec![0u8; 1 << 20]));
        let fit = BULK_CAP / chunk.wire_len();
        for _ in 0..fit {
            assert!(outbox.push(chunk.clone()));
        }
        assert!(outbox.overflow().is_none());
        assert!(!outbox.push(chunk.clone()), "past the bulk cap");
        assert!(outbox.is_closed());
        let why = outbox.overflow().expect("a reason");
        assert!(why.contains("not reading"), "{why}");
        // Control frames have their own, smaller cap.
        let outbox = Outbox::new();
        let reply = Frame::new(1, CALLS, Enc::Control, Bytes::from(vec![0u8; 1 << 20]));
        for _ in 0..CONTROL_CAP / reply.wire_len() {
            assert!(outbox.push(reply.clone()));
        }
        assert_eq!(
            outbox.control_bytes(),
            CONTROL_CAP / reply.wire_len() * reply.wire_len()
        );
        assert!(!outbox.push(reply));
        assert!(outbox.overflow().is_some());
    }

    #[tokio::test]
    async fn control_room_opens_as_the_writer_drains() {
        let outbox = Outbox::new();
        let reply = Frame::new(1, CALLS, Enc::Control, Bytes::from(vec![0u8; 1 << 20]));
        for _ in 0..5 {
            outbox.push(reply.clone());
        }
        let waiting = {
            let o = outbox.clone();
            tokio::spawn(async move { o.wait_control_room(REPLY_HIGH_WATER).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _ = batch(&outbox).await; // takes all five
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("room")
            .expect("task");
        assert_eq!(outbox.control_bytes(), 0);
    }

    #[tokio::test]
    async fn close_drops_the_queue_and_stops_the_writer() {
        let outbox = Outbox::new();
        outbox.push(bin(0));
        outbox.push(ctl(CALLS, 0));
        outbox.close();
        assert!(outbox.is_closed());
        assert!(!outbox.push(ctl(CALLS, 1)));
        let mut out = Vec::new();
        assert!(!outbox.next_batch(&mut out).await);
        assert!(out.is_empty());
        assert_eq!(outbox.bulk_bytes(), 0);
    }
}
