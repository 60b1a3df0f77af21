//! Owned, shareable batches and the pool that recycles their buffers.
//!
//! A sealed window becomes one [`Sealed`] behind an `Arc`; every subscriber
//! that receives it gets a [`Batch`] handle (one reference count plus its own
//! `lagged` figure), so a delivery to N subscribers copies no event. The
//! flusher's [`BatchPool`] keeps the recently sealed `Arc`s and reuses one as
//! soon as no handle to it is left, so the steady state allocates nothing.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime};

use super::events::Events;
use super::merge::{Merge, Spares};
use crate::event::{Aggregate, BatchReason, Event};
use crate::histogram::{Histogram, Histograms};
use crate::sync::Arc;

/// Keeps the engine's interned names alive. Events hold raw thin pointers to
/// interned `NameMeta`s (see `event::NameRef`), which are valid only while
/// an interner snapshot lives; a batch that may outlive the flusher's own
/// snapshot therefore carries one. A std `Arc` (not `crate::sync`): it is
/// plain ownership, never part of a modelled hand-off, and loom's `Arc`
/// cannot hold an unsized `dyn Any`.
pub(crate) type KeepAlive = std::sync::Arc<dyn Any + Send + Sync>;

/// One `(Instant, SystemTime)` pair read together, from which every batch's
/// wall-clock times are derived: a batch reads no clock beyond the
/// monotonic reads the flusher already makes, and its wall-clock times keep
/// the monotonic ones' order and spacing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch {
    pub(crate) instant: Instant,
    pub(crate) system: SystemTime,
}

impl Epoch {
    /// Reads both clocks now.
    pub(crate) fn now() -> Self {
        Epoch {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// The wall-clock time of `at`. Checked arithmetic: an instant the
    /// `SystemTime` range cannot express saturates to the epoch itself
    /// rather than panicking.
    pub(crate) fn system_at(&self, at: Instant) -> SystemTime {
        let t = match at.checked_duration_since(self.instant) {
            Some(after) => self.system.checked_add(after),
            None => self.system.checked_sub(self.instant.duration_since(at)),
        };
        t.unwrap_or(self.system)
    }
}

/// A closed window's contents, shared by every [`Batch`] handle to it.
///
/// Field order matters: `keep_alive` is declared (and so dropped) last, after
/// the events whose name pointers it keeps valid.
pub(crate) struct Sealed<T> {
    pub(crate) prefix: std::sync::Arc<str>,
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) prefix_id: u32,
    pub(crate) events: Vec<Event<T>>,
    pub(crate) aggregates: Vec<Aggregate>,
    pub(crate) histograms: Histograms,
    pub(crate) reason: BatchReason,
    pub(crate) seq: u64,
    pub(crate) opened: Instant,
    pub(crate) closed: Instant,
    pub(crate) epoch: Epoch,
    pub(crate) dropped: u64,
    pub(crate) folded: u64,
    /// Holds `latest` events (set by the fold, which knows without looking
    /// at each event): merging it needs survivors (see `merge`).
    pub(crate) latest: bool,
    /// Budget units and bytes, measured when sealed (see `footprint`).
    units: u64,
    bytes: u64,
    pub(crate) keep_alive: Option<KeepAlive>,
}

/// What the flusher knows about a window when it seals it (everything but
/// the buffers, which are swapped in).
#[derive(Clone)]
pub(crate) struct Header {
    pub(crate) prefix: std::sync::Arc<str>,
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) prefix_id: u32,
    pub(crate) reason: BatchReason,
    pub(crate) seq: u64,
    pub(crate) opened: Instant,
    pub(crate) closed: Instant,
    pub(crate) epoch: Epoch,
    pub(crate) dropped: u64,
    pub(crate) folded: u64,
    /// The window holds `latest` events.
    pub(crate) latest: bool,
    pub(crate) keep_alive: KeepAlive,
}

