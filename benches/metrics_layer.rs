//! `counter!("x").increment(1)` and `histogram!` through ringfold's
//! `FoldLayer` over metrics-exporter-prometheus's recorder, beside that
//! recorder alone and metrics-util's atomic-storage registry, at 1, 2, 4
//! and 8 threads (one hot counter, and 64 counters round-robin). Each
//! sample spawns the threads, releases them together and stops the clock
//! when they have all finished and (for the layer) `flush()` has handed
//! everything to the exporter: the flusher's work is inside the time.
//! Throughput is calls per second over all threads.
//!
//! Then the memory each holds after 10 M histogram records (live heap,
//! counted by this binary's allocator, and resident growth), each in a
//! process of its own.
//!
//! `cargo bench --features metrics --bench metrics_layer`
//! (`RINGFOLD_BENCH_THREADS=1,2,4,8,16` for another thread list,
//! `RINGFOLD_BENCH_MEMORY_ONLY=1` for the memory figures alone).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use metrics::{Key, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::layers::Layer;
use metrics_util::registry::{AtomicStorage, Registry};
use ringfold::metrics::{FoldLayer, FoldRecorder};

#[path = "../examples/common/rss.rs"]
mod rss;
use rss::rss_bytes;

struct Live;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only tracks live bytes.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Live = Live;

static NAMES: [&str; 64] = {
    const N: [&str; 64] = [
        "c00", "c01", "c02", "c03", "c04", "c05", "c06", "c07", "c08", "c09", "c10", "c11", "c12",
        "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c20", "c21", "c22", "c23", "c24", "c25",
        "c26", "c27", "c28", "c29", "c30", "c31", "c32", "c33", "c34", "c35", "c36", "c37", "c38",
        "c39", "c40", "c41", "c42", "c43", "c44", "c45", "c46", "c47", "c48", "c49", "c50", "c51",
        "c52", "c53", "c54", "c55", "c56", "c57", "c58", "c59", "c60", "c61", "c62", "c63",
    ];
    N
};

fn thread_counts() -> Vec<usize> {
    std::env::var("RINGFOLD_BENCH_THREADS")
        .ok()
        .and_then(|s| s.split(',').map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8])
}

/// Who takes the calls.
enum Contender {
    Layer(FoldLayer, FoldRecorder<PrometheusRecorder>),
    Prometheus(PrometheusRecorder),
    Atomic(Registry<Key, AtomicStorage>),
}

impl Contender {
    fn all() -> Vec<(&'static str, Arc<Contender>)> {
        let layer = FoldLayer::builder()
            .window(Duration::from_millis(100))
            .build()
            .expect("layer");
        let over = layer.layer(PrometheusBuilder::new().build_recorder());
        vec![
            ("ringfold-layer", Arc::new(Contender::Layer(layer, over))),
            (
                "prometheus",
                Arc::new(Contender::Prometheus(
                    PrometheusBuilder::new().build_recorder(),
                )),
            ),
            (
                "atomic-registry",
                Arc::new(Contender::Atomic(Registry::atomic())),
            ),
        ]
    }

    fn recorder(&self) -> Option<&dyn Recorder> {
        match self {
            Contender::Layer(_, r) => Some(r),
            Contender::Prometheus(r) => Some(r),
            Contender::Atomic(_) => None,
        }
    }

    /// `iters` calls on this thread: counters (`keys` round-robin) or
    /// histogram records.
    fn run(&self, iters: u64, counters: usize, histogram: bool) {
        if let Contender::Atomic(reg) = self {
            for i in 0..iters {
                let key = Key::from_static_name(NAMES[i as usize % counters]);
                if histogram {
                    reg.get_or_create_histogram(&key, |h| h.push((i % 1000) as f64));
                } else {
                    reg.get_or_create_counter(&key, |c| c.fetch_add(1, Ordering::Relaxed));
                }
            }
            return;
        }
        let Some(recorder) = self.recorder() else {
            return;
        };
        metrics::with_local_recorder(recorder, || {
            if histogram {
                for i in 0..iters {
                    metrics::histogram!("h").record((i % 1000) as f64);
                }
            } else if counters == 1 {
                for _ in 0..iters {
                    metrics::counter!("x").increment(1);
                }
            } else {
                for i in 0..iters {
                    metrics::counter!(NAMES[i as usize % counters]).increment(1);
                }
            }
        });
    }

