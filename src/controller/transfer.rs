//! Push and pull through the front door: their options, why they do not
//! start, and [`Controller::push`], [`Controller::push_each`],
//! [`Controller::pull`].

use super::*;
use crate::call::CallError;
use crate::files::RawPath;
use crate::files::filter::FilterError;
use crate::files::plan::EntryResult;
use crate::files::plan::{self, Compare, PushPlan};
use crate::files::push_walk::{Walking, push_end, whole_plan};
use crate::files::receive::{ReceiveOptions, TempFiles};
use crate::files::source::{OfferArgs, ServeOptions, WalkSpec};
use crate::files::spec::PushBatch;
use crate::files::walk::{Sources, WalkError, Walker};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How [`Controller::push`] and [`Controller::pull`] walk, compare and
/// land files. The default is `ferrogen push` without options: files and
/// symlinks (directories need `walk.recursive`), quick check, fsync.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// What the walk takes (`recursive`, specials, filters...).
    pub walk: WalkSpec,
    /// How received files are put in place.
    pub receive: ReceiveOptions,
    /// How existing files are compared.
    pub compare: Compare,
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Files received at once.
    pub parallel: u32,
    /// How the serving side of a pull sends.
    pub serve: ServeOptions,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            walk: WalkSpec::default(),
            receive: ReceiveOptions::default(),
            compare: Compare::QuickCheck,
            dry_run: false,
            parallel: 64,
            serve: ServeOptions {
                window: None,
                window_cap: crate::stream::MAX_WINDOW,
                compress: false,
                bwlimit: None,
                bwlimit_total: None,
                xattrs: Default::default(),
            },
        }
    }
}

