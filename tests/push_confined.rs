//! Issue 10: a push lands exactly in DEST and nowhere else, and changes
//! nothing that exists until it is final. The real binary, a local target,
//! a real second account, and `rsync -a` side by side.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The unprivileged account that plants things in a destination.
const PLANTER: &str = "fgplanter";

fn ferrogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .output()
        .expect("ferrogen runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Creates the planter account once (idempotently, as tests/sshd does).
fn planter() -> (u32, u32) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let exists = Command::new("id")
            .arg(PLANTER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            // Another test binary may race here: fine if it exists after.
            let _ = Command::new("useradd")
                .args(["-M", "-s", "/bin/sh", PLANTER])
                .status();
        }
    });
    let id = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, PLANTER])
            .output()
            .expect("id");
        assert!(o.status.success(), "account {PLANTER} exists");
        text(&o.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Runs `cmd ARGS` as the planter account.
fn as_planter(args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", PLANTER, "--"])
        .args(args)
        .output()
        .expect("runuser")
}

/// A temp dir the planter account can traverse.
fn shared_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

/// Everything that must not change about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<Vec<u8>>,
    link: Option<OsString>,
}

/// Every entry under `root` (itself included), by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            for e in std::fs::read_dir(&p).expect("ls").flatten() {
                stack.push(e.path());
            }
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let content =
            (kind == "file" && md.len() <= 1 << 20).then(|| std::fs::read(&p).expect("read"));
        let link = ft
            .is_symlink()
            .then(|| std::fs::read_link(&p).expect("readlink").into_os_string());
        out.insert(
            p.strip_prefix(root).expect("beneath").to_path_buf(),
            Snap {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: md.len(),
                content,
                link,
            },
        );
    }
    out
}

/// A planted symlink in DEST pointing outside must not lead a root push
/// there: no file written, no mode or time changed outside DEST. The link
/// is replaced by a directory, as `rsync -a` does. (On the old code the
/// file landed in the link's target and the target was chmodded.)
#[test]
fn a_symlink_planted_in_dest_never_leads_a_root_push_outside() {
    if !is_root() {
        eprintln!("skipped: needs root (a root push and a second account)");
        return;
    }
    let (uid, gid) = planter();
    let t = shared_tempdir();
    // The source: a directory "sub" (mode 0777, so a stray chmod shows)
    // holding a file and a deeper directory.
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    std::fs::write(src.join("sub/payload"), b"written by root").expect("write");
    std::fs::write(src.join("sub/deeper/low"), b"low").expect("write");
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    // Outside DEST: root's directory, which the planter cannot write.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), b"root's").expect("write");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    for tool in ["ferrogen", "rsync"] {
        // DEST belongs to the planter, who plants sub -> outside.
        let dest = t.path().join(format!("dest-{tool}"));
        std::fs::create_dir(&dest).expect("mkdir");
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
        let o = as_planter(&["ln", "-s", s(&outside), s(&dest.join("sub"))]);
        assert!(o.status.success(), "plant: {}", text(&o.stderr));
        let before = snapshot(&outside);

        let o = if tool == "ferrogen" {
            ferrogen(&[
                "push",
                "-r",
                &format!("{}/", s(&src)),
                &format!("{}/", s(&dest)),
            ])
        } else {
            Command::new("rsync")
                .args(["-a", &format!("{}/", s(&src)), &format!("{}/", s(&dest))])
                .output()
                .expect("rsync")
        };
        assert!(
            o.status.success(),
            "{tool}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert_eq!(
            snapshot(&outside),
            before,
            "{tool} changed something outside DEST"
        );
        let sub = std::fs::symlink_metadata(dest.join("sub")).expect("lstat");
        assert!(sub.is_dir(), "{tool}: the link was replaced by a directory");
        assert_eq!(sub.mode() & 0o7777, 0o777, "{tool}: the source's mode");
        assert_eq!(
            std::fs::read(dest.join("sub/payload")).expect("read"),
            b"written by root"
        );
        assert_eq!(
            std::fs::read(dest.join("sub/deeper/low")).expect("read"),
            b"low"
        );
    }
}

