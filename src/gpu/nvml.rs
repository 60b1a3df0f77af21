//! The NVML-backed [`GpuSource`] (cargo feature `gpu`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, PcieUtilCounter, PerformanceState, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_PCIE_COUNT_RX_BYTES, NVML_FI_DEV_PCIE_COUNT_TX_BYTES, NVML_FI_DEV_POWER_INSTANT,
    NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
};
use nvml_wrapper::{Device, Nvml};

use super::{DeviceError, GpuError, GpuSource, Metric, ReadError, DEFAULT_NVML_LIB, NVML_PATH_ENV};

/// How a field-capable metric is read on one device, settled on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Untried,
    Field,
    Call,
}

#[derive(Debug)]
struct DevState {
    power: Via,
    energy: Via,
    pcie: Via,
    /// Previous PCIe byte counters (rx, tx) and when they were read.
    last_pcie: Option<(u64, u64, Instant)>,
    fans: Option<u32>,
}

impl Default for DevState {
    fn default() -> Self {
        DevState {
            power: Via::Untried,
            energy: Via::Untried,
            pcie: Via::Untried,
            last_pcie: None,
            fans: None,
        }
    }
}

/// Reads GPUs through NVML (`nvml-wrapper`, loaded at run time).
///
/// Batched field values (`nvmlDeviceGetFieldValues`) are used where they
/// cover a metric: instantaneous power, total energy and the PCIe byte
/// counters (rates are computed from their deltas), each falling back to
/// its dedicated call when the driver lacks the field. The rest are one
/// call each; see the metric table in the README.
///
/// ```
/// use ringfold::gpu::NvmlSource;
/// match NvmlSource::open(None) {
///     Ok(_) => println!("NVML loaded"),
///     Err(e) => println!("{e}"), // e.g. NVML (libnvidia-ml.so.1) was not found ...
/// }
/// ```
pub struct NvmlSource {
    nvml: Nvml,
    devices: Vec<DevState>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl NvmlSource {
    /// Loads and initialises NVML from `lib_path`, else the library named
    /// by `RINGFOLD_NVML_PATH`, else `libnvidia-ml.so.1`.
    pub fn open(lib_path: Option<&Path>) -> Result<NvmlSource, GpuError> {
        let path: PathBuf = match lib_path {
            Some(p) => p.to_owned(),
            None => std::env::var_os(NVML_PATH_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NVML_LIB)),
        };
        let nvml = Nvml::builder()
            .lib_path(path.as_os_str())
            .init()
            .map_err(|e| match e {
                NvmlError::LibloadingError(_)
                | NvmlError::LibraryNotFound
                | NvmlError::FailedToLoadSymbol(_) => GpuError::NvmlNotFound {
                    path: path.clone(),
                    detail: e.to_string(),
                },
                other => GpuError::Nvml(other.to_string()),
            })?;
        Ok(NvmlSource {
            nvml,
            devices: Vec::new(),
        })
    }
}

/// Per-reading NVML errors: those that mean the device itself is gone end
/// the device's pass; the rest are one failed or unsupported reading.
fn classify(e: NvmlError) -> Result<ReadError, DeviceError> {
    match e {
        NvmlError::NotSupported
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::NoPermission
        | NvmlError::InvalidArg => Ok(ReadError::NotSupported),
        NvmlError::GpuLost
        | NvmlError::ResetRequired
        | NvmlError::Uninitialized
        | NvmlError::DriverNotLoaded
        | NvmlError::NotFound => Err(DeviceError(e.to_string())),
        _ => Ok(ReadError::Failed),
    }
}

type Out<'a> = &'a mut dyn FnMut(Metric, Result<f64, ReadError>);

fn report<V: Into<f64>>(
    out: Out<'_>,
    m: Metric,
    r: Result<V, NvmlError>,
) -> Result<(), DeviceError> {
    match r {
        Ok(v) => out(m, Ok(v.into())),
        Err(e) => out(m, Err(classify(e)?)),
    }
    Ok(())
}

fn pstate_number(p: PerformanceState) -> Option<f64> {
    use PerformanceState::*;
    let n = match p {
        Zero => 0,
        One => 1,
        Two => 2,
        Three => 3,
        Four => 4,
        Five => 5,
        Six => 6,
        Seven => 7,
        Eight => 8,
        Nine => 9,
        Ten => 10,
        Eleven => 11,
        Twelve => 12,
        Thirteen => 13,
        Fourteen => 14,
        Fifteen => 15,
        Unknown => return None,
    };
    Some(f64::from(n))
}

