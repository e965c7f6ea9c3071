//! What the FileService counts: per requester (progress, what was delivered)
//! and in all ([`FileStats`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{FileService, lock};
use crate::wire::ContextId;

/// What transfers to one context have delivered so far
/// ([`FileService::delivered`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Bytes of large transfers (the ones stripes carry) as the link
    /// carried them (compressed, delta instructions), acknowledged by the
    /// receiver. One-chunk files and small-file answers go on the primary
    /// stream as they are sent, unacknowledged: not counted (a burst of
    /// them queued at once would read as a rate the link never had).
    pub wire_bytes: u64,
    /// The smallest round trip the large transfers' windows measured (a
    /// ping's may wait behind the data already queued).
    pub min_rtt: Option<Duration>,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct FileStats {
    /// The most unacknowledged bytes any transfer ever had.
    pub peak_in_flight: u64,
    /// Transfers completed (fully acknowledged, or sent for small files).
    pub completed: u64,
    /// Transfers cancelled or aborted.
    pub aborted: u64,
    /// `fetch_small` calls answered (each brings many small files).
    pub small_calls: u64,
    /// Calls refused for a cap (per requester or in all).
    pub refused: u64,
    /// Acknowledgements ignored as stale or repeated.
    pub stale_acks: u64,
    /// With `compress`: chunks and small files sent compressed.
    pub compressed_chunks: u64,
    /// With `compress`: chunks and small files tried and sent raw because
    /// they did not shrink.
    pub raw_chunks: u64,
    /// File bytes sent compressed.
    pub compressed_bytes_in: u64,
    /// What they took on the wire.
    pub compressed_bytes_out: u64,
    /// A relay's tee: chunks and small files sent on compressed as they
    /// came from upstream, not compressed again.
    pub forwarded_chunks: u64,
    /// Transfers sent as a delta against the requester's old file.
    pub delta_transfers: u64,
    /// File bytes those sent as copy instructions (not sent).
    pub delta_copied_bytes: u64,
    /// File bytes those sent as literal data.
    pub delta_literal_bytes: u64,
    /// Delta transfers whose matching was stopped because the signature's
    /// weak hits kept failing the strong check (the rest went literal).
    pub delta_gave_up: u64,
    /// Transfers resumed from a prefix the requester held (`--partial`).
    pub resumed_transfers: u64,
    /// Bytes of those prefixes, verified and not sent.
    pub resumed_bytes: u64,
    /// Resume requests whose prefix did not match (sent from the start).
    pub resume_mismatches: u64,
}

/// Counters kept by the reader threads (delta and resume).
#[derive(Debug, Default)]
pub(super) struct DeltaCounters {
    pub(super) transfers: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) literal: AtomicU64,
    pub(super) gave_up: AtomicU64,
    pub(super) resumed_transfers: AtomicU64,
    pub(super) resumed_bytes: AtomicU64,
    pub(super) resume_mismatches: AtomicU64,
}

impl FileService {
    /// Bytes acknowledged so far by transfers to `context`.
    pub fn progress(&self, context: ContextId) -> u64 {
        lock(&self.inner.progress)
            .get(&context)
            .copied()
            .unwrap_or(0)
    }

    /// What transfers to `context` have delivered so far, in the bytes the
    /// link carried: what the push's stripe steps measure the path by
    /// ([`crate::connect::stripe_steps`]).
    pub fn delivered(&self, context: ContextId) -> Delivered {
        lock(&self.inner.wire_delivered)
            .get(&context)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn add_delivered(&self, context: ContextId, wire: u64, min_rtt: Option<Duration>) {
        if wire == 0 && min_rtt.is_none() {
            return;
        }
        let mut map = lock(&self.inner.wire_delivered);
        let d = map.entry(context).or_default();
        d.wire_bytes += wire;
        if let Some(r) = min_rtt {
            d.min_rtt = Some(d.min_rtt.map_or(r, |m| m.min(r)));
        }
    }

    /// Files sent whole to `context` so far.
    pub fn files_sent(&self, context: ContextId) -> u64 {
        lock(&self.inner.files_sent)
            .get(&context)
            .copied()
            .unwrap_or(0)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FileStats {
        let mut s = lock(&self.inner.stats).clone();
        let z = &self.inner.zcounters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.compressed_chunks = get(&z.compressed_chunks);
        s.raw_chunks = get(&z.raw_chunks);
        s.compressed_bytes_in = get(&z.bytes_in);
        s.compressed_bytes_out = get(&z.bytes_out);
        s.forwarded_chunks = get(&z.forwarded);
        let d = &self.inner.dcounters;
        s.delta_transfers = get(&d.transfers);
        s.delta_copied_bytes = get(&d.copied);
        s.delta_literal_bytes = get(&d.literal);
        s.delta_gave_up = get(&d.gave_up);
        s.resumed_transfers = get(&d.resumed_transfers);
        s.resumed_bytes = get(&d.resumed_bytes);
        s.resume_mismatches = get(&d.resume_mismatches);
        s
    }
}
