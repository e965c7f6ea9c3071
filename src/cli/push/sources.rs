//! The plan that puts the walked sources at DEST on a target.

use std::path::Path;

use super::args::PushArgs;
use crate::files::RawPath;
use crate::files::delete::DeleteSpec;
use crate::files::plan::{Compare, PushPlan};
use crate::files::receive::ReceiveOptions;
use crate::files::walk::Sources;
use crate::wire::ContextId;

impl Sources {
    /// The plan that puts these sources at `dest` in a target, fetching
    /// from the FileService in context `server`. Takes the entries (a
    /// copy of a 100,000-entry list cost more than the quick check of
    /// them).
    pub fn plan(
        &mut self,
        args: &PushArgs,
        server: ContextId,
        dest: impl AsRef<std::ffi::OsStr>,
    ) -> PushPlan {
        let mut plan = self.header(args, server, dest);
        plan.entries = std::mem::take(&mut self.entries);
        plan.delete.incomplete = self.incomplete.clone();
        plan.delete.keep = self.skipped.iter().map(|s| s.rel.clone()).collect();
        plan
    }

    /// The plan without its entries, nor what only the whole walk knows
    /// (`--delete`'s incomplete directories and kept names): what
    /// `push_open` takes before the entries stream in batches.
    pub fn header(
        &self,
        args: &PushArgs,
        server: ContextId,
        dest: impl AsRef<std::ffi::OsStr>,
    ) -> PushPlan {
        use std::os::unix::ffi::OsStrExt;
        let dest = dest.as_ref();
        PushPlan {
            server,
            dest: RawPath::from(Path::new(dest)),
            into_dir: self.into_dir || dest.as_bytes().ends_with(b"/"),
            entries: Vec::new(),
            options: ReceiveOptions {
                fsync: !args.no_fsync,
                preserve_owner: args.owner,
                delta: !args.whole_file,
                partial: args.partial,
                xattrs: args.xattr_sel(),
                sparse: args.sparse,
            },
            parallel: args.parallel,
            dry_run: args.dry_run,
            compare: if args.checksum {
                Compare::Checksum
            } else if args.ignore_times {
                Compare::IgnoreTimes
            } else {
                Compare::QuickCheck
            },
            sizes_bound: false,
            filter: self.filter.rules().clone(),
            delete: DeleteSpec {
                enabled: args.delete,
                max: args.max_delete,
                contents: self.contents,
                incomplete: Vec::new(),
                keep: Vec::new(),
            },
            root: self.root.clone(),
        }
    }
}
