//! C libraries: which one a binary needs (from its ELF headers) and whether
//! a target's fits.
//!
//! A dynamically linked Linux binary records, for every glibc symbol it
//! uses, the symbol version it was linked against (`GLIBC_2.34`, ...) in its
//! `SHT_GNU_verneed` section; the loader refuses to start it on an older
//! glibc with a message that names only the missing symbol version. The
//! bootstrap asks the target for its C library before it sends anything
//! (`getconf GNU_LIBC_VERSION`, or musl's loader) and compares it with the
//! newest version the binary needs, so a mismatch is an early error naming
//! both — and the command that builds a binary that runs anywhere. A
//! static binary (no program interpreter) needs nothing.
//!
//! Here: versions, needs, and whether they fit; reading them from an ELF
//! file in `elf`.

use std::cmp::Ordering;
use std::fmt;

mod elf;

pub use elf::{ElfError, ReadAt, need_of};

/// A dotted version such as `2.17` or `2.2.5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub Vec<u32>);

impl Version {
    /// Parses `2.34` (anything else: `None`).
    pub fn parse(s: &str) -> Option<Version> {
        let parts: Option<Vec<u32>> = s.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // 2.17 == 2.17.0: compare with missing parts as zero.
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let (a, b) = (
                self.0.get(i).copied().unwrap_or(0),
                other.0.get(i).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The C library a binary needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Statically linked (no program interpreter): runs on any Linux.
    Nothing,
    /// glibc of at least this version.
    Glibc(Version),
    /// musl (its loader is the interpreter).
    Musl,
    /// Some other dynamic loader (named), or a file that is not ELF: the
    /// bootstrap's trial run is the only check.
    Unknown(String),
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Nothing => f.write_str("no C library (static)"),
            Need::Glibc(v) => write!(f, "glibc {v}"),
            Need::Musl => f.write_str("musl"),
            Need::Unknown(s) => write!(f, "an unknown C library ({s})"),
        }
    }
}

/// The C library a target reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Have {
    /// `getconf GNU_LIBC_VERSION` answered.
    Glibc(Version),
    /// musl's loader is installed (and glibc's getconf did not answer).
    Musl,
    /// Neither could be found out.
    Unknown,
}

impl fmt::Display for Have {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Have::Glibc(v) => write!(f, "glibc {v}"),
            Have::Musl => f.write_str("musl (no glibc)"),
            Have::Unknown => f.write_str("an unknown C library"),
        }
    }
}

impl Have {
    /// From the words the bootstrap stub printed after `libc`: `glibc 2.36`,
    /// `musl` or `unknown`.
    pub fn from_report(words: &[String]) -> Have {
        match words {
            [kind, v, ..] if kind.eq_ignore_ascii_case("glibc") => {
                Version::parse(v).map_or(Have::Unknown, Have::Glibc)
            }
            [kind, ..] if kind == "musl" => Have::Musl,
            _ => Have::Unknown,
        }
    }
}

/// Why a binary cannot start on a target's C library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibcMismatch {
    /// An older glibc than the binary needs.
    #[error("the target has glibc {have}, but the binary needs glibc {need} or newer")]
    OldGlibc {
        /// The target's.
        have: Version,
        /// The binary's need.
        need: Version,
    },
    /// musl where glibc is needed.
    #[error("the target's C library is musl, but the binary needs glibc {need} or newer")]
    MuslNotGlibc {
        /// The binary's need.
        need: Version,
    },
    /// glibc where musl is needed.
    #[error("the target has glibc {have}, but the binary needs musl")]
    GlibcNotMusl {
        /// The target's.
        have: Version,
    },
}

/// Whether a binary needing `need` can start on a target that has `have`;
/// `Err` says why not. Unknowns pass: the trial run decides.
pub fn fits(need: &Need, have: &Have) -> Result<(), LibcMismatch> {
    match (need, have) {
        (Need::Glibc(n), Have::Glibc(h)) if h < n => Err(LibcMismatch::OldGlibc {
            have: h.clone(),
            need: n.clone(),
        }),
        (Need::Glibc(n), Have::Musl) => Err(LibcMismatch::MuslNotGlibc { need: n.clone() }),
        (Need::Musl, Have::Glibc(h)) => Err(LibcMismatch::GlibcNotMusl { have: h.clone() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_order_numerically() {
        assert!(v("2.17") < v("2.34"));
        assert!(v("2.2.5") < v("2.17"));
        assert_eq!(v("2.17").cmp(&v("2.17.0")), Ordering::Equal);
        assert_eq!(Version::parse("2.x"), None);
        assert_eq!(Version::parse(""), None);
    }

    #[test]
    fn reports_and_fits() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(Have::from_report(&w("glibc 2.17")), Have::Glibc(v("2.17")));
        assert_eq!(Have::from_report(&w("musl")), Have::Musl);
        assert_eq!(Have::from_report(&w("unknown")), Have::Unknown);
        assert_eq!(Have::from_report(&w("glibc junk")), Have::Unknown);
        let need = Need::Glibc(v("2.34"));
        assert!(fits(&need, &Have::Glibc(v("2.36"))).is_ok());
        let e = fits(&need, &Have::Glibc(v("2.17"))).unwrap_err();
        assert_eq!(
            e,
            LibcMismatch::OldGlibc {
                have: v("2.17"),
                need: v("2.34")
            }
        );
        assert!(
            e.to_string().contains("2.17") && e.to_string().contains("2.34"),
            "{e}"
        );
        let e = fits(&need, &Have::Musl).unwrap_err();
        assert_eq!(e, LibcMismatch::MuslNotGlibc { need: v("2.34") });
        assert!(e.to_string().contains("musl"), "{e}");
        assert!(fits(&Need::Nothing, &Have::Musl).is_ok());
        assert!(fits(&need, &Have::Unknown).is_ok());
    }

    #[test]
    fn this_test_binary_needs_glibc() {
        // The test harness is an ordinary dynamic glibc executable.
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        match need_of(&f).unwrap() {
            Need::Glibc(v) => assert!(v >= Version(vec![2, 2, 5]), "{v}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn junk_is_not_a_crash() {
        assert!(matches!(need_of(&b"#!/bin/sh\n"[..]), Ok(Need::Unknown(_))));
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        // A program header table far beyond the end of the file.
        h[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        assert!(need_of(&h[..]).is_err());
        // Truncations of a real binary never panic.
        let real = std::fs::read("/proc/self/exe").unwrap();
        for cut in [0, 10, 63, 64, 200, 4096, real.len() / 2] {
            let _ = need_of(&real[..cut.min(real.len())]);
        }
    }
}
