//! Callback subscribers, each on its own delivery thread.
//!
//! The delivery thread pops a batch, calls the subscriber inside
//! `catch_unwind` (a panic is counted and the subscriber keeps receiving),
//! and marks the batch done. No subscriber code ever runs on the flusher.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::batch::Batch;
use super::queue::{Hand, Queue};
use super::registry::{Registration, Registry, SubscribeOptions};
use super::stats::SubscriberStats;
use crate::error::Error;
use crate::event::Event;
use crate::sync::{current, lock, spawn_named, Arc, JoinHandle, Mutex};

#[cfg(not(ringfold_loom))]
type ThreadId = std::thread::ThreadId;
#[cfg(ringfold_loom)]
type ThreadId = loom::thread::ThreadId;

/// Receives owned batches on its own delivery thread.
///
/// Implement `on_event` for per-event handling, or override `on_batch` to
/// take the whole batch (which it may clone and keep: a [`Batch`] is an
/// owned handle). A panic in either is caught and counted in the
/// subscriber's stats; it keeps receiving later batches.
///
/// ```
/// use ringfold::delivery::{Batch, Subscriber};
/// use ringfold::Event;
/// struct Count(u64);
/// impl Subscriber<u64> for Count {
///     fn on_event(&mut self, event: &Event<u64>) {
///         self.0 += *event.payload();
///     }
/// }
/// // Closures taking a batch are subscribers too.
/// fn takes<S: Subscriber<u64>>(_: S) {}
/// takes(Count(0));
/// takes(|batch: &Batch<u64>| println!("{} #{}", batch.prefix(), batch.seq()));
/// ```
pub trait Subscriber<T>: Send {
    /// One event.
    fn on_event(&mut self, event: &Event<T>);

    /// One batch; by default one `on_event` per event.
    fn on_batch(&mut self, batch: &Batch<T>) {
        for event in batch.events() {
            self.on_event(event);
        }
    }
}

/// Closures taking a batch are subscribers (`on_event` is never called:
/// the closure gets every batch whole).
impl<T, F> Subscriber<T> for F
where
    F: FnMut(&Batch<T>) + Send,
{
    fn on_event(&mut self, _event: &Event<T>) {}

    fn on_batch(&mut self, batch: &Batch<T>) {
        self(batch)
    }
}

#[cfg(not(ringfold_loom))]
std::thread_local! {
    static ON_DELIVERY_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
#[cfg(ringfold_loom)]
loom::thread_local! {
    static ON_DELIVERY_THREAD: std::cell::Cell<bool> = std::cell::Cell::new(false);
}

/// True on a delivery thread, i.e. inside a callback subscriber. `Engine::
/// flush` must refuse there (`Error::FlushFromSubscriber`): it would wait
/// for this very thread's queue to advance, which it cannot while the
/// callback runs.
pub(crate) fn on_delivery_thread() -> bool {
    ON_DELIVERY_THREAD.with(|f| f.get())
}

/// The delivery thread's loop: runs until the queue is closed and drained.
fn run<T>(queue: &Queue<T>, mut subscriber: Box<dyn Subscriber<T>>) {
    ON_DELIVERY_THREAD.with(|f| f.set(true));
    while let Ok(batch) = queue.pop(Hand::Callback, None) {
        let (windows, events) = (batch.merged(), batch.len());
        let panicked = catch_unwind(AssertUnwindSafe(|| subscriber.on_batch(&batch))).is_err();
        // Usually not the last handle (the flusher's pool keeps one), but if
        // it is, the payloads drop here: caught like the callback. (A merged
        // batch's merge goes back to its queue for the next merge.)
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(batch))) {
            // A window dropping its payloads raises one panic carrying how
            // many of their `Drop`s panicked (see `Sealed`'s `Drop`).
            queue.count_panics(panic.downcast_ref::<u64>().copied().unwrap_or(1));
        }
        queue.finish(windows, events, panicked);
    }
    if catch_unwind(AssertUnwindSafe(move || drop(subscriber))).is_err() {
        queue.count_panics(1);
    }
}

