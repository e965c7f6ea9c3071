//! `ferrogen push`: copy files and directories to every target.
//!
//! The controller registers the sources with its FileService, connects the
//! targets (through any `--via` hops, `--fanout` at a time) and asks each
//! target's `ferrogen.files.target` service to apply a [`PushPlan`]; the
//! targets pull the data, so the credit window and the one-at-a-time rule
//! hold on every stream. Per-target progress comes from the FileService's
//! acknowledgement counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::Semaphore;

use super::report;
use super::target::{self, Chain, TargetArgs};
use super::{Exit, out};
use crate::connect::Method;
use crate::connect::path_rtt::{self, SpawnWatch};
use crate::files::delete::DeleteSpec;
use crate::files::filter::{Filter, Rule, Rules};
use crate::files::plan::{
    Compare, EntryKind, EntryResult, PushBatch, PushEnd, PushOpened, PushPlan, Status,
};
use crate::files::receive::ReceiveOptions;
use crate::files::relay::{TEE_SERVICE, TeeArgs};
use crate::files::tee::TeeStats;
use crate::files::walk::{BATCH_BYTES, BATCH_ENTRIES};
pub use crate::files::walk::{
    Skipped, Sources, WalkOptions, Walker, collect_sources, collect_sources_with,
};
use crate::files::window::Sizing;
use crate::files::{FileService, FileServiceConfig, RawPath, TARGET_SERVICE};
use crate::router::{Router, RouterConfig};
use crate::service::Services;
use crate::wire::ContextId;

/// Arguments of `ferrogen push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Which targets, and how to reach them.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Copy directories recursively (structure, modes, symlinks as symlinks).
    #[arg(short, long)]
    pub recursive: bool,
    /// Archive mode, for the rsync habit: -r --specials --devices
    /// --hard-links (structure, modes, times, symlinks, FIFOs, sockets,
    /// device nodes, hard links).
    #[arg(short, long)]
    pub archive: bool,
    /// Keep hard links: names of one file within the sources arrive as
    /// names of one file (long form only: -H is the host).
    #[arg(long)]
    pub hard_links: bool,
    /// Recreate FIFOs and sockets (otherwise they are listed as skipped).
    #[arg(long)]
    pub specials: bool,
    /// Recreate device nodes (needs privilege on the target; otherwise
    /// they are listed as skipped).
    #[arg(long)]
    pub devices: bool,
    /// Apply the source's owner and group on the target (needs privilege there).
    #[arg(long)]
    pub owner: bool,
    /// Keep extended attributes: `user.*`, and `trusted.*`/`security.*`
    /// when both sides run as root (not part of -a, as in rsync).
    #[arg(short = 'X', long)]
    pub xattrs: bool,
    /// Keep POSIX ACLs (access and default; not part of -a, as in rsync).
    #[arg(short = 'A', long)]
    pub acls: bool,
    /// Keep holes: a sparse file's holes are not sent and stay holes at
    /// the destination (no space is reserved for it up front).
    #[arg(short = 'S', long)]
    pub sparse: bool,
    /// Skip fsync of files and directories (faster, not crash-safe).
    #[arg(long)]
    pub no_fsync: bool,
    /// Send changed files whole: no delta transfer against the file
    /// already at the destination (by default a large file that exists
    /// there is sent as the blocks that differ).
    /// Local targets default to this (measured: on one machine reading
    /// both files for the delta costs more than copying).
    #[arg(short = 'W', long, conflicts_with = "no_whole_file")]
    pub whole_file: bool,
    /// Use delta transfer for local targets too (rsync's --no-W).
    #[arg(long = "no-whole-file", alias = "no-W")]
    pub no_whole_file: bool,
    /// Keep the received part of an interrupted large file (in a hidden,
    /// owner-only `.NAME.ferrogen-partial` next to it) and resume from it
    /// on the next push with --partial.
    #[arg(long)]
    pub partial: bool,
    /// Compress file data with zstd where it shrinks. The level follows
    /// the link: lowered, or compression dropped, when the link is faster
    /// than the compressor (loopback, a fast LAN).
    #[arg(short = 'z', long)]
    pub compress: bool,
    /// Limit the data sent to each target to RATE bytes per second
    /// (binary units: 500K, 10M, 1G; a bare number is KiB/s, as in rsync).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Limit the data sent to all targets together to RATE bytes per
    /// second (same form as --bwlimit; both may be given).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit_total: Option<u64>,
    /// A fixed window of unacknowledged bytes per stream (e.g. 1M, the
    /// seed's behaviour). Default: sized automatically to the path's
    /// bandwidth × delay, between 1 MiB and --window-cap.
    #[arg(long, value_name = "SIZE", value_parser = parse_window)]
    pub window: Option<u64>,
    /// Upper bound of the automatically sized window (memory per stream;
    /// at most 64M, which every hop's buffer cap is sized for).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_window)]
    pub window_cap: u64,
    /// Streams per ssh target: the connection itself plus N-1 extra ssh
    /// connections ("stripes") that large files are spread over, each with
    /// its own SSH channel window. 1 disables striping. Local targets never
    /// stripe (a pipe has no window to multiply).
    /// Default: 1 below 4 ms of round trip; else stripes added in steps
    /// while they make the delivery rate grow, once the connection alone
    /// fills its channel window, up to one data stripe per 6.25 ms of
    /// round trip (2 to 8).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub stripes: Option<usize>,
    /// Files received at once per target (1 to 1024).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub parallel: u32,
    /// Targets pushed to at once (per relay behind `--via`).
    // 32, as pdsh: 64 MiB to 32 hosts behind a relay over 100 ms took 1.53×
    // one host's time with 16 (two waves), 1.38× with 32, the relay at most
    // 78 MiB (docs/benchmarks.md, "A fleet behind a relay").
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = at_least_one)]
    pub fanout: usize,
    /// Compare files by BLAKE3 digest instead of size and modification
    /// time: both sides hash the files whose sizes match.
    #[arg(short = 'c', long, conflicts_with = "ignore_times")]
    pub checksum: bool,
    /// Send every file, even one whose size and modification time match
    /// the destination's.
    #[arg(short = 'I', long)]
    pub ignore_times: bool,
    /// List each entry created, changed or deleted, rsync's itemised way
    /// (`>f.st...... PATH`); twice lists unchanged ones too. -v does the
    /// same as -i.
    #[arg(short = 'i', long = "itemize-changes", action = clap::ArgAction::Count)]
    pub itemize: u8,
    /// Report what a push would do (each entry created, changed,
    /// unchanged or deleted) and change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Leave out entries matching PATTERN (rsync's rules: `*`, `**`, `?`,
    /// `[...]`; a leading `/` anchors at the transfer root, a trailing `/`
    /// matches directories only). Repeatable; the first --include,
    /// --exclude or --exclude-from rule that matches, in command-line
    /// order, decides.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Send entries matching PATTERN even if a later rule excludes them.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Exclude the patterns in FILE, one per line (blank lines and lines
    /// starting `#` or `;` ignored; `+ PATTERN` includes, `- PATTERN`
    /// excludes). `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// The filter rules in command-line order, compiled (built by
    /// [`PushArgs::build_filter`]).
    #[arg(skip = Filter::none())]
    pub filter: Arc<Filter>,
    /// Delete entries in the pushed directories of DEST that the sources
    /// lack (needs -r or -a; names excluded by a filter rule are kept).
    #[arg(long)]
    pub delete: bool,
    /// With --delete: if more than N entries would be deleted, delete none
    /// and fail.
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// Do not tee at the relay: every target behind --via fetches each
    /// file from the controller itself, so each copy crosses the uplink
    /// (for comparison; by default the last --via hop fetches each file
    /// once and serves all the targets behind it).
    #[arg(long)]
    pub no_tee: bool,
    /// Behind a relay, fetch nothing there before a target asks for it.
    /// By default the relay starts fetching the plan's first large files
    /// (up to 64 MiB) while the targets connect and compare, so a first
    /// push has its data on the uplink sooner; on a push where the targets
    /// have those files already, that data crossed the uplink for nothing
    /// (at most what it carries until the first target answers).
    #[arg(long)]
    pub no_read_ahead: bool,
    /// Print one JSON object per file and target instead of text.
    #[arg(long)]
    pub json: bool,
    /// Sources, then the destination (options may come between them). A
    /// trailing slash on the destination means "into this directory"; a
    /// source directory written `dir/` or `dir/.` copies its contents
    /// rather than the directory itself. `HOST:PATH` as the destination is
    /// scp's shorthand for `-H HOST PATH`.
    #[arg(required = true, value_name = "SRC... DEST",
          value_parser = clap::builder::TypedValueParser::try_map(clap::builder::OsStringValueParser::new(), non_empty_path))]
    pub paths: Vec<std::ffi::OsString>,
}

