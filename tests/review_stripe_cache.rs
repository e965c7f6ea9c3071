//! Review (issue 9, finding 9): a stripe's ssh transport runs
//! `$HOME/.cache/ferrogen/<key>/ferrogen __attach SOCKET` directly
//! (`connect/stripe.rs`, `transport`), without any of the checks the
//! bootstrap stub makes before it runs a cached copy (owner, modes of the
//! directories, size, digest). When the primary connection has just
//! refused that cache as not private (and run from a temporary directory
//! instead), the stripes still execute whatever sits at that path.
//!
//! The scene: a fake `ssh` (given with `-e`) that runs the remote command
//! locally with `HOME` set to a scratch home. A first push fills the
//! cache; then `~/.cache` is made writable by others (what another local
//! user needs to plant a binary) and the cached binary replaced with a
//! script that records that it ran. A push with `--stripes 3` must not run
//! it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn push(dir: &Path, rsh: &Path, src: &Path, dest: &Path, stripes: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(["push", "-v", "--no-fsync", "--stripes", stripes, "-e"])
        .arg(rsh)
        .args(["--remote-binary", env!("CARGO_BIN_EXE_ferrogen")])
        .args(["-H", "h1"])
        .arg(src)
        .arg(dest)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferrogen")
}

#[test]
fn a_stripe_never_runs_a_cached_binary_the_bootstrap_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let home = dir.join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let marker = dir.join("planted-binary-ran");
    let rsh = dir.join("fakessh");
    std::fs::write(
        &rsh,
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\nshift; shift\n\
             export HOME={}\nunset XDG_RUNTIME_DIR\ncd /\nexec /bin/sh -c \"$1\"\n",
            home.display()
        ),
    )
    .expect("write fake ssh");
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // 1. Fill the cache.
    let small = dir.join("small");
    std::fs::write(&small, b"hello\n").expect("write");
    let out = push(dir, &rsh, &small, &dir.join("dst1/"), "1");
    assert!(out.status.success(), "{out:?}");
    let cache = home.join(".cache/ferrogen");
    let key = std::fs::read_dir(&cache)
        .expect("the cache was filled")
        .flatten()
        .next()
        .expect("one cache key")
        .file_name();
    let cached = cache.join(&key).join("ferrogen");
    assert!(cached.is_file());

    // 2. ~/.cache writable by others; the binary replaced by a script.
    std::fs::set_permissions(home.join(".cache"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    // Planted by rename, as another user would (writing over the file in
    // place fails while the first push's context is still exiting: ETXTBSY).
    let planted = cached.with_extension("planted");
    std::fs::write(
        &planted,
        format!(
            "#!/bin/sh\necho \"ran: $*\" >> {}\nexit 1\n",
            marker.display()
        ),
    )
    .expect("plant");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&planted, &cached).expect("plant over the cached binary");

    // 3. A push big enough for stripes (32 MiB).
    let big = dir.join("big");
    std::fs::write(&big, vec![7u8; 40 << 20]).expect("write");
    let out = push(dir, &rsh, &big, &dir.join("dst2/"), "3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no usable binary cache"),
        "the bootstrap should have refused the cache: {stderr}"
    );
    assert!(
        !marker.exists(),
        "the planted binary ran: {:?}\nstderr: {stderr}",
        std::fs::read_to_string(&marker)
    );
}
