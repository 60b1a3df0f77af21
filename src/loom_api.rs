//! Internals exposed to the loom models only (compiled under `cfg(ringfold_loom)`).
//!
//! Thin public wrappers over crate-private pieces, so the models in
//! `loom-tests/` exercise the real ring and interner code (built against
//! loom's primitives through `crate::sync`), not a copy. Nothing here adds
//! behaviour: every method forwards to exactly one internal one.

use crate::error::Error;
use crate::intern::{self, EventKey};
use crate::policy::{Policy, PolicyTable};
use crate::ring;

/// Creates an SPSC ring of `capacity` slots (a power of two, at least 2)
/// and returns its two ends (`ring::channel`).
pub fn ring<T>(capacity: usize) -> (RingProducer<T>, RingConsumer<T>) {
    let (p, c) = ring::channel(capacity);
    (RingProducer(p), RingConsumer(c))
}

/// The writing end of a ring (`ring::Producer`).
pub struct RingProducer<T>(ring::Producer<T>);

impl<T> RingProducer<T> {
    /// `ring::Producer::push`: pushes one item or hands it back when full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        self.0.push(item)
    }

    /// `ring::Producer::push_many`: pushes what fits, one tail store.
    pub fn push_many(&mut self, items: &mut impl Iterator<Item = T>) -> usize {
        self.0.push_many(items)
    }

    /// `ring::Producer::announce_waiting`: the producer's half of the
    /// waiting-for-space Dekker handshake.
    pub fn announce_waiting(&self, waiting: bool) {
        self.0.announce_waiting(waiting)
    }

    /// `ring::Producer::refresh_len`: exact occupancy as of now.
    pub fn refresh_len(&mut self) -> usize {
        self.0.refresh_len()
    }

    /// Items ever pushed (`ring::Ring::pushed`).
    pub fn pushed(&self) -> usize {
        self.0.ring().pushed()
    }
}

/// The reading end of a ring (`ring::Consumer`).
pub struct RingConsumer<T>(ring::Consumer<T>);

impl<T> RingConsumer<T> {
    /// `ring::Consumer::drain`: moves everything published so far into `f`;
    /// returns whether the producer had announced it waits for space.
    pub fn drain(&mut self, f: impl FnMut(T)) -> bool {
        self.0.drain(f).producer_waiting
    }

    /// `ring::Consumer::maybe_ready`: the sweep's cheap idle check.
    pub fn maybe_ready(&self) -> bool {
        self.0.maybe_ready()
    }

    /// `ring::Consumer::pending`: published and not yet drained.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }
}

/// The engine's name interner (`intern::Interner`), with a passthrough
/// policy table.
pub struct Interner(intern::Interner);

impl Interner {
    /// An interner for at most `max_names` names of at most 64 bytes.
    pub fn new(max_names: usize) -> Self {
        Interner(intern::Interner::new(
            PolicyTable::new(Policy::Passthrough),
            max_names,
            64,
        ))
    }

    /// `intern::Interner::key`: the same key for the same name, from any
    /// thread.
    pub fn key(&self, name: &str) -> Result<EventKey, Error> {
        self.0.key(name)
    }

    /// `intern::Interner::name`: the name with id `id`, if published.
    pub fn name(&self, id: usize) -> Option<String> {
        self.0.name(id).map(|info| info.meta.name.to_string())
    }

    /// `intern::Interner::owns`: the key was made by this interner.
    pub fn owns(&self, key: EventKey) -> bool {
        self.0.owns(key)
    }

    /// `intern::Interner::view`: the names published as of now.
    pub fn view(&self) -> View<'_> {
        View(self.0.view())
    }
}

/// The interner's names as of one moment (`intern::View`), as a reader
/// holds it.
pub struct View<'a>(intern::View<'a>);

impl View<'_> {
    /// Number of names in this view.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no name is in this view.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The key of `name` in this view.
    pub fn get(&self, name: &str) -> Option<EventKey> {
        self.0.get(name)
    }

    /// `intern::View::check_consistent`: every id below the view's length
    /// resolves by id and by name, to its own key and an existing prefix.
    pub fn check_consistent(&self) -> Result<(), String> {
        self.0.check_consistent()
    }
}

