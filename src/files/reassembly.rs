//! The receiver's reassembly of one transfer, sans-IO: pieces arrive with
//! their offsets, in any order (stripes deliver independently), and leave
//! in file order, ready to be written; everything that does not fit the
//! transfer is refused with the reason.
//!
//! The driver (`receive.rs`) decodes frames into [`Piece`]s, hands them
//! here, and writes what comes out; it knows nothing of order. Held
//! (out-of-order) data is bounded by [`MAX_HELD`]: the sender never has
//! more than its window unacknowledged and acknowledgements count only
//! what is contiguous, so an honest sender stays far below it.

use std::collections::BTreeMap;

/// Most out-of-order bytes held while waiting for an earlier piece: the
/// largest window a sender may use, plus slack.
pub const MAX_HELD: usize = 80 << 20;

/// What holding one copy instruction or hole costs (a hostile sender could
/// send millions of them, each small).
const SMALL_PIECE_COST: usize = 64;

/// One piece of the new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes from the sender.
    Data(bytes::Bytes),
    /// Bytes of the old file (a delta's copy instruction).
    Copy {
        /// Offset in the old file.
        from: u64,
        /// How many.
        len: u64,
    },
    /// That many zero bytes left as a hole (`--sparse`).
    Hole(u64),
    /// A `-z` chunk compressed against the data piece before it, to be
    /// decoded once released in order (`compress::decode_linked`).
    Linked {
        /// Its zstd frame.
        zstd: bytes::Bytes,
        /// The file bytes it declares.
        len: u64,
    },
}

impl Piece {
    /// File bytes it stands for.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Copy { len, .. } | Piece::Hole(len) | Piece::Linked { len, .. } => *len,
        }
    }

    /// True for a piece of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn held_cost(&self) -> usize {
        match self {
            Piece::Data(d) => d.len(),
            Piece::Copy { .. } | Piece::Hole(_) => SMALL_PIECE_COST,
            Piece::Linked { zstd, .. } => zstd.len().max(SMALL_PIECE_COST),
        }
    }
}

/// Why the sender's data cannot be this file's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

/// What a resume's `Start` means for the file received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The prefix held is good: data follows it.
    AfterPrefix,
    /// The sender's bytes differ: the prefix must be discarded and the
    /// file received from offset 0.
    FromScratch,
}

/// One transfer's reassembly.
#[derive(Debug)]
pub struct Reassembly {
    /// Size announced in the fetch reply.
    announced: u64,
    /// Where data starts: `None` until a resume's `Start` says.
    base: Option<u64>,
    /// A resume's prefix length, until `Start` answers it.
    resuming: Option<u64>,
    /// File bytes released in order so far (from offset 0).
    received: u64,
    held: BTreeMap<u64, Piece>,
    held_bytes: usize,
    end: Option<(u64, [u8; 32])>,
}

impl Reassembly {
    /// A transfer of a file announced at `announced` bytes; `resuming`:
    /// the prefix length held, whose fate the sender's `Start` decides.
    pub fn new(announced: u64, resuming: Option<u64>) -> Reassembly {
        Reassembly {
            announced,
            base: if resuming.is_some() { None } else { Some(0) },
            resuming,
            received: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            end: None,
        }
    }

    /// File bytes released in order so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The most bytes a piece may reach: `End`'s size once known, else
    /// the announced size.
    pub fn limit(&self) -> u64 {
        self.end.map(|(s, _)| s).unwrap_or(self.announced)
    }

