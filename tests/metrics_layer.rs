//! The `metrics` layer's folding semantics, against metrics-util's
//! debugging recorder as the inner recorder (feature `metrics`).
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, with_local_recorder, Key, Label};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::layers::Layer;
use ringfold::metrics::{FoldLayer, FoldRecorder, HealthReporter, Sketch};
use ringfold::{Engine, FullPolicy, SubscribeOptions};

const HOUR: Duration = Duration::from_secs(3600);
const LONG: Duration = Duration::from_secs(10);

/// (name, sorted `k=v` labels) -> value, from one (destructive) snapshot.
type Seen = BTreeMap<(String, Vec<String>), DebugValue>;

fn snapshot(s: &Snapshotter) -> Seen {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let key = ck.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), v)
        })
        .collect()
}

fn key(name: &str, labels: &[&str]) -> (String, Vec<String>) {
    (
        name.to_owned(),
        labels.iter().map(|s| s.to_string()).collect(),
    )
}

fn counter_of(seen: &Seen, name: &str, labels: &[&str]) -> Option<u64> {
    match seen.get(&key(name, labels)) {
        Some(DebugValue::Counter(n)) => Some(*n),
        _ => None,
    }
}

fn gauge_of(seen: &Seen, name: &str, labels: &[&str]) -> Option<f64> {
    match seen.get(&key(name, labels)) {
        Some(DebugValue::Gauge(v)) => Some(v.0),
        _ => None,
    }
}

fn histogram_of(seen: &Seen, name: &str) -> Vec<f64> {
    match seen.get(&key(name, &[])) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|f| f.0).collect(),
        _ => Vec::new(),
    }
}

/// A layer with an hour-long window (only `flush` forwards) over a
/// debugging recorder.
fn setup(
    builder: ringfold::metrics::FoldLayerBuilder,
) -> (FoldLayer, FoldRecorder<DebuggingRecorder>, Snapshotter) {
    let inner = DebuggingRecorder::new();
    let snap = inner.snapshotter();
    // Exact counts on a loaded machine: wait for ring space.
    let layer = builder
        .window(HOUR)
        .on_full(FullPolicy::Block(LONG))
        .build()
        .unwrap();
    let recorder = layer.layer(inner);
    (layer, recorder, snap)
}

#[test]
fn counters_are_summed_exactly_across_threads_and_windows() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    let threads = 4;
    let per_thread = 25_000u64;
    for round in 0..2 {
        std::thread::scope(|s| {
            for t in 0..threads {
                let recorder = &recorder;
                s.spawn(move || {
                    with_local_recorder(recorder, || {
                        for i in 0..per_thread {
                            counter!("requests_total", "route" => "/a").increment(1);
                            if i % 10 == 0 {
                                counter!("bytes_total", "thread" => t.to_string()).increment(i);
                            }
                        }
                    })
                });
            }
        });
        layer.flush().unwrap();
        let seen = snapshot(&snap);
        assert_eq!(
            counter_of(&seen, "requests_total", &["route=/a"]),
            Some(threads * per_thread),
            "round {round}"
        );
        let want: u64 = (0..per_thread).filter(|i| i % 10 == 0).sum();
        for t in 0..threads {
            let label = format!("thread={t}");
            assert_eq!(counter_of(&seen, "bytes_total", &[&label]), Some(want));
        }
    }
    let stats = layer.engine().stats();
    assert_eq!(stats.dropped.rejected(), 0, "{stats:?}");
    assert!(stats.is_conserved());
    assert_eq!(layer.stats().series, 1 + threads);
}

#[test]
fn counter_absolute_then_increments() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    with_local_recorder(&recorder, || {
        let c = counter!("jobs_total");
        c.increment(7);
        c.absolute(100);
        c.increment(5);
    });
    layer.flush().unwrap();
    // The debugging recorder's counter is an AtomicU64: `absolute` stores
    // (fetch_max in most recorders), increments add.
    assert_eq!(counter_of(&snapshot(&snap), "jobs_total", &[]), Some(105));
}

