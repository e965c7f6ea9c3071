//! The small-file path (`fetch_small`): [`SmallEncoder`] compresses a
//! reply's files in order, each linked to the one before; [`SmallDecoder`]
//! undoes it on the receiver. Apart from the chunk path: whole files, no
//! offsets, a reply's order instead of a file's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{CompressCounters, Zstd, decode_linked, thread_cpu_ns};
use crate::files::{CHUNK_DATA, SmallFile};

/// Compresses a small file's bytes for `fetch_small` at `level`; `None` if
/// that does not save 1/64 of them.
pub fn compress_small(
    zstd: &mut Zstd,
    data: &[u8],
    level: i32,
    counters: &CompressCounters,
) -> Option<Bytes> {
    compress_small_after(zstd, data, level, counters, None).map(|(z, _)| z)
}

/// [`compress_small`], linked to `before` (the reply's previous file) if
/// given and not empty: the frame, and whether it is linked.
fn compress_small_after(
    zstd: &mut Zstd,
    data: &[u8],
    level: i32,
    counters: &CompressCounters,
    before: Option<&[u8]>,
) -> Option<(Bytes, bool)> {
    let before = before.filter(|b| !b.is_empty());
    let out = if zstd.trial_shrinks(data) {
        zstd.compress(level, &[], data, before)
    } else {
        None
    };
    let Some(out) = out else {
        counters.raw_chunks.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    counters.compressed_chunks.fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_in
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    counters
        .bytes_out
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    Some((Bytes::from(out), before.is_some()))
}

/// Turns an unlinked [`SmallFile::Compressed`] into [`SmallFile::Data`]
/// (at most `meta.size` bytes, itself at most one chunk), or into
/// [`SmallFile::Failed`] if it does not decompress to exactly that. A
/// linked one fails here (it needs the file before it: [`SmallDecoder`]).
/// Anything else passes through.
pub fn open_small(file: SmallFile) -> SmallFile {
    SmallDecoder::default().open(file)
}

/// The receiver's side of one `fetch_small` reply: decodes its files in
/// order, a linked one ([`SmallFile::Compressed`] with `linked`) against
/// the bytes of the file just before it in the reply.
#[derive(Default)]
pub struct SmallDecoder {
    /// The bytes of the reply's previous file, if it carried data that
    /// decoded.
    prev: Option<Bytes>,
}

impl SmallDecoder {
    /// The next file of the reply, compressed or not: [`SmallFile::Data`]
    /// of exactly `meta.size` bytes (at most one chunk) for a compressed
    /// one, or [`SmallFile::Failed`] if it does not decompress to exactly
    /// that. Anything else passes through. Call for every file of the
    /// reply, in order.
    pub fn open(&mut self, file: SmallFile) -> SmallFile {
        let out = match file {
            SmallFile::Compressed {
                meta,
                data,
                digest,
                linked,
            } => Self::decode(meta, &data, digest, linked.then_some(self.prev.as_deref()))
                .unwrap_or_else(SmallFile::Failed),
            other => other,
        };
        self.prev = match &out {
            SmallFile::Data { data, .. } => Some(data.clone()),
            _ => None,
        };
        out
    }

    /// `data` decoded (after `before` if linked: `Some(None)` is a linked
    /// file with no data before it).
    fn decode(
        meta: crate::files::FileMeta,
        data: &[u8],
        digest: [u8; 32],
        before: Option<Option<&[u8]>>,
    ) -> Result<SmallFile, String> {
        let cap = meta.size.min(CHUNK_DATA as u64) as usize;
        let out = match before {
            None => zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress(data, cap))
                .map_err(|e| e.to_string()),
            Some(None) => {
                return Err("a compressed file linked to the one before it came \
                            with no file before it"
                    .into());
            }
            Some(Some(before)) => decode_linked(0, data, cap as u64, before)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string()),
        };
        match out {
            Ok(out) if out.len() as u64 == meta.size => Ok(SmallFile::Data {
                meta,
                data: Bytes::from(out),
                digest,
            }),
            Ok(out) => Err(format!(
                "compressed file decompressed to {} bytes, {} announced",
                out.len(),
                meta.size
            )),
            Err(e) => Err(format!(
                "compressed file is corrupt or exceeds its announced {} bytes: {e}",
                meta.size
            )),
        }
    }
}

/// The sender's side of one `fetch_small` reply: compresses its files in
/// order, each *linked* to the file just before it in the reply (its
/// bytes are the zstd prefix) when that one carried data whose bytes are
/// known here. On the text tree of docs/benchmarks.md (16 MiB of 4-60 KiB
/// source-like files, level 3) that made 5.22 MB where files compressed on
/// their own made 5.59 (-7 %), for about 1.5 times the CPU. A frame stays
/// decodable from one earlier file's bytes, as a linked chunk does, so a
/// relay can still send it on as it came to a child whose reply has the
/// same file before it ([`SmallEncoder::follows`]); a context kept across
/// the whole reply (-22 %) would tie each frame to every file before it.
#[derive(Default)]
pub struct SmallEncoder {
    zstd: Zstd,
    /// The bytes of the reply's previous file, when known here.
    prev: Option<Bytes>,
    /// The reply's previous file carried data, in either form: the
    /// receiver will know its bytes.
    follows: bool,
    /// CPU time spent compressing so far.
    compressing: Duration,
}

impl SmallEncoder {
    /// Whether the reply's previous file carried data (a frame linked to
    /// it can be decoded).
    pub fn follows(&self) -> bool {
        self.follows
    }

