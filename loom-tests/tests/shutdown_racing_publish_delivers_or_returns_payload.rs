//! Model 6: shutdown racing publish (`Handle::shutdown` and the flusher's
//! final drain / `finish` against `Producer::after_push` / `take_back`).
//!
//! Property: each publish racing `shutdown()` either returns `Ok` and its
//! event is delivered (exactly once), or returns `PublishError::ShutDown`
//! with its own payload and the event is not delivered. The counters agree.
#![cfg(ringfold_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{model, recording_engine, HOUR};
use ringfold::{Policy, PublishError};

#[test]
fn publish_racing_shutdown_is_delivered_or_handed_back() {
    model(|| {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let engine = recording_engine(Policy::batch(HOUR, 8), seen.clone(), Some(count.clone()));
        let key = engine.key("m:shutdown").unwrap();
        let mut producer = engine.producer().unwrap();
        let publisher = thread::spawn(move || {
            let results = [1u64, 2].map(|v| (v, producer.publish_key(key, v)));
            drop(producer);
            results
        });
        let stats = engine.shutdown().unwrap();
        let results = publisher.join().unwrap();
        let seen = seen.load(Ordering::Relaxed);
        let mut accepted = 0;
        for (v, result) in results {
            match result {
                Ok(()) => {
                    accepted += 1;
                    assert_ne!(seen & 1 << v, 0, "accepted event {v} was not delivered");
                }
                Err(PublishError::ShutDown(back)) => {
                    assert_eq!(back, v, "wrong payload handed back");
                    assert_eq!(seen & 1 << v, 0, "refused event {v} was delivered");
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(
            count.load(Ordering::Relaxed),
            accepted,
            "duplicated an event"
        );
        assert_eq!(stats.sealed, accepted as u64);
        let after = engine.stats();
        assert_eq!(after.published, accepted as u64);
        assert_eq!(after.dropped.shut_down, 2 - accepted as u64);
    });
}
