//! The fold on its own, with an injected clock: no thread, no wall clock.

use std::time::{Duration, Instant};

use super::Folder;
use crate::event::BatchReason;
use crate::intern::{EventKey, Interner};
use crate::policy::{Pattern, Policy, PolicyTable};
use crate::record::Decoded;
use crate::value::{Number, Sampler};

const MS: Duration = Duration::from_millis(1);

/// Payloads the rig's sampler reads as NaN, +inf and -inf; `u64::MAX` has
/// no reading at all; every other payload is an exact integer.
const NAN: u64 = u64::MAX - 1;
const INF: u64 = u64::MAX - 2;
const NEG_INF: u64 = u64::MAX - 3;

fn sample(v: &u64) -> Option<Number> {
    match *v {
        u64::MAX => None,
        NAN => Some(Number::Float(f64::NAN)),
        INF => Some(Number::Float(f64::INFINITY)),
        NEG_INF => Some(Number::Float(f64::NEG_INFINITY)),
        v => Some(Number::Int(v.into())),
    }
}

/// What a delivered batch looked like.
#[derive(Debug, PartialEq)]
struct Seen {
    name: String,
    reason: BatchReason,
    /// (event name, sub-key, payload) in batch order.
    events: Vec<(String, u64, u64)>,
    /// (name, count, sum) per aggregate.
    aggregates: Vec<(String, u64, f64)>,
    folded: u64,
}

struct Rig {
    interner: Interner,
    folder: Folder<u64>,
    t0: Instant,
}

impl Rig {
    /// A fold over `rules` (pattern, policy), urgent `urgent` patterns,
    /// default `Policy::batch(50 ms, 100)`, at time t0.
    fn new(rules: &[(&str, Policy)], urgent: &[&str]) -> Rig {
        let mut table = PolicyTable::new(Policy::batch(50 * MS, 100));
        for (pattern, policy) in rules {
            table
                .rules
                .push((Pattern::parse(pattern).unwrap(), *policy));
        }
        for pattern in urgent {
            table.urgent.push(Pattern::parse(pattern).unwrap());
        }
        let interner = Interner::new(table, 64, 64);
        let t0 = Instant::now();
        let folder = Folder::new(&interner, Some(Sampler::Number(sample)), t0);
        Rig {
            interner,
            folder,
            t0,
        }
    }

    fn key(&self, name: &str) -> EventKey {
        self.interner.key(name).unwrap()
    }

    fn take(&mut self, name: &str, sub_key: u64, payload: u64) {
        self.take_event(name, sub_key, false, payload);
    }

    fn take_event(&mut self, name: &str, sub_key: u64, urgent: bool, payload: u64) {
        self.take_decoded(name, sub_key, urgent, None, payload);
    }

    /// An event stamped at publish with `stamp` (nanoseconds).
    fn take_stamped(&mut self, name: &str, sub_key: u64, stamp: u64, payload: u64) {
        self.take_decoded(name, sub_key, false, Some(stamp), payload);
    }

    fn take_decoded(
        &mut self,
        name: &str,
        sub_key: u64,
        urgent: bool,
        stamp: Option<u64>,
        payload: u64,
    ) {
        let key = self.key(name);
        let event = Decoded {
            name_id: key.name_id(),
            urgent,
            sub_key,
            stamp,
            payload,
        };
        self.folder.take(event, &self.interner);
    }

    /// Moves the injected clock to t0 + `at` and closes due windows.
    fn at(&mut self, at: Duration) -> Vec<Seen> {
        self.folder.set_now(self.t0 + at);
        self.folder.emit_due();
        self.delivered()
    }

    /// The next sweep, at the same time: seals the urgent windows held
    /// since the previous one (see `fold::Hold`).
    fn next_sweep(&mut self) -> Vec<Seen> {
        self.folder.set_now(self.folder.now());
        self.folder.end_sweep(false);
        self.delivered()
    }

    fn delivered(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        self.folder.deliver(|batch| {
            seen.push(Seen {
                name: batch.info.batch_name.to_string(),
                reason: batch.reason,
                events: batch
                    .events
                    .iter()
                    .map(|e| (e.name().to_owned(), e.sub_key(), *e.payload()))
                    .collect(),
                aggregates: batch
                    .aggregates
                    .iter()
                    .map(|a| (a.name().to_owned(), a.count(), a.sum()))
                    .collect(),
                folded: batch.folded,
            });
        });
        seen
    }
}

