//! FileService benchmark (issue 3): the real `ferrogen push` binary,
//! through one local context, side by side with `cat` and `cp -a`.
//!
//! ```sh
//! cargo bench --locked --bench files
//! ```
//!
//! Three sections, each printed as a table:
//!
//! 1. **large** — one file (random-looking bytes from a PRNG) pushed with
//!    `ferrogen push SRC DIR/` against `cat SRC > DIR/NAME && sync DIR/NAME DIR`
//!    (coreutils `sync` with arguments fsyncs each: the file, then its
//!    directory — exactly what ferrogen does for a single file), and
//!    `ferrogen push --no-fsync` against a plain `cat SRC > DIR/NAME`.
//! 2. **tree** — 100 directories of 1 KiB files via `ferrogen push -r`
//!    against `cp -a`. ferrogen makes the copy durable (one `syncfs`, then
//!    renames and a directory fsync each); `cp -a` does not, so the table
//!    also shows `ferrogen --no-fsync` and `cp -a && sync -f` (syncfs).
//! 3. **rss** — peak resident set (`VmHWM`) of the controller and of the
//!    child context while pushing a small and a large file, sampled from
//!    `/proc` every few milliseconds until the controller exits.
//! 4. **compress** — `push -z` against `push` (both `--no-fsync`, `-r`) on
//!    a generated text tree (log files and source-like files, large and
//!    small) and on random data, over the local pipe (where the link
//!    outruns zstd and `-z` must turn itself off) and under
//!    `--bwlimit` (a thin link emulated by the sender's own pacing, which
//!    counts compressed bytes, as a link would).
//!
//! Every measured command is a fresh process, wall-clock timed from spawn
//! to exit (so ferrogen's figures include starting its child context).
//! Before each run the destination is removed (the tree section uses a
//! fresh directory instead, see there) and `sync` is run (untimed), so no
//! run pays for writing back another run's dirty pages; the sources
//! stay in the page cache throughout (they are written once, then read by
//! every contender alike). Repetitions alternate the contenders, rotating
//! their order, and the tables give medians with the min–max spread.
//!
//! Environment:
//!
//! * `FERROGEN_BENCH_MIB` — size of the large file (default 1024);
//! * `FERROGEN_BENCH_FILES` — files in the tree, spread over 100
//!   directories (default 10000), of `FERROGEN_BENCH_FILE_BYTES` (1024);
//! * `FERROGEN_BENCH_RSS_MIB` — the large file of the RSS section (4096);
//!   the small one is `FERROGEN_BENCH_RSS_SMALL_MIB` (256);
//! * `FERROGEN_BENCH_REPS` — repetitions (default 7); RSS runs per size:
//!   `FERROGEN_BENCH_RSS_REPS` (default 2);
//! * `FERROGEN_BENCH_Z_MIB` — size of each data set of the compress
//!   section (default 128); `FERROGEN_BENCH_Z_BWLIMIT` — the emulated thin
//!   link (default `20M`, MiB/s);
//! * `FERROGEN_BENCH_ONLY` — a comma-separated subset of `large`, `tree`,
//!   `rss`, `compress` (default all);
//! * `FERROGEN_BENCH_DIR` — where the temp directories go (default the
//!   system temp dir); they are removed at the end of each section.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrogen");

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("files bench: ignoring {name}={v:?} (want a positive integer)");
                default
            }
        },
        Err(_) => default,
    }
}

/// Median, min and max of a sample.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(v: &[f64]) -> Spread {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        write!(f, "{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max)
    }
}

/// SplitMix64: fast, and its output does not compress or dedupe.
struct Prng(u64);

