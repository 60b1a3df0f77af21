//! Bounded single-producer single-consumer ring.
//!
//! The algorithm is the classic Lamport queue with the two refinements that
//! make it fast in practice (rigtorp's SPSCQueue, rtrb):
//!
//! * `head` (written by the consumer) and `tail` (written by the producer)
//!   live on separate cache lines, so the two sides never false-share;
//! * each side keeps a private copy of the *other* side's index and re-reads
//!   the shared atomic only when that copy says "full" (producer) or
//!   "empty" (consumer). In steady state a push touches only producer-owned
//!   memory.
//!
//! Both ends are batched: [`Consumer::drain`] reads `tail` once, consumes the
//! whole range and releases it with one `head` store; [`Producer::push_many`]
//! writes a run of slots and publishes them with one `tail` store.
//!
//! Positions are free-running `usize` counters (never reduced modulo the
//! capacity); the slot index is `pos & mask`. `tail - head` is the number of
//! readable slots, which also makes `tail` the exact count of items ever
//! accepted: the stats use it instead of a per-event counter.
//!
//! This module holds all of the crate's raw slot handling; every `unsafe`
//! block carries the reason it is sound.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{fence, Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// Memory ordering for publishing slots. The test-only `ringfold_mutation`
/// cfg weakens it so the loom model can show that it then fails.
#[cfg(not(ringfold_mutation = "ring_relaxed"))]
const PUBLISH: Ordering = Ordering::Release;
#[cfg(ringfold_mutation = "ring_relaxed")]
const PUBLISH: Ordering = Ordering::Relaxed;

/// Shared state of one ring.
pub(crate) struct Ring<T> {
    /// Next position the consumer will read. Written only by the consumer
    /// (Release, after it has moved the items out), read by the producer
    /// (Acquire) when its cached copy says the ring is full.
    head: CachePadded<AtomicUsize>,
    /// Next position the producer will write. Written only by the producer
    /// (Release, after the slots are initialised), read by the consumer
    /// (Acquire) once per drain.
    tail: CachePadded<AtomicUsize>,
    /// Set by the producer when it parks waiting for space; the consumer
    /// checks it after releasing slots (see [`Consumer::drain`]).
    producer_waiting: AtomicBool,
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: the ring hands each `T` from exactly one producer thread to exactly
// one consumer thread; slots are only accessed by the side that owns them
// according to the head/tail protocol, so sharing the ring needs `T: Send`
// only.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above; the ring owns its `T`s.
unsafe impl<T: Send> Send for Ring<T> {}

/// Creates a ring and its two ends. `capacity` must be a power of two of at
/// least 2 (the builder validates it).
pub(crate) fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    debug_assert!(capacity.is_power_of_two() && capacity >= 2);
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let ring = Arc::new(Ring {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        producer_waiting: AtomicBool::new(false),
        mask: capacity - 1,
        slots,
    });
    (
        Producer {
            ring: ring.clone(),
            tail: 0,
            cached_head: 0,
            limit: capacity,
        },
        Consumer {
            ring,
            head: 0,
            cached_tail: 0,
        },
    )
}

impl<T> Ring<T> {
    /// Capacity in slots.
    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Number of items ever pushed (exact once the producer is quiescent).
    pub(crate) fn pushed(&self) -> usize {
        self.tail.load(Ordering::Acquire)
    }

    /// Number of items ever consumed.
    pub(crate) fn popped(&self) -> usize {
        self.head.load(Ordering::Acquire)
    }

    #[inline(always)]
    fn slot(&self, pos: usize) -> &UnsafeCell<MaybeUninit<T>> {
        debug_assert_eq!(self.slots.len(), self.mask + 1);
        // SAFETY: `slots` has `mask + 1` elements (a power of two, set once
        // in `channel` and never changed), so `pos & mask` is in bounds.
        // Skips the bounds check on the per-event path of both ends.
        unsafe { self.slots.get_unchecked(pos & self.mask) }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both ends are gone (we are the last Arc), so nothing races; drop
        // the items that were pushed but never consumed.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        for pos in head..tail {
            self.slot(pos).with_mut(|p| {
                // SAFETY: slots in head..tail were initialised by the producer
                // and not yet moved out by the consumer; we are the sole
                // owner now, and each is dropped exactly once.
                unsafe { (*p).assume_init_drop() }
            });
        }
    }
}

/// The writing end. Owned by one producer thread at a time (`Send`, not
/// `Sync`, because it is not `Clone` and all methods take `&mut self`).
pub(crate) struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Private copy of `ring.tail` (we are its only writer).
    tail: usize,
    /// Last value of `ring.head` we read; refreshed only when it says full.
    cached_head: usize,
    /// `cached_head + capacity`: the tail at which the ring is full as far
    /// as we know, so the free-space check of a push is one subtraction of
    /// two fields of this struct (rtrb's and rigtorp's cached index).
    limit: usize,
}

