//! Running the real `ferrogen` binary from a test, and reading what it
//! printed (shared by the CLI-level tests).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// `ferrogen ARGS` to completion (RUST_LOG removed, so output is what a
/// user sees).
pub fn ferrogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("ferrogen runs")
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// Everything about a finished command, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

/// Asserts that the command succeeded.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}", describe(o));
}
