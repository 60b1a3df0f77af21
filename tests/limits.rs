//! The engine at its edges (issue 12): huge durations, huge capacities and
//! payloads, rule-urgent events on a full ring, the name table's limit, and
//! a flusher that dies. Everything through the public API.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, HOUR, LONG};
use ringfold::{
    Batch, Engine, EngineBuilder, Error, FullPolicy, Policy, Producer, PublishError,
    PublishManyError,
};

// ---------------------------------------------------------------------------
// A flusher held still, deterministically: the aggregate sampler runs on the
// flusher, so a sampler that waits for a flag stalls it mid-sweep. One
// `Stall` per test (tests run in parallel), chosen by a const parameter.

struct Stall {
    entered: AtomicBool,
    release: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const STALL: Stall = Stall {
    entered: AtomicBool::new(false),
    release: AtomicBool::new(false),
};
static STALLS: [Stall; 6] = [STALL; 6];

fn stalling_sampler<const N: usize>(v: &u64) -> Option<f64> {
    let stall = &STALLS[N];
    stall.entered.store(true, Ordering::SeqCst);
    while !stall.release.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    Some(*v as f64)
}

/// Releases the stalled flusher when dropped, so a failing test does not
/// hang in the engine's drop.
struct Release(usize);

impl Release {
    /// Releases it from another thread after `after`.
    fn later(&self, after: Duration) -> std::thread::JoinHandle<()> {
        let n = self.0;
        std::thread::spawn(move || {
            std::thread::sleep(after);
            STALLS[n].release.store(true, Ordering::SeqCst);
        })
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        STALLS[self.0].release.store(true, Ordering::SeqCst);
    }
}

/// An engine with two-slot rings whose flusher is stuck in the sampler of
/// its first `gpu:*` event, and a producer for the caller.
fn stalled<const N: usize>(builder: EngineBuilder<u64>) -> (Engine<u64>, Producer<u64>, Release) {
    let engine = builder
        .ring_capacity(2)
        .policy("gpu:*", Policy::aggregate(HOUR, 1_000_000))
        .policy("data:*", Policy::batch(HOUR, 1_000_000))
        .sample_with(stalling_sampler::<N>)
        .build()
        .unwrap();
    let release = Release(N);
    engine.publish("gpu:0:util", 1u64).unwrap();
    assert!(
        wait_until(LONG, || STALLS[N].entered.load(Ordering::SeqCst)),
        "the flusher never sampled"
    );
    let producer = engine.producer().unwrap();
    (engine, producer, release)
}

/// Publishes ordinary events until the ring is full (`DropNewest`).
fn fill(producer: &mut Producer<u64>) {
    for i in 0..3u64 {
        if let Err(e) = producer.publish("data:fill:x", i) {
            assert!(matches!(e, PublishError::Full(_)), "{e:?}");
            return;
        }
    }
    panic!("a two-slot ring took three events");
}

// ---------------------------------------------------------------------------
// Item 10: `Duration::MAX` means "no limit", never a panic.

#[test]
fn flush_and_shutdown_timeouts_of_duration_max_wait_without_limit() {
    let engine = Engine::<u64>::builder().build().unwrap();
    engine.publish("data:a:b", 1u64).unwrap();
    engine.flush_timeout(Duration::MAX).unwrap();
    assert_eq!(engine.stats().sealed, 1);
    let stats = engine.shutdown_timeout(Duration::MAX).unwrap();
    assert_eq!(stats.sealed, 1);
}

#[test]
fn block_of_duration_max_waits_for_space() {
    let (engine, mut producer, release) =
        stalled::<0>(Engine::builder().on_full(FullPolicy::Block(Duration::MAX)));
    let releaser = release.later(Duration::from_millis(50));
    // Two slots and a stuck flusher: the third publish waits until the
    // flusher is released (it used to panic computing its deadline).
    for i in 0..3u64 {
        producer.publish("data:block:x", i).unwrap();
    }
    releaser.join().unwrap();
    engine.flush_timeout(LONG).unwrap();
    assert_eq!(engine.stats().dropped.full, 0);
    drop(producer);
    engine.shutdown_timeout(LONG).unwrap();
}

#[test]
fn urgent_wait_of_duration_max_waits_for_space() {
    let (engine, mut producer, release) =
        stalled::<1>(Engine::builder().urgent_wait(Duration::MAX));
    fill(&mut producer);
    let releaser = release.later(Duration::from_millis(50));
    let key = engine.key("data:urgent:x").unwrap();
    producer.publish_urgent(key, 7u64).unwrap();
    releaser.join().unwrap();
    engine.flush_timeout(LONG).unwrap();
    assert_eq!(engine.stats().dropped.urgent_timeout, 0);
    drop(producer);
    engine.shutdown_timeout(LONG).unwrap();
}

// ---------------------------------------------------------------------------
// Item 3: names urgent by rule wait `urgent_wait` on a full ring, like
// `publish_urgent`, and count `urgent_timeout` when it runs out.

#[test]
fn rule_urgent_events_wait_for_space_like_publish_urgent() {
    let (engine, mut producer, release) =
        stalled::<2>(Engine::builder().urgent("alert:*").urgent_wait(LONG));
    fill(&mut producer);
    let releaser = release.later(Duration::from_millis(50));
    // Used to come back at once as `Full`.
    producer.publish("alert:disk:full", 9u64).unwrap();
    releaser.join().unwrap();
    engine.flush_timeout(LONG).unwrap();
    let stats = engine.stats();
    assert_eq!(stats.dropped.urgent_timeout, 0);
    assert_eq!(stats.dropped.full, 1, "only the fill's overflow");
    drop(producer);
    engine.shutdown_timeout(LONG).unwrap();
}

#[test]
fn rule_urgent_events_that_time_out_count_as_urgent_timeout() {
    let (engine, mut producer, release) = stalled::<3>(
        Engine::builder()
            .urgent("alert:*")
            .urgent_wait(Duration::from_millis(20)),
    );
    fill(&mut producer);
    match producer.publish("alert:disk:full", 9u64) {
        Err(PublishError::Full(9)) => {}
        other => panic!("unexpected {other:?}"),
    }
    let stats = engine.stats();
    assert_eq!(stats.dropped.urgent_timeout, 1);
    assert_eq!(stats.dropped.full, 1, "only the fill's overflow");
    drop(release);
    drop(producer);
    engine.shutdown_timeout(LONG).unwrap();
}

// ---------------------------------------------------------------------------
// Item 6: `TooManyNames` is its own reason.

#[test]
fn too_many_names_is_its_own_reason() {
    let engine = Engine::<u64>::builder().max_names(2).build().unwrap();
    let mut producer = engine.producer().unwrap();
    producer.publish("data:a:one", 1u64).unwrap();
    producer.publish("data:a:two", 2u64).unwrap();
    match producer.publish("data:a:three", 3u64) {
        Err(PublishError::TooManyNames(3)) => {}
        other => panic!("unexpected {other:?}"),
    }
    match engine.publish("data:a:four", 4u64) {
        Err(PublishError::TooManyNames(4)) => {}
        other => panic!("unexpected {other:?}"),
    }
    match engine.publish_urgent("data:a:five", 5u64) {
        Err(PublishError::TooManyNames(5)) => {}
        other => panic!("unexpected {other:?}"),
    }
    // A malformed name is still `InvalidName`.
    match producer.publish("data::bad", 6u64) {
        Err(PublishError::InvalidName(6)) => {}
        other => panic!("unexpected {other:?}"),
    }
    engine.flush().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.dropped.too_many_names, 3);
    assert_eq!(stats.dropped.invalid_name, 1);
    assert_eq!(stats.dropped.rejected(), 4);
    assert!(stats.is_conserved());
    drop(producer);
    engine.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Item 13: ring capacity has a documented maximum, checked up front.

#[test]
fn ring_capacity_over_the_maximum_is_refused_at_build() {
    for cap in [
        1usize << 40,
        1 << 62,
        EngineBuilder::<u64>::MAX_RING_CAPACITY * 2,
    ] {
        match Engine::<u64>::builder().ring_capacity(cap).build() {
            Err(Error::InvalidConfig(_)) => {}
            other => panic!("capacity {cap}: unexpected {other:?}"),
        }
    }
    // Within the slot limit but over 1 GiB for this payload type.
    match Engine::<[u8; 4096]>::builder()
        .ring_capacity(1 << 20)
        .build()
    {
        Err(Error::InvalidConfig(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    // The maximum itself builds (rings are allocated per producer).
    let engine = Engine::<u64>::builder()
        .ring_capacity(EngineBuilder::<u64>::MAX_RING_CAPACITY)
        .build()
        .unwrap();
    engine.shutdown().unwrap();
}

/// A `latest` event is stamped at publish and takes three slots: a
/// two-slot ring could never take one (every publish came back `Full`).
#[test]
fn rings_too_small_for_stamped_events_are_refused() {
    let latest = || Engine::<u64>::builder().policy("data:*", Policy::latest(HOUR, 10));
    match latest().ring_capacity(2).build() {
        Err(Error::InvalidConfig(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    let engine = latest().build().unwrap();
    assert!(matches!(
        engine.producer_with_capacity(2),
        Err(Error::InvalidConfig(_))
    ));
    let mut producer = engine.producer_with_capacity(4).unwrap();
    producer.publish("data:a:b", 1u64).unwrap();
    drop(producer);
    engine.shutdown().unwrap();
}

#[test]
fn producer_with_capacity_has_its_own_ring_size() {
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    let engine = Engine::<u64>::builder()
        .precise_timestamps(true)
        .subscriber(move |b: &Batch<u64>| {
            count.fetch_add(b.len() as u64, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    for cap in [0usize, 2, 100, 1 << 40, 1 << 62] {
        match engine.producer_with_capacity(cap) {
            Err(Error::InvalidConfig(_)) => {}
            other => panic!("capacity {cap}: unexpected {other:?}"),
        }
    }
    // Cheap per-task producers: 64 slots each.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let mut producer = engine.producer_with_capacity(64).unwrap();
            let key = engine.key(&format!("data:task{t}:step")).unwrap();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                for i in 0..500u64 {
                    if producer.publish_key(key, i).is_ok() {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u64 = tasks.into_iter().map(|t| t.join().unwrap()).sum();
    engine.flush().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.published, ok);
    assert_eq!(stats.published + stats.dropped.full, 8 * 500);
    assert_eq!(delivered.load(Ordering::Relaxed), ok);
    engine.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Item 14: payload size has a documented maximum, checked at build.

#[test]
fn payload_types_over_the_maximum_are_refused_at_build() {
    match Engine::<[u8; 1 << 20]>::builder().build() {
        Err(Error::PayloadTooLarge { size, max }) => {
            assert_eq!(size, 1 << 20);
            assert_eq!(max, EngineBuilder::<u8>::MAX_PAYLOAD_SIZE);
        }
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
}

/// Rust's default stack for spawned threads (the flusher's too).
const STACK: usize = 2 << 20;
type Largest = [u8; EngineBuilder::<u8>::MAX_PAYLOAD_SIZE];

#[test]
fn payloads_at_the_maximum_are_delivered() {
    let seen = Arc::new(AtomicU64::new(0));
    let sink = seen.clone();
    // Published from a thread with the default 2 MiB stack, like the
    // flusher's.
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let engine = Engine::<Largest>::builder()
                .ring_capacity(64)
                .policy("blob:*", Policy::latest(HOUR, 1_000_000))
                .subscriber(move |b: &Batch<Largest>| {
                    for e in b.events() {
                        sink.fetch_add(u64::from(e.payload()[7]), Ordering::Relaxed);
                    }
                })
                .build()
                .unwrap();
            for i in 0..4u8 {
                let mut blob = [0u8; EngineBuilder::<u8>::MAX_PAYLOAD_SIZE];
                blob[7] = i + 1;
                engine.publish(&format!("blob:b:{i}"), blob).unwrap();
            }
            engine.flush().unwrap();
            engine.shutdown().unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 1 + 2 + 3 + 4);
}

// ---------------------------------------------------------------------------
// Item 9: user input never kills the flusher; if it dies anyway, everyone is
// told, and nothing hangs or aborts.

#[test]
fn a_batch_window_of_duration_max_is_a_window_that_never_closes_on_time() {
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::MAX, 100))
        .policy("data:*", Policy::latest(Duration::MAX, 100))
        .subscriber(move |b: &Batch<u64>| {
            count.fetch_add(b.len() as u64, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    engine.publish("misc:a:b", 1u64).unwrap();
    engine.publish("data:a:b", 2u64).unwrap();
    // Used to panic the flusher (`Instant + Duration::MAX`): the flush
    // then timed out.
    engine.flush_timeout(LONG).unwrap();
    assert_eq!(delivered.load(Ordering::Relaxed), 2);
    let stats = engine.shutdown_timeout(LONG).unwrap();
    assert!(!stats.flusher_died);
}

fn panicking_sampler(_: &u64) -> Option<f64> {
    panic!("a sampler bug (expected by the test)")
}

#[test]
fn a_dead_flusher_is_reported_to_every_later_call() {
    let engine = Engine::<u64>::builder()
        .policy("gpu:*", Policy::aggregate(HOUR, 100))
        .sample_with(panicking_sampler)
        .build()
        .unwrap();
    // If the death were unseen, dropping the engine would hang: keep one
    // handle out of the test's way so a failure fails instead of hanging.
    std::mem::forget(engine.clone());
    let mut producer = engine.producer().unwrap();
    // Accepted, then the flusher panics sampling it.
    producer.publish("gpu:0:util", 1u64).unwrap();
    let flushed = engine.flush_timeout(LONG);
    let Err(Error::FlusherDied(stats)) = flushed else {
        panic!("flush after the flusher died: {flushed:?}");
    };
    assert!(stats.flusher_died);
    assert_eq!(stats.published, 1);
    assert_eq!(stats.sealed, 0);
    assert_eq!(stats.pending, 1, "the event it died on is pending, forever");
    // Every later publish says so, with its payload back.
    assert!(wait_until(LONG, || producer.is_closed()));
    match producer.publish("data:a:b", 2u64) {
        Err(PublishError::FlusherDied(2)) => {}
        other => panic!("unexpected {other:?}"),
    }
    match engine.publish("data:a:b", 3u64) {
        Err(PublishError::FlusherDied(3)) => {}
        other => panic!("unexpected {other:?}"),
    }
    let key = engine.key("data:a:b").unwrap();
    match producer.publish_many(&mut [(key, 4u64)].into_iter()) {
        Err(PublishManyError::FlusherDied { rejected }) => assert!(rejected.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(engine.producer(), Err(Error::FlusherDied(_))));
    assert!(matches!(engine.flush(), Err(Error::FlusherDied(_))));
    let stats = match engine.shutdown_timeout(LONG) {
        Err(Error::FlusherDied(stats)) => stats,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(stats.dropped.flusher_died, 2);
    assert!(matches!(engine.shutdown(), Err(Error::FlusherDied(_))));
    assert!(engine.is_shut_down());
    drop(producer);
}

/// Payloads whose `Drop` panics, several per window, replaced under
/// `latest` (so dropped on the flusher): the process neither aborts nor
/// hangs, and the engine reports a typed outcome.
#[test]
fn panicking_payload_drops_neither_abort_nor_hang() {
    struct Grenade(u64);
    impl Drop for Grenade {
        fn drop(&mut self) {
            if self.0 % 2 == 1 && !std::thread::panicking() {
                panic!("payload drop (expected by the test)");
            }
        }
    }
    let engine = Engine::<Grenade>::builder()
        .policy("data:*", Policy::latest(HOUR, 1_000_000))
        .build()
        .unwrap();
    std::mem::forget(engine.clone());
    let mut producer = engine.producer().unwrap();
    for i in 0..8 {
        // Each replaces the previous survivor of the same name.
        if let Err(e) = producer.publish("data:same:key", Grenade(i * 2 + 1)) {
            std::mem::forget(e.into_inner());
        }
    }
    match engine.flush_timeout(LONG) {
        Ok(()) | Err(Error::FlusherDied(_)) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
    match engine.shutdown_timeout(LONG) {
        Ok(_) | Err(Error::FlusherDied(_)) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
    std::mem::forget(producer);
}

// ---------------------------------------------------------------------------
// Item 2: a key carries its engine's identity; another engine refuses it.

#[test]
fn a_key_of_another_engine_is_refused_and_counted() {
    let names = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = names.clone();
    let b = Engine::<u64>::builder()
        .subscriber(move |batch: &Batch<u64>| {
            let mut sink = sink.lock().unwrap();
            sink.extend(batch.events().iter().map(|e| e.name().to_owned()));
        })
        .build()
        .unwrap();
    let a = Engine::<u64>::builder().build().unwrap();
    // The same id (0) in both engines, for different names.
    let secret = a.key("a:secret:x").unwrap();
    let invoice = b.key("billing:invoice:n5").unwrap();
    assert_eq!(secret.name_id(), invoice.name_id());
    let mut producer = b.producer().unwrap();
    assert_eq!(
        producer.publish_key(secret, 1u64),
        Err(PublishError::ForeignKey(1))
    );
    assert_eq!(
        b.publish_key(secret, 2u64),
        Err(PublishError::ForeignKey(2))
    );
    match producer.publish_many(&mut [(invoice, 3), (secret, 4)].into_iter()) {
        Err(PublishManyError::ForeignKey { accepted, rejected }) => {
            assert_eq!((accepted, rejected), (1, vec![4]));
        }
        other => panic!("unexpected {other:?}"),
    }
    b.flush().unwrap();
    assert_eq!(
        *names.lock().unwrap(),
        vec!["billing:invoice:n5".to_owned()]
    );
    let stats = b.stats();
    assert_eq!(stats.dropped.foreign_key, 3);
    assert_eq!(stats.published, 1);
    drop(producer);
    b.shutdown().unwrap();
    a.shutdown().unwrap();
}

fn stall_then_panic<const N: usize>(v: &u64) -> Option<f64> {
    stalling_sampler::<N>(v);
    panic!("a sampler bug (expected by the test)")
}

/// A producer blocked on a full ring when the flusher dies is told at
/// once, not at the end of its (hour-long) wait.
#[test]
fn a_producer_waiting_for_space_is_told_when_the_flusher_dies() {
    let engine = Engine::<u64>::builder()
        .ring_capacity(2)
        .on_full(FullPolicy::Block(HOUR))
        .policy("gpu:*", Policy::aggregate(HOUR, 1_000_000))
        .sample_with(stall_then_panic::<4>)
        .build()
        .unwrap();
    std::mem::forget(engine.clone());
    let release = Release(4);
    engine.publish("gpu:0:util", 1u64).unwrap();
    assert!(wait_until(LONG, || STALLS[4]
        .entered
        .load(Ordering::SeqCst)));
    let mut producer = engine.producer().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let results: Vec<_> = (0..3u64).map(|i| producer.publish("data:a:b", i)).collect();
        let _ = tx.send(results);
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(release); // the flusher resumes, and panics
    let results = rx
        .recv_timeout(LONG)
        .expect("the waiting publish never returned");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(PublishError::FlusherDied(_)))),
        "{results:?}"
    );
    assert!(matches!(results[2], Err(PublishError::FlusherDied(2))));
}

/// Payloads the fold discards (a `latest` survivor replaced, an aggregated
/// reading's payload) are dropped on the flusher: a panicking `Drop` there
/// is caught and counted, and the engine goes on working. Before, the first
/// such drop killed the flusher (`FlusherDied` from then on).
#[test]
fn payload_drops_that_panic_in_the_fold_are_caught_and_counted() {
    struct Bomb(bool);
    impl Drop for Bomb {
        fn drop(&mut self) {
            if self.0 && !std::thread::panicking() {
                panic!("payload drop (expected by the test)");
            }
        }
    }
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = delivered.clone();
    let engine = Engine::<Bomb>::builder()
        .policy("data:*", Policy::latest(HOUR, 1_000_000))
        .policy("gpu:*", Policy::aggregate(HOUR, 1_000_000))
        .sample_with(|_| Some(1.0))
        .subscriber(move |batch: &Batch<Bomb>| {
            seen.fetch_add(
                (batch.len() + batch.aggregates().len()) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        })
        .build()
        .unwrap();
    let mut producer = engine.producer().unwrap();
    // Seven survivors replaced (each drop panics), the last one harmless.
    for i in 0..8 {
        assert!(producer.publish("data:same:key", Bomb(i < 7)).is_ok());
    }
    // Three readings aggregated: each payload is dropped after sampling.
    for _ in 0..3 {
        assert!(producer.publish("gpu:0:temp_c", Bomb(true)).is_ok());
    }
    engine.flush_timeout(LONG).expect("the flusher survives");
    // Still alive: a later publish is delivered.
    assert!(producer.publish("data:other:key", Bomb(false)).is_ok());
    engine.flush_timeout(LONG).expect("the flusher survives");
    let stats = engine.shutdown_timeout(LONG).expect("clean shutdown");
    assert!(!stats.flusher_died);
    assert_eq!(stats.subscriber_panics, 10, "every panicking drop counted");
    // One `latest` survivor per key and one aggregate.
    assert_eq!(delivered.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert!(stats.is_conserved());
}

// ---------------------------------------------------------------------------
// Item 16: memory under producer churn. A dropped producer's ring stays
// registered until the flusher drains and retires it; a thread creating,
// publishing into and dropping producers in a loop must not outrun that.

/// Create / publish one event / drop, 200,000 times on one thread with a
/// healthy subscriber: the registered producers never exceed the live one
/// plus `Engine::MAX_RETIRING_PRODUCERS` (before the bound, thousands piled
/// up), and every event is delivered exactly once. No clock involved: the
/// bound holds however slow the flusher is, as long as it makes passes.
#[test]
fn producer_churn_keeps_registered_lanes_bounded() {
    // Fewer in an unoptimised build (a stats snapshot per cycle is slow
    // there); unbounded, the registry passed the bound within 602 cycles.
    const CYCLES: u64 = if cfg!(debug_assertions) {
        50_000
    } else {
        200_000
    };
    let bound = Engine::<u64>::MAX_RETIRING_PRODUCERS;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let engine = Engine::<u64>::builder()
        .subscriber(move |b: &Batch<u64>| {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let key = engine.key("data:churn:one").unwrap();
    let mut most = 0;
    for i in 0..CYCLES {
        let mut p = engine.producer().unwrap();
        p.publish_key(key, i).unwrap();
        let registered = engine.stats().producers;
        most = most.max(registered);
        assert!(
            registered <= bound + 1,
            "cycle {i}: {registered} producers registered, 1 live, bound {bound}"
        );
        drop(p);
    }
    engine.flush_timeout(LONG).unwrap();
    let stats = engine.shutdown_timeout(LONG).unwrap();
    assert_eq!(stats.published, CYCLES);
    assert_eq!(stats.sealed, CYCLES);
    assert_eq!(seen.load(Ordering::Relaxed), CYCLES);
    assert_eq!(stats.producers, 0, "every dropped producer retired");
    assert!(stats.is_conserved(), "{stats:?}");
    assert!(most >= 1);
}

/// With the flusher stuck (here in a sampler; a `LagPolicy::Block`
/// subscriber's full queue does the same), creations beyond the bound wait
/// for it only while it makes no pass for a bounded time, then go ahead:
/// never a hang. Released, the flusher retires every dropped lane.
#[test]
fn producer_creation_beyond_the_bound_goes_ahead_when_the_flusher_is_stuck() {
    let (engine, producer, release) = stalled::<5>(Engine::builder());
    drop(producer);
    let bound = Engine::<u64>::MAX_RETIRING_PRODUCERS;
    for _ in 0..bound {
        drop(engine.producer().unwrap());
    }
    // The backlog is over the bound and nothing retires: these wait for
    // the stall limit, then are created anyway.
    let over = engine.producer().expect("created after the stall limit");
    let over_sized = engine
        .producer_with_capacity(64)
        .expect("created after the stall limit");
    // The held producers (two, and the thread-local one behind
    // `engine.publish`) and the unretired dropped ones.
    assert!(engine.stats().producers >= bound + 3);
    drop((over, over_sized));
    drop(release);
    engine.flush_timeout(LONG).unwrap();
    // Only the thread-local producer behind `engine.publish` is left.
    assert!(wait_until(LONG, || engine.stats().producers == 1));
    let stats = engine.shutdown_timeout(LONG).unwrap();
    assert!(stats.is_conserved(), "{stats:?}");
}
