//! [`BootPlan::stub`]: the POSIX `sh` script that identifies the target,
//! runs a verified cached copy or receives, verifies and installs the
//! binary. Apart: it is a program of its own, in another language.

use super::{BootPlan, TEMP_DIR_ENV, VERIFY_ENV, uname_pattern};
use crate::connect::libc;
use crate::connect::program::CHILD_ARG;

impl BootPlan {
    /// The `sh` script (one line, no single quotes, no `!`, so it survives
    /// being wrapped in single quotes for any login shell, csh's included).
    pub fn stub(&self) -> String {
        let mut lines = self.identify();
        lines.extend(self.run_cached());
        lines.extend(private_place());
        if self.binary.libc != libc::Need::Nothing {
            // A dynamic binary: say which C library is here, so that the
            // parent refuses a too old one before sending anything.
            lines.push(
                "l=$(getconf GNU_LIBC_VERSION 2>/dev/null) || l=\"\"; if test -z \"$l\"; then l=unknown; if test -e \"/lib/ld-musl-$a.so.1\"; then l=musl; else case $(ldd --version 2>&1) in *musl*) l=musl;; esac; fi; fi; printf \"%s libc %s\\n\" \"$M\" \"$l\"".into(),
            );
        }
        lines.extend(self.install());
        lines.join("; ")
    }

    /// Step 1–2 and what the rest needs: the marker, `uname` said and
    /// checked against the binary's platform, `umask 077`, the commands
    /// the stub uses.
    fn identify(&self) -> Vec<String> {
        let b = &self.binary;
        let m = &self.marker;
        let pat = uname_pattern(&b.os, &b.arch);
        vec![
            format!("M={m}"),
            "s=$(uname -s 2>/dev/null)".into(),
            "a=$(uname -m 2>/dev/null)".into(),
            "printf \"\\n%s uname %s %s\\n\" \"$M\" \"$s\" \"$a\"".into(),
            format!("case \"$s/$a\" in {pat}) ;; *) printf \"%s arch\\n\" \"$M\"; exit 90;; esac"),
            // Everything created from here on is private, whatever the
            // umask the login left.
            "umask 077".into(),
            // What the rest needs (builtins aside), so a stripped PATH is
            // named as such rather than as a cache that is "not private".
            "for c in id ls mkdir chmod head wc mv rm; do command -v $c >/dev/null 2>&1 || { printf \"%s fail the command %s is not on the PATH of the target account\\n\" \"$M\" \"$c\"; exit 89; }; done".into(),
        ]
    }

    /// Step 4: the cache's key, the binary's size, the ownership check
    /// (`pv`), and the cached copy `exec`ed if it is private and verifies.
    fn run_cached(&self) -> Vec<String> {
        let b = &self.binary;
        let n = b.len;
        let key = b.cache_key();
        let verify = format!("{VERIFY_ENV}={}", b.digest);
        vec![
            format!("K={key}"),
            format!("N={n}"),
            "u=$(id -u)".into(),
            // pv FILES PATH...: every PATH is a directory or (FILES of
            // them) a regular file of N bytes, owned by this user, not a
            // symlink, and not writable by group or others. One `ls` for
            // all of them (a process, not one per path).
            "pv() { y=$1; shift; n=$#; LC_ALL=C ls -ldn -- \"$@\" 2>/dev/null | (c=0; k=0; while read -r p l o g z r; do c=$((c+1)); test \"$o\" = \"$u\" || exit 1; case \"$p\" in d????-??-*) ;; -????-??-*) test \"$z\" = \"$N\" || exit 1; k=$((k+1));; *) exit 1;; esac; done; test \"$c\" = \"$n\" && test \"$k\" = \"$y\"); }".into(),
            // Where a cache may live: $HOME/.cache (not when HOME is unset
            // or /: root without HOME must not cache in /.cache), then
            // $XDG_RUNTIME_DIR.
            "h=\"\"; if test -n \"$HOME\" && test \"$HOME\" != /; then h=\"$HOME/.cache\"; fi".into(),
            // The cached copy runs only if it and every directory from the
            // cache's parent down are private to this user, and its size
            // and digest (checked by the copy itself) still match. ("$b/":
            // a ~/.cache that is the user's own symlink to a directory
            // elsewhere is judged by that directory.)
            format!(
                "for b in \"$h\" \"$XDG_RUNTIME_DIR\"; do if test -n \"$b\" && pv 1 \"$b/\" \"$b/ferrogen\" \"$b/ferrogen/$K\" \"$b/ferrogen/$K/ferrogen\" && {verify} \"$b/ferrogen/$K/ferrogen\" {CHILD_ARG} </dev/null >/dev/null 2>&1; then printf \"%s run cached\\n\" \"$M\"; exec \"$b/ferrogen/$K/ferrogen\" {CHILD_ARG}; fi; done"
            ),
        ]
    }

