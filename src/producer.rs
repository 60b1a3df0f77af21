//! Producer handles: the hot path.
//!
//! A `Producer` owns the writing end of its own SPSC ring. A publish is a
//! slot write, one Release store of the tail, one store-load barrier
//! (`barrier::light`: a compiler barrier on Linux, else a SeqCst fence) and
//! one Relaxed load of the engine's state word; it touches no lock, allocates
//! nothing and makes no syscall. The state word is non-zero only while the
//! flusher is parked or the engine is closing, so the common case ends
//! right there.
//!
//! The barrier is the producer half of two store-load (Dekker) hand-offs with
//! the flusher: "I published, are you asleep?" against "I am going to
//! sleep, did anyone publish?", and "I published, are you closing?" against
//! "I am closing, did anyone publish?". Without it, either side could miss
//! the other's store and an event would wait for the next tick (lost
//! wake-up) or be accepted after the final drain (lost at shutdown).

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::barrier;
use crate::engine::{FullPolicy, Shared, CLOSED, DEEP, PARKED};
use crate::error::{Error, PublishError};
use crate::intern::EventKey;
use crate::record::{Outgoing, Slot};
use crate::ring::{self, Consumer, Ring};
use crate::sync::{self, lock, Arc, AtomicBool, AtomicU64, Mutex, Ordering, Thread};

/// Yields before a producer waiting for ring space parks (see
/// `Producer::push_when_full`). None under loom, whose models check the
/// park protocol.
const FULL_YIELDS: u32 = if cfg!(loom) { 0 } else { 64 };

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
    pub(crate) full: AtomicU64,
    pub(crate) shut_down: AtomicU64,
    pub(crate) invalid_name: AtomicU64,
    pub(crate) urgent_timeout: AtomicU64,
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
    /// Events accepted into this lane's ring (taken-back ones excluded),
    /// and those of them still in the ring: slot counts minus extension
    /// slots. Exact when the lane is quiescent; read mid-publish it can be
    /// off by the event in flight.
    pub(crate) fn events(&self) -> (u64, u64) {
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

    fn count_drop(&self, counter: &AtomicU64, prefix: Option<u32>) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(prefix) = prefix {
            *lock(&self.drops_by_prefix).entry(prefix).or_default() += 1;
            self.drops_total.fetch_add(1, Ordering::Release);
        }
    }
}