fn ev(name: &str, payload: u64) -> (String, u64, u64) {
    (name.to_owned(), 0, payload)
}

#[test]
fn window_closes_on_time_and_not_before() {
    let mut rig = Rig::new(&[("data:*", Policy::batch(10 * MS, 100))], &[]);
    rig.take("data:t:x", 0, 1);
    rig.take("data:t:x", 0, 2);
    assert_eq!(rig.at(9 * MS), vec![], "deadline not reached");
    assert_eq!(rig.folder.next_deadline(), Some(rig.t0 + 10 * MS));
    let seen = rig.at(10 * MS);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].name, "data:t:batch");
    assert_eq!(seen[0].reason, BatchReason::Interval);
    assert_eq!(seen[0].events, vec![ev("data:t:x", 1), ev("data:t:x", 2)]);
    assert_eq!(rig.folder.next_deadline(), None, "window restarted empty");
}

#[test]
fn window_closes_on_count() {
    let mut rig = Rig::new(&[("data:*", Policy::batch(10 * MS, 3))], &[]);
    for i in 0..3 {
        rig.take("data:t:x", 0, i);
    }
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Count);
    assert_eq!(seen[0].events.len(), 3);
    rig.take("data:t:x", 0, 3);
    assert_eq!(rig.delivered(), vec![], "the fourth opens a new window");
}

#[test]
fn passthrough_emits_each_event() {
    let mut rig = Rig::new(&[("chat:*", Policy::Passthrough)], &[]);
    rig.take("chat:s1:delta", 0, 7);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Passthrough);
    assert_eq!(seen[0].events, vec![ev("chat:s1:delta", 7)]);
}

#[test]
fn mixed_policies_in_one_prefix_take_the_shortest_window_and_smallest_count() {
    let mut rig = Rig::new(
        &[
            ("data:t:slow", Policy::batch(100 * MS, 10)),
            ("data:t:fast", Policy::batch(20 * MS, 3)),
        ],
        &[],
    );
    rig.take("data:t:slow", 0, 1);
    rig.folder.set_now(rig.t0 + 5 * MS);
    rig.take("data:t:fast", 0, 2);
    // The window's deadline drops to 5 + 20 ms; its count to 3.
    assert_eq!(rig.folder.next_deadline(), Some(rig.t0 + 25 * MS));
    assert_eq!(rig.at(24 * MS), vec![]);
    let seen = rig.at(25 * MS);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Interval);
    assert_eq!(
        seen[0].events,
        vec![ev("data:t:slow", 1), ev("data:t:fast", 2)]
    );
    // Count: the fast name's max_count of 3 closes a mixed window.
    rig.take("data:t:slow", 0, 3);
    rig.take("data:t:fast", 0, 4);
    assert_eq!(rig.delivered(), vec![]);
    rig.take("data:t:slow", 0, 5);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Count);
    assert_eq!(seen[0].events.len(), 3);
}

#[test]
fn a_name_joining_a_mixed_prefix_still_narrows_its_window() {
    // x and y make the prefix mixed; z, routed later, has the smallest
    // count: an event of z in a window y opened must still lower it.
    let mut rig = Rig::new(
        &[
            ("data:t:x", Policy::batch(100 * MS, 10)),
            ("data:t:y", Policy::batch(100 * MS, 50)),
            ("data:t:z", Policy::batch(100 * MS, 2)),
        ],
        &[],
    );
    rig.take("data:t:x", 0, 1);
    rig.take("data:t:y", 0, 2);
    assert_eq!(rig.at(100 * MS).len(), 1, "x's and y's window, on time");
    rig.take("data:t:y", 0, 3);
    rig.take("data:t:z", 0, 4);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1, "z's count of 2 closes y's window");
    assert_eq!(seen[0].reason, BatchReason::Count);
    assert_eq!(seen[0].events, vec![ev("data:t:y", 3), ev("data:t:z", 4)]);
    // Again, now that z is routed (its first event took the general path).
    rig.take("data:t:y", 0, 5);
    rig.take("data:t:z", 0, 6);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1, "z's count of 2 closes y's window again");
    assert_eq!(seen[0].events, vec![ev("data:t:y", 5), ev("data:t:z", 6)]);
}

