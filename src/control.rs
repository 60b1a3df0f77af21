//! The control plane's hand-offs between callers and the flusher: flush
//! requests and their acknowledgements, and the flusher's "stopped" signal
//! that shutdown (and a publish racing it) waits for. Every wait goes
//! through one deadline-aware helper, [`Control::wait_until`].

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::policy::Pattern;
use crate::sync::{self, lock, AtomicBool, Condvar, Mutex, MutexGuard, Ordering};

/// The deadline `timeout` from now, or `None` when the clock cannot express
/// it (`Duration::MAX` and the like): the one place a caller's duration
/// becomes a deadline, so a huge timeout means "wait without limit" and
/// never overflows (`Instant + Duration` panics on overflow).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Flush requests and the flusher's acknowledgements.
#[derive(Default)]
struct Requests {
    /// Last generation handed out to a flush caller.
    requested: u64,
    /// Last generation the flusher completed.
    completed: u64,
    /// A full flush is among the outstanding requests.
    full: bool,
    /// Prefix patterns among the outstanding requests.
    patterns: Vec<Pattern>,
    /// The flusher has finished its final drain and exited its loop.
    stopped: bool,
    /// Async waiters (`flush_async`, `shutdown_async`), woken on every
    /// completion and on the stop.
    wakers: Vec<Waker>,
}

/// Outstanding flush requests, taken by the flusher in one go.
pub(crate) struct FlushRequest {
    pub(crate) generation: u64,
    pub(crate) full: bool,
    pub(crate) patterns: Vec<Pattern>,
}

/// Flush requests, acknowledgements and the stopped signal.
pub(crate) struct Control {
    requests: Mutex<Requests>,
    cv: Condvar,
    /// A flush request is waiting: the flusher's lock-free check, so a pass
    /// without a request takes no lock.
    pending: AtomicBool,
}

impl Control {
    pub(crate) fn new() -> Self {
        Control {
            requests: Mutex::new(Requests::default()),
            cv: Condvar::new(),
            pending: AtomicBool::new(false),
        }
    }

    /// Waits on the condition variable until `done` holds (true) or
    /// `deadline` passes (false). The one timed wait of the control plane.
    fn wait_until<'a>(
        &self,
        mut guard: MutexGuard<'a, Requests>,
        deadline: Option<Instant>,
        done: impl Fn(&Requests) -> bool,
    ) -> (MutexGuard<'a, Requests>, bool) {
        while !done(&guard) {
            guard = match deadline {
                None => self.cv.wait(guard).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return (guard, false);
                    }
                    sync::wait_timeout(&self.cv, guard, d - now)
                }
            };
        }
        (guard, true)
    }

    /// Caller side: requests a flush (of everything, or of the prefixes
    /// matching `pattern`), runs `wake` to get the flusher going, and waits
    /// until the flusher acknowledges it or stops. False if `deadline`
    /// passed first.
    pub(crate) fn flush(
        &self,
        pattern: Option<Pattern>,
        deadline: Option<Instant>,
        wake: impl FnOnce(),
    ) -> bool {
        let req = lock(&self.requests);
        let Some((req, generation)) = self.request_locked(req, pattern) else {
            // Shutdown already delivered every accepted event.
            return true;
        };
        wake();
        let (_req, done) =
            self.wait_until(req, deadline, |r| r.completed >= generation || r.stopped);
        done
    }

    /// Caller side, async: requests a flush without waiting; the
    /// generation to poll for with [`Control::poll_completed`], or `None`
    /// when the flusher has already stopped (nothing left to flush). The
    /// caller wakes the flusher.
    pub(crate) fn request(&self, pattern: Option<Pattern>) -> Option<u64> {
        let req = lock(&self.requests);
        self.request_locked(req, pattern).map(|(_, g)| g)
    }

    /// `Ready` once flush `generation` is done or the flusher stopped;
    /// otherwise registers `cx`'s waker. Never blocks beyond the lock.
    pub(crate) fn poll_completed(&self, generation: u64, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_until(cx, |r| r.completed >= generation || r.stopped)
    }

    /// `Ready` once the flusher stopped; otherwise registers `cx`'s waker.
    pub(crate) fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_until(cx, |r| r.stopped)
    }

    fn poll_until(&self, cx: &mut Context<'_>, done: impl Fn(&Requests) -> bool) -> Poll<()> {
        let mut req = lock(&self.requests);
        if done(&req) {
            return Poll::Ready(());
        }
        if !req.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            req.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn request_locked<'a>(
        &self,
        mut req: MutexGuard<'a, Requests>,
        pattern: Option<Pattern>,
    ) -> Option<(MutexGuard<'a, Requests>, u64)> {
        if req.stopped {
            return None;
        }
        req.requested += 1;
        let generation = req.requested;
        match pattern {
            Some(p) => req.patterns.push(p),
            None => req.full = true,
        }
        // SeqCst kept from before the split (the loom flush model checks
        // it). What it needs is Release, paired with the flusher's AcqRel
        // swap in `take_request`; the request itself travels under the
        // mutex either way.
        self.pending.store(true, Ordering::SeqCst);
        Some((req, generation))
    }

    /// Blocks until the flusher has stopped (true), or `deadline` passes.
    pub(crate) fn wait_stopped_until(&self, deadline: Option<Instant>) -> bool {
        let req = lock(&self.requests);
        self.wait_until(req, deadline, |r| r.stopped).1
    }

    /// Blocks until the flusher has stopped.
    pub(crate) fn wait_stopped(&self) {
        self.wait_stopped_until(None);
    }

    /// Flusher: a Relaxed peek at the request flag, for `has_work` (a stale
    /// answer costs at most one more pass; the flusher re-checks after its
    /// park announcement, and a request also unparks it).
    pub(crate) fn flush_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Flusher: takes the outstanding flush requests, if any. AcqRel swap:
    /// Acquire pairs with the requester's store, so events it published
    /// before asking are visible to the sweep that follows.
    pub(crate) fn take_request(&self) -> Option<FlushRequest> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut req = lock(&self.requests);
        Some(FlushRequest {
            generation: req.requested,
            full: std::mem::take(&mut req.full),
            patterns: std::mem::take(&mut req.patterns),
        })
    }

    /// Flusher: the flushes up to `generation` are delivered.
    pub(crate) fn complete(&self, generation: u64) {
        let mut req = lock(&self.requests);
        req.completed = req.completed.max(generation);
        self.cv.notify_all();
        let wakers = std::mem::take(&mut req.wakers);
        drop(req);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Flusher: the final drain is done; releases every waiter.
    pub(crate) fn stop(&self) {
        let mut req = lock(&self.requests);
        req.stopped = true;
        req.completed = req.requested;
        self.cv.notify_all();
        let wakers = std::mem::take(&mut req.wakers);
        drop(req);
        wakers.into_iter().for_each(Waker::wake);
    }
}
