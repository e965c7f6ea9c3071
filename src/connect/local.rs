//! `local`: this binary re-executed as a child process over pipes.

use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use tokio::process::{Child, Command};

use super::bootstrap::{self, BootPlan};
use super::handshake::{self, StderrTail, forward_stderr};
use super::{Boot, ConnectError, ConnectSpec, ContextInfo};
use crate::router::Router;
use crate::stream;
use crate::wire::control::{Hello, PROTOCOL_VERSION};

/// Pipe buffer size asked for on the child's stdio: a 128 KiB chunk fits
/// several times, so a writer rarely blocks mid-frame.
pub const PIPE_SIZE: usize = 1024 * 1024;

use super::program::child_program;
pub use super::program::{CHILD_ARG, child_program_override, set_child_program};

/// Starts a child of this context running this binary.
pub async fn connect(router: &Router, spec: &ConnectSpec) -> Result<ContextInfo, ConnectError> {
    let exe = child_program().map_err(|e| ConnectError::Spawn {
        method: "local".into(),
        program: "the current executable".into(),
        cause: e.to_string(),
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg(CHILD_ARG);
    let launch_as = Launch {
        // The reader is this binary's child, which copies what it reads.
        splice_stdin: true,
        ..Launch::new("local")
    };
    launch(router, spec, cmd, launch_as).await
}

/// True if `program` is one known to copy what it reads from its stdin
/// (`read`, never `splice`), so that the pipe to it may be spliced into
/// ([`stream::splice`]): OpenSSH's `ssh`, by its file name. A wrapper of
/// another name (`-e ./my-ssh`) is not assumed to: one that piped through
/// `pv` would pass our pages on by reference.
///
/// Not `sudo`: what reads its stdin may be the target user's own process
/// (sudo without `use_pty` hands the pipe on), and a reader that kept
/// references to our pages (`tee`, `splice`) could read whatever this
/// process later put in that memory — another target's data. The readers
/// here run as this process's user, who could read its memory anyway.
pub(crate) fn reads_by_copy(program: &std::ffi::OsStr) -> bool {
    super::is_openssh_client(program)
}

/// Turns the last lines a process wrote to stderr into a short cause.
pub type Explain = Box<dyn Fn(&[String]) -> Option<String> + Send + Sync>;

/// How [`launch`] runs, names and diagnoses a process.
pub struct Launch {
    /// Method name for messages: `local`, `ssh`, `sudo`.
    pub method: &'static str,
    /// The context's name; `None` = `<method>.<pid>`.
    pub name: Option<String>,
    /// The process runs a [`bootstrap`] stub first.
    pub boot: Option<BootPlan>,
    /// Recognises causes in the process's stderr (e.g. ssh's "Permission
    /// denied").
    pub explain: Option<Explain>,
    /// What to call the program in a spawn error (default: its path).
    pub program: Option<String>,
    /// Start it in a new session, without a controlling terminal, so that
    /// nothing it runs can prompt on the user's terminal (a prompt would
    /// otherwise stop or hang it); a prompt fails at once instead.
    pub detach: bool,
    /// The handshake's `Hello`, made before the process starts (its id
    /// allocated: [`early_hello`]) when it goes with the bootstrap stub
    /// ([`BootPlan::with_early_hello`]).
    pub hello: Option<Hello>,
    /// Large payloads written to the process are spliced into its stdin
    /// (`vmsplice`, the stream's `splice` writer): only for a process of
    /// this user known to copy what it reads (this binary, OpenSSH's `ssh`;
    /// not one that might pass the pages on, as a `pv` in a wrapper could).
    pub splice_stdin: bool,
}

/// The `Hello` for a context named `name` that a bootstrap stub will
/// start: its id allocated now, so that the frame can be written with the
/// stub ([`BootPlan::with_early_hello`]).
pub async fn early_hello(
    router: &Router,
    spec: &ConnectSpec,
    method: &'static str,
    name: &str,
) -> Result<Hello, ConnectError> {
    let id = allocate(router, method).await?;
    Ok(hello(router, spec, id, name))
}

/// A new context id for a `method` connection.
async fn allocate(
    router: &Router,
    method: &'static str,
) -> Result<crate::wire::ContextId, ConnectError> {
    router
        .allocate_id()
        .await
        .map_err(|source| ConnectError::NoId {
            method: method.to_string(),
            source,
        })
}

/// The `Hello` this context sends a child `id` named `name`.
fn hello(router: &Router, spec: &ConnectSpec, id: crate::wire::ContextId, name: &str) -> Hello {
    let mut parent_ids = vec![router.id()];
    parent_ids.extend_from_slice(router.parent_ids());
    Hello {
        version: PROTOCOL_VERSION,
        context_id: id,
        parent_ids,
        name: name.to_string(),
        max_message_size: router.max_message_size() as u64,
        log_filter: spec.log_filter.clone(),
    }
}

impl Launch {
    /// A plain launch for `method`.
    pub fn new(method: &'static str) -> Launch {
        Launch {
            method,
            name: None,
            boot: None,
            explain: None,
            program: None,
            detach: false,
            hello: None,
            splice_stdin: false,
        }
    }
}

/// Starts `cmd` (which must run a context on its stdio, directly or through
/// a bootstrap stub), performs the handshake and attaches the stream. Shared
/// by every method that runs a process on this host.
pub async fn launch(
    router: &Router,
    spec: &ConnectSpec,
    mut cmd: Command,
    launch: Launch,
) -> Result<ContextInfo, ConnectError> {
    let method = launch.method;
    let id = match &launch.hello {
        Some(h) => h.context_id,
        None => allocate(router, method).await?,
    };
    prepare(&mut cmd, launch.detach);
    let mut child = spawn(&mut cmd, &launch)?;
    let pid = child.id().unwrap_or_default();
    spec.spawned.publish(pid);
    let name = launch
        .name
        .clone()
        .unwrap_or_else(|| format!("{method}.{pid}"));
    let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_group(pid);
        let _ = child.start_kill();
        return Err(ConnectError::NoPipes { name });
    };
    // Best effort: bigger pipes mean fewer wake-ups per chunk.
    {
        use std::os::fd::AsFd;
        let _ = rustix::pipe::fcntl_setpipe_size(stdin.as_fd(), PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(stdout.as_fd(), PIPE_SIZE);
    }
    let tail = forward_stderr(name.clone(), stderr);
    let early = write_early_hello(&launch, &mut stdin).await;
    let (boot, buffered, hello_sent) = match &launch.boot {
        None => (Boot::Exec, BytesMut::new(), false),
        Some(plan) => {
            match bootstrap::parent_side(&name, &mut stdout, &mut stdin, plan, spec.timeout()).await
            {
                Ok(started) => booted(&name, plan, started, early),
                Err(f) => {
                    let explain = !f.diagnosed;
                    return Err(
                        fail(child, pid, &tail, &launch, &name, f.detail, f.eof, explain).await,
                    );
                }
            }
        }
    };
    let hello = match launch.hello.clone() {
        Some(h) => h,
        None => hello(router, spec, id, &name),
    };
    let result = handshake::parent_side_buffered(
        &mut stdout,
        &mut stdin,
        &hello,
        router.id(),
        spec.timeout(),
        buffered,
        hello_sent,
    )
    .await;
    let (ready, buffered) = match result {
        Ok(r) => r,
        Err(e) => {
            let eof = e == handshake::HandshakeError::Exited;
            let detail = e.to_string();
            return Err(fail(child, pid, &tail, &launch, &name, detail, eof, true).await);
        }
    };
    if launch.splice_stdin {
        // The handshake is done: from here on, large payloads are spliced.
        match stream::splice::SpliceWriter::take(stdin) {
            Ok(writer) => {
                stream::start_spliced(router, name.clone(), id, false, stdout, writer, buffered)
            }
            Err(e) => {
                let detail = format!("cannot take over the pipe to the child: {e}");
                return Err(fail(child, pid, &tail, &launch, &name, detail, false, false).await);
            }
        };
    } else {
        stream::start(router, name.clone(), id, false, stdout, stdin, buffered);
    }
    router.announce_route(id, &name);
    reap(child, name.clone());
    Ok(ContextInfo {
        id,
        name,
        pid: ready.pid,
        arch: ready.arch,
        boot,
        transport_pid: pid,
    })
}

/// Sets up `cmd`'s stdio as the stream's pipes, and its session or
/// process group.
fn prepare(cmd: &mut Command, detach: bool) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if detach {
        // SAFETY: setsid() is async-signal-safe and touches no memory of
        // the parent; it runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    } else {
        // Keep terminal signals (Ctrl-C) for the controller, which shuts
        // the tree down in order; children still exit on EOF if it dies.
        cmd.process_group(0);
    }
}

/// Starts the process, or says which program could not be started.
fn spawn(cmd: &mut Command, launch: &Launch) -> Result<Child, ConnectError> {
    let program = launch
        .program
        .clone()
        .unwrap_or_else(|| format!("{:?}", cmd.as_std().get_program()));
    cmd.spawn().map_err(|e| ConnectError::Spawn {
        method: launch.method.into(),
        program,
        cause: if e.kind() == std::io::ErrorKind::NotFound {
            format!("{e} (is it installed and on PATH?)")
        } else {
            e.to_string()
        },
    })
}

/// Writes the Hello that goes with the stub, before the stub says
/// anything (if the stub is already gone, its own output says why).
/// True if there was one.
async fn write_early_hello(launch: &Launch, stdin: &mut tokio::process::ChildStdin) -> bool {
    let early = launch
        .boot
        .as_ref()
        .and_then(|p| p.early_hello.as_ref())
        .filter(|_| launch.hello.is_some());
    if let Some(frame) = early {
        use tokio::io::AsyncWriteExt;
        if stdin.write_all(frame).await.is_ok() {
            let _ = stdin.flush().await;
        }
    }
    early.is_some()
}

/// How the bootstrap started the binary (logged), what the target wrote
/// after it, and whether the binary already read the Hello sent with the
/// stub (`early`).
fn booted(
    name: &str,
    plan: &BootPlan,
    started: bootstrap::Started,
    early: bool,
) -> (Boot, BytesMut, bool) {
    let Some(bytes) = started.sent else {
        // The cached copy read the Hello sent with the stub; a stub that
        // received the binary dropped it.
        tracing::info!(
            "{name}: started the cached binary on {} (nothing sent)",
            started.system
        );
        let boot = Boot::Cached {
            system: started.system,
        };
        return (boot, started.buffered, early);
    };
    let place = if started.temp {
        "a private temporary directory (not cached)".to_string()
    } else {
        format!("the cache, {}", plan.binary.cache_key())
    };
    tracing::info!(
        "{name}: sent the binary ({bytes} bytes) to {}; installed in {place}",
        started.system,
    );
    let boot = Boot::Sent {
        system: started.system,
        bytes,
    };
    (boot, started.buffered, false)
}

/// Reaps the child once it exits (its exit is logged).
fn reap(mut child: Child, name: String) {
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => tracing::debug!("{name} exited: {status}"),
            Err(e) => tracing::warn!("{name}: wait failed: {e}"),
        }
    });
}

