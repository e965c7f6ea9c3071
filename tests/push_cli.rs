//! `ferrogen push` as a user runs it: the real binary, a local target.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ferrogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .output()
        .expect("ferrogen runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let src = d.path().join("proj");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    std::fs::write(src.join("top.txt"), b"top").expect("write");
    std::fs::write(src.join("sub/mid.txt"), b"mid").expect("write");
    std::fs::write(src.join("sub/deeper/low.bin"), vec![7u8; 300_000]).expect("write");
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    std::fs::set_permissions(src.join("top.txt"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    std::os::unix::fs::symlink("top.txt", src.join("link")).expect("symlink");
    d
}

#[test]
fn trailing_slash_means_into_directory_and_creates_it() {
    let t = tree();
    let dst = t.path().join("out/nested/");
    let o = ferrogen(&[
        "push",
        s(&t.path().join("proj/top.txt")),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    assert_eq!(std::fs::read(dst.join("top.txt")).expect("read"), b"top");
    assert_eq!(
        std::fs::metadata(dst.join("top.txt")).expect("stat").mode() & 0o777,
        0o600
    );
}

#[test]
fn single_file_to_a_new_name_and_into_an_existing_directory() {
    let t = tree();
    let src = t.path().join("proj/top.txt");
    let renamed = t.path().join("renamed.txt");
    ok(&ferrogen(&["push", s(&src), s(&renamed)]));
    assert_eq!(std::fs::read(&renamed).expect("read"), b"top");
    let existing = t.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    ok(&ferrogen(&["push", s(&src), s(&existing)]));
    assert_eq!(
        std::fs::read(existing.join("top.txt")).expect("read"),
        b"top"
    );
}

#[test]
fn recursive_copies_structure_modes_and_symlinks() {
    let t = tree();
    let src = t.path().join("proj");
    let dst = t.path().join("dst");
    ok(&ferrogen(&[
        "push",
        "-r",
        s(&src),
        &format!("{}/", s(&dst)),
    ]));
    let copy = dst.join("proj");
    assert_eq!(
        std::fs::read(copy.join("sub/deeper/low.bin")).expect("read"),
        vec![7u8; 300_000]
    );
    assert_eq!(
        std::fs::read(copy.join("sub/mid.txt")).expect("read"),
        b"mid"
    );
    assert_eq!(
        std::fs::metadata(copy.join("sub")).expect("stat").mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(copy.join("link")).expect("readlink"),
        Path::new("top.txt")
    );
    let src_mtime = std::fs::metadata(src.join("sub")).expect("stat").mtime();
    assert_eq!(
        std::fs::metadata(copy.join("sub")).expect("stat").mtime(),
        src_mtime
    );

    // `src/` copies the contents; a new destination without a slash becomes the copy.
    let contents = t.path().join("contents");
    ok(&ferrogen(&[
        "push",
        "-r",
        &format!("{}/", s(&src)),
        s(&contents),
    ]));
    assert_eq!(
        std::fs::read(contents.join("top.txt")).expect("read"),
        b"top"
    );
    let named = t.path().join("named");
    ok(&ferrogen(&["push", "-r", s(&src), s(&named)]));
    assert_eq!(
        std::fs::read(named.join("sub/mid.txt")).expect("read"),
        b"mid"
    );
}

#[test]
fn several_sources_go_into_the_destination_directory() {
    let t = tree();
    let dst = t.path().join("many");
    ok(&ferrogen(&[
        "push",
        s(&t.path().join("proj/top.txt")),
        s(&t.path().join("proj/sub/mid.txt")),
        s(&dst),
    ]));
    assert_eq!(std::fs::read(dst.join("top.txt")).expect("read"), b"top");
    assert_eq!(std::fs::read(dst.join("mid.txt")).expect("read"), b"mid");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let t = tree();
    let o = ferrogen(&["push", s(&t.path().join("proj")), s(&t.path().join("x/"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("use -r"),
        "{o:?}"
    );
    let o = ferrogen(&["push", s(&t.path().join("missing")), s(t.path())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing"),
        "{o:?}"
    );
}

#[test]
fn json_reports_each_file_and_failures_set_the_exit_status() {
    let t = tree();
    let dst = t.path().join("j");
    let o = ferrogen(&[
        "push",
        "--json",
        "-r",
        s(&t.path().join("proj")),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let low = lines
        .iter()
        .find(|v| v["path"].as_str().is_some_and(|p| p.ends_with("low.bin")))
        .expect("a line for low.bin");
    assert_eq!(low["status"], "ok");
    assert_eq!(low["bytes"], 300_000);
    assert_eq!(
        low["digest"].as_str(),
        Some(blake3::hash(&[7u8; 300_000]).to_hex().as_str())
    );
    assert!(lines.iter().all(|v| v["target"] == "local"));

    // A destination whose parent does not exist: that file fails, exit 1.
    let o = ferrogen(&[
        "push",
        "--json",
        s(&t.path().join("proj/top.txt")),
        s(&t.path().join("no/such/dir/f")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    assert_eq!(line["status"], "error");
    let err = line["error"].as_str().expect("error text");
    assert!(
        err.contains("no/such/dir/f") && err.contains("No such file"),
        "{err}"
    );
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

fn kill_controller_mid_transfer(signal: &str) {
    let t = tempfile::tempdir().expect("tempdir");
    let big = t.path().join("big");
    std::fs::File::create(&big)
        .expect("create")
        .set_len(1 << 30)
        .expect("set_len");
    let dst = t.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");
    std::fs::write(dst.join("big"), b"previous version").expect("write");
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["push", "--window", "64K", s(&big), &format!("{}/", s(&dst))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
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
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ctl.try_wait().expect("try_wait").is_none(),
        "the push finished before it could be killed"
    );
    let st = Command::new("kill")
        .args([signal, &ctl.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let _ = ctl.wait();
    let t1 = Instant::now();
    while kids.iter().any(|&k| alive(k)) {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "child contexts outlived the controller"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read(dst.join("big")).expect("read"),
        b"previous version"
    );
    let left: Vec<_> = std::fs::read_dir(&dst)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "nothing but the old file: {left:?}");
}

#[test]
fn controller_sigterm_mid_transfer_leaves_the_destination_untouched() {
    kill_controller_mid_transfer("-TERM");
}

#[test]
fn controller_sigkill_mid_transfer_leaves_the_destination_untouched() {
    kill_controller_mid_transfer("-KILL");
}
