//! GPU telemetry: an NVML sampler that feeds readings through an ordinary
//! producer ring.
//!
//! [`GpuSampler`] runs on its own thread, owns one [`Producer`](crate::Producer)
//! and, once per [`SamplerConfig::interval`], reads every device through a
//! [`GpuSource`] and publishes one event per reading, named
//! `gpu:<index>:<metric>` (so the prefix is `gpu:<index>`, aggregated by the
//! default `gpu:*` policy). Metric names carry their unit; see [`Metric`].
//!
//! The source is a trait so the sampler's scheduling, naming, unsupported
//! field handling and error back-off run (and are tested) on every machine
//! with a [`ScriptedSource`]; the NVML source (`NvmlSource`, cargo feature
//! `gpu`, on by default) loads `libnvidia-ml.so.1` at run time, so building
//! and testing need no GPU.
//!
//! ```
//! use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource};
//! use ringfold::{Batch, Engine, Value};
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = seen.clone();
//! let engine = Engine::<Value>::builder()
//!     .default_rules() // gpu:* -> aggregate 1000 ms / 50
//!     .subscriber(move |b: &Batch<Value>| {
//!         for a in b.aggregates() {
//!             sink.lock().unwrap().push((a.name().to_owned(), a.count(), a.mean()));
//!         }
//!     })
//!     .build()?;
//! let source = ScriptedSource::new(1).values(0, Metric::PowerMw, [100.0, 200.0, 300.0]);
//! let config = SamplerConfig::default()
//!     .interval(Duration::from_millis(1))
//!     .max_passes(3);
//! let stats = GpuSampler::start_with_source(&engine, source, config)?.join();
//! assert_eq!(stats.passes, 3);
//! engine.flush()?;
//! let seen = seen.lock().unwrap();
//! let power: Vec<_> = seen.iter().filter(|(n, ..)| n == "gpu:0:power_mw").collect();
//! assert_eq!(power.iter().map(|(_, c, _)| c).sum::<u64>(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::value::{Sample, Value};

#[cfg(feature = "gpu")]
mod nvml;
mod sampler;
mod scripted;

#[cfg(feature = "gpu")]
pub use nvml::NvmlSource;
pub use sampler::{GpuSampler, GpuStats};
pub use scripted::{ScriptLog, ScriptedSource, Step};

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

/// One GPU metric. The event name is `gpu:<device>:<name>`, the unit is part
/// of the name.
///
/// ```
/// use ringfold::gpu::Metric;
/// assert_eq!(Metric::PowerMw.name(), "power_mw");
/// assert_eq!(Metric::PowerMw.unit(), "mW");
/// assert!(Metric::FanPct.is_slow());
/// assert_eq!(Metric::ALL.len(), Metric::COUNT);
/// ```
///
/// `#[non_exhaustive]`: metrics may be added; a [`GpuSource`] matching on
/// them needs a wildcard arm (report unknown ones as
/// [`ReadError::NotSupported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Metric {
    /// GPU (kernel) utilisation over NVML's last sample period, %.
    UtilGpuPct,
    /// Memory-controller utilisation, %.
    UtilMemPct,
    /// Device memory in use, bytes.
    MemUsedBytes,
    /// Device memory installed, bytes (slow period: it does not change).
    MemTotalBytes,
    /// GPU die temperature, °C.
    TempC,
    /// Power draw, mW: the instantaneous field value where the driver has it,
    /// else `nvmlDeviceGetPowerUsage` (a 1-s average on Ampere and newer).
    PowerMw,
    /// Enforced power limit, mW (slow period).
    PowerLimitMw,
    /// Energy consumed since the driver loaded, mJ.
    EnergyMj,
    /// SM clock, MHz.
    ClockSmMhz,
    /// Graphics clock, MHz.
    ClockGraphicsMhz,
    /// Memory clock, MHz.
    ClockMemMhz,
    /// Fan speed (highest intended speed over the device's fans), % (slow
    /// period: the call has been measured above 100 µs).
    FanPct,
    /// PCIe receive throughput, KB/s (slow period; averaged over it where
    /// the byte-counter fields exist).
    PcieRxKbps,
    /// PCIe transmit throughput, KB/s (slow period).
    PcieTxKbps,
    /// Video encoder utilisation, %.
    UtilEncPct,
    /// Video decoder utilisation, %.
    UtilDecPct,
    /// Performance state, 0 (P0, fastest) to 15.
    Pstate,
    /// Throttle / clock-event reasons bitmask (`nvmlClocksThrottleReason*`;
    /// slow period).
    ThrottleReasons,
}

impl Metric {
    /// Number of metrics.
    pub const COUNT: usize = 18;

    /// Every metric, in publishing order.
    pub const ALL: [Metric; Metric::COUNT] = [
        Metric::UtilGpuPct,
        Metric::UtilMemPct,
        Metric::MemUsedBytes,
        Metric::MemTotalBytes,
        Metric::TempC,
        Metric::PowerMw,
        Metric::PowerLimitMw,
        Metric::EnergyMj,
        Metric::ClockSmMhz,
        Metric::ClockGraphicsMhz,
        Metric::ClockMemMhz,
        Metric::FanPct,
        Metric::PcieRxKbps,
        Metric::PcieTxKbps,
        Metric::UtilEncPct,
        Metric::UtilDecPct,
        Metric::Pstate,
        Metric::ThrottleReasons,
    ];

