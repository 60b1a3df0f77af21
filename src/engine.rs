//! The engine: configuration, the state shared by producers and the
//! flusher, and the public `Engine` handle.

use std::any::Any;
use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::error::{Error, PublishError};
use crate::flusher::{self, Report};
use crate::intern::{EventKey, Interner};
use crate::policy::{default_rules, Pattern, Policy, PolicyTable};
use crate::producer::{Lane, Producer};
use crate::record::{Slot, MAX_NAMES};
use crate::ring::Consumer;
use crate::stats::Stats;
use crate::subscriber::Subscriber;
use crate::sync::{
    self, lock, Arc, AtomicBool, AtomicU64, AtomicUsize, Condvar, JoinHandle, Mutex, Ordering,
    Thread,
};
use crate::value::Sample;

/// State word bit: the engine is closing; no publish is accepted after the
/// flusher's final drain.
pub(crate) const CLOSED: usize = 1;
/// State word bit: the flusher sleeps until its next tick or deadline;
/// producers wake it only on crossing their high-water mark (or urgent).
pub(crate) const PARKED: usize = 2;
/// State word bit: the flusher sleeps with nothing pending anywhere; the
/// first publish wakes it.
pub(crate) const DEEP: usize = 4;

/// What a producer does when its ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Hand the payload back as `PublishError::Full` at once and count it
    /// (LTTng's discard mode). The default: the hot path never blocks.
    DropNewest,
    /// Wake the flusher and wait up to the timeout for space, then hand the
    /// payload back as `Full` and count it.
    Block(Duration),
}

/// Engine settings, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ring_capacity: usize,
    pub(crate) high_water: usize,
    pub(crate) tick: Duration,
    pub(crate) on_full: FullPolicy,
    pub(crate) urgent_wait: Duration,
    pub(crate) precise_timestamps: bool,
}

/// A lane registered by a new producer, with the ring's reading end for the
/// flusher to adopt.
pub(crate) type NewLane<T> = (Arc<Lane<T>>, Consumer<Slot<T>>);

/// Lanes waiting to be adopted by the flusher, and every live lane (for
/// stats), plus the totals of retired lanes. One mutex, so stats never see
/// a lane both retired and live.
pub(crate) struct Registry<T> {
    pub(crate) new: Vec<NewLane<T>>,
    pub(crate) live: Vec<Arc<Lane<T>>>,
    pub(crate) retired: crate::stats::DropStats,
    pub(crate) retired_published: u64,
}

/// Flush requests and the flusher's acknowledgements.
#[derive(Default)]
pub(crate) struct Control {
    /// Last generation handed out to a flush caller.
    pub(crate) requested: u64,
    /// Last generation the flusher completed.
    pub(crate) completed: u64,
    /// A full flush is among the outstanding requests.
    pub(crate) full: bool,
    /// Prefix patterns among the outstanding requests.
    pub(crate) patterns: Vec<Pattern>,
    /// The flusher has finished its final drain and exited its loop.
    pub(crate) stopped: bool,
}

/// Everything producers, handles and the flusher share.
pub(crate) struct Shared<T> {
    pub(crate) id: u64,
    pub(crate) config: Config,
    pub(crate) interner: Interner,
    pub(crate) sampler: Option<fn(&T) -> Option<f64>>,
    /// CLOSED | PARKED | DEEP. Zero in the common case, so a publish reads
    /// it and moves on.
    pub(crate) state: AtomicUsize,
    pub(crate) high_water_wakeups: AtomicU64,
    /// Rejections of `Engine::publish*` calls that never reached a producer
    /// (engine shut down, or the name invalid before a producer existed).
    pub(crate) unlaned_shut_down: AtomicU64,
    pub(crate) unlaned_invalid: AtomicU64,
    pub(crate) flusher: Mutex<Option<Thread>>,
    pub(crate) registry: Mutex<Registry<T>>,
    pub(crate) registry_dirty: AtomicBool,
    pub(crate) flush_pending: AtomicBool,
    pub(crate) control: Mutex<Control>,
    pub(crate) control_cv: Condvar,
    pub(crate) report: Mutex<Report>,
}

