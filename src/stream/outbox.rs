//! The outbound queue of one stream: control frames before bulk data, a
//! channel's frames in order, caps on what a peer can make it hold.
//!
//! Plain data and notifications, no I/O: the stream's writer task drains it
//! ([`super`]), and the router pushes into it without depending on the
//! stream's tasks. The rules (order, batches, caps, close) are `Queues`, a
//! plain value tested without a runtime; [`Outbox`] adds the wake-ups.

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
    /// Wire bytes of every frame handed to the writer so far.
    taken: u64,
}

/// What [`Queues::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    /// Queued.
    Queued,
    /// Refused: the queues were closed before.
    Refused,
    /// Refused, and the queues are closed now: the frame would have taken
    /// them past a cap (the reason says which).
    Overflowed(String),
}

/// The queues' rules, with no waking: [`Outbox`] adds the notifications.
/// Plain data, tested without a runtime.
impl Queues {
    fn push(&mut self, frame: Frame) -> Pushed {
        if self.closed {
            return Pushed::Refused;
        }
        let len = frame.wire_len();
        let over = if frame.enc == Enc::Bin {
            (self.bulk_bytes + len > BULK_CAP).then_some(("bulk", self.bulk_bytes, BULK_CAP))
        } else {
            (self.control_bytes + len > CONTROL_CAP).then_some((
                "control",
                self.control_bytes,
                CONTROL_CAP,
            ))
        };
        if let Some((what, queued, cap)) = over {
            let why = format!(
                "the peer is not reading: {queued} bytes of {what} frames already queued \
                 for it and a {len}-byte frame would exceed the cap of {cap}"
            );
            self.close(Some(why.clone()));
            return Pushed::Overflowed(why);
        }
        let channel = (frame.dst_id, frame.handle);
        if frame.enc != Enc::Bin {
            self.control_bytes += len;
        }
        // A control frame of a channel with bulk frames queued keeps its
        // place behind them (a channel's frames stay in order).
        if frame.enc == Enc::Bin || self.bulk_channels.contains_key(&channel) {
            if frame.enc == Enc::Bin {
                self.bulk_bytes += len;
            }
            *self.bulk_channels.entry(channel).or_default() += 1;
            self.bulk.push_back(frame);
        } else {
            self.control.push_back(frame);
        }
        Pushed::Queued
    }

    /// Moves the next frames to write into `out`: every queued control
    /// frame (up to [`MAX_BATCH`]), or else one frame of the bulk queue.
    /// False if there was nothing to move.
    fn pop_batch(&mut self, out: &mut Vec<Frame>) -> bool {
        while out.len() < MAX_BATCH {
            match self.control.pop_front() {
                Some(f) => {
                    self.control_bytes -= f.wire_len();
                    self.taken += f.wire_len() as u64;
                    out.push(f);
                }
                None => break,
            }
        }
        if !out.is_empty() {
            return true;
        }
        let Some(f) = self.bulk.pop_front() else {
            return false;
        };
        if f.enc == Enc::Bin {
            self.bulk_bytes -= f.wire_len();
        } else {
            self.control_bytes -= f.wire_len();
        }
        let channel = (f.dst_id, f.handle);
        if let Some(n) = self.bulk_channels.get_mut(&channel) {
            *n -= 1;
            if *n == 0 {
                self.bulk_channels.remove(&channel);
            }
        }
        self.taken += f.wire_len() as u64;
        out.push(f);
        true
    }

