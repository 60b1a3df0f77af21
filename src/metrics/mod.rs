//! The `metrics` facade, folded by ringfold (feature `metrics`).
//!
//! [`FoldLayer`] is a [`metrics_util::layers::Layer`]: put it in front of
//! any recorder (the Prometheus exporter, say) and every `counter!`,
//! `gauge!` and `histogram!` call goes into the calling thread's own ring
//! instead of the recorder's shared atomics; a ringfold engine owned by the
//! layer folds them per series per window and forwards each window's
//! result to the inner recorder:
//!
//! | facade call | folded per window | forwarded to the inner recorder |
//! |---|---|---|
//! | `counter.increment(n)` | summed | `increment(sum)` |
//! | `counter.absolute(n)` | last wins, later increments summed onto it | `absolute(last)`, then `increment(sum)` |
//! | `gauge.set(v)` / `increment(d)` / `decrement(d)` | applied in order onto the gauge's value (`set` wins, increments add) | `set(value)` |
//! | `histogram.record(v)` | a [`Sketch`] (count, sum, min, max, quantiles within 1 %) | `record_many(representative, count)` per sketch bucket |
//!
//! Counters and gauges are forwarded with every batch the engine seals
//! (exact whichever batches they travel in); a histogram's sketch covers
//! the layer's whole window: batches sealed early by
//! [`FoldLayerBuilder::max_batch`] add to it until the window is over, a
//! flush or shutdown.
//!
//! Histograms forward the sketch's buckets, not the samples and not a
//! summary: the inner recorder keeps its own metric type (a Prometheus
//! summary or histogram), the count is exact, every forwarded value is
//! within the sketch's relative error of the samples it stands for (so are
//! its quantiles, plus the inner recorder's own error), and the work per
//! window is one call per non-empty bucket (a few hundred at most for
//! latencies), whatever the sample count. [`FoldLayer::last_summary`] gives
//! the layer's own figures of the last window.
//!
//! # Mapping keys to ringfold names
//!
//! Each series (kind, metric name, label set), seen for the first time,
//! gets the next series number `n` and the ringfold name `metrics:n`,
//! interned once ([`Engine::key`]): the handle keeps that `EventKey`, so a
//! call never hashes a name. A thread that registers a key keeps its
//! handle in a thread-local cache, so the `counter!("x")` macro, which
//! registers on every call, finds it without a lock, a shared atomic write
//! or an allocation; the handle publishes through the engine's per-thread
//! producer.
//!
//! # Names, labels and cardinality
//!
//! With Prometheus naming (the default, [`FoldLayerBuilder::prometheus_names`])
//! names and label names are mapped to Prometheus' rules and counted
//! ([`LayerStats::renamed`]), an empty name is refused (a no-op handle,
//! [`LayerStats::refused`]). A metric name gets at most
//! [`FoldLayerBuilder::cardinality_limit`] label sets (default 2000, as the
//! OpenTelemetry specification sets); the label sets past it go to one
//! overflow series per name, labelled `otel.metric.overflow="true"`
//! (`otel_metric_overflow` with Prometheus naming), and every registration
//! redirected there is counted ([`LayerStats::overflowed`]).
//!
//! ```
//! use metrics_util::layers::Layer;
//! use ringfold::metrics::FoldLayer;
//! use std::time::Duration;
//!
//! let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
//! let prometheus = exporter.handle();
//! let layer = FoldLayer::builder().window(Duration::from_millis(100)).build()?;
//! let recorder = layer.layer(exporter);
//! // In a program: metrics::set_global_recorder(recorder)?;
//! metrics::with_local_recorder(&recorder, || {
//!     for _ in 0..1000 {
//!         metrics::counter!("requests_total", "route" => "/").increment(1);
//!     }
//!     metrics::gauge!("queue_depth").set(7.0);
//! });
//! layer.flush()?; // forwards what is pending
//! let text = prometheus.render();
//! assert!(text.contains("requests_total{route=\"/\"} 1000"));
//! assert!(text.contains("queue_depth 7"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod health;
mod names;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Label, Metadata,
    Recorder, SharedString, Unit,
};
use metrics_util::layers::Layer;

use crate::{
    Batch, BatchReason, Budget, Engine, Error, EventKey, FullPolicy, LagPolicy, Policy,
    SubscribeOptions,
};

pub use crate::sketch::{Sketch, Summary};
pub use health::{report_health, HealthReporter, HealthThread};
pub use names::{
    check_label_name, check_metric_name, prometheus_label_name, prometheus_metric_name, NameError,
};

