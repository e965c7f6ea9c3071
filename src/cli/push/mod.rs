//! `ferrogen push`: copy files and directories to every target.
//!
//! The controller registers the sources with its FileService, connects the
//! targets (through any `--via` hops, `--fanout` at a time) and asks each
//! target's `ferrogen.files.target` service to apply a [`PushPlan`](crate::files::plan::PushPlan); the
//! targets pull the data, so the credit window and the one-at-a-time rule
//! hold on every stream. Per-target progress comes from the FileService's
//! acknowledgement counters.

use std::path::{Path, PathBuf};

pub use crate::files::walk::{
    Skipped, Sources, WalkOptions, Walker, collect_sources, collect_sources_with,
};

mod args;
mod check;
mod early;
mod failure;
mod feed;
mod group;
mod notes;
mod one;
mod parse;
mod relay;
mod run;
mod sources;
mod stripe_job;
mod stripes;

pub use args::{PushArgs, file_service_config};
pub use check::{UsageError, split_remote};
pub use parse::{ValueError, at_least_one, parse_rate, parse_size, parse_window};
pub use run::run;
pub(crate) use run::shutdown_signal;
pub(crate) use stripes::STRIPE_MIN_BYTES;
pub use stripes::{auto_stripes, open_stripes, open_stripes_with, start_stripes_early};

/// The contexts a push has reached so far (to cancel on an interrupt).
type Targets = std::sync::Arc<std::sync::Mutex<Vec<crate::wire::ContextId>>>;

/// A path for messages, invalid UTF-8 shown as `\xNN`.
fn show(p: &Path) -> String {
    crate::files::place::show(p)
}

/// The absolute form of a local path, for messages.
pub fn absolute(p: &str) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p))
}
