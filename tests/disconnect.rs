//! Disconnects (after Mitogen's parent_test DisconnectTest): whoever waits
//! on a call to a context is woken promptly when that context, or any hop
//! towards it, dies — directly, indirectly, through an intermediary and
//! between near and far siblings — and later sends get "no route".

mod common;

use std::time::{Duration, Instant};

use common::{Controller, PROMPTLY, TEST, kill, wait_gone};
use ferrogen::call::CallError;
use ferrogen::wire::{ContextId, DeadReason};
use tokio::task::JoinHandle;

/// Long enough that only a disconnect can end the call.
const FOREVER_MS: u64 = 60_000;

/// Waits until a sleep_ms call is running in `ctx`: the pending call has
/// arrived (and passed every hop on its way).
async fn wait_sleeping(c: &Controller, ctx: ContextId) {
    let t0 = Instant::now();
    loop {
        let n: u32 = c.call(ctx, "sleeping", &()).await;
        if n > 0 {
            return;
        }
        assert!(t0.elapsed() < PROMPTLY, "the call never reached {ctx}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pending_sleep(c: &Controller, dst: ContextId) -> JoinHandle<Result<(), CallError>> {
    let r = c.router.clone();
    tokio::spawn(async move { r.call_service(dst, TEST, "sleep_ms", &FOREVER_MS).await })
}

/// Waits for a pending call and checks that it failed promptly with a
/// disconnect naming `who`.
async fn assert_woken(call: JoinHandle<Result<(), CallError>>, killed_at: Instant, who: ContextId) {
    let r = tokio::time::timeout(PROMPTLY, call)
        .await
        .expect("the pending call was not woken")
        .expect("call task");
    let err = r.expect_err("the call cannot succeed");
    assert!(killed_at.elapsed() < PROMPTLY);
    match &err {
        CallError::Dead {
            reason: DeadReason::Disconnected { context, .. },
            ..
        } => assert_eq!(*context, who, "{err}"),
        other => panic!("expected a disconnect, got {other:?}"),
    }
}

async fn assert_no_route(c: &Controller, dst: ContextId) {
    let err = c
        .router
        .call_service::<_, u32>(dst, TEST, "anyone", &1u32)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Dead { reason: DeadReason::NoRoute { dst: d, .. }, .. } if *d == dst),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_child_killed() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let call = pending_sleep(&c, a.id);
    wait_sleeping(&c, a.id).await;
    let t0 = Instant::now();
    kill(a.pid);
    assert_woken(call, t0, a.id).await;
    assert!(!c.router.has_route(a.id));
    assert_no_route(&c, a.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indirect_child_killed() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(Some(a.id)).await;
    let call = pending_sleep(&c, b.id);
    wait_sleeping(&c, b.id).await;
    let t0 = Instant::now();
    kill(b.pid);
    assert_woken(call, t0, b.id).await;
    assert_no_route(&c, b.id).await;
    // The intermediary is fine.
    let r: u32 = c.call(a.id, "anyone", &1u32).await;
    assert_eq!(r, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediary_killed() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(Some(a.id)).await;
    let call = pending_sleep(&c, b.id);
    wait_sleeping(&c, b.id).await;
    let t0 = Instant::now();
    kill(a.pid);
    assert_woken(call, t0, b.id).await;
    assert_no_route(&c, b.id).await;
    assert_no_route(&c, a.id).await;
    // Cut off from its parent, the grandchild exits by itself.
    assert!(
        wait_gone(b.pid, PROMPTLY).await,
        "grandchild {} still running",
        b.pid
    );
}

/// `from` calls sleep_ms(FOREVER) in `to`; the task yields `from`'s report.
fn pending_call_between(
    c: &Controller,
    from: ContextId,
    to: ContextId,
) -> JoinHandle<Result<Result<(), String>, CallError>> {
    let r = c.router.clone();
    tokio::spawn(async move {
        r.call_service(from, TEST, "call_other", &(to, FOREVER_MS))
            .await
    })
}

async fn assert_reported_disconnect(
    call: JoinHandle<Result<Result<(), String>, CallError>>,
    killed_at: Instant,
    who: ContextId,
) {
    let r = tokio::time::timeout(PROMPTLY, call)
        .await
        .expect("the waiting context was not woken")
        .expect("call task")
        .expect("the call to the waiting context itself");
    assert!(killed_at.elapsed() < PROMPTLY);
    let text = r.expect_err("the inner call cannot succeed");
    assert!(text.contains("disconnected"), "{text}");
    assert!(text.contains(&format!("context {who}")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_sibling_killed() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let b = c.connect(None).await;
    // a waits on b.
    let call = pending_call_between(&c, a.id, b.id);
    wait_sleeping(&c, b.id).await;
    let t0 = Instant::now();
    kill(b.pid);
    assert_reported_disconnect(call, t0, b.id).await;
    // Later calls from a to b get "no route" (answered by the controller).
    let r: Result<(), String> = c.call(a.id, "call_other", &(b.id, 0u64)).await;
    let text = r.unwrap_err();
    assert!(text.contains(&format!("no route to {}", b.id)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_sibling_killed() {
    let c = Controller::new();
    let a = c.connect(None).await;
    let a1 = c.connect(Some(a.id)).await;
    let b = c.connect(None).await;
    let b1 = c.connect(Some(b.id)).await;
    // a1 waits on its cousin b1: a1 -> a -> controller -> b -> b1.
    let call = pending_call_between(&c, a1.id, b1.id);
    wait_sleeping(&c, b1.id).await;
    let t0 = Instant::now();
    kill(b1.pid);
    assert_reported_disconnect(call, t0, b1.id).await;
    let r: Result<(), String> = c.call(a1.id, "call_other", &(b1.id, 0u64)).await;
    let text = r.unwrap_err();
    assert!(text.contains(&format!("no route to {}", b1.id)), "{text}");
    // Everyone else is still reachable, also from a1.
    let r: Result<(), String> = c.call(a1.id, "call_other", &(b.id, 0u64)).await;
    assert_eq!(r, Ok(()));
}
