//! Issue 11: `--delete` and `--max-delete` — extras removed from the
//! pushed directories of DEST and nowhere else, never through a symlink;
//! excluded names spared; a dry run changing nothing; an unreadable part
//! of the source sparing its subtree. The real binary, a local target.

mod filectl;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferrogen::files::TARGET_SERVICE;
use ferrogen::files::delete::DeleteSpec;
use ferrogen::files::filter::{Rule, Rules};
use ferrogen::files::plan::{EntryKind, EntryResult, PlanEntry, PushPlan, Status};
use ferrogen::files::receive::ReceiveOptions;

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

fn into(p: &Path) -> String {
    format!("{}/", s(p))
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn write(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(p, data).expect("write");
}

fn symlink(target: impl AsRef<Path>, at: &Path) {
    std::os::unix::fs::symlink(target, at).expect("symlink");
}

/// Everything about one entry that a push could change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    kind: &'static str,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    digest: Option<String>,
    link: Option<PathBuf>,
}

/// Every entry under `root` (itself included), by relative path: type,
/// mode, size, mtime, and a BLAKE3 digest of each file's content.
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
        let digest = (kind == "file").then(|| {
            blake3::hash(&std::fs::read(&p).expect("read"))
                .to_hex()
                .to_string()
        });
        let link = ft
            .is_symlink()
            .then(|| std::fs::read_link(&p).expect("readlink"));
        out.insert(
            p.strip_prefix(root).expect("beneath").to_path_buf(),
            Snap {
                kind,
                mode: md.mode(),
                size: md.len(),
                mtime: (md.mtime(), md.mtime_nsec()),
                digest,
                link,
            },
        );
    }
    out
}

fn names(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// src/{a.txt, sub/b.txt, sub/deeper/c.txt}
fn source(t: &Path) -> PathBuf {
    let src = t.join("src");
    write(&src.join("a.txt"), "a");
    write(&src.join("sub/b.txt"), "b");
    write(&src.join("sub/deeper/c.txt"), "c");
    src
}

#[test]
fn delete_removes_extras_inside_the_pushed_directories_only() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("src/a.txt"), "old a");
    write(&dest.join("src/gone.txt"), "x");
    write(&dest.join("src/sub/extra_dir/x"), "x");
    write(&dest.join("src/sub/extra_dir/y/z"), "z");
    symlink("/nonexistent", &dest.join("src/sub/dangling"));
    std::fs::create_dir_all(dest.join("src/sub/deeper")).expect("mkdir");
    symlink("../..", &dest.join("src/sub/deeper/up"));
    write(&dest.join("other_top.txt"), "not pushed: stays");
    write(&dest.join("other_dir/f"), "not pushed: stays");
    let o = push(&["-r", "--delete", "--json", s(&src), &into(&dest)]);
    ok(&o);
    assert_eq!(
        names(&dest),
        [
            "other_dir",
            "other_dir/f",
            "other_top.txt",
            "src",
            "src/a.txt",
            "src/sub",
            "src/sub/b.txt",
            "src/sub/deeper",
            "src/sub/deeper/c.txt"
        ]
    );
    assert_eq!(std::fs::read(dest.join("src/a.txt")).expect("read"), b"a");
    let out = text(&o.stdout);
    for gone in [
        "src/gone.txt",
        "extra_dir/y/z",
        "extra_dir\"",
        "dangling",
        "deeper/up",
    ] {
        assert!(out.contains(gone), "{gone} reported: {out}");
    }
}

#[test]
fn delete_with_a_contents_copy_sweeps_dest_itself() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("top_extra.txt"), "x");
    write(&dest.join("extra/d/f"), "x");
    let o = push(&["-r", "--delete", &into(&src), &into(&dest)]);
    ok(&o);
    assert_eq!(
        names(&dest),
        [
            "a.txt",
            "sub",
            "sub/b.txt",
            "sub/deeper",
            "sub/deeper/c.txt"
        ]
    );
}