impl<T> Sealed<T> {
    /// A cleared batch. `blank` (the pool's one empty name) is cloned into
    /// its name fields, so a batch costs no allocation beyond its own and
    /// its event buffer's (`events` capacity).
    fn empty(epoch: Epoch, blank: &std::sync::Arc<str>, events: usize) -> Self {
        Sealed {
            prefix: blank.clone(),
            name: blank.clone(),
            prefix_id: 0,
            events: Vec::with_capacity(events),
            aggregates: Vec::new(),
            histograms: Histograms::default(),
            reason: BatchReason::Flush,
            seq: 0,
            opened: epoch.instant,
            closed: epoch.instant,
            epoch,
            dropped: 0,
            folded: 0,
            latest: false,
            units: 0,
            bytes: 0,
            keep_alive: None,
        }
    }

    /// Does the window hold `latest` survivors, aggregates or histograms,
    /// which merging with a later window of the prefix can shrink (see
    /// `merge`)?
    pub(crate) fn holds_final_values(&self) -> bool {
        !self.aggregates.is_empty() || !self.histograms.is_empty() || self.latest
    }

    /// Bytes this window holds: its own struct plus its buffers' capacity
    /// (what a queue holding it keeps resident; see `queue::Budget`).
    /// Measured once, when it is sealed (`measure`): every queue it goes
    /// to counts it.
    pub(crate) fn footprint(&self) -> u64 {
        self.bytes
    }

    /// Notes its budget units (events, aggregates and histograms) and its
    /// bytes, once its contents are in place.
    fn measure(&mut self) {
        let events = self.events.capacity() * std::mem::size_of::<Event<T>>();
        let aggregates = self.aggregates.capacity() * std::mem::size_of::<Aggregate>();
        // The sketches' bucket arrays, spare slots' included (resident).
        let histograms = self.histograms.heap_bytes();
        self.bytes = (std::mem::size_of::<Self>() + events + aggregates + histograms) as u64;
        self.units =
            (self.events.len() + self.aggregates.len() + self.histograms.as_slice().len()) as u64;
    }

    fn set_header(&mut self, h: Header) {
        self.prefix = h.prefix;
        self.name = h.name;
        self.prefix_id = h.prefix_id;
        self.reason = h.reason;
        self.seq = h.seq;
        self.opened = h.opened;
        self.closed = h.closed;
        self.epoch = h.epoch;
        self.dropped = h.dropped;
        self.folded = h.folded;
        self.latest = h.latest;
        self.keep_alive = Some(h.keep_alive);
    }
}

/// Drops every event of `events`, each inside `catch_unwind`, and returns
/// how many payload drops panicked. A panicking payload `Drop` must never
/// take the flusher (or a delivery thread) down, and dropping one element
/// at a time means a second panicking payload is caught too instead of
/// aborting the process as a double panic inside `Vec::clear` would.
/// Payloads without drop glue cost nothing: the vector is just truncated.
pub(crate) fn clear_events<T>(events: &mut Vec<Event<T>>) -> u64 {
    if !std::mem::needs_drop::<T>() {
        events.clear();
        return 0;
    }
    let mut panics = 0;
    while let Some(event) = events.pop() {
        panics += u64::from(crate::event::drop_caught(event));
    }
    panics
}

impl<T> Drop for Sealed<T> {
    /// The payloads are dropped one by one, each `Drop` caught
    /// ([`clear_events`]): inside the `Vec`'s own drop, a second panicking
    /// payload (while the first one unwinds) would abort the process. The
    /// pool drops its batches' payloads itself and counts each panic; a
    /// batch whose last handle goes elsewhere (a delivery thread, a
    /// receiver's user) raises one panic after all its payloads are
    /// dropped, for that holder to catch and count (its payload is the
    /// number of panicking payloads, a `u64`), unless it is already
    /// unwinding: then none, rather than an abort.
    fn drop(&mut self) {
        let panics = clear_events(&mut self.events);
        if panics > 0 && !std::thread::panicking() {
            std::panic::resume_unwind(Box::new(panics));
        }
    }
}

