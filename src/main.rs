//! The `ferrogen` binary: the controller's command line, and (under a hidden
//! sub-command) a context running on its stdio.

fn main() {
    std::process::exit(ferrogen::cli::main());
}
