//! Router behaviours (after Mitogen's router_test): the reverse-path check
//! on `auth_id`/`src_id`, dead replies for no route, invalid handles,
//! oversized messages and policy refusals — each from the context that
//! produced it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Controller, FakeChild, PROMPTLY, TEST};
use ferrogen::call::CallError;
use ferrogen::channel::{ChannelError, Sender};
use ferrogen::ping::{PING_SERVICE, SinkArgs};
use ferrogen::router::{Policy, RouterConfig};
use ferrogen::wire::control::{self, AddRoute};
use ferrogen::wire::{ContextId, DeadReason, Enc, Frame, handles};

/// Ids for fake children, far away from anything the controller allocates.
const FAKE_A: ContextId = 900_001;
const FAKE_B: ContextId = 900_002;

/// A control frame with every header field given explicitly.
fn forged(dst: ContextId, src: ContextId, auth: ContextId, handle: u32, reply_to: u32) -> Frame {
    let mut f = Frame::new(dst, handle, Enc::Control, control::encode(&"payload"));
    f.src_id = src;
    f.auth_id = auth;
    f.reply_to = reply_to;
    f
}

fn tagged(dst: ContextId, src: ContextId, auth: ContextId, handle: u32, tag: &str) -> Frame {
    let mut f = Frame::new(dst, handle, Enc::Control, control::encode(tag));
    f.src_id = src;
    f.auth_id = auth;
    f
}

fn tag_of(f: &Frame) -> String {
    control::decode_frame(f).expect("a tagged frame")
}

