//! Context ids: a fresh one for a child, blocks asked of the parent, and
//! ALLOCATE_ID answered for the streams below.

use super::*;

impl Router {
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
    pub(super) async fn request_block(
        &self,
        for_child: Option<ContextId>,
    ) -> Result<IdBlock, CallError> {
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

    /// ALLOCATE_ID from a child stream: a block of ids for it and its
    /// descendants, recorded as theirs. The controller allocates; any other
    /// context asks its own parent and passes the block down, so every
    /// router on the way knows which stream owns which ids.
    pub(super) fn on_allocate_id(&self, frame: Frame, ingress: Option<StreamId>) -> Action {
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
}
