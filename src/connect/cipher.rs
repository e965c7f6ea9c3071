//! The cipher `ssh` is asked to prefer: AES-GCM, where this machine's CPU
//! has AES instructions and the ssh configuration leaves the cipher list
//! at OpenSSH's compiled-in default.
//!
//! Why: on fast paths ssh's encryption is most of the CPU a push spends,
//! and OpenSSH's first choice, chacha20-poly1305, costs far more per byte
//! than AES-GCM where the CPU has AES instructions (all x86-64 and ARMv8
//! servers of the last decade). Measured on this project's machine kind
//! (2 cores with AES-NI; OpenSSH 9.2, OpenSSL 3.0), 1 GiB through `ssh
//! HOST 'cat > f'` over loopback, 3 runs each: chacha20-poly1305 4.71–5.02 s,
//! aes128-gcm 3.40–3.51 s, aes128-ctr (with its MAC) 5.43–5.58 s.
//!
//! Only a preference, and never over a choice:
//!
//! * The list handed to ssh is the default list with the two GCM ciphers
//!   moved to its head, so a server that does not offer them still
//!   negotiates what it would have.
//! * Any `Ciphers` in the user's or the system's configuration (for any
//!   `Host` or `Match`), and `-c` or `-o Ciphers=` in `-e`, make the list
//!   `ssh -G` resolves for the target differ from the compiled-in one
//!   (`ssh -F none -G`), and then nothing is added: a crypto policy or a
//!   user's pick stands.
//! * Only for a program named `ssh` (a wrapper may not know `-G`), and
//!   only when both `-G` runs succeed within two seconds.
//!
//! `ssh -G` prints the configuration without connecting; the decision is
//! made once per ssh command line and target ([`prepare`], run while the
//! binary to ship is hashed) and read by every transport of that target
//! ([`option`]): the primary connection and its stripes use the same
//! cipher.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use super::SshSpec;

/// The ciphers moved to the head of the list, fastest first.
const PREFERRED: [&str; 2] = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"];

/// How long one `ssh -G` may take before the decision is "no preference"
/// (it reads files and may run a `Match exec`; normally ~10 ms).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Decisions by `ssh -G` command line: `Some("Ciphers=…")` to add, `None`
/// to leave ssh's own choice.
static CHOICES: LazyLock<Mutex<HashMap<Vec<String>, Option<String>>>> =
    LazyLock::new(Default::default);

/// The compiled-in cipher list, by ssh program (`None`: could not ask).
static DEFAULTS: LazyLock<Mutex<HashMap<String, Option<String>>>> = LazyLock::new(Default::default);

/// Decides, once per ssh command line and target, whether its transports
/// ask ssh to prefer AES-GCM. Never fails: any doubt is "no preference".
pub async fn prepare(ssh: &SshSpec) {
    let key = ask_argv(ssh);
    if lock(&CHOICES).contains_key(&key) {
        return;
    }
    let choice = if super::is_openssh_client(key[0].as_ref()) && has_aes_instructions() {
        let (default, effective) = tokio::join!(default_list(&key[0]), ask(&key));
        match (default, effective) {
            (Some(d), Some(e)) => preferred(&d, &e),
            _ => None,
        }
    } else {
        None
    };
    if choice.is_some() {
        tracing::debug!("ssh {}: asking ssh to prefer AES-GCM", ssh.target());
    }
    lock(&CHOICES).insert(key, choice);
}

/// The `-o` value [`prepare`] decided for this target, if any.
pub fn option(ssh: &SshSpec) -> Option<String> {
    lock(&CHOICES).get(&ask_argv(ssh)).cloned().flatten()
}

/// The reordered list as a `Ciphers=` option, when `effective` is the
/// untouched `default` and it offers AES-GCM not already first.
fn preferred(default: &str, effective: &str) -> Option<String> {
    if default != effective {
        return None;
    }
    let ciphers: Vec<&str> = default.split(',').collect();
    let head: Vec<&str> = PREFERRED
        .iter()
        .copied()
        .filter(|p| ciphers.contains(p))
        .collect();
    if head.is_empty() || ciphers.first() == head.first() {
        return None;
    }
    let rest = ciphers.iter().copied().filter(|c| !head.contains(c));
    let list: Vec<&str> = head.iter().copied().chain(rest).collect();
    Some(format!("Ciphers={}", list.join(",")))
}

