//! The front door: one [`Controller`] per process owns the router (this
//! process is context 0), the service registry and the FileService;
//! [`Controller::connect`] starts a [`Context`] from a [`Target`] parsed
//! once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let controller = ferrogen::Controller::start();
//! let web1: ferrogen::Target = "ssh://deploy@web1".parse()?;
//! let ctx = controller.connect(&web1).await?;
//! println!("{} answers in {:?}", ctx.name(), ctx.ping().await?);
//! # Ok(()) }
//! ```
//!
//! Everything underneath stays reachable ([`Controller::router`],
//! [`Controller::services`], [`Controller::files`]) for what the front
//! door does not cover yet.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::call::{CallError, Rpc};
use crate::connect::{self, ConnectError, ConnectSpec, ContextInfo};
use crate::files::filter::FilterError;
use crate::files::plan::{self, Compare, EntryResult, PushPlan};
use crate::files::receive::{ReceiveOptions, TempFiles};
use crate::files::source::{OfferArgs, ServeOptions, WalkSpec};
use crate::files::spec::{PushBatch, PushEnd};
use crate::files::walk::{BATCH_BYTES, BATCH_ENTRIES, WalkError, Walker};
use crate::files::{FileService, FileServiceConfig, RawPath};
use crate::router::{Router, RouterConfig};
use crate::service::Services;
use crate::wire::{ContextId, Enc, Frame, handles};

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

/// Where a context runs: `local` (this program re-executed as a child),
/// `[ssh://][user@]host[:port]` (the system ssh client) or `sudo:USER` (on
/// the host of the context it is started from).
#[derive(Debug, Clone)]
pub struct Target {
    text: String,
    spec: ConnectSpec,
}

impl Target {
    /// The connection settings (ssh options, timeout, remote binary), to
    /// adjust before connecting.
    pub fn spec_mut(&mut self) -> &mut ConnectSpec {
        &mut self.spec
    }

