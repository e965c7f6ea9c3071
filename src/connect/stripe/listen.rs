//! The child side: the `ferrogen.stripe` service (`listen`, parents
//! only) and the socket it opens, where stripes present their token and
//! are attached as aliases of the parent stream. Apart: this is what
//! another local user's connection meets.

use std::os::linux::net::SocketAddrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::{HELLO_DEADLINE, MAX_PENDING, STRIPE_SERVICE, StripeError, StripeHello, StripeOffer};
use super::{random_hex, relay};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};
use crate::stream::{self, tokio_stream_shim::next_frame};
use crate::wire::{Enc, Frame, FrameCodec, codec, control, handles};

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

/// What `__attach` sent first on the socket.
enum Came {
    /// Its stdin and stdout, the transport's pipes: read and written here.
    Pipes(pipe::Receiver, pipe::Sender),
    /// Nothing: it copies between its stdio and the socket.
    Copy,
}

async fn accept(
    router: &Router,
    sock: tokio::net::UnixStream,
    token: &str,
    n: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), StripeError> {
    let came = tokio::time::timeout(HELLO_DEADLINE, first_message(&sock))
        .await
        .map_err(|_| StripeError::NoToken(HELLO_DEADLINE))??;
    match came {
        Came::Pipes(rd, wr) => {
            let wr = HeldOpen {
                inner: wr,
                _socket: sock,
            };
            attach_over(router, rd, wr, token, n, permit).await
        }
        Came::Copy => {
            let (rd, wr) = sock.into_split();
            attach_over(router, rd, wr, token, n, permit).await
        }
    }
}

/// Reads `__attach`'s first byte and the descriptors that came with it.
async fn first_message(sock: &tokio::net::UnixStream) -> Result<Came, StripeError> {
    loop {
        sock.readable().await.map_err(StripeError::Socket)?;
        match sock.try_io(tokio::io::Interest::READABLE, || receive_first(sock)) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(StripeError::Socket(e)),
        }
    }
}

/// One `recvmsg` of [`first_message`]: `Err` of the outer result only
/// for the socket's own errors (`WouldBlock` included).
fn receive_first(sock: &tokio::net::UnixStream) -> std::io::Result<Result<Came, StripeError>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Owned at once: whatever is refused below is closed on return.
    let mut fds: Vec<std::os::fd::OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Ok(Err(StripeError::ClosedBeforeHello));
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Ok(Err(StripeError::HandOff(
            "more descriptors than a stdin and a stdout",
        )));
    }
    Ok(match (byte[0], fds.len()) {
        (relay::COPY, 0) => Ok(Came::Copy),
        (relay::HAND_OFF, 2) => {
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next()) {
                (Some(r), Some(w)) => pipes(r, w),
                _ => Err(StripeError::HandOff("descriptors missing")),
            }
        }
        _ => Err(StripeError::HandOff("not a stripe's first message")),
    })
}

/// The handed-over stdin (`r`) and stdout (`w`) as this runtime's pipes;
/// refused unless they are a pipe's read and write ends.
fn pipes(r: std::os::fd::OwnedFd, w: std::os::fd::OwnedFd) -> Result<Came, StripeError> {
    let rd = pipe::Receiver::from_owned_fd(r)
        .map_err(|_| StripeError::HandOff("its stdin is not a pipe to read"))?;
    let wr = pipe::Sender::from_owned_fd(w)
        .map_err(|_| StripeError::HandOff("its stdout is not a pipe to write"))?;
    Ok(Came::Pipes(rd, wr))
}

/// A handed-over stripe's write side, holding the stripe socket open:
/// when the stream drops it, `__attach` sees the socket close and ends,
/// and so does the transport's session.
struct HeldOpen<W> {
    inner: W,
    _socket: tokio::net::UnixStream,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HeldOpen<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The stripe's hello read from `rd`, its token checked, the answer
/// written to `wr`, and the two attached as an alias of the parent stream.
async fn attach_over<R, W>(
    router: &Router,
    mut rd: R,
    mut wr: W,
    token: &str,
    n: u32,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), StripeError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
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
