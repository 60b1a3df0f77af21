//! The sampler thread: scheduling, naming, unsupported metrics, back-off.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DeviceError, GpuError, GpuReading, GpuSource, Metric, ReadError, SamplerConfig};
use crate::{Engine, EventKey, Producer, PublishError};

/// A snapshot of a sampler's counters ([`GpuSampler::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Devices being sampled.
    pub devices: u32,
    /// Passes completed.
    pub passes: u64,
    /// Of those, passes that also read the slow metrics.
    pub slow_passes: u64,
    /// Readings accepted by the engine.
    pub published: u64,
    /// Readings that failed or were missing: never published (not as 0,
    /// not at all).
    pub failed: u64,
    /// (device, metric) pairs found unsupported and skipped from then on.
    pub unsupported: u64,
    /// Device-level failures (including panics inside the source).
    pub device_errors: u64,
    /// Calls made to a device that had failed (retries after back-off).
    pub retries: u64,
    /// Device-passes skipped while backing off.
    pub backoff_skips: u64,
    /// Readings the engine refused (ring full): counted, not retried.
    pub publish_dropped: u64,
    /// Passes that started late by more than an interval (the schedule was
    /// reset rather than bursting to catch up).
    pub overruns: u64,
    /// Total time spent inside passes, ns (source calls plus publishing).
    pub busy_ns: u64,
    /// Longest pass, ns.
    pub max_pass_ns: u64,
    /// The sampler thread has ended (stopped, `max_passes` reached, or the
    /// engine shut down).
    pub finished: bool,
}

impl GpuStats {
    /// Mean time of one pass.
    pub fn mean_pass(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.checked_div(self.passes).unwrap_or(0))
    }
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    slow_passes: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    unsupported: AtomicU64,
    device_errors: AtomicU64,
    retries: AtomicU64,
    backoff_skips: AtomicU64,
    publish_dropped: AtomicU64,
    overruns: AtomicU64,
    busy_ns: AtomicU64,
    max_pass_ns: AtomicU64,
    finished: AtomicBool,
}

fn bump(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Samples GPUs on its own thread and publishes every reading through one
/// producer as `gpu:<index>:<metric>`.
///
/// Stops on [`GpuSampler::stop`] or drop, after
/// [`SamplerConfig::max_passes`], or when the engine shuts down. It never
/// panics (a panicking source counts as a device error) and never stops the
/// engine.
///
/// ```
/// use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource, Step};
/// use ringfold::{Engine, Value};
/// use std::time::Duration;
/// let engine = Engine::<Value>::builder().default_rules().build()?;
/// let source = ScriptedSource::new(1)
///     .script(0, Metric::FanPct, [Step::Unsupported])
///     .script(0, Metric::TempC, [Step::Value(50.0), Step::Fail]);
/// let config = SamplerConfig { interval: Duration::ZERO, max_passes: Some(4), log: false, ..Default::default() };
/// let stats = GpuSampler::start_with_source(&engine, source, config)?.join();
/// assert_eq!(stats.passes, 4);
/// assert_eq!(stats.unsupported, 1);
/// assert_eq!(stats.failed, 3); // temp_c failed on passes 1..4: not published
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GpuSampler {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    devices: u32,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GpuSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuSampler")
            .field("stats", &self.stats())
            .finish()
    }
}

