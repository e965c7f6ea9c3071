//! `--bwlimit`: local pushes of 64 MiB under a limit, the rate measured
//! from outside the pacer (the receiver's acknowledged bytes, sampled by
//! the controller; the CLI's wall clock). Bounds are generous: this is a
//! behaviour check on a shared, noisy machine, not a speed goal; the ±5 %
//! over 2 s windows is proven in simulated time in `src/files/pace.rs`.

mod filectl;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrogen::files::pace::Limits;
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use ferrogen::files::{FileServiceConfig, TARGET_SERVICE};
use filectl::{Ctl, child, ctl_with};

const LIMIT: u64 = 16 << 20;
const SIZE: u64 = 64 << 20;

fn plan(src: &Path, dest: &Path) -> PushPlan {
    PushPlan {
        server: 0,
        dest: dest.to_str().expect("utf8").into(),
        into_dir: true,
        entries: vec![PlanEntry::File {
            src: src.to_str().expect("utf8").into(),
            rel: "blob".into(),
            size: std::fs::metadata(src).map(|m| m.len()).unwrap_or(0),
            stamp: None,
        }],
        options: ReceiveOptions {
            fsync: false,
            preserve_owner: false,
            ..Default::default()
        },
        parallel: 8,
        dry_run: false,
        compare: Default::default(),
        sizes_bound: false,
        filter: Default::default(),
        delete: Default::default(),
        root: None,
    }
}

fn blob(dir: &Path, len: u64) -> std::path::PathBuf {
    let p = dir.join("blob");
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(len).expect("set_len");
    p
}

/// Samples `sum of progress(targets)` every 20 ms until it reaches `total`;
/// returns (seconds since the first byte, bytes).
async fn sample(c: &Ctl, targets: &[u32], total: u64) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: u64 = targets.iter().map(|t| c.fs.progress(*t)).sum();
        if got > 0 {
            let t0 = *first.get_or_insert_with(Instant::now);
            out.push((t0.elapsed().as_secs_f64(), got));
        }
        if got >= total || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rates (as fractions of `limit`) over every 2 s window starting after
/// the first second, in steps of 0.25 s.
fn windows(s: &[(f64, u64)], limit: u64) -> Vec<f64> {
    let at = |t: f64| {
        s.iter()
            .take_while(|(ts, _)| *ts <= t)
            .last()
            .map_or(0, |x| x.1)
    };
    let end = s.last().map_or(0.0, |x| x.0);
    let mut out = Vec::new();
    let mut start = 1.0;
    while start + 2.0 <= end {
        out.push((at(start + 2.0) - at(start)) as f64 / 2.0 / limit as f64);
        start += 0.25;
    }
    out
}

fn check(s: &[(f64, u64)], limit: u64, total: u64) {
    let end = s.last().map_or(0.0, |x| x.0);
    assert_eq!(s.last().map(|x| x.1), Some(total), "all acknowledged");
    let overall = total as f64 / end / limit as f64;
    let w = windows(s, limit);
    eprintln!("overall {overall:.3} of the limit; 2 s windows {w:.3?}");
    assert!((0.85..=1.06).contains(&overall), "overall {overall:.3}");
    assert!(!w.is_empty());
    for r in &w {
        assert!((0.8..=1.1).contains(r), "a 2 s window at {r:.3}: {w:.3?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_target_limit_holds_over_a_64_mib_push() {
    let c = ctl_with(FileServiceConfig {
        bwlimit: Limits {
            per_target: Some(LIMIT),
            total: None,
        },
        ..Default::default()
    });
    let a = child(&c, None).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let p = blob(src.path(), SIZE);
    c.fs.register(p.to_str().expect("utf8")).expect("register");
    let router = c.router.clone();
    let pl = plan(&p, dst.path());
    let call = tokio::spawn(async move {
        router
            .call_service::<_, Vec<EntryResult>>(a.id, TARGET_SERVICE, "push", &pl)
            .await
    });
    let s = sample(&c, &[a.id], SIZE).await;
    let r = call.await.expect("join").expect("push");
    assert!(r[0].error.is_none(), "{r:?}");
    check(&s, LIMIT, SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_limit_is_shared_by_the_targets() {
    let c = ctl_with(FileServiceConfig {
        bwlimit: Limits {
            per_target: Some(LIMIT),
            total: Some(LIMIT),
        },
        ..Default::default()
    });
    let a = child(&c, None).await;
    let b = child(&c, None).await;
    let src = tempfile::tempdir().expect("tempdir");
    let p = blob(src.path(), SIZE / 2);
    c.fs.register(p.to_str().expect("utf8")).expect("register");
    let dsts = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let mut calls = Vec::new();
    for (t, d) in [a.id, b.id].into_iter().zip(&dsts) {
        let router = c.router.clone();
        let pl = plan(&p, d.path());
        calls.push(tokio::spawn(async move {
            router
                .call_service::<_, Vec<EntryResult>>(t, TARGET_SERVICE, "push", &pl)
                .await
        }));
    }
    let s = sample(&c, &[a.id, b.id], SIZE).await;
    for call in calls {
        let r = call.await.expect("join").expect("push");
        assert!(r[0].error.is_none(), "{r:?}");
    }
    // Both at the per-target limit would be twice the total.
    check(&s, LIMIT, SIZE);
}

#[test]
fn the_cli_holds_its_bwlimit_measured_by_the_wall_clock() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let p = blob(src.path(), SIZE);
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["push", "--no-fsync", "--bwlimit", "16M"])
        .arg(&p)
        .arg(dst.path())
        .output()
        .expect("ferrogen runs");
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::metadata(dst.path().join("blob"))
            .map(|m| m.len())
            .ok(),
        Some(SIZE)
    );
    // Start-up and connection add to the wall clock, never take from it:
    // faster than the limit is impossible, a little slower is noise.
    let rate = SIZE as f64 / secs / LIMIT as f64;
    eprintln!("{secs:.2} s: {rate:.3} of the limit");
    assert!((0.75..=1.02).contains(&rate), "{rate:.3} of the limit");
}
