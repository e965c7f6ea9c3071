//! `ferrogen __attach NAME`: the far end of a stripe's transport, copying
//! its stdio to the context's stripe socket. Apart: it runs as its own
//! process, blocking, with no router.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;

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
