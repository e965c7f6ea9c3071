//! Standard handle numbers. Numbers below [`FIRST_DYNAMIC`] are fixed by the
//! protocol; `docs/protocol.md` lists each with its payload.

use super::Handle;

/// Router: a new context is reachable through the stream this arrived on.
/// Payload: control [`crate::wire::control::AddRoute`].
pub const ADD_ROUTE: Handle = 103;
/// Router: a context is gone. Payload: control [`crate::wire::control::DelRoute`].
pub const DEL_ROUTE: Handle = 104;
/// Controller: allocate a block of context ids. Empty request, control
/// [`crate::wire::control::IdBlock`] reply.
pub const ALLOCATE_ID: Handle = 105;
/// Ask a context to shut down (parents only). Empty payload.
pub const SHUTDOWN: Handle = 106;
/// Service calls. Payload: control [`crate::wire::control::ServiceCall`].
pub const CALL_SERVICE: Handle = 110;
/// First frame on a new stream, parent → child ([`crate::wire::control::Hello`])
/// and the child's answer ([`crate::wire::control::Ready`]).
pub const HELLO: Handle = 120;
/// FileService acknowledgements: cumulative byte counts, one small frame per
/// acknowledgement, no reply.
pub const FILE_ACK: Handle = 130;
/// A `reply_to` value marking a dead message; never a destination handle.
pub const IS_DEAD: Handle = 999;
/// The first handle handed out to receivers at run time.
pub const FIRST_DYNAMIC: Handle = 1000;
