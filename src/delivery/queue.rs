//! One subscriber's queue of batch handles: bounded by a [`Budget`] in
//! events and bytes, coalescing when the subscriber falls behind.
//!
//! The flusher's whole cost per delivery is one [`Queue::push_quiet`]: a
//! lock, a `VecDeque` push into pre-allocated space and, once per pass, a
//! wake-up of the consumer. The consumer side (a delivery thread, a
//! blocking receiver or a stream) pops. The lock is taken once per batch,
//! never per event.
//!
//! Behind (at least `coalesce_after` batches waiting), a new window is
//! merged into the batch of its prefix already queued (`merge`), found
//! through a per-prefix index, instead of taking a slot; over budget, the
//! lag policy waits (`Block`) and then drops the oldest batch, preferring
//! batches that hold no `latest` survivors or aggregates. A dropped batch
//! in the middle of the queue leaves a tombstone (its slot emptied), so
//! the absolute positions the index holds stay valid.
//!
//! Flush accounting counts windows: `enqueued` and `done` only grow. A
//! window is *done* when the callback given the batch carrying it returned,
//! a receiver handed that batch out, or it was dropped by the lag policy or
//! discarded on close; so `Engine::flush` captures [`Queue::target`]
//! (= `enqueued`) after sealing and waits for `done >= target`, merged
//! windows included.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::batch::{Batch, Sealed};
use super::merge::Spares;
use super::stats::SubscriberStats;
use crate::sync::{lock, Arc, Condvar, Mutex, MutexGuard};

/// What a subscriber's queue does when the flusher has a batch for it and
/// the subscriber is behind.
///
/// Either way, a subscriber that is behind first gets *merged* batches: once
/// [`SubscribeOptions::coalesce_after`](super::SubscribeOptions::coalesce_after)
/// batches wait in its queue, a newly sealed window is merged into the
/// batch of its prefix already waiting there (by the prefix's policy: see
/// [`Batch::merged`](super::Batch::merged)), so the slower a subscriber is,
/// the fewer and larger its batches become, and nothing is lost. The lag
/// policy decides what happens only when the queue's [`Budget`] (events and
/// bytes) is exhausted even so.
///
/// ```
/// use ringfold::LagPolicy;
/// use std::time::Duration;
/// assert_eq!(LagPolicy::default(), LagPolicy::DropOldest);
/// let sink = LagPolicy::Block { timeout: Duration::from_millis(250) };
/// assert_ne!(sink, LagPolicy::DropOldest);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagPolicy {
    /// Merge, then, over budget, drop the oldest queued batch, count it,
    /// and report it in band ([`Batch::lagged`](super::Batch::lagged)) in
    /// the next batch this subscriber receives. Batches holding `latest`
    /// survivors or aggregates (small: one value per key) are dropped only
    /// when nothing else is left, so a lagging subscriber still ends on
    /// the final values. The default: a slow subscriber costs only itself.
    #[default]
    DropOldest,
    /// Back-pressure: over budget, the flusher waits up to `timeout` for
    /// the subscriber to make room (and, through full rings, so do
    /// producers), then drops as `DropOldest` does. Opt-in, for
    /// must-deliver sinks.
    Block {
        /// Longest wait for room per batch. Any value is accepted; one the
        /// clock cannot add (e.g. `Duration::MAX`) waits until room frees
        /// up or the subscription closes.
        timeout: Duration,
    },
}

/// How much a subscriber's queue may hold before its [`LagPolicy`] acts: a
/// number of events (an aggregate counts as one) and a number of bytes
/// (each held window's buffers and header, plus a merged batch's own
/// index). Shared windows count fully for every subscriber holding them,
/// so the bound is on what each subscriber can keep alive.
///
/// The default, [`Budget::DEFAULT_EVENTS`] events and
/// [`Budget::DEFAULT_BYTES`] bytes, holds one batch per prefix for the
/// default `max_names` (4096) prefixes many times over.
///
/// ```
/// use ringfold::{Budget, SubscribeOptions};
/// let b = Budget::new(100_000, 16 << 20);
/// assert_eq!((b.events(), b.bytes()), (100_000, 16 << 20));
/// assert_eq!(Budget::default().events(), Budget::DEFAULT_EVENTS);
/// let opts = SubscribeOptions::new("ui").budget(b);
/// assert_eq!(opts.budget_limits(), b);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    events: u64,
    bytes: u64,
}