/// A publishing handle with its own lock-free ring to the flusher.
///
/// `Send` (move it to the thread that publishes) but not `Sync`: one ring
/// has one writer. Dropping it (e.g. at thread exit) lets the flusher drain
/// the ring completely before unregistering it.
///
/// ```
/// use ringfold::{Engine, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// let mut producer = engine.producer()?;
/// let key = engine.key("data:users:created")?;
/// std::thread::spawn(move || {
///     for row in 0..1000u64 {
///         producer.publish_key(key, Value::from(row)).unwrap();
///     }
/// })
/// .join()
/// .unwrap();
/// engine.flush()?;
/// assert_eq!(engine.stats().delivered, 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Producer<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    lane: Arc<Lane<T>>,
    ring: ring::Producer<Slot<T>>,
    /// Names known to exist when last checked: keys below this are valid.
    known_names: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T: Send + 'static> Producer<T> {
    pub(crate) fn register(shared: Arc<Shared<T>>) -> Result<Producer<T>, Error> {
        let (ring, consumer) = ring::channel(shared.config.ring_capacity);
        let lane = Arc::new(Lane {
            ring: ring.ring().clone(),
            full: AtomicU64::new(0),
            shut_down: AtomicU64::new(0),
            invalid_name: AtomicU64::new(0),
            urgent_timeout: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            ext_pushed: AtomicU64::new(0),
            ext_popped: AtomicU64::new(0),
            drops_total: AtomicU64::new(0),
            drops_by_prefix: Mutex::new(AHashMap::new()),
            wake_hint: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            waiter: Mutex::new(None),
            orphan: Mutex::new(None),
        });
        shared.register_lane(lane.clone(), consumer)?;
        Ok(Producer {
            shared,
            lane,
            ring,
            known_names: 0,
            _not_sync: PhantomData,
        })
    }

    /// Publishes `payload` under `name`, interning the name if needed.
    /// Prefer [`Producer::publish_key`] on hot paths.
    pub fn publish(&mut self, name: &str, payload: T) -> Result<(), PublishError<T>> {
        match self.shared.interner.key(name) {
            Ok(key) => self.publish_key(key, payload),
            Err(_) => {
                self.lane.count_drop(&self.lane.invalid_name, None);
                Err(PublishError::InvalidName(payload))
            }
        }
    }

    /// Publishes under an interned key: the hot path.
    #[inline]
    pub fn publish_key(&mut self, key: EventKey, payload: T) -> Result<(), PublishError<T>> {
        self.publish_record(key, 0, false, payload)
    }

    /// Publishes with a caller sub-key: under `Policy::latest`, events
    /// coalesce per `(name, sub_key)` (e.g. per message id).
    #[inline]
    pub fn publish_keyed(
        &mut self,
        key: EventKey,
        sub_key: u64,
        payload: T,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, sub_key, false, payload)
    }

    /// Publishes an urgent event: the flusher is woken at once, and the
    /// event is delivered right after every earlier pending event of its
    /// prefix, in one batch with reason `Urgent`. On a full ring it waits up
    /// to `EngineBuilder::urgent_wait` instead of being dropped.
    pub fn publish_urgent(&mut self, key: EventKey, payload: T) -> Result<(), PublishError<T>> {
        self.publish_record(key, 0, true, payload)
    }

    /// Like [`Producer::publish_urgent`] with a sub-key.
    pub fn publish_urgent_keyed(
        &mut self,
        key: EventKey,
        sub_key: u64,
        payload: T,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, sub_key, true, payload)
    }

    /// Publishes as many events from `events` as fit in the ring, with one
    /// tail store, and returns how many it took; the rest stay in the
    /// iterator (not counted as drops: the caller still holds them).
    ///
    /// ```
    /// use ringfold::{Engine, Value};
    /// let engine = Engine::<Value>::builder().build()?;
    /// let key = engine.key("data:rows:inserted")?;
    /// let mut producer = engine.producer()?;
    /// let mut rows = (0..10u64).map(|i| (key, Value::from(i)));
    /// assert_eq!(producer.publish_many(&mut rows)?, 10);
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn publish_many(
        &mut self,
        events: &mut impl Iterator<Item = (EventKey, T)>,
    ) -> Result<usize, Error> {
        if self.shared.state.load(Ordering::Relaxed) & CLOSED != 0 {
            return Err(Error::ShutDown);
        }
        let stamp = self.stamp();
        // One snapshot read per call: keys at or above it are not interned
        // in this engine and are rejected (counted) rather than sent.
        let known = self.shared.interner.name_count() as u32;
        // Only whole events: as many as the free slots hold.
        let per_event = if stamp == 0 { 1 } else { 3 };
        let fit = (self.ring.ring().capacity() - self.ring.refresh_len()) / per_event;
        let lane = &self.lane;
        let mut accepted = 0;
        let mut slots = events
            .take(fit)
            .filter_map(|(key, payload)| {
                if key.name_id() < known {
                    accepted += 1;
                    Some(Outgoing {
                        key,
                        urgent: false,
                        sub_key: 0,
                        stamp,
                        payload,
                    })
                } else {
                    lane.count_drop(&lane.invalid_name, None);
                    None
                }
            })
            .flat_map(Outgoing::into_slots);
        let written = self.ring.push_many(&mut slots);
        drop(slots);
        if written > 0 {
            self.count_ext((per_event - 1) * accepted);
            if let Err(taken_back) = self.after_push(false) {
                // The engine closed under us and the events were not
                // drained: they were never accepted.
                self.lane
                    .shut_down
                    .fetch_add(taken_back.len() as u64, Ordering::Relaxed);
                return Err(Error::ShutDown);
            }
        }
        Ok(accepted)
    }

    /// True once the engine has begun shutting down.
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Relaxed) & CLOSED != 0
    }

    /// Keys below `known_names` are valid; refresh when a key is above it.
    #[cold]
    #[inline]
    fn is_known(&mut self, key: EventKey) -> bool {
        key.name_id() < self.known_names
            || (self.refresh_known() && key.name_id() < self.known_names)
    }

    #[cold]
    fn refresh_known(&mut self) -> bool {
        let now = self.shared.interner.name_count() as u32;
        let grew = now > self.known_names;
        self.known_names = now;
        grew
    }

    /// Nanoseconds since the epoch plus one in precise mode; 0 otherwise.
    #[inline]
    fn stamp(&self) -> u64 {
        if self.shared.config.precise_timestamps {
            self.read_clock()
        } else {
            0
        }
    }

    #[cold]
    #[inline(never)]
    fn read_clock(&self) -> u64 {
        let nanos = self.shared.interner.epoch().elapsed().as_nanos() as u64;
        nanos.saturating_add(1)
    }

    /// Counts extension slots just pushed. Only this producer writes the
    /// counter, so a load and a store do (no read-modify-write).
    #[inline]
    fn count_ext(&self, n: usize) {
        if n > 0 {
            let ext = &self.lane.ext_pushed;
            ext.store(ext.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
        }
    }

    /// Pushes all slots of `out`, or hands it back if they do not fit.
    #[inline]
    fn try_push(&mut self, out: Outgoing<T>) -> Result<(), Outgoing<T>> {
        match out.slots() {
            1 => self
                .ring
                .push_all(1, out, |out| std::iter::once(out.into_event_slot())),
            n => self.try_push_extended(n, out),
        }
    }

    /// An event with extension slots (a large sub-key, a stamp).
    #[cold]
    #[inline(never)]
    fn try_push_extended(&mut self, n: usize, out: Outgoing<T>) -> Result<(), Outgoing<T>> {
        self.ring.push_all(n, out, Outgoing::into_slots)?;
        self.count_ext(n - 1);
        Ok(())
    }

    /// The publish path. Inlined into the caller, with every uncommon case
    /// (unknown key, closed engine, stamps, wide sub-keys, full ring,
    /// sleeping flusher) out of line, so the common case is a handful of
    /// instructions and no call.
    #[inline(always)]
    fn publish_record(
        &mut self,
        key: EventKey,
        sub_key: u64,
        urgent: bool,
        payload: T,
    ) -> Result<(), PublishError<T>> {
        if !self.is_known(key) {
            return Err(self.reject_invalid(payload));
        }
        // Cheap early out; the exact check is the one after the push.
        if self.shared.state.load(Ordering::Relaxed) & CLOSED != 0 {
            return Err(self.reject_closed(payload));
        }
        let out = Outgoing {
            key,
            urgent,
            sub_key,
            stamp: self.stamp(),
            payload,
        };
        if let Err(out) = self.try_push(out) {
            self.push_when_full(out)?;
        }
        // Urgent and passthrough events must not wait for the next tick.
        let urgent = urgent || key.wakes();
        if urgent {
            // Tell a flusher about to park that this ring holds an event
            // that must not wait for the high-water mark. Release: a
            // flusher that consumes the hint (AcqRel swap) sees our tail.
            // The barrier in `after_push` orders this store before our
            // state check (the Dekker pair of the flusher's re-check).
            self.lane.wake_hint.store(true, Ordering::Release);
        }
        match self.after_push(urgent) {
            Ok(()) => Ok(()),
            Err(taken_back) => self.closed_under_us(taken_back),
        }
    }

    /// An unknown key: counted, and the payload handed back.
    #[cold]
    #[inline(never)]
    fn reject_invalid(&self, payload: T) -> PublishError<T> {
        self.lane.count_drop(&self.lane.invalid_name, None);
        PublishError::InvalidName(payload)
    }

    /// A closed engine: counted, and the payload handed back.
    #[cold]
    #[inline(never)]
    fn reject_closed(&self, payload: T) -> PublishError<T> {
        self.lane.count_drop(&self.lane.shut_down, None);
        PublishError::ShutDown(payload)
    }

    /// The engine closed between our push and its final drain: our event
    /// was taken back and is returned.
    #[cold]
    #[inline(never)]
    fn closed_under_us(&self, mut taken_back: Vec<T>) -> Result<(), PublishError<T>> {
        self.lane.shut_down.fetch_add(1, Ordering::Relaxed);
        match taken_back.pop() {
            Some(payload) => Err(PublishError::ShutDown(payload)),
            // Unreachable by the protocol (our event is the one taken
            // back); nothing to return but the fact.
            None => Ok(()),
        }
    }

    /// The second half of every publish: the Dekker check against a parked
    /// or closing flusher. Returns the records taken back if the engine
    /// closed before draining them.
    #[inline]
    fn after_push(&mut self, urgent: bool) -> Result<(), Vec<T>> {
        // Store-load barrier: orders our tail store (and urgent hint) before
        // the load of the state word below; the flusher runs the heavy half
        // between setting PARKED/DEEP (or seeing CLOSED) and re-reading the
        // tails. At least one side sees the other's store. On Linux this is
        // only a compiler barrier (see barrier.rs).
        barrier::light();
        let state = self.shared.state.load(Ordering::Relaxed);
        if state == 0 {
            return Ok(());
        }
        self.after_push_slow(state, urgent)
    }

    #[cold]
    #[inline(never)]
    fn after_push_slow(&mut self, state: usize, urgent: bool) -> Result<(), Vec<T>> {
        if state & CLOSED != 0 {
            return match self.take_back() {
                taken if taken.is_empty() => Ok(()),
                taken => Err(taken),
            };
        }
        let wake = state & DEEP != 0
            || urgent
            || (state & PARKED != 0
                && self.ring.len_upper_bound() >= self.shared.config.high_water
                && self.ring.refresh_len() >= self.shared.config.high_water);
        if wake && self.shared.wake_flusher() && !urgent && state & DEEP == 0 {
            self.shared
                .high_water_wakeups
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The engine closed after our push: wait until the flusher has done its
    /// final drain and handed the reading end back, then take back whatever
    /// it did not drain (only events whose publish saw CLOSED, i.e. ours).
    #[cold]
    fn take_back(&mut self) -> Vec<T> {
        self.shared.wait_stopped();
        let mut taken = Vec::new();
        let mut ext = 0;
        if let Some(consumer) = lock(&self.lane.orphan).as_mut() {
            consumer.drain(|slot| match slot.into_payload() {
                Some(payload) => taken.push(payload),
                None => ext += 1,
            });
        }
        self.lane.ext_popped.fetch_add(ext, Ordering::Relaxed);
        self.lane
            .reclaimed
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        taken
    }

    /// Ring full: drop-newest, or wait (bounded) for space.
    #[cold]
    #[inline(never)]
    fn push_when_full(&mut self, out: Outgoing<T>) -> Result<(), PublishError<T>> {
        let urgent = out.urgent;
        let prefix = Some(out.key.prefix_id());
        let wait = match (urgent, self.shared.config.on_full) {
            // A subscriber publishing from the flusher thread must never
            // wait for the flusher: that would be waiting for itself.
            _ if self.shared.on_flusher_thread() => Duration::ZERO,
            (true, _) => self.shared.config.urgent_wait,
            (false, FullPolicy::Block(timeout)) => timeout,
            (false, FullPolicy::DropNewest) => Duration::ZERO,
        };
        // Counts the rejection under its reason.
        let give_up = |lane: &Lane<T>| {
            let counter = if urgent {
                &lane.urgent_timeout
            } else {
                &lane.full
            };
            lane.count_drop(counter, prefix);
        };
        if wait.is_zero() {
            give_up(&self.lane);
            return Err(PublishError::Full(out.payload));
        }
        // First a short adaptive wait: wake the flusher and yield the core
        // a few times. A drain hands slots back as it goes, so a producer
        // that outruns the flusher for a moment usually finds room within a
        // few yields, without the futex park/unpark round trip (tens of
        // microseconds on a VM) that the loop below costs.
        let mut out = out;
        self.shared.wake_flusher();
        for _ in 0..FULL_YIELDS {
            sync::yield_now();
            match self.try_push(out) {
                Ok(()) => return Ok(()),
                Err(back) => out = back,
            }
        }
        let deadline = Instant::now() + wait;
        *lock(&self.lane.waiter) = Some(sync::current());
        let result = loop {
            if self.shared.state.load(Ordering::Relaxed) & CLOSED != 0 {
                self.lane.count_drop(&self.lane.shut_down, None);
                break Err(PublishError::ShutDown(out.payload));
            }
            self.shared.wake_flusher();
            self.ring.announce_waiting(true);
            match self.try_push(out) {
                Ok(()) => break Ok(()),
                Err(back) => out = back,
            }
            let now = Instant::now();
            if now >= deadline {
                give_up(&self.lane);
                break Err(PublishError::Full(out.payload));
            }
            sync::park_timeout(deadline - now);
        };
        self.ring.announce_waiting(false);
        result
    }
}

impl<T: Send + 'static> Drop for Producer<T> {
    fn drop(&mut self) {
        // Release: our last tail store happens-before the flusher's Acquire
        // load of `gone`, so its drain after seeing `gone` sees everything.
        self.lane.gone.store(true, Ordering::Release);
        // A flusher in DEEP sleep would otherwise keep the dead lane (and
        // its ring memory) registered until it next wakes.
        if self.shared.state.load(Ordering::Relaxed) & DEEP != 0 {
            self.shared.wake_flusher();
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.ring().capacity())
            .field("len", &self.ring.len_upper_bound())
            .finish()
    }
}