/// A symlink planted where the source has a *file's parent* — the push
/// copies a single file into `DEST/sub/` — is not followed either.
#[test]
fn a_symlink_in_a_parent_position_is_never_followed_for_files() {
    if !is_root() {
        eprintln!("skipped: needs root (a root push and a second account)");
        return;
    }
    let (uid, gid) = planter();
    let t = shared_tempdir();
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for i in 0..5 {
        std::fs::write(src.join(format!("sub/f{i}")), b"x").expect("write");
    }
    std::fs::write(src.join("big"), vec![1u8; 300_000]).expect("write");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).expect("mkdir");
    std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
    // "proj" itself is the planted link: the copy's top directory.
    let o = as_planter(&["ln", "-s", s(&outside), s(&dest.join("proj"))]);
    assert!(o.status.success(), "plant: {}", text(&o.stderr));
    let before = snapshot(&outside);
    let o = ferrogen(&["push", "-r", s(&src), &format!("{}/", s(&dest))]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(snapshot(&outside), before, "nothing outside DEST changed");
    assert!(
        std::fs::symlink_metadata(dest.join("proj"))
            .expect("lstat")
            .is_dir()
    );
    assert_eq!(std::fs::read(dest.join("proj/sub/f3")).expect("read"), b"x");
}

/// Existing directories keep their mode while a push runs: none is
/// narrowed (the old code set every existing directory to 0700 for the
/// whole push), and the new mode and times arrive only at the end.
#[test]
fn existing_directories_are_not_narrowed_while_a_push_runs() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    big_file(&src.join("sub/big"));
    let dest = t.path().join("dest");
    std::fs::create_dir_all(dest.join("proj/sub")).expect("mkdir");
    std::fs::set_permissions(
        dest.join("proj/sub"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "push",
            "-r",
            "--window",
            "64K",
            s(&src),
            &format!("{}/", s(&dest)),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_receiver(&mut ctl);
    let mode = std::fs::metadata(dest.join("proj/sub"))
        .expect("stat")
        .mode()
        & 0o7777;
    let _ = ctl.kill();
    let _ = ctl.wait();
    assert_eq!(mode, 0o755, "an existing directory's mode mid-push");
}

/// A sparse 1 GiB file: slow to push with a small window, cheap to make.
fn big_file(p: &Path) {
    std::fs::File::create(p)
        .expect("create")
        .set_len(1 << 30)
        .expect("set_len");
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a.to_string()) else {
                continue;
            };
            let ppid: u32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if ppid == p {
                all.push(child);
                frontier.push(child);
            }
        }
    }
    all
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, a)| a.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits until the push's receiving context runs and has had time to
/// start; returns its pids.
fn wait_for_receiver(ctl: &mut std::process::Child) -> Vec<u32> {
    let t0 = Instant::now();
    let mut kids = Vec::new();
    while kids.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no child context appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
        kids = descendants(ctl.id());
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        ctl.try_wait().expect("try_wait").is_none(),
        "the push finished before it could be interrupted"
    );
    kids
}

