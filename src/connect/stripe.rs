//! Stripes: extra streams to a context that is already connected, so one
//! transfer can use several transport channels at once.
//!
//! One OpenSSH session channel moves at most its window (2 MiB) per round
//! trip, whatever the link could carry — ≈18 MiB/s at 100 ms. A stripe is
//! another transport (another `ssh` connection, or a local pipe) whose far
//! end runs `ferrogen __attach NAME`: a relay that connects its stdio to a
//! Unix socket the context listens on (abstract namespace, so nothing on
//! disk). The context checks the stripe's token and attaches it as an alias
//! of its parent stream ([`crate::stream::start_alias`]); the controller
//! attaches its end as an alias of the stream to that context. Routing is
//! unchanged — stripes only carry bulk data, which the FileService spreads
//! over them and the receiver puts back in order by offset.
//!
//! * child side: the `ferrogen.stripe` service (`listen`, parents only);
//! * `__attach`: [`relay`];
//! * controller side: [`open`].

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::handshake::forward_stderr;
use super::{ContextInfo, Method};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::stream::{self, tokio_stream_shim::next_frame};
use crate::wire::{Enc, Frame, FrameCodec, codec, control, handles};

/// Service name.
pub const STRIPE_SERVICE: &str = "ferrogen.stripe";

/// Time a connection to the stripe socket has to present its token. A real
/// stripe sends it at once (its transport is already up when it connects).
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);

/// Connections waiting for their token at once; past this, new connections
/// are closed at once, so silent connections cannot pile up fds and tasks.
pub const MAX_PENDING: usize = 16;

/// The hidden sub-command that relays stdio to a context's stripe socket.
pub const ATTACH_ARG: &str = "__attach";

/// Where and how to attach stripes to a context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeOffer {
    /// Abstract Unix socket name.
    pub socket: String,
    /// The listening context's process id: a stripe's transport runs that
    /// very program (`/proc/PID/exe`), already verified when the context
    /// was booted, rather than whatever sits in a cache directory now.
    pub pid: u32,
    /// Secret the first frame on a stripe must carry.
    pub token: String,
}

/// First frame on a stripe, controller → context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StripeHello {
    token: String,
}

