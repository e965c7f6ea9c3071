//! Pushing the same tree again: the quick check, `--checksum`,
//! `--ignore-times`, metadata-only changes, statuses and the dry run —
//! through the real binary and a local target, with real files.

mod clirun;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use clirun::{ferrogen, ok, s, text};
use serde_json::Value;

/// A push with `--json`: the entry lines by path relative to `dest`, and
/// the summary line.
fn push_json(extra: &[&str], src: &Path, dest: &Path) -> (BTreeMap<String, Value>, Value) {
    let mut args = vec!["push", "--json", "-r"];
    args.extend_from_slice(extra);
    let d = format!("{}/", s(dest));
    args.extend([s(src), d.as_str()]);
    let o = ferrogen(&args);
    ok(&o);
    let mut entries = BTreeMap::new();
    let mut summary = Value::Null;
    for line in text(&o.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        if v["summary"] == true {
            summary = v;
            continue;
        }
        let path = v["path"].as_str().expect("path").to_string();
        let rel = path
            .strip_prefix(&d)
            .unwrap_or_else(|| panic!("{path} not under {d}"))
            .to_string();
        entries.insert(rel, v);
    }
    (entries, summary)
}

fn status_of(entries: &BTreeMap<String, Value>, rel: &str) -> String {
    entries
        .get(rel)
        .unwrap_or_else(|| panic!("no line for {rel}: {entries:?}"))["status"]
        .as_str()
        .expect("status")
        .to_string()
}

/// Sets a file's modification time exactly.
fn set_mtime(p: &Path, sec: i64, nsec: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(sec as u64, nsec);
    std::fs::File::options()
        .write(true)
        .open(p)
        .expect("open")
        .set_modified(t)
        .expect("set mtime");
}

/// Everything about a tree that a push could change: per entry its type,
/// mode, size, mtime (ns), inode, ctime (ns) and, for files, content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let content = if md.is_file() {
            blake3::hash(&std::fs::read(&p).expect("read"))
                .to_hex()
                .to_string()
        } else if md.file_type().is_symlink() {
            std::fs::read_link(&p)
                .expect("readlink")
                .display()
                .to_string()
        } else {
            String::new()
        };
        out.insert(
            p.strip_prefix(root).expect("under root").to_path_buf(),
            format!(
                "{:?} {:o} {} {}.{} ino {} ctime {}.{} {}",
                md.file_type(),
                md.mode(),
                md.len(),
                md.mtime(),
                md.mtime_nsec(),
                md.ino(),
                md.ctime(),
                md.ctime_nsec(),
                content
            ),
        );
        if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// proj/{a.txt, b.txt, sub/c.bin (300 KB), link -> a.txt}
fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("proj");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("a.txt"), b"alpha").expect("write");
    std::fs::write(src.join("b.txt"), b"bravo").expect("write");
    std::fs::write(src.join("sub/c.bin"), vec![3u8; 300_000]).expect("write");
    std::os::unix::fs::symlink("a.txt", src.join("link")).expect("symlink");
    let dest = t.path().join("dest");
    (t, src, dest)
}

#[test]
fn an_unchanged_tree_is_neither_sent_nor_rewritten() {
    let (_t, src, dest) = tree();
    let (first, sum) = push_json(&[], &src, &dest);
    assert_eq!(status_of(&first, "proj/a.txt"), "created");
    assert_eq!(sum["changed"], true);
    let before = snapshot(&dest);
    let (again, sum) = push_json(&[], &src, &dest);
    for (rel, v) in &again {
        assert_eq!(v["status"], "unchanged", "{rel}: {v}");
        assert_eq!(v["changed"], false, "{rel}: {v}");
        assert_eq!(v["bytes"], 0, "{rel}: {v}");
    }
    assert_eq!(again.len(), 6, "{again:?}");
    assert_eq!(sum["changed"], false, "{sum}");
    assert_eq!(sum["counts"]["unchanged"], 6, "{sum}");
    assert_eq!(sum["bytes"], 0, "{sum}");
    // Not replaced, not touched: same inodes, same ctimes.
    assert_eq!(snapshot(&dest), before);
}

