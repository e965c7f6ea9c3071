//! The byte-exact test vectors of `docs/protocol.md`, checked against the code.
//!
//! The document is the single copy of the vectors: every fenced block whose
//! info string is `hex <name>` is parsed here (text after `#` on a line is a
//! comment, whitespace is ignored) and compared with what the real code
//! produces for the value this file defines under the same name. Each vector
//! must encode to exactly the documented bytes and the documented bytes must
//! decode to exactly that value (frame and typed payload); the document and
//! this file must name the same set of vectors. A second group of tests plays
//! the documented frames to real routers over in-memory pipes and checks that
//! they answer with the documented replies, byte for byte.
//!
//! After a deliberate protocol change, regenerate the blocks with
//!
//! ```sh
//! cargo test --test wire_vectors -- --ignored --nocapture print_doc_vectors
//! ```
//!
//! and paste them into `docs/protocol.md`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::Decoder;

use ferrogen::call::RemoteError;
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::Services;
use ferrogen::wire::control::{
    self, AddRoute, CallReply, DelRoute, Hello, IdBlock, PROTOCOL_VERSION, Ready, ServiceCall,
};
use ferrogen::wire::{
    DEFAULT_MAX_MESSAGE_SIZE, DecodeError, Enc, Frame, FrameCodec, HEADER_LEN, Header, codec,
    handles,
};

/// The document, read at compile time (a change to it rebuilds this test).
const DOC: &str = include_str!("../docs/protocol.md");

// ------------------------------------------------------------------ the doc

/// Every `hex <name>` block of the document, as bytes, by name.
fn doc_vectors() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```hex") else {
            continue;
        };
        let name = info.trim();
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "a ```hex block in docs/protocol.md needs exactly one name, got {info:?}"
        );
        let mut hex = String::new();
        loop {
            let l = lines
                .next()
                .unwrap_or_else(|| panic!("hex block {name} is not closed"));
            if l.trim_start().starts_with("```") {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            hex.extend(data.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes = parse_hex(&hex).unwrap_or_else(|e| panic!("hex block {name}: {e}"));
        let previous = out.insert(name.to_string(), bytes);
        assert!(previous.is_none(), "hex block {name} appears twice");
    }
    out
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("{:?}: {e}", &s[i..i + 2]))
        })
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The vector `name` from the document; fails the test if it is missing.
fn doc_bytes(name: &str) -> Vec<u8> {
    doc_vectors()
        .remove(name)
        .unwrap_or_else(|| panic!("docs/protocol.md has no ```hex {name} block"))
}

// -------------------------------------------------------------- the values

/// One documented frame: the value, an annotated breakdown of its payload
/// (used only to print the document's blocks) and a check that decodes the
/// payload as its documented type.
struct Vector {
    name: &'static str,
    frame: Frame,
    fields: Vec<(Vec<u8>, String)>,
    check: Box<dyn Fn(&Frame)>,
}

/// One documented byte string the decoder must refuse.
struct Rejected {
    name: &'static str,
    header: Header,
    check: fn(&DecodeError, &Header),
}

#[allow(clippy::too_many_arguments)]
fn frame(
    enc: Enc,
    dst_id: u32,
    src_id: u32,
    auth_id: u32,
    handle: u32,
    reply_to: u32,
    payload: impl Into<Bytes>,
) -> Frame {
    Frame {
        enc,
        dst_id,
        src_id,
        auth_id,
        handle,
        reply_to,
        payload: payload.into(),
    }
}

/// A payload field: its postcard encoding (by the real encoder) and a label.
fn field<T: Serialize + ?Sized>(value: &T, label: impl Into<String>) -> (Vec<u8>, String) {
    (control::encode(value).to_vec(), label.into())
}

fn str_field(name: &str, s: &str) -> (Vec<u8>, String) {
    field(s, format!("{name}: varint len {}, {s:?}", s.len()))
}

fn varint_field(name: &str, v: u64) -> (Vec<u8>, String) {
    field(&v, format!("{name}: varint {v}"))
}