impl Budget {
    /// Default event limit: 2^20 (1,048,576).
    pub const DEFAULT_EVENTS: u64 = 1 << 20;
    /// Default byte limit: 64 MiB.
    pub const DEFAULT_BYTES: u64 = 64 << 20;

    /// A budget of `events` events and `bytes` bytes; zero in either is
    /// refused at subscribe time (`Error::InvalidConfig`).
    pub const fn new(events: u64, bytes: u64) -> Self {
        Budget { events, bytes }
    }

    /// The event limit.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The byte limit.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(Self::DEFAULT_EVENTS, Self::DEFAULT_BYTES)
    }
}

/// What happens to a subscription's queued batches when it is closed
/// (its handle dropped, or the engine shut down).
///
/// ```
/// use ringfold::OnUnsubscribe;
/// assert_eq!(OnUnsubscribe::default(), OnUnsubscribe::Deliver);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnsubscribe {
    /// The consumer still gets every batch queued before the close.
    #[default]
    Deliver,
    /// Queued batches are dropped and counted as discarded.
    Discard,
}

/// What closing does is below; what a push did is this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued as a batch of its own.
    Queued,
    /// Merged into the queued batch of its prefix (the subscriber is
    /// behind).
    Merged,
    /// The subscription is closed: not queued, not counted as sealed for it.
    Closed,
}

/// How a popped batch is accounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hand {
    /// A receiver hands it to its caller: done at once.
    Out,
    /// A delivery thread calls the subscriber: done at [`Queue::finish`].
    Callback,
}

/// Why a pop returned no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopError {
    /// Nothing queued (try) or nothing within the deadline.
    Empty,
    /// Closed and drained: nothing will ever come.
    Closed,
}

/// Windows per subscriber the flusher's batch pool is provisioned for (see
/// `BatchPool::provision`): the depth of an ordinary backlog. A deeper one
/// (a subscriber descheduled for long) merges and may allocate windows.
const PROVISION_WINDOWS: usize = 1024;

/// One queued batch and what it counts against the budget.
struct Slot<T> {
    /// `None`: dropped for lag in the middle of the queue (a tombstone,
    /// removed once it reaches the front).
    batch: Option<Batch<T>>,
    /// Budget units (events plus aggregates) and bytes.
    held_events: u64,
    bytes: u64,
}

struct State<T> {
    items: VecDeque<Slot<T>>,
    /// Absolute position of `items[0]` (slots ever removed from the front).
    front: u64,
    /// Slots holding a batch (not tombstones).
    live: usize,
    /// Per prefix id (dense, from the interner), one more than the
    /// absolute position of its newest queued batch; 0: none queued. A
    /// vector rather than a hash map: the lookup and the update are on
    /// every push and pop (a hash map cost the flusher about 6
    /// instructions per event at ~20-event windows, by callgrind); it
    /// grows, once, to the highest prefix id this subscriber received.
    newest: Vec<u64>,
    /// Budget use: events plus aggregates, and bytes, of the live slots.
    held_events: u64,
    held_bytes: u64,
    /// Windows and events (`Batch::len`) in the live slots.
    queued_windows: u64,
    queued_events: u64,
    closed: bool,
    /// Shutdown has begun: `LagPolicy::Block` no longer waits (see
    /// `Registry::release_blocked`).
    released: bool,
    /// Windows lost to the lag policy since the last batch handed out.
    lagged: u64,
    /// Windows queued (merged or not), and windows done.
    enqueued: u64,
    done: u64,
    sealed_events: u64,
    in_hand_windows: u64,
    in_hand_events: u64,
    deliveries: u64,
    delivered_batches: u64,
    delivered_events: u64,
    merged_windows: u64,
    merge_folded_events: u64,
    lag_batches: u64,
    lag_events: u64,
    discarded_batches: u64,
    discarded_events: u64,
    panics: u64,
    /// The async consumer's waker (one consumer per queue).
    waker: Option<Waker>,
    /// Async flush waiters.
    done_wakers: Vec<Waker>,
    /// Threads waiting on each condvar (indexed by `Sleeper`). A notify is
    /// a futex syscall even with nobody waiting, so every notify on the
    /// delivery path (one or more per batch) checks this count first,
    /// under the lock the waiter holds when it counts itself in.
    sleepers: [u32; 3],
    /// Batches were queued since the consumer was last woken (see
    /// `push_quiet` and `wake_consumer`).
    unwoken: bool,
}

