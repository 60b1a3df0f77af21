//! The subscriber trait: batch-aware consumers, with a per-event default.

use crate::event::{Batch, Event};

/// Receives deliveries on the flusher thread.
///
/// Implement `on_event` for per-event handling; override `on_batch` to take
/// a whole batch at once. A panic in either is caught and counted
/// (`Stats::subscriber_panics`); the other subscribers still get the batch.
/// Subscribers may publish into the same engine through a `Producer` they
/// own. They must not hold an `Engine` handle (that would keep the engine
/// alive from inside itself); `flush()` from inside a subscriber returns
/// `Error::FlushFromSubscriber` instead of waiting on itself.
///
/// ```
/// use ringfold::{Engine, Event, Subscriber, Value};
/// struct Count(usize);
/// impl Subscriber<Value> for Count {
///     fn on_event(&mut self, _event: &Event<Value>) {
///         self.0 += 1;
///     }
/// }
/// let engine = Engine::<Value>::builder().subscriber(Count(0)).build()?;
/// engine.publish("data:users:created", 1)?;
/// engine.flush()?;
/// # engine.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Subscriber<T>: Send {
    /// One event.
    fn on_event(&mut self, event: &Event<T>);

    /// One batch; by default one `on_event` per event.
    fn on_batch(&mut self, batch: &Batch<'_, T>) {
        for event in batch.events() {
            self.on_event(event);
        }
    }
}

/// Closures taking a batch are subscribers.
///
/// ```
/// use ringfold::{Batch, Engine, Value};
/// let engine = Engine::<Value>::builder()
///     .subscriber(|batch: &Batch<'_, Value>| println!("{}: {}", batch.name(), batch.len()))
///     .build()?;
/// # engine.shutdown()?;
/// # Ok::<(), ringfold::Error>(())
/// ```
impl<T, F> Subscriber<T> for F
where
    F: FnMut(&Batch<'_, T>) + Send,
{
    fn on_event(&mut self, event: &Event<T>) {
        self(&Batch::single(event))
    }

    fn on_batch(&mut self, batch: &Batch<'_, T>) {
        self(batch)
    }
}
