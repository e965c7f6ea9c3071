//! The targets as given: a `-H` node set, checked when parsed, and a
//! `--hosts` file (one target or node set a line, with its relays).
//! Apart: a file format of its own, with its errors by line.

use super::super::nodeset::{self, NodeSetError};
use crate::connect::{self, MethodError};

/// The targets listed in a `--hosts` file, expanded when it was read,
/// each with the relays of its line (empty: reached as `-H` targets are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile(pub Vec<(String, Vec<String>)>);

/// Why a `-H` value or a `--hosts` file is refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// `-H ''`.
    #[error("an empty target")]
    Empty,
    /// A node set that does not expand.
    #[error(transparent)]
    NodeSet(#[from] NodeSetError),
    /// A name that is no target.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line with more than two columns.
    #[error(
        "{path}:{line}: unexpected {extra:?}: a line is a target (or node set) and, \
         optionally, its relays separated by commas"
    )]
    Extra {
        /// The file.
        path: String,
        /// The line (from 1).
        line: usize,
        /// The third column.
        extra: String,
    },
    /// A relay that is no target.
    #[error("{path}:{line}: relay {relay:?}: {source}")]
    Relay {
        /// The file.
        path: String,
        /// The line (from 1).
        line: usize,
        /// The relay.
        relay: String,
        /// Why.
        source: Box<MethodError>,
    },
    /// A line's targets that do not expand or parse.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: String,
        /// The line (from 1).
        line: usize,
        /// Why.
        source: Box<HostsError>,
    },
    /// More than [`nodeset::MAX_NODES`] targets.
    #[error("{path}: more than {} targets", nodeset::MAX_NODES)]
    TooMany {
        /// The file.
        path: String,
    },
    /// Nothing but comments.
    #[error("{path}: no targets in the file")]
    NoTargets {
        /// The file.
        path: String,
    },
}

/// `-H`: a valid node set (kept as written; expanded by
/// [`TargetArgs::hosts`]).
pub(super) fn node_set_arg(s: &str) -> Result<String, HostsError> {
    if s.is_empty() {
        return Err(HostsError::Empty);
    }
    for name in nodeset::expand(s)? {
        connect::parse_method(&name)?;
    }
    Ok(s.to_string())
}

/// `--hosts FILE`: a target or node set a line, optionally followed by a
/// relay column — the hops (comma-separated, in order) that reach that
/// line's targets, after any `--via` — and `#` comments:
///
/// ```text
/// web[01-16].dc1   bastion1
/// db[1-4].dc2      bastion2,gw.dc2
/// local-box
/// ```
pub(super) fn host_file_arg(path: &str) -> Result<HostFile, HostsError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
        path: path.to_string(),
        source,
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut hosts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: HostsError| HostsError::Line {
            path: path.to_string(),
            line: n + 1,
            source: Box::new(e),
        };
        let line = line.split('#').next().unwrap_or("").trim();
        let mut columns = line.split_whitespace();
        let Some(set) = columns.next() else { continue };
        let relays: Vec<String> = match columns.next() {
            Some(r) => r.split(',').map(str::to_string).collect(),
            None => Vec::new(),
        };
        if let Some(extra) = columns.next() {
            return Err(HostsError::Extra {
                path: path.to_string(),
                line: n + 1,
                extra: extra.to_string(),
            });
        }
        for r in &relays {
            connect::parse_method(r).map_err(|e| HostsError::Relay {
                path: path.to_string(),
                line: n + 1,
                relay: r.to_string(),
                source: Box::new(e),
            })?;
        }
        for name in nodeset::expand(set).map_err(|e| at(e.into()))? {
            connect::parse_method(&name).map_err(|e| at(e.into()))?;
            if seen.insert(name.clone()) {
                hosts.push((name, relays.clone()));
                if hosts.len() > nodeset::MAX_NODES {
                    return Err(HostsError::TooMany {
                        path: path.to_string(),
                    });
                }
            }
        }
    }
    if hosts.is_empty() {
        return Err(HostsError::NoTargets {
            path: path.to_string(),
        });
    }
    Ok(HostFile(hosts))
}
