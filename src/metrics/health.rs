//! ringfold's own health, reported through the `metrics` facade.
//!
//! Names follow Prometheus' conventions (`_total` counters, base units,
//! `ringfold_` namespace); counters are reported with `absolute` (the
//! engine's running totals), gauges with `set`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ringfold_events_published_total` | counter | |
//! | `ringfold_events_sealed_total` | counter | |
//! | `ringfold_events_lost_to_lag_total` | counter | |
//! | `ringfold_events_folded_total` | counter | |
//! | `ringfold_events_dropped_total` | counter | `reason`: `full`, `shut_down`, `invalid_name`, `foreign_key`, `too_many_names`, `flusher_died`, `urgent_timeout`, `not_numeric` |
//! | `ringfold_events_pending` | gauge | |
//! | `ringfold_batches_total` | counter | |
//! | `ringfold_subscriber_panics_total` | counter | |
//! | `ringfold_flusher_wakeups_total` | counter | `cause`: `high_water`, `tick` |
//! | `ringfold_flusher_sweeps_total` | counter | |
//! | `ringfold_producers` | gauge | |
//! | `ringfold_flusher_dead` | gauge (0 or 1) | |
//! | `ringfold_subscriber_delivered_batches_total` | counter | `subscriber` |
//! | `ringfold_subscriber_delivered_events_total` | counter | `subscriber` |
//! | `ringfold_subscriber_merged_batches_total` | counter | `subscriber` |
//! | `ringfold_subscriber_lag_dropped_batches_total` | counter | `subscriber` |
//! | `ringfold_subscriber_lag_dropped_events_total` | counter | `subscriber` |
//! | `ringfold_subscriber_discarded_events_total` | counter | `subscriber` |
//! | `ringfold_subscriber_queued_batches` | gauge | `subscriber` |
//! | `ringfold_subscriber_queued_bytes` | gauge | `subscriber` |
//! | `ringfold_subscriber_lag_seconds` | gauge | `subscriber` |
//!
//! and, for a [`FoldLayer`] ([`HealthReporter::report_layer`]):
//! `ringfold_metrics_series` (gauge), `ringfold_metrics_overflow_total`,
//! `ringfold_metrics_renamed_total`, `ringfold_metrics_refused_total`,
//! `ringfold_metrics_not_numeric_total`, `ringfold_metrics_windows_total`.
//!
//! The `subscriber` label is bounded: subscriptions are grouped by name
//! (figures summed), and past [`HealthReporter::subscriber_limit`] names
//! (default 64) the rest are summed under `subscriber="_other"`.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use super::FoldLayer;
use crate::{Engine, Stats};

/// Reports an engine's [`Stats`] (and a [`FoldLayer`]'s own counters)
/// through the current `metrics` recorder; see the [`metrics`](crate::metrics) module docs
/// for the names.
///
/// ```
/// use metrics_util::layers::Layer;
/// use ringfold::metrics::{FoldLayer, HealthReporter};
/// use ringfold::Engine;
///
/// let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
/// let prometheus = exporter.handle();
/// let layer = FoldLayer::new()?;
/// let recorder = layer.layer(exporter);
/// let engine = Engine::<u64>::builder().build()?;
/// engine.publish("data:jobs:done", 1u64)?;
/// engine.flush()?;
/// let mut health = HealthReporter::new();
/// metrics::with_local_recorder(&recorder, || health.report_engine(&engine));
/// layer.flush()?;
/// assert!(prometheus.render().contains("ringfold_events_published_total 1"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct HealthReporter {
    subscriber_limit: usize,
    described: bool,
}

impl Default for HealthReporter {
    fn default() -> Self {
        HealthReporter::new()
    }
}

#[derive(Default, Clone, Copy)]
struct SubscriberFigures {
    delivered_batches: u64,
    delivered_events: u64,
    lag_dropped_batches: u64,
    lag_dropped_events: u64,
    discarded_events: u64,
    merged_batches: u64,
    queued: u64,
    queued_bytes: u64,
    lag: f64,
}

/// The `subscriber` label of the subscriptions past the limit.
pub const OTHER_SUBSCRIBERS: &str = "_other";

impl HealthReporter {
    /// A reporter with the default subscriber label limit (64).
    pub fn new() -> HealthReporter {
        HealthReporter {
            subscriber_limit: 64,
            described: false,
        }
    }

    /// Distinct `subscriber` label values before `"_other"`.
    #[must_use]
    pub fn subscriber_limit(mut self, n: usize) -> Self {
        self.subscriber_limit = n;
        self
    }

