//! `ferrogen push` end to end over real ssh, sudo and via (issues 4 and 5),
//! against the private sshd of tests/sshd/mod.rs and real sudo: the real
//! binary on the command line, and an in-process controller where the
//! receivers' timestamps are needed. Needs root (CI runs as root).

mod filectl;
mod sshd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ferrogen::connect::{self, ConnectSpec, ContextInfo, Method, SshSpec, SudoSpec};
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use ferrogen::files::{FileService, FileServiceConfig, TARGET_SERVICE};
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::Services;
use filectl::set_times;
use serde_json::Value;
use sshd::Sshd;

// ------------------------------------------------------------------ helpers

/// A `ferrogen` process started by a test; SIGKILLed (by pid) if the test
/// ends before it does.
struct Spawned {
    child: Child,
    stderr_lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr_done: Option<std::thread::JoinHandle<()>>,
    stdout_done: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished `ferrogen push` left.
struct Pushed {
    status: std::process::ExitStatus,
    stdout: String,
    /// Each stderr line with the time it was read.
    stderr: Vec<(Instant, String)>,
    took: Duration,
}

impl Pushed {
    fn stderr_text(&self) -> String {
        self.stderr
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every `--json` entry line (not the per-target summaries).
    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .filter(|v: &Value| v["summary"] != true && v["tee"] != true)
            .collect()
    }

    /// The `--json` lines of one target.
    fn of(&self, target: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["target"] == target)
            .collect()
    }

    /// The `--json` line of the file that landed at `path`.
    fn line_for(&self, path: &Path) -> Value {
        let p = path.to_str().expect("utf8");
        self.lines()
            .into_iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no JSON line for {p}:\n{}", self.describe()))
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.took,
            self.stdout,
            self.stderr_text()
        )
    }

    fn assert_ok(&self) {
        assert!(self.status.success(), "push failed: {}", self.describe());
        let lines = self.lines();
        assert!(!lines.is_empty(), "no JSON lines: {}", self.describe());
        for l in lines {
            assert!(
                ["created", "changed", "unchanged"].contains(&l["status"].as_str().unwrap_or("")),
                "{l}\n{}",
                self.describe()
            );
            assert!(l["error"].is_null(), "{l}");
        }
    }
}

/// Starts `ferrogen push ARGS` (RUST_LOG removed, stdout and stderr captured
/// by threads so a busy child never blocks on a full pipe).
fn spawn_push(args: &[&str]) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .arg("push")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrogen push");
    let mut out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let stderr_lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let sink = stderr_lines.clone();
    let stderr_done = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lock").push((Instant::now(), line));
        }
    });
    let stdout_done = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    Spawned {
        child,
        stderr_lines,
        stderr_done: Some(stderr_done),
        stdout_done: Some(stdout_done),
    }
}

impl Spawned {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the exit (at most `within`, then kills it and fails).
    fn wait(mut self, t0: Instant, within: Duration) -> Pushed {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if t0.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ferrogen push still running after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t0.elapsed();
        if let Some(h) = self.stderr_done.take() {
            let _ = h.join();
        }
        let stdout = self
            .stdout_done
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = std::mem::take(&mut *self.stderr_lines.lock().expect("lock"));
        Pushed {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
            took,
        }
    }
}

/// Runs `ferrogen push ARGS` to the end (at most 5 minutes).
fn push(args: &[&str]) -> Pushed {
    let t0 = Instant::now();
    spawn_push(args).wait(t0, Duration::from_secs(300))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// `DIR/`: "into this directory".
fn into(p: &Path) -> String {
    format!("{}/", s(p))
}

/// Writes `len` bytes of xorshift output (`seed` picks the stream).
fn write_random(p: &Path, len: u64, seed: u64) {
    let mut f = std::fs::File::create(p).expect("create source");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ len;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for w in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        f.write_all(&buf[..n]).expect("write source");
        left -= n as u64;
    }
}

/// BLAKE3 of a file, hex.
fn digest(p: &Path) -> String {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .expect("getpwnam")
        .unwrap_or_else(|| panic!("no account {user}"))
        .uid
        .as_raw()
}

/// A directory for this test run that `user` owns (mode 0700), removed on drop.
struct OwnedDir(PathBuf);

impl OwnedDir {
    /// A fresh name below `parent`, not yet created (the push creates it).
    fn fresh(parent: &Path, tag: &str) -> OwnedDir {
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        OwnedDir(parent.join(format!("fg-{tag}-{nonce}")))
    }

    /// Created now, owned by `user`.
    fn owned_by(tag: &str, user: &str) -> OwnedDir {
        let d = OwnedDir::fresh(&std::env::temp_dir(), tag);
        std::fs::create_dir(&d.0).expect("mkdir");
        chmod(&d.0, 0o700);
        let uid = uid_of(user);
        std::os::unix::fs::chown(&d.0, Some(uid), None).expect("chown");
        d
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names in a directory, hidden ones included, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn real_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Bytes `pid` has written (`wchar` of /proc/PID/io).
fn wchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The ferrogen contexts the private sshd runs for `user`.
fn remote_contexts(s: &Sshd, user: &str) -> Vec<u32> {
    let uid = uid_of(user);
    sshd::descendants(s.pid())
        .into_iter()
        .filter(|&p| real_uid(p) == Some(uid) && cmdline(p).contains("ferrogen __context"))
        .collect()
}

/// The stripe relays (`ferrogen __attach`) the private sshd runs.
fn attach_relays(s: &Sshd) -> Vec<u32> {
    sshd::descendants(s.pid())
        .into_iter()
        // The relay is the context's own binary (`/proc/PID/exe`) with
        // `__attach` as its first argument.
        .filter(|&p| cmdline(p).split(' ').nth(1) == Some("__attach"))
        .collect()
}

/// Compares two trees: the same names, file bytes, modes and mtimes,
/// directory modes and mtimes, symlink targets.
fn assert_same_tree(src: &Path, dst: &Path) {
    let a = std::fs::symlink_metadata(src).expect("stat src");
    let b =
        std::fs::symlink_metadata(dst).unwrap_or_else(|e| panic!("{} missing: {e}", dst.display()));
    assert_eq!(
        a.file_type().is_dir(),
        b.file_type().is_dir(),
        "{}",
        dst.display()
    );
    if a.file_type().is_symlink() {
        assert!(
            b.file_type().is_symlink(),
            "{} not a symlink",
            dst.display()
        );
        assert_eq!(
            std::fs::read_link(src).expect("readlink"),
            std::fs::read_link(dst).expect("readlink"),
            "{}",
            dst.display()
        );
        return;
    }
    assert_eq!(
        a.mode() & 0o7777,
        b.mode() & 0o7777,
        "mode of {}",
        dst.display()
    );
    assert_eq!(
        (a.mtime(), a.mtime_nsec()),
        (b.mtime(), b.mtime_nsec()),
        "mtime of {}",
        dst.display()
    );
    if a.is_dir() {
        assert_eq!(listing(src), listing(dst), "entries of {}", dst.display());
        for name in listing(src) {
            assert_same_tree(&src.join(&name), &dst.join(&name));
        }
    } else {
        assert_eq!(a.len(), b.len(), "size of {}", dst.display());
        assert_eq!(digest(src), digest(dst), "bytes of {}", dst.display());
    }
}

/// A loopback TCP relay to the private sshd that delays every byte by
/// `one_way` in each direction (so ssh sees a real round-trip time), and
/// counts the bytes each accepted connection carried towards sshd. Like a
/// real forwarder, it reaches the far end one round trip after it accepts
/// (so the server's first bytes come no sooner than a path this long
/// allows: the controller tells a loopback sshd from a forwarder by them).
struct DelayRelay {
    port: u16,
    /// Client-to-server bytes per connection, in accept order.
    conns: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
}

impl DelayRelay {
    fn start(to_port: u16, one_way: Duration) -> DelayRelay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = l.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<Arc<AtomicU64>>>> = Arc::default();
        let list = conns.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                // Counted in accept order, connected a round trip later.
                let count = Arc::new(AtomicU64::new(0));
                list.lock().expect("lock").push(count.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(2 * one_way);
                    let Ok(up) = TcpStream::connect(("127.0.0.1", to_port)) else {
                        return;
                    };
                    let _ = c.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (c2, up2) = (
                        c.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    );
                    delayed_pipe(c, up, one_way, Some(count));
                    delayed_pipe(up2, c2, one_way, None);
                });
            }
        });
        DelayRelay { port, conns }
    }

    fn connections(&self) -> Vec<u64> {
        self.conns
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Copies `from` to `to`, each read released `delay` after it was read.
fn delayed_pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    count: Option<Arc<AtomicU64>>,
) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(4096);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now() + delay, Vec::new()));
                    return;
                }
                Ok(n) => {
                    if let Some(c) = &count {
                        c.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, data)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if data.is_empty() || to.write_all(&data).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
        }
    });
}