/// What a facade call puts in the ring: one small, `Copy` payload.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum MetricOp {
    /// `counter.increment(n)`.
    CounterInc(u64),
    /// `counter.absolute(n)`.
    CounterAbs(u64),
    /// `gauge.set(v)`.
    GaugeSet(f64),
    /// `gauge.increment(d)`, or `decrement(-d)`.
    GaugeAdd(f64),
    /// `histogram.record(v)`.
    Hist(f64),
}

/// The label that marks a metric's overflow series (OpenTelemetry's
/// convention), before Prometheus name mapping.
pub const OVERFLOW_LABEL: &str = "otel.metric.overflow";

/// The layer's own counters ([`FoldLayer::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerStats {
    /// Series registered (overflow series included).
    pub series: u64,
    /// Registrations of a label set past the cardinality limit, sent to
    /// the overflow series (counted per registration: remembering which
    /// label sets overflowed would be the unbounded memory the limit
    /// prevents).
    pub overflowed: u64,
    /// Metric or label names mapped to Prometheus' rules (per series).
    pub renamed: u64,
    /// Registrations refused (empty name, or the engine's name limit
    /// reached: [`FoldLayerBuilder::max_series`]); their handles do nothing.
    pub refused: u64,
    /// Histogram values that were NaN or infinite: counted, not recorded.
    pub not_numeric: u64,
    /// Windows (batches) folded and forwarded to the inner recorder.
    pub windows: u64,
}

#[derive(Default)]
struct Counters {
    series: AtomicU64,
    overflowed: AtomicU64,
    renamed: AtomicU64,
    refused: AtomicU64,
    not_numeric: AtomicU64,
    windows: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// The inner recorder's handle for one series.
#[derive(Clone)]
enum Inner {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Box<HistInner>),
}

/// What a histogram series forwards to.
#[derive(Clone)]
struct HistInner {
    /// The inner histogram (`record_many` per sketch bucket), unless
    /// `histogram_samples(false)`.
    samples: Option<Histogram>,
    /// `<name>_window{quantile=..}`.
    window: Option<WindowGauges>,
    /// `<name>_count` and `<name>_sum` when the samples are not forwarded.
    totals: Option<(Counter, Gauge)>,
}

/// The quantiles of [`FoldLayerBuilder::window_quantile_gauges`], as the
/// `quantile` label's values, in order from the minimum to the maximum.
pub const WINDOW_QUANTILES: [&str; 6] = ["0", "0.5", "0.9", "0.99", "0.999", "1"];

/// `<name>_window{quantile=..}` gauges of one histogram series.
type WindowGauges = [Gauge; 6];

struct SeriesEntry {
    inner: Inner,
    /// Its interned ringfold name, `metrics:<series number>`.
    event: EventKey,
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<metrics_util::KeyHasher>>;

#[derive(Default)]
struct NameInfo {
    label_sets: usize,
    overflow: Option<u32>,
}

/// One inner recorder's series (a layer may wrap several).
#[derive(Default)]
struct RecorderSeries {
    /// As registered by the caller, per kind.
    by_key: [KeyMap<u32>; 3],
    /// As forwarded (names mapped), per kind.
    by_inner: [KeyMap<u32>; 3],
    /// Label sets per (mapped) metric name.
    names: HashMap<String, NameInfo>,
}

const NO_SERIES: u32 = u32::MAX;

#[derive(Default)]
struct Registry {
    recorders: HashMap<u64, RecorderSeries>,
    series: Vec<SeriesEntry>,
    /// The series of each ringfold name id (`NO_SERIES` where none).
    by_name_id: Vec<u32>,
    /// The last window's summary of each histogram series.
    summaries: Vec<Option<Summary>>,
}

/// What the layer's subscriber shares with the registration path (not the
/// engine: the engine owns the subscriber, so that would be a cycle).
struct Shared {
    registry: Mutex<Registry>,
    counters: Counters,
    alpha: f64,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic under the lock leaves plain maps: still consistent.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Core {
    engine: Engine<MetricOp>,
    shared: Arc<Shared>,
    cardinality_limit: usize,
    prometheus_names: bool,
    window_gauges: bool,
    histogram_samples: bool,
}

/// Settings of a [`FoldLayer`].
///
/// ```
/// use ringfold::metrics::FoldLayer;
/// use std::time::Duration;
/// let layer = FoldLayer::builder()
///     .window(Duration::from_millis(250))
///     .cardinality_limit(500)
///     .relative_error(0.005)
///     .build()?;
/// # Ok::<(), ringfold::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FoldLayerBuilder {
    window: Duration,
    max_batch: usize,
    ring_capacity: usize,
    on_full: FullPolicy,
    cardinality_limit: usize,
    max_series: usize,
    alpha: f64,
    prometheus_names: bool,
    window_gauges: bool,
    histogram_samples: bool,
}

impl Default for FoldLayerBuilder {
    fn default() -> Self {
        FoldLayerBuilder {
            window: Duration::from_secs(1),
            max_batch: 4096,
            ring_capacity: 8192,
            on_full: FullPolicy::Block(Duration::from_millis(100)),
            cardinality_limit: 2000,
            max_series: 1 << 16,
            alpha: Sketch::DEFAULT_ALPHA,
            prometheus_names: true,
            window_gauges: false,
            histogram_samples: true,
        }
    }
}

impl FoldLayerBuilder {
    /// How long a window folds before it is forwarded (default 1 s).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// A window is also forwarded after this many calls (default 4096),
    /// which bounds the memory of a window under any call rate.
    #[must_use]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Slots in each thread's ring (default 8192; a power of two).
    #[must_use]
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = n;
        self
    }

