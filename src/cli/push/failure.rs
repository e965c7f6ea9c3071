//! A target that failed as a whole: its one result, and its tally.

use crate::cli::report;
use crate::files::RawPath;
use crate::files::plan::{EntryKind, EntryResult, Status};

/// The result that says a target failed as a whole.
pub(super) fn whole_failure(dest: &RawPath, error: String) -> EntryResult {
    EntryResult {
        path: dest.escaped(),
        path_bytes: None,
        bytes: 0,
        seconds: 0.0,
        digest: None,
        error: Some(error),
        data_span_ns: (0, 0),
        status: Status::Failed,
        kind: EntryKind::Other,
        changes: 0,
    }
}

/// A tally of one failure for `host`, printed.
pub(super) fn failed_whole(
    style: &report::Style,
    host: &str,
    dest: &RawPath,
    error: String,
) -> report::Tally {
    let mut t = report::Tally::new(host);
    t.add(style, &[whole_failure(dest, error)]);
    t
}
