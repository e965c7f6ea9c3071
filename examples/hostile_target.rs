//! A scripted hostile target for `tests/hostile.rs`: a program that a real
//! controller starts as its ssh command (`ferrogen push -e hostile_target
//! -H evil ...`) and that then misbehaves on purpose, speaking the wire
//! protocol with the crate's own `wire` module.
//!
//! Invoked as ssh is (`hostile_target [ssh options] -- HOST COMMAND`):
//!
//! * for a `HOST` other than `$HOSTILE_HOST` (default `evil`) it behaves
//!   like `ssh localhost`: it runs `COMMAND` (the bootstrap stub) with
//!   `/bin/sh` in the directory `$HOSTILE_ROOT/HOST` (created), so sibling
//!   targets are real ferrogen contexts, each writing under its own
//!   directory;
//! * for the hostile host it answers the stub's handshake as a real target
//!   does (the marker lines `uname` and `run`), reads HELLO, answers READY
//!   and then runs the attack named by `$HOSTILE_ATTACK`, with the knobs
//!   `$HOSTILE_COUNT` and `$HOSTILE_SECONDS` (each attack says what they
//!   mean). What it saw is appended, one `key value` line at a time, to
//!   the file `$HOSTILE_REPORT` (if set), for the test to check.
//!
//! Adding an attack: write a `fn(&mut Peer, &Knobs) -> Result<(), String>`
//! (or a `fn(&Knobs)` for one that acts before the handshake) and add a
//! line for it to [`ATTACKS`]. The [`Peer`] helpers cover the usual moves:
//! wait for the push plan, call a service, stop reading, send raw frames.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrogen::call::RemoteError;
use ferrogen::channel::Sender;
use ferrogen::files::plan::{PlanEntry, PushPlan};
use ferrogen::files::{FetchArgs, FetchReply, FetchSmallArgs, RawPath, SMALL_FILE_MAX};
use ferrogen::wire::control::{
    self, AddRoute, CallReply, Hello, PROTOCOL_VERSION, Ready, ServiceCall,
};
use ferrogen::wire::{ContextId, Enc, Frame, FrameCodec, Handle, codec, handles};
use tokio_util::codec::Decoder;

/// When an attack runs.
enum Stage {
    /// Before anything is said on stdout: the process is still "the ssh
    /// command" (e.g. floods stderr), then completes the handshake and
    /// idles until the controller hangs up.
    Bootstrap(fn(&Knobs) -> Result<(), String>),
    /// After READY, with a live [`Peer`].
    Connected(fn(&mut Peer, &Knobs) -> Result<(), String>),
}

/// The attacks, by name.
const ATTACKS: &[(&str, Stage)] = &[
    // Finding 4b: one stderr line of COUNT MiB without a newline, during
    // the bootstrap.
    ("stderr_line", Stage::Bootstrap(stderr_line)),
    // Finding 4a: COUNT `fetch_small` calls for every small file of the
    // plan, without reading a byte of the replies; hang up after SECONDS.
    ("small_flood", Stage::Connected(small_flood)),
    // Issue 13: COUNT `fetch_small` calls of 2,000 paths that do not
    // exist each (and as many `fetch`es), replies read, one call at a
    // time: a relay's tee must answer them without keeping anything.
    ("bogus_paths", Stage::Connected(bogus_paths)),
    // Finding 5: fetch the largest file, never read its data, and
    // acknowledge COUNT MiB per second of it anyway for SECONDS.
    ("lying_acks", Stage::Connected(lying_acks)),
    // Finding 6: COUNT `fetch` calls for the largest file at once; read
    // and acknowledge whatever comes, for SECONDS.
    ("fetch_queue", Stage::Connected(fetch_queue)),
    // Finding 6: fetch the largest file, read everything, acknowledge
    // nothing (holding the stream's turn), for SECONDS.
    ("silent_fetch", Stage::Connected(silent_fetch)),
    // Finding 1: once the plan arrives, dead messages forged to the
    // controller's service handle and COUNT of its dynamic handles, and to
    // the SHUTDOWN, service and COUNT dynamic handles of the contexts near
    // our id; then every call is refused for SECONDS.
    ("forged_dead", Stage::Connected(forged_dead)),
    // Finding 2: ADD_ROUTE for the COUNT ids after ours (those the next
    // contexts will get, e.g. a sibling's sudo context); every call that
    // reaches us is refused and counted for SECONDS.
    ("route_hijack", Stage::Connected(route_hijack)),
    // Finding 7: COUNT ALLOCATE_ID requests at once; the blocks granted and
    // refused are reported; calls are refused for SECONDS.
    ("id_flood", Stage::Connected(id_flood)),
    // Review: once our push plan arrives, DEL_ROUTE addressed past our
    // parent (dst 0, the controller) for the ids within COUNT of ours (our
    // siblings behind the same hop); a hop forwards it and the controller
    // credits it to the hop's stream. Calls are refused for SECONDS.
    ("del_route_relay", Stage::Connected(del_route_relay)),
    // Review: COUNT empty frames, each to a different unknown context id,
    // without reply_to; then calls are refused for SECONDS.
    ("egress_flood", Stage::Connected(egress_flood)),
    // Review: one ALLOCATE_ID and ADD_ROUTE for COUNT ids of the block
    // (ids we own), then 64 `fetch` calls for the largest file from each
    // of them (src_id = that id), acknowledging nothing, for SECONDS.
    ("fake_requesters", Stage::Connected(fake_requesters)),
    // Review: COUNT `fetch` calls (nothing acknowledged), then one
    // DEL_ROUTE for our own id whose reason is $HOSTILE_MIB MiB long; idle
    // for SECONDS.
    ("fat_del_route", Stage::Connected(fat_del_route)),
    // Review: answers the push call with an error of $HOSTILE_MIB MiB.
    ("fat_error", Stage::Connected(fat_error)),
    // Review: ALLOCATE_ID and ADD_ROUTE for COUNT ids we own, stop
    // reading, then 4 `fetch_small` calls for every small file from each
    // of them; hang up after SECONDS.
    ("fake_small", Stage::Connected(fake_small)),
    // Issue 12 (pull): answer the controller's `offer` with lies —
    // COUNT 0: entries beneath names it did not ask for; 1: forged names
    // (`..`, absolute, NUL) beneath the asked-for name; 2: two files
    // announced at 10 bytes each whose `fetch_small` reply holds 100,000;
    // 3: one file announced at 10 bytes whose `fetch` reply says 1 TiB.
    // Then idle until the controller hangs up.
    ("offer_lies", Stage::Connected(offer_lies)),
];