impl<T: Send + 'static> Shared<T> {
    pub(crate) fn register_lane(
        &self,
        lane: Arc<Lane<T>>,
        consumer: Consumer<Slot<T>>,
    ) -> Result<(), Error> {
        let mut reg = lock(&self.registry);
        // Checked under the registry lock: the flusher's final adoption
        // takes the same lock after CLOSED is set, so a lane is either
        // adopted (and drained) or refused here.
        if self.state.load(Ordering::SeqCst) & CLOSED != 0 {
            return Err(Error::ShutDown);
        }
        reg.live.push(lane.clone());
        reg.new.push((lane, consumer));
        self.registry_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Producer-side wake-up: clears the parked bits and unparks the
    /// flusher if this call was the one to clear them (so a burst of
    /// producers costs one unpark). Returns whether it unparked.
    pub(crate) fn wake_flusher(&self) -> bool {
        let prev = self.state.fetch_and(!(PARKED | DEEP), Ordering::AcqRel);
        if prev & (PARKED | DEEP) != 0 {
            self.unpark_flusher();
            true
        } else {
            false
        }
    }

    /// Unconditional wake-up for control requests (flush, shutdown, new
    /// producer). Park/unpark keeps a token, so an unpark that lands before
    /// the flusher parks makes that park return at once: no lost wake-up.
    pub(crate) fn unpark_flusher(&self) {
        if let Some(t) = lock(&self.flusher).as_ref() {
            t.unpark();
        }
    }

    pub(crate) fn on_flusher_thread(&self) -> bool {
        lock(&self.flusher)
            .as_ref()
            .is_some_and(|t| t.id() == sync::current().id())
    }

    /// Blocks until the flusher has stopped, or `deadline` passes.
    pub(crate) fn wait_stopped_until(&self, deadline: Option<Instant>) -> bool {
        let mut ctl = lock(&self.control);
        while !ctl.stopped {
            ctl = match deadline {
                None => self.control_cv.wait(ctl).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    wait_timeout(&self.control_cv, ctl, d - now)
                }
            };
        }
        true
    }

    pub(crate) fn wait_stopped(&self) {
        self.wait_stopped_until(None);
    }

    /// Requests a flush (of everything, or of prefixes matching `pattern`)
    /// and waits for it.
    fn flush(&self, pattern: Option<Pattern>, deadline: Option<Instant>) -> Result<(), Error> {
        if self.on_flusher_thread() {
            return Err(Error::FlushFromSubscriber);
        }
        let mut ctl = lock(&self.control);
        if ctl.stopped {
            // Shutdown already delivered every accepted event.
            return Ok(());
        }
        ctl.requested += 1;
        let generation = ctl.requested;
        match pattern {
            Some(p) => ctl.patterns.push(p),
            None => ctl.full = true,
        }
        self.flush_pending.store(true, Ordering::SeqCst);
        self.unpark_flusher();
        while ctl.completed < generation && !ctl.stopped {
            ctl = match deadline {
                None => self.control_cv.wait(ctl).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        drop(ctl);
                        return Err(Error::Timeout(Box::new(self.stats())));
                    }
                    wait_timeout(&self.control_cv, ctl, d - now)
                }
            };
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> Stats {
        let report = lock(&self.report).clone();
        let reg = lock(&self.registry);
        let mut stats = report.to_stats(&self.interner);
        stats.published = reg.retired_published;
        stats.dropped.full = reg.retired.full;
        stats.dropped.shut_down = reg.retired.shut_down;
        stats.dropped.invalid_name = reg.retired.invalid_name;
        stats.dropped.urgent_timeout = reg.retired.urgent_timeout;
        stats.dropped.shut_down += self.unlaned_shut_down.load(Ordering::Relaxed);
        stats.dropped.invalid_name += self.unlaned_invalid.load(Ordering::Relaxed);
        let mut in_rings = 0u64;
        for lane in &reg.live {
            let (published, in_ring) = lane.events();
            stats.published += published;
            in_rings += in_ring;
            stats.dropped.full += lane.full.load(Ordering::Relaxed);
            stats.dropped.shut_down += lane.shut_down.load(Ordering::Relaxed);
            stats.dropped.invalid_name += lane.invalid_name.load(Ordering::Relaxed);
            stats.dropped.urgent_timeout += lane.urgent_timeout.load(Ordering::Relaxed);
        }
        stats.producers = reg.live.len();
        stats.pending = report.accumulated + in_rings;
        stats.high_water_wakeups = self.high_water_wakeups.load(Ordering::Relaxed);
        stats
    }
}

