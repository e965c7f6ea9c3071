//! What a target offers for a pull, checked before anything is received:
//! every entry (and hard link's target) beneath a name asked for. Apart:
//! this is the trust boundary of a pull, and the library's pull uses it
//! too.

use std::path::Path;

use crate::files::RawPath;
use crate::files::plan::PlanEntry;
use crate::files::source::Offer;

/// The names a pull of `srcs` may bring at its top level: each source's
/// own name, or `None` when any entry may come (a `src/` contents copy, or
/// a name only the target can resolve, such as `..`).
pub(super) fn allowed_tops(srcs: &[std::ffi::OsString]) -> Option<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut tops = Vec::new();
    for s in srcs {
        let b = s.as_bytes();
        if b.ends_with(b"/") || b == b"." || b.ends_with(b"/.") {
            return None;
        }
        match Path::new(s).file_name() {
            Some(n) if n != "." && n != ".." => tops.push(n.as_bytes().to_vec()),
            _ => return None,
        }
    }
    Some(tops)
}

/// The relative path of an entry.
fn rel_of(e: &PlanEntry) -> &RawPath {
    match e {
        PlanEntry::Dir { rel, .. }
        | PlanEntry::File { rel, .. }
        | PlanEntry::Symlink { rel, .. }
        | PlanEntry::HardLink { rel, .. }
        | PlanEntry::Special { rel, .. } => rel,
    }
}

/// Why what a target offered for a pull is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Metadata for DEST itself, in a copy that is not of contents.
    #[error("offered metadata for DEST that is not a contents copy's")]
    RootMeta,
    /// An entry outside what was asked for.
    #[error("offered {0}, which is not beneath what was asked for")]
    Outside(RawPath),
    /// A hard link to something outside what was asked for.
    #[error("offered a link to {0}, not beneath what was asked for")]
    LinkOutside(RawPath),
}

/// Checks what a target offered against what was asked for: every entry
/// (and hard link's target) beneath an asked-for name. Returns why not.
pub(super) fn vet(offer: &Offer, tops: Option<&[Vec<u8>]>) -> Result<(), OfferError> {
    match &offer.root {
        None => {}
        Some(PlanEntry::Dir { rel, .. }) if rel.as_bytes().is_empty() && offer.contents => {}
        Some(_) => return Err(OfferError::RootMeta),
    }
    vet_entries(&offer.entries, tops)
}

/// [`vet`] for entries alone (the later replies of a walk in batches).
pub(super) fn vet_entries(
    entries: &[PlanEntry],
    tops: Option<&[Vec<u8>]>,
) -> Result<(), OfferError> {
    let Some(tops) = tops else {
        return Ok(());
    };
    let under = |rel: &RawPath| {
        let first = rel.as_bytes().split(|&b| b == b'/').next().unwrap_or(b"");
        tops.iter().any(|t| t.as_slice() == first)
    };
    for e in entries {
        let rel = rel_of(e);
        if !under(rel) {
            return Err(OfferError::Outside(rel.clone()));
        }
        if let PlanEntry::HardLink { to, .. } = e
            && !under(to)
        {
            return Err(OfferError::LinkOutside(to.clone()));
        }
    }
    Ok(())
}

/// Checks `offer` against the sources asked for (`srcs` as given):
/// every entry beneath one of their names. Returns why not.
pub fn vet_offer(offer: &Offer, srcs: &[std::ffi::OsString]) -> Result<(), OfferError> {
    vet(offer, allowed_tops(srcs).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asked_for_names_may_come() {
        let srcs: Vec<std::ffi::OsString> = vec!["/var/log/syslog".into(), "etc".into()];
        let tops = allowed_tops(&srcs).expect("names known");
        assert_eq!(tops, vec![b"syslog".to_vec(), b"etc".to_vec()]);
        let file = |rel: &str| PlanEntry::File {
            src: "/x".into(),
            rel: rel.into(),
            size: 1,
            stamp: None,
        };
        let offer = |entries| Offer {
            entries,
            ..Default::default()
        };
        assert!(
            vet(
                &offer(vec![file("syslog"), file("etc/passwd")]),
                Some(&tops)
            )
            .is_ok()
        );
        assert_eq!(
            vet(&offer(vec![file("shadow")]), Some(&tops)),
            Err(OfferError::Outside(RawPath::from("shadow")))
        );
        assert!(matches!(
            vet(&offer(vec![file("etcetera/x")]), Some(&tops)),
            Err(OfferError::Outside(_))
        ));
        let link = PlanEntry::HardLink {
            rel: "etc/a".into(),
            to: "other/b".into(),
        };
        assert!(matches!(
            vet(&offer(vec![link]), Some(&tops)),
            Err(OfferError::LinkOutside(_))
        ));
        for contents in ["dir/", ".", "dir/.", ".."] {
            assert_eq!(allowed_tops(&[contents.into()]), None, "{contents}");
        }
    }
}
