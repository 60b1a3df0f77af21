//! Sampler settings ([`SamplerConfig`]), their defaults, and where the
//! NVML library is looked for.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(doc)]
use super::{GpuError, GpuSampler, Metric};

/// Environment variable naming the NVML library to load when
/// [`SamplerConfig::lib_path`] is not set.
pub const NVML_PATH_ENV: &str = "RINGFOLD_NVML_PATH";

/// The library loaded when neither [`SamplerConfig::lib_path`] nor
/// [`NVML_PATH_ENV`] names one.
pub const DEFAULT_NVML_LIB: &str = "libnvidia-ml.so.1";

/// The most devices one sampler samples. A source reporting more is refused
/// at start with [`GpuError::TooManyDevices`], before anything is allocated
/// or any name interned: a count that large is a broken source or driver,
/// and sampling it would take `MAX_DEVICES * Metric::COUNT` (here 1,152)
/// of the engine's names (4,096 by default). NVML machines have at most a
/// few dozen devices.
pub const MAX_DEVICES: u32 = 64;

/// Default of [`SamplerConfig::stop_timeout`]: how long
/// [`GpuSampler::stop`] and dropping a sampler wait for a source call
/// under way before detaching the thread.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Default of [`SamplerConfig::start_timeout`]: how long starting a sampler
/// waits for its source to open and count its devices. Generous, since
/// initialising NVML on a machine with many GPUs can take seconds.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Sampler settings.
///
/// `#[non_exhaustive]`: build one from [`SamplerConfig::default`] and the
/// setters (or assign the public fields of a default one).
///
/// **Durations never panic.** Every duration may be as large as
/// `Duration::MAX`; one too large to add to an `Instant` means "no limit":
/// an `interval` that large runs one pass and then waits until stopped, a
/// `slow_interval` that large reads the slow metrics on the first pass
/// only, a `max_backoff` that large lets the back-off keep doubling (a
/// failing device is then practically never retried), and a
/// `stop_timeout` that large makes stopping wait without bound, and a
/// `start_timeout` that large makes starting wait without bound.
///
/// ```
/// use ringfold::gpu::SamplerConfig;
/// use std::time::Duration;
/// let c = SamplerConfig::default()
///     .interval(Duration::from_millis(50))
///     .max_passes(100)
///     .log(false);
/// assert_eq!(c.interval, Duration::from_millis(50));
/// assert_eq!(c.slow_interval, Duration::from_secs(10));
/// assert_eq!(c.max_passes, Some(100));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SamplerConfig {
    /// Time between passes (default 1 s; sub-100 ms is allowed, but polling
    /// NVML very often stalls the driver). Zero runs passes back to back,
    /// for measurement; slow metrics are then read on the first pass only.
    pub interval: Duration,
    /// Period of the slow metrics ([`Metric::is_slow`]: power limit, fans,
    /// throttle reasons, PCIe, memory total), rounded to whole passes;
    /// default 10 s.
    pub slow_interval: Duration,
    /// The NVML library to load ([`GpuSampler::start`] only). Default: the
    /// [`NVML_PATH_ENV`] variable if set, else [`DEFAULT_NVML_LIB`].
    pub lib_path: Option<PathBuf>,
    /// Longest back-off between retries of a failing device (rounded to
    /// whole passes, at least one); the back-off doubles per consecutive
    /// failure from one pass up to this. Default 30 s.
    pub max_backoff: Duration,
    /// Stop by itself after this many passes (tests, measurements,
    /// fixed-length runs); `Some(0)` runs no pass at all (the sampler
    /// starts, checks its source and interns its names, and its thread
    /// ends at once). Default: run until stopped.
    pub max_passes: Option<u64>,
    /// Log unsupported metrics and device errors/recoveries to stderr (once
    /// each). Default true.
    pub log: bool,
    /// How long [`GpuSampler::stop`] and dropping the sampler wait for the
    /// source call under way before detaching the thread; default
    /// [`DEFAULT_STOP_TIMEOUT`] (2 s).
    pub stop_timeout: Duration,
    /// How long [`GpuSampler::start`] and [`GpuSampler::start_with_source`]
    /// wait for the source to open and report its device count (both run
    /// on the sampler thread) before giving up with
    /// [`GpuError::StartTimeout`]; default [`DEFAULT_START_TIMEOUT`] (30 s).
    pub start_timeout: Duration,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            interval: Duration::from_secs(1),
            slow_interval: Duration::from_secs(10),
            lib_path: None,
            max_backoff: Duration::from_secs(30),
            max_passes: None,
            log: true,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

impl SamplerConfig {
    /// Sets [`SamplerConfig::interval`].
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`SamplerConfig::slow_interval`].
    pub fn slow_interval(mut self, slow_interval: Duration) -> Self {
        self.slow_interval = slow_interval;
        self
    }

    /// Sets [`SamplerConfig::lib_path`].
    pub fn lib_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.lib_path = Some(path.into());
        self
    }

    /// Sets [`SamplerConfig::max_backoff`].
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`SamplerConfig::max_passes`]: a number, or `None` to run
    /// until stopped.
    ///
    /// ```
    /// use ringfold::gpu::SamplerConfig;
    /// assert_eq!(SamplerConfig::default().max_passes(3).max_passes, Some(3));
    /// assert_eq!(SamplerConfig::default().max_passes(None).max_passes, None);
    /// ```
    pub fn max_passes(mut self, max_passes: impl Into<Option<u64>>) -> Self {
        self.max_passes = max_passes.into();
        self
    }

    /// Sets [`SamplerConfig::log`].
    pub fn log(mut self, log: bool) -> Self {
        self.log = log;
        self
    }

    /// Sets [`SamplerConfig::stop_timeout`].
    pub fn stop_timeout(mut self, stop_timeout: Duration) -> Self {
        self.stop_timeout = stop_timeout;
        self
    }

    /// Sets [`SamplerConfig::start_timeout`] (`Duration::MAX`: wait without
    /// limit).
    ///
    /// ```
    /// use ringfold::gpu::SamplerConfig;
    /// use std::time::Duration;
    /// let c = SamplerConfig::default().start_timeout(Duration::from_secs(5));
    /// assert_eq!(c.start_timeout, Duration::from_secs(5));
    /// ```
    pub fn start_timeout(mut self, start_timeout: Duration) -> Self {
        self.start_timeout = start_timeout;
        self
    }
}
