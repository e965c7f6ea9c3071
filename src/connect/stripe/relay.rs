//! `ferrogen __attach NAME`: the far end of a stripe's transport. It
//! hands its stdio pipes to the context over the context's stripe socket
//! (`SCM_RIGHTS`), so the context reads and writes the transport's pipes
//! itself; where they are not pipes, it copies between its stdio and the
//! socket instead. Apart: it runs as its own process, blocking, with no
//! router.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;

/// First byte `__attach` sends on the stripe socket: its stdin and stdout
/// go with it as `SCM_RIGHTS`, and it relays nothing.
pub(super) const HAND_OFF: u8 = b'P';

/// First byte `__attach` sends on the stripe socket: no descriptors; it
/// copies between its stdio and the socket.
pub(super) const COPY: u8 = b'C';

/// `ferrogen __attach NAME`: copies stdin to the socket and the socket to
/// stdout until either side closes. Returns the exit code.
pub fn relay(name: &str) -> i32 {
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ERROR bad stripe socket name: {e}");
            return 2;
        }
    };
    let sock = match std::os::unix::net::UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ERROR cannot reach the context's stripe socket {name}: {e}");
            return 1;
        }
    };
    // Abstract names are visible to every local user: make sure the socket
    // is our own context's before the controller's token goes through it.
    let my_uid = rustix::process::geteuid().as_raw();
    match rustix::net::sockopt::socket_peercred(&sock) {
        Ok(cred) if cred.uid.as_raw() == my_uid => {}
        Ok(cred) => {
            eprintln!(
                "ERROR the stripe socket {name} belongs to uid {}, not to this account (uid {my_uid}); refusing to relay",
                cred.uid.as_raw()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("ERROR cannot check who owns the stripe socket {name}: {e}");
            return 1;
        }
    }
    // Handed over, the transport's bytes skip this process: over the loopback
    // sshd, a relay's two copies (pipe to socket, socket to pipe) and two
    // wake-ups per chunk for every stripe.
    if is_pipe(rustix::stdio::stdin()) && is_pipe(rustix::stdio::stdout()) {
        return hand_off(&sock, name);
    }
    if let Err(e) = (&sock).write_all(&[COPY]) {
        eprintln!("ERROR cannot write to the stripe socket {name}: {e}");
        return 1;
    }
    let Ok(mut down) = sock.try_clone() else {
        eprintln!("ERROR cannot clone the stripe socket");
        return 1;
    };
    let mut up = sock;
    // Two plain threads: a relay has nothing else to do, and blocking
    // copies with large buffers are the cheapest way to move the bytes.
    let t = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = copy_large(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut stdout = std::io::stdout().lock();
    let _ = copy_large(&mut down, &mut stdout);
    let _ = stdout.flush();
    drop(t);
    0
}

/// True if `fd` is a pipe (or FIFO).
fn is_pipe(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    })
}

/// Sends stdin and stdout to the context, points them at `/dev/null` (the
/// context holds the pipes now: their ends close when it is done), and
/// waits for the context to close the socket: the transport's session
/// lasts as long as the stripe.
fn hand_off(sock: &std::os::unix::net::UnixStream, name: &str) -> i32 {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let fds = [rustix::stdio::stdin(), rustix::stdio::stdout()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        eprintln!("ERROR cannot hand the stripe's pipes over: no room for them");
        return 1;
    }
    let sent = sendmsg(
        sock,
        &[std::io::IoSlice::new(&[HAND_OFF])],
        &mut control,
        SendFlags::empty(),
    );
    if let Err(e) = sent {
        eprintln!("ERROR cannot hand the stripe's pipes to {name}: {e}");
        return 1;
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    // Nothing is sent on the socket after this; a read returns at its end.
    let mut byte = [0u8; 1];
    let mut sock = sock;
    while let Ok(n) = sock.read(&mut byte) {
        if n == 0 {
            break;
        }
    }
    0
}

fn copy_large<R: Read, W: Write>(r: &mut R, w: &mut W) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        w.flush()?;
        total += n as u64;
    }
}
