//! The flusher thread: sweeps every producer ring, folds events into one
//! accumulator per prefix, and emits a batch per prefix when its window
//! elapses or its count threshold is reached, whichever comes first.
//!
//! Sleeping is adaptive, in the manner of kernel ring buffers: the flusher
//! announces that it parks (PARKED: until its next tick or window deadline;
//! DEEP: indefinitely, nothing pending anywhere), re-checks the rings, and
//! only then parks. Producers look at the announcement after each publish
//! (one Relaxed load) and wake it only when they cross their high-water mark
//! (PARKED), publish the first event into an idle engine (DEEP), or publish
//! something urgent. So there is never a syscall per event, and an idle
//! engine costs no CPU.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::barrier;
use crate::engine::{Shared, CLOSED, DEEP, PARKED};
use crate::event::{Aggregate, Batch, BatchReason, Event, InternedStr, NameRef};
use crate::intern::{Interner, NameInfo};
use crate::policy::{Pattern, Policy};
use crate::producer::Lane;
use crate::record::{Ext, Parts, Slot};
use crate::ring::Consumer;
use crate::stats::{PrefixStats, Stats};
use crate::subscriber::Subscriber;
use crate::sync::{self, lock, Arc, JoinHandle, Ordering};

/// How long a DEEP park lasts at most. Correctness does not depend on it
/// (the first publish wakes the flusher); it only bounds the damage of a
/// bug, and costs one wake-up per minute when idle.
const DEEP_PARK: Duration = Duration::from_secs(60);

/// While producers stream (the last sweep took at least a high-water
/// mark's worth of slots), the flusher yields its core up to this many times,
/// sweeping again as soon as a ring reaches its high-water mark, before it
/// announces a park. Announcing costs the heavy barrier (a membarrier IPI to
/// every running producer's CPU, microseconds on a VM) and the park a futex
/// round trip, both of which a streaming producer would undo within
/// microseconds by crossing its high-water mark; yielding costs the
/// producers nothing and hands them the core when they are more threads than
/// cores. Measured on a 2-core VM (`benches/throughput.rs`): lingering until
/// only a quarter of the high-water mark was pending made sweeps so small
/// that their fixed cost dominated (40 ns/event instead of 11), so the
/// threshold is the high-water mark itself. Under loom it is off: lingering
/// only ever leads to another sweep, which is always safe, and the models
/// check the park protocol itself.
const STREAM_YIELDS: u32 = if cfg!(loom) { 0 } else { 64 };

/// The flusher's counters, published to `Shared::report` after each pass.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) delivered: u64,
    pub(crate) folded: u64,
    pub(crate) not_numeric: u64,
    pub(crate) batches: u64,
    pub(crate) panics: u64,
    pub(crate) ticks: u64,
    pub(crate) sweeps: u64,
    /// Events held in accumulators (taken off rings, not yet emitted).
    pub(crate) accumulated: u64,
    /// By prefix id.
    pub(crate) prefixes: Vec<PrefixStats>,
}

impl Clone for Report {
    fn clone(&self) -> Self {
        let mut copy = Report::default();
        copy.clone_from(self);
        copy
    }

    /// Field-wise, reusing `prefixes`' buffer: publishing the report after
    /// every pass must not allocate in steady state.
    fn clone_from(&mut self, source: &Self) {
        self.delivered = source.delivered;
        self.folded = source.folded;
        self.not_numeric = source.not_numeric;
        self.batches = source.batches;
        self.panics = source.panics;
        self.ticks = source.ticks;
        self.sweeps = source.sweeps;
        self.accumulated = source.accumulated;
        self.prefixes.clone_from(&source.prefixes);
    }
}

impl Report {
    pub(crate) fn to_stats(&self, interner: &Interner) -> Stats {
        let mut stats = Stats {
            delivered: self.delivered,
            folded: self.folded,
            batches: self.batches,
            subscriber_panics: self.panics,
            ticks: self.ticks,
            sweeps: self.sweeps,
            ..Stats::default()
        };
        stats.dropped.not_numeric = self.not_numeric;
        for (id, p) in self.prefixes.iter().enumerate() {
            if let Some(info) = interner.prefix(id) {
                stats.prefixes.insert(info.prefix.to_string(), *p);
            }
        }
        stats
    }
}

