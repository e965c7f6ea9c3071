//! [`ServiceBuilder`]: a service's methods, each a name, a [`Policy`] and
//! an async function from a typed argument to a typed result (decoding is
//! the validation), and its shutdown hook.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Caller, FollowUp, Method, MethodFn, Policy, Service};
use crate::call::{RemoteError, Rpc};
use crate::wire::control;

/// Builds a [`Service`].
pub struct ServiceBuilder {
    service: Service,
}

impl ServiceBuilder {
    /// A service named `name` (by convention `ferrogen.<what>`).
    pub fn new(name: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            service: Service {
                name: name.into(),
                methods: HashMap::new(),
                on_shutdown: None,
            },
        }
    }

    /// Adds a method taking `A` and returning `R`.
    pub fn method<A, R, F, Fut>(mut self, name: &str, policy: Policy, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Caller, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RemoteError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let run: MethodFn = Arc::new(move |caller, raw: &[u8]| {
            let args: A = control::decode(raw)?;
            let f = f.clone();
            Ok(Box::pin(async move {
                let r = f(caller, args).await?;
                Ok((control::encode(&r), None))
            }))
        });
        self.service
            .methods
            .insert(name.to_string(), Method { policy, run });
        self
    }

    /// Adds the method `rpc` names: `f` takes its argument type and answers
    /// its reply type, the ones its callers use ([`Rpc`]).
    pub fn serve<A, R, F, Fut>(self, rpc: Rpc<A, R>, policy: Policy, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Caller, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RemoteError>> + Send + 'static,
    {
        debug_assert_eq!(
            rpc.service, self.service.name,
            "{rpc:?} added to another service"
        );
        self.method(rpc.method, policy, f)
    }

    /// [`ServiceBuilder::method_then`] for the method `rpc` names.
    pub fn serve_then<A, R, F, Fut>(self, rpc: Rpc<A, R>, policy: Policy, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Caller, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(R, Option<FollowUp>), RemoteError>> + Send + 'static,
    {
        debug_assert_eq!(
            rpc.service, self.service.name,
            "{rpc:?} added to another service"
        );
        self.method_then(rpc.method, policy, f)
    }

    /// Adds a method that replies first and then keeps working: its function
    /// returns the reply value and a [`FollowUp`] future that is started only
    /// after the reply has been queued (so, on the same stream, the reply
    /// precedes anything the follow-up sends).
    pub fn method_then<A, R, F, Fut>(mut self, name: &str, policy: Policy, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Caller, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(R, Option<FollowUp>), RemoteError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let run: MethodFn = Arc::new(move |caller, raw: &[u8]| {
            let args: A = control::decode(raw)?;
            let f = f.clone();
            Ok(Box::pin(async move {
                let (r, then) = f(caller, args).await?;
                Ok((control::encode(&r), then))
            }))
        });
        self.service
            .methods
            .insert(name.to_string(), Method { policy, run });
        self
    }

    /// Sets the shutdown hook, run once by
    /// [`Services::shutdown`](super::Services::shutdown) after the
    /// CALL_SERVICE handle is closed.
    pub fn on_shutdown<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.service.on_shutdown = Some(Box::new(move || Box::pin(f())));
        self
    }

    /// The finished service.
    pub fn build(self) -> Service {
        self.service
    }
}
