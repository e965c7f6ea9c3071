//! Connections: starting a new context and attaching its stream.
//!
//! Every method ends the same way: a child process whose stdin/stdout carry
//! frames (never a PTY), a [`handshake`] (`Hello` down, `Ready` up), and a
//! stream registered with the router. What differs is only how the process
//! is started:
//!
//! * [`local`] — this binary re-executed as a child over pipes.
//!
//! `via`: any connection can be started from inside another context by
//! calling that context's `ferrogen.connect` service ([`connect`] with
//! `via: Some(..)`). The new context gets its id from the controller's id
//! space, announces its route upwards, and is then reachable from everywhere
//! like any other.

pub mod child;
pub mod handshake;
pub mod local;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::{CallError, RemoteError};
use crate::router::Router;
use crate::service::{Policy, ServiceBuilder, Services};
use crate::wire::ContextId;

/// Name of the service every context runs to start children on request.
pub const CONNECT_SERVICE: &str = "ferrogen.connect";

/// Default time allowed for a connection to come up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a new context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// This binary, re-executed as a child process on the same host.
    Local,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Local => f.write_str("local"),
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
}

impl ConnectSpec {
    /// A spec for `method` with the default timeout and log filter.
    pub fn new(method: Method) -> ConnectSpec {
        ConnectSpec {
            method,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT.as_millis() as u64,
            log_filter: "warn".into(),
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
    #[error("via {via}: {error}")]
    Via {
        /// The intermediary.
        via: String,
        /// What it reported.
        error: CallError,
    },
    /// Local bookkeeping failed (e.g. no id could be allocated).
    #[error("{0}")]
    Other(String),
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output was:\n  {}", lines.join("\n  "))
    }
}

/// Starts a context as `spec` says: here if `via` is `None`, otherwise from
/// inside context `via`.
pub async fn connect(
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
    match spec.method {
        Method::Local => local::connect(router, spec).await,
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
