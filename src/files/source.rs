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
use super::filter::Rules;
use super::pace::Limits;
use super::plan::PlanEntry;
use super::walk::{WalkOptions, collect_sources_with};
use super::window::Sizing;
use super::{FileService, FileServiceConfig, RawPath};
use crate::call::RemoteError;
use crate::router::{Policy, Router};
use crate::service::{ServiceBuilder, Services};

/// Name of the service.
pub const SOURCE_SERVICE: &str = "ferrogen.files.source";

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
    pub fn options(&self) -> Result<WalkOptions, String> {
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
}

/// Registers `ferrogen.files.source`.
pub fn register_service(services: &Services, router: &Router) {
    let serving: Arc<Mutex<Option<FileService>>> = Arc::default();
    let (r, s) = (router.clone(), services.clone());
    services.register(
        ServiceBuilder::new(SOURCE_SERVICE)
            .method("offer", Policy::ParentsOnly, move |_c, args: OfferArgs| {
                let (r, s, serving) = (r.clone(), s.clone(), serving.clone());
                async move {
                    let opts = args.walk.options().map_err(RemoteError::Failed)?;
                    let fs = {
                        let mut slot = serving.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert_with(|| FileService::start(&r, &s, args.serve.config()))
                            .clone()
                    };
                    let srcs: Vec<std::path::PathBuf> = args
                        .srcs
                        .iter()
                        .map(|p| p.as_path().to_path_buf())
                        .collect();
                    let walked =
                        tokio::task::spawn_blocking(move || collect_sources_with(&srcs, &opts))
                            .await
                            .map_err(|e| {
                                RemoteError::Failed(format!("internal error walking: {e}"))
                            })?
                            .map_err(RemoteError::Failed)?;
                    walked.register(&fs).map_err(RemoteError::Failed)?;
                    Ok::<_, RemoteError>(Offer {
                        into_dir: walked.into_dir,
                        contents: walked.contents,
                        root: walked.root,
                        incomplete: walked.incomplete,
                        total_bytes: walked.total_bytes,
                        skipped: walked
                            .skipped
                            .into_iter()
                            .map(|s| (s.rel, s.kind.to_string()))
                            .collect(),
                        unread: walked.unread,
                        entries: walked.entries,
                    })
                }
            })
            .build(),
    );
}