/// A callback subscription: dropping it unsubscribes.
///
/// Dropping (or [`unsubscribe`](Self::unsubscribe)) removes the
/// subscription and closes its queue: with `OnUnsubscribe::Deliver` the
/// delivery thread still delivers everything queued before it exits, with
/// `Discard` queued batches are counted and dropped. Dropping never waits
/// for the delivery thread, so a subscriber may drop its own subscription
/// from inside its callback: the batch in hand completes normally.
pub struct Subscription<T> {
    registration: Option<Registration<T>>,
    queue: Arc<Queue<T>>,
    worker: Option<JoinHandle<()>>,
    /// The delivery thread's id, recorded by the thread itself, so that
    /// `unsubscribe` called from it does not join itself.
    worker_id: Arc<Mutex<Option<ThreadId>>>,
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// Subscribes `subscriber` to the prefixes `pattern` matches, on a new
    /// delivery thread named after the subscriber.
    pub(crate) fn spawn(
        registry: &Registry<T>,
        pattern: &str,
        options: &SubscribeOptions,
        subscriber: Box<dyn Subscriber<T>>,
    ) -> Result<Self, Error> {
        let core = options.core_id()?;
        let (registration, queue) = registry.add(pattern, options)?;
        let worker_id = Arc::new(Mutex::new(None));
        let (q, id) = (queue.clone(), worker_id.clone());
        // std panics on a thread name with a NUL byte: a subscriber's name is
        // caller input, so it is cleaned rather than trusted.
        let thread_name = format!("ringfold-sub-{}", options.name().replace('\0', "?"));
        let spawned = spawn_named(thread_name, move || {
            *lock(&id) = Some(current().id());
            if let Some(core) = core {
                // Best effort (see `SubscribeOptions::pin_to_core`).
                core_affinity::set_for_current(core);
            }
            run(&q, subscriber);
        });
        let worker = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                // `registration` drops here: the subscription never existed.
                queue.close(super::queue::OnUnsubscribe::Discard);
                return Err(Error::Spawn(e));
            }
        };
        Ok(Subscription {
            registration: Some(registration),
            queue,
            worker: Some(worker),
            worker_id,
        })
    }
}

impl<T> Subscription<T> {
    /// The subscription's id (unique within its engine).
    pub fn id(&self) -> u64 {
        self.registration.as_ref().map_or(u64::MAX, |r| r.id())
    }

    /// The subscriber's counters now.
    pub fn stats(&self) -> SubscriberStats {
        self.queue.stats()
    }

    /// Unsubscribes, waits for the delivery thread to finish (delivering or
    /// discarding what is queued, as chosen at subscribe time) and returns
    /// the final counters. Called from the subscriber's own callback it
    /// does not wait (the thread finishes after the callback returns).
    pub fn unsubscribe(mut self) -> SubscriberStats {
        self.close();
        let own_thread = *lock(&self.worker_id) == Some(current().id());
        if let Some(worker) = self.worker.take() {
            if !own_thread {
                // The thread catches every panic, so `join` cannot fail in
                // practice; either way the counters below are final.
                let _ = worker.join();
            }
        }
        self.queue.stats()
    }

    /// Engine shutdown, after every queue was closed and drained: waits for
    /// the delivery thread to exit, keeping the subscription listed (so the
    /// final stats still show it). Not from the delivery thread itself.
    pub(crate) fn join(&mut self) {
        let own_thread = *lock(&self.worker_id) == Some(current().id());
        if let Some(worker) = self.worker.take() {
            if !own_thread {
                let _ = worker.join();
            }
        }
    }

    fn close(&mut self) {
        // Out of the registry first, so the flusher stops routing here.
        drop(self.registration.take());
        self.queue.close(self.queue.on_unsubscribe());
    }

    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn queue(&self) -> &Arc<Queue<T>> {
        &self.queue
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.close();
        // Detached, not joined: see the type's documentation.
        drop(self.worker.take());
    }
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id())
            .field("name", &self.queue.name())
            .finish()
    }
}
