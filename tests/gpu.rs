//! GPU sampler tests with a scripted source: naming, units, slow period,
//! unsupported metrics, device errors and back-off, failed readings, and
//! aggregation through a real engine, bounded stops on a wedged source,
//! huge durations and absurd device counts. Everything the sampler
//! schedules is counted in passes, so no assertion depends on wall-clock
//! speed; the wedged-source tests only bound a wait generously (30 s) to
//! tell "returned" from "hung".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfold::gpu::{GpuError, GpuSampler, GpuStats, Metric, SamplerConfig, ScriptedSource, Step};
use ringfold::{Batch, Engine, Policy, Value};

type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// An engine delivering every gpu event as is, and what it delivered.
fn passthrough_engine() -> (Engine<Value>, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let engine = Engine::<Value>::builder()
        .policy("gpu:*", Policy::Passthrough)
        .subscriber(move |b: &Batch<Value>| {
            let mut sink = sink.lock().unwrap();
            for e in b.events() {
                sink.push((
                    e.name().to_owned(),
                    e.prefix().to_owned(),
                    e.payload().clone(),
                ));
            }
        })
        .build()
        .unwrap();
    (engine, seen)
}

/// Fast, quiet, fixed-length runs.
fn config(passes: u64) -> SamplerConfig {
    SamplerConfig::default()
        .interval(Duration::from_micros(200))
        .slow_interval(Duration::from_micros(800)) // every 4th pass
        .max_backoff(Duration::from_secs(3600))
        .max_passes(passes)
        .log(false)
}

fn run(engine: &Engine<Value>, source: ScriptedSource, config: SamplerConfig) -> GpuStats {
    let stats = GpuSampler::start_with_source(engine, source, config)
        .unwrap()
        .join();
    engine.flush().unwrap();
    stats
}

fn values_of(seen: &Seen, name: &str) -> Vec<f64> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(n, ..)| n == name)
        .map(|(.., v)| v.as_f64().expect("numeric payload"))
        .collect()
}

#[test]
fn metric_names_carry_units_and_are_unique() {
    let names: BTreeSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names.len(), Metric::COUNT);
    for (i, m) in Metric::ALL.iter().enumerate() {
        assert_eq!(m.index(), i);
        let suffix = match m.unit() {
            "%" => "_pct",
            "bytes" => "_bytes",
            "°C" => "_c",
            "mW" => "_mw",
            "mJ" => "_mj",
            "MHz" => "_mhz",
            "KB/s" => "_kbps",
            "P-state" => "pstate",
            "bitmask" => "_reasons",
            other => panic!("unexpected unit {other}"),
        };
        assert!(m.name().ends_with(suffix), "{} lacks {suffix}", m.name());
        assert_eq!(m.event_name(3), format!("gpu:3:{}", m.name()));
    }
}

#[test]
fn publishes_every_metric_per_device_under_gpu_index_prefix() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(2)
        .values(0, Metric::PowerMw, [250_000.0])
        .values(1, Metric::PowerMw, [90_000.0])
        .values(1, Metric::MemUsedBytes, [8.0 * 1024.0 * 1024.0 * 1024.0])
        .values(0, Metric::ThrottleReasons, [4.0]);
    let stats = run(&engine, source, config(1));
    assert_eq!(stats.passes, 1);
    assert_eq!(stats.devices, 2);
    assert_eq!(stats.published, 2 * Metric::COUNT as u64);
    assert_eq!(stats.failed, 0);

    let seen = seen.lock().unwrap();
    let names: BTreeSet<_> = seen.iter().map(|(n, ..)| n.clone()).collect();
    let expected: BTreeSet<_> = (0..2)
        .flat_map(|d| {
            Metric::ALL
                .iter()
                .map(move |m| format!("gpu:{d}:{}", m.name()))
        })
        .collect();
    assert_eq!(names, expected);
    for (name, prefix, _) in seen.iter() {
        let dev = &name[..5];
        assert_eq!(prefix, dev, "prefix of {name}");
    }
    let get = |n: &str| seen.iter().find(|(name, ..)| name == n).unwrap().2.clone();
    assert_eq!(get("gpu:0:power_mw"), Value::F64(250_000.0));
    assert_eq!(get("gpu:1:power_mw"), Value::F64(90_000.0));
    // Integral metrics travel as U64.
    assert_eq!(get("gpu:1:mem_used_bytes"), Value::U64(8 << 30));
    assert_eq!(get("gpu:0:throttle_reasons"), Value::U64(4));
    assert_eq!(engine.stats().published, stats.published);
}

