//! Resident memory per distinct prefix (issue 19: 1 M distinct prefixes
//! took 1.35 GiB). Interns N names with N distinct prefixes
//! (`m:<i>:x`), publishes one event to each, flushes into one counting
//! subscriber, and prints the resident set size (`VmRSS`) after each step,
//! per prefix.
//!
//! ```text
//! cargo run --release --example prefix_memory            # N = 1,000,000
//! PREFIXES=200000 cargo run --release --example prefix_memory
//! ```

#[path = "common/rss.rs"]
mod rss;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringfold::{Batch, Engine, FullPolicy, LagPolicy, Policy, SubscribeOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("PREFIXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let names: Vec<String> = (0..n).map(|i| format!("m:{i}:x")).collect();
    let base = rss::rss_bytes();
    let seen = Arc::new(AtomicU64::new(0));
    let sink = seen.clone();
    let engine = Engine::<u64>::builder()
        .max_names(n + 16)
        .default_policy(Policy::batch(Duration::from_secs(3600), 1_000))
        .on_full(FullPolicy::Block(Duration::from_secs(60)))
        // Must-deliver: a flush seals one batch per prefix at once.
        .subscriber_with(
            "*",
            SubscribeOptions::new("count").lag(LagPolicy::Block {
                timeout: Duration::from_secs(60),
            }),
            move |b: &Batch<u64>| {
                sink.fetch_add(b.len() as u64, Ordering::Relaxed);
            },
        )
        .build()?;
    let built = rss::rss_bytes();
    let keys = names
        .iter()
        .map(|name| engine.key(name))
        .collect::<Result<Vec<_>, _>>()?;
    let interned = rss::rss_bytes();
    let mut producer = engine.producer()?;
    for (i, key) in keys.iter().enumerate() {
        producer.publish_key(*key, i as u64)?;
    }
    engine.flush()?;
    let flushed = rss::rss_bytes();
    // A second round: the steady state, once every prefix has had a window.
    for (i, key) in keys.iter().enumerate() {
        producer.publish_key(*key, i as u64)?;
    }
    engine.flush()?;
    let again = rss::rss_bytes();
    assert_eq!(seen.load(Ordering::Relaxed), 2 * n as u64);
    let per = |bytes: u64| bytes as f64 / n as f64;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!("prefixes: {n}");
    println!(
        "engine built:           {:>8.1} MiB",
        mib(built.saturating_sub(base))
    );
    println!(
        "names interned:         {:>8.1} MiB  {:>7.1} B/prefix",
        mib(interned.saturating_sub(built)),
        per(interned.saturating_sub(built))
    );
    println!(
        "one event each, flush:  {:>8.1} MiB  {:>7.1} B/prefix",
        mib(flushed.saturating_sub(interned)),
        per(flushed.saturating_sub(interned))
    );
    println!(
        "again:                  {:>8.1} MiB  {:>7.1} B/prefix",
        mib(again.saturating_sub(flushed)),
        per(again.saturating_sub(flushed))
    );
    println!(
        "total above baseline:   {:>8.1} MiB  {:>7.1} B/prefix (the {} name strings: {:.1} B/prefix)",
        mib(again.saturating_sub(base)),
        per(again.saturating_sub(base)),
        n,
        per(names.iter().map(|s| s.capacity() as u64 + 24).sum())
    );
    drop(producer);
    engine.shutdown()?;
    Ok(())
}
