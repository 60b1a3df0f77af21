//! Per-subscriber counters and their conservation law.

use std::time::Duration;

/// A snapshot of one subscriber's delivery counters.
///
/// Conservation, exact in every snapshot (all figures are read under the
/// queue's one lock): every batch sealed for the subscriber is delivered,
/// dropped by its lag policy, discarded on unsubscribe, queued, or in the
/// subscriber's hands right now:
///
/// `sealed == delivered_batches + lag_dropped_batches + discarded_batches + queued + in_flight`
///
/// ```
/// use ringfold::SubscriberStats;
/// fn report(s: &SubscriberStats) -> String {
///     assert!(s.is_conserved());
///     format!(
///         "{}: {} delivered, {} lost to lag, {} queued, {:?} behind",
///         s.name, s.delivered_batches, s.lag_dropped_batches, s.queued, s.lag
///     )
/// }
/// # let _ = report;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The name given at subscribe time.
    pub name: String,
    /// Batches queued for this subscriber (sealed for it while subscribed).
    pub sealed: u64,
    /// Batches delivered: the callback returned (or panicked, see `panics`)
    /// or the receiver handed it out.
    pub delivered_batches: u64,
    /// Events in the delivered batches.
    pub delivered_events: u64,
    /// Batches dropped by the lag policy (queue full).
    pub lag_dropped_batches: u64,
    /// Events in those batches.
    pub lag_dropped_events: u64,
    /// Batches discarded on unsubscribe (`OnUnsubscribe::Discard`).
    pub discarded_batches: u64,
    /// Events in those batches.
    pub discarded_events: u64,
    /// Batches waiting in the queue.
    pub queued: u64,
    /// Batches taken by the delivery thread whose callback has not returned.
    pub in_flight: u64,
    /// Panics caught: in the callback, or in a payload's or the
    /// subscriber's `Drop` on the delivery side.
    pub panics: u64,
    /// Age of the oldest queued batch (since it was sealed); zero when the
    /// queue is empty.
    pub lag: Duration,
    /// The subscription is closed (unsubscribed or shut down).
    pub closed: bool,
}

impl SubscriberStats {
    /// Does the conservation law hold for this snapshot?
    pub fn is_conserved(&self) -> bool {
        self.sealed
            == self.delivered_batches
                + self.lag_dropped_batches
                + self.discarded_batches
                + self.queued
                + self.in_flight
    }
}
