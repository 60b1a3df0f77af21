//! Coalescing beyond plain batches (issue 4): last-value-wins, numeric
//! aggregation, urgent events, prefix flushes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{gate, gate_options, jam, recorder, wait_until, Rng, HOUR, JAM, LONG};
use ringfold::{
    Batch, BatchReason, Budget, Engine, LagPolicy, Policy, PublishError, SubscribeOptions, Value,
};

#[test]
fn five_deltas_in_one_window_become_one_update_with_the_final_state() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("chat:*", Policy::latest(HOUR, 1000))
        .subscriber(rec)
        .build()
        .unwrap();
    let key = engine.key("chat:s1:delta").unwrap();
    let mut p = engine.producer().unwrap();
    let mut text = String::new();
    for token in ["He", "llo", ", ", "wor", "ld"] {
        text.push_str(token);
        p.publish_with_sub_key(key, 42, Value::from(text.as_str()))
            .unwrap();
    }
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "one delivered update");
    assert_eq!(log[0].events.len(), 1);
    assert_eq!(log[0].events[0].1, 42, "sub-key carried");
    assert_eq!(log[0].events[0].2, Value::from("Hello, world"));
    assert_eq!(log[0].folded, 4);
    let stats = engine.stats();
    assert_eq!((stats.sealed, stats.folded), (1, 4));
    assert!(stats.is_conserved());
}

#[test]
fn an_urgent_finish_is_prompt_even_with_a_one_hour_window_and_comes_last() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("chat:*", Policy::batch(HOUR, 100_000))
        .tick(HOUR) // no tick can rescue a lost wake-up either
        .subscriber(rec)
        .build()
        .unwrap();
    let delta = engine.key("chat:s1:delta").unwrap();
    let finished = engine.key("chat:s1:finished").unwrap();
    let other = engine.key("chat:s2:delta").unwrap();
    let mut p = engine.producer().unwrap();
    for i in 0..5 {
        p.publish_key(delta, Value::from(i)).unwrap();
    }
    p.publish_key(other, Value::from("stays batched")).unwrap();
    p.publish_urgent(finished, Value::from("done")).unwrap();
    // No flush: only the urgent path can deliver within an hour.
    assert!(wait_until(LONG, || !log.lock().unwrap().is_empty()));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "the other prefix keeps waiting: {log:?}");
    let b = &log[0];
    assert_eq!(b.prefix, "chat:s1");
    assert_eq!(b.reason, BatchReason::Urgent);
    let names: Vec<_> = b.events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.last(), Some(&"chat:s1:finished"));
    let payloads: Vec<_> = b.events.iter().map(|e| e.2.clone()).collect();
    let expected: Vec<Value> = (0..5)
        .map(Value::from)
        .chain([Value::from("done")])
        .collect();
    assert_eq!(payloads, expected, "every earlier event first, in order");
}

#[test]
fn an_urgent_pattern_rule_flushes_its_prefix() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("chat:*", Policy::latest(HOUR, 1000))
        .urgent("chat:*:finished")
        .tick(HOUR)
        .subscriber(rec)
        .build()
        .unwrap();
    for i in 0..3 {
        engine.publish("chat:s9:delta", i).unwrap();
    }
    engine.publish("chat:s9:finished", true).unwrap();
    assert!(wait_until(LONG, || !log.lock().unwrap().is_empty()));
    let log = log.lock().unwrap();
    assert_eq!(log[0].reason, BatchReason::Urgent);
    let events: Vec<_> = log[0]
        .events
        .iter()
        .map(|e| (e.0.as_str(), e.2.clone()))
        .collect();
    assert_eq!(
        events,
        vec![
            ("chat:s9:delta", Value::from(2)),
            ("chat:s9:finished", Value::from(true))
        ]
    );
    assert_eq!(log[0].folded, 2);
}

