//! What the pump does with the reader's events: chunks sent (paced, on
//! a stripe, the tuner told), the end sent and the turn handed over.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Pump, TuneClock};
use crate::files::compress::{self, Tuner};
use crate::files::serve::job::{Abandon, Transfer};
use crate::files::serve::lane::HandedOver;
use crate::files::serve::lock;
use crate::files::serve::read::ReadEvent;
use crate::files::transfer::{SendMachine, StripeView};
use crate::files::{OFFSET_LEN, TransferMsg};
use crate::wire::{Enc, Frame};

impl Transfer {
    /// Acts on what the reader said: a chunk is sent, the end handed over.
    pub(super) async fn on_read_event(
        &mut self,
        p: &mut Pump<'_>,
        event: Option<ReadEvent>,
        waited: Instant,
    ) -> Result<(), Abandon> {
        let router = p.router;
        match event {
            Some(ReadEvent::Chunk(data, len)) => self.send_chunk(p, data, len, waited).await?,
            Some(ReadEvent::Start(from)) => {
                self.to.send_control(router, &TransferMsg::Start { from });
                p.m.start_at(from);
            }
            Some(ReadEvent::Copy(..)) => {
                return Err(Abandon::Internal {
                    path: self.path.clone(),
                    what: "unconverted copy",
                });
            }
            Some(ReadEvent::Done(d)) => {
                p.m.on_end_sent();
                let size = self.meta.size;
                self.to
                    .send_control(router, &TransferMsg::End { size, digest: d });
                // The next transfer on this stream starts now, its
                // chunks following these while their
                // acknowledgements come back; what is still in
                // flight counts against its window.
                if let Some(owed) = p.m.hand_over() {
                    *lock(&p.lane.estimate) = Some(p.m.window().estimate());
                    p.handed = Some(HandedOver::new(p.lane.clone(), owed));
                    p.turn = None;
                }
            }
            Some(ReadEvent::Failed(why)) => return Err(Abandon::Read(why)),
            None => {
                return Err(Abandon::ReaderStopped {
                    path: self.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Sends one chunk (`[offset][bytes]`, `len` file bytes): paced, on
    /// a stripe when there are some, the tuner told what it cost.
    pub(super) async fn send_chunk(
        &mut self,
        p: &mut Pump<'_>,
        data: Bytes,
        len: u64,
        waited: Instant,
    ) -> Result<(), Abandon> {
        if let Some(t) = Pump::tuner(&p.lane, p.adaptive) {
            let mut t = lock(t);
            t.set_link_ceiling(p.pacing.ceiling());
            tune_on_chunk(
                &mut t,
                &mut p.clock,
                &p.m,
                &p.zshared,
                len,
                waited,
                &self.path,
            );
        }
        let paced = p.pacing.wait(data.len() as u64).await;
        if let Some(t) = Pump::tuner(&p.lane, p.adaptive) {
            // The limit is the link: waiting for it is
            // what makes a better ratio worth its CPU.
            lock(t).on_link_wait(paced);
        }
        p.chunks_sent += 1;
        // Looked at every few chunks: a stripe carries data
        // (and the window grows for it) soon after it attaches.
        if p.chunks_sent.is_multiple_of(4) {
            self.look_for_stripes(p);
        }
        let sent_at = Instant::now();
        p.m.on_sent(len, (data.len() - OFFSET_LEN) as u64, sent_at);
        let frame = Frame::new(self.to.context, self.to.handle, Enc::Bin, data);
        if p.stripes.len() > 1 {
            // The primary (first) carries no bulk data
            // while there are stripes: it stays free for
            // calls and acknowledgements, which then never
            // wait behind megabytes buffered in a pipe or
            // an SSH channel.
            let bulk = &p.stripes[1..];
            let views: Vec<StripeView> = bulk
                .iter()
                .map(|o| StripeView {
                    closed: o.is_closed(),
                    full: o.bulk_bytes() >= crate::stream::BULK_HIGH_WATER,
                })
                .collect();
            let pick = p.m.pick_stripe(&views).map_err(|_| Abandon::StripeLost {
                to: p.router.describe(self.requester),
            })?;
            p.router.send_bulk_on(&bulk[pick], frame).await;
        } else {
            p.router.send_bulk(frame).await;
        }
        if let Some(t) = Pump::tuner(&p.lane, p.adaptive) {
            // A full stream queue is the link pushing back.
            lock(t).on_link_wait(sent_at.elapsed());
        }
        Ok(())
    }

    /// Stripes may attach while a transfer runs: takes them on.
    pub(super) fn look_for_stripes(&self, p: &mut Pump<'_>) {
        let now = p.router.stripes(p.stream);
        if now.len() > p.stripes.len() {
            // Said here too: stripes usually attach
            // seconds after a large transfer starts
            // (a fresh ssh connection each), so the
            // line at the start rarely shows them.
            tracing::debug!("{}: now striping over {} streams", self.path, now.len());
            // Bulk goes on the stripes, not the
            // primary, once there are any.
            let data_streams = |n: usize| n.saturating_sub(1).max(1);
            p.m.on_more_paths(data_streams(p.stripes.len()), data_streams(now.len()));
            p.stripes = now;
        }
    }
}

/// The tuner's hook before a chunk is sent: what the reader, the
/// compressor and the link took since the last one, and the level
/// (perhaps changed by the small-file path) for the next chunks.
pub(super) fn tune_on_chunk(
    t: &mut Tuner,
    clock: &mut TuneClock,
    m: &SendMachine,
    zshared: &compress::Shared,
    len: u64,
    waited: Instant,
    path: &str,
) {
    t.on_reader_wait(waited.elapsed());
    let ns = zshared.compress_ns();
    let spent = Duration::from_nanos(ns - clock.last_compress_ns);
    let acked = m.window().acked();
    t.on_delivered(
        acked.saturating_sub(clock.last_acked),
        m.window().estimate().min_rtt,
    );
    clock.last_acked = acked;
    if let Some(level) = t.on_chunk(
        len,
        clock.last_chunk.elapsed(),
        spent,
        m.window().best_rate(),
    ) {
        tracing::debug!(
            "{}: compression level now {level:?} (link {:.1} MB/s, compressor {:.1} MB/s)",
            path,
            t.link_rate().unwrap_or(0.0) / 1e6,
            t.compress_rate().unwrap_or(0.0) / 1e6
        );
    }
    // Also picks up a change made by the small-file path.
    zshared.set_level(t.level());
    (clock.last_chunk, clock.last_compress_ns) = (Instant::now(), ns);
}