    /// What a call does when its thread's ring is full (default: wait up
    /// to 100 ms for the flusher, then drop the call, counted in the
    /// engine's `dropped.full`: report the layer's engine with
    /// [`HealthReporter`] to see it). A hot counter bumped by several
    /// threads at full speed outruns the one flusher thread, so this is
    /// reached under load: waiting keeps the counts exact at the price of
    /// the caller's latency; `FullPolicy::DropNewest` does the opposite.
    #[must_use]
    pub fn on_full(mut self, policy: FullPolicy) -> Self {
        self.on_full = policy;
        self
    }

    /// Label sets per metric name before the overflow series (default 2000).
    #[must_use]
    pub fn cardinality_limit(mut self, n: usize) -> Self {
        self.cardinality_limit = n;
        self
    }

    /// Series in all (default 65536): past it registrations are refused,
    /// counted.
    #[must_use]
    pub fn max_series(mut self, n: usize) -> Self {
        self.max_series = n;
        self
    }

    /// The histograms' sketch relative accuracy (default 0.01).
    #[must_use]
    pub fn relative_error(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Map metric and label names to Prometheus' rules (default on).
    #[must_use]
    pub fn prometheus_names(mut self, on: bool) -> Self {
        self.prometheus_names = on;
        self
    }

    /// Also forward each histogram window's own figures as gauges
    /// `<name>_window{quantile="0"|"0.5"|"0.9"|"0.99"|"0.999"|"1"}`
    /// (min, the sketch's quantiles, max; default off): the layer's
    /// quantiles reach the exporter as they are, whatever the inner
    /// recorder does with the forwarded samples.
    #[must_use]
    pub fn window_quantile_gauges(mut self, on: bool) -> Self {
        self.window_gauges = on;
        self
    }

    /// Forward histogram windows to the inner recorder's histogram as
    /// `record_many(bucket value, count)` (default on). Off: the inner
    /// recorder gets no histogram, only `<name>_window{quantile=..}`
    /// gauges, a `<name>_count` counter and a `<name>_sum` gauge, so its
    /// memory is a few handles per series whatever the sample count (a
    /// recorder that stores each recorded value, as
    /// metrics-exporter-prometheus does between upkeeps, would otherwise
    /// hold one entry per sample again).
    #[must_use]
    pub fn histogram_samples(mut self, on: bool) -> Self {
        self.histogram_samples = on;
        self
    }

    /// Starts the layer's engine. `Error::InvalidConfig` for a zero window,
    /// batch or limit, a bad ring capacity, or a relative error outside
    /// `(0, 1)`.
    pub fn build(self) -> Result<FoldLayer, Error> {
        Sketch::new(self.alpha)?;
        if self.cardinality_limit == 0 || self.max_series == 0 {
            return Err(Error::InvalidConfig(
                "cardinality_limit and max_series must be non-zero",
            ));
        }
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            counters: Counters::default(),
            alpha: self.alpha,
        });
        let mut fold = Fold {
            shared: shared.clone(),
            by_name_id: Vec::new(),
            series: Vec::new(),
            dirty: Vec::new(),
            summaries: Vec::new(),
            spare: Vec::new(),
            window: self.window,
            hist_since: None,
        };
        let engine = Engine::<MetricOp>::builder()
            .default_policy(Policy::batch(self.window, self.max_batch))
            .ring_capacity(self.ring_capacity)
            .on_full(self.on_full)
            .max_names(self.max_series.saturating_add(1))
            .subscriber_with(
                "metrics:*",
                // Must-deliver: a lagging fold first gets merged batches,
                // then, past 64 batches' worth of calls, holds the flusher
                // back (and, through full rings, the callers) instead of
                // dropping a window: that bounds the memory between the
                // flusher and the fold.
                SubscribeOptions::new("ringfold-metrics")
                    .lag(LagPolicy::Block {
                        timeout: Duration::from_secs(1),
                    })
                    .budget(Budget::new(
                        64 * self.max_batch as u64,
                        Budget::DEFAULT_BYTES,
                    )),
                move |b: &Batch<MetricOp>| fold.on_batch(b),
            )
            .build()?;
        Ok(FoldLayer {
            core: Arc::new(Core {
                engine,
                shared,
                cardinality_limit: self.cardinality_limit,
                prometheus_names: self.prometheus_names,
                window_gauges: self.window_gauges,
                histogram_samples: self.histogram_samples,
            }),
        })
    }
}

