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
//! 3. if `$HOME/.cache/ferrogen/<version>-<digest>/ferrogen` is executable,
//!    prints `<MARK> run cached` and `exec`s it (`__context`): later
//!    connections send nothing;
//! 4. otherwise creates that directory, prints `<MARK> need`, reads exactly
//!    the binary's length from stdin (`head -c N` into a temp file in the same
//!    directory; the parent sends nothing else until the stub answers, so
//!    even a `head` that reads ahead cannot swallow protocol bytes), checks
//!    the size, runs the copy once with `FERROGEN_VERIFY=<digest>` — the
//!    binary hashes its own file with BLAKE3 and exits 0 only on a match —
//!    and only then renames it into place (`mv -f`, atomic in one directory,
//!    so connections racing on an empty cache each install a complete copy
//!    and the last rename wins), prints `<MARK> run sent` and `exec`s it.
//!    The temp file is removed on any failure or signal.
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

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::local::CHILD_ARG;

/// Environment variable that makes the binary verify its own digest (given
/// as the value, BLAKE3 hex) and exit instead of running a context.
pub const VERIFY_ENV: &str = "FERROGEN_VERIFY";

/// The cache directory below `$HOME`.
pub const CACHE_DIR: &str = ".cache/ferrogen";

/// Most bytes a target may print before the bootstrap marker.
const MAX_JUNK: usize = 1024 * 1024;

/// Bytes per write while sending the binary.
const SEND_CHUNK: usize = 1024 * 1024;

/// A ferrogen binary that can be sent to targets.
#[derive(Debug)]
pub struct Binary {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Kept open: what is sent is what was hashed, even if the path is
    /// replaced meanwhile (e.g. by a rebuild).
    file: std::fs::File,
    /// Size in bytes.
    pub len: u64,
    /// BLAKE3 of the contents, lowercase hex.
    pub digest: String,
    /// Target OS in Rust's naming (`linux`, `macos`, ...), or `unknown`.
    pub os: String,
    /// Target architecture in Rust's naming (`x86_64`, `aarch64`, ...).
    pub arch: String,
}

impl Binary {
    /// Name of its directory under the cache: `<version>-<digest prefix>`.
    pub fn cache_key(&self) -> String {
        format!(
            "{}-{}",
            env!("CARGO_PKG_VERSION"),
            &self.digest[..32.min(self.digest.len())]
        )
    }

    /// `linux x86_64`.
    pub fn platform(&self) -> String {
        format!("{} {}", self.os, self.arch)
    }

    /// Writes the whole file to `w`, each chunk within `timeout`.
    pub async fn send<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        w: &mut W,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut offset = 0u64;
        while offset < self.len {
            let me = self.clone();
            let want = SEND_CHUNK.min((self.len - offset) as usize);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                me.file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
            match tokio::time::timeout(timeout, w.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(format!(
                        "sending the binary failed after {offset} of {} bytes: {e}",
                        self.len
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "sending the binary stalled for {timeout:?} after {offset} of {} bytes",
                        self.len
                    ));
                }
            }
            offset += want as u64;
        }
        match tokio::time::timeout(timeout, w.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("sending the binary failed: {e}")),
            Err(_) => Err(format!("sending the binary stalled for {timeout:?}")),
        }
    }
}

type Memo = tokio::sync::Mutex<HashMap<PathBuf, Arc<Binary>>>;

fn memo() -> &'static Memo {
    static MEMO: std::sync::OnceLock<Memo> = std::sync::OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The binary to send: `path` if given, else the program this process runs
/// for its own children (its executable, or the override set with
/// [`super::local::set_child_program`]). Hashed once per process.
pub async fn binary(path: Option<&Path>) -> Result<Arc<Binary>, String> {
    let (key, own) = match path {
        Some(p) => (p.to_path_buf(), false),
        None => match super::local::child_program_override() {
            Some(p) => (p, true),
            None => (PathBuf::from("/proc/self/exe"), true),
        },
    };
    let mut m = memo().lock().await;
    if let Some(b) = m.get(&key) {
        return Ok(b.clone());
    }
    let k = key.clone();
    let t0 = std::time::Instant::now();
    let b = tokio::task::spawn_blocking(move || load(&k, own))
        .await
        .map_err(|e| format!("hashing {}: {e}", key.display()))??;
    tracing::debug!(
        "binary to ship: {} ({} bytes, {}, blake3 {}) hashed in {:?}",
        b.path.display(),
        b.len,
        b.platform(),
        b.digest,
        t0.elapsed()
    );
    let b = Arc::new(b);
    m.insert(key, b.clone());
    Ok(b)
}