/// Spawns the flusher thread.
pub(crate) fn spawn<T: Send + 'static>(
    shared: Arc<Shared<T>>,
    subscribers: Vec<Box<dyn Subscriber<T>>>,
    core: Option<core_affinity::CoreId>,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("ringfold-flusher-{}", shared.id);
    // Register for membarrier before any producer exists, so producers take
    // the light barrier from their first publish (a failed registration
    // leaves both sides on SeqCst fences).
    barrier::init();
    sync::spawn_named(name, move || {
        // Registered before the first sweep. A producer that looked for the
        // handle earlier found none, but it only looks when the state word
        // says the flusher is parked, which it has not done yet; a flush or
        // shutdown request made earlier is seen by the first pass.
        *lock(&shared.flusher) = Some(sync::current());
        if let Some(core) = core {
            core_affinity::set_for_current(core);
        }
        Flusher::new(shared, subscribers).run();
    })
}

/// One producer's ring, as the flusher holds it.
struct LaneSlot<T> {
    lane: Arc<Lane<T>>,
    consumer: Consumer<Slot<T>>,
    drops_seen: u64,
}

/// How a name's events are folded into its prefix's window.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// Batch and passthrough: every event is kept.
    Keep,
    /// `Policy::latest`: one survivor per (name, sub-key).
    Latest,
    /// `Policy::aggregate`: one running aggregate per name.
    Aggregate,
}

/// Everything the fold needs to know about one name, resolved once from the
/// interner snapshot into a dense array indexed by name id: the per-event
/// cost is one 40-byte read, not a `NameInfo` read plus a policy match.
#[derive(Clone, Copy)]
struct Route {
    meta: NameRef,
    prefix: u32,
    fold: Fold,
    /// An urgent rule matches the name: its events close the window.
    urgent: bool,
    passthrough: bool,
    interval: Duration,
    max_count: usize,
}

impl Route {
    fn of(info: &NameInfo) -> Route {
        let (interval, max_count) = info.policy.effective_window();
        Route {
            meta: NameRef::new(&info.meta),
            prefix: info.prefix,
            fold: match info.policy {
                Policy::Passthrough | Policy::Batch { .. } => Fold::Keep,
                Policy::Latest { .. } => Fold::Latest,
                Policy::Aggregate { .. } => Fold::Aggregate,
            },
            urgent: info.urgent,
            passthrough: info.policy == Policy::Passthrough,
            interval,
            max_count,
        }
    }
}

/// Pending events of one prefix. Buffers and maps are reused across
/// windows, so steady-state folding allocates nothing.
struct Acc<T> {
    events: Vec<Event<T>>,
    /// Events taken into this window (including folded ones).
    taken: usize,
    max_count: usize,
    /// Shortest window interval among this window's events.
    interval: Duration,
    deadline: Instant,
    /// `latest`: (name id, sub-key) -> index in `events`.
    latest: AHashMap<(u32, u64), usize>,
    aggregates: Vec<Aggregate>,
    /// `aggregate`: name id -> index in `aggregates`.
    aggregate_index: AHashMap<u32, usize>,
    /// Taken into this window but discarded (not numeric); the others are
    /// held until the window closes.
    discarded: usize,
    folded: u64,
    dropped_since: u64,
    queued: bool,
}

