//! Tests that drive the crate's `unsafe` code (the rings, record extension
//! slots, interned-name pointers, the take-back at shutdown) through the
//! public API. CI runs them under valgrind memcheck (`.ci/valgrind`), where
//! any invalid read or write fails the run; they also pass natively.
//! Kept small: valgrind runs them some 50 times slower.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HOUR, LONG};
use ringfold::{Aggregate, Batch, Engine, FullPolicy, Policy, PublishError};

/// Aggregates copied out of a batch stay readable after the engine and its
/// name table are gone (they used to point into the freed table).
#[test]
fn aggregates_kept_past_engine_drop() {
    let kept: Arc<Mutex<Vec<Aggregate>>> = Arc::default();
    let sink = kept.clone();
    let engine = Engine::<f64>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 1_000_000))
        .sample_with(|v| Some(*v))
        .subscriber(move |b: &Batch<f64>| {
            sink.lock().unwrap().extend(b.aggregates().iter().cloned())
        })
        .build()
        .unwrap();
    // Names built at run time, so nothing but the engine's table holds them.
    // An explicit producer, dropped below: `engine.publish` would keep the
    // engine's shared state alive in this thread's thread-local producer.
    let mut producer = engine.producer().unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("gpu:{i}:utilisation")).collect();
    for (i, name) in names.iter().enumerate() {
        producer.publish(name, i as f64).unwrap();
        producer.publish(name, 10.0).unwrap();
    }
    engine.shutdown().unwrap();
    drop(producer);
    drop(engine);
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), names.len());
    for (agg, name) in kept.iter().zip(&names) {
        assert_eq!(agg.name(), name);
        assert_eq!(agg.count(), 2);
    }
    // And a clone outlives the original.
    let copy = kept[3].clone();
    drop(kept);
    assert_eq!(copy.name(), "gpu:3:utilisation");
}

/// Heap payloads, wide sub-keys and publish-time stamps (both take
/// extension slots) through a small ring that wraps many times.
#[test]
fn events_with_extension_slots_through_a_wrapping_ring() {
    let seen: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let sink = seen.clone();
    let engine = Engine::<String>::builder()
        .ring_capacity(8)
        .precise_timestamps(true)
        .on_full(FullPolicy::Block(LONG))
        .policy("data:*", Policy::batch(HOUR, 16))
        .subscriber(move |b: &Batch<String>| {
            let mut sink = sink.lock().unwrap();
            for e in b.events() {
                sink.push((e.name().to_owned(), e.sub_key(), e.payload().clone()));
            }
        })
        .build()
        .unwrap();
    let mut producer = engine.producer().unwrap();
    let keys: Vec<_> = (0..3)
        .map(|i| engine.key(&format!("data:t{i}:row")).unwrap())
        .collect();
    let n = 200u64;
    for i in 0..n {
        let key = keys[(i % 3) as usize];
        // Every other sub-key needs more than 32 bits: one more slot.
        let sub = if i % 2 == 0 { i } else { u64::MAX - i };
        producer
            .publish_with_sub_key(key, sub, format!("payload-{i}"))
            .unwrap();
    }
    engine.flush().unwrap();
    drop(producer);
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.published, n);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, n);
    let mut per_name: Vec<Vec<u64>> = vec![Vec::new(); 3];
    for (name, sub, payload) in seen.iter() {
        let t: usize = name[6..7].parse().unwrap();
        let i: u64 = payload["payload-".len()..].parse().unwrap();
        assert_eq!(i % 3, t as u64);
        let want = if i % 2 == 0 { i } else { u64::MAX - i };
        assert_eq!(*sub, want);
        per_name[t].push(i);
    }
    for list in per_name {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "per-producer order");
    }
}

/// Publishers racing a shutdown: every publish is either delivered or
/// handed back (its payload, a heap string, freed exactly once).
#[test]
fn shutdown_while_publishing() {
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    let engine = Engine::<String>::builder()
        .ring_capacity(16)
        .subscriber(move |b: &Batch<String>| {
            count.fetch_add(b.len() as u64, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            // Made here: a producer asked for after the shutdown is refused.
            let mut producer = engine.producer().unwrap();
            let key = engine.key(&format!("data:p{t}:x")).unwrap();
            let started = started.clone();
            std::thread::spawn(move || {
                let (mut ok, mut back) = (0u64, 0u64);
                for i in 0..2_000u64 {
                    started.store(true, Ordering::Relaxed);
                    match producer.publish_key(key, format!("{t}-{i}")) {
                        Ok(()) => ok += 1,
                        Err(PublishError::ShutDown(p)) => {
                            assert_eq!(p, format!("{t}-{i}"));
                            back += 1;
                        }
                        Err(PublishError::Full(_)) => back += 1,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                (ok, back)
            })
        })
        .collect();
    while !started.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(1));
    let stats = engine.shutdown_timeout(LONG).unwrap();
    let (mut ok, mut back) = (0, 0);
    for t in threads {
        let (o, b) = t.join().unwrap();
        ok += o;
        back += b;
    }
    assert_eq!(ok + back, 4_000);
    let final_stats = engine.stats();
    assert_eq!(final_stats.published, ok);
    assert_eq!(delivered.load(Ordering::Relaxed), ok);
    assert!(stats.is_conserved());
}
