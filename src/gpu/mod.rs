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

//!
//! The module's parts: [`Metric`] and [`GpuReading`] (what is read and
//! published, `metric.rs`), the [`GpuSource`] trait and its errors
//! (`source.rs`), [`SamplerConfig`] and its defaults (`config.rs`),
//! [`GpuSampler`] itself (`sampler/`), [`GpuError`] (`error.rs`), and the
//! two sources: [`ScriptedSource`] (`scripted.rs`) and `NvmlSource`
//! (`nvml.rs`, feature `gpu`).

mod config;
mod error;
mod metric;
#[cfg(feature = "gpu")]
mod nvml;
mod sampler;
mod scripted;
mod source;

pub use config::{
    SamplerConfig, DEFAULT_NVML_LIB, DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, MAX_DEVICES,
    NVML_PATH_ENV,
};
pub use error::GpuError;
pub use metric::{GpuReading, Metric};
#[cfg(feature = "gpu")]
pub use nvml::NvmlSource;
pub use sampler::{GpuSampler, GpuStats};
pub use scripted::{ScriptLog, ScriptedSource, Step};
pub use source::{DeviceError, GpuSource, ReadError};
