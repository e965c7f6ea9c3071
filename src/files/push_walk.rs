//! A push's plan as the walk makes it, shared by `ferrogen push` and
//! [`crate::Controller::push_each`]: the walk runs on a blocking thread a
//! batch or two ahead of the calls that send it, and a plan of at most
//! one batch ([`BATCH_ENTRIES`] entries, [`BATCH_BYTES`] of plan) goes as
//! one `push` call — open, the batch and the close in one round trip
//! instead of three (0.2 s of a push over a 100 ms path, see
//! docs/benchmarks.md); a larger one streams as `push_open`, one
//! `push_batch` per batch, `push_close` (docs/protocol.md §12.2).

use std::time::Duration;

use super::plan::{PlanEntry, PushEnd, PushPlan};
use super::walk::{BATCH_BYTES, BATCH_ENTRIES, Sources, Walker};

/// How long, once the walk has made its first batch, the push waits to
/// learn whether that batch is the whole plan (then it goes as one `push`
/// call). A tree of a batch or less ends its walk within microseconds of
/// its first batch; a larger one has its second batch ready by then or
/// streams as it comes.
pub const WHOLE_WAIT: Duration = Duration::from_millis(50);

/// A batch of the walk, with the walk's totals so far.
pub struct Walked {
    /// The batch's entries.
    pub entries: Vec<PlanEntry>,
    /// Bytes of the files walked so far.
    pub bytes: u64,
    /// Files walked so far.
    pub files: u64,
}

/// Walks on a blocking thread, one or two batches ahead of whoever
/// takes them from the channel (which is the back-pressure); the thread
/// ends with the whole walk's record.
pub fn walk_in_batches(
    walker: Walker,
) -> (
    tokio::task::JoinHandle<Sources>,
    tokio::sync::mpsc::Receiver<Walked>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Walked>(2);
    let walking = tokio::task::spawn_blocking(move || {
        let mut walker = walker;
        let mut files = 0u64;
        loop {
            let entries = walker.next_batch(BATCH_ENTRIES, BATCH_BYTES);
            let done = entries.is_empty();
            files += entries
                .iter()
                .filter(|e| matches!(e, PlanEntry::File { .. }))
                .count() as u64;
            let batch = Walked {
                entries,
                bytes: walker.total_bytes(),
                files,
            };
            if done || tx.blocking_send(batch).is_err() {
                break;
            }
        }
        walker.finish()
    });
    (walking, rx)
}

/// A push's own walk, running (see [`walk_in_batches`]), with the batches
/// taken to look ahead.
pub struct Walking {
    handle: tokio::task::JoinHandle<Sources>,
    rx: tokio::sync::mpsc::Receiver<Walked>,
    ahead: std::collections::VecDeque<Walked>,
}

impl Walking {
    /// Starts the walk. Must be called inside a tokio runtime.
    pub fn start(walker: Walker) -> Walking {
        let (handle, rx) = walk_in_batches(walker);
        Walking {
            handle,
            rx,
            ahead: Default::default(),
        }
    }

    /// `Some(the only batch)` (`Some(None)`: no entries at all) when the
    /// walk ended within its first batch: the plan goes whole, as one
    /// `push` call. `None` when it makes more (the batches seen are kept
    /// for [`Walking::next`]) or did not end within [`WHOLE_WAIT`].
    pub async fn whole(&mut self) -> Option<Option<Walked>> {
        let Some(first) = self.rx.recv().await else {
            return Some(None);
        };
        match tokio::time::timeout(WHOLE_WAIT, self.rx.recv()).await {
            Ok(None) => Some(Some(first)),
            Ok(Some(second)) => {
                self.ahead.extend([first, second]);
                None
            }
            Err(_) => {
                self.ahead.push_back(first);
                None
            }
        }
    }

    /// The next batch (those [`Walking::whole`] saw first), or `None` once
    /// the walk has made them all.
    pub async fn next(&mut self) -> Option<Walked> {
        match self.ahead.pop_front() {
            Some(b) => Some(b),
            None => self.rx.recv().await,
        }
    }

    /// The whole walk's record, once it ended (`Err`: its thread failed,
    /// a bug).
    pub async fn finish(self) -> Result<Sources, tokio::task::JoinError> {
        drop(self.rx);
        self.handle.await
    }
}

/// `plan` made whole: its entries the walk's only batch (`last`), and
/// the session's end (`--delete`'s record of the walk) carried with it.
pub fn whole_plan(plan: &mut PushPlan, last: Option<Walked>, walked: &Sources) {
    plan.entries = last.map(|b| b.entries).unwrap_or_default();
    let end = push_end(0, walked);
    plan.delete.incomplete.extend(end.incomplete);
    plan.delete.keep.extend(end.keep);
}

/// How a push session ends, from the whole walk.
pub fn push_end(session: u64, walked: &Sources) -> PushEnd {
    PushEnd {
        session,
        incomplete: walked.incomplete.clone(),
        keep: walked.skipped.iter().map(|s| s.rel.clone()).collect(),
    }
}
