//! Model 3: `Engine::flush` (`Shared::flush` against the flusher's
//! `take_flush_request` / sweep / acknowledgement).
//!
//! Property: an event whose publish returned `Ok` before `flush()` was
//! called has been delivered to every subscriber when `flush()` returns,
//! also while another thread flushes concurrently.
//!
//! The subscriber records payloads with Relaxed `fetch_or`s and the checks
//! use Relaxed loads, so a check only passes if the delivery
//! happens-before `flush()`'s return through the engine's own
//! synchronisation (loom would otherwise let the load see the old value).
#![cfg(ringfold_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{model, model_capped, recording_engine, HOUR};
use ringfold::{Engine, Policy};

fn engine(seen: Arc<AtomicUsize>) -> Engine<u64> {
    // A long window: without the flush nothing would be emitted.
    recording_engine(Policy::batch(HOUR, 8), seen, None)
}

#[test]
fn flush_returns_after_delivering_what_was_published_before_it() {
    model(|| {
        let seen = Arc::new(AtomicUsize::new(0));
        let engine = engine(seen.clone());
        let key = engine.key("m:flush").unwrap();
        let mut producer = engine.producer().unwrap();
        producer.publish_key(key, 1).unwrap();
        engine.flush().unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), 1 << 1, "flush returned early");
        drop(producer);
        engine.shutdown().unwrap();
    });
}

#[test]
fn two_concurrent_flushes_each_deliver_what_preceded_them() {
    // Five threads (two flushers, a producer, the flusher, a delivery
    // thread): capped at bound 1 in CI, see `model_capped`.
    model_capped(1, || {
        let seen = Arc::new(AtomicUsize::new(0));
        let engine = engine(seen.clone());
        let key = engine.key("m:flush").unwrap();
        let mut other = engine.producer().unwrap();
        let mut mine = engine.producer().unwrap();
        let flusher2 = {
            let engine = engine.clone();
            let seen = seen.clone();
            thread::spawn(move || {
                other.publish_key(key, 2).unwrap();
                engine.flush().unwrap();
                assert_ne!(
                    seen.load(Ordering::Relaxed) & 1 << 2,
                    0,
                    "flush returned early"
                );
            })
        };
        mine.publish_key(key, 1).unwrap();
        engine.flush().unwrap();
        assert_ne!(
            seen.load(Ordering::Relaxed) & 1 << 1,
            0,
            "flush returned early"
        );
        flusher2.join().unwrap();
        drop(mine);
        let stats = engine.shutdown().unwrap();
        assert_eq!(stats.delivered, 2);
        assert_eq!(seen.load(Ordering::Relaxed), 1 << 1 | 1 << 2);
    });
}
