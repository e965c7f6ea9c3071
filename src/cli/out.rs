//! Where the command line writes: results to stdout, failures, warnings
//! and notes to stderr, and a reader that went away ends the output quietly.
//!
//! `println!` panics when stdout is a pipe whose reader has exited
//! (`ferrogen push --json | head -1`): Rust ignores SIGPIPE, so the write
//! fails with EPIPE instead of killing the process. Here a closed stream is
//! remembered and later lines for it are dropped; the command carries on
//! (its transfers are already done or still worth finishing) and exits with
//! the status its work earned. Every line also passes through
//! [`super::sanitize::sanitize`], since much of it quotes targets.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use super::sanitize::sanitize;

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes one line of results to stdout (dropped once stdout is closed).
pub fn result(line: impl Display) {
    write_line(&mut std::io::stdout().lock(), &STDOUT_GONE, &line, true);
}

/// Writes one line of data that is already safe for a terminal (JSON from
/// serde_json) to stdout, unchanged.
pub fn data(line: impl Display) {
    write_line(&mut std::io::stdout().lock(), &STDOUT_GONE, &line, false);
}

/// Writes one failure, warning or note to stderr (dropped once stderr is
/// closed), in plain words: the "(os error N)" that Rust appends to an OS
/// error's description is left out (`--json` keeps it).
pub fn diag(line: impl Display) {
    let text = without_errno(&line.to_string());
    write_line(&mut std::io::stderr().lock(), &STDERR_GONE, &text, true);
}

/// `s` without every " (os error N)".
fn without_errno(s: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Writes raw bytes (a generated script or page) to stdout; a closed
/// stdout ends it quietly.
pub fn bytes(b: &[u8]) {
    let mut w = std::io::stdout().lock();
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    if w.write_all(b).and_then(|()| w.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

fn write_line(w: &mut dyn Write, gone: &AtomicBool, line: &dyn Display, clean: bool) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    let text = line.to_string();
    let text = if clean {
        sanitize(&text)
    } else {
        text.as_str().into()
    };
    // Any failure (EPIPE, EIO on a vanished terminal, ENOSPC on a full
    // redirect target) ends that stream's output: there is nowhere left
    // to say so.
    if writeln!(w, "{text}").and_then(|()| w.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::without_errno;

    #[test]
    fn errno_suffixes_are_dropped_and_nothing_else() {
        assert_eq!(
            without_errno("x: create temp file failed: No such file or directory (os error 2)"),
            "x: create temp file failed: No such file or directory"
        );
        assert_eq!(
            without_errno("a: File exists (os error 17); b: Permission denied (os error 13)!"),
            "a: File exists; b: Permission denied!"
        );
        for keep in ["plain", "a (os error x)", "a (os error 12", "(os error 3)"] {
            assert_eq!(without_errno(keep), keep);
        }
    }
}
