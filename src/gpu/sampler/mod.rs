//! The sampler thread: scheduling, naming, unsupported metrics, back-off.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DeviceError, GpuError, GpuReading, GpuSource, Metric, SamplerConfig, MAX_DEVICES};
use crate::control;
use crate::{Engine, Producer};

mod worker;

use worker::{DeviceState, Schedule, Worker};

/// A snapshot of a sampler's counters ([`GpuSampler::stats`]).
///
/// `#[non_exhaustive]`: counters may be added; read the fields, start from
/// `GpuStats::default()` to build one.
///
/// ```
/// use ringfold::gpu::GpuStats;
/// let s = GpuStats::default();
/// assert_eq!((s.passes, s.finished, s.panicked), (0, false, false));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// engine shut down). False in the stats of a stop that timed out: the
    /// thread was detached while still inside a source call.
    pub finished: bool,
    /// The sampler thread ended by a panic outside the source (source
    /// panics are caught and counted in `device_errors`): a bug in the
    /// sampler, or a panicking `From<GpuReading>` of the payload type. The
    /// panic is contained; the engine is unaffected.
    pub panicked: bool,
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
    panicked: AtomicBool,
}

/// What the sampler thread and its handle share.
#[derive(Default)]
struct Shared {
    counters: Counters,
    /// Asks the thread to end after the pass (source call) under way.
    stop: AtomicBool,
    /// Set (under the lock, then notified) when the thread has ended, so a
    /// stop can wait for it with a timeout: `JoinHandle::join` has none.
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    /// Waits until the thread has ended, at most `timeout`; true if it
    /// has. A timeout too large for an `Instant` waits without bound.
    fn wait_done(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = match deadline {
                None => self.done_cv.wait(done),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    self.done_cv
                        .wait_timeout(done, deadline - now)
                        .map(|(g, _)| g)
                        .map_err(|p| std::sync::PoisonError::new(p.into_inner().0))
                }
            }
            .unwrap_or_else(|p| p.into_inner());
        }
        true
    }
}

/// Marks the thread as ended when dropped: on return and on unwind alike,
/// so a waiting `stop` is always woken.
struct DoneGuard(Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.counters.finished.store(true, Ordering::Release);
        *self.0.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.done_cv.notify_all();
    }
}

/// What the sampler thread runs with once the caller has checked the count
/// and interned the names.
struct Start<T: Send + 'static> {
    producer: Producer<T>,
    devices: Vec<DeviceState>,
    config: SamplerConfig,
}