fn dead_reason(e: CallError) -> String {
    match e {
        CallError::Dead { reason, .. } => reason.to_string(),
        other => panic!("expected a dead-message error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_id_is_dropped_and_counted() {
    let c = Controller::new();
    let mut a = FakeChild::attach(&c.router, FAKE_A);
    let _b = FakeChild::attach(&c.router, FAKE_B);
    let mut rx = c.router.receiver();
    let h = rx.handle();

    // Claims the controller's authority, then a sibling's; both carry a
    // reply_to that must not be answered.
    a.send(&{
        let mut f = tagged(0, FAKE_A, 0, h, "as-controller");
        f.reply_to = 4000;
        f
    })
    .await;
    a.send(&{
        let mut f = tagged(0, FAKE_A, FAKE_B, h, "as-sibling");
        f.reply_to = 4001;
        f
    })
    .await;
    // The honest frame behind them is delivered; frames are routed in
    // order, so the forged ones have been judged by the time it arrives.
    a.send(&tagged(0, FAKE_A, FAKE_A, h, "honest")).await;

    let got = rx.recv_timeout(PROMPTLY).await.expect("honest frame");
    assert_eq!(tag_of(&got), "honest");
    assert_eq!(got.auth_id, FAKE_A);
    assert_eq!(c.router.rejected_frames(), 2);
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(200)).await,
        Err(ChannelError::Timeout(_))
    ));
    // Dropped means dropped: no dead reply either.
    assert!(a.recv(Duration::from_millis(200)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_src_id_is_dropped_and_counted() {
    let c = Controller::new();
    let mut a = FakeChild::attach(&c.router, FAKE_A);
    let _b = FakeChild::attach(&c.router, FAKE_B);
    let mut rx = c.router.receiver();
    let h = rx.handle();

    // The fake child is given ids and announces a child of its own: it may
    // then speak for it.
    let fake_a_child = a.allocate_block().await.start;
    let mut add = Frame::new(
        0,
        handles::ADD_ROUTE,
        Enc::Control,
        control::encode(&AddRoute {
            id: fake_a_child,
            name: "fake.child".into(),
        }),
    );
    add.src_id = FAKE_A;
    add.auth_id = FAKE_A;
    a.send(&add).await;

    a.send(&tagged(0, 0, FAKE_A, h, "src-controller")).await;
    a.send(&tagged(0, FAKE_B, FAKE_A, h, "src-sibling")).await;
    a.send(&tagged(0, fake_a_child, FAKE_A, h, "src-descendant"))
        .await;
    a.send(&tagged(0, fake_a_child, fake_a_child, h, "descendant"))
        .await;

    let first = rx.recv_timeout(PROMPTLY).await.expect("frame");
    let second = rx.recv_timeout(PROMPTLY).await.expect("frame");
    assert_eq!(tag_of(&first), "src-descendant");
    assert_eq!(first.src_id, fake_a_child);
    assert_eq!(tag_of(&second), "descendant");
    assert_eq!(c.router.rejected_frames(), 2);
    assert!(c.router.has_route(fake_a_child));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_from_the_parent_for_an_unknown_id_gets_no_route_from_the_child() {
    let c = Controller::new();
    let child = c.connect(None).await;
    // The child is given a block of ids and announces one of them without
    // starting a context: the controller now forwards frames for that id to
    // the child, and the child, having no route and having got them from
    // its parent, must answer instead of bouncing them back up.
    let ghost: ContextId = c
        .call(child.id, "announce_allocated", &"ghost".to_string())
        .await;
    assert!(c.router.has_route(ghost));

    let want = format!("no route to {ghost}, my id is {}", child.id);
    let err = c
        .router
        .call_service::<_, u32>(ghost, TEST, "anyone", &1u32)
        .await
        .unwrap_err();
    assert!(dead_reason(err.clone()).contains(&want), "{err}");

    // The dead reply is the child's, on behalf of the ghost: src_id is the
    // context the call was for (so the caller's respondent check accepts
    // it), auth_id the router that answered.
    let mut fake = FakeChild::attach(&c.router, FAKE_A);
    fake.send(&forged(ghost, FAKE_A, FAKE_A, handles::CALL_SERVICE, 4100))
        .await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert!(dead.is_dead());
    assert_eq!((dead.src_id, dead.auth_id), (ghost, child.id));
    assert_eq!((dead.dst_id, dead.handle), (FAKE_A, 4100));
    assert_eq!(dead.dead_reason(), want);

    // And the controller answers for ids it knows nothing about.
    let err = c
        .router
        .call_service::<_, u32>(4321, TEST, "anyone", &1u32)
        .await
        .unwrap_err();
    assert!(
        dead_reason(err.clone()).contains("no route to 4321, my id is 0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_handle_dead_reply_names_the_handle_and_comes_from_the_target() {
    let c = Controller::new();
    let child = c.connect(None).await;

    let err = c
        .router
        .request(child.id, 4242, Enc::Control, Bytes::new(), Some(PROMPTLY))
        .await
        .unwrap_err();
    let want = format!(
        "invalid handle 4242 in context {} ({})",
        child.id, child.name
    );
    assert!(dead_reason(err.clone()).contains(&want), "{err}");

    let mut fake = FakeChild::attach(&c.router, FAKE_A);
    fake.send(&forged(child.id, FAKE_A, FAKE_A, 4242, 4101))
        .await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert!(dead.is_dead());
    assert_eq!(dead.src_id, child.id);
    assert_eq!(dead.handle, 4101);
    assert_eq!(dead.dead_reason(), want);

    fake.send(&forged(0, FAKE_A, FAKE_A, 4243, 4102)).await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert_eq!(dead.src_id, 0);
    assert_eq!(
        dead.dead_reason(),
        "invalid handle 4243 in context 0 (controller)"
    );

    // A dead message to an invalid handle is dropped, not answered.
    let mut f = Frame::dead(0, 4244, "nobody listens");
    f.src_id = FAKE_A;
    f.auth_id = FAKE_A;
    fake.send(&f).await;
    assert!(fake.recv(Duration::from_millis(200)).await.is_none());
}

const SMALL: usize = 64 * 1024;

fn small_controller() -> Controller {
    Controller::with_config(RouterConfig {
        max_message_size: SMALL,
        ..RouterConfig::controller()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_is_answered_everywhere_and_inherited() {
    let c = small_controller();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;
    let too_large = format!("message too large (max {SMALL} bytes)");

    // Oversized call arguments: refused by the controller's own router.
    let err = c
        .router
        .call_service::<_, Vec<u8>>(child.id, PING_SERVICE, "ping", &vec![1u8; SMALL + 10])
        .await
        .unwrap_err();
    assert!(dead_reason(err.clone()).contains(&too_large), "{err}");

    // Oversized replies: the child and the grandchild inherited the limit
    // and refuse their own replies; the waiting caller is told.
    for ctx in [child.id, grandchild.id] {
        let err = c
            .router
            .call_service::<_, Vec<u8>>(ctx, TEST, "bytes", &(SMALL as u64 + 10))
            .await
            .unwrap_err();
        assert!(
            dead_reason(err.clone()).contains(&too_large),
            "{ctx}: {err}"
        );
    }
    // Had the grandchild not enforced the limit itself, its reply would
    // have broken the child's stream to it (the child's decoder refuses
    // oversized frames); it is still reachable.
    let (id, _, _): (u32, u32, u32) = c.call(grandchild.id, "whoami", &()).await;
    assert_eq!(id, grandchild.id);

    // Exactly the limit passes.
    let mut rx = c.router.receiver();
    rx.to_sender()
        .send_bytes(&c.router, Bytes::from(vec![0u8; SMALL]));
    let got = rx.recv_timeout(PROMPTLY).await.expect("frame at the limit");
    assert_eq!(got.payload.len(), SMALL);

    // Oversized data without a reply_to: the recipient gets the dead
    // message, locally ...
    rx.to_sender()
        .send_bytes(&c.router, Bytes::from(vec![0u8; SMALL + 1]));
    assert_eq!(
        rx.recv_timeout(PROMPTLY).await.unwrap_err(),
        ChannelError::Dead(DeadReason::TooLarge { max: SMALL })
    );
    // ... and in another context: the child's sink ends on it and reports
    // that nothing arrived.
    let mut done = c.router.receiver();
    let sink: Sender = c
        .router
        .call_service(
            child.id,
            PING_SERVICE,
            "sink",
            &SinkArgs {
                total: 1,
                done: done.to_sender(),
            },
        )
        .await
        .expect("sink");
    sink.send_bytes(&c.router, Bytes::from(vec![0u8; SMALL + 1]));
    let got = done.recv_timeout(PROMPTLY).await.expect("sink report");
    assert_eq!(control::decode_frame::<u64>(&got).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_only_handle_refuses_others_with_a_dead_reply() {
    let c = Controller::new();
    let mut rx = c
        .router
        .add_handler(None, Policy::ParentsOnly, None, true)
        .expect("handler");
    let h = rx.handle();

    // A child (by auth_id) is not a parent of the controller.
    let mut fake = FakeChild::attach(&c.router, FAKE_A);
    fake.send(&forged(0, FAKE_A, FAKE_A, h, 4200)).await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert!(dead.is_dead());
    assert_eq!(dead.src_id, 0);
    assert_eq!(
        dead.dead_reason(),
        format!("refused by policy: context {FAKE_A} may not send to handle {h} of controller")
    );
    // The context itself may.
    c.router
        .send(Frame::new(0, h, Enc::Control, control::encode(&"self")));
    let got = rx.recv_timeout(PROMPTLY).await.expect("own frame");
    assert_eq!(tag_of(&got), "self");

    // Between real contexts: a sibling may not send to another's SHUTDOWN
    // handle (parents only); the target stays up.
    let a = c.connect(None).await;
    let b = c.connect(None).await;
    let r: Result<usize, String> = c.call(a.id, "send_raw", &(b.id, handles::SHUTDOWN)).await;
    let err = r.unwrap_err();
    assert!(
        err.contains(&format!(
            "refused by policy: context {} may not send to handle {} of {}",
            a.id,
            handles::SHUTDOWN,
            b.name
        )),
        "{err}"
    );
    let (id, _, _): (u32, u32, u32) = c.call(b.id, "whoami", &()).await;
    assert_eq!(id, b.id);
    assert!(common::alive(b.pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_from_an_unexpected_context_is_refused() {
    let c = Controller::new();
    // A one-shot receiver waiting for a reply from context 77 ...
    let mut rx = c
        .router
        .add_handler(None, Policy::Any, Some(77), false)
        .expect("handler");
    let h = rx.handle();
    // ... is not satisfied by another context.
    let mut fake = FakeChild::attach(&c.router, FAKE_A);
    fake.send(&forged(0, FAKE_A, FAKE_A, h, 4300)).await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert_eq!(
        dead.dead_reason(),
        format!("reply from unexpected context {FAKE_A}")
    );
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(200)).await,
        Err(ChannelError::Timeout(_))
    ));
}

// ------------------------------------------------ trust rules (issue 9)

/// A dead frame, forged by `from` with every header field given.
fn forged_dead(dst: ContextId, handle: u32, from: ContextId) -> Frame {
    let mut f = Frame::dead(dst, handle, "forged");
    f.src_id = from;
    f.auth_id = from;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_dead_message_ends_neither_the_service_dispatcher_nor_a_call() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let mut evil = FakeChild::attach(&c.router, FAKE_A);

    // A call to the child is waiting for its reply on some dynamic handle.
    let router = c.router.clone();
    let id = child.id;
    let call = tokio::spawn(async move {
        router
            .call_service::<_, ()>(id, TEST, "sleep_ms", &500u64)
            .await
    });
    wait_for_sleepers(&c, child.id, 1).await;

    // The forger sends dead frames to the controller's service handle and
    // to every plausible dynamic handle.
    evil.send(&forged_dead(0, handles::CALL_SERVICE, FAKE_A))
        .await;
    for h in handles::FIRST_DYNAMIC..handles::FIRST_DYNAMIC + 200 {
        evil.send(&forged_dead(0, h, FAKE_A)).await;
    }
    // The call still completes with the child's real answer.
    call.await
        .expect("join")
        .expect("the call survived the forged dead frames");
    // The dispatcher still serves calls (a fresh context pings the controller).
    let sibling = c.connect(None).await;
    let got: Result<u32, (Option<ferrogen::call::RemoteError>, String)> = c
        .call(
            sibling.id,
            "call_u32",
            &(child.id, "anyone".to_string(), 41u32),
        )
        .await;
    assert_eq!(got.expect("a call through the controller"), 42);
    assert!(
        c.router.rejected_frames() >= 1,
        "the forgeries were counted"
    );
    // And nothing was answered to the forger for its dead frames.
    assert!(evil.recv(Duration::from_millis(200)).await.is_none());
}

async fn wait_for_sleepers(c: &Controller, id: ContextId, n: u32) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let now: u32 = c.call(id, "sleeping", &()).await;
        if now >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_dead_message_does_not_shut_a_context_down() {
    let c = Controller::new();
    let victim = c.connect(None).await;
    let evil = c.connect(None).await;
    // The evil context forges dead frames to the victim's SHUTDOWN handle,
    // from itself (the only identity its stream lets it claim).
    for _ in 0..3 {
        let res: Result<usize, String> = c
            .call(evil.id, "send_raw_dead", &(victim.id, handles::SHUTDOWN))
            .await;
        res.expect("sent");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: u32 = c.call(victim.id, "anyone", &1u32).await;
    assert_eq!(got, 2, "the victim is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_claim_an_id_it_does_not_own() {
    let c = Controller::new();
    let honest = c.connect(None).await;
    let mut evil = FakeChild::attach(&c.router, FAKE_A);
    // The honest child is given a block; the evil one announces an id of it
    // (and the controller's next own id) before the honest one does.
    let res: ContextId = c
        .call(honest.id, "announce_allocated", &"real".to_string())
        .await;
    let next_block_id = res + 1;
    for id in [next_block_id, honest.id, res + 5000, 0] {
        let mut add = Frame::new(
            0,
            handles::ADD_ROUTE,
            Enc::Control,
            control::encode(&AddRoute {
                id,
                name: "hijack".into(),
            }),
        );
        add.src_id = FAKE_A;
        add.auth_id = FAKE_A;
        evil.send(&add).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !c.router.has_route(next_block_id),
        "an id of the honest child's block was claimed by another stream"
    );
    assert_eq!(
        c.router.stream_towards(res),
        c.router.stream_towards(honest.id),
        "the honest announcement stands"
    );
    assert_ne!(
        c.router.stream_towards(honest.id),
        Some(evil.stream),
        "the honest child itself was not taken over"
    );
    assert!(!c.router.has_route(res + 5000));
    assert_eq!(c.router.rejected_frames(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_removes_only_routes_that_still_point_at_it() {
    let c = Controller::new();
    let a = FakeChild::attach(&c.router, FAKE_A);
    // FAKE_B first reached through a stream that then goes away after the
    // id was given to a new stream.
    let old = FakeChild::attach(&c.router, FAKE_B);
    let new = FakeChild::attach(&c.router, FAKE_B);
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.router.stream_towards(FAKE_B), Some(new.stream));
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_blocks_per_stream_are_capped() {
    let c = Controller::new();
    let mut evil = FakeChild::attach(&c.router, FAKE_A);
    let honest = c.connect(None).await;
    let mut got = 0usize;
    let mut refused = None;
    for i in 0..(ferrogen::router::MAX_BLOCKS_PER_LINK + 5) {
        let mut ask = Frame::new(0, handles::ALLOCATE_ID, Enc::Control, Bytes::new());
        ask.src_id = FAKE_A;
        ask.auth_id = FAKE_A;
        ask.reply_to = 5000;
        evil.send(&ask).await;
        let f = evil.recv(PROMPTLY).await.expect("an answer");
        if f.is_dead() {
            refused = Some((i, f.dead_reason()));
            break;
        }
        got += 1;
    }
    assert_eq!(got, ferrogen::router::MAX_BLOCKS_PER_LINK);
    let (_, why) = refused.expect("refused past the cap");
    assert!(why.contains("id allocation limit"), "{why}");
    // Others still get ids.
    let id: ContextId = c
        .call(honest.id, "announce_allocated", &"after".to_string())
        .await;
    assert!(id > 0);
}
