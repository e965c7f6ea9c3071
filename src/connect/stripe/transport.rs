//! One stripe transport: its process and pipes ([`Transport`]), the
//! command that starts it for a method, and the hello that turns it into a
//! stripe. Apart: both the controller's `open` and [`super::Early`] use it.

use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{ATTACH_ARG, StripeError, StripeHello, StripeOffer};
use crate::connect::handshake::forward_stderr;
use crate::connect::{ContextInfo, Method};
use crate::router::Router;
use crate::stream::{self, tokio_stream_shim::next_frame};
use crate::wire::{Enc, Frame, FrameCodec, codec, control, handles};

/// One spawned transport process and its pipes.
pub(super) struct Transport {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    tail: crate::connect::handshake::StderrTail,
    name: String,
    /// Waits for the `PID SOCKET` line (an [`Early`] transport).
    wants_line: bool,
    /// The program copies what it reads: its stdin may be spliced into.
    splice: bool,
}

pub(super) fn spawn_transport(
    mut cmd: Command,
    ctx_name: &str,
    n: usize,
) -> Result<Transport, StripeError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // A local transport (`__attach`) hands its pipes to the context, this
    // binary, which copies what it reads.
    let program = cmd.as_std().get_program();
    let splice = crate::connect::local::reads_by_copy(program)
        || crate::connect::local::child_program_override().is_some_and(|p| p == program)
        || std::env::current_exe().is_ok_and(|p| p == program);
    let mut child = cmd.spawn().map_err(StripeError::Spawn)?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.start_kill();
        return Err(StripeError::NoPipes);
    };
    {
        use std::os::fd::AsFd;
        let _ = rustix::pipe::fcntl_setpipe_size(stdin.as_fd(), crate::connect::local::PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(stdout.as_fd(), crate::connect::local::PIPE_SIZE);
    }
    let name = format!("{ctx_name}.stripe{n}");
    let tail = forward_stderr(name.clone(), stderr);
    Ok(Transport {
        child,
        stdin,
        stdout,
        tail,
        name,
        wants_line: false,
        splice,
    })
}

pub(super) async fn transport(
    method: &Method,
    offer: &StripeOffer,
) -> Result<Command, StripeError> {
    let socket = offer.socket.as_str();
    // The name goes into a remote shell command: only the characters
    // `listen` ever produces.
    if !plain_socket_name(socket) {
        return Err(StripeError::BadSocketName(socket.to_string()));
    }
    match method {
        Method::Local => {
            let exe = match crate::connect::local::child_program_override() {
                Some(p) => p,
                None => std::env::current_exe().map_err(StripeError::NoExe)?,
            };
            let mut c = Command::new(exe);
            c.arg(ATTACH_ARG).arg(socket);
            Ok(c)
        }
        Method::Ssh(ssh) => {
            // The very program the context runs (checked by the bootstrap
            // when it started; still the same inode even if its file has
            // since been replaced or removed) — never a path in a cache
            // directory that someone may have written to since.
            let remote = format!("exec /proc/{}/exe {ATTACH_ARG} {socket}", offer.pid);
            let argv = crate::connect::ssh::argv(ssh, Duration::from_secs(30), &remote);
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            Ok(c)
        }
        Method::Sudo(_) => Err(StripeError::ThroughSudo),
    }
}

impl Transport {
    /// This transport waits for the `PID SOCKET` line before the hello
    /// (an [`super::Early`] transport).
    pub(super) fn wanting_line(mut self) -> Transport {
        self.wants_line = true;
        self
    }

    /// Ends an unused transport.
    pub(super) fn end(mut self) {
        // Closing stdin ends the far end's `read`; the kill ends a
        // transport still connecting. Reaped in the background.
        let _ = self.child.start_kill();
        drop(self.stdin);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut child = self.child;
            rt.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }

