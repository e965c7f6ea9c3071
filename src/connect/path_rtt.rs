//! The round trip of a path, read from the kernel while a connection over
//! it is still being set up.
//!
//! A push decides how many stripe transports to start before its primary
//! connection is up, and the right number depends on the round trip (one
//! ssh channel moves its 2 MiB window per round trip). Until the context
//! answers a ping, the controller has only the clock: "not up after 500 ms"
//! stood for "a long path". That proxy is wrong where the start-up costs
//! CPU rather than round trips: on the shared testbed at 20 ms the context
//! is up after 0.55 s, so a 20 ms push started the eight transports a 100 ms
//! path would get, and their ssh handshakes took the CPU the delta's
//! hashing needed (1 GiB, 1 MiB changed: 2.04 s against 1.56 s with no
//! early stripes). The kernel knows better and sooner: ssh's TCP connection
//! to its first hop has a measured round trip from its SYN on, one round
//! trip after ssh starts. [`tcp_path`] reads it from ssh's socket (a
//! duplicate of ssh's descriptor, taken through a pidfd: ssh is our child,
//! so no privilege is needed beyond what `/proc/PID/fd` already shows).
//!
//! Where there is no TCP socket in the process (a `ProxyCommand` or
//! `ProxyJump` talks through pipes, a `ControlMaster` through a Unix
//! socket) or the kernel refuses (Yama's `ptrace_scope` = 2, or a kernel
//! before 5.6), the answer is `None` and the caller keeps its clock rule.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where a launched process publishes its pid, so that the one who asked
/// for the connection can look at it while the connection is being made
/// (see [`tcp_path`]). Cloning shares the slot. Not part of what a
/// connection *is*: two specs that differ only in their watch are equal,
/// and the watch is not sent to other contexts.
#[derive(Clone, Default)]
pub struct SpawnWatch(Option<Arc<OnceLock<(u32, Instant)>>>);

impl SpawnWatch {
    /// A watch with a slot (the default has none and records nothing).
    pub fn new() -> SpawnWatch {
        SpawnWatch(Some(Arc::new(OnceLock::new())))
    }

    /// The pid of the process launched for the spec, once it is running.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(|slot| slot.get().map(|s| s.0))
    }

    /// What the kernel has measured so far on the process's connection
    /// ([`tcp_path`]), with a loopback peer that answered like a server
    /// on this machine taken for the path itself ([`PathReading::judged`]).
    pub fn reading(&self) -> Option<PathReading> {
        let (pid, started) = *self.0.as_ref()?.get()?;
        tcp_path(pid).map(|r| r.judged(started.elapsed()))
    }

    /// Records `pid`, started now (the first launch only: a spec starts
    /// one process).
    pub(crate) fn publish(&self, pid: u32) {
        if let Some(slot) = self.0.as_ref().filter(|_| pid != 0) {
            let _ = slot.set((pid, Instant::now()));
        }
    }
}

impl PartialEq for SpawnWatch {
    fn eq(&self, _: &SpawnWatch) -> bool {
        true
    }
}

impl Eq for SpawnWatch {}

impl std::fmt::Debug for SpawnWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid() {
            Some(pid) => write!(f, "SpawnWatch({pid})"),
            None => f.write_str("SpawnWatch"),
        }
    }
}

/// What the kernel measured on a process's TCP connection: its round trip
/// and whether the far end is this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathReading {
    /// The smallest round trip sample seen, which CPU delays on either end
    /// only lengthen.
    pub rtt: Duration,
    /// The connection's peer is a loopback address: ssh may be talking to
    /// a local forwarder or proxy, whose own far side the kernel cannot
    /// see, so a short round trip says nothing of the path.
    pub peer_local: bool,
    /// What the far end has sent (`None`: nothing yet).
    pub heard: Option<Heard>,
}

/// The data a connection has received so far, as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// How long ago the last of it arrived.
    pub ago: Duration,
    /// In how many segments (0 where the kernel does not count them).
    pub segments: u32,
}