fn wait_timeout<'a, C>(
    cv: &Condvar,
    guard: sync::MutexGuard<'a, C>,
    timeout: Duration,
) -> sync::MutexGuard<'a, C> {
    #[cfg(not(loom))]
    {
        match cv.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
    #[cfg(loom)]
    {
        // loom has no timed waits; a spurious wake-up models the timer.
        let _ = timeout;
        cv.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}

/// Owns the flusher thread; dropping the last one shuts the engine down.
struct Handle<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + 'static> Handle<T> {
    fn shutdown(&self, timeout: Option<Duration>) -> Result<Stats, Error> {
        let shared = &self.shared;
        let was_open = shared.state.fetch_or(CLOSED, Ordering::SeqCst) & CLOSED == 0;
        shared.unpark_flusher();
        if shared.on_flusher_thread() {
            // Called from a subscriber: the flusher finishes the current
            // delivery, then drains and stops. Waiting here would wait on
            // ourselves.
            return Ok(shared.stats());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        if !shared.wait_stopped_until(deadline) {
            return Err(Error::Timeout(Box::new(shared.stats())));
        }
        let join = lock(&self.join).take();
        if let Some(join) = join {
            if join.join().is_err() && was_open {
                return Err(Error::FlusherDied);
            }
        }
        Ok(shared.stats())
    }
}

impl<T: Send + 'static> Drop for Handle<T> {
    fn drop(&mut self) {
        let _ = self.shutdown(None);
    }
}

/// A telemetry engine: producers publish into their own rings, one flusher
/// thread folds them into one batch per prefix per window for the
/// subscribers.
///
/// Cheap to clone (`Send + Sync`); dropping the last clone shuts it down
/// (flushing everything accepted).
///
/// ```
/// use ringfold::{Batch, Engine, Value};
/// let engine = Engine::<Value>::builder()
///     .default_rules()
///     .subscriber(|batch: &Batch<'_, Value>| {
///         println!("{} x{} ({:?})", batch.name(), batch.len(), batch.reason())
///     })
///     .build()?;
/// for row in 0..250u64 {
///     engine.publish("data:users:created", row)?;
/// }
/// engine.flush()?;
/// let stats = engine.shutdown()?;
/// assert_eq!(stats.delivered, 250);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine<T: Send + 'static> {
    handle: Arc<Handle<T>>,
}

impl<T: Send + 'static> Clone for Engine<T> {
    fn clone(&self) -> Self {
        Engine {
            handle: self.handle.clone(),
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Engine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.handle.shared.id)
            .finish()
    }
}