    /// Step 7: the binary read from stdin into the temp file, its size
    /// checked, verified by a trial run, renamed into place and `exec`ed.
    fn install(&self) -> Vec<String> {
        let verify = format!("{VERIFY_ENV}={}", self.binary.digest);
        let mut lines = Vec::new();
        if let Some(hello) = &self.early_hello {
            // The Hello sent ahead for a cached copy: not the binary's
            // bytes. Nothing else is sent before `need` is answered, so
            // even a `head` that reads ahead takes only these.
            lines.push(format!("head -c {} >/dev/null", hello.len()));
        }
        lines.extend([
            "printf \"%s need\\n\" \"$M\"".into(),
            "head -c $N >\"$t\"".into(),
            "c=$(($(wc -c <\"$t\")))".into(),
            "if test \"$c\" -ne $N; then cl; printf \"%s fail received %s of %s bytes\\n\" \"$M\" \"$c\" \"$N\"; exit 92; fi".into(),
            "chmod 700 \"$t\" || { cl; printf \"%s fail cannot chmod %s\\n\" \"$M\" \"$t\"; exit 93; }".into(),
            format!(
                "if v=$({verify} \"$t\" {CHILD_ARG} </dev/null 2>&1); then :; else cl; printf \"%s fail the received binary did not verify or does not run here: %s\\n\" \"$M\" \"$v\"; exit 94; fi"
            ),
            "w=$(mv -f \"$t\" \"$f\" 2>&1) || { cl; printf \"%s fail cannot install %s: %s\\n\" \"$M\" \"$f\" \"$w\"; exit 95; }".into(),
            format!(
                "if test -n \"$x\"; then {TEMP_DIR_ENV}=\"$d\"; export {TEMP_DIR_ENV}; printf \"%s run sent temp\\n\" \"$M\"; else printf \"%s run sent\\n\" \"$M\"; fi"
            ),
            format!("exec \"$f\" {CHILD_ARG}"),
        ]);
        lines
    }
}

/// Step 5: a private place for the binary (the first cache that can be
/// made private, else a `mktemp -d` directory), its file names, and the
/// clean-up on failure or a signal.
fn private_place() -> Vec<String> {
    vec![
        // tb BASE: makes BASE/ferrogen/KEY private (repairing the modes
        // of directories that are ours) or says in $e why it cannot.
        "e=\"\"; if test -z \"$h\"; then e=\"; HOME is unset or is /\"; fi".into(),
        "tb() { w=$(mkdir -p \"$1/ferrogen/$K\" 2>&1) || { e=\"$e; $w\"; return 1; }; chmod 700 \"$1/ferrogen\" \"$1/ferrogen/$K\" 2>/dev/null; pv 0 \"$1/\" \"$1/ferrogen\" \"$1/ferrogen/$K\" || { e=\"$e; $1 or a directory below it is not private to uid $u (owned by another user, or writable by group or others)\"; return 1; }; }".into(),
        "d=\"\"; for b in \"$h\" \"$XDG_RUNTIME_DIR\"; do if test -n \"$b\" && tb \"$b\"; then d=\"$b/ferrogen/$K\"; break; fi; done".into(),
        // No usable cache: a private temporary directory, removed by the
        // binary once it runs (FERROGEN_TEMP_DIR); nothing is cached.
        "x=\"\"; if test -z \"$d\"; then d=$(mktemp -d 2>&1) || { printf \"%s fail cannot create a directory for the binary%s; mktemp -d: %s\\n\" \"$M\" \"$e\" \"$d\"; exit 91; }; x=1; printf \"%s nocache %s\\n\" \"$M\" \"$e\"; fi".into(),
        "f=\"$d/ferrogen\"".into(),
        "t=\"$d/.ferrogen.$$.tmp\"".into(),
        // Whatever failed the checks above and is not a plain file goes;
        // a plain file is replaced atomically by the rename below.
        "if test -L \"$f\" || test -d \"$f\"; then rm -rf \"$f\"; fi".into(),
        "cl() { rm -f \"$t\"; if test -n \"$x\"; then rm -f \"$f\"; rmdir \"$d\"; fi; }".into(),
        "trap \"cl; exit 1\" HUP INT TERM PIPE".into(),
    ]
}