/// A server on this machine sends its version line this soon after ssh
/// starts: measured on the shared testbed's loopback sshd (OpenSSH 9.2,
/// which re-executes itself for each connection), 13–20 ms from connect to
/// the line and 20–35 ms from ssh's start. A forwarder to a path of round
/// trip R answers no sooner than R after ssh connects to it (it connects
/// on, then relays the server's line back), so this tells a loopback
/// sshd from a forwarder whose path is longer than ~20 ms, the paths that
/// want stripes early.
pub const LOCAL_SERVER_ANSWER: Duration = Duration::from_millis(40);

impl PathReading {
    /// This reading, `elapsed` after the process started, with a loopback
    /// peer counted as the path's far end (`peer_local` false) when it is
    /// the server itself: near (under a millisecond) and answering within
    /// [`LOCAL_SERVER_ANSWER`] of the start. The last data heard is no
    /// earlier than the first, so a late poll only errs toward "a
    /// forwarder" (the caller's clock rule).
    pub fn judged(self, elapsed: Duration) -> PathReading {
        let answered_at = self.heard.map(|h| elapsed.saturating_sub(h.ago));
        let the_server = self.peer_local
            && self.rtt < Duration::from_millis(1)
            && answered_at.is_some_and(|t| t <= LOCAL_SERVER_ANSWER);
        PathReading {
            peer_local: self.peer_local && !the_server,
            ..self
        }
    }
}

/// What the kernel measured on the established TCP connection of process
/// `pid` (its first one: an ssh client has one): the round trip and the
/// peer's locality. `None` when the process has no established TCP
/// connection or may not be looked at (see the module's notes).
#[cfg(target_os = "linux")]
pub fn tcp_path(pid: u32) -> Option<PathReading> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    use std::os::unix::ffi::OsStrExt;

    let pidfd = pidfd_open(
        Pid::from_raw(i32::try_from(pid).ok()?)?,
        PidfdFlags::empty(),
    )
    .ok()?;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|link| link.as_os_str().as_bytes().starts_with(b"socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let Ok(socket) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        if let Some((rtt, heard)) = socket_rtt(&socket) {
            let peer_local = rustix::net::getpeername(&socket)
                .ok()
                .flatten()
                .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                .is_none_or(|a| a.ip().is_loopback() || is_mapped_loopback(a.ip()));
            return Some(PathReading {
                rtt,
                peer_local,
                heard,
            });
        }
    }
    None
}

/// `::ffff:127.x.y.z`: loopback reached over an IPv6 socket.
#[cfg(target_os = "linux")]
fn is_mapped_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

/// [`tcp_path`] where there is no pidfd: always `None`.
#[cfg(not(target_os = "linux"))]
pub fn tcp_path(_pid: u32) -> Option<PathReading> {
    None
}

/// `TCP_ESTABLISHED` in `tcpi_state` (linux/tcp_states.h).
#[cfg(target_os = "linux")]
const TCP_ESTABLISHED: u8 = 1;