fn sample_f64(v: &SampleValue) -> f64 {
    match *v {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => f64::from(v),
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    }
}

fn sample_u64(v: &SampleValue) -> Option<u64> {
    match *v {
        SampleValue::U32(v) => Some(u64::from(v)),
        SampleValue::U64(v) => Some(v),
        SampleValue::I64(v) => u64::try_from(v).ok(),
        SampleValue::F64(_) => None,
    }
}

impl GpuSource for NvmlSource {
    fn device_count(&mut self) -> Result<u32, DeviceError> {
        let n = self
            .nvml
            .device_count()
            .map_err(|e| DeviceError(e.to_string()))?;
        self.devices = (0..n).map(|_| DevState::default()).collect();
        Ok(n)
    }

    fn sample(
        &mut self,
        _pass: u64,
        index: u32,
        metrics: &[Metric],
        out: Out<'_>,
    ) -> Result<(), DeviceError> {
        let dev = self
            .nvml
            .device_by_index(index)
            .map_err(|e| DeviceError(e.to_string()))?;
        let Some(state) = self.devices.get_mut(index as usize) else {
            return Err(DeviceError(format!("no device {index}")));
        };
        let wants = |m: Metric| metrics.contains(&m);
        let now = Instant::now();

        // 1. One batched field-values query for what it covers.
        let mut ids: Vec<FieldId> = Vec::with_capacity(4);
        if wants(Metric::PowerMw) && state.power != Via::Call {
            ids.push(FieldId(NVML_FI_DEV_POWER_INSTANT));
        }
        if wants(Metric::EnergyMj) && state.energy != Via::Call {
            ids.push(FieldId(NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION));
        }
        let pcie = wants(Metric::PcieRxKbps) || wants(Metric::PcieTxKbps);
        if pcie && state.pcie != Via::Call {
            ids.push(FieldId(NVML_FI_DEV_PCIE_COUNT_RX_BYTES));
            ids.push(FieldId(NVML_FI_DEV_PCIE_COUNT_TX_BYTES));
        }
        let (mut power, mut energy, mut rx, mut tx) = (None, None, None, None);
        if !ids.is_empty() {
            match dev.field_values_for(&ids) {
                Ok(values) => {
                    for v in values.into_iter().flatten() {
                        let Ok(value) = v.value else { continue };
                        match v.field.0 {
                            NVML_FI_DEV_POWER_INSTANT => power = Some(sample_f64(&value)),
                            NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION => energy = sample_u64(&value),
                            NVML_FI_DEV_PCIE_COUNT_RX_BYTES => rx = sample_u64(&value),
                            NVML_FI_DEV_PCIE_COUNT_TX_BYTES => tx = sample_u64(&value),
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    // The query itself failed: a lost device ends the pass,
                    // anything else falls back to the dedicated calls.
                    classify(e)?;
                }
            }
        }
        let settle = |via: &mut Via, got: bool| {
            if *via == Via::Untried {
                *via = if got { Via::Field } else { Via::Call };
            }
        };

        for &m in metrics {
            match m {
                Metric::UtilGpuPct
                | Metric::UtilMemPct
                | Metric::MemUsedBytes
                | Metric::MemTotalBytes => {
                    // Read together below.
                }
                Metric::TempC => report(out, m, dev.temperature(TemperatureSensor::Gpu))?,
                Metric::PowerMw => {
                    if state.power != Via::Call {
                        settle(&mut state.power, power.is_some());
                    }
                    match (state.power, power) {
                        (Via::Field, Some(p)) => out(m, Ok(p)),
                        (Via::Field, None) => out(m, Err(ReadError::Failed)),
                        _ => report(out, m, dev.power_usage())?,
                    }
                }
                Metric::PowerLimitMw => report(out, m, dev.enforced_power_limit())?,
                Metric::EnergyMj => {
                    if state.energy != Via::Call {
                        settle(&mut state.energy, energy.is_some());
                    }
                    match (state.energy, energy) {
                        (Via::Field, Some(e)) => out(m, Ok(e as f64)),
                        (Via::Field, None) => out(m, Err(ReadError::Failed)),
                        _ => report(out, m, dev.total_energy_consumption().map(|e| e as f64))?,
                    }
                }
                Metric::ClockSmMhz => report(out, m, dev.clock_info(Clock::SM))?,
                Metric::ClockGraphicsMhz => report(out, m, dev.clock_info(Clock::Graphics))?,
                Metric::ClockMemMhz => report(out, m, dev.clock_info(Clock::Memory))?,
                Metric::FanPct => fan(&dev, state, out)?,
                Metric::PcieRxKbps | Metric::PcieTxKbps => {}
                Metric::UtilEncPct => {
                    report(out, m, dev.encoder_utilization().map(|u| u.utilization))?
                }
                Metric::UtilDecPct => {
                    report(out, m, dev.decoder_utilization().map(|u| u.utilization))?
                }
                Metric::Pstate => match dev.performance_state() {
                    Ok(p) => out(m, pstate_number(p).ok_or(ReadError::Failed)),
                    Err(e) => out(m, Err(classify(e)?)),
                },
                Metric::ThrottleReasons => report(
                    out,
                    m,
                    dev.current_throttle_reasons()
                        .map(|r: ThrottleReasons| r.bits() as f64),
                )?,
            }
        }

        if wants(Metric::UtilGpuPct) || wants(Metric::UtilMemPct) {
            match dev.utilization_rates() {
                Ok(u) => {
                    out(Metric::UtilGpuPct, Ok(f64::from(u.gpu)));
                    out(Metric::UtilMemPct, Ok(f64::from(u.memory)));
                }
                Err(e) => {
                    let e = classify(e)?;
                    out(Metric::UtilGpuPct, Err(e));
                    out(Metric::UtilMemPct, Err(e));
                }
            }
        }
        if wants(Metric::MemUsedBytes) || wants(Metric::MemTotalBytes) {
            match dev.memory_info() {
                Ok(mem) => {
                    out(Metric::MemUsedBytes, Ok(mem.used as f64));
                    out(Metric::MemTotalBytes, Ok(mem.total as f64));
                }
                Err(e) => {
                    let e = classify(e)?;
                    out(Metric::MemUsedBytes, Err(e));
                    out(Metric::MemTotalBytes, Err(e));
                }
            }
        }
        if pcie {
            if state.pcie != Via::Call {
                settle(&mut state.pcie, rx.is_some() && tx.is_some());
            }
            if state.pcie == Via::Field {
                // Rates from the byte counters' deltas: averaged over the
                // slow period, no blocking. The first read has no rate
                // (reported missing, never as 0).
                if let (Some(rx), Some(tx)) = (rx, tx) {
                    if let Some((lrx, ltx, lat)) = state.last_pcie {
                        let secs = now.duration_since(lat).as_secs_f64();
                        if secs > 0.0 && rx >= lrx && tx >= ltx {
                            out(Metric::PcieRxKbps, Ok((rx - lrx) as f64 / 1024.0 / secs));
                            out(Metric::PcieTxKbps, Ok((tx - ltx) as f64 / 1024.0 / secs));
                        }
                    }
                    state.last_pcie = Some((rx, tx, now));
                }
            } else {
                // nvmlDeviceGetPcieThroughput samples for ~20 ms per call.
                report(
                    out,
                    Metric::PcieRxKbps,
                    dev.pcie_throughput(PcieUtilCounter::Receive),
                )?;
                report(
                    out,
                    Metric::PcieTxKbps,
                    dev.pcie_throughput(PcieUtilCounter::Send),
                )?;
            }
        }
        Ok(())
    }
}

/// Highest intended fan speed over the device's fans.
fn fan(dev: &Device<'_>, state: &mut DevState, out: Out<'_>) -> Result<(), DeviceError> {
    let fans = match state.fans {
        Some(n) => n,
        None => match dev.num_fans() {
            Ok(n) => {
                state.fans = Some(n);
                n
            }
            Err(e) => {
                out(Metric::FanPct, Err(classify(e)?));
                return Ok(());
            }
        },
    };
    if fans == 0 {
        out(Metric::FanPct, Err(ReadError::NotSupported));
        return Ok(());
    }
    let mut best: Option<u32> = None;
    let mut err = None;
    for i in 0..fans {
        match dev.fan_speed(i) {
            Ok(s) => best = Some(best.map_or(s, |b| b.max(s))),
            Err(e) => err = Some(classify(e)?),
        }
    }
    match (best, err) {
        (Some(s), _) => out(Metric::FanPct, Ok(f64::from(s))),
        (None, Some(e)) => out(Metric::FanPct, Err(e)),
        (None, None) => out(Metric::FanPct, Err(ReadError::Failed)),
    }
    Ok(())
}
