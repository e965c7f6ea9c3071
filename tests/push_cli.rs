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

/// Runs `ferrogen ARGS` in `dir`.
fn ferrogen_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ferrogen runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
    assert_eq!(low["status"], "created");
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
    assert_eq!(line["status"], "failed");
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

fn kill_controller_mid_transfer(signal: &str) -> Option<i32> {
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
    let status = ctl.wait().expect("wait");
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
    status.code()
}

#[test]
fn controller_sigterm_mid_transfer_leaves_the_destination_untouched() {
    // 128 + 15, as a shell reports a process SIGTERM killed.
    assert_eq!(kill_controller_mid_transfer("-TERM"), Some(143));
}

#[test]
fn controller_sigint_mid_transfer_leaves_the_destination_untouched() {
    assert_eq!(kill_controller_mid_transfer("-INT"), Some(130));
}

#[test]
fn controller_sigkill_mid_transfer_leaves_the_destination_untouched() {
    assert_eq!(kill_controller_mid_transfer("-KILL"), None);
}

// ------------------------------------------------- CLI conventions (issue 10)

#[test]
fn a_bare_relative_destination_name_lands_in_the_working_directory() {
    let t = tree();
    let o = ferrogen_in(t.path(), &["push", "proj/top.txt", "X"]);
    ok(&o);
    assert_eq!(std::fs::read(t.path().join("X")).expect("read"), b"top");
    assert!(text(&o.stderr).is_empty(), "{}", text(&o.stderr));
}

#[test]
fn failures_go_to_stderr_and_results_to_stdout() {
    let t = tree();
    let o = ferrogen(&[
        "push",
        s(&t.path().join("proj/top.txt")),
        s(&t.path().join("no/such/dir/f")),
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!out.contains("FAILED"), "a failure on stdout: {out}");
    assert!(
        out.starts_with("local: 0 files"),
        "no summary on stdout: {out}"
    );
    let failed = err
        .lines()
        .find(|l| l.starts_with("local: FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line on stderr: {err}"));
    // The cause in plain words, without Rust's errno suffix.
    assert!(failed.contains("No such file or directory"), "{failed}");
    assert!(!failed.contains("os error"), "{failed}");
}

/// Runs ferrogen with a stdout pipe whose reader has already gone, as
/// `ferrogen ... | head -1` ends up.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait")
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let t = tree();
    let dst = format!("{}/", s(&t.path().join("j")));
    let src = t.path().join("proj");
    for args in [
        vec!["push", "--json", "-r", s(&src), &dst],
        vec!["push", "-r", s(&src), &dst],
        vec!["ping", "--json", "-c", "1"],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let o = with_closed_stdout(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // The push itself went through.
    assert_eq!(
        std::fs::read(t.path().join("j/proj/sub/mid.txt")).expect("read"),
        b"mid"
    );

    // A closed stderr: the note about a skipped FIFO and the failure are
    // dropped, the status still says what happened.
    let fifo = t.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "push",
            s(&fifo),
            s(&t.path().join("proj/top.txt")),
            &format!("{}/x/", s(&t.path().join("proj/top.txt"))),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stderr.take());
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(1), "{st:?}");
}

#[test]
fn options_may_come_between_the_paths() {
    let t = tree();
    let src = t.path().join("proj/top.txt");
    let a = t.path().join("a");
    ok(&ferrogen(&["push", s(&src), "-H", "local", s(&a)]));
    assert_eq!(std::fs::read(&a).expect("read"), b"top");
    let b = t.path().join("b");
    let o = ferrogen(&["push", s(&src), "--json", s(&b), "--no-fsync"]);
    ok(&o);
    assert_eq!(std::fs::read(&b).expect("read"), b"top");
    assert!(text(&o.stdout).starts_with('{'), "{}", text(&o.stdout));
}

#[test]
fn dot_and_dir_dot_copy_the_contents() {
    let t = tree();
    let proj = t.path().join("proj");
    // Into a directory (a trailing slash, or one that exists), as
    // `cp -r . d1/` and `rsync -r . d1/` do.
    let d1 = t.path().join("d1");
    ok(&ferrogen_in(
        &proj,
        &["push", "-r", ".", &format!("{}/", s(&d1))],
    ));
    assert_eq!(std::fs::read(d1.join("top.txt")).expect("read"), b"top");
    assert!(!d1.join("proj").exists(), "'.' nested the directory");
    let d2 = t.path().join("d2");
    std::fs::create_dir(&d2).expect("mkdir");
    ok(&ferrogen_in(t.path(), &["push", "-r", "proj/.", s(&d2)]));
    assert_eq!(std::fs::read(d2.join("sub/mid.txt")).expect("read"), b"mid");
    assert!(!d2.join("proj").exists(), "'proj/.' nested the directory");
}

