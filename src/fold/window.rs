//! One prefix's open window (`Acc`), how events fold into it (keep, latest,
//! aggregate, histogram), and a closed window waiting for delivery
//! (`Sealed`).

use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::numeric;
use crate::event::{drop_caught, Aggregate, BatchReason, Event, InternedStr};
use crate::histogram::Histograms;
use crate::value::Sampler;

/// `latest`: the survivor index of an urgent event, which waits in its
/// hold's tail (`fold::Hold`) rather than in `Acc::events`.
pub(super) const IN_TAIL: usize = usize::MAX;

/// How a name's events are folded into its prefix's window.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Fold {
    /// Batch and passthrough: every event is kept.
    Keep,
    /// `Policy::latest`: one survivor per (name, sub-key).
    Latest,
    /// `Policy::aggregate`: one running aggregate per name.
    Aggregate,
    /// `Policy::histogram`: one quantile sketch per name.
    Histogram,
}

/// `latest` state of one prefix (boxed in `Acc`, made at the prefix's first
/// `latest` event: a prefix of other policies does not pay for its maps).
#[derive(Default)]
struct Latest {
    /// (name id, sub-key) -> the survivor's index in `events` and its
    /// publish stamp.
    survivors: AHashMap<(u32, u64), (usize, u64)>,
    /// The survivors of this prefix's last sealed window(s), by (name id,
    /// sub-key), with their stamps; consulted through sweep `guard_until`
    /// (see `Latest::stale`). Same type as `survivors`, so sealing swaps
    /// the two maps instead of copying.
    guard: AHashMap<(u32, u64), (usize, u64)>,
    guard_until: u64,
    /// The sweep that took this window's latest `latest` event.
    last_sweep: u64,
}

impl Latest {
    /// Sealing a `latest` window: its survivors' stamps guard the next
    /// window until the end of the sweep after the one that took the
    /// window's last event. Why that long and no longer: an event that
    /// happened before one a sweep took is visible to the flusher by its
    /// next sweep (the sweep's Acquire load of the later event's tail
    /// orders every later load of the other rings' tails after it), so a
    /// straggler older than a sealed survivor arrives by then or never.
    fn guard_survivors(&mut self) {
        if self.guard_until >= self.last_sweep && !self.guard.is_empty() {
            // The previous seal's guard is still in force: merge, keeping
            // the newer stamp per key.
            for (key, (i, stamp)) in self.survivors.drain() {
                let kept = self.guard.entry(key).or_insert((i, stamp));
                kept.1 = kept.1.max(stamp);
            }
        } else {
            self.guard.clear();
            std::mem::swap(&mut self.guard, &mut self.survivors);
        }
        self.guard_until = self.last_sweep + 1;
    }

    /// Whether an event of `key` stamped `stamp` is older than a survivor
    /// already delivered (see `guard_survivors`), during `sweep`.
    #[inline]
    fn stale(&self, key: (u32, u64), stamp: u64, sweep: u64) -> bool {
        self.guard_until >= sweep
            && self
                .guard
                .get(&key)
                .is_some_and(|&(_, delivered)| stamp < delivered)
    }
}

/// Pending events of one prefix. Buffers and maps are reused across
/// windows, so steady-state folding allocates nothing. Kept small (one per
/// prefix ever seen): the `latest` maps are boxed, and a closed window
/// holds no event buffer (see `Folder::emit`).
pub(super) struct Acc<T> {
    pub(super) events: Vec<Event<T>>,
    /// Events taken into this window (including folded ones).
    pub(super) taken: usize,
    pub(super) max_count: usize,
    /// Shortest window interval among this window's events.
    pub(super) interval: Duration,
    pub(super) deadline: Instant,
    /// `latest` survivors and guard (see `Latest`).
    latest: Option<Box<Latest>>,
    pub(super) aggregates: Vec<Aggregate>,
    /// `histogram`: the window's sketches (reused slots, see `Histograms`).
    pub(super) histograms: Histograms,
    /// `aggregate` and `histogram`: name id -> index in `aggregates` or
    /// `histograms` (a name has one policy, so one of the two), made at the
    /// prefix's first aggregated reading.
    aggregate_index: Option<Box<AHashMap<u32, usize>>>,
    /// Taken into this window but discarded (not numeric); the others are
    /// held until the window closes.
    discarded: usize,
    pub(super) folded: u64,
    pub(super) dropped_since: u64,
    /// Listed in `Folder::pending`.
    pub(super) queued: bool,
    /// An urgent event closed the window, which waits in `Folder::holds`
    /// for one more sweep before it is sealed.
    pub(super) held: bool,
    /// The window took a `latest` event: it is sealed with the flag, so
    /// that a lagging subscriber's queue knows without a look at every
    /// event whether merging it needs survivors (see `delivery::merge`).
    pub(super) has_latest: bool,
}

impl<T> Acc<T> {
    pub(super) fn new(now: Instant) -> Self {
        Acc {
            events: Vec::new(),
            taken: 0,
            max_count: usize::MAX,
            interval: Duration::MAX,
            deadline: now,
            latest: None,
            aggregates: Vec::new(),
            histograms: Histograms::default(),
            aggregate_index: None,
            discarded: 0,
            folded: 0,
            dropped_since: 0,
            queued: false,
            held: false,
            has_latest: false,
        }
    }

