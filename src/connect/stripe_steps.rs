//! How many stripes a push uses, chosen by what they deliver (issue 14,
//! item 2), sans-IO: time and the bytes the target has acknowledged are
//! passed in; the push's stripe task (`cli::push`) opens what it is told.
//!
//! The round trip alone is a poor guide: on a 100 ms path of the project's
//! delay line one SSH channel carries ~20 MiB/s and eight carry ~100, but
//! on a 100 ms / 100 Mbit link one channel already fills the link, and
//! the eight that the round trip calls for only cost connections, CPU and
//! window ramps (measured 0.3–1.3 s slower than one stream). So stripes
//! are added in steps and kept adding only while they pay:
//!
//! * **Base**: the push starts on the primary stream alone. Once the target
//!   has acknowledged [`StepRules::first_bytes`] (a bulk push, not a
//!   delta of a few blocks or a handful of small files) and the primary's
//!   rate over a full measuring interval reaches [`StepRules::first_rate`]
//!   — most of what its SSH channel window allows per round trip, so the
//!   channel, not the link, holds it back — the first step opens
//!   [`StepRules::first`] data stripes (at least two: the primary then
//!   carries no bulk, so one would only swap one channel for another).
//!   A primary that never gets there gets no stripes.
//!   Each step costs the new connections' TCP slow start (measured: a
//!   fresh stripe stalls the transfer's in-order acknowledgements for ~5
//!   round trips, 0.5–0.6 s at 100 ms), so transports the push started
//!   early (with the primary connection, for the round trip its set-up
//!   time suggested) are the first step, taken at once when the context
//!   is up ([`Steps::open_now`]) and judged against what one channel
//!   could carry.
//! * **Judging**: once a step's stripes have attached, the delivery rate
//!   over intervals that began after the attach is compared with the best
//!   rate seen before the step. Reaching [`StepRules::growth`] × that
//!   (15 %) is growth: the next step doubles the data stripes, up to
//!   [`StepRules::cap`]. No growth within [`StepRules::horizon`]: done —
//!   the stripes already attached stay (a stripe cannot be closed under a
//!   transfer without losing the chunks it carries), the transports not
//!   yet attached are ended.
//! * A stripe lost, or a step of which none attached: done.
//!
//! Rates are over [`StepRules::interval`] (at least two round trips, so
//! acknowledgements that come in batches do not make a rate), from the
//! cumulative wire bytes the target acknowledged
//! ([`crate::files::serve::FileService::delivered`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Growth that counts: the rate after a step at least this × the best before.
pub const GROWTH: f64 = 1.15;

/// Wire bytes the target acknowledges on the primary before the first
/// step: more than a delta of a few changed blocks or a few small files
/// carries, about what a fresh window delivers in its first two round trips.
pub const FIRST_STEP_BYTES: u64 = 3 << 20;

/// Data stripes of the first step.
pub const FIRST_STEP: usize = 2;

/// What one OpenSSH session channel carries at most: its window
/// ([`CHANNEL_WINDOW`]) per round trip.
pub const CHANNEL_WINDOW: u64 = 2 << 20;

/// The share of [`CHANNEL_WINDOW`] per round trip above which the primary
/// counts as bound by its channel (3/4: it delivers its window less the
/// round trip's noise and the acknowledgements' batching).
pub const CHANNEL_BOUND_SHARE: f64 = 0.75;

/// The rate (bytes/s) from which one channel on a path of round trip
/// `rtt` counts as full.
pub fn channel_bound(rtt: Duration) -> f64 {
    CHANNEL_BOUND_SHARE * CHANNEL_WINDOW as f64 / rtt.as_secs_f64().max(1e-3)
}

/// The rules for one push's stripe steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRules {
    /// Most data stripes (besides the primary).
    pub cap: usize,
    /// Data stripes of the first step.
    pub first: usize,
    /// Wire bytes acknowledged before the first step.
    pub first_bytes: u64,
    /// The rate (bytes/s) the primary alone must reach before the first
    /// step: most of what one SSH channel carries on this path
    /// ([`channel_bound`]). A primary that stays below it is held back by
    /// something other than its channel window — the link, the CPU, the
    /// files — which more channels do not help.
    pub first_rate: f64,
    /// The rate grows when it reaches this × the best before the step.
    pub growth: f64,
    /// Rates are measured over intervals this long.
    pub interval: Duration,
    /// How long after a step attached its growth may take to show (fresh
    /// TCP connections and the window open up over several round trips).
    pub horizon: Duration,
}