impl GpuSampler {
    /// Starts sampling every NVML device.
    ///
    /// Loads [`SamplerConfig::lib_path`], else the library named by
    /// `RINGFOLD_NVML_PATH`, else `libnvidia-ml.so.1`. Without it, returns
    /// [`GpuError::NvmlNotFound`] (quickly; one failed `dlopen`), whose
    /// message says how to point at the library. Built without the `gpu`
    /// feature it returns [`GpuError::FeatureDisabled`].
    ///
    /// ```
    /// use ringfold::gpu::{GpuError, GpuSampler, SamplerConfig};
    /// use ringfold::{Engine, Value};
    /// let engine = Engine::<Value>::builder().default_rules().build()?;
    /// match GpuSampler::start(&engine, SamplerConfig::default()) {
    ///     Ok(sampler) => println!("{:?}", sampler.stop()),
    ///     Err(e @ GpuError::NvmlNotFound { .. }) => println!("{e}"),
    ///     Err(e) => println!("no GPU sampling: {e}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start<T: From<GpuReading> + Send + 'static>(
        engine: &Engine<T>,
        config: SamplerConfig,
    ) -> Result<GpuSampler, GpuError> {
        #[cfg(feature = "gpu")]
        {
            let path = config.lib_path.clone();
            let source = super::NvmlSource::open(path.as_deref())?;
            Self::start_with_source(engine, source, config)
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = (engine, config);
            Err(GpuError::FeatureDisabled)
        }
    }

    /// Starts sampling `source`. Interns every `gpu:<i>:<metric>` name and
    /// registers the producer before returning, so engine errors come back
    /// here; the first pass runs at once on the new thread.
    pub fn start_with_source<T, S>(
        engine: &Engine<T>,
        mut source: S,
        config: SamplerConfig,
    ) -> Result<GpuSampler, GpuError>
    where
        T: From<GpuReading> + Send + 'static,
        S: GpuSource + Send + 'static,
    {
        let n = catch_unwind(AssertUnwindSafe(|| source.device_count()))
            .unwrap_or_else(|_| Err(DeviceError("source panicked".into())))
            .map_err(GpuError::Source)?;
        if n == 0 {
            return Err(GpuError::NoDevices);
        }
        let mut devices = Vec::with_capacity(n as usize);
        for index in 0..n {
            let mut keys = Vec::with_capacity(Metric::COUNT);
            for m in Metric::ALL {
                keys.push(engine.key(&m.event_name(index))?);
            }
            devices.push(DeviceState::new(index, keys));
        }
        let producer = engine.producer()?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            source,
            producer,
            devices,
            schedule: Schedule::new(&config),
            config,
            counters: counters.clone(),
            stop: stop.clone(),
            buf: Vec::with_capacity(Metric::COUNT),
            fast: Vec::with_capacity(Metric::COUNT),
        };
        let thread = std::thread::Builder::new()
            .name("ringfold-gpu".into())
            .spawn(move || worker.run())
            .map_err(GpuError::Spawn)?;
        Ok(GpuSampler {
            counters,
            stop,
            devices: n,
            thread: Some(thread),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GpuStats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GpuStats {
            devices: self.devices,
            passes: r(&c.passes),
            slow_passes: r(&c.slow_passes),
            published: r(&c.published),
            failed: r(&c.failed),
            unsupported: r(&c.unsupported),
            device_errors: r(&c.device_errors),
            retries: r(&c.retries),
            backoff_skips: r(&c.backoff_skips),
            publish_dropped: r(&c.publish_dropped),
            overruns: r(&c.overruns),
            busy_ns: r(&c.busy_ns),
            max_pass_ns: r(&c.max_pass_ns),
            finished: c.finished.load(Ordering::Acquire),
        }
    }

    /// True once the sampler thread has ended.
    pub fn is_finished(&self) -> bool {
        self.counters.finished.load(Ordering::Acquire)
    }

    /// Stops the thread (it finishes the pass under way), joins it and
    /// returns the final counters. Dropping the sampler does the same.
    pub fn stop(mut self) -> GpuStats {
        self.halt(true);
        self.stats()
    }

    /// Waits for the thread to end by itself ([`SamplerConfig::max_passes`]
    /// reached, or the engine shut down) and returns the final counters.
    /// Without either it waits until the engine shuts down.
    pub fn join(mut self) -> GpuStats {
        self.halt(false);
        self.stats()
    }

    fn halt(&mut self, stop: bool) {
        if let Some(thread) = self.thread.take() {
            if stop {
                self.stop.store(true, Ordering::Release);
                thread.thread().unpark();
            }
            // The worker catches source panics; a panic here would be a bug
            // in the sampler itself, and is not propagated.
            let _ = thread.join();
            self.counters.finished.store(true, Ordering::Release);
        }
    }
}

impl Drop for GpuSampler {
    fn drop(&mut self) {
        self.halt(true);
    }
}

/// Pass arithmetic: everything is counted in passes, so scheduling,
/// slow-metric periods and back-off are deterministic given the pass number.
struct Schedule {
    slow_every: u64,
    max_skip: u64,
}

impl Schedule {
    fn new(config: &SamplerConfig) -> Self {
        let per = |d: Duration| -> u64 {
            if config.interval.is_zero() {
                u64::MAX
            } else {
                let n = d.as_nanos().div_ceil(config.interval.as_nanos());
                n.clamp(1, u64::MAX as u128) as u64
            }
        };
        Schedule {
            slow_every: per(config.slow_interval).max(1),
            max_skip: per(config.max_backoff).max(1),
        }
    }

    fn is_slow(&self, pass: u64) -> bool {
        pass % self.slow_every == 0
    }

    /// Passes skipped after the `failures`-th consecutive failure: 1, 2, 4,
    /// ... up to `max_skip`.
    fn backoff(&self, failures: u32) -> u64 {
        let doubling = 1u64
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u64::MAX);
        doubling.min(self.max_skip)
    }
}

struct DeviceState {
    index: u32,
    keys: Vec<EventKey>,
    /// Bit per metric: found unsupported, never asked again.
    unsupported: u32,
    probed: bool,
    /// Consecutive device failures.
    failures: u32,
    /// First pass at which the device is tried again.
    next_try: u64,
}

impl DeviceState {
    fn new(index: u32, keys: Vec<EventKey>) -> Self {
        DeviceState {
            index,
            keys,
            unsupported: 0,
            probed: false,
            failures: 0,
            next_try: 0,
        }
    }
}

struct Worker<T: Send + 'static, S> {
    source: S,
    producer: Producer<T>,
    devices: Vec<DeviceState>,
    schedule: Schedule,
    config: SamplerConfig,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    buf: Vec<(Metric, Result<f64, ReadError>)>,
    fast: Vec<Metric>,
}

