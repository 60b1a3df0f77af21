//! Per-subscriber counters and their conservation law.

use std::time::Duration;

/// A snapshot of one subscriber's delivery counters.
///
/// Counted in windows (each batch the flusher sealed for this subscriber is
/// one window; a merged batch carries several, see
/// [`Batch::merged`](super::Batch::merged)) and in events. Two conservation
/// laws hold exactly in every snapshot (all figures are read under the
/// queue's one lock): every window sealed for the subscriber is delivered,
/// dropped by its lag policy, discarded on unsubscribe, queued, or in the
/// subscriber's hands right now:
///
/// `sealed == delivered_batches + lag_dropped_batches + discarded_batches + queued + in_flight`
///
/// and every event sealed for it is delivered, folded by a merge (a
/// `latest` value superseded by a later window's), dropped, discarded,
/// queued or in its hands:
///
/// `sealed_events == delivered_events + merge_folded_events + lag_dropped_events + discarded_events + queued_events + in_flight_events`
///
/// A subscriber lost events exactly when `lag_dropped_events` or
/// `discarded_events` is non-zero ([`lost_events`](Self::lost_events)).
///
/// ```
/// use ringfold::SubscriberStats;
/// fn report(s: &SubscriberStats) -> String {
///     assert!(s.is_conserved());
///     format!(
///         "{}: {} events in {} deliveries ({} windows merged), {} lost, {} queued ({} bytes of {}), {:?} behind",
///         s.name, s.delivered_events, s.deliveries, s.merged_batches, s.lost_events(),
///         s.queued_events, s.queued_bytes, s.budget.bytes(), s.lag
///     )
/// }
/// # let _ = report;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The name given at subscribe time.
    pub name: String,
    /// Windows (batches the flusher sealed) queued for this subscriber
    /// while subscribed.
    pub sealed: u64,
    /// Events in those windows.
    pub sealed_events: u64,
    /// Times the subscriber was handed a batch (callback returned or
    /// panicked, or the receiver handed it out): fewer than
    /// `delivered_batches` when batches were merged.
    pub deliveries: u64,
    /// Windows delivered, merged ones included.
    pub delivered_batches: u64,
    /// Events delivered.
    pub delivered_events: u64,
    /// Windows merged into a batch already queued (the subscriber was
    /// behind): counted again when that batch is delivered or dropped.
    pub merged_batches: u64,
    /// Events a merge superseded: a `latest` survivor replaced by a later
    /// window's value of the same key (not lost: folded, as within a
    /// window).
    pub merge_folded_events: u64,
    /// Windows dropped by the lag policy (over budget even after merging).
    pub lag_dropped_batches: u64,
    /// Events in those windows.
    pub lag_dropped_events: u64,
    /// Windows discarded on unsubscribe (`OnUnsubscribe::Discard`).
    pub discarded_batches: u64,
    /// Events in those windows.
    pub discarded_events: u64,
    /// Windows waiting in the queue.
    pub queued: u64,
    /// Events waiting in the queue.
    pub queued_events: u64,
    /// Bytes the queue holds, as counted against its budget.
    pub queued_bytes: u64,
    /// Windows taken by the delivery thread whose callback has not
    /// returned.
    pub in_flight: u64,
    /// Events in those windows.
    pub in_flight_events: u64,
    /// The queue's budget.
    pub budget: super::Budget,
    /// Panics caught: in the callback, or in a payload's or the
    /// subscriber's `Drop` on the delivery side.
    pub panics: u64,
    /// Age of the oldest queued window (since it was sealed); zero when
    /// the queue is empty.
    pub lag: Duration,
    /// The subscription is closed (unsubscribed or shut down).
    pub closed: bool,
}

impl SubscriberStats {
    /// Do both conservation laws hold for this snapshot?
    pub fn is_conserved(&self) -> bool {
        self.sealed
            == self.delivered_batches
                + self.lag_dropped_batches
                + self.discarded_batches
                + self.queued
                + self.in_flight
            && self.sealed_events
                == self.delivered_events
                    + self.merge_folded_events
                    + self.lag_dropped_events
                    + self.discarded_events
                    + self.queued_events
                    + self.in_flight_events
    }

    /// Events this subscriber lost: dropped by its lag policy or discarded
    /// on unsubscribe.
    pub fn lost_events(&self) -> u64 {
        self.lag_dropped_events + self.discarded_events
    }
}