/// A `metrics` layer that folds counters, gauges and histograms per thread
/// and per window in a ringfold engine before the inner recorder sees them
/// (see the [module docs](self)). Cheap to clone; the engine stops when
/// the layer, its recorders and their handles are all dropped.
#[derive(Clone)]
pub struct FoldLayer {
    core: Arc<Core>,
}

impl std::fmt::Debug for FoldLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldLayer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FoldLayer {
    /// A layer with default settings (`FoldLayer::builder().build()`).
    pub fn new() -> Result<FoldLayer, Error> {
        FoldLayer::builder().build()
    }

    /// Settings.
    pub fn builder() -> FoldLayerBuilder {
        FoldLayerBuilder::default()
    }

    /// Forwards everything recorded before this call to the inner
    /// recorders, and returns once they have it.
    pub fn flush(&self) -> Result<(), Error> {
        self.core.engine.flush()
    }

    /// Forwards what is pending and stops the layer's engine (its flusher
    /// and subscriber threads), returning its final stats; later calls
    /// through the layer's handles are refused, counted as `shut_down`.
    /// Dropping the layer, its recorders and every handle does the same,
    /// but each thread that registered a metric keeps its handles in a
    /// thread-local cache until it exits: call this to stop the engine
    /// while such threads live on.
    ///
    /// ```
    /// use metrics_util::layers::Layer;
    /// let layer = ringfold::metrics::FoldLayer::new()?;
    /// let recorder = layer.layer(metrics::NoopRecorder);
    /// metrics::with_local_recorder(&recorder, || metrics::counter!("x").increment(1));
    /// let stats = layer.shutdown()?;
    /// assert_eq!(stats.published, 1);
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn shutdown(&self) -> Result<crate::Stats, Error> {
        self.core.engine.shutdown()
    }

    /// The layer's engine (its `stats()`, or [`report_health`] of it).
    pub fn engine(&self) -> &Engine<MetricOp> {
        &self.core.engine
    }

    /// The layer's own counters.
    pub fn stats(&self) -> LayerStats {
        let c = &self.core.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LayerStats {
            series: get(&c.series),
            overflowed: get(&c.overflowed),
            renamed: get(&c.renamed),
            refused: get(&c.refused),
            not_numeric: get(&c.not_numeric),
            windows: get(&c.windows),
        }
    }

    /// The last forwarded window's summary of the histogram `key` (as
    /// forwarded, i.e. after name mapping), from any of the layer's
    /// recorders; `None` if no window of it was forwarded yet.
    ///
    /// ```
    /// use metrics_util::layers::Layer;
    /// let layer = ringfold::metrics::FoldLayer::new()?;
    /// let recorder = layer.layer(metrics::NoopRecorder);
    /// metrics::with_local_recorder(&recorder, || {
    ///     for v in 1..=100 {
    ///         metrics::histogram!("latency_seconds").record(v as f64 / 1000.0);
    ///     }
    /// });
    /// layer.flush()?;
    /// let s = layer.last_summary(&metrics::Key::from_name("latency_seconds")).unwrap();
    /// assert_eq!(s.count, 100);
    /// assert!((s.p50 - 0.050).abs() <= 0.01 * 0.050);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn last_summary(&self, key: &Key) -> Option<Summary> {
        let registry = self.core.shared.registry();
        let id = registry
            .recorders
            .values()
            .find_map(|r| r.by_inner[Kind::Histogram as usize].get(key))?;
        registry.summaries.get(*id as usize).copied().flatten()
    }
}

