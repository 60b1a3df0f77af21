//! What subscribers see inside a batch: events and aggregates (the owned
//! batch itself is `delivery::Batch`).

use std::fmt;
use std::time::{Duration, Instant};

use crate::intern::{EventKey, NameMeta};

/// An interned string, owned: a reference-counted handle to the engine's
/// copy of it.
///
/// Held by [`Aggregate`], which is `Clone + Send + 'static` and may be kept
/// by a subscriber for as long as it likes, long after the engine and its
/// name table are gone. So it owns its string (one reference-count
/// increment per aggregated name per window, not per event) rather than
/// borrowing the interner's copy; no `unsafe` here.
#[derive(Clone)]
pub(crate) struct InternedStr(std::sync::Arc<str>);

impl InternedStr {
    pub(crate) fn new(s: &std::sync::Arc<str>) -> Self {
        InternedStr(s.clone())
    }
    #[inline]
    pub(crate) fn get(&self) -> &str {
        &self.0
    }
}

/// A borrowed thin pointer to an interned name's [`NameMeta`] (name, prefix
/// and key): one word per event instead of two fat string pointers and the
/// key.
///
/// Why the pointee outlives every dereference: every `NameMeta` is held in
/// an `Arc` by the interner's append-only name store (`intern/`), which
/// never moves or frees an entry while the interner or any of its
/// `Keepalive` handles lives. A `NameRef` is held only by crate-internal
/// types and by [`Event`], and events never leave the crate by value: the
/// flusher owns them while folding (the fold holds a `Keepalive`), and a
/// sealed batch that carries them to subscribers holds a keep-alive of its
/// own, so every `&Event` a subscriber gets borrows from something that
/// keeps the names alive. `Event` is neither `Clone` nor constructible
/// outside the crate (its `compile_fail` examples check both), so safe
/// code cannot hold an event past its batch. [`Aggregate`], which
/// subscribers may keep, owns its name instead ([`InternedStr`]).
#[derive(Clone, Copy)]
pub(crate) struct NameRef(*const NameMeta);

impl NameRef {
    #[inline]
    pub(crate) fn new(meta: &std::sync::Arc<NameMeta>) -> Self {
        NameRef(std::sync::Arc::as_ptr(meta))
    }
    #[inline]
    pub(crate) fn get(&self) -> &NameMeta {
        // SAFETY: see the type's documentation: the pointee is owned by the
        // interner's name store, kept alive by every holder of this pointer
        // (the fold's `Keepalive`, a sealed batch's keep-alive).
        unsafe { &*self.0 }
    }
}

// SAFETY: the pointee is immutable after creation and shared through `Arc`s
// (its fields are `Arc<str>`s and a `Copy` key, all `Send + Sync`).
unsafe impl Send for NameRef {}
// SAFETY: as above.
unsafe impl Sync for NameRef {}

/// Drops `value` inside `catch_unwind`; true if its `Drop` panicked.
///
/// Payloads are user types: a panicking `Drop` must never take the flusher
/// or a delivery thread down, nor abort the process as a second panic
/// during unwinding would. Every place that drops a payload outside the
/// user's own code goes through this (or `delivery::clear_events`, which
/// does it per event) and counts what it returns. Free for types without
/// drop glue.
#[inline]
pub(crate) fn drop_caught<V>(value: V) -> bool {
    if !std::mem::needs_drop::<V>() {
        drop(value);
        return false;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value))).is_err()
}

/// One published event, as delivered to subscribers.
///
/// Timestamps: by default an event is stamped when the flusher takes it off
/// its ring (one clock read per sweep, so the hot path reads no clock);
/// with `EngineBuilder::precise_timestamps(true)` it is stamped at publish.
///
/// Subscribers only ever borrow events (`&Event`, from the batch that holds
/// them), because an event points into the engine's name table (see
/// `NameRef`) instead of owning its name: keep the payload or the name, not
/// the event. An `Event` cannot be cloned out of its batch:
///
/// ```compile_fail
/// fn keep(event: &ringfold::Event<u64>) -> ringfold::Event<u64> {
///     <ringfold::Event<u64> as Clone>::clone(event)
/// }
/// ```
///
/// nor can the borrow outlive the batch it came from:
///
/// ```compile_fail
/// fn keep(event: &ringfold::Event<u64>) -> &'static ringfold::Event<u64> {
///     event
/// }
/// ```
///
/// What may be kept is owned:
///
/// ```
/// fn keep(event: &ringfold::Event<u64>) -> (String, u64) {
///     (event.name().to_owned(), *event.payload())
/// }
/// ```
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
///
/// `Display` writes it as lower-case words, for logs and wire formats:
/// `interval`, `count`, `urgent`, `passthrough`, `flush`, `shutdown`
/// (`Debug` writes the variant's name).
///
/// ```
/// use ringfold::BatchReason;
/// assert_eq!(BatchReason::Count.to_string(), "count");
/// assert_eq!(format!("closed by {}", BatchReason::Interval), "closed by interval");
/// assert_eq!(format!("{:?}", BatchReason::Flush), "Flush");
/// ```
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

