//! The small-file path: a file that arrived whole in a `fetch_small`
//! reply, checked and put into a temp file.

use std::fs::File;
use std::io::Write;
use std::time::Instant;

use super::pending::{PendingFile, io_err};
use super::temp::create_temp;
use super::{ReceiveError, TempFiles};
use crate::files::meta::FileMeta;
use crate::files::place::{self, Place};

/// The small-file path: puts a file that arrived whole (from
/// `fetch_small`) into a verified temp file next to `dest`. Checks the size
/// and the digest before anything is written.
pub fn receive_whole(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    data: &[u8],
    digest: &[u8; 32],
    started: Instant,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let dest_s = || place::show(dest);
    if data.len() as u64 != meta.size {
        return Err(ReceiveError::Mismatch {
            dest: dest_s(),
            detail: format!("announced {} bytes, received {}", meta.size, data.len()),
        });
    }
    let got = *blake3::hash(data).as_bytes();
    if &got != digest {
        return Err(ReceiveError::Mismatch {
            dest: dest_s(),
            detail: format!(
                "digest {} does not match the sender's {}",
                crate::files::hex(&got),
                crate::files::hex(digest)
            ),
        });
    }
    let mut pending = create_temp(place, temps, meta, started, true)?;
    if let Some(f) = pending.file.as_ref() {
        let mut f: &File = f;
        f.write_all(data).map_err(io_err(dest, "write"))?;
    }
    pending.bytes = meta.size;
    pending.digest = got;
    Ok(pending)
}
