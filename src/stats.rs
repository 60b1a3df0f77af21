//! Counters, and the conservation law they obey.
//!
//! Every event handed to `publish*` is either accepted (`Ok`) or rejected
//! with its payload returned and its reason counted in [`DropStats`].
//! Accepted events are, at any quiescent moment (e.g. right after
//! `flush()`), exactly accounted for:
//!
//! `published == delivered + folded + dropped.not_numeric + pending`
//!
//! `pending` is measured independently of the other counters (events still
//! in rings plus events held in accumulators), so the equation is a real
//! check, which the test suite makes.

use std::collections::BTreeMap;

/// Rejections by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Ring full (`FullPolicy::DropNewest`, or `Block` timed out).
    pub full: u64,
    /// Published after shutdown.
    pub shut_down: u64,
    /// Invalid or un-internable name.
    pub invalid_name: u64,
    /// Urgent event whose bounded wait for ring space ran out.
    pub urgent_timeout: u64,
    /// Accepted by an aggregating prefix but not numeric: discarded by the
    /// flusher (never aggregated as 0).
    pub not_numeric: u64,
}

impl DropStats {
    /// Publishes rejected at the producer (not counted in `published`).
    pub fn rejected(&self) -> u64 {
        self.full + self.shut_down + self.invalid_name + self.urgent_timeout
    }
}

/// Per-prefix counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Events taken off rings for this prefix.
    pub received: u64,
    /// Events delivered in batches.
    pub delivered: u64,
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
/// assert_eq!(stats.delivered, 1);
/// assert!(stats.is_conserved());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Accepted publishes.
    pub published: u64,
    /// Events delivered to subscribers (each counted once, however many
    /// subscribers there are).
    pub delivered: u64,
    /// Events folded away by `latest` or `aggregate`.
    pub folded: u64,
    /// Accepted events not yet delivered (in rings or accumulators).
    pub pending: u64,
    /// Batches emitted.
    pub batches: u64,
    /// Rejections by reason.
    pub dropped: DropStats,
    /// Subscriber panics caught.
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
}

impl Stats {
    /// Does the conservation law hold for this snapshot? Exact when taken at
    /// a quiescent moment (after `flush`, or from `shutdown`).
    pub fn is_conserved(&self) -> bool {
        self.published == self.delivered + self.folded + self.dropped.not_numeric + self.pending
    }
}
