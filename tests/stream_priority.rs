//! Control frames overtake bulk data: a call to a context whose stream is
//! saturated with a large raw transfer is answered while the transfer is
//! still running (the writer puts control frames ahead of queued bulk
//! frames; see also the unit tests at the bottom of src/stream.rs).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Controller, PROMPTLY};
use ferrogen::channel::Sender;
use ferrogen::ping::{PING_SERVICE, SinkArgs};
use ferrogen::wire::{Enc, Frame, control};

const CHUNK: usize = 128 * 1024;
const TOTAL: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_during_a_bulk_transfer() {
    let c = Controller::new();
    let child = c.connect(None).await;
    let grandchild = c.connect(Some(child.id)).await;

    let mut done = c.router.receiver();
    let sink: Sender = c
        .router
        .call_service(
            child.id,
            PING_SERVICE,
            "sink",
            &SinkArgs {
                total: TOTAL,
                done: done.to_sender(),
            },
        )
        .await
        .expect("sink");

    let sent = Arc::new(AtomicU64::new(0));
    let bulk = {
        let r = c.router.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![0xabu8; CHUNK]);
            for _ in 0..TOTAL / CHUNK as u64 {
                r.send_bulk(Frame::new(sink.context, sink.handle, Enc::Bin, chunk.clone()))
                    .await;
                sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        })
    };
    let finished = Arc::new(AtomicBool::new(false));
    let report = {
        let finished = finished.clone();
        tokio::spawn(async move {
            let r = done.recv_timeout(Duration::from_secs(600)).await;
            finished.store(true, Ordering::SeqCst);
            r
        })
    };

    // Wait until the stream is saturated: the writer has more queued than
    // it can write at once.
    let t0 = Instant::now();
    while sent.load(Ordering::Relaxed) < 16 * CHUNK as u64 {
        assert!(t0.elapsed() < PROMPTLY, "the transfer does not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!finished.load(Ordering::SeqCst));

    let mut rtts = Vec::new();
    for i in 0..10 {
        let target = if i % 2 == 0 { child.id } else { grandchild.id };
        let t = Instant::now();
        let echo: Vec<u8> = c
            .router
            .call_service_timeout(target, PING_SERVICE, "ping", &vec![i as u8], Some(PROMPTLY))
            .await
            .expect("ping during the transfer");
        rtts.push(t.elapsed());
        assert_eq!(echo, vec![i as u8]);
        assert!(
            !finished.load(Ordering::SeqCst),
            "ping {i} was answered only after the {TOTAL}-byte transfer ended \
             (sent {} bytes; rtts so far {rtts:?})",
            sent.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "ping RTTs during the transfer: {rtts:?} (sent {} of {TOTAL} bytes by then)",
        sent.load(Ordering::Relaxed)
    );

    bulk.await.expect("bulk task");
    let got = report
        .await
        .expect("report task")
        .expect("sink report");
    assert_eq!(control::decode_frame::<u64>(&got).unwrap(), TOTAL);
}
