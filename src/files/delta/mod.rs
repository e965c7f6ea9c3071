//! Delta transfer of a large changed file, after rsync: sans-IO.
//!
//! * The receiver cuts its old file (the *basis*) into blocks of
//!   [`block_len_for`] bytes and sends, per block, a weak rolling checksum
//!   and an XXH3-128 digest ([`signature`] → [`Basis`]) with its
//!   `fetch`.
//! * The sender runs its file through a [`Matcher`]: at every byte offset
//!   the weak checksum of the block-sized window is rolled on; a weak hit
//!   is confirmed by the strong digest, and a match becomes an
//!   [`Op::Copy`] of the receiver's own bytes; everything else is
//!   [`Op::Literal`] data. After a match the next block is tried first at
//!   the following position, so an unchanged run costs one checksum per
//!   block, not one per byte. Shifted data (an insertion, a deletion) is
//!   found again by the rolling search.
//! * The receiver builds the new file from its old blocks and the literal
//!   data, and checks the whole-file digest the sender reports, as for any
//!   transfer.
//!
//! The signature comes from the target and may lie. [`Basis::validate`]
//! bounds it (block size, count, length — the length is checked before
//! the bytes are copied out of the frame, see [`Sums`]); a lie can only
//! make the target's own file wrong, which the final digest catches. What
//! a lie can cost the sender is bounded too: an adversary can make every
//! offset a weak hit, so strong digests that fail are counted and, past
//! [`Matcher::new`]'s budget, matching stops and the rest is sent as
//! literal data.
//!
//! Hand-written rather than taken from a crate: `fast_rsync` and
//! `librsync` want the whole new file in memory or their own stream format,
//! with MD4 strong sums, and neither bounds the work a lying signature can
//! cause; this matcher is fed the file in pieces by the reader thread and
//! its output maps directly onto the transfer's chunks.

mod checksum;
mod matcher;
mod signature;

pub use checksum::{strong, weak};
pub use matcher::{MatchStats, Matcher};
pub use signature::{Basis, BasisError, Sums, signature, signature_of_file};

use bytes::Bytes;

use super::OFFSET_LEN;

/// Files (old or new) smaller than this are sent whole: a signature and a
/// round of matching would cost more than they save.
pub const DELTA_MIN: u64 = 64 * 1024;

/// Smallest block.
pub const MIN_BLOCK: u32 = 4 * 1024;
/// Largest block.
pub const MAX_BLOCK: u32 = 8 << 20;
/// Most blocks in a signature: with [`SUM_LEN`] bytes each, a signature is
/// at most 1.25 MiB.
pub const MAX_BLOCKS: u64 = 64 * 1024;
/// Bytes of the strong digest per block (XXH3-128, see [`strong`]).
pub const STRONG_LEN: usize = 16;
/// Bytes per block in [`Basis::sums`]: the weak checksum (u32 BE), then
/// the strong digest.
pub const SUM_LEN: usize = 4 + STRONG_LEN;

/// The offset bit that marks a copy instruction in a data frame (next to
/// [`super::compress::COMPRESSED`]).
pub const COPY: u64 = 1 << 62;
/// A copy frame's payload: `[offset | COPY][from: u64 BE][len: u64 BE]`.
pub const COPY_FRAME_LEN: usize = OFFSET_LEN + 16;
/// Most file bytes one copy instruction covers (adjacent block matches are
/// merged up to this): the receiver acknowledges once per instruction.
pub const MAX_COPY: u64 = 16 << 20;

/// Literal bytes held back at most before they are emitted, whatever
/// follows: bounds the matcher's memory (with one block of look-ahead).
const LITERAL_FLUSH: usize = 1 << 20;

/// Bits of the weak-checksum prefilter (a bitmap of 128 KiB).
const FILTER_BITS: u32 = 20;

/// The block size for a basis of `size` bytes: about √size (rsync's
/// rule), at least [`MIN_BLOCK`], and large enough for at most
/// [`MAX_BLOCKS`] blocks, in whole KiB; `None` when even [`MAX_BLOCK`]
/// would need more blocks than that (a file beyond 512 GiB).
pub fn block_len_for(size: u64) -> Option<u32> {
    let root = (size as f64).sqrt() as u64;
    let b = root
        .max(size.div_ceil(MAX_BLOCKS))
        .max(MIN_BLOCK as u64)
        .div_ceil(1024)
        * 1024;
    (b <= MAX_BLOCK as u64).then_some(b as u32)
}

