//! The routing decision for one frame: [`Table::route`] and what it
//! decides — the reverse-path rule of `docs/protocol.md` §Trust.

use std::fmt;

use super::{DeadReason, LinkId, MAX_EGRESS, Table};
use crate::wire::{ContextId, Header};

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// For a handle in this context.
    Deliver,
    /// Send it on this link.
    Forward(LinkId),
    /// Drop it silently (it is logged and counted): answering a forger would
    /// only help it probe.
    Drop(Rejection),
    /// Undeliverable: answer the sender (unless the frame is itself dead).
    Dead(DeadReason),
}

/// Why a frame was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `auth_id` is not reached through the link the frame came in on.
    BadAuthId {
        /// The claimed authority.
        auth_id: ContextId,
        /// The link it arrived on.
        link: LinkId,
    },
    /// `src_id` is not reached through the link the frame came in on.
    BadSrcId {
        /// The claimed source.
        src_id: ContextId,
        /// The link it arrived on.
        link: LinkId,
    },
    /// The link is not (or no longer) attached.
    UnknownLink(LinkId),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::BadAuthId { auth_id, link } => {
                write!(f, "bad auth_id {auth_id} from stream {link}")
            }
            Rejection::BadSrcId { src_id, link } => {
                write!(f, "bad src_id {src_id} from stream {link}")
            }
            Rejection::UnknownLink(link) => write!(f, "frame from unknown stream {link}"),
        }
    }
}

impl Table {
    /// Decides what happens to a frame with header `h` that arrived on
    /// `ingress` (`None`: it originates in this context).
    pub fn route(&mut self, h: &Header, ingress: Option<LinkId>) -> Decision {
        if h.len as usize > self.max_message_size {
            return Decision::Dead(DeadReason::TooLarge {
                max: self.max_message_size,
            });
        }
        let ingress = match ingress {
            None => None,
            Some(l) => match self.canonical(l) {
                Some(c) => Some(c),
                None => return Decision::Drop(Rejection::UnknownLink(l)),
            },
        };
        if let Some(link) = ingress {
            if self.towards(h.auth_id) != Some(link) {
                return Decision::Drop(Rejection::BadAuthId {
                    auth_id: h.auth_id,
                    link,
                });
            }
            if h.src_id != h.auth_id && self.towards(h.src_id) != Some(link) {
                return Decision::Drop(Rejection::BadSrcId {
                    src_id: h.src_id,
                    link,
                });
            }
            // Bounded: a peer writing to made-up ids fills the set once,
            // after which it is simply told of every loss.
            if h.dst_id != self.me
                && let Some(l) = self.links.get_mut(&link)
                && !l.egress_overflow
            {
                if l.egress.len() >= MAX_EGRESS {
                    l.egress.clear();
                    l.egress_overflow = true;
                } else {
                    l.egress.insert(h.dst_id);
                }
            }
        }
        if h.dst_id == self.me {
            return Decision::Deliver;
        }
        let out = match self.routes.get(&h.dst_id) {
            Some(&l) => Some(l),
            // Never bounce a frame back to the parent it came from.
            None if ingress.is_some() && ingress == self.parent => None,
            None => self.parent,
        };
        match out {
            Some(l) if Some(l) != ingress && self.links.contains_key(&l) => Decision::Forward(l),
            _ => Decision::Dead(DeadReason::NoRoute {
                dst: h.dst_id,
                me: self.me,
            }),
        }
    }
}