impl<T> State<T> {
    /// Would holding `events` and `bytes` more exceed `budget`?
    fn over(&self, budget: Budget, events: u64, bytes: u64) -> bool {
        self.held_events.saturating_add(events) > budget.events
            || self.held_bytes.saturating_add(bytes) > budget.bytes
    }

    /// Takes the batch out of the slot at index `i` (leaving a tombstone),
    /// updating every count but the caller's accounting of what happens to
    /// it; then drops tombstones from the front.
    fn vacate(&mut self, i: usize) -> Option<Batch<T>> {
        let slot = self.items.get_mut(i)?;
        let batch = slot.batch.take()?;
        let (held_events, bytes) = (slot.held_events, slot.bytes);
        self.account_removed(&batch, self.front + i as u64, held_events, bytes);
        while self.items.front().is_some_and(|s| s.batch.is_none()) {
            self.items.pop_front();
            self.front += 1;
        }
        Some(batch)
    }

    /// Takes the oldest batch: `vacate` of the first live slot, without
    /// searching for it (tombstones never stay at the front, see `vacate`),
    /// the consumer's path on every pop.
    fn take_front(&mut self) -> Option<Batch<T>> {
        loop {
            let slot = self.items.pop_front()?;
            let abs = self.front;
            self.front += 1;
            if let Some(batch) = slot.batch {
                self.account_removed(&batch, abs, slot.held_events, slot.bytes);
                return Some(batch);
            }
        }
    }

    /// Updates the counts for `batch`, just taken out of the slot at
    /// absolute position `abs`, which held `held_events` and `bytes`.
    fn account_removed(&mut self, batch: &Batch<T>, abs: u64, held_events: u64, bytes: u64) {
        self.held_events -= held_events;
        self.held_bytes -= bytes;
        self.live -= 1;
        self.queued_windows -= batch.merged();
        self.queued_events -= batch.len() as u64;
        if let Some(slot) = self.newest.get_mut(batch.prefix_id() as usize) {
            if *slot == abs + 1 {
                *slot = 0;
            }
        }
    }

    /// Merges `sealed` (`add` = its events and bytes) into the batch in
    /// slot `i`, updating the counts. False, and nothing done, if that
    /// slot holds no batch, or if the merged batch could exceed `budget`
    /// on its own: one batch never holds more than the whole budget, so
    /// dropping older batches can always bring the queue back within it.
    fn merge_into(
        &mut self,
        i: usize,
        sealed: &Arc<Sealed<T>>,
        budget: Budget,
        add: (u64, u64),
        spares: &Arc<Spares<T>>,
    ) -> bool {
        let Some(slot) = self.items.get_mut(i) else {
            return false;
        };
        if slot.held_events.saturating_add(add.0) > budget.events
            || slot.bytes.saturating_add(add.1) > budget.bytes
        {
            return false;
        }
        let Some(batch) = slot.batch.as_mut() else {
            return false;
        };
        let len_before = batch.len() as u64;
        let superseded = batch.absorb(sealed, spares);
        let len_after = batch.len() as u64;
        let (events, bytes) = batch.footprint();
        let old = (slot.held_events, slot.bytes);
        (slot.held_events, slot.bytes) = (events, bytes);
        self.held_events = self.held_events - old.0 + events;
        self.held_bytes = self.held_bytes - old.1 + bytes;
        self.queued_windows += 1;
        self.queued_events = self.queued_events - len_before + len_after;
        self.merged_windows += 1;
        self.merge_folded_events += superseded;
        true
    }

    /// The first live slot's index.
    fn first_live(&self) -> Option<usize> {
        self.items.iter().position(|s| s.batch.is_some())
    }
}

/// Which of a queue's condvars a thread waits on (index into `sleepers`).
#[derive(Clone, Copy)]
enum Sleeper {
    Ready = 0,
    Space = 1,
    Progress = 2,
}

/// A budgeted, coalescing queue of batch handles for one subscriber.
pub(crate) struct Queue<T> {
    name: Box<str>,
    policy: LagPolicy,
    budget: Budget,
    coalesce_after: usize,
    on_unsubscribe: OnUnsubscribe,
    /// Cleared merges for the next batch that needs one.
    spares: Arc<Spares<T>>,
    state: Mutex<State<T>>,
    /// The consumer waits here for a batch or the close.
    ready: Condvar,
    /// The flusher waits here for room (`LagPolicy::Block`).
    space: Condvar,
    /// Flush waiters wait here for `done` to advance.
    progress: Condvar,
}