static NEXT_ENGINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<T: Send + 'static> Engine<T> {
    /// Starts configuring an engine.
    pub fn builder() -> EngineBuilder<T> {
        EngineBuilder::new()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<T>> {
        &self.handle.shared
    }

    /// A new producer with its own ring. Give one to each publishing thread.
    ///
    /// A `Producer` is `Send` but not `Sync`: a ring has one writer.
    ///
    /// ```compile_fail
    /// fn shared_between_threads<T: Sync>(_: &T) {}
    /// let engine = ringfold::Engine::<u64>::builder().build().unwrap();
    /// shared_between_threads(&engine.producer().unwrap());
    /// ```
    pub fn producer(&self) -> Result<Producer<T>, Error> {
        let p = Producer::register(self.handle.shared.clone())?;
        self.handle.shared.unpark_flusher();
        Ok(p)
    }

    /// Interns `name` (once) and returns its key for hot-path publishing.
    pub fn key(&self, name: &str) -> Result<EventKey, Error> {
        self.handle.shared.interner.key(name)
    }

    /// Publishes through the calling thread's own producer (created on
    /// first use, kept in a thread-local, drained when the thread exits).
    pub fn publish(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        self.with_local(payload.into(), |p, payload| p.publish(name, payload))
    }

    /// Like [`Engine::publish`] with an interned key.
    pub fn publish_key(&self, key: EventKey, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        self.with_local(payload.into(), |p, payload| p.publish_key(key, payload))
    }

    /// Like [`Producer::publish_urgent`], through the thread's own producer.
    pub fn publish_urgent(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        let payload = payload.into();
        match self.key(name) {
            Ok(key) => self.with_local(payload, |p, payload| p.publish_urgent(key, payload)),
            Err(_) => {
                let shared = &self.handle.shared;
                shared.unlaned_invalid.fetch_add(1, Ordering::Relaxed);
                Err(PublishError::InvalidName(payload))
            }
        }
    }

    fn with_local(
        &self,
        payload: T,
        f: impl FnOnce(&mut Producer<T>, T) -> Result<(), PublishError<T>>,
    ) -> Result<(), PublishError<T>> {
        local::with_producer(self, payload, f)
    }

    /// Delivers every event whose publish returned `Ok` before this call to
    /// every subscriber, then returns. Safe from many threads at once.
    /// From inside a subscriber it returns `Error::FlushFromSubscriber`.
    pub fn flush(&self) -> Result<(), Error> {
        self.handle.shared.flush(None, None)
    }

    /// Like [`Engine::flush`], giving up after `timeout` with a report of
    /// what is still pending (`Error::Timeout`).
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.handle
            .shared
            .flush(None, Some(Instant::now() + timeout))
    }

    /// Like [`Engine::flush`], for the prefixes matching `pattern` only
    /// (`data:*`, `chat:s1`, ...).
    pub fn flush_prefix(&self, pattern: &str) -> Result<(), Error> {
        let pattern = Pattern::parse(pattern)?;
        self.handle.shared.flush(Some(pattern), None)
    }

    /// Flushes, stops and joins the flusher, and returns the final stats.
    /// Idempotent. Publishing afterwards returns `PublishError::ShutDown`.
    /// From inside a subscriber it returns at once; the flusher stops after
    /// the current delivery.
    pub fn shutdown(&self) -> Result<Stats, Error> {
        self.handle.shutdown(None)
    }

    /// Like [`Engine::shutdown`] but waits at most `timeout`; on expiry it
    /// returns `Error::Timeout` with the stats (what was still pending),
    /// and the flusher finishes in the background.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<Stats, Error> {
        self.handle.shutdown(Some(timeout))
    }

    /// A snapshot of the counters (exact at quiescent moments).
    pub fn stats(&self) -> Stats {
        self.handle.shared.stats()
    }

    /// True once shutdown has begun.
    pub fn is_shut_down(&self) -> bool {
        self.handle.shared.state.load(Ordering::Acquire) & CLOSED != 0
    }
}

/// Thread-local producers for `Engine::publish`.
mod local {
    use super::*;

    struct Entry {
        engine: u64,
        producer: Box<dyn Any>,
        closed: fn(&dyn Any) -> bool,
    }

    #[cfg(not(loom))]
    std::thread_local! {
        static PRODUCERS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    }
    #[cfg(loom)]
    loom::thread_local! {
        static PRODUCERS: RefCell<Vec<Entry>> = RefCell::new(Vec::new());
    }

    fn closed<T: Send + 'static>(p: &dyn Any) -> bool {
        p.downcast_ref::<Producer<T>>()
            .is_none_or(|p| p.is_closed())
    }

    pub(super) fn with_producer<T: Send + 'static>(
        engine: &Engine<T>,
        payload: T,
        f: impl FnOnce(&mut Producer<T>, T) -> Result<(), PublishError<T>>,
    ) -> Result<(), PublishError<T>> {
        let id = engine.shared().id;
        let mut payload = Some(payload);
        let result = PRODUCERS.try_with(|cell| {
            let Ok(mut list) = cell.try_borrow_mut() else {
                return None;
            };
            let idx = match list.iter().position(|e| e.engine == id) {
                Some(i) => i,
                None => {
                    // Drop producers of engines that have shut down.
                    list.retain(|e| !(e.closed)(&*e.producer));
                    let producer = engine.producer().ok()?;
                    list.push(Entry {
                        engine: id,
                        producer: Box::new(producer),
                        closed: closed::<T>,
                    });
                    list.len() - 1
                }
            };
            let producer = list[idx].producer.downcast_mut::<Producer<T>>()?;
            Some(f(producer, payload.take()?))
        });
        match result {
            Ok(Some(r)) => r,
            // No producer could be had: the engine is shut down, or the
            // thread is exiting.
            _ => {
                let shared = engine.shared();
                shared.unlaned_shut_down.fetch_add(1, Ordering::Relaxed);
                match payload {
                    Some(payload) => Err(PublishError::ShutDown(payload)),
                    // `f` ran and consumed the payload only if it returned;
                    // this arm is reached only when it did not run.
                    None => Ok(()),
                }
            }
        }
    }
}

