//! Issue 10, "flat memory": a push streams its plan and its results in
//! batches (`push_open`, `push_batch`, `push_close`). Trees of more than
//! one batch (4,096 entries) land exactly as one-batch trees do: every
//! entry reported once as it completes (`--json`), hard links whose names
//! fall in different batches, directory metadata applied at the end,
//! `--delete` judged against the whole source, dry runs changing nothing.
//! The real binary, a local target.

mod filectl;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

/// Files in each of the two big directories: together more than two
/// batches' worth.
const PER_DIR: usize = 4500;

fn push(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .arg("push")
        .args(args)
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
        text(&o.stdout)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
        text(&o.stderr)
    );
}

/// src/{a,b}/f<i> (PER_DIR each, small, distinct), a hard link in b to a
/// file of a (another batch), a symlink last, directory modes and times
/// set after the files.
fn tree(root: &Path) -> std::path::PathBuf {
    let src = root.join("src");
    for d in ["a", "b"] {
        std::fs::create_dir_all(src.join(d)).expect("mkdir");
        for i in 0..PER_DIR {
            std::fs::write(src.join(format!("{d}/f{i:05}")), format!("{d} {i}\n")).expect("write");
        }
    }
    std::fs::hard_link(src.join("a/f00001"), src.join("b/zz-link")).expect("link");
    std::os::unix::fs::symlink("a/f00002", src.join("zz-symlink")).expect("symlink");
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let st = Command::new("touch")
        .args([
            "-d",
            "2011-12-13 14:15:16.5",
            s(&src.join("a")),
            s(&src.join("b")),
        ])
        .status()
        .expect("touch");
    assert!(st.success());
    src
}

/// Every `--json` entry line by path → (status, type); the summary.
fn json(out: &[u8]) -> (BTreeMap<String, (String, String)>, serde_json::Value) {
    let mut entries = BTreeMap::new();
    let mut summary = None;
    for line in text(out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if v["summary"] == true {
            assert!(summary.is_none(), "one summary per target");
            summary = Some(v);
            continue;
        }
        assert!(summary.is_none(), "the summary comes last");
        let path = v["path"].as_str().expect("path").to_string();
        let was = entries.insert(
            path.clone(),
            (
                v["status"].as_str().expect("status").to_string(),
                v["type"].as_str().expect("type").to_string(),
            ),
        );
        assert!(was.is_none(), "{path} reported twice");
    }
    (entries, summary.expect("a summary line"))
}

