//! `pull`'s own check of the shared options: sources are paths on the
//! targets (scp's `HOST:PATH` names the target), DEST is local.

use super::super::push::{PushArgs, UsageError, split_remote};
use super::super::target;

impl PushArgs {
    /// [`PushArgs::check`] for `pull`: sources are paths on the targets
    /// (scp's `HOST:PATH` form names the target), DEST is local.
    pub fn check_pull(&mut self) -> Result<(), UsageError> {
        self.check_shared("pull")?;
        if self.bwlimit_total.is_some() {
            return Err(UsageError::BwlimitTotalInPull);
        }
        let (dest, srcs) = self
            .paths
            .split_last_mut()
            .ok_or(UsageError::NoDestination)?;
        if let Some(d) = dest.to_str()
            && split_remote(d).is_some()
        {
            return Err(UsageError::RemoteDest {
                dest: d.to_string(),
            });
        }
        // scp's `HOST:PATH` sources: one host for all of them, given that way.
        let mut host: Option<String> = None;
        let mut plain = 0;
        for src in srcs.iter_mut() {
            let Some((h, p)) = src.to_str().and_then(split_remote) else {
                plain += 1;
                continue;
            };
            if host.as_deref().is_some_and(|seen| seen != h) {
                return Err(UsageError::TwoHosts {
                    first: host.unwrap_or_default(),
                    second: h.to_string(),
                });
            }
            target::parse(h).map_err(|e| UsageError::BadSourceHost {
                host: h.to_string(),
                path: p.to_string(),
                source: Box::new(e),
            })?;
            host = Some(h.to_string());
            *src = if p.is_empty() { "." } else { p }.into();
        }
        if let Some(h) = host {
            if plain > 0 {
                return Err(UsageError::MixedSources);
            }
            if !self.target.hosts.is_empty() || !self.target.host_files.is_empty() {
                return Err(UsageError::HostAndTargets { host: h });
            }
            self.target.hosts = vec![h];
        }
        Ok(())
    }
}
