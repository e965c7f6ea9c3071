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
//!
//! `-H` values and `--hosts` files are read in `hosts`; the hops are
//! connected, each target through its chain, in `chain`.

use std::path::PathBuf;

use clap::Args;

use crate::connect::ssh::{SplitError, split_words};
use crate::connect::{self, ConnectSpec, Method, MethodError, SudoSpec};

use super::nodeset;

mod chain;
mod hosts;

pub use chain::{Chain, HopError, connect_chain, connect_target, connect_target_watched};
pub use hosts::{HostFile, HostsError};
use hosts::{host_file_arg, node_set_arg};

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