static NEXT_RECORDER: AtomicU64 = AtomicU64::new(1);

impl<R: Recorder> Layer<R> for FoldLayer {
    type Output = FoldRecorder<R>;

    fn layer(&self, inner: R) -> FoldRecorder<R> {
        FoldRecorder {
            core: self.core.clone(),
            id: NEXT_RECORDER.fetch_add(1, Ordering::Relaxed),
            inner,
        }
    }
}

/// The recorder a [`FoldLayer`] makes around `R`: install it with
/// `metrics::set_global_recorder`.
pub struct FoldRecorder<R> {
    core: Arc<Core>,
    id: u64,
    inner: R,
}

impl<R> std::fmt::Debug for FoldRecorder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldRecorder")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<R> FoldRecorder<R> {
    /// The recorder the layer forwards to.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The layer this recorder belongs to.
    pub fn layer(&self) -> FoldLayer {
        FoldLayer {
            core: self.core.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Handles: what a facade call reaches.

/// A counter handle: publishes into the calling thread's ring.
struct FoldCounter {
    core: Arc<Core>,
    key: EventKey,
}

impl CounterFn for FoldCounter {
    fn increment(&self, value: u64) {
        // A refused call (ring full past the wait, engine shut down) is
        // counted by the engine (`Stats::dropped`).
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::CounterInc(value));
    }

    fn absolute(&self, value: u64) {
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::CounterAbs(value));
    }
}

struct FoldGauge {
    core: Arc<Core>,
    key: EventKey,
}

impl GaugeFn for FoldGauge {
    fn increment(&self, value: f64) {
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::GaugeAdd(value));
    }

    fn decrement(&self, value: f64) {
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::GaugeAdd(-value));
    }

    fn set(&self, value: f64) {
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::GaugeSet(value));
    }
}

struct FoldHistogram {
    core: Arc<Core>,
    key: EventKey,
}

impl HistogramFn for FoldHistogram {
    fn record(&self, value: f64) {
        let _ = self
            .core
            .engine
            .publish_key(self.key, MetricOp::Hist(value));
    }
}

/// This thread's handles of one recorder.
struct ThreadCache {
    recorder: u64,
    counters: KeyMap<Arc<FoldCounter>>,
    gauges: KeyMap<Arc<FoldGauge>>,
    histograms: KeyMap<Arc<FoldHistogram>>,
}

std::thread_local! {
    // Per thread, so that the `Arc` a registration clones is this thread's
    // own (its reference count is no cache line shared between cores).
    static CACHE: RefCell<Vec<ThreadCache>> = const { RefCell::new(Vec::new()) };
}

fn cached<V: Clone>(recorder: u64, key: &Key, map: fn(&ThreadCache) -> &KeyMap<V>) -> Option<V> {
    CACHE
        .try_with(|c| {
            let c = c.try_borrow().ok()?;
            let tc = c.iter().find(|t| t.recorder == recorder)?;
            map(tc).get(key).cloned()
        })
        .ok()
        .flatten()
}

fn cache<V>(recorder: u64, key: &Key, value: V, map: fn(&mut ThreadCache) -> &mut KeyMap<V>) {
    let _ = CACHE.try_with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return;
        };
        let i = match c.iter().position(|t| t.recorder == recorder) {
            Some(i) => i,
            None => {
                c.push(ThreadCache {
                    recorder,
                    counters: KeyMap::default(),
                    gauges: KeyMap::default(),
                    histograms: KeyMap::default(),
                });
                c.len() - 1
            }
        };
        map(&mut c[i]).insert(key.clone(), value);
    });
}

