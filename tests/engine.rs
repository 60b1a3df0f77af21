//! Core engine behaviour (issue 2).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{gate, gate_options, jam, recorder, stamp_recorder, wait_until, Rng, JAM, LONG};
use ringfold::{
    Batch, BatchReason, Budget, Engine, Error, Event, FullPolicy, Policy, PublishError, Subscriber,
    Value,
};

#[test]
fn many_producers_random_prefixes_interleaved_flushes_conserve_and_keep_order() {
    const PRODUCERS: u64 = 4;
    const EVENTS: u64 = 20_000;
    // Per (producer, prefix): last sequence number seen; order violations.
    let last: Arc<Mutex<HashMap<(u64, String), u64>>> = Arc::default();
    let violations = Arc::new(AtomicU64::new(0));
    let (l, v) = (last.clone(), violations.clone());
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_millis(2), 64))
        .policy("p3:*", Policy::Passthrough)
        // Small rings so that some publishes are rejected as full.
        .ring_capacity(64)
        .subscriber(move |b: &Batch<u64>| {
            let mut last = l.lock().unwrap();
            for e in b.events() {
                let (producer, seq) = (e.payload() >> 32, e.payload() & 0xffff_ffff);
                let slot = last.entry((producer, b.prefix().to_string())).or_insert(0);
                if seq < *slot {
                    v.fetch_add(1, Ordering::Relaxed);
                }
                *slot = seq + 1;
            }
        })
        .build()
        .unwrap();
    let keys: Vec<_> = (0..8)
        .map(|i| engine.key(&format!("p{i}:x:ev{}", i % 3)).unwrap())
        .collect();
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let mut producer = engine.producer().unwrap();
            let keys = keys.clone();
            let (accepted, rejected) = (accepted.clone(), rejected.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(p + 1);
                for seq in 0..EVENTS {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    match producer.publish_key(key, (p << 32) | seq) {
                        Ok(()) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(PublishError::Full(v)) => {
                            assert_eq!(v, (p << 32) | seq, "payload handed back");
                            rejected.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    };
                }
            })
        })
        .collect();
    for _ in 0..20 {
        engine.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        t.join().unwrap();
    }
    engine.flush().unwrap();
    let stats = engine.stats();
    let (accepted, rejected) = (
        accepted.load(Ordering::SeqCst),
        rejected.load(Ordering::SeqCst),
    );
    assert_eq!(accepted + rejected, PRODUCERS * EVENTS);
    assert_eq!(stats.published, accepted);
    assert_eq!(stats.sealed, accepted, "{stats:#?}");
    assert_eq!(stats.dropped.full, rejected);
    assert_eq!(stats.pending, 0);
    assert!(stats.is_conserved());
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "per-producer per-prefix order"
    );
    let per_prefix: u64 = stats.prefixes.values().map(|p| p.sealed).sum();
    assert_eq!(per_prefix, accepted);
    let per_prefix_drops: u64 = stats.prefixes.values().map(|p| p.dropped).sum();
    assert_eq!(per_prefix_drops, rejected);
    for (prefix, p) in &stats.prefixes {
        assert_eq!(p.received, p.sealed + p.folded, "{prefix}: {p:?}");
    }
}

#[test]
fn prefix_stats_count_events_in_open_windows() {
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 1000))
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    for i in 0..5u64 {
        p.publish("open:window:set", i).unwrap();
    }
    // Taken off the ring but still in a window: received, not delivered.
    assert!(wait_until(LONG, || engine
        .stats()
        .prefixes
        .get("open:window")
        .is_some_and(|s| s.received == 5)));
    let stats = engine.stats();
    assert_eq!(stats.prefixes["open:window"].sealed, 0);
    assert_eq!(stats.pending, 5);
    assert!(stats.is_conserved());
    engine.flush().unwrap();
    let stats = engine.stats();
    assert_eq!(
        stats.prefixes["open:window"].received, 5,
        "not counted twice"
    );
    assert_eq!(stats.prefixes["open:window"].sealed, 5);
}

