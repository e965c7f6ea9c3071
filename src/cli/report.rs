//! What a transfer did, printed: one summary line per target (and, with
//! `-i`/`-v`, an itemised line per change), or `--json` lines — the same
//! for `push` and `pull`.

use serde::Serialize;

use super::out;
use crate::files::RawPath;
use crate::files::plan::{EntryKind, EntryResult, Status};
use crate::files::walk::Skipped;

/// One target's results.
pub struct TargetOutcome {
    /// The target as the user named it.
    pub host: String,
    /// Its context's name (empty if it was never reached).
    pub context: String,
    /// Every entry's result.
    pub results: Vec<EntryResult>,
    /// Wall time for this target, seconds.
    pub seconds: f64,
}

/// How to print.
#[derive(Debug, Clone)]
pub struct Style {
    /// `--json` lines instead of text.
    pub json: bool,
    /// `-i` count: 1 lists changes, 2 lists unchanged entries too.
    pub itemize: u8,
    /// Say that nothing was changed.
    pub dry_run: bool,
}

/// One line of `--json` output.
#[derive(Debug, Serialize)]
struct JsonLine<'a> {
    target: &'a str,
    context: &'a str,
    path: &'a str,
    /// The path's exact bytes in hex, only when they are not UTF-8 (then
    /// `path` shows each invalid byte as `\xNN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    /// What the entry is: "file", "dir", "symlink", "hardlink",
    /// "special" ("other": DEST as a whole, or a group of entries).
    #[serde(rename = "type")]
    entry_type: &'a str,
    /// For a skipped source entry: what it is ("fifo", "socket", ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    bytes: u64,
    seconds: f64,
    digest: Option<&'a str>,
    /// created, changed, unchanged, deleted, skipped or failed.
    status: &'a str,
    /// Whether the destination was (in a dry run: would be) modified.
    changed: bool,
    /// For a changed entry, what differed: rsync's itemised form
    /// (`>f.st......`).
    #[serde(skip_serializing_if = "Option::is_none")]
    itemized: Option<String>,
    error: Option<&'a str>,
}

/// The last `--json` line for each target.
#[derive(Debug, Serialize)]
struct JsonSummary<'a> {
    target: &'a str,
    context: &'a str,
    /// Always true: tells this line from an entry's.
    summary: bool,
    /// Ansible's `changed`: whether anything was (would be) created,
    /// changed or deleted on this target.
    changed: bool,
    /// Whether this was a dry run.
    dry_run: bool,
    /// Entries by status.
    counts: &'a Counts,
    /// File data received, bytes.
    bytes: u64,
    seconds: f64,
    /// Entries that failed.
    failed: usize,
}

/// How many entries ended in each status.
#[derive(Debug, Default, Serialize)]
struct Counts {
    created: usize,
    changed: usize,
    unchanged: usize,
    deleted: usize,
    skipped: usize,
    failed: usize,
}

impl Counts {
    fn add(&mut self, s: Status) {
        match s {
            Status::Created => self.created += 1,
            Status::Changed => self.changed += 1,
            Status::Unchanged => self.unchanged += 1,
            Status::Deleted => self.deleted += 1,
            Status::Skipped => self.skipped += 1,
            Status::Failed => self.failed += 1,
        }
    }

    fn any_change(&self) -> bool {
        self.created + self.changed + self.deleted > 0
    }
}

/// rsync's itemised form of a result (`--itemize-changes`): update type,
/// file type, then c s t p o g, with `+` throughout for a new entry.
pub fn itemize(r: &EntryResult) -> String {
    use crate::files::plan::changes as c;
    if r.status == Status::Deleted {
        return "*deleting  ".into();
    }
    let kind = match r.kind {
        EntryKind::File | EntryKind::HardLink => 'f',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'L',
        EntryKind::Special => 'S',
        EntryKind::Other => '?',
    };
    let update = match (r.kind, r.status) {
        (EntryKind::HardLink, Status::Created | Status::Changed) => 'h',
        (EntryKind::File, _) if r.changes & c::CONTENT != 0 => '>',
        (_, Status::Created) => 'c',
        (EntryKind::Symlink | EntryKind::Special, Status::Changed) => 'c',
        // Something of another type was replaced: a new entry, for rsync.
        (_, Status::Changed) if r.changes & c::TYPE != 0 => 'c',
        _ => '.',
    };
    if r.status == Status::Created || (r.status == Status::Changed && r.changes & c::TYPE != 0) {
        return format!("{update}{kind}+++++++++");
    }
    if r.status == Status::Unchanged {
        return format!("{update}{kind}         ");
    }
    let flag = |bit: u8, ch: char| if r.changes & bit != 0 { ch } else { '.' };
    format!(
        // u and a stay '.': an ACL change shows as x (both are
        // extended attributes here).
        "{update}{kind}{}{}{}{}{}{}..{}",
        if r.changes & c::CONTENT != 0 && r.changes & c::SIZE == 0 && r.changes & c::TIME == 0 {
            'c'
        } else {
            '.'
        },
        flag(c::SIZE, 's'),
        flag(c::TIME, 't'),
        flag(c::PERMS, 'p'),
        flag(c::OWNER, 'o'),
        flag(c::GROUP, 'g'),
        flag(c::XATTRS, 'x'),
    )
}

