//! The credit window: how many bytes may be sent and not yet acknowledged.
//!
//! Acknowledgements are cumulative byte counts from the final receiver, so
//! the window bounds the data buffered at every hop in between, not just on
//! the first stream. An acknowledgement for more than was sent is a protocol
//! error (it would let a peer inflate the window without limit); one for less
//! than already acknowledged is stale and ignored.

/// An acknowledgement that cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("acknowledgement of {acked} bytes, but only {sent} were sent")]
pub struct AckBeyondSent {
    /// What the peer claimed.
    pub acked: u64,
    /// What was sent.
    pub sent: u64,
}

/// Sent/acknowledged accounting for one transfer.
#[derive(Debug, Clone)]
pub struct Window {
    limit: u64,
    sent: u64,
    acked: u64,
    peak: u64,
}

impl Window {
    /// A window allowing `limit` unacknowledged bytes.
    pub fn new(limit: u64) -> Window {
        Window {
            limit: limit.max(1),
            sent: 0,
            acked: 0,
            peak: 0,
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent - self.acked
    }

    /// The most bytes ever in flight at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// True if `len` more bytes fit. A window smaller than one chunk still
    /// lets one chunk through when nothing is in flight, so it can never
    /// deadlock.
    pub fn can_send(&self, len: u64) -> bool {
        self.in_flight() + len <= self.limit || self.in_flight() == 0
    }

    /// Records `len` bytes sent.
    pub fn on_send(&mut self, len: u64) {
        self.sent += len;
        self.peak = self.peak.max(self.in_flight());
    }

    /// Records a cumulative acknowledgement; returns the newly acknowledged bytes.
    pub fn on_ack(&mut self, cumulative: u64) -> Result<u64, AckBeyondSent> {
        if cumulative > self.sent {
            return Err(AckBeyondSent {
                acked: cumulative,
                sent: self.sent,
            });
        }
        if cumulative <= self.acked {
            return Ok(0);
        }
        let delta = cumulative - self.acked;
        self.acked = cumulative;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_exceeds_limit_with_whole_chunks() {
        let mut w = Window::new(1 << 20);
        let chunk = 131_046;
        let mut sent_chunks = 0;
        while w.can_send(chunk) {
            w.on_send(chunk);
            sent_chunks += 1;
        }
        assert_eq!(sent_chunks, 8, "8 * 131046 <= 1 MiB < 9 * 131046");
        assert!(w.peak() <= 1 << 20);
        assert_eq!(w.on_ack(chunk), Ok(chunk));
        assert!(w.can_send(chunk));
    }

    #[test]
    fn ack_beyond_sent_is_refused_and_stale_is_ignored() {
        let mut w = Window::new(100);
        w.on_send(50);
        assert_eq!(w.on_ack(60), Err(AckBeyondSent { acked: 60, sent: 50 }));
        assert_eq!(w.on_ack(30), Ok(30));
        assert_eq!(w.on_ack(20), Ok(0));
        assert_eq!(w.in_flight(), 20);
    }

    #[test]
    fn tiny_window_still_moves() {
        let mut w = Window::new(10);
        assert!(w.can_send(1000));
        w.on_send(1000);
        assert!(!w.can_send(1));
    }
}
