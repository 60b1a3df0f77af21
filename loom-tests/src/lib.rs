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
