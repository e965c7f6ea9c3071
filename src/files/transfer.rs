//! The sender's side of one large transfer, sans-IO: what may be sent
//! now, what an acknowledgement means, when the receiver counts as silent,
//! when to let another requester have the stream, and which stripe carries
//! the next chunk. Time is passed in; the FileService's pump
//! (`serve.rs`) is the driver that reads the file, sends frames and waits.
//!
//! * **Credit** is the [`Window`] over *wire* bytes ([`WireLedger`] maps
//!   the receiver's file-byte acknowledgements back to them, so `-z`
//!   counts what the link carries).
//! * **Silence**: with bytes in flight, no new acknowledgement for
//!   `ack_timeout` ends the transfer. Time the sender itself spends waiting
//!   (for its reader, e.g. a relay's spool still arriving) does not count.
//! * **The turn**: one large transfer at a time per stream; a transfer
//!   with no acknowledgement for [`TURN_STALL`] gives the turn up when
//!   another requester waits, and takes it back later.
//! * **Handing over**: once a transfer has sent its end it gives the turn
//!   up at once, with its last acknowledgements still to come, so the next
//!   file's chunks start while they are in flight (over a 100 ms link,
//!   waiting for them cost a round trip and a window ramp per file). The
//!   bytes it still has in flight count against the next transfer's credit
//!   ([`SendMachine::wants_data_beside`]): the transfers on a stream share
//!   one window's worth of bytes in flight, as one transfer did.
//! * **Stripes**: round robin over the data stripes (never the primary,
//!   kept for calls and acknowledgements), skipping one that is closed or
//!   whose queue is past the high-water mark; a closed stripe ends the
//!   transfer (chunks queued on it are gone).

use std::time::{Duration, Instant};

use super::compress::WireLedger;
use super::window::{AckBeyondSent, Window};

/// How long a large transfer may go without any acknowledgement before it
/// gives up its stream's turn to another requester's waiting transfer (it
/// waits for its next turn, ahead of its requester's newer transfers). A
/// receiver that reads but does not acknowledge would otherwise hold the
/// turn until `ack_timeout` (60 s) — a stall per transfer for everyone
/// sharing the stream. On a working path acknowledgements come every few
/// milliseconds (one per chunk written), so only a stalled receiver, or a
/// path slower than 64 KiB/s, gives the turn up.
pub const TURN_STALL: Duration = Duration::from_secs(2);

/// Why a transfer ends early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The receiver claimed more than was sent.
    #[error(transparent)]
    AckBeyondSent(#[from] AckBeyondSent),
    /// No acknowledgement for the whole `ack_timeout` with data in flight.
    #[error("stopped acknowledging ({acked} of {size} bytes acknowledged, nothing for {waited:?})")]
    Silent {
        /// File bytes acknowledged.
        acked: u64,
        /// The file's size.
        size: u64,
        /// How long it has been silent.
        waited: Duration,
    },
    /// A stripe carrying this transfer closed.
    #[error("a stripe was lost mid-transfer")]
    StripeLost,
}

/// What the driver knows of one data stripe when choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeView {
    /// Its stream is gone.
    pub closed: bool,
    /// Its queue is past the high-water mark.
    pub full: bool,
}

/// One transfer's sending state.
#[derive(Debug)]
pub struct SendMachine {
    size: u64,
    window: Window,
    ledger: WireLedger,
    ack_timeout: Duration,
    /// When the receiver counts as silent, if data stays unacknowledged.
    ack_deadline: Instant,
    /// Last acknowledgement that brought something new (or turn taken).
    progressed: Instant,
    has_turn: bool,
    end_sent: bool,
    next_stripe: usize,
}

impl SendMachine {
    /// A transfer of `size` bytes with `window` as credit, started at
    /// `now`, without the stream's turn yet.
    pub fn new(size: u64, window: Window, ack_timeout: Duration, now: Instant) -> SendMachine {
        SendMachine {
            size,
            window,
            ledger: WireLedger::default(),
            ack_timeout,
            ack_deadline: now + ack_timeout,
            progressed: now,
            has_turn: false,
            end_sent: false,
            next_stripe: 0,
        }
    }

    /// A resume: the receiver holds the first `from` bytes already.
    pub fn start_at(&mut self, from: u64) {
        self.ledger = WireLedger::starting_at(from);
    }