/// Why a stripe could not be offered, opened or attached.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// No random bytes for the socket name or token.
    #[error("no randomness: {0}")]
    NoRandomness(getrandom::Error),
    /// A thread panicked holding the listener's state.
    #[error("stripe listener state poisoned")]
    Poisoned,
    /// The socket's abstract name was refused.
    #[error("stripe socket name: {0}")]
    SocketName(#[source] std::io::Error),
    /// The listening socket could not be made.
    #[error("stripe socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The connecting side sent no token in time.
    #[error("no token within {0:?}")]
    NoToken(Duration),
    /// What came on the socket does not decode.
    #[error(transparent)]
    Frame(#[from] crate::wire::DecodeError),
    /// The connecting side hung up first.
    #[error("closed before the hello")]
    ClosedBeforeHello,
    /// The hello does not decode.
    #[error(transparent)]
    Hello(#[from] control::ControlDecodeError),
    /// The token is not this context's.
    #[error("wrong token")]
    WrongToken,
    /// This context has no parent stream to add the stripe to.
    #[error("no parent stream")]
    NoParentStream,
    /// The parent stream went away meanwhile.
    #[error("parent stream gone")]
    ParentGone,
    /// The answer to the hello could not be written.
    #[error(transparent)]
    Write(std::io::Error),
    /// The transport process could not be started.
    #[error("cannot start the stripe transport: {0}")]
    Spawn(#[source] std::io::Error),
    /// It came without its stdio pipes.
    #[error("stdio pipes missing")]
    NoPipes,
    /// A socket name that is not one `listen` makes.
    #[error("refusing the stripe socket name {0:?}")]
    BadSocketName(String),
    /// This program's executable could not be found.
    #[error(transparent)]
    NoExe(std::io::Error),
    /// A sudo context: stripes go to the ssh or local context.
    #[error("stripes are opened to the ssh or local context, not through sudo")]
    ThroughSudo,
    /// The hello could not be written to the transport.
    #[error("cannot send the stripe hello: {source}; transport said: {said}")]
    SendHello {
        /// Why.
        source: std::io::Error,
        /// The transport's last stderr lines.
        said: String,
    },
    /// The transport answered something else, or nothing.
    #[error("no stripe answer ({got:?}); transport said: {said}")]
    NoAnswer {
        /// What came instead.
        got: Option<Box<Frame>>,
        /// The transport's last stderr lines.
        said: String,
    },
    /// The transport's answer does not decode.
    #[error("bad stripe answer: {source}; transport said: {said}")]
    BadAnswer {
        /// Why.
        source: crate::wire::DecodeError,
        /// The transport's last stderr lines.
        said: String,
    },
    /// The primary stream went away meanwhile.
    #[error("the primary stream is gone")]
    PrimaryGone,
}

fn random_hex(bytes: usize) -> Result<String, StripeError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(StripeError::NoRandomness)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Registers `ferrogen.stripe` in a context.
pub fn register_service(services: &Services, router: &Router) {
    let offer: Arc<Mutex<Option<StripeOffer>>> = Arc::new(Mutex::new(None));
    let r = router.clone();
    services.register(
        ServiceBuilder::new(STRIPE_SERVICE)
            .method("listen", Policy::ParentsOnly, move |_c, (): ()| {
                let (r, offer) = (r.clone(), offer.clone());
                async move { listen(&r, &offer).map_err(|e| RemoteError::Failed(e.to_string())) }
            })
            .build(),
    );
}

fn listen(router: &Router, offer: &Mutex<Option<StripeOffer>>) -> Result<StripeOffer, StripeError> {
    let mut slot = offer.lock().map_err(|_| StripeError::Poisoned)?;
    if let Some(o) = slot.as_ref() {
        return Ok(o.clone());
    }
    let o = StripeOffer {
        pid: std::process::id(),
        socket: format!("ferrogen-stripe-{}-{}", std::process::id(), random_hex(8)?),
        token: random_hex(16)?,
    };
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(o.socket.as_bytes())
        .map_err(StripeError::SocketName)?;
    let std_listener =
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(StripeError::Socket)?;
    std_listener
        .set_nonblocking(true)
        .map_err(StripeError::Socket)?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(StripeError::Socket)?;
    tokio::spawn(serve_listener(router.clone(), listener, o.token.clone()));
    *slot = Some(o.clone());
    Ok(o)
}

/// Accepts stripes for as long as the context lives. The socket name is
/// never given up (an accept error is logged and retried), so no other
/// user can bind it and receive a controller's token; connections from
/// another uid are closed before they are read.
async fn serve_listener(router: Router, listener: tokio::net::UnixListener, token: String) {
    let my_uid = rustix::process::geteuid().as_raw();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let mut n = 0u32;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // EMFILE and friends pass; keep the name and try again.
                tracing::warn!("{}: stripe socket accept failed: {e}", router.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match sock.peer_cred() {
            Ok(cred) if cred.uid() == my_uid => {}
            Ok(cred) => {
                tracing::warn!(
                    "{}: refused a stripe connection from uid {} (this context runs as uid {my_uid})",
                    router.name(),
                    cred.uid()
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("{}: stripe peer credentials: {e}", router.name());
                continue;
            }
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(
                "{}: refused a stripe connection: {MAX_PENDING} already waiting for their token",
                router.name()
            );
            continue;
        };
        n += 1;
        let (router, token) = (router.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = accept(&router, sock, &token, n, permit).await {
                tracing::warn!("stripe {n} refused: {e}");
            }
        });
    }
}

async fn accept(
    router: &Router,
    sock: tokio::net::UnixStream,
    token: &str,
    n: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), StripeError> {
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let mut codec = FrameCodec::new(4096);
    let first = tokio::time::timeout(HELLO_DEADLINE, next_frame(&mut rd, &mut codec, &mut buf))
        .await
        .map_err(|_| StripeError::NoToken(HELLO_DEADLINE))??
        .ok_or(StripeError::ClosedBeforeHello)?;
    drop(permit);
    let hello: StripeHello = control::decode_frame(&first)?;
    if !constant_time_eq(hello.token.as_bytes(), token.as_bytes()) {
        return Err(StripeError::WrongToken);
    }
    let primary = router.parent_stream().ok_or(StripeError::NoParentStream)?;
    let parent = router.parent_ids().first().copied().unwrap_or(0);
    let mut ready = Frame::new(parent, handles::HELLO, Enc::Control, control::encode(&()));
    ready.src_id = router.id();
    ready.auth_id = router.id();
    wr.write_all(&codec::encode_to_vec(&ready))
        .await
        .map_err(StripeError::Write)?;
    stream::start_alias(router, format!("stripe.{n}"), primary, rd, wr, buf)
        .ok_or(StripeError::ParentGone)?;
    tracing::debug!("{}: stripe {n} attached", router.name());
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `ferrogen __attach NAME`: copies stdin to the socket and the socket to
/// stdout until either side closes. Returns the exit code.
pub fn relay(name: &str) -> i32 {
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ERROR bad stripe socket name: {e}");
            return 2;
        }
    };
    let sock = match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ERROR cannot reach the context's stripe socket {name}: {e}");
            return 1;
        }
    };
    // Abstract names are visible to every local user: make sure the socket
    // is our own context's before the controller's token goes through it.
    let my_uid = rustix::process::geteuid().as_raw();
    match rustix::net::sockopt::socket_peercred(&sock) {
        Ok(cred) if cred.uid.as_raw() == my_uid => {}
        Ok(cred) => {
            eprintln!(
                "ERROR the stripe socket {name} belongs to uid {}, not to this account (uid {my_uid}); refusing to relay",
                cred.uid.as_raw()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("ERROR cannot check who owns the stripe socket {name}: {e}");
            return 1;
        }
    }
    let Ok(mut down) = sock.try_clone() else {
        eprintln!("ERROR cannot clone the stripe socket");
        return 1;
    };
    let mut up = sock;
    // Two plain threads: a relay has nothing else to do, and blocking
    // copies with large buffers are the cheapest way to move the bytes.
    let t = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = copy_large(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let _ = copy_large(&mut down, &mut stdout);
    let _ = stdout.flush();
    drop(t);
    0
}

fn copy_large<R: Read, W: Write>(r: &mut R, w: &mut W) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        w.flush()?;
        total += n as u64;
    }
}

