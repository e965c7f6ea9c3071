//! What clap cannot check one value at a time: the paths, scp's
//! `HOST:PATH`, the filter rules in command-line order.

use std::sync::Arc;

use super::args::PushArgs;
use super::show;
use crate::cli::target::{self};
use crate::files::filter::{Rule, Rules};

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