/// One delivered batch: an owned, cheap handle to a sealed window.
///
/// Every subscriber that receives the same window gets a handle to the same
/// shared contents (cloning a `Batch` costs one reference count); a handle
/// may be kept, cloned, or sent to another thread or task, and nothing it
/// gives out can dangle (it keeps the engine's interned names alive).
///
/// ```
/// use ringfold::delivery::Batch;
///
/// /// Detects loss and duplicates with the per-prefix sequence number.
/// fn check(last_seq: &mut Option<u64>, batch: &Batch<u64>) -> Result<(), String> {
///     if let Some(last) = *last_seq {
///         if batch.seq() <= last {
///             return Err(format!("{}: duplicate #{}", batch.prefix(), batch.seq()));
///         }
///         if batch.seq() != last + 1 {
///             return Err(format!("{}: gap before #{}", batch.prefix(), batch.seq()));
///         }
///     }
///     *last_seq = Some(batch.seq());
///     Ok(())
/// }
/// # let _ = check;
/// ```
pub struct Batch<T> {
    /// The first (or only) window: the batch's header.
    sealed: Arc<Sealed<T>>,
    lagged: u64,
    /// Later windows of the prefix merged in by a lagging subscriber's
    /// queue (`None`: one window, the common case, costing nothing).
    /// Shared by clones; the last one sends it home (see `Drop`).
    merge: Option<Arc<Merge<T>>>,
}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        if let Some(mut merge) = self.merge.take() {
            let home = Arc::get_mut(&mut merge).and_then(|m| m.home.clone());
            if let Some(home) = home {
                home.park(merge);
            }
        }
    }
}

impl<T> Clone for Batch<T> {
    fn clone(&self) -> Self {
        Batch {
            sealed: self.sealed.clone(),
            lagged: self.lagged,
            merge: self.merge.clone(),
        }
    }
}

impl<T> Batch<T> {
    /// A handle to `sealed` for one receiver (`lagged` = 0 until the queue
    /// that hands it out sets it).
    pub(crate) fn new(sealed: Arc<Sealed<T>>) -> Self {
        Batch {
            sealed,
            lagged: 0,
            merge: None,
        }
    }

    pub(crate) fn set_lagged(&mut self, lagged: u64) {
        self.lagged = lagged;
    }

    /// Every window this batch holds a handle to: the first, and the
    /// merge (holding the merged ones) if any.
    pub(crate) fn into_parts(mut self) -> (Arc<Sealed<T>>, Option<Arc<Merge<T>>>) {
        let merge = self.merge.take();
        (self.sealed.clone(), merge)
    }

    /// The prefix id the batch belongs to.
    pub(crate) fn prefix_id(&self) -> u32 {
        self.sealed.prefix_id
    }

    /// Merges `next`, the next window of this batch's prefix, in, starting
    /// the merge from `spares` if this is the first. Returns the events
    /// superseded (`latest`). Only for a batch still queued (nobody else
    /// holds its merge).
    pub(crate) fn absorb(&mut self, next: &Arc<Sealed<T>>, spares: &Arc<Spares<T>>) -> u64 {
        let merge = match &mut self.merge {
            Some(m) => m,
            slot => {
                let mut m = Spares::take(spares);
                if let Some(inner) = Arc::get_mut(&mut m) {
                    inner.start(&self.sealed);
                }
                slot.insert(m)
            }
        };
        if Arc::get_mut(merge).is_none() {
            // Cannot happen (a queued batch is not shared); a private copy
            // keeps this path panic-free regardless.
            *merge = Arc::new((**merge).clone());
        }
        match Arc::get_mut(merge) {
            Some(m) => m.absorb(next),
            None => 0,
        }
    }

