//! Model 1: the SPSC ring (`src/ring.rs`).
//!
//! Property: across wrap-around and at the full and empty edges, every value
//! pushed arrives exactly once and in order, and a batch drain only ever
//! reads slots the producer has finished writing. The slots are loom
//! `UnsafeCell`s, so a read of a slot whose write does not happen-before it
//! (or a write over a slot still being read) is reported by loom as a
//! causality violation; `--cfg ringfold_mutation="ring_relaxed"` makes the
//! publishing stores Relaxed and this model then fails.
#![cfg(ringfold_loom)]

use loom::thread;
use loom_tests::{model, spin_until};
use ringfold::loom_api::ring;

/// Values pushed per model run: three times the capacity, so the ring
/// wraps twice.
const N: u64 = 6;
const CAPACITY: usize = 2;

/// Single pushes against batch drains: the producer retries on full (the
/// full edge), the consumer polls an empty ring (the empty edge).
#[test]
fn single_pushes_arrive_once_in_order_across_wraparound() {
    model(|| {
        let (mut tx, mut rx) = ring::<u64>(CAPACITY);
        let producer = thread::spawn(move || {
            for v in 0..N {
                let mut item = v;
                loop {
                    match tx.push(item) {
                        Ok(()) => break,
                        Err(back) => {
                            // Full: the item comes back unchanged.
                            assert_eq!(back, v);
                            item = back;
                            thread::yield_now();
                        }
                    }
                }
            }
            tx
        });
        let mut got = Vec::new();
        spin_until(|| {
            rx.drain(|v| got.push(v));
            got.len() as u64 == N
        });
        let tx = producer.join().unwrap();
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "lost, duplicated or reordered"
        );
        assert_eq!(tx.pushed() as u64, N);
        assert_eq!(rx.pending(), 0);
        assert!(!rx.maybe_ready());
    });
}

/// Batch pushes (one tail store per run of slots) against batch drains
/// (one tail load, one head store per drain).
#[test]
fn batch_pushes_and_drains_see_only_fully_written_slots() {
    model(|| {
        let (mut tx, mut rx) = ring::<u64>(CAPACITY);
        let producer = thread::spawn(move || {
            let mut values = 0..N;
            let mut sent = 0;
            while sent < N {
                let n = tx.push_many(&mut values) as u64;
                assert!(n <= CAPACITY as u64);
                sent += n;
                if sent < N {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        spin_until(|| {
            rx.drain(|v| got.push(v));
            got.len() as u64 == N
        });
        producer.join().unwrap();
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "lost, duplicated or reordered"
        );
    });
}

/// The full edge with a waiting producer: it announces that it waits for
/// space, re-checks, and parks; the consumer releases space and then checks
/// the announcement. The Dekker fences guarantee one of them sees the
/// other, so the producer is never left parked (loom reports a deadlock if
/// it is).
#[test]
fn full_ring_waiting_producer_is_always_woken() {
    model(|| {
        let (mut tx, mut rx) = ring::<u64>(CAPACITY);
        let producer = thread::spawn(move || {
            for v in 0..(CAPACITY as u64 + 1) {
                let mut item = v;
                loop {
                    match tx.push(item) {
                        Ok(()) => break,
                        Err(back) => item = back,
                    }
                    tx.announce_waiting(true);
                    match tx.push(item) {
                        Ok(()) => break,
                        Err(back) => item = back,
                    }
                    thread::park();
                }
                tx.announce_waiting(false);
            }
        });
        let waiter = producer.thread().clone();
        let mut got = Vec::new();
        while got.len() < CAPACITY + 1 {
            if rx.drain(|v| got.push(v)) {
                waiter.unpark();
            }
            thread::yield_now();
        }
        producer.join().unwrap();
        assert_eq!(got, (0..CAPACITY as u64 + 1).collect::<Vec<_>>());
    });
}