/// With `--json`, one line for a relay's tee: what it fetched from the
/// controller (each file once) and how many transfers it served.
pub fn print_relay(relay: &str, s: &crate::files::tee::TeeStats) {
    out::data(serde_json::json!({
        "relay": relay,
        "tee": true,
        "files_fetched": s.files_fetched + s.small_fetched,
        "small_fetched": s.small_fetched,
        "bytes_fetched": s.bytes_fetched,
        "shared": s.shared,
        "served": s.served,
        "evicted": s.evicted,
        "read_ahead": s.read_ahead,
        "read_ahead_dropped": s.read_ahead_dropped,
        "forwarded_compressed": s.forwarded_compressed,
        "compressed_here": s.compressed_here,
    }));
}

/// Prints every target's results; returns whether anything failed (or no
/// target was tried at all).
pub fn print(style: &Style, outcomes: &[TargetOutcome], skipped: &[Skipped]) -> bool {
    let mut failed = outcomes.is_empty();
    for o in outcomes {
        let mut t = Tally::new(&o.host);
        t.context = o.context.clone();
        t.seconds = o.seconds;
        t.add(style, &o.results);
        t.skipped(style, skipped);
        t.summary(style);
        failed |= t.failed;
    }
    failed
}

/// One target's results as they come: each printed at once (a `--json`
/// line, a failure, an itemised line) and counted for the summary, which
/// is all that is kept.
#[derive(Debug, Default)]
pub struct Tally {
    /// The target as the user named it.
    pub host: String,
    /// Its context's name (empty until it is reached).
    pub context: String,
    /// Wall time for this target, seconds (set at its end).
    pub seconds: f64,
    /// Whether any entry failed.
    pub failed: bool,
    counts: Counts,
    bytes: u64,
    files: usize,
    skipped: usize,
}

impl Tally {
    /// An empty tally for `host`.
    pub fn new(host: &str) -> Tally {
        Tally {
            host: host.to_string(),
            ..Default::default()
        }
    }

    /// Prints and counts `results`.
    pub fn add(&mut self, style: &Style, results: &[EntryResult]) {
        for r in results {
            self.failed |= r.error.is_some();
            self.bytes += r.bytes;
            self.files += usize::from(r.digest.is_some());
            self.counts.add(r.status);
            if style.json {
                let line = JsonLine {
                    target: &self.host,
                    context: &self.context,
                    path: &r.path,
                    path_hex: r.path_bytes.as_ref().map(RawPath::hex),
                    entry_type: r.kind.name(),
                    kind: None,
                    bytes: r.bytes,
                    seconds: r.seconds,
                    digest: r.digest.as_deref(),
                    status: r.status.name(),
                    changed: r.status.is_change(),
                    itemized: r.status.is_change().then(|| itemize(r)),
                    error: r.error.as_deref(),
                };
                match serde_json::to_string(&line) {
                    Ok(s) => out::data(s),
                    Err(e) => out::data(serde_json::json!({ "error": e.to_string() })),
                }
            } else if let Some(e) = &r.error {
                out::diag(format_args!("{}: FAILED: {e}", self.host));
            } else if style.itemize > 1 || (style.itemize == 1 && r.status.is_change()) {
                out::data(format!("{}: {} {}", self.host, itemize(r), r.path));
            }
        }
    }

    /// Counts the special files not copied (with `--json`, a line for
    /// each, like any entry).
    pub fn skipped(&mut self, style: &Style, skipped: &[Skipped]) {
        self.counts.skipped += skipped.len();
        self.skipped += skipped.len();
        if !style.json {
            return;
        }
        for sk in skipped {
            let raw = RawPath::from(sk.path.as_path());
            let line = JsonLine {
                target: &self.host,
                context: &self.context,
                path: &raw.escaped(),
                path_hex: raw.to_str().is_none().then(|| raw.hex()),
                entry_type: EntryKind::Special.name(),
                kind: Some(sk.kind),
                bytes: 0,
                seconds: 0.0,
                digest: None,
                status: Status::Skipped.name(),
                changed: false,
                itemized: None,
                error: None,
            };
            match serde_json::to_string(&line) {
                Ok(s) => out::data(s),
                Err(e) => out::data(serde_json::json!({ "error": e.to_string() })),
            }
        }
    }

