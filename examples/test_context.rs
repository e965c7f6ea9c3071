//! A context binary for the integration tests: the stock child plus a
//! `ferrogen.test` service whose methods exercise policies, failures and
//! slow replies. Not part of the product; tests point
//! `connect::local::set_child_program` at it.

use std::time::Duration;

use ferrogen::call::RemoteError;
use ferrogen::router::Router;
use ferrogen::service::{Policy, ServiceBuilder, Services};

fn register(services: &Services, router: &Router) {
    let r = router.clone();
    services.register(
        ServiceBuilder::new("ferrogen.test")
            .method(
                "parents_only",
                Policy::ParentsOnly,
                |_c, x: u32| async move { Ok::<_, RemoteError>(x + 1) },
            )
            .method("anyone", Policy::Any, |_c, x: u32| async move {
                Ok::<_, RemoteError>(x + 1)
            })
            .method("fail", Policy::Any, |_c, msg: String| async move {
                Err::<(), _>(RemoteError::Failed(msg))
            })
            .method("sleep_ms", Policy::Any, |_c, ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, RemoteError>(())
            })
            .method("whoami", Policy::Any, move |c, (): ()| {
                let r = r.clone();
                async move { Ok::<_, RemoteError>((r.id(), c.src_id, c.auth_id)) }
            })
            .build(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(ferrogen::connect::local::CHILD_ARG) {
        std::process::exit(ferrogen::connect::child::run(register));
    }
    eprintln!("test_context: run by ferrogen tests only");
    std::process::exit(2);
}
