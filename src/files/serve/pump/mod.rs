//! The pump of a large transfer: takes the stream's turn, starts the
//! reader, and sends chunks while the window has room. The decisions are
//! the [`SendMachine`]'s; the pump reads, sends and waits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::job::{Abandon, Transfer, ack_channel_ended, wait_cancel};
use super::lane::{HandedOver, Lane};
use super::read::ReadEvent;
use super::{TURN_STALL, lock};
use crate::files::CHUNK_DATA;
use crate::files::compress::{self, Tuner};
use crate::files::pace::Pacing;
use crate::files::transfer::SendMachine;
use crate::files::turns;
use crate::router::Router;
use crate::stream::{Outbox, StreamId};

mod send;
mod start;

/// Waiting for a turn given up part-way ([`Turns::take_again`]).
pub(super) type RegainTurn =
    Pin<Box<dyn Future<Output = Result<turns::Turn, turns::Closed>> + Send>>;

/// What the pump of one large transfer keeps between its steps.
pub(super) struct Pump<'a> {
    pub(super) router: &'a Router,
    pub(super) stream: StreamId,
    pub(super) lane: Arc<Lane>,
    /// The decisions (files/transfer.rs); the pump reads, sends and waits.
    pub(super) m: SendMachine,
    /// The reader's events, and the reader itself.
    pub(super) rx: mpsc::Receiver<ReadEvent>,
    pub(super) reader: JoinHandle<()>,
    /// `--bwlimit`: the pump paces what it sends.
    pub(super) pacing: Pacing,
    pub(super) chunk_len: usize,
    /// `-z` adaptive: the stream's tuner is consulted (it is shared with
    /// the stream's small-file replies).
    pub(super) adaptive: bool,
    pub(super) zshared: Arc<compress::Shared>,
    pub(super) clock: TuneClock,
    pub(super) stripes: Vec<Arc<Outbox>>,
    pub(super) chunks_sent: u64,
    /// Held while this transfer has the stream's turn.
    pub(super) turn: Option<turns::Turn>,
    /// Set while the turn, given up, is being taken again.
    pub(super) regain: Option<RegainTurn>,
    /// Set once the end has gone out and the turn passed on.
    pub(super) handed: Option<HandedOver>,
}

/// When the tuner last heard from this transfer.
pub(super) struct TuneClock {
    pub(super) last_chunk: Instant,
    pub(super) last_compress_ns: u64,
    pub(super) last_acked: u64,
}

impl Pump<'_> {
    /// The stream's tuner, if `-z` is adaptive.
    pub(super) fn tuner(lane: &Lane, adaptive: bool) -> Option<&Mutex<Tuner>> {
        adaptive.then_some(&lane.tuner)
    }
}

impl Transfer {
    /// Returns the peak bytes in flight, or why the transfer was abandoned.
    pub(super) async fn pump(&mut self, router: &Router) -> Result<u64, Abandon> {
        let size = self.meta.size;
        self.wait_whole_spool().await?;
        if size as usize <= CHUNK_DATA {
            return self.send_small(router).await;
        }
        let Some(stream) = router.stream_towards(self.requester) else {
            return Err(Abandon::NoRoute {
                to: router.describe(self.requester),
            });
        };
        // Wait for this stream's turn (FIFO), unless cancelled meanwhile.
        let lane = self.fs.lane(stream);
        let turn = tokio::select! {
            t = lane.turn.take(self.requester) => t?,
            why = wait_cancel(&mut self.cancel) => return Err(why.into()),
            dead = self.acks.recv() => return Err(ack_channel_ended(dead)),
        };
        let mut p = self.start_pump(router, stream, lane, turn);
        loop {
            self.take_queued_acks(&mut p)?;
            if p.m.is_done() {
                break;
            }
            if p.stripes.len() > 1 && p.stripes.iter().any(|o| o.is_closed()) {
                // Chunks queued on the lost stripe are gone with it.
                return Err(Abandon::StripeLost {
                    to: router.describe(self.requester),
                });
            }
            let others = p.lane.handed_over.load(Ordering::Acquire);
            if p.m.wants_data_beside(p.chunk_len as u64, others) {
                let waited = Instant::now();
                let event = p.rx.recv().await;
                // Time spent waiting for our own reader (a relay's spool
                // still arriving) is not the requester's silence.
                p.m.on_reader_wait(waited.elapsed());
                self.on_read_event(&mut p, event, waited).await?;
                continue;
            }
            self.wait_for_credit(&mut p, others).await?;
        }
        Ok(self.end_pump(p).await)
    }

