//! Issue 6, workloads 4 and 5, plus the idle-CPU target: custom measurement
//! loops that print tables (criterion does not do percentiles).
//!
//! * latency: publish -> `on_batch` delay, p50/p99/max, for passthrough,
//!   urgent and a 10 ms batch window (events stamped at publish with
//!   `precise_timestamps(true)`, delay computed in the subscriber), with a
//!   crossbeam-channel reference;
//! * the time `flush()` takes with 10 000 pending events (and with none);
//! * memory: resident bytes of an engine with 64 producers at the default
//!   ring capacity, each scenario in a fresh child process (this binary
//!   re-executed) so allocator reuse cannot hide anything;
//! * flusher CPU over 1 s idle, from /proc/self/task/*/schedstat;
//! * delivery (issue 13): passthrough latency to a fast subscriber while
//!   another sleeps 200 ms per batch, and fan-out to 1, 4 and 16
//!   subscribers (events per second, resident memory).
//!
//! Runs only under `cargo bench` (the `--bench` flag); `cargo test
//! --benches` just checks that it builds. `RINGFOLD_BENCH_QUICK=1` shrinks
//! the event counts.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringfold::{
    Batch, Budget, Engine, EventKey, FullPolicy, OnUnsubscribe, Policy, SubscribeOptions,
};

mod common;
use common::{pct, quick, PREFIXES};

const MEM_CHILD: &str = "RINGFOLD_BENCH_MEM_CHILD";

fn names() -> Vec<String> {
    (0..PREFIXES)
        .map(|i| format!("data:t{i}:created"))
        .collect()
}

fn keys<T: Send + Sync + 'static>(engine: &Engine<T>) -> Vec<EventKey> {
    names().iter().map(|n| engine.key(n).unwrap()).collect()
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn print_row(label: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "| {label:<52} | {:>6} | {:>9} | {:>9} | {:>9} |",
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(v.last().copied().unwrap_or(0)),
    );
}

// ---------------------------------------------------------------------------
// Latency.

#[derive(Clone, Copy)]
enum Kind {
    Normal,
    Urgent,
    /// `publish_key` of a name that `EngineBuilder::urgent` marks urgent.
    UrgentRule,
}

/// Publishes `n` events, one every `pace`, cycling over the 64 prefixes
/// (plus, with `background`, one `bg:load:tick` event every 10 ms on a
/// 50 ms window), and returns each event's publish -> delivery delay.
fn engine_latency(
    policy: Policy,
    kind: Kind,
    n: usize,
    pace: Duration,
    background: bool,
) -> Vec<u64> {
    engine_latency_with(policy, kind, n, pace, background, false)
}

/// `engine_latency`, optionally with a second subscriber that sleeps
/// 200 ms in every batch (a slow sink on its own delivery thread, with a
/// small drop-oldest queue).
fn engine_latency_with(
    policy: Policy,
    kind: Kind,
    n: usize,
    pace: Duration,
    background: bool,
    slow: bool,
) -> Vec<u64> {
    let delays = Arc::new(Mutex::new(Vec::with_capacity(n * 2)));
    let sink = delays.clone();
    let mut builder = Engine::<u64>::builder();
    if slow {
        builder = builder.subscriber_with(
            "*",
            SubscribeOptions::new("slow")
                .budget(Budget::new(4, u64::MAX))
                .coalesce_after(usize::MAX)
                .on_unsubscribe(OnUnsubscribe::Discard),
            |_: &Batch<u64>| thread::sleep(Duration::from_millis(200)),
        );
    }
    let engine = builder
        .default_policy(policy)
        .policy("bg:*", Policy::batch(Duration::from_millis(50), 100))
        .precise_timestamps(true)
        .urgent(if matches!(kind, Kind::UrgentRule) {
            "data:*"
        } else {
            "none:*"
        })
        .subscriber(move |b: &Batch<u64>| {
            let now = Instant::now();
            if b.prefix().starts_with("bg:") {
                return;
            }
            let mut d = sink.lock().unwrap();
            for e in b.events() {
                d.push(now.duration_since(e.timestamp()).as_nanos() as u64);
            }
        })
        .build()
        .unwrap();
    let keys = keys(&engine);
    let bg = engine.key("bg:load:tick").unwrap();
    let mut producer = engine.producer().unwrap();
    let mut last_bg = Instant::now();
    for i in 0..n {
        let key = keys[i % PREFIXES];
        match kind {
            Kind::Normal | Kind::UrgentRule => producer.publish_key(key, i as u64).unwrap(),
            Kind::Urgent => producer.publish_urgent(key, i as u64).unwrap(),
        }
        if background && last_bg.elapsed() >= Duration::from_millis(10) {
            producer.publish_key(bg, 0u64).unwrap();
            last_bg = Instant::now();
        }
        thread::sleep(pace);
    }
    if slow {
        // `flush` would wait for the slow subscriber too: wait for the fast
        // one's deliveries only, and leave the slow one behind.
        let deadline = Instant::now() + Duration::from_secs(30);
        while delays.lock().unwrap().len() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let _ = engine.shutdown_timeout(Duration::from_secs(2));
    } else {
        engine.flush().unwrap();
        engine.shutdown().unwrap();
    }
    let v = std::mem::take(&mut *delays.lock().unwrap());
    assert_eq!(v.len(), n);
    v
}

