//! delayline: a userspace WAN emulator for kernels without `sch_netem`.
//!
//! It attaches to two persistent TUN devices, each living in its own network
//! namespace (`bench/netns-up` creates them), and forwards every IP packet
//! read from one to the other after a fixed one-way delay (RTT/2 by
//! default), optionally serialised at a fixed rate, through a bounded
//! tail-drop queue per direction. TCP between the namespaces is end to end:
//! nothing terminates or splits a connection, so congestion control, window
//! scaling and the SSH channel windows see a real round-trip time.
//!
//! Throughput: by default the devices are opened with `IFF_VNET_HDR` and
//! TSO/checksum offload, so the kernel hands over up-to-64 KiB GSO
//! super-packets (one `read` and one `write` per ~64 KiB instead of per
//! 1500-byte frame) while TCP still sees the device MTU. The virtio-net
//! header is forwarded untouched with the packet, so the receiving stack
//! segments/validates exactly as the sending stack asked. `--no-vnet`
//! disables that (then raise the MTU in `netns-up` instead).
//!
//! ```text
//! delayline --a /run/netns/A:tunA --b /run/netns/B:tunB --rtt-ms 20 \
//!           [--rate-mbit 0] [--limit-mib 128] [--no-vnet] [--no-rt] \
//!           [--pidfile P] [--stats-json P]
//! ```
//!
//! SIGUSR1 writes counters (stderr, and `--stats-json`); SIGTERM/SIGINT
//! write them and exit 0.
//!
//! Scheduling: a wire does not wait for a CPU, so by default the delay line
//! asks for `SCHED_FIFO` (priority 10; `--no-rt` keeps the normal policy).
//! It sleeps in `ppoll` between releases and uses a fraction of one core, so
//! it cannot starve the endpoints; without it, on a small machine busy with
//! the endpoints' own work, releases can be late by tens of milliseconds.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

// <linux/if_tun.h>
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
/// `struct virtio_net_hdr` (no `num_buffers`): what we ask the kernel for.
const VNET_HDR_LEN: usize = 10;
/// Largest packet a TUN read returns: a 64 KiB GSO packet plus the header.
const BUF_LEN: usize = 65536 + 256;
/// Packets read from one device per loop turn before looking at the other.
const BATCH: usize = 64;

static STOP: AtomicBool = AtomicBool::new(false);
static DUMP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        DUMP.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

fn die(what: &str) -> ! {
    eprintln!("delayline: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn usage(msg: &str) -> ! {
    eprintln!("delayline: {msg}");
    eprintln!(
        "usage: delayline --a NSPATH:DEV --b NSPATH:DEV [--rtt-ms MS | --one-way-ms MS] \
         [--rate-mbit MBIT] [--limit-mib MIB] [--no-vnet] [--no-rt] [--pidfile PATH] [--stats-json PATH]"
    );
    std::process::exit(2);
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Enters the network namespace at `ns_path` (this thread) and binds a new
/// TUN queue to the persistent device `dev` there.
fn attach(spec: &str, vnet: bool) -> OwnedFd {
    let Some((ns_path, dev)) = spec.rsplit_once(':') else {
        usage(&format!("bad device spec {spec:?} (want NSPATH:DEV)"))
    };
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        usage(&format!("bad device name {dev:?}"));
    }
    let c_ns = CString::new(ns_path).unwrap_or_else(|_| usage("NUL in path"));
    // SAFETY: plain syscalls on owned descriptors.
    unsafe {
        let nsfd = libc::open(c_ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if nsfd < 0 {
            die(ns_path);
        }
        if libc::setns(nsfd, libc::CLONE_NEWNET) < 0 {
            die(&format!("setns {ns_path}"));
        }
        libc::close(nsfd);
        let fd = libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        );
        if fd < 0 {
            die("/dev/net/tun");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        // struct ifreq: 16-byte name, then a union whose first member is
        // the short flags; 40 bytes in all.
        let mut ifr = [0u8; 40];
        ifr[..dev.len()].copy_from_slice(dev.as_bytes());
        let flags = IFF_TUN | IFF_NO_PI | if vnet { IFF_VNET_HDR } else { 0 };
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        if libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) < 0 {
            die(&format!("TUNSETIFF {dev} in {ns_path}"));
        }
        if vnet {
            let hs: libc::c_int = VNET_HDR_LEN as libc::c_int;
            if libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &hs) < 0 {
                die("TUNSETVNETHDRSZ");
            }
            let off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            if libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, off as libc::c_ulong) < 0 {
                die("TUNSETOFFLOAD");
            }
        }
        fd
    }
}