/// Drops a batch handle, catching a panicking payload `Drop` (possible if
/// this is the last handle); returns whether it panicked.
fn drop_caught<T>(batch: Batch<T>) -> bool {
    crate::event::drop_caught(batch)
}

impl<T> Queue<T> {
    /// A queue for the subscriber `name`. A zero budget or `coalesce_after`
    /// is raised to 1 (the registry rejects them first with a typed error).
    pub(crate) fn new(
        name: &str,
        policy: LagPolicy,
        budget: Budget,
        coalesce_after: usize,
        on_unsubscribe: OnUnsubscribe,
    ) -> Self {
        let coalesce_after = coalesce_after.max(1);
        // Pre-allocated: an ordinary backlog never grows the queue (a
        // burst of more prefixes than this may, once).
        let slots = coalesce_after.min(4096) + 1;
        Queue {
            name: name.into(),
            policy,
            budget: Budget::new(budget.events.max(1), budget.bytes.max(1)),
            coalesce_after,
            on_unsubscribe,
            spares: Arc::new(Spares::new()),
            state: Mutex::new(State {
                items: VecDeque::with_capacity(slots),
                front: 0,
                live: 0,
                newest: Vec::new(),
                held_events: 0,
                held_bytes: 0,
                queued_windows: 0,
                queued_events: 0,
                closed: false,
                released: false,
                lagged: 0,
                enqueued: 0,
                done: 0,
                sealed_events: 0,
                in_hand_windows: 0,
                in_hand_events: 0,
                deliveries: 0,
                delivered_batches: 0,
                delivered_events: 0,
                merged_windows: 0,
                merge_folded_events: 0,
                lag_batches: 0,
                lag_events: 0,
                discarded_batches: 0,
                discarded_events: 0,
                panics: 0,
                waker: None,
                done_wakers: Vec::new(),
                sleepers: [0; 3],
                unwoken: false,
            }),
            ready: Condvar::new(),
            space: Condvar::new(),
            progress: Condvar::new(),
        }
    }

    /// How many windows this subscriber's backlog is provisioned for in the
    /// flusher's batch pool.
    pub(crate) fn provision_hint(&self) -> usize {
        PROVISION_WINDOWS.max(self.coalesce_after)
    }

    /// The subscriber's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What closing does with queued batches.
    pub(crate) fn on_unsubscribe(&self) -> OnUnsubscribe {
        self.on_unsubscribe
    }

    /// Signals `done` progress to flush waiters; returns the async ones to
    /// wake after the lock is released.
    fn progressed(&self, st: &mut State<T>) -> Vec<Waker> {
        if st.sleepers[Sleeper::Progress as usize] > 0 {
            self.progress.notify_all();
        }
        std::mem::take(&mut st.done_wakers)
    }

    /// Queues `sealed` and wakes the consumer: `push_quiet` followed by
    /// `wake_consumer`; batches dropped for lag are appended to `displaced`.
    #[cfg_attr(any(not(test), ringfold_loom), allow(dead_code))]
    pub(crate) fn push(&self, sealed: &Arc<Sealed<T>>, displaced: &mut Vec<Batch<T>>) -> Push {
        let (outcome, _) = self.push_quiet(sealed, displaced);
        self.wake_consumer();
        outcome
    }

