//! Shared helpers for the integration tests: real contexts started from an
//! in-process controller, process bookkeeping and clean-up, and a fake child
//! stream for crafting frames a real context would never send.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferrogen::call::RemoteError;
use ferrogen::connect::{self, ConnectSpec, ContextInfo, Method};
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::{Policy, ServiceBuilder, Services};
use ferrogen::stream::{self, StreamId};
use ferrogen::wire::control::{self, IdBlock};
use ferrogen::wire::{ContextId, Enc, Frame, FrameCodec, codec, handles};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::Decoder;

/// The service name of the test methods (examples/test_context.rs).
pub const TEST: &str = "ferrogen.test";

/// Generous bound for anything that should happen "promptly".
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// Path of the `test_context` example binary, next to the `ferrogen` binary.
pub fn test_context_path() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ferrogen"));
    let path = bin
        .parent()
        .expect("the ferrogen binary has a directory")
        .join("examples")
        .join("test_context");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it; with a --test filter run \
         `cargo build --examples` first",
        path.display()
    );
    path
}

/// Points local connections at the test_context binary and sets up logging
/// (RUST_LOG) once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        connect::local::set_child_program(test_context_path());
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(filter)
            .try_init();
    });
}

/// An in-process controller and every context process it had started; the
/// processes are SIGKILLed when it is dropped.
pub struct Controller {
    pub router: Router,
    pub services: Services,
    pids: Arc<Mutex<Vec<u32>>>,
}

impl Controller {
    /// A controller with the default configuration.
    pub fn new() -> Controller {
        Controller::with_config(RouterConfig::controller())
    }

    /// A controller with a custom router configuration.
    pub fn with_config(config: RouterConfig) -> Controller {
        init();
        let router = Router::new(config);
        let services = Services::start(&router);
        ferrogen::ping::register_service(&services, &router);
        register_test_service(&services);
        Controller {
            router,
            services,
            pids: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts a local context here (`via: None`) or from inside `via`.
    pub async fn connect(&self, via: Option<ContextId>) -> ContextInfo {
        match self.try_connect(via).await {
            Ok(info) => info,
            Err(e) => panic!("connect via {via:?} failed: {e}"),
        }
    }

    /// Like [`Controller::connect`], returning the error.
    pub async fn try_connect(
        &self,
        via: Option<ContextId>,
    ) -> Result<ContextInfo, connect::ConnectError> {
        let mut spec = ConnectSpec::new(Method::Local);
        // RUST_LOG applies to the contexts too (their logs are forwarded).
        if let Ok(filter) = std::env::var("RUST_LOG") {
            spec.log_filter = filter;
        }
        let info = connect::connect(&self.router, &spec, via).await?;
        self.pids.lock().unwrap().push(info.pid);
        Ok(info)
    }

    /// Calls `ferrogen.test.<method>` in `dst`.
    pub async fn call<A, R>(&self, dst: ContextId, method: &str, args: &A) -> R
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        match self.router.call_service(dst, TEST, method, args).await {
            Ok(r) => r,
            Err(e) => panic!("{TEST}.{method} in {dst} failed: {e}"),
        }
    }
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.router.close_all_streams("test finished");
        for pid in self.pids.lock().unwrap().drain(..) {
            kill_context(pid);
        }
    }
}

/// The `ferrogen.test` methods the controller itself offers (for calls from
/// contexts up to the controller).
fn register_test_service(services: &Services) {
    services.register(
        ServiceBuilder::new(TEST)
            .method(
                "parents_only",
                Policy::ParentsOnly,
                |_c, x: u32| async move { Ok::<_, RemoteError>(x + 1) },
            )
            .method("anyone", Policy::Any, |_c, x: u32| async move {
                Ok::<_, RemoteError>(x + 1)
            })
            .build(),
    );
}

// ------------------------------------------------------------------ processes

/// The command line of a process, if it still exists.
fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// SIGKILLs `pid` if it is still a ferrogen context (never a reused pid).
pub fn kill_context(pid: u32) {
    if cmdline(pid).is_some_and(|c| c.contains(connect::local::CHILD_ARG)) {
        kill(pid);
    }
}

/// SIGKILLs `pid` (errors ignored: it may be gone already).
pub fn kill(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// The state letter of `/proc/<pid>/stat` and the parent pid, if it exists.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Waits up to `within` for `pid` to be gone (or a zombie).
pub async fn wait_gone(pid: u32, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !alive(pid)
}

/// Every live descendant of `root`, found by walking `/proc/*/stat`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((state, ppid)) = stat(pid)
                && state != 'Z'
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

// ---------------------------------------------------------------- fake child

/// A stream attached to a router as if it led to child `id`, whose far end
/// the test drives by hand: it writes frames with any header it likes and
/// reads what the router sends down.
pub struct FakeChild {
    pub id: ContextId,
    pub stream: StreamId,
    reader: ReadHalf<tokio::io::DuplexStream>,
    writer: WriteHalf<tokio::io::DuplexStream>,
    codec: FrameCodec,
    buf: BytesMut,
}

impl FakeChild {
    /// Attaches a fake child `id` to `router`.
    pub fn attach(router: &Router, id: ContextId) -> FakeChild {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(theirs);
        let stream = stream::start(
            router,
            format!("fake.{id}"),
            id,
            false,
            r,
            w,
            BytesMut::new(),
        );
        let (reader, writer) = tokio::io::split(ours);
        FakeChild {
            id,
            stream,
            reader,
            writer,
            codec: FrameCodec::new(router.max_message_size()),
            buf: BytesMut::new(),
        }
    }

    /// Writes one frame exactly as given.
    pub async fn send(&mut self, frame: &Frame) {
        self.writer
            .write_all(&codec::encode_to_vec(frame))
            .await
            .expect("write to the fake child stream");
    }

    /// Asks the router for a block of ids (ALLOCATE_ID), as a child that
    /// starts contexts of its own does; the ids are then this child's to
    /// announce.
    pub async fn allocate_block(&mut self) -> IdBlock {
        let mut ask = Frame::new(0, handles::ALLOCATE_ID, Enc::Control, Bytes::new());
        ask.src_id = self.id;
        ask.auth_id = self.id;
        ask.reply_to = 4999;
        self.send(&ask).await;
        loop {
            let f = self.recv(PROMPTLY).await.expect("an ALLOCATE_ID reply");
            if f.handle == 4999 {
                return control::decode_frame(&f).expect("an IdBlock");
            }
        }
    }

    /// The next frame the router sent down, within `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Frame> {
        let read = async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).expect("decodable frame") {
                    return Some(f);
                }
                match self.reader.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read).await.ok().flatten()
    }
}
