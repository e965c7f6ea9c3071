//! A whole-file BLAKE3 digest computed on a thread of its own, fed in
//! order, so that hashing runs beside the reading, matching or writing of
//! the same bytes instead of after it.
//!
//! A delta makes three passes over a large file (the receiver signs its old
//! copy, the sender matches its new one, the receiver builds the new file
//! from old blocks); the sender's pass and the receiver's last one also
//! hash every byte for the end-to-end digest. On one thread each of those
//! passes was the hash plus the I/O; with the hash here it is the longer of
//! the two (docs/benchmarks.md, issue 11). Buffers go round: the feeder
//! takes them back with [`HashPipe::buffer`], so a pass allocates only the
//! first few.
//!
//! Hand-written on `std` threads: blake3's own parallel update needs
//! rayon, and it splits one buffer across cores rather than overlapping the
//! hash with the work that produced the buffer.

use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;

/// Buffers queued for the hashing thread: bounds the memory a pass holds
/// (with buffers of 1 MiB, a few MiB).
const QUEUE: usize = 4;

enum Job {
    Buf(Vec<u8>),
    Bytes(Bytes),
    Zeros(u64),
}

/// Why a [`HashPipe`] could not hash what it was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashPipeError {
    /// The thread ended before it was fed everything.
    #[error("the hashing thread stopped")]
    Stopped,
    /// The thread panicked.
    #[error("the hashing thread failed")]
    Failed,
}

/// A BLAKE3 hasher on its own thread.
pub struct HashPipe {
    tx: Option<SyncSender<Job>>,
    back: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<blake3::Hasher>>,
    /// Buffers handed out so far (recycled ones included once).
    made: usize,
}

impl HashPipe {
    /// Starts the thread; `hasher` may already hold a prefix (a resume).
    pub fn start(mut hasher: blake3::Hasher) -> std::io::Result<HashPipe> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let (back_tx, back) = std::sync::mpsc::channel::<Vec<u8>>();
        let handle = std::thread::Builder::new()
            .name("hash".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Buf(buf) => {
                            hasher.update(&buf);
                            // The feeder may be gone: the buffer is then
                            // dropped.
                            let _ = back_tx.send(buf);
                        }
                        Job::Bytes(b) => {
                            hasher.update(&b);
                        }
                        Job::Zeros(n) => super::sparse::hash_zeros(&mut hasher, n),
                    }
                }
                hasher
            })?;
        Ok(HashPipe {
            tx: Some(tx),
            back,
            handle: Some(handle),
            made: 0,
        })
    }

    /// A buffer of `len` bytes to fill (contents unspecified): one the
    /// thread has hashed, else a new one while fewer than a few exist,
    /// else the next one the thread gives back.
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = match self.back.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < QUEUE + 2 => {
                self.made += 1;
                Vec::new()
            }
            Err(_) => self.back.recv().unwrap_or_default(),
        };
        buf.resize(len, 0);
        buf
    }

    fn send(&mut self, job: Job) -> Result<(), HashPipeError> {
        match &self.tx {
            Some(tx) if tx.send(job).is_ok() => Ok(()),
            _ => Err(HashPipeError::Stopped),
        }
    }

    /// Hashes `buf` next; it comes back through [`HashPipe::buffer`].
    pub fn hash_buf(&mut self, buf: Vec<u8>) -> Result<(), HashPipeError> {
        self.send(Job::Buf(buf))
    }

    /// Hashes `b` next (shared, not copied).
    pub fn hash_bytes(&mut self, b: Bytes) -> Result<(), HashPipeError> {
        self.send(Job::Bytes(b))
    }

    /// Hashes `n` zero bytes next (a hole).
    pub fn hash_zeros(&mut self, n: u64) -> Result<(), HashPipeError> {
        self.send(Job::Zeros(n))
    }

    /// Waits for everything fed to be hashed; the hasher.
    pub fn finish(mut self) -> Result<blake3::Hasher, HashPipeError> {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(h)) => Ok(h),
            _ => Err(HashPipeError::Failed),
        }
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        // Closing the queue ends the thread after what it holds; not
        // joined here (an abandoned pass does not wait for its hash).
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_hashes_what_it_is_fed_in_order() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let mut prefix = blake3::Hasher::new();
        prefix.update(&data[..1000]);
        let mut pipe = HashPipe::start(prefix).expect("thread");
        let mut at = 1000;
        // Buffers of odd sizes, shared bytes and a run of zeros, many more
        // than the queue holds (so buffers come back and are reused).
        while at < 2_000_000 {
            let n = 70_001.min(2_000_000 - at);
            let mut b = pipe.buffer(n);
            b.copy_from_slice(&data[at..at + n]);
            pipe.hash_buf(b).expect("send");
            at += n;
        }
        pipe.hash_bytes(Bytes::copy_from_slice(&data[at..]))
            .expect("send");
        pipe.hash_zeros(12_345).expect("send");
        let got = pipe.finish().expect("finish").finalize();
        let mut want = blake3::Hasher::new();
        want.update(&data);
        want.update(&[0u8; 12_345]);
        assert_eq!(got, want.finalize());
    }
}