/// Opens `count` stripes to context `ctx_id`, a direct child of this
/// context started with `method`. Returns how many attached (failures are logged; the
/// primary stream keeps working regardless).
pub async fn open(
    router: &Router,
    ctx_id: u32,
    method: &Method,
    count: usize,
    timeout: Duration,
) -> usize {
    if count == 0 {
        return 0;
    }
    let Some((ctx, primary)) = direct_child(router, ctx_id) else {
        return 0;
    };
    let Some(offer) = listen_on(router, &ctx, timeout).await else {
        return 0;
    };
    let mut tasks = Vec::new();
    for i in 0..count {
        let (router, ctx, method, offer) =
            (router.clone(), ctx.clone(), method.clone(), offer.clone());
        tasks.push(tokio::spawn(async move {
            let one = async {
                let t = spawn_transport(transport(&method, &offer).await?, &ctx.name, i + 1)?;
                t.attach(&router, &ctx, &offer, primary).await
            };
            settle(&ctx, i + 1, tokio::time::timeout(timeout, one).await)
        }));
    }
    count_attached(tasks).await
}

/// The context `ctx_id` and the stream to it, if it is a direct child.
fn direct_child(router: &Router, ctx_id: u32) -> Option<(ContextInfo, stream::StreamId)> {
    let primary = router.stream_towards(ctx_id)?;
    let ctx = ContextInfo {
        name: router
            .context_name(ctx_id)
            .unwrap_or_else(|| format!("context {ctx_id}")),
        ..ContextInfo::here(router)
    };
    let ctx = ContextInfo { id: ctx_id, ..ctx };
    if router.stream_remote(primary) != Some(ctx.id) {
        tracing::debug!("{}: not a direct child; no stripes", ctx.name);
        return None;
    }
    Some((ctx, primary))
}

async fn listen_on(router: &Router, ctx: &ContextInfo, timeout: Duration) -> Option<StripeOffer> {
    match router
        .call_service_timeout(ctx.id, STRIPE_SERVICE, "listen", &(), Some(timeout))
        .await
    {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!("{}: cannot open stripes: {e}", ctx.name);
            None
        }
    }
}

fn settle(
    ctx: &ContextInfo,
    n: usize,
    r: Result<Result<(), StripeError>, tokio::time::error::Elapsed>,
) -> bool {
    match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!("{}: stripe {n} failed: {e}", ctx.name);
            false
        }
        Err(_) => {
            tracing::warn!("{}: stripe {n} timed out", ctx.name);
            false
        }
    }
}

async fn count_attached(tasks: Vec<tokio::task::JoinHandle<bool>>) -> usize {
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            ok += 1;
        }
    }
    ok
}

