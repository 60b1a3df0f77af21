//! `Policy::histogram` (issue 21): windowed quantiles against the exact
//! quantiles of the same samples, merged windows of a lagging subscriber
//! against the union of their samples, and bad input counted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rng, HOUR, LONG};
use ringfold::{Batch, Engine, FullPolicy, Histogram, Policy, SubscribeOptions, Value};

/// The quantiles every check compares.
const QS: [f64; 12] = [
    0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0,
];

/// The exact quantile the sketch's bound refers to: the sample of rank
/// `⌊q (n - 1)⌋` of the sorted samples.
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

/// Checks `h` against `samples`: count, min and max exactly, sum to float
/// rounding, every quantile within 1 % (relative; samples below 1e-9 in
/// magnitude count as zero). Returns the largest relative error seen.
fn check(h: &Histogram, samples: &[f64], what: &str) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(h.count(), samples.len() as u64, "{what}: count");
    assert_eq!(h.min(), sorted[0], "{what}: min");
    assert_eq!(h.max(), sorted[sorted.len() - 1], "{what}: max");
    let sum: f64 = samples.iter().sum();
    assert!(
        (h.sum() - sum).abs() <= 1e-9 * sum.abs().max(1.0),
        "{what}: sum {} vs {sum}",
        h.sum()
    );
    let mut worst = 0f64;
    for q in QS {
        let (got, want) = (h.quantile(q), exact(&sorted, q));
        let err = (got - want).abs();
        if want.abs() < ringfold::Sketch::MIN_MAGNITUDE {
            assert!(
                err <= ringfold::Sketch::MIN_MAGNITUDE,
                "{what}: q={q}: {got} vs {want}"
            );
            continue;
        }
        let rel = err / want.abs();
        worst = worst.max(rel);
        assert!(
            rel <= ringfold::Sketch::DEFAULT_ALPHA * (1.0 + 1e-9),
            "{what}: q={q}: got {got}, exact {want} (relative error {rel})"
        );
    }
    assert_eq!(h.p50(), h.quantile(0.5));
    assert_eq!(h.p90(), h.quantile(0.9));
    assert_eq!(h.p99(), h.quantile(0.99));
    assert_eq!(h.p999(), h.quantile(0.999));
    worst
}

/// Every histogram delivered, with its batch's `(seq, last_seq, merged)`.
type Log = Arc<Mutex<Vec<((u64, u64, u64), Histogram)>>>;

fn histogram_engine(max_count: usize, log: &Log) -> Engine<f64> {
    let sink = log.clone();
    Engine::<f64>::builder()
        .policy("lat:*", Policy::histogram(HOUR, max_count))
        .sample_with(|v| Some(*v))
        // Thousands of samples per window: wait for ring space.
        .on_full(FullPolicy::Block(LONG))
        .subscriber(move |b: &Batch<f64>| {
            let mut sink = sink.lock().unwrap();
            for h in b.histograms() {
                sink.push(((b.seq(), b.last_seq(), b.merged()), h.clone()));
            }
        })
        .build()
        .unwrap()
}

#[test]
fn window_quantiles_are_within_one_percent_of_the_exact_ones() {
    let mut rng = Rng::new(21);
    let mut u = move || rng.below(1 << 53) as f64 / (1u64 << 53) as f64;
    let n = 20_000;
    let shapes: Vec<(&str, Vec<f64>)> = vec![
        ("uniform", (0..n).map(|_| 1.0 + u() * 999.0).collect()),
        // Twelve decades: a long tail, as latencies have.
        (
            "log-uniform",
            (0..n).map(|_| 10f64.powf(u() * 12.0 - 3.0)).collect(),
        ),
        // Exponential (mean 50).
        (
            "exponential",
            (0..n).map(|_| -50.0 * (1.0 - u()).ln()).collect(),
        ),
        // Negative, zero and positive, ties included.
        (
            "mixed signs",
            (0..n)
                .map(|i| match i % 4 {
                    0 => -(1.0 + u() * 1e4),
                    1 => 0.0,
                    2 => (u() * 100.0).round(),
                    _ => u() * 1e4,
                })
                .collect(),
        ),
        (
            "all negative",
            (0..n).map(|_| -(0.5 + u() * 50.0)).collect(),
        ),
        ("constant", vec![42.0; 1000]),
        ("one sample", vec![-3.25]),
    ];
    let log = Log::default();
    let engine = histogram_engine(1_000_000, &log);
    for (i, (_, samples)) in shapes.iter().enumerate() {
        let name = format!("lat:s{i}:x");
        for &v in samples {
            engine.publish(&name, v).unwrap();
        }
    }
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), shapes.len(), "one histogram per shape");
    for (i, (what, samples)) in shapes.iter().enumerate() {
        let name = format!("lat:s{i}:x");
        let (_, h) = log.iter().find(|(_, h)| h.name() == name).unwrap();
        let worst = check(h, samples, what);
        println!("{what}: worst relative quantile error {worst:.5}");
    }
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.dropped.not_numeric, 0);
    assert!(stats.is_conserved());
}