#[test]
fn a_new_entity_within_a_window_keeps_both_in_first_appearance_order() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("chat:*", Policy::latest(HOUR, 1000))
        .subscriber(rec)
        .build()
        .unwrap();
    let key = engine.key("chat:s1:delta").unwrap();
    let mut p = engine.producer().unwrap();
    p.publish_with_sub_key(key, 7, Value::from("a1")).unwrap();
    p.publish_with_sub_key(key, 8, Value::from("b1")).unwrap();
    p.publish_with_sub_key(key, 7, Value::from("a2")).unwrap();
    p.publish_with_sub_key(key, 8, Value::from("b2")).unwrap();
    p.publish_with_sub_key(key, 7, Value::from("a3")).unwrap();
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    let survivors: Vec<_> = log[0].events.iter().map(|e| (e.1, e.2.clone())).collect();
    assert_eq!(
        survivors,
        vec![(7, Value::from("a3")), (8, Value::from("b2"))]
    );
    assert_eq!(log[0].folded, 3);
}

#[test]
fn an_urgent_latest_event_supersedes_its_pending_survivor_and_comes_last() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("chat:*", Policy::latest(HOUR, 1000))
        .tick(HOUR)
        .subscriber(rec)
        .build()
        .unwrap();
    let key = engine.key("chat:s1:delta").unwrap();
    let mut p = engine.producer().unwrap();
    p.publish_with_sub_key(key, 7, Value::from("a1")).unwrap();
    p.publish_with_sub_key(key, 8, Value::from("b1")).unwrap();
    p.publish_with_sub_key(key, 9, Value::from("c1")).unwrap();
    p.publish_with_sub_key(key, 7, Value::from("a2")).unwrap();
    p.publish_urgent_with_sub_key(key, 7, Value::from("a-final"))
        .unwrap();
    // No flush: only the urgent path delivers within the hour.
    assert!(wait_until(LONG, || !log.lock().unwrap().is_empty()));
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].reason, BatchReason::Urgent);
    let events: Vec<_> = log[0].events.iter().map(|e| (e.1, e.2.clone())).collect();
    assert_eq!(
        events,
        vec![
            (8, Value::from("b1")),
            (9, Value::from("c1")),
            (7, Value::from("a-final"))
        ],
        "other survivors in order of first appearance, the urgent one last"
    );
    assert_eq!(log[0].folded, 2, "a2 replaced a1; a-final superseded a2");
    drop(log);
    let stats = engine.stats();
    assert_eq!((stats.sealed, stats.folded), (3, 2));
    assert!(stats.is_conserved());
}

#[test]
fn publish_many_of_latest_names_sends_whole_stamped_events() {
    // `latest` names are stamped at publish: three slots per event, so an
    // 8-slot ring takes two whole events, never a torn third.
    let (gate, entered, release) = gate();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let engine = Engine::<u64>::builder()
        .policy("gate:*", Policy::Passthrough)
        .policy("chat:*", Policy::latest(HOUR, 1000))
        .ring_capacity(8)
        .subscriber_with("*", gate_options(), gate)
        .subscriber(move |b: &Batch<u64>| {
            let mut sink = sink.lock().unwrap();
            sink.extend(
                b.events()
                    .iter()
                    .map(|e| *e.payload())
                    .filter(|&p| p != JAM),
            );
        })
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    p.publish("gate:g:x", 0u64).unwrap();
    entered.recv().unwrap();
    jam(&engine, &mut p); // the flusher is held: the ring is not drained
    let key = engine.key("chat:s1:delta").unwrap();
    let mut events = (1..=20u64).map(|i| (key, i));
    assert_eq!(p.publish_many(&mut events).unwrap(), 2);
    assert_eq!(
        events.next(),
        Some((key, 3)),
        "the rest stays with the caller"
    );
    release.send(()).unwrap();
    engine.flush().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 2],
        "the later event survives"
    );
    let stats = engine.stats();
    assert_eq!(
        (stats.published, stats.folded),
        (3 + 2, 1),
        "and the two jam events"
    );
    assert!(stats.is_conserved());
}

