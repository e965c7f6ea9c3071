//! tcpthru: raw TCP bulk throughput, to measure a link's (or the delay
//! line's) own ceiling without ssh or ferrogen in the way.
//!
//! ```text
//! tcpthru server ADDR:PORT [--count N]     # sink; exits after N connections (default 1)
//! tcpthru client ADDR:PORT [--mib N | --seconds S] [--streams K]
//! ```
//!
//! The client sends N MiB (default 1024) of zeros, or as much as it can in
//! S seconds, over each of K parallel connections, half-closes, and waits for the server to confirm the byte
//! count, so the time covers delivery, not just buffering. It prints one
//! JSON line: `{"bytes":..,"seconds":..,"mib_s":..,"streams":K}`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

fn usage() -> ! {
    eprintln!(
        "usage: tcpthru server ADDR:PORT [--count N] | tcpthru client ADDR:PORT [--mib N | --seconds S] [--streams K]"
    );
    std::process::exit(2);
}

fn opt(args: &[String], name: &str, default: u64) -> u64 {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage()),
        None => default,
    }
}

fn serve(addr: &str, count: u64) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("tcpthru: bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    let mut handles = Vec::new();
    for _ in 0..count {
        let (mut s, _) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tcpthru: accept: {e}");
                std::process::exit(1)
            }
        };
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("tcpthru: read: {e}");
                        return;
                    }
                }
            }
            let _ = s.write_all(&total.to_be_bytes());
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}

fn client(addr: &str, mib: u64, seconds: u64, streams: u64) {
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..streams {
        let addr = addr.to_string();
        handles.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
            let buf = vec![0u8; 1 << 20];
            let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
            let mut sent: u64 = 0;
            loop {
                if seconds > 0 {
                    if Instant::now() >= deadline {
                        break;
                    }
                } else if sent >= mib {
                    break;
                }
                s.write_all(&buf).map_err(|e| format!("write: {e}"))?;
                sent += 1;
            }
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)
                .map_err(|e| format!("reading the count: {e}"))?;
            let got = u64::from_be_bytes(ack);
            if got != sent << 20 {
                return Err(format!("server counted {got} bytes, sent {}", sent << 20));
            }
            Ok(got)
        }));
    }
    let mut total = 0;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                eprintln!("tcpthru: {e}");
                std::process::exit(1)
            }
            Err(_) => std::process::exit(1),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Rounded as before: 4 decimals of seconds, 1 of MiB/s.
    let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
    println!(
        "{}",
        serde_json::json!({
            "bytes": total,
            "seconds": round(secs, 4),
            "mib_s": round(total as f64 / 1048576.0 / secs, 1),
            "streams": streams,
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("server"), Some(addr)) => serve(addr, opt(&args, "--count", 1)),
        (Some("client"), Some(addr)) => client(
            addr,
            opt(&args, "--mib", 1024),
            opt(&args, "--seconds", 0),
            opt(&args, "--streams", 1).max(1),
        ),
        _ => usage(),
    }
}
