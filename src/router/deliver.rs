//! Sending and routing: a frame originating here or arriving on a stream
//! is delivered to a local handle, forwarded one hop, or answered dead.

use super::*;

impl Router {
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

    pub(super) fn outbox_towards(&self, dst: ContextId) -> Option<Arc<Outbox>> {
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

    pub(super) fn decide(&self, frame: Frame, ingress: Option<StreamId>) -> Action {
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
    pub(super) fn refuse(&self, mut st: MutexGuard<'_, State>, frame: &Frame, why: &str) -> Action {
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

    pub(super) fn deliver_locally(
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
    pub(super) fn send_dead_reply(&self, frame: &Frame, reason: &DeadReason, tell_recipient: bool) {
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
}
