//! Each caller's calls in flight, counted from arrival to the queuing of
//! their reply and capped ([`super::MAX_CALLS_IN_FLIGHT`],
//! [`super::MAX_CALL_BYTES_IN_FLIGHT`]), so a caller cannot make this
//! context grow without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{MAX_CALL_BYTES_IN_FLIGHT, MAX_CALLS_IN_FLIGHT};
use crate::wire::ContextId;

/// Calls of one caller in flight, and their payload bytes.
#[derive(Default, Clone, Copy)]
pub(super) struct Load {
    pub(super) calls: usize,
    bytes: usize,
}

/// One call counted in [`Services`]' in-flight table until dropped.
pub(super) struct InFlight {
    table: Arc<Mutex<HashMap<ContextId, Load>>>,
    caller: ContextId,
    bytes: usize,
}

/// Why a call was refused before it ran: its caller has too much in
/// flight already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooMuchInFlight {
    /// [`MAX_CALLS_IN_FLIGHT`] calls running.
    #[error("too many calls in flight from context {caller} (limit {MAX_CALLS_IN_FLIGHT})")]
    Calls {
        /// The caller (its principal).
        caller: ContextId,
    },
    /// [`MAX_CALL_BYTES_IN_FLIGHT`] bytes of calls running.
    #[error(
        "too many bytes of calls in flight from context {caller} ({calls} running with \
         {bytes} bytes; limit {MAX_CALL_BYTES_IN_FLIGHT})"
    )]
    Bytes {
        /// The caller (its principal).
        caller: ContextId,
        /// Calls running.
        calls: usize,
        /// Their bytes.
        bytes: usize,
    },
}

impl InFlight {
    pub(super) fn enter(
        table: &Arc<Mutex<HashMap<ContextId, Load>>>,
        caller: ContextId,
        bytes: usize,
    ) -> Result<InFlight, TooMuchInFlight> {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let load = t.entry(caller).or_default();
        if load.calls >= MAX_CALLS_IN_FLIGHT {
            return Err(TooMuchInFlight::Calls { caller });
        }
        if load.calls > 0 && load.bytes + bytes > MAX_CALL_BYTES_IN_FLIGHT {
            return Err(TooMuchInFlight::Bytes {
                caller,
                calls: load.calls,
                bytes: load.bytes,
            });
        }
        load.calls += 1;
        load.bytes += bytes;
        Ok(InFlight {
            table: table.clone(),
            caller,
            bytes,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(load) = t.get_mut(&self.caller) {
            load.calls -= 1;
            load.bytes -= self.bytes;
            if load.calls == 0 {
                t.remove(&self.caller);
            }
        }
    }
}
