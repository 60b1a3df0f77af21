//! Coalescing: consecutive windows of one prefix merged into one batch for
//! a subscriber that fell behind.
//!
//! A lagging subscriber's queue (see `queue`) merges a newly sealed window
//! into the batch of its prefix still waiting there, by the prefix's
//! policies, instead of queueing one more batch (and, once its budget ran
//! out, dropping whole batches):
//!
//! * batch and passthrough names: the windows' events, concatenated in seal
//!   order;
//! * `latest` names: last value wins per `(name, sub_key)` across the
//!   windows, in the order of each key's first appearance; an urgent event
//!   goes last, as within a window;
//! * aggregates: merged exactly (count, exact integer sum, float sum, min,
//!   max, first, last);
//! * histograms: their sketches merged exactly (bucket counts added; count,
//!   sum, min and max as if one window had taken every sample).
//!
//! Events are never copied (payloads are not `Clone`, and every subscriber
//! shares the sealed windows): a merged batch holds handles to the windows
//! it lends events from, plus, once a `latest` name is involved, the list of
//! surviving `(window, index)` pairs. A window none of whose events survive
//! is let go of at once, so a lagging `latest` or aggregate subscriber holds
//! memory proportional to its keys, not to the windows it missed. The
//! batch's first window stays (it is the batch's header).
//!
//! All of it runs on the flusher, under the queue's lock, and costs
//! O(events of the new window) (plus O(survivors) when a window is let go
//! of). A merge is shared by the clones of its batch (`Arc`), and when the
//! last one is dropped (the delivery thread after the callback, or whoever
//! a receiver handed the batch to) it goes back, cleared, to its queue's
//! [`Spares`], so a steadily lagging subscriber does not allocate per
//! merge.

use std::collections::HashMap;
use std::time::Instant;

use super::batch::Sealed;
use crate::event::{Aggregate, BatchReason};
use crate::fold::merge_aggregate;
use crate::histogram::{Histogram, Histograms};
use crate::intern::EventKey;
use crate::sync::{lock, Arc, Mutex};

/// Cleared merges kept for reuse by one queue (at most [`Spares::KEEP`]).
pub(crate) struct Spares<T> {
    parked: Mutex<Parked<T>>,
}

/// What a queue's [`Spares`] keep, under one lock.
struct Parked<T> {
    merges: Vec<Arc<Merge<T>>>,
    /// Cleared histogram slots (their sketches' bucket arrays kept), given
    /// back by parked merges and handed to whichever merge needs one next:
    /// which parked merge a backlog reaches depends on its depth, so
    /// sketches kept per merge would leave a merge never used for
    /// histograms before to allocate them (at most [`Spares::SKETCHES`]).
    sketches: Vec<Histogram>,
}

impl<T> Spares<T> {
    /// Merges a queue keeps: one per prefix with a merged batch queued or
    /// in the subscriber's hands at once, for the prefixes a lagging
    /// subscriber commonly has (beyond that, a merge may allocate).
    const KEEP: usize = 256;

    /// Merges made up front, at subscribe time: a subscriber that falls
    /// behind on this many prefixes at once merges without allocating from
    /// the first time on (beyond it, the first time it goes deeper).
    const PROVISION: usize = 64;

    /// Cleared histograms kept for the queue's merges.
    const SKETCHES: usize = 1024;

    pub(crate) fn new() -> Self {
        let mut parked = Vec::with_capacity(Self::KEEP);
        // Under loom the models merge a handful of windows: provisioned
        // merges would only add modelled objects.
        let provision = if cfg!(ringfold_loom) {
            0
        } else {
            Self::PROVISION
        };
        parked.extend((0..provision).map(|_| {
            let mut m = Merge::new();
            m.reserve_initial();
            Arc::new(m)
        }));
        Spares {
            parked: Mutex::new(Parked {
                merges: parked,
                sketches: Vec::new(),
            }),
        }
    }

