//! ssh, sudo and via against a real private sshd and real sudo (issue 4):
//! bootstrap with nothing installed, the binary cache, architecture checks,
//! sudo to other accounts over the existing stream, via chains, and every
//! failure reported per host with its cause. Each test starts its own sshd
//! (tests/sshd/mod.rs); they need root (CI runs as root).

mod common;
mod sshd;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ferrogen::connect::{self, Boot, ConnectSpec, ContextInfo, Method, SshSpec, SudoSpec};
use serde_json::Value;
use sshd::Sshd;

// ------------------------------------------------------------------ helpers

struct Run {
    out: Output,
    took: Duration,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The `--json` reports, one per target.
    fn reports(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("a JSON report"))
            .collect()
    }

    /// The report for `target` (the first, if several).
    fn report(&self, target: &str) -> Value {
        self.reports()
            .into_iter()
            .find(|r| r["target"] == target)
            .unwrap_or_else(|| panic!("no report for {target}: {}{}", self.stdout(), self.stderr()))
    }

    fn error(&self, target: &str) -> String {
        let r = self.report(target);
        let e = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{target} did not fail: {r}"))
            .to_string();
        eprintln!("[{target}] error: {e}");
        e
    }

    fn assert_ok(&self) {
        assert!(
            self.out.status.success(),
            "ferrogen failed ({}):\n{}\n{}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        for r in self.reports() {
            assert!(r["error"].is_null(), "{r}");
        }
    }
}

/// Runs `ferrogen ping --json -e <fixture rsh> -c 2 ARGS`.
fn ping(s: &Sshd, args: &[&str]) -> Run {
    ping_with(s, &s.rsh(), args)
}

fn ping_with(_s: &Sshd, rsh: &str, args: &[&str]) -> Run {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["ping", "--json", "-c", "2", "-e", rsh])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferrogen");
    Run {
        out,
        took: t0.elapsed(),
    }
}

fn chain(r: &Value) -> Vec<String> {
    r["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "{w:?} missing from: {text}");
    }
}

/// An in-process controller that ships the test_context binary.
fn controller() -> common::Controller {
    common::Controller::new()
}

fn ssh_spec(s: &Sshd, alias: &str) -> ConnectSpec {
    let mut ssh = SshSpec::new(alias);
    ssh.command = s.ssh_command();
    let mut spec = ConnectSpec::new(Method::Ssh(ssh));
    spec.connect_timeout_ms = 20_000;
    spec
}

async fn connect_ssh(c: &common::Controller, s: &Sshd, alias: &str) -> ContextInfo {
    connect::connect(&c.router, &ssh_spec(s, alias), None)
        .await
        .unwrap_or_else(|e| panic!("ssh {alias}: {e}"))
}

async fn ping_ctx(c: &common::Controller, id: u32) -> Result<Vec<u8>, ferrogen::call::CallError> {
    c.router
        .call_service_timeout(
            id,
            ferrogen::ping::PING_SERVICE,
            "ping",
            &vec![1u8, 2, 3],
            Some(Duration::from_secs(10)),
        )
        .await
}

// -------------------------------------------------------------------- ssh

