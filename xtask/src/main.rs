//! `cargo xtask`: ferrogen's build automation.
//!
//! `cargo xtask dist` builds the portable target binary,
//! `target/dist/ferrogen-x86_64-linux`: a fully static x86_64 Linux
//! executable (`-C target-feature=+crt-static` on the gnu target), the
//! binary the controller sends to targets when it exists (see README,
//! "Which systems targets may run"). Static rather than a glibc-2.17
//! baseline build because it also runs where there is no glibc at all
//! (Alpine/musl, distroless images, an empty chroot) and needs nothing from
//! the target but a Linux kernel; the measurements behind the choice are in
//! docs/portable.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The Rust target the portable binary is built for, and its name in
/// `target/dist`.
const TARGETS: &[(&str, &str)] = &[("x86_64-unknown-linux-gnu", "ferrogen-x86_64-linux")];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dist") => dist(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> &'static str {
    "usage: cargo xtask dist\n\n\
     dist   build the portable, fully static target binary into\n\
    \x20      target/dist/ferrogen-x86_64-linux (extra arguments go to cargo build)"
}

/// The workspace root (this crate lives in `<root>/xtask`).
fn root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `$CARGO_TARGET_DIR`, or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root.join(d) }
        }
        _ => root.join("target"),
    }
}

fn dist(extra: &[String]) -> Result<(), String> {
    let root = root();
    let target = target_dir(&root);
    let dist = target.join("dist");
    std::fs::create_dir_all(&dist).map_err(|e| format!("creating {}: {e}", dist.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (triple, name) in TARGETS {
        if !std_installed(triple) {
            return Err(format!(
                "no Rust standard library for {triple} in this toolchain \
                 (rustup target add {triple})"
            ));
        }
        // crt-static links glibc (libc.a) into the executable: no loader,
        // no libc.so needed on the target. strip=symbols: 4.2 instead of
        // 4.9 MiB to send to each new target (panics still print their
        // message and location). RUSTFLAGS given by the caller are kept;
        // with --target they do not reach build scripts.
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        if !flags.contains("crt-static") {
            flags.push_str(" -C target-feature=+crt-static");
        }
        if !flags.contains("strip=") {
            flags.push_str(" -C strip=symbols");
        }
        eprintln!("xtask: building the static {triple} binary (release)...");
        let status = Command::new(&cargo)
            .current_dir(&root)
            .env("RUSTFLAGS", flags.trim())
            .args(["build", "--release", "--locked", "--bin", "ferrogen"])
            .args(["--target", triple])
            .args(extra)
            .status()
            .map_err(|e| format!("running {cargo}: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build for {triple} failed ({status})"));
        }
        let built = target.join(triple).join("release").join("ferrogen");
        let out = dist.join(name);
        // Copy then rename: a controller starting meanwhile sees the old
        // binary or the new one, never half of one.
        let tmp = dist.join(format!(".{name}.tmp"));
        std::fs::copy(&built, &tmp)
            .map_err(|e| format!("copying {} to {}: {e}", built.display(), tmp.display()))?;
        std::fs::rename(&tmp, &out).map_err(|e| format!("installing {}: {e}", out.display()))?;
        check(&out)?;
        let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        println!(
            "{} ({:.1} MiB, static, {triple})",
            out.display(),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    for triple in ["aarch64-unknown-linux-gnu"] {
        if !std_installed(triple) {
            eprintln!(
                "xtask: skipped {triple}: this toolchain has no standard library for it \
                 (build ferrogen on such a host and pass it with --remote-binary)"
            );
        }
    }
    Ok(())
}

/// Whether the active toolchain has the standard library for `triple`.
fn std_installed(triple: &str) -> bool {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", triple])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            std::fs::read_dir(&dir).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
            })
        }
        _ => false,
    }
}

/// The binary must run here and be static (no program interpreter).
fn check(bin: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            bin.display(),
            out.status
        ));
    }
    let bytes = std::fs::read(bin).map_err(|e| format!("reading {}: {e}", bin.display()))?;
    if has_interpreter(&bytes) {
        return Err(format!(
            "{} is dynamically linked (it has a PT_INTERP): the crt-static flag did not apply",
            bin.display()
        ));
    }
    Ok(())
}

/// True if a 64-bit little-endian ELF file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}