/// `ssh`'s words for this target with `-G`: the same command, user, port
/// and options the transports use, so the same `Host` and `Match` blocks
/// apply.
fn ask_argv(ssh: &SshSpec) -> Vec<String> {
    let mut v = ssh.program_words();
    v.extend(ssh.target_options());
    v.extend(["-G".into(), "--".into(), ssh.host.clone()]);
    v
}

/// The compiled-in list of `program`, asked once.
async fn default_list(program: &str) -> Option<String> {
    if let Some(d) = lock(&DEFAULTS).get(program) {
        return d.clone();
    }
    let argv = [program, "-F", "none", "-G", "--", "default.invalid"].map(String::from);
    let d = ask(&argv).await;
    lock(&DEFAULTS).insert(program.to_string(), d.clone());
    d
}

/// The `ciphers` line of `ssh -G`'s output.
async fn ask(argv: &[String]) -> Option<String> {
    let out = tokio::time::timeout(
        ASK_TIMEOUT,
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ciphers "))
        .map(|l| l.trim().to_string())
}

/// Whether AES-GCM runs in hardware here (the client's half of the
/// work; the server's CPU is not known before connecting).
fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The lock, even if a holder panicked (the maps stay consistent: each
/// update is one insert).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,\
                           aes128-gcm@openssh.com,aes256-gcm@openssh.com";

    #[test]
    fn gcm_moves_to_the_head_of_an_untouched_default() {
        assert_eq!(
            preferred(DEFAULT, DEFAULT).as_deref(),
            Some(
                "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
                 chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
            )
        );
        // Any other list is a choice: left alone.
        assert_eq!(preferred(DEFAULT, "aes256-ctr"), None);
        let without_chacha = DEFAULT.replace("chacha20-poly1305@openssh.com,", "");
        assert_eq!(preferred(DEFAULT, &without_chacha), None);
        // Nothing to prefer, or already first.
        assert_eq!(preferred("aes128-ctr", "aes128-ctr"), None);
        let gcm_first = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com";
        assert_eq!(preferred(gcm_first, gcm_first), None);
        // Only one of the two offered.
        assert_eq!(
            preferred(
                "aes128-ctr,aes256-gcm@openssh.com",
                "aes128-ctr,aes256-gcm@openssh.com"
            )
            .as_deref(),
            Some("Ciphers=aes256-gcm@openssh.com,aes128-ctr")
        );
    }

    /// Real `ssh -G` over real configuration files: the preference is
    /// added for a host the configuration leaves alone, and not for one
    /// whose ciphers it sets, nor when `-e` sets them.
    #[tokio::test]
    async fn a_configured_cipher_list_is_never_overridden() {
        if std::process::Command::new("ssh")
            .arg("-V")
            .output()
            .is_err()
            || !has_aes_instructions()
        {
            eprintln!("skipped: no ssh, or no AES instructions");
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("ssh_config");
        std::fs::write(
            &cfg,
            "Host pinned\n    Ciphers aes256-ctr\nHost *\n    User nobody\n",
        )
        .expect("write config");
        let spec = |host: &str, extra: &[&str]| {
            let mut s = SshSpec::new(host);
            s.command = ["ssh", "-F", &cfg.to_string_lossy()]
                .iter()
                .chain(extra)
                .map(|w| w.to_string())
                .collect();
            s
        };
        let free = spec("free.invalid", &[]);
        let pinned = spec("pinned", &[]);
        let by_flag = spec("free.invalid", &["-c", "chacha20-poly1305@openssh.com"]);
        for s in [&free, &pinned, &by_flag] {
            prepare(s).await;
        }
        let chosen = option(&free).expect("a preference for an unconfigured host");
        assert!(
            chosen.starts_with("Ciphers=aes128-gcm@openssh.com,"),
            "{chosen}"
        );
        assert!(chosen.contains("chacha20-poly1305@openssh.com"), "{chosen}");
        assert_eq!(option(&pinned), None);
        assert_eq!(option(&by_flag), None);
        // A wrapper that is not ssh is never asked.
        let mut wrapper = SshSpec::new("free.invalid");
        wrapper.command = vec!["/usr/local/bin/my-ssh-wrapper".into()];
        prepare(&wrapper).await;
        assert_eq!(option(&wrapper), None);
    }
}