    /// The flusher's delivery: queues a handle to `sealed`, merging it into
    /// its prefix's queued batch when the subscriber is behind, and
    /// applying the lag policy when over budget. Never runs subscriber
    /// code; under `LagPolicy::Block` it may wait (bounded by the policy's
    /// timeout or the close). Batches dropped for lag are appended to
    /// `displaced` (not dropped here, under the lock) so the flusher can
    /// recycle them (`BatchPool::recycle`).
    ///
    /// It does not wake the consumer: the flusher queues every batch of a
    /// pass first and then wakes each queue it touched once
    /// (`wake_consumer`), because a wake-up per batch (a futex call on the
    /// flusher, a context switch on the consumer) cost more than the rest of
    /// the delivery. The second value says this push is the first since the
    /// consumer was last woken, i.e. the caller must call `wake_consumer`.
    pub(crate) fn push_quiet(
        &self,
        sealed: &Arc<Sealed<T>>,
        displaced: &mut Vec<Batch<T>>,
    ) -> (Push, bool) {
        let fresh = Batch::new(sealed.clone());
        let (add_events, add_bytes) = fresh.footprint();
        let mut st = lock(&self.state);
        if st.closed {
            return (Push::Closed, false);
        }
        let block = matches!(self.policy, LagPolicy::Block { .. });
        if let LagPolicy::Block { timeout } = self.policy {
            if st.live > 0 && st.over(self.budget, add_events, add_bytes) {
                // The consumer may be asleep on batches queued this pass and
                // not announced yet: wake it before waiting for its room.
                if st.unwoken {
                    drop(st);
                    self.wake_consumer();
                    st = lock(&self.state);
                }
                st = self.wait_for_space(st, timeout, add_events, add_bytes);
                if st.closed {
                    return (Push::Closed, false);
                }
            }
        }
        st.enqueued += 1;
        st.sealed_events += sealed.events.len() as u64;
        // Merge when behind; over budget, also merge a window of `latest`
        // values or aggregates, which merging shrinks (for plain events it
        // would only make the batch that is dropped next larger).
        let behind = st.live >= self.coalesce_after
            || (st.over(self.budget, add_events, add_bytes) && sealed.holds_final_values());
        let merged_at = if behind {
            st.newest
                .get(sealed.prefix_id as usize)
                .and_then(|&at| at.checked_sub(1))
                .and_then(|abs| abs.checked_sub(st.front))
                .map(|i| i as usize)
                .filter(|&i| {
                    st.merge_into(
                        i,
                        sealed,
                        self.budget,
                        (add_events, add_bytes),
                        &self.spares,
                    )
                })
        } else {
            None
        };
        let (outcome, at) = match merged_at {
            Some(i) => (Push::Merged, i),
            None => {
                let abs = st.front + st.items.len() as u64;
                let pid = sealed.prefix_id as usize;
                if pid >= st.newest.len() {
                    st.newest.resize(pid + 1, 0);
                }
                st.newest[pid] = abs + 1;
                st.held_events += add_events;
                st.held_bytes += add_bytes;
                st.queued_windows += 1;
                st.queued_events += sealed.events.len() as u64;
                st.live += 1;
                st.items.push_back(Slot {
                    batch: Some(fresh),
                    held_events: add_events,
                    bytes: add_bytes,
                });
                (Push::Queued, st.items.len() - 1)
            }
        };
        // At shutdown a must-deliver (`Block`) queue takes the final
        // batches beyond its budget: bounded by the final drain, and
        // neither waiting nor dropping.
        let overfill = block && st.released;
        let mut dropped = false;
        let at_abs = st.front + at as u64;
        while !overfill && st.live > 1 && st.over(self.budget, 0, 0) {
            let Some(victim) = self.victim(&st, at_abs) else {
                break;
            };
            if let Some(batch) = st.vacate(victim) {
                st.lag_batches += batch.merged();
                st.lag_events += batch.len() as u64;
                st.lagged += batch.merged();
                st.done += batch.merged();
                displaced.push(batch);
                dropped = true;
            }
        }
        let first = !std::mem::replace(&mut st.unwoken, true);
        let done_wakers = if dropped {
            self.progressed(&mut st)
        } else {
            Vec::new()
        };
        drop(st);
        done_wakers.into_iter().for_each(Waker::wake);
        (outcome, first)
    }

    /// The slot to drop for lag: the oldest batch that holds no `latest`
    /// survivors or aggregates, else the oldest; never the one that just
    /// took the new window (absolute position `newest`), so a queue always
    /// keeps the newest batch.
    fn victim(&self, st: &State<T>, newest: u64) -> Option<usize> {
        let candidates = || {
            st.items
                .iter()
                .enumerate()
                .filter(|(i, s)| s.batch.is_some() && st.front + *i as u64 != newest)
        };
        candidates()
            .find(|(_, s)| s.batch.as_ref().is_some_and(|b| !b.holds_final_values()))
            .or_else(|| candidates().next())
            .map(|(i, _)| i)
    }