/// A check that the frame is a control frame whose payload is exactly `value`.
fn typed<T>(value: T) -> Box<dyn Fn(&Frame)>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Box::new(move |f: &Frame| {
        let got: T = control::decode_frame(f).expect("payload decodes as its documented type");
        assert_eq!(got, value);
        assert_eq!(control::encode(&value), f.payload, "payload re-encodes");
    })
}

fn hello_value() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        context_id: 1,
        parent_ids: vec![0],
        name: "local.4711".into(),
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE as u64,
        log_filter: "warn".into(),
    }
}

fn ready_value() -> Ready {
    Ready {
        version: PROTOCOL_VERSION,
        pid: 4711,
        arch: "x86_64".into(),
    }
}

/// The reason the router gives for a frame to an unregistered handle.
const INVALID_HANDLE_REASON: &str = "invalid handle 1234 in context 1 (local.4711)";

fn vectors() -> Vec<Vector> {
    let mut v = Vec::new();

    // (a) A Bin frame: bulk data to a receiver.
    v.push(Vector {
        name: "bin-frame",
        frame: frame(Enc::Bin, 1, 0, 0, 1000, 0, &b"hello"[..]),
        fields: vec![(b"hello".to_vec(), "payload: raw bytes \"hello\"".into())],
        check: Box::new(|f| assert_eq!(&f.payload[..], b"hello")),
    });

    // (b) A call to a handle nobody owns, and the dead reply it earns.
    v.push(Vector {
        name: "invalid-handle-request",
        frame: frame(Enc::Bin, 1, 0, 0, 1234, 1000, Bytes::new()),
        fields: vec![],
        check: Box::new(|f| assert!(f.payload.is_empty())),
    });
    let mut dead = Frame::dead(0, 1000, INVALID_HANDLE_REASON);
    dead.src_id = 1;
    dead.auth_id = 1;
    v.push(Vector {
        name: "dead-message",
        frame: dead,
        fields: vec![(
            INVALID_HANDLE_REASON.as_bytes().to_vec(),
            format!("payload: UTF-8 reason {INVALID_HANDLE_REASON:?}"),
        )],
        check: Box::new(|f| {
            assert!(f.is_dead());
            assert_eq!(f.enc, Enc::Text);
            assert_eq!(f.dead_reason(), INVALID_HANDLE_REASON);
        }),
    });

    // (c) Route announcements.
    let add = AddRoute {
        id: 2,
        name: "local.4712".into(),
    };
    v.push(Vector {
        name: "add-route",
        frame: frame(
            Enc::Control,
            0,
            1,
            1,
            handles::ADD_ROUTE,
            0,
            control::encode(&add),
        ),
        fields: vec![
            varint_field("AddRoute.id", add.id.into()),
            str_field("AddRoute.name", &add.name),
        ],
        check: typed(add),
    });
    let del = DelRoute {
        id: 2,
        reason: "local.4712 closed the stream".into(),
    };
    v.push(Vector {
        name: "del-route",
        frame: frame(
            Enc::Control,
            0,
            1,
            1,
            handles::DEL_ROUTE,
            0,
            control::encode(&del),
        ),
        fields: vec![
            varint_field("DelRoute.id", del.id.into()),
            str_field("DelRoute.reason", &del.reason),
        ],
        check: typed(del),
    });

    // Id allocation.
    v.push(Vector {
        name: "allocate-id-request",
        frame: frame(
            Enc::Control,
            0,
            1,
            1,
            handles::ALLOCATE_ID,
            1000,
            Bytes::new(),
        ),
        fields: vec![],
        check: Box::new(|f| assert!(f.payload.is_empty())),
    });
    let block = IdBlock {
        start: 2,
        end: 1002,
    };
    v.push(Vector {
        name: "allocate-id-reply",
        frame: frame(Enc::Control, 1, 0, 0, 1000, 0, control::encode(&block)),
        fields: vec![
            varint_field("IdBlock.start", block.start.into()),
            varint_field("IdBlock.end", block.end.into()),
        ],
        check: typed(block),
    });

    // (d) CALL_SERVICE: ferrogen.ping.ping(Vec::<u8>::new()).
    let args = control::encode(&Vec::<u8>::new()).to_vec();
    let call = ServiceCall {
        service: "ferrogen.ping".into(),
        method: "ping".into(),
        args: args.clone(),
    };
    v.push(Vector {
        name: "call-service-ping",
        frame: frame(
            Enc::Control,
            1,
            0,
            0,
            handles::CALL_SERVICE,
            1000,
            control::encode(&call),
        ),
        fields: vec![
            str_field("ServiceCall.service", &call.service),
            str_field("ServiceCall.method", &call.method),
            field(
                &call.args,
                "ServiceCall.args: varint len 1, postcard of the argument Vec::<u8>::new() (00)",
            ),
        ],
        check: {
            let typed_check = typed(call);
            Box::new(move |f| {
                typed_check(f);
                let call: ServiceCall = control::decode_frame(f).expect("ServiceCall");
                let arg: Vec<u8> = control::decode(&call.args).expect("ping argument");
                assert!(arg.is_empty());
            })
        },
    });

    // (e) Its reply, and an error reply.
    let ok = CallReply::Ok(args);
    v.push(Vector {
        name: "call-reply-ok",
        frame: frame(Enc::Control, 0, 1, 1, 1000, 0, control::encode(&ok)),
        fields: vec![
            varint_field("CallReply variant 0 = Ok", 0),
            field(
                &[0u8][..],
                "Ok.0: varint len 1, postcard of the return value Vec::<u8>::new() (00)",
            ),
        ],
        check: {
            let typed_check = typed(ok);
            Box::new(move |f| {
                typed_check(f);
                let CallReply::Ok(value) = control::decode_frame(f).expect("CallReply") else {
                    panic!("not Ok");
                };
                let ret: Vec<u8> = control::decode(&value).expect("ping return value");
                assert!(ret.is_empty());
            })
        },
    });
    let err = CallReply::Err(RemoteError::NoSuchMethod {
        service: "ferrogen.ping".into(),
        method: "pong".into(),
    });
    v.push(Vector {
        name: "call-reply-err",
        frame: frame(Enc::Control, 0, 1, 1, 1000, 0, control::encode(&err)),
        fields: vec![
            varint_field("CallReply variant 1 = Err", 1),
            varint_field("RemoteError variant 1 = NoSuchMethod", 1),
            str_field("NoSuchMethod.service", "ferrogen.ping"),
            str_field("NoSuchMethod.method", "pong"),
        ],
        check: typed(err),
    });

    // (f) The handshake.
    let hello = hello_value();
    v.push(Vector {
        name: "hello",
        frame: frame(
            Enc::Control,
            1,
            0,
            0,
            handles::HELLO,
            0,
            control::encode(&hello),
        ),
        fields: vec![
            varint_field("Hello.version", hello.version.into()),
            varint_field("Hello.context_id", hello.context_id.into()),
            field(
                &hello.parent_ids,
                "Hello.parent_ids: varint len 1, [varint 0]",
            ),
            str_field("Hello.name", &hello.name),
            varint_field("Hello.max_message_size", hello.max_message_size),
            str_field("Hello.log_filter", &hello.log_filter),
        ],
        check: typed(hello),
    });
    let ready = ready_value();
    v.push(Vector {
        name: "ready",
        frame: frame(
            Enc::Control,
            0,
            1,
            1,
            handles::HELLO,
            0,
            control::encode(&ready),
        ),
        fields: vec![
            varint_field("Ready.version", ready.version.into()),
            varint_field("Ready.pid", ready.pid.into()),
            str_field("Ready.arch", &ready.arch),
        ],
        check: typed(ready),
    });
    v
}

