//! Pushes a directory to a context and pulls it back, through the front
//! door.
//!
//! ```sh
//! cargo run --example push                        # a local child, a demo tree
//! cargo run --example push -- ssh://web1 DIR      # any target, any directory
//! ```
//!
//! The child side is this same program re-executed: it serves pushes and
//! pulls (`ferrogen::files::serve_transfers`). The second push of the same
//! tree sends nothing (every entry `Unchanged`), as `ferrogen push` would.

use std::path::PathBuf;
use std::process::ExitCode;

use ferrogen::files::plan::{EntryResult, Status};
use ferrogen::{Controller, Target, TransferOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(ferrogen::connect::local::CHILD_ARG) {
        std::process::exit(ferrogen::connect::child::run(
            ferrogen::files::serve_transfers,
        ));
    }
    let target = args.get(1).cloned().unwrap_or_else(|| "local".into());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("push: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(target, args.get(2).map(PathBuf::from)))
}

/// Counts results by status; prints failures.
fn tally(what: &str, results: &[EntryResult]) -> bool {
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    for r in results.iter().filter(|r| r.error.is_some()) {
        eprintln!("{what}: FAILED: {}", r.error.as_deref().unwrap_or_default());
    }
    println!(
        "{what}: {} created, {} changed, {} unchanged, {} failed",
        count(Status::Created),
        count(Status::Changed),
        count(Status::Unchanged),
        count(Status::Failed)
    );
    count(Status::Failed) == 0
}

async fn run(target: String, dir: Option<PathBuf>) -> ExitCode {
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("push: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(work) = tempfile_dir() else {
        eprintln!("push: cannot make a temporary directory");
        return ExitCode::FAILURE;
    };
    let src = match dir {
        Some(d) => d,
        None => {
            let d = work.join("demo");
            let made = std::fs::create_dir_all(d.join("sub"))
                .and_then(|()| std::fs::write(d.join("hello.txt"), b"hello\n"))
                .and_then(|()| std::fs::write(d.join("sub/data.bin"), vec![7u8; 300_000]));
            if let Err(e) = made {
                eprintln!("push: cannot make the demo tree: {e}");
                return ExitCode::FAILURE;
            }
            d
        }
    };
    let controller = Controller::start();
    let ctx = match controller.connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("push: {target}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = TransferOptions::default();
    options.walk.recursive = true;
    let there = work.join("there/");
    let back = work.join("back/");
    let mut ok = true;
    for what in ["push", "push again"] {
        match controller.push(&ctx, &[&src], &there, &options).await {
            Ok(r) => ok &= tally(what, &r),
            Err(e) => {
                eprintln!("{what}: {e}");
                ok = false;
            }
        }
    }
    let pushed = there.join(src.file_name().unwrap_or_default());
    match controller.pull(&ctx, &[&pushed], &back, &options).await {
        Ok(r) => ok &= tally("pull", &r),
        Err(e) => {
            eprintln!("pull: {e}");
            ok = false;
        }
    }
    ctx.shutdown();
    let _ = std::fs::remove_dir_all(&work);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A fresh private directory under the system's temp directory.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let d = std::env::temp_dir().join(format!("ferrogen-example-push-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&d)?;
    Ok(d)
}