    /// Events held (taken and not discarded).
    pub(super) fn held(&self) -> u64 {
        (self.taken - self.discarded) as u64
    }

    /// The window restarts empty (its buffers were moved into a `Sealed`).
    pub(super) fn reset(&mut self) {
        if let Some(latest) = self.latest.as_deref_mut() {
            if !latest.survivors.is_empty() {
                latest.guard_survivors();
            }
        }
        if let Some(index) = self.aggregate_index.as_deref_mut() {
            index.clear();
        }
        self.taken = 0;
        self.discarded = 0;
        self.folded = 0;
        self.max_count = usize::MAX;
        self.has_latest = false;
    }

    /// `latest`: the prologue every `latest` event goes through, urgent or
    /// not. Notes the sweep (it extends the guard, see `guard_survivors`),
    /// then folds the event away if it is stale (counted in `folded`, the
    /// payload dropped through `drop_caught`); otherwise hands it, with its
    /// (name, sub-key) key, to `fold`. A continuation rather than a returned
    /// `Option`, so the event is not moved through a return value on the
    /// hot path.
    #[inline(always)]
    fn admit_latest(
        &mut self,
        name_id: u32,
        event: Event<T>,
        sweep: u64,
        drop_panics: &mut u64,
        fold: impl FnOnce(&mut Self, (u32, u64), Event<T>, &mut u64),
    ) {
        let key = (name_id, event.sub_key);
        self.has_latest = true;
        let latest = self.latest.get_or_insert_with(Box::default);
        latest.last_sweep = sweep;
        if latest.stale(key, event.nanos, sweep) {
            self.folded += 1;
            *drop_panics += u64::from(drop_caught(event));
            return;
        }
        fold(self, key, event, drop_panics);
    }

    /// `latest`: the survivor of its (name, sub-key) is the event with the
    /// newest publish stamp, not the last to arrive: events of one task
    /// published from different threads (an async task moving between
    /// workers) land in different rings and may arrive out of order. An
    /// event older than its key's survivor, or than one already delivered
    /// (`stale`), is folded away (counted in `folded`). Equal stamps: the
    /// later arrival wins (same ring, so publish order).
    ///
    /// Payloads folded away are dropped through `drop_caught`; panicking
    /// drops are added to `drop_panics`.
    pub(super) fn fold_latest(
        &mut self,
        name_id: u32,
        event: Event<T>,
        sweep: u64,
        drop_panics: &mut u64,
    ) {
        self.admit_latest(
            name_id,
            event,
            sweep,
            drop_panics,
            |acc, key, event, drop_panics| match survivors(&mut acc.latest).get_mut(&key) {
                Some((i, stamp)) => {
                    // A survivor in the urgent tail (`IN_TAIL`) is never
                    // replaced here: a newer event of its key is deferred to
                    // the next window (`latest_defers`).
                    let gone = if event.nanos >= *stamp && *i != IN_TAIL {
                        *stamp = event.nanos;
                        std::mem::replace(&mut acc.events[*i], event)
                    } else {
                        event
                    };
                    acc.folded += 1;
                    *drop_panics += u64::from(drop_caught(gone));
                }
                None => {
                    survivors(&mut acc.latest).insert(key, (acc.events.len(), event.nanos));
                    acc.events.push(event);
                }
            },
        );
    }

    /// `latest`, for an urgent event (its window is sealed after one more
    /// sweep, see `fold::Hold`): the event goes to `tail` (the urgent events
    /// that end the batch), never into a survivor's slot, because the batch
    /// must end with it while the other survivors keep their order of first
    /// appearance. A pending survivor of the same (name, sub-key) is
    /// superseded instead: removed from the window and counted as folded.
    /// An urgent event older (by publish stamp) than that survivor or than
    /// a delivered one is stale like any other and folded away; the window
    /// still closes.
    pub(super) fn fold_latest_urgent(
        &mut self,
        name_id: u32,
        event: Event<T>,
        sweep: u64,
        drop_panics: &mut u64,
        tail: &mut Vec<Event<T>>,
    ) {
        self.admit_latest(
            name_id,
            event,
            sweep,
            drop_panics,
            |acc, key, event, drop_panics| {
                if let Some(&(i, stamp)) = survivors(&mut acc.latest).get(&key) {
                    acc.folded += 1;
                    if event.nanos < stamp {
                        *drop_panics += u64::from(drop_caught(event));
                        return;
                    }
                    let superseded = if i == IN_TAIL {
                        // An earlier urgent event of the key (the caller
                        // defers newer ones of other lanes, so this one is
                        // from the same ring, i.e. later): it leaves the
                        // tail.
                        let at = tail.iter().rposition(|e| {
                            e.meta.get().key.name_id() == name_id && e.sub_key == key.1
                        });
                        at.map(|at| tail.remove(at))
                    } else {
                        // O(survivors), once per urgent event: the window
                        // stays open for one more sweep (stragglers of
                        // other rings), so the indices after `i` must stay
                        // right.
                        for (at, _) in survivors(&mut acc.latest).values_mut() {
                            if *at != IN_TAIL && *at > i {
                                *at -= 1;
                            }
                        }
                        Some(acc.events.remove(i))
                    };
                    if let Some(gone) = superseded {
                        *drop_panics += u64::from(drop_caught(gone));
                    }
                }
                survivors(&mut acc.latest).insert(key, (IN_TAIL, event.nanos));
                tail.push(event);
            },
        );
    }

