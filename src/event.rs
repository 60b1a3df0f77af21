//! What subscribers see: events, batches and aggregates.

use std::fmt;
use std::time::{Duration, Instant};

use crate::intern::{EventKey, NameMeta};

/// A borrowed pointer to an interned string.
///
/// Interned strings are `Arc<str>`s held by every interner snapshot; ids are
/// never reused and every later snapshot holds the same `Arc`s, so the bytes
/// stay put for as long as any snapshot lives. Events and aggregates are
/// created and owned only by the flusher, which keeps its latest snapshot
/// alive for longer than any event it holds (subscribers only ever get
/// `&Event`), so dereferencing from `&self` is sound. This saves two atomic
/// reference-count operations per event on the flusher.
#[derive(Clone, Copy)]
pub(crate) struct InternedStr(*const str);

impl InternedStr {
    pub(crate) fn new(s: &std::sync::Arc<str>) -> Self {
        InternedStr(&**s as *const str)
    }
    #[inline]
    pub(crate) fn get(&self) -> &str {
        // SAFETY: see the type's documentation: the pointee is owned by an
        // interner snapshot that outlives every holder of this pointer.
        unsafe { &*self.0 }
    }
}

// SAFETY: the pointee is immutable `str` data shared through `Arc`s.
unsafe impl Send for InternedStr {}
// SAFETY: as above.
unsafe impl Sync for InternedStr {}

/// A borrowed thin pointer to an interned name's [`NameMeta`] (name, prefix
/// and key): one word per event instead of two fat string pointers and the
/// key.
///
/// Sound for the same reason as [`InternedStr`]: every `NameMeta` is held in
/// an `Arc` by the snapshot that introduced its name and by every later
/// snapshot (snapshots are prefix-extending clones that share the `Arc`s),
/// so it stays put for as long as any snapshot lives; events are created
/// and owned only by the flusher, which keeps its latest snapshot alive
/// longer than any event it holds (subscribers only get `&Event`).
#[derive(Clone, Copy)]
pub(crate) struct NameRef(*const NameMeta);

impl NameRef {
    #[inline]
    pub(crate) fn new(meta: &std::sync::Arc<NameMeta>) -> Self {
        NameRef(std::sync::Arc::as_ptr(meta))
    }
    #[inline]
    pub(crate) fn get(&self) -> &NameMeta {
        // SAFETY: see the type's documentation: the pointee is owned by an
        // interner snapshot that outlives every holder of this pointer.
        unsafe { &*self.0 }
    }
}

// SAFETY: the pointee is immutable after creation and shared through `Arc`s
// (its fields are `Arc<str>`s and a `Copy` key, all `Send + Sync`).
unsafe impl Send for NameRef {}
// SAFETY: as above.
unsafe impl Sync for NameRef {}

/// One published event, as delivered to subscribers.
///
/// Timestamps: by default an event is stamped when the flusher takes it off
/// its ring (one clock read per sweep, so the hot path reads no clock);
/// with `EngineBuilder::precise_timestamps(true)` it is stamped at publish.
pub struct Event<T> {
    /// Name, prefix and key, behind one thin pointer.
    pub(crate) meta: NameRef,
    pub(crate) sub_key: u64,
    /// Nanoseconds since the engine's epoch (`NameMeta::epoch`): 8 bytes
    /// instead of an `Instant`'s 16, so the flusher copies 32 bytes per
    /// `u64` event.
    pub(crate) nanos: u64,
    pub(crate) payload: T,
}

impl<T> Event<T> {
    /// The full event name, e.g. `data:users:created`.
    pub fn name(&self) -> &str {
        &self.meta.get().name
    }
    /// The prefix, e.g. `data:users`.
    pub fn prefix(&self) -> &str {
        &self.meta.get().prefix
    }
    /// The interned key.
    pub fn key(&self) -> EventKey {
        self.meta.get().key
    }
    /// The caller's sub-key from `publish_with_sub_key` (0 otherwise).
    pub fn sub_key(&self) -> u64 {
        self.sub_key
    }
    /// When the event was published (precise mode) or swept (default).
    pub fn timestamp(&self) -> Instant {
        self.meta.get().epoch + Duration::from_nanos(self.nanos)
    }
    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }
}

impl<T: fmt::Debug> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name())
            .field("sub_key", &self.sub_key)
            .field("payload", &self.payload)
            .finish()
    }
}

/// Why a batch was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchReason {
    /// The prefix's window elapsed since its first pending event.
    Interval,
    /// The prefix's count threshold was reached.
    Count,
    /// An urgent event arrived; the batch ends with it.
    Urgent,
    /// A passthrough event (delivered on the sweep that took it).
    Passthrough,
    /// `Engine::flush` or `Engine::flush_prefix`.
    Flush,
    /// Shutdown drained the engine.
    Shutdown,
}

/// Numeric summary of one event name within a window (`Policy::aggregate`).
#[derive(Clone, Copy)]
pub struct Aggregate {
    pub(crate) name: InternedStr,
    pub(crate) key: EventKey,
    /// The numeric summary, accumulated by `fold::numeric`.
    pub(crate) count: u64,
    /// Exact sum of the integer readings.
    pub(crate) int_sum: i128,
    /// Sum of the float readings (and of integer partial sums that would
    /// have overflowed `int_sum`).
    pub(crate) float_sum: f64,
    /// Every reading was an integer and `int_sum` is their exact sum.
    pub(crate) exact: bool,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) first: (f64, Instant),
    pub(crate) last: (f64, Instant),
}

