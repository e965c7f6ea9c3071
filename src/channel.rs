//! Channels: a [`Receiver`] owns a handle in this context; a [`Sender`] names
//! one anywhere in the tree and can travel inside messages.
//!
//! The end of a channel is explicit: [`Sender::close`] delivers a dead message
//! that the receiver reports as [`ChannelError::Dead`], which is distinct from
//! "the respondent disconnected" (also dead, with another reason) and from
//! the receiver being closed locally.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::wire::{ContextId, Enc, Frame, Handle, control};

/// Reason text of the dead message sent by [`Sender::close`].
pub use crate::wire::dead::SENDER_CLOSED;

/// Where a channel's frames go: the context's router (which stamps
/// `src_id`/`auth_id` and routes them). A trait, so that channels do not
/// depend on the router that creates them.
pub trait FrameSink {
    /// Sends a frame originating in this context.
    fn send(&self, frame: Frame);
}

/// Removes a handle from the router that registered it.
pub(crate) type Unregister = std::sync::Arc<dyn Fn(Handle) + Send + Sync>;

/// Why a receive ended without a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// A dead message arrived; the reason says why.
    #[error("{0}")]
    Dead(crate::wire::DeadReason),
    /// The receiver was closed in this context.
    #[error("the receiver has been closed")]
    Closed,
    /// No message arrived in time.
    #[error("no message within {0:?}")]
    Timeout(std::time::Duration),
}

/// The receiving end of a channel: a handle registered with the router.
///
/// Dropping it unregisters the handle; later messages to it are answered
/// with "invalid handle".
pub struct Receiver {
    /// The context that owns the handle.
    owner: ContextId,
    /// Unregisters the handle from its router.
    unregister: Unregister,
    handle: Handle,
    rx: mpsc::UnboundedReceiver<Frame>,
    closed: bool,
}

impl Receiver {
    pub(crate) fn new(
        owner: ContextId,
        unregister: Unregister,
        handle: Handle,
        rx: mpsc::UnboundedReceiver<Frame>,
    ) -> Self {
        Receiver {
            owner,
            unregister,
            handle,
            rx,
            closed: false,
        }
    }

    /// The handle this receiver owns.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// A [`Sender`] aimed at this receiver.
    pub fn to_sender(&self) -> Sender {
        Sender {
            context: self.owner,
            handle: self.handle,
        }
    }

    /// The next message. Dead messages become [`ChannelError::Dead`].
    pub async fn recv(&mut self) -> Result<Frame, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        match self.rx.recv().await {
            Some(frame) if frame.is_dead() => Err(ChannelError::Dead(frame.dead_kind())),
            Some(frame) => Ok(frame),
            None => Err(ChannelError::Closed),
        }
    }

    /// The next message if one is already queued; `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        match self.rx.try_recv() {
            Ok(frame) if frame.is_dead() => Err(ChannelError::Dead(frame.dead_kind())),
            Ok(frame) => Ok(Some(frame)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(ChannelError::Closed),
        }
    }

    /// Like [`Receiver::recv`] with a deadline.
    pub async fn recv_timeout(
        &mut self,
        after: std::time::Duration,
    ) -> Result<Frame, ChannelError> {
        match tokio::time::timeout(after, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::Timeout(after)),
        }
    }

    /// Unregisters the handle. Later [`Receiver::recv`] calls return
    /// [`ChannelError::Closed`]. The remote side is not told (as in Mitogen);
    /// its next message is answered "invalid handle".
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            (self.unregister)(self.handle);
            self.rx.close();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

/// A capability to send to `(context, handle)`. Plain data: it can be put
/// inside any control payload and used by whoever receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sender {
    /// Context that owns the handle.
    pub context: ContextId,
    /// The handle.
    pub handle: Handle,
}

impl Sender {
    /// Sends raw bytes (queued as bulk data).
    pub fn send_bytes(&self, router: &impl FrameSink, data: Bytes) {
        router.send(Frame::new(self.context, self.handle, Enc::Bin, data));
    }

    /// Sends a control value.
    pub fn send_control<T: Serialize + ?Sized>(&self, router: &impl FrameSink, value: &T) {
        router.send(Frame::new(
            self.context,
            self.handle,
            Enc::Control,
            control::encode(value),
        ));
    }

    /// Ends the channel: the receiver sees [`ChannelError::Dead`] with
    /// [`SENDER_CLOSED`].
    pub fn close(&self, router: &impl FrameSink) {
        self.close_with(router, SENDER_CLOSED);
    }

    /// Ends the channel with a reason of the caller's choosing.
    pub fn close_with(&self, router: &impl FrameSink, reason: &str) {
        router.send(Frame::dead(self.context, self.handle, reason));
    }
}
