//! The small-file path (`fetch_small`): [`SmallEncoder`] compresses a
//! reply's files in order, as one zstd stream; [`SmallDecoder`] undoes it
//! on the receiver. Apart from the chunk path: whole files, no
//! offsets, a reply's order instead of a file's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{CompressCounters, Zstd, thread_cpu_ns};
use crate::files::{CHUNK_DATA, SmallFile};

/// Compresses a small file's bytes on their own at `level` (a stream of
/// one: what [`open_small`] opens); `None` if that does not save 1/64 of
/// them.
pub fn compress_small(
    zstd: &mut Zstd,
    data: &[u8],
    level: i32,
    counters: &CompressCounters,
) -> Option<Bytes> {
    let out = if zstd.trial_shrinks(data) {
        zstd.compress(level, &[], data, None)
    } else {
        None
    };
    let Some(out) = out else {
        counters.raw_chunks.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    counters.count_compressed(data.len(), out.len());
    Some(Bytes::from(out))
}

/// Turns an unlinked [`SmallFile::Compressed`] into [`SmallFile::Data`]
/// (at most `meta.size` bytes, itself at most one chunk), or into
/// [`SmallFile::Failed`] if it does not decompress to exactly that. A
/// linked one fails here (it continues a reply's stream: [`SmallDecoder`]).
/// Anything else passes through.
pub fn open_small(file: SmallFile) -> SmallFile {
    SmallDecoder::default().open(file)
}

/// Window of a reply's compression stream (1 MiB): a reply carries at
/// most [`crate::files::serve::SMALL_BATCH_BYTES`] of data, so a larger
/// window would find nothing more, and the receiver refuses a stream that
/// asks for more — its decoder's memory stays about this much per reply
/// whatever the peer sends.
pub(super) const STREAM_WINDOW_LOG: u32 = 20;

/// The receiver's side of one `fetch_small` reply: decodes its files in
/// order. Its compressed files form zstd streams: an unlinked one
/// ([`SmallFile::Compressed`] without `linked`) starts a stream, a linked
/// one continues the stream of the compressed file before it (files sent
/// as they are, or failed, do not enter a stream).
#[derive(Default)]
pub struct SmallDecoder {
    /// The current stream, while every file of it decoded.
    stream: Option<zstd::stream::raw::Decoder<'static>>,
}

impl SmallDecoder {
    /// The next file of the reply, compressed or not: [`SmallFile::Data`]
    /// of exactly `meta.size` bytes (at most one chunk) for a compressed
    /// one, or [`SmallFile::Failed`] if it does not decompress to exactly
    /// that. Anything else passes through. Call for every file of the
    /// reply, in order.
    pub fn open(&mut self, file: SmallFile) -> SmallFile {
        match file {
            SmallFile::Compressed {
                meta,
                data,
                digest,
                linked,
            } => match self.decode(meta.size, &data, linked) {
                Ok(out) => SmallFile::Data {
                    meta,
                    data: Bytes::from(out),
                    digest,
                },
                Err(why) => {
                    // The stream is lost with it: what follows linked fails too.
                    self.stream = None;
                    SmallFile::Failed(why)
                }
            },
            other => other,
        }
    }

    /// `data` decoded to exactly `size` bytes, in a new stream or (if
    /// `linked`) the current one.
    fn decode(&mut self, size: u64, data: &[u8], linked: bool) -> Result<Vec<u8>, String> {
        use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
        if size > CHUNK_DATA as u64 {
            return Err(format!(
                "compressed file announces {size} bytes, more than a small file holds"
            ));
        }
        if !linked {
            let mut d = Decoder::new().map_err(|e| format!("zstd: {e}"))?;
            d.set_parameter(DParameter::WindowLogMax(STREAM_WINDOW_LOG))
                .map_err(|e| format!("zstd: {e}"))?;
            self.stream = Some(d);
        }
        let Some(d) = &mut self.stream else {
            return Err(
                "a compressed file linked to the reply's stream came with no \
                        stream before it"
                    .into(),
            );
        };
        let corrupt = |e: std::io::Error| {
            format!("compressed file is corrupt or exceeds its announced {size} bytes: {e}")
        };
        // One byte of room past `size`: more output than announced is seen,
        // never kept.
        let cap = size as usize + 1;
        let mut out: Vec<u8> = Vec::with_capacity(cap);
        let mut input = InBuffer::around(data);
        loop {
            let before = (input.pos(), out.len());
            d.run(&mut input, &mut OutBuffer::around_pos(&mut out, before.1))
                .map_err(corrupt)?;
            if out.len() > size as usize {
                return Err(format!(
                    "compressed file decompressed to more than its announced {size} bytes"
                ));
            }
            // Done once the input is in and a step gives nothing more.
            if input.pos() == data.len() && (input.pos(), out.len()) == before {
                break;
            }
            if (input.pos(), out.len()) == before {
                return Err(format!(
                    "compressed file is corrupt: decoding stopped with {} of {} bytes in",
                    input.pos(),
                    data.len()
                ));
            }
        }
        if out.len() as u64 != size {
            return Err(format!(
                "compressed file decompressed to {} bytes, {size} announced",
                out.len()
            ));
        }
        Ok(out)
    }
}

/// The sender's side of one `fetch_small` reply: compresses its files in
/// order into one zstd stream, each file's bytes flushed as its own
/// segment, so the receiver decodes every file as it comes (in reply
/// order) against everything compressed before it in the reply. On the
/// 256 MiB text tree of docs/benchmarks.md (67 MB of 4-60 KiB source-like
/// files, level 3): 22.4 MB compressed one by one, about 20.8 MB with each
/// file linked to the one before (the previous design), 17.4 MB as one
/// stream per reply of at most 1 MiB, 16.5 MB as one stream for the
/// whole tree (what `rsync -z` sends).
///
/// A file whose trial does not shrink is sent as it is and stays out of
/// the stream; so does one whose segment would not save 1/64 of it (the
/// stream then starts again, since the receiver will not see it). A
/// relay's forwarded file ([`SmallFile::Compressed`] from upstream)
/// belongs to upstream's stream: the next file compressed here starts a
/// new one.
#[derive(Default)]
pub struct SmallEncoder {
    /// The trials' context.
    zstd: Zstd,
    /// The reply's stream here and its level, once a file went into it.
    stream: Option<(zstd::stream::raw::Encoder<'static>, i32)>,
    /// CPU time spent compressing so far.
    compressing: Duration,
}

impl SmallEncoder {
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
        let (Some(level), SmallFile::Data { meta, data, digest }) = (level, &one) else {
            if matches!(one, SmallFile::Compressed { .. }) {
                self.stream = None;
            }
            return one;
        };
        let t0 = thread_cpu_ns();
        let z = self.segment(data, level);
        self.compressing += Duration::from_nanos(thread_cpu_ns().saturating_sub(t0));
        let Some((z, linked)) = z else {
            counters.raw_chunks.fetch_add(1, Ordering::Relaxed);
            return one;
        };
        counters.count_compressed(data.len(), z.len());
        SmallFile::Compressed {
            meta: meta.clone(),
            data: z,
            digest: *digest,
            linked,
        }
    }

    /// `data` as the next segment of the stream (and whether it continues
    /// one), or `None`: it goes as it is.
    fn segment(&mut self, data: &[u8], level: i32) -> Option<(Bytes, bool)> {
        use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};
        if !self.zstd.trial_shrinks(data) {
            return None;
        }
        let linked = matches!(&self.stream, Some((_, l)) if *l == level);
        if !linked {
            let mut e = Encoder::new(level).ok()?;
            e.set_parameter(CParameter::WindowLog(STREAM_WINDOW_LOG))
                .ok()?;
            self.stream = Some((e, level));
        }
        let (e, _) = self.stream.as_mut()?;
        let mut out: Vec<u8> = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = InBuffer::around(data);
        let mut fed = || -> std::io::Result<()> {
            while input.pos() < data.len() {
                out.reserve(data.len() / 4 + 64);
                let pos = out.len();
                let mut o = OutBuffer::around_pos(&mut out, pos);
                e.run(&mut input, &mut o)?;
            }
            loop {
                out.reserve(data.len() / 4 + 64);
                let pos = out.len();
                let mut o = OutBuffer::around_pos(&mut out, pos);
                if e.flush(&mut o)? == 0 {
                    return Ok(());
                }
            }
        };
        let fed = fed();
        if fed.is_err() || out.len() > data.len() - data.len() / 64 {
            // The receiver will not see it: the stream starts again.
            self.stream = None;
            return None;
        }
        Some((Bytes::from(out), linked))
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

    /// `data` as a small file of a reply (this test binary's metadata, a
    /// made-up digest).
    fn small_file(data: &[u8], digest: u8) -> SmallFile {
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        SmallFile::Data {
            meta: crate::files::FileMeta {
                size: data.len() as u64,
                ..crate::files::FileMeta::from_fd(&f).expect("fstat")
            },
            data: Bytes::copy_from_slice(data),
            digest: [digest; 32],
        }
    }

    #[test]
    fn a_replys_files_form_one_stream_and_decode_in_reply_order() {
        let counters = CompressCounters::default();
        let file = |data: &[u8]| small_file(data, 7);
        // b repeats most of a: in a's stream, it costs a fraction of itself;
        // c repeats a's start, with a failed file between them.
        let a = text(20_000);
        let mut b = a[..15_000].to_vec();
        b.extend_from_slice(&text(2_000));
        let mut c = a[2_000..9_000].to_vec();
        c.extend_from_slice(&text(1_000));
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
        let alone = |d: &[u8]| {
            compress_small(&mut Zstd::default(), d, 3, &counters)
                .expect("shrinks")
                .len()
        };
        for (k, data) in [(1, &b), (3, &c)] {
            let (is_linked, len) = linked(&sent[k]).expect("compressed");
            assert!(is_linked, "file {k} continues the stream");
            assert!(
                len * 3 < alone(data),
                "{len} in the stream, {} alone",
                alone(data)
            );
        }
        // Random data goes as it is, out of the stream.
        assert!(matches!(sent[4], SmallFile::Data { .. }));
        // In order, every file comes back as it was.
        let mut dec = SmallDecoder::default();
        let got: Vec<SmallFile> = sent.iter().map(|f| dec.open(f.clone())).collect();
        assert_eq!(got, reply);
        // b without its stream (a fresh decoder) is a clear error.
        let orphan = SmallDecoder::default().open(sent[1].clone());
        assert!(
            matches!(&orphan, SmallFile::Failed(w) if w.contains("no stream before it")),
            "{orphan:?}"
        );
        // A stream that breaks (a cut segment) takes what follows with it.
        // (A segment corrupted in place may decode to other bytes of the
        // right length: the receiver's digest check refuses those.)
        let mut dec = SmallDecoder::default();
        let SmallFile::Compressed { meta, data, .. } = sent[0].clone() else {
            panic!("a compressed");
        };
        let data = data.slice(..data.len() / 2);
        let broken = dec.open(SmallFile::Compressed {
            meta,
            data,
            digest: [7; 32],
            linked: false,
        });
        assert!(matches!(broken, SmallFile::Failed(_)), "{broken:?}");
        assert!(matches!(dec.open(sent[1].clone()), SmallFile::Failed(_)));
        // b in another stream: never b's bytes (if zstd cannot tell, the
        // digest check of the receiver does).
        let mut other = SmallEncoder::default();
        let first = other.encode(file(&text(7_000)), Some(3), &counters);
        let mut dec = SmallDecoder::default();
        assert!(matches!(dec.open(first), SmallFile::Data { .. }));
        assert_ne!(dec.open(sent[1].clone()), reply[1]);
    }

    #[test]
    fn a_forwarded_file_or_a_new_level_starts_a_new_stream() {
        let counters = CompressCounters::default();
        let file = |data: &[u8]| small_file(data, 1);
        let is_linked = |f: &SmallFile| match f {
            SmallFile::Compressed { linked, .. } => *linked,
            other => panic!("not compressed: {other:?}"),
        };
        let mut upstream = SmallEncoder::default();
        let forwarded = upstream.encode(file(&text(6_000)), Some(3), &counters);
        let mut enc = SmallEncoder::default();
        let reply = [
            enc.encode(file(&text(5_000)), Some(3), &counters),
            enc.encode(forwarded.clone(), Some(3), &counters),
            enc.encode(file(&text(4_000)), Some(3), &counters),
            enc.encode(file(&text(4_500)), Some(1), &counters),
        ];
        assert!(!is_linked(&reply[0]));
        assert_eq!(reply[1], forwarded, "passed on as it came");
        assert!(!is_linked(&reply[2]), "after upstream's stream, a new one");
        assert!(!is_linked(&reply[3]), "another level, a new stream");
        let mut dec = SmallDecoder::default();
        for f in reply {
            assert!(matches!(dec.open(f), SmallFile::Data { .. }));
        }
    }

    #[test]
    fn a_stream_that_announces_too_much_or_asks_for_a_wide_window_fails() {
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let meta = crate::files::FileMeta::from_fd(&f).expect("fstat");
        let data = text(50_000);
        let wide = {
            let mut e = zstd::stream::raw::Encoder::new(3).expect("encoder");
            use zstd::stream::raw::Operation;
            e.set_parameter(zstd::stream::raw::CParameter::WindowLog(
                STREAM_WINDOW_LOG + 3,
            ))
            .expect("window");
            let mut out = Vec::with_capacity(60_000);
            let mut input = zstd::stream::raw::InBuffer::around(&data);
            {
                let mut o = zstd::stream::raw::OutBuffer::around(&mut out);
                e.run(&mut input, &mut o).expect("run");
                while e.flush(&mut o).expect("flush") != 0 {}
            }
            out
        };
        let open = |size: u64, z: &[u8]| {
            SmallDecoder::default().open(SmallFile::Compressed {
                meta: crate::files::FileMeta {
                    size,
                    ..meta.clone()
                },
                data: Bytes::copy_from_slice(z),
                digest: [0; 32],
                linked: false,
            })
        };
        assert!(matches!(
            open(data.len() as u64, &wide),
            SmallFile::Failed(_)
        ));
        let counters = CompressCounters::default();
        let mut enc = SmallEncoder::default();
        let SmallFile::Compressed { data: z, .. } = enc.encode(
            SmallFile::Data {
                meta: crate::files::FileMeta {
                    size: data.len() as u64,
                    ..meta.clone()
                },
                data: Bytes::copy_from_slice(&data),
                digest: [0; 32],
            },
            Some(3),
            &counters,
        ) else {
            panic!("text compresses");
        };
        assert!(matches!(
            open(data.len() as u64, &z),
            SmallFile::Data { .. }
        ));
        let short = open(data.len() as u64 - 1, &z);
        assert!(
            matches!(&short, SmallFile::Failed(w) if w.contains("more than its announced")),
            "{short:?}"
        );
        assert!(matches!(
            open(data.len() as u64 + 1, &z),
            SmallFile::Failed(_)
        ));
        assert!(matches!(open(u64::MAX, &z), SmallFile::Failed(_)));
    }
}
