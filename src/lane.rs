//! A lane: one producer's ring plus what the producer shares with the
//! flusher and the stats about it (counters, wake hint, hand-back slots).

use ahash::AHashMap;

use crate::record::Slot;
use crate::ring::{Consumer, Ring};
use crate::stats::{DropCounters, LaneShare};
use crate::sync::{lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering, Thread};

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
