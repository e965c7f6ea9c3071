//! Calls: a request with a one-shot reply handle, and service calls on it.

use super::*;

impl Router {
    /// Sends `payload` to `(dst, handle)` with a one-shot reply handle whose
    /// respondent is `dst`, and waits for the reply.
    pub async fn request(
        &self,
        dst: ContextId,
        handle: Handle,
        enc: Enc,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Frame, CallError> {
        let mut rx = match self.add_handler(None, Policy::Any, Some(dst), false) {
            Ok(r) => r,
            Err(e) => unreachable!("dynamic handle allocation cannot collide: {e}"),
        };
        let mut frame = Frame::new(dst, handle, enc, payload);
        frame.reply_to = rx.handle();
        self.send(frame);
        let got = match timeout {
            Some(t) => rx.recv_timeout(t).await,
            None => rx.recv().await,
        };
        match got {
            Ok(f) => Ok(f),
            Err(crate::channel::ChannelError::Timeout(after)) => Err(CallError::Timeout {
                context: dst,
                after,
            }),
            Err(crate::channel::ChannelError::Dead(reason)) => Err(CallError::Dead {
                callee: self.describe(dst),
                reason,
            }),
            Err(crate::channel::ChannelError::Closed) => Err(CallError::Dead {
                callee: self.describe(dst),
                reason: DeadReason::Other("the reply handle was closed in this context".into()),
            }),
        }
    }

    /// Calls the method `rpc` in context `dst` and decodes its reply.
    pub async fn call<A, R>(&self, dst: ContextId, rpc: Rpc<A, R>, args: &A) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, rpc.service, rpc.method, args, None)
            .await
    }

    /// [`Router::call`] with an optional deadline.
    pub async fn call_timeout<A, R>(
        &self,
        dst: ContextId,
        rpc: Rpc<A, R>,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, rpc.service, rpc.method, args, timeout)
            .await
    }

    /// Calls `service.method(args)` in context `dst` and decodes the reply
    /// (for names known only at run time; else [`Router::call`]).
    pub async fn call_service<A, R>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.call_service_timeout(dst, service, method, args, None)
            .await
    }

    /// [`Router::call_service`] with an optional deadline.
    pub async fn call_service_timeout<A, R>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
        timeout: Option<Duration>,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let call = control::ServiceCall {
            service: service.into(),
            method: method.into(),
            args: control::encode(args).to_vec(),
        };
        let reply = self
            .request(
                dst,
                handles::CALL_SERVICE,
                Enc::Control,
                control::encode(&call),
                timeout,
            )
            .await?;
        let reply: CallReply =
            control::decode_frame(&reply).map_err(|e| CallError::malformed(dst, e))?;
        match reply {
            CallReply::Ok(bytes) => {
                control::decode(&bytes).map_err(|e| CallError::malformed(dst, e))
            }
            CallReply::Err(error) => Err(CallError::Remote {
                context: self.describe(dst),
                error: error.capped(),
            }),
        }
    }

    /// Calls a method without waiting for (or asking for) a reply.
    pub fn call_service_no_reply<A: serde::Serialize + ?Sized>(
        &self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
    ) {
        let call = control::ServiceCall {
            service: service.into(),
            method: method.into(),
            args: control::encode(args).to_vec(),
        };
        self.send(Frame::new(
            dst,
            handles::CALL_SERVICE,
            Enc::Control,
            control::encode(&call),
        ));
    }

    /// Answers a service call frame with an error.
    pub(crate) fn reply_error(&self, to: &Frame, error: RemoteError) {
        self.reply(to, Enc::Control, control::encode(&CallReply::Err(error)));
    }
}
