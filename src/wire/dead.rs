//! Why a channel ended: the reason a dead message carries.
//!
//! On the wire a dead message's payload is UTF-8 text (`docs/protocol.md` §8,
//! as in Mitogen, whose peers show it to people). The reasons routers make
//! form a closed set, each with a fixed wording; [`DeadReason`] is that set
//! as a type. [`DeadReason::fmt`](std::fmt::Display) writes the wording and
//! [`DeadReason::parse`] reads it back, so code above the wire decides on a
//! variant — whether a route was lost or a policy refused — and never on the
//! words. Text that is not one of the router's wordings (a sender's own
//! reason given to `close_with`, or a peer's) is kept whole as
//! [`DeadReason::Other`].

use std::fmt;

use super::{ContextId, Handle};

/// The wording of [`DeadReason::Closed`].
pub const SENDER_CLOSED: &str = "channel closed by the sending side";

/// Why a channel ended or a frame could not be delivered (§8's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadReason {
    /// Context `me` has no way on to `dst`.
    NoRoute {
        /// The destination.
        dst: ContextId,
        /// The context that could not take the frame on.
        me: ContextId,
    },
    /// Nothing is registered at `handle` in `context`.
    InvalidHandle {
        /// The handle the frame was for.
        handle: Handle,
        /// The destination context.
        context: ContextId,
        /// Its name.
        name: String,
    },
    /// A parents-only handle refused a sender without parent authority.
    Refused {
        /// The sender's `auth_id`.
        from: ContextId,
        /// The handle.
        handle: Handle,
        /// The refusing context's name.
        name: String,
    },
    /// A handle waiting on one context got a frame from another.
    UnexpectedContext {
        /// Who sent it.
        from: ContextId,
    },
    /// The payload was over the maximum message size.
    TooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The controller has no context ids left.
    IdSpaceExhausted,
    /// A router refused ids: the stream holds all it may, or it is not a
    /// child stream. The text says which.
    IdsRefused(String),
    /// A relay's own request for ids failed; the text says why.
    IdsUnavailable(String),
    /// The context a waiter depended on has gone (made up locally, never
    /// sent on the wire: `docs/protocol.md` §9.5).
    Disconnected {
        /// The context that went away.
        context: ContextId,
        /// Its name.
        name: String,
        /// Why it went (the stream's end, a kill, a lost hop).
        cause: String,
    },
    /// The sender closed the channel ([`SENDER_CLOSED`]).
    Closed,
    /// Any other reason: a sender's own, in its words.
    Other(String),
}

impl DeadReason {
    /// True if the channel ended because a context or the route to it is
    /// gone — not because something refused or a sender chose to end it.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            DeadReason::NoRoute { .. } | DeadReason::Disconnected { .. }
        )
    }

    /// True if a policy or a check at the destination refused the frame.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DeadReason::InvalidHandle { .. }
                | DeadReason::Refused { .. }
                | DeadReason::UnexpectedContext { .. }
                | DeadReason::TooLarge { .. }
                | DeadReason::IdSpaceExhausted
                | DeadReason::IdsRefused(_)
        )
    }

    /// Reads a dead message's text. Every wording [`fmt`](fmt::Display)
    /// writes comes back as the same variant; anything else is
    /// [`DeadReason::Other`] with the text unchanged.
    pub fn parse(text: &str) -> DeadReason {
        parse_known(text).unwrap_or_else(|| DeadReason::Other(text.to_string()))
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadReason::NoRoute { dst, me } => write!(f, "no route to {dst}, my id is {me}"),
            DeadReason::InvalidHandle {
                handle,
                context,
                name,
            } => write!(f, "invalid handle {handle} in context {context} ({name})"),
            DeadReason::Refused { from, handle, name } => write!(
                f,
                "refused by policy: context {from} may not send to handle {handle} of {name}"
            ),
            DeadReason::UnexpectedContext { from } => {
                write!(f, "reply from unexpected context {from}")
            }
            DeadReason::TooLarge { max } => write!(f, "message too large (max {max} bytes)"),
            DeadReason::IdSpaceExhausted => f.write_str("context id space exhausted"),
            DeadReason::IdsRefused(why) => f.write_str(why),
            DeadReason::IdsUnavailable(why) => write!(f, "could not allocate ids: {why}"),
            DeadReason::Disconnected {
                context,
                name,
                cause,
            } => write!(
                f,
                "the respondent context {context} ({name}) has disconnected: {cause}"
            ),
            DeadReason::Closed => f.write_str(SENDER_CLOSED),
            DeadReason::Other(text) => f.write_str(text),
        }
    }
}

/// The wordings the id refusals use (`router::table::DelegateRefused` and
/// the router's own), kept whole in [`DeadReason::IdsRefused`].
const IDS_REFUSED: [&str; 3] = [
    "id allocation limit reached for this stream",
    "ids are delegated to child streams only",
    "ids are allocated to child streams only",
];

