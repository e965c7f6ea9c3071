//! Lifetime of local contexts: a child exits when its parent stream closes
//! (also when the parent is SIGKILLed, taking a whole tree with it) or when
//! asked to shut down, and its stderr logs reach the parent's log tagged
//! with its name.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Controller, PROMPTLY, alive, descendants, kill, wait_gone};
use ferrogen::router::{Router, RouterConfig};
use ferrogen::wire::{DEFAULT_MAX_MESSAGE_SIZE, Enc, Frame, handles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_exit_when_the_parent_closes_their_streams() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(Some(a.id)).await;
    assert!(alive(a.pid) && alive(b.pid));
    c.router.close_all_streams("test: closing");
    assert!(
        wait_gone(a.pid, PROMPTLY).await,
        "child {} still running",
        a.pid
    );
    assert!(
        wait_gone(b.pid, PROMPTLY).await,
        "grandchild {} still running",
        b.pid
    );
}

/// A context's router remembers that its parent stream is gone even if
/// nobody was waiting for that yet (a child whose parent closes the stream
/// before the child's main task starts waiting must still exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_loss_is_seen_by_a_late_waiter() {
    let router = Router::new(RouterConfig {
        id: 7,
        name: "inproc.7".into(),
        parent_ids: vec![0],
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
    });
    let (ours, theirs) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(theirs);
    ferrogen::stream::start(&router, "parent".into(), 0, true, r, w, BytesMut::new());
    assert!(router.stream_towards(0).is_some());
    drop(ours);
    let t0 = Instant::now();
    while router.stream_towards(0).is_some() {
        assert!(
            t0.elapsed() < PROMPTLY,
            "the closed parent stream was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reason = tokio::time::timeout(PROMPTLY, router.parent_lost())
        .await
        .expect("parent_lost() must resolve after the fact");
    assert!(reason.contains("parent"), "{reason}");
}

/// The same race with real processes: the parent closes the stream right
/// after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_exit_when_closed_right_after_the_handshake() {
    let mut pids = Vec::new();
    for _ in 0..5 {
        let c = Controller::new();
        let a = c.connect(None).await;
        c.router.close_all_streams("test: closing at once");
        pids.push(a.pid);
    }
    for pid in pids {
        assert!(wait_gone(pid, PROMPTLY).await, "child {pid} still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_message_from_the_parent_stops_a_child() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(Some(a.id)).await;
    // To the grandchild from the controller (an ancestor, so allowed):
    // it shuts down, its parent survives and notices.
    c.router.send(Frame::new(
        b.id,
        handles::SHUTDOWN,
        Enc::Control,
        Bytes::new(),
    ));
    assert!(
        wait_gone(b.pid, PROMPTLY).await,
        "grandchild {} still running",
        b.pid
    );
    let r: u32 = c.call(a.id, "anyone", &1u32).await;
    assert_eq!(r, 2);
    c.router.send(Frame::new(
        a.id,
        handles::SHUTDOWN,
        Enc::Control,
        Bytes::new(),
    ));
    assert!(
        wait_gone(a.pid, PROMPTLY).await,
        "child {} still running",
        a.pid
    );
}

/// Kills a set of pids on drop (only those still running a context).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            common::kill_context(pid);
        }
    }
}

fn ferrogen() -> Command {
    common::init();
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_controller_takes_the_whole_tree_down() {
    let mut ctl = ferrogen()
        // -vv: the contexts log (to the parent, which is gone) while they
        // notice that; that must not stop them.
        .args([
            "-vv",
            "ping",
            "--via",
            "local",
            "--via",
            "local",
            "-c",
            "100000000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ferrogen");
    let ctl_pid = ctl.id();

    // Wait for the three levels: two hops and the target.
    let t0 = Instant::now();
    let mut tree = Vec::new();
    while t0.elapsed() < Duration::from_secs(30) {
        tree = descendants(ctl_pid);
        if tree.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _reaper = Reaper(tree.clone());
    if tree.len() < 3 {
        kill(ctl_pid);
        let _ = ctl.wait();
        panic!("the tree never reached 3 contexts: {tree:?}");
    }
    assert_eq!(tree.len(), 3, "{tree:?}");

    kill(ctl_pid);
    let _ = ctl.wait();
    for &pid in &tree {
        assert!(
            wait_gone(pid, PROMPTLY).await,
            "context {pid} outlived its SIGKILLed controller"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_logs_reach_the_parent_tagged_with_its_name() {
    let out = ferrogen()
        .args(["-vv", "ping", "-c", "1000"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ferrogen");
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferrogen ping failed:\n{stderr}");
    // The child logs "<name> up as context 1" to its stderr, which is a
    // pipe to the parent: the line can only be here if it was forwarded.
    let line = stderr
        .lines()
        .find(|l| l.contains("up as context 1"))
        .unwrap_or_else(|| panic!("no child log line in the parent's stderr:\n{stderr}"));
    let name = line
        .split_whitespace()
        .find_map(|w| {
            let w = w.trim_start_matches("context=");
            let pid = w.strip_prefix("local.")?;
            pid.parse::<u32>().ok().map(|_| w.to_string())
        })
        .unwrap_or_else(|| panic!("no context name in {line:?}"));
    assert!(
        line.contains(&format!("context={name}")),
        "the forwarded line is not tagged with {name}: {line:?}"
    );
    // The parent has exited: the child, still logging as it notices, goes too.
    let pid: u32 = name["local.".len()..].parse().unwrap();
    let _reaper = Reaper(vec![pid]);
    assert!(
        wait_gone(pid, PROMPTLY).await,
        "context {pid} outlived its parent"
    );
}

/// The text without ANSI escape sequences (the log may be coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}
