//! The tower: ringfold on real work, for a fixed duration.
//!
//! ```text
//! cargo run --release --example tower [-- --seconds N] [--index PATH]... [--baseline]
//! cargo run --release --features ws --example tower -- --ui 127.0.0.1:8080
//! ```
//!
//! Every hot path below publishes into one engine built with the design's
//! default policy table (`default_rules`):
//!
//! * a **code indexer** walks real source trees (this checkout plus the
//!   toolchain's `rust-src` if installed, or `--index PATH`), reads every
//!   file and publishes `code_index:<lang>:indexed` (its size) and
//!   `code_index:<lang>:lines` (its line count); for the first 2 s it runs
//!   unthrottled (the start-up burst of a cold index), then throttled;
//!   when a pass ends early it starts over, like a background re-indexer;
//! * a **data layer** runs real transactions (inserts, updates, deletes)
//!   against an embedded SQLite database and publishes `data:<table>:<op>`
//!   for every row after each commit, as an ORM's after-commit hook would;
//! * a **chat stream** of four sessions publishes `chat:<session>:delta`
//!   tokens (passthrough) and an urgent `chat:<session>:finished`;
//! * the **GPU sampler** publishes `gpu:*` readings when NVML is present.
//!
//! Three subscribers consume the deliveries:
//!
//! * a **delay recorder** measures each event's publish-to-delivery delay
//!   (the engine stamps events at publish: `precise_timestamps(true)`);
//! * **sqlite-log**, a real slow consumer: every `data:*` batch is written
//!   into an SQLite event log as ONE transaction (`sink.rs`);
//! * **ui-bridge**, an async consumer on the tower's **event loop**: one
//!   tokio current-thread runtime thread that serialises every delivery to
//!   JSON, writes it to a loopback socket a "UI" thread reads, and answers
//!   a health check every 50 ms (`event_loop.rs`). The UI end times each
//!   answer against its due time.
//!
//! Once per second the tower prints, per family, the events taken in, the
//! batches handed to subscribers, their ratio (the reduction factor), the
//! drops and the p99 delay, then per subscriber the batches and events
//! delivered, lag drops, queue depth and lag; at the end, totals, the
//! flusher thread's CPU time, and the event loop's health-check figures
//! during the indexer's start-up burst and after it.
//!
//! `--baseline` runs the same workload with every name passthrough: one
//! delivery per event, the unbatched bus of the design card, whose event
//! loop was flooded by per-event dispatch so its health check failed at
//! start-up. Both modes print the event-loop block in the same format.
//!
//! `--ui ADDR` (feature `ws`) serves a live page at `http://ADDR/` and
//! the engine's batches to it over a WebSocket on the same port
//! (`ringfold::ws::WsSink`, `tower/ui.rs`, `tower/ui.html`); the run
//! starts once a page is connected (or after 30 s), and ends with the
//! WebSocket frames and bytes sent.

mod common;
#[path = "common/event_loop.rs"]
mod event_loop;
#[path = "common/observe.rs"]
mod observe;
#[path = "common/sink.rs"]
mod sink;
#[cfg(feature = "ws")]
#[path = "tower/ui.rs"]
mod ui;

use std::error::Error;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringfold::gpu::{GpuSampler, Metric, SamplerConfig, ScriptedSource};
use ringfold::{BatchReason, Engine, Policy, Stats, SubscribeOptions, SubscriberStats, Value};

use common::{bytes, count, duration, reduction, Histogram, IndexKeys, Rng};

/// The owned batch every subscriber takes.
type Batch = ringfold::Batch<Value>;
/// A pull-mode subscription: blocking `recv`, and with the `stream`
/// feature a `futures_core::Stream` of batches.
type Receiver = ringfold::Receiver<Value>;

/// The families shown in the live table, in this order; others follow.
const FAMILIES: [&str; 4] = ["data", "code_index", "chat", "gpu"];

/// A background indexer's throttle: a pause after each file, so it
/// shares the machine with the rest of the tower.
const INDEX_PAUSE: Duration = Duration::from_micros(200);

/// The indexer's start-up burst: at first start it indexes unthrottled
/// (a cold index, as the seed's tower did on its first start) for this
/// long, then settles into the throttled background re-indexer.
const STARTUP_BURST: Duration = Duration::from_secs(2);

/// The data layer's think time between transactions.
const DATA_PAUSE: Duration = Duration::from_millis(4);

