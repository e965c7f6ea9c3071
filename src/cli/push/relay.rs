//! A relay's tee, seen from the controller: started, followed, stopped.

use std::time::Duration;

use super::args::PushArgs;
use crate::cli::out;
use crate::cli::target::Chain;
use crate::files::relay::{TEE_SERVICE, TeeArgs};
use crate::files::tee::TeeStats;
use crate::router::Router;
use crate::wire::ContextId;

/// Starts the tee in `relay` (the last `--via` hop) for `targets` targets:
/// it fetches each file once from this controller and serves every target
/// behind it. `None` (with a warning) if it cannot: the targets then
/// fetch from here.
pub(super) async fn start_tee(
    router: &Router,
    relay: ContextId,
    chain: &Chain,
    args: &PushArgs,
    targets: usize,
) -> Option<ContextId> {
    let tee = TeeArgs {
        upstream: router.id(),
        serve: crate::files::source::ServeOptions {
            window: args.window,
            window_cap: args.window_cap,
            compress: args.compress,
            bwlimit: args.bwlimit,
            bwlimit_total: args.bwlimit_total,
            xattrs: args.xattr_sel(),
        },
        sparse: args.sparse,
        targets: u32::try_from(targets).unwrap_or(0),
        read_ahead: !args.no_read_ahead,
    };
    let r: Result<(), _> = router.call_service(relay, TEE_SERVICE, "start", &tee).await;
    match r {
        Ok(()) => Some(relay),
        Err(e) => {
            let name = chain.names.last().map(String::as_str).unwrap_or("relay");
            out::diag(format_args!(
                "ferrogen push: {name}: no tee ({e}); every target behind it fetches from here"
            ));
            None
        }
    }
}

/// The relay's name and what its tee fetched, from the figures the last
/// target's session brought back (the tee stopped itself then).
pub(super) fn stopped_tee(chain: &Chain, s: TeeStats) -> (String, TeeStats) {
    let name = chain.names.last().cloned().unwrap_or_default();
    log_tee(&name, &s);
    (name, s)
}

pub(super) fn log_tee(name: &str, s: &TeeStats) {
    tracing::info!(
        "{name}: tee fetched {} files ({} in batches, {} bytes) once, served {} transfers",
        s.files_fetched + s.small_fetched,
        s.small_fetched,
        s.bytes_fetched,
        s.served
    );
}

/// Stops the relay's tee (removing its spool); the relay's name and what
/// its tee fetched.
pub(super) async fn stop_tee(
    router: &Router,
    relay: ContextId,
    chain: &Chain,
) -> Option<(String, TeeStats)> {
    let name = chain.names.last().cloned().unwrap_or_default();
    let r: Result<TeeStats, _> = router
        .call_service_timeout(
            relay,
            TEE_SERVICE,
            "stop",
            &(),
            Some(Duration::from_secs(30)),
        )
        .await;
    match r {
        Ok(s) => {
            log_tee(&name, &s);
            Some((name, s))
        }
        Err(e) => {
            tracing::warn!("{name}: stopping the tee failed: {e}");
            None
        }
    }
}

/// Bytes acknowledged and files sent to `target` by the relay's tee.
pub(super) async fn tee_progress(
    router: &Router,
    relay: ContextId,
    target: ContextId,
) -> Option<(u64, u64)> {
    let r: Result<Vec<(u64, u64)>, _> = router
        .call_service_timeout(
            relay,
            TEE_SERVICE,
            "progress",
            &vec![target],
            Some(Duration::from_secs(2)),
        )
        .await;
    r.ok().and_then(|v| v.first().copied())
}