/// What the sender sends for one stretch of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `len` bytes at `offset` of the new file are the receiver's old bytes
    /// at `from`.
    Copy {
        /// Offset in the new file.
        offset: u64,
        /// Offset in the old file.
        from: u64,
        /// Bytes.
        len: u64,
    },
    /// These bytes, at `offset` of the new file.
    Literal {
        /// Offset in the new file.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
}

/// The payload of a copy frame.
pub fn copy_frame(offset: u64, from: u64, len: u64) -> Bytes {
    let mut v = Vec::with_capacity(COPY_FRAME_LEN);
    v.extend_from_slice(&(offset | COPY).to_be_bytes());
    v.extend_from_slice(&from.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    Bytes::from(v)
}

/// A copy frame of another length than a copy frame's, or with another
/// mark set too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed copy instruction ({len} bytes, offset word {word:#x})")]
pub struct CopyFrameError {
    /// The frame's length.
    pub len: usize,
    /// Its offset word.
    pub word: u64,
}

/// A copy frame's `(offset, from, len)`, if `payload` is one (its offset
/// has [`COPY`] set); `Err` if it is one but malformed.
pub fn parse_copy(payload: &[u8]) -> Option<Result<(u64, u64, u64), CopyFrameError>> {
    let head: [u8; 8] = payload.get(..OFFSET_LEN)?.try_into().ok()?;
    let raw = u64::from_be_bytes(head);
    if raw & COPY == 0 {
        return None;
    }
    if raw & super::compress::COMPRESSED != 0 || payload.len() != COPY_FRAME_LEN {
        return Some(Err(CopyFrameError {
            len: payload.len(),
            word: raw,
        }));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Some(Ok((raw & !COPY, word(8), word(16))))
}

#[cfg(test)]
mod tests {
    use super::checksum::Rolling;
    use super::*;
    use proptest::prelude::*;

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Applies `ops` to `old`, checking they tile the new file in order.
    fn apply(old: &[u8], ops: &[Op]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Copy { offset, from, len } => {
                    assert_eq!(*offset, out.len() as u64, "ops out of order");
                    assert!(*len > 0 && *len <= MAX_COPY);
                    out.extend_from_slice(&old[*from as usize..(*from + *len) as usize]);
                }
                Op::Literal { offset, data } => {
                    assert_eq!(*offset, out.len() as u64, "ops out of order");
                    assert!(!data.is_empty());
                    out.extend_from_slice(data);
                }
            }
        }
        out
    }

    /// Runs the matcher over `new` fed in pieces of `piece` bytes.
    fn delta(old: &[u8], new: &[u8], block: u32, piece: usize) -> (Vec<Op>, MatchStats) {
        let basis = signature(old, old.len() as u64, block).expect("signature");
        let mut m = Matcher::new(&basis, 64 << 20).expect("valid basis");
        let mut ops = Vec::new();
        for p in new.chunks(piece.max(1)) {
            m.feed(p, &mut ops);
        }
        m.finish(&mut ops);
        (ops, m.stats())
    }

    #[test]
    fn the_rolling_checksum_equals_the_checksum_of_each_window() {
        let data = random(10_000, 3);
        let n = 4096;
        let mut r = Rolling::new(&data[..n]);
        for i in 0..data.len() - n {
            assert_eq!(r.digest(), weak(&data[i..i + n]), "at {i}");
            r.roll(data[i], data[i + n]);
        }
    }

    #[test]
    fn the_weak_checksum_equals_rsyncs_running_form() {
        // The vectorisable form must give the wire's value: rsync's
        // running sums, byte by byte.
        let running = |d: &[u8]| {
            let (mut a, mut b) = (0u32, 0u32);
            for &x in d {
                a = a.wrapping_add(x as u32);
                b = b.wrapping_add(a);
            }
            (a & 0xffff) | (b << 16)
        };
        let data = random(300_000, 11);
        for len in [0, 1, 63, 64, 65, 4095, 4096, 32 << 10, 100_001, 300_000] {
            assert_eq!(weak(&data[..len]), running(&data[..len]), "len {len}");
        }
        let ones = vec![0xffu8; 9 << 20];
        assert_eq!(weak(&ones), running(&ones), "sums that wrap");
    }

    #[test]
    fn the_threaded_signature_of_a_file_equals_the_sequential_one() {
        use std::io::Write;
        // 13 MiB and a bit: several threads' runs of blocks, and a short
        // last block.
        let data = random((13 << 20) + 777, 12);
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(&data).expect("write");
        for bl in [4096u32, 32 << 10] {
            let seq = signature(&data[..], data.len() as u64, bl).expect("signature");
            let par = signature_of_file(&f, data.len() as u64, bl).expect("signature");
            assert_eq!(par, seq, "block {bl}");
        }
        // A file shorter than claimed fails, whichever thread reads its end.
        assert!(signature_of_file(&f, data.len() as u64 + 5000, 4096).is_err());
    }

    #[test]
    fn block_size_follows_the_square_root_within_bounds() {
        assert_eq!(block_len_for(100 << 10), Some(MIN_BLOCK));
        assert_eq!(block_len_for(1 << 30), Some(32 << 10));
        // Past 4 GiB the count cap, not the root, sets the size.
        assert_eq!(block_len_for(1 << 36), Some(1 << 20));
        let b = block_len_for(3 << 35).expect("fits");
        assert!((3u64 << 35).div_ceil(b as u64) <= MAX_BLOCKS);
        assert_eq!(block_len_for(1 << 39), Some(MAX_BLOCK));
        assert_eq!(block_len_for((1 << 39) + 1), None);
    }

    #[test]
    fn an_unchanged_file_is_all_copies_merged() {
        let old = random(300_000, 1);
        let (ops, st) = delta(&old, &old, 4096, 65536);
        assert_eq!(apply(&old, &ops), old);
        assert_eq!(st.literal, 0);
        assert_eq!(ops.len(), 1, "{ops:?}");
    }

    #[test]
    fn a_change_in_place_costs_about_the_changed_blocks() {
        let old = random(1 << 20, 2);
        let mut new = old.clone();
        for b in &mut new[500_000..500_100] {
            *b ^= 0x5a;
        }
        let (ops, st) = delta(&old, &new, 4096, 100_000);
        assert_eq!(apply(&old, &ops), new);
        assert!(st.literal <= 2 * 4096, "{st:?}");
    }

    #[test]
    fn appended_data_costs_only_the_appended_bytes() {
        // The last block is short; it is still matched, right after the
        // block before it.
        let old = random(100_000, 3);
        let mut new = old.clone();
        new.extend(random(50_000, 4));
        let (ops, st) = delta(&old, &new, 4096, 8192);
        assert_eq!(apply(&old, &ops), new);
        assert_eq!(st.literal, 50_000, "{st:?}");
        assert_eq!(st.copied, 100_000);
    }

    #[test]
    fn an_insertion_at_the_front_is_found_by_the_rolling_search() {
        let old = random(400_000, 5);
        let mut new = random(12_345, 6);
        new.extend_from_slice(&old);
        let (ops, st) = delta(&old, &new, 4096, 30_000);
        assert_eq!(apply(&old, &ops), new);
        assert_eq!(st.literal, 12_345, "{st:?}");
    }

    #[test]
    fn a_truncated_file_and_a_changed_tail_are_rebuilt() {
        let old = random(200_000, 7);
        let new = old[..150_000].to_vec();
        let (ops, _) = delta(&old, &new, 4096, 7000);
        assert_eq!(apply(&old, &ops), new);
        let mut new = old.clone();
        new.truncate(199_000);
        new.extend(random(3000, 8));
        let (ops, _) = delta(&old, &new, 4096, 7000);
        assert_eq!(apply(&old, &ops), new);
    }

    #[test]
    fn a_lying_signature_that_hits_every_offset_stops_after_the_budget() {
        // All-zero data: every window has the same weak checksum, and the
        // signature claims it for every block with a strong digest that
        // never matches.
        let new = vec![0u8; 2 << 20];
        let bl = 4096u32;
        let w = weak(&new[..bl as usize]);
        let mut sums = Vec::new();
        for i in 0..256u32 {
            sums.extend_from_slice(&w.to_be_bytes());
            sums.extend_from_slice(&[i as u8; STRONG_LEN]);
        }
        let basis = Basis {
            size: 256 * bl as u64,
            block_len: bl,
            sums: Sums(Bytes::from(sums)),
        };
        let budget = 1 << 20;
        let mut m = Matcher::new(&basis, budget).expect("valid");
        let mut ops = Vec::new();
        m.feed(&new, &mut ops);
        m.finish(&mut ops);
        let st = m.stats();
        assert!(st.gave_up, "{st:?}");
        assert!(st.miss_bytes <= budget + bl as u64, "{st:?}");
        assert!(st.strong_checks <= budget / bl as u64 + 2, "{st:?}");
        assert_eq!(apply(&[], &ops), new, "everything goes literal");
    }

    #[test]
    fn inconsistent_signatures_are_refused() {
        let ok = signature(&random(50_000, 9)[..], 50_000, 4096).expect("sig");
        assert!(ok.validate().is_ok());
        let mut b = ok.clone();
        b.block_len = 100;
        assert!(b.validate().is_err());
        let mut b = ok.clone();
        b.size = 1 << 40;
        assert!(b.validate().is_err());
        let mut b = ok.clone();
        b.sums = Sums(b.sums.0.slice(1..));
        assert!(b.validate().is_err());
        let mut b = ok;
        b.size = 0;
        assert!(b.validate().is_err());
    }

    #[test]
    fn oversized_sums_are_refused_while_decoding() {
        let basis = Basis {
            size: 1,
            block_len: MIN_BLOCK,
            sums: Sums(Bytes::from(vec![0u8; MAX_BLOCKS as usize * SUM_LEN + 1])),
        };
        let wire = postcard::to_stdvec(&basis).expect("encode");
        assert!(postcard::from_bytes::<Basis>(&wire).is_err());
    }

    #[test]
    fn copy_frames_round_trip_and_malformed_ones_are_errors() {
        let f = copy_frame(5, 6, 7);
        assert_eq!(parse_copy(&f), Some(Ok((5, 6, 7))));
        assert!(parse_copy(&f[..20]).is_some_and(|r| r.is_err()));
        let mut both = f.to_vec();
        both[0] |= 0x80;
        assert!(parse_copy(&both).is_some_and(|r| r.is_err()));
        assert_eq!(parse_copy(&[0u8; 12]), None);
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Overwrite(usize, Vec<u8>),
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
        Append(Vec<u8>),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let bytes = || proptest::collection::vec(any::<u8>(), 1..3000);
        prop_oneof![
            (any::<usize>(), bytes()).prop_map(|(a, b)| Edit::Overwrite(a, b)),
            (any::<usize>(), bytes()).prop_map(|(a, b)| Edit::Insert(a, b)),
            (any::<usize>(), 1usize..20_000).prop_map(|(a, n)| Edit::Delete(a, n)),
            bytes().prop_map(Edit::Append),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    fn edited(old: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut v = old.to_vec();
        for e in edits {
            let at = |a: &usize, v: &Vec<u8>| if v.is_empty() { 0 } else { a % v.len() };
            match e {
                Edit::Overwrite(a, b) => {
                    let s = at(a, &v);
                    let n = b.len().min(v.len() - s);
                    v[s..s + n].copy_from_slice(&b[..n]);
                }
                Edit::Insert(a, b) => {
                    let s = at(a, &v);
                    v.splice(s..s, b.iter().copied());
                }
                Edit::Delete(a, n) => {
                    let s = at(a, &v);
                    let e = (s + n).min(v.len());
                    v.drain(s..e);
                }
                Edit::Append(b) => v.extend_from_slice(b),
                Edit::Truncate(a) => {
                    let s = at(a, &v);
                    v.truncate(s);
                }
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn applying_the_ops_to_the_old_file_gives_the_new_file(
            seed in any::<u64>(),
            len in 4096usize..120_000,
            edits in proptest::collection::vec(edit(), 0..6),
            piece in 1usize..70_000,
            block in prop_oneof![Just(4096u32), Just(5120u32), Just(8192u32)],
        ) {
            let old = random(len, seed);
            let new = edited(&old, &edits);
            let (ops, st) = delta(&old, &new, block, piece);
            prop_assert_eq!(apply(&old, &ops), new.clone());
            prop_assert_eq!(st.copied + st.literal, new.len() as u64);
        }

        #[test]
        fn repetitive_data_is_rebuilt_exactly(
            unit in proptest::collection::vec(0u8..3, 1..40),
            reps in 200usize..4000,
            edits in proptest::collection::vec(edit(), 0..4),
        ) {
            // Low-entropy files: many weak (and strong) hits at once.
            let old: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * reps).collect();
            prop_assume!(old.len() >= 4096);
            let new = edited(&old, &edits);
            let (ops, _) = delta(&old, &new, 4096, 10_000);
            prop_assert_eq!(apply(&old, &ops), new);
        }
    }
}