fn load(path: &Path, own: bool) -> Result<Binary, String> {
    // Our own executable: /proc/self/exe is the running inode even if the
    // file was replaced since; elsewhere fall back to current_exe().
    let (file, shown) = if path == Path::new("/proc/self/exe") {
        match std::fs::File::open(path) {
            Ok(f) => (f, std::env::current_exe().unwrap_or_else(|_| path.into())),
            Err(_) => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this program's executable: {e}"))?;
                let f = std::fs::File::open(&exe)
                    .map_err(|e| format!("cannot open {}: {e}", exe.display()))?;
                (f, exe)
            }
        }
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot open the binary {}: {e}", path.display()))?;
        (f, path.to_path_buf())
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut len = 0u64;
    let mut header = Vec::new();
    loop {
        let n = file
            .read_at(&mut buf, len)
            .map_err(|e| format!("reading {}: {e}", shown.display()))?;
        if n == 0 {
            break;
        }
        if header.len() < 64 {
            header.extend_from_slice(&buf[..n.min(64 - header.len())]);
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let (os, arch) = if own {
        (
            std::env::consts::OS.to_string(),
            std::env::consts::ARCH.to_string(),
        )
    } else {
        platform_of(&header).ok_or_else(|| {
            format!(
                "{} is not an executable ferrogen can ship (no ELF or Mach-O header)",
                shown.display()
            )
        })?
    };
    Ok(Binary {
        path: shown,
        file,
        len,
        digest: hasher.finalize().to_hex().to_string(),
        os,
        arch,
    })
}

/// OS and architecture (Rust's naming) of an executable, from its header.
pub fn platform_of(header: &[u8]) -> Option<(String, String)> {
    if header.len() >= 20 && header[..4] == [0x7f, b'E', b'L', b'F'] {
        let class64 = header[4] == 2;
        let big = header[5] == 2;
        let machine = if big {
            u16::from_be_bytes([header[18], header[19]])
        } else {
            u16::from_le_bytes([header[18], header[19]])
        };
        let arch = match machine {
            3 => "x86",
            62 => "x86_64",
            183 => "aarch64",
            40 => "arm",
            243 if class64 => "riscv64",
            243 => "riscv32",
            21 => "powerpc64",
            20 => "powerpc",
            22 => "s390x",
            258 => "loongarch64",
            8 if class64 => "mips64",
            8 => "mips",
            _ => "unknown",
        };
        let os = match header[7] {
            9 => "freebsd",
            2 => "netbsd",
            12 => "openbsd",
            6 => "solaris",
            _ => "linux",
        };
        return Some((os.into(), arch.into()));
    }
    if header.len() >= 8 {
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if magic == 0xfeed_facf || magic == 0xfeed_face {
            let cpu = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let arch = match cpu {
                0x0100_0007 => "x86_64",
                0x0100_000c => "aarch64",
                7 => "x86",
                _ => "unknown",
            };
            return Some(("macos".into(), arch.into()));
        }
        if header[..4] == [0xca, 0xfe, 0xba, 0xbe] {
            return Some(("macos".into(), "universal".into()));
        }
    }
    None
}

/// `case` pattern matching `"$(uname -s)/$(uname -m)"` on hosts that can run
/// a binary for `os`/`arch` (Rust's naming). Unknown parts match anything.
pub fn uname_pattern(os: &str, arch: &str) -> String {
    let systems: &[&str] = match os {
        "linux" | "android" => &["Linux"],
        "macos" => &["Darwin"],
        "freebsd" => &["FreeBSD"],
        "netbsd" => &["NetBSD"],
        "openbsd" => &["OpenBSD"],
        "solaris" | "illumos" => &["SunOS"],
        _ => &["*"],
    };
    let machines: &[&str] = match arch {
        "x86_64" => &["x86_64", "amd64"],
        "aarch64" => &["aarch64", "arm64"],
        "x86" => &["i[3456]86", "x86", "i86pc"],
        "arm" => &["arm*"],
        "riscv64" => &["riscv64"],
        "powerpc64" => &["ppc64*", "powerpc64*"],
        "powerpc" => &["ppc", "powerpc"],
        "s390x" => &["s390x"],
        "loongarch64" => &["loongarch64"],
        "mips" => &["mips"],
        "mips64" => &["mips64"],
        _ => &["*"],
    };
    let mut alts = Vec::new();
    for s in systems {
        for m in machines {
            alts.push(format!("{s}/{m}"));
        }
    }
    alts.join("|")
}

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
    /// being wrapped in single quotes for any login shell).
    pub fn stub(&self) -> String {
        let b = &self.binary;
        let n = b.len;
        let m = &self.marker;
        let pat = uname_pattern(&b.os, &b.arch);
        let key = b.cache_key();
        let digest = &b.digest;
        [
            format!("M={m}"),
            "s=$(uname -s 2>/dev/null)".into(),
            "a=$(uname -m 2>/dev/null)".into(),
            "printf \"\\n%s uname %s %s\\n\" \"$M\" \"$s\" \"$a\"".into(),
            format!("case \"$s/$a\" in {pat}) ;; *) printf \"%s arch\\n\" \"$M\"; exit 90;; esac"),
            format!("d=\"$HOME/{CACHE_DIR}/{key}\""),
            "f=\"$d/ferrogen\"".into(),
            format!(
                "if test -x \"$f\"; then printf \"%s run cached\\n\" \"$M\"; exec \"$f\" {CHILD_ARG}; fi"
            ),
            "mkdir -p \"$d\" || { printf \"%s fail cannot create the cache directory %s\\n\" \"$M\" \"$d\"; exit 91; }".into(),
            "t=\"$d/.ferrogen.$$.tmp\"".into(),
            "trap \"rm -f \\\"$t\\\"; exit 1\" HUP INT TERM PIPE".into(),
            "printf \"%s need\\n\" \"$M\"".into(),
            format!("head -c {n} >\"$t\""),
            "c=$(($(wc -c <\"$t\")))".into(),
            format!(
                "if test \"$c\" -ne {n}; then rm -f \"$t\"; printf \"%s fail received %s of {n} bytes\\n\" \"$M\" \"$c\"; exit 92; fi"
            ),
            "chmod 700 \"$t\" || { rm -f \"$t\"; printf \"%s fail cannot chmod %s\\n\" \"$M\" \"$t\"; exit 93; }".into(),
            format!(
                "if v=$({VERIFY_ENV}={digest} \"$t\" {CHILD_ARG} </dev/null 2>&1); then :; else rm -f \"$t\"; printf \"%s fail the received binary did not verify or does not run here: %s\\n\" \"$M\" \"$v\"; exit 94; fi"
            ),
            "mv -f \"$t\" \"$f\" || { rm -f \"$t\"; printf \"%s fail cannot install %s\\n\" \"$M\" \"$f\"; exit 95; }".into(),
            "printf \"%s run sent\\n\" \"$M\"".into(),
            format!("exec \"$f\" {CHILD_ARG}"),
        ]
        .join("; ")
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
}

impl BootFailure {
    fn new(detail: impl Into<String>) -> BootFailure {
        BootFailure {
            detail: detail.into(),
            eof: false,
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
                return Err(BootFailure::new(format!(
                    "the target is {system}, but the binary to run there ({}) is built for {}: \
                     build ferrogen for the target and pass it with --remote-binary PATH",
                    b.path.display(),
                    b.platform()
                )));
            }
            Some("run") => {
                return Ok(Started {
                    system,
                    sent,
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
                        return Err(BootFailure::new(format!(
                            "bootstrap failed: {} ({e})",
                            w[1..].join(" ")
                        )));
                    }
                    return Err(BootFailure::new(e));
                }
                sent = Some(b.len);
            }
            Some("fail") => {
                let mut why = words[1..].join(" ");
                let rest = lines.rest().await;
                if !rest.is_empty() {
                    why = format!("{why}: {rest}");
                }
                return Err(BootFailure::new(format!("bootstrap failed: {why}")));
            }
            other => {
                return Err(BootFailure::new(format!(
                    "unexpected bootstrap message {other:?}"
                )));
            }
        }
    }
}

/// Child side of `FERROGEN_VERIFY`: hashes this process's own executable
/// and compares it with `expected`. Returns the exit code.
pub fn verify_self(expected: &str) -> i32 {
    let file = std::fs::File::open("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(std::fs::File::open));
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open own executable: {e}");
            return 3;
        }
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) => {
                eprintln!("cannot read own executable: {e}");
                return 3;
            }
        }
    }
    let got = hasher.finalize().to_hex();
    if got.as_str() == expected.trim() {
        0
    } else {
        eprintln!("digest mismatch: expected {expected}, got {got} ({offset} bytes)");
        4
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