/// Reference: a crossbeam-channel consumer blocked in `recv`, the same
/// pacing, delay measured when the event is received.
fn crossbeam_latency(n: usize, pace: Duration) -> Vec<u64> {
    let (tx, rx) = crossbeam_channel::bounded::<Instant>(4096);
    let consumer = thread::spawn(move || {
        let mut d = Vec::with_capacity(n);
        while let Ok(t) = rx.recv() {
            d.push(t.elapsed().as_nanos() as u64);
        }
        d
    });
    for _ in 0..n {
        tx.send(Instant::now()).unwrap();
        thread::sleep(pace);
    }
    drop(tx);
    consumer.join().unwrap()
}

fn latency() {
    let n = if quick() { 500 } else { 3000 };
    let pace = Duration::from_micros(200);
    println!("\n## Latency: publish -> on_batch (1 producer, one event every ~{pace:?} + sleep overshoot, 64 prefixes; default tick 5 ms)\n");
    println!(
        "| {:<52} | {:>6} | {:>9} | {:>9} | {:>9} |",
        "scenario", "events", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<54}|{:->8}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", ""
    );
    let batch10 = Policy::batch(Duration::from_millis(10), 100);
    let batch50 = Policy::batch(Duration::from_millis(50), 100);
    print_row(
        "ringfold passthrough",
        engine_latency(Policy::Passthrough, Kind::Normal, n, pace, false),
    );
    print_row(
        "ringfold passthrough, another subscriber sleeps 200 ms",
        engine_latency_with(Policy::Passthrough, Kind::Normal, n, pace, false, true),
    );
    print_row(
        "ringfold passthrough, another prefix's window open",
        engine_latency(Policy::Passthrough, Kind::Normal, n, pace, true),
    );
    print_row(
        "ringfold urgent (prefix policy batch 50 ms/100)",
        engine_latency(batch50, Kind::Urgent, n, pace, false),
    );
    print_row(
        "ringfold urgent rule, another prefix's window open",
        engine_latency(batch50, Kind::UrgentRule, n, pace, true),
    );
    print_row(
        "ringfold urgent publish, another prefix's window open",
        engine_latency(batch50, Kind::Urgent, n, pace, true),
    );
    print_row(
        "ringfold batch 10 ms/100 (target p99 <= 20 ms)",
        engine_latency(batch10, Kind::Normal, n, pace, false),
    );
    print_row(
        "crossbeam-channel blocking recv (reference)",
        crossbeam_latency(n, pace),
    );
}

// ---------------------------------------------------------------------------
// Flush time.

fn flush_time() {
    let rounds = if quick() { 20 } else { 100 };
    const PENDING: u64 = 10_000;
    let engine = Engine::<u64>::builder()
        .default_policy(Policy::batch(Duration::from_secs(30), 1_000_000))
        .on_full(FullPolicy::Block(Duration::from_secs(5)))
        .subscriber(|b: &Batch<u64>| {
            std::hint::black_box(b.len());
        })
        .build()
        .unwrap();
    let keys = keys(&engine);
    let mut producer = engine.producer().unwrap();
    let (mut full, mut empty) = (Vec::new(), Vec::new());
    let mut short = 0;
    for _ in 0..rounds {
        for i in 0..PENDING {
            producer
                .publish_key(keys[i as usize % PREFIXES], i)
                .unwrap();
        }
        // Stats are exact only at quiescent moments: wait until the
        // flusher has taken everything off the ring into its windows (two
        // equal reads in a row).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = 0;
        while seen < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
            seen = if engine.stats().pending == PENDING {
                seen + 1
            } else {
                0
            };
        }
        if seen < 2 {
            short += 1;
        }
        let t0 = Instant::now();
        engine.flush().unwrap();
        full.push(t0.elapsed().as_nanos() as u64);
        let t0 = Instant::now();
        engine.flush().unwrap();
        empty.push(t0.elapsed().as_nanos() as u64);
    }
    println!("\n## flush() duration (1 producer, 64 prefixes, batch 30 s/1e6 so nothing leaves before the flush)\n");
    println!(
        "| {:<52} | {:>6} | {:>9} | {:>9} | {:>9} |",
        "scenario", "rounds", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<54}|{:->8}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", ""
    );
    print_row("flush() with 10 000 events pending in windows", full);
    print_row("flush() with nothing pending (round trip)", empty);
    if short > 0 {
        println!("({short} rounds: stats never showed exactly 10 000 pending before the flush)");
    }
    engine.shutdown().unwrap();
}

