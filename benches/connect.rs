//! Connection set-up over ssh on loopback (issue 4), side by side in one
//! run against a private sshd started here (tests/sshd/mod.rs; needs root):
//!
//! * `ssh host true` — the floor: one ssh connection running one command;
//! * first connection — the target's cache is empty, the binary is sent;
//! * cached — the binary is already in the target's cache.
//!
//! Each is timed in-process (`connect::connect` until the context answers
//! its handshake) and as a whole `ferrogen ping -c 1` command (process start
//! to exit). `cargo bench --bench connect` (release build); `ROUNDS=N`.

#[path = "../tests/sshd/mod.rs"]
mod sshd;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrogen::connect::{self, Boot, ConnectSpec, Method, SshSpec};
use ferrogen::router::{Router, RouterConfig};

fn summary(name: &str, mut v: Vec<Duration>, base: Option<f64>) -> f64 {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = ms(v[v.len() / 2]);
    let ratio = base
        .map(|b| format!("{:>6.2}x", median / b))
        .unwrap_or_default();
    println!(
        "{name:<44} {:>8.1} {:>8.1} {:>8.1}  {ratio}",
        ms(v[0]),
        median,
        ms(v[v.len() - 1])
    );
    median
}

fn run(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    let took = t0.elapsed();
    assert!(st.success(), "{cmd:?} failed: {st}");
    took
}

fn main() {
    let Some(s) = sshd::Sshd::start() else {
        println!("connect bench skipped: no private sshd here (needs root and openssh-server)");
        return;
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let user = sshd::CACHE;
    let exe = env!("CARGO_BIN_EXE_ferrogen");
    connect::local::set_child_program(exe);
    let size = std::fs::metadata(exe).map(|m| m.len()).unwrap_or(0);
    println!(
        "connection set-up over ssh on loopback: {rounds} rounds, binary {exe} ({:.1} MiB)",
        size as f64 / (1 << 20) as f64
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8}  {:>7}",
        "", "min ms", "median", "max", "vs ssh"
    );

    let rsh = s.rsh();
    let ssh_true =
        || run(Command::new("ssh").args(["-F", &s.config.to_string_lossy(), "-T", user, "true"]));
    let ping = || run(Command::new(exe).args(["ping", "-c", "1", "-e", &rsh, "-H", user]));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut ssh = SshSpec::new(user);
    ssh.command = s.ssh_command();
    let spec = ConnectSpec::new(Method::Ssh(ssh));
    let connect_once = |expect_sent: bool| -> Duration {
        rt.block_on(async {
            let router = Router::new(RouterConfig::controller());
            let t0 = Instant::now();
            let info = connect::connect(&router, &spec, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let took = t0.elapsed();
            let sent = matches!(info.boot, Boot::Sent { .. });
            assert_eq!(sent, expect_sent, "{:?}", info.boot);
            router.close_all_streams("bench");
            took
        })
    };
    // Hash the binary once up front (a controller does it once per run).
    rt.block_on(connect::bootstrap::binary(None))
        .expect("hash the binary");
    // Warm up sshd, the page cache and the target's cache.
    ssh_true();
    sshd::clear_cache(user);
    connect_once(true);

    let mut t_ssh = Vec::new();
    let mut t_first = Vec::new();
    let mut t_cached = Vec::new();
    let mut c_first = Vec::new();
    let mut c_cached = Vec::new();
    for _ in 0..rounds {
        t_ssh.push(ssh_true());
        sshd::clear_cache(user);
        t_first.push(connect_once(true));
        t_cached.push(connect_once(false));
        sshd::clear_cache(user);
        c_first.push(ping());
        c_cached.push(ping());
    }
    let base = summary("ssh host true", t_ssh, None);
    summary("ferrogen connect, first (binary sent)", t_first, Some(base));
    summary("ferrogen connect, cached", t_cached, Some(base));
    summary(
        "`ferrogen ping -c 1`, first (binary sent)",
        c_first,
        Some(base),
    );
    summary("`ferrogen ping -c 1`, cached", c_cached, Some(base));
}