/// Final state per (name, sub-key) after applying every delivered event.
fn replay(policy: Policy, ops: &[(usize, u64, i64)]) -> HashMap<(String, u64), Value> {
    let state: Arc<Mutex<HashMap<(String, u64), Value>>> = Arc::default();
    let s = state.clone();
    let engine = Engine::<Value>::builder()
        .default_policy(policy)
        .subscriber(move |b: &Batch<Value>| {
            let mut s = s.lock().unwrap();
            for e in b.events() {
                s.insert((e.name().to_string(), e.sub_key()), e.payload().clone());
            }
        })
        .build()
        .unwrap();
    let keys: Vec<_> = (0..3)
        .map(|i| engine.key(&format!("msg:m{i}:state")).unwrap())
        .collect();
    let mut p = engine.producer().unwrap();
    for (i, &(k, sub, v)) in ops.iter().enumerate() {
        p.publish_with_sub_key(keys[k], sub, Value::from(v))
            .unwrap();
        if i % 97 == 0 {
            engine.flush().unwrap();
        }
    }
    engine.flush().unwrap();
    engine.shutdown().unwrap();
    let s = state.lock().unwrap().clone();
    s
}

#[test]
fn latest_then_flush_ends_in_the_same_state_as_passthrough() {
    for seed in 1..=5 {
        let mut rng = Rng::new(seed);
        let ops: Vec<_> = (0..2000)
            .map(|_| (rng.below(3) as usize, rng.below(4), rng.below(1000) as i64))
            .collect();
        let coalesced = replay(Policy::latest(Duration::from_millis(5), 50), &ops);
        let realtime = replay(Policy::Passthrough, &ops);
        assert_eq!(coalesced, realtime, "seed {seed}");
        assert_eq!(realtime.len(), 12);
    }
}

/// `(name, sum_exact)` of every aggregate delivered.
type ExactLog = Arc<Mutex<Vec<(String, Option<i128>)>>>;

fn exact_sums() -> (impl FnMut(&Batch<Value>) + Send + 'static, ExactLog) {
    let log = ExactLog::default();
    let sink = log.clone();
    let subscriber = move |b: &Batch<Value>| {
        let mut sink = sink.lock().unwrap();
        for a in b.aggregates() {
            sink.push((a.name().to_owned(), a.sum_exact()));
        }
    };
    (subscriber, log)
}

#[test]
fn aggregates_match_a_reference_computation_on_random_data() {
    for seed in 1..=8 {
        let mut rng = Rng::new(seed);
        let (rec, log) = recorder::<Value>();
        let (exact_rec, exact_log) = exact_sums();
        let engine = Engine::<Value>::builder()
            .policy("gpu:*", Policy::aggregate(HOUR, 1_000_000))
            .sampled()
            .subscriber(rec)
            .subscriber(exact_rec)
            .build()
            .unwrap();
        // Two names mix integers and floats; the third gets only integers,
        // large ones (u64 near 2^64, i64 near -2^63), whose sum an f64
        // cannot hold exactly.
        let names = ["gpu:0:power_mw", "gpu:0:temp_c", "gpu:1:energy_uj"];
        let mut reference: HashMap<&str, Vec<f64>> = HashMap::new();
        let mut reference_exact: HashMap<&str, Option<i128>> = HashMap::new();
        let mut p = engine.producer().unwrap();
        let n = 1 + rng.below(500);
        for _ in 0..n {
            let i = rng.below(3) as usize;
            let name = names[i];
            let v = match (i, rng.below(2)) {
                (2, 0) => Value::from(u64::MAX - rng.below(1 << 20)),
                (2, _) => Value::from(i64::MIN + rng.below(1 << 20) as i64),
                // Mix integers and floats, negatives included.
                (_, 0) => Value::from(rng.below(100_000) as i64 - 50_000),
                (_, _) => Value::from((rng.below(1_000_000) as f64) / 7.0),
            };
            reference.entry(name).or_default().push(v.as_f64().unwrap());
            let exact = reference_exact.entry(name).or_insert(Some(0));
            *exact = match v {
                Value::U64(u) => exact.map(|s| s + i128::from(u)),
                Value::I64(i) => exact.map(|s| s + i128::from(i)),
                _ => None,
            };
            p.publish(name, v).unwrap();
        }
        engine.flush().unwrap();
        let exact_log = exact_log.lock().unwrap();
        assert_eq!(exact_log.len(), reference_exact.len());
        for (name, exact) in exact_log.iter() {
            assert_eq!(
                *exact,
                reference_exact[name.as_str()],
                "seed {seed}: {name}"
            );
        }
        let log = log.lock().unwrap();
        let mut seen = 0;
        for b in log.iter() {
            assert!(b.events.is_empty(), "aggregated readings are folded");
            for (name, count, sum, min, max, first, last) in &b.aggregates {
                let r = &reference[name.as_str()];
                seen += 1;
                assert_eq!(*count, r.len() as u64);
                // The float sum is checked against the exact sum where
                // there is one, else against a float reference.
                let rsum: f64 = match reference_exact[name.as_str()] {
                    Some(exact) => exact as f64,
                    None => r.iter().sum(),
                };
                assert!(
                    (sum - rsum).abs() <= 1e-9 * rsum.abs().max(1.0),
                    "{sum} vs {rsum}"
                );
                assert_eq!(*min, r.iter().cloned().fold(f64::INFINITY, f64::min));
                assert_eq!(*max, r.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                assert_eq!(*first, r[0]);
                assert_eq!(*last, r[r.len() - 1]);
            }
        }
        assert_eq!(seen, reference.len(), "seed {seed}: one aggregate per name");
        let stats = engine.stats();
        assert_eq!(stats.folded, n);
        assert!(stats.is_conserved());
    }
}

#[test]
fn non_numeric_payloads_under_aggregate_are_counted_not_averaged() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 1000))
        .sampled()
        .subscriber(rec)
        .build()
        .unwrap();
    engine.publish("gpu:0:power_mw", 100).unwrap();
    engine.publish("gpu:0:power_mw", "n/a").unwrap();
    engine.publish("gpu:0:power_mw", 300).unwrap();
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    let agg = &log[0].aggregates[0];
    assert_eq!((agg.1, agg.3, agg.4), (2, 100.0, 300.0));
    assert_eq!(log[0].dropped, 1, "the rejection is visible in band");
    let stats = engine.stats();
    assert_eq!(stats.dropped.not_numeric, 1);
    assert!(stats.is_conserved());
}