// ---------------------------------------------------------------------------
// Memory (child processes).

#[path = "../examples/common/rss.rs"]
mod rss;
use rss::rss_bytes;

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1024.0 * 1024.0))
}

/// One memory scenario, in a child process: prints
/// `MEM <label>|<after create>|<after every slot was written once>`.
fn mem_child(which: &str) {
    const P: usize = 64;
    const CAP: usize = 4096;
    let base = rss_bytes();
    let (created, touched) = match which {
        "ringfold-u64" => mem_ringfold::<u64>(base, |i| i),
        "ringfold-value" => mem_ringfold::<ringfold::Value>(base, ringfold::Value::from),
        "rtrb" => {
            // 64 rings of a record the size of ringfold's slot for a `u64`
            // event (16 bytes).
            let mut rings: Vec<_> = (0..P)
                .map(|_| rtrb::RingBuffer::<[u64; 2]>::new(CAP))
                .collect();
            let created = rss_bytes() - base;
            for (tx, rx) in rings.iter_mut() {
                for i in 0..CAP as u64 {
                    tx.push([i; 2]).unwrap();
                }
                while rx.pop().is_ok() {}
            }
            (created, rss_bytes() - base)
        }
        "crossbeam" => {
            // One shared bounded channel of the same total capacity.
            let (tx, rx) = crossbeam_channel::bounded::<[u64; 2]>(P * CAP);
            let created = rss_bytes() - base;
            for i in 0..(P * CAP) as u64 {
                tx.send([i; 2]).unwrap();
            }
            while rx.try_recv().is_ok() {}
            (created, rss_bytes() - base)
        }
        _ => panic!("unknown memory scenario {which}"),
    };
    println!("MEM {which}|{created}|{touched}");
}

fn mem_ringfold<T: Send + Sync + 'static>(base: u64, payload: fn(u64) -> T) -> (u64, u64) {
    const P: usize = 64;
    let engine = Engine::<T>::builder()
        .on_full(FullPolicy::Block(Duration::from_secs(5)))
        .subscriber(|b: &Batch<T>| {
            std::hint::black_box(b.len());
        })
        .build()
        .unwrap();
    let keys = keys(&engine);
    let mut producers: Vec<_> = (0..P).map(|_| engine.producer().unwrap()).collect();
    engine.flush().unwrap();
    let created = rss_bytes() - base;
    // Write every slot of every ring once (4096 events per producer).
    for p in producers.iter_mut() {
        for i in 0..4096u64 {
            let sent = p.publish_key(keys[i as usize % PREFIXES], payload(i));
            assert!(sent.is_ok(), "publish failed");
        }
    }
    engine.flush().unwrap();
    let touched = rss_bytes() - base;
    drop(producers);
    engine.shutdown().unwrap();
    (created, touched)
}

