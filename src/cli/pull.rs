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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;

use super::push::{PushArgs, UsageError, shutdown_signal, split_remote};
use super::report;
use super::target::{self, Chain};
use super::{Exit, out};
use crate::files::RawPath;
use crate::files::delete::DeleteSpec;
use crate::files::plan::{self, Compare, EntryKind, EntryResult, PlanEntry, PushPlan, Status};
use crate::files::receive::{ReceiveOptions, TempFiles};
use crate::files::source::{Offer, OfferArgs, ServeOptions, WalkSpec};
use crate::files::walk::BATCH_ENTRIES;
use crate::router::{Router, RouterConfig};
use crate::service::Services;

impl PushArgs {
    /// [`PushArgs::check`] for `pull`: sources are paths on the targets
    /// (scp's `HOST:PATH` form names the target), DEST is local.
    pub fn check_pull(&mut self) -> Result<(), UsageError> {
        self.check_shared("pull")?;
        if self.bwlimit_total.is_some() {
            return Err(UsageError::BwlimitTotalInPull);
        }
        let (dest, srcs) = self
            .paths
            .split_last_mut()
            .ok_or(UsageError::NoDestination)?;
        if let Some(d) = dest.to_str()
            && split_remote(d).is_some()
        {
            return Err(UsageError::RemoteDest {
                dest: d.to_string(),
            });
        }
        // scp's `HOST:PATH` sources: one host for all of them, given that way.
        let mut host: Option<String> = None;
        let mut plain = 0;
        for src in srcs.iter_mut() {
            let Some((h, p)) = src.to_str().and_then(split_remote) else {
                plain += 1;
                continue;
            };
            if host.as_deref().is_some_and(|seen| seen != h) {
                return Err(UsageError::TwoHosts {
                    first: host.unwrap_or_default(),
                    second: h.to_string(),
                });
            }
            target::parse(h).map_err(|e| UsageError::BadSourceHost {
                host: h.to_string(),
                path: p.to_string(),
                source: Box::new(e),
            })?;
            host = Some(h.to_string());
            *src = if p.is_empty() { "." } else { p }.into();
        }
        if let Some(h) = host {
            if plain > 0 {
                return Err(UsageError::MixedSources);
            }
            if !self.target.hosts.is_empty() || !self.target.host_files.is_empty() {
                return Err(UsageError::HostAndTargets { host: h });
            }
            self.target.hosts = vec![h];
        }
        Ok(())
    }
}

/// The names a pull of `srcs` may bring at its top level: each source's
/// own name, or `None` when any entry may come (a `src/` contents copy, or
/// a name only the target can resolve, such as `..`).
fn allowed_tops(srcs: &[std::ffi::OsString]) -> Option<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut tops = Vec::new();
    for s in srcs {
        let b = s.as_bytes();
        if b.ends_with(b"/") || b == b"." || b.ends_with(b"/.") {
            return None;
        }
        match Path::new(s).file_name() {
            Some(n) if n != "." && n != ".." => tops.push(n.as_bytes().to_vec()),
            _ => return None,
        }
    }
    Some(tops)
}

/// The relative path of an entry.
fn rel_of(e: &PlanEntry) -> &RawPath {
    match e {
        PlanEntry::Dir { rel, .. }
        | PlanEntry::File { rel, .. }
        | PlanEntry::Symlink { rel, .. }
        | PlanEntry::HardLink { rel, .. }
        | PlanEntry::Special { rel, .. } => rel,
    }
}

/// Why what a target offered for a pull is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Metadata for DEST itself, in a copy that is not of contents.
    #[error("offered metadata for DEST that is not a contents copy's")]
    RootMeta,
    /// An entry outside what was asked for.
    #[error("offered {0}, which is not beneath what was asked for")]
    Outside(RawPath),
    /// A hard link to something outside what was asked for.
    #[error("offered a link to {0}, not beneath what was asked for")]
    LinkOutside(RawPath),
}

/// Checks what a target offered against what was asked for: every entry
/// (and hard link's target) beneath an asked-for name. Returns why not.
fn vet(offer: &Offer, tops: Option<&[Vec<u8>]>) -> Result<(), OfferError> {
    match &offer.root {
        None => {}
        Some(PlanEntry::Dir { rel, .. }) if rel.as_bytes().is_empty() && offer.contents => {}
        Some(_) => return Err(OfferError::RootMeta),
    }
    vet_entries(&offer.entries, tops)
}

/// [`vet`] for entries alone (the later replies of a walk in batches).
fn vet_entries(entries: &[PlanEntry], tops: Option<&[Vec<u8>]>) -> Result<(), OfferError> {
    let Some(tops) = tops else {
        return Ok(());
    };
    let under = |rel: &RawPath| {
        let first = rel.as_bytes().split(|&b| b == b'/').next().unwrap_or(b"");
        tops.iter().any(|t| t.as_slice() == first)
    };
    for e in entries {
        let rel = rel_of(e);
        if !under(rel) {
            return Err(OfferError::Outside(rel.clone()));
        }
        if let PlanEntry::HardLink { to, .. } = e
            && !under(to)
        {
            return Err(OfferError::LinkOutside(to.clone()));
        }
    }
    Ok(())
}