fn rejected() -> Vec<Rejected> {
    vec![
        Rejected {
            name: "rejected-pickle",
            header: Header {
                enc: 0x4d4a,
                dst_id: 0,
                src_id: 1,
                auth_id: 1,
                handle: 1000,
                reply_to: 0,
                len: 5,
            },
            check: |e, h| match e {
                DecodeError::UnknownEncoding { enc, header } => {
                    assert_eq!(*enc, 0x4d4a);
                    assert_eq!(header, h);
                }
                other => panic!("expected UnknownEncoding, got {other:?}"),
            },
        },
        Rejected {
            name: "rejected-oversize",
            header: Header {
                enc: Enc::Bin.to_u16(),
                dst_id: 0,
                src_id: 1,
                auth_id: 1,
                handle: 1000,
                reply_to: 0,
                len: u32::MAX,
            },
            check: |e, _| match e {
                DecodeError::TooLarge { len, max } => {
                    assert_eq!(*len, u32::MAX as usize);
                    assert_eq!(*max, DEFAULT_MAX_MESSAGE_SIZE);
                }
                other => panic!("expected TooLarge, got {other:?}"),
            },
        },
    ]
}

// -------------------------------------------------------- printing the doc

fn enc_name(enc: u16) -> String {
    match Enc::from_u16(enc) {
        Some(e) => format!("{enc:#06x} {e:?}"),
        None => format!("{enc:#06x} (not accepted)"),
    }
}

