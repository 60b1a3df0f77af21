//! Model 7: one subscriber's delivery queue (`delivery::Queue`): the
//! flusher's enqueue (with the lag policy) against the consumer's dequeue,
//! an unsubscribe (close) and a flush waiting for `done >= target`.
//!
//! Properties, in every interleaving:
//! - no lost wake-up: the consumer, a flusher blocked for space (`Block`)
//!   and the flush waiter all finish (a lost notify is a loom deadlock),
//!   with the flusher's wake-ups deferred to the end of its pass as in the
//!   engine (`push_quiet` per batch, one `wake_consumer` after them);
//! - the flush captured after the flusher's pushes completes once those
//!   batches are delivered, dropped by lag or discarded by the close;
//! - batches come out in seal order, each once, and the in-band `lagged`
//!   figure never reports more loss than was counted;
//! - conservation: sealed == delivered + lag-dropped + discarded + queued +
//!   in flight in every snapshot, and at the end everything sealed is done;
//! - the pool's recycling (`Arc::get_mut`) races the consumer's release of
//!   its handle without a data race (the pool keeps one batch).
#![cfg(ringfold_loom)]

use loom::thread;
use loom_tests::model;
use ringfold::loom_api::{DeliveryPool, DeliveryPush, DeliveryQueue};

/// Runs the flusher/consumer/unsubscriber/flush-waiter model. With
/// `close_early` false there is no unsubscriber racing the rest: the queue
/// is closed only after the flush returned, so no close can rescue a
/// consumer or a flusher that a lost wake-up left asleep.
fn run(block: bool, discard: bool, callback: bool) {
    run_closing(block, discard, callback, true);
}

fn run_closing(block: bool, discard: bool, callback: bool, close_early: bool) {
    model(move || {
        let queue = DeliveryQueue::new(1, block, discard);

        let flusher = {
            let q = queue.clone();
            thread::spawn(move || {
                let mut pool = DeliveryPool::new(1);
                // One pass: both batches queued quietly, then one wake-up
                // (with capacity 1 the second push finds the queue full, so
                // under `Block` it must wake the consumer before waiting).
                let outcomes = [q.push(&mut pool, 0), q.push(&mut pool, 1)];
                q.wake();
                // A flush captures its target after sealing.
                (q.target(), outcomes)
            })
        };
        let consumer = {
            let q = queue.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let next = if callback { q.take() } else { q.recv() };
                    let Some((seq, lagged)) = next else { break };
                    seen.push((seq, lagged));
                    let (_, conserved) = q.counts();
                    assert!(conserved);
                    if callback {
                        q.finish();
                    }
                }
                seen
            })
        };
        let unsubscriber = close_early.then(|| {
            let q = queue.clone();
            thread::spawn(move || q.close())
        });

        let (target, outcomes) = flusher.join().unwrap();
        // The flush: must return (no deadlock) in every interleaving.
        assert!(queue.wait_done(target));
        match unsubscriber {
            Some(unsubscriber) => unsubscriber.join().unwrap(),
            None => queue.close(),
        }
        let seen = consumer.join().unwrap();

        let ([sealed, delivered, lagged, discarded, queued, in_flight], conserved) = queue.counts();
        assert!(conserved);
        assert_eq!((queued, in_flight), (0, 0), "closed and drained");
        assert_eq!(sealed, target);
        let closed = outcomes
            .iter()
            .filter(|o| **o == DeliveryPush::Closed)
            .count() as u64;
        assert_eq!(sealed + closed, 2, "every push queued or refused");
        assert_eq!(delivered, seen.len() as u64);
        if block {
            assert_eq!(lagged, 0, "Block without a timeout never drops");
        }
        if !discard {
            assert_eq!(discarded, 0);
        }
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "in order, once: {seen:?}"
        );
        let reported: u64 = seen.iter().map(|s| s.1).sum();
        assert!(
            reported <= lagged,
            "in-band loss {reported} > counted {lagged}"
        );
    });
}

#[test]
fn drop_oldest_receiver_discard_on_close() {
    run(false, true, false);
}

#[test]
fn drop_oldest_callback_deliver_on_close() {
    run(false, false, true);
}

#[test]
fn block_receiver_deliver_on_close() {
    run(true, false, false);
}

#[test]
fn block_callback_discard_on_close() {
    run(true, true, true);
}

#[test]
fn block_receiver_closed_after_the_flush() {
    run_closing(true, false, false, false);
}

#[test]
fn drop_oldest_callback_closed_after_the_flush() {
    run_closing(false, false, true, false);
}
