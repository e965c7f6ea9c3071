//! Target specifications as given to `-H` and `--via`, and the options
//! shared by every command that reaches targets.

use clap::Args;

use crate::connect::{self, ConnectError, ConnectSpec, ContextInfo, Method};
use crate::router::Router;

/// Options shared by every command that reaches targets.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Target to reach (repeatable). Default: one `local` child.
    #[arg(short = 'H', long = "host", value_name = "SPEC")]
    pub hosts: Vec<String>,
    /// Start each next hop from inside the previous one (repeatable, in order).
    #[arg(long, value_name = "SPEC")]
    pub via: Vec<String>,
    /// Seconds allowed for each connection.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub connect_timeout: f64,
}

impl TargetArgs {
    /// The target specs, defaulting to one `local`.
    pub fn hosts(&self) -> Vec<String> {
        if self.hosts.is_empty() {
            vec!["local".to_string()]
        } else {
            self.hosts.clone()
        }
    }

    /// The connect spec for one `-H`/`--via` value.
    pub fn spec(&self, spec: &str, log_filter: &str) -> Result<ConnectSpec, String> {
        let method = parse(spec)?;
        let mut cs = ConnectSpec::new(method);
        cs.connect_timeout_ms = (self.connect_timeout * 1000.0) as u64;
        cs.log_filter = log_filter.to_string();
        Ok(cs)
    }
}

/// Parses one target spec. Today: `local`.
pub fn parse(spec: &str) -> Result<Method, String> {
    match spec {
        "local" => Ok(Method::Local),
        other => Err(format!("unknown target {other:?}: expected \"local\"")),
    }
}

/// The contexts between the controller and the targets (`--via`), shared by
/// every target of one command.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Names from the controller to the last hop.
    pub names: Vec<String>,
    /// The last hop, from which targets are started; `None` = the controller.
    pub last: Option<u32>,
}

/// Connects the `--via` chain in order. The error names the failing hop.
pub async fn connect_chain(
    router: &Router,
    args: &TargetArgs,
    log_filter: &str,
) -> Result<Chain, (Chain, String)> {
    let mut chain = Chain {
        names: vec![router.name().to_string()],
        last: None,
    };
    for (i, spec) in args.via.iter().enumerate() {
        let hop = i + 1;
        let cs = match args.spec(spec, log_filter) {
            Ok(cs) => cs,
            Err(e) => {
                let msg = format!("hop {hop} ({spec}): {e}");
                return Err((chain, msg));
            }
        };
        match connect::connect(router, &cs, chain.last).await {
            Ok(info) => {
                chain.names.push(info.name.clone());
                chain.last = Some(info.id);
            }
            Err(e) => {
                let msg = format!("hop {hop} ({spec} via {}): {e}", chain.names.join(" -> "));
                return Err((chain, msg));
            }
        }
    }
    Ok(chain)
}

/// Connects one target from the end of `chain`. The error names the hop.
pub async fn connect_target(
    router: &Router,
    args: &TargetArgs,
    chain: &Chain,
    host: &str,
    log_filter: &str,
) -> Result<ContextInfo, String> {
    let hop = chain.names.len();
    let cs = args
        .spec(host, log_filter)
        .map_err(|e| format!("hop {hop} ({host}): {e}"))?;
    connect::connect(router, &cs, chain.last)
        .await
        .map_err(|e: ConnectError| {
            format!("hop {hop} ({host} via {}): {e}", chain.names.join(" -> "))
        })
}
