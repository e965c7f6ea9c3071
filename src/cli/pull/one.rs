//! One target's pull: connect, take the offer in batches (each vetted),
//! receive it with the push target's code into DEST (or `DEST/<target>/`),
//! and end with the walk's notes.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::super::call_failure;
use super::super::push::{self, PushArgs};
use super::super::report;
use super::super::sanitize::sanitize;
use super::super::target::{self, Chain};
use super::vet::{OfferError, allowed_tops, vet, vet_entries};
use crate::connect::ContextInfo;
use crate::files::RawPath;
use crate::files::delete::DeleteSpec;
use crate::files::plan::{self, Compare, EntryKind, EntryResult, PushPlan, Status};
use crate::files::receive::{ReceiveOptions, TempFiles};
use crate::files::source::{Offer, OfferArgs, ServeOptions, WalkSpec};
use crate::files::walk::BATCH_ENTRIES;
use crate::router::Router;

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

/// Everything one target's pull needs.
pub(super) struct Job {
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

impl Job {
    /// The job of every target of a group (`targs`), from the options.
    pub(super) fn new(
        args: &PushArgs,
        targs: &target::TargetArgs,
        several: bool,
        dest: std::ffi::OsString,
        srcs: &[std::ffi::OsString],
        log_filter: &str,
    ) -> Job {
        Job {
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
            dest,
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
        }
    }
}

/// One target's pull under way: what its steps share.
struct Pulling<'a> {
    router: &'a Router,
    job: &'a Job,
    host: &'a str,
    info: &'a ContextInfo,
    /// Where its files land: DEST, or `DEST/<target>/`.
    dest: &'a Path,
}

/// What receiving the batches needs besides the target.
struct Batches<'a> {
    temps: &'a TempFiles,
    cancel: &'a AtomicBool,
    bar: Option<&'a indicatif::ProgressBar>,
    style: &'a report::Style,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn pull_one(
    router: &Router,
    job: &Job,
    chain: &Chain,
    host: String,
    temps: &TempFiles,
    cancel: &AtomicBool,
    bar: Option<&indicatif::ProgressBar>,
    style: &report::Style,
) -> report::Tally {
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
    let p = Pulling {
        router,
        job,
        host: &host,
        info: &info,
        dest: &dest,
    };
    let mut offer = match p.first_offer().await {
        Ok(o) => o,
        Err(why) => return end(tally, vec![EntryResult::failed(&dest, why)]),
    };
    if let Some(b) = bar {
        b.set_length(offer.total_bytes);
        report::Bars::connected(b);
    }
    let mut session = match plan::Session::open(p.header(&mut offer)) {
        Ok(s) => s,
        Err(failed) => return end(tally, failed),
    };
    let batches = Batches {
        temps,
        cancel,
        bar,
        style,
    };
    if let Err(why) = p
        .receive(&mut session, &mut offer, &batches, &mut tally)
        .await
    {
        return end(tally, vec![EntryResult::failed(&dest, why)]);
    }
    let (mut results, skipped) = p.notes(&offer);
    let close = plan::PushEnd {
        session: 0,
        incomplete: offer.incomplete,
        keep: skipped,
    };
    results.extend(session.finish(cancel, close).await);
    end(tally, results)
}

impl Pulling<'_> {
    /// The target's first reply: its walk's first batch, vetted. The
    /// target walks lazily and answers in batches (`offer`, then
    /// `offer_more` while it says there is more): neither side holds the
    /// whole list.
    async fn first_offer(&self) -> Result<Offer, String> {
        let job = self.job;
        let args = OfferArgs {
            srcs: job.srcs.clone(),
            walk: job.walk.clone(),
            serve: job.serve.clone(),
            batch: BATCH_ENTRIES as u32,
        };
        let offer: Offer = self
            .router
            .call(self.info.id, crate::files::source::OFFER, &args)
            .await
            .map_err(|e| self.walk_failed(e))?;
        vet(&offer, job.tops.as_deref()).map_err(|why| self.refused(why))?;
        Ok(offer)
    }

    /// The plan's header: where and how the offer lands (its root taken).
    fn header(&self, offer: &mut Offer) -> PushPlan {
        use std::os::unix::ffi::OsStrExt;
        let job = self.job;
        let into_dir = job.several || offer.into_dir || job.dest.as_bytes().ends_with(b"/");
        let local = job.target.via.is_empty()
            && target::parse(self.host) == Ok(crate::connect::Method::Local);
        let mut options = job.options.clone();
        options.delta &= !local || job.no_whole_file;
        PushPlan {
            server: self.info.id,
            dest: RawPath::from(self.dest),
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
        }
    }

    /// Receives `offer`'s batch and every later one (each vetted) into
    /// `session`, stripes opened once the offer is big enough. Leaves the
    /// last reply in `offer`; why not, if the walk failed or a batch was
    /// refused (what landed from earlier batches stays: it was vetted).
    async fn receive(
        &self,
        session: &mut plan::Session,
        offer: &mut Offer,
        b: &Batches<'_>,
        tally: &mut report::Tally,
    ) -> Result<(), String> {
        let job = self.job;
        let mut striped = false;
        loop {
            if !striped && offer.total_bytes >= push::STRIPE_MIN_BYTES {
                striped = true;
                push::open_stripes(
                    self.router,
                    &job.target,
                    self.host,
                    self.info.id,
                    job.stripes,
                    offer.total_bytes,
                    &job.log_filter,
                );
            }
            if let Some(bar) = b.bar {
                bar.set_length(offer.total_bytes);
            }
            let entries = std::mem::take(&mut offer.entries);
            let results = session.batch(self.router, b.temps, b.cancel, entries).await;
            tally.add(b.style, &results);
            if offer.more == 0 {
                return Ok(());
            }
            *offer = self
                .router
                .call(self.info.id, crate::files::source::OFFER_MORE, &offer.more)
                .await
                .map_err(|e| self.walk_failed(e))?;
            vet_entries(&offer.entries, job.tops.as_deref()).map_err(|why| self.refused(why))?;
        }
    }

    /// The walk's notes, with its last reply: what could not be read (as
    /// failures) and what was skipped (and so kept by `--delete`).
    fn notes(&self, offer: &Offer) -> (Vec<EntryResult>, Vec<RawPath>) {
        let mut results: Vec<EntryResult> = offer
            .unread
            .iter()
            .map(|why| {
                EntryResult::failed(self.dest, format!("{}: {}", self.info.name, sanitize(why)))
            })
            .collect();
        let skipped: Vec<RawPath> = offer.skipped.iter().map(|(rel, _)| rel.clone()).collect();
        for (rel, kind) in &offer.skipped {
            tracing::info!("{}: {rel}: {} skipped", self.host, sanitize(kind));
            results.push(EntryResult::done(
                &self.dest.join(rel.as_path()),
                EntryKind::Special,
                Status::Skipped,
            ));
        }
        (results, skipped)
    }

    /// Why the target's offer was refused, as said.
    fn refused(&self, why: OfferError) -> String {
        format!(
            "{}: refused what it offered: {}",
            self.info.name,
            sanitize(&why.to_string())
        )
    }

    /// Why the target's walk failed, as said.
    fn walk_failed(&self, e: crate::call::CallError) -> String {
        call_failure(&self.info.name, "the walk of the sources", &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_become_one_directory_name() {
        assert_eq!(dir_name("web1"), "web1");
        assert_eq!(dir_name("bob@web1"), "bob@web1");
        assert_eq!(dir_name("ssh:/x"), "ssh:_x");
        assert_eq!(dir_name(".."), "_..");
    }
}
