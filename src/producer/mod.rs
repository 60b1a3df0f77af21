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

use crate::error::{Error, PublishError, PublishManyError};
use crate::intern::EventKey;
use crate::lane::Lane;
use crate::record::{Outgoing, Slot};
use crate::ring;
use crate::shared::Shared;
use crate::state::Seen;
use crate::sync::{lock, Arc, Ordering};

mod full;

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
/// assert_eq!(engine.stats().sealed, 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Producer<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    lane: Arc<Lane<T>>,
    ring: ring::Producer<Slot<T>>,
    /// Ring occupancy at which a publish wakes a parked flusher
    /// (`Config::high_water_for` this ring's capacity).
    high_water: usize,
    /// Names of this engine known to be interned: a key whose id is below
    /// this passed `Interner::owns` already, so the hot path checks the
    /// engine tag and this bound without touching the interner (the count
    /// only grows; `owns_slow` refreshes it).
    known_names: usize,
    /// This engine's tag (`EventKey::engine`), copied from the interner.
    engine_tag: u32,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T: Send + 'static> Producer<T> {
    pub(crate) fn register(shared: Arc<Shared<T>>) -> Result<Producer<T>, Error> {
        let capacity = shared.config.ring_capacity;
        Self::register_with_capacity(shared, capacity)
    }

    /// A producer whose ring has `capacity` slots (validated by the caller:
    /// see `Config::check_ring_capacity`).
    pub(crate) fn register_with_capacity(
        shared: Arc<Shared<T>>,
        capacity: usize,
    ) -> Result<Producer<T>, Error> {
        if shared.state.peek().dead() {
            return Err(Error::FlusherDied(Box::new(shared.stats())));
        }
        let (ring, consumer) = ring::channel(capacity);
        let lane = Arc::new(Lane::new(ring.ring().clone()));
        if let Err(e) = shared.register_lane(lane.clone(), consumer) {
            // Refused because the engine closed, maybe by the flusher's
            // death (which closes it too): say which.
            if shared.state.peek().dead() {
                return Err(Error::FlusherDied(Box::new(shared.stats())));
            }
            return Err(e);
        }
        Ok(Producer {
            high_water: shared.config.high_water_for(capacity),
            known_names: shared.interner.name_count(),
            engine_tag: shared.interner.tag(),
            shared,
            lane,
            ring,
            _not_sync: PhantomData,
        })
    }

    /// Publishes `payload` under `name`, interning the name if needed.
    /// Prefer [`Producer::publish_key`] on hot paths. Takes anything that
    /// converts into the payload type, as [`Engine::publish`](crate::Engine::publish) does.
    pub fn publish(&mut self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        let payload = payload.into();
        match self.shared.interner.key(name) {
            Ok(key) => self.publish_key(key, payload),
            Err(Error::TooManyNames { .. }) => {
                self.lane.count_drop(&self.lane.drops.too_many_names, None);
                Err(PublishError::TooManyNames(payload))
            }
            Err(_) => {
                self.lane.count_drop(&self.lane.drops.invalid_name, None);
                Err(PublishError::InvalidName(payload))
            }
        }
    }

    /// Publishes under an interned key: the hot path. Takes anything that
    /// converts into the payload type, as [`Engine::publish_key`](crate::Engine::publish_key)
    /// does (for `T` itself the conversion is the identity and costs
    /// nothing).
    ///
    /// ```
    /// use ringfold::{Engine, Value};
    /// let engine = Engine::<Value>::builder().build()?;
    /// let key = engine.key("data:users:created")?;
    /// let mut producer = engine.producer()?;
    /// producer.publish_key(key, 7u64)?; // a u64 into an Engine<Value>
    /// producer.publish_key(key, Value::from("row"))?;
    /// assert_eq!(engine.shutdown()?.sealed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn publish_key(
        &mut self,
        key: EventKey,
        payload: impl Into<T>,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, 0, false, payload.into())
    }

    /// Publishes with a caller sub-key: under `Policy::latest`, events
    /// coalesce per `(name, sub_key)` (e.g. per message id).
    #[inline]
    pub fn publish_with_sub_key(
        &mut self,
        key: EventKey,
        sub_key: u64,
        payload: impl Into<T>,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, sub_key, false, payload.into())
    }

    /// Publishes an urgent event: the flusher is woken at once, and the
    /// event is delivered right after every earlier pending event of its
    /// prefix, in one batch with reason `Urgent`. On a full ring it waits up
    /// to `EngineBuilder::urgent_wait` instead of being dropped.
    pub fn publish_urgent(
        &mut self,
        key: EventKey,
        payload: impl Into<T>,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, 0, true, payload.into())
    }

    /// Like [`Producer::publish_urgent`] with a sub-key. Under
    /// `Policy::latest` the urgent event still comes last in its batch: a
    /// pending survivor with the same `(name, sub_key)` is superseded by it
    /// (left out and counted as folded), never replaced in place.
    pub fn publish_urgent_with_sub_key(
        &mut self,
        key: EventKey,
        sub_key: u64,
        payload: impl Into<T>,
    ) -> Result<(), PublishError<T>> {
        self.publish_record(key, sub_key, true, payload.into())
    }

    /// Publishes as many events from `events` as fit in the ring, with one
    /// tail store, and returns how many it published; the rest stay in the
    /// iterator (not counted as drops: the caller still holds them).
    /// Events it took but could not publish (a key not interned in this
    /// engine, or the engine shutting down) come back in the error with
    /// their payloads; see [`PublishManyError`].
    ///
    /// ```
    /// use ringfold::{Engine, Value};
    /// let engine = Engine::<Value>::builder().build()?;
    /// let key = engine.key("data:rows:inserted")?;
    /// let mut producer = engine.producer()?;
    /// let mut rows = (0..10u64).map(|i| (key, Value::from(i)));
    /// assert_eq!(producer.publish_many(&mut rows)?, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_many(
        &mut self,
        events: &mut impl Iterator<Item = (EventKey, T)>,
    ) -> Result<usize, PublishManyError<T>> {
        let state = self.shared.state.peek();
        if state.closed() {
            let rejected = Vec::new();
            return Err(if state.dead() {
                PublishManyError::FlusherDied { rejected }
            } else {
                PublishManyError::ShutDown { rejected }
            });
        }
        // Keys of another engine are rejected (counted) rather than sent.
        let interner = &self.shared.interner;
        // Only whole events: the next event is taken from the caller only
        // while the free slots hold the most it can need (3 with a stamp).
        let max_slots = if self.shared.interner.any_stamps() {
            3
        } else {
            1
        };
        let free = std::cell::Cell::new(self.ring.ring().capacity() - self.ring.refresh_len());
        // At most one clock read per call, and none unless an event is
        // stamped (precise mode, or a `latest` name).
        let epoch = self.shared.interner.epoch();
        let mut clock = 0;
        let mut ext = 0;
        let lane = &self.lane;
        let mut accepted = 0;
        let mut invalid = Vec::new();
        let mut slots = std::iter::from_fn(|| (free.get() >= max_slots).then(|| events.next())?)
            .filter_map(|(key, payload)| {
                if interner.owns(key) {
                    accepted += 1;
                    let stamp = if key.stamps() {
                        if clock == 0 {
                            clock = (epoch.elapsed().as_nanos() as u64).saturating_add(1);
                        }
                        clock
                    } else {
                        0
                    };
                    let out = Outgoing {
                        key,
                        urgent: false,
                        sub_key: 0,
                        stamp,
                        payload,
                    };
                    free.set(free.get() - out.slots());
                    ext += out.slots() - 1;
                    Some(out)
                } else {
                    lane.count_drop(&lane.drops.foreign_key, None);
                    invalid.push(payload);
                    None
                }
            })
            .flat_map(Outgoing::into_slots);
        let written = self.ring.push_many(&mut slots);
        drop(slots);
        if written > 0 {
            self.count_ext(ext);
            if let Err(mut taken_back) = self.after_push(false) {
                // The engine closed under us (shutdown, or the flusher
                // died) and the events were not drained: they were never
                // accepted.
                let dead = self.shared.state.peek().dead();
                let counter = if dead {
                    &self.lane.drops.flusher_died
                } else {
                    &self.lane.drops.shut_down
                };
                counter.fetch_add(taken_back.len() as u64, Ordering::Relaxed);
                invalid.append(&mut taken_back);
                return Err(if dead {
                    PublishManyError::FlusherDied { rejected: invalid }
                } else {
                    PublishManyError::ShutDown { rejected: invalid }
                });
            }
        }
        if invalid.is_empty() {
            Ok(accepted)
        } else {
            Err(PublishManyError::ForeignKey {
                accepted,
                rejected: invalid,
            })
        }
    }

    /// True once the engine has begun shutting down.
    pub fn is_closed(&self) -> bool {
        self.shared.state.peek().closed()
    }

    /// Nanoseconds since the epoch plus one if the key says so (precise
    /// mode, or a name whose policy needs publish order: `latest` picks
    /// survivors by stamp, see `fold`); 0 otherwise, without reading the
    /// clock. One bit test of the key, no load.
    #[inline]
    fn stamp(&self, key: EventKey) -> u64 {
        if key.stamps() {
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
        // The key's engine tag and id bound: a key of another engine is
        // refused, never delivered under this engine's name for its id.
        if !self.owns(key) {
            return Err(self.reject_foreign(payload));
        }
        // Cheap early out; the exact check is the one after the push. Kept
        // (one load and branch) although the exact check alone would refuse
        // too: that one takes the event back by waiting for the flusher to
        // stop, and a publish after `shutdown_timeout` gave up (or from the
        // flusher's own thread) must be refused at once, never wait.
        if self.shared.state.peek().closed() {
            return Err(self.reject_closed(payload));
        }
        let out = Outgoing {
            key,
            urgent,
            sub_key,
            stamp: self.stamp(key),
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

    /// `Interner::owns`, answered from the producer's own cache when the
    /// key is of a name interned before the cache was last refreshed.
    #[inline(always)]
    fn owns(&mut self, key: EventKey) -> bool {
        key.engine_tag() == self.engine_tag
            && ((key.name_id() as usize) < self.known_names || self.owns_slow(key))
    }

    /// A name newer than the cached count (or a foreign key): refresh the
    /// count from the interner and decide there.
    #[cold]
    #[inline(never)]
    fn owns_slow(&mut self, key: EventKey) -> bool {
        self.known_names = self.shared.interner.name_count();
        self.shared.interner.owns(key)
    }

    /// A key of another engine: counted, and the payload handed back.
    #[cold]
    #[inline(never)]
    fn reject_foreign(&self, payload: T) -> PublishError<T> {
        self.lane.count_drop(&self.lane.drops.foreign_key, None);
        PublishError::ForeignKey(payload)
    }

    /// A closed engine: counted, and the payload handed back, as
    /// `FlusherDied` if the flusher's death closed it, else `ShutDown`.
    #[cold]
    #[inline(never)]
    fn reject_closed(&self, payload: T) -> PublishError<T> {
        if self.shared.state.peek().dead() {
            self.lane.count_drop(&self.lane.drops.flusher_died, None);
            PublishError::FlusherDied(payload)
        } else {
            self.lane.count_drop(&self.lane.drops.shut_down, None);
            PublishError::ShutDown(payload)
        }
    }

    /// The engine closed between our push and its final drain: our event
    /// was taken back and is returned.
    #[cold]
    #[inline(never)]
    fn closed_under_us(&self, mut taken_back: Vec<T>) -> Result<(), PublishError<T>> {
        match taken_back.pop() {
            Some(payload) => Err(self.reject_closed(payload)),
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
        // The Dekker check (see state.rs): a store-load barrier, then one
        // Relaxed load of the state word.
        let state = self.shared.state.after_publish();
        if state.is_quiet() {
            return Ok(());
        }
        // The flusher parked until its next tick (not deep, not closing):
        // the steady state between sweeps under load, so this is inline
        // too. Nothing to do below the high-water mark; the cached
        // occupancy is an upper bound, so below it means below.
        if state.parked()
            && !state.deep()
            && !state.closed()
            && !urgent
            && self.ring.len_upper_bound() < self.high_water
        {
            return Ok(());
        }
        self.after_push_slow(state, urgent)
    }

    #[cold]
    #[inline(never)]
    fn after_push_slow(&mut self, state: Seen, urgent: bool) -> Result<(), Vec<T>> {
        if state.closed() {
            return match self.take_back() {
                taken if taken.is_empty() => Ok(()),
                taken => Err(taken),
            };
        }
        let wake = state.deep()
            || urgent
            || (state.parked()
                && self.ring.len_upper_bound() >= self.high_water
                && self.ring.refresh_len() >= self.high_water);
        if wake && self.shared.state.wake() && !urgent && !state.deep() {
            // Relaxed: a stats counter.
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
        self.shared.control.wait_stopped();
        let mut taken = Vec::new();
        let mut ext = 0;
        if let Some(consumer) = lock(&self.lane.orphan).as_mut() {
            consumer.drain(|slot| match slot.into_payload() {
                Some(payload) => taken.push(payload),
                None => ext += 1,
            });
        }
        // Relaxed: stats counters. The flusher has stopped (we waited for
        // it under the control mutex), so nothing else writes them now, and
        // a stats reader is ordered by the same mutex or sees the old value
        // (a snapshot is exact only at quiescent moments).
        self.lane.ext_popped.fetch_add(ext, Ordering::Relaxed);
        self.lane
            .reclaimed
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        taken
    }
}

impl<T: Send + 'static> Drop for Producer<T> {
    fn drop(&mut self) {
        // Counts the lane into the retirement backlog, then marks it gone
        // (Release: see `Shared::drop_lane`).
        self.shared.drop_lane(&self.lane);
        // A flusher in DEEP sleep would otherwise keep the dead lane (and
        // its ring memory) registered until it next wakes.
        if self.shared.state.peek().deep() {
            self.shared.state.wake();
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