#[test]
fn producers_that_exit_mid_stream_are_drained_then_unregistered() {
    let (sub, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 1_000_000))
        .subscriber(sub)
        .build()
        .unwrap();
    let key = engine.key("jobs:worker:done").unwrap();
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let mut producer = engine.producer().unwrap();
            std::thread::spawn(move || {
                for i in 0..(500 * (t + 1)) {
                    producer.publish_key(key, i).unwrap();
                }
                // Thread exits: the producer is dropped with events pending.
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    engine.flush().unwrap();
    let delivered: usize = log.lock().unwrap().iter().map(|b| b.events.len()).sum();
    assert_eq!(delivered, 500 + 1000 + 1500);
    let stats = engine.stats();
    assert_eq!(stats.producers, 0, "retired after draining");
    assert_eq!(stats.published, 3000);
    assert!(stats.is_conserved());
}

#[test]
fn thread_local_publish_from_many_threads() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let engine = Engine::<Value>::builder()
        .subscriber(move |b: &Batch<Value>| {
            c.fetch_add(b.len(), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..1000 {
                    engine.publish(&format!("data:t{t}:created"), i).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    engine.flush().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 4000);
    assert!(engine.stats().is_conserved());
}

#[test]
fn a_panicking_subscriber_is_counted_and_others_still_deliver() {
    let good = Arc::new(AtomicUsize::new(0));
    let g = good.clone();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .subscriber(|b: &Batch<u64>| {
            if b.events()[0].payload() % 2 == 0 {
                panic!("subscriber bug (expected in this test)");
            }
        })
        .subscriber(move |b: &Batch<u64>| {
            g.fetch_add(b.len(), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    let key = engine.key("x:y").unwrap();
    for i in 0..10u64 {
        p.publish_key(key, i).unwrap();
    }
    engine.flush().unwrap();
    assert_eq!(good.load(Ordering::SeqCst), 10);
    let stats = engine.stats();
    assert_eq!(stats.subscriber_panics, 5);
    assert_eq!(stats.sealed, 10);
}

#[test]
fn a_subscriber_may_publish_into_the_same_engine() {
    let echo: Arc<Mutex<Option<ringfold::Producer<u64>>>> = Arc::default();
    let echo_key: Arc<Mutex<Option<ringfold::EventKey>>> = Arc::default();
    let echoed = Arc::new(AtomicUsize::new(0));
    let (e, k, n) = (echo.clone(), echo_key.clone(), echoed.clone());
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .subscriber(move |b: &Batch<u64>| {
            if b.prefix() == "ping" {
                let key = k.lock().unwrap().unwrap();
                let mut producer = e.lock().unwrap();
                for ev in b.events() {
                    producer
                        .as_mut()
                        .unwrap()
                        .publish_key(key, *ev.payload())
                        .unwrap();
                }
            } else {
                n.fetch_add(b.len(), Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    *echo.lock().unwrap() = Some(engine.producer().unwrap());
    *echo_key.lock().unwrap() = Some(engine.key("pong:echo").unwrap());
    for i in 0..100u64 {
        engine.publish("ping:x", i).unwrap();
    }
    engine.flush().unwrap(); // delivers the pings; the pongs are published meanwhile
    engine.flush().unwrap(); // delivers the pongs
    assert_eq!(echoed.load(Ordering::SeqCst), 100);
}

#[test]
fn flush_and_shutdown_from_inside_a_subscriber_do_not_hang() {
    let slot: Arc<Mutex<Option<Engine<u64>>>> = Arc::default();
    let results: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s, r) = (slot.clone(), results.clone());
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .subscriber(move |b: &Batch<u64>| {
            let Some(engine) = s.lock().unwrap().clone() else {
                return;
            };
            match b.events()[0].payload() {
                1 => r.lock().unwrap().push(format!("{:?}", engine.flush())),
                2 => {
                    let stats = engine.shutdown();
                    r.lock()
                        .unwrap()
                        .push(format!("shutdown ok: {}", stats.is_ok()));
                    s.lock().unwrap().take();
                }
                _ => {}
            }
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(engine.clone());
    engine.publish("x:y", 1u64).unwrap();
    engine.flush().unwrap();
    engine.publish("x:y", 2u64).unwrap();
    assert!(wait_until(LONG, || engine.is_shut_down()));
    let stats = engine.shutdown().unwrap();
    let results = results.lock().unwrap().clone();
    assert_eq!(results[0], "Err(FlushFromSubscriber)");
    assert_eq!(results[1], "shutdown ok: true");
    assert_eq!(stats.sealed, 2);
}

#[test]
fn shutdown_twice_then_publishing_returns_the_payload() {
    let engine = Engine::<Value>::builder().build().unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("data:users:created", Value::from(1)).unwrap();
    let first = engine.shutdown().unwrap();
    assert_eq!(first.sealed, 1);
    let second = engine.shutdown().unwrap();
    assert_eq!(second.sealed, 1);
    assert_eq!(
        p.publish("data:users:created", Value::from("late")),
        Err(PublishError::ShutDown(Value::from("late")))
    );
    assert_eq!(
        engine.publish("data:users:created", 7),
        Err(PublishError::ShutDown(Value::from(7)))
    );
    assert!(matches!(engine.producer(), Err(Error::ShutDown)));
    assert!(engine.flush().is_ok(), "nothing left to flush");
    let stats = engine.stats();
    assert_eq!(stats.dropped.shut_down, 2);
    assert_eq!(stats.published, 1);
}

#[test]
fn dropping_the_last_handle_flushes_everything() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 1_000_000))
        .subscriber(move |b: &Batch<u64>| {
            assert_eq!(b.reason(), BatchReason::Shutdown);
            c.fetch_add(b.len(), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    let key = engine.key("a:b").unwrap();
    for i in 0..1234u64 {
        p.publish_key(key, i).unwrap();
    }
    let clone = engine.clone();
    drop(engine);
    assert_eq!(count.load(Ordering::SeqCst), 0, "a clone still holds it");
    drop(clone);
    assert_eq!(count.load(Ordering::SeqCst), 1234);
    assert!(matches!(
        p.publish_key(key, 1u64),
        Err(PublishError::ShutDown(1))
    ));
}

#[test]
fn full_ring_drop_newest_returns_payload_and_reports_loss_in_band() {
    let (gate, entered, release) = gate();
    let (rec, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .policy("bulk:*", Policy::batch(Duration::from_secs(3600), 1000))
        .ring_capacity(4)
        .subscriber_with("*", gate_options(), gate)
        .subscriber(rec)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("block:now", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p); // the flusher is now stuck behind the gate
    let key = engine.key("bulk:rows:inserted").unwrap();
    for i in 1..=4u64 {
        p.publish_key(key, i).unwrap();
    }
    assert_eq!(p.publish_key(key, 5u64), Err(PublishError::Full(5)));
    assert_eq!(p.publish_key(key, 6u64), Err(PublishError::Full(6)));
    release.send(()).unwrap();
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    let bulk = log.iter().find(|b| b.prefix == "bulk:rows").unwrap();
    assert_eq!(bulk.events.len(), 4);
    assert_eq!(bulk.dropped, 2, "loss is visible in the batch itself");
    let stats = engine.stats();
    assert_eq!(stats.dropped.full, 2);
    assert_eq!(stats.prefixes["bulk:rows"].dropped, 2);
    assert!(stats.is_conserved());
}

#[test]
fn full_ring_block_waits_for_space_then_times_out() {
    let (gate, entered, release) = gate();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .ring_capacity(2)
        .on_full(FullPolicy::Block(Duration::from_millis(50)))
        .subscriber_with("*", gate_options(), gate)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("a:b", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p);
    p.publish("a:b", 1u64).unwrap();
    p.publish("a:b", 2u64).unwrap();
    // Flusher stuck: the wait times out and the payload comes back.
    assert_eq!(p.publish("a:b", 3u64), Err(PublishError::Full(3)));
    // Release the flusher while we wait: this time space appears.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        release.send(()).unwrap();
    });
    let engine2 = Engine::<u64>::builder()
        .ring_capacity(2)
        .on_full(FullPolicy::Block(LONG))
        .build()
        .unwrap();
    drop(engine2);
    // With a long timeout the publish succeeds once the flusher drains.
    let mut q = engine.producer().unwrap();
    q.publish("a:c", 10u64).unwrap();
    q.publish("a:c", 11u64).unwrap();
    releaser.join().unwrap();
    engine.flush().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.dropped.full, 1);
    assert_eq!(stats.sealed, 5 + 2, "and the two jam events");
}

#[test]
fn block_policy_succeeds_when_the_flusher_frees_space() {
    let (gate, entered, release) = gate();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .ring_capacity(2)
        .on_full(FullPolicy::Block(LONG))
        .subscriber_with("*", gate_options(), gate)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("a:b", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p);
    p.publish("a:b", 1u64).unwrap();
    p.publish("a:b", 2u64).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
    });
    p.publish("a:b", 3u64).unwrap(); // waits until the flusher drains
    releaser.join().unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.stats().sealed, 4 + 2, "and the two jam events");
    assert_eq!(engine.stats().dropped.full, 0);
}

#[test]
fn count_threshold_then_flush_remainder() {
    let (rec, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 10))
        .subscriber(rec)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    let key = engine.key("data:users:created").unwrap();
    for i in 0..25u64 {
        p.publish_key(key, i).unwrap();
    }
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    let shape: Vec<_> = log.iter().map(|b| (b.events.len(), b.reason)).collect();
    assert_eq!(
        shape,
        vec![
            (10, BatchReason::Count),
            (10, BatchReason::Count),
            (5, BatchReason::Flush)
        ]
    );
    let payloads: Vec<u64> = log
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.2))
        .collect();
    assert_eq!(payloads, (0..25).collect::<Vec<_>>());
    assert_eq!(log[0].prefix, "data:users");
}

#[test]
fn interval_elapses_without_flush() {
    let (rec, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_millis(20), 1000))
        .tick(Duration::from_millis(2))
        .subscriber(rec)
        .build()
        .unwrap();
    for i in 0..3u64 {
        engine.publish("data:users:updated", i).unwrap();
    }
    assert!(wait_until(LONG, || !log.lock().unwrap().is_empty()));
    let log = log.lock().unwrap();
    assert_eq!(log[0].reason, BatchReason::Interval);
    assert_eq!(log[0].events.len(), 3);
}

#[test]
fn passthrough_delivers_each_event_as_its_own_batch() {
    let (rec, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .policy("chat:*", Policy::Passthrough)
        .subscriber(rec)
        .build()
        .unwrap();
    for i in 0..5u64 {
        engine.publish("chat:s1:delta", i).unwrap();
    }
    assert!(wait_until(LONG, || log.lock().unwrap().len() == 5));
    for (i, b) in log.lock().unwrap().iter().enumerate() {
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.reason, BatchReason::Passthrough);
        assert_eq!(b.events[0].2, i as u64);
    }
}

#[test]
fn default_rules_resolve_per_name() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .default_rules()
        .subscriber(rec)
        .build()
        .unwrap();
    engine.publish("sentinel:job1:status", "running").unwrap();
    engine.publish("presence:u1:typing", true).unwrap();
    assert!(wait_until(LONG, || log.lock().unwrap().len() == 2));
    for i in 0..100u64 {
        engine.publish("data:users:created", i).unwrap();
    }
    assert!(wait_until(LONG, || log.lock().unwrap().len() == 3));
    let log = log.lock().unwrap();
    assert_eq!(log[2].reason, BatchReason::Count, "data:* is 50 ms / 100");
    assert_eq!(log[2].events.len(), 100);
}

#[test]
fn shutdown_timeout_reports_pending_instead_of_hanging() {
    let (gate, entered, release) = gate();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .subscriber(gate)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("a:b", 0u64).unwrap();
    entered.recv().unwrap();
    for i in 1..=3u64 {
        p.publish("a:b", i).unwrap();
    }
    // The flusher is never stuck behind a subscriber: it seals and queues
    // everything, and the report counts the batches stuck in delivery.
    match engine.shutdown_timeout(Duration::from_millis(50)) {
        Err(Error::Timeout(stats)) => {
            assert_eq!(stats.pending, 0);
            assert_eq!(stats.sealed, 4);
            assert!(stats.is_conserved());
            let sub = &stats.subscribers[0];
            assert_eq!((sub.in_flight, sub.queued), (1, 3), "{sub:?}");
            assert!(sub.is_conserved());
        }
        other => panic!("expected a timeout report, got {other:?}"),
    }
    assert!(matches!(
        engine.flush_timeout(Duration::from_millis(10)),
        Err(Error::Timeout(_))
    ));
    release.send(()).unwrap();
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.sealed, 4);
    assert_eq!(stats.pending, 0);
}