impl Prng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes `bytes` pseudo-random bytes to `path`; returns their BLAKE3 digest.
fn make_file(path: &Path, bytes: u64, seed: u64) -> String {
    let mut rng = Prng(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
    hasher.finalize().to_hex().to_string()
}

fn sync_all() {
    let _ = Command::new("sync").status();
}

/// Runs `cmd` to completion; returns its wall time in seconds and stdout.
/// Panics (naming the command) if it fails.
fn timed(cmd: &mut Command) -> (f64, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ferrogen(args: &[&str], paths: &[&Path]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("push").args(args);
    for p in paths {
        c.arg(p);
    }
    c
}

/// `path` with a trailing slash ("into this directory").
fn into(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push("/");
    PathBuf::from(s)
}

fn sh(script: &str, args: &[&Path]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh");
    for a in args {
        c.arg(a);
    }
    c
}

fn shell_out(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn scratch(base: &Path, what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ferrogen-bench-{what}-"))
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("temp dir in {}: {e}", base.display()))
}

/// Checks ferrogen's `--json` output: every line ok, and `digest` (if
/// given) is the digest of the one file.
fn check_json(out: &str, digest: Option<&str>) {
    let mut files = 0;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad json {line:?}: {e}"));
        assert_eq!(v["status"], "ok", "ferrogen reported a failure: {line}");
        if let Some(d) = v["digest"].as_str() {
            files += 1;
            if let Some(want) = digest {
                assert_eq!(d, want, "digest mismatch");
            }
        }
    }
    assert!(files > 0, "ferrogen reported no file: {out:?}");
}

/// Alternates the contenders `reps` times, rotating their order; returns
/// each one's seconds per repetition. `prepare(rep, contender)` runs
/// (untimed) before each `run(rep, contender)`.
fn alternate(
    reps: usize,
    names: &[&str],
    mut prepare: impl FnMut(usize, usize),
    mut run: impl FnMut(usize, usize) -> f64,
) -> Vec<Vec<f64>> {
    let mut secs = vec![Vec::new(); names.len()];
    for r in 0..reps {
        for k in 0..names.len() {
            let i = (k + r) % names.len();
            prepare(r, i);
            let s = run(r, i);
            eprintln!("  rep {}/{reps}: {:<34} {s:8.3} s", r + 1, names[i]);
            secs[i].push(s);
        }
    }
    secs
}

fn paired_ratio(a: &[f64], b: &[f64]) -> Spread {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    spread(&r)
}

fn large(base: &Path, reps: usize) {
    let mib = env_usize("FERROGEN_BENCH_MIB", 1024);
    let bytes = mib as u64 * 1024 * 1024;
    let dir = scratch(base, "large");
    let src_dir = dir.path().join("src");
    let dst = dir.path().join("dst");
    std::fs::create_dir_all(&src_dir)
        .and_then(|()| std::fs::create_dir_all(&dst))
        .expect("mkdir");
    let src = src_dir.join("big.bin");
    eprintln!("large: writing a {mib} MiB source file ...");
    let digest = make_file(&src, bytes, 0x5eed);
    let tiny = src_dir.join("tiny.bin");
    make_file(&tiny, 1024, 7);
    sync_all();
    let out = dst.join("big.bin");
    let out_tiny = dst.join("tiny.bin");

    let names = [
        "ferrogen push (fsync)",
        "cat > DST && sync DST DIR (fsync)",
        "ferrogen push --no-fsync",
        "cat > DST",
        "ferrogen push, 1 KiB file",
    ];
    let secs = alternate(
        reps,
        &names,
        |_, _| {
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&out_tiny);
            sync_all();
        },
        |_, i| {
            let (s, stdout) = match i {
                0 => timed(&mut ferrogen(&["--json"], &[&src, &into(&dst)])),
                1 => timed(&mut sh(
                    r#"cat "$1" > "$2" && sync "$2" "$3""#,
                    &[&src, &out, &dst],
                )),
                2 => timed(&mut ferrogen(
                    &["--json", "--no-fsync"],
                    &[&src, &into(&dst)],
                )),
                3 => timed(&mut sh(r#"cat "$1" > "$2""#, &[&src, &out])),
                _ => timed(&mut ferrogen(&["--json"], &[&tiny, &into(&dst)])),
            };
            match i {
                0 | 2 => check_json(&stdout, Some(&digest)),
                4 => check_json(&stdout, None),
                _ => {}
            }
            let (file, want) = if i == 4 {
                (&out_tiny, 1024)
            } else {
                (&out, bytes)
            };
            let got = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            assert_eq!(
                got,
                want,
                "{}: wrong size after {}",
                file.display(),
                names[i]
            );
            s
        },
    );
    let _ = std::fs::remove_file(&out);
    let rate = |v: &[f64]| spread(&v.iter().map(|s| mib as f64 / s).collect::<Vec<_>>());
    let (ff, cf, fn_, cn) = (&secs[0], &secs[1], &secs[2], &secs[3]);
    println!();
    println!("### One {mib} MiB file, one local context ({reps} interleaved repetitions)");
    println!();
    println!("| contender | wall s, median (min–max) | MiB/s, median (min–max) |");
    println!("|---|---:|---:|");
    for (i, n) in names.iter().enumerate().take(4) {
        println!(
            "| `{n}` | {:.2} | {:.0} |",
            spread(&secs[i]),
            rate(&secs[i])
        );
    }
    println!("| `{}` | {:.3} | — |", names[4], spread(&secs[4]));
    println!();
    let ratio = |f: &[f64], c: &[f64]| spread(c).median / spread(f).median;
    let goal = |r: f64| if r >= 0.8 { "met" } else { "MISSED" };
    let r1 = ratio(ff, cf);
    let r2 = ratio(fn_, cn);
    println!(
        "- with fsync: ferrogen / cat throughput = **{r1:.2}×** (per-repetition pairs {:.2}); goal ≥ 0.8×: {}",
        paired_ratio(cf, ff),
        goal(r1)
    );
    println!(
        "- without fsync: ferrogen / cat throughput = **{r2:.2}×** (per-repetition pairs {:.2}); no goal (the goal is with fsync on both sides: a plain `cat` leaves the data in the page cache, unverified)",
        paired_ratio(cn, fn_),
    );
}

/// Writes `files` files of `size` bytes spread over 100 directories.
fn make_tree(root: &Path, files: usize, size: usize) {
    let dirs = 100.min(files);
    let mut rng = Prng(0x7ee5);
    let mut buf = vec![0u8; size];
    for i in 0..files {
        let d = root.join(format!("d{:03}", i % dirs));
        if i < dirs {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        rng.fill(&mut buf);
        std::fs::write(d.join(format!("f{:05}", i / dirs)), &buf).expect("write");
    }
}

/// Counts regular files and their bytes under `root`.
fn tally(root: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                todo.push(e.path());
            } else if md.is_file() {
                n += 1;
                bytes += md.len();
            }
        }
    }
    (n, bytes)
}

