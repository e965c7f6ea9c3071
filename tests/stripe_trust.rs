//! The stripe socket against other local users and silent peers (issue 9,
//! finding 8). A context listens for stripes on an abstract Unix socket,
//! whose name every local user can see in /proc/net/unix; these tests play
//! such a user (`nobody`, through `setpriv`) and a peer that connects and
//! says nothing, and check from outside that:
//!
//! * a connection from another uid is closed before its token is read;
//! * silent connections are bounded and closed after a short deadline;
//! * an accept error never gives the socket name up;
//! * the `__attach` relay refuses a socket that another user bound;
//! * what `__attach` hands over is checked: a peer of the same uid that
//!   sends descriptors that are not a stripe's pipes, or too many, is
//!   refused and closed, and a stripe whose stdio are sockets (no pipes to
//!   hand over) is relayed by copying.
//!
//! The hostile clients are small Perl scripts (perl-base is part of every
//! Debian system) run as `nobody`.

mod filectl;

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrogen::connect::stripe::{self, HELLO_DEADLINE, MAX_PENDING, STRIPE_SERVICE, StripeOffer};
use ferrogen::connect::{ContextInfo, Method};
use ferrogen::wire::{Enc, Frame, codec, control, handles};
use filectl::{Ctl, child, ctl};

/// Runs `perl -e script args...` as `nobody`.
fn perl_as_nobody(script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "perl",
        "-e",
        script,
    ]);
    c.args(args);
    c
}

fn controller() -> Ctl {
    ctl(4 << 20, Duration::from_secs(30))
}

async fn offer(c: &Ctl, ctx: &ContextInfo) -> StripeOffer {
    c.router
        .call_service(ctx.id, STRIPE_SERVICE, "listen", &())
        .await
        .expect("listen")
}

/// The first frame of a stripe, carrying `token`.
fn stripe_hello(ctx: &ContextInfo, token: &str) -> Vec<u8> {
    // StripeHello { token } encodes as the bare string.
    let mut f = Frame::new(ctx.id, handles::HELLO, Enc::Control, control::encode(token));
    f.src_id = 0;
    f.auth_id = 0;
    codec::encode_to_vec(&f)
}