// ---------------------------------------------------------------------------
// Delivery layer (issue 13): one subscriber's queue, the batch pool, and
// flush accounting, for loom-tests/tests/delivery_*.rs.
// ---------------------------------------------------------------------------

use crate::delivery::{BatchPool, Epoch, Hand, Header, OnUnsubscribe, Push, Queue};
use crate::event::BatchReason;
use crate::sync::Arc;

/// The flusher's batch pool (`delivery::BatchPool`), sealing empty batches
/// of one prefix numbered by `seq`.
pub struct DeliveryPool(BatchPool<u64>, Epoch);

impl DeliveryPool {
    /// A pool keeping at most `capacity` batches.
    pub fn new(capacity: usize) -> Self {
        let epoch = Epoch::now();
        DeliveryPool(BatchPool::new(capacity, epoch), epoch)
    }

    /// Batches recycled so far (`BatchPool::reused`).
    pub fn reused(&self) -> u64 {
        self.0.reused()
    }
}

/// One subscriber's queue (`delivery::Queue`); clones share it.
#[derive(Clone)]
pub struct DeliveryQueue(Arc<Queue<u64>>);

/// Outcome of [`DeliveryQueue::push`] (`delivery::Push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryPush {
    /// Queued.
    Queued,
    /// Merged into the queued batch (the consumer is behind).
    Merged,
    /// Queued or merged after dropping the oldest batch.
    DroppedOldest,
    /// The queue was closed.
    Closed,
}

impl DeliveryQueue {
    /// A queue whose budget holds `capacity` of the model's (empty)
    /// batches, never merging: `LagPolicy::DropOldest` (or `Block` with an
    /// unbounded timeout: under loom a timed wait never times out anyway).
    pub fn new(capacity: usize, block: bool, discard_on_close: bool) -> Self {
        Self::coalescing(capacity, usize::MAX, block, discard_on_close)
    }

    /// As [`new`](Self::new), but merging a new batch into the queued one
    /// once `coalesce_after` batches wait (`SubscribeOptions::coalesce_after`).
    pub fn coalescing(
        capacity: usize,
        coalesce_after: usize,
        block: bool,
        discard_on_close: bool,
    ) -> Self {
        let policy = if block {
            crate::delivery::LagPolicy::Block {
                timeout: std::time::Duration::MAX,
            }
        } else {
            crate::delivery::LagPolicy::DropOldest
        };
        let mode = if discard_on_close {
            OnUnsubscribe::Discard
        } else {
            OnUnsubscribe::Deliver
        };
        // The model's batches carry no events: the budget is in bytes, one
        // empty window's worth per batch.
        let per_batch = std::mem::size_of::<crate::delivery::Sealed<u64>>() as u64;
        let budget = crate::delivery::Budget::new(u64::MAX, capacity as u64 * per_batch);
        DeliveryQueue(Arc::new(Queue::new(
            "loom",
            policy,
            budget,
            coalesce_after,
            mode,
        )))
    }

    /// Seals batch `seq` through `pool` and queues it without waking the
    /// consumer (`Queue::push_quiet`, as the flusher queues a pass's
    /// batches); [`wake`](Self::wake) ends the pass.
    pub fn push(&self, pool: &mut DeliveryPool, seq: u64) -> DeliveryPush {
        let header = Header {
            prefix: "m".into(),
            name: "m:batch".into(),
            prefix_id: 0,
            reason: BatchReason::Count,
            seq,
            opened: pool.1.instant,
            closed: pool.1.instant,
            epoch: pool.1,
            dropped: 0,
            folded: 0,
            latest: false,
            keep_alive: std::sync::Arc::new(()),
        };
        let sealed = pool.0.seal(
            header,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut crate::histogram::Histograms::default(),
        );
        let mut displaced = Vec::new();
        let (outcome, _) = self.0.push_quiet(&sealed, &mut displaced);
        let dropped = !displaced.is_empty();
        for batch in displaced {
            pool.0.recycle(batch);
        }
        match outcome {
            Push::Closed => DeliveryPush::Closed,
            _ if dropped => DeliveryPush::DroppedOldest,
            Push::Queued => DeliveryPush::Queued,
            Push::Merged => DeliveryPush::Merged,
        }
    }

