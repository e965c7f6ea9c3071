//! Bootstrap: running ferrogen on a host that has nothing installed.
//!
//! A connection method that reaches another host or account (`ssh`, `sudo`)
//! does not run ferrogen directly. It runs a short POSIX `sh` stub
//! ([`BootPlan::stub`]) that:
//!
//! 1. prints a line `\n<MARK> uname <uname -s> <uname -m>`, where `<MARK>` is
//!    a random token chosen for this connection, so nothing a login shell
//!    prints before it (a motd, an rc file's echo) can be mistaken for it, and
//!    the parent skips everything before it;
//! 2. checks `uname -s`/`uname -m` against the binary it would run and, on a
//!    mismatch, prints `<MARK> arch` and exits — before anything is sent or
//!    executed;
//! 3. sets `umask 077`, so whatever it creates is private whatever umask
//!    the login left;
//! 4. looks for a cached copy in `$HOME/.cache/ferrogen/<version>-<digest>/`
//!    (not when `HOME` is unset or `/`), then in
//!    `$XDG_RUNTIME_DIR/ferrogen/<version>-<digest>/`. A copy runs (`<MARK>
//!    run cached`, then `exec … __context`) only if it and every directory
//!    from the cache's parent (`~/.cache`, or the directory it links to)
//!    down are owned by the running user, are not symlinks and are
//!    writable by nobody else (one `ls -ldn` for all four paths), its size is the binary's, and a trial run with
//!    `FERROGEN_VERIFY=<digest>` — the binary hashes its own file with
//!    BLAKE3 and exits 0 only on a match — succeeds. Anything else is not
//!    executed: another local user who could write there could have
//!    swapped it. Later connections send nothing;
//! 5. otherwise makes the first of those places private (`mkdir -p`,
//!    `chmod 700` on the directories that are ferrogen's, the same
//!    ownership check), or, if neither can be made private, a `mktemp -d`
//!    directory: then it prints `<MARK> nocache <reasons>` and the binary
//!    removes itself and that directory once it runs ([`TEMP_DIR_ENV`]);
//!    nothing is cached. If even that fails it prints `<MARK> fail` with
//!    every reason (e.g. `mkdir`'s own message);
//! 6. for a dynamically linked binary, prints `<MARK> libc <glibc 2.36 |
//!    musl | unknown>` (`getconf GNU_LIBC_VERSION`, else musl's loader in
//!    `/lib` or `ldd --version` naming musl), so
//!    the parent refuses a C library older than the binary needs before
//!    anything is sent ([`super::libc`]);
//! 7. prints `<MARK> need`, reads exactly the binary's length from stdin
//!    (`head -c N` into a temp file in that directory; the parent sends
//!    nothing else until the stub answers, so even a `head` that reads
//!    ahead cannot swallow protocol bytes), checks the size, runs the trial
//!    run above and only then renames it into place (`mv -f`, atomic in one
//!    directory, so connections racing on an empty cache each install a
//!    complete copy and the last rename wins), prints `<MARK> run sent
//!    [temp]` and `exec`s it. The temp file is removed on any failure or
//!    signal.
//!
//! Besides `sh` the stub needs `uname`, `id`, `ls`, `mkdir`, `chmod`,
//! `head`, `wc`, `mv` and `rm` (it names a missing one), and `mktemp` and
//! `rmdir` only for the no-cache fallback.
//!
//! **Cost of the checks.** On a cache hit the stub runs `id -u`, one `ls`
//! and the trial run (which hashes the binary) before the `exec`; see
//! docs/portable.md for the measured cost against a plain `ssh true`.
//!
//! Any failure prints `<MARK> fail <reason>` and exits; the parent reports
//! the reason with the host's name.
//!
//! **Why BLAKE3 in the binary rather than `sha256sum` in the stub.** The
//! bytes travel inside ssh's authenticated, integrity-protected channel (or
//! a local pipe for sudo), so the check guards against truncation, a mix-up
//! or a bad disk write, not tampering. Checking in the binary needs nothing
//! on the target beyond POSIX `sh`, `head`, `wc`, `mkdir`, `chmod`, `mv`
//! (no `sha256sum`/`shasum`, which minimal images and BSDs lack or spell
//! differently), reuses the digest that names the cache directory, hashes
//! what was written to disk rather than what was received, and doubles as a
//! "does this binary run here at all" test (wrong libc, `noexec` home)
//! before anything is cached. The shell checks the exact size first, so a
//! truncated copy is never executed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub use super::binary::{
    Binary, binary, platform_of, portable_binary, portable_name, remove_temp_install,
    uname_pattern, verify_self,
};
use super::libc;
use super::program::CHILD_ARG;