fn handle_name(h: u32) -> &'static str {
    match h {
        handles::ADD_ROUTE => " ADD_ROUTE",
        handles::DEL_ROUTE => " DEL_ROUTE",
        handles::ALLOCATE_ID => " ALLOCATE_ID",
        handles::SHUTDOWN => " SHUTDOWN",
        handles::CALL_SERVICE => " CALL_SERVICE",
        handles::HELLO => " HELLO",
        handles::FILE_ACK => " FILE_ACK",
        handles::IS_DEAD => " IS_DEAD",
        _ => "",
    }
}

fn block(name: &str, header: &Header, fields: &[(Vec<u8>, String)]) -> String {
    let raw = header.encode();
    let mut lines: Vec<(String, String)> = vec![
        (
            to_hex(&raw[0..2]),
            format!("enc       {}", enc_name(header.enc)),
        ),
        (to_hex(&raw[2..6]), format!("dst_id    {}", header.dst_id)),
        (to_hex(&raw[6..10]), format!("src_id    {}", header.src_id)),
        (
            to_hex(&raw[10..14]),
            format!("auth_id   {}", header.auth_id),
        ),
        (
            to_hex(&raw[14..18]),
            format!("handle    {}{}", header.handle, handle_name(header.handle)),
        ),
        (
            to_hex(&raw[18..22]),
            format!(
                "reply_to  {}{}",
                header.reply_to,
                handle_name(header.reply_to)
            ),
        ),
        (to_hex(&raw[22..26]), format!("len       {}", header.len)),
    ];
    for (bytes, label) in fields {
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let comment = if i == 0 { label.clone() } else { String::new() };
            lines.push((to_hex(chunk), comment));
        }
    }
    let mut s = format!("```hex {name}\n");
    for (hex, comment) in lines {
        if comment.is_empty() {
            s.push_str(&hex);
        } else {
            s.push_str(&format!("{hex:<34}# {comment}"));
        }
        s.push('\n');
    }
    s.push_str("```\n");
    s
}

#[test]
#[ignore = "prints the hex blocks for docs/protocol.md"]
fn print_doc_vectors() {
    for v in vectors() {
        let payload: Vec<u8> = v.fields.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(
            payload, v.frame.payload,
            "{}: fields cover the payload",
            v.name
        );
        println!("{}", block(v.name, &v.frame.header(), &v.fields));
    }
    for r in rejected() {
        println!("{}", block(r.name, &r.header, &[]));
    }
}

// ------------------------------------------------------ static vector tests

#[test]
fn doc_and_tests_name_the_same_vectors() {
    let in_doc: Vec<String> = doc_vectors().into_keys().collect();
    let mut here: Vec<String> = vectors()
        .iter()
        .map(|v| v.name.to_string())
        .chain(rejected().iter().map(|r| r.name.to_string()))
        .collect();
    here.sort();
    assert_eq!(in_doc, here);
}

