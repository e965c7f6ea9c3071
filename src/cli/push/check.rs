//! What clap cannot check one value at a time: the paths, scp's
//! `HOST:PATH`, the filter rules in command-line order.

use std::sync::Arc;

use super::args::PushArgs;
use super::show;
use crate::cli::target::{self};
use crate::connect::MethodError;
use crate::files::filter::{FilterError, Rule, Rules};

/// A usage error of `push` or `pull` (nothing has been sent): what clap
/// cannot check one value at a time.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Fewer than two paths.
    #[error(
        "{verb} needs at least one source and a destination: \
         ferrogen {verb} [OPTIONS] SRC... DEST"
    )]
    NoPaths {
        /// `push` or `pull`.
        verb: &'static str,
    },
    /// `--delete` without recursion.
    #[error(
        "--delete needs -r or -a: it deletes entries in the directories \
         a recursive {verb} copies"
    )]
    DeleteNeedsRecursion {
        /// `push` or `pull`.
        verb: &'static str,
    },
    /// No paths at all.
    #[error("no destination")]
    NoDestination,
    /// A push source in scp's `HOST:PATH` form.
    #[error(
        "source {src:?} looks like scp's HOST:PATH, but push only sends \
         local files (write ./{src} for a local name with ':')"
    )]
    RemoteSource {
        /// The source.
        src: String,
    },
    /// A `HOST:PATH` destination and `-H` too.
    #[error(
        "destination {dest:?} names a host (scp's HOST:PATH) and -H or --hosts was \
         given too: give the targets with -H only (write ./{dest} for a path with ':')"
    )]
    HostTwice {
        /// The destination.
        dest: String,
    },
    /// A `HOST:PATH` destination whose host is no target.
    #[error("destination {dest:?}: {source} (write ./{dest} for a path with ':')")]
    BadHost {
        /// The destination.
        dest: String,
        /// Why.
        source: Box<MethodError>,
    },
    /// `--exclude-from -` and standard input unreadable.
    #[error("--exclude-from -: cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    /// An `--exclude-from` file unreadable.
    #[error("--exclude-from {name}: cannot read it: {source}")]
    ExcludeFile {
        /// The file.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of an `--exclude-from` file refused.
    #[error("--exclude-from {0}")]
    ExcludeFrom(#[source] FilterError),
    /// A pattern refused.
    #[error(transparent)]
    Filter(FilterError),
    /// `pull --bwlimit-total`.
    #[error(
        "--bwlimit-total limits what the controller sends; each target sends a \
         pull on its own: use --bwlimit"
    )]
    BwlimitTotalInPull,
    /// A pull destination in scp's `HOST:PATH` form.
    #[error(
        "destination {dest:?} looks like scp's HOST:PATH, but pull writes here \
         (write ./{dest} for a local name with ':')"
    )]
    RemoteDest {
        /// The destination.
        dest: String,
    },
    /// Pull sources naming two hosts.
    #[error("sources name two hosts ({first} and {second}): give several targets with -H")]
    TwoHosts {
        /// The first host.
        first: String,
        /// The other.
        second: String,
    },
    /// A pull source whose host is no target.
    #[error("source {host}:{path}: {source}")]
    BadSourceHost {
        /// The host.
        host: String,
        /// The path.
        path: String,
        /// Why.
        source: Box<MethodError>,
    },
    /// Some pull sources `HOST:PATH`, some not.
    #[error("either every source is HOST:PATH or none is")]
    MixedSources,
    /// Pull sources naming a host, and `-H` too.
    #[error("the sources name a host ({host}:...) and -H or --hosts was given too")]
    HostAndTargets {
        /// The host.
        host: String,
    },
}

impl PushArgs {
    /// Checks what clap cannot check one value at a time, and turns a
    /// `HOST:PATH` destination into `-H HOST` and `PATH`. The error is a
    /// usage error (nothing has been sent).
    pub fn check(&mut self) -> Result<(), UsageError> {
        self.check_shared("push")?;
        let (dest_os, srcs) = self
            .paths
            .split_last_mut()
            .ok_or(UsageError::NoDestination)?;
        // Only text can be scp's HOST:PATH; other names are local paths.
        for src in srcs.iter().filter_map(|s| s.to_str()) {
            if split_remote(src).is_some() {
                return Err(UsageError::RemoteSource {
                    src: src.to_string(),
                });
            }
        }
        let Some(dest) = dest_os.to_str() else {
            return Ok(());
        };
        let Some((host, path)) = split_remote(dest) else {
            return Ok(());
        };
        if !self.target.hosts.is_empty() || !self.target.host_files.is_empty() {
            return Err(UsageError::HostTwice {
                dest: dest.to_string(),
            });
        }
        target::parse(host).map_err(|e| UsageError::BadHost {
            dest: dest.to_string(),
            source: Box::new(e),
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
    pub(crate) fn check_shared(&self, verb: &'static str) -> Result<(), UsageError> {
        if self.paths.len() < 2 {
            return Err(UsageError::NoPaths { verb });
        }
        if self.delete && !(self.recursive || self.archive) {
            return Err(UsageError::DeleteNeedsRecursion { verb });
        }
        Ok(())
    }

    /// Compiles `--include`, `--exclude` and `--exclude-from` into
    /// [`PushArgs::filter`], in command-line order when `matches` (this
    /// sub-command's) give the positions, else includes, excludes, then
    /// files. A bad pattern or an unreadable file is a usage error naming
    /// it.
    pub fn build_filter(&mut self, matches: Option<&clap::ArgMatches>) -> Result<(), UsageError> {
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
                    .map_err(UsageError::Stdin)?;
                buf
            } else {
                std::fs::read(f).map_err(|source| UsageError::ExcludeFile {
                    name: name.clone(),
                    source,
                })?
            };
            let rules = Rules::parse_exclude_file(&text, &name).map_err(UsageError::ExcludeFrom)?;
            ordered.push((i, 2, rules));
        }
        // Positions are unique when known; else the kind keeps the
        // documented fallback order.
        ordered.sort_by_key(|(i, kind, _)| (*i, *kind));
        let rules = Rules(ordered.into_iter().flat_map(|(_, _, r)| r).collect());
        self.filter = Arc::new(rules.compile().map_err(UsageError::Filter)?);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
