//! The child side: the `ferrogen.stripe` service (`listen`, parents
//! only) and the socket it opens, where stripes present their token and
//! are attached as aliases of the parent stream. Apart: this is what
//! another local user's connection meets.

use std::os::linux::net::SocketAddrExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::random_hex;
use super::{HELLO_DEADLINE, MAX_PENDING, STRIPE_SERVICE, StripeError, StripeHello, StripeOffer};
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
