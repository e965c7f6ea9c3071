//! Control payloads: small typed values in [postcard] encoding (enc `0x4d50`).
//!
//! Why postcard: it has a written, versioned wire specification (so a peer in
//! another language can be written from `docs/protocol.md` alone), it is
//! compact (varint integers, length-prefixed strings), it allocates nothing
//! while encoding and it decodes only into the type the receiver names — there
//! is no notion of "any object", so nothing like Mitogen's unpickler whitelist
//! is needed. Both ends are always the same ferrogen build (the controller
//! ships its own binary), so postcard's lack of self-description costs
//! nothing.
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{ContextId, Enc, Frame};

/// Encodes a control value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Bytes {
    // Serialising plain data into a Vec cannot fail for the types we define
    // (no maps with non-string keys, no custom serialisers that error).
    match postcard::to_stdvec(value) {
        Ok(v) => Bytes::from(v),
        Err(e) => panic!("control value failed to encode: {e}"),
    }
}

/// Decodes a control value, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ControlDecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| ControlDecodeError(format!("{e} ({} bytes)", payload.len())))?;
    if !rest.is_empty() {
        return Err(ControlDecodeError(format!(
            "{} trailing bytes after value",
            rest.len()
        )));
    }
    Ok(value)
}

/// Decodes the payload of a control frame, checking its encoding tag first.
pub fn decode_frame<T: DeserializeOwned>(frame: &Frame) -> Result<T, ControlDecodeError> {
    if frame.enc != Enc::Control {
        return Err(ControlDecodeError(format!(
            "expected a control payload, got {:?}",
            frame.enc
        )));
    }
    decode(&frame.payload)
}

/// A control payload that did not decode as the expected type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed control payload: {0}")]
pub struct ControlDecodeError(pub String);

/// First frame a parent sends on a new stream: who the child is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; the child refuses a mismatch.
    pub version: u32,
    /// The child's own id.
    pub context_id: ContextId,
    /// Ancestors, nearest first, ending with 0.
    pub parent_ids: Vec<ContextId>,
    /// The child's display name.
    pub name: String,
    /// Maximum payload size the child must enforce.
    pub max_message_size: u64,
    /// `tracing` filter directive for the child's logs (to stderr).
    pub log_filter: String,
}

/// The child's answer to [`Hello`]: it is running and routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Protocol version the child speaks.
    pub version: u32,
    /// The child's process id.
    pub pid: u32,
    /// `uname -m`-style architecture of the child's build.
    pub arch: String,
}

/// ADD_ROUTE payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddRoute {
    /// The context now reachable.
    pub id: ContextId,
    /// Its name.
    pub name: String,
}

/// DEL_ROUTE payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelRoute {
    /// The context that is gone.
    pub id: ContextId,
    /// Why.
    pub reason: String,
}

/// ALLOCATE_ID reply: the half-open range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IdBlock {
    /// First id of the block.
    pub start: ContextId,
    /// One past the last id.
    pub end: ContextId,
}

/// CALL_SERVICE payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCall {
    /// Service name, e.g. `ferrogen.files`.
    pub service: String,
    /// Method name, e.g. `fetch`.
    pub method: String,
    /// The method's arguments, themselves a postcard value.
    pub args: Vec<u8>,
}

/// An error produced by a remote service method; travels in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// No service of that name is registered in the callee.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// The service has no such method.
    #[error("service {service:?} has no method {method:?}")]
    NoSuchMethod {
        /// Service name.
        service: String,
        /// Method name.
        method: String,
    },
    /// The method's policy refused the caller.
    #[error("context {caller} is not authorised to call {service}.{method}")]
    Unauthorised {
        /// Service name.
        service: String,
        /// Method name.
        method: String,
        /// The `auth_id` of the refused call.
        caller: ContextId,
    },
    /// The arguments did not decode as the method's argument type.
    #[error("invalid arguments for {service}.{method}: {detail}")]
    BadArguments {
        /// Service name.
        service: String,
        /// Method name.
        method: String,
        /// What was wrong.
        detail: String,
    },
    /// The method ran and failed.
    #[error("{0}")]
    Failed(String),
}

impl RemoteError {
    /// The same error with every text cut to [`crate::text::MAX_PEER_TEXT`]
    /// (applied to errors that arrive from other contexts).
    pub fn capped(self) -> RemoteError {
        use crate::text::cap_owned as c;
        match self {
            RemoteError::NoSuchService(s) => RemoteError::NoSuchService(c(s)),
            RemoteError::NoSuchMethod { service, method } => RemoteError::NoSuchMethod {
                service: c(service),
                method: c(method),
            },
            RemoteError::Unauthorised {
                service,
                method,
                caller,
            } => RemoteError::Unauthorised {
                service: c(service),
                method: c(method),
                caller,
            },
            RemoteError::BadArguments {
                service,
                method,
                detail,
            } => RemoteError::BadArguments {
                service: c(service),
                method: c(method),
                detail: c(detail),
            },
            RemoteError::Failed(s) => RemoteError::Failed(c(s)),
        }
    }
}

/// A reply to a call: the method's postcard-encoded return value or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallReply {
    /// Success, with the encoded return value.
    Ok(Vec<u8>),
    /// Failure.
    Err(RemoteError),
}

/// Protocol version carried in [`Hello`] and [`Ready`].
pub const PROTOCOL_VERSION: u32 = 3;
