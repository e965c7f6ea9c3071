//! Services: named sets of methods callable from other contexts.
//!
//! A [`Service`] is built with [`ServiceBuilder`]: each method has a name, a
//! [`Policy`] and an async function from a typed, serde-decoded argument to a
//! typed result. Decoding *is* the argument validation — a call whose
//! arguments are not exactly the method's argument type is refused with
//! [`RemoteError::BadArguments`] before the method runs.
//!
//! [`Services`] owns the CALL_SERVICE handle of one context and dispatches
//! each call on its own task, so a slow method never delays the next call.
//! A call whose frame has `reply_to == 0` is a "no reply" call: its result is
//! dropped and its error logged.
//!
//! A caller cannot make this context grow without bound: at most
//! [`MAX_CALLS_IN_FLIGHT`] of its calls, holding at most
//! [`MAX_CALL_BYTES_IN_FLIGHT`] of arguments, run at once (more are
//! refused at once with a short error), and a reply waits for room on the stream
//! towards the caller ([`crate::stream::REPLY_HIGH_WATER`]) before it is
//! queued, so a caller that stops reading stalls only its own calls.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::call::{RemoteError, Rpc};
use crate::channel::ChannelError;
pub use crate::router::Policy;
use crate::router::Router;
use crate::stream::REPLY_HIGH_WATER;
use crate::wire::control::{self, CallReply, ControlDecodeError, ServiceCall};
use crate::wire::{ContextId, Enc, Frame, handles};

/// Calls from one context (`src_id`) that may be running here at once, from
/// their arrival to the queuing of their reply. Past it a call is answered
/// [`RemoteError::Failed`] without running. (A push target keeps at most
/// 4 `fetch_small` and `--parallel` (≤ 64) `fetch` calls in flight.)
pub const MAX_CALLS_IN_FLIGHT: usize = 256;

/// Payload bytes of one caller's calls in flight here (each holds its
/// arguments until it is answered). A call is always admitted when the
/// caller has nothing else running, so one large call (a push plan of a
/// big tree) still works; past that, calls that would take the caller
/// beyond this are refused like those past [`MAX_CALLS_IN_FLIGHT`].
pub const MAX_CALL_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// A boxed future, as stored in method tables.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who is calling a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The context that sent the call (replies go here).
    pub src_id: ContextId,
    /// The context whose authority the call carries.
    pub auth_id: ContextId,
}

/// Work a method asks to run once its reply has been queued.
pub type FollowUp = BoxFuture<()>;

type MethodOutput = Result<(Bytes, Option<FollowUp>), RemoteError>;
type MethodFn =
    Arc<dyn Fn(Caller, &[u8]) -> Result<BoxFuture<MethodOutput>, ControlDecodeError> + Send + Sync>;
type ShutdownFn = Box<dyn FnOnce() -> BoxFuture<()> + Send>;

struct Method {
    policy: Policy,
    run: MethodFn,
}

/// One named service.
pub struct Service {
    name: String,
    methods: HashMap<String, Method>,
    on_shutdown: Option<ShutdownFn>,
}

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

    /// Sets the shutdown hook, run once by [`Services::shutdown`] after the
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

/// The service registry and dispatcher of one context.
#[derive(Clone)]
pub struct Services {
    router: Router,
    table: Arc<Mutex<HashMap<String, Service>>>,
    dispatcher: Arc<Mutex<Option<JoinHandle<()>>>>,
    in_flight: Arc<Mutex<HashMap<ContextId, Load>>>,
}

/// Calls of one caller in flight, and their payload bytes.
#[derive(Default, Clone, Copy)]
struct Load {
    calls: usize,
    bytes: usize,
}

/// One call counted in [`Services`]' in-flight table until dropped.
struct InFlight {
    table: Arc<Mutex<HashMap<ContextId, Load>>>,
    caller: ContextId,
    bytes: usize,
}

/// Why a call was refused before it ran: its caller has too much in
/// flight already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooMuchInFlight {
    /// [`MAX_CALLS_IN_FLIGHT`] calls running.
    #[error("too many calls in flight from context {caller} (limit {MAX_CALLS_IN_FLIGHT})")]
    Calls {
        /// The caller (its principal).
        caller: ContextId,
    },
    /// [`MAX_CALL_BYTES_IN_FLIGHT`] bytes of calls running.
    #[error(
        "too many bytes of calls in flight from context {caller} ({calls} running with \
         {bytes} bytes; limit {MAX_CALL_BYTES_IN_FLIGHT})"
    )]
    Bytes {
        /// The caller (its principal).
        caller: ContextId,
        /// Calls running.
        calls: usize,
        /// Their bytes.
        bytes: usize,
    },
}