#[test]
fn slow_metrics_only_on_the_slow_period() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(1);
    let log = source.log();
    let stats = run(&engine, source, config(10));
    assert_eq!(stats.passes, 10);
    // slow_interval = 4 intervals: passes 0, 4, 8.
    assert_eq!(stats.slow_passes, 3);
    for m in Metric::ALL {
        let want = if m.is_slow() { 3 } else { 10 };
        assert_eq!(log.requests(0, m), want, "{m}");
        assert_eq!(
            values_of(&seen, &m.event_name(0)).len(),
            want as usize,
            "{m}"
        );
    }
    assert!(Metric::PowerLimitMw.is_slow() && Metric::FanPct.is_slow());
    assert!(Metric::ThrottleReasons.is_slow() && !Metric::PowerMw.is_slow());
}

#[test]
fn unsupported_metrics_are_probed_once_then_skipped() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(2)
        .script(0, Metric::FanPct, [Step::Unsupported])
        .script(0, Metric::UtilEncPct, [Step::Unsupported])
        .script(0, Metric::PowerMw, [Step::Unsupported]);
    let log = source.log();
    let stats = run(&engine, source, config(20));
    assert_eq!(stats.unsupported, 3);
    assert_eq!(stats.failed, 0);
    for m in [Metric::FanPct, Metric::UtilEncPct, Metric::PowerMw] {
        assert_eq!(log.requests(0, m), 1, "{m} asked again after the probe");
        assert!(values_of(&seen, &m.event_name(0)).is_empty());
    }
    // Other devices and metrics are unaffected.
    assert_eq!(log.requests(1, Metric::UtilEncPct), 20);
    assert_eq!(log.requests(1, Metric::FanPct), 5); // passes 0, 4, 8, 12, 16
    assert_eq!(log.requests(0, Metric::TempC), 20);
    assert_eq!(values_of(&seen, "gpu:1:power_mw").len(), 20);
}

#[test]
fn unsupported_discovered_later_is_also_skipped_from_then_on() {
    let (engine, _seen) = passthrough_engine();
    let source = ScriptedSource::new(1).script(
        0,
        Metric::TempC,
        [
            Step::Value(40.0),
            Step::Value(41.0),
            Step::Unsupported,
            Step::Value(99.0),
        ],
    );
    let log = source.log();
    let stats = run(&engine, source, config(10));
    assert_eq!(log.requests(0, Metric::TempC), 3);
    assert_eq!(stats.unsupported, 1);
}

#[test]
fn failed_readings_are_never_published_as_zero() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(1).script(
        0,
        Metric::TempC,
        [
            Step::Value(50.0),
            Step::Fail,
            Step::Missing,
            Step::Value(f64::NAN),
            Step::Value(f64::INFINITY),
            Step::Value(52.0),
        ],
    );
    let stats = run(&engine, source, config(8));
    // Passes 1..=4 fail (error, missing, NaN, inf); 0 and 5..8 publish.
    assert_eq!(values_of(&seen, "gpu:0:temp_c"), [50.0, 52.0, 52.0, 52.0]);
    assert_eq!(stats.failed, 4);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(.., v)| v.as_f64() != Some(0.0)));
    let total_requests: u64 = 8 * 12 + 2 * 6; // 12 fast metrics each pass, 6 slow ones twice
    assert_eq!(stats.published + stats.failed, total_requests);
    assert_eq!(engine.stats().published, stats.published);
}

