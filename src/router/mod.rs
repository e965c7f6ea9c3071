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

mod ids;
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

    // ------------------------------------------------------------------ sending

    /// Sends a frame originating here: stamps `src_id`/`auth_id` with this
    /// context's id and routes it.
    pub fn send(&self, mut frame: Frame) {
        frame.src_id = self.inner.id;
        frame.auth_id = self.inner.id;
        self.route(frame, None);
    }

    /// Sends a bulk frame originating here, first waiting until the outgoing
    /// stream has fewer than [`BULK_HIGH_WATER`] bytes of bulk queued.
    pub async fn send_bulk(&self, frame: Frame) {
        let outbox = self.outbox_towards(frame.dst_id);
        if let Some(outbox) = outbox {
            outbox.wait_bulk_room(BULK_HIGH_WATER).await;
        }
        self.send(frame);
    }

    /// The stream to the parent, if any (`None` in the controller).
    pub(crate) fn parent_stream(&self) -> Option<StreamId> {
        self.lock().table.parent()
    }

    /// The first-hop stream towards `dst`, if any.
    pub fn stream_towards(&self, dst: ContextId) -> Option<StreamId> {
        self.lock().table.towards(dst)
    }

    fn outbox_towards(&self, dst: ContextId) -> Option<Arc<Outbox>> {
        let st = self.lock();
        let sid = st.table.towards(dst)?;
        st.io.get(&sid).map(|l| l.outbox.clone())
    }

    /// Routes one frame. `ingress` is the stream it arrived on, `None` if it
    /// originated here.
    pub(crate) fn route(&self, frame: Frame, ingress: Option<StreamId>) {
        match self.decide(frame, ingress) {
            Action::Nothing => {}
            Action::Push(outbox, frame) => {
                if !outbox.push(frame) {
                    tracing::debug!("dropped frame for a stream that is closing");
                }
            }
            Action::Dead(frame, reason) => self.send_dead_reply(&frame, &reason, false),
            Action::TooLarge(frame, reason) => self.send_dead_reply(&frame, &reason, true),
        }
    }

    fn decide(&self, frame: Frame, ingress: Option<StreamId>) -> Action {
        let mut st = self.lock();
        match st.table.route(&frame.header(), ingress) {
            Decision::Deliver => {
                let ingress = ingress.and_then(|l| st.table.canonical(l));
                self.deliver_locally(st, frame, ingress)
            }
            Decision::Forward(link) => match st.io.get(&link) {
                Some(l) => Action::Push(l.outbox.clone(), frame),
                None => {
                    let reason = DeadReason::NoRoute {
                        dst: frame.dst_id,
                        me: self.inner.id,
                    };
                    Action::Dead(frame, reason)
                }
            },
            Decision::Drop(why) => {
                let n = count_refusal(&mut st);
                drop(st);
                if n.is_power_of_two() {
                    tracing::warn!(
                        "{}: dropped {why}: {frame:?} ({n} frames refused so far)",
                        self.inner.name
                    );
                }
                Action::Nothing
            }
            Decision::Dead(reason @ DeadReason::TooLarge { .. }) => {
                drop(st);
                tracing::error!("{}: {reason}: {frame:?}", self.inner.name);
                Action::TooLarge(frame, reason)
            }
            Decision::Dead(reason) => {
                drop(st);
                tracing::debug!("{}: {reason}: {frame:?}", self.inner.name);
                Action::Dead(frame, reason)
            }
        }
    }

    /// Drops a dead frame that failed a check: it is never answered (a dead
    /// message earns no reply), only logged and counted.
    fn refuse(&self, mut st: MutexGuard<'_, State>, frame: &Frame, why: &str) -> Action {
        let n = count_refusal(&mut st);
        drop(st);
        if n.is_power_of_two() {
            tracing::warn!(
                "{}: ignored a frame to handle {} from context {} (auth {}): {why} \
                 ({n} frames refused so far)",
                self.inner.name,
                frame.handle,
                frame.src_id,
                frame.auth_id
            );
        } else {
            tracing::debug!(
                "{}: ignored a frame to handle {} from context {}: {why}",
                self.inner.name,
                frame.handle,
                frame.src_id
            );
        }
        Action::Nothing
    }

    fn deliver_locally(
        &self,
        mut st: MutexGuard<'_, State>,
        frame: Frame,
        ingress: Option<StreamId>,
    ) -> Action {
        // Router-internal handles need the ingress stream, so they are
        // served here rather than by a task. None of them acts on a dead
        // message: a forged one must not withdraw a route or end anything.
        match frame.handle {
            handles::ADD_ROUTE | handles::DEL_ROUTE | handles::ALLOCATE_ID if frame.is_dead() => {
                return self.refuse(st, &frame, "router handles take no dead messages");
            }
            // Routing messages are hop by hop: only the neighbour at the far
            // end of the stream may send them, never a context behind it
            // (which would speak with the neighbour's ownership).
            handles::ADD_ROUTE | handles::DEL_ROUTE | handles::ALLOCATE_ID
                if ingress.is_some() && !from_neighbour(&st.table, &frame, ingress) =>
            {
                return self.refuse(st, &frame, "routing messages come from a neighbour only");
            }
            handles::ADD_ROUTE => {
                drop(st);
                self.on_add_route(&frame, ingress);
                return Action::Nothing;
            }
            handles::DEL_ROUTE => {
                drop(st);
                self.on_del_route(&frame, ingress);
                return Action::Nothing;
            }
            handles::ALLOCATE_ID => {
                drop(st);
                return self.on_allocate_id(frame, ingress);
            }
            _ => {}
        }
        let Some(h) = st.handlers.get(&frame.handle) else {
            drop(st);
            if !frame.is_dead() {
                tracing::debug!(
                    "{}: no handler for handle {}: {frame:?}",
                    self.inner.name,
                    frame.handle
                );
            }
            let reason = DeadReason::InvalidHandle {
                handle: frame.handle,
                context: self.inner.id,
                name: self.inner.name.clone(),
            };
            return Action::Dead(frame, reason);
        };
        // The same checks for dead messages as for any other: only the
        // respondent (or a router answering on its behalf, which puts the
        // respondent's id in src_id — see send_dead_reply) may end a call.
        if let Some(r) = h.respondent
            && r != frame.src_id
        {
            if frame.is_dead() {
                return self.refuse(st, &frame, "not from the respondent");
            }
            drop(st);
            let reason = DeadReason::UnexpectedContext { from: frame.src_id };
            tracing::warn!("{}: {reason}: {frame:?}", self.inner.name);
            return Action::Dead(frame, reason);
        }
        if h.policy == Policy::ParentsOnly && !self.has_parent_authority(frame.auth_id) {
            if frame.is_dead() {
                return self.refuse(st, &frame, "refused by policy");
            }
            drop(st);
            let reason = DeadReason::Refused {
                from: frame.auth_id,
                handle: frame.handle,
                name: self.inner.name.clone(),
            };
            tracing::warn!("{}: {reason}", self.inner.name);
            return Action::Dead(frame, reason);
        }
        let persist = h.persist;
        let handle = frame.handle;
        if h.tx.send(frame).is_err() || !persist {
            st.handlers.remove(&handle);
        }
        Action::Nothing
    }

    /// Replies to `to` (which must have a `reply_to`) with a payload.
    pub(crate) fn reply(&self, to: &Frame, enc: Enc, payload: Bytes) {
        if to.reply_to == 0 || to.is_dead() {
            return;
        }
        self.send(Frame::new(to.src_id, to.reply_to, enc, payload));
    }

    /// Answers an undeliverable frame. The dead message speaks *on behalf
    /// of* the context the frame was for: `src_id` is that context and
    /// `auth_id` this router, so the caller's respondent check accepts it
    /// and every hop's reverse-path check still holds (`docs/protocol.md`
    /// §Dead messages).
    fn send_dead_reply(&self, frame: &Frame, reason: &DeadReason, tell_recipient: bool) {
        if frame.is_dead() {
            return;
        }
        let reason = &reason.to_string();
        let mut dead = if frame.reply_to != 0 {
            let mut f = Frame::dead(frame.src_id, frame.reply_to, reason);
            f.src_id = frame.dst_id;
            f
        } else if tell_recipient {
            // Nobody asked for a reply, but the recipient is waiting for
            // something: tell it (as Mitogen does for this one case), on
            // behalf of the sender.
            let mut f = Frame::dead(frame.dst_id, frame.handle, reason);
            f.src_id = frame.src_id;
            f
        } else {
            return;
        };
        dead.auth_id = self.inner.id;
        self.route(dead, None);
    }

    // ------------------------------------------------------------------ calls

    /// Sends `payload` to `(dst, handle)` with a one-shot reply handle whose
    /// respondent is `dst`, and waits for the reply.
    pub async fn request(
        &self,
        dst: ContextId,
        handle: Handle,
        enc: Enc,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Frame, CallError> {
        let mut rx = match self.add_handler(None, Policy::Any, Some(dst), false) {
            Ok(r) => r,
            Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
        };
        let mut frame = Frame::new(dst, handle, enc, payload);
        frame.reply_to = rx.handle();
        self.send(frame);
        let got = match timeout {
            Some(t) => rx.recv_timeout(t).await,
            None => rx.recv().await,
        };
        match got {
            Ok(f) => Ok(f),
            Err(crate::channel::ChannelError::Timeout(after)) => Err(CallError::Timeout {
                context: dst,
                after,
            }),
            Err(crate::channel::ChannelError::Dead(reason)) => Err(CallError::Dead {
                callee: self.describe(dst),
                reason,
            }),
            Err(crate::channel::ChannelError::Closed) => Err(CallError::Dead {
                callee: self.describe(dst),
                reason: DeadReason::Other("the reply handle was closed in this context".into()),
            }),
        }
    }

    /// Calls the method `rpc` in context `dst` and decodes its reply.
    pub async fn call<A, R>(&self, dst: ContextId, rpc: Rpc<A, R>, args: &A) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, rpc.service, rpc.method, args, None)
            .await
    }

    /// [`Router::call`] with an optional deadline.
    pub async fn call_timeout<A, R>(
        &self,
        dst: ContextId,
        rpc: Rpc<A, R>,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, rpc.service, rpc.method, args, timeout)
            .await
    }

    /// Calls `service.method(args)` in context `dst` and decodes the reply
    /// (for names known only at run time; else [`Router::call`]).
    pub async fn call_service<A, R>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, service, method, args, None)
            .await
    }

    /// [`Router::call_service`] with an optional deadline.
    pub async fn call_service_timeout<A, R>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let call = control::ServiceCall {
            service: service.into(),
            method: method.into(),
            args: control::encode(args).to_vec(),
        };
        let reply = self
            .request(
                dst,
                handles::CALL_SERVICE,
                Enc::Control,
                control::encode(&call),
                timeout,
            )
            .await?;
        let reply: CallReply =
            control::decode_frame(&reply).map_err(|e| CallError::malformed(dst, e))?;
        match reply {
            CallReply::Ok(bytes) => {
                control::decode(&bytes).map_err(|e| CallError::malformed(dst, e))
            }
            CallReply::Err(error) => Err(CallError::Remote {
                context: self.describe(dst),
                error: error.capped(),
            }),
        }
    }

    /// Calls a method without waiting for (or asking for) a reply.
    pub fn call_service_no_reply<A: serde::Serialize + ?Sized>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
    ) {
        let call = control::ServiceCall {
            service: service.into(),
            method: method.into(),
            args: control::encode(args).to_vec(),
        };
        self.send(Frame::new(
            dst,
            handles::CALL_SERVICE,
            Enc::Control,
            control::encode(&call),
        ));
    }

    /// Answers a service call frame with an error.
    pub(crate) fn reply_error(&self, to: &Frame, error: RemoteError) {
        self.reply(to, Enc::Control, control::encode(&CallReply::Err(error)));
    }

    // ---------------------------------------------------------------- streams

    /// Registers a stream to the neighbour `remote_id`. A parent stream
    /// becomes the default route; a child stream becomes the route to
    /// `remote_id`, which it then owns.
    pub(crate) fn attach_stream(
        &self,
        remote_id: ContextId,
        is_parent: bool,
        outbox: Arc<Outbox>,
        name: String,
    ) -> StreamId {
        let mut st = self.lock();
        let id = st.table.attach(remote_id, is_parent);
        if !is_parent {
            st.names.insert(remote_id, name.clone());
        }
        st.io.insert(id, LinkIo { name, outbox });
        id
    }

    /// Registers an additional stream (a stripe) to the neighbour of
    /// `primary`. Routing still uses the primary; bulk senders may spread
    /// data over [`Router::stripes`]. `None` if `primary` is gone.
    pub(crate) fn attach_alias_stream(
        &self,
        primary: StreamId,
        outbox: Arc<Outbox>,
        name: String,
    ) -> Option<StreamId> {
        let mut st = self.lock();
        let id = st.table.attach_stripe(primary)?;
        st.io.insert(id, LinkIo { name, outbox });
        Some(id)
    }

    /// The outboxes of `primary` and of every stripe attached to it,
    /// primary first.
    pub fn stripes(&self, primary: StreamId) -> Vec<Arc<Outbox>> {
        let st = self.lock();
        st.table
            .stripes_of(primary)
            .into_iter()
            .filter_map(|l| st.io.get(&l).map(|io| io.outbox.clone()))
            .collect()
    }

    /// Sends a frame originating here on a specific outbox (one of
    /// [`Router::stripes`]), waiting while its bulk queue is full.
    pub(crate) async fn send_bulk_on(&self, outbox: &Outbox, mut frame: Frame) {
        outbox.wait_bulk_room(BULK_HIGH_WATER).await;
        frame.src_id = self.inner.id;
        frame.auth_id = self.inner.id;
        if !outbox.push(frame) {
            tracing::debug!("dropped a bulk frame for a closing stripe");
        }
    }

    /// Tells the parent (if any) that `id` is reachable through us.
    pub fn announce_route(&self, id: ContextId, name: &str) {
        if let Some(&parent) = self.inner.parent_ids.first() {
            let msg = AddRoute {
                id,
                name: name.to_string(),
            };
            self.send(Frame::new(
                parent,
                handles::ADD_ROUTE,
                Enc::Control,
                control::encode(&msg),
            ));
        }
    }

    fn on_add_route(&self, frame: &Frame, ingress: Option<StreamId>) {
        let Some(s) = ingress else { return };
        let msg: AddRoute = match control::decode_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "{}: bad ADD_ROUTE from {}: {e}",
                    self.inner.name,
                    frame.src_id
                );
                return;
            }
        };
        // Names are shown to the operator and passed up the tree: keep them
        // short whatever the announcer sent.
        let name: String = msg.name.chars().take(256).collect();
        {
            let mut st = self.lock();
            if let Err(why) = st.table.add_route(msg.id, s) {
                let n = count_refusal(&mut st);
                drop(st);
                if n.is_power_of_two() {
                    tracing::warn!(
                        "{}: refused ADD_ROUTE for {} from stream {s} (context {}): {why} \
                         ({n} frames refused so far)",
                        self.inner.name,
                        msg.id,
                        frame.src_id
                    );
                }
                return;
            }
            st.names.insert(msg.id, name.clone());
        }
        tracing::debug!(
            "{}: route to {} ({name}) via stream {s}",
            self.inner.name,
            msg.id,
        );
        self.announce_route(msg.id, &name);
    }

    fn on_del_route(&self, frame: &Frame, ingress: Option<StreamId>) {
        let Some(s) = ingress else { return };
        let msg: DelRoute = match control::decode_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "{}: bad DEL_ROUTE from {}: {e}",
                    self.inner.name,
                    frame.src_id
                );
                return;
            }
        };
        let from_parent;
        {
            let mut st = self.lock();
            if !st.table.del_route(msg.id, s) {
                let n = count_refusal(&mut st);
                drop(st);
                if n.is_power_of_two() {
                    tracing::warn!(
                        "{}: refused DEL_ROUTE for {} from stream {s} (context {}) \
                         ({n} frames refused so far)",
                        self.inner.name,
                        msg.id,
                        frame.src_id
                    );
                }
                return;
            }
            from_parent = st.table.parent() == Some(s);
        }
        self.forget_contexts(
            &[msg.id],
            &crate::text::cap(&msg.reason),
            Some(s),
            !from_parent,
        );
    }

    /// ALLOCATE_ID from a child stream: a block of ids for it and its
    /// descendants, recorded as theirs. The controller allocates; any other
    /// context asks its own parent and passes the block down, so every
    /// router on the way knows which stream owns which ids.
    fn on_allocate_id(&self, frame: Frame, ingress: Option<StreamId>) -> Action {
        let Some(link) = ingress else {
            return Action::Dead(
                frame,
                DeadReason::IdsRefused("ids are allocated to child streams only".into()),
            );
        };
        if let Err(why) = self.lock().table.reserve_block(link) {
            tracing::warn!(
                "{}: refused ALLOCATE_ID from context {}: {why}",
                self.inner.name,
                frame.src_id
            );
            return Action::Dead(frame, DeadReason::IdsRefused(why.to_string()));
        }
        // Who the block is for: the neighbour itself (an empty request), or
        // a context below it that the neighbour asks for (a relay passing a
        // child's request up) — which must be one the neighbour owns.
        let requester = match control::decode_frame::<ContextId>(&frame) {
            Ok(child) => child,
            Err(_) => frame.src_id,
        };
        {
            let mut st = self.lock();
            if requester != frame.src_id && !st.table.owns(link, requester) {
                st.table.unreserve_block(link);
                return self.refuse(
                    st,
                    &frame,
                    "ids asked for a context the stream does not own",
                );
            }
        }
        if self.inner.id == 0 {
            let mut st = self.lock();
            let Some(block) = st.controller_ids.allocate_block() else {
                st.table.unreserve_block(link);
                return Action::Dead(frame, DeadReason::IdSpaceExhausted);
            };
            st.table.delegate_for(block, link, requester);
            drop(st);
            self.reply(&frame, Enc::Control, control::encode(&block));
            return Action::Nothing;
        }
        let me = self.clone();
        let for_child = self.lock().table.remote_id(link);
        tokio::spawn(async move {
            match me.request_block(for_child).await {
                Ok(block) => {
                    let kept = me.lock().table.delegate_for(block, link, requester);
                    if kept {
                        me.reply(&frame, Enc::Control, control::encode(&block));
                    }
                }
                Err(e) => {
                    me.lock().table.unreserve_block(link);
                    let reason = DeadReason::IdsUnavailable(e.to_string());
                    me.send_dead_reply(&frame, &reason, false);
                }
            }
        });
        Action::Nothing
    }

    /// Wakes waiters on `ids` and tells neighbours they are gone.
    fn forget_contexts(
        &self,
        ids: &[ContextId],
        reason: &str,
        via: Option<StreamId>,
        tell_parent: bool,
    ) {
        let mut notify: Vec<(Arc<Outbox>, Frame)> = Vec::new();
        {
            let mut st = self.lock();
            let dead: Vec<Handle> = st
                .handlers
                .iter()
                .filter(|(_, h)| h.respondent.is_some_and(|r| ids.contains(&r)))
                .map(|(&k, _)| k)
                .collect();
            for k in dead {
                if let Some(h) = st.handlers.remove(&k) {
                    let who = h.respondent.unwrap_or_default();
                    let name = st.names.get(&who).cloned().unwrap_or_default();
                    let why = DeadReason::Disconnected {
                        context: who,
                        name,
                        cause: reason.to_string(),
                    };
                    let mut f = Frame::dead(self.inner.id, k, &why.to_string());
                    f.src_id = who;
                    let _ = h.tx.send(f);
                }
            }
            for &id in ids {
                let payload = control::encode(&DelRoute {
                    id,
                    reason: reason.to_string(),
                });
                for (link, remote_id) in st.table.links_to_notify(id, via, tell_parent) {
                    let Some(io) = st.io.get(&link) else { continue };
                    let mut f =
                        Frame::new(remote_id, handles::DEL_ROUTE, Enc::Control, payload.clone());
                    f.src_id = self.inner.id;
                    f.auth_id = self.inner.id;
                    notify.push((io.outbox.clone(), f));
                }
            }
        }
        for (outbox, f) in notify {
            outbox.push(f);
        }
    }

    /// Called by a stream's tasks when it ends. Idempotent.
    pub(crate) fn stream_lost(&self, stream: StreamId, reason: &str) {
        let (lost, io, stripes) = {
            let mut st = self.lock();
            let Some(lost) = st.table.link_lost(stream) else {
                return;
            };
            let io = st.io.remove(&stream);
            let stripes: Vec<LinkIo> = lost
                .stripes
                .iter()
                .filter_map(|s| st.io.remove(s))
                .collect();
            (lost, io, stripes)
        };
        for s in stripes {
            s.outbox.close();
        }
        let name = io.as_ref().map(|l| l.name.clone()).unwrap_or_default();
        if let Some(io) = io {
            io.outbox.close();
        }
        if lost.was_stripe {
            tracing::debug!(
                "{}: stripe {stream} ({name}) closed: {reason}",
                self.inner.name
            );
            return;
        }
        tracing::debug!(
            "{}: stream {stream} to {} ({name}) lost: {reason}",
            self.inner.name,
            lost.remote_id
        );
        self.forget_contexts(&lost.contexts, reason, Some(stream), !lost.was_parent);
        if lost.was_parent {
            // Everything we might be waiting on lies beyond the parent now.
            let upstream: Vec<ContextId> = {
                let st = self.lock();
                st.handlers
                    .values()
                    .filter_map(|h| h.respondent)
                    .filter(|r| !st.table.has_route(*r) && *r != self.inner.id)
                    .collect()
            };
            self.forget_contexts(&upstream, "the parent stream was lost", Some(stream), false);
            // send_replace, not send: the value must be kept even if nobody
            // is waiting yet (a child that loses its parent before its main
            // task starts waiting would otherwise wait forever).
            self.inner
                .parent_lost
                .send_replace(Some(reason.to_string()));
        }
    }

    /// Resolves when the stream to the parent is lost, with the reason.
    pub async fn parent_lost(&self) -> String {
        let mut rx = self.inner.parent_lost.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return "router dropped".into();
            }
        }
    }

    /// Closes every stream (used at shutdown).
    pub fn close_all_streams(&self, reason: &str) {
        let ids: Vec<StreamId> = self.lock().table.links();
        for id in ids {
            self.stream_lost(id, reason);
        }
    }

    /// The outbox of a stream, for flow-control accounting.
    pub fn outbox(&self, stream: StreamId) -> Option<Arc<Outbox>> {
        self.lock().io.get(&stream).map(|l| l.outbox.clone())
    }

    /// The neighbour at the far end of a stream.
    pub(crate) fn stream_remote(&self, stream: StreamId) -> Option<ContextId> {
        self.lock().table.remote_id(stream)
    }

    // ------------------------------------------------------------- id space

    /// A fresh context id for a child this context is about to start.
    pub async fn allocate_id(&self) -> Result<ContextId, CallError> {
        if self.inner.id == 0 {
            return self
                .lock()
                .controller_ids
                .allocate()
                .ok_or_else(|| CallError::Dead {
                    callee: self.describe(0),
                    reason: DeadReason::IdSpaceExhausted,
                });
        }
        loop {
            if let Some(id) = self.lock().block.take() {
                return Ok(id);
            }
            let block = self.request_block(None).await?;
            self.lock().block.refill(block);
        }
    }

    /// Asks the parent for a block of ids (ALLOCATE_ID), for this context
    /// or, as a relay, for the child `for_child`.
    async fn request_block(&self, for_child: Option<ContextId>) -> Result<IdBlock, CallError> {
        let Some(&parent) = self.inner.parent_ids.first() else {
            return Err(CallError::Dead {
                callee: self.describe(self.inner.id),
                reason: DeadReason::IdsUnavailable("no parent to allocate ids from".into()),
            });
        };
        let reply = self
            .request(
                parent,
                handles::ALLOCATE_ID,
                Enc::Control,
                for_child.map(|c| control::encode(&c)).unwrap_or_default(),
                None,
            )
            .await?;
        let block: IdBlock =
            control::decode_frame(&reply).map_err(|e| CallError::malformed(parent, e))?;
        if block.start >= block.end {
            return Err(CallError::Malformed {
                context: parent,
                detail: "an empty id block".into(),
            });
        }
        Ok(block)
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