    /// Position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The last segment of the event name, unit included.
    pub fn name(self) -> &'static str {
        match self {
            Metric::UtilGpuPct => "util_gpu_pct",
            Metric::UtilMemPct => "util_mem_pct",
            Metric::MemUsedBytes => "mem_used_bytes",
            Metric::MemTotalBytes => "mem_total_bytes",
            Metric::TempC => "temp_c",
            Metric::PowerMw => "power_mw",
            Metric::PowerLimitMw => "power_limit_mw",
            Metric::EnergyMj => "energy_mj",
            Metric::ClockSmMhz => "clock_sm_mhz",
            Metric::ClockGraphicsMhz => "clock_graphics_mhz",
            Metric::ClockMemMhz => "clock_mem_mhz",
            Metric::FanPct => "fan_pct",
            Metric::PcieRxKbps => "pcie_rx_kbps",
            Metric::PcieTxKbps => "pcie_tx_kbps",
            Metric::UtilEncPct => "util_enc_pct",
            Metric::UtilDecPct => "util_dec_pct",
            Metric::Pstate => "pstate",
            Metric::ThrottleReasons => "throttle_reasons",
        }
    }

    /// The unit, for display.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::UtilGpuPct
            | Metric::UtilMemPct
            | Metric::FanPct
            | Metric::UtilEncPct
            | Metric::UtilDecPct => "%",
            Metric::MemUsedBytes | Metric::MemTotalBytes => "bytes",
            Metric::TempC => "°C",
            Metric::PowerMw | Metric::PowerLimitMw => "mW",
            Metric::EnergyMj => "mJ",
            Metric::ClockSmMhz | Metric::ClockGraphicsMhz | Metric::ClockMemMhz => "MHz",
            Metric::PcieRxKbps | Metric::PcieTxKbps => "KB/s",
            Metric::Pstate => "P-state",
            Metric::ThrottleReasons => "bitmask",
        }
    }

    /// Read on the slow period ([`SamplerConfig::slow_interval`]) rather than
    /// every pass: slow-changing or slow-to-read metrics.
    pub fn is_slow(self) -> bool {
        matches!(
            self,
            Metric::MemTotalBytes
                | Metric::PowerLimitMw
                | Metric::FanPct
                | Metric::PcieRxKbps
                | Metric::PcieTxKbps
                | Metric::ThrottleReasons
        )
    }

    /// Counts, codes and masks: converted to [`Value::U64`] rather than
    /// [`Value::F64`].
    pub fn is_integral(self) -> bool {
        matches!(
            self,
            Metric::MemUsedBytes
                | Metric::MemTotalBytes
                | Metric::EnergyMj
                | Metric::Pstate
                | Metric::ThrottleReasons
        )
    }

    /// The event name for device `device`: `gpu:<device>:<name>`.
    ///
    /// ```
    /// use ringfold::gpu::Metric;
    /// assert_eq!(Metric::TempC.event_name(1), "gpu:1:temp_c");
    /// ```
    pub fn event_name(self, device: u32) -> String {
        format!("gpu:{device}:{}", self.name())
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One reading, as published. Payload types implement `From<GpuReading>`;
/// [`Value`] does.
///
/// ```
/// use ringfold::gpu::{GpuReading, Metric};
/// use ringfold::Value;
/// use std::time::Instant;
/// let r = GpuReading::new(0, Metric::PowerMw, 312_500.0, Instant::now());
/// assert_eq!(Value::from(r), Value::F64(312_500.0));
/// let r = GpuReading::new(0, Metric::MemUsedBytes, 4096.0, r.at);
/// assert_eq!(Value::from(r), Value::U64(4096));
/// ```
///
/// `#[non_exhaustive]`: fields may be added; read the fields, build one
/// with [`GpuReading::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GpuReading {
    /// NVML device index.
    pub device: u32,
    /// What was read.
    pub metric: Metric,
    /// The reading, in the metric's unit. Always finite: failed readings
    /// are never published.
    pub value: f64,
    /// When the pass that took it started.
    pub at: Instant,
}

impl GpuReading {
    /// A reading of `metric` on `device`, taken in the pass started `at`.
    pub fn new(device: u32, metric: Metric, value: f64, at: Instant) -> Self {
        GpuReading {
            device,
            metric,
            value,
            at,
        }
    }
}

impl From<GpuReading> for Value {
    fn from(r: GpuReading) -> Value {
        if r.metric.is_integral() && r.value >= 0.0 && r.value.fract() == 0.0 && r.value < 9.0e15 {
            Value::U64(r.value as u64)
        } else {
            Value::F64(r.value)
        }
    }
}

impl Sample for GpuReading {
    fn as_f64(&self) -> Option<f64> {
        Some(self.value)
    }
}

