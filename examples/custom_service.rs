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
    CallError, ContextId, Controller, Policy, RemoteError, Router, Rpc, ServiceBuilder, Services,
    Target,
};

const SERVICE: &str = "demo.counter";

// The service's methods as types: both the service (`serve`) and its
// callers (`Context::call`, `Router::call`) name these, so a change of an
// argument or reply type is a compile error on both sides.
// Adds `n` and answers the new total.
const ADD: Rpc<u64, u64> = Rpc::new(SERVICE, "add");
// Sets the total to 0 (parents only).
const RESET: Rpc<(), ()> = Rpc::new(SERVICE, "reset");
// Asks another context to reset: answers how that call went.
const RESET_OTHER: Rpc<ContextId, Result<(), String>> = Rpc::new(SERVICE, "reset_other");

/// The child's services: a counter, and a way to make the child call another
/// context (to show a policy refusal).
fn register(services: &Services, router: &Router) {
    let total = Arc::new(AtomicU64::new(0));
    let (t_add, t_reset) = (total.clone(), total);
    let r = router.clone();
    services.register(
        ServiceBuilder::new(SERVICE)
            .serve(ADD, Policy::Any, move |_caller, n: u64| {
                let total = t_add.clone();
                async move { Ok::<_, RemoteError>(total.fetch_add(n, Ordering::SeqCst) + n) }
            })
            .serve(RESET, Policy::ParentsOnly, move |_caller, (): ()| {
                let total = t_reset.clone();
                async move {
                    total.store(0, Ordering::SeqCst);
                    Ok::<_, RemoteError>(())
                }
            })
            .serve(
                RESET_OTHER,
                Policy::ParentsOnly,
                move |_caller, other: ContextId| {
                    let r = r.clone();
                    async move {
                        let res: Result<(), CallError> = r.call(other, RESET, &()).await;
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

    let after = a.call(ADD, &5).await?;
    let after = a.call(ADD, &after).await?;
    println!("{}: added 5 then 5: {after}", a.name());
    if after != 10 {
        return Err(format!("expected 10, got {after}").into());
    }
    a.call(RESET, &()).await?;
    println!("{}: reset by its parent: allowed", a.name());

    // a asks b to reset: a is b's sibling, not its ancestor.
    let refused = a.call(RESET_OTHER, &b.id()).await?;
    match refused {
        Err(why) => println!("{} -> {}: reset refused: {why}", a.name(), b.name()),
        Ok(()) => return Err("a sibling was allowed a parents-only method".into()),
    }
    a.shutdown();
    b.shutdown();
    Ok(())
}
