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
use ferrogen::wire::{ContextId, Enc, Frame, handles};

/// Ids for fake children, far away from anything the controller allocates.
const FAKE_A: ContextId = 900_001;
const FAKE_B: ContextId = 900_002;
const FAKE_A_CHILD: ContextId = 900_011;

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
        CallError::Dead(s) => s,
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

    // The fake child announces a child of its own: it may then speak for it.
    let mut add = Frame::new(
        0,
        handles::ADD_ROUTE,
        Enc::Control,
        control::encode(&AddRoute {
            id: FAKE_A_CHILD,
            name: "fake.child".into(),
        }),
    );
    add.src_id = FAKE_A;
    add.auth_id = FAKE_A;
    a.send(&add).await;

    a.send(&tagged(0, 0, FAKE_A, h, "src-controller")).await;
    a.send(&tagged(0, FAKE_B, FAKE_A, h, "src-sibling")).await;
    a.send(&tagged(0, FAKE_A_CHILD, FAKE_A, h, "src-descendant"))
        .await;
    a.send(&tagged(0, FAKE_A_CHILD, FAKE_A_CHILD, h, "descendant"))
        .await;

    let first = rx.recv_timeout(PROMPTLY).await.expect("frame");
    let second = rx.recv_timeout(PROMPTLY).await.expect("frame");
    assert_eq!(tag_of(&first), "src-descendant");
    assert_eq!(first.src_id, FAKE_A_CHILD);
    assert_eq!(tag_of(&second), "descendant");
    assert_eq!(c.router.rejected_frames(), 2);
    assert!(c.router.has_route(FAKE_A_CHILD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_from_the_parent_for_an_unknown_id_gets_no_route_from_the_child() {
    let c = Controller::new();
    let child = c.connect(None).await;
    // The child claims a route to 1234, which does not exist: the
    // controller now forwards frames for 1234 to the child, and the child,
    // having no route and having got them from its parent, must answer
    // instead of bouncing them back up.
    c.call::<_, ()>(child.id, "announce_route", &(1234u32, "ghost".to_string()))
        .await;
    assert!(c.router.has_route(1234));

    let want = format!("no route to 1234, my id is {}", child.id);
    let err = c
        .router
        .call_service::<_, u32>(1234, TEST, "anyone", &1u32)
        .await
        .unwrap_err();
    assert!(dead_reason(err.clone()).contains(&want), "{err}");

    // The dead reply comes from the child (src_id), to the caller's reply_to.
    let mut fake = FakeChild::attach(&c.router, FAKE_A);
    fake.send(&forged(1234, FAKE_A, FAKE_A, handles::CALL_SERVICE, 4100))
        .await;
    let dead = fake.recv(PROMPTLY).await.expect("a dead reply");
    assert!(dead.is_dead());
    assert_eq!(dead.src_id, child.id);
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
        ChannelError::Dead(too_large.clone())
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