#[test]
fn names_of_one_prefix_get_one_histogram_each_per_window() {
    let log = Log::default();
    let engine = histogram_engine(1_000_000, &log);
    for v in 1..=100 {
        engine.publish("lat:api:get", f64::from(v)).unwrap();
        engine.publish("lat:api:put", f64::from(-v)).unwrap();
    }
    engine.flush().unwrap();
    for v in 1..=10 {
        engine.publish("lat:api:get", f64::from(v * 1000)).unwrap();
    }
    engine.flush().unwrap();
    let log = log.lock().unwrap();
    let got: Vec<(u64, &str, u64, f64, f64)> = log
        .iter()
        .map(|((seq, _, _), h)| (*seq, h.name(), h.count(), h.min(), h.max()))
        .collect();
    assert_eq!(
        got,
        [
            (0, "lat:api:get", 100, 1.0, 100.0),
            (0, "lat:api:put", 100, -100.0, -1.0),
            // The next window starts afresh (a reused sketch, cleared).
            (1, "lat:api:get", 10, 1000.0, 10_000.0),
        ]
    );
    let samples: Vec<f64> = (1..=10).map(|v| f64::from(v * 1000)).collect();
    check(&log[2].1, &samples, "second window");
}

#[test]
fn merged_windows_have_the_quantiles_of_all_their_samples() {
    // Windows of 50 samples (count-closed, one producer, one name), so
    // window k holds samples 50k..50k+50; a subscriber that sleeps per
    // batch and merges as soon as one batch waits gets several per batch.
    const WINDOW: usize = 50;
    let mut rng = Rng::new(7);
    // Integers (sums exact in f64 whatever the order), both signs, wide.
    let samples: Vec<f64> = (0..20_000)
        .map(|i| {
            let v = rng.below(1 << 20) as f64;
            if i % 5 == 0 {
                -v
            } else {
                v * (1 + i % 7) as f64
            }
        })
        .collect();
    let log = Log::default();
    let sink = log.clone();
    let engine = Engine::<f64>::builder()
        .policy("lat:*", Policy::histogram(HOUR, WINDOW))
        .sample_with(|v| Some(*v))
        .on_full(FullPolicy::Block(LONG))
        .build()
        .unwrap();
    let _sub = engine
        .subscribe_with(
            "lat:*",
            SubscribeOptions::new("x").coalesce_after(1),
            move |b: &Batch<f64>| {
                std::thread::sleep(Duration::from_millis(2));
                let mut sink = sink.lock().unwrap();
                for h in b.histograms() {
                    sink.push(((b.seq(), b.last_seq(), b.merged()), h.clone()));
                }
            },
        )
        .unwrap();
    for &v in &samples {
        engine.publish("lat:db:query", v).unwrap();
    }
    engine.flush().unwrap();
    let stats = engine.shutdown().unwrap();
    let log = log.lock().unwrap();
    let windows = samples.len().div_ceil(WINDOW) as u64;
    let merged = log.iter().filter(|((_, _, m), _)| *m > 1).count();
    assert!(merged > 0, "the lagging subscriber merged nothing");
    let mut next = 0;
    let mut worst = 0f64;
    for ((seq, last, m), h) in log.iter() {
        assert_eq!((*seq, *m), (next, last - seq + 1), "no window lost");
        next = last + 1;
        let from = *seq as usize * WINDOW;
        let to = ((*last as usize + 1) * WINDOW).min(samples.len());
        let union = &samples[from..to];
        worst = worst.max(check(h, union, &format!("windows {seq}..={last}")));
        // Bucket counts added: exactly one sketch of the union.
        let mut one = ringfold::Sketch::default();
        for &v in union {
            one.add(v);
        }
        for q in QS {
            assert_eq!(Some(h.quantile(q)), one.quantile(q), "q={q}");
        }
        assert_eq!(h.sum(), union.iter().sum::<f64>(), "exact integer sum");
    }
    assert_eq!(next, windows, "every window delivered");
    println!(
        "{} batches for {windows} windows ({merged} merged); worst relative quantile error {worst:.5}",
        log.len()
    );
    assert!(stats.subscribers.iter().all(|s| s.lost_events() == 0));
}