#[test]
fn device_errors_back_off_exponentially_and_recover() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(2).device_error(0, 2..12);
    let log = source.log();
    let stats = run(&engine, source, config(16));
    // Error at 2 -> skip 1 -> retry 4 (error) -> skip 2 -> retry 7 (error)
    // -> skip 4 -> retry 12: recovered, sampled every pass again.
    assert_eq!(log.calls(0), [0, 1, 2, 4, 7, 12, 13, 14, 15]);
    assert_eq!(stats.device_errors, 3);
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.backoff_skips, 7);
    // The healthy device is untouched.
    assert_eq!(log.calls(1), (0..16).collect::<Vec<_>>());
    assert_eq!(values_of(&seen, "gpu:1:temp_c").len(), 16);
    // Passes with a device error published nothing for it, not zeros.
    assert_eq!(values_of(&seen, "gpu:0:temp_c").len(), 2 + 4);
    assert_eq!(stats.failed, 0);
}

#[test]
fn back_off_is_bounded() {
    let (engine, _seen) = passthrough_engine();
    let source = ScriptedSource::new(1).device_error(0, 0..u64::MAX);
    let log = source.log();
    let cfg = config(40).max_backoff(Duration::from_micros(800)); // 4 passes
    let stats = run(&engine, source, cfg);
    let calls = log.calls(0);
    assert_eq!(calls, [0, 2, 5, 10, 15, 20, 25, 30, 35]);
    assert_eq!(stats.device_errors, calls.len() as u64);
    assert_eq!(stats.retries, calls.len() as u64 - 1);
    assert_eq!(stats.published, 0);
    assert_eq!(stats.passes, 40);
}

#[test]
fn a_panicking_source_is_a_device_error_not_a_crash() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(1).panic_at(0, 1);
    let log = source.log();
    let stats = run(&engine, source, config(6));
    assert_eq!(stats.passes, 6);
    assert_eq!(stats.device_errors, 1);
    assert_eq!(log.calls(0), [0, 1, 3, 4, 5]);
    assert_eq!(values_of(&seen, "gpu:0:temp_c").len(), 4);
    // The engine is still up.
    engine.publish("data:after:panic", 1).unwrap();
    engine.flush().unwrap();
}