#[test]
fn bad_input_is_a_typed_error() {
    let b = || Engine::<u64>::builder();
    assert!(matches!(
        b().ring_capacity(0).build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        b().ring_capacity(100).build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        b().high_water(0).build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        b().tick(Duration::ZERO).build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        b().policy("data:*", Policy::batch(Duration::ZERO, 5))
            .build(),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        b().policy("data:**", Policy::Passthrough).build(),
        Err(Error::InvalidPattern { .. })
    ));
    assert!(matches!(
        b().policy("gpu:*", Policy::aggregate(Duration::from_secs(1), 5))
            .build(),
        Err(Error::AggregateWithoutSampler { .. })
    ));
    assert!(matches!(
        b().pin_flusher(100_000).build(),
        Err(Error::CoreUnavailable { core: 100_000, .. })
    ));
    let engine = b().max_names(2).max_name_len(16).build().unwrap();
    assert!(matches!(engine.key(""), Err(Error::EmptyName)));
    assert!(matches!(
        engine.key("a::b"),
        Err(Error::EmptySegment { .. })
    ));
    assert!(matches!(
        engine.key("a:very:long:name:indeed"),
        Err(Error::NameTooLong { .. })
    ));
    engine.key("a:1").unwrap();
    engine.key("a:2").unwrap();
    assert!(matches!(
        engine.key("a:3"),
        Err(Error::TooManyNames { limit: 2 })
    ));
    let mut p = engine.producer().unwrap();
    assert_eq!(p.publish("", 9u64), Err(PublishError::InvalidName(9)));
    assert_eq!(p.publish("a:3", 8u64), Err(PublishError::TooManyNames(8)));
    // A key from another engine with an id this engine never issued.
    let other = b().build().unwrap();
    for i in 0..5 {
        other.key(&format!("o:{i}")).unwrap();
    }
    let foreign = other.key("o:4").unwrap();
    assert_eq!(
        p.publish_key(foreign, 7u64),
        Err(PublishError::ForeignKey(7))
    );
    let dropped = engine.stats().dropped;
    assert_eq!(
        (
            dropped.invalid_name,
            dropped.too_many_names,
            dropped.foreign_key
        ),
        (1, 1, 1)
    );
}