fn connect(name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_from_another_uid_is_refused_even_with_the_token() {
    let c = controller();
    let ctx = child(&c, None).await;
    let o = offer(&c, &ctx).await;
    // nobody has stolen the token (say from a process listing) and sends
    // it; it reports how many bytes came back before EOF.
    let script = r#"
        use Socket;
        $SIG{PIPE} = 'IGNORE';
        alarm 20;
        socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        connect($s, pack_sockaddr_un("\0" . $ARGV[0])) or die "connect: $!";
        binmode STDIN; local $/; my $d = <STDIN>;
        syswrite($s, $d);
        my $got = 0; my $buf;
        while (1) { my $n = sysread($s, $buf, 4096); last if !$n; $got += $n; }
        print "got:$got\n";
    "#;
    let mut child = perl_as_nobody(script, &[&o.socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv perl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&stripe_hello(&ctx, &o.token))
        .expect("write the hello");
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("perl ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "got:0",
        "another uid got an answer: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The socket still serves the real controller.
    assert_eq!(
        stripe::open(
            &c.router,
            ctx.id,
            &Method::Local,
            1,
            Duration::from_secs(10)
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_bounded_and_closed_after_the_deadline() {
    let c = controller();
    let ctx = child(&c, None).await;
    let o = offer(&c, &ctx).await;
    let socks: Vec<_> = (0..100)
        .map(|_| connect(&o.socket).expect("connect"))
        .collect();
    // Past the pending cap, connections are closed at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed_now = socks.iter().filter(|s| is_closed(s)).count();
    assert!(
        closed_now >= 100 - MAX_PENDING,
        "only {closed_now} of 100 silent connections closed at once"
    );
    // The rest are closed once the deadline passes.
    let t0 = Instant::now();
    while socks.iter().any(|s| !is_closed(s)) {
        assert!(
            t0.elapsed() < HELLO_DEADLINE + Duration::from_secs(5),
            "silent connections outlived the deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a real stripe still attaches.
    assert_eq!(
        stripe::open(
            &c.router,
            ctx.id,
            &Method::Local,
            1,
            Duration::from_secs(10)
        )
        .await,
        1
    );
}

/// True once the peer has closed the connection (EOF on a non-blocking read).
fn is_closed(s: &std::os::unix::net::UnixStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 16];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_error_does_not_give_the_socket_name_up() {
    let c = controller();
    let ctx = child(&c, None).await;
    let o = offer(&c, &ctx).await;
    // Starve the context of file descriptors so accept fails (EMFILE).
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", ctx.pid))
        .expect("fd dir")
        .count();
    let limit = |soft: usize| {
        let out = Command::new("prlimit")
            .args(["--pid", &ctx.pid.to_string(), &format!("--nofile={soft}:")])
            .output()
            .expect("prlimit");
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    limit(open_fds);
    let waiting: Vec<_> = (0..3)
        .map(|_| connect(&o.socket).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    limit(4096);
    drop(waiting);
    // The name is still the context's: a real stripe attaches.
    assert_eq!(
        stripe::open(
            &c.router,
            ctx.id,
            &Method::Local,
            1,
            Duration::from_secs(10)
        )
        .await,
        1,
        "the listener was lost after an accept error"
    );
}

#[test]
fn the_relay_refuses_a_socket_bound_by_another_user() {
    let name = format!("ferrogen-stripe-squat-{}", std::process::id());
    let script = r#"
        use Socket; use IO::Handle;
        socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        bind($s, pack_sockaddr_un("\0" . $ARGV[0])) or die "bind: $!";
        listen($s, 5) or die "listen: $!";
        print "ready\n"; STDOUT->flush;
        accept(my $c, $s) or die "accept: $!";
        my $got = 0; my $buf;
        while (1) { my $n = sysread($c, $buf, 4096); last if !$n; $got += $n; }
        print "got:$got\n";
    "#;
    let mut squatter = perl_as_nobody(script, &[&name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv perl");
    let mut out = squatter.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).expect("ready line");
    assert_eq!(&ready, b"ready\n");

    let mut relay = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([stripe::ATTACH_ARG, &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrogen __attach");
    let mut stdin = relay.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"the controller's secret token");
    drop(stdin);
    let res = relay.wait_with_output().expect("relay ran");
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("squatter output");
    let _ = squatter.wait();
    assert_eq!(rest.trim(), "got:0", "the squatter received data");
}

/// The frame that came back on `s` (a stripe's answer), within 10 s.
fn read_answer(s: &mut std::os::unix::net::UnixStream) -> Frame {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    use tokio_util::codec::Decoder;
    let mut codec = ferrogen::wire::FrameCodec::new(4096);
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = codec.decode(&mut buf).expect("a frame") {
            return f;
        }
        let n = s.read(&mut chunk).expect("the answer");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_whose_stdio_are_sockets_is_relayed_by_copying() {
    let c = controller();
    let ctx = child(&c, None).await;
    let o = offer(&c, &ctx).await;
    // The transport's stdio: one socket of a pair for both (as an ssh
    // server built to use socketpairs would give), the other end ours.
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let theirs_out = theirs.try_clone().expect("clone");
    let relay = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([stripe::ATTACH_ARG, &o.socket])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrogen __attach");
    ours.write_all(&stripe_hello(&ctx, &o.token))
        .expect("write the hello");
    let answer = tokio::task::spawn_blocking(move || (read_answer(&mut ours), ours))
        .await
        .expect("join");
    assert_eq!(answer.0.handle, handles::HELLO, "{:?}", answer.0);
    assert!(!answer.0.is_dead(), "{:?}", answer.0);
    // Ours closed: the relay copies the end through and exits.
    drop(answer.1);
    let out = tokio::task::spawn_blocking(move || relay.wait_with_output())
        .await
        .expect("join")
        .expect("relay ran");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `first` with `fds` as `SCM_RIGHTS` on a new connection to the
/// stripe socket `name`; true once the context has closed it.
fn hand_over(name: &str, first: u8, fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let s = connect(name).expect("connect");
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    sendmsg(
        &s,
        &[std::io::IoSlice::new(&[first])],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    let t0 = Instant::now();
    while !is_closed(&s) {
        if t0.elapsed() > HELLO_DEADLINE + Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_descriptors_that_are_not_a_stripes_pipes_are_refused() {
    use std::os::fd::AsFd;
    let c = controller();
    let ctx = child(&c, None).await;
    let o = offer(&c, &ctx).await;
    let name = o.socket.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let file = tempfile::tempfile().expect("tempfile");
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        [
            // A regular file and a socket, not pipes.
            hand_over(&name, b'P', &[file.as_fd(), a.as_fd()]),
            // A pipe's ends the wrong way round.
            hand_over(&name, b'P', &[w.as_fd(), r.as_fd()]),
            // Three descriptors.
            hand_over(&name, b'P', &[r.as_fd(), w.as_fd(), b.as_fd()]),
            // One.
            hand_over(&name, b'P', &[r.as_fd()]),
            // Descriptors with the copy byte, and an unknown first byte.
            hand_over(&name, b'C', &[r.as_fd(), w.as_fd()]),
            hand_over(&name, 0x17, &[]),
        ]
    })
    .await
    .expect("join");
    assert_eq!(closed, [true; 6], "each refused and closed");
    // And a real stripe still attaches.
    assert_eq!(
        stripe::open(
            &c.router,
            ctx.id,
            &Method::Local,
            1,
            Duration::from_secs(10)
        )
        .await,
        1
    );
}
