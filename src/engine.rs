//! The public `Engine` handle: producers, publishing through thread-local
//! producers, subscriptions, flush and shutdown (blocking and async).

use std::future::{poll_fn, Future};
use std::time::{Duration, Instant};

use crate::control;
use crate::delivery::{self, Receiver, SubscribeOptions, Subscriber, Subscription};
use crate::error::{Error, PublishError};
use crate::intern::EventKey;
use crate::local;
use crate::policy::Pattern;
use crate::producer::Producer;
use crate::shared::Shared;
use crate::stats::Stats;
use crate::sync::{lock, Arc, AtomicBool, JoinHandle, Mutex, Ordering};

/// How long dropping the last handle waits for the final drain and its
/// delivery before it leaves the rest to finish in the background (and
/// says so on stderr): a `Drop` must not block without bound behind a
/// stuck subscriber. Call [`Engine::shutdown_timeout`] to choose: once a
/// bounded shutdown has timed out, the drop does not wait again.
pub const DROP_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Owns the flusher thread and the build-time subscriptions; dropping the
/// last one shuts the engine down.
struct Handle<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
    join: Mutex<Option<JoinHandle<()>>>,
    /// Build-time subscribers, joined at shutdown.
    subscriptions: Mutex<Vec<Subscription<T>>>,
    /// The producers behind `Engine::publish*`, one per thread, dropped
    /// with the last handle (after the shutdown in `Drop`).
    locals: local::Locals<T>,
    /// A bounded shutdown (`shutdown_timeout`) ran out: the caller chose
    /// its bound, so dropping the last handle does not wait again.
    timed_out: AtomicBool,
}

impl<T: Send + Sync + 'static> Handle<T> {
    /// Starts shutdown: closes the engine and lets no must-deliver queue
    /// hold up the final drain. True if this call closed it.
    fn begin_shutdown(&self) -> bool {
        let shared = &self.shared;
        let was_open = shared.state.close();
        shared.subscribers.release_blocked();
        shared.state.unpark();
        was_open
    }

    fn shutdown(&self, deadline: Option<Instant>) -> Result<Stats, Error> {
        let result = self.shutdown_until(deadline);
        if let Err(Error::Timeout(_)) = &result {
            // Relaxed: read by `Drop`, which runs after this call (same
            // thread, or ordered by the `Arc` count of the last handle).
            self.timed_out.store(true, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_until(&self, deadline: Option<Instant>) -> Result<Stats, Error> {
        let shared = &self.shared;
        let was_open = self.begin_shutdown();
        if shared.state.on_flusher_thread() {
            // Only payload `Drop`s run on the flusher; waiting here would
            // wait on ourselves.
            return Ok(shared.stats());
        }
        if !shared.control.wait_stopped_until(deadline) {
            return Err(Error::Timeout(Box::new(shared.stats())));
        }
        let join = lock(&self.join).take();
        if let Some(join) = join {
            // The flusher's thread catches its own panics (see
            // `flusher::spawn`), so this is only a backstop.
            if join.join().is_err() && was_open {
                return Err(Error::FlusherDied(Box::new(shared.stats())));
            }
        }
        if shared.state.peek().dead() {
            return Err(Error::FlusherDied(Box::new(shared.stats())));
        }
        if delivery::on_delivery_thread() {
            // Called from a subscriber: its own batch in hand cannot
            // complete while we wait. The queues are closed; every delivery
            // thread finishes what is queued in the background.
            return Ok(shared.stats());
        }
        // Every queue is closed (the flusher's last act); wait until each
        // has delivered (or discarded) what it holds.
        if !shared.subscribers.flush_ticket().wait(deadline) {
            return Err(Error::Timeout(Box::new(shared.stats())));
        }
        for s in lock(&self.subscriptions).iter_mut() {
            // Drained: the thread is exiting, so the join is short. Still
            // listed, so the final stats show it.
            s.join();
        }
        Ok(shared.stats())
    }
}

impl<T: Send + Sync + 'static> Drop for Handle<T> {
    fn drop(&mut self) {
        // Bounded (see `DROP_SHUTDOWN_WAIT`): whatever is still running
        // after it (a flusher blocked on a payload `Drop`, a subscriber
        // stuck in its callback) finishes on its own thread, detached.
        // After a bounded shutdown that timed out, not at all: the caller
        // already waited as long as it chose to.
        let wait = if self.timed_out.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            DROP_SHUTDOWN_WAIT
        };
        if let Err(Error::Timeout(stats)) = self.shutdown(control::deadline_after(wait)) {
            let stuck: Vec<String> = stats
                .subscribers
                .iter()
                .filter(|s| s.queued + s.in_flight > 0)
                .map(|s| {
                    format!(
                        "{} ({} queued, {} in flight)",
                        s.name, s.queued, s.in_flight
                    )
                })
                .collect();
            eprintln!(
                "ringfold: engine {} dropped; after {:?} {} events were still pending and \
                 these subscribers still busy: [{}]; left to finish in the background",
                self.shared.id,
                wait,
                stats.pending,
                stuck.join(", ")
            );
        }
    }
}

