//! The small-file path: many files of at most one chunk fetched many to a
//! call (`fetch_small`), written on blocking threads, held nameless until
//! the batched sync, then linked into place. Real child processes, real
//! file systems.

mod filectl;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrogen::connect::ContextInfo;
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use ferrogen::files::{SMALL_FILE_MAX, TARGET_SERVICE};
use filectl::{Ctl, set_times};

fn ctl() -> Ctl {
    filectl::ctl(1 << 20, Duration::from_secs(30))
}

async fn child(c: &Ctl) -> ContextInfo {
    filectl::child(c, None).await
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf8").to_string()
}

/// A file entry whose size hint is `hint` (what the plan believed).
fn entry(src: &Path, rel: &str, hint: u64) -> PlanEntry {
    PlanEntry::File {
        src: s(src).into(),
        rel: rel.into(),
        size: hint,
        stamp: None,
    }
}

fn plan(entries: Vec<PlanEntry>, dest: &Path) -> PushPlan {
    PushPlan {
        server: 0,
        dest: s(dest).into(),
        into_dir: true,
        entries,
        options: ReceiveOptions::default(),
        parallel: 8,
        dry_run: false,
        compare: Default::default(),
        sizes_bound: false,
        filter: Default::default(),
        delete: Default::default(),
        root: None,
    }
}

async fn push(c: &Ctl, ctx: u32, p: &PushPlan) -> Vec<EntryResult> {
    c.router
        .call_service(ctx, TARGET_SERVICE, "push", p)
        .await
        .expect("push call answered")
}

/// Deterministic bytes, different for every `seed`.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every name under `dir`, recursively, relative to it.
fn all_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                todo.push(p.clone());
            }
            out.push(
                p.strip_prefix(dir)
                    .expect("beneath")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}

