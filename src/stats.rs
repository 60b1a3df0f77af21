//! Counters, and the conservation law they obey.
//!
//! Every event handed to `publish*` is either accepted (`Ok`) or rejected
//! with its payload returned and its reason counted in [`DropStats`].
//! Accepted events are, at any quiescent moment (e.g. right after
//! `flush()`), exactly accounted for:
//!
//! `published == sealed + folded + dropped.not_numeric + pending`
//!
//! `pending` is measured independently of the other counters (events still
//! in rings plus events held in accumulators), so the equation is a real
//! check, which the test suite makes.

use std::collections::BTreeMap;

use crate::sync::{AtomicU64, Ordering};

/// Rejections by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropStats {
    /// Ring full (`FullPolicy::DropNewest`, or `Block` timed out).
    pub full: u64,
    /// Published after shutdown.
    pub shut_down: u64,
    /// Invalid name: empty, an empty segment, `*`, too long.
    pub invalid_name: u64,
    /// A key made by another engine.
    pub foreign_key: u64,
    /// A new name refused because the engine already interned
    /// `EngineBuilder::max_names` names.
    pub too_many_names: u64,
    /// Publishes refused because the flusher thread had died.
    pub flusher_died: u64,
    /// Urgent event whose bounded wait for ring space ran out.
    pub urgent_timeout: u64,
    /// Accepted by an aggregating prefix but not numeric: discarded by the
    /// flusher (never aggregated as 0).
    pub not_numeric: u64,
}

impl DropStats {
    /// Publishes rejected at the producer (not counted in `published`).
    pub fn rejected(&self) -> u64 {
        self.full
            + self.shut_down
            + self.invalid_name
            + self.foreign_key
            + self.too_many_names
            + self.flusher_died
            + self.urgent_timeout
    }
}

/// Per-prefix counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefixStats {
    /// Events taken off rings for this prefix.
    pub received: u64,
    /// Events sealed into batches for the subscribers.
    pub sealed: u64,
    /// Events folded (latest / aggregate).
    pub folded: u64,
    /// Batches emitted.
    pub batches: u64,
    /// Events rejected (full, urgent timeout, not numeric).
    pub dropped: u64,
}

/// A snapshot of an engine's counters (`Engine::stats`).
///
/// ```
/// use ringfold::{Engine, Value};
/// let engine = Engine::<Value>::builder().build()?;
/// engine.publish("data:users:created", 1)?;
/// engine.flush()?;
/// let stats = engine.stats();
/// assert_eq!(stats.published, 1);
/// assert_eq!(stats.sealed, 1);
/// assert!(stats.is_conserved());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Accepted publishes.
    pub published: u64,
    /// Events sealed into batches and handed to the delivery layer (each
    /// counted once, however many subscribers there are). Not what a
    /// subscriber received: a lagging subscriber may still have them
    /// queued, or have lost them past its budget (`lost_to_lag`, and each
    /// subscriber's figures in `subscribers`).
    pub sealed: u64,
    /// Events folded away by `latest` or `aggregate`.
    pub folded: u64,
    /// Accepted events not yet sealed (in rings or accumulators).
    pub pending: u64,
    /// Events the current subscribers lost to their lag policy (dropped
    /// past their budget): the sum of their `lag_dropped_events`.
    pub lost_to_lag: u64,
    /// Events the current subscribers discarded on unsubscribe
    /// (`OnUnsubscribe::Discard`): the sum of their `discarded_events`.
    pub discarded: u64,
    /// Batches emitted.
    pub batches: u64,
    /// Rejections by reason.
    pub dropped: DropStats,
    /// Panics caught on the delivery side: in subscribers' callbacks and
    /// `Drop`s (summed over the current subscriptions, see `subscribers`)
    /// and in payload `Drop`s on the flusher (recycling a batch, or a
    /// payload folded away by `latest` or `aggregate`): caught and counted.
    pub subscriber_panics: u64,
    /// Flusher wake-ups caused by a producer crossing its high-water mark.
    pub high_water_wakeups: u64,
    /// Flusher wake-ups by its tick (timer).
    pub ticks: u64,
    /// Sweeps of all rings.
    pub sweeps: u64,
    /// Producers currently registered.
    pub producers: usize,
    /// Per-prefix counters, by prefix name.
    pub prefixes: BTreeMap<String, PrefixStats>,
    /// The flusher thread died (see `Error::FlusherDied`): `pending`
    /// events will never be delivered.
    pub flusher_died: bool,
    /// Per subscriber (build-time and run-time, in subscription order):
    /// its delivery counters. A subscription leaves this list when its
    /// handle is dropped; after shutdown the engine's own ones stay, closed.
    /// Each obeys its own conservation law
    /// ([`SubscriberStats::is_conserved`](crate::SubscriberStats::is_conserved)).
    pub subscribers: Vec<crate::SubscriberStats>,
}

impl Stats {
    /// Do the conservation laws hold for this snapshot: the engine's
    /// (`published == sealed + folded + dropped.not_numeric + pending`) and
    /// every subscriber's ([`SubscriberStats::is_conserved`](crate::SubscriberStats::is_conserved))?
    /// Exact when taken at a quiescent moment (after `flush`, or from
    /// `shutdown`). Conservation means every event is accounted for, not
    /// that none was lost: see [`is_lossless`](Self::is_lossless).
    pub fn is_conserved(&self) -> bool {
        self.published == self.sealed + self.folded + self.dropped.not_numeric + self.pending
            && self.subscribers.iter().all(|s| s.is_conserved())
    }

