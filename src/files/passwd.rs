//! User and group names from `/etc/passwd` and `/etc/group`, read directly.
//!
//! The portable target binary is linked statically against glibc, and a
//! static glibc resolves names through NSS by `dlopen`ing the host's
//! `libnss_*.so` modules — libraries built for the host's own glibc. Measured
//! on Debian 12 (glibc 2.36, `passwd: files systemd`): a static program's
//! `getpwuid` for an id that `/etc/passwd` does not list falls through to
//! `libnss_systemd` and dies with SIGSEGV, even with the very glibc it was
//! linked against; in a root without the modules it finds only what
//! `files` has. So a static build never calls NSS: it reads the two files
//! itself (the `files` source, which is what minimal and old systems use;
//! accounts only a directory service knows — LDAP, sssd — show as numbers
//! and are matched by number). A dynamic build keeps using NSS.

use std::path::Path;

/// The password database.
pub const PASSWD: &str = "/etc/passwd";
/// The group database.
pub const GROUP: &str = "/etc/group";

/// Larger files are not read (real ones are KiB to a few MiB).
const MAX_FILE: u64 = 64 * 1024 * 1024;

fn read(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `(name, id)` of each well-formed entry (`name:x:id:...`), in file order.
fn entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        if line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
            return None;
        }
        let mut f = line.split(':');
        let name = f.next().filter(|n| !n.is_empty())?;
        let id = f.nth(1)?.trim().parse().ok()?;
        Some((name, id))
    })
}

/// The first name listed for `id` in the database at `path`.
pub fn name_of(path: &Path, id: u32) -> Option<String> {
    let text = read(path)?;
    entries(&text)
        .find(|&(_, i)| i == id)
        .map(|(n, _)| n.to_string())
}

/// The id of `name` in the database at `path`.
pub fn id_of(path: &Path, name: &str) -> Option<u32> {
    let text = read(path)?;
    entries(&text).find(|&(n, _)| n == name).map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/sh\n# comment\n+nisplus\n\nbad line\n\
             :x:5:5::/:/bin/sh\nweb:x:notanumber:1::/:/bin/sh\nbob:x:1000:1000:Bob:/home/bob:/bin/sh\n\
             alias:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(name_of(&p, 0).as_deref(), Some("root"));
        assert_eq!(name_of(&p, 1000).as_deref(), Some("bob"));
        assert_eq!(name_of(&p, 5), None);
        assert_eq!(name_of(&p, 4242), None);
        assert_eq!(id_of(&p, "alias"), Some(1000));
        assert_eq!(id_of(&p, "web"), None);
        assert_eq!(name_of(&dir.path().join("missing"), 0), None);
    }

    #[test]
    fn agrees_with_nss_for_the_files_entries_here() {
        // Every account /etc/passwd lists resolves as NSS resolves it.
        let text = read(Path::new(PASSWD)).unwrap_or_default();
        for (name, uid) in entries(&text).take(50) {
            if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
                assert_eq!(u.uid.as_raw(), uid, "{name}");
                assert_eq!(id_of(Path::new(PASSWD), name), Some(uid));
            }
        }
        let text = read(Path::new(GROUP)).unwrap_or_default();
        for (name, gid) in entries(&text).take(50) {
            if let Ok(Some(g)) = nix::unistd::Group::from_name(name) {
                assert_eq!(g.gid.as_raw(), gid, "{name}");
            }
        }
    }
}
