//! One call, from its frame to its reply: decoded, admitted (the caller's
//! calls in flight), its method found and allowed (policy), its arguments
//! decoded, run on a task of its own, answered when the stream towards the
//! caller has room.

use super::in_flight::InFlight;
use super::{BoxFuture, Caller, MethodOutput, Policy, Services, wait_reply_room};
use crate::call::RemoteError;
use crate::router::Router;
use crate::wire::control::{self, CallReply, ControlDecodeError, ServiceCall};
use crate::wire::{Enc, Frame};

impl Services {
    /// Dispatches the call in `frame`: answered at once if it cannot run.
    pub(super) fn dispatch(&self, frame: Frame) {
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
        match self.start_method(caller, &call) {
            Ok(fut) => run(router, frame, call, fut, in_flight),
            Err(e) => router.reply_error(&frame, e),
        }
    }

    /// The method `call` names, allowed to `caller` and started on its
    /// decoded arguments; why not, as the caller is to be told.
    fn start_method(
        &self,
        caller: Caller,
        call: &ServiceCall,
    ) -> Result<BoxFuture<MethodOutput>, RemoteError> {
        let table = self.lock_table();
        let Some(service) = table.get(&call.service) else {
            return Err(RemoteError::NoSuchService(call.service.clone()));
        };
        let Some(method) = service.methods.get(&call.method) else {
            return Err(RemoteError::NoSuchMethod {
                service: call.service.clone(),
                method: call.method.clone(),
            });
        };
        if method.policy == Policy::ParentsOnly && !self.router.has_parent_authority(caller.auth_id)
        {
            tracing::warn!(
                "refused {}.{} from context {}",
                call.service,
                call.method,
                caller.auth_id
            );
            return Err(RemoteError::Unauthorised {
                service: call.service.clone(),
                method: call.method.clone(),
                caller: caller.auth_id,
            });
        }
        (method.run)(caller, &call.args).map_err(|ControlDecodeError(detail)| {
            RemoteError::BadArguments {
                service: call.service.clone(),
                method: call.method.clone(),
                detail,
            }
        })
    }
}

/// Runs a started method on a task of its own: its reply queued once the
/// stream towards the caller has room, then the call no longer counts as
/// in flight, then its follow-up runs.
fn run(
    router: Router,
    frame: Frame,
    call: ServiceCall,
    fut: BoxFuture<MethodOutput>,
    in_flight: InFlight,
) {
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
