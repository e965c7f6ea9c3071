//! Whose large transfer runs next on a stream: one at a time, the turn
//! going round the requesters.
//!
//! Large transfers on one stream run one at a time so that a contended link
//! completes files instead of interleaving many partial ones. The order was
//! plain FIFO, so a requester that queued many fetches (a hostile target
//! behind a shared `--via` hop queued 3,000) made every other requester on
//! that stream wait behind all of them. Now each requester has its own FIFO
//! queue and the turn passes to the next requester that has something
//! waiting, preferring one other than the requester that just had it: a
//! requester waits for at most one transfer of each other requester.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::wire::ContextId;

/// One stream's turn.
#[derive(Default)]
pub struct Turns {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The requester whose transfer has the turn, if any.
    running: Option<ContextId>,
    busy: bool,
    closed: bool,
    /// Requesters with transfers waiting, in the order their turns come.
    order: VecDeque<ContextId>,
    waiting: HashMap<ContextId, VecDeque<oneshot::Sender<Turn>>>,
}

/// Holding the turn; dropping it passes the turn on.
pub struct Turn {
    turns: Option<Arc<Turns>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(t) = self.turns.take() {
            t.pass();
        }
    }
}

/// The turn cannot be had any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the FileService is shutting down")]
pub struct Closed;

impl Turns {
    /// A free turn.
    pub fn new() -> Arc<Turns> {
        Arc::new(Turns::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few queue operations.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `requester`'s turn. Cancel-safe: a turn handed to a waiter
    /// that has gone away passes straight on.
    pub async fn take(self: &Arc<Turns>, requester: ContextId) -> Result<Turn, Closed> {
        self.wait(requester, false).await
    }

    /// Like [`Turns::take`], but ahead of `requester`'s other waiting
    /// transfers: for a transfer that gave its turn up part-way, so that it
    /// (and not a newer transfer of the same requester, which would put a
    /// second window in flight to the same receiver) runs at the
    /// requester's next turn.
    pub async fn take_again(self: &Arc<Turns>, requester: ContextId) -> Result<Turn, Closed> {
        self.wait(requester, true).await
    }

    /// True if a requester other than `requester` has a transfer waiting.
    pub fn others_waiting(&self, requester: ContextId) -> bool {
        self.lock().order.iter().any(|r| *r != requester)
    }

    async fn wait(self: &Arc<Turns>, requester: ContextId, front: bool) -> Result<Turn, Closed> {
        let rx = {
            let mut st = self.lock();
            if st.closed {
                return Err(Closed);
            }
            if !st.busy {
                st.busy = true;
                st.running = Some(requester);
                return Ok(Turn {
                    turns: Some(self.clone()),
                });
            }
            let (tx, rx) = oneshot::channel();
            let queue = st.waiting.entry(requester).or_default();
            let first = queue.is_empty();
            if front {
                queue.push_front(tx);
            } else {
                queue.push_back(tx);
            }
            if first {
                st.order.push_back(requester);
            }
            rx
        };
        rx.await.map_err(|_| Closed)
    }

    /// Transfers waiting (not running) on this stream.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().map(VecDeque::len).sum()
    }

    /// Refuses every waiting and later request.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.order.clear();
        st.waiting.clear();
    }

    fn pass(self: &Arc<Turns>) {
        loop {
            let next = {
                let mut st = self.lock();
                let last = st.running.take();
                let pick = st
                    .order
                    .iter()
                    .position(|r| Some(*r) != last)
                    .or(if st.order.is_empty() { None } else { Some(0) });
                let Some(at) = pick else {
                    st.busy = false;
                    return;
                };
                let Some(requester) = st.order.remove(at) else {
                    st.busy = false;
                    return;
                };
                let tx = st.waiting.get_mut(&requester).and_then(VecDeque::pop_front);
                match st.waiting.get(&requester) {
                    Some(q) if !q.is_empty() => st.order.push_back(requester),
                    _ => {
                        st.waiting.remove(&requester);
                    }
                }
                st.running = Some(requester);
                tx
            };
            let Some(tx) = next else { continue };
            match tx.send(Turn {
                turns: Some(self.clone()),
            }) {
                Ok(()) => return,
                Err(mut turn) => {
                    // The waiter gave up: try the next one here rather than
                    // through the turn's Drop (no recursion).
                    turn.turns = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requesters 1 (five transfers queued first) and 2 (one transfer)
    /// alternate instead of 2 waiting behind all of 1's.
    #[tokio::test]
    async fn the_turn_goes_round_the_requesters() {
        let turns = Turns::new();
        let first = turns.take(1).await.expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, who) in [1, 1, 1, 1, 2].into_iter().enumerate() {
            let (t, o) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let turn = t.take(who).await.expect("turn");
                o.lock().expect("lock").push((who, i));
                tokio::task::yield_now().await;
                drop(turn);
            }));
            // Queue them in this order.
            while turns.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        let got: Vec<ContextId> = order.lock().expect("lock").iter().map(|p| p.0).collect();
        assert_eq!(got, vec![2, 1, 1, 1, 1]);
    }

    /// A transfer that gives its turn up comes back before its
    /// requester's newer transfers, after the other requester's.
    #[tokio::test]
    async fn a_transfer_that_gave_its_turn_up_comes_back_first() {
        let turns = Turns::new();
        let stalled = turns.take(1).await.expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, who) in [1, 2].into_iter().enumerate() {
            let (t, o) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let turn = t.take(who).await.expect("turn");
                o.lock().expect("lock").push((who, "new"));
                drop(turn);
            }));
            while turns.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(turns.others_waiting(1));
        drop(stalled);
        let again = turns.take_again(1).await.expect("again");
        order.lock().expect("lock").push((1, "again"));
        drop(again);
        for t in tasks {
            t.await.expect("task");
        }
        let got = order.lock().expect("lock").clone();
        assert_eq!(got, vec![(2, "new"), (1, "again"), (1, "new")]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_the_turn() {
        let turns = Turns::new();
        let first = turns.take(1).await.expect("free");
        let t = turns.clone();
        let gone = tokio::spawn(async move { t.take(2).await.map(|_| ()) });
        while turns.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(first);
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), turns.take(3)).await;
        assert!(matches!(again, Ok(Ok(_))), "the turn was lost");
    }
}
