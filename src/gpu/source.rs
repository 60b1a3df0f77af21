//! The trait between the sampler and NVML ([`GpuSource`]) and how a source
//! reports failures ([`ReadError`] per reading, [`DeviceError`] per device).

use std::fmt;

use super::Metric;
#[cfg(doc)]
use super::{GpuStats, ScriptedSource};

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