impl StepRules {
    /// The rules for a path of round trip `rtt` and at most `cap` data
    /// stripes: rates over two round trips (at least 100 ms), growth given
    /// eight round trips (at least 500 ms) to show.
    pub fn for_rtt(rtt: Duration, cap: usize) -> StepRules {
        StepRules {
            cap,
            first: FIRST_STEP,
            first_bytes: FIRST_STEP_BYTES,
            first_rate: channel_bound(rtt),
            growth: GROWTH,
            interval: (rtt * 2).max(Duration::from_millis(100)),
            horizon: (rtt * 8).max(Duration::from_millis(500)),
        }
    }

    /// How often the driver should report what was delivered.
    pub fn tick(&self) -> Duration {
        self.interval / 4
    }
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    /// Nothing yet: report deliveries again after [`StepRules::tick`].
    Wait,
    /// Open this many more data stripes, then report
    /// [`Steps::on_attached`].
    Open(usize),
    /// No more stripes: end any transports not attached.
    Done,
}

/// Why the steps ended (for the log and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// The cap was reached.
    Cap,
    /// The last step did not make the rate grow.
    Flat,
    /// A step's stripes did not attach, or a stripe was lost.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Base,
    Attaching,
    Judging { since: Instant },
    Done(StepEnd),
}

/// The stepping state of one push to one target.
#[derive(Debug, Clone)]
pub struct Steps {
    rules: StepRules,
    phase: Phase,
    /// Data stripes attached.
    attached: usize,
    /// (time, cumulative wire bytes acknowledged), oldest first.
    samples: VecDeque<(Instant, u64)>,
    /// When the current set of streams began carrying data (rates over
    /// intervals starting earlier are not theirs).
    set_since: Option<Instant>,
    /// Best rate (bytes/s) of the current set of streams so far.
    best: f64,
    /// Best rate of the set before the step being judged (measured
    /// until the step attached: a set of fresh connections is still
    /// opening up when the next step is asked for).
    before: f64,
    /// The least `before` of the step being attached ([`Steps::open_now`]).
    floor_before: f64,
}

impl Steps {
    /// Steps under `rules`, nothing attached.
    pub fn new(rules: StepRules) -> Steps {
        Steps {
            rules,
            phase: if rules.cap == 0 {
                Phase::Done(StepEnd::Cap)
            } else {
                Phase::Base
            },
            attached: 0,
            samples: VecDeque::new(),
            set_since: None,
            best: 0.0,
            before: 0.0,
            floor_before: 0.0,
        }
    }

    /// A round trip measured on the path (the transfers' windows see the
    /// path's own; a ping sent once data flows waits behind it): a shorter
    /// one than the rules were made for raises the primary's bar, as one
    /// channel carries more on a shorter path.
    pub fn on_min_rtt(&mut self, rtt: Duration) {
        self.rules.first_rate = self.rules.first_rate.max(channel_bound(rtt));
    }

    /// Data stripes attached so far.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Why the steps ended, once they have.
    pub fn ended(&self) -> Option<StepEnd> {
        match self.phase {
            Phase::Done(why) => Some(why),
            _ => None,
        }
    }

    /// The best rate (bytes/s) the current set of streams has delivered.
    pub fn best_rate(&self) -> f64 {
        self.best
    }

    /// The target has acknowledged `wire_bytes` in all (cumulative) at `now`.
    pub fn on_delivered(&mut self, now: Instant, wire_bytes: u64) {
        if let Some(&(_, last)) = self.samples.back()
            && wire_bytes < last
        {
            return;
        }
        if wire_bytes == 0 {
            // Nothing moved yet: only the latest such sample is kept, as
            // the start of the first interval.
            self.samples.clear();
        }
        if self.set_since.is_none() && wire_bytes > 0 {
            // The primary's rate counts from its first delivery.
            self.set_since = self.samples.back().map(|&(t, _)| t).or(Some(now));
        }
        self.samples.push_back((now, wire_bytes));
        // Keep what the longest interval needs, and one sample before it.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= self.rules.interval)
        {
            self.samples.pop_front();
        }
        if let Some(rate) = self.rate_since(now, self.set_since) {
            self.best = self.best.max(rate);
        }
    }

