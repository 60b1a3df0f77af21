//! Order for async publishers, urgent included (issue 19): tokio tasks that
//! move between worker threads publish through `Engine::publish`, so one
//! task's events land in several threads' rings. An urgent event (here a
//! session's `chat:<s>:finished`, urgent by rule) closes its prefix's
//! window at once; it must still come after every event its own task
//! published before it, whichever ring holds them.
//!
//! Each of 16 sessions publishes a burst of 300 deltas, then `finished`.
//! The subscriber records, per session, the order in which it received
//! them; a session is out of order if any of its deltas reaches the
//! subscriber after its `finished`. Several rounds per policy (batch,
//! latest, and the default rules, where `chat:*` is passthrough).
//!
//! The subscriber is a must-deliver sink (`LagPolicy::Block`), and the lag
//! counters are asserted to be zero, so a batch lost to lag can never pass
//! for (or hide) an ordering bug.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HOUR, LONG};
use ringfold::{Batch, Engine, EngineBuilder, FullPolicy, LagPolicy, Policy, SubscribeOptions};

const SESSIONS: u64 = 16;
const DELTAS: u64 = 300;
const ROUNDS: usize = 4;

/// One session as its subscriber saw it.
#[derive(Default, Debug, Clone)]
struct Session {
    /// Deltas delivered (all of them, or under `latest` the survivors).
    deltas: u64,
    /// The last delta value delivered, and the highest.
    last_delta: u64,
    max_delta: u64,
    /// `finished` events delivered.
    finished: u64,
    /// Deltas delivered after this session's `finished`.
    after_finished: u64,
}

type Sessions = Arc<Mutex<HashMap<String, Session>>>;

/// Runs one round: 16 sessions on a 4-worker runtime, each task yielding
/// between publishes so it migrates between workers.
fn round(rules: impl FnOnce(EngineBuilder<u64>) -> EngineBuilder<u64>) -> HashMap<String, Session> {
    let seen: Sessions = Arc::default();
    let sink = seen.clone();
    let builder = Engine::<u64>::builder()
        .urgent("chat:*:finished")
        .ring_capacity(1 << 16)
        .on_full(FullPolicy::Block(LONG))
        .subscriber_with(
            "chat:*",
            SubscribeOptions::new("sessions").lag(LagPolicy::Block { timeout: LONG }),
            move |b: &Batch<u64>| {
                let mut seen = sink.lock().unwrap();
                for e in b.events() {
                    let name = e.name();
                    let (session, kind) = name.rsplit_once(':').unwrap();
                    let s = seen.entry(session.to_owned()).or_default();
                    match kind {
                        "delta" => {
                            s.deltas += 1;
                            s.last_delta = *e.payload();
                            s.max_delta = s.max_delta.max(*e.payload());
                            if s.finished > 0 {
                                s.after_finished += 1;
                            }
                        }
                        "finished" => s.finished += 1,
                        other => panic!("unexpected name {other}"),
                    }
                }
            },
        );
    let engine = rules(builder).build().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|s| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let delta = format!("chat:s{s}:delta");
                    for i in 1..=DELTAS {
                        engine.publish(&delta, i).unwrap();
                        tokio::task::yield_now().await;
                    }
                    engine
                        .publish(&format!("chat:s{s}:finished"), 0u64)
                        .unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(runtime);
    let stats = engine.shutdown().unwrap();
    assert_eq!(stats.published, SESSIONS * (DELTAS + 1));
    assert!(stats.is_conserved(), "{stats:?}");
    for sub in &stats.subscribers {
        assert_eq!(sub.lag_dropped_batches, 0, "{sub:?}");
    }
    let seen = seen.lock().unwrap().clone();
    seen
}

/// Runs the rounds and asserts that no session's `finished` overtook one
/// of its deltas (and that every session was delivered whole). `latest`:
/// deltas fold, and the last one delivered must be the final one; else
/// every delta is delivered (deltas of one session in different rings may
/// reach the subscriber in any order: only the urgent event is promised to
/// come after them).
fn assert_in_order(
    what: &str,
    rules: impl Fn(EngineBuilder<u64>) -> EngineBuilder<u64>,
    latest: bool,
) {
    let mut failures = Vec::new();
    for r in 0..ROUNDS {
        let seen = round(&rules);
        assert_eq!(seen.len() as u64, SESSIONS, "{what}: {seen:?}");
        for (name, s) in &seen {
            assert_eq!(s.finished, 1, "{what}, round {r}: {name} {s:?}");
            // Whatever the order, nothing is lost: every delta (or under
            // `latest` the final one) reaches the subscriber.
            assert_eq!(s.max_delta, DELTAS, "{what}, round {r}: {name} {s:?}");
            if latest {
                assert_eq!(s.last_delta, DELTAS, "{what}, round {r}: {name} {s:?}");
            } else {
                assert_eq!(s.deltas, DELTAS, "{what}, round {r}: {name} {s:?}");
            }
        }
        let late: Vec<_> = seen
            .iter()
            .filter(|(_, s)| s.after_finished > 0)
            .map(|(name, s)| (name.clone(), s.after_finished))
            .collect();
        if !late.is_empty() {
            failures.push(format!(
                "round {r}: {} of {SESSIONS} sessions had `finished` before deltas \
                 (session, deltas after it): {late:?}",
                late.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {ROUNDS} rounds out of order:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn urgent_never_overtakes_its_tasks_earlier_events_under_batch() {
    assert_in_order(
        "batch",
        |b| b.policy("chat:*", Policy::batch(HOUR, 1_000_000)),
        false,
    );
}

#[test]
fn urgent_never_overtakes_its_tasks_earlier_events_under_batch_by_count() {
    // Windows also close on count, in the middle of sweeps.
    assert_in_order(
        "batch by count",
        |b| b.policy("chat:*", Policy::batch(HOUR, 8)),
        false,
    );
}

#[test]
fn urgent_never_overtakes_its_tasks_earlier_events_under_latest() {
    assert_in_order(
        "latest",
        |b| {
            b.policy(
                "chat:*",
                Policy::latest(Duration::from_millis(1), 1_000_000),
            )
        },
        true,
    );
}

#[test]
fn urgent_never_overtakes_its_tasks_earlier_events_under_default_rules() {
    // `chat:*` is passthrough there: every delta is its own batch.
    assert_in_order("default rules (passthrough)", |b| b.default_rules(), false);
}
