//! The fold: events in, one batch per prefix per window out. Independent of
//! threads and of the wall clock: the flusher feeds it decoded events and
//! the time of its pass (`set_now`), and asks it to close windows that are
//! due (`emit_due`) or all of them (`emit_all`); closed windows wait as
//! sealed batches until `deliver` hands them to the subscribers.
//!
//! A window closes on time (its deadline: the earliest `now + interval`
//! among its events), on count (its smallest `max_count`), at once for an
//! urgent event, or on flush/shutdown. Names of one prefix share its window
//! even under different policies.
//!
//! An urgent event closes its prefix's window with the pending events
//! first, in their documented order, and itself last. The window is sealed
//! at the end of the next sweep, not at once (see [`Hold`]): events its
//! own task published before it from another thread may sit in a ring the
//! current sweep read before the urgent event's, and they must not come
//! after it. Under `latest` it is
//! therefore never folded into a survivor's slot (which would put it in the
//! middle): a pending survivor of the same (name, sub-key) is superseded,
//! i.e. removed from the batch and counted as folded, and the urgent event
//! comes last.

mod numeric;

pub(crate) use numeric::merge as merge_aggregate;
mod route;
#[cfg(all(test, not(ringfold_loom)))]
mod tests;
mod window;

use std::time::Instant;

use crate::event::{Aggregate, BatchReason, Event};
use crate::histogram::Histograms;
use crate::intern::{Interner, Keepalive, PrefixInfo};
use crate::policy::Pattern;
use crate::record::Decoded;
use crate::stats::{PrefixStats, Report};
use crate::value::Sampler;

use route::Route;
use window::{Acc, Fold, Sealed};

/// Most emptied windows and buffers the fold keeps for reuse: windows in
/// flight at once are far fewer in steady state (one per active prefix per
/// pass), while a flush of a million prefixes would otherwise leave a
/// million emptied buffers behind.
const SPARE: usize = 1024;

/// A window just closed, as `Folder::deliver` hands it over for sealing.
pub(crate) struct Closed<'a, T> {
    pub(crate) prefix_id: u32,
    pub(crate) info: &'a PrefixInfo,
    /// The storage `info` and the events' name pointers live in: a batch
    /// that may outlive the flusher keeps it alive.
    pub(crate) names: &'a Keepalive,
    pub(crate) reason: BatchReason,
    pub(crate) opened: Instant,
    pub(crate) closed: Instant,
    pub(crate) dropped: u64,
    pub(crate) folded: u64,
    /// The window holds `latest` events.
    pub(crate) latest: bool,
    pub(crate) events: &'a mut Vec<Event<T>>,
    pub(crate) aggregates: &'a mut Vec<Aggregate>,
    pub(crate) histograms: &'a mut Histograms,
}

/// The window shapes (interval, count) of a prefix's names, in 4 bytes
/// (one per prefix ever seen): `UNSEEN` (no name of the prefix routed
/// yet), `MIXED` (names with different windows), or else the id of the
/// prefix's first routed name, whose interval and count every name routed
/// so far shares.
type Shape = u32;
const UNSEEN: Shape = u32::MAX;
const MIXED: Shape = u32::MAX - 1;