/// Stripe transports started before their context is up (while the
/// primary connection is still being made and bootstrapped), so that their
/// own connection set-up — for ssh a dozen round trips: TCP, key exchange,
/// authentication, the session — overlaps the primary's instead of
/// following it. Each runs a small shell on the far end that waits for one
/// line, `PID SOCKET`, then becomes `/proc/PID/exe __attach SOCKET`
/// (the line is sent once the context has answered `listen`).
///
/// Dropping an `Early` (or the transports [`Early::attach`] does not use)
/// ends those transports.
pub struct Early {
    transports: Vec<Transport>,
}

/// One spawned transport process and its pipes.
struct Transport {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    tail: super::handshake::StderrTail,
    name: String,
    /// Waits for the `PID SOCKET` line (an [`Early`] transport).
    wants_line: bool,
}

/// The far end of an early transport: one line, checked to be only what
/// `listen` produces (digits; lowercase letters, digits and dashes), then
/// the listening context's own program as the relay. POSIX `read` takes
/// the line byte by byte from a pipe, so nothing after it is consumed.
fn early_script() -> String {
    format!(
        "read -r p s || exit 1; case $p in \"\"|*[!0-9]*) exit 2;; esac; \
         case $s in \"\"|*[!a-z0-9-]*) exit 2;; esac; exec /proc/$p/exe {ATTACH_ARG} $s"
    )
}

impl Early {
    /// Starts `count` stripe transports with `method` for the context
    /// named `name` (not yet connected). Only `ssh` and `local` can carry
    /// stripes; for others (or `count` 0) nothing is started.
    pub fn start(method: &Method, name: &str, count: usize) -> Early {
        let mut transports = Vec::new();
        for i in 0..count {
            let cmd = match method {
                Method::Local => {
                    let mut c = Command::new("/bin/sh");
                    c.arg("-c").arg(early_script());
                    c
                }
                Method::Ssh(ssh) => {
                    let remote = format!("exec /bin/sh -c '{}'", early_script());
                    let argv = super::ssh::argv(ssh, Duration::from_secs(30), &remote);
                    let mut c = Command::new(&argv[0]);
                    c.args(&argv[1..]);
                    c
                }
                Method::Sudo(_) => break,
            };
            match spawn_transport(cmd, name, i + 1) {
                Ok(mut t) => {
                    t.wants_line = true;
                    transports.push(t);
                }
                Err(e) => {
                    tracing::warn!("{name}: stripe {} not started: {e}", i + 1);
                    break;
                }
            }
        }
        tracing::debug!(
            "{name}: started {} stripe transports early",
            transports.len()
        );
        Early { transports }
    }

    /// How many transports were started.
    pub fn len(&self) -> usize {
        self.transports.len()
    }

    /// True if none were started.
    pub fn is_empty(&self) -> bool {
        self.transports.is_empty()
    }

    /// Adds transports started later (for the same context).
    pub fn absorb(&mut self, mut other: Early) {
        self.transports.append(&mut other.transports);
    }

    /// Asks context `ctx_id` (a direct child, now up) where its stripes
    /// attach; `None` (the transports ended) if it cannot say.
    pub async fn prepare(
        self,
        router: &Router,
        ctx_id: u32,
        timeout: Duration,
    ) -> Option<Prepared> {
        if self.transports.is_empty() {
            return None;
        }
        let (ctx, primary) = direct_child(router, ctx_id)?;
        let offer = listen_on(router, &ctx, timeout).await?;
        Some(Prepared {
            early: self,
            ctx,
            primary,
            offer,
            taken: 0,
        })
    }

    /// Attaches up to `count` of these transports as stripes of context
    /// `ctx_id` (a direct child, now up) and ends the others. Returns how
    /// many attached.
    pub async fn attach(
        self,
        router: &Router,
        ctx_id: u32,
        count: usize,
        timeout: Duration,
    ) -> usize {
        match self.prepare(router, ctx_id, timeout).await {
            Some(p) => p.attach(router, count, timeout).await,
            None => 0,
        }
    }
}

/// Early transports whose context has said where to attach.
pub struct Prepared {
    early: Early,
    ctx: ContextInfo,
    primary: stream::StreamId,
    offer: StripeOffer,
    /// Transports taken so far (numbers them in the log).
    taken: usize,
}

impl Prepared {
    /// Attaches up to `count` of the transports and ends the others.
    /// Returns how many attached.
    pub async fn attach(mut self, router: &Router, count: usize, timeout: Duration) -> usize {
        let attaching = self.attach_next(router, count, timeout);
        drop(self);
        attaching.await
    }

    /// Transports not yet attached (each already connected, or connecting).
    pub fn len(&self) -> usize {
        self.early.transports.len()
    }

