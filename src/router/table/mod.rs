//! The routing table and the routing decision: plain data, no locks, no
//! tasks, no I/O.
//!
//! [`Table::route`] decides what happens to one frame from its header and the
//! link it arrived on; [`super::Router`] only applies the [`Decision`]. The
//! trust rules of `docs/protocol.md` §Trust live here, so they are tested
//! without a runtime (see the property tests at the bottom):
//!
//! * **Reverse path.** A frame arriving on link L must claim an `auth_id`
//!   (and a `src_id`) that this table would itself route through L.
//! * **Ownership.** Every context id reachable through a child link is owned
//!   by that link: the id of the neighbour itself (allocated here when the
//!   link was attached) or an id inside a block this context delegated to
//!   the link ([`Table::delegate`]). A link may announce ([`Table::add_route`])
//!   or withdraw ([`Table::del_route`]) only ids it owns, so a target can
//!   neither guess nor claim a sibling's id.
//! * **Loss.** When a link ends, only the routes that still point at it go
//!   ([`Table::link_lost`]), never an id since given to another link.
//!
//! Here: the table, its links and routes, and loss. The decision itself
//! is in `decide`, the ownership of ids (routes announced, blocks
//! delegated) in `ownership`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::wire::ContextId;
pub use crate::wire::DeadReason;

mod decide;
mod ownership;

pub use decide::{Decision, Rejection};
pub use ownership::{DelegateRefused, RouteRefused};

/// Destinations remembered per link (to tell it when one dies); a link that
/// sends to more distinct contexts than this is told of every loss instead.
pub const MAX_EGRESS: usize = 4096;

/// A link: one physical stream to a neighbour (or a stripe of one).
pub type LinkId = u64;

/// Id blocks one child link of the **controller** may be delegated over its
/// lifetime (for itself and everything below it): 16,384 blocks of 1,000
/// ids, 0.4 % of the id space, so a relay can start thousands of
/// sub-contexts and an attacker needs hundreds of links to exhaust the space.
pub const MAX_BLOCKS_PER_LINK: usize = 16_384;

/// The same cap at any other router (a relay): a sixteenth of what the
/// controller allows the relay itself, so one target behind a relay cannot
/// use up the relay's budget and starve its siblings.
pub const MAX_BLOCKS_PER_RELAYED_LINK: usize = MAX_BLOCKS_PER_LINK / 16;

#[derive(Debug)]
struct Link {
    remote_id: ContextId,
    alias_of: Option<LinkId>,
    /// Ids announced through this link (routes that point here, or did).
    claimed: HashSet<ContextId>,
    /// Destinations this neighbour has sent traffic to: who to tell when one dies.
    egress: HashSet<ContextId>,
    /// Set once `egress` would pass [`MAX_EGRESS`]: the link is then told
    /// of every loss instead.
    egress_overflow: bool,
    /// Id blocks delegated to this link, including requests in flight.
    blocks: usize,
}

/// What [`Table::link_lost`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLink {
    /// The neighbour at the far end.
    pub remote_id: ContextId,
    /// True if it was the parent link.
    pub was_parent: bool,
    /// True if it was a stripe (only bandwidth was lost).
    pub was_stripe: bool,
    /// Contexts no longer reachable (routes that still pointed at the link).
    pub contexts: Vec<ContextId>,
    /// Stripes of the lost link, removed with it.
    pub stripes: Vec<LinkId>,
}

/// One context's routing table.
#[derive(Debug)]
pub struct Table {
    me: ContextId,
    ancestors: Vec<ContextId>,
    max_message_size: usize,
    links: HashMap<LinkId, Link>,
    routes: HashMap<ContextId, LinkId>,
    parent: Option<LinkId>,
    /// The child link each directly attached neighbour id was last given to
    /// (it owns that id even while its route is withdrawn).
    attached: HashMap<ContextId, LinkId>,
    /// Id blocks delegated to child links: start → (end, link, the context
    /// that asked for it and hands its ids out).
    delegated: BTreeMap<ContextId, (ContextId, LinkId, ContextId)>,
    next_link: LinkId,
}

impl Table {
    /// An empty table for context `me` with its ancestors, nearest first.
    pub fn new(me: ContextId, ancestors: Vec<ContextId>, max_message_size: usize) -> Table {
        Table {
            me,
            ancestors,
            max_message_size,
            links: HashMap::new(),
            routes: HashMap::new(),
            parent: None,
            attached: HashMap::new(),
            delegated: BTreeMap::new(),
            next_link: 1,
        }
    }

    /// This context's id.
    pub fn me(&self) -> ContextId {
        self.me
    }

    /// True if `id` is this context or an ancestor.
    pub fn is_self_or_ancestor(&self, id: ContextId) -> bool {
        id == self.me || self.ancestors.contains(&id)
    }