#[test]
fn a_mode_change_alone_is_applied_without_sending_data() {
    let (_t, src, dest) = tree();
    push_json(&[], &src, &dest);
    let ino = std::fs::metadata(dest.join("proj/b.txt"))
        .expect("stat")
        .ino();
    std::fs::set_permissions(src.join("b.txt"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    let (again, sum) = push_json(&[], &src, &dest);
    let b = &again["proj/b.txt"];
    assert_eq!(b["status"], "changed", "{b}");
    assert_eq!(b["bytes"], 0, "{b}");
    assert_eq!(b["itemized"], ".f...p.....", "{b}");
    let md = std::fs::metadata(dest.join("proj/b.txt")).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!(md.ino(), ino, "metadata applied in place, not re-sent");
    assert_eq!(status_of(&again, "proj/a.txt"), "unchanged");
    assert_eq!(sum["counts"]["changed"], 1, "{sum}");
    assert_eq!(sum["changed"], true, "{sum}");
}

#[test]
fn a_changed_file_is_sent_and_only_it() {
    let (_t, src, dest) = tree();
    push_json(&[], &src, &dest);
    std::fs::write(src.join("sub/c.bin"), vec![4u8; 300_001]).expect("write");
    let (again, _) = push_json(&[], &src, &dest);
    let c = &again["proj/sub/c.bin"];
    assert_eq!(c["status"], "changed", "{c}");
    assert_eq!(c["bytes"], 300_001, "{c}");
    assert_eq!(c["itemized"], ">f.st......", "{c}");
    assert_eq!(
        std::fs::read(dest.join("proj/sub/c.bin")).expect("read"),
        vec![4u8; 300_001]
    );
    for rel in ["proj/a.txt", "proj/b.txt", "proj/link"] {
        assert_eq!(status_of(&again, rel), "unchanged", "{rel}");
    }
}

#[test]
fn checksum_finds_what_the_quick_check_cannot_and_ignore_times_sends_all() {
    let (_t, src, dest) = tree();
    push_json(&[], &src, &dest);
    // Same size, same mtime, other bytes: the quick check keeps it.
    let a = src.join("a.txt");
    let md = std::fs::metadata(&a).expect("stat");
    std::fs::write(&a, b"ALPHA").expect("write");
    set_mtime(&a, md.mtime(), md.mtime_nsec() as u32);
    let (quick, _) = push_json(&[], &src, &dest);
    assert_eq!(status_of(&quick, "proj/a.txt"), "unchanged");
    assert_eq!(
        std::fs::read(dest.join("proj/a.txt")).expect("read"),
        b"alpha"
    );
    let (summed, _) = push_json(&["--checksum"], &src, &dest);
    assert_eq!(status_of(&summed, "proj/a.txt"), "changed");
    assert_eq!(summed["proj/a.txt"]["bytes"], 5);
    assert_eq!(
        std::fs::read(dest.join("proj/a.txt")).expect("read"),
        b"ALPHA"
    );
    assert_eq!(status_of(&summed, "proj/b.txt"), "unchanged");
    // Same bytes, other mtime: -c keeps the data and fixes the time.
    let b = src.join("b.txt");
    set_mtime(&b, 1_000_000_000, 5);
    let ino = std::fs::metadata(dest.join("proj/b.txt"))
        .expect("stat")
        .ino();
    let (summed, _) = push_json(&["-c"], &src, &dest);
    let bl = &summed["proj/b.txt"];
    assert_eq!(bl["status"], "changed", "{bl}");
    assert_eq!(bl["bytes"], 0, "{bl}");
    assert_eq!(bl["itemized"], ".f..t......", "{bl}");
    let md = std::fs::metadata(dest.join("proj/b.txt")).expect("stat");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 5));
    assert_eq!(md.ino(), ino);
    // -I: everything is sent again.
    let (all, _) = push_json(&["--ignore-times"], &src, &dest);
    for rel in ["proj/a.txt", "proj/b.txt", "proj/sub/c.bin"] {
        assert_eq!(status_of(&all, rel), "changed", "{rel}");
        assert!(all[rel]["bytes"].as_u64().unwrap_or(0) > 0, "{rel}");
    }
}

