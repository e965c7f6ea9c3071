//! A private OpenSSH server for the ssh/sudo tests, started by the tests
//! themselves: generated host and user keys in a temp dir, test accounts
//! (created idempotently with useradd, plus one sudoers.d file), `sshd -D`
//! on 127.0.0.1 at a free port with its own config, pid and log, and an
//! ssh_config with an alias per account and a ProxyJump alias through the
//! same sshd. Dropping the fixture kills that sshd (and its sessions) by pid
//! and removes the temp dir. It never touches the system sshd or its
//! configuration.
//!
//! Needs root and `/usr/sbin/sshd` (`.ci/run` installs openssh-server and
//! sudo). Without them, [`Sshd::start`] panics when `CI=true` and otherwise
//! prints a notice and returns `None` (the test then passes vacuously).

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// May become anyone with sudo, without a password.
pub const SUDOER: &str = "fgsudo";
/// No sudo rights; cannot read other test accounts' homes.
pub const PLAIN: &str = "fgplain";
/// Has a sudo rule that requires a password.
pub const PASSWORD: &str = "fgpass";
/// Its login shell prints junk (and a fake marker) on stdout.
pub const JUNK: &str = "fgjunk";
/// Its PATH has a `uname` that reports `aarch64`.
pub const ARM: &str = "fgarm";
/// Its PATH has no `sudo`.
pub const NO_SUDO: &str = "fgnosudo";
/// First/second connection (its cache is cleared by that test only).
pub const CACHE: &str = "fgcache";
/// Concurrent first connections.
pub const RACE: &str = "fgrace";
/// Connections killed while the binary is being sent.
pub const KILL: &str = "fgkill";
/// The third account that sudo reaches from SUDOER.
pub const THIRD: &str = "fgthird";
/// Concurrent first connections over sudo.
pub const SUDO_RACE: &str = "fgsudorace";
/// May become THIRD with sudo, and nobody else.
pub const LIMITED: &str = "fglimited";

/// Its login shell sets `umask 000`; its home is 0755 (others may enter).
pub const UMASK: &str = "fgumask";
/// Its cache is made writable by others and swapped by PLAIN; home 0755.
pub const SWAP: &str = "fgswap";
/// Its home belongs to root (0755): it cannot create a cache there.
pub const RO_HOME: &str = "fgrohome";
/// Its PATH has a `getconf` that reports glibc 2.17.
pub const OLD_LIBC: &str = "fgoldlibc";
/// Its `~/.cache` is made a symlink to a directory elsewhere.
pub const LINKED: &str = "fglinked";
/// Its PATH has a `getconf` without GNU_LIBC_VERSION and an `ldd` that
/// says musl, as on Alpine.
pub const MUSL: &str = "fgmusl";
/// Reached through an rsh that starts the remote command only once its
/// stdin has data (its cache is cleared by that test only).
pub const HELLO: &str = "fghello";

/// Every test account.
pub const USERS: &[&str] = &[
    SUDOER, PLAIN, PASSWORD, JUNK, ARM, NO_SUDO, CACHE, RACE, KILL, THIRD, SUDO_RACE, LIMITED,
    UMASK, SWAP, RO_HOME, OLD_LIBC, LINKED, MUSL, HELLO,
];

const SUDOERS_FILE: &str = "/etc/sudoers.d/ferrogen-tests";

/// A running private sshd.
pub struct Sshd {
    /// Holds keys, configs, log; removed on drop.
    pub dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// ssh_config with the aliases (`root`, each test account, `jump`,
    /// `<user>-jump`).
    pub config: PathBuf,
    /// The authorised client key.
    pub key: PathBuf,
    /// sshd's log (`-E`).
    pub log: PathBuf,
    child: Child,
}