    /// CPU time spent compressing so far.
    pub fn compressing(&self) -> Duration {
        self.compressing
    }

    /// The next file of the reply as it goes on the wire: [`SmallFile::Data`]
    /// compressed at `level` if that saves 1/64 of it (counted in
    /// `counters`), anything else as it is. Call for every file of the
    /// reply, in order.
    pub fn encode(
        &mut self,
        one: SmallFile,
        level: Option<i32>,
        counters: &CompressCounters,
    ) -> SmallFile {
        let prev = self.prev.take();
        self.follows = matches!(one, SmallFile::Data { .. } | SmallFile::Compressed { .. });
        let (Some(level), SmallFile::Data { meta, data, digest }) = (level, &one) else {
            if let SmallFile::Data { data, .. } = &one {
                self.prev = Some(data.clone());
            }
            return one;
        };
        self.prev = Some(data.clone());
        let t0 = thread_cpu_ns();
        let z = compress_small_after(&mut self.zstd, data, level, counters, prev.as_deref());
        self.compressing += Duration::from_nanos(thread_cpu_ns().saturating_sub(t0));
        match z {
            Some((z, linked)) => SmallFile::Compressed {
                meta: meta.clone(),
                data: z,
                digest: *digest,
                linked,
            },
            None => one,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::compress::test_data::{random, text};

    #[test]
    fn small_files_round_trip_and_corruption_fails() {
        let counters = CompressCounters::default();
        let data = text(10_000);
        let mut zstd = Zstd::default();
        let z = compress_small(&mut zstd, &data, 3, &counters).expect("text shrinks");
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let meta = crate::files::FileMeta {
            size: data.len() as u64,
            ..crate::files::FileMeta::from_fd(&f).expect("fstat")
        };
        let ok = open_small(SmallFile::Compressed {
            meta: meta.clone(),
            data: z.clone(),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(&ok, SmallFile::Data { data: d, .. } if d[..] == data[..]));
        let short = open_small(SmallFile::Compressed {
            meta: crate::files::FileMeta {
                size: 100,
                ..meta.clone()
            },
            data: z.clone(),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(short, SmallFile::Failed(_)), "{short:?}");
        let garbage = open_small(SmallFile::Compressed {
            meta,
            data: Bytes::from_static(b"not zstd at all"),
            digest: [0; 32],
            linked: false,
        });
        assert!(matches!(garbage, SmallFile::Failed(_)), "{garbage:?}");
        assert!(compress_small(&mut zstd, &random(10_000, 3), 3, &counters).is_none());
    }

    #[test]
    fn small_files_are_linked_to_the_one_before_and_decode_in_reply_order() {
        let counters = CompressCounters::default();
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let meta0 = crate::files::FileMeta::from_fd(&f).expect("fstat");
        let file = |data: &[u8]| SmallFile::Data {
            meta: crate::files::FileMeta {
                size: data.len() as u64,
                ..meta0.clone()
            },
            data: Bytes::copy_from_slice(data),
            digest: [7; 32],
        };
        // b repeats most of a: linked, it costs a fraction of itself.
        let a = text(20_000);
        let mut b = a[..15_000].to_vec();
        b.extend_from_slice(&text(2_000));
        let c = text(9_000);
        let reply = vec![
            file(&a),
            file(&b),
            SmallFile::Failed("gone".into()),
            file(&c),
            file(&random(5_000, 9)),
        ];
        let mut enc = SmallEncoder::default();
        let sent: Vec<SmallFile> = reply
            .iter()
            .map(|f| enc.encode(f.clone(), Some(3), &counters))
            .collect();
        let linked = |f: &SmallFile| match f {
            SmallFile::Compressed { linked, data, .. } => Some((*linked, data.len())),
            _ => None,
        };
        assert_eq!(linked(&sent[0]).map(|l| l.0), Some(false));
        let (b_linked, b_len) = linked(&sent[1]).expect("b compressed");
        assert!(b_linked);
        let alone = compress_small(&mut Zstd::default(), &b, 3, &counters).expect("shrinks");
        assert!(
            b_len * 3 < alone.len(),
            "{b_len} linked, {} alone",
            alone.len()
        );
        // After a failed file nothing is linked; random data goes raw.
        assert_eq!(linked(&sent[3]).map(|l| l.0), Some(false));
        assert!(matches!(sent[4], SmallFile::Data { .. }));
        // In order, every file comes back as it was.
        let mut dec = SmallDecoder::default();
        let got: Vec<SmallFile> = sent.iter().map(|f| dec.open(f.clone())).collect();
        assert_eq!(got, reply);
        // b without a before it (a fresh decoder, or a failed file before
        // it) is a clear error, not wrong bytes.
        let orphan = SmallDecoder::default().open(sent[1].clone());
        assert!(
            matches!(&orphan, SmallFile::Failed(w) if w.contains("no file before it")),
            "{orphan:?}"
        );
        let mut dec = SmallDecoder::default();
        dec.open(SmallFile::Failed("gone".into()));
        assert!(matches!(dec.open(sent[1].clone()), SmallFile::Failed(_)));
        // b after another file than a: never b's bytes (if zstd cannot
        // tell, the digest check of the receiver does).
        let mut dec = SmallDecoder::default();
        dec.open(sent[3].clone());
        assert_ne!(dec.open(sent[1].clone()), reply[1]);
    }
}
