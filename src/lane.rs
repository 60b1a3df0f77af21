//! A lane: one producer's ring plus what the producer shares with the
//! flusher and the stats about it (counters, wake hint, hand-back slots);
//! and the backlog of lanes whose producer was dropped but which the
//! flusher has not retired yet ([`Backlog`]).

use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::record::Slot;
use crate::ring::{Consumer, Ring};
use crate::stats::{DropCounters, LaneShare};
use crate::sync::{
    self, lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, Thread,
};

/// Per-producer state shared with the flusher and the stats.
pub(crate) struct Lane<T> {
    pub(crate) ring: Arc<Ring<Slot<T>>>,
    /// Extension slots pushed (see `record.rs`), written only by the
    /// producer: `ring.pushed() - ext_pushed` counts events, not slots.
    pub(crate) ext_pushed: AtomicU64,
    /// Extension slots consumed, by the flusher (or, after shutdown, by a
    /// publish taking its own event back).
    pub(crate) ext_popped: AtomicU64,
    /// Rejections by reason, written by the producer on its slow paths.
    pub(crate) drops: DropCounters,
    /// Events pushed but then taken back because the engine closed.
    pub(crate) reclaimed: AtomicU64,
    /// Per-prefix rejection counts, taken by the flusher for `Batch::dropped`.
    /// Touched only when an event is rejected, never on the accepted path.
    pub(crate) drops_total: AtomicU64,
    pub(crate) drops_by_prefix: Mutex<AHashMap<u32, u64>>,
    /// The ring holds an urgent or passthrough event the flusher has not
    /// yet swept. Per lane (one writer setting it), so a passthrough stream
    /// writes only its own producer's line, and the flusher's swap that
    /// clears it synchronises with exactly that producer.
    pub(crate) wake_hint: AtomicBool,
    /// The producer handle was dropped (thread exit); drain, then retire.
    pub(crate) gone: AtomicBool,
    /// The flusher retired this lane: set and read only under the registry
    /// lock, so the registry drops every retired lane in one pass over its
    /// list (Relaxed: the mutex orders it).
    pub(crate) retired: AtomicBool,
    /// The thread to unpark when the producer waits for space.
    pub(crate) waiter: Mutex<Option<Thread>>,
    /// After the flusher stops it parks each ring's reading end here, so a
    /// publish that raced shutdown can take its own record back.
    pub(crate) orphan: Mutex<Option<Consumer<Slot<T>>>>,
}

impl<T> Lane<T> {
    pub(crate) fn new(ring: Arc<Ring<Slot<T>>>) -> Self {
        Lane {
            ring,
            ext_pushed: AtomicU64::new(0),
            ext_popped: AtomicU64::new(0),
            drops: DropCounters::default(),
            reclaimed: AtomicU64::new(0),
            drops_total: AtomicU64::new(0),
            drops_by_prefix: Mutex::new(AHashMap::new()),
            wake_hint: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            waiter: Mutex::new(None),
            orphan: Mutex::new(None),
        }
    }

    /// Events accepted into this lane's ring (taken-back ones excluded),
    /// and those of them still in the ring: slot counts minus extension
    /// slots. Exact when the lane is quiescent; read mid-publish it can be
    /// off by the event in flight.
    pub(crate) fn events(&self) -> (u64, u64) {
        // Acquire on the extension and reclaim counters, which pair with
        // the Release of the flusher's `ext_popped` increment: the ring
        // counts read after them are at least as new, so the subtraction
        // below does not underflow from a torn view.
        let reclaimed = self.reclaimed.load(Ordering::Acquire);
        let ext_popped = self.ext_popped.load(Ordering::Acquire);
        let popped = self.ring.popped() as u64;
        let ext_pushed = self.ext_pushed.load(Ordering::Acquire);
        let pushed = self.ring.pushed() as u64;
        // Taken-back events advanced `head` too, so pushed - popped is
        // exactly what still sits in the ring.
        let published = (pushed - ext_pushed).saturating_sub(reclaimed);
        let in_ring = (pushed - popped).saturating_sub(ext_pushed - ext_popped.min(ext_pushed));
        (published, in_ring)
    }

    /// This lane's share of a stats snapshot.
    pub(crate) fn share(&self) -> LaneShare<'_> {
        let (published, in_ring) = self.events();
        LaneShare {
            published,
            in_ring,
            dropped: &self.drops,
        }
    }

    /// Counts a rejection under `counter` (one of `self.drops`), and under
    /// its prefix for `Batch::dropped` when it has one.
    pub(crate) fn count_drop(&self, counter: &AtomicU64, prefix: Option<u32>) {
        // Relaxed: a stats counter.
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(prefix) = prefix {
            *lock(&self.drops_by_prefix).entry(prefix).or_default() += 1;
            // Release: pairs with the flusher's Acquire load in its sweep,
            // so it sees the per-prefix entry this total announces.
            self.drops_total.fetch_add(1, Ordering::Release);
        }
    }
}

