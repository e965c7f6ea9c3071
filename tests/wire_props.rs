//! Property tests of the frame codec (`src/wire/`), after Mitogen's
//! `message_test` and `mitogen_protocol_test`:
//!
//! * encode → decode is the identity for arbitrary frames, in one piece and
//!   split at arbitrary points;
//! * arbitrary bytes never panic the decoder, every frame it yields
//!   re-encodes to exactly the bytes it came from, and it never reserves
//!   room beyond one maximal frame (`max_len + 26`);
//! * an unknown `enc` or an oversized `len` is reported as the right
//!   [`DecodeError`] as soon as the 26th header byte arrives, and not before;
//! * the header field offsets are pinned, like Mitogen's `PackTest`.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tokio_util::codec::Decoder;

use ferrogen::wire::codec::encode_to_vec;
use ferrogen::wire::{
    DEFAULT_MAX_MESSAGE_SIZE, DecodeError, Enc, Frame, FrameCodec, HEADER_LEN, Header, handles,
};

// -------------------------------------------------------------- strategies

fn arb_enc() -> impl Strategy<Value = Enc> {
    prop_oneof![Just(Enc::Text), Just(Enc::Bin), Just(Enc::Control)]
}

/// A u32 field, with the values the protocol gives meaning to over-represented.
fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => any::<u32>(),
        1 => Just(0u32),
        1 => Just(u32::MAX),
        1 => Just(handles::IS_DEAD),
        1 => Just(handles::FIRST_DYNAMIC),
    ]
}

prop_compose! {
    fn arb_frame(max_payload: usize)(
        enc in arb_enc(),
        dst_id in arb_u32(),
        src_id in arb_u32(),
        auth_id in arb_u32(),
        handle in arb_u32(),
        reply_to in arb_u32(),
        payload in vec(any::<u8>(), 0..=max_payload),
    ) -> Frame {
        Frame { enc, dst_id, src_id, auth_id, handle, reply_to, payload: Bytes::from(payload) }
    }
}

prop_compose! {
    fn arb_header()(
        enc in any::<u16>(),
        dst_id in arb_u32(),
        src_id in arb_u32(),
        auth_id in arb_u32(),
        handle in arb_u32(),
        reply_to in arb_u32(),
        len in arb_u32(),
    ) -> Header {
        Header { enc, dst_id, src_id, auth_id, handle, reply_to, len }
    }
}

/// Arbitrary bytes worth decoding: pure noise, valid frames with a few bytes
/// changed (so headers are often almost valid), or valid frames followed by
/// noise.
fn arb_stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        (
            vec(arb_frame(300), 0..6),
            vec((any::<Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|(frames, edits)| {
                let mut b: Vec<u8> = frames.iter().flat_map(encode_to_vec).collect();
                if !b.is_empty() {
                    for (i, v) in edits {
                        let at = i.index(b.len());
                        b[at] = v;
                    }
                }
                b
            }),
        (vec(arb_frame(300), 0..4), vec(any::<u8>(), 0..64)).prop_map(|(frames, tail)| {
            let mut b: Vec<u8> = frames.iter().flat_map(encode_to_vec).collect();
            b.extend(tail);
            b
        }),
    ]
}

fn arb_max_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(16),
        Just(255),
        Just(256),
        Just(4096),
        Just(DEFAULT_MAX_MESSAGE_SIZE),
        0usize..600,
    ]
}

/// Cut `total` bytes at arbitrary points: the chunk boundaries, sorted.
fn cuts(total: usize, points: &[Index]) -> Vec<usize> {
    let mut c: Vec<usize> = points.iter().map(|i| i.index(total + 1)).collect();
    c.push(0);
    c.push(total);
    c.sort_unstable();
    c.dedup();
    c
}

// ---------------------------------------------------------------- feeding

/// What decoding a byte string chunk by chunk produced.
#[derive(Debug)]
struct Outcome {
    frames: Vec<Frame>,
    /// The error, and the offset of the frame whose header caused it.
    error: Option<(DecodeError, usize)>,
    /// Bytes left undecoded at the end (if no error).
    leftover: usize,
}

/// Decodes `bytes` arriving in the chunks given by `cuts`, through one
/// long-lived buffer, as a stream's reader does.
fn feed_streaming(max_len: usize, bytes: &[u8], cuts: &[usize]) -> Outcome {
    let mut codec = FrameCodec::new(max_len);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    for w in cuts.windows(2) {
        buf.extend_from_slice(&bytes[w[0]..w[1]]);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    consumed += f.wire_len();
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some((e, consumed)),
                        leftover: buf.len(),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        leftover: buf.len(),
    }
}