    /// Wakes the consumer (a thread in `pop`, or the task behind the
    /// registered waker) if batches were queued since it was last woken.
    pub(crate) fn wake_consumer(&self) {
        let mut st = lock(&self.state);
        if !std::mem::take(&mut st.unwoken) {
            return;
        }
        let waker = st.waker.take();
        let notify = st.sleepers[Sleeper::Ready as usize] > 0;
        drop(st);
        if notify {
            self.ready.notify_one();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// `LagPolicy::Block`: waits until `events` and `bytes` more fit the
    /// budget (or the queue is empty), the queue closes, shutdown releases
    /// it, or `timeout` elapses (checked arithmetic: an unrepresentable
    /// deadline means no deadline).
    fn wait_for_space<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        timeout: Duration,
        events: u64,
        bytes: u64,
    ) -> MutexGuard<'a, State<T>> {
        let deadline = crate::control::deadline_after(timeout);
        while st.live > 0 && st.over(self.budget, events, bytes) && !st.closed && !st.released {
            st = match self.sleep(st, Sleeper::Space, deadline) {
                Ok(st) => st,
                Err(st) => return st,
            };
        }
        st
    }

    /// Waits once on `which`'s condvar until notified (or spuriously
    /// woken), or until `deadline` (`None`: none); `Err` with the guard if
    /// the deadline had already passed. Counted in `sleepers` while it
    /// waits: the count is raised and lowered under the lock, and a
    /// notifier reads it under the same lock, so a waiter is either counted
    /// (and notified) or not yet waiting (and re-checks its condition under
    /// the lock before it does).
    fn sleep<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        which: Sleeper,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, State<T>>, MutexGuard<'a, State<T>>> {
        let cv = match which {
            Sleeper::Ready => &self.ready,
            Sleeper::Space => &self.space,
            Sleeper::Progress => &self.progress,
        };
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(st);
                }
                Some(d - now)
            }
        };
        st.sleepers[which as usize] += 1;
        let mut st = match timeout {
            None => cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(t) => match cv.wait_timeout(st, t) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            },
        };
        st.sleepers[which as usize] -= 1;
        Ok(st)
    }

    /// Takes the oldest batch, with the lag it carries in band; accounts
    /// it per `hand`. Caller holds the lock.
    fn take(&self, st: &mut State<T>, hand: Hand) -> Option<(Batch<T>, Vec<Waker>)> {
        let mut batch = st.take_front()?;
        batch.set_lagged(std::mem::take(&mut st.lagged));
        let windows = batch.merged();
        let wakers = match hand {
            Hand::Out => {
                st.deliveries += 1;
                st.delivered_batches += windows;
                st.delivered_events += batch.len() as u64;
                st.done += windows;
                self.progressed(st)
            }
            Hand::Callback => {
                st.in_hand_windows += windows;
                st.in_hand_events += batch.len() as u64;
                Vec::new()
            }
        };
        // A blocked flusher may now have room.
        if st.sleepers[Sleeper::Space as usize] > 0 {
            self.space.notify_one();
        }
        Some((batch, wakers))
    }

    fn finish_take(taken: Option<(Batch<T>, Vec<Waker>)>) -> Option<Batch<T>> {
        taken.map(|(batch, wakers)| {
            wakers.into_iter().for_each(Waker::wake);
            batch
        })
    }

    /// Pops without waiting.
    pub(crate) fn try_pop(&self, hand: Hand) -> Result<Batch<T>, PopError> {
        let mut st = lock(&self.state);
        let taken = self.take(&mut st, hand);
        let closed = st.closed;
        drop(st);
        match Self::finish_take(taken) {
            Some(b) => Ok(b),
            None if closed => Err(PopError::Closed),
            None => Err(PopError::Empty),
        }
    }

    /// Pops, waiting until a batch comes, the queue is closed and drained,
    /// or `deadline` passes (`None`: no deadline).
    pub(crate) fn pop(&self, hand: Hand, deadline: Option<Instant>) -> Result<Batch<T>, PopError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(taken) = self.take(&mut st, hand) {
                drop(st);
                return Self::finish_take(Some(taken)).ok_or(PopError::Empty);
            }
            if st.closed {
                return Err(PopError::Closed);
            }
            st = match self.sleep(st, Sleeper::Ready, deadline) {
                Ok(st) => st,
                Err(_) => return Err(PopError::Empty),
            };
        }
    }

    /// The async consumer's pop: a batch, the end (`None`), or `Pending`
    /// with `cx`'s waker registered (replacing the previous one).
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Batch<T>>> {
        let mut st = lock(&self.state);
        if let Some(taken) = self.take(&mut st, Hand::Out) {
            drop(st);
            return Poll::Ready(Self::finish_take(Some(taken)));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A delivery thread finished the batch it popped with `Hand::Callback`
    /// (its callback returned, or panicked): `windows` and `events` are the
    /// batch's `merged()` and `len()`.
    pub(crate) fn finish(&self, windows: u64, events: usize, panicked: bool) {
        let mut st = lock(&self.state);
        st.in_hand_windows = st.in_hand_windows.saturating_sub(windows);
        st.in_hand_events = st.in_hand_events.saturating_sub(events as u64);
        st.deliveries += 1;
        st.delivered_batches += windows;
        st.delivered_events += events as u64;
        st.panics += u64::from(panicked);
        st.done += windows;
        let wakers = self.progressed(&mut st);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Counts a panic outside a callback (a payload `Drop` on the delivery
    /// thread, the subscriber's own `Drop`).
    pub(crate) fn count_panics(&self, panics: u64) {
        lock(&self.state).panics += panics;
    }

    /// Closes the queue: the flusher queues nothing more; queued batches
    /// are kept for the consumer (`Deliver`) or dropped and counted
    /// (`Discard`). Wakes everyone waiting on it. Idempotent.
    pub(crate) fn close(&self, mode: OnUnsubscribe) {
        let mut st = lock(&self.state);
        st.closed = true;
        if mode == OnUnsubscribe::Discard {
            while let Some(batch) = st.take_front() {
                st.discarded_batches += batch.merged();
                st.discarded_events += batch.len() as u64;
                st.done += batch.merged();
                if drop_caught(batch) {
                    st.panics += 1;
                }
            }
        }
        let waker = st.waker.take();
        let wakers = self.progressed(&mut st);
        drop(st);
        self.ready.notify_all();
        self.space.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Shutdown: a `Block` push stops waiting for room (see
    /// `Registry::release_blocked`).
    pub(crate) fn release_blocked(&self) {
        lock(&self.state).released = true;
        self.space.notify_all();
    }

    /// Windows queued so far: a flush captures this after sealing.
    pub(crate) fn target(&self) -> u64 {
        lock(&self.state).enqueued
    }

    /// Windows done so far (delivered, handed out, dropped or discarded).
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn done(&self) -> u64 {
        lock(&self.state).done
    }

    /// Waits until `done >= target` or `deadline` passes (`None`: no
    /// deadline); returns whether the target was reached.
    pub(crate) fn wait_done(&self, target: u64, deadline: Option<Instant>) -> bool {
        let mut st = lock(&self.state);
        loop {
            if st.done >= target {
                return true;
            }
            st = match self.sleep(st, Sleeper::Progress, deadline) {
                Ok(st) => st,
                Err(_) => return false,
            };
        }
    }

    /// The async `wait_done`: `Ready` once `done >= target`, otherwise
    /// registers `cx`'s waker for the next progress.
    pub(crate) fn poll_done(&self, target: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.state);
        if st.done >= target {
            return Poll::Ready(());
        }
        if !st.done_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.done_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// A snapshot of this subscriber's counters.
    pub(crate) fn stats(&self) -> SubscriberStats {
        let st = lock(&self.state);
        let lag = st
            .first_live()
            .and_then(|i| st.items[i].batch.as_ref())
            .map_or(Duration::ZERO, |b| {
                Instant::now().saturating_duration_since(b.first_closed_at())
            });
        SubscriberStats {
            name: self.name.to_string(),
            sealed: st.enqueued,
            sealed_events: st.sealed_events,
            deliveries: st.deliveries,
            delivered_batches: st.delivered_batches,
            delivered_events: st.delivered_events,
            merged_batches: st.merged_windows,
            merge_folded_events: st.merge_folded_events,
            lag_dropped_batches: st.lag_batches,
            lag_dropped_events: st.lag_events,
            discarded_batches: st.discarded_batches,
            discarded_events: st.discarded_events,
            queued: st.queued_windows,
            queued_events: st.queued_events,
            queued_bytes: st.held_bytes,
            in_flight: st.in_hand_windows,
            in_flight_events: st.in_hand_events,
            budget: self.budget,
            panics: st.panics,
            lag,
            closed: st.closed,
        }
    }
}