/// Why the fixture cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        return Some("/usr/sbin/sshd is missing (apt-get install openssh-server)".into());
    }
    for tool in ["ssh", "ssh-keygen", "sudo", "useradd", "visudo"] {
        if !on_path(tool) {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(tool).exists())
            || Path::new("/usr/sbin").join(tool).exists()
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(path: &Path, text: &str, mode: u32) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The home directory of a test account.
pub fn home(user: &str) -> PathBuf {
    if user == "root" {
        PathBuf::from("/root")
    } else {
        PathBuf::from("/home").join(user)
    }
}

/// The ferrogen cache of an account.
pub fn cache_dir(user: &str) -> PathBuf {
    home(user).join(".cache/ferrogen")
}

/// Removes an account's ferrogen cache.
pub fn clear_cache(user: &str) {
    let _ = std::fs::remove_dir_all(cache_dir(user));
}

/// Every file below an account's cache (relative paths), sorted.
pub fn cache_files(user: &str) -> Vec<String> {
    let mut out = Vec::new();
    let root = cache_dir(user);
    if let Ok(dirs) = std::fs::read_dir(&root) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    out.push(format!(
                        "{}/{}",
                        d.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

fn real_tool(name: &str) -> String {
    for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{name} not found");
}

/// Creates the test accounts and the sudoers file (idempotent; once per
/// process), and empties their ferrogen caches.
fn setup_accounts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for &u in USERS {
            let exists = Command::new("id")
                .arg(u)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !exists {
                // Concurrent test binaries may race here: a failure is fine
                // if the account exists afterwards.
                let _ = Command::new("useradd")
                    .args(["-m", "-s", "/bin/sh", u])
                    .status();
            }
            let h = home(u);
            std::fs::create_dir_all(&h).expect("home");
            run(Command::new("chown").arg(format!("{u}:")).arg(&h));
            // '*' = no password but not locked (sshd with UsePAM=no refuses
            // key logins to locked accounts).
            run(Command::new("usermod").args(["-p", "*", u]));
            // Nobody else may read a test account's files.
            std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            let _ = std::fs::remove_dir_all(h.join(".cache/ferrogen"));
        }
        // Login shells: plain sh, or a wrapper that changes what the
        // bootstrap stub sees.
        let shell = |u: &str, body: &str| {
            let p = home(u).join(".fg-shell");
            write(
                &p,
                &format!("#!/bin/sh\n{body}\nexec /bin/sh \"$@\"\n"),
                0o755,
            );
            run(Command::new("usermod").arg("-s").arg(&p).arg(u));
        };
        for &u in USERS {
            if ![JUNK, ARM, NO_SUDO, UMASK, OLD_LIBC, MUSL].contains(&u) {
                run(Command::new("usermod").args(["-s", "/bin/sh", u]));
            }
        }
        // A motd-like banner, a partial line and a decoy marker on stdout.
        shell(
            JUNK,
            "echo 'Welcome to the ferrogen junk host!'\n\
             echo 'FERROGEN-0000 run cached'\n\
             printf 'a partial line without a newline'",
        );
        let arm_bin = home(ARM).join(".fg-bin");
        std::fs::create_dir_all(&arm_bin).expect("mkdir");
        let uname = real_tool("uname");
        write(
            &arm_bin.join("uname"),
            &format!(
                "#!/bin/sh\ncase \"$1\" in -m) echo aarch64;; *) exec {uname} \"$@\";; esac\n"
            ),
            0o755,
        );
        shell(
            ARM,
            &format!("PATH={}:$PATH; export PATH", arm_bin.display()),
        );
        let ns_bin = home(NO_SUDO).join(".fg-bin");
        std::fs::create_dir_all(&ns_bin).expect("mkdir");
        for t in [
            "sh", "uname", "head", "wc", "mkdir", "chmod", "mv", "rm", "cat", "id", "env", "ls",
            "mktemp", "rmdir",
        ] {
            let link = ns_bin.join(t);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(real_tool(t), &link).expect("symlink");
        }
        shell(NO_SUDO, &format!("PATH={}; export PATH", ns_bin.display()));
        shell(UMASK, "umask 000");
        let libc_bin = home(OLD_LIBC).join(".fg-bin");
        std::fs::create_dir_all(&libc_bin).expect("mkdir");
        write(
            &libc_bin.join("getconf"),
            &format!(
                "#!/bin/sh\ncase \"$1\" in GNU_LIBC_VERSION) echo 'glibc 2.17';; *) exec {} \"$@\";; esac\n",
                real_tool("getconf")
            ),
            0o755,
        );
        shell(
            OLD_LIBC,
            &format!("PATH={}:$PATH; export PATH", libc_bin.display()),
        );
        let musl_bin = home(MUSL).join(".fg-bin");
        std::fs::create_dir_all(&musl_bin).expect("mkdir");
        write(
            &musl_bin.join("getconf"),
            &format!(
                "#!/bin/sh\ncase \"$1\" in GNU_LIBC_VERSION) echo 'getconf: GNU_LIBC_VERSION: unknown variable' >&2; exit 1;; *) exec {} \"$@\";; esac\n",
                real_tool("getconf")
            ),
            0o755,
        );
        write(
            &musl_bin.join("ldd"),
            "#!/bin/sh\nprintf 'musl libc (x86_64)\\nVersion 1.2.5\\n' >&2\nexit 1\n",
            0o755,
        );
        shell(
            MUSL,
            &format!("PATH={}:$PATH; export PATH", musl_bin.display()),
        );
        for &u in USERS {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{u}:"))
                .arg(home(u)));
        }
        // Homes others may enter (as a default umask 022 leaves them), and
        // one its owner cannot write.
        for u in [UMASK, SWAP] {
            std::fs::set_permissions(home(u), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        run(Command::new("chown").arg("root:root").arg(home(RO_HOME)));
        std::fs::set_permissions(home(RO_HOME), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");

        let rules = format!(
            "# ferrogen tests (tests/sshd/mod.rs)\n\
             {SUDOER} ALL=(ALL:ALL) NOPASSWD: ALL\n\
             {PASSWORD} ALL=(ALL:ALL) ALL\n\
             {LIMITED} ALL=({THIRD}) NOPASSWD: ALL\n"
        );
        let tmp = format!("{SUDOERS_FILE}.tmp{}", std::process::id());
        write(Path::new(&tmp), &rules, 0o440);
        run(Command::new("visudo").args(["-cqf", &tmp]));
        std::fs::rename(&tmp, SUDOERS_FILE).expect("install sudoers file");
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sshd {
    /// Starts a private sshd, or returns `None` (after a notice) where the
    /// prerequisites are missing outside CI.
    pub fn start() -> Option<Sshd> {
        if let Some(why) = missing_prerequisite() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("the ssh tests cannot run in CI: {why}");
            }
            eprintln!("NOTICE: skipping an ssh test: {why}");
            return None;
        }
        setup_accounts();
        let dir = tempfile::Builder::new()
            .prefix("ferrogen-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();
        // sshd reads authorized keys as the user: the dir must be readable.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (name, comment) in [
            ("host_key", "ferrogen-test-host"),
            ("id", "ferrogen-test-client"),
        ] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(name)));
        }
        let key = d.join("id");
        let pubkey = std::fs::read_to_string(d.join("id.pub")).expect("read id.pub");
        let ak = d.join("authorized_keys");
        std::fs::create_dir(&ak).expect("mkdir");
        std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for u in std::iter::once("root").chain(USERS.iter().copied()) {
            write(&ak.join(u), &pubkey, 0o644);
        }
        std::fs::create_dir_all("/run/sshd").expect("privilege separation dir");

        let log = d.join("sshd.log");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let cfg = d.join("sshd_config");
            write(
                &cfg,
                &format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {hk}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {ak}/%u\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     PrintLastLog no\n\
                     X11Forwarding no\n\
                     AllowTcpForwarding yes\n\
                     MaxSessions 64\n\
                     MaxStartups 100:30:200\n\
                     LogLevel INFO\n",
                    hk = d.join("host_key").display(),
                    pid = d.join("sshd.pid").display(),
                    ak = ak.display(),
                ),
                0o644,
            );
            let _ = std::fs::remove_file(&log);
            let mut child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-f")
                .arg(&cfg)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start sshd");
            let t0 = Instant::now();
            let mut up = false;
            while t0.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                last_err = std::fs::read_to_string(&log).unwrap_or_default();
                continue;
            }
            let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
            write(
                &d.join("known_hosts"),
                &format!("[127.0.0.1]:{port} {host_pub}"),
                0o644,
            );
            let config = d.join("ssh_config");
            let mut text = String::from("# generated by tests/sshd/mod.rs\n");
            for u in std::iter::once("root").chain(USERS.iter().copied()) {
                text.push_str(&format!("Host {u}\n    User {u}\n"));
                text.push_str(&format!(
                    "Host {u}-jump\n    User {u}\n    ProxyJump root\n"
                ));
            }
            text.push_str("Host jump\n    User root\n    ProxyJump root\n");
            text.push_str(&format!(
                "Host *\n\
                 \x20   HostName 127.0.0.1\n\
                 \x20   Port {port}\n\
                 \x20   IdentityFile {key}\n\
                 \x20   IdentitiesOnly yes\n\
                 \x20   StrictHostKeyChecking yes\n\
                 \x20   UserKnownHostsFile {kh}\n\
                 \x20   GlobalKnownHostsFile /dev/null\n\
                 \x20   LogLevel ERROR\n",
                key = key.display(),
                kh = d.join("known_hosts").display(),
            ));
            write(&config, &text, 0o644);
            return Some(Sshd {
                dir,
                port,
                config,
                key,
                log,
                child,
            });
        }
        panic!("sshd did not start: {last_err}");
    }

    /// The `-e` value that uses this fixture's ssh_config.
    pub fn rsh(&self) -> String {
        format!("ssh -F {}", self.config.display())
    }

    /// The ssh command words for in-process specs.
    pub fn ssh_command(&self) -> Vec<String> {
        vec![
            "ssh".into(),
            "-F".into(),
            self.config.to_string_lossy().into_owned(),
        ]
    }

    /// How many logins of `user` sshd has accepted so far.
    pub fn logins(&self, user: &str) -> usize {
        let needle = format!("Accepted publickey for {user} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Pid of the listening sshd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Every live descendant of `root` (via /proc).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let mut f = rest.split_whitespace();
            let (Some(_state), Some(ppid)) =
                (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()))
            else {
                continue;
            };
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILLs one process by pid (errors ignored: it may be gone).
pub fn kill(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Sessions first (children of the listener), then the listener.
        let pid = self.child.id();
        for p in descendants(pid) {
            kill(p);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
