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
pub struct StderrTail {
    /// The last [`STDERR_TAIL`] lines, oldest first.
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Set once the child's stderr reached EOF.
    closed: Arc<AtomicBool>,
}

impl StderrTail {
    /// The lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines
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
        if let Ok(mut q) = self.lines.lock() {
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
        while !self.closed.load(Ordering::Acquire) && t0.elapsed() < max {
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
        t.closed.store(true, Ordering::Release);
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

/// Why the parent's side of a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The child's output ended first: it exited (its status says why).
    #[error("the process exited before completing the handshake")]
    Exited,
    /// No answer within the connect timeout.
    #[error("no handshake reply within {0:?}")]
    Timeout(Duration),
    /// The handshake could not be sent, or its answer was wrong or a
    /// refusal.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for HandshakeError {
    fn from(s: String) -> HandshakeError {
        HandshakeError::Failed(s)
    }
}

/// Parent side: sends `hello`, waits for `Ready`. Returns the child's answer
/// and any bytes read past it (the start of regular traffic).
pub async fn parent_side<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &Hello,
    parent_id: u32,
    timeout: Duration,
) -> Result<(Ready, BytesMut), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    parent_side_buffered(
        reader,
        writer,
        hello,
        parent_id,
        timeout,
        BytesMut::new(),
        false,
    )
    .await
}

/// The `Hello` frame as it goes on the wire from `parent_id`.
pub fn hello_frame(hello: &Hello, parent_id: u32) -> Vec<u8> {
    let mut frame = Frame::new(
        hello.context_id,
        handles::HELLO,
        Enc::Control,
        control::encode(hello),
    );
    frame.src_id = parent_id;
    frame.auth_id = parent_id;
    codec::encode_to_vec(&frame)
}

/// [`parent_side`] for a reader from which `buf` was already read (e.g.
/// during a bootstrap); with `hello_sent`, `hello` went ahead with the
/// bootstrap stub ([`hello_frame`]) and only `Ready` is waited for.
pub async fn parent_side_buffered<R, W>(
    reader: &mut R,
    writer: &mut W,
    hello: &Hello,
    parent_id: u32,
    timeout: Duration,
    mut buf: BytesMut,
    hello_sent: bool,
) -> Result<(Ready, BytesMut), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = hello_frame(hello, parent_id);
    let exchange = async move {
        // A pipe closed under us means the same as an output that ended:
        // the child is gone.
        let unsent = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::BrokenPipe => HandshakeError::Exited,
            _ => HandshakeError::Failed(format!("could not send the handshake: {e}")),
        };
        if !hello_sent {
            writer.write_all(&frame).await.map_err(unsent)?;
            writer.flush().await.map_err(unsent)?;
        }
        let mut codec = FrameCodec::new(64 * 1024);
        let reply = match next_frame(reader, &mut codec, &mut buf).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(HandshakeError::Exited),
            Err(e) => return Err(HandshakeError::Failed(format!("bad handshake reply: {e}"))),
        };
        if reply.handle != handles::HELLO {
            return Err(HandshakeError::Failed(format!(
                "unexpected first frame {reply:?}"
            )));
        }
        if reply.is_dead() {
            return Err(HandshakeError::Failed(format!(
                "the child refused the handshake: {}",
                reply.dead_reason()
            )));
        }
        let ready: Ready =
            control::decode_frame(&reply).map_err(|e| format!("bad handshake reply: {e}"))?;
        if ready.version != PROTOCOL_VERSION {
            return Err(HandshakeError::Failed(format!(
                "protocol version mismatch: we speak {PROTOCOL_VERSION}, the child {}",
                ready.version
            )));
        }
        Ok((ready, buf))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            context_id: 1,
            parent_ids: vec![0],
            name: "child".into(),
            max_message_size: 1 << 20,
            log_filter: String::new(),
        }
    }

    /// A child that exits before answering is told apart by type, not by
    /// the message's words (the connect error then waits for its status).
    #[tokio::test]
    async fn a_child_that_closes_its_output_is_exited_and_junk_is_a_failure() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        drop(ours);
        let (mut r, mut w) = tokio::io::split(theirs);
        let got = parent_side(&mut r, &mut w, &hello(), 0, Duration::from_secs(5)).await;
        assert_eq!(got.err(), Some(HandshakeError::Exited));

        let (mut ours, theirs) = tokio::io::duplex(1 << 16);
        let (mut r, mut w) = tokio::io::split(theirs);
        let parent = tokio::spawn(async move {
            parent_side(&mut r, &mut w, &hello(), 0, Duration::from_secs(5)).await
        });
        let mut sent = vec![0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut ours, &mut sent).await;
        ours.write_all(b"not a frame at all, but long enough to be read as one")
            .await
            .expect("write");
        let got = parent.await.expect("join");
        assert!(matches!(got, Err(HandshakeError::Failed(_))), "{got:?}");
    }

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
