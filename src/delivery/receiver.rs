//! Pull-side subscriptions: a blocking receiver for plain threads and, with
//! the `stream` feature, a runtime-agnostic `futures_core::Stream`.

use std::fmt;
use std::time::Duration;

use super::batch::Batch;
use super::queue::{Hand, OnUnsubscribe, PopError, Queue};
use super::registry::{Registration, Registry, SubscribeOptions};
use super::stats::SubscriberStats;
use crate::error::Error;
use crate::sync::Arc;

/// Why [`Receiver::try_recv`] returned no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued right now.
    Empty,
    /// The subscription is closed and everything queued was received.
    Closed,
}

/// Why [`Receiver::recv_timeout`] returned no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing came within the timeout.
    Timeout,
    /// The subscription is closed and everything queued was received.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TryRecvError::Empty => "no batch queued",
            TryRecvError::Closed => "subscription closed",
        })
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvTimeoutError::Timeout => "timed out waiting for a batch",
            RecvTimeoutError::Closed => "subscription closed",
        })
    }
}

impl std::error::Error for TryRecvError {}
impl std::error::Error for RecvTimeoutError {}

/// A subscription consumed by pulling batches: from a plain thread
/// ([`recv`](Self::recv), [`recv_timeout`](Self::recv_timeout),
/// [`try_recv`](Self::try_recv)) or, with the `stream` feature, as a
/// `futures_core::Stream` of owned batches from any async runtime.
///
/// A batch counts as delivered when it is handed out. Dropping the receiver
/// unsubscribes and discards what is still queued (nobody is left to
/// receive it), counted in its stats.
///
/// ```
/// use ringfold::delivery::Receiver;
/// use ringfold::TryRecvError;
/// fn drain(rx: &Receiver<u64>) -> u64 {
///     let mut events = 0;
///     loop {
///         match rx.try_recv() {
///             Ok(batch) => events += batch.len() as u64,
///             Err(TryRecvError::Empty | TryRecvError::Closed) => return events,
///         }
///     }
/// }
/// # let _ = drain;
/// ```
pub struct Receiver<T> {
    queue: Arc<Queue<T>>,
    registration: Option<Registration<T>>,
}

impl<T> Receiver<T> {
    /// Subscribes a receiver to the prefixes `pattern` matches.
    pub(crate) fn new(
        registry: &Registry<T>,
        pattern: &str,
        options: &SubscribeOptions,
    ) -> Result<Self, Error> {
        let (registration, queue) = registry.add(pattern, options)?;
        Ok(Receiver {
            queue,
            registration: Some(registration),
        })
    }

    /// The next batch, waiting as long as it takes; `None` once the
    /// subscription is closed (engine shut down) and everything queued has
    /// been received.
    pub fn recv(&self) -> Option<Batch<T>> {
        self.queue.pop(Hand::Out, None).ok()
    }

    /// The next batch, waiting at most `timeout` (any duration: one the
    /// clock cannot add waits as long as it takes).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Batch<T>, RecvTimeoutError> {
        let deadline = crate::control::deadline_after(timeout);
        self.queue.pop(Hand::Out, deadline).map_err(|e| match e {
            PopError::Empty => RecvTimeoutError::Timeout,
            PopError::Closed => RecvTimeoutError::Closed,
        })
    }

    /// The next batch if one is queued.
    pub fn try_recv(&self) -> Result<Batch<T>, TryRecvError> {
        self.queue.try_pop(Hand::Out).map_err(|e| match e {
            PopError::Empty => TryRecvError::Empty,
            PopError::Closed => TryRecvError::Closed,
        })
    }

    /// The subscription's id (unique within its engine).
    pub fn id(&self) -> u64 {
        self.registration.as_ref().map_or(u64::MAX, |r| r.id())
    }

    /// The subscriber's counters now.
    pub fn stats(&self) -> SubscriberStats {
        self.queue.stats()
    }

    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn queue(&self) -> &Arc<Queue<T>> {
        &self.queue
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        drop(self.registration.take());
        self.queue.close(OnUnsubscribe::Discard);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("id", &self.id())
            .field("name", &self.queue.name())
            .finish()
    }
}

/// Batches as they are delivered; the stream ends when the subscription
/// is closed and drained. Runtime-agnostic: it registers the polling
/// task's waker, which the flusher wakes when it queues a batch.
#[cfg(feature = "stream")]
impl<T> futures_core::Stream for Receiver<T> {
    type Item = Batch<T>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Batch<T>>> {
        self.queue.poll_pop(cx)
    }
}