#[test]
fn a_push_of_several_batches_lands_every_entry_and_reports_each_once() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = tree(t.path());
    let dst = t.path().join("dst");
    let o = push(&[
        "-r",
        "--hard-links",
        "--json",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    // Two directories, their files, the link, the symlink, DEST.
    let total = 2 + 2 * PER_DIR + 2 + 1;
    assert_eq!(entries.len(), total);
    assert_eq!(summary["counts"]["created"], total as u64);
    assert_eq!(summary["failed"], 0);
    let d = s(&dst);
    assert_eq!(
        entries.get(&format!("{d}/b/zz-link")),
        Some(&("created".into(), "hardlink".into()))
    );
    assert_eq!(
        entries.get(&format!("{d}/zz-symlink")),
        Some(&("created".into(), "symlink".into()))
    );
    assert_eq!(
        entries.get(&format!("{d}/a/f04499")),
        Some(&("created".into(), "file".into()))
    );
    for d in ["a", "b"] {
        for i in (0..PER_DIR).step_by(97) {
            let rel = format!("{d}/f{i:05}");
            assert_eq!(
                std::fs::read(dst.join(&rel)).expect("read"),
                std::fs::read(src.join(&rel)).expect("read"),
                "{rel}"
            );
        }
    }
    let (first, link) = (
        std::fs::metadata(dst.join("a/f00001")).expect("stat"),
        std::fs::metadata(dst.join("b/zz-link")).expect("stat"),
    );
    assert_eq!(first.ino(), link.ino(), "the hard link spans two batches");
    assert_eq!(
        std::fs::read_link(dst.join("zz-symlink")).expect("readlink"),
        Path::new("a/f00002")
    );
    // Directory metadata last, whatever batch their files came in.
    for d in ["a", "b"] {
        let (want, got) = (
            std::fs::metadata(src.join(d)).expect("stat"),
            std::fs::metadata(dst.join(d)).expect("stat"),
        );
        assert_eq!(got.mode() & 0o7777, want.mode() & 0o7777, "{d} mode");
        assert_eq!(
            (got.mtime(), got.mtime_nsec()),
            (want.mtime(), want.mtime_nsec()),
            "{d} mtime"
        );
    }

    // Again: everything unchanged, each reported once.
    let o = push(&[
        "-r",
        "--hard-links",
        "--json",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    assert_eq!(entries.len(), total);
    assert_eq!(summary["counts"]["unchanged"], total as u64);
    assert_eq!(summary["changed"], false);
}

/// A plan the walk makes in one batch goes as one `push` call (open,
/// batch and close in one round trip); a larger one streams. Both land
/// every entry (the larger: the test above).
#[test]
fn a_plan_of_one_batch_goes_in_one_call_and_a_larger_one_streams() {
    let t = tempfile::tempdir().expect("tempdir");
    let small = t.path().join("small");
    std::fs::create_dir_all(small.join("d")).expect("mkdir");
    std::fs::write(small.join("d/one"), "1\n").expect("write");
    std::fs::write(small.join("two"), "2\n").expect("write");
    let dst = t.path().join("dst-small");
    let o = push(&["-r", "-vv", &format!("{}/", s(&small)), s(&dst)]);
    ok(&o);
    let err = text(&o.stderr);
    assert!(
        err.contains("the plan goes whole, in one call (3 entries)"),
        "{err}"
    );
    assert!(!err.contains("the plan streams in batches"), "{err}");
    assert_eq!(std::fs::read(dst.join("d/one")).expect("read"), b"1\n");
    assert_eq!(std::fs::read(dst.join("two")).expect("read"), b"2\n");

    let src = tree(t.path());
    let dst = t.path().join("dst-big");
    let o = push(&["-r", "-vv", &format!("{}/", s(&src)), s(&dst)]);
    ok(&o);
    let err = text(&o.stderr);
    assert!(
        err.contains("the plan streams in batches"),
        "{}",
        &err[..err.len().min(4000)]
    );
    assert!(!err.contains("the plan goes whole"));
    assert_eq!(
        std::fs::read(dst.join("b/f04499")).expect("read"),
        std::fs::read(src.join("b/f04499")).expect("read")
    );
}

#[test]
fn delete_across_batches_removes_only_what_the_source_lacks() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = tree(t.path());
    let dst = t.path().join("dst");
    ok(&push(&[
        "-r",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]));
    // Extras in a directory of the first batch, of the last, and at the top.
    for extra in ["a/extra-a", "b/extra-b", "extra-top"] {
        std::fs::write(dst.join(extra), "extra").expect("write");
    }
    let o = push(&[
        "-r",
        "--delete",
        "--json",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    assert_eq!(summary["counts"]["deleted"], 3);
    for extra in ["a/extra-a", "b/extra-b", "extra-top"] {
        assert!(!dst.join(extra).exists(), "{extra} deleted");
        assert_eq!(
            entries
                .get(&format!("{}/{extra}", s(&dst)))
                .map(|e| e.0.as_str()),
            Some("deleted")
        );
    }
    let left = |d: &str| std::fs::read_dir(dst.join(d)).expect("ls").count();
    assert_eq!(left("a"), PER_DIR, "every source file of a kept");
    assert_eq!(left("b"), PER_DIR + 1, "every source file of b kept");
    // What was deleted did not leave its directory's mtime changed.
    for d in ["a", "b"] {
        let (want, got) = (
            std::fs::metadata(src.join(d)).expect("stat"),
            std::fs::metadata(dst.join(d)).expect("stat"),
        );
        assert_eq!(
            (got.mtime(), got.mtime_nsec()),
            (want.mtime(), want.mtime_nsec()),
            "{d} mtime after --delete"
        );
    }
}

#[test]
fn a_dry_run_of_several_batches_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = tree(t.path());
    let dst = t.path().join("dst");
    // DEST missing: every entry would be created, DEST first.
    let o = push(&[
        "-r",
        "-n",
        "--json",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    let total = 2 + 2 * PER_DIR + 2 + 1;
    assert_eq!(entries.len(), total);
    assert_eq!(summary["counts"]["created"], total as u64);
    assert!(!dst.exists(), "a dry run creates nothing");
    // DEST there, one file changed in a late batch.
    ok(&push(&[
        "-r",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]));
    std::fs::write(src.join("b/f04000"), "changed, longer\n").expect("write");
    let before = std::fs::read(dst.join("b/f04000")).expect("read");
    let o = push(&[
        "-r",
        "-n",
        "--json",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dst)),
    ]);
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    assert_eq!(summary["counts"]["changed"], 1);
    assert_eq!(
        entries
            .get(&format!("{}/b/f04000", s(&dst)))
            .map(|e| e.0.as_str()),
        Some("changed")
    );
    assert_eq!(std::fs::read(dst.join("b/f04000")).expect("read"), before);
}

/// The wire: `push_open` with the header, entries in two `push_batch`
/// calls (each answered with its own entries' results, its files already
/// in place), `push_close` with the end — then the session is gone; a
/// batch with an unsafe name is refused and ends the session's work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_each_batch_with_its_own_results() {
    use ferrogen::files::TARGET_SERVICE;
    use ferrogen::files::plan::{
        EntryResult, PlanEntry, PushBatch, PushEnd, PushOpened, PushPlan, Status,
    };
    use ferrogen::files::walk::{WalkOptions, Walker};

    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).expect("mkdir");
    for i in 0..6 {
        std::fs::write(src.join(format!("d/f{i}")), format!("{i}")).expect("write");
    }
    let dst = t.path().join("dst");
    let c = filectl::ctl(1 << 20, std::time::Duration::from_secs(10));
    let a = filectl::child(&c, None).await;
    let srcs = [format!("{}/", s(&src))];
    let mut w = Walker::new(
        &srcs,
        &WalkOptions {
            recursive: true,
            ..Default::default()
        },
    )
    .expect("walk");
    w.sources().register(&c.fs).expect("register");
    let mut header = PushPlan {
        server: c.router.id(),
        dest: ferrogen::files::RawPath::from(dst.as_path()),
        into_dir: true,
        parallel: 4,
        root: w.sources().root.clone(),
        ..Default::default()
    };
    header.options.fsync = true;
    let opened: PushOpened = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_open", &header)
        .await
        .expect("push_open answered");
    assert!(opened.failed.is_empty(), "{:?}", opened.failed);
    assert_ne!(opened.session, 0);
    // The directory and three files, then the other three.
    for want in [3, 3] {
        let entries = w.next_batch(if want == 3 { 4 } else { 3 }, usize::MAX);
        let files = entries
            .iter()
            .filter(|e| matches!(e, PlanEntry::File { .. }))
            .count();
        let r: Vec<EntryResult> = c
            .router
            .call_service(
                a.id,
                TARGET_SERVICE,
                "push_batch",
                &PushBatch {
                    session: opened.session,
                    entries,
                },
            )
            .await
            .expect("push_batch answered");
        let created: Vec<&EntryResult> = r
            .iter()
            .filter(|r| r.status == Status::Created && r.digest.is_some())
            .collect();
        assert_eq!(created.len(), files, "{r:?}");
        assert_eq!(files, want);
        for r in created {
            assert!(Path::new(&r.path).is_file(), "{} in place", r.path);
        }
    }
    assert!(w.next_batch(10, usize::MAX).is_empty());
    let end = PushEnd {
        session: opened.session,
        ..Default::default()
    };
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_close", &end)
        .await
        .expect("push_close answered");
    // The directory's metadata, then DEST's own (a contents copy).
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    for i in 0..6 {
        assert_eq!(
            std::fs::read_to_string(dst.join(format!("d/f{i}"))).expect("read"),
            i.to_string()
        );
    }
    let gone: Result<Vec<EntryResult>, _> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_close", &end)
        .await;
    assert!(gone.is_err(), "a closed session is gone");

    // A batch with an unsafe name is refused, and the session does
    // nothing more.
    let opened: PushOpened = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_open", &header)
        .await
        .expect("push_open answered");
    let evil = |rel: &str| PlanEntry::Dir {
        rel: ferrogen::files::RawPath::from(Path::new(rel)),
        mode: 0o755,
        mtime_sec: 0,
        mtime_nsec: 0,
        owner: None,
        xattrs: Vec::new(),
    };
    let batch = |rel: &str| PushBatch {
        session: opened.session,
        entries: vec![evil(rel)],
    };
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_batch", &batch("../out"))
        .await
        .expect("answered");
    assert_eq!(r.len(), 1);
    assert!(r[0].error.as_deref().is_some_and(|e| e.contains("unsafe")));
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push_batch", &batch("fine"))
        .await
        .expect("answered");
    assert!(r.is_empty(), "{r:?}");
    assert!(!dst.join("fine").exists());
    assert!(!t.path().join("out").exists());
}

/// A pull of several batches: the target's offer comes in batches
/// (`offer`, `offer_more`), each entry reported once, the hard link whose
/// names fall in different batches kept, directory metadata applied,
/// `--delete` judged against the whole source.
#[test]
fn a_pull_of_several_batches_lands_every_entry_and_reports_each_once() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = tree(t.path());
    let here = t.path().join("here");
    std::fs::create_dir_all(here.join("b")).expect("mkdir");
    std::fs::write(here.join("b/extra"), "extra").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "pull",
            "-r",
            "--hard-links",
            "--delete",
            "--json",
            &format!("{}/", s(&src)),
            &format!("{}/", s(&here)),
        ])
        .output()
        .expect("ferrogen runs");
    ok(&o);
    let (entries, summary) = json(&o.stdout);
    // Two directories, their files, the link, the symlink, DEST, the
    // extra deleted.
    let total = 2 + 2 * PER_DIR + 2 + 1 + 1;
    assert_eq!(entries.len(), total);
    assert_eq!(summary["counts"]["deleted"], 1);
    assert_eq!(summary["failed"], 0);
    assert!(!here.join("b/extra").exists());
    let (first, link) = (
        std::fs::metadata(here.join("a/f00001")).expect("stat"),
        std::fs::metadata(here.join("b/zz-link")).expect("stat"),
    );
    assert_eq!(first.ino(), link.ino(), "the hard link spans two batches");
    assert_eq!(
        std::fs::read(here.join("b/f04321")).expect("read"),
        std::fs::read(src.join("b/f04321")).expect("read")
    );
    for d in ["a", "b"] {
        let (want, got) = (
            std::fs::metadata(src.join(d)).expect("stat"),
            std::fs::metadata(here.join(d)).expect("stat"),
        );
        assert_eq!(got.mode() & 0o7777, want.mode() & 0o7777, "{d} mode");
        assert_eq!(got.mtime(), want.mtime(), "{d} mtime");
    }
}
