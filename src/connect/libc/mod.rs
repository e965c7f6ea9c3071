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

use std::cmp::Ordering;
use std::fmt;

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

/// Why an ELF file's needs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Reading the file failed.
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    /// A header or table points outside the file or is too large.
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

/// Largest section read (a verneed table or its string table): real ones
/// are a few KiB; the cap keeps a hostile file from costing memory.
const MAX_SECTION: u64 = 16 * 1024 * 1024;

const PT_INTERP: u32 = 3;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;

/// Random access to a file's bytes.
pub trait ReadAt {
    /// Fills `buf` from `offset`, or fails.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn eof() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
}

/// Field reader for one ELF class and byte order.
struct Elf<'a, R: ReadAt + ?Sized> {
    file: &'a R,
    wide: bool,
    big: bool,
}

impl<R: ReadAt + ?Sized> Elf<'_, R> {
    fn bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>, ElfError> {
        if len > MAX_SECTION {
            return Err(ElfError::Malformed("a table is implausibly large"));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    ElfError::Malformed("a table lies beyond the end of the file")
                }
                _ => ElfError::Io(e),
            })?;
        Ok(buf)
    }

    fn u16(&self, b: &[u8], at: usize) -> Result<u16, ElfError> {
        let s: [u8; 2] = b
            .get(at..at.saturating_add(2))
            .and_then(|s| s.try_into().ok())
            .ok_or(ElfError::Malformed("short header"))?;
        Ok(if self.big {
            u16::from_be_bytes(s)
        } else {
            u16::from_le_bytes(s)
        })
    }

    fn u32(&self, b: &[u8], at: usize) -> Result<u32, ElfError> {
        let s: [u8; 4] = b
            .get(at..at.saturating_add(4))
            .and_then(|s| s.try_into().ok())
            .ok_or(ElfError::Malformed("short header"))?;
        Ok(if self.big {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }

    /// An address-sized field: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, b: &[u8], at: usize) -> Result<u64, ElfError> {
        if self.wide {
            let s: [u8; 8] = b
                .get(at..at.saturating_add(8))
                .and_then(|s| s.try_into().ok())
                .ok_or(ElfError::Malformed("short header"))?;
            Ok(if self.big {
                u64::from_be_bytes(s)
            } else {
                u64::from_le_bytes(s)
            })
        } else {
            self.u32(b, at).map(u64::from)
        }
    }
}

