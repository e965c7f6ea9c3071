//! The `ferrogen` command line.
//!
//! * [`ping`] — connect to targets and measure call round trips.
//! * [`push`] — copy files and directories to targets.
//! * [`pull`] — copy files and directories from targets.
//! * [`report`] — printing what a transfer did.
//! * [`target`] — target specifications (`-H`, `--via`).
//! * [`generate`] — shell completions and the man page.
//! * [`exit`] — exit statuses; [`out`] — where output goes;
//!   [`sanitize`] — making target text safe for a terminal.

pub mod exit;
pub mod generate;
pub mod nodeset;
pub mod out;
pub mod ping;
pub mod pull;
pub mod push;
pub mod report;
pub mod sanitize;
pub mod target;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use exit::Exit;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "ferrogen",
    version,
    about = "Routed message bus and streaming file service",
    after_help = exit::HELP
)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
// Made once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to targets and measure call round trips.
    #[command(after_help = exit::HELP)]
    Ping(ping::PingArgs),
    /// Copy files (and, with -r, directories) to every target.
    #[command(after_help = exit::HELP)]
    Push(push::PushArgs),
    /// Copy files (and, with -r, directories) from every target to here:
    /// SRC are paths on the targets (or scp's HOST:PATH), DEST is local;
    /// with several targets each one's files go into DEST/TARGET/. Takes
    /// push's options.
    #[command(after_help = exit::HELP)]
    Pull(push::PushArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff): ferrogen(1), or ferrogen-COMMAND(1).
    Man(generate::ManArgs),
    /// (internal) Relay stdin/stdout to a context's stripe socket.
    #[command(name = "__attach", hide = true)]
    Attach {
        /// The context's abstract socket name.
        socket: String,
    },
    /// (internal) Run a context on stdin/stdout.
    #[command(name = "__context", hide = true)]
    Context,
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    // Parsed through `ArgMatches` so that push can order its filter rules
    // by position on the command line.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Context => crate::connect::child::run(child_services),
        Command::Attach { socket } => crate::connect::stripe::relay(&socket),
        Command::Ping(args) => {
            let filter = init_logging(cli.verbose);
            run_async(ping::run(args, filter)).code()
        }
        Command::Push(mut args) => {
            let sub = matches.subcommand_matches("push");
            if let Err(msg) = args.check().and_then(|()| args.build_filter(sub)) {
                // A usage error in clap's own format (and status 2), with
                // push's usage line.
                let mut cmd = Cli::command();
                cmd.build();
                let push = cmd.find_subcommand_mut("push");
                let err = match push {
                    Some(p) => p.error(clap::error::ErrorKind::ValueValidation, msg),
                    None => clap::Error::raw(clap::error::ErrorKind::ValueValidation, msg),
                };
                err.exit();
            }
            let filter = init_logging(cli.verbose);
            // -v lists what changed, as rsync's -v does.
            args.itemize = args.itemize.max(cli.verbose.min(2));
            run_async(push::run(args, filter)).code()
        }
        Command::Pull(mut args) => {
            let sub = matches.subcommand_matches("pull");
            if let Err(msg) = args.check_pull().and_then(|()| args.build_filter(sub)) {
                let mut cmd = Cli::command();
                cmd.build();
                let err = match cmd.find_subcommand_mut("pull") {
                    Some(p) => p.error(clap::error::ErrorKind::ValueValidation, msg),
                    None => clap::Error::raw(clap::error::ErrorKind::ValueValidation, msg),
                };
                err.exit();
            }
            let filter = init_logging(cli.verbose);
            args.itemize = args.itemize.max(cli.verbose.min(2));
            run_async(pull::run(args, filter)).code()
        }
        Command::Completions(args) => generate::completions(&args, Cli::command()).code(),
        Command::Man(args) => generate::man(&args, Cli::command()).code(),
    }
}

/// A failed call to a target in plain words: the target's context and
/// what happened `during` what, without the bus's context numbers (which
/// the router's own messages carry for debugging, e.g. "the respondent
/// context 1 (local.4711) has disconnected: ...").
pub fn call_failure(name: &str, during: &str, e: &crate::call::CallError) -> String {
    use crate::call::CallError;
    use crate::wire::DeadReason;
    match e {
        CallError::Remote { error, .. } => format!("{name}: {error}"),
        CallError::Dead {
            reason: DeadReason::Disconnected { cause, .. },
            ..
        } => {
            // A hop's loss ends the waiters below it with its own
            // disconnect as the cause: say the first cause.
            let mut cause = cause.clone();
            while let DeadReason::Disconnected { cause: inner, .. } = DeadReason::parse(&cause) {
                cause = inner;
            }
            format!("{name}: connection lost during {during} ({cause})")
        }
        CallError::Dead { reason, .. } => format!("{name}: {during} failed: {reason}"),
        CallError::Timeout { after, .. } => {
            format!(
                "{name}: no answer to {during} within {:.0} s",
                after.as_secs_f64()
            )
        }
        CallError::Malformed { detail, .. } => {
            format!("{name}: unreadable answer to {during}: {detail}")
        }
    }
}

/// Services every child context of the `ferrogen` binary runs beyond the
/// built-in ones: the receiving side of the FileService.
pub fn child_services(services: &crate::service::Services, router: &crate::router::Router) {
    crate::files::serve_transfers(services, router);
    crate::connect::stripe::register_service(services, router);
}

fn run_async<F: std::future::Future<Output = Exit>>(f: F) -> Exit {
    // One thread, as in every context (see connect::child::run): the
    // controller's calls then cost no cross-thread wake-ups.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            out::diag(format_args!(
                "ferrogen: could not start the async runtime: {e}"
            ));
            Exit::Failure
        }
    }
}

/// Sets up logging to stderr; returns the filter string, which children
/// are given so their logs match.
fn init_logging(verbose: u8) -> String {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
        .to_string()
    });
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Logs forwarded from targets are untrusted text: escape ESC, BEL,
        // DEL and C1 controls in them (the default; said here so that it
        // stays so).
        .with_ansi_sanitization(true)
        .with_env_filter(env)
        .try_init();
    filter
}
