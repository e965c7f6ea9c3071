//! Pings a context through the front door.
//!
//! ```sh
//! cargo run --example ping                   # a local child (this program, re-executed)
//! cargo run --example ping -- ssh://web1     # any target: local, [ssh://][user@]host[:port]
//! ```
//!
//! A local child runs this same program with the hidden child argument; an
//! ssh target gets the `ferrogen` binary next to this one (or `cargo xtask
//! dist`'s portable one), bootstrapped over the connection.

use std::process::ExitCode;

use ferrogen::{Controller, Target};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The child side: this program is re-executed for local contexts.
    if args.get(1).map(String::as_str) == Some(ferrogen::connect::local::CHILD_ARG) {
        std::process::exit(ferrogen::connect::child::run(|_, _| {}));
    }
    let target = args.get(1).map(String::as_str).unwrap_or("local");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ping: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let target: Target = match target.parse() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("ping: {e}");
                return ExitCode::from(2);
            }
        };
        let controller = Controller::start();
        let ctx = match controller.connect(&target).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ping: {target}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for _ in 0..3 {
            match ctx.ping().await {
                Ok(rtt) => println!("{} (context {}): {rtt:?}", ctx.name(), ctx.id()),
                Err(e) => {
                    eprintln!("ping: {}: {e}", ctx.name());
                    return ExitCode::FAILURE;
                }
            }
        }
        ctx.shutdown();
        ExitCode::SUCCESS
    })
}