impl Aggregate {
    /// The event name aggregated.
    pub fn name(&self) -> &str {
        self.name.get()
    }
    /// Its key.
    pub fn key(&self) -> EventKey {
        self.key
    }
    /// Number of readings.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Sum of readings, as a float: the exact integer sum plus the float
    /// readings' sum. Only finite readings are aggregated (NaN and the
    /// infinities are rejected as not numeric), so it is never NaN.
    ///
    /// ```
    /// # use ringfold::{Batch, Engine, Policy, Value};
    /// # use std::sync::{Arc, Mutex};
    /// # use std::time::Duration;
    /// let sums = Arc::new(Mutex::new(Vec::new()));
    /// let sink = sums.clone();
    /// let engine = Engine::<Value>::builder()
    ///     .policy("gpu:*", Policy::aggregate(Duration::from_secs(60), 1000))
    ///     .sampled()
    ///     .subscriber(move |b: &Batch<'_, Value>| {
    ///         for a in b.aggregates() {
    ///             sink.lock().unwrap().push((a.count(), a.sum(), a.sum_exact()));
    ///         }
    ///     })
    ///     .build()?;
    /// engine.publish("gpu:0:energy", 1u64 << 53)?;
    /// engine.publish("gpu:0:energy", 1u64)?;
    /// engine.publish("gpu:0:energy", f64::NAN)?; // not a number: dropped
    /// engine.flush()?;
    /// let exact = (1i128 << 53) + 1; // beyond f64's exact integers
    /// assert_eq!(sums.lock().unwrap()[0], (2, exact as f64, Some(exact)));
    /// assert_eq!(engine.stats().dropped.not_numeric, 1);
    /// # engine.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sum(&self) -> f64 {
        self.int_sum as f64 + self.float_sum
    }
    /// The exact sum, when every reading of the window was an integer
    /// (`Sample::sample` gave `Number::Int`); `None` once a float reading
    /// was folded in.
    pub fn sum_exact(&self) -> Option<i128> {
        self.exact.then_some(self.int_sum)
    }
    /// Smallest reading (integers beyond 2^53 rounded to `f64`).
    pub fn min(&self) -> f64 {
        self.min
    }
    /// Largest reading.
    pub fn max(&self) -> f64 {
        self.max
    }
    /// Arithmetic mean.
    pub fn mean(&self) -> f64 {
        self.sum() / self.count as f64
    }
    /// First reading of the window and when it was stamped.
    pub fn first(&self) -> (f64, Instant) {
        self.first
    }
    /// Last reading of the window and when it was stamped.
    pub fn last(&self) -> (f64, Instant) {
        self.last
    }
}

impl fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate")
            .field("name", &self.name())
            .field("count", &self.count)
            .field("sum", &self.sum())
            .field("min", &self.min)
            .field("mean", &self.mean())
            .field("max", &self.max)
            .finish()
    }
}

/// One consolidated delivery for one prefix.
pub struct Batch<'a, T> {
    pub(crate) prefix: &'a str,
    pub(crate) name: &'a str,
    pub(crate) events: &'a [Event<T>],
    pub(crate) aggregates: &'a [Aggregate],
    pub(crate) reason: BatchReason,
    pub(crate) dropped: u64,
    pub(crate) folded: u64,
}

impl<'a, T> Batch<'a, T> {
    /// A batch of one event, as the closure subscriber's `on_event` sees it.
    pub(crate) fn single(event: &'a Event<T>) -> Self {
        Batch {
            prefix: event.prefix(),
            name: "",
            events: std::slice::from_ref(event),
            aggregates: &[],
            reason: BatchReason::Passthrough,
            dropped: 0,
            folded: 0,
        }
    }
    /// The prefix, e.g. `data:users`.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }
    /// `"<prefix>:batch"`.
    pub fn name(&self) -> &'a str {
        self.name
    }
    /// Number of events carried (aggregated readings are in `aggregates`).
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// True if no events are carried.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    /// The events, in publish order per producer (for `latest`: the
    /// survivors, in the order of their first appearance in the window).
    pub fn events(&self) -> &'a [Event<T>] {
        self.events
    }
    /// Per-name numeric summaries (`Policy::aggregate`), in order of first
    /// appearance.
    pub fn aggregates(&self) -> &'a [Aggregate] {
        self.aggregates
    }
    /// Why the batch was emitted.
    pub fn reason(&self) -> BatchReason {
        self.reason
    }
    /// Events of this prefix rejected (ring full, urgent timeout, not
    /// numeric) since the previous batch of the prefix: loss, in band.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// Events folded away in this window: replaced by a later value of the
    /// same key (`latest`) or summarised into `aggregates`.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

impl<T> fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("prefix", &self.prefix)
            .field("len", &self.events.len())
            .field("aggregates", &self.aggregates.len())
            .field("reason", &self.reason)
            .field("dropped", &self.dropped)
            .field("folded", &self.folded)
            .finish()
    }
}

#[cfg(all(test, not(ringfold_loom)))]
mod tests {
    use super::*;

    #[test]
    fn event_is_small() {
        // One thin name pointer, sub-key, timestamp, payload: the flusher
        // copies one of these per event.
        assert!(std::mem::size_of::<Event<u64>>() <= 32);
    }
}