/// Accumulators, routes and counters: everything a sweep folds into.
pub(crate) struct Folder<T> {
    /// The interner's name storage: keeps every `InternedStr` and
    /// `NameRef` valid, and resolves prefix ids.
    names: Keepalive,
    /// By name id, for every name routed so far (see `Route`).
    routes: Vec<Route>,
    /// By prefix id: the window shape of its names (see
    /// `note_window_shape`).
    shapes: Vec<Shape>,
    accs: Vec<Acc<T>>,
    /// Prefix ids with a non-empty window.
    pending: Vec<u32>,
    /// Windows closed during the current step, delivered after it.
    sealed: Vec<Sealed<T>>,
    /// Open and close time of each entry of `sealed` (same index).
    sealed_times: Vec<(Instant, Instant)>,
    /// By prefix id: when its open window took its first event.
    opened: Vec<Instant>,
    /// Emptied sealed windows, for reuse (at most `SPARE`).
    spare: Vec<Sealed<T>>,
    /// Emptied event and aggregate buffers, for the next windows to open
    /// (at most `SPARE` each): a closed window holds none, so an idle
    /// prefix costs no buffer (see `emit`).
    buffers: Vec<Vec<Event<T>>>,
    agg_buffers: Vec<Vec<Aggregate>>,
    /// Likewise for histogram lists (whose spare slots keep their sketches'
    /// bucket arrays, see `Histograms`).
    hist_buffers: Vec<Histograms>,
    /// Counters of closed windows; `publish_report` adds the open ones.
    report: Report,
    sampler: Option<Sampler<T>>,
    /// The interner's epoch, for event timestamps.
    epoch: Instant,
    /// Counters changed since the last `publish_report`.
    dirty: bool,
    /// Time of the current pass, also as nanoseconds since the epoch (the
    /// timestamp of events not stamped at publish).
    now: Instant,
    now_nanos: u64,
    /// Passes so far (`set_now` starts each one): `latest` windows guard
    /// their sealed survivors by sweep number (see `window::Acc`).
    sweep: u64,
    /// Payload `Drop`s that panicked when the fold discarded a payload
    /// (a `latest` value replaced, an aggregated reading's payload): caught
    /// and counted, never a dead flusher.
    drop_panics: u64,
    /// The ring being drained (`set_source`): a hold keeps the later events
    /// of its urgent event's own ring out of the held window.
    source: usize,
    /// Windows closed by an urgent event, waiting for one more sweep.
    holds: Vec<Hold<T>>,
    /// The sweep that took the event being folded: `sweep`, except while
    /// a hold's deferred events are folded again (see `release`).
    taken_in: u64,
    /// Emptied holds, for reuse.
    spare_holds: Vec<Hold<T>>,
}

/// A window an urgent event closed, held open until the end of the sweep
/// after the one that took the urgent event, then sealed with the urgent
/// event(s) last (`Folder::end_sweep`).
///
/// Why: a task that moves between threads (an async task) leaves its
/// earlier events in other threads' rings. An event that happened before
/// one a sweep took is visible to the flusher by its next sweep (the
/// sweep's Acquire load of the urgent event's ring tail orders every later
/// load of the other rings' tails after it; the same argument as `latest`'s
/// guard, `window::Acc::guard_survivors`), so by then every event the
/// urgent event's task published before it is in the window. Sealing at
/// once let the urgent event overtake them (issue 19).
///
/// While held, the window keeps taking events of its prefix from other
/// rings (they go before the urgent event: published before it, or
/// concurrently); events from a ring that gave an urgent event to the hold
/// are published after it and wait in `after` for the next window, as do
/// `latest` events of an urgent event's key that are not older than it.
/// The cost: an urgent batch is sealed one flusher pass later (the flusher
/// does not sleep while a hold is pending), and a held window may exceed
/// its count bound by what arrives during that pass.
struct Hold<T> {
    pid: u32,
    /// Sealed at the end of this sweep.
    until: u64,
    /// The window's count bound before the hold (the hold sets it to 0 so
    /// that the fast path of `take` calls out, see `Folder::emit_full`).
    max_count: usize,
    /// Rings (`Folder::source`) whose later events of this prefix belong
    /// after the urgent event.
    sources: Vec<usize>,
    /// Urgent events (kept or `latest`), in arrival order: they end the
    /// batch.
    tail: Vec<Event<T>>,
    /// Events for the next window, with their ring and the sweep that took
    /// them, in arrival order.
    after: Vec<(usize, u64, Decoded<T>)>,
}

impl<T> Default for Hold<T> {
    fn default() -> Self {
        Hold {
            pid: 0,
            until: 0,
            max_count: usize::MAX,
            sources: Vec::new(),
            tail: Vec::new(),
            after: Vec::new(),
        }
    }
}

impl<T> Folder<T> {
    /// A fold over `interner`'s names, reading aggregate samples through
    /// `sampler`, starting at time `now`.
    pub(crate) fn new(interner: &Interner, sampler: Option<Sampler<T>>, now: Instant) -> Self {
        let epoch = interner.epoch();
        let mut folder = Folder {
            names: interner.keepalive(),
            routes: Vec::new(),
            shapes: Vec::new(),
            accs: Vec::new(),
            pending: Vec::new(),
            sealed: Vec::new(),
            sealed_times: Vec::new(),
            opened: Vec::new(),
            spare: Vec::new(),
            buffers: Vec::new(),
            agg_buffers: Vec::new(),
            hist_buffers: Vec::new(),
            report: Report::default(),
            sampler,
            epoch,
            dirty: false,
            now,
            now_nanos: 0,
            drop_panics: 0,
            sweep: 0,
            source: 0,
            holds: Vec::new(),
            spare_holds: Vec::new(),
            taken_in: 0,
        };
        folder.set_now(now);
        folder
    }

