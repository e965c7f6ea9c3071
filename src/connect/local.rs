//! `local`: this binary re-executed as a child process over pipes.

use std::process::Stdio;

use tokio::process::Command;

use super::handshake::{self, forward_stderr};
use super::{ConnectError, ConnectSpec, ContextInfo};
use crate::router::Router;
use crate::stream;
use crate::wire::control::{Hello, PROTOCOL_VERSION};

/// The hidden sub-command that runs a context on stdin/stdout.
pub const CHILD_ARG: &str = "__context";

/// Pipe buffer size asked for on the child's stdio: a 128 KiB chunk fits
/// several times, so a writer rarely blocks mid-frame.
pub const PIPE_SIZE: usize = 1024 * 1024;

static CHILD_PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes this process start `path` (instead of its own executable) for local
/// children. For test harnesses and embedders whose process is not the
/// `ferrogen` binary; `path` must run [`crate::connect::child::run`] when
/// given [`CHILD_ARG`]. Only the first call has an effect.
pub fn set_child_program(path: impl Into<std::path::PathBuf>) {
    let _ = CHILD_PROGRAM.set(path.into());
}

fn child_program() -> std::io::Result<std::path::PathBuf> {
    match CHILD_PROGRAM.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe(),
    }
}

/// Starts a child of this context running this binary.
pub async fn connect(router: &Router, spec: &ConnectSpec) -> Result<ContextInfo, ConnectError> {
    let exe = child_program().map_err(|e| ConnectError::Spawn {
        method: "local".into(),
        program: "the current executable".into(),
        cause: e.to_string(),
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg(CHILD_ARG);
    start(router, spec, cmd, "local").await
}

/// Starts `cmd` (which must run a context on its stdio), performs the
/// handshake and attaches the stream. Shared by every method that runs a
/// process on this host.
pub async fn start(
    router: &Router,
    spec: &ConnectSpec,
    mut cmd: Command,
    method: &str,
) -> Result<ContextInfo, ConnectError> {
    let id = router.allocate_id().await.map_err(|e| {
        ConnectError::Other(format!("{method}: could not allocate a context id: {e}"))
    })?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Keep terminal signals (Ctrl-C) for the controller, which shuts
        // the tree down in order; children still exit on EOF if it dies.
        .process_group(0)
        .kill_on_drop(false);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd.spawn().map_err(|e| ConnectError::Spawn {
        method: method.into(),
        program: program.clone(),
        cause: e.to_string(),
    })?;
    let pid = child.id().unwrap_or_default();
    let name = format!("{method}.{pid}");
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ConnectError::Other(format!("{name}: stdio pipes missing")));
    };
    // Best effort: bigger pipes mean fewer wake-ups per chunk.
    {
        use std::os::fd::AsFd;
        let _ = rustix::pipe::fcntl_setpipe_size(stdin.as_fd(), PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(stdout.as_fd(), PIPE_SIZE);
    }
    let tail = forward_stderr(name.clone(), stderr);

    let mut parent_ids = vec![router.id()];
    parent_ids.extend_from_slice(router.parent_ids());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        context_id: id,
        parent_ids,
        name: name.clone(),
        max_message_size: router.max_message_size() as u64,
        log_filter: spec.log_filter.clone(),
    };
    let result =
        handshake::parent_side(&mut stdout, &mut stdin, &hello, router.id(), spec.timeout()).await;
    let (ready, buffered) = match result {
        Ok(r) => r,
        Err(detail) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            // Let the stderr task drain what the child said before dying.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return Err(ConnectError::Handshake {
                method: method.into(),
                name,
                detail,
                stderr: tail.lines(),
            });
        }
    };
    stream::start(router, name.clone(), id, false, stdout, stdin, buffered);
    router.announce_route(id, &name);
    let reap_name = name.clone();
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::debug!("{reap_name} exited: {status}"),
            Err(e) => tracing::warn!("{reap_name}: wait failed: {e}"),
        }
    });
    Ok(ContextInfo {
        id,
        name,
        pid: ready.pid,
        arch: ready.arch,
    })
}
