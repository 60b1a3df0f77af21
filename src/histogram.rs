//! Histogram windows (`Policy::histogram`): one event name's samples in a
//! window, kept as a quantile [`Sketch`], and the reusable list a window's
//! histograms live in.
//!
//! Why a list of its own rather than a `Vec<Histogram>`: clearing a `Vec`
//! drops its elements, and with them their sketches' bucket arrays, so every
//! window would allocate them again. [`Histograms`] keeps cleared slots (and
//! their arrays) for the next window that reuses the list, the way the
//! fold's other window buffers are reused.

use std::fmt;

use crate::event::InternedStr;
use crate::intern::EventKey;
use crate::sketch::{Sketch, Summary};

/// One event name's samples within a window (`Policy::histogram`): count,
/// sum, min and max exactly, quantiles from a DDSketch-style [`Sketch`]
/// within relative error [`Sketch::DEFAULT_ALPHA`] (1 %).
///
/// The bound: [`quantile`](Self::quantile)`(q)` is within 1 % (relative)
/// of the exact sample of rank `⌊q (n - 1)⌋` (0-based, sorted), for
/// positive and negative samples alike, as long as the window's magnitudes
/// lie within a factor of about `6 · 10^17` of each other (past that the
/// lowest buckets are collapsed: high quantiles keep the bound, the lowest
/// lose it). Samples of magnitude below [`Sketch::MIN_MAGNITUDE`] (1e-9)
/// count as zero. Integer samples beyond 2^53 are rounded to `f64`.
///
/// A merged batch's histograms (a lagging subscriber's queue merged
/// windows) are the sketches' exact merges (bucket counts added): the same
/// quantiles as one window holding every sample, and the same bound.
///
/// `Clone` and `'static`: it owns its name, so a subscriber may keep it.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use ringfold::{Engine, Histogram, Policy};
/// let kept: Arc<Mutex<Vec<Histogram>>> = Arc::default();
/// let sink = kept.clone();
/// let engine = Engine::<f64>::builder()
///     .policy("rpc:*", Policy::histogram(Duration::from_secs(60), 100_000))
///     .sample_with(|v| Some(*v))
///     .subscriber(move |batch: &ringfold::Batch<f64>| {
///         sink.lock().unwrap().extend(batch.histograms().iter().cloned())
///     })
///     .build()?;
/// for ms in 1..=1000 {
///     engine.publish("rpc:get:latency_ms", ms as f64)?;
/// }
/// engine.shutdown()?;
/// let h = &kept.lock().unwrap()[0];
/// assert_eq!(h.name(), "rpc:get:latency_ms");
/// assert_eq!((h.count(), h.sum(), h.min(), h.max()), (1000, 500500.0, 1.0, 1000.0));
/// // The exact p99 (rank ⌊0.99 · 999⌋ = 989) is 990: within 1 %.
/// assert!((h.p99() - 990.0).abs() <= 0.01 * 990.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Histogram {
    pub(crate) name: InternedStr,
    pub(crate) key: EventKey,
    /// Boxed: a slot is then 32 bytes, so lists can keep room for slots
    /// up front (a lagging queue's merges do) at little cost, and a
    /// sketch moves between lists without copying its figures.
    pub(crate) sketch: Box<Sketch>,
}

impl Histogram {
    /// The event name.
    pub fn name(&self) -> &str {
        self.name.get()
    }

    /// Its key.
    pub fn key(&self) -> EventKey {
        self.key
    }

    /// Samples folded in (NaN and infinite ones are not: they count as
    /// dropped, `not_numeric`, like an aggregate's).
    pub fn count(&self) -> u64 {
        self.sketch.count()
    }

    /// Sum of the samples, as an `f64` (infinite only if the true sum is
    /// beyond `f64`).
    pub fn sum(&self) -> f64 {
        self.sketch.sum()
    }

    /// Arithmetic mean (`sum / count`).
    pub fn mean(&self) -> f64 {
        self.sketch.sum() / self.sketch.count() as f64
    }

    /// Smallest sample, exact. (A delivered histogram is never empty; an
    /// empty one would give NaN.)
    pub fn min(&self) -> f64 {
        self.sketch.min().unwrap_or(f64::NAN)
    }

    /// Largest sample, exact.
    pub fn max(&self) -> f64 {
        self.sketch.max().unwrap_or(f64::NAN)
    }