    /// True if every transport was taken.
    pub fn is_empty(&self) -> bool {
        self.early.transports.is_empty()
    }

    /// Takes up to `count` of the transports and attaches them (they are
    /// on their way once this returns; the rest stay ready for a later
    /// step). The future gives how many attached.
    pub fn attach_next(
        &mut self,
        router: &Router,
        count: usize,
        timeout: Duration,
    ) -> impl std::future::Future<Output = usize> + Send + 'static {
        let keep = count.min(self.early.transports.len());
        let rest = self.early.transports.split_off(keep);
        let taking = std::mem::replace(&mut self.early.transports, rest);
        let mut tasks = Vec::new();
        for t in taking {
            self.taken += 1;
            let n = self.taken;
            let (router, ctx, offer, primary) = (
                router.clone(),
                self.ctx.clone(),
                self.offer.clone(),
                self.primary,
            );
            tasks.push(tokio::spawn(async move {
                let r =
                    tokio::time::timeout(timeout, t.attach(&router, &ctx, &offer, primary)).await;
                settle(&ctx, n, r)
            }));
        }
        count_attached(tasks)
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        for mut t in self.transports.drain(..) {
            // Closing stdin ends the far end's `read`; the kill ends a
            // transport still connecting. Reaped in the background.
            let _ = t.child.start_kill();
            drop(t.stdin);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut child = t.child;
                rt.spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }
}

fn spawn_transport(mut cmd: Command, ctx_name: &str, n: usize) -> Result<Transport, StripeError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(StripeError::Spawn)?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.start_kill();
        return Err(StripeError::NoPipes);
    };
    {
        use std::os::fd::AsFd;
        let _ = rustix::pipe::fcntl_setpipe_size(stdin.as_fd(), super::local::PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(stdout.as_fd(), super::local::PIPE_SIZE);
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
    })
}

async fn transport(method: &Method, offer: &StripeOffer) -> Result<Command, StripeError> {
    let socket = offer.socket.as_str();
    // The name goes into a remote shell command: only the characters
    // `listen` ever produces.
    if socket.is_empty()
        || !socket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(StripeError::BadSocketName(socket.to_string()));
    }
    match method {
        Method::Local => {
            let exe = match super::local::child_program_override() {
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
            let argv = super::ssh::argv(ssh, Duration::from_secs(30), &remote);
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            Ok(c)
        }
        Method::Sudo(_) => Err(StripeError::ThroughSudo),
    }
}

impl Transport {
    /// Sends the hello (after the `PID SOCKET` line for an early
    /// transport), waits for the context's answer, and attaches the
    /// transport as a stripe of `primary`.
    async fn attach(
        mut self,
        router: &Router,
        ctx: &ContextInfo,
        offer: &StripeOffer,
        primary: crate::stream::StreamId,
    ) -> Result<(), StripeError> {
        let t0 = std::time::Instant::now();
        let mut out = Vec::new();
        if self.wants_line {
            // What the far end's script accepts, checked here too so a
            // refusal there is not the first sign of a bad offer.
            if offer.socket.is_empty()
                || !offer
                    .socket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                let _ = self.child.start_kill();
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
        if let Err(e) = self.stdin.write_all(&out).await {
            let _ = self.child.start_kill();
            return Err(StripeError::SendHello {
                source: e,
                said: self.tail.lines().join(" | "),
            });
        }
        let mut buf = BytesMut::with_capacity(4096);
        let mut codec = FrameCodec::new(4096);
        match next_frame(&mut self.stdout, &mut codec, &mut buf).await {
            Ok(Some(f)) if f.handle == handles::HELLO && !f.is_dead() => {}
            Ok(other) => {
                let _ = self.child.start_kill();
                return Err(StripeError::NoAnswer {
                    got: other.map(Box::new),
                    said: self.tail.lines().join(" | "),
                });
            }
            Err(e) => {
                let _ = self.child.start_kill();
                return Err(StripeError::BadAnswer {
                    source: e,
                    said: self.tail.lines().join(" | "),
                });
            }
        }
        let Transport {
            mut child,
            stdin,
            stdout,
            name,
            ..
        } = self;
        if stream::start_alias(router, name.clone(), primary, stdout, stdin, buf).is_none() {
            let _ = child.start_kill();
            return Err(StripeError::PrimaryGone);
        }
        tracing::debug!("{name}: attached {:?} after the hello", t0.elapsed());
        tokio::spawn(async move {
            let _ = child.wait().await;
            tracing::debug!("{name}: transport exited");
        });
        Ok(())
    }
}
