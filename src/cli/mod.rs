//! The `ferrogen` command line.
//!
//! * [`ping`] — connect to targets and measure call round trips.
//! * [`push`] — copy files and directories to targets.
//! * [`target`] — target specifications (`-H`, `--via`).

pub mod ping;
pub mod push;
pub mod target;

use clap::{Parser, Subcommand};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "ferrogen",
    version,
    about = "Routed message bus and streaming file service"
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
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to targets and measure call round trips.
    Ping(ping::PingArgs),
    /// Copy files (and, with -r, directories) to every target.
    Push(push::PushArgs),
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
    let cli = Cli::parse();
    match cli.command {
        Command::Context => crate::connect::child::run(child_services),
        Command::Attach { socket } => crate::connect::stripe::relay(&socket),
        Command::Ping(args) => {
            let filter = init_logging(cli.verbose);
            run_async(ping::run(args, filter))
        }
        Command::Push(args) => {
            let filter = init_logging(cli.verbose);
            run_async(push::run(args, filter))
        }
    }
}

/// Services every child context of the `ferrogen` binary runs beyond the
/// built-in ones: the receiving side of the FileService.
pub fn child_services(services: &crate::service::Services, router: &crate::router::Router) {
    crate::files::plan::register_service(services, router);
    crate::connect::stripe::register_service(services, router);
}

fn run_async<F: std::future::Future<Output = i32>>(f: F) -> i32 {
    // One thread, as in every context (see connect::child::run): the
    // controller's calls then cost no cross-thread wake-ups.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("ferrogen: could not start the async runtime: {e}");
            2
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
        .with_env_filter(env)
        .try_init();
    filter
}
