//! Streams and routes: attaching streams and stripes, ADD_ROUTE and
//! DEL_ROUTE, and what a lost stream takes with it.

use super::*;

impl Router {
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

    pub(super) fn on_add_route(&self, frame: &Frame, ingress: Option<StreamId>) {
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

    pub(super) fn on_del_route(&self, frame: &Frame, ingress: Option<StreamId>) {
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

    /// Wakes waiters on `ids` and tells neighbours they are gone.
    pub(super) fn forget_contexts(
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
}
