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
//!
//! The child side is in `listen`, the relay in `relay`, the controller's
//! opening in `open`, transports started before their context is up in
//! `early`, and one transport's process and hello in `transport`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::{Frame, control};

mod early;
mod listen;
mod open;
mod relay;
mod transport;

pub use early::{Early, Prepared};
pub use listen::register_service;
pub use open::open;
pub use relay::relay;

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
    /// `__attach`'s first message on the socket is not one it sends.
    #[error("stripe hand-off: {0}")]
    HandOff(&'static str),
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
    /// The transport's stdin could not be taken over for splicing.
    #[error("cannot take over the pipe to the transport: {0}")]
    TakePipe(#[source] std::io::Error),
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
