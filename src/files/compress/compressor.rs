//! [`Zstd`]: the compression contexts the sender reuses, and the cheap
//! trial before a whole chunk or file is compressed. Apart because both
//! the chunk path and the small-file path compress through it, and the
//! one `unsafe` block (a linked frame's borrowed prefix) is kept here.

use std::io::Cursor;

use super::LADDER;

/// Bytes of a chunk compressed as a trial before the whole chunk is.
pub const TRIAL_LEN: usize = 8 * 1024;

/// Two zstd contexts, made when first needed and reused: one for the
/// trials at the fastest level, one at the level in force. (A context costs
/// an allocation of up to a few MiB at level 3: not something to make per
/// chunk or per small file.)
#[derive(Default)]
pub struct Zstd {
    trial: Option<zstd::bulk::Compressor<'static>>,
    main: Option<(zstd::bulk::Compressor<'static>, i32)>,
}

impl Zstd {
    /// The cheap trial: does `data`'s first [`TRIAL_LEN`] bytes shrink by
    /// 1/32 at the fastest level?
    pub(super) fn trial_shrinks(&mut self, data: &[u8]) -> bool {
        let sample = &data[..data.len().min(TRIAL_LEN)];
        if sample.len() < 64 {
            return false;
        }
        let cctx = match &mut self.trial {
            Some(c) => c,
            None => match zstd::bulk::Compressor::new(LADDER[0]) {
                Ok(c) => self.trial.insert(c),
                Err(_) => return false,
            },
        };
        let mut out = Vec::with_capacity(sample.len() - sample.len() / 32);
        cctx.compress_to_buffer(sample, &mut out).is_ok()
    }

    /// `prefix` then `data` compressed at `level`, if that takes at most
    /// `data.len() - data.len() / 64` bytes; `None` if not, or if zstd
    /// failed: then raw is the safe answer.
    pub(super) fn compress(
        &mut self,
        level: i32,
        prefix: &[u8],
        data: &[u8],
        linked: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let cctx = match &mut self.main {
            Some((c, l)) if *l == level => c,
            Some((c, l)) => {
                c.set_compression_level(level).ok()?;
                *l = level;
                c
            }
            None => {
                let c = zstd::bulk::Compressor::new(level).ok()?;
                &mut self.main.insert((c, level)).0
            }
        };
        // Room for at most that: zstd fails when it cannot fit, which is
        // the "does not shrink" answer, found without compressing into a
        // full-size buffer first.
        let room = data.len() - data.len() / 64;
        let mut out = Vec::with_capacity(prefix.len() + room);
        out.extend_from_slice(prefix);
        let mut cur = Cursor::new(out);
        cur.set_position(prefix.len() as u64);
        let n = match linked {
            None => cctx.compress_to_buffer(data, &mut cur).ok()?,
            Some(before) => {
                // The session is reset when `linked` goes, whatever
                // happened (a failed frame, or a panic unwinding).
                let linked = ResetOnDrop(cctx);
                // SAFETY: zstd uses a referenced prefix for the next frame
                // only and forgets it when that frame ends; the frame is
                // begun and ended by `compress_to_buffer` below, within
                // this borrow of `before`, and `linked`'s drop resets the
                // session before the borrow ends, so the context never
                // refers to `before` once this returns or unwinds.
                let before: &'static [u8] = unsafe { std::mem::transmute(before) };
                match linked.0.context_mut().ref_prefix(before) {
                    Ok(_) => linked.0.compress_to_buffer(data, &mut cur).ok()?,
                    Err(_) => return None,
                }
            }
        };
        (n <= room).then(|| cur.into_inner())
    }
}

/// Resets a compressor's session when dropped: the end of a linked
/// chunk's borrow of its prefix (see `Zstd::compress`).
struct ResetOnDrop<'c>(&'c mut zstd::bulk::Compressor<'static>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .context_mut()
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly);
    }
}