impl<T> Producer<T> {
    /// Pushes one item, or hands it back if the ring is full.
    #[cfg(any(test, ringfold_loom))]
    #[inline]
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        self.push_all(1, item, std::iter::once)
    }

    /// Pushes the `n` items `items(value)` yields, all or none, with one
    /// tail store (so the consumer sees all of them or none). If fewer than
    /// `n` slots are free, even after re-reading the consumer's head, hands
    /// `value` back untouched. Items beyond the `n`-th are not written.
    #[inline]
    pub(crate) fn push_all<U, I>(
        &mut self,
        n: usize,
        value: U,
        items: impl FnOnce(U) -> I,
    ) -> Result<(), U>
    where
        I: Iterator<Item = T>,
    {
        if self.free_slots_cached() < n {
            // Acquire pairs with the consumer's Release head store: once we
            // see the new head, the consumer has finished moving those items
            // out, so overwriting their slots is safe.
            self.refresh_head();
            if self.free_slots_cached() < n {
                return Err(value);
            }
        }
        self.write_and_publish(n, &mut items(value));
        Ok(())
    }

    /// Pushes up to the free space from `items` and publishes them with one
    /// tail store. Items that do not fit stay in the iterator.
    pub(crate) fn push_many(&mut self, items: &mut impl Iterator<Item = T>) -> usize {
        let mut free = self.free_slots_cached();
        if free < self.ring.capacity() {
            // One head read per batch: take all the space there really is.
            self.refresh_head();
            free = self.free_slots_cached();
        }
        self.write_and_publish(free, items)
    }

    /// Writes up to `max` items (`max` no more than the free slots) and
    /// publishes them with one tail store; returns how many it wrote.
    #[inline(always)]
    fn write_and_publish(&mut self, max: usize, items: &mut impl Iterator<Item = T>) -> usize {
        let mut written = 0;
        while written < max {
            let Some(item) = items.next() else { break };
            let pos = self.tail.wrapping_add(written);
            self.ring.slot(pos).with_mut(|p| {
                // SAFETY: pos - head < capacity (written < max <= free), so
                // the slot is outside the consumer's readable range and only
                // this producer writes it.
                unsafe { (*p).write(item) };
            });
            written += 1;
        }
        if written > 0 {
            self.tail = self.tail.wrapping_add(written);
            // Release: the slot writes above happen-before any consumer
            // that observes this tail.
            self.ring.tail.store(self.tail, PUBLISH);
        }
        written
    }

    #[inline(always)]
    fn free_slots_cached(&self) -> usize {
        self.limit.wrapping_sub(self.tail)
    }

    /// Re-reads the consumer's head. Acquire pairs with the consumer's
    /// Release head store: once we see the new head, the consumer has
    /// finished moving those items out, so overwriting their slots is safe.
    /// Cold: in steady state the cached view says full once per lap.
    #[cold]
    #[inline(never)]
    fn refresh_head(&mut self) {
        self.cached_head = self.ring.head.load(Ordering::Acquire);
        self.limit = self.cached_head.wrapping_add(self.ring.capacity());
    }

    /// Occupied slots as seen from the producer's cached head (an upper
    /// bound of the true length).
    #[inline(always)]
    pub(crate) fn len_upper_bound(&self) -> usize {
        self.tail.wrapping_sub(self.cached_head)
    }

    /// Re-reads the consumer's head and returns the exact occupancy at that
    /// moment (it can only shrink afterwards).
    pub(crate) fn refresh_len(&mut self) -> usize {
        self.refresh_head();
        self.tail.wrapping_sub(self.cached_head)
    }

    /// Announces that this producer is about to park for space.
    ///
    /// The SeqCst fence orders the flag store before the re-check of `head`
    /// the caller makes next; the consumer fences between its head store and
    /// its load of the flag. Of the two, at least one sees the other: either
    /// we see the freed space, or the consumer sees the flag and unparks us.
    pub(crate) fn announce_waiting(&self, waiting: bool) {
        self.ring.producer_waiting.store(waiting, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The shared ring (for stats and registration).
    pub(crate) fn ring(&self) -> &Arc<Ring<T>> {
        &self.ring
    }
}

/// How often (in items) a drain releases the slots it has consumed so far.
const RELEASE_EVERY: usize = 256;

/// The reading end, owned by the flusher.
pub(crate) struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Private copy of `ring.head` (we are its only writer).
    head: usize,
    /// Last value of `ring.tail` we read.
    cached_tail: usize,
}

impl<T> Consumer<T> {
    /// True if the producer may have published something since the last
    /// drain. One Relaxed load: the cheap idle check of a sweep.
    #[inline]
    pub(crate) fn maybe_ready(&self) -> bool {
        self.ring.tail.load(Ordering::Relaxed) != self.head
    }

