//! Chunks and file bytes the compress tests share: text that compresses,
//! random bytes that do not, and an encoder with its counters.

use std::sync::Arc;

use bytes::Bytes;

use super::{ChunkEncoder, CompressCounters, Shared};

pub(super) fn chunk(offset: u64, data: &[u8]) -> Bytes {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(data);
    Bytes::from(v)
}

pub(super) fn text(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut i = 0u64;
    while v.len() < n {
        v.extend_from_slice(
            format!("2026-11-30 14:{:02} INFO request {i} served\n", i % 60).as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

pub(super) fn random(n: usize, seed: u64) -> Vec<u8> {
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

pub(super) fn encoder(level: Option<i32>) -> (ChunkEncoder, Arc<CompressCounters>) {
    let counters = Arc::new(CompressCounters::default());
    (
        ChunkEncoder::new(Shared::new(level, counters.clone())),
        counters,
    )
}