impl<R: Recorder> FoldRecorder<R> {
    /// The slow path: finds or creates the series of `key` under the
    /// registry lock. `None`: refused (counted). The flag says whether the
    /// thread may cache the handle (not for an overflowed label set).
    fn series(&self, kind: Kind, key: &Key, metadata: &Metadata<'_>) -> Option<(EventKey, bool)> {
        let core = &self.core;
        let counters = &core.shared.counters;
        let mut reg = core.shared.registry();
        let reg = &mut *reg;
        let rec = reg.recorders.entry(self.id).or_default();
        if let Some(&id) = rec.by_key[kind as usize].get(key) {
            return Some((reg.series[id as usize].event, true));
        }
        let Some((inner_key, renamed)) = map_key(key, core.prometheus_names) else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some(&id) = rec.by_inner[kind as usize].get(&inner_key) {
            rec.by_key[kind as usize].insert(key.clone(), id);
            return Some((reg.series[id as usize].event, true));
        }
        let name_info = rec.names.entry(inner_key.name().to_owned()).or_default();
        let overflow = if name_info.label_sets >= core.cardinality_limit {
            Some(name_info.overflow)
        } else {
            name_info.label_sets += 1;
            None
        };
        if let Some(existing) = overflow {
            counters.overflowed.fetch_add(1, Ordering::Relaxed);
            let id = match existing {
                Some(id) => id,
                None => {
                    let label = if core.prometheus_names {
                        prometheus_label_name(OVERFLOW_LABEL).into_owned()
                    } else {
                        OVERFLOW_LABEL.to_owned()
                    };
                    let overflow_key = Key::from_parts(
                        inner_key.name().to_owned(),
                        vec![Label::new(label, "true")],
                    );
                    let inner = self.register_inner(kind, &overflow_key, metadata);
                    let id = new_series(reg, &core.engine, counters, inner)?;
                    if let Some(n) = reg
                        .recorders
                        .get_mut(&self.id)
                        .and_then(|r| r.names.get_mut(inner_key.name()))
                    {
                        n.overflow = Some(id);
                    }
                    id
                }
            };
            return Some((reg.series[id as usize].event, false));
        }
        let inner = self.register_inner(kind, &inner_key, metadata);
        let id = new_series(reg, &core.engine, counters, inner)?;
        if renamed {
            counters.renamed.fetch_add(1, Ordering::Relaxed);
        }
        let rec = reg.recorders.entry(self.id).or_default();
        rec.by_inner[kind as usize].insert(inner_key, id);
        rec.by_key[kind as usize].insert(key.clone(), id);
        Some((reg.series[id as usize].event, true))
    }

    fn register_inner(&self, kind: Kind, key: &Key, metadata: &Metadata<'_>) -> Inner {
        match kind {
            Kind::Counter => Inner::Counter(self.inner.register_counter(key, metadata)),
            Kind::Gauge => Inner::Gauge(self.inner.register_gauge(key, metadata)),
            Kind::Histogram => {
                let samples = self.core.histogram_samples;
                let renamed = |suffix: &str| {
                    let labels: Vec<Label> = key.labels().cloned().collect();
                    Key::from_parts(format!("{}{suffix}", key.name()), labels)
                };
                let window = (self.core.window_gauges || !samples).then(|| {
                    let name = format!("{}_window", key.name());
                    WINDOW_QUANTILES.map(|q| {
                        let mut labels: Vec<Label> = key.labels().cloned().collect();
                        labels.push(Label::new("quantile", q));
                        self.inner
                            .register_gauge(&Key::from_parts(name.clone(), labels), metadata)
                    })
                });
                let totals = (!samples).then(|| {
                    (
                        self.inner.register_counter(&renamed("_count"), metadata),
                        self.inner.register_gauge(&renamed("_sum"), metadata),
                    )
                });
                Inner::Histogram(Box::new(HistInner {
                    samples: samples.then(|| self.inner.register_histogram(key, metadata)),
                    window,
                    totals,
                }))
            }
        }
    }

    fn describe_name(&self, name: KeyName) -> Option<KeyName> {
        if !self.core.prometheus_names {
            return Some(name);
        }
        match prometheus_metric_name(name.as_str()) {
            Ok(std::borrow::Cow::Borrowed(_)) => Some(name),
            Ok(std::borrow::Cow::Owned(mapped)) => Some(KeyName::from(mapped)),
            Err(_) => None,
        }
    }
}

fn ringfold_name(id: u32) -> String {
    format!("metrics:{id}")
}

fn new_series(
    reg: &mut Registry,
    engine: &Engine<MetricOp>,
    counters: &Counters,
    inner: Inner,
) -> Option<u32> {
    let id = reg.series.len() as u32;
    let Ok(event) = engine.key(&ringfold_name(id)) else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let nid = event.name_id() as usize;
    if reg.by_name_id.len() <= nid {
        reg.by_name_id.resize(nid + 1, NO_SERIES);
    }
    reg.by_name_id[nid] = id;
    reg.series.push(SeriesEntry { inner, event });
    reg.summaries.push(None);
    counters.series.fetch_add(1, Ordering::Relaxed);
    Some(id)
}

