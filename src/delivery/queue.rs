//! One subscriber's bounded queue of batch handles.
//!
//! The flusher's whole cost per delivery is one [`Queue::push`]: a lock, a
//! `VecDeque` push into pre-allocated space, a condvar notify and, for an
//! async consumer, a waker wake. The consumer side (a delivery thread, a
//! blocking receiver or a stream) pops. The lock is taken once per batch,
//! never per event.
//!
//! Flush accounting: `enqueued` and `done` only grow. A batch is *done* when
//! its callback returned, a receiver handed it out, or it was dropped by the
//! lag policy or discarded on close; so `Engine::flush` captures
//! [`Queue::target`] (= `enqueued`) after sealing and waits for
//! `done >= target`.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::batch::{Batch, Sealed};
use super::stats::SubscriberStats;
use crate::sync::{lock, Arc, Condvar, Mutex, MutexGuard};

/// What a subscriber's queue does when the flusher has a batch for it and
/// the queue is full.
///
/// ```
/// use ringfold::LagPolicy;
/// use std::time::Duration;
/// assert_eq!(LagPolicy::default(), LagPolicy::DropOldest { capacity: 1024 });
/// let sink = LagPolicy::Block { capacity: 64, timeout: Duration::from_millis(250) };
/// assert_eq!(sink.capacity(), 64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagPolicy {
    /// Drop the oldest queued batch, count it, and report it in band
    /// ([`Batch::lagged`]) in the next batch this subscriber receives. The
    /// default: a slow subscriber costs only itself.
    DropOldest {
        /// Batches the queue holds (at least 1).
        capacity: usize,
    },
    /// Back-pressure: the flusher waits up to `timeout` for space (and,
    /// through full rings, so do producers), then drops the oldest batch and
    /// counts it as `DropOldest` does. Opt-in, for must-deliver sinks.
    Block {
        /// Batches the queue holds (at least 1).
        capacity: usize,
        /// Longest wait for space per batch. Any value is accepted; one the
        /// clock cannot add (e.g. `Duration::MAX`) waits until space frees
        /// up or the subscription closes.
        timeout: Duration,
    },
}

impl Default for LagPolicy {
    fn default() -> Self {
        LagPolicy::DropOldest { capacity: 1024 }
    }
}

