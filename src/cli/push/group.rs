//! One group of targets (reached through the same hops): the chain, a
//! relay's tee when there is one, each target's push.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::Targets;
use super::args::PushArgs;
use super::early::top_files_size;
use super::failure::failed_whole;
use super::feed::{Batches, Feed, Uplink};
use super::notes::Notes;
use super::one::One;
use super::relay::{start_tee, stop_tee, stopped_tee};
use crate::cli::report;
use crate::cli::target::{self, Chain, TargetArgs};
use crate::connect::Method;
use crate::files::plan::PushPlan;
use crate::files::receive::ReceiveOptions;
use crate::files::tee::TeeStats;
use crate::files::walk::Walker;
use crate::files::{FileService, RawPath};
use crate::router::Router;
use crate::wire::ContextId;

/// Pushes to one group of targets: connects its hops, starts the tee in
/// its last hop (which then gets the plan's batches once, from one walk,
/// and hands them to each target), and pushes to its targets `--fanout`
/// at a time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn push_group(
    router: &Router,
    fs: &FileService,
    args: &PushArgs,
    targs: &TargetArgs,
    plan: PushPlan,
    walker: &Walker,
    style: &report::Style,
    notes: &Arc<Notes>,
    log_filter: &str,
    targets: &Targets,
    bars: &report::Bars,
) -> (Vec<report::Tally>, Option<(String, TeeStats)>) {
    let hosts = targs.hosts();
    let chain = match target::connect_chain(router, targs, log_filter).await {
        Ok(c) => c,
        Err((_, e)) => {
            let failed = hosts
                .into_iter()
                .map(|host| failed_whole(style, &host, &plan.dest, e.to_string()))
                .collect();
            return (failed, None);
        }
    };
    let mut plan = plan;
    // Behind a tee, the plan is walked once here and its batches cross
    // the uplink once: the relay keeps them and hands them to each target.
    // The first batch follows `start` at once (the relay waits for the tee
    // if it overtakes it), so the relay reads ahead a round trip sooner.
    let (started, feed) =
        start_relay(router, args, targs, &chain, walker, hosts.len(), log_filter).await;
    if let Some(relay) = started {
        plan.server = relay;
    }
    let sem = Arc::new(Semaphore::new(args.fanout.max(1)));
    let tee_final: Arc<std::sync::Mutex<Option<TeeStats>>> = Arc::default();
    // Delta transfer is for a link: on one machine (a local target, no
    // hop) the file is sent whole unless --no-whole-file.
    let is_local = |host: &str| targs.via.is_empty() && target::parse(host) == Ok(Method::Local);
    let (plan, local_plan) = plans(plan, args);
    let shared = Shared {
        router: router.clone(),
        fs: fs.clone(),
        targs: targs.clone(),
        chain: chain.clone(),
        log_filter: log_filter.to_string(),
        stripes: args.stripes,
        reached: targets.clone(),
        style: style.clone(),
        notes: notes.clone(),
        relay: started,
        tee_final: tee_final.clone(),
        size_hint: size_hint(args, hosts.len()),
    };
    let mut tasks = Vec::new();
    for host in hosts {
        let plan = if is_local(&host) { &local_plan } else { &plan };
        let bar = bars.add(&host, 0);
        let batches = match &feed {
            Some(f) => Batches::Relay(f.clone()),
            None => Batches::Walk(Box::new(walker.restart())),
        };
        let push = shared
            .clone()
            .push(host, plan.clone(), batches, bar, sem.clone());
        tasks.push(tokio::spawn(push));
    }
    let out = tallies(tasks, style).await;
    let stopped = tee_final.lock().ok().and_then(|mut f| f.take());
    let relay = match (started, stopped) {
        // The last target's session stopped the tee and brought its figures.
        (Some(_), Some(stats)) => Some(stopped_tee(&chain, stats)),
        (Some(relay), None) => stop_tee(router, relay, &chain).await,
        (None, _) => None,
    };
    (out, relay)
}