    /// Describes every metric (unit and help text) to the current recorder;
    /// the first report does it too.
    pub fn describe(&mut self) {
        self.described = true;
        let counters: [(&'static str, &'static str); 15] = [
            (
                "ringfold_events_published_total",
                "Events accepted by publish",
            ),
            (
                "ringfold_events_sealed_total",
                "Events sealed into batches for the subscribers",
            ),
            (
                "ringfold_events_lost_to_lag_total",
                "Events the subscribers' lag policies dropped past their budgets",
            ),
            (
                "ringfold_events_folded_total",
                "Events folded away by latest or aggregate",
            ),
            (
                "ringfold_events_dropped_total",
                "Events rejected or discarded, by reason",
            ),
            ("ringfold_batches_total", "Batches emitted"),
            (
                "ringfold_subscriber_panics_total",
                "Panics caught on the delivery side",
            ),
            (
                "ringfold_flusher_wakeups_total",
                "Flusher wake-ups, by cause",
            ),
            ("ringfold_flusher_sweeps_total", "Sweeps of all rings"),
            (
                "ringfold_subscriber_delivered_batches_total",
                "Batches delivered to the subscriber",
            ),
            (
                "ringfold_subscriber_delivered_events_total",
                "Events delivered to the subscriber",
            ),
            (
                "ringfold_subscriber_merged_batches_total",
                "Windows merged into a batch already queued (the subscriber was behind)",
            ),
            (
                "ringfold_subscriber_lag_dropped_batches_total",
                "Batches the subscriber's lag policy dropped",
            ),
            (
                "ringfold_subscriber_lag_dropped_events_total",
                "Events in batches the lag policy dropped",
            ),
            (
                "ringfold_subscriber_discarded_events_total",
                "Events discarded on unsubscribe",
            ),
        ];
        for (name, help) in counters {
            describe_counter!(name, Unit::Count, help);
        }
        describe_gauge!(
            "ringfold_events_pending",
            Unit::Count,
            "Events accepted, not yet delivered"
        );
        describe_gauge!("ringfold_producers", Unit::Count, "Producers registered");
        describe_gauge!("ringfold_flusher_dead", "1 if the flusher thread died");
        describe_gauge!(
            "ringfold_subscriber_queued_batches",
            Unit::Count,
            "Batches queued for the subscriber"
        );
        describe_gauge!(
            "ringfold_subscriber_queued_bytes",
            Unit::Bytes,
            "Bytes the subscriber's queue holds against its budget"
        );
        describe_gauge!(
            "ringfold_subscriber_lag_seconds",
            Unit::Seconds,
            "Age of the oldest queued batch"
        );
    }

