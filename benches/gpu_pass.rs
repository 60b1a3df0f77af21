//! Cost of one GPU sampler pass with the scripted source: the sampler's own
//! overhead (scheduling, naming, publishing into an engine with
//! `default_rules()`), not a driver's. With NVML the pass cost is dominated
//! by the driver calls.
//!
//! ```text
//! cargo bench --bench gpu_pass -- --quick
//! ```

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource};
use ringfold::{Engine, Value};

fn pass(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpu_pass");
    for devices in [1u32, 8] {
        group.throughput(Throughput::Elements(
            u64::from(devices) * Metric::COUNT as u64,
        ));
        group.bench_with_input(
            BenchmarkId::new("scripted", devices),
            &devices,
            |b, &devices| {
                let engine = Engine::<Value>::builder()
                    .default_rules()
                    .ring_capacity(1 << 16)
                    .build()
                    .expect("engine");
                // `iters` back-to-back passes on the sampler thread; the time
                // reported is the sampler's own per-pass busy time (source
                // calls plus publishing), excluding thread start and join.
                b.iter_custom(|iters| {
                    let config = SamplerConfig::default()
                        .interval(Duration::ZERO)
                        .max_passes(iters)
                        .log(false);
                    let stats = GpuSampler::start_with_source(
                        &engine,
                        ScriptedSource::new(devices),
                        config,
                    )
                    .expect("start")
                    .join();
                    assert_eq!(stats.passes, iters);
                    Duration::from_nanos(stats.busy_ns)
                });
                engine.shutdown().expect("shutdown");
            },
        );
    }
    group.finish();
}

criterion_group!(benches, pass);
criterion_main!(benches);