/// Environment variable that makes the binary verify its own digest (given
/// as the value, BLAKE3 hex) and exit instead of running a context.
pub const VERIFY_ENV: &str = "FERROGEN_VERIFY";

/// The cache directory below `$HOME`.
pub const CACHE_DIR: &str = ".cache/ferrogen";

/// Set by the stub when the binary was installed in a private temporary
/// directory (no usable cache): the binary removes itself and that
/// directory once it runs.
pub const TEMP_DIR_ENV: &str = "FERROGEN_TEMP_DIR";

/// Most bytes a target may print before the bootstrap marker.
const MAX_JUNK: usize = 1024 * 1024;

/// Most characters of a target's reason for not caching that are logged.
const MAX_REASON: usize = 2000;

/// A fresh marker token, unguessable by anything printing on the target.
pub fn new_marker() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    format!("FERROGEN-{}", &h.finalize().to_hex()[..24])
}

/// One bootstrap: the binary to run and this connection's marker.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The binary.
    pub binary: Arc<Binary>,
    /// The marker token.
    pub marker: String,
}

impl BootPlan {
    /// A plan for `binary` with a fresh marker.
    pub fn new(binary: Arc<Binary>) -> BootPlan {
        BootPlan {
            binary,
            marker: new_marker(),
        }
    }

