//! The library's front door against a real local child (this package's
//! `ferrogen` binary, which serves pushes): `Controller::push_each` walks
//! lazily, sends the plan in batches and reports every entry as its batch
//! lands.

use std::path::Path;

use ferrogen::files::plan::{EntryKind, EntryResult, Status};
use ferrogen::{Context, Controller, Target, TransferOptions};

/// More files than one plan batch holds (`files::walk::BATCH_ENTRIES`).
const FILES: usize = 5_000;
const DIRS: usize = 10;

fn make_tree(src: &Path) {
    for d in 0..DIRS {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES / DIRS {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}\n")).expect("write");
        }
    }
}

fn files_with(results: &[EntryResult], status: Status) -> usize {
    results
        .iter()
        .filter(|r| r.kind == EntryKind::File && r.status == status && r.error.is_none())
        .count()
}

/// A controller, a local child running this package's `ferrogen` binary,
/// and options for a recursive push without fsync (durability is not what
/// these test, and syncfs on a shared disk flushes everyone's writes).
async fn local_child() -> (Controller, Context, TransferOptions) {
    ferrogen::connect::local::set_child_program(env!("CARGO_BIN_EXE_ferrogen"));
    let c = Controller::start();
    let local: Target = "local".parse().expect("target");
    let ctx = c.connect(&local).await.expect("connect");
    let mut opts = TransferOptions::default();
    opts.walk.recursive = true;
    opts.receive.fsync = false;
    (c, ctx, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_each_reports_every_entry_of_a_tree_larger_than_a_batch() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    // DEST/ (a directory to push into): both pushes land in DEST/src, as
    // `cp -a` and `ferrogen push` place a directory.
    let dst = format!("{}/dst/", t.path().display());
    make_tree(&src);
    let (c, ctx, opts) = local_child().await;

    let mut seen = Vec::new();
    c.push_each(&ctx, &[&src], &dst, &opts, |r| seen.push(r))
        .await
        .expect("push");
    assert_eq!(
        files_with(&seen, Status::Created),
        FILES,
        "{:?}",
        seen.first()
    );
    assert!(seen.iter().all(|r| r.error.is_none()));
    for d in 0..DIRS {
        for f in (0..FILES / DIRS).step_by(97) {
            let got = std::fs::read(format!("{dst}src/d{d}/f{f}")).expect("landed");
            assert_eq!(got, format!("{d}/{f}\n").into_bytes());
        }
    }

    // Again, through `push` (which collects `push_each`): nothing to send.
    let again = c
        .push(&ctx, &[&src], &dst, &opts)
        .await
        .expect("push again");
    assert_eq!(files_with(&again, Status::Unchanged), FILES);
    assert_eq!(files_with(&again, Status::Created), 0);
    ctx.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_each_reports_a_refused_destination_once_and_sends_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    make_tree(&src);
    // DEST beneath a regular file: it cannot be made.
    std::fs::write(t.path().join("file"), b"x").expect("write");
    let dst = t.path().join("file/dst");
    let (c, ctx, opts) = local_child().await;
    let mut seen = Vec::new();
    c.push_each(&ctx, &[&src], &dst, &opts, |r| seen.push(r))
        .await
        .expect("the push is answered");
    assert!(
        !seen.is_empty() && seen.iter().all(|r| r.status == Status::Failed),
        "{seen:?}"
    );
    assert!(
        seen.len() < 10,
        "one failure for DEST, not one per entry: {}",
        seen.len()
    );
    let why = seen[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("file/dst"), "names DEST: {why}");
    ctx.shutdown();
}

/// A tree of one batch goes as one `push` call: every entry lands and is
/// reported, and a refused destination is reported just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_each_of_a_one_batch_tree_lands_and_reports_every_entry() {
    let t = tempfile::tempdir().expect("tempdir");
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
    std::fs::write(src.join("a/b/one"), b"1\n").expect("write");
    std::fs::write(src.join("two"), b"2\n").expect("write");
    let dst = format!("{}/dst/", t.path().display());
    let (c, ctx, opts) = local_child().await;
    let mut seen = Vec::new();
    c.push_each(&ctx, &[&src], &dst, &opts, |r| seen.push(r))
        .await
        .expect("push");
    assert_eq!(files_with(&seen, Status::Created), 2, "{seen:?}");
    assert!(seen.iter().all(|r| r.error.is_none()), "{seen:?}");
    assert_eq!(
        std::fs::read(format!("{dst}src/a/b/one")).expect("landed"),
        b"1\n"
    );
    assert_eq!(
        std::fs::read(format!("{dst}src/two")).expect("landed"),
        b"2\n"
    );

    std::fs::write(t.path().join("file"), b"x").expect("write");
    let refused = t.path().join("file/dst");
    let mut seen = Vec::new();
    c.push_each(&ctx, &[&src], &refused, &opts, |r| seen.push(r))
        .await
        .expect("the push is answered");
    assert!(
        !seen.is_empty() && seen.iter().all(|r| r.status == Status::Failed),
        "{seen:?}"
    );
    ctx.shutdown();
}