impl PushArgs {
    /// Checks what clap cannot check one value at a time, and turns a
    /// `HOST:PATH` destination into `-H HOST` and `PATH`. The error is a
    /// usage error (nothing has been sent).
    pub fn check(&mut self) -> Result<(), String> {
        self.check_shared("push")?;
        let (dest_os, srcs) = self.paths.split_last_mut().ok_or("no destination")?;
        // Only text can be scp's HOST:PATH; other names are local paths.
        for src in srcs.iter().filter_map(|s| s.to_str()) {
            if split_remote(src).is_some() {
                return Err(format!(
                    "source {src:?} looks like scp's HOST:PATH, but push only sends \
                     local files (write ./{src} for a local name with ':')"
                ));
            }
        }
        let Some(dest) = dest_os.to_str() else {
            return Ok(());
        };
        let Some((host, path)) = split_remote(dest) else {
            return Ok(());
        };
        if !self.target.hosts.is_empty() || !self.target.host_files.is_empty() {
            return Err(format!(
                "destination {dest:?} names a host (scp's HOST:PATH) and -H or --hosts was \
                 given too: give the targets with -H only (write ./{dest} for a path with ':')"
            ));
        }
        target::parse(host).map_err(|e| {
            format!("destination {dest:?}: {e} (write ./{dest} for a path with ':')")
        })?;
        // scp's `host:` is the login directory: the target's working
        // directory, where relative paths land.
        let path = if path.is_empty() { "." } else { path };
        self.target.hosts = vec![host.to_string()];
        *dest_os = path.into();
        Ok(())
    }
}

impl PushArgs {
    /// What push and pull both require: a source and a destination, and
    /// recursion for `--delete`.
    pub(crate) fn check_shared(&self, verb: &str) -> Result<(), String> {
        if self.paths.len() < 2 {
            return Err(format!(
                "{verb} needs at least one source and a destination: \
                 ferrogen {verb} [OPTIONS] SRC... DEST"
            ));
        }
        if self.delete && !(self.recursive || self.archive) {
            return Err(format!(
                "--delete needs -r or -a: it deletes entries in the directories \
                 a recursive {verb} copies"
            ));
        }
        Ok(())
    }

    /// Compiles `--include`, `--exclude` and `--exclude-from` into
    /// [`PushArgs::filter`], in command-line order when `matches` (this
    /// sub-command's) give the positions, else includes, excludes, then
    /// files. A bad pattern or an unreadable file is a usage error naming
    /// it.
    pub fn build_filter(&mut self, matches: Option<&clap::ArgMatches>) -> Result<(), String> {
        let at = |id: &str, n: usize| -> Vec<usize> {
            matches
                .and_then(|m| m.indices_of(id))
                .map(|i| i.collect())
                .unwrap_or_else(|| vec![0; n])
        };
        let mut ordered: Vec<(usize, usize, Vec<Rule>)> = Vec::new();
        for (i, p) in at("include", self.include.len())
            .into_iter()
            .zip(&self.include)
        {
            ordered.push((i, 0, vec![Rule::include(p)]));
        }
        for (i, p) in at("exclude", self.exclude.len())
            .into_iter()
            .zip(&self.exclude)
        {
            ordered.push((i, 1, vec![Rule::exclude(p)]));
        }
        let files = at("exclude_from", self.exclude_from.len());
        for (i, f) in files.into_iter().zip(&self.exclude_from) {
            let name = show(f);
            let text = if f.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map_err(|e| format!("--exclude-from -: cannot read standard input: {e}"))?;
                buf
            } else {
                std::fs::read(f)
                    .map_err(|e| format!("--exclude-from {name}: cannot read it: {e}"))?
            };
            let rules = Rules::parse_exclude_file(&text, &name)
                .map_err(|e| format!("--exclude-from {e}"))?;
            ordered.push((i, 2, rules));
        }
        // Positions are unique when known; else the kind keeps the
        // documented fallback order.
        ordered.sort_by_key(|(i, kind, _)| (*i, *kind));
        let rules = Rules(ordered.into_iter().flat_map(|(_, _, r)| r).collect());
        self.filter = Arc::new(rules.compile().map_err(|e| e.to_string())?);
        Ok(())
    }
}

/// If `arg` is scp's `[user@]host:path` (a `:` before any `/`; IPv6
/// addresses in brackets), the host part and the path. A leading `/` or
/// `:` makes it local, as in scp; so does `./` for a local name that holds
/// a colon.
pub fn split_remote(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with(':') || arg.starts_with('/') {
        return None;
    }
    let mut from = 0;
    if let Some(open) = arg.find('[')
        && !arg[..open].contains('/')
        && let Some(close) = arg[open..].find(']')
    {
        from = open + close + 1;
    }
    for (i, c) in arg[from..].char_indices() {
        match c {
            '/' => return None,
            ':' => return Some((&arg[..from + i], &arg[from + i + 1..])),
            _ => {}
        }
    }
    None
}

/// A path argument: anything but the empty string (which names no file;
/// cp and rsync refuse it too).
/// Paths are bytes, not necessarily UTF-8.
fn non_empty_path(s: std::ffi::OsString) -> Result<std::ffi::OsString, String> {
    if s.is_empty() {
        Err("an empty path names no file".into())
    } else {
        Ok(s)
    }
}

/// A count that must be at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// Parses `123`, `64K`, `1M`, `1MiB`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1M, 512K, 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {s:?} out of range"))
}

/// A window size: [`parse_size`], at most [`crate::stream::MAX_WINDOW`].
pub fn parse_window(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    let max = crate::stream::MAX_WINDOW;
    if n > max {
        return Err(format!(
            "{s:?} is larger than the largest window, {}M (hops refuse to buffer more)",
            max >> 20
        ));
    }
    Ok(n)
}

/// Parses a `--bwlimit` rate: [`parse_size`]'s forms, except that a bare
/// number counts KiB/s, as rsync's `--bwlimit` does (`--bwlimit 100` is
/// 100 KiB/s there and here).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return parse_size(&format!("{t}K"));
    }
    parse_size(t)
}

impl PushArgs {
    /// Which extended attributes travel (`-X`, `-A`).
    pub fn xattr_sel(&self) -> crate::files::xattr::XattrSel {
        crate::files::xattr::XattrSel {
            xattrs: self.xattrs,
            acls: self.acls,
        }
    }
}

/// The FileService configuration the push options ask for.
pub fn file_service_config(args: &PushArgs) -> FileServiceConfig {
    let sizing = match args.window {
        Some(w) => Sizing::Fixed(w),
        None => Sizing::Auto {
            floor: (1 << 20).min(args.window_cap),
            cap: args.window_cap,
        },
    };
    FileServiceConfig {
        sizing,
        compress: if args.compress {
            crate::files::compress::Compression::Adaptive
        } else {
            crate::files::compress::Compression::Off
        },
        bwlimit: crate::files::pace::Limits {
            per_target: args.bwlimit,
            total: args.bwlimit_total,
        },
        xattrs: args.xattr_sel(),
        ..Default::default()
    }
}

impl WalkOptions {
    /// The walk the push options ask for (`-a` is `-r --specials --devices`).
    pub fn from_args(args: &PushArgs) -> WalkOptions {
        WalkOptions {
            recursive: args.recursive || args.archive,
            specials: args.specials || args.archive,
            devices: args.devices || args.archive,
            hard_links: args.hard_links || args.archive,
            owner: args.owner,
            xattrs: args.xattr_sel(),
            filter: args.filter.clone(),
        }
    }
}

impl Sources {
    /// The plan that puts these sources at `dest` in a target, fetching
    /// from the FileService in context `server`. Takes the entries (a
    /// copy of a 100,000-entry list cost more than the quick check of
    /// them).
    pub fn plan(
        &mut self,
        args: &PushArgs,
        server: ContextId,
        dest: impl AsRef<std::ffi::OsStr>,
    ) -> PushPlan {
        let mut plan = self.header(args, server, dest);
        plan.entries = std::mem::take(&mut self.entries);
        plan.delete.incomplete = self.incomplete.clone();
        plan.delete.keep = self.skipped.iter().map(|s| s.rel.clone()).collect();
        plan
    }