impl<T> Acc<T> {
    fn new(now: Instant) -> Self {
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

    fn held(&self) -> u64 {
        (self.taken - self.discarded) as u64
    }
}

/// A closed window waiting for delivery (or, emptied, for reuse).
struct Sealed<T> {
    pid: usize,
    reason: BatchReason,
    events: Vec<Event<T>>,
    aggregates: Vec<Aggregate>,
    folded: u64,
    dropped: u64,
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

/// Accumulators, subscribers and counters: everything a sweep folds into.
struct Delivery<T: Send + 'static> {
    /// Its interner's arena also keeps every `InternedStr` and `NameRef`
    /// valid (entries never move or drop before the interner does).
    shared: Arc<Shared<T>>,
    /// By name id, for every name routed so far (see `Route`).
    routes: Vec<Route>,
    accs: Vec<Acc<T>>,
    /// Prefix ids with a non-empty window.
    pending: Vec<u32>,
    subscribers: Vec<Box<dyn Subscriber<T>>>,
    /// Windows closed during the current step, delivered after it.
    sealed: Vec<Sealed<T>>,
    /// Emptied buffers for the next windows.
    spare: Vec<Sealed<T>>,
    /// Counters of closed windows; `publish_report` adds the open ones.
    report: Report,
    /// An event was taken since the flusher last went to sleep.
    took_any: bool,
    /// Slots taken by the current pass's sweep.
    pass_taken: usize,
    /// Extension words for the next event slot (see `record.rs`).
    ext: Ext,
    /// Extension slots taken from the lane being drained.
    ext_taken: u64,
    dirty: bool,
    /// Time of the current pass, also as nanoseconds since the epoch (the
    /// timestamp of events not stamped at publish).
    now: Instant,
    now_nanos: u64,
}

impl<T: Send + 'static> Delivery<T> {
    fn set_now(&mut self, now: Instant) {
        self.now = now;
        let epoch = self.shared.interner.epoch();
        self.now_nanos = now.saturating_duration_since(epoch).as_nanos() as u64;
    }

    fn ensure_prefix(&mut self, pid: usize) {
        if pid >= self.accs.len() {
            let now = self.now;
            self.accs.resize_with(pid + 1, || Acc::new(now));
            self.report.prefixes.resize(pid + 1, PrefixStats::default());
        }
    }

    /// An extension slot: part of the next event's sub-key or stamp.
    #[cold]
    fn take_ext(&mut self, kind: u32, data: u32) {
        self.ext.set(kind, data);
        self.ext_taken += 1;
    }

    /// The route of name `id`, extending `routes` from a newer snapshot if
    /// the name is newer than the ones seen so far.
    #[cold]
    fn route_new_name(&mut self, id: usize) -> Option<Route> {
        let known = self.shared.interner.name_count();
        while self.routes.len() < known {
            let Some(info) = self.shared.interner.name(self.routes.len()) else {
                break;
            };
            let route = Route::of(info);
            self.routes.push(route);
            self.ensure_prefix(route.prefix as usize);
        }
        // Producers only send keys below the snapshot length they saw, and
        // snapshots only grow, so the lookup cannot miss.
        let route = self.routes.get(id).copied();
        debug_assert!(route.is_some(), "unknown name id {id}");
        route
    }

    /// Folds one slot into its prefix's window, emitting if it triggers.
    /// The hot loop of the flusher: one route read, one window update, one
    /// 32-byte push for batch policies.
    #[inline]
    fn take(&mut self, slot: Slot<T>) {
        let (name_id, urgent, sub_key_low, payload) = match slot.into_parts() {
            Parts::Event {
                name_id,
                urgent,
                sub_key_low,
                payload,
            } => (name_id, urgent, sub_key_low, payload),
            Parts::Ext { kind, data } => return self.take_ext(kind, data),
        };
        // Extension words precede their event in the same ring; taking them
        // leaves zeros (no wide sub-key, no stamp) for the next event.
        let ext = std::mem::take(&mut self.ext);
        let sub_key = u64::from(ext.sub_key_high) << 32 | u64::from(sub_key_low);
        let id = name_id as usize;
        let route = match self.routes.get(id) {
            Some(route) => *route,
            None => match self.route_new_name(id) {
                Some(route) => route,
                None => return,
            },
        };
        let pid = route.prefix as usize;
        let nanos = if ext.stamp == 0 {
            self.now_nanos
        } else {
            ext.stamp - 1
        };
        let acc = &mut self.accs[pid];
        if acc.taken == 0 {
            acc.deadline = self.now + route.interval;
            acc.interval = route.interval;
            acc.max_count = route.max_count;
            if !acc.queued {
                acc.queued = true;
                self.pending.push(pid as u32);
            }
        } else if route.interval < acc.interval || route.max_count < acc.max_count {
            // Only when a prefix mixes policies. The deadline is the minimum
            // of `now + interval` over the window's events; `now` never
            // decreases, so only a shorter interval can lower it.
            if route.interval < acc.interval {
                acc.interval = route.interval;
                acc.deadline = acc.deadline.min(self.now + route.interval);
            }
            acc.max_count = acc.max_count.min(route.max_count);
        }
        acc.taken += 1;
        let event = Event {
            meta: route.meta,
            sub_key,
            nanos,
            payload,
        };
        match route.fold {
            Fold::Keep => acc.events.push(event),
            Fold::Latest => fold_latest(acc, name_id, event),
            Fold::Aggregate => {
                if !fold_aggregate(acc, self.shared.sampler, event) {
                    self.report.not_numeric += 1;
                    self.report.prefixes[pid].dropped += 1;
                }
            }
        }
        let full = acc.taken >= acc.max_count;
        if route.urgent || urgent {
            self.emit(pid, BatchReason::Urgent);
        } else if full {
            let reason = if route.passthrough {
                BatchReason::Passthrough
            } else {
                BatchReason::Count
            };
            self.emit(pid, reason);
        }
    }

