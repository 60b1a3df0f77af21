//! The layer's hot path allocates nothing: `counter!`/`gauge!`/`histogram!`
//! through a `FoldLayer` (the macro registers on every call), counted by a
//! global allocator per thread (the calling thread's hot path) and over
//! every thread (flusher and the layer's subscriber, in steady state).
#![cfg(feature = "metrics")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_util::layers::Layer;
use ringfold::metrics::FoldLayer;

struct Counting;
static ALL: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALL.fetch_add(1, Ordering::Relaxed);
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = MINE.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn round(n: u64) {
    for i in 0..n {
        counter!("requests_total", "route" => "/a").increment(1);
        counter!("bytes_total").increment(i);
        gauge!("depth").set(i as f64);
        gauge!("depth").increment(1.0);
        histogram!("latency_seconds").record((i % 1000) as f64 * 1e-4 + 1e-4);
    }
}

#[test]
fn hot_path_and_steady_state_allocate_nothing() {
    let layer = FoldLayer::builder()
        .window(Duration::from_secs(3600))
        .build()
        .unwrap();
    // The inner recorder's own allocations are not the layer's: a no-op one.
    let recorder = layer.layer(metrics::NoopRecorder);
    with_local_recorder(&recorder, || {
        // Warm-up: registration, this thread's producer, the batch and
        // sketch buffers, a few windows.
        for _ in 0..4 {
            round(5_000);
            layer.flush().unwrap();
        }
        let (all0, mine0) = (ALL.load(Ordering::Relaxed), MINE.with(Cell::get));
        let mut mine_calls = 0;
        for _ in 0..8 {
            let before = MINE.with(Cell::get);
            round(5_000);
            mine_calls += MINE.with(Cell::get) - before;
            layer.flush().unwrap();
        }
        let all = ALL.load(Ordering::Relaxed) - all0;
        let mine = MINE.with(Cell::get) - mine0;
        assert_eq!(
            mine_calls, 0,
            "allocations on the calling thread's hot path"
        );
        // flush() itself on this thread and the flusher/subscriber threads.
        assert_eq!(
            mine, 0,
            "allocations on the calling thread (flush included)"
        );
        assert_eq!(all, 0, "allocations over all threads in steady state");
    });
    let stats = layer.engine().stats();
    assert_eq!(stats.dropped.rejected(), 0, "{stats:?}");
    assert_eq!(stats.published, 12 * 5_000 * 5);
}