    /// Events (and aggregates and histograms) held, and bytes held: what
    /// counts against a queue's `Budget`.
    pub(crate) fn footprint(&self) -> (u64, u64) {
        match &self.merge {
            None => (self.sealed.units, self.sealed.bytes),
            Some(m) => (
                (self.len() + self.aggregates().len() + self.histograms().len()) as u64,
                m.segment_bytes + m.own_bytes(),
            ),
        }
    }

    /// True if a merge could lose nothing by letting windows go: the batch
    /// holds `latest` survivors, aggregates or histograms (small, and what
    /// a lagging subscriber must end on), so the queue drops other batches
    /// first.
    pub(crate) fn holds_final_values(&self) -> bool {
        match &self.merge {
            Some(m) => m.picked || !m.aggregates.is_empty() || !m.histograms.is_empty(),
            None => self.sealed.holds_final_values(),
        }
    }

    /// The oldest window's close time (how far behind a queue is).
    pub(crate) fn first_closed_at(&self) -> Instant {
        self.sealed.closed
    }

    /// The prefix, e.g. `data:users`.
    ///
    /// ```
    /// fn route(batch: &ringfold::delivery::Batch<u64>) -> &str {
    ///     batch.prefix().split(':').next().unwrap_or("")
    /// }
    /// # let _ = route;
    /// ```
    pub fn prefix(&self) -> &str {
        &self.sealed.prefix
    }

    /// `"<prefix>:batch"`.
    pub fn name(&self) -> &str {
        &self.sealed.name
    }

    /// Number of events carried (aggregated readings are in
    /// [`aggregates`](Self::aggregates)).
    pub fn len(&self) -> usize {
        self.merge
            .as_ref()
            .map_or(self.sealed.events.len(), |m| m.len)
    }