#[test]
fn readings_aggregate_through_default_rules() {
    #[derive(Default, Debug, Clone, Copy)]
    struct Agg {
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
    }
    let aggs: Arc<Mutex<BTreeMap<String, Agg>>> = Arc::default();
    let prefixes: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (sink, psink) = (aggs.clone(), prefixes.clone());
    let engine = Engine::<Value>::builder()
        .default_rules()
        .subscriber(move |b: &Batch<Value>| {
            assert!(b.events().is_empty(), "gpu:* aggregates, it does not batch");
            psink.lock().unwrap().insert(b.prefix().to_owned());
            let mut sink = sink.lock().unwrap();
            // Windows may split the run: merge them.
            for a in b.aggregates() {
                let e = sink.entry(a.name().to_owned()).or_insert(Agg {
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    ..Agg::default()
                });
                e.count += a.count();
                e.sum += a.sum();
                e.min = e.min.min(a.min());
                e.max = e.max.max(a.max());
            }
        })
        .build()
        .unwrap();
    let source = ScriptedSource::new(2)
        .values(
            0,
            Metric::PowerMw,
            [100_000.0, 200_000.0, 300_000.0, 400_000.0],
        )
        .values(0, Metric::TempC, [60.0, 70.0])
        .script(
            0,
            Metric::UtilGpuPct,
            [Step::Value(10.0), Step::Fail, Step::Value(30.0)],
        )
        .values(1, Metric::PowerMw, [50_000.0]);
    let stats = run(&engine, source, config(4));
    assert_eq!(stats.failed, 1);
    engine.flush().unwrap();
    let aggs = aggs.lock().unwrap();
    let power = aggs["gpu:0:power_mw"];
    assert_eq!(power.count, 4);
    assert_eq!((power.min, power.max), (100_000.0, 400_000.0));
    assert_eq!(power.sum / power.count as f64, 250_000.0);
    let temp = aggs["gpu:0:temp_c"];
    assert_eq!((temp.count, temp.min, temp.max), (4, 60.0, 70.0));
    assert_eq!(temp.sum / temp.count as f64, 67.5);
    // The failed utilisation reading is absent, not averaged in as 0.
    let util = aggs["gpu:0:util_gpu_pct"];
    assert_eq!((util.count, util.min, util.max), (3, 10.0, 30.0));
    assert!((util.sum / util.count as f64 - 70.0 / 3.0).abs() < 1e-9);
    let other = aggs["gpu:1:power_mw"];
    assert_eq!((other.count, other.min, other.max), (4, 50_000.0, 50_000.0));
    // Slow metrics: pass 0 only (slow period is 4 passes).
    assert_eq!(aggs["gpu:0:fan_pct"].count, 1);
    assert_eq!(
        *prefixes.lock().unwrap(),
        BTreeSet::from(["gpu:0".to_owned(), "gpu:1".to_owned()])
    );
    let es = engine.shutdown().unwrap();
    assert_eq!(es.published, stats.published);
    assert!(es.is_conserved());
}

#[test]
fn stop_is_prompt_even_with_a_long_interval() {
    let (engine, _seen) = passthrough_engine();
    let cfg = config(0)
        .interval(Duration::from_secs(3600))
        .max_passes(None);
    let sampler = GpuSampler::start_with_source(&engine, ScriptedSource::new(1), cfg).unwrap();
    while sampler.stats().passes == 0 {
        std::thread::yield_now();
    }
    let stats = sampler.stop();
    assert_eq!(stats.passes, 1);
    assert!(stats.finished);
}

#[test]
fn sampler_ends_when_the_engine_shuts_down() {
    let (engine, _seen) = passthrough_engine();
    let cfg = config(0).max_passes(None);
    let sampler = GpuSampler::start_with_source(&engine, ScriptedSource::new(1), cfg).unwrap();
    while sampler.stats().passes < 3 {
        std::thread::yield_now();
    }
    let es = engine.shutdown().unwrap();
    let stats = sampler.join(); // returns: the sampler saw the engine close
    assert!(stats.finished);
    assert!(stats.published >= es.published);
}

#[test]
fn full_ring_drops_are_counted_not_retried() {
    let engine = Engine::<Value>::builder()
        .policy("gpu:*", Policy::batch(Duration::from_secs(60), 1 << 20))
        .ring_capacity(4)
        .build()
        .unwrap();
    let stats = run(&engine, ScriptedSource::new(4), config(5));
    let requested = 5 * 4 * 12 + 2 * 4 * 6;
    assert_eq!(stats.published + stats.publish_dropped, requested);
    assert_eq!(engine.stats().published, stats.published);
    assert_eq!(engine.stats().dropped.full, stats.publish_dropped);
}

#[test]
fn start_errors_are_typed() {
    let (engine, _seen) = passthrough_engine();
    let err =
        GpuSampler::start_with_source(&engine, ScriptedSource::new(0), config(1)).unwrap_err();
    assert!(matches!(err, GpuError::NoDevices), "{err}");
    let src = ScriptedSource::new(1).fail_device_count("driver wedged");
    let err = GpuSampler::start_with_source(&engine, src, config(1)).unwrap_err();
    assert!(matches!(err, GpuError::Source(_)), "{err}");
    assert!(err.to_string().contains("driver wedged"));
    engine.shutdown().unwrap();
    let err =
        GpuSampler::start_with_source(&engine, ScriptedSource::new(1), config(1)).unwrap_err();
    assert!(matches!(err, GpuError::Engine(_)), "{err}");
}

