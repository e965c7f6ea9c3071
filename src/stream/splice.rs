//! A stream writer that moves large payloads into a pipe by reference
//! (`vmsplice`) instead of copying them.
//!
//! Why: on a local push the pipe to the child was a fifth of all the CPU
//! spent (`perf record` of a 1 GiB push between two tmpfs paths): the
//! writer's copy into fresh pipe pages and their allocation, the reader's
//! copy out and their freeing, and both sides spinning on the pipe's
//! mutex while the other one copied under it. `vmsplice` puts references
//! to the payload's own pages in the pipe; the reader's `read` is then the
//! only copy, and the writer holds the mutex only to link pages.
//!
//! The price is a promise: the pipe refers to our memory, so that memory
//! must not be written until the reader has copied it out. Every spliced
//! payload is kept (its [`Bytes`] held) until the pipe's fill level
//! (`FIONREAD`) shows the reader has read past its end. `Bytes` is
//! immutable and a held clone keeps its allocation from being freed or
//! reclaimed, so nothing writes those pages meanwhile. That reasoning holds
//! only for a reader that copies (`read`): one that spliced the pages on
//! would take the references with it, and could read whatever this process
//! put in that memory later. So this writer is used only for pipes whose
//! reader is known and runs as this process's user (who could read its
//! memory anyway): ferrogen's own local child, and OpenSSH's `ssh`
//! ([`crate::connect::local::reads_by_copy`]). Never for `sudo`, whose
//! stdin may be read by the target user's process.
//!
//! What is held is bounded by the pipe's capacity (what the reader has not
//! read is in the pipe) plus the payload being spliced.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};

use bytes::Bytes;
use rustix::pipe::{IoSliceRaw, SpliceFlags};
use tokio::io::unix::AsyncFd;

use super::FrameSink;

/// Payloads at least this long are spliced; shorter ones are copied with
/// their headers in one `writev` (a page reference per small payload would
/// use a pipe slot each, and the copy is cheap).
pub(crate) const SPLICE_MIN: usize = 16 * 1024;

/// The write end of a pipe, writing frames with large payloads spliced.
pub(crate) struct SpliceWriter {
    fd: AsyncFd<OwnedFd>,
    /// Payloads the pipe may still refer to, each with the stream offset
    /// just past it.
    held: VecDeque<(u64, Bytes)>,
    /// Bytes put into the pipe so far.
    pushed: u64,
}

