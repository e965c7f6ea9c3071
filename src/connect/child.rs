//! The child side: running a context on this process's stdin/stdout.
//!
//! The stream's descriptors are moved off fds 0 and 1 first (stdin becomes
//! `/dev/null`, stdout becomes stderr), so nothing else in the process can
//! corrupt the frame stream by printing. The context then lives until its
//! parent stream closes — also when the parent was SIGKILLed, since that
//! closes the pipe — or a parent asks it to shut down.

use std::os::fd::{AsFd, OwnedFd};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

use crate::router::{Policy, Router, RouterConfig};
use crate::service::Services;
use crate::stream::{self, tokio_stream_shim::next_frame};
use crate::wire::control::{self, Hello, PROTOCOL_VERSION, Ready};
use crate::wire::{Enc, Frame, FrameCodec, codec, handles};

/// Hook that registers extra services in every child (set by the binary).
pub type ServiceHook = fn(&Services, &Router);

/// Runs a context on stdio until its parent goes away. Returns the process
/// exit code.
pub fn run(extra_services: ServiceHook) -> i32 {
    // The bootstrap stub's check of a freshly received copy: hash our own
    // executable and exit (see `bootstrap`).
    if let Some(expected) = std::env::var_os(crate::connect::bootstrap::VERIFY_ENV) {
        return crate::connect::bootstrap::verify_self(&expected.to_string_lossy());
    }
    // Installed in a temporary directory (the target had no usable cache):
    // remove it now; the running image needs no path.
    if let Some(dir) = std::env::var_os(crate::connect::bootstrap::TEMP_DIR_ENV) {
        // SAFETY: no other thread exists yet (the runtime starts below), so
        // nothing can read the environment concurrently.
        unsafe { std::env::remove_var(crate::connect::bootstrap::TEMP_DIR_ENV) };
        crate::connect::bootstrap::remove_temp_install(std::path::Path::new(&dir));
    }
    let (rfd, wfd) = match take_stdio() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("ERROR could not take over stdio: {e}");
            return 2;
        }
    };
    // One thread: a context's reader, writer and services then hand
    // frames to each other without cross-thread wake-ups (measured in
    // benches/bus.rs: about half the call latency and less CPU per MiB than
    // two workers; see docs/benchmarks.md). Blocking work belongs in
    // spawn_blocking, as everywhere.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR could not start the runtime: {e}");
            return 2;
        }
    };
    rt.block_on(async move {
        match serve(rfd, wfd, extra_services).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ERROR {e}");
                1
            }
        }
    })
}

fn take_stdio() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    // CLOEXEC copies above 2: our own children must not inherit them, or
    // they would hold our parent's pipe open and defeat EOF detection.
    let r = rustix::io::fcntl_dupfd_cloexec(stdin.as_fd(), 3)?;
    let w = rustix::io::fcntl_dupfd_cloexec(stdout.as_fd(), 3)?;
    // Where there is no /dev/null (an empty chroot, a minimal container),
    // the read end of a pipe whose write end is closed reads EOF just the
    // same.
    let null: OwnedFd = match std::fs::File::open("/dev/null") {
        Ok(f) => f.into(),
        Err(_) => rustix::pipe::pipe()?.0,
    };
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(std::io::stderr().as_fd())?;
    rustix::io::ioctl_fionbio(&r, true)?;
    rustix::io::ioctl_fionbio(&w, true)?;
    // Best effort, as the parent does for a local child: sshd's pipes are
    // the default 64 KiB, so sshd handed the stream over in 64 KiB writes,
    // a wake-up of each side per write.
    let _ = rustix::pipe::fcntl_setpipe_size(&r, crate::connect::local::PIPE_SIZE);
    let _ = rustix::pipe::fcntl_setpipe_size(&w, crate::connect::local::PIPE_SIZE);
    Ok((r, w))
}