#[cfg(feature = "gpu")]
#[test]
fn start_without_nvml_is_a_quick_typed_not_found_error() {
    let (engine, _seen) = passthrough_engine();
    let cfg = config(1).lib_path("/nonexistent/ringfold-test/libnvidia-ml.so.1");
    let t = std::time::Instant::now();
    let err = GpuSampler::start(&engine, cfg).unwrap_err();
    let took = t.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, GpuError::NvmlNotFound { .. }), "{msg}");
    for needle in [
        "NVML",
        "libnvidia-ml.so.1",
        "not found",
        "SamplerConfig::lib_path",
        "RINGFOLD_NVML_PATH",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    assert!(!msg.contains('\n'), "one line");
    // Generous bound: a failed dlopen, not a hang.
    assert!(took < Duration::from_secs(10), "{took:?}");

    // The default library: on a machine without NVML, the same error; on
    // one with it, a sampler that runs and stops. (Timings and the message
    // are printed by `cargo run --example gpu`.)
    match GpuSampler::start(&engine, config(1)) {
        Ok(sampler) => assert!(sampler.join().finished),
        Err(e) => assert!(
            matches!(e, GpuError::NvmlNotFound { .. } | GpuError::Nvml(_)),
            "{e}"
        ),
    }
}

/// A source whose `sample` call blocks ("wedged driver") until released.
/// `entered` counts calls that reached the wedge.
#[derive(Clone, Default)]
struct Wedge(Arc<(Mutex<(u64, bool)>, std::sync::Condvar)>);