    /// True if no events are carried.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, in publish order per producer (for `latest`: the
    /// survivors, in the order of their first appearance in the window, or
    /// across the windows of a merged batch).
    ///
    /// ```
    /// fn total(batch: &ringfold::delivery::Batch<u64>) -> u64 {
    ///     batch.events().iter().map(|e| *e.payload()).sum()
    /// }
    /// # let _ = total;
    /// ```
    pub fn events(&self) -> Events<'_, T> {
        match &self.merge {
            None => Events::slice(&self.sealed.events),
            Some(m) => Events::merged(&m.segments, m.picked.then_some(&m.picks[..]), m.len),
        }
    }

    /// Per-name numeric summaries (`Policy::aggregate`), in order of first
    /// appearance; a merged batch's are merged exactly across its windows.
    pub fn aggregates(&self) -> &[Aggregate] {
        match &self.merge {
            None => &self.sealed.aggregates,
            Some(m) => &m.aggregates,
        }
    }

    /// Per-name quantile sketches (`Policy::histogram`), in order of first
    /// appearance; a merged batch's are the windows' sketches merged
    /// exactly (bucket counts added), so its quantiles are those of every
    /// sample of its windows, within the same 1 % bound.
    ///
    /// ```
    /// fn p99s(batch: &ringfold::Batch<f64>) -> Vec<(String, f64)> {
    ///     batch.histograms().iter().map(|h| (h.name().to_owned(), h.p99())).collect()
    /// }
    /// # let _ = p99s;
    /// ```
    pub fn histograms(&self) -> &[Histogram] {
        match &self.merge {
            None => self.sealed.histograms.as_slice(),
            Some(m) => m.histograms.as_slice(),
        }
    }

    /// Why the batch was emitted (a merged batch: why its last window was).
    pub fn reason(&self) -> BatchReason {
        self.merge.as_ref().map_or(self.sealed.reason, |m| m.reason)
    }

    /// Per-prefix sequence number: the prefix's batches are numbered 0, 1,
    /// 2, ... in the order they were sealed, with no gap, so a sink can
    /// detect a lost batch (a gap) and de-duplicate a retried one. A batch
    /// merged from several windows (see [`merged`](Self::merged)) covers
    /// `seq()..=last_seq()`.
    pub fn seq(&self) -> u64 {
        self.sealed.seq
    }

    /// The sequence number of the last window this batch covers: equal to
    /// [`seq`](Self::seq) unless the batch was merged from several windows.
    ///
    /// ```
    /// fn covers(batch: &ringfold::Batch<u64>) -> std::ops::RangeInclusive<u64> {
    ///     batch.seq()..=batch.last_seq()
    /// }
    /// # let _ = covers;
    /// ```
    pub fn last_seq(&self) -> u64 {
        self.merge.as_ref().map_or(self.sealed.seq, |m| m.last_seq)
    }

    /// How many sealed windows this batch carries: 1, or more when a
    /// lagging subscriber's queue merged consecutive windows of the prefix
    /// into one batch (`seq()..=last_seq()`, so `last_seq() - seq() + 1`).
    pub fn merged(&self) -> u64 {
        self.merge.as_ref().map_or(1, |m| m.windows)
    }

    /// When the window opened (its first event was taken), monotonic clock;
    /// for a merged batch, when its first window opened.
    pub fn opened_at(&self) -> Instant {
        self.sealed.opened
    }

    /// When the window closed (the batch was sealed), monotonic clock; for
    /// a merged batch, when its last window closed.
    pub fn closed_at(&self) -> Instant {
        self.merge.as_ref().map_or(self.sealed.closed, |m| m.closed)
    }

    /// [`opened_at`](Self::opened_at) on the wall clock.
    ///
    /// ```
    /// use std::time::UNIX_EPOCH;
    /// fn unix_millis(batch: &ringfold::delivery::Batch<u64>) -> u128 {
    ///     batch.opened_at_system().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
    /// }
    /// # let _ = unix_millis;
    /// ```
    pub fn opened_at_system(&self) -> SystemTime {
        self.sealed.epoch.system_at(self.sealed.opened)
    }

    /// [`closed_at`](Self::closed_at) on the wall clock.
    pub fn closed_at_system(&self) -> SystemTime {
        self.sealed.epoch.system_at(self.closed_at())
    }

    /// How long the window was open (a merged batch: from its first
    /// window's opening to its last one's close).
    pub fn window(&self) -> Duration {
        self.closed_at()
            .saturating_duration_since(self.sealed.opened)
    }

    /// Events of this prefix rejected (ring full, urgent timeout, not
    /// numeric) since the previous batch of the prefix: loss, in band.
    pub fn dropped(&self) -> u64 {
        self.merge
            .as_ref()
            .map_or(self.sealed.dropped, |m| m.dropped)
    }

    /// Events folded away in this window: replaced by a later value of the
    /// same key (`latest`) or summarised into `aggregates`; in a merged
    /// batch also the survivors of earlier windows replaced by later ones.
    pub fn folded(&self) -> u64 {
        self.merge.as_ref().map_or(self.sealed.folded, |m| m.folded)
    }

    /// Windows (sealed batches) this subscriber lost to its lag policy
    /// since the previous batch it received (any prefix): its own loss, in
    /// band. Merging loses nothing and does not count here.
    ///
    /// ```
    /// fn note_loss(batch: &ringfold::delivery::Batch<u64>, lost: &mut u64) {
    ///     *lost += batch.lagged();
    /// }
    /// # let _ = note_loss;
    /// ```
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

impl<T> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("prefix", &self.prefix())
            .field("seq", &self.seq())
            .field("last_seq", &self.last_seq())
            .field("len", &self.len())
            .field("aggregates", &self.aggregates().len())
            .field("histograms", &self.histograms().len())
            .field("reason", &self.reason())
            .field("dropped", &self.dropped())
            .field("folded", &self.folded())
            .field("lagged", &self.lagged)
            .finish()
    }
}

