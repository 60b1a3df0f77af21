//! Model 4: producer drop racing a sweep (`Producer::drop` against
//! `Flusher::sweep` / `retire`).
//!
//! Property: a producer dropped while the flusher sweeps its ring has its
//! ring drained completely before the lane is unregistered: every event it
//! published is delivered exactly once, none is lost, and the lane is gone
//! from the registry afterwards. The ring's slots are loom cells and its
//! `Arc`s loom `Arc`s, so a slot touched after the ring was freed, or a
//! leaked ring, fails the model too.
//!
//! Two loom threads: the model thread publishes, drops the producer and
//! then drains a `Receiver` (no delivery thread), against the flusher,
//! whose sweeps (woken by the publishes) race the drop. A lost event is a
//! loom deadlock (the receiver waits for it forever; no timer runs under
//! loom), a duplicate fails `record_once` or the final `recv`.
#![cfg(ringfold_loom)]

use loom_tests::{model, receiving_engine, record_once};
use ringfold::Policy;

#[test]
fn dropped_producer_ring_is_drained_completely_then_unregistered() {
    model(|| {
        // Passthrough: every event goes out on the sweep that takes it, so
        // the sweeps woken by the publishes race the drop.
        let (engine, rx) = receiving_engine(Policy::Passthrough);
        let key = engine.key("m:drop").unwrap();
        let mut producer = engine.producer().unwrap();
        producer.publish_key(key, 1u64).unwrap();
        producer.publish_key(key, 2u64).unwrap();
        drop(producer);
        // Both publishes returned Ok and the producer is gone: both events
        // come out, each once, however the sweeps and the drop interleaved.
        let mut seen = 0;
        while seen != 1 << 1 | 1 << 2 {
            record_once(&rx.recv().expect("subscription closed early"), &mut seen);
        }
        // The flush makes the flusher take the lane's `gone` into account
        // (nothing is left for the receiver, so it does not wait on it).
        engine.flush().unwrap();
        let stats = engine.stats();
        assert_eq!(stats.producers, 0, "drained lane not unregistered");
        assert_eq!(stats.published, 2);
        assert_eq!(stats.sealed, 2);
        assert_eq!(stats.pending, 0);
        engine.shutdown().unwrap();
        // Closed by the shutdown: anything still queued is a duplicate.
        assert!(rx.recv().is_none(), "an event was delivered twice");
    });
}