fn hidden(names: &[String]) -> Vec<&String> {
    names
        .iter()
        .filter(|n| n.rsplit('/').next().is_some_and(|b| b.starts_with('.')))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_come_in_few_calls_with_content_and_metadata() {
    let c = ctl();
    let a = child(&c).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let modes = [0o600, 0o644, 0o755, 0o640];
    let mut entries = Vec::new();
    let mut expect = Vec::new();
    for i in 0..1500usize {
        let rel = format!("d{}/f{i:04}", i % 7);
        let p = src.path().join(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let len = if i == 0 {
            0
        } else if i == 1 {
            SMALL_FILE_MAX as usize
        } else {
            (i * 37) % 3000
        };
        let data = bytes(len, i as u64);
        std::fs::write(&p, &data).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(modes[i % 4])).expect("chmod");
        set_times(
            &p,
            1_500_000_000 + i as i64,
            (i as i64 * 7919) % 1_000_000_000,
        );
        entries.push(entry(&p, &rel, len as u64));
        expect.push((rel, data, modes[i % 4], i));
    }
    for d in 0..7 {
        entries.push(PlanEntry::Dir {
            rel: format!("d{d}").into(),
            mode: 0o755,
            mtime_sec: 1_400_000_000,
            mtime_nsec: 5,
            owner: None,
            xattrs: Vec::new(),
        });
    }
    c.fs.register_prefix(s(src.path())).expect("register");
    let r = push(&c, a.id, &plan(entries, dst.path())).await;
    let failed: Vec<_> = r.iter().filter(|e| e.error.is_some()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    for (rel, data, mode, i) in &expect {
        let out = dst.path().join(rel);
        let md = std::fs::metadata(&out).expect("stat");
        assert_eq!(md.mode() & 0o7777, *mode, "{rel}");
        assert_eq!(
            (md.mtime(), md.mtime_nsec()),
            (
                1_500_000_000 + *i as i64,
                (*i as i64 * 7919) % 1_000_000_000
            ),
            "{rel}"
        );
        assert_eq!(&std::fs::read(&out).expect("read"), data, "{rel}");
        let res = r
            .iter()
            .find(|e| e.path == s(&out))
            .expect("a result per file");
        assert_eq!(
            res.digest.as_deref(),
            Some(blake3::hash(data).to_hex().as_str())
        );
    }
    let dmd = std::fs::metadata(dst.path().join("d3")).expect("stat dir");
    assert_eq!((dmd.mtime(), dmd.mode() & 0o7777), (1_400_000_000, 0o755));
    // 1,500 files, about 2.2 MiB: a handful of calls, not 1,500 fetches.
    let calls = c.fs.stats().small_calls;
    assert!((3..=8).contains(&calls), "{calls} fetch_small calls");
    let names = all_names(dst.path());
    assert!(
        hidden(&names).is_empty(),
        "temp files left: {:?}",
        hidden(&names)
    );
    assert_eq!(names.len(), 1500 + 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_a_batch_are_per_file_and_stale_hints_fall_back() {
    let c = ctl();
    let a = child(&c).await;
    let src = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let good1 = src.path().join("good1");
    let good2 = src.path().join("good2");
    std::fs::write(&good1, b"first").expect("write");
    std::fs::write(&good2, b"second").expect("write");
    let fifo = src.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    std::fs::write(outside.path().join("secret"), b"secret").expect("write");
    let escape = src.path().join("escape");
    std::os::unix::fs::symlink(outside.path().join("secret"), &escape).expect("symlink");
    // The plan believed these small; they are not (any more).
    let grown = src.path().join("grown");
    let grown_data = bytes(400_000, 1);
    std::fs::write(&grown, &grown_data).expect("write");
    let mut over_budget = Vec::new();
    for i in 0..12u64 {
        let p = src.path().join(format!("big{i}"));
        let d = bytes(100_000, 100 + i);
        std::fs::write(&p, &d).expect("write");
        over_budget.push((format!("big{i}"), p, d));
    }
    c.fs.register_prefix(s(src.path())).expect("register");

    let mut entries = vec![
        entry(&good1, "good1", 5),
        entry(Path::new("/etc/shadow"), "shadow", 10),
        entry(&fifo, "fifo", 0),
        entry(&escape, "escape", 6),
        entry(&good2, "good2", 6),
        entry(&grown, "grown", 10),
    ];
    for (rel, p, _) in &over_budget {
        entries.push(entry(p, rel, 1));
    }
    let r = push(&c, a.id, &plan(entries, dst.path())).await;
    let err_of = |name: &str| -> Option<String> {
        let path = s(&dst.path().join(name));
        r.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no result for {name}: {r:?}"))
            .error
            .clone()
    };
    let e = err_of("shadow").expect("shadow refused");
    assert!(
        e.contains("not registered") && e.contains("/etc/shadow"),
        "{e}"
    );
    assert!(
        e.contains(&s(&dst.path().join("shadow"))),
        "names the destination: {e}"
    );
    let e = err_of("fifo").expect("fifo refused");
    assert!(e.contains("not a regular file"), "{e}");
    let e = err_of("escape").expect("escape refused");
    assert!(e.contains("outside"), "{e}");
    for name in ["good1", "good2", "grown"] {
        assert_eq!(err_of(name), None, "{name}");
    }
    assert_eq!(
        std::fs::read(dst.path().join("good1")).expect("read"),
        b"first"
    );
    assert_eq!(
        std::fs::read(dst.path().join("good2")).expect("read"),
        b"second"
    );
    assert_eq!(
        std::fs::read(dst.path().join("grown")).expect("read"),
        grown_data
    );
    for (rel, _, d) in &over_budget {
        assert_eq!(err_of(rel), None, "{rel}");
        assert_eq!(
            &std::fs::read(dst.path().join(rel)).expect("read"),
            d,
            "{rel}"
        );
    }
    let names = all_names(dst.path());
    assert!(hidden(&names).is_empty(), "temp files left: {names:?}");
    assert!(!names.contains(&"shadow".to_string()) && !names.contains(&"escape".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_again_replaces_every_file() {
    let c = ctl();
    let a = child(&c).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = (0..300).map(|i| src.path().join(format!("f{i}"))).collect();
    c.fs.register_prefix(s(src.path())).expect("register");
    for round in 0..2u64 {
        let mut entries = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            std::fs::write(p, bytes(100 + i, round * 1000 + i as u64)).expect("write");
            entries.push(entry(p, &format!("f{i}"), 100 + i as u64));
        }
        let r = push(&c, a.id, &plan(entries, dst.path())).await;
        assert!(r.iter().all(|e| e.error.is_none()), "round {round}: {r:?}");
        for (i, _) in paths.iter().enumerate() {
            assert_eq!(
                std::fs::read(dst.path().join(format!("f{i}"))).expect("read"),
                bytes(100 + i, round * 1000 + i as u64),
                "round {round}, f{i}"
            );
        }
    }
    let names = all_names(dst.path());
    assert_eq!(names.len(), 300, "{:?}", hidden(&names));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_push_leaves_no_file_at_all() {
    let c = ctl();
    let a = child(&c).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut entries = Vec::new();
    let mut small_bytes = 0u64;
    for i in 0..2000u64 {
        let p = src.path().join(format!("f{i}"));
        std::fs::write(&p, bytes(512, i)).expect("write");
        small_bytes += 512;
        entries.push(entry(&p, &format!("f{i}"), 512));
    }
    // A large file keeps the push going after every small one is in.
    let large = src.path().join("large");
    std::fs::File::create(&large)
        .expect("create")
        .set_len(4 << 30)
        .expect("set_len");
    entries.push(entry(&large, "large", 4 << 30));
    c.fs.register_prefix(s(src.path())).expect("register");
    let router = c.router.clone();
    let p = plan(entries, dst.path());
    let call = tokio::spawn(async move {
        router
            .call_service::<_, Vec<EntryResult>>(a.id, TARGET_SERVICE, "push", &p)
            .await
    });
    let t0 = Instant::now();
    while c.fs.progress(a.id) <= small_bytes + (8 << 20) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "push never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(a.pid.to_string())
        .status();
    let r = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ends")
        .expect("join");
    assert!(r.is_err(), "the push cannot succeed: {r:?}");
    // Every small file was verified and waiting for the batched sync, the
    // large one half written: all of them nameless, so nothing remains.
    let names = all_names(dst.path());
    assert!(
        names.is_empty(),
        "left behind: {} names, e.g. {:?}",
        names.len(),
        names.first()
    );
}

/// `digests` (for `--checksum`) hashes registered files only, and refuses
/// a call naming more than its cap of paths before reading any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_are_of_registered_files_only_and_capped_per_call() {
    use ferrogen::files::{DigestArgs, FILE_SERVICE, FileDigest, MAX_DIGEST_PATHS};
    let c = ctl();
    let src = tempfile::tempdir().expect("tempdir");
    let f = src.path().join("f");
    std::fs::write(&f, bytes(70_000, 9)).expect("write");
    c.fs.register_prefix(s(src.path())).expect("register");
    let args = DigestArgs {
        paths: vec![
            s(&f).into(),
            "/etc/passwd".into(),
            s(src.path()).into(),
            s(&src.path().join("missing")).into(),
        ],
    };
    let me = c.router.id();
    let got: Vec<FileDigest> = c
        .router
        .call_service(me, FILE_SERVICE, "digests", &args)
        .await
        .expect("digests answered");
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        FileDigest::Digest(*blake3::hash(&bytes(70_000, 9)).as_bytes())
    );
    for (i, d) in got.iter().enumerate().skip(1) {
        assert!(matches!(d, FileDigest::Failed(_)), "path {i}: {d:?}");
    }
    let too_many = DigestArgs {
        paths: vec![s(&f).into(); MAX_DIGEST_PATHS + 1],
    };
    let r: Result<Vec<FileDigest>, _> = c
        .router
        .call_service(me, FILE_SERVICE, "digests", &too_many)
        .await;
    let e = r.expect_err("over the cap is refused").to_string();
    assert!(e.contains("at most"), "{e}");
}