#[test]
fn ping_over_ssh_as_root_and_as_test_users() {
    let Some(s) = Sshd::start() else { return };
    let explicit = format!("ssh://{}@127.0.0.1:{}", sshd::PLAIN, s.port);
    let r = ping(&s, &["-H", "root", "-H", sshd::SUDOER, "-H", &explicit]);
    r.assert_ok();
    assert_eq!(chain(&r.report("root")), ["controller", "ssh.root"]);
    assert_eq!(chain(&r.report(sshd::SUDOER)), ["controller", "ssh.fgsudo"]);
    assert_eq!(
        chain(&r.report(&explicit)),
        [
            "controller".to_string(),
            format!("ssh.fgplain@127.0.0.1:{}", s.port)
        ]
    );
    assert_eq!(r.report("root")["count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connection_sends_the_binary_and_later_ones_use_the_cache() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::CACHE);
    let c = controller();
    let bin = std::fs::metadata(common::test_context_path())
        .expect("test_context")
        .len();

    let first = connect_ssh(&c, &s, sshd::CACHE).await;
    match &first.boot {
        Boot::Sent { bytes, system } => {
            assert_eq!(*bytes, bin);
            assert!(system.starts_with("Linux "), "{system}");
        }
        other => panic!("first connection did not send the binary: {other:?}"),
    }
    let files = sshd::cache_files(sshd::CACHE);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with(env!("CARGO_PKG_VERSION")) && files[0].ends_with("/ferrogen"));
    ping_ctx(&c, first.id)
        .await
        .expect("ping the first context");

    let second = connect_ssh(&c, &s, sshd::CACHE).await;
    assert!(
        matches!(second.boot, Boot::Cached { .. }),
        "{:?}",
        second.boot
    );
    ping_ctx(&c, second.id)
        .await
        .expect("ping the second context");
    assert_eq!(sshd::cache_files(sshd::CACHE), files);

    // The same through the command line, observed in its log.
    let run = |v: &str| {
        Command::new(env!("CARGO_BIN_EXE_ferrogen"))
            .args(["ping", v, "-c", "1", "-e", &s.rsh(), "-H", sshd::CACHE])
            .env_remove("RUST_LOG")
            .output()
            .expect("run ferrogen")
    };
    let a = run("-v");
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let log = String::from_utf8_lossy(&a.stderr);
    assert!(log.contains("ssh.fgcache: sent the binary"), "{log}");
    let b = run("-v");
    assert!(b.status.success());
    let log = String::from_utf8_lossy(&b.stderr);
    assert!(
        log.contains("ssh.fgcache: started the cached binary"),
        "{log}"
    );
    assert!(!log.contains("sent the binary"), "{log}");
}

#[test]
fn concurrent_first_connections_race_safely_on_the_cache() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::RACE);
    // Six spellings of the same account (the same spelling twice is one
    // target: duplicates are dropped).
    let spellings = [
        sshd::RACE.to_string(),
        format!("{0}@{0}", sshd::RACE),
        format!("ssh://{}", sshd::RACE),
        format!("ssh://{0}@{0}", sshd::RACE),
        format!("{}@127.0.0.1", sshd::RACE),
        format!("ssh://{}@127.0.0.1", sshd::RACE),
    ];
    let mut args = vec!["-v"];
    for h in &spellings {
        args.extend(["-H", h.as_str()]);
    }
    let r = ping(&s, &args);
    r.assert_ok();
    assert_eq!(r.reports().len(), 6);
    let log = r.stderr();
    let sent = log.matches("sent the binary").count();
    let cached = log.matches("started the cached binary").count();
    assert_eq!(sent + cached, 6, "{log}");
    assert!(sent >= 1, "{log}");
    // One complete binary, no temp file left by any of them.
    let files = sshd::cache_files(sshd::RACE);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("/ferrogen"), "{files:?}");
    let again = ping(&s, &args);
    again.assert_ok();
    assert_eq!(
        again.stderr().matches("started the cached binary").count(),
        6
    );
}

#[test]
fn a_target_of_another_architecture_is_refused_before_anything_is_sent() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::ARM);
    let r = ping(&s, &["-H", sshd::ARM, "-H", sshd::SUDOER]);
    let e = r.error(sshd::ARM);
    assert_mentions(
        &e,
        &[
            "ssh.fgarm",
            "Linux aarch64",
            "linux x86_64",
            "--remote-binary",
        ],
    );
    assert!(
        r.report(sshd::SUDOER)["error"].is_null(),
        "the other host carries on"
    );
    assert!(!r.out.status.success());
    assert!(sshd::cache_files(sshd::ARM).is_empty(), "nothing was sent");

    // --remote-binary names a binary for that target: its header says
    // aarch64, so it is the one shipped (this fake cannot run, which the
    // verification step reports before anything is cached).
    let fake = s.dir.path().join("ferrogen-aarch64");
    let mut elf = vec![0u8; 4096];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(&fake, &elf).expect("write fake binary");
    let fake = fake.to_string_lossy().into_owned();
    let r = ping(&s, &["-H", sshd::ARM, "--remote-binary", &fake]);
    let e = r.error(sshd::ARM);
    assert_mentions(&e, &["ssh.fgarm", "did not verify or does not run here"]);
    assert!(
        !sshd::cache_files(sshd::ARM)
            .iter()
            .any(|f| f.ends_with("/ferrogen") || f.contains(".tmp")),
        "{:?}",
        sshd::cache_files(sshd::ARM)
    );

    let text = s.dir.path().join("not-a-binary");
    std::fs::write(&text, "#!/bin/sh\n").expect("write");
    let r = ping(
        &s,
        &["-H", sshd::ARM, "--remote-binary", &text.to_string_lossy()],
    );
    assert_mentions(&r.error(sshd::ARM), &["not an executable"]);
}