impl InFlight {
    fn enter(
        table: &Arc<Mutex<HashMap<ContextId, Load>>>,
        caller: ContextId,
        bytes: usize,
    ) -> Result<InFlight, TooMuchInFlight> {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let load = t.entry(caller).or_default();
        if load.calls >= MAX_CALLS_IN_FLIGHT {
            return Err(TooMuchInFlight::Calls { caller });
        }
        if load.calls > 0 && load.bytes + bytes > MAX_CALL_BYTES_IN_FLIGHT {
            return Err(TooMuchInFlight::Bytes {
                caller,
                calls: load.calls,
                bytes: load.bytes,
            });
        }
        load.calls += 1;
        load.bytes += bytes;
        Ok(InFlight {
            table: table.clone(),
            caller,
            bytes,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(load) = t.get_mut(&self.caller) {
            load.calls -= 1;
            load.bytes -= self.bytes;
            if load.calls == 0 {
                t.remove(&self.caller);
            }
        }
    }
}

impl Services {
    /// Takes the CALL_SERVICE handle of `router` and starts dispatching.
    pub fn start(router: &Router) -> Services {
        let services = Services {
            router: router.clone(),
            table: Arc::new(Mutex::new(HashMap::new())),
            dispatcher: Arc::new(Mutex::new(None)),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        };
        let mut rx = match router.add_handler(Some(handles::CALL_SERVICE), Policy::Any, None, true)
        {
            Ok(rx) => rx,
            Err(e) => panic!("Services::start called twice on one router: {e}"),
        };
        let me = services.clone();
        let task = tokio::spawn(async move {
            let mut ignored = 0u64;
            loop {
                match rx.recv().await {
                    Ok(frame) => me.dispatch(frame),
                    // A dead message is not a call, and it must not end the
                    // dispatcher (every later call would then find no
                    // handler): log it (at 1, 2, 4, ... so a flood does not
                    // flood the log) and carry on.
                    Err(ChannelError::Dead(why)) => {
                        ignored += 1;
                        if ignored.is_power_of_two() {
                            tracing::warn!(
                                "ignored a dead message to the service handle: {why} \
                                 ({ignored} so far)"
                            );
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        *services.lock_dispatcher() = Some(task);
        services
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Service>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_dispatcher(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.dispatcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a service, replacing any of the same name.
    pub fn register(&self, service: Service) {
        self.lock_table().insert(service.name.clone(), service);
    }

    /// True if a service of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.lock_table().contains_key(name)
    }

    fn dispatch(&self, frame: Frame) {
        let router = self.router.clone();
        let call: ServiceCall = match control::decode_frame(&frame) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("malformed service call from {}: {e}", frame.src_id);
                router.reply_error(
                    &frame,
                    RemoteError::Failed(format!("malformed service call: {e}")),
                );
                return;
            }
        };
        let caller = Caller {
            src_id: frame.src_id,
            auth_id: frame.auth_id,
        };
        // Counted per principal: a target's own ids are all the target.
        let principal = self.router.principal(caller.src_id);
        let in_flight = match InFlight::enter(&self.in_flight, principal, frame.payload.len()) {
            Ok(f) => f,
            Err(why) => {
                tracing::warn!("refused {}.{}: {why}", call.service, call.method);
                router.reply_error(&frame, RemoteError::Failed(why.to_string()));
                return;
            }
        };
        let fut = {
            let table = self.lock_table();
            let Some(service) = table.get(&call.service) else {
                drop(table);
                router.reply_error(&frame, RemoteError::NoSuchService(call.service));
                return;
            };
            let Some(method) = service.methods.get(&call.method) else {
                drop(table);
                router.reply_error(
                    &frame,
                    RemoteError::NoSuchMethod {
                        service: call.service,
                        method: call.method,
                    },
                );
                return;
            };
            if method.policy == Policy::ParentsOnly && !router.has_parent_authority(caller.auth_id)
            {
                drop(table);
                tracing::warn!(
                    "refused {}.{} from context {}",
                    call.service,
                    call.method,
                    caller.auth_id
                );
                router.reply_error(
                    &frame,
                    RemoteError::Unauthorised {
                        service: call.service,
                        method: call.method,
                        caller: caller.auth_id,
                    },
                );
                return;
            }
            match (method.run)(caller, &call.args) {
                Ok(fut) => fut,
                Err(ControlDecodeError(detail)) => {
                    drop(table);
                    router.reply_error(
                        &frame,
                        RemoteError::BadArguments {
                            service: call.service,
                            method: call.method,
                            detail,
                        },
                    );
                    return;
                }
            }
        };
        tokio::spawn(async move {
            let (reply, then) = match fut.await {
                Ok((bytes, then)) => (CallReply::Ok(bytes.to_vec()), then),
                Err(e) => {
                    if frame.reply_to == 0 {
                        tracing::warn!("{}.{} (no reply) failed: {e}", call.service, call.method);
                    }
                    (CallReply::Err(e), None)
                }
            };
            wait_reply_room(&router, frame.src_id).await;
            router.reply(&frame, Enc::Control, control::encode(&reply));
            drop(in_flight);
            if let Some(then) = then {
                then.await;
            }
        });
    }

    /// Calls from `caller` running now.
    pub fn in_flight(&self, caller: ContextId) -> usize {
        let t = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&caller).map_or(0, |l| l.calls)
    }

    /// Stops taking calls (later calls are answered "invalid handle"), then
    /// runs every service's shutdown hook.
    pub async fn shutdown(&self) {
        self.router.remove_handler(handles::CALL_SERVICE);
        if let Some(task) = self.lock_dispatcher().take() {
            task.abort();
        }
        let hooks: Vec<ShutdownFn> = self
            .lock_table()
            .values_mut()
            .filter_map(|s| s.on_shutdown.take())
            .collect();
        for hook in hooks {
            hook().await;
        }
    }
}

/// Waits until the stream towards `caller` has room for a reply
/// ([`REPLY_HIGH_WATER`]); at once if there is no such stream (the caller
/// is this context, or gone).
pub async fn wait_reply_room(router: &Router, caller: ContextId) {
    if caller == router.id() {
        return;
    }
    let outbox = router.stream_towards(caller).and_then(|s| router.outbox(s));
    if let Some(outbox) = outbox {
        outbox.wait_control_room(REPLY_HIGH_WATER).await;
    }
}
