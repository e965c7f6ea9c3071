//! Connections: starting a new context and attaching its stream.
//!
//! Every method ends the same way: a child process whose stdin/stdout carry
//! frames (never a PTY), a [`handshake`] (`Hello` down, `Ready` up), and a
//! stream registered with the router. What differs is only how the process
//! is started:
//!
//! * [`local`] — this binary re-executed as a child over pipes.
//! * [`ssh`] — the system OpenSSH client running a [`bootstrap`] stub on the
//!   target, which starts a cached copy of this binary or receives one over
//!   the connection first.
//! * [`sudo`] — `sudo -n -u USER`, started by a context already running on
//!   that host, with the same bootstrap into the target account's own cache.
//!
//! `via`: any connection can be started from inside another context by
//! calling that context's `ferrogen.connect` service ([`connect`] with
//! `via: Some(..)`). The new context gets its id from the controller's id
//! space, announces its route upwards, and is then reachable from everywhere
//! like any other.

pub mod binary;
pub mod bootstrap;
pub mod child;
pub mod cipher;
pub mod handshake;
pub mod libc;
pub mod local;
pub mod path_rtt;
pub mod program;
pub mod ssh;
pub mod stripe;
pub mod stripe_steps;
pub mod sudo;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::{CallError, RemoteError};
use crate::router::Router;
use crate::service::{Policy, ServiceBuilder, Services};
use crate::wire::ContextId;

/// True if `program` is OpenSSH's client by its file name (`ssh`,
/// `/usr/bin/ssh`): what ferrogen may assume of it (that it copies what it
/// reads, that it knows `-G`). A wrapper of another name is assumed
/// nothing.
pub(crate) fn is_openssh_client(program: &std::ffi::OsStr) -> bool {
    std::path::Path::new(program)
        .file_name()
        .is_some_and(|name| name == "ssh")
}

/// Name of the service every context runs to start children on request.
pub const CONNECT_SERVICE: &str = "ferrogen.connect";

/// Default time allowed for a connection to come up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a new context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// This binary, re-executed as a child process on the same host.
    Local,
    /// The system `ssh` client to another host.
    Ssh(SshSpec),
    /// `sudo` to another account on the host of the starting context.
    Sudo(SudoSpec),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Local => f.write_str("local"),
            Method::Ssh(s) => write!(f, "ssh:{}", s.target()),
            Method::Sudo(s) => write!(f, "sudo:{}", s.user),
        }
    }
}

/// An `ssh` connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSpec {
    /// Host name, address or `ssh_config` alias.
    pub host: String,
    /// Remote user (`-l`); `None` = whatever ssh's configuration says.
    pub user: Option<String>,
    /// Port (`-p`); `None` = whatever ssh's configuration says.
    pub port: Option<u16>,
    /// The ssh program and its leading options, as the words of rsync's
    /// `-e/--rsh` (e.g. `["ssh", "-F", "./cfg"]`). Default `["ssh"]`.
    pub command: Vec<String>,
    /// Further options placed after ferrogen's own (`-T`, `-o BatchMode`,
    /// `-o ConnectTimeout`) and before the host.
    pub options: Vec<String>,
    /// A ferrogen binary (path on the starting context's host) to run on the
    /// target instead of the starting context's own, e.g. one built for the
    /// target's architecture.
    pub remote_binary: Option<String>,
}

impl SshSpec {
    /// A spec for `host` with the default ssh command.
    pub fn new(host: impl Into<String>) -> SshSpec {
        SshSpec {
            host: host.into(),
            user: None,
            port: None,
            command: vec!["ssh".into()],
            options: Vec::new(),
            remote_binary: None,
        }
    }

    /// The program and its words from `-e` (default `ssh`).
    pub fn program_words(&self) -> Vec<String> {
        if self.command.is_empty() {
            vec!["ssh".into()]
        } else {
            self.command.clone()
        }
    }

    /// `-l USER`, `-p PORT` and the further options: what, besides the
    /// host, decides which of ssh's configuration applies to the target.
    pub fn target_options(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(u) = &self.user {
            v.extend(["-l".into(), u.clone()]);
        }
        if let Some(p) = self.port {
            v.extend(["-p".into(), p.to_string()]);
        }
        v.extend(self.options.iter().cloned());
        v
    }

