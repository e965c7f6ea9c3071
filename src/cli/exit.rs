//! The exit statuses of `ferrogen`, in one place so that the code, `--help`
//! and the README cannot disagree.

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything arrived at every target.
    Success,
    /// Something failed: a target, a connection, or some files (the rest
    /// may have arrived; the output says which).
    Failure,
    /// The command line was wrong: an invalid option or value, a missing
    /// source. Nothing was sent.
    Usage,
    /// Stopped by SIGINT (Ctrl-C): transfers cancelled, destinations left
    /// as they were.
    Interrupted,
    /// Stopped by SIGTERM: as for SIGINT.
    Terminated,
}

impl Exit {
    /// The process exit status (the shell's 128 + signal number for signals).
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
        }
    }
}

/// The table shown at the end of `--help` (and so in the man page).
pub const HELP: &str = "\
Exit status:
  0    everything arrived at every target
  1    something failed (a target, a connection or some files; the output says which)
  2    usage error (bad option or value, missing source); nothing was sent
  130  interrupted by SIGINT (Ctrl-C); destinations left as they were
  143  terminated by SIGTERM; destinations left as they were";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_matches_the_codes() {
        for e in [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::Interrupted,
            Exit::Terminated,
        ] {
            let code = format!("\n  {:<4} ", e.code());
            assert!(
                HELP.contains(&code),
                "{e:?} ({code:?}) missing from the help"
            );
        }
    }
}
