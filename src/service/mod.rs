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
//!
//! Services are built in `builder`, calls dispatched in `dispatch`, and
//! each caller's calls counted in `in_flight`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::call::RemoteError;
use crate::channel::ChannelError;
pub use crate::router::Policy;
use crate::router::Router;
use crate::stream::REPLY_HIGH_WATER;
use crate::wire::control::ControlDecodeError;
use crate::wire::{ContextId, handles};

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

mod builder;
mod dispatch;
mod in_flight;

pub use builder::ServiceBuilder;
use in_flight::Load;
pub use in_flight::TooMuchInFlight;

/// The service registry and dispatcher of one context.
#[derive(Clone)]
pub struct Services {
    router: Router,
    table: Arc<Mutex<HashMap<String, Service>>>,
    dispatcher: Arc<Mutex<Option<JoinHandle<()>>>>,
    in_flight: Arc<Mutex<HashMap<ContextId, Load>>>,
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
