//! Channels (after Mitogen's receiver_test): dynamic handles, the explicit
//! end of a channel, local close, unregistering on drop, and a `Sender`
//! travelling inside a message to another process.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Controller, PROMPTLY};
use ferrogen::call::CallError;
use ferrogen::channel::{ChannelError, Sender};
use ferrogen::ping::{PING_SERVICE, SinkArgs};
use ferrogen::router::Policy;
use ferrogen::wire::{DeadReason, Enc, control, handles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_get_distinct_dynamic_handles() {
    let c = Controller::new();
    let a = c.router.receiver();
    let b = c.router.receiver();
    assert!(a.handle() >= handles::FIRST_DYNAMIC, "{}", a.handle());
    assert!(b.handle() >= handles::FIRST_DYNAMIC, "{}", b.handle());
    assert_ne!(a.handle(), b.handle());
    let s = a.to_sender();
    assert_eq!((s.context, s.handle), (c.router.id(), a.handle()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_close_wakes_a_waiting_receiver() {
    let c = Controller::new();
    let mut rx = c.router.receiver();
    let sender = rx.to_sender();
    let waiter = tokio::spawn(async move { rx.recv_timeout(PROMPTLY).await });
    // Let the waiter block first (the outcome is the same if it has not).
    tokio::time::sleep(Duration::from_millis(50)).await;
    sender.close(&c.router);
    let got = waiter.await.expect("waiter task");
    assert_eq!(got.unwrap_err(), ChannelError::Dead(DeadReason::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_close_gives_closed_and_unregisters() {
    let c = Controller::new();
    let before = c.router.handler_count();
    let mut rx = c.router.receiver();
    let h = rx.handle();
    assert_eq!(c.router.handler_count(), before + 1);
    rx.close();
    assert_eq!(rx.recv().await.unwrap_err(), ChannelError::Closed);
    assert_eq!(c.router.handler_count(), before);
    // The remote side is not told; its next message is refused.
    let err = c
        .router
        .request(0, h, Enc::Control, Bytes::new(), Some(PROMPTLY))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("invalid handle {h}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_receiver_unregisters_its_handle() {
    let c = Controller::new();
    let before = c.router.handler_count();
    let rx = c.router.receiver();
    let h = rx.handle();
    drop(rx);
    assert_eq!(c.router.handler_count(), before);
    let err = c
        .router
        .request(0, h, Enc::Control, Bytes::new(), Some(PROMPTLY))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Dead { reason: DeadReason::InvalidHandle { handle, context: 0, .. }, .. } if *handle == h),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_handles_cannot_be_registered_twice() {
    let c = Controller::new();
    let h = 5000;
    let rx = c
        .router
        .add_handler(Some(h), Policy::Any, None, true)
        .expect("first registration");
    assert!(
        c.router
            .add_handler(Some(h), Policy::Any, None, true)
            .is_err()
    );
    drop(rx);
    assert!(
        c.router
            .add_handler(Some(h), Policy::Any, None, true)
            .is_ok()
    );
}

async fn open_sink(c: &Controller, ctx: u32, total: u64) -> (ferrogen::channel::Receiver, Sender) {
    let done = c.router.receiver();
    let sink: Sender = c
        .router
        .call_service(
            ctx,
            PING_SERVICE,
            "sink",
            &SinkArgs {
                total,
                done: done.to_sender(),
            },
        )
        .await
        .expect("sink");
    (done, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_travels_inside_messages_between_processes() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;

    for ctx in [child.id, grandchild.id] {
        // The child returns a Sender for its receiver; the controller uses
        // it, and the child uses the Sender it was given to report back.
        let (mut done, sink) = open_sink(&c, ctx, 3000).await;
        assert_eq!(sink.context, ctx);
        assert!(sink.handle >= handles::FIRST_DYNAMIC);
        for _ in 0..3 {
            sink.send_bytes(&c.router, Bytes::from(vec![7u8; 1000]));
        }
        let got = done.recv_timeout(PROMPTLY).await.expect("sink report");
        assert_eq!(control::decode_frame::<u64>(&got).unwrap(), 3000);
        assert_eq!(got.src_id, ctx);

        // The sink dropped its receiver when done: its handle is invalid now,
        // and the dead reply comes from the child.
        let err = c
            .router
            .request(ctx, sink.handle, Enc::Control, Bytes::new(), Some(PROMPTLY))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("invalid handle {} in context {ctx}", sink.handle)),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_close_ends_a_remote_receiver_after_its_data() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;
    for ctx in [child.id, grandchild.id] {
        let (mut done, sink) = open_sink(&c, ctx, 1 << 40).await;
        // Raw data, queued as bulk, then the close (a control frame): the
        // close must not overtake the data of its own channel, on any hop.
        for _ in 0..32 {
            sink.send_bytes(&c.router, Bytes::from(vec![1u8; 64 * 1024]));
        }
        sink.close(&c.router);
        // The sink's loop ended on the close, short of its total, having
        // counted every byte sent before it.
        let got = done.recv_timeout(PROMPTLY).await.expect("sink report");
        assert_eq!(
            control::decode_frame::<u64>(&got).unwrap(),
            32 * 64 * 1024,
            "{ctx}"
        );
    }
}