#[test]
fn pinned_flusher_runs() {
    let engine = match Engine::<u64>::builder().pin_flusher(0).build() {
        Ok(engine) => engine,
        // A sandbox that hides CPU affinity reports no cores at all: the
        // typed error is the correct answer there.
        Err(Error::CoreUnavailable { available: 0, .. }) => return,
        Err(e) => panic!("pinning to core 0 failed: {e}"),
    };
    engine.publish("a:b", 1u64).unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.stats().sealed, 1);
}

#[test]
fn on_event_default_sees_each_event() {
    struct Names(Arc<Mutex<Vec<String>>>);
    impl Subscriber<u64> for Names {
        fn on_event(&mut self, event: &Event<u64>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}={}", event.name(), event.payload()));
        }
    }
    let names = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine::<u64>::builder()
        .subscriber(Names(names.clone()))
        .build()
        .unwrap();
    engine.publish("data:a:x", 1u64).unwrap();
    engine.publish("data:a:y", 2u64).unwrap();
    engine.flush().unwrap();
    assert_eq!(*names.lock().unwrap(), vec!["data:a:x=1", "data:a:y=2"]);
}

#[test]
fn publish_many_takes_what_fits_with_one_store() {
    let (gate, entered, release) = gate();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .ring_capacity(8)
        .subscriber_with("*", gate_options(), gate)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("a:b", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p);
    let key = engine.key("a:b").unwrap();
    let mut events = (1..=20u64).map(|i| (key, i));
    assert_eq!(p.publish_many(&mut events).unwrap(), 8);
    assert_eq!(
        events.next(),
        Some((key, 9)),
        "the rest stays with the caller"
    );
    release.send(()).unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.stats().sealed, 9 + 2, "and the two jam events");
}