struct Packet {
    release_ns: u64,
    /// Bytes on the wire (without the virtio header).
    wire: usize,
    buf: Vec<u8>,
    len: usize,
}

#[derive(Default)]
struct Counters {
    rx_pkts: u64,
    rx_bytes: u64,
    tx_pkts: u64,
    tx_bytes: u64,
    drops: u64,
    write_errors: u64,
    max_queued_bytes: u64,
    max_queued_pkts: u64,
    max_pkt: u64,
    /// Worst lateness of a release (scheduling), microseconds.
    max_late_us: u64,
    /// Packets released more than 1 ms late.
    late_over_1ms: u64,
}

struct Direction {
    name: &'static str,
    input: OwnedFd,
    output: i32,
    queue: VecDeque<Packet>,
    queued_bytes: u64,
    last_depart_ns: u64,
    c: Counters,
}

struct Link {
    delay_ns: u64,
    /// Bytes per nanosecond; 0 = unlimited.
    rate_bpns: f64,
    limit_bytes: u64,
    hdr: usize,
    pool: Vec<Vec<u8>>,
}

impl Link {
    fn buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_else(|| vec![0u8; BUF_LEN])
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.len() == BUF_LEN && self.pool.len() < 512 {
            self.pool.push(buf);
        }
    }

    /// Reads up to BATCH packets from `d.input` into its queue.
    fn ingest(&mut self, d: &mut Direction) {
        for _ in 0..BATCH {
            let mut buf = self.buffer();
            // SAFETY: buf is BUF_LEN bytes.
            let n = unsafe { libc::read(d.input.as_raw_fd(), buf.as_mut_ptr().cast(), BUF_LEN) };
            if n <= 0 {
                self.recycle(buf);
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                        _ => die(&format!("read ({})", d.name)),
                    }
                }
                return;
            }
            let n = n as usize;
            let t = now_ns();
            let wire = n.saturating_sub(self.hdr);
            d.c.rx_pkts += 1;
            d.c.rx_bytes += wire as u64;
            d.c.max_pkt = d.c.max_pkt.max(wire as u64);
            if d.queued_bytes + wire as u64 > self.limit_bytes {
                d.c.drops += 1;
                self.recycle(buf);
                continue;
            }
            let mut depart = t;
            if self.rate_bpns > 0.0 {
                depart = depart.max(d.last_depart_ns) + (wire as f64 / self.rate_bpns) as u64;
                d.last_depart_ns = depart;
            }
            // Small packets (acks) get an exact-size copy so a queue full of
            // them does not pin 64 KiB buffers.
            let buf = if n < BUF_LEN / 4 {
                let small = buf[..n].to_vec();
                self.recycle(buf);
                small
            } else {
                buf
            };
            d.queue.push_back(Packet {
                release_ns: depart + self.delay_ns,
                wire,
                buf,
                len: n,
            });
            d.queued_bytes += wire as u64;
            d.c.max_queued_bytes = d.c.max_queued_bytes.max(d.queued_bytes);
            d.c.max_queued_pkts = d.c.max_queued_pkts.max(d.queue.len() as u64);
        }
    }

    /// Writes every packet that is due.
    fn flush(&mut self, d: &mut Direction, t: u64) {
        while let Some(p) = d.queue.front() {
            if p.release_ns > t {
                return;
            }
            // SAFETY: p.buf holds at least p.len bytes.
            let n = unsafe { libc::write(d.output, p.buf.as_ptr().cast(), p.len) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                    return; // device busy: retry on the next turn
                }
                d.c.write_errors += 1;
            } else {
                d.c.tx_pkts += 1;
                d.c.tx_bytes += p.wire as u64;
            }
            let late = (t - p.release_ns) / 1000;
            d.c.max_late_us = d.c.max_late_us.max(late);
            d.c.late_over_1ms += u64::from(late > 1000);
            let p = d.queue.pop_front().expect("front exists");
            d.queued_bytes -= p.wire as u64;
            self.recycle(p.buf);
        }
    }
}