#[test]
fn junk_printed_at_login_is_skipped() {
    let Some(s) = Sshd::start() else { return };
    let r = ping(&s, &["-H", sshd::JUNK, "-vv"]);
    r.assert_ok();
    assert_eq!(chain(&r.report(sshd::JUNK)), ["controller", "ssh.fgjunk"]);
    // It was there, and was skipped.
    let log = r.stderr();
    for junk in [
        "Welcome to the ferrogen junk host!",
        "FERROGEN-0000 run cached",
        "a partial line without a newline",
    ] {
        assert!(
            log.contains(&format!(
                "ssh.fgjunk: skipped output before the bootstrap: \"{junk}"
            )),
            "{junk:?} not seen in the log:\n{log}"
        );
    }
}

/// What ssh (`-v`) said it negotiated, client to server.
fn negotiated_cipher(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l.split_once("kex: client->server cipher: ")?.1;
        rest.split_whitespace().next().map(str::to_string)
    })
}

#[test]
fn ssh_is_asked_for_aes_gcm_unless_the_user_chose_a_cipher() {
    let Some(s) = Sshd::start() else { return };
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "aes"))
    {
        eprintln!("skipped: no AES instructions here");
        return;
    }
    // The fixture's configuration leaves the ciphers alone: AES-GCM.
    let r = ping_with(&s, &format!("{} -v", s.rsh()), &["-H", sshd::PLAIN, "-vv"]);
    r.assert_ok();
    assert_eq!(
        negotiated_cipher(&r.stderr()).as_deref(),
        Some("aes128-gcm@openssh.com"),
        "{}",
        r.stderr()
    );
    // The user's own pick stands.
    let rsh = format!("{} -v -c chacha20-poly1305@openssh.com", s.rsh());
    let r = ping_with(&s, &rsh, &["-H", sshd::PLAIN, "-vv"]);
    r.assert_ok();
    assert_eq!(
        negotiated_cipher(&r.stderr()).as_deref(),
        Some("chacha20-poly1305@openssh.com"),
        "{}",
        r.stderr()
    );
}

// ---------------------------------------------------------------- failures

#[test]
fn unknown_host_key_is_a_clear_error() {
    let Some(s) = Sshd::start() else { return };
    let rsh = format!("{} -o UserKnownHostsFile=/dev/null", s.rsh());
    let r = ping_with(&s, &rsh, &["-H", "root"]);
    assert_mentions(
        &r.error("root"),
        &[
            "ssh.root",
            "unknown host key",
            "Host key verification failed",
        ],
    );
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
}

#[test]
fn refused_authentication_is_a_clear_error_and_other_hosts_carry_on() {
    let Some(s) = Sshd::start() else { return };
    let nobody = format!("nobody@127.0.0.1:{}", s.port);
    let r = ping(&s, &["-H", &nobody, "-H", "root"]);
    assert_mentions(
        &r.error(&nobody),
        &[
            "ssh.nobody@127.0.0.1",
            "authentication refused",
            "Permission denied",
        ],
    );
    assert!(r.report("root")["error"].is_null());
    assert!(!r.out.status.success());
}