/// Decodes like [`feed_streaming`], but before every `decode` call copies the
/// pending bytes into a fresh buffer of capacity `max(pending, max_len + 26)`
/// and checks that `decode` did not grow it: the decoder never asks for room
/// beyond one maximal frame. Also checks that each decoded frame re-encodes
/// to exactly the bytes it was decoded from, and that errors happen only once
/// a whole header is present and match that header.
fn feed_checked(max_len: usize, bytes: &[u8], cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    let mut codec = FrameCodec::new(max_len);
    let mut pending: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    for w in cuts.windows(2) {
        pending.extend_from_slice(&bytes[w[0]..w[1]]);
        loop {
            let cap = pending.len().max(max_len.saturating_add(HEADER_LEN));
            let mut buf = BytesMut::with_capacity(cap);
            buf.extend_from_slice(&pending);
            let cap = buf.capacity();
            let r = codec.decode(&mut buf);
            match r {
                Ok(Some(f)) => {
                    let n = f.wire_len();
                    prop_assert!(f.payload.len() <= max_len);
                    prop_assert_eq!(&encode_to_vec(&f)[..], &pending[..n]);
                    prop_assert_eq!(&buf[..], &pending[n..]);
                    pending.drain(..n);
                    consumed += n;
                    frames.push(f);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.capacity(), cap, "decode reserved beyond one frame");
                    prop_assert_eq!(&buf[..], &pending[..]);
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(buf.capacity(), cap, "decode reserved on error");
                    prop_assert!(pending.len() >= HEADER_LEN, "error before a whole header");
                    let mut raw = [0u8; HEADER_LEN];
                    raw.copy_from_slice(&pending[..HEADER_LEN]);
                    let h = Header::decode(&raw);
                    match &e {
                        DecodeError::UnknownEncoding { enc, header } => {
                            prop_assert_eq!(Enc::from_u16(h.enc), None);
                            prop_assert_eq!(*enc, h.enc);
                            prop_assert_eq!(*header, h);
                        }
                        DecodeError::TooLarge { len, max } => {
                            prop_assert!(Enc::from_u16(h.enc).is_some());
                            prop_assert_eq!(*len, h.len as usize);
                            prop_assert_eq!(*max, max_len);
                            prop_assert!(*len > max_len);
                        }
                        other => prop_assert!(false, "unexpected error {:?}", other),
                    }
                    return Ok(Outcome {
                        frames,
                        error: Some((e, consumed)),
                        leftover: pending.len(),
                    });
                }
            }
        }
    }
    Ok(Outcome {
        frames,
        error: None,
        leftover: pending.len(),
    })
}

// ---------------------------------------------------------- round trips

proptest! {
    #[test]
    fn encode_then_decode_is_identity(frame in arb_frame(4096)) {
        let bytes = encode_to_vec(&frame);
        prop_assert_eq!(bytes.len(), HEADER_LEN + frame.payload.len());
        prop_assert_eq!(bytes.len(), frame.wire_len());
        let mut codec = FrameCodec::new(4096);
        let mut buf = BytesMut::from(&bytes[..]);
        let got = codec.decode(&mut buf).expect("decodes").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&got.payload, &frame.payload);
        prop_assert_eq!(got, frame);
        prop_assert!(codec.decode_eof(&mut buf).expect("clean eof").is_none());
    }

    #[test]
    fn split_frames_decode_to_the_same_frames(
        frames in vec(arb_frame(4096), 0..8),
        points in vec(any::<Index>(), 0..24),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(encode_to_vec).collect();
        let cuts = cuts(bytes.len(), &points);
        let got = feed_streaming(4096, &bytes, &cuts);
        prop_assert!(got.error.is_none(), "{:?}", got.error);
        prop_assert_eq!(got.leftover, 0);
        prop_assert_eq!(&got.frames, &frames);
        for (g, f) in got.frames.iter().zip(&frames) {
            prop_assert_eq!(&g.payload, &f.payload);
        }
        let checked = feed_checked(4096, &bytes, &cuts)?;
        prop_assert_eq!(&checked.frames, &frames);
    }

    #[test]
    fn byte_at_a_time_yields_each_frame_at_its_last_byte(frame in arb_frame(64)) {
        let bytes = encode_to_vec(&frame);
        let mut codec = FrameCodec::new(64);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = codec.decode(&mut buf).expect("valid bytes");
            if i + 1 < bytes.len() {
                prop_assert!(r.is_none(), "frame yielded early at byte {}", i);
            } else {
                prop_assert_eq!(r, Some(frame.clone()));
            }
        }
    }

    #[test]
    fn truncated_frame_at_eof_is_reported(frame in arb_frame(512), cut in any::<Index>()) {
        let bytes = encode_to_vec(&frame);
        let keep = 1 + cut.index(bytes.len() - 1); // 1..len-1
        let mut codec = FrameCodec::new(512);
        let mut buf = BytesMut::from(&bytes[..keep]);
        match codec.decode_eof(&mut buf) {
            Err(DecodeError::Truncated { buffered }) => prop_assert_eq!(buffered, keep),
            other => prop_assert!(false, "expected Truncated, got {:?}", other),
        }
    }
}

