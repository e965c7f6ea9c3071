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
//! 7. if the parent sent the handshake's `Hello` with the stub (it does:
//!    [`BootPlan::with_early_hello`]; a cached copy reads it as its first
//!    frame), reads exactly that many bytes and drops them; then
//!    prints `<MARK> need`, reads exactly the binary's length from stdin
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
//!
//! The stub is written in `stub`, the parent's side of the conversation in
//! `parent`, reading the target's marker lines in `lines`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;

pub use super::binary::{
    Binary, binary, platform_of, portable_binary, portable_name, remove_temp_install,
    uname_pattern, verify_self,
};

mod lines;
mod parent;
mod stub;

pub use parent::parent_side;

/// Environment variable that makes the binary verify its own digest (given
/// as the value, BLAKE3 hex) and exit instead of running a context.
pub const VERIFY_ENV: &str = "FERROGEN_VERIFY";

/// The cache directory below `$HOME`.
pub const CACHE_DIR: &str = ".cache/ferrogen";

/// Set by the stub when the binary was installed in a private temporary
/// directory (no usable cache): the binary removes itself and that
/// directory once it runs.
pub const TEMP_DIR_ENV: &str = "FERROGEN_TEMP_DIR";

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
    /// The handshake's `Hello` frame, written with the stub, before the
    /// stub says anything ([`BootPlan::with_early_hello`]).
    pub early_hello: Option<bytes::Bytes>,
}

impl BootPlan {
    /// A plan for `binary` with a fresh marker.
    pub fn new(binary: Arc<Binary>) -> BootPlan {
        BootPlan {
            binary,
            marker: new_marker(),
            early_hello: None,
        }
    }

    /// The plan with `hello` (the handshake's `Hello` frame) sent right
    /// after the process starts: a cached binary finds it waiting on its
    /// stdin and answers `Ready` at once, one round trip sooner than if
    /// the parent waited for `run cached` to send it (0.1 s over a 100 ms
    /// path, on every connection). A stub that must receive the binary
    /// first reads those bytes and drops them before it says `need`; the
    /// parent then sends `Hello` again after the binary.
    pub fn with_early_hello(mut self, hello: Vec<u8>) -> BootPlan {
        self.early_hello = Some(hello.into());
        self
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
    fn markers_differ() {
        assert_ne!(new_marker(), new_marker());
    }
}