fn memory() {
    let exe = std::env::current_exe().unwrap();
    println!("\n## Resident memory: 64 producers x 4096-slot rings (default capacity), VmRSS deltas, fresh process each\n");
    println!(
        "| {:<52} | {:>14} | {:>18} |",
        "design", "created MiB", "slots touched MiB"
    );
    println!("|{:-<54}|{:->16}|{:->20}|", "", "", "");
    for (which, label) in [
        ("ringfold-u64", "ringfold Engine<u64> (slot 16 B)"),
        ("ringfold-value", "ringfold Engine<Value>"),
        ("rtrb", "64 rtrb rings of 16 B records (reference)"),
        (
            "crossbeam",
            "1 crossbeam bounded(64*4096) of 16 B (reference)",
        ),
    ] {
        let out = std::process::Command::new(&exe)
            .env(MEM_CHILD, which)
            .output()
            .expect("spawn memory child");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("MEM ")).unwrap_or("");
        let f: Vec<u64> = line
            .split('|')
            .skip(1)
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if f.len() == 2 {
            println!("| {label:<52} | {:>14} | {:>18} |", mib(f[0]), mib(f[1]));
        } else {
            println!(
                "| {label:<52} | failed: {} |",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Flusher CPU when idle.

/// (tid, on-CPU ns) of the flusher thread (comm is cut to 15 bytes).
fn flusher_cpu() -> Option<(String, u64)> {
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with("ringfold-flush") {
            let sched = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let ns = sched.split_whitespace().next()?.parse().ok()?;
            return Some((entry.file_name().to_string_lossy().into_owned(), ns));
        }
    }
    None
}

fn idle_cpu() {
    println!("\n## Flusher CPU over 1 s idle (/proc/self/task/<tid>/schedstat on-CPU time; sweeps from Stats)\n");
    println!(
        "| {:<52} | {:>12} | {:>12} |",
        "state", "CPU us / 1 s", "sweeps / 1 s"
    );
    println!("|{:-<54}|{:->14}|{:->14}|", "", "", "");
    for (label, window) in [
        ("idle, nothing pending (after 1000 events + flush)", None),
        (
            "idle, one event pending in a 10 s window",
            Some(Duration::from_secs(10)),
        ),
    ] {
        let engine = Engine::<u64>::builder()
            .policy("slow:*", Policy::batch(Duration::from_secs(10), 1000))
            .subscriber(|b: &Batch<u64>| {
                std::hint::black_box(b.len());
            })
            .build()
            .unwrap();
        let keys = keys(&engine);
        let mut producer = engine.producer().unwrap();
        for i in 0..1000u64 {
            producer
                .publish_key(keys[i as usize % PREFIXES], i)
                .unwrap();
        }
        engine.flush().unwrap();
        if window.is_some() {
            let slow = engine.key("slow:x:y").unwrap();
            producer.publish_key(slow, 0u64).unwrap();
        }
        thread::sleep(Duration::from_millis(100));
        let (tid, before) = flusher_cpu().expect("flusher thread not found");
        let sweeps = engine.stats().sweeps;
        thread::sleep(Duration::from_secs(1));
        let (tid2, after) = flusher_cpu().expect("flusher thread not found");
        assert_eq!(tid, tid2);
        let sweeps = engine.stats().sweeps - sweeps;
        println!(
            "| {label:<52} | {:>12.1} | {:>12} |",
            (after - before) as f64 / 1e3,
            sweeps
        );
        drop(producer);
        engine.shutdown().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Delivery fan-out.

/// Events per second from one producer (64 prefixes, batch 50 ms/100,
/// `FullPolicy::Block` so nothing is dropped) until `flush()` returns, i.e.
/// until every one of `subs` counting subscribers has processed every
/// batch; and the process's resident memory growth over the run.
fn fan_out_row(subs: usize, n: u64) -> (f64, u64) {
    let rss0 = rss_bytes();
    let mut builder = Engine::<u64>::builder().on_full(FullPolicy::Block(Duration::from_secs(10)));
    let counts: Vec<Arc<std::sync::atomic::AtomicU64>> = (0..subs)
        .map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    for c in &counts {
        let c = c.clone();
        builder = builder.subscriber(move |b: &Batch<u64>| {
            c.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let engine = builder.build().unwrap();
    let keys = keys(&engine);
    let mut producer = engine.producer().unwrap();
    let start = Instant::now();
    for i in 0..n {
        producer
            .publish_key(keys[i as usize % PREFIXES], i)
            .unwrap();
    }
    engine.flush().unwrap();
    let elapsed = start.elapsed();
    let rss1 = rss_bytes();
    for c in &counts {
        assert_eq!(c.load(std::sync::atomic::Ordering::Relaxed), n);
    }
    drop(producer);
    engine.shutdown().unwrap();
    (n as f64 / elapsed.as_secs_f64(), rss1.saturating_sub(rss0))
}

fn fan_out() {
    let n = if quick() { 200_000 } else { 2_000_000 };
    println!("\n## Delivery fan-out: {n} events, 1 producer, 64 prefixes, batch 50 ms/100, until flush() returns\n");
    println!(
        "| {:<12} | {:>14} | {:>14} |",
        "subscribers", "events/s", "RSS growth MiB"
    );
    println!("|{:-<14}|{:->16}|{:->16}|", "", "", "");
    for subs in [1, 4, 16] {
        let (rate, rss) = fan_out_row(subs, n);
        println!("| {subs:<12} | {rate:>14.0} | {:>14} |", mib(rss));
    }
}

fn main() {
    if let Ok(which) = std::env::var(MEM_CHILD) {
        mem_child(&which);
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency: measurement loops run under `cargo bench` only");
        return;
    }
    if quick() {
        println!("RINGFOLD_BENCH_QUICK: shortened run");
    }
    memory();
    idle_cpu();
    latency();
    flush_time();
    fan_out();
}