    /// Everything recorded so far handed to the exporter.
    fn settle(&self) {
        if let Contender::Layer(layer, _) = self {
            layer.flush().expect("flush");
        }
    }
}

fn timed(
    c: &Arc<Contender>,
    threads: usize,
    iters: u64,
    counters: usize,
    histogram: bool,
) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (c, start) = (c.clone(), start.clone());
            std::thread::spawn(move || {
                // Register (and make this thread's producer) off the clock.
                c.run(1, counters, histogram);
                start.wait();
                c.run(iters, counters, histogram);
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    c.settle();
    t0.elapsed()
}

fn bench(c: &mut Criterion) {
    let contenders = Contender::all();
    for (group, counters, histogram) in [
        ("counter_hot", 1, false),
        ("counter_64", 64, false),
        ("histogram", 1, true),
    ] {
        let mut g = c.benchmark_group(format!("metrics_{group}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for threads in thread_counts() {
            g.throughput(Throughput::Elements(threads as u64));
            for (name, contender) in &contenders {
                g.bench_with_input(BenchmarkId::new(*name, threads), &threads, |b, &t| {
                    b.iter_custom(|iters| timed(contender, t, iters, counters, histogram))
                });
                // Keep the exporter's sample buffers from growing across runs.
                if let Contender::Prometheus(r) = &**contender {
                    r.handle().run_upkeep();
                }
                if let Contender::Layer(_, r) = &**contender {
                    r.inner().handle().run_upkeep();
                }
            }
        }
        g.finish();
    }
    drop(contenders);
}

/// Live heap (this binary's allocator) and resident memory held after
/// 10 M `histogram!` records, each contender in a process of its own (so
/// one contender's deferred frees cannot land in another's figure).
fn memory_parent() {
    for which in [
        "prometheus",
        "prometheus+upkeep",
        "atomic-registry",
        "layer-over-noop",
        "layer-over-noop(max_batch=65536)",
        "layer-over-prometheus+upkeep",
        "layer-over-prometheus(histogram_samples=false)",
    ] {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .env("RINGFOLD_MEM_CHILD", which)
            .output()
            .expect("memory child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            println!(
                "{which}: child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn memory_child(which: &str) {
    const N: u64 = 10_000_000;
    let (live0, rss0) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let layer = |max_batch: usize| {
        FoldLayer::builder()
            .window(Duration::from_millis(100))
            .max_batch(max_batch)
            .histogram_samples(!which.contains("histogram_samples=false"))
            .build()
            .expect("layer")
    };
    let keep: Box<dyn std::any::Any> = match which {
        "prometheus" | "prometheus+upkeep" => {
            let c = Contender::Prometheus(PrometheusBuilder::new().build_recorder());
            c.run(N, 1, true);
            if let (Contender::Prometheus(r), true) = (&c, which.ends_with("upkeep")) {
                r.handle().run_upkeep();
            }
            Box::new(c)
        }
        "atomic-registry" => {
            let c = Contender::Atomic(Registry::atomic());
            c.run(N, 1, true);
            Box::new(c)
        }
        "layer-over-noop" | "layer-over-noop(max_batch=65536)" => {
            let layer = layer(if which.contains("65536") {
                1 << 16
            } else {
                4096
            });
            let r = layer.layer(metrics::NoopRecorder);
            metrics::with_local_recorder(&r, || {
                for i in 0..N {
                    metrics::histogram!("h").record((i % 1000) as f64);
                }
            });
            layer.flush().expect("flush");
            Box::new((layer, r))
        }
        _ => {
            let layer = layer(4096);
            let c = Contender::Layer(
                layer.clone(),
                layer.layer(PrometheusBuilder::new().build_recorder()),
            );
            c.run(N, 1, true);
            c.settle();
            if let Contender::Layer(_, r) = &c {
                r.inner().handle().run_upkeep();
            }
            Box::new(c)
        }
    };
    let (live, rss) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    println!(
        "memory after 10M histogram records: {which:<34} live heap {:>8.1} MiB, resident +{:>8.1} MiB",
        (live - live0) as f64 / (1 << 20) as f64,
        rss.saturating_sub(rss0) as f64 / (1 << 20) as f64
    );
    drop(keep);
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(which) = std::env::var("RINGFOLD_MEM_CHILD") {
        memory_child(&which);
        return;
    }
    if std::env::var_os("RINGFOLD_BENCH_MEMORY_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    memory_parent();
}