    /// The rate over the latest interval ending at `now`, if one that long,
    /// starting at or after `since`, is known.
    fn rate_since(&self, now: Instant, since: Option<Instant>) -> Option<f64> {
        let since = since?;
        let &(t1, b1) = self.samples.back()?;
        // The newest sample at least an interval before the last.
        let &(t0, b0) = self
            .samples
            .iter()
            .rev()
            .find(|&&(t, _)| t1.saturating_duration_since(t) >= self.rules.interval)?;
        if t0 < since || t1 > now {
            // Partly another set's, or a sample from the future.
            return None;
        }
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| (b1 - b0) as f64 / secs)
    }

    /// Takes the first step at once, before the primary has shown its
    /// rate: `more` data stripes whose transports are already connected
    /// (started with the primary connection, so attaching them costs a
    /// round trip and no CPU; their TCP connections then open up together
    /// with the primary's instead of after it). `channel` is what one
    /// channel carries at most on this path ([`CHANNEL_WINDOW`] per round
    /// trip): the step counts as growth only if the stripes deliver
    /// [`StepRules::growth`] × that — more than the primary alone could.
    pub fn open_now(&mut self, more: usize, channel: f64) -> StepAction {
        if self.phase != Phase::Base {
            return StepAction::Wait;
        }
        self.floor_before = channel;
        self.step(more.min(self.rules.cap))
    }

    /// The step asked for has finished attaching at `now`: `attached` data
    /// stripes in all are attached.
    pub fn on_attached(&mut self, now: Instant, attached: usize) {
        if self.phase != Phase::Attaching {
            self.attached = self.attached.max(attached);
            return;
        }
        let had = self.attached;
        self.attached = attached;
        if attached <= had {
            self.phase = Phase::Done(StepEnd::Failed);
            return;
        }
        self.phase = Phase::Judging { since: now };
        self.before = self.best.max(self.floor_before);
        self.floor_before = 0.0;
        self.set_since = Some(now);
        self.best = 0.0;
    }

    /// The data stripes now attached, as the router sees them: fewer than
    /// counted means one was lost — no more steps.
    pub fn on_stripes(&mut self, attached: usize) {
        if attached < self.attached && !matches!(self.phase, Phase::Done(_)) {
            self.phase = Phase::Done(StepEnd::Failed);
        }
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Instant) -> StepAction {
        match self.phase {
            Phase::Done(_) => StepAction::Done,
            Phase::Attaching => StepAction::Wait,
            Phase::Base => {
                let delivered = self.samples.back().map_or(0, |&(_, b)| b);
                if delivered >= self.rules.first_bytes
                    && self.best > 0.0
                    && self.best >= self.rules.first_rate
                {
                    self.step(self.rules.first.min(self.rules.cap))
                } else {
                    StepAction::Wait
                }
            }
            Phase::Judging { since } => {
                if self.best > 0.0 && self.best >= self.rules.growth * self.before {
                    if self.attached >= self.rules.cap {
                        self.phase = Phase::Done(StepEnd::Cap);
                        return StepAction::Done;
                    }
                    let next = (self.attached * 2).min(self.rules.cap);
                    return self.step(next - self.attached);
                }
                if now.saturating_duration_since(since) >= self.rules.horizon {
                    self.phase = Phase::Done(StepEnd::Flat);
                    return StepAction::Done;
                }
                StepAction::Wait
            }
        }
    }

    fn step(&mut self, more: usize) -> StepAction {
        if more == 0 {
            self.phase = Phase::Done(StepEnd::Cap);
            return StepAction::Done;
        }
        self.phase = Phase::Attaching;
        StepAction::Open(more)
    }
}

#[cfg(test)]
mod tests {
    //! A push in virtual time: the target's delivery rate is a function of
    //! the data streams in use (and of the time since the last change, for
    //! fresh connections opening up); stripes attach `attach_after` an
    //! open. Each test runs in microseconds.

    use super::*;

    const MIB: f64 = (1u64 << 20) as f64;

    struct Push {
        now: Instant,
        steps: Steps,
        /// Wire bytes acknowledged.
        delivered: f64,
        /// Data streams carrying bulk (1 = the primary alone).
        streams: usize,
        since_change: Instant,
        attach_at: Option<(Instant, usize)>,
        attach_after: Duration,
        /// Of each step, how many attach (`None`: all).
        attach_only: Option<usize>,
        opened: Vec<usize>,
    }

    impl Push {
        fn new(rtt_ms: u64, cap: usize) -> Push {
            let now = Instant::now();
            let rules = StepRules::for_rtt(Duration::from_millis(rtt_ms), cap);
            Push {
                now,
                steps: Steps::new(rules),
                delivered: 0.0,
                streams: 1,
                since_change: now,
                attach_at: None,
                attach_after: Duration::from_millis(rtt_ms),
                attach_only: None,
                opened: Vec::new(),
            }
        }