    /// Moves every item published so far (as of one read of `tail`) into
    /// `f`, then releases the whole range with one head store. Returns
    /// whether the producer had announced it was waiting for space, so the
    /// caller can wake it.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(T)) -> DrainOutcome {
        // Acquire pairs with the producer's Release tail store: every slot
        // below `tail` is fully written.
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
        if self.head == self.cached_tail {
            return DrainOutcome::default();
        }
        /// Releases what was consumed even if `f` unwinds, so no item is
        /// ever read twice (the double-drop bug class of peers' `clear`).
        /// It owns the running position (a local the loop keeps in a
        /// register, not a store through `&mut self.head` per item) and
        /// writes it back to the consumer on drop.
        struct Release<'a, T> {
            ring: &'a Ring<T>,
            head: usize,
            out: &'a mut usize,
        }
        impl<T> Drop for Release<'_, T> {
            fn drop(&mut self) {
                *self.out = self.head;
                // Release: our moves out of the slots happen-before the
                // producer reusing them (it Acquire-loads head).
                self.ring.head.store(self.head, PUBLISH);
            }
        }
        let end = self.cached_tail;
        let taken = end.wrapping_sub(self.head);
        {
            let mut guard = Release {
                ring: &self.ring,
                head: self.head,
                out: &mut self.head,
            };
            while guard.head != end {
                let item = guard.ring.slot(guard.head).with(|p| {
                    // SAFETY: head < tail (as loaded with Acquire), so the slot
                    // was initialised by the producer and is not yet consumed;
                    // advancing head right after reading ensures it is moved
                    // out exactly once.
                    unsafe { (*p).assume_init_read() }
                });
                guard.head = guard.head.wrapping_add(1);
                if guard.head % RELEASE_EVERY == 0 {
                    // A long drain hands space back as it goes, so a
                    // producer waiting for room resumes before the drain
                    // ends. Release, as in the guard.
                    guard.ring.head.store(guard.head, PUBLISH);
                }
                f(item);
            }
        }
        // Pairs with `Producer::announce_waiting` (store-load Dekker).
        fence(Ordering::SeqCst);
        DrainOutcome {
            taken,
            producer_waiting: self.ring.producer_waiting.load(Ordering::Relaxed),
        }
    }

    /// Items published and not yet drained, as of now.
    pub(crate) fn pending(&self) -> usize {
        self.ring
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }
}

/// What one [`Consumer::drain`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DrainOutcome {
    /// Items moved out.
    pub(crate) taken: usize,
    /// The producer had announced it is parked waiting for space.
    pub(crate) producer_waiting: bool,
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomic;

    #[test]
    fn push_until_full_then_drain_wraps() {
        let (mut p, mut c) = channel(4);
        for round in 0..5 {
            for i in 0..4 {
                p.push(round * 10 + i).unwrap();
            }
            assert_eq!(p.push(99), Err(99), "fifth push must report full");
            let mut got = vec![];
            c.drain(|v| got.push(v));
            assert_eq!(got, (0..4).map(|i| round * 10 + i).collect::<Vec<_>>());
        }
        assert_eq!(p.ring().pushed(), 20);
    }

    #[test]
    fn push_many_stops_at_capacity_and_keeps_the_rest() {
        let (mut p, mut c) = channel(8);
        let mut it = 0..20;
        assert_eq!(p.push_many(&mut it), 8);
        assert_eq!(it.next(), Some(8), "unpushed items stay in the iterator");
        let mut got = vec![];
        c.drain(|v| got.push(v));
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }

    static DROPS: StdAtomic = StdAtomic::new(0);
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn undrained_items_are_dropped_exactly_once() {
        DROPS.store(0, std::sync::atomic::Ordering::SeqCst);
        let (mut p, mut c) = channel(8);
        for _ in 0..6 {
            assert!(p.push(Counted).is_ok());
        }
        let mut n = 0;
        c.drain(|_v| n += 1); // drops 6 here
        for _ in 0..3 {
            assert!(p.push(Counted).is_ok());
        }
        drop(p);
        drop(c); // ring drop drops the 3 pending ones
        assert_eq!(n, 6);
        assert_eq!(DROPS.load(std::sync::atomic::Ordering::SeqCst), 9);
    }

    #[test]
    fn panicking_consumer_does_not_double_read() {
        let (mut p, mut c) = channel(8);
        for i in 0..5 {
            p.push(i).unwrap();
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.drain(|v| {
                if v == 2 {
                    panic!("boom")
                }
            })
        }));
        assert!(r.is_err());
        let mut rest = vec![];
        c.drain(|v| rest.push(v));
        assert_eq!(rest, vec![3, 4], "items up to the panic count as consumed");
    }

    #[test]
    fn cross_thread_fifo() {
        let (mut p, mut c) = channel(16);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                if p.push(i).is_ok() {
                    i += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0;
        while expect < N {
            c.drain(|v| {
                assert_eq!(v, expect);
                expect += 1;
            });
            std::thread::yield_now();
        }
        t.join().unwrap();
    }
}