#[test]
fn a_dry_run_reports_every_change_and_makes_none() {
    let (t, src, dest) = tree();
    // Nothing there yet: all would be created, and DEST is not made.
    let (fresh, sum) = push_json(&["-n"], &src, &dest);
    assert!(!dest.exists(), "a dry run created DEST");
    assert_eq!(status_of(&fresh, "proj/sub/c.bin"), "created");
    assert_eq!(sum["dry_run"], true);
    assert_eq!(sum["changed"], true);
    push_json(&[], &src, &dest);
    // Every kind of change at once.
    std::fs::write(src.join("a.txt"), b"alpha, longer").expect("write");
    std::fs::set_permissions(src.join("b.txt"), std::fs::Permissions::from_mode(0o604))
        .expect("chmod");
    std::fs::write(src.join("sub/new.txt"), b"new").expect("write");
    std::fs::remove_file(src.join("link")).expect("rm");
    std::os::unix::fs::symlink("b.txt", src.join("link")).expect("symlink");
    std::fs::create_dir(src.join("newdir")).expect("mkdir");
    std::fs::write(src.join("newdir/x"), b"x").expect("write");
    // A file where DEST has a directory, a directory where it has a file.
    std::fs::create_dir(dest.join("proj/clash")).expect("mkdir");
    std::fs::write(src.join("clash"), b"file now").expect("write");
    let before = snapshot(t.path());
    let o = ferrogen(&["push", "-r", "-n", "-i", s(&src), &format!("{}/", s(&dest))]);
    ok(&o);
    assert_eq!(snapshot(t.path()), before, "the dry run changed something");
    let out = text(&o.stdout);
    for want in [
        ">f.st...... ",
        ".f...p..... ",
        ">f+++++++++ ",
        "cL......... ",
        "cd+++++++++ ",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    assert!(out.contains("(dry run: nothing changed)"), "{out}");
    let (dry, _) = push_json(&["--dry-run"], &src, &dest);
    assert_eq!(snapshot(t.path()), before, "the dry run changed something");
    // The real push then does exactly what the dry run said.
    let (real, _) = push_json(&[], &src, &dest);
    let statuses = |m: &BTreeMap<String, Value>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), v["status"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    assert_eq!(statuses(&dry), statuses(&real));
    assert_eq!(status_of(&real, "proj/clash"), "changed");
    assert!(dest.join("proj/clash").is_file());
}

#[test]
fn verbose_lists_changes_and_the_summary_counts_them() {
    let (_t, src, dest) = tree();
    push_json(&[], &src, &dest);
    std::fs::write(src.join("b.txt"), b"bravo!").expect("write");
    let o = ferrogen(&["push", "-r", "-v", s(&src), &format!("{}/", s(&dest))]);
    ok(&o);
    let out = text(&o.stdout);
    let listed: Vec<&str> = out.lines().filter(|l| l.contains("proj/")).collect();
    assert!(
        listed
            .iter()
            .any(|l| l.contains(">f.st...... ") && l.ends_with("proj/b.txt")),
        "{out}"
    );
    assert!(
        !listed.iter().any(|l| l.ends_with("proj/a.txt")),
        "unchanged entries are not listed with one -v: {out}"
    );
    let summary = out
        .lines()
        .find(|l| l.contains(" created, "))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    // Only b.txt: proj/ keeps the source's mtime, which rewriting a file
    // in it does not change.
    assert!(
        summary.contains("0 created, 1 changed, 5 unchanged"),
        "{summary}"
    );
    let o = ferrogen(&["push", "-r", "-ii", s(&src), &format!("{}/", s(&dest))]);
    ok(&o);
    assert!(
        text(&o.stdout)
            .lines()
            .any(|l| l.contains(".f          ") && l.ends_with("proj/a.txt")),
        "-ii lists unchanged ones: {}",
        text(&o.stdout)
    );
}

#[test]
fn an_unchanged_symlink_and_hard_link_are_left_alone() {
    let (_t, src, dest) = tree();
    std::fs::hard_link(src.join("b.txt"), src.join("b2.txt")).expect("link");
    let d = format!("{}/", s(&dest));
    ok(&ferrogen(&["push", "-a", s(&src), &d]));
    let before = snapshot(&dest);
    let o = ferrogen(&["push", "-a", "--json", s(&src), &d]);
    ok(&o);
    for line in text(&o.stdout).lines() {
        let v: Value = serde_json::from_str(line).expect("json");
        if v["summary"] == true {
            assert_eq!(v["changed"], false, "{v}");
        } else {
            assert_eq!(v["status"], "unchanged", "{v}");
        }
    }
    assert_eq!(snapshot(&dest), before);
}

#[test]
fn a_destination_changed_during_the_push_is_not_overwritten() {
    let (_t, src, dest) = tree();
    push_json(&[], &src, &dest);
    // Two changed files, paced so the push takes a few seconds.
    std::fs::write(src.join("sub/c.bin"), vec![5u8; 2_000_000]).expect("write");
    std::fs::write(src.join("b.txt"), vec![6u8; 1_000_000]).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "push",
            "-r",
            "--json",
            "--bwlimit",
            "1M",
            s(&src),
            &format!("{}/", s(&dest)),
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(700));
    // Another writer replaces the destination meanwhile.
    let theirs = dest.join("proj/sub/c.bin");
    std::fs::write(dest.join("proj/sub/.theirs"), b"another writer's").expect("write");
    std::fs::rename(dest.join("proj/sub/.theirs"), &theirs).expect("rename");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&theirs).expect("read"), b"another writer's");
    let out = text(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("c.bin"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("changed at the destination"), "{line}");
    // The other file landed.
    assert_eq!(
        std::fs::read(dest.join("proj/b.txt")).expect("read"),
        vec![6u8; 1_000_000]
    );
}