    /// A piece at `offset`. Pieces that are now in order (this one and
    /// any held ones it joins up with) are appended to `ready`.
    pub fn on_piece(
        &mut self,
        offset: u64,
        piece: Piece,
        ready: &mut Vec<Piece>,
    ) -> Result<(), Mismatch> {
        let (len, limit) = (piece.len(), self.limit());
        if offset.saturating_add(len) > limit || (self.base.is_some() && offset < self.received) {
            return Err(Mismatch(format!(
                "chunk at {offset}+{len} does not fit (announced {limit} bytes, {} already written)",
                self.received
            )));
        }
        if self.base.is_none() || offset > self.received {
            // Ahead of a piece still travelling on another stripe (or of
            // the sender's `Start`): hold it.
            self.held_bytes += piece.held_cost();
            if self.held.insert(offset, piece).is_some() || self.held_bytes > MAX_HELD {
                return Err(Mismatch(format!(
                    "duplicate or excessive out-of-order data at offset {offset}"
                )));
            }
            return Ok(());
        }
        self.received += len;
        ready.push(piece);
        self.release(ready);
        Ok(())
    }

    /// Moves held pieces that now follow in order to `ready`.
    fn release(&mut self, ready: &mut Vec<Piece>) {
        while let Some(next) = self.held.remove(&self.received) {
            self.held_bytes -= next.held_cost();
            self.received += next.len();
            ready.push(next);
        }
    }

    /// The sender's answer to a resume: data starts at `from`. Held
    /// pieces that now follow in order are appended to `ready`.
    pub fn on_start(&mut self, from: u64, ready: &mut Vec<Piece>) -> Result<Started, Mismatch> {
        let Some(len) = self.resuming.take() else {
            return Err(Mismatch("unexpected start of data".into()));
        };
        let started = if from == len {
            Started::AfterPrefix
        } else if from == 0 {
            Started::FromScratch
        } else {
            return Err(Mismatch(format!(
                "data would start at {from}, but {len} bytes are held"
            )));
        };
        if self.held.range(..from).next().is_some() {
            return Err(Mismatch(format!("data before offset {from}")));
        }
        self.base = Some(from);
        self.received = from;
        self.release(ready);
        Ok(started)
    }

    /// The sender's `End`: the file's size and digest.
    pub fn on_end(&mut self, size: u64, digest: [u8; 32]) {
        self.end = Some((size, digest));
    }

    /// True once `End` has come and every byte before it was released.
    pub fn is_complete(&self) -> bool {
        matches!(self.end, Some((size, _)) if self.base.is_some() && self.received >= size)
    }

