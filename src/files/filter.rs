//! `--exclude`, `--include`, `--exclude-from`: which entries a push leaves
//! out, with rsync's pattern rules for their common subset.
//!
//! A [`Rules`] list (serialisable: it travels in the
//! [`super::plan::PushPlan`] so that `--delete` spares excluded names) is
//! compiled into a [`Filter`] that answers [`Filter::excluded`] for a path
//! relative to the transfer root — the plan's `rel`: its first component
//! is the source's own name for `src`, and nothing for a contents copy
//! `src/`, as in rsync.
//!
//! The rules, as rsync applies them:
//!
//! * `*` matches any bytes but `/`; `?` one byte but `/`; `[...]` one byte
//!   of a class (`[!...]` or `[^...]` negated), never `/`; `\` quotes the
//!   next character. `{` and `}` are plain characters (rsync has no
//!   alternation).
//! * `**` matches anything, `/` included: `a/**/b` matches `a/x/b` and
//!   `a/x/y/b` but not `a/b`; a leading `**/` also matches at the top
//!   (`**/core` matches `core`); `dir/***` matches `dir` itself and
//!   everything beneath it.
//! * A leading `/` anchors the pattern at the transfer root.
//! * A trailing `/` makes it match directories only.
//! * A pattern with no `/` (other than a trailing one) and no `**` is
//!   matched against the last component, at any depth; one with an inner
//!   `/` or a `**` against the whole path — unanchored, it may match any
//!   tail of the path that starts at a component boundary.
//! * The first rule that matches decides; an entry no rule matches is
//!   included. An excluded directory is not descended into, so nothing
//!   beneath it is sent, whatever later rules say.
//!
//! Matching is on the raw bytes of names (they need not be UTF-8);
//! patterns themselves are text. The translation to `globset` globs is
//! written out in [`translate`]: globset has no "anything including `/`"
//! inside a component, so each `**` becomes two globs (no `/` crossed,
//! or at least one), which is exact.

use std::sync::Arc;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// One filter rule, as given on the command line or in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `--include` (or `+ ` in a file): entries it matches are sent.
    /// Otherwise an exclude rule.
    pub include: bool,
    /// The pattern, exactly as given.
    pub pattern: String,
}

impl Rule {
    /// An exclude rule.
    pub fn exclude(pattern: impl Into<String>) -> Rule {
        Rule {
            include: false,
            pattern: pattern.into(),
        }
    }

    /// An include rule.
    pub fn include(pattern: impl Into<String>) -> Rule {
        Rule {
            include: true,
            pattern: pattern.into(),
        }
    }

    /// How the rule was written, for messages: `--exclude 'x'`.
    pub fn describe(&self) -> String {
        let opt = if self.include { "include" } else { "exclude" };
        format!("--{opt} {:?}", self.pattern)
    }
}

/// Filter rules in order: the first that matches an entry decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules(pub Vec<Rule>);

/// Most `**` in one pattern: each doubles the globs it compiles to.
pub const MAX_DOUBLE_STARS: usize = 4;

/// Why filter rules were refused. Each names the rule (or the file and
/// line it came from) and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FilterError {
    /// A line of an `--exclude-from` file is not UTF-8 text.
    #[error("{file}, line {line}: the pattern is not UTF-8 text ({text})")]
    NotUtf8 {
        /// The file's name.
        file: String,
        /// The line (from 1).
        line: usize,
        /// The line, escaped.
        text: String,
    },
    /// A rule's pattern cannot be used.
    #[error("bad pattern in {rule}: {why}")]
    BadPattern {
        /// The rule, as given (`--exclude "a[b"`).
        rule: String,
        /// What is wrong with it.
        why: PatternError,
    },
    /// The compiled globs could not be put together.
    #[error("cannot compile the filter rules: {0}")]
    Compile(#[source] globset::Error),
}