fn stats_json(dirs: &[&Direction], args: &Args) -> String {
    let mut directions = serde_json::Map::new();
    for d in dirs {
        let c = &d.c;
        directions.insert(
            d.name.to_string(),
            serde_json::json!({
                "rx_pkts": c.rx_pkts,
                "rx_bytes": c.rx_bytes,
                "tx_pkts": c.tx_pkts,
                "tx_bytes": c.tx_bytes,
                "drops": c.drops,
                "write_errors": c.write_errors,
                "max_queued_bytes": c.max_queued_bytes,
                "max_queued_pkts": c.max_queued_pkts,
                "max_pkt": c.max_pkt,
                "max_late_us": c.max_late_us,
                "late_over_1ms": c.late_over_1ms,
            }),
        );
    }
    serde_json::json!({
        "pid": std::process::id(),
        "one_way_ms": args.one_way_ms,
        "rate_mbit": args.rate_mbit,
        "limit_bytes": args.limit_bytes,
        "vnet": args.vnet,
        "realtime": args.realtime,
        "directions": directions,
    })
    .to_string()
}

fn report(dirs: &[&Direction], args: &Args) {
    let json = stats_json(dirs, args);
    eprintln!("delayline: {json}");
    if let Some(p) = &args.stats_json {
        let tmp = format!("{p}.tmp");
        if std::fs::write(&tmp, format!("{json}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
}

struct Args {
    a: String,
    b: String,
    one_way_ms: f64,
    rate_mbit: f64,
    limit_bytes: u64,
    vnet: bool,
    pidfile: Option<String>,
    stats_json: Option<String>,
    realtime: bool,
}

fn parse_args() -> Args {
    let mut a = None;
    let mut b = None;
    let mut one_way_ms = 0.0;
    let mut rate_mbit = 0.0;
    let mut limit_bytes = 128u64 << 20;
    let mut vnet = true;
    let mut pidfile = None;
    let mut stats_json = None;
    let mut realtime = true;
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> f64 {
        v.and_then(|s| s.parse::<f64>().ok())
            .filter(|x| x.is_finite() && *x >= 0.0)
            .unwrap_or_else(|| usage(&format!("{what} needs a non-negative number")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--a" | "-a" => a = it.next(),
            "--b" | "-b" => b = it.next(),
            "--rtt-ms" => one_way_ms = num(it.next(), "--rtt-ms") / 2.0,
            "--one-way-ms" => one_way_ms = num(it.next(), "--one-way-ms"),
            "--rate-mbit" => rate_mbit = num(it.next(), "--rate-mbit"),
            "--limit-mib" => limit_bytes = (num(it.next(), "--limit-mib") * 1048576.0) as u64,
            "--no-vnet" => vnet = false,
            "--no-rt" => realtime = false,
            "--pidfile" => pidfile = it.next(),
            "--stats-json" => stats_json = it.next(),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    Args {
        a: a.unwrap_or_else(|| usage("--a is required")),
        b: b.unwrap_or_else(|| usage("--b is required")),
        one_way_ms,
        rate_mbit,
        limit_bytes,
        vnet,
        pidfile,
        stats_json,
        realtime,
    }
}

fn main() {
    let args = parse_args();
    // SAFETY: prctl/sigaction with valid arguments.
    unsafe {
        // Wake up on time: the default 50 µs slack would blur short delays.
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP] {
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
    let mut policy = "normal";
    if args.realtime {
        let sp = libc::sched_param { sched_priority: 10 };
        // SAFETY: valid sched_param for this process.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &sp) } == 0 {
            policy = "SCHED_FIFO 10";
        } else {
            eprintln!(
                "delayline: SCHED_FIFO refused ({}); normal scheduling",
                std::io::Error::last_os_error()
            );
        }
    }
    let fa = attach(&args.a, args.vnet);
    let fb = attach(&args.b, args.vnet);
    let (ra, rb) = (fa.as_raw_fd(), fb.as_raw_fd());
    let mut ab = Direction {
        name: "a_to_b",
        input: fa,
        output: rb,
        queue: VecDeque::new(),
        queued_bytes: 0,
        last_depart_ns: 0,
        c: Counters::default(),
    };
    let mut ba = Direction {
        name: "b_to_a",
        input: fb,
        output: ra,
        queue: VecDeque::new(),
        queued_bytes: 0,
        last_depart_ns: 0,
        c: Counters::default(),
    };
    let mut link = Link {
        delay_ns: (args.one_way_ms * 1e6) as u64,
        rate_bpns: args.rate_mbit * 1e6 / 8.0 / 1e9,
        limit_bytes: args.limit_bytes,
        hdr: if args.vnet { VNET_HDR_LEN } else { 0 },
        pool: Vec::new(),
    };
    if let Some(p) = &args.pidfile {
        let tmp = format!("{p}.tmp");
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| writeln!(f, "{}", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, p));
        if let Err(e) = ok {
            eprintln!("delayline: {p}: {e}");
            std::process::exit(1);
        }
    }
    eprintln!(
        "delayline: pid {} one-way {:.3} ms, rate {}, queue limit {} MiB/direction, vnet {}, {policy}",
        std::process::id(),
        args.one_way_ms,
        if args.rate_mbit > 0.0 {
            format!("{} Mbit/s", args.rate_mbit)
        } else {
            "unlimited".into()
        },
        args.limit_bytes >> 20,
        args.vnet
    );
    let mut pfd = [
        libc::pollfd {
            fd: ra,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: rb,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !STOP.load(Ordering::Relaxed) {
        if DUMP.swap(false, Ordering::Relaxed) {
            report(&[&ab, &ba], &args);
        }
        let t = now_ns();
        link.flush(&mut ab, t);
        link.flush(&mut ba, t);
        let next = [ab.queue.front(), ba.queue.front()]
            .into_iter()
            .flatten()
            .map(|p| p.release_ns)
            .min();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let tsp = match next {
            Some(n) => {
                let w = n.saturating_sub(now_ns());
                ts.tv_sec = (w / 1_000_000_000) as libc::time_t;
                ts.tv_nsec = (w % 1_000_000_000) as libc::c_long;
                &ts as *const libc::timespec
            }
            None => std::ptr::null(),
        };
        // SAFETY: two valid pollfds; ts outlives the call.
        let r = unsafe { libc::ppoll(pfd.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            die("ppoll");
        }
        if pfd[0].revents & libc::POLLIN != 0 {
            link.ingest(&mut ab);
        }
        if pfd[1].revents & libc::POLLIN != 0 {
            link.ingest(&mut ba);
        }
        if (pfd[0].revents | pfd[1].revents) & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
        {
            eprintln!("delayline: device error or hangup; exiting");
            break;
        }
    }
    report(&[&ab, &ba], &args);
    if let Some(p) = &args.pidfile {
        let _ = std::fs::remove_file(p);
    }
}
