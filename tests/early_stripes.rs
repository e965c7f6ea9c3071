//! Stripe transports started before their context is up (issue 14): they
//! wait for the context's `PID SOCKET` line, attach once it has answered
//! `listen`, carry a transfer, and the ones not asked for are ended. Local
//! transports (`/bin/sh` running the same script the ssh ones run on the
//! far end), so no sshd is needed.

mod filectl;

use std::path::Path;
use std::time::{Duration, Instant};

use ferrogen::connect::Method;
use ferrogen::connect::stripe::Early;
use ferrogen::files::TARGET_SERVICE;
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use filectl::{child, ctl};

fn plan(src: &Path, dest: &Path) -> PushPlan {
    PushPlan {
        server: 0,
        dest: dest.into(),
        into_dir: true,
        entries: vec![PlanEntry::File {
            src: src.into(),
            rel: "striped".into(),
            size: std::fs::metadata(src).map(|m| m.len()).unwrap_or(0),
            stamp: None,
        }],
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

/// This test process's children running `__attach` (the relays), with
/// the bytes each has read so far.
fn relays() -> Vec<(u32, u64)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmd), Ok(stat)) = (
            std::fs::read(format!("/proc/{pid}/cmdline")),
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue;
        };
        let ppid: u32 = stat
            .rsplit_once(')')
            .and_then(|(_, a)| a.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        if ppid == me && cmd.split(|b| *b == 0).any(|a| a == b"__attach") {
            let read = std::fs::read_to_string(format!("/proc/{pid}/io"))
                .ok()
                .and_then(|io| {
                    io.lines().find_map(|l| {
                        l.strip_prefix("rchar: ")
                            .and_then(|v| v.trim().parse().ok())
                    })
                })
                .unwrap_or(0);
            out.push((pid, read));
        }
    }
    out
}

/// Children of this process still running `/bin/sh` (early transports
/// waiting for their line).
fn waiting_shells() -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            let pid = e.file_name().to_string_lossy().to_string();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let ppid: u32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let state = rest.split_whitespace().next().unwrap_or("");
            ppid == me && head.ends_with("(sh") && state != "Z"
        })
        .count()
}

/// The tests here count this process's child processes (`relays`,
/// `waiting_shells`): they run one at a time, or each would count the
/// others' transports.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripes_started_before_the_context_carry_its_transfer_and_extras_end() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Started first: nothing to attach to yet; they wait for their line.
    let early = Early::start(&Method::Local, "early", 4);
    assert_eq!(early.len(), 4);
    let c = ctl(4 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let n = early
        .attach(&c.router, a.id, 3, Duration::from_secs(10))
        .await;
    assert_eq!(n, 3, "three of the four attached");
    let primary = c.router.stream_towards(a.id).expect("route");
    assert_eq!(c.router.stripes(primary).len(), 4, "primary + 3 stripes");
    let before = relays();
    assert_eq!(before.len(), 3, "one relay per attached stripe: {before:?}");
    // The fourth was ended, not left waiting for a line.
    let t0 = Instant::now();
    while waiting_shells() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the unused transport still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("src");
    let mut data = vec![0u8; 40 << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&src, &data).expect("write source");
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    let dst = tempfile::tempdir().expect("tempdir");
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push", &plan(&src, dst.path()))
        .await
        .expect("push call answered");
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(
        std::fs::read(dst.path().join("striped")).expect("read"),
        data,
        "arrived whole and in order"
    );
    let carried: u64 = c.router.stripes(primary)[1..]
        .iter()
        .map(|o| o.bytes_sent())
        .sum();
    assert!(
        carried >= 40 << 20,
        "the early stripes carried the data: {carried} bytes"
    );
    // Each relay handed its pipes to the context when it attached: the
    // stripes' bytes went from this process's pipes straight to the
    // context, none through a relay.
    let after = relays();
    assert_eq!(after.len(), 3, "the relays last as long as their stripes");
    assert!(
        after.iter().all(|&(_, n)| n < 64 << 10),
        "a relay copied data: {after:?}"
    );
    assert_eq!(c.router.stripes(primary).len(), 4, "no stripe was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_transports_dropped_unused_end() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let early = Early::start(&Method::Local, "unused", 2);
    assert_eq!(early.len(), 2);
    drop(early);
    let t0 = Instant::now();
    while waiting_shells() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "dropped transports still run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stripe steps' use of early transports: one step attaches some, a
/// transfer runs while the next step attaches more (picked up
/// mid-transfer or not, it lands whole), the ones never asked for stay
/// ready until dropped, and the FileService counts what it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_transports_attach_in_steps_while_a_transfer_runs() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let early = Early::start(&Method::Local, "steps", 4);
    let c = ctl(4 << 20, Duration::from_secs(30));
    let a = child(&c, None).await;
    let mut prepared = early
        .prepare(&c.router, a.id, Duration::from_secs(10))
        .await
        .expect("the context offered its stripe socket");
    assert_eq!(prepared.len(), 4);
    let first = prepared.attach_next(&c.router, 1, Duration::from_secs(10));
    assert_eq!(prepared.len(), 3, "one taken, three kept");
    assert_eq!(first.await, 1);
    let primary = c.router.stream_towards(a.id).expect("route");
    assert_eq!(c.router.stripes(primary).len(), 2, "primary + 1 stripe");

    let src_dir = tempfile::tempdir().expect("tempdir");
    let src = src_dir.path().join("src");
    let data: Vec<u8> = (0..(24u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write source");
    c.fs.register(src.to_str().expect("utf8"))
        .expect("register");
    assert_eq!(c.fs.delivered(a.id).wire_bytes, 0, "nothing delivered yet");
    let dst = tempfile::tempdir().expect("tempdir");
    let (router, id, p) = (c.router.clone(), a.id, plan(&src, dst.path()));
    let push = tokio::spawn(async move {
        let r: Result<Vec<EntryResult>, _> =
            router.call_service(id, TARGET_SERVICE, "push", &p).await;
        r
    });
    let second = prepared.attach_next(&c.router, 2, Duration::from_secs(10));
    assert_eq!(second.await, 2, "the next step attached");
    assert_eq!(c.router.stripes(primary).len(), 4, "primary + 3 stripes");
    let r = push.await.expect("joined").expect("push call answered");
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(
        std::fs::read(dst.path().join("striped")).expect("read"),
        data,
        "arrived whole and in order"
    );
    let wire = c.fs.delivered(a.id).wire_bytes;
    assert!(
        wire >= 24 << 20,
        "the FileService counted the bytes delivered: {wire}"
    );
    assert_eq!(prepared.len(), 1, "the fourth is still ready");
    drop(prepared);
    let t0 = Instant::now();
    while waiting_shells() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the transport never asked for still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