    /// Events lost anywhere: rejected at publish (every reason in
    /// `dropped`, the payload handed back to the caller), discarded as not
    /// numeric, lost to a subscriber's lag or discarded on unsubscribe.
    pub fn lost(&self) -> u64 {
        self.dropped.rejected() + self.dropped.not_numeric + self.lost_to_lag + self.discarded
    }

    /// Conserved, and nothing lost: every publish was accepted, and every
    /// event sealed for a subscriber reached it (or is still queued for it,
    /// or was folded into a later value by a merge).
    ///
    /// ```
    /// use ringfold::{Batch, Engine};
    /// let engine = Engine::<u64>::builder().subscriber(|_: &Batch<u64>| {}).build()?;
    /// for i in 0..1000u64 {
    ///     engine.publish("data:rows:inserted", i)?;
    /// }
    /// let stats = engine.shutdown()?;
    /// assert!(stats.is_lossless(), "{stats:?}");
    /// assert_eq!(stats.subscribers[0].delivered_events, 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_lossless(&self) -> bool {
        self.is_conserved() && self.lost() == 0
    }
}

// ---------------------------------------------------------------------------
// Assembly: the only place a `Stats` is put together. The parts come from
// three owners (the flusher's `Report`, each lane's `DropCounters`, the
// engine's counters of publishes that never reached a lane), and all are
// plain counters, so Relaxed loads do: a snapshot is exact only at a
// quiescent moment anyway, and the moments that make it exact (a flush's
// acknowledgement under the control mutex, the registry mutex) order it.

/// Rejection counters written on the producer's slow paths (Relaxed: plain
/// counters, read only for stats).
#[derive(Default)]
pub(crate) struct DropCounters {
    pub(crate) full: AtomicU64,
    pub(crate) shut_down: AtomicU64,
    pub(crate) invalid_name: AtomicU64,
    pub(crate) foreign_key: AtomicU64,
    pub(crate) too_many_names: AtomicU64,
    pub(crate) flusher_died: AtomicU64,
    pub(crate) urgent_timeout: AtomicU64,
}

impl DropCounters {
    /// Adds these counters to `into` (a live lane's at a snapshot, or a
    /// retiring lane's into the retired totals).
    pub(crate) fn add_to(&self, into: &mut DropStats) {
        into.full += self.full.load(Ordering::Relaxed);
        into.shut_down += self.shut_down.load(Ordering::Relaxed);
        into.invalid_name += self.invalid_name.load(Ordering::Relaxed);
        into.foreign_key += self.foreign_key.load(Ordering::Relaxed);
        into.too_many_names += self.too_many_names.load(Ordering::Relaxed);
        into.flusher_died += self.flusher_died.load(Ordering::Relaxed);
        into.urgent_timeout += self.urgent_timeout.load(Ordering::Relaxed);
    }
}

/// What retired (dropped and drained) producers left behind.
#[derive(Default)]
pub(crate) struct Retired {
    pub(crate) published: u64,
    pub(crate) dropped: DropStats,
}

/// The flusher's counters, published to `Shared::report` after each pass.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) sealed: u64,
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
        self.sealed = source.sealed;
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

/// One live lane's share of a snapshot.
pub(crate) struct LaneShare<'a> {
    /// Events accepted into the lane's ring.
    pub(crate) published: u64,
    /// Of those, still in the ring.
    pub(crate) in_ring: u64,
    pub(crate) dropped: &'a DropCounters,
}

/// Everything a snapshot is assembled from.
pub(crate) struct Parts<'a, L> {
    pub(crate) report: &'a Report,
    /// The name of prefix id `n` (from the interner's snapshot; a closure
    /// so that stats need not know the interner).
    pub(crate) prefix_name: &'a dyn Fn(usize) -> Option<String>,
    pub(crate) retired: &'a Retired,
    pub(crate) live: L,
    /// Rejections of `Engine::publish*` calls that never reached a lane.
    pub(crate) unlaned: &'a DropCounters,
    pub(crate) high_water_wakeups: u64,
    /// The flusher thread died.
    pub(crate) flusher_died: bool,
    pub(crate) subscribers: Vec<crate::SubscriberStats>,
}

impl Stats {
    pub(crate) fn assemble<'a>(
        parts: Parts<'a, impl ExactSizeIterator<Item = LaneShare<'a>>>,
    ) -> Stats {
        let report = parts.report;
        let mut stats = Stats {
            published: parts.retired.published,
            sealed: report.sealed,
            folded: report.folded,
            batches: report.batches,
            subscriber_panics: report.panics,
            ticks: report.ticks,
            sweeps: report.sweeps,
            dropped: parts.retired.dropped,
            high_water_wakeups: parts.high_water_wakeups,
            producers: parts.live.len(),
            flusher_died: parts.flusher_died,
            ..Stats::default()
        };
        stats.subscriber_panics += parts.subscribers.iter().map(|s| s.panics).sum::<u64>();
        stats.lost_to_lag = parts.subscribers.iter().map(|s| s.lag_dropped_events).sum();
        stats.discarded = parts.subscribers.iter().map(|s| s.discarded_events).sum();
        stats.subscribers = parts.subscribers;
        stats.dropped.not_numeric = report.not_numeric;
        parts.unlaned.add_to(&mut stats.dropped);
        let mut in_rings = 0u64;
        for lane in parts.live {
            stats.published += lane.published;
            in_rings += lane.in_ring;
            lane.dropped.add_to(&mut stats.dropped);
        }
        stats.pending = report.accumulated + in_rings;
        for (id, p) in report.prefixes.iter().enumerate() {
            if let Some(name) = (parts.prefix_name)(id) {
                stats.prefixes.insert(name, *p);
            }
        }
        stats
    }
}
