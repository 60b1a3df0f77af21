//! loom models of ringfold's concurrency design; the models live in
//! `tests/`, one file per property. Build and run them with `run.sh`
//! (`--cfg ringfold_loom`, release mode, debug assertions on, own target directory).
//!
//! Under a normal build this crate is empty, so `cargo test` at the
//! workspace root stays fast; every model is `#![cfg(ringfold_loom)]`.

/// Runs `f` under loom's model checker with the builder's environment
/// settings (`LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_BRANCHES`, ...), bounding
/// preemptions at 2 when `LOOM_MAX_PREEMPTIONS` is not set so that a plain
/// `cargo test` cannot run unbounded.
#[cfg(ringfold_loom)]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    // loom's default of 1,000 branches per execution is a spin-loop guard,
    // not a property: the longest execution of
    // `two_concurrent_flushes_each_queue_what_preceded_them` went past it
    // when the urgent catch-up sweep and the coalescing queue landed
    // together (it passes at 1,200; each alone stayed under 1,000). An
    // unbounded spin still exceeds any bound.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = 2_000;
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f()
    });
    // Shown with `--nocapture`: how much of the state space the bound let
    // loom explore.
    println!(
        "loom explored {} interleavings (preemption bound {:?})",
        runs.load(Ordering::Relaxed),
        builder.preemption_bound
    );
}

/// Spins until `done()` holds, yielding to loom's scheduler in between
/// (loom requires every spin loop to yield).
#[cfg(ringfold_loom)]
pub fn spin_until(mut done: impl FnMut() -> bool) {
    while !done() {
        loom::thread::yield_now();
    }
}

/// A window no model waits out: only a flush, a shutdown, a count or a
/// wake-up can deliver.
#[cfg(ringfold_loom)]
pub const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The engine most models race against: 2-slot rings, a tick of an hour
/// (the timer never decides anything), `policy` for every name, and a
/// subscriber that sets bit `payload` in `seen` for each delivered event
/// and, given `count`, counts deliveries (to catch duplicates).
#[cfg(ringfold_loom)]
pub fn recording_engine(
    policy: ringfold::Policy,
    seen: loom::sync::Arc<loom::sync::atomic::AtomicUsize>,
    count: Option<loom::sync::Arc<loom::sync::atomic::AtomicUsize>>,
) -> ringfold::Engine<u64> {
    use loom::sync::atomic::Ordering;
    ringfold::Engine::<u64>::builder()
        .ring_capacity(2)
        .tick(HOUR)
        .default_policy(policy)
        .subscriber(move |batch: &ringfold::Batch<u64>| {
            for event in batch.events() {
                seen.fetch_or(1 << *event.payload(), Ordering::Relaxed);
                if let Some(count) = &count {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .build()
        .unwrap()
}

/// The engine of the models that need no delivery thread: as
/// [`recording_engine`] (2-slot rings, a tick of an hour, `policy` for
/// every name), with no callback subscriber but a [`ringfold::Receiver`]
/// for every prefix. A model thread that already exists drains it, so loom
/// schedules no delivery thread: each one multiplies the interleavings.
/// `Engine::flush` waits for the receiver to hand batches out, so the
/// thread draining it must not be the one flushing.
#[cfg(ringfold_loom)]
pub fn receiving_engine(
    policy: ringfold::Policy,
) -> (ringfold::Engine<u64>, ringfold::Receiver<u64>) {
    let engine = ringfold::Engine::<u64>::builder()
        .ring_capacity(2)
        .tick(HOUR)
        .default_policy(policy)
        .build()
        .unwrap();
    let receiver = engine
        .receiver("*", ringfold::SubscribeOptions::new("loom"))
        .unwrap();
    (engine, receiver)
}

/// Sets bit `payload` in `seen` for each event of `batch`, failing the
/// model if a bit is already set: an event delivered twice.
#[cfg(ringfold_loom)]
pub fn record_once(batch: &ringfold::Batch<u64>, seen: &mut u64) {
    for event in batch.events() {
        let bit = 1 << *event.payload();
        assert_eq!(*seen & bit, 0, "event {} delivered twice", event.payload());
        *seen |= bit;
    }
}