    /// Takes every acknowledgement already queued, without waiting; gives
    /// the turn up if stalled while another requester waits.
    pub(super) fn take_queued_acks(&mut self, p: &mut Pump<'_>) -> Result<(), Abandon> {
        while let Some(f) = self
            .acks
            .try_recv()
            .map_err(|e| ack_channel_ended(Err(e)))?
        {
            self.on_ack(&mut p.m, &f)?;
        }
        if let Some(h) = p.handed.as_mut() {
            h.update(p.m.in_flight());
        }
        if p.m
            .should_yield_turn(Instant::now(), p.lane.turn.others_waiting(self.requester))
        {
            // Stalled while another requester waits: let it have the
            // link. This transfer sends nothing more until its turn
            // comes again (ahead of its requester's newer transfers,
            // so one receiver never has two windows in flight); acks
            // and the deadline still count meanwhile.
            tracing::debug!(
                "{}: no acknowledgement from {} for {TURN_STALL:?}; giving up the stream's turn",
                self.path,
                p.router.describe(self.requester)
            );
            p.m.yield_turn();
            p.turn = None;
            let (turns, requester) = (p.lane.turn.clone(), self.requester);
            p.regain = Some(Box::pin(async move { turns.take_again(requester).await }));
        }
        Ok(())
    }

    /// Window full (or all sent): waits for an acknowledgement, a cancel,
    /// the ack deadline, or (when striping) a stripe closing.
    pub(super) async fn wait_for_credit(
        &mut self,
        p: &mut Pump<'_>,
        others: u64,
    ) -> Result<(), Abandon> {
        let striped = p.stripes.len() > 1;
        // Any stripe's outbox closing wakes this at once.
        let stripes = &p.stripes;
        let stripe_lost = async {
            let mut lost: Vec<_> = stripes.iter().map(|o| Box::pin(o.closed())).collect();
            std::future::poll_fn(|cx| {
                if lost.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await
        };
        let tuner = Pump::tuner(&p.lane, p.adaptive);
        let waited = Instant::now();
        let deadline = tokio::time::Instant::from_std(p.m.poll_timeout());
        let has_turn = p.m.has_turn();
        tokio::select! {
            got = self.acks.recv() => {
                if let Some(t) = tuner {
                    lock(t).on_link_wait(waited.elapsed());
                }
                let f = got.map_err(|e| ack_channel_ended(Err(e)))?;
                self.on_ack(&mut p.m, &f)?;
            }
            // Look again at the turn now and then (see `take_queued_acks`).
            _ = tokio::time::sleep(TURN_STALL / 4), if has_turn => {}
            // Credit held by a handed-over transfer came back.
            _ = p.lane.credit_freed.notified(), if has_turn && others > 0 => {}
            t = async {
                match p.regain.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if p.regain.is_some() => {
                p.turn = Some(t?);
                p.regain = None;
                p.m.on_turn(Instant::now());
            }
            why = wait_cancel(&mut self.cancel) => return Err(why.into()),
            _ = stripe_lost, if striped => {} // reported at the top of the pump's loop
            _ = tokio::time::sleep_until(deadline) => {
                p.m.handle_timeout(Instant::now()).map_err(|source| Abandon::Silent {
                    to: p.router.describe(self.requester),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// All acknowledged: stops the reader, keeps what the window learnt
    /// of the path for the stream's next transfer; the peak in flight.
    pub(super) async fn end_pump(&self, p: Pump<'_>) -> u64 {
        let Pump {
            router,
            lane,
            m,
            rx,
            reader,
            turn,
            ..
        } = p;
        drop(rx);
        let _ = reader.await;
        let window = m.window();
        *lock(&lane.estimate) = Some(window.estimate());
        tracing::debug!(
            "{}: {} bytes to {}, window now {} (min rtt {:?}, peak in flight {})",
            self.path,
            self.meta.size,
            router.describe(self.requester),
            window.limit(),
            window.estimate().min_rtt,
            window.peak()
        );
        // The turn passes on only now (unless already handed over).
        drop(turn);
        window.peak()
    }
}
