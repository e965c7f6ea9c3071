//! Mitogen's `mitogen_protocol_test`, in-process: junk on a stream closes
//! that stream — once — and nothing else.
//!
//! A real router (`Router` + `stream::start`) is fed bytes over an in-memory
//! pipe. A header with an unknown `enc`, or one declaring a length over the
//! maximum message size (up to 4 GiB − 1), must make the stream be lost
//! exactly once: the error is logged once, the route disappears, a waiter on
//! the context behind it gets one dead message, the parent hears one
//! DEL_ROUTE per lost context, the router closes its end — and it does so
//! without allocating room for the declared payload. The router must go on
//! working for streams attached afterwards.
//!
//! Every test runs on a current-thread runtime, so all of the router's tasks
//! run on the test's thread: that makes the captured log and the per-thread
//! allocation high-water mark below belong to that test alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::Decoder;

use ferrogen::channel::ChannelError;
use ferrogen::router::{Policy, Router, RouterConfig};
use ferrogen::wire::control::{self, AddRoute, DelRoute, IdBlock};
use ferrogen::wire::{
    ContextId, DEFAULT_MAX_MESSAGE_SIZE, DeadReason, Enc, Frame, FrameCodec, HEADER_LEN, Header,
    codec, handles,
};

// ------------------------------------------------ allocation high-water mark

/// The system allocator, recording the largest single allocation request
/// made on each thread.
struct Tracking;

thread_local! {
    static LARGEST_ALLOC: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|m| {
        if size > m.get() {
            m.set(size);
        }
    });
}

// SAFETY: every method forwards to `System` unchanged; `note` only touches a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn reset_largest_alloc() {
    LARGEST_ALLOC.with(|m| m.set(0));
}

fn largest_alloc() -> usize {
    LARGEST_ALLOC.with(Cell::get)
}