    /// `[user@]host[:port]`, as shown in names and errors.
    pub fn target(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        if self.host.contains(':') {
            s.push('[');
            s.push_str(&self.host);
            s.push(']');
        } else {
            s.push_str(&self.host);
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

/// A `sudo` connection, started on the host of the context it is started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudoSpec {
    /// The account to become (`sudo -u`).
    pub user: String,
    /// Extra arguments for sudo (`--sudo-arg`), placed before `--`.
    pub args: Vec<String>,
    /// The sudo program. Default `sudo`.
    pub program: String,
}

impl SudoSpec {
    /// A spec for becoming `user`.
    pub fn new(user: impl Into<String>) -> SudoSpec {
        SudoSpec {
            user: user.into(),
            args: Vec::new(),
            program: "sudo".into(),
        }
    }
}

/// A request to start one context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectSpec {
    /// How.
    pub method: Method,
    /// Time allowed for the new context to answer, in milliseconds.
    pub connect_timeout_ms: u64,
    /// `tracing` filter for the new context's logs.
    pub log_filter: String,
    /// Where the launched process's pid is published while it connects
    /// (a push reads the path's round trip from ssh's socket through it;
    /// see [`path_rtt`]). Local to this controller: never sent.
    #[serde(skip)]
    pub spawned: path_rtt::SpawnWatch,
}

impl ConnectSpec {
    /// A spec for `method` with the default timeout and log filter.
    pub fn new(method: Method) -> ConnectSpec {
        ConnectSpec {
            method,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT.as_millis() as u64,
            log_filter: "warn".into(),
            spawned: path_rtt::SpawnWatch::default(),
        }
    }

    /// The connect timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// What is known about a running context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    /// Its id.
    pub id: ContextId,
    /// Its name, e.g. `local.4711`.
    pub name: String,
    /// Its process id on its host.
    pub pid: u32,
    /// Its architecture.
    pub arch: String,
    /// How its binary got there.
    pub boot: Boot,
    /// The process carrying its stream on the starting context's host (the
    /// `ssh` or `sudo` process, or the child itself for `local`); 0 if not
    /// known.
    pub transport_pid: u32,
}

impl ContextInfo {
    /// Describes the context `router` belongs to (for its own `info` call).
    pub fn here(router: &Router) -> ContextInfo {
        ContextInfo {
            id: router.id(),
            name: router.name().to_string(),
            pid: std::process::id(),
            arch: std::env::consts::ARCH.to_string(),
            boot: Boot::Unknown,
            transport_pid: 0,
        }
    }
}

/// How a context's binary reached its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// Not recorded (e.g. a context describing itself).
    Unknown,
    /// Executed directly from a path on the starting context's host (`local`).
    Exec,
    /// A cached copy was already on the target; nothing was sent.
    Cached {
        /// `uname -s` / `uname -m` of the target, e.g. `Linux x86_64`.
        system: String,
    },
    /// The binary was sent over the connection and installed in the cache.
    Sent {
        /// `uname -s` / `uname -m` of the target.
        system: String,
        /// Bytes sent.
        bytes: u64,
    },
}

/// Why a target does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// Nothing given.
    #[error("empty target")]
    Empty,
    /// `sudo:` without a usable user name.
    #[error("{spec:?}: expected sudo:USER")]
    Sudo {
        /// The target, as given.
        spec: String,
    },
    /// Neither `local`, `sudo:USER` nor an ssh target.
    #[error("unknown target {0}: expected local, sudo:USER or [ssh://][user@]host[:port]")]
    Unknown(#[source] ssh::SshTargetError),
}

/// Parses a target: `local`, `sudo:USER` or `[ssh://][user@]host[:port]`.
pub fn parse_method(spec: &str) -> Result<Method, MethodError> {
    match spec {
        "local" => Ok(Method::Local),
        "" => Err(MethodError::Empty),
        s if let Some(user) = s.strip_prefix("sudo:") => {
            if user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace) {
                return Err(MethodError::Sudo {
                    spec: s.to_string(),
                });
            }
            Ok(Method::Sudo(SudoSpec::new(user)))
        }
        s => ssh::parse_target(s)
            .map(Method::Ssh)
            .map_err(MethodError::Unknown),
    }
}