        /// Runs for `secs` of virtual time with `rate(streams, secs since
        /// the last change)` in bytes/s. Returns the data stripes in use.
        fn run(&mut self, secs: f64, rate: impl Fn(usize, f64) -> f64) -> usize {
            let end = self.now + Duration::from_secs_f64(secs);
            let tick = self.steps.rules.tick();
            while self.now < end {
                self.now += tick;
                let age = (self.now - self.since_change).as_secs_f64();
                self.delivered += rate(self.streams, age) * tick.as_secs_f64();
                if let Some((at, n)) = self.attach_at
                    && self.now >= at
                {
                    self.attach_at = None;
                    let before = self.steps.attached();
                    let total = before + self.attach_only.unwrap_or(n).min(n);
                    if total > before {
                        self.streams = total;
                        self.since_change = self.now;
                    }
                    self.steps.on_attached(self.now, total);
                }
                self.steps.on_delivered(self.now, self.delivered as u64);
                match self.steps.poll(self.now) {
                    StepAction::Open(n) => {
                        self.opened.push(n);
                        self.attach_at = Some((self.now + self.attach_after, n));
                    }
                    StepAction::Wait | StepAction::Done => {}
                }
            }
            self.steps.attached()
        }
    }

    /// The project's delay line at 100 ms: each SSH channel carries 2 MiB
    /// per round trip, the link ~110 MiB/s; fresh connections take a few
    /// round trips to open up.
    fn channel_full(streams: usize, age: f64) -> f64 {
        let ramp = (age / 0.4).min(1.0);
        let per = 20.0 * MIB;
        let old = if streams > 1 { streams / 2 } else { 1 };
        let now = old as f64 * per + (streams - old) as f64 * per * ramp;
        now.min(110.0 * MIB)
    }

    #[test]
    fn stripes_are_added_while_the_rate_grows_up_to_the_cap() {
        let mut p = Push::new(100, 8);
        let used = p.run(8.0, channel_full);
        assert_eq!(used, 8, "steps: {:?}", p.opened);
        assert_eq!(p.opened, [2, 2, 4], "doubling steps");
        assert_eq!(p.steps.ended(), Some(StepEnd::Cap));
    }

    #[test]
    fn the_steps_reach_the_cap_within_a_few_seconds() {
        // Not a timing test of the code: the virtual time the rules need.
        let mut p = Push::new(100, 8);
        p.run(3.0, channel_full);
        assert_eq!(
            p.steps.attached(),
            8,
            "all eight within 3 s of the first byte: {:?}",
            p.opened
        );
    }

    #[test]
    fn a_link_one_channel_fills_gets_no_stripes() {
        // 100 Mbit at 100 ms: one channel (20 MiB/s) already fills it.
        let mut p = Push::new(100, 8);
        let used = p.run(10.0, |s, age| channel_full(s, age).min(11.9 * MIB));
        assert_eq!(used, 0, "steps: {:?}", p.opened);
        assert_eq!(p.steps.poll(p.now), StepAction::Wait);
    }

    #[test]
    fn a_step_that_does_not_pay_is_the_last() {
        // The link takes a little more than one channel: the primary
        // looks channel-bound, two stripes add nothing that counts.
        let mut p = Push::new(100, 8);
        let used = p.run(10.0, |s, age| channel_full(s, age).min(17.0 * MIB));
        assert_eq!(used, 2, "steps: {:?}", p.opened);
        assert_eq!(p.steps.ended(), Some(StepEnd::Flat));
        assert_eq!(p.steps.poll(p.now), StepAction::Done);
    }

    #[test]
    fn a_first_step_as_large_as_the_ready_transports_goes_to_the_cap_at_once() {
        let mut p = Push::new(100, 8);
        p.steps.rules.first = 8;
        let used = p.run(3.0, channel_full);
        assert_eq!(used, 8);
        assert_eq!(p.opened, [8], "one step");
        assert_eq!(p.steps.ended(), Some(StepEnd::Cap));
    }

    #[test]
    fn a_rate_that_stops_growing_stops_the_steps() {
        // The link takes 1.5 channels: 2 stripes help, 4 do not.
        let mut p = Push::new(100, 8);
        let used = p.run(10.0, |s, age| channel_full(s, age).min(30.0 * MIB));
        assert_eq!(used, 4, "steps: {:?}", p.opened);
        assert_eq!(p.steps.ended(), Some(StepEnd::Flat));
    }