    /// Attaches a link to the neighbour `remote_id`. A parent link becomes the
    /// default route; a child link owns `remote_id` (allocated here).
    pub fn attach(&mut self, remote_id: ContextId, is_parent: bool) -> LinkId {
        let id = self.new_link_id();
        let mut claimed = HashSet::new();
        if is_parent {
            self.parent = Some(id);
        } else {
            claimed.insert(remote_id);
            self.attached.insert(remote_id, id);
            if let Some(old) = self.routes.insert(remote_id, id)
                && let Some(l) = self.links.get_mut(&old)
            {
                l.claimed.remove(&remote_id);
            }
        }
        self.links.insert(
            id,
            Link {
                remote_id,
                alias_of: None,
                claimed,
                egress: HashSet::new(),
                egress_overflow: false,
                blocks: 0,
            },
        );
        id
    }

    /// Attaches a stripe of `primary`: it shares the primary's identity and
    /// carries no routes of its own. `None` if `primary` is not attached.
    pub fn attach_stripe(&mut self, primary: LinkId) -> Option<LinkId> {
        let primary = self.canonical(primary)?;
        let remote_id = self.links.get(&primary)?.remote_id;
        let id = self.new_link_id();
        self.links.insert(
            id,
            Link {
                remote_id,
                alias_of: Some(primary),
                claimed: HashSet::new(),
                egress: HashSet::new(),
                egress_overflow: false,
                blocks: 0,
            },
        );
        Some(id)
    }

