//! `Engine::publish*` producers belong to the engine, not to the threads
//! that used them: once every handle is dropped, threads that published
//! and then sat idle keep none of its rings alive. Measured as live heap
//! bytes with a counting global allocator (a dedicated test binary, one
//! test, so no other test's allocations interleave).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier};

use ringfold::Engine;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const THREADS: usize = 8;
const RING: usize = 1 << 17;

#[test]
fn idle_threads_keep_no_rings_of_a_dropped_engine() {
    let before = LIVE.load(Ordering::Relaxed);
    let engine = Engine::<u64>::builder()
        .ring_capacity(RING)
        .build()
        .unwrap();
    let published = Arc::new(Barrier::new(THREADS + 1));
    let release = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let engine = engine.clone();
            let (published, release) = (published.clone(), release.clone());
            std::thread::spawn(move || {
                engine.publish("data:idle:once", i as u64).unwrap();
                drop(engine);
                published.wait();
                // Idle, alive, holding no handle: parked in a pool, say.
                release.wait();
            })
        })
        .collect();
    published.wait();
    // Every thread has its producer (and ring) now.
    let with_rings = LIVE.load(Ordering::Relaxed) - before;
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.sealed, THREADS as u64);
    drop(engine);
    let after = LIVE.load(Ordering::Relaxed) - before;
    release.wait();
    for t in threads {
        t.join().unwrap();
    }
    // One ring's worth of bytes: what the 8 rings took, shared out.
    let ring_bytes = with_rings / THREADS as isize;
    assert!(
        ring_bytes >= RING as isize,
        "the rings were allocated: {with_rings} bytes for {THREADS} threads"
    );
    assert!(
        after < ring_bytes,
        "{after} bytes still live after the engine was dropped \
         (one ring is about {ring_bytes}): idle threads keep its rings"
    );
}