/// The `-e` value that reaches the fixture's sshd through `relay`.
fn rsh_through(s: &Sshd, relay: &DelayRelay, dir: &Path) -> String {
    let host_pub = std::fs::read_to_string(s.dir.path().join("host_key.pub"))
        .expect("host key of the fixture");
    let kh = dir.join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {host_pub}", relay.port)).expect("known_hosts");
    format!(
        "ssh -F {} -o Port={} -o UserKnownHostsFile={}",
        s.config.display(),
        relay.port,
        kh.display()
    )
}

/// Two relays to the fixture's sshd, so that a test can tell the
/// connections apart however they are accepted: a context's own
/// connection goes through `primary`, a stripe's transport (its remote
/// command runs `__attach`) through `stripes`. (Counted in accept order
/// through one relay, an early stripe transport accepted before the
/// primary on a busy machine made the primary look like a stripe.)
struct SplitRelays {
    primary: DelayRelay,
    stripes: DelayRelay,
    rsh: String,
}

impl SplitRelays {
    fn start(s: &Sshd, one_way: Duration, dir: &Path) -> SplitRelays {
        let primary = DelayRelay::start(s.port, one_way);
        let stripes = DelayRelay::start(s.port, one_way);
        let host_pub = std::fs::read_to_string(s.dir.path().join("host_key.pub"))
            .expect("host key of the fixture");
        let kh = dir.join("known_hosts");
        std::fs::write(
            &kh,
            format!(
                "[127.0.0.1]:{} {key}\n[127.0.0.1]:{} {key}\n",
                primary.port,
                stripes.port,
                key = host_pub.trim()
            ),
        )
        .expect("known_hosts");
        let script = dir.join("split-ssh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$*\" in *__attach*) port={};; *) port={};; esac\n\
                 exec ssh -F {} -o Port=$port -o UserKnownHostsFile={} \"$@\"\n",
                stripes.port,
                primary.port,
                s.config.display(),
                kh.display()
            ),
        )
        .expect("write split-ssh");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let rsh = script.to_string_lossy().into_owned();
        SplitRelays {
            primary,
            stripes,
            rsh,
        }
    }

    /// Connections so far: (primaries', stripes') counts.
    fn counts(&self) -> (usize, usize) {
        (
            self.primary.connections().len(),
            self.stripes.connections().len(),
        )
    }
}

// -------------------------------------------------------- 1. push over ssh

#[test]
fn a_file_and_a_tree_pushed_over_ssh_arrive_identical_with_modes_and_times() {
    let Some(sd) = Sshd::start() else { return };
    let src = tempfile::tempdir().expect("tempdir");
    let big = src.path().join("big.bin");
    write_random(&big, (24 << 20) + 12_345, 1);
    chmod(&big, 0o640);
    set_times(&big, 1_500_000_000, 123_456_789);
    let proj = src.path().join("proj");
    std::fs::create_dir_all(proj.join("sub/deeper")).expect("mkdir");
    std::fs::write(proj.join("top.txt"), b"top\n").expect("write");
    write_random(&proj.join("sub/mid.bin"), 3 << 20, 2);
    std::fs::write(proj.join("sub/deeper/empty"), b"").expect("write");
    write_random(&proj.join("sub/deeper/odd.bin"), 131_047, 3);
    std::os::unix::fs::symlink("top.txt", proj.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", proj.join("sub/dangling")).expect("symlink");
    chmod(&proj.join("top.txt"), 0o600);
    chmod(&proj.join("sub/mid.bin"), 0o755);
    chmod(&proj.join("sub/deeper/odd.bin"), 0o444);
    for (i, f) in [
        "top.txt",
        "sub/mid.bin",
        "sub/deeper/empty",
        "sub/deeper/odd.bin",
    ]
    .iter()
    .enumerate()
    {
        set_times(
            &proj.join(f),
            1_400_000_000 + i as i64 * 1000,
            1000 + i as i64,
        );
    }
    chmod(&proj.join("sub"), 0o750);
    chmod(&proj.join("sub/deeper"), 0o711);
    set_times(&proj.join("sub/deeper"), 1_300_000_000, 5);
    set_times(&proj.join("sub"), 1_300_000_100, 6);
    set_times(&proj, 1_300_000_200, 7);

    let dst = tempfile::tempdir().expect("tempdir");
    let out = dst.path().join("out");
    let r = push(&[
        "--json",
        "-r",
        "-e",
        &sd.rsh(),
        "-H",
        "root",
        s(&big),
        s(&proj),
        &into(&out),
    ]);
    r.assert_ok();
    assert_same_tree(&big, &out.join("big.bin"));
    assert_same_tree(&proj, &out.join("proj"));
    assert_eq!(listing(&out), ["big.bin", "proj"], "no temp files left");

    // One line per entry, each naming the target and the context.
    let lines = r.lines();
    assert_eq!(lines.len(), 1 + 9, "{}", r.describe());
    for l in &lines {
        assert_eq!(l["target"], "root", "{l}");
        assert_eq!(l["context"], "ssh.root", "{l}");
    }
    for (src_file, dst_file) in [
        (big.clone(), out.join("big.bin")),
        (proj.join("sub/mid.bin"), out.join("proj/sub/mid.bin")),
        (
            proj.join("sub/deeper/empty"),
            out.join("proj/sub/deeper/empty"),
        ),
        (
            proj.join("sub/deeper/odd.bin"),
            out.join("proj/sub/deeper/odd.bin"),
        ),
    ] {
        let l = r.line_for(&dst_file);
        assert_eq!(l["digest"], digest(&src_file), "{l}");
        assert_eq!(
            l["bytes"],
            std::fs::metadata(&src_file).expect("stat").len(),
            "{l}"
        );
    }
    assert!(r.line_for(&out.join("proj/link"))["digest"].is_null());
    assert!(r.line_for(&out.join("proj/sub"))["digest"].is_null());

    // --stripes 1 is accepted and changes nothing about the result.
    let out1 = dst.path().join("one");
    let r = push(&[
        "--json",
        "--stripes",
        "1",
        "-e",
        &sd.rsh(),
        "-H",
        "root",
        s(&big),
        &into(&out1),
    ]);
    r.assert_ok();
    assert_same_tree(&big, &out1.join("big.bin"));
    assert_eq!(r.line_for(&out1.join("big.bin"))["digest"], digest(&big));
}

/// Runs a push through `relay`, counting the target's `__attach` relays
/// while it runs. Returns the result and the most relays seen at once.
fn push_counting_attach(sd: &Sshd, args: &[&str]) -> (Pushed, usize) {
    let t0 = Instant::now();
    let mut p = spawn_push(args);
    let mut most = 0;
    while !p.finished() && t0.elapsed() < Duration::from_secs(300) {
        most = most.max(attach_relays(sd).len());
        std::thread::sleep(Duration::from_millis(10));
    }
    (p.wait(t0, Duration::from_secs(300)), most)
}

/// The number N in the log line "N of M extra streams attached", if any.
fn stripes_attached(log: &str) -> Option<(usize, usize)> {
    let l = log.lines().find(|l| l.contains("extra streams attached"))?;
    let words: Vec<&str> = l.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "extra")?;
    Some((
        words.get(i - 3)?.parse().ok()?,
        words.get(i - 1)?.parse().ok()?,
    ))
}

