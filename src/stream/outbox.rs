//! The outbound queue of one stream: control frames before bulk data, a
//! channel's frames in order, caps on what a peer can make it hold.
//!
//! Plain data and notifications, no I/O: the stream's writer task drains it
//! ([`super`]), and the router pushes into it without depending on the
//! stream's tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::wire::{ContextId, Enc, Frame, Handle};

/// Identifies a stream within one router.
pub type StreamId = u64;

/// Bulk bytes a local producer may queue on one stream before it waits.
pub const BULK_HIGH_WATER: usize = 1024 * 1024;

/// Largest window of unacknowledged bytes a transfer may use
/// ([`crate::files::window`]); `--window` and `--window-cap` are bounded
/// by it, so every hop can size its cap without being told.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;

/// Most bulk bytes (frame headers included) queued on one stream: one
/// maximal window plus slack for small files sent whole. A correct peer
/// reads its data and acknowledges only what it read, so the bytes queued
/// for it never exceed the window; more means it lies or stopped reading,
/// and the stream is closed.
pub const BULK_CAP: usize = MAX_WINDOW as usize + 16 * 1024 * 1024;

/// Most control bytes (calls, replies, acknowledgements, dead messages)
/// queued on one stream. Local service replies wait below
/// [`REPLY_HIGH_WATER`]; what a correct peer has in flight besides is a few
/// small-file batches (4 × 1 MiB per target behind a hop).
pub const CONTROL_CAP: usize = 32 * 1024 * 1024;

/// Control bytes queued on a stream above which a service reply waits
/// before it is queued (so a caller that stops reading stalls only its own
/// calls).
pub const REPLY_HIGH_WATER: usize = 4 * 1024 * 1024;

/// Most control frames written in one system call.
pub(crate) const MAX_BATCH: usize = 64;

#[derive(Default)]
struct Queues {
    control: VecDeque<Frame>,
    bulk: VecDeque<Frame>,
    bulk_bytes: usize,
    /// Bytes of non-`Bin` frames queued (in either queue).
    control_bytes: usize,
    /// Why the outbox was closed for overflowing, for the writer to report.
    overflow: Option<String>,
    /// Frames in `bulk` per channel (`dst_id`, `handle`).
    bulk_channels: HashMap<(ContextId, Handle), usize>,
    closed: bool,
}

/// The outbound queue of one stream: control frames first, then bulk.
#[derive(Default)]
pub struct Outbox {
    queues: Mutex<Queues>,
    writer_wake: Notify,
    room: Notify,
    closed_wake: Notify,
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

    /// Queues a frame. Returns `false` (and drops the frame) if the stream
    /// is closed — or is closed now because the frame would take its queue
    /// past [`BULK_CAP`] or [`CONTROL_CAP`] (the peer stopped reading).
    pub fn push(&self, frame: Frame) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        let len = frame.wire_len();
        let over = if frame.enc == Enc::Bin {
            (q.bulk_bytes + len > BULK_CAP).then_some(("bulk", q.bulk_bytes, BULK_CAP))
        } else {
            (q.control_bytes + len > CONTROL_CAP).then_some((
                "control",
                q.control_bytes,
                CONTROL_CAP,
            ))
        };
        if let Some((what, queued, cap)) = over {
            let why = format!(
                "the peer is not reading: {queued} bytes of {what} frames already queued \
                 for it and a {len}-byte frame would exceed the cap of {cap}"
            );
            drop(q);
            self.close_with(Some(why));
            return false;
        }
        let channel = (frame.dst_id, frame.handle);
        if frame.enc != Enc::Bin {
            q.control_bytes += len;
        }
        if frame.enc == Enc::Bin || q.bulk_channels.contains_key(&channel) {
            if frame.enc == Enc::Bin {
                q.bulk_bytes += len;
            }
            *q.bulk_channels.entry(channel).or_default() += 1;
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

    /// Waits until fewer than `limit` control bytes are queued (or the
    /// stream closed): for a producer of replies, so that a peer that does
    /// not read them stalls only its own calls.
    pub async fn wait_control_room(&self, limit: usize) {
        loop {
            let notified = self.room.notified();
            {
                let q = self.lock();
                if q.closed || q.control_bytes < limit {
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

    /// Control bytes queued and not yet written.
    pub fn control_bytes(&self) -> usize {
        self.lock().control_bytes
    }

    /// Why the outbox closed itself, if it overflowed (see [`Outbox::push`]).
    pub fn overflow(&self) -> Option<String> {
        self.lock().overflow.clone()
    }

    /// Closes the outbox: queued frames are dropped, later pushes refused,
    /// the writer and every producer waiting for room are woken.
    pub fn close(&self) {
        self.close_with(None);
    }

    fn close_with(&self, overflow: Option<String>) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        q.closed = true;
        q.overflow = overflow;
        q.control.clear();
        q.bulk.clear();
        q.bulk_bytes = 0;
        q.control_bytes = 0;
        q.bulk_channels.clear();
        drop(q);
        self.writer_wake.notify_one();
        self.room.notify_waiters();
        self.closed_wake.notify_waiters();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the outbox is closed (its stream lost or shut down):
    /// for a producer that waits on something else (say acknowledgements)
    /// and must also notice that the stream it feeds is gone.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_wake.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The next frames to write: every queued control frame (up to a batch),
    /// or else exactly one frame of the bulk queue (a bulk frame, or a
    /// control frame keeping its place behind its channel's bulk frames).
    /// `false` once closed.
    pub(super) async fn next_batch(&self, out: &mut Vec<Frame>) -> bool {
        loop {
            let notified = self.writer_wake.notified();
            {
                let mut q = self.lock();
                if q.closed {
                    return false;
                }
                while out.len() < MAX_BATCH {
                    match q.control.pop_front() {
                        Some(f) => {
                            q.control_bytes -= f.wire_len();
                            out.push(f);
                        }
                        None => break,
                    }
                }
                if out.is_empty() {
                    if let Some(f) = q.bulk.pop_front() {
                        if f.enc == Enc::Bin {
                            q.bulk_bytes -= f.wire_len();
                        } else {
                            q.control_bytes -= f.wire_len();
                        }
                        let channel = (f.dst_id, f.handle);
                        if let Some(n) = q.bulk_channels.get_mut(&channel) {
                            *n -= 1;
                            if *n == 0 {
                                q.bulk_channels.remove(&channel);
                            }
                        }
                        out.push(f);
                        drop(q);
                        self.room.notify_waiters();
                        return true;
                    }
                } else {
                    drop(q);
                    self.room.notify_waiters();
                    return true;
                }
            }
            notified.await;
        }
    }
}