/// Why a push or pull did not start.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The sources could not be walked.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The filter rules are unusable.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The walk's blocking task failed (a bug).
    #[error("the walk stopped: {0}")]
    WalkStopped(#[source] tokio::task::JoinError),
    /// A source could not be registered with the FileService.
    #[error(transparent)]
    Register(#[from] crate::files::registry::OpenError),
    /// The call to the context failed.
    #[error(transparent)]
    Call(CallError),
    /// A pull's target offered something that was not asked for.
    #[error("refused what the target offered: {0}")]
    Refused(#[source] crate::cli::pull::OfferError),
}

impl Controller {
    /// Copies `srcs` (paths in this process) to `dest` in `ctx`, as
    /// `ferrogen push` does: the sources are walked and registered with
    /// this controller's FileService, and the context receives them (quick
    /// check, atomic verified landing, confined to `dest`). Each entry
    /// reports its own result; `Err` means the push stopped as a whole (the
    /// walk or a call failed). Collects what [`Controller::push_each`]
    /// reports.
    pub async fn push(
        &self,
        ctx: &Context,
        srcs: &[impl AsRef<std::ffi::OsStr>],
        dest: impl AsRef<std::path::Path>,
        options: &TransferOptions,
    ) -> Result<Vec<EntryResult>, TransferError> {
        let mut results = Vec::new();
        self.push_each(ctx, srcs, dest, options, |r| results.push(r))
            .await?;
        Ok(results)
    }

    /// [`Controller::push`], reporting each entry's result to `each` as it
    /// comes: the sources are walked lazily, a batch or two ahead, and
    /// travel in batches (at most [`BATCH_ENTRIES`](crate::files::walk::BATCH_ENTRIES) entries or
    /// [`BATCH_BYTES`](crate::files::walk::BATCH_BYTES) of plan each; a plan of one batch goes as one call,
    /// see [`crate::files::push_walk`]), whose results come back as each
    /// batch lands — so a tree of millions of
    /// entries is pushed in flat memory, and a caller can show progress.
    /// The target ends the push (directory metadata, `--delete`) after the
    /// last batch; its results come last. `Err` after some results means
    /// the push stopped there: what was reported landed, nothing of the
    /// batch in flight is half-written.
    pub async fn push_each(
        &self,
        ctx: &Context,
        srcs: &[impl AsRef<std::ffi::OsStr>],
        dest: impl AsRef<std::path::Path>,
        options: &TransferOptions,
        mut each: impl FnMut(EntryResult),
    ) -> Result<(), TransferError> {
        let walk = options.walk.options()?;
        let srcs: Vec<std::ffi::OsString> =
            srcs.iter().map(|s| s.as_ref().to_os_string()).collect();
        // The walk reads the file system: off the runtime's threads.
        let walker = blocking(move || Walker::new(&srcs, &walk)).await??;
        walker.sources().register(&self.files)?;
        let plan = self.push_plan(walker.sources(), dest.as_ref(), options);
        // A plan of one batch goes as one `push` call.
        let mut walking = Walking::start(walker);
        if let Some(last) = walking.whole().await {
            let walked = walking.finish().await.map_err(TransferError::WalkStopped)?;
            let mut plan = plan;
            whole_plan(&mut plan, last, &walked);
            let results = ctx
                .call(crate::files::spec::PUSH, &plan)
                .await
                .map_err(TransferError::Call)?;
            results.into_iter().for_each(each);
            return Ok(());
        }
        let opened = ctx
            .call(crate::files::spec::PUSH_OPEN, &plan)
            .await
            .map_err(TransferError::Call)?;
        if !opened.failed.is_empty() {
            opened.failed.into_iter().for_each(each);
            return Ok(());
        }
        let session = opened.session;
        while let Some(batch) = walking.next().await {
            let batch = PushBatch {
                session,
                entries: batch.entries,
            };
            let results = ctx
                .call(crate::files::spec::PUSH_BATCH, &batch)
                .await
                .map_err(TransferError::Call)?;
            results.into_iter().for_each(&mut each);
        }
        let walked = walking.finish().await.map_err(TransferError::WalkStopped)?;
        let results = ctx
            .call(crate::files::spec::PUSH_CLOSE, &push_end(session, &walked))
            .await
            .map_err(TransferError::Call)?;
        results.into_iter().for_each(each);
        Ok(())
    }

    /// The header of a push's plan (its entries come from the walk, whose
    /// sources are `head`).
    fn push_plan(&self, head: &Sources, dest: &Path, options: &TransferOptions) -> PushPlan {
        PushPlan {
            server: self.router.id(),
            dest: RawPath::from(dest),
            into_dir: head.into_dir || dest.as_os_str().as_bytes().ends_with(b"/"),
            entries: Vec::new(),
            options: options.receive.clone(),
            parallel: options.parallel,
            dry_run: options.dry_run,
            compare: options.compare,
            sizes_bound: false,
            filter: options.walk.filter.clone(),
            delete: Default::default(),
            root: head.root.clone(),
        }
    }

    /// Copies `srcs` (paths in `ctx`) to `dest` in this process, as
    /// `ferrogen pull` does with one target: the context walks and serves
    /// them, and this process receives them with the same code a push
    /// target runs (entries vetted to lie beneath the names asked for).
    pub async fn pull(
        &self,
        ctx: &Context,
        srcs: &[impl AsRef<std::path::Path>],
        dest: impl AsRef<std::path::Path>,
        options: &TransferOptions,
    ) -> Result<Vec<EntryResult>, TransferError> {
        let args = OfferArgs {
            srcs: srcs.iter().map(|s| RawPath::from(s.as_ref())).collect(),
            walk: options.walk.clone(),
            serve: options.serve.clone(),
            // One reply with every entry (this call returns every result
            // at once anyway; `ferrogen pull` streams).
            batch: 0,
        };
        let offer = ctx
            .call(crate::files::source::OFFER, &args)
            .await
            .map_err(TransferError::Call)?;
        let names: Vec<std::ffi::OsString> = srcs
            .iter()
            .map(|s| s.as_ref().as_os_str().to_os_string())
            .collect();
        crate::cli::pull::vet_offer(&offer, &names).map_err(TransferError::Refused)?;
        let dest = dest.as_ref();
        let plan = PushPlan {
            server: ctx.id(),
            dest: RawPath::from(dest),
            into_dir: offer.into_dir
                || std::os::unix::ffi::OsStrExt::as_bytes(dest.as_os_str()).ends_with(b"/"),
            entries: offer.entries,
            options: options.receive.clone(),
            parallel: options.parallel,
            dry_run: options.dry_run,
            compare: options.compare,
            sizes_bound: true,
            filter: options.walk.filter.clone(),
            delete: Default::default(),
            root: offer.root,
        };
        let temps = TempFiles::default();
        let cancel = std::sync::atomic::AtomicBool::new(false);
        Ok(plan::apply_cancellable(&self.router, plan, &temps, &cancel).await)
    }
}

/// Runs `f` on the blocking pool (file-system work in an async call).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(TransferError::WalkStopped)
}
