//! The command line's daily habits, with the real binary: completions and
//! the man page (issue 17), the exit statuses in `--help` (issue 10), the
//! ssh options ferrogen adds (issue 17), scp's `HOST:PATH` (issue 10), and
//! ssh's stderr shown escaped (issue 9).
//!
//! The ssh tests use a recording `ssh` given with `-e`: a shell script that
//! writes its argv to a file and then does what sshd would do with the
//! remote command — run it with `sh -c` in the login directory. The
//! bootstrap, the binary transfer and the context on the far side are all
//! real; only the network hop is left out (tests/ssh.rs has that).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferrogen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("ferrogen runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// The sub-commands a user can run.
const SUBCOMMANDS: [&str; 4] = ["ping", "push", "completions", "man"];

#[test]
fn completions_for_each_shell_mention_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let o = ferrogen(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", text(&o.stderr));
        let script = text(&o.stdout);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
        for opt in ["--connect-timeout", "--stripes", "--json"] {
            assert!(
                script.contains(opt) || script.contains(opt.trim_start_matches('-')),
                "{shell}: no {opt}"
            );
        }
        assert!(!script.contains("__context"), "{shell}: internal command");
    }
    let o = ferrogen(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_man_pages_cover_every_subcommand_and_the_exit_statuses() {
    let o = ferrogen(&["man"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ferrogen"),
        "{page}"
    );
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "no {sub} in ferrogen(1)");
    }
    assert!(
        page.contains("143") && page.contains("130"),
        "no exit statuses"
    );
    assert!(!page.contains("__context"));

    let o = ferrogen(&["man", "push"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.contains(".TH ferrogen-push"), "{page}");
    for opt in ["stripes", "connect\\-timeout", "recursive"] {
        assert!(page.contains(opt), "no {opt} in ferrogen-push(1)");
    }

    let o = ferrogen(&["man", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("push"), "{}", text(&o.stderr));
}

#[test]
fn help_lists_the_exit_statuses() {
    for cmd in [&["--help"][..], &["push", "--help"], &["ping", "--help"]] {
        let help = text(&ferrogen(cmd).stdout);
        for line in EXIT_LINES {
            assert!(
                help.contains(line),
                "{line:?} missing from {cmd:?}:\n{help}"
            );
        }
    }
}

const EXIT_LINES: [&str; 5] = [
    "0    everything arrived",
    "1    something failed",
    "2    usage error",
    "130  interrupted by SIGINT",
    "143  terminated by SIGTERM",
];

/// A scratch directory with a recording ssh in it.
struct FakeSsh {
    dir: tempfile::TempDir,
}

impl FakeSsh {
    /// `body` runs after the argv is recorded.
    fn new(body: &str) -> FakeSsh {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"{log}\"\n{body}\n",
            log = s(&dir.path().join("argv"))
        );
        let path = dir.path().join("ssh");
        std::fs::write(&path, script).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(dir.path().join("home")).expect("mkdir");
        FakeSsh { dir }
    }

    /// A recording ssh that runs the remote command here, in `home/`.
    fn running() -> FakeSsh {
        FakeSsh::new(
            "while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n\
             cd \"$FAKE_HOME\" || exit 255\n\
             HOME=\"$FAKE_HOME\" exec sh -c \"$3\"",
        )
    }

    fn ssh(&self) -> String {
        s(&self.dir.path().join("ssh")).to_string()
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("argv"))
            .expect("ssh was run")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs ferrogen with this ssh reachable as `-e`'s program.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferrogen"))
            .args(args)
            .current_dir(self.dir.path())
            .env("FAKE_HOME", self.home())
            .env_remove("RUST_LOG")
            .output()
            .expect("ferrogen runs")
    }

    /// What the real ssh client makes of the options ferrogen gave it:
    /// `ssh -G` prints the resulting configuration without connecting.
    fn effective(&self, key: &str) -> String {
        let argv = self.argv();
        let end = argv.iter().position(|a| a == "--").expect("--");
        let host = &argv[end + 1];
        let o = Command::new("ssh")
            .arg("-G")
            .args(&argv[..end])
            .arg(host)
            .output()
            .expect("ssh -G");
        assert!(o.status.success(), "ssh -G: {}", text(&o.stderr));
        text(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
            .unwrap_or_else(|| panic!("ssh -G shows no {key}"))
    }
}

#[test]
fn ssh_compression_is_off_unless_the_users_ssh_command_asks() {
    let fake = FakeSsh::running();
    // A user configuration that compresses everything, as some do.
    let cfg = fake.dir.path().join("config");
    std::fs::write(&cfg, "Host *\n  Compression yes\n").expect("write");
    let rsh = format!("{} -F {}", fake.ssh(), s(&cfg));
    let o = fake.run(&["ping", "-c", "1", "-e", &rsh, "-H", "web1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let argv = fake.argv();
    let at = argv
        .windows(2)
        .position(|w| w == ["-o", "Compression=no"])
        .unwrap_or_else(|| panic!("no -o Compression=no in {argv:?}"));
    assert!(at > 1, "the user's -F comes first: {argv:?}");
    assert_eq!(fake.effective("compression"), "no");

    // Given in -e, the user's choice comes first and wins.
    let rsh = format!("{} -F {} -C", fake.ssh(), s(&cfg));
    let o = fake.run(&["ping", "-c", "1", "-e", &rsh, "-H", "web1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(fake.effective("compression"), "yes");
}

#[test]
fn host_colon_path_is_scp_shorthand_for_a_host() {
    let fake = FakeSsh::running();
    let src = fake.dir.path().join("f");
    std::fs::write(&src, b"payload").expect("write");
    let o = fake.run(&["push", "-e", &fake.ssh(), s(&src), "bob@web1:inbox/"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // ssh was asked for web1 as bob, and the path was taken on the target
    // (relative to the login directory), not as a local directory.
    let argv = fake.argv();
    let end = argv.iter().position(|a| a == "--").expect("--");
    assert_eq!(argv[end + 1], "web1", "{argv:?}");
    assert!(argv.windows(2).any(|w| w == ["-l", "bob"]), "{argv:?}");
    assert_eq!(
        std::fs::read(fake.home().join("inbox/f")).expect("read"),
        b"payload"
    );
    assert!(!fake.dir.path().join("bob@web1:inbox").exists());
    assert!(
        text(&o.stdout).starts_with("bob@web1: 1 files"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn ssh_stderr_is_shown_escaped() {
    // An ssh (or a host's banner) that writes escape sequences and fails.
    let fake = FakeSsh::new(
        "printf 'ssh: \\033]0;pwned\\007\\033[2Jconnect to host web1: Connection refused\\r\\n' >&2\n\
         exit 255",
    );
    let o = fake.run(&["ping", "-e", &fake.ssh(), "-H", "web1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    // Nowhere: neither with the failures (stderr) nor the results.
    let all = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
    assert!(!all.contains(&0x1b) && !all.contains(&0x07), "{o:?}");
    assert!(err.contains("\\e]0;pwned\\x07\\e[2Jconnect"), "{err}");
    assert!(
        err.contains("connection refused"),
        "the cause is still named: {err}"
    );
    // JSON carries the same text, escaped by serde_json.
    let o = fake.run(&["ping", "--json", "-e", &fake.ssh(), "-H", "web1"]);
    assert!(!o.stdout.contains(&0x1b), "{:?}", text(&o.stdout));
    let report: serde_json::Value =
        serde_json::from_str(text(&o.stdout).trim()).expect("one JSON report");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("\x1b]0;pwned")),
        "{report}"
    );
}