#[test]
fn urgent_closes_the_window_after_earlier_events() {
    let mut rig = Rig::new(
        &[("data:*", Policy::batch(10 * MS, 100))],
        &["data:t:alarm"],
    );
    rig.take("data:t:x", 0, 1);
    rig.take("data:t:alarm", 0, 2);
    assert_eq!(rig.delivered(), vec![], "held until the next sweep");
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(
        seen[0].events,
        vec![ev("data:t:x", 1), ev("data:t:alarm", 2)]
    );
    // An event published urgent (publish_urgent) does the same.
    rig.take("data:t:x", 0, 3);
    rig.take_event("data:t:x", 0, true, 4);
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(seen[0].events, vec![ev("data:t:x", 3), ev("data:t:x", 4)]);
}

#[test]
fn latest_keeps_one_survivor_per_name_and_sub_key() {
    let mut rig = Rig::new(&[("chat:*", Policy::latest(10 * MS, 100))], &[]);
    rig.take("chat:s1:delta", 7, 1);
    rig.take("chat:s1:delta", 8, 2);
    rig.take("chat:s1:delta", 7, 3);
    rig.take("chat:s1:delta", 7, 4);
    let seen = rig.at(10 * MS);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].events,
        vec![
            ("chat:s1:delta".to_owned(), 7, 4),
            ("chat:s1:delta".to_owned(), 8, 2)
        ]
    );
    assert_eq!(seen[0].folded, 2);
}

#[test]
fn an_urgent_latest_event_supersedes_its_survivor_and_comes_last() {
    let mut rig = Rig::new(
        &[("chat:*", Policy::latest(10 * MS, 100))],
        &["chat:*:finished"],
    );
    let delta = |sub: u64, p: u64| ("chat:s1:delta".to_owned(), sub, p);
    rig.take("chat:s1:delta", 7, 1);
    rig.take("chat:s1:delta", 8, 2);
    rig.take("chat:s1:delta", 9, 3);
    rig.take("chat:s1:delta", 7, 4);
    // Urgent, same (name, sub-key) as the first survivor.
    rig.take_event("chat:s1:delta", 7, true, 5);
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(
        seen[0].events,
        vec![delta(8, 2), delta(9, 3), delta(7, 5)],
        "the others in order of first appearance, the urgent one last"
    );
    assert_eq!(seen[0].folded, 2, "4 replaced 1, then 5 superseded 4");
    // A name made urgent by a rule comes last after the pending survivors
    // (its own events never stay pending: each one closes the window).
    rig.take("chat:s1:delta", 8, 13);
    rig.take("chat:s1:delta", 8, 14);
    rig.take("chat:s1:finished", 0, 15);
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].events,
        vec![delta(8, 14), ("chat:s1:finished".to_owned(), 0, 15)]
    );
    // No survivor of the urgent key: the urgent event simply comes last.
    rig.take("chat:s1:delta", 1, 20);
    rig.take_event("chat:s1:delta", 2, true, 21);
    assert_eq!(rig.next_sweep()[0].events, vec![delta(1, 20), delta(2, 21)]);
    let mut report = Default::default();
    rig.folder.publish_report(&mut report);
    assert_eq!(report.folded, 3);
    assert_eq!(report.sealed, 3 + 2 + 2);
}

#[test]
fn latest_survivors_are_chosen_by_publish_stamp_and_guard_against_stragglers() {
    // One task's events published from two threads land in two rings and
    // may arrive out of publish order; stamps restore it.
    let mut rig = Rig::new(&[("chat:*", Policy::latest(10 * MS, 100))], &[]);
    let d = "chat:s1:delta";
    rig.take_stamped(d, 7, 20, 2);
    rig.take_stamped(d, 7, 10, 1); // published before 2, arrived after
    let seen = rig.at(10 * MS); // the next pass: sweep 2 seals the window
    assert_eq!(seen[0].events, vec![(d.to_owned(), 7, 2)]);
    assert_eq!(seen[0].folded, 1, "the older arrival is folded away");
    // A straggler older than the delivered survivor, arriving in the sweep
    // after the one that took that survivor's window's last event: folded,
    // never delivered after the newer value.
    rig.take_stamped(d, 7, 15, 3);
    rig.take_stamped(d, 8, 5, 4); // another key: unaffected
    let seen = rig.at(20 * MS); // sweep 3
    assert_eq!(seen[0].events, vec![(d.to_owned(), 8, 4)]);
    assert_eq!(seen[0].folded, 1);
    // Seals while a guard is in force merge into it: key 7 is still
    // guarded through sweep 3, though the last window had no key-7
    // survivor.
    rig.take_stamped(d, 7, 16, 5);
    assert_eq!(
        rig.at(30 * MS),
        vec![],
        "only a straggler: nothing to deliver"
    );
    // The guard is bounded: two sweeps after the last arrival it is gone
    // (any event published before a delivered one has arrived by then).
    rig.take_stamped(d, 7, 17, 6);
    let seen = rig.at(40 * MS);
    assert_eq!(seen[0].events, vec![(d.to_owned(), 7, 6)]);
    let mut report = Default::default();
    rig.folder.publish_report(&mut report);
    assert_eq!((report.sealed, report.folded), (3, 3));
    // Equal stamps: the later arrival (same ring, so publish order) wins.
    rig.take_stamped(d, 9, 50, 7);
    rig.take_stamped(d, 9, 50, 8);
    assert_eq!(rig.at(50 * MS)[0].events, vec![(d.to_owned(), 9, 8)]);
}