#[test]
fn unreachable_port_is_a_clear_error_within_the_timeout() {
    let Some(s) = Sshd::start() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let r = ping(&s, &["-H", &target, "--connect-timeout", "10"]);
    assert_mentions(
        &r.error(&target),
        &["connection refused", "Connection refused"],
    );
    assert!(r.took < Duration::from_secs(5), "took {:?}", r.took);
    // Alongside a good host, which carries on.
    let r = ping(&s, &["-H", &target, "-H", sshd::SUDOER]);
    assert_mentions(&r.error(&target), &["connection refused"]);
    assert!(r.report(sshd::SUDOER)["error"].is_null());
    assert!(!r.out.status.success());
}

#[test]
fn a_silent_server_times_out_within_the_connect_timeout() {
    let Some(s) = Sshd::start() else { return };
    // Accepts connections and never says anything.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    let target = format!("127.0.0.1:{port}");
    // (5 s: the other host may have to receive the binary first, on a
    // machine busy with the other tests.)
    let r = ping(&s, &["-H", &target, "-H", "root", "--connect-timeout", "5"]);
    let e = r.error(&target);
    assert!(
        e.contains("timed out") || e.contains("gave up after 5s"),
        "{e}"
    );
    assert!(r.report("root")["error"].is_null(), "{}", r.report("root"));
    assert!(r.took < Duration::from_secs(12), "took {:?}", r.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_killed_mid_call_fails_the_call_and_the_other_host_carries_on() {
    let Some(s) = Sshd::start() else { return };
    let c = controller();
    let a = connect_ssh(&c, &s, sshd::SUDOER).await;
    let b = connect_ssh(&c, &s, "root").await;
    let r = c.router.clone();
    let call = tokio::spawn(async move {
        let t0 = Instant::now();
        let res: Result<(), _> = r
            .call_service(a.id, common::TEST, "sleep_ms", &60_000u64)
            .await;
        (res, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sshd::kill(a.transport_pid);
    let (res, took) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the pending call ended")
        .expect("join");
    let e = res.expect_err("the call must fail").to_string();
    assert!(e.contains("ssh.fgsudo"), "{e}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    ping_ctx(&c, b.id)
        .await
        .expect("the other host still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_process_killed_fails_the_pending_call_promptly() {
    let Some(s) = Sshd::start() else { return };
    let c = controller();
    let a = connect_ssh(&c, &s, sshd::SUDOER).await;
    let b = connect_ssh(&c, &s, sshd::SUDOER).await;
    let r = c.router.clone();
    let call = tokio::spawn(async move {
        let res: Result<(), _> = r
            .call_service(a.id, common::TEST, "sleep_ms", &60_000u64)
            .await;
        res
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Loopback: the remote context is a process on this machine.
    sshd::kill(a.pid);
    let res = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the pending call ended promptly")
        .expect("join");
    assert!(res.is_err());
    ping_ctx(&c, b.id)
        .await
        .expect("the other context still answers");
}

#[test]
fn killed_while_sending_the_binary_leaves_no_temp_file() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::KILL);
    // An rsh that passes on only the first 2 MB of its stdin, then stalls:
    // the transfer stops mid-binary until the connect timeout kills it.
    // (`dd`, not `head -c`: GNU head holds what it read until it has the
    // whole count, and the handshake's Hello goes ahead of the binary.)
    let wrapper = s.dir.path().join("stalling-ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ dd bs=65536 count=2000000 iflag=count_bytes status=none; sleep 987; }} \
             | ssh -F {} \"$@\"\n",
            s.config.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let r = ping_with(
        &s,
        &wrapper.to_string_lossy(),
        &["-H", sshd::KILL, "--connect-timeout", "5"],
    );
    assert_mentions(&r.error(sshd::KILL), &["ssh.fgkill", "stalled"]);
    // The stub on the target sees the connection close and removes its
    // temp file; nothing is installed.
    let t0 = Instant::now();
    loop {
        let files = sshd::cache_files(sshd::KILL);
        if files.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "left behind: {files:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The wrapper's helpers (dd, sleep) went with the killed process group.
    // (Looked for everywhere: orphans would have been re-parented.)
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\0987\0"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// The handshake's Hello goes with the bootstrap stub, before the target
/// says anything (docs/protocol.md §11): a cached binary finds it on its
/// stdin and answers at once, a round trip sooner. The rsh here starts
/// the remote command only once the first byte of its stdin has come, so
/// a parent that waited for the stub before sending would never get an
/// answer (the connect timeout would fail it). Both a start that sends the
/// binary and a cached one come up.
#[test]
fn the_hello_goes_with_the_stub_before_the_target_says_anything() {
    let Some(s) = Sshd::start() else { return };
    let wrapper = s.dir.path().join("stdin-first-ssh");
    let first = s.dir.path().join("first-byte");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ndd bs=1 count=1 of={first} status=none || exit 1\n\
             {{ cat {first}; cat; }} | ssh -F {config} \"$@\"\n",
            first = first.display(),
            config = s.config.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let rsh = wrapper.to_string_lossy().into_owned();
    sshd::clear_cache(sshd::HELLO);
    for start in ["sends the binary", "finds it cached"] {
        let r = ping_with(
            &s,
            &rsh,
            &["-H", sshd::HELLO, "--connect-timeout", "20", "-v"],
        );
        r.assert_ok();
        assert_eq!(
            chain(&r.report(sshd::HELLO)),
            ["controller", &format!("ssh.{}", sshd::HELLO)],
            "{start}"
        );
    }
    assert_eq!(sshd::cache_files(sshd::HELLO).len(), 1);
}

// -------------------------------------------------------------------- sudo

#[test]
fn sudo_to_root_runs_over_the_existing_ssh_connection() {
    let Some(s) = Sshd::start() else { return };
    let r = ping(&s, &["-H", sshd::SUDOER, "--sudo", "root", "--sudo-arg=-E"]);
    r.assert_ok();
    assert_eq!(
        chain(&r.report(sshd::SUDOER)),
        ["controller", "ssh.fgsudo/sudo.root"]
    );
    assert_eq!(s.logins(sshd::SUDOER), 1, "exactly one ssh login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudo_reaches_a_third_account_that_cannot_read_the_first_ones_files() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::THIRD);
    // The third account cannot read the first account's home (0700).
    let probe = Command::new("sudo")
        .args(["-n", "-u", sshd::THIRD, "test", "-r"])
        .arg(sshd::cache_dir(sshd::SUDOER))
        .status()
        .expect("sudo test");
    assert!(
        !probe.success(),
        "{} can read {}'s cache",
        sshd::THIRD,
        sshd::SUDOER
    );

    let c = controller();
    let ssh = connect_ssh(&c, &s, sshd::SUDOER).await;
    let mut spec = ConnectSpec::new(Method::Sudo(SudoSpec::new(sshd::THIRD)));
    spec.connect_timeout_ms = 20_000;
    let third = connect::connect(&c.router, &spec, Some(ssh.id))
        .await
        .unwrap_or_else(|e| panic!("sudo: {e}"));
    assert!(matches!(third.boot, Boot::Sent { .. }), "{:?}", third.boot);
    assert_eq!(third.name, "ssh.fgsudo/sudo.fgthird");
    ping_ctx(&c, third.id).await.expect("ping the sudo context");
    // Its own cache holds the binary (other tests of this file sudo to
    // the same account at the same time and may add theirs: the count is
    // not checked; the cached start below shows ours is there).
    let files = sshd::cache_files(sshd::THIRD);
    assert!(!files.is_empty(), "{files:?}");
    let again = connect::connect(&c.router, &spec, Some(ssh.id))
        .await
        .unwrap_or_else(|e| panic!("sudo again: {e}"));
    assert!(
        matches!(again.boot, Boot::Cached { .. }),
        "{:?}",
        again.boot
    );
    assert_eq!(s.logins(sshd::SUDOER), 1, "sudo used no second ssh login");

    // The same from the command line.
    let r = ping(&s, &["-H", sshd::SUDOER, "--sudo", sshd::THIRD]);
    r.assert_ok();
}

#[test]
fn concurrent_first_sudo_connections_race_safely() {
    let Some(s) = Sshd::start() else { return };
    sshd::clear_cache(sshd::SUDO_RACE);
    let mut args = vec!["--sudo", sshd::SUDO_RACE];
    for _ in 0..4 {
        args.extend(["-H", sshd::SUDOER]);
    }
    let r = ping(&s, &args);
    r.assert_ok();
    let files = sshd::cache_files(sshd::SUDO_RACE);
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn sudo_that_needs_a_password_is_a_clear_error() {
    let Some(s) = Sshd::start() else { return };
    let r = ping(
        &s,
        &["-H", sshd::PASSWORD, "--sudo", "root", "-H", sshd::SUDOER],
    );
    assert_mentions(
        &r.error(sshd::PASSWORD),
        &[
            "ssh.fgpass/sudo.root",
            "requires a password for fgpass",
            "root",
        ],
    );
    assert!(r.report(sshd::SUDOER)["error"].is_null());
    assert!(r.took < Duration::from_secs(15), "took {:?}", r.took);
}

#[test]
fn sudo_refused_is_a_clear_error() {
    let Some(s) = Sshd::start() else { return };
    // A rule that does not cover the user asked for.
    let r = ping(
        &s,
        &["-H", sshd::LIMITED, "--sudo", "root", "-H", sshd::SUDOER],
    );
    assert_mentions(
        &r.error(sshd::LIMITED),
        &[
            "ssh.fglimited/sudo.root",
            "requires a password for fglimited to run commands as root",
            "rules for fglimited here (sudo -n -l) allow only: (fgthird) NOPASSWD: ALL",
        ],
    );
    assert!(r.report(sshd::SUDOER)["error"].is_null());
    // The rule does cover this one.
    ping(&s, &["-H", sshd::LIMITED, "--sudo", sshd::THIRD]).assert_ok();
    // No rule at all: sudo -n can only say that it would need a password.
    let r = ping(&s, &["-H", sshd::PLAIN, "--sudo", "root"]);
    assert_mentions(
        &r.error(sshd::PLAIN),
        &["ssh.fgplain/sudo.root", "requires a password for fgplain"],
    );
    let r = ping(&s, &["-H", sshd::SUDOER, "--sudo", "nosuchuser"]);
    assert_mentions(&r.error(sshd::SUDOER), &["no account nosuchuser"]);
    let r = ping(
        &s,
        &[
            "-H",
            sshd::SUDOER,
            "--sudo",
            "root",
            "--sudo-arg=--no-such-flag",
        ],
    );
    assert_mentions(
        &r.error(sshd::SUDOER),
        &["sudo.root", "rejected its arguments", "no-such-flag"],
    );
}

#[test]
fn missing_sudo_is_a_clear_error() {
    let Some(s) = Sshd::start() else { return };
    let r = ping(&s, &["-H", sshd::NO_SUDO, "--sudo", "root"]);
    assert_mentions(
        &r.error(sshd::NO_SUDO),
        &["could not start", "sudo", "fgnosudo", "installed"],
    );
}

// --------------------------------------------------------------------- via

#[test]
fn via_chain_local_ssh_ssh_sudo() {
    let Some(s) = Sshd::start() else { return };
    // controller -> local child -> ssh root -> ssh (ProxyJump) root -> sudo.
    let r = ping(
        &s,
        &[
            "--via",
            "local",
            "--via",
            "root",
            "--via",
            "jump",
            "-H",
            "sudo:fgplain",
        ],
    );
    r.assert_ok();
    let ch = chain(&r.report("sudo:fgplain"));
    assert_eq!(ch.len(), 5, "{ch:?}");
    assert!(ch[1].starts_with("local."), "{ch:?}");
    assert_eq!(&ch[2..], ["ssh.root", "ssh.jump", "ssh.jump/sudo.fgplain"]);

    // -H with --sudo behind a --via hop, and a ProxyJump alias as target.
    let r = ping(
        &s,
        &["--via", "root", "-H", "fgsudo-jump", "--sudo", sshd::THIRD],
    );
    r.assert_ok();
    assert_eq!(
        chain(&r.report("fgsudo-jump")),
        ["controller", "ssh.root", "ssh.fgsudo-jump/sudo.fgthird"]
    );

    // A failing hop is named.
    let r = ping(
        &s,
        &["--via", "root", "--via", "sudo:nosuchuser", "-H", "local"],
    );
    assert_mentions(
        &r.error("local"),
        &["hop 2", "sudo:nosuchuser", "no account nosuchuser"],
    );
}