    /// The stream's turn was taken (first, or again after giving it up).
    pub fn on_turn(&mut self, now: Instant) {
        self.has_turn = true;
        self.progressed = now;
    }

    /// True while this transfer holds the stream's turn.
    pub fn has_turn(&self) -> bool {
        self.has_turn
    }

    /// Length of the next chunk, given the driver's chunk size.
    pub fn next_len(&self, chunk_len: u64) -> u64 {
        (self.size - self.ledger.file_sent().min(self.size)).min(chunk_len)
    }

    /// True if the driver should read and send the next chunk now.
    pub fn wants_data(&self, chunk_len: u64) -> bool {
        self.wants_data_beside(chunk_len, 0)
    }

    /// Like [`SendMachine::wants_data`], with `others` wire bytes of
    /// earlier transfers on the same stream still in flight (handed over,
    /// [`SendMachine::hand_over`]): they take their share of the window.
    /// With nothing of its own in flight, a transfer still waits for them
    /// to fit, so the stream never holds more than one window (or one
    /// chunk past it, as [`Window::can_send`] allows a lone transfer).
    pub fn wants_data_beside(&self, chunk_len: u64, others: u64) -> bool {
        if self.end_sent || !self.has_turn {
            return false;
        }
        let len = self.next_len(chunk_len);
        if others == 0 {
            return self.window.can_send(len);
        }
        self.window.in_flight() + others + len <= self.window.limit()
    }

    /// Gives the turn up once the end has gone out, with acknowledgements
    /// still to come: returns the wire bytes still in flight, which the
    /// driver counts against the stream's next transfer until they are
    /// acknowledged. `None` if not yet (or already) handed over.
    pub fn hand_over(&mut self) -> Option<u64> {
        if !self.end_sent || !self.has_turn {
            return None;
        }
        self.has_turn = false;
        Some(self.window.in_flight())
    }

    /// Wire bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.window.in_flight()
    }

    /// The driver waited `waited` for its own reader: not the receiver's
    /// silence, so the deadline moves on by as much.
    pub fn on_reader_wait(&mut self, waited: Duration) {
        self.ack_deadline += waited;
    }

    /// A chunk of `file_len` file bytes went out as `wire_len` bytes.
    pub fn on_sent(&mut self, file_len: u64, wire_len: u64, now: Instant) {
        let wire = self.ledger.on_send(file_len, wire_len);
        self.window.on_send_at(wire, now);
    }

    /// The end (size and digest) went out.
    pub fn on_end_sent(&mut self) {
        self.end_sent = true;
    }

    /// A cumulative acknowledgement of `file` bytes: the file bytes newly
    /// acknowledged (0 for a stale or repeated one).
    pub fn on_ack(&mut self, file: u64, now: Instant) -> Result<u64, SendError> {
        let (delta, wire) = self.ledger.on_ack(file)?;
        let before = self.window.acked();
        self.window.on_ack_at(wire, now)?;
        if delta > 0 || self.window.acked() > before {
            self.ack_deadline = now + self.ack_timeout;
            self.progressed = now;
        }
        Ok(delta)
    }

    /// Everything was sent and acknowledged.
    pub fn is_done(&self) -> bool {
        self.end_sent && self.ledger.file_acked() == self.size
    }

    /// True if the turn should go to another requester now: held, and no
    /// progress for [`TURN_STALL`] while `others_waiting`.
    pub fn should_yield_turn(&self, now: Instant, others_waiting: bool) -> bool {
        self.has_turn
            && others_waiting
            && now.saturating_duration_since(self.progressed) > TURN_STALL
    }

    /// The turn was given up; nothing more is sent until it comes back.
    pub fn yield_turn(&mut self) {
        self.has_turn = false;
    }

    /// When [`SendMachine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.ack_deadline
    }

    /// Checks the silence rule at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SendError> {
        if now >= self.ack_deadline && self.window.in_flight() > 0 {
            return Err(SendError::Silent {
                acked: self.ledger.file_acked(),
                size: self.size,
                waited: self.ack_timeout,
            });
        }
        if self.window.in_flight() == 0 && now >= self.ack_deadline {
            // Nothing owed: the clock starts again with the next send.
            self.ack_deadline = now + self.ack_timeout;
        }
        Ok(())
    }

    /// The data stripe (an index into `bulk`) for the next chunk, or a
    /// [`SendError::StripeLost`] if any of them closed.
    pub fn pick_stripe(&mut self, bulk: &[StripeView]) -> Result<usize, SendError> {
        if bulk.iter().any(|s| s.closed) {
            return Err(SendError::StripeLost);
        }
        let n = bulk.len().max(1);
        let start = self.next_stripe % n;
        let pick = (0..bulk.len())
            .map(|k| (start + k) % n)
            .find(|&i| !bulk[i].full)
            .unwrap_or(start);
        self.next_stripe = self.next_stripe.wrapping_add(1);
        Ok(pick)
    }

    /// The bulk now goes over `to` streams instead of `from` (stripes
    /// attached): see [`Window::on_more_paths`].
    pub fn on_more_paths(&mut self, from: usize, to: usize) {
        self.window.on_more_paths(from, to);
    }

    /// The bulk starts over `n` data streams: see [`Window::set_streams`].
    pub fn set_streams(&mut self, n: usize) {
        self.window.set_streams(n);
    }

    /// The credit window (for its estimate and figures).
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// File bytes acknowledged so far.
    pub fn file_acked(&self) -> u64 {
        self.ledger.file_acked()
    }

    /// File bytes sent so far.
    pub fn file_sent(&self) -> u64 {
        self.ledger.file_sent()
    }
}

