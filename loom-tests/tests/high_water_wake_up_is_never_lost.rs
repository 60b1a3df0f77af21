//! Model 2: the flusher's sleep protocol (`Flusher::sleep` against
//! `Producer::after_push`).
//!
//! Property: a producer that publishes while the flusher is going to sleep
//! (announce DEEP/PARKED, re-check the rings, park) never leaves it asleep
//! with work pending: either the flusher's re-check sees the new record or
//! the producer sees the announcement and wakes it.
//!
//! Under loom the flusher's timed park never times out (`sync::park_timeout`
//! is a plain park), the tick and the window are an hour, and nobody calls
//! `flush` or `shutdown` before delivery is observed: the only way an event
//! can reach the subscriber is a producer wake-up. The checker thread parks
//! until the subscriber unparks it, so a lost wake-up leaves every thread
//! parked and loom reports a deadlock. `--cfg ringfold_mutation="no_recheck"`
//! removes the flusher's re-check and this model then fails.
//!
//! Two events, `Policy::batch(1h, 2)`, high-water mark 1: the first event
//! is taken by a flusher that is awake or sleeping DEEP (nothing pending:
//! any publish wakes it) and is held in the window; the flusher then sleeps
//! PARKED (only a producer crossing its high-water mark wakes it), and the
//! second event must wake it to complete the batch.
#![cfg(ringfold_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{model, HOUR};
use ringfold::{Batch, Engine, Policy};

/// Interleavings in which the flusher was asleep PARKED and the second
/// publish crossed the mark and woke it (summed over all runs).
static HIGH_WATER_WAKEUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn producer_crossing_high_water_always_wakes_a_sleeping_flusher() {
    model(|| {
        let delivered = Arc::new(AtomicUsize::new(0));
        let checker = thread::current();
        let seen = delivered.clone();
        let engine = Engine::<u64>::builder()
            .ring_capacity(2)
            .high_water(1)
            .tick(HOUR)
            .default_policy(Policy::batch(HOUR, 2))
            .subscriber(move |batch: &Batch<u64>| {
                seen.fetch_add(batch.len(), Ordering::Release);
                checker.unpark();
            })
            .build()
            .unwrap();
        let key = engine.key("m:wake").unwrap();
        let mut producer = engine.producer().unwrap();
        let publisher = thread::spawn(move || {
            producer.publish_key(key, 1u64).unwrap();
            producer.publish_key(key, 2u64).unwrap();
            // Handed back, not dropped: a dropped producer is a reason for
            // the flusher not to park, which would hide a lost wake-up.
            producer
        });
        // No flush, no shutdown: only a wake-up can deliver.
        while delivered.load(Ordering::Acquire) < 2 {
            thread::park();
        }
        let producer = publisher.join().unwrap();
        let woken = engine.stats().high_water_wakeups;
        assert!(woken <= 1, "one publish can cross the mark, not {woken}");
        HIGH_WATER_WAKEUPS.fetch_add(woken, std::sync::atomic::Ordering::Relaxed);
        drop(producer);
        let stats = engine.shutdown().unwrap();
        assert_eq!(stats.sealed, 2);
        assert_eq!(stats.batches, 1, "one batch of two events");
    });
    // The model is only worth something if the PARKED path was explored.
    assert!(
        HIGH_WATER_WAKEUPS.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no interleaving exercised the high-water wake-up"
    );
}
