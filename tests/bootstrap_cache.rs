//! The bootstrap's binary cache on the target is private (issue 9, finding
//! 9): real logins over the private sshd of tests/sshd/mod.rs, real second
//! accounts as the "other local user", the real `ferrogen` binary. Needs
//! root (CI runs as root).
//!
//! * under `umask 000` the cache is still created 0700, so nobody else can
//!   swap the binary;
//! * a cache another user could write (left by an older version) is never
//!   executed: it is repaired and the binary sent again;
//! * without `HOME` (root) nothing lands in `/.cache`; the binary runs from
//!   a private temporary directory, which it removes;
//! * a home the account cannot write falls back to `$XDG_RUNTIME_DIR`, then
//!   to a temporary directory; when nothing works, the error names the real
//!   cause (never "ssh authentication refused");
//! * a `~/.cache` that is the account's symlink to a private directory
//!   elsewhere still caches.

mod sshd;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sshd::Sshd;

/// Runs `ferrogen ping --json -v -c 1 -e RSH ARGS`, always sending the
/// `ferrogen` binary under test (not a portable build that may exist).
fn ping(rsh: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["ping", "--json", "-v", "-c", "1", "-e", rsh])
        .args(["--remote-binary", env!("CARGO_BIN_EXE_ferrogen")])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferrogen")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(o: &Output, target: &str) -> Value {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON report"))
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("no report for {target}: {}", text(o)))
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