fn parse_known(t: &str) -> Option<DeadReason> {
    if t == SENDER_CLOSED {
        return Some(DeadReason::Closed);
    }
    if t == "context id space exhausted" {
        return Some(DeadReason::IdSpaceExhausted);
    }
    if IDS_REFUSED.contains(&t) {
        return Some(DeadReason::IdsRefused(t.to_string()));
    }
    if let Some(why) = t.strip_prefix("could not allocate ids: ") {
        return Some(DeadReason::IdsUnavailable(why.to_string()));
    }
    if let Some(rest) = t.strip_prefix("no route to ") {
        let (dst, me) = rest.split_once(", my id is ")?;
        return Some(DeadReason::NoRoute {
            dst: dst.parse().ok()?,
            me: me.parse().ok()?,
        });
    }
    if let Some(rest) = t.strip_prefix("invalid handle ") {
        let (handle, rest) = rest.split_once(" in context ")?;
        let (context, name) = context_and_name(rest)?;
        return Some(DeadReason::InvalidHandle {
            handle: handle.parse().ok()?,
            context,
            name,
        });
    }
    if let Some(rest) = t.strip_prefix("refused by policy: context ") {
        let (from, rest) = rest.split_once(" may not send to handle ")?;
        let (handle, name) = rest.split_once(" of ")?;
        return Some(DeadReason::Refused {
            from: from.parse().ok()?,
            handle: handle.parse().ok()?,
            name: name.to_string(),
        });
    }
    if let Some(from) = t.strip_prefix("reply from unexpected context ") {
        return Some(DeadReason::UnexpectedContext {
            from: from.parse().ok()?,
        });
    }
    if let Some(rest) = t.strip_prefix("message too large (max ") {
        let max = rest.strip_suffix(" bytes)")?;
        return Some(DeadReason::TooLarge {
            max: max.parse().ok()?,
        });
    }
    if let Some(rest) = t.strip_prefix("the respondent context ") {
        // The cause may itself contain the separator (a nested
        // disconnect): the first one ends the name.
        let (who, cause) = rest.split_once(") has disconnected: ")?;
        let (context, name) = who.split_once(" (")?;
        return Some(DeadReason::Disconnected {
            context: context.parse().ok()?,
            name: name.to_string(),
            cause: cause.to_string(),
        });
    }
    None
}

/// `I (NAME)` → `(I, NAME)`.
fn context_and_name(s: &str) -> Option<(ContextId, String)> {
    let (id, rest) = s.split_once(" (")?;
    let name = rest.strip_suffix(')')?;
    Some((id.parse().ok()?, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<DeadReason> {
        vec![
            DeadReason::NoRoute { dst: 7, me: 5 },
            DeadReason::InvalidHandle {
                handle: 110,
                context: 0,
                name: "master".into(),
            },
            DeadReason::Refused {
                from: 3,
                handle: 102,
                name: "ssh.web1 (sudo: a b)".into(),
            },
            DeadReason::UnexpectedContext { from: 9 },
            DeadReason::TooLarge { max: 1 << 20 },
            DeadReason::IdSpaceExhausted,
            DeadReason::IdsRefused("id allocation limit reached for this stream".into()),
            DeadReason::IdsUnavailable("no parent".into()),
            DeadReason::Disconnected {
                context: 4,
                name: "local.4711".into(),
                cause: "the respondent context 2 (ssh.a) has disconnected: EOF".into(),
            },
            DeadReason::Closed,
            DeadReason::Other("the receiver gave up: disk full".into()),
        ]
    }

    #[test]
    fn every_wording_reads_back_as_its_variant() {
        for r in every_kind() {
            assert_eq!(DeadReason::parse(&r.to_string()), r, "{r}");
        }
    }

    #[test]
    fn the_wire_vectors_wording_is_an_invalid_handle() {
        // docs/protocol.md, vector `dead-message`.
        let r = DeadReason::parse("invalid handle 1000 in context 1 (local.12345)");
        assert_eq!(
            r,
            DeadReason::InvalidHandle {
                handle: 1000,
                context: 1,
                name: "local.12345".into()
            }
        );
        assert!(r.is_refusal() && !r.is_disconnect());
    }

    #[test]
    fn look_alikes_stay_other_and_whole() {
        for t in [
            "no route to nowhere",
            "no route to 7, my id is x",
            "message too large (max many bytes)",
            "invalid handle 3 in context 1",
            "the respondent context x (y) has disconnected: z",
            "",
        ] {
            assert_eq!(DeadReason::parse(t), DeadReason::Other(t.into()), "{t:?}");
        }
    }

    #[test]
    fn a_refusal_is_not_a_disconnect() {
        let refused = DeadReason::Refused {
            from: 3,
            handle: 102,
            name: "x".into(),
        };
        assert!(!refused.is_disconnect() && refused.is_refusal());
        assert!(DeadReason::NoRoute { dst: 1, me: 0 }.is_disconnect());
        assert!(!DeadReason::Closed.is_disconnect() && !DeadReason::Closed.is_refusal());
    }
}