    /// The `sh` script (one line, no single quotes, no `!`, so it survives
    /// being wrapped in single quotes for any login shell, csh's included).
    pub fn stub(&self) -> String {
        let b = &self.binary;
        let n = b.len;
        let m = &self.marker;
        let pat = uname_pattern(&b.os, &b.arch);
        let key = b.cache_key();
        let digest = &b.digest;
        let verify = format!("{VERIFY_ENV}={digest}");
        let mut lines: Vec<String> = vec![
            format!("M={m}"),
            "s=$(uname -s 2>/dev/null)".into(),
            "a=$(uname -m 2>/dev/null)".into(),
            "printf \"\\n%s uname %s %s\\n\" \"$M\" \"$s\" \"$a\"".into(),
            format!("case \"$s/$a\" in {pat}) ;; *) printf \"%s arch\\n\" \"$M\"; exit 90;; esac"),
            // Everything created from here on is private, whatever the
            // umask the login left.
            "umask 077".into(),
            // What the rest needs (builtins aside), so a stripped PATH is
            // named as such rather than as a cache that is "not private".
            "for c in id ls mkdir chmod head wc mv rm; do command -v $c >/dev/null 2>&1 || { printf \"%s fail the command %s is not on the PATH of the target account\\n\" \"$M\" \"$c\"; exit 89; }; done".into(),
            format!("K={key}"),
            format!("N={n}"),
            "u=$(id -u)".into(),
            // pv FILES PATH...: every PATH is a directory or (FILES of
            // them) a regular file of N bytes, owned by this user, not a
            // symlink, and not writable by group or others. One `ls` for
            // all of them (a process, not one per path).
            "pv() { y=$1; shift; n=$#; LC_ALL=C ls -ldn -- \"$@\" 2>/dev/null | (c=0; k=0; while read -r p l o g z r; do c=$((c+1)); test \"$o\" = \"$u\" || exit 1; case \"$p\" in d????-??-*) ;; -????-??-*) test \"$z\" = \"$N\" || exit 1; k=$((k+1));; *) exit 1;; esac; done; test \"$c\" = \"$n\" && test \"$k\" = \"$y\"); }".into(),
            // Where a cache may live: $HOME/.cache (not when HOME is unset
            // or /: root without HOME must not cache in /.cache), then
            // $XDG_RUNTIME_DIR.
            "h=\"\"; if test -n \"$HOME\" && test \"$HOME\" != /; then h=\"$HOME/.cache\"; fi".into(),
            // The cached copy runs only if it and every directory from the
            // cache's parent down are private to this user, and its size
            // and digest (checked by the copy itself) still match. ("$b/":
            // a ~/.cache that is the user's own symlink to a directory
            // elsewhere is judged by that directory.)
            format!(
                "for b in \"$h\" \"$XDG_RUNTIME_DIR\"; do if test -n \"$b\" && pv 1 \"$b/\" \"$b/ferrogen\" \"$b/ferrogen/$K\" \"$b/ferrogen/$K/ferrogen\" && {verify} \"$b/ferrogen/$K/ferrogen\" {CHILD_ARG} </dev/null >/dev/null 2>&1; then printf \"%s run cached\\n\" \"$M\"; exec \"$b/ferrogen/$K/ferrogen\" {CHILD_ARG}; fi; done"
            ),
            // tb BASE: makes BASE/ferrogen/KEY private (repairing the modes
            // of directories that are ours) or says in $e why it cannot.
            "e=\"\"; if test -z \"$h\"; then e=\"; HOME is unset or is /\"; fi".into(),
            "tb() { w=$(mkdir -p \"$1/ferrogen/$K\" 2>&1) || { e=\"$e; $w\"; return 1; }; chmod 700 \"$1/ferrogen\" \"$1/ferrogen/$K\" 2>/dev/null; pv 0 \"$1/\" \"$1/ferrogen\" \"$1/ferrogen/$K\" || { e=\"$e; $1 or a directory below it is not private to uid $u (owned by another user, or writable by group or others)\"; return 1; }; }".into(),
            "d=\"\"; for b in \"$h\" \"$XDG_RUNTIME_DIR\"; do if test -n \"$b\" && tb \"$b\"; then d=\"$b/ferrogen/$K\"; break; fi; done".into(),
            // No usable cache: a private temporary directory, removed by the
            // binary once it runs (FERROGEN_TEMP_DIR); nothing is cached.
            "x=\"\"; if test -z \"$d\"; then d=$(mktemp -d 2>&1) || { printf \"%s fail cannot create a directory for the binary%s; mktemp -d: %s\\n\" \"$M\" \"$e\" \"$d\"; exit 91; }; x=1; printf \"%s nocache %s\\n\" \"$M\" \"$e\"; fi".into(),
            "f=\"$d/ferrogen\"".into(),
            "t=\"$d/.ferrogen.$$.tmp\"".into(),
            // Whatever failed the checks above and is not a plain file goes;
            // a plain file is replaced atomically by the rename below.
            "if test -L \"$f\" || test -d \"$f\"; then rm -rf \"$f\"; fi".into(),
            "cl() { rm -f \"$t\"; if test -n \"$x\"; then rm -f \"$f\"; rmdir \"$d\"; fi; }".into(),
            "trap \"cl; exit 1\" HUP INT TERM PIPE".into(),
        ];
        if b.libc != libc::Need::Nothing {
            // A dynamic binary: say which C library is here, so that the
            // parent refuses a too old one before sending anything.
            lines.push(
                "l=$(getconf GNU_LIBC_VERSION 2>/dev/null) || l=\"\"; if test -z \"$l\"; then l=unknown; if test -e \"/lib/ld-musl-$a.so.1\"; then l=musl; else case $(ldd --version 2>&1) in *musl*) l=musl;; esac; fi; fi; printf \"%s libc %s\\n\" \"$M\" \"$l\"".into(),
            );
        }
        lines.extend([
            "printf \"%s need\\n\" \"$M\"".into(),
            "head -c $N >\"$t\"".into(),
            "c=$(($(wc -c <\"$t\")))".into(),
            "if test \"$c\" -ne $N; then cl; printf \"%s fail received %s of %s bytes\\n\" \"$M\" \"$c\" \"$N\"; exit 92; fi".into(),
            "chmod 700 \"$t\" || { cl; printf \"%s fail cannot chmod %s\\n\" \"$M\" \"$t\"; exit 93; }".into(),
            format!(
                "if v=$({verify} \"$t\" {CHILD_ARG} </dev/null 2>&1); then :; else cl; printf \"%s fail the received binary did not verify or does not run here: %s\\n\" \"$M\" \"$v\"; exit 94; fi"
            ),
            "w=$(mv -f \"$t\" \"$f\" 2>&1) || { cl; printf \"%s fail cannot install %s: %s\\n\" \"$M\" \"$f\" \"$w\"; exit 95; }".into(),
            format!(
                "if test -n \"$x\"; then {TEMP_DIR_ENV}=\"$d\"; export {TEMP_DIR_ENV}; printf \"%s run sent temp\\n\" \"$M\"; else printf \"%s run sent\\n\" \"$M\"; fi"
            ),
            format!("exec \"$f\" {CHILD_ARG}"),
        ]);
        lines.join("; ")
    }

