//! `ferrogen ping`: connect to each target (through any `--via` hops) and
//! time N calls to its `ferrogen.ping` service.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::target;
use crate::connect::{self, ContextInfo};
use crate::ping::PING_SERVICE;
use crate::router::{Router, RouterConfig};
use crate::service::Services;

/// Arguments of `ferrogen ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Target to reach (repeatable). Default: one `local` child.
    #[arg(short = 'H', long = "host", value_name = "SPEC")]
    pub hosts: Vec<String>,
    /// Start each next hop from inside the previous one (repeatable, in order).
    #[arg(long, value_name = "SPEC")]
    pub via: Vec<String>,
    /// Calls per target.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: u32,
    /// Seconds allowed for each connection.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
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
    /// Round-trip times in microseconds (min, median, max), if any call ran.
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
pub async fn run(args: PingArgs, log_filter: String) -> i32 {
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    crate::ping::register_service(&services, &router);

    let hosts = if args.hosts.is_empty() {
        vec!["local".to_string()]
    } else {
        args.hosts.clone()
    };
    let mut reports = Vec::new();

    // The --via chain is shared by every target.
    let mut chain = vec![router.name().to_string()];
    let mut via = None;
    let mut failure = None;
    for (i, spec) in args.via.iter().enumerate() {
        let hop = i + 1;
        let method = match target::parse(spec) {
            Ok(m) => m,
            Err(e) => {
                failure = Some(format!("hop {hop} ({spec}): {e}"));
                break;
            }
        };
        let cs = target::connect_spec(method, args.connect_timeout, &log_filter);
        match connect::connect(&router, &cs, via).await {
            Ok(info) => {
                chain.push(info.name.clone());
                via = Some(info.id);
            }
            Err(e) => {
                failure = Some(format!(
                    "hop {hop} ({spec} via {}): {e}",
                    chain.join(" -> ")
                ));
                break;
            }
        }
    }

    let mut tasks = Vec::new();
    for host in hosts {
        if let Some(f) = &failure {
            reports.push(PingReport {
                target: host,
                chain: chain.clone(),
                count: 0,
                rtt_us: None,
                error: Some(f.clone()),
            });
            continue;
        }
        let router = router.clone();
        let chain = chain.clone();
        let filter = log_filter.clone();
        let count = args.count;
        let timeout = args.connect_timeout;
        tasks.push(tokio::spawn(async move {
            ping_one(&router, host, chain, via, count, timeout, &filter).await
        }));
    }
    for t in tasks {
        match t.await {
            Ok(r) => reports.push(r),
            Err(e) => reports.push(PingReport {
                target: "?".into(),
                chain: vec![],
                count: 0,
                rtt_us: None,
                error: Some(format!("internal error: {e}")),
            }),
        }
    }

    let mut failed = false;
    for r in &reports {
        failed |= r.error.is_some();
        if args.json {
            println!(
                "{}",
                serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        } else {
            print_text(r);
        }
    }
    router.close_all_streams("ping finished");
    if failed { 1 } else { 0 }
}

async fn ping_one(
    router: &Router,
    host: String,
    mut chain: Vec<String>,
    via: Option<u32>,
    count: u32,
    timeout: f64,
    filter: &str,
) -> PingReport {
    let fail = |chain: Vec<String>, e: String| PingReport {
        target: host.clone(),
        chain,
        count: 0,
        rtt_us: None,
        error: Some(e),
    };
    let method = match target::parse(&host) {
        Ok(m) => m,
        Err(e) => return fail(chain, e),
    };
    let hop = chain.len();
    let cs = target::connect_spec(method, timeout, filter);
    let info: ContextInfo = match connect::connect(router, &cs, via).await {
        Ok(i) => i,
        Err(e) => {
            let e = format!("hop {hop} ({host} via {}): {e}", chain.join(" -> "));
            return fail(chain, e);
        }
    };
    chain.push(info.name.clone());
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
            Err(e) => return fail(chain, format!("{}: ping failed: {e}", info.name)),
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
        chain,
        count,
        rtt_us,
        error: None,
    }
}

fn print_text(r: &PingReport) {
    match (&r.error, &r.rtt_us) {
        (Some(e), _) => println!("{}: FAILED: {e}", r.target),
        (None, Some(s)) => println!(
            "{}: {}  {} calls  rtt min {:.0} µs / median {:.0} µs / max {:.0} µs",
            r.target,
            r.chain.join(" -> "),
            r.count,
            s.min,
            s.median,
            s.max
        ),
        (None, None) => println!("{}: {}  connected, 0 calls", r.target, r.chain.join(" -> ")),
    }
}