#[test]
fn documented_frames_encode_to_documented_bytes() {
    for v in vectors() {
        let want = doc_bytes(v.name);
        let got = codec::encode_to_vec(&v.frame);
        assert_eq!(
            to_hex(&got),
            to_hex(&want),
            "{}: the code's encoding differs from docs/protocol.md",
            v.name
        );
        // The annotated breakdown printed into the doc adds up to the payload.
        let fields: Vec<u8> = v.fields.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(fields, v.frame.payload, "{}: field breakdown", v.name);
    }
}

#[test]
fn documented_bytes_decode_to_documented_frames() {
    for v in vectors() {
        let bytes = doc_bytes(v.name);
        let mut codec = FrameCodec::new(DEFAULT_MAX_MESSAGE_SIZE);
        let mut buf = BytesMut::from(&bytes[..]);
        let got = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name))
            .unwrap_or_else(|| panic!("{}: incomplete", v.name));
        assert!(buf.is_empty(), "{}: {} bytes left over", v.name, buf.len());
        assert_eq!(to_hex(&got.payload), to_hex(&v.frame.payload), "{}", v.name);
        assert_eq!(got, v.frame, "{}", v.name);
        assert_eq!(got.wire_len(), bytes.len());
        (v.check)(&got);
        // One byte short is not a frame yet, and at EOF it is a truncation.
        let mut short = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert!(codec.decode(&mut short).expect("short").is_none());
        assert!(matches!(
            codec.decode_eof(&mut short),
            Err(DecodeError::Truncated { buffered }) if buffered == bytes.len() - 1
        ));
    }
}

#[test]
fn documented_rejections_are_rejected_at_the_header() {
    for r in rejected() {
        let bytes = doc_bytes(r.name);
        assert_eq!(bytes, r.header.encode(), "{}", r.name);
        assert_eq!(bytes.len(), HEADER_LEN);
        let mut codec = FrameCodec::new(DEFAULT_MAX_MESSAGE_SIZE);
        let mut buf = BytesMut::from(&bytes[..HEADER_LEN - 1]);
        assert!(codec.decode(&mut buf).expect("25 bytes").is_none());
        let mut buf = BytesMut::from(&bytes[..]);
        let cap = buf.capacity();
        let err = codec.decode(&mut buf).expect_err(r.name);
        (r.check)(&err, &r.header);
        assert_eq!(buf.capacity(), cap, "{}: nothing reserved", r.name);
    }
}

#[test]
fn documented_handle_numbers() {
    // The handle table of docs/protocol.md.
    assert_eq!(handles::ADD_ROUTE, 103);
    assert_eq!(handles::DEL_ROUTE, 104);
    assert_eq!(handles::ALLOCATE_ID, 105);
    assert_eq!(handles::SHUTDOWN, 106);
    assert_eq!(handles::CALL_SERVICE, 110);
    assert_eq!(handles::HELLO, 120);
    assert_eq!(handles::FILE_ACK, 130);
    assert_eq!(handles::IS_DEAD, 999);
    assert_eq!(handles::FIRST_DYNAMIC, 1000);
    assert_eq!(HEADER_LEN, 26);
    assert_eq!(DEFAULT_MAX_MESSAGE_SIZE, 128 * 1024 * 1024);
    assert_eq!(PROTOCOL_VERSION, 3);
    assert_eq!(Enc::Text.to_u16(), 0x4d49);
    assert_eq!(Enc::Bin.to_u16(), 0x4d4b);
    assert_eq!(Enc::Control.to_u16(), 0x4d50);
    assert_eq!(Enc::from_u16(0x4d4a), None, "pickle is never accepted");
}

// ----------------------------------------- documented exchanges, live

const STEP: Duration = Duration::from_secs(10);

/// Reads exactly `n` bytes from our end of a pipe, failing after a while.
async fn read_n(ours: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    tokio::time::timeout(STEP, ours.read_exact(&mut b))
        .await
        .expect("timed out waiting for the router's answer")
        .expect("read");
    b
}