    /// The plan without its entries, nor what only the whole walk knows
    /// (`--delete`'s incomplete directories and kept names): what
    /// `push_open` takes before the entries stream in batches.
    pub fn header(
        &self,
        args: &PushArgs,
        server: ContextId,
        dest: impl AsRef<std::ffi::OsStr>,
    ) -> PushPlan {
        use std::os::unix::ffi::OsStrExt;
        let dest = dest.as_ref();
        PushPlan {
            server,
            dest: RawPath::from(Path::new(dest)),
            into_dir: self.into_dir || dest.as_bytes().ends_with(b"/"),
            entries: Vec::new(),
            options: ReceiveOptions {
                fsync: !args.no_fsync,
                preserve_owner: args.owner,
                delta: !args.whole_file,
                partial: args.partial,
                xattrs: args.xattr_sel(),
                sparse: args.sparse,
            },
            parallel: args.parallel,
            dry_run: args.dry_run,
            compare: if args.checksum {
                Compare::Checksum
            } else if args.ignore_times {
                Compare::IgnoreTimes
            } else {
                Compare::QuickCheck
            },
            sizes_bound: false,
            filter: self.filter.rules().clone(),
            delete: DeleteSpec {
                enabled: args.delete,
                max: args.max_delete,
                contents: self.contents,
                incomplete: Vec::new(),
                keep: Vec::new(),
            },
            root: self.root.clone(),
        }
    }
}

/// Runs the command; returns the exit code.
pub async fn run(args: PushArgs, log_filter: String) -> Exit {
    let Some((dest, srcs)) = args.paths.split_last() else {
        out::diag("ferrogen push: need at least one source and a destination");
        return Exit::Usage;
    };
    // The sources' top level now (a missing source is a usage error);
    // what lies beneath is walked lazily, once per target, in batches.
    let walker = match Walker::new(srcs, &WalkOptions::from_args(&args)) {
        Ok(w) => w,
        Err(e) => {
            out::diag(format_args!("ferrogen push: {e}"));
            return Exit::Usage;
        }
    };
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    crate::ping::register_service(&services, &router);
    let config = file_service_config(&args);
    let fs = FileService::start(&router, &services, config);
    if let Err(e) = walker.sources().register(&fs) {
        out::diag(format_args!("ferrogen push: {e}"));
        return Exit::Usage;
    }
    let plan = walker.sources().header(&args, router.id(), dest);
    let style = report::Style {
        json: args.json,
        itemize: args.itemize,
        dry_run: args.dry_run,
    };
    let notes = Arc::new(Notes::default());

    let targets = Targets::default();
    let work = push_all(
        &router,
        &fs,
        &args,
        plan,
        &walker,
        &style,
        &notes,
        &log_filter,
        &targets,
    );
    let (outcomes, relays) = tokio::select! {
        o = work => o,
        sig = shutdown_signal() => {
            let what = if sig == Exit::Terminated { "terminated" } else { "interrupted" };
            out::diag(format_args!("ferrogen push: {what}: cancelling transfers"));
            // Each target first learns that the push is off, so that the
            // transfers failing next make it discard what it received
            // instead of putting it in place; only then does the data stop.
            cancel_targets(&router, &targets).await;
            services.shutdown().await;
            // Give the abort messages a moment to leave.
            tokio::time::sleep(Duration::from_millis(200)).await;
            router.close_all_streams("controller interrupted");
            return sig;
        }
    };

    let mut failed = outcomes.is_empty();
    for t in &outcomes {
        t.summary(&style);
        failed |= t.failed;
    }
    if args.json {
        for (name, stats) in &relays {
            report::print_relay(name, stats);
        }
    }
    if args.compress {
        let s = fs.stats();
        tracing::info!(
            "-z: {} chunks compressed ({} to {} bytes), {} tried and sent raw",
            s.compressed_chunks,
            s.compressed_bytes_in,
            s.compressed_bytes_out,
            s.raw_chunks
        );
    }
    services.shutdown().await;
    router.close_all_streams("push finished");
    if failed || notes.any_unread() {
        Exit::Failure
    } else {
        Exit::Success
    }
}

/// The contexts a push has reached so far (to cancel on an interrupt).
type Targets = Arc<std::sync::Mutex<Vec<ContextId>>>;

/// Tells every target reached that the push is cancelled, waiting a
/// little for each to confirm (a target that does not answer is lost to
/// us anyway: its transfers end when the controller goes).
async fn cancel_targets(router: &Router, targets: &Targets) {
    let ids: Vec<ContextId> = match targets.lock() {
        Ok(t) => t.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let mut calls = tokio::task::JoinSet::new();
    for id in ids {
        let router = router.clone();
        calls.spawn(async move {
            let _: Result<(), _> = router
                .call_service_timeout(
                    id,
                    TARGET_SERVICE,
                    "cancel",
                    &(),
                    Some(Duration::from_secs(2)),
                )
                .await;
        });
    }
    while calls.join_next().await.is_some() {}
}

/// Waits for SIGINT or SIGTERM; returns the status to exit with.
pub(crate) async fn shutdown_signal() -> Exit {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Exit::Interrupted,
        _ = term.recv() => Exit::Terminated,
    }
}

/// What the walks found that is said once for all targets: what could
/// not be read (the push then fails) and the special files skipped. Each
/// target walks the sources itself; the first walk to end reports.
#[derive(Default)]
struct Notes {
    said: std::sync::atomic::AtomicBool,
    unread: std::sync::atomic::AtomicBool,
}