    /// Starts a pass at time `now`: windows opened now close at
    /// `now + interval`, and `emit_due` compares deadlines against it.
    /// Called once per pass, before its sweep of every ring: `latest`
    /// counts sweeps through it (a straggler of one task, published on
    /// another thread before an event that a sweep took, has arrived by the
    /// next sweep; see `window::Acc::guard_survivors`).
    pub(crate) fn set_now(&mut self, now: Instant) {
        self.sweep += 1;
        self.taken_in = self.sweep;
        self.now = now;
        self.now_nanos = now.saturating_duration_since(self.epoch).as_nanos() as u64;
    }

    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// The ring whose events `take` gets next, as an opaque id (the
    /// flusher uses its lane's address): set before each drain.
    #[inline]
    pub(crate) fn set_source(&mut self, source: usize) {
        self.source = source;
    }

    /// Some urgent window waits for the end of a sweep (see [`Hold`]): the
    /// flusher must sweep again rather than sleep.
    pub(crate) fn holding(&self) -> bool {
        !self.holds.is_empty()
    }

    /// The end of a sweep: seals the windows held since the previous sweep
    /// (see [`Hold`]), or every held window if `all` (flush, shutdown: the
    /// caller swept after the held events arrived).
    pub(crate) fn end_sweep(&mut self, all: bool) {
        let mut i = 0;
        while i < self.holds.len() {
            if all || self.holds[i].until <= self.sweep {
                let hold = self.holds.swap_remove(i);
                self.release(hold);
            } else {
                i += 1;
            }
        }
    }

    /// Seals a held window, the urgent events last, then takes the events
    /// that waited for the next window (which may start another hold).
    #[cold]
    fn release(&mut self, mut hold: Hold<T>) {
        let pid = hold.pid as usize;
        let acc = &mut self.accs[pid];
        acc.held = false;
        acc.max_count = hold.max_count;
        acc.events.append(&mut hold.tail);
        self.emit(pid, BatchReason::Urgent);
        let source = self.source;
        for (from, sweep, event) in hold.after.drain(..) {
            self.source = from;
            // An urgent event among them waits for the end of the sweep
            // after the one that took it, as if taken then: often already
            // over (its hold is then released by the same `end_sweep`).
            self.taken_in = sweep;
            if let Some(route) = self.routes.get(event.name_id as usize).copied() {
                self.take_general(event, route);
            }
        }
        self.source = source;
        self.taken_in = self.sweep;
        hold.sources.clear();
        self.spare_holds.push(hold);
    }

    /// The index in `holds` of prefix `pid`'s hold, started (the window's
    /// count bound saved) if there is none, for an urgent event from the
    /// current source: `until` moves to the end of the next sweep, and the
    /// source's later events of the prefix will wait for the next window.
    fn hold(&mut self, pid: usize) -> usize {
        let at = match self.holds.iter().position(|h| h.pid as usize == pid) {
            Some(at) => at,
            None => {
                let acc = &mut self.accs[pid];
                let mut hold = self.spare_holds.pop().unwrap_or_default();
                hold.pid = pid as u32;
                hold.until = 0;
                hold.max_count = acc.max_count;
                acc.max_count = 0;
                acc.held = true;
                self.holds.push(hold);
                self.holds.len() - 1
            }
        };
        let hold = &mut self.holds[at];
        hold.until = hold.until.max(self.taken_in + 1);
        if !hold.sources.contains(&self.source) {
            hold.sources.push(self.source);
        }
        at
    }

    /// A held prefix `pid` takes an event: true (and the event kept for
    /// the next window) if it belongs after the urgent event (see [`Hold`]).
    #[cold]
    fn defer(&mut self, pid: usize, event: Decoded<T>, fold: Fold) -> Option<Decoded<T>> {
        let source = self.source;
        let nanos = event.stamp.unwrap_or(self.now_nanos);
        let Some(hold) = self.holds.iter_mut().find(|h| h.pid as usize == pid) else {
            return Some(event);
        };
        let after = hold.sources.contains(&source)
            || (fold == Fold::Latest
                && self.accs[pid].latest_defers(event.name_id, event.sub_key, nanos));
        if !after {
            return Some(event);
        }
        if !hold.sources.contains(&source) {
            // Its ring's later events of the prefix follow it.
            hold.sources.push(source);
        }
        // Taken now: keeps its take time (or publish stamp) when folded.
        hold.after.push((
            source,
            self.taken_in,
            Decoded {
                stamp: Some(nanos),
                ..event
            },
        ));
        None
    }

