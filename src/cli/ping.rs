//! `ferrogen ping`: connect to each target (through any `--via` hops) and
//! time N calls to its `ferrogen.ping` service.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::target::{self, Chain, TargetArgs};
use super::{Exit, out};
use crate::ping::PING_SERVICE;
use crate::router::{Router, RouterConfig};
use crate::service::Services;

/// Arguments of `ferrogen ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Which targets, and how to reach them.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Calls per target.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: u32,
    /// Print one JSON object per target instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One target's outcome.
#[derive(Debug, Serialize)]
pub struct PingReport {
    /// The spec as given.
    pub target: String,
    /// Context names from the controller to the target.
    pub chain: Vec<String>,
    /// Calls made.
    pub count: u32,
    /// Round-trip times in microseconds, if any call ran.
    pub rtt_us: Option<RttSummary>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Round-trip summary.
#[derive(Debug, Serialize)]
pub struct RttSummary {
    /// Fastest call.
    pub min: f64,
    /// Median call.
    pub median: f64,
    /// Slowest call.
    pub max: f64,
}

/// Runs the command; returns the exit code.
pub async fn run(args: PingArgs, log_filter: String) -> Exit {
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    crate::ping::register_service(&services, &router);

    let mut reports = Vec::new();
    // Each group of targets reached through the same hops (a hosts file's
    // relay column) in turn.
    for group in args.target.groups() {
        let targs = args.target.for_group(&group);
        match target::connect_chain(&router, &targs, &log_filter).await {
            Err((chain, e)) => {
                for host in group.hosts {
                    reports.push(PingReport {
                        target: host,
                        chain: chain.names.clone(),
                        count: 0,
                        rtt_us: None,
                        error: Some(e.to_string()),
                    });
                }
            }
            Ok(chain) => {
                let mut tasks = Vec::new();
                for host in group.hosts {
                    let router = router.clone();
                    let chain = chain.clone();
                    let filter = log_filter.clone();
                    let targs = targs.clone();
                    let count = args.count;
                    tasks.push(tokio::spawn(async move {
                        ping_one(&router, &targs, host, chain, count, &filter).await
                    }));
                }
                for t in tasks {
                    reports.push(t.await.unwrap_or_else(|e| PingReport {
                        target: "?".into(),
                        chain: vec![],
                        count: 0,
                        rtt_us: None,
                        error: Some(format!("internal error: {e}")),
                    }));
                }
            }
        }
    }

    let mut failed = false;
    for r in &reports {
        failed |= r.error.is_some();
        if args.json {
            match serde_json::to_string(r) {
                Ok(s) => out::data(s),
                Err(e) => out::data(serde_json::json!({ "error": e.to_string() })),
            }
        } else {
            print_text(r);
        }
    }
    router.close_all_streams("ping finished");
    if failed { Exit::Failure } else { Exit::Success }
}

async fn ping_one(
    router: &Router,
    targs: &TargetArgs,
    host: String,
    chain: Chain,
    count: u32,
    filter: &str,
) -> PingReport {
    let mut names = chain.names.clone();
    let info = match target::connect_target(router, targs, &chain, &host, filter).await {
        Ok(i) => i,
        Err(e) => {
            return PingReport {
                target: host,
                chain: names,
                count: 0,
                rtt_us: None,
                error: Some(e.to_string()),
            };
        }
    };
    names.push(info.name.clone());
    let mut rtts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let t0 = Instant::now();
        let r: Result<Vec<u8>, _> = router
            .call_service_timeout(
                info.id,
                PING_SERVICE,
                "ping",
                &Vec::<u8>::new(),
                Some(Duration::from_secs(30)),
            )
            .await;
        match r {
            Ok(_) => rtts.push(t0.elapsed().as_secs_f64() * 1e6),
            Err(e) => {
                return PingReport {
                    target: host,
                    chain: names,
                    count: rtts.len() as u32,
                    rtt_us: None,
                    error: Some(super::call_failure(&info.name, "a ping", &e)),
                };
            }
        }
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    let rtt_us = (!rtts.is_empty()).then(|| RttSummary {
        min: rtts[0],
        median: rtts[rtts.len() / 2],
        max: rtts[rtts.len() - 1],
    });
    PingReport {
        target: host,
        chain: names,
        count,
        rtt_us,
        error: None,
    }
}

fn print_text(r: &PingReport) {
    match (&r.error, &r.rtt_us) {
        (Some(e), _) => out::diag(format_args!("{}: FAILED: {e}", r.target)),
        (None, Some(s)) => out::result(format_args!(
            "{}: {}  {} calls  rtt min {:.0} µs / median {:.0} µs / max {:.0} µs",
            r.target,
            r.chain.join(" -> "),
            r.count,
            s.min,
            s.median,
            s.max
        )),
        (None, None) => out::result(format_args!(
            "{}: {}  connected, 0 calls",
            r.target,
            r.chain.join(" -> ")
        )),
    }
}
