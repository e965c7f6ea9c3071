//! `ferrogen completions SHELL` and `ferrogen man [COMMAND]`: generated from
//! the same clap definitions as the parser, so they never drift from it.

use clap::{Args, Command};
use clap_complete::Shell;

use super::{Exit, out};

/// Arguments of `ferrogen completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `ferrogen man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// A sub-command whose own page to print (e.g. push); default: the
    /// page of ferrogen itself, which lists the sub-commands.
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: &CompletionsArgs, cmd: Command) -> Exit {
    // bash's generator offers hidden sub-commands too: leave them out.
    let mut cmd = public(&cmd);
    // clap_complete panics on a failed write: generate in memory, then
    // write (a closed stdout then ends quietly).
    let mut buf = Vec::new();
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut buf);
    out::bytes(&buf);
    Exit::Success
}

/// Prints the man page of `ferrogen` or of one of its sub-commands.
pub fn man(args: &ManArgs, mut cmd: Command) -> Exit {
    // Building propagates global options (-v) into the sub-commands.
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd
                .get_subcommands()
                .find(|s| !s.is_hide_set() && s.get_name() == name)
            else {
                let known: Vec<&str> = visible_subcommands(&cmd).collect();
                out::diag(format_args!(
                    "ferrogen man: no sub-command {name:?} (one of: {})",
                    known.join(", ")
                ));
                return Exit::Usage;
            };
            // After build() its display name is `ferrogen-push` and its
            // bin name `ferrogen push`: the page's title and synopsis.
            sub.clone()
        }
    };
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut buf) {
        out::diag(format_args!("ferrogen man: could not render the page: {e}"));
        return Exit::Failure;
    }
    out::bytes(&buf);
    Exit::Success
}

/// `cmd` without its hidden (internal) sub-commands.
fn public(cmd: &Command) -> Command {
    // The binary's name and version are the package's (src/main.rs).
    let mut out = Command::new(env!("CARGO_PKG_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    out
}

/// The names of the sub-commands a user can run.
pub fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &str> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name())
}