struct Args {
    seconds: u64,
    index: Vec<PathBuf>,
    simulate_gpu: bool,
    baseline: bool,
    /// `--nats URL`: also ship every batch to NATS JetStream (feature
    /// `nats`).
    nats: Option<String>,
    /// `--prometheus ADDR`: serve tower's own metrics (folded by
    /// ringfold's metrics layer) and ringfold's health (feature `metrics`).
    prometheus: Option<std::net::SocketAddr>,
    /// `--ui ADDR`: the live page's address (feature `ws`).
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    ui: Option<std::net::SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 10,
        index: Vec::new(),
        simulate_gpu: false,
        baseline: false,
        nats: None,
        prometheus: None,
        ui: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" | "-s" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                args.seconds = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("--seconds: not a positive integer: {v}"))?;
            }
            "--index" | "-i" => {
                let v = it.next().ok_or("--index needs a path")?;
                let path = PathBuf::from(v);
                if !path.exists() {
                    return Err(format!("--index: no such path: {}", path.display()));
                }
                args.index.push(path);
            }
            "--simulate-gpu" => args.simulate_gpu = true,
            "--baseline" => args.baseline = true,
            "--prometheus" => {
                let v = it
                    .next()
                    .ok_or("--prometheus needs an address (127.0.0.1:9464)")?;
                args.prometheus = Some(v.parse().map_err(|e| format!("--prometheus {v}: {e}"))?);
            }
            "--nats" => {
                let url = it
                    .next()
                    .ok_or("--nats needs a URL (nats://127.0.0.1:4222)")?;
                if !cfg!(feature = "nats") {
                    return Err("--nats needs the cargo feature `nats` \
                                (cargo run --release --features nats --example tower -- --nats URL)"
                        .into());
                }
                args.nats = Some(url);
            }
            "--ui" => {
                let v = it
                    .next()
                    .ok_or("--ui needs an address, e.g. 127.0.0.1:8080")?;
                if cfg!(not(feature = "ws")) {
                    return Err(
                        "--ui needs the `ws` feature: cargo run --release --features ws \
                                --example tower -- --ui 127.0.0.1:8080"
                            .into(),
                    );
                }
                args.ui = Some(
                    v.parse()
                        .map_err(|e| format!("--ui: not an address (IP:PORT): {v}: {e}"))?,
                );
            }
            "--help" | "-h" => {
                println!(
                    "usage: tower [--seconds N] [--index PATH]... [--simulate-gpu] [--baseline] [--nats URL]\n\
                     [--prometheus ADDR] [--ui ADDR]\n\n\
                     Runs a code indexer, an SQLite data layer, a chat stream and (with\n\
                     NVML) a GPU sampler into one ringfold engine for N seconds\n\
                     (default 10), printing per-family reduction and delay every second.\n\
                     --index replaces the default trees (this checkout + rust-src).\n\
                     --simulate-gpu feeds the sampler a scripted device instead of NVML.\n\
                     --baseline makes every name passthrough (one delivery per event: the\n\
                     unbatched bus), for comparing the event loop's health check.\n\
                     --nats URL also ships every batch to NATS JetStream (stream TOWER,\n\
                     subjects tower.>; feature `nats`).\n\
                     --prometheus ADDR serves tower's metrics and ringfold's health\n\
                     (feature `metrics`). With feature `tracing`, tower also logs per\n\
                     file and per row through tracing into ringfold and a JSON-lines file.\n\
                     --ui ADDR (feature `ws`) serves a live page at http://ADDR/ and the\n\
                     batches to it over a WebSocket on the same port."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument: {other} (try --help)")),
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------
// Delay measurement (on its own delivery thread: one clock read and one
// uncontended lock per batch, so it keeps up even with one batch per event)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Delays {
    /// Since the last live row, by family index (FAMILIES, then "other").
    interval: Vec<Histogram>,
    /// Whole run.
    total: Vec<Histogram>,
    /// Urgent events (`chat:*:finished`), publish to delivery.
    urgent: Histogram,
}

fn family_index(prefix: &str) -> usize {
    let family = prefix.split(':').next().unwrap_or(prefix);
    FAMILIES
        .iter()
        .position(|&f| f == family)
        .unwrap_or(FAMILIES.len())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn delay_recorder(delays: Arc<Mutex<Delays>>) -> impl FnMut(&Batch) + Send {
    move |batch: &Batch| {
        let now = Instant::now();
        let fam = family_index(batch.prefix());
        let mut d = lock(&delays);
        let Delays {
            interval,
            total,
            urgent,
        } = &mut *d;
        if interval.len() <= fam {
            interval.resize_with(FAMILIES.len() + 1, Histogram::default);
            total.resize_with(FAMILIES.len() + 1, Histogram::default);
        }
        for e in batch.events() {
            let delay = now.saturating_duration_since(e.timestamp());
            interval[fam].record(delay);
            total[fam].record(delay);
        }
        if batch.reason() == BatchReason::Urgent {
            // The urgent event closes its batch.
            if let Some(e) = batch.events().last() {
                urgent.record(now.saturating_duration_since(e.timestamp()));
            }
        }
        // An aggregate's delay: from its newest reading to delivery.
        for a in batch.aggregates() {
            let delay = now.saturating_duration_since(a.last().1);
            interval[fam].record(delay);
            total[fam].record(delay);
        }
    }
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

#[derive(Default)]
struct IndexerReport {
    roots: Vec<PathBuf>,
    passes: u64,
    files: u64,
    burst_files: u64,
    bytes: u64,
    lines: u64,
    publish_errors: u64,
}

fn run_indexer(
    engine: Engine<Value>,
    roots: Vec<PathBuf>,
    burst_end: Instant,
    stop: Arc<AtomicBool>,
) -> Result<IndexerReport, Box<dyn Error + Send + Sync>> {
    let mut producer = engine.producer()?;
    let mut keys = IndexKeys::new();
    let mut report = IndexerReport {
        roots: roots.clone(),
        ..Default::default()
    };
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        let files_before = report.files;
        for root in &roots {
            let flow = common::walk(root, &mut |path| {
                if stop.load(Ordering::Relaxed) {
                    return ControlFlow::Break(());
                }
                if let Some(f) = common::index_file(path) {
                    let (indexed, lines) = match keys.get(&engine, f.lang) {
                        Ok(k) => k,
                        Err(e) => {
                            failure = Some(e);
                            return ControlFlow::Break(());
                        }
                    };
                    report.files += 1;
                    report.bytes += f.bytes;
                    observe::file_indexed(f.lang, f.bytes);
                    report.lines += f.lines;
                    for (key, v) in [(indexed, f.bytes), (lines, f.lines)] {
                        if producer.publish_key(key, Value::from(v)).is_err() {
                            report.publish_errors += 1;
                        }
                    }
                }
                if Instant::now() < burst_end {
                    report.burst_files += 1;
                } else {
                    thread::sleep(INDEX_PAUSE);
                }
                ControlFlow::Continue(())
            });
            if flow.is_break() {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        if report.files == files_before {
            // Nothing indexable: do not spin.
            thread::sleep(Duration::from_millis(50));
        } else if !stop.load(Ordering::Relaxed) {
            report.passes += 1;
        }
    }
    Ok(report)
}

#[derive(Default)]
struct DataReport {
    transactions: u64,
    rows: u64,
    publish_errors: u64,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE users (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
        last_seen INTEGER NOT NULL);
    CREATE TABLE orders (
        id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
        total_cents INTEGER NOT NULL, status TEXT NOT NULL, created INTEGER NOT NULL);
    CREATE INDEX orders_status ON orders(status, id);
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
        token TEXT NOT NULL, expires INTEGER NOT NULL);
    CREATE INDEX sessions_expires ON sessions(expires);
";

/// Row changes of one transaction, published after it commits.
type Changes = Vec<(&'static str, &'static str, i64)>;

fn run_data_layer(
    engine: Engine<Value>,
    stop: Arc<AtomicBool>,
) -> Result<DataReport, Box<dyn Error + Send + Sync>> {
    use rusqlite::{params, Connection};

    let path = std::env::temp_dir().join(format!("ringfold-tower-{}.sqlite", std::process::id()));
    let _cleanup = RemoveOnDrop(path.clone());
    let mut conn = Connection::open(&path)?;
    conn.execute_batch(SCHEMA)?;

    let mut producer = engine.producer()?;
    // One key per (table, op), interned once: the hook's hot path is
    // `publish_key`.
    let mut keys = std::collections::HashMap::new();
    for table in ["users", "orders", "sessions"] {
        for op in ["insert", "update", "delete"] {
            keys.insert((table, op), engine.key(&format!("data:{table}:{op}"))?);
        }
    }

    let mut rng = Rng::new(0x5eed_da7a);
    let mut report = DataReport::default();
    let mut changes: Changes = Vec::with_capacity(128);
    let mut clock: i64 = 0;

    // Seed some users so orders have owners.
    {
        let tx = conn.transaction()?;
        for i in 0..200 {
            tx.execute(
                "INSERT INTO users (name, email, last_seen) VALUES (?1, ?2, 0)",
                params![format!("user{i}"), format!("user{i}@example.com")],
            )?;
            changes.push(("users", "insert", tx.last_insert_rowid()));
        }
        tx.commit()?;
    }

    loop {
        // After-commit hook: one event per changed row.
        for (table, op, id) in changes.drain(..) {
            if producer
                .publish_key(keys[&(table, op)], Value::from(id))
                .is_err()
            {
                report.publish_errors += 1;
            }
            report.rows += 1;
            observe::row_changed(table, op);
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        thread::sleep(DATA_PAUSE);
        clock += 1;

        let tx = conn.transaction()?;
        let users: i64 = tx.query_row("SELECT max(id) FROM users", [], |r| r.get(0))?;
        // A sign-up now and then.
        if rng.range(0, 4) == 0 {
            tx.execute(
                "INSERT INTO users (name, email, last_seen) VALUES (?1, ?2, ?3)",
                params![
                    format!("user{}", users + 1),
                    format!("user{}@example.com", users + 1),
                    clock
                ],
            )?;
            changes.push(("users", "insert", tx.last_insert_rowid()));
        }
        // Activity: touch a few users.
        {
            let mut touch =
                tx.prepare_cached("UPDATE users SET last_seen = ?1 WHERE id = ?2 RETURNING id")?;
            for _ in 0..rng.range(2, 6) {
                let id = rng.range(1, users as u64 + 1) as i64;
                let mut rows = touch.query(params![clock, id])?;
                while let Some(row) = rows.next()? {
                    changes.push(("users", "update", row.get(0)?));
                }
            }
        }
        // New orders.
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO orders (user_id, total_cents, status, created)
                 VALUES (?1, ?2, 'pending', ?3)",
            )?;
            for _ in 0..rng.range(8, 24) {
                let user = rng.range(1, users as u64 + 1) as i64;
                let cents = rng.range(199, 25_000) as i64;
                insert.execute(params![user, cents, clock])?;
                changes.push(("orders", "insert", tx.last_insert_rowid()));
            }
        }
        // Payment settles the oldest pending orders; shipped ones are archived
        // (deleted), which keeps the table small.
        {
            let mut pay = tx.prepare_cached(
                "UPDATE orders SET status = 'paid' WHERE id IN
                   (SELECT id FROM orders WHERE status = 'pending' ORDER BY id LIMIT ?1)
                 RETURNING id",
            )?;
            let mut rows = pay.query(params![rng.range(6, 20) as i64])?;
            while let Some(row) = rows.next()? {
                changes.push(("orders", "update", row.get(0)?));
            }
        }
        {
            let mut archive = tx.prepare_cached(
                "DELETE FROM orders WHERE id IN
                   (SELECT id FROM orders WHERE status = 'paid' ORDER BY id LIMIT ?1)
                 RETURNING id",
            )?;
            let mut rows = archive.query(params![rng.range(6, 20) as i64])?;
            while let Some(row) = rows.next()? {
                changes.push(("orders", "delete", row.get(0)?));
            }
        }
        // Sessions: log-ins, and expiry.
        {
            let mut login = tx.prepare_cached(
                "INSERT INTO sessions (user_id, token, expires) VALUES (?1, ?2, ?3)",
            )?;
            for _ in 0..rng.range(1, 6) {
                let user = rng.range(1, users as u64 + 1) as i64;
                let token = format!("{:016x}", rng.next_u64());
                login.execute(params![user, token, clock + rng.range(20, 200) as i64])?;
                changes.push(("sessions", "insert", tx.last_insert_rowid()));
            }
            let mut expire =
                tx.prepare_cached("DELETE FROM sessions WHERE expires < ?1 RETURNING id")?;
            let mut rows = expire.query(params![clock])?;
            while let Some(row) = rows.next()? {
                changes.push(("sessions", "delete", row.get(0)?));
            }
        }
        tx.commit()?;
        report.transactions += 1;
    }
    Ok(report)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for suffix in ["-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Default)]
struct ChatReport {
    tokens: u64,
    responses: u64,
    publish_errors: u64,
}

const CORPUS: &str = "ringfold carries telemetry from many producer threads to one flusher \
    through per-thread lock-free rings and folds each prefix into one batch per window so \
    subscribers see a handful of deliveries instead of a storm of events while chat tokens \
    stay real time and urgent events cut the window short";

/// Four sessions streaming tokens at LLM-like pace (20-60 ms apart), each
/// response ending with an urgent `finished`, then a pause for the user.
fn run_chat(
    engine: Engine<Value>,
    stop: Arc<AtomicBool>,
) -> Result<ChatReport, Box<dyn Error + Send + Sync>> {
    struct Session {
        delta: ringfold::EventKey,
        finished: ringfold::EventKey,
        left: u64,
        sent: u64,
        next: Instant,
    }
    let words: Vec<&str> = CORPUS.split_whitespace().collect();
    let mut producer = engine.producer()?;
    let mut rng = Rng::new(0xc4a7);
    let start = Instant::now();
    let mut sessions = Vec::new();
    for i in 1..=4 {
        sessions.push(Session {
            delta: engine.key(&format!("chat:s{i}:delta"))?,
            finished: engine.key(&format!("chat:s{i}:finished"))?,
            left: rng.range(20, 120),
            sent: 0,
            next: start + Duration::from_millis(rng.range(0, 300)),
        });
    }
    let mut report = ChatReport::default();
    while !stop.load(Ordering::Relaxed) {
        let (i, next) = sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.next))
            .min_by_key(|&(_, t)| t)
            .expect("four sessions");
        let now = Instant::now();
        if next > now {
            // Short naps, so a stop request is seen promptly.
            thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        let s = &mut sessions[i];
        if s.left > 0 {
            let word = words[(rng.next_u64() % words.len() as u64) as usize];
            if producer.publish_key(s.delta, Value::from(word)).is_err() {
                report.publish_errors += 1;
            }
            report.tokens += 1;
            s.left -= 1;
            s.sent += 1;
            s.next = now + Duration::from_millis(rng.range(20, 60));
        } else {
            if producer
                .publish_urgent(s.finished, Value::from(s.sent))
                .is_err()
            {
                report.publish_errors += 1;
            }
            report.responses += 1;
            s.left = rng.range(20, 120);
            s.sent = 0;
            s.next = now + Duration::from_millis(rng.range(200, 800));
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------

/// Starts the GPU sampler when NVML is present (and the crate was built
/// with its `gpu` feature); otherwise prints one line saying why not. With
/// `simulate`, the sampler reads a scripted device instead (no NVML).
fn start_gpu(engine: &Engine<Value>, simulate: bool) -> Option<GpuSampler> {
    let config = SamplerConfig::default();
    if simulate {
        // A busy device: utilisation, temperature and power wander.
        let source = ScriptedSource::new(1)
            .values(0, Metric::UtilGpuPct, [97.0, 99.0, 100.0, 98.0, 96.0])
            .values(0, Metric::TempC, [66.0, 67.0, 68.0, 68.0, 67.0])
            .values(
                0,
                Metric::PowerMw,
                [612_000.0, 655_000.0, 689_000.0, 640_000.0],
            );
        return match GpuSampler::start_with_source(engine, source, config) {
            Ok(sampler) => {
                println!("gpu: simulated (1 scripted device, NVML not used)");
                Some(sampler)
            }
            Err(e) => {
                println!("gpu: skipped ({e})");
                None
            }
        };
    }
    match GpuSampler::start(engine, config) {
        Ok(sampler) => {
            let devices = sampler.stats().devices;
            println!("gpu: sampling {devices} device(s) through NVML every second");
            Some(sampler)
        }
        Err(e) => {
            println!("gpu: skipped ({e})");
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------

/// Per-family totals from the engine's per-prefix counters.
#[derive(Default, Clone, Copy)]
struct FamilyTotals {
    received: u64,
    batches: u64,
    dropped: u64,
    prefixes: usize,
}

fn family_totals(stats: &Stats) -> Vec<(String, FamilyTotals)> {
    let mut out: Vec<(String, FamilyTotals)> = FAMILIES
        .iter()
        .map(|f| (f.to_string(), FamilyTotals::default()))
        .collect();
    for (prefix, p) in &stats.prefixes {
        let family = prefix.split(':').next().unwrap_or(prefix);
        let i = match out.iter().position(|(f, _)| f == family) {
            Some(i) => i,
            None => {
                out.push((family.to_string(), FamilyTotals::default()));
                out.len() - 1
            }
        };
        let t = &mut out[i].1;
        t.received += p.received;
        t.batches += p.batches;
        t.dropped += p.dropped;
        t.prefixes += 1;
    }
    out
}

const HEADER: &str =
    "  family           events in     ev/s  batches out  reduction  drops  p99 delay";

fn print_live(
    elapsed: Duration,
    stats: &Stats,
    prev: &[(String, FamilyTotals)],
    interval: Duration,
    delays: &[Histogram],
    flusher_cpu: Option<Duration>,
) -> Vec<(String, FamilyTotals)> {
    let totals = family_totals(stats);
    // Cumulative: /proc counts in 10 ms ticks, too coarse for one second.
    let cpu = flusher_cpu.map_or_else(
        || "n/a".to_string(),
        |c| {
            let pct = c.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
            format!("{} ms ({pct:.1}%)", c.as_millis())
        },
    );
    let title = format!("-- {:>3.0} s ", elapsed.as_secs_f64());
    let tail = format!(" flusher cpu so far {cpu} --");
    let width = HEADER.len();
    let fill = width.saturating_sub(title.len() + tail.len());
    println!("{title}{}{tail}", "-".repeat(fill));
    println!("{HEADER}");
    for (family, t) in &totals {
        let before = prev
            .iter()
            .find(|(f, _)| f == family)
            .map_or(0, |(_, p)| p.received);
        let rate = (t.received - before) as f64 / interval.as_secs_f64().max(1e-3);
        let fam = family_index(family);
        let p99 = delays
            .get(fam)
            .and_then(|h| h.quantile(0.99))
            .map_or_else(|| "-".to_string(), duration);
        if t.received == 0 && t.batches == 0 {
            println!(
                "  {:<14} {:>11} {:>8} {:>12} {:>10} {:>6} {:>10}",
                format!("{family}:*"),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            );
            continue;
        }
        println!(
            "  {:<14} {:>11} {:>8} {:>12} {:>10} {:>6} {:>10}",
            format!("{family}:*"),
            count(t.received),
            count(rate.round() as u64),
            count(t.batches),
            reduction(t.received, t.batches),
            count(t.dropped),
            p99,
        );
    }
    totals
}

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = parse_args()?;
    let duration_total = Duration::from_secs(args.seconds);

    let roots = if args.index.is_empty() {
        let mut roots = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
        roots.extend(common::rust_src_dir());
        roots
    } else {
        args.index.clone()
    };

    let delays = Arc::new(Mutex::new(Delays::default()));
    let builder = Engine::<Value>::builder();
    let builder = if args.baseline {
        // The unbatched bus: every event is its own delivery.
        builder.default_policy(Policy::Passthrough).sampled()
    } else {
        builder.default_rules()
    };
    // The live page's own figures, one delivery each.
    #[cfg(feature = "ws")]
    let builder = match args.ui {
        Some(_) => {
            let (pattern, policy) = ui::rule();
            builder.policy(pattern, policy)
        }
        None => builder,
    };
    let engine = builder
        .precise_timestamps(true)
        .subscriber_with(
            "*",
            SubscribeOptions::new("delay-recorder"),
            delay_recorder(delays.clone()),
        )
        .build()?;
    // The event loop's IPC bridge takes every family, and a UI must see
    // every event: when it falls behind, its queue merges batches of a
    // prefix (within the default budget of 2^20 events or 64 MiB, nothing
    // is lost). The SQLite event log takes `data:*` with the same defaults.
    let ui_rx = engine.receiver("*", SubscribeOptions::new("ui-bridge"))?;
    let observe = observe::install(&engine, args.prometheus)?;
    #[cfg(feature = "nats")]
    let nats_sink = match &args.nats {
        Some(url) => Some(ringfold::nats::Sink::spawn(
            &engine,
            "*",
            ringfold::nats::SinkConfig::new(url.as_str())
                .root("tower")
                .stream("TOWER"),
        )?),
        None => None,
    };

    let mode = if args.baseline {
        "baseline: every name passthrough (one delivery per event)"
    } else {
        "default policy table"
    };
    println!("ringfold tower: {} s, {mode}", args.seconds);
    for root in &roots {
        println!("indexer: {}", root.display());
    }
    if args.index.is_empty() && roots.len() == 1 {
        println!(
            "indexer: rust-src not installed (rustup component add rust-src adds the \
             standard library's sources)"
        );
    }
    println!(
        "data: SQLite (bundled) in {}",
        std::env::temp_dir().display()
    );
    println!("chat: 4 sessions streaming tokens (passthrough), urgent `finished`");
    let gpu = start_gpu(&engine, args.simulate_gpu);
    let sink_path =
        std::env::temp_dir().join(format!("ringfold-tower-log-{}.sqlite", std::process::id()));
    println!(
        "subscribers: delay recorder (all); sqlite-log (data:*, one transaction per batch, \
         synchronous=FULL, {}); ui-bridge (all, async on the event loop: {})",
        sink_path.display(),
        event_loop::CONSUMER,
    );
    let burst = STARTUP_BURST.min(duration_total);
    println!(
        "event loop: one tokio current-thread runtime thread: each delivery serialised to JSON \
         and written to a 127.0.0.1 socket (a UI reads the other end), and a health check due \
         every {} ms; missed = answered more than {} ms after due (or never); indexer start-up \
         burst (unthrottled): first {}",
        event_loop::PERIOD.as_millis(),
        event_loop::DEADLINE.as_millis(),
        duration(burst),
    );
    println!();

    #[cfg(feature = "ws")]
    let ui_sink = match args.ui {
        Some(addr) => {
            let sink = ui::start(&engine, addr)?;
            println!(
                "ui: http://{}/ (page and WebSocket); waiting up to 30 s for a page to connect",
                sink.local_addr()
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            let subscribed = || {
                engine
                    .stats()
                    .subscribers
                    .iter()
                    .any(|s| s.name.starts_with("ws-") && !s.closed)
            };
            while !subscribed() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            println!("ui: {} page(s) connected", sink.stats().clients);
            Some(sink)
        }
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let phases = event_loop::Phases {
        start,
        burst_end: start + burst,
    };
    #[allow(unused_mut)]
    let mut on_health: Option<event_loop::OnHealth> = None;
    #[cfg(feature = "ws")]
    if ui_sink.is_some() {
        on_health = Some(ui::health_publisher(&engine));
    }
    let event_loop = event_loop::spawn(ui_rx, phases, on_health)?;
    let sink_counters = Arc::new(sink::SinkCounters::default());
    let mut sqlite = sink::SqliteSink::create(&sink_path, sink_counters.clone())?;
    // A run-time subscription on its own delivery thread; the handle keeps
    // it alive until the end.
    let sqlite = engine.subscribe_with(
        "data:*",
        SubscribeOptions::new("sqlite-log"),
        move |batch: &Batch| sqlite.write(batch),
    )?;
    let indexer = spawn("tower-indexer", {
        let (engine, stop) = (engine.clone(), stop.clone());
        move || run_indexer(engine, roots, phases.burst_end, stop)
    })?;
    let data = spawn("tower-data", {
        let (engine, stop) = (engine.clone(), stop.clone());
        move || run_data_layer(engine, stop)
    })?;
    let chat = spawn("tower-chat", {
        let (engine, stop) = (engine.clone(), stop.clone());
        move || run_chat(engine, stop)
    })?;

    // Live table, once per second, on a fixed schedule.
    let end = start + duration_total;
    let mut prev = family_totals(&Stats::default());
    let mut prev_at = start;
    let mut tick = 1u32;
    loop {
        let due = (start + Duration::from_secs(tick.into())).min(end);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let now = Instant::now();
        let cpu = common::flusher_cpu();
        let interval: Vec<Histogram> = std::mem::take(&mut lock(&delays).interval);
        let stats = engine.stats();
        #[cfg(feature = "ws")]
        if ui_sink.is_some() {
            ui::publish(&engine, &stats, now - start, false);
        }
        prev = print_live(now - start, &stats, &prev, now - prev_at, &interval, cpu);
        print_subscribers(&stats.subscribers);
        observe.print_live();
        println!();
        prev_at = now;
        if due >= end {
            break;
        }
        tick += 1;
    }

    // Stop the workloads, deliver everything, and account.
    stop.store(true, Ordering::Relaxed);
    let indexer = join(indexer, "indexer");
    let data = join(data, "data layer");
    let chat = join(chat, "chat");
    let gpu = gpu.map(GpuSampler::stop);
    #[cfg(feature = "ws")]
    let ui_totals = match &ui_sink {
        // A page that stopped reading must not hold the run: a flush waits
        // for every receiver, the pages' too.
        Some(_) => {
            if let Err(e) = engine.flush_timeout(Duration::from_secs(10)) {
                eprintln!("ui: flush gave up: {e}");
            }
            let snapshot = engine.stats();
            ui::publish(&engine, &snapshot, start.elapsed(), true);
            Some(ui::totals(&snapshot))
        }
        None => None,
    };
    #[cfg(feature = "ws")]
    if ui_sink.is_none() {
        engine.flush()?;
    }
    #[cfg(not(feature = "ws"))]
    engine.flush()?;
    let flusher_cpu = common::flusher_cpu();
    let process_cpu = common::process_cpu();
    let stats = engine.shutdown()?;
    let wall = start.elapsed();
    observe.finish()?;
    #[cfg(feature = "nats")]
    if let Some(sink) = nats_sink {
        let s = sink.shutdown_timeout(Duration::from_secs(5))?;
        println!(
            "nats: {} batches landed ({} acked as duplicates), {} retries, {} failed, \
             {} abandoned, {} dropped from the backlog",
            s.landed(),
            s.duplicates,
            s.retries,
            s.failed,
            s.abandoned,
            s.backlog_dropped
        );
    }
    // Shutdown delivered everything and closed the subscriptions: the
    // event loop's stream ends once it has taken what is queued.
    let loop_report = match event_loop.join() {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            eprintln!("event loop failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("event loop panicked");
            None
        }
    };
    drop(sqlite);
    let mut subscribers = stats.subscribers.clone();
    // The event loop drops its receiver when the stream ends, which can be
    // before shutdown takes its snapshot: use the receiver's own final
    // counters then.
    if let Some(ui) = loop_report.as_ref().and_then(|r| r.subscriber.clone()) {
        if !subscribers.iter().any(|s| s.name == ui.name) {
            subscribers.push(ui);
        }
    }

    print_summary(&stats, &delays, wall, flusher_cpu, process_cpu);
    println!();
    print_subscribers(&subscribers);
    let conserved = subscribers.iter().all(SubscriberStats::is_conserved);
    println!(
        "  per subscriber: sealed = delivered + lag-dropped + discarded + queued + in flight: {}",
        if conserved { "yes" } else { "NO" }
    );
    print_sink(&sink_counters);
    if let Some(r) = &indexer {
        println!(
            "  indexer     {} full passes, {} files ({} in the start-up burst), {}, {} lines (roots: {})",
            count(r.passes),
            count(r.files),
            count(r.burst_files),
            bytes(r.bytes),
            count(r.lines),
            r.roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(r) = &data {
        println!(
            "  data layer  {} transactions, {} rows changed",
            count(r.transactions),
            count(r.rows)
        );
    }
    if let Some(r) = &chat {
        println!(
            "  chat        {} tokens, {} responses",
            count(r.tokens),
            count(r.responses)
        );
    }
    if let Some(g) = gpu {
        println!(
            "  gpu         {} device(s), {} passes, {} readings published, {} failed, \
             {} unsupported metric(s), mean pass {}",
            g.devices,
            count(g.passes),
            count(g.published),
            count(g.failed),
            g.unsupported,
            duration(g.mean_pass()),
        );
    }
    let errors = indexer.map_or(0, |r| r.publish_errors)
        + data.map_or(0, |r| r.publish_errors)
        + chat.map_or(0, |r| r.publish_errors);
    if errors > 0 {
        println!("  publish errors seen by the workloads: {}", count(errors));
    }
    if let Some(r) = &loop_report {
        println!();
        print_event_loop(r, args.baseline, burst);
    }
    #[cfg(feature = "ws")]
    if let (Some(sink), Some((events, batches, drops))) = (ui_sink, ui_totals) {
        let ws = ui::finish(sink, Duration::from_secs(10))?;
        let secs = wall.as_secs_f64().max(1e-3);
        println!();
        println!(
            "== ui (WebSocket, {}) ==",
            if args.baseline { "baseline" } else { "batched" }
        );
        println!(
            "  frames sent: {} ({:.0}/s), bytes: {} ({}/s), events in frames: {}, pages served: {}",
            count(ws.frames),
            ws.frames as f64 / secs,
            bytes(ws.bytes),
            bytes((ws.bytes as f64 / secs) as u64),
            count(ws.events),
            ws.pages,
        );
        println!(
            "  clients: {} accepted, malformed messages {}, connection errors {}, unencodable {}",
            ws.accepted, ws.malformed, ws.errors, ws.encode_errors
        );
        println!(
            "  page totals (all families but tower): events in {events}, batches out {batches}, drops {drops}"
        );
    }
    Ok(())
}

fn spawn<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<JoinHandle<R>> {
    thread::Builder::new().name(name.into()).spawn(f)
}

fn join<R>(handle: JoinHandle<Result<R, Box<dyn Error + Send + Sync>>>, what: &str) -> Option<R> {
    match handle.join() {
        Ok(Ok(r)) => Some(r),
        Ok(Err(e)) => {
            eprintln!("{what} failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("{what} panicked");
            None
        }
    }
}

fn print_summary(
    stats: &Stats,
    delays: &Mutex<Delays>,
    wall: Duration,
    flusher_cpu: Option<std::time::Duration>,
    process_cpu: Option<std::time::Duration>,
) {
    let delays = lock(delays);
    println!("== summary ({}) ==", duration(wall));
    println!(
        "  {:<24} {:>11} {:>12} {:>10} {:>6} {:>10} {:>10}",
        "prefix", "events in", "batches out", "reduction", "drops", "p50 delay", "p99 delay"
    );
    for (family, t) in &family_totals(stats) {
        if t.received == 0 && t.batches == 0 {
            continue;
        }
        let fam = family_index(family);
        let q = |q| {
            delays
                .total
                .get(fam)
                .and_then(|h| h.quantile(q))
                .map_or_else(|| "-".to_string(), duration)
        };
        println!(
            "  {:<24} {:>11} {:>12} {:>10} {:>6} {:>10} {:>10}",
            format!("{family}:*"),
            count(t.received),
            count(t.batches),
            reduction(t.received, t.batches),
            count(t.dropped),
            q(0.5),
            q(0.99),
        );
        for (prefix, p) in &stats.prefixes {
            if prefix.split(':').next() == Some(family.as_str()) && t.prefixes > 1 {
                println!(
                    "    {:<22} {:>11} {:>12} {:>10} {:>6}",
                    prefix,
                    count(p.received),
                    count(p.batches),
                    reduction(p.received, p.batches),
                    count(p.dropped),
                );
            }
        }
    }
    let d = &stats.dropped;
    println!();
    println!(
        "  published {}  delivered {}  folded {}  pending {}  batches {}  overall {}",
        count(stats.published),
        count(stats.sealed),
        count(stats.folded),
        count(stats.pending),
        count(stats.batches),
        reduction(stats.published, stats.batches),
    );
    println!(
        "  drops: full {}, shut_down {}, invalid_name {}, urgent_timeout {}, not_numeric {}; conserved: {}",
        d.full,
        d.shut_down,
        d.invalid_name,
        d.urgent_timeout,
        d.not_numeric,
        if stats.is_conserved() { "yes" } else { "NO" },
    );
    if let (Some(p50), Some(max)) = (delays.urgent.quantile(0.5), delays.urgent.quantile(1.0)) {
        println!(
            "  urgent chat:*:finished: {} delivered, p50 {}, max {} after publish",
            count(delays.urgent.len()),
            duration(p50),
            duration(max),
        );
    }
    let pct = |c: Duration| c.as_secs_f64() / wall.as_secs_f64() * 100.0;
    match flusher_cpu {
        Some(c) => println!(
            "  flusher thread cpu {} ms ({:.1}% of one core; {} wake-ups by tick, {} by high-water, {} sweeps)",
            c.as_millis(),
            pct(c),
            count(stats.ticks),
            count(stats.high_water_wakeups),
            count(stats.sweeps),
        ),
        None => println!("  flusher thread cpu: n/a (no /proc/self/task)"),
    }
    if let Some(c) = process_cpu {
        println!(
            "  whole process cpu  {} ms ({:.0}% of one core)",
            c.as_millis(),
            pct(c)
        );
    }
}

fn print_subscribers(subs: &[SubscriberStats]) {
    println!(
        "  {:<14} {:>11} {:>12} {:>10} {:>10} {:>7} {:>9}",
        "subscriber", "batches", "events", "lag drops", "(events)", "queued", "lag"
    );
    for s in subs {
        println!(
            "  {:<14} {:>11} {:>12} {:>10} {:>10} {:>7} {:>9}",
            s.name,
            count(s.delivered_batches),
            count(s.delivered_events),
            count(s.lag_dropped_batches),
            count(s.lag_dropped_events),
            count(s.queued),
            duration(s.lag),
        );
    }
}

fn print_sink(c: &sink::SinkCounters) {
    let commit = lock(&c.commit);
    let q = |q| commit.quantile(q).map_or_else(|| "-".to_string(), duration);
    println!(
        "  sqlite-log: {} transactions (one per data:* batch), {} event rows, {} errors; \
         commit p50 {}, p99 {}",
        count(c.transactions.load(Ordering::Relaxed)),
        count(c.rows.load(Ordering::Relaxed)),
        count(c.errors.load(Ordering::Relaxed)),
        q(0.5),
        q(0.99),
    );
}

/// The comparison block: the same format in both modes, so README can
/// quote the two side by side.
fn print_event_loop(r: &event_loop::LoopReport, baseline: bool, burst: Duration) {
    let mode = if baseline { "baseline" } else { "batched" };
    println!(
        "== event loop [{mode}]: one thread, dispatch to the UI socket + health check every {} ms ==",
        event_loop::PERIOD.as_millis()
    );
    println!(
        "  dispatches {} ({} events, {} to {}), loop busy dispatching {} ms, per dispatch p50 {} p99 {}{}",
        count(r.dispatches),
        count(r.events),
        bytes(r.bytes),
        r.addr,
        r.busy.as_millis(),
        r.dispatch_time.quantile(0.5).map_or_else(|| "-".into(), duration),
        r.dispatch_time.quantile(0.99).map_or_else(|| "-".into(), duration),
        if r.write_errors > 0 {
            format!(", {} write errors", count(r.write_errors))
        } else {
            String::new()
        },
    );
    println!(
        "  {:<24} {:>6} {:>9} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "health check",
        "due",
        "answered",
        "on time",
        "missed",
        "p50 delay",
        "p99 delay",
        "max delay"
    );
    let whole = r.whole();
    let burst_label = format!("start-up burst (0-{})", duration(burst));
    for (label, h) in [
        (burst_label.as_str(), &r.burst),
        ("after the burst", &r.after),
        ("whole run", &whole),
    ] {
        let q = |q| {
            h.delay
                .quantile(q)
                .map_or_else(|| "-".to_string(), duration)
        };
        println!(
            "  {:<24} {:>6} {:>9} {:>7} {:>7} {:>10} {:>10} {:>10}",
            label,
            count(h.due),
            count(h.answered),
            count(h.on_time),
            count(h.missed()),
            q(0.5),
            q(0.99),
            q(1.0),
        );
    }
    println!(
        "  (delay: from a check's due time to the UI end reading its answer; missed: answered \
         more than {} ms after due, or never)",
        event_loop::DEADLINE.as_millis()
    );
}
