//! `ferrogen.ping`: the built-in service every context runs for liveness and
//! measurement.
//!
//! * `ping(bytes) -> bytes` echoes its argument (any caller).
//! * `info() -> ContextInfo` names the context (any caller).
//! * `sink(SinkArgs) -> Sender` opens a receiver that counts raw bytes and,
//!   once `total` have arrived, reports to `done` (parents only; used by the
//!   benchmarks to measure raw data through the bus).

use serde::{Deserialize, Serialize};

use crate::call::{RemoteError, Rpc};
use crate::channel::Sender;
use crate::connect::ContextInfo;
use crate::router::Router;
use crate::service::{Policy, ServiceBuilder, Services};

/// Service name.
pub const PING_SERVICE: &str = "ferrogen.ping";

/// Echoes its bytes: one round trip.
pub const PING: Rpc<Vec<u8>, Vec<u8>> = Rpc::new(PING_SERVICE, "ping");
/// What is known about the context (pid, architecture, how it was booted).
pub const INFO: Rpc<(), ContextInfo> = Rpc::new(PING_SERVICE, "info");
/// A receiver that counts `total` bytes and then reports to `done`.
pub const SINK: Rpc<SinkArgs, Sender> = Rpc::new(PING_SERVICE, "sink");

/// One round trip to `to` through its ping service (an empty payload, at
/// most 5 s): how long it took.
pub async fn round_trip(
    router: &Router,
    to: crate::wire::ContextId,
) -> Result<std::time::Duration, crate::call::CallError> {
    let t = std::time::Instant::now();
    router
        .call_timeout(
            to,
            PING,
            &Vec::new(),
            Some(std::time::Duration::from_secs(5)),
        )
        .await?;
    Ok(t.elapsed())
}

/// Arguments of `sink`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkArgs {
    /// Bytes to expect.
    pub total: u64,
    /// Where to report when they have arrived.
    pub done: Sender,
}

/// Registers the service.
pub fn register_service(services: &Services, router: &Router) {
    let r_info = router.clone();
    let r_sink = router.clone();
    services.register(
        ServiceBuilder::new(PING_SERVICE)
            .serve(PING, Policy::Any, |_c, data: Vec<u8>| async move {
                Ok::<_, RemoteError>(data)
            })
            .serve(INFO, Policy::Any, move |_c, (): ()| {
                let r = r_info.clone();
                async move { Ok::<_, RemoteError>(ContextInfo::here(&r)) }
            })
            .serve(SINK, Policy::ParentsOnly, move |_c, args: SinkArgs| {
                let r = r_sink.clone();
                async move {
                    let mut rx = r.receiver();
                    let sender = rx.to_sender();
                    tokio::spawn(async move {
                        let mut got = 0u64;
                        while got < args.total {
                            match rx.recv().await {
                                Ok(f) => got += f.payload.len() as u64,
                                Err(_) => break,
                            }
                        }
                        args.done.send_control(&r, &got);
                    });
                    Ok::<_, RemoteError>(sender)
                }
            })
            .build(),
    );
}