/// Recycles sealed batches on the flusher.
///
/// The pool keeps a handle to each batch it sealed, oldest first (`kept`).
/// Sealing first looks at the oldest few: one that no subscriber holds any
/// more (`Arc::get_mut` succeeds: only the pool has it) is cleared and
/// reused, keeping its buffers' capacity. Subscribers consume their queues
/// in order, so the oldest kept batch is the first one let go of.
///
/// How many batches must exist for that to never allocate is the number
/// held at once by the subscribers, which the pool cannot learn by
/// growing on demand: the deepest backlog seen so far says nothing about
/// the next one (a delivery thread descheduled for a while holds a whole
/// queue's worth), so a pool that grows to its high-water mark allocates
/// whenever scheduling produces a deeper backlog than before. That bound is
/// known, though: a subscriber holds at most its queue's capacity plus the
/// one batch in its hands. So when the subscriptions change, the flusher
/// [provisions](BatchPool::provision) the pool to that bound (capped at the
/// pool's capacity), off the per-batch path: the extra batches wait in a
/// reserve and are taken, instead of allocating, when the oldest kept ones
/// are all still held. Allocation then happens only past the bound (a
/// consumer that keeps batches it received, a pool capacity below the
/// subscribers' total) and never grows the pool beyond its capacity (the
/// oldest kept handle is then let go of).
///
/// Reserve batches start with room for one event: exact for passthrough
/// batches (one event each), the policy under which backlogs are deep; a
/// bigger window sealed into one grows that buffer once (see
/// [`seal`](BatchPool::seal)), after which it circulates like any other.
///
/// Where payloads are dropped: a recycled batch's payloads are dropped on
/// the flusher when it is reused, not on the delivery thread that let go of
/// it last. That is what the flusher did before this layer existed (it
/// cleared every batch after delivering it), costs nothing for payloads
/// without drop glue, and needs no unsafe shared mutation. The price: the
/// payloads of up to `capacity` delivered batches stay alive until reuse,
/// and a slow payload `Drop` is paid by the flusher. A panicking payload
/// `Drop` is caught and counted ([`BatchPool::drop_panics`]).
pub(crate) struct BatchPool<T> {
    kept: std::collections::VecDeque<Arc<Sealed<T>>>,
    /// Cleared batches nobody else holds, handed back by [`recycle`]
    /// (batches a queue dropped for lag): a subscriber that lags keeps the
    /// newest batches, which `kept` then only ever sees held, so without
    /// this every seal behind a lagging subscriber would allocate.
    ///
    /// [`recycle`]: BatchPool::recycle
    free: Vec<Arc<Sealed<T>>>,
    /// Never-used batches made by [`provision`](BatchPool::provision).
    reserve: Vec<Arc<Sealed<T>>>,
    capacity: usize,
    epoch: Epoch,
    /// The empty name every cleared batch carries (one allocation per
    /// pool, not two per batch).
    blank: std::sync::Arc<str>,
    allocated: u64,
    reused: u64,
    reserve_taken: u64,
    drop_panics: u64,
}

/// How many of the oldest kept batches sealing looks at before taking a
/// reserve batch (or allocating): bounded work per seal when subscribers
/// hold on to batches. Held candidates go to the back (in one rotation),
/// so successive seals look at different ones. Subscribers that are behind let go of windows
/// out of seal order (a merged batch carries one prefix's windows, and
/// goes when its prefix's turn comes), so the free ones are scattered:
/// with 4 probes a lagging passthrough fan-out allocated 12-32 times per
/// 100,000 events in tests/alloc.rs, with 64 none (each probe is one
/// reference-count load, and only a seal whose first probes fail pays more
/// than one).
const PROBES: usize = 64;

impl<T> BatchPool<T> {
    /// A pool keeping at most `capacity` (at least 1) batches.
    pub(crate) fn new(capacity: usize, epoch: Epoch) -> Self {
        let capacity = capacity.max(1);
        BatchPool {
            kept: std::collections::VecDeque::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            reserve: Vec::new(),
            capacity,
            epoch,
            blank: "".into(),
            allocated: 0,
            reused: 0,
            reserve_taken: 0,
            drop_panics: 0,
        }
    }