impl SpliceWriter {
    /// Takes over `fd`, the write end of a pipe whose reader copies what it
    /// reads (see the module's documentation). Fails if `fd` is not a pipe.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<SpliceWriter> {
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a pipe: cannot splice into it",
            ));
        }
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an `OwnedFd` is a valid open descriptor, it is owned by
        // the `AsyncFd` from here on, and `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(SpliceWriter {
            fd,
            held: VecDeque::new(),
            pushed: 0,
        })
    }

    /// Takes over a child's stdin (after its handshake, which wrote through
    /// it as an ordinary `AsyncWrite`).
    pub(crate) fn take(stdin: tokio::process::ChildStdin) -> io::Result<SpliceWriter> {
        stdin.into_owned_fd().and_then(SpliceWriter::new)
    }

    /// Bytes of payload currently held for the pipe.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held.iter().map(|(_, b)| b.len()).sum()
    }

    /// One non-blocking call `f` on the pipe, waiting for room first.
    async fn io(
        &self,
        mut f: impl FnMut(std::os::fd::BorrowedFd<'_>) -> rustix::io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| f(fd.get_ref().as_fd()).map_err(io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Lets go of the payloads the reader has read past.
    fn release(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let Ok(unread) = rustix::io::ioctl_fionread(self.fd.get_ref()) else {
            return;
        };
        let read = self.pushed.saturating_sub(unread);
        while self.held.front().is_some_and(|(end, _)| *end <= read) {
            self.held.pop_front();
        }
    }

    /// Closes the pipe. Payloads the reader has not read by now are
    /// leaked rather than freed (see [`Drop`]): normally there are none, as
    /// a stream closes after its data was acknowledged.
    pub(crate) fn finish(mut self) {
        self.release();
    }
}

impl FrameSink for SpliceWriter {
    const SPLICE_MIN: usize = SPLICE_MIN;

    /// Copies all of `slices` into the pipe.
    async fn copy_all(&mut self, mut rest: &mut [IoSlice<'_>]) -> io::Result<()> {
        while !rest.is_empty() {
            let n = self.io(|fd| rustix::io::writev(fd, rest)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pushed += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Splices all of `payload` into the pipe, holding it until read.
    async fn splice_all(&mut self, payload: &Bytes) -> io::Result<()> {
        // Held before the first page goes in: even if a later call fails,
        // the pipe may refer to the pages already given.
        self.held
            .push_back((self.pushed + payload.len() as u64, payload.clone()));
        let mut done = 0;
        while done < payload.len() {
            let rest = &payload[done..];
            let n = self
                .io(|fd| {
                    // SAFETY: vmsplice's contract is that the memory is not
                    // modified while the pipe refers to it; `payload` is held
                    // in `self.held` until the reader has read past it
                    // (see `release` and the module's documentation).
                    unsafe {
                        rustix::pipe::vmsplice(
                            fd,
                            &[IoSliceRaw::from_slice(rest)],
                            SpliceFlags::NONBLOCK,
                        )
                    }
                })
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pushed += n as u64;
            done += n;
        }
        self.release();
        Ok(())
    }
}

impl Drop for SpliceWriter {
    fn drop(&mut self) {
        self.release();
        // Whatever the pipe may still refer to is never freed: freed, it
        // could be reused and written while a reader copies it out. At
        // most a pipe's capacity, and only when a stream ends with data
        // its reader never read.
        for (_, payload) in self.held.drain(..) {
            std::mem::forget(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use bytes::BytesMut;

    use super::*;
    use crate::wire::{Enc, Frame, codec};

    const PIPE: usize = 256 * 1024;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE);
        (std::fs::File::from(r), w)
    }

    fn frame(i: usize, len: usize) -> Frame {
        let mut b = BytesMut::with_capacity(len);
        b.resize(len, i as u8);
        Frame::new(7, 2000 + i as u32 % 3, Enc::Bin, b.freeze())
    }

    /// What a copying writer would have written for `frames`.
    fn expected(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(codec::encode_to_vec).collect()
    }

    #[tokio::test]
    async fn spliced_and_copied_frames_arrive_in_order_byte_for_byte() {
        let (mut r, w) = pipe();
        let mut writer = SpliceWriter::new(w).expect("writer");
        // Small and large payloads interleaved, and an empty one.
        let frames: Vec<Frame> = [0, 100, 200_000, SPLICE_MIN, SPLICE_MIN - 1, 70_000, 5]
            .iter()
            .enumerate()
            .map(|(i, &len)| frame(i, len))
            .collect();
        let want = expected(&frames);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("read");
            got
        });
        super::super::write_frames(&mut writer, &frames)
            .await
            .expect("write");
        writer.finish();
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes differ from a copying writer's");
    }

    /// Payloads dropped by their producer right after being queued are
    /// still what arrives, although the allocator hands their memory out
    /// again at once: the writer holds them until read. (Without the hold,
    /// the next payload of the same size, written with another value,
    /// usually lands in the same memory while the pipe still refers to it.)
    #[tokio::test]
    async fn payloads_are_held_until_the_reader_has_read_them() {
        let (mut r, w) = pipe();
        let mut writer = SpliceWriter::new(w).expect("writer");
        const N: usize = 200;
        const LEN: usize = 64 * 1024;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                // A slow reader: the pipe stays full, many payloads in it.
                std::thread::sleep(Duration::from_micros(50));
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("read: {e}"),
                }
            }
            got
        });
        let mut want = Vec::new();
        let mut most_held = 0;
        for i in 0..N {
            let f = frame(i, LEN);
            want.extend(codec::encode_to_vec(&f));
            super::super::write_frames(&mut writer, std::slice::from_ref(&f))
                .await
                .expect("write");
            drop(f);
            most_held = most_held.max(writer.held_bytes());
        }
        writer.finish();
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), want.len());
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            first_bad, None,
            "payload bytes were overwritten in the pipe"
        );
        // What is held is bounded by the pipe's capacity (plus the payload
        // being spliced and one page per header).
        assert!(most_held > 0, "nothing was ever held");
        assert!(most_held <= PIPE + LEN, "held {most_held} bytes");
    }

    #[test]
    fn a_file_is_not_taken_for_a_pipe() {
        let f = tempfile::tempfile().expect("tempfile");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let err = SpliceWriter::new(OwnedFd::from(f)).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