// ------------------------------------------------------- arbitrary input

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_overreserve(
        bytes in arb_stream_bytes(),
        max_len in arb_max_len(),
        points in vec(any::<Index>(), 0..16),
    ) {
        let cuts = cuts(bytes.len(), &points);
        let checked = feed_checked(max_len, &bytes, &cuts)?;
        // The long-lived buffer path (what a stream does) agrees.
        let streamed = feed_streaming(max_len, &bytes, &cuts);
        prop_assert_eq!(&streamed.frames, &checked.frames);
        prop_assert_eq!(
            streamed.error.as_ref().map(|(e, at)| (e.to_string(), *at)),
            checked.error.as_ref().map(|(e, at)| (e.to_string(), *at))
        );
        prop_assert_eq!(streamed.leftover, checked.leftover);
        if checked.error.is_none() {
            // At EOF: clean if nothing is left, else a truncation of exactly
            // the leftover (a whole bad header would already have failed).
            let consumed: usize = checked.frames.iter().map(Frame::wire_len).sum();
            let mut codec = FrameCodec::new(max_len);
            let mut rest = BytesMut::from(&bytes[consumed..]);
            match codec.decode_eof(&mut rest) {
                Ok(None) => prop_assert_eq!(checked.leftover, 0),
                Err(DecodeError::Truncated { buffered }) => {
                    prop_assert_eq!(buffered, checked.leftover);
                    prop_assert!(buffered > 0);
                }
                other => prop_assert!(false, "unexpected at eof: {:?}", other),
            }
        }
    }

    #[test]
    fn bad_header_fails_exactly_at_the_26th_byte(
        h in arb_header(),
        max_len in arb_max_len(),
        tail in vec(any::<u8>(), 0..64),
    ) {
        let enc_ok = Enc::from_u16(h.enc).is_some();
        let len_ok = (h.len as usize) <= max_len;
        prop_assume!(!enc_ok || !len_ok);
        let mut bytes = h.encode().to_vec();
        bytes.extend(&tail);
        let mut codec = FrameCodec::new(max_len);
        let mut buf = BytesMut::with_capacity(HEADER_LEN);
        for b in &bytes[..HEADER_LEN - 1] {
            buf.extend_from_slice(&[*b]);
            prop_assert!(codec.decode(&mut buf).expect("no error before 26 bytes").is_none());
        }
        buf.extend_from_slice(&bytes[HEADER_LEN - 1..HEADER_LEN]);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).expect_err("a bad header is an error at 26 bytes");
        prop_assert_eq!(buf.capacity(), cap, "nothing reserved for a refused frame");
        let text = err.to_string();
        match err {
            // enc is checked first.
            DecodeError::UnknownEncoding { enc, header } => {
                prop_assert!(!enc_ok);
                prop_assert_eq!(enc, h.enc);
                prop_assert_eq!(header, h);
            }
            DecodeError::TooLarge { len, max } => {
                prop_assert!(enc_ok && !len_ok);
                prop_assert_eq!(len, h.len as usize);
                prop_assert_eq!(max, max_len);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
        // Whatever follows the header changes nothing.
        let mut whole = BytesMut::from(&bytes[..]);
        let again = codec.decode(&mut whole).expect_err("still an error");
        prop_assert_eq!(again.to_string(), text);
    }
}