#[test]
fn nan_infinities_and_non_numbers_are_counted_not_sketched() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let engine = Engine::<Value>::builder()
        .policy("lat:*", Policy::histogram(HOUR, 1000))
        .sampled()
        .subscriber(move |b: &Batch<Value>| {
            for h in b.histograms() {
                sink.lock().unwrap().push((
                    h.count(),
                    h.sum(),
                    h.min(),
                    h.max(),
                    b.dropped(),
                    h.p50(),
                ));
            }
        })
        .build()
        .unwrap();
    engine.publish("lat:x:y", 10.0).unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
        engine.publish("lat:x:y", bad).unwrap();
    }
    engine.publish("lat:x:y", "n/a").unwrap();
    engine.publish("lat:x:y", 30.0).unwrap();
    engine.publish("lat:x:y", 20u64).unwrap();
    engine.flush().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (count, sum, min, max, dropped, p50) = seen[0];
    assert_eq!(
        (count, sum, min, max, dropped),
        (3, 60.0, 10.0, 30.0, 5),
        "five rejections, in band"
    );
    assert!((p50 - 20.0).abs() <= 0.01 * 20.0, "{p50}");
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.dropped.not_numeric, 5);
    assert_eq!(stats.folded, 3);
    assert!(stats.is_conserved());
}

#[test]
fn a_window_of_only_bad_samples_delivers_nothing_and_a_sampler_is_required() {
    let seen = Arc::new(Mutex::new(0));
    let sink = seen.clone();
    let engine = Engine::<f64>::builder()
        .policy("lat:*", Policy::histogram(HOUR, 1000))
        .sample_with(|v| Some(*v))
        .subscriber(move |_: &Batch<f64>| *sink.lock().unwrap() += 1)
        .build()
        .unwrap();
    engine.publish("lat:x:y", f64::NAN).unwrap();
    engine.flush().unwrap();
    assert_eq!(*seen.lock().unwrap(), 0);
    assert_eq!(engine.shutdown().unwrap().dropped.not_numeric, 1);
    let no_sampler = Engine::<f64>::builder()
        .policy("lat:*", Policy::histogram(HOUR, 1000))
        .build();
    assert!(matches!(
        no_sampler,
        Err(ringfold::Error::AggregateWithoutSampler { .. })
    ));
}

/// The JSON-lines file sink writes one line per histogram, with the
/// window's count, sum, extremes and quantiles.
#[cfg(feature = "jsonl")]
#[test]
fn the_json_lines_sink_writes_a_line_per_histogram() {
    use ringfold::sink::JsonLinesFile;
    let dir = std::env::temp_dir().join(format!("ringfold-hist-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("h.jsonl");
    let engine = Engine::<u64>::builder()
        .policy("lat:*", Policy::histogram(HOUR, usize::MAX))
        .sample_with(|v| Some(*v as f64))
        .build()
        .unwrap();
    let file = JsonLinesFile::builder(&path).build::<u64>().unwrap();
    let _file = engine
        .subscribe_with("lat:*", SubscribeOptions::new("file"), file)
        .unwrap();
    let samples: Vec<u64> = (1..=1000).collect();
    for &v in &samples {
        engine.publish("lat:api:ms", v).unwrap();
    }
    engine.shutdown().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(lines.len(), 1, "{text}");
    let h = &lines[0]["histogram"];
    assert_eq!(lines[0]["name"], "lat:api:ms");
    assert_eq!(h["count"], 1000);
    assert_eq!(h["sum"], 500_500.0);
    assert_eq!(
        (h["min"].as_f64(), h["max"].as_f64()),
        (Some(1.0), Some(1000.0))
    );
    let sorted: Vec<f64> = samples.iter().map(|&v| v as f64).collect();
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        let got = h[field].as_f64().unwrap();
        let want = exact(&sorted, q);
        assert!(
            (got - want).abs() <= 0.01 * want,
            "{field}: {got} vs {want}"
        );
    }
}
