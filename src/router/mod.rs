//! The router: delivers each frame to a local handle or forwards it one hop
//! closer to its destination.
//!
//! Every context runs one [`Router`]. It knows its own id, its ancestors
//! (`parent_ids`), the streams to its direct neighbours and, for each context
//! below it, which child stream leads there. Anything it has no route for goes
//! up to the parent ("default route up"), except frames that came *from* the
//! parent, which are answered "no route" instead of bouncing.
//!
//! Trust rules (`docs/protocol.md` §Trust; the decisions live in the pure
//! [`table::Table`], this type applies them):
//!
//! * **Reverse-path check.** A frame arriving on stream S must claim an
//!   `auth_id` (and `src_id`) that the router would itself route through S.
//!   A child can therefore speak only for itself and its descendants; frames
//!   that fail are dropped and logged.
//! * **Id ownership.** A child stream may announce or withdraw only the ids
//!   it owns: its own (allocated here) and those in blocks delegated to it
//!   through ALLOCATE_ID, which each context asks of its parent. A stream's
//!   end removes only the routes that still point at it.
//! * **Parent authority.** [`Policy::ParentsOnly`] handlers accept frames
//!   whose `auth_id` is this context or one of its ancestors.
//! * **Dead messages** pass the same respondent and policy checks as any
//!   other frame. A router that cannot deliver a frame answers *on behalf
//!   of* its destination (`src_id` = the destination, `auth_id` = itself),
//!   so the caller's respondent check accepts exactly that answer.
//! * **Disconnects propagate.** When a stream dies, every context behind it
//!   is forgotten, each waiter whose respondent was one of them gets a dead
//!   message, and DEL_ROUTE goes up to the parent and down to every
//!   neighbour that ever sent traffic towards those contexts.

mod calls;
mod deliver;
mod id_requests;
mod ids;
mod links;
pub mod table;

pub use ids::{BLOCK_SIZE, BlockAllocator, IdAllocator};
pub use table::{
    DeadReason, Decision, DelegateRefused, LinkId, MAX_BLOCKS_PER_LINK,
    MAX_BLOCKS_PER_RELAYED_LINK, Rejection, RouteRefused, Table,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::call::{CallError, RemoteError, Rpc};
use crate::channel::{FrameSink, Receiver};
use crate::stream::outbox::{BULK_HIGH_WATER, Outbox, StreamId};
use crate::wire::control::{self, AddRoute, CallReply, DelRoute, IdBlock};
use crate::wire::{ContextId, Enc, Frame, Handle, handles};

/// Who may deliver to a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any context.
    Any,
    /// Only this context and its ancestors (by `auth_id`).
    ParentsOnly,
}

/// How to build a router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This context's id (0 for the controller).
    pub id: ContextId,
    /// Display name, e.g. `controller` or `local.4711`.
    pub name: String,
    /// Ancestors, nearest first, ending with 0. Empty for the controller.
    pub parent_ids: Vec<ContextId>,
    /// Largest payload accepted or forwarded.
    pub max_message_size: usize,
}

