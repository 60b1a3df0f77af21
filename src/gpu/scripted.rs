//! A scripted [`GpuSource`]: a test double for tests, examples and
//! measurements. It reads no hardware.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DeviceError, GpuSource, Metric, ReadError};

/// What one scripted read of a metric returns.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Step {
    /// A reading.
    Value(f64),
    /// A failed reading ([`ReadError::Failed`]).
    Fail,
    /// [`ReadError::NotSupported`].
    Unsupported,
    /// Nothing is reported for the metric (a missing reading).
    Missing,
}

/// **A test double, not a GPU.** A [`GpuSource`] that plays a script and
/// touches no hardware, driver or NVML: per device and metric, a sequence of
/// [`Step`]s consumed one per read (the last one repeats); device errors and
/// panics at given passes. Unscripted metrics read a constant (default 1.0).
///
/// It exists so that everything the sampler does on top of its source
/// (scheduling, slow periods, naming, unsupported metrics, failed readings,
/// back-off, publishing) can be tested and measured on machines without a
/// GPU, deterministically (every step is counted in passes, not time), and
/// so examples and demos can run anywhere. Its readings mean nothing; do not
/// use it to report on real devices. It is compiled with and without the
/// `gpu` feature.
///
/// What the sampler asked for is recorded in a [`ScriptLog`].
///
/// ```
/// use ringfold::gpu::{GpuSource, Metric, ScriptedSource, Step};
/// let mut src = ScriptedSource::new(2)
///     .values(0, Metric::TempC, [40.0, 41.0])
///     .script(1, Metric::FanPct, [Step::Unsupported])
///     .device_error(1, 3..5);
/// let log = src.log();
/// assert_eq!(src.device_count().unwrap(), 2);
/// let mut got = Vec::new();
/// src.sample(0, 0, &[Metric::TempC], &mut |m, r| got.push((m, r))).unwrap();
/// src.sample(1, 0, &[Metric::TempC], &mut |m, r| got.push((m, r))).unwrap();
/// src.sample(2, 0, &[Metric::TempC], &mut |m, r| got.push((m, r))).unwrap();
/// assert_eq!(got.iter().map(|(_, r)| r.unwrap()).collect::<Vec<_>>(), [40.0, 41.0, 41.0]);
/// assert!(src.sample(3, 1, &[Metric::TempC], &mut |_, _| {}).is_err());
/// assert_eq!(log.calls(0), [0, 1, 2]);
/// assert_eq!(log.requests(0, Metric::TempC), 3);
/// ```
pub struct ScriptedSource {
    devices: u32,
    count_error: Option<String>,
    count_wedge: Option<Receiver<()>>,
    default: Step,
    scripts: HashMap<(u32, Metric), Vec<Step>>,
    device_errors: Vec<(u32, Range<u64>)>,
    panics: Vec<(u32, u64)>,
    log: ScriptLog,
}

impl ScriptedSource {
    /// `devices` devices whose metrics all read 1.0 until scripted.
    pub fn new(devices: u32) -> Self {
        ScriptedSource {
            devices,
            count_error: None,
            count_wedge: None,
            default: Step::Value(1.0),
            scripts: HashMap::new(),
            device_errors: Vec::new(),
            panics: Vec::new(),
            log: ScriptLog::default(),
        }
    }

    /// What unscripted metrics return (default `Step::Value(1.0)`).
    pub fn default_step(mut self, step: Step) -> Self {
        self.default = step;
        self
    }

    /// Scripts `metric` of `device`: one step per read, the last repeats.
    pub fn script(
        mut self,
        device: u32,
        metric: Metric,
        steps: impl IntoIterator<Item = Step>,
    ) -> Self {
        self.scripts
            .insert((device, metric), steps.into_iter().collect());
        self
    }

    /// Shorthand for [`ScriptedSource::script`] with only values.
    pub fn values(
        self,
        device: u32,
        metric: Metric,
        values: impl IntoIterator<Item = f64>,
    ) -> Self {
        self.script(device, metric, values.into_iter().map(Step::Value))
    }

    /// `device`'s sample calls during the passes in `passes` fail with a
    /// device error.
    pub fn device_error(mut self, device: u32, passes: Range<u64>) -> Self {
        self.device_errors.push((device, passes));
        self
    }

