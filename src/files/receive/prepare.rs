//! What a receiver brings to a fetch besides the path: a partial file to
//! resume from, or the old destination's signature for a delta.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use super::names::partial_place;
use super::pending::resolve_err;
use super::{Observer, ReceiveError, ReceiveOptions};
use crate::files::delta;
use crate::files::place::{self, Place};

/// What a requester brings to a fetch besides the path.
#[derive(Default)]
pub(super) struct Prepared {
    /// Someone following the file as it is written (a relay's tee).
    pub(super) observer: Option<Observer>,
    /// The most bytes the file may have (a pull: what the serving target
    /// announced); a larger one is refused before anything is reserved.
    pub(super) max_size: Option<u64>,
    /// A partial file of ours to resume from.
    pub(super) partial: Option<PartialFile>,
    /// The old destination (opened without following a symlink) and its
    /// signature, for a delta.
    pub(super) basis: Option<(Arc<File>, delta::Basis)>,
    /// A regular file at the partial name that this receive does not
    /// resume from: removed once the destination lands complete.
    pub(super) stale_partial: bool,
}

/// An existing partial file and the digest state of its prefix.
pub(super) struct PartialFile {
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) hasher: blake3::Hasher,
}

/// Looks for a partial file and an old destination beneath `place`'s
/// directory handle, never following a symlink; hashes or signs what it
/// finds (a blocking read of up to the whole file).
pub(super) fn prepare(place: &Place, opts: &ReceiveOptions) -> Result<Prepared, ReceiveError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dest = place.shown();
    let dir = place.open_parent().map_err(|e| resolve_err(dest, e))?;
    let mut prep = Prepared::default();
    let partial = partial_place(place);
    if let Ok(st) = rustix::fs::statat(&dir, partial.name(), AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
    {
        prep.stale_partial = true;
        if opts.partial
            && let Some(p) = open_partial(&dir, &partial, &st)
        {
            prep.stale_partial = false;
            prep.partial = Some(p);
            return Ok(prep);
        }
    }
    if !opts.delta {
        return Ok(prep);
    }
    // The old destination, if it is a regular file we can read: a symlink
    // (ELOOP), a FIFO (O_NONBLOCK: never waits) or anything else is not a
    // basis.
    let Ok(fd) = rustix::fs::openat(
        &dir,
        place.name(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(prep);
    };
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return Ok(prep);
    };
    let size = st.st_size as u64;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || size < delta::DELTA_MIN {
        return Ok(prep);
    }
    let Some(block_len) = delta::block_len_for(size) else {
        return Ok(prep);
    };
    let old = File::from(fd);
    let signing = Instant::now();
    match delta::signature_of_file(&old, size, block_len) {
        Ok(basis) => {
            tracing::debug!(
                "{}: signed {size} bytes as a delta basis in {:?}",
                place::show(dest),
                signing.elapsed()
            );
            prep.basis = Some((Arc::new(old), basis));
        }
        // Unreadable or changing under us: send the file whole.
        Err(e) => tracing::debug!("{}: no delta basis: {e}", place::show(dest)),
    }
    Ok(prep)
}

/// Opens the partial file `p` if it is one this receiver can trust: a
/// regular file with one link, owned by us, the same inode as `st` was;
/// hashes its contents.
pub(super) fn open_partial(
    dir: &impl AsFd,
    p: &Place,
    st: &rustix::fs::Stat,
) -> Option<PartialFile> {
    use rustix::fs::{FileType, Mode, OFlags};
    if st.st_nlink != 1 || st.st_uid != rustix::process::geteuid().as_raw() {
        return None;
    }
    let fd = rustix::fs::openat(
        dir,
        p.name(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let now = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
        || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
    {
        return None;
    }
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600));
    let file = File::from(fd);
    let len = now.st_size as u64;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).ok()?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Some(PartialFile { file, len, hasher })
}
