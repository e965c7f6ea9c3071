//! Node sets, as ClusterShell and pdsh write them: `web[01-32].dc1`,
//! `n[1-3,7]`, `rack[1-2]node[1-4]`, `a,b,c[1-2]`, `n[1-10/3]`.
//!
//! * A comma outside brackets separates node sets.
//! * A bracket group holds a comma-separated list of numbers `N`, ranges
//!   `A-B` and stepped ranges `A-B/S`. A leading zero fixes the width: `01-32`
//!   gives `01` … `32`.
//! * Several groups in one name multiply out, the first varying slowest.
//! * Brackets holding anything else (an IPv6 address, `[::1]`) are kept as
//!   written, so `user@[fe80::1]:22` still names one host.
//! * Duplicates are dropped, the first occurrence kept.
//!
//! Hand-written (about 150 lines) rather than a dependency: the crates that
//! parse node sets bring a whole ClusterShell model (groups, resolvers) and
//! none of them knows to leave an IPv6 literal alone.

use std::collections::HashSet;

/// Most names one node set (or one command line) may expand to; a typo such
/// as `[1-1000000000]` is an error, not an hour of work.
pub const MAX_NODES: usize = 100_000;

/// Why a node set could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSetError {
    /// A `[` without `]`, or the reverse.
    #[error("unbalanced brackets in {0:?}")]
    Unbalanced(String),
    /// A range or number inside brackets that does not parse.
    #[error("bad range {range:?} in {set:?}: {why}")]
    BadRange {
        /// The node set.
        set: String,
        /// The offending item.
        range: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The expansion is larger than [`MAX_NODES`].
    #[error("{0:?} names more than {MAX_NODES} hosts")]
    TooMany(String),
    /// An empty name (e.g. `a,,b`).
    #[error("empty host name in {0:?}")]
    Empty(String),
}

/// Expands one node set (which may hold several comma-separated ones).
pub fn expand(set: &str) -> Result<Vec<String>, NodeSetError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for part in split_top(set).map_err(|()| NodeSetError::Unbalanced(set.to_string()))? {
        if part.is_empty() {
            return Err(NodeSetError::Empty(set.to_string()));
        }
        for name in expand_one(set, part)? {
            if seen.insert(name.clone()) {
                out.push(name);
                if out.len() > MAX_NODES {
                    return Err(NodeSetError::TooMany(set.to_string()));
                }
            }
        }
    }
    Ok(out)
}

/// Expands every set in order and drops duplicates across them.
pub fn expand_all<'a>(
    sets: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, NodeSetError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for set in sets {
        for name in expand(set)? {
            if seen.insert(name.clone()) {
                out.push(name);
                if out.len() > MAX_NODES {
                    return Err(NodeSetError::TooMany(set.to_string()));
                }
            }
        }
    }
    Ok(out)
}

/// Splits at commas outside brackets.
fn split_top(s: &str) -> Result<Vec<&str>, ()> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(()),
            ']' => depth = depth.checked_sub(1).ok_or(())?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// One piece of a pattern: literal text or the names a bracket group
/// stands for.
enum Piece {
    Text(String),
    Range(Vec<String>),
}

fn expand_one(set: &str, pattern: &str) -> Result<Vec<String>, NodeSetError> {
    let mut pieces = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| NodeSetError::Unbalanced(set.to_string()))?;
        pieces.push(Piece::Text(rest[..open].to_string()));
        let inner = &rest[open + 1..close];
        if is_range_list(inner) {
            pieces.push(Piece::Range(range_list(set, inner)?));
        } else {
            // Not a node range (an IPv6 literal): keep it as written.
            pieces.push(Piece::Text(rest[open..=close].to_string()));
        }
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err(NodeSetError::Unbalanced(set.to_string()));
    }
    pieces.push(Piece::Text(rest.to_string()));
    let mut names = vec![String::new()];
    for piece in pieces {
        match piece {
            Piece::Text(t) => names.iter_mut().for_each(|n| n.push_str(&t)),
            Piece::Range(r) => {
                if names.len().saturating_mul(r.len()) > MAX_NODES {
                    return Err(NodeSetError::TooMany(set.to_string()));
                }
                names = names
                    .iter()
                    .flat_map(|n| r.iter().map(move |x| format!("{n}{x}")))
                    .collect();
            }
        }
    }
    Ok(names)
}

fn is_range_list(inner: &str) -> bool {
    !inner.is_empty()
        && inner.chars().any(|c| c.is_ascii_digit())
        && inner
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ',' | '-' | '/'))
}

