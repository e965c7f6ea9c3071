//! The file that receives: an anonymous or hidden temp file, or a named
//! partial file (`--partial`), created owner-only beneath the
//! destination's directory handle, its space reserved.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use super::names::{partial_place, temp_path};
use super::pending::{PendingFile, io_err, resolve_err};
use super::{ReceiveError, TempFiles};
use crate::files::meta::FileMeta;
use crate::files::place::Place;

/// With `--partial`, a new named partial file for `place`, created
/// `O_EXCL`, owner-only, beneath the directory handle; `None` if it cannot
/// be (something is at that name): the anonymous temp file serves then.
pub(super) fn create_partial(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    started: Instant,
    reserve: bool,
) -> Option<PendingFile> {
    use rustix::fs::{Mode, OFlags};
    let dir = place.open_parent().ok()?;
    let p = partial_place(place);
    let fd = rustix::fs::openat(
        &dir,
        p.name(),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    // Space reserved, size unchanged: the file's size is then always the
    // length of what was written, in order — the prefix a resume offers.
    // Not with --sparse: the reservation would allocate the holes.
    if reserve {
        let _ = rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::KEEP_SIZE, 0, meta.size);
    }
    Some(PendingFile::new(
        File::from(fd),
        p,
        place,
        temps,
        meta,
        started,
        true,
    ))
}

/// Creates the hidden temp file that will receive `meta.size` bytes for
/// `dest`, with the space reserved if `reserve` (not with `--sparse`: a
/// full-size reservation would allocate the holes).
pub(super) fn create_temp(
    place: &Place,
    temps: &TempFiles,
    meta: &FileMeta,
    started: Instant,
    reserve: bool,
) -> Result<PendingFile, ReceiveError> {
    let dest = place.shown();
    let temp = temp_path(place);
    // The directory, beneath the push's root, no symlink followed.
    let dir = place.open_parent().map_err(|e| resolve_err(dest, e))?;
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    let anon = rustix::fs::openat(
        &dir,
        ".",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::CLOEXEC,
        mode,
    );
    let (fd, anonymous) = match anon {
        Ok(fd) => (fd, true),
        Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::NOTDIR)
        | Err(rustix::io::Errno::ACCESS) => {
            // Not a file system question: report the real cause.
            let e = anon
                .err()
                .map(std::io::Error::from)
                .unwrap_or_else(|| std::io::Error::other("?"));
            return Err(io_err(dest, "create temp file")(e));
        }
        Err(_) => {
            let fd = rustix::fs::openat(
                &dir,
                temp.name(),
                rustix::fs::OFlags::WRONLY
                    | rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::EXCL
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::NOFOLLOW,
                mode,
            )
            .map_err(|e| io_err(dest, "create temp file")(e.into()))?;
            temps.add(&temp);
            (fd, false)
        }
    };
    let pending = PendingFile {
        file: Some(File::from(fd)),
        temp,
        anonymous,
        dest: place.clone(),
        temps: temps.clone(),
        armed: true,
        meta: meta.clone(),
        bytes: 0,
        digest: [0; 32],
        started,
        data_span_ns: (0, 0),
        partial: false,
        keep: false,
        stale_partial: false,
        old: None,
    };
    // Reserve the space up front so a full disk fails at once, unless the
    // data comes in one chunk, whose single write fails just as soon.
    if reserve && meta.size > crate::files::CHUNK_DATA as u64 {
        let Some(file) = pending.file.as_ref() else {
            unreachable!("the file was just created");
        };
        match reserve_space(file, meta.size) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) => {
                return Err(io_err(dest, "reserve space")(
                    std::io::Error::from_raw_os_error(libc_enospc()),
                ));
            }
            // Not supported by this file system: fine, writes will tell.
            Err(_) => {}
        }
    }

    Ok(pending)
}

