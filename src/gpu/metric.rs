//! What the sampler reads: the [`Metric`]s (event names, units, periods)
//! and one [`GpuReading`] as it is published.

use std::fmt;
use std::time::Instant;

#[cfg(doc)]
use super::{GpuSource, ReadError, SamplerConfig};
use crate::value::{Sample, Value};

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