    /// Makes sure the pool has at least `held` batches beyond the one being
    /// sealed (capped at its capacity), making the missing ones now into
    /// the reserve: `held` is the most batches the subscribers can hold at
    /// once (see the type's documentation). Called by the flusher when the
    /// subscriptions change, never per batch. Never shrinks the pool.
    pub(crate) fn provision(&mut self, held: usize) {
        // Under loom the models seal a handful of batches: provisioning
        // would only add modelled objects, and they check recycling itself.
        if cfg!(ringfold_loom) {
            return;
        }
        let target = held.saturating_add(1).min(self.capacity);
        let have = self.kept.len() + self.free.len() + self.reserve.len();
        if have >= target {
            return;
        }
        self.reserve.reserve_exact(target - have);
        for _ in have..target {
            let shell = Sealed::empty(self.epoch, &self.blank, 1);
            self.reserve.push(Arc::new(shell));
        }
    }

    /// Seals a window: swaps `events` and `aggregates` into a recycled
    /// batch, leaving the caller's vectors empty with the recycled buffers'
    /// capacity, and returns the shared batch. Into a batch never used
    /// before (a reserve shell, or a new one) the contents are moved
    /// instead, and the caller keeps its own buffers: that batch's are
    /// small, and handing one to the fold would make the fold regrow it
    /// step by step (about five allocations for a 64-event window) where
    /// moving costs at most one (none for a one-event passthrough window
    /// into a reserve shell). `histograms` are always swapped: moving them
    /// would move their sketches' bucket arrays out of the fold's reusable
    /// slots, and the caller's list is cleared (its slots kept) either way.
    pub(crate) fn seal(
        &mut self,
        header: Header,
        events: &mut Vec<Event<T>>,
        aggregates: &mut Vec<Aggregate>,
        histograms: &mut Histograms,
    ) -> Arc<Sealed<T>> {
        let (mut sealed, mut used) = self.take_free();
        if Arc::get_mut(&mut sealed).is_none() {
            // Cannot happen (`take_free` only returns batches nobody else
            // holds); a fresh batch keeps this path panic-free regardless.
            sealed = Arc::new(Sealed::empty(self.epoch, &self.blank, 0));
            used = false;
        }
        if let Some(inner) = Arc::get_mut(&mut sealed) {
            if used {
                std::mem::swap(&mut inner.events, events);
                std::mem::swap(&mut inner.aggregates, aggregates);
            } else {
                inner.events.append(events);
                inner.aggregates.append(aggregates);
            }
            std::mem::swap(&mut inner.histograms, histograms);
            histograms.clear();
            inner.set_header(header);
            inner.measure();
        }
        if self.kept.len() == self.capacity {
            if let Some(oldest) = self.kept.pop_front() {
                self.let_go(oldest);
            }
        }
        self.kept.push_back(sealed.clone());
        sealed
    }

    /// Drops the pool's handle to a batch. If it was the last one, the
    /// payloads are dropped here first, one by one, each `Drop` caught and
    /// counted: dropping the batch whole would drop its events inside one
    /// `Vec` drop, where a second panicking payload (while the first one
    /// unwinds) aborts the process.
    fn let_go(&mut self, mut sealed: Arc<Sealed<T>>) {
        if let Some(inner) = Arc::get_mut(&mut sealed) {
            self.drop_panics += clear_events(&mut inner.events);
        }
        // Another holder may let go meanwhile, making this the last handle:
        // its payloads would drop here, so the drop is caught too.
        if catch_unwind(AssertUnwindSafe(move || drop(sealed))).is_err() {
            self.drop_panics += 1;
        }
    }

    /// Lets go of every batch the pool keeps (see [`let_go`](Self::let_go)):
    /// the flusher's last act, so that the payloads the pool alone still
    /// holds are dropped (and their panics counted) before the final stats.
    pub(crate) fn clear(&mut self) {
        let kept = std::mem::take(&mut self.kept);
        let free = std::mem::take(&mut self.free);
        for sealed in kept.into_iter().chain(free) {
            self.let_go(sealed);
        }
    }