#[test]
fn high_water_wakes_a_parked_flusher() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 16))
        // A one-hour tick: only the high-water wake-up can sweep.
        .tick(Duration::from_secs(3600))
        .ring_capacity(64)
        .high_water(16)
        .subscriber(move |b: &Batch<u64>| {
            c.fetch_add(b.len(), Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    let key = engine.key("a:b").unwrap();
    // One event puts the flusher into a timed park (pending window).
    p.publish_key(key, 0u64).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in 1..40u64 {
        p.publish_key(key, i).unwrap();
    }
    assert!(wait_until(LONG, || count.load(Ordering::SeqCst) >= 32));
    assert!(engine.stats().high_water_wakeups >= 1);
}

#[test]
fn engine_is_send_and_sync_producer_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine<Value>>();
    send_sync::<Engine<u64>>();
    send::<ringfold::Producer<Value>>();
}

#[test]
fn precise_stamps_and_wide_sub_keys_cross_the_ring_intact() {
    // Stamped events and sub-keys above 32 bits travel as extension slots
    // before their event slot; a small ring with Block makes many of them
    // wait for room as a group.
    let (sub, seen) = stamp_recorder();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(3600), 1_000_000))
        .precise_timestamps(true)
        .ring_capacity(8)
        .on_full(FullPolicy::Block(LONG))
        .subscriber(sub)
        .build()
        .unwrap();
    let key = engine.key("wide:keys:set").unwrap();
    let mut p = engine.producer().unwrap();
    let mut rng = Rng::new(11);
    let mut sent = Vec::new();
    for i in 0..2000u64 {
        let sub_key = match i % 4 {
            0 => i,
            1 => u64::from(u32::MAX) - i,
            2 => (1 << 32) + i,
            _ => rng.next() | 1 << 63,
        };
        let before = std::time::Instant::now();
        p.publish_with_sub_key(key, sub_key, i).unwrap();
        sent.push((sub_key, i, before, std::time::Instant::now()));
    }
    engine.flush().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), sent.len());
    for ((sub_key, i, before, after), (got_key, got, at)) in sent.iter().zip(seen.iter()) {
        assert_eq!((got_key, got), (sub_key, i), "event {i}");
        assert!(
            *before <= *at && *at <= *after,
            "event {i} stamped outside its publish call"
        );
    }
    let stats = engine.stats();
    assert_eq!(stats.published, 2000, "extension slots are not events");
    assert_eq!(stats.sealed, 2000);
    assert_eq!(stats.pending, 0);
    assert!(stats.is_conserved());
}