impl RouterConfig {
    /// The controller's configuration.
    pub fn controller() -> RouterConfig {
        RouterConfig {
            id: 0,
            name: "controller".into(),
            parent_ids: Vec::new(),
            max_message_size: crate::wire::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

struct HandlerEntry {
    tx: mpsc::UnboundedSender<Frame>,
    respondent: Option<ContextId>,
    policy: Policy,
    persist: bool,
}

/// The I/O side of a link: where to push its frames.
struct LinkIo {
    name: String,
    outbox: Arc<Outbox>,
}

struct State {
    table: Table,
    io: HashMap<StreamId, LinkIo>,
    handlers: HashMap<Handle, HandlerEntry>,
    next_handle: Handle,
    names: HashMap<ContextId, String>,
    controller_ids: IdAllocator,
    block: BlockAllocator,
    /// Frames dropped by the reverse-path check or a failed dead-message check.
    rejected: u64,
    /// Contexts this router's owner started on purpose (see
    /// [`Router::note_started`]): the principals that per-caller caps are
    /// kept for.
    started: std::collections::HashSet<ContextId>,
}

struct Inner {
    id: ContextId,
    name: String,
    parent_ids: Vec<ContextId>,
    max_message_size: usize,
    state: Mutex<State>,
    parent_lost: watch::Sender<Option<String>>,
}

/// A context's router. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// What to do with a frame once the routing decision is made (outside the lock).
enum Action {
    Nothing,
    Push(Arc<Outbox>, Frame),
    /// Answer the sender with this reason.
    Dead(Frame, DeadReason),
    /// Too large: answer the sender and tell the recipient (see
    /// [`Router::send_dead_reply`]).
    TooLarge(Frame, DeadReason),
}

impl Router {
    /// A router for one context.
    pub fn new(config: RouterConfig) -> Router {
        let mut names = HashMap::new();
        names.insert(config.id, config.name.clone());
        let (parent_lost, _) = watch::channel(None);
        let table = Table::new(
            config.id,
            config.parent_ids.clone(),
            config.max_message_size,
        );
        Router {
            inner: Arc::new(Inner {
                id: config.id,
                name: config.name,
                parent_ids: config.parent_ids,
                max_message_size: config.max_message_size,
                state: Mutex::new(State {
                    table,
                    io: HashMap::new(),
                    handlers: HashMap::new(),
                    next_handle: handles::FIRST_DYNAMIC,
                    names,
                    controller_ids: IdAllocator::default(),
                    block: BlockAllocator::default(),
                    rejected: 0,
                    started: std::collections::HashSet::new(),
                }),
                parent_lost,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections never leave State half-updated across a panic
        // point, so a poisoned lock is still consistent.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This context's id.
    pub fn id(&self) -> ContextId {
        self.inner.id
    }

    /// This context's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Ancestors, nearest first.
    pub fn parent_ids(&self) -> &[ContextId] {
        &self.inner.parent_ids
    }

    /// The payload ceiling.
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size
    }

    /// True if `auth_id` is this context or one of its ancestors.
    pub(crate) fn has_parent_authority(&self, auth_id: ContextId) -> bool {
        auth_id == self.inner.id || self.inner.parent_ids.contains(&auth_id)
    }

    /// A printable description of a context: `context 3 (local.4711)`.
    pub fn describe(&self, id: ContextId) -> String {
        match self.lock().names.get(&id) {
            Some(name) => format!("context {id} ({name})"),
            None => format!("context {id}"),
        }
    }

    /// The name recorded for a context, if known.
    pub fn context_name(&self, id: ContextId) -> Option<String> {
        self.lock().names.get(&id).cloned()
    }

    /// Frames dropped so far by the reverse-path (impersonation) check and
    /// by the checks on dead messages.
    pub fn rejected_frames(&self) -> u64 {
        self.lock().rejected
    }

    /// Records that `id` is a context this process asked for (a target or
    /// a hop it connected), as opposed to ids a context gave out itself.
    pub(crate) fn note_started(&self, id: ContextId) {
        self.lock().started.insert(id);
    }

    /// The context a caller's limits are counted against: the caller if it
    /// is one this process started (or this context), otherwise the context
    /// that gave the caller's id out, and so on up. A target that announces
    /// a thousand ids of its own blocks is still one principal: itself.
    pub(crate) fn principal(&self, src: ContextId) -> ContextId {
        let st = self.lock();
        let mut id = src;
        // Each step goes to the context that asked for the block, which is
        // nearer the router; the bound only guards against a table loop.
        for _ in 0..64 {
            if id == self.inner.id || st.started.contains(&id) {
                return id;
            }
            match st.table.requester_of(id) {
                Some(r) if r != id => id = r,
                _ => return id,
            }
        }
        id
    }

    /// True if a route to `id` is known (explicitly, not by default-up).
    pub fn has_route(&self, id: ContextId) -> bool {
        self.lock().table.has_route(id)
    }

    // ----------------------------------------------------------------- handlers

    /// Registers a handler and returns its receiver. `handle: None` allocates
    /// a dynamic handle. Fails if the handle is taken.
    pub fn add_handler(
        &self,
        handle: Option<Handle>,
        policy: Policy,
        respondent: Option<ContextId>,
        persist: bool,
    ) -> Result<Receiver, HandleInUse> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        let handle = match handle {
            Some(h) => {
                if st.handlers.contains_key(&h) {
                    return Err(HandleInUse(h));
                }
                h
            }
            None => loop {
                let h = st.next_handle;
                st.next_handle = st
                    .next_handle
                    .checked_add(1)
                    .unwrap_or(handles::FIRST_DYNAMIC);
                if !st.handlers.contains_key(&h) {
                    break h;
                }
            },
        };
        st.handlers.insert(
            handle,
            HandlerEntry {
                tx,
                respondent,
                policy,
                persist,
            },
        );
        drop(st);
        let router = self.clone();
        let unregister = std::sync::Arc::new(move |h: Handle| router.remove_handler(h));
        Ok(Receiver::new(self.inner.id, unregister, handle, rx))
    }

    /// A dynamic persistent receiver open to any context.
    pub fn receiver(&self) -> Receiver {
        match self.add_handler(None, Policy::Any, None, true) {
            Ok(r) => r,
            Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
        }
    }

    /// Unregisters a handle (no-op if absent).
    pub(crate) fn remove_handler(&self, handle: Handle) {
        self.lock().handlers.remove(&handle);
    }

    /// Number of registered handlers (for leak tests).
    pub fn handler_count(&self) -> usize {
        self.lock().handlers.len()
    }
}

/// True if `frame` was sent by the neighbour at the far end of `ingress`
/// itself (not forwarded by it for a context below).
fn from_neighbour(table: &Table, frame: &Frame, ingress: Option<StreamId>) -> bool {
    let Some(link) = ingress else {
        return false;
    };
    let Some(neighbour) = table.remote_id(link) else {
        return false;
    };
    frame.src_id == neighbour && frame.auth_id == neighbour
}

/// Counts a refused frame and returns the count. A forger can send such
/// frames by the thousand, so callers warn only at 1, 2, 4, 8, ...: the log
/// shows the attack without growing with it.
fn count_refusal(st: &mut State) -> u64 {
    st.rejected += 1;
    st.rejected
}

impl FrameSink for Router {
    fn send(&self, frame: Frame) {
        Router::send(self, frame);
    }
}

/// A fixed handle was already registered.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("handle {0} is already registered")]
pub struct HandleInUse(pub Handle);