/// On the sampler thread: opens the source and counts its devices (panics
/// caught), and sends the count, or why there is none, to the caller. The
/// source, if the caller can still use it.
fn discover<S: GpuSource>(
    open: impl FnOnce() -> Result<S, GpuError>,
    found: &SyncSender<Result<u32, GpuError>>,
) -> Option<S> {
    let panicked = || DeviceError("source panicked".into());
    let mut source = match catch_unwind(AssertUnwindSafe(open)) {
        Ok(Ok(source)) => source,
        Ok(Err(e)) => {
            let _ = found.send(Err(e));
            return None;
        }
        Err(_) => {
            let _ = found.send(Err(GpuError::Source(panicked())));
            return None;
        }
    };
    let n = catch_unwind(AssertUnwindSafe(|| source.device_count()))
        .unwrap_or_else(|_| Err(panicked()))
        .map_err(GpuError::Source);
    let ok = n.is_ok();
    // Fails only if the caller stopped waiting (timed out).
    (found.send(n).is_ok() && ok).then_some(source)
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
/// **Stopping is bounded.** A source call cannot be interrupted, so a
/// wedged driver call would block a join forever. [`GpuSampler::stop`] and
/// `Drop` wait at most [`SamplerConfig::stop_timeout`] (default
/// [`DEFAULT_STOP_TIMEOUT`](super::DEFAULT_STOP_TIMEOUT), 2 s) and
/// [`GpuSampler::stop_timeout`] takes its own bound and returns
/// [`GpuError::StopTimeout`]. On a timeout the thread is *detached*: it
/// has been told to stop and ends as soon as the source call returns,
/// publishing nothing more; until then it keeps the source and one engine
/// producer alive.
///
/// ```
/// use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource, Step};
/// use ringfold::{Engine, Value};
/// use std::time::Duration;
/// let engine = Engine::<Value>::builder().default_rules().build()?;
/// let source = ScriptedSource::new(1)
///     .script(0, Metric::FanPct, [Step::Unsupported])
///     .script(0, Metric::TempC, [Step::Value(50.0), Step::Fail]);
/// let config = SamplerConfig::default().interval(Duration::ZERO).max_passes(4).log(false);
/// let stats = GpuSampler::start_with_source(&engine, source, config)?.join();
/// assert_eq!(stats.passes, 4);
/// assert_eq!(stats.unsupported, 1);
/// assert_eq!(stats.failed, 3); // temp_c failed on passes 1..4: not published
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GpuSampler {
    shared: Arc<Shared>,
    devices: u32,
    stop_timeout: Duration,
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
    pub fn start<T: From<GpuReading> + Send + Sync + 'static>(
        engine: &Engine<T>,
        config: SamplerConfig,
    ) -> Result<GpuSampler, GpuError> {
        #[cfg(feature = "gpu")]
        {
            // Opened on the sampler thread: initialising NVML on a wedged
            // driver is bounded by `start_timeout` like `device_count`.
            let path = config.lib_path.clone();
            Self::launch(
                engine,
                move || super::NvmlSource::open(path.as_deref()),
                config,
            )
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
    ///
    /// A source reporting more than [`MAX_DEVICES`] devices is refused with
    /// [`GpuError::TooManyDevices`] before any name is interned (so a
    /// misbehaving source cannot fill the engine's name table), as is one
    /// reporting none ([`GpuError::NoDevices`]).
    ///
    /// **Starting is bounded.** The source's `device_count` runs on the
    /// sampler thread, and this call waits for it at most
    /// [`SamplerConfig::start_timeout`] (`Duration::MAX`: without limit).
    /// A source wedged there gives [`GpuError::StartTimeout`]; the thread is
    /// detached, interns and publishes nothing, and ends (dropping the
    /// source) as soon as the call returns.
    ///
    /// ```
    /// use ringfold::gpu::{GpuError, GpuSampler, SamplerConfig, ScriptedSource, MAX_DEVICES};
    /// use ringfold::{Engine, Value};
    /// let engine = Engine::<Value>::builder().default_rules().build()?;
    /// let err = GpuSampler::start_with_source(&engine, ScriptedSource::new(u32::MAX), SamplerConfig::default())
    ///     .unwrap_err();
    /// assert!(matches!(err, GpuError::TooManyDevices { reported: u32::MAX, max: MAX_DEVICES }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start_with_source<T, S>(
        engine: &Engine<T>,
        source: S,
        config: SamplerConfig,
    ) -> Result<GpuSampler, GpuError>
    where
        T: From<GpuReading> + Send + Sync + 'static,
        S: GpuSource + Send + 'static,
    {
        Self::launch(engine, move || Ok(source), config)
    }

    /// Spawns the sampler thread, which opens the source and counts its
    /// devices, waits (bounded) for the count, then hands the thread what
    /// it needs to run. Discovery runs there, not here, because a source
    /// call cannot be interrupted: only a wait on another thread can give
    /// up.
    fn launch<T, S>(
        engine: &Engine<T>,
        open: impl FnOnce() -> Result<S, GpuError> + Send + 'static,
        config: SamplerConfig,
    ) -> Result<GpuSampler, GpuError>
    where
        T: From<GpuReading> + Send + Sync + 'static,
        S: GpuSource + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        // One slot each way, so neither side's send ever blocks: the count
        // (or why there is none), then what the thread runs with (or
        // nothing: the sender dropped means "give up").
        let (found_tx, found_rx) = mpsc::sync_channel::<Result<u32, GpuError>>(1);
        let (go_tx, go_rx) = mpsc::sync_channel::<Start<T>>(1);
        let guard = DoneGuard(shared.clone());
        let thread = std::thread::Builder::new()
            .name("ringfold-gpu".into())
            .spawn(move || {
                let guard = guard;
                let Some(source) = discover(open, &found_tx) else {
                    return;
                };
                // The caller gave up (timeout, bad count, engine error).
                let Ok(start) = go_rx.recv() else {
                    return;
                };
                let worker = Worker {
                    source,
                    producer: start.producer,
                    devices: start.devices,
                    schedule: Schedule::new(&start.config),
                    config: start.config,
                    shared: guard.0.clone(),
                    buf: Vec::with_capacity(Metric::COUNT),
                    fast: Vec::with_capacity(Metric::COUNT),
                };
                // Source panics are caught per call; this catches the rest
                // (the payload's `From<GpuReading>`, a sampler bug) so it is
                // reported in the stats rather than lost with the thread.
                if catch_unwind(AssertUnwindSafe(|| worker.run())).is_err() {
                    guard.0.counters.panicked.store(true, Ordering::Release);
                }
            })
            .map_err(GpuError::Spawn)?;
        let timeout = config.start_timeout;
        let found = match control::deadline_after(timeout) {
            Some(_) => found_rx.recv_timeout(timeout),
            None => found_rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let n = match found {
            Ok(found) => found?,
            // Detached: `go_tx` is dropped on return, so the thread ends
            // when the source call does.
            Err(RecvTimeoutError::Timeout) => return Err(GpuError::StartTimeout { timeout }),
            // The thread ended without a word: only a panic outside the
            // caught calls could do that.
            Err(RecvTimeoutError::Disconnected) => {
                return Err(GpuError::Source(DeviceError(
                    "the sampler thread ended before counting devices".into(),
                )))
            }
        };
        if n == 0 {
            return Err(GpuError::NoDevices);
        }
        // Checked before anything is allocated or interned: a bogus count
        // must neither abort on allocation nor use up the engine's names.
        if n > MAX_DEVICES {
            return Err(GpuError::TooManyDevices {
                reported: n,
                max: MAX_DEVICES,
            });
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
        let stop_timeout = config.stop_timeout;
        // Cannot fail: the thread waits on `go_rx` with a free slot.
        let _ = go_tx.send(Start {
            producer,
            devices,
            config,
        });
        Ok(GpuSampler {
            shared,
            devices: n,
            stop_timeout,
            thread: Some(thread),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GpuStats {
        let c = &self.shared.counters;
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
            panicked: c.panicked.load(Ordering::Acquire),
        }
    }

    /// True once the sampler thread has ended.
    pub fn is_finished(&self) -> bool {
        self.shared.counters.finished.load(Ordering::Acquire)
    }

    /// Stops the thread (it finishes the source call under way) and returns
    /// the final counters, waiting at most [`SamplerConfig::stop_timeout`].
    /// If the source call does not return in time the thread is detached
    /// (see [the type's docs](GpuSampler)) and the returned stats have
    /// `finished == false`; use [`GpuSampler::stop_timeout`] to get that
    /// as an error instead. Dropping the sampler does the same.
    pub fn stop(mut self) -> GpuStats {
        let timeout = self.stop_timeout;
        self.halt(true, timeout);
        self.stats()
    }

    /// Stops the thread like [`GpuSampler::stop`], waiting at most
    /// `timeout` (`Duration::MAX`, or any timeout too large to add to
    /// `Instant::now()`, waits without bound). If the source call under
    /// way has not returned by then, the thread is detached and
    /// [`GpuError::StopTimeout`] carries the counters so far.
    ///
    /// ```
    /// use ringfold::gpu::{GpuSampler, SamplerConfig, ScriptedSource};
    /// use ringfold::{Engine, Value};
    /// use std::time::Duration;
    /// let engine = Engine::<Value>::builder().default_rules().build()?;
    /// let sampler = GpuSampler::start_with_source(&engine, ScriptedSource::new(1), SamplerConfig::default())?;
    /// let stats = sampler.stop_timeout(Duration::from_secs(10))?;
    /// assert!(stats.finished && stats.passes <= 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop_timeout(mut self, timeout: Duration) -> Result<GpuStats, GpuError> {
        if self.halt(true, timeout) {
            Ok(self.stats())
        } else {
            Err(GpuError::StopTimeout {
                timeout,
                stats: self.stats(),
            })
        }
    }

    /// Waits for the thread to end by itself ([`SamplerConfig::max_passes`]
    /// reached, or the engine shut down) and returns the final counters.
    /// Without either it waits until the engine shuts down; this wait is
    /// not bounded (a wedged source call blocks it), by design: use
    /// [`GpuSampler::stop_timeout`] for a bounded end.
    pub fn join(mut self) -> GpuStats {
        self.halt(false, Duration::MAX);
        self.stats()
    }

    /// Ends the thread (`stop`: asks it to) and waits at most `timeout`.
    /// True if it ended (and was joined); false if it was detached.
    fn halt(&mut self, stop: bool, timeout: Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return self.is_finished();
        };
        if stop {
            self.shared.stop.store(true, Ordering::Release);
            thread.thread().unpark();
        }
        if self.shared.wait_done(timeout) {
            // Done is signalled by the thread's last act, so this join is
            // immediate. Panics were caught inside the thread.
            let _ = thread.join();
            true
        } else {
            // Detach: dropping the handle leaves the thread running until
            // its source call returns; `stop` is set, so it then ends.
            drop(thread);
            false
        }
    }
}

impl Drop for GpuSampler {
    /// Stops the thread, waiting at most [`SamplerConfig::stop_timeout`]
    /// (then detaching it): a drop never blocks without bound.
    fn drop(&mut self) {
        let timeout = self.stop_timeout;
        self.halt(true, timeout);
    }
}
