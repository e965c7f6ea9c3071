//! An ELF file's C library needs: its program interpreter and the
//! `GLIBC_x.y` versions its verneed sections name, read field by field
//! with every offset and size checked.

use super::{Need, Version};

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

    let Some(interp) = elf.interpreter(phoff, phentsize, phnum)? else {
        return Ok(Need::Nothing);
    };
    if interp.contains("ld-musl") {
        return Ok(Need::Musl);
    }
    match elf.newest_glibc(shoff, shentsize, shnum)? {
        Some(v) => Ok(Need::Glibc(v)),
        None if interp.contains("ld-linux") => Ok(Need::Glibc(Version(vec![2, 0]))),
        None => Ok(Need::Unknown(format!("interpreter {interp}"))),
    }
}

impl<R: ReadAt + ?Sized> Elf<'_, R> {
    /// The program interpreter (`PT_INTERP`) named in the `phnum` program
    /// headers of `phentsize` bytes at `phoff`, if any.
    fn interpreter(
        &self,
        phoff: u64,
        phentsize: u64,
        phnum: u64,
    ) -> Result<Option<String>, ElfError> {
        let mut interp = None;
        if phnum == 0 {
            return Ok(interp);
        }
        if phentsize < if self.wide { 56 } else { 32 } {
            return Err(ElfError::Malformed("program headers too small"));
        }
        let table = self.bytes(phoff, phentsize * phnum)?;
        for i in 0..phnum {
            let at = (i * phentsize) as usize;
            if self.u32(&table, at)? == PT_INTERP {
                let (off, size) = if self.wide {
                    (self.word(&table, at + 8)?, self.word(&table, at + 32)?)
                } else {
                    (self.word(&table, at + 4)?, self.word(&table, at + 16)?)
                };
                let raw = self.bytes(off, size.min(4096))?;
                let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                interp = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            }
        }
        Ok(interp)
    }

    /// The newest `GLIBC_x.y` version the `SHT_GNU_verneed` sections
    /// (among the `shnum` section headers of `shentsize` bytes at `shoff`)
    /// name, with their string tables (`sh_link`).
    fn newest_glibc(
        &self,
        shoff: u64,
        shentsize: u64,
        shnum: u64,
    ) -> Result<Option<Version>, ElfError> {
        let (sh_min, type_at, link_at, off_at, size_at) = if self.wide {
            (64, 4, 40, 24, 32)
        } else {
            (40, 4, 24, 16, 20)
        };
        let mut newest: Option<Version> = None;
        if shnum == 0 {
            return Ok(newest);
        }
        if shentsize < sh_min {
            return Err(ElfError::Malformed("section headers too small"));
        }
        let table = self.bytes(shoff, shentsize * shnum)?;
        let section = |i: u64| -> Result<(u32, u32, u64, u64), ElfError> {
            let at = (i * shentsize) as usize;
            Ok((
                self.u32(&table, at + type_at)?,
                self.u32(&table, at + link_at)?,
                self.word(&table, at + off_at)?,
                self.word(&table, at + size_at)?,
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
            let strings = self.bytes(str_off, str_size)?;
            let needs = self.bytes(off, size)?;
            self.newest_in_verneed(&needs, &strings, &mut newest)?;
        }
        Ok(newest)
    }

    /// Walks one verneed section (`needs`, its names in `strings`),
    /// raising `newest` to each `GLIBC_x.y` it names.
    fn newest_in_verneed(
        &self,
        needs: &[u8],
        strings: &[u8],
        newest: &mut Option<Version>,
    ) -> Result<(), ElfError> {
        // Verneed { version u16, cnt u16, file u32, aux u32, next u32 }
        // and Vernaux { hash u32, flags u16, other u16, name u32,
        // next u32 }, 16 bytes each in both classes, chained by
        // relative offsets; the step count bounds a cyclic chain.
        let mut steps = needs.len() / 16 + 1;
        let mut vn = 0usize;
        loop {
            let aux_off = self.u32(needs, vn + 8)? as usize;
            let mut cnt = self.u16(needs, vn + 2)?;
            let mut va = vn
                .checked_add(aux_off)
                .ok_or(ElfError::Malformed("verneed offset"))?;
            while cnt > 0 {
                steps = steps
                    .checked_sub(1)
                    .ok_or(ElfError::Malformed("verneed chain loops"))?;
                let name = self.u32(needs, va + 8)?;
                if let Some(v) = c_str(strings, name)
                    .and_then(|n| n.strip_prefix("GLIBC_"))
                    .and_then(Version::parse)
                    && newest.as_ref().is_none_or(|n| &v > n)
                {
                    *newest = Some(v);
                }
                let next = self.u32(needs, va + 12)? as usize;
                if next == 0 {
                    break;
                }
                va = va
                    .checked_add(next)
                    .ok_or(ElfError::Malformed("vernaux offset"))?;
                cnt -= 1;
            }
            let next = self.u32(needs, vn + 12)? as usize;
            if next == 0 {
                return Ok(());
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