/// `statfs`'s `f_type` of tmpfs (`TMPFS_MAGIC`).
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Reserves `size` bytes for `file`, or says `NOSPC` if they do not fit.
///
/// On tmpfs a reservation is no cheaper than the writes: `fallocate`
/// allocates, zeroes and charges every page of the file before the first
/// byte is written — 0.27 s per GiB on a quiet machine here (0.49 s
/// under load; `strace -T`), a third of a local 1 GiB push's wall time on
/// tmpfs, spent on the receiving context's runtime thread while the data
/// waits — and the writes then copy over the zeroes (the total CPU is the
/// same: the writes would have allocated those pages). There the free space is checked instead (`fstatfs`;
/// tmpfs reports its size limit), so a file that cannot fit still fails
/// at once, and each page is allocated by the write that fills it.
fn reserve_space(file: &File, size: u64) -> Result<(), rustix::io::Errno> {
    if let Ok(fs) = rustix::fs::fstatfs(file)
        && fs.f_type as u64 == TMPFS_MAGIC
    {
        let free = fs.f_bavail.saturating_mul(fs.f_bsize as u64);
        return if size <= free {
            Ok(())
        } else {
            Err(rustix::io::Errno::NOSPC)
        };
    }
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size)
}

/// The space of a delta's temp file, reserved on a thread of its own while
/// the file is built, a slice at a time ahead of the writes.
///
/// Reserving the whole file before the first write (as for a plain
/// transfer) puts the file system's allocation on the delta's critical
/// path: on tmpfs it allocates and zeroes every page, 0.27 s for 1 GiB
/// here, after the signature and before the first copy; a delta's data
/// arrive as fast as the receiver reads its old blocks, so nothing hides
/// it. Beside the writes it costs another core's time instead (the
/// writer then finds the pages there). `KEEP_SIZE`: the file's size stays
/// that of the data written, as without a reservation. A full disk still
/// fails the transfer — through the writes — just not before the first.
pub(super) struct ReserveAhead {
    pub(super) stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Bytes reserved per `fallocate` call: tmpfs holds the inode's lock for
/// the call, which the writer waits for, so a slice is short.
const RESERVE_SLICE: u64 = 8 << 20;

impl ReserveAhead {
    pub(super) fn start(file: &File, size: u64) -> Option<ReserveAhead> {
        use std::sync::atomic::{AtomicBool, Ordering};
        if size <= RESERVE_SLICE {
            return None;
        }
        let file = file.try_clone().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("reserve".into())
            .spawn(move || {
                let mut at = 0;
                while at < size && !stopped.load(Ordering::Relaxed) {
                    let len = (size - at).min(RESERVE_SLICE);
                    let keep = rustix::fs::FallocateFlags::KEEP_SIZE;
                    if rustix::fs::fallocate(&file, keep, at, len).is_err() {
                        // Not supported, or the disk is full: the writes
                        // will say so.
                        break;
                    }
                    at += len;
                }
            });
        spawned.ok().map(|_| ReserveAhead { stop })
    }
}

impl Drop for ReserveAhead {
    fn drop(&mut self) {
        // The transfer is over (or failed): no more space for it.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tmpfs: a size that fits is accepted without allocating anything;
    /// one larger than the free space fails at once, as `fallocate` did.
    #[test]
    fn tmpfs_reservation_checks_free_space_without_allocating() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return; // no /dev/shm here
        };
        let file = File::create(dir.path().join("f")).expect("create");
        let fs = rustix::fs::fstatfs(&file).expect("fstatfs");
        if fs.f_type as u64 != TMPFS_MAGIC {
            return;
        }
        reserve_space(&file, 64 << 20).expect("64 MiB fit");
        let st = rustix::fs::fstat(&file).expect("fstat");
        assert_eq!((st.st_size, st.st_blocks), (0, 0), "nothing allocated");
        let free = fs.f_bavail.saturating_mul(fs.f_bsize as u64);
        assert_eq!(
            reserve_space(&file, free.saturating_add(1 << 30)),
            Err(rustix::io::Errno::NOSPC)
        );
    }
}
