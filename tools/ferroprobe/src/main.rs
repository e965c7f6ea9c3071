//! ferroprobe: how long a control call takes on a stream that a large push
//! keeps saturated (issue 5, point 6).
//!
//! It takes the same arguments as `ferrogen push` (one target) plus its own:
//! connects the target exactly as `ferrogen push` does, measures `--idle-calls`
//! calls of the target's `ferrogen.ping` service on the idle stream, then
//! starts the push and, while data is flowing, calls `ferrogen.ping` every
//! `--interval-ms` on the same stream (one call outstanding at a time), up to
//! `--calls`. Like `ferrogen push`, it opens stripes for a large push over a
//! path of 4 ms or more (`--stripes` as there), so bulk data leaves the
//! stream the calls use. Prints one JSON line:
//!
//! ```text
//! {"idle":{"count":..,"p50_ms":..,"p99_ms":..,"max_ms":..},"loaded":{..},
//!  "push_seconds":..,"push_bytes":..,"push_mib_s":..}
//! ```
//!
//! The target must run the ferrogen binary: pass `--remote-binary
//! path/to/ferrogen` for ssh targets (this program is not one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ferrogen::cli::push::file_service_config as config;
use ferrogen::cli::push::{PushArgs, collect_sources, open_stripes};
use ferrogen::cli::target;
use ferrogen::files::plan::EntryResult;
use ferrogen::files::{FileService, TARGET_SERVICE};
use ferrogen::ping::PING_SERVICE;
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::Services;

#[derive(Debug, Parser)]
#[command(
    name = "ferroprobe",
    about = "control-call latency during a ferrogen push"
)]
struct Cli {
    /// Calls measured while the push runs (at most).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Calls measured on the idle stream before the push.
    #[arg(long, default_value_t = 50)]
    idle_calls: usize,
    /// Pause between loaded calls, milliseconds.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    #[command(flatten)]
    push: PushArgs,
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| -> f64 {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() as f64 - 1.0) * p).round() as usize;
        ms[i.min(ms.len() - 1)]
    };
    serde_json::json!({
        "count": ms.len(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "min_ms": ms.first().copied().unwrap_or(f64::NAN),
    })
}

async fn ping(router: &Router, id: ferrogen::wire::ContextId) -> Result<f64, String> {
    let t0 = Instant::now();
    router
        .call_service_timeout::<_, Vec<u8>>(
            id,
            PING_SERVICE,
            "ping",
            &Vec::<u8>::new(),
            Some(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| format!("ping: {e}"))?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

async fn run(cli: Cli) -> Result<serde_json::Value, String> {
    let args = &cli.push;
    let (dest, srcs) = args.paths.split_last().ok_or("need SRC... DEST")?;
    let mut sources = collect_sources(srcs, args.recursive).map_err(|e| e.to_string())?;
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    ferrogen::ping::register_service(&services, &router);
    let fs = FileService::start(&router, &services, config(args));
    sources.register(&fs).map_err(|e| e.to_string())?;
    let plan = sources.plan(args, router.id(), dest);
    let filter = "warn".to_string();
    let hosts = args.target.hosts();
    if hosts.len() != 1 {
        return Err("give exactly one -H target".into());
    }
    let chain = target::connect_chain(&router, &args.target, &filter)
        .await
        .map_err(|(_, e)| e.to_string())?;
    let info = target::connect_target(&router, &args.target, &chain, &hosts[0], &filter)
        .await
        .map_err(|e| e.to_string())?;
    let id = info.id;
    // Stripes as `ferrogen push` opens them (for a large push over a long
    // enough path): bulk data then travels on them, and calls on the
    // primary stream no longer queue behind it.
    open_stripes(
        &router,
        &args.target,
        &hosts[0],
        id,
        args.stripes,
        sources.total_bytes,
        &filter,
    );

    let mut idle = Vec::new();
    for _ in 0..cli.idle_calls {
        idle.push(ping(&router, id).await?);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let push = {
        let (router, done) = (router.clone(), done.clone());
        tokio::spawn(async move {
            let r = router
                .call_service::<_, Vec<EntryResult>>(id, TARGET_SERVICE, "push", &plan)
                .await;
            done.store(true, Ordering::SeqCst);
            (r, t0.elapsed().as_secs_f64())
        })
    };
    let mut loaded = Vec::new();
    while !done.load(Ordering::SeqCst) && loaded.len() < cli.calls {
        // Count only calls made while data is flowing and answered before the end.
        let started = fs.progress(id) > 0;
        let ms = ping(&router, id).await?;
        if started && !done.load(Ordering::SeqCst) {
            loaded.push(ms);
        }
        tokio::time::sleep(Duration::from_millis(cli.interval_ms)).await;
    }
    let (result, secs) = push.await.map_err(|e| format!("push task: {e}"))?;
    let results = result.map_err(|e| format!("push: {e}"))?;
    let mut bytes = 0;
    for r in &results {
        if let Some(e) = &r.error {
            return Err(format!("{}: {e}", r.path));
        }
        bytes += r.bytes;
    }
    let stripes = router
        .stream_towards(id)
        .map(|s| router.stripes(s).len())
        .unwrap_or(0);
    services.shutdown().await;
    router.close_all_streams("probe finished");
    Ok(serde_json::json!({
        "target": info.name,
        "idle": summary(idle),
        "loaded": summary(loaded),
        "push_seconds": secs,
        "push_bytes": bytes,
        "push_mib_s": bytes as f64 / 1048576.0 / secs,
        "window": format!("{:?}", config(args).sizing),
        "streams": stripes,
    }))
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("ferroprobe: {e}");
            std::process::exit(1);
        }
    }
}