/// The key as forwarded: names mapped to Prometheus' rules when asked.
/// `None` for an empty name; the flag says whether anything was mapped.
fn map_key(key: &Key, prometheus: bool) -> Option<(Key, bool)> {
    if key.name().is_empty() {
        return None;
    }
    if !prometheus {
        return Some((key.clone(), false));
    }
    let name = prometheus_metric_name(key.name()).ok()?;
    let mut renamed = matches!(name, std::borrow::Cow::Owned(_));
    let labels: Vec<Label> = key
        .labels()
        .map(|l| {
            let k = prometheus_label_name(l.key());
            renamed |= matches!(k, std::borrow::Cow::Owned(_));
            Label::new(k.into_owned(), l.value().to_owned())
        })
        .collect();
    if !renamed {
        return Some((key.clone(), false));
    }
    Some((Key::from_parts(name.into_owned(), labels), true))
}

macro_rules! register {
    ($self:ident, $key:ident, $md:ident, $kind:expr, $field:ident, $handle:ident, $ty:ident) => {{
        if let Some(h) = cached($self.id, $key, |t| &t.$field) {
            return $handle::from_arc(h);
        }
        let Some((event, cacheable)) = $self.series($kind, $key, $md) else {
            return $handle::noop();
        };
        let h = Arc::new($ty {
            core: $self.core.clone(),
            key: event,
        });
        if cacheable {
            cache($self.id, $key, h.clone(), |t| &mut t.$field);
        }
        $handle::from_arc(h)
    }};
}

