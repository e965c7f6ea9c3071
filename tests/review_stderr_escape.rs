//! Review (issue 9, finding 10): a target's stderr lines are forwarded into
//! the controller's log (`connect/handshake.rs`, `forward_stderr`) without
//! going through `cli::sanitize`. tracing-subscriber escapes only ESC, BEL,
//! BS, FF, DEL and C1 controls, so CR (overwrite the line: a forged
//! "h2: 1 files ..." success line), VT, SO (switches a VT100-style terminal
//! to its graphics character set), ENQ (answerback), NUL and the
//! bidirectional overrides reach the operator's terminal raw, at WARN and
//! ERROR level, which are shown by default.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_targets_stderr_reaches_the_log_with_control_characters_escaped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let rsh = dir.join("evilssh");
    std::fs::write(
        &rsh,
        "#!/bin/sh\nprintf 'WARN harmless\\rh2: 1 files, 0.0 MiB in 0.01 s \\013\\016\\005\\000\\342\\200\\256x\\n' >&2\nsleep 0.2\nexit 255\n",
    )
    .expect("write");
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let src = dir.join("small");
    std::fs::write(&src, b"x").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["push", "-e"])
        .arg(&rsh)
        .args(["-H", "h2"])
        .arg(&src)
        .arg(dir.join("dst/"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferrogen");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let raw: Vec<char> = err
        .chars()
        .filter(|&c| c != '\n' && (c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)))
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{err}");
}
