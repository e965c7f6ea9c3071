//! Reading what the target prints during the bootstrap: the lines that
//! carry this connection's marker, and a bounded tail of the rest (a motd,
//! an rc file's echo) for the error messages.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::BootFailure;

/// Most bytes a target may print before the bootstrap marker.
const MAX_JUNK: usize = 1024 * 1024;

/// Reads lines until one carries the marker, keeping the tail of the rest.
pub(super) struct Lines<'a, R> {
    name: &'a str,
    reader: &'a mut R,
    buf: BytesMut,
    marker: &'a str,
    junk: Vec<String>,
    junk_bytes: usize,
}

impl<'a, R: AsyncRead + Unpin> Lines<'a, R> {
    /// Reads `reader`, the process of context `name` (for logs), for
    /// lines carrying `marker`.
    pub(super) fn new(name: &'a str, reader: &'a mut R, marker: &'a str) -> Lines<'a, R> {
        Lines {
            name,
            reader,
            buf: BytesMut::with_capacity(16 * 1024),
            marker,
            junk: Vec::new(),
            junk_bytes: 0,
        }
    }

    /// The bytes read past the last marker line (the start of the frame
    /// stream).
    pub(super) fn take_buffered(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// The words after the marker on the next marker line; `None` on EOF.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<String>>, BootFailure> {
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(nl + 1);
                let text = String::from_utf8_lossy(&line[..nl]).into_owned();
                if let Some(at) = text.find(self.marker) {
                    let rest = &text[at + self.marker.len()..];
                    return Ok(Some(rest.split_whitespace().map(String::from).collect()));
                }
                self.junk_bytes += line.len();
                tracing::debug!(
                    "{}: skipped output before the bootstrap: {text:?}",
                    self.name
                );
                if !text.trim().is_empty() {
                    if self.junk.len() == 5 {
                        self.junk.remove(0);
                    }
                    self.junk.push(text);
                }
            }
            if self.junk_bytes + self.buf.len() > MAX_JUNK {
                return Err(BootFailure::new(format!(
                    "more than {MAX_JUNK} bytes of output before ferrogen started{}",
                    self.junk_note()
                )));
            }
            self.buf.reserve(16 * 1024);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(BootFailure::new(format!("reading its output: {e}"))),
            }
        }
    }

    pub(super) fn junk_note(&self) -> String {
        let mut lines = self.junk.clone();
        if !self.buf.is_empty() {
            lines.push(String::from_utf8_lossy(&self.buf).into_owned());
        }
        if lines.is_empty() {
            String::new()
        } else {
            format!(" (it printed: {})", lines.join(" | "))
        }
    }

    /// Whatever else the process prints before EOF (bounded), for `fail`.
    pub(super) async fn rest(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while self.buf.len() < 16 * 1024 {
                match self.reader.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.advance(self.buf.len());
        text.split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains(self.marker))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}
