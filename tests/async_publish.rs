//! Async publishers (issue 13 item 6): `Engine::publish` from tokio tasks
//! that move between worker threads. Each task's events land in the ring
//! of whichever thread it runs on, so arrival order at the flusher is not
//! publish order; `latest` must still never deliver a value older than one
//! the same task published later.
//!
//! The subscriber is a must-deliver sink (`LagPolicy::Block`): each session
//! is its own prefix (`chat:sN`), so under the default drop-oldest queue a
//! subscriber that lags by 1024 batches (a loaded 2-core CI box) loses
//! whole batches, among them a session's last one; that is the lag policy
//! doing its job, not a stale fold, and it once failed this test on CI
//! (issue 13). The lag counters are asserted to be zero, so a lag drop and
//! a stale fold can never be mistaken for each other again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HOUR, LONG};
use ringfold::{Batch, Engine, FullPolicy, LagPolicy, Policy, SubscribeOptions};

const SESSIONS: u64 = 64;
const TOKENS: u64 = 2000;

/// Per session: the last value delivered, and how many deliveries went
/// backwards (a value lower than one already delivered).
type Seen = Arc<Mutex<HashMap<String, (u64, u64)>>>;

/// 64 sessions stream tokens 1..=2000 under `policy` from a 4-worker
/// runtime, yielding between publishes so tasks migrate between workers.
fn stream_sessions(policy: Policy) -> HashMap<String, (u64, u64)> {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let engine = Engine::<u64>::builder()
        .policy("chat:*", policy)
        .ring_capacity(1 << 16)
        .on_full(FullPolicy::Block(LONG))
        .subscriber_with(
            "chat:*",
            SubscribeOptions::new("sessions").lag(LagPolicy::Block { timeout: LONG }),
            move |b: &Batch<u64>| {
                let mut seen = sink.lock().unwrap();
                for e in b.events() {
                    let (last, backwards) = seen.entry(e.name().to_owned()).or_insert((0, 0));
                    if *e.payload() < *last {
                        *backwards += 1;
                    }
                    *last = *e.payload();
                }
            },
        )
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|s| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let name = format!("chat:s{s}:delta");
                    for token in 1..=TOKENS {
                        engine.publish(&name, token).unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    engine.flush().unwrap();
    let stats = engine.stats();
    assert_eq!(stats.published, SESSIONS * TOKENS);
    assert!(stats.is_conserved(), "{stats:?}");
    // Nothing left behind by the flush: every final value was delivered
    // or folded by the time it returned.
    assert_eq!(stats.pending, 0, "{stats:?}");
    drop(runtime);
    let stats = engine.shutdown().unwrap();
    // Every sealed batch reached the subscriber: a session that ends early
    // below is a fold bug, not a batch lost to lag.
    for sub in &stats.subscribers {
        assert_eq!(sub.lag_dropped_batches, 0, "{sub:?}");
    }
    let seen = seen.lock().unwrap().clone();
    seen
}

fn assert_no_stale(seen: &HashMap<String, (u64, u64)>) {
    assert_eq!(seen.len() as u64, SESSIONS);
    let stale: Vec<_> = seen
        .iter()
        .filter(|(_, &(last, backwards))| last != TOKENS || backwards > 0)
        .collect();
    assert!(
        stale.is_empty(),
        "{} of {SESSIONS} sessions stale (name: (final value, deliveries that went backwards)): {stale:?}",
        stale.len()
    );
}

#[test]
fn latest_from_migrating_tasks_never_delivers_a_stale_value_on_time() {
    // Windows close on time: many windows per session.
    assert_no_stale(&stream_sessions(Policy::latest(
        Duration::from_millis(1),
        1_000_000,
    )));
}

#[test]
fn latest_from_migrating_tasks_never_delivers_a_stale_value_on_count() {
    // Windows close on count, in the middle of a sweep.
    assert_no_stale(&stream_sessions(Policy::latest(HOUR, 8)));
}
