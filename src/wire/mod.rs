//! The wire: how one message is laid out on a byte stream.
//!
//! A frame is a fixed 26-byte big-endian [`Header`] followed by `len` bytes of
//! payload — the same layout as Mitogen's `Message`. The first field, `enc`,
//! names how the payload is encoded ([`Enc`]). `docs/protocol.md` is the
//! normative description, with byte-exact vectors that `tests/wire_vectors.rs`
//! checks against this module.
//!
//! * [`header`] — the header fields and their byte layout.
//! * [`codec`] — a [`tokio_util::codec`] decoder/encoder that enforces the
//!   maximum frame size before allocating anything.
//! * [`control`] — the serde encoding of control payloads.
//! * [`handles`] — the standard handle numbers.
//! * [`dead`] — the reasons dead messages carry, as a type.

pub mod codec;
pub mod control;
pub mod dead;
pub mod handles;
pub mod header;

pub use codec::{DecodeError, FrameCodec};
pub use dead::DeadReason;
pub use header::{Enc, HEADER_LEN, Header};

use bytes::Bytes;

/// A context's id. The controller is 0; every other id is allocated by it.
pub type ContextId = u32;

/// A mailbox number inside one context.
pub type Handle = u32;

/// Default ceiling on one frame's payload: 128 MiB, as in Mitogen.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// One message: routing header plus payload.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// How `payload` is encoded.
    pub enc: Enc,
    /// The context this frame is for.
    pub dst_id: ContextId,
    /// The context that sent it (replies go here).
    pub src_id: ContextId,
    /// The context whose authority the frame claims.
    pub auth_id: ContextId,
    /// The mailbox in `dst_id`.
    pub handle: Handle,
    /// The mailbox in `src_id` for a reply; 0 means none wanted and
    /// [`handles::IS_DEAD`] marks a dead message.
    pub reply_to: Handle,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with the given destination and payload; `src_id` and `auth_id`
    /// are left 0 for the router to stamp.
    pub fn new(dst_id: ContextId, handle: Handle, enc: Enc, payload: Bytes) -> Frame {
        Frame {
            enc,
            dst_id,
            src_id: 0,
            auth_id: 0,
            handle,
            reply_to: 0,
            payload,
        }
    }

    /// The header of this frame.
    pub fn header(&self) -> Header {
        Header {
            enc: self.enc.to_u16(),
            dst_id: self.dst_id,
            src_id: self.src_id,
            auth_id: self.auth_id,
            handle: self.handle,
            reply_to: self.reply_to,
            len: self.payload.len() as u32,
        }
    }

    /// True if this is a dead message (the end of a channel or an error).
    pub fn is_dead(&self) -> bool {
        self.reply_to == handles::IS_DEAD
    }

    /// The reason carried by a dead message, as text.
    pub fn dead_reason(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The reason carried by a dead message, as a [`DeadReason`] (its text
    /// capped and made safe to print first: it comes from a peer).
    pub fn dead_kind(&self) -> DeadReason {
        DeadReason::parse(&crate::text::cap_owned(self.dead_reason()))
    }

    /// A dead message for `(dst_id, handle)` carrying `reason`.
    pub fn dead(dst_id: ContextId, handle: Handle, reason: &str) -> Frame {
        Frame {
            enc: Enc::Text,
            dst_id,
            src_id: 0,
            auth_id: 0,
            handle,
            reply_to: handles::IS_DEAD,
            payload: Bytes::copy_from_slice(reason.as_bytes()),
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("enc", &self.enc)
            .field("dst", &self.dst_id)
            .field("src", &self.src_id)
            .field("auth", &self.auth_id)
            .field("handle", &self.handle)
            .field("reply_to", &self.reply_to)
            .field("len", &self.payload.len())
            .finish()
    }
}