#[test]
fn an_urgent_latest_event_older_than_its_survivor_is_stale() {
    let mut rig = Rig::new(&[("chat:*", Policy::latest(10 * MS, 100))], &[]);
    let d = "chat:s1:delta";
    rig.take_stamped(d, 7, 20, 2);
    rig.take_stamped(d, 8, 21, 3);
    // Published urgent before 2, arrived after it: stale, folded; the
    // window still closes at once.
    rig.take_decoded(d, 7, true, Some(10), 1);
    let seen = rig.next_sweep();
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(
        seen[0].events,
        vec![(d.to_owned(), 7, 2), (d.to_owned(), 8, 3)]
    );
    assert_eq!(seen[0].folded, 1);
    // A newer urgent event supersedes and guards like any survivor.
    rig.take_stamped(d, 7, 30, 4);
    rig.take_decoded(d, 7, true, Some(31), 5);
    assert_eq!(rig.next_sweep()[0].events, vec![(d.to_owned(), 7, 5)]);
    rig.take_stamped(d, 7, 29, 6); // straggler in the sweep after
    assert_eq!(rig.at(10 * MS), vec![]);
}

#[test]
fn aggregate_folds_numbers_and_discards_the_rest() {
    let mut rig = Rig::new(&[("gpu:*", Policy::aggregate(10 * MS, 100))], &[]);
    rig.take("gpu:0:util", 0, 10);
    rig.take("gpu:0:util", 0, 30);
    rig.take("gpu:0:util", 0, u64::MAX); // not numeric for the sampler
    rig.take("gpu:0:temp", 0, 70);
    let seen = rig.at(10 * MS);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].events, vec![]);
    assert_eq!(
        seen[0].aggregates,
        vec![
            ("gpu:0:util".to_owned(), 2, 40.0),
            ("gpu:0:temp".to_owned(), 1, 70.0)
        ]
    );
    let mut report = Default::default();
    rig.folder.publish_report(&mut report);
    assert_eq!(report.not_numeric, 1);
    assert_eq!(report.folded, 3);
}

#[test]
fn aggregate_rejects_nan_and_infinities_like_non_numeric_payloads() {
    let mut rig = Rig::new(&[("gpu:*", Policy::aggregate(10 * MS, 100))], &[]);
    rig.take("gpu:0:util", 0, 10);
    rig.take("gpu:0:util", 0, NAN);
    rig.take("gpu:0:util", 0, INF);
    rig.take("gpu:0:util", 0, NEG_INF);
    rig.take("gpu:0:util", 0, 30);
    rig.take("gpu:0:temp", 0, NAN); // a name with only non-numbers: no aggregate
    let mut sums = Vec::new();
    rig.folder.set_now(rig.t0 + 10 * MS);
    rig.folder.emit_due();
    rig.folder.deliver(|batch| {
        assert_eq!(batch.dropped, 4, "rejections are shown in band");
        for a in batch.aggregates.iter() {
            sums.push((a.name().to_owned(), a.count(), a.sum(), a.sum_exact()));
            assert_eq!((a.min(), a.max(), a.mean()), (10.0, 30.0, 20.0));
        }
    });
    assert_eq!(sums, vec![("gpu:0:util".to_owned(), 2, 40.0, Some(40))]);
    let mut report = Default::default();
    rig.folder.publish_report(&mut report);
    assert_eq!(report.not_numeric, 4);
    assert_eq!(report.folded, 2);
}

