//! `ferrogen pull`: copy files from every target to here.
//!
//! The same transfer as a push, the other way round. Each target walks
//! the paths asked for and serves them from a FileService of its own
//! (`ferrogen.files.source`, which only the controller may call); the
//! controller receives them with the very code a push target runs —
//! quick check, atomic verified landing confined to DEST, `--delete`,
//! dry run — fetching from that target. With several targets each one's
//! files land in `DEST/<target>/`, so two hosts never overwrite each other.
//!
//! Trust runs the other way here: what a target offers is checked before
//! anything is received. Every entry must lie under one of the names asked
//! for (a plain relative path, no `..`, checked again when it lands); data
//! is verified against the digest the target sends; a target can only ever
//! fill its own part of DEST.
//!
//! The options are checked in `args`, what a target offers in `vet`, and
//! one target's pull runs in `one`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;

use super::push::{PushArgs, shutdown_signal};
use super::report;
use super::target;
use super::{Exit, out};
use crate::files::plan::EntryResult;
use crate::files::receive::TempFiles;
use crate::router::{Router, RouterConfig};
use crate::service::Services;

mod args;
mod one;
mod vet;

use one::{Job, pull_one};
pub use vet::{OfferError, vet_offer};

/// Runs the command; returns the exit code.
pub async fn run(args: PushArgs, log_filter: String) -> Exit {
    let Some((dest, srcs)) = args.paths.split_last() else {
        out::diag("ferrogen pull: need at least one source and a destination");
        return Exit::Usage;
    };
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    crate::ping::register_service(&services, &router);
    let temps = TempFiles::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let style = report::Style {
        json: args.json,
        itemize: args.itemize,
        dry_run: args.dry_run,
    };
    // Each group of targets reached through the same hops in turn (a
    // hosts file's relay column); DEST/<target>/ when there are several
    // targets in all.
    let work = async {
        let several = args.target.hosts().len() > 1;
        let mut all = Vec::new();
        for group in args.target.groups() {
            let targs = args.target.for_group(&group);
            let o = pull_all(
                &router,
                &args,
                &targs,
                several,
                dest.clone(),
                srcs,
                &log_filter,
                &temps,
                &cancel,
                &style,
            )
            .await;
            all.extend(o);
        }
        all
    };
    let outcomes = tokio::select! {
        o = work => o,
        sig = shutdown_signal() => {
            let what = if sig == Exit::Terminated { "terminated" } else { "interrupted" };
            out::diag(format_args!("ferrogen pull: {what}: nothing received was put in place"));
            cancel.store(true, Ordering::SeqCst);
            temps.remove_all();
            services.shutdown().await;
            router.close_all_streams("controller interrupted");
            return sig;
        }
    };
    let mut failed = outcomes.is_empty();
    for t in &outcomes {
        t.summary(&style);
        failed |= t.failed;
    }
    services.shutdown().await;
    router.close_all_streams("pull finished");
    if failed { Exit::Failure } else { Exit::Success }
}

#[allow(clippy::too_many_arguments)]
async fn pull_all(
    router: &Router,
    args: &PushArgs,
    targs: &super::target::TargetArgs,
    several: bool,
    dest: std::ffi::OsString,
    srcs: &[std::ffi::OsString],
    log_filter: &str,
    temps: &TempFiles,
    cancel: &Arc<AtomicBool>,
    style: &report::Style,
) -> Vec<report::Tally> {
    let hosts = targs.hosts();
    let failed = |host: String, e: String| {
        let mut t = report::Tally::new(&host);
        t.add(style, &[EntryResult::failed(Path::new(&dest), e)]);
        t
    };
    let chain = match target::connect_chain(router, targs, log_filter).await {
        Ok(c) => c,
        Err((_, e)) => {
            return hosts
                .into_iter()
                .map(|h| failed(h, e.to_string()))
                .collect();
        }
    };
    let bars = report::Bars::new(!args.json, &hosts);
    let sem = Arc::new(Semaphore::new(args.fanout.max(1)));
    let args = Arc::new(Job::new(
        args,
        targs,
        several,
        dest.clone(),
        srcs,
        log_filter,
    ));
    let mut tasks = Vec::new();
    for host in hosts {
        let bar = bars.add(&host, 0);
        let (router, chain, job, sem, temps, cancel, style) = (
            router.clone(),
            chain.clone(),
            args.clone(),
            sem.clone(),
            temps.clone(),
            cancel.clone(),
            style.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let o = pull_one(
                &router,
                &job,
                &chain,
                host,
                &temps,
                &cancel,
                bar.as_ref(),
                &style,
            )
            .await;
            if let Some(b) = bar {
                if o.failed {
                    b.abandon_with_message("failed");
                } else {
                    b.set_position(b.length().unwrap_or(0));
                    b.finish_with_message("done");
                }
            }
            o
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => out.push(failed("?".into(), format!("internal error: {e}"))),
        }
    }
    out
}
