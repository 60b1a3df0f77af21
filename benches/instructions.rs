//! Instruction counts (callgrind) for the two per-event costs of ringfold:
//! the producer's `publish_key` and the flusher's fold. Run it with
//! `bash benches/instructions.sh`, which prints `publish_key: X Ir/event`
//! and `fold: Y Ir/event`.
//!
//! Why a self-contained `harness = false` binary driven by a script rather
//! than `iai-callgrind`/`gungraun`: those need a runner binary installed
//! with `cargo install` at exactly the library's version, and their client
//! requests need valgrind's headers at build time; here the only thing
//! needed is `valgrind` itself. The measured regions are picked out by
//! name instead:
//!
//! * `publish_key`: the script runs `RINGFOLD_CALLGRIND=publish` with
//!   `--collect-atstart=no --toggle-collect=*publish_chunk*`, so only the
//!   instructions executed inside [`publish_chunk`] (a loop of
//!   `Producer::publish_key` into a ring that is not full, the steady state
//!   of the criterion `publish` bench) are counted; a second run toggles on
//!   [`baseline_chunk`], the same loop without the publish, and its count
//!   is subtracted, so the figure is `publish_key` alone.
//! * fold: the flusher is a thread inside the engine, so its functions are
//!   not ours to name (and `src/` moves). The script runs
//!   `RINGFOLD_CALLGRIND=fold` with `--separate-threads=yes`, sums the
//!   instructions of every thread but the main one (the flusher is the
//!   only other thread), for two event counts, and divides the difference
//!   by the difference in events: setup, shutdown and the final partial
//!   windows cancel out, leaving the flusher's cost per event (drain, fold
//!   into the prefix's window, emit at 100, deliver the batch to a
//!   counting subscriber).
//!
//! The fold count repeats to within about 0.5 Ir/event. The `publish_key`
//! count moves by about 2 Ir/event between runs (40 to 42.4 measured): the
//! check after the push costs a few instructions more while the flusher is
//! parked until its next tick (high-water test) than while it is awake, and
//! whether the flusher (woken by the primer publish) is still awake during
//! the chunk depends on scheduling.
//!
//! Instruction counts are otherwise deterministic, so they
//! show a change's effect exactly on a noisy machine; they do not show
//! cache misses or cross-core transfers (the end-to-end criterion bench
//! does).
//!
//! Without `RINGFOLD_CALLGRIND` the binary exits at once, so `cargo test
//! --all-targets` (which runs every bench target in test mode) and a plain
//! `cargo bench` stay fast.

use std::hint::black_box;
use std::time::Duration;

use ringfold::{Batch, Engine, EventKey, FullPolicy, Policy, Producer};

const PREFIXES: usize = 64;
/// Publishes per measured chunk: below the default high-water mark (1024
/// of 4096), so no publish in the chunk wakes the flusher.
const CHUNK: u64 = 1000;
/// Events published into one ring before the next, with several producers
/// (see [`run_fold`]).
const TURN: u64 = 64;

fn keys(engine: &Engine<u64>) -> Vec<EventKey> {
    (0..PREFIXES)
        .map(|i| engine.key(&format!("data:t{i}:created")).unwrap())
        .collect()
}

/// The measured publish loop (toggled on by name; keep the name).
#[inline(never)]
fn publish_chunk(producer: &mut Producer<u64>, keys: &[EventKey], m: u64) {
    for i in 0..m {
        let k = keys[(i as usize) % PREFIXES];
        let _ = black_box(producer.publish_key(black_box(k), black_box(i)));
    }
}

/// [`publish_chunk`] without the publish: its count is the loop's own cost.
#[inline(never)]
fn baseline_chunk(keys: &[EventKey], m: u64) {
    for i in 0..m {
        let k = keys[(i as usize) % PREFIXES];
        black_box((black_box(k), black_box(i)));
    }
}

fn engine(ring: usize, high_water: usize, tick: Duration) -> Engine<u64> {
    Engine::<u64>::builder()
        // Batches of 100, as in the criterion benches, but an hour-long
        // window: under valgrind (~50x slower) 50 ms windows would expire
        // mid-run and wake the flusher a timing-dependent number of times,
        // making the counts vary from run to run.
        .default_policy(Policy::batch(Duration::from_secs(3600), 100))
        .ring_capacity(ring)
        .high_water(high_water)
        .tick(tick)
        .on_full(FullPolicy::Block(Duration::from_secs(60)))
        .subscriber(|b: &Batch<u64>| {
            black_box(b.len());
        })
        .build()
        .unwrap()
}

/// `n` publishes in chunks of [`CHUNK`], the ring drained (`flush`)
/// between chunks, as in the criterion `publish` bench; an unmeasured
/// primer publish per chunk wakes the flusher first.
fn run_publish(n: u64, baseline: bool) {
    let engine = engine(4096, 1024, Duration::from_millis(5));
    let keys = keys(&engine);
    let mut producer = engine.producer().unwrap();
    let mut done = 0;
    while done < n {
        let m = CHUNK.min(n - done);
        producer.publish_key(keys[0], 0u64).unwrap();
        if baseline {
            baseline_chunk(&keys, m);
        } else {
            publish_chunk(&mut producer, &keys, m);
        }
        engine.flush().unwrap();
        done += m;
    }
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.dropped.full, 0, "a measured publish hit a full ring");
}

/// `n` events streamed by one producer through the default ring (4096
/// slots, high-water mark 1024, `FullPolicy::Block`), then one `flush()`:
/// the flusher wakes at the high-water mark and folds sweeps of 1024-4096
/// events, the steady state of the end-to-end bench. (One sweep over a
/// ring holding all `n` would be cheaper per event in logic but grows the
/// flusher's list of sealed batches to `n / 100` entries, reallocations
/// that make the count vary and that a real ring never sees.)
///
/// With `RINGFOLD_CALLGRIND_PRODUCERS=P` (default 1), the main thread
/// publishes through `P` producers (`P` rings) in turns of [`TURN`] events,
/// so the flusher sweeps `P` rings as at `P` producer threads, while the
/// count stays the flusher's alone (producer threads would be more
/// threads to sum, and their waits on a full ring would vary).
fn run_fold(n: u64) {
    let engine = engine(4096, 1024, Duration::from_secs(3600));
    let keys = keys(&engine);
    let rings: usize = std::env::var("RINGFOLD_CALLGRIND_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut producers: Vec<_> = (0..rings).map(|_| engine.producer().unwrap()).collect();
    for i in 0..n {
        let producer = &mut producers[(i / TURN) as usize % rings];
        producer
            .publish_key(keys[(i as usize) % PREFIXES], i)
            .unwrap();
    }
    drop(producers);
    engine.flush().unwrap();
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.dropped.full, 0);
}

fn main() {
    let mode = std::env::var("RINGFOLD_CALLGRIND").unwrap_or_default();
    let n: u64 = std::env::var("RINGFOLD_CALLGRIND_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    match mode.as_str() {
        "publish" => run_publish(n, false),
        "baseline" => run_publish(n, true),
        "fold" => run_fold(n),
        _ => {
            println!("instructions: run `bash benches/instructions.sh` (callgrind); nothing to do")
        }
    }
}
