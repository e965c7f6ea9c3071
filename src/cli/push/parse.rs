//! Value parsers of the push options: sizes, rates, windows, counts.

/// Why an option's value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// An empty path.
    #[error("an empty path names no file")]
    EmptyPath,
    /// 0 where at least 1 is needed.
    #[error("must be at least 1")]
    Zero,
    /// Not a whole number.
    #[error("{0:?} is not a whole number")]
    NotANumber(String),
    /// Not a size.
    #[error("{0:?} is not a size (e.g. 1M, 512K, 64MiB)")]
    NotASize(String),
    /// A unit that is none of B, K, M, G.
    #[error("unknown size unit {unit:?} in {text:?}")]
    Unit {
        /// The unit.
        unit: String,
        /// The value.
        text: String,
    },
    /// 0, or more than fits.
    #[error("size {0:?} out of range")]
    OutOfRange(String),
    /// A window larger than hops buffer.
    #[error("{text:?} is larger than the largest window, {}M (hops refuse to buffer more)", .max >> 20)]
    WindowTooLarge {
        /// The value.
        text: String,
        /// The largest window.
        max: u64,
    },
}

/// A path argument: anything but the empty string (which names no file;
/// cp and rsync refuse it too).
/// Paths are bytes, not necessarily UTF-8.
pub(super) fn non_empty_path(s: std::ffi::OsString) -> Result<std::ffi::OsString, ValueError> {
    if s.is_empty() {
        Err(ValueError::EmptyPath)
    } else {
        Ok(s)
    }
}

/// A count that must be at least 1.
pub fn at_least_one(s: &str) -> Result<usize, ValueError> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(ValueError::Zero),
        Ok(n) => Ok(n),
        Err(_) => Err(ValueError::NotANumber(s.to_string())),
    }
}

/// Parses `123`, `64K`, `1M`, `1MiB`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::NotASize(s.to_string()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(ValueError::Unit {
                unit: other.to_string(),
                text: s.to_string(),
            });
        }
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| ValueError::OutOfRange(s.to_string()))
}

/// A window size: [`parse_size`], at most [`crate::stream::MAX_WINDOW`].
pub fn parse_window(s: &str) -> Result<u64, ValueError> {
    let n = parse_size(s)?;
    let max = crate::stream::MAX_WINDOW;
    if n > max {
        return Err(ValueError::WindowTooLarge {
            text: s.to_string(),
            max,
        });
    }
    Ok(n)
}

/// Parses a `--bwlimit` rate: [`parse_size`]'s forms, except that a bare
/// number counts KiB/s, as rsync's `--bwlimit` does (`--bwlimit 100` is
/// 100 KiB/s there and here).
pub fn parse_rate(s: &str) -> Result<u64, ValueError> {
    let t = s.trim().trim_end_matches("/s");
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return parse_size(&format!("{t}K"));
    }
    parse_size(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Err(ValueError::OutOfRange("0".into())));
        assert!(matches!(parse_size("1X"), Err(ValueError::Unit { unit, .. }) if unit == "x"));
        assert_eq!(parse_size("M"), Err(ValueError::NotASize("M".into())));
        assert!(matches!(
            parse_window("1G"),
            Err(ValueError::WindowTooLarge { .. })
        ));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("5M/s"), Ok(5 << 20));
        assert_eq!(parse_rate("100"), Ok(100 << 10));
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("fast"), Err(ValueError::NotASize("fast".into())));
        assert_eq!(at_least_one("0"), Err(ValueError::Zero));
    }
}