#[test]
fn a_push_to_several_targets_starts_no_speculative_stripe_transports() {
    let Some(sd) = Sshd::start() else { return };
    // 50 ms each way: each connection takes over a second, so a push to
    // one target would start stripe transports before it is up.
    let relay = DelayRelay::start(sd.port, Duration::from_millis(50));
    let work = tempfile::tempdir().expect("tempdir");
    let rsh = rsh_through(&sd, &relay, work.path());
    let big = work.path().join("big.bin");
    write_random(&big, 40 << 20, 11);
    let want = digest(&big);
    // Both targets are accounts of this machine, landing in one directory
    // both may write: one file, whichever lands first (the other sees it
    // changed under it and leaves it, which is not what this tests).
    let dst = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dst.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let dst_s = into(dst.path());
    let p = spawn_push(&[
        "-vv",
        "--json",
        "-e",
        &rsh,
        "-H",
        "root",
        "-H",
        sshd::PLAIN,
        s(&big),
        &dst_s,
    ]);
    let r = p.wait(Instant::now(), Duration::from_secs(120));
    assert_eq!(
        digest(&dst.path().join("big.bin")),
        want,
        "{}",
        r.describe()
    );
    let log = r.stderr_text();
    assert!(
        !log.contains("stripe transports early"),
        "speculative transports for a push to two targets: {log}"
    );
    // Stripes may still come, by what they deliver (steps, after data
    // flowed), but no connection was started before the round trip was
    // known: the first ones are the two targets' own.
    assert!(relay.connections().len() >= 2);
}

#[test]
fn stripes_attach_extra_ssh_streams_that_carry_the_data_and_stripes_1_uses_one() {
    let Some(sd) = Sshd::start() else { return };
    // 10 ms each way: a 20 ms round trip, so the automatic choice stripes
    // too, and long enough that the server's first bytes show a forwarder,
    // not a loopback sshd (whose path is not worth early transports).
    let work = tempfile::tempdir().expect("tempdir");
    let relays = SplitRelays::start(&sd, Duration::from_millis(10), work.path());
    let rsh = relays.rsh.clone();
    let big = work.path().join("striped.bin");
    let size: u64 = 192 << 20;
    write_random(&big, size, 4);
    let want = digest(&big);
    let dst = tempfile::tempdir().expect("tempdir");
    // (the push, most __attach relays seen, the primary connections'
    // bytes towards sshd, the stripes').
    let run = |name: &str, extra: &[&str]| -> (Pushed, usize, Vec<u64>, Vec<u64>) {
        let (p0, s0) = relays.counts();
        let out = dst.path().join(name);
        let mut args = vec!["-v", "--json"];
        args.extend_from_slice(extra);
        let out_s = into(&out);
        args.extend_from_slice(&["-e", &rsh, "-H", "root", s(&big), &out_s]);
        let (r, most) = push_counting_attach(&sd, &args);
        r.assert_ok();
        let landed = out.join("striped.bin");
        assert_eq!(r.line_for(&landed)["digest"], want);
        assert_eq!(digest(&landed), want);
        let primary = relays.primary.connections()[p0..].to_vec();
        let conns = relays.stripes.connections()[s0..].to_vec();
        eprintln!(
            "{name}: {:?}; bytes towards sshd: primary {primary:?}, stripes {conns:?}; {:?}",
            stripes_attached(&r.stderr_text()),
            r.took
        );
        // Every relay goes with its connection.
        let t0 = Instant::now();
        while !attach_relays(&sd).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "__attach left behind"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (r, most, primary, conns)
    };

    // --stripes 4: the connection and 3 stripes, each carrying file data
    // (the primary stays free for calls and acknowledgements).
    let (r, most, primary, conns) = run("four", &["--stripes", "4"]);
    assert_eq!(
        stripes_attached(&r.stderr_text()),
        Some((3, 3)),
        "{}",
        r.stderr_text()
    );
    assert_eq!(most, 3, "__attach relays on the target during the push");
    assert_eq!(primary.len(), 1, "primary connections: {primary:?}");
    assert_eq!(conns.len(), 3, "stripe connections: {conns:?}");
    assert!(
        conns.iter().all(|&b| b > 4 << 20),
        "every stripe carried file data: {conns:?}"
    );

    // The default chooses from the measured round trip: here at least one
    // stripe.
    let (r, most, primary, conns) = run("auto", &[]);
    let (n, m) = stripes_attached(&r.stderr_text())
        .unwrap_or_else(|| panic!("no stripes by default at 10 ms: {}", r.stderr_text()));
    assert!(n >= 1 && n == m, "{n} of {m}");
    assert_eq!(most, n);
    // Transports are started early, as many as the longest path would
    // need, before the round trip is known (issue 14); those it does not
    // call for are ended after their handshake, carrying no file data.
    // The primary (the first connection) carries the first windows: the
    // push no longer waits for its stripes.
    assert_eq!(primary.len(), 1, "primary connections: {primary:?}");
    let carrying = conns.iter().filter(|&&b| b > 4 << 20).count();
    assert_eq!(carrying, n, "{conns:?}");
    assert!(
        conns
            .iter()
            .filter(|&&b| b <= 4 << 20)
            .all(|&b| b < 64 << 10),
        "only handshakes on the others: {conns:?}"
    );

    // --stripes 1: the one connection carries everything.
    let (r, most, primary, conns) = run("one", &["--stripes", "1"]);
    assert_eq!(stripes_attached(&r.stderr_text()), None);
    assert_eq!(most, 0, "no __attach relay with --stripes 1");
    assert!(conns.is_empty(), "{conns:?}");
    assert_eq!(primary.len(), 1, "{primary:?}");
    assert!(primary[0] >= size, "{primary:?}");
}

/// Writes about `len` bytes of log-like lines (compresses several times).
fn write_text(p: &Path, len: u64) {
    let mut out = String::with_capacity(len as usize + 200);
    let mut i = 0u64;
    while (out.len() as u64) < len {
        out.push_str(&format!(
            "2026-11-30T14:{:02}:{:02}Z web{} GET /items/{} status={} bytes={}\n",
            i % 60,
            (i * 7) % 60,
            i % 5,
            i * 31 % 9973,
            [200, 404, 500][(i % 3) as usize],
            i * 17 % 65536
        ));
        i += 1;
    }
    out.truncate(len as usize);
    std::fs::write(p, out).expect("write source");
}