impl Wedge {
    fn wait_entered(&self) {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        while g.0 == 0 {
            g = cv.wait(g).unwrap();
        }
    }
    fn release(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
}

impl ringfold::gpu::GpuSource for Wedge {
    fn device_count(&mut self) -> Result<u32, ringfold::gpu::DeviceError> {
        Ok(1)
    }
    fn sample(
        &mut self,
        _pass: u64,
        _device: u32,
        _metrics: &[Metric],
        _out: &mut dyn FnMut(Metric, Result<f64, ringfold::gpu::ReadError>),
    ) -> Result<(), ringfold::gpu::DeviceError> {
        let (m, cv) = &*self.0;
        let mut g = m.lock().unwrap();
        g.0 += 1;
        cv.notify_all();
        while !g.1 {
            g = cv.wait(g).unwrap();
        }
        Ok(())
    }
}

/// Runs `f` on a helper thread; true if it returned within `limit`.
fn returns_within(limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

#[test]
fn dropping_a_sampler_with_a_wedged_source_does_not_hang() {
    let (engine, _seen) = passthrough_engine();
    let wedge = Wedge::default();
    let sampler =
        GpuSampler::start_with_source(&engine, wedge.clone(), SamplerConfig::default()).unwrap();
    wedge.wait_entered();
    // Drop is bounded by the default stop timeout (documented); 30 s is a
    // generous "it did not hang" bound, not a speed claim.
    let returned = returns_within(Duration::from_secs(30), move || drop(sampler));
    wedge.release(); // let the detached (or, before the fix, joined) thread end
    assert!(
        returned,
        "dropping the sampler blocked on the wedged source"
    );
}

#[test]
fn max_passes_zero_runs_no_pass() {
    let (engine, seen) = passthrough_engine();
    let source = ScriptedSource::new(1);
    let log = source.log();
    let stats = run(&engine, source, config(0));
    assert_eq!(stats.passes, 0);
    assert_eq!(stats.published, 0);
    assert!(log.calls(0).is_empty(), "the source was sampled");
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn a_million_devices_is_refused_before_any_name_is_interned() {
    let (engine, _seen) = passthrough_engine();
    let err = GpuSampler::start_with_source(&engine, ScriptedSource::new(1_000_000), config(1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::TooManyDevices {
                reported: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
    // The engine's name table was not filled by the refused sampler.
    for i in 0..100 {
        engine.key(&format!("data:after:{i}")).unwrap();
    }
    // And a sampler with a sane device count still starts afterwards.
    let stats = run(&engine, ScriptedSource::new(2), config(1));
    assert_eq!(stats.published, 2 * Metric::COUNT as u64);
}

#[test]
fn u32_max_devices_is_a_typed_error_not_an_abort() {
    let (engine, _seen) = passthrough_engine();
    let err = GpuSampler::start_with_source(&engine, ScriptedSource::new(u32::MAX), config(1))
        .unwrap_err();
    assert!(
        matches!(err, GpuError::TooManyDevices { reported: u32::MAX, max } if max == ringfold::gpu::MAX_DEVICES),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains(&ringfold::gpu::MAX_DEVICES.to_string()));
}

#[test]
fn stop_timeout_on_a_wedged_source_is_a_typed_error_and_detaches() {
    let (engine, _seen) = passthrough_engine();
    let wedge = Wedge::default();
    let sampler =
        GpuSampler::start_with_source(&engine, wedge.clone(), config(0).max_passes(None)).unwrap();
    wedge.wait_entered();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sampler.stop_timeout(Duration::from_millis(100)));
    });
    let result = rx.recv_timeout(Duration::from_secs(30));
    wedge.release();
    let err = result
        .expect("stop_timeout blocked on the wedged source")
        .unwrap_err();
    match err {
        GpuError::StopTimeout { timeout, stats } => {
            assert_eq!(timeout, Duration::from_millis(100));
            assert!(!stats.finished, "the wedged thread cannot have ended");
            assert_eq!(stats.passes, 0);
        }
        other => panic!("{other}"),
    }
    // The detached thread ended once released and the engine is unharmed.
    engine.publish("data:after:wedge", 1).unwrap();
    let es = engine.shutdown().unwrap();
    assert!(es.is_conserved());
}

#[test]
fn stop_uses_the_configured_bound_on_a_wedged_source() {
    let (engine, _seen) = passthrough_engine();
    let wedge = Wedge::default();
    let cfg = config(0)
        .max_passes(None)
        .stop_timeout(Duration::from_millis(50));
    let sampler = GpuSampler::start_with_source(&engine, wedge.clone(), cfg).unwrap();
    wedge.wait_entered();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sampler.stop());
    });
    let result = rx.recv_timeout(Duration::from_secs(30));
    wedge.release();
    let stats = result.expect("stop() blocked on the wedged source");
    assert!(!stats.finished, "detached, so not finished");
}

#[test]
fn huge_durations_never_panic_the_sampler() {
    let (engine, _seen) = passthrough_engine();
    let cfg = SamplerConfig::default()
        .interval(Duration::MAX)
        .slow_interval(Duration::MAX)
        .max_backoff(Duration::MAX)
        .stop_timeout(Duration::MAX)
        .log(false);
    let sampler = GpuSampler::start_with_source(&engine, ScriptedSource::new(1), cfg).unwrap();
    while sampler.stats().passes == 0 {
        std::thread::yield_now();
    }
    // The second pass is never due: the thread waits (it used to panic on
    // `Instant + Duration` right after the first pass).
    std::thread::sleep(Duration::from_millis(50));
    let live = sampler.stats();
    assert!(!live.finished && !live.panicked, "{live:?}");
    // A `Duration::MAX` stop timeout waits without bound, without panicking.
    let stats = sampler.stop_timeout(Duration::MAX).unwrap();
    assert_eq!(stats.passes, 1);
    assert_eq!(stats.slow_passes, 1);
    assert_eq!(stats.published, Metric::COUNT as u64);
    assert!(stats.finished && !stats.panicked, "{stats:?}");
}

