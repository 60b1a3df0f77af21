//! Samples every GPU through NVML and prints, once per second, each
//! device's aggregated readings (count / min / mean / max of power,
//! utilisation, temperature and memory used), as folded by the default
//! `gpu:*` policy.
//!
//! ```text
//! cargo run --example gpu -- --seconds 10 [--interval-ms 100] [--scripted 2]
//! ```
//!
//! Without NVML it prints one line saying so and exits 0. `--scripted N`
//! uses N scripted devices instead of NVML (for machines without a GPU).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource, Step};
use ringfold::{Batch, Engine, Value};

#[derive(Clone, Copy)]
struct Agg {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

type Table = BTreeMap<String, BTreeMap<String, Agg>>;

const SHOWN: [(Metric, &str, f64); 4] = [
    (Metric::PowerMw, "power W", 1000.0),
    (Metric::UtilGpuPct, "util %", 1.0),
    (Metric::TempC, "temp °C", 1.0),
    (Metric::MemUsedBytes, "mem used MiB", 1024.0 * 1024.0),
];

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    match args.get(i + 1).and_then(|v| v.parse().ok()) {
        Some(v) => Some(v),
        None => {
            eprintln!("{name} needs a number");
            std::process::exit(2);
        }
    }
}

/// A plausible-looking scripted GPU: a load ramp.
fn scripted(devices: u32) -> ScriptedSource {
    let mut src = ScriptedSource::new(devices);
    for d in 0..devices {
        let ramp = |base: f64, step: f64| {
            (0..60).map(move |i| Step::Value(base + step * f64::from(i % 10)))
        };
        src = src
            .script(
                d,
                Metric::PowerMw,
                ramp(80_000.0 + 10_000.0 * f64::from(d), 25_000.0),
            )
            .script(d, Metric::UtilGpuPct, ramp(5.0, 10.0))
            .script(d, Metric::TempC, ramp(40.0, 2.0))
            .script(d, Metric::MemUsedBytes, ramp(2e9, 1e8))
            .script(d, Metric::FanPct, [Step::Unsupported]);
    }
    src
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = arg(&args, "--seconds").unwrap_or(5);
    let interval = Duration::from_millis(arg(&args, "--interval-ms").unwrap_or(1000));
    let scripted_devices = arg(&args, "--scripted");

    let table: Arc<Mutex<Table>> = Arc::default();
    let sink = table.clone();
    let engine = Engine::<Value>::builder()
        .default_rules()
        .subscriber(move |b: &Batch<Value>| {
            let mut t = sink.lock().unwrap();
            let dev = t.entry(b.prefix().to_owned()).or_default();
            for a in b.aggregates() {
                let metric = a.name().rsplit(':').next().unwrap_or_default().to_owned();
                let e = dev.entry(metric).or_insert(Agg {
                    count: 0,
                    sum: 0.0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                });
                e.count += a.count();
                e.sum += a.sum();
                e.min = e.min.min(a.min());
                e.max = e.max.max(a.max());
            }
        })
        .build()
        .expect("engine");

    let config = SamplerConfig::default().interval(interval);
    let t = Instant::now();
    let started = match scripted_devices {
        Some(n) => GpuSampler::start_with_source(&engine, scripted(n as u32), config),
        None => GpuSampler::start(&engine, config),
    };
    let init = t.elapsed();
    let sampler = match started {
        Ok(s) => s,
        Err(e) => {
            // One line, and carry on (here: nothing else to do).
            println!("gpu: {e} (start took {init:?})");
            return;
        }
    };
    println!(
        "sampling {} device(s) every {interval:?} for {seconds} s (start took {init:?})",
        sampler.stats().devices
    );

    for second in 1..=seconds {
        std::thread::sleep(Duration::from_secs(1));
        // Deliver what the aggregate windows hold so far.
        let _ = engine.flush_prefix("gpu:*");
        let snapshot = std::mem::take(&mut *table.lock().unwrap());
        for (device, metrics) in &snapshot {
            let mut line = format!("t={second:>3}s {device}:");
            for (metric, label, scale) in SHOWN {
                match metrics.get(metric.name()) {
                    Some(a) => line.push_str(&format!(
                        "  {label} n={} min={:.1} mean={:.1} max={:.1}",
                        a.count,
                        a.min / scale,
                        a.sum / a.count as f64 / scale,
                        a.max / scale
                    )),
                    None => line.push_str(&format!("  {label} -")),
                }
            }
            println!("{line}");
        }
    }

    let stats = sampler.stop();
    println!(
        "passes {} (slow {}), published {}, failed {}, unsupported {}, device errors {}, retries {}, dropped {}; mean pass {:?}, max pass {:?}",
        stats.passes,
        stats.slow_passes,
        stats.published,
        stats.failed,
        stats.unsupported,
        stats.device_errors,
        stats.retries,
        stats.publish_dropped,
        stats.mean_pass(),
        Duration::from_nanos(stats.max_pass_ns),
    );
    let _ = engine.shutdown();
}