#[test]
fn a_stamped_event_that_does_not_fit_whole_is_dropped_whole() {
    let (gate, entered, release) = gate();
    let (sub, seen) = stamp_recorder();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .precise_timestamps(true)
        .ring_capacity(4)
        .subscriber_with("*", gate_options(), gate)
        .subscriber(sub)
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("a:b", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p); // the flusher is stuck; the ring is empty
    p.publish("a:b", 1u64).unwrap(); // three slots of four
    assert_eq!(p.publish("a:b", 2u64), Err(PublishError::Full(2)));
    release.send(()).unwrap();
    engine.flush().unwrap();
    let payloads: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.1)
        .filter(|&p| p != JAM)
        .collect();
    assert_eq!(payloads, [0, 1]);
    let stats = engine.stats();
    assert_eq!(stats.dropped.full, 1);
    assert_eq!(stats.published, 2 + 2, "and the two jam events");
    assert!(stats.is_conserved());
    // Four slots is the floor for stamped events.
    let err = Engine::<u64>::builder()
        .precise_timestamps(true)
        .ring_capacity(2)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

#[test]
fn publish_errors_are_errors_for_any_payload_and_hand_payloads_back() {
    // Not `Debug`: `PublishError<T>` must still be an `Error`.
    struct Opaque(u64);
    fn as_error<E: std::error::Error + 'static>(e: E) -> Box<dyn std::error::Error> {
        Box::new(e)
    }
    let engine = Engine::<Opaque>::builder().build().unwrap();
    let other = Engine::<Opaque>::builder().build().unwrap();
    let mut p = engine.producer().unwrap();
    let _ = other.key("a:known").unwrap();
    let unknown = other.key("a:unknown").unwrap();
    let err = p.publish_key(unknown, Opaque(7)).unwrap_err();
    assert_eq!(format!("{err:?}"), "ForeignKey(..)");
    assert_eq!(as_error(err).to_string(), "event key of another engine");
    let mut events = vec![(unknown, Opaque(1)), (unknown, Opaque(2))].into_iter();
    let rejected = p.publish_many(&mut events).unwrap_err().into_rejected();
    let back: Vec<u64> = rejected.iter().map(|o| o.0).collect();
    assert_eq!(back, vec![1, 2], "publish_many hands back what it rejects");
    assert_eq!(engine.stats().dropped.foreign_key, 3);
    engine.shutdown().unwrap();
    let mut events = vec![(unknown, Opaque(3))].into_iter();
    assert!(matches!(
        p.publish_many(&mut events),
        Err(ringfold::PublishManyError::ShutDown { .. })
    ));
    assert_eq!(events.len(), 1, "a closed engine takes nothing");
}