/// What is wrong with a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Nothing left once the slashes are taken off.
    #[error("an empty pattern matches nothing")]
    Empty,
    /// Too many `**` (see [`MAX_DOUBLE_STARS`]).
    #[error("more than {MAX_DOUBLE_STARS} `**` in one pattern")]
    TooManyDoubleStars,
    /// The glob it translates to does not parse.
    #[error("{0}")]
    Glob(globset::ErrorKind),
}

impl Rules {
    /// No rules: everything is included.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rules of an `--exclude-from` file: one pattern per line; blank
    /// lines and lines starting `#` or `;` are ignored; `+ PATTERN` is an
    /// include rule, `- PATTERN` an exclude rule, anything else an exclude
    /// rule (a trailing `\r` is dropped, for files written on Windows).
    /// `name` is the file's name, for errors.
    pub fn parse_exclude_file(text: &[u8], name: &str) -> Result<Vec<Rule>, FilterError> {
        let mut rules = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b"#") || line.starts_with(b";") {
                continue;
            }
            let line = std::str::from_utf8(line).map_err(|_| FilterError::NotUtf8 {
                file: name.to_string(),
                line: i + 1,
                text: super::escape_bytes(line),
            })?;
            let rule = if let Some(p) = line.strip_prefix("+ ") {
                Rule::include(p)
            } else if let Some(p) = line.strip_prefix("- ") {
                Rule::exclude(p)
            } else {
                Rule::exclude(line)
            };
            rules.push(rule);
        }
        Ok(rules)
    }

    /// Compiles the rules. An error names the pattern and says what is
    /// wrong with it.
    pub fn compile(&self) -> Result<Filter, FilterError> {
        let mut set = GlobSetBuilder::new();
        let mut globs = Vec::new();
        for (index, rule) in self.0.iter().enumerate() {
            let bad = |why: PatternError| FilterError::BadPattern {
                rule: rule.describe(),
                why,
            };
            for (glob, dir_only) in translate(&rule.pattern).map_err(bad)? {
                let g = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| bad(PatternError::Glob(e.kind().clone())))?;
                set.add(g);
                globs.push(Compiled {
                    rule: index,
                    dir_only,
                });
            }
        }
        let set = set.build().map_err(FilterError::Compile)?;
        Ok(Filter {
            set,
            globs,
            rules: self.clone(),
        })
    }
}

/// One glob of the set: the rule it belongs to, and whether it matches
/// directories only.
#[derive(Debug, Clone, Copy)]
struct Compiled {
    rule: usize,
    dir_only: bool,
}

/// Compiled [`Rules`].
#[derive(Debug, Clone)]
pub struct Filter {
    set: GlobSet,
    globs: Vec<Compiled>,
    rules: Rules,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            set: GlobSet::empty(),
            globs: Vec::new(),
            rules: Rules::default(),
        }
    }
}

impl Filter {
    /// A filter that excludes nothing.
    pub fn none() -> Arc<Filter> {
        Arc::new(Filter::default())
    }

    /// The rules it was compiled from.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the entry at `rel` (relative to the transfer root,
    /// '/'-separated, no leading `/`) is excluded by the first rule that
    /// matches it. `is_dir` says whether it is a directory (for patterns
    /// with a trailing `/`). The transfer root itself (`""`) never is.
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.globs.is_empty() || rel.is_empty() {
            return false;
        }
        let c = Candidate::from_bytes(rel);
        self.set
            .matches_candidate(&c)
            .into_iter()
            .map(|i| self.globs[i])
            .filter(|g| is_dir || !g.dir_only)
            .map(|g| g.rule)
            .min()
            .is_some_and(|rule| !self.rules.0[rule].include)
    }

    /// Whether the file at `rel` would not be sent: it is excluded, or a
    /// directory above it is (the walk does not descend into those).
    pub fn excludes_file(&self, rel: &[u8]) -> bool {
        if self.globs.is_empty() {
            return false;
        }
        let dirs = rel
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| &rel[..i]);
        for d in dirs {
            if self.excluded(d, true) {
                return true;
            }
        }
        self.excluded(rel, false)
    }
}

