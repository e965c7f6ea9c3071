//! The controller side: asks a direct child where its stripes attach and
//! opens them, each with a deadline; failures are logged and the primary
//! stream keeps working.

use std::time::Duration;

use super::transport::{spawn_transport, transport};
use super::{STRIPE_SERVICE, StripeError, StripeOffer};
use crate::connect::{ContextInfo, Method};
use crate::router::Router;
use crate::stream;

/// Opens `count` stripes to context `ctx_id`, a direct child of this
/// context started with `method`. Returns how many attached (failures are logged; the
/// primary stream keeps working regardless).
pub async fn open(
    router: &Router,
    ctx_id: u32,
    method: &Method,
    count: usize,
    timeout: Duration,
) -> usize {
    if count == 0 {
        return 0;
    }
    let Some((ctx, primary)) = direct_child(router, ctx_id) else {
        return 0;
    };
    let Some(offer) = listen_on(router, &ctx, timeout).await else {
        return 0;
    };
    let mut tasks = Vec::new();
    for i in 0..count {
        let (router, ctx, method, offer) =
            (router.clone(), ctx.clone(), method.clone(), offer.clone());
        tasks.push(tokio::spawn(async move {
            let one = async {
                let t = spawn_transport(transport(&method, &offer).await?, &ctx.name, i + 1)?;
                t.attach(&router, &ctx, &offer, primary).await
            };
            settle(&ctx, i + 1, tokio::time::timeout(timeout, one).await)
        }));
    }
    count_attached(tasks).await
}

/// The context `ctx_id` and the stream to it, if it is a direct child.
pub(super) fn direct_child(
    router: &Router,
    ctx_id: u32,
) -> Option<(ContextInfo, stream::StreamId)> {
    let primary = router.stream_towards(ctx_id)?;
    let ctx = ContextInfo {
        name: router
            .context_name(ctx_id)
            .unwrap_or_else(|| format!("context {ctx_id}")),
        ..ContextInfo::here(router)
    };
    let ctx = ContextInfo { id: ctx_id, ..ctx };
    if router.stream_remote(primary) != Some(ctx.id) {
        tracing::debug!("{}: not a direct child; no stripes", ctx.name);
        return None;
    }
    Some((ctx, primary))
}

pub(super) async fn listen_on(
    router: &Router,
    ctx: &ContextInfo,
    timeout: Duration,
) -> Option<StripeOffer> {
    match router
        .call_service_timeout(ctx.id, STRIPE_SERVICE, "listen", &(), Some(timeout))
        .await
    {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!("{}: cannot open stripes: {e}", ctx.name);
            None
        }
    }
}

pub(super) fn settle(
    ctx: &ContextInfo,
    n: usize,
    r: Result<Result<(), StripeError>, tokio::time::error::Elapsed>,
) -> bool {
    match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!("{}: stripe {n} failed: {e}", ctx.name);
            false
        }
        Err(_) => {
            tracing::warn!("{}: stripe {n} timed out", ctx.name);
            false
        }
    }
}

pub(super) async fn count_attached(tasks: Vec<tokio::task::JoinHandle<bool>>) -> usize {
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            ok += 1;
        }
    }
    ok
}
