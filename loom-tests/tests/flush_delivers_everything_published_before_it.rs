//! Model 3: `Engine::flush` (`Shared::flush` against the flusher's
//! `take_flush_request` / sweep / acknowledgement).
//!
//! Property: an event whose publish returned `Ok` before `flush()` was
//! called has been delivered to every subscriber when `flush()` returns,
//! also while another thread flushes concurrently.
//!
//! A flush is two steps: the control plane (request, wake the flusher,
//! wait for its acknowledgement: `Engine::flush_queued`), after which
//! everything the flush covers is sealed and queued for its subscribers;
//! then a ticket that waits until each subscriber's queue has delivered
//! what was queued when it was taken (`Queue::wait_done`, modelled on its
//! own by `delivery_queue_flush_and_unsubscribe`). The models here:
//!
//! - one flusher, end to end through the public `flush()` with a callback
//!   subscriber on its own delivery thread. The subscriber records
//!   payloads with Relaxed `fetch_or`s and the check loads Relaxed, so it
//!   only passes if the delivery happens-before `flush()`'s return through
//!   the engine's own synchronisation (loom would otherwise let the load
//!   see the old value);
//! - two concurrent flushers, through the control-plane step only, so no
//!   delivery thread is scheduled (with one, bound 2 did not finish in 20
//!   minutes): each thread publishes its own event on its own prefix, and
//!   when its `flush_queued` returns, its own `Receiver` (subscribed to
//!   that prefix only) must already hold the batch with that event, even
//!   when the other thread's request came first or lands while the flusher
//!   is serving it. The queue is read under its mutex, so the check fails
//!   if the flusher acknowledged a request before queuing what it covers.
#![cfg(ringfold_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{model, record_once, recording_engine, HOUR};
use ringfold::loom_api::flush_queued;
use ringfold::{Engine, EventKey, Policy, Producer, Receiver, SubscribeOptions, TryRecvError};

#[test]
fn flush_returns_after_delivering_what_was_published_before_it() {
    model(|| {
        let seen = Arc::new(AtomicUsize::new(0));
        // A long window: without the flush nothing would be emitted.
        let engine = recording_engine(Policy::batch(HOUR, 8), seen.clone(), None);
        let key = engine.key("m:flush").unwrap();
        let mut producer = engine.producer().unwrap();
        producer.publish_key(key, 1u64).unwrap();
        engine.flush().unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), 1 << 1, "flush returned early");
        engine.shutdown().unwrap();
        // Dropped after the shutdown: a drop racing a sweep is model 4's.
        drop(producer);
    });
}

/// Publishes `payload` under `key`, flushes the control plane, and checks
/// that `rx` (subscribed to `key`'s prefix only) already holds it.
fn publish_flush_and_check(
    engine: &Engine<u64>,
    producer: &mut Producer<u64>,
    rx: &Receiver<u64>,
    key: EventKey,
    payload: u64,
) {
    producer.publish_key(key, payload).unwrap();
    assert!(flush_queued(engine));
    let mut seen = 0;
    loop {
        match rx.try_recv() {
            Ok(batch) => record_once(&batch, &mut seen),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Closed) => panic!("subscription closed early"),
        }
    }
    assert_eq!(
        seen,
        1 << payload,
        "flush returned before queuing {payload}"
    );
}

#[test]
fn two_concurrent_flushes_each_queue_what_preceded_them() {
    model(|| {
        let engine = Engine::<u64>::builder()
            .ring_capacity(2)
            .tick(HOUR)
            // A long window: without a flush nothing would be emitted.
            .default_policy(Policy::batch(HOUR, 8))
            .build()
            .unwrap();
        // Everything but the publishes and flushes is set up before the
        // second thread starts (names interned, lanes registered), and
        // the producers live until after the shutdown: a producer's drop
        // racing a sweep is model 4's property, not this one's.
        let rx_a = engine.receiver("a:*", SubscribeOptions::new("a")).unwrap();
        let rx_b = engine.receiver("b:*", SubscribeOptions::new("b")).unwrap();
        let key_a = engine.key("a:flush").unwrap();
        let key_b = engine.key("b:flush").unwrap();
        let mut mine = engine.producer().unwrap();
        let mut other = engine.producer().unwrap();
        let flusher2 = {
            let engine = engine.clone();
            thread::spawn(move || {
                publish_flush_and_check(&engine, &mut other, &rx_b, key_b, 2);
                (other, rx_b)
            })
        };
        publish_flush_and_check(&engine, &mut mine, &rx_a, key_a, 1);
        let (other, rx_b) = flusher2.join().unwrap();
        let stats = engine.shutdown().unwrap();
        assert_eq!(stats.sealed, 2);
        // Closed by the shutdown: anything still queued is a duplicate.
        assert!(rx_a.recv().is_none(), "event 1 delivered twice");
        assert!(rx_b.recv().is_none(), "event 2 delivered twice");
        drop((mine, other));
    });
}