    /// The stub as one remote command for ssh (run by the login shell).
    pub fn remote_command(&self) -> String {
        format!("exec /bin/sh -c '{}'", self.stub())
    }
}

/// What the stub reported once the binary runs.
#[derive(Debug)]
pub struct Started {
    /// `uname -s uname -m` of the target.
    pub system: String,
    /// Bytes sent, if the binary had to be sent.
    pub sent: Option<u64>,
    /// The target had no usable cache: the binary runs from a private
    /// temporary directory and will be sent again next time.
    pub temp: bool,
    /// Bytes read past the last marker line (start of the frame stream).
    pub buffered: BytesMut,
}

/// Why the bootstrap did not complete.
#[derive(Debug)]
pub struct BootFailure {
    /// What went wrong.
    pub detail: String,
    /// True if the process closed its output (it probably exited); the
    /// caller adds its exit status and a diagnosis from its stderr.
    pub eof: bool,
    /// True if the stub (or this side, from what the stub reported) named
    /// the cause: guesses from stderr must not be put in front of it (a
    /// `mkdir` "Permission denied" is not an ssh authentication failure).
    pub diagnosed: bool,
}

impl BootFailure {
    fn new(detail: impl Into<String>) -> BootFailure {
        BootFailure {
            detail: detail.into(),
            eof: false,
            diagnosed: false,
        }
    }

    fn diagnosed(detail: impl Into<String>) -> BootFailure {
        BootFailure {
            diagnosed: true,
            ..BootFailure::new(detail)
        }
    }
}

/// Reads lines until one carries the marker, keeping the tail of the rest.
struct Lines<'a, R> {
    name: &'a str,
    reader: &'a mut R,
    buf: BytesMut,
    marker: &'a str,
    junk: Vec<String>,
    junk_bytes: usize,
}