    /// Drops everything queued; later pushes are refused. False if it was
    /// closed already.
    fn close(&mut self, overflow: Option<String>) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.overflow = overflow;
        self.control.clear();
        self.bulk.clear();
        self.bulk_bytes = 0;
        self.control_bytes = 0;
        self.bulk_channels.clear();
        true
    }
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

    /// Wire bytes of the frames handed to this stream's writer so far: what
    /// the stream has carried out (a stripe's share of a transfer, say).
    pub fn bytes_sent(&self) -> u64 {
        self.lock().taken
    }

    /// Queues a frame. Returns `false` (and drops the frame) if the stream
    /// is closed — or is closed now because the frame would take its queue
    /// past [`BULK_CAP`] or [`CONTROL_CAP`] (the peer stopped reading).
    pub fn push(&self, frame: Frame) -> bool {
        let pushed = self.lock().push(frame);
        match pushed {
            Pushed::Queued => {
                self.writer_wake.notify_one();
                true
            }
            Pushed::Refused => false,
            Pushed::Overflowed(_) => {
                self.woken_closed();
                false
            }
        }
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
        if self.lock().close(overflow) {
            self.woken_closed();
        }
    }

    /// Wakes the writer and everyone waiting for room or for the close.
    fn woken_closed(&self) {
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
                if q.pop_batch(out) {
                    drop(q);
                    self.room.notify_waiters();
                    return true;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(enc: Enc, handle: Handle, len: usize) -> Frame {
        Frame::new(7, handle, enc, Bytes::from(vec![0u8; len]))
    }

    fn handles_of(out: &[Frame]) -> Vec<Handle> {
        out.iter().map(|f| f.handle).collect()
    }

    #[tokio::test]
    async fn bytes_sent_counts_what_the_writer_took() {
        let o = Outbox::new();
        let (c, b) = (frame(Enc::Control, 1, 10), frame(Enc::Bin, 2, 1000));
        let want = (c.wire_len() + b.wire_len()) as u64;
        assert!(o.push(b) && o.push(c));
        assert_eq!(o.bytes_sent(), 0, "queued is not sent");
        // As the writer takes them: a batch, written, cleared.
        let mut out = Vec::new();
        for _ in 0..2 {
            assert!(o.next_batch(&mut out).await);
            out.clear();
        }
        assert_eq!(o.bytes_sent(), want);
    }

    #[test]
    fn control_goes_before_bulk_in_batches() {
        let mut q = Queues::default();
        assert_eq!(q.push(frame(Enc::Bin, 1, 100)), Pushed::Queued);
        assert_eq!(q.push(frame(Enc::Control, 2, 10)), Pushed::Queued);
        assert_eq!(q.push(frame(Enc::Control, 3, 10)), Pushed::Queued);
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out));
        assert_eq!(handles_of(&out), [2, 3], "every control frame at once");
        out.clear();
        assert!(q.pop_batch(&mut out));
        assert_eq!(handles_of(&out), [1], "then one bulk frame");
        out.clear();
        assert!(!q.pop_batch(&mut out));
        assert_eq!((q.bulk_bytes, q.control_bytes), (0, 0));
    }

    #[test]
    fn a_channels_control_frame_keeps_its_place_behind_its_bulk() {
        // The end of a transfer (a control frame on the data channel) must
        // not overtake the data queued before it.
        let mut q = Queues::default();
        q.push(frame(Enc::Bin, 5, 100));
        q.push(frame(Enc::Control, 5, 10));
        q.push(frame(Enc::Control, 6, 10));
        let mut order = Vec::new();
        let mut out = Vec::new();
        while q.pop_batch(&mut out) {
            order.extend(out.drain(..).map(|f| (f.handle, f.enc)));
        }
        assert_eq!(order, [(6, Enc::Control), (5, Enc::Bin), (5, Enc::Control)]);
        assert!(q.bulk_channels.is_empty());
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_frames() {
        let mut q = Queues::default();
        for h in 0..(MAX_BATCH as u32 + 3) {
            q.push(frame(Enc::Control, h, 1));
        }
        let mut out = Vec::new();
        q.pop_batch(&mut out);
        assert_eq!(out.len(), MAX_BATCH);
        out.clear();
        q.pop_batch(&mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn past_the_bulk_cap_the_queues_close_and_say_why() {
        let mut q = Queues::default();
        let big = 16 << 20;
        let mut pushed = 0;
        let why = loop {
            match q.push(frame(Enc::Bin, 1, big)) {
                Pushed::Queued => pushed += 1,
                Pushed::Overflowed(why) => break why,
                Pushed::Refused => panic!("refused before the cap"),
            }
        };
        assert_eq!(pushed, BULK_CAP / (big + crate::wire::HEADER_LEN));
        assert!(why.contains("not reading") && why.contains("bulk"), "{why}");
        assert_eq!(q.overflow.as_deref(), Some(why.as_str()));
        assert!(q.closed && q.bulk.is_empty() && q.bulk_bytes == 0);
        assert_eq!(q.push(frame(Enc::Control, 2, 1)), Pushed::Refused);
    }

    #[test]
    fn past_the_control_cap_too() {
        let mut q = Queues::default();
        let mut n = 0usize;
        while let Pushed::Queued = q.push(frame(Enc::Control, 3, 1 << 20)) {
            n += 1;
        }
        assert_eq!(n, CONTROL_CAP / ((1 << 20) + crate::wire::HEADER_LEN));
        assert!(q.overflow.as_deref().is_some_and(|w| w.contains("control")));
    }

    #[test]
    fn closing_drops_what_is_queued_once() {
        let mut q = Queues::default();
        q.push(frame(Enc::Bin, 1, 10));
        q.push(frame(Enc::Control, 2, 10));
        assert!(q.close(None));
        assert!(!q.close(Some("again".into())), "closed once");
        assert_eq!(q.overflow, None);
        let mut out = Vec::new();
        assert!(!q.pop_batch(&mut out));
        assert_eq!(q.push(frame(Enc::Bin, 1, 10)), Pushed::Refused);
    }
}
