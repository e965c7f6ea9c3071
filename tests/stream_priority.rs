//! Control frames overtake bulk data: a call to a context whose stream is
//! saturated with a large raw transfer is answered while the transfer is
//! still running (the writer puts control frames ahead of queued bulk
//! frames; see also the unit tests at the bottom of src/stream.rs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Controller, PROMPTLY};
use ferrogen::channel::{Receiver, Sender};
use ferrogen::connect::ContextInfo;
use ferrogen::ping::{PING_SERVICE, SinkArgs};
use ferrogen::stream::BULK_CAP;
use ferrogen::wire::{Enc, Frame, HEADER_LEN, control};

const CHUNK: usize = 128 * 1024;
/// Large enough that the transfer takes far longer than a few calls.
const TOTAL: u64 = 1024 * 1024 * 1024;

async fn open_sink(c: &Controller, ctx: u32, total: u64) -> (Receiver, Sender) {
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

/// True once the sink has reported (its report is routed before any reply
/// the child sends after it, so this is exact right after a call returns).
async fn sink_done(done: &mut Receiver) -> bool {
    done.recv_timeout(Duration::ZERO).await.is_ok()
}

/// Pings the child and the grandchild in turn; each must be answered while
/// the transfer to the child is still incomplete.
async fn ping_during(
    c: &Controller,
    targets: [&ContextInfo; 2],
    done: &mut Receiver,
    pings: u8,
) -> Vec<Duration> {
    let mut rtts = Vec::new();
    for i in 0..pings {
        let target = targets[i as usize % 2].id;
        let t = Instant::now();
        let echo: Vec<u8> = c
            .router
            .call_service_timeout(target, PING_SERVICE, "ping", &vec![i], Some(PROMPTLY))
            .await
            .expect("ping during the transfer");
        rtts.push(t.elapsed());
        assert_eq!(echo, vec![i]);
        assert!(
            !sink_done(done).await,
            "ping {i} was answered only after the transfer ended (rtts {rtts:?})"
        );
    }
    rtts
}

async fn expect_total(done: &mut Receiver, total: u64) {
    let got = done
        .recv_timeout(Duration::from_secs(300))
        .await
        .expect("sink report");
    assert_eq!(control::decode_frame::<u64>(&got).unwrap(), total);
}

/// The whole transfer is queued at once (as forwarded traffic is, which
/// never waits for room — up to the stream's cap, `BULK_CAP`): without
/// priority a call would be written after all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_overtakes_a_fully_queued_transfer() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;
    // As much as one stream may queue.
    let frames = (BULK_CAP / (CHUNK + HEADER_LEN)) as u64;
    let total = frames * CHUNK as u64;
    let (mut done, sink) = open_sink(&c, child.id, total).await;
    let outbox = c
        .router
        .stream_towards(child.id)
        .and_then(|s| c.router.outbox(s))
        .expect("stream to the child");

    // One shared buffer: queuing 1 GiB costs no memory.
    let chunk = Bytes::from(vec![0xabu8; CHUNK]);
    for _ in 0..frames {
        c.router.send(Frame::new(
            sink.context,
            sink.handle,
            Enc::Bin,
            chunk.clone(),
        ));
    }
    assert!(!outbox.is_closed(), "{:?}", outbox.overflow());
    assert!(outbox.bulk_bytes() as u64 > total / 2);

    // Two pings: the capped queue drains in about 0.1 s on loopback.
    let rtts = ping_during(&c, [&child, &grandchild], &mut done, 2).await;
    let left = outbox.bulk_bytes();
    eprintln!("ping RTTs behind a queued transfer: {rtts:?}; {left} bytes still queued");
    assert!(
        left > 0,
        "the queue had drained before the pings were answered"
    );
    expect_total(&mut done, total).await;
}

/// A local producer paced by `send_bulk` keeps the stream saturated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_during_a_paced_bulk_transfer() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;
    let (mut done, sink) = open_sink(&c, child.id, TOTAL).await;

    let sent = Arc::new(AtomicU64::new(0));
    let bulk = {
        let r = c.router.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![0xabu8; CHUNK]);
            for _ in 0..TOTAL / CHUNK as u64 {
                r.send_bulk(Frame::new(
                    sink.context,
                    sink.handle,
                    Enc::Bin,
                    chunk.clone(),
                ))
                .await;
                sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        })
    };
    // Wait until the writer has more queued than it can write at once.
    let t0 = Instant::now();
    while sent.load(Ordering::Relaxed) < 16 * CHUNK as u64 {
        assert!(t0.elapsed() < PROMPTLY, "the transfer does not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let rtts = ping_during(&c, [&child, &grandchild], &mut done, 6).await;
    eprintln!(
        "ping RTTs during a paced transfer: {rtts:?} (sent {} of {TOTAL} bytes by then)",
        sent.load(Ordering::Relaxed)
    );
    bulk.await.expect("bulk task");
    expect_total(&mut done, TOTAL).await;
}