    /// Payload `Drop`s that panicked in the fold (see `drop_panics`).
    pub(crate) fn drop_panics(&self) -> u64 {
        self.drop_panics
    }

    /// The flusher's own counters (sweeps, ticks, panics) live in the same
    /// report, so that one snapshot carries them all.
    pub(crate) fn report_mut(&mut self) -> &mut Report {
        self.dirty = true;
        &mut self.report
    }

    /// Marks the counters for publication even if nothing changed.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn ensure_prefix(&mut self, pid: usize) {
        if pid >= self.accs.len() {
            let now = self.now;
            self.accs.resize_with(pid + 1, || Acc::new(now));
            self.opened.resize(pid + 1, now);
            self.report.prefixes.resize(pid + 1, PrefixStats::default());
        }
    }

    /// Records the window shape of the newest route `id`'s prefix. The
    /// first name of a prefix sets it; a name with another shape makes the
    /// prefix mixed, and every route of a mixed prefix leaves `take`'s fast
    /// path (whose window is only ever opened with the route's own shape).
    /// A prefix turns mixed at most once, so the scan below runs at most
    /// once per prefix.
    fn note_window_shape(&mut self, id: usize) {
        let route = self.routes[id];
        let pid = route.prefix as usize;
        if self.shapes.len() <= pid {
            self.shapes.resize(pid + 1, UNSEEN);
        }
        let shape = (route.interval, route.max_count);
        match self.shapes[pid] {
            // Ids stay below 2^30 (`record::MAX_NAMES`): never `MIXED`.
            UNSEEN => self.shapes[pid] = id as Shape,
            MIXED => self.routes[id].simple = false,
            first => {
                let first = &self.routes[first as usize];
                if (first.interval, first.max_count) != shape {
                    self.shapes[pid] = MIXED;
                    for r in self.routes.iter_mut().filter(|r| r.prefix == route.prefix) {
                        r.simple = false;
                    }
                }
            }
        }
    }

    /// The route of name `id`, extending `routes` from a newer snapshot if
    /// the name is newer than the ones seen so far.
    #[cold]
    fn route_new_name(&mut self, id: usize, interner: &Interner) -> Option<Route> {
        // The published name count only grows; every id below it resolves.
        let known = interner.name_count();
        while self.routes.len() < known {
            let Some(info) = self.names.name(self.routes.len()) else {
                break;
            };
            let route = Route::of(info);
            self.routes.push(route);
            self.ensure_prefix(route.prefix as usize);
            self.note_window_shape(self.routes.len() - 1);
        }
        // Producers only send keys below the name count they saw, and the
        // count only grows, so the lookup cannot miss.
        let route = self.routes.get(id).copied();
        debug_assert!(route.is_some(), "unknown name id {id}");
        route
    }

    /// Folds one event into its prefix's window, sealing the window if the
    /// event closes it. The flusher's hot loop. The common case (a kept
    /// event of a name whose prefix has one window shape, not urgent) reads
    /// three fields of the route, bumps the window's count and pushes the
    /// 32-byte event; opening a window, closing it, and every other policy
    /// are out of line, so the loop keeps its values in registers. `interner`
    /// is read only for a name newer than the ones seen so far.
    #[inline]
    pub(crate) fn take(&mut self, event: Decoded<T>, interner: &Interner) {
        // Taken apart here and rebuilt only on the rare paths, so the
        // common one keeps the fields in registers.
        let Decoded {
            name_id,
            urgent,
            sub_key,
            stamp,
            payload,
        } = event;
        let id = name_id as usize;
        let rebuilt = |payload| Decoded {
            name_id,
            urgent,
            sub_key,
            stamp,
            payload,
        };
        let Some(route) = self.routes.get(id) else {
            return self.take_new_name(rebuilt(payload), interner);
        };
        if !route.simple || urgent {
            return self.take_general(rebuilt(payload), *route);
        }
        let pid = route.prefix as usize;
        let meta = route.meta;
        let nanos = stamp.unwrap_or(self.now_nanos);
        let acc = &mut self.accs[pid];
        if acc.taken == 0 {
            open_window(
                acc,
                route,
                self.now,
                &mut self.opened[pid],
                &mut self.pending,
                &mut self.buffers,
            );
        }
        acc.taken += 1;
        acc.events.push(Event {
            meta,
            sub_key,
            nanos,
            payload,
        });
        if acc.taken >= acc.max_count {
            self.emit_full(id);
        }
    }

    /// `take` for a name the routes do not know yet (see `route_new_name`).
    #[cold]
    #[inline(never)]
    fn take_new_name(&mut self, event: Decoded<T>, interner: &Interner) {
        if let Some(route) = self.route_new_name(event.name_id as usize, interner) {
            self.take_general(event, route);
        }
    }

    /// Name `id`'s event filled its prefix's window: seal it. Also where
    /// `take`'s fast path lands for every event of a held window (whose
    /// count bound is 0): the event just pushed moves to the next window
    /// if it belongs after the urgent event (see [`Hold`]).
    #[inline(never)]
    fn emit_full(&mut self, id: usize) {
        let route = &self.routes[id];
        let (pid, reason) = (route.prefix as usize, route.count_reason);
        if self.accs[pid].held {
            return self.fast_path_held(pid, id);
        }
        self.emit(pid, reason);
    }

    /// `take`'s fast path pushed an event of name `id` into held window
    /// `pid`: taken back out and deferred if it belongs after the urgent
    /// event.
    #[cold]
    fn fast_path_held(&mut self, pid: usize, id: usize) {
        let source = self.source;
        let Some(hold) = self.holds.iter_mut().find(|h| h.pid as usize == pid) else {
            return;
        };
        if !hold.sources.contains(&source) {
            return;
        }
        let acc = &mut self.accs[pid];
        let Some(event) = acc.events.pop() else {
            return;
        };
        acc.taken -= 1;
        hold.after.push((
            source,
            self.taken_in,
            Decoded {
                name_id: id as u32,
                urgent: false,
                sub_key: event.sub_key,
                stamp: Some(event.nanos),
                payload: event.payload,
            },
        ));
    }

    /// Every case of `take`: any policy, urgent events, prefixes whose
    /// names have different windows.
    #[inline(never)]
    fn take_general(&mut self, event: Decoded<T>, route: Route) {
        let pid = route.prefix as usize;
        let event = if self.accs[pid].held {
            match self.defer(pid, event, route.fold) {
                Some(event) => event,
                None => return,
            }
        } else {
            event
        };
        let nanos = event.stamp.unwrap_or(self.now_nanos);
        let acc = &mut self.accs[pid];
        if acc.taken == 0 {
            self.opened[pid] = self.now;
            acc.deadline = self.now + route.interval;
            acc.interval = route.interval;
            acc.max_count = route.max_count;
            if !acc.queued {
                acc.queued = true;
                self.pending.push(pid as u32);
            }
            if acc.events.capacity() == 0 {
                acc.events = self.buffers.pop().unwrap_or_default();
            }
        } else if route.interval < acc.interval || route.max_count < acc.max_count {
            // Only when a prefix mixes policies. The deadline is the minimum
            // of `now + interval` over the window's events; `now` never
            // decreases, so only a shorter interval can lower it. (A held
            // window's count bound is 0 and its count no longer matters.)
            if route.interval < acc.interval {
                acc.interval = route.interval;
                acc.deadline = acc.deadline.min(self.now + route.interval);
            }
            acc.max_count = acc.max_count.min(route.max_count);
        }
        acc.taken += 1;
        // An urgent event starts (or extends) its window's hold; kept and
        // `latest` urgent events wait in the hold's tail.
        let urgent = route.urgent || event.urgent;
        let hold = urgent.then(|| self.hold(pid));
        let acc = &mut self.accs[pid];
        let folded = Event {
            meta: route.meta,
            sub_key: event.sub_key,
            nanos,
            payload: event.payload,
        };
        match (route.fold, hold) {
            (Fold::Keep, Some(h)) => self.holds[h].tail.push(folded),
            (Fold::Keep, None) => acc.events.push(folded),
            (Fold::Latest, Some(h)) => acc.fold_latest_urgent(
                event.name_id,
                folded,
                self.sweep,
                &mut self.drop_panics,
                &mut self.holds[h].tail,
            ),
            (Fold::Latest, None) => {
                acc.fold_latest(event.name_id, folded, self.sweep, &mut self.drop_panics)
            }
            (Fold::Aggregate, _) => {
                if acc.aggregates.capacity() == 0 {
                    acc.aggregates = self.agg_buffers.pop().unwrap_or_default();
                }
                if !acc.fold_aggregate(self.sampler, folded, &mut self.drop_panics) {
                    self.report.not_numeric += 1;
                    self.report.prefixes[pid].dropped += 1;
                }
            }
            (Fold::Histogram, _) => {
                if acc.histograms.capacity() == 0 {
                    acc.histograms = self.hist_buffers.pop().unwrap_or_default();
                }
                if !acc.fold_histogram(self.sampler, folded, &mut self.drop_panics) {
                    self.report.not_numeric += 1;
                    self.report.prefixes[pid].dropped += 1;
                }
            }
        }
        // A held window (an urgent one among them) is sealed by
        // `end_sweep`; `emit` passes it over.
        if acc.taken >= acc.max_count {
            self.emit(pid, route.count_reason);
        }
    }

    /// Closes prefix `pid`'s window: its buffers move into a sealed batch
    /// (swapped with recycled ones, so nothing allocates in steady state)
    /// and the window restarts empty. Delivery happens in `deliver`, after
    /// the ring range being drained has been released, so a slow subscriber
    /// never holds ring slots.
    fn emit(&mut self, pid: usize, reason: BatchReason) {
        let Some(acc) = self.accs.get_mut(pid) else {
            return;
        };
        if acc.taken == 0 || acc.held {
            return;
        }
        // The window's buffers go with it; the spare's emptied ones wait
        // for the next window to open (see `buffers`).
        let mut spare = self.spare.pop().unwrap_or_default();
        let events = std::mem::replace(&mut spare.events, std::mem::take(&mut acc.events));
        if events.capacity() > 0 && self.buffers.len() < SPARE {
            self.buffers.push(events);
        }
        // Aggregate and histogram buffers likewise, skipped when neither
        // side has one (a prefix of plain events, the common case).
        if acc.aggregates.capacity() > 0 || spare.aggregates.capacity() > 0 {
            let aggregates =
                std::mem::replace(&mut spare.aggregates, std::mem::take(&mut acc.aggregates));
            if aggregates.capacity() > 0 && self.agg_buffers.len() < SPARE {
                self.agg_buffers.push(aggregates);
            }
        }
        if acc.histograms.capacity() > 0 || spare.histograms.capacity() > 0 {
            let histograms =
                std::mem::replace(&mut spare.histograms, std::mem::take(&mut acc.histograms));
            if histograms.capacity() > 0 && self.hist_buffers.len() < SPARE {
                self.hist_buffers.push(histograms);
            }
        }
        spare.pid = pid;
        spare.reason = reason;
        spare.folded = acc.folded;
        spare.latest = acc.has_latest;
        spare.dropped = 0;
        if !spare.events.is_empty() || !spare.aggregates.is_empty() || !spare.histograms.is_empty()
        {
            spare.dropped = std::mem::take(&mut acc.dropped_since);
        }
        self.sealed.push(spare);
        self.sealed_times.push((self.opened[pid], self.now));
        self.report.prefixes[pid].received += acc.taken as u64;
        acc.reset();
        self.dirty = true;
    }

    /// Hands each window closed since the last call, in the order they were
    /// sealed, to `on_sealed` (the flusher seals it into a shared batch,
    /// taking the buffers and leaving recycled empty ones in their place),
    /// then keeps the buffers for the next windows. Windows that ended up
    /// empty (every event discarded as not numeric) are skipped: no batch.
    pub(crate) fn deliver(&mut self, mut on_sealed: impl FnMut(Closed<'_, T>)) {
        for (mut sealed, (opened, closed)) in self.sealed.drain(..).zip(self.sealed_times.drain(..))
        {
            let pid = sealed.pid;
            let delivered = sealed.events.len() as u64;
            let stats = &mut self.report.prefixes[pid];
            if !sealed.events.is_empty()
                || !sealed.aggregates.is_empty()
                || !sealed.histograms.is_empty()
            {
                let Some(info) = self.names.prefix(pid) else {
                    continue;
                };
                on_sealed(Closed {
                    prefix_id: pid as u32,
                    info,
                    names: &self.names,
                    reason: sealed.reason,
                    opened,
                    closed,
                    dropped: sealed.dropped,
                    folded: sealed.folded,
                    latest: sealed.latest,
                    events: &mut sealed.events,
                    aggregates: &mut sealed.aggregates,
                    histograms: &mut sealed.histograms,
                });
                self.report.batches += 1;
                stats.batches += 1;
            }
            self.report.sealed += delivered;
            self.report.folded += sealed.folded;
            stats.sealed += delivered;
            stats.folded += sealed.folded;
            // Empty already when `on_sealed` took the buffers; cleared in
            // case it did not.
            sealed.events.clear();
            sealed.aggregates.clear();
            sealed.histograms.clear();
            if self.spare.len() < SPARE {
                self.spare.push(sealed);
            }
        }
        // A flush of many prefixes seals a window each at once: the lists
        // do not keep that size.
        if self.sealed.capacity() > SPARE {
            self.sealed.shrink_to(SPARE);
            self.sealed_times.shrink_to(SPARE);
        }
        self.dirty = true;
    }

    /// Seals every prefix whose window has elapsed by `now`.
    pub(crate) fn emit_due(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let pid = self.pending[i] as usize;
            if self.accs[pid].taken > 0 && self.now >= self.accs[pid].deadline {
                self.emit(pid, BatchReason::Interval);
            }
            i += 1;
        }
        self.compact_pending();
    }

    /// Seals every pending prefix (flush, shutdown), optionally only those
    /// matching one of `filter`'s patterns.
    pub(crate) fn emit_all(&mut self, reason: BatchReason, filter: Option<&[Pattern]>) {
        // Urgent windows first, whatever the filter: they are due.
        self.end_sweep(true);
        for i in 0..self.pending.len() {
            let pid = self.pending[i] as usize;
            let selected = filter.is_none_or(|patterns| {
                let prefix = self.names.prefix(pid).map_or("", |p| &p.prefix);
                patterns.iter().any(|p| p.matches(prefix))
            });
            if selected {
                self.emit(pid, reason);
            }
        }
        self.compact_pending();
    }

    fn compact_pending(&mut self) {
        let accs = &mut self.accs;
        self.pending.retain(|&pid| {
            let acc = &mut accs[pid as usize];
            acc.queued = acc.taken > 0;
            acc.queued
        });
    }

    /// The earliest deadline among open windows; `None` when none is open.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|&pid| self.accs[pid as usize].deadline)
            .min()
    }

    /// Counts `n` events of prefix `pid` rejected at a producer; the next
    /// batch of that prefix reports them as `dropped`.
    pub(crate) fn note_drops(&mut self, pid: u32, n: u64) {
        self.ensure_prefix(pid as usize);
        self.accs[pid as usize].dropped_since += n;
        self.report.prefixes[pid as usize].dropped += n;
        self.dirty = true;
    }

    /// Copies the counters of closed windows plus those of the open ones
    /// into `into` (kept per window, not per event, to keep the fold lean),
    /// if anything changed since the last call.
    pub(crate) fn publish_report(&mut self, into: &mut Report) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        into.clone_from(&self.report);
        into.accumulated = 0;
        for &pid in &self.pending {
            let acc = &self.accs[pid as usize];
            into.accumulated += acc.held();
            into.prefixes[pid as usize].received += acc.taken as u64;
        }
        // Events a hold keeps for the next window.
        for hold in &self.holds {
            let n = hold.after.len() as u64;
            into.accumulated += n;
            into.prefixes[hold.pid as usize].received += n;
        }
    }
}

/// Opens the empty window `acc` for an event of a simple `route` (every
/// name of the prefix has this window shape): `take`'s rare branch, out of
/// line, on split borrows of the folder so `take` indexes once.
#[cold]
#[inline(never)]
fn open_window<T>(
    acc: &mut Acc<T>,
    route: &Route,
    now: Instant,
    opened: &mut Instant,
    pending: &mut Vec<u32>,
    buffers: &mut Vec<Vec<Event<T>>>,
) {
    if acc.events.capacity() == 0 {
        acc.events = buffers.pop().unwrap_or_default();
    }
    *opened = now;
    acc.deadline = now + route.interval;
    acc.interval = route.interval;
    acc.max_count = route.max_count;
    if !acc.queued {
        acc.queued = true;
        pending.push(route.prefix);
    }
}