    /// A cleared merge to start from (allocated only if none is parked).
    /// (An associated function, not a method on `self: &Arc<Self>`: loom's
    /// `Arc` cannot be a receiver.)
    pub(crate) fn take(spares: &Arc<Self>) -> Arc<Merge<T>> {
        let mut merge = lock(&spares.parked)
            .merges
            .pop()
            .unwrap_or_else(|| Arc::new(Merge::new()));
        if let Some(m) = Arc::get_mut(&mut merge) {
            m.home = Some(spares.clone());
        }
        merge
    }

    /// Takes back a merge whose last handle was let go of. Dropping its
    /// windows may drop payloads (if it held their last handle): a
    /// panicking payload `Drop` propagates to the caller, as dropping the
    /// batch itself would.
    pub(crate) fn park(&self, mut merge: Arc<Merge<T>>) {
        let Some(m) = Arc::get_mut(&mut merge) else {
            return;
        };
        // No cycle: a parked merge does not point home.
        m.home = None;
        m.clear();
        let mut parked = lock(&self.parked);
        m.histograms
            .release_into(&mut parked.sketches, Self::SKETCHES);
        if parked.merges.len() < Self::KEEP {
            parked.merges.push(merge);
        }
    }
}

/// Windows a new merge has room for (see `Merge::reserve_initial`).
const INITIAL_WINDOWS: usize = 64;
/// Surviving events a new merge has room for.
const INITIAL_PICKS: usize = 64;
/// `latest` keys a new merge has room for.
const INITIAL_SURVIVORS: usize = 16;
/// Aggregated names a new merge has room for.
const INITIAL_AGGREGATES: usize = 8;
/// Histogram names a new merge has room for (slots: the sketches come
/// from the queue's `Spares`).
const INITIAL_HISTOGRAMS: usize = 8;

/// The merged part of a batch: everything after its first window.
pub(crate) struct Merge<T> {
    /// The windows whose events the batch lends, in seal order; the first
    /// is the batch's own head window and is always kept.
    pub(crate) segments: Vec<Arc<Sealed<T>>>,
    /// When `picked`: the surviving events as `(segment, index)`, in
    /// delivery order. Built once the first `latest` event is merged;
    /// until then every event of `segments` is delivered, in order.
    pub(crate) picks: Vec<(u32, u32)>,
    pub(crate) picked: bool,
    /// Position in `picks` of each `latest` key's survivor.
    survivors: HashMap<(EventKey, u64), u32, ahash::RandomState>,
    /// The windows' aggregates, merged per name.
    pub(crate) aggregates: Vec<Aggregate>,
    /// The windows' histograms, merged per name (spare slots kept across
    /// merges, so a parked merge reuses their bucket arrays).
    pub(crate) histograms: Histograms,
    /// Events lent (`picks.len()` when picked).
    pub(crate) len: usize,
    pub(crate) last_seq: u64,
    pub(crate) closed: Instant,
    pub(crate) reason: BatchReason,
    pub(crate) dropped: u64,
    pub(crate) folded: u64,
    /// Windows carried (at least 2 once merged).
    pub(crate) windows: u64,
    /// Bytes of the segments held (see `Sealed::footprint`).
    pub(crate) segment_bytes: u64,
    /// Scratch for `compact`: per segment, survivors, then new index.
    scratch: Vec<u32>,
    /// Where it goes back when its batch's last handle is dropped (`None`
    /// while parked, and for copies).
    pub(crate) home: Option<Arc<Spares<T>>>,
}

impl<T> Clone for Merge<T> {
    fn clone(&self) -> Self {
        Merge {
            segments: self.segments.clone(),
            picks: self.picks.clone(),
            picked: self.picked,
            survivors: self.survivors.clone(),
            aggregates: self.aggregates.clone(),
            histograms: self.histograms.clone(),
            len: self.len,
            last_seq: self.last_seq,
            closed: self.closed,
            reason: self.reason,
            dropped: self.dropped,
            folded: self.folded,
            windows: self.windows,
            segment_bytes: self.segment_bytes,
            scratch: Vec::new(),
            home: None,
        }
    }
}