#[test]
fn nan_and_infinities_under_aggregate_are_not_numbers() {
    let (rec, log) = recorder::<Value>();
    let engine = Engine::<Value>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 1000))
        .sampled()
        .subscriber(rec)
        .build()
        .unwrap();
    engine.publish("gpu:0:util", 10.0).unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
        engine.publish("gpu:0:util", bad).unwrap();
    }
    engine.publish("gpu:0:util", 30.0).unwrap();
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1);
    let (_, count, sum, min, max, first, last) = log[0].aggregates[0].clone();
    assert_eq!((count, sum, min, max), (2, 40.0, 10.0, 30.0));
    assert_eq!((first, last), (10.0, 30.0));
    assert_eq!(log[0].dropped, 4, "the rejections are visible in band");
    let stats = engine.stats();
    assert_eq!(stats.dropped.not_numeric, 4);
    assert_eq!(stats.folded, 2);
    assert!(stats.is_conserved());
}

#[test]
fn a_custom_float_sampler_obeys_the_same_rule() {
    let sums = Arc::new(Mutex::new(Vec::new()));
    let sink = sums.clone();
    let engine = Engine::<f64>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 1000))
        .sample_with(|v| Some(*v))
        .subscriber(move |b: &Batch<f64>| {
            for a in b.aggregates() {
                sink.lock()
                    .unwrap()
                    .push((a.count(), a.sum(), a.sum_exact()));
            }
        })
        .build()
        .unwrap();
    for v in [1.5, f64::NAN, 2.5, f64::INFINITY] {
        engine.publish("gpu:0:util", v).unwrap();
    }
    engine.flush().unwrap();
    assert_eq!(*sums.lock().unwrap(), vec![(2, 4.0, None)]);
    assert_eq!(engine.stats().dropped.not_numeric, 2);
}

#[test]
fn integer_sums_are_exact_beyond_f64_precision() {
    let (rec, log) = exact_sums();
    let sums = Arc::new(Mutex::new(Vec::new()));
    let sink = sums.clone();
    let engine = Engine::<Value>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 1000))
        .sampled()
        .subscriber(rec)
        .subscriber(move |b: &Batch<Value>| {
            for a in b.aggregates() {
                sink.lock().unwrap().push(a.sum());
            }
        })
        .build()
        .unwrap();
    engine.publish("gpu:0:energy_uj", 1u64 << 53).unwrap();
    engine.publish("gpu:0:energy_uj", 1u64).unwrap();
    engine.publish("gpu:0:energy_uj", u64::MAX).unwrap();
    engine.publish("gpu:0:energy_uj", -5i64).unwrap();
    engine.flush().unwrap();
    let exact = (1i128 << 53) + 1 + i128::from(u64::MAX) - 5;
    assert_eq!(
        *log.lock().unwrap(),
        vec![("gpu:0:energy_uj".to_owned(), Some(exact))]
    );
    assert_eq!(*sums.lock().unwrap(), vec![exact as f64]);
}

