//! A context binary for the integration tests: the stock child plus a
//! `ferrogen.test` service whose methods exercise policies, failures and
//! slow replies. Not part of the product; tests point
//! `connect::local::set_child_program` at it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferrogen::call::{CallError, RemoteError};
use ferrogen::router::Router;
use ferrogen::service::{Policy, ServiceBuilder, Services};
use ferrogen::wire::{ContextId, Enc, Handle};

/// sleep_ms calls in progress.
static SLEEPING: AtomicU32 = AtomicU32::new(0);

/// How a call made by this context on behalf of a test ended badly: the
/// remote error if the callee answered with one, and the printed error.
type Outcome = (Option<RemoteError>, String);

fn outcome(e: CallError) -> Outcome {
    let text = e.to_string();
    match e {
        CallError::Remote { error, .. } => (Some(error), text),
        _ => (None, text),
    }
}

fn register(services: &Services, router: &Router) {
    let r = router.clone();
    let r_other = router.clone();
    let r_u32 = router.clone();
    let r_announce = router.clone();
    let r_allocated = router.clone();
    let r_dead = router.clone();
    let r_parents = router.clone();
    let r_raw = router.clone();
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
                SLEEPING.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                SLEEPING.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, RemoteError>(())
            })
            // How many sleep_ms calls are running here now (so a test can
            // tell that a call has arrived).
            .method("sleeping", Policy::Any, |_c, (): ()| async move {
                Ok::<_, RemoteError>(SLEEPING.load(Ordering::SeqCst))
            })
            .method("whoami", Policy::Any, move |c, (): ()| {
                let r = r.clone();
                async move { Ok::<_, RemoteError>((r.id(), c.src_id, c.auth_id)) }
            })
            // This context's ancestors, nearest first.
            .method("parent_ids", Policy::Any, move |_c, (): ()| {
                let r = r_parents.clone();
                async move { Ok::<_, RemoteError>(r.parent_ids().to_vec()) }
            })
            // `n` bytes of reply, to exceed a small max_message_size.
            .method("bytes", Policy::Any, |_c, n: u64| async move {
                Ok::<_, RemoteError>(vec![0x5au8; n as usize])
            })
            // Calls `ferrogen.test.sleep_ms(ms)` in `target` from this
            // context and reports how that ended.
            .method(
                "call_other",
                Policy::ParentsOnly,
                move |_c, (target, ms): (ContextId, u64)| {
                    let r = r_other.clone();
                    async move {
                        let res: Result<(), CallError> = r
                            .call_service(target, "ferrogen.test", "sleep_ms", &ms)
                            .await;
                        Ok::<_, RemoteError>(res.map_err(|e| e.to_string()))
                    }
                },
            )
            // Calls `ferrogen.test.<method>(x)` in `target` from this context.
            .method(
                "call_u32",
                Policy::ParentsOnly,
                move |_c, (target, method, x): (ContextId, String, u32)| {
                    let r = r_u32.clone();
                    async move {
                        let res: Result<u32, CallError> =
                            r.call_service(target, "ferrogen.test", &method, &x).await;
                        Ok::<_, RemoteError>(res.map_err(outcome))
                    }
                },
            )
            // Sends an empty control frame with a reply handle to
            // `(target, handle)` and returns whatever came back: Ok(payload
            // length) or the error text (a dead reply's reason).
            .method(
                "send_raw",
                Policy::ParentsOnly,
                move |_c, (target, handle): (ContextId, Handle)| {
                    let r = r_raw.clone();
                    async move {
                        let res = r
                            .request(
                                target,
                                handle,
                                Enc::Control,
                                Bytes::new(),
                                Some(Duration::from_secs(30)),
                            )
                            .await;
                        Ok::<_, RemoteError>(
                            res.map(|f| f.payload.len()).map_err(|e| e.to_string()),
                        )
                    }
                },
            )
            // Claims a route to `id` (which need not exist) towards the
            // parent, as if a child `id` had been started here.
            .method(
                "announce_route",
                Policy::ParentsOnly,
                move |_c, (id, name): (ContextId, String)| {
                    let r = r_announce.clone();
                    async move {
                        r.announce_route(id, &name);
                        Ok::<_, RemoteError>(())
                    }
                },
            )
            // Sends a dead frame (as this context) to `(target, handle)`.
            .method(
                "send_raw_dead",
                Policy::ParentsOnly,
                move |_c, (target, handle): (ContextId, Handle)| {
                    let r = r_dead.clone();
                    async move {
                        r.send(ferrogen::wire::Frame::dead(target, handle, "forged"));
                        Ok::<_, RemoteError>(Ok::<usize, String>(0))
                    }
                },
            )
            // Takes an id from this context's block (asking the parent for
            // one) and announces it without starting a context.
            .method(
                "announce_allocated",
                Policy::ParentsOnly,
                move |_c, name: String| {
                    let r = r_allocated.clone();
                    async move {
                        let id = r
                            .allocate_id()
                            .await
                            .map_err(|e| RemoteError::Failed(e.to_string()))?;
                        r.announce_route(id, &name);
                        Ok::<_, RemoteError>(id)
                    }
                },
            )
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
