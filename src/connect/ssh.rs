//! `ssh`: the system OpenSSH client, so users' `~/.ssh/config`, agent,
//! ProxyJump and ControlMaster keep working.
//!
//! The command is `<ssh command words> -T -o BatchMode=yes -o
//! Compression=no -o ConnectTimeout=<secs> [-o Ciphers=<list>] [-l user]
//! [-p port] [options] -- <host> <stub>`: no PTY (frames travel over ssh's
//! stdio), no prompts (a password or host key question fails at once
//! instead of hanging), no
//! compression underneath ours (a user's `Compression yes` or Ansible's
//! habitual `ssh -C` halves throughput on fast links: 256 MiB over loopback
//! took 14.05 s with it against 6.15 s without, issue 17), AES-GCM first
//! where the configuration leaves the ciphers alone ([`cipher`]), and the
//! [`bootstrap`] stub as the remote command. Options in the user's ssh
//! command come first and so win over ours (ssh keeps the first value it
//! sees), e.g. `-e 'ssh -o BatchMode=no'` or `-e 'ssh -C'`.
//!
//! [`bootstrap`]: super::bootstrap

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::bootstrap::{self, BootPlan};
use super::cipher;
use super::handshake;
use super::local::{self, Launch};
use super::{ConnectError, ConnectSpec, ContextInfo, SshSpec};
use crate::router::Router;

/// Starts a context on `ssh.host` from this context.
pub async fn connect(
    router: &Router,
    spec: &ConnectSpec,
    ssh: &SshSpec,
) -> Result<ContextInfo, ConnectError> {
    let target = ssh.target();
    let whence = format!("ssh {target}");
    let word = |source| ConnectError::Word {
        whence: whence.clone(),
        source,
    };
    check_word("host", &ssh.host).map_err(word)?;
    if let Some(u) = &ssh.user {
        check_word("user", u).map_err(word)?;
    }
    // The cipher decision (two `ssh -G`, ~10 ms) while the binary is
    // hashed.
    let (binary, ()) = tokio::join!(
        bootstrap::binary(ssh.remote_binary.as_deref().map(Path::new)),
        cipher::prepare(ssh)
    );
    let binary = binary.map_err(|source| ConnectError::Binary {
        whence: whence.clone(),
        source,
    })?;
    let name = format!("ssh.{target}");
    let hello = local::early_hello(router, spec, "ssh", &name).await?;
    let plan = BootPlan::new(binary).with_early_hello(handshake::hello_frame(&hello, router.id()));
    let argv = argv(ssh, spec.timeout(), &plan.remote_command());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let launch = Launch {
        method: "ssh",
        name: Some(name),
        boot: Some(plan),
        explain: Some(Box::new(explain)),
        program: Some(format!("{:?} (ssh to {target})", argv[0])),
        detach: true,
        hello: Some(hello),
        splice_stdin: local::reads_by_copy(argv[0].as_ref()),
    };
    local::launch(router, spec, cmd, launch).await
}

/// The full ssh command line (program first).
pub fn argv(ssh: &SshSpec, timeout: Duration, remote_command: &str) -> Vec<String> {
    let mut v = ssh.program_words();
    let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
    v.extend([
        "-T".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "Compression=no".into(),
        "-o".into(),
        format!("ConnectTimeout={secs}"),
    ]);
    if let Some(ciphers) = cipher::option(ssh) {
        v.extend(["-o".into(), ciphers]);
    }
    v.extend(ssh.target_options());
    v.extend(["--".into(), ssh.host.clone(), remote_command.into()]);
    v
}

/// Why an ssh target does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshTargetError {
    /// `[` without `]`.
    #[error("{spec:?}: unclosed '[' in the host")]
    UnclosedBracket {
        /// The target, as given.
        spec: String,
    },
    /// Something else than `:PORT` after `]`.
    #[error("{spec:?}: expected ':PORT' after ']'")]
    AfterBracket {
        /// The target, as given.
        spec: String,
    },
    /// A port that is not 1 to 65535.
    #[error("{spec:?}: bad port {port:?}")]
    BadPort {
        /// The target, as given.
        spec: String,
        /// The port, as given.
        port: String,
    },
    /// An unusable host or user name.
    #[error("{spec:?}: {source}")]
    Word {
        /// The target, as given.
        spec: String,
        /// What is wrong with the name.
        source: WordError,
    },
}

/// Why a host or user name cannot be given to ssh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    /// Nothing.
    #[error("empty {what}")]
    Empty {
        /// `host` or `user`.
        what: &'static str,
    },
    /// ssh would take it for an option.
    #[error("{what} {word:?} may not start with '-'")]
    Dash {
        /// `host` or `user`.
        what: &'static str,
        /// The name.
        word: String,
    },
    /// White space or control characters.
    #[error("{what} {word:?} contains white space")]
    Space {
        /// `host` or `user`.
        what: &'static str,
        /// The name.
        word: String,
    },
}

/// `-e`'s command line does not split into words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source} in {text:?}")]
pub struct SplitError {
    /// The command line.
    pub text: String,
    /// Why.
    pub source: shell_words::ParseError,
}

/// Refuses names that ssh would take for options or that cannot be a host
/// or user name.
fn check_word(what: &'static str, s: &str) -> Result<(), WordError> {
    if s.is_empty() {
        return Err(WordError::Empty { what });
    }
    let word = || s.to_string();
    if s.starts_with('-') {
        return Err(WordError::Dash { what, word: word() });
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(WordError::Space { what, word: word() });
    }
    Ok(())
}