/// Configures and builds an [`Engine`].
pub struct EngineBuilder<T: Send + 'static> {
    default_policy: Policy,
    rules: Vec<(String, Policy)>,
    urgent: Vec<String>,
    ring_capacity: usize,
    high_water: Option<usize>,
    tick: Duration,
    pin: Option<usize>,
    on_full: FullPolicy,
    urgent_wait: Duration,
    subscribers: Vec<Box<dyn Subscriber<T>>>,
    max_names: usize,
    max_name_len: usize,
    precise_timestamps: bool,
    sampler: Option<fn(&T) -> Option<f64>>,
}

impl<T: Send + 'static> Default for EngineBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> EngineBuilder<T> {
    /// Defaults: `Policy::batch(50 ms, 100)` for unmatched names, rings of
    /// 4096 slots with a high-water mark of 1024, a 5 ms tick, drop-newest
    /// on a full ring, urgent events wait up to 1 s, up to 4096 names of
    /// up to 256 bytes.
    pub fn new() -> Self {
        EngineBuilder {
            default_policy: Policy::batch(Duration::from_millis(50), 100),
            rules: Vec::new(),
            urgent: Vec::new(),
            ring_capacity: 4096,
            high_water: None,
            tick: Duration::from_millis(5),
            pin: None,
            on_full: FullPolicy::DropNewest,
            urgent_wait: Duration::from_secs(1),
            subscribers: Vec::new(),
            max_names: 4096,
            max_name_len: 256,
            precise_timestamps: false,
            sampler: None,
        }
    }

    /// Policy for names no pattern matches.
    pub fn default_policy(mut self, policy: Policy) -> Self {
        self.default_policy = policy;
        self
    }

    /// Policy for names matching `pattern` (validated at `build`). The most
    /// specific pattern wins; for equal ones, the later call.
    pub fn policy(mut self, pattern: &str, policy: Policy) -> Self {
        self.rules.push((pattern.to_owned(), policy));
        self
    }

    /// Marks names matching `pattern` urgent: each such event flushes its
    /// prefix at once (after the prefix's earlier events).
    pub fn urgent(mut self, pattern: &str) -> Self {
        self.urgent.push(pattern.to_owned());
        self
    }

    /// Slots per producer ring; a power of two, at least 2 (4 with
    /// `precise_timestamps`). An event takes one slot, plus one if its
    /// sub-key does not fit in 32 bits and two if it is stamped at publish.
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = n;
        self
    }

    /// Ring occupancy at which a producer wakes a sleeping flusher
    /// (default: a quarter of the capacity). 1..=capacity.
    pub fn high_water(mut self, n: usize) -> Self {
        self.high_water = Some(n);
        self
    }

    /// How often a sleeping flusher sweeps while events are pending.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Pins the flusher thread to this core (index into `core_affinity`'s
    /// list); `build` fails with `Error::CoreUnavailable` if there is none.
    pub fn pin_flusher(mut self, core_index: usize) -> Self {
        self.pin = Some(core_index);
        self
    }

    /// What a full ring does to an ordinary publish.
    pub fn on_full(mut self, policy: FullPolicy) -> Self {
        self.on_full = policy;
        self
    }

    /// How long an urgent publish waits for ring space before giving up
    /// (counted as `urgent_timeout`).
    pub fn urgent_wait(mut self, wait: Duration) -> Self {
        self.urgent_wait = wait;
        self
    }

    /// Adds a subscriber (any number; each sees every batch, in order).
    pub fn subscriber(mut self, subscriber: impl Subscriber<T> + 'static) -> Self {
        self.subscribers.push(Box::new(subscriber));
        self
    }

    /// Most distinct names the engine will intern.
    pub fn max_names(mut self, n: usize) -> Self {
        self.max_names = n;
        self
    }

    /// Longest name in bytes.
    pub fn max_name_len(mut self, n: usize) -> Self {
        self.max_name_len = n;
        self
    }

    /// Stamp events at publish (one clock read per publish) instead of when
    /// the flusher sweeps them.
    pub fn precise_timestamps(mut self, on: bool) -> Self {
        self.precise_timestamps = on;
        self
    }

    /// How `Policy::aggregate` reads a number from a payload.
    pub fn sample_with(mut self, f: fn(&T) -> Option<f64>) -> Self {
        self.sampler = Some(f);
        self
    }

    /// Validates the configuration and starts the flusher.
    pub fn build(self) -> Result<Engine<T>, Error> {
        let cap = self.ring_capacity;
        if cap < 2 || !cap.is_power_of_two() {
            return Err(Error::InvalidConfig(
                "ring_capacity must be a power of two of at least 2",
            ));
        }
        let high_water = self.high_water.unwrap_or((cap / 4).max(1));
        if high_water == 0 || high_water > cap {
            return Err(Error::InvalidConfig(
                "high_water must be in 1..=ring_capacity",
            ));
        }
        if self.precise_timestamps && cap < 4 {
            // A stamped event takes up to four slots (see record.rs).
            return Err(Error::InvalidConfig(
                "precise_timestamps needs ring_capacity of at least 4",
            ));
        }
        if self.tick.is_zero() {
            return Err(Error::InvalidConfig("tick must be non-zero"));
        }
        if self.max_names == 0 || self.max_names > MAX_NAMES {
            return Err(Error::InvalidConfig("max_names must be in 1..=2^30"));
        }
        if self.max_name_len == 0 {
            return Err(Error::InvalidConfig("max_name_len must be non-zero"));
        }
        if let FullPolicy::Block(t) = self.on_full {
            if t.is_zero() {
                return Err(Error::InvalidConfig(
                    "FullPolicy::Block needs a non-zero timeout",
                ));
            }
        }
        self.default_policy.validate()?;
        let mut table = PolicyTable::new(self.default_policy);
        let needs_sampler = |p: &Policy| matches!(p, Policy::Aggregate { .. });
        if needs_sampler(&self.default_policy) && self.sampler.is_none() {
            return Err(Error::AggregateWithoutSampler {
                pattern: "<default>".into(),
            });
        }
        for (pattern, policy) in &self.rules {
            policy.validate()?;
            if needs_sampler(policy) && self.sampler.is_none() {
                return Err(Error::AggregateWithoutSampler {
                    pattern: pattern.clone(),
                });
            }
            table.rules.push((Pattern::parse(pattern)?, *policy));
        }
        for pattern in &self.urgent {
            table.urgent.push(Pattern::parse(pattern)?);
        }
        let core = match self.pin {
            None => None,
            Some(index) => {
                let cores = core_affinity::get_core_ids().unwrap_or_default();
                Some(*cores.get(index).ok_or(Error::CoreUnavailable {
                    core: index,
                    available: cores.len(),
                })?)
            }
        };
        let shared = Arc::new(Shared {
            id: NEXT_ENGINE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config: Config {
                ring_capacity: cap,
                high_water,
                tick: self.tick,
                on_full: self.on_full,
                urgent_wait: self.urgent_wait,
                precise_timestamps: self.precise_timestamps,
            },
            interner: Interner::new(table, self.max_names, self.max_name_len),
            sampler: self.sampler,
            state: AtomicUsize::new(0),
            high_water_wakeups: AtomicU64::new(0),
            unlaned_shut_down: AtomicU64::new(0),
            unlaned_invalid: AtomicU64::new(0),
            flusher: Mutex::new(None),
            registry: Mutex::new(Registry {
                new: Vec::new(),
                live: Vec::new(),
                retired: Default::default(),
                retired_published: 0,
            }),
            registry_dirty: AtomicBool::new(false),
            flush_pending: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
            control_cv: Condvar::new(),
            report: Mutex::new(Report::default()),
        });
        let join = flusher::spawn(shared.clone(), self.subscribers, core).map_err(Error::Spawn)?;
        Ok(Engine {
            handle: Arc::new(Handle {
                shared,
                join: Mutex::new(Some(join)),
            }),
        })
    }
}

impl<T: Sample + Send + 'static> EngineBuilder<T> {
    /// Lets `Policy::aggregate` read payloads through their [`Sample`] impl.
    pub fn sampled(self) -> Self {
        self.sample_with(|t| t.as_f64())
    }

    /// Adds the design's default policy table ([`default_rules`]): chat,
    /// presence and sentinel status passthrough; data, code_index and
    /// training batched; gpu aggregated.
    pub fn default_rules(mut self) -> Self {
        for (pattern, policy) in default_rules() {
            self = self.policy(pattern, policy);
        }
        self.sampled()
    }
}