impl<T: From<GpuReading> + Send + 'static, S: GpuSource> Worker<T, S> {
    fn run(mut self) {
        let interval = self.config.interval;
        let mut next = Instant::now();
        let mut pass = 0u64;
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let started = Instant::now();
            let engine_open = self.pass(pass, started);
            let took = started.elapsed().as_nanos() as u64;
            bump(&self.counters.busy_ns, took);
            self.counters.max_pass_ns.fetch_max(took, Ordering::Relaxed);
            self.counters.passes.fetch_add(1, Ordering::Release);
            pass += 1;
            if !engine_open || self.config.max_passes.is_some_and(|m| pass >= m) {
                break;
            }
            if interval.is_zero() {
                continue;
            }
            next += interval;
            let now = Instant::now();
            if now > next + interval {
                // Far behind (a slow pass, a suspended machine): start a
                // fresh schedule instead of a burst of catch-up passes.
                bump(&self.counters.overruns, 1);
                next = now;
                continue;
            }
            while !self.stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                std::thread::park_timeout(next - now);
            }
        }
        self.counters.finished.store(true, Ordering::Release);
    }

    /// One pass over every device. Returns false once the engine is shut
    /// down (nothing more can be published).
    fn pass(&mut self, pass: u64, at: Instant) -> bool {
        let slow = self.schedule.is_slow(pass);
        if slow {
            bump(&self.counters.slow_passes, 1);
        }
        for d in 0..self.devices.len() {
            if !self.sample_device(d, pass, slow, at) {
                return false;
            }
        }
        true
    }

    fn sample_device(&mut self, d: usize, pass: u64, slow: bool, at: Instant) -> bool {
        let dev = &mut self.devices[d];
        if pass < dev.next_try {
            bump(&self.counters.backoff_skips, 1);
            return true;
        }
        if dev.failures > 0 {
            bump(&self.counters.retries, 1);
        }
        self.fast.clear();
        let everything = !dev.probed || slow;
        self.fast.extend(
            Metric::ALL
                .iter()
                .copied()
                .filter(|m| dev.unsupported & (1 << m.index()) == 0)
                .filter(|m| everything || !m.is_slow()),
        );
        self.buf.clear();
        let (source, buf, metrics) = (&mut self.source, &mut self.buf, &self.fast);
        let index = dev.index;
        let result = catch_unwind(AssertUnwindSafe(|| {
            source.sample(pass, index, metrics, &mut |m, r| buf.push((m, r)))
        }))
        .unwrap_or_else(|_| Err(DeviceError("the GPU source panicked".into())));
        if let Err(e) = result {
            bump(&self.counters.device_errors, 1);
            dev.failures = dev.failures.saturating_add(1);
            dev.next_try = pass
                .saturating_add(1)
                .saturating_add(self.schedule.backoff(dev.failures));
            if self.config.log && dev.failures == 1 {
                eprintln!("ringfold gpu:{index}: device error, backing off: {e}");
            }
            return true;
        }
        if dev.failures > 0 {
            if self.config.log {
                eprintln!(
                    "ringfold gpu:{index}: recovered after {} failed attempts",
                    dev.failures
                );
            }
            dev.failures = 0;
        }
        let mut requested: u32 = metrics.iter().fold(0, |m, x| m | (1 << x.index()));
        let mut newly_unsupported: u32 = 0;
        let (mut published, mut failed, mut dropped) = (0u64, 0u64, 0u64);
        let mut open = true;
        for &(metric, reading) in buf.iter() {
            let bit = 1u32 << metric.index();
            if requested & bit == 0 {
                continue; // not asked for, or reported twice: ignored
            }
            requested &= !bit;
            match reading {
                Ok(value) if value.is_finite() => {
                    let payload = T::from(GpuReading {
                        device: index,
                        metric,
                        value,
                        at,
                    });
                    match self.producer.publish_key(dev.keys[metric.index()], payload) {
                        Ok(()) => published += 1,
                        Err(PublishError::ShutDown(_)) => open = false,
                        Err(_) => dropped += 1,
                    }
                }
                Ok(_) | Err(ReadError::Failed) => failed += 1,
                Err(ReadError::NotSupported) => newly_unsupported |= bit,
            }
        }
        // Requested but never reported: missing, counted as failed.
        failed += u64::from(requested.count_ones());
        let c = &self.counters;
        bump(&c.published, published);
        bump(&c.failed, failed);
        bump(&c.publish_dropped, dropped);
        if newly_unsupported != 0 {
            dev.unsupported |= newly_unsupported;
            bump(&c.unsupported, u64::from(newly_unsupported.count_ones()));
            if self.config.log {
                let names: Vec<&str> = Metric::ALL
                    .iter()
                    .filter(|m| newly_unsupported & (1 << m.index()) != 0)
                    .map(|m| m.name())
                    .collect();
                eprintln!(
                    "ringfold gpu:{index}: not supported, skipped from now on: {}",
                    names.join(", ")
                );
            }
        }
        dev.probed = true;
        open && !self.producer.is_closed()
    }
}