    /// `latest`, while the window is held by an urgent event: whether an
    /// event of (`name_id`, `sub_key`) stamped `nanos` belongs after the
    /// urgent event of the same key rather than before it (it is not older
    /// than that event), i.e. in the next window.
    pub(super) fn latest_defers(&self, name_id: u32, sub_key: u64, nanos: u64) -> bool {
        self.latest.as_ref().is_some_and(|latest| {
            latest
                .survivors
                .get(&(name_id, sub_key))
                .is_some_and(|&(i, stamp)| i == IN_TAIL && nanos >= stamp)
        })
    }

    /// The numeric reading of an `aggregate` or `histogram` event, with the
    /// event; `None` if the payload is not numeric or its reading is NaN or
    /// infinite: then counted as discarded and dropped here (through
    /// `drop_caught`), so the two policies agree on what is a number.
    fn reading(
        &mut self,
        sampler: Option<Sampler<T>>,
        event: Event<T>,
        drop_panics: &mut u64,
    ) -> Option<(crate::value::Number, Event<T>)> {
        let reading = sampler.and_then(|s| s.read(&event.payload));
        match reading.and_then(numeric::reading) {
            Some(n) => Some((n, event)),
            None => {
                self.discarded += 1;
                self.dropped_since += 1;
                *drop_panics += u64::from(drop_caught(event));
                None
            }
        }
    }

    /// `aggregate`: folds the event's numeric reading into its name's
    /// running aggregate. False (and counted as discarded) if the payload is
    /// not numeric or its reading is NaN or infinite (see `numeric`).
    /// The payload is dropped here (through `drop_caught`, panics added to
    /// `drop_panics`): only its reading is kept.
    pub(super) fn fold_aggregate(
        &mut self,
        sampler: Option<Sampler<T>>,
        event: Event<T>,
        drop_panics: &mut u64,
    ) -> bool {
        let key = event.meta.get().key;
        let Some((n, event)) = self.reading(sampler, event, drop_panics) else {
            return false;
        };
        let at = event.timestamp();
        let index = self.aggregate_index.get_or_insert_with(Box::default);
        match index.get(&key.name_id()) {
            Some(&i) => numeric::add(&mut self.aggregates[i], n, at),
            None => {
                index.insert(key.name_id(), self.aggregates.len());
                let name = InternedStr::new(&event.meta.get().name);
                self.aggregates.push(numeric::start(name, key, n, at));
            }
        }
        self.folded += 1;
        *drop_panics += u64::from(drop_caught(event));
        true
    }

    /// `histogram`: adds the event's numeric reading (see `reading`) to its
    /// name's sketch.
    pub(super) fn fold_histogram(
        &mut self,
        sampler: Option<Sampler<T>>,
        event: Event<T>,
        drop_panics: &mut u64,
    ) -> bool {
        let key = event.meta.get().key;
        let Some((n, event)) = self.reading(sampler, event, drop_panics) else {
            return false;
        };
        let index = self.aggregate_index.get_or_insert_with(Box::default);
        let i = match index.get(&key.name_id()) {
            Some(&i) => i,
            None => {
                let name = InternedStr::new(&event.meta.get().name);
                let i = self.histograms.push(name, key);
                index.insert(key.name_id(), i);
                i
            }
        };
        if let Some(h) = self.histograms.get_mut(i) {
            h.sketch.add(n.to_f64());
        }
        self.folded += 1;
        *drop_panics += u64::from(drop_caught(event));
        true
    }
}

/// The survivors map of a prefix's `latest` state (made by `admit_latest`,
/// which every `latest` event passes first).
#[inline]
fn survivors(latest: &mut Option<Box<Latest>>) -> &mut AHashMap<(u32, u64), (usize, u64)> {
    &mut latest.get_or_insert_with(Box::default).survivors
}

/// A closed window waiting for delivery (or, emptied, for reuse).
pub(super) struct Sealed<T> {
    pub(super) pid: usize,
    pub(super) reason: BatchReason,
    pub(super) events: Vec<Event<T>>,
    pub(super) aggregates: Vec<Aggregate>,
    pub(super) histograms: Histograms,
    pub(super) folded: u64,
    pub(super) dropped: u64,
    /// Holds `latest` events (see `Acc::has_latest`).
    pub(super) latest: bool,
}

impl<T> Default for Sealed<T> {
    fn default() -> Self {
        Sealed {
            pid: 0,
            reason: BatchReason::Flush,
            events: Vec::new(),
            aggregates: Vec::new(),
            histograms: Histograms::default(),
            folded: 0,
            latest: false,
            dropped: 0,
        }
    }
}
