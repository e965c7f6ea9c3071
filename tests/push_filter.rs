//! Issue 11: `--exclude`, `--include`, `--exclude-from` with rsync's rules,
//! through the real binary to a local target; and the FileService refusing
//! an excluded file to a target that asks for it by name.

mod filectl;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use ferrogen::files::filter::{Rule, Rules};
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use ferrogen::files::{FILE_SERVICE, FetchSmallArgs, SmallFile, TARGET_SERVICE};

fn ferrogen(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .output()
        .expect("ferrogen runs")
}

/// `ferrogen push` with text arguments.
fn push(args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = vec![OsStr::new("push")];
    all.extend(args.iter().map(OsStr::new));
    ferrogen(&all)
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
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Every path under `dir`, relative, sorted ('/'-separated).
fn names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                todo.push(p.clone());
            }
            out.push(text(
                p.strip_prefix(dir).expect("beneath").as_os_str().as_bytes(),
            ));
        }
    }
    out.sort();
    out
}

/// A source tree:
/// src/{a.txt, b.o, keep.o, secrets.key, cache/{x, fifo}, sub/{c.txt, d.o}}.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("cache")).expect("mkdir");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for f in [
        "a.txt",
        "b.o",
        "keep.o",
        "secrets.key",
        "cache/x",
        "sub/c.txt",
        "sub/d.o",
    ] {
        std::fs::write(src.join(f), f.as_bytes()).expect("write");
    }
    // Without -a a FIFO is reported as skipped: if the walk entered
    // cache/, stderr would say so.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("cache/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    (t, src)
}

#[test]
fn excluded_files_and_directories_stay_behind() {
    let (t, src) = tree();
    let dest = t.path().join("dest");
    // Without the rule the walk reports the FIFO in cache/ (so the check
    // below could fail).
    let o = push(&["-r", s(&src), &format!("{}/", s(&t.path().join("probe")))]);
    ok(&o);
    assert!(text(&o.stderr).contains("fifo"), "{}", text(&o.stderr));

    let o = push(&[
        "-r",
        "--exclude",
        "*.key",
        "--exclude",
        "/src/cache/",
        "--exclude",
        "no-such-name-anywhere",
        s(&src),
        &format!("{}/", s(&dest)),
    ]);
    ok(&o);
    assert_eq!(
        names(&dest),
        [
            "src",
            "src/a.txt",
            "src/b.o",
            "src/keep.o",
            "src/sub",
            "src/sub/c.txt",
            "src/sub/d.o"
        ]
    );
    assert!(
        !text(&o.stderr).contains("fifo"),
        "the excluded directory was walked: {}",
        text(&o.stderr)
    );
}

#[test]
fn a_contents_copy_matches_below_its_root() {
    let (t, src) = tree();
    let dest = t.path().join("dest");
    // For `src/` the transfer root is src itself: `/sub` anchors there.
    let o = push(&[
        "-r",
        "--exclude",
        "/sub",
        "--exclude",
        "cache",
        &format!("{}/", s(&src)),
        &format!("{}/", s(&dest)),
    ]);
    ok(&o);
    assert_eq!(names(&dest), ["a.txt", "b.o", "keep.o", "secrets.key"]);
}

#[test]
fn the_first_matching_rule_wins_in_command_line_order() {
    let (t, src) = tree();
    let d1 = t.path().join("d1");
    let o = push(&[
        "-r",
        "--include",
        "keep.o",
        "--exclude",
        "*.o",
        "--exclude",
        "cache",
        s(&src),
        &format!("{}/", s(&d1)),
    ]);
    ok(&o);
    assert_eq!(
        names(&d1),
        [
            "src",
            "src/a.txt",
            "src/keep.o",
            "src/secrets.key",
            "src/sub",
            "src/sub/c.txt"
        ]
    );
    // The same rules, the other way round: the exclude comes first.
    let d2 = t.path().join("d2");
    let o = push(&[
        "-r",
        "--exclude",
        "*.o",
        "--include",
        "keep.o",
        "--exclude",
        "cache",
        s(&src),
        &format!("{}/", s(&d2)),
    ]);
    ok(&o);
    assert!(!d2.join("src/keep.o").exists(), "{:?}", names(&d2));
    assert!(d2.join("src/a.txt").exists());
}

#[test]
fn exclude_from_reads_comments_and_plus_minus_lines() {
    let (t, src) = tree();
    let list = t.path().join("rules");
    std::fs::write(
        &list,
        "# build products\n\n; another comment\n+ keep.o\n- *.o\r\ncache/\n+ sub/\n- /src/*/*\n",
    )
    .expect("write");
    let dest = t.path().join("dest");
    // An --include given before --exclude-from comes first.
    let o = push(&[
        "-r",
        "--include",
        "secrets.key",
        "--exclude-from",
        s(&list),
        "--exclude",
        "secrets.key",
        s(&src),
        &format!("{}/", s(&dest)),
    ]);
    ok(&o);
    assert_eq!(
        names(&dest),
        [
            "src",
            "src/a.txt",
            "src/keep.o",
            "src/secrets.key",
            "src/sub"
        ]
    );
}