/// Attaches a stream to `router` whose far end is returned.
fn attach(router: &Router, remote_id: u32, is_parent: bool) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(theirs);
    ferrogen::stream::start(
        router,
        format!("test-{remote_id}"),
        remote_id,
        is_parent,
        r,
        w,
        BytesMut::new(),
    );
    ours
}

/// Context 1 (`local.4711`), child of the controller, with its services.
fn child_router() -> (Router, Services) {
    let router = Router::new(RouterConfig {
        id: 1,
        name: "local.4711".into(),
        parent_ids: vec![0],
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
    });
    let services = Services::start(&router);
    ferrogen::ping::register_service(&services, &router);
    (router, services)
}

#[tokio::test]
async fn child_answers_the_documented_call_with_the_documented_reply() {
    let (router, _services) = child_router();
    let mut parent = attach(&router, 0, true);
    parent
        .write_all(&doc_bytes("call-service-ping"))
        .await
        .expect("write");
    let want = doc_bytes("call-reply-ok");
    let got = read_n(&mut parent, want.len()).await;
    assert_eq!(to_hex(&got), to_hex(&want));
}

#[tokio::test]
async fn child_answers_an_invalid_handle_with_the_documented_dead_message() {
    let (router, _services) = child_router();
    let mut parent = attach(&router, 0, true);
    parent
        .write_all(&doc_bytes("invalid-handle-request"))
        .await
        .expect("write");
    let want = doc_bytes("dead-message");
    let got = read_n(&mut parent, want.len()).await;
    assert_eq!(to_hex(&got), to_hex(&want));
}

#[tokio::test]
async fn controller_answers_the_documented_allocate_id() {
    let router = Router::new(RouterConfig::controller());
    // The controller gave id 1 to the child it started; the child now asks
    // for a block of its own.
    assert_eq!(router.allocate_id().await.expect("id"), 1);
    let mut child = attach(&router, 1, false);
    child
        .write_all(&doc_bytes("allocate-id-request"))
        .await
        .expect("write");
    let want = doc_bytes("allocate-id-reply");
    let got = read_n(&mut child, want.len()).await;
    assert_eq!(to_hex(&got), to_hex(&want));
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn controller_applies_the_documented_add_and_del_route() {
    let router = Router::new(RouterConfig::controller());
    assert_eq!(router.allocate_id().await.expect("id"), 1);
    let mut child = attach(&router, 1, false);
    assert!(!router.has_route(2));
    // A child may announce only ids it owns: first the documented block
    // [2, 1002), then the documented ADD_ROUTE for 2.
    child
        .write_all(&doc_bytes("add-route"))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!router.has_route(2), "announced before it was delegated");
    assert_eq!(router.rejected_frames(), 1);
    child
        .write_all(&doc_bytes("allocate-id-request"))
        .await
        .expect("write");
    let want = doc_bytes("allocate-id-reply");
    let _ = read_n(&mut child, want.len()).await;
    child
        .write_all(&doc_bytes("add-route"))
        .await
        .expect("write");
    wait_until("route to 2 added", || router.has_route(2)).await;
    assert_eq!(router.context_name(2).as_deref(), Some("local.4712"));
    assert_eq!(router.stream_towards(2), router.stream_towards(1));
    child
        .write_all(&doc_bytes("del-route"))
        .await
        .expect("write");
    wait_until("route to 2 removed", || !router.has_route(2)).await;
    assert!(router.has_route(1), "the child itself is still there");
    assert_eq!(router.rejected_frames(), 1);
}

#[tokio::test]
async fn handshake_sends_the_documented_hello_and_accepts_the_documented_ready() {
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(theirs);
    let hello = hello_value();
    let parent = tokio::spawn(async move {
        ferrogen::connect::handshake::parent_side(&mut r, &mut w, &hello, 0, STEP).await
    });
    let want = doc_bytes("hello");
    let got = read_n(&mut ours, want.len()).await;
    assert_eq!(to_hex(&got), to_hex(&want));
    ours.write_all(&doc_bytes("ready")).await.expect("write");
    let (ready, rest) = parent.await.expect("join").expect("handshake");
    assert_eq!(ready, ready_value());
    assert!(rest.is_empty());
}