    /// Sends the hello (after the `PID SOCKET` line for an early
    /// transport), waits for the context's answer, and attaches the
    /// transport as a stripe of `primary`.
    pub(super) async fn attach(
        mut self,
        router: &Router,
        ctx: &ContextInfo,
        offer: &StripeOffer,
        primary: crate::stream::StreamId,
    ) -> Result<(), StripeError> {
        let t0 = std::time::Instant::now();
        let buf = match self.handshake(router, ctx, offer).await {
            Ok(buf) => buf,
            Err(e) => {
                let _ = self.child.start_kill();
                return Err(e);
            }
        };
        let Transport {
            mut child,
            stdin,
            stdout,
            name,
            splice,
            ..
        } = self;
        let started = if splice {
            match stream::splice::SpliceWriter::take(stdin) {
                Ok(w) => stream::start_alias_spliced(router, name.clone(), primary, stdout, w, buf),
                Err(e) => {
                    let _ = child.start_kill();
                    return Err(StripeError::TakePipe(e));
                }
            }
        } else {
            stream::start_alias(router, name.clone(), primary, stdout, stdin, buf)
        };
        let Some(id) = started else {
            let _ = child.start_kill();
            return Err(StripeError::PrimaryGone);
        };
        tracing::debug!("{name}: attached {:?} after the hello", t0.elapsed());
        let router = router.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::debug!("{name}: transport exited");
            // The stripe lives as long as its transport. A local one's
            // `__attach` handed its pipes to the context and holds none,
            // so its end would not otherwise be seen: the stripe is ended
            // here, with anything still queued on it (a no-op when the
            // stream already ended, as it does first over ssh).
            let why = match status {
                Ok(s) => format!("its transport exited ({s})"),
                Err(e) => format!("its transport could not be waited for: {e}"),
            };
            router.stream_lost(id, &why);
        });
        Ok(())
    }

    /// Sends the line (if wanted) and the hello, and reads the context's
    /// answer: the bytes read past it, which belong to the stripe.
    async fn handshake(
        &mut self,
        router: &Router,
        ctx: &ContextInfo,
        offer: &StripeOffer,
    ) -> Result<BytesMut, StripeError> {
        let out = self.hello_bytes(router, ctx, offer)?;
        if let Err(e) = self.stdin.write_all(&out).await {
            return Err(StripeError::SendHello {
                source: e,
                said: self.tail.lines().join(" | "),
            });
        }
        let mut buf = BytesMut::with_capacity(4096);
        let mut codec = FrameCodec::new(4096);
        match next_frame(&mut self.stdout, &mut codec, &mut buf).await {
            Ok(Some(f)) if f.handle == handles::HELLO && !f.is_dead() => Ok(buf),
            Ok(other) => Err(StripeError::NoAnswer {
                got: other.map(Box::new),
                said: self.tail.lines().join(" | "),
            }),
            Err(e) => Err(StripeError::BadAnswer {
                source: e,
                said: self.tail.lines().join(" | "),
            }),
        }
    }

    /// The `PID SOCKET` line (an early transport) and the hello frame.
    fn hello_bytes(
        &self,
        router: &Router,
        ctx: &ContextInfo,
        offer: &StripeOffer,
    ) -> Result<Vec<u8>, StripeError> {
        let mut out = Vec::new();
        if self.wants_line {
            // What the far end's script accepts, checked here too so a
            // refusal there is not the first sign of a bad offer.
            if !plain_socket_name(&offer.socket) {
                return Err(StripeError::BadSocketName(offer.socket.clone()));
            }
            out.extend_from_slice(format!("{} {}\n", offer.pid, offer.socket).as_bytes());
        }
        let mut hello = Frame::new(
            ctx.id,
            handles::HELLO,
            Enc::Control,
            control::encode(&StripeHello {
                token: offer.token.clone(),
            }),
        );
        hello.src_id = router.id();
        hello.auth_id = router.id();
        out.extend_from_slice(&codec::encode_to_vec(&hello));
        Ok(out)
    }
}

/// Only the characters `listen` ever puts in a socket name (lowercase
/// letters, digits, dashes), and not empty: the name goes into a remote
/// shell command and the early transport's script.
fn plain_socket_name(socket: &str) -> bool {
    !socket.is_empty()
        && socket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
