//! The hidden names beside a destination: its temp file while it is
//! received, and its partial file (`--partial`).

use crate::files::place::Place;

/// A fresh hidden name for `dest`'s temp file where `O_TMPFILE` is not
/// supported: `.NAME.ferrogen-XXXX.tmp`, the name cut to 80 bytes.
pub(super) fn temp_path(dest: &Place) -> Place {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    // At most 80 bytes of the name (a name is bytes, not necessarily UTF-8).
    let name = dest.name().as_bytes();
    let short = &name[..name.len().min(80)];
    let nonce: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    let mut temp = b".".to_vec();
    temp.extend_from_slice(short);
    temp.extend_from_slice(format!(".ferrogen-{nonce:016x}.tmp").as_bytes());
    dest.sibling(std::ffi::OsString::from_vec(temp))
}

/// The hidden name of `dest`'s partial file (`--partial`):
/// `.NAME.ferrogen-partial`, the name cut to 200 bytes (a shared partial
/// name is harmless: the prefix is verified by digest before use).
pub fn partial_place(dest: &Place) -> Place {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = dest.name().as_bytes();
    let mut p = b".".to_vec();
    p.extend_from_slice(&name[..name.len().min(200)]);
    p.extend_from_slice(b".ferrogen-partial");
    dest.sibling(std::ffi::OsString::from_vec(p))
}
