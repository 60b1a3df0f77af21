//! Errors starting or stopping a sampler ([`GpuError`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{DeviceError, GpuStats, DEFAULT_NVML_LIB, NVML_PATH_ENV};
#[cfg(doc)]
use super::{GpuSampler, SamplerConfig, MAX_DEVICES};

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