impl<R: AsyncRead + Unpin> Lines<'_, R> {
    /// The words after the marker on the next marker line; `None` on EOF.
    async fn next(&mut self) -> Result<Option<Vec<String>>, BootFailure> {
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

    fn junk_note(&self) -> String {
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
    async fn rest(&mut self) -> String {
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

/// Parent side of the bootstrap on a process running [`BootPlan::stub`]:
/// waits for the marker, sends the binary if asked, and returns once the
/// binary has been `exec`ed (ready for the [`super::handshake`]).
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
    let mut lines = Lines {
        name,
        reader,
        buf: BytesMut::with_capacity(16 * 1024),
        marker: &plan.marker,
        junk: Vec::new(),
        junk_bytes: 0,
    };
    let b = &plan.binary;
    let mut system = String::from("unknown system");
    let mut sent = None;
    loop {
        // Before the binary is asked for, the stub answers at once; after
        // it was sent, installing (size check, verification) takes a moment.
        let words = match tokio::time::timeout(timeout, lines.next()).await {
            Err(_) => {
                let what = if sent.is_some() {
                    "no answer after the binary was sent"
                } else {
                    "no answer: the bootstrap did not start (host unreachable, or the \
                     connection or the remote login hung)"
                };
                return Err(BootFailure::new(format!(
                    "{what}; gave up after {timeout:?}{}",
                    lines.junk_note()
                )));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => {
                let what = if sent.is_some() {
                    "closed the connection while installing the binary"
                } else {
                    "exited before ferrogen started"
                };
                return Err(BootFailure {
                    detail: format!("{what}{}", lines.junk_note()),
                    eof: true,
                    diagnosed: false,
                });
            }
            Ok(Ok(Some(w))) => w,
        };
        match words.first().map(String::as_str) {
            Some("uname") => {
                system = words[1..].join(" ");
                if system.trim().is_empty() {
                    system = "unknown system".into();
                }
            }
            Some("arch") => {
                return Err(BootFailure::diagnosed(format!(
                    "the target is {system}, but the binary to run there ({}) is built for {}: \
                     build ferrogen for the target and pass it with --remote-binary PATH",
                    b.path.display(),
                    b.platform()
                )));
            }
            Some("libc") => {
                let have = libc::Have::from_report(&words[1..]);
                if let Err(why) = libc::fits(&b.libc, &have) {
                    return Err(BootFailure::diagnosed(format!(
                        "{why}: the binary to run there ({}) cannot start on it. Build the \
                         portable static binary with `cargo xtask dist` (target/dist/{}, sent \
                         automatically when present) or pass one that runs there with \
                         --remote-binary PATH",
                        b.path.display(),
                        portable_name()
                    )));
                }
            }
            Some("nocache") => {
                // The target's own words: bounded, control characters
                // escaped before they reach a terminal.
                let why = printable(
                    words[1..].join(" ").trim_start_matches(';').trim(),
                    MAX_REASON,
                );
                tracing::info!(
                    "{name}: no usable binary cache on the target ({}); the binary runs from a \
                     private temporary directory and is sent again next time",
                    why
                );
            }
            Some("run") => {
                return Ok(Started {
                    system,
                    sent,
                    temp: words.get(2).is_some_and(|w| w == "temp"),
                    buffered: std::mem::take(&mut lines.buf),
                });
            }
            Some("need") if sent.is_none() => {
                tracing::debug!(
                    "sending {} ({} bytes) to a {system} target",
                    b.path.display(),
                    b.len
                );
                if let Err(e) = b.send(writer, timeout).await {
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
                    return Err(BootFailure::new(e.to_string()));
                }
                sent = Some(b.len);
            }
            Some("fail") => {
                let mut why = words[1..].join(" ");
                let rest = lines.rest().await;
                if !rest.is_empty() {
                    why = format!("{why}: {rest}");
                }
                return Err(BootFailure::diagnosed(format!("bootstrap failed: {why}")));
            }
            other => {
                return Err(BootFailure::new(format!(
                    "unexpected bootstrap message {other:?}"
                )));
            }
        }
    }
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
    fn elf_headers() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(
            platform_of(&h),
            Some(("linux".to_string(), "aarch64".to_string()))
        );
        h[18..20].copy_from_slice(&62u16.to_le_bytes());
        h[7] = 9;
        assert_eq!(
            platform_of(&h),
            Some(("freebsd".to_string(), "x86_64".to_string()))
        );
        assert_eq!(platform_of(b"#!/bin/sh\necho hi\n"), None);
    }

    #[test]
    fn patterns() {
        assert_eq!(uname_pattern("linux", "x86_64"), "Linux/x86_64|Linux/amd64");
        assert_eq!(uname_pattern("plan9", "weird"), "*/*");
    }

    #[test]
    fn reasons_are_printable() {
        assert_eq!(printable("a\x1b[2Jb\nc", 100), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable("mkdir: '/x': é", 100), "mkdir: '/x': é");
        assert_eq!(printable("abcdef", 3), "abc");
    }

    #[test]
    fn markers_differ() {
        assert_ne!(new_marker(), new_marker());
    }
}