    /// The connection settings.
    pub fn spec(&self) -> &ConnectSpec {
        &self.spec
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let method = connect::parse_method(s).map_err(|why| TargetError {
            target: s.to_string(),
            why,
        })?;
        Ok(Target {
            text: s.to_string(),
            spec: ConnectSpec::new(method),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A target that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bad target {target:?}: {why}")]
pub struct TargetError {
    /// What was given.
    pub target: String,
    /// What is wrong with it.
    #[source]
    pub why: connect::MethodError,
}

/// This process as context 0: the router, services and FileService.
pub struct Controller {
    router: Router,
    services: Services,
    files: FileService,
}

impl Controller {
    /// Starts the controller's router, its service dispatcher and a
    /// FileService with the default (self-sizing) window. Must be called
    /// inside a tokio runtime.
    pub fn start() -> Controller {
        Controller::with_files(FileServiceConfig::default())
    }

    /// [`Controller::start`] with a FileService configuration of your own.
    pub fn with_files(config: FileServiceConfig) -> Controller {
        let router = Router::new(RouterConfig::controller());
        let services = Services::start(&router);
        crate::ping::register_service(&services, &router);
        let files = FileService::start(&router, &services, config);
        Controller {
            router,
            services,
            files,
        }
    }

    /// Starts a context for `target`, from this process.
    pub async fn connect(&self, target: &Target) -> Result<Context, ConnectError> {
        self.start_context(target, None).await
    }

    /// Starts a context for `target` from inside `via` (a bastion, or the
    /// host a `sudo:USER` target is on).
    pub async fn connect_via(
        &self,
        target: &Target,
        via: &Context,
    ) -> Result<Context, ConnectError> {
        self.start_context(target, Some(via.id())).await
    }

    async fn start_context(
        &self,
        target: &Target,
        via: Option<ContextId>,
    ) -> Result<Context, ConnectError> {
        let info = connect::connect(&self.router, &target.spec, via).await?;
        Ok(Context {
            info,
            router: self.router.clone(),
        })
    }

    /// The router (context 0).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The service registry: register services other contexts may call here.
    pub fn services(&self) -> &Services {
        &self.services
    }

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
    /// comes: the sources are walked lazily and travel in batches (at most
    /// [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`] of plan each), whose
    /// results come back as each batch lands — so a tree of millions of
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
        let mut walker = blocking(move || Walker::new(&srcs, &walk)).await??;
        walker.sources().register(&self.files)?;
        let head = walker.sources();
        let dest = dest.as_ref();
        let plan = PushPlan {
            server: self.router.id(),
            dest: RawPath::from(dest),
            into_dir: head.into_dir
                || std::os::unix::ffi::OsStrExt::as_bytes(dest.as_os_str()).ends_with(b"/"),
            entries: Vec::new(),
            options: options.receive.clone(),
            parallel: options.parallel,
            dry_run: options.dry_run,
            compare: options.compare,
            sizes_bound: false,
            filter: options.walk.filter.clone(),
            delete: Default::default(),
            root: head.root.clone(),
        };
        // The first two batches before the session opens: a plan of one
        // batch goes as one `push` call (open, batch and close in one round
        // trip instead of three).
        let mut ahead = std::collections::VecDeque::new();
        for _ in 0..2 {
            let (w, entries) = blocking(move || {
                let entries = walker.next_batch(BATCH_ENTRIES, BATCH_BYTES);
                (walker, entries)
            })
            .await?;
            walker = w;
            if entries.is_empty() {
                break;
            }
            ahead.push_back(entries);
        }
        if ahead.len() < 2 {
            let walked = walker.finish();
            let mut plan = plan;
            plan.entries = ahead.pop_front().unwrap_or_default();
            plan.delete.incomplete = walked.incomplete.clone();
            plan.delete.keep = walked.skipped.iter().map(|s| s.rel.clone()).collect();
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
        loop {
            let entries = match ahead.pop_front() {
                Some(entries) => entries,
                None => {
                    let (w, entries) = blocking(move || {
                        let entries = walker.next_batch(BATCH_ENTRIES, BATCH_BYTES);
                        (walker, entries)
                    })
                    .await?;
                    walker = w;
                    entries
                }
            };
            if entries.is_empty() {
                break;
            }
            let batch = PushBatch { session, entries };
            let results = ctx
                .call(crate::files::spec::PUSH_BATCH, &batch)
                .await
                .map_err(TransferError::Call)?;
            results.into_iter().for_each(&mut each);
        }
        let walked = walker.finish();
        let end = PushEnd {
            session,
            incomplete: walked.incomplete.clone(),
            keep: walked.skipped.iter().map(|s| s.rel.clone()).collect(),
        };
        let results = ctx
            .call(crate::files::spec::PUSH_CLOSE, &end)
            .await
            .map_err(TransferError::Call)?;
        results.into_iter().for_each(each);
        Ok(())
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

    /// The FileService: register files and directories that contexts may fetch.
    pub fn files(&self) -> &FileService {
        &self.files
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

/// A running context: a handle for calls to it.
#[derive(Clone)]
pub struct Context {
    info: ContextInfo,
    router: Router,
}

impl Context {
    /// Its id.
    pub fn id(&self) -> ContextId {
        self.info.id
    }

    /// Its name, e.g. `ssh.web1` or `local.4711`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What is known about it (pid, architecture, how it was booted).
    pub fn info(&self) -> &ContextInfo {
        &self.info
    }

    /// Calls the method `rpc` in this context: its argument and reply
    /// types are the ones its service serves ([`Rpc`]).
    pub async fn call<A, R>(&self, rpc: Rpc<A, R>, args: &A) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.router.call(self.info.id, rpc, args).await
    }

    /// Calls `service.method(args)` in this context, by names known only
    /// at run time (else [`Context::call`]).
    pub async fn call_named<A, R>(
        &self,
        service: &str,
        method: &str,
        args: &A,
    ) -> Result<R, CallError>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        self.router
            .call_service(self.info.id, service, method, args)
            .await
    }

    /// One round trip through the built-in ping service.
    pub async fn ping(&self) -> Result<Duration, CallError> {
        let t0 = Instant::now();
        self.call(crate::ping::PING, &Vec::new()).await?;
        Ok(t0.elapsed())
    }

    /// Asks the context to shut down (it closes its streams and exits; its
    /// own children go with it).
    pub fn shutdown(&self) {
        self.router.send(Frame::new(
            self.info.id,
            handles::SHUTDOWN,
            Enc::Control,
            bytes::Bytes::new(),
        ));
    }
}