/// The facade's gauge semantics: `set` wins, increments and decrements add
/// onto the value, across windows too. Checked against the same calls made
/// directly on a debugging recorder.
#[test]
fn gauge_set_and_increments_mix_like_the_facade() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    let direct = DebuggingRecorder::new();
    let direct_snap = direct.snapshotter();
    let script = |windows: &mut dyn FnMut()| {
        let g = gauge!("queue_depth");
        g.set(5.0);
        g.increment(2.0);
        g.decrement(1.0);
        windows();
        g.increment(1.5);
        windows();
        g.set(3.0);
        g.increment(0.25);
        g.decrement(10.0);
        g.set(-1.0);
        g.increment(4.0);
    };
    let mut folded = Vec::new();
    with_local_recorder(&recorder, || {
        script(&mut || {
            layer.flush().unwrap();
            folded.push(gauge_of(&snapshot(&snap), "queue_depth", &[]));
        })
    });
    layer.flush().unwrap();
    folded.push(gauge_of(&snapshot(&snap), "queue_depth", &[]));
    let mut reference = Vec::new();
    // The debugging recorder's snapshot zeroes gauges: re-apply the value.
    let mut value = 0.0;
    with_local_recorder(&direct, || {
        script(&mut || {
            let v = gauge_of(&snapshot(&direct_snap), "queue_depth", &[]).unwrap();
            value = v;
            reference.push(Some(v));
            gauge!("queue_depth").set(v);
        })
    });
    let _ = value;
    reference.push(gauge_of(&snapshot(&direct_snap), "queue_depth", &[]));
    assert_eq!(folded, vec![Some(6.0), Some(7.5), Some(3.0)]);
    assert_eq!(folded, reference);
}

#[test]
fn histogram_forwards_sketch_buckets_within_the_bound() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    let values: Vec<f64> = (1..=20_000).map(|i| (i as f64).sqrt() * 0.37).collect();
    with_local_recorder(&recorder, || {
        for &v in values.iter().rev() {
            histogram!("latency_seconds").record(v);
        }
    });
    layer.flush().unwrap();
    let mut forwarded = histogram_of(&snapshot(&snap), "latency_seconds");
    assert_eq!(forwarded.len(), values.len(), "the count is exact");
    forwarded.sort_by(f64::total_cmp);
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    // Bucketing is monotone, so the i-th forwarded value stands for the
    // i-th sample, within the relative error.
    let alpha = Sketch::DEFAULT_ALPHA * (1.0 + 1e-9);
    for (got, want) in forwarded.iter().zip(&sorted) {
        assert!((got - want).abs() <= alpha * want, "{got} for {want}");
    }
    let s = layer
        .last_summary(&Key::from_name("latency_seconds"))
        .unwrap();
    assert_eq!(s.count, values.len() as u64);
    assert_eq!((s.min, s.max), (sorted[0], sorted[sorted.len() - 1]));
    let exact_sum: f64 = values.iter().sum();
    assert!((s.sum - exact_sum).abs() <= 1e-9 * exact_sum);
    for (q, got) in [(0.5, s.p50), (0.9, s.p90), (0.99, s.p99), (0.999, s.p999)] {
        let want = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
        assert!((got - want).abs() <= alpha * want, "q={q}: {got} vs {want}");
    }
}

#[test]
fn nan_and_infinities_are_counted_not_recorded() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    with_local_recorder(&recorder, || {
        let h = histogram!("sizes");
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 2.0] {
            h.record(v);
        }
    });
    layer.flush().unwrap();
    assert_eq!(histogram_of(&snapshot(&snap), "sizes"), vec![2.0]);
    assert_eq!(layer.stats().not_numeric, 3);
}