    /// Reports `engine.stats()`.
    pub fn report_engine<T: Send + Sync + 'static>(&mut self, engine: &Engine<T>) {
        self.report(&engine.stats());
    }

    /// Reports a stats snapshot.
    pub fn report(&mut self, stats: &Stats) {
        if !self.described {
            self.describe();
        }
        counter!("ringfold_events_published_total").absolute(stats.published);
        counter!("ringfold_events_sealed_total").absolute(stats.sealed);
        counter!("ringfold_events_lost_to_lag_total").absolute(stats.lost_to_lag);
        counter!("ringfold_events_folded_total").absolute(stats.folded);
        let d = &stats.dropped;
        for (reason, n) in [
            ("full", d.full),
            ("shut_down", d.shut_down),
            ("invalid_name", d.invalid_name),
            ("foreign_key", d.foreign_key),
            ("too_many_names", d.too_many_names),
            ("flusher_died", d.flusher_died),
            ("urgent_timeout", d.urgent_timeout),
            ("not_numeric", d.not_numeric),
        ] {
            counter!("ringfold_events_dropped_total", "reason" => reason).absolute(n);
        }
        gauge!("ringfold_events_pending").set(stats.pending as f64);
        counter!("ringfold_batches_total").absolute(stats.batches);
        counter!("ringfold_subscriber_panics_total").absolute(stats.subscriber_panics);
        counter!("ringfold_flusher_wakeups_total", "cause" => "high_water")
            .absolute(stats.high_water_wakeups);
        counter!("ringfold_flusher_wakeups_total", "cause" => "tick").absolute(stats.ticks);
        counter!("ringfold_flusher_sweeps_total").absolute(stats.sweeps);
        gauge!("ringfold_producers").set(stats.producers as f64);
        gauge!("ringfold_flusher_dead").set(if stats.flusher_died { 1.0 } else { 0.0 });

        let mut by_name: BTreeMap<&str, SubscriberFigures> = BTreeMap::new();
        for s in &stats.subscribers {
            let label =
                if by_name.contains_key(s.name.as_str()) || by_name.len() < self.subscriber_limit {
                    s.name.as_str()
                } else {
                    OTHER_SUBSCRIBERS
                };
            let f = by_name.entry(label).or_default();
            f.delivered_batches += s.delivered_batches;
            f.delivered_events += s.delivered_events;
            f.lag_dropped_batches += s.lag_dropped_batches;
            f.lag_dropped_events += s.lag_dropped_events;
            f.discarded_events += s.discarded_events;
            f.merged_batches += s.merged_batches;
            f.queued += s.queued;
            f.queued_bytes += s.queued_bytes;
            f.lag = f.lag.max(s.lag.as_secs_f64());
        }
        for (name, f) in by_name {
            let name = name.to_owned();
            counter!("ringfold_subscriber_delivered_batches_total", "subscriber" => name.clone())
                .absolute(f.delivered_batches);
            counter!("ringfold_subscriber_delivered_events_total", "subscriber" => name.clone())
                .absolute(f.delivered_events);
            counter!("ringfold_subscriber_lag_dropped_batches_total", "subscriber" => name.clone())
                .absolute(f.lag_dropped_batches);
            counter!("ringfold_subscriber_lag_dropped_events_total", "subscriber" => name.clone())
                .absolute(f.lag_dropped_events);
            counter!("ringfold_subscriber_discarded_events_total", "subscriber" => name.clone())
                .absolute(f.discarded_events);
            counter!("ringfold_subscriber_merged_batches_total", "subscriber" => name.clone())
                .absolute(f.merged_batches);
            gauge!("ringfold_subscriber_queued_batches", "subscriber" => name.clone())
                .set(f.queued as f64);
            gauge!("ringfold_subscriber_queued_bytes", "subscriber" => name.clone())
                .set(f.queued_bytes as f64);
            gauge!("ringfold_subscriber_lag_seconds", "subscriber" => name).set(f.lag);
        }
    }

    /// Reports a layer's own counters ([`FoldLayer::stats`]).
    pub fn report_layer(&mut self, layer: &FoldLayer) {
        let s = layer.stats();
        gauge!("ringfold_metrics_series").set(s.series as f64);
        counter!("ringfold_metrics_overflow_total").absolute(s.overflowed);
        counter!("ringfold_metrics_renamed_total").absolute(s.renamed);
        counter!("ringfold_metrics_refused_total").absolute(s.refused);
        counter!("ringfold_metrics_not_numeric_total").absolute(s.not_numeric);
        counter!("ringfold_metrics_windows_total").absolute(s.windows);
    }

    /// Reports `engine`'s stats every `every` on a thread of its own,
    /// through the global recorder, until the returned handle is dropped
    /// (or [`HealthThread::stop`]); one last report on the way out.
    ///
    /// ```
    /// use ringfold::metrics::HealthReporter;
    /// use std::time::Duration;
    /// let engine = ringfold::Engine::<u64>::builder().build()?;
    /// let health = HealthReporter::new().spawn(engine.clone(), Duration::from_secs(5))?;
    /// health.stop();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<T: Send + Sync + 'static>(
        mut self,
        engine: Engine<T>,
        every: Duration,
    ) -> std::io::Result<HealthThread> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let join = std::thread::Builder::new()
            .name("ringfold-health".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    self.report_engine(&engine);
                    if *stopped {
                        return;
                    }
                    stopped = cv
                        .wait_timeout(stopped, every)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            })?;
        Ok(HealthThread {
            stop,
            join: Some(join),
        })
    }
}

/// Reports `engine`'s health once through the current recorder (see
/// [`HealthReporter`] for the names; keep a reporter to report again).
///
/// ```
/// let engine = ringfold::Engine::<u64>::builder().build()?;
/// ringfold::metrics::report_health(&engine); // no recorder installed: a no-op
/// # Ok::<(), ringfold::Error>(())
/// ```
pub fn report_health<T: Send + Sync + 'static>(engine: &Engine<T>) {
    HealthReporter::new().report_engine(engine);
}

/// The thread of [`HealthReporter::spawn`]; dropping it stops the thread.
#[derive(Debug)]
pub struct HealthThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    join: Option<JoinHandle<()>>,
}

impl HealthThread {
    /// Stops the thread after one last report, and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(join) = self.join.take() {
            // A panic in the recorder ended the thread: nothing to report.
            let _ = join.join();
        }
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.halt();
    }
}
