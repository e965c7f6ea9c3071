//! The push as a whole: connect and push to every target, `--fanout` at a
//! time, report, and cancel the targets on Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use super::Targets;
use super::args::{PushArgs, file_service_config};
use super::group::push_group;
use super::notes::Notes;
use crate::cli::report;
use crate::cli::{Exit, out};
use crate::files::plan::PushPlan;
use crate::files::tee::TeeStats;
use crate::files::walk::{WalkOptions, Walker};
use crate::files::{FileService, TARGET_SERVICE};
use crate::router::{Router, RouterConfig};
use crate::service::Services;
use crate::wire::ContextId;

/// Runs the command; returns the exit code.
pub async fn run(args: PushArgs, log_filter: String) -> Exit {
    let Some((dest, srcs)) = args.paths.split_last() else {
        out::diag("ferrogen push: need at least one source and a destination");
        return Exit::Usage;
    };
    // The sources' top level now (a missing source is a usage error);
    // what lies beneath is walked lazily, once per target, in batches.
    let walker = match Walker::new(srcs, &WalkOptions::from_args(&args)) {
        Ok(w) => w,
        Err(e) => {
            out::diag(format_args!("ferrogen push: {e}"));
            return Exit::Usage;
        }
    };
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    crate::ping::register_service(&services, &router);
    let config = file_service_config(&args);
    let fs = FileService::start(&router, &services, config);
    if let Err(e) = walker.sources().register(&fs) {
        out::diag(format_args!("ferrogen push: {e}"));
        return Exit::Usage;
    }
    let plan = walker.sources().header(&args, router.id(), dest);
    let style = report::Style {
        json: args.json,
        itemize: args.itemize,
        dry_run: args.dry_run,
    };
    let notes = Arc::new(Notes::default());

    let targets = Targets::default();
    let work = push_all(
        &router,
        &fs,
        &args,
        plan,
        &walker,
        &style,
        &notes,
        &log_filter,
        &targets,
    );
    let (outcomes, relays) = tokio::select! {
        o = work => o,
        sig = shutdown_signal() => {
            let what = if sig == Exit::Terminated { "terminated" } else { "interrupted" };
            out::diag(format_args!("ferrogen push: {what}: cancelling transfers"));
            // Each target first learns that the push is off, so that the
            // transfers failing next make it discard what it received
            // instead of putting it in place; only then does the data stop.
            cancel_targets(&router, &targets).await;
            services.shutdown().await;
            // Give the abort messages a moment to leave.
            tokio::time::sleep(Duration::from_millis(200)).await;
            router.close_all_streams("controller interrupted");
            return sig;
        }
    };

    let mut failed = outcomes.is_empty();
    for t in &outcomes {
        t.summary(&style);
        failed |= t.failed;
    }
    if args.json {
        for (name, stats) in &relays {
            report::print_relay(name, stats);
        }
    }
    if args.compress {
        let s = fs.stats();
        tracing::info!(
            "-z: {} chunks compressed ({} to {} bytes), {} tried and sent raw",
            s.compressed_chunks,
            s.compressed_bytes_in,
            s.compressed_bytes_out,
            s.raw_chunks
        );
    }
    services.shutdown().await;
    router.close_all_streams("push finished");
    if failed || notes.any_unread() {
        Exit::Failure
    } else {
        Exit::Success
    }
}

/// Tells every target reached that the push is cancelled, waiting a
/// little for each to confirm (a target that does not answer is lost to
/// us anyway: its transfers end when the controller goes).
pub(super) async fn cancel_targets(router: &Router, targets: &Targets) {
    let ids: Vec<ContextId> = match targets.lock() {
        Ok(t) => t.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let mut calls = tokio::task::JoinSet::new();
    for id in ids {
        let router = router.clone();
        calls.spawn(async move {
            let _: Result<(), _> = router
                .call_service_timeout(
                    id,
                    TARGET_SERVICE,
                    "cancel",
                    &(),
                    Some(Duration::from_secs(2)),
                )
                .await;
        });
    }
    while calls.join_next().await.is_some() {}
}

/// Waits for SIGINT or SIGTERM; returns the status to exit with.
pub(crate) async fn shutdown_signal() -> Exit {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Exit::Interrupted,
        _ = term.recv() => Exit::Terminated,
    }
}

/// Pushes to every target, each group of targets reached through the same
/// hops (`--via`, a hosts file's relay column) on its own, all groups at
/// once; the tallies, and what each relay's tee fetched.
#[allow(clippy::too_many_arguments)]
pub(super) async fn push_all(
    router: &Router,
    fs: &FileService,
    args: &PushArgs,
    plan: PushPlan,
    walker: &Walker,
    style: &report::Style,
    notes: &Arc<Notes>,
    log_filter: &str,
    targets: &Targets,
) -> (Vec<report::Tally>, Vec<(String, TeeStats)>) {
    let groups = args.target.groups();
    let bars = report::Bars::new(!args.json, &args.target.hosts());
    let runs = groups.iter().map(|g| {
        let targs = args.target.for_group(g);
        let (bars, plan) = (&bars, plan.clone());
        Box::pin(async move {
            push_group(
                router, fs, args, &targs, plan, walker, style, notes, log_filter, targets, bars,
            )
            .await
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>
    });
    let done = join_all(runs.collect()).await;
    let mut tallies = Vec::new();
    let mut relays = Vec::new();
    for (t, r) in done {
        tallies.extend(t);
        relays.extend(r);
    }
    (tallies, relays)
}

/// Runs `futures` concurrently on this task; their outputs in order.
/// (Written here rather than adding the `futures` crate for one function.)
pub(super) async fn join_all<T>(
    mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
