//! Target specifications as given to `-H` and `--via`, and the options
//! shared by every command that reaches targets.
//!
//! A SPEC is one of:
//!
//! * `local` — this binary re-executed as a child process;
//! * `[ssh://][user@]host[:port]` — the system ssh client (`host` may be an
//!   `ssh_config` alias; IPv6 addresses in brackets);
//! * `sudo:USER` — sudo to USER on the host of the context it is started
//!   from (useful in `--via` chains: `--via web1 --via sudo:root`).
//!
//! `--sudo USER` adds a sudo hop after each `-H` target, started from the
//! context on that host, so its stream runs over the existing connection.

use std::path::PathBuf;

use clap::Args;

use crate::connect::path_rtt::SpawnWatch;
use crate::connect::ssh::{SplitError, split_words};
use crate::connect::{self, ConnectError, ConnectSpec, ContextInfo, Method, MethodError, SudoSpec};
use crate::router::Router;

use super::nodeset::{self, NodeSetError};

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

/// Why a `-H`/`--via` value cannot be made a connect spec.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpecError {
    /// It is no target.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// `-e` does not split into words.
    #[error("-e/--rsh: {0}")]
    Rsh(#[source] SplitError),
    /// `-e ''`.
    #[error("-e/--rsh: empty command")]
    RshEmpty,
}

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

/// Why a number of seconds is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecsError {
    /// Not a number.
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    /// Zero, negative, or not finite.
    #[error("must be a number of seconds more than 0")]
    NotPositive,
}

/// `-H`: a valid node set (kept as written; expanded by
/// [`TargetArgs::hosts`]).
fn node_set_arg(s: &str) -> Result<String, HostsError> {
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
fn host_file_arg(path: &str) -> Result<HostFile, HostsError> {
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

/// Targets reached through the same hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The hops, in order (`--via`, then a hosts file's relay column).
    pub via: Vec<String>,
    /// The targets, node sets expanded.
    pub hosts: Vec<String>,
}

/// Options shared by every command that reaches targets.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Target to reach (repeatable): `local`, `[ssh://][user@]host[:port]`
    /// or `sudo:USER`; a node set such as `web[01-32].dc1` or `n[1-3,7]`
    /// names several. Default: one `local` child.
    #[arg(short = 'H', long = "host", value_name = "SPEC", value_parser = node_set_arg)]
    pub hosts: Vec<String>,
    /// Read targets from FILE (repeatable): one SPEC or node set a line,
    /// `#` starts a comment. Duplicates across -H and files are dropped.
    #[arg(long = "hosts", value_name = "FILE", value_parser = host_file_arg)]
    pub host_files: Vec<HostFile>,
    /// Start each next hop from inside the previous one (repeatable, in
    /// order; same SPEC forms as -H).
    #[arg(long, value_name = "SPEC")]
    pub via: Vec<String>,
    /// Seconds allowed for each connection (more than 0).
    #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = positive_secs)]
    pub connect_timeout: f64,
    /// The ssh command for ssh targets, as rsync's -e, e.g.
    /// -e 'ssh -F ./cfg -i key'. ferrogen adds -T, -o BatchMode=yes,
    /// -o Compression=no and -o ConnectTimeout (options given here come
    /// first, so they win).
    #[arg(short = 'e', long = "rsh", value_name = "CMD")]
    pub rsh: Option<String>,
    /// Become USER with sudo on each -H target (sudo -n: no password
    /// prompts). Started from the context on that host: no second ssh
    /// connection.
    #[arg(long, value_name = "USER")]
    pub sudo: Option<String>,
    /// Extra argument for sudo (repeatable), e.g. --sudo-arg=-E.
    #[arg(long = "sudo-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sudo_args: Vec<String>,
    /// A ferrogen binary built for the targets' OS and architecture, sent
    /// to the hosts the controller connects to directly (the first --via
    /// hop, or -H targets without --via) instead of the default: the
    /// portable binary from `cargo xtask dist` if it exists, else this one.
    #[arg(long, value_name = "PATH")]
    pub remote_binary: Option<PathBuf>,
}

impl TargetArgs {
    /// The target specs, node sets expanded, duplicates dropped (first
    /// kept), defaulting to one `local`.
    pub fn hosts(&self) -> Vec<String> {
        self.groups().into_iter().flat_map(|g| g.hosts).collect()
    }

    /// The targets grouped by the hops that reach them, in the order they
    /// were first named: `-H` targets (and hosts-file lines without a
    /// relay column) behind `--via`, each relay column's behind `--via`
    /// then its relays. Duplicates dropped (first kept).
    pub fn groups(&self) -> Vec<Group> {
        if self.hosts.is_empty() && self.host_files.is_empty() {
            return vec![Group {
                via: self.via.clone(),
                hosts: vec!["local".to_string()],
            }];
        }
        let mut seen = std::collections::HashSet::new();
        let mut groups: Vec<Group> = Vec::new();
        let from_args = self.hosts.iter().flat_map(|set| {
            // Validated at parse time; a set that fails now stays as written.
            nodeset::expand(set)
                .unwrap_or_else(|_| vec![set.clone()])
                .into_iter()
                .map(|h| (h, Vec::new()))
        });
        let from_files = self.host_files.iter().flat_map(|f| f.0.iter().cloned());
        for (host, relays) in from_args.chain(from_files) {
            if !seen.insert(host.clone()) {
                continue;
            }
            let via: Vec<String> = self.via.iter().cloned().chain(relays).collect();
            match groups.iter_mut().find(|g| g.via == via) {
                Some(g) => g.hosts.push(host),
                None => groups.push(Group {
                    via,
                    hosts: vec![host],
                }),
            }
        }
        groups
    }