/// An rsh that runs the fixture's ssh with `prefix` put before the remote
/// command (which the login shell runs), e.g. `unset HOME;`.
fn prefixed_rsh(s: &Sshd, name: &str, prefix: &str) -> String {
    let path = s.dir.path().join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/bash\nargs=(\"$@\")\nlast=\"${{args[-1]}}\"\nunset 'args[-1]'\n\
             exec ssh -F {} \"${{args[@]}}\" \"{prefix} $last\"\n",
            s.config.display()
        ),
    )
    .expect("write rsh wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_string_lossy().into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

/// The one cached binary of `user`: `~/.cache/ferrogen/<key>/ferrogen`.
fn cached_binary(user: &str) -> PathBuf {
    let files = sshd::cache_files(user);
    assert_eq!(files.len(), 1, "{user}'s cache: {files:?}");
    sshd::cache_dir(user).join(&files[0])
}

/// A "binary" that records that it ran, in a file `as_user` can create.
fn evil_binary(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let marker = std::env::temp_dir().join(format!("ferrogen-ran-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let evil = dir.join(format!("evil-{tag}"));
    std::fs::write(
        &evil,
        format!("#!/bin/sh\nid -un >> {}\nexit 0\n", marker.display()),
    )
    .expect("write");
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (evil, marker)
}

/// As `user` (via sudo): copy `from` over `to` (a new file renamed into
/// place, as an attacker would). Returns whether it worked.
fn swap_as(user: &str, from: &Path, to: &Path) -> bool {
    let script = format!(
        "cp {from} {to}.new && chmod 755 {to}.new && mv -f {to}.new {to}",
        from = from.display(),
        to = to.display()
    );
    Command::new("sudo")
        .args(["-n", "-u", user, "/bin/sh", "-c", &script])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn under_umask_000_the_cache_is_private_and_cannot_be_swapped() {
    let Some(s) = Sshd::start() else { return };
    let home = sshd::home(sshd::UMASK);
    let _ = std::fs::remove_dir_all(home.join(".cache"));
    let first = ping(&s.rsh(), &["-H", sshd::UMASK]);
    assert_ok(&first);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("sent the binary"),
        "{}",
        text(&first)
    );
    let bin = cached_binary(sshd::UMASK);
    let key_dir = bin.parent().expect("key dir").to_path_buf();
    // Every directory the bootstrap created, and the binary: 0700, the
    // login's umask 000 notwithstanding.
    for p in [
        home.join(".cache"),
        sshd::cache_dir(sshd::UMASK),
        key_dir.clone(),
        bin.clone(),
    ] {
        assert_eq!(mode(&p), 0o700, "{} (umask 000 login)", p.display());
    }

    // Another local account cannot replace the binary...
    let (evil, marker) = evil_binary(s.dir.path(), "umask");
    assert!(
        !swap_as(sshd::PLAIN, &evil, &bin),
        "{} could replace {}",
        sshd::PLAIN,
        bin.display()
    );
    // ...so the next connection runs the cached, genuine binary.
    let again = ping(&s.rsh(), &["-H", sshd::UMASK]);
    assert_ok(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("started the cached binary"),
        "{}",
        text(&again)
    );
    assert!(!marker.exists(), "the swapped binary ran");
}

#[test]
fn a_cache_others_could_write_is_never_run_but_repaired_and_resent() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::SWAP);
    assert_ok(&ping(&s.rsh(), &["-H", sshd::SWAP]));
    let bin = cached_binary(sshd::SWAP);
    let key_dir = bin.parent().expect("key dir").to_path_buf();
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_ferrogen"))
        .expect("binary")
        .len();

    // A cache left writable by everyone (as an older version created it
    // under umask 000), and another account swaps the binary. (~/.cache
    // itself open to others' traversal, as a umask 022 leaves it.)
    let dot_cache = sshd::home(sshd::SWAP).join(".cache");
    std::fs::set_permissions(&dot_cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for d in [sshd::cache_dir(sshd::SWAP), key_dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let (evil, marker) = evil_binary(s.dir.path(), "swap");
    assert!(swap_as(sshd::PLAIN, &evil, &bin), "the swap itself failed");
    assert_eq!(
        std::fs::metadata(&bin).expect("swapped").uid(),
        uid_of(sshd::PLAIN)
    );

    let r = ping(&s.rsh(), &["-H", sshd::SWAP]);
    assert_ok(&r);
    assert!(!marker.exists(), "the swapped binary ran: {}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("sent the binary"),
        "{}",
        text(&r)
    );
    // Repaired: private directories, the genuine binary, owned by SWAP.
    for d in [sshd::cache_dir(sshd::SWAP), key_dir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let meta = std::fs::metadata(&bin).expect("reinstalled");
    assert_eq!((meta.uid(), meta.len()), (uid_of(sshd::SWAP), size));

    // The same binary, intact, but owned by someone else: not run either
    // (size and digest alone do not make it ours).
    let copy = s.dir.path().join("genuine-copy");
    std::fs::copy(&bin, &copy).expect("copy");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for d in [sshd::cache_dir(sshd::SWAP), key_dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    assert!(swap_as(sshd::PLAIN, &copy, &bin));
    let r = ping(&s.rsh(), &["-H", sshd::SWAP]);
    assert_ok(&r);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("sent the binary"),
        "a binary owned by another user was run from the cache: {}",
        text(&r)
    );
    assert_eq!(
        std::fs::metadata(&bin).expect("bin").uid(),
        uid_of(sshd::SWAP)
    );

    // ~/.cache itself writable by others: the cache below it cannot be made
    // safe, so the binary runs from a private temporary directory instead.
    std::fs::set_permissions(&dot_cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let r = ping(&s.rsh(), &["-H", sshd::SWAP]);
    std::fs::set_permissions(&dot_cache, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_ok(&r);
    let log = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        log.contains("no usable binary cache") && log.contains("not private"),
        "{}",
        text(&r)
    );
    assert!(log.contains("private temporary directory"), "{log}");
}

/// Temporary install directories (`mktemp -d`) owned by `uid` that still
/// hold a `ferrogen`.
fn temp_installs(uid: u32) -> Vec<PathBuf> {
    let tmp = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    std::fs::read_dir(&tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("tmp."))
                        && std::fs::metadata(p).is_ok_and(|m| m.uid() == uid && m.is_dir())
                        && p.join("ferrogen").exists()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn without_home_root_caches_nothing_in_slash_and_leaves_nothing_behind() {
    let Some(s) = Sshd::start() else { return };
    let slash_cache = Path::new("/.cache/ferrogen");
    let _ = std::fs::remove_dir_all(slash_cache);
    let rsh = prefixed_rsh(&s, "ssh-no-home", "unset HOME XDG_RUNTIME_DIR;");
    let before = temp_installs(0);
    let r = ping(&rsh, &["-H", "root"]);
    assert_ok(&r);
    assert!(report(&r, "root")["error"].is_null());
    assert!(
        !slash_cache.exists(),
        "HOME unset: the binary was cached in {}",
        slash_cache.display()
    );
    let log = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        log.contains("HOME is unset") && log.contains("private temporary directory"),
        "{log}"
    );
    // The binary removed its temporary directory once it ran.
    let left: Vec<_> = temp_installs(0)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_unwritable_home_falls_back_to_xdg_runtime_dir_then_a_temp_dir() {
    let Some(s) = Sshd::start() else { return };
    let user = sshd::RO_HOME;
    // Plain ssh: no cache possible in the home; a temporary directory.
    let r = ping(&s.rsh(), &["-H", user]);
    assert_ok(&r);
    let log = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(log.contains("no usable binary cache"), "{log}");
    assert!(
        log.contains("Permission denied"),
        "the cause is named: {log}"
    );
    assert!(!log.contains("authentication"), "{log}");
    assert!(
        temp_installs(uid_of(user)).is_empty(),
        "temp dir left behind"
    );

    // With a runtime directory (as a systemd login provides), the cache
    // lives there and the second connection sends nothing.
    let xdg = tempfile::Builder::new()
        .prefix("ferrogen-xdg-")
        .tempdir()
        .expect("tempdir");
    Command::new("chown")
        .arg(format!("{user}:"))
        .arg(xdg.path())
        .status()
        .expect("chown");
    std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let rsh = prefixed_rsh(
        &s,
        "ssh-xdg",
        &format!(
            "XDG_RUNTIME_DIR={}; export XDG_RUNTIME_DIR;",
            xdg.path().display()
        ),
    );
    let first = ping(&rsh, &["-H", user]);
    assert_ok(&first);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("sent the binary"),
        "{}",
        text(&first)
    );
    let second = ping(&rsh, &["-H", user]);
    assert_ok(&second);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("started the cached binary"),
        "{}",
        text(&second)
    );
    let key_dirs: Vec<_> = std::fs::read_dir(xdg.path().join("ferrogen"))
        .expect("the cache is in XDG_RUNTIME_DIR")
        .flatten()
        .collect();
    assert_eq!(key_dirs.len(), 1);
    assert_eq!(mode(&key_dirs[0].path()), 0o700);
}

#[test]
fn when_no_directory_can_be_made_the_error_names_the_real_cause() {
    let Some(s) = Sshd::start() else { return };
    let user = sshd::RO_HOME;
    let rsh = prefixed_rsh(
        &s,
        "ssh-no-tmp",
        "TMPDIR=/proc/ferrogen-nowhere; export TMPDIR;",
    );
    let r = ping(&rsh, &["-H", user]);
    assert!(!r.status.success(), "{}", text(&r));
    let e = report(&r, user)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {}", text(&r)))
        .to_string();
    eprintln!("error: {e}");
    for needle in [
        "ssh.fgrohome",
        "cannot create a directory for the binary",
        "/home/fgrohome/.cache",
        "Permission denied",
        "mktemp",
    ] {
        assert!(e.contains(needle), "{needle:?} missing from: {e}");
    }
    assert!(
        !e.contains("authentication"),
        "a failed mkdir reported as an ssh failure: {e}"
    );
}

#[test]
fn a_dot_cache_that_links_to_a_private_directory_still_caches() {
    let Some(s) = Sshd::start() else { return };
    let user = sshd::LINKED;
    let home = sshd::home(user);
    let elsewhere = tempfile::Builder::new()
        .prefix("ferrogen-linked-cache-")
        .tempdir()
        .expect("tempdir");
    Command::new("chown")
        .arg(format!("{user}:"))
        .arg(elsewhere.path())
        .status()
        .expect("chown");
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let dot_cache = home.join(".cache");
    let _ = std::fs::remove_dir_all(&dot_cache);
    let _ = std::fs::remove_file(&dot_cache);
    std::os::unix::fs::symlink(elsewhere.path(), &dot_cache).expect("symlink");
    // (Not lchown'd: a link's owner does not matter, only who may replace
    // it, i.e. who may write the home.)
    let first = ping(&s.rsh(), &["-H", user]);
    let second = ping(&s.rsh(), &["-H", user]);
    let _ = std::fs::remove_file(&dot_cache);
    assert_ok(&first);
    assert_ok(&second);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("started the cached binary"),
        "{}",
        text(&second)
    );
    assert!(elsewhere.path().join("ferrogen").is_dir());
}