    #[test]
    fn the_cap_is_never_passed() {
        let mut p = Push::new(20, 2);
        let used = p.run(10.0, |s, _| s as f64 * 80.0 * MIB);
        assert_eq!(used, 2);
        assert_eq!(p.opened, [2]);
        assert_eq!(p.steps.ended(), Some(StepEnd::Cap));
        // An odd cap: the last step fills it, no more.
        let mut p = Push::new(100, 5);
        let used = p.run(10.0, |s, _| s as f64 * 20.0 * MIB);
        assert_eq!(used, 5);
        assert_eq!(p.opened, [2, 2, 1]);
    }

    #[test]
    fn a_push_that_moves_little_opens_no_stripes() {
        // A delta of a 1 GiB file: about 1 MiB travels, then nothing.
        let mut p = Push::new(20, 2);
        let used = p.run(5.0, |_, age| if age < 0.1 { 10.0 * MIB } else { 0.0 });
        assert_eq!(used, 0);
        assert!(p.opened.is_empty());
        assert_eq!(p.steps.poll(p.now), StepAction::Wait);
    }

    #[test]
    fn a_step_of_which_nothing_attaches_ends_the_steps() {
        let mut p = Push::new(100, 8);
        p.attach_only = Some(0);
        let used = p.run(5.0, channel_full);
        assert_eq!(used, 0);
        assert_eq!(p.opened, [2]);
        assert_eq!(p.steps.ended(), Some(StepEnd::Failed));
    }

    #[test]
    fn a_lost_stripe_ends_the_steps() {
        let mut p = Push::new(100, 8);
        // The first step attached, the second being judged.
        p.run(0.45, channel_full);
        assert_eq!(p.steps.attached(), 2, "{:?}", p.opened);
        assert_eq!(p.steps.ended(), None);
        p.steps.on_stripes(p.steps.attached() - 1);
        assert_eq!(p.steps.poll(p.now), StepAction::Done);
        assert_eq!(p.steps.ended(), Some(StepEnd::Failed));
    }

    #[test]
    fn ready_transports_step_at_once_and_are_judged_against_one_channel() {
        // The project line at 100 ms: eight ready transports, eight is
        // the cap; they carry far more than one channel could.
        let mut p = Push::new(100, 8);
        let now = p.now;
        assert_eq!(p.steps.open_now(8, 20.0 * MIB), StepAction::Open(8));
        p.opened.push(8);
        p.attach_at = Some((now + p.attach_after, 8));
        assert_eq!(p.run(3.0, channel_full), 8);
        assert_eq!(p.steps.ended(), Some(StepEnd::Cap));
        // Two ready of a cap of four on a link one channel fills (100
        // Mbit): they deliver no more than one channel would, so no more.
        let mut p = Push::new(100, 4);
        let now = p.now;
        assert_eq!(p.steps.open_now(2, 20.0 * MIB), StepAction::Open(2));
        p.opened.push(2);
        p.attach_at = Some((now + p.attach_after, 2));
        let used = p.run(5.0, |s, age| channel_full(s, age).min(11.9 * MIB));
        assert_eq!(used, 2);
        assert_eq!(p.steps.ended(), Some(StepEnd::Flat));
        // ... where the link takes more: two ready, then two fresh.
        let mut p = Push::new(100, 4);
        let now = p.now;
        p.steps.open_now(2, 20.0 * MIB);
        p.opened.push(2);
        p.attach_at = Some((now + p.attach_after, 2));
        assert_eq!(p.run(5.0, channel_full), 4);
        assert_eq!(p.opened, [2, 2]);
    }

    #[test]
    fn a_round_trip_inflated_by_the_data_does_not_lower_the_bar() {
        // Stripes opened once a walk passed 32 MiB: the pings waited behind
        // the queued data (234 ms on a 100 ms / 100 Mbit link), so one
        // channel seemed to carry only 6.7 MiB/s and the link's 11.9
        // looked channel-bound. The windows' round trip puts it right.
        let mut p = Push::new(234, 8);
        p.steps.on_min_rtt(Duration::from_millis(101));
        let used = p.run(10.0, |_, _| 11.9 * MIB);
        assert_eq!(used, 0, "steps: {:?}", p.opened);
        // Without it, the step was taken.
        let mut p = Push::new(234, 8);
        assert_eq!(p.run(10.0, |_, _| 11.9 * MIB), 2);
    }

    #[test]
    fn a_cap_of_zero_is_done_at_once() {
        let now = Instant::now();
        let mut s = Steps::new(StepRules::for_rtt(Duration::from_millis(100), 0));
        assert_eq!(s.poll(now), StepAction::Done);
    }
}
