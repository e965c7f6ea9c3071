//! What the walks found, said once for all targets.

use super::show;
use crate::cli::out;
use crate::files::walk::Sources;

/// What the walks found that is said once for all targets: what could
/// not be read (the push then fails) and the special files skipped. Each
/// target walks the sources itself; the first walk to end reports.
#[derive(Default)]
pub(super) struct Notes {
    pub(super) said: std::sync::atomic::AtomicBool,
    pub(super) unread: std::sync::atomic::AtomicBool,
}

impl Notes {
    /// Reports `walked`'s notes, unless another walk did already.
    pub(super) fn say(&self, walked: &Sources, json: bool) {
        use std::sync::atomic::Ordering;
        if !walked.unread.is_empty() {
            self.unread.store(true, Ordering::SeqCst);
        }
        if self.said.swap(true, Ordering::SeqCst) {
            return;
        }
        // Parts of the sources that could not be read: the push fails at
        // the end (the rest is still sent).
        for e in &walked.unread {
            out::diag(format_args!("ferrogen push: {e}"));
        }
        if !json {
            for sk in &walked.skipped {
                out::diag(format_args!(
                    "ferrogen push: {}: {} skipped (only regular files, directories and symlinks are copied)",
                    show(&sk.path),
                    sk.kind
                ));
            }
        }
    }

    pub(super) fn any_unread(&self) -> bool {
        self.unread.load(std::sync::atomic::Ordering::SeqCst)
    }
}