    /// Closes prefix `pid`'s window: its buffers move into a sealed batch
    /// (swapped with recycled ones, so nothing allocates in steady state)
    /// and the window restarts empty. Delivery happens in `deliver_sealed`,
    /// after the ring range being drained has been released, so a slow
    /// subscriber never holds ring slots.
    fn emit(&mut self, pid: usize, reason: BatchReason) {
        let Some(acc) = self.accs.get_mut(pid) else {
            return;
        };
        if acc.taken == 0 {
            return;
        }
        let mut spare = self.spare.pop().unwrap_or_default();
        std::mem::swap(&mut spare.events, &mut acc.events);
        std::mem::swap(&mut spare.aggregates, &mut acc.aggregates);
        spare.pid = pid;
        spare.reason = reason;
        spare.folded = acc.folded;
        spare.dropped = 0;
        if !spare.events.is_empty() || !spare.aggregates.is_empty() {
            spare.dropped = std::mem::take(&mut acc.dropped_since);
        }
        self.sealed.push(spare);
        self.report.prefixes[pid].received += acc.taken as u64;
        acc.latest.clear();
        acc.aggregate_index.clear();
        acc.taken = 0;
        acc.discarded = 0;
        acc.folded = 0;
        acc.max_count = usize::MAX;
        self.dirty = true;
    }

    /// Delivers sealed batches, in the order they were sealed, to every
    /// subscriber, then recycles their buffers.
    fn deliver_sealed(&mut self) {
        for mut sealed in self.sealed.drain(..) {
            let pid = sealed.pid;
            let stats = &mut self.report.prefixes[pid];
            // Always resolves: a prefix is published before any name of it.
            let info = self.shared.interner.prefix(pid);
            let info = info.filter(|_| !sealed.events.is_empty() || !sealed.aggregates.is_empty());
            if let Some(info) = info {
                let batch = Batch {
                    prefix: &info.prefix,
                    name: &info.batch_name,
                    events: &sealed.events,
                    aggregates: &sealed.aggregates,
                    reason: sealed.reason,
                    dropped: sealed.dropped,
                    folded: sealed.folded,
                };
                for subscriber in &mut self.subscribers {
                    // A panicking subscriber is counted and skipped for this
                    // batch; the others still get it, and so does it next
                    // time.
                    if catch_unwind(AssertUnwindSafe(|| subscriber.on_batch(&batch))).is_err() {
                        self.report.panics += 1;
                    }
                }
                self.report.batches += 1;
                stats.batches += 1;
            }
            let delivered = sealed.events.len() as u64;
            self.report.delivered += delivered;
            self.report.folded += sealed.folded;
            stats.delivered += delivered;
            stats.folded += sealed.folded;
            sealed.events.clear();
            sealed.aggregates.clear();
            self.spare.push(sealed);
        }
        self.dirty = true;
    }