/// Most lanes whose producer was dropped but which the flusher has not yet
/// drained and retired, before `Engine::producer` waits for the flusher to
/// catch up (see [`Backlog::wait_for_room`] and
/// `Engine::MAX_RETIRING_PRODUCERS`, which documents it publicly).
///
/// Why a bound at creation: a dropped producer's ring stays allocated until
/// the flusher drains it, and a thread that creates, publishes into and
/// drops producers in a loop makes lanes faster than one flusher pass
/// retires them (1 M cycles left 861,379 lanes and 4.3 GiB behind). Cheaper
/// retirement alone narrows the gap but cannot close it: creation is a
/// caller's loop, retirement one thread's pass. So creation waits, and the
/// registered lanes stay at most the live producers plus this many: memory
/// proportional to live producers plus pending events. 256 lanes is small
/// (at most 256 rings beyond the live ones) yet large enough that a churning
/// thread waits once per 256 creations, one flusher pass, not once per
/// creation. (Recycling retired rings would save allocations but bound
/// nothing, so it is not done; the flusher does retire a whole sweep's dead
/// lanes in one pass over the registry, see `Flusher::retire`.) The
/// thread-local producers behind `Engine::publish*` skip the wait: there is
/// at most one per thread, so they cannot churn.
pub(crate) const MAX_RETIRING_LANES: usize = 256;

/// How long a creation waits for a flusher that completes no pass at all
/// before it goes ahead anyway: the flusher may be legitimately held up
/// (a `LagPolicy::Block` subscriber's full queue, opted into as
/// back-pressure; a slow sampler or payload `Drop`), and a creation must
/// not wait on it without bound. While the flusher makes passes, the wait
/// goes on (each pass retires every lane dropped before it began), so a
/// loaded machine slowing the flusher down does not break the bound; only a
/// flusher stuck for this long does, by one lane per creation per stall.
pub(crate) const RETIRE_STALL: Duration = Duration::from_secs(1);

/// How often a waiting creation re-checks and re-wakes the flusher, as a
/// backstop to the flusher's notification.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// The dropped-but-unretired lanes, counted, and the hand-off by which a
/// producer creation waits for the flusher to retire some.
pub(crate) struct Backlog {
    /// Lanes whose producer was dropped and which are still registered.
    /// Incremented by the producer's `Drop` before it marks the lane gone,
    /// decremented by the flusher after it removed the lane from the
    /// registry, so it never undercounts registered dead lanes.
    dropped: AtomicUsize,
    /// Flusher sweeps completed: how a waiter tells a slow flusher from a
    /// stuck one.
    passes: AtomicU64,
    /// Creations waiting in [`Backlog::wait_for_room`]: the flusher
    /// notifies only when there are some.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Backlog {
    pub(crate) fn new() -> Self {
        Backlog {
            dropped: AtomicUsize::new(0),
            passes: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    /// Producer `Drop`: its lane joins the backlog. Must come before the
    /// lane's `gone` store (Release), so the flusher's decrement, which
    /// follows its Acquire load of `gone`, never comes first (Relaxed: the
    /// `gone` hand-off orders the two RMWs).
    pub(crate) fn lane_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Is there room for one more lane without waiting? A Relaxed peek for
    /// the fast path: a stale answer only means one more or one less wait.
    pub(crate) fn has_room(&self) -> bool {
        self.dropped.load(Ordering::Relaxed) < MAX_RETIRING_LANES
    }

    /// Flusher, after each sweep: `retired` lanes left the registry. If
    /// some did, wakes the waiting creations, if any, to re-check. A pass
    /// that retired nothing only counts itself: a waiter sees that progress
    /// at its next slice.
    pub(crate) fn pass_done(&self, retired: usize) {
        // Relaxed: a progress hint, read under no ordering requirement.
        self.passes.fetch_add(1, Ordering::Relaxed);
        if retired == 0 {
            return;
        }
        // SeqCst on the decrement and on the `waiters` load, against the
        // waiter's SeqCst increment of `waiters` and load of `dropped`
        // (a store-load pair each side): either the waiter sees the new
        // count, or we see the waiter and notify it under the lock it
        // holds until it waits.
        self.dropped.fetch_sub(retired, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.release();
        }
    }

    /// Wakes every waiting creation (also at shutdown and when the flusher
    /// dies: they see the engine closed).
    pub(crate) fn release(&self) {
        let _guard = lock(&self.lock);
        self.cv.notify_all();
    }

    /// Waits until fewer than [`MAX_RETIRING_LANES`] dropped lanes are
    /// registered, the engine closes (`closed`), or the flusher completes
    /// no pass for [`RETIRE_STALL`]. `wake` wakes the flusher (whatever its
    /// sleep), called first and again every [`WAIT_SLICE`].
    pub(crate) fn wait_for_room(&self, closed: impl Fn() -> bool, wake: impl Fn()) {
        wake();
        let mut guard = lock(&self.lock);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.passes.load(Ordering::Relaxed);
        let mut progress_at = Instant::now();
        loop {
            if closed() || self.dropped.load(Ordering::SeqCst) < MAX_RETIRING_LANES {
                break;
            }
            let passes = self.passes.load(Ordering::Relaxed);
            let now = Instant::now();
            if passes != seen {
                seen = passes;
                progress_at = now;
            } else if now.saturating_duration_since(progress_at) >= RETIRE_STALL {
                // Stuck (see `RETIRE_STALL`): go ahead.
                break;
            }
            guard = sync::wait_timeout(&self.cv, guard, WAIT_SLICE);
            wake();
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    }
}
