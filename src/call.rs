//! Calls: a message with a `reply_to` handle, the methods they name as
//! types ([`Rpc`]), and the errors that come back.
//!
//! Every way a call can end badly is a variant of [`CallError`], and each
//! prints as a sentence an operator can act on. A call never hangs on a dead
//! peer: its one-shot receiver names the callee as respondent, so the router
//! fails it as soon as the route to the callee is lost.

use std::marker::PhantomData;
use std::time::Duration;

use crate::wire::control::ControlDecodeError;
use crate::wire::{ContextId, DeadReason};

pub use crate::wire::control::RemoteError;

/// Why a call did not produce a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The callee answered with an error.
    #[error("{context}: {error}")]
    Remote {
        /// Who answered, e.g. `context 3 (local.4711)`.
        context: String,
        /// What it said.
        error: RemoteError,
    },
    /// The call's channel died: no route, unknown handle, refused by policy,
    /// or the callee (or a hop towards it) disconnected — `reason` says
    /// which ([`DeadReason::is_disconnect`], [`DeadReason::is_refusal`]).
    #[error("call to {callee} failed: {reason}")]
    Dead {
        /// The callee, e.g. `context 3 (local.4711)`.
        callee: String,
        /// Why the channel ended.
        reason: DeadReason,
    },
    /// The reply could not be decoded.
    #[error("malformed reply from context {context}: {detail}")]
    Malformed {
        /// The callee.
        context: ContextId,
        /// What was wrong.
        detail: String,
    },
    /// No reply within the deadline.
    #[error("no reply from context {context} within {after:?}")]
    Timeout {
        /// The callee.
        context: ContextId,
        /// The deadline that passed.
        after: Duration,
    },
}

impl CallError {
    pub(crate) fn malformed(context: ContextId, e: ControlDecodeError) -> CallError {
        CallError::Malformed {
            context,
            detail: e.0,
        }
    }

    /// True if the call failed because a context or a route to it is gone
    /// (a refusal by policy is not a disconnect).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, CallError::Dead { reason, .. } if reason.is_disconnect())
    }
}

/// A service method as a type: the service and method names it is called
/// by, the argument it takes and the reply it gives. The caller
/// ([`Router::call`](crate::router::Router::call)) and the service that
/// answers it ([`ServiceBuilder::serve`](crate::service::ServiceBuilder::serve))
/// name the same constant, so the two sides cannot disagree on a name or a
/// type without the compiler saying so.
pub struct Rpc<A: ?Sized, R> {
    /// The service's registered name, e.g. `ferrogen.files`.
    pub service: &'static str,
    /// The method's name within it.
    pub method: &'static str,
    types: PhantomData<fn(&A) -> R>,
}

impl<A: ?Sized, R> Rpc<A, R> {
    /// The method `method` of `service`, taking `A` and answering `R`.
    pub const fn new(service: &'static str, method: &'static str) -> Self {
        Rpc {
            service,
            method,
            types: PhantomData,
        }
    }
}

// Not derived: a derive would ask `A` and `R` to be `Copy` too.
impl<A: ?Sized, R> Clone for Rpc<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: ?Sized, R> Copy for Rpc<A, R> {}

impl<A: ?Sized, R> std::fmt::Debug for Rpc<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.service, self.method)
    }
}
