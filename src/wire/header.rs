//! The 26-byte frame header.

use std::fmt;

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 26;

/// How a frame's payload is encoded: the header's first field.
///
/// The values continue Mitogen's range (`0x4d49` "MI"): `0x4d4a` (pickle) is
/// deliberately not accepted — ferrogen never runs an unpickler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Enc {
    /// `0x4d49`: UTF-8 text. Used for dead messages (the reason) and nothing else.
    Text,
    /// `0x4d4b`: opaque bytes (file data). Queued as bulk traffic.
    Bin,
    /// `0x4d50` ("MP"): a control value in postcard encoding
    /// (see [`crate::wire::control`]).
    Control,
}

impl Enc {
    /// The on-wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            Enc::Text => 0x4d49,
            Enc::Bin => 0x4d4b,
            Enc::Control => 0x4d50,
        }
    }

    /// Parses an on-wire value; `None` for anything unknown.
    pub const fn from_u16(v: u16) -> Option<Enc> {
        match v {
            0x4d49 => Some(Enc::Text),
            0x4d4b => Some(Enc::Bin),
            0x4d50 => Some(Enc::Control),
            _ => None,
        }
    }
}

/// The decoded header fields, each as it appears on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload encoding tag (see [`Enc`]).
    pub enc: u16,
    /// Destination context.
    pub dst_id: u32,
    /// Source context.
    pub src_id: u32,
    /// Context whose authority is claimed.
    pub auth_id: u32,
    /// Destination handle.
    pub handle: u32,
    /// Reply handle, 0 for none, 999 for dead.
    pub reply_to: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Writes the header, big-endian, into the first 26 bytes of `out`.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.enc.to_be_bytes());
        b[2..6].copy_from_slice(&self.dst_id.to_be_bytes());
        b[6..10].copy_from_slice(&self.src_id.to_be_bytes());
        b[10..14].copy_from_slice(&self.auth_id.to_be_bytes());
        b[14..18].copy_from_slice(&self.handle.to_be_bytes());
        b[18..22].copy_from_slice(&self.reply_to.to_be_bytes());
        b[22..26].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Reads a header from exactly 26 bytes. Never fails: validation of
    /// `enc` and `len` is the codec's job, so it can report both.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            enc: u16::from_be_bytes([b[0], b[1]]),
            dst_id: u32_at(2),
            src_id: u32_at(6),
            auth_id: u32_at(10),
            handle: u32_at(14),
            reply_to: u32_at(18),
            len: u32_at(22),
        }
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Header {{ enc: {:#06x}, dst: {}, src: {}, auth: {}, handle: {}, reply_to: {}, len: {} }}",
            self.enc, self.dst_id, self.src_id, self.auth_id, self.handle, self.reply_to, self.len
        )
    }
}
