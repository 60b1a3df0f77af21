//! Model 8: a lagging subscriber's queue merging windows (issue 19) against
//! the consumer's pops, an unsubscribe (close) and a flush.
//!
//! The flusher seals three windows of one prefix in one pass into a queue
//! that merges as soon as one batch waits (`coalesce_after(1)`), with a
//! budget that never drops; the consumer pops (as a receiver, or as a
//! delivery thread that finishes each batch), an unsubscriber may close the
//! queue at any point, and a flush waits for the windows queued before it.
//!
//! Properties, in every interleaving:
//! - no lost wake-up and no deadlock: consumer, unsubscriber and flush all
//!   finish;
//! - a merge never races a pop into losing or duplicating a window: the
//!   windows the consumer receives (each batch's `seq..=last_seq`) are in
//!   order, each at most once, contiguous from 0, and with `Deliver` on
//!   close, every window queued is received;
//! - the flush, captured after the pushes, completes once every window it
//!   covers was received (inside a merged batch) or discarded by the close;
//! - conservation (windows): sealed == delivered + dropped + discarded +
//!   queued + in flight in every snapshot, nothing dropped for lag.
#![cfg(ringfold_loom)]

use std::sync::atomic::{AtomicBool, Ordering};

use loom::thread;
use loom_tests::model;
use ringfold::loom_api::{DeliveryPool, DeliveryPush, DeliveryQueue};

/// Some interleaving merged a window (checked after each model: a model
/// in which no merge ever happens would prove nothing about merging).
static MERGED: AtomicBool = AtomicBool::new(false);

fn run(discard: bool, callback: bool, close_early: bool) {
    MERGED.store(false, Ordering::Relaxed);
    model(move || {
        // A budget of 64 empty windows: room for every window and merge.
        let queue = DeliveryQueue::coalescing(64, 1, false, discard);

        let flusher = {
            let q = queue.clone();
            thread::spawn(move || {
                let mut pool = DeliveryPool::new(4);
                let outcomes = [
                    q.push(&mut pool, 0),
                    q.push(&mut pool, 1),
                    q.push(&mut pool, 2),
                ];
                q.wake();
                (q.target(), outcomes)
            })
        };
        let consumer = {
            let q = queue.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let next = if callback {
                        q.take_merged()
                    } else {
                        q.recv_merged()
                    };
                    let Some((seq, last, lagged)) = next else {
                        break;
                    };
                    assert!(seq <= last);
                    seen.push((seq, last, lagged));
                    let (_, conserved) = q.counts();
                    assert!(conserved);
                    if callback {
                        q.finish_windows(last - seq + 1);
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
        assert!(queue.wait_done(target), "the flush completes");
        match unsubscriber {
            Some(u) => u.join().unwrap(),
            None => queue.close(),
        }
        let seen = consumer.join().unwrap();

        if queue.merged() > 0 {
            MERGED.store(true, Ordering::Relaxed);
        }
        let ([sealed, delivered, lagged, discarded, queued, in_flight], conserved) = queue.counts();
        assert!(conserved);
        assert_eq!((queued, in_flight, lagged), (0, 0, 0));
        assert_eq!(sealed, target);
        let closed = outcomes
            .iter()
            .filter(|o| **o == DeliveryPush::Closed)
            .count() as u64;
        assert_eq!(sealed + closed, 3, "every window queued or refused");
        assert!(outcomes.iter().all(|o| *o != DeliveryPush::DroppedOldest));
        // The windows received: contiguous from 0, in order, once each.
        let mut next = 0;
        for &(seq, last, lagged) in &seen {
            assert_eq!(seq, next, "in order, no gap, no duplicate: {seen:?}");
            assert_eq!(lagged, 0);
            next = last + 1;
        }
        assert_eq!(delivered, next, "delivered windows: {seen:?}");
        assert_eq!(delivered + discarded, sealed);
        if !discard {
            assert_eq!(delivered, sealed, "Deliver on close: every window received");
        }
    });
    assert!(MERGED.load(Ordering::Relaxed), "no interleaving merged");
}

#[test]
fn merging_receiver_deliver_on_close() {
    run(false, false, true);
}

#[test]
fn merging_callback_discard_on_close() {
    run(true, true, true);
}

#[test]
fn merging_callback_closed_after_the_flush() {
    run(false, true, false);
}

#[test]
fn merging_receiver_closed_after_the_flush() {
    run(false, false, false);
}
