//! Target specifications as given to `-H` and `--via`.

use crate::connect::{ConnectSpec, Method};

/// Parses one target spec. Today: `local`.
pub fn parse(spec: &str) -> Result<Method, String> {
    match spec {
        "local" => Ok(Method::Local),
        other => Err(format!("unknown target {other:?}: expected \"local\"")),
    }
}

/// A connect spec for `method` with the command line's timeout and log filter.
pub fn connect_spec(method: Method, timeout_secs: f64, log_filter: &str) -> ConnectSpec {
    let mut spec = ConnectSpec::new(method);
    spec.connect_timeout_ms = (timeout_secs * 1000.0) as u64;
    spec.log_filter = log_filter.to_string();
    spec
}