    /// After the last piece: the size and digest the sender vouched for,
    /// if everything adds up.
    pub fn finish(&self) -> Result<(u64, [u8; 32]), Mismatch> {
        let (size, digest) = self.end.unwrap_or((0, [0; 32]));
        if self.end.is_none() || size != self.announced || self.received != size {
            return Err(Mismatch(format!(
                "announced {} bytes, sender counted {size}, received {}",
                self.announced, self.received
            )));
        }
        Ok((size, digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, byte: u8) -> Piece {
        Piece::Data(bytes::Bytes::from(vec![byte; n]))
    }

    fn feed(r: &mut Reassembly, offset: u64, p: Piece) -> Result<Vec<Piece>, Mismatch> {
        let mut ready = Vec::new();
        r.on_piece(offset, p, &mut ready).map(|()| ready)
    }

    #[test]
    fn reordered_pieces_leave_in_file_order() {
        let mut r = Reassembly::new(30, None);
        // Three stripes: the third piece first, then the second, then the first.
        assert_eq!(feed(&mut r, 20, data(10, 3)).unwrap(), vec![]);
        assert_eq!(feed(&mut r, 10, data(10, 2)).unwrap(), vec![]);
        assert_eq!(r.received(), 0);
        let out = feed(&mut r, 0, data(10, 1)).unwrap();
        assert_eq!(out, vec![data(10, 1), data(10, 2), data(10, 3)]);
        assert_eq!(r.received(), 30);
        assert!(!r.is_complete(), "no End yet");
        r.on_end(30, [7; 32]);
        assert!(r.is_complete());
        assert_eq!(r.finish(), Ok((30, [7; 32])));
    }

    #[test]
    fn an_end_that_overtakes_data_waits_for_it() {
        let mut r = Reassembly::new(20, None);
        feed(&mut r, 0, data(10, 1)).unwrap();
        r.on_end(20, [1; 32]);
        assert!(!r.is_complete());
        assert!(r.finish().is_err(), "finishing early is a mismatch");
        feed(&mut r, 10, data(10, 2)).unwrap();
        assert!(r.is_complete());
        assert_eq!(r.finish(), Ok((20, [1; 32])));
    }

    #[test]
    fn duplicates_overlaps_and_late_data_are_refused() {
        let mut r = Reassembly::new(40, None);
        feed(&mut r, 0, data(10, 1)).unwrap();
        // Late: behind what was already released.
        assert!(feed(&mut r, 0, data(10, 1)).is_err());
        let mut r = Reassembly::new(40, None);
        feed(&mut r, 0, data(10, 1)).unwrap();
        // Overlapping what was released.
        assert!(feed(&mut r, 5, data(10, 1)).is_err());
        let mut r = Reassembly::new(40, None);
        feed(&mut r, 20, data(10, 1)).unwrap();
        // The same held offset twice.
        assert!(feed(&mut r, 20, data(10, 1)).is_err());
    }

    #[test]
    fn nothing_past_the_announced_size_or_the_end() {
        let mut r = Reassembly::new(10, None);
        assert!(
            feed(&mut r, 5, data(6, 0)).is_err(),
            "past the announced size"
        );
        assert!(
            feed(&mut r, u64::MAX, data(1, 0)).is_err(),
            "offset overflow"
        );
        let mut r = Reassembly::new(10, None);
        r.on_end(5, [0; 32]);
        assert!(feed(&mut r, 0, data(6, 0)).is_err(), "past End's size");
        feed(&mut r, 0, data(5, 0)).unwrap();
        assert!(r.is_complete());
        // End's size must agree with the announced size.
        assert!(r.finish().is_err());
    }

    #[test]
    fn held_data_is_bounded() {
        let mut r = Reassembly::new(u64::MAX / 2, None);
        let piece = 8 << 20;
        let mut at = 1u64;
        let mut refused = false;
        for _ in 0..(MAX_HELD / piece + 2) {
            if feed(&mut r, at, data(piece, 0)).is_err() {
                refused = true;
                break;
            }
            at += piece as u64;
        }
        assert!(refused, "holding more than MAX_HELD must fail");
        // Many tiny copy instructions are costed, not free.
        let mut r = Reassembly::new(u64::MAX / 2, None);
        let n = MAX_HELD / SMALL_PIECE_COST + 1;
        let refused = (0..n as u64)
            .any(|k| feed(&mut r, 1 + k * 2, Piece::Copy { from: 0, len: 1 }).is_err());
        assert!(refused);
    }

    #[test]
    fn a_resume_holds_data_until_start_then_continues_or_restarts() {
        let mut r = Reassembly::new(100, Some(40));
        assert_eq!(
            feed(&mut r, 40, data(10, 1)).unwrap(),
            vec![],
            "held until Start"
        );
        let mut ready = Vec::new();
        assert_eq!(r.on_start(40, &mut ready), Ok(Started::AfterPrefix));
        assert_eq!(ready, vec![data(10, 1)]);
        assert_eq!(r.received(), 50);

        let mut r = Reassembly::new(100, Some(40));
        let mut ready = Vec::new();
        assert_eq!(r.on_start(0, &mut ready), Ok(Started::FromScratch));
        assert_eq!(r.received(), 0);

        let mut r = Reassembly::new(100, Some(40));
        assert!(
            r.on_start(20, &mut Vec::new()).is_err(),
            "neither 0 nor the prefix"
        );
        let mut r = Reassembly::new(100, Some(40));
        feed(&mut r, 10, data(10, 1)).unwrap();
        assert!(
            r.on_start(40, &mut Vec::new()).is_err(),
            "data before the start offset"
        );
        let mut r = Reassembly::new(100, None);
        assert!(
            r.on_start(0, &mut Vec::new()).is_err(),
            "Start without a resume"
        );
    }
}