    /// `device`'s sample call at pass `pass` panics.
    pub fn panic_at(mut self, device: u32, pass: u64) -> Self {
        self.panics.push((device, pass));
        self
    }

    /// `device_count` fails with this message.
    pub fn fail_device_count(mut self, message: &str) -> Self {
        self.count_error = Some(message.to_owned());
        self
    }

    /// The first `device_count` call blocks, like a wedged driver, until
    /// `release` receives a message or its sender is dropped; later calls
    /// do not.
    ///
    /// ```
    /// use ringfold::gpu::{GpuSource, ScriptedSource};
    /// let (release, wedge) = std::sync::mpsc::channel();
    /// let mut src = ScriptedSource::new(2).wedge_device_count(wedge);
    /// release.send(()).unwrap(); // let go before the call: it returns at once
    /// assert_eq!(src.device_count().unwrap(), 2);
    /// ```
    pub fn wedge_device_count(mut self, release: Receiver<()>) -> Self {
        self.count_wedge = Some(release);
        self
    }

    /// A handle on what the sampler asked for (shared; read it any time).
    pub fn log(&self) -> ScriptLog {
        self.log.clone()
    }
}

impl GpuSource for ScriptedSource {
    fn device_count(&mut self) -> Result<u32, DeviceError> {
        if let Some(release) = self.count_wedge.take() {
            // Either a message or a dropped sender lets go.
            let _ = release.recv();
        }
        match &self.count_error {
            Some(e) => Err(DeviceError(e.clone())),
            None => Ok(self.devices),
        }
    }

    fn sample(
        &mut self,
        pass: u64,
        device: u32,
        metrics: &[Metric],
        out: &mut dyn FnMut(Metric, Result<f64, ReadError>),
    ) -> Result<(), DeviceError> {
        let mut log = self.log.lock();
        log.calls.push((pass, device));
        if device >= self.devices {
            return Err(DeviceError(format!("no device {device}")));
        }
        if self.panics.contains(&(device, pass)) {
            drop(log);
            panic!("scripted panic: device {device}, pass {pass}");
        }
        if self
            .device_errors
            .iter()
            .any(|(d, r)| *d == device && r.contains(&pass))
        {
            return Err(DeviceError(format!(
                "scripted device error: device {device}, pass {pass}"
            )));
        }
        for &metric in metrics {
            let n = log.requests.entry((device, metric)).or_default();
            let i = *n as usize;
            *n += 1;
            let step = match self.scripts.get(&(device, metric)) {
                Some(steps) if !steps.is_empty() => steps[i.min(steps.len() - 1)],
                _ => self.default,
            };
            match step {
                Step::Value(v) => out(metric, Ok(v)),
                Step::Fail => out(metric, Err(ReadError::Failed)),
                Step::Unsupported => out(metric, Err(ReadError::NotSupported)),
                Step::Missing => {}
            }
        }
        Ok(())
    }
}

/// What a [`ScriptedSource`] was asked (cheap to clone; shared).
#[derive(Clone, Default)]
pub struct ScriptLog(Arc<Mutex<LogInner>>);

#[derive(Default)]
struct LogInner {
    calls: Vec<(u64, u32)>,
    requests: HashMap<(u32, Metric), u64>,
}

impl ScriptLog {
    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The passes at which `device` was sampled (failed calls included).
    pub fn calls(&self, device: u32) -> Vec<u64> {
        self.lock()
            .calls
            .iter()
            .filter(|(_, d)| *d == device)
            .map(|(p, _)| *p)
            .collect()
    }

    /// How many times `metric` of `device` was requested.
    pub fn requests(&self, device: u32, metric: Metric) -> u64 {
        self.lock()
            .requests
            .get(&(device, metric))
            .copied()
            .unwrap_or(0)
    }
}

impl std::fmt::Debug for ScriptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("ScriptLog")
            .field("calls", &inner.calls.len())
            .finish()
    }
}

impl std::fmt::Debug for ScriptedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedSource")
            .field("devices", &self.devices)
            .field("scripts", &self.scripts.len())
            .finish()
    }
}
