//! Where a context runs, parsed once.

use std::fmt;
use std::str::FromStr;

use crate::connect::{self, ConnectSpec};

/// Where a context runs: `local` (this program re-executed as a child),
/// `[ssh://][user@]host[:port]` (the system ssh client) or `sudo:USER` (on
/// the host of the context it is started from).
#[derive(Debug, Clone)]
pub struct Target {
    pub(super) text: String,
    pub(super) spec: ConnectSpec,
}

impl Target {
    /// The connection settings (ssh options, timeout, remote binary), to
    /// adjust before connecting.
    pub fn spec_mut(&mut self) -> &mut ConnectSpec {
        &mut self.spec
    }

    /// The connection settings.
    pub fn spec(&self) -> &ConnectSpec {
        &self.spec
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let method = connect::parse_method(s).map_err(|why| TargetError {
            target: s.to_string(),
            why,
        })?;
        Ok(Target {
            text: s.to_string(),
            spec: ConnectSpec::new(method),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A target that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bad target {target:?}: {why}")]
pub struct TargetError {
    /// What was given.
    pub target: String,
    /// What is wrong with it.
    #[source]
    pub why: connect::MethodError,
}