    /// Emits every prefix whose window has elapsed.
    fn emit_due(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let pid = self.pending[i] as usize;
            if self.accs[pid].taken > 0 && self.now >= self.accs[pid].deadline {
                self.emit(pid, BatchReason::Interval);
            }
            i += 1;
        }
        self.compact_pending();
        self.deliver_sealed();
    }

    /// Emits every pending prefix (flush, shutdown), optionally filtered.
    fn emit_all(&mut self, reason: BatchReason, filter: Option<&[Pattern]>) {
        for i in 0..self.pending.len() {
            let pid = self.pending[i] as usize;
            let selected = filter.is_none_or(|patterns| {
                let prefix = self.shared.interner.prefix(pid);
                prefix.is_some_and(|info| patterns.iter().any(|p| p.matches(&info.prefix)))
            });
            if selected {
                self.emit(pid, reason);
            }
        }
        self.compact_pending();
        self.deliver_sealed();
    }

    fn compact_pending(&mut self) {
        let accs = &mut self.accs;
        self.pending.retain(|&pid| {
            let acc = &mut accs[pid as usize];
            acc.queued = acc.taken > 0;
            acc.queued
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|&pid| self.accs[pid as usize].deadline)
            .min()
    }

    fn note_drops(&mut self, lane: &Lane<T>) {
        // Held while folding in: the producer takes this lock only when it
        // rejects an event, and draining in place allocates nothing.
        let mut drops = lock(&lane.drops_by_prefix);
        for (pid, n) in drops.drain() {
            self.ensure_prefix(pid as usize);
            self.accs[pid as usize].dropped_since += n;
            self.report.prefixes[pid as usize].dropped += n;
        }
        self.dirty = true;
    }

    /// Publishes the counters of closed windows plus those of the open
    /// ones (kept per window, not per event, to keep the fold lean).
    fn publish_report(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let mut shared = lock(&self.shared.report);
        shared.clone_from(&self.report);
        shared.accumulated = 0;
        for &pid in &self.pending {
            let acc = &self.accs[pid as usize];
            shared.accumulated += acc.held();
            shared.prefixes[pid as usize].received += acc.taken as u64;
        }
    }
}

/// `latest`: the event replaces the survivor of its (name, sub-key) in this
/// window, or becomes one.
fn fold_latest<T>(acc: &mut Acc<T>, name_id: u32, event: Event<T>) {
    match acc.latest.get(&(name_id, event.sub_key)) {
        Some(&i) => {
            acc.events[i] = event;
            acc.folded += 1;
        }
        None => {
            acc.latest
                .insert((name_id, event.sub_key), acc.events.len());
            acc.events.push(event);
        }
    }
}

/// `aggregate`: folds the event's numeric reading into its name's running
/// aggregate. False (and counted as discarded) if the payload is not
/// numeric.
fn fold_aggregate<T>(
    acc: &mut Acc<T>,
    sampler: Option<fn(&T) -> Option<f64>>,
    event: Event<T>,
) -> bool {
    let key = event.meta.get().key;
    let Some(v) = sampler.and_then(|f| f(&event.payload)) else {
        acc.discarded += 1;
        acc.dropped_since += 1;
        return false;
    };
    let at = event.timestamp();
    match acc.aggregate_index.get(&key.name_id()) {
        Some(&i) => acc.aggregates[i].add(v, at),
        None => {
            acc.aggregate_index
                .insert(key.name_id(), acc.aggregates.len());
            let name = InternedStr::new(&event.meta.get().name);
            acc.aggregates.push(Aggregate::new(name, key, v, at));
        }
    }
    acc.folded += 1;
    true
}

/// Outstanding flush requests, taken in one go.
struct FlushRequest {
    generation: u64,
    full: bool,
    patterns: Vec<Pattern>,
}

struct Flusher<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    lanes: Vec<LaneSlot<T>>,
    delivery: Delivery<T>,
}

