//! Fuzzes `FrameCodec`: arbitrary bytes, split into arbitrary chunks, through
//! the decoder the way a stream's reader feeds it.
//!
//! Input layout: byte 0 picks the maximum message size, byte 1 seeds the
//! chunk sizes, the rest is the byte stream. Checks:
//!
//! * nothing panics;
//! * every decoded frame re-encodes to exactly the bytes it was decoded from,
//!   and its payload is within the limit;
//! * an error is reported only once a whole header is buffered, and is the
//!   one that header deserves (unknown `enc` first, then `len` over the
//!   limit);
//! * for the small limits, the decoder never reserves room beyond one
//!   maximal frame (`max_len + 26` bytes) — checked by handing it a buffer of
//!   exactly that capacity and seeing it not grow. (For the default 128 MiB
//!   limit, libFuzzer's malloc limit catches a runaway reservation.)
//! * at the end of input, leftover bytes are a truncation, nothing else.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

use ferrogen::wire::codec::encode_to_vec;
use ferrogen::wire::{DEFAULT_MAX_MESSAGE_SIZE, DecodeError, Enc, FrameCodec, HEADER_LEN, Header};

/// Chunk sizes from a tiny xorshift generator.
struct Chunks(u32);

impl Chunks {
    fn next(&mut self, left: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        // Mostly small chunks (to split headers), sometimes large ones.
        let n = if x & 3 == 0 {
            x as usize % 4096
        } else {
            x as usize % 40
        };
        n.clamp(1, left.max(1))
    }
}

fn check_error(e: &DecodeError, pending: &[u8], max_len: usize) {
    assert!(
        pending.len() >= HEADER_LEN,
        "error before a whole header: {e}"
    );
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&pending[..HEADER_LEN]);
    let h = Header::decode(&raw);
    match e {
        DecodeError::UnknownEncoding { enc, header } => {
            assert!(Enc::from_u16(h.enc).is_none());
            assert_eq!(*enc, h.enc);
            assert!(*header == h);
        }
        DecodeError::TooLarge { len, max } => {
            assert!(Enc::from_u16(h.enc).is_some());
            assert_eq!(*len, h.len as usize);
            assert_eq!(*max, max_len);
            assert!(*len > max_len);
        }
        other => panic!("unexpected error from decode: {other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, seed, bytes @ ..] = data else {
        return;
    };
    let max_len = match sel % 5 {
        0 => 0,
        1 => 26,
        2 => 64,
        3 => 4096,
        _ => DEFAULT_MAX_MESSAGE_SIZE,
    };
    let small = max_len <= 4096;
    let mut chunks = Chunks(u32::from(*seed).wrapping_mul(0x9e37_79b9) | 1);

    let mut codec = FrameCodec::new(max_len);
    // What a stream does: one long-lived buffer.
    let mut buf = BytesMut::new();
    // The bytes not yet decoded, to check against.
    let mut consumed = 0usize;
    let mut fed = 0usize;
    while fed < bytes.len() {
        let n = chunks.next(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        loop {
            let pending = &bytes[consumed..fed];
            if small {
                // The same step on a buffer exactly one maximal frame big
                // (or the pending bytes, if more): decode must not grow it.
                let mut fresh = BytesMut::with_capacity(pending.len().max(max_len + HEADER_LEN));
                fresh.extend_from_slice(pending);
                let cap = fresh.capacity();
                let r = FrameCodec::new(max_len).decode(&mut fresh);
                if !matches!(r, Ok(Some(_))) {
                    assert_eq!(fresh.capacity(), cap, "decoder reserved beyond one frame");
                }
            }
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let n = frame.wire_len();
                    assert!(frame.payload.len() <= max_len);
                    assert_eq!(encode_to_vec(&frame), &pending[..n]);
                    consumed += n;
                    assert_eq!(&buf[..], &bytes[consumed..fed]);
                }
                Ok(None) => {
                    assert_eq!(&buf[..], pending);
                    break;
                }
                Err(e) => {
                    check_error(&e, pending, max_len);
                    return;
                }
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(None) => assert_eq!(consumed, bytes.len()),
        Err(DecodeError::Truncated { buffered }) => {
            assert!(buffered > 0);
            assert_eq!(buffered, bytes.len() - consumed);
        }
        Ok(Some(_)) => panic!("decode_eof found a frame decode had not"),
        Err(e) => panic!("unexpected error at eof: {e}"),
    }
});