fn range_list(set: &str, inner: &str) -> Result<Vec<String>, NodeSetError> {
    let bad = |range: &str, why| NodeSetError::BadRange {
        set: set.to_string(),
        range: range.to_string(),
        why,
    };
    let mut out = Vec::new();
    for item in inner.split(',') {
        let (span, step) = match item.split_once('/') {
            Some((span, step)) => {
                let step: u64 = step
                    .parse()
                    .map_err(|_| bad(item, "step is not a number"))?;
                if step == 0 {
                    return Err(bad(item, "step 0"));
                }
                (span, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = span.split_once('-').unwrap_or((span, span));
        if lo.is_empty() || hi.is_empty() {
            return Err(bad(item, "expected N or A-B"));
        }
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        let a: u64 = lo.parse().map_err(|_| bad(item, "not a number"))?;
        let b: u64 = hi.parse().map_err(|_| bad(item, "not a number"))?;
        if a > b {
            return Err(bad(item, "the range runs backwards"));
        }
        if (b - a) / step >= MAX_NODES as u64 {
            return Err(NodeSetError::TooMany(set.to_string()));
        }
        let mut n = a;
        while n <= b {
            out.push(format!("{n:0width$}"));
            n += step;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ex(s: &str) -> Vec<String> {
        expand(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_forms_operators_write() {
        assert_eq!(
            ex("web[01-03].dc1"),
            ["web01.dc1", "web02.dc1", "web03.dc1"]
        );
        assert_eq!(ex("n[1-3,7]"), ["n1", "n2", "n3", "n7"]);
        assert_eq!(ex("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(ex("a,b[1-2],a"), ["a", "b1", "b2"]);
        assert_eq!(ex("n[1-10/4]"), ["n1", "n5", "n9"]);
        assert_eq!(ex("n[8-011]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(ex("n[008-011]"), ["n008", "n009", "n010", "n011"]);
        assert_eq!(ex("root@db[1-2]:2222"), ["root@db1:2222", "root@db2:2222"]);
        assert_eq!(ex("local"), ["local"]);
        assert_eq!(ex("sudo:root"), ["sudo:root"]);
    }

    #[test]
    fn ipv6_literals_are_left_alone() {
        assert_eq!(ex("[::1]"), ["[::1]"]);
        assert_eq!(ex("user@[fe80::1]:22"), ["user@[fe80::1]:22"]);
        assert_eq!(ex("ssh://[2001:db8::7]:2222"), ["ssh://[2001:db8::7]:2222"]);
    }

    #[test]
    fn bad_sets_are_refused_with_the_reason() {
        assert!(matches!(expand("n[1-3"), Err(NodeSetError::Unbalanced(_))));
        assert!(matches!(expand("n1-3]"), Err(NodeSetError::Unbalanced(_))));
        assert!(matches!(expand("n[[1]]"), Err(NodeSetError::Unbalanced(_))));
        assert!(matches!(
            expand("n[3-1]"),
            Err(NodeSetError::BadRange { .. })
        ));
        assert!(matches!(
            expand("n[1-]"),
            Err(NodeSetError::BadRange { .. })
        ));
        assert!(matches!(
            expand("n[1-4/0]"),
            Err(NodeSetError::BadRange { .. })
        ));
        assert!(matches!(expand("a,,b"), Err(NodeSetError::Empty(_))));
        assert!(matches!(
            expand("n[1-1000000000]"),
            Err(NodeSetError::TooMany(_))
        ));
        assert!(matches!(
            expand("a[1-1000]b[1-1000]"),
            Err(NodeSetError::TooMany(_))
        ));
    }

    proptest! {
        /// Against a reference expansion written the obvious way.
        #[test]
        fn matches_the_reference(
            prefix in "[a-z]{1,4}",
            suffix in "(\\.[a-z]{1,3})?",
            a in 0u64..200,
            len in 0u64..50,
            pad in 0usize..4,
            extra in proptest::collection::vec(0u64..300, 0..3),
        ) {
            let b = a + len;
            let lo = if pad > 0 { format!("0{a:0pad$}") } else { a.to_string() };
            let width = if lo.len() > 1 && lo.starts_with('0') { lo.len() } else { 0 };
            let mut items = vec![format!("{lo}-{b}")];
            items.extend(extra.iter().map(|x| x.to_string()));
            let set = format!("{prefix}[{}]{suffix}", items.join(","));
            let mut want: Vec<String> = Vec::new();
            let named = (a..=b)
                .map(|n| format!("{prefix}{n:0width$}{suffix}"))
                .chain(extra.iter().map(|n| format!("{prefix}{n}{suffix}")));
            for name in named {
                if !want.contains(&name) {
                    want.push(name);
                }
            }
            prop_assert_eq!(expand(&set).expect("valid"), want);
        }
    }
}