/// Symlinks planted in DEST pointing at a directory full of files outside
/// it, in every position --delete looks at: the outside is identical
/// afterwards, and the links are gone as links.
#[test]
fn delete_never_leaves_dest() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let outside = t.path().join("outside");
    for f in ["f1", "a.txt", "gone.txt", "sub/b.txt", "sub/x", "d/e/f"] {
        write(&outside.join(f), "precious");
    }
    let before = snapshot(&outside);
    let dest = t.path().join("dest");
    std::fs::create_dir_all(dest.join("src")).expect("mkdir");
    // An extra that is a link to the outside directory, and one to a file.
    symlink(&outside, &dest.join("src/dir_link"));
    symlink(outside.join("f1"), &dest.join("src/file_link"));
    symlink("../../outside", &dest.join("src/relative_link"));
    // A symlink in place of a pushed directory.
    symlink(&outside, &dest.join("src/sub"));
    // An extra directory holding links out.
    std::fs::create_dir_all(dest.join("src/extra")).expect("mkdir");
    symlink(&outside, &dest.join("src/extra/in"));
    symlink(outside.join("d"), &dest.join("src/extra/d"));
    let o = push(&["-r", "--delete", s(&src), &into(&dest)]);
    ok(&o);
    assert_eq!(snapshot(&outside), before, "the outside changed");
    assert_eq!(
        names(&dest),
        [
            "src",
            "src/a.txt",
            "src/sub",
            "src/sub/b.txt",
            "src/sub/deeper",
            "src/sub/deeper/c.txt"
        ]
    );
    assert!(
        std::fs::symlink_metadata(dest.join("src/sub"))
            .expect("lstat")
            .is_dir()
    );

    // A contents copy: DEST itself is swept, with links out in it.
    let dest2 = t.path().join("dest2");
    std::fs::create_dir_all(&dest2).expect("mkdir");
    symlink(&outside, &dest2.join("evil"));
    symlink(&outside, &dest2.join("sub"));
    symlink(outside.join("a.txt"), &dest2.join("a.txt"));
    let o = push(&["-r", "--delete", &into(&src), &into(&dest2)]);
    ok(&o);
    assert_eq!(snapshot(&outside), before, "the outside changed");
    assert_eq!(
        names(&dest2),
        [
            "a.txt",
            "sub",
            "sub/b.txt",
            "sub/deeper",
            "sub/deeper/c.txt"
        ]
    );
}

#[test]
fn excluded_entries_survive_delete() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("src/app.log"), "kept: excluded");
    write(
        &dest.join("src/cache/blob"),
        "kept: in an excluded directory",
    );
    write(&dest.join("src/sub/extra/x.log"), "kept");
    write(&dest.join("src/sub/extra/y.txt"), "deleted");
    write(&dest.join("src/gone.txt"), "deleted");
    let o = push(&[
        "-r",
        "--delete",
        "--exclude",
        "*.log",
        "--exclude",
        "cache/",
        s(&src),
        &into(&dest),
    ]);
    ok(&o);
    assert_eq!(
        names(&dest),
        [
            "src",
            "src/a.txt",
            "src/app.log",
            "src/cache",
            "src/cache/blob",
            "src/sub",
            "src/sub/b.txt",
            "src/sub/deeper",
            "src/sub/deeper/c.txt",
            "src/sub/extra",
            "src/sub/extra/x.log"
        ]
    );
}

#[test]
fn max_delete_deletes_nothing_when_more_would_go() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let dest = t.path().join("dest");
    write(&dest.join("src/x1"), "x");
    write(&dest.join("src/x2"), "x");
    write(&dest.join("src/sub/x3"), "x");
    let o = push(&["-r", "--delete", "--max-delete", "2", s(&src), &into(&dest)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("3 entries") && err.contains("--max-delete 2"),
        "{err}"
    );
    for x in ["src/x1", "src/x2", "src/sub/x3"] {
        assert!(dest.join(x).exists(), "{x} deleted");
    }
    // The files themselves were pushed all the same.
    assert!(dest.join("src/sub/deeper/c.txt").exists());
    let o = push(&["-r", "--delete", "--max-delete", "3", s(&src), &into(&dest)]);
    ok(&o);
    for x in ["src/x1", "src/x2", "src/sub/x3"] {
        assert!(!dest.join(x).exists(), "{x} still there");
    }
}

#[test]
fn delete_needs_recursion() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let o = push(&[
        "--delete",
        s(&src.join("a.txt")),
        &into(&t.path().join("d")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("-r"), "{}", text(&o.stderr));
}

/// `-n --delete` reports what would go and changes nothing: every entry's
/// type, mode, size, mtime and content are the same afterwards.
#[test]
fn a_dry_run_delete_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = source(t.path());
    let dest = t.path().join("dest");
    ok(&push(&["-r", s(&src), &into(&dest)]));
    write(&dest.join("src/gone.txt"), "x");
    write(&dest.join("src/sub/extra/deep/f"), "x");
    symlink("/", &dest.join("src/sub/root_link"));
    write(&dest.join("untouched.txt"), "x");
    // Planting changed the times of DEST's directories: put the source's
    // back, so that only --delete has anything to do.
    for d in ["src", "src/sub"] {
        let md = std::fs::metadata(t.path().join(d)).expect("stat");
        filectl::set_times(&dest.join(d), md.mtime(), md.mtime_nsec());
    }
    let before = snapshot(&dest);
    let o = push(&["-r", "-n", "--delete", "--json", s(&src), &into(&dest)]);
    ok(&o);
    assert_eq!(snapshot(&dest), before, "a dry run changed DEST");
    let out = text(&o.stdout);
    for gone in ["src/gone.txt", "extra/deep/f", "extra/deep\"", "root_link"] {
        assert!(out.contains(gone), "{gone} not reported: {out}");
    }
    assert!(!out.contains("untouched"), "{out}");
}