/// Why a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The process could not be started.
    #[error("{method}: could not start {program}: {cause}")]
    Spawn {
        /// Method being used.
        method: String,
        /// Program that failed.
        program: String,
        /// OS error.
        cause: String,
    },
    /// The process started but did not complete the handshake.
    #[error("{method}: {name}: {detail}{}", tail(.stderr))]
    Handshake {
        /// Method being used.
        method: String,
        /// The context being started.
        name: String,
        /// What went wrong.
        detail: String,
        /// The last lines the process wrote to stderr.
        stderr: Vec<String>,
    },
    /// Starting the context through another context failed.
    #[error("via {via}: {}", via_detail(.via, .error))]
    Via {
        /// The intermediary.
        via: String,
        /// What it reported.
        error: CallError,
    },
    /// No context id could be allocated.
    #[error("{method}: could not allocate a context id: {source}")]
    NoId {
        /// Method being used.
        method: String,
        /// Why.
        source: CallError,
    },
    /// The child process came without its stdio pipes.
    #[error("{name}: stdio pipes missing")]
    NoPipes {
        /// The context being started.
        name: String,
    },
    /// An ssh host or user name that ssh would misread.
    #[error("{whence}: {source}")]
    Word {
        /// The connection (`ssh user@host`).
        whence: String,
        /// Why.
        source: ssh::WordError,
    },
    /// A sudo user name that sudo would misread.
    #[error("{whence}: {source}")]
    User {
        /// The connection (`sudo -u USER as ME on HOST`).
        whence: String,
        /// Why.
        source: sudo::UserError,
    },
    /// The binary to ship could not be read.
    #[error("{whence}: {source}")]
    Binary {
        /// The connection.
        whence: String,
        /// Why.
        source: binary::BinaryError,
    },
}

/// The intermediary's own answer without naming it twice.
fn via_detail(via: &str, error: &CallError) -> String {
    match error {
        CallError::Remote { context, error } if context == via => error.to_string(),
        other => other.to_string(),
    }
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output was:\n  {}", lines.join("\n  "))
    }
}

/// Starts a context as `spec` says: here if `via` is `None`, otherwise from
/// inside context `via`. The context is recorded as one this process
/// started (`Router::note_started`), so that limits on callers are kept
/// for it, not for ids it hands out.
pub async fn connect(
    router: &Router,
    spec: &ConnectSpec,
    via: Option<ContextId>,
) -> Result<ContextInfo, ConnectError> {
    let info = start(router, spec, via).await?;
    router.note_started(info.id);
    Ok(info)
}

async fn start(
    router: &Router,
    spec: &ConnectSpec,
    via: Option<ContextId>,
) -> Result<ContextInfo, ConnectError> {
    match via {
        None => connect_here(router, spec).await,
        Some(v) if v == router.id() => connect_here(router, spec).await,
        Some(v) => {
            let r: Result<Result<ContextInfo, String>, CallError> = router
                .call_service_timeout(
                    v,
                    CONNECT_SERVICE,
                    "connect",
                    spec,
                    Some(spec.timeout() + Duration::from_secs(5)),
                )
                .await;
            match r {
                Ok(Ok(info)) => Ok(info),
                Ok(Err(msg)) => Err(ConnectError::Via {
                    via: router.describe(v),
                    error: CallError::Remote {
                        context: router.describe(v),
                        error: RemoteError::Failed(msg),
                    },
                }),
                Err(error) => Err(ConnectError::Via {
                    via: router.describe(v),
                    error,
                }),
            }
        }
    }
}

async fn connect_here(router: &Router, spec: &ConnectSpec) -> Result<ContextInfo, ConnectError> {
    match &spec.method {
        Method::Local => local::connect(router, spec).await,
        Method::Ssh(ssh) => ssh::connect(router, spec, ssh).await,
        Method::Sudo(sudo) => sudo::connect(router, spec, sudo).await,
    }
}

/// Registers `ferrogen.connect` (parents only): `connect(ConnectSpec)`
/// starts a child of this context and returns its [`ContextInfo`] or the
/// connection error as text.
pub fn register_service(services: &Services, router: &Router) {
    let r = router.clone();
    services.register(
        ServiceBuilder::new(CONNECT_SERVICE)
            .method(
                "connect",
                Policy::ParentsOnly,
                move |_caller, spec: ConnectSpec| {
                    let r = r.clone();
                    async move {
                        Ok::<_, RemoteError>(
                            connect_here(&r, &spec).await.map_err(|e| e.to_string()),
                        )
                    }
                },
            )
            .build(),
    );
}
