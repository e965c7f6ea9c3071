//! `sudo`: another account on the host of the context that starts it.
//!
//! Started from the context already running on that host (its
//! `ferrogen.connect` service, i.e. [`super::connect`] with `via`), so the
//! new context's stream runs over the existing one — under ssh, no second
//! SSH connection. The command is `sudo -n -H -u USER [args] -- /bin/sh -c
//! <stub>`: `-n` makes a password prompt an immediate error rather than a
//! hang, `-H` points `$HOME` (and so the binary cache) at the target
//! account's home, and the [`bootstrap`] stub installs the
//! binary into that account's own cache. The binary is fed over the pipe
//! from this context's own executable, so the target account never needs to
//! read the starting account's files.

use tokio::process::Command;

use super::bootstrap::{self, BootPlan};
use super::handshake;
use super::local::{self, Launch};
use super::{ConnectError, ConnectSpec, ContextInfo, SudoSpec};
use crate::router::Router;

/// Starts a context as `sudo.user` on this context's host.
pub async fn connect(
    router: &Router,
    spec: &ConnectSpec,
    sudo: &SudoSpec,
) -> Result<ContextInfo, ConnectError> {
    let me = current_user();
    let here = router.name().to_string();
    let user = sudo.user.clone();
    let whence = format!("sudo -u {user} as {me} on {here}");
    check_user(&user).map_err(|source| ConnectError::User {
        whence: whence.clone(),
        source,
    })?;
    let binary = bootstrap::binary(None)
        .await
        .map_err(|source| ConnectError::Binary {
            whence: whence.clone(),
            source,
        })?;
    let name = format!("{here}/sudo.{user}");
    let hello = local::early_hello(router, spec, "sudo", &name).await?;
    let plan = BootPlan::new(binary).with_early_hello(handshake::hello_frame(&hello, router.id()));
    let program = if sudo.program.is_empty() {
        "sudo"
    } else {
        sudo.program.as_str()
    };
    let mut cmd = Command::new(program);
    cmd.args(["-n", "-H", "-u", user.as_str()])
        .args(&sudo.args)
        .args(["--", "/bin/sh", "-c"])
        .arg(plan.stub());
    let (who, whom) = (me.clone(), user.clone());
    let launch = Launch {
        method: "sudo",
        name: Some(name),
        boot: Some(plan),
        explain: Some(Box::new(move |lines| explain(lines, &who, &whom))),
        program: Some(format!("{program:?} ({whence})")),
        detach: true,
        hello: Some(hello),
        // Never spliced: the reader may be the target user's process
        // (`local::reads_by_copy`).
        splice_stdin: false,
    };
    match local::launch(router, spec, cmd, launch).await {
        Err(ConnectError::Handshake {
            method,
            name,
            detail,
            stderr,
        }) if stderr.iter().any(|l| l.contains("password is required")) => {
            // sudo authenticates before it evaluates the command, so under
            // -n a rule that does not cover USER looks like a password
            // prompt. Say what the rules do allow, where sudo will tell.
            let detail = match list_rules(program).await {
                Some(rules) => format!(
                    "{detail}; the sudo rules for {me} here (sudo -n -l) allow only: {rules}"
                ),
                None => detail,
            };
            Err(ConnectError::Handshake {
                method,
                name,
                detail,
                stderr,
            })
        }
        other => other,
    }
}

/// `sudo -n -l`: the caller's rules, if sudo lists them without a password
/// (it does when any of them is NOPASSWD).
async fn list_rules(program: &str) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(["-n", "-l"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), cmd.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The rules follow the line "User X may run the following commands on H:".
    let rules: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("may run the following commands"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!rules.is_empty()).then(|| rules.join("; "))
}

/// Why a user name cannot be given to sudo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Nothing.
    #[error("empty user name")]
    Empty,
    /// sudo would take it for an option, or it holds white space.
    #[error("bad user name {0:?}")]
    Bad(String),
}

fn check_user(user: &str) -> Result<(), UserError> {
    if user.is_empty() {
        return Err(UserError::Empty);
    }
    if user.starts_with('-') || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UserError::Bad(user.to_string()));
    }
    Ok(())
}

/// The name of the account this process runs as.
fn current_user() -> String {
    // Through files::meta: a static build must not call NSS (see
    // files::passwd).
    let uid = nix::unistd::getuid().as_raw();
    let name = crate::files::meta::user_name(uid);
    if name == uid.to_string() {
        format!("uid {uid}")
    } else {
        name
    }
}

/// Recognises sudo's own failure messages.
pub fn explain(lines: &[String], me: &str, user: &str) -> Option<String> {
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let why = if has("a password is required") || has("password is required") {
        format!(
            "sudo requires a password for {me} to run commands as {user} (ferrogen runs \
             sudo -n and never types passwords: give {me} a NOPASSWD rule for {user})"
        )
    } else if has("is not in the sudoers file")
        || has("is not allowed to run sudo")
        || has("is not allowed to execute")
        || has("may not run sudo")
        || has("not allowed to run")
    {
        format!("sudo refused: no sudoers rule lets {me} run commands as {user}")
    } else if has("unknown user") {
        format!("sudo: there is no account {user} on this host")
    } else if has("a terminal is required") || has("no tty present") {
        format!(
            "sudo wants a terminal for {me} (requiretty, or a password prompt); ferrogen never \
             gives sudo one"
        )
    } else if has("unrecognized option") || has("invalid option") || has("usage: sudo") {
        "sudo rejected its arguments (check --sudo-arg)".to_string()
    } else if has("command not found") {
        "a command the bootstrap needs is missing in the target account's PATH".to_string()
    } else {
        return None;
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes() {
        let l = |s: &str| vec![s.to_string()];
        assert!(
            explain(&l("sudo: a password is required"), "a", "b")
                .unwrap()
                .contains("password")
        );
        assert!(
            explain(&l("sudo: unknown user nosuch"), "a", "nosuch")
                .unwrap()
                .contains("no account nosuch")
        );
        assert_eq!(explain(&l("fine"), "a", "b"), None);
        assert_eq!(check_user("-x"), Err(UserError::Bad("-x".into())));
        assert_eq!(check_user(""), Err(UserError::Empty));
        assert!(check_user("root").is_ok());
    }
}
