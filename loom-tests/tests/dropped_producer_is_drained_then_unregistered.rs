//! Model 4: producer drop racing a sweep (`Producer::drop` against
//! `Flusher::sweep` / `retire`).
//!
//! Property: a producer dropped while the flusher sweeps its ring has its
//! ring drained completely before the lane is unregistered: every event it
//! published is delivered once, none is lost, and the lane is gone from
//! the registry afterwards. The ring's slots are loom cells and its
//! `Arc`s loom `Arc`s, so a slot touched after the ring was freed, or a
//! leaked ring, fails the model too.
#![cfg(ringfold_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{model_capped, recording_engine};
use ringfold::Policy;

#[test]
fn dropped_producer_ring_is_drained_completely_then_unregistered() {
    // With the delivery thread added, bound 2 ran past 20 minutes in a
    // fresh-clone CI run: capped at bound 1 in CI, see `model_capped`.
    model_capped(1, || {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        // Passthrough: every event goes out on the sweep that takes it, so
        // the sweeps woken by the publishes race the drop.
        let engine = recording_engine(Policy::Passthrough, seen.clone(), Some(count.clone()));
        let key = engine.key("m:drop").unwrap();
        let mut producer = engine.producer().unwrap();
        let publisher = thread::spawn(move || {
            producer.publish_key(key, 1).unwrap();
            producer.publish_key(key, 2).unwrap();
            drop(producer);
        });
        publisher.join().unwrap();
        // Both publishes returned Ok and the producer is gone: after a
        // flush, both are delivered and the lane has been retired.
        engine.flush().unwrap();
        assert_eq!(
            seen.load(Ordering::Relaxed),
            1 << 1 | 1 << 2,
            "lost an event"
        );
        assert_eq!(count.load(Ordering::Relaxed), 2, "duplicated an event");
        let stats = engine.stats();
        assert_eq!(stats.producers, 0, "drained lane not unregistered");
        assert_eq!(stats.published, 2);
        assert_eq!(stats.pending, 0);
        engine.shutdown().unwrap();
    });
}
