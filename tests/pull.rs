//! `ferrogen pull` as a user runs it: the real binary, a local target,
//! real files.

mod clirun;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use clirun::{ferrogen, ok, s, text};
use serde_json::Value;

/// remote/{a.txt (0640), sub/big.bin (3 MiB), sub/link -> ../a.txt}
fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    let r = t.path().join("remote");
    std::fs::create_dir_all(r.join("sub")).expect("mkdir");
    std::fs::write(r.join("a.txt"), b"alpha").expect("write");
    std::fs::set_permissions(r.join("a.txt"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(r.join("sub/big.bin"), &big).expect("write");
    std::os::unix::fs::symlink("../a.txt", r.join("sub/link")).expect("symlink");
    t
}

fn same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference", s(a), s(b)])
        .output()
        .expect("diff");
    assert!(o.status.success(), "{}", text(&o.stdout));
    for rel in ["a.txt", "sub", "sub/big.bin"] {
        let (x, y) = (
            std::fs::symlink_metadata(a.join(rel)).expect("lstat"),
            std::fs::symlink_metadata(b.join(rel)).expect("lstat"),
        );
        assert_eq!(x.mode(), y.mode(), "{rel}");
        assert_eq!(
            (x.mtime(), x.mtime_nsec()),
            (y.mtime(), y.mtime_nsec()),
            "{rel}"
        );
    }
}

#[test]
fn a_tree_and_a_file_land_as_push_would_place_them() {
    let t = tree();
    let remote = t.path().join("remote");
    let here = t.path().join("here");
    ok(&ferrogen(&[
        "pull",
        "-r",
        s(&remote),
        &format!("{}/", s(&here)),
    ]));
    same_tree(&remote, &here.join("remote"));
    // A single file becomes DEST.
    let one = t.path().join("one.txt");
    ok(&ferrogen(&["pull", s(&remote.join("a.txt")), s(&one)]));
    assert_eq!(std::fs::read(&one).expect("read"), b"alpha");
    // Contents copy.
    let flat = t.path().join("flat");
    ok(&ferrogen(&[
        "pull",
        "-r",
        &format!("{}/", s(&remote)),
        s(&flat),
    ]));
    same_tree(&remote, &flat);
}

#[test]
fn pulling_again_sends_only_what_changed_and_dry_run_changes_nothing() {
    let t = tree();
    let remote = t.path().join("remote");
    let here = t.path().join("here");
    let dest = format!("{}/", s(&here));
    ok(&ferrogen(&["pull", "-r", s(&remote), &dest]));
    std::fs::write(remote.join("a.txt"), b"alpha, again").expect("write");
    let o = ferrogen(&["pull", "-r", "-n", "--json", s(&remote), &dest]);
    ok(&o);
    assert_eq!(
        std::fs::read(here.join("remote/a.txt")).expect("read"),
        b"alpha"
    );
    let o = ferrogen(&["pull", "-r", "--json", s(&remote), &dest]);
    ok(&o);
    let lines: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let status = |suffix: &str| {
        lines
            .iter()
            .find(|v| v["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            .map(|v| v["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no line for {suffix}: {lines:?}"))
    };
    assert_eq!(status("remote/a.txt"), "changed");
    assert_eq!(status("remote/sub/big.bin"), "unchanged");
    assert_eq!(status("remote/sub/link"), "unchanged");
    let summary = lines
        .iter()
        .find(|v| v["summary"] == true)
        .expect("summary");
    assert_eq!(summary["changed"], true);
    same_tree(&remote, &here.join("remote"));
}

#[test]
fn scp_style_sources_name_the_target() {
    let t = tree();
    let remote = t.path().join("remote");
    let here = t.path().join("here");
    ok(&ferrogen(&[
        "pull",
        &format!("local:{}", s(&remote.join("a.txt"))),
        &format!("{}/", s(&here)),
    ]));
    assert_eq!(std::fs::read(here.join("a.txt")).expect("read"), b"alpha");
    // A local-looking DEST with a host is refused, as are two hosts.
    let o = ferrogen(&["pull", s(&remote), "web1:/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = ferrogen(&["pull", "web1:/a", "web2:/b", s(&here)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("two hosts"), "{}", text(&o.stderr));
}

#[test]
fn a_missing_remote_path_is_named_and_nothing_lands() {
    let t = tree();
    let here = t.path().join("here");
    let missing = t.path().join("remote/nope");
    let o = ferrogen(&["pull", s(&missing), &format!("{}/", s(&here))]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("remote/nope") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&here).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing lands"
    );
}

#[test]
fn pull_delete_and_filters_work_the_other_way_round() {
    let t = tree();
    let remote = t.path().join("remote");
    std::fs::write(remote.join("skip.log"), b"log").expect("write");
    let here = t.path().join("here");
    let dest = format!("{}/", s(&here));
    ok(&ferrogen(&[
        "pull",
        "-r",
        "--exclude",
        "*.log",
        s(&remote),
        &dest,
    ]));
    assert!(!here.join("remote/skip.log").exists());
    std::fs::write(here.join("remote/extra"), b"extra").expect("write");
    ok(&ferrogen(&[
        "pull",
        "-r",
        "--delete",
        "--exclude",
        "*.log",
        s(&remote),
        &dest,
    ]));
    assert!(!here.join("remote/extra").exists());
    assert!(!here.join("remote/skip.log").exists());
    assert_eq!(
        std::fs::read(here.join("remote/sub/big.bin")).expect("read"),
        std::fs::read(remote.join("sub/big.bin")).expect("read")
    );
}

#[test]
fn a_full_local_disk_is_named_per_file_and_leaves_nothing() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let t = tree();
    let remote = t.path().join("remote");
    let mnt = tempfile::tempdir().expect("tempdir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .expect("mount runs");
    assert!(st.success(), "mount tmpfs");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(mnt.path().to_path_buf());
    let o = ferrogen(&["pull", "-r", s(&remote), &format!("{}/", s(mnt.path()))]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("big.bin") && err.contains("No space left on device"),
        "{err}"
    );
    // The 3 MiB file did not land, not even in part; the small one did.
    assert!(!mnt.path().join("remote/sub/big.bin").exists());
    assert_eq!(
        std::fs::read(mnt.path().join("remote/a.txt")).expect("read"),
        b"alpha"
    );
    let hidden: Vec<_> = std::fs::read_dir(mnt.path().join("remote/sub"))
        .expect("readdir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn two_sources_of_one_name_keep_the_first_and_say_so_for_push_and_pull() {
    let t = tempfile::tempdir().expect("tempdir");
    for (d, c) in [("a", b"first"), ("b", b"other")] {
        std::fs::create_dir(t.path().join(d)).expect("mkdir");
        std::fs::write(t.path().join(d).join("x"), c).expect("write");
    }
    let (a, b) = (t.path().join("a/x"), t.path().join("b/x"));
    for verb in ["push", "pull"] {
        let out = t.path().join(format!("out-{verb}"));
        let o = ferrogen(&[verb, s(&a), s(&b), &format!("{}/", s(&out))]);
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("same name"),
            "{verb}: {}",
            text(&o.stderr)
        );
        assert_eq!(
            std::fs::read(out.join("x")).expect("read"),
            b"first",
            "{verb}"
        );
        // Stable: again, the same file stays.
        let _ = ferrogen(&[verb, s(&a), s(&b), &format!("{}/", s(&out))]);
        assert_eq!(
            std::fs::read(out.join("x")).expect("read"),
            b"first",
            "{verb}"
        );
    }
}