/// Recognises ssh's own failure messages.
pub fn explain(lines: &[String]) -> Option<String> {
    let has = |needle: &str| {
        lines.iter().any(|l| {
            l.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        })
    };
    let why = if has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        "the host key has CHANGED since it was recorded in known_hosts (ssh refused to connect)"
    } else if has("Host key verification failed")
        || has("No ED25519 host key is known")
        || has("host key is known for")
    {
        "unknown host key: ssh refused the host because its key is not in known_hosts \
         (connect once with ssh to record it, or set StrictHostKeyChecking/UserKnownHostsFile \
         in the ssh configuration)"
    } else if has("Permission denied (")
        || has("Permission denied, please try again")
        || has("Too many authentication failures")
    {
        // ssh's own wording ("user@host: Permission denied (publickey).");
        // a bare "Permission denied" is any program's failed open or mkdir.
        "authentication refused (no key or agent identity was accepted; ferrogen runs ssh \
         with BatchMode, so it never asks for a password)"
    } else if has("Connection refused") {
        "connection refused (nothing is listening on that address and port)"
    } else if has("Connection timed out")
        || has("Operation timed out")
        || has("timed out during banner")
    {
        "connection timed out"
    } else if has("Could not resolve hostname") || has("Name or service not known") {
        "unknown host name"
    } else if has("No route to host") || has("Network is unreachable") {
        "host unreachable"
    } else if has("Connection closed by")
        || has("Connection reset")
        || has("kex_exchange_identification")
    {
        "the connection was closed by the remote side"
    } else if has("Bad configuration option")
        || has("bad number")
        || has("Can't open user config file")
        || has("illegal option")
        || has("unknown option")
    {
        "ssh rejected its command line or configuration"
    } else {
        return None;
    };
    Some(why.to_string())
}

/// Parses `[ssh://][user@]host[:port]` (IPv6 addresses in brackets).
pub fn parse_target(s: &str) -> Result<SshSpec, SshTargetError> {
    let rest = s.strip_prefix("ssh://").unwrap_or(s);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some((h, after)) = inner.split_once(']') else {
            return Err(SshTargetError::UnclosedBracket {
                spec: s.to_string(),
            });
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| SshTargetError::AfterBracket {
                        spec: s.to_string(),
                    })?,
            ),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            // More than one ':' without brackets: a bare IPv6 address.
            Some((h, _)) if h.contains(':') => (hostport.to_string(), None),
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
            SshTargetError::BadPort {
                spec: s.to_string(),
                port: p.to_string(),
            }
        })?),
    };
    let word = |source| SshTargetError::Word {
        spec: s.to_string(),
        source,
    };
    check_word("host", &host).map_err(word)?;
    if let Some(u) = &user {
        check_word("user", u).map_err(word)?;
    }
    let mut spec = SshSpec::new(host);
    spec.user = user;
    spec.port = port;
    Ok(spec)
}

/// Splits a command line into words the way a POSIX shell would for plain
/// words: white space separates, `'...'` and `"..."` quote, `\` escapes,
/// `#` starts a comment (as rsync does for `-e`; no expansions are
/// performed). The `shell-words` crate does the work.
pub fn split_words(s: &str) -> Result<Vec<String>, SplitError> {
    shell_words::split(s).map_err(|source| SplitError {
        text: s.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("ssh://bob@web1:2222").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port),
            (Some("bob"), "web1", Some(2222))
        );
        let t = parse_target("web1").unwrap();
        assert_eq!((t.user, t.host.as_str(), t.port), (None, "web1", None));
        let t = parse_target("root@[::1]:22").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(22)));
        let t = parse_target("fe80::1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fe80::1", None));
        assert!(parse_target("-oProxyCommand=x").is_err());
        assert!(parse_target("web1:0").is_err());
        assert!(parse_target("web1:http").is_err());
        assert!(parse_target("@web1").is_err());
        assert_eq!(parse_target("a@b").unwrap().target(), "a@b");
        assert_eq!(parse_target("[::1]:2").unwrap().target(), "[::1]:2");
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"ssh -F './my cfg' -i "k\"ey"  -o X=y\ z"#).unwrap(),
            vec!["ssh", "-F", "./my cfg", "-i", "k\"ey", "-o", "X=y z"]
        );
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("''").unwrap(), vec![""]);
        assert!(split_words("ssh 'x").is_err());
    }

    #[test]
    fn command_line() {
        let mut s = parse_target("u@h:22").unwrap();
        s.command = vec!["ssh".into(), "-F".into(), "cfg".into()];
        let v = argv(&s, Duration::from_millis(1500), "CMD");
        assert_eq!(
            v.join(" "),
            "ssh -F cfg -T -o BatchMode=yes -o Compression=no -o ConnectTimeout=2 \
             -l u -p 22 -- h CMD"
        );
    }

    #[test]
    fn causes() {
        let l = |s: &str| vec![s.to_string()];
        assert!(
            explain(&l("root@x: Permission denied (publickey)."))
                .unwrap()
                .contains("authentication")
        );
        assert!(
            explain(&l("Host key verification failed."))
                .unwrap()
                .contains("host key")
        );
        assert!(
            explain(&l(
                "ssh: connect to host 127.0.0.1 port 1: Connection refused"
            ))
            .unwrap()
            .contains("refused")
        );
        assert_eq!(explain(&l("hello")), None);
        // A remote mkdir's refusal is not an authentication failure.
        assert_eq!(
            explain(&l(
                "mkdir: cannot create directory '/.cache': Permission denied"
            )),
            None
        );
    }
}