    /// Prints the target's summary: a `--json` summary object, or the
    /// line with counts, bytes and rate.
    pub fn summary(&self, style: &Style) {
        let counts = &self.counts;
        if style.json {
            let summary = JsonSummary {
                target: &self.host,
                context: &self.context,
                summary: true,
                changed: counts.any_change(),
                dry_run: style.dry_run,
                failed: counts.failed,
                counts,
                bytes: self.bytes,
                seconds: self.seconds,
            };
            match serde_json::to_string(&summary) {
                Ok(s) => out::data(s),
                Err(e) => out::data(serde_json::json!({ "error": e.to_string() })),
            }
            return;
        }
        let mib = self.bytes as f64 / (1 << 20) as f64;
        let rate = if self.seconds > 0.0 {
            mib / self.seconds
        } else {
            0.0
        };
        let mut tally = format!(
            "{} created, {} changed, {} unchanged",
            counts.created, counts.changed, counts.unchanged
        );
        if counts.deleted > 0 {
            tally.push_str(&format!(", {} deleted", counts.deleted));
        }
        if counts.failed > 0 {
            tally.push_str(&format!(", {} errors", counts.failed));
        }
        if self.skipped > 0 {
            tally.push_str(&format!(", {} skipped (special files)", self.skipped));
        }
        let dry = if style.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        };
        out::result(format_args!(
            "{}: {} files, {:.1} MiB in {:.2} s ({:.1} MiB/s); {tally}{dry}",
            self.host, self.files, mib, self.seconds, rate,
        ));
    }
}

/// Per-target progress bars on stderr, only on a terminal: "connecting"
/// until the target answers, then bytes, rate and ETA. Host names are
/// aligned to the longest (up to [`Bars::MAX_NAME`] characters; longer
/// ones are cut with `…`).
pub struct Bars {
    multi: Option<indicatif::MultiProgress>,
    width: usize,
}

impl Bars {
    /// Longest host name shown whole.
    pub const MAX_NAME: usize = 32;

    /// Bars for `hosts`, if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool, hosts: &[String]) -> Bars {
        use std::io::IsTerminal;
        let multi = (wanted && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        let width = hosts
            .iter()
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(1, Self::MAX_NAME);
        Bars { multi, width }
    }

    /// A bar for `host`, showing "connecting" until [`Bars::connected`].
    pub fn add(&self, host: &str, total: u64) -> Option<indicatif::ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = multi.add(indicatif::ProgressBar::new(total));
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:>{}}} {{spinner}} {{msg}}",
            self.width
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(Self::fit(host, self.width));
        bar.set_message("connecting");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(bar)
    }

    /// Switches `bar` from "connecting" to the transfer: bytes done of the
    /// total, rate, ETA.
    pub fn connected(bar: &indicatif::ProgressBar) {
        let width = bar.prefix().chars().count();
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:>{width}}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} \
             ETA {{eta}} {{msg}}"
        ))
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.disable_steady_tick();
        bar.set_style(style);
        bar.set_message("");
    }

    /// `name` in at most `width` characters (cut with `…`), so bars align.
    fn fit(name: &str, width: usize) -> String {
        if name.chars().count() <= width {
            return name.to_string();
        }
        let mut s: String = name.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_host_names_are_cut_to_keep_bars_aligned() {
        assert_eq!(Bars::fit("web1", 8), "web1");
        let long = "a-very-long-host-name.example.internal.corp";
        let cut = Bars::fit(long, Bars::MAX_NAME);
        assert_eq!(cut.chars().count(), Bars::MAX_NAME);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn itemised_forms_follow_rsync() {
        use crate::files::plan::changes;
        let mut r = EntryResult::done(
            std::path::Path::new("/d/f"),
            EntryKind::File,
            Status::Created,
        );
        r.changes = changes::CONTENT;
        assert_eq!(itemize(&r), ">f+++++++++");
        r.status = Status::Changed;
        r.changes = changes::CONTENT | changes::SIZE | changes::TIME;
        assert_eq!(itemize(&r), ">f.st......");
        r.changes = changes::PERMS;
        assert_eq!(itemize(&r), ".f...p.....");
        r.changes = changes::CONTENT;
        assert_eq!(itemize(&r), ">fc........");
        r.status = Status::Deleted;
        assert_eq!(itemize(&r), "*deleting  ");
        let d = EntryResult::done(std::path::Path::new("/d"), EntryKind::Dir, Status::Created);
        assert_eq!(itemize(&d), "cd+++++++++");
        // A directory or a file where a symlink was: new, as rsync shows it.
        let d = EntryResult::done(std::path::Path::new("/d"), EntryKind::Dir, Status::Changed)
            .with_changes(changes::TYPE);
        assert_eq!(itemize(&d), "cd+++++++++");
        let f = EntryResult::done(std::path::Path::new("/f"), EntryKind::File, Status::Changed)
            .with_changes(changes::TYPE | changes::CONTENT);
        assert_eq!(itemize(&f), ">f+++++++++");
    }
}
