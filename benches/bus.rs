//! Message-bus benchmark (issue 2): small-call latency and raw-data
//! throughput through 1 and 3 hops of local contexts, side by side with a
//! plain pipe into `cat`.
//!
//! ```sh
//! cargo bench --locked --bench bus
//! ```
//!
//! Environment:
//!
//! * `FERROGEN_BENCH_MIB` — MiB sent per throughput run (default 1024);
//! * `FERROGEN_BENCH_CALLS` — sequential calls per latency run (default 5000);
//! * `FERROGEN_BENCH_REPS` — interleaved repetitions; figures are the
//!   medians over them (default 9);
//! * `FERROGEN_BENCH_ONLY` — a comma-separated subset of `lat1`, `lat3`,
//!   `raw1`, `raw3`, `pipe1`, `pipe3` to run (for profiling; default all);
//! * `FERROGEN_BENCH_CHILD` — the program started for local contexts
//!   (default: the `ferrogen` binary built with this bench; for comparing
//!   builds side by side).
//!
//! Every repetition runs each measurement once, in the same order, so slow
//! phases of a noisy machine hit all of them alike.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrogen::connect::{self, ConnectSpec, ContextInfo, Method};
use ferrogen::ping::{PING_SERVICE, SinkArgs};
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::Services;
use ferrogen::wire::{ContextId, Enc, Frame, HEADER_LEN, control};

/// Bytes one bulk frame occupies on the wire (header + payload): 128 KiB.
const FRAME_WIRE: usize = 128 * 1024;
/// Payload of one bulk frame.
const CHUNK: usize = FRAME_WIRE - HEADER_LEN;
const MIB: f64 = 1024.0 * 1024.0;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("bus bench: ignoring {name}={v:?} (want a positive integer)");
                default
            }
        },
        Err(_) => default,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One latency run.
struct Latency {
    calls_per_s: f64,
    median_us: f64,
    p99_us: f64,
}

async fn ping_once(router: &Router, dst: ContextId) {
    let empty: Vec<u8> = Vec::new();
    let r: Vec<u8> = match router.call_service(dst, PING_SERVICE, "ping", &empty).await {
        Ok(r) => r,
        Err(e) => panic!("ping of context {dst} failed: {e}"),
    };
    assert!(r.is_empty(), "ping echoed {} bytes", r.len());
}

async fn latency(router: &Router, dst: ContextId, calls: usize) -> Latency {
    for _ in 0..calls.min(200) {
        ping_once(router, dst).await;
    }
    let mut rtts = Vec::with_capacity(calls);
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        ping_once(router, dst).await;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed().as_secs_f64();
    rtts.sort_by(f64::total_cmp);
    Latency {
        calls_per_s: calls as f64 / total,
        median_us: percentile(&rtts, 50.0),
        p99_us: percentile(&rtts, 99.0),
    }
}

/// Sends `frames` bulk frames to a sink in `dst`; MiB/s of wire bytes,
/// timed from the first send to the sink's report.
async fn raw(router: &Router, dst: ContextId, frames: usize, chunk: &Bytes) -> f64 {
    let mut done = router.receiver();
    let total = (frames * chunk.len()) as u64;
    let sink: ferrogen::channel::Sender = match router
        .call_service(
            dst,
            PING_SERVICE,
            "sink",
            &SinkArgs {
                total,
                done: done.to_sender(),
            },
        )
        .await
    {
        Ok(s) => s,
        Err(e) => panic!("sink in context {dst} failed: {e}"),
    };
    let start = Instant::now();
    for _ in 0..frames {
        router
            .send_bulk(Frame::new(
                sink.context,
                sink.handle,
                Enc::Bin,
                chunk.clone(),
            ))
            .await;
    }
    let report = match done.recv_timeout(Duration::from_secs(600)).await {
        Ok(f) => f,
        Err(e) => panic!("no report from the sink in context {dst}: {e}"),
    };
    let secs = start.elapsed().as_secs_f64();
    let got: u64 = match control::decode_frame(&report) {
        Ok(g) => g,
        Err(e) => panic!("bad sink report: {e}"),
    };
    assert_eq!(got, total, "sink in context {dst} counted the wrong total");
    (frames * FRAME_WIRE) as f64 / MIB / secs
}