#[cfg(test)]
mod tests {
    //! A `Pair` in the manner of quinn's: the sending machine and the
    //! receiver's [`Reassembly`] joined by an emulated link (per-stripe
    //! delay and rate, acknowledgements back on the primary), driven in
    //! virtual time. Each test runs in microseconds.

    use super::*;
    use crate::files::reassembly::{Piece, Reassembly};
    use crate::files::window::{PathEstimate, Sizing};
    use std::collections::VecDeque;

    const CHUNK: u64 = 128 << 10;

    struct Stripe {
        delay: Duration,
        /// Bytes per second (serialisation).
        rate: f64,
        busy_until: Instant,
        in_transit: VecDeque<(Instant, u64, u64)>,
        closed: bool,
    }

    struct Pair {
        now: Instant,
        tx: SendMachine,
        rx: Reassembly,
        stripes: Vec<Stripe>,
        ack_delay: Duration,
        acks: VecDeque<(Instant, u64)>,
        /// The receiver writes (and acknowledges) nothing while set.
        receiver_stalled: bool,
        /// Most in flight ever seen, in bytes.
        peak: u64,
        written: u64,
    }

    impl Pair {
        fn new(size: u64, window: Window, stripes: &[(u64, f64)]) -> Pair {
            let now = Instant::now();
            let mut tx = SendMachine::new(size, window, Duration::from_secs(60), now);
            tx.on_turn(now);
            Pair {
                now,
                tx,
                rx: Reassembly::new(size, None),
                stripes: stripes
                    .iter()
                    .map(|&(ms, rate)| Stripe {
                        delay: Duration::from_millis(ms),
                        rate,
                        busy_until: now,
                        in_transit: VecDeque::new(),
                        closed: false,
                    })
                    .collect(),
                ack_delay: Duration::from_millis(stripes[0].0),
                acks: VecDeque::new(),
                receiver_stalled: false,
                peak: 0,
                written: 0,
            }
        }

        /// Sends what the machine allows now.
        fn send(&mut self) -> Result<(), SendError> {
            while self.tx.wants_data(CHUNK) {
                let len = self.tx.next_len(CHUNK);
                if len == 0 {
                    self.tx.on_end_sent();
                    break;
                }
                let views: Vec<StripeView> = self
                    .stripes
                    .iter()
                    .map(|s| StripeView {
                        closed: s.closed,
                        full: s.busy_until > self.now + Duration::from_millis(50),
                    })
                    .collect();
                let i = self.tx.pick_stripe(&views)?;
                let offset = self.tx.file_sent();
                let s = &mut self.stripes[i];
                let start = s.busy_until.max(self.now);
                s.busy_until = start + Duration::from_secs_f64(len as f64 / s.rate);
                s.in_transit
                    .push_back((s.busy_until + s.delay, offset, len));
                self.tx.on_sent(len, len, self.now);
                self.peak = self.peak.max(self.tx.window().in_flight());
                if self.tx.file_sent() == self.tx.size {
                    self.tx.on_end_sent();
                    // End travels on the primary: it may overtake data.
                    self.rx.on_end(self.tx.size, [0; 32]);
                }
            }
            Ok(())
        }