impl<R: Recorder> Recorder for FoldRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(name) = self.describe_name(key) {
            self.inner.describe_counter(name, unit, description);
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(name) = self.describe_name(key) {
            self.inner.describe_gauge(name, unit, description);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(name) = self.describe_name(key) {
            self.inner.describe_histogram(name, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        register!(
            self,
            key,
            metadata,
            Kind::Counter,
            counters,
            Counter,
            FoldCounter
        )
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        register!(self, key, metadata, Kind::Gauge, gauges, Gauge, FoldGauge)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        register!(
            self,
            key,
            metadata,
            Kind::Histogram,
            histograms,
            Histogram,
            FoldHistogram
        )
    }
}

// ---------------------------------------------------------------------------
// The fold, on the layer's subscriber thread.

enum SeriesFold {
    Counter {
        inner: Counter,
        absolute: Option<u64>,
        sum: u64,
    },
    Gauge {
        inner: Gauge,
        value: f64,
    },
    Histogram {
        inner: Box<HistInner>,
        /// Sum of every window so far (for `<name>_sum`).
        total_sum: f64,
        sketch: Sketch,
    },
}

struct Slot {
    fold: SeriesFold,
    dirty: bool,
}

struct Fold {
    shared: Arc<Shared>,
    /// Copy of the registry's map, refreshed when an unknown name id shows.
    by_name_id: Vec<u32>,
    series: Vec<Option<Slot>>,
    dirty: Vec<u32>,
    /// Histogram summaries of the window being forwarded (kept: no
    /// allocation per window).
    summaries: Vec<(u32, Summary)>,
    /// The second dirty list (swapped with `dirty` each batch).
    spare: Vec<u32>,
    /// The layer's window: how long histogram sketches accumulate.
    window: Duration,
    /// When the oldest batch with unforwarded histogram values opened.
    hist_since: Option<std::time::Instant>,
}

impl Fold {
    fn refresh(&mut self) {
        let reg = self.shared.registry();
        self.by_name_id.clone_from(&reg.by_name_id);
        while self.series.len() < reg.series.len() {
            let entry = &reg.series[self.series.len()];
            let fold = match &entry.inner {
                Inner::Counter(c) => SeriesFold::Counter {
                    inner: c.clone(),
                    absolute: None,
                    sum: 0,
                },
                Inner::Gauge(g) => SeriesFold::Gauge {
                    inner: g.clone(),
                    value: 0.0,
                },
                Inner::Histogram(h) => SeriesFold::Histogram {
                    inner: h.clone(),
                    total_sum: 0.0,
                    // The builder checked alpha.
                    sketch: match Sketch::new(self.shared.alpha) {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                },
            };
            self.series.push(Some(Slot { fold, dirty: false }));
        }
    }

    fn series_of(&mut self, key: EventKey) -> Option<u32> {
        let nid = key.name_id() as usize;
        match self.by_name_id.get(nid) {
            Some(&id) if id != NO_SERIES && (id as usize) < self.series.len() => Some(id),
            _ => {
                self.refresh();
                self.by_name_id
                    .get(nid)
                    .copied()
                    .filter(|&id| id != NO_SERIES && (id as usize) < self.series.len())
            }
        }
    }

    fn on_batch(&mut self, batch: &Batch<MetricOp>) {
        for event in batch.events() {
            let Some(id) = self.series_of(event.key()) else {
                continue;
            };
            let Some(slot) = self.series[id as usize].as_mut() else {
                continue;
            };
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(id);
            }
            match (&mut slot.fold, *event.payload()) {
                (SeriesFold::Counter { sum, .. }, MetricOp::CounterInc(n)) => {
                    *sum = sum.saturating_add(n);
                }
                (SeriesFold::Counter { absolute, sum, .. }, MetricOp::CounterAbs(n)) => {
                    *absolute = Some(n);
                    *sum = 0;
                }
                (SeriesFold::Gauge { value, .. }, MetricOp::GaugeSet(v)) => *value = v,
                (SeriesFold::Gauge { value, .. }, MetricOp::GaugeAdd(d)) => *value += d,
                (SeriesFold::Histogram { sketch, .. }, MetricOp::Hist(v)) => {
                    sketch.add(v);
                    self.hist_since.get_or_insert(batch.opened_at());
                }
                // A handle publishes only its own kind's ops.
                _ => {}
            }
        }
        // Counters and gauges are exact whichever batches they travel in;
        // a histogram's sketch covers a time window: batches closed by
        // their count (`max_batch`) add to it until the window is over.
        let due = batch.reason() != BatchReason::Count
            || self
                .hist_since
                .is_some_and(|t| batch.closed_at().saturating_duration_since(t) >= self.window);
        self.forward(due);
    }

    fn forward(&mut self, histograms_due: bool) {
        let mut not_numeric = 0;
        let summaries = &mut self.summaries;
        let mut kept = std::mem::take(&mut self.spare);
        for id in self.dirty.drain(..) {
            let Some(slot) = self.series[id as usize].as_mut() else {
                continue;
            };
            if !histograms_due && matches!(slot.fold, SeriesFold::Histogram { .. }) {
                kept.push(id);
                continue;
            }
            slot.dirty = false;
            match &mut slot.fold {
                SeriesFold::Counter {
                    inner,
                    absolute,
                    sum,
                } => {
                    if let Some(a) = absolute.take() {
                        inner.absolute(a);
                    }
                    if *sum > 0 {
                        inner.increment(std::mem::take(sum));
                    }
                }
                SeriesFold::Gauge { inner, value } => inner.set(*value),
                SeriesFold::Histogram {
                    inner,
                    total_sum,
                    sketch,
                } => {
                    if let Some(h) = &inner.samples {
                        for (value, count) in sketch.buckets() {
                            h.record_many(value, count as usize);
                        }
                    }
                    not_numeric += sketch.not_numeric();
                    if let Some(s) = sketch.summary() {
                        if let Some((count, sum)) = &inner.totals {
                            count.increment(s.count);
                            *total_sum += s.sum;
                            sum.set(*total_sum);
                        }
                        if let Some(g) = &inner.window {
                            for (g, v) in g.iter().zip([s.min, s.p50, s.p90, s.p99, s.p999, s.max])
                            {
                                g.set(v);
                            }
                        }
                        summaries.push((id, s));
                    }
                    sketch.clear();
                }
            }
        }
        // What stays dirty for the next batch; the drained list is the spare.
        std::mem::swap(&mut self.dirty, &mut kept);
        self.spare = kept;
        if histograms_due {
            self.hist_since = None;
        }
        let counters = &self.shared.counters;
        counters.windows.fetch_add(1, Ordering::Relaxed);
        if not_numeric > 0 {
            counters
                .not_numeric
                .fetch_add(not_numeric, Ordering::Relaxed);
        }
        if !summaries.is_empty() {
            let mut reg = self.shared.registry();
            for (id, s) in summaries.drain(..) {
                if let Some(slot) = reg.summaries.get_mut(id as usize) {
                    *slot = Some(s);
                }
            }
        }
    }
}