/// A telemetry engine: producers publish into their own rings, one flusher
/// thread folds them into one batch per prefix per window and queues each
/// batch for its subscribers, each of which consumes on its own thread (or
/// task).
///
/// Cheap to clone (`Send + Sync`); dropping the last clone shuts it down
/// (flushing everything accepted, waiting at most [`DROP_SHUTDOWN_WAIT`]).
/// The payload type is shared by every subscriber's thread, hence
/// `T: Send + Sync + 'static`.
///
/// ```
/// use ringfold::{Batch, Engine, Value};
/// let engine = Engine::<Value>::builder()
///     .default_rules()
///     .subscriber(|batch: &Batch<Value>| {
///         println!("{} x{} ({:?})", batch.name(), batch.len(), batch.reason())
///     })
///     .build()?;
/// for row in 0..250u64 {
///     engine.publish("data:users:created", row)?;
/// }
/// engine.flush()?;
/// let stats = engine.shutdown()?;
/// assert_eq!(stats.sealed, 250);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine<T: Send + Sync + 'static> {
    handle: Arc<Handle<T>>,
}

impl<T: Send + Sync + 'static> Clone for Engine<T> {
    fn clone(&self) -> Self {
        Engine {
            handle: self.handle.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> std::fmt::Debug for Engine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.handle.shared.id)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Engine<T> {
    /// Most dropped producers whose rings may wait for the flusher to drain
    /// and retire them: beyond it, [`Engine::producer`] and
    /// [`Engine::producer_with_capacity`] wake the flusher and wait until
    /// it has retired some. So a thread that creates, uses and drops
    /// producers in a loop cannot outrun retirement, and the registered
    /// producers ([`Stats::producers`]) stay at most the live ones plus
    /// this many: memory proportional to live producers plus pending
    /// events. Retirement never waits for a subscriber (they run on their
    /// own threads).
    ///
    /// The wait lasts as long as the flusher keeps making passes; if it
    /// completes none for a second (held up by a `LagPolicy::Block`
    /// subscriber's full queue, a slow sampler or payload `Drop`), the
    /// creation goes ahead, exceeding the bound by one. A creation on the
    /// flusher's thread or a subscriber's delivery thread never waits (it
    /// could be waiting for itself). If the engine shuts down or its
    /// flusher dies meanwhile, the creation returns `ShutDown` or
    /// `FlusherDied`, as it would have anyway.
    ///
    /// ```
    /// use ringfold::Engine;
    /// let engine = Engine::<u64>::builder().build()?;
    /// for i in 0..1000u64 {
    ///     let mut p = engine.producer()?;
    ///     p.publish("data:churn:one", i).unwrap();
    ///     // Dropped here: its ring waits for the flusher to drain it.
    /// }
    /// assert!(engine.stats().producers <= Engine::<u64>::MAX_RETIRING_PRODUCERS);
    /// engine.flush()?;
    /// assert_eq!(engine.stats().sealed, 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const MAX_RETIRING_PRODUCERS: usize = crate::lane::MAX_RETIRING_LANES;

    /// The handle of a started flusher (see `EngineBuilder::build`).
    pub(crate) fn start(
        shared: Arc<Shared<T>>,
        join: JoinHandle<()>,
        subscriptions: Vec<Subscription<T>>,
    ) -> Self {
        Engine {
            handle: Arc::new(Handle {
                shared,
                join: Mutex::new(Some(join)),
                subscriptions: Mutex::new(subscriptions),
                locals: local::Locals::new(),
                timed_out: AtomicBool::new(false),
            }),
        }
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
    ///
    /// Creation is where memory under producer churn is bounded: if
    /// [`Engine::MAX_RETIRING_PRODUCERS`] dropped producers' rings are still
    /// waiting to be drained and retired, it wakes the flusher and waits
    /// for it to catch up (see that constant).
    pub fn producer(&self) -> Result<Producer<T>, Error> {
        self.handle.shared.make_room();
        let p = Producer::register(self.handle.shared.clone())?;
        self.handle.shared.state.unpark();
        Ok(p)
    }

    /// Like [`Engine::producer`], with a ring of `capacity` slots instead of
    /// `EngineBuilder::ring_capacity`: a small ring makes a producer per
    /// short-lived task cheap, a large one absorbs a bursty thread. The
    /// same rules as `ring_capacity` apply (a power of two, at least 2, or
    /// 4 with `precise_timestamps` or a `latest` policy, at most [`MAX_RING_CAPACITY`] slots and
    /// 1 GiB); otherwise `Error::InvalidConfig`. Its high-water mark is the
    /// engine's, or a quarter of a smaller ring.
    ///
    /// [`MAX_RING_CAPACITY`]: crate::EngineBuilder::MAX_RING_CAPACITY
    ///
    /// ```
    /// let engine = ringfold::Engine::<u64>::builder().high_water(16).build()?;
    /// let mut per_task = engine.producer_with_capacity(64)?;
    /// per_task.publish("data:task:done", 1u64).unwrap();
    /// assert!(engine.producer_with_capacity(100).is_err()); // not a power of two
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn producer_with_capacity(&self, capacity: usize) -> Result<Producer<T>, Error> {
        let shared = &self.handle.shared;
        shared.config.check_ring_capacity(capacity)?;
        shared.make_room();
        let p = Producer::register_with_capacity(shared.clone(), capacity)?;
        shared.state.unpark();
        Ok(p)
    }

    /// Interns `name` (once) and returns its key for hot-path publishing.
    pub fn key(&self, name: &str) -> Result<EventKey, Error> {
        self.handle.shared.interner.key(name)
    }

    /// Publishes through the calling thread's own producer (created on
    /// first use and kept by the engine, one per thread: a thread that
    /// exits leaves it to the next thread that starts, and dropping the
    /// engine's last handle drops them all, whatever the threads are doing).
    pub fn publish(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        local::with_producer(
            &self.handle.shared,
            &self.handle.locals,
            payload.into(),
            |p, payload| p.publish(name, payload),
        )
    }

    /// Like [`Engine::publish`] with an interned key.
    pub fn publish_key(&self, key: EventKey, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        local::with_producer(
            &self.handle.shared,
            &self.handle.locals,
            payload.into(),
            |p, payload| p.publish_key(key, payload),
        )
    }

    /// Like [`Producer::publish_urgent`], through the thread's own producer.
    pub fn publish_urgent(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        let payload = payload.into();
        match self.key(name) {
            Ok(key) => local::with_producer(
                &self.handle.shared,
                &self.handle.locals,
                payload,
                |p, payload| p.publish_urgent(key, payload),
            ),
            Err(e) => {
                let unlaned = &self.handle.shared.unlaned;
                // Relaxed: stats counters.
                if let Error::TooManyNames { .. } = e {
                    unlaned.too_many_names.fetch_add(1, Ordering::Relaxed);
                    Err(PublishError::TooManyNames(payload))
                } else {
                    unlaned.invalid_name.fetch_add(1, Ordering::Relaxed);
                    Err(PublishError::InvalidName(payload))
                }
            }
        }
    }

    /// Requests a flush, waits for the flusher to seal and queue it, then
    /// for every subscriber to have processed what was queued (or dropped
    /// it by its lag policy), or for `deadline`.
    fn flush_until(
        &self,
        pattern: Option<Pattern>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let shared = &self.handle.shared;
        if shared.state.on_flusher_thread() || delivery::on_delivery_thread() {
            return Err(Error::FlushFromSubscriber);
        }
        let sealed = self.flush_queued(pattern, deadline);
        // The ticket is taken after the flusher queued everything the flush
        // covers, so its targets include those batches.
        if shared.state.peek().dead() {
            // A dead flusher releases every waiter as if it had stopped.
            Err(Error::FlusherDied(Box::new(shared.stats())))
        } else if sealed && shared.subscribers.flush_ticket().wait(deadline) {
            Ok(())
        } else {
            Err(Error::Timeout(Box::new(shared.stats())))
        }
    }

    /// The control-plane half of a flush: requests it, wakes the flusher
    /// and waits until the flusher has sealed and queued every batch the
    /// flush covers (false if `deadline` passed first). A separate step so
    /// the two-flusher loom model (through `loom_api::flush_queued`) checks
    /// exactly this code without scheduling a subscriber's thread.
    pub(crate) fn flush_queued(&self, pattern: Option<Pattern>, deadline: Option<Instant>) -> bool {
        let shared = &self.handle.shared;
        shared
            .control
            .flush(pattern, deadline, || shared.state.unpark())
    }

    /// Returns once every event whose publish returned `Ok` before this
    /// call has been processed by every subscriber (its callback returned,
    /// or its receiver handed the batch out) or dropped and counted by that
    /// subscriber's lag policy. Safe from many threads at once. From inside
    /// a subscriber's callback it returns `Error::FlushFromSubscriber`
    /// (it would wait for that very callback). A flush waits for every
    /// receiver too: the thread that drains a receiver should not be the
    /// one flushing (use [`Engine::flush_timeout`] there).
    /// If the flusher thread has died, `Error::FlusherDied` with the stats.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_until(None, None)
    }

    /// Like [`Engine::flush`], giving up after `timeout` (behind a stuck
    /// subscriber, say) with a report of what is still pending and queued
    /// (`Error::Timeout`). A timeout the clock cannot add means no limit.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.flush_until(None, control::deadline_after(timeout))
    }

    /// [`Engine::flush`] as a future that never blocks the thread polling
    /// it (any executor, including a current-thread runtime): it is woken
    /// when the flusher has queued everything and again as subscribers
    /// progress.
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     use std::task::{Context, Poll, Wake, Waker};
    /// #     struct T(std::thread::Thread);
    /// #     impl Wake for T { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
    /// #     let waker = Waker::from(std::sync::Arc::new(T(std::thread::current())));
    /// #     let mut cx = Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } std::thread::park(); }
    /// # }
    /// let engine = ringfold::Engine::<u64>::builder().build()?;
    /// engine.publish("data:users:created", 1u64)?;
    /// block_on(engine.flush_async())?;
    /// assert_eq!(engine.stats().sealed, 1);
    /// let stats = block_on(engine.shutdown_async())?;
    /// assert!(stats.is_conserved());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_async(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let shared = self.handle.shared.clone();
        let refused = shared.state.on_flusher_thread() || delivery::on_delivery_thread();
        async move {
            if refused {
                return Err(Error::FlushFromSubscriber);
            }
            if let Some(generation) = shared.control.request(None) {
                shared.state.unpark();
                poll_fn(|cx| shared.control.poll_completed(generation, cx)).await;
            }
            let ticket = shared.subscribers.flush_ticket();
            poll_fn(|cx| ticket.poll(cx)).await;
            Ok(())
        }
    }

    /// Like [`Engine::flush`], for the prefixes matching `pattern` only
    /// (`data:*`, `chat:s1`, ...).
    pub fn flush_prefix(&self, pattern: &str) -> Result<(), Error> {
        let pattern = Pattern::parse(pattern)?;
        self.flush_until(Some(pattern), None)
    }

    /// Flushes, stops and joins the flusher, closes every subscription
    /// (each delivers what it has queued, or discards it, as chosen at
    /// subscribe time), waits for the build-time subscribers to finish, and
    /// returns the final stats. Idempotent. Publishing or subscribing
    /// afterwards returns `ShutDown`. From inside a subscriber it does not
    /// wait for the deliveries (its own batch in hand could not complete).
    /// If the flusher thread died, it returns `Error::FlusherDied` with the
    /// final stats (every time it is called).
    pub fn shutdown(&self) -> Result<Stats, Error> {
        self.handle.shutdown(None)
    }

    /// Like [`Engine::shutdown`] but waits at most `timeout` in all; on
    /// expiry it returns `Error::Timeout` with the stats (what was still
    /// pending, and per subscriber what is queued or in its hands), and the
    /// rest finishes in the background. A timeout the clock cannot add
    /// means no limit.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<Stats, Error> {
        self.handle.shutdown(control::deadline_after(timeout))
    }

    /// [`Engine::shutdown`] as a future that never blocks the thread
    /// polling it: it is woken when the flusher has stopped and as the
    /// subscribers drain their queues. It does not join threads (the
    /// flusher's is joined when the last handle drops, and the delivery
    /// threads exit once drained). See [`Engine::flush_async`] for an
    /// example.
    pub fn shutdown_async(&self) -> impl Future<Output = Result<Stats, Error>> + Send + 'static {
        let handle = self.handle.clone();
        handle.begin_shutdown();
        let on_delivery = delivery::on_delivery_thread();
        async move {
            let shared = &handle.shared;
            poll_fn(|cx| shared.control.poll_stopped(cx)).await;
            if !on_delivery {
                let ticket = shared.subscribers.flush_ticket();
                poll_fn(|cx| ticket.poll(cx)).await;
            }
            Ok(shared.stats())
        }
    }

    /// Subscribes `subscriber` to the batches of every prefix `pattern`
    /// matches (the prefix itself or a name directly under it: `chat:*`
    /// receives prefix `chat`, `data:*` receives `data:users`), on its own
    /// delivery thread, with default options (name `subscriber-<n>`, a
    /// drop-oldest queue of 1024 batches). Dropping the returned handle
    /// unsubscribes.
    ///
    /// ```
    /// use ringfold::{Batch, Engine, Value};
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// let engine = Engine::<Value>::builder().default_rules().build()?;
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let counter = seen.clone();
    /// let sub = engine.subscribe("data:*", move |b: &Batch<Value>| {
    ///     counter.fetch_add(b.len() as u64, Ordering::Relaxed);
    /// })?;
    /// engine.publish("data:users:created", 1)?;
    /// engine.publish("chat:s1:delta", "hi")?; // not under `data`
    /// engine.flush()?;
    /// assert_eq!(seen.load(Ordering::Relaxed), 1);
    /// assert_eq!(sub.unsubscribe().delivered_events, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(
        &self,
        pattern: &str,
        subscriber: impl Subscriber<T> + 'static,
    ) -> Result<Subscription<T>, Error> {
        let name = self.handle.shared.subscriber_name();
        self.subscribe_with(pattern, SubscribeOptions::new(name), subscriber)
    }

    /// Like [`Engine::subscribe`] with options: the subscriber's name (in
    /// its stats), its lag policy and what unsubscribing does with what is
    /// queued. Errors: `InvalidPattern`, `InvalidConfig` (a zero budget or
    /// `coalesce_after`), `ShutDown`, `Spawn`.
    ///
    /// ```
    /// use ringfold::{Batch, Budget, Engine, Error, SubscribeOptions};
    /// let engine = Engine::<u64>::builder().build()?;
    /// let zero = SubscribeOptions::new("db").budget(Budget::new(0, u64::MAX));
    /// assert!(matches!(
    ///     engine.subscribe_with("data:*", zero, |_: &Batch<u64>| {}),
    ///     Err(Error::InvalidConfig(_))
    /// ));
    /// assert!(matches!(
    ///     engine.subscribe("da*", |_: &Batch<u64>| {}),
    ///     Err(Error::InvalidPattern { .. })
    /// ));
    /// engine.shutdown()?;
    /// assert!(matches!(engine.subscribe("*", |_: &Batch<u64>| {}), Err(Error::ShutDown)));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        subscriber: impl Subscriber<T> + 'static,
    ) -> Result<Subscription<T>, Error> {
        let shared = &self.handle.shared;
        if shared.state.is_closed() {
            // Validate first, so bad input is reported as such.
            Pattern::parse(pattern)?;
            return Err(Error::ShutDown);
        }
        Subscription::spawn(&shared.subscribers, pattern, &options, Box::new(subscriber))
    }

    /// A pull-mode subscription to the prefixes `pattern` matches (as
    /// [`Engine::subscribe`]): [`Receiver::recv`] from a plain thread, or,
    /// with the `stream` feature, a `futures_core::Stream` of batches.
    ///
    /// ```
    /// use ringfold::{Engine, SubscribeOptions};
    /// let engine = Engine::<u64>::builder().build()?;
    /// let rx = engine.receiver("data:*", SubscribeOptions::new("puller"))?;
    /// engine.publish("data:users:created", 7u64)?;
    /// engine.flush_timeout(std::time::Duration::from_millis(1)).ok(); // the receiver is ours to drain
    /// let batch = rx.recv().expect("one batch");
    /// assert_eq!(batch.prefix(), "data:users");
    /// assert_eq!(*batch.events()[0].payload(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receiver(&self, pattern: &str, options: SubscribeOptions) -> Result<Receiver<T>, Error> {
        let shared = &self.handle.shared;
        if shared.state.is_closed() {
            Pattern::parse(pattern)?;
            return Err(Error::ShutDown);
        }
        if options.core().is_some() {
            // A receiver is drained by the caller's own threads: there is
            // no delivery thread to pin, and ignoring the request would
            // hide a mistake.
            return Err(Error::InvalidConfig(
                "pin_to_core applies to callback subscribers; a receiver has no delivery thread",
            ));
        }
        Receiver::new(&shared.subscribers, pattern, &options)
    }

    /// A snapshot of the counters (exact at quiescent moments).
    pub fn stats(&self) -> Stats {
        self.handle.shared.stats()
    }

    /// True once shutdown has begun.
    pub fn is_shut_down(&self) -> bool {
        self.handle.shared.state.is_closed()
    }
}