#[test]
fn compression_and_a_bandwidth_limit_work_over_stripes() {
    let Some(sd) = Sshd::start() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let relays = SplitRelays::start(&sd, Duration::from_millis(5), work.path());
    let rsh = relays.rsh.clone();
    let big = work.path().join("app.log");
    let size: u64 = 64 << 20;
    write_text(&big, size);
    let want = digest(&big);
    let dst = tempfile::tempdir().expect("tempdir");
    let out = into(dst.path());
    // Slow enough (the text compresses ~9:1, so ~4 s on the wire) that the
    // stripes, which attach in the background, carry most of it.
    let limit: u64 = 2 << 20;
    let (p0, s0) = relays.counts();
    let r = push(&[
        "-v",
        "--json",
        "-z",
        "--bwlimit",
        "2M",
        "--stripes",
        "3",
        "-e",
        &rsh,
        "-H",
        "root",
        s(&big),
        &out,
    ]);
    r.assert_ok();
    let landed = dst.path().join("app.log");
    assert_eq!(r.line_for(&landed)["digest"], want);
    assert_eq!(digest(&landed), want);
    assert_eq!(
        stripes_attached(&r.stderr_text()),
        Some((2, 2)),
        "{}",
        r.stderr_text()
    );
    let primary = relays.primary.connections()[p0..].to_vec();
    let conns = relays.stripes.connections()[s0..].to_vec();
    eprintln!(
        "bytes towards sshd: primary {primary:?}, stripes {conns:?}; {:?}",
        r.took
    );
    // Compressed on the way (ssh's own compression is off): the
    // controller's summary at -v. How much depends on the level the tuner
    // settles at on a busy machine; the text compresses over 5:1 at any.
    let log = r.stderr_text();
    let z = log
        .lines()
        .find_map(|l| l.split_once("-z: ").map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no -z summary: {log}"));
    let nums: Vec<u64> = z
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (chunks, bytes_in, bytes_out) = (nums[0], nums[1], nums[2]);
    assert!(chunks > 0 && bytes_out * 2 < bytes_in, "{z}");
    // Over both data stripes (the primary also carried the bootstrap).
    assert_eq!(primary.len(), 1, "{primary:?}");
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert!(
        conns.iter().all(|&b| b > 256 << 10),
        "every stripe carried data: {conns:?}"
    );
    // Paced: what the stripes carried left no faster than the limit
    // allows (they also carry ssh's framing: a lower bound).
    let wire: u64 = conns.iter().sum();
    let floor = Duration::from_secs_f64((0.9 * (wire as f64) / limit as f64 - 0.5).max(0.0));
    assert!(r.took >= floor, "{:?} for {wire} bytes at 2 MiB/s", r.took);
}

// ------------------------------------------------------------------ 2. sudo

#[test]
fn push_with_sudo_lands_owned_by_the_third_account_over_the_one_ssh_login() {
    let Some(sd) = Sshd::start() else { return };
    let src = tempfile::tempdir().expect("tempdir");
    let file = src.path().join("payload.bin");
    write_random(&file, (5 << 20) + 7, 5);
    chmod(&file, 0o644);
    let third = sshd::home(sshd::THIRD);
    let dest = OwnedDir::fresh(&third, "sudo");

    // Without sudo, the ssh account cannot write there: the sudo context
    // below is what does the writing.
    let r = push(&[
        "--json",
        "-e",
        &sd.rsh(),
        "-H",
        sshd::SUDOER,
        s(&file),
        &into(&dest.0),
    ]);
    assert!(!r.status.success(), "{}", r.describe());
    let e = r.of(sshd::SUDOER)[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(e.contains("Permission denied"), "{e}");
    let logins_before = sd.logins(sshd::SUDOER);

    // (--stripes 1: extra stripe connections are a separate matter; this
    // is about the sudo stream riding on the ssh connection.)
    let r = push(&[
        "--json",
        "--stripes",
        "1",
        "-e",
        &sd.rsh(),
        "-H",
        sshd::SUDOER,
        "--sudo",
        sshd::THIRD,
        s(&file),
        &into(&dest.0),
    ]);
    r.assert_ok();
    let landed = dest.0.join("payload.bin");
    let l = r.line_for(&landed);
    assert_eq!(l["context"], "ssh.fgsudo/sudo.fgthird", "{l}");
    assert_eq!(l["digest"], digest(&file), "{l}");
    assert_same_tree(&file, &landed);
    let uid = uid_of(sshd::THIRD);
    assert_eq!(std::fs::metadata(&landed).expect("stat").uid(), uid);
    assert_eq!(std::fs::metadata(&dest.0).expect("stat").uid(), uid);
    assert_eq!(listing(&dest.0), ["payload.bin"]);
    assert_eq!(
        sd.logins(sshd::SUDOER) - logins_before,
        1,
        "exactly one ssh login for the ssh and the sudo context"
    );
}

// ------------------------------------------------------------------- 3. via

#[test]
fn via_chains_fetch_from_the_controller_what_only_root_can_read_there() {
    let Some(sd) = Sshd::start() else { return };
    // A root-only source: 0600 in a 0700 directory.
    let src = tempfile::tempdir().expect("tempdir");
    chmod(src.path(), 0o700);
    let secret = src.path().join("secret.bin");
    write_random(&secret, (3 << 20) + 99, 6);
    chmod(&secret, 0o600);
    set_times(&secret, 1_234_567_890, 42);
    let readable = Command::new("sudo")
        .args(["-n", "-u", sshd::PLAIN, "test", "-r"])
        .arg(&secret)
        .status()
        .expect("sudo test");
    assert!(
        !readable.success(),
        "{} can read the source itself",
        sshd::PLAIN
    );
    let home = sshd::home(sshd::PLAIN);

    // controller -> ssh root -> ssh fgsudo (ProxyJump through root) -> sudo fgplain
    let d1 = OwnedDir::fresh(&home, "via1");
    let r = push(&[
        "--json",
        "-e",
        &sd.rsh(),
        "--via",
        "root",
        "-H",
        "fgsudo-jump",
        "--sudo",
        sshd::PLAIN,
        s(&secret),
        &into(&d1.0),
    ]);
    r.assert_ok();
    let landed = d1.0.join("secret.bin");
    let l = r.line_for(&landed);
    assert_eq!(l["context"], "ssh.fgsudo-jump/sudo.fgplain", "{l}");
    assert_eq!(l["digest"], digest(&secret), "{l}");
    assert_same_tree(&secret, &landed);
    assert_eq!(
        std::fs::metadata(&landed).expect("stat").uid(),
        uid_of(sshd::PLAIN)
    );

    // controller -> local -> ssh root -> sudo fgplain
    let d2 = OwnedDir::fresh(&home, "via2");
    let r = push(&[
        "--json",
        "-e",
        &sd.rsh(),
        "--via",
        "local",
        "--via",
        "root",
        "-H",
        "sudo:fgplain",
        s(&secret),
        &into(&d2.0),
    ]);
    r.assert_ok();
    let landed = d2.0.join("secret.bin");
    assert_eq!(r.line_for(&landed)["digest"], digest(&secret));
    assert_same_tree(&secret, &landed);
    assert_eq!(
        std::fs::metadata(&landed).expect("stat").uid(),
        uid_of(sshd::PLAIN)
    );
}

// ---------------------------------------------- 4. one stream, several contexts

fn ssh_spec(sd: &Sshd, alias: &str) -> ConnectSpec {
    let mut ssh = SshSpec::new(alias);
    ssh.command = sd.ssh_command();
    let mut spec = ConnectSpec::new(Method::Ssh(ssh));
    spec.connect_timeout_ms = 60_000;
    spec
}

async fn connect_to(router: &Router, spec: &ConnectSpec, via: Option<u32>) -> ContextInfo {
    connect::connect(router, spec, via)
        .await
        .unwrap_or_else(|e| panic!("connect {} via {via:?}: {e}", spec.method))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_a_sudo_and_a_proxied_context_on_one_stream_receive_one_at_a_time() {
    let Some(sd) = Sshd::start() else { return };
    connect::local::set_child_program(env!("CARGO_BIN_EXE_ferrogen"));
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    ferrogen::ping::register_service(&services, &router);
    let fs = FileService::start(&router, &services, FileServiceConfig::default());

    let ssh = connect_to(&router, &ssh_spec(&sd, "root"), None).await;
    let mut sudo_spec = ConnectSpec::new(Method::Sudo(SudoSpec::new(sshd::PLAIN)));
    sudo_spec.connect_timeout_ms = 60_000;
    let sudo = connect_to(&router, &sudo_spec, Some(ssh.id)).await;
    let proxied = connect_to(&router, &ssh_spec(&sd, sshd::SUDOER), Some(ssh.id)).await;
    assert_eq!(sudo.name, "ssh.root/sudo.fgplain");
    let stream = router.stream_towards(ssh.id).expect("route to ssh.root");
    for c in [&sudo, &proxied] {
        assert_eq!(
            router.stream_towards(c.id),
            Some(stream),
            "{} is reached over the stream to ssh.root",
            c.name
        );
    }

    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("large.bin");
    write_random(&src, 40 << 20, 7);
    let want = digest(&src);
    fs.register(s(&src)).expect("register");
    let dests = [
        OwnedDir::owned_by("one-stream-ssh", "root"),
        OwnedDir::owned_by("one-stream-sudo", sshd::PLAIN),
        OwnedDir::owned_by("one-stream-proxied", sshd::SUDOER),
    ];
    let mut calls = Vec::new();
    for (ctx, dest) in [&ssh, &sudo, &proxied].into_iter().zip(&dests) {
        let plan = PushPlan {
            server: router.id(),
            dest: s(&dest.0).into(),
            into_dir: true,
            entries: vec![PlanEntry::File {
                src: s(&src).into(),
                rel: "large.bin".into(),
                size: std::fs::metadata(&src).expect("source").len(),
                stamp: None,
            }],
            options: ReceiveOptions::default(),
            parallel: 8,
            dry_run: false,
            compare: Default::default(),
            sizes_bound: false,
            filter: Default::default(),
            delete: Default::default(),
            root: None,
        };
        let (r, id, name) = (router.clone(), ctx.id, ctx.name.clone());
        calls.push(tokio::spawn(async move {
            let res: Vec<EntryResult> = r
                .call_service(id, TARGET_SERVICE, "push", &plan)
                .await
                .unwrap_or_else(|e| panic!("push to {name}: {e}"));
            (name, res, unix_ns())
        }));
    }
    let mut spans = Vec::new();
    let mut asked_by = Vec::new();
    for call in calls {
        let (name, res, returned_ns) = call.await.expect("join");
        assert_eq!(res.len(), 1, "{name}: {res:?}");
        assert!(res[0].error.is_none(), "{name}: {res:?}");
        assert_eq!(res[0].digest.as_deref(), Some(want.as_str()), "{name}");
        let (first, last) = res[0].data_span_ns;
        assert!(first > 0 && last >= first, "{name}: {res:?}");
        // `seconds` runs from the receiver's fetch request to its commit,
        // which came before the call returned: so it asked no later than this.
        asked_by.push((returned_ns - (res[0].seconds * 1e9) as u64, name.clone()));
        spans.push((first, last, name));
    }
    for d in &dests {
        assert_eq!(digest(&d.0.join("large.bin")), want);
    }
    spans.sort();
    eprintln!("data spans (ns since the epoch): {spans:?}; asked by {asked_by:?}");
    // All three were waiting for the stream at once: each had asked before
    // the first transfer's last frame (otherwise "one at a time" below would
    // prove nothing).
    for (at, name) in &asked_by {
        assert!(
            *at <= spans[0].1,
            "{name} asked only {:.3} s after the first transfer ended",
            (*at - spans[0].1) as f64 / 1e9
        );
    }
    // A transfer hands the stream on once its end is sent (issue 17's
    // hand-over), so the next one's first bytes may arrive while the last
    // window of the previous one is still in flight (and on its way
    // through the other hops): a small part of its span. Interleaved
    // transfers would overlap for most of it.
    for w in spans.windows(2) {
        let overlap = w[0].1.saturating_sub(w[1].0);
        assert!(
            overlap <= w[0].1.saturating_sub(w[0].0) / 4,
            "transfers to {} and {} interleaved on the shared stream: {:?} then {:?}",
            w[0].2,
            w[1].2,
            (w[0].0, w[0].1),
            (w[1].0, w[1].1)
        );
    }
    assert_eq!(fs.stats().completed, 3);
    assert_eq!(
        std::fs::metadata(dests[1].0.join("large.bin"))
            .expect("stat")
            .uid(),
        uid_of(sshd::PLAIN)
    );
    services.shutdown().await;
    router.close_all_streams("test finished");
}

// ---------------------------------------------------------------- 5. failure

#[test]
fn ssh_killed_mid_transfer_fails_that_host_only_and_leaves_no_temp_file() {
    let Some(sd) = Sshd::start() else { return };
    let src = tempfile::tempdir().expect("tempdir");
    let big = src.path().join("big.bin");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(1 << 30))
        .expect("sparse source");
    // A relative destination: each account's home on the target.
    let rel = format!("fg-push-kill-{}", std::process::id());
    let victim_dir = sshd::home(sshd::SUDOER).join(&rel);
    let other_dir = sshd::home("root").join(&rel);
    let _cleanup = (OwnedDir(victim_dir.clone()), OwnedDir(other_dir.clone()));
    let timeout = 10;

    let t0 = Instant::now();
    let p = spawn_push(&[
        "-v",
        "--json",
        "--stripes",
        "1",
        "--connect-timeout",
        &timeout.to_string(),
        "-e",
        &sd.rsh(),
        "-H",
        sshd::SUDOER,
        "-H",
        "root",
        s(&big),
        &format!("{rel}/"),
    ]);
    // Once the victim is connected (the stub's own writes, such as
    // installing the binary, are counted in its process too), wait until its
    // receiver has written 64 MiB of the file, then kill the ssh client
    // carrying its stream.
    let connected = |p: &Spawned| {
        p.stderr_lines.lock().expect("lock").iter().any(|(_, l)| {
            l.contains("ssh.fgsudo: sent the binary")
                || l.contains("ssh.fgsudo: started the cached binary")
        })
    };
    let mut baseline: Option<(u32, u64)> = None;
    let receiver = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the transfer to {} never got going",
            sshd::SUDOER
        );
        match baseline {
            None if connected(&p) => {
                // The binary may have been sent and not yet started.
                let ctx = remote_contexts(&sd, sshd::SUDOER);
                assert!(ctx.len() <= 1, "one context for {}: {ctx:?}", sshd::SUDOER);
                if let Some(&pid) = ctx.first() {
                    baseline = Some((pid, wchar(pid)));
                }
            }
            Some((pid, base)) if wchar(pid) > base + (64 << 20) => break pid,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let ssh_client: Vec<u32> = sshd::descendants(p.pid())
        .into_iter()
        .filter(|&q| {
            let c = cmdline(q);
            // A transport (`-T`), never an `ssh -G` (the cipher's question).
            c.starts_with("ssh ")
                && c.contains(" -T ")
                && c.contains(&format!(" {} ", sshd::SUDOER))
        })
        .collect();
    assert_eq!(ssh_client.len(), 1, "the victim's ssh client");
    // Taken before the kill: the controller may notice and log before this
    // thread runs again.
    let killed_at = Instant::now();
    sshd::kill(ssh_client[0]);

    let r = p.wait(t0, Duration::from_secs(300));
    assert!(
        !r.status.success(),
        "exit status must be non-zero: {}",
        r.describe()
    );
    // The victim fails, naming its context.
    let v = r.of(sshd::SUDOER);
    assert_eq!(v.len(), 1, "{}", r.describe());
    assert_eq!(v[0]["status"], "failed");
    let e = v[0]["error"].as_str().unwrap_or_default();
    eprintln!("[{}] error: {e}", sshd::SUDOER);
    assert!(e.contains("ssh.fgsudo"), "{e}");
    assert!(
        e.contains("disconnected") || e.contains("closed") || e.contains("connection lost"),
        "the cause: {e}"
    );
    // ... promptly: the controller said so within the connect timeout.
    let noticed = r
        .stderr
        .iter()
        .find(|(at, l)| *at >= killed_at && l.contains("ssh.fgsudo"))
        .unwrap_or_else(|| panic!("nothing logged about ssh.fgsudo:\n{}", r.describe()));
    let after = noticed.0 - killed_at;
    eprintln!("noticed after {after:?}: {}", noticed.1);
    assert!(
        after < Duration::from_secs(timeout),
        "noticed after {after:?}"
    );
    // The other host carried on.
    let o = r.of("root");
    assert_eq!(o.len(), 1, "{}", r.describe());
    assert_eq!(o[0]["status"], "created", "{}", o[0]);
    assert_eq!(o[0]["digest"], digest(&big));
    assert_eq!(listing(&other_dir), ["big.bin"]);
    // The victim's receiver is gone and left nothing behind.
    let gone = Instant::now();
    while std::path::Path::new(&format!("/proc/{receiver}")).exists()
        && real_uid(receiver) == Some(uid_of(sshd::SUDOER))
    {
        assert!(
            gone.elapsed() < Duration::from_secs(timeout),
            "the receiver outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        listing(&victim_dir).is_empty(),
        "left behind: {:?}",
        listing(&victim_dir)
    );
}

// ------------------------------------------------------ 6. a relay's tee

/// A tree with one large file (several windows), a middling one and small
/// ones, in a fresh temp dir.
fn tee_tree(large: u64) -> (tempfile::TempDir, PathBuf, u64, usize) {
    let src = tempfile::tempdir().expect("tempdir");
    let top = src.path().join("tree");
    std::fs::create_dir_all(top.join("small")).expect("mkdir");
    write_random(&top.join("large.bin"), large, 31);
    write_random(&top.join("mid.bin"), 300_001, 32);
    let mut total = large + 300_001;
    for i in 0..40u64 {
        let p = top.join("small").join(format!("f{i}"));
        write_random(&p, 100 + i * 37, 100 + i);
        total += 100 + i * 37;
    }
    set_times(&top.join("large.bin"), 1_234_567_890, 7);
    (src, top, total, 42)
}

/// The `--json` line of the relay's tee, if the push printed one.
fn relay_line(r: &Pushed) -> Option<Value> {
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["tee"] == true)
}

/// A fresh name in each account's home, removed at the end.
struct InHomes(String, Vec<PathBuf>);

impl InHomes {
    fn new(tag: &str, users: &[&str]) -> InHomes {
        let name = OwnedDir::fresh(Path::new(""), tag)
            .0
            .to_string_lossy()
            .into_owned();
        let dirs = users.iter().map(|u| sshd::home(u).join(&name)).collect();
        InHomes(name, dirs)
    }
}

impl Drop for InHomes {
    fn drop(&mut self) {
        for d in &self.1 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn a_relay_fetches_each_file_once_and_serves_every_target_behind_it() {
    let Some(sd) = Sshd::start() else { return };
    let (_src, top, total, files) = tee_tree((6 << 20) + 7);
    let users = [sshd::PLAIN, sshd::THIRD, sshd::SUDOER];
    let dest = InHomes::new("tee", &users);
    let rsh = sd.rsh();
    let mut args = vec!["--json", "-r", "-e", &rsh, "--via", "root"];
    for u in users {
        args.extend(["-H", u]);
    }
    let into_dest = format!("{}/", dest.0);
    args.extend([s(&top), &into_dest]);
    let r = push(&args);
    r.assert_ok();
    for d in &dest.1 {
        assert_same_tree(&top, &d.join("tree"));
    }
    // One copy over the uplink: the relay received each file's bytes once.
    let relay = relay_line(&r).unwrap_or_else(|| panic!("no relay line:\n{}", r.describe()));
    assert_eq!(relay["relay"], "ssh.root", "{relay}");
    assert_eq!(relay["bytes_fetched"], total, "{relay}");
    assert_eq!(relay["files_fetched"], files, "{relay}");
    assert!(relay["shared"].as_u64().unwrap_or(0) > 0, "{relay}");
    // Each large file left the spool once all three targets had it.
    assert_eq!(relay["evicted"], 2, "{relay}");
    // The targets got their data from the relay, not from the controller:
    // every large transfer was served there (the small ones go in batches).
    assert!(
        relay["served"].as_u64().unwrap_or(0) >= users.len() as u64,
        "{relay}"
    );

    // Its two large files were fetched ahead, before any target asked,
    // and those fetches were the ones that served every target.
    assert_eq!(relay["read_ahead"], 2, "{relay}");
    assert_eq!(relay["read_ahead_dropped"], 0, "{relay}");

    // Again: nothing changed. No target fetched anything; what the relay
    // read ahead while the targets compared (the two large files, no
    // more) was dropped once a target answered, and the controller was
    // told to stop sending it (not left waiting for acknowledgements).
    // (`--bwlimit` keeps the read-ahead going until the targets answer.)
    let mut verbose = args.clone();
    verbose.extend(["-vv", "--bwlimit", "2M"]);
    let r = push(&verbose);
    r.assert_ok();
    let relay = relay_line(&r).unwrap_or_else(|| panic!("no relay line:\n{}", r.describe()));
    assert_eq!(relay["served"], 0, "{relay}");
    assert_eq!(relay["read_ahead"], 2, "{relay}");
    assert_eq!(relay["read_ahead_dropped"], 2, "{relay}");
    let large = relay["bytes_fetched"].as_u64().unwrap_or(u64::MAX);
    assert!(large <= (6 << 20) + 7 + 300_001, "{relay}");
    let said = |what: &str| r.stderr.iter().any(|(_, l)| l.contains(what));
    assert!(
        said("the requester ended the transfer: the receiver stopped"),
        "{}",
        r.describe()
    );
    assert!(
        !said("WARN"),
        "a dropped read-ahead is not a warning:\n{}",
        r.describe()
    );

    // --no-tee: the same result, each target fetching from the controller.
    let plain = InHomes::new("notee", &users);
    let into_plain = format!("{}/", plain.0);
    let n = args.len();
    args[n - 1] = &into_plain;
    args.push("--no-tee");
    let r = push(&args);
    r.assert_ok();
    assert!(relay_line(&r).is_none(), "{}", r.describe());
    for d in &plain.1 {
        assert_same_tree(&top, &d.join("tree"));
    }
}

/// Issue 17: with `-z`, the relay sends the chunks and small files that
/// came compressed from the controller on to its targets as they came
/// (linked chunks after the same previous chunk), without compressing them
/// again; over ssh with stripes, whose chunks reach the relay out of
/// order. Every copy is identical.
#[test]
fn a_relay_sends_compressed_chunks_on_as_they_came_over_ssh() {
    let Some(sd) = Sshd::start() else { return };
    let src = tempfile::tempdir().expect("tempdir");
    let top = src.path().join("tree");
    std::fs::create_dir_all(top.join("src")).expect("mkdir");
    // 48 MiB of log: ~5 MiB on the wire, ~2.5 s at 2 MiB/s, while the
    // stripes attach; and small text files.
    write_text(&top.join("app.log"), 48 << 20);
    for i in 0..30u64 {
        write_text(&top.join("src").join(format!("f{i}.rs")), 2000 + i * 3000);
    }
    let users = [sshd::PLAIN, sshd::THIRD];
    let dest = InHomes::new("teez", &users);
    let rsh = sd.rsh();
    let into_dest = format!("{}/", dest.0);
    let mut args = vec![
        "--json",
        "-r",
        "-z",
        "--bwlimit",
        "2M",
        "--stripes",
        "3",
        "-e",
        &rsh,
        "--via",
        "root",
    ];
    for u in users {
        args.extend(["-H", u]);
    }
    args.extend([s(&top), &into_dest]);
    let r = push(&args);
    r.assert_ok();
    for d in &dest.1 {
        assert_same_tree(&top, &d.join("tree"));
    }
    let relay = relay_line(&r).unwrap_or_else(|| panic!("no relay line:\n{}", r.describe()));
    let n = |k: &str| relay[k].as_u64().unwrap_or(u64::MAX);
    // 768 chunks of log (64 KiB: 1/32 s at the limit) and 30 files per
    // target came compressed (the text shrinks ~9:1, 2 MiB/s is far slower
    // than zstd): nearly all were sent on as they came; what the relay
    // compressed itself came raw or is the odd chunk whose previous one
    // differed. (Before the tuner took the limit as the link's ceiling,
    // its raw probe sent ~40 chunks raw that every child then had
    // compressed at the relay; on a busy machine, a thousand.)
    let per_target = 768 + 30;
    assert!(
        n("forwarded_compressed") >= per_target * 2 * 3 / 4
            && n("forwarded_compressed") != u64::MAX,
        "{relay}"
    );
    assert!(
        n("compressed_here") < n("forwarded_compressed") / 8,
        "{relay}"
    );
}

/// Starts a push of a 64 MiB tree through ssh root (teeing) to `users`,
/// paced at `rate` so it is still running when the test acts; returns once
/// every target's context is up, with the start time, the source tree,
/// the destinations and the source's temp dir (removed when dropped).
fn slow_teed_push(
    sd: &Sshd,
    users: &[&str],
    tag: &str,
    rate: &str,
) -> (Spawned, Instant, PathBuf, InHomes, tempfile::TempDir) {
    let (src, top, _total, _) = tee_tree(64 << 20);
    let dest = InHomes::new(tag, users);
    let rsh = sd.rsh();
    let into_dest = format!("{}/", dest.0);
    let mut args = vec![
        "--json",
        "-r",
        "-e",
        &rsh,
        "--bwlimit",
        rate,
        "--via",
        "root",
    ];
    for u in users {
        args.extend(["-H", *u]);
    }
    args.extend([s(&top), &into_dest]);
    let t0 = Instant::now();
    let p = spawn_push(&args);
    for u in users {
        context_of(sd, u, t0);
    }
    (p, t0, top, dest, src)
}

/// Waits (at most a minute) until `user` has a context running.
fn context_of(sd: &Sshd, user: &str, t0: Instant) -> u32 {
    loop {
        if let Some(&pid) = remote_contexts(sd, user).first() {
            return pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no context for {user}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stopped_target_behind_a_relay_holds_nobody_back_and_a_killed_one_fails_alone() {
    let Some(sd) = Sshd::start() else { return };
    let (_src, top, _total, _) = tee_tree(48 << 20);
    let users = [sshd::PLAIN, sshd::THIRD, sshd::KILL];
    let dest = InHomes::new("teestop", &users);
    let rsh = sd.rsh();
    let into_dest = format!("{}/", dest.0);
    let mut args = vec!["--json", "-r", "-e", &rsh, "--via", "root"];
    for u in users {
        args.extend(["-H", u]);
    }
    args.extend([s(&top), &into_dest]);
    let t0 = Instant::now();
    let p = spawn_push(&args);
    // Freeze the victim as soon as it exists: it reads nothing more.
    let victim = context_of(&sd, sshd::KILL, t0);
    let stopped = Command::new("kill")
        .args(["-STOP", &victim.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    // Its siblings finish meanwhile.
    let done = |d: &PathBuf| {
        std::fs::metadata(d.join("tree/large.bin")).is_ok_and(|m| m.len() == 48 << 20)
            && std::fs::metadata(d.join("tree/small/f39")).is_ok()
    };
    loop {
        if dest.1[..2].iter().all(done) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the other targets did not finish while {} was stopped",
            sshd::KILL
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!done(&dest.1[2]), "the stopped target cannot have finished");
    sshd::kill(victim);
    let r = p.wait(t0, Duration::from_secs(300));
    assert!(!r.status.success(), "{}", r.describe());
    for (u, d) in users[..2].iter().zip(&dest.1) {
        assert!(
            r.of(u).iter().all(|l| l["error"].is_null()),
            "{}",
            r.describe()
        );
        assert_same_tree(&top, &d.join("tree"));
    }
    let v = r.of(sshd::KILL);
    assert!(
        v.iter().any(|l| l["status"] == "failed"),
        "{}",
        r.describe()
    );
    // Nothing half-written where it was killed.
    assert!(
        !dest.1[2].join("tree/large.bin").exists(),
        "a partial file landed"
    );
}

#[test]
fn a_relay_killed_mid_push_fails_every_target_below_it_and_nothing_half_written_lands() {
    let Some(sd) = Sshd::start() else { return };
    let users = [sshd::PLAIN, sshd::THIRD];
    // Both targets are up (so the relay is serving them), then it dies.
    let (p, t0, top, dest, _src) = slow_teed_push(&sd, &users, "teerelay", "4M");
    let rsh = sd.rsh();
    // The targets get bytes while the file is still arriving at the relay:
    // at 4 MiB/s it needs 16 s to get there whole, so store-and-forward
    // could not start before then; streamed, a target has 4 MiB within a
    // second or two of being up.
    let up = Instant::now();
    let written = || -> u64 {
        users
            .iter()
            .flat_map(|u| remote_contexts(&sd, u))
            .map(wchar)
            .sum()
    };
    let base = written();
    while written() < base + (4 << 20) {
        assert!(
            up.elapsed() < Duration::from_secs(12),
            "the targets got no data before the file could have reached the relay whole"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let relay_pids: Vec<u32> = remote_contexts(&sd, "root");
    assert!(!relay_pids.is_empty(), "no relay context");
    // Its spool, named after it. Looked at while it lives: once it is
    // dead, any tee starting on this host sweeps it — the next one of this
    // test, or another test's running at the same time.
    let stale: Vec<PathBuf> = relay_pids.iter().flat_map(|p| spool_dirs_of(*p)).collect();
    assert!(!stale.is_empty(), "the relay's spool is named after it");
    for &pid in &relay_pids {
        sshd::kill(pid);
    }
    let r = p.wait(t0, Duration::from_secs(120));
    assert!(!r.status.success(), "{}", r.describe());
    for u in users {
        let lines = r.of(u);
        let failed: Vec<&Value> = lines.iter().filter(|l| l["status"] == "failed").collect();
        assert!(!failed.is_empty(), "{u}: {}", r.describe());
        let e = failed[0]["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("ssh.root"),
            "{u}: the error names the relay: {e}"
        );
    }
    for d in &dest.1 {
        assert!(
            !d.join("tree/large.bin").exists(),
            "a half-sent file landed in {}",
            d.display()
        );
    }
    // The targets' contexts went with their relay.
    let deadline = Instant::now() + Duration::from_secs(20);
    for u in users {
        while !remote_contexts(&sd, u).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{u}'s context outlived its relay"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The killed relay's spool directory (empty: its files had no names)
    // is swept by the next tee on that host.
    let again = InHomes::new("teeagain", &users[..1]);
    let into_again = format!("{}/", again.0);
    let mid = top.join("mid.bin");
    let r = push(&[
        "--json",
        "-e",
        &rsh,
        "--via",
        "root",
        "-H",
        users[0],
        s(&mid),
        &into_again,
    ]);
    r.assert_ok();
    for d in &stale {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// The spool directories named after relay process `pid`.
fn spool_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("ferrogen-tee-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn targets_behind_different_relays_are_each_served_by_their_own_relay() {
    let Some(sd) = Sshd::start() else { return };
    let (_src, top, total, _) = tee_tree((3 << 20) + 5);
    let users = [sshd::PLAIN, sshd::THIRD, sshd::SUDOER];
    let dest = InHomes::new("teegroups", &users);
    // fgplain behind ssh root, fgthird behind a local relay, fgsudo direct.
    let list = tempfile::NamedTempFile::new().expect("hosts file");
    std::fs::write(
        list.path(),
        format!("{} root\n{} local\n{}\n", users[0], users[1], users[2]),
    )
    .expect("write hosts");
    let rsh = sd.rsh();
    let into_dest = format!("{}/", dest.0);
    let r = push(&[
        "--json",
        "-r",
        "-e",
        &rsh,
        "--hosts",
        s(list.path()),
        s(&top),
        &into_dest,
    ]);
    r.assert_ok();
    for d in &dest.1 {
        assert_same_tree(&top, &d.join("tree"));
    }
    let relays: Vec<Value> = r
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["tee"] == true)
        .collect();
    assert_eq!(relays.len(), 2, "{}", r.describe());
    let names: Vec<&str> = relays.iter().filter_map(|v| v["relay"].as_str()).collect();
    assert!(names.contains(&"ssh.root"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("local.")), "{names:?}");
    for v in &relays {
        assert_eq!(v["bytes_fetched"], total, "{v}");
    }
    assert_eq!(r.of(users[0])[0]["context"], "ssh.fgplain");
}

#[test]
fn ctrl_c_during_a_teed_push_cleans_every_level() {
    let Some(sd) = Sshd::start() else { return };
    let users = [sshd::PLAIN, sshd::THIRD];
    let (p, t0, _top, dest, _src) = slow_teed_push(&sd, &users, "teeint", "8M");
    let relay_pids = remote_contexts(&sd, "root");
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Command::new("kill")
        .args(["-INT", &p.pid().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let r = p.wait(t0, Duration::from_secs(60));
    assert_eq!(r.status.code(), Some(130), "{}", r.describe());
    for d in &dest.1 {
        assert!(
            !d.join("tree/large.bin").exists(),
            "a half-sent file landed in {}",
            d.display()
        );
    }
    // Every level ends: the targets, the relay, and the relay's spool.
    let deadline = Instant::now() + Duration::from_secs(20);
    for u in [users[0], users[1], "root"] {
        while !remote_contexts(&sd, u).is_empty() {
            assert!(Instant::now() < deadline, "{u}'s context outlived the push");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for pid in relay_pids {
        assert!(spool_dirs_of(pid).is_empty(), "relay {pid} left its spool");
    }
}

#[test]
fn through_a_relay_deltas_checksums_and_holes_work_as_they_do_direct() {
    let Some(sd) = Sshd::start() else { return };
    let (_src, top, _total, _) = tee_tree((4 << 20) + 3);
    // A file with a hole in the middle.
    let holey = top.join("holey.bin");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&holey).expect("create");
        f.write_all(&[7u8; 300_000]).expect("write");
        f.seek(SeekFrom::Start(8 << 20)).expect("seek");
        f.write_all(&[9u8; 300_000]).expect("write");
    }
    let users = [sshd::PLAIN, sshd::THIRD];
    let dest = InHomes::new("teedelta", &users);
    let rsh = sd.rsh();
    let into_dest = format!("{}/", dest.0);
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "-r", "-S", "-e", &rsh, "--via", "root"];
        for u in users {
            args.extend(["-H", u]);
        }
        args.extend_from_slice(extra);
        args.extend([s(&top), into_dest.as_str()]);
        push(&args)
    };
    let r = run(&[]);
    r.assert_ok();
    for d in &dest.1 {
        assert_same_tree(&top, &d.join("tree"));
        let m = std::fs::metadata(d.join("tree/holey.bin")).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert!(
            m.blocks() * 512 < 4 << 20,
            "the hole was filled in {}: {} blocks",
            d.display(),
            m.blocks()
        );
    }
    // A change in the middle of the large file: each target sends its old
    // copy's signature to the relay, which matches it against its spool.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(top.join("large.bin"))
            .expect("open");
        f.seek(SeekFrom::Start(1 << 20)).expect("seek");
        f.write_all(&[0xAB; 5000]).expect("write");
    }
    // (Without the read-ahead, which would fetch the unchanged large files
    // too while the targets compare.)
    let r = run(&["--no-read-ahead"]);
    r.assert_ok();
    for d in &dest.1 {
        assert_same_tree(&top, &d.join("tree"));
    }
    let relay = relay_line(&r).unwrap_or_else(|| panic!("no relay line:\n{}", r.describe()));
    assert_eq!(
        relay["bytes_fetched"],
        (4 << 20) + 3,
        "only large.bin again: {relay}"
    );
    assert_eq!(relay["read_ahead"], 0, "{relay}");
    // -c: the digests come through the relay; nothing differs, nothing sent.
    let r = run(&["-c"]);
    r.assert_ok();
    for u in users {
        assert!(
            r.of(u).iter().all(|l| l["status"] == "unchanged"),
            "{}",
            r.describe()
        );
    }
}