impl Notes {
    /// Reports `walked`'s notes, unless another walk did already.
    fn say(&self, walked: &Sources, json: bool) {
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

    fn any_unread(&self) -> bool {
        self.unread.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The result that says a target failed as a whole.
fn whole_failure(dest: &RawPath, error: String) -> EntryResult {
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
fn failed_whole(style: &report::Style, host: &str, dest: &RawPath, error: String) -> report::Tally {
    let mut t = report::Tally::new(host);
    t.add(style, &[whole_failure(dest, error)]);
    t
}

/// Pushes to every target, each group of targets reached through the same
/// hops (`--via`, a hosts file's relay column) on its own, all groups at
/// once; the tallies, and what each relay's tee fetched.
#[allow(clippy::too_many_arguments)]
async fn push_all(
    router: &Router,
    fs: &FileService,
    args: &PushArgs,
    plan: PushPlan,
    walker: &Walker,
    style: &report::Style,
    notes: &Arc<Notes>,
    log_filter: &str,
    targets: &Targets,
) -> (Vec<report::Tally>, Vec<(String, TeeStats)>) {
    let groups = args.target.groups();
    let bars = report::Bars::new(!args.json, &args.target.hosts());
    let runs = groups.iter().map(|g| {
        let targs = args.target.for_group(g);
        let (bars, plan) = (&bars, plan.clone());
        Box::pin(async move {
            push_group(
                router, fs, args, &targs, plan, walker, style, notes, log_filter, targets, bars,
            )
            .await
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>
    });
    let done = join_all(runs.collect()).await;
    let mut tallies = Vec::new();
    let mut relays = Vec::new();
    for (t, r) in done {
        tallies.extend(t);
        relays.extend(r);
    }
    (tallies, relays)
}

/// Runs `futures` concurrently on this task; their outputs in order.
/// (Written here rather than adding the `futures` crate for one function.)
async fn join_all<T>(
    mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Pushes to one group of targets: connects its hops, starts the tee in
/// its last hop (which then gets the plan's batches once, from one walk,
/// and hands them to each target), and pushes to its targets `--fanout`
/// at a time.
#[allow(clippy::too_many_arguments)]
async fn push_group(
    router: &Router,
    fs: &FileService,
    args: &PushArgs,
    targs: &TargetArgs,
    plan: PushPlan,
    walker: &Walker,
    style: &report::Style,
    notes: &Arc<Notes>,
    log_filter: &str,
    targets: &Targets,
    bars: &report::Bars,
) -> (Vec<report::Tally>, Option<(String, TeeStats)>) {
    let hosts = targs.hosts();
    let chain = match target::connect_chain(router, targs, log_filter).await {
        Ok(c) => c,
        Err((_, e)) => {
            let failed = hosts
                .into_iter()
                .map(|host| failed_whole(style, &host, &plan.dest, e.clone()))
                .collect();
            return (failed, None);
        }
    };
    let mut plan = plan;
    // Behind a tee, the plan is walked once here and its batches cross
    // the uplink once: the relay keeps them and hands them to each target.
    // The first batch follows `start` at once (the relay waits for the tee
    // if it overtakes it), so the relay reads ahead a round trip sooner.
    let (started, feed) = match chain.last {
        Some(relay) if !args.no_tee => {
            let feed = Feed::start(
                router,
                relay,
                walker.restart(),
                uplink(args, targs, log_filter),
            );
            match start_tee(router, relay, &chain, args, hosts.len()).await {
                Some(relay) => (Some(relay), Some(feed)),
                None => (None, None),
            }
        }
        _ => (None, None),
    };
    if let Some(relay) = started {
        plan.server = relay;
    }
    let sem = Arc::new(Semaphore::new(args.fanout.max(1)));
    let tee_final: Arc<std::sync::Mutex<Option<TeeStats>>> = Arc::default();
    // Delta transfer is for a link: on one machine (a local target, no
    // hop) the file is sent whole unless --no-whole-file.
    let is_local = |host: &str| targs.via.is_empty() && target::parse(host) == Ok(Method::Local);
    let local_delta = plan.options.delta && args.no_whole_file;
    let local_plan = Arc::new(PushPlan {
        options: ReceiveOptions {
            delta: local_delta,
            ..plan.options.clone()
        },
        ..plan.clone()
    });
    let plan = Arc::new(plan);
    let mut tasks = Vec::new();
    let hosts_in_flight = hosts.len().min(args.fanout.max(1));
    for host in hosts {
        let plan = if is_local(&host) { &local_plan } else { &plan };
        let (router, fs, chain, plan, sem) = (
            router.clone(),
            fs.clone(),
            chain.clone(),
            plan.clone(),
            sem.clone(),
        );
        let targs = targs.clone();
        let filter = log_filter.to_string();
        let bar = bars.add(&host, 0);
        let stripes = args.stripes;
        // Stripe transports are started before the round trip is known
        // (speculatively) only for a push to one target: targets pushed to
        // at once share this machine's uplink, and eight speculative ssh
        // connections each (256 at a fan-out of 32) would cost more than
        // they could bring. Stripes still come by what they deliver.
        let size_hint = if hosts_in_flight > 1 && args.stripes.is_none() {
            0
        } else {
            top_files_size(&args.paths)
        };
        let reached = targets.clone();
        let batches = match &feed {
            Some(f) => Batches::Relay(f.clone()),
            None => Batches::Walk(Box::new(walker.restart())),
        };
        let style = style.clone();
        let notes = notes.clone();
        let tee_final = tee_final.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let one = One {
                tee_final: &tee_final,
                router: &router,
                fs: &fs,
                targs: &targs,
                chain: &chain,
                plan: &plan,
                log_filter: &filter,
                stripes,
                reached: &reached,
                style: &style,
                notes: &notes,
                relay: started,
                size_hint,
            };
            one.push(host, batches, bar).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(o) => out.push(o),
            Err(e) => out.push(failed_whole(
                style,
                "?",
                &RawPath::default(),
                format!("internal error: {e}"),
            )),
        }
    }
    let stopped = tee_final.lock().ok().and_then(|mut f| f.take());
    let relay = match (started, stopped) {
        // The last target's session stopped the tee and brought its figures.
        (Some(_), Some(stats)) => Some(stopped_tee(&chain, stats)),
        (Some(relay), None) => stop_tee(router, relay, &chain).await,
        (None, _) => None,
    };
    (out, relay)
}

/// How to stripe the uplink to a group's relay, if at all. Striped only
/// when asked (`--stripes N`): chosen by round trip alone, 9 streams on a
/// 100 ms / 100 Mbit uplink made a 64 MiB push 9.2-10.3 s instead of 8.5
/// (their connections compete with the data for a link one stream nearly
/// fills), until stripes are chosen by what they deliver (issue 14).
fn uplink(args: &PushArgs, targs: &TargetArgs, log_filter: &str) -> Option<Uplink> {
    let explicit = args.stripes.is_some_and(|n| n > 1);
    targs.via.first().filter(|_| explicit).map(|spec| Uplink {
        targs: TargetArgs {
            via: Vec::new(),
            ..targs.clone()
        },
        spec: spec.clone(),
        stripes: args.stripes,
        log_filter: log_filter.to_string(),
    })
}

/// Starts the tee in `relay` (the last `--via` hop) for `targets` targets:
/// it fetches each file once from this controller and serves every target
/// behind it. `None` (with a warning) if it cannot: the targets then
/// fetch from here.
async fn start_tee(
    router: &Router,
    relay: ContextId,
    chain: &Chain,
    args: &PushArgs,
    targets: usize,
) -> Option<ContextId> {
    let tee = TeeArgs {
        upstream: router.id(),
        serve: crate::files::source::ServeOptions {
            window: args.window,
            window_cap: args.window_cap,
            compress: args.compress,
            bwlimit: args.bwlimit,
            bwlimit_total: args.bwlimit_total,
            xattrs: args.xattr_sel(),
        },
        sparse: args.sparse,
        targets: u32::try_from(targets).unwrap_or(0),
        read_ahead: !args.no_read_ahead,
    };
    let r: Result<(), _> = router.call_service(relay, TEE_SERVICE, "start", &tee).await;
    match r {
        Ok(()) => Some(relay),
        Err(e) => {
            let name = chain.names.last().map(String::as_str).unwrap_or("relay");
            out::diag(format_args!(
                "ferrogen push: {name}: no tee ({e}); every target behind it fetches from here"
            ));
            None
        }
    }
}

/// The relay's name and what its tee fetched, from the figures the last
/// target's session brought back (the tee stopped itself then).
fn stopped_tee(chain: &Chain, s: TeeStats) -> (String, TeeStats) {
    let name = chain.names.last().cloned().unwrap_or_default();
    log_tee(&name, &s);
    (name, s)
}

fn log_tee(name: &str, s: &TeeStats) {
    tracing::info!(
        "{name}: tee fetched {} files ({} in batches, {} bytes) once, served {} transfers",
        s.files_fetched + s.small_fetched,
        s.small_fetched,
        s.bytes_fetched,
        s.served
    );
}

/// Stops the relay's tee (removing its spool); the relay's name and what
/// its tee fetched.
async fn stop_tee(router: &Router, relay: ContextId, chain: &Chain) -> Option<(String, TeeStats)> {
    let name = chain.names.last().cloned().unwrap_or_default();
    let r: Result<TeeStats, _> = router
        .call_service_timeout(
            relay,
            TEE_SERVICE,
            "stop",
            &(),
            Some(Duration::from_secs(30)),
        )
        .await;
    match r {
        Ok(s) => {
            log_tee(&name, &s);
            Some((name, s))
        }
        Err(e) => {
            tracing::warn!("{name}: stopping the tee failed: {e}");
            None
        }
    }
}

/// Bytes acknowledged and files sent to `target` by the relay's tee.
async fn tee_progress(router: &Router, relay: ContextId, target: ContextId) -> Option<(u64, u64)> {
    let r: Result<Vec<(u64, u64)>, _> = router
        .call_service_timeout(
            relay,
            TEE_SERVICE,
            "progress",
            &vec![target],
            Some(Duration::from_secs(2)),
        )
        .await;
    r.ok().and_then(|v| v.first().copied())
}

/// Walks on a blocking thread, one or two batches ahead of whoever
/// takes them from the channel (which is the back-pressure); the thread
/// ends with the whole walk's record.
fn walk_in_batches(
    walker: Walker,
) -> (
    tokio::task::JoinHandle<Sources>,
    tokio::sync::mpsc::Receiver<Walked>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Walked>(2);
    let walking = tokio::task::spawn_blocking(move || {
        let mut walker = walker;
        let mut files = 0u64;
        loop {
            let entries = walker.next_batch(BATCH_ENTRIES, BATCH_BYTES);
            let done = entries.is_empty();
            files += entries
                .iter()
                .filter(|e| matches!(e, crate::files::plan::PlanEntry::File { .. }))
                .count() as u64;
            let batch = Walked {
                entries,
                bytes: walker.total_bytes(),
                files,
            };
            if done || tx.blocking_send(batch).is_err() {
                break;
            }
        }
        walker.finish()
    });
    (walking, rx)
}

/// Where a target's plan batches come from: its own walk (the batches go
/// to it directly), or the group's one walk whose batches the relay keeps.
enum Batches {
    Walk(Box<Walker>),
    Relay(Feed),
}

/// The group's walk behind a tee: each batch is sent to the relay once;
/// targets follow at their own pace.
#[derive(Clone)]
struct Feed {
    state: tokio::sync::watch::Receiver<FeedState>,
}

/// How far the group's walk has got.
#[derive(Clone, Default)]
struct FeedState {
    /// Batches the relay holds (numbered from 0).
    batches: u64,
    /// The walk's totals so far.
    bytes: u64,
    files: u64,
    /// The whole walk, once it ended; or why the batches stopped.
    done: Option<Result<Arc<Sources>, String>>,
}

/// A batch at the relay, as [`Feed::batch`] tells it.
struct FedBatch {
    /// The walk's bytes and files so far.
    bytes: u64,
    files: u64,
    /// The whole walk, if this batch is its last.
    last: Option<Arc<Sources>>,
}

/// How to stripe the uplink to a relay: its first hop's spec.
struct Uplink {
    targs: TargetArgs,
    spec: String,
    stripes: Option<usize>,
    log_filter: String,
}

impl Feed {
    fn start(router: &Router, relay: ContextId, walker: Walker, uplink: Option<Uplink>) -> Feed {
        let (tx, state) = tokio::sync::watch::channel(FeedState::default());
        let router = router.clone();
        let mut uplink = uplink;
        tokio::spawn(async move {
            let (walking, mut brx) = walk_in_batches(walker);
            let mut k = 0u64;
            while let Some(batch) = brx.recv().await {
                let r: Result<(), _> = router
                    .call_service(relay, TEE_SERVICE, "batch", &(k, batch.entries))
                    .await;
                if let Err(e) = r {
                    tx.send_modify(|s| s.done = Some(Err(e.to_string())));
                    return;
                }
                k += 1;
                tx.send_modify(|s| {
                    s.batches = k;
                    s.bytes = batch.bytes;
                    s.files = batch.files;
                });
                if batch.bytes >= STRIPE_MIN_BYTES
                    && let Some(u) = uplink.take()
                {
                    open_stripes(
                        &router,
                        &u.targs,
                        &u.spec,
                        relay,
                        u.stripes,
                        batch.bytes,
                        &u.log_filter,
                    );
                }
            }
            let done = match walking.await {
                Ok(w) => Ok(Arc::new(w)),
                Err(e) => Err(format!("internal error walking the sources: {e}")),
            };
            tx.send_modify(|s| s.done = Some(done));
        });
        Feed { state }
    }

    /// Waits until batch `k` is at the relay (the walk's bytes and files so
    /// far, and the whole walk if `k` is known to be its last batch), or
    /// the walk ended (`Err` with its result).
    async fn batch(&mut self, k: u64) -> Result<FedBatch, Result<Arc<Sources>, String>> {
        let got = self
            .state
            .wait_for(|s| s.batches > k || s.done.is_some())
            .await
            .map(|s| s.clone());
        match got {
            Ok(s) if s.batches > k => Ok(FedBatch {
                bytes: s.bytes,
                files: s.files,
                last: match s.done {
                    Some(Ok(walked)) if s.batches == k + 1 => Some(walked),
                    _ => None,
                },
            }),
            Ok(s) => Err(s.done.unwrap_or_else(|| Err("the walk stopped".into()))),
            Err(_) => Err(Err("the walk stopped".into())),
        }
    }
}

/// Round trips below this are not worth striping: the path's
/// bandwidth × delay then fits one SSH channel window (2 MiB) at any
/// realistic rate, and extra connections only add encryption work that
/// competes for the same CPUs (measured: 4 stripes on loopback were
/// slower than one).
const STRIPE_MIN_RTT: Duration = Duration::from_millis(4);

/// Streams for a path of round trip `rtt` at most: the primary (kept for
/// calls and acknowledgements) plus data stripes. One SSH channel carries
/// 2 MiB per round trip, so longer paths need more of them to fill a fast
/// link: one data stripe per 12.5 ms of round trip, at least 2 and at most
/// 8 (each costs a connection and its encryption). The count asked of a
/// pull without `--stripes`; the default push's steps
/// ([`crate::connect::stripe_steps`]) may go up to that of twice the
/// round trip.
pub fn auto_stripes(rtt: Duration) -> usize {
    1 + ((rtt.as_secs_f64() * 1000.0 / 12.5).ceil() as usize).clamp(2, 8)
}

/// Plans smaller than this are not worth the extra connections.
pub(crate) const STRIPE_MIN_BYTES: u64 = 32 << 20;

/// Opens extra streams to the first hop of an ssh target reached directly
/// from the controller, in the background, when the push is large and the
/// path long enough for them to help. The FileService picks stripes up
/// as they attach. (Public for `tools/ferroprobe`, which measures calls on
/// a push set up exactly like this one.)
pub fn open_stripes(
    router: &Router,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) {
    open_stripes_with(
        router, targs, host, target, stripes, total, log_filter, None,
    );
}

/// Whether a push of `total` bytes to `host` may stripe, and with what
/// method (the first hop's: `ssh` only).
fn stripe_method(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) -> Option<Method> {
    if stripes.is_some_and(|n| n <= 1) || !targs.via.is_empty() || total < STRIPE_MIN_BYTES {
        return None;
    }
    let spec = targs.spec(host, log_filter).ok()?;
    match spec.method {
        Method::Ssh(_) => Some(spec.method),
        _ => None,
    }
}

/// Starts the stripe transports of a push to `host` before its primary
/// connection is made, so their connection set-up (a dozen round trips
/// for ssh) overlaps the primary's and its bootstrap: as many as asked,
/// or as many as the longest path would get (those the measured round
/// trip does not call for are ended once it is known). `None` when the
/// push will not stripe.
pub fn start_stripes_early(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
) -> Option<crate::connect::stripe::Early> {
    let count = stripes.unwrap_or_else(|| auto_stripes(Duration::MAX)) - 1;
    start_stripes_early_n(targs, host, stripes, total, log_filter, count)
}

/// [`start_stripes_early`], `count` transports.
fn start_stripes_early_n(
    targs: &TargetArgs,
    host: &str,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    count: usize,
) -> Option<crate::connect::stripe::Early> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    Some(crate::connect::stripe::Early::start(
        &method,
        &format!("ssh.{host}"),
        count,
    ))
}

/// [`open_stripes`], using transports started by [`start_stripes_early`]
/// when given. Returns the task that attaches them, when there were early
/// transports: they attach a few round trips after the context is up, and
/// a push that waits for them starts on all its streams at once instead of
/// on the primary alone (whose fresh TCP connection needs as many round
/// trips to open up as the stripes take to attach).
#[allow(clippy::too_many_arguments)]
pub fn open_stripes_with(
    router: &Router,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    early: Option<crate::connect::stripe::Early>,
) -> Option<tokio::task::JoinHandle<()>> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    let spec = targs.spec(host, log_filter).ok()?;
    let first_hop = router
        .stream_towards(target)
        .and_then(|s| router.stream_remote(s))?;
    let early = early.filter(|e| !e.is_empty());
    let has_early = early.is_some();
    let (router, host) = (router.clone(), host.to_string());
    let task = tokio::spawn(async move {
        let t0 = Instant::now();
        let ping = || crate::ping::round_trip(&router, first_hop);
        // Two pings at once and, for early transports, the context's
        // stripe offer at the same time: one round trip, not three,
        // before the stripes can be attached.
        let prepare = async {
            match early {
                Some(e) => e.prepare(&router, first_hop, spec.timeout()).await,
                None => None,
            }
        };
        let (a, b, prepared) = tokio::join!(ping(), ping(), prepare);
        let (Ok(a), Ok(b)) = (a, b) else {
            return;
        };
        let best = a.min(b);
        let want = match stripes {
            Some(n) => n,
            None if best < STRIPE_MIN_RTT => {
                tracing::info!("{host}: round trip {best:?}; one stream is enough, no stripes");
                return;
            }
            None => auto_stripes(best),
        };
        let n = match prepared {
            Some(p) => p.attach(&router, want - 1, spec.timeout()).await,
            None => {
                crate::connect::stripe::open(&router, first_hop, &method, want - 1, spec.timeout())
                    .await
            }
        };
        tracing::info!(
            "{host}: round trip {best:?}; {n} of {} extra streams attached ({:?} after the context was up)",
            want - 1,
            t0.elapsed()
        );
    });
    has_early.then_some(task)
}

/// A task ended when its handle is dropped (the push to that target
/// ended): its early transports not attached end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the stripe task of a push to one target needs.
struct StripeJob {
    router: Router,
    fs: FileService,
    host: String,
    target: u32,
    stripes: Option<usize>,
    method: Method,
    timeout: Duration,
}

/// Opens the stripes of a push to `target` (a direct ssh child) in the
/// background; the push does not wait for them — the FileService picks
/// stripes up as they attach, mid-transfer too. `--stripes N`: N − 1 data
/// stripes at once. The default: in steps chosen by what they deliver
/// ([`crate::connect::stripe_steps`]), using the transports started
/// early first, up to the round trip's cap ([`auto_stripes`]).
/// `None` when the push does not stripe.
#[allow(clippy::too_many_arguments)]
fn stripe_in_steps(
    router: &Router,
    fs: &FileService,
    targs: &TargetArgs,
    host: &str,
    target: u32,
    stripes: Option<usize>,
    total: u64,
    log_filter: &str,
    early: Option<crate::connect::stripe::Early>,
) -> Option<AbortOnDrop> {
    let method = stripe_method(targs, host, stripes, total, log_filter)?;
    let spec = targs.spec(host, log_filter).ok()?;
    let job = StripeJob {
        router: router.clone(),
        fs: fs.clone(),
        host: host.to_string(),
        target,
        stripes,
        method,
        timeout: spec.timeout(),
    };
    Some(AbortOnDrop(tokio::spawn(job.run(early))))
}

impl StripeJob {
    async fn ping(&self, to: u32) -> Option<Duration> {
        crate::ping::round_trip(&self.router, to).await.ok()
    }

    /// Attaches `more` data stripes: early transports first, fresh ones
    /// for the rest. The future gives how many attached.
    fn attach_more(
        &self,
        prepared: &mut Option<crate::connect::stripe::Prepared>,
        first_hop: u32,
        more: usize,
    ) -> impl std::future::Future<Output = usize> + Send + 'static {
        let k = prepared.as_ref().map_or(0, |p| p.len()).min(more);
        let from_early = match prepared.as_mut() {
            Some(p) if k > 0 => Some(p.attach_next(&self.router, k, self.timeout)),
            _ => None,
        };
        let fresh = more - k;
        let (router, method, timeout) = (self.router.clone(), self.method.clone(), self.timeout);
        async move {
            let early = async {
                match from_early {
                    Some(f) => f.await,
                    None => 0,
                }
            };
            let fresh = async {
                if fresh == 0 {
                    return 0;
                }
                crate::connect::stripe::open(&router, first_hop, &method, fresh, timeout).await
            };
            let (a, b) = tokio::join!(early, fresh);
            a + b
        }
    }

    async fn run(self, early: Option<crate::connect::stripe::Early>) {
        use crate::connect::stripe_steps::{StepAction, StepRules, Steps};
        let (router, host) = (&self.router, &self.host);
        let Some(stream) = router.stream_towards(self.target) else {
            return;
        };
        let Some(first_hop) = router.stream_remote(stream) else {
            return;
        };
        let t0 = Instant::now();
        // Two pings at once and, for early transports, the context's
        // stripe offer at the same time: one round trip, not three,
        // before the stripes can be attached.
        let prepare = async {
            match early.filter(|e| !e.is_empty()) {
                Some(e) => e.prepare(router, first_hop, self.timeout).await,
                None => None,
            }
        };
        let (a, b, mut prepared) =
            tokio::join!(self.ping(first_hop), self.ping(first_hop), prepare);
        let (Some(a), Some(b)) = (a, b) else {
            return;
        };
        let best = a.min(b);
        if let Some(n) = self.stripes {
            // An explicit count: all at once.
            let got = self.attach_more(&mut prepared, first_hop, n - 1).await;
            // Early transports beyond the count end here.
            drop(prepared);
            tracing::info!(
                "{host}: round trip {best:?}; {got} of {} extra streams attached ({:?} after the context was up)",
                n - 1,
                t0.elapsed()
            );
            return;
        }
        if best < STRIPE_MIN_RTT {
            tracing::info!("{host}: round trip {best:?}; one stream is enough, no stripes");
            return;
        }
        // The cap: the round trip's count for twice this round trip. The
        // channel windows alone call for one data stripe per 12.5 ms; on
        // short paths more ssh processes also spread the encryption over
        // more cores (measured at 20 ms: 3 data stripes 5.4–6.3 s against
        // 6.8–7.3 s with 2), and the growth rule stops where they stop paying.
        let cap = auto_stripes(best * 2) - 1;
        let rules = StepRules::for_rtt(best, cap);
        let mut steps = Steps::new(rules);
        // Transports started early (for the round trip the connection's
        // set-up time suggested; their CPU is spent) are the first step,
        // at once: attaching costs a round trip, and their TCP connections
        // then open up together with the primary's rather than after it —
        // each later step costs its fresh connections' slow start (~5
        // round trips in which the in-order acknowledgements wait for
        // them). Measured against what one channel could carry.
        let channel = crate::connect::stripe_steps::CHANNEL_WINDOW as f64 / best.as_secs_f64();
        let mut first = match prepared.as_ref().map_or(0, |p| p.len()).min(cap) {
            0 => None,
            n => Some(steps.open_now(n, channel)),
        };
        let mut asked = 0usize;
        let mut attaching: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>,
        > = None;
        loop {
            let now = Instant::now();
            let delivered = self.fs.delivered(self.target);
            if let Some(rtt) = delivered.min_rtt {
                steps.on_min_rtt(rtt);
            }
            steps.on_delivered(now, delivered.wire_bytes);
            steps.on_stripes(router.stripes(stream).len().saturating_sub(1));
            let action = first.take().unwrap_or_else(|| steps.poll(now));
            match action {
                StepAction::Open(more) => {
                    asked += more;
                    tracing::debug!(
                        "{host}: {:.1} MiB/s over {} data streams; opening {more} more stripes",
                        steps.best_rate() / (1 << 20) as f64,
                        steps.attached().max(1)
                    );
                    attaching = Some(Box::pin(self.attach_more(&mut prepared, first_hop, more)));
                }
                StepAction::Done => {
                    tracing::info!(
                        "{host}: round trip {best:?}; stripes settled at {} data streams ({:?}, {:.1} MiB/s){}",
                        steps.attached(),
                        steps.ended(),
                        steps.best_rate() / (1 << 20) as f64,
                        match prepared.as_ref().map_or(0, |p| p.len()) {
                            0 => String::new(),
                            n => format!("; {n} early transports ended"),
                        }
                    );
                    return;
                }
                StepAction::Wait => {}
            }
            tokio::select! {
                got = async {
                    match attaching.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if attaching.is_some() => {
                    attaching = None;
                    let total = steps.attached() + got;
                    steps.on_attached(Instant::now(), total);
                    tracing::info!(
                        "{host}: round trip {best:?}; {total} of {asked} extra streams attached ({:?} after the context was up)",
                        t0.elapsed()
                    );
                }
                _ = tokio::time::sleep(rules.tick()) => {}
            }
        }
    }
}

/// The bytes of the regular files among the source operands (`paths`
/// without its last, the destination): what a push is known to carry
/// before its walk. Directories count nothing.
fn top_files_size(paths: &[std::ffi::OsString]) -> u64 {
    let srcs = paths.split_last().map_or(&[][..], |(_, s)| s);
    srcs.iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// How long after the primary connection's start the early stripes start,
/// if it is not up by then. An ssh connection and a cached bootstrap take
/// about 15 round trips: up within this, the round trip is under ~15 ms.
const EARLY_STRIPE_AFTER: Duration = Duration::from_millis(250);

/// How long after the primary connection's start the rest of the early
/// transports (up to the longest path's count) start, if it is not up by
/// then: a path of ~30 ms or more (an ssh connection and a cached
/// bootstrap take about 15 round trips; on the project's delay line the
/// context is up in 0.4–0.7 s at 20 ms, 1.6 s at 100 ms). Started at 1 s,
/// they attached 0.7 s after the first two at 100 ms and the 1 GiB push
/// took 0.6 s longer than with all eight at 250 ms; at 500 ms, 0.15 s.
const EARLY_STRIPE_MORE: Duration = Duration::from_millis(500);

/// How many stripe transports a push to one target starts before its
/// primary connection is up, step by step: at [`EARLY_STRIPE_AFTER`] and
/// at [`EARLY_STRIPE_MORE`] if the connection is not up by then. Once the
/// path's round trip is known (read from ssh's own TCP connection, see
/// [`path_rtt`]) the count is what that round trip calls for
/// ([`auto_stripes`]), all at once: eight at 100 ms as soon as 250 ms
/// (measured 0.15 s sooner to full rate than at 500 ms), and no more than
/// the first two at 20 ms however slow the start-up (on the shared
/// testbed, 0.55 s: the clock rule started eight there). Without it, the
/// clock rule: the first step's at 250 ms, the longest path's rest at
/// 500 ms — also when the round trip read is under [`STRIPE_MIN_RTT`]:
/// that is ssh's hop to a local forwarder or proxy, not the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EarlySteps {
    /// Transports of the first step.
    first: usize,
    /// The rest the longest path would get (0 with `--stripes`).
    rest: usize,
    /// `--stripes N` given: N - 1 at the first step, whatever the path.
    fixed: bool,
}

impl EarlySteps {
    fn new(stripes: Option<usize>) -> EarlySteps {
        let first = stripes.map_or(crate::connect::stripe_steps::FIRST_STEP, |n| {
            n.saturating_sub(1)
        });
        let rest = match stripes {
            Some(_) => 0,
            None => (auto_stripes(Duration::MAX) - 1).saturating_sub(first),
        };
        EarlySteps {
            first,
            rest,
            fixed: stripes.is_some(),
        }
    }

    /// The transports to start at step `step` (0 or 1) given the round
    /// trip known by then, and whether no step follows.
    fn at(&self, step: usize, rtt: Option<Duration>) -> (usize, bool) {
        let started = if step == 0 { 0 } else { self.first };
        // A local round trip on a connection not up within 250 ms is not
        // the path: ssh talks to a local forwarder or proxy (or the test
        // suite's delaying relay), whose far side the kernel cannot see.
        let rtt = rtt.filter(|r| *r >= STRIPE_MIN_RTT);
        match rtt {
            _ if self.fixed => (if step == 0 { self.first } else { 0 }, true),
            Some(r) => ((auto_stripes(r) - 1).saturating_sub(started), true),
            None if step == 0 => (self.first, self.rest == 0),
            None => (self.rest, true),
        }
    }
}

/// What a push to one target needs.
struct One<'a> {
    router: &'a Router,
    fs: &'a FileService,
    targs: &'a TargetArgs,
    chain: &'a Chain,
    plan: &'a PushPlan,
    log_filter: &'a str,
    stripes: Option<usize>,
    reached: &'a Targets,
    style: &'a report::Style,
    notes: &'a Notes,
    /// The group's relay, when it tees: the session's calls go through it.
    relay: Option<ContextId>,
    /// The tee's final figures, once the last target's session stopped it.
    tee_final: &'a std::sync::Mutex<Option<TeeStats>>,
    /// The bytes of the regular files named on the command line (what is
    /// known before the walk): enough of them start stripes early.
    size_hint: u64,
}

/// A batch of the walk, with the walk's totals so far.
struct Walked {
    entries: Vec<crate::files::plan::PlanEntry>,
    bytes: u64,
    files: u64,
}

impl One<'_> {
    async fn push(
        &self,
        host: String,
        batches: Batches,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        let t0 = Instant::now();
        // The stripes' transports start while the primary connection is
        // still being made (see start_stripes_early) — if it is not up
        // within EARLY_STRIPE_AFTER: a path that fast gains nothing from
        // them (and below 4 ms gets none), and the primary, being well
        // ahead, is never the connection an sshd that limits connections
        // still in authentication (MaxStartups) drops.
        // How many, and when: EarlySteps — as many as the path's round
        // trip calls for once ssh's connection has measured it, so that
        // each step of stripes attaches in one round trip rather than
        // after a fresh ssh connection.
        let mut early: Option<crate::connect::stripe::Early> = None;
        let connected = {
            let watch = SpawnWatch::new();
            let connect = target::connect_target_watched(
                self.router,
                self.targs,
                self.chain,
                &host,
                self.log_filter,
                watch.clone(),
            );
            tokio::pin!(connect);
            let steps = EarlySteps::new(self.stripes);
            let mut step = 0;
            let mut last = false;
            loop {
                let at = match step {
                    0 => Some(EARLY_STRIPE_AFTER),
                    1 if !last => Some(EARLY_STRIPE_MORE),
                    _ => None,
                };
                let wait = at.map_or(Duration::ZERO, |a| a.saturating_sub(t0.elapsed()));
                tokio::select! {
                    r = &mut connect => break r,
                    _ = tokio::time::sleep(wait), if at.is_some() => {
                        // What the kernel measured on ssh's connection so
                        // far (see connect::path_rtt); None: the clock rule.
                        let rtt = if self.stripes.is_none() {
                            watch.pid().and_then(path_rtt::tcp_rtt)
                        } else {
                            None
                        };
                        let (count, done) = steps.at(step, rtt);
                        tracing::debug!(
                            "{host}: early stripe step {step} at {:?}: path round trip {rtt:?}, \
                             {count} transports",
                            t0.elapsed()
                        );
                        step += 1;
                        last = done;
                        if count == 0 {
                            continue;
                        }
                        let more = start_stripes_early_n(
                            self.targs, &host, self.stripes, self.size_hint, self.log_filter, count,
                        );
                        match (early.as_mut(), more) {
                            (Some(e), Some(m)) => e.absorb(m),
                            (None, m) => early = m,
                            (Some(_), None) => {}
                        }
                        if early.is_none() {
                            // Not a push that stripes: no more early transports.
                            last = true;
                        }
                    }
                }
            }
        };
        let info = match connected {
            Ok(i) => i,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon_with_message("connection failed");
                }
                let mut t = failed_whole(self.style, &host, &self.plan.dest, e);
                t.seconds = t0.elapsed().as_secs_f64();
                return t;
            }
        };
        if let Ok(mut t) = self.reached.lock() {
            t.push(info.id);
        }
        if let Some(b) = &bar {
            report::Bars::connected(b);
        }
        // Started early: attached in steps from now on, while the push
        // runs on the streams it has (see stripe_in_steps). The task ends
        // with this push (the transports it did not attach with it).
        let mut striped = false;
        let mut _stripe_task = None;
        if early.is_some() {
            striped = true;
            _stripe_task = stripe_in_steps(
                self.router,
                self.fs,
                self.targs,
                &host,
                info.id,
                self.stripes,
                self.size_hint,
                self.log_filter,
                early,
            );
        }
        let mut tally = report::Tally::new(&host);
        tally.context = info.name.clone();
        let failure = |e: crate::call::CallError| {
            let msg = super::call_failure(&info.name, "the push", &e);
            tracing::warn!("{}", super::sanitize::sanitize(&msg));
            msg
        };
        let opened: Result<PushOpened, _> = match self.relay {
            Some(relay) => {
                let args = (info.id, self.plan);
                self.call_at(relay, TEE_SERVICE, &info, "push_open", &args, &bar, 0)
                    .await
            }
            None => self.call(&info, "push_open", self.plan, &bar, 0).await,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tally.add(self.style, &[whole_failure(&self.plan.dest, failure(e))]);
                return self.end(tally, t0, bar);
            }
        };
        if !opened.failed.is_empty() {
            tally.add(self.style, &opened.failed);
            return self.end(tally, t0, bar);
        }
        let session = opened.session;
        let mut files = 0;
        // The close's answer, when it came with the last batch's.
        let mut closed_early: Option<Result<Vec<EntryResult>, String>> = None;
        let walked: Arc<Sources> = match batches {
            Batches::Walk(walker) => {
                let (walking, mut rx) = walk_in_batches(*walker);
                while let Some(batch) = rx.recv().await {
                    files = batch.files;
                    if let Some(b) = &bar {
                        b.set_length(batch.bytes);
                    }
                    if !striped && batch.bytes >= STRIPE_MIN_BYTES {
                        striped = true;
                        _stripe_task = stripe_in_steps(
                            self.router,
                            self.fs,
                            self.targs,
                            &host,
                            info.id,
                            self.stripes,
                            batch.bytes,
                            self.log_filter,
                            None,
                        );
                    }
                    let args = PushBatch {
                        session,
                        entries: batch.entries,
                    };
                    match self
                        .call::<_, Vec<EntryResult>>(&info, "push_batch", &args, &bar, files)
                        .await
                    {
                        Ok(results) => tally.add(self.style, &results),
                        Err(e) => {
                            drop(rx);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, failure(e))]);
                            return self.end(tally, t0, bar);
                        }
                    }
                }
                match walking.await {
                    Ok(w) => Arc::new(w),
                    Err(e) => {
                        let e = format!("internal error walking the sources: {e}");
                        tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                        return self.end(tally, t0, bar);
                    }
                }
            }
            Batches::Relay(mut feed) => {
                let relay = self.relay.unwrap_or_default();
                let mut k = 0u64;
                loop {
                    let fed = match feed.batch(k).await {
                        Ok(fed) => fed,
                        Err(Ok(walked)) => break walked,
                        Err(Err(e)) => {
                            let e = format!("{}: the plan did not reach the relay: {e}", info.name);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                            return self.end(tally, t0, bar);
                        }
                    };
                    files = fed.files;
                    if let Some(b) = &bar {
                        b.set_length(fed.bytes);
                    }
                    // The last batch and the close go in one call.
                    let r = match &fed.last {
                        Some(walked) => {
                            let args = (info.id, session, k, push_end(session, walked));
                            self.call_at::<_, (
                                Vec<EntryResult>,
                                Result<Vec<EntryResult>, String>,
                                Option<TeeStats>,
                            )>(
                                relay, TEE_SERVICE, &info, "push_last", &args, &bar, files
                            )
                            .await
                            .map(|(results, closed, last)| {
                                if last.is_some()
                                    && let Ok(mut f) = self.tee_final.lock()
                                {
                                    *f = last;
                                }
                                let name = &info.name;
                                closed_early = Some(closed.map_err(|e| format!("{name}: {e}")));
                                results
                            })
                        }
                        None => {
                            self.call_at::<_, Vec<EntryResult>>(
                                relay,
                                TEE_SERVICE,
                                &info,
                                "push_batch",
                                &(info.id, session, k),
                                &bar,
                                files,
                            )
                            .await
                        }
                    };
                    match r {
                        Ok(results) => tally.add(self.style, &results),
                        Err(e) => {
                            let e = failure(e);
                            tally.add(self.style, &[whole_failure(&self.plan.dest, e)]);
                            return self.end(tally, t0, bar);
                        }
                    }
                    if let Some(walked) = fed.last {
                        break walked;
                    }
                    k += 1;
                }
            }
        };
        self.notes.say(&walked, self.style.json);
        let closed = match closed_early {
            Some(closed) => closed,
            None => {
                let end = push_end(session, &walked);
                let closed: Result<Vec<EntryResult>, _> = match self.relay {
                    Some(relay) => {
                        let args = (info.id, end);
                        self.call_at(relay, TEE_SERVICE, &info, "push_close", &args, &bar, files)
                            .await
                    }
                    None => self.call(&info, "push_close", &end, &bar, files).await,
                };
                closed.map_err(failure)
            }
        };
        match closed {
            Ok(results) => tally.add(self.style, &results),
            Err(e) => tally.add(self.style, &[whole_failure(&self.plan.dest, e)]),
        }
        tally.skipped(self.style, &walked.skipped);
        self.end(tally, t0, bar)
    }

    async fn call<A: serde::Serialize + Sync, R: serde::de::DeserializeOwned>(
        &self,
        info: &crate::connect::ContextInfo,
        method: &str,
        args: &A,
        bar: &Option<indicatif::ProgressBar>,
        files: u64,
    ) -> Result<R, crate::call::CallError> {
        self.call_at(info.id, TARGET_SERVICE, info, method, args, bar, files)
            .await
    }

    /// A call to `service` in `to` (the target, or its relay) for the push
    /// to `info`, moving its bar meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn call_at<A: serde::Serialize + Sync, R: serde::de::DeserializeOwned>(
        &self,
        to: ContextId,
        service: &str,
        info: &crate::connect::ContextInfo,
        method: &str,
        args: &A,
        bar: &Option<indicatif::ProgressBar>,
        files: u64,
    ) -> Result<R, crate::call::CallError> {
        let call = self.router.call_service::<_, R>(to, service, method, args);
        tokio::pin!(call);
        // Behind a tee the relay's FileService sends; it is asked now and then.
        let tick = Duration::from_millis(if self.relay.is_some() { 500 } else { 100 });
        loop {
            tokio::select! {
                r = &mut call => return r,
                _ = tokio::time::sleep(tick), if bar.is_some() => {
                    let (bytes, sent) = match self.relay {
                        Some(relay) => tee_progress(self.router, relay, info.id)
                            .await
                            .unwrap_or((0, 0)),
                        None => (self.fs.progress(info.id), self.fs.files_sent(info.id)),
                    };
                    if let Some(b) = bar {
                        b.set_position(bytes);
                        b.set_message(format!("{sent} of {files} files sent"));
                    }
                }
            }
        }
    }

    /// The target's tally, its bar finished.
    fn end(
        &self,
        mut tally: report::Tally,
        t0: Instant,
        bar: Option<indicatif::ProgressBar>,
    ) -> report::Tally {
        tally.seconds = t0.elapsed().as_secs_f64();
        if let Some(b) = &bar {
            if tally.failed {
                b.abandon_with_message("failed");
            } else {
                b.finish_with_message("done");
            }
        }
        tally
    }
}

