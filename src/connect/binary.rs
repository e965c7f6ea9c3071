//! The binary a bootstrap sends: this program (or a portable build) read
//! once and memoised with its BLAKE3 digest and platform, and the two
//! things its copy does on the child's side before it runs a context —
//! verify its own digest (`FERROGEN_VERIFY`) and remove a temporary install.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::libc;

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
    /// The C library it needs on the target (from its ELF headers).
    pub libc: libc::Need,
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
    ) -> Result<(), BinaryError> {
        let mut offset = 0u64;
        while offset < self.len {
            let me = self.clone();
            let want = SEND_CHUNK.min((self.len - offset) as usize);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                me.file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .await
            .map_err(|e| BinaryError::Read {
                path: self.path.clone(),
                source: Arc::new(std::io::Error::other(e.to_string())),
            })?
            .map_err(|e| BinaryError::Read {
                path: self.path.clone(),
                source: Arc::new(e),
            })?;
            match tokio::time::timeout(timeout, w.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(BinaryError::Send {
                        sent: offset,
                        len: self.len,
                        source: Arc::new(e),
                    });
                }
                Err(_) => {
                    return Err(BinaryError::Stalled {
                        sent: offset,
                        len: self.len,
                        timeout,
                    });
                }
            }
            offset += want as u64;
        }
        match tokio::time::timeout(timeout, w.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BinaryError::Flush(Arc::new(e))),
            Err(_) => Err(BinaryError::FlushStalled(timeout)),
        }
    }
}

/// Why the binary to ship could not be read, or could not be sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BinaryError {
    /// This program's own executable could not be found.
    #[error("cannot find this program's executable: {0}")]
    NoExe(#[source] Arc<std::io::Error>),
    /// This program's executable could not be opened.
    #[error("cannot open {}: {source}", .path.display())]
    OpenExe {
        /// The executable.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The binary given could not be opened.
    #[error("cannot open the binary {}: {source}", .path.display())]
    Open {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// Reading (or hashing) it failed.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// Neither ELF nor Mach-O.
    #[error("{} is not an executable ferrogen can ship (no ELF or Mach-O header)", .path.display())]
    NotExecutable {
        /// The file.
        path: PathBuf,
    },
    /// Hashing it on the blocking pool failed (a bug).
    #[error("hashing {}: {why}", .path.display())]
    Hashing {
        /// The binary.
        path: PathBuf,
        /// The task's failure.
        why: String,
    },
    /// Writing it to the target failed.
    #[error("sending the binary failed after {sent} of {len} bytes: {source}")]
    Send {
        /// Bytes sent.
        sent: u64,
        /// Its size.
        len: u64,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// Writing it to the target made no progress for `timeout`.
    #[error("sending the binary stalled for {timeout:?} after {sent} of {len} bytes")]
    Stalled {
        /// Bytes sent.
        sent: u64,
        /// Its size.
        len: u64,
        /// How long.
        timeout: Duration,
    },
    /// The final flush failed.
    #[error("sending the binary failed: {0}")]
    Flush(#[source] Arc<std::io::Error>),
    /// The final flush made no progress for `timeout`.
    #[error("sending the binary stalled for {0:?}")]
    FlushStalled(Duration),
}

type Memo = tokio::sync::Mutex<HashMap<PathBuf, Arc<Binary>>>;

fn memo() -> &'static Memo {
    static MEMO: std::sync::OnceLock<Memo> = std::sync::OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The binary to send: `path` if given, else the program this process runs
/// for its own children (its executable, or the override set with
/// [`super::program::set_child_program`]). Hashed once per process.
pub async fn binary(path: Option<&Path>) -> Result<Arc<Binary>, BinaryError> {
    let (key, own) = match path {
        Some(p) => (p.to_path_buf(), false),
        None => match super::program::child_program_override() {
            Some(p) => (p, true),
            None => match portable_binary() {
                Some(p) => (p, false),
                None => (PathBuf::from("/proc/self/exe"), true),
            },
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
        .map_err(|e| BinaryError::Hashing {
            path: key.clone(),
            why: e.to_string(),
        })??;
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

/// File name of the portable target binary for this architecture, as
/// `cargo xtask dist` writes it into `target/dist/`.
pub fn portable_name() -> String {
    format!("ferrogen-{}-linux", std::env::consts::ARCH)
}

/// The portable binary, if one was built: beside this executable (an
/// installation that copied both), or in `../dist/` from it (this
/// executable in `target/release` or `target/debug`, the portable one in
/// `target/dist`). Looked up from the executable, never from the current
/// directory, so what is sent does not depend on where the command runs.
pub fn portable_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let name = portable_name();
    [dir.join(&name), dir.join("../dist").join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

fn load(path: &Path, own: bool) -> Result<Binary, BinaryError> {
    // Our own executable: /proc/self/exe is the running inode even if the
    // file was replaced since; elsewhere fall back to current_exe().
    let (file, shown) = if path == Path::new("/proc/self/exe") {
        match std::fs::File::open(path) {
            Ok(f) => (f, std::env::current_exe().unwrap_or_else(|_| path.into())),
            Err(_) => {
                let exe = std::env::current_exe().map_err(|e| BinaryError::NoExe(Arc::new(e)))?;
                let f = std::fs::File::open(&exe).map_err(|e| BinaryError::OpenExe {
                    path: exe.clone(),
                    source: Arc::new(e),
                })?;
                (f, exe)
            }
        }
    } else {
        let f = std::fs::File::open(path).map_err(|e| BinaryError::Open {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        (f, path.to_path_buf())
    };
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut len = 0u64;
    let mut header = Vec::new();
    loop {
        let n = file.read_at(&mut buf, len).map_err(|e| BinaryError::Read {
            path: shown.clone(),
            source: Arc::new(e),
        })?;
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
        platform_of(&header).ok_or_else(|| BinaryError::NotExecutable {
            path: shown.clone(),
        })?
    };
    // A file that is not ELF or is malformed needs "something unknown":
    // the stub's trial run of the received copy is then the only check.
    let libc = libc::need_of(&file).unwrap_or_else(|e| libc::Need::Unknown(e.to_string()));
    Ok(Binary {
        path: shown,
        file,
        len,
        digest: hasher.finalize().to_hex().to_string(),
        os,
        arch,
        libc,
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

/// Child side of [`TEMP_DIR_ENV`](super::bootstrap::TEMP_DIR_ENV): removes `dir/ferrogen` if it is this
/// very executable (same device and inode, so a stray variable cannot make
/// it delete anything else), then `dir` if that left it empty.
pub fn remove_temp_install(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let file = dir.join("ferrogen");
    let same = match (
        std::fs::symlink_metadata(&file),
        std::fs::metadata("/proc/self/exe"),
    ) {
        (Ok(a), Ok(b)) => a.file_type().is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same && std::fs::remove_file(&file).is_ok() {
        let _ = std::fs::remove_dir(dir);
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