#[test]
fn huge_backoff_and_slow_interval_with_a_short_interval_never_panic() {
    let (engine, _seen) = passthrough_engine();
    let source = ScriptedSource::new(1).device_error(0, 1..u64::MAX);
    let log = source.log();
    let cfg = config(50)
        .slow_interval(Duration::MAX)
        .max_backoff(Duration::MAX)
        .stop_timeout(Duration::MAX);
    let stats = run(&engine, source, cfg);
    assert!(stats.finished && !stats.panicked, "{stats:?}");
    assert_eq!(stats.passes, 50);
    assert_eq!(stats.slow_passes, 1, "slow metrics on the first pass only");
    // Doubling back-off, uncapped: fails at 1, retried at 3, 6, 11, 20, 37.
    assert_eq!(log.calls(0), [0, 1, 3, 6, 11, 20, 37]);
}

#[test]
fn engine_shutdown_is_not_held_up_by_a_detached_wedged_sampler() {
    let (engine, _seen) = passthrough_engine();
    let wedge = Wedge::default();
    let sampler =
        GpuSampler::start_with_source(&engine, wedge.clone(), config(0).max_passes(None)).unwrap();
    wedge.wait_entered();
    assert!(sampler.stop_timeout(Duration::from_millis(10)).is_err());
    // The detached thread is still inside the source call, holding its
    // producer: shutting the engine down must not wait for it.
    let returned = returns_within(Duration::from_secs(30), move || {
        engine.shutdown().unwrap();
    });
    wedge.release();
    assert!(
        returned,
        "engine shutdown waited for the wedged sampler thread"
    );
}

/// Runs `start` on its own thread and waits for it generously (30 s): a
/// watchdog, so a start that hangs fails the test instead of hanging it.
fn start_watched(
    engine: &Engine<Value>,
    source: ScriptedSource,
    config: SamplerConfig,
) -> Result<GpuSampler, GpuError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = engine.clone();
    std::thread::spawn(move || {
        let _ = tx.send(GpuSampler::start_with_source(&engine, source, config));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("start blocked on a source wedged in device_count")
}

/// Item 12: a source wedged in `device_count` cannot block the caller of
/// `start_with_source`: it waits at most `start_timeout`, then gets a typed
/// error; nothing is interned, and the detached thread ends (dropping the
/// source) once the call returns.
#[test]
fn starting_on_a_source_wedged_in_device_count_times_out() {
    let (engine, _seen) = passthrough_engine();
    let (release, wedge) = std::sync::mpsc::channel();
    let src = ScriptedSource::new(1).wedge_device_count(wedge);
    let timeout = Duration::from_millis(50);
    let result = start_watched(&engine, src, config(1).start_timeout(timeout));
    let dropped = release.send(()).is_err();
    match result {
        Err(GpuError::StartTimeout { timeout: t }) => assert_eq!(t, timeout),
        other => panic!("expected StartTimeout, got {other:?}"),
    }
    assert!(!dropped, "the source was dropped while its call was wedged");
    // The detached thread gives the source up once the call returns.
    let mut gone = false;
    for _ in 0..3000 {
        if release.send(()).is_err() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "the detached sampler thread kept the source");
    // Nothing was interned or registered for the sampler.
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.published, 0);
}

/// `start_timeout(Duration::MAX)` waits without limit (no `Instant`
/// overflow), and a start whose source answers in time starts normally.
#[test]
fn an_unlimited_start_timeout_waits_for_the_source() {
    let (engine, _seen) = passthrough_engine();
    let (release, wedge) = std::sync::mpsc::channel();
    let src = ScriptedSource::new(2).wedge_device_count(wedge);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        release.send(()).unwrap();
    });
    let sampler = start_watched(&engine, src, config(3).start_timeout(Duration::MAX)).unwrap();
    releaser.join().unwrap();
    let stats = sampler.join();
    assert_eq!((stats.devices, stats.passes), (2, 3));
    engine.shutdown().unwrap();
}
