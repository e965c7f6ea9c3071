//! `copyfloor MODE SRC DST`: the least work a verified copy of SRC to DST
//! can do, with none of ferrogen's protocol, to be timed beside `cat` and
//! `ferrogen push` (`bench/run-cpu --floors`). It tells how much of a local
//! push's time is the verification itself rather than ferrogen.
//!
//! Modes, each ending with DST and its directory fsynced:
//!
//! - `cat`: read 128 KiB, write it (what `cat SRC > DST` does);
//! - `hash`: read, BLAKE3, write, on one thread: a receiver that checks
//!   what it writes, with no transit at all;
//! - `hash-2t`: the same split over two threads (read and hash; write),
//!   buffers handed between them and reused;
//! - `pipe`: two processes over a pipe, as a local push: the sender reads
//!   and hashes and writes the pipe; the receiver reads the pipe, hashes
//!   and writes DST, and checks the sender's digest (sent after the data).
//!
//! Prints the digest. Exits 1 (with the reason) on any failure or mismatch.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::sync_channel;

/// `cat`'s own buffer size (coreutils uses 128 KiB on Linux).
const BUF: usize = 128 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, mode, src, dst] => run(mode, Path::new(src), Path::new(dst)),
        [_, mode] if mode == "pipe-receive" => receive_pipe(),
        _ => Err("usage: copyfloor cat|hash|hash-2t|pipe SRC DST".into()),
    };
    match result {
        Ok(digest) => println!("{}", digest.to_hex()),
        Err(e) => {
            eprintln!("copyfloor: {e}");
            std::process::exit(1);
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn run(mode: &str, src: &Path, dst: &Path) -> Result<blake3::Hash> {
    let show = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let input = File::open(src).map_err(|e| show(src, e))?;
    if mode == "pipe" {
        return send_pipe(input, dst);
    }
    let output = File::create(dst).map_err(|e| show(dst, e))?;
    let digest = match mode {
        "cat" => copy(input, &output, false),
        "hash" => copy(input, &output, true),
        "hash-2t" => copy_two_threads(input, &output),
        other => return Err(format!("unknown mode {other:?}")),
    }
    .map_err(|e| show(dst, e))?;
    sync(&output, dst).map_err(|e| show(dst, e))?;
    Ok(digest)
}

/// Read, (hash,) write, one buffer, one thread.
fn copy(mut input: impl Read, mut output: &File, hash: bool) -> std::io::Result<blake3::Hash> {
    let mut buf = vec![0u8; BUF];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        if hash {
            hasher.update(&buf[..n]);
        }
        output.write_all(&buf[..n])?;
    }
}

/// A reader thread reads and hashes into reused buffers; this thread
/// writes them.
fn copy_two_threads(input: File, mut output: &File) -> std::io::Result<blake3::Hash> {
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(4);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(8);
    for _ in 0..6 {
        let _ = empty_tx.send(vec![0u8; BUF]);
    }
    let reader = std::thread::spawn(move || -> std::io::Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0;
        while let Ok(mut buf) = empty_rx.recv() {
            let n = input.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
            if full_tx.send((buf, n)).is_err() {
                break;
            }
        }
        Ok(hasher.finalize())
    });
    for (buf, n) in full_rx.iter() {
        output.write_all(&buf[..n])?;
        let _ = empty_tx.send(buf);
    }
    drop(empty_tx);
    reader
        .join()
        .map_err(|_| std::io::Error::other("reader thread panicked"))?
}

/// The sender of `pipe`: starts this program as the receiver, writes the
/// file's bytes into its stdin (1 MiB pipe), then the 32-byte digest.
fn send_pipe(mut input: File, dst: &Path) -> Result<blake3::Hash> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(me)
        .arg("pipe-receive")
        .env("COPYFLOOR_DST", dst)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn receiver: {e}"))?;
    let mut pipe = child.stdin.take().ok_or("no stdin")?;
    grow_pipe(&pipe);
    let size = input.metadata().map_err(|e| e.to_string())?.len();
    let sent = (|| -> std::io::Result<blake3::Hash> {
        pipe.write_all(&size.to_le_bytes())?;
        let mut buf = vec![0u8; BUF];
        let mut hasher = blake3::Hasher::new();
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            pipe.write_all(&buf[..n])?;
        }
        let digest = hasher.finalize();
        pipe.write_all(digest.as_bytes())?;
        Ok(digest)
    })();
    drop(pipe);
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let digest = sent.map_err(|e| format!("send: {e}"))?;
    if !status.success() {
        return Err(format!("receiver failed ({status})"));
    }
    Ok(digest)
}

/// The receiver of `pipe`: size, data (hashed, written), the sender's
/// digest, checked.
fn receive_pipe() -> Result<blake3::Hash> {
    let dst = std::env::var_os("COPYFLOOR_DST").ok_or("COPYFLOOR_DST unset")?;
    let dst = Path::new(&dst);
    let mut stdin = std::io::stdin().lock();
    let mut word = [0u8; 8];
    stdin.read_exact(&mut word).map_err(|e| e.to_string())?;
    let size = u64::from_le_bytes(word);
    let output = File::create(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let got = copy((&mut stdin).take(size), &output, true).map_err(|e| e.to_string())?;
    let mut theirs = [0u8; 32];
    stdin.read_exact(&mut theirs).map_err(|e| e.to_string())?;
    if got.as_bytes() != &theirs {
        return Err(format!("{}: digest mismatch", dst.display()));
    }
    sync(&output, dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    Ok(got)
}

/// 1 MiB, as ferrogen asks for its children's pipes.
fn grow_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // F_SETPIPE_SZ = 1031; best effort, as in ferrogen.
    unsafe extern "C" {
        fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    }
    // SAFETY: fcntl on a valid descriptor this process owns.
    unsafe {
        fcntl(pipe.as_raw_fd(), 1031, 1i32 << 20);
    }
}

fn sync(file: &File, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
