//! The sender's matcher: the new file in, copies of the receiver's
//! blocks and literal data out.

use std::collections::{HashMap, HashSet};

use super::checksum::Rolling;
use super::{
    Basis, BasisError, FILTER_BITS, LITERAL_FLUSH, MAX_COPY, Op, STRONG_LEN, strong, weak,
};

/// What a [`Matcher`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchStats {
    /// Bytes sent as copies.
    pub copied: u64,
    /// Bytes sent as literal data.
    pub literal: u64,
    /// Strong digests computed on weak hits.
    pub strong_checks: u64,
    /// Bytes hashed for strong digests that matched nothing.
    pub miss_bytes: u64,
    /// Matching was stopped because failed strong checks used up the budget.
    pub gave_up: bool,
}

/// The sender's matcher: fed the new file in order, emits [`Op`]s that
/// rebuild it from the basis.
pub struct Matcher {
    block_len: usize,
    blocks: usize,
    /// Length of the last block (equal to `block_len` unless short).
    tail_len: usize,
    weaks: Vec<u32>,
    strongs: Vec<[u8; STRONG_LEN]>,
    filter: Vec<u64>,
    weak_set: HashSet<u32>,
    by_sum: HashMap<(u32, [u8; STRONG_LEN]), u32>,
    /// Unconsumed bytes: `buf[head..pos]` is pending literal data,
    /// `buf[pos..]` the window and look-ahead.
    buf: Vec<u8>,
    head: usize,
    pos: usize,
    /// New-file offset of `buf[head]`.
    offset: u64,
    /// Checksum of `buf[pos..pos + block_len]`, when known.
    roll: Option<Rolling>,
    /// The window at `pos` was already looked up (and missed).
    checked: bool,
    /// The block to try first at `pos` (the one after the last match).
    next: Option<usize>,
    /// A copy not yet emitted, to merge with the next adjacent match.
    pending: Option<(u64, u64, u64)>,
    budget: u64,
    stats: MatchStats,
}

impl Matcher {
    /// A matcher against `basis` (validated here), giving up matching once
    /// strong digests that matched nothing have covered `budget` bytes.
    pub fn new(basis: &Basis, budget: u64) -> Result<Matcher, BasisError> {
        basis.validate()?;
        let blocks = basis.blocks() as usize;
        let block_len = basis.block_len as usize;
        let tail_len = (basis.size - (blocks as u64 - 1) * block_len as u64) as usize;
        let mut m = Matcher {
            block_len,
            blocks,
            tail_len,
            weaks: Vec::with_capacity(blocks),
            strongs: Vec::with_capacity(blocks),
            filter: vec![0u64; 1 << (FILTER_BITS - 6)],
            weak_set: HashSet::with_capacity(blocks),
            by_sum: HashMap::with_capacity(blocks),
            buf: Vec::new(),
            head: 0,
            pos: 0,
            offset: 0,
            roll: None,
            checked: false,
            next: None,
            pending: None,
            budget,
            stats: MatchStats::default(),
        };
        for i in 0..blocks {
            let (w, s) = basis.sum(i);
            m.weaks.push(w);
            m.strongs.push(s);
            // The full-size window never matches a short last block: it is
            // found by its own checks (after the block before it, or at the
            // very end of the file).
            if i + 1 < blocks || tail_len == block_len {
                let bit = filter_bit(w);
                m.filter[bit / 64] |= 1 << (bit % 64);
                m.weak_set.insert(w);
                m.by_sum.entry((w, s)).or_insert(i as u32);
            }
        }
        Ok(m)
    }

    /// What the matcher has done so far.
    pub fn stats(&self) -> MatchStats {
        self.stats
    }