/// The bytes that start a target's stripes before its walk (see
/// [`One::size_hint`]) when `hosts` targets are pushed to, `--fanout` at
/// a time. Stripe transports are started before the round trip is known
/// (speculatively) only for a push to one target: targets pushed to at
/// once share this machine's uplink, and eight speculative ssh
/// connections each (256 at a fan-out of 32) would cost more than they
/// could bring. Stripes still come by what they deliver.
fn size_hint(args: &PushArgs, hosts: usize) -> u64 {
    let hosts_in_flight = hosts.min(args.fanout.max(1));
    if hosts_in_flight > 1 && args.stripes.is_none() {
        0
    } else {
        top_files_size(&args.paths)
    }
}

/// What each target's push of a group shares (a copy in each task).
#[derive(Clone)]
struct Shared {
    router: Router,
    fs: FileService,
    targs: TargetArgs,
    chain: Chain,
    log_filter: String,
    stripes: Option<usize>,
    reached: Targets,
    style: report::Style,
    notes: Arc<Notes>,
    /// The group's relay, when it tees.
    relay: Option<ContextId>,
    tee_final: Arc<std::sync::Mutex<Option<TeeStats>>>,
    /// See [`One::size_hint`].
    size_hint: u64,
}

impl Shared {
    /// The push to `host`, once the fan-out lets it start.
    async fn push(
        self,
        host: String,
        plan: Arc<PushPlan>,
        batches: Batches,
        bar: Option<indicatif::ProgressBar>,
        sem: Arc<Semaphore>,
    ) -> report::Tally {
        let _permit = sem.acquire_owned().await;
        let one = One {
            tee_final: &self.tee_final,
            router: &self.router,
            fs: &self.fs,
            targs: &self.targs,
            chain: &self.chain,
            plan: &plan,
            log_filter: &self.log_filter,
            stripes: self.stripes,
            reached: &self.reached,
            style: &self.style,
            notes: &self.notes,
            relay: self.relay,
            size_hint: self.size_hint,
        };
        one.push(host, batches, bar).await
    }
}

/// Behind a relay (unless `--no-tee`): starts feeding it the plan's
/// batches and starts its tee. The relay (the targets' server) and the
/// feed, or neither.
async fn start_relay(
    router: &Router,
    args: &PushArgs,
    targs: &TargetArgs,
    chain: &Chain,
    walker: &Walker,
    targets: usize,
    log_filter: &str,
) -> (Option<ContextId>, Option<Feed>) {
    match chain.last {
        Some(relay) if !args.no_tee => {
            let feed = Feed::start(
                router,
                relay,
                walker.restart(),
                uplink(args, targs, log_filter),
            );
            match start_tee(router, relay, chain, args, targets).await {
                Some(relay) => (Some(relay), Some(feed)),
                None => (None, None),
            }
        }
        _ => (None, None),
    }
}

/// The plan for targets over a link, and the one for local targets: on
/// one machine (no hop) a file is sent whole unless `--no-whole-file`.
fn plans(plan: PushPlan, args: &PushArgs) -> (Arc<PushPlan>, Arc<PushPlan>) {
    let local_delta = plan.options.delta && args.no_whole_file;
    let local_plan = Arc::new(PushPlan {
        options: ReceiveOptions {
            delta: local_delta,
            ..plan.options.clone()
        },
        ..plan.clone()
    });
    (Arc::new(plan), local_plan)
}

/// Each target's tally, as its task ends.
async fn tallies(
    tasks: Vec<tokio::task::JoinHandle<report::Tally>>,
    style: &report::Style,
) -> Vec<report::Tally> {
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => out.push(failed_whole(
                style,
                "?",
                &RawPath::default(),
                format!("internal error: {e}"),
            )),
        }
    }
    out
}

/// How to stripe the uplink to a group's relay, if at all. Striped only
/// when asked (`--stripes N`): chosen by round trip alone, 9 streams on a
/// 100 ms / 100 Mbit uplink made a 64 MiB push 9.2-10.3 s instead of 8.5
/// (their connections compete with the data for a link one stream nearly
/// fills), until stripes are chosen by what they deliver (issue 14).
pub(super) fn uplink(args: &PushArgs, targs: &TargetArgs, log_filter: &str) -> Option<Uplink> {
    let explicit = args.stripes.is_some_and(|n| n > 1);
    targs.via.first().filter(|_| explicit).map(|spec| Uplink {
        targs: TargetArgs {
            via: Vec::new(),
            ..targs.clone()
        },
        spec: spec.clone(),
        stripes: args.stripes,
        log_filter: log_filter.to_string(),
    })
}