/// Item 8: a `DropNewest` publish racing shutdown never waits for a stuck
/// subscriber. Eight publishers spin on `publish_key` while a subscriber is
/// held (and, through its one-batch must-deliver queue, the flusher with
/// it); on two cores six of them are preempted at any moment, each inside
/// the window between a publish's early closed check and its post-push
/// check (most of a publish) about as often as not, so each round's close
/// lands in some publish's window with near certainty, and over the rounds
/// with certainty. Before the fix such a publish took its event back by
/// waiting for the flusher to stop, i.e. for the subscriber: it returned
/// only when the gate let go.
#[test]
fn racing_publishes_at_shutdown_never_wait_for_a_stuck_subscriber() {
    use ringfold::{LagPolicy, SubscribeOptions};
    use std::sync::mpsc;
    const PUBLISHERS: usize = 8;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let (slow, entered, release) = common::gate_for(LONG * 3);
        let engine = Engine::<u64>::builder()
            // Few, large batches: the final drain of eight rings stays short.
            .default_policy(Policy::batch(Duration::from_millis(1), 4096))
            .on_full(FullPolicy::DropNewest)
            // Large enough that the rings are still filling when the close
            // lands (a full ring's publish returns `Full` before the window).
            .ring_capacity(1 << 16)
            .subscriber_with(
                "*",
                SubscribeOptions::new("sink")
                    .lag(LagPolicy::Block {
                        timeout: Duration::MAX,
                    })
                    .budget(Budget::new(1, u64::MAX)),
                slow,
            )
            .build()
            .unwrap();
        let key = engine.key("a:b").unwrap();
        engine.publish_key(key, 0u64).unwrap();
        entered.recv().unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|_| {
                let mut p = engine.producer().unwrap();
                let (started_tx, done_tx) = (started_tx.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    // Accepted or `Full`, until the close: every publish
                    // returns at once.
                    while p.publish_key(key, i).is_ok() || !p.is_closed() {
                        if i == 100 {
                            started_tx.send(()).unwrap();
                        }
                        i += 1;
                    }
                    let _ = done_tx.send(());
                })
            })
            .collect();
        for _ in 0..PUBLISHERS {
            started_rx.recv_timeout(LONG).unwrap();
        }
        let result = engine.shutdown_timeout(Duration::from_millis(20));
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
        // One deadline for all: the subscriber is held for three times it.
        let deadline = std::time::Instant::now() + LONG;
        for n in 0..PUBLISHERS {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                done_rx.recv_timeout(left).is_ok(),
                "round {round}: {} publishers still inside a publish: \
                 it waited for the stuck subscriber",
                PUBLISHERS - n
            );
        }
        for p in publishers {
            p.join().unwrap();
        }
        release.send(()).unwrap();
        engine.shutdown().unwrap();
    }
}

/// Item 16: `Engine::publish` from a thread-local destructor, after the
/// per-thread producer slots' own thread-locals are gone, is a counted
/// `ShutDown` (the thread is exiting), never a panic in a destructor
/// (which would abort the process).
#[test]
fn publishing_from_a_thread_local_destructor_neither_panics_nor_aborts() {
    use std::cell::RefCell;
    use std::sync::mpsc;
    struct PublishOnExit(Engine<u64>, mpsc::Sender<bool>);
    impl Drop for PublishOnExit {
        fn drop(&mut self) {
            let r = self.0.publish("data:exit:late", 1u64);
            let _ = self.1.send(r.is_ok());
        }
    }
    std::thread_local! {
        static ON_EXIT: RefCell<Option<PublishOnExit>> = const { RefCell::new(None) };
    }
    let engine = Engine::<u64>::builder().build().unwrap();
    let (tx, rx) = mpsc::channel();
    let e = engine.clone();
    std::thread::spawn(move || {
        // Registered first, so destroyed last: after the producer slots'
        // thread-locals.
        ON_EXIT.with(|s| *s.borrow_mut() = Some(PublishOnExit(e.clone(), tx)));
        e.publish("data:exit:early", 0u64).unwrap();
    })
    .join()
    .unwrap();
    let accepted = rx.recv_timeout(LONG).unwrap();
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.published, 1 + accepted as u64, "{stats:?}");
    assert_eq!(stats.dropped.shut_down, !accepted as u64, "{stats:?}");
    assert!(stats.is_conserved(), "{stats:?}");
}
