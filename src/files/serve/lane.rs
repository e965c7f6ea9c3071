//! One stream's lane: its turn-taking, what its path has shown, and the
//! credit a handed-over transfer still holds on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::files::turns::Turns;

use super::{FileService, lock};
use crate::files::compress::Tuner;
use crate::files::window::{PathEstimate, Window};
use crate::stream::StreamId;

/// One stream's turn-taking and what its path has shown so far.
pub(super) struct Lane {
    pub(super) turn: Arc<Turns>,
    pub(super) estimate: Mutex<Option<PathEstimate>>,
    /// The compression level this path has shown it affords (`-z`).
    pub(super) tuner: Mutex<Tuner>,
    /// Wire bytes still in flight of transfers that sent their end and
    /// handed the turn on ([`SendMachine::hand_over`]): the transfer
    /// holding the turn counts them against its window.
    pub(super) handed_over: AtomicU64,
    /// Woken when some of those are acknowledged.
    pub(super) credit_freed: tokio::sync::Notify,
}

/// A handed-over transfer's share of its lane's `handed_over` bytes; what
/// is still counted is released when it drops (done, failed or cancelled),
/// so a transfer that ends badly never holds the next one's credit.
pub(super) struct HandedOver {
    pub(super) lane: Arc<Lane>,
    pub(super) owed: u64,
}

impl HandedOver {
    pub(super) fn new(lane: Arc<Lane>, owed: u64) -> HandedOver {
        lane.handed_over.fetch_add(owed, Ordering::AcqRel);
        HandedOver { lane, owed }
    }

    /// This transfer now has `in_flight` wire bytes unacknowledged.
    pub(super) fn update(&mut self, in_flight: u64) {
        let freed = self.owed.saturating_sub(in_flight);
        if freed > 0 {
            self.owed -= freed;
            self.lane.handed_over.fetch_sub(freed, Ordering::AcqRel);
            // One waiter at most (the turn's holder); a stored permit
            // covers the race with its check.
            self.lane.credit_freed.notify_one();
        }
    }
}

impl Drop for HandedOver {
    fn drop(&mut self) {
        self.update(0);
    }
}

impl FileService {
    pub(super) fn lane(&self, stream: StreamId) -> Arc<Lane> {
        lock(&self.inner.lanes)
            .entry(stream)
            .or_insert_with(|| {
                Arc::new(Lane {
                    turn: Turns::new(),
                    estimate: Mutex::new(None),
                    tuner: Mutex::new(Tuner::default()),
                    handed_over: AtomicU64::new(0),
                    credit_freed: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// The window the next transfer on `stream` would start with.
    pub fn window_for(&self, stream: StreamId) -> u64 {
        let lane = self.lane(stream);
        let est = lock(&lane.estimate).clone();
        Window::with_estimate(
            self.inner.config.sizing,
            est.unwrap_or_else(|| PathEstimate::new(self.inner.config.sizing)),
        )
        .limit()
    }
}
