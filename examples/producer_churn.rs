//! Memory under producer churn: `CYCLES` times, create a producer, publish
//! one event, drop it, with a healthy subscriber; then the resident set
//! (`VmRSS` from /proc/self/status, Linux), the producers still registered (at
//! most `Engine::MAX_RETIRING_PRODUCERS` dropped ones: creation waits for
//! the flusher beyond that) and the events pending. Also the
//! per-call cost of the thread-local path (`Engine::publish_key`) next to a
//! held producer's (`Producer::publish_key`).
//!
//! ```text
//! cargo run --release --example producer_churn [CYCLES] [PUBLISHES]
//! ```
//!
//! A measurement, not a test: RSS depends on the allocator and on how far
//! the flusher is behind when the loop ends, so it is reported, not
//! asserted.

use std::time::{Duration, Instant};

use ringfold::{Batch, Engine};

#[path = "common/rss.rs"]
mod rss;

fn rss_mib() -> f64 {
    rss::rss_bytes() as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cycles: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let publishes: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);

    let engine = Engine::<u64>::builder()
        .subscriber(|b: &Batch<u64>| {
            std::hint::black_box(b.len());
        })
        .build()?;
    let key = engine.key("data:churn:one")?;
    println!("rss before: {:.1} MiB", rss_mib());
    let start = Instant::now();
    let mut peak = 0f64;
    for i in 0..cycles {
        let mut p = engine.producer()?;
        p.publish_key(key, i)?;
        drop(p);
        if i % 100_000 == 99_999 {
            peak = peak.max(rss_mib());
        }
    }
    let churn = start.elapsed();
    let live = engine.stats();
    println!(
        "{cycles} create/publish/drop cycles in {churn:.2?}: rss {:.1} MiB (peak sampled {peak:.1} MiB), \
         {} producers registered (bound {}), {} events pending",
        rss_mib(),
        live.producers,
        Engine::<u64>::MAX_RETIRING_PRODUCERS,
        live.pending
    );
    engine.flush()?;
    std::thread::sleep(Duration::from_millis(200));
    println!("after flush: rss {:.1} MiB", rss_mib());

    // The thread-local path against a held producer, same thread, same key.
    let mut held = engine.producer()?;
    for (label, by_engine) in [
        ("Producer::publish_key", false),
        ("Engine::publish_key", true),
    ] {
        let mut elapsed = Duration::ZERO;
        let mut done = 0;
        while done < publishes {
            // Chunks well under the ring's capacity, flushed between, so no
            // publish finds the ring full.
            let chunk = 2048.min(publishes - done);
            let t = Instant::now();
            for i in 0..chunk {
                if by_engine {
                    engine.publish_key(key, i)?;
                } else {
                    held.publish_key(key, i)?;
                }
            }
            elapsed += t.elapsed();
            done += chunk;
            engine.flush()?;
        }
        println!(
            "{label}: {:.1} ns/call over {publishes} calls",
            elapsed.as_nanos() as f64 / publishes as f64
        );
    }
    drop(held);
    let stats = engine.shutdown()?;
    assert_eq!(stats.sealed, stats.published);
    Ok(())
}
