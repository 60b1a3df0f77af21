//! One prefix's open window (`Acc`), how events fold into it (keep, latest,
//! aggregate), and a closed window waiting for delivery (`Sealed`).

use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::numeric;
use crate::event::{Aggregate, BatchReason, Event, InternedStr};
use crate::value::Sampler;

/// How a name's events are folded into its prefix's window.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Fold {
    /// Batch and passthrough: every event is kept.
    Keep,
    /// `Policy::latest`: one survivor per (name, sub-key).
    Latest,
    /// `Policy::aggregate`: one running aggregate per name.
    Aggregate,
}

/// Pending events of one prefix. Buffers and maps are reused across
/// windows, so steady-state folding allocates nothing.
pub(super) struct Acc<T> {
    pub(super) events: Vec<Event<T>>,
    /// Events taken into this window (including folded ones).
    pub(super) taken: usize,
    pub(super) max_count: usize,
    /// Shortest window interval among this window's events.
    pub(super) interval: Duration,
    pub(super) deadline: Instant,
    /// `latest`: (name id, sub-key) -> index in `events`.
    latest: AHashMap<(u32, u64), usize>,
    pub(super) aggregates: Vec<Aggregate>,
    /// `aggregate`: name id -> index in `aggregates`.
    aggregate_index: AHashMap<u32, usize>,
    /// Taken into this window but discarded (not numeric); the others are
    /// held until the window closes.
    discarded: usize,
    pub(super) folded: u64,
    pub(super) dropped_since: u64,
    /// Listed in `Folder::pending`.
    pub(super) queued: bool,
}

impl<T> Acc<T> {
    pub(super) fn new(now: Instant) -> Self {
        Acc {
            events: Vec::new(),
            taken: 0,
            max_count: usize::MAX,
            interval: Duration::MAX,
            deadline: now,
            latest: AHashMap::new(),
            aggregates: Vec::new(),
            aggregate_index: AHashMap::new(),
            discarded: 0,
            folded: 0,
            dropped_since: 0,
            queued: false,
        }
    }

    /// Events held (taken and not discarded).
    pub(super) fn held(&self) -> u64 {
        (self.taken - self.discarded) as u64
    }

    /// The window restarts empty (its buffers were moved into a `Sealed`).
    pub(super) fn reset(&mut self) {
        self.latest.clear();
        self.aggregate_index.clear();
        self.taken = 0;
        self.discarded = 0;
        self.folded = 0;
        self.max_count = usize::MAX;
    }

    /// `latest`: the event replaces the survivor of its (name, sub-key) in
    /// this window, or becomes one.
    pub(super) fn fold_latest(&mut self, name_id: u32, event: Event<T>) {
        match self.latest.get(&(name_id, event.sub_key)) {
            Some(&i) => {
                self.events[i] = event;
                self.folded += 1;
            }
            None => {
                self.latest
                    .insert((name_id, event.sub_key), self.events.len());
                self.events.push(event);
            }
        }
    }

    /// `latest`, for an urgent event (the window is sealed right after):
    /// the event is never folded into a survivor's slot, because the batch
    /// must end with it while the other survivors keep their order of
    /// first appearance. A pending survivor of the same (name, sub-key) is
    /// superseded instead: removed from the window and counted as folded.
    pub(super) fn fold_latest_urgent(&mut self, name_id: u32, event: Event<T>) {
        if let Some(i) = self.latest.remove(&(name_id, event.sub_key)) {
            // O(survivors), once per urgent event. Indices above `i` in
            // `latest` go stale, which is harmless: the window is sealed
            // (and the map cleared) before anything else is folded in.
            self.events.remove(i);
            self.folded += 1;
        }
        self.events.push(event);
    }

    /// `aggregate`: folds the event's numeric reading into its name's
    /// running aggregate. False (and counted as discarded) if the payload is
    /// not numeric or its reading is NaN or infinite (see `numeric`).
    pub(super) fn fold_aggregate(&mut self, sampler: Option<Sampler<T>>, event: Event<T>) -> bool {
        let key = event.meta.get().key;
        let reading = sampler.and_then(|s| s.read(&event.payload));
        let Some(n) = reading.and_then(numeric::reading) else {
            self.discarded += 1;
            self.dropped_since += 1;
            return false;
        };
        let at = event.timestamp();
        match self.aggregate_index.get(&key.name_id()) {
            Some(&i) => numeric::add(&mut self.aggregates[i], n, at),
            None => {
                self.aggregate_index
                    .insert(key.name_id(), self.aggregates.len());
                let name = InternedStr::new(&event.meta.get().name);
                self.aggregates.push(numeric::start(name, key, n, at));
            }
        }
        self.folded += 1;
        true
    }
}

/// A closed window waiting for delivery (or, emptied, for reuse).
pub(super) struct Sealed<T> {
    pub(super) pid: usize,
    pub(super) reason: BatchReason,
    pub(super) events: Vec<Event<T>>,
    pub(super) aggregates: Vec<Aggregate>,
    pub(super) folded: u64,
    pub(super) dropped: u64,
}

impl<T> Default for Sealed<T> {
    fn default() -> Self {
        Sealed {
            pid: 0,
            reason: BatchReason::Flush,
            events: Vec::new(),
            aggregates: Vec::new(),
            folded: 0,
            dropped: 0,
        }
    }
}