impl BatchReason {
    /// The reason as one lower-case word, as `Display` writes it and the
    /// wire format carries it.
    ///
    /// ```
    /// assert_eq!(ringfold::BatchReason::Urgent.as_str(), "urgent");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BatchReason::Interval => "interval",
            BatchReason::Count => "count",
            BatchReason::Urgent => "urgent",
            BatchReason::Passthrough => "passthrough",
            BatchReason::Flush => "flush",
            BatchReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for BatchReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// `Aggregate::float_sum` holds the float sum times `2^-FLOAT_SUM_SHIFT`.
pub(crate) const FLOAT_SUM_SHIFT: i32 = 64;
/// `2^FLOAT_SUM_SHIFT`: scales `Aggregate::float_sum` back.
const FLOAT_SUM_SCALE: f64 = (1u128 << FLOAT_SUM_SHIFT) as f64;

/// Numeric summary of one event name within a window (`Policy::aggregate`).
///
/// `Clone` (not `Copy`) and `'static`: it owns its name, so a subscriber may
/// keep aggregates after the engine is gone.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use ringfold::{Aggregate, Engine, Policy};
/// let kept: Arc<Mutex<Vec<Aggregate>>> = Arc::default();
/// let sink = kept.clone();
/// let engine = Engine::<f64>::builder()
///     .policy("gpu:*", Policy::aggregate(Duration::from_secs(60), 1000))
///     .sample_with(|v| Some(*v))
///     .subscriber(move |batch: &ringfold::Batch<f64>| {
///         sink.lock().unwrap().extend(batch.aggregates().iter().cloned())
///     })
///     .build()?;
/// engine.publish("gpu:0:util", 1.0)?;
/// engine.shutdown()?;
/// drop(engine);
/// let kept = kept.lock().unwrap();
/// assert_eq!(kept[0].name(), "gpu:0:util");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Aggregate {
    pub(crate) name: InternedStr,
    pub(crate) key: EventKey,
    /// The numeric summary, accumulated by `fold::numeric`.
    pub(crate) count: u64,
    /// Exact sum of the integer readings.
    pub(crate) int_sum: i128,
    /// Sum of the float readings (and of integer partial sums that would
    /// have overflowed `int_sum`), scaled by `2^-FLOAT_SUM_SHIFT`
    /// (`fold::numeric::scaled`): exact scaling by a power of two that
    /// keeps the sum of up to 2^64 readings of `f64::MAX` finite, so the
    /// mean never overflows (`sum()` scales back, and is infinite only when
    /// the true sum is beyond `f64`). Merging aggregates adds these as
    /// they are.
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
    ///     .subscriber(move |b: &Batch<Value>| {
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
        self.int_sum as f64 + self.float_sum * FLOAT_SUM_SCALE
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
    /// Arithmetic mean. Computed without overflow: the mean of readings
    /// near `f64::MAX` is finite even though their sum is not.
    ///
    /// ```
    /// # use ringfold::{Batch, Engine, Policy, Value};
    /// # use std::sync::{Arc, Mutex};
    /// # use std::time::Duration;
    /// let means = Arc::new(Mutex::new(Vec::new()));
    /// let sink = means.clone();
    /// let engine = Engine::<Value>::builder()
    ///     .policy("gpu:*", Policy::aggregate(Duration::from_secs(60), 1000))
    ///     .sampled()
    ///     .subscriber(move |b: &Batch<Value>| {
    ///         for a in b.aggregates() {
    ///             sink.lock().unwrap().push((a.mean(), a.sum()));
    ///         }
    ///     })
    ///     .build()?;
    /// engine.publish("gpu:0:x", f64::MAX)?;
    /// engine.publish("gpu:0:x", f64::MAX)?;
    /// engine.flush()?;
    /// assert_eq!(means.lock().unwrap()[0], (f64::MAX, f64::INFINITY));
    /// # engine.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mean(&self) -> f64 {
        let n = self.count as f64;
        // Each part divided first: the scaled float sum over `n`, scaled
        // back, is at most the largest reading's magnitude.
        self.int_sum as f64 / n + self.float_sum / n * FLOAT_SUM_SCALE
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
