//! Which link owns which context ids: announced routes (`ADD_ROUTE`,
//! `DEL_ROUTE`), the id blocks delegated to child links and their caps
//! — the ownership rule of `docs/protocol.md` §Trust.

use super::{LinkId, MAX_BLOCKS_PER_LINK, MAX_BLOCKS_PER_RELAYED_LINK, Table};
use crate::wire::ContextId;
use crate::wire::control::IdBlock;

/// Why an ADD_ROUTE was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefused {
    /// Routes are announced upwards only.
    #[error("ADD_ROUTE from the parent")]
    FromParent,
    /// The id is this context or one of its ancestors.
    #[error("context {0} is this context or an ancestor")]
    Ancestor(ContextId),
    /// The id was neither allocated to nor delegated to the announcing link.
    #[error("context {0} is not owned by the announcing stream")]
    NotOwned(ContextId),
    /// The link is unknown or a stripe.
    #[error("stream {0} cannot announce routes")]
    BadLink(LinkId),
}

/// Why a block of ids was not delegated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelegateRefused {
    /// The link already holds as many blocks as it may
    /// ([`MAX_BLOCKS_PER_LINK`] at the controller,
    /// [`MAX_BLOCKS_PER_RELAYED_LINK`] elsewhere).
    #[error("id allocation limit reached for this stream")]
    LimitReached,
    /// Only child links are delegated ids.
    #[error("ids are delegated to child streams only")]
    NotAChild,
}

impl Table {
    /// The child link that owns `id` by delegation, if any.
    pub fn delegated_to(&self, id: ContextId) -> Option<LinkId> {
        let (_, &(end, link, _)) = self.delegated.range(..=id).next_back()?;
        (id < end).then_some(link)
    }

    /// The context that asked for the block holding `id` (and so gave `id`
    /// out), if `id` is in a delegated block.
    pub fn requester_of(&self, id: ContextId) -> Option<ContextId> {
        let (_, &(end, _, requester)) = self.delegated.range(..=id).next_back()?;
        (id < end).then_some(requester)
    }

    /// True if `link` owns `id` (attached with it, or delegated a block
    /// holding it).
    pub fn owns(&self, link: LinkId, id: ContextId) -> bool {
        let Some(link) = self.canonical(link) else {
            return false;
        };
        self.attached.get(&id) == Some(&link) || self.delegated_to(id) == Some(link)
    }

    /// Records that `link` announced a route to `id` (ADD_ROUTE). Honoured
    /// only for ids the link owns.
    pub fn add_route(&mut self, id: ContextId, link: LinkId) -> Result<(), RouteRefused> {
        let Some(link) = self.canonical(link) else {
            return Err(RouteRefused::BadLink(link));
        };
        if Some(link) == self.parent {
            return Err(RouteRefused::FromParent);
        }
        if self.is_self_or_ancestor(id) {
            return Err(RouteRefused::Ancestor(id));
        }
        let owned = self.attached.get(&id) == Some(&link) || self.delegated_to(id) == Some(link);
        if !owned {
            return Err(RouteRefused::NotOwned(id));
        }
        self.routes.insert(id, link);
        if let Some(l) = self.links.get_mut(&link) {
            l.claimed.insert(id);
        }
        Ok(())
    }

    /// Handles DEL_ROUTE for `id` from `link`. True if the link may speak
    /// for `id` (so waiters on it are to be woken): a child link only for a
    /// route that points at it, the parent for anything not routed below.
    pub fn del_route(&mut self, id: ContextId, link: LinkId) -> bool {
        let Some(link) = self.canonical(link) else {
            return false;
        };
        if self.routes.get(&id) == Some(&link) {
            self.routes.remove(&id);
            if let Some(l) = self.links.get_mut(&link) {
                l.claimed.remove(&id);
            }
            return true;
        }
        Some(link) == self.parent && !self.routes.contains_key(&id) && !self.is_self_or_ancestor(id)
    }

    /// Reserves one more id block for `link` (an ALLOCATE_ID request from
    /// it); the block itself is recorded with [`Table::delegate`] once known.
    pub fn reserve_block(&mut self, link: LinkId) -> Result<(), DelegateRefused> {
        let link = self.canonical(link).ok_or(DelegateRefused::NotAChild)?;
        if Some(link) == self.parent {
            return Err(DelegateRefused::NotAChild);
        }
        let cap = self.block_cap();
        let l = self
            .links
            .get_mut(&link)
            .ok_or(DelegateRefused::NotAChild)?;
        if l.blocks >= cap {
            return Err(DelegateRefused::LimitReached);
        }
        l.blocks += 1;
        Ok(())
    }

    /// Blocks one child link may be delegated here.
    pub fn block_cap(&self) -> usize {
        if self.me == 0 {
            MAX_BLOCKS_PER_LINK
        } else {
            MAX_BLOCKS_PER_RELAYED_LINK
        }
    }

    /// Gives back a reservation whose block never came.
    pub fn unreserve_block(&mut self, link: LinkId) {
        if let Some(l) = self.canonical(link).and_then(|c| self.links.get_mut(&c)) {
            l.blocks = l.blocks.saturating_sub(1);
        }
    }

    /// Records that the ids of `block` now belong to `link` (after
    /// [`Table::reserve_block`]). False if the link has gone meanwhile.
    pub fn delegate(&mut self, block: IdBlock, link: LinkId) -> bool {
        let Some(requester) = self.remote_id(link) else {
            return false;
        };
        self.delegate_for(block, link, requester)
    }

    /// [`Table::delegate`] for a block asked for on behalf of `requester`
    /// (a context the link owns, below its neighbour).
    pub fn delegate_for(&mut self, block: IdBlock, link: LinkId, requester: ContextId) -> bool {
        let Some(link) = self.canonical(link) else {
            return false;
        };
        if block.start >= block.end {
            return false;
        }
        self.delegated
            .insert(block.start, (block.end, link, requester));
        true
    }
}