/// Who is interrupted, and how.
#[derive(Clone, Copy, Debug)]
enum Interrupt {
    Controller(&'static str),
    ReceiverKill,
}

/// Pushes a tree over an existing one whose every entry differs from the
/// source (modes, times, contents; directories 0755/0750/0555/setgid),
/// interrupts it mid-transfer, and checks that every existing entry is
/// exactly as it was: mode, owner, times, content.
fn interrupted_push_changes_nothing(how: Interrupt) {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("proj");
    let dest = t.path().join("dest");
    for root in [&src, &dest] {
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(root.join("c")).expect("mkdir");
    }
    for i in 0..20 {
        std::fs::write(src.join(format!("a/f{i}")), format!("new {i}")).expect("write");
        std::fs::write(dest.join(format!("a/f{i}")), format!("old {i}")).expect("write");
    }
    std::fs::write(src.join("a/b/mid"), vec![2u8; 500_000]).expect("write");
    std::fs::write(dest.join("a/b/mid"), b"old mid").expect("write");
    big_file(&src.join("c/big"));
    std::fs::write(dest.join("c/big"), b"old big").expect("write");
    let modes = [
        ("proj", 0o700, 0o755),
        ("proj/a", 0o700, 0o750),
        ("proj/a/b", 0o711, 0o2775),
        ("proj/c", 0o700, 0o755),
    ];
    // DEST holds the copy's top directory already ("dest/proj"): move the
    // old tree one level down.
    let old = t.path().join("old");
    std::fs::rename(&dest, &old).expect("mv");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::rename(&old, dest.join("proj")).expect("mv");
    for (rel, new, existing) in modes {
        std::fs::set_permissions(t.path().join(rel), std::fs::Permissions::from_mode(new))
            .expect("chmod src");
        std::fs::set_permissions(dest.join(rel), std::fs::Permissions::from_mode(existing))
            .expect("chmod dest");
    }
    // Old times everywhere, so any touch shows.
    let o = Command::new("find")
        .arg(&dest)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2001-02-03 04:05:06.123456789",
            "{}",
            "+",
        ])
        .status()
        .expect("find");
    assert!(o.success());
    let before = snapshot(&dest);

    let mut ctl = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "push",
            "-r",
            "--window",
            "64K",
            s(&src),
            &format!("{}/", s(&dest)),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let kids = wait_for_receiver(&mut ctl);
    match how {
        Interrupt::Controller(sig) => {
            let st = Command::new("kill")
                .args([sig, &ctl.id().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        }
        Interrupt::ReceiverKill => {
            for k in &kids {
                let _ = Command::new("kill")
                    .args(["-KILL", &k.to_string()])
                    .status();
            }
        }
    }
    let status = ctl.wait().expect("wait");
    assert!(!status.success(), "an interrupted push is not a success");
    let t1 = Instant::now();
    while kids.iter().any(|&k| alive(k)) {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "child contexts outlived the controller"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = snapshot(&dest);
    for (rel, was) in &before {
        assert_eq!(
            after.get(rel),
            Some(was),
            "{how:?}: {} changed",
            rel.display()
        );
    }
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "{how:?}: nothing added"
    );
}

#[test]
fn sigint_of_the_controller_leaves_every_existing_entry_as_it_was() {
    interrupted_push_changes_nothing(Interrupt::Controller("-INT"));
}

#[test]
fn sigterm_of_the_controller_leaves_every_existing_entry_as_it_was() {
    interrupted_push_changes_nothing(Interrupt::Controller("-TERM"));
}

#[test]
fn sigkill_of_the_controller_leaves_every_existing_entry_as_it_was() {
    interrupted_push_changes_nothing(Interrupt::Controller("-KILL"));
}

#[test]
fn sigkill_of_the_receiver_leaves_every_existing_entry_as_it_was() {
    interrupted_push_changes_nothing(Interrupt::ReceiverKill);
}

/// While a push runs, its directory is swapped again and again for a
/// symlink pointing outside DEST (as someone with write access to DEST
/// could). Entries may fail, but nothing outside DEST is ever written,
/// chmodded or removed: every name is resolved beneath DEST's handle
/// without following a symlink, at every step.
#[test]
fn a_directory_swapped_for_a_symlink_mid_push_never_leads_outside() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for i in 0..1500 {
        std::fs::write(src.join(format!("sub/f{i:04}")), b"payload").expect("write");
    }
    for i in 0..4 {
        std::fs::write(src.join(format!("sub/big{i}")), vec![9u8; 3 << 20]).expect("write");
    }
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), b"mine").expect("write");
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let before = snapshot(&outside);
    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).expect("mkdir");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (sub, moved, outside) = (
            dest.join("proj/sub"),
            dest.join("proj/sub.moved"),
            outside.clone(),
        );
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !stop.load(Ordering::Relaxed) {
                if std::fs::rename(&sub, &moved).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, &sub);
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = std::fs::remove_file(&sub);
                    let _ = std::fs::rename(&moved, &sub);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let o = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "push",
            "-r",
            "--no-fsync",
            "--window",
            "64K",
            s(&src),
            &format!("{}/", s(&dest)),
        ])
        .output()
        .expect("ferrogen");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().expect("swapper");
    let swaps = swaps.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{swaps} swaps; exit {:?}; {} error lines",
        o.status.code(),
        text(&o.stderr).lines().count()
    );
    assert!(swaps > 0, "the directory was swapped during the push");
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside DEST changed: {}",
        text(&o.stderr)
    );
}