// ------------------------------------------------------------- log capture

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Log lines containing `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// Captures this thread's log (debug and up) until the guard is dropped.
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

// ------------------------------------------------------------------ helpers

const STEP: Duration = Duration::from_secs(10);

/// Attaches a stream to `router` and returns the far end of its pipe.
fn attach(router: &Router, remote_id: ContextId, is_parent: bool, name: &str) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(theirs);
    ferrogen::stream::start(
        router,
        name.to_string(),
        remote_id,
        is_parent,
        r,
        w,
        BytesMut::new(),
    );
    ours
}

/// The next frame the router writes to `end`; `None` at EOF.
async fn next_frame(end: &mut DuplexStream, buf: &mut BytesMut) -> Option<Frame> {
    let mut codec = FrameCodec::new(DEFAULT_MAX_MESSAGE_SIZE);
    loop {
        if let Some(f) = codec.decode(buf).expect("the router writes valid frames") {
            return Some(f);
        }
        let n = tokio::time::timeout(STEP, end.read_buf(buf))
            .await
            .expect("timed out waiting for the router")
            .expect("read");
        if n == 0 {
            assert!(buf.is_empty(), "EOF inside a frame");
            return None;
        }
    }
}

/// Reads until EOF, failing if the router writes anything first.
async fn expect_eof(end: &mut DuplexStream) {
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(STEP, end.read(&mut b))
        .await
        .expect("the router did not close its end of the broken stream")
        .expect("read");
    assert_eq!(n, 0, "expected EOF, got {:?}", &b[..n]);
}

/// A frame from context `from` (stamped as that context would) to `(dst, handle)`.
fn frame_from(from: ContextId, dst: ContextId, handle: u32, payload: &'static [u8]) -> Vec<u8> {
    let mut f = Frame::new(dst, handle, Enc::Bin, Bytes::from_static(payload));
    f.src_id = from;
    f.auth_id = from;
    codec::encode_to_vec(&f)
}

/// Attaches a fresh child stream and checks traffic flows both ways.
async fn check_router_still_works(router: &Router, child: ContextId) {
    let mut good = attach(router, child, false, "good");
    let mut rx = router.receiver();
    good.write_all(&frame_from(child, 0, rx.handle(), b"still here"))
        .await
        .expect("write");
    let got = rx.recv_timeout(STEP).await.expect("delivered");
    assert_eq!(&got.payload[..], b"still here");
    assert_eq!((got.src_id, got.auth_id), (child, child));

    router.send(Frame::new(
        child,
        1000,
        Enc::Bin,
        Bytes::from_static(b"and back"),
    ));
    let mut buf = BytesMut::new();
    let f = next_frame(&mut good, &mut buf).await.expect("a frame");
    assert_eq!((f.dst_id, f.src_id, f.handle), (child, 0, 1000));
    assert_eq!(&f.payload[..], b"and back");
    assert!(router.has_route(child));
}

/// Writes `junk` on a fresh child stream of a controller and checks that the
/// stream is lost exactly once, for `expect` (a piece of the error text).
async fn junk_closes_stream_once(max_message_size: usize, junk: &[u8], expect: &str) {
    let (logs, _guard) = capture_logs();
    reset_largest_alloc();
    let router = Router::new(RouterConfig {
        max_message_size,
        ..RouterConfig::controller()
    });
    const BAD: ContextId = 1;
    let mut waiter = router
        .add_handler(None, Policy::Any, Some(BAD), false)
        .expect("handle");
    let mut bad = attach(&router, BAD, false, "bad");
    assert!(router.has_route(BAD));

    bad.write_all(junk).await.expect("write junk");

    // The waiter on the context behind the stream is woken, once, with why.
    match waiter.recv_timeout(STEP).await {
        Err(ChannelError::Dead(DeadReason::Disconnected {
            context,
            name,
            cause,
        })) => {
            assert_eq!((context, name.as_str()), (1, "bad"));
            assert!(cause.contains(expect), "{cause}");
        }
        other => panic!("expected a dead message, got {other:?}"),
    }
    // The router closed its end and forgot the route.
    expect_eof(&mut bad).await;
    assert!(!router.has_route(BAD));
    assert_eq!(router.stream_towards(BAD), None);
    // One-shot: the handle is gone, no second dead message can come.
    assert!(matches!(
        waiter.recv_timeout(Duration::from_millis(50)).await,
        Err(ChannelError::Closed)
    ));
    // Bytes after the junk are never looked at; writing more is an error or
    // goes nowhere.
    let _ = bad.write_all(&frame_from(BAD, 0, 1000, b"late")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(router.rejected_frames(), 0);

    // Logged once, lost once.
    let closing = logs.lines_with("closing stream");
    assert_eq!(closing.len(), 1, "{closing:#?}");
    assert!(closing[0].contains(expect), "{closing:#?}");
    let lost = logs.lines_with("to 1 (bad) lost:");
    assert_eq!(lost.len(), 1, "{lost:#?}");

    // Nothing near the declared size was ever allocated.
    let largest = largest_alloc();
    assert!(
        largest < 4 << 20,
        "largest single allocation was {largest} bytes"
    );

    // And the router carries on with the next stream.
    check_router_still_works(&router, 2).await;
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn junk_header_closes_the_stream_once_and_the_router_carries_on() {
    // Mitogen's test: 26 bytes of junk. "xx" is not an encoding.
    junk_closes_stream_once(
        DEFAULT_MAX_MESSAGE_SIZE,
        &[b'x'; HEADER_LEN],
        "unknown encoding 0x7878",
    )
    .await;
}

#[tokio::test]
async fn pickle_header_closes_the_stream_like_junk() {
    let h = Header {
        enc: 0x4d4a,
        dst_id: 0,
        src_id: 1,
        auth_id: 1,
        handle: 1000,
        reply_to: 0,
        len: 0,
    };
    junk_closes_stream_once(
        DEFAULT_MAX_MESSAGE_SIZE,
        &h.encode(),
        "unknown encoding 0x4d4a",
    )
    .await;
}

fn oversize_header(len: u32) -> [u8; HEADER_LEN] {
    Header {
        enc: Enc::Bin.to_u16(),
        dst_id: 0,
        src_id: 1,
        auth_id: 1,
        handle: 1000,
        reply_to: 0,
        len,
    }
    .encode()
}

#[tokio::test]
async fn declared_length_of_4_gib_closes_the_stream_without_allocating() {
    junk_closes_stream_once(
        DEFAULT_MAX_MESSAGE_SIZE,
        &oversize_header(u32::MAX),
        "frame of 4294967295 bytes exceeds the maximum message size of 134217728 bytes",
    )
    .await;
}

#[tokio::test]
async fn one_byte_over_a_small_limit_closes_the_stream() {
    // The 64 KiB limit of Mitogen's router_test, inherited by children.
    junk_closes_stream_once(
        64 * 1024,
        &oversize_header(64 * 1024 + 1),
        "frame of 65537 bytes exceeds the maximum message size of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_frame_of_exactly_the_limit_is_delivered() {
    // The boundary the previous test is one byte past.
    let router = Router::new(RouterConfig {
        max_message_size: 64 * 1024,
        ..RouterConfig::controller()
    });
    let mut rx = router.receiver();
    let mut child = attach(&router, 1, false, "child");
    let mut f = Frame::new(0, rx.handle(), Enc::Bin, Bytes::from(vec![7u8; 64 * 1024]));
    f.src_id = 1;
    f.auth_id = 1;
    child
        .write_all(&codec::encode_to_vec(&f))
        .await
        .expect("write");
    let got = rx.recv_timeout(STEP).await.expect("delivered");
    assert_eq!(got.payload.len(), 64 * 1024);
    assert!(router.has_route(1));
}

#[tokio::test]
async fn junk_below_a_context_is_one_del_route_per_lost_context_upwards() {
    let (logs, _guard) = capture_logs();
    // Context 5, child of the controller, with a child 6 that has a child 7.
    let router = Router::new(RouterConfig {
        id: 5,
        name: "middle".into(),
        parent_ids: vec![0],
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
    });
    let mut up = attach(&router, 0, true, "parent");
    let mut down = attach(&router, 6, false, "bad");
    let mut up_buf = BytesMut::new();
    let mut down_buf = BytesMut::new();

    // 6 may announce 7 only once 7 is its own: 6 asks 5 for ids, 5 asks
    // its parent (played here) and passes the block down.
    let mut ask = Frame::new(5, handles::ALLOCATE_ID, Enc::Control, Bytes::new());
    ask.src_id = 6;
    ask.auth_id = 6;
    ask.reply_to = 1000;
    down.write_all(&codec::encode_to_vec(&ask))
        .await
        .expect("write");
    let f = next_frame(&mut up, &mut up_buf)
        .await
        .expect("ALLOCATE_ID upwards");
    assert_eq!((f.dst_id, f.src_id, f.handle), (0, 5, handles::ALLOCATE_ID));
    let mut block = Frame::new(
        5,
        f.reply_to,
        Enc::Control,
        control::encode(&IdBlock {
            start: 7,
            end: 1007,
        }),
    );
    block.src_id = 0;
    block.auth_id = 0;
    up.write_all(&codec::encode_to_vec(&block))
        .await
        .expect("write");
    let f = next_frame(&mut down, &mut down_buf)
        .await
        .expect("the block, passed down");
    assert_eq!((f.dst_id, f.handle), (6, 1000));
    let got: IdBlock = control::decode_frame(&f).expect("IdBlock");
    assert_eq!((got.start, got.end), (7, 1007));

    let mut add = Frame::new(
        5,
        handles::ADD_ROUTE,
        Enc::Control,
        control::encode(&AddRoute {
            id: 7,
            name: "grandchild".into(),
        }),
    );
    add.src_id = 6;
    add.auth_id = 6;
    down.write_all(&codec::encode_to_vec(&add))
        .await
        .expect("write");
    // Context 5 passes the announcement up.
    let f = next_frame(&mut up, &mut up_buf).await.expect("ADD_ROUTE");
    assert_eq!((f.dst_id, f.src_id, f.handle), (0, 5, handles::ADD_ROUTE));
    let a: AddRoute = control::decode_frame(&f).expect("AddRoute");
    assert_eq!(a.id, 7);
    assert!(router.has_route(7));

    down.write_all(&[b'x'; HEADER_LEN]).await.expect("junk");

    let mut gone = Vec::new();
    for _ in 0..2 {
        let f = next_frame(&mut up, &mut up_buf).await.expect("DEL_ROUTE");
        assert_eq!(
            (f.dst_id, f.src_id, f.auth_id, f.handle),
            (0, 5, 5, handles::DEL_ROUTE)
        );
        let d: DelRoute = control::decode_frame(&f).expect("DelRoute");
        assert!(d.reason.contains("unknown encoding 0x7878"), "{}", d.reason);
        gone.push(d.id);
    }
    gone.sort_unstable();
    assert_eq!(gone, [6, 7], "one DEL_ROUTE per lost context");
    expect_eof(&mut down).await;
    assert!(!router.has_route(6) && !router.has_route(7));

    // Nothing more goes up: the loss was reported once. (The parent stream
    // itself stays open, so this is a quiet period, not EOF.)
    let extra = tokio::time::timeout(Duration::from_millis(200), up.read_buf(&mut up_buf)).await;
    assert!(extra.is_err(), "unexpected traffic: {extra:?} {up_buf:?}");
    assert_eq!(logs.lines_with("closing stream").len(), 1);
    assert_eq!(logs.lines_with("to 6 (bad) lost:").len(), 1);

    // The parent stream still works: a ping from the controller to an
    // unknown context gets an answer from context 5.
    let mut probe = Frame::new(7, 1234, Enc::Bin, Bytes::new());
    probe.reply_to = 1000;
    up.write_all(&codec::encode_to_vec(&probe))
        .await
        .expect("write");
    let f = next_frame(&mut up, &mut up_buf).await.expect("dead reply");
    assert!(f.is_dead());
    // Answered by 5 on behalf of 7 (src_id 7, auth_id 5): docs/protocol.md.
    assert_eq!((f.dst_id, f.src_id, f.auth_id, f.handle), (0, 7, 5, 1000));
    assert_eq!(f.dead_reason(), "no route to 7, my id is 5");
}