/// A NUL-terminated string at `at` in a string table.
fn c_str(table: &[u8], at: u32) -> Option<&str> {
    let rest = table.get(at as usize..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The C library an executable needs: its program interpreter and the
/// newest `GLIBC_x.y` symbol version it references.
pub fn need_of<R: ReadAt + ?Sized>(file: &R) -> Result<Need, ElfError> {
    let mut ident = [0u8; 64];
    let header_len = match file.read_exact_at(&mut ident, 0) {
        Ok(()) => 64,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
        Err(e) => return Err(e.into()),
    };
    if header_len < 64 || ident[..4] != [0x7f, b'E', b'L', b'F'] {
        return Ok(Need::Unknown("not an ELF file".into()));
    }
    let elf = Elf {
        file,
        wide: ident[4] == 2,
        big: ident[5] == 2,
    };
    let h = &ident[..];
    // e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum.
    let (phoff, shoff, sizes) = if elf.wide {
        (elf.word(h, 0x20)?, elf.word(h, 0x28)?, 0x36)
    } else {
        (elf.word(h, 0x1c)?, elf.word(h, 0x20)?, 0x2a)
    };
    let phentsize = u64::from(elf.u16(h, sizes)?);
    let phnum = u64::from(elf.u16(h, sizes + 2)?);
    let shentsize = u64::from(elf.u16(h, sizes + 4)?);
    let shnum = u64::from(elf.u16(h, sizes + 6)?);

    let mut interp = None;
    if phnum > 0 {
        if phentsize < if elf.wide { 56 } else { 32 } {
            return Err(ElfError::Malformed("program headers too small"));
        }
        let table = elf.bytes(phoff, phentsize * phnum)?;
        for i in 0..phnum {
            let at = (i * phentsize) as usize;
            if elf.u32(&table, at)? == PT_INTERP {
                let (off, size) = if elf.wide {
                    (elf.word(&table, at + 8)?, elf.word(&table, at + 32)?)
                } else {
                    (elf.word(&table, at + 4)?, elf.word(&table, at + 16)?)
                };
                let raw = elf.bytes(off, size.min(4096))?;
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                interp = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            }
        }
    }
    let Some(interp) = interp else {
        return Ok(Need::Nothing);
    };
    if interp.contains("ld-musl") {
        return Ok(Need::Musl);
    }

    // Section headers: find SHT_GNU_verneed and its string table (sh_link).
    let (sh_min, type_at, link_at, off_at, size_at) = if elf.wide {
        (64, 4, 40, 24, 32)
    } else {
        (40, 4, 24, 16, 20)
    };
    let mut newest: Option<Version> = None;
    if shnum > 0 {
        if shentsize < sh_min {
            return Err(ElfError::Malformed("section headers too small"));
        }
        let table = elf.bytes(shoff, shentsize * shnum)?;
        let section = |i: u64| -> Result<(u32, u32, u64, u64), ElfError> {
            let at = (i * shentsize) as usize;
            Ok((
                elf.u32(&table, at + type_at)?,
                elf.u32(&table, at + link_at)?,
                elf.word(&table, at + off_at)?,
                elf.word(&table, at + size_at)?,
            ))
        };
        for i in 0..shnum {
            let (kind, link, off, size) = section(i)?;
            if kind != SHT_GNU_VERNEED {
                continue;
            }
            if u64::from(link) >= shnum {
                return Err(ElfError::Malformed("verneed names no string table"));
            }
            let (_, _, str_off, str_size) = section(u64::from(link))?;
            let strings = elf.bytes(str_off, str_size)?;
            let needs = elf.bytes(off, size)?;
            // Verneed { version u16, cnt u16, file u32, aux u32, next u32 }
            // and Vernaux { hash u32, flags u16, other u16, name u32,
            // next u32 }, 16 bytes each in both classes, chained by
            // relative offsets; the step count bounds a cyclic chain.
            let mut steps = needs.len() / 16 + 1;
            let mut vn = 0usize;
            loop {
                let aux_off = elf.u32(&needs, vn + 8)? as usize;
                let mut cnt = elf.u16(&needs, vn + 2)?;
                let mut va = vn
                    .checked_add(aux_off)
                    .ok_or(ElfError::Malformed("verneed offset"))?;
                while cnt > 0 {
                    steps = steps
                        .checked_sub(1)
                        .ok_or(ElfError::Malformed("verneed chain loops"))?;
                    let name = elf.u32(&needs, va + 8)?;
                    if let Some(v) = c_str(&strings, name)
                        .and_then(|n| n.strip_prefix("GLIBC_"))
                        .and_then(Version::parse)
                        && newest.as_ref().is_none_or(|n| &v > n)
                    {
                        newest = Some(v);
                    }
                    let next = elf.u32(&needs, va + 12)? as usize;
                    if next == 0 {
                        break;
                    }
                    va = va
                        .checked_add(next)
                        .ok_or(ElfError::Malformed("vernaux offset"))?;
                    cnt -= 1;
                }
                let next = elf.u32(&needs, vn + 12)? as usize;
                if next == 0 {
                    break;
                }
                steps = steps
                    .checked_sub(1)
                    .ok_or(ElfError::Malformed("verneed chain loops"))?;
                vn = vn
                    .checked_add(next)
                    .ok_or(ElfError::Malformed("verneed offset"))?;
            }
        }
    }
    match newest {
        Some(v) => Ok(Need::Glibc(v)),
        None if interp.contains("ld-linux") => Ok(Need::Glibc(Version(vec![2, 0]))),
        None => Ok(Need::Unknown(format!("interpreter {interp}"))),
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