#[test]
fn label_sets_past_the_limit_go_to_one_overflow_series() {
    let (layer, recorder, snap) = setup(FoldLayer::builder().cardinality_limit(10));
    with_local_recorder(&recorder, || {
        for round in 0..2 {
            for user in 0..25 {
                counter!("logins_total", "user" => user.to_string()).increment(1);
            }
            let _ = round;
        }
        counter!("other_total").increment(1);
    });
    layer.flush().unwrap();
    let seen = snapshot(&snap);
    for user in 0..10 {
        let label = format!("user={user}");
        assert_eq!(counter_of(&seen, "logins_total", &[&label]), Some(2));
    }
    for user in 10..25 {
        let label = format!("user={user}");
        assert_eq!(counter_of(&seen, "logins_total", &[&label]), None);
    }
    assert_eq!(
        counter_of(&seen, "logins_total", &["otel_metric_overflow=true"]),
        Some(30)
    );
    assert_eq!(counter_of(&seen, "other_total", &[]), Some(1));
    let stats = layer.stats();
    assert_eq!(stats.overflowed, 30, "counted per registration");
    assert_eq!(stats.series, 10 + 1 + 1);
}

#[test]
fn names_are_mapped_to_prometheus_rules_or_refused() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    with_local_recorder(&recorder, || {
        counter!("http.requests-total", "__reserved" => "x", "a.b" => "y").increment(2);
        // Maps onto the same series.
        counter!("http_requests_total", "_reserved" => "x", "a_b" => "y").increment(3);
        counter!("9lives").increment(1);
        counter!("").increment(1);
    });
    layer.flush().unwrap();
    let seen = snapshot(&snap);
    assert_eq!(
        counter_of(&seen, "http_requests_total", &["_reserved=x", "a_b=y"]),
        Some(5)
    );
    assert_eq!(counter_of(&seen, "_9lives", &[]), Some(1));
    assert_eq!(seen.len(), 2, "{seen:?}");
    let stats = layer.stats();
    assert_eq!((stats.renamed, stats.refused), (2, 1), "{stats:?}");

    // Without Prometheus naming, names pass through unchanged.
    let (layer, recorder, snap) = setup(FoldLayer::builder().prometheus_names(false));
    with_local_recorder(&recorder, || counter!("http.requests").increment(1));
    layer.flush().unwrap();
    assert_eq!(counter_of(&snapshot(&snap), "http.requests", &[]), Some(1));
}

#[test]
fn a_window_is_forwarded_when_it_closes() {
    let inner = DebuggingRecorder::new();
    let snap = inner.snapshotter();
    let layer = FoldLayer::builder()
        .window(Duration::from_millis(30))
        .build()
        .unwrap();
    let recorder = layer.layer(inner);
    with_local_recorder(&recorder, || counter!("ticks_total").increment(3));
    let deadline = Instant::now() + LONG;
    let mut total = 0;
    while total < 3 && Instant::now() < deadline {
        total += counter_of(&snapshot(&snap), "ticks_total", &[]).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(total, 3, "forwarded without a flush");
    assert!(layer.stats().windows >= 1);
}

#[test]
fn bad_settings_are_errors() {
    assert!(FoldLayer::builder().relative_error(0.0).build().is_err());
    assert!(FoldLayer::builder().cardinality_limit(0).build().is_err());
    assert!(FoldLayer::builder().window(Duration::ZERO).build().is_err());
    assert!(FoldLayer::builder().ring_capacity(1000).build().is_err());
}

#[test]
fn health_reports_the_engines_figures() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    let engine = Engine::<u64>::builder()
        .ring_capacity(4)
        .high_water(4)
        .on_full(FullPolicy::DropNewest)
        .tick(HOUR)
        .build()
        .unwrap();
    let rx = engine
        .receiver("data:*", SubscribeOptions::new("audit"))
        .unwrap();
    let mut producer = engine.producer().unwrap();
    let mut refused = 0;
    for i in 0..20u64 {
        if producer.publish("data:jobs:done", i).is_err() {
            refused += 1;
        }
    }
    drop(producer);
    assert!(refused > 0);
    engine.flush_timeout(Duration::from_millis(200)).ok();
    let stats = engine.stats();
    let mut health = HealthReporter::new();
    with_local_recorder(&recorder, || {
        health.report(&stats);
        health.report_layer(&layer);
    });
    layer.flush().unwrap();
    let seen = snapshot(&snap);
    assert_eq!(
        counter_of(&seen, "ringfold_events_dropped_total", &["reason=full"]),
        Some(stats.dropped.full)
    );
    assert_eq!(stats.dropped.full, refused);
    assert_eq!(
        counter_of(&seen, "ringfold_events_published_total", &[]),
        Some(stats.published)
    );
    assert_eq!(
        gauge_of(&seen, "ringfold_events_pending", &[]),
        Some(stats.pending as f64)
    );
    let audit = stats
        .subscribers
        .iter()
        .find(|s| s.name == "audit")
        .unwrap();
    assert_eq!(
        gauge_of(
            &seen,
            "ringfold_subscriber_queued_batches",
            &["subscriber=audit"]
        ),
        Some(audit.queued as f64)
    );
    assert_eq!(
        counter_of(
            &seen,
            "ringfold_subscriber_delivered_events_total",
            &["subscriber=audit"]
        ),
        Some(audit.delivered_events)
    );
    assert!(seen.contains_key(&key("ringfold_metrics_series", &[])));
    drop(rx);
    let _ = Label::new("unused", "x");
}

