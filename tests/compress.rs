//! `-z`: files arrive identical whatever their content, chunks that do not
//! shrink go raw, and a corrupt compressed chunk from a hostile server is
//! a clear error with nothing landing. Real child processes, real files.

mod filectl;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ferrogen::call::RemoteError;
use ferrogen::connect::{self, ConnectSpec, Method};
use ferrogen::files::compress::{COMPRESSED, Compression, LINKED};
use ferrogen::files::plan::{EntryResult, PlanEntry, PushPlan};
use ferrogen::files::receive::ReceiveOptions;
use ferrogen::files::window::Sizing;
use ferrogen::files::{
    CHUNK_DATA, FILE_SERVICE, FetchArgs, FetchReply, FetchSmallArgs, FileMeta, FileServiceConfig,
    SmallFile, TARGET_SERVICE, TransferMsg,
};
use ferrogen::router::{Policy, Router, RouterConfig};
use ferrogen::service::{FollowUp, ServiceBuilder, Services};
use ferrogen::wire::{Enc, Frame};
use filectl::{child, ctl_with};

fn plan(entries: Vec<PlanEntry>, dest: &Path) -> PushPlan {
    PushPlan {
        server: 0,
        dest: dest.to_str().expect("utf8").into(),
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

fn file_entry(src: &Path, rel: &str) -> PlanEntry {
    PlanEntry::File {
        src: src.to_str().expect("utf8").into(),
        rel: rel.into(),
        size: std::fs::metadata(src).map(|m| m.len()).unwrap_or(0),
        stamp: None,
    }
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

/// Log-like text: compresses several times over.
fn text(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 100);
    let mut i = seed;
    while v.len() < n {
        v.extend_from_slice(
            format!(
                "2026-11-30T14:{:02}:{:02}Z web{} GET /api/v1/items/{} 200 {}ms\n",
                i % 60,
                (i * 7) % 60,
                i % 5,
                i * 31 % 9973,
                i % 250
            )
            .as_bytes(),
        );
        i += 1;
    }
    v.truncate(n);
    v
}

fn config(compress: Compression) -> FileServiceConfig {
    FileServiceConfig {
        sizing: Sizing::Fixed(4 << 20),
        ack_timeout: Duration::from_secs(30),
        compress,
        ..Default::default()
    }
}

fn check_results(r: &[EntryResult], dst: &Path, files: &[(&str, Vec<u8>)]) {
    assert!(r.iter().all(|e| e.error.is_none()), "{r:?}");
    for (name, data) in files {
        let got = std::fs::read(dst.join(name)).expect("read");
        assert!(got == *data, "{name} differs");
        let digest = ferrogen::files::hex(blake3::hash(data).as_bytes());
        let entry = r
            .iter()
            .find(|e| e.path.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not reported: {r:?}"));
        assert_eq!(entry.digest.as_deref(), Some(digest.as_str()), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_incompressible_and_mixed_files_arrive_identical() {
    let c = ctl_with(config(Compression::Level(3)));
    let a = child(&c, None).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut mixed = random(3 * CHUNK_DATA + 1000, 7);
    mixed.extend(text(4 * CHUNK_DATA, 1));
    mixed.extend(random(CHUNK_DATA / 2, 8));
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("text.log", text(5 << 20, 0)),
        ("random.bin", random(3 << 20, 1)),
        ("mixed.bin", mixed),
        // Small files: fetched many to a call, compressed one by one.
        ("a.txt", text(9000, 3)),
        ("b.txt", text(CHUNK_DATA, 4)),
        ("c.bin", random(5000, 5)),
        ("empty", Vec::new()),
    ];
    let mut entries = Vec::new();
    for (name, data) in &files {
        let p = src.path().join(name);
        std::fs::write(&p, data).expect("write");
        entries.push(file_entry(&p, name));
    }
    c.fs.register_prefix(src.path().to_str().expect("utf8"))
        .expect("register");
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push", &plan(entries, dst.path()))
        .await
        .expect("push answered");
    check_results(&r, dst.path(), &files);
    let s = c.fs.stats();
    assert!(s.compressed_chunks > 0, "{s:?}");
    // The random parts were tried and sent raw.
    assert!(s.raw_chunks > 0, "{s:?}");
    assert!(
        s.compressed_bytes_out * 3 < s.compressed_bytes_in,
        "text should compress over 3:1: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_shrink_is_sent_raw() {
    let c = ctl_with(config(Compression::Level(3)));
    let a = child(&c, None).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let data = random(2 * CHUNK_DATA, 11);
    let p = src.path().join("noise");
    std::fs::write(&p, &data).expect("write");
    c.fs.register(p.to_str().expect("utf8")).expect("register");
    let r: Vec<EntryResult> = c
        .router
        .call_service(
            a.id,
            TARGET_SERVICE,
            "push",
            &plan(vec![file_entry(&p, "noise")], dst.path()),
        )
        .await
        .expect("push answered");
    check_results(&r, dst.path(), &[("noise", data)]);
    let s = c.fs.stats();
    assert_eq!(s.raw_chunks, 2, "{s:?}");
    assert_eq!(s.compressed_chunks, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_compression_delivers_identical_files() {
    // Whatever level the tuner picks on this (fast, local) path, the files
    // are the same.
    let c = ctl_with(config(Compression::Adaptive));
    let a = child(&c, None).await;
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("big.log", text(24 << 20, 9)),
        ("noise", random(2 << 20, 3)),
    ];
    let mut entries = Vec::new();
    for (name, data) in &files {
        let p = src.path().join(name);
        std::fs::write(&p, data).expect("write");
        entries.push(file_entry(&p, name));
    }
    c.fs.register_prefix(src.path().to_str().expect("utf8"))
        .expect("register");
    let r: Vec<EntryResult> = c
        .router
        .call_service(a.id, TARGET_SERVICE, "push", &plan(entries, dst.path()))
        .await
        .expect("push answered");
    check_results(&r, dst.path(), &files);
}

/// What the hostile server sends for a large file after a good first chunk.
#[derive(Clone, Copy)]
enum Bad {
    /// Bytes that are not zstd, marked compressed.
    Garbage,
    /// A valid zstd frame of 64 MiB of zeros: past the chunk size.
    Bomb,
    /// A chunk marked linked (compressed against the chunk before it)
    /// whose frame declares a chunk's bytes but is damaged after its
    /// header.
    LinkedCorrupt,
    /// A valid linked chunk at offset 0, sent after the good chunk that
    /// follows it (as stripes may deliver): nothing comes before it to be
    /// its prefix.
    LinkedOrphan,
}

/// A controller whose `ferrogen.files` is hostile: `fetch` sends one good
/// raw chunk and then a bad compressed one; `fetch_small` answers each
/// file with bytes marked compressed that are not zstd.
fn hostile(bad: Bad) -> (Router, Services) {
    connect::local::set_child_program(env!("CARGO_BIN_EXE_ferrogen"));
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    let r = router.clone();
    services.register(
        ServiceBuilder::new(FILE_SERVICE)
            .method_then("fetch", Policy::Any, move |caller, args: FetchArgs| {
                let r = r.clone();
                async move {
                    let f = std::fs::File::open(&args.path)
                        .map_err(|e| RemoteError::Failed(e.to_string()))?;
                    let meta =
                        FileMeta::from_fd(&f).map_err(|e| RemoteError::Failed(e.to_string()))?;
                    let acks = r
                        .add_handler(None, Policy::Any, Some(caller.src_id), true)
                        .map_err(|e| RemoteError::Failed(e.to_string()))?;
                    let reply = FetchReply {
                        meta: meta.clone(),
                        ack: acks.to_sender(),
                    };
                    let to = args.sender;
                    let follow: FollowUp = Box::pin(async move {
                        let (good_at, evil_at) = match bad {
                            Bad::LinkedOrphan => (CHUNK_DATA as u64, 0),
                            _ => (0, CHUNK_DATA as u64),
                        };
                        let mut good = good_at.to_be_bytes().to_vec();
                        good.extend(vec![b'x'; CHUNK_DATA]);
                        let mut evil = (evil_at | COMPRESSED).to_be_bytes().to_vec();
                        let linked = (evil_at | COMPRESSED | LINKED).to_be_bytes().to_vec();
                        let frame = zstd::bulk::compress(&text(CHUNK_DATA, 9), 3);
                        let frame = frame.unwrap_or_default();
                        match bad {
                            Bad::Garbage => evil.extend(random(5000, 2)),
                            Bad::Bomb => evil.extend(
                                zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap_or_default(),
                            ),
                            Bad::LinkedCorrupt => {
                                evil = linked;
                                let mut f = frame;
                                let n = f.len();
                                for b in &mut f[12..n - 4] {
                                    *b ^= 0x5a;
                                }
                                evil.extend(f);
                            }
                            Bad::LinkedOrphan => {
                                evil = linked;
                                evil.extend(frame);
                            }
                        }
                        for payload in [good, evil] {
                            r.send(Frame::new(
                                to.context,
                                to.handle,
                                Enc::Bin,
                                Bytes::from(payload),
                            ));
                        }
                        to.send_control(
                            &r,
                            &TransferMsg::End {
                                size: meta.size,
                                digest: [0; 32],
                            },
                        );
                        // Keep the ack handle until the receiver gives up.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        drop(acks);
                    });
                    Ok((reply, Some(follow)))
                }
            })
            .method(
                "fetch_small",
                Policy::Any,
                move |_c, args: FetchSmallArgs| async move {
                    let mut out = Vec::new();
                    for p in &args.paths {
                        let f = std::fs::File::open(p)
                            .map_err(|e| RemoteError::Failed(e.to_string()))?;
                        let meta = FileMeta::from_fd(&f)
                            .map_err(|e| RemoteError::Failed(e.to_string()))?;
                        out.push(SmallFile::Compressed {
                            meta,
                            data: Bytes::from(random(300, 4)),
                            digest: [0; 32],
                            // Linked: to the file before it, or (the
                            // first) to nothing.
                            linked: matches!(bad, Bad::LinkedOrphan),
                        });
                    }
                    Ok::<_, RemoteError>(out)
                },
            )
            .build(),
    );
    (router, services)
}

async fn hostile_push(bad: Bad, sizes: &[usize]) -> (Vec<EntryResult>, Vec<String>) {
    let (router, _services) = hostile(bad);
    let a = connect::connect(&router, &ConnectSpec::new(Method::Local), None)
        .await
        .expect("local child starts");
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut entries = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let p = src.path().join(format!("f{i}"));
        std::fs::write(&p, text(*n, i as u64)).expect("write");
        entries.push(file_entry(&p, &format!("f{i}")));
    }
    let r: Vec<EntryResult> = tokio::time::timeout(
        Duration::from_secs(60),
        router.call_service(a.id, TARGET_SERVICE, "push", &plan(entries, dst.path())),
    )
    .await
    .expect("push ends")
    .expect("push answered");
    let left: Vec<String> = std::fs::read_dir(dst.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    router.close_all_streams("test over");
    (r, left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_compressed_chunk_is_a_clear_error_and_nothing_lands() {
    let (r, left) = hostile_push(Bad::Garbage, &[3 * CHUNK_DATA]).await;
    assert_eq!(r.len(), 1, "{r:?}");
    let e = r[0].error.clone().unwrap_or_default();
    assert!(
        e.contains(&format!(
            "compressed chunk at offset {CHUNK_DATA} is corrupt"
        )),
        "{e}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_chunk_past_the_chunk_size_is_refused() {
    let (r, left) = hostile_push(Bad::Bomb, &[3 * CHUNK_DATA]).await;
    let e = r[0].error.clone().unwrap_or_default();
    assert!(e.contains(&format!("exceeds {CHUNK_DATA} bytes")), "{e}");
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 17, chunks linked to the chunk before them: a damaged one, and
/// one with nothing before it (arriving out of order, as over stripes),
/// are clear errors and nothing lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_linked_chunk_is_a_clear_error_and_nothing_lands() {
    let (r, left) = hostile_push(Bad::LinkedCorrupt, &[3 * CHUNK_DATA]).await;
    let e = r[0].error.clone().unwrap_or_default();
    assert!(
        e.contains(&format!(
            "compressed chunk at offset {CHUNK_DATA} is corrupt"
        )),
        "{e}"
    );
    assert!(left.is_empty(), "{left:?}");
    let (r, left) = hostile_push(Bad::LinkedOrphan, &[3 * CHUNK_DATA]).await;
    let e = r[0].error.clone().unwrap_or_default();
    assert!(
        e.contains("compressed chunk at offset 0 refers to data before it that was not sent"),
        "{e}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_compressed_small_files_are_errors_and_nothing_lands() {
    let (r, left) = hostile_push(Bad::Garbage, &[1000, 2000, 3000]).await;
    assert_eq!(r.iter().filter(|e| e.error.is_some()).count(), 3, "{r:?}");
    for e in &r {
        let e = e.error.clone().unwrap_or_default();
        assert!(e.contains("compressed file is corrupt"), "{e}");
    }
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_small_file_with_nothing_before_it_is_an_error_and_nothing_lands() {
    // Every file of the reply claims to continue a stream that none of
    // them started.
    let (r, left) = hostile_push(Bad::LinkedOrphan, &[1000, 2000, 3000]).await;
    assert_eq!(r.iter().filter(|e| e.error.is_some()).count(), 3, "{r:?}");
    for e in &r {
        let e = e.error.clone().unwrap_or_default();
        assert!(e.contains("with no stream before it"), "{e}");
    }
    assert!(left.is_empty(), "{left:?}");
}

/// The `--json` line of a relay's tee.
fn relay_line(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["tee"] == true)
}

/// Issue 17: a relay's tee sends the chunks (and small files) that came
/// compressed from upstream on to its targets as they came, instead of
/// decompressing them into its spool and compressing them again for each
/// target. Real processes: the controller, a `local` relay (`--via
/// local`) and a `local` target behind it; `--bwlimit` makes both links
/// slow enough that `-z` compresses. The relay's own compressor does no
/// work for them (`compressed_here`), the copies are identical, and the
/// same push without `-z` forwards nothing.
#[test]
fn a_relay_sends_compressed_chunks_on_without_compressing_them_again() {
    let src = tempfile::tempdir().expect("tempdir");
    let top = src.path().join("tree");
    std::fs::create_dir_all(top.join("src")).expect("mkdir");
    // 3 MiB of log (24 chunks, the last short), text files below one
    // chunk (fetched in batches or alone), and random bytes (sent raw).
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("app.log".into(), text((3 << 20) + 777, 11)),
        ("random.bin".into(), random(600_000, 12)),
    ];
    for i in 0..12u64 {
        files.push((
            format!("src/f{i}.rs"),
            text(3000 + i as usize * 9000, 100 + i),
        ));
    }
    for (name, data) in &files {
        std::fs::write(top.join(name), data).expect("write");
    }
    let dst = tempfile::tempdir().expect("tempdir");
    let run = |z: bool, into: &str| {
        let mut args = vec![
            "push",
            "--json",
            "-r",
            "--bwlimit",
            "16M",
            "--via",
            "local",
            "-H",
            "local",
        ];
        if z {
            args.push("-z");
        }
        let dest = dst.path().join(into);
        let dest = format!("{}/", dest.to_str().expect("utf8"));
        args.extend([top.to_str().expect("utf8"), dest.as_str()]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrogen"))
            .args(&args)
            .output()
            .expect("ferrogen runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        for (name, data) in &files {
            let got = std::fs::read(dst.path().join(into).join("tree").join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}\n{stdout}\n{stderr}"));
            assert!(got == *data, "{name} differs");
        }
        relay_line(&stdout).unwrap_or_else(|| panic!("no relay line:\n{stdout}\n{stderr}"))
    };
    let relay = run(true, "z");
    let n = |k: &str| relay[k].as_u64().unwrap_or(u64::MAX);
    // The log's 24 chunks and 12 text files came compressed (they shrink
    // 4:1 and more, and 16 MiB/s is far slower than zstd): most, if not
    // all, were sent on as they came.
    assert!(
        n("forwarded_compressed") >= 24 && n("forwarded_compressed") != u64::MAX,
        "{relay}"
    );
    // What the relay compressed itself: only what came raw from upstream
    // (a tuner's raw probe), never the forwarded chunks again.
    assert!(
        n("compressed_here") + n("forwarded_compressed") <= 24 + 12 + 2,
        "{relay}"
    );
    assert!(n("compressed_here") < 8, "{relay}");
    let plain = run(false, "plain");
    assert_eq!(plain["forwarded_compressed"], 0, "{plain}");
    assert_eq!(plain["compressed_here"], 0, "{plain}");
}