#[test]
fn aggregate_sums_integers_exactly() {
    let mut rig = Rig::new(&[("gpu:*", Policy::aggregate(10 * MS, 100))], &[]);
    let big = 1u64 << 53;
    rig.take("gpu:0:energy", 0, big);
    rig.take("gpu:0:energy", 0, 1);
    rig.take("gpu:0:energy", 0, NAN - 4); // near u64::MAX
    let mut exact = None;
    rig.folder.set_now(rig.t0 + 10 * MS);
    rig.folder.emit_due();
    rig.folder.deliver(|batch| {
        exact = batch.aggregates[0].sum_exact();
    });
    let expected = i128::from(big) + 1 + i128::from(NAN - 4);
    assert_eq!(exact, Some(expected));
}

#[test]
fn flush_with_a_filter_closes_only_matching_prefixes() {
    let mut rig = Rig::new(&[], &[]);
    rig.take("data:a:x", 0, 1);
    rig.take("data:b:x", 0, 2);
    rig.folder.emit_all(
        BatchReason::Flush,
        Some(&[Pattern::parse("data:a").unwrap()]),
    );
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].name, "data:a:batch");
    assert_eq!(seen[0].reason, BatchReason::Flush);
    assert_eq!(rig.folder.next_deadline(), Some(rig.t0 + 50 * MS));
}

/// Issue 19: an urgent window waits one more sweep, so events its task
/// published earlier from another thread (another ring, read earlier in
/// the sweep) still come before it; events from the urgent event's own
/// ring after it go to the next window, whatever path they take.
#[test]
fn an_urgent_window_waits_a_sweep_for_other_rings_and_defers_its_own() {
    let mut rig = Rig::new(
        &[
            ("data:*", Policy::batch(10 * MS, 100)),
            ("chat:*", Policy::latest(10 * MS, 100)),
        ],
        &["data:t:alarm", "chat:*:finished"],
    );
    let (ring_a, ring_b) = (1, 2);
    rig.folder.set_source(ring_a);
    rig.take("data:t:x", 0, 1);
    rig.folder.set_source(ring_b);
    rig.take("data:t:alarm", 0, 2);
    // Ring B after the urgent event (fast path): the next window.
    rig.take("data:t:x", 0, 3);
    // Ring A, read again in the next sweep: a straggler, before the alarm.
    rig.folder.set_source(ring_a);
    rig.take("data:t:x", 0, 4);
    assert_eq!(rig.delivered(), vec![]);
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(
        seen[0].events,
        vec![ev("data:t:x", 1), ev("data:t:x", 4), ev("data:t:alarm", 2)]
    );
    // The deferred event opened the next window.
    let seen = rig.at(10 * MS);
    assert_eq!(seen[0].events, vec![ev("data:t:x", 3)]);

    // `latest`: a newer value of the urgent event's key from another ring
    // belongs after it; an older one is folded away; other keys join.
    let d = "chat:s1:delta";
    rig.folder.set_source(ring_b);
    rig.take_stamped(d, 1, 100, 10);
    rig.take_decoded(d, 1, true, Some(110), 11);
    rig.folder.set_source(ring_a);
    rig.take_stamped(d, 2, 90, 14); // another key: before the urgent one
    rig.take_stamped(d, 1, 105, 12); // older: stale
    rig.take_stamped(d, 1, 120, 13); // newer: next window
    rig.take_stamped(d, 2, 95, 15); // ring A after 13: next window too
    let seen = rig.next_sweep();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].events,
        vec![(d.to_owned(), 2, 14), (d.to_owned(), 1, 11)]
    );
    assert_eq!(seen[0].folded, 2, "10 superseded by 11; 12 stale");
    let seen = rig.at(20 * MS);
    assert_eq!(
        seen[0].events,
        vec![(d.to_owned(), 1, 13), (d.to_owned(), 2, 15)]
    );

    // A flush seals a held window at once (the flusher swept first).
    rig.take("data:t:alarm", 0, 20);
    rig.folder.emit_all(BatchReason::Flush, None);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    // Nothing is held, lost or counted twice.
    let mut report = Default::default();
    rig.folder.publish_report(&mut report);
    assert_eq!((report.sealed, report.accumulated), (9, 0));
}
