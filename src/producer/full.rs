//! The full-ring path of a publish: what a producer does when its ring has
//! no free slot. Depending on the engine's `FullPolicy` and whether the
//! event is urgent, it either counts the drop and hands the payload back at
//! once, or wakes the flusher and waits (a few yields, then parking with a
//! deadline) for the flusher to free space. Cold by design: the hot path
//! only calls into it when `try_push` fails.

use std::time::{Duration, Instant};

use super::Producer;
use crate::config::FullPolicy;
use crate::control;
use crate::error::PublishError;
use crate::intern::EventKey;
use crate::lane::Lane;
use crate::record::Outgoing;
use crate::sync::{self, lock};

/// Yields before a producer waiting for ring space parks (see
/// `Producer::push_when_full`). None under loom, whose models check the
/// park protocol.
const FULL_YIELDS: u32 = if cfg!(ringfold_loom) { 0 } else { 64 };

/// How long one park lasts while waiting for space without a deadline
/// (`Duration::MAX`): the flusher's unpark ends it sooner; this only bounds
/// the cost of a lost wake-up.
const UNBOUNDED_PARK: Duration = Duration::from_millis(100);

impl<T: Send + 'static> Producer<T> {
    /// Does `key`'s name match an urgent rule (`EngineBuilder::urgent`)?
    /// Only names that wake the flusher can; those are looked up.
    #[cold]
    fn urgent_by_rule(&self, key: EventKey) -> bool {
        key.wakes()
            && self
                .shared
                .interner
                .name(key.name_id() as usize)
                .is_some_and(|info| info.urgent)
    }

    /// Ring full: drop-newest, or wait (bounded) for space.
    #[cold]
    #[inline(never)]
    #[cfg_attr(
        ringfold_loom,
        allow(clippy::reversed_empty_ranges, reason = "no yields under loom")
    )]
    pub(super) fn push_when_full(&mut self, out: Outgoing<T>) -> Result<(), PublishError<T>> {
        // Urgent by the call (`publish_urgent*`) or by a rule
        // (`EngineBuilder::urgent`): both wait `urgent_wait`. The rule is
        // looked up only here, on the full-ring path.
        let urgent = out.urgent || self.urgent_by_rule(out.key);
        let prefix = Some(out.key.prefix_id());
        let wait = match (urgent, self.shared.config.on_full) {
            // A subscriber publishing from the flusher thread must never
            // wait for the flusher: that would be waiting for itself.
            _ if self.shared.state.on_flusher_thread() => Duration::ZERO,
            (true, _) => self.shared.config.urgent_wait,
            (false, FullPolicy::Block(timeout)) => timeout,
            (false, FullPolicy::DropNewest) => Duration::ZERO,
        };
        // Counts the rejection under its reason.
        let give_up = |lane: &Lane<T>| {
            let counter = if urgent {
                &lane.drops.urgent_timeout
            } else {
                &lane.drops.full
            };
            lane.count_drop(counter, prefix);
        };
        if wait.is_zero() {
            give_up(&self.lane);
            return Err(PublishError::Full(out.payload));
        }
        // First a short adaptive wait: wake the flusher and yield the core
        // a few times. A drain hands slots back as it goes, so a producer
        // that outruns the flusher for a moment usually finds room within a
        // few yields, without the futex park/unpark round trip (tens of
        // microseconds on a VM) that the loop below costs.
        let mut out = out;
        self.shared.state.wake();
        for _ in 0..FULL_YIELDS {
            sync::yield_now();
            match self.try_push(out) {
                Ok(()) => return Ok(()),
                Err(back) => out = back,
            }
        }
        // `None`: the wait is too long for the clock (`Duration::MAX`), i.e.
        // without limit.
        let deadline = control::deadline_after(wait);
        *lock(&self.lane.waiter) = Some(sync::current());
        let result = loop {
            if self.shared.state.peek().closed() {
                break Err(self.reject_closed(out.payload));
            }
            self.shared.state.wake();
            self.ring.announce_waiting(true);
            match self.try_push(out) {
                Ok(()) => break Ok(()),
                Err(back) => out = back,
            }
            match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        give_up(&self.lane);
                        break Err(PublishError::Full(out.payload));
                    }
                    sync::park_timeout(deadline - now);
                }
                // The flusher unparks us when it frees space, and the loop
                // re-checks the state word; the timeout only bounds a lost
                // wake-up's cost.
                None => sync::park_timeout(UNBOUNDED_PARK),
            }
        };
        self.ring.announce_waiting(false);
        result
    }
}
