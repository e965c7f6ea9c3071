//! Delta transfer and `--partial` resume with real files through a local
//! target: each kind of change rebuilt exactly from the old file plus what
//! differs; a lying signature fails its file and keeps the old one; an
//! interrupted push leaves an owner-only partial file that the next push
//! verifies and completes, sending only the rest.

mod filectl;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrogen::files::delta;
use ferrogen::files::pace::Limits;
use ferrogen::files::place::Place;
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::{self, ReceiveError, ReceiveOptions, TempFiles};
use ferrogen::files::serve::FileStats;
use ferrogen::files::window::Sizing;
use ferrogen::files::{FileServiceConfig, TARGET_SERVICE};
use ferrogen::router::{Router, RouterConfig};
use filectl::{Ctl, child, ctl_with};

fn config() -> FileServiceConfig {
    FileServiceConfig {
        sizing: Sizing::Fixed(4 << 20),
        ack_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

fn options(delta: bool, partial: bool) -> ReceiveOptions {
    ReceiveOptions {
        fsync: false,
        delta,
        partial,
        ..Default::default()
    }
}

fn plan(src: &Path, dest: &Path, options: ReceiveOptions) -> PushPlan {
    PushPlan {
        server: 0,
        dest: dest.to_str().expect("utf8").into(),
        into_dir: true,
        entries: vec![PlanEntry::File {
            src: src.to_str().expect("utf8").into(),
            rel: "blob".into(),
            size: std::fs::metadata(src).map(|m| m.len()).unwrap_or(0),
            // Unknown: always sent (these tests are about how).
            stamp: None,
        }],
        options,
        parallel: 4,
        ..Default::default()
    }
}

async fn push(c: &Ctl, ctx: u32, p: &PushPlan) -> Vec<EntryResult> {
    c.router
        .call_service(ctx, TARGET_SERVICE, "push", p)
        .await
        .expect("push call answered")
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn entries_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What the FileService sent between two snapshots.
fn sent(before: &FileStats, after: &FileStats) -> (u64, u64, u64) {
    (
        after.delta_transfers - before.delta_transfers,
        after.delta_copied_bytes - before.delta_copied_bytes,
        after.delta_literal_bytes - before.delta_literal_bytes,
    )
}

const SIZE: usize = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_change_is_rebuilt_exactly_sending_about_what_differs() {
    let c = ctl_with(config());
    let a = child(&c, None).await;
    let old = random(SIZE, 1);
    let fresh = random(1 << 20, 2);
    let mut in_place = old.clone();
    in_place[1_000_000..1_000_000 + 100_000].copy_from_slice(&fresh[..100_000]);
    let mut inserted = fresh[..50_000].to_vec();
    inserted.extend_from_slice(&old);
    let mut deleted = old[..1_500_000].to_vec();
    deleted.extend_from_slice(&old[1_700_000..]);
    let mut appended = old.clone();
    appended.extend_from_slice(&fresh[..300_000]);
    let truncated = old[..2_000_000].to_vec();
    let different = random(SIZE, 3);
    // (name, new content, most literal bytes allowed)
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("in place", in_place, 100_000 + 2 * 8192),
        ("insertion", inserted, 50_000 + 8192),
        ("deletion", deleted, 2 * 8192),
        ("append", appended, 300_000),
        ("truncation", truncated, 8192),
        ("different", different, SIZE as u64),
    ];
    for (name, new, most_literal) in cases {
        let src_dir = tempfile::tempdir().expect("tempdir");
        let dst = tempfile::tempdir().expect("tempdir");
        let src = src_dir.path().join("blob");
        std::fs::write(&src, &new).expect("write source");
        std::fs::write(dst.path().join("blob"), &old).expect("write old");
        c.fs.register(&src).expect("register");
        let before = c.fs.stats();
        let r = push(&c, a.id, &plan(&src, dst.path(), options(true, false))).await;
        assert!(r.iter().all(|e| e.error.is_none()), "{name}: {r:?}");
        let got = std::fs::read(dst.path().join("blob")).expect("read");
        assert!(got == new, "{name}: content differs");
        let (transfers, copied, literal) = sent(&before, &c.fs.stats());
        assert_eq!(transfers, 1, "{name}: sent as a delta");
        assert_eq!(copied + literal, new.len() as u64, "{name}");
        assert!(
            literal <= most_literal,
            "{name}: {literal} literal bytes (at most {most_literal} expected)"
        );
        assert_eq!(entries_in(dst.path()), vec!["blob"], "{name}: no temp left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_sends_no_delta() {
    let c = ctl_with(config());
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let mut new = random(SIZE, 4);
    std::fs::write(dst.path().join("blob"), &new).expect("write old");
    new[10] ^= 1;
    std::fs::write(&src, &new).expect("write source");
    c.fs.register(&src).expect("register");
    let before = c.fs.stats();
    let r = push(&c, a.id, &plan(&src, dst.path(), options(false, false))).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert_eq!(std::fs::read(dst.path().join("blob")).expect("read"), new);
    assert_eq!(sent(&before, &c.fs.stats()), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_signature_fails_the_file_and_leaves_the_old_one() {
    // The receiver here is the test: it offers the signature of the *new*
    // file while its old file differs, so the sender answers with nothing
    // but copy instructions, and what they build is wrong.
    let c = ctl_with(config());
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let new = random(SIZE, 5);
    let old = random(SIZE, 6);
    std::fs::write(&src, &new).expect("write source");
    let dest = dst.path().join("blob");
    std::fs::write(&dest, &old).expect("write old");
    c.fs.register(&src).expect("register");
    let bl = delta::block_len_for(SIZE as u64).expect("block size");
    let lie = delta::signature(&new[..], SIZE as u64, bl).expect("signature");
    let place = Place::from_path(&dest).expect("place");
    let before = c.fs.stats();
    let r = receive::receive_with_basis(
        &in_process_child(&c),
        0,
        &src.as_path().into(),
        &place,
        &TempFiles::default(),
        &options(true, false),
        (std::fs::File::open(&dest).expect("open old"), lie),
    )
    .await;
    let Err(e) = r else {
        panic!("a file built from a lying signature was accepted");
    };
    assert!(matches!(e, ReceiveError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("digest"), "{e}");
    assert_eq!(std::fs::read(&dest).expect("read"), old, "old file intact");
    assert_eq!(entries_in(dst.path()), vec!["blob"], "no temp left");
    let (_, copied, _) = sent(&before, &c.fs.stats());
    assert_eq!(copied, SIZE as u64, "the lie was believed by the sender");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconsistent_signature_is_refused_by_the_sender() {
    let c = ctl_with(config());
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    std::fs::write(&src, random(SIZE, 7)).expect("write source");
    let dest = dst.path().join("blob");
    let old = random(SIZE, 8);
    std::fs::write(&dest, &old).expect("write old");
    c.fs.register(&src).expect("register");
    let mut lie = delta::signature(&old[..], SIZE as u64, 4096).expect("signature");
    lie.size *= 1000; // far more blocks than sums
    let r = receive::receive_with_basis(
        &in_process_child(&c),
        0,
        &src.as_path().into(),
        &Place::from_path(&dest).expect("place"),
        &TempFiles::default(),
        &options(true, false),
        (std::fs::File::open(&dest).expect("open old"), lie),
    )
    .await;
    let e = r.err().expect("refused").to_string();
    assert!(e.contains("unusable delta signature"), "{e}");
    assert_eq!(std::fs::read(&dest).expect("read"), old);
}

/// A context in this process, a child of the controller over an in-memory
/// stream: the test plays its receiving side with any signature it likes.
fn in_process_child(c: &Ctl) -> Router {
    let id = 77;
    let router = Router::new(RouterConfig {
        id,
        name: "in-process".into(),
        parent_ids: vec![0],
        max_message_size: ferrogen::wire::DEFAULT_MAX_MESSAGE_SIZE,
    });
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(ours);
    ferrogen::stream::start(
        &c.router,
        "in-process".into(),
        id,
        false,
        r,
        w,
        bytes::BytesMut::new(),
    );
    let (r, w) = tokio::io::split(theirs);
    ferrogen::stream::start(
        &router,
        "parent".into(),
        0,
        true,
        r,
        w,
        bytes::BytesMut::new(),
    );
    router
}

fn partial_of(dst: &Path) -> PathBuf {
    dst.join(".blob.ferrogen-partial")
}

/// Starts `ferrogen push --partial` of `src` into `dst/` at 4 MiB/s,
/// waits until its partial file holds at least `at_least` bytes, then
/// interrupts the controller (SIGINT) and waits for it to exit.
fn interrupted_cli_push(src: &Path, dst: &Path, at_least: u64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrogen"));
    cmd.args(["push", "--partial", "--bwlimit", "4M", "--no-fsync"])
        .arg(src)
        .arg(format!("{}/", dst.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = cmd.spawn().expect("ferrogen runs");
    let t0 = Instant::now();
    loop {
        let len = std::fs::metadata(partial_of(dst))
            .map(|m| m.len())
            .unwrap_or(0);
        if len >= at_least {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) || proc.try_wait().ok().flatten().is_some() {
            let _ = proc.kill();
            panic!("the partial file never reached {at_least} bytes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-INT", &proc.id().to_string()])
        .status();
    let status = proc.wait().expect("wait");
    assert!(!status.success(), "an interrupted push reports failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_resumes_with_partial_sending_only_the_rest() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let size = 24usize << 20;
    let data = random(size, 9);
    std::fs::write(&src, &data).expect("write source");
    interrupted_cli_push(&src, dst.path(), 4 << 20);
    // The received prefix is kept, hidden and owner-only, and nothing else.
    assert_eq!(entries_in(dst.path()), vec![".blob.ferrogen-partial"]);
    let md = std::fs::symlink_metadata(partial_of(dst.path())).expect("partial file");
    assert!(md.file_type().is_file());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let held = std::fs::read(partial_of(dst.path())).expect("read partial");
    assert!(held.len() >= 4 << 20 && held.len() < size, "{}", held.len());
    assert!(held[..] == data[..held.len()], "the prefix is the file's");

    let c = ctl_with(config());
    let a = child(&c, None).await;
    c.fs.register(&src).expect("register");
    let r = push(&c, a.id, &plan(&src, dst.path(), options(true, true))).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert!(std::fs::read(dst.path().join("blob")).expect("read") == data);
    let st = c.fs.stats();
    assert_eq!(st.resumed_transfers, 1);
    assert_eq!(st.resumed_bytes, held.len() as u64);
    assert_eq!(
        c.fs.progress(a.id),
        (size - held.len()) as u64,
        "only the rest was sent"
    );
    assert_eq!(entries_in(dst.path()), vec!["blob"], "partial file renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_with_partial_leaves_its_prefix_and_a_tampered_one_is_resent_whole() {
    let c = ctl_with(FileServiceConfig {
        bwlimit: Limits {
            per_target: Some(4 << 20),
            total: None,
        },
        ..config()
    });
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let size = 16usize << 20;
    let data = random(size, 10);
    std::fs::write(&src, &data).expect("write source");
    c.fs.register(&src).expect("register");
    let a = child(&c, None).await;
    let p = plan(&src, dst.path(), options(true, true));
    let router = c.router.clone();
    let p2 = p.clone();
    let call = tokio::spawn(async move {
        router
            .call_service::<_, Vec<EntryResult>>(a.id, TARGET_SERVICE, "push", &p2)
            .await
    });
    let t0 = Instant::now();
    while std::fs::metadata(partial_of(dst.path()))
        .map(|m| m.len())
        .unwrap_or(0)
        < 2 << 20
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = Command::new("kill")
        .args(["-9", &a.pid.to_string()])
        .status();
    assert!(call.await.expect("join").is_err(), "the target was killed");
    let held = std::fs::read(partial_of(dst.path())).expect("partial file kept");
    assert!(held.len() >= 2 << 20 && held[..] == data[..held.len()]);

    // Tamper with the prefix: the digests disagree and it all comes again.
    let mut bad = held.clone();
    bad[12345] ^= 0xff;
    std::fs::write(partial_of(dst.path()), &bad).expect("tamper");
    let b = child(&c, None).await;
    let r = push(&c, b.id, &p).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert!(std::fs::read(dst.path().join("blob")).expect("read") == data);
    let st = c.fs.stats();
    assert_eq!((st.resumed_transfers, st.resume_mismatches), (0, 1));
    assert_eq!(c.fs.progress(b.id), size as u64, "sent whole");
    assert_eq!(entries_in(dst.path()), vec!["blob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_push_removes_a_stale_partial_and_never_follows_a_symlink_there() {
    let c = ctl_with(config());
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let data = random(SIZE, 11);
    std::fs::write(&src, &data).expect("write source");
    c.fs.register(&src).expect("register");
    // A stale partial file, pushed without --partial: removed at the end.
    std::fs::write(partial_of(dst.path()), &data[..1000]).expect("write partial");
    let r = push(&c, a.id, &plan(&src, dst.path(), options(true, false))).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert_eq!(entries_in(dst.path()), vec!["blob"]);

    // A symlink at the partial name, pushed with --partial: neither
    // followed (its target is untouched) nor used.
    let victim = src_dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write victim");
    std::fs::remove_file(dst.path().join("blob")).expect("rm");
    std::os::unix::fs::symlink(&victim, partial_of(dst.path())).expect("symlink");
    let r = push(&c, a.id, &plan(&src, dst.path(), options(true, true))).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert!(std::fs::read(dst.path().join("blob")).expect("read") == data);
    assert_eq!(std::fs::read(&victim).expect("read victim"), b"precious");
    assert!(
        std::fs::symlink_metadata(partial_of(dst.path()))
            .expect("still there")
            .file_type()
            .is_symlink()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_with_compressed_literals_is_exact() {
    let c = ctl_with(FileServiceConfig {
        compress: ferrogen::files::compress::Compression::Level(3),
        ..config()
    });
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    // Text-like old file; the new one has a compressible insertion.
    let old: Vec<u8> = (0..SIZE / 16)
        .flat_map(|i| format!("line {i:010}\n").into_bytes())
        .collect();
    let mut new = old[..1_000_000].to_vec();
    new.extend(std::iter::repeat_n(b'x', 400_000));
    new.extend_from_slice(&old[1_000_000..]);
    std::fs::write(&src, &new).expect("write source");
    std::fs::write(dst.path().join("blob"), &old).expect("write old");
    c.fs.register(&src).expect("register");
    let r = push(&c, a.id, &plan(&src, dst.path(), options(true, false))).await;
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    assert!(std::fs::read(dst.path().join("blob")).expect("read") == new);
    let st = c.fs.stats();
    assert_eq!(st.delta_transfers, 1);
    assert!(st.delta_literal_bytes < 400_000 + 3 * 8192, "{st:?}");
    assert!(st.compressed_chunks > 0, "literals were compressed: {st:?}");
}