    fn new_link_id(&mut self) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        id
    }

    /// The primary link a link stands for (itself, or a stripe's primary).
    pub fn canonical(&self, link: LinkId) -> Option<LinkId> {
        let l = self.links.get(&link)?;
        Some(l.alias_of.unwrap_or(link))
    }

    /// The parent link, if any.
    pub fn parent(&self) -> Option<LinkId> {
        self.parent
    }

    /// The neighbour at the far end of a link.
    pub fn remote_id(&self, link: LinkId) -> Option<ContextId> {
        self.links.get(&link).map(|l| l.remote_id)
    }

    /// True if `link` is a stripe.
    pub fn is_stripe(&self, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| l.alias_of.is_some())
    }

    /// Every attached link.
    pub fn links(&self) -> Vec<LinkId> {
        self.links.keys().copied().collect()
    }

    /// `primary` and its stripes, primary first, then in attach order.
    pub fn stripes_of(&self, primary: LinkId) -> Vec<LinkId> {
        let mut v: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| **id == primary || l.alias_of == Some(primary))
            .map(|(id, _)| *id)
            .collect();
        v.sort_by_key(|id| (*id != primary, *id));
        v
    }

    /// True if an explicit route to `id` is known.
    pub fn has_route(&self, id: ContextId) -> bool {
        self.routes.contains_key(&id)
    }

    /// The first hop towards `id`: its route, else the parent link.
    pub fn towards(&self, id: ContextId) -> Option<LinkId> {
        self.routes.get(&id).copied().or(self.parent)
    }

    /// Every explicit route, `(context, link)`, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (ContextId, LinkId)> + '_ {
        self.routes.iter().map(|(&id, &link)| (id, link))
    }

    /// Removes a link. For a primary link, its stripes go too and the
    /// contexts whose routes still point at it are returned.
    pub fn link_lost(&mut self, link: LinkId) -> Option<LostLink> {
        let entry = self.links.remove(&link)?;
        if entry.alias_of.is_some() {
            return Some(LostLink {
                remote_id: entry.remote_id,
                was_parent: false,
                was_stripe: true,
                contexts: Vec::new(),
                stripes: Vec::new(),
            });
        }
        let stripes: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.alias_of == Some(link))
            .map(|(id, _)| *id)
            .collect();
        for s in &stripes {
            self.links.remove(s);
        }
        let mut contexts: Vec<ContextId> = entry
            .claimed
            .iter()
            .copied()
            .filter(|id| self.routes.get(id) == Some(&link))
            .collect();
        contexts.sort_unstable();
        for id in &contexts {
            self.routes.remove(id);
        }
        self.delegated.retain(|_, (_, l, _)| *l != link);
        self.attached.retain(|_, l| *l != link);
        let was_parent = self.parent == Some(link);
        if was_parent {
            self.parent = None;
        }
        Some(LostLink {
            remote_id: entry.remote_id,
            was_parent,
            was_stripe: false,
            contexts,
            stripes,
        })
    }

    /// The links to tell that `id` is gone, other than `via`: the parent if
    /// `tell_parent`, and every child link that has sent traffic towards
    /// `id` (each told once).
    pub fn links_to_notify(
        &mut self,
        id: ContextId,
        via: Option<LinkId>,
        tell_parent: bool,
    ) -> Vec<(LinkId, ContextId)> {
        let parent = self.parent;
        let mut out = Vec::new();
        for (&lid, l) in self.links.iter_mut() {
            if Some(lid) == via || l.alias_of.is_some() {
                continue;
            }
            let wanted = if Some(lid) == parent {
                tell_parent
            } else {
                l.egress.remove(&id) || l.egress_overflow
            };
            if wanted {
                out.push((lid, l.remote_id));
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;
    use crate::wire::control::IdBlock;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn header(dst: ContextId, src: ContextId, auth: ContextId) -> Header {
        Header {
            enc: 0x4d50,
            dst_id: dst,
            src_id: src,
            auth_id: auth,
            handle: 1000,
            reply_to: 0,
            len: 0,
        }
    }

    #[test]
    fn an_id_not_delegated_cannot_be_claimed() {
        let mut t = Table::new(0, vec![], MAX);
        let a = t.attach(1, false);
        let b = t.attach(2, false);
        t.reserve_block(b).expect("room");
        assert!(t.delegate(
            IdBlock {
                start: 3,
                end: 1003
            },
            b
        ));
        // a announces an id of b's block: refused; b may.
        assert_eq!(t.add_route(3, a), Err(RouteRefused::NotOwned(3)));
        assert_eq!(t.add_route(3, b), Ok(()));
        // a announces the id the controller will give its next child.
        assert_eq!(t.add_route(1003, a), Err(RouteRefused::NotOwned(1003)));
        // A link may not claim its sibling.
        assert_eq!(t.add_route(2, a), Err(RouteRefused::NotOwned(2)));
        assert_eq!(t.towards(3), Some(b));
    }

    #[test]
    fn a_neighbour_owns_its_own_id_until_it_is_given_to_another_link() {
        // Found by the router_table fuzz target: a child that withdrew its
        // own route could not announce itself again.
        let mut t = Table::new(0, vec![], MAX);
        let old = t.attach(1, false);
        assert!(t.del_route(1, old));
        assert_eq!(t.add_route(1, old), Ok(()));
        // After a reconnect under the same id, the old stream owns nothing.
        let new = t.attach(1, false);
        assert!(!t.del_route(1, old));
        assert_eq!(t.add_route(1, old), Err(RouteRefused::NotOwned(1)));
        assert_eq!(t.towards(1), Some(new));
    }

    #[test]
    fn a_lost_link_removes_only_routes_that_still_point_at_it() {
        let mut t = Table::new(0, vec![], MAX);
        let a = t.attach(1, false);
        // 5 is first reached through a, then (a new child) through c.
        let c = t.attach(5, false);
        let a_again = t.attach(5, false);
        let lost = t.link_lost(c).expect("attached");
        assert!(
            lost.contexts.is_empty(),
            "5 was since given to another link"
        );
        assert_eq!(t.towards(5), Some(a_again));
        let lost = t.link_lost(a).expect("attached");
        assert_eq!(lost.contexts, vec![1]);
    }

    #[test]
    fn id_blocks_per_link_are_capped() {
        let mut t = Table::new(0, vec![], MAX);
        let a = t.attach(1, false);
        for _ in 0..MAX_BLOCKS_PER_LINK {
            t.reserve_block(a).expect("within the cap");
        }
        assert_eq!(t.reserve_block(a), Err(DelegateRefused::LimitReached));
        // A relay allows each child a sixteenth of that.
        let mut relay = Table::new(5, vec![0], MAX);
        let c = relay.attach(6, false);
        for _ in 0..MAX_BLOCKS_PER_RELAYED_LINK {
            relay.reserve_block(c).expect("within the cap");
        }
        assert_eq!(relay.reserve_block(c), Err(DelegateRefused::LimitReached));
        let p = t.attach(9, true);
        assert_eq!(t.reserve_block(p), Err(DelegateRefused::NotAChild));
    }

    #[test]
    fn a_link_writing_to_many_ids_is_bounded_and_then_told_of_every_loss() {
        let mut t = Table::new(5, vec![0], MAX);
        t.attach(0, true);
        let a = t.attach(6, false);
        let b = t.attach(7, false);
        // b writes to one far context; a sprays made-up ids.
        t.route(&header(9000, 7, 7), Some(b));
        for id in 10_000..10_000 + MAX_EGRESS as u32 + 10 {
            t.route(&header(id, 6, 6), Some(a));
        }
        assert!(
            t.links
                .get(&a)
                .is_some_and(|l| l.egress.len() <= MAX_EGRESS)
        );
        // A far sibling's loss reaches the one that wrote to it, and the
        // sprayer (which no longer knows what it wrote to).
        assert_eq!(t.links_to_notify(9000, None, false), vec![(a, 6), (b, 7)]);
        assert_eq!(t.links_to_notify(4242, None, false), vec![(a, 6)]);
    }

    #[test]
    fn parent_may_delete_only_what_is_not_below() {
        let mut t = Table::new(7, vec![3, 0], MAX);
        let p = t.attach(3, true);
        let c = t.attach(8, false);
        assert!(!t.del_route(8, p), "the parent cannot cut a child off");
        assert!(t.del_route(4242, p));
        assert!(!t.del_route(0, p), "an ancestor is not withdrawn");
        assert!(t.del_route(8, c));
        assert!(!t.has_route(8));
    }

    #[test]
    fn reverse_path_and_forwarding() {
        let mut t = Table::new(0, vec![], MAX);
        let a = t.attach(1, false);
        let b = t.attach(2, false);
        assert_eq!(t.route(&header(2, 1, 1), Some(a)), Decision::Forward(b));
        assert_eq!(
            t.route(&header(2, 1, 2), Some(a)),
            Decision::Drop(Rejection::BadAuthId {
                auth_id: 2,
                link: a
            })
        );
        assert_eq!(
            t.route(&header(0, 2, 1), Some(a)),
            Decision::Drop(Rejection::BadSrcId { src_id: 2, link: a })
        );
        assert_eq!(t.route(&header(0, 1, 1), Some(a)), Decision::Deliver);
        assert_eq!(
            t.route(&header(77, 1, 1), Some(a)),
            Decision::Dead(DeadReason::NoRoute { dst: 77, me: 0 })
        );
        let mut big = header(2, 0, 0);
        big.len = MAX as u32 + 1;
        assert_eq!(
            t.route(&big, None),
            Decision::Dead(DeadReason::TooLarge { max: MAX })
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Attach,
        Delegate(usize),
        Announce(usize, ContextId),
        Withdraw(usize, ContextId),
        Lose(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Attach),
            (0usize..6).prop_map(Op::Delegate),
            (0usize..6, 0u32..40).prop_map(|(l, id)| Op::Announce(l, id)),
            (0usize..6, 0u32..40).prop_map(|(l, id)| Op::Withdraw(l, id)),
            (0usize..6).prop_map(Op::Lose),
        ]
    }

    proptest! {
        /// Whatever links announce, withdraw or lose, a route always points
        /// at the link that was given the id (attached with it, or delegated
        /// a block holding it), and a lost link never takes another's route.
        #[test]
        fn routes_point_only_at_owners(ops in proptest::collection::vec(op(), 1..80)) {
            let mut t = Table::new(0, vec![], MAX);
            // Reference model: who was given each id.
            let mut owner: HashMap<ContextId, LinkId> = HashMap::new();
            let mut links: Vec<LinkId> = Vec::new();
            let mut next_id: ContextId = 1;
            for op in ops {
                match op {
                    Op::Attach => {
                        let l = t.attach(next_id, false);
                        owner.insert(next_id, l);
                        next_id += 1;
                        links.push(l);
                    }
                    Op::Delegate(i) => {
                        if let Some(&l) = links.get(i)
                            && t.reserve_block(l).is_ok()
                        {
                            let block = IdBlock { start: next_id, end: next_id + 3 };
                            prop_assert!(t.delegate(block, l));
                            for id in block.start..block.end {
                                owner.insert(id, l);
                            }
                            next_id += 3;
                        }
                    }
                    Op::Announce(i, id) => {
                        if let Some(&l) = links.get(i) {
                            let ok = t.add_route(id, l).is_ok();
                            prop_assert_eq!(ok, owner.get(&id) == Some(&l) && id != 0);
                        }
                    }
                    Op::Withdraw(i, id) => {
                        if let Some(&l) = links.get(i) {
                            let before = t.routes.get(&id).copied();
                            t.del_route(id, l);
                            if before != Some(l) {
                                prop_assert_eq!(t.routes.get(&id).copied(), before);
                            }
                        }
                    }
                    Op::Lose(i) => {
                        if i < links.len() {
                            let l = links.remove(i);
                            let others: Vec<(ContextId, LinkId)> = t
                                .routes
                                .iter()
                                .filter(|(_, v)| **v != l)
                                .map(|(k, v)| (*k, *v))
                                .collect();
                            t.link_lost(l);
                            owner.retain(|_, v| *v != l);
                            for (id, via) in others {
                                prop_assert_eq!(t.routes.get(&id), Some(&via));
                            }
                        }
                    }
                }
                for (id, l) in &t.routes {
                    prop_assert_eq!(owner.get(id), Some(l), "route to {} not owned", id);
                }
            }
        }
    }
}
