//! Makes text that came from targets safe to print on a terminal.
//!
//! A target is untrusted: its error strings, the stderr of the ssh or sudo
//! that reached it, and the names it reports may carry escape sequences
//! that, printed raw, recolour the terminal, rewrite its title, move the
//! cursor over earlier lines or (on some terminals) answer back into the
//! input. Everything the command line prints as text passes through
//! [`sanitize`] first; `--json` output needs nothing more, since serde_json
//! escapes every control character itself.

use std::borrow::Cow;
use std::fmt::Write;

/// Longest text kept from a peer in one reason or error message (DEL_ROUTE
/// reasons, dead messages, remote errors): enough for any real explanation;
/// what a peer sends beyond it is neither copied into every waiter's error
/// nor printed.
pub const MAX_PEER_TEXT: usize = 4096;

/// `text` cut to [`MAX_PEER_TEXT`] bytes (at a character boundary), marked
/// when cut.
pub fn cap(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_PEER_TEXT {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_PEER_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}... [{} bytes dropped]",
        &text[..end],
        text.len() - end
    ))
}

/// [`cap`] for an owned string.
pub fn cap_owned(text: String) -> String {
    match cap(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(c) => c,
    }
}

/// `s` with every character that could steer a terminal shown as a visible
/// escape: ESC as `\e`, other C0 controls (tab and carriage return too) and
/// DEL as `\xNN`, C1 controls and the invisible bidirectional and
/// formatting overrides as `\u{NNNN}`. Newlines are kept: ferrogen's own
/// messages use them (a connection error's stderr tail is one line each),
/// and a newline alone moves no cursor backwards. Text without anything to
/// escape is returned as is.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if c == '\x1b' {
            out.push_str("\\e");
        } else if (c as u32) < 0x80 {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    match c {
        '\n' => false,
        // C0 controls, DEL and C1 controls (0x9b alone is a CSI on
        // terminals that take 8-bit controls).
        c if c.is_control() => true,
        // Bidirectional overrides and isolates, which reorder what the
        // reader sees ("Trojan source"), and the zero-width marks.
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        '\u{feff}' => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        for s in [
            "",
            "web1: 3 files, 1.0 MiB in 0.20 s",
            "µs é 東京 /tmp/a b",
            "a\nb",
        ] {
            assert!(matches!(sanitize(s), Cow::Borrowed(t) if t == s), "{s:?}");
        }
    }

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(sanitize("\x1b[31mred\x1b[0m"), "\\e[31mred\\e[0m");
        assert_eq!(sanitize("\x1b]0;pwned\x07"), "\\e]0;pwned\\x07");
        assert_eq!(sanitize("ok\rFAKE"), "ok\\x0dFAKE");
        assert_eq!(sanitize("a\tb\x00c\x7f"), "a\\x09b\\x00c\\x7f");
        assert_eq!(sanitize("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(sanitize("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(sanitize("\u{feff}x\u{200b}"), "\\u{feff}x\\u{200b}");
    }

    #[test]
    fn nothing_dangerous_survives() {
        // Every code point below U+00A0, in one string.
        let all: String = (0u32..0xa0).filter_map(char::from_u32).collect();
        let out = sanitize(&all);
        assert!(
            out.chars()
                .all(|c| c == '\n' || !c.is_control() && !needs_escape(c)),
            "{out:?}"
        );
    }
}