        /// The next event's time.
        fn next_event(&self) -> Option<Instant> {
            let data = self
                .stripes
                .iter()
                .filter_map(|s| s.in_transit.front().map(|e| e.0));
            let acks = self.acks.front().map(|a| a.0);
            data.chain(acks).min()
        }

        /// Runs until done, an error, or `limit` of virtual time.
        fn run(&mut self, limit: Duration) -> Result<Duration, SendError> {
            let t0 = self.now;
            self.send()?;
            while !self.tx.is_done() {
                let next = self
                    .next_event()
                    .unwrap_or(self.tx.poll_timeout())
                    .min(self.tx.poll_timeout());
                assert!(next - t0 <= limit, "no progress within {limit:?}");
                self.now = next.max(self.now);
                self.tx.handle_timeout(self.now)?;
                let mut ready = Vec::new();
                for s in &mut self.stripes {
                    while s.in_transit.front().is_some_and(|e| e.0 <= self.now) {
                        let (_, offset, len) = s.in_transit.pop_front().expect("front");
                        if s.closed {
                            continue;
                        }
                        let piece = Piece::Data(bytes::Bytes::from(vec![0u8; len as usize]));
                        self.rx
                            .on_piece(offset, piece, &mut ready)
                            .expect("in bounds, no duplicates");
                    }
                }
                if !ready.is_empty() {
                    self.written += ready.iter().map(Piece::len).sum::<u64>();
                    if !self.receiver_stalled {
                        self.acks
                            .push_back((self.now + self.ack_delay, self.rx.received()));
                    }
                }
                while self.acks.front().is_some_and(|a| a.0 <= self.now) {
                    let (_, n) = self.acks.pop_front().expect("front");
                    self.tx.on_ack(n, self.now)?;
                }
                self.send()?;
            }
            assert!(self.rx.is_complete(), "sender done but receiver not");
            Ok(self.now - t0)
        }
    }

    fn auto(cap: u64) -> Window {
        let sizing = Sizing::Auto {
            floor: 1 << 20,
            cap,
        };
        Window::with_estimate(sizing, PathEstimate::new(sizing))
    }

