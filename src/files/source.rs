//! The target side of a pull: `ferrogen.files.source`, in every context.
//!
//! `offer(OfferArgs) -> Offer` (parents only) walks paths on this host
//! exactly as a push walks the controller's, registers what it found with
//! a FileService of this context (started on first use, with the options
//! the controller sent), and answers with the plan entries. The
//! controller then receives them with the same code a push target runs,
//! fetching from this context. Only the parent chain may call `offer`, so
//! nothing here is served unless the controller asked for it: the
//! FileService of a context starts with nothing registered.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::compress::Compression;
use super::filter::{FilterError, Rules};
use super::pace::Limits;
use super::plan::PlanEntry;
use super::walk::{BATCH_BYTES, WalkError, WalkOptions, Walker};
use super::window::Sizing;
use super::{FileService, FileServiceConfig, RawPath};
use crate::call::{RemoteError, Rpc};
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};

/// Name of the service.
pub const SOURCE_SERVICE: &str = "ferrogen.files.source";

/// Walks what was asked for and offers its first entries.
pub const OFFER: Rpc<OfferArgs, Offer> = Rpc::new(SOURCE_SERVICE, "offer");
/// The next entries of a walk in progress.
pub const OFFER_MORE: Rpc<u64, Offer> = Rpc::new(SOURCE_SERVICE, "offer_more");

/// How the serving side sends: the options of a push that apply to the
/// FileService, in a form that travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeOptions {
    /// A fixed window (`--window`), else self-sizing up to `window_cap`.
    pub window: Option<u64>,
    /// Most the self-sizing window grows to.
    pub window_cap: u64,
    /// `-z`.
    pub compress: bool,
    /// `--bwlimit`, bytes per second.
    pub bwlimit: Option<u64>,
    /// `--bwlimit-total`, bytes per second.
    pub bwlimit_total: Option<u64>,
    /// `-X`/`-A`: the extended attributes read with each file's metadata.
    #[serde(default)]
    pub xattrs: super::xattr::XattrSel,
}

impl ServeOptions {
    /// The FileService configuration these options ask for.
    pub fn config(&self) -> FileServiceConfig {
        let sizing = match self.window {
            Some(w) => Sizing::Fixed(w),
            None => Sizing::Auto {
                floor: (1 << 20).min(self.window_cap),
                cap: self.window_cap,
            },
        };
        FileServiceConfig {
            sizing,
            compress: if self.compress {
                Compression::Adaptive
            } else {
                Compression::Off
            },
            bwlimit: Limits {
                per_target: self.bwlimit,
                total: self.bwlimit_total,
            },
            xattrs: self.xattrs,
            ..Default::default()
        }
    }
}

/// What to walk, as it travels (the walk's filter is compiled on arrival).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkSpec {
    /// Descend into directories.
    pub recursive: bool,
    /// Take FIFOs and sockets.
    pub specials: bool,
    /// Take device nodes.
    pub devices: bool,
    /// Send later names of a multiply linked file as hard links.
    pub hard_links: bool,
    /// Record owners.
    pub owner: bool,
    /// `-X`/`-A`: record the extended attributes of directories, symlinks
    /// and special files (and files', for the quick check).
    #[serde(default)]
    pub xattrs: super::xattr::XattrSel,
    /// `--exclude`... rules, in command-line order.
    pub filter: Rules,
}

impl WalkSpec {
    /// The walk options, with the filter compiled.
    pub fn options(&self) -> Result<WalkOptions, FilterError> {
        Ok(WalkOptions {
            recursive: self.recursive,
            specials: self.specials,
            devices: self.devices,
            hard_links: self.hard_links,
            owner: self.owner,
            xattrs: self.xattrs,
            filter: Arc::new(self.filter.compile()?),
        })
    }
}

/// Arguments of `offer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferArgs {
    /// Paths on the target: absolute, or relative to its working directory
    /// (the login directory over ssh).
    pub srcs: Vec<RawPath>,
    /// How to walk them.
    pub walk: WalkSpec,
    /// How to serve them (used by the FileService this call starts; a
    /// later call reuses it).
    pub serve: ServeOptions,
    /// Most entries in one reply: the rest follow with `offer_more`
    /// ([`Offer::more`]). 0: all in this reply.
    #[serde(default)]
    pub batch: u32,
}

/// Reply of `offer`: what the walk found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Offer {
    /// The plan's entries (their `src` are this host's absolute paths).
    pub entries: Vec<PlanEntry>,
    /// Whether the entries must go into the destination directory
    /// (several sources, or a `src/` contents copy).
    pub into_dir: bool,
    /// A source was a contents copy (`src/`).
    pub contents: bool,
    /// That copy's own directory (a `Dir` entry with an empty `rel`).
    #[serde(default)]
    pub root: Option<PlanEntry>,
    /// Directories not read completely (relative to the transfer root).
    pub incomplete: Vec<RawPath>,
    /// Bytes in regular files.
    pub total_bytes: u64,
    /// Special files not offered: relative path and what it is.
    pub skipped: Vec<(RawPath, String)>,
    /// What could not be read, and why.
    pub unread: Vec<String>,
    /// Not 0: more entries follow, from `offer_more(more)`; `incomplete`,
    /// `skipped` and `unread` come with the last reply (`total_bytes` is
    /// the running total in each).
    #[serde(default)]
    pub more: u64,
}

/// Walks in progress (`offer` with a batch size), by number.
#[derive(Clone, Default)]
struct Walks {
    inner: Arc<Mutex<WalkMap>>,
}

