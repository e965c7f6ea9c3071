//! The arguments of `ferrogen push` (clap), and what they configure: the
//! FileService, the walk.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::parse::{at_least_one, non_empty_path, parse_rate, parse_window};
use crate::cli::target::TargetArgs;
use crate::files::FileServiceConfig;
use crate::files::filter::Filter;
use crate::files::walk::WalkOptions;
use crate::files::window::Sizing;

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