    /// Feeds the next bytes of the new file; appends the ops they settle.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Op>) {
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.pos -= self.head;
            self.head = 0;
        }
        self.buf.extend_from_slice(data);
        self.run(false, out);
    }

    /// The file has ended: appends the remaining ops.
    pub fn finish(&mut self, out: &mut Vec<Op>) {
        self.run(true, out);
        self.pos = self.buf.len();
        self.flush_literal(out);
        self.flush_copy(out);
        self.buf.clear();
        self.head = 0;
        self.pos = 0;
    }

    fn block_len_of(&self, j: usize) -> usize {
        if j + 1 == self.blocks {
            self.tail_len
        } else {
            self.block_len
        }
    }

    /// Checks the window at `pos` of `len` bytes against block `j` alone:
    /// by its strong digest directly, which costs less than the weak
    /// checksum first (XXH3 runs at twice the weak sum's rate) on the path
    /// every block of an unchanged run takes. A miss here happens once per
    /// match at most, and counts against the budget like any other.
    fn try_block(&mut self, j: usize, len: usize) -> bool {
        let w = &self.buf[self.pos..self.pos + len];
        self.stats.strong_checks += 1;
        if strong(w) == self.strongs[j] {
            return true;
        }
        self.miss(len);
        false
    }

    fn miss(&mut self, len: usize) {
        self.stats.miss_bytes += len as u64;
        if self.stats.miss_bytes > self.budget {
            self.stats.gave_up = true;
        }
    }

    fn run(&mut self, eof: bool, out: &mut Vec<Op>) {
        let bl = self.block_len;
        loop {
            if self.stats.gave_up {
                self.pos = self.buf.len();
                self.flush_literal(out);
                return;
            }
            let avail = self.buf.len() - self.pos;
            // 1. Right after a match: the next block, at the next position.
            if let Some(j) = self.next {
                let len = self.block_len_of(j);
                if avail < len && !eof {
                    return;
                }
                self.next = None;
                if avail >= len && self.try_block(j, len) {
                    self.matched(j, len, out);
                    continue;
                }
            }
            // 2. The rolling search, a block-sized window at every offset.
            if avail < bl {
                if !eof {
                    return;
                }
                self.match_tail(out);
                return;
            }
            let mut r = match self.roll {
                Some(r) => r,
                None => {
                    self.checked = false;
                    Rolling::new(&self.buf[self.pos..self.pos + bl])
                }
            };
            loop {
                if !self.checked {
                    let w = r.digest();
                    let bit = filter_bit(w);
                    if self.filter[bit / 64] & (1 << (bit % 64)) != 0 && self.weak_set.contains(&w)
                    {
                        self.checked = true;
                        self.stats.strong_checks += 1;
                        let s = strong(&self.buf[self.pos..self.pos + bl]);
                        if let Some(&j) = self.by_sum.get(&(w, s)) {
                            self.roll = None;
                            self.matched(j as usize, bl, out);
                            break;
                        }
                        self.miss(bl);
                        if self.stats.gave_up {
                            break;
                        }
                    }
                    self.checked = true;
                }
                // Slide one byte, if the byte entering is here.
                if self.pos + bl >= self.buf.len() {
                    self.roll = Some(r);
                    if !eof {
                        return;
                    }
                    // At the end: the window shrinks below a block.
                    self.roll = None;
                    self.pos += 1;
                    break;
                }
                r.roll(self.buf[self.pos], self.buf[self.pos + bl]);
                self.pos += 1;
                self.checked = false;
                if self.pos - self.head >= LITERAL_FLUSH {
                    self.flush_literal(out);
                }
            }
        }
    }

    /// At the end of the file, fewer than a block's bytes left: a short
    /// last block of the basis may still match the file's last bytes.
    fn match_tail(&mut self, out: &mut Vec<Op>) {
        let j = self.blocks - 1;
        let len = self.tail_len;
        if len < self.block_len && self.buf.len() - self.pos >= len {
            let start = self.buf.len() - len;
            let w = &self.buf[start..];
            if weak(w) == self.weaks[j] {
                self.stats.strong_checks += 1;
                if strong(w) == self.strongs[j] {
                    self.pos = start;
                    self.matched(j, len, out);
                    return;
                }
                self.miss(len);
            }
        }
        self.pos = self.buf.len();
        self.flush_literal(out);
    }

    /// Block `j` (`len` bytes) matched at `pos`.
    fn matched(&mut self, j: usize, len: usize, out: &mut Vec<Op>) {
        self.flush_literal(out);
        let at = self.offset;
        let from = j as u64 * self.block_len as u64;
        let len64 = len as u64;
        match &mut self.pending {
            Some((o, f, l)) if *o + *l == at && *f + *l == from && *l + len64 <= MAX_COPY => {
                *l += len64;
            }
            _ => {
                self.flush_copy(out);
                self.pending = Some((at, from, len64));
            }
        }
        self.stats.copied += len64;
        self.pos += len;
        self.head = self.pos;
        self.offset += len64;
        self.roll = None;
        self.checked = false;
        self.next = (j + 1 < self.blocks).then_some(j + 1);
    }

    /// Emits `buf[head..pos]` as literal data.
    fn flush_literal(&mut self, out: &mut Vec<Op>) {
        if self.pos == self.head {
            return;
        }
        self.flush_copy(out);
        let data = self.buf[self.head..self.pos].to_vec();
        let n = data.len() as u64;
        out.push(Op::Literal {
            offset: self.offset,
            data,
        });
        self.stats.literal += n;
        self.offset += n;
        self.head = self.pos;
    }

    fn flush_copy(&mut self, out: &mut Vec<Op>) {
        if let Some((offset, from, len)) = self.pending.take() {
            out.push(Op::Copy { offset, from, len });
        }
    }
}

fn filter_bit(w: u32) -> usize {
    // Mixed so that both 16-bit halves count.
    (w.wrapping_mul(0x9e37_79b1) >> (32 - FILTER_BITS)) as usize
}