/// The last number given, and each walk with its batch size.
type WalkMap = (u64, std::collections::HashMap<u64, (Walker, u32)>);

/// Walks kept at once in one context (only the parent chain starts them).
const MAX_WALKS: usize = 64;

impl Walks {
    fn lock(&self) -> std::sync::MutexGuard<'_, WalkMap> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The next reply of a batched walk: up to `batch` entries; the end's
/// notes when the walk is over (`more` 0).
fn next_reply(walker: &mut Walker, batch: u32) -> (Offer, bool) {
    let entries = walker.next_batch(batch.max(1) as usize, BATCH_BYTES);
    let done = entries.is_empty();
    (
        Offer {
            entries,
            total_bytes: walker.total_bytes(),
            ..Default::default()
        },
        done,
    )
}

/// The last reply's notes, from what the walk learnt.
fn with_end(mut offer: Offer, walked: super::walk::Sources) -> Offer {
    offer.incomplete = walked.incomplete;
    offer.total_bytes = walked.total_bytes;
    offer.skipped = walked
        .skipped
        .into_iter()
        .map(|s| (s.rel, s.kind.to_string()))
        .collect();
    offer.unread = walked.unread;
    offer
}

/// Registers `ferrogen.files.source`: `offer(OfferArgs) -> Offer` and,
/// for a walk answered in batches, `offer_more(u64) -> Offer`.
pub fn register_service(services: &Services, router: &Router) {
    let serving: Arc<Mutex<Option<FileService>>> = Arc::default();
    let walks = Walks::default();
    let more = walks.clone();
    let (r, s) = (router.clone(), services.clone());
    services.register(
        ServiceBuilder::new(SOURCE_SERVICE)
            .serve(OFFER, Policy::ParentsOnly, move |_c, args: OfferArgs| {
                let (r, s, serving, walks) = (r.clone(), s.clone(), serving.clone(), walks.clone());
                async move { offer(&r, &s, &serving, &walks, args).await }
            })
            .serve(OFFER_MORE, Policy::ParentsOnly, move |_c, id: u64| {
                let walks = more.clone();
                async move { offer_more(&walks, id).await }
            })
            .build(),
    );
}

/// `offer`: walks `args.srcs`, registers them with this context's
/// FileService (`serving`, started by the first offer), and answers the
/// plan — whole, or its first batch with the walk kept for `offer_more`.
async fn offer(
    router: &Router,
    services: &Services,
    serving: &Mutex<Option<FileService>>,
    walks: &Walks,
    args: OfferArgs,
) -> Result<Offer, RemoteError> {
    let opts = args
        .walk
        .options()
        .map_err(|e| RemoteError::Failed(e.to_string()))?;
    let fs = {
        let mut slot = serving.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| FileService::start(router, services, args.serve.config()))
            .clone()
    };
    let srcs: Vec<std::path::PathBuf> = args
        .srcs
        .iter()
        .map(|p| p.as_path().to_path_buf())
        .collect();
    let batch = args.batch;
    let (entries, walker, done) =
        tokio::task::spawn_blocking(move || first_reply(&srcs, &opts, batch))
            .await
            .map_err(|e| RemoteError::Failed(format!("internal error walking: {e}")))?
            .map_err(|e| RemoteError::Failed(e.to_string()))?;
    walker
        .sources()
        .register(&fs)
        .map_err(|e| RemoteError::Failed(e.to_string()))?;
    let head = walker.sources();
    let mut offer = Offer {
        into_dir: head.into_dir,
        contents: head.contents,
        root: head.root.clone(),
        total_bytes: walker.total_bytes(),
        entries,
        ..Default::default()
    };
    if done {
        let entries = std::mem::take(&mut offer.entries);
        let mut offer = with_end(offer, walker.finish());
        offer.entries = entries;
        return Ok(offer);
    }
    let mut w = walks.lock();
    if w.1.len() >= MAX_WALKS {
        return Err(RemoteError::Failed(
            "too many walks in progress in this context".into(),
        ));
    }
    w.0 += 1;
    let id = w.0;
    w.1.insert(id, (walker, batch));
    offer.more = id;
    Ok(offer)
}

/// The first reply's entries (every entry when `batch` is 0), the walker,
/// and whether the walk is done.
fn first_reply(
    srcs: &[std::path::PathBuf],
    opts: &WalkOptions,
    batch: u32,
) -> Result<(Vec<PlanEntry>, Walker, bool), WalkError> {
    let mut walker = Walker::new(srcs, opts)?;
    if batch == 0 {
        let mut entries = Vec::new();
        loop {
            let b = walker.next_batch(usize::MAX, usize::MAX);
            if b.is_empty() {
                break;
            }
            entries.extend(b);
        }
        return Ok((entries, walker, true));
    }
    let (offer, done) = next_reply(&mut walker, batch);
    Ok((offer.entries, walker, done))
}

/// `offer_more`: the next reply of walk `id`.
async fn offer_more(walks: &Walks, id: u64) -> Result<Offer, RemoteError> {
    let (walker, batch) =
        walks.lock().1.remove(&id).ok_or_else(|| {
            RemoteError::Failed(format!("no walk {id} in progress in this context"))
        })?;
    let (offer, walker, done) = tokio::task::spawn_blocking(move || {
        let mut walker = walker;
        let (offer, done) = next_reply(&mut walker, batch);
        (offer, walker, done)
    })
    .await
    .map_err(|e| RemoteError::Failed(format!("internal error walking: {e}")))?;
    if done {
        return Ok(with_end(offer, walker.finish()));
    }
    walks.lock().1.insert(id, (walker, batch));
    Ok(Offer { more: id, ..offer })
}
