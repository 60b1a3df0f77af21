//! tower's live page (feature `ws`): a [`WsSink`] that also serves
//! `ui.html` on the same port, and the engine's own figures published as
//! `tower:*` events so the page gets them through the same socket.
//!
//! Each snapshot publishes, as `u64` payloads (passthrough: one frame
//! each), per family `F` (every prefix's first segment except `tower`):
//! `tower:F:in` (events received), `tower:F:out` (batches dispatched),
//! `tower:F:drops`; per subscriber `S`: `tower:sub:S:lag_us`,
//! `tower:sub:S:lost` (events lost to its lag policy or discarded),
//! `tower:sub:S:queued` (events waiting); then `tower:clock:ms` (time since
//! the start) and, in the last snapshot, `tower:clock:final`. The page
//! computes rates from consecutive snapshots.

// Shared with tests/ws_browser.rs, which uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ringfold::ws::{WsConfig, WsSink, WsStats};
use ringfold::{Engine, Policy, Stats, Value};

/// The page: one self-contained HTML file (no external assets).
pub const PAGE: &str = include_str!("ui.html");

/// The family of the snapshot events; excluded from the totals.
pub const FAMILY: &str = "tower";

/// The policy rule the engine needs for the snapshot events (each one its
/// own delivery, so the page sees every snapshot at once).
pub fn rule() -> (&'static str, Policy) {
    ("tower:*", Policy::Passthrough)
}

/// Starts the sink and page on `addr`.
pub fn start(engine: &Engine<Value>, addr: SocketAddr) -> Result<WsSink, ringfold::ws::Error> {
    WsSink::spawn_with(engine, addr, WsConfig::new().page(PAGE))
}

/// Events in, batches out and drops per family (not `tower`), summed over
/// the family's prefixes.
pub fn families(stats: &Stats) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (prefix, p) in &stats.prefixes {
        let family = prefix.split(':').next().unwrap_or(prefix);
        if family == FAMILY {
            continue;
        }
        let t = out.entry(family.to_owned()).or_default();
        t.0 += p.received;
        t.1 += p.batches;
        t.2 += p.dropped;
    }
    out
}

/// The totals the page shows: events in, batches out, drops (all
/// families but `tower`).
pub fn totals(stats: &Stats) -> (u64, u64, u64) {
    families(stats)
        .values()
        .fold((0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2))
}

/// Publishes one snapshot of `stats` taken `elapsed` after the start;
/// `last` marks the final one. Returns the events it could not publish.
pub fn publish(engine: &Engine<Value>, stats: &Stats, elapsed: Duration, last: bool) -> u64 {
    let mut failed = 0u64;
    let mut put = |name: String, v: u64| {
        if engine.publish(&name, v).is_err() {
            failed += 1;
        }
    };
    for (family, (inn, out, drops)) in families(stats) {
        put(format!("{FAMILY}:{family}:in"), inn);
        put(format!("{FAMILY}:{family}:out"), out);
        put(format!("{FAMILY}:{family}:drops"), drops);
    }
    for s in &stats.subscribers {
        let name = s.name.replace([':', '*'], "_");
        put(
            format!("{FAMILY}:sub:{name}:lag_us"),
            s.lag.as_micros().min(u128::from(u64::MAX)) as u64,
        );
        put(format!("{FAMILY}:sub:{name}:lost"), s.lost_events());
        put(format!("{FAMILY}:sub:{name}:queued"), s.queued_events);
    }
    put(format!("{FAMILY}:clock:ms"), elapsed.as_millis() as u64);
    if last {
        put(format!("{FAMILY}:clock:final"), 1);
    }
    failed
}

/// Publishes each health check's delay as it is measured, as
/// `tower:health:burst_us` (due during the indexer's start-up burst) or
/// `tower:health:after_us`, so the page shows the event loop's health live.
pub fn health_publisher(engine: &Engine<Value>) -> Box<dyn FnMut(Duration, bool) + Send> {
    let engine = engine.clone();
    Box::new(move |delay: Duration, in_burst: bool| {
        let phase = if in_burst { "burst_us" } else { "after_us" };
        let us = delay.as_micros().min(u128::from(u64::MAX)) as u64;
        // A refused publish only leaves a gap on the page; the loop's own
        // report (printed at the end) has every check.
        let _ = engine.publish(&format!("{FAMILY}:health:{phase}"), us);
    })
}

/// Waits up to `wait` for the page's connections to drain and close (the
/// engine shut down first), then stops the sink.
pub fn finish(sink: WsSink, wait: Duration) -> Result<WsStats, ringfold::ws::Error> {
    let deadline = std::time::Instant::now() + wait;
    while sink.stats().clients > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.shutdown()
}
