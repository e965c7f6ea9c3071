//! The first exchange on a new stream: `Hello` down, `Ready` up.
//!
//! The parent speaks first, telling the child its id, ancestors, name and
//! limits. The child answers `Ready` (its pid and architecture) only once its
//! router is running, so when [`parent_side`] returns the stream can carry
//! any traffic. Both sides read the handshake frame with the ordinary codec,
//! so junk on the pipe fails the handshake with a clear error instead of
//! being misread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest stderr line of a child taken in whole; the rest of a longer line
/// is read and dropped (a line is logged, so it must fit in memory whatever
/// the child writes: a 300 MiB line without a newline used to be buffered
/// whole).
pub const MAX_STDERR_LINE: usize = 64 * 1024;

use crate::stream::tokio_stream_shim::next_frame;
use crate::wire::control::{self, Hello, PROTOCOL_VERSION, Ready};
use crate::wire::{Enc, Frame, FrameCodec, codec, handles};

/// Lines of a child's stderr kept for error messages.
const STDERR_TAIL: usize = 20;

/// Longest stderr line kept for error messages (sudo, for one, echoes the
/// whole bootstrap command when it refuses it).
const MAX_LINE: usize = 300;

/// The last lines a child wrote to stderr, shared with the task reading them.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>, Arc<AtomicBool>);

impl StderrTail {
    /// The lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&self, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [...]");
        }
        if let Ok(mut q) = self.0.lock() {
            if q.len() == STDERR_TAIL {
                q.pop_front();
            }
            q.push_back(line);
        }
    }

    /// Waits up to `max` for the child's stderr to reach EOF, so that the
    /// tail is complete before it goes into an error message.
    pub async fn wait_closed(&self, max: Duration) {
        let t0 = std::time::Instant::now();
        while !self.1.load(Ordering::Acquire) && t0.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Forwards a child's stderr into our log, tagged with its name, keeping the
/// tail for error messages. Lines that start with a level word (as the
/// child's own log lines do) are re-emitted at that level.
pub fn forward_stderr<R: AsyncRead + Unpin + Send + 'static>(
    name: String,
    stderr: R,
) -> StderrTail {
    let tail = StderrTail::default();
    let t = tail.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        while let Some(line) = capped_line(&mut reader, MAX_STDERR_LINE).await {
            let trimmed = line.trim_start();
            let (level, rest) = match trimmed.split_once(' ') {
                Some((l, r)) if matches!(l, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE") => {
                    (l, r.trim_start())
                }
                _ => ("", trimmed),
            };
            match level {
                "ERROR" => tracing::error!(context = %name, "{}", crate::text::sanitize(rest)),
                "WARN" => tracing::warn!(context = %name, "{}", crate::text::sanitize(rest)),
                "INFO" => tracing::info!(context = %name, "{}", crate::text::sanitize(rest)),
                "DEBUG" => tracing::debug!(context = %name, "{}", crate::text::sanitize(rest)),
                "TRACE" => tracing::trace!(context = %name, "{}", crate::text::sanitize(rest)),
                _ => tracing::info!(context = %name, "{}", crate::text::sanitize(rest)),
            }
            t.push(line);
        }
        t.1.store(true, Ordering::Release);
    });
    tail
}

/// The next line (without its newline, invalid UTF-8 replaced), at most
/// `max` bytes of it: the rest of a longer line is skipped and the line
/// marked `[... N bytes dropped]`. `None` at EOF or on a read error.
async fn capped_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> Option<String> {
    let mut line = Vec::new();
    let mut dropped = 0usize;
    let mut any = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(_) => return None,
        };
        if buf.is_empty() {
            if !any {
                return None;
            }
            break;
        }
        any = true;
        let (part, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => (&buf[..nl], Some(nl + 1)),
            None => (buf, None),
        };
        let room = max - line.len();
        let keep = part.len().min(room);
        line.extend_from_slice(&part[..keep]);
        dropped += part.len() - keep;
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if dropped > 0 {
        text.push_str(&format!(" [... {dropped} bytes dropped]"));
    }
    Some(text)
}

/// Parent side: sends `hello`, waits for `Ready`. Returns the child's answer
/// and any bytes read past it (the start of regular traffic).
pub async fn parent_side<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &Hello,
    parent_id: u32,
    timeout: Duration,
) -> Result<(Ready, BytesMut), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    parent_side_buffered(reader, writer, hello, parent_id, timeout, BytesMut::new()).await
}

/// [`parent_side`] for a reader from which `buf` was already read (e.g.
/// during a bootstrap).
pub async fn parent_side_buffered<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &Hello,
    parent_id: u32,
    timeout: Duration,
    mut buf: BytesMut,
) -> Result<(Ready, BytesMut), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frame = Frame::new(
        hello.context_id,
        handles::HELLO,
        Enc::Control,
        control::encode(hello),
    );
    frame.src_id = parent_id;
    frame.auth_id = parent_id;
    let exchange = async move {
        writer
            .write_all(&codec::encode_to_vec(&frame))
            .await
            .map_err(|e| format!("could not send the handshake: {e}"))?;
        writer
            .flush()
            .await
            .map_err(|e| format!("could not send the handshake: {e}"))?;
        let mut codec = FrameCodec::new(64 * 1024);
        let reply = match next_frame(reader, &mut codec, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err("the process exited before completing the handshake".to_string());
            }
            Err(e) => return Err(format!("bad handshake reply: {e}")),
        };
        if reply.handle != handles::HELLO {
            return Err(format!("unexpected first frame {reply:?}"));
        }
        if reply.is_dead() {
            return Err(format!(
                "the child refused the handshake: {}",
                reply.dead_reason()
            ));
        }
        let ready: Ready =
            control::decode_frame(&reply).map_err(|e| format!("bad handshake reply: {e}"))?;
        if ready.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version mismatch: we speak {PROTOCOL_VERSION}, the child {}",
                ready.version
            ));
        }
        Ok((ready, buf))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no handshake reply within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_line_is_cut_and_the_next_one_is_whole() {
        let mut input = vec![b'x'; 3 * MAX_STDERR_LINE];
        input.extend_from_slice(b"\nsecond line\r\nlast");
        let mut r = BufReader::with_capacity(4096, &input[..]);
        let first = capped_line(&mut r, MAX_STDERR_LINE).await.expect("line");
        assert!(first.starts_with(&"x".repeat(MAX_STDERR_LINE)));
        assert!(
            first.ends_with(&format!(" [... {} bytes dropped]", 2 * MAX_STDERR_LINE)),
            "{}",
            &first[MAX_STDERR_LINE..]
        );
        assert_eq!(
            capped_line(&mut r, MAX_STDERR_LINE).await.as_deref(),
            Some("second line")
        );
        assert_eq!(
            capped_line(&mut r, MAX_STDERR_LINE).await.as_deref(),
            Some("last")
        );
        assert_eq!(capped_line(&mut r, MAX_STDERR_LINE).await, None);
    }
}
