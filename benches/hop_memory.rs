//! Memory at every hop (issue 5, point 7): a large push through an
//! intermediary whose first hop is fast and whose second hop is slow, with
//! the peak resident set (`VmHWM`) of every process on the way.
//!
//! ```sh
//! cargo bench --locked --bench hop_memory      # as root: starts a private sshd
//! ```
//!
//! The path is `ferrogen push --via local -H root FILE DIR/`:
//!
//! 1. controller → a local context: a pipe, as fast as the machine;
//! 2. local context → `ssh.root` on the private sshd of tests/sshd/mod.rs,
//!    through a TCP relay in this process that forwards the client-to-server
//!    direction at a fixed rate (`FERROGEN_BENCH_RATE_MIB`, default 50 MiB/s):
//!    ssh's `-o Port=` points at the relay.
//!
//! So data arrives at the intermediary faster than it can leave it; only the
//! end-to-end credit window (acknowledged by the final receiver) stops it
//! piling up there. The file is sparse, `FERROGEN_BENCH_MIB` MiB (default
//! 4096). Each run is sampled from `/proc` every 20 ms: the controller, every
//! process below it (the local context, its ssh client), and every process
//! below the private sshd (its session processes and the remote context).
//! `VmHWM` only grows, so the last sample of each process is its peak.
//!
//! Two runs: the window as shipped (auto-sized, capped at `--window-cap`,
//! default 64 MiB, `FERROGEN_BENCH_CAP_MIB`) and the window pinned at the cap
//! (`--window CAP`, the worst case the cap allows). Goal for every ferrogen
//! process: peak RSS under the cap + 32 MiB. ssh and sshd are shown for
//! reference only.

#[path = "../tests/sshd/mod.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------ the slow hop

/// A loopback relay to `to_port` that forwards client-to-server bytes at
/// `rate` bytes/s (the other direction unpaced). Counts what it forwarded.
fn rate_relay(to_port: u16, rate: u64, forwarded: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let Ok(up) = TcpStream::connect(("127.0.0.1", to_port)) else {
                continue;
            };
            let _ = c.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (c2, up2) = (
                c.try_clone().expect("clone"),
                up.try_clone().expect("clone"),
            );
            let fwd = forwarded.clone();
            std::thread::spawn(move || paced_copy(c, up, Some((rate, fwd))));
            std::thread::spawn(move || paced_copy(up2, c2, None));
        }
    });
    port
}

