//! `ferrogen pull` over real ssh, sudo and via, against the private sshd
//! of tests/sshd/mod.rs. Needs root (CI runs as root); skipped otherwise.

mod clirun;

mod sshd;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use clirun::{describe, ferrogen, s, text};
use serde_json::Value;
use sshd::Sshd;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A world-readable tree every test account can read: proj/{a.txt,
/// sub/big.bin (20 MiB), sub/link}.
fn readable_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    chmod(t.path(), 0o755);
    let p = t.path().join("proj");
    std::fs::create_dir_all(p.join("sub")).expect("mkdir");
    std::fs::write(p.join("a.txt"), b"alpha\n").expect("write");
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(p.join("sub/big.bin"), &big).expect("write");
    std::os::unix::fs::symlink("../a.txt", p.join("sub/link")).expect("symlink");
    t
}

fn same(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference", s(a), s(b)])
        .output()
        .expect("diff");
    assert!(
        o.status.success(),
        "{} vs {}: {}",
        s(a),
        s(b),
        text(&o.stdout)
    );
}

#[test]
fn pull_from_two_ssh_targets_lands_each_in_its_own_directory() {
    let Some(sd) = Sshd::start() else { return };
    let t = readable_tree();
    let here = tempfile::tempdir().expect("tempdir");
    let o = ferrogen(&[
        "pull",
        "-r",
        "--json",
        "-e",
        &sd.rsh(),
        "-H",
        "root",
        "-H",
        sshd::PLAIN,
        s(&t.path().join("proj")),
        s(here.path()),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    for host in ["root", sshd::PLAIN] {
        same(&t.path().join("proj"), &here.path().join(host).join("proj"));
    }
    let summaries: Vec<Value> = text(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["summary"] == true)
        .collect();
    assert_eq!(summaries.len(), 2, "{}", describe(&o));
    // Again: nothing changed, nothing sent.
    let o = ferrogen(&[
        "pull",
        "-r",
        "--json",
        "-e",
        &sd.rsh(),
        "-H",
        "root",
        "-H",
        sshd::PLAIN,
        s(&t.path().join("proj")),
        s(here.path()),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    for l in text(&o.stdout).lines() {
        let v: Value = serde_json::from_str(l).expect("json");
        if v["summary"] == true {
            assert_eq!(v["changed"], false, "{v}");
            assert_eq!(v["bytes"], 0, "{v}");
        }
    }
}

#[test]
fn pull_with_sudo_reads_a_root_only_file_and_without_it_is_refused() {
    let Some(sd) = Sshd::start() else { return };
    let t = tempfile::tempdir().expect("tempdir");
    chmod(t.path(), 0o755);
    let secret = t.path().join("secret.txt");
    std::fs::write(&secret, b"root only\n").expect("write");
    chmod(&secret, 0o600);
    let here = tempfile::tempdir().expect("tempdir");
    let dest = format!("{}/", s(here.path()));
    let o = ferrogen(&[
        "pull",
        "-e",
        &sd.rsh(),
        "-H",
        sshd::SUDOER,
        s(&secret),
        &dest,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("secret.txt") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!here.path().join("secret.txt").exists());
    let o = ferrogen(&[
        "pull",
        "-e",
        &sd.rsh(),
        "-H",
        sshd::SUDOER,
        "--sudo",
        "root",
        s(&secret),
        &dest,
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(
        std::fs::read(here.path().join("secret.txt")).expect("read"),
        b"root only\n"
    );
}

#[test]
fn pull_through_a_via_hop() {
    let Some(sd) = Sshd::start() else { return };
    let t = readable_tree();
    let here = tempfile::tempdir().expect("tempdir");
    let o = ferrogen(&[
        "pull",
        "-r",
        "-e",
        &sd.rsh(),
        "--via",
        "root",
        "-H",
        "fgsudo-jump",
        s(&t.path().join("proj")),
        &format!("{}/", s(here.path())),
    ]);
    assert!(o.status.success(), "{}", describe(&o));
    same(&t.path().join("proj"), &here.path().join("proj"));
}

/// Every descendant of `pid` whose command line starts with `ssh ` and
/// names `user` as a separate word.
fn ssh_clients_of(pid: u32, user: &str) -> Vec<u32> {
    sshd::descendants(pid)
        .into_iter()
        .filter(|&q| {
            let c = std::fs::read(format!("/proc/{q}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            // A transport (`-T`), not the `ssh -G` that asks which
            // cipher the configuration leaves (it lives a few ms).
            c.starts_with("ssh ") && c.contains(" -T ") && c.contains(&format!(" {user} "))
        })
        .collect()
}

#[test]
fn a_target_lost_mid_pull_fails_alone_and_leaves_nothing() {
    let Some(sd) = Sshd::start() else { return };
    let t = tempfile::tempdir().expect("tempdir");
    chmod(t.path(), 0o755);
    let big = t.path().join("big.bin");
    let data: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&big, &data).expect("write");
    chmod(&big, 0o644);
    let here = tempfile::tempdir().expect("tempdir");
    let child = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args([
            "pull",
            "--stripes",
            "1",
            "--bwlimit",
            "8M",
            "-e",
            &sd.rsh(),
            "-H",
            "root",
            "-H",
            sshd::PLAIN,
            s(&big),
            s(here.path()),
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    // Wait for the victim's connection, let data flow, then cut it.
    let t0 = std::time::Instant::now();
    let victim = loop {
        let v = ssh_clients_of(pid, sshd::PLAIN);
        if !v.is_empty() || t0.elapsed() > std::time::Duration::from_secs(60) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(victim.len(), 1, "the victim's ssh client: {victim:?}");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let _ = Command::new("kill")
        .args(["-KILL", &victim[0].to_string()])
        .status();
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{}: FAILED", sshd::PLAIN))),
        "{err}"
    );
    // The other target's copy is whole; the victim's directory holds no file.
    assert_eq!(
        std::fs::read(here.path().join("root/big.bin")).expect("read"),
        data
    );
    let left: Vec<_> = std::fs::read_dir(here.path().join(sshd::PLAIN))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
