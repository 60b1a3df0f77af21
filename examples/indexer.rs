//! A code indexer publishing through ringfold.
//!
//! ```text
//! cargo run --example indexer -- [PATH]      # default: .
//! ```
//!
//! Walks `PATH` once (skipping hidden entries and build directories), reads
//! every file and publishes `code_index:<lang>:indexed` (its size in bytes)
//! and `code_index:<lang>:lines` (its line count). The engine uses the
//! default policy table, so `code_index:*` is batched per language
//! (`code_index:rust`, ...) for 200 ms or 500 events. A subscriber prints
//! every batch as it arrives: prefix, events, why it was emitted, and the
//! files and bytes it carries. A summary follows.
//!
//! An indexer would rather wait than lose a file, so this one publishes
//! with `FullPolicy::Block`: a full ring makes the walker wait for the
//! flusher instead of dropping (the engine's default is drop-newest).

mod common;

use std::collections::BTreeMap;
use std::error::Error;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringfold::{Batch, Engine, FullPolicy, Value};

use common::{bytes, count, duration, reduction, IndexKeys};

/// Per-language totals.
#[derive(Default)]
struct Lang {
    files: u64,
    bytes: u64,
    lines: u64,
}

fn print_batch(batch: &Batch<Value>) {
    if !batch.prefix().starts_with("code_index:") {
        return;
    }
    // Each file is two events; the `indexed` one carries its size.
    let (mut files, mut size) = (0u64, 0u64);
    for e in batch.events() {
        if e.name().ends_with(":indexed") {
            files += 1;
            size += e.payload().as_f64().unwrap_or(0.0) as u64;
        }
    }
    println!(
        "  {:<24} {:>6} events  {:<8} {:>6} files {:>11}",
        batch.prefix(),
        count(batch.len() as u64),
        format!("{:?}", batch.reason()),
        count(files),
        bytes(size),
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    if args.next().is_some() {
        return Err("usage: indexer [PATH]".into());
    }
    if !root.exists() {
        return Err(format!("no such path: {}", root.display()).into());
    }

    let engine = Engine::<Value>::builder()
        .default_rules()
        .on_full(FullPolicy::Block(Duration::from_secs(1)))
        .subscriber(print_batch)
        .build()?;
    let mut producer = engine.producer()?;
    let mut keys = IndexKeys::new();
    let mut langs: BTreeMap<&'static str, Lang> = BTreeMap::new();
    let mut unreadable = 0u64;
    let mut failure: Option<Box<dyn Error>> = None;

    println!("indexing {}", root.display());
    let start = Instant::now();
    let _ = common::walk(&root, &mut |path| {
        let Some(f) = common::index_file(path) else {
            unreadable += 1;
            return ControlFlow::Continue(());
        };
        let result = keys
            .get(&engine, f.lang)
            .map_err(Box::from)
            .and_then(|(indexed, lines)| {
                producer.publish_key(indexed, Value::from(f.bytes))?;
                producer.publish_key(lines, Value::from(f.lines))?;
                Ok(())
            });
        if let Err(e) = result {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        let lang = langs.entry(f.lang).or_default();
        lang.files += 1;
        lang.bytes += f.bytes;
        lang.lines += f.lines;
        ControlFlow::Continue(())
    });
    let walked = start.elapsed();
    drop(producer);
    // Deliver what is still inside a window (reason `Flush`).
    engine.flush()?;
    let stats = engine.shutdown()?;
    if let Some(e) = failure {
        return Err(e);
    }

    println!();
    println!(
        "  {:<12} {:>8} {:>11} {:>11} {:>10} {:>9} {:>10}",
        "language", "files", "bytes", "lines", "events", "batches", "reduction"
    );
    let mut totals = Lang::default();
    for (name, lang) in &langs {
        let p = stats
            .prefixes
            .get(&format!("code_index:{name}"))
            .copied()
            .unwrap_or_default();
        println!(
            "  {:<12} {:>8} {:>11} {:>11} {:>10} {:>9} {:>10}",
            name,
            count(lang.files),
            bytes(lang.bytes),
            count(lang.lines),
            count(p.received),
            count(p.batches),
            reduction(p.received, p.batches),
        );
        totals.files += lang.files;
        totals.bytes += lang.bytes;
        totals.lines += lang.lines;
    }
    println!(
        "  {:<12} {:>8} {:>11} {:>11} {:>10} {:>9} {:>10}",
        "total",
        count(totals.files),
        bytes(totals.bytes),
        count(totals.lines),
        count(stats.published),
        count(stats.batches),
        reduction(stats.published, stats.batches),
    );
    println!();
    println!(
        "indexed {} files in {} ({} unreadable); {} events delivered in {} batches, \
         {} dropped; conserved: {}",
        count(totals.files),
        duration(walked),
        count(unreadable),
        count(stats.sealed),
        count(stats.batches),
        count(stats.dropped.rejected() + stats.dropped.not_numeric),
        if stats.is_conserved() { "yes" } else { "NO" },
    );
    Ok(())
}
