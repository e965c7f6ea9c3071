//! Services (after Mitogen's service_test): remote calls, argument
//! validation, unknown services and methods, per-method policies between
//! parents, siblings and children, method errors, shutdown, concurrency.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Controller, PROMPTLY, TEST};
use ferrogen::call::{CallError, RemoteError};
use ferrogen::service::{Policy, ServiceBuilder};
use ferrogen::wire::DeadReason;

type Outcome = (Option<RemoteError>, String);

fn remote(e: CallError) -> RemoteError {
    match e {
        CallError::Remote { error, .. } => error,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_call_and_its_errors() {
    let c = Controller::new();
    let child = c.connect(None).await;

    let r: u32 = c.call(child.id, "anyone", &41u32).await;
    assert_eq!(r, 42);
    let who: (u32, u32, u32) = c.call(child.id, "whoami", &()).await;
    assert_eq!(who, (child.id, 0, 0));

    // Wrong argument type: refused before the method runs.
    let err = c
        .router
        .call_service::<_, u32>(child.id, TEST, "anyone", &"hello".to_string())
        .await
        .unwrap_err();
    let text = err.to_string();
    match remote(err) {
        RemoteError::BadArguments {
            service, method, ..
        } => assert_eq!((service.as_str(), method.as_str()), (TEST, "anyone")),
        other => panic!("expected BadArguments, got {other:?}"),
    }
    assert!(text.contains(&child.name), "names the callee: {text}");

    let err = c
        .router
        .call_service::<_, u32>(child.id, "ferrogen.nope", "anyone", &1u32)
        .await
        .unwrap_err();
    assert_eq!(
        remote(err),
        RemoteError::NoSuchService("ferrogen.nope".into())
    );

    let err = c
        .router
        .call_service::<_, u32>(child.id, TEST, "nope", &1u32)
        .await
        .unwrap_err();
    assert_eq!(
        remote(err),
        RemoteError::NoSuchMethod {
            service: TEST.into(),
            method: "nope".into()
        }
    );

    let err = c
        .router
        .call_service::<_, ()>(child.id, TEST, "fail", &"it broke".to_string())
        .await
        .unwrap_err();
    assert_eq!(remote(err), RemoteError::Failed("it broke".into()));

    // The context is unharmed by all that.
    let r: u32 = c.call(child.id, "anyone", &1u32).await;
    assert_eq!(r, 2);
}

/// `from` calls `ferrogen.test.<method>(x)` in `to`.
async fn call_from(c: &Controller, from: u32, to: u32, method: &str) -> Result<u32, Outcome> {
    c.call(from, "call_u32", &(to, method.to_string(), 10u32))
        .await
}

fn assert_unauthorised(r: Result<u32, Outcome>, caller: u32, method: &str) {
    match r {
        Err((
            Some(RemoteError::Unauthorised {
                service,
                method: m,
                caller: who,
            }),
            _,
        )) => {
            assert_eq!((service.as_str(), m.as_str(), who), (TEST, method, caller));
        }
        other => panic!("expected Unauthorised for {caller}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_only_methods_accept_ancestors_and_refuse_the_rest() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(None).await;
    let a1 = c.connect(Some(a.id)).await;

    // Ancestors: the controller (of everyone), a (of a1).
    let r: u32 = c.call(a.id, "parents_only", &1u32).await;
    assert_eq!(r, 2);
    let r: u32 = c.call(a1.id, "parents_only", &1u32).await;
    assert_eq!(r, 2);
    assert_eq!(call_from(&c, a.id, a1.id, "parents_only").await, Ok(11));

    // A sibling may call Any methods but not ParentsOnly ones.
    assert_eq!(call_from(&c, a.id, b.id, "anyone").await, Ok(11));
    assert_unauthorised(
        call_from(&c, a.id, b.id, "parents_only").await,
        a.id,
        "parents_only",
    );
    // A cousin neither.
    assert_eq!(call_from(&c, a1.id, b.id, "anyone").await, Ok(11));
    assert_unauthorised(
        call_from(&c, a1.id, b.id, "parents_only").await,
        a1.id,
        "parents_only",
    );
    // A child may not call its parent's (or the controller's) ParentsOnly methods.
    assert_unauthorised(
        call_from(&c, a1.id, a.id, "parents_only").await,
        a1.id,
        "parents_only",
    );
    assert_unauthorised(
        call_from(&c, a.id, 0, "parents_only").await,
        a.id,
        "parents_only",
    );
    assert_eq!(call_from(&c, a1.id, 0, "anyone").await, Ok(11));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_handle_then_runs_the_hook_once() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    {
        let runs = runs.clone();
        let seen = seen.clone();
        let router = c.router.clone();
        c.services.register(
            ServiceBuilder::new("ferrogen.hooked")
                .method("noop", Policy::Any, |_c, (): ()| async move {
                    Ok::<_, RemoteError>(())
                })
                .on_shutdown(move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // By the time the hook runs, calls are already refused.
                    let r: Result<u32, CallError> =
                        router.call_service(0, TEST, "anyone", &1u32).await;
                    *seen.lock().unwrap() = match r {
                        Err(e) => e.to_string(),
                        Ok(v) => format!("answered {v}"),
                    };
                })
                .build(),
        );
    }
    // Before: local and remote callers reach the controller's services.
    let r: u32 = c.call(0, "anyone", &1u32).await;
    assert_eq!(r, 2);
    assert_eq!(call_from(&c, child.id, 0, "anyone").await, Ok(11));

    c.services.shutdown().await;
    c.services.shutdown().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "hook ran exactly once");
    assert!(
        seen.lock().unwrap().contains("invalid handle 110"),
        "hook saw: {}",
        seen.lock().unwrap()
    );

    let err = c
        .router
        .call_service::<_, ()>(0, "ferrogen.hooked", "noop", &())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Dead {
                reason: DeadReason::InvalidHandle {
                    handle: 110,
                    context: 0,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    match call_from(&c, child.id, 0, "anyone").await {
        Err((None, text)) => assert!(text.contains("invalid handle 110"), "{text}"),
        other => panic!("expected a dead reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_concurrently() {
    let c = Controller::new();
    let child = c.connect(None).await;
    const N: usize = 20;
    const MS: u64 = 1500;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..N {
        let r = c.router.clone();
        tasks.push(tokio::spawn(async move {
            r.call_service_timeout::<_, ()>(
                child.id,
                TEST,
                "sleep_ms",
                &MS,
                Some(PROMPTLY + Duration::from_secs(20)),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("sleep_ms call");
    }
    let took = t0.elapsed();
    // One after the other would take N × 1.5 s = 30 s.
    assert!(took >= Duration::from_millis(MS), "{took:?}");
    assert!(
        took < Duration::from_millis(MS * 4),
        "calls ran one at a time: {took:?}"
    );
}

/// A caller that keeps calling without waiting for answers gets at most
/// MAX_CALLS_IN_FLIGHT calls running in the callee; the rest are refused
/// at once with an error naming the limit (issue 9, finding 4a: calls in
/// flight hold memory until they are answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_per_caller_are_capped() {
    use ferrogen::service::MAX_CALLS_IN_FLIGHT;
    let c = Controller::new();
    let child = c.connect(None).await;
    let extra = 40;
    let mut calls = Vec::new();
    for _ in 0..MAX_CALLS_IN_FLIGHT + extra {
        let r = c.router.clone();
        calls.push(tokio::spawn(async move {
            r.call_service::<_, ()>(child.id, TEST, "sleep_ms", &5000u64)
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(()) => ok += 1,
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("limit {MAX_CALLS_IN_FLIGHT}")),
                    "{text}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (MAX_CALLS_IN_FLIGHT, extra));
    // Once they are answered, calls run again.
    let r: u32 = c.call(child.id, "anyone", &1u32).await;
    assert_eq!(r, 2);
}

/// A method as a type: served and called by one constant.
const DOUBLE: ferrogen::Rpc<u32, u64> = ferrogen::Rpc::new("ferrogen.typed", "double");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_method_is_served_and_called_by_one_constant() {
    let c = Controller::new();
    c.services.register(
        ServiceBuilder::new("ferrogen.typed")
            .serve(DOUBLE, Policy::Any, |_c, n: u32| async move {
                Ok::<_, RemoteError>(u64::from(n) * 2)
            })
            .build(),
    );
    assert_eq!(c.router.call(0, DOUBLE, &21).await, Ok(42));
    // On the wire it is the service's and method's names: a caller that
    // knows only those reaches the same method.
    let by_name: Result<u64, CallError> = c
        .router
        .call_service(0, "ferrogen.typed", "double", &4u32)
        .await;
    assert_eq!(by_name, Ok(8));
    assert_eq!(format!("{DOUBLE:?}"), "ferrogen.typed.double");
}