#[test]
fn a_flush_during_delivery_waits_for_that_delivery() {
    let (started_tx, started_rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .subscriber(move |_b: &Batch<u64>| {
            let _ = started_tx.send(());
            std::thread::sleep(Duration::from_millis(100));
            d.store(true, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    engine.publish("slow:x", 1u64).unwrap();
    started_rx.recv().unwrap(); // the flusher is mid-delivery now
    engine.flush().unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "flush returned before the delivery ended"
    );
}

#[test]
fn flush_prefix_flushes_only_matching_prefixes() {
    let (rec, log) = recorder::<u64>();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(HOUR, 1000))
        .subscriber(rec)
        .build()
        .unwrap();
    engine.publish("data:users:created", 1u64).unwrap();
    engine.publish("data:orders:created", 2u64).unwrap();
    engine.publish("code_index:rust:indexed", 3u64).unwrap();
    engine.flush_prefix("data:*").unwrap();
    {
        let log = log.lock().unwrap();
        let mut prefixes: Vec<_> = log.iter().map(|b| b.prefix.as_str()).collect();
        prefixes.sort();
        assert_eq!(prefixes, vec!["data:orders", "data:users"]);
        assert!(log.iter().all(|b| b.reason == BatchReason::Flush));
    }
    engine.flush_prefix("code_index:rust").unwrap();
    assert_eq!(log.lock().unwrap().len(), 3);
    assert!(engine.flush_prefix("bad**").is_err());
}

#[test]
fn urgent_events_wait_on_a_full_ring_and_time_out_separately() {
    // A must-deliver subscriber (`LagPolicy::Block`) stuck on its first
    // batch: its one-slot queue fills, the flusher waits for space, and the
    // producer's ring (2 slots) fills behind it.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let mut first = true;
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::Passthrough)
        .ring_capacity(2)
        .urgent_wait(Duration::from_millis(500))
        .subscriber_with(
            "*",
            SubscribeOptions::new("sink")
                .lag(LagPolicy::Block { timeout: LONG })
                .budget(Budget::new(1, u64::MAX)),
            move |_b: &Batch<u64>| {
                if std::mem::take(&mut first) {
                    entered_tx.send(()).unwrap();
                    let _ = release_rx.lock().unwrap().recv_timeout(LONG);
                }
            },
        )
        .build()
        .unwrap();
    let mut p = engine.producer().unwrap();
    let key = engine.key("job:j1:done").unwrap();
    p.publish_key(key, 0u64).unwrap();
    entered_rx.recv().unwrap();
    p.publish_key(key, 1u64).unwrap();
    assert!(wait_until(LONG, || engine.stats().subscribers[0].queued == 1));
    // 2 fills nothing: the flusher takes it off the ring, then waits for
    // queue space.
    p.publish_key(key, 2u64).unwrap();
    assert!(wait_until(LONG, || engine.stats().pending == 0));
    p.publish_key(key, 3u64).unwrap();
    p.publish_key(key, 4u64).unwrap();
    // Ordinary publish: dropped at once. Urgent: waits, then times out.
    assert_eq!(p.publish_key(key, 5u64), Err(PublishError::Full(5)));
    assert_eq!(p.publish_urgent(key, 6u64), Err(PublishError::Full(6)));
    let stats = engine.stats();
    assert_eq!((stats.dropped.full, stats.dropped.urgent_timeout), (1, 1));
    // With space freed during the wait, the urgent publish goes through.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        release_tx.send(()).unwrap();
    });
    // The ring still holds 3 and 4: this urgent publish must wait.
    assert_eq!(p.publish_urgent(key, 7u64), Ok(()));
    releaser.join().unwrap();
    engine.flush().unwrap();
    // 0 to 4 and the urgent 7.
    assert_eq!(engine.stats().sealed, 6);
}