/// Why one reading could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The device does not support this metric: skipped from then on.
    NotSupported,
    /// This reading failed (or has no value yet); it is not published, and
    /// is counted in [`GpuStats::failed`].
    Failed,
}

/// A device-level failure (lost, unreachable, driver error): the device is
/// counted in [`GpuStats::device_errors`] and retried with back-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

/// Where readings come from: NVML (`NvmlSource`, with the `gpu` feature)
/// or a script ([`ScriptedSource`]).
///
/// Implementations may be slow in places; the sampler calls them on its
/// own thread only. A panic inside a source is caught and counted as a
/// device error.
pub trait GpuSource {
    /// How many devices to sample (indices `0..n`). Called once, at start.
    fn device_count(&mut self) -> Result<u32, DeviceError>;

    /// Reads `metrics` of `device`, reporting each through `out` (a metric
    /// left unreported counts as a failed reading). `pass` is the sampler's
    /// pass number, starting at 0. Returning `Err` marks the whole device
    /// as failed for this pass.
    fn sample(
        &mut self,
        pass: u64,
        device: u32,
        metrics: &[Metric],
        out: &mut dyn FnMut(Metric, Result<f64, ReadError>),
    ) -> Result<(), DeviceError>;
}

impl<S: GpuSource + ?Sized> GpuSource for Box<S> {
    fn device_count(&mut self) -> Result<u32, DeviceError> {
        (**self).device_count()
    }
    fn sample(
        &mut self,
        pass: u64,
        device: u32,
        metrics: &[Metric],
        out: &mut dyn FnMut(Metric, Result<f64, ReadError>),
    ) -> Result<(), DeviceError> {
        (**self).sample(pass, device, metrics, out)
    }
}

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

/// Errors starting or stopping a sampler.
#[derive(Debug)]
#[non_exhaustive]
pub enum GpuError {
    /// The NVML library could not be loaded.
    NvmlNotFound {
        /// The library path that was tried.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// NVML loaded but failed (driver not loaded, no permission, ...).
    Nvml(String),
    /// The crate was built without the `gpu` feature, so there is no NVML
    /// source ([`GpuSampler::start_with_source`] still works).
    FeatureDisabled,
    /// The source reports no devices.
    NoDevices,
    /// The source reports more than [`MAX_DEVICES`] devices; nothing was
    /// allocated or interned.
    TooManyDevices {
        /// The count the source reported.
        reported: u32,
        /// [`MAX_DEVICES`].
        max: u32,
    },
    /// The source could not list its devices.
    Source(DeviceError),
    /// The engine refused a producer or a name (e.g. it is shut down).
    Engine(crate::Error),
    /// The sampler thread could not be spawned.
    Spawn(std::io::Error),
    /// [`GpuSampler::stop_timeout`]: the source call under way did not
    /// return in time. The thread was detached; it ends, publishing nothing
    /// more, as soon as that call returns.
    StopTimeout {
        /// The timeout that passed.
        timeout: Duration,
        /// The counters when the wait gave up (`finished` is false).
        stats: GpuStats,
    },
    /// [`SamplerConfig::start_timeout`] passed before the source opened and
    /// reported its device count (a wedged driver call). Nothing was
    /// interned or registered; the sampler thread was detached and ends,
    /// dropping the source, as soon as that call returns.
    StartTimeout {
        /// The timeout that passed.
        timeout: Duration,
    },
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NvmlNotFound { path, detail } => write!(
                f,
                "NVML ({DEFAULT_NVML_LIB}) was not found (tried {}: {detail}); install the NVIDIA driver, or point ringfold at the library with SamplerConfig::lib_path or the {NVML_PATH_ENV} environment variable",
                path.display()
            ),
            GpuError::Nvml(e) => write!(f, "NVML failed to initialise: {e}"),
            GpuError::FeatureDisabled => f.write_str(
                "ringfold was built without the `gpu` feature: no NVML source (enable the feature)",
            ),
            GpuError::NoDevices => f.write_str("no GPU devices found"),
            GpuError::TooManyDevices { reported, max } => write!(
                f,
                "the GPU source reports {reported} devices, more than the {max} a sampler supports (ringfold::gpu::MAX_DEVICES)"
            ),
            GpuError::Source(e) => write!(f, "cannot list GPU devices: {e}"),
            GpuError::Engine(e) => write!(f, "engine refused the GPU sampler: {e}"),
            GpuError::Spawn(e) => write!(f, "cannot spawn the GPU sampler thread: {e}"),
            GpuError::StopTimeout { timeout, .. } => write!(
                f,
                "the GPU sampler did not stop within {timeout:?} (a source call is blocked); its thread was detached"
            ),
            GpuError::StartTimeout { timeout } => write!(
                f,
                "the GPU source did not report its devices within {timeout:?} (a driver call is blocked); raise SamplerConfig::start_timeout if it is only slow"
            ),
        }
    }
}

impl std::error::Error for GpuError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GpuError::Source(e) => Some(e),
            GpuError::Engine(e) => Some(e),
            GpuError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::Error> for GpuError {
    fn from(e: crate::Error) -> Self {
        GpuError::Engine(e)
    }
}