#[test]
fn names_that_are_not_utf8_are_matched_as_bytes() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let bad_key = src.join(OsStr::from_bytes(b"\xff\xfe.key"));
    let bad_txt = src.join(OsStr::from_bytes(b"\xff\xfe.txt"));
    std::fs::write(&bad_key, b"k").expect("write");
    std::fs::write(&bad_txt, b"t").expect("write");
    let dest = t.path().join("dest");
    let o = push(&[
        "-r",
        "--exclude",
        "*.key",
        s(&src),
        &format!("{}/", s(&dest)),
    ]);
    ok(&o);
    let got: Vec<Vec<u8>> = std::fs::read_dir(dest.join("src"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(got, vec![b"\xff\xfe.txt".to_vec()]);
    // `?` is one byte, as in rsync: `/src/??.txt` matches the two bytes.
    let dest2 = t.path().join("dest2");
    let o = push(&[
        "-r",
        "--exclude",
        "/src/??.txt",
        s(&src),
        &format!("{}/", s(&dest2)),
    ]);
    ok(&o);
    let got: Vec<Vec<u8>> = std::fs::read_dir(dest2.join("src"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(got, vec![b"\xff\xfe.key".to_vec()]);
}

#[test]
fn bad_patterns_and_files_are_usage_errors_naming_them() {
    let (t, src) = tree();
    let dest = format!("{}/", s(&t.path().join("dest")));
    let o = push(&["-r", "--exclude", "ok", "--include", "a[b", s(&src), &dest]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--include \"a[b\""),
        "{}",
        text(&o.stderr)
    );
    let missing = t.path().join("no-such-list");
    let o = push(&["-r", "--exclude-from", s(&missing), s(&src), &dest]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no-such-list"),
        "{}",
        text(&o.stderr)
    );
    assert!(!t.path().join("dest").exists(), "nothing was pushed");
}

/// A target asking for an excluded file by name, through both `fetch`
/// (one file) and `fetch_small` (many to a call), and the controller's
/// own `fetch_small`, is refused; the file beside it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_service_refuses_excluded_files() {
    let c = filectl::ctl(1 << 20, Duration::from_secs(30));
    let a = filectl::child(&c, None).await;
    let (t, src) = tree();
    let rules = Rules(vec![Rule::exclude("*.key"), Rule::exclude("cache/")]);
    let filter = Arc::new(rules.compile().expect("compiles"));
    c.fs.register_prefix_filtered(&src, filter, b"src")
        .expect("register");
    let file = |rel: &str| PlanEntry::File {
        src: s(&src.join(rel)).into(),
        rel: rel.replace('/', "_").as_str().into(),
        size: 10,
        stamp: None,
    };
    let plan = |entries: Vec<PlanEntry>, dest: &Path| PushPlan {
        server: 0,
        dest: s(dest).into(),
        into_dir: true,
        entries,
        options: ReceiveOptions::default(),
        parallel: 4,
        dry_run: false,
        compare: Default::default(),
        sizes_bound: false,
        filter: Default::default(),
        delete: Default::default(),
        root: None,
    };
    let call = |p: PushPlan| {
        let router = c.router.clone();
        async move {
            let r: Vec<EntryResult> = router
                .call_service(a.id, TARGET_SERVICE, "push", &p)
                .await
                .expect("push answered");
            r
        }
    };
    // One file: `fetch`.
    for refused in ["secrets.key", "cache/x"] {
        let dest = t.path().join(format!("one-{}", refused.replace('/', "_")));
        let r = call(plan(vec![file(refused)], &dest)).await;
        let e = r.iter().find_map(|r| r.error.clone()).expect("refused");
        assert!(e.contains("excluded"), "{refused}: {e}");
        assert!(names(&dest).is_empty(), "{:?}", names(&dest));
    }
    // Several small files: `fetch_small`.
    let dest = t.path().join("many");
    let r = call(plan(
        vec![file("a.txt"), file("secrets.key"), file("cache/x")],
        &dest,
    ))
    .await;
    let errors: Vec<&String> = r.iter().filter_map(|r| r.error.as_ref()).collect();
    assert_eq!(errors.len(), 2, "{r:?}");
    assert!(errors.iter().all(|e| e.contains("excluded")), "{errors:?}");
    assert_eq!(names(&dest), ["a.txt"]);
    // The service itself, asked directly.
    let args = FetchSmallArgs {
        paths: vec![
            s(&src.join("secrets.key")).into(),
            s(&src.join("sub/../secrets.key")).into(),
            s(&src.join("a.txt")).into(),
        ],
    };
    let reply: Vec<SmallFile> = c
        .router
        .call_service(0, FILE_SERVICE, "fetch_small", &args)
        .await
        .expect("fetch_small answered");
    assert!(
        matches!(&reply[0], SmallFile::Failed(e) if e.contains("excluded")),
        "{:?}",
        reply[0]
    );
    assert!(
        matches!(&reply[1], SmallFile::Failed(e) if e.contains("excluded")),
        "{:?}",
        reply[1]
    );
    assert!(
        matches!(
            &reply[2],
            SmallFile::Data { .. } | SmallFile::Compressed { .. }
        ),
        "{:?}",
        reply[2]
    );
}