#[test]
fn a_contents_copy_gives_dest_its_sources_mode_and_times_as_rsync_does() {
    let (t, src, _) = tree();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let set_dir_time = |p: &Path| {
        let f = std::fs::File::open(p).expect("open dir");
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 42))
            .expect("set mtime");
    };
    set_dir_time(&src);
    let dest = t.path().join("flat");
    let d = format!("{}/", s(&dest));
    let c = format!("{}/", s(&src));
    let o = ferrogen(&["push", "-r", "--json", &c, &d]);
    ok(&o);
    let md = std::fs::metadata(&dest).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o750);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 42));
    let rsync = t.path().join("rsync");
    let r = Command::new("rsync")
        .args(["-a", &c, &format!("{}/", s(&rsync))])
        .status()
        .expect("rsync");
    assert!(r.success());
    let rmd = std::fs::metadata(&rsync).expect("stat");
    assert_eq!(rmd.mode(), md.mode(), "as rsync -a");
    // Again: DEST is unchanged and untouched.
    let before = snapshot(&dest);
    let o = ferrogen(&["push", "-r", "--json", &c, &d]);
    ok(&o);
    let out = text(&o.stdout);
    let dest_line: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["path"] == d.as_str() || v["path"] == s(&dest))
        .unwrap_or_else(|| panic!("no line for DEST: {out}"));
    assert_eq!(dest_line["status"], "unchanged", "{dest_line}");
    assert_eq!(snapshot(&dest), before);
}

#[test]
fn dest_whose_metadata_matches_is_unchanged_in_the_dry_run_and_the_real_push_alike() {
    // Found by attack: creating a file in DEST moves its mtime, and the
    // real push judged DEST after that (changed), the dry run before
    // (unchanged). Both must judge DEST as the push found it.
    let t = tempfile::tempdir().expect("tempdir");
    let (src, dest) = (t.path().join("src"), t.path().join("dest"));
    for d in [&src, &dest] {
        std::fs::create_dir(d).expect("mkdir");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(src.join("new.txt"), b"new").expect("write");
    for d in [&src, &dest] {
        std::fs::File::open(d)
            .expect("open dir")
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 7))
            .expect("set mtime");
    }
    let contents = PathBuf::from(format!("{}/", s(&src)));
    let (dry, _) = push_json(&["-n"], &contents, &dest);
    assert_eq!(status_of(&dry, ""), "unchanged");
    assert_eq!(status_of(&dry, "new.txt"), "created");
    let (real, summary) = push_json(&[], &contents, &dest);
    assert_eq!(status_of(&real, "new.txt"), "created");
    assert_eq!(status_of(&real, ""), "unchanged", "as the dry run said");
    assert_eq!(
        summary["counts"]["changed"].as_u64().unwrap_or(0),
        0,
        "{summary}"
    );
    let md = std::fs::metadata(&dest).expect("stat");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 7));
}