fn paced_copy(mut from: TcpStream, mut to: TcpStream, pace: Option<(u64, Arc<AtomicU64>)>) {
    // Small reads, so the pacing is smooth and the relay holds little.
    let mut buf = vec![0u8; 32 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((rate, count)) = &pace {
            let due = start + Duration::from_secs_f64((sent + n as u64) as f64 / *rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

// ---------------------------------------------------------------- sampling

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// One process seen during a run.
#[derive(Debug, Clone)]
struct Seen {
    role: String,
    ferrogen: bool,
    hwm_kib: u64,
}

/// What a process is, from its executable and arguments.
fn role(pid: u32, below_controller: bool) -> (String, bool) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let cmd = cmdline(pid);
    let arg1 = cmd.split(' ').nth(1).unwrap_or_default().to_string();
    if exe == "ferrogen" && arg1 == "__context" {
        let side = if below_controller {
            "hop 1: local context (intermediary)"
        } else {
            "hop 2: remote context ssh.root (receiver)"
        };
        (side.to_string(), true)
    } else if exe == "ferrogen" {
        (format!("ferrogen {arg1}"), true)
    } else if exe == "ssh" {
        ("ssh client (run by the local context)".to_string(), false)
    } else if exe == "sshd" || cmd.starts_with("sshd") {
        (format!("`{cmd}` (target side)"), false)
    } else {
        (
            format!("other: {}", cmd.chars().take(40).collect::<String>()),
            false,
        )
    }
}

struct RunResult {
    seen: BTreeMap<u32, Seen>,
    secs: f64,
    samples: u64,
}

fn sampled_push(exe: &str, args: &[String], sshd_pid: u32) -> RunResult {
    let mut child = Command::new(exe)
        .arg("push")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ferrogen push");
    let pid = child.id();
    let t0 = Instant::now();
    let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut samples = 0;
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let status = loop {
        samples += 1;
        let mut procs: Vec<(u32, bool)> = vec![(pid, true)];
        procs.extend(sshd::descendants(pid).into_iter().map(|p| (p, true)));
        procs.extend(sshd::descendants(sshd_pid).into_iter().map(|p| (p, false)));
        for (p, below) in procs {
            let Some(hwm) = status_kib(p, "VmHWM") else {
                continue;
            };
            let (role, ferrogen) = if p == pid {
                ("controller (ferrogen push)".to_string(), true)
            } else {
                role(p, below)
            };
            let e = seen.entry(p).or_insert(Seen {
                role: role.clone(),
                ferrogen,
                hwm_kib: 0,
            });
            // A shell that execs ferrogen changes role: keep the last.
            if !role.starts_with("other") {
                e.role = role;
                e.ferrogen = ferrogen;
            }
            e.hwm_kib = e.hwm_kib.max(hwm);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t0.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "ferrogen push failed ({status}):\n{stdout}"
    );
    for l in stdout.lines() {
        assert!(l.contains("\"status\":\"ok\""), "{l}");
    }
    RunResult {
        seen,
        secs,
        samples,
    }
}

fn main() {
    let Some(s) = sshd::Sshd::start() else {
        println!("hop_memory bench skipped: no private sshd here (needs root and openssh-server)");
        return;
    };
    let exe = env!("CARGO_BIN_EXE_ferrogen");
    let mib = env_u64("FERROGEN_BENCH_MIB", 4096);
    let rate_mib = env_u64("FERROGEN_BENCH_RATE_MIB", 50);
    let cap_mib = env_u64("FERROGEN_BENCH_CAP_MIB", 64);
    let goal_kib = (cap_mib + 32) * 1024;

    let forwarded = Arc::new(AtomicU64::new(0));
    let relay = rate_relay(s.port, rate_mib << 20, forwarded.clone());
    let work = tempfile::Builder::new()
        .prefix("ferrogen-hop-memory-")
        .tempdir()
        .expect("temp dir");
    let host_pub = std::fs::read_to_string(s.dir.path().join("host_key.pub")).expect("host key");
    let kh = work.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{relay} {host_pub}")).expect("known_hosts");
    let rsh = format!(
        "ssh -F {} -o Port={relay} -o UserKnownHostsFile={}",
        s.config.display(),
        kh.display()
    );
    let src = work.path().join("big.bin");
    std::fs::File::create(&src)
        .and_then(|f| f.set_len(mib << 20))
        .expect("sparse source");
    let dst = work.path().join("dst");
    std::fs::create_dir(&dst).expect("mkdir");

    // Warm the target's binary cache, so the runs measure the transfer.
    let warm = Command::new(exe)
        .args([
            "ping", "-c", "1", "-e", &rsh, "--via", "local", "-H", "root",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .status()
        .expect("ferrogen ping");
    assert!(warm.success(), "ping through the relay failed");
    let quiet = |s: &sshd::Sshd| {
        // Let the previous command's sessions end before sampling the next.
        let t0 = Instant::now();
        while !sshd::descendants(s.pid()).is_empty() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let cap = format!("{cap_mib}M");
    let modes: Vec<(&str, Vec<String>)> = vec![
        (
            "auto window (as shipped)",
            vec!["--window-cap".into(), cap.clone()],
        ),
        (
            "window pinned at the cap",
            vec!["--window".into(), cap.clone()],
        ),
    ];
    println!(
        "hop_memory: {mib} MiB sparse file, controller -> local context (pipe) -> ssh.root through a {rate_mib} MiB/s relay; cap {cap_mib} MiB, goal < {} MiB per ferrogen process",
        goal_kib / 1024
    );
    let mut all = Vec::new();
    for (name, extra) in &modes {
        for e in std::fs::read_dir(&dst).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        quiet(&s);
        let before = forwarded.load(Ordering::Relaxed);
        let mut args: Vec<String> = vec!["--json".into()];
        args.extend(extra.iter().cloned());
        args.extend(
            [
                "-e",
                &rsh,
                "--via",
                "local",
                "-H",
                "root",
                src.to_str().expect("utf8"),
                &format!("{}/", dst.display()),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        eprintln!("{name}: ferrogen push {}", args.join(" "));
        let r = sampled_push(exe, &args, s.pid());
        let moved = forwarded.load(Ordering::Relaxed) - before;
        assert_eq!(
            std::fs::metadata(dst.join("big.bin"))
                .expect("landed")
                .len(),
            mib << 20
        );
        println!();
        println!(
            "{name}: {:.1} s, {:.1} MiB/s end to end ({:.0} MiB through the slow hop), {} samples",
            r.secs,
            mib as f64 / r.secs,
            moved as f64 / (1 << 20) as f64,
            r.samples
        );
        println!(
            "| process | peak RSS (VmHWM) MiB | goal < {} MiB |",
            goal_kib / 1024
        );
        println!("|---|---:|---|");
        let mut rows: Vec<&Seen> = r
            .seen
            .values()
            .filter(|x| x.ferrogen || !x.role.starts_with("other"))
            .collect();
        rows.sort_by(|a, b| (!a.ferrogen, &a.role).cmp(&(!b.ferrogen, &b.role)));
        for x in rows {
            let verdict = if !x.ferrogen {
                "(not ferrogen)"
            } else if x.hwm_kib < goal_kib {
                "met"
            } else {
                "MISSED"
            };
            println!(
                "| {} | {:.1} | {verdict} |",
                x.role,
                x.hwm_kib as f64 / 1024.0
            );
        }
        all.push((name.to_string(), r));
    }
    let worst = all
        .iter()
        .flat_map(|(_, r)| r.seen.values())
        .filter(|x| x.ferrogen)
        .map(|x| x.hwm_kib)
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "worst ferrogen process: {:.1} MiB; goal < {} MiB: {}",
        worst as f64 / 1024.0,
        goal_kib / 1024,
        if worst < goal_kib { "met" } else { "MISSED" }
    );
}
