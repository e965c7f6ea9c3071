//! The start of a large transfer: a relay's spool awaited when the file
//! is read out of order, the reader spawned, the machine set up.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Pump, TuneClock};
use crate::files::CHUNK_DATA;
use crate::files::compress::{self, ChunkEncoder, Compression};
use crate::files::serve::job::{Abandon, Transfer};
use crate::files::serve::lane::Lane;
use crate::files::serve::lock;
use crate::files::serve::read::{ReadEvent, read_file_from};
use crate::files::serve::read_delta::read_file_delta;
use crate::files::transfer::SendMachine;
use crate::files::turns;
use crate::files::window::{PathEstimate, Window};
use crate::router::Router;
use crate::stream::StreamId;

impl Transfer {
    /// A one-chunk file, a delta, a resume and holes read the file out of
    /// order or all at once: from a relay's spool, they wait for all of it.
    pub(super) async fn wait_whole_spool(&mut self) -> Result<(), Abandon> {
        let whole_first = self.meta.size as usize <= CHUNK_DATA
            || self.delta.is_some()
            || self.resume.is_some()
            || self.sparse;
        if let Some(gate) = self.gate.as_mut()
            && whole_first
        {
            gate.complete().await.map_err(|source| Abandon::Spool {
                path: self.path.clone(),
                source,
            })?;
            self.gate = None;
        }
        Ok(())
    }

    /// Starts the reader and sets up the machine, holding `turn`.
    pub(super) fn start_pump<'a>(
        &mut self,
        router: &'a Router,
        stream: StreamId,
        lane: Arc<Lane>,
        turn: turns::Turn,
    ) -> Pump<'a> {
        // -z and --bwlimit: the reader compresses (on its own thread, so
        // compressing overlaps sending) and the pump paces.
        let pacing = self.fs.inner.pacers.for_target(self.requester);
        let chunk_len = pacing.chunk_len(CHUNK_DATA);
        // The stream's tuner is shared with its small-file replies: each
        // hook takes the lock for a few arithmetic operations.
        let (adaptive, level) = match self.fs.inner.config.compress {
            Compression::Off => (false, None),
            Compression::Level(l) => (false, Some(l)),
            Compression::Adaptive => (true, lock(&lane.tuner).level()),
        };
        let zshared = compress::Shared::new(level, self.fs.inner.zcounters.clone());
        let (rx, reader) = self.start_reader(chunk_len, &zshared);
        let clock = TuneClock {
            last_chunk: Instant::now(),
            last_compress_ns: 0,
            last_acked: 0,
        };
        let stripes = router.stripes(stream);
        if stripes.len() > 1 {
            tracing::debug!("{}: striping over {} streams", self.path, stripes.len());
        }
        let sizing = self.fs.inner.config.sizing;
        let start = lock(&lane.estimate)
            .clone()
            .unwrap_or_else(|| PathEstimate::new(sizing));
        let mut m = SendMachine::new(
            self.meta.size,
            Window::with_estimate(sizing, start),
            self.fs.inner.config.ack_timeout,
            tokio::time::Instant::now().into_std(),
        );
        // Bulk goes on the stripes, not the primary, once there are any.
        m.set_streams(stripes.len().saturating_sub(1).max(1));
        m.on_turn(Instant::now());
        Pump {
            router,
            stream,
            lane,
            m,
            rx,
            reader,
            pacing,
            chunk_len,
            adaptive,
            zshared,
            clock,
            stripes,
            chunks_sent: 0,
            turn: Some(turn),
            regain: None,
            handed: None,
        }
    }

    /// Spawns the blocking reader: plain, resumed, sparse, or a delta
    /// against the requester's signature; chunks encoded (`-z`) there.
    pub(super) fn start_reader(
        &mut self,
        chunk_len: usize,
        zshared: &Arc<compress::Shared>,
    ) -> (mpsc::Receiver<ReadEvent>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<ReadEvent>(8);
        let file = self.file.clone();
        let meta = self.meta.clone();
        let mut encoder = ChunkEncoder::new(zshared.clone()).forwarding(self.frames.clone());
        let (mut basis, resume, sparse) = (self.delta.take(), self.resume.take(), self.sparse);
        if sparse && basis.is_some() && crate::files::sparse::has_hole(&*self.file, meta.size) {
            // Copy instructions would fill the holes: sent whole, holes
            // as holes.
            basis = None;
        }
        let counters = self.fs.inner.dcounters.clone();
        let gate = self.gate.take();
        let reader = tokio::task::spawn_blocking(move || {
            let send = |ev| {
                let ev = match ev {
                    ReadEvent::Chunk(data, len) => ReadEvent::Chunk(encoder.encode(data), len),
                    ReadEvent::Copy(data, len) => ReadEvent::Chunk(data, len),
                    other => other,
                };
                tx.blocking_send(ev).is_ok()
            };
            if let Some(basis) = basis {
                read_file_delta(&file, &meta, chunk_len, &basis, &counters, send)
            } else {
                read_file_from(
                    &file, &meta, chunk_len, resume, sparse, &counters, gate, send,
                )
            }
        });
        (rx, reader)
    }
}