fn tree(base: &Path, reps: usize) {
    let files = env_usize("FERROGEN_BENCH_FILES", 10_000);
    let size = env_usize("FERROGEN_BENCH_FILE_BYTES", 1024);
    let dir = scratch(base, "tree");
    let src = dir.path().join("tree");
    let dst = dir.path().join("dst");
    eprintln!("tree: writing {files} files of {size} bytes ...");
    make_tree(&src, files, size);
    sync_all();
    let names = [
        "ferrogen push -r (syncfs)",
        "cp -a (no fsync)",
        "ferrogen push -r --no-fsync",
        "cp -a && sync -f (syncfs)",
    ];
    // Every run gets a fresh destination and none is deleted before the
    // end: on a file system without a journal (like the one this was first
    // run on), ext4's inode allocator steps one by one over inodes freed in
    // the last minute — six while their inode table block is dirty —
    // (`recently_deleted`), which made whichever run came right after an
    // `rm -rf` of 10,000 files up to 10× slower. For the same reason, give
    // the file system a few quiet minutes after big deletions before a run.
    let run_dst = |r: usize, i: usize| dst.join(format!("r{r}c{i}"));
    let secs = alternate(
        reps,
        &names,
        |r, i| {
            std::fs::create_dir_all(run_dst(r, i)).expect("mkdir");
            sync_all();
        },
        |r, i| {
            let dst = run_dst(r, i);
            let out = dst.join("tree");
            let (s, stdout) = match i {
                0 => timed(&mut ferrogen(&["-r", "--json"], &[&src, &into(&dst)])),
                1 => timed(Command::new("cp").arg("-a").arg(&src).arg(into(&dst))),
                2 => timed(&mut ferrogen(
                    &["-r", "--json", "--no-fsync"],
                    &[&src, &into(&dst)],
                )),
                _ => timed(&mut sh(
                    r#"cp -a "$1" "$2" && sync -f "$2""#,
                    &[&src, &into(&dst)],
                )),
            };
            if i == 0 || i == 2 {
                check_json(&stdout, None);
            }
            assert_eq!(
                tally(&out),
                (files, (files * size) as u64),
                "incomplete copy by {}",
                names[i]
            );
            s
        },
    );
    let _ = std::fs::remove_dir_all(&dst);
    println!();
    println!(
        "### {files} files of {size} bytes in 100 directories, one local context ({reps} interleaved repetitions)"
    );
    println!();
    println!("| contender | wall s, median (min–max) | files/s (median) |");
    println!("|---|---:|---:|");
    for (i, n) in names.iter().enumerate() {
        let s = spread(&secs[i]);
        println!("| `{n}` | {s:.3} | {:.0} |", files as f64 / s.median);
    }
    println!();
    let ratio = |f: &[f64], c: &[f64]| spread(f).median / spread(c).median;
    let goal = |r: f64| if r <= 3.0 { "met" } else { "MISSED" };
    let r1 = ratio(&secs[0], &secs[1]);
    let r2 = ratio(&secs[2], &secs[1]);
    let r3 = ratio(&secs[0], &secs[3]);
    println!(
        "- ferrogen (durable) / cp -a (not durable) wall time = **{r1:.2}×** (pairs {:.2}); goal ≤ 3×: {}",
        paired_ratio(&secs[0], &secs[1]),
        goal(r1)
    );
    println!(
        "- ferrogen --no-fsync / cp -a = **{r2:.2}×** (pairs {:.2}); goal ≤ 3×: {}",
        paired_ratio(&secs[2], &secs[1]),
        goal(r2)
    );
    println!(
        "- ferrogen (durable) / cp -a && sync -f (both durable) = **{r3:.2}×** (pairs {:.2})",
        paired_ratio(&secs[0], &secs[3])
    );
}