    /// These options for one group: its hops as `--via` and its targets
    /// as `-H`.
    pub fn for_group(&self, group: &Group) -> TargetArgs {
        TargetArgs {
            hosts: group.hosts.clone(),
            host_files: Vec::new(),
            via: group.via.clone(),
            ..self.clone()
        }
    }

    /// The connect spec for one `-H`/`--via` value.
    pub fn spec(&self, spec: &str, log_filter: &str) -> Result<ConnectSpec, SpecError> {
        let mut method = parse(spec)?;
        match &mut method {
            Method::Ssh(ssh) => {
                if let Some(rsh) = &self.rsh {
                    let words = split_words(rsh).map_err(SpecError::Rsh)?;
                    if words.is_empty() {
                        return Err(SpecError::RshEmpty);
                    }
                    ssh.command = words;
                }
                ssh.remote_binary = self
                    .remote_binary
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned());
            }
            Method::Sudo(sudo) => sudo.args = self.sudo_args.clone(),
            Method::Local => {}
        }
        Ok(self.finish(method, log_filter))
    }

    /// The spec of the `--sudo` hop after each `-H` target, if asked for.
    pub fn sudo_spec(&self, log_filter: &str) -> Option<ConnectSpec> {
        let user = self.sudo.as_ref()?;
        let mut s = SudoSpec::new(user.clone());
        s.args = self.sudo_args.clone();
        Some(self.finish(Method::Sudo(s), log_filter))
    }

    fn finish(&self, method: Method, log_filter: &str) -> ConnectSpec {
        let mut cs = ConnectSpec::new(method);
        // At least 1 ms: a fraction below that still means "some time".
        cs.connect_timeout_ms = ((self.connect_timeout * 1000.0).ceil() as u64).max(1);
        cs.log_filter = log_filter.to_string();
        cs
    }
}

/// A number of seconds that is more than zero (and finite).
pub fn positive_secs(s: &str) -> Result<f64, SecsError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| SecsError::NotANumber(s.to_string()))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(SecsError::NotPositive)
    }
}

/// Parses one target spec: `local`, `sudo:USER` or
/// `[ssh://][user@]host[:port]`.
pub fn parse(spec: &str) -> Result<Method, MethodError> {
    connect::parse_method(spec)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        t: TargetArgs,
    }

    #[test]
    fn specs() {
        let t = T::parse_from([
            "x",
            "-H",
            "bob@web1:2200",
            "-e",
            "ssh -F './a cfg'",
            "--sudo",
            "root",
            "--sudo-arg",
            "-E",
            "--connect-timeout",
            "5",
        ])
        .t;
        let cs = t.spec(&t.hosts()[0], "warn").unwrap();
        let Method::Ssh(s) = &cs.method else {
            panic!("not ssh: {cs:?}")
        };
        assert_eq!(s.command, vec!["ssh", "-F", "./a cfg"]);
        assert_eq!((s.user.as_deref(), s.port), (Some("bob"), Some(2200)));
        assert_eq!(cs.connect_timeout_ms, 5000);
        let sudo = t.sudo_spec("warn").unwrap();
        assert_eq!(
            sudo.method,
            Method::Sudo(SudoSpec {
                user: "root".into(),
                args: vec!["-E".into()],
                program: "sudo".into()
            })
        );
        assert_eq!(parse("local").unwrap(), Method::Local);
        assert!(matches!(parse("sudo:root").unwrap(), Method::Sudo(_)));
        assert!(parse("sudo:").is_err());
        assert!(parse("").is_err());
        assert!(parse("-oProxyCommand=x").is_err());
    }

    #[test]
    fn groups_follow_the_hops_in_the_order_targets_were_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hosts");
        std::fs::write(&file, "a[1-2] r1\nb r1,r2\nc\nd r1\n").expect("write");
        let t = T::parse_from([
            "x",
            "-H",
            "z",
            "--via",
            "bastion",
            "--hosts",
            file.to_str().expect("utf8"),
            "-H",
            "a1",
        ])
        .t;
        let g = |via: &[&str], hosts: &[&str]| Group {
            via: via.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            t.groups(),
            [
                g(&["bastion"], &["z", "a1", "c"]),
                g(&["bastion", "r1"], &["a2", "d"]),
                g(&["bastion", "r1", "r2"], &["b"]),
            ]
        );
        assert_eq!(t.hosts(), ["z", "a1", "c", "a2", "d", "b"]);
        let one = t.for_group(&t.groups()[1]);
        assert_eq!(
            (one.via.len(), one.hosts()),
            (2, vec!["a2".into(), "d".into()])
        );
    }

    #[test]
    fn timeouts_must_be_positive() {
        assert_eq!(positive_secs("2.5"), Ok(2.5));
        for bad in ["0", "-1", "0.0", "nan", "inf", "", "soon"] {
            assert!(positive_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(T::try_parse_from(["x", "--connect-timeout", "0"]).is_err());
    }
}
