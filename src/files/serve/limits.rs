//! What one requester, and all of them, can make the service hold: open
//! transfers per requester and in all, and the process's descriptor limit.

use std::collections::HashMap;

use super::{FileService, lock};
use crate::call::RemoteError;
use crate::wire::ContextId;

/// Most large transfers one requester may have queued or running; past it
/// `fetch` is refused with a message naming the limit. A push target asks
/// for at most `--parallel` files at once, which is capped to this.
pub const MAX_FETCHES_PER_REQUESTER: usize = 64;

// A relay's tee fetches at most this many files at once from upstream,
// where it is one requester: checked when compiling.
const _: () = assert!(crate::files::tee::UPSTREAM_FETCHES <= MAX_FETCHES_PER_REQUESTER / 2);

/// `fetch_small` calls of one requester being read and answered at once
/// (a push target keeps 4 in flight); further calls wait their turn
/// without holding any file data.
pub const SMALL_CALLS_PER_REQUESTER: usize = 4;

/// The default [`FileServiceConfig::max_open`](super::FileServiceConfig::max_open): half the descriptors the
/// process may open (raised to its hard limit first), at most 4096 — the
/// rest is for streams and everything else.
pub fn default_max_open() -> usize {
    (raise_open_files_limit() / 2).clamp(16, 4096) as usize
}

/// Raises this process's soft limit on open files to its hard limit (as
/// Go's runtime does at start) and returns the soft limit now in force
/// (`u64::MAX` for none).
pub(crate) fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim
        .maximum
        .is_none_or(|max| lim.current.is_some_and(|cur| cur < max))
    {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

#[derive(Default)]
pub(super) struct OpenCount {
    pub(super) total: usize,
    pub(super) per: HashMap<ContextId, usize>,
}

/// One open transfer, counted in [`Inner::open`] until dropped.
pub(super) struct OpenSlot {
    pub(super) fs: FileService,
    pub(super) requester: ContextId,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.fs.inner.open);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per.get_mut(&self.requester) {
            *n -= 1;
            if *n == 0 {
                open.per.remove(&self.requester);
            }
        }
    }
}

impl FileService {
    /// Counts one more open transfer for `requester`, or refuses it past
    /// [`MAX_FETCHES_PER_REQUESTER`] or [`FileServiceConfig::max_open`].
    pub(super) fn open_slot(
        &self,
        requester: ContextId,
        path: &str,
    ) -> Result<OpenSlot, RemoteError> {
        // Counted per principal: the ids a target announces of its own
        // blocks do not multiply its share.
        let requester = self.inner.router.principal(requester);
        let max_open = self.inner.config.max_open;
        let mut open = lock(&self.inner.open);
        let mine = open.per.get(&requester).copied().unwrap_or(0);
        let refusal = if mine >= MAX_FETCHES_PER_REQUESTER {
            Some(format!(
                "{path}: {} already has {mine} transfers queued or running \
                 (limit {MAX_FETCHES_PER_REQUESTER} per requester)",
                self.inner.router.describe(requester)
            ))
        } else if open.total >= max_open {
            Some(format!(
                "{path}: the FileService already has {} transfers queued or running \
                 (limit {max_open} in all); try again later",
                open.total
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            drop(open);
            lock(&self.inner.stats).refused += 1;
            tracing::warn!("refused a fetch: {why}");
            return Err(RemoteError::Failed(why));
        }
        open.total += 1;
        *open.per.entry(requester).or_insert(0) += 1;
        Ok(OpenSlot {
            fs: self.clone(),
            requester,
        })
    }
}