/// Writes `frames` chunks of [`FRAME_WIRE`] bytes into `sh -c pipeline`'s
/// stdin and waits for it to exit; MiB/s.
fn plain_pipe(pipeline: &str, frames: usize, block: &[u8]) -> f64 {
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(pipeline)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("could not start {pipeline:?}: {e}"),
    };
    // Let the shell start its stages before the clock runs.
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    {
        let Some(mut stdin) = child.stdin.take() else {
            panic!("no stdin for {pipeline:?}")
        };
        for _ in 0..frames {
            if let Err(e) = stdin.write_all(block) {
                panic!("write to {pipeline:?} failed: {e}");
            }
        }
    }
    match child.wait() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{pipeline:?} exited with {s}"),
        Err(e) => panic!("wait for {pipeline:?} failed: {e}"),
    }
    (frames * block.len()) as f64 / MIB / start.elapsed().as_secs_f64()
}

/// True once `pid` has exited (gone, or a zombie awaiting its reaper).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

#[derive(Default)]
struct Samples {
    calls_per_s: Vec<f64>,
    median_us: Vec<f64>,
    p99_us: Vec<f64>,
    ferrogen_mib_s: Vec<f64>,
    pipe_mib_s: Vec<f64>,
    /// ferrogen / pipe within each repetition (the two run back to back,
    /// so this cancels most of the machine's slow phases).
    paired_ratio: Vec<f64>,
}

impl Samples {
    fn add_latency(&mut self, l: &Latency) {
        self.calls_per_s.push(l.calls_per_s);
        self.median_us.push(l.median_us);
        self.p99_us.push(l.p99_us);
    }
}