/// The round trip of `socket` if it is an established TCP connection with
/// a sample, and how long ago it last received data if it has. Written
/// against the libc crate's `tcp_info` because neither rustix nor nix
/// exposes `TCP_INFO`.
#[cfg(target_os = "linux")]
fn socket_rtt(socket: &std::os::fd::OwnedFd) -> Option<(Duration, Option<Heard>)> {
    use std::os::fd::AsRawFd;

    let mut info = std::mem::MaybeUninit::<::libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<::libc::tcp_info>() as ::libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the
    // call, `len` is a valid in/out length, and the descriptor is ours.
    let r = unsafe {
        ::libc::getsockopt(
            socket.as_raw_fd(),
            ::libc::IPPROTO_TCP,
            ::libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None; // not TCP (a Unix socket), or closed
    }
    // SAFETY: zero is a valid value for every field of this plain C
    // struct, and the kernel wrote at most `len` bytes over it.
    let info = unsafe { info.assume_init() };
    // An older kernel fills less; a min_rtt it did not write reads 0.
    let min_rtt_end = std::mem::offset_of!(::libc::tcp_info, tcpi_min_rtt) + 4;
    let min_rtt = if len as usize >= min_rtt_end {
        info.tcpi_min_rtt
    } else {
        0
    };
    let micros = if min_rtt > 0 && min_rtt != u32::MAX {
        min_rtt
    } else {
        info.tcpi_rtt
    };
    // Without data, `tcpi_last_data_recv` counts from the handshake: only
    // a kernel that reports bytes received (4.1 and later) tells the two
    // apart.
    let received_end = std::mem::offset_of!(::libc::tcp_info, tcpi_bytes_received) + 8;
    let segments_end = std::mem::offset_of!(::libc::tcp_info, tcpi_data_segs_in) + 4;
    let heard = (len as usize >= received_end && info.tcpi_bytes_received > 0).then(|| Heard {
        ago: Duration::from_millis(info.tcpi_last_data_recv.into()),
        segments: if len as usize >= segments_end {
            info.tcpi_data_segs_in
        } else {
            0
        },
    });
    (info.tcpi_state == TCP_ESTABLISHED && micros > 0)
        .then(|| (Duration::from_micros(micros.into()), heard))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_watch_without_a_slot_records_nothing_and_one_with_keeps_the_first_pid() {
        let none = SpawnWatch::default();
        none.publish(7);
        assert_eq!(none.pid(), None);
        let w = SpawnWatch::new();
        let shared = w.clone();
        assert_eq!(w.pid(), None);
        w.publish(41);
        w.publish(42);
        assert_eq!(shared.pid(), Some(41));
        assert_eq!(w, SpawnWatch::default(), "not part of a spec's identity");
    }

    #[test]
    fn a_loopback_peer_is_the_path_only_when_it_answered_like_a_local_server() {
        let ms = Duration::from_millis;
        let reading = |peer_local, rtt, ago: Option<Duration>| PathReading {
            rtt,
            peer_local,
            heard: ago.map(|ago| Heard { ago, segments: 2 }),
        };
        let near = Duration::from_micros(13);
        // Spoke 25 ms after ssh started (read at 30 ms, 5 ms ago): a
        // loopback sshd.
        let sshd = reading(true, near, Some(ms(5)));
        assert!(!sshd.judged(ms(30)).peer_local);
        // Spoke 60 ms after the start: a forwarder, perhaps to a long path.
        assert!(reading(true, near, Some(ms(5))).judged(ms(65)).peer_local);
        // Has not spoken yet, or its round trip is not a loopback's.
        assert!(reading(true, near, None).judged(ms(30)).peer_local);
        assert!(reading(true, ms(2), Some(ms(5))).judged(ms(30)).peer_local);
        // A far peer stays far.
        assert!(!reading(false, ms(20), None).judged(ms(30)).peer_local);
        // Heard "longer ago" than the process exists: at its start.
        assert!(!reading(true, near, Some(ms(90))).judged(ms(30)).peer_local);
    }

    #[test]
    fn the_round_trip_of_a_childs_tcp_connection_is_read_and_a_child_without_one_has_none() {
        use std::io::{BufRead, BufReader, Write};
        use std::process::{Command, Stdio};

        // A child holding an established loopback TCP connection to a
        // listener of ours, as ssh holds its connection to the host.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo up && read -r _");
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn bash");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "up", "the child connected");
        let reading = tcp_path(child.id());
        // The far end speaks: the reading says how long ago.
        let (mut accepted, _) = listener.accept().expect("accept");
        accepted.write_all(b"SSH-2.0-x\r\n").expect("write");
        let mut heard = None;
        for _ in 0..100 {
            heard = tcp_path(child.id()).and_then(|r| r.heard);
            if heard.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.stdin.take().map(|mut s| s.write_all(b"x\n"));
        let _ = child.wait();
        let reading = reading.expect("a round trip for the child's established connection");
        assert!(reading.peer_local, "127.0.0.1 is this machine: {reading:?}");
        assert_eq!(reading.heard, None, "nothing sent yet: {reading:?}");
        let heard = heard.expect("the far end's line was heard");
        assert!(heard.ago < Duration::from_secs(1), "{heard:?}");
        assert!(heard.segments <= 1, "one line, one segment: {heard:?}");
        let rtt = reading.rtt;
        assert!(
            rtt < Duration::from_millis(100),
            "loopback round trip {rtt:?}"
        );

        let mut sleeper = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let none = tcp_path(sleeper.id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert_eq!(none, None, "a process with no socket");
        assert_eq!(tcp_path(u32::MAX), None, "no such process");
    }
}