    /// Takes back a batch handle the flusher holds (one a queue displaced
    /// for lag): if it was the last handle, the batch is cleared and kept
    /// for the next seal (up to the pool's capacity); otherwise the handle
    /// is just dropped. A panicking payload `Drop` is caught and counted.
    pub(crate) fn recycle(&mut self, batch: Batch<T>) {
        let (head, merge) = batch.into_parts();
        if let Some(mut merge) = merge {
            // A merged batch dropped for lag: each window it holds, then the
            // merge goes home.
            if let Some(m) = Arc::get_mut(&mut merge) {
                for sealed in m.segments.drain(1..) {
                    self.recycle_sealed(sealed);
                }
                if let Some(home) = m.home.clone() {
                    home.park(merge);
                }
            }
        }
        self.recycle_sealed(head);
    }

    fn recycle_sealed(&mut self, mut sealed: Arc<Sealed<T>>) {
        if self.free.len() < self.capacity {
            if let Some(inner) = Arc::get_mut(&mut sealed) {
                self.drop_panics += clear_events(&mut inner.events);
                inner.aggregates.clear();
                inner.histograms.clear();
                inner.keep_alive = None;
                self.free.push(sealed);
                return;
            }
        }
        self.let_go(sealed);
    }

    /// A cleared batch held by nobody else, and whether it was used before
    /// (its buffers grown by an earlier window).
    fn take_free(&mut self) -> (Arc<Sealed<T>>, bool) {
        if let Some(free) = self.free.pop() {
            self.reused += 1;
            return (free, true);
        }
        let probes = PROBES.min(self.kept.len());
        // Each candidate's count is looked at in place; then the held ones
        // before the first free one go to the back in one move (not one
        // pop and push each), so the next seal looks at others.
        let free = self
            .kept
            .iter_mut()
            .take(probes)
            .position(|candidate| Arc::get_mut(candidate).is_some());
        if let Some(mut candidate) = free.and_then(|i| {
            if i > 0 {
                self.kept.rotate_left(i);
            }
            self.kept.pop_front()
        }) {
            if let Some(inner) = Arc::get_mut(&mut candidate) {
                self.drop_panics += clear_events(&mut inner.events);
                inner.aggregates.clear();
                inner.histograms.clear();
                inner.keep_alive = None;
            }
            self.reused += 1;
            return (candidate, true);
        }
        // All held by subscribers: to the back of the line, so the next
        // seal looks at others.
        self.kept.rotate_left(probes);
        // The oldest are held: a deeper backlog than the kept batches
        // cover, which the reserve (if provisioned) covers up to the
        // subscribers' bound; the batch joins `kept` once sealed.
        if let Some(shell) = self.reserve.pop() {
            self.reserve_taken += 1;
            return (shell, false);
        }
        self.allocated += 1;
        (Arc::new(Sealed::empty(self.epoch, &self.blank, 0)), false)
    }

    /// Batches allocated (not recycled) so far.
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Batches recycled so far.
    #[cfg(any(test, ringfold_loom))]
    pub(crate) fn reused(&self) -> u64 {
        self.reused
    }

    /// Reserve batches taken so far (see [`provision`](Self::provision)).
    #[cfg(all(test, not(ringfold_loom)))]
    pub(crate) fn reserve_taken(&self) -> u64 {
        self.reserve_taken
    }

    /// Payload drops that panicked while recycling.
    pub(crate) fn drop_panics(&self) -> u64 {
        self.drop_panics
    }
}

impl<T> Drop for BatchPool<T> {
    /// Payloads still in kept batches are dropped one by one (see
    /// [`BatchPool::let_go`]), never inside a `Vec` drop.
    fn drop(&mut self) {
        self.clear();
    }
}