/// Checks `offer` against the sources asked for (`srcs` as given):
/// every entry beneath one of their names. Returns why not.
pub fn vet_offer(offer: &Offer, srcs: &[std::ffi::OsString]) -> Result<(), OfferError> {
    vet(offer, allowed_tops(srcs).as_deref())
}

/// A target's name as one directory name: `/` and NUL (impossible in a
/// name) become `_`, and `.`/`..` are prefixed.
fn dir_name(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

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
    let args = Arc::new(Job {
        walk: WalkSpec {
            recursive: args.recursive || args.archive,
            specials: args.specials || args.archive,
            devices: args.devices || args.archive,
            hard_links: args.hard_links || args.archive,
            owner: args.owner,
            xattrs: args.xattr_sel(),
            filter: args.filter.rules().clone(),
        },
        serve: ServeOptions {
            window: args.window,
            window_cap: args.window_cap,
            compress: args.compress,
            bwlimit: args.bwlimit,
            bwlimit_total: None,
            xattrs: args.xattr_sel(),
        },
        srcs: srcs.iter().map(|s| RawPath::from(Path::new(s))).collect(),
        tops: allowed_tops(srcs),
        dest: dest.clone(),
        several,
        options: ReceiveOptions {
            fsync: !args.no_fsync,
            preserve_owner: args.owner,
            // Decided per target (a local one sends whole files unless
            // --no-whole-file, as push does).
            delta: !args.whole_file,
            partial: args.partial,
            xattrs: args.xattr_sel(),
            sparse: args.sparse,
        },
        no_whole_file: args.no_whole_file,
        parallel: args.parallel,
        dry_run: args.dry_run,
        compare: if args.checksum {
            Compare::Checksum
        } else if args.ignore_times {
            Compare::IgnoreTimes
        } else {
            Compare::QuickCheck
        },
        delete: args.delete,
        max_delete: args.max_delete,
        stripes: args.stripes,
        target: targs.clone(),
        log_filter: log_filter.to_string(),
    });
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

/// Everything one target's pull needs.
struct Job {
    walk: WalkSpec,
    serve: ServeOptions,
    srcs: Vec<RawPath>,
    tops: Option<Vec<Vec<u8>>>,
    dest: std::ffi::OsString,
    several: bool,
    options: ReceiveOptions,
    parallel: u32,
    dry_run: bool,
    compare: Compare,
    delete: bool,
    max_delete: Option<u64>,
    stripes: Option<usize>,
    target: target::TargetArgs,
    log_filter: String,
    no_whole_file: bool,
}

#[allow(clippy::too_many_arguments)]
async fn pull_one(
    router: &Router,
    job: &Job,
    chain: &Chain,
    host: String,
    temps: &TempFiles,
    cancel: &AtomicBool,
    bar: Option<&indicatif::ProgressBar>,
    style: &report::Style,
) -> report::Tally {
    use std::os::unix::ffi::OsStrExt;
    let t0 = Instant::now();
    // With several targets, each gets a directory of its own in DEST.
    let dest: PathBuf = if job.several {
        Path::new(&job.dest).join(dir_name(&host))
    } else {
        PathBuf::from(&job.dest)
    };
    let mut tally = report::Tally::new(&host);
    let end = |mut tally: report::Tally, results: Vec<EntryResult>| {
        tally.add(style, &results);
        tally.seconds = t0.elapsed().as_secs_f64();
        tally
    };
    let info =
        match target::connect_target(router, &job.target, chain, &host, &job.log_filter).await {
            Ok(i) => i,
            Err(e) => return end(tally, vec![EntryResult::failed(&dest, e.to_string())]),
        };
    tally.context = info.name.clone();
    // The target walks lazily and answers in batches (`offer`, then
    // `offer_more` while it says there is more): neither side holds the
    // whole list.
    let args = OfferArgs {
        srcs: job.srcs.clone(),
        walk: job.walk.clone(),
        serve: job.serve.clone(),
        batch: BATCH_ENTRIES as u32,
    };
    let refused = |why: OfferError| {
        format!(
            "{}: refused what it offered: {}",
            info.name,
            super::sanitize::sanitize(&why.to_string())
        )
    };
    let walk_failed =
        |e: crate::call::CallError| super::call_failure(&info.name, "the walk of the sources", &e);
    let mut offer = match router
        .call(info.id, crate::files::source::OFFER, &args)
        .await
    {
        Ok(o) => o,
        Err(e) => return end(tally, vec![EntryResult::failed(&dest, walk_failed(e))]),
    };
    if let Err(why) = vet(&offer, job.tops.as_deref()) {
        return end(tally, vec![EntryResult::failed(&dest, refused(why))]);
    }
    if let Some(b) = bar {
        b.set_length(offer.total_bytes);
        report::Bars::connected(b);
    }
    let into_dir = job.several || offer.into_dir || job.dest.as_bytes().ends_with(b"/");
    let local =
        job.target.via.is_empty() && target::parse(&host) == Ok(crate::connect::Method::Local);
    let mut options = job.options.clone();
    options.delta &= !local || job.no_whole_file;
    let header = PushPlan {
        server: info.id,
        dest: RawPath::from(dest.as_path()),
        into_dir,
        entries: Vec::new(),
        options,
        parallel: job.parallel,
        dry_run: job.dry_run,
        compare: job.compare,
        // The target announced the sizes; it may not send more.
        sizes_bound: true,
        filter: job.walk.filter.clone(),
        delete: DeleteSpec {
            enabled: job.delete,
            max: job.max_delete,
            contents: offer.contents,
            incomplete: Vec::new(),
            keep: Vec::new(),
        },
        root: offer.root.take(),
    };
    let mut session = match plan::Session::open(header) {
        Ok(s) => s,
        Err(failed) => return end(tally, failed),
    };
    let mut striped = false;
    loop {
        if !striped && offer.total_bytes >= super::push::STRIPE_MIN_BYTES {
            striped = true;
            super::push::open_stripes(
                router,
                &job.target,
                &host,
                info.id,
                job.stripes,
                offer.total_bytes,
                &job.log_filter,
            );
        }
        if let Some(b) = bar {
            b.set_length(offer.total_bytes);
        }
        let entries = std::mem::take(&mut offer.entries);
        let results = session.batch(router, temps, cancel, entries).await;
        tally.add(style, &results);
        if offer.more == 0 {
            break;
        }
        offer = match router
            .call(info.id, crate::files::source::OFFER_MORE, &offer.more)
            .await
        {
            Ok(o) => o,
            Err(e) => return end(tally, vec![EntryResult::failed(&dest, walk_failed(e))]),
        };
        if let Err(why) = vet_entries(&offer.entries, job.tops.as_deref()) {
            // What landed from earlier batches stays (it was vetted).
            return end(tally, vec![EntryResult::failed(&dest, refused(why))]);
        }
    }
    // The walk's notes, with its last reply.
    let mut results: Vec<EntryResult> = offer
        .unread
        .iter()
        .map(|why| {
            EntryResult::failed(
                &dest,
                format!("{}: {}", info.name, super::sanitize::sanitize(why)),
            )
        })
        .collect();
    let skipped: Vec<RawPath> = offer.skipped.iter().map(|(rel, _)| rel.clone()).collect();
    for (rel, kind) in &offer.skipped {
        tracing::info!("{host}: {rel}: {} skipped", super::sanitize::sanitize(kind));
        results.push(EntryResult::done(
            &dest.join(rel.as_path()),
            EntryKind::Special,
            Status::Skipped,
        ));
    }
    let close = plan::PushEnd {
        session: 0,
        incomplete: offer.incomplete,
        keep: skipped,
    };
    results.extend(session.finish(cancel, close).await);
    end(tally, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asked_for_names_may_come() {
        let srcs: Vec<std::ffi::OsString> = vec!["/var/log/syslog".into(), "etc".into()];
        let tops = allowed_tops(&srcs).expect("names known");
        assert_eq!(tops, vec![b"syslog".to_vec(), b"etc".to_vec()]);
        let file = |rel: &str| PlanEntry::File {
            src: "/x".into(),
            rel: rel.into(),
            size: 1,
            stamp: None,
        };
        let offer = |entries| Offer {
            entries,
            ..Default::default()
        };
        assert!(
            vet(
                &offer(vec![file("syslog"), file("etc/passwd")]),
                Some(&tops)
            )
            .is_ok()
        );
        assert_eq!(
            vet(&offer(vec![file("shadow")]), Some(&tops)),
            Err(OfferError::Outside(RawPath::from("shadow")))
        );
        assert!(matches!(
            vet(&offer(vec![file("etcetera/x")]), Some(&tops)),
            Err(OfferError::Outside(_))
        ));
        let link = PlanEntry::HardLink {
            rel: "etc/a".into(),
            to: "other/b".into(),
        };
        assert!(matches!(
            vet(&offer(vec![link]), Some(&tops)),
            Err(OfferError::LinkOutside(_))
        ));
        for contents in ["dir/", ".", "dir/.", ".."] {
            assert_eq!(allowed_tops(&[contents.into()]), None, "{contents}");
        }
    }

    #[test]
    fn target_names_become_one_directory_name() {
        assert_eq!(dir_name("web1"), "web1");
        assert_eq!(dir_name("bob@web1"), "bob@web1");
        assert_eq!(dir_name("ssh:/x"), "ssh:_x");
        assert_eq!(dir_name(".."), "_..");
    }
}
