//! A service of your own, registered in the child and called from the
//! controller, with the two policies side by side.
//!
//! ```sh
//! cargo run --example custom_service
//! ```
//!
//! The child registers `demo.counter` with `add` (anyone may call it) and
//! `reset` (only the child's ancestors may). The controller calls both; then
//! the child tries to call `reset` in a sibling and is refused by policy,
//! because a sibling is not an ancestor.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrogen::{
    CallError, ContextId, Controller, Policy, RemoteError, Router, ServiceBuilder, Services, Target,
};

const SERVICE: &str = "demo.counter";

/// The child's services: a counter, and a way to make the child call another
/// context (to show a policy refusal).
fn register(services: &Services, router: &Router) {
    let total = Arc::new(AtomicU64::new(0));
    let (t_add, t_reset) = (total.clone(), total);
    let r = router.clone();
    services.register(
        ServiceBuilder::new(SERVICE)
            .method("add", Policy::Any, move |_caller, n: u64| {
                let total = t_add.clone();
                async move { Ok::<_, RemoteError>(total.fetch_add(n, Ordering::SeqCst) + n) }
            })
            .method("reset", Policy::ParentsOnly, move |_caller, (): ()| {
                let total = t_reset.clone();
                async move {
                    total.store(0, Ordering::SeqCst);
                    Ok::<_, RemoteError>(())
                }
            })
            .method(
                "reset_other",
                Policy::ParentsOnly,
                move |_caller, other: ContextId| {
                    let r = r.clone();
                    async move {
                        let res: Result<(), CallError> =
                            r.call_service(other, SERVICE, "reset", &()).await;
                        Ok::<_, RemoteError>(res.map_err(|e| e.to_string()))
                    }
                },
            )
            .build(),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(ferrogen::connect::local::CHILD_ARG) {
        std::process::exit(ferrogen::connect::child::run(register));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("custom_service: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("custom_service: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let controller = Controller::start();
    let local: Target = "local".parse()?;
    let a = controller.connect(&local).await?;
    let b = controller.connect(&local).await?;

    let after: u64 = a.call(SERVICE, "add", &5u64).await?;
    let after: u64 = a.call(SERVICE, "add", &after).await?;
    println!("{}: added 5 then 5: {after}", a.name());
    if after != 10 {
        return Err(format!("expected 10, got {after}").into());
    }
    a.call::<_, ()>(SERVICE, "reset", &()).await?;
    println!("{}: reset by its parent: allowed", a.name());

    // a asks b to reset: a is b's sibling, not its ancestor.
    let refused: Result<(), String> = a.call(SERVICE, "reset_other", &b.id()).await?;
    match refused {
        Err(why) => println!("{} -> {}: reset refused: {why}", a.name(), b.name()),
        Ok(()) => return Err("a sibling was allowed a parents-only method".into()),
    }
    a.shutdown();
    b.shutdown();
    Ok(())
}
