//! Reaching the targets: the `--via` hops connected once, shared by every
//! target of a command ([`Chain`]), then each target (and its `--sudo`
//! context) through them, every failure naming its hop.

use crate::connect::path_rtt::SpawnWatch;
use crate::connect::{self, ConnectError, ConnectSpec, ContextInfo, Method};
use crate::router::Router;

use super::{SpecError, TargetArgs};

/// Why a hop (a `--via` hop, a target, or its `--sudo` context) could not
/// be reached. Names the hop and the chain it was reached through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HopError {
    /// Its spec is unusable.
    #[error("hop {hop} ({spec}): {source}")]
    Spec {
        /// Its number from the controller (1 = the first hop).
        hop: usize,
        /// As given.
        spec: String,
        /// Why.
        source: SpecError,
    },
    /// Connecting failed.
    #[error("hop {hop} ({spec} via {path}): {source}")]
    Connect {
        /// Its number from the controller.
        hop: usize,
        /// As given.
        spec: String,
        /// The contexts it was started from, `a -> b`.
        path: String,
        /// Why.
        source: Box<ConnectError>,
    },
    /// The `--sudo` context on a target could not be started.
    #[error("hop {hop} (--sudo {user} on {host} via {path}): {source}")]
    Sudo {
        /// Its number from the controller.
        hop: usize,
        /// The sudo user.
        user: String,
        /// The target it runs on.
        host: String,
        /// The contexts it was started from.
        path: String,
        /// Why.
        source: Box<ConnectError>,
    },
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

/// A spec for a hop started from `from`: `--remote-binary` is a path on the
/// controller, so it applies only to connections the controller makes.
fn hop_spec(
    args: &TargetArgs,
    spec: &str,
    from: Option<u32>,
    log_filter: &str,
) -> Result<ConnectSpec, SpecError> {
    let mut cs = args.spec(spec, log_filter)?;
    if from.is_some_and(|id| id != 0)
        && let Method::Ssh(ssh) = &mut cs.method
    {
        ssh.remote_binary = None;
    }
    Ok(cs)
}

/// Connects the `--via` chain in order. The error names the failing hop.
pub async fn connect_chain(
    router: &Router,
    args: &TargetArgs,
    log_filter: &str,
) -> Result<Chain, (Chain, HopError)> {
    let mut chain = Chain {
        names: vec![router.name().to_string()],
        last: None,
    };
    for (i, spec) in args.via.iter().enumerate() {
        let hop = i + 1;
        let cs = match hop_spec(args, spec, chain.last, log_filter) {
            Ok(cs) => cs,
            Err(source) => {
                let e = HopError::Spec {
                    hop,
                    spec: spec.clone(),
                    source,
                };
                return Err((chain, e));
            }
        };
        match connect::connect(router, &cs, chain.last).await {
            Ok(info) => {
                chain.names.push(info.name.clone());
                chain.last = Some(info.id);
            }
            Err(e) => {
                let e = HopError::Connect {
                    hop,
                    spec: spec.clone(),
                    path: chain.names.join(" -> "),
                    source: Box::new(e),
                };
                return Err((chain, e));
            }
        }
    }
    Ok(chain)
}

/// Connects one target from the end of `chain`, then (with `--sudo`) the
/// sudo context from inside it. Returns the last context. The error names
/// the hop.
pub async fn connect_target(
    router: &Router,
    args: &TargetArgs,
    chain: &Chain,
    host: &str,
    log_filter: &str,
) -> Result<ContextInfo, HopError> {
    connect_target_watched(router, args, chain, host, log_filter, SpawnWatch::default()).await
}

/// [`connect_target`], publishing the pid of the process that makes the
/// connection to `host` (ssh, for a direct target) into `watch` while it
/// connects.
pub async fn connect_target_watched(
    router: &Router,
    args: &TargetArgs,
    chain: &Chain,
    host: &str,
    log_filter: &str,
    watch: SpawnWatch,
) -> Result<ContextInfo, HopError> {
    let hop = chain.names.len();
    let mut cs = hop_spec(args, host, chain.last, log_filter).map_err(|source| HopError::Spec {
        hop,
        spec: host.to_string(),
        source,
    })?;
    cs.spawned = watch;
    let info = connect::connect(router, &cs, chain.last)
        .await
        .map_err(|e: ConnectError| HopError::Connect {
            hop,
            spec: host.to_string(),
            path: chain.names.join(" -> "),
            source: Box::new(e),
        })?;
    let Some(sudo) = args.sudo_spec(log_filter) else {
        return Ok(info);
    };
    let user = args.sudo.as_deref().unwrap_or_default();
    connect::connect(router, &sudo, Some(info.id))
        .await
        .map_err(|e: ConnectError| {
            let mut names = chain.names.clone();
            names.push(info.name.clone());
            HopError::Sudo {
                hop: hop + 1,
                user: user.to_string(),
                host: host.to_string(),
                path: names.join(" -> "),
                source: Box::new(e),
            }
        })
}