impl LagPolicy {
    /// Batches the queue holds.
    pub fn capacity(&self) -> usize {
        match *self {
            LagPolicy::DropOldest { capacity } | LagPolicy::Block { capacity, .. } => capacity,
        }
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

/// Why [`Queue::push`] did not simply queue the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued with room to spare.
    Queued,
    /// Queued after dropping the oldest batch (lag).
    QueuedDroppingOldest,
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

struct State<T> {
    items: VecDeque<Batch<T>>,
    closed: bool,
    /// Shutdown has begun: `LagPolicy::Block` no longer waits (see
    /// `Registry::release_blocked`).
    released: bool,
    /// Lost to the lag policy since the last batch handed out.
    lagged: u64,
    enqueued: u64,
    done: u64,
    in_hand: u64,
    delivered_batches: u64,
    delivered_events: u64,
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

/// Which of a queue's condvars a thread waits on (index into `sleepers`).
#[derive(Clone, Copy)]
enum Sleeper {
    Ready = 0,
    Space = 1,
    Progress = 2,
}

/// A bounded queue of batch handles for one subscriber.
pub(crate) struct Queue<T> {
    name: Box<str>,
    policy: LagPolicy,
    on_unsubscribe: OnUnsubscribe,
    state: Mutex<State<T>>,
    /// The consumer waits here for a batch or the close.
    ready: Condvar,
    /// The flusher waits here for space (`LagPolicy::Block`).
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
    /// A queue for the subscriber `name`; capacities below 1 are raised to 1
    /// (the registry rejects them first with a typed error).
    pub(crate) fn new(name: &str, policy: LagPolicy, on_unsubscribe: OnUnsubscribe) -> Self {
        let capacity = policy.capacity().max(1);
        Queue {
            name: name.into(),
            policy,
            on_unsubscribe,
            state: Mutex::new(State {
                // Pre-allocated: a push never allocates.
                items: VecDeque::with_capacity(capacity),
                closed: false,
                released: false,
                lagged: 0,
                enqueued: 0,
                done: 0,
                in_hand: 0,
                delivered_batches: 0,
                delivered_events: 0,
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

    /// Batches the queue holds (the lag policy's capacity, at least 1).
    pub(crate) fn capacity(&self) -> usize {
        self.policy.capacity().max(1)
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

    /// Queues a handle to `sealed` and wakes the consumer: `push_quiet`
    /// followed by `wake_consumer`.
    #[cfg_attr(any(not(test), ringfold_loom), allow(dead_code))]
    pub(crate) fn push(&self, sealed: &Arc<Sealed<T>>) -> (Push, Option<Batch<T>>) {
        let (outcome, displaced, _) = self.push_quiet(sealed);
        self.wake_consumer();
        (outcome, displaced)
    }

    /// The flusher's delivery: queues a handle to `sealed`, applying the lag
    /// policy when full. Never runs subscriber code; under
    /// `LagPolicy::Block` it may wait (bounded by the policy's timeout or
    /// the close). A batch dropped for lag is handed back (not dropped
    /// here, under the lock) so the flusher can recycle it
    /// (`BatchPool::recycle`).
    ///
    /// It does not wake the consumer: the flusher queues every batch of a
    /// pass first and then wakes each queue it touched once
    /// (`wake_consumer`), because a wake-up per batch (a futex call on the
    /// flusher, a context switch on the consumer) cost more than the rest of
    /// the delivery. The third value says this push is the first since the
    /// consumer was last woken, i.e. the caller must call `wake_consumer`.
    pub(crate) fn push_quiet(&self, sealed: &Arc<Sealed<T>>) -> (Push, Option<Batch<T>>, bool) {
        let mut st = lock(&self.state);
        if st.closed {
            return (Push::Closed, None, false);
        }
        let mut displaced = None;
        let block = matches!(self.policy, LagPolicy::Block { .. });
        if st.items.len() >= self.capacity() {
            if let LagPolicy::Block { timeout, .. } = self.policy {
                // The consumer may be asleep on batches queued this pass and
                // not announced yet: wake it before waiting for its space.
                if st.unwoken {
                    drop(st);
                    self.wake_consumer();
                    st = lock(&self.state);
                }
                st = self.wait_for_space(st, timeout);
                if st.closed {
                    return (Push::Closed, None, false);
                }
            }
            // At shutdown a must-deliver (`Block`) queue takes the final
            // batches beyond its capacity: bounded by the final drain, and
            // neither waiting nor dropping.
            let overfill = block && st.released;
            if st.items.len() >= self.capacity() && !overfill {
                if let Some(oldest) = st.items.pop_front() {
                    st.lag_batches += 1;
                    st.lag_events += oldest.len() as u64;
                    st.lagged += 1;
                    st.done += 1;
                    displaced = Some(oldest);
                }
            }
        }
        st.items.push_back(Batch::new(sealed.clone()));
        st.enqueued += 1;
        let first = !std::mem::replace(&mut st.unwoken, true);
        let outcome = if displaced.is_some() {
            Push::QueuedDroppingOldest
        } else {
            Push::Queued
        };
        let done_wakers = if displaced.is_some() {
            self.progressed(&mut st)
        } else {
            Vec::new()
        };
        drop(st);
        done_wakers.into_iter().for_each(Waker::wake);
        (outcome, displaced, first)
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

    /// `LagPolicy::Block`: waits until there is space, the queue closes, or
    /// `timeout` elapses (checked arithmetic: an unrepresentable deadline
    /// means no deadline).
    fn wait_for_space<'a>(
        &'a self,
        mut st: MutexGuard<'a, State<T>>,
        timeout: Duration,
    ) -> MutexGuard<'a, State<T>> {
        let deadline = crate::control::deadline_after(timeout);
        while st.items.len() >= self.capacity() && !st.closed && !st.released {
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
        let mut batch = st.items.pop_front()?;
        batch.set_lagged(std::mem::take(&mut st.lagged));
        let wakers = match hand {
            Hand::Out => {
                st.delivered_batches += 1;
                st.delivered_events += batch.len() as u64;
                st.done += 1;
                self.progressed(st)
            }
            Hand::Callback => {
                st.in_hand += 1;
                Vec::new()
            }
        };
        // A blocked flusher can now queue.
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
    /// (its callback returned, or panicked).
    pub(crate) fn finish(&self, events: usize, panicked: bool) {
        let mut st = lock(&self.state);
        st.in_hand = st.in_hand.saturating_sub(1);
        st.delivered_batches += 1;
        st.delivered_events += events as u64;
        st.panics += u64::from(panicked);
        st.done += 1;
        let wakers = self.progressed(&mut st);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Counts a panic outside a callback (a payload `Drop` on the delivery
    /// thread, the subscriber's own `Drop`).
    pub(crate) fn count_panic(&self) {
        lock(&self.state).panics += 1;
    }

    /// Closes the queue: the flusher queues nothing more; queued batches
    /// are kept for the consumer (`Deliver`) or dropped and counted
    /// (`Discard`). Wakes everyone waiting on it. Idempotent.
    pub(crate) fn close(&self, mode: OnUnsubscribe) {
        let mut st = lock(&self.state);
        st.closed = true;
        if mode == OnUnsubscribe::Discard {
            while let Some(batch) = st.items.pop_front() {
                st.discarded_batches += 1;
                st.discarded_events += batch.len() as u64;
                st.done += 1;
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

    /// Shutdown: a `Block` push stops waiting for space (see
    /// `Registry::release_blocked`).
    pub(crate) fn release_blocked(&self) {
        lock(&self.state).released = true;
        self.space.notify_all();
    }

    /// Batches queued so far: a flush captures this after sealing.
    pub(crate) fn target(&self) -> u64 {
        lock(&self.state).enqueued
    }

    /// Batches done so far (delivered, handed out, dropped or discarded).
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
        let lag = st.items.front().map_or(Duration::ZERO, |b| {
            Instant::now().saturating_duration_since(b.closed_at())
        });
        SubscriberStats {
            name: self.name.to_string(),
            sealed: st.enqueued,
            delivered_batches: st.delivered_batches,
            delivered_events: st.delivered_events,
            lag_dropped_batches: st.lag_batches,
            lag_dropped_events: st.lag_events,
            discarded_batches: st.discarded_batches,
            discarded_events: st.discarded_events,
            queued: st.items.len() as u64,
            in_flight: st.in_hand,
            panics: st.panics,
            lag,
            closed: st.closed,
        }
    }
}