fn main() {
    match std::env::var_os("FERROGEN_BENCH_CHILD") {
        Some(p) => ferrogen::connect::local::set_child_program(p),
        None => ferrogen::connect::local::set_child_program(env!("CARGO_BIN_EXE_ferrogen")),
    }
    let mib = env_usize("FERROGEN_BENCH_MIB", 1024);
    let calls = env_usize("FERROGEN_BENCH_CALLS", 5000);
    let reps = env_usize("FERROGEN_BENCH_REPS", 9);
    let frames = mib * 1024 * 1024 / FRAME_WIRE;

    // The same runtime the `ferrogen` command line builds for a controller.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("could not start the runtime: {e}"),
    };

    let router = Router::new(RouterConfig::controller());
    let (services, chain) = rt.block_on(async {
        let services = Services::start(&router);
        ferrogen::ping::register_service(&services, &router);
        let spec = ConnectSpec::new(Method::Local);
        let mut chain: Vec<ContextInfo> = Vec::new();
        for _ in 0..3 {
            let via = chain.last().map(|c| c.id);
            match connect::connect(&router, &spec, via).await {
                Ok(info) => chain.push(info),
                Err(e) => panic!("could not start hop {}: {e}", chain.len() + 1),
            }
        }
        (services, chain)
    });
    let one = chain[0].id;
    let three = chain[2].id;

    let pattern: Vec<u8> = (0..FRAME_WIRE).map(|i| (i * 31 % 251) as u8).collect();
    let chunk = Bytes::copy_from_slice(&pattern[..CHUNK]);

    eprintln!(
        "bus bench: {reps} repetitions of {calls} calls and {mib} MiB per target \
         (nproc {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let only = std::env::var("FERROGEN_BENCH_ONLY").unwrap_or_default();
    let wanted = |what: &str| only.is_empty() || only.split(',').any(|w| w.trim() == what);
    let skipped = Latency {
        calls_per_s: f64::NAN,
        median_us: f64::NAN,
        p99_us: f64::NAN,
    };
    let mut hop1 = Samples::default();
    let mut hop3 = Samples::default();
    for rep in 1..=reps {
        let lat = |dst, what| match wanted(what) {
            true => rt.block_on(latency(&router, dst, calls)),
            false => Latency { ..skipped },
        };
        let l1 = lat(one, "lat1");
        let l3 = lat(three, "lat3");
        let raw = |dst, what| match wanted(what) {
            true => rt.block_on(raw(&router, dst, frames, &chunk)),
            false => f64::NAN,
        };
        let pipe = |pipeline, what| match wanted(what) {
            true => plain_pipe(pipeline, frames, &pattern),
            false => f64::NAN,
        };
        let r1 = raw(one, "raw1");
        let p1 = pipe("cat > /dev/null", "pipe1");
        let r3 = raw(three, "raw3");
        let p3 = pipe("cat | cat | cat > /dev/null", "pipe3");
        eprintln!(
            "  rep {rep}: 1 hop {:.0} calls/s, median {:.1} µs, raw {r1:.0} MiB/s, pipe {p1:.0} MiB/s | \
             3 hops {:.0} calls/s, median {:.1} µs, raw {r3:.0} MiB/s, pipe {p3:.0} MiB/s",
            l1.calls_per_s, l1.median_us, l3.calls_per_s, l3.median_us
        );
        hop1.add_latency(&l1);
        hop3.add_latency(&l3);
        hop1.ferrogen_mib_s.push(r1);
        hop1.pipe_mib_s.push(p1);
        hop1.paired_ratio.push(r1 / p1);
        hop3.ferrogen_mib_s.push(r3);
        hop3.pipe_mib_s.push(p3);
        hop3.paired_ratio.push(r3 / p3);
    }

    // Shut the tree down: closing the stream makes each hop see EOF, exit
    // and close the streams to its own children.
    rt.block_on(async {
        services.shutdown().await;
        router.close_all_streams("benchmark finished");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !chain.iter().all(|c| exited(c.pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let left: Vec<u32> = chain
        .iter()
        .map(|c| c.pid)
        .filter(|&p| !exited(p))
        .collect();
    if !left.is_empty() {
        eprintln!("bus bench: contexts still running after shutdown: {left:?}");
    }
    drop(rt);

    let row = |label: &str, a: f64, b: f64, prec: usize| {
        println!("| {label:<32} | {a:>12.prec$} | {b:>12.prec$} |");
    };
    println!();
    println!("ferrogen message bus: medians of {reps} interleaved repetitions");
    println!("({calls} sequential ferrogen.ping.ping calls with an empty payload per run;");
    println!(" {mib} MiB of {FRAME_WIRE}-byte frames ({CHUNK}-byte payloads) per throughput run)");
    println!();
    println!("| {:<32} | {:>12} | {:>12} |", "", "1 hop", "3 hops");
    println!("|{:-<34}|{:->14}|{:->14}|", "", "", "");
    row(
        "calls/s (sequential)",
        median(&hop1.calls_per_s),
        median(&hop3.calls_per_s),
        0,
    );
    row(
        "call RTT median (µs)",
        median(&hop1.median_us),
        median(&hop3.median_us),
        1,
    );
    row(
        "call RTT p99 (µs)",
        median(&hop1.p99_us),
        median(&hop3.p99_us),
        1,
    );
    row(
        "ferrogen raw (MiB/s)",
        median(&hop1.ferrogen_mib_s),
        median(&hop3.ferrogen_mib_s),
        0,
    );
    row(
        "plain pipe, cat x1 / x3 (MiB/s)",
        median(&hop1.pipe_mib_s),
        median(&hop3.pipe_mib_s),
        0,
    );
    let ratio1 = median(&hop1.ferrogen_mib_s) / median(&hop1.pipe_mib_s);
    let ratio3 = median(&hop3.ferrogen_mib_s) / median(&hop3.pipe_mib_s);
    row("ferrogen raw / plain pipe", ratio1, ratio3, 2);
    row(
        "  (median of per-rep ratios)",
        median(&hop1.paired_ratio),
        median(&hop3.paired_ratio),
        2,
    );
    // Interference from other work only ever slows a run down, so the best
    // repetition is the figure least disturbed by a noisy machine.
    row(
        "ferrogen raw, best rep (MiB/s)",
        best(&hop1.ferrogen_mib_s),
        best(&hop3.ferrogen_mib_s),
        0,
    );
    row(
        "plain pipe, best rep (MiB/s)",
        best(&hop1.pipe_mib_s),
        best(&hop3.pipe_mib_s),
        0,
    );
    row(
        "best / best",
        best(&hop1.ferrogen_mib_s) / best(&hop1.pipe_mib_s),
        best(&hop3.ferrogen_mib_s) / best(&hop3.pipe_mib_s),
        2,
    );
    println!();
    let rtt1 = median(&hop1.median_us);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goal: raw 1 hop / plain pipe >= 0.80: {ratio1:.2} ({})",
        verdict(ratio1 >= 0.80)
    );
    println!(
        "goal: 1-hop call median RTT < 100 µs: {rtt1:.1} µs ({})",
        verdict(rtt1 < 100.0)
    );
}