/// A piece of a pattern: literal glob text, or rsync's `**`.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    DoubleStar,
}

/// Splits `pattern` into glob text and `**` runs (any run of two or more
/// `*`), leaving escapes and `[...]` classes whole, and quoting `{`, `}`
/// (literal in rsync, alternation in globset).
fn pieces(pattern: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                text.push('\\');
                if let Some(n) = chars.next() {
                    text.push(n);
                }
            }
            '[' => {
                // Copy the class through its closing `]` (a `]` right
                // after `[`, `[!` or `[^` belongs to the class); an
                // unclosed class is left for globset to refuse.
                text.push('[');
                if let Some(&n) = chars.peek()
                    && (n == '!' || n == '^')
                {
                    text.push(n);
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    text.push(']');
                    chars.next();
                }
                for n in chars.by_ref() {
                    text.push(n);
                    if n == ']' {
                        break;
                    }
                }
            }
            '{' | '}' => {
                text.push('\\');
                text.push(c);
            }
            '*' if chars.peek() == Some(&'*') => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::DoubleStar);
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// The globset globs (matched against the whole relative path) that
/// together match what rsync's `pattern` matches, each with whether it
/// matches directories only.
pub fn translate(pattern: &str) -> Result<Vec<(String, bool)>, PatternError> {
    let mut p = pattern;
    let mut dir_only = false;
    // `dir/***`: the directory itself and everything beneath it.
    let mut and_beneath = false;
    if let Some(base) = p.strip_suffix("/***") {
        p = base;
        and_beneath = true;
    } else if let Some(base) = p.strip_suffix('/') {
        p = base;
        dir_only = true;
    }
    let anchored = p.starts_with('/');
    let p = p.trim_start_matches('/');
    if p.is_empty() {
        return Err(PatternError::Empty);
    }
    let parts = pieces(p);
    let stars = parts.iter().filter(|x| **x == Piece::DoubleStar).count();
    if stars > MAX_DOUBLE_STARS {
        return Err(PatternError::TooManyDoubleStars);
    }
    let whole_path = anchored || stars > 0 || p.contains('/');
    let leading_star = parts.first() == Some(&Piece::DoubleStar);
    // Every combination of the two meanings of each `**`.
    let mut alternatives = vec![String::new()];
    let last = parts.len().saturating_sub(1);
    for (i, part) in parts.iter().enumerate() {
        let next_is_slash = matches!(parts.get(i + 1), Some(Piece::Text(t)) if t.starts_with('/'));
        let prev_is_slash = i > 0 && matches!(&parts[i - 1], Piece::Text(t) if t.ends_with('/'));
        match part {
            Piece::Text(t) => alternatives.iter_mut().for_each(|a| a.push_str(t)),
            // A leading `**/` may also match nothing (rsync matches the
            // pattern against the path with a `/` put in front): globset's
            // own `**/` is exactly that.
            Piece::DoubleStar if i == 0 && next_is_slash => {
                alternatives.iter_mut().for_each(|a| a.push_str("**"))
            }
            // A trailing `/**`: anything beneath; globset's own `/**` is
            // exactly that.
            Piece::DoubleStar if i == last && prev_is_slash => {
                alternatives.iter_mut().for_each(|a| a.push_str("**"))
            }
            // Anywhere else `**` is any bytes: either no `/` (a `*`), or
            // at least one (`*/`, any number of directories, `/*`).
            Piece::DoubleStar => {
                alternatives = alternatives
                    .into_iter()
                    .flat_map(|a| [format!("{a}*"), format!("{a}*/**/*")])
                    .collect();
            }
        }
    }
    let prefix = if !whole_path || !(anchored || leading_star) {
        // The last component, or any tail that starts at a component
        // boundary.
        "**/"
    } else {
        ""
    };
    let mut out: Vec<(String, bool)> = alternatives
        .into_iter()
        .map(|a| (format!("{prefix}{a}"), dir_only))
        .collect();
    if and_beneath {
        let beneath: Vec<(String, bool)> = out
            .iter()
            .map(|(g, _)| (format!("{g}/**"), false))
            .collect();
        out.iter_mut().for_each(|(_, d)| *d = true);
        out.extend(beneath);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (rules, path, is_dir, excluded?). Rules are `- PAT` / `+ PAT`.
    const TABLE: &[(&[&str], &str, bool, bool)] = &[
        // A name without `/` matches the last component at any depth.
        (&["- *.o"], "src/main.o", false, true),
        (&["- *.o"], "main.o", false, true),
        (&["- *.o"], "src/main.c", false, false),
        (&["- *.o"], "a.o/b", false, false),
        (&["- foo"], "x/y/foo", true, true),
        (&["- foo"], "x/foo/y", false, false),
        // `*` and `?` stay within a component.
        (&["- /a*b"], "a/b", false, false),
        (&["- /a*b"], "axxb", false, true),
        (&["- a?c"], "abc", false, true),
        (&["- a?c"], "a/c", false, false),
        (&["- a?c"], "abbc", false, false),
        // Classes.
        (&["- [abc].txt"], "d/b.txt", false, true),
        (&["- [abc].txt"], "d/x.txt", false, false),
        (&["- [!abc].txt"], "d/x.txt", false, true),
        (&["- [^abc].txt"], "d/a.txt", false, false),
        (&["- [a-c]x"], "bx", false, true),
        // Escapes; braces are literal.
        (&["- \\*"], "*", false, true),
        (&["- \\*"], "x", false, false),
        (&["- {a,b}"], "{a,b}", false, true),
        (&["- {a,b}"], "a", false, false),
        // A leading `/` anchors at the transfer root.
        (&["- /foo"], "foo", false, true),
        (&["- /foo"], "bar/foo", false, false),
        // rsync's man page: "/foo/bar" anchored; "foo/bar" any tail.
        (&["- /foo/bar"], "foo/bar", false, true),
        (&["- /foo/bar"], "x/foo/bar", false, false),
        (&["- foo/bar"], "x/foo/bar", false, true),
        (&["- foo/bar"], "x/afoo/bar", false, false),
        (&["- foo/bar"], "foo/bar/baz", false, false),
        // A trailing `/` matches directories only.
        (&["- tmp/"], "a/tmp", true, true),
        (&["- tmp/"], "a/tmp", false, false),
        (&["- /tmp/"], "tmp", true, true),
        // `**` crosses `/`; `*` does not (rsync's man page examples).
        (&["- /dir/**/keep"], "dir/a/keep", false, true),
        (&["- /dir/**/keep"], "dir/a/b/keep", false, true),
        (&["- /dir/**/keep"], "dir/keep", false, false),
        (&["- /dir/*/keep"], "dir/a/b/keep", false, false),
        (&["- /dir/**"], "dir/a/b", false, true),
        (&["- /dir/**"], "dir", true, false),
        (&["- **/core"], "core", false, true),
        (&["- **/core"], "a/b/core", false, true),
        (&["- **/core"], "a/bcore", false, false),
        (&["- foo**bar"], "foo/x/y/bar", false, true),
        (&["- foo**bar"], "foobar", false, true),
        (&["- foo**bar"], "x/foo/bar", false, true),
        (&["- foo**bar"], "foo/x/baz", false, false),
        (&["- /**.log"], "a/b/c.log", false, true),
        (&["- a**"], "x/ab/c", false, true),
        // `dir/***`: the directory and everything beneath.
        (&["- /cache/***"], "cache", true, true),
        (&["- /cache/***"], "cache/x/y", false, true),
        (&["- /cache/***"], "cache", false, false),
        (&["- /cache/***"], "cachex", true, false),
        // First match wins, in order.
        (&["+ keep.o", "- *.o"], "d/keep.o", false, false),
        (&["+ keep.o", "- *.o"], "d/other.o", false, true),
        (&["- *.o", "+ keep.o"], "d/keep.o", false, true),
        // rsync's man page: "+ */", "+ *.c", "- *" keeps C files and dirs.
        (&["+ */", "+ *.c", "- *"], "src", true, false),
        (&["+ */", "+ *.c", "- *"], "src/a.c", false, false),
        (&["+ */", "+ *.c", "- *"], "src/a.h", false, true),
        // rsync's man page: "- /some/path/this-file-will-not-be-found"
        // matches nothing, which is fine.
        (
            &["- /some/path/this-file-will-not-be-found"],
            "some/path",
            true,
            false,
        ),
        // No rule matches: included.
        (&["+ *.c"], "a.h", false, false),
        (&[], "anything", false, false),
        // Leading `/` then `**`.
        (&["- /**/x"], "x", false, true),
        (&["- /**/x"], "a/x", false, true),
    ];

    fn rules(spec: &[&str]) -> Rules {
        Rules(
            spec.iter()
                .map(|s| match s.split_at(2) {
                    ("+ ", p) => Rule::include(p),
                    (_, p) => Rule::exclude(p),
                })
                .collect(),
        )
    }

    #[test]
    fn the_table() {
        let mut wrong = Vec::new();
        for &(spec, path, is_dir, want) in TABLE {
            let f = rules(spec).compile().expect("compiles");
            if f.excluded(path.as_bytes(), is_dir) != want {
                wrong.push(format!(
                    "{spec:?} {path:?} dir={is_dir}: want excluded={want}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn names_are_bytes() {
        let f = rules(&["- *.key", "- /a?b"]).compile().expect("compiles");
        assert!(f.excluded(b"dir/\xff\xfe.key", false));
        assert!(f.excluded(b"a\xffb", false), "? matches one byte");
        assert!(!f.excluded(b"dir/\xff\xfe.kez", false));
    }

    #[test]
    fn files_beneath_an_excluded_directory_are_excluded() {
        let f = rules(&["- secret/"]).compile().expect("compiles");
        assert!(f.excludes_file(b"top/secret/x/key"));
        assert!(!f.excluded(b"top/secret/x/key", false));
        assert!(!f.excludes_file(b"top/secret"), "a file named secret");
        assert!(!f.excludes_file(b"top/public/x"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = rules(&["- ok", "- a[b"]).compile().expect_err("unclosed [");
        assert!(
            matches!(&e, FilterError::BadPattern { rule, why: PatternError::Glob(_) }
                if rule == "--exclude \"a[b\""),
            "{e}"
        );
        let e = rules(&["+ /"]).compile().expect_err("empty");
        assert!(
            matches!(&e, FilterError::BadPattern { rule, why: PatternError::Empty }
                if rule == "--include \"/\""),
            "{e}"
        );
        let e = rules(&["- a**b**c**d**e**f"])
            .compile()
            .expect_err("too many");
        assert!(
            matches!(
                &e,
                FilterError::BadPattern {
                    why: PatternError::TooManyDoubleStars,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("**"), "{e}");
    }

    #[test]
    fn exclude_files() {
        let text = b"# comment\n; another\n\n+ keep.o\n- *.o\r\n*.tmp\n";
        let r = Rules::parse_exclude_file(text, "f").expect("parses");
        assert_eq!(
            r,
            vec![
                Rule::include("keep.o"),
                Rule::exclude("*.o"),
                Rule::exclude("*.tmp")
            ]
        );
        let e = Rules::parse_exclude_file(b"ok\n\xff\n", "list").expect_err("not utf-8");
        assert!(
            matches!(&e, FilterError::NotUtf8 { file, line: 2, .. } if file == "list"),
            "{e}"
        );
        assert!(e.to_string().contains("list, line 2"), "{e}");
    }
}