    /// The `q`-quantile (`q` clamped to `[0, 1]`, NaN read as 0): within
    /// 1 % of the exact sample of rank `⌊q (n - 1)⌋` (see the type's
    /// documentation for the bound).
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # use std::time::Duration;
    /// # use ringfold::{Batch, Engine, Policy, Value};
    /// let q = Arc::new(Mutex::new(Vec::new()));
    /// let sink = q.clone();
    /// let engine = Engine::<Value>::builder()
    ///     .policy("disk:*", Policy::histogram(Duration::from_secs(60), 10_000))
    ///     .sampled()
    ///     .subscriber(move |b: &Batch<Value>| {
    ///         for h in b.histograms() {
    ///             sink.lock().unwrap().push((h.quantile(0.0), h.quantile(0.25), h.quantile(1.0)));
    ///         }
    ///     })
    ///     .build()?;
    /// for v in [-8i64, -2, 0, 3, 100] {
    ///     engine.publish("disk:0:delta", v)?;
    /// }
    /// engine.flush()?;
    /// let (lo, q25, hi) = q.lock().unwrap()[0];
    /// // Each within 1 % of the exact sample of rank ⌊q · 4⌋: -8, -2, 100.
    /// assert!((lo - -8.0).abs() <= 0.08);
    /// assert!((q25 - -2.0).abs() <= 0.02);
    /// assert!((hi - 100.0).abs() <= 1.0);
    /// # engine.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quantile(&self, q: f64) -> f64 {
        self.sketch.quantile(q).unwrap_or(f64::NAN)
    }

    /// The median, `quantile(0.5)`.
    pub fn p50(&self) -> f64 {
        self.quantile(0.5)
    }

    /// `quantile(0.9)`.
    pub fn p90(&self) -> f64 {
        self.quantile(0.9)
    }

    /// `quantile(0.99)`.
    pub fn p99(&self) -> f64 {
        self.quantile(0.99)
    }

    /// `quantile(0.999)`.
    pub fn p999(&self) -> f64 {
        self.quantile(0.999)
    }

    /// count, sum, min, max, p50, p90, p99 and p99.9 at once (one pass per
    /// quantile over the buckets). `None` only for an empty histogram,
    /// which is never delivered.
    pub fn summary(&self) -> Option<Summary> {
        self.sketch.summary()
    }

    /// The sketch itself: its buckets (`Sketch::buckets`), or to merge it
    /// with others (`Sketch::merge`, exact).
    pub fn sketch(&self) -> &Sketch {
        &self.sketch
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("name", &self.name())
            .field("count", &self.count())
            .field("sum", &self.sum())
            .field("min", &self.min())
            .field("p50", &self.p50())
            .field("p99", &self.p99())
            .field("max", &self.max())
            .finish()
    }
}

/// A window's histograms, in order of first appearance: the live ones are
/// `slots[..len]`; the rest are cleared earlier ones whose sketches keep
/// their bucket arrays for reuse (see the module documentation).
#[derive(Default)]
pub(crate) struct Histograms {
    slots: Vec<Histogram>,
    len: usize,
}

impl Clone for Histograms {
    /// The live histograms only (a copy has no use for spare slots).
    fn clone(&self) -> Self {
        Histograms {
            slots: self.as_slice().to_vec(),
            len: self.len,
        }
    }
}

impl Histograms {
    pub(crate) fn as_slice(&self) -> &[Histogram] {
        &self.slots[..self.len]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots held, live or spare: zero for a list never used (the fold
    /// keeps only lists that have some).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Empties the list, keeping its slots and their bucket arrays.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// A new, empty histogram of `name` at the end, in a spare slot if
    /// there is one (allocation-free then, as long as the slot's arrays
    /// cover the new samples' span), else a new one. Returns its index.
    pub(crate) fn push(&mut self, name: InternedStr, key: EventKey) -> usize {
        self.push_pooled(name, key, &mut Vec::new())
    }

    /// `push`, taking a slot from `pool` (cleared histograms of other
    /// lists) before making a new one.
    fn push_pooled(
        &mut self,
        name: InternedStr,
        key: EventKey,
        pool: &mut Vec<Histogram>,
    ) -> usize {
        let at = self.len;
        if at == self.slots.len() {
            let slot = pool.pop().unwrap_or_else(|| Histogram {
                name: name.clone(),
                key,
                sketch: Box::default(),
            });
            self.slots.push(slot);
        }
        let slot = &mut self.slots[at];
        slot.name = name;
        slot.key = key;
        slot.sketch.clear();
        self.len += 1;
        at
    }

    /// Room for `n` slots without growing the list (slots only: their
    /// sketches come when used).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.slots.reserve(n.saturating_sub(self.slots.len()));
    }

    /// Empties the list into `pool`, at most `keep` slots in all there
    /// (the rest are dropped); the list keeps its own capacity.
    pub(crate) fn release_into(&mut self, pool: &mut Vec<Histogram>, keep: usize) {
        let room = keep.saturating_sub(pool.len()).min(self.slots.len());
        pool.extend(self.slots.drain(..room));
        self.slots.clear();
        self.len = 0;
    }

    /// The live histogram at `i`.
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut Histogram> {
        self.slots[..self.len].get_mut(i)
    }

    /// Merges `from` in: a name already here gets `from`'s buckets added
    /// (exact), a new one is appended, in a slot from `pool` if this list
    /// has no spare one. (Every sketch of the engine has the same
    /// accuracy, so `Sketch::merge` cannot refuse.) The merged sketches
    /// take their full bucket arrays at once: merged windows span an
    /// unpredictable range (as many windows as a backlog holds), and
    /// growing step by step would allocate whenever a backlog reached a
    /// wider one than the slot had seen.
    pub(crate) fn merge_from(&mut self, from: &[Histogram], pool: &mut Vec<Histogram>) {
        for h in from {
            let i = match self.as_slice().iter().position(|x| x.key == h.key) {
                Some(i) => i,
                None => self.push_pooled(h.name.clone(), h.key, pool),
            };
            if let Some(into) = self.get_mut(i) {
                into.sketch.reserve_full_for(&h.sketch);
                let _ = into.sketch.merge(&h.sketch);
            }
        }
    }

    /// Bytes held beyond the list's own struct: the slots and every
    /// slot's sketch with its bucket arrays, spare ones included (they
    /// stay resident).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Histogram>()
            + self
                .slots
                .iter()
                .map(|h| std::mem::size_of::<Sketch>() + h.sketch.heap_bytes())
                .sum::<usize>()
    }
}
