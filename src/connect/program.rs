//! Which program a new context runs: this executable (re-executed with
//! [`CHILD_ARG`]) unless an embedder or a test harness set another.
//!
//! Its own module so that the bootstrap (which sends this program to remote
//! hosts) and the local launcher share it without depending on each other.

/// The hidden sub-command that runs a context on stdin/stdout.
pub const CHILD_ARG: &str = "__context";

static CHILD_PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes this process start `path` (instead of its own executable) for local
/// children. For test harnesses and embedders whose process is not the
/// `ferrogen` binary; `path` must run [`crate::connect::child::run`] when
/// given [`CHILD_ARG`]. Only the first call has an effect.
pub fn set_child_program(path: impl Into<std::path::PathBuf>) {
    let _ = CHILD_PROGRAM.set(path.into());
}

pub(crate) fn child_program() -> std::io::Result<std::path::PathBuf> {
    match CHILD_PROGRAM.get() {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe(),
    }
}

/// The program set with [`set_child_program`], if any.
pub fn child_program_override() -> Option<std::path::PathBuf> {
    CHILD_PROGRAM.get().cloned()
}