#[test]
fn invalid_values_are_refused_before_anything_runs() {
    let t = tree();
    let src = t.path().join("proj/top.txt");
    let dst = t.path().join("out");
    let (src, dst) = (s(&src), s(&dst));
    for (args, says) in [
        (vec!["push", src, ""], "empty path"),
        (vec!["push", "", dst], "empty path"),
        (
            vec!["push", "--connect-timeout", "0", src, dst],
            "--connect-timeout",
        ),
        (
            vec!["push", "--connect-timeout=-1", src, dst],
            "--connect-timeout",
        ),
        (vec!["push", "--parallel", "0", src, dst], "--parallel"),
        (vec!["push", "--fanout", "0", src, dst], "--fanout"),
        (vec!["push", "--stripes", "0", src, dst], "--stripes"),
        (vec!["push", src], "a destination"),
        (vec!["ping", "--connect-timeout", "0"], "--connect-timeout"),
    ] {
        let o = ferrogen_in(t.path(), &args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(text(&o.stdout).is_empty(), "{args:?}");
        assert!(!Path::new(dst).exists(), "{args:?} wrote {dst}");
    }
}

#[test]
fn a_host_colon_path_never_makes_a_local_directory() {
    let t = tree();
    let src = t.path().join("proj/top.txt");
    for (args, says) in [
        // With -H as well: which targets were meant is unclear.
        (vec!["push", "-H", "local", s(&src), "web1:/tmp/x/"], "-H"),
        // Pulling is not what push does.
        (vec!["push", "web1:/etc/hosts", "out/"], "./web1:/etc/hosts"),
        // Not a target spec.
        (vec!["push", s(&src), "a b:x"], "./a b:x"),
    ] {
        let o = ferrogen_in(t.path(), &args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let names: Vec<_> = std::fs::read_dir(t.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec!["proj"], "something was created");
    // `./NAME` is how to say a local name with a colon.
    ok(&ferrogen_in(t.path(), &["push", s(&src), "./a:b"]));
    assert_eq!(std::fs::read(t.path().join("a:b")).expect("read"), b"top");
}

#[test]
fn text_from_a_target_cannot_steer_the_terminal() {
    let t = tree();
    // The target's error names the destination, which here carries an OSC
    // sequence (set the window title) and a CSI (clear the screen).
    let dest = t.path().join("no\x1b]0;pwned\x07dir\x1b[2J/f");
    let o = ferrogen(&["push", s(&t.path().join("proj/top.txt")), s(&dest)]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    // Nowhere: neither with the failures (stderr) nor the results.
    let all = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
    assert!(!all.contains(&0x1b) && !all.contains(&0x07), "{o:?}");
    assert!(err.contains("no\\e]0;pwned\\x07dir\\e[2J/f"), "{err}");
    // JSON keeps the exact text, escaped by the JSON library.
    let o = ferrogen(&[
        "push",
        "--json",
        s(&t.path().join("proj/top.txt")),
        s(&dest),
    ]);
    assert!(!o.stdout.contains(&0x1b), "{:?}", text(&o.stdout));
    let line: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().next().expect("a line")).expect("json");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("\x1b]0;pwned\x07")),
        "{line}"
    );
}

#[test]
fn a_target_lost_mid_push_is_named_in_plain_words() {
    let t = tempfile::tempdir().expect("tempdir");
    let big = t.path().join("big");
    std::fs::File::create(&big)
        .expect("create")
        .set_len(1 << 30)
        .expect("set_len");
    let dst = t.path().join("dst");
    let ctl = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["push", "--window", "64K", s(&big), s(&dst)])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    let mut kids = Vec::new();
    while kids.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no child context");
        std::thread::sleep(Duration::from_millis(20));
        kids = descendants(ctl.id());
    }
    std::thread::sleep(Duration::from_millis(500));
    for k in &kids {
        let _ = Command::new("kill")
            .args(["-KILL", &k.to_string()])
            .status();
    }
    let o = ctl.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    let failed = err
        .lines()
        .find(|l| l.starts_with("local: FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line: {err}"));
    assert!(
        failed.contains("connection lost during the push"),
        "{failed}"
    );
    // The bus's context numbers stay in the debug log.
    assert!(!failed.contains("context 1"), "{failed}");
    assert!(!dst.exists());
}