/// How a push session ends, from the whole walk.
fn push_end(session: u64, walked: &Sources) -> PushEnd {
    PushEnd {
        session,
        incomplete: walked.incomplete.clone(),
        keep: walked.skipped.iter().map(|s| s.rel.clone()).collect(),
    }
}

/// A path for messages, invalid UTF-8 shown as `\xNN`.
fn show(p: &Path) -> String {
    crate::files::place::show(p)
}

/// The absolute form of a local path, for messages.
pub fn absolute(p: &str) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_transports_follow_the_measured_round_trip_and_the_clock_without_one() {
        let ms = Duration::from_millis;
        let auto = EarlySteps::new(None);
        // The clock rule: the first step's two at 250 ms, the longest
        // path's other six at 500 ms.
        assert_eq!(auto.at(0, None), (2, false));
        assert_eq!(auto.at(1, None), (6, true));
        // A 20 ms path measured by 250 ms (the testbed, up after 0.55 s):
        // its two and no more; measured only by 500 ms: none more.
        assert_eq!(auto.at(0, Some(ms(20))), (2, true));
        assert_eq!(auto.at(1, Some(ms(20))), (0, true));
        // 100 ms: all eight at once, at the first step.
        assert_eq!(auto.at(0, Some(ms(100))), (8, true));
        assert_eq!(auto.at(1, Some(ms(100))), (6, true));
        // 40 ms calls for four.
        assert_eq!(auto.at(0, Some(ms(40))), (4, true));
        // A local round trip on a connection this slow is a forwarder's,
        // not the path's: the clock rule.
        assert_eq!(auto.at(0, Some(Duration::from_micros(300))), (2, false));
        assert_eq!(auto.at(1, Some(Duration::from_micros(300))), (6, true));
        // --stripes N: N - 1 at the first step whatever the path.
        let fixed = EarlySteps::new(Some(4));
        assert_eq!(fixed.at(0, None), (3, true));
        assert_eq!(fixed.at(0, Some(ms(100))), (3, true));
        assert_eq!(fixed.at(0, Some(ms(1))), (3, true));
    }

    #[test]
    fn stripes_follow_the_round_trip() {
        assert_eq!(auto_stripes(Duration::from_millis(5)), 3);
        assert_eq!(auto_stripes(Duration::from_millis(20)), 3);
        assert_eq!(auto_stripes(Duration::from_millis(50)), 5);
        assert_eq!(auto_stripes(Duration::from_millis(100)), 9);
        assert_eq!(auto_stripes(Duration::from_millis(400)), 9);
    }

    #[test]
    fn scp_style_destinations() {
        assert_eq!(split_remote("web1:/tmp/x/"), Some(("web1", "/tmp/x/")));
        assert_eq!(split_remote("bob@web1:"), Some(("bob@web1", "")));
        assert_eq!(split_remote("[::1]:/d"), Some(("[::1]", "/d")));
        assert_eq!(
            split_remote("bob@[fe80::1]:d"),
            Some(("bob@[fe80::1]", "d"))
        );
        for local in ["/tmp/a:b", "./a:b", "dir/a:b", ":x", "plain"] {
            assert_eq!(split_remote(local), None, "{local}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("5M/s"), Ok(5 << 20));
        assert_eq!(parse_rate("100"), Ok(100 << 10));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
