//! A running context, and the calls to it.

use std::time::{Duration, Instant};

use crate::call::{CallError, Rpc};
use crate::connect::ContextInfo;
use crate::router::Router;
use crate::wire::{ContextId, Enc, Frame, handles};

/// A running context: a handle for calls to it.
#[derive(Clone)]
pub struct Context {
    pub(super) info: ContextInfo,
    pub(super) router: Router,
}

impl Context {
    /// Its id.
    pub fn id(&self) -> ContextId {
        self.info.id
    }

    /// Its name, e.g. `ssh.web1` or `local.4711`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What is known about it (pid, architecture, how it was booted).
    pub fn info(&self) -> &ContextInfo {
        &self.info
    }

    /// Calls the method `rpc` in this context: its argument and reply
    /// types are the ones its service serves ([`Rpc`]).
    pub async fn call<A, R>(&self, rpc: Rpc<A, R>, args: &A) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.router.call(self.info.id, rpc, args).await
    }

    /// Calls `service.method(args)` in this context, by names known only
    /// at run time (else [`Context::call`]).
    pub async fn call_named<A, R>(
        &self,
        service: &str,
        method: &str,
        args: &A,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.router
            .call_service(self.info.id, service, method, args)
            .await
    }

    /// One round trip through the built-in ping service.
    pub async fn ping(&self) -> Result<Duration, CallError> {
        let t0 = Instant::now();
        self.call(crate::ping::PING, &Vec::new()).await?;
        Ok(t0.elapsed())
    }

    /// Asks the context to shut down (it closes its streams and exits; its
    /// own children go with it).
    pub fn shutdown(&self) {
        self.router.send(Frame::new(
            self.info.id,
            handles::SHUTDOWN,
            Enc::Control,
            bytes::Bytes::new(),
        ));
    }
}
