//! Zero allocations per published event in steady state, measured with a
//! counting global allocator over every thread (producer, flusher and the
//! subscribers' delivery threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ringfold::{Batch, Engine, Policy, SubscribeOptions};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// The sizes of the first allocations counted while `MEASURING` (so a
/// failure says what grew, not only how often).
static SIZES: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];
static MEASURING: AtomicBool = AtomicBool::new(false);

fn count(size: usize) {
    let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
    if MEASURING.load(Ordering::Relaxed) {
        if let Some(slot) = SIZES.get(n.wrapping_sub(BASE.load(Ordering::Relaxed)) as usize) {
            slot.store(size as u64, Ordering::Relaxed);
        }
    }
}
static BASE: AtomicU64 = AtomicU64::new(0);

/// Starts recording allocation sizes; returns the count so far.
fn start_measuring() -> u64 {
    let before = ALLOCS.load(Ordering::SeqCst);
    BASE.store(before, Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
    before
}

/// Stops recording; returns the count so far and the sizes recorded.
fn stop_measuring() -> (u64, Vec<u64>) {
    MEASURING.store(false, Ordering::SeqCst);
    let after = ALLOCS.load(Ordering::SeqCst);
    let n = (after - BASE.load(Ordering::SeqCst)).min(SIZES.len() as u64) as usize;
    let sizes = SIZES[..n]
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .collect();
    (after, sizes)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn run_round(
    engine: &Engine<u64>,
    producer: &mut ringfold::Producer<u64>,
    keys: &[ringfold::EventKey],
    n: u64,
) {
    for i in 0..n {
        let key = keys[(i % keys.len() as u64) as usize];
        producer.publish_key(key, i).unwrap();
        if i % 1024 == 1023 {
            // Keep the ring (4096 slots) from filling: this test is about
            // accepted events.
            engine.flush().unwrap();
        }
    }
    engine.flush().unwrap();
}

fn steady_state_allocations(policy: Policy, fan_out: bool) -> (u64, u64) {
    steady_state_allocations_with(policy, fan_out, None).0
}

/// With `lagging` (a per-batch delay), one more subscriber that sleeps per
/// batch and merges as soon as four batches wait: it is behind all the
/// time. Returns the allocations and events, and that subscriber's merged
/// windows during the measured round.
fn steady_state_allocations_with(
    policy: Policy,
    fan_out: bool,
    lagging: Option<Duration>,
) -> ((u64, u64), u64) {
    let mut builder = Engine::<u64>::builder()
        .default_policy(policy)
        .sample_with(|v| Some(*v as f64))
        .tick(Duration::from_millis(1))
        .subscriber(|b: &Batch<u64>| {
            std::hint::black_box(b.len());
        });
    if fan_out {
        // Three more delivery threads, two of them filtered.
        builder = builder
            .subscriber_with(
                "data:t1:*",
                SubscribeOptions::new("t1"),
                |b: &Batch<u64>| {
                    std::hint::black_box(b.events().len());
                },
            )
            .subscriber_with("data:*", SubscribeOptions::new("data"), |b: &Batch<u64>| {
                std::hint::black_box(b.seq());
            })
            .subscriber(|b: &Batch<u64>| {
                std::hint::black_box(b.clone());
            });
    }
    if let Some(pause) = lagging {
        builder = builder.subscriber_with(
            "*",
            SubscribeOptions::new("lagging").coalesce_after(4),
            move |b: &Batch<u64>| {
                std::hint::black_box(b.events().iter().map(|e| *e.payload()).sum::<u64>());
                std::thread::sleep(pause);
            },
        );
    }
    let engine = builder.build().unwrap();
    // A pull-mode subscriber drained by its own thread.
    let rx = engine.receiver("*", SubscribeOptions::new("pull")).unwrap();
    let puller = std::thread::spawn(move || {
        let mut n = 0usize;
        while let Some(b) = rx.recv() {
            n += b.len() + b.aggregates().len() + b.histograms().len();
        }
        n
    });
    let mut producer = engine.producer().unwrap();
    let keys: Vec<_> = (0..16)
        .map(|i| engine.key(&format!("data:t{i}:created")).unwrap())
        .collect();
    // Warm-up: accumulators, maps and report buffers reach their size, and
    // the batch pool (which reuses its oldest free batch, so its buffers
    // grow one batch at a time) has cycled through all its batches.
    for _ in 0..12 {
        run_round(&engine, &mut producer, &keys, 20_000);
    }
    let n = 100_000;
    let merged = |e: &Engine<u64>| {
        e.stats()
            .subscribers
            .iter()
            .find(|s| s.name == "lagging")
            .map_or(0, |s| s.merged_batches)
    };
    let merged_before = merged(&engine);
    let before = start_measuring();
    run_round(&engine, &mut producer, &keys, n);
    let (after, sizes) = stop_measuring();
    if after > before {
        println!(
            "  allocation sizes (bytes, first {}): {sizes:?}",
            SIZES.len()
        );
    }
    let merged_during = merged(&engine) - merged_before;
    let stats = engine.shutdown().unwrap();
    assert!(puller.join().unwrap() > 0);
    assert!(stats.subscribers.iter().all(|s| s.lost_events() == 0));
    ((after - before, n), merged_during)
}

// The policies run in one test so no other test allocates meanwhile.
#[test]
fn no_allocation_per_event_in_steady_state() {
    let ms = Duration::from_millis;
    for policy in [
        Policy::batch(ms(50), 100),
        Policy::latest(ms(50), 100),
        Policy::aggregate(ms(50), 100),
        // Sketches are reused across windows (`Histograms`' spare slots),
        // and a reused one whose next window covers another range slides
        // its counts rather than reallocating.
        Policy::histogram(ms(50), 100),
    ] {
        let (allocs, events) = steady_state_allocations(policy, false);
        println!("{policy:?}: {allocs} allocations for {events} events");
        // Flush hand-offs use a mutex and condvar (no allocation); the
        // bound leaves room only for rare, non-per-event growth.
        assert!(
            allocs <= 8,
            "{policy:?}: {allocs} allocations for {events} events"
        );
    }
    // Fan-out to five subscribers (four delivery threads and a receiver).
    let (allocs, events) = steady_state_allocations(Policy::batch(ms(50), 100), true);
    println!("fan-out batch: {allocs} allocations for {events} events");
    // Flush hand-offs use a mutex and condvar (no allocation); the bound
    // leaves room only for rare, non-per-event growth.
    assert!(
        allocs <= 8,
        "fan-out batch: {allocs} allocations for {events} events"
    );
    // Passthrough fan-out (one batch per event, five subscribers): the
    // backlog is deep (up to a flush interval's worth of batches when a
    // delivery thread is descheduled), and how deep depends on scheduling,
    // so a pool that grew to the deepest backlog seen so far allocated
    // whenever a deeper one came. The pool is provisioned to the
    // subscribers' bound instead (queue capacity + one in hand, each), so
    // the same bound holds.
    let (allocs, events) = steady_state_allocations(Policy::Passthrough, true);
    println!("fan-out passthrough: {allocs} allocations for {events} events");
    assert!(
        allocs <= 8,
        "fan-out passthrough: {allocs} allocations for {events} events"
    );
    // A subscriber that is always behind: its queue merges windows all the
    // time, reusing its merges and the pool's windows.
    for policy in [
        Policy::Passthrough,
        Policy::latest(ms(50), 4),
        Policy::aggregate(ms(50), 4),
    ] {
        let ((allocs, events), merged) =
            steady_state_allocations_with(policy, false, Some(Duration::from_micros(200)));
        println!(
            "lagging {policy:?}: {allocs} allocations for {events} events, {merged} windows merged"
        );
        assert!(merged > 0, "the lagging subscriber merged nothing");
        assert!(
            allocs <= 8,
            "lagging {policy:?}: {allocs} allocations for {events} events ({merged} merged)"
        );
    }
    // `histogram` behind a lagging subscriber: merging reuses the queue's
    // sketches, but the windows it holds keep more of the fold's pooled
    // sketches in circulation (over a thousand), and each grows its bucket
    // array to its data's range the first few times it is used: growth
    // bounded per pooled sketch (at most a handful of doublings to the
    // sketch's maximum), not per event. With this counting-up data the
    // measured round saw 15-16, a per-event cost would be thousands.
    let ((allocs, events), merged) = steady_state_allocations_with(
        Policy::histogram(ms(50), 4),
        false,
        Some(Duration::from_micros(200)),
    );
    println!(
        "lagging histogram: {allocs} allocations for {events} events, {merged} windows merged"
    );
    assert!(merged > 0, "the lagging subscriber merged nothing");
    assert!(
        allocs <= 64,
        "lagging histogram: {allocs} allocations for {events} events ({merged} merged)"
    );
}
