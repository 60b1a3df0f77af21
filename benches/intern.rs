//! Issue 12, item 17: the cost of interning a new name, and of looking up
//! an existing one.
//!
//! * `intern/new_names/N`: a fresh engine (`max_names` raised to `N`)
//!   interns `N` distinct names (1 000 prefixes); one iteration is the
//!   whole run, so the per-element throughput is the amortised cost of a
//!   new name at that table size. With a copy-on-write table this is
//!   quadratic (hours at 1 000 000); with the append-only arena it is
//!   linear.
//! * `intern/existing_name/N`: `Engine::key` of a name already interned,
//!   in an engine holding `N` names (the hot path's lock-free lookup:
//!   one hash, one probe), cycling over all of them so the table does not
//!   sit in cache for a single name.
//!
//! `RINGFOLD_INTERN_SIZES=16384,65536` overrides the table sizes (the
//! default is 16 384, 65 536 and 1 000 000), e.g. to measure an older,
//! quadratic interner at sizes it finishes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ringfold::Engine;

fn sizes() -> Vec<usize> {
    match std::env::var("RINGFOLD_INTERN_SIZES") {
        Ok(list) if !list.is_empty() => list
            .split(',')
            .map(|n| n.trim().parse().expect("RINGFOLD_INTERN_SIZES: numbers"))
            .collect(),
        _ => vec![16_384, 65_536, 1_000_000],
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("bench:p{}:name{i}", i % 1000))
        .collect()
}

fn engine(max_names: usize) -> Engine<u64> {
    Engine::<u64>::builder()
        .max_names(max_names)
        .build()
        .expect("engine")
}

fn new_names(c: &mut Criterion) {
    let mut group = c.benchmark_group("intern");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(5));
    for n in sizes() {
        let names = names(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("new_names", n), &names, |b, names| {
            b.iter_batched(
                || engine(n),
                |engine| {
                    for name in names {
                        black_box(engine.key(name).expect("key"));
                    }
                    // Dropped (shut down) outside the timed section.
                    engine
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn existing_name(c: &mut Criterion) {
    let mut group = c.benchmark_group("intern");
    group.throughput(Throughput::Elements(1));
    for n in sizes() {
        let names = names(n);
        let engine = engine(n);
        for name in &names {
            engine.key(name).expect("key");
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("existing_name", n), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(engine.key(black_box(&names[i])).expect("key"))
            })
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    new_names(&mut c);
    existing_name(&mut c);
    c.final_summary();
}
