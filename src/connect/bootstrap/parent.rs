//! [`parent_side`]: the parent's side of the bootstrap — waits for the
//! stub's marker lines, refuses a target the binary cannot run on, sends
//! the binary when asked, and returns once it runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::lines::Lines;
use super::{BootFailure, BootPlan, Started, portable_name};
use crate::connect::binary::Binary;
use crate::connect::libc;

/// Most characters of a target's reason for not caching that are logged.
const MAX_REASON: usize = 2000;

/// Parent side of the bootstrap on a process running [`BootPlan::stub`]:
/// waits for the marker, sends the binary if asked, and returns once the
/// binary has been `exec`ed (ready for the [`crate::connect::handshake`]).
/// `name` is the new context's, for logs.
pub async fn parent_side<R, W>(
    name: &str,
    reader: &mut R,
    writer: &mut W,
    plan: &BootPlan,
    timeout: Duration,
) -> Result<Started, BootFailure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = Lines::new(name, reader, &plan.marker);
    let b = &plan.binary;
    let mut system = String::from("unknown system");
    let mut sent = None;
    loop {
        let words = next_message(&mut lines, timeout, sent.is_some()).await?;
        match words.first().map(String::as_str) {
            Some("uname") => {
                system = words[1..].join(" ");
                if system.trim().is_empty() {
                    system = "unknown system".into();
                }
            }
            Some("arch") => return Err(wrong_arch(b, &system)),
            Some("libc") => check_libc(b, &words[1..])?,
            Some("nocache") => note_no_cache(name, &words[1..]),
            Some("run") => {
                return Ok(Started {
                    system,
                    sent,
                    temp: words.get(2).is_some_and(|w| w == "temp"),
                    buffered: lines.take_buffered(),
                });
            }
            Some("need") if sent.is_none() => {
                send_binary(b, writer, &mut lines, &system, timeout).await?;
                sent = Some(b.len);
            }
            Some("fail") => return Err(stub_failed(&words[1..], &mut lines).await),
            other => {
                return Err(BootFailure::new(format!(
                    "unexpected bootstrap message {other:?}"
                )));
            }
        }
    }
}

/// The words of the stub's next marker line, or why none came within
/// `timeout` (`sent`: after the binary was sent).
async fn next_message<R: AsyncRead + Unpin>(
    lines: &mut Lines<'_, R>,
    timeout: Duration,
    sent: bool,
) -> Result<Vec<String>, BootFailure> {
    // Before the binary is asked for, the stub answers at once; after
    // it was sent, installing (size check, verification) takes a moment.
    match tokio::time::timeout(timeout, lines.next()).await {
        Err(_) => {
            let what = if sent {
                "no answer after the binary was sent"
            } else {
                "no answer: the bootstrap did not start (host unreachable, or the \
                 connection or the remote login hung)"
            };
            Err(BootFailure::new(format!(
                "{what}; gave up after {timeout:?}{}",
                lines.junk_note()
            )))
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => {
            let what = if sent {
                "closed the connection while installing the binary"
            } else {
                "exited before ferrogen started"
            };
            Err(BootFailure {
                detail: format!("{what}{}", lines.junk_note()),
                eof: true,
                diagnosed: false,
            })
        }
        Ok(Ok(Some(w))) => Ok(w),
    }
}

/// The target (`system`) is not what binary `b` is built for.
fn wrong_arch(b: &Binary, system: &str) -> BootFailure {
    BootFailure::diagnosed(format!(
        "the target is {system}, but the binary to run there ({}) is built for {}: \
         build ferrogen for the target and pass it with --remote-binary PATH",
        b.path.display(),
        b.platform()
    ))
}

/// Refuses a C library (the stub's `report`) too old for binary `b`.
fn check_libc(b: &Binary, report: &[String]) -> Result<(), BootFailure> {
    let have = libc::Have::from_report(report);
    libc::fits(&b.libc, &have).map_err(|why| {
        BootFailure::diagnosed(format!(
            "{why}: the binary to run there ({}) cannot start on it. Build the \
             portable static binary with `cargo xtask dist` (target/dist/{}, sent \
             automatically when present) or pass one that runs there with \
             --remote-binary PATH",
            b.path.display(),
            portable_name()
        ))
    })
}

/// Logs that the target has no usable cache, and why (its `words`).
fn note_no_cache(name: &str, words: &[String]) {
    // The target's own words: bounded, control characters
    // escaped before they reach a terminal.
    let why = printable(words.join(" ").trim_start_matches(';').trim(), MAX_REASON);
    tracing::info!(
        "{name}: no usable binary cache on the target ({}); the binary runs from a \
         private temporary directory and is sent again next time",
        why
    );
}

/// Sends binary `b` as the stub asked; if that fails, what the stub said
/// about it, if it said why first.
async fn send_binary<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    b: &Arc<Binary>,
    writer: &mut W,
    lines: &mut Lines<'_, R>,
    system: &str,
    timeout: Duration,
) -> Result<(), BootFailure> {
    tracing::debug!(
        "sending {} ({} bytes) to a {system} target",
        b.path.display(),
        b.len
    );
    let Err(e) = b.send(writer, timeout).await else {
        return Ok(());
    };
    // The stub may have given up first and said why.
    let said = tokio::time::timeout(Duration::from_secs(2), lines.next()).await;
    if let Ok(Ok(Some(w))) = said
        && w.first().map(String::as_str) == Some("fail")
    {
        return Err(BootFailure::diagnosed(format!(
            "bootstrap failed: {} ({e})",
            w[1..].join(" ")
        )));
    }
    Err(BootFailure::new(e.to_string()))
}

/// The stub's `fail` with its `words`, and whatever else it printed.
async fn stub_failed<R: AsyncRead + Unpin>(
    words: &[String],
    lines: &mut Lines<'_, R>,
) -> BootFailure {
    let mut why = words.join(" ");
    let rest = lines.rest().await;
    if !rest.is_empty() {
        why = format!("{why}: {rest}");
    }
    BootFailure::diagnosed(format!("bootstrap failed: {why}"))
}

/// At most `max` characters of `text`, control characters escaped (`\n`,
/// `\u{1b}`), so a target's words cannot drive the terminal.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_printable() {
        assert_eq!(printable("a\x1b[2Jb\nc", 100), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable("mkdir: '/x': é", 100), "mkdir: '/x': é");
        assert_eq!(printable("abcdef", 3), "abc");
    }
}
