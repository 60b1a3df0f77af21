//! The sampler thread's loop: the pass schedule (which passes sample the
//! slow metrics, how many passes a failing device is skipped), each
//! device's sampling state (unsupported metrics, consecutive failures) and
//! the worker that runs passes, reads the source, publishes readings and
//! counts every outcome in the counters its `GpuSampler` handle reads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{bump, Shared};
use crate::gpu::{DeviceError, GpuReading, GpuSource, Metric, ReadError, SamplerConfig};
use crate::{EventKey, Producer, PublishError};

/// Pass arithmetic: everything is counted in passes, so scheduling,
/// slow-metric periods and back-off are deterministic given the pass number.
pub(super) struct Schedule {
    slow_every: u64,
    max_skip: u64,
}

impl Schedule {
    pub(super) fn new(config: &SamplerConfig) -> Self {
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

pub(super) struct DeviceState {
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
    pub(super) fn new(index: u32, keys: Vec<EventKey>) -> Self {
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

pub(super) struct Worker<T: Send + 'static, S> {
    pub(super) source: S,
    pub(super) producer: Producer<T>,
    pub(super) devices: Vec<DeviceState>,
    pub(super) schedule: Schedule,
    pub(super) config: SamplerConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) buf: Vec<(Metric, Result<f64, ReadError>)>,
    pub(super) fast: Vec<Metric>,
}

impl<T: From<GpuReading> + Send + Sync + 'static, S: GpuSource> Worker<T, S> {
    pub(super) fn run(mut self) {
        let interval = self.config.interval;
        let max_passes = self.config.max_passes;
        // A clone, so the counters can be read while `self.pass` borrows
        // `self` mutably.
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        // When the previous pass was due. Every later instant is computed
        // with checked arithmetic: an interval too large to add to an
        // `Instant` (e.g. `Duration::MAX`) means "no next pass", i.e. wait
        // until stopped, never a panic.
        let mut due = Some(Instant::now());
        let mut pass = 0u64;
        loop {
            // Checked first, so `max_passes: Some(0)` runs no pass.
            if shared.stop.load(Ordering::Acquire) || max_passes.is_some_and(|m| pass >= m) {
                break;
            }
            let started = Instant::now();
            let engine_open = self.pass(pass, started);
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            bump(&counters.busy_ns, took);
            counters.max_pass_ns.fetch_max(took, Ordering::Relaxed);
            counters.passes.fetch_add(1, Ordering::Release);
            pass += 1;
            if !engine_open || max_passes.is_some_and(|m| pass >= m) {
                break;
            }
            if interval.is_zero() {
                continue;
            }
            due = due.and_then(|d| d.checked_add(interval));
            let now = Instant::now();
            if let Some(d) = due {
                if now.saturating_duration_since(d) > interval {
                    // Far behind (a slow pass, a suspended machine): start
                    // a fresh schedule instead of a burst of catch-up
                    // passes.
                    bump(&counters.overruns, 1);
                    due = Some(now);
                    continue;
                }
            }
            while !shared.stop.load(Ordering::Acquire) {
                match due {
                    // Never due: sleep until `stop` unparks us.
                    None => std::thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break;
                        }
                        std::thread::park_timeout(d - now);
                    }
                }
            }
        }
    }

    /// One pass over every device. Returns false once the engine is shut
    /// down (nothing more can be published).
    fn pass(&mut self, pass: u64, at: Instant) -> bool {
        let slow = self.schedule.is_slow(pass);
        if slow {
            bump(&self.shared.counters.slow_passes, 1);
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
            bump(&self.shared.counters.backoff_skips, 1);
            return true;
        }
        if dev.failures > 0 {
            bump(&self.shared.counters.retries, 1);
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
            bump(&self.shared.counters.device_errors, 1);
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
        let c = &self.shared.counters;
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