/// `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Parent pid of every process, from `/proc/*/stat`.
fn parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain anything but ends at the last ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
            && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok())
        {
            out.insert(pid, ppid);
        }
    }
    out
}

fn descendants(root: u32) -> BTreeSet<u32> {
    let pp = parents();
    let mut found = BTreeSet::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (&pid, &ppid) in &pp {
            if (ppid == root || found.contains(&ppid)) && found.insert(pid) {
                grew = true;
            }
        }
    }
    found
}

/// Peak RSS (KiB) of a push's controller and of its contexts.
struct Peaks {
    controller_kib: u64,
    context_kib: u64,
    contexts: usize,
    secs: f64,
}

fn push_sampled(src: &Path, dst: &Path) -> Peaks {
    let mut child = ferrogen(&["--json"], &[src, &into(dst)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferrogen");
    let t0 = Instant::now();
    let pid = child.id();
    let mut peaks: BTreeMap<u32, u64> = BTreeMap::new();
    let mut known: BTreeSet<u32> = BTreeSet::new();
    let mut tick = 0u64;
    let status = loop {
        // Look for contexts on every tick until one shows up, then now and then.
        if known.is_empty() || tick.is_multiple_of(10) {
            known.extend(descendants(pid));
        }
        tick += 1;
        for p in std::iter::once(pid).chain(known.iter().copied()) {
            if let Some(kib) = status_kib(p, "VmHWM") {
                let e = peaks.entry(p).or_insert(0);
                *e = (*e).max(kib);
            }
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "ferrogen push of {} failed: {status}",
        src.display()
    );
    let contexts: Vec<u64> = peaks
        .iter()
        .filter(|(p, _)| **p != pid)
        .map(|(_, k)| *k)
        .collect();
    Peaks {
        controller_kib: peaks.get(&pid).copied().unwrap_or(0),
        context_kib: contexts.iter().copied().max().unwrap_or(0),
        contexts: contexts.len(),
        secs,
    }
}

fn rss(base: &Path) {
    let reps = env_usize("FERROGEN_BENCH_RSS_REPS", 2);
    let small = env_usize("FERROGEN_BENCH_RSS_SMALL_MIB", 256);
    let large = env_usize("FERROGEN_BENCH_RSS_MIB", 4096);
    let dir = scratch(base, "rss");
    let dst = dir.path().join("dst");
    std::fs::create_dir_all(&dst).expect("mkdir");
    let sizes = [small, large];
    let srcs: Vec<PathBuf> = sizes
        .iter()
        .map(|mib| {
            let p = dir.path().join(format!("src-{mib}MiB.bin"));
            eprintln!("rss: writing a {mib} MiB source file ...");
            make_file(&p, *mib as u64 * 1024 * 1024, *mib as u64);
            p
        })
        .collect();
    sync_all();
    let mut rows: Vec<Vec<Peaks>> = vec![Vec::new(), Vec::new()];
    for r in 0..reps {
        for (i, src) in srcs.iter().enumerate() {
            for e in std::fs::read_dir(&dst).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            sync_all();
            let p = push_sampled(src, &dst);
            eprintln!(
                "  rep {}/{reps}: {:>5} MiB  controller {} KiB, context {} KiB ({} context process(es)), {:.2} s",
                r + 1,
                sizes[i],
                p.controller_kib,
                p.context_kib,
                p.contexts,
                p.secs
            );
            assert!(p.contexts >= 1, "never saw the child context");
            rows[i].push(p);
        }
    }
    println!();
    println!(
        "### Peak RSS (VmHWM, sampled every 5 ms), `ferrogen push FILE DIR/`, {reps} runs per size"
    );
    println!();
    println!(
        "| file | controller peak MiB (max over runs) | context peak MiB (max over runs) | wall s (median) |"
    );
    println!("|---:|---:|---:|---:|");
    let mut worst = 0.0f64;
    for (i, runs) in rows.iter().enumerate() {
        let c = runs.iter().map(|p| p.controller_kib).max().unwrap_or(0) as f64 / 1024.0;
        let x = runs.iter().map(|p| p.context_kib).max().unwrap_or(0) as f64 / 1024.0;
        worst = worst.max(c).max(x);
        let secs: Vec<f64> = runs.iter().map(|p| p.secs).collect();
        println!(
            "| {} MiB | {c:.1} | {x:.1} | {:.2} |",
            sizes[i],
            spread(&secs).median
        );
    }
    println!();
    println!(
        "- worst peak {worst:.1} MiB; goal < 64 MiB each: {}",
        if worst < 64.0 { "met" } else { "MISSED" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; we take no arguments.
    let reps = env_usize("FERROGEN_BENCH_REPS", 7);
    let only: BTreeSet<String> = std::env::var("FERROGEN_BENCH_ONLY")
        .unwrap_or_else(|_| "large,tree,rss,compress".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let base = std::env::var_os("FERROGEN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("## ferrogen FileService benchmark");
    println!();
    println!("- binary: `{BIN}`");
    println!("- nproc: {}", shell_out("nproc"));
    println!(
        "- CPU: {}",
        shell_out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-")
    );
    println!("- kernel: {}", shell_out("uname -sr"));
    println!(
        "- scratch file system: {} ({})",
        shell_out(&format!("stat -f -c %T '{}'", base.display())),
        base.display()
    );
    println!(
        "- load average at start: {}",
        shell_out("cut -d' ' -f1-3 /proc/loadavg")
    );
    if only.contains("large") {
        large(&base, reps);
    }
    if only.contains("tree") {
        tree(&base, reps);
    }
    if only.contains("rss") {
        rss(&base);
    }
    if only.contains("compress") {
        compress(&base, reps);
    }
    println!();
    println!(
        "- load average at end: {}",
        shell_out("cut -d' ' -f1-3 /proc/loadavg")
    );
}

/// Log-like and source-like text from a fixed vocabulary: compresses about
/// 3–4:1 with zstd -3, like real logs and code (`zstd -3` on this
/// generator's logs: 3.3:1).
struct TextGen {
    rng: Prng,
    words: Vec<String>,
    line: u64,
}

impl TextGen {
    fn new(seed: u64) -> TextGen {
        let mut rng = Prng(seed);
        let mut b = [0u8; 16];
        let words = (0..4000)
            .map(|_| {
                rng.fill(&mut b);
                let n = 2 + (b[0] % 9) as usize;
                b[1..=n].iter().map(|x| (b'a' + x % 26) as char).collect()
            })
            .collect();
        TextGen {
            rng,
            words,
            line: 0,
        }
    }

    fn pick(&mut self) -> (u64, u64) {
        let mut b = [0u8; 16];
        self.rng.fill(&mut b);
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x.copy_from_slice(&b[..8]);
        y.copy_from_slice(&b[8..]);
        (u64::from_le_bytes(x), u64::from_le_bytes(y))
    }

    fn word(&mut self) -> String {
        let (x, _) = self.pick();
        self.words[(x % self.words.len() as u64) as usize].clone()
    }

    fn log_line(&mut self) -> String {
        self.line += 1;
        let i = self.line;
        let (x, y) = self.pick();
        let msg: Vec<String> = (0..6 + x % 5).map(|_| self.word()).collect();
        format!(
            "2026-11-30T{:02}:{:02}:{:02}.{:03}Z host{} {} {} status={} bytes={} {}\n",
            (i / 3_600_000) % 24,
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000,
            x % 17,
            ["GET", "POST", "PUT", "DELETE"][(y % 4) as usize],
            msg.join(" "),
            [200, 200, 200, 304, 404, 500][(y % 6) as usize],
            y % 100_000,
            if x % 7 == 0 { "slow" } else { "" }
        )
    }

    fn code_line(&mut self) -> String {
        let (x, y) = self.pick();
        let (a, b, c) = (self.word(), self.word(), self.word());
        match x % 5 {
            0 => format!("    let {a}_{b} = self.{c}(&{a}, {})?;\n", y % 64),
            1 => format!(
                "    if {a}.{b}() > {} {{\n        return Err(Error::{c});\n    }}\n",
                y % 1000
            ),
            2 => format!("/// Returns the {a} of the {b}, or `None` if {c}.\n"),
            3 => format!("pub fn {a}_{b}(&mut self, {c}: u64) -> Result<(), Error> {{\n"),
            _ => format!("    }}\n    {a}.push({b}::{c});\n"),
        }
    }

    fn write(&mut self, path: &Path, bytes: usize, code: bool) {
        let mut out = String::with_capacity(bytes + 200);
        while out.len() < bytes {
            let l = if code {
                self.code_line()
            } else {
                self.log_line()
            };
            out.push_str(&l);
        }
        out.truncate(bytes);
        std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// A text tree of about `bytes`: three quarters in log files of 4 MiB,
/// the rest in source-like files of 4–60 KiB over 20 directories.
fn make_text_tree(root: &Path, bytes: usize) {
    let mut g = TextGen::new(0x7e47);
    std::fs::create_dir_all(root.join("logs")).expect("mkdir");
    let logs = bytes * 3 / 4;
    let mut n = 0;
    let mut i = 0;
    while n < logs {
        let size = (4 << 20).min(logs - n);
        g.write(&root.join(format!("logs/app-{i:03}.log")), size, false);
        n += size;
        i += 1;
    }
    let mut j = 0;
    while n < bytes {
        let d = root.join(format!("src/m{:02}", j % 20));
        if j < 20 {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        let (x, _) = g.pick();
        let size = (4096 + (x % (56 << 10)) as usize).min(bytes - n);
        g.write(&d.join(format!("f{j:04}.rs")), size, true);
        n += size;
        j += 1;
    }
}

fn compress(base: &Path, reps: usize) {
    let mib = env_usize("FERROGEN_BENCH_Z_MIB", 128);
    let limit = std::env::var("FERROGEN_BENCH_Z_BWLIMIT").unwrap_or_else(|_| "20M".into());
    let dir = scratch(base, "compress");
    let text = dir.path().join("text");
    let random = dir.path().join("random");
    eprintln!("compress: writing a {mib} MiB text tree and {mib} MiB of random data ...");
    make_text_tree(&text, mib << 20);
    std::fs::create_dir_all(&random).expect("mkdir");
    make_file(&random.join("random.bin"), (mib as u64) << 20, 0x2a2a);
    let (files, bytes) = tally(&text);
    let zstd3 = shell_out(&format!(
        "tar -C '{}' -cf - . | zstd -3 -c | wc -c",
        text.display()
    ));
    sync_all();
    let dst = dir.path().join("dst");
    let bw = format!("--bwlimit={limit}");
    let names = [
        "push",
        "push -z",
        &format!("push --bwlimit {limit}") as &str,
        &format!("push -z --bwlimit {limit}"),
    ];
    let args: [Vec<&str>; 4] = [
        vec!["-r", "--json", "--no-fsync"],
        vec!["-r", "--json", "--no-fsync", "-z"],
        vec!["-r", "--json", "--no-fsync", &bw],
        vec!["-r", "--json", "--no-fsync", "-z", &bw],
    ];
    println!();
    println!(
        "### -z: {mib} MiB of text ({files} files; `tar | zstd -3`: {zstd3} bytes) and {mib} MiB of random data, one local context ({reps} interleaved repetitions, `--no-fsync`)"
    );
    println!();
    println!("| data | contender | wall s, median (min–max) | MiB/s, median |");
    println!("|---|---|---:|---:|");
    let mut ratios = Vec::new();
    for (label, src) in [("text tree", &text), ("random", &random)] {
        let secs = alternate(
            reps,
            &names,
            |_, _| {
                let _ = std::fs::remove_dir_all(&dst);
                std::fs::create_dir_all(&dst).expect("mkdir");
            },
            |_, i| {
                let (s, stdout) = timed(&mut ferrogen(&args[i], &[src, &into(&dst)]));
                check_json(&stdout, None);
                let name = src.file_name().map(PathBuf::from).unwrap_or_default();
                let (n, b) = tally(&dst.join(name));
                let want = tally(src);
                assert_eq!((n, b), want, "{label}: tree differs after {}", names[i]);
                s
            },
        );
        let total = tally(src).1 as f64 / (1 << 20) as f64;
        for (i, n) in names.iter().enumerate() {
            println!(
                "| {label} | `{n}` | {:.2} | {:.0} |",
                spread(&secs[i]),
                total / spread(&secs[i]).median
            );
        }
        ratios.push((
            label,
            paired_ratio(&secs[1], &secs[0]),
            paired_ratio(&secs[3], &secs[2]),
        ));
    }
    let _ = bytes;
    println!();
    for (label, local, thin) in ratios {
        println!(
            "- {label}: time with -z / without, per-repetition pairs: local pipe **{local:.2}×**, `--bwlimit {limit}` **{thin:.2}×**"
        );
    }
}