/// Our parent's id, from HELLO.
static PARENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Tunables from the environment.
struct Knobs {
    count: u64,
    seconds: f64,
    report: Option<String>,
}

impl Knobs {
    fn from_env() -> Knobs {
        let get = |k: &str| std::env::var(k).ok();
        Knobs {
            count: get("HOSTILE_COUNT")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100),
            seconds: get("HOSTILE_SECONDS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5.0),
            report: get("HOSTILE_REPORT"),
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.max(0.0))
    }

    /// Appends `key value` to the report file.
    fn report(&self, key: &str, value: impl std::fmt::Display) {
        if let Some(path) = &self.report {
            let line = format!("{key} {value}\n");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Ok(mut f) = f {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hostile_target: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &[String]) -> Result<(), String> {
    // ssh's argument list: options, `--`, host, remote command.
    let dashes = args
        .iter()
        .position(|a| a == "--")
        .ok_or("expected `-- HOST COMMAND` as ssh gets them")?;
    let (host, command) = match &args[dashes + 1..] {
        [host, command] => (host.as_str(), command.as_str()),
        _ => return Err("expected exactly HOST and COMMAND after `--`".into()),
    };
    let evil = std::env::var("HOSTILE_HOST").unwrap_or_else(|_| "evil".into());
    if host != evil {
        return Err(be_localhost(host, command));
    }
    let knobs = Knobs::from_env();
    let attack = std::env::var("HOSTILE_ATTACK").map_err(|_| "HOSTILE_ATTACK is not set")?;
    let stage = ATTACKS
        .iter()
        .find(|(name, _)| *name == attack)
        .map(|(_, s)| s)
        .ok_or_else(|| format!("unknown attack {attack:?}"))?;
    let marker = marker_of(command)?;
    if let Stage::Bootstrap(f) = stage {
        f(&knobs)?;
    }
    let mut peer = Peer::handshake(&marker)?;
    knobs.report("connected", peer.me);
    let outcome = match stage {
        Stage::Connected(f) => f(&mut peer, &knobs),
        Stage::Bootstrap(_) => {
            // From now on, refuse the push politely and wait for the
            // hang-up.
            peer.refuse_push(Duration::from_secs(60))?;
            while peer.recv(Duration::from_secs(3600)).is_some() {}
            Ok(())
        }
    };
    knobs.report("done", unix_ms());
    outcome
}

/// Runs the stub locally, as `ssh localhost` would.
fn be_localhost(host: &str, command: &str) -> String {
    let root = std::env::var("HOSTILE_ROOT").unwrap_or_else(|_| ".".into());
    let dir = std::path::Path::new(&root).join(host);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return format!("{}: {e}", dir.display());
    }
    let err = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(&dir)
        .exec();
    format!("cannot run /bin/sh: {err}")
}

/// The bootstrap marker from the stub (`M=FERROGEN-...;`).
fn marker_of(command: &str) -> Result<String, String> {
    let at = command.find("M=").ok_or("no marker in the command")?;
    let rest = &command[at + 2..];
    let end = rest.find(';').ok_or("unterminated marker")?;
    Ok(rest[..end].to_string())
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The hostile end of a stream: frames in (from a reader thread that can
/// be paused) and out.
struct Peer {
    /// Our context id, from HELLO.
    me: ContextId,
    /// Our parent, from HELLO.
    parent: ContextId,
    out: std::io::Stdout,
    frames: mpsc::Receiver<Frame>,
    reading: Arc<AtomicBool>,
    next_handle: Handle,
}

impl Peer {
    /// Answers the bootstrap stub and the HELLO as a real target does.
    fn handshake(marker: &str) -> Result<Peer, String> {
        let mut out = std::io::stdout();
        let banner = format!("\n{marker} uname Linux x86_64\n{marker} run cached\n");
        out.write_all(banner.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
        let mut input = std::io::stdin();
        let mut codec = FrameCodec::new(64 * 1024);
        let mut buf = BytesMut::new();
        let hello = loop {
            if let Some(f) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
                break f;
            }
            let mut chunk = [0u8; 4096];
            let n = input.read(&mut chunk).map_err(|e| format!("stdin: {e}"))?;
            if n == 0 {
                return Err("EOF before HELLO".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let hello: Hello = control::decode_frame(&hello).map_err(|e| e.to_string())?;
        let parent = hello.parent_ids.first().copied().unwrap_or(0);
        let mut peer = Peer {
            me: hello.context_id,
            parent,
            out,
            frames: mpsc::channel().1,
            reading: Arc::new(AtomicBool::new(true)),
            next_handle: handles::FIRST_DYNAMIC,
        };
        PARENT.store(parent, Ordering::SeqCst);
        let ready = Ready {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            arch: "x86_64".into(),
        };
        peer.send(Frame::new(
            parent,
            handles::HELLO,
            Enc::Control,
            control::encode(&ready),
        ))?;
        let (tx, rx) = mpsc::channel();
        peer.frames = rx;
        let reading = peer.reading.clone();
        let max = hello.max_message_size as usize;
        std::thread::spawn(move || read_frames(input, buf, FrameCodec::new(max), reading, tx));
        Ok(peer)
    }

    /// Sends a frame from us (`src_id = auth_id =` our id).
    fn send(&mut self, mut frame: Frame) -> Result<(), String> {
        frame.src_id = self.me;
        frame.auth_id = self.me;
        self.send_raw(&frame)
    }

    /// Sends a frame exactly as given.
    fn send_raw(&mut self, frame: &Frame) -> Result<(), String> {
        self.out
            .write_all(&codec::encode_to_vec(frame))
            .and_then(|()| self.out.flush())
            .map_err(|e| format!("stdout: {e}"))
    }

    /// A fresh handle of ours.
    fn handle(&mut self) -> Handle {
        self.next_handle += 1;
        self.next_handle
    }

    /// Stops (or resumes) reading the stream: the parent's writes pile up.
    fn set_reading(&self, on: bool) {
        self.reading.store(on, Ordering::SeqCst);
    }

    /// The next frame, `None` after `wait` or at EOF.
    fn recv(&mut self, wait: Duration) -> Option<Frame> {
        self.frames.recv_timeout(wait).ok()
    }

    /// Calls `service.method(args)` in `dst`; returns the reply handle.
    fn call<A: serde::Serialize>(
        &mut self,
        dst: ContextId,
        service: &str,
        method: &str,
        args: &A,
    ) -> Result<Handle, String> {
        let reply_to = self.handle();
        let call = ServiceCall {
            service: service.into(),
            method: method.into(),
            args: control::encode(args).to_vec(),
        };
        let mut f = Frame::new(
            dst,
            handles::CALL_SERVICE,
            Enc::Control,
            control::encode(&call),
        );
        f.reply_to = reply_to;
        self.send(f)?;
        Ok(reply_to)
    }

    /// Waits for a call of `method` (others are answered "no such
    /// service"); returns its frame and arguments.
    fn wait_call(&mut self, method: &str, wait: Duration) -> Result<(Frame, Vec<u8>), String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self
                .recv(left)
                .ok_or_else(|| format!("no {method} call came"))?;
            if f.handle != handles::CALL_SERVICE || f.is_dead() {
                continue;
            }
            let call: ServiceCall = control::decode_frame(&f).map_err(|e| e.to_string())?;
            if call.method == method {
                return Ok((f, call.args));
            }
            let no = CallReply::Err(RemoteError::NoSuchService(call.service));
            let mut r = Frame::new(f.src_id, f.reply_to, Enc::Control, control::encode(&no));
            r.reply_to = 0;
            self.send(r)?;
        }
    }

    /// Answers the call in `to` with `value`.
    fn reply_ok<T: serde::Serialize>(&mut self, to: &Frame, value: &T) -> Result<(), String> {
        let ok = CallReply::Ok(control::encode(value).to_vec());
        let mut r = Frame::new(to.src_id, to.reply_to, Enc::Control, control::encode(&ok));
        r.reply_to = 0;
        self.send(r)
    }

    /// Waits for the controller's `ferrogen.files.target.push` call and
    /// returns its plan (other calls are answered "no such service").
    fn wait_push_plan(&mut self, wait: Duration) -> Result<PushPlan, String> {
        let deadline = Instant::now() + wait;
        let mut header: Option<PushPlan> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.recv(left).ok_or("no push plan came")?;
            if f.handle != handles::CALL_SERVICE || f.is_dead() {
                continue;
            }
            let call: ServiceCall = control::decode_frame(&f).map_err(|e| e.to_string())?;
            if call.method == "push" {
                return control::decode(&call.args).map_err(|e| e.to_string());
            }
            // A streamed push: the header opens a session, the first batch
            // brings entries (left unanswered, as the one-message push).
            if call.method == "push_open" {
                header = Some(control::decode(&call.args).map_err(|e| e.to_string())?);
                let opened = ferrogen::files::plan::PushOpened {
                    session: 1,
                    failed: Vec::new(),
                };
                self.reply_ok(&f, &opened)?;
                continue;
            }
            if call.method == "push_batch"
                && let Some(mut plan) = header.take()
            {
                let batch: ferrogen::files::plan::PushBatch =
                    control::decode(&call.args).map_err(|e| e.to_string())?;
                plan.entries = batch.entries;
                return Ok(plan);
            }
            let no = CallReply::Err(RemoteError::NoSuchService(call.service));
            let mut r = Frame::new(f.src_id, f.reply_to, Enc::Control, control::encode(&no));
            r.reply_to = 0;
            self.send(r)?;
        }
    }

    /// Answers the push call with an error.
    fn refuse_push(&mut self, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        loop {
            let f = self
                .recv(deadline.saturating_duration_since(Instant::now()))
                .ok_or("no push call came")?;
            if f.handle != handles::CALL_SERVICE || f.is_dead() {
                continue;
            }
            let no = CallReply::Err(RemoteError::Failed("hostile target: refused".into()));
            let mut r = Frame::new(f.src_id, f.reply_to, Enc::Control, control::encode(&no));
            r.reply_to = 0;
            self.send(r)?;
            let call: ServiceCall = control::decode_frame(&f).map_err(|e| e.to_string())?;
            if call.method == "push" || call.method == "push_open" {
                return Ok(());
            }
        }
    }
}

/// The reader thread: decodes frames while `reading` is set; when it is
/// cleared, stops taking bytes off the pipe altogether.
fn read_frames(
    mut input: std::io::Stdin,
    mut buf: BytesMut,
    mut codec: FrameCodec,
    reading: Arc<AtomicBool>,
    tx: mpsc::Sender<Frame>,
) {
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        if !reading.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match codec.decode(&mut buf) {
            Ok(Some(f)) => {
                if tx.send(f).is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => return,
        }
        match input.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Regular files of the plan: (source path, size).
fn plan_files(plan: &PushPlan) -> Vec<(RawPath, u64)> {
    plan.entries
        .iter()
        .filter_map(|e| match e {
            PlanEntry::File { src, size, .. } => Some((src.clone(), *size)),
            _ => None,
        })
        .collect()
}

fn largest_file(plan: &PushPlan) -> Result<RawPath, String> {
    plan_files(plan)
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .map(|(src, _)| src)
        .ok_or_else(|| "the plan has no file".to_string())
}

// ------------------------------------------------------------------ attacks

fn stderr_line(k: &Knobs) -> Result<(), String> {
    let mut err = std::io::stderr();
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..k.count {
        err.write_all(&chunk).map_err(|e| format!("stderr: {e}"))?;
    }
    k.report("stderr_bytes", k.count << 20);
    Ok(())
}

fn small_flood(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let paths: Vec<RawPath> = plan_files(&plan)
        .into_iter()
        .filter(|(_, size)| *size <= SMALL_FILE_MAX)
        .map(|(src, _)| src)
        .collect();
    let args = FetchSmallArgs { paths };
    p.set_reading(false);
    for _ in 0..k.count {
        p.call(plan.server, "ferrogen.files", "fetch_small", &args)?;
    }
    k.report("calls", k.count);
    std::thread::sleep(k.duration());
    Ok(())
}

fn bogus_paths(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let mut answered = 0u64;
    for call in 0..k.count {
        let paths: Vec<RawPath> = (0..2000)
            .map(|j| {
                RawPath::from(
                    format!("/nonexistent/ferrogen-bogus/{call}/{j}-{}", "x".repeat(64)).as_str(),
                )
            })
            .collect();
        let small = p.call(
            plan.server,
            "ferrogen.files",
            "fetch_small",
            &FetchSmallArgs { paths },
        )?;
        let sender = Sender {
            context: p.me,
            handle: p.handle(),
        };
        let fetch = FetchArgs {
            path: RawPath::from(format!("/nonexistent/ferrogen-bogus/large-{call}").as_str()),
            sender,
            delta: None,
            resume: None,
            sparse: false,
        };
        let large = p.call(plan.server, "ferrogen.files", "fetch", &fetch)?;
        // One call at a time, each answered (a refusal), so the flood is
        // bounded by the round trip, not by any cap.
        let mut pending = 2;
        while pending > 0 {
            let f = p.recv(Duration::from_secs(30)).ok_or("no answer")?;
            if f.handle == small || f.handle == large {
                pending -= 1;
                answered += 1;
            }
        }
    }
    k.report("answered", answered);
    std::thread::sleep(k.duration());
    Ok(())
}

fn lying_acks(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let path = largest_file(&plan)?;
    let data = p.handle();
    let sender = Sender {
        context: p.me,
        handle: data,
    };
    let call = p.call(
        plan.server,
        "ferrogen.files",
        "fetch",
        &FetchArgs {
            path,
            sender,
            delta: None,
            resume: None,
            sparse: false,
        },
    )?;
    let reply = loop {
        let f = p.recv(Duration::from_secs(30)).ok_or("no fetch reply")?;
        if f.handle == call {
            break f;
        }
    };
    // Read on only until the first data frame: the transfer has the
    // stream's turn then (an acknowledgement before that would end it).
    loop {
        let f = p.recv(Duration::from_secs(60)).ok_or("no data came")?;
        if f.handle == data {
            break;
        }
    }
    p.set_reading(false);
    let reply: CallReply = control::decode_frame(&reply).map_err(|e| e.to_string())?;
    let CallReply::Ok(bytes) = reply else {
        return Err(format!("fetch refused: {reply:?}"));
    };
    let fetched: FetchReply = control::decode(&bytes).map_err(|e| e.to_string())?;
    // Claim COUNT MiB/s of data never read, a chunk's worth at a time, so
    // the claims stay below what was sent (and are accepted) as long as
    // the sender keeps up.
    let chunk = ferrogen::files::CHUNK_DATA as u64;
    let rate = (k.count << 20) as f64;
    let t0 = Instant::now();
    let mut acked = 0u64;
    while t0.elapsed() < k.duration() && acked < fetched.meta.size {
        let due = ((t0.elapsed().as_secs_f64() * rate) as u64 / chunk) * chunk;
        if due > acked {
            acked = due.min(fetched.meta.size);
            let f = Frame::new(
                fetched.ack.context,
                fetched.ack.handle,
                Enc::Control,
                control::encode(&acked),
            );
            if p.send(f).is_err() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    k.report("acked", acked);
    Ok(())
}

fn fetch_queue(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let path = largest_file(&plan)?;
    // One data handle per call; acks go wherever each reply says.
    let mut calls = Vec::new();
    for _ in 0..k.count {
        let data = p.handle();
        let sender = Sender {
            context: p.me,
            handle: data,
        };
        let args = FetchArgs {
            path: path.clone(),
            sender,
            delta: None,
            resume: None,
            sparse: false,
        };
        let call = p.call(plan.server, "ferrogen.files", "fetch", &args)?;
        calls.push((call, data));
    }
    // Acknowledge every data frame as it comes: a well-behaved receiver,
    // except for the number of transfers it queued.
    let by_call: HashMap<Handle, Handle> = calls.iter().copied().collect();
    let mut acks: HashMap<Handle, (Sender, u64)> = HashMap::new();
    let (mut ok, mut refused, mut ended) = (0u64, 0u64, 0u64);
    let mut reasons: HashMap<String, u64> = HashMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < k.duration() {
        let Some(f) = p.recv(Duration::from_millis(50)) else {
            continue;
        };
        if let Some(&data) = by_call.get(&f.handle) {
            match control::decode_frame::<CallReply>(&f) {
                Ok(CallReply::Ok(b)) => {
                    if let Ok(fr) = control::decode::<FetchReply>(&b) {
                        acks.insert(data, (fr.ack, 0));
                        ok += 1;
                    }
                }
                Ok(CallReply::Err(e)) => {
                    refused += 1;
                    let text: String = e.to_string().chars().take(100).collect();
                    *reasons.entry(text).or_default() += 1;
                }
                Err(_) => refused += 1,
            }
        } else if let Some((to, got)) = acks.get_mut(&f.handle) {
            if f.enc == Enc::Bin && f.payload.len() > 8 {
                *got += (f.payload.len() - 8) as u64;
                let ack = Frame::new(to.context, to.handle, Enc::Control, control::encode(got));
                p.send(ack)?;
            } else {
                ended += 1;
            }
        }
    }
    k.report("accepted", ok);
    k.report("refused", refused);
    k.report("ended", ended);
    for (why, n) in reasons {
        k.report("reason", format!("{n} {}", why.replace('\n', " ")));
    }
    Ok(())
}

fn silent_fetch(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let path = largest_file(&plan)?;
    let sender = Sender {
        context: p.me,
        handle: p.handle(),
    };
    p.call(
        plan.server,
        "ferrogen.files",
        "fetch",
        &FetchArgs {
            path,
            sender,
            delta: None,
            resume: None,
            sparse: false,
        },
    )?;
    let t0 = Instant::now();
    let mut bytes = 0u64;
    while t0.elapsed() < k.duration() {
        if let Some(f) = p.recv(Duration::from_millis(50))
            && f.handle == sender.handle
        {
            bytes += f.payload.len() as u64;
        }
    }
    k.report("received", bytes);
    Ok(())
}

/// Answers every service call that reaches us with an error; counts those
/// addressed to a context other than us (calls a forged route brought here).
fn answer_calls(p: &mut Peer, until: Instant, hijacked: &mut u64) -> Result<(), String> {
    while let Some(f) = p.recv(until.saturating_duration_since(Instant::now())) {
        if f.handle != handles::CALL_SERVICE || f.is_dead() {
            continue;
        }
        if f.dst_id != p.me {
            *hijacked += 1;
        }
        if f.reply_to != 0 {
            let no = CallReply::Err(RemoteError::Failed("hostile target: refused".into()));
            let r = Frame::new(f.src_id, f.reply_to, Enc::Control, control::encode(&no));
            p.send(r)?;
        }
        if Instant::now() >= until {
            break;
        }
    }
    Ok(())
}

/// Finding 1: once the push plan arrives (the siblings are pushing now),
/// forges dead messages to the controller's service handle, to COUNT
/// dynamic handles of the controller (pending calls, transfers' ack and
/// data channels) and to the SHUTDOWN and first COUNT dynamic handles of
/// the ten contexts after us; then refuses its own push.
fn forged_dead(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let mut sent = 0u64;
    let mut dead = |p: &mut Peer, dst: ContextId, h: Handle| -> Result<(), String> {
        sent += 1;
        p.send(Frame::dead(dst, h, "forged by the hostile target"))
    };
    dead(p, 0, handles::CALL_SERVICE)?;
    dead(p, plan.server, handles::CALL_SERVICE)?;
    for h in handles::FIRST_DYNAMIC..handles::FIRST_DYNAMIC + k.count as Handle {
        dead(p, 0, h)?;
    }
    for ctx in p.me.saturating_sub(10)..p.me + 10 {
        if ctx == p.me || ctx == 0 {
            continue;
        }
        dead(p, ctx, handles::SHUTDOWN)?;
        dead(p, ctx, handles::CALL_SERVICE)?;
        for h in handles::FIRST_DYNAMIC..handles::FIRST_DYNAMIC + k.count as Handle {
            dead(p, ctx, h)?;
        }
    }
    k.report("dead_sent", sent);
    let mut hijacked = 0;
    answer_calls(p, Instant::now() + k.duration(), &mut hijacked)
}

/// Finding 2: announces routes to the COUNT ids after ours — the ids the
/// controller (or a sibling's block) will give the next contexts, e.g. a
/// sibling's `--sudo` context — then answers every call that reaches it for
/// SECONDS, reporting how many were meant for someone else.
fn route_hijack(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    for id in p.me + 1..=p.me + k.count as ContextId {
        let add = AddRoute {
            id,
            name: format!("hijack.{id}"),
        };
        p.send(Frame::new(
            0,
            handles::ADD_ROUTE,
            Enc::Control,
            control::encode(&add),
        ))?;
    }
    let mut hijacked = 0;
    let r = answer_calls(p, Instant::now() + k.duration(), &mut hijacked);
    k.report("hijacked", hijacked);
    r
}

/// Finding 7: COUNT ALLOCATE_ID requests to our parent (the controller, or
/// the `--via` hop, which asks its own parent for each), answers read;
/// reports the blocks granted and refused, then answers calls for SECONDS.
fn id_flood(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let reply_to = p.handle();
    for _ in 0..k.count {
        let mut f = Frame::new(
            p.parent,
            handles::ALLOCATE_ID,
            Enc::Control,
            bytes::Bytes::new(),
        );
        f.reply_to = reply_to;
        p.send(f)?;
    }
    let (mut granted, mut refused) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut other = Vec::new();
    while granted + refused < k.count {
        let Some(f) = p.recv(deadline.saturating_duration_since(Instant::now())) else {
            break;
        };
        if f.handle != reply_to {
            other.push(f);
            continue;
        }
        if f.is_dead() {
            refused += 1;
        } else {
            granted += 1;
        }
    }
    k.report("granted", granted);
    k.report("refused", refused);
    let mut hijacked = 0;
    answer_calls(p, Instant::now() + k.duration(), &mut hijacked)
}

/// Review: DEL_ROUTE for our siblings' ids, addressed to the controller
/// (not to our parent), so that a `--via` hop forwards it instead of
/// judging it.
fn del_route_relay(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let _plan = p.wait_push_plan(Duration::from_secs(30))?;
    let parent = PARENT.load(Ordering::SeqCst);
    let mut sent = 0u64;
    let lo = p.me.saturating_sub(k.count as ContextId);
    let until = Instant::now() + k.duration();
    let mut hijacked = 0;
    // Again every 100 ms: the siblings may connect after us.
    while Instant::now() < until {
        // Ids near ours, and the same place in the next blocks (a hop
        // hands each of its children a block of 1,000).
        let step = ferrogen::router::BLOCK_SIZE as ContextId;
        let me = p.me;
        let near: Vec<ContextId> = (lo..=me + k.count as ContextId)
            .chain((1..=k.count as ContextId).map(|j| me + j * step))
            .chain((1..=k.count as ContextId).filter_map(|j| me.checked_sub(j * step)))
            .collect();
        for id in near {
            if id == me || id == 0 || id == parent {
                continue;
            }
            let del = ferrogen::wire::control::DelRoute {
                id,
                reason: "withdrawn by the hostile target".into(),
            };
            p.send(Frame::new(
                0,
                handles::DEL_ROUTE,
                Enc::Control,
                control::encode(&del),
            ))?;
            sent += 1;
        }
        answer_calls(
            p,
            Instant::now() + Duration::from_millis(100),
            &mut hijacked,
        )?;
    }
    k.report("del_sent", sent);
    Ok(())
}

/// Review: COUNT frames to distinct unknown destinations.
fn egress_flood(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let mut buf = Vec::with_capacity(26 * 65536);
    for i in 0..k.count {
        let mut f = Frame::new(
            10_000_000u32.wrapping_add(i as u32),
            1000,
            Enc::Control,
            bytes::Bytes::new(),
        );
        f.src_id = p.me;
        f.auth_id = p.me;
        buf.extend_from_slice(&codec::encode_to_vec(&f));
        if buf.len() >= 26 * 65536 {
            p.out.write_all(&buf).map_err(|e| format!("stdout: {e}"))?;
            buf.clear();
        }
    }
    p.out
        .write_all(&buf)
        .and_then(|()| p.out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    k.report("flood_sent", k.count);
    let mut hijacked = 0;
    answer_calls(p, Instant::now() + k.duration(), &mut hijacked)
}

/// Review: per-requester caps are per `src_id`, and a target may speak for
/// every id delegated to it.
fn fake_requesters(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let path = largest_file(&plan)?;
    let parent = PARENT.load(Ordering::SeqCst);
    let reply_to = p.handle();
    let mut f = Frame::new(
        parent,
        handles::ALLOCATE_ID,
        Enc::Control,
        bytes::Bytes::new(),
    );
    f.reply_to = reply_to;
    p.send(f)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let block: ferrogen::wire::control::IdBlock = loop {
        let f = p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .ok_or("no id block")?;
        if f.handle == reply_to {
            break control::decode_frame(&f).map_err(|e| format!("id block: {e}"))?;
        }
    };
    let fakes: Vec<ContextId> = (block.start..block.end).take(k.count as usize).collect();
    for &id in &fakes {
        let add = AddRoute {
            id,
            name: format!("fake.{id}"),
        };
        p.send(Frame::new(
            parent,
            handles::ADD_ROUTE,
            Enc::Control,
            control::encode(&add),
        ))?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut calls = std::collections::HashSet::new();
    for &id in &fakes {
        for _ in 0..ferrogen::files::serve::MAX_FETCHES_PER_REQUESTER {
            let data = p.handle();
            let reply = p.handle();
            let args = FetchArgs {
                path: path.clone(),
                sender: Sender {
                    context: id,
                    handle: data,
                },
                delta: None,
                resume: None,
                sparse: false,
            };
            let call = ServiceCall {
                service: "ferrogen.files".into(),
                method: "fetch".into(),
                args: control::encode(&args).to_vec(),
            };
            let mut f = Frame::new(
                plan.server,
                handles::CALL_SERVICE,
                Enc::Control,
                control::encode(&call),
            );
            f.reply_to = reply;
            f.src_id = id;
            f.auth_id = p.me;
            p.send_raw(&f)?;
            calls.insert(reply);
        }
    }
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut reason = String::new();
    let until = Instant::now() + k.duration();
    while let Some(f) = p.recv(until.saturating_duration_since(Instant::now())) {
        if calls.contains(&f.handle) {
            match control::decode_frame::<CallReply>(&f) {
                Ok(CallReply::Ok(_)) => ok += 1,
                Ok(CallReply::Err(e)) => {
                    refused += 1;
                    reason = e.to_string().chars().take(120).collect();
                }
                Err(_) => refused += 1,
            }
        } else if f.handle == handles::CALL_SERVICE && !f.is_dead() && f.reply_to != 0 {
            let no = CallReply::Err(RemoteError::Failed("hostile target: refused".into()));
            p.send(Frame::new(
                f.src_id,
                f.reply_to,
                Enc::Control,
                control::encode(&no),
            ))?;
        }
        if Instant::now() >= until {
            break;
        }
    }
    k.report("fakes", fakes.len());
    k.report("accepted", ok);
    k.report("refused", refused);
    k.report("reason", reason.replace('\n', " "));
    Ok(())
}

/// Review: the reason of a DEL_ROUTE is copied into a dead message for
/// every waiter whose respondent is the withdrawn id.
fn fat_del_route(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let path = largest_file(&plan)?;
    let parent = PARENT.load(Ordering::SeqCst);
    let mut calls = std::collections::HashSet::new();
    for _ in 0..k.count {
        let data = p.handle();
        let args = FetchArgs {
            path: path.clone(),
            sender: Sender {
                context: p.me,
                handle: data,
            },
            delta: None,
            resume: None,
            sparse: false,
        };
        calls.insert(p.call(plan.server, "ferrogen.files", "fetch", &args)?);
    }
    let mut answered = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered < k.count {
        let Some(f) = p.recv(deadline.saturating_duration_since(Instant::now())) else {
            break;
        };
        if calls.contains(&f.handle) {
            answered += 1;
        }
    }
    k.report("fetches_answered", answered);
    let mib: usize = std::env::var("HOSTILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let del = ferrogen::wire::control::DelRoute {
        id: p.me,
        reason: "x".repeat(mib << 20),
    };
    p.send(Frame::new(
        parent,
        handles::DEL_ROUTE,
        Enc::Control,
        control::encode(&del),
    ))?;
    k.report("del_sent", mib);
    let until = Instant::now() + k.duration();
    while Instant::now() < until && p.recv(Duration::from_millis(100)).is_some() {}
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    Ok(())
}

/// Review: an error text from a target is not length-capped.
fn fat_error(p: &mut Peer, _k: &Knobs) -> Result<(), String> {
    let mib: usize = std::env::var("HOSTILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = p
            .recv(deadline.saturating_duration_since(Instant::now()))
            .ok_or("no push call came")?;
        if f.handle != handles::CALL_SERVICE || f.is_dead() {
            continue;
        }
        let call: ServiceCall = control::decode_frame(&f).map_err(|e| e.to_string())?;
        let push = call.method == "push" || call.method == "push_open";
        let text = if push {
            "\x1b[2J".to_string() + &"E".repeat(mib << 20)
        } else {
            "no".to_string()
        };
        let no = CallReply::Err(RemoteError::Failed(text));
        p.send(Frame::new(
            f.src_id,
            f.reply_to,
            Enc::Control,
            control::encode(&no),
        ))?;
        if push {
            break;
        }
    }
    while p.recv(Duration::from_secs(5)).is_some() {}
    Ok(())
}

/// Review: ids of our own to speak for (one ALLOCATE_ID, then ADD_ROUTE).
fn own_ids(p: &mut Peer, count: usize) -> Result<Vec<ContextId>, String> {
    let parent = PARENT.load(Ordering::SeqCst);
    let mut ids = Vec::new();
    while ids.len() < count {
        let reply_to = p.handle();
        let mut f = Frame::new(
            parent,
            handles::ALLOCATE_ID,
            Enc::Control,
            bytes::Bytes::new(),
        );
        f.reply_to = reply_to;
        p.send(f)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let block: ferrogen::wire::control::IdBlock = loop {
            let f = p
                .recv(deadline.saturating_duration_since(Instant::now()))
                .ok_or("no id block")?;
            if f.handle == reply_to {
                break control::decode_frame(&f).map_err(|e| format!("id block: {e}"))?;
            }
        };
        ids.extend((block.start..block.end).take(count - ids.len()));
    }
    for &id in &ids {
        let add = AddRoute {
            id,
            name: format!("fake.{id}"),
        };
        p.send(Frame::new(
            parent,
            handles::ADD_ROUTE,
            Enc::Control,
            control::encode(&add),
        ))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(ids)
}

fn fake_small(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    let plan = p.wait_push_plan(Duration::from_secs(30))?;
    let paths: Vec<RawPath> = plan_files(&plan)
        .into_iter()
        .filter(|(_, size)| *size <= SMALL_FILE_MAX)
        .map(|(src, _)| src)
        .collect();
    let ids = own_ids(p, k.count as usize)?;
    let args = FetchSmallArgs { paths };
    let call = ServiceCall {
        service: "ferrogen.files".into(),
        method: "fetch_small".into(),
        args: control::encode(&args).to_vec(),
    };
    let payload = control::encode(&call);
    p.set_reading(false);
    for &id in &ids {
        for _ in 0..4 {
            let mut f = Frame::new(
                plan.server,
                handles::CALL_SERVICE,
                Enc::Control,
                payload.clone(),
            );
            f.reply_to = p.handle();
            f.src_id = id;
            f.auth_id = p.me;
            p.send_raw(&f)?;
        }
    }
    k.report("fakes", ids.len());
    std::thread::sleep(k.duration());
    Ok(())
}

/// See [`ATTACKS`]: `offer_lies`.
fn offer_lies(p: &mut Peer, k: &Knobs) -> Result<(), String> {
    use ferrogen::files::source::{Offer, OfferArgs};
    let (call, args) = p.wait_call("offer", Duration::from_secs(30))?;
    let args: OfferArgs = control::decode(&args).map_err(|e| e.to_string())?;
    let asked = args
        .srcs
        .first()
        .and_then(|s| {
            s.as_path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let file = |rel: Vec<u8>, size: u64| PlanEntry::File {
        src: "/etc/hostname".into(),
        rel: RawPath::from_bytes(rel),
        size,
        stamp: None,
    };
    let top_dir = |rel: Vec<u8>| PlanEntry::Dir {
        rel: RawPath::from_bytes(rel),
        mode: 0o755,
        mtime_sec: 0,
        mtime_nsec: 0,
        owner: None,
        xattrs: Vec::new(),
    };
    let under = |tail: &[u8]| {
        let mut v = asked.as_bytes().to_vec();
        v.extend_from_slice(tail);
        v
    };
    let entries = match k.count {
        0 => vec![
            file(b"escape.txt".to_vec(), 5),
            PlanEntry::Dir {
                rel: "notasked".into(),
                mode: 0o755,
                mtime_sec: 0,
                mtime_nsec: 0,
                owner: None,
                xattrs: Vec::new(),
            },
            PlanEntry::Symlink {
                rel: "evil-link".into(),
                target: "/etc".into(),
                mtime_sec: 0,
                mtime_nsec: 0,
                owner: None,
                xattrs: Vec::new(),
            },
        ],
        1 => vec![
            file(under(b"/../../escape.txt"), 5),
            file(under(b"/a\0b"), 5),
            file(under(b"//abs"), 5),
            file(under(b"/./dot"), 5),
        ],
        2 => vec![
            top_dir(under(b"")),
            file(under(b"/one"), 10),
            file(under(b"/two"), 10),
        ],
        _ => vec![top_dir(under(b"")), file(under(b"/one"), 10)],
    };
    k.report("entries", entries.len());
    p.reply_ok(
        &call,
        &Offer {
            entries,
            into_dir: false,
            total_bytes: 20,
            ..Default::default()
        },
    )?;
    if k.count >= 3 {
        let (call, _) = p.wait_call("fetch", Duration::from_secs(30))?;
        let ack = p.handle();
        let reply = FetchReply {
            meta: ferrogen::files::meta::FileMeta {
                size: 1 << 40,
                mode: 0o644,
                owner: "root".into(),
                group: "root".into(),
                uid: 0,
                gid: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                atime_sec: 0,
                atime_nsec: 0,
                xattrs: Vec::new(),
            },
            ack: Sender {
                context: p.me,
                handle: ack,
            },
        };
        p.reply_ok(&call, &reply)?;
        k.report("oversize", "announced");
    } else if k.count == 2 {
        let (call, _) = p.wait_call("fetch_small", Duration::from_secs(30))?;
        let data = vec![b'x'; 100_000];
        let meta = ferrogen::files::meta::FileMeta {
            size: data.len() as u64,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            atime_sec: 0,
            atime_nsec: 0,
            xattrs: Vec::new(),
        };
        let digest = *blake3::hash(&data).as_bytes();
        let one = ferrogen::files::SmallFile::Data {
            meta,
            data: data.into(),
            digest,
        };
        p.reply_ok(&call, &vec![one.clone(), one])?;
        k.report("oversize", "sent");
    }
    std::thread::sleep(k.duration());
    Ok(())
}