/// The target's results: each deleted entry is `Deleted` with its kind;
/// in a dry run the same list, and nothing gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_entries_are_reported_with_their_kind() {
    let c = filectl::ctl(1 << 20, Duration::from_secs(30));
    let a = filectl::child(&c, None).await;
    let t = tempfile::tempdir().expect("tempdir");
    let dest = t.path().join("dest");
    write(&dest.join("top/file"), "x");
    write(&dest.join("top/dir/inner"), "x");
    write(&dest.join("top/kept.log"), "x");
    symlink("/etc", &dest.join("top/link"));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dest.join("top/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    let md = std::fs::metadata(dest.join("top")).expect("stat");
    let plan = |dry_run: bool| PushPlan {
        server: 0,
        dest: s(&dest).into(),
        into_dir: true,
        entries: vec![PlanEntry::Dir {
            rel: "top".into(),
            mode: md.mode() & 0o7777,
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            owner: None,
            xattrs: Vec::new(),
        }],
        options: ReceiveOptions::default(),
        parallel: 4,
        dry_run,
        compare: Default::default(),
        sizes_bound: false,
        filter: Rules(vec![Rule::exclude("*.log")]),
        delete: DeleteSpec {
            enabled: true,
            ..Default::default()
        },
        root: None,
    };
    let deleted = |r: &[EntryResult]| -> Vec<(String, EntryKind)> {
        let mut d: Vec<(String, EntryKind)> = r
            .iter()
            .filter(|r| r.status == Status::Deleted)
            .map(|r| {
                let p = r.path.strip_prefix(s(&dest)).expect("beneath DEST");
                (p.to_string(), r.kind)
            })
            .collect();
        d.sort_by(|x, y| x.0.cmp(&y.0));
        d
    };
    let want = vec![
        ("/top/dir".to_string(), EntryKind::Dir),
        ("/top/dir/inner".to_string(), EntryKind::File),
        ("/top/fifo".to_string(), EntryKind::Special),
        ("/top/file".to_string(), EntryKind::File),
        ("/top/link".to_string(), EntryKind::Symlink),
    ];
    let before = snapshot(&dest);
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push", &plan(true))
        .await
        .expect("push answered");
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    assert_eq!(deleted(&r), want);
    assert_eq!(snapshot(&dest), before, "a dry run changed DEST");
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push", &plan(false))
        .await
        .expect("push answered");
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    assert_eq!(deleted(&r), want);
    assert_eq!(names(&dest), ["top", "top/kept.log"]);
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `chown -hR uid:gid p`.
fn chown_all(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).expect("chown");
    if std::fs::symlink_metadata(p).expect("lstat").is_dir() {
        for e in std::fs::read_dir(p).expect("ls").flatten() {
            chown_all(&e.path(), id);
        }
    }
}

/// A source directory the controller cannot read: the push goes on, fails
/// at the end naming it, and deletes nothing beneath it on the target
/// (while still deleting elsewhere). As root, where mode 000 stops no
/// read, the push runs as nobody (65534) on a tree that account owns.
#[test]
fn an_unreadable_source_directory_deletes_nothing_beneath_it() {
    const NOBODY: u32 = 65534;
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let src = source(t.path());
    write(&src.join("locked/secret.txt"), "s");
    let dest = t.path().join("dest");
    write(&dest.join("src/locked/extra"), "must stay");
    write(&dest.join("src/locked/secret.txt"), "old");
    write(&dest.join("src/sub/extra"), "must go");
    write(&dest.join("src/extra_top"), "must go");
    let locked = src.join("locked");
    let mut cmd = if is_root() {
        chown_all(t.path(), NOBODY);
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_ferrogen"),
        ]);
        c.env("HOME", t.path());
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_ferrogen"))
    };
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    if !is_root() && std::fs::read_dir(&locked).is_ok() {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        eprintln!("skipped: mode 000 does not stop this account reading (capabilities?)");
        return;
    }
    let o = cmd
        .args(["push", "-r", "--delete", s(&src), &into(&dest)])
        .output()
        .expect("ferrogen runs");
    // Leave it removable.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let _ = std::fs::set_permissions(
        dest.join("src/locked"),
        std::fs::Permissions::from_mode(0o755),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout {}\nstderr {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let err = text(&o.stderr);
    assert!(
        err.contains(s(&locked)) && err.contains("ermission denied"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dest.join("src/locked/extra")).expect("the extra stays"),
        b"must stay"
    );
    assert_eq!(
        std::fs::read(dest.join("src/locked/secret.txt")).expect("stays"),
        b"old"
    );
    assert!(!dest.join("src/sub/extra").exists(), "deleted elsewhere");
    assert!(!dest.join("src/extra_top").exists(), "deleted elsewhere");
    assert_eq!(
        std::fs::read(dest.join("src/sub/deeper/c.txt")).expect("pushed"),
        b"c"
    );
}
