//! The public `Engine` handle: producers, publishing through thread-local
//! producers, flush and shutdown.

use std::time::{Duration, Instant};

use crate::control;
use crate::error::{Error, PublishError};
use crate::intern::EventKey;
use crate::local;
use crate::policy::Pattern;
use crate::producer::Producer;
use crate::shared::Shared;
use crate::stats::Stats;
use crate::sync::{lock, Arc, JoinHandle, Mutex, Ordering};

/// Owns the flusher thread; dropping the last one shuts the engine down.
struct Handle<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + 'static> Handle<T> {
    fn shutdown(&self, timeout: Option<Duration>) -> Result<Stats, Error> {
        let shared = &self.shared;
        let was_open = shared.state.close();
        shared.state.unpark();
        if shared.state.on_flusher_thread() {
            // Called from a subscriber: the flusher finishes the current
            // delivery, then drains and stops. Waiting here would wait on
            // ourselves.
            return Ok(shared.stats());
        }
        // A timeout too long for the clock means no limit.
        let deadline = timeout.and_then(control::deadline_after);
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

impl<T: Send + 'static> Engine<T> {
    /// The handle of a started flusher (see `EngineBuilder::build`).
    pub(crate) fn start(shared: Arc<Shared<T>>, join: JoinHandle<()>) -> Self {
        Engine {
            handle: Arc::new(Handle {
                shared,
                join: Mutex::new(Some(join)),
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
    pub fn producer(&self) -> Result<Producer<T>, Error> {
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
    /// per_task.publish("data:task:done", 1).unwrap();
    /// assert!(engine.producer_with_capacity(100).is_err()); // not a power of two
    /// # Ok::<(), ringfold::Error>(())
    /// ```
    pub fn producer_with_capacity(&self, capacity: usize) -> Result<Producer<T>, Error> {
        let shared = &self.handle.shared;
        shared.config.check_ring_capacity(capacity)?;
        let p = Producer::register_with_capacity(shared.clone(), capacity)?;
        shared.state.unpark();
        Ok(p)
    }

    /// Interns `name` (once) and returns its key for hot-path publishing.
    pub fn key(&self, name: &str) -> Result<EventKey, Error> {
        self.handle.shared.interner.key(name)
    }

    /// Publishes through the calling thread's own producer (created on
    /// first use, kept in a thread-local, drained when the thread exits).
    pub fn publish(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        local::with_producer(&self.handle.shared, payload.into(), |p, payload| {
            p.publish(name, payload)
        })
    }

    /// Like [`Engine::publish`] with an interned key.
    pub fn publish_key(&self, key: EventKey, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        local::with_producer(&self.handle.shared, payload.into(), |p, payload| {
            p.publish_key(key, payload)
        })
    }

    /// Like [`Producer::publish_urgent`], through the thread's own producer.
    pub fn publish_urgent(&self, name: &str, payload: impl Into<T>) -> Result<(), PublishError<T>> {
        let payload = payload.into();
        match self.key(name) {
            Ok(key) => local::with_producer(&self.handle.shared, payload, |p, payload| {
                p.publish_urgent(key, payload)
            }),
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

    /// Requests a flush and waits for it (or for `deadline`).
    fn flush_until(
        &self,
        pattern: Option<Pattern>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let shared = &self.handle.shared;
        if shared.state.on_flusher_thread() {
            return Err(Error::FlushFromSubscriber);
        }
        let done = shared
            .control
            .flush(pattern, deadline, || shared.state.unpark());
        // A dead flusher releases every waiter as if it had stopped.
        if shared.state.peek().dead() {
            Err(Error::FlusherDied(Box::new(shared.stats())))
        } else if done {
            Ok(())
        } else {
            Err(Error::Timeout(Box::new(shared.stats())))
        }
    }

    /// Delivers every event whose publish returned `Ok` before this call to
    /// every subscriber, then returns. Safe from many threads at once.
    /// From inside a subscriber it returns `Error::FlushFromSubscriber`;
    /// if the flusher thread has died, `Error::FlusherDied` with the stats.
    pub fn flush(&self) -> Result<(), Error> {
        self.flush_until(None, None)
    }

    /// Like [`Engine::flush`], giving up after `timeout` with a report of
    /// what is still pending (`Error::Timeout`). A timeout too long for the
    /// clock (`Duration::MAX`) means no limit.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), Error> {
        // A timeout too long for the clock means no limit.
        self.flush_until(None, control::deadline_after(timeout))
    }

    /// Like [`Engine::flush`], for the prefixes matching `pattern` only
    /// (`data:*`, `chat:s1`, ...).
    pub fn flush_prefix(&self, pattern: &str) -> Result<(), Error> {
        let pattern = Pattern::parse(pattern)?;
        self.flush_until(Some(pattern), None)
    }

    /// Flushes, stops and joins the flusher, and returns the final stats.
    /// Idempotent. Publishing afterwards returns `PublishError::ShutDown`.
    /// From inside a subscriber it returns at once; the flusher stops after
    /// the current delivery. If the flusher thread died, it returns
    /// `Error::FlusherDied` with the final stats (every time it is called).
    pub fn shutdown(&self) -> Result<Stats, Error> {
        self.handle.shutdown(None)
    }

    /// Like [`Engine::shutdown`] but waits at most `timeout`; on expiry it
    /// returns `Error::Timeout` with the stats (what was still pending),
    /// and the flusher finishes in the background. A timeout too long for
    /// the clock (`Duration::MAX`) means no limit.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<Stats, Error> {
        self.handle.shutdown(Some(timeout))
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
