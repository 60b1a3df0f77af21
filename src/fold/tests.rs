//! The fold on its own, with an injected clock: no thread, no wall clock.

use std::time::{Duration, Instant};

use super::Folder;
use crate::event::BatchReason;
use crate::intern::{EventKey, Interner};
use crate::policy::{Pattern, Policy, PolicyTable};
use crate::record::Decoded;

const MS: Duration = Duration::from_millis(1);

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
        let sampler: fn(&u64) -> Option<f64> = |v| (*v != u64::MAX).then_some(*v as f64);
        let folder = Folder::new(&interner, Some(sampler), t0);
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
        let key = self.key(name);
        let event = Decoded {
            name_id: key.name_id(),
            urgent,
            sub_key,
            stamp: None,
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
fn urgent_closes_the_window_after_earlier_events() {
    let mut rig = Rig::new(
        &[("data:*", Policy::batch(10 * MS, 100))],
        &["data:t:alarm"],
    );
    rig.take("data:t:x", 0, 1);
    rig.take("data:t:alarm", 0, 2);
    let seen = rig.delivered();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].reason, BatchReason::Urgent);
    assert_eq!(
        seen[0].events,
        vec![ev("data:t:x", 1), ev("data:t:alarm", 2)]
    );
    // An event published urgent (publish_urgent) does the same.
    rig.take("data:t:x", 0, 3);
    rig.take_event("data:t:x", 0, true, 4);
    let seen = rig.delivered();
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