#[test]
fn header_only_reserves_for_a_legal_length_and_never_for_an_illegal_one() {
    let max_len = 1 << 20;
    let mut codec = FrameCodec::new(max_len);
    for (len, legal) in [
        (max_len as u32, true),
        (max_len as u32 + 1, false),
        (u32::MAX, false),
    ] {
        let h = Header {
            enc: Enc::Bin.to_u16(),
            dst_id: 1,
            src_id: 2,
            auth_id: 2,
            handle: 1000,
            reply_to: 0,
            len,
        };
        let mut buf = BytesMut::with_capacity(HEADER_LEN);
        buf.extend_from_slice(&h.encode());
        assert_eq!(buf.capacity(), HEADER_LEN);
        let r = codec.decode(&mut buf);
        if legal {
            assert!(r.expect("legal").is_none());
            // Room for the whole frame, so the next read can fill it at once,
            // and not wildly more.
            assert!(buf.capacity() >= HEADER_LEN + max_len);
            assert!(buf.capacity() <= 2 * (HEADER_LEN + max_len));
        } else {
            assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
            assert_eq!(buf.capacity(), HEADER_LEN, "nothing reserved");
        }
    }
}

// ------------------------------------------------------- header layout

/// Mitogen's `PackTest`: every field at its offset.
fn assert_layout(f: &Frame, b: &[u8]) {
    assert_eq!(&b[0..2], &f.enc.to_u16().to_be_bytes(), "enc at [0:2]");
    assert_eq!(&b[2..6], &f.dst_id.to_be_bytes(), "dst_id at [2:6]");
    assert_eq!(&b[6..10], &f.src_id.to_be_bytes(), "src_id at [6:10]");
    assert_eq!(&b[10..14], &f.auth_id.to_be_bytes(), "auth_id at [10:14]");
    assert_eq!(&b[14..18], &f.handle.to_be_bytes(), "handle at [14:18]");
    assert_eq!(&b[18..22], &f.reply_to.to_be_bytes(), "reply_to at [18:22]");
    assert_eq!(
        &b[22..26],
        &(f.payload.len() as u32).to_be_bytes(),
        "len at [22:26]"
    );
    assert_eq!(&b[26..], &f.payload[..], "data at [26:]");
}

#[test]
fn header_fields_at_pinned_offsets() {
    let f = Frame {
        enc: Enc::Control,
        dst_id: 0x0102_0304,
        src_id: 0x0506_0708,
        auth_id: 0x090a_0b0c,
        handle: 0x0d0e_0f10,
        reply_to: 0x1112_1314,
        payload: Bytes::from_static(b"data"),
    };
    let b = encode_to_vec(&f);
    assert_eq!(
        b,
        [
            0x4d, 0x50, // enc
            0x01, 0x02, 0x03, 0x04, // dst_id
            0x05, 0x06, 0x07, 0x08, // src_id
            0x09, 0x0a, 0x0b, 0x0c, // auth_id
            0x0d, 0x0e, 0x0f, 0x10, // handle
            0x11, 0x12, 0x13, 0x14, // reply_to
            0x00, 0x00, 0x00, 0x04, // len
            b'd', b'a', b't', b'a',
        ]
    );
    assert_eq!(b.len(), HEADER_LEN + 4);
    assert_layout(&f, &b);
}

#[test]
fn dead_message_layout() {
    let f = Frame::dead(7, 1001, "gone");
    let b = encode_to_vec(&f);
    assert_eq!(&b[0..2], &[0x4d, 0x49], "dead messages are Text");
    assert_eq!(&b[18..22], &999u32.to_be_bytes(), "reply_to IS_DEAD");
    assert_eq!(&b[26..], b"gone");
    assert_layout(&f, &b);
    let empty = Frame::dead(7, 1001, "");
    assert_eq!(encode_to_vec(&empty).len(), HEADER_LEN);
}

#[test]
fn exactly_three_encodings_are_accepted() {
    let accepted: Vec<u16> = (0..=u16::MAX)
        .filter(|v| Enc::from_u16(*v).is_some())
        .collect();
    assert_eq!(accepted, [0x4d49, 0x4d4b, 0x4d50]);
    for v in accepted {
        assert_eq!(Enc::from_u16(v).map(Enc::to_u16), Some(v));
    }
}

proptest! {
    #[test]
    fn header_fields_at_pinned_offsets_for_any_frame(frame in arb_frame(64)) {
        assert_layout(&frame, &encode_to_vec(&frame));
    }

    #[test]
    fn header_encode_decode_is_identity_for_any_values(h in arb_header()) {
        let raw = h.encode();
        prop_assert_eq!(Header::decode(&raw), h);
        prop_assert_eq!(&raw[0..2], &h.enc.to_be_bytes());
        prop_assert_eq!(&raw[22..26], &h.len.to_be_bytes());
    }
}