/// SIGKILLs the process group `pgid` (the group [`launch`] created for a
/// child: the child and anything it started, e.g. ssh's ProxyJump ssh).
fn kill_group(pgid: u32) {
    if let Some(p) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Ends a process whose start failed and builds the error: its exit status
/// (if it exited by itself), a cause recognised in its stderr (if
/// `explain`: not when the bootstrap already named the cause), and the tail.
#[allow(clippy::too_many_arguments)]
async fn fail(
    mut child: Child,
    pid: u32,
    tail: &StderrTail,
    launch: &Launch,
    name: &str,
    detail: String,
    eof: bool,
    explain: bool,
) -> ConnectError {
    // Its output closed: it is probably exiting; give it a moment so the
    // error can carry its status.
    let status = if eof {
        match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        }
    } else {
        None
    };
    kill_group(pid);
    if status.is_none() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // Let the stderr task drain what the child said before dying.
    tail.wait_closed(Duration::from_millis(500)).await;
    let lines = tail.lines();
    let mut detail = detail;
    if let Some(status) = status {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => detail = format!("{detail} (exit status {code})"),
            (None, Some(sig)) => detail = format!("{detail} (killed by signal {sig})"),
            _ => {}
        }
    }
    if let Some(why) = launch
        .explain
        .as_ref()
        .filter(|_| explain)
        .and_then(|f| f(&lines))
    {
        detail = format!("{why}; {detail}");
    }
    ConnectError::Handshake {
        method: launch.method.into(),
        name: name.to_string(),
        detail,
        stderr: lines,
    }
}

#[cfg(test)]
mod tests {
    use super::reads_by_copy;

    #[test]
    fn only_ssh_by_name_is_taken_to_copy_what_it_reads() {
        for yes in ["ssh", "/usr/bin/ssh", "./ssh"] {
            assert!(reads_by_copy(yes.as_ref()), "{yes}");
        }
        for no in [
            "",
            "sshpass",
            "my-ssh",
            "/opt/ssh/wrapper",
            "pv",
            "ssh.sh",
            "/",
            // Its reader may be another user's process.
            "sudo",
            "/usr/bin/sudo",
        ] {
            assert!(!reads_by_copy(no.as_ref()), "{no}");
        }
    }
}