impl<T> Merge<T> {
    /// An empty merge (its buffers are what recycling keeps).
    pub(crate) fn new() -> Self {
        Merge {
            segments: Vec::new(),
            picks: Vec::new(),
            picked: false,
            survivors: HashMap::default(),
            aggregates: Vec::new(),
            histograms: Histograms::default(),
            len: 0,
            last_seq: 0,
            closed: Instant::now(),
            reason: BatchReason::Flush,
            dropped: 0,
            folded: 0,
            windows: 0,
            segment_bytes: 0,
            scratch: Vec::new(),
            home: None,
        }
    }

    /// Empties it for reuse, keeping its buffers' capacity. Handles to
    /// windows are dropped here: if one was the last, its payloads drop
    /// too; the caller catches a panicking payload `Drop`.
    pub(crate) fn clear(&mut self) {
        self.segments.clear();
        self.picks.clear();
        self.picked = false;
        self.survivors.clear();
        self.aggregates.clear();
        self.histograms.clear();
        // Scratch holds nothing between merges; cleared, so that
        // `reserve_initial` (room past its length) does not grow it.
        self.scratch.clear();
        self.len = 0;
        self.windows = 0;
        self.segment_bytes = 0;
    }

    /// Gives a merge room for a lagging subscriber's ordinary backlog of
    /// one prefix (windows, and `latest` survivors), so that whichever
    /// parked merge a queue takes, even one never used before (which one
    /// depends on how deep the backlog went), does not allocate to merge
    /// it. (No-ops once it has the room.)
    fn reserve_initial(&mut self) {
        self.segments.reserve(INITIAL_WINDOWS);
        self.scratch.reserve(INITIAL_WINDOWS);
        self.picks.reserve(INITIAL_PICKS);
        self.survivors.reserve(INITIAL_SURVIVORS);
        self.aggregates.reserve(INITIAL_AGGREGATES);
        self.histograms.reserve(INITIAL_HISTOGRAMS);
    }

    /// Merges `from`'s histograms in, taking any new slot from the home
    /// queue's spare sketches (locked only when there are histograms).
    fn merge_histograms(&mut self, from: &[Histogram]) {
        if from.is_empty() {
            return;
        }
        match &self.home {
            Some(home) => {
                let mut parked = lock(&home.parked);
                self.histograms.merge_from(from, &mut parked.sketches);
            }
            None => self.histograms.merge_from(from, &mut Vec::new()),
        }
    }

    /// Starts from the batch's own (unmerged) window `head`.
    pub(crate) fn start(&mut self, head: &Arc<Sealed<T>>) {
        self.clear();
        self.reserve_initial();
        self.segments.push(head.clone());
        self.aggregates.extend(head.aggregates.iter().cloned());
        self.merge_histograms(head.histograms.as_slice());
        self.len = head.events.len();
        self.last_seq = head.seq;
        self.closed = head.closed;
        self.reason = head.reason;
        self.dropped = head.dropped;
        self.folded = head.folded;
        self.windows = 1;
        self.segment_bytes = head.footprint();
        if head.latest {
            self.pick_all();
        }
    }

    /// Switches to explicit survivors: every event held so far survives,
    /// and the `latest` ones are indexed by key.
    fn pick_all(&mut self) {
        self.picked = true;
        self.picks.clear();
        self.survivors.clear();
        for (s, seg) in self.segments.iter().enumerate() {
            for (i, e) in seg.events.iter().enumerate() {
                if e.meta.get().latest {
                    self.survivors
                        .insert((e.key(), e.sub_key), self.picks.len() as u32);
                }
                self.picks.push((s as u32, i as u32));
            }
        }
        self.len = self.picks.len();
    }