impl<T: Send + 'static> Flusher<T> {
    fn new(shared: Arc<Shared<T>>, subscribers: Vec<Box<dyn Subscriber<T>>>) -> Self {
        Flusher {
            lanes: Vec::new(),
            delivery: Delivery {
                shared: shared.clone(),
                accs: Vec::new(),
                pending: Vec::new(),
                subscribers,
                sealed: Vec::new(),
                spare: Vec::new(),
                report: Report::default(),
                routes: Vec::new(),
                took_any: false,
                pass_taken: 0,
                ext: Ext::default(),
                ext_taken: 0,
                dirty: false,
                now: Instant::now(),
                now_nanos: 0,
            },
            shared,
        }
    }

    fn run(mut self) {
        loop {
            let closing = self.shared.state.load(Ordering::Acquire) & CLOSED != 0;
            if closing {
                // Pairs with the producers' post-publish barrier: a publish
                // that did not see CLOSED has its tail visible to the final
                // sweep below.
                barrier::heavy();
            }
            let flush = self.take_flush_request();
            self.adopt_lanes(closing);
            self.delivery.set_now(Instant::now());
            self.sweep();
            self.delivery.emit_due();
            if closing {
                self.delivery.emit_all(BatchReason::Shutdown, None);
                self.finish();
                return;
            }
            if let Some(req) = flush {
                let filter = (!req.full).then_some(req.patterns.as_slice());
                self.delivery.emit_all(BatchReason::Flush, filter);
                self.delivery.dirty = true;
                self.delivery.publish_report();
                let mut ctl = lock(&self.shared.control);
                ctl.completed = ctl.completed.max(req.generation);
                self.shared.control_cv.notify_all();
                continue;
            }
            self.delivery.publish_report();
            self.sleep();
        }
    }

    fn take_flush_request(&self) -> Option<FlushRequest> {
        if !self.shared.flush_pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut ctl = lock(&self.shared.control);
        Some(FlushRequest {
            generation: ctl.requested,
            full: std::mem::take(&mut ctl.full),
            patterns: std::mem::take(&mut ctl.patterns),
        })
    }

    fn adopt_lanes(&mut self, force: bool) {
        if !self.shared.registry_dirty.swap(false, Ordering::AcqRel) && !force {
            return;
        }
        let mut reg = lock(&self.shared.registry);
        for (lane, consumer) in reg.new.drain(..) {
            self.lanes.push(LaneSlot {
                lane,
                consumer,
                drops_seen: 0,
            });
        }
    }

    /// Takes everything off every ring; retires rings of dropped producers
    /// once drained.
    fn sweep(&mut self) {
        self.delivery.report.sweeps += 1;
        self.delivery.pass_taken = 0;
        let mut i = 0;
        while i < self.lanes.len() {
            let slot = &mut self.lanes[i];
            // Acquire pairs with the producer's Release in `Drop`: if it is
            // gone, every record it pushed is visible to the drain below.
            let gone = slot.lane.gone.load(Ordering::Acquire);
            // Consume a wake hint before draining. The swap reads the
            // producer's latest hint store (an RMW always does) and
            // synchronises with it, so every record it flagged is visible to
            // the drain; a hint stored after the swap stays set for the
            // re-check before parking.
            if slot.lane.wake_hint.load(Ordering::Relaxed) {
                slot.lane.wake_hint.swap(false, Ordering::AcqRel);
            }
            let drops = slot.lane.drops_total.load(Ordering::Acquire);
            if drops != slot.drops_seen {
                slot.drops_seen = drops;
                self.delivery.note_drops(&slot.lane);
            }
            if gone || slot.consumer.maybe_ready() {
                let delivery = &mut self.delivery;
                let outcome = slot.consumer.drain(|slot| delivery.take(slot));
                if outcome.taken > 0 {
                    delivery.took_any = true;
                    delivery.dirty = true;
                    delivery.pass_taken += outcome.taken;
                }
                if delivery.ext_taken > 0 {
                    let ext = std::mem::take(&mut delivery.ext_taken);
                    slot.lane.ext_popped.fetch_add(ext, Ordering::Release);
                }
                // The range is released; now the subscribers run.
                delivery.deliver_sealed();
                if outcome.producer_waiting {
                    if let Some(t) = lock(&slot.lane.waiter).as_ref() {
                        t.unpark();
                    }
                }
            }
            if gone {
                self.retire(i);
            } else {
                i += 1;
            }
        }
    }

    fn retire(&mut self, i: usize) {
        let slot = self.lanes.swap_remove(i);
        let lane = &slot.lane;
        let mut reg = lock(&self.shared.registry);
        reg.live.retain(|l| !Arc::ptr_eq(l, lane));
        reg.retired_published += lane.events().0;
        reg.retired.full += lane.full.load(Ordering::Relaxed);
        reg.retired.shut_down += lane.shut_down.load(Ordering::Relaxed);
        reg.retired.invalid_name += lane.invalid_name.load(Ordering::Relaxed);
        reg.retired.urgent_timeout += lane.urgent_timeout.load(Ordering::Relaxed);
    }

    /// Announces the park, re-checks for work, parks.
    fn sleep(&mut self) {
        let now = self.delivery.now;
        let deadline = self.delivery.next_deadline();
        // DEEP (any publish wakes us) when nothing is pending, or when
        // windows are pending but the last sweep took nothing: the engine
        // has gone quiet, so ticking every `tick` until a distant deadline
        // would only burn wake-ups. While events keep arriving we tick
        // (PARKED), so a busy trickle never costs a wake-up per event.
        let quiet = !std::mem::take(&mut self.delivery.took_any);
        let deep = deadline.is_none() || quiet;
        let timeout = match deadline {
            None => DEEP_PARK,
            Some(d) if deep => d.saturating_duration_since(now),
            Some(d) => d
                .saturating_duration_since(now)
                .min(self.shared.config.tick),
        };
        let threshold = if deep {
            1
        } else {
            self.shared.config.high_water
        };
        // Nothing to announce if we would not park anyway: this skips the
        // heavy barrier (a membarrier IPI on Linux) whenever work is already
        // visible, which is common while producers stream.
        if timeout.is_zero() || self.has_work(threshold) {
            return;
        }
        if self.streaming() && self.linger() {
            return;
        }
        let bit = if deep { DEEP } else { PARKED };
        self.shared.state.fetch_or(bit, Ordering::SeqCst);
        // Pairs with the producers' post-publish barrier (see producer.rs
        // and barrier.rs): membarrier on Linux, a SeqCst fence elsewhere.
        barrier::heavy();
        // The re-check after announcing the park is what makes wake-ups
        // impossible to lose; the `ringfold_mutation = "no_recheck"` cfg
        // removes it so the loom model can demonstrate exactly that.
        let recheck = !cfg!(ringfold_mutation = "no_recheck");
        let work = recheck && self.has_work(threshold);
        if !work {
            sync::park_timeout(timeout);
            if !deep && Instant::now() >= now + timeout {
                self.delivery.report.ticks += 1;
                self.delivery.dirty = true;
            }
        }
        self.shared
            .state
            .fetch_and(!(PARKED | DEEP), Ordering::SeqCst);
    }

    /// Producers are streaming: the last sweep took at least a high-water
    /// mark's worth of slots.
    fn streaming(&self) -> bool {
        self.delivery.pass_taken >= self.shared.config.high_water
    }

    /// Streaming: yields the core (see `STREAM_YIELDS`) until a ring reaches
    /// its high-water mark (true: sweep again) or the producers seem to
    /// have slowed down (false: go on and park).
    fn linger(&self) -> bool {
        for _ in 0..STREAM_YIELDS {
            sync::yield_now();
            if self.has_work(self.shared.config.high_water) {
                return true;
            }
        }
        false
    }

    /// Anything that should keep the flusher from parking: a request flag,
    /// a dropped producer, or a ring holding at least `threshold` records.
    fn has_work(&self, threshold: usize) -> bool {
        self.shared.state.load(Ordering::Relaxed) & CLOSED != 0
            || self.shared.flush_pending.load(Ordering::Relaxed)
            || self.shared.registry_dirty.load(Ordering::Relaxed)
            || self.lanes.iter().any(|l| {
                l.lane.wake_hint.load(Ordering::Relaxed)
                    || l.consumer.pending() >= threshold
                    || l.lane.gone.load(Ordering::Relaxed)
            })
    }

    /// Final step of shutdown: publish the last report, hand each ring's
    /// reading end back to its lane (so a publish that raced the close can
    /// take its record back), and release everyone waiting.
    fn finish(mut self) {
        self.delivery.dirty = true;
        self.delivery.publish_report();
        for slot in self.lanes.drain(..) {
            *lock(&slot.lane.orphan) = Some(slot.consumer);
        }
        let mut ctl = lock(&self.shared.control);
        ctl.stopped = true;
        ctl.completed = ctl.requested;
        self.shared.control_cv.notify_all();
    }
}