    /// The end of a flusher pass: wakes the consumer if batches were
    /// queued since it was last woken (`Queue::wake_consumer`).
    pub fn wake(&self) {
        self.0.wake_consumer();
    }

    /// A receiver's blocking pop (`Queue::pop` with `Hand::Out`): `(seq,
    /// lagged)`, or `None` once closed and drained.
    pub fn recv(&self) -> Option<(u64, u64)> {
        self.0
            .pop(Hand::Out, None)
            .ok()
            .map(|b| (b.seq(), b.lagged()))
    }

    /// A delivery thread's pop (`Hand::Callback`); the batch is done only
    /// at [`finish`](Self::finish).
    pub fn take(&self) -> Option<(u64, u64)> {
        self.0
            .pop(Hand::Callback, None)
            .ok()
            .map(|b| (b.seq(), b.lagged()))
    }

    /// A receiver's blocking pop of a possibly merged batch: `(seq,
    /// last_seq, lagged)`, or `None` once closed and drained.
    pub fn recv_merged(&self) -> Option<(u64, u64, u64)> {
        self.0
            .pop(Hand::Out, None)
            .ok()
            .map(|b| (b.seq(), b.last_seq(), b.lagged()))
    }

    /// A delivery thread's pop of a possibly merged batch: `(seq,
    /// last_seq, lagged)`; finish it with
    /// [`finish_windows`](Self::finish_windows)`(last_seq - seq + 1)`.
    pub fn take_merged(&self) -> Option<(u64, u64, u64)> {
        self.0
            .pop(Hand::Callback, None)
            .ok()
            .map(|b| (b.seq(), b.last_seq(), b.lagged()))
    }

    /// `Queue::finish`: the callback returned (a one-window batch).
    pub fn finish(&self) {
        self.finish_windows(1)
    }

    /// `Queue::finish` for a batch carrying `windows` windows.
    pub fn finish_windows(&self, windows: u64) {
        self.0.finish(windows, 0, false)
    }

    /// `Queue::close` (unsubscribe / shutdown), with the queue's mode.
    pub fn close(&self) {
        self.0.close(self.0.on_unsubscribe())
    }

    /// `Queue::target`: batches queued so far (a flush captures it).
    pub fn target(&self) -> u64 {
        self.0.target()
    }

    /// `Queue::wait_done` with no deadline.
    pub fn wait_done(&self, target: u64) -> bool {
        self.0.wait_done(target, None)
    }

    /// Windows merged into a queued batch so far.
    pub fn merged(&self) -> u64 {
        self.0.stats().merged_batches
    }

    /// `(sealed, delivered, lag_dropped, discarded, queued, in_flight)`
    /// from one stats snapshot, and whether it is conserved.
    pub fn counts(&self) -> ([u64; 6], bool) {
        let s = self.0.stats();
        (
            [
                s.sealed,
                s.delivered_batches,
                s.lag_dropped_batches,
                s.discarded_batches,
                s.queued,
                s.in_flight,
            ],
            s.is_conserved(),
        )
    }
}

// ---------------------------------------------------------------------------
// Engine-level flush, control-plane half (the two-flusher flush model).
// ---------------------------------------------------------------------------

/// The control-plane half of [`Engine::flush`](crate::Engine::flush)
/// (`Engine::flush_queued`): requests a full flush, wakes the flusher and
/// returns once the flusher has sealed and queued every batch the flush
/// covers, without waiting for any subscriber to take them. Always true
/// (no deadline).
pub fn flush_queued<T: Send + Sync + 'static>(engine: &crate::Engine<T>) -> bool {
    engine.flush_queued(None, None)
}
