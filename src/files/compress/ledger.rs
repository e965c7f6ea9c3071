//! [`WireLedger`]: the receiver's acknowledgements (file bytes) turned
//! into wire bytes for the credit window. Apart: pure bookkeeping the
//! window's side uses, with nothing of zstd in it.

/// Translates the receiver's acknowledgements (cumulative *file* bytes)
/// into wire bytes for the credit window, so that the window, its RTT
/// samples and its queue estimate count what the link carries. Counted in
/// file bytes, a compressed stream's queue estimate was inflated by the
/// ratio and the window held the link to about a third of 100 Mbit at
/// 100 ms (docs/benchmarks.md). Without compression both counts are equal.
#[derive(Debug, Default)]
pub struct WireLedger {
    /// (file end, wire end) of each chunk sent and not yet acknowledged.
    chunks: std::collections::VecDeque<(u64, u64)>,
    file_sent: u64,
    wire_sent: u64,
    file_acked: u64,
    wire_acked: u64,
}

impl WireLedger {
    /// A ledger for a transfer whose first `from` file bytes the receiver
    /// already holds (a resume): its acknowledgements count them.
    pub fn starting_at(from: u64) -> WireLedger {
        WireLedger {
            file_sent: from,
            file_acked: from,
            ..WireLedger::default()
        }
    }

    /// Records a chunk of `file_len` file bytes sent as `wire_len`;
    /// returns `wire_len`.
    pub fn on_send(&mut self, file_len: u64, wire_len: u64) -> u64 {
        self.file_sent += file_len;
        self.wire_sent += wire_len;
        self.chunks.push_back((self.file_sent, self.wire_sent));
        wire_len
    }

    /// An acknowledgement of `file` bytes: the newly acknowledged file
    /// bytes and the cumulative wire bytes they cover (the whole chunks
    /// acknowledged), or an error if more was claimed than sent.
    pub fn on_ack(&mut self, file: u64) -> Result<(u64, u64), crate::files::window::AckBeyondSent> {
        if file > self.file_sent {
            return Err(crate::files::window::AckBeyondSent {
                acked: file,
                sent: self.file_sent,
            });
        }
        if file <= self.file_acked {
            return Ok((0, self.wire_acked));
        }
        while let Some(&(f, w)) = self.chunks.front() {
            if f > file {
                break;
            }
            self.wire_acked = w;
            self.chunks.pop_front();
        }
        let delta = file - self.file_acked;
        self.file_acked = file;
        Ok((delta, self.wire_acked))
    }

    /// File bytes sent.
    pub fn file_sent(&self) -> u64 {
        self.file_sent
    }

    /// File bytes acknowledged.
    pub fn file_acked(&self) -> u64 {
        self.file_acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_translates_file_acknowledgements_to_wire_bytes() {
        let mut l = WireLedger::default();
        assert_eq!(l.on_send(100, 30), 30);
        l.on_send(100, 100);
        l.on_send(50, 10);
        assert_eq!(l.file_sent(), 250);
        assert_eq!(l.on_ack(100), Ok((100, 30)));
        // Stale: nothing new.
        assert_eq!(l.on_ack(60), Ok((0, 30)));
        // Inside a chunk: only whole chunks count on the wire.
        assert_eq!(l.on_ack(150), Ok((50, 30)));
        assert_eq!(l.on_ack(250), Ok((100, 140)));
        assert_eq!(l.file_acked(), 250);
        assert!(l.on_ack(251).is_err());
    }
}