/// Why a child context could not start (said on stderr, where the parent
/// reads it).
#[derive(Debug, thiserror::Error)]
enum ChildError {
    /// Its stdin or stdout could not be used.
    #[error("{which}: {source}")]
    Stdio {
        /// `stdin` or `stdout`.
        which: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The parent hung up first.
    #[error("parent closed the stream before the handshake")]
    NoHandshake,
    /// The first frame was not a handshake that decodes.
    #[error("bad handshake: {0}")]
    BadHandshake(String),
    /// Another frame came first.
    #[error("expected a handshake, got {0:?}")]
    NotHandshake(Box<Frame>),
    /// The parent speaks another protocol version.
    #[error("protocol version mismatch")]
    Version,
    /// The shutdown handle was taken (a bug).
    #[error(transparent)]
    Handle(#[from] crate::router::HandleInUse),
    /// The handshake's answer could not be written.
    #[error("could not answer the handshake: {0}")]
    Answer(#[source] std::io::Error),
}

async fn serve(rfd: OwnedFd, wfd: OwnedFd, extra_services: ServiceHook) -> Result<(), ChildError> {
    let stdio = |which| move |source| ChildError::Stdio { which, source };
    let mut reader = pipe::Receiver::from_owned_fd_unchecked(rfd).map_err(stdio("stdin"))?;
    let mut writer = pipe::Sender::from_owned_fd_unchecked(wfd).map_err(stdio("stdout"))?;

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut codec = FrameCodec::new(64 * 1024);
    let first = match next_frame(&mut reader, &mut codec, &mut buf).await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(ChildError::NoHandshake),
        Err(e) => return Err(ChildError::BadHandshake(e.to_string())),
    };
    if first.handle != handles::HELLO {
        return Err(ChildError::NotHandshake(Box::new(first)));
    }
    let hello: Hello =
        control::decode_frame(&first).map_err(|e| ChildError::BadHandshake(e.to_string()))?;
    let parent = hello.parent_ids.first().copied().unwrap_or(0);
    if hello.version != PROTOCOL_VERSION {
        let mut dead = Frame::dead(
            parent,
            handles::HELLO,
            &format!(
                "protocol version mismatch: parent speaks {}, this binary {PROTOCOL_VERSION}",
                hello.version
            ),
        );
        dead.src_id = hello.context_id;
        dead.auth_id = hello.context_id;
        let _ = writer.write_all(&codec::encode_to_vec(&dead)).await;
        return Err(ChildError::Version);
    }
    init_logging(&hello.log_filter);

    let router = Router::new(RouterConfig {
        id: hello.context_id,
        name: hello.name.clone(),
        parent_ids: hello.parent_ids.clone(),
        max_message_size: usize::try_from(hello.max_message_size).unwrap_or(usize::MAX),
    });
    let services = Services::start(&router);
    crate::connect::register_service(&services, &router);
    crate::ping::register_service(&services, &router);
    extra_services(&services, &router);
    let mut shutdown =
        router.add_handler(Some(handles::SHUTDOWN), Policy::ParentsOnly, None, true)?;

    let ready = Ready {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        arch: std::env::consts::ARCH.to_string(),
    };
    let mut reply = Frame::new(
        parent,
        handles::HELLO,
        Enc::Control,
        control::encode(&ready),
    );
    reply.src_id = hello.context_id;
    reply.auth_id = hello.context_id;
    writer
        .write_all(&codec::encode_to_vec(&reply))
        .await
        .map_err(ChildError::Answer)?;

    stream::start(&router, "parent".into(), parent, true, reader, writer, buf);
    tracing::debug!("{} up as context {}", hello.name, hello.context_id);

    let why = tokio::select! {
        reason = router.parent_lost() => format!("parent stream lost: {reason}"),
        why = shutdown_requested(&mut shutdown) => why,
    };
    tracing::debug!("{}: exiting: {why}", hello.name);
    services.shutdown().await;
    router.close_all_streams(&why);
    Ok(())
}

/// Waits for a SHUTDOWN request. A dead message to the handle is not one:
/// it is logged and ignored, so no forged or stray dead frame can stop a
/// context (`docs/protocol.md` §Trust).
async fn shutdown_requested(shutdown: &mut crate::channel::Receiver) -> String {
    loop {
        match shutdown.recv().await {
            Ok(_) => return "shutdown requested".to_string(),
            Err(crate::channel::ChannelError::Dead(why)) => {
                tracing::warn!("ignored a dead message to the shutdown handle: {why}");
            }
            Err(e) => return format!("shutdown handle closed: {e}"),
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        // Once the parent is gone, stderr (a pipe to it) fails with EPIPE;
        // reporting that with eprintln! would panic whichever task logged,
        // possibly the one that must notice the parent is gone.
        .log_internal_errors(false)
        .with_env_filter(filter)
        .try_init();
}
