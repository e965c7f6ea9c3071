//! FileService and the receiving side, end to end with real child
//! processes (the `ferrogen` binary) and real file systems.

mod filectl;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrogen::connect::Method;
use ferrogen::files::TARGET_SERVICE;
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use filectl::{Ctl, child, ctl, ctl_with};

fn plan(entries: Vec<PlanEntry>, dest: &Path, into_dir: bool) -> PushPlan {
    PushPlan {
        server: 0,
        dest: dest.into(),
        into_dir,
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

fn file_entry(src: &Path, rel: &str) -> PlanEntry {
    PlanEntry::File {
        src: src.into(),
        rel: rel.into(),
        size: std::fs::metadata(src).map(|m| m.len()).unwrap_or(0),
        stamp: None,
    }
}

async fn push(c: &Ctl, ctx: u32, p: &PushPlan) -> Vec<EntryResult> {
    c.router
        .call_service(ctx, TARGET_SERVICE, "push", p)
        .await
        .expect("push call answered")
}

/// Starts a push in the background; the handle yields the call's result.
fn spawn_push(
    c: &Ctl,
    ctx: u32,
    p: PushPlan,
) -> tokio::task::JoinHandle<Result<Vec<EntryResult>, ferrogen::call::CallError>> {
    let router = c.router.clone();
    tokio::spawn(async move { router.call_service(ctx, TARGET_SERVICE, "push", &p).await })
}

fn only_error(r: &[EntryResult]) -> String {
    assert_eq!(r.len(), 1, "one result expected: {r:?}");
    r[0].error
        .clone()
        .unwrap_or_else(|| panic!("expected an error, got {r:?}"))
}

fn write_random(p: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(p, &data).expect("write source");
    data
}

fn sparse(p: &Path, len: u64) {
    let f = std::fs::File::create(p).expect("create");
    f.set_len(len).expect("set_len");
}

fn entries_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn wait_progress(c: &Ctl, ctx: u32) {
    let t0 = Instant::now();
    while c.fs.progress(ctx) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "transfer never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kill(pid: u32, sig: i32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_path_is_refused() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let dst = tempfile::tempdir().expect("tempdir");
    let r = push(
        &c,
        a.id,
        &plan(
            vec![file_entry(Path::new("/etc/shadow"), "shadow")],
            dst.path(),
            true,
        ),
    )
    .await;
    let e = only_error(&r);
    assert!(e.contains("not registered"), "{e}");
    assert!(e.contains("/etc/shadow"), "the error names the path: {e}");
    assert!(entries_in(dst.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_round_trips_content_and_metadata() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("conf");
    let data = write_random(&src, 300_000);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 987_654_321,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 123_456_789,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &src, &ts, rustix::fs::AtFlags::empty())
        .expect("utimensat");
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&src, "conf")], dst.path(), true),
    )
    .await;
    assert_eq!(r.len(), 1);
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(r[0].bytes, data.len() as u64);
    assert_eq!(
        r[0].digest.as_deref(),
        Some(blake3::hash(&data).to_hex().as_str())
    );
    let out = dst.path().join("conf");
    // Stat before reading: reading would update the atime (relatime).
    let md = std::fs::metadata(&out).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 123_456_789));
    assert_eq!((md.atime(), md.atime_nsec()), (1_600_000_000, 987_654_321));
    assert_eq!(std::fs::read(&out).expect("read"), data);
    assert_eq!(
        entries_in(dst.path()),
        vec!["conf".to_string()],
        "no temp files left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_authorise_beneath_but_not_escapes() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let root = tempfile::tempdir().expect("tempdir");
    let served = root.path().join("served");
    std::fs::create_dir_all(served.join("sub")).expect("mkdir");
    write_random(&served.join("sub/ok"), 1000);
    write_random(&root.path().join("secret"), 1000);
    std::os::unix::fs::symlink(root.path().join("secret"), served.join("escape")).expect("symlink");
    c.fs.register_prefix(served.to_str().expect("utf8"))
        .expect("register_prefix");
    let dst = tempfile::tempdir().expect("tempdir");

    let ok = push(
        &c,
        a.id,
        &plan(
            vec![file_entry(&served.join("sub/ok"), "ok")],
            dst.path(),
            true,
        ),
    )
    .await;
    assert!(ok[0].error.is_none(), "{ok:?}");

    let dotdot = served.join("sub/../../secret");
    let e = only_error(
        &push(
            &c,
            a.id,
            &plan(vec![file_entry(&dotdot, "s1")], dst.path(), true),
        )
        .await,
    );
    assert!(e.contains("not registered"), "`..` escape: {e}");

    let e = only_error(
        &push(
            &c,
            a.id,
            &plan(
                vec![file_entry(&served.join("escape"), "s2")],
                dst.path(),
                true,
            ),
        )
        .await,
    );
    assert!(
        e.contains("outside the registered prefix"),
        "symlink escape: {e}"
    );

    let e = only_error(
        &push(
            &c,
            a.id,
            &plan(
                vec![file_entry(&served.join("sub"), "s3")],
                dst.path(),
                true,
            ),
        )
        .await,
    );
    assert!(e.contains("not a regular file"), "{e}");
    assert_eq!(entries_in(dst.path()), vec!["ok".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_prefix_authorises_etc_passwd() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    c.fs.register_prefix("/").expect("register_prefix");
    let dst = tempfile::tempdir().expect("tempdir");
    let r = push(
        &c,
        a.id,
        &plan(
            vec![file_entry(Path::new("/etc/passwd"), "passwd")],
            dst.path(),
            true,
        ),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(
        std::fs::read(dst.path().join("passwd")).expect("read"),
        std::fs::read("/etc/passwd").expect("read")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_a_sender_of_another_context_is_refused() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    c.fs.register("/etc/passwd").expect("register");
    let args = ferrogen::files::FetchArgs {
        path: "/etc/passwd".into(),
        sender: ferrogen::channel::Sender {
            context: 77,
            handle: 1000,
        },
        delta: None,
        resume: None,
        sparse: false,
    };
    let r: Result<ferrogen::files::FetchReply, _> = c
        .router
        .call_service(0, ferrogen::files::FILE_SERVICE, "fetch", &args)
        .await;
    let e = r.expect_err("must be refused").to_string();
    assert!(e.contains("does not match the requesting context"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_on_one_stream_take_turns_within_the_window() {
    let window = 256 * 1024;
    let c = ctl(window, Duration::from_secs(30));
    let a = child(&c, None).await;
    let b = child(&c, Some(a.id)).await;
    let d = child(&c, Some(a.id)).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("blob");
    let data = write_random(&src, 6 << 20);
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let dsts: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut calls = Vec::new();
    for (ctx, dst) in [a.id, b.id, d.id].into_iter().zip(&dsts) {
        let p = plan(vec![file_entry(&src, "blob")], dst.path(), true);
        calls.push(spawn_push(&c, ctx, p));
    }
    let mut spans = Vec::new();
    for call in calls {
        let r = call.await.expect("join").expect("push");
        assert!(r[0].error.is_none(), "{r:?}");
        spans.push(r[0].data_span_ns);
    }
    for dst in &dsts {
        assert_eq!(std::fs::read(dst.path().join("blob")).expect("read"), data);
    }
    // Turns: a transfer hands the stream on once its end is sent (issue 17's
    // hand-over), so the next one's first bytes may arrive while the last
    // window of the previous one is still in flight — at most one window
    // (256 KiB) of a 6 MiB file, a few percent of its span. Interleaved
    // transfers would overlap for most of it.
    spans.sort();
    for w in spans.windows(2) {
        let (prev, next) = (w[0], w[1]);
        let overlap = prev.1.saturating_sub(next.0);
        assert!(
            overlap <= prev.1.saturating_sub(prev.0) / 4,
            "transfers interleaved on the shared stream: {prev:?} then {next:?}"
        );
    }
    let stats = c.fs.stats();
    assert!(
        stats.peak_in_flight > 0 && stats.peak_in_flight <= window,
        "peak {} window {window}",
        stats.peak_in_flight
    );
    assert_eq!(stats.completed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_not_held_behind_a_1gib_transfer() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let big = src_dir.path().join("big");
    sparse(&big, 1 << 30);
    let small = src_dir.path().join("small");
    write_random(&small, 1000);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    c.fs.register(small.to_str().expect("utf8"))
        .expect("register");
    let dst_big = tempfile::tempdir().expect("tempdir");
    let dst_small = tempfile::tempdir().expect("tempdir");
    let p_big = plan(vec![file_entry(&big, "big")], dst_big.path(), true);
    let big_call = spawn_push(&c, a.id, p_big);
    wait_progress(&c, a.id).await;
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&small, "small")], dst_small.path(), true),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
    assert!(
        !big_call.is_finished(),
        "the small file should finish while the 1 GiB file is still moving"
    );
    let rb = big_call.await.expect("join").expect("push");
    assert!(rb[0].error.is_none(), "{rb:?}");
    assert_eq!(
        std::fs::metadata(dst_big.path().join("big"))
            .expect("stat")
            .len(),
        1 << 30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_transfer_leaves_nothing_and_frees_the_stream() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let b = child(&c, Some(a.id)).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let big = src_dir.path().join("big");
    sparse(&big, 1 << 30);
    let mid = src_dir.path().join("mid");
    let data = write_random(&mid, 3 << 20);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    c.fs.register(mid.to_str().expect("utf8"))
        .expect("register");
    let dst_b = tempfile::tempdir().expect("tempdir");
    let dst_a = tempfile::tempdir().expect("tempdir");
    let p = plan(vec![file_entry(&big, "big")], dst_b.path(), true);
    let call_b = spawn_push(&c, b.id, p);
    wait_progress(&c, b.id).await;
    kill(b.pid, 9);
    let rb = tokio::time::timeout(Duration::from_secs(10), call_b)
        .await
        .expect("the call to the killed receiver fails promptly")
        .expect("join");
    let e = rb.expect_err("killed receiver cannot answer").to_string();
    assert!(e.contains("disconnected"), "{e}");
    // The same stream (controller -> a) now serves a multi-chunk file.
    let t0 = Instant::now();
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&mid, "mid")], dst_a.path(), true),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(std::fs::read(dst_a.path().join("mid")).expect("read"), data);
    assert!(
        entries_in(dst_b.path()).is_empty(),
        "no temp file left: {:?}",
        entries_in(dst_b.path())
    );
    assert!(c.fs.stats().aborted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_acknowledging_is_cancelled_and_discards() {
    let c = ctl(1 << 20, Duration::from_millis(700));
    let a = child(&c, None).await;
    let b = child(&c, Some(a.id)).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let big = src_dir.path().join("big");
    sparse(&big, 256 << 20);
    let mid = src_dir.path().join("mid");
    write_random(&mid, 2 << 20);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    c.fs.register(mid.to_str().expect("utf8"))
        .expect("register");
    let dst_b = tempfile::tempdir().expect("tempdir");
    let dst_a = tempfile::tempdir().expect("tempdir");
    let p = plan(vec![file_entry(&big, "big")], dst_b.path(), true);
    let call_b = spawn_push(&c, b.id, p);
    wait_progress(&c, b.id).await;
    kill(b.pid, 19); // SIGSTOP: alive, connected, silent.
    let t0 = Instant::now();
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&mid, "mid")], dst_a.path(), true),
    )
    .await;
    kill(b.pid, 18); // SIGCONT
    assert!(r[0].error.is_none(), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    let rb = call_b
        .await
        .expect("join")
        .expect("b answers after SIGCONT");
    let e = rb[0].error.clone().expect("b's transfer was cancelled");
    assert!(e.contains("stopped acknowledging"), "{e}");
    assert!(entries_in(dst_b.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_modified_during_transfer_is_detected() {
    let c = ctl(256 * 1024, Duration::from_secs(30));
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let big = src_dir.path().join("big");
    sparse(&big, 512 << 20);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let old = dst.path().join("big");
    std::fs::write(&old, b"old content").expect("write");
    let p = plan(vec![file_entry(&big, "big")], dst.path(), true);
    let call = spawn_push(&c, a.id, p);
    wait_progress(&c, a.id).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&big)
            .expect("open");
        f.write_all(b"appended while sending").expect("append");
    }
    let r = call.await.expect("join").expect("push");
    let e = only_error(&r);
    assert!(e.contains("modified during transfer"), "{e}");
    assert_eq!(
        std::fs::read(&old).expect("read"),
        b"old content",
        "old destination untouched"
    );
    assert_eq!(entries_in(dst.path()), vec!["big".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_pending_transfers_and_receivers_discard() {
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let big = src_dir.path().join("big");
    sparse(&big, 1 << 30);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let p = plan(vec![file_entry(&big, "big")], dst.path(), true);
    let call = spawn_push(&c, a.id, p);
    wait_progress(&c, a.id).await;
    c.services.shutdown().await;
    let r = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered")
        .expect("join")
        .expect("push");
    let e = only_error(&r);
    assert!(e.contains("shutting down"), "{e}");
    assert!(entries_in(dst.path()).is_empty());
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_reports_enospc_and_cleans_up() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let mnt = tempfile::tempdir().expect("tempdir");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .expect("mount runs");
    assert!(st.success(), "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Umount(mnt.path().to_path_buf());
    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("eight");
    write_random(&src, 8 << 20);
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&src, "eight")], mnt.path(), true),
    )
    .await;
    let e = only_error(&r);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(
        e.contains(mnt.path().to_str().expect("utf8")),
        "names the path: {e}"
    );
    assert!(
        entries_in(mnt.path()).is_empty(),
        "{:?}",
        entries_in(mnt.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_group_are_applied_when_asked() {
    if !is_root() {
        eprintln!("skipped: chown needs root");
        return;
    }
    let c = ctl(1 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("owned");
    write_random(&src, 5000);
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("nss")
        .expect("nobody exists");
    std::os::unix::fs::chown(&src, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw()))
        .expect("chown");
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut p = plan(vec![file_entry(&src, "owned")], dst.path(), true);
    p.options.preserve_owner = true;
    let r = push(&c, a.id, &p).await;
    assert!(r[0].error.is_none(), "{r:?}");
    let md = std::fs::metadata(dst.path().join("owned")).expect("stat");
    assert_eq!(
        (md.uid(), md.gid()),
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    );
    // Without the option the receiver's own identity is used.
    let dst2 = tempfile::tempdir().expect("tempdir");
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&src, "owned")], dst2.path(), true),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(
        std::fs::metadata(dst2.path().join("owned"))
            .expect("stat")
            .uid(),
        0
    );
}

fn attach_relays() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid: u32 = stat
            .rsplit_once(')')
            .and_then(|(_, a)| a.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        if ppid == me && cmd.split(|b| *b == 0).any(|a| a == b"__attach") {
            out.push(pid);
        }
    }
    out
}

fn read_bytes_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("rchar: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_striped_over_extra_streams_arrives_in_order_and_verified() {
    let c = ctl(4 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let n = ferrogen::connect::stripe::open(
        &c.router,
        a.id,
        &Method::Local,
        3,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(n, 3, "three extra streams attached");
    let primary = c.router.stream_towards(a.id).expect("route");
    assert_eq!(c.router.stripes(primary).len(), 4);
    let relays = attach_relays();
    assert_eq!(relays.len(), 3, "one relay process per stripe");
    let stripes = c.router.stripes(primary);
    let carried = || stripes[1..].iter().map(|o| o.bytes_sent()).sum::<u64>();
    let before = carried();
    let relays_before: u64 = relays.iter().map(|&p| read_bytes_of(p)).sum();

    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("striped");
    let data = write_random(&src, 48 << 20);
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&src, "striped")], dst.path(), true),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(
        r[0].digest.as_deref(),
        Some(blake3::hash(&data).to_hex().as_str())
    );
    assert_eq!(
        std::fs::read(dst.path().join("striped")).expect("read"),
        data
    );
    let after = carried();
    assert!(
        after - before >= 48 << 20,
        "the stripes carried all of the 48 MiB (the primary stays free for calls): {} bytes",
        after - before
    );
    // None of it through the relays: each handed its pipes to the context.
    let relays_after: u64 = relays.iter().map(|&p| read_bytes_of(p)).sum();
    assert!(
        relays_after - relays_before < 64 << 10,
        "the relays copied {} bytes",
        relays_after - relays_before
    );
    assert!(c.fs.stats().peak_in_flight <= 4 << 20);

    // Losing a stripe mid-transfer (its transport killed) ends that
    // transfer promptly and clearly; the context and its primary stream
    // carry on.
    let big = src_dir.path().join("big");
    sparse(&big, 1 << 30);
    c.fs.register(big.to_str().expect("utf8"))
        .expect("register");
    let dst2 = tempfile::tempdir().expect("tempdir");
    let p = plan(vec![file_entry(&big, "big")], dst2.path(), true);
    let call = spawn_push(&c, a.id, p);
    let t0 = Instant::now();
    while c.fs.progress(a.id) < (48 << 20) + (8 << 20) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "big transfer never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(relays[0], 9);
    let r = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered")
        .expect("join")
        .expect("push");
    let e = only_error(&r);
    assert!(e.contains("stripe"), "{e}");
    assert!(entries_in(dst2.path()).is_empty());
    let r = push(
        &c,
        a.id,
        &plan(vec![file_entry(&src, "again")], dst2.path(), true),
    )
    .await;
    assert!(r[0].error.is_none(), "{r:?}");
}

/// Large transfers queued or running are capped in all (each holds an open
/// descriptor in the controller): past `max_open`, `fetch` is refused with
/// an error naming the limit, and the transfers admitted complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_past_the_total_cap_are_refused_naming_the_limit() {
    let c = ctl_with(ferrogen::files::FileServiceConfig {
        sizing: ferrogen::files::window::Sizing::Fixed(256 * 1024),
        ack_timeout: Duration::from_secs(30),
        max_open: 2,
        ..Default::default()
    });
    let a = child(&c, None).await;
    let src_dir = tempfile::tempdir().expect("tempdir");
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for i in 0..5 {
        let src = src_dir.path().join(format!("blob{i}"));
        data.push(write_random(&src, 8 << 20));
        c.fs.register(src.to_str().expect("utf8"))
            .expect("register");
        entries.push(file_entry(&src, &format!("blob{i}")));
    }
    let dst = tempfile::tempdir().expect("tempdir");
    let r = push(&c, a.id, &plan(entries, dst.path(), true)).await;
    let refused: Vec<&String> = r.iter().filter_map(|e| e.error.as_ref()).collect();
    assert!(!refused.is_empty(), "nothing refused: {r:?}");
    for why in &refused {
        assert!(why.contains("(limit 2 in all)"), "{why}");
    }
    for (i, want) in data.iter().enumerate() {
        let name = format!("blob{i}");
        let result = r
            .iter()
            .find(|e| e.path.ends_with(&name))
            .unwrap_or_else(|| panic!("no result for {name}: {r:?}"));
        let got = std::fs::read(dst.path().join(&name));
        let failed = result.error.is_some();
        assert_eq!(got.is_err(), failed, "{name}: {result:?}");
        if let Ok(got) = got {
            assert!(got == *want, "blob{i} differs");
        }
    }
    assert!(c.fs.stats().refused as usize >= refused.len());
}