    /// Merges `next`, the next window of the same prefix, in. Returns how
    /// many events held before were superseded by it (`latest`): they are
    /// no longer delivered, and counted in `folded`.
    pub(crate) fn absorb(&mut self, next: &Arc<Sealed<T>>) -> u64 {
        self.windows += 1;
        self.last_seq = next.seq;
        self.closed = next.closed;
        self.reason = next.reason;
        self.dropped += next.dropped;
        self.folded += next.folded;
        for a in &next.aggregates {
            match self.aggregates.iter_mut().find(|x| x.key == a.key) {
                Some(into) => merge_aggregate(into, a),
                None => self.aggregates.push(a.clone()),
            }
        }
        self.merge_histograms(next.histograms.as_slice());
        if next.events.is_empty() {
            // Only aggregates and histograms: nothing of the window is lent.
            return 0;
        }
        if next.latest && !self.picked {
            self.pick_all();
        }
        let seg = self.segments.len() as u32;
        self.segments.push(next.clone());
        self.segment_bytes += next.footprint();
        if !self.picked {
            self.len += next.events.len();
            return 0;
        }
        // Within a window the urgent event (if any) is the last one.
        let urgent = (next.reason == BatchReason::Urgent).then(|| next.events.len() - 1);
        let mut superseded = 0;
        for (i, e) in next.events.iter().enumerate() {
            let pick = (seg, i as u32);
            if !e.meta.get().latest {
                self.picks.push(pick);
                continue;
            }
            let key = (e.key(), e.sub_key);
            let Some(&pos) = self.survivors.get(&key) else {
                self.survivors.insert(key, self.picks.len() as u32);
                self.picks.push(pick);
                continue;
            };
            superseded += 1;
            let (s0, i0) = self.picks[pos as usize];
            let older = &self.segments[s0 as usize].events[i0 as usize];
            if e.nanos < older.nanos {
                // Published before the survivor (a migrating publisher's
                // stale ring): the survivor stays, as in the fold.
                continue;
            }
            if urgent == Some(i) {
                // An urgent survivor goes last, after every other survivor.
                self.picks.remove(pos as usize);
                for p in self.survivors.values_mut() {
                    if *p > pos {
                        *p -= 1;
                    }
                }
                self.survivors.insert(key, self.picks.len() as u32);
                self.picks.push(pick);
            } else {
                self.picks[pos as usize] = pick;
            }
        }
        self.len = self.picks.len();
        self.folded += superseded;
        if superseded > 0 {
            self.compact();
        }
        superseded
    }

    /// Lets go of every window (but the first) none of whose events
    /// survive, renumbering the picks.
    fn compact(&mut self) {
        let n = self.segments.len();
        self.scratch.clear();
        self.scratch.resize(n, 0);
        for &(s, _) in &self.picks {
            self.scratch[s as usize] += 1;
        }
        if self.scratch[1..].iter().all(|&c| c > 0) {
            return;
        }
        // New index of each kept segment (u32::MAX: let go of).
        let mut next = 0u32;
        for (s, slot) in self.scratch.iter_mut().enumerate() {
            if s == 0 || *slot > 0 {
                *slot = next;
                next += 1;
            } else {
                *slot = u32::MAX;
            }
        }
        for pick in &mut self.picks {
            pick.0 = self.scratch[pick.0 as usize];
        }
        let mut s = 0;
        let scratch = &self.scratch;
        let mut freed = 0;
        self.segments.retain(|seg| {
            let keep = scratch[s] != u32::MAX;
            if !keep {
                freed += seg.footprint();
            }
            s += 1;
            keep
        });
        self.segment_bytes -= freed;
    }

    /// Bytes this merge holds beyond its windows' (its own buffers).
    pub(crate) fn own_bytes(&self) -> u64 {
        let picks = self.picks.capacity() * std::mem::size_of::<(u32, u32)>();
        let aggs = self.aggregates.capacity() * std::mem::size_of::<Aggregate>();
        // The merged sketches' bucket arrays (spare slots' included).
        let hists = self.histograms.heap_bytes();
        let segs = self.segments.capacity() * std::mem::size_of::<Arc<Sealed<T>>>();
        // A hash map entry: the key, the position and a control byte.
        let map = self.survivors.capacity() * (std::mem::size_of::<((EventKey, u64), u32)>() + 1);
        (std::mem::size_of::<Self>() + picks + aggs + hists + segs + map) as u64
    }
}