#[test]
fn subscriber_label_is_bounded() {
    let (layer, recorder, snap) = setup(FoldLayer::builder());
    let engine = Engine::<u64>::builder().build().unwrap();
    let subs: Vec<_> = (0..5)
        .map(|i| {
            engine
                .subscribe_with(
                    "data:*",
                    SubscribeOptions::new(format!("s{i}")),
                    |_: &ringfold::Batch<u64>| {},
                )
                .unwrap()
        })
        .collect();
    engine.publish("data:x:y", 1u64).unwrap();
    engine.flush().unwrap();
    let mut health = HealthReporter::new().subscriber_limit(2);
    with_local_recorder(&recorder, || health.report_engine(&engine));
    layer.flush().unwrap();
    let seen = snapshot(&snap);
    let labels: Vec<&Vec<String>> = seen
        .keys()
        .filter(|(n, _)| n == "ringfold_subscriber_delivered_events_total")
        .map(|(_, l)| l)
        .collect();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert_eq!(
        counter_of(
            &seen,
            "ringfold_subscriber_delivered_events_total",
            &["subscriber=_other"]
        ),
        Some(3)
    );
    drop(subs);
}

#[test]
fn without_samples_a_histogram_forwards_window_gauges_count_and_sum() {
    let (layer, recorder, snap) = setup(FoldLayer::builder().histogram_samples(false));
    let mut all = Vec::new();
    for window in 0..2 {
        let values: Vec<f64> = (1..=1000).map(|i| (i * (window + 1)) as f64).collect();
        with_local_recorder(&recorder, || {
            for &v in &values {
                histogram!("size_bytes", "kind" => "a").record(v);
            }
        });
        layer.flush().unwrap();
        all.extend_from_slice(&values);
        let seen = snapshot(&snap);
        assert!(!seen.keys().any(|(n, _)| n == "size_bytes"), "no histogram");
        assert_eq!(
            counter_of(&seen, "size_bytes_count", &["kind=a"]),
            Some(1000)
        );
        let total: f64 = all.iter().sum();
        assert_eq!(gauge_of(&seen, "size_bytes_sum", &["kind=a"]), Some(total));
        let alpha = Sketch::DEFAULT_ALPHA * (1.0 + 1e-9);
        for (q, label) in [(0.0, "0"), (0.5, "0.5"), (0.99, "0.99"), (1.0, "1")] {
            let got = gauge_of(
                &seen,
                "size_bytes_window",
                &["kind=a", &format!("quantile={label}")],
            )
            .unwrap();
            let want = values[(q * (values.len() - 1) as f64).floor() as usize];
            assert!(
                (got - want).abs() <= alpha * want,
                "window {window} q={q}: {got} vs {want}"
            );
        }
    }
}