    #[test]
    fn one_stream_delivers_everything_within_the_window() {
        let mut p = Pair::new(64 << 20, Window::new(4 << 20), &[(10, 100e6)]);
        let took = p.run(Duration::from_secs(60)).expect("completes");
        assert_eq!(p.written, 64 << 20);
        assert!(p.peak <= 4 << 20, "peak {} over the window", p.peak);
        // 4 MiB per 20 ms round trip caps it near 200 MB/s; the link is
        // 100 MB/s: about 0.7 s, never faster than the link allows.
        assert!(
            took >= Duration::from_secs_f64((64 << 20) as f64 / 100e6),
            "{took:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn stripes_with_different_delays_reorder_and_still_land_in_order() {
        let mut p = Pair::new(
            32 << 20,
            Window::new(8 << 20),
            &[(5, 50e6), (40, 50e6), (5, 50e6)],
        );
        p.run(Duration::from_secs(60)).expect("completes");
        assert_eq!(p.written, 32 << 20);
    }

    #[test]
    fn a_self_sizing_window_fills_a_long_fat_path() {
        // 100 ms, 100 MB/s: bandwidth × delay is 10 MB.
        let mut p = Pair::new(256 << 20, auto(64 << 20), &[(50, 100e6)]);
        let took = p.run(Duration::from_secs(120)).expect("completes");
        let rate = (256 << 20) as f64 / took.as_secs_f64();
        assert!(rate > 50e6, "only {:.1} MB/s", rate / 1e6);
        assert!(
            p.tx.window().limit() >= 8 << 20,
            "window {}",
            p.tx.window().limit()
        );
    }

    #[test]
    fn a_stalled_receiver_is_silent_after_exactly_the_ack_timeout() {
        let mut p = Pair::new(64 << 20, Window::new(1 << 20), &[(10, 100e6)]);
        p.receiver_stalled = true;
        let t0 = p.now;
        let e = p.run(Duration::from_secs(120)).expect_err("silent");
        assert!(matches!(e, SendError::Silent { acked: 0, .. }), "{e}");
        assert_eq!(p.now - t0, Duration::from_secs(60));
        assert!(p.peak <= 1 << 20, "nothing beyond the window was sent");
    }

    #[test]
    fn the_senders_own_waiting_does_not_count_as_silence() {
        let now = Instant::now();
        let mut m = SendMachine::new(10 << 20, Window::new(1 << 20), Duration::from_secs(60), now);
        m.on_turn(now);
        m.on_sent(CHUNK, CHUNK, now);
        m.on_reader_wait(Duration::from_secs(50));
        assert_eq!(m.handle_timeout(now + Duration::from_secs(100)), Ok(()));
        assert!(m.handle_timeout(now + Duration::from_secs(111)).is_err());
    }

    #[test]
    fn a_lost_stripe_ends_the_transfer_and_is_never_picked() {
        let mut p = Pair::new(64 << 20, Window::new(4 << 20), &[(10, 100e6), (10, 100e6)]);
        p.send().expect("first window");
        p.stripes[1].closed = true;
        let e = p.run(Duration::from_secs(60)).expect_err("lost");
        assert_eq!(e, SendError::StripeLost);
    }

    #[test]
    fn a_full_stripe_is_skipped_round_robin_goes_on() {
        let now = Instant::now();
        let mut m = SendMachine::new(1, Window::new(1), Duration::from_secs(1), now);
        let ok = StripeView {
            closed: false,
            full: false,
        };
        let full = StripeView {
            closed: false,
            full: true,
        };
        let picks: Vec<usize> = (0..4)
            .map(|_| m.pick_stripe(&[ok, full, ok]).expect("pick"))
            .collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        // All full: the next in turn anyway (the driver's send waits).
        assert_eq!(m.pick_stripe(&[full, full]), Ok(0));
    }

    #[test]
    fn a_liar_claiming_unsent_bytes_is_caught_at_once() {
        let now = Instant::now();
        let mut m = SendMachine::new(10 << 20, Window::new(1 << 20), Duration::from_secs(60), now);
        m.on_turn(now);
        m.on_sent(CHUNK, CHUNK, now);
        assert!(matches!(
            m.on_ack(CHUNK + 1, now),
            Err(SendError::AckBeyondSent(_))
        ));
        assert_eq!(m.on_ack(CHUNK / 2, now), Ok(CHUNK / 2));
        assert_eq!(m.on_ack(CHUNK / 2, now), Ok(0), "a repeat adds nothing");
    }

    #[test]
    fn the_turn_goes_to_a_waiting_requester_only_after_a_stall() {
        let now = Instant::now();
        let mut m = SendMachine::new(10 << 20, Window::new(1 << 20), Duration::from_secs(60), now);
        m.on_turn(now);
        assert!(!m.should_yield_turn(now + TURN_STALL, true));
        assert!(
            !m.should_yield_turn(now + TURN_STALL * 2, false),
            "nobody waits"
        );
        assert!(m.should_yield_turn(now + TURN_STALL * 2, true));
        m.yield_turn();
        assert!(!m.wants_data(CHUNK), "no sending without the turn");
        m.on_turn(now + TURN_STALL * 3);
        assert!(m.wants_data(CHUNK));
    }

    /// Files sent one after another over one link, each by its own
    /// machine, as the pump does on a stream: the next takes the turn when
    /// the previous hands it over (`pipelined`) or when it is fully
    /// acknowledged (as before).
    struct Tree {
        now: Instant,
        size: u64,
        files: usize,
        pipelined: bool,
        delay: Duration,
        rate: f64,
        busy_until: Instant,
        /// (arrival, file, offset, len)
        in_transit: VecDeque<(Instant, usize, u64, u64)>,
        /// (arrival, file, cumulative)
        acks: VecDeque<(Instant, usize, u64)>,
        tx: Vec<SendMachine>,
        rx: Vec<Reassembly>,
        /// Wire bytes each handed-over transfer still has in flight.
        owed: Vec<u64>,
        started: Vec<Instant>,
        done: Vec<Option<Instant>>,
        current: usize,
        sizing: Sizing,
        /// Most bytes in flight over the window in force, ever (≤ 0).
        over_window: i64,
    }

    impl Tree {
        fn new(files: usize, size: u64, pipelined: bool) -> Tree {
            let now = Instant::now();
            let sizing = Sizing::Auto {
                floor: 1 << 20,
                cap: 64 << 20,
            };
            let mut t = Tree {
                now,
                size,
                files,
                pipelined,
                delay: Duration::from_millis(50),
                rate: 12.5e6,
                busy_until: now,
                in_transit: VecDeque::new(),
                acks: VecDeque::new(),
                tx: vec![],
                rx: vec![],
                owed: vec![],
                started: vec![],
                done: vec![],
                current: 0,
                sizing,
                over_window: i64::MIN,
            };
            t.start_next(PathEstimate::new(sizing));
            t
        }

        /// The next file takes the turn, with the path's estimate so far.
        fn start_next(&mut self, est: PathEstimate) {
            let window = Window::with_estimate(self.sizing, est);
            let mut m = SendMachine::new(self.size, window, Duration::from_secs(60), self.now);
            m.on_turn(self.now);
            self.tx.push(m);
            self.rx.push(Reassembly::new(self.size, None));
            self.owed.push(0);
            self.started.push(self.now);
            self.done.push(None);
        }

        fn send(&mut self) {
            while self.current < self.tx.len() {
                let i = self.current;
                let others: u64 = self.owed.iter().sum();
                let m = &mut self.tx[i];
                if self.pipelined && m.wants_data_beside(CHUNK, others)
                    || !self.pipelined && m.wants_data(CHUNK)
                {
                    let len = m.next_len(CHUNK);
                    let offset = m.file_sent();
                    let start = self.busy_until.max(self.now);
                    self.busy_until = start + Duration::from_secs_f64(len as f64 / self.rate);
                    self.in_transit
                        .push_back((self.busy_until + self.delay, i, offset, len));
                    m.on_sent(len, len, self.now);
                    let total = m.in_flight() + others;
                    self.over_window = self
                        .over_window
                        .max(total as i64 - m.window().limit().max(CHUNK) as i64);
                    if m.file_sent() == self.size {
                        m.on_end_sent();
                        self.rx[i].on_end(self.size, [0; 32]);
                    }
                    continue;
                }
                // The turn passes on: handed over, or fully acknowledged.
                let passes = if self.pipelined {
                    m.hand_over().map(|owed| self.owed[i] = owed).is_some()
                } else {
                    m.is_done()
                };
                if !passes {
                    break;
                }
                self.current += 1;
                if self.current < self.files {
                    let est = self.tx[i].window().estimate();
                    self.start_next(est);
                }
            }
        }

        fn run(&mut self) -> Duration {
            let t0 = self.now;
            self.send();
            while self.done.iter().any(Option::is_none) {
                let next = [
                    self.in_transit.front().map(|e| e.0),
                    self.acks.front().map(|a| a.0),
                ]
                .into_iter()
                .flatten()
                .min()
                .expect("something in flight while files are not done");
                self.now = next.max(self.now);
                while self.in_transit.front().is_some_and(|e| e.0 <= self.now) {
                    let (_, i, offset, len) = self.in_transit.pop_front().expect("front");
                    let mut ready = Vec::new();
                    let piece = Piece::Data(bytes::Bytes::from(vec![0u8; len as usize]));
                    self.rx[i]
                        .on_piece(offset, piece, &mut ready)
                        .expect("in bounds");
                    self.acks
                        .push_back((self.now + self.delay, i, self.rx[i].received()));
                }
                while self.acks.front().is_some_and(|a| a.0 <= self.now) {
                    let (_, i, n) = self.acks.pop_front().expect("front");
                    let m = &mut self.tx[i];
                    m.on_ack(n, self.now).expect("honest");
                    self.owed[i] = self.owed[i].min(m.in_flight());
                    if m.is_done() && self.done[i].is_none() {
                        assert!(self.rx[i].is_complete());
                        self.done[i] = Some(self.now);
                    }
                }
                self.send();
            }
            self.now - t0
        }
    }

    #[test]
    fn the_next_file_starts_before_the_previous_is_fully_acknowledged() {
        // Twelve 4 MiB files over 100 ms and 100 Mbit (a log tree).
        let mut piped = Tree::new(12, 4 << 20, true);
        let took = piped.run();
        for k in 1..piped.files {
            let prev_done = piped.done[k - 1].expect("done");
            assert!(
                piped.started[k] < prev_done,
                "file {k} started {:?} after file {} was acknowledged",
                piped.started[k] - piped.started[0],
                k - 1
            );
        }
        // One window's worth in flight on the stream, never more.
        assert!(piped.over_window <= 0, "{} bytes over", piped.over_window);
        // One at a time, each waited a round trip (and a ramp) per file.
        let mut serial = Tree::new(12, 4 << 20, false);
        let took_serial = serial.run();
        for k in 1..serial.files {
            assert!(serial.started[k] >= serial.done[k - 1].expect("done"));
        }
        assert!(
            took.as_secs_f64() < 0.85 * took_serial.as_secs_f64(),
            "{took:?} handed over, {took_serial:?} one at a time"
        );
        // And near the link's rate: 48 MiB at 12.5 MB/s is 4.0 s.
        assert!(took < Duration::from_secs_f64(5.0), "{took:?}");
    }

    /// One direction of a link in the tree below: chunks in transit
    /// (arrival, offset, length), serialised at `rate` bytes a second and
    /// delayed by `delay`.
    struct Wire {
        delay: Duration,
        rate: f64,
        busy_until: Instant,
        in_transit: VecDeque<(Instant, u64, u64)>,
    }

    /// One hop of a relay tree: the sender's machine, the link, and the far
    /// end's reassembly, whose acknowledgements come back after the link's
    /// delay.
    struct Hop {
        tx: SendMachine,
        wire: Wire,
        rx: Reassembly,
        acks: VecDeque<(Instant, u64)>,
        /// The far end takes data in but writes and acknowledges nothing.
        stalled: bool,
        /// When the transfer was fully acknowledged, or why it stopped.
        ended: Option<Result<Instant, SendError>>,
        /// Most wire bytes ever in flight.
        peak: u64,
        /// When the far end held the whole file.
        landed: Option<Instant>,
    }

    impl Hop {
        fn new(size: u64, (ms, rate): (u64, f64), now: Instant) -> Hop {
            let mut tx = SendMachine::new(size, Window::new(8 << 20), Duration::from_secs(10), now);
            tx.on_turn(now);
            Hop {
                tx,
                wire: Wire {
                    delay: Duration::from_millis(ms),
                    rate,
                    busy_until: now,
                    in_transit: VecDeque::new(),
                },
                rx: Reassembly::new(size, None),
                acks: VecDeque::new(),
                stalled: false,
                ended: None,
                peak: 0,
                landed: None,
            }
        }

        /// Sends what the window allows of the file's first `have` bytes
        /// (a relay sends only what has reached its spool).
        fn send(&mut self, now: Instant, have: u64) {
            while self.ended.is_none() && self.tx.wants_data(CHUNK) {
                let (offset, len) = (self.tx.file_sent(), self.tx.next_len(CHUNK));
                if len == 0 || offset + len > have {
                    break;
                }
                let w = &mut self.wire;
                w.busy_until = w.busy_until.max(now) + Duration::from_secs_f64(len as f64 / w.rate);
                w.in_transit
                    .push_back((w.busy_until + w.delay, offset, len));
                self.tx.on_sent(len, len, now);
                self.peak = self.peak.max(self.tx.in_flight());
                if offset + len == self.tx.size {
                    self.tx.on_end_sent();
                    self.rx.on_end(self.tx.size, [0; 32]);
                }
            }
        }

        /// The next time something happens on this hop.
        fn next_event(&self) -> Option<Instant> {
            if self.ended.is_some() {
                return None;
            }
            let data = self.wire.in_transit.front().map(|e| e.0);
            let ack = self.acks.front().map(|a| a.0);
            [data, ack, Some(self.tx.poll_timeout())]
                .into_iter()
                .flatten()
                .min()
        }

        /// Delivers the data and acknowledgements due at `now`, then
        /// checks the sender's deadline.
        fn step(&mut self, now: Instant) {
            if self.ended.is_some() {
                return;
            }
            let mut ready = Vec::new();
            while self.wire.in_transit.front().is_some_and(|e| e.0 <= now) {
                let (_, offset, len) = self.wire.in_transit.pop_front().expect("front");
                let piece = Piece::Data(bytes::Bytes::from(vec![0u8; len as usize]));
                self.rx
                    .on_piece(offset, piece, &mut ready)
                    .expect("in bounds, no duplicates");
            }
            if self.landed.is_none() && self.rx.received() == self.tx.size {
                self.landed = Some(now);
            }
            if !ready.is_empty() && !self.stalled {
                self.acks
                    .push_back((now + self.wire.delay, self.rx.received()));
            }
            while self.acks.front().is_some_and(|a| a.0 <= now) {
                let (_, n) = self.acks.pop_front().expect("front");
                if let Err(e) = self.tx.on_ack(n, now) {
                    self.ended = Some(Err(e));
                    return;
                }
            }
            if let Err(e) = self.tx.handle_timeout(now) {
                self.ended = Some(Err(e));
            } else if self.tx.is_done() {
                self.ended = Some(Ok(now));
            }
        }
    }

    /// Three kinds of endpoint in virtual time: a controller sending one
    /// file to a relay, which spools it and serves it on to its targets
    /// as it arrives (the tee: fetched once, each target at its own pace).
    struct Tee3 {
        now: Instant,
        start: Instant,
        up: Hop,
        down: Vec<Hop>,
    }

    impl Tee3 {
        fn new(size: u64, uplink: (u64, f64), targets: &[(u64, f64)]) -> Tee3 {
            let now = Instant::now();
            Tee3 {
                now,
                start: now,
                up: Hop::new(size, uplink, now),
                down: targets.iter().map(|&t| Hop::new(size, t, now)).collect(),
            }
        }

        /// Runs until every hop has ended, within `limit` of virtual time.
        fn run(&mut self, limit: Duration) {
            loop {
                let size = self.up.tx.size;
                self.up.send(self.now, size);
                // What the relay holds, in order, is what it can serve.
                let have = self.up.rx.received();
                for d in &mut self.down {
                    d.send(self.now, have);
                }
                let hops = std::iter::once(&self.up).chain(&self.down);
                let Some(next) = hops.filter_map(Hop::next_event).min() else {
                    break;
                };
                assert!(next - self.start <= limit, "no end within {limit:?}");
                self.now = next.max(self.now);
                self.up.step(self.now);
                for d in &mut self.down {
                    d.step(self.now);
                }
            }
        }

        /// How long after the start hop `h` was fully acknowledged.
        fn took(&self, h: &Hop) -> Duration {
            match &h.ended {
                Some(Ok(t)) => *t - self.start,
                other => panic!("not completed: {other:?}"),
            }
        }
    }

    #[test]
    fn a_relay_serves_a_fast_target_while_another_stalls() {
        // 32 MiB over a 20 ms, 50 MB/s uplink to the relay; two targets
        // 5 ms and 100 MB/s behind it, the second of which stops reading.
        let size = 32 << 20;
        let mut t = Tee3::new(size, (20, 50e6), &[(5, 100e6), (5, 100e6)]);
        t.down[1].stalled = true;
        t.run(Duration::from_secs(60));
        // The uplink runs at its own pace: the stalled target holds the
        // relay's spool back not at all.
        let up = t.took(&t.up);
        assert!(up >= Duration::from_secs_f64(size as f64 / 50e6), "{up:?}");
        assert!(up < Duration::from_secs(2), "uplink took {up:?}");
        // The fast target follows right behind the spool.
        assert!(t.down[0].rx.is_complete());
        let fast = t.took(&t.down[0]);
        let spooled = t.up.landed.expect("spooled") - t.start;
        assert!(
            fast > spooled,
            "served {fast:?} before it arrived ({spooled:?})"
        );
        assert!(
            fast < spooled + Duration::from_millis(200),
            "{fast:?} behind {spooled:?}"
        );
        // The stalled one got one window and no more, then was given up
        // after the ack timeout (its transfer ends, the others' do not).
        let stalled = &t.down[1];
        assert!(stalled.peak <= 8 << 20, "{} in flight", stalled.peak);
        assert!(
            matches!(stalled.ended, Some(Err(SendError::Silent { acked: 0, .. }))),
            "{:?}",
            stalled.ended
        );
        assert!(t.now - t.start >= Duration::from_secs(10), "gave up early");
    }

    #[test]
    fn a_target_waiting_on_a_slow_spool_is_not_taken_for_silent() {
        // A trickling uplink (100 ms, 1 MB/s: 16 MiB take 17 s, longer than
        // the 10 s ack timeout) and a fast target: the target waits on the
        // spool with nothing in flight, which is no silence of its own.
        let size = 16 << 20;
        let mut t = Tee3::new(size, (100, 1e6), &[(1, 1e9)]);
        t.run(Duration::from_secs(60));
        let fast = t.took(&t.down[0]);
        let spooled = t.up.landed.expect("spooled") - t.start;
        assert!(
            spooled > Duration::from_secs(10),
            "the spool took {spooled:?}"
        );
        assert!(
            fast > spooled,
            "served {fast:?} before it arrived ({spooled:?})"
        );
        assert!(
            fast <= spooled + Duration::from_millis(50),
            "{fast:?} vs {spooled:?}"
        );
    }
}
